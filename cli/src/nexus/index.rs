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
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nexus_fs::fuse::{self, IndexNotifier, MountOptions, MountedIndex, Unmounted, Unmounter};
use nexus_fs::{Index, View};

/// How often the index checks whether the view moved to another generation:
/// a pointer comparison when it did not, so checking often is free, and the
/// delay between a switch and the index showing it is mostly this.
const REFRESH_EVERY: Duration = Duration::from_millis(100);

/// Request threads of the index mount: its answers come from memory once a
/// directory is merged, so few are needed.
const THREADS: usize = 2;

/// The canonical path of `dir`, which must be a directory that neither
/// contains nor lies inside `mountpoint` (canonical): one mount would hide
/// the other (and mounting inside our own mount before it serves would
/// hang).
pub fn check_index_dir(dir: &Path, mountpoint: &Path) -> Result<PathBuf> {
    let canonical =
        std::fs::canonicalize(dir).with_context(|| format!("index directory {}", dir.display()))?;
    if !canonical.is_dir() {
        bail!("index directory {} is not a directory", dir.display());
    }
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
    mounted: MountedIndex,
    index: Arc<Index>,
    dir: PathBuf,
}

/// Mounts the index of `view` (mounted at `mountpoint`) on `dir`.
pub fn mount(
    view: Arc<View>,
    store: &Path,
    mountpoint: &Path,
    dir: &Path,
    options: &MountOptions,
) -> Result<IndexMount> {
    let index = Index::open(view, store, mountpoint, THREADS + 1)
        .with_context(|| format!("opening the index of {}", store.display()))?;
    let index = Arc::new(index);
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

/// An index being served.
pub struct IndexServer {
    serving: JoinHandle<()>,
    unmounter: Unmounter,
    dir: PathBuf,
}

impl IndexMount {
    /// Something another thread (the signal thread) can unmount it with.
    pub fn unmounter(&mut self) -> Unmounter {
        self.mounted.unmounter()
    }

    /// Serves the index on its own threads; with `follow`, a thread also
    /// keeps it on the view's generation and tells the kernel what each move
    /// made stale.
    pub fn serve(mut self, follow: bool) -> Result<IndexServer> {
        let unmounter = self.mounted.unmounter();
        let ended = Arc::new(AtomicBool::new(false));
        if follow {
            let notifier = self.mounted.notifier();
            let (index, ended) = (self.index.clone(), ended.clone());
            std::thread::Builder::new()
                .name("index-refresh".into())
                .spawn(move || follow_view(&index, &notifier, &ended))
                .context("starting the index refresh thread")?;
        }
        let dir = self.dir.clone();
        let serving = std::thread::Builder::new()
            .name("index".into())
            .spawn(move || {
                match self.mounted.run() {
                    Ok(()) => tracing::info!("the index on {} is unmounted", self.dir.display()),
                    Err(e) => tracing::error!("serving the index on {}: {e}", self.dir.display()),
                }
                ended.store(true, Ordering::Relaxed);
            })
            .context("starting the index thread")?;
        Ok(IndexServer {
            serving,
            unmounter,
            dir,
        })
    }
}

/// Keeps the index on the view's generation until the index mount ends.
fn follow_view(index: &Index, notifier: &IndexNotifier, ended: &AtomicBool) {
    while !ended.load(Ordering::Relaxed) {
        std::thread::sleep(REFRESH_EVERY);
        let started = Instant::now();
        match index.refresh() {
            Ok(None) => {}
            Ok(Some(changes)) => {
                let count = changes.entries.len() + changes.inodes.len();
                match notifier.apply(&changes) {
                    Ok(()) => tracing::info!(
                        "index now shows generation {:?}; {count} cache invalidations in {:?}",
                        changes.generation,
                        started.elapsed()
                    ),
                    // Stale entries expire on their own within the TTL.
                    Err(e) => tracing::warn!(
                        "index now shows generation {:?}, but invalidating failed: {e}; \
                         stale entries may remain for up to {:?}",
                        changes.generation,
                        fuse::INDEX_TTL
                    ),
                }
            }
            Err(e) => tracing::warn!("moving the index to a new generation: {e}"),
        }
    }
}

impl IndexServer {
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
