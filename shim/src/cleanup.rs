//! containerd's `delete` action: runs after the task is gone, also when the
//! shim was killed. Whatever the shim recorded in the bundle about its VM
//! (processes, directories, cgroups) is removed here.

use std::path::Path;

use containerd_shim::api::DeleteResponse;

use crate::events::now;

/// File in the bundle of the task that booted the VM.
pub const RECORD_FILE: &str = "ampoule-vm.json";

/// Exit status reported for a task cleaned up after its shim died.
const KILLED_STATUS: u32 = 128 + 9;

/// What the shim knows about its VM, for cleanup by `delete`: the pod
/// service's record.
pub use ampoule_runtime::pod::record::SandboxRecord as VmRecord;

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
        record.clean_up().await;
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
    async fn delete_cleans_up_by_the_record_in_the_bundle_and_removes_it() {
        let d = tempfile::tempdir().unwrap();
        let vm_dir = d.path().join("vm");
        let slot_dir = d.path().join("slots");
        std::fs::create_dir(&vm_dir).unwrap();
        std::fs::create_dir(&slot_dir).unwrap();
        let rec = VmRecord {
            sandbox_id: "s".into(),
            sandbox_dir: vm_dir.clone(),
            dirs: vec![slot_dir.clone()],
            serial_log: vm_dir.join("serial.log"),
            ..Default::default()
        };
        write_record(d.path(), &rec).unwrap();
        assert_eq!(read_record(d.path()), Some(rec));
        let resp = delete("", "ns", "s", d.path()).await;
        assert_eq!(resp.exit_status, 137);
        assert!(!vm_dir.exists() && !slot_dir.exists());
        assert!(read_record(d.path()).is_none());
    }
}
