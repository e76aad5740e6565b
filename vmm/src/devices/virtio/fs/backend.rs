//! The vhost-user side of a virtio-fs device: the session with the backend
//! (virtiofsd) and the device thread that configures its rings and relays
//! its used-buffer notifications into the guest's interrupt.
//!
//! The session is set up when the VM is built ([`connect`]): `SET_OWNER`,
//! `GET_FEATURES` (VIRTIO_F_VERSION_1 required, nothing else), and when
//! the backend offers VHOST_USER_F_PROTOCOL_FEATURES, the protocol
//! features of [`WANTED_PROTOCOL_FEATURES`] it offers (REPLY_ACK: every
//! request is then acknowledged, so a refusal is seen at once).
//!
//! Every reply is awaited at most [`REPLY_TIMEOUT`]; a backend that does
//! not answer in time, hangs up or refuses a request stops the device, not
//! the VMM.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::queue::VringSetup;
use super::{Event, FsError, FsShared, NUM_QUEUES, QUEUE_SIZES};
use crate::devices::virtio::device_thread::{self, DeviceLink, DeviceWorker, ThreadEnd};
use crate::devices::virtio::{Interrupt, VIRTIO_F_VERSION_1};

/// Longest wait for one reply (or one send) on the backend's socket.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Protocol features used when the backend offers them; none is required.
pub const WANTED_PROTOCOL_FEATURES: VhostUserProtocolFeatures =
    VhostUserProtocolFeatures::REPLY_ACK;

const TOKEN_WAKE: u64 = 0;
const TOKEN_SOCKET: u64 = 1;
const TOKEN_CALL: u64 = 16;

/// Errors while handing the guest's queues to the backend.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("the backend is gone")]
    Gone,
    #[error("guest memory region at {addr:#x} cannot be shared: {source}")]
    Region { addr: u64, source: vhost::Error },
    #[error("{what}: {source}")]
    Request {
        what: &'static str,
        source: vhost::Error,
    },
}

/// Checked queues for the backend, from the vCPU thread that saw DRIVER_OK.
pub struct Activation {
    pub mem: Arc<GuestMemoryMmap>,
    pub vrings: Vec<VringSetup>,
    /// The features the driver acknowledged.
    pub features: u64,
    pub interrupt: Interrupt,
    /// The device generation this activation belongs to.
    pub generation: u64,
}

/// What the device keeps of the session.
pub struct Setup {
    /// Features the backend offers.
    pub features: u64,
    /// The link to the device thread.
    pub link: DeviceLink<Event>,
    pub shared: Arc<FsShared>,
}

/// The device thread, not started yet (so that the process can drop its
/// privileges while it has one thread).
pub struct Backend(Worker);

impl Backend {
    /// Starts the device thread (`vhost-fs<index>`) under the vhost-user
    /// seccomp filter of `filters`.
    pub fn start(self, index: usize, filters: &crate::seccomp::Filters) -> std::io::Result<()> {
        device_thread::start(
            format!("vhost-fs{index}"),
            crate::seccomp::ThreadKind::VhostUser,
            filters,
            self.0,
        )
    }
}

struct Worker {
    tag: String,
    socket: PathBuf,
    frontend: Frontend,
    backend_features: u64,
    /// VHOST_USER_F_PROTOCOL_FEATURES negotiated: rings are enabled with
    /// SET_VRING_ENABLE.
    protocol: bool,
    end: ThreadEnd<Event>,
    calls: Vec<EventFd>,
    shared: Arc<FsShared>,
    interrupt: Option<Interrupt>,
    /// Queues the backend was given since the last stop.
    started: Vec<usize>,
}

