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
//!   `CAP_DAC_OVERRIDE` (to write its runtime record in root's `STORE/run`
//!   and the catalog's `-shm`), effective and permitted; nothing
//!   inheritable, ambient or in the bounding set beyond them. Landlock
//!   confines what the two reach to exactly those paths. Otherwise none.
//! - **Landlock** ([`rules`]): read the catalog, its `-wal` and the
//!   packs; read and write the WAL index (`-shm`); create, write and remove files
//!   (and bind sockets) in `STORE/run`; read, write and ioctl `/dev/fuse`
//!   (a FUSE mount reopens it per request thread); for an image, read the
//!   image and use its scratch store. Nothing else, no TCP, no abstract
//!   sockets or signals outside the daemon, no mount changes.
//! - **seccomp** ([`filter`]): an allowlist of the system calls serving
//!   makes, with argument checks (threads but no processes, no executable
//!   mappings, Unix stream sockets that accept but never connect, signals
//!   to itself only); anything else fails with `EPERM`.
//! - **`no_new_privs`**, and as root new **network and IPC namespaces**
//!   (empty: no interface, not even loopback).
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
//!   the old one.
//! - a log reopened on SIGHUP: pass its directory as
//!   [`Confinement::log_dir`]; files there may then be created and
//!   appended to (so give logs a directory of their own).
//! - `--no-sandbox` turns all of this off, loudly, for debugging.

mod filter;
mod keeper;
mod rules;
mod selftest;
mod threads;

use std::ffi::{CString, OsStr};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use nexus_fs::fuse::{Unmounted, Unmounter};

use keeper::{Fusermount, KeeperPlan, KeptFile, KeptMount};
use rules::{Grant, Rule};

/// `CAP_DAC_OVERRIDE`.
const CAP_DAC_OVERRIDE: u64 = 1 << 1;
/// `CAP_DAC_READ_SEARCH`.
const CAP_DAC_READ_SEARCH: u64 = 1 << 2;
/// `CAP_SYS_ADMIN`.
const CAP_SYS_ADMIN: u64 = 1 << 21;

/// The sandbox user when `--sandbox-user` is not given, if it exists.
const DEFAULT_USER: &str = "nexus";
/// The sandbox user when [`DEFAULT_USER`] does not exist.
const FALLBACK_USER: &str = "nobody";

/// The command-line switches of the sandbox, shared by `nexus mount` and
/// `nexus serve`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct SandboxArgs {
    /// Serve without the sandbox, as root with every capability (for
    /// debugging only: the daemon then parses requests, a VM guest's
    /// included, with full privileges; this is logged as a warning).
    #[arg(long)]
    pub no_sandbox: bool,
    /// The user a daemon started as root serves as once confined
    /// [default: nexus if that user exists, else nobody].
    #[arg(long, value_name = "USER", conflicts_with = "no_sandbox")]
    pub sandbox_user: Option<String>,
    /// Test hook: after confining, try what the sandbox forbids and write
    /// what happened to FILE (JSON lines), then serve as usual.
    #[arg(long, value_name = "FILE", hide = true, conflicts_with = "no_sandbox")]
    pub sandbox_selftest: Option<PathBuf>,
}

/// Who may connect to the vhost-user socket.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct SocketArgs {
    /// The socket's permissions, in octal: 600 lets only the daemon's
    /// user (root) connect; 660 with --socket-group lets a QEMU running
    /// as a member of that group connect too [default: 600].
    #[arg(long, value_name = "MODE", value_parser = parse_mode)]
    pub socket_mode: Option<u32>,
    /// The socket's group (a name or a number).
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,
}

fn parse_mode(text: &str) -> Result<u32, String> {
    let mode = u32::from_str_radix(text, 8)
        .map_err(|_| format!("{text:?} is not an octal mode such as 600 or 660"))?;
    if mode & !0o777 != 0 {
        return Err(format!(
            "{text:?} has bits beyond the permissions (rwx for user, group, others)"
        ));
    }
    Ok(mode)
}

impl SocketArgs {
    /// How the socket is created.
    pub fn options(&self) -> Result<nexus_virtiofs::SocketOptions> {
        let group = self
            .socket_group
            .as_deref()
            .map(|name| {
                let found = match name.parse::<u32>() {
                    Ok(gid) => nix::unistd::Group::from_gid(gid.into()),
                    Err(_) => nix::unistd::Group::from_name(name),
                };
                match found {
                    Ok(Some(group)) => Ok(group.gid.as_raw()),
                    Ok(None) => bail!("--socket-group {name}: no such group"),
                    Err(e) => bail!("--socket-group {name}: {e}"),
                }
            })
            .transpose()?;
        Ok(nexus_virtiofs::SocketOptions {
            mode: self
                .socket_mode
                .unwrap_or(nexus_virtiofs::SocketOptions::default().mode),
            group,
        })
    }
}

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
                .map(|u| Box::new(u) as Box<dyn Unmount>)
                .collect(),
            Some(keeper) => (0..self.mounts)
                .map(|index| {
                    Box::new(KeeperUnmount {
                        keeper: keeper.clone(),
                        index,
                    }) as Box<dyn Unmount>
                })
                .collect(),
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

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
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
            mounts: confinement.mounts.len(),
            socket,
            pid_file: confinement.pid_file.map(Path::to_path_buf),
        });
    }
    let root = is_root();
    let identity = root
        .then(|| sandbox_user(confinement.args.sandbox_user.as_deref()))
        .transpose()?;
    let keep_caps = if root {
        CAP_DAC_READ_SEARCH | CAP_DAC_OVERRIDE
    } else {
        0
    };
    let abi = rules::kernel_abi();
    let ruleset = rules::ruleset(&landlock_rules(confinement))
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
        filter::server(confinement.daemon).context("compiling the seccomp filter")?;
    let plan = keeper_plan(confinement, root, last_cap)?;
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
    let who = match &identity {
        Some(u) => format!(
            "user {} (uid {}), capabilities dac_read_search and dac_override",
            u.name, u.uid
        ),
        None => "its own user, no capabilities".to_string(),
    };
    tracing::info!(
        "sandboxed: {who}; Landlock ABI {}; seccomp allowlist; no_new_privs{}; {threads} threads; \
         keeper pid {}",
        abi,
        if root {
            "; new network and IPC namespaces"
        } else {
            ""
        },
        keeper.pid(),
    );
    if let Some(mut report) = report {
        selftest::run(&mut report, confinement);
        let _ = report.flush();
    }
    Ok(Confined {
        keeper: Some(keeper),
        mounts: confinement.mounts.len(),
        socket,
        pid_file: confinement.pid_file.map(Path::to_path_buf),
    })
}

