//! The FUSE adapter: serves a [`View`] to the kernel with `fuser`.
//!
//! Every request becomes one view call; this module only translates types
//! and decides how long the kernel may cache each answer. The aim is that
//! a warm program start costs the daemon nothing: package content is
//! immutable, so its entries, attributes, absent names and link targets
//! are cached for [`IMMUTABLE_TTL`], and opens of files and directories
//! are answered `ENOSYS`: the kernel then opens them without asking the
//! daemon and keeps their pages and listings cached across opens (no
//! handles exist; reads and listings go by inode). The root, App
//! directories and `Current` links change with the generation: when a live
//! view moves, an [`Invalidator`] tells the kernel what became stale (FUSE
//! notifications, sent again [`RESEND_AFTER`] later in case a request
//! answered from the old generation raced them), so they too get a long
//! lifetime ([`GENERATION_TTL`]). What the kernel forwards whatever the
//! daemon answers (`IOCTL`, `STATFS`) is answered as cheaply as possible,
//! and every request is counted by kind ([`RequestCounts`], readable as
//! the [`REQUESTS_XATTR`] attribute of the root). Several request threads
//! serve the mount, each with its own cloned `/dev/fuse` descriptor. The
//! Index's mount (`index`) shares the reply and session code (`reply`,
//! `session`, `counts`).

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuser::{
    Errno, FileAttr, FileHandle, Filesystem, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};

use crate::attr::{Entry, Kind};
use crate::changes::Invalidation;
use crate::error::ViewError;
use crate::ino::Node;
use crate::lookups::Lookups;
use crate::view::View;

mod counts;
mod index;
mod mountinfo;
mod push;
mod reply;
mod session;

pub use counts::{Op, REQUESTS_XATTR, RequestCounts};
pub use index::{INDEX_TTL, IndexFollower, IndexFs, adopt_index, index_invalidations, mount_index};
pub use mountinfo::{mount_device, set_read_ahead};
use reply::{errno, file_attr, fill_dir, fill_dir_plus, reply_opendir, reply_xattr};
pub use session::{
    Invalidator, MountOptions, Mounted, READ_AHEAD_KIB, RESEND_AFTER, Unmounted, Unmounter, detach,
    fusermount,
};

/// How long the kernel may keep what never changes: package entries and
/// attributes.
pub const IMMUTABLE_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long the kernel may keep what a generation switch changes: the root,
/// App directories, `Current` links (their targets too) and the names in
/// them, present or absent. A switch invalidates all of it through
/// notifications, twice ([`RESEND_AFTER`] apart), and a failed notification
/// is retried, so the lifetime does not bound staleness; it is long so that
/// a warm path walk through `App/Current/` asks the daemon nothing.
pub const GENERATION_TTL: Duration = Duration::from_secs(3600);

/// The `fuser` file system: a view, and what the kernel holds of it.
pub struct NexusFs {
    view: Arc<View>,
    /// The inodes the kernel has looked up and not forgotten.
    lookups: Arc<Lookups>,
    /// Requests served, by kind.
    counts: Arc<RequestCounts>,
    /// Hands the kernel decoded bytes ahead of its reads, once started.
    pusher: Arc<push::Pusher>,
}

impl NexusFs {
    /// Serves `view`.
    pub fn new(view: Arc<View>) -> NexusFs {
        let lookups = view.new_client();
        NexusFs {
            view,
            lookups,
            counts: Arc::default(),
            pusher: Arc::default(),
        }
    }

