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

use std::os::fd::{BorrowedFd, OwnedFd, RawFd};

use nexus_fs::Changes;
use nexus_fs::follow::Follower;
use sd_notify::NotifyState;

/// `FDNAME` of the main mount's `/dev/fuse` descriptor in the store.
pub const FUSE_FD_NAME: &str = "nexus-fuse";
/// `FDNAME` of the Index mount's descriptor.
pub const INDEX_FD_NAME: &str = "nexus-index";

/// True when a service manager listens (`NOTIFY_SOCKET` is set).
pub fn supervised() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some_and(|v| !v.is_empty())
}

fn send(what: &str, states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
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

/// Keeps `fd` in the unit's file descriptor store under `name` (needs
/// `FileDescriptorStoreMax=` in the unit; the manager ignores it
/// otherwise).
pub fn store_fd(name: &str, fd: BorrowedFd<'_>) {
    if !supervised() {
        return;
    }
    if let Err(e) =
        sd_notify::notify_with_fds(&[NotifyState::FdStore, NotifyState::FdName(name)], &[fd])
    {
        tracing::warn!("storing {name} with systemd: {e}");
    }
}

/// Removes `name` from the unit's file descriptor store (a mount that
/// ended: a restart must mount afresh).
pub fn remove_fd(name: &str) {
    if !supervised() {
        return;
    }
    send(
        "to forget a descriptor",
        &[NotifyState::FdStoreRemove, NotifyState::FdName(name)],
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
