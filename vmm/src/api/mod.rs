//! The control socket.
//!
//! A Unix stream socket (`--api-sock`). The client sends one command per
//! line (at most 4096 bytes, UTF-8); the VMM answers each with one line of
//! JSON: `{"ok":true,...}` or `{"ok":false,"error":"..."}`. Commands:
//!
//! | command | effect |
//! |---|---|
//! | `status` | `{"ok":true,"state":"running","vcpus":N,"memory_mib":M,"drives":[{"id":..,"path":..,"read_only":..}],"fs":[{"tag":..,"backend":..}],"net":[{"mac":..,"tap":..,"vnet_hdr":..,"link":"up","rx_frames":..,"tx_frames":..,...}]}` (net counters: `rx_frames`, `rx_bytes`, `rx_dropped_too_small`, `rx_dropped_bad_frame`, `rx_bad_buffers`, `tx_frames`, `tx_bytes`, `tx_dropped`, `tx_oversized`, `tx_malformed`) |
//! | `shutdown [DEADLINE_MS]` | graceful shutdown: Ctrl-Alt-Del is sent to the guest (i8042); if the guest has not stopped after the deadline (default: `shutdown_timeout_ms` of the config) the VM is stopped by force. The VMM exits 0 either way. |
//! | `fill-slot ID PATH [ro]` | puts the file PATH in drive slot ID and raises a virtio-blk config-change interrupt |
//! | `empty-slot ID` | empties drive slot ID (the guest sees capacity 0) |
//!
//! Builds with the `test-syscall` cargo feature (tests only) also have
//! `test-syscall`, which makes a syscall outside every seccomp allowlist.
//!
//! SIGTERM, SIGINT and SIGHUP start the same graceful shutdown.
//!
//! The socket is mode 0600 whatever the umask. At most [`MAX_CLIENTS`]
//! clients are served at once (one thread each); further ones get an
//! error line and are closed. A client idle for [`IDLE_TIMEOUT`] is closed.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::seccomp::{self, Filters, ThreadKind};

/// Longest command line accepted.
pub const MAX_LINE: usize = 4096;
/// Most clients served at once.
pub const MAX_CLIENTS: usize = 16;
/// A client that sends nothing (or reads nothing) for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Answer to a client beyond [`MAX_CLIENTS`].
const BUSY: &[u8] = b"{\"ok\":false,\"error\":\"too many control connections\"}\n";

/// A parsed control command.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Status,
    Shutdown {
        deadline_ms: Option<u64>,
    },
    FillSlot {
        id: String,
        path: PathBuf,
        read_only: bool,
    },
    EmptySlot {
        id: String,
    },
    /// Makes [`TEST_SYSCALL_NR`], a syscall outside every seccomp allowlist
    /// (only in builds with the `test-syscall` feature, for the test that
    /// the filter kills).
    #[cfg(feature = "test-syscall")]
    TestSyscall,
}

/// The syscall of the `test-syscall` command: `getppid`, harmless and
/// needed by no VMM thread.
pub const TEST_SYSCALL_NR: libc::c_long = libc::SYS_getppid;

/// Errors of the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("bad command: {0}")]
    BadCommand(String),
    #[error("binding control socket {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Parses one command line (without its newline).
pub fn parse_command(line: &str) -> Result<Command, ApiError> {
    let bad = |m: &str| ApiError::BadCommand(m.to_string());
    let words: Vec<&str> = line.split_ascii_whitespace().collect();
    match words.as_slice() {
        ["status"] => Ok(Command::Status),
        ["shutdown"] => Ok(Command::Shutdown { deadline_ms: None }),
        ["shutdown", ms] => ms
            .parse()
            .map(|v| Command::Shutdown {
                deadline_ms: Some(v),
            })
            .map_err(|_| bad("shutdown deadline must be a number of milliseconds")),
        ["fill-slot", id, path] | ["fill-slot", id, path, "rw"] => Ok(Command::FillSlot {
            id: id.to_string(),
            path: PathBuf::from(path),
            read_only: false,
        }),
        ["fill-slot", id, path, "ro"] => Ok(Command::FillSlot {
            id: id.to_string(),
            path: PathBuf::from(path),
            read_only: true,
        }),
        ["empty-slot", id] => Ok(Command::EmptySlot { id: id.to_string() }),
        #[cfg(feature = "test-syscall")]
        ["test-syscall"] => Ok(Command::TestSyscall),
        [] => Err(bad("empty line")),
        [cmd, ..] => Err(bad(&format!(
            "unknown command or wrong arguments: {:?} (status | shutdown [ms] | fill-slot ID PATH [ro] | empty-slot ID)",
            cmd
        ))),
    }
}

/// What the control socket acts on.
pub trait Controller: Send + Sync + 'static {
    /// JSON object body for `status` (without `ok`).
    fn status(&self) -> serde_json::Value;
    /// Starts a graceful shutdown.
    fn shutdown(&self, deadline_ms: Option<u64>);
    /// Fills a drive slot.
    fn fill_slot(&self, id: &str, path: &std::path::Path, read_only: bool) -> Result<(), String>;
    /// Empties a drive slot.
    fn empty_slot(&self, id: &str) -> Result<(), String>;
}

