//! Parsing and serving one virtio-blk request from a descriptor chain.

use std::io::{Read, Write};
use std::os::unix::fs::FileExt;

use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::{GuestMemory, GuestMemoryMmap};

use super::Backing;

/// Bytes per sector.
pub const SECTOR_SIZE: u64 = 512;
/// Request types.
pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
/// Status values.
pub const VIRTIO_BLK_S_OK: u8 = 0;
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;
const HEADER_SIZE: usize = 16;
const CHUNK: usize = 64 * 1024;
/// Size of the GET_ID answer (VIRTIO_BLK_ID_BYTES).
const ID_BYTES: usize = 20;

/// A request that could not even be answered with a status byte, with the
/// used length to report.
#[derive(Debug)]
pub enum RequestError {
    Malformed(String, u32),
}

/// The parsed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub type_: u32,
    pub sector: u64,
}

/// Parses the 16-byte request header.
pub fn parse_header(bytes: &[u8; HEADER_SIZE]) -> Header {
    let mut t = [0u8; 4];
    t.copy_from_slice(&bytes[0..4]);
    let mut s = [0u8; 8];
    s.copy_from_slice(&bytes[8..16]);
    Header {
        type_: u32::from_le_bytes(t),
        sector: u64::from_le_bytes(s),
    }
}

/// Byte offset of `len` bytes at `sector`, if inside a disk of `sectors`.
pub fn checked_range(sector: u64, len: u64, sectors: u64) -> Option<u64> {
    let start = sector.checked_mul(SECTOR_SIZE)?;
    let end = start.checked_add(len)?;
    (end <= sectors.checked_mul(SECTOR_SIZE)?).then_some(start)
}

/// Serves the request in `chain` for the drive named `id`; returns the
/// number of bytes written to the guest (data plus status byte).
pub fn handle<M>(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<M>,
    id: &str,
    backing: Option<&mut Backing>,
) -> Result<u32, RequestError>
where
    M: std::ops::Deref + Clone,
    M::Target: GuestMemory + Sized,
{
    let bad = |m: &str| RequestError::Malformed(m.to_string(), 0);
    let mut reader: Reader =
        Reader::new(mem, chain.clone()).map_err(|e| bad(&format!("descriptors: {e:?}")))?;
    let mut writer: Writer =
        Writer::new(mem, chain).map_err(|e| bad(&format!("descriptors: {e:?}")))?;
    let mut hdr = [0u8; HEADER_SIZE];
    let header_ok = reader.available_bytes() >= HEADER_SIZE && reader.read_exact(&mut hdr).is_ok();
    let avail = writer.available_bytes();
    if avail == 0 {
        return Err(bad("no writable status descriptor"));
    }
    let mut status_w = writer
        .split_at(avail - 1)
        .map_err(|e| bad(&format!("status descriptor: {e:?}")))?;
    let mut data_w = writer;
    if !header_ok {
        let _ = status_w.write_all(&[VIRTIO_BLK_S_IOERR]);
        return Err(RequestError::Malformed("short request header".into(), 1));
    }
    let h = parse_header(&hdr);
    let (status, written) = serve(h, &mut reader, &mut data_w, id, backing);
    status_w
        .write_all(&[status])
        .map_err(|e| bad(&format!("status write: {e}")))?;
    Ok(u32::try_from(written).unwrap_or(u32::MAX).saturating_add(1))
}

