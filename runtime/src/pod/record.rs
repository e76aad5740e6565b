//! What a sandbox leaves on the host, written down when it boots, so that
//! whoever finds it dead (containerd's `delete` after the shim was killed,
//! `ampoule delete` after the monitor was) removes all of it: one record
//! and one cleanup for the shim and the OCI CLI.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::sandbox::Sandbox;

/// A sandbox's host resources.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub sandbox_id: String,
    /// The runtime's sandbox directory (sockets, serial log); its shared
    /// directory is found from it.
    pub sandbox_dir: PathBuf,
    /// The VM's host processes (VMM, vhost-user backends).
    #[serde(default)]
    pub pids: Vec<u32>,
    /// Host cgroup directories made for `linux.cgroupsPath`.
    #[serde(default)]
    pub host_cgroups: Vec<PathBuf>,
    /// The pod's network namespace on the host and the interfaces that got
    /// tc redirects.
    #[serde(default)]
    pub netns: Option<PathBuf>,
    #[serde(default)]
    pub net_interfaces: Vec<String>,
    /// Directories made for this sandbox alone (drive slots), removed whole.
    #[serde(default)]
    pub dirs: Vec<PathBuf>,
    /// Files made for this sandbox alone (bind images).
    #[serde(default)]
    pub files: Vec<PathBuf>,
    #[serde(default)]
    pub serial_log: PathBuf,
}

impl SandboxRecord {
    /// The record of a running sandbox (cgroups, directories and files are
    /// added by the caller as it makes them).
    pub fn of(sandbox: &Sandbox) -> SandboxRecord {
        let (netns, net_interfaces) = match sandbox.network() {
            Some(n) => (Some(n.netns().to_path_buf()), n.interface_names()),
            None => (None, Vec::new()),
        };
        SandboxRecord {
            sandbox_id: sandbox.id().to_string(),
            sandbox_dir: sandbox.dir().to_path_buf(),
            pids: sandbox.pids(),
            netns,
            net_interfaces,
            serial_log: sandbox.serial_log().to_path_buf(),
            ..Default::default()
        }
    }

    /// Kills what is left of the VM's processes (only those that still name
    /// the sandbox directory: a pid may have been reused), removes the tc
    /// redirects, the shared directory's mounts, the directories, files and
    /// cgroups.
    pub async fn clean_up(&self) {
        let dir = self.sandbox_dir.clone();
        if !dir.as_os_str().is_empty() {
            for &pid in &self.pids {
                if is_sandbox_process(pid, &dir) {
                    tracing::warn!(pid, sandbox = %self.sandbox_id, "killing a VM process left by a dead supervisor");
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            // Give the kernel a moment to end them before their cgroups go.
            for _ in 0..50 {
                if !self.pids.iter().any(|&p| is_sandbox_process(p, &dir)) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        if let Some(netns) = &self.netns {
            crate::pod::network::detach(netns, &self.net_interfaces);
        }
        if !dir.as_os_str().is_empty() {
            // The shared directory's mounts are detached before anything
            // goes; it is never removed recursively.
            crate::pod::share_fs::teardown(&crate::pod::share_fs::dir_for(&dir));
        }
        for d in std::iter::once(&dir).chain(&self.dirs) {
            if d.as_os_str().is_empty() {
                continue;
            }
            if let Err(e) = std::fs::remove_dir_all(d) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(dir = %d.display(), error = %e, "removing");
                }
            }
        }
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
        let cgroups = self.host_cgroups.clone();
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(name) = name {
                remove_jail_cgroups_in(&cgroups, &name);
            }
            crate::host_cgroup::remove(&cgroups)
        })
        .await;
    }
}

/// A jailed sandbox started with a cgroupsPath has its memory cgroup
/// (`<uid>-<sandbox name>`) inside the pod's: when its supervisor died,
/// nobody removed it, and the pod's cgroup cannot go before it.
fn remove_jail_cgroups_in(dirs: &[PathBuf], sandbox_name: &str) {
    let Some(controller) =
        crate::jail::cgroup::MemoryController::probe(Path::new(crate::jail::CGROUP_ROOT))
    else {
        return;
    };
    for d in dirs.iter().filter(|d| d.starts_with(controller.root())) {
        for (_, jail) in crate::jail::cgroup::sandbox_cgroups(d, "") {
            let ours = jail
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.split_once('-'))
                .is_some_and(|(_, rest)| rest == sandbox_name);
            if ours {
                tracing::info!(cgroup = %jail.display(), "removing the memory cgroup of a dead sandbox");
                crate::jail::cgroup::MemoryCgroup::existing(controller.clone(), jail).remove();
            }
        }
    }
}

/// Whether `pid` is still one of the sandbox's processes: its command line
/// names the sandbox directory (a recycled pid would not).
pub fn is_sandbox_process(pid: u32, sandbox_dir: &Path) -> bool {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let needle = sandbox_dir.display().to_string();
    String::from_utf8_lossy(&raw)
        .replace('\0', " ")
        .contains(&needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cleanup_kills_only_processes_naming_the_sandbox_and_removes_its_files() {
        let d = tempfile::tempdir().expect("tmp");
        let dir = d.path().join("vm");
        let slots = d.path().join("slots");
        let image = d.path().join("binds.erofs");
        std::fs::create_dir(&dir).expect("dir");
        std::fs::create_dir(&slots).expect("slots");
        std::fs::write(&image, b"x").expect("image");
        let mut ours = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("sleep 30; echo {}", dir.display()))
            .spawn()
            .expect("spawn");
        let mut other = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn");
        for _ in 0..200 {
            if is_sandbox_process(ours.id(), &dir) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let rec = SandboxRecord {
            sandbox_id: "s".into(),
            sandbox_dir: dir.clone(),
            pids: vec![ours.id(), other.id()],
            dirs: vec![slots.clone()],
            files: vec![image.clone()],
            ..Default::default()
        };
        let json = serde_json::to_string(&rec).expect("json");
        assert_eq!(
            serde_json::from_str::<SandboxRecord>(&json).expect("parse"),
            rec
        );
        rec.clean_up().await;
        assert!(ours.wait().expect("wait").code().is_none(), "killed");
        assert!(other.try_wait().expect("try_wait").is_none(), "left alone");
        let _ = other.kill();
        let _ = other.wait();
        assert!(!dir.exists() && !slots.exists() && !image.exists());
    }
}
