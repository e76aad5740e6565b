//! Which optional OCI fields the agent honours.
//!
//! An absent field always means the runtime-spec's default (the Go types
//! that engines use omit zero values, so absence is the common case, never
//! an error). A field that is present but cannot be honoured in the guest
//! is refused with its name, so that a container never runs with less
//! than its spec asked for. A few present fields are deliberately not
//! applied, each for a stated reason (the reason is logged); they are
//! listed here, in one place, as [`Ignored`].

use oci_spec::runtime::{
    Linux, LinuxBlockIo, LinuxCpu, LinuxMemory, LinuxPersonalityDomain, LinuxResources, Process,
};

/// A present field the Ampoule agent cannot honour.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {why}")]
pub struct Unsupported {
    /// The field's path in config.json, e.g. `linux.intelRdt`.
    pub field: &'static str,
    pub why: String,
}

/// A present field that is deliberately not applied, and why that is right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ignored {
    pub field: &'static str,
    pub why: &'static str,
}

fn refuse(field: &'static str, why: impl Into<String>) -> Unsupported {
    Unsupported {
        field,
        why: why.into(),
    }
}

const NOT_IMPLEMENTED: &str = "not supported by the Ampoule agent";
const LSM_LABEL: &str = "not applied: the guest kernel has no LSM; the label confines a container \
     on the host kernel, which the VM boundary separates it from";

fn non_empty<T>(v: &Option<Vec<T>>) -> bool {
    v.as_ref().is_some_and(|v| !v.is_empty())
}

fn non_empty_str(s: &Option<String>) -> bool {
    s.as_ref().is_some_and(|s| !s.is_empty())
}

/// Checks the optional fields of an OCI `process` (a container's or an
/// exec's) that [`super::process::plan`] does not apply itself.
pub fn check_process(p: &Process) -> Result<Vec<Ignored>, Unsupported> {
    let mut ignored = Vec::new();
    if p.io_priority().is_some() {
        return Err(refuse("process.ioPriority", NOT_IMPLEMENTED));
    }
    if p.scheduler().is_some() {
        return Err(refuse("process.scheduler", NOT_IMPLEMENTED));
    }
    if p.exec_cpu_affinity().is_some() {
        return Err(refuse("process.execCPUAffinity", NOT_IMPLEMENTED));
    }
    let cwd = p.cwd();
    if !cwd.as_os_str().is_empty() && !cwd.is_absolute() {
        return Err(refuse(
            "process.cwd",
            format!("{} is not an absolute path", cwd.display()),
        ));
    }
    if non_empty_str(p.apparmor_profile()) {
        ignored.push(Ignored {
            field: "process.apparmorProfile",
            why: LSM_LABEL,
        });
    }
    if non_empty_str(p.selinux_label()) {
        ignored.push(Ignored {
            field: "process.selinuxLabel",
            why: LSM_LABEL,
        });
    }
    Ok(ignored)
}

/// Checks the optional fields of `linux` that the agent does not apply
/// elsewhere (namespaces, devices, paths, sysctl, seccomp and resources
/// have their own checks).
pub fn check_linux(l: &Linux) -> Result<Vec<Ignored>, Unsupported> {
    let mut ignored = Vec::new();
    match l.rootfs_propagation().as_deref() {
        None | Some("") | Some("private") | Some("rprivate") => {}
        // The container's root is made rprivate. A slave of the guest's
        // mounts would receive only the agent's mounts of other
        // containers, which it must not see; host mounts never propagate
        // into the guest at all.
        Some("slave") | Some("rslave") => ignored.push(Ignored {
            field: "linux.rootfsPropagation",
            why: "applied as rprivate: no host mount reaches the guest to propagate",
        }),
        Some(other) => {
            return Err(refuse(
                "linux.rootfsPropagation",
                format!("{other:?} cannot cross the VM boundary (private or slave only)"),
            ))
        }
    }
    if non_empty_str(l.mount_label()) {
        ignored.push(Ignored {
            field: "linux.mountLabel",
            why: LSM_LABEL,
        });
    }
    if l.intel_rdt().is_some() {
        return Err(refuse(
            "linux.intelRdt",
            "the guest has no resctrl filesystem",
        ));
    }
    if l.memory_policy().is_some() {
        return Err(refuse("linux.memoryPolicy", NOT_IMPLEMENTED));
    }
    if let Some(p) = l.personality() {
        if p.domain() != LinuxPersonalityDomain::PerLinux || non_empty(p.flags()) {
            return Err(refuse(
                "linux.personality",
                "only the default LINUX domain without flags is supported",
            ));
        }
    }
    if l.time_offsets().as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(refuse(
            "linux.timeOffsets",
            "time namespaces are not supported by the Ampoule agent",
        ));
    }
    if l.net_devices().as_ref().is_some_and(|d| !d.is_empty()) {
        return Err(refuse(
            "linux.netDevices",
            "the pod's interfaces are moved by the runtime, not per container",
        ));
    }
    if let Some(r) = l.resources() {
        ignored.extend(check_resources(r)?);
    }
    Ok(ignored)
}

