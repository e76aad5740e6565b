//! The vsock backend thread: moves packets between the guest's queues and
//! host Unix streams, with virtio-vsock credit flow control both ways.
//!
//! Every packet from the guest is checked (header, CIDs, type, length,
//! descriptors); a bad packet is dropped or answered with a reset, and
//! logged rate-limited. Nothing the guest sends can stop or block this
//! thread, or make it buffer without bound:
//!
//! - TX packets are handled as they are popped, at most [`BUDGET`] chains
//!   per pass ([`super::tx`]); what the host buffers for one connection is
//!   bounded by the credit it advertised ([`super::credit`]).
//! - Every host stream is non-blocking, connects included. When the guest
//!   closes a connection whose host reader is slow, what is still buffered
//!   drains in the background and is dropped after [`DRAIN_TIMEOUT`].

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_queue::{QueueOwnedT, QueueT};
use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::credit::Credit;
use super::handshake::{self, Handshake};
use super::tx::{
    drain_tx, Header, TxItem, MAX_PKT_DATA, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST,
    OP_RESPONSE, OP_RST, OP_RW, OP_SHUTDOWN, TYPE_STREAM,
};
use super::{Event, VsockError, GUEST_CID, HOST_CID};
use crate::devices::virtio::{should_log, Interrupt};
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

const RXQ: usize = 0;
const TXQ: usize = 1;

const SHUTDOWN_RCV: u32 = 1;
const SHUTDOWN_SEND: u32 = 2;

/// Receive buffer we advertise per connection: the most the host buffers
/// for one connection.
const CONN_BUF: u32 = 256 * 1024;
/// Most connections (including handshakes in progress and connections
/// draining after the guest closed them).
const MAX_CONNS: usize = 1024;
/// Most control packets waiting for guest RX buffers; beyond this a guest
/// that does not read its RX queue gets further replies dropped.
const MAX_CONTROL: usize = 4096;
/// Most descriptor chains handled per queue and pass before the thread
/// looks at its other events again.
pub const BUDGET: usize = 256;
/// How long data the guest sent before closing may wait for a slow host
/// reader before it is dropped.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// First host-side port handed out for host-initiated connections.
const FIRST_HOST_PORT: u32 = 1 << 30;

const TOKEN_WAKE: u64 = 0;
const TOKEN_LISTENER: u64 = 1;
const TOKEN_FIRST_STREAM: u64 = 16;

/// (host port, guest port).
type Key = (u32, u32);

#[derive(PartialEq, Eq, Debug)]
enum State {
    /// Host-initiated, REQUEST sent, waiting for the guest.
    AwaitingResponse,
    Established,
}

struct Conn {
    stream: UnixStream,
    token: u64,
    state: State,
    credit: Credit,
    /// Guest data not yet written to the stream (at most CONN_BUF bytes).
    to_stream: VecDeque<u8>,
    readable: bool,
    host_eof: bool,
    guest_shut_send: bool,
}

impl Conn {
    fn new(stream: UnixStream, token: u64, state: State) -> Conn {
        Conn {
            stream,
            token,
            state,
            credit: Credit::new(CONN_BUF),
            to_stream: VecDeque::new(),
            readable: true,
            host_eof: false,
            guest_shut_send: false,
        }
    }
}

/// A connection the guest closed, still writing what it sent to a slow
/// host reader.
struct Drain {
    stream: UnixStream,
    buf: VecDeque<u8>,
}

struct Pending {
    stream: UnixStream,
    buf: Vec<u8>,
}

struct Active {
    mem: Arc<GuestMemoryMmap>,
    queues: Vec<Queue>,
    interrupt: Interrupt,
}

struct Muxer {
    uds: PathBuf,
    epoll: Epoll,
    wake: Arc<EventFd>,
    events: Receiver<Event>,
    listener: UnixListener,
    active: Option<Active>,
    pending: HashMap<u64, Pending>,
    conns: HashMap<Key, Conn>,
    tokens: HashMap<u64, Key>,
    draining: HashMap<u64, Drain>,
    /// Drop deadlines of draining connections, oldest first.
    drain_deadlines: VecDeque<(Instant, u64)>,
    next_token: u64,
    next_host_port: u32,
    /// Control packets waiting for RX buffers: (host port, guest port, op, flags).
    control: VecDeque<(u32, u32, u16, u32)>,
    /// One TX packet's data at a time.
    tx_scratch: Vec<u8>,
    /// One RX packet's data at a time.
    rx_scratch: Vec<u8>,
    /// A pass stopped at its budget: run again without waiting.
    more_work: bool,
    bad_packets: u64,
}

