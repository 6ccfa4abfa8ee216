//! The successor's side: `nexus takeover MOUNTPOINT`.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use nexus_fs::View;
use nexus_fs::fuse::{self, MountOptions};
use nexus_fs::lookups::HeldInode;
use nexus_store::runtime::ServedKind;

use super::giver::{bind, peer};
use super::wire;
use super::{Envelope, HandedState, Message, Offer, socket_path};
use crate::nexus::daemon::Ready;
use crate::nexus::serve::{Daemon, Mounts, Settings};
use crate::nexus::{index, logging, runtime_root, systemd};

/// How long the old daemon may take to exit once it was told to.
const EXIT_WAIT: Duration = Duration::from_secs(30);

/// What `nexus takeover` was asked for.
#[derive(Debug)]
pub struct TakeoverRequest {
    /// The store directory (absolute).
    pub store: PathBuf,
    /// The mount point (canonical).
    pub mountpoint: PathBuf,
    /// Log here instead of where the old daemon logged.
    pub log_file: Option<PathBuf>,
    /// `-v` count.
    pub verbose: u8,
    /// The new daemon's sandbox switches.
    pub sandbox: crate::nexus::sandbox::SandboxArgs,
}

fn send(stream: &mut UnixStream, message: Message) -> Result<()> {
    wire::send(stream, &Envelope::new(message), &[], ANSWER)?;
    Ok(())
}

/// How long the old daemon may take to answer (it answers at once; only a
/// stuck daemon takes longer).
const ANSWER: Duration = Duration::from_secs(60);

fn receive(stream: &mut UnixStream) -> Result<(Message, Vec<OwnedFd>)> {
    let (envelope, fds): (Envelope, _) = wire::receive(stream, ANSWER)?;
    Ok((envelope.open()?, fds))
}

/// The settings the old daemon served with, checked against what was
/// asked.
///
/// The offer comes from a confined process (the sandbox user) and this one
/// runs as root: should a request handling bug have given someone code
/// execution in the old daemon, the offer is theirs. So it chooses nothing
/// root writes or serves: the mount point and the store must be the ones
/// asked for, and the pid file and log file are taken from it only once
/// [`vouch_for_files`] has seen that the old daemon really has them.
fn settings_of(offer: &Offer, request: &TakeoverRequest) -> Result<Settings> {
    let mountpoint = PathBuf::from(&offer.mountpoint);
    if mountpoint != request.mountpoint {
        bail!(
            "the daemon on the takeover socket serves {}, not {}",
            mountpoint.display(),
            request.mountpoint.display()
        );
    }
    let store = PathBuf::from(&offer.store);
    if !same_directory(&store, &request.store) {
        bail!(
            "the daemon on the takeover socket serves the store {}, not {}",
            store.display(),
            request.store.display()
        );
    }
    Ok(Settings {
        mount: MountOptions {
            allow_other: offer.allow_other,
            threads: offer.threads.max(1),
            suid: offer.suid,
            source: store.clone(),
            // A mount taken over keeps the window it was made with.
            read_ahead_kib: fuse::READ_AHEAD_KIB,
        },
        store,
        mountpoint,
        index: offer.index.as_ref().map(PathBuf::from),
        generation: offer.fixed_generation,
        cache_bytes: offer.cache_bytes,
        // See vouch_for_files.
        pid_file: None,
        log_file: request.log_file.clone(),
        image: None,
        kernel_metadata: offer.kernel_metadata,
        sandbox: request.sandbox.clone(),
    })
}

/// Whether `a` and `b` name the same directory.
fn same_directory(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.is_dir() && a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Takes the offer's pid file and log file into `settings` only where the
/// old daemon, process `pid`, vouches for them by what it holds, not by
/// what it says: the log file only if it has that very file open for
/// appending (confined, it could open nothing outside its Landlock rules),
/// the pid file only if it is a regular file of our user holding its pid
/// (written before it confined itself; confined, it can make no file of
/// ours). A path not vouched for is left out, with a warning: the new
/// daemon logs to stderr (the journal under systemd) and writes no pid
/// file rather than write where an attacker says. Returns the warnings, to
/// log once logging is set up.
fn vouch_for_files(offer: &Offer, pid: u32, settings: &mut Settings) -> Vec<String> {
    let mut warnings = Vec::new();
    if settings.log_file.is_none()
        && let Some(log) = &offer.log_file
    {
        let log = PathBuf::from(log);
        if holds_for_appending(pid, &log) {
            settings.log_file = Some(log);
        } else {
            warnings.push(format!(
                "the old daemon (pid {pid}) named the log file {} but does not have it open: logging to stderr (pass --log-file)",
                log.display()
            ));
        }
    }
    if let Some(pid_file) = &offer.pid_file {
        let pid_file = PathBuf::from(pid_file);
        if names_pid(&pid_file, pid) {
            settings.pid_file = Some(pid_file);
        } else {
            warnings.push(format!(
                "the old daemon (pid {pid}) named the pid file {}, which does not hold its pid: writing none",
                pid_file.display()
            ));
        }
    }
    warnings
}

/// Whether process `pid` has the file at `path` open for appending.
fn holds_for_appending(pid: u32, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(wanted) = std::fs::metadata(path) else {
        return false;
    };
    if !wanted.is_file() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        let same = std::fs::metadata(fd.path())
            .is_ok_and(|m| m.dev() == wanted.dev() && m.ino() == wanted.ino());
        same && std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
        })
        .is_some_and(|flags| {
            let flags = flags as libc::c_int;
            flags & libc::O_APPEND != 0 && flags & libc::O_ACCMODE != libc::O_RDONLY
        })
    })
}

