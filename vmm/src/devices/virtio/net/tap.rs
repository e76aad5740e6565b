//! The host side of a virtio-net device: a tap file descriptor, opened by
//! interface name or inherited already open.
//!
//! - By name (`tap=NAME`): `/dev/net/tun` is opened non-blocking and
//!   attached to the existing tap interface NAME of the VMM's own network
//!   namespace with `TUNSETIFF` (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`), and
//!   the virtio-net header size set to 12 bytes (`TUNSETVNETHDRSZ`). A
//!   missing interface is an error naming it: `TUNSETIFF` would create one,
//!   so the name is looked up first, and an interface created by the
//!   attach after all (the old one vanished in between) is refused too.
//! - By fd (`fd=N`): the descriptor must be an attached tap (`TUNGETIFF`
//!   says `IFF_TAP` and `IFF_NO_PI`; a tun or a tap with packet
//!   information is refused). It may belong to another network namespace.
//!   With `IFF_VNET_HDR` its header size is set to 12 and frames pass with
//!   their header; without it the device adds and strips the header
//!   itself. The descriptor is made non-blocking and close-on-exec: its
//!   file description is shared with whoever passed it, so they see
//!   `O_NONBLOCK` too.
//!
//! Either way offloads are turned off (`TUNSETOFFLOAD 0`): the guest is
//! offered none, so the kernel must hand over complete, checksummed
//! frames. All ioctls happen here, when the VM is built; the device thread
//! only reads and writes.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::VNET_HDR_LEN;

/// Errors opening or adopting a tap.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("net tap {name:?}: no such network interface in the VMM's network namespace (create it first: ip tuntap add dev {name} mode tap)")]
    Missing { name: String },
    #[error("net tap {name:?}: the interface vanished while it was being opened")]
    Vanished { name: String },
    #[error("net tap {name:?}: {what}: {source}")]
    Named {
        name: String,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("net fd {fd}: {what}: {source}")]
    Fd {
        fd: RawFd,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("net fd {fd}: {reason}")]
    NotTap { fd: RawFd, reason: String },
}

/// `struct ifreq` with the `ifr_flags` member of its union.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl IfReq {
    fn new(name: &str, flags: libc::c_int) -> IfReq {
        let mut r = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: flags as libc::c_short,
            _pad: [0; 22],
        };
        let n = name.len().min(libc::IFNAMSIZ - 1);
        r.name[..n].copy_from_slice(&name.as_bytes()[..n]);
        r
    }

    fn name(&self) -> String {
        let end = self
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.name.len());
        String::from_utf8_lossy(&self.name[..end]).into_owned()
    }
}

/// The index of interface `name` in this thread's network namespace, or 0.
fn if_index(name: &str) -> u32 {
    let Ok(c) = CString::new(name) else {
        return 0;
    };
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call;
    // if_nametoindex only reads it.
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

/// Whether a network interface called `name` exists in this network
/// namespace (a lookup only: nothing is created).
pub fn interface_exists(name: &str) -> bool {
    if_index(name) != 0
}

/// Whether `fd` is an open descriptor of this process.
pub fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the descriptor's flags; an fd that is not
    // open gives -1 (EBADF), touching nothing.
    fd >= 0 && unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0
}

fn last_err() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// `TUNSETVNETHDRSZ` to [`VNET_HDR_LEN`] and `TUNSETOFFLOAD 0`.
fn set_vnet_and_offloads(fd: RawFd, vnet_hdr: bool) -> Result<(), (&'static str, std::io::Error)> {
    if vnet_hdr {
        let size: libc::c_int = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which
        // points at a live local.
        if unsafe { libc::ioctl(fd, libc::TUNSETVNETHDRSZ, &size) } < 0 {
            return Err(("TUNSETVNETHDRSZ", last_err()));
        }
    }
    // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is
    // passed.
    if unsafe { libc::ioctl(fd, libc::TUNSETOFFLOAD, 0 as libc::c_ulong) } < 0 {
        return Err(("TUNSETOFFLOAD", last_err()));
    }
    Ok(())
}

/// An open, non-blocking tap.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    vnet_hdr: bool,
}

