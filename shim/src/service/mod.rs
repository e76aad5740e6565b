//! containerd's services implemented by the shim.
pub mod task;
