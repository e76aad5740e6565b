//! A process's jail as the kernel reports it (`/proc/PID/status`, its root
//! and namespaces): for `ampoule check` and the tests.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::Serialize;

use super::child::NAMESPACES;

/// What `/proc/PID` says about one process's confinement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JailState {
    pub pid: u32,
    /// `/proc/PID/comm`.
    pub name: String,
    /// Real, effective, saved and filesystem uid.
    pub uids: [u32; 4],
    pub gids: [u32; 4],
    pub cap_eff: u64,
    pub cap_prm: u64,
    pub cap_inh: u64,
    pub cap_bnd: u64,
    pub cap_amb: u64,
    pub no_new_privs: bool,
    /// 0 off, 1 strict, 2 filter.
    pub seccomp: u8,
    /// `/proc/PID/root` is not the host's `/`.
    pub own_root: bool,
    /// Namespaces (of [`NAMESPACES`]) that differ from ours.
    pub own_namespaces: Vec<String>,
}

/// Errors reading a process's state.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("reading /proc/{pid}: {source}")]
    Io {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("/proc/{pid}/status has no valid {field} line")]
    Field { pid: u32, field: &'static str },
}

/// Parses the fields of a `/proc/PID/status` text.
pub fn parse_status(pid: u32, text: &str) -> Result<JailState, StatusError> {
    let line = |field: &'static str| {
        text.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .map(str::trim)
            .ok_or(StatusError::Field { pid, field })
    };
    let ids = |field: &'static str| -> Result<[u32; 4], StatusError> {
        let v: Vec<u32> = line(field)?
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        v.try_into().map_err(|_| StatusError::Field { pid, field })
    };
    let hex = |field: &'static str| -> Result<u64, StatusError> {
        u64::from_str_radix(line(field)?, 16).map_err(|_| StatusError::Field { pid, field })
    };
    let num = |field: &'static str| -> Result<u8, StatusError> {
        line(field)?
            .parse()
            .map_err(|_| StatusError::Field { pid, field })
    };
    Ok(JailState {
        pid,
        name: line("Name")?.to_string(),
        uids: ids("Uid")?,
        gids: ids("Gid")?,
        cap_eff: hex("CapEff")?,
        cap_prm: hex("CapPrm")?,
        cap_inh: hex("CapInh")?,
        cap_bnd: hex("CapBnd")?,
        cap_amb: hex("CapAmb")?,
        no_new_privs: num("NoNewPrivs")? == 1,
        seccomp: num("Seccomp")?,
        own_root: false,
        own_namespaces: Vec::new(),
    })
}

/// Reads the jail state of `pid` (needs root for its root and namespaces).
pub fn read(pid: u32) -> Result<JailState, StatusError> {
    let proc_dir = Path::new("/proc").join(pid.to_string());
    let err = |source| StatusError::Io { pid, source };
    let text = std::fs::read_to_string(proc_dir.join("status")).map_err(err)?;
    let mut s = parse_status(pid, &text)?;
    let host = std::fs::metadata("/").map_err(err)?;
    let root = std::fs::metadata(proc_dir.join("root/.")).map_err(err)?;
    s.own_root = (root.dev(), root.ino()) != (host.dev(), host.ino());
    for (ns, _) in NAMESPACES {
        let theirs = std::fs::read_link(proc_dir.join("ns").join(ns)).map_err(err)?;
        let ours = std::fs::read_link(Path::new("/proc/self/ns").join(ns)).map_err(err)?;
        if theirs != ours {
            s.own_namespaces.push(ns.to_string());
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tqemu-system-x86\nUmask:\t0077\nState:\tS (sleeping)\n\
        Uid:\t400007\t400007\t400007\t400007\nGid:\t400007\t400007\t400007\t400007\n\
        CapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\n\
        CapBnd:\t0000000000000000\nCapAmb:\t0000000000000000\nNoNewPrivs:\t1\nSeccomp:\t2\n\
        Seccomp_filters:\t1\n";

    #[test]
    fn parses_ids_capabilities_and_seccomp() {
        let s = parse_status(7, STATUS).unwrap();
        assert_eq!(s.name, "qemu-system-x86");
        assert_eq!(s.uids, [400_007; 4]);
        assert_eq!(s.gids, [400_007; 4]);
        assert_eq!((s.cap_eff, s.cap_bnd, s.cap_amb), (0, 0, 0));
        assert!(s.no_new_privs);
        assert_eq!(s.seccomp, 2);
    }

    #[test]
    fn a_root_process_shows_its_capabilities() {
        let text = STATUS
            .replace("CapEff:\t0000000000000000", "CapEff:\t000001ffffffffff")
            .replace("NoNewPrivs:\t1", "NoNewPrivs:\t0");
        let s = parse_status(7, &text).unwrap();
        assert_eq!(s.cap_eff, 0x1ff_ffff_ffff);
        assert!(!s.no_new_privs);
    }

    #[test]
    fn a_missing_field_is_named() {
        let err = parse_status(7, "Name:\tx\n").unwrap_err().to_string();
        assert!(err.contains("Uid"), "{err}");
    }

    #[test]
    fn this_test_process_is_not_jailed() {
        let s = read(std::process::id()).unwrap();
        assert!(!s.own_root);
        assert!(s.own_namespaces.is_empty());
    }
}
