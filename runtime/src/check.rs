//! `ampoule check`: what this host offers, which backend `auto` picks and why,
//! and optionally a test boot with the agent's answer.

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use crate::config::Config;
use crate::host::{self, HostFacts, KvmKind};
use crate::jail::cgroup::MemoryController;
use crate::jail::status::{self, JailState};
use crate::jail::{child::NAMESPACES, seccomp::VHOST_VSOCK_ALLOWLIST, QEMU_SANDBOX};
use crate::sandbox::{Sandbox, SandboxSpec};

/// The report, printed as text or as one JSON object.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// A sandbox can run here (and, with `--boot`, one did).
    pub ok: bool,
    /// Configured hypervisor (`auto`, `ampoule`, `qemu`).
    pub hypervisor: String,
    /// The backend that would run a sandbox, if any.
    pub backend: Option<String>,
    /// `kvm` or `tcg`.
    pub accel: Option<String>,
    /// Why that backend, or why none.
    pub reason: String,
    pub kvm: KvmKind,
    pub kvm_detail: String,
    pub qemu: Option<PathBuf>,
    pub vhost_device_vsock: Option<PathBuf>,
    pub ampoule_vmm: Option<PathBuf>,
    pub kernel: PathBuf,
    pub kernel_found: bool,
    pub initrd: PathBuf,
    pub initrd_found: bool,
    pub host_kernel: String,
    /// How the VM's host processes are confined.
    pub jail: JailReport,
    /// With `--boot`: each host process's confinement as `/proc` shows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jailed_processes: Option<Vec<JailState>>,
    /// With `--boot`: the guest's `uname -r`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest_kernel: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    /// With `--boot`: online CPUs the agent reports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    /// With `--boot`: the guest's MemTotal, MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    /// With `--boot`: the memory the VM was given, MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm_memory_mib: Option<u32>,
    /// With `--boot`: `Sandbox::start` to the first Check answer, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_ms: Option<u64>,
    /// With `--boot`: ms from start to the VM processes spawned, to the
    /// agent's readiness, and to the ttrpc connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub launched_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connected_ms: Option<u64>,
    /// With `--boot`: guest uptime when it answered, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest_uptime_ms: Option<u64>,
    /// What went wrong, when `ok` is false.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The jail's configuration and whether this host can apply it.
