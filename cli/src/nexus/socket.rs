//! Listening unix sockets with the permissions asked for from the moment
//! they exist: the vhost-user socket (whoever connects reads the whole
//! store, past every file's permissions) and the takeover socket (whoever
//! connects gets the mount).

use std::ffi::CString;
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
/// `mode`, and group `group` if given. A socket file already at `path`
/// (left by a daemon that died) is replaced; any other file is refused.
///
/// The mode is set on the socket before it is bound, so the file never
/// exists with looser permissions (Linux creates a socket's file with the
/// socket's own mode, less the umask); the group is set right after, before
/// anyone is accepted, and the mode again (the umask may have cleared bits
/// the group needs).
pub fn bind(path: &Path, mode: u32, group: Option<u32>) -> Result<UnixListener> {
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
    if let Some(gid) = group {
        rustix::fs::chown(path, None, Some(rustix::fs::Gid::from_raw(gid)))
            .with_context(|| format!("giving {} to group {gid}", path.display()))?;
    }
    rustix::fs::chmod(path, Mode::from_raw_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    rustix::net::listen(&socket, BACKLOG)
        .with_context(|| format!("listening on {}", path.display()))?;
    Ok(UnixListener::from(socket))
}

/// The group id of `group`: a number, or a name from the group database.
pub fn group_id(group: &str) -> Result<u32> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let name = CString::new(group).with_context(|| format!("group name {group:?}"))?;
    let mut entry = std::mem::MaybeUninit::<libc::group>::uninit();
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call: the name is
    // NUL-terminated, the entry and buffer are ours with their real sizes.
    let rc = unsafe {
        libc::getgrnam_r(
            name.as_ptr(),
            entry.as_mut_ptr(),
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut found,
        )
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc))
            .with_context(|| format!("looking up group {group}"));
    }
    if found.is_null() {
        bail!("no group named {group}");
    }
    // SAFETY: getgrnam_r succeeded and filled `entry` (found points at it).
    Ok(unsafe { entry.assume_init() }.gr_gid)
}

/// Parses an octal mode such as `0660` (`--socket-mode`).
pub fn parse_mode(text: &str) -> std::result::Result<u32, String> {
    let mode = u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .map_err(|_| format!("{text:?} is not an octal mode such as 0660"))?;
    if mode > 0o777 {
        return Err(format!("{text} has bits beyond 0777"));
    }
    Ok(mode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_mode_holds_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let _listener = bind(&path, 0o600, None).unwrap();
        let mode = std::fs::symlink_metadata(&path)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o600);
        // A stale socket is replaced; a regular file is not.
        drop(_listener);
        let again = bind(&path, 0o660, Some(0)).unwrap();
        let mode = std::fs::symlink_metadata(&path)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o660);
        drop(again);
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(bind(&file, 0o600, None).is_err());
        assert_eq!(std::fs::read(&file).unwrap(), b"x");
    }

    #[test]
    fn modes_and_groups_parse() {
        assert_eq!(parse_mode("0600"), Ok(0o600));
        assert_eq!(parse_mode("660"), Ok(0o660));
        assert!(parse_mode("0800").is_err());
        assert!(parse_mode("7777").is_err());
        assert_eq!(group_id("0").unwrap(), 0);
        assert_eq!(group_id("root").unwrap(), 0);
        assert!(group_id("no-such-group-here").is_err());
    }
}
