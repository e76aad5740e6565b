//! The shim's own log: the bundle's `log` FIFO (containerd copies it into
//! its own log) for the server, stderr for `start` and `delete`.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

fn filter(debug: bool) -> EnvFilter {
    EnvFilter::try_from_env("AMPOULE_SHIM_LOG")
        .unwrap_or_else(|_| EnvFilter::new(if debug { "debug" } else { "info" }))
}

/// Logs to stderr (`start`, `delete`: containerd shows it on failure).
pub fn init_stderr(debug: bool) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter(debug))
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Opens the bundle's `log` FIFO (the working directory is the bundle)
/// without waiting for a reader, then makes it blocking.
fn open_log_fifo() -> std::io::Result<File> {
    let f = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("log")?;
    let flags = nix::fcntl::fcntl(f.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)
        .map_err(std::io::Error::from)?;
    let mut flags = nix::fcntl::OFlag::from_bits_truncate(flags);
    flags.remove(nix::fcntl::OFlag::O_NONBLOCK);
    nix::fcntl::fcntl(f.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))
        .map_err(std::io::Error::from)?;
    Ok(f)
}

/// Logs to the bundle's `log` FIFO, or stderr if there is none.
pub fn init_bundle_log(debug: bool) -> Option<()> {
    match open_log_fifo() {
        Ok(f) => {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter(debug))
                .with_ansi(false)
                .with_writer(Mutex::new(f))
                .try_init();
        }
        Err(e) => {
            init_stderr(debug);
            tracing::warn!(error = %e, "no log FIFO in the bundle; logging to stderr");
        }
    }
    Some(())
}
