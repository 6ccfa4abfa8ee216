//! Errors of the signed archive and the key store.

use std::io;
use std::path::PathBuf;

use nexus_store::StoreError;

/// The bytes are not a well-formed `.npk`.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The file does not start with the `.npk` magic.
    #[error("not a Nexus archive (no NEXUSNPK magic)")]
    NotNpk,
    /// A version this build does not read.
    #[error("archive format version {0} is not supported (this build reads version 1)")]
    UnsupportedVersion(u32),
    /// Anything else malformed: truncation, bad lengths, inconsistent tables.
    #[error("malformed archive: {0}")]
    Malformed(String),
}

/// Why an archive's signature is not accepted.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// No signature at all.
    #[error("the archive is unsigned (use --insecure to import it anyway)")]
    Unsigned,
    /// Signed by a key that is not in the trust store.
    #[error(
        "signed by key {id}, which is not trusted (trust it with `nip key trust FILE`, or use --insecure)"
    )]
    UnknownKey {
        /// The key id.
        id: String,
    },
    /// Signed by a key that was revoked.
    #[error("signed by key {id} ({name}), which has been revoked")]
    Revoked {
        /// The key id.
        id: String,
        /// The key's name.
        name: String,
    },
    /// The signature does not verify: the manifest was changed.
    #[error("bad signature by key {id}: the archive was altered after signing")]
    BadSignature {
        /// The key id.
        id: String,
    },
    /// The signed manifest does not match the archive's bytes.
    #[error("the archive was altered after signing: {0}")]
    Tampered(String),
}

/// Everything that can go wrong reading, writing or verifying archives and
/// keys.
#[derive(Debug, thiserror::Error)]
pub enum NpkError {
    /// I/O on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Malformed archive.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// Signature not accepted.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A problem with a key or the key store.
    #[error("{0}")]
    Key(String),
    /// A chunk of the archive is damaged (its bytes do not hash to its name).
    #[error("damaged archive data: {0}")]
    Damaged(String),
}

impl NpkError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        NpkError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Results of this crate.
pub type Result<T, E = NpkError> = std::result::Result<T, E>;
