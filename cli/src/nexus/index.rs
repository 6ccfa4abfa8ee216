//! `nexus mount --index DIR`: the Index as a second mount of the same
//! daemon, served on its own threads beside the main mount.
//!
//! The index lives and dies with the main mount: when the main mount ends
//! (`nexus umount MOUNTPOINT`, SIGTERM) the index is unmounted too, since its
//! links lead into the main mount. Unmounting only the index (`nexus umount
//! DIR`) leaves the main mount serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use anyhow::{Context, Result, bail};
use nexus_fs::fuse::{
    self, IndexFollower, IndexFs, Invalidator, MountOptions, Mounted, Unmounted, Unmounter,
};
use nexus_fs::{Index, View};

/// Request threads of the index mount: its answers come from memory once a
/// directory is merged, so few are needed.
const THREADS: usize = 2;

/// The canonical path of `dir`, which must be a directory that neither
/// contains nor lies inside `mountpoint` (canonical): one mount would hide
/// the other (and mounting inside our own mount before it serves would
/// hang).
pub fn check_index_dir(dir: &Path, mountpoint: &Path) -> Result<PathBuf> {
    let canonical = super::mounts::check_dir(dir, "index directory")?;
    if canonical.starts_with(mountpoint) || mountpoint.starts_with(&canonical) {
        bail!(
            "the index directory {} and the mount point {} must not contain each other",
            canonical.display(),
            mountpoint.display()
        );
    }
    Ok(canonical)
}

/// A mounted index, not yet serving.
pub struct IndexMount {
    mounted: Mounted<IndexFs>,
    index: Arc<Index>,
    dir: PathBuf,
}

/// Mounts the index of `view` (mounted at `mountpoint`) on `dir`.
pub fn mount(
    view: Arc<View>,
    mountpoint: &Path,
    dir: &Path,
    options: &MountOptions,
) -> Result<IndexMount> {
    let index = Arc::new(Index::open(view, mountpoint));
    let options = MountOptions {
        threads: THREADS,
        ..options.clone()
    };
    let mounted = fuse::mount_index(index.clone(), dir, &options)
        .with_context(|| format!("mounting the index on {}", dir.display()))?;
    Ok(IndexMount {
        mounted,
        index,
        dir: dir.to_path_buf(),
    })
}

/// Serves the index of `view` (mounted at `mountpoint`) on the index mount
/// at `dir` that another daemon made and handed over: its `/dev/fuse`
/// descriptor `device`, and the numbers it gave (`paths`, see
/// [`Index::open_numbered`]).
pub fn adopt(
    view: Arc<View>,
    mountpoint: &Path,
    dir: &Path,
    options: &MountOptions,
    device: std::os::fd::OwnedFd,
    paths: Vec<Vec<u8>>,
) -> Result<IndexMount> {
    let index = Arc::new(
        Index::open_numbered(view, mountpoint, paths)
            .context("taking over the numbers of the index")?,
    );
    let options = MountOptions {
        threads: THREADS,
        ..options.clone()
    };
    let mounted = fuse::adopt_index(index.clone(), device, dir, &options);
    Ok(IndexMount {
        mounted,
        index,
        dir: dir.to_path_buf(),
    })
}

/// An index being served.
pub struct IndexServer {
    serving: JoinHandle<()>,
    unmounter: Unmounter,
    dir: PathBuf,
    index: Arc<Index>,
    invalidator: Invalidator,
    ended: Arc<AtomicBool>,
}

impl IndexMount {
    /// Something another thread (the signal thread) can unmount it with.
    pub fn unmounter(&mut self) -> Unmounter {
        self.mounted.unmounter()
    }

    /// The index (what a takeover hands over its numbers of).
    pub fn index(&self) -> Arc<Index> {
        self.index.clone()
    }

    /// A duplicate of the index mount's `/dev/fuse` descriptor.
    pub fn device(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        self.mounted.device()
    }

    /// Asks the kernel to send again the index requests the previous
    /// daemon left unanswered (see [`Mounted::resend`]).
    pub fn resend(&self) -> std::io::Result<()> {
        self.mounted.resend()
    }

    /// Serves the index on its own threads.
    pub fn serve(mut self) -> Result<IndexServer> {
        let unmounter = self.mounted.unmounter();
        let invalidator = self.mounted.invalidator();
        let ended = Arc::new(AtomicBool::new(false));
        let dir = self.dir.clone();
        let index = self.index.clone();
        let serving_ended = ended.clone();
        let serving = std::thread::Builder::new()
            .name("index".into())
            .spawn(move || {
                match self.mounted.run() {
                    Ok(()) => tracing::info!("the index on {} is unmounted", self.dir.display()),
                    Err(e) => tracing::error!("serving the index on {}: {e}", self.dir.display()),
                }
                serving_ended.store(true, Ordering::Relaxed);
            })
            .context("starting the index thread")?;
        Ok(IndexServer {
            serving,
            unmounter,
            dir,
            index,
            invalidator,
            ended,
        })
    }
}

impl IndexServer {
    /// The Index, for as long as it stays mounted.
    pub fn served(&self) -> ServedIndex {
        ServedIndex {
            index: self.index.clone(),
            ended: self.ended.clone(),
        }
    }

    /// What keeps the index on the view's generation (see
    /// `nexus_fs::follow`), until the index mount ends.
    pub fn follower(&self) -> IndexFollower {
        IndexFollower::new(
            self.index.clone(),
            self.invalidator.clone(),
            self.ended.clone(),
        )
    }

    /// Unmounts the index (detaching it if busy) and waits for its threads.
    pub fn stop(mut self) {
        match self.unmounter.unmount() {
            Ok(Unmounted::Clean) => {}
            Ok(Unmounted::Detached) => tracing::warn!(
                "the index on {} is busy: detached it; exiting when its last user is gone",
                self.dir.display()
            ),
            Err(e) => tracing::error!("unmounting the index on {}: {e}", self.dir.display()),
        }
        if self.serving.join().is_err() {
            tracing::error!("the index thread panicked");
        }
    }
}

/// The Index of a running daemon, for as long as its mount lasts (it may be
/// unmounted from outside while the main mount is served on).
#[derive(Clone)]
pub struct ServedIndex {
    index: Arc<Index>,
    ended: Arc<AtomicBool>,
}

impl ServedIndex {
    /// The Index, unless its mount has ended.
    pub fn mounted(&self) -> Option<&Index> {
        (!self.ended.load(Ordering::Relaxed)).then_some(&*self.index)
    }
}
