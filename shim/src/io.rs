//! stdio of a process: containerd's FIFOs on the host side, byte streams to
//! the guest (one connection per stream) on the other. Output is relayed
//! until the guest closes its stream, which the agent does only after the
//! process exited and all its output was sent, so nothing is lost at exit:
//! `wait_output` returns once every byte reached the FIFO.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::net::UnixStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long output relays get to finish after the process exited before
/// they are abandoned (a guest that never closes a stream).
pub const OUTPUT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error("opening FIFO {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The FIFO paths containerd gave for a process (empty = not attached).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

impl StdioPaths {
    pub fn has_stdin(&self) -> bool {
        !self.stdin.is_empty()
    }
    pub fn has_stdout(&self) -> bool {
        !self.stdout.is_empty()
    }
    /// With a terminal, stderr is merged into the pty (stdout stream).
    pub fn has_stderr(&self) -> bool {
        !self.stderr.is_empty() && !self.terminal
    }
}

/// The guest-side streams of a process, connected by the caller (the
/// runtime's type: the CLI opens the same streams).
pub type GuestStreams = ampoule_runtime::container::Streams;

/// Running relays of one process.
pub struct ProcessIo {
    outputs: Vec<JoinHandle<u64>>,
    stdin: Option<JoinHandle<()>>,
    close_stdin: watch::Sender<bool>,
}

/// Opens a FIFO for writing without blocking on a reader (O_RDWR keeps it
/// open even if containerd's reader goes away and comes back).
fn open_writer(path: &str) -> Result<pipe::Sender, IoError> {
    pipe::OpenOptions::new()
        .read_write(true)
        .open_sender(path)
        .map_err(|source| IoError::Open {
            path: path.to_string(),
            source,
        })
}

/// Opens containerd's stdin FIFO read-only and non-blocking, so that no
/// thread ever waits in open(2) for containerd's writer (such a thread can
/// be neither cancelled nor joined). Until a writer has opened the FIFO it
/// reports neither data nor hang-up, so the relay just waits; once the
/// writer closes it, reads give EOF, which is how containerd ends a
/// process's stdin.
fn open_reader(path: &str) -> Result<pipe::Receiver, IoError> {
    pipe::OpenOptions::new()
        .open_receiver(path)
        .map_err(|source| IoError::Open {
            path: path.to_string(),
            source,
        })
}

/// Copies a guest output stream into a FIFO until the guest closes the
/// stream. If the FIFO's reader is gone, keeps draining the stream so the
/// guest never blocks. Returns the bytes relayed.
async fn relay_output(mut from: UnixStream, mut to: pipe::Sender, name: String) -> u64 {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    let mut sink_ok = true;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(stream = %name, error = %e, "reading a guest stream");
                break;
            }
        };
        total += n as u64;
        if sink_ok {
            if let Err(e) = to.write_all(&buf[..n]).await {
                tracing::warn!(stream = %name, error = %e, "writing to containerd's FIFO; discarding the rest");
                sink_ok = false;
            }
        }
    }
    tracing::debug!(stream = %name, bytes = total, "output stream closed");
    total
}

/// Copies containerd's stdin FIFO into the guest stream until the FIFO's
/// writer closes it (EOF) or CloseIO; then half-closes the stream, which the
/// guest sees as EOF on the process's stdin.
async fn relay_input(path: String, mut to: UnixStream, mut close: watch::Receiver<bool>) {
    let mut from = match open_reader(&path) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "stdin FIFO");
            let _ = to.shutdown().await;
            return;
        }
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            biased;
            r = from.read(&mut buf) => match r {
                Ok(0) => break,
                Ok(n) => {
                    if let Err(e) = to.write_all(&buf[..n]).await {
                        tracing::debug!(error = %e, "guest stdin stream closed");
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading containerd's stdin FIFO");
                    break;
                }
            },
            _ = close.changed() => {
                // Drain what containerd wrote before CloseIO.
                while let Ok(n) = from.try_read(&mut buf) {
                    if n == 0 || to.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                break;
            }
        }
    }
    let _ = to.shutdown().await;
}

impl ProcessIo {
    /// Starts relaying between the FIFOs in `paths` and `streams`.
    pub fn start(
        paths: &StdioPaths,
        streams: GuestStreams,
        label: &str,
    ) -> Result<ProcessIo, IoError> {
        let mut outputs = Vec::new();
        if let (true, Some(s)) = (paths.has_stdout(), streams.stdout) {
            let fifo = open_writer(&paths.stdout)?;
            outputs.push(tokio::spawn(relay_output(
                s,
                fifo,
                format!("{label} stdout"),
            )));
        }
        if let (true, Some(s)) = (paths.has_stderr(), streams.stderr) {
            let fifo = open_writer(&paths.stderr)?;
            outputs.push(tokio::spawn(relay_output(
                s,
                fifo,
                format!("{label} stderr"),
            )));
        }
        let (close_stdin, close_rx) = watch::channel(false);
        let stdin = match (paths.has_stdin(), streams.stdin) {
            (true, Some(s)) => Some(tokio::spawn(relay_input(paths.stdin.clone(), s, close_rx))),
            _ => None,
        };
        Ok(ProcessIo {
            outputs,
            stdin,
            close_stdin,
        })
    }

    /// CloseIO: the process's stdin gets EOF once buffered input is relayed.
    pub fn close_stdin(&self) {
        let _ = self.close_stdin.send(true);
    }

