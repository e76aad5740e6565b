//! Process stdio as byte streams over vsock.
//!
//! The host opens one vsock connection to guest port 1025 per stream and
//! starts it with one header line, `<container_id> <exec_id|-> <stream>\n`
//! (`-` is the container's init process, `stream` one of stdin, stdout,
//! stderr). After the header the connection carries raw bytes: host to
//! guest for stdin (the host's half-close, or CloseStdin, closes the
//! process's stdin), guest to host for stdout/stderr (the agent half-closes
//! the connection once the process side reached EOF, i.e. every writer
//! exited; WaitProcess answers after that, or after a short grace once the
//! process exited if something it left behind still holds the pipe, and
//! the stream goes on to EOF regardless). A connection may come
//! before or after the process is created; one that is never claimed is
//! dropped when its container is deleted.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{oneshot, watch};

/// Longest header line accepted, newline included.
pub const MAX_HEADER: usize = 512;
/// Longest container or exec id accepted.
#[cfg(test)]
use ampoule_agent_api::MAX_ID;
/// How long a new connection may take to send its header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Unclaimed connections kept at most (the rest are refused).
const MAX_PENDING: usize = 256;
/// How long a connection that arrived before its process is kept for it: a
/// host whose create or exec failed after it connected never claims it.
const EARLY_TTL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    Stdin,
    Stdout,
    Stderr,
    /// The process's descriptor N beyond stdio (header word `fd<N>`).
    Extra(u32),
}

/// Which process stream a connection is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamKey {
    pub container_id: String,
    /// "" for the container's init process.
    pub exec_id: String,
    pub kind: StreamKind,
}

