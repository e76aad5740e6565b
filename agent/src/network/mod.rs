//! The pod's network in the guest (`SetupNetwork`): a network namespace
//! bound at [`ampoule_agent_api::POD_NETNS_GUEST_PATH`], the guest NICs of
//! the pod's interfaces moved into it (found by MAC), renamed, with their
//! MTU and addresses, and the pod's routes.
//!
//! This file turns the request into a [`Plan`] (pure functions: parsing,
//! MAC matching, rename order, route checks, all unit-tested) and runs it
//! on a dedicated thread ([`apply`]); [`netns`] creates and binds the
//! namespace, [`netlink`] talks rtnetlink.
//!
//! Namespaces: a netlink socket acts in the network namespace of the thread
//! that opened it. One OS thread does the whole setup, with a current-thread
//! tokio runtime: it opens the root namespace's socket (to list and move the
//! NICs), then `unshare(CLONE_NEWNET)`s itself into the new namespace, binds
//! it and opens the pod's socket there. The agent's other threads never
//! change namespace.

pub mod netlink;
pub mod netns;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ampoule_agent_api as api;

/// Longest interface name (IFNAMSIZ - 1).
const MAX_IFNAME: usize = 15;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// Bad request data, found before anything changed.
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("the pod network namespace {0} already exists (SetupNetwork runs once per sandbox)")]
    AlreadyExists(PathBuf),
    /// The request needs something this guest kernel lacks.
    #[error("{field}: {reason}")]
    Unsupported { field: String, reason: String },
    #[error("{field}: no guest NIC has MAC {mac} (NICs seen: {seen})")]
    NicNotFound {
        field: String,
        mac: String,
        seen: String,
    },
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
    #[error(transparent)]
    Netlink(#[from] netlink::NetlinkError),
    #[error("pod network setup: {0}")]
    Internal(String),
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> NetworkError {
    NetworkError::InvalidArgument {
        field: field.into(),
        reason: reason.into(),
    }
}

/// An address or prefix with its length, validated for its family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefixed {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefixed {
    /// Whether `ip` is inside this prefix (same family).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(a) & mask == u32::from(b) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(a) & mask == u128::from(b) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Prefixed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// One interface to set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfacePlan {
    pub name: String,
    pub mac: [u8; 6],
    /// None: keep the NIC's MTU.
    pub mtu: Option<u32>,
    pub addresses: Vec<Prefixed>,
}

/// One route to add, in request order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePlan {
    /// `routes[i]`, for error messages.
    pub field: String,
    pub v6: bool,
    /// None: the default route.
    pub destination: Option<Prefixed>,
    pub gateway: Option<IpAddr>,
    /// An interface name of the plan; None: the kernel picks by gateway.
    pub device: Option<String>,
    pub source: Option<IpAddr>,
}

/// A validated `SetupNetworkRequest`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub interfaces: Vec<InterfacePlan>,
    pub routes: Vec<RoutePlan>,
}

/// A network device as netlink lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// `aa:bb:cc:dd:ee:ff`, either case.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        let p = parts.next()?;
        if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// The kernel's rule for interface names (dev_valid_name), plus `lo`,
/// which the pod namespace already has.
fn check_ifname(field: &str, name: &str) -> Result<(), NetworkError> {
    let reason = if name.is_empty() {
        "is empty".to_string()
    } else if name.len() > MAX_IFNAME {
        format!("{name:?} is longer than {MAX_IFNAME} bytes")
    } else if name == "." || name == ".." {
        format!("{name:?} is not a valid interface name")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        format!("{name:?} contains '/', ':' or whitespace")
    } else if name == "lo" {
        "\"lo\" is the pod namespace's loopback".to_string()
    } else {
        return Ok(());
    };
    Err(invalid(field, reason))
}

fn parse_ip(field: &str, s: &str) -> Result<IpAddr, NetworkError> {
    s.parse::<IpAddr>()
        .map_err(|_| invalid(field, format!("{s:?} is not an IPv4 or IPv6 address")))
}

