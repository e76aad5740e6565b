//! The intake of what the host sends: a container's spec (`config.json`)
//! and an exec's process spec, checked and turned into what the helper
//! applies, without touching the system. Everything here reads hostile
//! bytes, and is what the `spec_intake` fuzz target drives.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{
    cgroup, check_sysctl, container_paths, log_ignored, mounts, namespace_plan, process, seccomp,
    support, uts_names, ContainerError,
};
use process::{NsPlan, ProcessPlan};

/// A container spec, checked, with each part planned.
pub struct ContainerSpec {
    pub spec: oci_spec::runtime::Spec,
    pub linux: oci_spec::runtime::Linux,
    pub process: ProcessPlan,
    pub namespaces: Vec<NsPlan>,
    pub devices: Vec<mounts::DeviceNode>,
    pub masked_paths: Vec<PathBuf>,
    pub readonly_paths: Vec<PathBuf>,
    pub readonly_root: bool,
    pub hostname: Option<String>,
    pub domainname: Option<String>,
    /// cgroup files and the values `linux.resources` writes to them.
    pub resource_writes: Vec<(String, String)>,
    /// The seccomp profile, compiled once here so that a bad one fails the
    /// create with its reason rather than in the helper.
    pub seccomp: Option<seccomp::Plan>,
    pub sysctl: Vec<(String, String)>,
    /// The ID mappings of a new user namespace.
    pub id_mappings: Option<process::IdMappings>,
}

/// Parses and checks container `id`'s `config.json`.
pub fn container_spec(id: &str, oci_spec: &[u8]) -> Result<ContainerSpec, ContainerError> {
    let spec: oci_spec::runtime::Spec = serde_json::from_slice(oci_spec)
        .map_err(|e| ContainerError::InvalidArgument(format!("config.json: {e}")))?;
    let oci_process = spec
        .process()
        .as_ref()
        .ok_or_else(|| ContainerError::InvalidArgument("config.json has no process".into()))?;
    let pplan = process::plan(oci_process)?;
    log_ignored(id, &support::check_process(oci_process)?);
    let linux = spec.linux().clone().unwrap_or_default();
    log_ignored(id, &support::check_linux(&linux)?);
    let namespaces = namespace_plan(linux.namespaces().as_deref().unwrap_or(&[]))?;
    let devices = mounts::spec_devices(linux.devices().as_deref().unwrap_or(&[]))?;
    let masked_paths = container_paths(linux.masked_paths())?;
    let readonly_paths = container_paths(linux.readonly_paths())?;
    let readonly_root = spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false);
    let (hostname, domainname) = uts_names(
        spec.hostname().as_deref(),
        spec.domainname().as_deref(),
        &namespaces,
    )?;
    let resource_writes = match linux.resources() {
        Some(r) => cgroup::resource_writes(r)?,
        None => Vec::new(),
    };
    let seccomp = match linux.seccomp() {
        Some(s) => {
            let plan = seccomp::plan(s)?;
            seccomp::compile(&plan)?;
            if !plan.skipped.is_empty() {
                tracing::debug!(container = %id, skipped = ?plan.skipped, "seccomp: syscall names unknown on x86_64 skipped");
            }
            Some(plan)
        }
        None => None,
    };
    let sysctl: Vec<(String, String)> = linux
        .sysctl()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    for (key, _) in &sysctl {
        check_sysctl(key, &namespaces)?;
    }
    let id_mappings = id_mappings(id, &linux, &namespaces)?;
    Ok(ContainerSpec {
        spec,
        linux,
        process: pplan,
        namespaces,
        devices,
        masked_paths,
        readonly_paths,
        readonly_root,
        hostname,
        domainname,
        resource_writes,
        seccomp,
        sysctl,
        id_mappings,
    })
}

/// The mappings a new user namespace is made with. Mappings need a user
/// namespace; a namespace joined by path has its own, so any given are
/// not applied.
fn id_mappings(
    id: &str,
    linux: &oci_spec::runtime::Linux,
    namespaces: &[NsPlan],
) -> Result<Option<process::IdMappings>, ContainerError> {
    let uid = linux.uid_mappings().clone().unwrap_or_default();
    let gid = linux.gid_mappings().clone().unwrap_or_default();
    let user = namespaces.iter().find(|n| n.flag == libc::CLONE_NEWUSER);
    match user {
        None if uid.is_empty() && gid.is_empty() => Ok(None),
        None => Err(ContainerError::InvalidArgument(
            "linux.uidMappings and gidMappings need a user namespace in linux.namespaces".into(),
        )),
        Some(NsPlan { path: Some(_), .. }) => {
            if !uid.is_empty() || !gid.is_empty() {
                log_ignored(
                    id,
                    &[support::Ignored {
                        field: "linux.uidMappings",
                        why: "the user namespace is joined by path and keeps its own mappings",
                    }],
                );
            }
            Ok(None)
        }
        Some(NsPlan { path: None, .. }) => process::IdMappings::from_spec(&uid, &gid)
            .map(Some)
            .map_err(ContainerError::InvalidArgument),
    }
}

/// The mounts of `spec` over a root at `rootfs`, their bind sources taken
/// from the shared filesystem at `shared_root` through `shared_binds`.
pub fn shared_mounts(
    spec: &oci_spec::runtime::Spec,
    rootfs: &Path,
    shared_root: &Path,
    shared_binds: &HashMap<String, String>,
) -> Result<Vec<mounts::MountStep>, ContainerError> {
    Ok(mounts::plan(
        spec.mounts().as_deref().unwrap_or(&[]),
        rootfs,
        mounts::BindSources::Shared {
            root: shared_root,
            map: shared_binds,
        },
    )?)
}

/// Parses and checks the process spec of an exec in `container_id`.
pub fn process_spec(container_id: &str, json: &[u8]) -> Result<ProcessPlan, ContainerError> {
    let oci = process::parse(json)?;
    let plan = process::plan(&oci)?;
    log_ignored(container_id, &support::check_process(&oci)?);
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(linux: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs"},
            "linux": linux
        }))
        .expect("json")
    }

    #[test]
    fn a_new_user_namespace_takes_the_specs_mappings_and_mappings_need_one() {
        let maps = serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        let c = container_spec(
            "c",
            &spec(serde_json::json!({
                "namespaces": [{"type": "user"}, {"type": "mount"}],
                "uidMappings": maps, "gidMappings": maps
            })),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let m = c.id_mappings.expect("mappings");
        assert_eq!((m.uid[0].host_id, m.gid[0].size), (100000, 65536));
        let no_maps = container_spec(
            "c",
            &spec(serde_json::json!({"namespaces": [{"type": "user"}]})),
        );
        assert!(no_maps.is_err());
        let no_userns = container_spec(
            "c",
            &spec(serde_json::json!({"namespaces": [], "uidMappings": maps, "gidMappings": maps})),
        );
        assert!(no_userns.is_err());
        let joined = container_spec(
            "c",
            &spec(serde_json::json!({
                "namespaces": [{"type": "user", "path": "/proc/1/ns/user"}],
                "uidMappings": maps, "gidMappings": maps
            })),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            joined.id_mappings.is_none(),
            "a joined namespace keeps its own"
        );
    }
}
