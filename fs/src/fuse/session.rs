//! Mounting a `fuser` file system, and what other threads need while it is
//! served: unmounting it, and telling the kernel what became stale.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

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
}

/// A mounted file system, not yet serving requests.
pub struct Mounted<FS: Filesystem> {
    session: Session<FS>,
    mountpoint: PathBuf,
    /// What the kernel holds of a view's package inodes (the `/Programs`
    /// mount; not the Index).
    pub(super) lookups: Option<Arc<Lookups>>,
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
    let mut config = Config::default();
    config.mount_options = vec![
        // `nexus umount` recognises nexus mounts by this source name.
        MountOption::FSName("nexus".into()),
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
    if options.allow_other {
        config.acl = SessionACL::All;
    }
    config.n_threads = Some(options.threads.max(1));
    config.clone_fd = true;
    let session = Session::new(fs, mountpoint, &config)?;
    Ok(Mounted {
        session,
        mountpoint: mountpoint.to_path_buf(),
        lookups: None,
    })
}

impl<FS: Filesystem> Mounted<FS> {
    /// Something another thread can unmount with (e.g. on SIGTERM).
    pub fn unmounter(&mut self) -> Unmounter {
        Unmounter {
            session: self.session.unmount_callable(),
            mountpoint: self.mountpoint.clone(),
        }
    }

    /// Something another thread can invalidate the kernel's caches with.
    pub fn invalidator(&self) -> Invalidator {
        Invalidator {
            notifier: self.session.notifier(),
        }
    }

    /// Serves requests until the file system is unmounted.
    pub fn run(self) -> io::Result<()> {
        self.session.run()
    }
}

/// Tells the kernel which of its cached answers became stale (a
/// generation change: [`crate::Changes`], or the Index's changes), so that
/// a switch shows at once instead of when they expire.
///
/// Call it after the view has moved (never before: the kernel would ask
/// again and cache the old answers anew), and never from a request handler:
/// dropping a name waits for the lookups in progress in its directory.
#[derive(Clone, Debug)]
pub struct Invalidator {
    notifier: Notifier,
}

impl Invalidator {
    /// Sends one notification per invalidation, all of them even if some
    /// fail; returns how many were sent. Names the kernel has not cached are
    /// no error. The error, if any, counts the failures and carries the
    /// first.
    pub fn send(&self, all: &[Invalidation]) -> io::Result<usize> {
        let mut failed = 0usize;
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
                failed += 1;
                first.get_or_insert(e);
            }
        }
        match first {
            None => Ok(all.len()),
            Some(e) => Err(io::Error::new(
                e.kind(),
                format!(
                    "{failed} of {} cache invalidations failed, the first with: {e}",
                    all.len()
                ),
            )),
        }
    }
}

impl crate::follow::Follower for Invalidator {
    fn moved(&mut self, changes: &crate::Changes) {
        let started = std::time::Instant::now();
        match self.send(&changes.invalidations()) {
            Ok(sent) => {
                tracing::info!("{sent} cache invalidations sent in {:?}", started.elapsed())
            }
            // The kernel's answers expire on their own within the TTL.
            Err(e) => tracing::warn!(
                "{e}; stale answers may remain for up to {:?}",
                super::GENERATION_TTL
            ),
        }
    }

    fn grace_ended(&mut self, later: &[Invalidation]) {
        if let Err(e) = self.send(later) {
            tracing::warn!(
                "dropping removed names: {e}; they may resolve for up to {:?} more",
                super::GENERATION_TTL
            );
        }
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
    session: SessionUnmounter,
    mountpoint: PathBuf,
}

impl Unmounter {
    /// Unmounts; a busy mount is detached lazily instead of failing, so no
    /// dead mount is left behind once the session ends.
    pub fn unmount(&mut self) -> io::Result<Unmounted> {
        match self.session.unmount() {
            Ok(()) => Ok(Unmounted::Clean),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                detach(&self.mountpoint)?;
                Ok(Unmounted::Detached)
            }
            Err(e) => Err(e),
        }
    }
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
