//! Linux capabilities of a container process: OCI names to numbers, the
//! five sets as bit masks, and applying them (in the helper).

// Capability names in number order (CAP_CHOWN = 0 ...), shared with the
// host's `ampoule features`.
use ampoule_agent_api::features::CAPABILITIES as NAMES;
use serde::{Deserialize, Serialize};

/// The number of a capability name (`CAP_SYS_ADMIN` or `SYS_ADMIN`).
pub fn number(name: &str) -> Option<u32> {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    NAMES.iter().position(|n| *n == full).map(|i| i as u32)
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CapsError {
    #[error("unknown capability {0:?}")]
    Unknown(String),
}

/// The five capability sets as masks (bit N = capability N).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapSets {
    pub bounding: u64,
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
}

fn mask(set: &Option<oci_spec::runtime::Capabilities>) -> Result<u64, CapsError> {
    let mut m = 0u64;
    for cap in set.iter().flatten() {
        let name = serde_json::to_value(cap)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let n = number(&name).ok_or(CapsError::Unknown(name))?;
        m |= 1u64 << n;
    }
    Ok(m)
}

impl CapSets {
    pub fn from_oci(c: &oci_spec::runtime::LinuxCapabilities) -> Result<CapSets, CapsError> {
        Ok(CapSets {
            bounding: mask(c.bounding())?,
            effective: mask(c.effective())?,
            permitted: mask(c.permitted())?,
            inheritable: mask(c.inheritable())?,
            ambient: mask(c.ambient())?,
        })
    }
}

/// The highest capability the running kernel knows.
pub fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// Drops every capability outside `bounding` from the bounding set. Needs
/// CAP_SETPCAP, so it runs before the user switch.
pub fn drop_bounding(bounding: u64) -> std::io::Result<()> {
    for cap in 0..=last_cap().min(63) {
        if bounding & (1u64 << cap) == 0 {
            // SAFETY: prctl with integer arguments only.
            let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
            if r != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EINVAL) {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Sets effective, permitted and inheritable (capset), then the ambient set.
pub fn apply(c: &CapSets) -> std::io::Result<()> {
    let mut hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: c.effective as u32,
            permitted: c.permitted as u32,
            inheritable: c.inheritable as u32,
        },
        CapData {
            effective: (c.effective >> 32) as u32,
            permitted: (c.permitted >> 32) as u32,
            inheritable: (c.inheritable >> 32) as u32,
        },
    ];
    // SAFETY: capset(2) with a v3 header and the two data words v3 expects;
    // both live on this stack frame for the duration of the call.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: prctl with integer arguments only.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
    }
    // Like runc, an ambient capability that cannot be raised (it must be in
    // both permitted and inheritable) is skipped, not an error.
    for cap in 0..64u32 {
        if c.ambient & (1u64 << cap) != 0 {
            // SAFETY: prctl with integer arguments only.
            unsafe {
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE,
                    cap as libc::c_ulong,
                    0,
                    0,
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_kernel_numbers_with_or_without_prefix() {
        assert_eq!(number("CAP_CHOWN"), Some(0));
        assert_eq!(number("CAP_SYS_ADMIN"), Some(21));
        assert_eq!(number("net_bind_service"), Some(10));
        assert_eq!(number("CAP_CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(number("CAP_FLY"), None);
    }

    #[test]
    fn all_five_sets_become_masks() {
        let c: oci_spec::runtime::LinuxCapabilities = serde_json::from_str(
            r#"{"bounding":["CAP_CHOWN","CAP_KILL"],"effective":["CAP_KILL"],"permitted":["CAP_KILL"],
               "inheritable":[],"ambient":["CAP_NET_BIND_SERVICE"]}"#,
        )
        .expect("caps");
        let s = CapSets::from_oci(&c).expect("sets");
        assert_eq!(s.bounding, (1 << 0) | (1 << 5));
        assert_eq!(s.effective, 1 << 5);
        assert_eq!(s.permitted, 1 << 5);
        assert_eq!(s.inheritable, 0);
        assert_eq!(s.ambient, 1 << 10);
    }
}
