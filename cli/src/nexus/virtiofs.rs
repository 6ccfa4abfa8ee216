//! `nexus serve --virtio-fs SOCKET`: the view served to VM guests as a
//! vhost-user-fs device, until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use nexus_fs::{GenerationChoice, ViewOptions};
use nexus_store::runtime::ServedKind;
use nexus_virtiofs::ServeOptions;

use super::sandbox::{self, Confinement, Daemon, SandboxArgs};
use super::{runtime_root, signals};

/// What `nexus serve --virtio-fs` was asked for, with absolute paths.
#[derive(Debug)]
pub struct Request {
    /// The store directory.
    pub store: PathBuf,
    /// The vhost-user socket to listen on.
    pub socket: PathBuf,
    /// A fixed generation, or `None` to follow the live one.
    pub generation: Option<i64>,
    /// Serve this signed image instead of the store (`--image`).
    pub image: Option<super::serve::ImageRequest>,
    /// Decoded-block cache size, shared by every guest.
    pub cache_bytes: u64,
    /// Guests served at once.
    pub max_guests: usize,
    /// Who may connect to the socket.
    pub socket_options: nexus_virtiofs::SocketOptions,
    /// The sandbox's switches.
    pub sandbox: SandboxArgs,
}

/// Serves until a termination signal.
pub fn serve(request: &Request) -> Result<()> {
    // Before any thread exists, so that every thread inherits the mask.
    signals::block_termination()?;
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
    let view = crate::open::open_view(&store_dir, options)?;
    let view = Arc::new(view);
    // What gc must keep while guests are served (not for an image);
    // removed on termination, by the signal thread that owns it.
    let served = request
        .image
        .is_none()
        .then(|| {
            let target = &request.socket;
            runtime_root::announce(&store_dir, ServedKind::VirtioFs, target, view.clone())
        })
        .transpose()?;
    let socket = nexus_virtiofs::bind(&request.socket, &request.socket_options)
        .with_context(|| format!("serving on {}", request.socket.display()))?;
    let confined = sandbox::confine(
        &Confinement {
            records: served.is_some(),
            socket: Some(&socket),
            ..Confinement::new(&request.sandbox, Daemon::VirtioFs, &store_dir)
        }
        .serving_image(
            request.image.as_ref().map(|i| i.path.as_path()),
            scratch.as_ref().map(|s| s.path()),
        ),
    )?;
    let record = served.as_ref().map(|s| s.root());
    signals::exit_on_termination(move || {
        if let Some(record) = record {
            record.withdraw();
        }
        // The image's scratch store, emptied here; its directory and the
        // socket are removed by `finish` (confined, by the keeper).
        drop(scratch);
        confined.finish();
    })?;
    // Guests get no invalidations: what they cached of the old generation
    // expires by itself (`SWITCH_BOUND`); the loop moves the view and keeps
    // the runtime record current.
    let followers: Vec<Box<dyn nexus_fs::follow::Follower>> = served
        .into_iter()
        .map(|s| Box::new(s) as Box<dyn nexus_fs::follow::Follower>)
        .collect();
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
    nexus_virtiofs::serve(view, socket, serve_options, || {
        // On stderr even without -v: scripts wait for this line (or the
        // socket) before starting guests.
        eprintln!(
            "nexus: serving {shown} of {} to virtio-fs guests on {} (pid {})",
            request.store.display(),
            request.socket.display(),
            std::process::id()
        );
    })
    .with_context(|| format!("serving on {}", request.socket.display()))
}
