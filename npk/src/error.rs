//! Errors of the signed archive and the key store.

use std::io;
use std::path::PathBuf;

use nexus_store::StoreError;

use crate::manifest::ArchiveKind;

/// The bytes are not a well-formed `.npk`.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The file does not start with the `.npk` magic.
    #[error("not a Nexus archive (no NEXUSNPK magic)")]
    NotNpk,
    /// A version this build does not read.
    #[error(
        "archive format version {0} is not supported (this build reads versions {oldest} to {newest})",
        oldest = crate::manifest::OLDEST_VERSION,
        newest = crate::manifest::VERSION
    )]
    UnsupportedVersion(u32),
    /// Anything else malformed: truncation, bad lengths, inconsistent tables.
    #[error("malformed archive: {0}")]
    Malformed(String),
    /// Well-formed so far, but a package is larger than the reader accepts
    /// ([`crate::body::BodyLimits`]): refused as the body is decoded, before
    /// the rest of it is read or held.
    #[error(transparent)]
    OverLimit(#[from] OverLimit),
}

/// A package of a body over a limit its reader set.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{package}: {what} exceeds the limit of {limit}")]
pub struct OverLimit {
    /// `NAME/VERSION` of the package.
    pub package: String,
    /// What grew too large, e.g. "the number of entries (1000001)".
    pub what: String,
    /// The limit in force.
    pub limit: u64,
    /// Which of the reader's limits it is.
    pub which: PackageLimit,
}

/// The per-package limits of [`crate::body::BodyLimits`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PackageLimit {
    /// [`crate::body::BodyLimits::max_entries`].
    Entries,
    /// [`crate::body::BodyLimits::max_unpacked_size`].
    UnpackedSize,
}

/// Why an archive's signature is not accepted.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// No signature at all.
    #[error("the archive is unsigned")]
    Unsigned,
    /// Signed by a key that is not in the trust store.
    #[error("signed by key {id}, which is not trusted")]
    UnknownKey {
        /// The key id.
        id: String,
    },
    /// Signed by a key trusted for the other kind of archive (a package
    /// key signing an image would replace the whole system).
    #[error(
        "signed by key {id} ({name}), which is not trusted to sign {}s",
        kind.name()
    )]
    WrongKind {
        /// The key id.
        id: String,
        /// The key's name.
        name: String,
        /// The archive's kind.
        kind: ArchiveKind,
    },
    /// A package of an App its key is not trusted for.
    #[error(
        "package of App {app} signed by key {id} ({name}), which is trusted only for Apps {patterns}"
    )]
    AppNotAllowed {
        /// The key id.
        id: String,
        /// The key's name.
        name: String,
        /// The package's App.
        app: String,
        /// The key's App patterns.
        patterns: String,
    },
    /// The signature's validity ended (freeze protection).
    #[error("the archive expired at {expires} (seconds since the epoch; it is {now} now)")]
    Expired {
        /// When it expired.
        expires: i64,
        /// The time it was checked at.
        now: i64,
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
    /// As root, a key store (or the way to it, or a key file in it) that
    /// someone else could change.
    #[error(
        "refusing the key store as root: {}: {why}; make it root's and writable by root alone",
        path.display()
    )]
    UnsafeKeyStore {
        /// The directory or file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// A secret key file others could read or replace.
    #[error("refusing the secret key {}: {why}", path.display())]
    UnsafeSecretKey {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// An image counter asked for that the key may have signed already.
    #[error(
        "counter {counter} is not above {highest}, the highest key {key} has signed: two different images could carry one counter"
    )]
    CounterUsed {
        /// The key's name.
        key: String,
        /// The counter asked for.
        counter: u64,
        /// The highest the key has signed.
        highest: u64,
    },
    /// A package where an image was expected, or an image where a package
    /// was: an image replaces the whole system, so it is never imported
    /// as packages, nor a package as a system.
    #[error("{}, not {}", spelled(*found), spelled(*expected))]
    KindMismatch {
        /// What the caller accepts.
        expected: ArchiveKind,
        /// What the archive is.
        found: ArchiveKind,
    },
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

/// "a package" or "a system image".
fn spelled(kind: ArchiveKind) -> &'static str {
    match kind {
        ArchiveKind::Package => "a package",
        ArchiveKind::Image => "a system image",
    }
}

/// Results of this crate.
pub type Result<T, E = NpkError> = std::result::Result<T, E>;