impl StreamKey {
    pub fn new(container_id: &str, exec_id: &str, kind: StreamKind) -> StreamKey {
        StreamKey {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            kind,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StdioError {
    #[error("stdio header is longer than {MAX_HEADER} bytes")]
    HeaderTooLong,
    #[error("stdio connection closed before its header line ended")]
    HeaderTruncated,
    #[error("stdio header is not UTF-8")]
    HeaderNotUtf8,
    #[error("stdio header must be `<container_id> <exec_id|-> <stdin|stdout|stderr>`, got {0:?}")]
    HeaderFields(String),
    #[error("invalid id {0:?} in stdio header")]
    BadId(String),
    #[error("unknown stream {0:?} in stdio header (stdin, stdout, stderr or fd3..)")]
    BadStream(String),
    #[error("no stdio header within {HEADER_TIMEOUT:?}")]
    HeaderTimeout,
    #[error("reading stdio header: {0}")]
    Io(String),
}

/// Ids are what containerd and engines use: letters, digits, `_.-`, and
/// not `.`/`..`, so they are also safe as path components.
pub use ampoule_agent_api::valid_id;

/// Parses one header line (without its newline).
pub fn parse_header(line: &[u8]) -> Result<StreamKey, StdioError> {
    if line.len() >= MAX_HEADER {
        return Err(StdioError::HeaderTooLong);
    }
    let text = std::str::from_utf8(line).map_err(|_| StdioError::HeaderNotUtf8)?;
    let text = text.strip_suffix('\r').unwrap_or(text);
    let fields: Vec<&str> = text.split(' ').collect();
    let [cid, exec, stream] = fields[..] else {
        return Err(StdioError::HeaderFields(text.to_string()));
    };
    if !valid_id(cid) {
        return Err(StdioError::BadId(cid.to_string()));
    }
    let exec_id = if exec == "-" {
        ""
    } else if valid_id(exec) {
        exec
    } else {
        return Err(StdioError::BadId(exec.to_string()));
    };
    let kind = match stream {
        "stdin" => StreamKind::Stdin,
        "stdout" => StreamKind::Stdout,
        "stderr" => StreamKind::Stderr,
        other => match ampoule_agent_api::parse_extra_fd_stream(other) {
            Some(fd) => StreamKind::Extra(fd),
            None => return Err(StdioError::BadStream(other.to_string())),
        },
    };
    Ok(StreamKey::new(cid, exec_id, kind))
}

/// Reads the header line one byte at a time, so no stream byte after the
/// newline is consumed.
pub async fn read_header<R: AsyncRead + Unpin>(conn: &mut R) -> Result<StreamKey, StdioError> {
    let read = async {
        let mut line = Vec::with_capacity(64);
        loop {
            let mut b = [0u8; 1];
            let n = conn
                .read(&mut b)
                .await
                .map_err(|e| StdioError::Io(e.to_string()))?;
            if n == 0 {
                return Err(StdioError::HeaderTruncated);
            }
            if b[0] == b'\n' {
                return parse_header(&line);
            }
            line.push(b[0]);
            if line.len() >= MAX_HEADER {
                return Err(StdioError::HeaderTooLong);
            }
        }
    };
    tokio::time::timeout(HEADER_TIMEOUT, read)
        .await
        .map_err(|_| StdioError::HeaderTimeout)?
}

enum Slot<C> {
    Waiting(oneshot::Sender<C>),
    Arrived(C, Instant),
}

/// Matches host connections with the process streams that expect them,
/// whichever comes first.
pub struct Router<C> {
    slots: Mutex<HashMap<StreamKey, Slot<C>>>,
    early_ttl: Duration,
}

impl<C> Default for Router<C> {
    fn default() -> Self {
        Router {
            slots: Mutex::new(HashMap::new()),
            early_ttl: EARLY_TTL,
        }
    }
}

impl<C> Router<C> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<StreamKey, Slot<C>>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connection for `key`, now or once it arrives.
    pub fn expect(&self, key: StreamKey) -> oneshot::Receiver<C> {
        let (tx, rx) = oneshot::channel();
        let mut slots = self.lock();
        match slots.remove(&key) {
            Some(Slot::Arrived(conn, _)) => {
                let _ = tx.send(conn);
            }
            Some(Slot::Waiting(_)) | None => {
                slots.insert(key, Slot::Waiting(tx));
            }
        }
        rx
    }

    /// Hands a connection to whoever expects `key`, or keeps it for later.
    /// Returns false (and drops it) when a connection for `key` is already
    /// pending or too many are.
    pub fn attach(&self, key: StreamKey, conn: C) -> bool {
        let mut slots = self.lock();
        match slots.remove(&key) {
            Some(Slot::Waiting(tx)) => match tx.send(conn) {
                Ok(()) => true,
                // The process went away: keep nothing.
                Err(_) => false,
            },
            Some(arrived @ Slot::Arrived(..)) => {
                slots.insert(key, arrived);
                false
            }
            None => {
                let ttl = self.early_ttl;
                slots.retain(|_, s| !matches!(s, Slot::Arrived(_, t) if t.elapsed() >= ttl));
                let pending = slots
                    .values()
                    .filter(|s| matches!(s, Slot::Arrived(..)))
                    .count();
                if pending >= MAX_PENDING {
                    return false;
                }
                slots.insert(key, Slot::Arrived(conn, Instant::now()));
                true
            }
        }
    }

    /// Drops every slot of a container (deleted, or its create failed).
    pub fn forget_container(&self, container_id: &str) {
        self.lock().retain(|k, _| k.container_id != container_id);
    }

    /// Drops every slot of one process.
    pub fn forget_process(&self, container_id: &str, exec_id: &str) {
        self.lock()
            .retain(|k, _| !(k.container_id == container_id && k.exec_id == exec_id));
    }
}

/// Copies a process's output to the host connection once it arrives, until
/// EOF (every writer closed), then half-closes the connection and marks
/// `done`. A host that went away does not stop the draining, so the process
/// never blocks on a full pipe.
pub async fn pump_output<R, C>(mut src: R, conn: oneshot::Receiver<C>, done: watch::Sender<bool>)
where
    R: AsyncRead + Unpin,
    C: AsyncWrite + Unpin,
{
    let mut conn = conn.await.ok();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match src.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::debug!(error = %e, "stdio source read");
                break;
            }
        };
        if let Some(c) = conn.as_mut() {
            if let Err(e) = c.write_all(&buf[..n]).await {
                tracing::debug!(error = %e, "stdio host write; draining");
                conn = None;
            }
        }
    }
    if let Some(mut c) = conn {
        let _ = c.flush().await;
        let _ = c.shutdown().await;
    }
    let _ = done.send(true);
}

/// Copies the host's stdin connection into the process until the host
/// half-closes it or `close` fires; then the process's stdin is closed.
pub async fn pump_input<C, W>(conn: oneshot::Receiver<C>, mut sink: W, close: oneshot::Receiver<()>)
where
    C: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    tokio::pin!(close);
    let mut conn = tokio::select! {
        c = conn => match c { Ok(c) => c, Err(_) => return },
        _ = &mut close => return,
    };
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            r = conn.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            _ = &mut close => break,
        };
        if sink.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = sink.shutdown().await;
}

/// A non-blocking pipe end or pty master driven by tokio.
pub struct FdStream {
    fd: AsyncFd<OwnedFd>,
}

impl FdStream {
    pub fn new(fd: OwnedFd) -> io::Result<FdStream> {
        let flags = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))?;
        // SAFETY: the AsyncFd owns `fd` (an OwnedFd), so the descriptor
        // stays open and the same for the AsyncFd's whole life.
        let fd = unsafe { AsyncFd::register(fd) }?;
        Ok(FdStream { fd })
    }
}