/// Connects to the backend's socket and sets the session up.
pub fn connect(tag: &str, socket: &Path) -> Result<(Setup, Backend), FsError> {
    let stream = UnixStream::connect(socket).map_err(|source| FsError::Connect {
        tag: tag.to_string(),
        socket: socket.to_path_buf(),
        source,
    })?;
    let io = |what: &'static str| {
        move |source| FsError::Io {
            tag: tag.to_string(),
            what,
            source,
        }
    };
    stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .map_err(io("socket read timeout"))?;
    stream
        .set_write_timeout(Some(REPLY_TIMEOUT))
        .map_err(io("socket write timeout"))?;
    let mut frontend = Frontend::from_stream(stream, NUM_QUEUES as u64);
    let proto = |what: &'static str| {
        move |source| FsError::Protocol {
            tag: tag.to_string(),
            socket: socket.to_path_buf(),
            what,
            source,
        }
    };
    frontend.set_owner().map_err(proto("SET_OWNER"))?;
    let features = frontend.get_features().map_err(proto("GET_FEATURES"))?;
    if features & VIRTIO_F_VERSION_1 == 0 {
        return Err(FsError::MissingFeature {
            tag: tag.to_string(),
            socket: socket.to_path_buf(),
            what: "VIRTIO_F_VERSION_1",
        });
    }
    let protocol = features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0;
    if protocol {
        let offered = frontend
            .get_protocol_features()
            .map_err(proto("GET_PROTOCOL_FEATURES"))?;
        let acked = offered & WANTED_PROTOCOL_FEATURES;
        frontend
            .set_protocol_features(acked)
            .map_err(proto("SET_PROTOCOL_FEATURES"))?;
        if acked.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
    }
    let setup_err = |e: device_thread::SetupError| io(e.what)(e.source);
    let (link, end) = device_thread::link(format!("virtio-fs {tag:?}"), NUM_QUEUES, TOKEN_WAKE)
        .map_err(setup_err)?;
    let calls = (0..NUM_QUEUES)
        .map(|_| device_thread::eventfd())
        .collect::<Result<Vec<_>, _>>()
        .map_err(setup_err)?;
    end.add(frontend.as_raw_fd(), EventSet::READ_HANG_UP, TOKEN_SOCKET)
        .map_err(setup_err)?;
    for (i, c) in calls.iter().enumerate() {
        end.add(c.as_raw_fd(), EventSet::IN, TOKEN_CALL + i as u64)
            .map_err(setup_err)?;
    }
    let shared = Arc::new(FsShared::default());
    let worker = Worker {
        tag: tag.to_string(),
        socket: socket.to_path_buf(),
        frontend,
        backend_features: features,
        protocol,
        end,
        calls,
        shared: shared.clone(),
        interrupt: None,
        started: Vec::new(),
    };
    tracing::debug!(
        tag,
        socket = %socket.display(),
        features = format_args!("{features:#x}"),
        protocol,
        "vhost-user session set up"
    );
    Ok((
        Setup {
            features,
            link,
            shared,
        },
        Backend(worker),
    ))
}

fn req(what: &'static str) -> impl FnOnce(vhost::Error) -> ActivateError {
    move |source| ActivateError::Request { what, source }
}

impl DeviceWorker for Worker {
    type Event = Event;

    fn run(&mut self) {
        let mut events = vec![EpollEvent::default(); 8];
        loop {
            let Some(n) = self.end.wait(-1, &mut events) else {
                return;
            };
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_WAKE => {
                        if !self.woken() {
                            return;
                        }
                    }
                    TOKEN_SOCKET => self.backend_hung_up(),
                    t => {
                        if let Some(i) = t.checked_sub(TOKEN_CALL) {
                            self.relay_call(i as usize);
                        }
                    }
                }
            }
        }
    }

    fn end(&self) -> &ThreadEnd<Event> {
        &self.end
    }

    fn handle(&mut self, e: Event) {
        match e {
            Event::Activate(a) => self.activate(a),
            Event::Reset => self.reset(),
        }
    }
}

