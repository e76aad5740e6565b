//! The vsock backend thread: moves packets between the guest's queues and
//! host Unix streams, with virtio-vsock credit flow control both ways.
//!
//! Every packet from the guest is checked (header, CIDs, type, length,
//! descriptors); a bad packet is dropped or answered with a reset, and
//! logged rate-limited. Nothing the guest sends can stop this thread.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::num::Wrapping;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::handshake::{self, Handshake};
use super::{Event, VsockError, GUEST_CID, HOST_CID};
use crate::devices::virtio::{should_log, Interrupt};

const RXQ: usize = 0;
const TXQ: usize = 1;

const TYPE_STREAM: u16 = 1;
const OP_REQUEST: u16 = 1;
const OP_RESPONSE: u16 = 2;
const OP_RST: u16 = 3;
const OP_SHUTDOWN: u16 = 4;
const OP_RW: u16 = 5;
const OP_CREDIT_UPDATE: u16 = 6;
const OP_CREDIT_REQUEST: u16 = 7;
const SHUTDOWN_RCV: u32 = 1;
const SHUTDOWN_SEND: u32 = 2;

/// Receive buffer we advertise per connection.
const CONN_BUF: u32 = 256 * 1024;
/// Largest packet payload accepted from the guest.
const MAX_PKT_DATA: u32 = 64 * 1024;
/// Most connections (including handshakes in progress).
const MAX_CONNS: usize = 1024;
/// Most control packets waiting for guest RX buffers; beyond this a guest
/// that does not read its RX queue gets further replies dropped.
const MAX_CONTROL: usize = 4096;
/// First host-side port handed out for host-initiated connections.
const FIRST_HOST_PORT: u32 = 1 << 30;

const TOKEN_WAKE: u64 = 0;
const TOKEN_LISTENER: u64 = 1;
const TOKEN_FIRST_STREAM: u64 = 16;

/// (host port, guest port).
type Key = (u32, u32);

#[derive(Debug, Clone, Copy)]
struct Header {
    src_port: u32,
    dst_port: u32,
    op: u16,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
}

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
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    rx_cnt: Wrapping<u32>,
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
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
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            to_stream: VecDeque::new(),
            readable: true,
            host_eof: false,
            guest_shut_send: false,
        }
    }

    fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }
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
    next_token: u64,
    next_host_port: u32,
    /// Control packets waiting for RX buffers: (host port, guest port, op, flags).
    control: VecDeque<(u32, u32, u16, u32)>,
    bad_packets: u64,
}