impl AsyncRead for FdStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = match self.fd.poll_read_ready(cx) {
                Poll::Ready(Ok(g)) => g,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|inner| {
                nix::unistd::read(inner.get_ref().as_raw_fd(), unfilled).map_err(io::Error::from)
            }) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // A pty master reads EIO once the last slave fd closed: EOF.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for FdStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = match self.fd.poll_write_ready(cx) {
                Poll::Ready(Ok(g)) => g,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            match guard
                .try_io(|inner| nix::unistd::write(inner.get_ref(), data).map_err(io::Error::from))
            {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A socket's writing ends here (its reader sees EOF while reading
        // on); a pipe's ends when it is dropped (ENOTSOCK is no error).
        let _ = nix::sys::socket::shutdown(
            self.fd.get_ref().as_raw_fd(),
            nix::sys::socket::Shutdown::Write,
        );
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_container_exec_and_stream() {
        assert_eq!(
            parse_header(b"c1 e2 stderr"),
            Ok(StreamKey::new("c1", "e2", StreamKind::Stderr))
        );
    }

    #[test]
    fn dash_exec_id_means_the_init_process() {
        assert_eq!(
            parse_header(b"web - stdin"),
            Ok(StreamKey::new("web", "", StreamKind::Stdin))
        );
    }

    #[test]
    fn hostile_headers_are_rejected_not_trusted() {
        assert!(matches!(
            parse_header(b"a b"),
            Err(StdioError::HeaderFields(_))
        ));
        assert!(matches!(
            parse_header(b"a b c d"),
            Err(StdioError::HeaderFields(_))
        ));
        assert!(matches!(
            parse_header(b"  stdout"),
            Err(StdioError::HeaderFields(_)) | Err(StdioError::BadId(_))
        ));
        assert_eq!(
            parse_header(b"../x - stdout"),
            Err(StdioError::BadId("../x".into()))
        );
        assert_eq!(
            parse_header(b".. - stdout"),
            Err(StdioError::BadId("..".into()))
        );
        assert_eq!(
            parse_header(b"a/b - stdout"),
            Err(StdioError::BadId("a/b".into()))
        );
        assert_eq!(
            parse_header(b"a - stdweird"),
            Err(StdioError::BadStream("stdweird".into()))
        );
        assert_eq!(
            parse_header(b"a e1 fd3").map(|k| k.kind),
            Ok(StreamKind::Extra(3))
        );
        for bad in ["fd2", "fd0", "fd03", "fd67", "fd", "fd-1"] {
            assert_eq!(
                parse_header(format!("a - {bad}").as_bytes()),
                Err(StdioError::BadStream(bad.into())),
                "{bad}"
            );
        }
        assert_eq!(
            parse_header(&[0xff, b' ', b'-', b' ', b'x']),
            Err(StdioError::HeaderNotUtf8)
        );
        let long = vec![b'a'; MAX_HEADER];
        assert_eq!(parse_header(&long), Err(StdioError::HeaderTooLong));
        let long_id = format!("{} - stdout", "a".repeat(MAX_ID + 1));
        assert!(matches!(
            parse_header(long_id.as_bytes()),
            Err(StdioError::BadId(_))
        ));
    }

    #[tokio::test]
    async fn header_read_stops_at_newline_and_leaves_the_stream_bytes() {
        let (mut host, mut guest) = tokio::io::duplex(1024);
        host.write_all(b"c - stdin\nhello").await.expect("write");
        let key = read_header(&mut guest).await.expect("header");
        assert_eq!(key, StreamKey::new("c", "", StreamKind::Stdin));
        let mut rest = [0u8; 5];
        guest.read_exact(&mut rest).await.expect("rest");
        assert_eq!(&rest, b"hello");
    }

    #[tokio::test]
    async fn endless_header_is_cut_at_the_limit() {
        let (mut host, mut guest) = tokio::io::duplex(4096);
        host.write_all(&[b'x'; 2048]).await.expect("write");
        assert_eq!(
            read_header(&mut guest).await,
            Err(StdioError::HeaderTooLong)
        );
    }

    #[tokio::test]
    async fn header_cut_short_by_eof_is_an_error() {
        let (mut host, mut guest) = tokio::io::duplex(64);
        host.write_all(b"c - std").await.expect("write");
        drop(host);
        assert_eq!(
            read_header(&mut guest).await,
            Err(StdioError::HeaderTruncated)
        );
    }

    #[test]
    fn router_pairs_a_connection_that_came_first_or_second() {
        let r: Router<u32> = Router::default();
        let k = StreamKey::new("c", "", StreamKind::Stdout);
        assert!(r.attach(k.clone(), 1));
        assert_eq!(r.expect(k.clone()).try_recv().ok(), Some(1));
        let mut rx = r.expect(k.clone());
        assert!(r.attach(k, 2));
        assert_eq!(rx.try_recv().ok(), Some(2));
    }

    #[test]
    fn router_refuses_a_second_connection_for_the_same_stream() {
        let r: Router<u32> = Router::default();
        let k = StreamKey::new("c", "", StreamKind::Stdout);
        assert!(r.attach(k.clone(), 1));
        assert!(!r.attach(k.clone(), 2));
        assert_eq!(r.expect(k).try_recv().ok(), Some(1));
    }

    #[test]
    fn router_bounds_unclaimed_connections_and_forgets_deleted_containers() {
        let r: Router<u32> = Router::default();
        for i in 0..MAX_PENDING {
            assert!(r.attach(StreamKey::new(&format!("c{i}"), "", StreamKind::Stdin), 0));
        }
        assert!(!r.attach(StreamKey::new("extra", "", StreamKind::Stdin), 0));
        r.forget_container("c0");
        assert!(r.attach(StreamKey::new("extra", "", StreamKind::Stdin), 0));
    }

    #[test]
    fn router_drops_early_connections_nobody_claimed_in_time() {
        let r: Router<u32> = Router {
            slots: Mutex::new(HashMap::new()),
            early_ttl: Duration::ZERO,
        };
        let stale = StreamKey::new("failed", "exec-1", StreamKind::Stdout);
        assert!(r.attach(stale.clone(), 1));
        // The next arrival prunes the one whose process never came.
        assert!(r.attach(StreamKey::new("c", "", StreamKind::Stdout), 2));
        assert!(r.expect(stale).try_recv().is_err());
    }

    #[tokio::test]
    async fn output_is_fully_delivered_then_half_closed_before_done() {
        let (mut proc_w, proc_r) = tokio::io::duplex(64);
        let (host_side, mut host_read) = tokio::io::duplex(1 << 20);
        let (tx, rx) = oneshot::channel();
        let (done_tx, mut done_rx) = watch::channel(false);
        let pump = tokio::spawn(pump_output(proc_r, rx, done_tx));
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let writer = {
            let payload = payload.clone();
            tokio::spawn(async move {
                proc_w.write_all(&payload).await.expect("write");
                // process exits: its end closes
            })
        };
        // The host connects late: nothing is lost meanwhile.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let _ = tx.send(host_side);
        writer.await.expect("writer");
        done_rx.wait_for(|d| *d).await.expect("done");
        let mut got = Vec::new();
        host_read.read_to_end(&mut got).await.expect("read to EOF");
        assert_eq!(got, payload);
        pump.await.expect("pump");
    }

    #[tokio::test]
    async fn output_is_drained_when_the_host_never_attaches() {
        let (mut proc_w, proc_r) = tokio::io::duplex(64);
        let (tx, rx) = oneshot::channel::<tokio::io::DuplexStream>();
        drop(tx);
        let (done_tx, mut done_rx) = watch::channel(false);
        tokio::spawn(pump_output(proc_r, rx, done_tx));
        proc_w.write_all(&[1u8; 10_000]).await.expect("not blocked");
        drop(proc_w);
        done_rx.wait_for(|d| *d).await.expect("done");
    }

    #[tokio::test]
    async fn stdin_ends_when_the_host_half_closes_or_close_is_called() {
        let (mut host, guest_conn) = tokio::io::duplex(64);
        let (sink_w, mut sink_r) = tokio::io::duplex(64);
        let (ctx, crx) = oneshot::channel();
        let (_close_tx, close_rx) = oneshot::channel();
        let pump = tokio::spawn(pump_input(crx, sink_w, close_rx));
        let _ = ctx.send(guest_conn);
        host.write_all(b"abc").await.expect("write");
        host.shutdown().await.expect("half-close");
        let mut got = Vec::new();
        sink_r.read_to_end(&mut got).await.expect("sink EOF");
        assert_eq!(got, b"abc");
        pump.await.expect("pump");

        let (_host, guest_conn) = tokio::io::duplex(64);
        let (sink_w, mut sink_r) = tokio::io::duplex(64);
        let (ctx, crx) = oneshot::channel();
        let (close_tx, close_rx) = oneshot::channel();
        let pump = tokio::spawn(pump_input(crx, sink_w, close_rx));
        let _ = ctx.send(guest_conn);
        let _ = close_tx.send(());
        let mut got = Vec::new();
        sink_r
            .read_to_end(&mut got)
            .await
            .expect("sink EOF on close");
        pump.await.expect("pump");
    }
}
