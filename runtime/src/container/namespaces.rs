//! Namespace paths in a CLI bundle's `linux.namespaces`.
//!
//! A path there is a host path: `/proc/<pid>/ns/<type>` of another host
//! process (a runc-style sibling, podman's pod infra container) or a
//! bind-mounted namespace file such as `/run/netns/<name>`. The `ampoule`
//! CLI gives each container a microVM of its own, so no such namespace is
//! in the guest, and opening the path there would join whatever the guest
//! happens to have at it (`/proc/1/ns/ipc` is the agent's own) or fail only
//! after a VM was booted. So every `/proc/<pid>` path and every path of
//! another kind of namespace is refused before anything boots, with the
//! reason.
//!
//! A network namespace *file* (`/run/netns/<name>`, what podman with
//! netavark and CNI set up for a container or pod) is the pod's own network
//! on the host: the container gets a network namespace of its own in the
//! guest instead ([`guest_network`]; the shim does the same for CRI pods).
//! It has only `lo` until pod networking brings the host interfaces in.
//!
//! Namespaces without a path are new ones in the guest and are untouched:
//! podman's `--network none` (a `network` entry without a path: a fresh
//! namespace with only loopback). Host networking (no `network` entry) is
//! refused ([`check_own_network`]): the host's network cannot be shared
//! with a VM. The shim maps CRI's `/proc/<pod VM pid>/ns/*` paths itself
//! (shim/src/pids.rs); this check is for the CLI only.

use oci_spec::runtime::{LinuxNamespaceType, Spec};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NamespaceError {
    #[error(
        "joining the {kind} namespace of PID {pid} ({path}) is not possible: it is not in \
         this container's microVM"
    )]
    OtherProcess {
        kind: &'static str,
        pid: String,
        path: String,
    },
    #[error(
        "host networking is not possible in a microVM: the container would share the host's \
         network namespace, which cannot be shared with a VM; give it a network namespace of \
         its own (not hostNetwork or --network host), or run it with runc"
    )]
    HostNetwork,
    #[error(
        "joining the {kind} namespace {path} is not possible: namespaces of the host cannot \
         be joined from a microVM; leave out its path for a namespace of the container's own"
    )]
    HostPath { kind: &'static str, path: String },
}

/// The name `/proc/<pid>/ns/` gives a namespace type.
fn proc_name(t: LinuxNamespaceType) -> &'static str {
    match t {
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Time => "time",
    }
}

/// The pid of `/proc/<digits>/...`.
fn proc_pid(path: &str) -> Option<&str> {
    let tail = path.strip_prefix("/proc/")?;
    let pid = tail.split('/').next().unwrap_or(tail);
    (!pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())).then_some(pid)
}

/// Refuses the first namespace that names a path (see the module doc).
pub fn check_no_host_paths(spec: &Spec) -> Result<(), NamespaceError> {
    let namespaces = spec.linux().as_ref().and_then(|l| l.namespaces().as_ref());
    for ns in namespaces.into_iter().flatten() {
        let Some(path) = ns.path() else { continue };
        let path = path.to_string_lossy().into_owned();
        let kind = proc_name(ns.typ());
        return Err(if let Some(pid) = proc_pid(&path) {
            NamespaceError::OtherProcess {
                kind,
                pid: pid.to_string(),
                path,
            }
        } else if ns.typ() == LinuxNamespaceType::Network {
            // The pod's own network namespace: see [`guest_network`].
            continue;
        } else {
            NamespaceError::HostPath { kind, path }
        });
    }
    Ok(())
}

/// Refuses a spec without a network namespace of its own (host
/// networking: a CRI hostNetwork pod, podman's `--network host`): the
/// host's network cannot be shared with a VM, as with Kata.
pub fn check_own_network(spec: &Spec) -> Result<(), NamespaceError> {
    let own = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|n| n.iter().any(|ns| ns.typ() == LinuxNamespaceType::Network));
    if own {
        Ok(())
    } else {
        Err(NamespaceError::HostNetwork)
    }
}

/// The path of a `network` namespace that names a namespace file (not
/// `/proc/<pid>/...`) in `spec` (config.json as JSON): the pod's network
/// namespace on the host.
pub fn pod_network_path(spec: &serde_json::Value) -> Option<String> {
    spec.get("linux")?
        .get("namespaces")?
        .as_array()?
        .iter()
        .find(|ns| ns.get("type").and_then(|t| t.as_str()) == Some("network"))
        .and_then(|ns| ns.get("path")?.as_str())
        .filter(|p| proc_pid(p).is_none())
        .map(str::to_string)
}

/// Points the pod's network namespace file (see [`pod_network_path`]) at
/// the pod's network namespace in the guest, which the agent set up from
/// it ([`ampoule_agent_api::POD_NETNS_GUEST_PATH`]). Returns the host path
/// it replaced.
pub fn join_guest_pod_network(spec: &mut serde_json::Value) -> Option<String> {
    let host = pod_network_path(spec)?;
    for ns in spec
        .get_mut("linux")?
        .get_mut("namespaces")?
        .as_array_mut()?
    {
        if ns.get("type").and_then(|t| t.as_str()) == Some("network") {
            ns["path"] = serde_json::Value::from(ampoule_agent_api::POD_NETNS_GUEST_PATH);
        }
    }
    Some(host)
}

