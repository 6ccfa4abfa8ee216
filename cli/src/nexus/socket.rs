//! Listening unix sockets with the permissions asked for from the moment
//! they exist: the takeover socket (whoever connects gets the mount). The
//! mode is set on the socket before `bind`, not through the umask, which
//! is the whole process's and the daemon has threads by then. (The
//! vhost-user socket is `nexus_virtiofs::bind`'s, bound before threads.)

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::Path;

use anyhow::{Context, Result, bail};
use rustix::fs::Mode;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

/// Connections waiting to be accepted.
const BACKLOG: i32 = 64;

/// Binds and listens on a unix socket at `path` whose file has mode
/// `mode`. A socket file already at `path`
/// (left by a daemon that died) is replaced; any other file is refused.
///
/// The mode is set on the socket before it is bound, so the file never
/// exists with looser permissions (Linux creates a socket's file with the
/// socket's own mode, less the umask), and on the file right after (the
/// umask may have cleared bits asked for).
pub fn bind(path: &Path, mode: u32) -> Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?,
        Ok(_) => bail!(
            "{} exists and is not a socket: refusing to replace it",
            path.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("{}", path.display())),
    }
    let socket: OwnedFd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .context("creating a unix socket")?;
    rustix::fs::fchmod(&socket, Mode::from_raw_mode(mode)).context("setting the socket's mode")?;
    let address = SocketAddrUnix::new(path).with_context(|| {
        format!(
            "{}: not usable as a socket path (too long?)",
            path.display()
        )
    })?;
    rustix::net::bind(&socket, &address).with_context(|| format!("binding {}", path.display()))?;
    rustix::fs::chmod(path, Mode::from_raw_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    rustix::net::listen(&socket, BACKLOG)
        .with_context(|| format!("listening on {}", path.display()))?;
    Ok(UnixListener::from(socket))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_mode_holds_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let _listener = bind(&path, 0o600).unwrap();
        let mode = std::fs::symlink_metadata(&path)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o600);
        // A stale socket is replaced; a regular file is not.
        drop(_listener);
        let again = bind(&path, 0o660).unwrap();
        let mode = std::fs::symlink_metadata(&path)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o660);
        drop(again);
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(bind(&file, 0o600).is_err());
        assert_eq!(std::fs::read(&file).unwrap(), b"x");
    }
}
