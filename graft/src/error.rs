//! What can go wrong while grafting, typed so that the command line can say
//! which file is at fault and why.
//!
//! Parsers return a [`Failure`]: a [`Problem`] with the package itself, an
//! I/O error of the file being read, or an error of the store fed with its
//! content. [`Failure::at`] names the file and makes it a [`GraftError`].

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use nexus_store::StoreError;

/// A limit that protects against decompression bombs was reached.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{what} exceeds the limit of {limit}")]
pub struct LimitExceeded {
    /// What grew too large, e.g. "the unpacked size".
    pub what: String,
    /// The limit in force.
    pub limit: u64,
    /// Which of the caller's limits ([`crate::Limits`]) it was, if it can
    /// be raised; `None` for fixed limits of the formats.
    pub raisable: Option<Limit>,
}

/// The limits a caller sets ([`crate::Limits`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// `Limits::max_entries`.
    Entries,
    /// `Limits::max_unpacked_size`.
    UnpackedSize,
}

/// Something wrong with a package file: it is refused.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    /// The file is none of the formats nip grafts.
    #[error("not a package nip can graft: {0}")]
    UnknownFormat(String),
    /// A compressed member or file uses a compression nip does not read.
    #[error(
        "{member}: unknown compression (first bytes {magic}); nip reads gzip, xz, zstd, bzip2 and uncompressed tar"
    )]
    UnknownCompression {
        /// The member or file concerned.
        member: String,
        /// Its first bytes, in hex.
        magic: String,
    },
    /// The bytes do not form a valid archive (truncated, bad checksum, bad
    /// header, trailing garbage).
    #[error("corrupt or truncated archive: {0}")]
    Corrupt(String),
    /// An entry would land outside the package or through a symlink.
    #[error("unsafe entry {entry:?}: {reason}")]
    UnsafePath {
        /// The entry's path as the archive spells it.
        entry: String,
        /// Why it is refused.
        reason: String,
    },
    /// Two entries claim the same path.
    #[error("duplicate entry {entry:?}{detail}")]
    Duplicate {
        /// The entry's path as the archive spells it.
        entry: String,
        /// More context (e.g. which path it maps to).
        detail: String,
    },
    /// A size or count limit was reached.
    #[error("{0}")]
    Limit(LimitExceeded),
    /// The package's own metadata is missing or malformed.
    #[error("invalid metadata: {0}")]
    Metadata(String),
    /// The package's name or version cannot be taken from it (a NAR named
    /// by hash only, a name the store refuses), or a name and version were
    /// given for an archive of several packages: the caller must say (or
    /// not say) what to call it.
    #[error("{0}")]
    Naming(String),
    /// A device node, FIFO or socket (refused unless special files are
    /// skipped, `ReadOptions::skip_special`).
    #[error("entry {entry:?} is {what}; packages may hold only files, directories and symlinks")]
    Special {
        /// The entry's path as the archive spells it.
        entry: String,
        /// "a FIFO", "a character device", ...
        what: &'static str,
    },
    /// A valid archive feature that nip does not support.
    #[error("entry {entry:?}: {reason}")]
    Unsupported {
        /// The entry's path as the archive spells it.
        entry: String,
        /// What is not supported.
        reason: String,
    },
}

/// Why reading a package stopped.
#[derive(Debug)]
pub enum Failure {
    /// The package is refused.
    Problem(Problem),
    /// Reading the package file failed (not the package's fault).
    Io(io::Error),
    /// The store failed while taking the content.
    Store(StoreError),
}

impl Failure {
    /// Names the package file the failure is about.
    pub fn at(self, file: &Path) -> GraftError {
        match self {
            Failure::Problem(problem) => GraftError::Package {
                file: file.to_path_buf(),
                problem,
            },
            Failure::Io(source) => GraftError::Io {
                path: file.to_path_buf(),
                source,
            },
            Failure::Store(e) => GraftError::Store(e),
        }
    }

    /// Sorts an I/O error raised while reading through the decoders: the
    /// file's own read errors and limits keep their meaning, anything else
    /// (decoder errors, unexpected ends) means the data is corrupt.
    pub fn from_io(err: io::Error, context: &str) -> Failure {
        if err.get_ref().is_some_and(|e| e.is::<LimitExceeded>()) {
            if let Some(limit) = err
                .into_inner()
                .and_then(|e| e.downcast::<LimitExceeded>().ok())
            {
                return Failure::Problem(Problem::Limit(*limit));
            }
            return Failure::Problem(Problem::Corrupt(format!("{context}: limit reached")));
        }
        if err.get_ref().is_some_and(|e| e.is::<SourceError>()) {
            return Failure::Io(err);
        }
        Failure::Problem(Problem::Corrupt(format!("{context}: {err}")))
    }
}

impl From<Problem> for Failure {
    fn from(p: Problem) -> Self {
        Failure::Problem(p)
    }
}

impl From<LimitExceeded> for Failure {
    fn from(l: LimitExceeded) -> Self {
        Failure::Problem(Problem::Limit(l))
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Store(e)
    }
}

/// Marks an I/O error of the package file itself, so that it is not
/// mistaken for corruption after travelling through the decoders.
#[derive(Debug)]
pub struct SourceError(pub io::Error);

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SourceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// Errors of grafting, for callers.
#[derive(Debug, thiserror::Error)]
pub enum GraftError {
    /// A package file is refused.
    #[error("{}: {problem}", file.display())]
    Package {
        /// The package file.
        file: PathBuf,
        /// What is wrong with it.
        problem: Problem,
    },
    /// A package file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A `.npk` is refused: malformed, unsigned, untrusted or altered.
    #[error("{}: {error}", file.display())]
    Npk {
        /// The archive.
        file: PathBuf,
        /// Why.
        error: nexus_npk::NpkError,
    },
    /// The caller refused the staged packages before the commit (a profile
    /// build whose package misses its version constraint).
    #[error("{0}")]
    Refused(String),
    /// The store failed (this includes refused directories and names).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Result alias of the parsing layer.
pub type ReadResult<T> = Result<T, Failure>;
