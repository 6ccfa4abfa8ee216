//! The FUSE adapter of the [`Index`]: a second, read-only mount of
//! directories and symlinks only.
//!
//! Everything in the index changes with the generation, so every entry and
//! attribute gets the short [`INDEX_TTL`] and no directory listing is cached
//! by the kernel; [`IndexNotifier`] additionally tells the kernel at once
//! which cached names a generation change made stale. FUSE calls the root
//! `1`; the index calls it [`ROOT`], and this adapter translates both ways.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fuser::{
    FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, OpenFlags,
    ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyXattr, Request,
};

use super::reply::{errno, file_attr, fill_dir, fill_dir_plus, reply_xattr};
use super::session::{self, MountOptions, Mounted};
use crate::changes::Invalidation;
use crate::index::{Index, IndexChanges, ROOT};

/// How long the kernel may keep an index entry or attribute. Short, because
/// all of them change with the generation: should a notification be lost, a
/// switch still shows within this; with notifications it shows at once.
pub const INDEX_TTL: Duration = Duration::from_secs(1);

/// The `fuser` file system of an index.
pub struct IndexFs {
    index: Arc<Index>,
}

impl IndexFs {
    /// Serves `index`.
    pub fn new(index: Arc<Index>) -> IndexFs {
        IndexFs { index }
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
        ] {
            if config.add_capabilities(flag).is_err() {
                tracing::debug!("the kernel does not offer {flag:?}");
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.index.lookup(node(parent), name.as_bytes()) {
            Ok(entry) => reply.entry_with_ttls(
                &INDEX_TTL,
                &INDEX_TTL,
                &file_attr(&entry.attr),
                Generation(0),
            ),
            Err(e) => reply.error(errno("index lookup", parent, &e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.index.getattr(node(ino)) {
            Ok(attr) => reply.attr(&INDEX_TTL, &file_attr(&attr)),
            Err(e) => reply.error(errno("index getattr", ino, &e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.index.readlink(node(ino)) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(errno("index readlink", ino, &e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.index.opendir(node(ino)) {
            // No FOPEN_CACHE_DIR: a listing is only good for its generation.
            Ok((fh, _)) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno("index opendir", ino, &e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        match self.index.listing_of(fh.0, node(ino)) {
            Ok(listing) => fill_dir(&listing, offset, fuse_node, reply),
            Err(e) => reply.error(errno("index readdir", ino, &e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        match self.index.listing_of(fh.0, node(ino)) {
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
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.index.release(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // Only links and directories: nothing to count in blocks or files.
        reply.statfs(0, 0, 0, 0, 0, 4096, 255, 4096);
    }

    // The index has no extended attributes; answering (rather than "not
    // implemented") keeps `ls -l` and friends from logging warnings.
    fn getxattr(&self, _req: &Request, ino: INodeNo, _name: &OsStr, _size: u32, reply: ReplyXattr) {
        match self.index.getattr(node(ino)) {
            Ok(_) => reply.error(fuser::Errno::from_i32(libc::ENODATA)),
            Err(e) => reply.error(errno("index getxattr", ino, &e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.index.getattr(node(ino)) {
            Ok(_) => reply_xattr(reply, size, &[]),
            Err(e) => reply.error(errno("index listxattr", ino, &e)),
        }
    }
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
/// directory, and the cached attributes of each changed symlink, with the
/// index's numbers translated to FUSE's.
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

impl crate::follow::Follower for IndexFollower {
    fn moved(&mut self, _changes: &crate::Changes) {
        if self.ended.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let started = std::time::Instant::now();
        match self.index.refresh() {
            Ok(None) => {}
            Ok(Some(changes)) => {
                let invalidations = index_invalidations(&changes);
                match self.invalidator.send(&invalidations) {
                    Ok(sent) => tracing::info!(
                        "index now shows generation {:?}; {sent} cache invalidations in {:?}",
                        changes.generation,
                        started.elapsed()
                    ),
                    // Stale entries expire on their own within the TTL.
                    Err(e) => tracing::warn!(
                        "index now shows generation {:?}, but {e}; stale entries may remain \
                         for up to {INDEX_TTL:?}",
                        changes.generation,
                    ),
                }
            }
            Err(e) => tracing::warn!("moving the index to a new generation: {e}"),
        }
    }
}