/// Whether `path` is a regular file (not a link) of our user that says
/// `pid`, as a pid file does.
fn names_pid(path: &Path, pid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return false;
    };
    meta.is_file()
        && meta.uid() == rustix::process::geteuid().as_raw()
        && meta.len() <= 32
        && std::fs::read_to_string(path).is_ok_and(|text| text.trim() == pid.to_string())
}

/// Whether the Index the offer names is a nexus mount: the new daemon's
/// keeper unmounts it when the daemon ends.
fn check_index(settings: &Settings) -> Result<()> {
    let Some(dir) = &settings.index else {
        return Ok(());
    };
    let canonical = std::fs::canonicalize(dir).ok();
    let mount = match &canonical {
        Some(c) if c == dir => crate::nexus::mounts::find_served_mount(c)?,
        _ => None,
    };
    if !mount.is_some_and(|m| m.is_nexus()) || dir == &settings.mountpoint {
        bail!(
            "the daemon on the takeover socket names {} as its Index, which is not a nexus mount",
            dir.display()
        );
    }
    Ok(())
}

/// Whether the peer on the takeover socket is the daemon serving the mount
/// point: of our own user, or (confined, it serves as another) the process
/// whose live runtime record names the mount point and that made the offer.
/// Returns its pid.
fn check_daemon(stream: &UnixStream, offer: &Offer, settings: &Settings) -> Result<u32> {
    let (pid, uid) = peer(stream)?;
    if pid != offer.pid {
        bail!(
            "the process on the takeover socket (pid {pid}) offered as pid {}",
            offer.pid
        );
    }
    if uid == rustix::process::geteuid() {
        return Ok(pid);
    }
    let records =
        nexus_store::runtime::live(&settings.store).context("reading the runtime records")?;
    let serving = records
        .iter()
        .any(|r| r.pid == pid && r.served.target == settings.mountpoint);
    if pid != offer.pid || !serving {
        bail!(
            "the process on the takeover socket (pid {pid}, uid {}) is not the daemon serving {}",
            uid.as_raw(),
            settings.mountpoint.display()
        );
    }
    Ok(pid)
}

/// For a live view: shows `generation` first (see `View::show_first`).
fn show(view: &View, settings: &Settings, generation: Option<i64>) -> Result<()> {
    if settings.generation.is_none() {
        view.show_first(generation)
            .context("loading the generation the old daemon shows")?;
    }
    Ok(())
}

