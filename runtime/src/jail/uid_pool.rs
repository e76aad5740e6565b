//! Per-sandbox uids from a configured range.
//!
//! A sandbox holds an exclusive `flock` on `<dir>/<uid>` for as long as it
//! runs, so sandboxes of different runtime processes (one shim per pod) never
//! share a uid, and a crashed runtime's uids come free with its file locks.
//! The lock file is removed on release; a taker re-checks after locking that
//! the path still names the file it locked, so removal cannot hand one uid to
//! two sandboxes.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::JailError;

/// The uid every jailed process shares when the pool is configured empty.
pub const NOBODY: u32 = 65534;

/// A uid held for one sandbox.
#[derive(Debug)]
pub struct UidLease {
    pub uid: u32,
    lock: Option<(PathBuf, Flock<File>)>,
}

impl UidLease {
    /// The shared fallback uid (no lock: everyone may use it).
    pub fn nobody() -> UidLease {
        UidLease {
            uid: NOBODY,
            lock: None,
        }
    }
}

impl Drop for UidLease {
    fn drop(&mut self) {
        if let Some((path, lock)) = self.lock.take() {
            // Unlink while still holding the lock, then unlock by closing.
            let _ = std::fs::remove_file(&path);
            drop(lock);
        }
    }
}

/// Takes a free uid in `base .. base + count`, trying from `start` (any
/// number: it spreads concurrent takers) onwards.
pub fn take(dir: &Path, base: u32, count: u32, start: u64) -> Result<UidLease, JailError> {
    if count == 0 {
        return Ok(UidLease::nobody());
    }
    std::fs::create_dir_all(dir).map_err(|source| JailError::Io {
        what: "creating the uid lock directory",
        path: dir.to_path_buf(),
        source,
    })?;
    for i in 0..u64::from(count) {
        let uid = base + ((start + i) % u64::from(count)) as u32;
        if let Some(lease) = try_take(dir, uid)? {
            return Ok(lease);
        }
    }
    Err(JailError::UidsExhausted { base, count })
}

/// `uid` if no sandbox holds it now (`dir` must exist).
pub fn try_take(dir: &Path, uid: u32) -> Result<Option<UidLease>, JailError> {
    let path = dir.join(uid.to_string());
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| JailError::Io {
            what: "opening the uid lock",
            path: path.clone(),
            source,
        })?;
    let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
        return Ok(None);
    };
    // The holder before us may have unlinked the file we locked.
    let same = match (lock.metadata(), std::fs::metadata(&path)) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => false,
    };
    Ok(same.then_some(UidLease {
        uid,
        lock: Some((path, lock)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_leases_get_distinct_uids_and_release_frees_them() {
        let d = tempfile::tempdir().unwrap();
        let a = take(d.path(), 1000, 2, 0).unwrap();
        let b = take(d.path(), 1000, 2, 0).unwrap();
        assert_eq!((a.uid, b.uid), (1000, 1001));
        let err = take(d.path(), 1000, 2, 0).unwrap_err();
        assert!(matches!(err, JailError::UidsExhausted { .. }), "{err}");
        drop(a);
        assert!(!d.path().join("1000").exists(), "lock file removed");
        let c = take(d.path(), 1000, 2, 0).unwrap();
        assert_eq!(c.uid, 1000);
    }

    #[test]
    fn start_spreads_takers_and_wraps() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(take(d.path(), 50, 4, 6).unwrap().uid, 52);
        let held = take(d.path(), 50, 4, 3).unwrap();
        assert_eq!(held.uid, 53);
        assert_eq!(take(d.path(), 50, 4, 3).unwrap().uid, 50);
    }

    #[test]
    fn an_empty_pool_is_the_shared_nobody_uid() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(take(d.path(), 1000, 0, 0).unwrap().uid, NOBODY);
        assert!(std::fs::read_dir(d.path()).unwrap().next().is_none());
    }
}
