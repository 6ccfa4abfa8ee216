//! The Landlock ruleset of a confined daemon: which files it may still
//! open, and how.
//!
//! Everything the ruleset handles is denied except what a rule grants, so
//! the daemon can no longer open, create, remove or rename anything
//! outside these paths, nor bind or connect TCP sockets (ABI 4), connect
//! abstract Unix sockets or signal processes outside its domain (ABI 6),
//! nor connect pathname Unix sockets (ABI 9), on kernels that have those.
//! The remote fetcher's ruleset alone grants TCP connections, to the
//! remotes' ports.
//! Descriptors opened before keep working: Landlock checks at `open`.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, NetPort, PathBeneath,
    PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr, Scope,
};

/// The newest ABI this build asks for; older kernels enforce what they
/// know of it (Landlock's best effort), and [`kernel_abi`] says which.
const WANTED: ABI = ABI::V9;

/// What one path is opened for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Grant {
    /// Read a file, or read the files below a directory and list them.
    Read,
    /// Read, write and ioctl a device (`/dev/fuse`, reopened for each
    /// request thread).
    Device,
    /// Create, write, rename and remove the files of a directory, and
    /// bind sockets in it (`STORE/run`).
    Records,
    /// All of [`Grant::Records`] and remove directories too (an image's
    /// scratch store, removed when serving ends).
    Scratch,
    /// Create and append to files in a directory (a log reopened after
    /// rotation).
    Append,
    /// All of [`Grant::Scratch`], make directories, and move files between
    /// them (the remote block cache: written to `tmp/`, renamed into
    /// `blocks/PACK/`).
    Cache,
}

impl Grant {
    fn access(self) -> BitFlags<AccessFs> {
        let read = AccessFs::ReadFile | AccessFs::ReadDir;
        let write = AccessFs::WriteFile | AccessFs::Truncate;
        match self {
            Grant::Read => read,
            Grant::Device => AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::IoctlDev,
            Grant::Records => {
                read | write | AccessFs::MakeReg | AccessFs::RemoveFile | AccessFs::MakeSock
            }
            Grant::Scratch => Grant::Records.access() | AccessFs::RemoveDir,
            Grant::Append => AccessFs::WriteFile | AccessFs::MakeReg,
            Grant::Cache => Grant::Scratch.access() | AccessFs::MakeDir | AccessFs::Refer,
        }
    }
}

/// One rule: a path and what it is opened for.
#[derive(Clone, Debug)]
pub(super) struct Rule {
    pub path: PathBuf,
    pub grant: Grant,
}

/// Why the ruleset could not be made.
#[derive(Debug, thiserror::Error)]
pub(super) enum RulesError {
    /// The kernel has no Landlock.
    #[error(
        "this kernel has no Landlock (Linux 5.13 or later, with landlock in the lsm= boot \
         parameter), which the daemon's sandbox needs"
    )]
    Unsupported,
    /// A rule's path could not be opened.
    #[error("{}: {source}", path.display())]
    Path {
        path: PathBuf,
        #[source]
        source: landlock::PathFdError,
    },
    /// The kernel refused the ruleset.
    #[error("building the Landlock ruleset: {0}")]
    Ruleset(#[from] landlock::RulesetError),
}

/// The Landlock ABI version the running kernel implements (0: none).
pub(super) fn kernel_abi() -> i64 {
    // SAFETY: landlock_create_ruleset(NULL, 0, VERSION) only returns a number.
    let version = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32, // LANDLOCK_CREATE_RULESET_VERSION
        )
    };
    version.max(0)
}

/// Makes the ruleset granting `rules`, TCP connections to `ports`, and
/// nothing else; returns its descriptor, for every thread to restrict
/// itself with.
pub(super) fn ruleset(rules: &[Rule], ports: &[u16]) -> Result<OwnedFd, RulesError> {
    if kernel_abi() < 1 {
        return Err(RulesError::Unsupported);
    }
    let mut created = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(WANTED))?
        .handle_access(AccessNet::from_all(WANTED))?
        .scope(Scope::from_all(WANTED))?
        .create()?;
    for rule in rules {
        let fd = PathFd::new(&rule.path).map_err(|source| RulesError::Path {
            path: rule.path.clone(),
            source,
        })?;
        let mut access = rule.grant.access();
        if !is_dir(&rule.path) {
            // Directory rights mean nothing on a file, and Landlock
            // refuses them there.
            access &= AccessFs::from_file(WANTED);
        }
        created = created.add_rule(PathBeneath::new(fd, access))?;
    }
    for &port in ports {
        created = created.add_rule(NetPort::new(port, AccessNet::ConnectTcp))?;
    }
    let fd: Option<OwnedFd> = created.into();
    fd.ok_or(RulesError::Unsupported)
}

fn is_dir(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_dir())
}
