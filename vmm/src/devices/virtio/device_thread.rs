//! What the devices served by a thread of their own share: starting that
//! thread, the device's link to it (messages, a wake eventfd, one kick
//! eventfd per queue) and the thread's end of it (the messages, and an
//! epoll set that polls the wake eventfd).

use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::sync::Arc;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::should_log;
use crate::seccomp::{Filters, ThreadKind};

/// The loop of a device thread.
pub trait DeviceWorker: Send + 'static {
    /// The device's messages.
    type Event;

    /// Serves the device until it is gone.
    fn run(&mut self);

    /// The thread's end of the link.
    fn end(&self) -> &ThreadEnd<Self::Event>;

    /// Handles one message of the device.
    fn handle(&mut self, e: Self::Event);

    /// The wake eventfd fired: handles the device's messages; false once
    /// the device is gone.
    fn woken(&mut self) -> bool {
        let _ = self.end().wake.read();
        loop {
            match self.end().events.try_recv() {
                Ok(e) => self.handle(e),
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
    }
}

/// Starts the device thread `name` running `worker`, once the thread has
/// installed the seccomp filter of `kind` from `filters`.
pub fn start<W: DeviceWorker>(
    name: String,
    kind: ThreadKind,
    filters: &Filters,
    mut worker: W,
) -> std::io::Result<()> {
    crate::seccomp::spawn(name, kind, filters, move || worker.run())?;
    Ok(())
}

/// A failed system call while setting a device thread up.
#[derive(Debug)]
pub struct SetupError {
    /// The call: "eventfd", "epoll" or "epoll_ctl".
    pub what: &'static str,
    pub source: std::io::Error,
}

/// A non-blocking eventfd.
pub fn eventfd() -> Result<EventFd, SetupError> {
    EventFd::new(libc::EFD_NONBLOCK).map_err(|source| SetupError {
        what: "eventfd",
        source,
    })
}

/// The device's end (vCPU threads): messages and queue kicks.
pub struct DeviceLink<E> {
    /// Names the device in logs, as `net "tap0"`.
    label: String,
    kicks: Vec<Arc<EventFd>>,
    tx: Sender<E>,
    wake: Arc<EventFd>,
    bad_notifies: u64,
}

/// The device thread's end.
pub struct ThreadEnd<E> {
    /// Names the device in logs, as `net "tap0"`.
    pub label: String,
    pub epoll: Epoll,
    pub wake: Arc<EventFd>,
    pub events: Receiver<E>,
    /// The kick eventfds, one per queue.
    pub kicks: Vec<Arc<EventFd>>,
}

/// Creates both ends for a device named `label` in logs with `queues`
/// queues: a kick eventfd per queue, the wake eventfd, and an epoll set
/// that polls the wake eventfd under `wake_token`.
pub fn link<E>(
    label: String,
    queues: usize,
    wake_token: u64,
) -> Result<(DeviceLink<E>, ThreadEnd<E>), SetupError> {
    let kicks = (0..queues)
        .map(|_| eventfd().map(Arc::new))
        .collect::<Result<Vec<_>, _>>()?;
    let wake = Arc::new(eventfd()?);
    let epoll = Epoll::new().map_err(|source| SetupError {
        what: "epoll",
        source,
    })?;
    let (tx, rx) = channel();
    let end = ThreadEnd {
        label: label.clone(),
        epoll,
        wake: wake.clone(),
        events: rx,
        kicks: kicks.clone(),
    };
    end.add(wake.as_raw_fd(), EventSet::IN, wake_token)?;
    let link = DeviceLink {
        label,
        kicks,
        tx,
        wake,
        bad_notifies: 0,
    };
    Ok((link, end))
}

impl<E> DeviceLink<E> {
    /// Sends `e` to the device thread and wakes it.
    pub fn send(&self, e: E) {
        if self.tx.send(e).is_err() {
            tracing::error!("{}: device thread is gone", self.label);
        }
        if let Err(e) = self.wake.write(1) {
            tracing::error!("{}: waking the device thread: {e}", self.label);
        }
    }

    /// Relays the driver's notification of queue `index` to its kick
    /// eventfd.
    pub fn kick(&mut self, index: u32) {
        match self.kicks.get(index as usize) {
            Some(k) => {
                if let Err(e) = k.write(1) {
                    tracing::warn!("{}: kick: {e}", self.label);
                }
            }
            None => {
                if should_log(&mut self.bad_notifies) {
                    tracing::warn!(
                        count = self.bad_notifies,
                        "{}: notify of unknown queue {index}",
                        self.label
                    );
                }
            }
        }
    }

    /// The kick eventfds with their queue index, for KVM's ioeventfds.
    pub fn kick_eventfds(&self) -> Vec<(u32, Arc<EventFd>)> {
        self.kicks
            .iter()
            .enumerate()
            .map(|(i, k)| (i as u32, k.clone()))
            .collect()
    }
}

impl<E> ThreadEnd<E> {
    /// Adds `fd` to the epoll set, for `set`, under `token`.
    pub fn add(&self, fd: RawFd, set: EventSet, token: u64) -> Result<(), SetupError> {
        self.epoll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(set, token))
            .map_err(|source| SetupError {
                what: "epoll_ctl",
                source,
            })
    }

    /// Waits at most `timeout` ms (-1: no limit) for events, again when a
    /// signal interrupts the wait. None if epoll fails (logged): the device
    /// stops.
    pub fn wait(&self, timeout: i32, events: &mut [EpollEvent]) -> Option<usize> {
        loop {
            match self.epoll.wait(timeout, events) {
                Ok(n) => return Some(n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!("{}: epoll: {e}; the device stops", self.label);
                    return None;
                }
            }
        }
    }
}
