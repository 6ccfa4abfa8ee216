//! Mounting the view and serving it until it is unmounted.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use nexus_fs::follow::{self, Follower};
use nexus_fs::fuse::{self, MountOptions, Mounted, NexusFs};
use nexus_fs::{GenerationChoice, View, ViewOptions};
use nexus_store::runtime::ServedKind;

use super::daemon::Ready;
use super::sandbox::{self, Confinement, SandboxArgs};
use super::signals::{self, Termination};
use super::{index, inherited, kernel_view, mounts, runtime_root, systemd, takeover};

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
    /// The log file, if the log goes to one (a successor logs there too).
    pub log_file: Option<PathBuf>,
    /// Ignore setuid bits even when mounting as root (`--nosuid`).
    pub nosuid: bool,
    /// Serve this signed image instead of the store (`--image`).
    pub image: Option<ImageRequest>,
    /// Stack the kernel view on the mounts (`--kernel-metadata`).
    pub kernel_metadata: bool,
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
    super::mounts::check_dir(path, "mount point")
}

/// How a mount daemon serves, whichever way it got its mounts (made them,
/// or took them over): what it tells a successor it serves.
#[derive(Clone, Debug)]
pub(super) struct Settings {
    /// The store directory served.
    pub store: PathBuf,
    /// The mount point (canonical).
    pub mountpoint: PathBuf,
    /// The Index's mount point, if any.
    pub index: Option<PathBuf>,
    /// A fixed generation, or `None` to follow the live one.
    pub generation: Option<i64>,
    /// The mount options.
    pub mount: MountOptions,
    /// Decoded-block cache size.
    pub cache_bytes: u64,
    /// Where the daemon's pid is written.
    pub pid_file: Option<PathBuf>,
    /// The log file, if the log goes to one.
    pub log_file: Option<PathBuf>,
    /// The image served (`--image`), if any: such a mount is not handed
    /// over (its store is a scratch directory of this process).
    pub image: Option<PathBuf>,
    /// Whether the kernel view covers the mounts (`--kernel-metadata`):
    /// a takeover then hands over the main mount's root too; systemd's
    /// descriptor store does not keep such mounts.
    pub kernel_metadata: bool,
    /// The sandbox's switches.
    pub sandbox: SandboxArgs,
}

impl Settings {
    fn of(request: &Request) -> Settings {
        Settings {
            store: request.store.clone(),
            mountpoint: request.mountpoint.clone(),
            index: request.index.clone(),
            generation: request.generation,
            mount: MountOptions {
                allow_other: request.allow_other,
                threads: request.threads,
                suid: crate::is_root() && !request.nosuid,
                source: request.store.clone(),
                read_ahead_kib: fuse::READ_AHEAD_KIB,
            },
            cache_bytes: request.cache_bytes,
            pid_file: request.pid_file.clone(),
            log_file: request.log_file.clone(),
            image: request.image.as_ref().map(|i| i.path.clone()),
            kernel_metadata: request.kernel_metadata,
            sandbox: request.sandbox.clone(),
        }
    }

    /// The view options of these settings.
    pub fn view_options(&self) -> ViewOptions {
        ViewOptions {
            generation: match self.generation {
                Some(n) => GenerationChoice::Fixed(n),
                None => GenerationChoice::Live,
            },
            cache_bytes: self.cache_bytes,
            connections: self.mount.threads + 1,
        }
    }
}

/// The mounts a daemon serves, not yet serving.
pub(super) struct Mounts {
    /// The main mount.
    pub main: Mounted<NexusFs>,
    /// The Index's, if any.
    pub index: Option<index::IndexMount>,
    /// Whether they were handed over by another process (a takeover, or
    /// systemd's file descriptor store after a crash): that process may
    /// have left requests unanswered, which the kernel must send again.
    pub adopted: bool,
    /// The main mount's root as the previous daemon held it, beneath its
    /// kernel view (a takeover of a `--kernel-metadata` mount).
    pub kernel_data: Option<std::os::fd::OwnedFd>,
}