fn max_len(addr: IpAddr) -> u32 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

fn check_len(field: &str, addr: IpAddr, len: u32) -> Result<u8, NetworkError> {
    let max = max_len(addr);
    if len > max {
        return Err(invalid(
            field,
            format!("prefix length {len} is more than {max} for {addr}"),
        ));
    }
    Ok(len as u8)
}

/// A route destination: `10.88.0.0/16`, `fd00::/64`, or a bare address (a
/// host route, as `ip route` reads it). Host bits must be zero.
pub fn parse_cidr(field: &str, s: &str) -> Result<Prefixed, NetworkError> {
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (s, None),
    };
    let addr = parse_ip(field, ip)?;
    let len = match len {
        Some(l) => {
            let n: u32 = l
                .parse()
                .map_err(|_| invalid(field, format!("{s:?}: bad prefix length {l:?}")))?;
            check_len(field, addr, n)?
        }
        None => max_len(addr) as u8,
    };
    let p = Prefixed { addr, len };
    let network = match addr {
        IpAddr::V4(a) => IpAddr::V4(
            (u32::from(a) & u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)).into(),
        ),
        IpAddr::V6(a) => IpAddr::V6(
            (u128::from(a) & u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)).into(),
        ),
    };
    if network != addr {
        return Err(invalid(
            field,
            format!("{s:?} has host bits set (the network is {network}/{len})"),
        ));
    }
    Ok(p)
}

fn is_v6_link_local(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(a) if (a.segments()[0] & 0xffc0) == 0xfe80)
}

/// Validates the request; nothing in the guest changes before this passed.
pub fn plan(req: &api::SetupNetworkRequest) -> Result<Plan, NetworkError> {
    let mut interfaces: Vec<InterfacePlan> = Vec::new();
    for (i, iface) in req.interfaces.iter().enumerate() {
        let f = format!("interfaces[{i}]");
        check_ifname(&format!("{f}.name"), &iface.name)?;
        if let Some(j) = interfaces.iter().position(|p| p.name == iface.name) {
            return Err(invalid(
                format!("{f}.name"),
                format!("{:?} is also interfaces[{j}].name", iface.name),
            ));
        }
        let mac = parse_mac(&iface.mac).ok_or_else(|| {
            invalid(
                format!("{f}.mac"),
                format!("{:?} is not a MAC address (aa:bb:cc:dd:ee:ff)", iface.mac),
            )
        })?;
        if let Some(j) = interfaces.iter().position(|p| p.mac == mac) {
            return Err(invalid(
                format!("{f}.mac"),
                format!("{} is also interfaces[{j}].mac", format_mac(&mac)),
            ));
        }
        let mut addresses = Vec::new();
        for (k, a) in iface.addresses.iter().enumerate() {
            let af = format!("{f}.addresses[{k}]");
            let addr = parse_ip(&format!("{af}.address"), &a.address)?;
            if addr.is_unspecified() || addr.is_multicast() {
                return Err(invalid(
                    format!("{af}.address"),
                    format!("{addr} is not a unicast address"),
                ));
            }
            let len = check_len(&format!("{af}.prefix_len"), addr, a.prefix_len)?;
            addresses.push(Prefixed { addr, len });
        }
        interfaces.push(InterfacePlan {
            name: iface.name.clone(),
            mac,
            mtu: (iface.mtu != 0).then_some(iface.mtu),
            addresses,
        });
    }

    let mut routes: Vec<RoutePlan> = Vec::new();
    for (i, r) in req.routes.iter().enumerate() {
        let f = format!("routes[{i}]");
        let destination = if r.destination.is_empty() {
            None
        } else {
            Some(parse_cidr(&format!("{f}.destination"), &r.destination)?)
        };
        let gateway = if r.gateway.is_empty() {
            None
        } else {
            Some(parse_ip(&format!("{f}.gateway"), &r.gateway)?)
        };
        let source = if r.source.is_empty() {
            None
        } else {
            Some(parse_ip(&format!("{f}.source"), &r.source)?)
        };
        let device = if r.device.is_empty() {
            None
        } else {
            if !interfaces.iter().any(|p| p.name == r.device) {
                return Err(invalid(
                    format!("{f}.device"),
                    format!(
                        "{:?} is not the name of an interface of the request",
                        r.device
                    ),
                ));
            }
            Some(r.device.clone())
        };
        // The family: the destination's, else the gateway's, else the
        // source's; `default dev eth0` alone is IPv4, as `ip route` reads it.
        let v6 = destination
            .map(|d| d.addr)
            .or(gateway)
            .or(source)
            .is_some_and(|a| a.is_ipv6());
        for (name, ip) in [("gateway", gateway), ("source", source)] {
            if let Some(ip) = ip {
                if ip.is_ipv6() != v6 {
                    return Err(invalid(
                        format!("{f}.{name}"),
                        format!(
                            "{ip} is not of the route's address family ({})",
                            if v6 { "IPv6" } else { "IPv4" }
                        ),
                    ));
                }
            }
        }
        if let Some(src) = source {
            let ours = interfaces
                .iter()
                .flat_map(|p| p.addresses.iter())
                .any(|a| a.addr == src);
            if !ours && !src.is_loopback() {
                return Err(invalid(
                    format!("{f}.source"),
                    format!("{src} is not an address of any interface of the request"),
                ));
            }
        }
        if let Some(gw) = gateway {
            if is_v6_link_local(gw) && device.is_none() {
                return Err(invalid(
                    format!("{f}.device"),
                    format!("the link-local gateway {gw} needs a device"),
                ));
            }
            check_gateway_reachable(&f, gw, device.as_deref(), &interfaces, &routes)?;
        }
        routes.push(RoutePlan {
            field: f,
            v6,
            // 0.0.0.0/0 and ::/0 are the default route.
            destination: destination.filter(|d| d.len > 0),
            gateway,
            device,
            source,
        });
    }
    Ok(Plan { interfaces, routes })
}

