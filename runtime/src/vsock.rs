//! Hybrid vsock (Firecracker-style) on the host side: a Unix socket per VM.
//!
//! Host -> guest: connect to `<uds>`, write `CONNECT <port>\n`, read
//! `OK <hostport>\n`; the stream then talks to the guest's port.
//! Guest -> host: a guest connection to CID 2 port P arrives on `<uds>_P`.
//!
//! The agent announces readiness with one guest-initiated connection to
//! [`READY_PORT`], writing `AMPOULE_AGENT_READY <version>\n`; the host listens
//! on `<uds>_1023` before the VM starts (never polls the VM before that).

use std::path::{Path, PathBuf};
use std::time::Duration;

use ampoule_agent_api::{READY_PORT, READY_PREFIX, STDIO_PORT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

/// Longest handshake or readiness line we read before giving up.
const MAX_LINE: usize = 256;

/// Errors of the hybrid vsock protocol.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("cannot connect to vsock socket {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {path}: {source}")]
    Listen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("vsock I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("guest port {port} refused the connection (answer {answer:?})")]
    Refused { port: u32, answer: String },
    #[error("bad readiness line from the agent: {0:?}")]
    BadReady(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("socket path {0} is too long for a Unix socket (108 bytes max)")]
    PathTooLong(PathBuf),
}

/// The socket on which guest connections to host port `port` arrive.
pub fn guest_port_path(uds: &Path, port: u32) -> PathBuf {
    let mut s = uds.as_os_str().to_os_string();
    s.push(format!("_{port}"));
    PathBuf::from(s)
}

/// Fails when `path` does not fit in `sockaddr_un`.
pub fn check_socket_path(path: &Path) -> Result<(), VsockError> {
    use std::os::unix::ffi::OsStrExt;
    if path.as_os_str().as_bytes().len() >= 108 {
        return Err(VsockError::PathTooLong(path.to_path_buf()));
    }
    Ok(())
}

/// Parses the hybrid vsock answer to `CONNECT`: `OK <hostport>`. Returns the
/// host port. `line` excludes the `\n`.
pub fn parse_connect_reply(line: &str) -> Option<u32> {
    let rest = line.strip_prefix("OK ")?;
    rest.trim().parse().ok()
}

/// Parses the agent's readiness line: `AMPOULE_AGENT_READY <version>`.
/// Returns the version. `line` excludes the `\n`.
pub fn parse_ready_line(line: &str) -> Option<String> {
    let rest = line.strip_prefix(READY_PREFIX)?;
    let version = rest.strip_prefix(' ')?.trim();
    if version.is_empty() || version.contains(char::is_whitespace) {
        return None;
    }
    Some(version.to_string())
}

/// The header line of a stdio stream connection (guest port 1025).
pub fn stdio_header(container_id: &str, exec_id: &str, stream: StdioStream) -> String {
    let exec = if exec_id.is_empty() { "-" } else { exec_id };
    format!("{container_id} {exec} {}\n", stream.word())
}

/// Which stdio stream a connection carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdioStream {
    Stdin,
    Stdout,
    Stderr,
    /// The process's descriptor N beyond stdio (`--preserve-fds`).
    Extra(u32),
}

impl StdioStream {
    /// The word used in the stdio header.
    pub fn word(self) -> String {
        match self {
            StdioStream::Stdin => "stdin".into(),
            StdioStream::Stdout => "stdout".into(),
            StdioStream::Stderr => "stderr".into(),
            StdioStream::Extra(fd) => ampoule_agent_api::extra_fd_stream(fd),
        }
    }
}

/// Reads one `\n`-terminated line byte by byte (never past the `\n`, so the
/// stream stays positioned at the payload). Returns the line without `\n`.
async fn read_line_exact(stream: &mut UnixStream, path: &Path) -> Result<String, VsockError> {
    let mut line = Vec::with_capacity(32);
    loop {
        let mut b = [0u8; 1];
        let n = stream.read(&mut b).await.map_err(|source| VsockError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if n == 0 {
            return Err(VsockError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed after {:?}",
                        String::from_utf8_lossy(&line)
                    ),
                ),
            });
        }
        if b[0] == b'\n' {
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        line.push(b[0]);
        if line.len() > MAX_LINE {
            return Err(VsockError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, "line too long"),
            });
        }
    }
}

/// Connects to guest port `port` through the hybrid vsock socket `uds`.
pub async fn connect(uds: &Path, port: u32, timeout: Duration) -> Result<UnixStream, VsockError> {
    tokio::time::timeout(timeout, connect_inner(uds, port))
        .await
        .map_err(|_| VsockError::Timeout(timeout))?
}

