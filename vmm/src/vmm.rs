//! Building a microVM from its configuration and running it to its end.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_ioctls::VmFd;
use linux_loader::cmdline::Cmdline;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::api::{self, Controller};
use crate::arch::x86_64::{boot, layout, mptable};
use crate::config::{ConfigError, VmConfig};
use crate::devices::bus::SharedMmio;
use crate::devices::bus::{Bus, ExitReason, ExitSignal};
use crate::devices::i8042::{self, I8042};
use crate::devices::serial::{self, SerialDevice, SerialOut};
use crate::devices::serial_log::CappedLog;
use crate::devices::virtio::block::{Backing, Block, SharedSlot, Slot};
use crate::devices::virtio::fs::{self, Fs, FsError, FsShared};
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::net::{self, tap::Tap, Net, NetError, NetShared};
use crate::devices::virtio::vsock::{muxer, Vsock, VsockError};
use crate::devices::virtio::{Interrupt, VirtioDevice};
use crate::jail::{self, JailError};
use crate::seccomp::{Filters, SeccompError, ThreadKind};
use crate::vstate::{vcpu, vm};

/// Errors while building or running the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Vm(#[from] vm::VmError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    #[error(transparent)]
    Vcpu(#[from] vcpu::VcpuError),
    #[error(transparent)]
    Api(#[from] api::ApiError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("the guest failed: {0}")]
    Guest(String),
    #[error("drive {id}: {reason}")]
    Drive { id: String, reason: String },
    #[error("virtio device: {0}")]
    Virtio(String),
    #[error(transparent)]
    Vsock(#[from] VsockError),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    #[error("dropping privileges: {0}")]
    Jail(#[from] JailError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> VmmError {
    let what = what.into();
    move |source| VmmError::Io { what, source }
}

/// Shared state the control socket and signal handling act on.
pub struct Control {
    config: VmConfig,
    bus: Arc<Bus>,
    drives: Vec<(SharedSlot, Arc<Mutex<MmioTransport>>)>,
    /// virtio-fs devices: tag and backend state.
    fs: Vec<(String, Arc<FsShared>)>,
    /// virtio-net devices: MAC, tap and counters.
    net: Vec<Arc<NetShared>>,
    /// Requested graceful-shutdown deadline.
    shutdown: Mutex<Option<Duration>>,
    wake: EventFd,
}

impl Controller for Control {
    fn status(&self) -> serde_json::Value {
        let drives = self.drive_status();
        let fs: Vec<serde_json::Value> = self
            .fs
            .iter()
            .map(|(tag, shared)| {
                serde_json::json!({
                    "tag": tag,
                    "backend": if shared.backend_connected() { "connected" } else { "disconnected" },
                })
            })
            .collect();
        let net: Vec<serde_json::Value> = self.net.iter().map(|n| n.status()).collect();
        let state = if self.bus.exit.is_done() {
            "stopping"
        } else {
            "running"
        };
        serde_json::json!({
            "state": state,
            "vcpus": self.config.vcpus,
            "memory_mib": self.config.memory_mib,
            "drives": drives,
            "fs": fs,
            "net": net,
        })
    }

    fn shutdown(&self, deadline_ms: Option<u64>) {
        let d = Duration::from_millis(deadline_ms.unwrap_or(self.config.shutdown_timeout_ms));
        if let Ok(mut s) = self.shutdown.lock() {
            *s = Some(d);
        }
        if let Err(e) = self.wake.write(1) {
            tracing::error!("cannot wake main loop: {e}");
        }
    }

    fn fill_slot(&self, id: &str, path: &std::path::Path, read_only: bool) -> Result<(), String> {
        let (slot, transport) = self.find_drive(id)?;
        {
            let mut s = slot.lock().map_err(|_| "drive lock poisoned".to_string())?;
            if s.backing.is_some() {
                return Err(format!("drive slot {id:?} is not empty"));
            }
            let ro = read_only || s.read_only;
            s.backing = Some(Backing::open(path, ro)?);
        }
        Self::config_changed(transport);
        Ok(())
    }

    fn empty_slot(&self, id: &str) -> Result<(), String> {
        let (slot, transport) = self.find_drive(id)?;
        slot.lock()
            .map_err(|_| "drive lock poisoned".to_string())?
            .backing = None;
        Self::config_changed(transport);
        Ok(())
    }
}

impl Control {
    fn find_drive(&self, id: &str) -> Result<&(SharedSlot, Arc<Mutex<MmioTransport>>), String> {
        self.drives
            .iter()
            .find(|(slot, _)| slot.lock().map(|s| s.id == id).unwrap_or(false))
            .ok_or_else(|| format!("no drive slot {id:?}"))
    }

    fn config_changed(transport: &Arc<Mutex<MmioTransport>>) {
        if let Ok(mut t) = transport.lock() {
            t.config_changed();
            t.interrupt().signal_config();
        }
    }

    fn drive_status(&self) -> Vec<serde_json::Value> {
        self.drives
            .iter()
            .filter_map(|(slot, _)| {
                let s = slot.lock().ok()?;
                Some(serde_json::json!({
                    "id": s.id,
                    "path": s.backing.as_ref().map(|b| b.path.clone()),
                    "read_only": s.backing.as_ref().map_or(s.read_only, |b| b.read_only),
                }))
            })
            .collect()
    }
}

/// Files the VMM created and removes on exit.
#[derive(Default)]
pub struct Cleanup {
    paths: Vec<PathBuf>,
}

impl Cleanup {
    /// Remembers a created file.
    pub fn add(&mut self, p: PathBuf) {
        self.paths.push(p);
    }
    /// Removes every remembered file.
    pub fn run(&mut self) {
        for p in self.paths.drain(..) {
            if let Err(e) = std::fs::remove_file(&p) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!("removing {}: {e}", p.display());
                }
            }
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.run();
    }
}

/// A built, not yet started microVM.
pub struct Vmm {
    config: VmConfig,
    bus: Arc<Bus>,
    control: Arc<Control>,
    vcpus: Vec<kvm_ioctls::VcpuFd>,
    signals: OwnedFd,
    api_listener: Option<std::os::unix::net::UnixListener>,
    vsock_backend: Option<muxer::Backend>,
    fs_backends: Vec<fs::backend::Backend>,
    net_backends: Vec<net::backend::Backend>,
    filters: Filters,
    /// Removed when the Vmm is dropped.
    pub cleanup: Cleanup,
    _vm: VmFd,
    _mem: Arc<GuestMemoryMmap>,
}

/// Blocks SIGTERM, SIGINT and SIGHUP in this thread (and the threads it
/// starts) and returns a signalfd that reports them.
fn block_signals() -> Result<OwnedFd, VmmError> {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t owned by this frame; the calls only
    // write to it and to this thread's signal mask.
    let fd = unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK)
    };
    if fd < 0 {
        return Err(VmmError::Io {
            what: "signalfd".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: `fd` was just returned by signalfd and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn serial_output(config: &VmConfig) -> Result<SerialOut, VmmError> {
    match &config.serial_log {
        Some(p) => CappedLog::create(p, config.serial_log_max_bytes)
            .map(SerialOut::Log)
            .map_err(io(format!("opening serial log {}", p.display()))),
        None => {
            let fd = std::io::stdout()
                .as_fd()
                .try_clone_to_owned()
                .map_err(io("duplicating stdout"))?;
            Ok(SerialOut::Stdout(File::from(fd)))
        }
    }
}

/// Longest graceful-shutdown deadline honoured; longer ones (up to
/// `u64::MAX` ms from the control socket) mean the same: wait for the guest.
pub const MAX_SHUTDOWN_WAIT: Duration = Duration::from_secs(365 * 24 * 3600);

/// The instant `timeout` after `now`, with `timeout` capped at
/// [`MAX_SHUTDOWN_WAIT`] so that no deadline overflows.
pub fn deadline_after(now: Instant, timeout: Duration) -> Instant {
    let capped = timeout.min(MAX_SHUTDOWN_WAIT);
    now.checked_add(capped).unwrap_or(now)
}

impl Vmm {
    /// Checks the configuration, creates the VM, loads the guest and binds
    /// the sockets. On error nothing is left behind.
    pub fn build(config: VmConfig) -> Result<Vmm, VmmError> {
        config.validate()?;
        // Inherited tap fds first, before this process opens anything
        // that could take a number the configuration names.
        let mut taps = Vec::with_capacity(config.net.len());
        for n in &config.net {
            let tap = match (&n.tap, n.fd) {
                (Some(name), _) => Tap::open_named(name),
                (None, Some(fd)) => Tap::from_fd(fd),
                (None, None) => {
                    return Err(ConfigError::Net {
                        what: n.describe(),
                        reason: "missing tap=NAME or fd=N".into(),
                    }
                    .into())
                }
            }
            .map_err(NetError::from)?;
            tracing::debug!(tap = tap.name(), vnet_hdr = tap.vnet_hdr(), "tap open");
            taps.push((n.mac, tap));
        }
        // Before any thread starts, so that every thread inherits the mask.
        let signals = block_signals()?;
        let filters = Filters::new(config.seccomp)?;
        let mem_size = config.memory_mib << 20;
        let vcpu_count =
            u8::try_from(config.vcpus).map_err(|_| ConfigError::Vcpus(config.vcpus))?;
        let kernel = config.kernel.clone().ok_or(ConfigError::NoKernel)?;

        let kvm = vm::open_kvm(config.kvm_fd)?;
        // A vhost-user backend maps guest memory itself: it must be a
        // shareable file then, and only then (anonymous private memory
        // keeps transparent huge pages and plain anonymous accounting).
        let backing = if config.fs.is_empty() {
            vm::MemoryBacking::Anonymous
        } else {
            vm::MemoryBacking::SharedMemfd
        };
        let mem = vm::create_memory(mem_size, backing)?;
        let (entry, kernel_end) = boot::load_kernel(&mem, &kernel, mem_size)?;
        let initrd = match &config.initrd {
            Some(p) => Some(boot::load_initrd(&mem, p, mem_size, kernel_end)?),
            None => None,
        };
        let mut cmdline = Cmdline::try_from(&config.cmdline, layout::CMDLINE_MAX_SIZE)
            .map_err(|e| boot::BootError::Cmdline(e.to_string()))?;
        let vmfd = vm::create_vm(&kvm, &mem)?;
        let mem = Arc::new(mem);

        // virtio-mmio devices: vsock first, then the drives in slot order,
        // then the virtio-fs devices, then the NICs.
        let mut cleanup = Cleanup::default();
        let mut virtio: Vec<Box<dyn VirtioDevice>> = Vec::new();
        let mut vsock_backend = None;
        if let Some(uds) = &config.vsock_uds {
            let (v, backend) = Vsock::new(uds)?;
            cleanup.add(uds.clone());
            virtio.push(Box::new(v));
            vsock_backend = Some(backend);
        }
        let mut drives_shared: Vec<SharedSlot> = Vec::new();
        for d in &config.drives {
            let backing = match &d.path {
                Some(p) => {
                    Some(
                        Backing::open(p, d.read_only).map_err(|reason| VmmError::Drive {
                            id: d.id.clone(),
                            reason,
                        })?,
                    )
                }
                None => None,
            };
            let slot = Arc::new(Mutex::new(Slot {
                id: d.id.clone(),
                read_only: d.read_only,
                backing,
            }));
            drives_shared.push(slot.clone());
            virtio.push(Box::new(Block::new(slot)));
        }
        let first_drive = usize::from(vsock_backend.is_some());
        let mut fs_backends = Vec::new();
        let mut fs_shared = Vec::new();
        for f in &config.fs {
            let (dev, backend) = Fs::new(&f.tag, &f.socket)?;
            fs_shared.push((dev.tag().to_string(), dev.shared()));
            fs_backends.push(backend);
            virtio.push(Box::new(dev));
        }
        let mut net_backends = Vec::new();
        let mut net_shared = Vec::new();
        for (mac, tap) in taps {
            let (dev, backend) = Net::new(mac, tap)?;
            net_shared.push(dev.shared());
            net_backends.push(backend);
            virtio.push(Box::new(dev));
        }
        let mut mmio: Vec<(u64, u64, SharedMmio)> = Vec::new();
        let mut transports: Vec<Arc<Mutex<MmioTransport>>> = Vec::new();
        for (i, dev) in virtio.into_iter().enumerate() {
            let base = layout::MMIO_DEVICES_START + i as u64 * layout::MMIO_DEVICE_SIZE;
            let irq = layout::MMIO_FIRST_IRQ + i as u32;
            let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(io("eventfd"))?;
            vmfd.register_irqfd(&evt, irq)
                .map_err(|source| VmmError::Kvm {
                    what: "KVM_IRQFD (virtio)",
                    source,
                })?;
            for (queue, kick) in dev.queue_notify_eventfds() {
                let addr = kvm_ioctls::IoEventAddress::Mmio(
                    base + crate::devices::virtio::mmio::reg::QUEUE_NOTIFY,
                );
                vmfd.register_ioevent(&kick, &addr, queue)
                    .map_err(|source| VmmError::Kvm {
                        what: "KVM_IOEVENTFD (virtio queue notify)",
                        source,
                    })?;
            }
            let t = MmioTransport::new(dev, mem.clone(), Interrupt::new(evt))
                .map_err(VmmError::Virtio)?;
            let t = Arc::new(Mutex::new(t));
            cmdline
                .add_virtio_mmio_device(
                    layout::MMIO_DEVICE_SIZE,
                    vm_memory::GuestAddress(base),
                    irq,
                    None,
                )
                .map_err(|e| boot::BootError::Cmdline(e.to_string()))?;
            mmio.push((base, layout::MMIO_DEVICE_SIZE, t.clone() as SharedMmio));
            transports.push(t);
        }
        let drive_transports = transports
            .iter()
            .skip(first_drive)
            .take(drives_shared.len())
            .cloned();
        let control_drives: Vec<(SharedSlot, Arc<Mutex<MmioTransport>>)> =
            drives_shared.into_iter().zip(drive_transports).collect();

        boot::write_tables(&mem, entry)?;
        boot::write_boot_info(&mem, entry, mem_size, &cmdline, initrd)?;
        mptable::setup_mptable(&mem, vcpu_count)?;
        tracing::debug!(?entry, kernel_end, ?initrd, "guest loaded");

        let exit = Arc::new(ExitSignal::new().map_err(io("eventfd"))?);
        let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(io("eventfd"))?;
        vmfd.register_irqfd(&serial_irq, serial::COM1_IRQ)
            .map_err(|source| VmmError::Kvm {
                what: "KVM_IRQFD (serial)",
                source,
            })?;
        let kbd_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(io("eventfd"))?;
        vmfd.register_irqfd(&kbd_irq, i8042::KBD_IRQ)
            .map_err(|source| VmmError::Kvm {
                what: "KVM_IRQFD (i8042)",
                source,
            })?;
        let vcpus = vcpu::create_vcpus(&kvm, &vmfd, vcpu_count, entry)?;

        let api_listener = match &config.api_sock {
            Some(p) => {
                let l = api::bind(p)?;
                cleanup.add(p.clone());
                Some(l)
            }
            None => None,
        };
        let out = serial_output(&config)?;
        let bus = Arc::new(Bus {
            serial: Mutex::new(SerialDevice::new(serial_irq, out)),
            i8042: Mutex::new(I8042::new(kbd_irq)),
            exit,
            mmio,
        });
        let control = Arc::new(Control {
            config: config.clone(),
            bus: bus.clone(),
            drives: control_drives,
            fs: fs_shared,
            net: net_shared,
            shutdown: Mutex::new(None),
            wake: EventFd::new(libc::EFD_NONBLOCK).map_err(io("eventfd"))?,
        });
        Ok(Vmm {
            config,
            bus,
            control,
            vcpus,
            signals,
            api_listener,
            vsock_backend,
            fs_backends,
            net_backends,
            filters,
            cleanup,
            _vm: vmfd,
            _mem: mem,
        })
    }

    /// Starts the vCPUs and runs until the guest stops or a shutdown ends it.
    /// Returns the process exit status: 0 for a guest stop or a requested
    /// shutdown. With a uid and gid configured, privileges are dropped
    /// first, while this is the only thread. Every thread, this one included
    /// once it has started the others, runs under its seccomp filter.
    pub fn run(&mut self) -> Result<i32, VmmError> {
        if let Some(id) = self.config.identity()? {
            jail::drop_privileges(id)?;
        }
        if let Some(b) = self.vsock_backend.take() {
            b.start(&self.filters)
                .map_err(|e| VmmError::Vsock(VsockError::Backend(e)))?;
        }
        for (i, b) in std::mem::take(&mut self.fs_backends)
            .into_iter()
            .enumerate()
        {
            b.start(i, &self.filters)
                .map_err(io("starting the virtio-fs device thread"))?;
        }
        for (i, b) in std::mem::take(&mut self.net_backends)
            .into_iter()
            .enumerate()
        {
            b.start(i, &self.filters)
                .map_err(io("starting the virtio-net device thread"))?;
        }
        if let Some(l) = self.api_listener.take() {
            api::serve(l, self.control.clone(), &self.filters)
                .map_err(io("starting control socket thread"))?;
        }
        let vcpus = std::mem::take(&mut self.vcpus);
        let _handles = vcpu::start_vcpus(vcpus, self.bus.clone(), &self.filters)?;
        self.filters.apply(ThreadKind::Main)?;

        let mut deadline: Option<Instant> = None;
        loop {
            let timeout_ms: i32 = match deadline {
                None => -1,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    i32::try_from(left.as_millis()).unwrap_or(i32::MAX)
                }
            };
            let mut fds = [
                libc::pollfd {
                    fd: self.bus.exit.eventfd().as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.signals.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.control.wake.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: `fds` is a valid array of pollfd for its whole length and
            // every fd in it stays open for the duration of the call.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(VmmError::Io {
                    what: "poll".into(),
                    source: e,
                });
            }
            if self.bus.exit.is_done() {
                return match self.bus.exit.reason() {
                    Some(ExitReason::VcpuError(m)) => Err(VmmError::Guest(m)),
                    Some(ExitReason::GuestStopped(m)) => {
                        tracing::info!("guest stopped: {m}");
                        Ok(0)
                    }
                    None => Ok(0),
                };
            }
            if fds[1].revents & libc::POLLIN != 0 {
                let mut buf = [0u8; 128];
                // SAFETY: reading into a local buffer of the given size from
                // the signalfd we own.
                let r = unsafe {
                    libc::read(self.signals.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())
                };
                if r > 0 && deadline.is_none() {
                    tracing::info!("signal received: shutting down");
                    deadline = Some(
                        self.begin_shutdown(Duration::from_millis(self.config.shutdown_timeout_ms)),
                    );
                }
            }
            if fds[2].revents & libc::POLLIN != 0 {
                let _ = self.control.wake.read();
                let req = self.control.shutdown.lock().ok().and_then(|mut s| s.take());
                if let Some(d) = req {
                    let new = self.begin_shutdown(d);
                    deadline = Some(deadline.map_or(new, |old| old.min(new)));
                }
            }
            if let Some(d) = deadline {
                if Instant::now() >= d {
                    tracing::warn!("guest did not stop before the shutdown deadline: stopping it");
                    return Ok(0);
                }
            }
        }
    }

    fn begin_shutdown(&self, timeout: Duration) -> Instant {
        if let Ok(mut k) = self.bus.i8042.lock() {
            k.send_ctrl_alt_del();
        }
        deadline_after(Instant::now(), timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_shutdown_deadlines_do_not_overflow() {
        let now = Instant::now();
        let d = deadline_after(now, Duration::from_millis(u64::MAX));
        assert_eq!(d, now + MAX_SHUTDOWN_WAIT);
        assert_eq!(deadline_after(now, Duration::MAX), now + MAX_SHUTDOWN_WAIT);
        assert_eq!(
            deadline_after(now, Duration::from_millis(250)),
            now + Duration::from_millis(250)
        );
    }
}
