//! The daemons' sandbox: once `nexus mount` has mounted (or `nexus serve
//! --virtio-fs` has bound its socket) and opened the store, it confines
//! itself before it reads a single request, as virtiofsd does and more.
//!
//! What a confined daemon is left with (ARCHITECTURE.md, "Threat model",
//! names who this defends against and the tests that prove it):
//!
//! - **User**: started as root, it becomes the sandbox user (`--sandbox-user`;
//!   default `nexus` if that user exists, else `nobody`) with no
//!   supplementary groups. A daemon started by another user stays that
//!   user.
//! - **Capabilities**: as root, exactly `CAP_DAC_READ_SEARCH` (to read the
//!   store, which is private to root, as new packs appear) and
//!   `CAP_DAC_OVERRIDE` (to write its runtime record in root's
//!   `STORE/run`), effective and permitted; nothing
//!   inheritable, ambient or in the bounding set beyond them. Landlock
//!   confines what the two reach to exactly those paths. Otherwise none.
//! - **Landlock** ([`rules`]): read the catalog, its WAL (`-wal`), the
//!   WAL index (`-shm`) and the packs; create, write and
//!   remove files (and bind sockets) in `STORE/run`; read, write and ioctl `/dev/fuse`
//!   (a FUSE mount reopens it per request thread); with a kernel view,
//!   write its own image directory and read `STORE/decoded`; for an
//!   image, read the image and use its scratch store. Nothing else, no TCP, no abstract
//!   sockets or signals outside the daemon, no mount changes.
//! - **seccomp** ([`filter`]): an allowlist of the system calls serving
//!   makes, with argument checks (threads but no processes, no executable
//!   mappings, Unix stream sockets that accept but never connect, signals
//!   to itself only); anything else fails with `EPERM`.
//! - **`no_new_privs`**, and as root new **network and IPC namespaces**
//!   (empty: no interface, not even loopback).
//! - **Remotes** ([`fetcher`]): a store with remotes keeps this network-less
//!   confinement; a fetcher process, started just before and confined on
//!   its own (TCP to the remotes' ports, no store file), reads remotes for
//!   it. The daemon only gains its block cache, `STORE/remote-cache`
//!   (make, write, rename and remove files and directories there).
//!
//! Not used, and why: a mount namespace with `pivot_root` into the store
//! (virtiofsd's model) would have to rebuild, at the same absolute paths,
//! every file the daemon still uses (store, `STORE/run`, `/dev/fuse`, the
//! image, a log reopened after rotation) and make every thread join it;
//! Landlock grants the same files without moving them, and seccomp denies
//! the metadata changes Landlock does not cover (`chmod`, `chown`,
//! `setxattr`, `utimes`). A pid namespace applies to children only, and a
//! confined daemon cannot create processes.
//!
//! Unmounting needs what the sandbox takes away, so a [`keeper`] process,
//! forked just before, does it on the daemon's behalf, and tidies up
//! after it however it ends. The steps that belong to each thread run on
//! every thread ([`threads`]).
//!
//! What daemon features need from the sandbox, and have:
//!
//! - systemd notification: open and connect `NOTIFY_SOCKET` before
//!   [`confine`]; `send`/`sendto` without an address on it is allowed, a
//!   new datagram socket or `connect` is not.
//! - takeover of the FUSE device by a new daemon: a listening Unix
//!   stream socket in `STORE/run` (`socket`, `bind`, `listen`, `accept4`,
//!   `sendmsg` with `SCM_RIGHTS`) is allowed; the new daemon connects, not
//!   the old one. The old daemon must end through [`Confined::finish`]
//!   (or drop its [`Confined`]) once it has handed the device over: a
//!   daemon that ends without finishing has its keeper detach its mounts.
//!   The new daemon confines itself as any other, with its own keeper.
//! - a log reopened on SIGHUP: pass its directory as
//!   [`Confinement::log_dir`]; files there may then be created and
//!   appended to (so give logs a directory of their own).
//! - `--no-sandbox` turns all of this off, loudly, for debugging.