/// Takes over the mounts at `request.mountpoint` from the daemon serving
/// them and serves them until they are unmounted. `ready` (the parent's
/// pipe) is told once this daemon serves.
pub fn takeover(request: &TakeoverRequest, ready: Option<&mut Ready>) -> Result<()> {
    let termination = crate::nexus::signals::watch()?;
    let socket = socket_path(&request.store, &request.mountpoint);
    let mut stream = UnixStream::connect(&socket).with_context(|| {
        format!(
            "no daemon of this store answers for {} on {} (is it mounted, by nexus with \
             takeover support, from this store?)",
            request.mountpoint.display(),
            socket.display()
        )
    })?;
    send(
        &mut stream,
        Message::Hello {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        },
    )?;
    let offer = match receive(&mut stream)?.0 {
        Message::Offer(offer) => offer,
        Message::Refused { reason } => bail!("the daemon refused to hand over: {reason}"),
        other => bail!("the daemon answered {other:?}"),
    };
    let mut settings = settings_of(&offer, request)?;
    let pid = check_daemon(&stream, &offer, &settings)?;
    check_index(&settings)?;
    let warnings = vouch_for_files(&offer, pid, &mut settings);
    logging::init(
        request.verbose,
        &logging::destination(settings.log_file.clone()),
    )?;
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    // The old daemon's word, which only it can vouch for: say it loudly,
    // since a daemon that stays on one generation misses every update
    // (`nexus status` shows it off the live one too).
    if let Some(generation) = settings.generation {
        tracing::warn!(
            "serving generation {generation} only, as the old daemon did (mounted with \
             --generation): updates are not followed; mount again to follow the live one"
        );
    }
    tracing::info!(
        "taking over {} from pid {} (nexus {:?})",
        settings.mountpoint.display(),
        offer.pid,
        offer.version
    );
    // A newer build may have to upgrade the catalog first. The daemon
    // handing over may not read it then, but it stops serving in a moment:
    // excuse it (by the pid the kernel gives for the socket's peer), and
    // no other reader.
    nexus_store::Store::open_excusing(&settings.store, &[pid])
        .with_context(|| format!("opening the store {}", settings.store.display()))?;
    // The slow part, while the old daemon still serves.
    let (view, source) =
        crate::open::open_view_and_source(&settings.store, settings.view_options())?;
    let view = Arc::new(view);
    show(&view, &settings, offer.shown_generation)?;
    send(&mut stream, Message::Ready)?;
    // From here the old daemon holds back what would change its state:
    // be quick.
    let (state, fds) = match receive(&mut stream)? {
        (Message::State(state), fds) => (state, fds),
        (Message::Refused { reason }, _) => bail!("the daemon refused to hand over: {reason}"),
        (other, _) => bail!("the daemon answered {other:?}"),
    };
    let daemon = adopt(&settings, view, source, state, fds)?;
    // Point of no return: tell systemd first who its main process will be,
    // so that the old one's exit does not end the unit.
    systemd::main_pid();
    send(
        &mut stream,
        Message::Commit {
            pid: std::process::id(),
        },
    )?;
    wait_for_exit(&mut stream, offer.pid);
    daemon.run(termination, ready)
}

/// Adopts the handed-over connections and state; returns the daemon ready
/// to serve once the old one is gone.
fn adopt(
    settings: &Settings,
    view: Arc<View>,
    source: Arc<nexus_remote::RemotePacks>,
    state: HandedState,
    fds: Vec<OwnedFd>,
) -> Result<Daemon> {
    let mut wanted: Vec<&str> = if settings.index.is_some() {
        vec!["fuse", "index"]
    } else {
        vec!["fuse"]
    };
    if settings.kernel_metadata {
        wanted.push("data");
    }
    if state.fds != wanted || fds.len() != wanted.len() {
        bail!(
            "the daemon sent descriptors {:?} ({} attached), expected {wanted:?}",
            state.fds,
            fds.len()
        );
    }
    if view.generation() != state.shown_generation {
        show(&view, settings, state.shown_generation)?;
    }
    let held: Vec<HeldInode> = state
        .held
        .iter()
        .map(super::WireHeld::held)
        .collect::<Result<_>>()
        .context("the inodes the kernel holds")?;
    let mut fds = fds.into_iter();
    let main_fd = fds.next().ok_or_else(|| anyhow!("no mount descriptor"))?;
    let main = fuse::adopt(
        view.clone(),
        &held,
        main_fd,
        &settings.mountpoint,
        &settings.mount,
    )
    .context("starting to serve the handed-over mount")?;
    let index = match &settings.index {
        Some(dir) => {
            let paths = state
                .index_paths
                .iter()
                .map(hex::decode)
                .collect::<Result<Vec<_>, _>>()
                .context("the index's numbers")?;
            let fd = fds.next().ok_or_else(|| anyhow!("no index descriptor"))?;
            Some(index::adopt(
                view.clone(),
                &settings.mountpoint,
                dir,
                &settings.mount,
                fd,
                paths,
            )?)
        }
        None => None,
    };
    // The main mount's root beneath the kernel view: no path reaches it.
    let kernel_data = if settings.kernel_metadata {
        let root = fds
            .next()
            .ok_or_else(|| anyhow!("no descriptor of the mount's root"))?;
        Some(crate::nexus::kernel_view::checked_root(
            root,
            &settings.mountpoint,
        )?)
    } else {
        None
    };
    // Recorded before the old daemon withdraws its record, with the
    // packages the kernel holds: gc keeps them throughout.
    let record = runtime_root::announce(
        &settings.store,
        ServedKind::Mount,
        &settings.mountpoint,
        view.clone(),
    )?;
    if let Some(pid_file) = &settings.pid_file {
        crate::nexus::serve::write_pid_file(pid_file)
            .with_context(|| format!("writing {}", pid_file.display()))?;
    }
    // This daemon's own takeover socket, moved into place once the old
    // daemon (whose socket it replaces) is gone.
    let path = socket_path(&settings.store, &settings.mountpoint);
    let temporary = path.with_extension(format!("sock.{}", std::process::id()));
    let listener = bind(&temporary)?;
    Ok(Daemon {
        settings: settings.clone(),
        store_dir: settings.store.clone(),
        scratch: None,
        view,
        source,
        mounts: Mounts {
            main,
            index,
            adopted: true,
            kernel_data,
        },
        record: Some(record),
        takeover: Some((listener, temporary)),
    })
}

