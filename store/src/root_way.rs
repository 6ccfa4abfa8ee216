//! Whether root alone can change the way to a path: the rule root applies
//! before it trusts what a path reaches (git's `safe.directory` rule).
//! Whoever could write a directory on the way could rename a directory
//! below it, or swap in a symlink, and have the same path reach another
//! tree, or another mount, between two of root's looks. So:
//!
//! - every directory on the way is owned by root and writable by nobody
//!   else, a sticky directory excepted (others cannot rename or remove
//!   root's entries in it);
//! - a symlink is followed only out of a directory nobody but root can
//!   write, sticky or not (in a sticky one it is its creator's to replace);
//! - a directory on a FUSE file system counts only if root mounted it: the
//!   server of another user's says who owns what, and is never asked;
//! - a place root mounts on is, besides, held by a directory nobody but
//!   root can write, or is a directory of root's in a sticky one.
//!
//! Used for the trees root imports (`scan`) and the places root mounts on
//! (`nexus mount`, its Index, `nexus takeover`).

use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, Stat, StatxFlags};
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
    /// A directory on the way could not be opened or examined (the
    /// cause is the error's source).
    #[error("{path}")]
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

/// How every directory on a way is opened: only as a place, never through
/// a symlink.
const STEP: OFlags = OFlags::PATH
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// The error of a failed step at `path`.
fn io_error(path: &Path, e: Errno) -> WayError {
    WayError::Io {
        path: path.to_path_buf(),
        source: e.into(),
    }
}

/// The status of directory `at` (at `path`).
fn stat_of(at: &OwnedFd, path: &Path) -> Result<Stat, WayError> {
    rfs::fstat(at).map_err(|e| io_error(path, e))
}

/// Opens (`O_PATH`) the directory holding `canonical`, an absolute path
/// with no symlink, `.` or `..` in it, after checking that root alone can
/// change it and every directory above it: walked down from `/` one
/// component at a time and through no symlink, so the directories checked
/// are the ones the path is found through. `canonical` itself is neither
/// opened nor examined (it may be a mount whose server is gone). For `/`,
/// `/` itself, unchecked.
pub fn open_parent_checked(canonical: &Path) -> Result<OwnedFd, WayError> {
    let table = mount_table();
    let root = Path::new("/");
    let mut at = rfs::openat(rfs::CWD, root, STEP, Mode::empty()).map_err(|e| io_error(root, e))?;
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
        check(&at, &above, &table)?;
        above.push(name);
        at = rfs::openat(&at, *name, STEP, Mode::empty()).map_err(|e| match e {
            // With O_PATH and O_NOFOLLOW a symlink is ENOTDIR (O_DIRECTORY)
            // rather than ELOOP.
            Errno::LOOP | Errno::NOTDIR => WayError::Replaced {
                path: canonical.to_path_buf(),
            },
            e => io_error(&above, e),
        })?;
    }
    check(&at, &above, &table)?;
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
/// it must be writable by nobody but root, or be sticky and hold a
/// directory of root's there. Otherwise another user could make the entry
/// first, or swap it for a symlink between the check and the mount.
pub fn resolve_mount_point(path: &Path) -> Result<PathBuf, WayError> {
    resolve(path, Holder::RootsAlone)
}

/// What the directory holding the last component may be.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Holder {
    /// Any directory root trusts on the way (a sticky one included).
    MayBeSticky,
    /// A directory nobody but root can write, or a sticky one whose entry
    /// is a directory of root's.
    RootsAlone,
}

/// Refuses `at` (at `path`) as the directory a symlink is followed out of
/// unless nobody but root can write it.
fn links_followable(at: &OwnedFd, path: &Path) -> Result<(), WayError> {
    let st = stat_of(at, path)?;
    if st.st_mode & 0o022 != 0 {
        return Err(WayError::Untrusted {
            path: path.to_path_buf(),
            reason: format!(
                "writable by its group or by others (mode {:04o}), where a symlink \
                 there is its creator's to change",
                st.st_mode & 0o7777
            ),
        });
    }
    Ok(())
}

