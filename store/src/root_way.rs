//! Whether root alone can change the way to a path: the rule root applies
//! before it trusts what a path reaches (git's `safe.directory` rule).
//! Every directory on the way must be owned by root and writable by nobody
//! else, a sticky directory excepted (others cannot rename or remove
//! root's entries in it). Whoever could write one of them could rename a
//! directory below it, or swap in a symlink, and have the same path reach
//! another tree, or another mount, between two of root's looks.
//!
//! Used for the trees root imports (`scan`) and the places root mounts on
//! (`nexus mount`, its Index, `nexus takeover`).

use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{self as rfs, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

/// Why the way to a path is not root's alone, or could not be walked.
#[derive(Debug, thiserror::Error)]
pub enum WayError {
    /// A directory on the way is someone else's, or others can write it.
    #[error("{path} is {reason}")]
    Untrusted {
        /// The directory.
        path: PathBuf,
        /// Who owns it or may write to it.
        reason: String,
    },
    /// A component was a symlink (or no directory) when walked, though the
    /// path was canonical a moment before.
    #[error("{path}: a directory on the way was replaced by a symlink")]
    Replaced {
        /// The path walked.
        path: PathBuf,
    },
    /// A directory on the way could not be opened or examined.
    #[error("{path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Why root would not trust `st` as a directory on the way to something
/// (or as part of a tree it imports), if it would not.
pub(crate) fn distrust(st: &Stat) -> Option<String> {
    if st.st_uid != 0 {
        return Some(format!("owned by uid {}, not root", st.st_uid));
    }
    let kind = FileType::from_raw_mode(st.st_mode);
    let sticky_dir = kind == FileType::Directory && st.st_mode & 0o1000 != 0;
    if kind != FileType::Symlink && st.st_mode & 0o022 != 0 && !sticky_dir {
        return Some(format!(
            "writable by its group or by others (mode {:04o})",
            st.st_mode & 0o7777
        ));
    }
    None
}

/// Opens (`O_PATH`) the directory holding `canonical`, an absolute path
/// with no symlink, `.` or `..` in it, after checking that root alone can
/// change it and every directory above it: walked down from `/` one
/// component at a time and through no symlink, so the directories checked
/// are the ones the path is found through. `canonical` itself is neither
/// opened nor examined (it may be a mount whose server is gone). For `/`,
/// `/` itself, unchecked.
pub fn open_parent_checked(canonical: &Path) -> Result<OwnedFd, WayError> {
    let io = |path: &Path, e: Errno| WayError::Io {
        path: path.to_path_buf(),
        source: e.into(),
    };
    let step = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let root = Path::new("/");
    let mut at = rfs::openat(rfs::CWD, root, step, Mode::empty()).map_err(|e| io(root, e))?;
    let mut above = PathBuf::from("/");
    let names: Vec<_> = canonical
        .components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name),
            _ => None,
        })
        .collect();
    let Some((_, parents)) = names.split_last() else {
        return Ok(at);
    };
    for name in parents {
        check(&at, &above)?;
        above.push(name);
        at = rfs::openat(&at, *name, step, Mode::empty()).map_err(|e| match e {
            // With O_PATH and O_NOFOLLOW a symlink is ENOTDIR (O_DIRECTORY)
            // rather than ELOOP.
            Errno::LOOP | Errno::NOTDIR => WayError::Replaced {
                path: canonical.to_path_buf(),
            },
            e => io(&above, e),
        })?;
    }
    check(&at, &above)?;
    Ok(at)
}

/// How many symlinks [`resolve_checked`] follows before it gives up
/// (the kernel's limit).
const MAX_LINKS: usize = 40;

