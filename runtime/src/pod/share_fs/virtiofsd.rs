//! One `virtiofsd` per sandbox, serving its shared directory.
//!
//! The runtime creates the vhost-user listening socket itself and hands it
//! over (`--fd`): the socket exists before the VMM connects (no polling),
//! and it can be given to the jail's uid, which the VMM runs as.
//! virtiofsd runs as root because it serves files of every owner; its own
//! sandbox confines it (`--sandbox=namespace`: new mount, pid and network
//! namespaces with the shared directory as `/`; its seccomp filter in
//! `kill` mode; capabilities dropped to the file-serving ones).

use std::ffi::OsString;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use tokio::process::Command;

use crate::hypervisor::{HypervisorError, VmConfig};
use crate::process::ProcessGroup;

/// Name of the virtiofsd member of a sandbox's process group.
pub const VIRTIOFSD_PROCESS: &str = "virtiofsd";

/// The vhost-user socket between the VMM and virtiofsd.
pub fn socket_path(vm_dir: &Path) -> PathBuf {
    vm_dir.join("virtiofs.sock")
}

/// The arguments of virtiofsd serving `shared_dir` on the listening `fd`.
pub fn argv(fd: RawFd, shared_dir: &Path, nofile_hard: Option<u64>) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec![
        format!("--fd={fd}").into(),
        {
            let mut s = OsString::from("--shared-dir=");
            s.push(shared_dir.as_os_str());
            s
        },
        "--sandbox=namespace".into(),
        "--seccomp=kill".into(),
        // Close-to-open consistency with one-second attribute timeouts: a
        // write on either side is seen by the other within a second.
        "--cache=auto".into(),
        // Each volume and rootfs is a mount of its own: the guest gets them
        // as submounts, so inode numbers of different host filesystems do
        // not collide.
        "--announce-submounts".into(),
        // File capabilities (security.capability) and other xattrs of
        // container images.
        "--xattr".into(),
        "--log-level=warn".into(),
    ];
    // virtiofsd raises RLIMIT_NOFILE to 1000000 by default and warns when
    // the hard limit is lower: ask for the hard limit.
    if let Some(n) = nofile_hard {
        a.push(format!("--rlimit-nofile={n}").into());
    }
    a
}

/// Starts virtiofsd for `vm`'s shared directory in `group`. When the VMM
/// is jailed (`jail`), the socket is given to the jail's uid and gid and
/// virtiofsd joins the jail's memory cgroup before it runs, so its forked
/// server is counted there too.
pub fn spawn(
    group: &mut ProcessGroup,
    vm: &VmConfig,
    jail: Option<&crate::jail::SandboxJail>,
) -> Result<Option<PathBuf>, HypervisorError> {
    let owner = jail.map(|j| j.uid());
    let cgroup_procs = jail.map(|j| j.cgroup().procs_file());
    let cgroup_procs = cgroup_procs.as_deref();
    let Some(fs) = &vm.shared_fs else {
        return Ok(None);
    };
    let sock = socket_path(&vm.dir);
    let _ = std::fs::remove_file(&sock);
    let invalid = |what: &str, e: std::io::Error| {
        HypervisorError::Invalid(format!("virtiofsd socket {}: {what}: {e}", sock.display()))
    };
    let listener = UnixListener::bind(&sock).map_err(|e| invalid("bind", e))?;
    if let Some(id) = owner {
        std::os::unix::fs::chown(&sock, Some(id), Some(id)).map_err(|e| invalid("chown", e))?;
    }
    let fd = listener.as_raw_fd();
    let nofile_hard = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(_, hard)| hard);
    let mut cmd = Command::new(&fs.virtiofsd);
    cmd.args(argv(fd, &fs.dir, nofile_hard));
    let procs = cgroup_procs
        .map(|p| std::ffi::CString::new(p.as_os_str().as_encoded_bytes()))
        .transpose()
        .map_err(|e| HypervisorError::Invalid(format!("cgroup path: {e}")))?;
    crate::hypervisor::inherit_fds(&mut cmd, vec![fd]);
    // SAFETY: between fork and exec the closure only makes async-signal-safe
    // system calls (open, write, close) on `procs`, a C string built before
    // the fork.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(p) = &procs {
                // "0": the writing process itself.
                let f = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if f < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let n = libc::write(f, b"0".as_ptr().cast(), 1);
                libc::close(f);
                if n != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    group.spawn(VIRTIOFSD_PROCESS, cmd, &vm.process_log(VIRTIOFSD_PROCESS))?;
    // Only virtiofsd holds the listener now.
    drop(listener);
    tracing::debug!(dir = %fs.dir.display(), socket = %sock.display(), "virtiofsd started");
    Ok(Some(sock))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtiofsd_is_sandboxed_and_serves_only_the_shared_directory() {
        let a: Vec<String> = argv(7, Path::new("/run/ampoule/vm/.shared/s1"), Some(20000))
            .into_iter()
            .map(|s| s.into_string().expect("utf-8"))
            .collect();
        for want in [
            "--fd=7",
            "--shared-dir=/run/ampoule/vm/.shared/s1",
            "--sandbox=namespace",
            "--seccomp=kill",
            "--cache=auto",
            "--announce-submounts",
            "--rlimit-nofile=20000",
        ] {
            assert!(a.iter().any(|x| x == want), "{want} in {a:?}");
        }
    }
}
