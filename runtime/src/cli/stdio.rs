//! Host ends of a container process's stdio: relays to our own fds or to a
//! pty whose master went to `--console-socket`, the readiness pipe between
//! `create` and its monitor, and detaching.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;

use ampoule_runtime::container::Streams;
use ampoule_runtime::pod::guest::{FdMode, Guest};
use anyhow::Context;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinHandle;

/// Environment variable naming the fd on which a detached child reports
/// readiness (`OK <pid>` or `ERR <code> <message>`).
pub const NOTIFY_ENV: &str = "AMPOULE_NOTIFY_FD";

/// Copies `from` to `to` until EOF; then shuts `to`'s write side down.
async fn pump<R, W>(mut from: R, mut to: W)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let _ = tokio::io::copy(&mut from, &mut to).await;
    let _ = to.flush().await;
    let _ = to.shutdown().await;
}

/// Running relays of one process.
pub struct Relay {
    outputs: Vec<JoinHandle<()>>,
    others: Vec<JoinHandle<()>>,
}

impl Relay {
    /// Waits (bounded) until everything the process wrote has been copied.
    pub async fn finish(self, timeout: Duration) {
        let all = async {
            for h in self.outputs {
                let _ = h.await;
            }
        };
        let _ = tokio::time::timeout(timeout, all).await;
        for h in self.others {
            h.abort();
        }
    }
}

/// Relays the streams to our own stdin/stdout/stderr (and the extra
/// descriptors to ours of the same numbers).
pub fn relay_own_stdio(streams: Streams) -> Relay {
    let mut r = Relay {
        outputs: Vec::new(),
        others: Vec::new(),
    };
    relay_extra(streams.extra, &mut r);
    if let Some(s) = streams.stdin {
        let (_rd, wr) = s.into_split();
        r.others.push(tokio::spawn(pump(tokio::io::stdin(), wr)));
    }
    if let Some(s) = streams.stdout {
        r.outputs.push(tokio::spawn(pump(s, tokio::io::stdout())));
    }
    if let Some(s) = streams.stderr {
        r.outputs.push(tokio::spawn(pump(s, tokio::io::stderr())));
    }
    r
}

/// Relays each extra descriptor (`--preserve-fds`) of this process, which
/// it takes over (closed when its relay ends, so that a reader on the
/// host sees the end), to its stream: what the process reads flows in,
/// what it writes flows out, a socket both ways. Blocking copies on
/// threads of their own: a host pipe need not be one tokio can poll, and a
/// relay that never ends must not hold the runtime's shutdown. Output
/// copies are waited for by [`Relay::finish`].
fn relay_extra(extra: Vec<(u32, FdMode, tokio::net::UnixStream)>, r: &mut Relay) {
    for (fd, mode, stream) in extra {
        // SAFETY: `fd` is one of the descriptors --preserve-fds gave this
        // process for the container; checked open before anything booted,
        // and nothing else in the process uses or closes it.
        let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
        let stream = match stream.into_std().and_then(|s| {
            s.set_nonblocking(false)?;
            Ok(s)
        }) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(fd, error = %e, "extra descriptor relay");
                continue;
            }
        };
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let spawn = |f: Box<dyn FnOnce() + Send>| {
            let _ = std::thread::Builder::new()
                .name(format!("fd{fd}-relay"))
                .spawn(f);
        };
        match mode {
            FdMode::Read => spawn(Box::new(move || {
                copy_then_close_write(file, stream);
                drop(done_tx);
            })),
            FdMode::Write => spawn(Box::new(move || {
                copy_then_close_write(stream, file);
                drop(done_tx);
            })),
            FdMode::ReadWrite => {
                let (Ok(file2), Ok(stream2)) = (file.try_clone(), stream.try_clone()) else {
                    tracing::warn!(fd, "extra descriptor relay: dup failed");
                    continue;
                };
                spawn(Box::new(move || copy_then_close_write(file, stream)));
                spawn(Box::new(move || {
                    copy_then_close_write(stream2, file2);
                    drop(done_tx);
                }));
            }
        }
        let wait = tokio::spawn(async move {
            let _ = done_rx.await;
        });
        match mode {
            FdMode::Read => r.others.push(wait),
            FdMode::Write | FdMode::ReadWrite => r.outputs.push(wait),
        }
    }
}

