//! Seccomp filters: one allowlist per kind of VMM thread.
//!
//! Every thread that handles guest data or control-socket input installs
//! its kind's filter before it does so; the main thread installs its own
//! once it has started the others (so the other threads are not also bound
//! by it). A syscall outside the allowlist kills the whole process
//! (`SECCOMP_RET_KILL_PROCESS`, seen by the parent as SIGSYS). The lists
//! ([`allowlist`]) were measured with strace on the VM tests' guests.
//!
//! The filters are compiled once, when the VM is built, with `seccompiler`
//! (pure Rust, no libseccomp); `--no-seccomp` (JSON `"seccomp": false`)
//! leaves every thread unfiltered, for debugging.

pub mod allowlist;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread::JoinHandle;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

/// The kinds of thread the VMM runs, each with its own allowlist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ThreadKind {
    /// The main thread once the VM runs: waits for the end, signals and
    /// shutdown requests, then removes the sockets and exits.
    Main,
    /// A vCPU thread: `KVM_RUN` and the emulated devices (serial, i8042,
    /// virtio-mmio registers, virtio-blk I/O).
    Vcpu,
    /// The vsock backend thread: guest packets to and from Unix sockets.
    Vsock,
    /// A virtio-fs device thread: vhost-user requests to its backend
    /// (virtiofsd) on the socket connected at start, and the relay of the
    /// backend's used-buffer notifications into the guest's interrupt.
    VhostUser,
    /// A virtio-net device thread: frames between the guest's queues and
    /// its tap, which was opened (and configured) before.
    Net,
    /// The control socket's listener: accepts clients and starts a thread
    /// for each.
    Api,
    /// A control-socket client thread: reads commands, opens drive files.
    ApiClient,
}

impl ThreadKind {
    /// Every kind.
    pub const ALL: [ThreadKind; 7] = [
        ThreadKind::Main,
        ThreadKind::Vcpu,
        ThreadKind::Vsock,
        ThreadKind::VhostUser,
        ThreadKind::Net,
        ThreadKind::Api,
        ThreadKind::ApiClient,
    ];
}

/// Errors while building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp filter for {kind:?} threads: {source}")]
    Build {
        kind: ThreadKind,
        source: seccompiler::BackendError,
    },
    #[error("compiling the seccomp filter for {kind:?} threads: {source}")]
    Compile {
        kind: ThreadKind,
        source: seccompiler::BackendError,
    },
    #[error("installing the seccomp filter for {kind:?} threads: {source}")]
    Install {
        kind: ThreadKind,
        source: seccompiler::Error,
    },
}

/// The seccomp filter of `kind` for `arch`: the kind's allowlist, and
/// process kill for anything else.
pub fn filter(kind: ThreadKind, arch: TargetArch) -> Result<SeccompFilter, SeccompError> {
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> = allowlist::rules(kind)
        .map_err(|source| SeccompError::Build { kind, source })?
        .into_iter()
        .collect();
    SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        arch,
    )
    .map_err(|source| SeccompError::Build { kind, source })
}

/// The BPF program of `kind` for `arch`.
pub fn compile(kind: ThreadKind, arch: TargetArch) -> Result<BpfProgram, SeccompError> {
    filter(kind, arch)?
        .try_into()
        .map_err(|source| SeccompError::Compile { kind, source })
}

/// The compiled filters of every thread kind, or none (seccomp off).
#[derive(Clone)]
pub struct Filters(Option<Arc<BTreeMap<ThreadKind, BpfProgram>>>);

impl Filters {
    /// Compiles every kind's filter for this host when `enabled`.
    pub fn new(enabled: bool) -> Result<Filters, SeccompError> {
        if !enabled {
            return Ok(Filters::disabled());
        }
        let mut map = BTreeMap::new();
        for kind in ThreadKind::ALL {
            map.insert(kind, compile(kind, TargetArch::x86_64)?);
        }
        Ok(Filters(Some(Arc::new(map))))
    }

    /// No filtering at all.
    pub fn disabled() -> Filters {
        Filters(None)
    }

    /// Whether the filters are installed at all.
    pub fn enabled(&self) -> bool {
        self.0.is_some()
    }

    /// Installs the filter of `kind` on the calling thread (and sets
    /// `no_new_privs`); does nothing when seccomp is off.
    pub fn apply(&self, kind: ThreadKind) -> Result<(), SeccompError> {
        let Some(map) = &self.0 else {
            return Ok(());
        };
        // Every kind is compiled in `new`.
        let Some(prog) = map.get(&kind) else {
            return Ok(());
        };
        seccompiler::apply_filter(prog).map_err(|source| SeccompError::Install { kind, source })
    }
}

/// Starts a thread named `name` that installs the filter of `kind` before
/// it runs `f`; returns once the filter is in place, or the error if it
/// could not be installed (the thread then ends without running `f`).
pub fn spawn<F, T>(
    name: String,
    kind: ThreadKind,
    filters: &Filters,
    f: F,
) -> std::io::Result<JoinHandle<Option<T>>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let filters = filters.clone();
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<(), SeccompError>>(1);
    let handle = std::thread::Builder::new().name(name).spawn(move || {
        let installed = filters.apply(kind);
        let ok = installed.is_ok();
        let _ = tx.send(installed);
        ok.then(f)
    })?;
    match rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => Err(std::io::Error::other(e)),
        Err(_) => Err(std::io::Error::other(
            "thread ended before installing its seccomp filter",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_thread_kind_filter_compiles_for_x86_64() {
        for kind in ThreadKind::ALL {
            let prog =
                compile(kind, TargetArch::x86_64).unwrap_or_else(|e| panic!("{kind:?}: {e}"));
            assert!(!prog.is_empty(), "{kind:?}");
            // The kernel refuses programs longer than BPF_MAXINSNS.
            assert!(prog.len() <= 4096, "{kind:?}: {} instructions", prog.len());
        }
    }

    #[test]
    fn disabled_filters_install_nothing() {
        let f = Filters::disabled();
        assert!(!f.enabled());
        // Would make this test thread unable to do most syscalls if it
        // installed anything; run in a thread of its own to be safe.
        let r = std::thread::spawn(move || f.apply(ThreadKind::Vcpu).is_ok())
            .join()
            .unwrap();
        assert!(r);
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        assert!(status.contains("Seccomp:\t0"), "{status}");
    }

    #[test]
    fn a_spawned_thread_runs_under_its_kind_filter() {
        // The ApiClient filter allows reading procfs files (fill-slot
        // opens files); the thread reports its own seccomp mode.
        let filters = Filters::new(true).unwrap();
        let h = spawn("t".into(), ThreadKind::ApiClient, &filters, || {
            std::fs::read_to_string("/proc/thread-self/status").unwrap_or_default()
        })
        .unwrap();
        let status = h.join().unwrap().unwrap();
        assert!(status.contains("Seccomp:\t2"), "{status}");
        assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    }
}