/// Resolves `path` (made absolute against the working directory's path) as
/// the kernel would, one component at a time, checking that root alone can
/// change every directory the resolution passes through, those holding the
/// symlinks it follows included, and returns the canonical path. The last
/// component is followed if it is a symlink (`readlinkat`, which asks no
/// file system server for a mount point's root) and never otherwise opened
/// or examined, so it may be a mount whose server is gone.
///
/// Checking only the canonical path is not enough: a symlink kept in a
/// directory that another user can write leads wherever that user likes
/// next time, though every directory on the canonical path is root's.
pub fn resolve_checked(path: &Path) -> Result<PathBuf, WayError> {
    use std::collections::VecDeque;
    use std::ffi::OsString;
    let io = |path: &Path, e: Errno| WayError::Io {
        path: path.to_path_buf(),
        source: e.into(),
    };
    let abs = std::path::absolute(path).map_err(|source| WayError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let step = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let open_root = || {
        let root = Path::new("/");
        let at = rfs::openat(rfs::CWD, root, step, Mode::empty()).map_err(|e| io(root, e))?;
        check(&at, root)?;
        Ok::<_, WayError>(at)
    };
    // The directories entered, from `/` (its descriptor is `root`).
    let root = open_root()?;
    let mut entered: Vec<(OwnedFd, OsString)> = Vec::new();
    let mut pending: VecDeque<OsString> = VecDeque::new();
    let push_front = |pending: &mut VecDeque<OsString>, path: &Path| -> bool {
        let mut parts: Vec<OsString> = Vec::new();
        let mut absolute = false;
        for c in path.components() {
            match c {
                Component::RootDir => absolute = true,
                Component::Normal(n) => parts.push(n.to_os_string()),
                Component::ParentDir => parts.push("..".into()),
                Component::CurDir | Component::Prefix(_) => {}
            }
        }
        for part in parts.into_iter().rev() {
            pending.push_front(part);
        }
        absolute
    };
    push_front(&mut pending, &abs);
    let mut links = 0;
    let here = |entered: &[(OwnedFd, OsString)]| -> PathBuf {
        let mut p = PathBuf::from("/");
        p.extend(entered.iter().map(|(_, n)| n));
        p
    };
    while let Some(name) = pending.pop_front() {
        if name == ".." {
            entered.pop();
            continue;
        }
        let at = entered.last().map_or(&root, |(fd, _)| fd);
        let link = |at: &OwnedFd| match rfs::readlinkat(at, &name, Vec::new()) {
            Ok(target) => Ok(Some(PathBuf::from(std::ffi::OsStr::from_bytes(
                target.as_bytes(),
            )))),
            Err(Errno::INVAL | Errno::NOENT) => Ok(None),
            Err(e) => Err(io(&here(&entered).join(&name), e)),
        };
        let target = if pending.is_empty() {
            match link(at)? {
                Some(target) => target,
                None => {
                    let mut done = here(&entered);
                    done.push(&name);
                    return Ok(done);
                }
            }
        } else {
            match rfs::openat(at, &name, step, Mode::empty()) {
                Ok(fd) => {
                    let path = here(&entered).join(&name);
                    check(&fd, &path)?;
                    entered.push((fd, name));
                    continue;
                }
                Err(Errno::NOTDIR | Errno::LOOP) => match link(at)? {
                    Some(target) => target,
                    None => return Err(io(&here(&entered).join(&name), Errno::NOTDIR)),
                },
                Err(e) => return Err(io(&here(&entered).join(&name), e)),
            }
        };
        links += 1;
        if links > MAX_LINKS {
            return Err(io(&abs, Errno::LOOP));
        }
        if push_front(&mut pending, &target) {
            entered.clear();
        }
    }
    Ok(here(&entered))
}

/// Checks that root alone can change the directory `at` (at `path`).
fn check(at: &OwnedFd, path: &Path) -> Result<(), WayError> {
    let st = rfs::fstat(at).map_err(|e| WayError::Io {
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    match distrust(&st) {
        Some(reason) => Err(WayError::Untrusted {
            path: path.to_path_buf(),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A fresh directory only root can change (kept while the first is),
    /// when running as root; `None`, saying so, otherwise.
    fn root_owned_base() -> Option<(tempfile::TempDir, PathBuf)> {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: ownership by root needs root");
            return None;
        }
        let tmp = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(tmp.path()).unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
        Some((tmp, base))
    }

    #[test]
    fn the_way_is_trusted_only_when_root_alone_can_change_it() {
        let Some((_tmp, base)) = root_owned_base() else {
            return;
        };
        let dir = base.join("dir");
        std::fs::create_dir(&dir).unwrap();
        let target = dir.join("mnt");
        assert!(open_parent_checked(&target).is_ok());
        // `/` and a path directly below it.
        assert!(open_parent_checked(Path::new("/")).is_ok());
        assert!(open_parent_checked(Path::new("/tmp")).is_ok());

        // Writable by others: refused, naming it.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        match open_parent_checked(&target) {
            Err(WayError::Untrusted { path, reason }) => {
                assert_eq!(path, dir);
                assert!(reason.contains("0777"), "{reason}");
            }
            other => panic!("not refused: {other:?}"),
        }
        // Sticky: others cannot move root's entries in it.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(open_parent_checked(&target).is_ok());

        // Owned by another user, even if only they can write it.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(&dir, Some(65534), None).unwrap();
        match open_parent_checked(&target) {
            Err(WayError::Untrusted { path, reason }) => {
                assert_eq!(path, dir);
                assert!(reason.contains("65534"), "{reason}");
            }
            other => panic!("not refused: {other:?}"),
        }
        // A directory above it, not only the parent.
        std::os::unix::fs::chown(&dir, Some(0), None).unwrap();
        let deeper = dir.join("a/b");
        std::fs::create_dir_all(&deeper).unwrap();
        std::fs::set_permissions(dir.join("a"), std::fs::Permissions::from_mode(0o775)).unwrap();
        assert!(matches!(
            open_parent_checked(&deeper.join("mnt")),
            Err(WayError::Untrusted { path, .. }) if path == dir.join("a")
        ));

        // A component that is a symlink is never walked through.
        std::os::unix::fs::symlink(&dir, base.join("link")).unwrap();
        assert!(matches!(
            open_parent_checked(&base.join("link/mnt")),
            Err(WayError::Replaced { .. })
        ));
    }

    #[test]
    fn a_link_is_followed_only_out_of_a_directory_root_alone_can_change() {
        let Some((_tmp, base)) = root_owned_base() else {
            return;
        };
        let real = base.join("real");
        std::fs::create_dir_all(real.join("Programs")).unwrap();
        // Plain, `.`/`..`, and the last component absent.
        assert_eq!(
            resolve_checked(&real.join("Programs")).unwrap(),
            real.join("Programs")
        );
        assert_eq!(
            resolve_checked(&real.join("./x/../Programs"))
                .unwrap_err()
                .to_string(),
            format!(
                "{}: No such file or directory (os error 2)",
                real.join("x").display()
            )
        );
        assert_eq!(
            resolve_checked(&real.join("absent")).unwrap(),
            real.join("absent")
        );
        // Links in root's directories: followed, relative and absolute,
        // the last component too.
        let links = base.join("links");
        std::fs::create_dir(&links).unwrap();
        std::os::unix::fs::symlink("../real", links.join("rel")).unwrap();
        std::os::unix::fs::symlink(&real, links.join("abs")).unwrap();
        std::os::unix::fs::symlink(real.join("Programs"), links.join("last")).unwrap();
        assert_eq!(
            resolve_checked(&links.join("rel/Programs")).unwrap(),
            real.join("Programs")
        );
        assert_eq!(
            resolve_checked(&links.join("abs/Programs")).unwrap(),
            real.join("Programs")
        );
        assert_eq!(
            resolve_checked(&links.join("last")).unwrap(),
            real.join("Programs")
        );
        // A link kept in a directory another user can write is refused,
        // though it leads to root's directories.
        let shared = base.join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::os::unix::fs::symlink(&real, shared.join("to-real")).unwrap();
        std::os::unix::fs::symlink(real.join("Programs"), shared.join("Programs")).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        for path in [shared.join("to-real/Programs"), shared.join("Programs")] {
            match resolve_checked(&path) {
                Err(WayError::Untrusted { path: at, .. }) => assert_eq!(at, shared),
                other => panic!("{} not refused: {other:?}", path.display()),
            }
        }
        // And a loop ends.
        std::os::unix::fs::symlink(links.join("loop"), links.join("loop")).unwrap();
        assert!(resolve_checked(&links.join("loop/x")).is_err());
    }
}
