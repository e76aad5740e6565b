//! The device thread of a NIC: waits with epoll on its wake eventfd
//! (activation, reset), the two queue kicks and the tap, and after every
//! wake-up runs one bounded TX pass and one bounded RX pass.
//!
//! The tap is polled for input only while the guest has RX buffers: the
//! RX pass that finds the ring empty turns `EPOLLIN` off, and the next pass
//! that finds a buffer (the guest's RX notification wakes the thread)
//! turns it on again. A TX pass that stops at its budget makes the next
//! wait return at once; an RX pass that does leaves the tap readable.
//! Errors and hang-ups on the tap (the interface was deleted) stop RX for
//! good: the link goes down with a configuration-change interrupt, TX
//! frames are dropped and counted, the VM goes on.

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, EpollEvent, EventSet};

use super::tap::Tap;
use super::{
    add, rx, tx, Event, NetError, NetShared, BUDGET, MAX_FRAME_WITH_HDR, NUM_QUEUES, RX_QUEUE,
    TX_QUEUE, VNET_HDR_LEN,
};
use crate::devices::virtio::device_thread::{self, DeviceLink, DeviceWorker, ThreadEnd};
use crate::devices::virtio::{should_log, Interrupt};

const TOKEN_WAKE: u64 = 0;
const TOKEN_TAP: u64 = 1;
const TOKEN_KICK: u64 = 16;

/// The device thread, not started yet (so that the process can drop its
/// privileges while it has one thread).
pub struct Backend(Worker);

impl Backend {
    /// Starts the device thread (`net<index>`) under the net seccomp
    /// filter of `filters`.
    pub fn start(self, index: usize, filters: &crate::seccomp::Filters) -> std::io::Result<()> {
        device_thread::start(
            format!("net{index}"),
            crate::seccomp::ThreadKind::Net,
            filters,
            self.0,
        )
    }
}

struct Active {
    mem: Arc<GuestMemoryMmap>,
    queues: Vec<Queue>,
    interrupt: Interrupt,
}

struct Worker {
    tap: Tap,
    shared: Arc<NetShared>,
    end: ThreadEnd<Event>,
    active: Option<Active>,
    /// EPOLLIN is on for the tap.
    tap_armed: bool,
    /// The tap reported an error or hang-up: it is out of epoll for good.
    tap_gone: bool,
    /// The last TX pass stopped at its budget.
    tx_more: bool,
    /// One TX frame at a time.
    tx_buf: Vec<u8>,
    /// One RX frame at a time.
    rx_buf: Vec<u8>,
    /// The regions of the RX buffer being filled.
    rx_regions: Vec<(GuestAddress, u32)>,
    /// Rate limits of the logs of guest and host errors.
    bad_guest: u64,
    bad_host: u64,
}

/// Creates the eventfds and the epoll set of a NIC on `tap`: the device's
/// link to its thread, and the thread to start.
pub fn prepare(tap: Tap, shared: Arc<NetShared>) -> Result<(DeviceLink<Event>, Backend), NetError> {
    let name = shared.tap_name.clone();
    let io = |e: device_thread::SetupError| NetError::Io {
        name: name.clone(),
        what: e.what,
        source: e.source,
    };
    let (link, end) =
        device_thread::link(format!("net {name:?}"), NUM_QUEUES, TOKEN_WAKE).map_err(io)?;
    for (i, k) in end.kicks.iter().enumerate() {
        end.add(k.as_raw_fd(), EventSet::IN, TOKEN_KICK + i as u64)
            .map_err(io)?;
    }
    // Not polled for input until the guest posts RX buffers; errors and
    // hang-ups are always reported.
    end.add(tap.as_raw_fd(), EventSet::empty(), TOKEN_TAP)
        .map_err(io)?;
    let worker = Worker {
        tap,
        shared,
        end,
        active: None,
        tap_armed: false,
        tap_gone: false,
        tx_more: false,
        tx_buf: Vec::with_capacity(MAX_FRAME_WITH_HDR),
        rx_buf: vec![0u8; rx::READ_BUF_LEN],
        rx_regions: Vec::with_capacity(super::MAX_CHAIN_DESCRIPTORS),
        bad_guest: 0,
        bad_host: 0,
    };
    Ok((link, Backend(worker)))
}

impl DeviceWorker for Worker {
    type Event = Event;

    fn run(&mut self) {
        let mut events = vec![EpollEvent::default(); 8];
        loop {
            let timeout = if self.tx_more { 0 } else { -1 };
            let Some(n) = self.end.wait(timeout, &mut events) else {
                return;
            };
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_WAKE => {
                        if !self.woken() {
                            return;
                        }
                    }
                    TOKEN_TAP => {
                        if ev
                            .event_set()
                            .intersects(EventSet::ERROR | EventSet::HANG_UP)
                        {
                            self.tap_lost();
                        }
                    }
                    t => {
                        let i = t.saturating_sub(TOKEN_KICK) as usize;
                        if let Some(k) = self.end.kicks.get(i) {
                            let _ = k.read();
                        }
                    }
                }
            }
            self.process_tx();
            self.process_rx();
        }
    }

    fn end(&self) -> &ThreadEnd<Event> {
        &self.end
    }

    fn handle(&mut self, e: Event) {
        match e {
            Event::Activate {
                mem,
                queues,
                interrupt,
            } => {
                tracing::debug!("net {:?}: activated", self.name());
                self.active = Some(Active {
                    mem,
                    queues,
                    interrupt,
                });
                self.tx_more = false;
            }
            Event::Reset => {
                self.active = None;
                self.tx_more = false;
                self.arm_tap(false);
            }
        }
    }
}

