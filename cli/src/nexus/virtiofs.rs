//! `nexus serve --virtio-fs SOCKET`: the view served to VM guests as a
//! vhost-user-fs device, until SIGTERM or SIGINT.
//!
//! As a conventional vhost-user backend (QEMU's docs/interop/vhost-user.rst,
//! "Backend program conventions"; virtiofsd does the same): it listens on
//! SOCKET (`--socket-path` too) with the mode and group asked for
//! (`--socket-mode`, 0600, and `--socket-group`), or on a socket it was
//! given (`--fd N`, or systemd's socket activation, `LISTEN_FDS`), prints
//! its capabilities (`--print-capabilities`), and tells systemd when it is
//! ready (besides the line on stderr that scripts wait for).

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use nexus_fs::{GenerationChoice, ViewOptions};
use nexus_store::runtime::ServedKind;
use nexus_virtiofs::{GuestSocket, ServeOptions, SocketOptions};

use super::sandbox::{self, Confinement, Daemon, SandboxArgs};
use super::{runtime_root, signals, systemd};

/// What `--print-capabilities` prints: a vhost-user backend of type `fs`
/// (QEMU's `VHostUserBackendCapabilities`), with no optional feature.
pub const CAPABILITIES: &str = "{\n  \"type\": \"fs\"\n}";

/// Where the guests connect.
#[derive(Debug)]
pub enum Listen {
    /// Bind this path with these permissions.
    Path {
        /// The socket's path.
        path: PathBuf,
        /// Who may connect.
        options: SocketOptions,
    },
    /// A listening socket this process was given (`--fd`, socket
    /// activation).
    Fd(OwnedFd),
}

/// What `nexus serve --virtio-fs` was asked for, with absolute paths.
#[derive(Debug)]
pub struct Request {
    /// The store directory.
    pub store: PathBuf,
    /// Where guests connect.
    pub listen: Listen,
    /// A fixed generation, or `None` to follow the live one.
    pub generation: Option<i64>,
    /// Serve this signed image instead of the store (`--image`).
    pub image: Option<super::serve::ImageRequest>,
    /// Decoded-block cache size, shared by every guest.
    pub cache_bytes: u64,
    /// Guests served at once.
    pub max_guests: usize,
    /// The sandbox's switches.
    pub sandbox: SandboxArgs,
}

/// The socket systemd passed (socket activation), if it passed exactly one;
/// an error if it passed several.
pub fn activation_socket() -> Result<Option<OwnedFd>> {
    let mut passed = systemd::passed_fds().context("reading the sockets systemd passed")?;
    match passed.len() {
        0 => Ok(None),
        1 => Ok(passed.pop().map(|(fd, _)| fd)),
        n => bail!("systemd passed {n} sockets; a vhost-user backend listens on one"),
    }
}

/// Takes the inherited descriptor `fd` (`--fd N`), which must be a
/// listening unix stream socket.
pub fn inherited_socket(fd: i32) -> Result<OwnedFd> {
    if fd < 3 {
        bail!("--fd {fd}: descriptors 0 to 2 are stdin, stdout and stderr");
    }
    // SAFETY: the caller passed us descriptor `fd` for this purpose and
    // nothing else in this process uses it; it is checked to be open and a
    // listening socket before use.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let listening = rustix::net::sockopt::socket_acceptconn(&owned)
        .with_context(|| format!("--fd {fd} is not an open socket"))?;
    if !listening {
        bail!("--fd {fd} is a socket that does not listen");
    }
    Ok(owned)
}

