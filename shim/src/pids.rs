//! Which pids containerd sees.
//!
//! A guest pid is a number in the guest's pid namespace: reported as a task
//! pid, host tools (`kill`, `nsenter`, `/proc`, monitoring) would act on
//! whatever host process has that number. As Kata does, every task and exec
//! of a pod is reported with the host pid of the pod's VM process (QEMU or
//! ampoule-vmm); guest pids appear only in `Pids` (`ctr task ps`).
//!
//! containerd's CRI gives a pod container the namespaces of its pod as
//! `/proc/<sandbox task pid>/ns/<type>` paths in its spec. That pid is now
//! the VM's host pid, so before the spec goes into the guest such paths are
//! pointed at the sandbox container's init in the guest.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NsPathError {
    #[error(
        "namespace path {path} names host process {pid}, not this pod's VM (pid {vm_pid}): \
         a container can join only namespaces of its own pod"
    )]
    ForeignProcess {
        path: String,
        pid: String,
        vm_pid: u32,
    },
    #[error(
        "namespace path {path} names the pod (VM pid {vm_pid}) but the pod's sandbox \
         container is not running in the guest"
    )]
    NoSandbox { path: String, vm_pid: u32 },
}

/// `(pid, rest)` of `/proc/<digits>` or `/proc/<digits>/<rest>`.
fn proc_pid_path(path: &str) -> Option<(&str, &str)> {
    let tail = path.strip_prefix("/proc/")?;
    let (pid, rest) = tail.split_once('/').unwrap_or((tail, ""));
    (!pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())).then_some((pid, rest))
}

/// Rewrites every `linux.namespaces[].path` under `/proc/<vm_pid>/` to
/// `/proc/<sandbox_guest_pid>/`. A path under another `/proc/<pid>/` (a
/// host process outside the pod) is refused; other paths are left as they
/// are. Returns how many paths were rewritten.
pub fn guest_namespace_paths(
    spec: &mut Value,
    vm_pid: u32,
    sandbox_guest_pid: Option<u32>,
    pod_network: bool,
) -> Result<usize, NsPathError> {
    // The pod's own network namespace on the host (CNI's
    // /var/run/netns/cni-...) cannot be opened in the guest: the container
    // joins the pod's guest network namespace, which holds the pod's
    // interfaces when the VM was booted with them (`pod_network`), or gets
    // one of its own; the pod's later containers join it through the
    // sandbox's /proc path below.
    use ampoule_runtime::container::namespaces::{guest_network, join_guest_pod_network};
    let mut rewritten = usize::from(if pod_network {
        join_guest_pod_network(spec).is_some()
    } else {
        guest_network(spec).is_some()
    });
    let Some(namespaces) = spec
        .get_mut("linux")
        .and_then(|l| l.get_mut("namespaces"))
        .and_then(Value::as_array_mut)
    else {
        return Ok(rewritten);
    };
    for ns in namespaces {
        let Some(path) = ns.get("path").and_then(Value::as_str) else {
            continue;
        };
        let Some((pid, rest)) = proc_pid_path(path) else {
            continue;
        };
        if vm_pid == 0 || pid.parse::<u32>().ok() != Some(vm_pid) {
            return Err(NsPathError::ForeignProcess {
                path: path.to_string(),
                pid: pid.to_string(),
                vm_pid,
            });
        }
        let guest = sandbox_guest_pid.ok_or_else(|| NsPathError::NoSandbox {
            path: path.to_string(),
            vm_pid,
        })?;
        let new = if rest.is_empty() {
            format!("/proc/{guest}")
        } else {
            format!("/proc/{guest}/{rest}")
        };
        ns["path"] = Value::String(new);
        rewritten += 1;
    }
    Ok(rewritten)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn paths(spec: &Value) -> Vec<Option<String>> {
        spec["linux"]["namespaces"]
            .as_array()
            .expect("namespaces")
            .iter()
            .map(|n| n.get("path").and_then(Value::as_str).map(str::to_string))
            .collect()
    }

    /// A CRI pod container: ipc/uts/net from the sandbox (host pid 4242 as
    /// containerd was told), its own pid and mount namespaces.
    fn cri_container(pid: u32) -> Value {
        json!({"linux": {"namespaces": [
            {"type": "pid"},
            {"type": "ipc", "path": format!("/proc/{pid}/ns/ipc")},
            {"type": "uts", "path": format!("/proc/{pid}/ns/uts")},
            {"type": "network", "path": format!("/proc/{pid}/ns/net")},
            {"type": "mount"}
        ]}})
    }

    #[test]
    fn the_vm_pid_in_namespace_paths_becomes_the_sandbox_guest_pid() {
        let mut spec = cri_container(4242);
        assert_eq!(
            guest_namespace_paths(&mut spec, 4242, Some(7), false),
            Ok(3)
        );
        assert_eq!(
            paths(&spec),
            vec![
                None,
                Some("/proc/7/ns/ipc".into()),
                Some("/proc/7/ns/uts".into()),
                Some("/proc/7/ns/net".into()),
                None
            ]
        );
    }

    #[test]
    fn paths_naming_other_host_processes_are_refused() {
        let mut spec = cri_container(999);
        let e = guest_namespace_paths(&mut spec, 4242, Some(7), false).unwrap_err();
        assert!(matches!(&e, NsPathError::ForeignProcess { pid, .. } if pid == "999"));
        // Before the VM pid is known nothing can be joined by pid.
        let mut spec = cri_container(4242);
        assert!(guest_namespace_paths(&mut spec, 0, Some(7), false).is_err());
        // A pid too large for u32 is not ours either.
        let mut spec = json!({"linux": {"namespaces": [
            {"type": "ipc", "path": "/proc/99999999999999999999/ns/ipc"}
        ]}});
        assert!(guest_namespace_paths(&mut spec, 4242, Some(7), false).is_err());
    }

    #[test]
    fn the_vm_pid_without_a_running_sandbox_is_refused() {
        let mut spec = cri_container(4242);
        assert_eq!(
            guest_namespace_paths(&mut spec, 4242, None, false),
            Err(NsPathError::NoSandbox {
                path: "/proc/4242/ns/ipc".into(),
                vm_pid: 4242
            })
        );
    }

    #[test]
    fn the_pods_host_network_namespace_becomes_a_new_one_in_the_guest() {
        // What CRI gives the sandbox container of a pod with its own network.
        let mut spec = json!({"linux": {"namespaces": [
            {"type": "pid"},
            {"type": "network", "path": "/var/run/netns/cni-1234"},
            {"type": "ipc"}
        ]}});
        assert_eq!(guest_namespace_paths(&mut spec, 4242, None, false), Ok(1));
        assert_eq!(paths(&spec), vec![None, None, None]);
        assert_eq!(spec["linux"]["namespaces"][1]["type"], "network");
    }

    #[test]
    fn other_paths_and_specs_without_namespaces_are_left_alone() {
        let mut spec = json!({"linux": {"namespaces": [
            {"type": "ipc", "path": "/proc/self/ns/ipc"},
            {"type": "uts", "path": "/procfs/4242/ns/uts"}
        ]}});
        let before = spec.clone();
        assert_eq!(
            guest_namespace_paths(&mut spec, 4242, Some(7), false),
            Ok(0)
        );
        assert_eq!(spec, before);
        let mut spec = json!({"process": {}});
        assert_eq!(guest_namespace_paths(&mut spec, 4242, None, false), Ok(0));
    }
}
