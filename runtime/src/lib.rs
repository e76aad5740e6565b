//! ampoule-runtime: the host side of Ampoule.
//!
//! - [`config`]: the TOML configuration.
//! - [`host`]: what the host offers and which backend runs a sandbox.
//! - [`host_cgroup`]: placing VM processes in `linux.cgroupsPath` on the host.
//! - [`hypervisor`]: the `Hypervisor` interface, `qemu` and `ampoule` backends.
//! - [`vsock`]: hybrid vsock (host side) and the agent's readiness signal.
//! - [`agent_client`]: the ttrpc client of the guest agent.
//! - [`sandbox`]: [`Sandbox::start`] / [`Sandbox::stop`].
//! - [`check`]: the report behind `ampoule check`.
//! - [`jail`]: the confinement of the VM's host processes.
//! - [`oci_hooks`]: the OCI hooks the host runs (prestart, createRuntime,
//!   poststart, poststop).
//! - [`text`]: error chains and guest strings as a person reads them.

pub mod agent_client;
pub mod check;
pub mod config;
pub mod container;
pub mod host;
pub mod host_cgroup;
pub mod hypervisor;
pub mod jail;
pub mod oci_hooks;
pub mod pod;
pub mod process;
pub mod sandbox;
pub mod state;
pub mod text;
pub mod vsock;

pub use ampoule_agent_api as api;
pub use config::{Config, HypervisorKind};
pub use sandbox::{BootTimings, Sandbox, SandboxError, SandboxSpec, StopReport};