    /// The requests this file system has been sent, by kind.
    pub fn counts(&self) -> Arc<RequestCounts> {
        self.counts.clone()
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

/// The attributes sent with a negative entry (node id 0): the kernel reads
/// only the lifetimes.
pub(crate) fn no_such_entry() -> FileAttr {
    let t = std::time::UNIX_EPOCH;
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: t,
        mtime: t,
        ctime: t,
        crtime: t,
        kind: fuser::FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
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
        // Each is an optimisation: take what the kernel offers. Left out on
        // purpose:
        // - FUSE_AUTO_INVAL_DATA, which re-checks a file's attributes on
        //   reads and a cached listing against its directory's mtime once
        //   the attributes expire. It was the fallback bounding a stale root
        //   or App listing to the 5 s those attributes lived;
        //   generation-bound answers now live long and are invalidated by
        //   notifications sent twice (see `Invalidator`), so it had nothing
        //   left to do.
        // - FUSE_POSIX_ACL: with it the kernel asks for each inode's
        //   `system.posix_acl_access` the first time it is listed (a cold
        //   `ls -lR` of the corpus sent 125,117 GETXATTRs, one per inode).
        //   Without it the kernel never asks, `ls` asks once, is told ACLs
        //   are not supported (see `View::getxattr`) and stops for the
        //   mount, and permissions are checked on mode bits that fail closed
        //   for the rare inode carrying an ACL (see `attr::Attr`).
        for flag in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_PARALLEL_DIROPS,
            // Symlink targets are kept in the kernel's page cache: a path
            // walk through a link then costs no READLINK. Package links
            // never change; a switch invalidates each `Current` link whose
            // target changed (an inode invalidation drops the cached
            // target, see `Invalidator`).
            InitFlags::FUSE_CACHE_SYMLINKS,
        ] {
            if config.add_capabilities(flag).is_err() {
                tracing::debug!("the kernel does not offer {flag:?}");
            }
        }
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn destroy(&mut self) {
        tracing::info!("requests served: {}", self.counts.summary());
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.counts.count(Op::Lookup);
        match self.view.lookup(parent.0, name.as_bytes()) {
            Ok(entry) => self.reply_entry(reply, parent, &entry),
            Err(ViewError::NotFound) => {
                // Node id 0 with a lifetime: the kernel keeps the name's
                // absence (an ENOENT error it would forget at once). Names
                // in a package directory never appear; in the root and in
                // App directories a switch that adds the name invalidates
                // it (see `Changes::invalidations`).
                let immutable = matches!(Node::from_ino(parent.0), Some(Node::Package(_)));
                let ttl = ttl(immutable);
                reply.entry_with_ttls(&ttl, &ttl, &no_such_entry(), Generation(0));
            }
            Err(e) => reply.error(errno("lookup", parent, &e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.counts.count(Op::Forget);
        self.lookups.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.counts.count(Op::Getattr);
        match self.view.getattr(ino.0) {
            Ok(attr) => reply.attr(&ttl(attr.immutable), &file_attr(&attr)),
            Err(e) => reply.error(errno("getattr", ino, &e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.counts.count(Op::Readlink);
        match self.view.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(errno("readlink", ino, &e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.counts.count(Op::Open);
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
        self.counts.count(Op::Read);
        // Opens are not sent (see `open`), so reads come without a handle.
        let _ = fh;
        // The bytes go to the kernel straight from the frame cache.
        let mut reply = Some(reply);
        let read = self.view.read_inode_with(ino.0, offset, size, |data| {
            if let Some(reply) = reply.take() {
                reply.data(data);
            }
            data.len()
        });
        match (read, reply) {
            (Err(e), Some(reply)) => reply.error(errno("read", ino, &e)),
            // What lies around the READ may be decoded already. A READ as
            // large as the kernel's widest read-ahead request means the
            // kernel is reading ahead in wide windows itself: pushing would
            // copy the same pages into its cache twice.
            // A READ of a whole file (from its start to its end: most
            // small files) has nothing before or after it to push, and an
            // offer would only wake the pusher thread for nothing.
            (Ok(len), _) if size < push::KERNEL_READS_AHEAD => {
                let more_follows = len == size as usize;
                if offset > 0 || more_follows {
                    self.pusher.offer(push::Offer {
                        ino: ino.0,
                        start: offset,
                        end: offset + len as u64,
                        more_follows,
                    });
                }
            }
            _ => {}
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
        self.counts.count(Op::Flush);
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
        self.counts.count(Op::Release);
        // File opens are answered with ENOSYS (see `open`), so the kernel
        // sends no release, and no handle was handed out to forget.
        let _ = fh;
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.counts.count(Op::Opendir);
        // As with files (see `open`): ENOSYS for a directory (see
        // `reply_opendir`), so a warm `find` or `ls -lR` sends no request at
        // all. Listings of the root and of Apps change with the generation:
        // a switch invalidates them (see `Changes`); the notification is a
        // synchronous write whose failure the follower logs, so a listing
        // is never left stale silently.
        reply_opendir("opendir", ino, self.view.getattr(ino.0), reply);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        self.counts.count(Op::Readdir);
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
        self.counts.count(Op::Readdirplus);
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
        self.counts.count(Op::Releasedir);
        // Directory opens are answered with ENOSYS too (see `opendir`).
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.counts.count(Op::Statfs);
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

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if ino == INodeNo::ROOT && name.as_bytes() == REQUESTS_XATTR {
            counts::reply_counts(&self.counts, req, size, reply);
            return;
        }
        self.counts.count(Op::Getxattr);
        match self.view.getxattr(ino.0, name.as_bytes()) {
            Ok(value) => reply_xattr(reply, size, &value),
            // No ACL: "not supported", which makes `ls -l` stop asking for
            // the mount (the kernel does not apply ACLs here, see `init`).
            Err(ViewError::NoXattr)
                if crate::view::UNSUPPORTED_WHEN_ABSENT.contains(&name.as_bytes()) =>
            {
                reply.error(Errno::from_i32(libc::EOPNOTSUPP));
            }
            Err(e) => reply.error(errno("getxattr", ino, &e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.counts.count(Op::Listxattr);
        match self.view.listxattr(ino.0) {
            Ok(names) => reply_xattr(reply, size, &names),
            Err(e) => reply.error(errno("listxattr", ino, &e)),
        }
    }

    counts::cheap_answers!();
}

/// Mounts `view` read-only at `mountpoint` (type `fuse.nexus`). When this
/// returns the kernel has completed the FUSE handshake: the mount exists,
/// and requests are served once [`Mounted::run`] is called.
pub fn mount(
    view: Arc<View>,
    mountpoint: &Path,
    options: &MountOptions,
) -> io::Result<Mounted<NexusFs>> {
    let fs = NexusFs::new(view.clone());
    let pusher = fs.pusher.clone();
    let lookups = fs.lookups.clone();
    let mut mounted = session::mount(fs, mountpoint, "nexus", options)?;
    mounted.lookups = Some(lookups);
    pusher.start(view, mounted.notifier())?;
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
) -> io::Result<Mounted<NexusFs>> {
    let lookups = view.new_client_holding(held);
    let fs = NexusFs {
        view: view.clone(),
        lookups: lookups.clone(),
        counts: Arc::default(),
        pusher: Arc::default(),
    };
    let pusher = fs.pusher.clone();
    let mut mounted = session::adopt(fs, device, mountpoint, options);
    mounted.lookups = Some(lookups);
    pusher.start(view, mounted.notifier())?;
    Ok(mounted)
}