/// The sandbox user.
struct SandboxUser {
    name: String,
    uid: libc::uid_t,
    gid: libc::gid_t,
}

fn sandbox_user(asked: Option<&str>) -> Result<SandboxUser> {
    let lookup = |name: &str| {
        nix::unistd::User::from_name(name).with_context(|| format!("looking up the user {name}"))
    };
    let user = match asked {
        Some(name) => {
            lookup(name)?.with_context(|| format!("--sandbox-user {name}: no such user"))?
        }
        None => match lookup(DEFAULT_USER)? {
            Some(user) => user,
            None => lookup(FALLBACK_USER)?.with_context(|| {
                format!(
                    "neither a {DEFAULT_USER} nor a {FALLBACK_USER} user exists to serve as: \
                     name one with --sandbox-user"
                )
            })?,
        },
    };
    if user.uid.is_root() {
        bail!(
            "the sandbox user {} is root: choose an unprivileged one with --sandbox-user",
            user.name
        );
    }
    Ok(SandboxUser {
        name: user.name,
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
    })
}

/// The highest capability number this kernel knows.
fn last_capability() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63)
}

/// The Landlock rules of a daemon (module documentation).
fn landlock_rules(c: &Confinement) -> Vec<Rule> {
    let store = c.store;
    let mut rules = vec![
        Rule {
            path: store.join(nexus_store::store::CATALOG_FILE),
            grant: Grant::Read,
        },
        Rule {
            path: store.join(nexus_store::store::PACKS_DIR),
            grant: Grant::Read,
        },
    ];
    // The WAL is only read (its writers are nip's); the WAL index is
    // written by every reader (its read marks and locks). Both exist while
    // any connection is open, as the daemon's are.
    for (suffix, grant) in [("-wal", Grant::Read), ("-shm", Grant::ReadWrite)] {
        let mut name = OsStr::new(nexus_store::store::CATALOG_FILE).to_os_string();
        name.push(suffix);
        let path = store.join(name);
        if path.exists() {
            rules.push(Rule { path, grant });
        }
    }
    if c.records {
        rules.push(Rule {
            path: store.join(nexus_store::runtime::RUN_DIR),
            grant: Grant::Records,
        });
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

/// What the keeper does for this daemon.
fn keeper_plan(c: &Confinement, root: bool, last_cap: u32) -> Result<KeeperPlan> {
    let mounts = c
        .mounts
        .iter()
        .map(|path| {
            Ok(KeptMount {
                path: cstring(path)?,
                dev: mount_device(path)?,
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

/// The device number of the file system mounted at `path` (the topmost
/// mount there), from `/proc/self/mountinfo`: reading it asks nothing of
/// the FUSE server, which does not serve yet.
fn mount_device(path: &Path) -> Result<(u32, u32)> {
    let table = std::fs::read("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let wanted = path.as_os_str().as_bytes();
    let mut found = None;
    for line in table.split(|&b| b == b'\n') {
        let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        let (Some(dev), Some(point)) = (fields.get(2), fields.get(4)) else {
            continue;
        };
        if unescape_mountinfo(point) != wanted {
            continue;
        }
        let dev = std::str::from_utf8(dev).ok().and_then(|d| {
            let (major, minor) = d.split_once(':')?;
            Some((major.parse().ok()?, minor.parse().ok()?))
        });
        if dev.is_some() {
            found = dev;
        }
    }
    found.with_context(|| format!("{} is not a mount point", path.display()))
}

/// A mountinfo field with its octal escapes (`\040` for a space) decoded.
fn unescape_mountinfo(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\'
            && let Some(digits) = field.get(i + 1..i + 4)
            && let Ok(text) = std::str::from_utf8(digits)
            && let Ok(byte) = u8::from_str_radix(text, 8)
        {
            out.push(byte);
            i += 4;
            continue;
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo(br"/a\040b\134c"), b"/a b\\c");
        assert_eq!(unescape_mountinfo(br"/plain"), b"/plain");
        assert_eq!(unescape_mountinfo(br"/odd\04"), br"/odd\04");
    }

    #[test]
    fn socket_modes_are_octal_permissions_only() {
        assert_eq!(parse_mode("600"), Ok(0o600));
        assert_eq!(parse_mode("0660"), Ok(0o660));
        assert!(parse_mode("4755").is_err());
        assert!(parse_mode("rw").is_err());
    }

    #[test]
    fn the_mount_device_of_root_is_found() {
        let (major, _) = mount_device(Path::new("/")).unwrap();
        assert!(major < 4096);
        assert!(mount_device(Path::new("/surely/not/a/mount/point")).is_err());
    }
}
