//! OCI CLI state: one directory per container under `--root`, with
//! `state.json` written atomically (temporary file + rename) under a lock.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("container {0:?} does not exist")]
    NotFound(String),
    #[error("container {0:?} already exists")]
    Exists(String),
    #[error("invalid container id {0:?}: use 1-128 characters from [A-Za-z0-9_.-], not starting with '.'")]
    BadId(String),
    #[error("state of container {id}: {path}: {message}")]
    Io {
        id: String,
        path: PathBuf,
        message: String,
    },
}

/// OCI status, plus the transient `creating`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

/// The lifecycle's rules, one place for the OCI CLI and the shim (as
/// youki's status carries its own): which operation a status allows.
impl Status {
    /// `start`: only a created container.
    pub fn can_start(self) -> bool {
        self == Status::Created
    }

    /// `kill`: a container whose process exists.
    pub fn can_kill(self) -> bool {
        matches!(self, Status::Created | Status::Running | Status::Paused)
    }

    /// `delete` without force: one whose process is not running.
    pub fn can_delete(self) -> bool {
        matches!(self, Status::Creating | Status::Created | Status::Stopped)
    }

    /// `pause`.
    pub fn can_pause(self) -> bool {
        self == Status::Running
    }

    /// `resume`.
    pub fn can_resume(self) -> bool {
        self == Status::Paused
    }

    /// `exec`: a new process only in a running container.
    pub fn can_exec(self) -> bool {
        self == Status::Running
    }

    /// `ps`: a container whose process exists.
    pub fn can_list_processes(self) -> bool {
        self.can_kill()
    }

    /// The word used in `state` output.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
}

/// What we record about a container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerState {
    pub id: String,
    pub status: Status,
    /// Absolute bundle path.
    pub bundle: PathBuf,
    /// Rootfs path as given in config.json, resolved against the bundle.
    pub rootfs: PathBuf,
    pub annotations: HashMap<String, String>,
    /// RFC 3339 creation time.
    pub created: String,
    /// The host process that holds the sandbox (the `--pid-file` pid).
    pub monitor_pid: u32,
    /// Its start time (field 22 of /proc/PID/stat), to detect pid reuse.
    pub monitor_start_time: u64,
    /// The hybrid vsock socket.
    pub vsock_uds: PathBuf,
    /// The sandbox's host resources, for `delete` (also after the monitor
    /// died): the pod service's record.
    pub sandbox: crate::pod::record::SandboxRecord,
    /// pid of the init process in the guest.
    pub guest_pid: u32,
    /// Exit status (128+N for a signal) once stopped.
    pub exit_status: Option<i32>,
    /// Uid of the creator.
    pub owner: u32,
}

/// `runc state` output.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OciState {
    pub oci_version: String,
    pub id: String,
    pub pid: u32,
    pub status: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    pub owner: String,
    pub annotations: HashMap<String, String>,
}

impl ContainerState {
    /// The `state` command's view.
    pub fn to_oci(&self, status: Status) -> OciState {
        OciState {
            oci_version: "1.0.2".into(),
            id: self.id.clone(),
            pid: if status == Status::Stopped {
                0
            } else {
                self.monitor_pid
            },
            status: status.as_str().into(),
            bundle: self.bundle.clone(),
            rootfs: self.rootfs.clone(),
            created: self.created.clone(),
            owner: if self.owner == 0 {
                "root".into()
            } else {
                self.owner.to_string()
            },
            annotations: self.annotations.clone(),
        }
    }
}

/// Checks a container id: the agent's rule ([`ampoule_agent_api::valid_id`]), so an id
/// the guest would refuse is refused before a VM boots.
pub fn validate_id(id: &str) -> Result<(), StateError> {
    // The agent's rule (checked here before anything boots), and no
    // leading '.', which would hide the container's state directory.
    if ampoule_agent_api::valid_id(id) && !id.starts_with('.') {
        Ok(())
    } else {
        Err(StateError::BadId(id.to_string()))
    }
}

