//! Container processes: the plan of one OCI `process`, the messages between
//! the agent and its helper (`ampoule-agent __container-init`), and the
//! agent's side of starting a helper.
//!
//! The helper is the agent binary started fresh (single-threaded), with the
//! process's stdio as fds 0-2 and a SOCK_SEQPACKET socket as fd 3:
//!   agent -> helper : Config (JSON)
//!   helper -> agent : Pid { pid }  (the process, created with CLONE_PARENT
//!                     so the agent is its parent and reaps it)
//!   process -> agent: Ready (+ the pty master by SCM_RIGHTS with a
//!                     terminal) or Error { message }
//!   agent -> process: Start; the process execs. EOF on the socket (it is
//!                     close-on-exec) means the exec worked; Error means not.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::socket::{
    recvmsg, sendmsg, setsockopt, socketpair, sockopt, AddressFamily, ControlMessage,
    ControlMessageOwned, MsgFlags, SockFlag, SockType,
};
use nix::sys::time::TimeVal;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::caps::{CapSets, CapsError};
use super::mounts::{DeviceNode, MountStep};
use crate::reaper::{Exit, Reaper};

/// fd number of the sync socket in the helper.
pub const SYNC_FD: RawFd = 3;
/// Largest message on the sync socket.
pub const MAX_MSG: usize = 256 * 1024;
/// The default PATH when the process has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("process.args is empty")]
    NoArgs,
    #[error("unknown rlimit {0:?}")]
    UnknownRlimit(String),
    #[error(transparent)]
    Caps(#[from] CapsError),
    #[error("process is not valid JSON: {0}")]
    Json(String),
    #[error("helper: {0}")]
    Helper(String),
    #[error("{what}: {source}")]
    Sys {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

fn sys(what: &'static str) -> impl FnOnce(nix::Error) -> ProcessError {
    move |e| ProcessError::Sys {
        what,
        source: e.into(),
    }
}

/// An OCI process, checked and reduced to what the helper applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessPlan {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub umask: Option<u32>,
    /// (resource, soft, hard)
    pub rlimits: Vec<(i32, u64, u64)>,
    /// None: leave the capabilities as they are (all, for root).
    pub caps: Option<CapSets>,
    pub no_new_privileges: bool,
    pub oom_score_adj: Option<i32>,
    pub terminal: bool,
    /// (rows, cols)
    pub console_size: Option<(u16, u16)>,
}

fn rlimit_resource(name: &str) -> Option<i32> {
    Some(match name {
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        _ => return None,
    } as i32)
}

/// Checks an OCI process and turns it into a plan.
pub fn plan(p: &oci_spec::runtime::Process) -> Result<ProcessPlan, ProcessError> {
    let args = p.args().clone().unwrap_or_default();
    if args.is_empty() || args[0].is_empty() {
        return Err(ProcessError::NoArgs);
    }
    let mut rlimits = Vec::new();
    for r in p.rlimits().iter().flatten() {
        let name = serde_json::to_value(r.typ())
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let res = rlimit_resource(&name).ok_or(ProcessError::UnknownRlimit(name))?;
        rlimits.push((res, r.soft(), r.hard()));
    }
    let caps = p
        .capabilities()
        .as_ref()
        .map(CapSets::from_oci)
        .transpose()?;
    let user = p.user();
    let cwd = if p.cwd().as_os_str().is_empty() {
        PathBuf::from("/")
    } else {
        p.cwd().clone()
    };
    Ok(ProcessPlan {
        args,
        env: p.env().clone().unwrap_or_default(),
        cwd,
        uid: user.uid(),
        gid: user.gid(),
        additional_gids: user.additional_gids().clone().unwrap_or_default(),
        umask: user.umask(),
        rlimits,
        caps,
        no_new_privileges: p.no_new_privileges().unwrap_or(false),
        oom_score_adj: p.oom_score_adj(),
        terminal: p.terminal().unwrap_or(false),
        console_size: p.console_size().map(|b| {
            (
                b.height().min(u16::MAX as u64) as u16,
                b.width().min(u16::MAX as u64) as u16,
            )
        }),
    })
}

/// Parses an OCI process JSON (ExecProcess).
pub fn parse(json: &[u8]) -> Result<oci_spec::runtime::Process, ProcessError> {
    serde_json::from_slice(json).map_err(|e| ProcessError::Json(e.to_string()))
}

/// The PATH a process searches: from its env, or the default.
pub fn path_of(env: &[String]) -> &str {
    env.iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH)
}

