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
/// next time, though every directory on the canonical path is root's. So a
/// symlink is followed only out of a directory nobody but root can write,
/// sticky or not: in a sticky directory (`/tmp`) a symlink is its creator's
/// to replace, and a hard link to one of root's symlinks can be put there.
pub fn resolve_checked(path: &Path) -> Result<PathBuf, WayError> {
    resolve(path, Holder::MayBeSticky)
}

/// [`resolve_checked`] for a place root mounts on: the directory holding
/// it must be writable by nobody but root, sticky or not. In a sticky
/// directory another user could make the entry first, or swap it for a
/// symlink between the check and the mount.
pub fn resolve_mount_point(path: &Path) -> Result<PathBuf, WayError> {
    resolve(path, Holder::RootsAlone)
}

/// What the directory holding the last component may be.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Holder {
    /// Any directory root trusts on the way (a sticky one included).
    MayBeSticky,
    /// Only a directory nobody but root can write.
    RootsAlone,
}

/// Refuses `at` (at `path`) as the directory a symlink is followed out of,
/// or a mount point's, unless nobody but root can write it.
fn roots_alone(at: &OwnedFd, path: &Path, why: &str) -> Result<(), WayError> {
    let st = rfs::fstat(at).map_err(|e| WayError::Io {
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    if st.st_mode & 0o022 != 0 {
        return Err(WayError::Untrusted {
            path: path.to_path_buf(),
            reason: format!(
                "writable by others (mode {:04o}), where {why}",
                st.st_mode & 0o7777
            ),
        });
    }
    Ok(())
}

fn resolve(path: &Path, holder: Holder) -> Result<PathBuf, WayError> {
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
                    if holder == Holder::RootsAlone {
                        roots_alone(at, &done, "its entries are not root's alone to make")?;
                    }
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
        roots_alone(at, &here(&entered), "a symlink is its creator's to change")?;
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
    let reason = match distrust(&st) {
        Some(reason) => reason,
        None => {
            // A FUSE server says who owns what: another user's (mounted with
            // fusermount, and let in with allow_other) could say root.
            let fs = rfs::fstatfs(at).map_err(|e| WayError::Io {
                path: path.to_path_buf(),
                source: e.into(),
            })?;
            let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            if fs.f_type as i64 != FUSE_SUPER_MAGIC || fuse_mounted_by_root(st.st_dev, &table) {
                return Ok(());
            }
            "on a FUSE file system another user mounted, whose server says who owns what"
                .to_string()
        }
    };
    Err(WayError::Untrusted {
        path: path.to_path_buf(),
        reason,
    })
}

/// `FUSE_SUPER_MAGIC`, a FUSE file system's `statfs` type.
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

/// Whether the FUSE file system of device `dev` was mounted by root
/// (`user_id=0` among its super block options in `table`, the text of
/// `/proc/self/mountinfo`).
fn fuse_mounted_by_root(dev: u64, table: &str) -> bool {
    let device = format!("{}:{}", rfs::major(dev), rfs::minor(dev));
    table
        .lines()
        .filter(|line| line.split(' ').nth(2) == Some(device.as_str()))
        .any(|line| {
            line.rsplit(' ')
                .next()
                .is_some_and(|options| options.split(',').any(|o| o == "user_id=0"))
        })
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
    fn only_a_fuse_file_system_root_mounted_is_taken_at_its_word() {
        let table = "\
36 35 0:45 / /home/alice/x rw,nosuid,nodev - fuse.sshfs alice@h:/ rw,user_id=1000,group_id=1000
37 35 0:46 / /Programs ro,nodev - fuse.nexus /var/lib/nexus ro,user_id=0,group_id=0,default_permissions
38 35 0:47 / /mnt/odd ro - fuse.odd odd ro,group_id=0,user_id=10
";
        let dev = |minor| rfs::makedev(0, minor);
        assert!(!fuse_mounted_by_root(dev(45), table));
        assert!(fuse_mounted_by_root(dev(46), table));
        assert!(!fuse_mounted_by_root(dev(47), table));
        assert!(!fuse_mounted_by_root(dev(48), table), "not listed");
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
        // Nor out of a sticky one: the link is its creator's to replace.
        let sticky = base.join("sticky");
        std::fs::create_dir(&sticky).unwrap();
        std::os::unix::fs::symlink(&real, sticky.join("to-real")).unwrap();
        std::fs::set_permissions(&sticky, std::fs::Permissions::from_mode(0o1777)).unwrap();
        match resolve_checked(&sticky.join("to-real/Programs")) {
            Err(WayError::Untrusted { path, reason }) => {
                assert_eq!(path, sticky);
                assert!(reason.contains("1777"), "{reason}");
            }
            other => panic!("not refused: {other:?}"),
        }
        // A sticky directory may hold a tree's way, not a mount point.
        std::fs::create_dir(sticky.join("Programs")).unwrap();
        assert_eq!(
            resolve_checked(&sticky.join("Programs")).unwrap(),
            sticky.join("Programs")
        );
        assert!(matches!(
            resolve_mount_point(&sticky.join("Programs")),
            Err(WayError::Untrusted { path, .. }) if path == sticky
        ));
        assert_eq!(
            resolve_mount_point(&links.join("rel/Programs")).unwrap(),
            real.join("Programs")
        );
        // And a loop ends.
        std::os::unix::fs::symlink(links.join("loop"), links.join("loop")).unwrap();
        assert!(resolve_checked(&links.join("loop/x")).is_err());
    }
}
