//! Telling systemd what a daemon does (`Type=notify` units, sd_notify(3)):
//! `READY=1` once it serves, `STATUS=` naming the generation served (and
//! again after every switch), `STOPPING=1`, `RELOADING=1` while it hands
//! its mount to a successor, whose `MAINPID=` makes it the unit's main
//! process; and the `/dev/fuse` descriptors kept in the unit's file
//! descriptor store (`FDSTORE=1`), so that a daemon that dies can be
//! restarted on its live mount.
//!
//! Everything here does nothing unless `NOTIFY_SOCKET` is set. A failed
//! notification is logged, never fatal: the daemon serves either way.
//!
//! The socket is connected once, by [`connect`], before the daemon
//! confines itself: a confined daemon may send on a connected socket but
//! not make one (`sandbox`).

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::sync::OnceLock;

use nexus_fs::Changes;
use nexus_fs::follow::Follower;
use rustix::net::{
    AddressFamily, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix,
    SocketFlags, SocketType,
};
use sd_notify::NotifyState;

/// `FDNAME` of the main mount's `/dev/fuse` descriptor in the store.
pub const FUSE_FD_NAME: &str = "nexus-fuse";
/// `FDNAME` of the Index mount's descriptor.
pub const INDEX_FD_NAME: &str = "nexus-index";
/// `FDNAME` of the main mount's root beneath its kernel view
/// (`--kernel-metadata`): once covered, the mount cannot be opened again
/// by its path.
pub const DATA_FD_NAME: &str = "nexus-data";

/// The connected `NOTIFY_SOCKET`, if there is one.
static SOCKET: OnceLock<Option<UnixDatagram>> = OnceLock::new();

/// True when a service manager listens (`NOTIFY_SOCKET` is set).
pub fn supervised() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some_and(|v| !v.is_empty())
}

/// Connects to `NOTIFY_SOCKET` (a path, or `@name` in the abstract
/// namespace) if it is set. Call it before the daemon confines itself;
/// later calls do nothing.
pub fn connect() {
    SOCKET.get_or_init(|| {
        let address = std::env::var_os("NOTIFY_SOCKET").filter(|v| !v.is_empty())?;
        match open(address.as_bytes()) {
            Ok(socket) => Some(socket),
            Err(e) => {
                tracing::warn!(
                    "NOTIFY_SOCKET={}: {e}; systemd will not hear from this daemon",
                    address.to_string_lossy()
                );
                None
            }
        }
    });
}

fn open(address: &[u8]) -> io::Result<UnixDatagram> {
    let address = match address.strip_prefix(b"@") {
        Some(name) => SocketAddrUnix::new_abstract_name(name)?,
        None => SocketAddrUnix::new(std::ffi::OsStr::from_bytes(address))?,
    };
    let socket: OwnedFd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::net::connect(&socket, &address)?;
    Ok(UnixDatagram::from(socket))
}

/// Sends `states` with `fds`; `Ok(false)` when there is no manager.
fn notify(states: &[NotifyState], fds: &[BorrowedFd<'_>]) -> io::Result<bool> {
    connect();
    let Some(Some(socket)) = SOCKET.get() else {
        return Ok(false);
    };
    let message: String = states.iter().map(|s| format!("{s}\n")).collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other(
            "too many descriptors for one notification",
        ));
    }
    let sent = rustix::net::sendmsg(
        socket.as_fd(),
        &[IoSlice::new(message.as_bytes())],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    if sent != message.len() {
        return Err(io::Error::other("the notification was cut short"));
    }
    Ok(true)
}

fn send(what: &str, states: &[NotifyState]) {
    if let Err(e) = notify(states, &[]) {
        tracing::warn!("telling systemd {what}: {e}");
    }
}

/// `READY=1` with `status`.
pub fn ready(status: &str) {
    send(
        "the daemon is ready",
        &[NotifyState::Ready, NotifyState::Status(status)],
    );
}