impl Tap {
    /// Attaches to the existing tap interface `name` of this network
    /// namespace, with the virtio-net header.
    pub fn open_named(name: &str) -> Result<Tap, TapError> {
        let err = |what: &'static str| {
            move |source| TapError::Named {
                name: name.to_string(),
                what,
                source,
            }
        };
        let before = if_index(name);
        if before == 0 {
            return Err(TapError::Missing {
                name: name.to_string(),
            });
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(err("opening /dev/net/tun"))?;
        let mut req = IfReq::new(name, libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR);
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq` (40 bytes,
        // the layout of IfReq) through the pointer, which points at a live
        // local.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
            let e = last_err();
            let what = match e.raw_os_error() {
                Some(libc::EINVAL) => "TUNSETIFF (is it a tap, not a tun or another kind of interface, and not multi-queue?)",
                Some(libc::EBUSY) => "TUNSETIFF (is it in use by another process?)",
                Some(libc::EPERM) => "TUNSETIFF (is it owned by another user?)",
                _ => "TUNSETIFF",
            };
            return Err(TapError::Named {
                name: name.to_string(),
                what,
                source: e,
            });
        }
        // Had the interface gone between the lookup and the attach,
        // TUNSETIFF made a new one (with another index), which goes away
        // with this file.
        if if_index(name) != before {
            return Err(TapError::Vanished {
                name: name.to_string(),
            });
        }
        set_vnet_and_offloads(file.as_raw_fd(), true).map_err(|(what, source)| {
            TapError::Named {
                name: name.to_string(),
                what,
                source,
            }
        })?;
        Ok(Tap {
            file,
            name: req.name(),
            vnet_hdr: true,
        })
    }

    /// Adopts the inherited tap descriptor `fd`: from now on this process
    /// owns it (it is closed with the Tap).
    pub fn from_fd(fd: RawFd) -> Result<Tap, TapError> {
        if fd < 3 || !fd_is_open(fd) {
            return Err(TapError::NotTap {
                fd,
                reason: "not an open descriptor of the VMM".into(),
            });
        }
        // SAFETY: `fd` is open (checked above), was handed to this process
        // for this device, and the configuration refuses the same number
        // twice: nothing else in the process owns it.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let file = File::from(owned);
        let raw = file.as_raw_fd();
        let mut req = IfReq::new("", 0);
        // SAFETY: TUNGETIFF writes one `struct ifreq` (40 bytes, the layout
        // of IfReq) through the pointer, which points at a live local; on
        // a descriptor that is not a tun it fails without writing.
        if unsafe { libc::ioctl(raw, libc::TUNGETIFF, &mut req) } < 0 {
            return Err(TapError::NotTap {
                fd,
                reason: format!(
                    "not an attached tap (TUNGETIFF: {})",
                    std::io::Error::last_os_error()
                ),
            });
        }
        let flags = libc::c_int::from(req.flags) & 0xffff;
        if flags & libc::IFF_TAP == 0 {
            return Err(TapError::NotTap {
                fd,
                reason: format!("{:?} is a tun (layer 3), not a tap", req.name()),
            });
        }
        if flags & libc::IFF_NO_PI == 0 {
            return Err(TapError::NotTap {
                fd,
                reason: format!(
                    "tap {:?} was opened without IFF_NO_PI (packet information is not supported)",
                    req.name()
                ),
            });
        }
        let vnet_hdr = flags & libc::IFF_VNET_HDR != 0;
        let fd_err = |what: &'static str| move |source| TapError::Fd { fd, what, source };
        // SAFETY: fcntl on a descriptor we own, integer arguments only.
        let fl = unsafe { libc::fcntl(raw, libc::F_GETFL) };
        // SAFETY: as above.
        if fl < 0 || unsafe { libc::fcntl(raw, libc::F_SETFL, fl | libc::O_NONBLOCK) } < 0 {
            return Err(fd_err("setting O_NONBLOCK")(last_err()));
        }
        // SAFETY: as above.
        if unsafe { libc::fcntl(raw, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
            return Err(fd_err("setting FD_CLOEXEC")(last_err()));
        }
        set_vnet_and_offloads(raw, vnet_hdr).map_err(|(what, source)| fd_err(what)(source))?;
        Ok(Tap {
            file,
            name: req.name(),
            vnet_hdr,
        })
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether frames carry the 12-byte virtio-net header on the tap.
    pub fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// Reads one frame (with its header when [`Self::vnet_hdr`]); never
    /// blocks (`WouldBlock` when the tap's queue is empty).
    pub fn read_frame(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one frame (with its header when [`Self::vnet_hdr`]); never
    /// blocks (`WouldBlock` when the tap cannot take it).
    pub fn write_frame(&self, frame: &[u8]) -> std::io::Result<usize> {
        (&self.file).write(frame)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_has_the_kernel_layout_and_names_are_cut_to_fit() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
        assert_eq!(std::mem::offset_of!(IfReq, flags), libc::IFNAMSIZ);
        let r = IfReq::new("tap0", libc::IFF_TAP);
        assert_eq!(r.name(), "tap0");
        assert_eq!(r.flags as libc::c_int, libc::IFF_TAP);
        let r = IfReq::new("a-name-longer-than-ifnamsiz", 0);
        assert_eq!(r.name().len(), libc::IFNAMSIZ - 1);
    }

    #[test]
    fn lookups_create_nothing_and_closed_or_plain_fds_are_not_taps() {
        assert!(interface_exists("lo"));
        assert!(!interface_exists("ampoule-nosuch"));
        assert!(!interface_exists("bad\0name"));
        assert!(!fd_is_open(-1));
        assert!(!fd_is_open(1_000_000));
        assert!(matches!(
            Tap::from_fd(2),
            Err(TapError::NotTap { fd: 2, .. })
        ));
        let f = File::open("/dev/null").unwrap();
        let fd = std::os::fd::IntoRawFd::into_raw_fd(f);
        assert!(fd_is_open(fd));
        // Adopted (and closed) even though it is refused.
        let e = Tap::from_fd(fd).unwrap_err().to_string();
        assert!(e.contains("not an attached tap"), "{e}");
        let e = Tap::open_named("ampoule-nosuch").unwrap_err().to_string();
        assert!(
            e.contains("\"ampoule-nosuch\"") && e.contains("no such network interface"),
            "{e}"
        );
    }
}
