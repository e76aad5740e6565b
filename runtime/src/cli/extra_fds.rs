//! File descriptors beyond stdio, which runc hands to the container process:
//! `--preserve-fds N` (fds 3..3+N of the caller) and, on create and run,
//! systemd socket activation of the runtime itself (`LISTEN_FDS` with
//! `LISTEN_PID` naming us).
//!
//! A host descriptor cannot itself cross into a microVM; what it carries
//! can, as stdio does: each preserved descriptor becomes a vsock stream of
//! its own, relayed by the runtime, and is the process's descriptor of the
//! same number in the guest ([`classify`] says which way the bytes go: a
//! pipe the process reads or writes, or a connected stream socket both
//! ways). What has no byte stream to relay is refused with the reason,
//! before anything boots: a listening socket (socket activation: the
//! guest's process would need to accept connections made on the host), a
//! datagram socket (message boundaries), a descriptor that is not open.

use std::os::fd::RawFd;

use ampoule_runtime::pod::guest::FdMode;

/// Refused extra fds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtraFdsError {
    #[error(
        "--preserve-fds {0}: at most {max} descriptors beyond stdio can be passed into the \
         container's microVM",
        max = ampoule_agent_api::MAX_EXTRA_FDS
    )]
    TooMany(u32),
    #[error(
        "--preserve-fds: descriptor {fd} cannot be passed into the container's microVM: {why}"
    )]
    Unrelayable { fd: RawFd, why: String },
    #[error(
        "LISTEN_FDS={0}: the runtime was socket-activated, and listening sockets cannot be \
         passed into the container's microVM (only byte streams cross into it: stdio and \
         --preserve-fds pipes and connected sockets)"
    )]
    ListenFds(String),
}

/// How the kernel describes one open descriptor (a seam for tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdKind {
    NotOpen,
    /// A socket: its type (`SOCK_STREAM`, ...) and whether it listens.
    Socket {
        sock_type: i32,
        listening: bool,
    },
    /// Anything else (pipe, FIFO, file, terminal), with its `O_ACCMODE`.
    Other {
        access: i32,
    },
}

/// Reads `fd`'s kind in this process.
pub fn fd_kind(fd: RawFd) -> FdKind {
    use nix::sys::socket::{getsockopt, sockopt};
    use std::os::fd::BorrowedFd;
    let Ok(flags) = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL) else {
        return FdKind::NotOpen;
    };
    // SAFETY: `fd` is open (F_GETFL succeeded); the borrow lives only for
    // the getsockopt calls below, during which nothing closes it.
    let b = unsafe { BorrowedFd::borrow_raw(fd) };
    match getsockopt(&b, sockopt::SockType) {
        Ok(t) => FdKind::Socket {
            sock_type: t as i32,
            listening: getsockopt(&b, sockopt::AcceptConn).unwrap_or(false),
        },
        Err(_) => FdKind::Other {
            access: flags & libc::O_ACCMODE,
        },
    }
}

/// Which way descriptor `fd`'s bytes go, or why it cannot be relayed.
pub fn classify(fd: RawFd, kind: FdKind) -> Result<FdMode, ExtraFdsError> {
    let refuse = |why: &str| ExtraFdsError::Unrelayable {
        fd,
        why: why.to_string(),
    };
    match kind {
        FdKind::NotOpen => Err(refuse("it is not open")),
        FdKind::Socket {
            listening: true, ..
        } => Err(refuse(
            "it is a listening socket (socket activation); only byte streams cross into the \
             microVM",
        )),
        FdKind::Socket { sock_type, .. } if sock_type == libc::SOCK_STREAM => Ok(FdMode::ReadWrite),
        FdKind::Socket { .. } => Err(refuse(
            "it is a datagram or packet socket; only byte streams cross into the microVM",
        )),
        FdKind::Other { access } if access == libc::O_RDONLY => Ok(FdMode::Read),
        FdKind::Other { access } if access == libc::O_WRONLY => Ok(FdMode::Write),
        FdKind::Other { .. } => Ok(FdMode::ReadWrite),
    }
}

/// Checks `--preserve-fds` (descriptors 3.. of this process, their kinds
/// read by `kind_of`) and the socket activation of this process
/// (`LISTEN_FDS`, `LISTEN_PID` from `env`, our `pid`; runc honours it only
/// when `LISTEN_PID` is its own pid, so one meant for another process is
/// no reason to refuse). Returns the extra descriptors with their modes.
pub fn check(
    preserve_fds: u32,
    socket_activation: bool,
    env: impl Fn(&str) -> Option<String>,
    pid: u32,
    kind_of: impl Fn(RawFd) -> FdKind,
) -> Result<Vec<(u32, FdMode)>, ExtraFdsError> {
    if preserve_fds > ampoule_agent_api::MAX_EXTRA_FDS {
        return Err(ExtraFdsError::TooMany(preserve_fds));
    }
    if socket_activation {
        if let Some(n) = env("LISTEN_FDS") {
            let ours = env("LISTEN_PID").and_then(|p| p.trim().parse::<u32>().ok()) == Some(pid);
            let some = n.trim().parse::<u32>().map_or(true, |n| n > 0);
            if ours && some {
                return Err(ExtraFdsError::ListenFds(n));
            }
        }
    }
    (3..3 + preserve_fds)
        .map(|fd| {
            let raw = fd as RawFd;
            classify(raw, kind_of(raw)).map(|mode| (fd, mode))
        })
        .collect()
}

/// The kinds of descriptors 3.. as this process got them, read before it
/// opened anything of its own (its log file, the async runtime's
/// descriptors would otherwise be taken for the caller's).
static INHERITED: std::sync::OnceLock<Vec<FdKind>> = std::sync::OnceLock::new();

