//! The FUSE adapter: serves a [`View`] to the kernel with `fuser`.
//!
//! Every request becomes one view call; this module only translates types
//! and decides how long the kernel may cache each answer. Package content is
//! immutable, so its entries and attributes get long lifetimes
//! ([`IMMUTABLE_TTL`]), and opens of files and directories are answered
//! `ENOSYS`: the kernel then opens them without asking the daemon and keeps
//! their pages and listings cached across opens (no handles exist; reads
//! and listings go by inode). The root, App directories and `Current` links
//! change with the generation: when a live view moves, an [`Invalidator`]
//! tells the kernel what became stale (FUSE notifications), and
//! [`GENERATION_TTL`] bounds how long a stale answer could live should a
//! notification be lost. Several request threads serve the mount, each with
//! its own cloned `/dev/fuse` descriptor. The Index's mount (`index`)
//! shares the reply and session code (`reply`, `session`).

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuser::{
    Errno, FileHandle, Filesystem, Generation, INodeNo, InitFlags, KernelConfig, LockOwner,
    OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};

use crate::attr::{Entry, Kind};
use crate::changes::Invalidation;
use crate::lookups::Lookups;
use crate::view::View;

mod index;
mod reply;
mod session;

pub use index::{INDEX_TTL, IndexFollower, IndexFs, adopt_index, index_invalidations, mount_index};
use reply::{errno, file_attr, fill_dir, fill_dir_plus, reply_xattr};
pub use session::{Invalidator, MountOptions, Mounted, Unmounted, Unmounter, detach, fusermount};

/// How long the kernel may keep what never changes: package entries and
/// attributes.
pub const IMMUTABLE_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long the kernel may keep what a generation switch changes: the root,
/// App directories, `Current` links and the names in them. A switch
/// invalidates them at once through notifications, so this is only the bound
/// on staleness should a notification fail; it is short enough for that and
/// long enough for a test to tell a notification from an expiry. (`Current`
/// targets are never cached: every path walk through a link reads it.)
pub const GENERATION_TTL: Duration = Duration::from_secs(5);

/// The `fuser` file system: a view, and what the kernel holds of it.
pub struct NexusFs {
    view: Arc<View>,
    /// The inodes the kernel has looked up and not forgotten.
    lookups: Arc<Lookups>,
}

impl NexusFs {
    /// Serves `view`.
    pub fn new(view: Arc<View>) -> NexusFs {
        let lookups = view.new_client();
        NexusFs { view, lookups }
    }
}

/// How often a mount drops the cached names of held inodes whose package
/// the view no longer shows (see [`Reaper`]).
const REAP_EVERY: Duration = Duration::from_secs(1);

/// Makes the kernel forget, once no program uses them, the inodes of
/// packages the view no longer shows: it keeps unused names cached
/// indefinitely otherwise, and so would pin them against gc
/// (`crate::lookups`). A [`crate::follow::Follower`] of the mount's view.
pub struct Reaper {
    view: Arc<View>,
    lookups: Arc<Lookups>,
    invalidator: Invalidator,
    last: Instant,
}

impl crate::follow::Follower for Reaper {
    fn moved(&mut self, _changes: &crate::Changes) {}

    fn tick(&mut self) {
        if self.last.elapsed() < REAP_EVERY {
            return;
        }
        self.last = Instant::now();
        let orphans = self.lookups.orphans(&self.view.shown_packages());
        if orphans.is_empty() {
            return;
        }
        let all: Vec<Invalidation> = orphans
            .into_iter()
            .map(|(parent, name)| Invalidation::Entry { parent, name })
            .collect();
        // Names the kernel no longer holds, or holds in use, are no error.
        if let Err(e) = self.invalidator.send(&all) {
            tracing::debug!("dropping names of packages no longer shown: {e}");
        }
    }
}

impl Mounted<NexusFs> {
    /// The [`Reaper`] of this mount of `view`.
    pub fn reaper(&self, view: Arc<View>) -> Option<Reaper> {
        Some(Reaper {
            view,
            lookups: self.lookups.clone()?,
            invalidator: self.invalidator(),
            last: Instant::now(),
        })
    }
}

fn ttl(immutable: bool) -> Duration {
    if immutable {
        IMMUTABLE_TTL
    } else {
        GENERATION_TTL
    }
}

impl NexusFs {
    fn reply_entry(&self, reply: ReplyEntry, parent: INodeNo, entry: &Entry) {
        self.view.looked_up(&self.lookups, parent.0, entry);
        reply.entry_with_ttls(
            &ttl(entry.attr.immutable),
            &ttl(entry.immutable),
            &file_attr(&entry.attr),
            Generation(self.view.inode_generation()),
        );
    }
}

