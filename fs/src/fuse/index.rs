//! The FUSE adapter of the [`Index`]: a second, read-only mount of
//! directories and symlinks only.
//!
//! Everything in the index changes with the generation, and a program
//! started through it walks the index for every file it opens, so the
//! kernel keeps all of it (entries, absent names, attributes, link targets,
//! listings) for [`INDEX_TTL`], and [`IndexFollower`] tells it at each
//! generation change exactly what became stale (FUSE notifications, sent
//! again [`super::RESEND_AFTER`] later). FUSE calls the root `1`; the index
//! calls it [`ROOT`], and this adapter translates both ways.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fuser::{
    FileHandle, Filesystem, Generation, INodeNo, InitFlags, KernelConfig, OpenFlags, ReplyAttr,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyXattr, Request,
};

use super::counts::{self, Op, REQUESTS_XATTR, RequestCounts};
use super::reply::{errno, file_attr, fill_dir, fill_dir_plus, reply_opendir, reply_xattr};
use super::session::{self, MountOptions, Mounted};
use crate::changes::Invalidation;
use crate::error::ViewError;
use crate::index::{Index, IndexChanges, ROOT};

/// How long the kernel may keep an index entry, attribute, absent name,
/// link target or listing. All of them change with the generation, but a
/// generation change invalidates each that changed, twice (see
/// [`super::GENERATION_TTL`]); a short lifetime would make every warm
/// program start through the index look up every path it opens again.
pub const INDEX_TTL: Duration = super::GENERATION_TTL;

/// The `fuser` file system of an index.
pub struct IndexFs {
    index: Arc<Index>,
    /// Requests served, by kind.
    counts: Arc<RequestCounts>,
}

impl IndexFs {
    /// Serves `index`.
    pub fn new(index: Arc<Index>) -> IndexFs {
        IndexFs {
            index,
            counts: Arc::default(),
        }
    }

    /// The requests this file system has been sent, by kind.
    pub fn counts(&self) -> Arc<RequestCounts> {
        self.counts.clone()
    }
}

/// The index's number for a FUSE node id.
fn node(ino: INodeNo) -> u64 {
    if ino == INodeNo::ROOT { ROOT } else { ino.0 }
}

/// The FUSE node id for an index number.
fn fuse_node(ino: u64) -> INodeNo {
    if ino == ROOT {
        INodeNo::ROOT
    } else {
        INodeNo(ino)
    }
}