/// Binds the socket and starts the backend thread; returns the event
/// sender and the wake eventfd.
pub fn start(uds: &Path) -> Result<(Sender<Event>, Arc<EventFd>), VsockError> {
    let listener = UnixListener::bind(uds).map_err(|source| VsockError::Bind {
        path: uds.to_path_buf(),
        source,
    })?;
    let setup = || -> std::io::Result<(Sender<Event>, Arc<EventFd>)> {
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
        let mut m = Muxer {
            uds: uds.to_path_buf(),
            epoll,
            wake: wake.clone(),
            events: rx,
            listener: listener.try_clone()?,
            active: None,
            pending: HashMap::new(),
            conns: HashMap::new(),
            tokens: HashMap::new(),
            next_token: TOKEN_FIRST_STREAM,
            next_host_port: FIRST_HOST_PORT,
            control: VecDeque::new(),
            bad_packets: 0,
        };
        std::thread::Builder::new()
            .name("vsock".into())
            .spawn(move || m.run())?;
        Ok((tx, wake))
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
            let n = match self.epoll.wait(-1, &mut events) {
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

    fn push_control(&mut self, pkt: (u32, u32, u16, u32)) {
        if self.control.len() >= MAX_CONTROL {
            self.bad("guest does not read its RX queue: dropping a control packet");
            return;
        }
        self.control.push_back(pkt);
    }

    fn add_token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.pending.len() + self.conns.len() >= MAX_CONNS {
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
                self.push_control((host_port, port, OP_REQUEST, 0));
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

    fn flush_to_stream(&mut self, key: Key) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        while !c.to_stream.is_empty() {
            let (a, _) = c.to_stream.as_slices();
            match c.stream.write(a) {
                Ok(0) => break,
                Ok(n) => {
                    c.to_stream.drain(..n);
                    c.fwd_cnt += Wrapping(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.reset_conn(key);
                    return;
                }
            }
        }
        if c.to_stream.is_empty() && c.guest_shut_send {
            let _ = c.stream.shutdown(std::net::Shutdown::Write);
        }
        if (c.fwd_cnt - c.last_fwd_cnt_sent).0 >= CONN_BUF / 4 {
            self.push_control((key.0, key.1, OP_CREDIT_UPDATE, 0));
        }
    }

    /// Drains the TX queue: packets from the guest.
    fn process_tx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = active.mem.clone();
        let mut got: Vec<(Header, Option<Vec<u8>>)> = Vec::new();
        let mut errors: Vec<String> = Vec::new();
        let mut used_any = false;
        {
            let q = &mut active.queues[TXQ];
            loop {
                let mut chain = match q.iter(&*mem) {
                    Ok(mut it) => match it.next() {
                        Some(c) => c,
                        None => break,
                    },
                    Err(e) => {
                        errors.push(format!("tx queue: {e:?}"));
                        break;
                    }
                };
                let head = chain.head_index();
                match VsockPacket::from_tx_virtq_chain(&*mem, &mut chain, MAX_PKT_DATA) {
                    Ok(pkt) => {
                        if pkt.src_cid() != GUEST_CID
                            || pkt.dst_cid() != HOST_CID
                            || pkt.type_() != TYPE_STREAM
                        {
                            errors.push(format!(
                                "packet with src_cid {} dst_cid {} type {}",
                                pkt.src_cid(),
                                pkt.dst_cid(),
                                pkt.type_()
                            ));
                            // Answer with a reset unless it is one.
                            if pkt.op() != OP_RST && pkt.type_() == TYPE_STREAM {
                                got.push((
                                    Header {
                                        src_port: pkt.src_port(),
                                        dst_port: pkt.dst_port(),
                                        op: u16::MAX,
                                        flags: 0,
                                        buf_alloc: 0,
                                        fwd_cnt: 0,
                                    },
                                    None,
                                ));
                            }
                        } else {
                            let data = pkt.data_slice().map(|s| {
                                let mut v = vec![0u8; s.len()];
                                s.copy_to(&mut v[..]);
                                v
                            });
                            got.push((
                                Header {
                                    src_port: pkt.src_port(),
                                    dst_port: pkt.dst_port(),
                                    op: pkt.op(),
                                    flags: pkt.flags(),
                                    buf_alloc: pkt.buf_alloc(),
                                    fwd_cnt: pkt.fwd_cnt(),
                                },
                                data,
                            ));
                        }
                    }
                    Err(e) => errors.push(format!("bad tx packet: {e:?}")),
                }
                if let Err(e) = q.add_used(&*mem, head, 0) {
                    errors.push(format!("tx add_used: {e:?}"));
                    break;
                }
                used_any = true;
            }
            if used_any && q.needs_notification(&*mem).unwrap_or(true) {
                active.interrupt.signal_used();
            }
        }
        for e in errors {
            self.bad(&e);
        }
        for (h, data) in got {
            self.handle_packet(h, data);
        }
    }

    fn handle_packet(&mut self, h: Header, data: Option<Vec<u8>>) {
        let key = (h.dst_port, h.src_port);
        if h.op == u16::MAX {
            self.push_control((key.0, key.1, OP_RST, 0));
            return;
        }
        if let Some(c) = self.conns.get_mut(&key) {
            c.peer_buf_alloc = h.buf_alloc;
            c.peer_fwd_cnt = Wrapping(h.fwd_cnt);
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
                    // The guest closed: flush what we have, then reset.
                    let pending: Vec<u8> = c.to_stream.drain(..).collect();
                    let _ = c.stream.set_nonblocking(false);
                    let _ = c.stream.write_all(&pending);
                    self.reset_conn(key);
                } else {
                    self.flush_to_stream(key);
                }
            }
            OP_RW => {
                let Some(c) = self.conns.get_mut(&key) else {
                    self.push_control((key.0, key.1, OP_RST, 0));
                    return;
                };
                if c.state != State::Established {
                    self.reset_conn(key);
                    return;
                }
                let d = data.unwrap_or_default();
                if c.to_stream.len() + d.len() > CONN_BUF as usize {
                    self.bad("guest exceeded its credit: resetting the connection");
                    self.reset_conn(key);
                    return;
                }
                c.to_stream.extend(d);
                self.flush_to_stream(key);
            }
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

    /// The guest connects to host port `key.0`: `<uds>_<port>`.
    fn guest_connect(&mut self, key: Key, h: Header) {
        if self.pending.len() + self.conns.len() >= MAX_CONNS {
            self.bad("too many connections: refusing a guest connection");
            self.push_control((key.0, key.1, OP_RST, 0));
            return;
        }
        let mut path = self.uds.clone().into_os_string();
        path.push(format!("_{}", key.0));
        let stream = match UnixStream::connect(&path) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("vsock: guest connection to {:?}: {e}", path);
                self.push_control((key.0, key.1, OP_RST, 0));
                return;
            }
        };
        if stream.set_nonblocking(true).is_err() {
            self.push_control((key.0, key.1, OP_RST, 0));
            return;
        }
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
        c.peer_buf_alloc = h.buf_alloc;
        c.peer_fwd_cnt = Wrapping(h.fwd_cnt);
        self.conns.insert(key, c);
        self.tokens.insert(token, key);
        self.push_control((key.0, key.1, OP_RESPONSE, 0));
    }

    /// Fills RX buffers: control packets first, then stream data within
    /// the guest's credit.
    fn process_rx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = active.mem.clone();
        let mut used_any = false;
        let mut errors: Vec<String> = Vec::new();
        let mut to_reset: Vec<Key> = Vec::new();
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        let mut key_idx = 0usize;
        loop {
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
                            && c.peer_credit() > 0
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
                    used_any = true;
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
                        .min(c.peer_credit() as usize)
                        .min(MAX_PKT_DATA as usize);
                    let mut buf = vec![0u8; want];
                    match c.stream.read(&mut buf) {
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
                            c.rx_cnt += Wrapping(n as u32);
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
            let fwd_cnt = match self.conns.get_mut(&(host_port, guest_port)) {
                Some(c) => {
                    c.last_fwd_cnt_sent = c.fwd_cnt;
                    c.fwd_cnt.0
                }
                None => 0,
            };
            pkt.set_src_cid(HOST_CID)
                .set_dst_cid(GUEST_CID)
                .set_src_port(host_port)
                .set_dst_port(guest_port)
                .set_type(TYPE_STREAM)
                .set_op(op)
                .set_flags(flags)
                .set_len(len)
                .set_buf_alloc(CONN_BUF)
                .set_fwd_cnt(fwd_cnt);
            let used_len = PKT_HEADER_SIZE as u32 + len;
            let q = &mut active.queues[RXQ];
            if let Err(e) = q.add_used(&*mem, head, used_len) {
                errors.push(format!("rx add_used: {e:?}"));
                break;
            }
            used_any = true;
        }
        if used_any {
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