    /// Waits until every output stream has been relayed to the end (bounded
    /// by `OUTPUT_DRAIN_TIMEOUT`), then stops the stdin relay.
    pub async fn wait_output(&mut self) {
        let outputs = std::mem::take(&mut self.outputs);
        let all = futures_join_all(outputs);
        if tokio::time::timeout(OUTPUT_DRAIN_TIMEOUT, all)
            .await
            .is_err()
        {
            tracing::warn!(
                "output streams still open {OUTPUT_DRAIN_TIMEOUT:?} after exit; abandoning them"
            );
        }
        if let Some(h) = self.stdin.take() {
            // The process is gone: a relay still waiting for containerd's
            // writer, or still copying, is stopped.
            let _ = self.close_stdin.send(true);
            if tokio::time::timeout(std::time::Duration::from_millis(200), h)
                .await
                .is_err()
            {
                tracing::debug!("stdin relay did not end; dropped");
            }
        }
    }
}

impl Drop for ProcessIo {
    fn drop(&mut self) {
        for h in &self.outputs {
            h.abort();
        }
        if let Some(h) = &self.stdin {
            h.abort();
        }
    }
}

async fn futures_join_all(handles: Vec<JoinHandle<u64>>) {
    for h in handles {
        let _ = h.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn mkfifo(dir: &Path, name: &str) -> String {
        let p = dir.join(name);
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        p.display().to_string()
    }

    #[test]
    fn terminal_has_no_stderr() {
        let p = StdioPaths {
            stdin: String::new(),
            stdout: "/o".into(),
            stderr: "/e".into(),
            terminal: true,
        };
        assert!(!p.has_stderr() && p.has_stdout() && !p.has_stdin());
    }

    #[tokio::test]
    async fn output_is_relayed_to_the_end_after_the_guest_closes() {
        let d = tempfile::tempdir().unwrap();
        let out = mkfifo(d.path(), "out");
        let mut reader = pipe::OpenOptions::new().open_receiver(&out).unwrap();
        let (guest, host) = UnixStream::pair().unwrap();
        let paths = StdioPaths {
            stdout: out.clone(),
            ..Default::default()
        };
        let mut io = ProcessIo::start(
            &paths,
            GuestStreams {
                stdout: Some(host),
                ..Default::default()
            },
            "t",
        )
        .unwrap();
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let writer = {
            let payload = payload.clone();
            tokio::spawn(async move {
                let mut guest = guest;
                guest.write_all(&payload).await.unwrap();
                // guest closes: process exited and everything was sent
            })
        };
        let mut got = Vec::new();
        let read = tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            while got.len() < 300_000 {
                let n = reader.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            got
        });
        writer.await.unwrap();
        io.wait_output().await;
        assert_eq!(read.await.unwrap(), payload);
    }

    #[tokio::test]
    async fn stdin_ends_when_containerd_closes_its_writer() {
        let d = tempfile::tempdir().unwrap();
        let inp = mkfifo(d.path(), "in");
        let (mut guest, host) = UnixStream::pair().unwrap();
        let paths = StdioPaths {
            stdin: inp.clone(),
            ..Default::default()
        };
        let _io = ProcessIo::start(
            &paths,
            GuestStreams {
                stdin: Some(host),
                ..Default::default()
            },
            "t",
        )
        .unwrap();
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            let mut w = std::fs::OpenOptions::new().write(true).open(&inp).unwrap();
            w.write_all(b"abc").unwrap();
        });
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), guest.read_to_end(&mut got))
            .await
            .expect("EOF once the writer closed")
            .unwrap();
        writer.join().unwrap();
        assert_eq!(got, b"abc");
    }

    #[tokio::test]
    async fn stdin_without_a_writer_is_released_at_exit() {
        let d = tempfile::tempdir().unwrap();
        let inp = mkfifo(d.path(), "in");
        let (mut guest, host) = UnixStream::pair().unwrap();
        let paths = StdioPaths {
            stdin: inp,
            ..Default::default()
        };
        let mut io = ProcessIo::start(
            &paths,
            GuestStreams {
                stdin: Some(host),
                ..Default::default()
            },
            "t",
        )
        .unwrap();
        tokio::time::timeout(Duration::from_secs(5), io.wait_output())
            .await
            .expect("wait_output does not hang on a stdin nobody opened");
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), guest.read_to_end(&mut got))
            .await
            .expect("stdin stream closed")
            .unwrap();
        assert!(got.is_empty());
    }

    #[tokio::test]
    async fn stdin_is_relayed_and_closed_on_close_io() {
        let d = tempfile::tempdir().unwrap();
        let inp = mkfifo(d.path(), "in");
        let (mut guest, host) = UnixStream::pair().unwrap();
        let paths = StdioPaths {
            stdin: inp.clone(),
            ..Default::default()
        };
        let io = ProcessIo::start(
            &paths,
            GuestStreams {
                stdin: Some(host),
                ..Default::default()
            },
            "t",
        )
        .unwrap();
        let mut w = pipe::OpenOptions::new()
            .read_write(true)
            .open_sender(&inp)
            .unwrap();
        w.write_all(b"hello ").await.unwrap();
        w.write_all(b"world").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        io.close_stdin();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), guest.read_to_end(&mut got))
            .await
            .expect("stdin stream gets EOF after CloseIO")
            .unwrap();
        assert_eq!(got, b"hello world");
    }
}
