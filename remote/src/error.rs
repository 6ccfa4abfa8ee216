//! The errors of publishing, pulling and reading remotes.

use std::path::PathBuf;

use nexus_npk::{FormatError, NpkError, ReplayError, TrustError};
use nexus_store::StoreError;

/// Everything that can go wrong with a remote.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The store failed (or a commit precondition refused the pull).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Keys, archives' shared encodings, signatures.
    #[error(transparent)]
    Npk(#[from] NpkError),
    /// A manifest's signature, key or expiry is not accepted.
    #[error("the manifest of remote {remote}: {source}")]
    Untrusted {
        /// The remote.
        remote: String,
        /// Why.
        #[source]
        source: TrustError,
    },
    /// The manifest's key is trusted for another trust domain.
    #[error(
        "the manifest of remote {remote} is signed by key {id} ({name}), trusted for images of domain {found}; the remote's manifests must be signed in domain {expected}"
    )]
    WrongDomain {
        /// The remote.
        remote: String,
        /// The key id.
        id: String,
        /// The key's name.
        name: String,
        /// The key's domain.
        found: String,
        /// The remote's domain.
        expected: String,
    },
    /// The manifest is older than (or conflicts with) one accepted before.
    #[error("the manifest of remote {remote}: {source}")]
    Replayed {
        /// The remote.
        remote: String,
        /// The replay check's verdict.
        #[source]
        source: ReplayError,
    },
    /// A remote object is malformed or does not match what names it.
    #[error("remote {remote}: {what}: {why}")]
    Malformed {
        /// The remote.
        remote: String,
        /// The object.
        what: String,
        /// What is wrong.
        why: String,
    },
    /// A format error in a remote object.
    #[error("remote {remote}: {what}: {source}")]
    Format {
        /// The remote.
        remote: String,
        /// The object.
        what: String,
        /// The error.
        #[source]
        source: FormatError,
    },
    /// The remote has published nothing yet.
    #[error("remote {0} has no manifest: nothing was published there yet")]
    NothingPublished(String),
    /// The remote could not be reached or answered with an error.
    #[error("remote {remote}: {what}: {why}")]
    Unavailable {
        /// The remote.
        remote: String,
        /// The object or operation.
        what: String,
        /// What failed.
        why: String,
    },
    /// Another publisher published to the remote meanwhile.
    #[error(
        "remote {remote}: another publisher wrote {what} meanwhile; nothing of this publish is visible (run it again)"
    )]
    Conflict {
        /// The remote.
        remote: String,
        /// The object that changed.
        what: String,
    },
    /// The remote is read-only (an HTTP mirror).
    #[error("remote {0} is read-only (an HTTP mirror is served by a web server)")]
    ReadOnly(String),
    /// A URL that names no supported kind of remote.
    #[error("{url}: {why}")]
    BadUrl {
        /// The URL.
        url: String,
        /// What is wrong.
        why: String,
    },
    /// A `file://` remote's directory that others could change, which a
    /// publisher refuses to write into.
    #[error("{path} is {why}: a publisher writes only into directories nobody else can change")]
    UnsafeDir {
        /// The directory (or file) refused.
        path: PathBuf,
        /// Who owns it or may change it.
        why: String,
    },
    /// The store has no remote of that name.
    #[error("no remote named {0}")]
    UnknownRemote(String),
    /// A local file failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Something the caller asked that cannot be done.
    #[error("{0}")]
    Invalid(String),
}

impl RemoteError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        RemoteError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Results of this crate.
pub type Result<T, E = RemoteError> = std::result::Result<T, E>;