/// Copies `from` to `to` until EOF, then shuts down `to`'s writing (a
/// socket's write half; a file or pipe is closed by the drop).
fn copy_then_close_write<R: Read, W: Write + ShutdownWrite>(mut from: R, mut to: W) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.flush();
    to.shutdown_write();
}

/// Ending the writing side of a relay's destination.
trait ShutdownWrite {
    fn shutdown_write(&self);
}

impl ShutdownWrite for std::os::unix::net::UnixStream {
    fn shutdown_write(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

impl ShutdownWrite for std::fs::File {
    fn shutdown_write(&self) {
        // A socket given as an extra descriptor: end its writing too (a
        // pipe or file ends when the last copy closes).
        let _ = nix::sys::socket::shutdown(self.as_raw_fd(), nix::sys::socket::Shutdown::Write);
    }
}

/// Relays the streams to a host pty (`slave` side; stdout carries the guest
/// pty's output) and forwards the pty's size to the guest.
pub fn relay_pty(
    streams: Streams,
    slave: OwnedFd,
    guest: Guest,
    container_id: String,
    exec_id: String,
) -> anyhow::Result<Relay> {
    let mut r = Relay {
        outputs: Vec::new(),
        others: Vec::new(),
    };
    relay_extra(streams.extra, &mut r);
    let rd = std::fs::File::from(slave.try_clone().context("dup pty")?);
    let wr = std::fs::File::from(slave.try_clone().context("dup pty")?);
    if let Some(s) = streams.stdin {
        let (_r, w) = s.into_split();
        r.others
            .push(tokio::spawn(pump(tokio::fs::File::from_std(rd), w)));
    }
    if let Some(s) = streams.stdout {
        r.outputs
            .push(tokio::spawn(pump(s, tokio::fs::File::from_std(wr))));
    }
    r.others.push(tokio::spawn(forward_winsize(
        slave,
        guest,
        container_id,
        exec_id,
    )));
    Ok(r)
}

/// Forwards the window size of our own terminal (stdin) to the guest.
pub fn forward_own_winsize(
    guest: Guest,
    container_id: String,
    exec_id: String,
) -> Option<JoinHandle<()>> {
    let fd = std::io::stdin().as_fd().try_clone_to_owned().ok()?;
    nix::unistd::isatty(fd.as_raw_fd())
        .ok()?
        .then(|| tokio::spawn(forward_winsize(fd, guest, container_id, exec_id)))
}

fn winsize(fd: RawFd) -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the valid, exclusively
    // borrowed `ws`; `fd` is an open descriptor owned by the caller.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
}

async fn forward_winsize(fd: OwnedFd, guest: Guest, container_id: String, exec_id: String) {
    let mut last = None;
    loop {
        let now = winsize(fd.as_raw_fd());
        if now.is_some() && now != last {
            if let Some((rows, cols)) = now {
                let _ = guest
                    .resize(&container_id, &exec_id, rows.into(), cols.into())
                    .await;
            }
            last = now;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Puts our stdin terminal in raw mode while the guest's pty does the line
/// discipline; restores it on drop.
pub struct RawMode {
    saved: Option<nix::sys::termios::Termios>,
}

impl RawMode {
    pub fn enter() -> RawMode {
        use nix::sys::termios;
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).ok();
        if let Some(t) = &saved {
            let mut raw = t.clone();
            termios::cfmakeraw(&mut raw);
            let _ = termios::tcsetattr(stdin.as_fd(), termios::SetArg::TCSANOW, &raw);
        }
        RawMode { saved }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin().as_fd(),
                nix::sys::termios::SetArg::TCSANOW,
                t,
            );
        }
    }
}

/// Opens a pty pair, makes the slave raw and sends the master to the
/// `--console-socket` Unix socket (SCM_RIGHTS). Returns the slave.
pub fn console_to_socket(socket: &Path) -> anyhow::Result<OwnedFd> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let pty = nix::pty::openpty(None, None).context("openpty")?;
    if let Ok(mut t) = nix::sys::termios::tcgetattr(pty.slave.as_fd()) {
        nix::sys::termios::cfmakeraw(&mut t);
        let _ =
            nix::sys::termios::tcsetattr(pty.slave.as_fd(), nix::sys::termios::SetArg::TCSANOW, &t);
    }
    let name = nix::unistd::ttyname(pty.slave.as_fd())
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "pty".into());
    let conn = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("cannot connect to console socket {}", socket.display()))?;
    let fds = [pty.master.as_raw_fd()];
    let iov = [std::io::IoSlice::new(name.as_bytes())];
    sendmsg::<()>(
        conn.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .with_context(|| format!("cannot send the pty master to {}", socket.display()))?;
    drop(pty.master);
    Ok(pty.slave)
}