/// Mounts and serves until unmounted. `ready` (the daemon's pipe) is told
/// once the mount is usable.
pub fn serve(request: &Request, ready: Option<&mut Ready>) -> Result<()> {
    // First: until it runs, SIGTERM would kill the daemon outright.
    let termination = signals::watch()?;
    let settings = Settings::of(request);
    // The store to serve: an image is served through a scratch store
    // describing it (removed when serving ends and `scratch` drops).
    let (store_dir, scratch) = match &request.image {
        Some(image) => {
            let (dir, guard) = adopt_image(image)?;
            (dir, Some(guard))
        }
        None => (request.store.clone(), None),
    };
    // The view.
    let (view, source) = crate::open::open_view_and_source(&store_dir, settings.view_options())?;
    let view = Arc::new(view);
    // What gc must keep while this mount runs (an image's scratch store
    // needs no keeping). Removed when serving ends.
    let record = request
        .image
        .is_none()
        .then(|| {
            let target = &request.mountpoint;
            runtime_root::announce(&store_dir, ServedKind::Mount, target, view.clone())
        })
        .transpose()?;
    // The mounts: those systemd kept for us if the previous daemon died,
    // else new ones.
    let mounts = match inherited::mounts(&view, &settings)? {
        Some(mounts) => mounts,
        None => mount(&view, &settings)?,
    };
    let daemon = Daemon {
        settings,
        store_dir,
        scratch,
        view,
        source,
        mounts,
        record,
        takeover: None,
    };
    daemon.run(termination, ready)
}

/// Makes the mounts of `settings`.
fn mount(view: &Arc<View>, settings: &Settings) -> Result<Mounts> {
    mounts::refuse_stacking(&settings.mountpoint, "mount point")?;
    if let Some(dir) = &settings.index {
        mounts::refuse_stacking(dir, "index directory")?;
    }
    let main = fuse::mount(view.clone(), &settings.mountpoint, &settings.mount)
        .with_context(|| format!("mounting on {}", settings.mountpoint.display()))?;
    let index = match &settings.index {
        Some(dir) => Some(index::mount(
            view.clone(),
            &settings.mountpoint,
            dir,
            &settings.mount,
        )?),
        None => None,
    };
    Ok(Mounts {
        main,
        index,
        adopted: false,
        kernel_data: None,
    })
}

/// A daemon with its mounts, about to serve them.
pub(super) struct Daemon {
    /// How it serves.
    pub settings: Settings,
    /// The store it reads (for an image, its scratch store).
    pub store_dir: PathBuf,
    /// An image's scratch store, removed when serving ends.
    pub scratch: Option<tempfile::TempDir>,
    /// Its view.
    pub view: Arc<View>,
    /// The view's pack source (told, when confined, to reach remotes
    /// through a fetcher process).
    pub source: Arc<nexus_remote::RemotePacks>,
    /// Its mounts.
    pub mounts: Mounts,
    /// Its runtime record (none for an image).
    pub record: Option<runtime_root::Recorder>,
    /// The takeover socket a successor bound (to be renamed into place),
    /// with its temporary path; `None`: bind it here.
    pub takeover: Option<(std::os::unix::net::UnixListener, PathBuf)>,
}

