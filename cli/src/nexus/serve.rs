//! Mounting the view and serving it until it is unmounted.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nexus_fs::fuse::{self, Invalidator, MountOptions};
use nexus_fs::{Changes, GenerationChoice, Invalidation, View, ViewOptions};
use nexus_store::runtime::{RuntimeRoot, ServedKind};

use super::daemon::Ready;
use super::{index, runtime_root, signals};

/// How often a live mount checks for a new generation: most of the delay
/// before a switch shows in the mount. The check is one indexed query
/// (`max(id)` of the generations), so checking often costs next to nothing.
const REFRESH_EVERY: Duration = Duration::from_millis(100);

/// What `nexus mount` was asked for, with absolute paths.
#[derive(Debug)]
pub struct Request {
    /// The store directory.
    pub store: PathBuf,
    /// The mount point (canonical).
    pub mountpoint: PathBuf,
    /// Where to mount the Index too (canonical), if anywhere.
    pub index: Option<PathBuf>,
    /// A fixed generation, or `None` to follow the live one.
    pub generation: Option<i64>,
    /// `allow_other`.
    pub allow_other: bool,
    /// Request threads.
    pub threads: usize,
    /// Decoded-block cache size.
    pub cache_bytes: u64,
    /// Where to write the daemon's pid.
    pub pid_file: Option<PathBuf>,
    /// Serve this signed image instead of the store (`--image`).
    pub image: Option<ImageRequest>,
}

/// An image to serve in place, and the keys its signature must be by.
#[derive(Debug)]
pub struct ImageRequest {
    /// The image file (absolute).
    pub path: PathBuf,
    /// Trusted and revoked keys.
    pub trust: nexus_npk::TrustSet,
}

impl ImageRequest {
    /// The `--image FILE` of a command, if given, with the trust of the key
    /// store in `keys`.
    pub fn from_option(image: Option<PathBuf>, keys: &Path) -> Result<Option<ImageRequest>> {
        image
            .map(|path| {
                Ok(ImageRequest {
                    path: std::path::absolute(&path)
                        .with_context(|| format!("image path {}", path.display()))?,
                    trust: nexus_npk::KeyStore::new(keys).trust_set()?,
                })
            })
            .transpose()
    }
}

/// Checks `image` (signature, body and root hash; chunks are verified as
/// they are read) and makes the throw-away store that serves it in place.
/// The store lives in a temporary directory removed when the guard drops.
pub(super) fn adopt_image(image: &ImageRequest) -> Result<(PathBuf, tempfile::TempDir)> {
    let archive = nexus_npk::Archive::open_with(
        &image.path,
        nexus_npk::Policy::Trusted(&image.trust),
        nexus_npk::Check::Manifest,
    )
    .with_context(|| format!("checking the image {}", image.path.display()))?;
    let dir = tempfile::Builder::new()
        .prefix("nexus-image-")
        .tempdir()
        .context("creating the image's scratch store")?;
    let store = dir.path().join("store");
    nexus_npk::adopt::adopt(&archive, &store)
        .with_context(|| format!("describing the image {}", image.path.display()))?;
    Ok((store, dir))
}