/// A namespace for the container's init: joined by path, or a new one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NsPlan {
    /// CLONE_NEW* flag.
    pub flag: i32,
    pub path: Option<PathBuf>,
}

/// What the helper sets up before the process: a new container, or an
/// exec into the namespaces of the container's init.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Setup {
    Create(Box<CreateSetup>),
    Exec { init_pid: i32 },
}

/// A new container: mounts, /dev, namespaces, identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateSetup {
    pub rootfs: PathBuf,
    pub mounts: Vec<MountStep>,
    /// Populate /dev with the standard nodes (a fresh /dev is mounted).
    pub populate_dev: bool,
    pub devices: Vec<DeviceNode>,
    pub namespaces: Vec<NsPlan>,
    pub hostname: Option<String>,
    pub domainname: Option<String>,
    pub masked_paths: Vec<PathBuf>,
    pub readonly_paths: Vec<PathBuf>,
    pub readonly_root: bool,
    pub sysctl: Vec<(String, String)>,
    /// The spec's createContainer and startContainer hooks (`hooks.rs`),
    /// run by the container process.
    #[serde(default)]
    pub hooks: super::hooks::GuestHooks,
    /// The ID mappings of a new user namespace, written by the agent once
    /// the helper has made it (a process cannot map ids other than its own
    /// into its own namespace).
    #[serde(default)]
    pub id_mappings: Option<IdMappings>,
}

/// One line of `/proc/PID/uid_map` or `gid_map`: `size` ids from
/// `container_id` in the namespace are `host_id`.. in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    pub container_id: u32,
    pub host_id: u32,
    pub size: u32,
}

/// The uid and gid mappings of a user namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMappings {
    pub uid: Vec<IdMap>,
    pub gid: Vec<IdMap>,
}

/// Most lines a uid_map or gid_map takes (the kernel's limit).
pub const MAX_ID_MAP_LINES: usize = 340;

impl IdMappings {
    /// `linux.uidMappings` and `gidMappings`, checked: both given, each
    /// range of at least one id that does not wrap, at most
    /// [`MAX_ID_MAP_LINES`] each, and no two ranges of one map overlapping
    /// on either side (the kernel refuses such a map).
    pub fn from_spec(
        uid: &[oci_spec::runtime::LinuxIdMapping],
        gid: &[oci_spec::runtime::LinuxIdMapping],
    ) -> Result<IdMappings, String> {
        let one = |what: &str, list: &[oci_spec::runtime::LinuxIdMapping]| {
            if list.is_empty() {
                return Err(format!(
                    "a new user namespace needs linux.{what}Mappings (none given)"
                ));
            }
            if list.len() > MAX_ID_MAP_LINES {
                return Err(format!(
                    "linux.{what}Mappings has {} ranges, at most {MAX_ID_MAP_LINES}",
                    list.len()
                ));
            }
            let maps: Vec<IdMap> = list
                .iter()
                .map(|m| IdMap {
                    container_id: m.container_id(),
                    host_id: m.host_id(),
                    size: m.size(),
                })
                .collect();
            for (i, m) in maps.iter().enumerate() {
                let end = |start: u32| u64::from(start) + u64::from(m.size);
                if m.size == 0 || end(m.container_id) > 1 << 32 || end(m.host_id) > 1 << 32 {
                    return Err(format!(
                        "linux.{what}Mappings[{i}] ({} {} {}) is empty or wraps",
                        m.container_id, m.host_id, m.size
                    ));
                }
                let overlaps = |a: u32, b: u32, size_b: u32| {
                    u64::from(a) < u64::from(b) + u64::from(size_b)
                        && u64::from(b) < u64::from(a) + u64::from(m.size)
                };
                if maps[..i].iter().any(|o| {
                    overlaps(m.container_id, o.container_id, o.size)
                        || overlaps(m.host_id, o.host_id, o.size)
                }) {
                    return Err(format!("linux.{what}Mappings[{i}] overlaps another range"));
                }
            }
            Ok(maps)
        };
        Ok(IdMappings {
            uid: one("uid", uid)?,
            gid: one("gid", gid)?,
        })
    }

    /// The text written to `uid_map` or `gid_map`.
    pub fn map_text(maps: &[IdMap]) -> String {
        maps.iter()
            .map(|m| format!("{} {} {}\n", m.container_id, m.host_id, m.size))
            .collect()
    }

