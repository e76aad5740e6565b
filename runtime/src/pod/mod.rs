//! The pod service's resources. Each resource a sandbox holds has a folder
//! of its own: `share_fs` is the pod's shared directory (container root
//! filesystems and bind mounts, served to the guest by virtiofsd).

pub mod cgroups;
pub mod guest;
pub mod network;
pub mod record;
pub mod share_fs;
