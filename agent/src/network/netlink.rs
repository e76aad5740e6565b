//! Links, addresses and routes over rtnetlink, one small call each.
//!
//! A [`Netlink`] acts in the network namespace of the thread that opened
//! it, for as long as it lives; it must be opened inside a tokio runtime
//! (its connection task is spawned there).

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsRawFd;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressHeaderFlags;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{RouteMessage, RouteScope};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{LinkUnspec, RouteMessageBuilder};

use super::{format_mac, Nic, Prefixed, RoutePlan};

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("opening a netlink socket in the {ns} network namespace: {source}")]
    Open {
        ns: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {reason}")]
    Request { what: String, reason: String },
}

fn reason(e: rtnetlink::Error) -> String {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io().to_string(),
        // Its Display dumps the whole message.
        rtnetlink::Error::UnexpectedMessage(m) => {
            format!(
                "unexpected netlink message (type {})",
                m.header.message_type
            )
        }
        other => other.to_string(),
    }
}

fn failed(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let what = what.into();
    move |e| NetlinkError::Request {
        what,
        reason: reason(e),
    }
}

/// A link as [`Nic`]: index, name, and the MAC when it has an Ethernet one.
pub fn nic_of(msg: &LinkMessage) -> Nic {
    let mut nic = Nic {
        index: msg.header.index,
        name: String::new(),
        mac: None,
    };
    for a in &msg.attributes {
        match a {
            LinkAttribute::IfName(n) => nic.name = n.clone(),
            LinkAttribute::Address(m) => nic.mac = <[u8; 6]>::try_from(m.as_slice()).ok(),
            _ => {}
        }
    }
    nic
}

/// The RTM_NEWROUTE message of a planned route; `oif` is its device's
/// index in the pod's namespace. As `ip route`: an IPv4 route without
/// gateway is scope link.
pub fn route_message(r: &RoutePlan, oif: Option<u32>) -> Result<RouteMessage, NetlinkError> {
    let bad = |reason: String| NetlinkError::Request {
        what: format!("building {}", r.field),
        reason,
    };
    let mut b = RouteMessageBuilder::<IpAddr>::new();
    b.get_mut().header.address_family = if r.v6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    if let Some(d) = r.destination {
        b = b
            .destination_prefix(d.addr, d.len)
            .map_err(|e| bad(e.to_string()))?;
    }
    if let Some(gw) = r.gateway {
        b = b.gateway(gw).map_err(|e| bad(e.to_string()))?;
    } else if !r.v6 {
        b = b.scope(RouteScope::Link);
    }
    if let Some(src) = r.source {
        b = b.pref_source(src).map_err(|e| bad(e.to_string()))?;
    }
    if let Some(oif) = oif {
        b = b.output_interface(oif);
    }
    Ok(b.build())
}

/// How a route reads in logs and errors: `default via 10.0.0.1 dev eth0`.
pub fn describe_route(r: &RoutePlan) -> String {
    let mut s = r
        .destination
        .map_or_else(|| "default".to_string(), |d| d.to_string());
    if let Some(gw) = r.gateway {
        s += &format!(" via {gw}");
    }
    if let Some(d) = &r.device {
        s += &format!(" dev {d}");
    }
    if let Some(src) = r.source {
        s += &format!(" src {src}");
    }
    s
}

/// An rtnetlink handle in one network namespace.
pub struct Netlink {
    handle: rtnetlink::Handle,
    ns: &'static str,
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace (`ns` names
    /// it in errors) and spawns its connection on the current runtime.
    pub fn open(ns: &'static str) -> Result<Netlink, NetlinkError> {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|source| NetlinkError::Open { ns, source })?;
        tokio::spawn(conn);
        Ok(Netlink { handle, ns })
    }

    /// Every link of the namespace.
    pub async fn links(&self) -> Result<Vec<Nic>, NetlinkError> {
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(failed(format!(
                "listing the links of the {} network namespace",
                self.ns
            )))?;
        Ok(msgs.iter().map(nic_of).collect())
    }

    pub async fn index_of(&self, name: &str) -> Result<u32, NetlinkError> {
        let what = format!("finding {name} in the {} network namespace", self.ns);
        let msg = self
            .handle
            .link()
            .get()
            .match_name(name)
            .execute()
            .try_next()
            .await
            .map_err(failed(what.clone()))?;
        msg.map(|m| m.header.index)
            .ok_or_else(|| NetlinkError::Request {
                what,
                reason: "no such link".into(),
            })
    }

    /// Moves `nic` (a link of this namespace) into the namespace of `netns`.
    pub async fn move_to_netns(&self, nic: &Nic, netns: &File) -> Result<(), NetlinkError> {
        tracing::debug!(nic = %nic.name, index = nic.index, "moving into the pod network namespace");
        self.handle
            .link()
            .change(
                LinkUnspec::new_with_index(nic.index)
                    .setns_by_fd(netns.as_raw_fd())
                    .build(),
            )
            .execute()
            .await
            .map_err(failed(format!(
                "moving {} ({}) into the pod network namespace",
                nic.name,
                nic.mac.as_ref().map(format_mac).unwrap_or_default()
            )))
    }

    pub async fn rename(&self, index: u32, name: &str) -> Result<(), NetlinkError> {
        tracing::debug!(index, name, "renaming link");
        self.handle
            .link()
            .change(LinkUnspec::new_with_index(index).name(name).build())
            .execute()
            .await
            .map_err(failed(format!("renaming link {index} to {name}")))
    }

    pub async fn set_mtu(&self, index: u32, name: &str, mtu: u32) -> Result<(), NetlinkError> {
        tracing::debug!(name, mtu, "setting MTU");
        self.handle
            .link()
            .change(LinkUnspec::new_with_index(index).mtu(mtu).build())
            .execute()
            .await
            .map_err(failed(format!("setting the MTU of {name} to {mtu}")))
    }

    pub async fn set_up(&self, index: u32, name: &str) -> Result<(), NetlinkError> {
        tracing::debug!(name, "link up");
        self.handle
            .link()
            .change(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(failed(format!("bringing {name} up")))
    }

    /// Adds `a` to the link. IPv6 addresses skip duplicate address
    /// detection (IFA_F_NODAD): they are the pod's, already checked on the
    /// host, and a tentative address would fail routes and binds for a
    /// while.
    pub async fn add_address(
        &self,
        index: u32,
        name: &str,
        a: Prefixed,
    ) -> Result<(), NetlinkError> {
        tracing::debug!(name, address = %a, "adding address");
        let mut req = self.handle.address().add(index, a.addr, a.len);
        if a.addr.is_ipv6() {
            req.message_mut().header.flags |= AddressHeaderFlags::Nodad;
        }
        req.execute()
            .await
            .map_err(failed(format!("adding {a} to {name}")))
    }

    pub async fn add_route(&self, r: &RoutePlan, oif: Option<u32>) -> Result<(), NetlinkError> {
        let text = describe_route(r);
        tracing::debug!(route = %text, "adding route");
        let msg = route_message(r, oif)?;
        self.handle
            .route()
            .add(msg)
            .execute()
            .await
            .map_err(failed(format!("adding {} ({text})", r.field)))
    }
}