    /// Writes the maps of process `pid`'s user namespace.
    pub fn write_for(&self, pid: u32) -> Result<(), ProcessError> {
        for (file, maps) in [("uid_map", &self.uid), ("gid_map", &self.gid)] {
            let path = format!("/proc/{pid}/{file}");
            std::fs::write(&path, Self::map_text(maps)).map_err(|e| {
                ProcessError::Helper(format!("writing {path} ({:?}): {e}", Self::map_text(maps)))
            })?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelperConfig {
    pub setup: Setup,
    /// cgroup directory to join.
    pub cgroup: Option<PathBuf>,
    pub process: ProcessPlan,
    /// The container's `linux.seccomp`, for its init and every exec.
    #[serde(default)]
    pub seccomp: Option<super::seccomp::Plan>,
    /// How many extra descriptors the helper was given at
    /// [`EXTRA_FDS_AT`].. for the process's 3..
    #[serde(default)]
    pub extra_fds: u32,
}

/// Messages on the sync socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    Config(Box<HelperConfig>),
    Pid {
        pid: i32,
    },
    Ready,
    Start,
    Error {
        message: String,
    },
    /// helper → agent: the new user namespace exists, map its ids.
    MapIds,
    /// agent → helper: the ids are mapped.
    IdsMapped,
}

/// Sends one message, with `fd` attached when given.
pub fn send(sock: RawFd, msg: &Msg, fd: Option<RawFd>) -> Result<(), ProcessError> {
    let bytes = serde_json::to_vec(msg).map_err(|e| ProcessError::Json(e.to_string()))?;
    if bytes.len() > MAX_MSG {
        return Err(ProcessError::Helper(format!(
            "message of {} bytes is over the {MAX_MSG} limit",
            bytes.len()
        )));
    }
    let iov = [std::io::IoSlice::new(&bytes)];
    let fds;
    let cmsg: Vec<ControlMessage> = match fd {
        Some(f) => {
            fds = [f];
            vec![ControlMessage::ScmRights(&fds)]
        }
        None => vec![],
    };
    sendmsg::<()>(sock, &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None)
        .map_err(sys("sending to helper"))?;
    Ok(())
}

/// Receives one message (None at EOF) and any fd that came with it.
pub fn recv(sock: RawFd) -> Result<Option<(Msg, Option<OwnedFd>)>, ProcessError> {
    let mut buf = vec![0u8; MAX_MSG];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let (n, fd) = {
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let m = loop {
            match recvmsg::<()>(sock, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC) {
                Err(nix::errno::Errno::EINTR) => continue,
                r => break r,
            }
        };
        let m = m.map_err(|e| match e {
            nix::errno::Errno::EAGAIN => {
                ProcessError::Helper("timed out waiting for the container process".into())
            }
            e => ProcessError::Sys {
                what: "receiving from helper",
                source: e.into(),
            },
        })?;
        let mut fd = None;
        for c in m.cmsgs().map_err(sys("control message"))? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                for f in fds {
                    // SAFETY: the kernel just installed `f` in our table for
                    // us (SCM_RIGHTS); nobody else owns it.
                    let owned = unsafe { OwnedFd::from_raw_fd(f) };
                    if fd.is_none() {
                        fd = Some(owned);
                    }
                }
            }
        }
        (m.bytes, fd)
    };
    if n == 0 {
        return Ok(None);
    }
    let msg = serde_json::from_slice(&buf[..n]).map_err(|e| ProcessError::Json(e.to_string()))?;
    Ok(Some((msg, fd)))
}

fn set_timeout(sock: &OwnedFd, t: Duration) -> Result<(), ProcessError> {
    let tv = TimeVal::new(t.as_secs() as i64, t.subsec_micros() as i64);
    setsockopt(sock, sockopt::ReceiveTimeout, &tv).map_err(sys("SO_RCVTIMEO"))
}

/// The fds a process gets as stdin, stdout, stderr, and as its
/// descriptors 3, 4, ... (`extra`, in order).
pub struct ChildStdio {
    pub stdin: Stdio,
    pub stdout: Stdio,
    pub stderr: Stdio,
    pub extra: Vec<OwnedFd>,
}

/// Where the helper receives the process's extra descriptors: 4, 5, ...
/// (the sync socket is 3); it moves them to 3, 4, ... right before exec.
pub const EXTRA_FDS_AT: RawFd = SYNC_FD + 1;

/// A process created and held before exec.
pub struct Launched {
    pub pid: i32,
    pub exit: oneshot::Receiver<Exit>,
    /// The sync socket: Start goes there.
    pub sync: OwnedFd,
    pub pty_master: Option<OwnedFd>,
}