mod args;
mod catalog;
mod fetcher;
mod filter;
mod keeper;
mod rules;
mod selftest;
mod threads;
mod user;

use std::ffi::{CString, OsStr};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use nexus_fs::fuse::{Unmounted, Unmounter};

use crate::nexus::kernel_view::{
    DataRoot, Direct as DirectShower, Layer as KernelViewLayer, Plan as KernelViewPlan,
    Shower as KernelViewShower,
};
pub use args::{SandboxArgs, SocketArgs};
pub use fetcher::serve as serve_fetcher;
use keeper::{Fusermount, KeeperPlan, KeptFile, KeptMount};
use rules::{Grant, Rule};

/// `CAP_DAC_OVERRIDE`.
const CAP_DAC_OVERRIDE: u64 = 1 << 1;
/// `CAP_DAC_READ_SEARCH`.
const CAP_DAC_READ_SEARCH: u64 = 1 << 2;
/// `CAP_SYS_ADMIN`.
const CAP_SYS_ADMIN: u64 = 1 << 21;

/// Which daemon confines itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Daemon {
    /// `nexus mount`: serves `/dev/fuse`.
    Mount,
    /// `nexus serve --virtio-fs`: serves VM guests on a socket.
    VirtioFs,
}

/// What a daemon still needs once confined.
#[derive(Debug)]
pub struct Confinement<'a> {
    /// The command-line switches.
    pub args: &'a SandboxArgs,
    /// Which daemon.
    pub daemon: Daemon,
    /// The store it reads (for an image, its scratch store).
    pub store: &'a Path,
    /// Whether it keeps a runtime record in `STORE/run`.
    pub records: bool,
    /// The image it serves in place, and the scratch directory of the
    /// store describing it (removed when serving ends).
    pub image: Option<(&'a Path, &'a Path)>,
    /// Its mounts, in the order to unmount them (an Index first).
    pub mounts: Vec<PathBuf>,
    /// Its vhost-user socket, removed when serving ends.
    pub socket: Option<&'a nexus_virtiofs::GuestSocket>,
    /// Its pid file, removed when serving ends.
    pub pid_file: Option<&'a Path>,
    /// A directory in which a log may be reopened.
    pub log_dir: Option<&'a Path>,
    /// The mounts' connections are kept by systemd's file descriptor store
    /// (`nexus-mount@.service`): should the daemon die, the keeper leaves
    /// the mounts for the daemon systemd restarts on them.
    pub mounts_outlive_daemon: bool,
    /// The store's pack source: when the store has remotes, it is told to
    /// read them through a fetcher process.
    pub remote: Option<&'a nexus_remote::RemotePacks>,
    /// The reader of the view it serves, whose catalog connections (and
    /// the pack source's) are opened again once it is confined.
    pub reader: Option<&'a nexus_store::read::Reader>,
    /// The kernel view over its mounts (`--kernel-metadata`), with the
    /// FUSE mount's root it reads contents from.
    pub kernel_view: Option<(&'a KernelViewPlan, &'a DataRoot)>,
}

impl<'a> Confinement<'a> {
    /// A daemon reading `store` (no record, image, mounts, socket, pid
    /// file or log directory: set those that apply).
    pub fn new(args: &'a SandboxArgs, daemon: Daemon, store: &'a Path) -> Confinement<'a> {
        Confinement {
            args,
            daemon,
            store,
            records: false,
            image: None,
            mounts: Vec::new(),
            socket: None,
            pid_file: None,
            log_dir: None,
            mounts_outlive_daemon: false,
            remote: None,
            reader: None,
            kernel_view: None,
        }
    }

    /// Serving `image` through the scratch store in `scratch`, when both
    /// are given.
    pub fn serving_image(self, image: Option<&'a Path>, scratch: Option<&'a Path>) -> Self {
        Confinement {
            image: image.zip(scratch),
            ..self
        }
    }
}

