//! Mounting a `fuser` file system, or adopting one another process mounted
//! (a takeover), and what other threads need while it is served:
//! unmounting it, and telling the kernel what became stale.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fuser::{
    Config, Filesystem, INodeNo, MountOption, Notifier, Session, SessionACL, SessionUnmounter,
};

use std::sync::Arc;

use crate::changes::Invalidation;
use crate::lookups::Lookups;

/// How a view is mounted.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// Let every user (not only the one mounting) use the mount
    /// (`allow_other`; for a non-root user it needs `user_allow_other` in
    /// `/etc/fuse.conf`).
    pub allow_other: bool,
    /// Request threads (at least 1).
    pub threads: usize,
    /// Honour setuid and setgid bits of programs run from the mount (only
    /// root can mount so).
    pub suid: bool,
    /// The mount's source as mount tables show it (`findmnt`'s SOURCE):
    /// the store directory.
    pub source: PathBuf,
    /// How far ahead the kernel reads a file read sequentially, in KiB
    /// (see [`super::set_read_ahead`]); 0 leaves the kernel's default.
    /// Set when the mount is made (by root); a mount taken over keeps it.
    pub read_ahead_kib: u32,
}

/// The read-ahead window of a `/Programs` mount, in KiB: wide enough that
/// the kernel asks for a large file 1 MiB (the most one request carries)
/// at a time with several requests in flight, which lets every core decode.
/// Reads of scattered pages (a program's page faults) are not widened by
/// it: the kernel reads ahead only around what it sees read sequentially.
pub const READ_AHEAD_KIB: u32 = 4096;

/// A mounted file system, not yet serving requests.
pub struct Mounted<FS: Filesystem> {
    session: Session<FS>,
    mountpoint: PathBuf,
    /// What the kernel holds of a view's package inodes (the `/Programs`
    /// mount; not the Index).
    pub(super) lookups: Option<Arc<Lookups>>,
    /// Whether fuser knows the mount (it made it) and unmounts it itself;
    /// an adopted one is unmounted by path.
    own_mount: bool,
}

/// The source name given to `fusermount3` when the store path cannot be
/// (it passes options comma-separated, unescaped).
const PLAIN_SOURCE: &str = "nexus";

