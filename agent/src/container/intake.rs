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
    })
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