/// Routes are added in order, and the kernel refuses a gateway it cannot
/// reach on a link: it must be in the subnet of an address of the route's
/// interface (any interface without a device), or covered by an earlier
/// route without a gateway (a link route such as Calico's
/// `169.254.1.1 dev eth0`); IPv6 link-local gateways are always on link.
fn check_gateway_reachable(
    field: &str,
    gw: IpAddr,
    device: Option<&str>,
    interfaces: &[InterfacePlan],
    earlier: &[RoutePlan],
) -> Result<(), NetworkError> {
    if is_v6_link_local(gw) {
        return Ok(());
    }
    let same_dev = |d: Option<&str>| device.is_none() || d.is_none() || d == device;
    let on_subnet = interfaces
        .iter()
        .filter(|p| same_dev(Some(&p.name)))
        .flat_map(|p| p.addresses.iter())
        .any(|a| a.contains(gw));
    let by_link_route = earlier.iter().any(|r| {
        r.gateway.is_none()
            && r.v6 == gw.is_ipv6()
            && same_dev(r.device.as_deref())
            && r.destination.is_none_or(|d| d.contains(gw))
    });
    if on_subnet || by_link_route {
        return Ok(());
    }
    Err(invalid(
        format!("{field}.gateway"),
        format!(
            "{gw} is neither in the subnet of an address of {} nor on an earlier link route \
             (a route without gateway): link routes must come before the routes that use them",
            device.map_or("any interface".to_string(), |d| format!("interface {d}"))
        ),
    ))
}

/// The first IPv6 address or route of the plan, by field.
pub fn first_ipv6(plan: &Plan) -> Option<String> {
    for (i, iface) in plan.interfaces.iter().enumerate() {
        if let Some(k) = iface.addresses.iter().position(|a| a.addr.is_ipv6()) {
            return Some(format!("interfaces[{i}].addresses[{k}].address"));
        }
    }
    plan.routes.iter().find(|r| r.v6).map(|r| r.field.clone())
}