/// Unmounts a mount the kernel view covers: the kernel view first.
struct UncoverAndUnmount {
    layer: KernelViewLayer,
    /// The FUSE mount's root, for the main mount: closed once uncovered.
    data: Option<DataRoot>,
    inner: Unmounter,
}

impl Unmount for UncoverAndUnmount {
    fn unmount(&mut self) -> io::Result<Unmounted> {
        crate::nexus::kernel_view::remove(&self.layer, self.data.is_some())
            .map_err(io::Error::from_raw_os_error)?;
        if let Some(data) = &self.data {
            data.lock().unwrap_or_else(|p| p.into_inner()).take();
        }
        self.inner.unmount()
    }
}

/// Shows the kernel view through the keeper.
struct KeeperShower(Arc<keeper::Keeper>);

impl KernelViewShower for KeeperShower {
    fn show(&self, with_index: bool) -> io::Result<()> {
        self.0.show_kernel_view(with_index)
    }
}

/// Something that unmounts one mount (e.g. on SIGTERM).
pub trait Unmount: Send {
    /// Unmounts; a busy mount is detached.
    fn unmount(&mut self) -> io::Result<Unmounted>;
}

impl Unmount for Unmounter {
    fn unmount(&mut self) -> io::Result<Unmounted> {
        Unmounter::unmount(self)
    }
}

/// Unmounts through the keeper.
struct KeeperUnmount {
    keeper: Arc<keeper::Keeper>,
    index: usize,
}

impl Unmount for KeeperUnmount {
    fn unmount(&mut self) -> io::Result<Unmounted> {
        self.keeper.unmount(self.index)
    }
}

/// Drops the daemon's descriptor of the FUSE mount's root before the
/// keeper unmounts it: held, it would keep the mount busy, and alive once
/// detached (the daemon would then wait for an end that never comes).
struct DropDataFirst {
    data: DataRoot,
    inner: KeeperUnmount,
}

impl Unmount for DropDataFirst {
    fn unmount(&mut self) -> io::Result<Unmounted> {
        self.data.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.inner.unmount()
    }
}

/// The socket's path and identity, to remove it only while it is ours.
#[derive(Debug)]
struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    fn remove_if_ours(&self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path)
            && meta.dev() == self.dev
            && meta.ino() == self.ino
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A daemon after [`confine`]: how it unmounts and tidies up.
#[derive(Debug)]
pub struct Confined {
    keeper: Option<Arc<keeper::Keeper>>,
    /// The mount points, in unmounting order.
    mount_points: Vec<PathBuf>,
    /// The kernel view's plan and the FUSE mount's root, when there is
    /// one (the daemon's own descriptor, which a takeover hands over).
    kernel_view: Option<(KernelViewPlan, DataRoot)>,
    mounts: usize,
    socket: Option<SocketFile>,
    pid_file: Option<PathBuf>,
}

impl Confined {
    /// What unmounts each mount: `direct` (in [`Confinement::mounts`]'s
    /// order) when unconfined, the keeper otherwise.
    pub fn unmounters(&self, direct: Vec<Unmounter>) -> Vec<Box<dyn Unmount>> {
        match &self.keeper {
            None => direct
                .into_iter()
                .zip(&self.mount_points)
                .map(|(u, path)| self.uncovering(u, path))
                .collect(),
            Some(keeper) => (0..self.mounts)
                .map(|index| {
                    let inner = KeeperUnmount {
                        keeper: keeper.clone(),
                        index,
                    };
                    let main = self.kernel_view.as_ref().filter(|(plan, _)| {
                        self.mount_points.get(index).is_some_and(|p| {
                            p.as_os_str().as_encoded_bytes() == plan.main.path.as_bytes()
                        })
                    });
                    match main {
                        Some((_, data)) => Box::new(DropDataFirst {
                            data: data.clone(),
                            inner,
                        }) as Box<dyn Unmount>,
                        None => Box::new(inner) as Box<dyn Unmount>,
                    }
                })
                .collect(),
        }
    }

