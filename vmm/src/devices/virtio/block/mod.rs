//! virtio-blk backed by a host file; a drive may be an empty slot that the
//! control socket fills or empties at run time (config-change interrupt).
//!
//! Requests come from the guest and are hostile: the header, the data
//! descriptors and the status descriptor are checked, every access is
//! bounds-checked against the disk, a malformed request fails alone.

pub mod request;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{read_config_bytes, should_log, Interrupt, VirtioDevice};
use request::{RequestError, SECTOR_SIZE};

/// virtio device id of a block device.
pub const VIRTIO_ID_BLOCK: u32 = 2;
const VIRTIO_BLK_F_RO: u64 = 1 << 5;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
const QUEUE_SIZES: [u16; 1] = [256];

/// The file behind a drive.
pub struct Backing {
    pub file: File,
    pub path: PathBuf,
    pub read_only: bool,
    pub sectors: u64,
}

impl Backing {
    /// Opens `path` (read-only when `read_only`).
    pub fn open(path: &Path, read_only: bool) -> Result<Backing, String> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let md = file
            .metadata()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if !md.is_file() {
            return Err(format!("{}: not a regular file", path.display()));
        }
        Ok(Backing {
            file,
            path: path.to_path_buf(),
            read_only,
            sectors: md.len() / SECTOR_SIZE,
        })
    }
}

/// State shared between the device and the control socket.
pub struct Slot {
    pub id: String,
    /// Declared read-only: every file put here is opened read-only.
    pub read_only: bool,
    pub backing: Option<Backing>,
}

/// A shared drive slot.
pub type SharedSlot = Arc<Mutex<Slot>>;

/// The virtio-blk device.
pub struct Block {
    slot: SharedSlot,
    queues: Vec<Queue>,
    mem: Option<Arc<GuestMemoryMmap>>,
    interrupt: Option<Interrupt>,
    bad_requests: u64,
}

impl Block {
    /// A block device on `slot`.
    pub fn new(slot: SharedSlot) -> Self {
        Block {
            slot,
            queues: Vec::new(),
            mem: None,
            interrupt: None,
            bad_requests: 0,
        }
    }

    fn process_queue(&mut self) {
        let (Some(mem), Some(q)) = (self.mem.clone(), self.queues.get_mut(0)) else {
            return;
        };
        let mem: &GuestMemoryMmap = &mem;
        let mut used_any = false;
        let mut errors = Vec::new();
        loop {
            let chain = match q.iter(mem) {
                Ok(mut it) => it.next(),
                Err(e) => {
                    errors.push(format!("queue: {e:?}"));
                    break;
                }
            };
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            let len = {
                let mut guard = match self.slot.lock() {
                    Ok(s) => s,
                    Err(_) => return,
                };
                let slot = &mut *guard;
                match request::handle(mem, chain, &slot.id, slot.backing.as_mut()) {
                    Ok(n) => n,
                    Err(RequestError::Malformed(m, n)) => {
                        errors.push(m);
                        n
                    }
                }
            };
            if let Err(e) = q.add_used(mem, head, len) {
                errors.push(format!("add_used: {e:?}"));
                break;
            }
            used_any = true;
        }
        for e in errors {
            if should_log(&mut self.bad_requests) {
                tracing::warn!(count = self.bad_requests, "virtio-blk: bad request: {e}");
            }
        }
        if used_any {
            let notify = q.needs_notification(mem).unwrap_or(true);
            if notify {
                if let Some(i) = &self.interrupt {
                    i.signal_used();
                }
            }
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        let ro = self.slot.lock().map(|s| s.read_only).unwrap_or(true);
        VIRTIO_BLK_F_FLUSH | if ro { VIRTIO_BLK_F_RO } else { 0 }
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let sectors = self
            .slot
            .lock()
            .ok()
            .and_then(|s| s.backing.as_ref().map(|b| b.sectors))
            .unwrap_or(0);
        let mut cfg = [0u8; 8];
        cfg.copy_from_slice(&sectors.to_le_bytes());
        read_config_bytes(&cfg, offset, data);
    }

    fn activate(
        &mut self,
        mem: Arc<GuestMemoryMmap>,
        queues: Vec<Queue>,
        _acked_features: u64,
        interrupt: Interrupt,
    ) -> Result<(), String> {
        if queues.len() != QUEUE_SIZES.len() {
            return Err("wrong number of queues".into());
        }
        self.queues = queues;
        self.mem = Some(mem);
        self.interrupt = Some(interrupt);
        Ok(())
    }

    fn queue_notify(&mut self, index: u32) {
        if index == 0 {
            self.process_queue();
        }
    }

    fn reset(&mut self) {
        self.queues.clear();
        self.mem = None;
        self.interrupt = None;
    }
}