async fn connect_inner(uds: &Path, port: u32) -> Result<UnixStream, VsockError> {
    let mut stream = UnixStream::connect(uds)
        .await
        .map_err(|source| VsockError::Connect {
            path: uds.to_path_buf(),
            source,
        })?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(|source| VsockError::Io {
            path: uds.to_path_buf(),
            source,
        })?;
    let answer = match read_line_exact(&mut stream, uds).await {
        Ok(a) => a,
        // The hybrid vsock device closes the connection when nobody listens
        // on the guest port.
        Err(VsockError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::UnexpectedEof =>
        {
            return Err(VsockError::Refused {
                port,
                answer: String::new(),
            })
        }
        Err(e) => return Err(e),
    };
    match parse_connect_reply(&answer) {
        Some(_) => Ok(stream),
        None => Err(VsockError::Refused { port, answer }),
    }
}

/// Opens one stdio stream of a process (guest port 1025) and writes its header.
pub async fn connect_stdio(
    uds: &Path,
    container_id: &str,
    exec_id: &str,
    stream: StdioStream,
    timeout: Duration,
) -> Result<UnixStream, VsockError> {
    let mut s = connect(uds, STDIO_PORT, timeout).await?;
    s.write_all(stdio_header(container_id, exec_id, stream).as_bytes())
        .await
        .map_err(|source| VsockError::Io {
            path: uds.to_path_buf(),
            source,
        })?;
    Ok(s)
}

/// Listens for the agent's readiness connection on `<uds>_1023`. Bound before
/// the VM starts.
pub struct ReadyListener {
    listener: UnixListener,
    path: PathBuf,
}

impl ReadyListener {
    /// Binds `<uds>_1023`.
    pub fn bind(uds: &Path) -> Result<Self, VsockError> {
        let path = guest_port_path(uds, READY_PORT);
        check_socket_path(&path)?;
        let listener = UnixListener::bind(&path).map_err(|source| VsockError::Listen {
            path: path.clone(),
            source,
        })?;
        Ok(Self { listener, path })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the agent's connection and reads its readiness line; returns
    /// the agent version. Connections that do not carry a readiness line are
    /// an error (only the agent can connect here).
    pub async fn accept(&self) -> Result<String, VsockError> {
        let (mut stream, _) = self
            .listener
            .accept()
            .await
            .map_err(|source| VsockError::Io {
                path: self.path.clone(),
                source,
            })?;
        let line = read_line_exact(&mut stream, &self.path).await?;
        parse_ready_line(&line).ok_or(VsockError::BadReady(line))
    }
}

impl Drop for ReadyListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_reply_parsing() {
        assert_eq!(parse_connect_reply("OK 1073741824"), Some(1073741824));
        assert_eq!(parse_connect_reply("OK 5"), Some(5));
        assert_eq!(parse_connect_reply("OK"), None);
        assert_eq!(parse_connect_reply("OK x"), None);
        assert_eq!(parse_connect_reply("ERR 1"), None);
        assert_eq!(parse_connect_reply(""), None);
    }

    #[test]
    fn ready_line_parsing() {
        assert_eq!(
            parse_ready_line("AMPOULE_AGENT_READY 0.1.0"),
            Some("0.1.0".into())
        );
        assert_eq!(
            parse_ready_line("AMPOULE_AGENT_READY 0.1.0\r"),
            Some("0.1.0".into())
        );
        assert_eq!(parse_ready_line("AMPOULE_AGENT_READY"), None);
        assert_eq!(parse_ready_line("AMPOULE_AGENT_READY "), None);
        assert_eq!(parse_ready_line("AMPOULE_AGENT_READYX 1"), None);
        assert_eq!(parse_ready_line("AMPOULE_AGENT_READY 1 2"), None);
        assert_eq!(parse_ready_line("hello"), None);
    }

    #[test]
    fn guest_port_path_appends_port() {
        assert_eq!(
            guest_port_path(Path::new("/run/x/vsock.sock"), 1023),
            PathBuf::from("/run/x/vsock.sock_1023")
        );
    }

    #[test]
    fn stdio_header_uses_dash_for_init() {
        assert_eq!(stdio_header("c1", "", StdioStream::Stdout), "c1 - stdout\n");
        assert_eq!(stdio_header("c1", "", StdioStream::Extra(3)), "c1 - fd3\n");
        assert_eq!(
            stdio_header("c1", "e2", StdioStream::Stdin),
            "c1 e2 stdin\n"
        );
    }

    #[test]
    fn long_socket_path_is_rejected() {
        let p = PathBuf::from(format!("/{}", "a".repeat(120)));
        assert!(matches!(
            check_socket_path(&p),
            Err(VsockError::PathTooLong(_))
        ));
        assert!(check_socket_path(Path::new("/run/a.sock")).is_ok());
    }

    /// A fake hybrid-vsock device: answers CONNECT and then echoes payload,
    /// checking the client does not consume payload bytes with the handshake.
    #[tokio::test]
    async fn connect_handshake_against_fake_device() {
        let dir = tempfile::tempdir().expect("tempdir");
        let uds = dir.path().join("v.sock");
        let listener = UnixListener::bind(&uds).expect("bind");
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let line = read_line_exact(&mut s, Path::new("srv"))
                .await
                .expect("line");
            assert_eq!(line, "CONNECT 1024");
            // Answer and payload in one write: the client must stop at '\n'.
            s.write_all(b"OK 99\npayload").await.expect("write");
        });
        let mut c = connect(&uds, 1024, Duration::from_secs(5))
            .await
            .expect("connect");
        let mut buf = [0u8; 7];
        c.read_exact(&mut buf).await.expect("payload");
        assert_eq!(&buf, b"payload");
        server.await.expect("server");
    }

    #[tokio::test]
    async fn connect_to_closed_port_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let uds = dir.path().join("v.sock");
        let listener = UnixListener::bind(&uds).expect("bind");
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let _ = read_line_exact(&mut s, Path::new("srv")).await;
            drop(s);
        });
        let err = connect(&uds, 1024, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(err, VsockError::Refused { port: 1024, .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn ready_listener_reads_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let uds = dir.path().join("v.sock");
        let ready = ReadyListener::bind(&uds).expect("bind");
        let path = ready.path().to_path_buf();
        assert!(path.ends_with("v.sock_1023"));
        tokio::spawn(async move {
            let mut s = UnixStream::connect(&path).await.expect("connect");
            s.write_all(b"AMPOULE_AGENT_READY 0.1.0\n")
                .await
                .expect("write");
        });
        assert_eq!(ready.accept().await.expect("ready"), "0.1.0");
        let p = ready.path().to_path_buf();
        drop(ready);
        assert!(!p.exists(), "listener socket removed on drop");
    }
}
