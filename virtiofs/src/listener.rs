//! The vhost-user socket: guests connect one after another (or at once)
//! and each gets its own device, queue thread and directory handles, all
//! over one shared view (one catalog pool, one block cache).

use std::path::Path;
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

/// Listens on `socket` (replacing a stale socket file) and serves `view` to
/// every guest that connects, until the process ends. `ready` is called once
/// the socket accepts connections.
pub fn serve(
    view: Arc<View>,
    socket: &Path,
    options: ServeOptions,
    ready: impl FnOnce(),
) -> Result<(), Error> {
    let listener = Listener::new(socket, true).map_err(|source| Error::Listen {
        path: socket.to_path_buf(),
        source,
    })?;
    serve_on(view, listener, socket, options, ready)
}

/// Serves `view` to every guest that connects to `listener`, a socket
/// already listening (bound by the caller with the permissions it wants,
/// or passed by systemd's socket activation), as [`serve`] does; `socket`
/// names it in messages.
pub fn serve_listener(
    view: Arc<View>,
    listener: std::os::unix::net::UnixListener,
    socket: &Path,
    options: ServeOptions,
    ready: impl FnOnce(),
) -> Result<(), Error> {
    serve_on(view, Listener::from(listener), socket, options, ready)
}

fn serve_on(
    view: Arc<View>,
    mut listener: Listener,
    socket: &Path,
    options: ServeOptions,
    ready: impl FnOnce(),
) -> Result<(), Error> {
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