/// Serves until a termination signal.
pub fn serve(request: Request) -> Result<()> {
    // First: until it runs, SIGTERM would kill the daemon outright.
    let termination = signals::watch()?;
    // Before the sandbox forbids making the socket.
    systemd::connect();
    let choice = match request.generation {
        Some(n) => GenerationChoice::Fixed(n),
        None => GenerationChoice::Live,
    };
    let options = ViewOptions {
        generation: choice,
        cache_bytes: request.cache_bytes,
        // One per guest's queue thread; the pool grows past this if needed.
        connections: request.max_guests.clamp(1, 8) + 1,
    };
    // An image is served through a scratch store describing it (removed
    // when serving ends and `scratch` drops), as `nexus mount --image`.
    let (store_dir, scratch) = match &request.image {
        Some(image) => {
            let (dir, guard) = super::serve::adopt_image(image)?;
            (dir, Some(guard))
        }
        None => (request.store.clone(), None),
    };
    let (view, source) = crate::open::open_view_and_source(&store_dir, options)?;
    let view = Arc::new(view);
    // The socket: bound here (a stale socket file is replaced; it is
    // removed when serving ends), or given (then it is not ours).
    let socket = match request.listen {
        Listen::Path { path, options } => nexus_virtiofs::bind(&path, &options)
            .with_context(|| format!("serving on {}", path.display()))?,
        Listen::Fd(fd) => GuestSocket::inherited(UnixListener::from(fd)),
    };
    let target = socket.path().to_path_buf();
    // What gc must keep while guests are served (not for an image);
    // removed on termination, by the signal thread that owns it.
    let served = request
        .image
        .is_none()
        .then(|| runtime_root::announce(&store_dir, ServedKind::VirtioFs, &target, view.clone()))
        .transpose()?;
    // Made if missing, so that what this daemon may not do there is the
    // same whether or not a kernel view was ever mounted (the selftest).
    let _ = crate::nexus::kernel_view::images_root(&store_dir);
    let confined = sandbox::confine(
        &Confinement {
            records: served.is_some(),
            socket: Some(&socket),
            remote: Some(&source),
            reader: Some(view.reader()),
            ..Confinement::new(&request.sandbox, Daemon::VirtioFs, &store_dir)
        }
        .serving_image(
            request.image.as_ref().map(|i| i.path.as_path()),
            scratch.as_ref().map(|s| s.path()),
        ),
    )?;
    let record = served.as_ref().map(|s| s.root());
    termination.exit(move || {
        if let Some(record) = record {
            record.withdraw();
        }
        // The image's scratch store, emptied here; its directory and the
        // socket are removed by `finish` (confined, by the keeper).
        drop(scratch);
        confined.finish();
    });
    // Guests get no invalidations: what they cached of the old generation
    // expires by itself (`SWITCH_BOUND`); the loop moves the view and keeps
    // the runtime record current.
    let shown_on = target.display().to_string();
    let mut followers: Vec<Box<dyn nexus_fs::follow::Follower>> = served
        .into_iter()
        .map(|s| Box::new(s) as Box<dyn nexus_fs::follow::Follower>)
        .collect();
    if systemd::supervised() {
        followers.push(Box::new(systemd::StatusFollower {
            store: request.store.clone(),
            target: shown_on.clone(),
        }));
    }
    let _following = nexus_fs::follow::follow(view.clone(), followers)
        .context("starting the thread that follows the live generation")?;
    let shown = match (&request.image, view.generation()) {
        (Some(image), _) => format!("image {}", image.path.display()),
        (None, Some(g)) => format!("generation {g}"),
        (None, None) => "the empty store".to_string(),
    };
    let serve_options = ServeOptions {
        max_guests: request.max_guests,
        ..ServeOptions::default()
    };
    let status = systemd::status_line(view.generation(), &request.store, &shown_on);
    nexus_virtiofs::serve(view, socket, serve_options, || {
        // On stderr even without -v: scripts wait for this line (or the
        // socket) before starting guests.
        eprintln!(
            "nexus: serving {shown} of {} to virtio-fs guests on {shown_on} (pid {})",
            request.store.display(),
            std::process::id()
        );
        systemd::ready(&status);
    })
    .with_context(|| format!("serving on {shown_on}"))
}
