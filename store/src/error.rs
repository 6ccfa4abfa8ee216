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
    #[error("{path} is not a Nexus store ({reason})")]
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
    /// The catalog is at another schema version than this reader needs (a
    /// writer of this build migrates it when it opens the store).
    #[error("catalog schema version {found}, but this reader needs version {expected}")]
    SchemaMismatch {
        /// Version found on disk.
        found: i64,
        /// The version this build writes.
        expected: i64,
    },
    /// Upgrading the catalog's schema would leave running readers of the
    /// store (mount daemons, virtio-fs servers of an older build) unable to
    /// read it. Nothing was changed.
    #[error(
        "upgrading the catalog from schema {from} to {to} would leave {} running reader{} of the store unable to read it: {}",
        readers.len(),
        if readers.len() == 1 { "" } else { "s" },
        readers.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    )]
    UpgradeStrandsReaders {
        /// The catalog's version.
        from: i64,
        /// The version this build needs.
        to: i64,
        /// The readers it would strand.
        readers: Vec<StrandedReader>,
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
    /// A precondition of the commit refused it (a policy another crate
    /// attached, such as image replay protection or refusing an older
    /// `Current`; see `commit::Precondition`). Nothing was changed; the
    /// boxed error is the policy's own, typed, for callers to downcast.
    #[error(transparent)]
    Refused(Box<dyn std::error::Error + Send + Sync>),
    /// A directory to import holds a device node, FIFO or socket.
    #[error("{path}: is {what}; packages may hold only files, directories and symlinks")]
    SpecialFile {
        /// The offending path.
        path: PathBuf,
        /// "a FIFO", "a socket", "a character device", ...
        what: &'static str,
    },
    /// A directory being imported changed between the scan and the read
    /// (or during the read): nothing of it is stored.
    #[error("{path} changed while it was being imported ({what}); nothing was stored")]
    SourceChanged {
        /// The file or directory that changed.
        path: PathBuf,
        /// What changed.
        what: String,
    },
    /// Root was asked to import a tree that someone else owns or can write
    /// to, without being told to trust them.
    #[error(
        "{path}: {reason}; root imports a directory only if root owns it, what it holds and the directories above it, and nobody else can write to them"
    )]
    UntrustedSource {
        /// The offending file or directory.
        path: PathBuf,
        /// Who owns it or may write to it.
        reason: String,
    },
    /// A tree to import exceeds a per-package path limit.
    #[error("{path}: {limit}")]
    PathLimit {
        /// The entry at which the limit was exceeded.
        path: PathBuf,
        /// Which limit.
        limit: crate::tree::PathLimit,
    },
    /// A store lock stayed taken longer than the caller would wait.
    #[error("{path}: still locked after {waited_secs} s by {}", holders_text(.holders))]
    LockTimeout {
        /// The lock file.
        path: PathBuf,
        /// How long we waited.
        waited_secs: u64,
        /// Processes holding it (from `/proc/locks`), when known.
        holders: Vec<u32>,
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
    /// A pack the catalog names does not exist: gc may have moved its
    /// chunks to a new pack since their locations were looked up.
    #[error("pack file missing: {pack}")]
    PackMissing {
        /// The pack's file name.
        pack: String,
    },
    /// The bytes of a pack that lives on a remote could not be had, or the
    /// remote served bytes that are not what the index names: nothing of
    /// them was served or cached.
    #[error("pack {pack} on remote {remote}: {reason}")]
    Remote {
        /// The pack's file name.
        pack: String,
        /// The remote's name.
        remote: String,
        /// What went wrong (unreachable, timed out, wrong or short bytes).
        reason: String,
    },
    /// A read extends past the end of a pack.
    #[error("{pack}: {len} bytes at {offset} extend past its end")]
    PackShort {
        /// The pack (file name, or the archive's path).
        pack: String,
        /// Where the read started.
        offset: u64,
        /// How many bytes it wanted.
        len: u64,
    },
    /// A stored package's catalog rows do not form its tree (a damaged or
    /// altered catalog).
    #[error("package #{package}: {what}")]
    CatalogDamaged {
        /// The package's catalog id.
        package: i64,
        /// What is wrong.
        what: String,
    },
    /// A concurrent `nip gc` removed data this transaction wanted to reuse.
    #[error("{0} chunks this transaction reuses were garbage-collected concurrently; retry")]
    ConcurrentGc(usize),
    /// The operation makes no sense in the current state.
    #[error("{0}")]
    Invalid(String),
}

fn holders_text(holders: &[u32]) -> String {
    match holders {
        [] => "another process (which one is unknown)".into(),
        [one] => format!("process {one}"),
        many => format!(
            "processes {}",
            many.iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
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

/// A running reader of the store that a schema upgrade would leave unable
/// to read the catalog (see [`StoreError::UpgradeStrandsReaders`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StrandedReader {
    /// Its process, if known.
    pub pid: Option<u32>,
    /// `mount` or `virtio-fs`, if its record could be read.
    pub kind: Option<&'static str>,
    /// Its mount point or socket, if its record could be read.
    pub target: Option<PathBuf>,
    /// The schema its build reads (`None`: only the one it opened).
    pub schema: Option<i64>,
}

impl std::fmt::Display for StrandedReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.kind, &self.target) {
            (Some(kind), Some(target)) => write!(f, "{kind} {}", target.display())?,
            _ => write!(f, "a reader without a readable record")?,
        }
        match self.pid {
            Some(pid) => write!(f, " (pid {pid}")?,
            None => write!(f, " (pid unknown")?,
        }
        match self.schema {
            Some(schema) => write!(f, ", reads schema {schema})"),
            None => write!(f, ", an older build)"),
        }
    }
}
