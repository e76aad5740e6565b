//! The guest's serial console on the host, bounded: a pipe that the VM
//! process writes (QEMU's chardev gets its write end) drained by a thread
//! into a file that never holds more than a limit (the newest bytes), and
//! reading or copying only the last bytes of such a log.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

/// A file that keeps at most `max` bytes: when a write would pass the
/// limit, the newest half of the limit is moved to the start of the file
/// and the rest truncated. Each byte is moved at most twice, whatever the
/// guest writes.
pub struct CappedFile {
    file: File,
    len: u64,
    max: u64,
}

impl CappedFile {
    /// Creates (truncates) `path`, refusing to follow a symlink there.
    pub fn create(path: &Path, max: u64) -> std::io::Result<CappedFile> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o640)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)?;
        Ok(CappedFile {
            file,
            len: 0,
            max: max.max(2),
        })
    }

    /// Appends `data`, keeping only the newest `max` bytes in the file.
    pub fn write(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        let max = self.max;
        if data.len() as u64 >= max {
            data = &data[data.len() - max as usize..];
            self.keep_last(0)?;
        } else if self.len + data.len() as u64 > max {
            let keep = (max / 2).saturating_sub(data.len() as u64).min(self.len);
            self.keep_last(keep)?;
        }
        self.file.seek(SeekFrom::Start(self.len))?;
        self.file.write_all(data)?;
        self.len += data.len() as u64;
        Ok(())
    }

    /// Moves the last `keep` bytes to the start and truncates after them.
    fn keep_last(&mut self, keep: u64) -> std::io::Result<()> {
        let mut tail = vec![0u8; keep as usize];
        self.file.seek(SeekFrom::Start(self.len - keep))?;
        self.file.read_exact(&mut tail)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.file.write_all(&tail)?;
        self.file.set_len(keep)?;
        self.len = keep;
        Ok(())
    }
}

/// The draining thread of a serial pipe; it ends when every write end of
/// the pipe is closed (the VM process exited).
pub struct SerialDrain {
    thread: Option<JoinHandle<()>>,
}

impl SerialDrain {
    /// Waits until everything written to the pipe is in the file.
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Creates the console file at `path` and a pipe drained into it, bounded
/// by `max` bytes. Returns the pipe's write end (close-on-exec: the caller
/// hands it to the VM process) and the drain.
pub fn pipe_to_capped_file(path: &Path, max: u64) -> std::io::Result<(OwnedFd, SerialDrain)> {
    let mut out = CappedFile::create(path, max)?;
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)?;
    let name = path.display().to_string();
    let thread = std::thread::Builder::new()
        .name("serial-log".into())
        .spawn(move || {
            let mut r = File::from(r);
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match r.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if let Err(e) = out.write(&buf[..n]) {
                            // Keep draining: a VM must never block on its console.
                            tracing::warn!(log = %name, error = %e, "cannot write the serial log");
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        tracing::warn!(log = %name, error = %e, "cannot read the serial pipe");
                        break;
                    }
                }
            }
        })?;
    Ok((
        w,
        SerialDrain {
            thread: Some(thread),
        },
    ))
}

/// Opens `path` for reading without following a symlink, positioned at
/// its last `max` bytes. Returns the file and whether bytes were skipped.
fn open_tail(path: &Path, max: u64) -> std::io::Result<(File, bool)> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let start = meta.len().saturating_sub(max);
    f.seek(SeekFrom::Start(start))?;
    Ok((f, start > 0))
}

/// The last `max` bytes of the log at `path` (at most `max`, even if the
/// file grows meanwhile), and whether the start was cut.
pub fn read_tail(path: &Path, max: u64) -> std::io::Result<(Vec<u8>, bool)> {
    let (f, cut) = open_tail(path, max)?;
    let mut out = Vec::new();
    f.take(max).read_to_end(&mut out)?;
    Ok((out, cut))
}

/// Copies the last `max` bytes of `src` to `dest` atomically: written to a
/// new file (O_EXCL, unpredictable name) in `dest`'s directory and renamed
/// over `dest`, so a symlink or file planted at `dest` is replaced, never
/// followed or written through.
pub fn copy_tail(src: &Path, dest: &Path, max: u64) -> std::io::Result<()> {
    let dir = dest
        .parent()
        .ok_or_else(|| std::io::Error::other("no parent directory"))?;
    let (tail, _) = read_tail(src, max)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".serial-")
        .tempfile_in(dir)?;
    tmp.write_all(&tail)?;
    tmp.as_file().sync_all()?;
    tmp.persist(dest).map_err(|e| e.error)?;
    Ok(())
}

/// Where [`copy_tail`] of a sandbox's console goes.
pub fn kept_path(log_dir: &Path, id: &str) -> PathBuf {
    log_dir.join(format!("{id}-serial.log"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capped_file_keeps_the_newest_bytes_and_never_passes_the_limit() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("serial.log");
        let mut f = CappedFile::create(&p, 100).expect("create");
        let mut all = Vec::new();
        for i in 0..500u32 {
            let line = format!("line {i}\n");
            f.write(line.as_bytes()).expect("write");
            all.extend_from_slice(line.as_bytes());
            let on_disk = std::fs::read(&p).expect("read");
            assert!(on_disk.len() <= 100, "{} bytes", on_disk.len());
            assert!(all.ends_with(&on_disk), "the file is the newest bytes");
        }
        assert!(std::fs::read(&p).expect("read").len() >= 50);
        f.write(&[b'x'; 1000]).expect("one huge write");
        assert_eq!(std::fs::read(&p).expect("read"), vec![b'x'; 100]);
    }

    #[test]
    fn the_drain_bounds_what_a_writer_puts_in_the_file() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("serial.log");
        let (w, drain) = pipe_to_capped_file(&p, 4096).expect("pipe");
        let mut w = File::from(w);
        for _ in 0..1000 {
            w.write_all(&[b'a'; 1000]).expect("write");
        }
        w.write_all(b"THE END\n").expect("write");
        drop(w);
        drain.join();
        let data = std::fs::read(&p).expect("read");
        assert!(data.len() <= 4096, "{}", data.len());
        assert!(data.ends_with(b"THE END\n"));
    }

    #[test]
    fn tails_are_read_and_copied_without_reading_the_whole_file_or_following_links() {
        let d = tempfile::tempdir().expect("tempdir");
        let src = d.path().join("serial.log");
        let mut data = vec![b'a'; 10_000];
        data.extend_from_slice(b"panic: the end");
        std::fs::write(&src, &data).expect("write");
        let (tail, cut) = read_tail(&src, 14).expect("tail");
        assert_eq!(tail, b"panic: the end");
        assert!(cut);
        let logs = d.path().join("logs");
        std::fs::create_dir(&logs).expect("mkdir");
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"precious").expect("victim");
        let dest = kept_path(&logs, "sb");
        std::os::unix::fs::symlink(&victim, &dest).expect("planted symlink");
        copy_tail(&src, &dest, 100).expect("copy");
        assert_eq!(std::fs::read(&victim).expect("victim"), b"precious");
        assert!(!std::fs::symlink_metadata(&dest)
            .expect("dest")
            .file_type()
            .is_symlink());
        assert_eq!(
            std::fs::read(&dest).expect("copy"),
            &data[data.len() - 100..]
        );
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&src, &link).expect("symlink src");
        assert!(read_tail(&link, 10).is_err(), "a symlinked log is not read");
        assert_eq!(
            std::fs::read_dir(&logs).expect("ls").count(),
            1,
            "no temporary file left"
        );
    }
}
