//! ampoule-agent: PID 1 of every Ampoule sandbox.
//!
//! As PID 1 it moves itself off the initramfs onto a tmpfs root, mounts the
//! guest's pseudo filesystems, serves the agent API (ttrpc) on vsock and
//! announces readiness to the host. The same binary, started by the agent as
//! `ampoule-agent __container-init`, is the single-threaded helper that sets
//! up a container process (namespaces, mounts, user, capabilities) before it
//! execs the OCI process.

use ampoule_agent::{container, init, logging, server, sysinfo, HELPER_ARG};
use anyhow::Context;

fn main() {
    let mut args = std::env::args_os();
    let _argv0 = args.next();
    if args.next().as_deref() == Some(std::ffi::OsStr::new(HELPER_ARG)) {
        // Never returns: execs the container process or exits.
        container::helper::main();
    }
    if let Err(e) = run_agent() {
        // As PID 1 there is nobody to report to but the console; a PID 1
        // that exits panics the kernel, which (panic=-1) ends the VM: that is
        // the failure signal the host sees.
        eprintln!("ampoule-agent: fatal: {e:#}");
        std::process::exit(1);
    }
}

fn run_agent() -> anyhow::Result<()> {
    init::record_start();
    let pid1 = std::process::id() == 1;
    if pid1 {
        if let Err(e) = init::move_to_tmpfs_root() {
            // Still serve (Check, Shutdown); containers will fail at
            // pivot_root, with this line on the console to explain why.
            eprintln!("ampoule-agent: staying on the initramfs root: {e}");
        }
        init::early_mounts().context("early mounts")?;
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let opts = init::cmdline::AgentOptions::parse(&cmdline);
    logging::init(opts.log_level);
    tracing::info!(
        version = ampoule_agent_api::VERSION,
        init_ms = init::first_start_ms(),
        uptime_ms = sysinfo::uptime_ms(),
        "agent starting"
    );
    if pid1 {
        init::setup_cgroups();
        tracing::debug!(uptime_ms = sysinfo::uptime_ms(), "cgroup controllers on");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(server::serve(opts))
}
