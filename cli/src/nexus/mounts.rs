//! Finding mounts in `/proc/self/mountinfo` and `nexus umount`.

use std::ffi::{CString, OsString};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};

/// What mountinfo says about one mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// File system type (`fuse`, `fuse.nexus`, `ext4`...).
    pub fs_type: String,
    /// The source (the store directory for our mounts; `nexus` for those
    /// of older versions).
    pub source: String,
    /// The device number (major, minor) of the file system mounted.
    pub dev: Option<(u32, u32)>,
    /// The mount's id (mountinfo's first field, `statx`'s `STATX_MNT_ID`).
    pub id: Option<u64>,
}

/// The types of nexus mounts: the store, and the Index.
pub const NEXUS_TYPES: [&str; 2] = ["fuse.nexus", "fuse.nexus-index"];

/// The source the kernel view's overlayfs is mounted with.
pub const KERNEL_VIEW_SOURCE: &str = "nexus-kernel-view";

impl MountEntry {
    /// Whether this is a kernel view's overlayfs (`--kernel-metadata`).
    pub fn is_kernel_view(&self) -> bool {
        self.fs_type == "overlay" && self.source == KERNEL_VIEW_SOURCE
    }

    /// True for a mount made by `nexus mount`: of a nexus type, or (made by
    /// an older version, which gave the type `fuse`) with source `nexus`.
    pub fn is_nexus(&self) -> bool {
        NEXUS_TYPES.contains(&self.fs_type.as_str())
            || ((self.fs_type == "fuse" || self.fs_type.starts_with("fuse."))
                && self.source == "nexus")
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\012`...).
fn unescape(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                let value = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
                out.push(value as u8);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// Parses mountinfo text (see proc(5)): `ID PARENT MAJ:MIN ROOT MOUNTPOINT
/// OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS`.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let dash = fields.iter().position(|f| *f == "-")?;
            let mount_point = fields.get(4)?;
            Some(MountEntry {
                mount_point: PathBuf::from(OsString::from_vec(unescape(mount_point))),
                fs_type: String::from_utf8_lossy(&unescape(fields.get(dash + 1)?)).into_owned(),
                source: String::from_utf8_lossy(&unescape(fields.get(dash + 2)?)).into_owned(),
                dev: fields.get(2).and_then(|d| {
                    let (major, minor) = d.split_once(':')?;
                    Some((major.parse().ok()?, minor.parse().ok()?))
                }),
                id: fields.first().and_then(|id| id.parse().ok()),
            })
        })
        .collect()
}

/// The topmost mount at `path` (canonical), if any.
pub fn find_mount(path: &Path) -> Result<Option<MountEntry>> {
    let text =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    Ok(parse_mountinfo(&text)
        .into_iter()
        .rfind(|m| m.mount_point == path))
}

/// Whether the last of `at` (the mounts at one path, bottom first) is a
/// kernel view a nexus daemon stacked on its mount: its overlayfs, or an
/// EROFS image on an Index mount (the image is named by a descriptor, so
/// the mount below says what it is).
pub(super) fn kernel_view_on_top(at: &[MountEntry]) -> bool {
    match at.split_last() {
        Some((top, _)) if top.is_kernel_view() => true,
        Some((top, below)) if top.fs_type == "erofs" => below
            .last()
            .is_some_and(|m| m.fs_type == NEXUS_TYPES[1] || kernel_view_on_top(below)),
        _ => false,
    }
}

/// The mounts at `path`, bottom first.
pub(super) fn mounts_at(path: &Path) -> Result<Vec<MountEntry>> {
    let text =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    Ok(parse_mountinfo(&text)
        .into_iter()
        .filter(|m| m.mount_point == path)
        .collect())
}

/// Whether a kernel view covers the mount at `path` (`--kernel-metadata`).
pub fn covered_by_kernel_view(path: &Path) -> Result<bool> {
    Ok(kernel_view_on_top(&mounts_at(path)?))
}

