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
}

/// Messages on the sync socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    Config(Box<HelperConfig>),
    Pid { pid: i32 },
    Ready,
    Start,
    Error { message: String },
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

/// The fds a process gets as stdin, stdout, stderr.
pub struct ChildStdio {
    pub stdin: Stdio,
    pub stdout: Stdio,
    pub stderr: Stdio,
}

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
            if theirs_raw == SYNC_FD {
                if libc::fcntl(SYNC_FD, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(theirs_raw, SYNC_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (_child, _helper_exit) = reaper
        .spawn(&mut cmd)
        .map_err(|e| ProcessError::Helper(e.to_string()))?;
    drop(cmd);
    drop(theirs);
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