/// Start time of a process (clock ticks since boot), if it exists and is
/// not a zombie.
pub fn process_start_time(pid: u32) -> Option<u64> {
    if pid == 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); start time is field 22.
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// The state store rooted at `--root`.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// An exclusive lock on one container's state.
pub struct StateLock {
    _lock: nix::fcntl::Flock<File>,
}

impl Store {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Store { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Directory of container `id`.
    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    fn io(&self, id: &str, path: &Path, e: impl std::fmt::Display) -> StateError {
        StateError::Io {
            id: id.into(),
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    }

    /// Creates the container's directory; fails if it exists.
    pub fn create_dir(&self, id: &str) -> Result<PathBuf, StateError> {
        validate_id(id)?;
        std::fs::create_dir_all(&self.root).map_err(|e| self.io(id, &self.root, e))?;
        let dir = self.dir(id);
        match std::fs::create_dir(&dir) {
            Ok(()) => Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(StateError::Exists(id.into()))
            }
            Err(e) => Err(self.io(id, &dir, e)),
        }
    }

    /// Locks the container's state (blocking).
    pub fn lock(&self, id: &str) -> Result<StateLock, StateError> {
        validate_id(id)?;
        let dir = self.dir(id);
        if !dir.is_dir() {
            return Err(StateError::NotFound(id.into()));
        }
        let path = dir.join("lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| self.io(id, &path, e))?;
        let mut f = f;
        loop {
            match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive) {
                Ok(l) => return Ok(StateLock { _lock: l }),
                Err((back, nix::errno::Errno::EINTR)) => f = back,
                Err((_, e)) => return Err(self.io(id, &path, e)),
            }
        }
    }

    /// Reads `state.json`.
    pub fn load(&self, id: &str) -> Result<ContainerState, StateError> {
        validate_id(id)?;
        let path = self.dir(id).join("state.json");
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StateError::NotFound(id.into()))
            }
            Err(e) => return Err(self.io(id, &path, e)),
        };
        serde_json::from_slice(&text).map_err(|e| self.io(id, &path, e))
    }

    /// Writes `state.json` atomically.
    pub fn save(&self, state: &ContainerState) -> Result<(), StateError> {
        let id = &state.id;
        let dir = self.dir(id);
        let tmp = dir.join(".state.json.tmp");
        let path = dir.join("state.json");
        let data = serde_json::to_vec_pretty(state).map_err(|e| self.io(id, &path, e))?;
        let mut f = File::create(&tmp).map_err(|e| self.io(id, &tmp, e))?;
        f.write_all(&data).map_err(|e| self.io(id, &tmp, e))?;
        f.sync_all().map_err(|e| self.io(id, &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| self.io(id, &path, e))?;
        Ok(())
    }

    /// Load, change, save under the lock.
    pub fn update(
        &self,
        id: &str,
        f: impl FnOnce(&mut ContainerState),
    ) -> Result<ContainerState, StateError> {
        let _l = self.lock(id)?;
        let mut s = self.load(id)?;
        f(&mut s);
        self.save(&s)?;
        Ok(s)
    }

    /// Removes the container's directory.
    pub fn remove(&self, id: &str) -> Result<(), StateError> {
        validate_id(id)?;
        let dir = self.dir(id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io(id, &dir, e)),
        }
    }

    /// Ids of every container with a state directory.
    pub fn list(&self) -> Vec<String> {
        let mut ids: Vec<String> = std::fs::read_dir(&self.root)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.path().join("state.json").exists())
                    .filter_map(|e| e.file_name().to_str().map(String::from))
                    .filter(|id| validate_id(id).is_ok())
                    .collect()
            })
            .unwrap_or_default();
        ids.sort();
        ids
    }
}