/// The `fsname=` of a mount of `source`.
fn fsname(source: &Path, by_root: bool) -> String {
    let text = source.to_string_lossy();
    // mount(2) takes the source as its own argument, but fusermount3 gets
    // it inside the comma-separated option string.
    if text.is_empty() || (!by_root && text.contains([',', '\\'])) {
        PLAIN_SOURCE.to_string()
    } else {
        text.into_owned()
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Mounts `fs` read-only at `mountpoint` as type `fuse.SUBTYPE`. When this
/// returns the kernel has completed the FUSE handshake: the mount exists,
/// and requests are served once [`Mounted::run`] is called.
pub(super) fn mount<FS: Filesystem>(
    fs: FS,
    mountpoint: &Path,
    subtype: &str,
    options: &MountOptions,
) -> io::Result<Mounted<FS>> {
    let mut config = session_config(options);
    config.mount_options = vec![
        // The store as the source and `fuse.SUBTYPE` as the type, as
        // findmnt shows them; `nexus umount` recognises nexus mounts by the
        // type.
        MountOption::FSName(fsname(&options.source, is_root())),
        MountOption::Subtype(subtype.into()),
        MountOption::RO,
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
        MountOption::NoDev,
        if options.suid {
            MountOption::Suid
        } else {
            MountOption::NoSuid
        },
    ];
    let session = Session::new(fs, mountpoint, &config)?;
    if options.read_ahead_kib > 0
        && let Err(e) = super::set_read_ahead(mountpoint, options.read_ahead_kib)
    {
        // Only root may write sysfs; the mount works with the default.
        let mountpoint = mountpoint.display();
        if is_root() {
            tracing::warn!("read-ahead of {mountpoint} left at the kernel's default: {e}");
        } else {
            tracing::debug!("read-ahead of {mountpoint} left at the kernel's default: {e}");
        }
    }
    Ok(Mounted {
        session,
        mountpoint: mountpoint.to_path_buf(),
        lookups: None,
        own_mount: true,
    })
}

/// The session settings of `options` (everything but the mount options).
fn session_config(options: &MountOptions) -> Config {
    let mut config = Config::default();
    if options.allow_other {
        config.acl = SessionACL::All;
    }
    config.n_threads = Some(options.threads.max(1));
    // Every request thread reads from the one descriptor, none from a clone
    // of it: the kernel ends (with an error to the reader) the requests
    // read through a cloned descriptor when it is closed, so a daemon that
    // hands its mount over and exits would fail the requests its threads
    // held. With one descriptor, which the successor holds too, they stay
    // pending and are sent again (`Mounted::resend`).
    config.clone_fd = false;
    config
}

/// Adopts the mount at `mountpoint` whose `/dev/fuse` descriptor `device`
/// another process handed over (a takeover, or systemd's file descriptor
/// store): the connection is live and initialised, so no mount and no
/// handshake happen. Requests are served once [`Mounted::run`] is called;
/// call [`Mounted::resend`] first, once the previous server is gone.
pub(super) fn adopt<FS: Filesystem>(
    fs: FS,
    device: OwnedFd,
    mountpoint: &Path,
    options: &MountOptions,
) -> Mounted<FS> {
    let config = session_config(options);
    let acl = config.acl;
    Mounted {
        session: Session::from_initialized_fd(fs, device, acl, config),
        mountpoint: mountpoint.to_path_buf(),
        lookups: None,
        own_mount: false,
    }
}

impl<FS: Filesystem> Mounted<FS> {
    /// Something another thread can unmount with (e.g. on SIGTERM).
    pub fn unmounter(&mut self) -> Unmounter {
        Unmounter {
            session: self.own_mount.then(|| self.session.unmount_callable()),
            mountpoint: self.mountpoint.clone(),
        }
    }

    /// A duplicate of the mount's `/dev/fuse` descriptor: what a successor
    /// needs to serve the mount ([`adopt`]), and what systemd's file
    /// descriptor store keeps. The connection lives while any duplicate
    /// is open.
    pub fn device(&self) -> io::Result<OwnedFd> {
        self.session.as_fd().try_clone_to_owned()
    }

    /// Asks the kernel to queue again the requests read from this
    /// connection and never answered (`FUSE_NOTIFY_RESEND`, Linux 6.9):
    /// those the previous server held when it went. Harmless when there
    /// are none; an error on kernels without it.
    pub fn resend(&self) -> io::Result<()> {
        self.session.notifier().resend()
    }

    /// The session's notifier, for the adapters' own threads.
    pub(super) fn notifier(&self) -> Notifier {
        self.session.notifier()
    }

    /// Something another thread can invalidate the kernel's caches with.
    pub fn invalidator(&self) -> Invalidator {
        Invalidator {
            notifier: self.session.notifier(),
            again: Vec::new(),
        }
    }

    /// Serves requests until the file system is unmounted.
    pub fn run(self) -> io::Result<()> {
        self.session.run()
    }
}

/// How long after a move its invalidations are sent once more. A request
/// answered from the generation shown before the move whose reply reached
/// the kernel after the move's notifications (a request thread delayed
/// between the two) cached a stale answer; sending everything again this
/// much later drops it. Generation-bound answers get long lifetimes
/// ([`super::GENERATION_TTL`]), so this, not a lifetime, bounds how long
/// such a raced answer can live.
pub const RESEND_AFTER: Duration = Duration::from_secs(5);

/// Tells the kernel which of its cached answers became stale (a
/// generation change: [`crate::Changes`], or the Index's changes), so that
/// a switch shows at once instead of when they expire.
///
/// Call it after the view has moved (never before: the kernel would ask
/// again and cache the old answers anew), and never from a request handler:
/// dropping a name waits for the lookups in progress in its directory.
/// As a [`crate::follow::Follower`] it also sends each move's
/// invalidations again [`RESEND_AFTER`] later, and retries those that
/// failed on the next turn of the loop.
#[derive(Clone, Debug)]
pub struct Invalidator {
    notifier: Notifier,
    /// Invalidations to send again, each batch with when it is due.
    again: Vec<(Instant, Vec<Invalidation>)>,
}

impl Invalidator {
    /// Sends one notification per invalidation, all of them even if some
    /// fail; returns how many were sent. Names the kernel has not cached are
    /// no error. The error, if any, counts the failures and carries the
    /// first.
    pub fn send(&self, all: &[Invalidation]) -> io::Result<usize> {
        self.send_keeping_failures(all).map_err(|(_, e)| e)
    }

    /// [`Invalidator::send`], returning with the error the invalidations
    /// that failed.
    fn send_keeping_failures(
        &self,
        all: &[Invalidation],
    ) -> Result<usize, (Vec<Invalidation>, io::Error)> {
        let mut failed = Vec::new();
        let mut first = None;
        for invalidation in all {
            let sent = match invalidation {
                Invalidation::Entry { parent, name } => self
                    .notifier
                    .inval_entry(INodeNo(*parent), OsStr::from_bytes(name)),
                // Offset 0, length 0: the attributes and every cached page
                // (a directory's cached listing, a link's cached target).
                Invalidation::Inode(ino) => self.notifier.inval_inode(INodeNo(*ino), 0, 0),
            };
            if let Err(e) = sent {
                failed.push(invalidation.clone());
                first.get_or_insert(e);
            }
        }
        match first {
            None => Ok(all.len()),
            Some(e) => {
                let error = io::Error::new(
                    e.kind(),
                    format!(
                        "{} of {} cache invalidations failed, the first with: {e}",
                        failed.len(),
                        all.len()
                    ),
                );
                Err((failed, error))
            }
        }
    }

    /// Sends `all` now and once more [`RESEND_AFTER`] later; failures are
    /// retried on the next turn. Returns how many were sent now.
    pub fn send_and_repeat(&mut self, all: Vec<Invalidation>) -> io::Result<usize> {
        let sent = self.send_retrying(&all);
        self.again.push((Instant::now() + RESEND_AFTER, all));
        sent
    }

    /// Sends `all`, keeping those that failed for the next turn.
    fn send_retrying(&mut self, all: &[Invalidation]) -> io::Result<usize> {
        match self.send_keeping_failures(all) {
            Ok(sent) => Ok(sent),
            Err((failed, e)) => {
                self.again.push((Instant::now(), failed));
                Err(e)
            }
        }
    }

    /// Sends the invalidations that are due again (see
    /// [`Invalidator::send_and_repeat`]).
    pub fn send_due(&mut self) {
        let now = Instant::now();
        if self.again.iter().all(|(due, _)| *due > now) {
            return;
        }
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.again)
            .into_iter()
            .partition(|(due, _)| *due <= now);
        self.again = later;
        for (_, batch) in due {
            if let Err(e) = self.send_retrying(&batch) {
                tracing::warn!("{e}; retrying on the next turn");
            }
        }
    }
}

impl crate::follow::Follower for Invalidator {
    fn moved(&mut self, changes: &crate::Changes) {
        let started = Instant::now();
        match self.send_and_repeat(changes.invalidations()) {
            Ok(sent) => {
                tracing::info!("{sent} cache invalidations sent in {:?}", started.elapsed())
            }
            Err(e) => tracing::warn!("{e}; retrying on the next turn"),
        }
    }

    fn grace_ended(&mut self, later: &[Invalidation]) {
        if let Err(e) = self.send_retrying(later) {
            tracing::warn!("dropping removed names: {e}; retrying on the next turn");
        }
    }

    fn tick(&mut self) {
        self.send_due();
    }
}

/// How an unmount went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unmounted {
    /// The mount is gone and the session ends now.
    Clean,
    /// The mount was busy: it was detached (gone from the tree at once), and
    /// the session ends when the last file open in it is closed.
    Detached,
}