/// Refuses to mount on `path` (canonical) when a nexus mount, or a kernel
/// view over one, is on top of it already: a second daemon stacked on the
/// first would hide it without ending it, and `nexus umount` would then
/// take off one of the two. `what` names the place in the error.
pub fn refuse_stacking(path: &Path, what: &str) -> Result<()> {
    let at = mounts_at(path)?;
    if kernel_view_on_top(&at) || at.last().is_some_and(MountEntry::is_nexus) {
        let path = path.display();
        bail!(
            "{what} {path} is a nexus mount already: unmount it first with `nexus umount \
             {path}` (which also removes a mount whose daemon is gone), or hand it to a \
             new daemon without unmounting with `nexus takeover {path}`"
        );
    }
    Ok(())
}

/// The mount at `path` beneath the kernel view, if one covers it
/// (`--kernel-metadata`), else the topmost: the daemon's own mount.
pub fn find_served_mount(path: &Path) -> Result<Option<MountEntry>> {
    let mut at = mounts_at(path)?;
    while kernel_view_on_top(&at) {
        at.pop();
    }
    Ok(at.pop())
}

/// The canonical form of a mount point, even when it cannot be reached (the
/// mount of a dead daemon answers "transport endpoint is not connected"):
/// then its parent is canonicalised instead.
fn resolve(path: &Path) -> Result<PathBuf> {
    if let Ok(p) = std::fs::canonicalize(path) {
        return Ok(p);
    }
    beside(path)
}

/// The canonical form of `path`'s parent joined with its last name: `path`
/// itself is not looked at.
fn beside(path: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(path).with_context(|| format!("{}", path.display()))?;
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => Ok(std::fs::canonicalize(parent)
            .with_context(|| format!("{}", parent.display()))?
            .join(name)),
        _ => Ok(abs),
    }
}

/// The canonical path of the directory `path`, checked to be one, for a
/// daemon about to mount or adopt a mount there (`what` names it in
/// errors). A nexus mount at `path` is never looked into: its daemon may be
/// the one starting (a restart on the live mount), and the kernel would
/// wait for it.
pub fn check_dir(path: &Path, what: &str) -> Result<PathBuf> {
    // As root the whole way is resolved and checked (the last name
    // included, never stat'ed); otherwise the parent, and the last name
    // below unless a nexus mount is there.
    let canonical = if crate::is_root() {
        resolved_way(path, what)?
    } else {
        beside(path).with_context(|| format!("{what} {}", path.display()))?
    };
    // Before anything stats it (even lstat asks a FUSE daemon).
    if find_mount(&canonical)?.is_some_and(|m| m.is_nexus()) {
        return Ok(canonical);
    }
    let canonical = match std::fs::symlink_metadata(&canonical) {
        Ok(meta) if meta.file_type().is_symlink() => std::fs::canonicalize(&canonical)
            .with_context(|| format!("{what} {}", path.display()))?,
        _ => canonical,
    };
    if !canonical.is_dir() {
        bail!("{what} {} is not a directory", path.display());
    }
    Ok(canonical)
}

/// The canonical path of `path`, a place root mounts on (`what` names it),
/// resolved so that root alone can change every directory the resolution
/// passes through, those holding the symlinks it follows and the place
/// included (`nexus_store::root_way::resolve_mount_point`); the place
/// itself is not looked at. Otherwise
/// a user who can rename or replace an entry in one of them could make the
/// path reach elsewhere: have root mount there or show a kernel view
/// there, or, when a daemon restarts on its predecessor's mounts, take
/// whatever mount the path then reaches for the daemon's own and detach it
/// or cover it with a view.
pub fn resolved_way(path: &Path, what: &str) -> Result<PathBuf> {
    match nexus_store::root_way::resolve_mount_point(path) {
        Ok(canonical) => Ok(canonical),
        Err(nexus_store::root_way::WayError::Untrusted { path: dir, reason }) => bail!(
            "{what} {}: the directory {} on the way to it is {reason}; as root, nexus \
             mounts only where root alone can change the way (whoever can rename or make an \
             entry on it could make the path reach another mount): every directory on it \
             root's and writable by nobody else, or sticky, symlinks followed only out of \
             directories nobody else can write, and the mount point a directory of root's. \
             Mount below a directory only root can write, e.g. `mkdir -m 0755 /tmp/nexus` \
             and a mount point in it",
            path.display(),
            dir.display()
        ),
        Err(e) => Err(e).with_context(|| format!("{what} {}", path.display())),
    }
}