/// Whether the guest kernel has IPv6 (CONFIG_IPV6; the standard guest
/// kernel is built without it).
fn kernel_has_ipv6() -> bool {
    Path::new("/proc/sys/net/ipv6").exists()
}

/// For each interface of the plan, the root namespace's NIC with its MAC.
pub fn match_nics<'a>(
    interfaces: &[InterfacePlan],
    nics: &'a [Nic],
) -> Result<Vec<&'a Nic>, NetworkError> {
    let mut out = Vec::new();
    for (i, iface) in interfaces.iter().enumerate() {
        let found: Vec<&Nic> = nics.iter().filter(|n| n.mac == Some(iface.mac)).collect();
        match found.as_slice() {
            [one] => out.push(*one),
            [] => {
                let seen = nics
                    .iter()
                    .filter(|n| n.name != "lo")
                    .map(|n| match &n.mac {
                        Some(m) => format!("{} {}", n.name, format_mac(m)),
                        None => format!("{} (no MAC)", n.name),
                    })
                    .collect::<Vec<_>>();
                return Err(NetworkError::NicNotFound {
                    field: format!("interfaces[{i}].mac"),
                    mac: format_mac(&iface.mac),
                    seen: if seen.is_empty() {
                        "none".to_string()
                    } else {
                        seen.join(", ")
                    },
                });
            }
            many => {
                return Err(invalid(
                    format!("interfaces[{i}].mac"),
                    format!(
                        "{} is the MAC of several guest NICs: {}",
                        format_mac(&iface.mac),
                        many.iter()
                            .map(|n| n.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ))
            }
        }
    }
    Ok(out)
}

/// The renames that give each moved link (`index`, current name) its
/// target name, in order. Where a target is the current name of another
/// moved link (eth0 and eth1 swapped), every renamed link first gets a
/// temporary name.
pub fn rename_steps(links: &[(u32, String, String)]) -> Vec<(u32, String)> {
    let pending: Vec<&(u32, String, String)> = links.iter().filter(|l| l.1 != l.2).collect();
    let current: HashSet<&str> = links.iter().map(|l| l.1.as_str()).collect();
    let clash = pending
        .iter()
        .any(|(idx, _, target)| links.iter().any(|l| l.0 != *idx && l.1 == *target));
    let mut steps = Vec::new();
    if clash {
        let targets: HashSet<&str> = links.iter().map(|l| l.2.as_str()).collect();
        let mut n = 0u32;
        for (idx, _, _) in &pending {
            let tmp = loop {
                let t = format!("ampoule-tmp{n}");
                n += 1;
                if !current.contains(t.as_str()) && !targets.contains(t.as_str()) {
                    break t;
                }
            };
            steps.push((*idx, tmp));
        }
    }
    steps.extend(
        pending
            .iter()
            .map(|(idx, _, target)| (*idx, target.clone())),
    );
    steps
}

/// The pod network of this guest: one setup, serialised.
pub struct PodNetwork {
    path: PathBuf,
    lock: tokio::sync::Mutex<()>,
}

impl PodNetwork {
    /// `path`: where the namespace is bound (POD_NETNS_GUEST_PATH; tests use
    /// their own).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        PodNetwork {
            path: path.into(),
            lock: tokio::sync::Mutex::new(()),
        }
    }

    pub async fn setup(&self, req: &api::SetupNetworkRequest) -> Result<(), NetworkError> {
        let plan = plan(req)?;
        if let Some(field) = first_ipv6(&plan) {
            if !kernel_has_ipv6() {
                return Err(NetworkError::Unsupported {
                    field,
                    reason: "IPv6, which the guest kernel is built without (CONFIG_IPV6)".into(),
                });
            }
        }
        let _one_at_a_time = self.lock.lock().await;
        if netns::is_bound(&self.path) {
            return Err(NetworkError::AlreadyExists(self.path.clone()));
        }
        tracing::info!(
            path = %self.path.display(),
            interfaces = ?plan.interfaces.iter().map(|i| (&i.name, format_mac(&i.mac))).collect::<Vec<_>>(),
            routes = plan.routes.len(),
            "setting up the pod network"
        );
        let (tx, rx) = tokio::sync::oneshot::channel();
        let path = self.path.clone();
        // A thread of its own: it leaves the root network namespace for the
        // pod's and ends with the setup.
        std::thread::Builder::new()
            .name("pod-netns".into())
            .spawn(move || {
                let _ = tx.send(apply(&plan, &path));
            })
            .map_err(|e| NetworkError::Internal(format!("starting the pod network thread: {e}")))?;
        rx.await.map_err(|_| {
            NetworkError::Internal("the pod network thread ended without an answer".into())
        })??;
        tracing::info!(path = %self.path.display(), "pod network ready");
        Ok(())
    }
}

