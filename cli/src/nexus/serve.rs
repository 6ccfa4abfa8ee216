//! Mounting the view and serving it until it is unmounted.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use nexus_fs::follow::{self, Follower};
use nexus_fs::fuse::{self, MountOptions};
use nexus_fs::{GenerationChoice, ViewOptions};
use nexus_store::runtime::ServedKind;

use super::daemon::Ready;
use super::sandbox::{self, Confinement, Daemon, SandboxArgs};
use super::{index, runtime_root, signals};

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
    /// The sandbox's switches.
    pub sandbox: SandboxArgs,
}

/// An image to serve in place, the keys its signature must be by, and the
/// store whose record of image counters it is checked against.
#[derive(Debug)]
pub struct ImageRequest {
    /// The image file (absolute).
    pub path: PathBuf,
    /// Trusted and revoked keys.
    pub trust: nexus_npk::TrustSet,
    /// The store holding the replay record (`image_counter:DOMAIN`).
    pub store: PathBuf,
    /// Serve an image older than the store's record (`--allow-downgrade`).
    pub allow_downgrade: bool,
    /// Serve an expired image (`--allow-expired`).
    pub allow_expired: bool,
}

impl ImageRequest {
    /// The `--image FILE` of a command, if given, with the trust of the key
    /// store in `keys` and the counter record of the store in `store`.
    pub fn from_option(
        image: Option<PathBuf>,
        keys: &Path,
        store: &Path,
        allow_downgrade: bool,
        allow_expired: bool,
    ) -> Result<Option<ImageRequest>> {
        image
            .map(|path| {
                Ok(ImageRequest {
                    path: std::path::absolute(&path)
                        .with_context(|| format!("image path {}", path.display()))?,
                    trust: nexus_npk::KeyStore::new(keys).trust_set()?,
                    store: std::path::absolute(store)
                        .with_context(|| format!("store path {}", store.display()))?,
                    allow_downgrade,
                    allow_expired,
                })
            })
            .transpose()
    }
}

/// Checks `image` (signature by a key trusted for images, expiry, body and
/// root hash; chunks are verified as they are read), checks its counter
/// against the store's record and records it (an image served advances its
/// trust domain as one switched to does), and makes the throw-away store
/// that serves it in place. The store lives in a temporary directory
/// removed when the guard drops.
pub(super) fn adopt_image(image: &ImageRequest) -> Result<(PathBuf, tempfile::TempDir)> {
    let expiry = nexus_npk::Expiry::unless_allowed(image.allow_expired);
    let archive = nexus_npk::Archive::open_with(
        &image.path,
        nexus_npk::Policy::Trusted(&image.trust, expiry),
        nexus_npk::Check::Manifest,
    )
    .with_context(|| format!("checking the image {}", image.path.display()))?;
    super::image::record_served(&archive, image)?;
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
    // when serving ends and `scratch` drops).
    let (store_dir, scratch) = match &request.image {
        Some(image) => {
            let (dir, guard) = adopt_image(image)?;
            (dir, Some(guard))
        }
        None => (request.store.clone(), None),
    };
    let view = crate::open::open_view(&store_dir, options)?;
    let view = Arc::new(view);
    // What gc must keep while this mount runs (an image's scratch store
    // needs no keeping). Removed when serving ends.
    let served = request
        .image
        .is_none()
        .then(|| {
            let target = &request.mountpoint;
            runtime_root::announce(&store_dir, ServedKind::Mount, target, view.clone())
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
            &request.mountpoint,
            dir,
            &mount_options,
        )?),
        None => None,
    };
    // The index first: its links lead into the main mount.
    let mut unmounters: Vec<_> = index.iter_mut().map(|i| i.unmounter()).collect();
    unmounters.push(mounted.unmounter());
    let mut mounts: Vec<PathBuf> = request.index.iter().cloned().collect();
    mounts.push(request.mountpoint.clone());
    if let Some(pid_file) = &request.pid_file {
        write_pid_file(pid_file).with_context(|| format!("writing {}", pid_file.display()))?;
    }
    let confined = sandbox::confine(
        &Confinement {
            records: served.is_some(),
            mounts,
            pid_file: request.pid_file.as_deref(),
            ..Confinement::new(&request.sandbox, Daemon::Mount, &store_dir)
        }
        .serving_image(
            request.image.as_ref().map(|i| i.path.as_path()),
            scratch.as_ref().map(|s| s.path()),
        ),
    )
    .inspect_err(|_| {
        if let Some(pid_file) = &request.pid_file {
            let _ = std::fs::remove_file(pid_file);
        }
    })?;
    signals::unmount_on_termination(confined.unmounters(unmounters))?;
    // Only once nothing else can fail: an early error return would leave the
    // index thread serving after the main mount is gone.
    let index = index.map(|i| i.serve()).transpose()?;
    // The main mount's kernel caches, then the index's, follow the view.
    let mut followers: Vec<Box<dyn Follower>> = vec![Box::new(mounted.invalidator())];
    // Names of what the view no longer shows are dropped from the kernel
    // once unused, so that gc can take them.
    if let Some(reaper) = mounted.reaper(view.clone()) {
        followers.push(Box::new(reaper));
    }
    if let Some(index) = &index {
        followers.push(Box::new(index.follower()));
    }
    // What gc must keep, updated as the view moves and the kernel looks up
    // and forgets files.
    if let Some(served) = served {
        followers.push(Box::new(served));
    }
    let following = follow::follow(view.clone(), followers)
        .context("starting the thread that follows the live generation")?;
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
    drop(following);
    // Whatever of the daemon's mounts is still mounted (the index when the
    // main mount went away from outside, the main mount when serving
    // failed): confined, the mounts' own unmounting would be refused.
    confined.unmount_remaining();
    if let Some(index) = index {
        index.stop();
    }
    // The image's scratch store, then (confined, through the keeper, which
    // may remove the emptied directory) the pid file.
    drop(scratch);
    drop(confined);
    tracing::info!("{} is unmounted", request.mountpoint.display());
    served
}

/// Writes our pid to `path` through a fresh temporary file renamed over it:
/// a symlink planted at `path` is replaced, never written through.
fn write_pid_file(path: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".nexus-pid")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .tempfile_in(dir)?;
    writeln!(tmp, "{}", std::process::id())?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod pid_file_tests {
    use super::*;

    /// `--pid-file` in a shared directory: a symlink planted at the name is
    /// replaced, its target untouched.
    #[test]
    fn a_planted_pid_file_symlink_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let pid_file = dir.path().join("nexus.pid");
        std::os::unix::fs::symlink(&victim, &pid_file).unwrap();
        write_pid_file(&pid_file).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(std::fs::symlink_metadata(&pid_file).unwrap().is_file());
        assert_eq!(
            std::fs::read_to_string(&pid_file).unwrap(),
            format!("{}\n", std::process::id())
        );
    }
}