/// Whether `a` and `b` name the same place, by their canonical parents and
/// last names: neither is looked at (see [`check_dir`]).
pub fn same_place(a: &Path, b: &Path) -> bool {
    match (beside(a), beside(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// `nexus umount`: unmounts the nexus mount at `mountpoint`.
pub fn umount(mountpoint: &Path, lazy: bool) -> Result<()> {
    let path = resolve(mountpoint)?;
    let mut entry =
        find_mount(&path)?.ok_or_else(|| anyhow!("{} is not a mount point", path.display()))?;
    if entry.is_kernel_view() {
        return unmount_kernel_view(&path, &entry, lazy);
    }
    if covered_by_kernel_view(&path)? {
        // The Index's image holds nothing of the FUSE mount below: detached
        // (programs may hold its directories), the Index is unmounted as
        // ever.
        unmount_exactly(&path, &entry, libc::MNT_DETACH)
            .with_context(|| format!("detaching the kernel view on {}", path.display()))?;
        entry =
            find_mount(&path)?.ok_or_else(|| anyhow!("{} is not a mount point", path.display()))?;
    }
    if !entry.is_nexus() {
        bail!(
            "{} is a {} mount of {:?}, not a nexus mount; use umount(8)",
            path.display(),
            entry.fs_type,
            entry.source
        );
    }
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    let err = match unmount_exactly(&path, &entry, flags) {
        Ok(()) => return Ok(()),
        Err(err) => err,
    };
    match err.raw_os_error() {
        // Not root: the setuid helper unmounts FUSE mounts of their owner.
        Some(libc::EPERM) => nexus_fs::fuse::fusermount(&path, lazy)
            .with_context(|| format!("unmounting {}", path.display())),
        Some(libc::ESTALE) => bail!(
            "{} no longer reaches the mount the mount table shows there (moved or replaced \
             meanwhile?); nothing was unmounted",
            path.display()
        ),
        Some(libc::EBUSY) => Err(busy(&path)),
        _ => Err(err).with_context(|| format!("unmounting {}", path.display())),
    }
}

/// The refusal of an unmount that `EBUSY` answered.
fn busy(path: &Path) -> anyhow::Error {
    anyhow!(
        "{} is busy: a process has a file open or its working directory in it; \
         end those, or use --lazy to detach it now and let it go when they finish",
        path.display()
    )
}

/// Unmounts (`umount2` with `flags`) the mount `entry` that the mount table
/// showed at `path`, and nothing else. Between reading the table and
/// unmounting, whoever can rename a directory above the mount point could
/// put a link there and have root unmount another mount: so the parent
/// directory is opened and held, the mount its entry reaches must be that
/// one (its id), and the unmount names the entry within that very
/// directory, without following a link (nobody can rename or replace a
/// mount point). Nothing asks a FUSE daemon (`AT_STATX_DONT_SYNC`): it may
/// be dead. An error carries the errno of the step that failed (`ESTALE`:
/// the path reaches another mount now).
fn unmount_exactly(path: &Path, entry: &MountEntry, flags: libc::c_int) -> io::Result<()> {
    use rustix::fs::{AtFlags, Mode, OFlags, StatxFlags};
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    let dir = rustix::fs::open(
        parent,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let st = rustix::fs::statx(
        &dir,
        name,
        AtFlags::SYMLINK_NOFOLLOW | AtFlags::NO_AUTOMOUNT | AtFlags::STATX_DONT_SYNC,
        StatxFlags::MNT_ID,
    )?;
    let reached = (st.stx_mask & StatxFlags::MNT_ID.bits() != 0).then_some(st.stx_mnt_id);
    if reached.is_none() || reached != entry.id {
        return Err(io::Error::from_raw_os_error(libc::ESTALE));
    }
    let mut named =
        format!("/proc/self/fd/{}/", std::os::fd::AsRawFd::as_raw_fd(&dir)).into_bytes();
    named.extend_from_slice(name.as_bytes());
    let named = CString::new(named)?;
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::umount2(named.as_ptr(), flags | libc::UMOUNT_NOFOLLOW) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Detaches the topmost mount at `path` if `wanted` says so of the mounts
/// there (bottom first), and only that mount, as [`unmount_exactly`] does;
/// returns whether it detached one. For a daemon replacing what a dead
/// predecessor left: it must not detach whatever a link swapped in above
/// the mount point would reach instead.
pub fn detach_top(path: &Path, wanted: impl Fn(&[MountEntry]) -> bool) -> Result<bool> {
    let at = mounts_at(path)?;
    let Some(top) = at.last().filter(|_| wanted(&at)) else {
        return Ok(false);
    };
    unmount_exactly(path, top, libc::MNT_DETACH)
        .with_context(|| format!("detaching the mount on {}", path.display()))?;
    Ok(true)
}

/// Unmounts a mount the kernel view covers (`--kernel-metadata`): takes
/// the view off (refused while busy unless `lazy`, as any unmount), and its
/// daemon, seeing its FUSE mount on top, unmounts the rest itself within a
/// second. No process is signalled: a runtime record's pid is whatever the
/// daemon that wrote it claims, and a compromised one could name another.
fn unmount_kernel_view(path: &Path, view: &MountEntry, lazy: bool) -> Result<()> {
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    if let Err(e) = unmount_exactly(path, view, flags) {
        if e.raw_os_error() == Some(libc::EBUSY) {
            return Err(busy(path));
        }
        return Err(e).with_context(|| format!("unmounting the kernel view on {}", path.display()));
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        let at = mounts_at(path)?;
        if !at.last().is_some_and(MountEntry::is_nexus) && !kernel_view_on_top(&at) {
            return Ok(());
        }
        // A daemon that died with its keeper (both killed) stops nothing:
        // its FUSE mount answers ENOTCONN, and is unmounted here, as a dead
        // daemon's mount without a view is.
        if let Some(fuse) = at.last().filter(|m| m.is_nexus())
            && std::fs::metadata(path).is_err_and(|e| e.raw_os_error() == Some(libc::ENOTCONN))
        {
            unmount_exactly(path, fuse, libc::MNT_DETACH).with_context(|| {
                format!("unmounting the dead daemon's mount on {}", path.display())
            })?;
            continue;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    bail!(
        "the daemon serving {} did not unmount it within 10 s of its kernel view going",
        path.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_are_parsed_and_unescaped() {
        let text = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
98 22 0:52 / /tmp/with\\040space rw,nosuid,nodev,relatime shared:51 - fuse nexus ro,user_id=0,group_id=0
99 22 0:53 / /home/u/Programs rw,nosuid master:3 - fuse.nexus nexus rw,user_id=1000
100 22 0:54 / /mnt/other rw - fuse.sshfs host:/x rw
101 22 0:55 / /Programs ro,nosuid master:3 - fuse.nexus /var/lib/nexus ro,allow_other
102 22 0:56 / /System/Index ro master:3 - fuse.nexus-index /var/lib/nexus ro,allow_other
";
        let mounts = parse_mountinfo(text);
        assert_eq!(mounts.len(), 6);
        assert!(
            mounts[4].is_nexus(),
            "typed fuse.nexus, the store as source"
        );
        assert_eq!(mounts[4].source, "/var/lib/nexus");
        assert!(mounts[5].is_nexus(), "the Index");
        assert_eq!(mounts[1].mount_point, Path::new("/tmp/with space"));
        assert_eq!(mounts[1].fs_type, "fuse");
        assert!(mounts[1].is_nexus());
        assert!(mounts[2].is_nexus(), "mounted through fusermount");
        assert!(!mounts[3].is_nexus());
        assert!(!mounts[0].is_nexus());
    }

    #[test]
    fn a_kernel_view_is_known_by_what_it_covers() {
        let text = "\
101 22 0:55 / /Programs ro,nosuid master:3 - fuse.nexus /var/lib/nexus ro,allow_other
102 22 0:56 / /System/Index ro master:3 - fuse.nexus-index /var/lib/nexus ro,allow_other
103 101 0:57 / /Programs ro - overlay nexus-kernel-view ro,lowerdir+=/
104 102 7:0 / /System/Index ro - erofs /proc/self/fd/5 ro
105 22 7:1 / /mnt/img ro - erofs /dev/loop1 ro
106 22 0:58 / /mnt/ovl ro - overlay overlay ro
";
        let mounts = parse_mountinfo(text);
        let at = |p: &str| -> Vec<MountEntry> {
            mounts
                .iter()
                .filter(|m| m.mount_point == Path::new(p))
                .cloned()
                .collect()
        };
        assert!(kernel_view_on_top(&at("/Programs")));
        assert!(
            kernel_view_on_top(&at("/System/Index")),
            "EROFS on an Index"
        );
        assert!(
            !kernel_view_on_top(&at("/mnt/img")),
            "EROFS on no nexus mount"
        );
        assert!(
            !kernel_view_on_top(&at("/mnt/ovl")),
            "someone else's overlay"
        );
        assert!(!kernel_view_on_top(&at("/Programs")[..1]), "FUSE alone");
        assert!(!kernel_view_on_top(&at("/nowhere")));
    }

    /// The mount table read, a directory above the mount point renamed and
    /// a link to another mount put in its place: root unmounts neither
    /// (the path reaches another mount), and the mount read is unmounted
    /// where it now is.
    #[test]
    fn a_link_swapped_in_above_the_mount_point_unmounts_nothing_else() {
        if !crate::root_or_skip("mounting") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let tmpfs = |at: &Path| {
            std::fs::create_dir_all(at).unwrap();
            let ok = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "nexus-test"])
                .arg(at)
                .status()
                .unwrap()
                .success();
            assert!(ok, "mounting a tmpfs on {}", at.display());
        };
        tmpfs(&a.join("mnt"));
        tmpfs(&b.join("mnt"));
        let read = find_mount(&a.join("mnt")).unwrap().unwrap();
        std::fs::rename(&a, dir.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(&b, &a).unwrap();
        let err = unmount_exactly(&a.join("mnt"), &read, 0).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ESTALE));
        let theirs = find_mount(&b.join("mnt")).unwrap();
        assert!(theirs.is_some(), "the other mount was unmounted");
        // The one read, where it is now: unmounted.
        let moved = dir.path().join("moved/mnt");
        unmount_exactly(&moved, &read, 0).unwrap();
        assert!(find_mount(&moved).unwrap().is_none());
        unmount_exactly(&b.join("mnt"), &theirs.unwrap(), 0).unwrap();
    }

    /// `detach_top` detaches the topmost mount at a path, and only when
    /// asked of what is there: the mount beneath stays.
    #[test]
    fn detach_top_takes_off_only_the_wanted_topmost_mount() {
        if !crate::root_or_skip("mounting") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let point = dir.path().join("mnt");
        std::fs::create_dir_all(&point).unwrap();
        for _ in 0..2 {
            let ok = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "nexus-test"])
                .arg(&point)
                .status()
                .unwrap()
                .success();
            assert!(ok, "mounting a tmpfs on {}", point.display());
        }
        let stacked = |at: &[MountEntry]| at.len() == 2;
        assert_eq!(mounts_at(&point).unwrap().len(), 2);
        assert!(!detach_top(&point, |_| false).unwrap());
        assert_eq!(mounts_at(&point).unwrap().len(), 2, "detached unasked");
        let bottom = mounts_at(&point).unwrap()[0].id;
        assert!(detach_top(&point, stacked).unwrap());
        let left = mounts_at(&point).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].id, bottom, "the mount beneath was detached");
        assert!(!detach_top(&point, stacked).unwrap());
        assert!(detach_top(&point, |_| true).unwrap());
        assert!(mounts_at(&point).unwrap().is_empty());
    }

    #[test]
    fn unescape_keeps_what_is_not_an_escape() {
        assert_eq!(unescape("a\\040b"), b"a b");
        assert_eq!(unescape("tab\\011x"), b"tab\tx");
        assert_eq!(unescape("back\\slash"), b"back\\slash");
        assert_eq!(unescape("end\\04"), b"end\\04");
    }
}