/// The canonical path of `path`, which must be a directory.
pub fn check_mountpoint(path: &Path) -> Result<PathBuf> {
    let canonical =
        std::fs::canonicalize(path).with_context(|| format!("mount point {}", path.display()))?;
    if !canonical.is_dir() {
        bail!("mount point {} is not a directory", path.display());
    }
    Ok(canonical)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Keeps a live view on the newest generation, and the kernel's caches in
/// step with it.
fn follow_live_generation(
    view: Arc<View>,
    invalidator: Invalidator,
    served: Weak<RuntimeRoot>,
) -> Result<()> {
    std::thread::Builder::new()
        .name("refresh".into())
        .spawn(move || {
            // Names switches removed, to drop again once the view stops
            // resolving them (it did meanwhile, and the kernel may have
            // cached them anew); oldest first.
            let mut after_grace: VecDeque<(Instant, Vec<Invalidation>)> = VecDeque::new();
            loop {
                std::thread::sleep(REFRESH_EVERY);
                match view.refresh() {
                    Ok(Some(changes)) => {
                        invalidate(&invalidator, &changes);
                        runtime_root::moved(&served, changes.to);
                        let later = changes.after_grace();
                        if !later.is_empty() {
                            // Measured from now, after the view moved: the
                            // view's grace ends first.
                            after_grace
                                .push_back((Instant::now() + view.removed_names_grace(), later));
                        }
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!("checking for a new generation: {e}"),
                }
                while let Some((due, _)) = after_grace.front() {
                    if *due > Instant::now() {
                        break;
                    }
                    if let Some((_, later)) = after_grace.pop_front()
                        && let Err(e) = invalidator.send(&later)
                    {
                        tracing::warn!(
                            "dropping removed names: {e}; they may resolve for up to {:?} more",
                            fuse::GENERATION_TTL
                        );
                    }
                }
            }
        })
        .context("starting the refresh thread")?;
    Ok(())
}

/// Drops what the kernel cached about the previous generation.
fn invalidate(invalidator: &Invalidator, changes: &Changes) {
    let started = Instant::now();
    let shown = format!(
        "generation {:?} (from {:?}: {} Apps added, {} removed; {} versions added, {} removed; \
         {} Current links changed)",
        changes.to,
        changes.from,
        changes.apps_added.len(),
        changes.apps_removed.len(),
        changes.versions_added.len(),
        changes.versions_removed.len(),
        changes.current_changed.len(),
    );
    match invalidator.send(&changes.invalidations()) {
        Ok(sent) => tracing::info!(
            "now showing {shown}; {sent} cache invalidations sent in {:?}",
            started.elapsed()
        ),
        // The kernel's answers expire on their own within the TTL.
        Err(e) => tracing::warn!(
            "now showing {shown}, but {e}; stale answers may remain for up to {:?}",
            fuse::GENERATION_TTL
        ),
    }
}

/// Mounts and serves until unmounted. `ready` (the daemon's pipe) is told
/// once the mount is usable.
pub fn serve(request: &Request, ready: Option<&mut Ready>) -> Result<()> {
    // Before any thread exists, so that every thread inherits the mask.
    signals::block_termination()?;
    let choice = match request.generation {
        Some(n) => GenerationChoice::Fixed(n),
        None => GenerationChoice::Live,
    };
    let options = ViewOptions {
        generation: choice,
        cache_bytes: request.cache_bytes,
        connections: request.threads + 1,
    };
    // An image is served through a scratch store describing it (removed
    // when serving ends and `_scratch` drops).
    let (store_dir, _scratch) = match &request.image {
        Some(image) => {
            let (dir, guard) = adopt_image(image)?;
            (dir, Some(guard))
        }
        None => (request.store.clone(), None),
    };
    let view = View::open(&store_dir, options)
        .with_context(|| format!("opening the store in {}", store_dir.display()))?;
    let view = Arc::new(view);
    // What gc must keep while this mount runs (an image's scratch store
    // needs no keeping). Removed when serving ends.
    let served = request
        .image
        .is_none()
        .then(|| {
            let target = &request.mountpoint;
            runtime_root::announce(&store_dir, ServedKind::Mount, target, view.generation())
        })
        .transpose()?;
    let mount_options = MountOptions {
        allow_other: request.allow_other,
        threads: request.threads,
        suid: is_root(),
    };
    let mut mounted = fuse::mount(view.clone(), &request.mountpoint, &mount_options)
        .with_context(|| format!("mounting on {}", request.mountpoint.display()))?;
    let mut index = match &request.index {
        Some(dir) => Some(index::mount(
            view.clone(),
            &store_dir,
            &request.mountpoint,
            dir,
            &mount_options,
        )?),
        None => None,
    };
    // The index first: its links lead into the main mount.
    let mut unmounters: Vec<_> = index.iter_mut().map(|i| i.unmounter()).collect();
    unmounters.push(mounted.unmounter());
    signals::unmount_on_termination(unmounters)?;
    if choice == GenerationChoice::Live {
        let served = served.as_ref().map_or_else(Weak::new, Arc::downgrade);
        follow_live_generation(view.clone(), mounted.invalidator(), served)?;
    }
    if let Some(pid_file) = &request.pid_file {
        std::fs::write(pid_file, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing {}", pid_file.display()))?;
    }
    // Only once nothing else can fail: an early error return would leave the
    // index thread serving after the main mount is gone.
    let index = index
        .map(|i| i.serve(choice == GenerationChoice::Live))
        .transpose()?;
    let shown = match view.generation() {
        Some(g) => format!("generation {g}"),
        None => "the empty store".to_string(),
    };
    let indexed = match &request.index {
        Some(dir) => format!(", its index on {}", dir.display()),
        None => String::new(),
    };
    let source = match &request.image {
        Some(image) => format!("image {}", image.path.display()),
        None => format!("{shown} of {}", request.store.display()),
    };
    let message = format!(
        "mounted {source} on {}{indexed} (pid {})",
        request.mountpoint.display(),
        std::process::id()
    );
    tracing::info!("{message}");
    if let Some(ready) = ready {
        ready.ok(&message);
    }
    let served = mounted.run().context("serving the mount");
    if let Some(index) = index {
        index.stop();
    }
    if let Some(pid_file) = &request.pid_file {
        let _ = std::fs::remove_file(pid_file);
    }
    tracing::info!("{} is unmounted", request.mountpoint.display());
    served
}