/// Handles one command, returning the JSON answer line.
pub fn handle_line(ctl: &dyn Controller, line: &str) -> String {
    let reply = match parse_command(line) {
        Err(e) => serde_json::json!({"ok": false, "error": e.to_string()}),
        Ok(Command::Status) => {
            let mut v = ctl.status();
            if let Some(o) = v.as_object_mut() {
                o.insert("ok".into(), true.into());
            }
            v
        }
        Ok(Command::Shutdown { deadline_ms }) => {
            ctl.shutdown(deadline_ms);
            serde_json::json!({"ok": true})
        }
        Ok(Command::FillSlot {
            id,
            path,
            read_only,
        }) => match ctl.fill_slot(&id, &path, read_only) {
            Ok(()) => serde_json::json!({"ok": true}),
            Err(e) => serde_json::json!({"ok": false, "error": e}),
        },
        Ok(Command::EmptySlot { id }) => match ctl.empty_slot(&id) {
            Ok(()) => serde_json::json!({"ok": true}),
            Err(e) => serde_json::json!({"ok": false, "error": e}),
        },
        #[cfg(feature = "test-syscall")]
        Ok(Command::TestSyscall) => {
            // SAFETY: getppid takes no arguments and touches no memory.
            let ppid = unsafe { libc::syscall(TEST_SYSCALL_NR) };
            serde_json::json!({"ok": true, "ppid": ppid})
        }
    };
    let mut s = reply.to_string();
    s.push('\n');
    s
}

/// Binds the control socket (mode 0600).
pub fn bind(path: &std::path::Path) -> Result<UnixListener, ApiError> {
    crate::unix_socket::bind_private(path).map_err(|source| ApiError::Bind {
        path: path.to_path_buf(),
        source,
    })
}

/// A counted client; the count drops when its thread ends.
struct ClientSlot(Arc<AtomicUsize>);

impl ClientSlot {
    /// Takes one of `max` slots, if one is free.
    fn take(count: &Arc<AtomicUsize>, max: usize) -> Option<ClientSlot> {
        count
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| ClientSlot(count.clone()))
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves the control socket on its own thread, one thread per client and
/// at most [`MAX_CLIENTS`] of them. The listener thread runs under the
/// `Api` seccomp filter, each client thread under `ApiClient` as well.
pub fn serve(
    listener: UnixListener,
    ctl: Arc<dyn Controller>,
    filters: &Filters,
) -> std::io::Result<()> {
    let clients = Arc::new(AtomicUsize::new(0));
    let conn_filters = filters.clone();
    seccomp::spawn("api".into(), ThreadKind::Api, filters, move || {
        for conn in listener.incoming() {
            match conn {
                Ok(stream) => {
                    let Some(slot) = ClientSlot::take(&clients, MAX_CLIENTS) else {
                        // A short line into an empty socket buffer.
                        let _ = stream.set_nonblocking(true);
                        let _ = (&stream).write_all(BUSY);
                        continue;
                    };
                    let ctl = ctl.clone();
                    let r = seccomp::spawn(
                        "api-conn".into(),
                        ThreadKind::ApiClient,
                        &conn_filters,
                        move || {
                            let _slot = slot;
                            serve_client(stream, ctl.as_ref())
                        },
                    );
                    if let Err(e) = r {
                        tracing::warn!("cannot start control connection thread: {e}");
                    }
                }
                Err(e) => tracing::warn!("control socket accept: {e}"),
            }
        }
    })?;
    Ok(())
}

fn serve_client(stream: UnixStream, ctl: &dyn Controller) {
    if stream.set_read_timeout(Some(IDLE_TIMEOUT)).is_err()
        || stream.set_write_timeout(Some(IDLE_TIMEOUT)).is_err()
    {
        return;
    }
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = Vec::new();
        let n = match (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(n) => n,
            Err(_) => return,
        };
        if n == 0 {
            return;
        }
        if line.last() != Some(&b'\n') {
            let _ =
                out.write_all(b"{\"ok\":false,\"error\":\"line too long or not terminated\"}\n");
            return;
        }
        let reply = match std::str::from_utf8(&line) {
            Ok(s) => handle_line(ctl, s.trim_end()),
            Err(_) => "{\"ok\":false,\"error\":\"not UTF-8\"}\n".to_string(),
        };
        if out.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_commands_parse() {
        assert_eq!(parse_command("status").unwrap(), Command::Status);
        assert_eq!(
            parse_command("shutdown 250").unwrap(),
            Command::Shutdown {
                deadline_ms: Some(250)
            }
        );
        assert_eq!(
            parse_command("fill-slot l1 /tmp/x ro").unwrap(),
            Command::FillSlot {
                id: "l1".into(),
                path: "/tmp/x".into(),
                read_only: true
            }
        );
        assert_eq!(
            parse_command("empty-slot l1").unwrap(),
            Command::EmptySlot { id: "l1".into() }
        );
    }

    #[test]
    fn client_slots_are_bounded_and_given_back() {
        let count = Arc::new(AtomicUsize::new(0));
        let held: Vec<ClientSlot> = (0..3)
            .map(|_| ClientSlot::take(&count, 3).expect("a free slot"))
            .collect();
        assert!(ClientSlot::take(&count, 3).is_none());
        drop(held);
        assert_eq!(count.load(Ordering::SeqCst), 0);
        assert!(ClientSlot::take(&count, 3).is_some());
    }

    #[test]
    fn huge_shutdown_deadline_parses() {
        assert_eq!(
            parse_command("shutdown 18446744073709551615").unwrap(),
            Command::Shutdown {
                deadline_ms: Some(u64::MAX)
            }
        );
    }

    #[test]
    fn test_syscall_command_exists_only_with_its_feature() {
        assert_eq!(
            parse_command("test-syscall").is_ok(),
            cfg!(feature = "test-syscall")
        );
    }

    #[test]
    fn bad_control_commands_are_refused() {
        assert!(parse_command("").is_err());
        assert!(parse_command("reboot").is_err());
        assert!(parse_command("shutdown soon").is_err());
        assert!(parse_command("fill-slot onlyid").is_err());
        assert!(parse_command("fill-slot a b maybe").is_err());
    }
}
