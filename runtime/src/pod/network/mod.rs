//! Pod networking, Kata's tc-redirect model. The pod's network namespace on
//! the host (made by containerd's CRI and configured by CNI, or by podman
//! with netavark) keeps its interfaces; for each one the runtime adds a tap
//! there with tc redirects both ways ([`tap`]), hands the tap to the VMM as
//! a file descriptor, and the agent gives the guest NIC the interface's
//! MAC, MTU, addresses and routes in the pod's guest network namespace.
//! CNI plugins, which only see their veth, work unchanged; nothing in the
//! host's own network namespace is touched.

pub mod inspect;
pub mod netns;
pub mod tap;

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

pub use inspect::{HostInterface, HostRoute};

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("pod network namespace {path}: {reason}")]
    Netns { path: PathBuf, reason: String },
    #[error("{what}: {reason}")]
    Command { what: String, reason: String },
    #[error("tap {name}: {reason}")]
    Tap { name: String, reason: String },
}

/// One interface of the pod and its tap.
#[derive(Debug)]
pub struct Endpoint {
    pub interface: HostInterface,
    pub tap: String,
    tap_fd: Option<OwnedFd>,
}

/// The pod's network as the sandbox holds it.
#[derive(Debug)]
pub struct PodNetwork {
    netns: PathBuf,
    pub endpoints: Vec<Endpoint>,
    pub routes: Vec<HostRoute>,
}

impl PodNetwork {
    /// Reads the pod's namespace at `netns` and connects a tap to each of
    /// its interfaces. On error nothing of it is left.
    pub fn attach(netns: &Path) -> Result<PodNetwork, NetworkError> {
        let (interfaces, routes) = inspect::read(netns, &tap::is_tap)?;
        let mut net = PodNetwork {
            netns: netns.to_path_buf(),
            endpoints: Vec::new(),
            routes,
        };
        for (n, interface) in interfaces.into_iter().enumerate() {
            let name = tap::tap_name(n);
            let fd = tap::create(netns, &name)?;
            let connected = tap::connect(netns, &interface.name, &name, interface.mtu);
            net.endpoints.push(Endpoint {
                interface,
                tap: name,
                tap_fd: Some(fd),
            });
            if let Err(e) = connected {
                net.detach();
                return Err(e);
            }
        }
        tracing::info!(
            netns = %netns.display(),
            interfaces = net.endpoints.len(),
            routes = net.routes.len(),
            "pod network attached"
        );
        Ok(net)
    }

    /// The namespace path.
    pub fn netns(&self) -> &Path {
        &self.netns
    }

    /// (tap descriptor, MAC) of each endpoint, for the VMM.
    pub fn tap_fds(&self) -> Vec<(RawFd, String)> {
        self.endpoints
            .iter()
            .filter_map(|e| {
                e.tap_fd
                    .as_ref()
                    .map(|f| (f.as_raw_fd(), e.interface.mac.clone()))
            })
            .collect()
    }

    /// Closes our descriptors of the taps: from now on they live as long
    /// as the VM process that holds them.
    pub fn release_taps(&mut self) {
        for e in &mut self.endpoints {
            e.tap_fd = None;
        }
    }

    /// The host interface names (for cleanup records).
    pub fn interface_names(&self) -> Vec<String> {
        self.endpoints
            .iter()
            .map(|e| e.interface.name.clone())
            .collect()
    }

    /// Removes the redirects from the pod's interfaces.
    pub fn detach(&mut self) {
        self.release_taps();
        detach(&self.netns, &self.interface_names());
    }
}

/// Removes the redirects of `interfaces` in the namespace at `netns`
/// (cleanup by record after a crash too).
pub fn detach(netns: &Path, interfaces: &[String]) {
    for i in interfaces {
        tap::disconnect(netns, i);
    }
}