    /// `unmounter` of the mount at `path`, uncovering it first when the
    /// kernel view covers it (unconfined; the keeper does so itself).
    fn uncovering(&self, unmounter: Unmounter, path: &Path) -> Box<dyn Unmount> {
        let Some((plan, data)) = &self.kernel_view else {
            return Box::new(unmounter);
        };
        let path = path.as_os_str().as_encoded_bytes();
        let layer = std::iter::once((&plan.main, Some(data.clone())))
            .chain(plan.index.iter().map(|l| (l, None)))
            .find(|(l, _)| l.path.as_bytes() == path);
        match layer {
            Some((layer, data)) => Box::new(UncoverAndUnmount {
                layer: layer.clone(),
                data,
                inner: unmounter,
            }),
            None => Box::new(unmounter),
        }
    }

    /// What shows the kernel view's images: the keeper when confined,
    /// else the daemon itself through `direct`.
    pub fn kernel_view_shower(&self, plan: KernelViewPlan) -> Arc<dyn KernelViewShower> {
        match (&self.keeper, &self.kernel_view) {
            (Some(keeper), _) => Arc::new(KeeperShower(keeper.clone())),
            (None, Some((_, data))) => Arc::new(DirectShower {
                plan,
                data: data.clone(),
            }),
            (None, None) => Arc::new(DirectShower {
                plan,
                data: DataRoot::default(),
            }),
        }
    }

    /// Unmounts whatever of the daemon's mounts is still mounted (when the
    /// main mount went away from outside, the Index stays): through the
    /// keeper when confined; unconfined, each mount's own server does it.
    pub fn unmount_remaining(&self) {
        if let Some(keeper) = &self.keeper {
            for index in 0..self.mounts {
                match keeper.unmount(index) {
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(libc::ESTALE) => {}
                    Err(e) => tracing::warn!("unmounting mount {index} of this daemon: {e}"),
                }
            }
        }
    }

    /// The daemon handed its mounts to a successor (`nexus takeover`) and
    /// exits: the keeper, if any, exits without unmounting anything, and
    /// leaves the pid file the successor rewrote.
    pub fn handed_over(&self) {
        if let Some(keeper) = &self.keeper {
            keeper.finish();
        }
    }

    /// Removes the socket and the pid file (each only while still this
    /// daemon's), directly or through the keeper, which then exits.
    pub fn finish(&self) {
        match &self.keeper {
            Some(keeper) => keeper.finish(),
            None => {
                if let Some(socket) = &self.socket {
                    socket.remove_if_ours();
                }
                if let Some(pid_file) = &self.pid_file {
                    let _ = std::fs::remove_file(pid_file);
                }
            }
        }
    }
}