/// A bound vsock backend whose thread has not started yet (so that the
/// process can still drop its privileges with no thread running).
pub struct Backend(Muxer);

impl Backend {
    /// Starts the backend thread, which installs the vsock seccomp filter
    /// of `filters` before it serves anything.
    pub fn start(self, filters: &crate::seccomp::Filters) -> std::io::Result<()> {
        let mut m = self.0;
        crate::seccomp::spawn(
            "vsock".into(),
            crate::seccomp::ThreadKind::Vsock,
            filters,
            move || m.run(),
        )?;
        Ok(())
    }
}

/// Binds the socket and prepares the backend; returns the event sender,
/// the wake eventfd and the backend to start.
pub fn bind(uds: &Path) -> Result<(Sender<Event>, Arc<EventFd>, Backend), VsockError> {
    let listener = crate::unix_socket::bind_private(uds).map_err(|source| VsockError::Bind {
        path: uds.to_path_buf(),
        source,
    })?;
    let setup = || -> std::io::Result<(Sender<Event>, Arc<EventFd>, Backend)> {
        listener.set_nonblocking(true)?;
        let wake = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            wake.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_WAKE),
        )?;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_LISTENER),
        )?;
        let (tx, rx) = channel();
        let m = Muxer {
            uds: uds.to_path_buf(),
            epoll,
            wake: wake.clone(),
            events: rx,
            listener: listener.try_clone()?,
            active: None,
            pending: HashMap::new(),
            conns: HashMap::new(),
            tokens: HashMap::new(),
            draining: HashMap::new(),
            drain_deadlines: VecDeque::new(),
            next_token: TOKEN_FIRST_STREAM,
            next_host_port: FIRST_HOST_PORT,
            control: VecDeque::new(),
            tx_scratch: Vec::with_capacity(MAX_PKT_DATA as usize),
            rx_scratch: Vec::with_capacity(MAX_PKT_DATA as usize),
            more_work: false,
            bad_packets: 0,
        };
        Ok((tx, wake, Backend(m)))
    };
    setup().map_err(|e| {
        let _ = std::fs::remove_file(uds);
        VsockError::Backend(e)
    })
}

