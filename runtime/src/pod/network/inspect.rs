//! What the pod's network namespace holds on the host, as CNI (or podman's
//! netavark) left it: each interface with its MAC, MTU and addresses, and
//! the routes. Read with iproute2's JSON output (`ip -j`) inside that
//! namespace and parsed here; the parsing is what the unit tests cover.
//!
//! The guest kernel has no IPv6, so IPv6 addresses and routes are left out
//! (and logged).

use std::path::Path;

use serde::Deserialize;

use super::{netns, NetworkError};

/// An interface of the pod's namespace that the guest gets a NIC for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInterface {
    pub name: String,
    pub mac: String,
    pub mtu: u32,
    /// IPv4 addresses with their prefix lengths.
    pub addresses: Vec<(String, u32)>,
}

/// An IPv4 route of the pod's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRoute {
    /// CIDR, or empty for the default route.
    pub destination: String,
    pub gateway: String,
    pub device: String,
    pub source: String,
}

#[derive(Deserialize)]
struct IpLink {
    ifname: String,
    #[serde(default)]
    link_type: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    mtu: u32,
    #[serde(default)]
    addr_info: Vec<IpAddr>,
}

#[derive(Deserialize)]
struct IpAddr {
    #[serde(default)]
    family: String,
    #[serde(default)]
    local: String,
    #[serde(default)]
    prefixlen: u32,
}

#[derive(Deserialize)]
struct IpRoute {
    #[serde(default)]
    dst: String,
    #[serde(default)]
    gateway: String,
    #[serde(default)]
    dev: String,
    #[serde(default)]
    protocol: String,
    #[serde(default)]
    prefsrc: String,
    #[serde(rename = "type", default)]
    kind: String,
}

fn bad(what: &str, e: impl std::fmt::Display) -> NetworkError {
    NetworkError::Command {
        what: what.to_string(),
        reason: format!("unexpected output: {e}"),
    }
}

/// The Ethernet interfaces of `ip -j addr show` output, except `skip`
/// (our own taps).
pub fn parse_interfaces(
    json: &[u8],
    skip: &dyn Fn(&str) -> bool,
) -> Result<Vec<HostInterface>, NetworkError> {
    let links: Vec<IpLink> = serde_json::from_slice(json).map_err(|e| bad("ip -j addr show", e))?;
    let mut out = Vec::new();
    for l in links {
        if l.link_type != "ether" || skip(&l.ifname) {
            continue;
        }
        let mut addresses = Vec::new();
        for a in l.addr_info {
            match a.family.as_str() {
                "inet" => addresses.push((a.local, a.prefixlen)),
                "inet6" => {
                    tracing::debug!(interface = %l.ifname, address = %a.local, "IPv6 address left out: the guest has no IPv6")
                }
                _ => {}
            }
        }
        out.push(HostInterface {
            name: l.ifname,
            mac: l.address.to_ascii_lowercase(),
            mtu: l.mtu,
            addresses,
        });
    }
    Ok(out)
}

/// The routes of `ip -j route show` output that the guest must be given:
/// unicast routes on `devices`, except the ones the kernel adds by itself
/// for an address (`proto kernel`), which the guest gets the same way.
pub fn parse_routes(json: &[u8], devices: &[String]) -> Result<Vec<HostRoute>, NetworkError> {
    let routes: Vec<IpRoute> =
        serde_json::from_slice(json).map_err(|e| bad("ip -j route show", e))?;
    let mut out = Vec::new();
    for r in routes {
        if r.protocol == "kernel" || !devices.contains(&r.dev) {
            continue;
        }
        if !r.kind.is_empty() && r.kind != "unicast" {
            continue;
        }
        out.push(HostRoute {
            destination: if r.dst == "default" {
                String::new()
            } else {
                r.dst
            },
            gateway: r.gateway,
            device: r.dev,
            source: r.prefsrc,
        });
    }
    // Routes on the link first: a gateway must be reachable when its route
    // is added.
    out.sort_by_key(|r| !r.gateway.is_empty());
    Ok(out)
}

/// Reads the interfaces and routes of the namespace at `netns`.
pub fn read(
    netns: &Path,
    skip: &dyn Fn(&str) -> bool,
) -> Result<(Vec<HostInterface>, Vec<HostRoute>), NetworkError> {
    let addrs = netns::run_in(netns, "ip", &["-j", "addr", "show"])?;
    let interfaces = parse_interfaces(&addrs.stdout, skip)?;
    let routes = netns::run_in(netns, "ip", &["-j", "-4", "route", "show"])?;
    let names: Vec<String> = interfaces.iter().map(|i| i.name.clone()).collect();
    let routes = parse_routes(&routes.stdout, &names)?;
    Ok((interfaces, routes))
}

#[cfg(test)]
mod tests {
    use super::*;

    // What `ip -j addr show` printed in a pod namespace set up by the CNI
    // bridge plugin (iproute2 6.1).
    const ADDRS: &str = r#"[
      {"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"mtu":65536,"link_type":"loopback","address":"00:00:00:00:00:00","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host"}]},
      {"ifindex":3,"link_index":5,"ifname":"eth0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1500,"link_type":"ether","address":"1A:2B:3C:4D:5E:6F","addr_info":[{"family":"inet","local":"10.88.7.5","prefixlen":24,"scope":"global"},{"family":"inet6","local":"fe80::182b:3cff:fe4d:5e6f","prefixlen":64,"scope":"link"}]},
      {"ifindex":4,"ifname":"tap0_amp","flags":["UP"],"mtu":1500,"link_type":"ether","address":"aa:aa:aa:aa:aa:aa","addr_info":[]}
    ]"#;
    const ROUTES: &str = r#"[
      {"dst":"default","gateway":"10.88.7.1","dev":"eth0","flags":[]},
      {"dst":"10.88.7.0/24","dev":"eth0","protocol":"kernel","scope":"link","prefsrc":"10.88.7.5","flags":[]},
      {"dst":"10.99.0.0/16","dev":"eth0","scope":"link","flags":[]},
      {"type":"blackhole","dst":"10.1.0.0/16","flags":[]}
    ]"#;

    #[test]
    fn ethernet_interfaces_with_ipv4_addresses_are_read_and_our_taps_skipped() {
        let skip = |n: &str| n.ends_with("_amp");
        let i = parse_interfaces(ADDRS.as_bytes(), &skip).expect("parse");
        assert_eq!(
            i,
            vec![HostInterface {
                name: "eth0".into(),
                mac: "1a:2b:3c:4d:5e:6f".into(),
                mtu: 1500,
                addresses: vec![("10.88.7.5".into(), 24)],
            }]
        );
    }

    #[test]
    fn routes_leave_out_kernel_and_non_unicast_ones_and_put_link_routes_first() {
        let r = parse_routes(ROUTES.as_bytes(), &["eth0".into()]).expect("parse");
        assert_eq!(
            r,
            vec![
                HostRoute {
                    destination: "10.99.0.0/16".into(),
                    gateway: String::new(),
                    device: "eth0".into(),
                    source: String::new(),
                },
                HostRoute {
                    destination: String::new(),
                    gateway: "10.88.7.1".into(),
                    device: "eth0".into(),
                    source: String::new(),
                },
            ]
        );
    }

    #[test]
    fn unexpected_output_is_an_error_not_an_empty_network() {
        assert!(parse_interfaces(b"not json", &|_| false).is_err());
        assert!(parse_routes(b"{}", &[]).is_err());
    }
}