fn block_io_set(b: &LinuxBlockIo) -> bool {
    b.weight().is_some()
        || b.leaf_weight().is_some()
        || non_empty(b.weight_device())
        || non_empty(b.throttle_read_bps_device())
        || non_empty(b.throttle_write_bps_device())
        || non_empty(b.throttle_read_iops_device())
        || non_empty(b.throttle_write_iops_device())
}

fn check_memory(m: &LinuxMemory, ignored: &mut Vec<Ignored>) -> Result<(), Unsupported> {
    if m.disable_oom_killer() == Some(true) {
        return Err(refuse(
            "linux.resources.memory.disableOOMKiller",
            "cgroup v2 cannot disable the OOM killer",
        ));
    }
    if m.check_before_update() == Some(true) {
        return Err(refuse(
            "linux.resources.memory.checkBeforeUpdate",
            NOT_IMPLEMENTED,
        ));
    }
    // As runc on cgroup v2: kernel memory limits, the hierarchy switch and
    // swappiness are cgroup v1 settings with no v2 file.
    for (set, field) in [
        (m.kernel().is_some(), "linux.resources.memory.kernel"),
        (m.kernel_tcp().is_some(), "linux.resources.memory.kernelTCP"),
        (
            m.use_hierarchy().is_some(),
            "linux.resources.memory.useHierarchy",
        ),
        (
            m.swappiness().is_some(),
            "linux.resources.memory.swappiness",
        ),
    ] {
        if set {
            ignored.push(Ignored {
                field,
                why: "a cgroup v1 setting with no cgroup v2 equivalent (runc ignores it too)",
            });
        }
    }
    Ok(())
}

fn check_cpu(c: &LinuxCpu) -> Result<(), Unsupported> {
    if c.realtime_runtime().is_some_and(|v| v != 0) {
        return Err(refuse(
            "linux.resources.cpu.realtimeRuntime",
            "the guest has no real-time group scheduling",
        ));
    }
    if c.realtime_period().is_some_and(|v| v != 0) {
        return Err(refuse(
            "linux.resources.cpu.realtimePeriod",
            "the guest has no real-time group scheduling",
        ));
    }
    Ok(())
}

