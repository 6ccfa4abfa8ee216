//! Whose files a build may read its profiles, recipes and sources from.
//!
//! A build reads profiles (which become the whole live set) and recipes
//! (whose scripts make package content that root later runs). Anyone who
//! can write one of those files, or rename a directory on the way to it,
//! decides what the system holds. So, as git's `safe.directory` does
//! (CVE-2022-24765), a path is only *safe* when
//!
//! - the file or directory itself is owned by root or the caller and is
//!   writable by neither its group nor others, and
//! - every directory above it is owned by root or the caller and is not
//!   group- or world-writable, unless it has the sticky bit (as `/tmp`):
//!   there only an entry's owner may rename or remove it, and the entry
//!   below is checked in turn.
//!
//! Nothing is searched for as root: profiles come from [`BUILTIN_PROFILES`]
//! or a directory the caller names. A non-root caller may have them found
//! upwards from the current directory ([`find_upwards`]), but only through
//! safe directories, and never past one that is not.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Where root's profiles are looked for, in order, when none are named;
/// the recipes are the `recipes/` beside the profiles directory found.
pub const BUILTIN_PROFILES: &[&str] = &["/etc/nexus/profiles", "/usr/share/nexus/profiles"];

/// Where root's recipes are looked for when neither they nor the profiles
/// are named (`nexus build rumk`), in order.
pub const BUILTIN_RECIPES: &[&str] = &["/etc/nexus/recipes", "/usr/share/nexus/recipes"];

