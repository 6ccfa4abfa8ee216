//! The vhost-user socket: guests connect one after another (or at once)
//! and each gets its own device, queue thread and directory handles, all
//! over one shared view (one catalog pool, one block cache).

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use nexus_fs::View;
use nexus_fs::handles::HandleBudget;
use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use crate::device::FsDevice;
use crate::error::Error;
use crate::fs::GuestFs;

/// How `serve` runs.
#[derive(Clone, Copy, Debug)]
pub struct ServeOptions {
    /// Guests served at once; more wait in the socket's backlog until one
    /// disconnects. Each costs two threads and its open directories.
    pub max_guests: usize,
    /// Bytes of directory listings all guests' open handles may hold
    /// together (each guest is also held to
    /// [`crate::fs::MAX_DIR_BYTES_PER_GUEST`]).
    pub dir_bytes: u64,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_guests: 64,
            dir_bytes: crate::fs::MAX_DIR_BYTES,
        }
    }
}

/// How long to wait before accepting again after a failed accept (out of
/// descriptors, say), so that a persistent failure does not spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(200);

/// Counts a guest as served until dropped.
struct Active(Arc<AtomicUsize>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Who may connect to the vhost-user socket: its permission bits and
/// group. Its owner is the daemon's user (root).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketOptions {
    /// Permission bits (`0o600`: the owner only).
    pub mode: u32,
    /// The group, if not the daemon's.
    pub group: Option<u32>,
}

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions {
            mode: 0o600,
            group: None,
        }
    }
}

/// A bound, listening vhost-user socket, and the file naming it.
#[derive(Debug)]
pub struct GuestSocket {
    listener: UnixListener,
    path: PathBuf,
    identity: (u64, u64),
}

impl GuestSocket {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The device and inode numbers of the socket file, to tell it from
    /// another one made at the same path later.
    pub fn identity(&self) -> (u64, u64) {
        self.identity
    }
}

/// Runs `f` with the process's umask set to `mask`. The umask is the
/// process's, not the thread's; the daemon binds its socket before it
/// starts threads that create files.
fn with_umask<T>(mask: libc::mode_t, f: impl FnOnce() -> T) -> T {
    // SAFETY: umask only swaps the process's creation mask.
    let old = unsafe { libc::umask(mask) };
    let result = f();
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    result
}

/// Creates the socket at `path` with `options`: a stale socket there is
/// replaced, anything else refused. The socket is born `0600` (the
/// umask, so that nobody can connect in the moment before its group and
/// mode are set), in a directory nobody else can rename things in.
pub fn bind(path: &Path, options: &SocketOptions) -> Result<GuestSocket, Error> {
    let socket_error = |source| Error::Socket {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir_meta = std::fs::metadata(dir).map_err(socket_error)?;
    // Others may write in the directory only if it is sticky (as /tmp):
    // then nobody else can remove or rename the socket while its mode is
    // changed by path.
    if dir_meta.mode() & 0o022 != 0 && dir_meta.mode() & libc::S_ISVTX == 0 {
        return Err(Error::UnsafeDirectory {
            dir: dir.to_path_buf(),
        });
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(socket_error)?;
        }
        Ok(_) => {
            return Err(Error::NotASocket {
                path: path.to_path_buf(),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(socket_error(e)),
    }
    let listener = with_umask(0o177, || UnixListener::bind(path)).map_err(socket_error)?;
    let meta = std::fs::symlink_metadata(path).map_err(socket_error)?;
    if let Some(gid) = options.group {
        std::os::unix::fs::lchown(path, None, Some(gid)).map_err(socket_error)?;
    }
    if options.mode != 0o600 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(options.mode))
            .map_err(socket_error)?;
    }
    Ok(GuestSocket {
        listener,
        path: path.to_path_buf(),
        identity: (meta.dev(), meta.ino()),
    })
}

/// Serves `view` to every guest that connects to `socket`, until the
/// process ends. `ready` is called before the first accept. The socket
/// file is left in place (whoever bound it removes it).
pub fn serve(
    view: Arc<View>,
    socket: GuestSocket,
    options: ServeOptions,
    ready: impl FnOnce(),
) -> Result<(), Error> {
    let GuestSocket { listener, path, .. } = socket;
    let socket = path.as_path();
    // Made from the listener alone, it does not remove the file on drop.
    let mut listener = Listener::from(listener);
    ready();
    let budget = HandleBudget::new(options.dir_bytes);
    let active = Arc::new(AtomicUsize::new(0));
    let mut guest = 0u64;
    loop {
        while active.load(Ordering::SeqCst) >= options.max_guests.max(1) {
            std::thread::sleep(Duration::from_millis(50));
        }
        // A fresh device for the next guest: it exists before the guest
        // connects because the daemon needs it to answer the handshake.
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let guest_fs = GuestFs::new(view.clone(), budget.clone());
        let device = Arc::new(FsDevice::new(guest_fs, mem.clone())?);
        let name = format!("guest-{guest}");
        let mut daemon = VhostUserDaemon::new(name.clone(), device, mem)
            .map_err(|e| Error::Daemon(e.to_string()))?;
        if let Err(e) = daemon.start(&mut listener) {
            tracing::warn!("accepting a guest on {}: {e}", socket.display());
            std::thread::sleep(ACCEPT_RETRY);
            continue;
        }
        guest += 1;
        active.fetch_add(1, Ordering::SeqCst);
        let served = Active(active.clone());
        tracing::info!(
            "{name} connected ({} served)",
            active.load(Ordering::SeqCst)
        );
        let waiter = std::thread::Builder::new()
            .name(format!("{name}-wait"))
            .spawn(move || {
                let _served = served;
                match daemon.wait() {
                    Ok(()) => tracing::info!("{name} disconnected"),
                    Err(vhost_user_backend::Error::HandleRequest(
                        vhost::vhost_user::Error::Disconnected
                        | vhost::vhost_user::Error::PartialMessage,
                    )) => tracing::info!("{name} disconnected"),
                    Err(e) => tracing::warn!("{name} ended: {e}"),
                }
                // Dropping the daemon ends the guest's queue thread and
                // releases its directory handles.
                drop(daemon);
            });
        waiter.map_err(Error::Thread)?;
    }
}