/// Reads the kinds of the descriptors this process was started with, from
/// 3 on: call first thing in `main`.
pub fn snapshot_inherited() {
    INHERITED.get_or_init(|| {
        (3..3 + ampoule_agent_api::MAX_EXTRA_FDS as RawFd)
            .map(fd_kind)
            .collect()
    });
}

/// The kind `fd` had when this process started (not open when not read).
fn inherited_kind(fd: RawFd) -> FdKind {
    INHERITED
        .get()
        .and_then(|k| k.get(usize::try_from(fd - 3).ok()?).copied())
        .unwrap_or(FdKind::NotOpen)
}

/// [`check`] against this process's environment and the descriptors it
/// was started with ([`snapshot_inherited`]), which are made
/// close-on-exec: they go only where the runtime passes them on (a
/// monitor), never into a VM process it starts.
pub fn check_own(
    preserve_fds: u32,
    socket_activation: bool,
) -> Result<Vec<(u32, FdMode)>, ExtraFdsError> {
    let extra = check(
        preserve_fds,
        socket_activation,
        |k| std::env::var(k).ok(),
        std::process::id(),
        inherited_kind,
    )?;
    for (fd, _) in &extra {
        let _ = nix::fcntl::fcntl(
            *fd as RawFd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
    }
    Ok(extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    fn pipes(_: RawFd) -> FdKind {
        FdKind::Other {
            access: libc::O_WRONLY,
        }
    }

    #[test]
    fn each_preserved_descriptor_gets_the_direction_its_kind_allows() {
        assert_eq!(check(0, true, env(&[]), 1, pipes), Ok(vec![]));
        let kinds = |fd: RawFd| match fd {
            3 => FdKind::Other {
                access: libc::O_RDONLY,
            },
            4 => FdKind::Other {
                access: libc::O_WRONLY,
            },
            5 => FdKind::Other {
                access: libc::O_RDWR,
            },
            _ => FdKind::Socket {
                sock_type: libc::SOCK_STREAM,
                listening: false,
            },
        };
        assert_eq!(
            check(4, false, env(&[]), 1, kinds),
            Ok(vec![
                (3, FdMode::Read),
                (4, FdMode::Write),
                (5, FdMode::ReadWrite),
                (6, FdMode::ReadWrite)
            ])
        );
    }

    #[test]
    fn what_has_no_byte_stream_is_refused_naming_the_descriptor_and_why() {
        for (kind, why) in [
            (FdKind::NotOpen, "not open"),
            (
                FdKind::Socket {
                    sock_type: libc::SOCK_STREAM,
                    listening: true,
                },
                "listening",
            ),
            (
                FdKind::Socket {
                    sock_type: libc::SOCK_DGRAM,
                    listening: false,
                },
                "datagram",
            ),
        ] {
            let e = check(1, false, env(&[]), 1, |_| kind).unwrap_err();
            let text = e.to_string();
            assert!(
                text.starts_with("--preserve-fds: descriptor 3") && text.contains(why),
                "{text}"
            );
        }
        assert_eq!(
            check(65, false, env(&[]), 1, pipes),
            Err(ExtraFdsError::TooMany(65))
        );
    }

    #[test]
    fn the_kind_of_real_descriptors_is_read_from_the_kernel() {
        use std::os::fd::AsRawFd;
        let (r, w) = nix::unistd::pipe().expect("pipe");
        assert_eq!(classify(0, fd_kind(r.as_raw_fd())), Ok(FdMode::Read));
        assert_eq!(classify(0, fd_kind(w.as_raw_fd())), Ok(FdMode::Write));
        let (a, _b) = std::os::unix::net::UnixStream::pair().expect("pair");
        assert_eq!(classify(0, fd_kind(a.as_raw_fd())), Ok(FdMode::ReadWrite));
        let dir = tempfile::tempdir().expect("tmp");
        let l = std::os::unix::net::UnixListener::bind(dir.path().join("s")).expect("bind");
        assert!(classify(0, fd_kind(l.as_raw_fd())).is_err());
        let d = std::os::unix::net::UnixDatagram::unbound().expect("dgram");
        assert!(classify(0, fd_kind(d.as_raw_fd())).is_err());
        let raw = r.as_raw_fd();
        drop(r);
        assert_eq!(fd_kind(raw), FdKind::NotOpen);
    }

    #[test]
    fn socket_activation_of_this_process_is_refused() {
        let ours = [("LISTEN_FDS", "2"), ("LISTEN_PID", "77")];
        assert_eq!(
            check(0, true, env(&ours), 77, pipes),
            Err(ExtraFdsError::ListenFds("2".into()))
        );
        // A malformed count meant for us is not taken as zero.
        let bad = [("LISTEN_FDS", "x"), ("LISTEN_PID", "77")];
        assert!(check(0, true, env(&bad), 77, pipes).is_err());
    }

    #[test]
    fn socket_activation_of_another_process_or_of_no_fds_is_no_reason_to_refuse() {
        let other = [("LISTEN_FDS", "2"), ("LISTEN_PID", "78")];
        assert_eq!(check(0, true, env(&other), 77, pipes), Ok(vec![]));
        let no_pid = [("LISTEN_FDS", "2")];
        assert_eq!(check(0, true, env(&no_pid), 77, pipes), Ok(vec![]));
        let zero = [("LISTEN_FDS", "0"), ("LISTEN_PID", "77")];
        assert_eq!(check(0, true, env(&zero), 77, pipes), Ok(vec![]));
        // exec: runc passes no activation fds to an exec'd process.
        let ours = [("LISTEN_FDS", "2"), ("LISTEN_PID", "77")];
        assert_eq!(check(0, false, env(&ours), 77, pipes), Ok(vec![]));
    }
}