impl Muxer {
    fn run(&mut self) {
        let mut events = vec![EpollEvent::default(); 64];
        loop {
            let timeout_ms = if self.more_work {
                0
            } else {
                self.drain_deadlines.front().map_or(-1, |(d, _)| {
                    let left = d.saturating_duration_since(Instant::now());
                    // Round up so that the deadline has passed on wake-up.
                    i32::try_from(left.as_millis() + 1).unwrap_or(i32::MAX)
                })
            };
            self.more_work = false;
            let n = match self.epoll.wait(timeout_ms, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!("vsock epoll: {e}");
                    return;
                }
            };
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_WAKE => {
                        let _ = self.wake.read();
                        self.handle_device_events();
                    }
                    TOKEN_LISTENER => self.accept(),
                    t => self.stream_event(t, ev.event_set()),
                }
            }
            self.expire_drains(Instant::now());
            self.process_tx();
            self.process_rx();
        }
    }

    fn bad(&mut self, what: &str) {
        if should_log(&mut self.bad_packets) {
            tracing::warn!(count = self.bad_packets, "vsock: {what}");
        }
    }

    fn handle_device_events(&mut self) {
        while let Ok(e) = self.events.try_recv() {
            match e {
                Event::Activate {
                    mem,
                    queues,
                    interrupt,
                } => {
                    self.active = Some(Active {
                        mem,
                        queues,
                        interrupt,
                    });
                }
                Event::Reset => {
                    self.active = None;
                    let keys: Vec<Key> = self.conns.keys().copied().collect();
                    for k in keys {
                        self.remove_conn(k);
                    }
                    self.control.clear();
                }
            }
        }
    }

    /// Queues a control packet for the guest; false when the queue is full
    /// and it was dropped. A packet identical to the last one queued is
    /// redundant and not queued again: a guest flooding packets for an
    /// unknown connection gets one RST per burst, not one per packet, and
    /// the queue keeps room for the host's connection requests.
    fn push_control(&mut self, pkt: (u32, u32, u16, u32)) -> bool {
        if self.control.back() == Some(&pkt) {
            return true;
        }
        if self.control.len() >= MAX_CONTROL {
            self.bad("guest does not read its RX queue: dropping a control packet");
            return false;
        }
        self.control.push_back(pkt);
        true
    }

    fn add_token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    fn conn_count(&self) -> usize {
        self.pending.len() + self.conns.len() + self.draining.len()
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.conn_count() >= MAX_CONNS {
                        self.bad("too many connections: refusing a host client");
                        continue;
                    }
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let token = self.add_token();
                    if self
                        .epoll
                        .ctl(
                            ControlOperation::Add,
                            stream.as_raw_fd(),
                            EpollEvent::new(EventSet::IN, token),
                        )
                        .is_err()
                    {
                        continue;
                    }
                    self.pending.insert(
                        token,
                        Pending {
                            stream,
                            buf: Vec::new(),
                        },
                    );
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!("vsock accept: {e}");
                    return;
                }
            }
        }
    }

    fn stream_event(&mut self, token: u64, set: EventSet) {
        if self.pending.contains_key(&token) {
            self.handshake_step(token);
            return;
        }
        if self.draining.contains_key(&token) {
            self.flush_drain(token);
            return;
        }
        let Some(key) = self.tokens.get(&token).copied() else {
            return;
        };
        if let Some(c) = self.conns.get_mut(&key) {
            if set.intersects(
                EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR,
            ) {
                c.readable = true;
            }
        }
        if set.contains(EventSet::OUT) {
            self.flush_to_stream(key);
        }
    }

    /// Reads the handshake one byte at a time.
    fn handshake_step(&mut self, token: u64) {
        let outcome = {
            let Some(p) = self.pending.get_mut(&token) else {
                return;
            };
            loop {
                let mut b = [0u8; 1];
                match p.stream.read(&mut b) {
                    Ok(0) => break Handshake::Invalid("client closed during handshake"),
                    Ok(_) => {
                        p.buf.push(b[0]);
                        match handshake::parse(&p.buf) {
                            Handshake::Incomplete => continue,
                            other => break other,
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break Handshake::Incomplete,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => break Handshake::Invalid("read error during handshake"),
                }
            }
        };
        match outcome {
            Handshake::Incomplete => {}
            Handshake::Invalid(why) => {
                if let Some(p) = self.pending.remove(&token) {
                    let _ = self.epoll.ctl(
                        ControlOperation::Delete,
                        p.stream.as_raw_fd(),
                        EpollEvent::default(),
                    );
                }
                tracing::debug!("vsock: handshake refused: {why}");
            }
            Handshake::Connect(port) => {
                let Some(p) = self.pending.remove(&token) else {
                    return;
                };
                if self.active.is_none() {
                    let _ = self.epoll.ctl(
                        ControlOperation::Delete,
                        p.stream.as_raw_fd(),
                        EpollEvent::default(),
                    );
                    tracing::debug!("vsock: CONNECT {port} before the guest driver is ready");
                    return;
                }
                let host_port = self.alloc_host_port(port);
                let key = (host_port, port);
                let _ = self.epoll.ctl(
                    ControlOperation::Modify,
                    p.stream.as_raw_fd(),
                    EpollEvent::new(
                        EventSet::IN
                            | EventSet::OUT
                            | EventSet::EDGE_TRIGGERED
                            | EventSet::READ_HANG_UP,
                        token,
                    ),
                );
                let mut c = Conn::new(p.stream, token, State::AwaitingResponse);
                c.readable = false;
                self.conns.insert(key, c);
                self.tokens.insert(token, key);
                if !self.push_control((host_port, port, OP_REQUEST, 0)) {
                    // The guest does not read its RX queue: the host's
                    // connection is closed at once rather than left waiting.
                    self.remove_conn(key);
                }
            }
        }
    }

    fn alloc_host_port(&mut self, guest_port: u32) -> u32 {
        loop {
            let p = self.next_host_port;
            self.next_host_port = if p == u32::MAX {
                FIRST_HOST_PORT
            } else {
                p + 1
            };
            if !self.conns.contains_key(&(p, guest_port)) {
                return p;
            }
        }
    }

    fn remove_conn(&mut self, key: Key) {
        if let Some(c) = self.conns.remove(&key) {
            self.tokens.remove(&c.token);
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                c.stream.as_raw_fd(),
                EpollEvent::default(),
            );
        }
    }

    fn reset_conn(&mut self, key: Key) {
        self.remove_conn(key);
        self.push_control((key.0, key.1, OP_RST, 0));
    }

    /// Writes buffered guest data to the host stream, as much as it takes
    /// without blocking.
    fn flush_to_stream(&mut self, key: Key) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        match write_some(&mut c.stream, &mut c.to_stream) {
            Ok(n) => c.credit.forwarded(n),
            Err(_) => {
                self.reset_conn(key);
                return;
            }
        }
        if c.to_stream.is_empty() && c.guest_shut_send {
            let _ = c.stream.shutdown(std::net::Shutdown::Write);
        }
        if c.credit.update_due() {
            self.push_control((key.0, key.1, OP_CREDIT_UPDATE, 0));
        }
    }

    /// The guest closed `key`: it hears a reset now; what it sent before
    /// drains to the host reader in the background, for at most
    /// [`DRAIN_TIMEOUT`].
    fn close_conn(&mut self, key: Key) {
        let Some(mut c) = self.conns.remove(&key) else {
            return;
        };
        self.tokens.remove(&c.token);
        self.push_control((key.0, key.1, OP_RST, 0));
        let done = match write_some(&mut c.stream, &mut c.to_stream) {
            Ok(_) => c.to_stream.is_empty(),
            Err(_) => true,
        };
        if done {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                c.stream.as_raw_fd(),
                EpollEvent::default(),
            );
            return;
        }
        // The stream stays registered (edge-triggered, with OUT) under its
        // token: writability brings us back to flush_drain.
        self.draining.insert(
            c.token,
            Drain {
                stream: c.stream,
                buf: c.to_stream,
            },
        );
        if self.drain_deadlines.len() >= 2 * MAX_CONNS {
            let live = &self.draining;
            self.drain_deadlines.retain(|(_, t)| live.contains_key(t));
        }
        self.drain_deadlines
            .push_back((Instant::now() + DRAIN_TIMEOUT, c.token));
    }

    fn end_drain(&mut self, token: u64) {
        if let Some(d) = self.draining.remove(&token) {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                d.stream.as_raw_fd(),
                EpollEvent::default(),
            );
        }
    }

    fn flush_drain(&mut self, token: u64) {
        let Some(d) = self.draining.get_mut(&token) else {
            return;
        };
        let done = match write_some(&mut d.stream, &mut d.buf) {
            Ok(_) => d.buf.is_empty(),
            Err(_) => true,
        };
        if done {
            self.end_drain(token);
        }
    }

    /// Drops draining connections whose host reader did not take the data
    /// in time.
    fn expire_drains(&mut self, now: Instant) {
        while let Some(&(deadline, token)) = self.drain_deadlines.front() {
            if deadline > now {
                return;
            }
            self.drain_deadlines.pop_front();
            if self.draining.contains_key(&token) {
                tracing::debug!(
                    "vsock: host reader too slow, dropping the rest of a closed connection"
                );
                self.end_drain(token);
            }
        }
    }

    /// Handles up to [`BUDGET`] packets from the TX queue, each as it is
    /// popped.
    fn process_tx(&mut self) {
        let Some(mut active) = self.active.take() else {
            return;
        };
        let mem = active.mem.clone();
        let mut scratch = std::mem::take(&mut self.tx_scratch);
        let pass = drain_tx(
            &mem,
            &mut active.queues[TXQ],
            BUDGET,
            &mut scratch,
            |item| match item {
                TxItem::Packet(h, data) => self.handle_packet(h, data),
                TxItem::Misaddressed { src_port, dst_port } => {
                    self.bad("packet with wrong CIDs: answering with a reset");
                    self.push_control((dst_port, src_port, OP_RST, 0));
                }
                TxItem::Dropped(why) => self.bad(&why),
            },
        );
        self.tx_scratch = scratch;
        if let Some(e) = &pass.queue_error {
            self.bad(e);
        }
        if pass.used > 0 {
            let q = &mut active.queues[TXQ];
            if q.needs_notification(&*mem).unwrap_or(true) {
                active.interrupt.signal_used();
            }
        }
        self.more_work |= pass.more;
        self.active = Some(active);
    }

    fn handle_packet(&mut self, h: Header, data: &[u8]) {
        let key = (h.dst_port, h.src_port);
        if let Some(c) = self.conns.get_mut(&key) {
            c.credit.peer_update(h.buf_alloc, h.fwd_cnt);
        }
        match h.op {
            OP_REQUEST => {
                if self.conns.contains_key(&key) {
                    self.reset_conn(key);
                    return;
                }
                self.guest_connect(key, h);
            }
            OP_RESPONSE => {
                let Some(c) = self.conns.get_mut(&key) else {
                    self.push_control((key.0, key.1, OP_RST, 0));
                    return;
                };
                if c.state != State::AwaitingResponse {
                    self.reset_conn(key);
                    return;
                }
                c.state = State::Established;
                c.readable = true;
                // The first bytes on a fresh stream: its buffer is empty.
                let line = format!("OK {}\n", key.0);
                if c.stream.write_all(line.as_bytes()).is_err() {
                    self.reset_conn(key);
                }
            }
            OP_RST => self.remove_conn(key),
            OP_SHUTDOWN => {
                let Some(c) = self.conns.get_mut(&key) else {
                    return;
                };
                if h.flags & SHUTDOWN_SEND != 0 {
                    c.guest_shut_send = true;
                }
                if h.flags & (SHUTDOWN_SEND | SHUTDOWN_RCV) == (SHUTDOWN_SEND | SHUTDOWN_RCV) {
                    self.close_conn(key);
                } else {
                    self.flush_to_stream(key);
                }
            }
            OP_RW => self.guest_data(key, data),
            OP_CREDIT_UPDATE => {}
            OP_CREDIT_REQUEST => {
                if self.conns.contains_key(&key) {
                    self.push_control((key.0, key.1, OP_CREDIT_UPDATE, 0));
                }
            }
            other => {
                self.bad(&format!("unknown op {other}"));
                if self.conns.contains_key(&key) {
                    self.reset_conn(key);
                } else {
                    self.push_control((key.0, key.1, OP_RST, 0));
                }
            }
        }
    }

    /// Data from the guest: written straight to the stream while nothing
    /// is queued, the rest kept within the connection's credit.
    fn guest_data(&mut self, key: Key, data: &[u8]) {
        let Some(c) = self.conns.get_mut(&key) else {
            self.push_control((key.0, key.1, OP_RST, 0));
            return;
        };
        if c.state != State::Established {
            self.reset_conn(key);
            return;
        }
        // data.len() <= MAX_PKT_DATA.
        if let Err(e) = c.credit.accept(data.len() as u32) {
            self.bad(&format!("{e}: resetting the connection"));
            self.reset_conn(key);
            return;
        }
        let mut rest = data;
        if c.to_stream.is_empty() {
            match write_slice(&mut c.stream, data) {
                Ok(n) => {
                    c.credit.forwarded(n as u32);
                    rest = &data[n..];
                }
                Err(_) => {
                    self.reset_conn(key);
                    return;
                }
            }
        }
        if !rest.is_empty() {
            // Once, to the advertised size: the credit check keeps it there.
            let cap = CONN_BUF as usize;
            if c.to_stream.capacity() < cap {
                c.to_stream.reserve_exact(cap - c.to_stream.len());
            }
            c.to_stream.extend(rest);
        }
        self.flush_to_stream(key);
    }

    /// The guest connects to host port `key.0`: `<uds>_<port>`.
    fn guest_connect(&mut self, key: Key, h: Header) {
        if self.conn_count() >= MAX_CONNS {
            self.bad("too many connections: refusing a guest connection");
            self.push_control((key.0, key.1, OP_RST, 0));
            return;
        }
        let mut path = self.uds.clone().into_os_string();
        path.push(format!("_{}", key.0));
        let stream = match connect_nonblocking(Path::new(&path)) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("vsock: guest connection to {:?}: {e}", path);
                self.push_control((key.0, key.1, OP_RST, 0));
                return;
            }
        };
        let token = self.add_token();
        if self
            .epoll
            .ctl(
                ControlOperation::Add,
                stream.as_raw_fd(),
                EpollEvent::new(
                    EventSet::IN
                        | EventSet::OUT
                        | EventSet::EDGE_TRIGGERED
                        | EventSet::READ_HANG_UP,
                    token,
                ),
            )
            .is_err()
        {
            self.push_control((key.0, key.1, OP_RST, 0));
            return;
        }
        let mut c = Conn::new(stream, token, State::Established);
        c.credit.peer_update(h.buf_alloc, h.fwd_cnt);
        self.conns.insert(key, c);
        self.tokens.insert(token, key);
        self.push_control((key.0, key.1, OP_RESPONSE, 0));
    }

    /// Fills up to [`BUDGET`] RX buffers: control packets first, then
    /// stream data within the guest's credit.
    fn process_rx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = active.mem.clone();
        let mut used = 0usize;
        let mut errors: Vec<String> = Vec::new();
        let mut to_reset: Vec<Key> = Vec::new();
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        let mut key_idx = 0usize;
        loop {
            if used >= BUDGET {
                self.more_work = true;
                break;
            }
            // Pick what to send next.
            enum Next {
                Control(u32, u32, u16, u32),
                Data(Key),
            }
            let next = if let Some(c) = self.control.front().copied() {
                Next::Control(c.0, c.1, c.2, c.3)
            } else {
                let mut found = None;
                while key_idx < keys.len() {
                    let k = keys[key_idx];
                    if let Some(c) = self.conns.get(&k) {
                        if c.state == State::Established
                            && c.readable
                            && !c.host_eof
                            && c.credit.peer_credit() > 0
                        {
                            found = Some(k);
                            break;
                        }
                    }
                    key_idx += 1;
                }
                match found {
                    Some(k) => Next::Data(k),
                    None => break,
                }
            };
            let q = &mut active.queues[RXQ];
            let mut chain = match q.iter(&*mem) {
                Ok(mut it) => match it.next() {
                    Some(c) => c,
                    None => break,
                },
                Err(e) => {
                    errors.push(format!("rx queue: {e:?}"));
                    break;
                }
            };
            let head = chain.head_index();
            let mut pkt = match VsockPacket::from_rx_virtq_chain(&*mem, &mut chain, MAX_PKT_DATA) {
                Ok(p) => p,
                Err(e) => {
                    errors.push(format!("bad rx buffer: {e:?}"));
                    if q.add_used(&*mem, head, 0).is_err() {
                        break;
                    }
                    used += 1;
                    continue;
                }
            };
            let (host_port, guest_port, op, flags, len) = match next {
                Next::Control(hp, gp, op, flags) => {
                    self.control.pop_front();
                    (hp, gp, op, flags, 0u32)
                }
                Next::Data(k) => {
                    let Some(c) = self.conns.get_mut(&k) else {
                        q.go_to_previous_position();
                        continue;
                    };
                    let room = pkt.data_slice().map_or(0, |s| s.len());
                    if room == 0 {
                        // A header-only buffer cannot carry data.
                        q.go_to_previous_position();
                        break;
                    }
                    let want = room
                        .min(c.credit.peer_credit() as usize)
                        .min(MAX_PKT_DATA as usize);
                    let buf = &mut self.rx_scratch;
                    buf.clear();
                    buf.resize(want, 0);
                    match c.stream.read(&mut buf[..]) {
                        Ok(0) => {
                            c.host_eof = true;
                            q.go_to_previous_position();
                            // One per connection: bounded by MAX_CONNS.
                            self.control.push_back((
                                k.0,
                                k.1,
                                OP_SHUTDOWN,
                                SHUTDOWN_RCV | SHUTDOWN_SEND,
                            ));
                            continue;
                        }
                        Ok(n) => {
                            if let Some(s) = pkt.data_slice() {
                                s.copy_from(&buf[..n]);
                            }
                            // n <= MAX_PKT_DATA.
                            c.credit.sent(n as u32);
                            (k.0, k.1, OP_RW, 0, n as u32)
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            c.readable = false;
                            q.go_to_previous_position();
                            continue;
                        }
                        Err(e) if e.kind() == ErrorKind::Interrupted => {
                            q.go_to_previous_position();
                            continue;
                        }
                        Err(_) => {
                            to_reset.push(k);
                            c.readable = false;
                            q.go_to_previous_position();
                            continue;
                        }
                    }
                }
            };
            let (buf_alloc, fwd_cnt) = match self.conns.get_mut(&(host_port, guest_port)) {
                Some(c) => c.credit.header_fields(),
                None => (CONN_BUF, 0),
            };
            pkt.set_src_cid(HOST_CID)
                .set_dst_cid(GUEST_CID)
                .set_src_port(host_port)
                .set_dst_port(guest_port)
                .set_type(TYPE_STREAM)
                .set_op(op)
                .set_flags(flags)
                .set_len(len)
                .set_buf_alloc(buf_alloc)
                .set_fwd_cnt(fwd_cnt);
            let used_len = PKT_HEADER_SIZE as u32 + len;
            let q = &mut active.queues[RXQ];
            if let Err(e) = q.add_used(&*mem, head, used_len) {
                errors.push(format!("rx add_used: {e:?}"));
                break;
            }
            used += 1;
        }
        if used > 0 {
            let q = &mut active.queues[RXQ];
            if q.needs_notification(&*mem).unwrap_or(true) {
                active.interrupt.signal_used();
            }
        }
        for k in to_reset {
            self.reset_conn(k);
        }
        for e in errors {
            self.bad(&e);
        }
    }
}