/// The readiness pipe our parent gave us, if any.
pub fn notify_pipe() -> Option<std::fs::File> {
    let fd: RawFd = std::env::var(NOTIFY_ENV).ok()?.parse().ok()?;
    // The fd must be open; it must not leak into the VM's processes.
    nix::fcntl::fcntl(
        fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .ok()?;
    // SAFETY: the parent created this pipe end for us and named it in the
    // environment; nothing else in this process owns or uses it.
    Some(unsafe { std::fs::File::from_raw_fd(fd) })
}

/// Writes one line to the readiness pipe.
pub fn notify(pipe: &mut Option<std::fs::File>, line: &str) {
    if let Some(mut f) = pipe.take() {
        let _ = f.write_all(format!("{line}\n").as_bytes());
    }
}

/// Spawns `ampoule <args>` detached (own session), with stdio inherited or
/// from /dev/null, and waits for its readiness line. Returns its pid.
pub async fn spawn_detached(
    args: Vec<std::ffi::OsString>,
    null_stdio: bool,
    preserve_fds: u32,
) -> anyhow::Result<u32> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("cannot find the ampoule binary")?;
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")?;
    let wfd = w.as_raw_fd();
    let mut cmd = std::process::Command::new(exe);
    cmd.args(&args).env(NOTIFY_ENV, wfd.to_string());
    if null_stdio {
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
    }
    // SAFETY: between fork and exec the closure calls only setsid(2) and
    // fcntl(2), both async-signal-safe, on the child's own descriptors.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            nix::fcntl::fcntl(
                wfd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
            )
            .map_err(std::io::Error::from)?;
            // The --preserve-fds descriptors, close-on-exec in this process
            // (so that no VM process inherits them), go to the child.
            for fd in 3..3 + preserve_fds as RawFd {
                nix::fcntl::fcntl(
                    fd,
                    nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
                )
                .map_err(std::io::Error::from)?;
            }
            Ok(())
        });
    }
    let child = cmd.spawn().context("cannot start the container monitor")?;
    let pid = child.id();
    drop(w);
    drop(child);
    let line = tokio::task::spawn_blocking(move || {
        let mut f = std::fs::File::from(r);
        let mut s = String::new();
        let _ = f.read_to_string(&mut s);
        s
    })
    .await
    .context("waiting for the container monitor")?;
    let line = line.trim();
    if line.starts_with("OK") {
        return Ok(pid);
    }
    if let Some(rest) = line.strip_prefix("ERR ") {
        let (code, msg) = rest.split_once(' ').unwrap_or(("1", rest));
        return Err(anyhow::Error::new(super::create::ChildFailed {
            code: code.parse().unwrap_or(super::EXIT_FAILURE),
            message: msg.to_string(),
        }));
    }
    anyhow::bail!("the container monitor (pid {pid}) ended before reporting; see the log")
}
