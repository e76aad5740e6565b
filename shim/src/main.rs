//! `containerd-shim-ampoule-v2`: containerd's runtime v2 task API on top of
//! `ampoule-runtime`, one microVM per pod.
//!
//! Actions (containerd runs the binary with Go-style flags):
//! - `start`: print the `unix://` address of the shim serving this task
//!   (spawning it detached if it is the first task of its pod), exit.
//! - `delete`: clean up after a task whose shim is gone (VM processes,
//!   files, cgroups), print a DeleteResponse.
//! - no action with `-socket`: serve the task API until Shutdown.

mod cleanup;
mod events;
mod io;
mod logging;
mod oom;
mod pids;
mod process;
mod rate_limit;
mod server;
mod service;
mod start;
mod stats;
mod status;
mod vm;

use anyhow::Context as _;

/// The runtime name containerd knows this shim by.
pub const RUNTIME_ID: &str = "io.containerd.ampoule.v2";

fn main() {
    let code = match run() {
        Ok(()) => 0,
        Err(e) => {
            // One line, each cause once: containerd shows it as is.
            let line = ampoule_runtime::text::error_chain(e.as_ref());
            eprintln!("{RUNTIME_ID}: {}", status::one_line(&line));
            1
        }
    };
    std::process::exit(code);
}

fn run() -> anyhow::Result<()> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let flags = containerd_shim::parse(&args[1..]).context("parsing the command line")?;
    if flags.version {
        println!(
            "{}:\n  Version: {}\n  Runtime: {RUNTIME_ID}",
            env!("CARGO_PKG_NAME"),
            env!("CARGO_PKG_VERSION")
        );
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    match flags.action.as_str() {
        "start" => {
            // No log here: containerd 1.6 reads start's stdout and stderr
            // together as the address; errors go to stderr on exit.
            let bundle = std::env::current_dir().context("the bundle (working directory)")?;
            let args = start::StartArgs {
                id: flags.id.clone(),
                namespace: flags.namespace.clone(),
                address: flags.address.clone(),
                publish_binary: flags.publish_binary.clone(),
                debug: flags.debug,
                ttrpc_address: std::env::var("TTRPC_ADDRESS").unwrap_or_default(),
                config_path: start::config_path_from_stdin(),
            };
            let address = start::start(&args, &bundle)?;
            use std::io::Write;
            let mut out = std::io::stdout();
            out.write_all(address.as_bytes())?;
            out.flush()?;
            Ok(())
        }
        "delete" => {
            logging::init_stderr(flags.debug);
            let bundle = if flags.bundle.is_empty() {
                std::env::current_dir().context("the bundle (working directory)")?
            } else {
                std::path::PathBuf::from(&flags.bundle)
            };
            let resp = rt.block_on(cleanup::delete(
                &flags.address,
                &flags.namespace,
                &flags.id,
                &bundle,
            ));
            use containerd_shim_protos::protobuf::Message;
            use std::io::Write;
            let bytes = resp.write_to_bytes().context("encoding DeleteResponse")?;
            let mut out = std::io::stdout();
            out.write_all(&bytes)?;
            out.flush()?;
            Ok(())
        }
        "" => {
            anyhow::ensure!(
                !flags.socket.is_empty(),
                "no action and no -socket: nothing to do"
            );
            let _guard = logging::init_bundle_log(flags.debug);
            rt.block_on(server::serve(flags))
        }
        other => anyhow::bail!("unknown action {other:?} (start, delete)"),
    }
}
