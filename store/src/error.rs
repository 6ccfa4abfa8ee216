//! The store's error type.

use std::io;
use std::path::PathBuf;

use crate::hash::Hash;

/// Everything that can go wrong in the store, with enough context to tell the
/// user what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An I/O error on a named path.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The SQLite catalog failed.
    #[error("catalog: {0}")]
    Catalog(#[from] rusqlite::Error),
    /// The directory is not a store, or one of a newer format.
    #[error("{path} is not a Nexus store ({reason}); run `nip init` to create one")]
    NotAStore {
        /// The directory that was opened.
        path: PathBuf,
        /// Why it was not accepted.
        reason: String,
    },
    /// The catalog was written by a newer version of this software.
    #[error("catalog schema version {found} is newer than this program supports ({supported})")]
    SchemaTooNew {
        /// Version found on disk.
        found: i64,
        /// Highest version this build knows.
        supported: i64,
    },
    /// A package name or version is not acceptable.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName {
        /// "name" or "version".
        what: &'static str,
        /// The rejected value.
        value: String,
        /// Why.
        reason: &'static str,
    },
    /// A tree to import contains something the store refuses.
    #[error("{path}: {reason}")]
    BadInput {
        /// The offending path.
        path: PathBuf,
        /// Why it was refused.
        reason: String,
    },
    /// A signed image older than one already accepted from the same key.
    #[error(
        "image counter {counter} of key {key_id} is lower than {highest}, the highest this store has accepted from that key: a downgrade or a replayed image (use --allow-downgrade if intended)"
    )]
    Downgrade {
        /// The signer's key id.
        key_id: String,
        /// The image's counter.
        counter: u64,
        /// The highest counter recorded for the key.
        highest: u64,
    },
    /// NAME/VERSION exists already with different content.
    #[error(
        "{name}/{version} already exists with a different tree ({existing}); versions are immutable, pick a new version"
    )]
    VersionConflict {
        /// Package name.
        name: String,
        /// Package version.
        version: String,
        /// Tree hash of the stored package.
        existing: Hash,
    },
    /// The same NAME/VERSION was given twice in one transaction.
    #[error("{0} is given more than once in this transaction")]
    DuplicateInTransaction(String),
    /// A package, version or generation was not found.
    #[error("{0}")]
    NotFound(String),
    /// A version asked for by name is not in the store at all.
    #[error("{name}/{version} is not stored ({})", stored_versions(name, stored))]
    VersionNotStored {
        /// App name.
        name: String,
        /// The version asked for.
        version: String,
        /// The versions of the App that are stored.
        stored: Vec<String>,
    },
    /// A path inside a package was not found.
    #[error("{package}: no such path {path:?}")]
    NoSuchPath {
        /// NAME/VERSION.
        package: String,
        /// The path looked up.
        path: String,
    },
    /// Stored data failed verification: the bytes on disk are not the bytes
    /// that were written. Never returned together with data.
    #[error("damaged chunk {chunk}: {reason}")]
    Damaged {
        /// The chunk that failed.
        chunk: Hash,
        /// What was wrong.
        reason: String,
    },
    /// A concurrent `nip gc` removed data this transaction wanted to reuse.
    #[error("{0} chunks this transaction reuses were garbage-collected concurrently; retry")]
    ConcurrentGc(usize),
    /// The operation makes no sense in the current state.
    #[error("{0}")]
    Invalid(String),
}

impl StoreError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        StoreError::Io {
            path: path.into(),
            source,
        }
    }
}

fn stored_versions(name: &str, stored: &[String]) -> String {
    if stored.is_empty() {
        format!("no version of {name} is stored")
    } else {
        format!("stored versions: {}", stored.join(", "))
    }
}

/// Result alias for the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