impl Drop for Confined {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Confines the calling daemon as the module documentation says (or, with
/// `--no-sandbox`, only says loudly that it does not). Call it once, after
/// the mounts exist or the socket is bound, with the store opened, and
/// before any request is read.
pub fn confine(confinement: &Confinement) -> Result<Confined> {
    let socket = confinement.socket.map(|s| SocketFile {
        path: s.path().to_path_buf(),
        dev: s.identity().0,
        ino: s.identity().1,
    });
    if confinement.args.no_sandbox {
        tracing::warn!(
            "THE SANDBOX IS OFF (--no-sandbox): this daemon serves with all the privileges \
             it was started with, and a flaw in request handling exposes all of them"
        );
        return Ok(Confined {
            keeper: None,
            mount_points: confinement.mounts.clone(),
            kernel_view: confinement
                .kernel_view
                .map(|(plan, data)| (plan.clone(), data.clone())),
            mounts: confinement.mounts.len(),
            socket,
            pid_file: confinement.pid_file.map(Path::to_path_buf),
        });
    }
    refuse_log_dir_over_store(confinement)?;
    // An image's scratch store is the daemon's own (it may write it): only
    // a shared store's catalog must be beyond its reach. Its descriptors
    // are listed while /proc can still be read.
    let shared_catalog = confinement
        .reader
        .filter(|_| confinement.image.is_none())
        .map(|reader| catalog::CatalogDescriptors::list(confinement.store).map(|fds| (reader, fds)))
        .transpose()?;
    let root = crate::is_root();
    let identity = root
        .then(|| user::sandbox_user(confinement.args.sandbox_user.as_deref()))
        .transpose()?;
    let keep_caps = if root {
        CAP_DAC_READ_SEARCH | CAP_DAC_OVERRIDE
    } else {
        0
    };
    let abi = rules::kernel_abi();
    // Remotes are those of the catalog now: one added later is read after
    // the daemon restarts (the fetcher says so).
    let remotes = match confinement.remote {
        Some(source) => source.remotes().context("listing the store's remotes")?,
        None => Vec::new(),
    };
    let remote_cache = !remotes.is_empty();
    if let Some(source) = confinement.remote.filter(|_| remote_cache) {
        let cache = confinement.store.join(nexus_remote::cache::CACHE_DIR);
        // It must exist to be granted.
        match std::fs::DirBuilder::new().mode(0o700).create(&cache) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("creating {}", cache.display())),
        }
        let link = fetcher::spawn(confinement.args, confinement.store, source.timeouts().read)?;
        source.fetch_through(link);
    }
    let ruleset = rules::ruleset(&landlock_rules(confinement, remote_cache), &[])
        .context("preparing the daemon's sandbox (--no-sandbox serves without it)")?;
    let report = confinement
        .args
        .sandbox_selftest
        .as_deref()
        .map(|path| {
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))
        })
        .transpose()?;
    let last_cap = last_capability();
    let server_filter =
        filter::server(confinement.daemon, remote_cache).context("compiling the seccomp filter")?;
    let plan = keeper_plan(
        confinement,
        root,
        last_cap,
        identity.as_ref().map(|u| u.uid),
    )?;
    let keeper = Arc::new(keeper::spawn(&plan).context("starting the keeper process")?);
    let step = threads::ThreadStep {
        unshare: if root {
            libc::CLONE_NEWNET | libc::CLONE_NEWIPC
        } else {
            0
        },
        drop_bounding: root,
        last_cap,
        identity: identity.as_ref().map(|u| (u.uid, u.gid)),
        keep_caps,
        landlock: std::os::fd::AsRawFd::as_raw_fd(&ruleset),
    };
    let threads = threads::on_every_thread(&step).context("confining the daemon's threads")?;
    drop(ruleset);
    for filter in &server_filter {
        seccompiler::apply_filter_all_threads(filter)
            .context("installing the seccomp filter on every thread")?;
    }
    if let Some((reader, before)) = &shared_catalog {
        catalog::reopen(reader, confinement.remote, before)?;
    }
    let who = match &identity {
        Some(u) => format!(
            "user {} (uid {}), capabilities dac_read_search and dac_override",
            u.name, u.uid
        ),
        None => "its own user, no capabilities".to_string(),
    };
    tracing::info!(
        "sandboxed: {who}; Landlock ABI {}; seccomp allowlist; no_new_privs{}{}; {threads} threads; \
         keeper pid {}",
        abi,
        if root {
            "; new network and IPC namespaces"
        } else {
            ""
        },
        if remote_cache {
            "; remotes read by the fetcher process, blocks cached in remote-cache"
        } else {
            ""
        },
        keeper.pid(),
    );
    if let Some(mut report) = report {
        selftest::run(&mut report, confinement, remote_cache);
        let _ = report.flush();
    }
    Ok(Confined {
        keeper: Some(keeper),
        mount_points: confinement.mounts.clone(),
        kernel_view: confinement
            .kernel_view
            .map(|(plan, data)| (plan.clone(), data.clone())),
        mounts: confinement.mounts.len(),
        socket,
        pid_file: confinement.pid_file.map(Path::to_path_buf),
    })
}