/// Waits until the old daemon (`pid`) has exited: its end of the socket
/// closes only once all its threads are gone, so none of them can read or
/// answer a request any more.
fn wait_for_exit(stream: &mut UnixStream, pid: u32) {
    let _ = stream.set_read_timeout(Some(EXIT_WAIT));
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(
                    "the old daemon (pid {pid}) did not exit within {EXIT_WAIT:?} ({e}); \
                     serving anyway"
                );
                return;
            }
        }
    }
}

/// The mount point of `path` if a nexus mount is there, for `nexus
/// takeover`'s argument.
pub fn canonical_mountpoint(path: &Path) -> Result<PathBuf> {
    let canonical = if crate::is_root() {
        crate::nexus::mounts::resolved_way(path, "mount point")?
    } else {
        std::fs::canonicalize(path).with_context(|| format!("mount point {}", path.display()))?
    };
    match crate::nexus::mounts::find_served_mount(&canonical)? {
        Some(m) if m.is_nexus() => Ok(canonical),
        Some(m) => bail!(
            "{} is a {} mount, not a nexus mount",
            canonical.display(),
            m.fs_type
        ),
        None => bail!("{} is not a mount point", canonical.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nexus_fs::GenerationChoice;

    #[test]
    fn an_offer_for_another_mount_point_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        std::fs::create_dir(&store).unwrap();
        let offer = Offer {
            pid: 1,
            version: "0".into(),
            store: store.to_str().unwrap().into(),
            mountpoint: "/Programs".into(),
            index: Some("/System/Index".into()),
            fixed_generation: None,
            shown_generation: Some(3),
            allow_other: true,
            suid: true,
            threads: 4,
            cache_bytes: 1 << 20,
            pid_file: None,
            log_file: Some("/var/log/nexus.log".into()),
            kernel_metadata: false,
        };
        let mut request = TakeoverRequest {
            store: store.clone(),
            mountpoint: "/mnt".into(),
            log_file: None,
            verbose: 0,
            sandbox: Default::default(),
        };
        assert!(settings_of(&offer, &request).is_err());
        request.mountpoint = "/Programs".into();
        let settings = settings_of(&offer, &request).unwrap();
        assert_eq!(settings.index.as_deref(), Some(Path::new("/System/Index")));
        // Only once the old daemon vouches for them (vouch_for_files).
        assert_eq!(settings.log_file, None);
        assert_eq!(settings.pid_file, None);
        assert!(settings.mount.allow_other && settings.mount.suid);
        assert_eq!(settings.view_options().generation, GenerationChoice::Live);
        // Another store (the offer is the old daemon's word) is refused.
        request.store = dir.path().to_path_buf();
        assert!(settings_of(&offer, &request).is_err());
    }

    /// The old daemon's word names no file root writes: a log file only if
    /// it holds it open for appending, a pid file only if it is ours and
    /// holds its pid.
    #[test]
    fn an_offer_names_only_files_the_old_daemon_holds() {
        let dir = tempfile::tempdir().unwrap();
        let me = std::process::id();
        let (log, other, pid_file, victim) = (
            dir.path().join("log"),
            dir.path().join("other"),
            dir.path().join("pid"),
            dir.path().join("victim"),
        );
        let _held = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        std::fs::write(&other, b"precious").unwrap();
        let _read_only = std::fs::File::open(&other).unwrap();
        std::fs::write(&pid_file, format!("{me}\n")).unwrap();
        std::fs::write(&victim, b"precious").unwrap();
        assert!(holds_for_appending(me, &log));
        assert!(!holds_for_appending(me, &other), "open, but read-only");
        assert!(!holds_for_appending(me, &victim));
        assert!(names_pid(&pid_file, me));
        assert!(!names_pid(&victim, me));
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&pid_file, &link).unwrap();
        assert!(!names_pid(&link, me), "a link is not a pid file");
    }
}