fn serve(
    h: Header,
    reader: &mut Reader,
    data_w: &mut Writer,
    id: &str,
    backing: Option<&mut Backing>,
) -> (u8, usize) {
    match h.type_ {
        VIRTIO_BLK_T_IN => {
            let Some(b) = backing else {
                return (VIRTIO_BLK_S_IOERR, 0);
            };
            let len = data_w.available_bytes();
            let Some(mut off) = checked_range(h.sector, len as u64, b.sectors) else {
                return (VIRTIO_BLK_S_IOERR, 0);
            };
            let mut buf = vec![0u8; CHUNK.min(len)];
            let mut done = 0usize;
            while done < len {
                let n = CHUNK.min(len - done);
                if b.file.read_exact_at(&mut buf[..n], off).is_err()
                    || data_w.write_all(&buf[..n]).is_err()
                {
                    return (VIRTIO_BLK_S_IOERR, done);
                }
                done += n;
                off += n as u64;
            }
            (VIRTIO_BLK_S_OK, done)
        }
        VIRTIO_BLK_T_OUT => {
            let Some(b) = backing else {
                return (VIRTIO_BLK_S_IOERR, 0);
            };
            if b.read_only {
                return (VIRTIO_BLK_S_IOERR, 0);
            }
            let len = reader.available_bytes();
            let Some(mut off) = checked_range(h.sector, len as u64, b.sectors) else {
                return (VIRTIO_BLK_S_IOERR, 0);
            };
            let mut buf = vec![0u8; CHUNK.min(len)];
            let mut done = 0usize;
            while done < len {
                let n = CHUNK.min(len - done);
                if reader.read_exact(&mut buf[..n]).is_err()
                    || b.file.write_all_at(&buf[..n], off).is_err()
                {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                done += n;
                off += n as u64;
            }
            (VIRTIO_BLK_S_OK, 0)
        }
        VIRTIO_BLK_T_FLUSH => match backing {
            Some(b) if !b.read_only => match b.file.sync_data() {
                Ok(()) => (VIRTIO_BLK_S_OK, 0),
                Err(_) => (VIRTIO_BLK_S_IOERR, 0),
            },
            Some(_) => (VIRTIO_BLK_S_OK, 0),
            None => (VIRTIO_BLK_S_IOERR, 0),
        },
        VIRTIO_BLK_T_GET_ID => {
            // The drive's configured id: nothing about the host's files.
            let mut bytes = [0u8; ID_BYTES];
            let n = id.len().min(ID_BYTES);
            bytes[..n].copy_from_slice(&id.as_bytes()[..n]);
            let n = data_w.available_bytes().min(ID_BYTES);
            match data_w.write_all(&bytes[..n]) {
                Ok(()) => (VIRTIO_BLK_S_OK, n),
                Err(_) => (VIRTIO_BLK_S_IOERR, 0),
            }
        }
        _ => (VIRTIO_BLK_S_UNSUPP, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::mock_queue::{d, mem, queue, F_NEXT, F_WRITE};
    use virtio_queue::QueueOwnedT;
    use vm_memory::{Bytes, GuestAddress};

    fn backing(sectors: u64, read_only: bool) -> (Backing, PathBuf) {
        let p = std::env::temp_dir().join(format!(
            "ampoule-blk-ut-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        let data: Vec<u8> = (0..sectors * SECTOR_SIZE)
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&p, data).unwrap();
        (Backing::open(&p, read_only).unwrap(), p)
    }

    use std::path::PathBuf;
    fn rand_suffix() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::SeqCst)
    }

    fn header(type_: u32, sector: u64) -> [u8; 16] {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&type_.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        h
    }

    /// Builds a chain from (addr, len, flags) descriptors and serves it.
    fn run(
        m: &GuestMemoryMmap,
        descs: &[(u64, u32, u16)],
        b: Option<&mut Backing>,
    ) -> Result<u32, RequestError> {
        let descs: Vec<_> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, flags))| {
                let next = if flags & F_NEXT != 0 { i as u16 + 1 } else { 0 };
                d(addr, len, flags, next)
            })
            .collect();
        let mut queue = queue(m, 16, &descs);
        let chain = queue.iter(m).unwrap().next().unwrap();
        handle(m, chain, "slot-a", b)
    }

    #[test]
    fn read_request_returns_disk_bytes_and_ok_status() {
        let m = mem();
        let (mut b, p) = backing(8, false);
        m.write_slice(&header(VIRTIO_BLK_T_IN, 2), GuestAddress(0x8000))
            .unwrap();
        let n = run(
            &m,
            &[
                (0x8000, 16, F_NEXT),
                (0x9000, 512, F_NEXT | F_WRITE),
                (0xa000, 1, F_WRITE),
            ],
            Some(&mut b),
        )
        .unwrap();
        assert_eq!(n, 513);
        let mut got = [0u8; 512];
        m.read_slice(&mut got, GuestAddress(0x9000)).unwrap();
        assert_eq!(got[0], ((2 * 512) % 251) as u8);
        assert_eq!(
            m.read_obj::<u8>(GuestAddress(0xa000)).unwrap(),
            VIRTIO_BLK_S_OK
        );
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn read_past_the_end_or_write_to_read_only_fails_with_ioerr() {
        let m = mem();
        let (mut b, p) = backing(4, true);
        m.write_slice(&header(VIRTIO_BLK_T_IN, 4), GuestAddress(0x8000))
            .unwrap();
        run(
            &m,
            &[
                (0x8000, 16, F_NEXT),
                (0x9000, 512, F_NEXT | F_WRITE),
                (0xa000, 1, F_WRITE),
            ],
            Some(&mut b),
        )
        .unwrap();
        assert_eq!(
            m.read_obj::<u8>(GuestAddress(0xa000)).unwrap(),
            VIRTIO_BLK_S_IOERR
        );
        m.write_slice(
            &header(VIRTIO_BLK_T_IN, u64::MAX / 256),
            GuestAddress(0x8000),
        )
        .unwrap();
        run(
            &m,
            &[
                (0x8000, 16, F_NEXT),
                (0x9000, 512, F_NEXT | F_WRITE),
                (0xa000, 1, F_WRITE),
            ],
            Some(&mut b),
        )
        .unwrap();
        assert_eq!(
            m.read_obj::<u8>(GuestAddress(0xa000)).unwrap(),
            VIRTIO_BLK_S_IOERR
        );
        m.write_slice(&header(VIRTIO_BLK_T_OUT, 0), GuestAddress(0x8000))
            .unwrap();
        run(
            &m,
            &[
                (0x8000, 16, F_NEXT),
                (0x9000, 512, F_NEXT),
                (0xa000, 1, F_WRITE),
            ],
            Some(&mut b),
        )
        .unwrap();
        assert_eq!(
            m.read_obj::<u8>(GuestAddress(0xa000)).unwrap(),
            VIRTIO_BLK_S_IOERR
        );
        let disk = std::fs::read(&p).unwrap();
        assert_eq!(disk[0], 0, "read-only disk changed");
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn descriptors_outside_guest_memory_or_without_status_are_refused() {
        let m = mem();
        let (mut b, p) = backing(4, false);
        m.write_slice(&header(VIRTIO_BLK_T_IN, 0), GuestAddress(0x8000))
            .unwrap();
        // Data descriptor beyond the end of guest memory.
        assert!(run(
            &m,
            &[
                (0x8000, 16, F_NEXT),
                (0xff_0000_0000, 512, F_NEXT | F_WRITE),
                (0xa000, 1, F_WRITE)
            ],
            Some(&mut b)
        )
        .is_err());
        // No writable descriptor at all.
        assert!(run(&m, &[(0x8000, 16, 0)], Some(&mut b)).is_err());
        // Short header: status IOERR.
        assert!(run(
            &m,
            &[(0x8000, 8, F_NEXT), (0xa000, 1, F_WRITE)],
            Some(&mut b)
        )
        .is_err());
        assert_eq!(
            m.read_obj::<u8>(GuestAddress(0xa000)).unwrap(),
            VIRTIO_BLK_S_IOERR
        );
        // Unknown type: UNSUPP.
        m.write_slice(&header(77, 0), GuestAddress(0x8000)).unwrap();
        run(
            &m,
            &[(0x8000, 16, F_NEXT), (0xa000, 1, F_WRITE)],
            Some(&mut b),
        )
        .unwrap();
        assert_eq!(
            m.read_obj::<u8>(GuestAddress(0xa000)).unwrap(),
            VIRTIO_BLK_S_UNSUPP
        );
        // Empty slot: IOERR.
        m.write_slice(&header(VIRTIO_BLK_T_IN, 0), GuestAddress(0x8000))
            .unwrap();
        run(
            &m,
            &[
                (0x8000, 16, F_NEXT),
                (0x9000, 512, F_NEXT | F_WRITE),
                (0xa000, 1, F_WRITE),
            ],
            None,
        )
        .unwrap();
        assert_eq!(
            m.read_obj::<u8>(GuestAddress(0xa000)).unwrap(),
            VIRTIO_BLK_S_IOERR
        );
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn get_id_answers_the_drive_id_and_not_the_backing_file_name() {
        let m = mem();
        let (mut b, p) = backing(4, false);
        m.write_slice(&header(VIRTIO_BLK_T_GET_ID, 0), GuestAddress(0x8000))
            .unwrap();
        m.write_slice(&[0xffu8; 20], GuestAddress(0x9000)).unwrap();
        let n = run(
            &m,
            &[
                (0x8000, 16, F_NEXT),
                (0x9000, 20, F_NEXT | F_WRITE),
                (0xa000, 1, F_WRITE),
            ],
            Some(&mut b),
        )
        .unwrap();
        assert_eq!(n, 21);
        let mut got = [0u8; 20];
        m.read_slice(&mut got, GuestAddress(0x9000)).unwrap();
        let mut want = [0u8; 20];
        want[..6].copy_from_slice(b"slot-a");
        assert_eq!(got, want);
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        assert!(!String::from_utf8_lossy(&got).contains(&name[..8]));
        assert_eq!(
            m.read_obj::<u8>(GuestAddress(0xa000)).unwrap(),
            VIRTIO_BLK_S_OK
        );
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn sector_range_check_handles_overflow() {
        assert_eq!(checked_range(0, 512, 1), Some(0));
        assert_eq!(checked_range(1, 512, 1), None);
        assert_eq!(checked_range(u64::MAX, 512, 1), None);
        assert_eq!(checked_range(0, u64::MAX, u64::MAX), None);
    }
}