/// Runs the plan. Call on a thread that may change its network namespace
/// (and that starts in the root one): the caller's thread ends up in the
/// pod's namespace.
fn apply(plan: &Plan, path: &Path) -> Result<(), NetworkError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| NetworkError::Internal(format!("starting a tokio runtime: {e}")))?;
    rt.block_on(async {
        // In the root namespace: find the NICs before anything changes.
        let root = netlink::Netlink::open("root")?;
        let nics = root.links().await?;
        let moving: Vec<Nic> = match_nics(&plan.interfaces, &nics)?
            .into_iter()
            .cloned()
            .collect();
        netns::unshare_and_bind(path)?;
        let r = configure(plan, path, &root, &moving).await;
        if r.is_err() {
            // The NICs go back to the root namespace when the pod's dies,
            // which is once this thread and its sockets are gone.
            netns::unbind(path);
        }
        r
    })
}

/// In the pod's namespace (this thread's, now): lo up, the NICs moved in,
/// renamed, configured and up, then the routes.
async fn configure(
    plan: &Plan,
    path: &Path,
    root: &netlink::Netlink,
    moving: &[Nic],
) -> Result<(), NetworkError> {
    let pod = netlink::Netlink::open("pod")?;
    let lo = pod.index_of("lo").await?;
    pod.set_up(lo, "lo").await?;
    let ns = netns::open(path)?;
    for nic in moving {
        root.move_to_netns(nic, &ns).await?;
    }
    drop(ns);
    // Indexes may change on the move (a clash in the new namespace): find
    // the NICs again by MAC.
    let in_pod = pod.links().await?;
    let mut index_of: HashMap<String, u32> = HashMap::new();
    let mut renames = Vec::new();
    for (iface, nic) in match_nics(&plan.interfaces, &in_pod)?
        .into_iter()
        .zip(&plan.interfaces)
        .map(|(n, i)| (i, n))
    {
        index_of.insert(iface.name.clone(), nic.index);
        renames.push((nic.index, nic.name.clone(), iface.name.clone()));
    }
    for (index, name) in rename_steps(&renames) {
        pod.rename(index, &name).await?;
    }
    let lookup = |name: &str| {
        index_of.get(name).copied().ok_or_else(|| {
            NetworkError::Internal(format!("interface {name} vanished from the plan"))
        })
    };
    for iface in &plan.interfaces {
        let index = lookup(&iface.name)?;
        if let Some(mtu) = iface.mtu {
            pod.set_mtu(index, &iface.name, mtu).await?;
        }
        for a in &iface.addresses {
            pod.add_address(index, &iface.name, *a).await?;
        }
        pod.set_up(index, &iface.name).await?;
    }
    for r in &plan.routes {
        let oif = r.device.as_deref().map(lookup).transpose()?;
        pod.add_route(r, oif).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