impl Filesystem for NexusFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // Each is an optimisation: take what the kernel offers.
        for flag in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_PARALLEL_DIROPS,
            // The kernel then caches each inode's (absent) POSIX ACLs, so
            // `ls -l` asks the daemon for system.posix_acl_* once per inode
            // instead of once per call.
            InitFlags::FUSE_POSIX_ACL,
            // A cached directory listing is re-checked against the
            // directory's mtime when its attributes expire: the fallback
            // that bounds a stale root or App listing should a switch's
            // invalidation be lost (package files never change, so for
            // them this costs nothing).
            InitFlags::FUSE_AUTO_INVAL_DATA,
        ] {
            if config.add_capabilities(flag).is_err() {
                tracing::debug!("the kernel does not offer {flag:?}");
            }
        }
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.view.lookup(parent.0, name.as_bytes()) {
            Ok(entry) => self.reply_entry(reply, parent, &entry),
            Err(e) => reply.error(errno("lookup", parent, &e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.lookups.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.view.getattr(ino.0) {
            Ok(attr) => reply.attr(&ttl(attr.immutable), &file_attr(&attr)),
            Err(e) => reply.error(errno("getattr", ino, &e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.view.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(errno("readlink", ino, &e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            reply.error(Errno::from_i32(libc::EROFS));
            return;
        }
        // Check the inode is a readable file, then answer ENOSYS: the kernel
        // takes that as "opens need no reply" and from then on opens files
        // without asking the daemon, keeping their page cache
        // (FOPEN_KEEP_CACHE is its default in that mode). Package files are
        // immutable, so reads need only the inode: this saves an open and a
        // release round trip per file, most of the cost of reading many
        // small files from a warm cache.
        match self.view.getattr(ino.0) {
            Ok(attr) if attr.kind == Kind::File => reply.error(Errno::from_i32(libc::ENOSYS)),
            Ok(attr) if attr.kind == Kind::Dir => reply.error(Errno::from_i32(libc::EISDIR)),
            Ok(_) => reply.error(Errno::from_i32(libc::EINVAL)),
            Err(e) => reply.error(errno("open", ino, &e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        // Opens are not sent (see `open`), so reads come without a handle.
        let _ = fh;
        // The bytes go to the kernel straight from the block cache.
        let mut reply = Some(reply);
        let read = self.view.read_inode_with(ino.0, offset, size, |data| {
            if let Some(reply) = reply.take() {
                reply.data(data);
            }
        });
        if let (Err(e), Some(reply)) = (read, reply) {
            reply.error(errno("read", ino, &e));
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // ENOSYS once, and the kernel never sends FLUSH again (it succeeds
        // every close itself): a read-only file system has nothing to
        // flush, and a FLUSH round trip per close() was most of the cost
        // of reading many small files from a warm page cache.
        reply.error(Errno::from_i32(libc::ENOSYS));
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // File opens are answered with ENOSYS (see `open`), so the kernel
        // sends no release, and no handle was handed out to forget.
        let _ = fh;
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // As with files (see `open`): check it is a directory, then answer
        // ENOSYS. The kernel then opens directories without asking (no
        // OPENDIR or RELEASEDIR round trips) and keeps every listing it has
        // read in its page cache (FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR is its
        // default in that mode), so a warm `find` or `ls -lR` sends no
        // request at all. Listings of the root and of Apps change with the
        // generation: a switch invalidates them (see `Notifier`), and
        // FUSE_AUTO_INVAL_DATA makes the kernel re-check a cached listing
        // once the directory's 5 s attributes expire, should a notification
        // be lost.
        match self.view.getattr(ino.0) {
            Ok(attr) if attr.kind == Kind::Dir => reply.error(Errno::from_i32(libc::ENOSYS)),
            Ok(_) => reply.error(Errno::from_i32(libc::ENOTDIR)),
            Err(e) => reply.error(errno("opendir", ino, &e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        // Directories are not opened (see `opendir`): read by inode.
        match self.view.list(ino.0) {
            Ok(listing) => fill_dir(&listing, offset, INodeNo, reply),
            Err(e) => reply.error(errno("readdir", ino, &e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        match self.view.list(ino.0) {
            Ok(listing) => fill_dir_plus(
                &listing,
                offset,
                INodeNo,
                |e| ttl(e.immutable && e.attr.immutable),
                Generation(self.view.inode_generation()),
                |e| self.view.looked_up(&self.lookups, ino.0, e),
                reply,
            ),
            Err(e) => reply.error(errno("readdirplus", ino, &e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        // Directory opens are answered with ENOSYS too (see `opendir`).
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.view.statfs();
        reply.statfs(
            s.blocks,
            0,
            0,
            s.files,
            0,
            s.block_size,
            s.name_max,
            s.block_size,
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.view.getxattr(ino.0, name.as_bytes()) {
            Ok(value) => reply_xattr(reply, size, &value),
            Err(e) => reply.error(errno("getxattr", ino, &e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.view.listxattr(ino.0) {
            Ok(names) => reply_xattr(reply, size, &names),
            Err(e) => reply.error(errno("listxattr", ino, &e)),
        }
    }
}

/// Mounts `view` read-only at `mountpoint` (type `fuse.nexus`). When this
/// returns the kernel has completed the FUSE handshake: the mount exists,
/// and requests are served once [`Mounted::run`] is called.
pub fn mount(
    view: Arc<View>,
    mountpoint: &Path,
    options: &MountOptions,
) -> io::Result<Mounted<NexusFs>> {
    let fs = NexusFs::new(view);
    let lookups = fs.lookups.clone();
    let mut mounted = session::mount(fs, mountpoint, "nexus", options)?;
    mounted.lookups = Some(lookups);
    Ok(mounted)
}

/// Serves `view` on the mount at `mountpoint` that another daemon made and
/// handed over with its `/dev/fuse` descriptor `device` (see
/// [`Mounted::device`]); the kernel holds the inodes in `held`, as that
/// daemon counted them. Requests are served once [`Mounted::run`] is
/// called, after [`Mounted::resend`].
pub fn adopt(
    view: Arc<View>,
    held: &[crate::lookups::HeldInode],
    device: std::os::fd::OwnedFd,
    mountpoint: &Path,
    options: &MountOptions,
) -> Mounted<NexusFs> {
    let lookups = view.new_client_holding(held);
    let mut mounted = session::adopt(
        NexusFs {
            view,
            lookups: lookups.clone(),
        },
        device,
        mountpoint,
        options,
    );
    mounted.lookups = Some(lookups);
    mounted
}
