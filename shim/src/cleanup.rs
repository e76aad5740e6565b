//! containerd's `delete` action: runs after the task is gone, also when the
//! shim was killed. Whatever the shim recorded in the bundle about its VM
//! (processes, directories, cgroups) is removed here.

use std::path::{Path, PathBuf};

use containerd_shim::api::DeleteResponse;

use crate::events::now;

/// File in the bundle of the task that booted the VM.
pub const RECORD_FILE: &str = "ampoule-vm.json";

/// Exit status reported for a task cleaned up after its shim died.
const KILLED_STATUS: u32 = 128 + 9;

/// What the shim knows about its VM, for cleanup by `delete`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VmRecord {
    pub sandbox_id: String,
    /// The runtime's sandbox directory (sockets, serial log).
    pub vm_dir: PathBuf,
    pub slot_dir: PathBuf,
    pub pids: Vec<u32>,
    pub cgroups: Vec<PathBuf>,
    pub serial_log: PathBuf,
    /// The pod's network namespace on the host and the interfaces whose tc
    /// redirects go with the VM.
    #[serde(default)]
    pub netns: Option<PathBuf>,
    #[serde(default)]
    pub net_interfaces: Vec<String>,
}

/// Writes the record atomically (temp file + rename).
pub fn write_record(bundle: &Path, record: &VmRecord) -> std::io::Result<()> {
    let tmp = bundle.join(format!(".{RECORD_FILE}.tmp"));
    let json = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, bundle.join(RECORD_FILE))
}

pub fn read_record(bundle: &Path) -> Option<VmRecord> {
    let raw = std::fs::read(bundle.join(RECORD_FILE)).ok()?;
    serde_json::from_slice(&raw).ok()
}

/// Whether `pid` is still one of the VM's processes: its command line
/// names the VM's directory (a recycled pid would not).
fn is_vm_process(pid: u32, vm_dir: &Path) -> bool {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let needle = vm_dir.display().to_string();
    String::from_utf8_lossy(&raw)
        .replace('\0', " ")
        .contains(&needle)
}

/// Kills the VM's processes, removes its files and cgroups.
pub async fn cleanup_vm(record: &VmRecord) {
    for &pid in &record.pids {
        if is_vm_process(pid, &record.vm_dir) {
            tracing::warn!(pid, sandbox = %record.sandbox_id, "killing a VM process left by a dead shim");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    // Give the kernel a moment to end them before their cgroups go.
    for _ in 0..50 {
        if !record
            .pids
            .iter()
            .any(|&p| is_vm_process(p, &record.vm_dir))
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    if let Some(netns) = &record.netns {
        ampoule_runtime::pod::network::detach(netns, &record.net_interfaces);
    }
    // The shared directory's mounts are detached before anything goes; it
    // is never removed recursively.
    ampoule_runtime::pod::share_fs::teardown(&ampoule_runtime::pod::share_fs::dir_for(
        &record.vm_dir,
    ));
    for dir in [&record.vm_dir, &record.slot_dir] {
        if let Err(e) = std::fs::remove_dir_all(dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %dir.display(), error = %e, "removing");
            }
        }
    }
    let cgroups = record.cgroups.clone();
    let _ =
        tokio::task::spawn_blocking(move || ampoule_runtime::host_cgroup::remove(&cgroups)).await;
}

/// Removes the shim socket of `id`'s group unless a shim still serves it.
fn remove_dead_socket(containerd_address: &str, namespace: &str, id: &str, bundle: &Path) {
    let group = crate::start::bundle_annotations(bundle)
        .map(|a| crate::start::grouping(id, &a))
        .unwrap_or_else(|_| id.to_string());
    let address = crate::start::socket_address(containerd_address, namespace, &group);
    let path = crate::start::socket_path(&address);
    if std::path::Path::new(path).exists() && std::os::unix::net::UnixStream::connect(path).is_err()
    {
        tracing::info!(socket = path, "removing the socket of a dead shim");
        let _ = std::fs::remove_file(path);
    }
}

/// The `delete` action.
pub async fn delete(
    containerd_address: &str,
    namespace: &str,
    id: &str,
    bundle: &Path,
) -> DeleteResponse {
    tracing::info!(namespace, id, bundle = %bundle.display(), "delete");
    if let Some(record) = read_record(bundle) {
        cleanup_vm(&record).await;
        let _ = std::fs::remove_file(bundle.join(RECORD_FILE));
    }
    if !containerd_address.is_empty() {
        remove_dead_socket(containerd_address, namespace, id, bundle);
    }
    DeleteResponse {
        pid: 0,
        exit_status: KILLED_STATUS,
        exited_at: Some(now()).into(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn record_round_trip_and_cleanup() {
        let d = tempfile::tempdir().unwrap();
        let vm_dir = d.path().join("vm");
        let slot_dir = d.path().join("slots");
        std::fs::create_dir(&vm_dir).unwrap();
        std::fs::create_dir(&slot_dir).unwrap();
        // A process that is "ours" (names vm_dir) and one that is not.
        let mut ours = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("sleep 30; echo {}", vm_dir.display()))
            .spawn()
            .unwrap();
        let mut other = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let rec = VmRecord {
            sandbox_id: "s".into(),
            vm_dir: vm_dir.clone(),
            slot_dir: slot_dir.clone(),
            pids: vec![ours.id(), other.id()],
            cgroups: vec![],
            serial_log: vm_dir.join("serial.log"),
            netns: None,
            net_interfaces: Vec::new(),
        };
        write_record(d.path(), &rec).unwrap();
        assert_eq!(read_record(d.path()), Some(rec));
        // Until it has exec'd, the child still shows the test's command line.
        for _ in 0..200 {
            if is_vm_process(ours.id(), &vm_dir) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let resp = delete("", "ns", "s", d.path()).await;
        assert_eq!(resp.exit_status, 137);
        assert!(ours.wait().unwrap().code().is_none(), "killed by a signal");
        assert!(
            other.try_wait().unwrap().is_none(),
            "an unrelated pid is left alone"
        );
        other.kill().unwrap();
        let _ = other.wait();
        assert!(!vm_dir.exists() && !slot_dir.exists());
        assert!(read_record(d.path()).is_none());
    }
}