/// Refuses a log directory that holds the store or lies inside it: the
/// daemon may create and write files beneath it (to reopen its log), which
/// Landlock cannot grant without granting those of the store too. (An
/// image's scratch store is the daemon's own.)
fn refuse_log_dir_over_store(c: &Confinement) -> Result<()> {
    let Some(dir) = c.log_dir.filter(|_| c.image.is_none()) else {
        return Ok(());
    };
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let (dir, store) = (canonical(dir), canonical(c.store));
    if store.starts_with(&dir) {
        bail!(
            "the log file's directory {} holds the store {}: confined, the daemon may write \
             files there (to reopen its log), the catalog among them; give the log a \
             directory of its own, e.g. /var/log/nexus/",
            dir.display(),
            store.display()
        );
    }
    // Below the store, it would let the daemon write the store's own
    // files there: decoded copies the kernel serves, other daemons' images.
    if dir.starts_with(&store) {
        bail!(
            "the log file's directory {} lies inside the store {}: confined, the daemon may \
             write every file there; give the log a directory of its own outside the store, \
             e.g. /var/log/nexus/",
            dir.display(),
            store.display()
        );
    }
    Ok(())
}

/// The highest capability number this kernel knows.
fn last_capability() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63)
}

/// The Landlock rules of a daemon (module documentation); `remote_cache`:
/// its store has remotes, whose blocks it caches.
fn landlock_rules(c: &Confinement, remote_cache: bool) -> Vec<Rule> {
    let store = c.store;
    let mut rules = vec![
        Rule {
            path: store.join(nexus_store::CATALOG_FILE),
            grant: Grant::Read,
        },
        Rule {
            path: store.join(nexus_store::PACKS_DIR),
            grant: Grant::Read,
        },
    ];
    // The WAL and its index are only read: their writers are nip's. SQLite
    // opens an index it may not write read-only, and reads through it
    // without the read marks a writable index would let it take (or, while
    // no connection that may write it is open, from a private copy of the
    // index). Both exist while any connection is open, as the daemon's are.
    for suffix in ["-wal", "-shm"] {
        let mut name = OsStr::new(nexus_store::CATALOG_FILE).to_os_string();
        name.push(suffix);
        let path = store.join(name);
        if path.exists() {
            rules.push(Rule {
                path,
                grant: Grant::Read,
            });
        }
    }
    if c.records {
        rules.push(Rule {
            path: store.join(nexus_store::runtime::RUN_DIR),
            grant: Grant::Records,
        });
    }
    // Its own image directory only (`kernel_view::images_root`): the
    // keeper mounts what it finds there for every user.
    if let Some((plan, _)) = c.kernel_view {
        rules.push(Rule {
            path: PathBuf::from(OsStr::from_bytes(plan.image_dir.to_bytes())),
            grant: Grant::Records,
        });
        // The decoded copies, read only: an image lists them to know which
        // files to redirect there (their bytes are the packs' own).
        if let Some(decoded) = &plan.decoded {
            rules.push(Rule {
                path: PathBuf::from(OsStr::from_bytes(decoded.to_bytes())),
                grant: Grant::Read,
            });
        }
    }
    if let Some((image, scratch)) = c.image {
        rules.push(Rule {
            path: image.to_path_buf(),
            grant: Grant::Read,
        });
        rules.push(Rule {
            path: scratch.to_path_buf(),
            grant: Grant::Scratch,
        });
    }
    if remote_cache {
        rules.push(Rule {
            path: store.join(nexus_remote::cache::CACHE_DIR),
            grant: Grant::Cache,
        });
    }
    if c.daemon == Daemon::Mount {
        rules.push(Rule {
            path: PathBuf::from("/dev/fuse"),
            grant: Grant::Device,
        });
    }
    if let Some(dir) = c.log_dir {
        rules.push(Rule {
            path: dir.to_path_buf(),
            grant: Grant::Append,
        });
    }
    rules
}