impl Filesystem for IndexFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        for flag in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_PARALLEL_DIROPS,
            // Link targets kept by the kernel: a link whose target changes
            // is invalidated (`IndexChanges::inodes`), which drops it.
            InitFlags::FUSE_CACHE_SYMLINKS,
        ] {
            if config.add_capabilities(flag).is_err() {
                tracing::debug!("the kernel does not offer {flag:?}");
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.counts.count(Op::Lookup);
        match self.index.lookup(node(parent), name.as_bytes()) {
            Ok(entry) => reply.entry_with_ttls(
                &INDEX_TTL,
                &INDEX_TTL,
                &file_attr(&entry.attr),
                Generation(0),
            ),
            // Node id 0 with a lifetime: the kernel keeps the name's
            // absence (a program searching a path asks for the same missing
            // names at every start); a name that appears is invalidated.
            Err(ViewError::NotFound) => reply.entry_with_ttls(
                &INDEX_TTL,
                &INDEX_TTL,
                &super::no_such_entry(),
                Generation(0),
            ),
            Err(e) => reply.error(errno("index lookup", parent, &e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.counts.count(Op::Getattr);
        match self.index.getattr(node(ino)) {
            Ok(attr) => reply.attr(&INDEX_TTL, &file_attr(&attr)),
            Err(e) => reply.error(errno("index getattr", ino, &e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.counts.count(Op::Readlink);
        match self.index.readlink(node(ino)) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(errno("index readlink", ino, &e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.counts.count(Op::Opendir);
        // As on the main mount: the Index's listings are computed once per
        // generation, and a change invalidates them (`IndexChanges::dirs`).
        reply_opendir("index opendir", ino, self.index.getattr(node(ino)), reply);
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
        match self.index.list(node(ino)) {
            Ok(listing) => fill_dir(&listing, offset, fuse_node, reply),
            Err(e) => reply.error(errno("index readdir", ino, &e)),
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
        match self.index.list(node(ino)) {
            Ok(listing) => fill_dir_plus(
                &listing,
                offset,
                fuse_node,
                |_| INDEX_TTL,
                Generation(0),
                // Index inodes are not package inodes: nothing to keep.
                |_| {},
                reply,
            ),
            Err(e) => reply.error(errno("index readdirplus", ino, &e)),
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
        // Directory opens are answered with ENOSYS (see `opendir`).
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.counts.count(Op::Statfs);
        // Only links and directories: nothing to count in blocks or files.
        reply.statfs(0, 0, 0, 0, 0, 4096, 255, 4096);
    }

    // The index has no extended attributes; answering (rather than "not
    // implemented") keeps `ls -l` and friends from logging warnings, and
    // labels and ACLs are "not supported", which makes `ls -l` stop asking.
    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if ino == INodeNo::ROOT && name.as_bytes() == REQUESTS_XATTR {
            counts::reply_counts(&self.counts, req, size, reply);
            return;
        }
        self.counts.count(Op::Getxattr);
        let absent = if crate::view::UNSUPPORTED_WHEN_ABSENT.contains(&name.as_bytes()) {
            libc::EOPNOTSUPP
        } else {
            libc::ENODATA
        };
        match self.index.getattr(node(ino)) {
            Ok(_) => reply.error(fuser::Errno::from_i32(absent)),
            Err(e) => reply.error(errno("index getxattr", ino, &e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.counts.count(Op::Listxattr);
        match self.index.getattr(node(ino)) {
            Ok(_) => reply_xattr(reply, size, &[]),
            Err(e) => reply.error(errno("index listxattr", ino, &e)),
        }
    }

    fn destroy(&mut self) {
        tracing::info!("index requests served: {}", self.counts.summary());
    }

    counts::cheap_answers!();
}

/// Mounts `index` read-only at `mountpoint` (type `fuse.nexus-index`), with
/// the `allow_other` and thread count of `options` but never setuid (its
/// links lead into the main mount, which decides about that). When this
/// returns the mount exists; requests are served once [`Mounted::run`] is
/// called.
pub fn mount_index(
    index: Arc<Index>,
    mountpoint: &Path,
    options: &MountOptions,
) -> io::Result<Mounted<IndexFs>> {
    let options = MountOptions {
        suid: false,
        // Symbolic links only: nothing to read ahead.
        read_ahead_kib: 0,
        ..options.clone()
    };
    session::mount(IndexFs::new(index), mountpoint, "nexus-index", &options)
}

/// Serves `index` on the index mount at `mountpoint` that another daemon
/// made and handed over with its `/dev/fuse` descriptor `device`, as
/// [`crate::fuse::adopt`] does for the main mount.
pub fn adopt_index(
    index: Arc<Index>,
    device: std::os::fd::OwnedFd,
    mountpoint: &Path,
    options: &MountOptions,
) -> Mounted<IndexFs> {
    session::adopt(IndexFs::new(index), device, mountpoint, options)
}

/// The kernel invalidations `changes` calls for: each stale name in its
/// directory, the cached attributes and target of each changed symlink and
/// the cached listing of each changed directory, with the index's numbers
/// translated to FUSE's.
pub fn index_invalidations(changes: &IndexChanges) -> Vec<Invalidation> {
    let entries = changes
        .entries
        .iter()
        .map(|(dir, name)| Invalidation::Entry {
            parent: fuse_node(*dir).0,
            name: name.clone(),
        });
    let inodes = changes
        .inodes
        .iter()
        .chain(&changes.dirs)
        .map(|ino| Invalidation::Inode(fuse_node(*ino).0));
    entries.chain(inodes).collect()
}

/// Keeps a mounted index on its view's generation: each move of the view
/// recomputes what the index had shown and invalidates what changed.
pub struct IndexFollower {
    index: Arc<Index>,
    invalidator: super::Invalidator,
    /// Set once the index mount stopped serving: nothing to tell then.
    ended: Arc<std::sync::atomic::AtomicBool>,
}

impl IndexFollower {
    /// Follows `index`, mounted with `invalidator`, until `ended` is set.
    pub fn new(
        index: Arc<Index>,
        invalidator: super::Invalidator,
        ended: Arc<std::sync::atomic::AtomicBool>,
    ) -> IndexFollower {
        IndexFollower {
            index,
            invalidator,
            ended,
        }
    }
}

impl IndexFollower {
    /// Moves the index to the view's generation, or compares what requests
    /// answered late from the one before, and tells the kernel what became
    /// stale.
    fn catch_up(&mut self) {
        let started = std::time::Instant::now();
        match self.index.refresh() {
            Ok(None) => {}
            Ok(Some(changes)) => {
                let invalidations = index_invalidations(&changes);
                match self.invalidator.send_and_repeat(invalidations) {
                    Ok(sent) => tracing::info!(
                        "index now shows generation {:?}; {sent} cache invalidations in {:?}",
                        changes.generation,
                        started.elapsed()
                    ),
                    Err(e) => tracing::warn!(
                        "index now shows generation {:?}, but {e}; retrying on the next turn",
                        changes.generation,
                    ),
                }
            }
            Err(e) => tracing::warn!("moving the index to a new generation: {e}"),
        }
    }
}

impl crate::follow::Follower for IndexFollower {
    fn moved(&mut self, _changes: &crate::Changes) {
        if self.ended.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        self.catch_up();
    }

    fn tick(&mut self) {
        if !self.ended.load(std::sync::atomic::Ordering::Relaxed) {
            // Answers a request computed from the previous generation after
            // the move was compared (see `LATE_ANSWERS`).
            if self.index.comparing_late_answers() {
                self.catch_up();
            }
            self.invalidator.send_due();
        }
    }
}
