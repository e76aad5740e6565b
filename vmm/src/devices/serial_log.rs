//! The serial log file, capped: the guest decides how much it prints, so
//! the file keeps only the newest output once it reaches its limit.
//!
//! When a write would take the file past `max` bytes, the file is cut in
//! place to a marker line followed by the newest output, at most `max / 2`
//! bytes in all, and writing goes on after it. The file therefore never
//! holds more than `max` bytes and always holds at least the newest
//! `max / 2` bytes (less the marker) that the guest wrote.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// First line of a file whose older output was dropped.
pub const MARKER: &[u8] = b"[ampoule-vmm: older serial output dropped]\n";
/// Smallest accepted limit.
pub const MIN_MAX_BYTES: u64 = 4096;

/// A log file of at most `max` bytes keeping the newest output.
pub struct CappedLog {
    file: File,
    len: u64,
    max: u64,
}

impl CappedLog {
    /// Creates (or truncates) `path`. `max` below [`MIN_MAX_BYTES`] is
    /// raised to it.
    pub fn create(path: &Path, max: u64) -> std::io::Result<CappedLog> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(true)
            .open(path)?;
        Ok(CappedLog {
            file,
            len: 0,
            max: max.max(MIN_MAX_BYTES),
        })
    }

    /// Bytes in the file.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written (or kept).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Largest part of one write that is kept.
    fn room(&self) -> u64 {
        self.max / 2 - MARKER.len() as u64
    }

    /// Cuts the file to the marker and the newest bytes, leaving room for
    /// `incoming` more within `max / 2`.
    fn compact(&mut self, incoming: u64) -> std::io::Result<()> {
        let tail = self.room().saturating_sub(incoming).min(self.len);
        let mut kept = vec![0u8; tail as usize];
        self.file.read_exact_at(&mut kept, self.len - tail)?;
        self.file.write_all_at(MARKER, 0)?;
        self.file.write_all_at(&kept, MARKER.len() as u64)?;
        self.len = MARKER.len() as u64 + tail;
        self.file.set_len(self.len)
    }
}

impl Write for CappedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut data = buf;
        if self.len + data.len() as u64 > self.max {
            let room = usize::try_from(self.room()).unwrap_or(usize::MAX);
            data = &buf[buf.len().saturating_sub(room)..];
            self.compact(data.len() as u64)?;
        }
        let n = data.len() as u64;
        self.file.write_all_at(data, self.len)?;
        self.len += n;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("ampoule-serial-ut-{}-{name}", std::process::id()))
    }

    #[test]
    fn output_below_the_limit_is_kept_whole() {
        let p = temp("small");
        let mut l = CappedLog::create(&p, 8192).unwrap();
        for i in 0..100u32 {
            writeln!(l, "line {i}").unwrap();
        }
        let want: String = (0..100u32).map(|i| format!("line {i}\n")).collect();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), want);
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn a_flood_of_single_bytes_stays_under_the_limit_and_keeps_the_newest() {
        let p = temp("flood");
        let max = 8192u64;
        let mut l = CappedLog::create(&p, max).unwrap();
        let mut written = Vec::new();
        for i in 0..(10 * max) {
            let b = [b'a' + (i % 26) as u8];
            l.write_all(&b).unwrap();
            written.push(b[0]);
            assert!(l.len() <= max);
        }
        let file = std::fs::read(&p).unwrap();
        assert!(file.len() as u64 <= max, "{} bytes", file.len());
        assert!(file.starts_with(MARKER));
        let kept = &file[MARKER.len()..];
        assert!(kept.len() as u64 >= max / 2 - MARKER.len() as u64 - 1);
        assert!(
            written.ends_with(kept),
            "the file must hold the newest output"
        );
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn a_write_larger_than_the_limit_keeps_its_end() {
        let p = temp("big");
        let max = 4096u64;
        let mut l = CappedLog::create(&p, max).unwrap();
        l.write_all(b"start\n").unwrap();
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(l.write(&big).unwrap(), big.len());
        let file = std::fs::read(&p).unwrap();
        assert!(file.len() as u64 <= max);
        assert!(file.starts_with(MARKER));
        assert!(big.ends_with(&file[MARKER.len()..]));
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn a_limit_below_the_minimum_is_raised() {
        let p = temp("min");
        let mut l = CappedLog::create(&p, 1).unwrap();
        l.write_all(&[b'x'; 3000]).unwrap();
        assert_eq!(std::fs::read(&p).unwrap().len(), 3000);
        let _ = std::fs::remove_file(&p);
    }
}
