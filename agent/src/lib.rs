//! ampoule-agent's library: everything the agent binary runs, and what its
//! fuzz targets feed with hostile input (the intake of a container spec and
//! of a process spec, `container::intake`).

pub mod container;
pub mod init;
pub mod logging;
pub mod network;
pub mod peer;
pub mod ready;
pub mod reaper;
pub mod server;
pub mod stdio;
pub mod syscall;
pub mod sysinfo;

/// argv[1] that turns the agent binary into the container process helper.
pub const HELPER_ARG: &str = "__container-init";