/// Starts a helper with `cfg` and waits until the process is ready to
/// exec. Blocking: run it off the async threads.
pub fn launch(
    reaper: &Reaper,
    cfg: HelperConfig,
    stdio: ChildStdio,
    timeout: Duration,
) -> Result<Launched, ProcessError> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(sys("socketpair"))?;
    set_timeout(&ours, timeout)?;
    let theirs_raw = theirs.as_raw_fd();
    if stdio.extra.len() > ampoule_agent_api::MAX_EXTRA_FDS as usize {
        return Err(ProcessError::Helper(format!(
            "{} extra descriptors, at most {}",
            stdio.extra.len(),
            ampoule_agent_api::MAX_EXTRA_FDS
        )));
    }
    let extra: Vec<RawFd> = stdio.extra.iter().map(|f| f.as_raw_fd()).collect();
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg(crate::HELPER_ARG)
        .env_clear()
        .stdin(stdio.stdin)
        .stdout(stdio.stdout)
        .stderr(stdio.stderr);
    // SAFETY: the closure runs between fork and exec and only calls
    // async-signal-safe functions (dup2, fcntl) on fds that exist.
    unsafe {
        cmd.pre_exec(move || {
            // The extra descriptors first go above everything they could
            // collide with, then to their places after the sync socket.
            let base = EXTRA_FDS_AT + extra.len() as RawFd + 16;
            let mut moved = [0 as RawFd; ampoule_agent_api::MAX_EXTRA_FDS as usize];
            for (i, fd) in extra.iter().enumerate() {
                let m = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, base);
                if m < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                moved[i] = m;
            }
            if theirs_raw == SYNC_FD {
                if libc::fcntl(SYNC_FD, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(theirs_raw, SYNC_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            for (i, m) in moved.iter().take(extra.len()).enumerate() {
                if libc::dup2(*m, EXTRA_FDS_AT + i as RawFd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let id_mappings = match &cfg.setup {
        Setup::Create(c) => c.id_mappings.clone(),
        Setup::Exec { .. } => None,
    };
    let (child, _helper_exit) = reaper
        .spawn(&mut cmd)
        .map_err(|e| ProcessError::Helper(e.to_string()))?;
    drop(cmd);
    drop(theirs);
    drop(stdio.extra);
    tracing::debug!(uptime_ms = crate::sysinfo::uptime_ms(), "helper spawned");
    send(ours.as_raw_fd(), &Msg::Config(Box::new(cfg)), None)?;
    let mut pid = None;
    let mut ready = false;
    let mut pty_master = None;
    while pid.is_none() || !ready {
        match recv(ours.as_raw_fd())? {
            None => {
                return Err(ProcessError::Helper(
                    "the helper exited before the process was ready".into(),
                ))
            }
            Some((Msg::Pid { pid: p }, _)) => {
                tracing::debug!(
                    pid = p,
                    uptime_ms = crate::sysinfo::uptime_ms(),
                    "helper forked the process"
                );
                pid = Some(p)
            }
            Some((Msg::Ready, fd)) => {
                ready = true;
                pty_master = fd;
            }
            Some((Msg::MapIds, _)) => {
                let maps = id_mappings.as_ref().ok_or_else(|| {
                    ProcessError::Helper("the helper asked for ID mappings it was not given".into())
                })?;
                maps.write_for(child.id())?;
                send(ours.as_raw_fd(), &Msg::IdsMapped, None)?;
            }
            Some((Msg::Error { message }, _)) => return Err(ProcessError::Helper(message)),
            Some((other, _)) => {
                return Err(ProcessError::Helper(format!(
                    "unexpected message {other:?}"
                )))
            }
        }
    }
    let pid = pid.unwrap_or_default();
    Ok(Launched {
        pid,
        exit: reaper.watch(pid),
        sync: ours,
        pty_master,
    })
}

/// Lets a ready process exec and waits for the outcome. Blocking.
pub fn start(sync: &OwnedFd, timeout: Duration) -> Result<(), ProcessError> {
    set_timeout(sync, timeout)?;
    send(sync.as_raw_fd(), &Msg::Start, None)?;
    match recv(sync.as_raw_fd())? {
        None => Ok(()),
        Some((Msg::Error { message }, _)) => Err(ProcessError::Helper(message)),
        Some((other, _)) => Err(ProcessError::Helper(format!(
            "unexpected message {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idmaps(json: &str) -> Vec<oci_spec::runtime::LinuxIdMapping> {
        serde_json::from_str(json).expect("mappings")
    }

    #[test]
    fn id_mappings_need_both_lists_non_empty_ranges_that_do_not_wrap_or_overlap() {
        let one = idmaps(r#"[{"containerID": 0, "hostID": 100000, "size": 65536}]"#);
        let m = IdMappings::from_spec(&one, &one).expect("valid");
        assert_eq!(IdMappings::map_text(&m.uid), "0 100000 65536\n");
        assert!(IdMappings::from_spec(&one, &[]).is_err(), "no gid mappings");
        for bad in [
            r#"[{"containerID": 0, "hostID": 1, "size": 0}]"#,
            r#"[{"containerID": 4294967295, "hostID": 1, "size": 2}]"#,
            r#"[{"containerID": 0, "hostID": 1000, "size": 10}, {"containerID": 5, "hostID": 5000, "size": 1}]"#,
            r#"[{"containerID": 0, "hostID": 1000, "size": 10}, {"containerID": 50, "hostID": 1009, "size": 1}]"#,
        ] {
            assert!(IdMappings::from_spec(&idmaps(bad), &one).is_err(), "{bad}");
        }
        let many: Vec<String> = (0..=MAX_ID_MAP_LINES)
            .map(|i| {
                format!(
                    r#"{{"containerID": {i}, "hostID": {}, "size": 1}}"#,
                    1000 + i
                )
            })
            .collect();
        let many = idmaps(&format!("[{}]", many.join(",")));
        assert!(
            IdMappings::from_spec(&many, &one).is_err(),
            "too many lines"
        );
    }

    fn process(json: &str) -> oci_spec::runtime::Process {
        parse(json.as_bytes()).expect("process json")
    }

    #[test]
    fn process_plan_carries_user_rlimits_and_terminal() {
        let p = plan(&process(
            r#"{"args":["sh","-c","id"],"env":["PATH=/bin","A=1"],"cwd":"/tmp",
                "user":{"uid":1000,"gid":100,"additionalGids":[10,20],"umask":63},
                "rlimits":[{"type":"RLIMIT_NOFILE","hard":1024,"soft":512}],
                "terminal":true,"consoleSize":{"height":40,"width":120},
                "noNewPrivileges":true,"oomScoreAdj":500}"#,
        ))
        .expect("plan");
        assert_eq!(p.args, vec!["sh", "-c", "id"]);
        assert_eq!((p.uid, p.gid), (1000, 100));
        assert_eq!(p.additional_gids, vec![10, 20]);
        assert_eq!(p.umask, Some(63));
        assert_eq!(p.rlimits, vec![(libc::RLIMIT_NOFILE as i32, 512, 1024)]);
        assert!(p.terminal && p.no_new_privileges);
        assert_eq!(p.console_size, Some((40, 120)));
        assert_eq!(p.oom_score_adj, Some(500));
        assert_eq!(p.cwd, PathBuf::from("/tmp"));
        assert_eq!(p.caps, None);
    }

    #[test]
    fn empty_args_are_refused() {
        let e = plan(&process(
            r#"{"args":[],"cwd":"/","user":{"uid":0,"gid":0}}"#,
        ));
        assert!(matches!(e, Err(ProcessError::NoArgs)));
        let e = plan(&process(r#"{"cwd":"/","user":{"uid":0,"gid":0}}"#));
        assert!(matches!(e, Err(ProcessError::NoArgs)));
    }

    #[test]
    fn path_comes_from_the_last_path_variable_or_the_default() {
        assert_eq!(path_of(&["PATH=/a".into(), "PATH=/b".into()]), "/b");
        assert_eq!(path_of(&["HOME=/".into()]), DEFAULT_PATH);
    }

    #[test]
    fn messages_round_trip_over_a_seqpacket_socket_with_an_fd() {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .expect("socketpair");
        let f = std::fs::File::open("/dev/null").expect("open");
        send(a.as_raw_fd(), &Msg::Ready, Some(f.as_raw_fd())).expect("send");
        send(a.as_raw_fd(), &Msg::Pid { pid: 7 }, None).expect("send");
        let (m, fd) = recv(b.as_raw_fd()).expect("recv").expect("msg");
        assert_eq!(m, Msg::Ready);
        assert!(fd.is_some());
        let (m, fd) = recv(b.as_raw_fd()).expect("recv").expect("msg");
        assert_eq!(m, Msg::Pid { pid: 7 });
        assert!(fd.is_none());
        drop(a);
        assert!(recv(b.as_raw_fd()).expect("eof").is_none());
    }

    #[test]
    fn garbage_on_the_sync_socket_is_an_error_not_a_crash() {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .expect("socketpair");
        nix::unistd::write(&a, b"\xff{not json").expect("write");
        assert!(matches!(recv(b.as_raw_fd()), Err(ProcessError::Json(_))));
    }
}