/// The status to report: a container whose monitor (and so its VM) is gone
/// is stopped whatever the file says.
pub fn effective_status(s: &ContainerState) -> Status {
    match s.status {
        Status::Stopped => Status::Stopped,
        other => {
            if process_start_time(s.monitor_pid) == Some(s.monitor_start_time) {
                other
            } else {
                Status::Stopped
            }
        }
    }
}

/// RFC 3339 UTC time of now.
pub fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = if month <= 2 { y + 1 } else { y };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(id: &str) -> ContainerState {
        ContainerState {
            id: id.into(),
            status: Status::Created,
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            annotations: HashMap::new(),
            created: now_rfc3339(),
            monitor_pid: std::process::id(),
            monitor_start_time: process_start_time(std::process::id()).unwrap_or(0),
            vsock_uds: "/run/x/vsock.sock".into(),
            sandbox: crate::pod::record::SandboxRecord {
                sandbox_dir: "/run/x".into(),
                ..Default::default()
            },
            guest_pid: 1,
            exit_status: None,
            owner: 0,
        }
    }

    #[test]
    fn each_status_allows_only_its_operations() {
        use Status::*;
        let all = [Creating, Created, Running, Paused, Stopped];
        let allowed = |f: fn(Status) -> bool| -> Vec<Status> {
            all.iter().copied().filter(|s| f(*s)).collect()
        };
        assert_eq!(allowed(Status::can_start), [Created]);
        assert_eq!(allowed(Status::can_kill), [Created, Running, Paused]);
        assert_eq!(allowed(Status::can_delete), [Creating, Created, Stopped]);
        assert_eq!(allowed(Status::can_pause), [Running]);
        assert_eq!(allowed(Status::can_resume), [Paused]);
        assert_eq!(allowed(Status::can_exec), [Running]);
        assert_eq!(
            allowed(Status::can_list_processes),
            [Created, Running, Paused]
        );
    }

    #[test]
    fn save_load_update_list_remove() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::new(dir.path().join("root"));
        store.create_dir("c1").expect("create");
        assert!(matches!(store.create_dir("c1"), Err(StateError::Exists(_))));
        store.save(&sample("c1")).expect("save");
        assert_eq!(store.load("c1").expect("load"), sample_with_time(&store));
        let s = store
            .update("c1", |s| s.status = Status::Running)
            .expect("update");
        assert_eq!(s.status, Status::Running);
        assert_eq!(
            effective_status(&s),
            Status::Running,
            "our own pid is alive"
        );
        assert_eq!(store.list(), vec!["c1".to_string()]);
        store.remove("c1").expect("remove");
        assert!(matches!(store.load("c1"), Err(StateError::NotFound(_))));
        assert!(store.list().is_empty());
    }

    fn sample_with_time(store: &Store) -> ContainerState {
        store.load("c1").expect("load")
    }

    #[test]
    fn dead_monitor_means_stopped() {
        let mut s = sample("c");
        s.monitor_start_time += 1; // a different process with our pid
        assert_eq!(effective_status(&s), Status::Stopped);
        s.monitor_pid = 0;
        assert_eq!(effective_status(&s), Status::Stopped);
    }

    #[test]
    fn ids() {
        assert!(validate_id("abc-DEF_1.2-3").is_ok());
        for bad in ["", ".x", "a/b", "a b", "../x", "a+b"] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn oci_state_shape() {
        let v = serde_json::to_value(sample("c").to_oci(Status::Created)).expect("json");
        for k in [
            "ociVersion",
            "id",
            "pid",
            "status",
            "bundle",
            "rootfs",
            "created",
            "owner",
            "annotations",
        ] {
            assert!(v.get(k).is_some(), "{k}");
        }
        assert_eq!(v["status"], "created");
        assert_eq!(sample("c").to_oci(Status::Stopped).pid, 0);
    }

    #[test]
    fn rfc3339_shape() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 30, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'), "{t}");
    }
}
