//! Why serving guests failed.

use std::path::PathBuf;

/// Errors of the virtio-fs backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The vhost-user socket could not be created with its permissions.
    #[error("creating the socket {}: {source}", path.display())]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// Something other than a socket is where the socket goes.
    #[error("{} exists and is not a socket: not replacing it", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// The socket's directory lets others replace the socket between its
    /// creation and the change of its permissions.
    #[error(
        "{} is writable by users other than its owner and not sticky: a socket there could \
         be replaced by someone else's",
        dir.display()
    )]
    UnsafeDirectory {
        /// The directory.
        dir: PathBuf,
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