/// Unmounts a [`Mounted`] file system from another thread.
pub struct Unmounter {
    /// fuser's, for a mount fuser made; `None` for an adopted one.
    session: Option<SessionUnmounter>,
    mountpoint: PathBuf,
}

impl Unmounter {
    /// Unmounts; a busy mount is detached lazily instead of failing, so no
    /// dead mount is left behind once the session ends.
    pub fn unmount(&mut self) -> io::Result<Unmounted> {
        let unmounted = match &mut self.session {
            Some(session) => session.unmount(),
            None => unmount_path(&self.mountpoint),
        };
        match unmounted {
            Ok(()) => Ok(Unmounted::Clean),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                detach(&self.mountpoint)?;
                Ok(Unmounted::Detached)
            }
            Err(e) => Err(e),
        }
    }
}

/// Unmounts whatever is mounted at `mountpoint`: as root with `umount2`,
/// otherwise through `fusermount3 -u`.
fn unmount_path(mountpoint: &Path) -> io::Result<()> {
    let path = std::ffi::CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: a valid NUL-terminated path; umount2 has no other preconditions.
    if unsafe { libc::umount2(path.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EPERM) {
        return Err(err);
    }
    fusermount(mountpoint, false)
}

/// Lazily unmounts whatever is mounted at `mountpoint` (`umount -l`): as
/// root with `umount2(MNT_DETACH)`, otherwise through `fusermount3 -uz`.
pub fn detach(mountpoint: &Path) -> io::Result<()> {
    let path = std::ffi::CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: a valid NUL-terminated path; umount2 has no other preconditions.
    if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EPERM) {
        return Err(err);
    }
    fusermount(mountpoint, true)
}

/// Unmounts with the setuid helper `fusermount3` (or `fusermount`), as a
/// user who mounted without being root must.
pub fn fusermount(mountpoint: &Path, lazy: bool) -> io::Result<()> {
    let flags = if lazy { "-uz" } else { "-u" };
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no fusermount3 or fusermount");
    for helper in ["fusermount3", "fusermount"] {
        match std::process::Command::new(helper)
            .arg(flags)
            .arg("--")
            .arg(mountpoint)
            .output()
        {
            Ok(out) if out.status.success() => return Ok(()),
            Ok(out) => {
                return Err(io::Error::other(format!(
                    "{helper} {flags} {}: {}",
                    mountpoint.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}