#[derive(Debug, Clone, Serialize)]
pub struct JailReport {
    pub enabled: bool,
    /// `900000000..900004095`, or `65534 (shared)`.
    pub uids: String,
    /// Namespaces each jailed process gets.
    pub namespaces: Vec<String>,
    /// Seccomp of each process.
    pub seccomp: String,
    /// The memory cgroup parent and controller, or why there is none.
    pub memory_cgroup: String,
    /// Why the jail cannot work here, if it cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// The jail part of the report.
pub fn jail_report(config: &Config) -> JailReport {
    let uids = if config.jail_uid_count == 0 {
        format!("{} (shared)", crate::jail::uid_pool::NOBODY)
    } else {
        format!(
            "{}..{}",
            config.jail_uid_base,
            u64::from(config.jail_uid_base) + u64::from(config.jail_uid_count) - 1
        )
    };
    let controller = MemoryController::probe(std::path::Path::new(crate::jail::CGROUP_ROOT));
    let memory_cgroup = match &controller {
        Some(MemoryController::V2(root)) => format!(
            "{}{} (cgroup v2, guest memory + {} MiB)",
            root.display(),
            config.jail_cgroup_parent,
            config.jail_memory_overhead_mib
        ),
        Some(MemoryController::V1(root)) => format!(
            "{}{} (cgroup v1, guest memory + {} MiB)",
            root.display(),
            config.jail_cgroup_parent,
            config.jail_memory_overhead_mib
        ),
        None => "no memory controller".to_string(),
    };
    let mut problem = None;
    if config.jail {
        if !nix::unistd::geteuid().is_root() {
            problem = Some(crate::jail::JailError::NotRoot.to_string());
        } else if controller.is_none() {
            problem = Some(
                crate::jail::JailError::NoMemoryController(crate::jail::CGROUP_ROOT.into())
                    .to_string(),
            );
        }
    }
    JailReport {
        enabled: config.jail,
        uids,
        namespaces: NAMESPACES.iter().map(|(n, _)| n.to_string()).collect(),
        seccomp: format!(
            "qemu: {} {}; vhost-device-vsock: allowlist of {} calls",
            QEMU_SANDBOX[0],
            QEMU_SANDBOX[1],
            VHOST_VSOCK_ALLOWLIST.len() - config.jail_vsock_seccomp_deny.len()
        ),
        memory_cgroup,
        problem,
    }
}

/// The host part of the report (no VM started).
pub fn host_report(config: &Config) -> CheckReport {
    let facts = HostFacts::probe(config);
    let choice = host::choose_backend(config.hypervisor, config, &facts);
    let mut r = CheckReport {
        ok: false,
        hypervisor: config.hypervisor.to_string(),
        backend: None,
        accel: None,
        reason: String::new(),
        kvm: facts.kvm,
        kvm_detail: facts
            .kvm_error
            .clone()
            .unwrap_or_else(|| facts.kvm.describe().to_string()),
        qemu: facts.qemu.clone(),
        vhost_device_vsock: facts.vhost_device_vsock.clone(),
        ampoule_vmm: facts.ampoule_vmm.clone(),
        kernel: config.kernel.clone(),
        kernel_found: facts.kernel_found,
        initrd: config.initrd.clone(),
        initrd_found: facts.initrd_found,
        host_kernel: facts.host_kernel.clone(),
        jail: jail_report(config),
        jailed_processes: None,
        guest_kernel: None,
        agent_version: None,
        vcpus: None,
        memory_mib: None,
        vm_memory_mib: None,
        boot_ms: None,
        launched_ms: None,
        ready_ms: None,
        connected_ms: None,
        guest_uptime_ms: None,
        error: None,
    };
    match choice {
        Ok(c) => {
            r.backend = Some(c.backend.to_string());
            r.accel = Some(c.accel.as_str().to_string());
            r.reason = c.reason;
            let mut missing = Vec::new();
            if !facts.kernel_found {
                missing.push(format!(
                    "guest kernel {} not found",
                    config.kernel.display()
                ));
            }
            if !facts.initrd_found {
                missing.push(format!(
                    "guest initrd {} not found",
                    config.initrd.display()
                ));
            }
            if let Some(p) = &r.jail.problem {
                missing.push(format!("jail: {p}"));
            }
            if missing.is_empty() {
                r.ok = true;
            } else {
                r.error = Some(missing.join("; "));
            }
        }
        Err(e) => {
            r.reason = e.to_string();
            r.error = Some(e.to_string());
        }
    }
    r
}

/// Boots a sandbox with the configured defaults, asks Check, stops it, and
/// adds the answer to `r`.
pub async fn boot_report(config: &Config, r: &mut CheckReport) {
    if !r.ok {
        return;
    }
    let t0 = Instant::now();
    let sandbox = match Sandbox::start(config, SandboxSpec::default()).await {
        Ok(s) => s,
        Err(e) => {
            r.ok = false;
            r.error = Some(e.to_string());
            return;
        }
    };
    let answer = sandbox.check().await;
    let boot_ms = t0.elapsed().as_millis() as u64;
    r.jailed_processes = Some(
        sandbox
            .pids()
            .into_iter()
            .filter_map(|pid| match status::read(pid) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(pid, error = %e, "reading a VM process's jail state");
                    None
                }
            })
            .collect(),
    );
    r.vm_memory_mib = Some(sandbox.memory_mib());
    let t = sandbox.boot_timings();
    r.launched_ms = Some(t.launched.as_millis() as u64);
    r.ready_ms = Some(t.ready.as_millis() as u64);
    r.connected_ms = Some(t.connected.as_millis() as u64);
    match answer {
        Ok(c) => {
            r.boot_ms = Some(boot_ms);
            r.guest_kernel = Some(c.kernel_release.clone());
            r.agent_version = Some(c.agent_version.clone());
            r.vcpus = Some(c.cpus);
            r.memory_mib = Some(c.memory_bytes / (1024 * 1024));
            r.guest_uptime_ms = Some(c.uptime_ms);
        }
        Err(e) => {
            r.ok = false;
            r.error = Some(format!("the agent did not answer Check: {e}"));
        }
    }
    let stop = sandbox.stop().await;
    if !stop.graceful {
        tracing::warn!(?stop, "the test sandbox did not power off by itself");
    }
}

impl CheckReport {
    /// The jail's lines of the text form.
    fn jail_text(&self) -> String {
        let j = &self.jail;
        let mut s = String::new();
        if !j.enabled {
            s.push_str("jail:               OFF (jail = false): VM processes run as root\n");
            return s;
        }
        s.push_str(&format!(
            "jail:               uids {}, namespaces {}, no capabilities, no_new_privs\n",
            j.uids,
            j.namespaces.join("+")
        ));
        s.push_str(&format!("jail seccomp:       {}\n", j.seccomp));
        s.push_str(&format!("jail memory:        {}\n", j.memory_cgroup));
        if let Some(p) = &j.problem {
            s.push_str(&format!("jail problem:       {p}\n"));
        }
        for p in self.jailed_processes.iter().flatten() {
            s.push_str(&format!(
                "jailed {:<12} pid {} uid {} gid {} CapEff {:x} seccomp {} no_new_privs {} own root {} own ns {}\n",
                p.name,
                p.pid,
                p.uids[0],
                p.gids[0],
                p.cap_eff,
                p.seccomp,
                u8::from(p.no_new_privs),
                if p.own_root { "yes" } else { "NO" },
                if p.own_namespaces.is_empty() {
                    "none".to_string()
                } else {
                    p.own_namespaces.join("+")
                }
            ));
        }
        s
    }

