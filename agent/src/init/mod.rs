//! What the agent does as PID 1 before it serves: leave the initramfs for a
//! tmpfs root, mount the pseudo filesystems, turn on cgroup controllers.

pub mod cmdline;
pub mod mounts;

use std::path::Path;

use nix::mount::MsFlags;

use crate::syscall::Linux;

/// Guest uptime (ms) when PID 1 started, recorded by `record_start`.
static START_MS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// Notes the guest uptime at which the agent started (call first thing).
pub fn record_start() {
    let _ = START_MS.set(crate::sysinfo::uptime_ms());
}

/// Guest uptime (ms) when the agent started as /init.
pub fn first_start_ms() -> Option<u64> {
    START_MS.get().copied()
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn sys<E: Into<std::io::Error>>(what: impl Into<String>) -> impl FnOnce(E) -> InitError {
    let what = what.into();
    move |e| InitError::Sys {
        what,
        source: e.into(),
    }
}

/// pivot_root(2) refuses to move the initramfs (rootfs has no parent
/// mount), and containers need pivot_root. So PID 1 mounts a fresh tmpfs,
/// moves it over `/` and chroots into it: from then on the root is a mount
/// with a parent. No copy and no re-exec: the agent keeps running from its
/// (now hidden) initramfs file, and helpers exec it through /proc/self/exe,
/// which reaches the file whatever the path.
pub fn move_to_tmpfs_root() -> Result<(), InitError> {
    let new = Path::new("/newroot");
    std::fs::create_dir_all(new).map_err(sys("mkdir /newroot"))?;
    nix::mount::mount(
        Some("tmpfs"),
        new,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .map_err(sys("mount tmpfs on /newroot"))?;
    nix::unistd::chdir(new).map_err(sys("chdir /newroot"))?;
    nix::mount::mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(sys("move /newroot to /"))?;
    nix::unistd::chroot(".").map_err(sys("chroot"))?;
    nix::unistd::chdir("/").map_err(sys("chdir /"))?;
    Ok(())
}

/// Mounts /proc, /sys, /dev, /dev/pts, /dev/shm, cgroup2, /run, /tmp and
/// points fds 0-2 at /dev/console.
pub fn early_mounts() -> Result<(), InitError> {
    mounts::apply(&Linux, &mounts::early_mounts()).map_err(sys("early mount"))?;
    if let Ok(console) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        use std::os::fd::AsRawFd;
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors; `console` stays
            // open until the end of this scope and fds 0-2 are ours (PID 1).
            unsafe {
                libc::dup2(console.as_raw_fd(), fd);
            }
        }
    }
    Ok(())
}

/// Turns on the cgroup v2 controllers the containers use, at the root and
/// in `/sys/fs/cgroup/ampoule` (the parent of every container's cgroup).
/// Failures are logged: a guest without a controller still runs containers.
pub fn setup_cgroups() {
    if let Err(e) = crate::container::cgroup::setup_parent(&Linux) {
        tracing::warn!(error = %e, "cgroup setup");
    }
}