/// `MAINPID=` (this process), `READY=1` and `status`: a daemon that took
/// over from the unit's main process becomes it.
pub fn ready_as_main(status: &str) {
    send(
        "the daemon took over",
        &[
            NotifyState::MainPid(std::process::id()),
            NotifyState::Ready,
            NotifyState::Status(status),
        ],
    );
}

/// `MAINPID=` (this process) alone: sent before the previous main process
/// exits, so that systemd does not take its exit for the service's end.
pub fn main_pid() {
    send(
        "the new main process",
        &[NotifyState::MainPid(std::process::id())],
    );
}

/// `STATUS=`.
pub fn status(status: &str) {
    send("the status", &[NotifyState::Status(status)]);
}

/// `RELOADING=1` (with the time, as `Type=notify-reload` wants it): the
/// daemon hands over to a successor.
pub fn reloading() {
    let mut states = vec![NotifyState::Reloading];
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    send("a reload", &states);
}

/// `STOPPING=1`.
pub fn stopping() {
    send("the daemon stops", &[NotifyState::Stopping]);
}

/// Whether the unit keeps descriptors (`FileDescriptorStoreMax=` set:
/// systemd then says how many in `FDSTORE`).
fn has_descriptor_store() -> bool {
    std::env::var("FDSTORE")
        .ok()
        .and_then(|n| n.parse::<u32>().ok())
        .is_some_and(|n| n > 0)
}

/// Keeps `fd` in the unit's file descriptor store under `name`; true when
/// it was handed to systemd (a unit with a descriptor store).
pub fn store_fd(name: &str, fd: BorrowedFd<'_>) -> bool {
    if !supervised() || !has_descriptor_store() {
        return false;
    }
    let fd_name = format!("FDNAME={name}");
    let states = [
        NotifyState::Custom("FDSTORE=1"),
        NotifyState::Custom(&fd_name),
    ];
    match notify(&states, &[fd]) {
        Ok(sent) => sent,
        Err(e) => {
            tracing::warn!("storing {name} with systemd: {e}");
            false
        }
    }
}

/// Removes `name` from the unit's file descriptor store (a mount that
/// ended: a restart must mount afresh).
pub fn remove_fd(name: &str) {
    if !supervised() || !has_descriptor_store() {
        return;
    }
    let fd_name = format!("FDNAME={name}");
    send(
        "to forget a descriptor",
        &[
            NotifyState::Custom("FDSTOREREMOVE=1"),
            NotifyState::Custom(&fd_name),
        ],
    );
}

/// The descriptors systemd passed with their names (socket activation,
/// `LISTEN_FDS`, and the file descriptor store), each owned from now on;
/// empty when none were passed to this process.
pub fn passed_fds() -> std::io::Result<Vec<(OwnedFd, String)>> {
    let fds: Vec<(RawFd, String)> = sd_notify::listen_fds_with_names()?.collect();
    Ok(fds
        .into_iter()
        .map(|(fd, name)| {
            // SAFETY: systemd passed these descriptors to this process
            // (LISTEN_PID is ours), nothing else owns them, and each is
            // taken once: the variables are read here only.
            (
                unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) },
                name,
            )
        })
        .collect())
}

/// The daemon's status line for `generation` of `store` served on
/// `target`.
pub fn status_line(generation: Option<i64>, store: &std::path::Path, target: &str) -> String {
    match generation {
        Some(g) => format!("Serving generation {g} of {} on {target}", store.display()),
        None => format!("Serving the empty store {} on {target}", store.display()),
    }
}

/// Updates `STATUS=` when the view moves to another generation.
pub struct StatusFollower {
    /// The store, for the status line.
    pub store: std::path::PathBuf,
    /// The mount point or socket, for the status line.
    pub target: String,
}

impl Follower for StatusFollower {
    fn moved(&mut self, changes: &Changes) {
        status(&status_line(changes.to, &self.store, &self.target));
    }
}