/// [`resolve_checked`], with what the last component's directory may be.
fn resolve(path: &Path, holder: Holder) -> Result<PathBuf, WayError> {
    use std::collections::VecDeque;
    use std::ffi::OsString;
    let abs = std::path::absolute(path).map_err(|source| WayError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let table = mount_table();
    // The directories entered, from `/` (its descriptor is `root`).
    let slash = Path::new("/");
    let root = rfs::openat(rfs::CWD, slash, STEP, Mode::empty()).map_err(|e| io_error(slash, e))?;
    check(&root, slash, &table)?;
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
            Err(e) => Err(io_error(&here(&entered).join(&name), e)),
        };
        let target = if pending.is_empty() {
            match link(at)? {
                Some(target) => target,
                None => {
                    let holding = here(&entered);
                    if holder == Holder::RootsAlone {
                        holds_only_roots(at, &holding, &name, &table)?;
                    }
                    return Ok(holding.join(&name));
                }
            }
        } else {
            match rfs::openat(at, &name, STEP, Mode::empty()) {
                Ok(fd) => {
                    let path = here(&entered).join(&name);
                    check(&fd, &path, &table)?;
                    entered.push((fd, name));
                    continue;
                }
                Err(Errno::NOTDIR | Errno::LOOP) => match link(at)? {
                    Some(target) => target,
                    None => return Err(io_error(&here(&entered).join(&name), Errno::NOTDIR)),
                },
                Err(e) => return Err(io_error(&here(&entered).join(&name), e)),
            }
        };
        links_followable(at, &here(&entered))?;
        links += 1;
        if links > MAX_LINKS {
            return Err(io_error(&abs, Errno::LOOP));
        }
        if push_front(&mut pending, &target) {
            entered.clear();
        }
    }
    // Ended on a directory entered (a last `..`, or `/`): its holder is
    // the one entered before it.
    let done = here(&entered);
    if holder == Holder::RootsAlone
        && let Some(((_, name), above)) = entered.split_last()
    {
        let at = above.last().map_or(&root, |(fd, _)| fd);
        let holding = here(above);
        holds_only_roots(at, &holding, name, &table)?;
    }
    Ok(done)
}

/// Checks that the entry `name` of directory `at` (at `path`) is a place
/// only root can change: `at` writable by nobody but root, or, sticky, the
/// entry a directory of root's (nobody else can move or remove it then).
/// The entry is examined without asking a FUSE server (it may be a mount
/// whose server is gone).
fn holds_only_roots(
    at: &OwnedFd,
    path: &Path,
    name: &std::ffi::OsStr,
    table: &str,
) -> Result<(), WayError> {
    let why = "its entries are not root's alone to make or replace";
    let st = stat_of(at, path)?;
    if st.st_mode & 0o022 == 0 {
        return Ok(());
    }
    let entry = path.join(name);
    let refused = || WayError::Untrusted {
        path: path.to_path_buf(),
        reason: format!(
            "writable by others (mode {:04o}) and {} is not a directory of root's, so {why}",
            st.st_mode & 0o7777,
            entry.display()
        ),
    };
    let sticky = st.st_mode & 0o1000 != 0;
    if !sticky {
        return Err(refused());
    }
    let found = rfs::statx(
        at,
        name,
        AtFlags::SYMLINK_NOFOLLOW | AtFlags::STATX_DONT_SYNC | AtFlags::NO_AUTOMOUNT,
        StatxFlags::TYPE | StatxFlags::UID,
    );
    match found {
        Ok(found)
            if found.stx_uid == 0
                && FileType::from_raw_mode(u32::from(found.stx_mode)) == FileType::Directory
                && !foreign_fuse(
                    rfs::makedev(found.stx_dev_major, found.stx_dev_minor),
                    table,
                ) =>
        {
            Ok(())
        }
        _ => Err(refused()),
    }
}