/// Checks `linux.resources` (at create and at update) for settings
/// [`super::cgroup::resource_writes`] does not turn into cgroup files.
pub fn check_resources(r: &LinuxResources) -> Result<Vec<Ignored>, Unsupported> {
    let mut ignored = Vec::new();
    if let Some(m) = r.memory() {
        check_memory(m, &mut ignored)?;
    }
    if let Some(c) = r.cpu() {
        check_cpu(c)?;
    }
    if r.block_io().as_ref().is_some_and(block_io_set) {
        return Err(refuse(
            "linux.resources.blockIO",
            "block I/O limits are not supported by the Ampoule agent",
        ));
    }
    if r.rdma().as_ref().is_some_and(|m| !m.is_empty()) {
        return Err(refuse(
            "linux.resources.rdma",
            "the guest has no RDMA devices",
        ));
    }
    if non_empty(r.hugepage_limits()) {
        ignored.push(Ignored {
            field: "linux.resources.hugepageLimits",
            why: "the guest has no huge pages, so every limit holds",
        });
    }
    if r.network().is_some() {
        ignored.push(Ignored {
            field: "linux.resources.network",
            why: "net_cls/net_prio exist in cgroup v1 only (runc ignores them on v2 too)",
        });
    }
    if non_empty(r.devices()) {
        ignored.push(Ignored {
            field: "linux.resources.devices",
            why: "NOT ENFORCED: the guest kernel has no cgroup BPF for a device filter; the \
                  container's /dev holds only the spec's nodes",
        });
    }
    Ok(ignored)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(json: serde_json::Value) -> Process {
        let mut base =
            serde_json::json!({"user": {"uid": 0, "gid": 0}, "args": ["sh"], "cwd": "/"});
        if let (Some(b), Some(extra)) = (base.as_object_mut(), json.as_object()) {
            for (k, v) in extra {
                b.insert(k.clone(), v.clone());
            }
        }
        serde_json::from_value(base).expect("process parses")
    }

    fn linux(json: serde_json::Value) -> Linux {
        serde_json::from_value(json).expect("linux parses")
    }

    fn fields(v: &[Ignored]) -> Vec<&'static str> {
        v.iter().map(|i| i.field).collect()
    }

    #[test]
    fn a_minimal_process_and_linux_with_every_optional_field_absent_are_accepted() {
        assert_eq!(check_process(&process(serde_json::json!({}))), Ok(vec![]));
        assert_eq!(check_linux(&linux(serde_json::json!({}))), Ok(vec![]));
        // Empty strings and lists are what Go's zero values encode to
        // when a field has no omitempty.
        let l = linux(serde_json::json!({
            "uidMappings": [], "gidMappings": [], "rootfsPropagation": "", "mountLabel": "",
            "resources": {"blockIO": {}, "devices": [], "hugepageLimits": []}
        }));
        assert_eq!(check_linux(&l), Ok(vec![]));
        let p = process(serde_json::json!({"apparmorProfile": "", "selinuxLabel": "", "cwd": ""}));
        assert_eq!(check_process(&p), Ok(vec![]));
    }

    #[test]
    fn process_fields_the_guest_cannot_apply_are_refused_by_name() {
        for (json, field) in [
            (
                serde_json::json!({"ioPriority": {"class": "IOPRIO_CLASS_RT", "priority": 1}}),
                "process.ioPriority",
            ),
            (
                serde_json::json!({"scheduler": {"policy": "SCHED_FIFO", "priority": 1}}),
                "process.scheduler",
            ),
            (serde_json::json!({"cwd": "relative/dir"}), "process.cwd"),
        ] {
            let e = check_process(&process(json.clone())).expect_err("refused");
            assert_eq!(e.field, field, "{json}");
            assert!(e.to_string().starts_with(field), "{e}");
        }
    }

    #[test]
    fn lsm_labels_from_engines_on_apparmor_or_selinux_hosts_are_accepted_and_reported() {
        let p = process(serde_json::json!({
            "apparmorProfile": "containers-default-0.50.1",
            "selinuxLabel": "system_u:system_r:container_t:s0:c1,c2"
        }));
        assert_eq!(
            fields(&check_process(&p).expect("accepted")),
            ["process.apparmorProfile", "process.selinuxLabel"]
        );
        let l = linux(serde_json::json!({"mountLabel": "system_u:object_r:container_file_t:s0"}));
        assert_eq!(
            fields(&check_linux(&l).expect("accepted")),
            ["linux.mountLabel"]
        );
    }

    #[test]
    fn linux_fields_the_guest_cannot_apply_are_refused_by_name() {
        for (json, field) in [
            (
                serde_json::json!({"rootfsPropagation": "rshared"}),
                "linux.rootfsPropagation",
            ),
            (
                serde_json::json!({"intelRdt": {"closID": "x"}}),
                "linux.intelRdt",
            ),
            (
                serde_json::json!({"personality": {"domain": "LINUX32"}}),
                "linux.personality",
            ),
            (
                serde_json::json!({"timeOffsets": {"monotonic": {"secs": 1, "nanosecs": 0}}}),
                "linux.timeOffsets",
            ),
            (
                serde_json::json!({"resources": {"blockIO": {"weight": 500}}}),
                "linux.resources.blockIO",
            ),
            (
                serde_json::json!({"resources": {"memory": {"disableOOMKiller": true}}}),
                "linux.resources.memory.disableOOMKiller",
            ),
            (
                serde_json::json!({"resources": {"cpu": {"realtimeRuntime": 950000}}}),
                "linux.resources.cpu.realtimeRuntime",
            ),
            (
                serde_json::json!({"resources": {"rdma": {"mlx5_0": {"hcaHandles": 1}}}}),
                "linux.resources.rdma",
            ),
        ] {
            let e = check_linux(&linux(json.clone())).expect_err("refused");
            assert_eq!(e.field, field, "{json}");
        }
    }

    #[test]
    fn default_personality_private_or_slave_propagation_and_zero_realtime_are_accepted() {
        let l = linux(serde_json::json!({
            "personality": {"domain": "LINUX"},
            "rootfsPropagation": "rprivate",
            "resources": {"cpu": {"realtimeRuntime": 0, "realtimePeriod": 0},
                          "memory": {"disableOOMKiller": false}}
        }));
        assert_eq!(check_linux(&l), Ok(vec![]));
        let slave = linux(serde_json::json!({"rootfsPropagation": "rslave"}));
        assert_eq!(
            fields(&check_linux(&slave).expect("accepted")),
            ["linux.rootfsPropagation"]
        );
    }

    #[test]
    fn engine_resource_shapes_are_accepted_with_what_is_not_applied_reported() {
        // containerd CRI: a device allowlist, hugepage limits for the node's
        // page sizes, cgroup v1 memory knobs left from the v1 days.
        let l = linux(serde_json::json!({
            "resources": {
                "devices": [{"allow": false, "access": "rwm"},
                            {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"}],
                "memory": {"limit": 134217728, "swappiness": 0, "kernel": -1},
                "cpu": {"shares": 2, "quota": 50000, "period": 100000},
                "hugepageLimits": [{"pageSize": "2MB", "limit": 0}],
                "network": {"classID": 1}
            }
        }));
        assert_eq!(
            fields(&check_linux(&l).expect("accepted")),
            [
                "linux.resources.memory.kernel",
                "linux.resources.memory.swappiness",
                "linux.resources.hugepageLimits",
                "linux.resources.network",
                "linux.resources.devices"
            ]
        );
    }
}