impl Daemon {
    /// Serves until the mounts are gone: the pid file, systemd's
    /// descriptor store, the takeover socket, the sandbox, unmounting on
    /// SIGTERM, the threads that follow the live generation; then tells
    /// whoever waits that the mount is ready, and serves.
    pub fn run(self, termination: Termination, ready: Option<&mut Ready>) -> Result<()> {
        let Daemon {
            settings,
            store_dir,
            scratch,
            view,
            source,
            mounts,
            record,
            takeover,
        } = self;
        let Mounts {
            main: mut mounted,
            index,
            adopted,
            kernel_data,
        } = mounts;
        let mut index = index;
        // Before the sandbox forbids making the socket.
        systemd::connect();
        if adopted {
            // The previous daemon is gone: what it read and left unanswered
            // is queued again (the kernel keeps it pending until then).
            mounted.resend().context(
                "asking the kernel to send again the requests the previous daemon left \
                 (FUSE_NOTIFY_RESEND needs Linux 6.9 or later)",
            )?;
            if let Some(index) = &index {
                index.resend().context("resending the index's requests")?;
            }
        }
        // The index first: its links lead into the main mount.
        let mut unmounters: Vec<_> = index.iter_mut().map(|i| i.unmounter()).collect();
        unmounters.push(mounted.unmounter());
        let mut mount_points: Vec<PathBuf> = settings.index.iter().cloned().collect();
        mount_points.push(settings.mountpoint.clone());
        if let Some(pid_file) = &settings.pid_file {
            write_pid_file(pid_file).with_context(|| format!("writing {}", pid_file.display()))?;
        }
        // systemd keeps the connections (when the unit has a descriptor
        // store), so that a restart after a crash finds the mounts live
        // (see `inherited`).
        let fuse_fd = mounted
            .device()
            .context("duplicating the mount's descriptor")?;
        let index_fd = index
            .as_ref()
            .map(|i| i.device())
            .transpose()
            .context("duplicating the index's descriptor")?;
        let stored = systemd::store_fd(systemd::FUSE_FD_NAME, fuse_fd.as_fd());
        if let Some(fd) = index_fd.as_ref().filter(|_| stored) {
            systemd::store_fd(systemd::INDEX_FD_NAME, fd.as_fd());
        }
        // The kernel view's plan and the FUSE mount's root, opened before
        // anything covers it.
        let kernel_view = settings
            .kernel_metadata
            .then(|| {
                let files = kernel_view::Files::new(
                    &kernel_view::image_dir(&store_dir)?,
                    kernel_view::decoded_dir(&store_dir),
                );
                let plan = files.plan(
                    &settings.mountpoint,
                    settings.index.as_deref(),
                    settings.mount.suid,
                )?;
                // Opened by path: what it reaches must be the mount's own
                // root, or a link swapped in above the mount point would
                // choose the directory the view reads every file from.
                let data = match kernel_data {
                    Some(fd) => fd,
                    None => kernel_view::checked_root(
                        kernel_view::open_data(&settings.mountpoint)?,
                        &settings.mountpoint,
                    )?,
                };
                // With the mount kept, the root beneath the view is kept
                // too: a daemon restarted on it finds the mount covered.
                if stored {
                    systemd::store_fd(systemd::DATA_FD_NAME, data.as_fd());
                }
                let data: kernel_view::DataRoot = Arc::new(std::sync::Mutex::new(Some(data)));
                Ok::<_, anyhow::Error>((files, plan, data))
            })
            .transpose()?;
        // The takeover socket, bound while binding is still allowed.
        let takeover_socket = match takeover_socket(&settings, takeover) {
            Ok(socket) => Some(socket),
            Err(e) => {
                tracing::warn!("{e:#}: `nexus takeover` cannot replace this daemon");
                None
            }
        };
        // Made if missing, so that what this daemon may not do there is the
        // same whether or not it shows a kernel view (the selftest).
        let _ = kernel_view::images_root(&store_dir);
        let owner = rustix::process::getuid();
        let log_dir = settings.log_file.as_deref().and_then(Path::parent);
        let confined = Arc::new(
            sandbox::confine(&Confinement {
                records: record.is_some(),
                mounts: mount_points,
                pid_file: settings.pid_file.as_deref(),
                log_dir,
                mounts_outlive_daemon: stored,
                remote: Some(&source),
                reader: Some(view.reader()),
                kernel_view: kernel_view.as_ref().map(|(_, plan, data)| (plan, data)),
                ..Confinement::new(&settings.sandbox, sandbox::Daemon::Mount, &store_dir)
                    .serving_image(
                        settings.image.as_deref(),
                        scratch.as_ref().map(|s| s.path()),
                    )
            })
            .inspect_err(|_| {
                if let Some(pid_file) = &settings.pid_file {
                    let _ = std::fs::remove_file(pid_file);
                }
            })?,
        );
        termination.unmount(confined.unmounters(unmounters));
        // A successor can take the mounts over (an image's refuses, saying
        // why). Serving does not depend on it.
        let _listening = takeover_socket.and_then(|(listener, path)| {
            let giver = takeover::Giver {
                settings: settings.clone(),
                owner,
                view: view.clone(),
                index: index.as_ref().map(|i| i.index()),
                fuse: fuse_fd,
                index_fuse: index_fd,
                kernel_data: kernel_view.as_ref().map(|(_, _, data)| data.clone()),
                record: record.as_ref().map(|r| r.root()),
                termination: termination.clone(),
                confined: confined.clone(),
            };
            takeover::listen(listener, &path, giver)
                .inspect_err(|e| {
                    tracing::warn!("{e:#}: `nexus takeover` cannot replace this daemon")
                })
                .ok()
        });
        // Only once nothing else can fail: an early error return would leave
        // the index thread serving after the main mount is gone.
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
        // Serving starts before the kernel view is shown: mounting
        // overlayfs over the FUSE mount asks it questions.
        let serving = std::thread::Builder::new()
            .name("serve".into())
            .spawn(move || mounted.run())
            .context("starting the thread serving the mount")?;
        // The kernel view: shown now, then after the Index moved. Should it
        // fail now, the mounts are undone as on SIGTERM, and the error told.
        let mut failed = None;
        let shown_generation: runtime_root::ShownGeneration =
            Arc::new(std::sync::atomic::AtomicI64::new(-1));
        if let Some((files, plan, data)) = kernel_view {
            let index_layer = plan.index.clone();
            let shower = confined.kernel_view_shower(plan);
            let index = index.as_ref().map(|i| i.served());
            let record = record.as_ref().map(|r| r.root());
            let shown = kernel_view::refresh(
                &view,
                index.as_ref().and_then(|i| i.mounted()),
                &files,
                &*shower,
                record.as_deref(),
            )
            .and_then(|()| {
                let data = data.lock().unwrap_or_else(|p| p.into_inner());
                let data = data.as_ref().context("the FUSE mount's root is gone")?;
                // The Index's unmounter comes first in termination's.
                kernel_view::stop_when_removed(
                    &settings.mountpoint,
                    data.as_fd(),
                    index_layer.as_ref(),
                    termination.clone(),
                )
            });
            match shown {
                Ok(()) => {
                    shown_generation.store(
                        view.generation().unwrap_or(-1),
                        std::sync::atomic::Ordering::Release,
                    );
                    followers.push(Box::new(kernel_view::KernelViewFollower {
                        view: view.clone(),
                        index,
                        files,
                        shower,
                        shown: shown_generation.clone(),
                        record,
                    }));
                }
                Err(e) => {
                    termination.now();
                    failed = Some(e);
                }
            }
        }
        // What gc must keep, updated as the view moves and the kernel looks up
        // and forgets files. Withdrawn when serving ends (the takeover
        // thread holds the record too, and never ends).
        let withdraw = record.as_ref().map(|r| r.root());
        if let Some(record) = record {
            followers.push(Box::new(record.with_shown(shown_generation)));
        }
        let target = settings.mountpoint.display().to_string();
        if systemd::supervised() {
            followers.push(Box::new(systemd::StatusFollower {
                store: settings.store.clone(),
                target: target.clone(),
            }));
        }
        let following = follow::follow(view.clone(), followers)
            .context("starting the thread that follows the live generation")?;
        let shown = match view.generation() {
            Some(g) => format!("generation {g}"),
            None => "the empty store".to_string(),
        };
        let indexed = match &settings.index {
            Some(dir) => format!(", its index on {}", dir.display()),
            None => String::new(),
        };
        let source = match &settings.image {
            Some(image) => format!("image {}", image.display()),
            None => format!("{shown} of {}", settings.store.display()),
        };
        let verb = if adopted { "took over" } else { "mounted" };
        let message = format!(
            "{verb} {source} on {target}{indexed} (pid {})",
            std::process::id()
        );
        tracing::info!("{message}");
        let status = systemd::status_line(view.generation(), &settings.store, &target);
        if adopted {
            systemd::ready_as_main(&status);
        } else {
            systemd::ready(&status);
        }
        match (ready, &failed) {
            (Some(ready), None) => ready.ok(&message),
            (Some(ready), Some(e)) => ready.fail(&format!("{e:#}")),
            (None, _) => {}
        }
        let served = match serving.join() {
            Ok(served) => served.context("serving the mount"),
            Err(_) => Err(anyhow::anyhow!("the thread serving the mount panicked")),
        };
        let served = match failed {
            Some(e) => Err(e),
            None => served,
        };
        drop(following);
        if let Some(record) = withdraw {
            record.withdraw();
        }
        // Whatever of the daemon's mounts is still mounted (the index when
        // the main mount went away from outside, the main mount when
        // serving failed): confined, the mounts' own unmounting would be
        // refused.
        confined.unmount_remaining();
        if let Some(index) = index {
            index.stop();
        }
        systemd::remove_fd(systemd::FUSE_FD_NAME);
        if settings.index.is_some() {
            systemd::remove_fd(systemd::INDEX_FD_NAME);
        }
        if settings.kernel_metadata {
            systemd::remove_fd(systemd::DATA_FD_NAME);
        }
        // The image's scratch store, then (confined, through the keeper,
        // which may remove the emptied directory) the pid file.
        drop(scratch);
        confined.finish();
        tracing::info!("{target} is unmounted");
        served
    }
}

/// The takeover socket (`nexus takeover`): `bound`, a socket a successor
/// bound under a temporary name, is renamed into place; otherwise one is
/// bound. Returns it with its path.
fn takeover_socket(
    settings: &Settings,
    bound: Option<(std::os::unix::net::UnixListener, PathBuf)>,
) -> Result<(std::os::unix::net::UnixListener, PathBuf)> {
    let path = takeover::socket_path(&settings.store, &settings.mountpoint);
    let listener = match bound {
        Some((listener, temporary)) => {
            std::fs::rename(&temporary, &path)
                .with_context(|| format!("moving the takeover socket to {}", path.display()))?;
            listener
        }
        None => takeover::bind(&path)?,
    };
    Ok((listener, path))
}

/// Writes our pid to `path` through a fresh temporary file renamed over it:
/// a symlink planted at `path` is replaced, never written through.
pub(super) fn write_pid_file(path: &Path) -> std::io::Result<()> {
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