/// Checks that root alone can change the directory `at` (at `path`);
/// `table` is the text of `/proc/self/mountinfo`. A FUSE file system
/// another user mounted is refused before anything asks its server (which
/// could say root owns what it likes, or never answer).
pub(crate) fn check(at: &OwnedFd, path: &Path, table: &str) -> Result<(), WayError> {
    // The device alone: nothing is asked of the file system's server.
    let dev = rfs::statx(
        at,
        c"",
        AtFlags::EMPTY_PATH | AtFlags::STATX_DONT_SYNC,
        StatxFlags::empty(),
    )
    .map_err(|e| io_error(path, e))?;
    if foreign_fuse(rfs::makedev(dev.stx_dev_major, dev.stx_dev_minor), table) {
        return Err(WayError::Untrusted {
            path: path.to_path_buf(),
            reason: FOREIGN_FUSE.to_string(),
        });
    }
    let st = stat_of(at, path)?;
    match distrust(&st) {
        Some(reason) => Err(WayError::Untrusted {
            path: path.to_path_buf(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Why a directory on a FUSE file system another user mounted is refused.
pub(crate) const FOREIGN_FUSE: &str =
    "on a FUSE file system another user mounted, whose server says who owns what";

/// The text of `/proc/self/mountinfo` (empty if it cannot be read: then no
/// mount is known to be a FUSE one, and `fstat` decides).
pub(crate) fn mount_table() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default()
}

/// Whether device `dev` is a FUSE file system (`fuse`, `fuse.*`,
/// `fuseblk`) that root did not mount (no `user_id=0` among its super
/// block options in `table`, the text of `/proc/self/mountinfo`).
/// Root-mounted FUSE servers (sshfs, bindfs, a nexus mount) are trusted as
/// root's own, by design.
pub(crate) fn foreign_fuse(dev: u64, table: &str) -> bool {
    let device = format!("{}:{}", rfs::major(dev), rfs::minor(dev));
    table
        .lines()
        .filter(|line| line.split(' ').nth(2) == Some(device.as_str()))
        .filter_map(|line| line.split_once(" - ").map(|(_, tail)| tail))
        .any(|tail| {
            let mut fields = tail.split(' ');
            let kind = fields.next().unwrap_or_default();
            let options = fields.nth(1).unwrap_or_default();
            (kind == "fuse" || kind == "fuseblk" || kind.starts_with("fuse."))
                && !options.split(',').any(|o| o == "user_id=0")
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
37 35 0:46 / /Programs ro,nodev shared:7 - fuse.nexus /var/lib/nexus ro,user_id=0,group_id=0
38 35 0:47 / /mnt/odd ro - fuse odd ro,group_id=0,user_id=10
39 35 0:48 / /mnt/a\\040b ro - fuse.x user_id=0 ro,user_id=10
40 35 8:1 / / rw - ext4 /dev/vda rw
";
        let dev = |major, minor| rfs::makedev(major, minor);
        assert!(foreign_fuse(dev(0, 45), table));
        assert!(!foreign_fuse(dev(0, 46), table));
        assert!(foreign_fuse(dev(0, 47), table));
        assert!(
            foreign_fuse(dev(0, 48), table),
            "the source is not the options"
        );
        assert!(!foreign_fuse(dev(8, 1), table), "not FUSE");
        assert!(!foreign_fuse(dev(0, 49), table), "not listed");
    }

    /// A FUSE file system at `at` that nobody serves, mounted with
    /// `user_id` as its owner; its `/dev/fuse` descriptor.
    fn unserved_fuse(at: &Path, user_id: u32) -> OwnedFd {
        let dev = rfs::open("/dev/fuse", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty()).unwrap();
        let options = std::ffi::CString::new(format!(
            "fd={},rootmode=40000,user_id={user_id},group_id={user_id},allow_other",
            std::os::fd::AsRawFd::as_raw_fd(&dev)
        ))
        .unwrap();
        let point = std::ffi::CString::new(at.as_os_str().as_bytes()).unwrap();
        // SAFETY: mount(2) of a FUSE file system on our own directory.
        let rc = unsafe {
            libc::mount(
                c"test".as_ptr(),
                point.as_ptr(),
                c"fuse.test".as_ptr(),
                libc::MS_RDONLY | libc::MS_NODEV | libc::MS_NOSUID,
                options.as_ptr().cast(),
            )
        };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        dev
    }

    #[test]
    fn another_users_fuse_mount_on_the_way_is_refused_without_asking_it() {
        let Some((_tmp, base)) = root_owned_base() else {
            return;
        };
        let mnt = base.join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let _dev = unserved_fuse(&mnt, 65534);
        // Nobody serves it: anything asking the server would wait forever.
        let (tx, rx) = std::sync::mpsc::channel();
        let way = mnt.join("Programs");
        std::thread::spawn(move || {
            let _ = tx.send(resolve_checked(&way).map_err(|e| e.to_string()));
        });
        let got = rx.recv_timeout(std::time::Duration::from_secs(10));
        let point = std::ffi::CString::new(mnt.as_os_str().as_bytes()).unwrap();
        // SAFETY: umount2 of the mount made above.
        unsafe { libc::umount2(point.as_ptr(), libc::MNT_DETACH) };
        match got {
            Ok(Err(e)) => assert!(e.contains("another user mounted"), "{e}"),
            Ok(Ok(path)) => panic!("{} taken", path.display()),
            Err(_) => panic!("the check asked the FUSE server"),
        }
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
        match resolve_checked(&real.join("./x/../Programs")) {
            Err(WayError::Io { path, source }) => {
                assert_eq!(path, real.join("x"));
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("{other:?}"),
        }
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
        // A sticky directory holds a mount point only if the entry is a
        // directory of root's (nobody else can move or remove it), also
        // when the path ends in `..`.
        std::fs::create_dir_all(sticky.join("Programs/inner")).unwrap();
        std::fs::create_dir(sticky.join("theirs")).unwrap();
        std::os::unix::fs::chown(sticky.join("theirs"), Some(65534), None).unwrap();
        for roots in [sticky.join("Programs"), sticky.join("Programs/inner/..")] {
            assert_eq!(
                resolve_mount_point(&roots).unwrap(),
                sticky.join("Programs")
            );
        }
        for (theirs, named) in [
            (sticky.join("theirs"), "theirs"),
            (sticky.join("absent"), "absent"),
            (sticky.join("Programs/../theirs"), "theirs"),
        ] {
            match resolve_mount_point(&theirs) {
                Err(WayError::Untrusted { path, reason }) => {
                    assert_eq!(path, sticky);
                    assert!(reason.contains(named), "{reason}");
                }
                other => panic!("{} not refused: {other:?}", theirs.display()),
            }
            // A tree's way may end there (the tree itself is checked).
            assert!(resolve_checked(&theirs).is_ok());
        }
        // A group-writable directory holds no mount point at all.
        let group = base.join("group");
        std::fs::create_dir_all(group.join("Programs")).unwrap();
        std::fs::set_permissions(&group, std::fs::Permissions::from_mode(0o775)).unwrap();
        assert!(matches!(
            resolve_mount_point(&group.join("Programs")),
            Err(WayError::Untrusted { path, .. }) if path == group
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