impl Worker {
    /// The backend wrote queue `i`'s call eventfd: used buffers.
    fn relay_call(&mut self, i: usize) {
        let Some(call) = self.calls.get(i) else {
            return;
        };
        match call.read() {
            Ok(_) => {
                if let Some(irq) = &self.interrupt {
                    irq.signal_used();
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => tracing::warn!("virtio-fs {:?}: call eventfd: {e}", self.tag),
        }
    }

    fn backend_hung_up(&mut self) {
        if self.shared.backend_gone.swap(true, Ordering::SeqCst) {
            return;
        }
        let _ = self.end.epoll.ctl(
            ControlOperation::Delete,
            self.frontend.as_raw_fd(),
            EpollEvent::default(),
        );
        tracing::error!(
            "virtio-fs {:?}: the vhost-user backend at {} hung up: the device stops, the VM goes on",
            self.tag,
            self.socket.display()
        );
        self.started.clear();
        if let Some(irq) = &self.interrupt {
            irq.signal_config();
        }
    }

    fn activate(&mut self, a: Activation) {
        let generation = a.generation;
        let queues = a.vrings.len();
        match self.try_activate(a) {
            Ok(()) => tracing::info!(
                "virtio-fs {:?}: {queues} queue(s) handed to the backend",
                self.tag
            ),
            Err(e) => {
                tracing::warn!(
                    "virtio-fs {:?}: activation failed: {e}; the device needs a reset",
                    self.tag
                );
                self.shared
                    .failed_generation
                    .store(generation, Ordering::SeqCst);
                if let Some(irq) = &self.interrupt {
                    irq.signal_config();
                }
            }
        }
    }

    fn try_activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        self.stop_rings();
        self.interrupt = Some(a.interrupt);
        if !self.shared.backend_connected() {
            return Err(ActivateError::Gone);
        }
        for c in &self.calls {
            let _ = c.read();
        }
        let mut features = a.features & self.backend_features;
        if self.protocol {
            features |= VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        }
        self.frontend
            .set_features(features)
            .map_err(req("SET_FEATURES"))?;
        let regions = a
            .mem
            .iter()
            .map(|r| {
                VhostUserMemoryRegionInfo::from_guest_region(r).map_err(|source| {
                    ActivateError::Region {
                        addr: vm_memory::GuestMemoryRegion::start_addr(r).0,
                        source,
                    }
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.frontend
            .set_mem_table(&regions)
            .map_err(req("SET_MEM_TABLE"))?;
        for v in &a.vrings {
            self.start_ring(v)?;
        }
        Ok(())
    }

    fn start_ring(&mut self, v: &VringSetup) -> Result<(), ActivateError> {
        let i = v.index;
        let (Some(call), Some(kick), Some(&max)) =
            (self.calls.get(i), self.end.kicks.get(i), QUEUE_SIZES.get(i))
        else {
            return Err(ActivateError::Request {
                what: "queue index",
                source: vhost::Error::InvalidQueue,
            });
        };
        self.started.push(i);
        let f = &mut self.frontend;
        f.set_vring_num(i, v.size).map_err(req("SET_VRING_NUM"))?;
        let addrs = VringConfigData {
            queue_max_size: max,
            queue_size: v.size,
            flags: 0,
            desc_table_addr: v.desc_host,
            used_ring_addr: v.used_host,
            avail_ring_addr: v.avail_host,
            log_addr: None,
        };
        f.set_vring_addr(i, &addrs).map_err(req("SET_VRING_ADDR"))?;
        f.set_vring_base(i, v.next_avail)
            .map_err(req("SET_VRING_BASE"))?;
        f.set_vring_call(i, call).map_err(req("SET_VRING_CALL"))?;
        f.set_vring_kick(i, kick).map_err(req("SET_VRING_KICK"))?;
        if self.protocol {
            f.set_vring_enable(i, true)
                .map_err(req("SET_VRING_ENABLE"))?;
        }
        Ok(())
    }

    /// Stops every ring the backend was given (`GET_VRING_BASE` stops a
    /// ring); failures are logged, the device is stopped anyway.
    fn stop_rings(&mut self) {
        let started = std::mem::take(&mut self.started);
        if !self.shared.backend_connected() {
            return;
        }
        for i in started {
            if self.protocol {
                if let Err(e) = self.frontend.set_vring_enable(i, false) {
                    tracing::warn!("virtio-fs {:?}: disabling queue {i}: {e}", self.tag);
                }
            }
            if let Err(e) = self.frontend.get_vring_base(i) {
                tracing::warn!("virtio-fs {:?}: stopping queue {i}: {e}", self.tag);
            }
        }
    }

    fn reset(&mut self) {
        self.stop_rings();
        self.interrupt = None;
        for c in &self.calls {
            let _ = c.read();
        }
    }
}