/// What makes a path unsafe to build from.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unsafe {
    /// Owned by a user who is neither root nor the caller.
    #[error("{} is owned by uid {uid}, neither root nor the caller", path.display())]
    Owner {
        /// The file or directory.
        path: PathBuf,
        /// Its owner.
        uid: u32,
    },
    /// Writable by its group or by everyone (and, for a directory above
    /// the path, without the sticky bit).
    #[error("{} is writable by {} (mode {mode:04o})", path.display(), if mode & 0o002 != 0 { "everyone" } else { "its group" })]
    Writable {
        /// The file or directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// It cannot be examined.
    #[error("{}: {message}", path.display())]
    Unreadable {
        /// The path.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

impl Unsafe {
    /// The path that failed the check.
    pub fn path(&self) -> &Path {
        match self {
            Unsafe::Owner { path, .. }
            | Unsafe::Writable { path, .. }
            | Unsafe::Unreadable { path, .. } => path,
        }
    }
}

/// Whether the files a build reads are checked ([`check`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trust {
    /// Everything read must be a safe path for `caller`.
    Checked {
        /// The caller's uid: root and this user may own what is read.
        caller: u32,
    },
    /// The caller vouches for the directories it named: nothing is checked.
    Vouched,
}

impl Trust {
    /// Checks `path` unless vouched for.
    pub fn check(&self, path: &Path) -> Result<(), Unsafe> {
        match *self {
            Trust::Checked { caller } => check(path, caller),
            Trust::Vouched => Ok(()),
        }
    }
}

/// The caller's effective uid.
pub fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

fn trusted_owner(uid: u32, caller: u32) -> bool {
    uid == 0 || uid == caller
}

/// The checks on the path itself: trusted owner, writable by no one else.
fn check_itself(path: &Path, meta: &fs::Metadata, caller: u32) -> Result<(), Unsafe> {
    if !trusted_owner(meta.uid(), caller) {
        return Err(Unsafe::Owner {
            path: path.to_path_buf(),
            uid: meta.uid(),
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 && !meta.file_type().is_symlink() {
        return Err(Unsafe::Writable {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// The checks on a directory above the path: trusted owner, and writable
/// by no one else unless sticky.
fn check_above(path: &Path, meta: &fs::Metadata, caller: u32) -> Result<(), Unsafe> {
    if !trusted_owner(meta.uid(), caller) {
        return Err(Unsafe::Owner {
            path: path.to_path_buf(),
            uid: meta.uid(),
        });
    }
    let mode = meta.mode() & 0o7777;
    let sticky = mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !sticky {
        return Err(Unsafe::Writable {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

fn metadata(path: &Path) -> Result<fs::Metadata, Unsafe> {
    fs::symlink_metadata(path).map_err(|e| Unsafe::Unreadable {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Checks that `path` (a file or directory) is safe for `caller` to build
/// from: the path as given, component by component (a symlink on the way
/// must itself sit in a safe directory, and its target is checked in
/// turn), then the file it resolves to.
pub fn check(path: &Path, caller: u32) -> Result<(), Unsafe> {
    let canonical = fs::canonicalize(path).map_err(|e| Unsafe::Unreadable {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    // The resolved path: every directory above, then the file itself.
    let mut above: Vec<&Path> = canonical.ancestors().skip(1).collect();
    above.reverse();
    for dir in above {
        check_above(dir, &metadata(dir)?, caller)?;
    }
    check_itself(&canonical, &metadata(&canonical)?, caller)?;
    // The path as given may pass through symlinks: each must sit in a
    // directory checked above or be one the caller owns. Checking the
    // link's own directory chain is what `canonical` skipped.
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| Unsafe::Unreadable {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?
            .join(path)
    };
    for link in absolute.ancestors() {
        let Ok(meta) = fs::symlink_metadata(link) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            if let Some(parent) = link.parent() {
                check(parent, caller)?;
            }
            check_itself(link, &meta, caller)?;
        }
    }
    Ok(())
}

/// A safe directory `name` in the current directory or the nearest of its
/// parents, walking up only through directories that are safe for
/// `caller` (owned by root or the caller, writable by no one else) and
/// stopping at the first that is not: the search never trusts a directory
/// another user controls, such as `/tmp`.
pub fn find_upwards(start: &Path, name: &str, caller: u32) -> Option<PathBuf> {
    for dir in start.ancestors() {
        let Ok(meta) = fs::symlink_metadata(dir) else {
            return None;
        };
        if check_itself(dir, &meta, caller).is_err() {
            return None;
        }
        let candidate = dir.join(name);
        if candidate.is_dir() {
            return check(&candidate, caller).is_ok().then_some(candidate);
        }
    }
    None
}

/// The first of `candidates` that is a directory.
pub fn first_existing(candidates: &[&str]) -> Option<PathBuf> {
    candidates.iter().map(PathBuf::from).find(|p| p.is_dir())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn chown(path: &Path, uid: u32) {
        std::os::unix::fs::lchown(path, Some(uid), None).unwrap();
    }

    #[test]
    fn writable_or_foreign_paths_are_unsafe() {
        let caller = euid();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("profiles");
        fs::create_dir(&dir).unwrap();
        chmod(&dir, 0o755);
        assert_eq!(check(&dir, caller), Ok(()));
        chmod(&dir, 0o775);
        assert!(matches!(check(&dir, caller), Err(Unsafe::Writable { .. })));
        chmod(&dir, 0o755);
        // A world-writable parent without the sticky bit: anyone could
        // rename `profiles` away and put their own in its place.
        chmod(tmp.path(), 0o777);
        let err = check(&dir, caller).unwrap_err();
        assert_eq!(err.path(), fs::canonicalize(tmp.path()).unwrap());
        // With the sticky bit (as /tmp), only the entry's owner may.
        chmod(tmp.path(), 0o1777);
        assert_eq!(check(&dir, caller), Ok(()));
        if caller == 0 {
            chown(&dir, 65534);
            assert!(matches!(
                check(&dir, caller),
                Err(Unsafe::Owner { uid: 65534, .. })
            ));
            assert_eq!(check(&dir, 65534), Ok(()), "the owner's own directory");
        }
        chmod(tmp.path(), 0o700);
    }

    #[test]
    fn a_symlink_into_a_writable_directory_is_unsafe() {
        let caller = euid();
        let tmp = tempfile::tempdir().unwrap();
        let shared = tmp.path().join("shared");
        fs::create_dir(&shared).unwrap();
        chmod(&shared, 0o777);
        let real = shared.join("profiles");
        fs::create_dir(&real).unwrap();
        chmod(&real, 0o755);
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(check(&link, caller).is_err());
    }

    #[test]
    fn the_upward_search_stops_at_a_writable_directory() {
        let caller = euid();
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        chmod(root, 0o755);
        // root/profiles is safe; root/shared is world-writable (sticky);
        // root/shared/job is the caller's.
        fs::create_dir_all(root.join("profiles")).unwrap();
        chmod(&root.join("profiles"), 0o755);
        let shared = root.join("shared");
        fs::create_dir(&shared).unwrap();
        chmod(&shared, 0o1777);
        let job = shared.join("job");
        fs::create_dir(&job).unwrap();
        chmod(&job, 0o755);
        // From the job directory the search stops at `shared`: root's
        // profiles above it are not reached.
        assert_eq!(find_upwards(&job, "profiles", caller), None);
        // A planted shared/profiles is never taken either.
        fs::create_dir(shared.join("profiles")).unwrap();
        assert_eq!(find_upwards(&job, "profiles", caller), None);
        // From a safe directory below root, root's profiles are found.
        let own = root.join("own/deeper");
        fs::create_dir_all(&own).unwrap();
        chmod(&root.join("own"), 0o755);
        chmod(&own, 0o755);
        assert_eq!(
            find_upwards(&own, "profiles", caller),
            Some(root.join("profiles"))
        );
        chmod(root, 0o700);
    }
}
