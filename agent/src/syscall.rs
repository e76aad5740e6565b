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

use crate::container::mounts::DeviceNode;

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
    /// Whether `path` (symlinks followed) is a directory; an error when it
    /// does not exist.
    fn is_dir(&self, path: &Path) -> io::Result<bool>;
    /// Creates an empty file at `path` (a bind mount target) unless
    /// something, even a symlink, is already there.
    fn create_file(&self, path: &Path) -> io::Result<()>;
    /// Creates a symlink at `link` unless something is already there.
    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()>;
    /// Replaces whatever is at `path` with the device node `node` (its
    /// mode and owner included).
    fn make_device(&self, path: &Path, node: &DeviceNode) -> io::Result<()>;
    /// Makes `rootfs` the root: chdir, pivot_root, detach the old root,
    /// chdir `/`.
    fn pivot_root(&self, rootfs: &Path) -> io::Result<()>;
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

    fn is_dir(&self, path: &Path) -> io::Result<bool> {
        std::fs::metadata(path).map(|m| m.is_dir())
    }

    fn create_file(&self, path: &Path) -> io::Result<()> {
        // O_EXCL: an existing file is kept, and a symlink is not followed.
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
        {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
        match std::os::unix::fs::symlink(target, link) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            r => r,
        }
    }

    fn make_device(&self, path: &Path, node: &DeviceNode) -> io::Result<()> {
        use nix::sys::stat::{Mode, SFlag};
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::remove_file(path);
        let kind = match node.kind {
            'b' => SFlag::S_IFBLK,
            'p' => SFlag::S_IFIFO,
            _ => SFlag::S_IFCHR,
        };
        let dev = nix::sys::stat::makedev(node.major, node.minor);
        nix::sys::stat::mknod(path, kind, Mode::from_bits_truncate(node.mode), dev)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(node.mode))?;
        std::os::unix::fs::chown(path, Some(node.uid), Some(node.gid))
    }

    fn pivot_root(&self, rootfs: &Path) -> io::Result<()> {
        nix::unistd::chdir(rootfs)?;
        nix::unistd::pivot_root(".", ".")?;
        nix::mount::umount2(".", MntFlags::MNT_DETACH)?;
        nix::unistd::chdir("/")?;
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
    CreateFile(PathBuf),
    Symlink(PathBuf),
    MakeDevice(PathBuf),
    PivotRoot(PathBuf),
}

/// A fake kernel for tests: records every call, serves reads from `files`,
/// and fails writes to paths listed in `missing`. `is_dir` is true for
/// paths in `dirs`, false for those in `files`, an error otherwise.
#[cfg(test)]
#[derive(Default)]
pub struct Recording {
    pub calls: std::sync::Mutex<Vec<Call>>,
    pub files: std::sync::Mutex<std::collections::HashMap<PathBuf, String>>,
    pub dirs: std::sync::Mutex<std::collections::HashSet<PathBuf>>,
    pub missing: Vec<PathBuf>,
    /// Calls refused with EPERM, as in a user namespace: `"mknod"`, or a
    /// filesystem type to mount.
    pub eperm: Vec<&'static str>,
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
    pub fn set_dir(&self, path: &str) {
        if let Ok(mut d) = self.dirs.lock() {
            d.insert(PathBuf::from(path));
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
        if fstype.is_some_and(|t| self.eperm.contains(&t)) {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
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
    fn is_dir(&self, path: &Path) -> io::Result<bool> {
        if self.dirs.lock().map(|d| d.contains(path)).unwrap_or(false) {
            return Ok(true);
        }
        if self
            .files
            .lock()
            .map(|f| f.contains_key(path))
            .unwrap_or(false)
        {
            return Ok(false);
        }
        Err(io::Error::from(io::ErrorKind::NotFound))
    }
    fn create_file(&self, path: &Path) -> io::Result<()> {
        self.push(Call::CreateFile(path.to_path_buf()));
        Ok(())
    }
    fn symlink(&self, _target: &Path, link: &Path) -> io::Result<()> {
        self.push(Call::Symlink(link.to_path_buf()));
        Ok(())
    }
    fn make_device(&self, path: &Path, _node: &DeviceNode) -> io::Result<()> {
        if self.eperm.contains(&"mknod") {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        self.push(Call::MakeDevice(path.to_path_buf()));
        Ok(())
    }
    fn pivot_root(&self, rootfs: &Path) -> io::Result<()> {
        self.push(Call::PivotRoot(rootfs.to_path_buf()));
        Ok(())
    }
}
