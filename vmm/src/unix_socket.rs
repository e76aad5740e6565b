//! Unix sockets the VMM listens on, usable by their owner only.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::Path;

use nix::sys::socket::{
    bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
};
use nix::sys::stat::{fchmod, Mode};

/// Pending connections a listener queues.
const BACKLOG: i32 = 128;

/// Binds and listens on `path` with mode 0600 whatever the umask.
///
/// Linux creates the socket file with the mode of the socket's own inode
/// (less the umask), so that inode is made 0600 before `bind`: no moment
/// exists where the file is open to others, and no process-wide umask is
/// touched.
pub fn bind_private(path: &Path) -> std::io::Result<UnixListener> {
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    fchmod(fd.as_raw_fd(), Mode::S_IRUSR | Mode::S_IWUSR)?;
    bind(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    let backlog = Backlog::new(BACKLOG).map_err(std::io::Error::from)?;
    if let Err(e) = listen(&fd, backlog) {
        let _ = std::fs::remove_file(path);
        return Err(e.into());
    }
    Ok(UnixListener::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn bound_socket_is_owner_only_and_accepts() {
        let dir = std::env::temp_dir().join(format!("ampoule-sock-ut-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("s.sock");
        let l = bind_private(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
        let _c = std::os::unix::net::UnixStream::connect(&p).unwrap();
        l.accept().unwrap();
        assert!(
            bind_private(&p).is_err(),
            "an existing path is not replaced"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