impl Worker {
    fn name(&self) -> &str {
        &self.shared.tap_name
    }

    /// Turns polling the tap for input on or off.
    fn arm_tap(&mut self, on: bool) {
        if self.tap_gone || self.tap_armed == on {
            return;
        }
        let set = if on { EventSet::IN } else { EventSet::empty() };
        match self.end.epoll.ctl(
            ControlOperation::Modify,
            self.tap.as_raw_fd(),
            EpollEvent::new(set, TOKEN_TAP),
        ) {
            Ok(()) => self.tap_armed = on,
            Err(e) => tracing::error!("net {:?}: epoll_ctl on the tap: {e}", self.name()),
        }
    }

    /// The tap reported an error: the interface is gone.
    fn tap_lost(&mut self) {
        if self.tap_gone {
            return;
        }
        let _ = self.end.epoll.ctl(
            ControlOperation::Delete,
            self.tap.as_raw_fd(),
            EpollEvent::default(),
        );
        self.tap_gone = true;
        self.tap_armed = false;
        self.shared.link_up.store(false, Ordering::SeqCst);
        tracing::error!(
            "net {:?}: the tap reports an error (interface deleted?): the link is down, the VM goes on",
            self.name()
        );
        if let Some(a) = &self.active {
            a.interrupt.signal_config();
        }
    }

    fn guest_error(&mut self, what: &str) {
        if should_log(&mut self.bad_guest) {
            tracing::warn!(count = self.bad_guest, "net {:?}: {what}", self.name());
        }
    }

    fn host_error(&mut self, what: &str) {
        if should_log(&mut self.bad_host) {
            tracing::warn!(count = self.bad_host, "net {:?}: {what}", self.name());
        }
    }

    fn process_tx(&mut self) {
        let Worker {
            active,
            tap,
            shared,
            tx_buf,
            tap_gone,
            ..
        } = self;
        let Some(a) = active.as_mut() else {
            self.tx_more = false;
            return;
        };
        let mem = a.mem.clone();
        let Some(q) = a.queues.get_mut(TX_QUEUE).filter(|q| q.ready()) else {
            self.tx_more = false;
            return;
        };
        let stats = &shared.stats;
        let vnet = tap.vnet_hdr();
        let mut last_bad: Option<tx::TxError> = None;
        let mut last_write: Option<std::io::Error> = None;
        let pass = tx::drain_tx(&mem, q, BUDGET, tx_buf, |r| match r {
            Ok(frame) => {
                let out = if vnet { frame } else { &frame[VNET_HDR_LEN..] };
                let written = if *tap_gone {
                    Err(std::io::Error::other("the tap is gone"))
                } else {
                    tap.write_frame(out)
                };
                match written {
                    Ok(_) => {
                        add(&stats.tx_frames, 1);
                        add(&stats.tx_bytes, (frame.len() - VNET_HDR_LEN) as u64);
                    }
                    // A full tap (EAGAIN) or a gone one drops the frame.
                    Err(e) => {
                        add(&stats.tx_dropped, 1);
                        last_write = Some(e);
                    }
                }
            }
            Err(e) => {
                if e.is_oversized() {
                    add(&stats.tx_oversized, 1);
                } else {
                    add(&stats.tx_malformed, 1);
                }
                last_bad = Some(e);
            }
        });
        if pass.used > 0 && q.needs_notification(&*mem).unwrap_or(true) {
            a.interrupt.signal_used();
        }
        self.tx_more = pass.more;
        if let Some(e) = pass.queue_error {
            self.guest_error(&e);
        }
        if let Some(e) = last_bad {
            self.guest_error(&format!("TX chain dropped: {e}"));
        }
        if let Some(e) = last_write {
            if e.kind() != std::io::ErrorKind::WouldBlock {
                self.host_error(&format!("writing to the tap: {e}"));
            }
        }
    }

    fn process_rx(&mut self) {
        let Worker {
            active,
            tap,
            shared,
            rx_buf,
            rx_regions,
            tap_gone,
            ..
        } = self;
        if *tap_gone {
            return;
        }
        let Some(a) = active.as_mut() else {
            return;
        };
        let mem = a.mem.clone();
        let Some(q) = a.queues.get_mut(RX_QUEUE).filter(|q| q.ready()) else {
            return;
        };
        let pass = rx::fill_rx(&mem, q, BUDGET, tap.vnet_hdr(), rx_regions, rx_buf, |b| {
            tap.read_frame(b)
        });
        if pass.used > 0 && q.needs_notification(&*mem).unwrap_or(true) {
            a.interrupt.signal_used();
        }
        let stats = &shared.stats;
        add(&stats.rx_frames, pass.delivered);
        add(&stats.rx_bytes, pass.bytes);
        add(&stats.rx_dropped_too_small, pass.too_small);
        add(&stats.rx_dropped_bad_frame, pass.bad_frames);
        add(&stats.rx_bad_buffers, pass.bad_buffers);
        // Poll the tap while there are buffers to fill and frames may come.
        self.arm_tap(pass.source_empty || pass.more);
        if let Some(e) = pass.queue_error {
            self.guest_error(&e);
        }
        if let Some(e) = pass.last_bad_buffer {
            self.guest_error(&format!("RX buffer returned unused: {e}"));
        }
        if pass.too_small > 0 {
            self.guest_error("RX buffer too small: frame dropped");
        }
        if let Some(e) = pass.last_bad_frame {
            self.host_error(&format!("frame from the tap dropped: {e}"));
        }
        if let Some(e) = pass.read_error {
            self.host_error(&format!("reading the tap: {e}"));
        }
    }
}
