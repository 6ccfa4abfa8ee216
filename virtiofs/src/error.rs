//! Why serving guests failed.

use std::path::PathBuf;

/// Errors of the virtio-fs backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The vhost-user socket could not be created (or listened on).
    #[error("listening on {path}")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// What went wrong.
        source: vhost::vhost_user::Error,
    },
    /// A guest's vhost-user daemon failed to start (its message: the
    /// daemon's error type is neither `Sync` nor a `std::error::Error`).
    #[error("serving a guest: {0}")]
    Daemon(String),
    /// An eventfd could not be created.
    #[error("creating an eventfd: {0}")]
    EventFd(std::io::Error),
    /// A thread could not be started.
    #[error("starting a thread: {0}")]
    Thread(std::io::Error),
}