fn cstring(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .with_context(|| format!("{} has a NUL byte", path.display()))
}

/// What the keeper does for this daemon; `writer` is the user the
/// confined daemon serves (and writes the kernel view's images) as.
fn keeper_plan(
    c: &Confinement,
    root: bool,
    last_cap: u32,
    writer: Option<u32>,
) -> Result<KeeperPlan> {
    let mounts = c
        .mounts
        .iter()
        .map(|path| {
            let path_c = cstring(path)?;
            // Under the kernel view of a daemon this one takes over, the
            // mount is known by its device only (what statx names is the
            // view on top).
            let covered = crate::nexus::mounts::covered_by_kernel_view(path)?;
            let dev = match covered {
                true => crate::nexus::mounts::find_served_mount(path)?
                    .and_then(|m| m.dev)
                    .with_context(|| format!("finding the device beneath {}", path.display()))?,
                false => nexus_fs::fuse::mount_device(path)
                    .with_context(|| format!("finding the device of {}", path.display()))?,
            };
            // The id is read with the device, which must be the one the
            // table lists: a link swapped in above the mount point between
            // the two reads would have the keeper unmount another mount.
            let unique_id = match covered {
                true => None,
                false => crate::nexus::kernel_view::unique_id_of_listed(&path_c, dev)
                    .map_err(io::Error::from_raw_os_error)
                    .with_context(|| {
                        format!(
                            "examining the mount on {} (a directory above it replaced by a link?)",
                            path.display()
                        )
                    })?,
            };
            Ok(KeptMount {
                unique_id,
                path: path_c,
                dev,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if mounts.len() > 8 {
        bail!("a daemon with more than 8 mounts cannot be sandboxed");
    }
    let fusermount = (!root && !mounts.is_empty())
        .then(|| {
            find_program(&["fusermount3", "fusermount"])
                .context("unmounting without root needs fusermount3 (package fuse3)")
                .and_then(|p| cstring(&p))
                .map(|program| Fusermount { program })
        })
        .transpose()?;
    let socket = c
        .socket
        .map(|s| {
            Ok::<_, anyhow::Error>(KeptFile {
                path: cstring(s.path())?,
                dev: s.identity().0,
                ino: s.identity().1,
            })
        })
        .transpose()?;
    let pid_file = c
        .pid_file
        .map(|p| {
            Ok::<_, anyhow::Error>((
                cstring(p)?,
                format!("{}\n", std::process::id()).into_bytes(),
            ))
        })
        .transpose()?;
    let scratch = c.image.map(|(_, dir)| cstring(dir)).transpose()?;
    let (keep_caps, filter) = if root {
        let keep = CAP_DAC_OVERRIDE | if mounts.is_empty() { 0 } else { CAP_SYS_ADMIN };
        let filter = filter::keeper().context("compiling the keeper's seccomp filter")?;
        (Some((keep, last_cap)), Some(filter))
    } else {
        (None, None)
    };
    Ok(KeeperPlan {
        mounts,
        fusermount,
        socket,
        pid_file,
        scratch,
        keep_caps,
        filter,
        leave_mounts: c.mounts_outlive_daemon,
        kernel_view: c
            .kernel_view
            .map(|(plan, data)| {
                let mut plan = plan.clone();
                if let Some(uid) = writer {
                    plan.image_owner = uid;
                }
                data.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                    .map(|fd| (plan, fd.as_raw_fd()))
                    .context("the kernel view's descriptor of the mount is gone")
            })
            .transpose()?,
    })
}

/// The first of `names` found on `PATH`.
fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    names.iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}
