//! What can go wrong while building a system.

use std::path::PathBuf;

use crate::diag::Diag;

/// Errors of `nexus-system`.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum SystemError {
    /// A profile or recipe file is wrong, at a place in it.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Kdl(Diag),
    /// A file or directory could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// No such profile.
    #[error("no profile `{name}` in {} (profiles there: {available})", dir.display())]
    NoProfile {
        /// The name asked for.
        name: String,
        /// Where profiles were looked for.
        dir: PathBuf,
        /// The profiles there, comma-separated.
        available: String,
    },
    /// A profile line names a recipe that does not exist (or two files of
    /// that name).
    #[error("{0}")]
    Recipe(String),
    /// Fetching a Debian package failed.
    #[error("apt-get download {package}: {message}")]
    Fetch {
        /// What was asked of apt.
        package: String,
        /// apt's output, or why it could not run.
        message: String,
    },
    /// A `.deb` in the fetch cache, or fresh from apt, does not have the
    /// bytes apt's index named (or its pin recorded): planted or altered.
    #[error("{}: SHA256 {actual_sha256}, but apt's index pinned {expected_sha256}: refusing it (delete it to fetch it again)", file.display())]
    DebMismatch {
        /// The file.
        file: PathBuf,
        /// The pinned SHA256.
        expected_sha256: String,
        /// Its SHA256.
        actual_sha256: String,
    },
    /// The cache's lock file of pins is malformed.
    #[error("{}: {message}", file.display())]
    DebPin {
        /// The lock file.
        file: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// apt's index knows no package (or version) of this name, and the
    /// cache pins no file of it to fall back on.
    #[error(
        "{target}: apt's index does not know it (do apt's lists need `apt-get update`?), \
         and no cached file of it is pinned in debs.lock"
    )]
    DebUnknown {
        /// What was asked: `NAME` or `NAME=VERSION`.
        target: String,
    },
    /// With no candidate from apt, the newest version of a package that
    /// the cache pins is not in the cache: an older one is not taken in
    /// its place, which would be a rollback.
    #[error(
        "{package}: apt's index does not know it, and {file}, the newest version debs.lock pins, \
         is not in the cache: refusing to take an older one (restore the file, run \
         `apt-get update`, or name a version in the recipe)"
    )]
    DebNewestMissing {
        /// The package.
        package: String,
        /// The missing file's name in the cache.
        file: String,
    },
    /// Several pinned cached files of one version for this machine (two
    /// spellings of it, or its architecture's and `all`) and no index to
    /// say which.
    #[error(
        "{package} {version}: several cached files are pinned ({}) and apt's index cannot say \
         which is meant: remove the others from the cache",
        files.join(", ")
    )]
    DebAmbiguous {
        /// The package.
        package: String,
        /// The version they share.
        version: String,
        /// Their names in the cache.
        files: Vec<String>,
    },
    /// The cache pins files of the package (or version) only for other
    /// architectures than this machine's, and apt's index cannot name this
    /// machine's: another architecture's package is not taken instead.
    #[error(
        "{target}: apt's index does not know it, and the cache pins only other architectures' \
         files of it ({}), none of this machine's ({arch}) or `all`",
        files.join(", ")
    )]
    DebOtherArch {
        /// What was asked: `NAME` or `NAME=VERSION`.
        target: String,
        /// This machine's architecture (`unknown` if it could not be told).
        arch: String,
        /// The pinned files of other architectures.
        files: Vec<String>,
    },
    /// A profile line that takes apt's candidate has no version to build:
    /// the candidate is outside the line's constraint, and no stored
    /// version is inside it.
    #[error(
        "package `{app}` does not satisfy `{constraint}` ({at}, recipe `{recipe}`): apt's \
         candidate is {app}/{candidate} and no stored version fits (widen the constraint, or \
         do apt's lists need `apt-get update`?)"
    )]
    NoEligibleVersion {
        /// The line's App.
        app: String,
        /// The line's constraint.
        constraint: String,
        /// The line, `PROFILE_FILE:LINE`.
        at: String,
        /// The line's recipe.
        recipe: String,
        /// apt's candidate, as stored (epoch dropped).
        candidate: String,
    },
    /// A recipe's build script failed (or cannot run yet).
    #[error("recipe `{recipe}`: build script {} failed ({status}):\n{output}", script.display())]
    Script {
        /// The recipe.
        recipe: String,
        /// The script.
        script: PathBuf,
        /// Its exit status.
        status: String,
        /// The end of what it wrote to stderr.
        output: String,
    },
    /// A profile, recipe or source could have been planted or replaced by
    /// another user: refused unread.
    #[error("untrusted build input: {0}")]
    Untrusted(#[from] crate::trust::Unsafe),
    /// The build sandbox could not be set up.
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
    /// A recipe's pinned fetch (its crates, its toolchain) failed.
    #[error("recipe `{recipe}`: pinned fetch: {message}")]
    PinnedFetch {
        /// The recipe.
        recipe: String,
        /// What failed.
        message: String,
    },
    /// A build user that cannot be used.
    #[error("build user `{spec}`: {why}")]
    BuildUser {
        /// As given.
        spec: String,
        /// Why not.
        why: String,
    },
    /// Grafting or committing failed; this includes a package that does
    /// not satisfy its profile line (nothing was committed then).
    #[error(transparent)]
    Graft(#[from] nexus_graft::GraftError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] nexus_store::StoreError),
}

impl From<Diag> for SystemError {
    fn from(d: Diag) -> Self {
        SystemError::Kdl(d)
    }
}

/// Result alias.
pub type Result<T, E = SystemError> = std::result::Result<T, E>;
