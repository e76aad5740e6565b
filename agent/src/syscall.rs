//! The narrow seam between the agent's decisions and the kernel.
//!
//! Code that decides what to mount or which cgroup file gets which value
//! takes a `&dyn Syscall`, so unit tests run those decisions against
//! [`Recording`] without a VM or root.

use std::io;
use std::path::Path;
#[cfg(test)]
use std::path::PathBuf;

use nix::mount::{MntFlags, MsFlags};

/// The system calls the agent's setup code goes through.
pub trait Syscall: Send + Sync {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()>;
    fn umount(&self, target: &Path, flags: MntFlags) -> io::Result<()>;
    fn mkdir_all(&self, path: &Path) -> io::Result<()>;
    fn write_file(&self, path: &Path, contents: &str) -> io::Result<()>;
    fn read_to_string(&self, path: &Path) -> io::Result<String>;
    /// Drops a block device's cached pages (BLKFLSBUF), so a drive whose
    /// backing file the host filled after boot is read afresh.
    fn flush_block_device(&self, dev: &Path) -> io::Result<()>;
}

/// The real kernel.
pub struct Linux;

impl Syscall for Linux {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()> {
        nix::mount::mount(source, target, fstype, flags, data).map_err(io::Error::from)
    }

    fn umount(&self, target: &Path, flags: MntFlags) -> io::Result<()> {
        nix::mount::umount2(target, flags).map_err(io::Error::from)
    }

    fn mkdir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn write_file(&self, path: &Path, contents: &str) -> io::Result<()> {
        // cgroup and proc files: no create, no truncate semantics needed,
        // one write() so the kernel sees the whole value at once.
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
        f.write_all(contents.as_bytes())
    }

    fn read_to_string(&self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(path)
    }

    fn flush_block_device(&self, dev: &Path) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        const BLKFLSBUF: libc::c_ulong = 0x1261; // _IO(0x12, 97)
        let f = std::fs::File::open(dev)?;
        // SAFETY: BLKFLSBUF takes no argument; `f` is an open block device.
        let r = unsafe { libc::ioctl(f.as_raw_fd(), BLKFLSBUF, 0) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// One call recorded by [`Recording`].
#[cfg(test)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Mount {
        source: Option<PathBuf>,
        target: PathBuf,
        fstype: Option<String>,
        flags: MsFlags,
        data: Option<String>,
    },
    Umount(PathBuf),
    MkdirAll(PathBuf),
    Flush(PathBuf),
    Write(PathBuf, String),
}

/// A fake kernel for tests: records every call, serves reads from `files`,
/// and fails writes to paths listed in `missing`.
#[cfg(test)]
#[derive(Default)]
pub struct Recording {
    pub calls: std::sync::Mutex<Vec<Call>>,
    pub files: std::sync::Mutex<std::collections::HashMap<PathBuf, String>>,
    pub missing: Vec<PathBuf>,
}

#[cfg(test)]
impl Recording {
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }
    pub fn writes(&self) -> Vec<(PathBuf, String)> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Write(p, s) => Some((p, s)),
                _ => None,
            })
            .collect()
    }
    pub fn set_file(&self, path: &str, contents: &str) {
        if let Ok(mut f) = self.files.lock() {
            f.insert(PathBuf::from(path), contents.to_string());
        }
    }
    fn push(&self, c: Call) {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(c);
        }
    }
}

#[cfg(test)]
impl Syscall for Recording {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()> {
        self.push(Call::Mount {
            source: source.map(Path::to_path_buf),
            target: target.to_path_buf(),
            fstype: fstype.map(str::to_string),
            flags,
            data: data.map(str::to_string),
        });
        Ok(())
    }
    fn umount(&self, target: &Path, _flags: MntFlags) -> io::Result<()> {
        self.push(Call::Umount(target.to_path_buf()));
        Ok(())
    }
    fn mkdir_all(&self, path: &Path) -> io::Result<()> {
        self.push(Call::MkdirAll(path.to_path_buf()));
        Ok(())
    }
    fn write_file(&self, path: &Path, contents: &str) -> io::Result<()> {
        if self.missing.iter().any(|m| m == path) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        self.push(Call::Write(path.to_path_buf(), contents.to_string()));
        Ok(())
    }
    fn flush_block_device(&self, dev: &Path) -> io::Result<()> {
        self.push(Call::Flush(dev.to_path_buf()));
        Ok(())
    }
    fn read_to_string(&self, path: &Path) -> io::Result<String> {
        self.files
            .lock()
            .ok()
            .and_then(|f| f.get(path).cloned())
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }
}