    /// Human-readable form.
    pub fn to_text(&self) -> String {
        let yes = |b: bool| if b { "found" } else { "NOT FOUND" };
        let opt = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "NOT FOUND".into())
        };
        let mut s = String::new();
        s.push_str(&format!(
            "KVM:                {:?} ({})\n",
            self.kvm, self.kvm_detail
        ));
        s.push_str(&format!("qemu:               {}\n", opt(&self.qemu)));
        s.push_str(&format!(
            "vhost-device-vsock: {}\n",
            opt(&self.vhost_device_vsock)
        ));
        s.push_str(&format!("ampoule-vmm:        {}\n", opt(&self.ampoule_vmm)));
        s.push_str(&format!(
            "guest kernel:       {} ({})\n",
            self.kernel.display(),
            yes(self.kernel_found)
        ));
        s.push_str(&format!(
            "guest initrd:       {} ({})\n",
            self.initrd.display(),
            yes(self.initrd_found)
        ));
        s.push_str(&format!("host kernel:        {}\n", self.host_kernel));
        s.push_str(&format!("hypervisor:         {}\n", self.hypervisor));
        match (&self.backend, &self.accel) {
            (Some(b), Some(a)) => s.push_str(&format!("backend:            {b} ({a})\n")),
            _ => s.push_str("backend:            none\n"),
        }
        s.push_str(&format!("reason:             {}\n", self.reason));
        s.push_str(&self.jail_text());
        if let Some(k) = &self.guest_kernel {
            s.push_str(&format!(
                "guest kernel:       {k} (agent {})\n",
                self.agent_version.as_deref().unwrap_or("?")
            ));
            s.push_str(&format!(
                "guest:              {} vCPUs, {} MiB MemTotal (VM given {} MiB)\n",
                self.vcpus.unwrap_or(0),
                self.memory_mib.unwrap_or(0),
                self.vm_memory_mib.unwrap_or(0)
            ));
            s.push_str(&format!(
                "boot:               {} ms to the agent's Check answer (guest uptime {} ms)\n",
                self.boot_ms.unwrap_or(0),
                self.guest_uptime_ms.unwrap_or(0)
            ));
        }
        if let Some(e) = &self.error {
            s.push_str(&format!("error:              {e}\n"));
        }
        s.push_str(if self.ok {
            "result:             OK\n"
        } else {
            "result:             this host cannot run a sandbox\n"
        });
        s
    }
}

#[cfg(test)]
mod jail_tests {
    use super::*;

    #[test]
    fn check_shows_the_jail_or_that_it_is_off() {
        let on = Config {
            jail_uid_base: 500_000,
            jail_uid_count: 10,
            ..Config::default()
        };
        let j = jail_report(&on);
        assert!(j.enabled);
        assert_eq!(j.uids, "500000..500009");
        assert_eq!(j.namespaces, ["mnt", "ipc", "uts", "net"]);
        assert!(
            j.seccomp.contains("-sandbox on,obsolete=deny"),
            "{}",
            j.seccomp
        );
        let mut r = host_report(&on);
        r.jailed_processes = Some(vec![JailState {
            pid: 42,
            name: "qemu-system-x86".into(),
            uids: [500_003; 4],
            gids: [500_003; 4],
            cap_eff: 0,
            cap_prm: 0,
            cap_inh: 0,
            cap_bnd: 0,
            cap_amb: 0,
            no_new_privs: true,
            seccomp: 2,
            own_root: true,
            own_namespaces: vec!["mnt".into(), "net".into()],
        }]);
        let text = r.to_text();
        assert!(text.contains("uids 500000..500009"), "{text}");
        assert!(
            text.contains("pid 42 uid 500003 gid 500003 CapEff 0 seccomp 2 no_new_privs 1 own root yes own ns mnt+net"),
            "{text}"
        );
        let off = Config {
            jail: false,
            jail_uid_count: 0,
            ..Config::default()
        };
        assert_eq!(jail_report(&off).uids, "65534 (shared)");
        let text = host_report(&off).to_text();
        assert!(text.contains("jail:               OFF"), "{text}");
    }
}