/// Writes as much of `data` as `stream` takes without blocking.
fn write_slice(stream: &mut UnixStream, data: &[u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while done < data.len() {
        match stream.write(&data[done..]) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Writes from the front of `buf` as much as `stream` takes without
/// blocking; returns the bytes written. An emptied buffer gives its memory
/// back.
fn write_some(stream: &mut UnixStream, buf: &mut VecDeque<u8>) -> std::io::Result<u32> {
    let mut total = 0u32;
    while !buf.is_empty() {
        let (a, _) = buf.as_slices();
        let n = write_slice(stream, a)?;
        if n == 0 {
            break;
        }
        buf.drain(..n);
        // At most CONN_BUF bytes are ever buffered.
        total = total.saturating_add(n as u32);
    }
    if buf.is_empty() && buf.capacity() > 0 {
        *buf = VecDeque::new();
    }
    Ok(total)
}

/// Connects to a host listener without blocking: one whose backlog is full
/// refuses (EAGAIN) instead of stalling the vsock thread.
fn connect_nonblocking(path: &Path) -> std::io::Result<UnixStream> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    connect(fd.as_raw_fd(), &addr)?;
    Ok(UnixStream::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connecting_to_a_full_backlog_fails_at_once_instead_of_blocking() {
        let dir = std::env::temp_dir().join(format!("ampoule-vsock-ut-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("l");
        // A listener that never accepts, with the smallest backlog.
        let fd = nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::Stream,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        nix::sys::socket::bind(
            fd.as_raw_fd(),
            &nix::sys::socket::UnixAddr::new(&path).unwrap(),
        )
        .unwrap();
        nix::sys::socket::listen(&fd, nix::sys::socket::Backlog::new(1).unwrap()).unwrap();
        let mut held = Vec::new();
        let mut refused = None;
        // A blocking connect would hang here once the backlog is full.
        for _ in 0..64 {
            match connect_nonblocking(&path) {
                Ok(s) => held.push(s),
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
        let e = refused.expect("a full backlog must refuse");
        assert_eq!(e.kind(), ErrorKind::WouldBlock, "{e}");
        assert!(!held.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn write_some_stops_at_a_full_stream_and_keeps_the_rest() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut buf: VecDeque<u8> = (0..4 * 1024 * 1024u32).map(|i| i as u8).collect();
        let total = buf.len();
        let n = write_some(&mut a, &mut buf).unwrap() as usize;
        assert!(n > 0 && n < total, "wrote {n} of {total}");
        assert_eq!(buf.len(), total - n);
        assert_eq!(buf.front().copied(), Some(n as u8));
        b.set_nonblocking(true).unwrap();
        let mut sink = vec![0u8; 1 << 20];
        let mut got = 0;
        while let Ok(k) = b.read(&mut sink) {
            if k == 0 {
                break;
            }
            got += k;
        }
        assert_eq!(got, n);
    }
}