/// Removes the path of a `network` namespace that names a namespace file
/// (not `/proc/<pid>/...`) from `spec` (config.json as JSON): the container
/// gets a network namespace of its own in the guest. Returns the path it
/// removed.
pub fn guest_network(spec: &mut serde_json::Value) -> Option<String> {
    let namespaces = spec
        .get_mut("linux")?
        .get_mut("namespaces")?
        .as_array_mut()?;
    for ns in namespaces {
        if ns.get("type").and_then(|t| t.as_str()) != Some("network") {
            continue;
        }
        let path = ns.get("path").and_then(|p| p.as_str())?.to_string();
        if proc_pid(&path).is_some() {
            return None;
        }
        ns.as_object_mut()?.remove("path");
        tracing::info!(path, "the pod's network namespace: a new one in the guest");
        return Some(path);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(namespaces: serde_json::Value) -> Spec {
        let mut v = serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "linux": {}
        });
        v["linux"]["namespaces"] = namespaces;
        serde_json::from_value(v).expect("spec")
    }

    #[test]
    fn host_networking_is_refused_with_the_reason() {
        let host_net = spec(serde_json::json!([{"type": "pid"}, {"type": "mount"}]));
        let e = check_own_network(&host_net).unwrap_err();
        assert_eq!(e, NamespaceError::HostNetwork);
        assert!(e
            .to_string()
            .starts_with("host networking is not possible in a microVM"));
        let none: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2", "root": {"path": "rootfs"}
        }))
        .expect("spec");
        assert_eq!(check_own_network(&none), Err(NamespaceError::HostNetwork));
        let own = spec(serde_json::json!([{"type": "network"}]));
        assert_eq!(check_own_network(&own), Ok(()));
    }

    #[test]
    fn namespaces_without_paths_are_new_ones_and_accepted() {
        // runc's default, podman's --network none (a network entry without
        // a path), and host networking (no network entry).
        let own = spec(serde_json::json!([
            {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
            {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}
        ]));
        assert_eq!(check_no_host_paths(&own), Ok(()));
        let host_net = spec(serde_json::json!([{"type": "pid"}, {"type": "mount"}]));
        assert_eq!(check_no_host_paths(&host_net), Ok(()));
        let none: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2", "root": {"path": "rootfs"}
        }))
        .expect("spec");
        assert_eq!(check_no_host_paths(&none), Ok(()));
    }

    #[test]
    fn a_namespace_of_another_process_is_refused_naming_its_type_and_pid() {
        let s = spec(serde_json::json!([
            {"type": "pid"},
            {"type": "ipc", "path": "/proc/4242/ns/ipc"},
            {"type": "uts", "path": "/proc/4242/ns/uts"}
        ]));
        let e = check_no_host_paths(&s).unwrap_err();
        assert_eq!(
            e,
            NamespaceError::OtherProcess {
                kind: "ipc",
                pid: "4242".into(),
                path: "/proc/4242/ns/ipc".into()
            }
        );
        assert!(e
            .to_string()
            .starts_with("joining the ipc namespace of PID 4242"));
        assert!(e.to_string().contains("not in this container's microVM"));
        let net = spec(serde_json::json!([{"type": "network", "path": "/proc/7/ns/net"}]));
        assert!(matches!(
            check_no_host_paths(&net),
            Err(NamespaceError::OtherProcess { kind: "net", .. })
        ));
    }

    #[test]
    fn a_network_namespace_file_becomes_a_new_guest_network_namespace() {
        let s = spec(serde_json::json!([{"type": "network", "path": "/run/netns/netns-1"}]));
        assert_eq!(check_no_host_paths(&s), Ok(()));
        let mut v = serde_json::json!({"linux": {"namespaces": [
            {"type": "pid"}, {"type": "network", "path": "/run/netns/netns-1"}
        ]}});
        assert_eq!(guest_network(&mut v), Some("/run/netns/netns-1".into()));
        assert_eq!(
            v["linux"]["namespaces"][1],
            serde_json::json!({"type": "network"})
        );
        let mut proc_path = serde_json::json!({"linux": {"namespaces": [
            {"type": "network", "path": "/proc/7/ns/net"}
        ]}});
        assert_eq!(guest_network(&mut proc_path), None);
        let mut none = serde_json::json!({"linux": {"namespaces": [{"type": "network"}]}});
        assert_eq!(guest_network(&mut none), None);
    }

    #[test]
    fn the_pods_network_namespace_file_is_found_and_pointed_at_the_guest_pod_namespace() {
        let mut v = serde_json::json!({"linux": {"namespaces": [
            {"type": "pid"}, {"type": "network", "path": "/var/run/netns/cni-1"}
        ]}});
        assert_eq!(
            pod_network_path(&v).as_deref(),
            Some("/var/run/netns/cni-1")
        );
        assert_eq!(
            join_guest_pod_network(&mut v).as_deref(),
            Some("/var/run/netns/cni-1")
        );
        assert_eq!(
            v["linux"]["namespaces"][1]["path"],
            ampoule_agent_api::POD_NETNS_GUEST_PATH
        );
        let joined = serde_json::json!({"linux": {"namespaces": [
            {"type": "network", "path": "/proc/42/ns/net"}
        ]}});
        assert_eq!(pod_network_path(&joined), None);
    }

    #[test]
    fn other_host_paths_are_refused_too() {
        for path in ["/proc/self/ns/ipc", "/run/ipcns/x", "relative/ns"] {
            let s = spec(serde_json::json!([{"type": "ipc", "path": path}]));
            assert_eq!(
                check_no_host_paths(&s),
                Err(NamespaceError::HostPath {
                    kind: "ipc",
                    path: path.into()
                }),
                "{path}"
            );
        }
    }
}
