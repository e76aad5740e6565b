//! One tap per interface in the pod's network namespace, and Kata's tc
//! redirect between the two: everything arriving on the interface (the
//! CNI veth) leaves through the tap to the guest, and everything the guest
//! sends out of the tap leaves through the interface. Classifier `u32 match
//! u32 0 0` (matchall and flower are not in every host kernel), action
//! `mirred egress redirect`, on an ingress qdisc of each side.
//!
//! The tap is not persistent: it goes away when the last descriptor of it
//! closes, i.e. with the VM process. The ingress qdisc on the interface is
//! removed when the sandbox stops (and by cleanup after a crash).

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

use super::{netns, NetworkError};

/// The tap name for interface number `n` (at most 15 bytes).
pub fn tap_name(n: usize) -> String {
    format!("tap{n}_amp")
}

/// Whether `name` is one of ours.
pub fn is_tap(name: &str) -> bool {
    name.starts_with("tap") && name.ends_with("_amp")
}

/// Creates tap `name` in the namespace at `netns` (no packet information,
/// no virtio-net header) and returns its descriptor.
pub fn create(netns: &Path, name: &str) -> Result<OwnedFd, NetworkError> {
    let name = name.to_string();
    netns::with_netns(netns, move || {
        let err = |what: &str, e: std::io::Error| NetworkError::Tap {
            name: name.clone(),
            reason: format!("{what}: {e}"),
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .map_err(|e| err("opening /dev/net/tun", e))?;
        // SAFETY: an all-zero ifreq is a valid value of this plain C struct.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `ifr`
        // is, on the tun descriptor we own.
        let rc = unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(&file),
                libc::TUNSETIFF as _,
                &mut ifr,
            )
        };
        if rc != 0 {
            return Err(err("TUNSETIFF", std::io::Error::last_os_error()));
        }
        let fd = std::os::fd::IntoRawFd::into_raw_fd(file);
        // SAFETY: `fd` came from `into_raw_fd` just above: ours alone.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    })
}

/// The `tc` commands redirecting all traffic both ways between `iface` and
/// `tap`.
pub fn redirect_commands(iface: &str, tap: &str) -> Vec<Vec<String>> {
    let mut cmds = Vec::new();
    for (from, to) in [(iface, tap), (tap, iface)] {
        cmds.push(
            ["qdisc", "add", "dev", from, "ingress"]
                .map(String::from)
                .to_vec(),
        );
        cmds.push(
            [
                "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all", "u32", "match",
                "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", to,
            ]
            .map(String::from)
            .to_vec(),
        );
    }
    cmds
}

/// Brings `tap` up with `mtu` and redirects traffic between it and `iface`.
pub fn connect(netns: &Path, iface: &str, tap: &str, mtu: u32) -> Result<(), NetworkError> {
    let mtu = mtu.to_string();
    netns::run_in(netns, "ip", &["link", "set", "dev", tap, "mtu", &mtu, "up"])?;
    for c in redirect_commands(iface, tap) {
        let args: Vec<&str> = c.iter().map(String::as_str).collect();
        netns::run_in(netns, "tc", &args)?;
    }
    Ok(())
}

/// Removes the ingress qdisc (and its filters) of `iface`. Quiet when the
/// namespace or the qdisc is already gone.
pub fn disconnect(netns: &Path, iface: &str) {
    if !netns.exists() {
        return;
    }
    if let Err(e) = netns::run_in(netns, "tc", &["qdisc", "del", "dev", iface, "ingress"]) {
        tracing::debug!(interface = iface, error = %e, "removing the tc redirect");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traffic_is_redirected_both_ways_with_u32_match_all_and_mirred() {
        let c = redirect_commands("eth0", "tap0_amp");
        let lines: Vec<String> = c.iter().map(|v| v.join(" ")).collect();
        assert_eq!(
            lines,
            [
                "qdisc add dev eth0 ingress",
                "filter add dev eth0 parent ffff: protocol all u32 match u32 0 0 action mirred egress redirect dev tap0_amp",
                "qdisc add dev tap0_amp ingress",
                "filter add dev tap0_amp parent ffff: protocol all u32 match u32 0 0 action mirred egress redirect dev eth0",
            ]
        );
    }

    #[test]
    fn tap_names_fit_an_interface_name_and_are_recognised() {
        for n in [0, 9, 99] {
            let t = tap_name(n);
            assert!(t.len() <= 15, "{t}");
            assert!(is_tap(&t));
        }
        assert!(!is_tap("eth0"));
    }
}
