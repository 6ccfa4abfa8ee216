//! `nexus mount --kernel-metadata`: the kernel view (see
//! [`nexus_fs::kernel_view`]) stacked on the daemon's own mounts.
//!
//! The FUSE mounts stay where they are; on top of each, at the same path,
//! the kernel serves the generation from an EROFS image: the main mount
//! gets an overlayfs of its image over the FUSE mount below (the data-only
//! layer, reached through a descriptor opened before anything covered it),
//! the Index its image as it is. A new generation is shown by mounting the
//! new stack *beneath* the old one (`MOVE_MOUNT_BENEATH`) and detaching the
//! old: the path never shows anything but a whole generation, and programs
//! that hold files of the old one keep them.
//!
//! Mounting is what a confined daemon cannot do, so [`show`] runs in the
//! keeper (or, unconfined, in the daemon): it takes only prepared paths and
//! descriptors and makes system calls, nothing else, as code between `fork`
//! and `_exit` must. The daemon writes the images (under `STORE/run`, which
//! it may write), asks, and removes the files: each mount holds its own.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use nexus_fs::follow::Follower;
use nexus_fs::{Changes, Index, View};
use nexus_store::runtime::RuntimeRoot;
use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, UnmountFlags, fsconfig_create,
    fsconfig_set_fd, fsconfig_set_string, fsmount, fsopen, move_mount, unmount,
};

/// overlayfs's `f_type`.
const OVERLAYFS_MAGIC: i64 = 0x794c_7630;
/// EROFS's `f_type`.
const EROFS_MAGIC: i64 = 0xe0f5_e1e2;

/// One path the kernel view covers: where, and the image shown there.
#[derive(Debug, Clone)]
pub(super) struct Layer {
    /// The mount point (the FUSE mount's).
    pub path: CString,
    /// The image file (under `STORE/run`).
    pub image: CString,
    /// The Index's only (the main view's removal is known by the FUSE
    /// root, `data`): the device number of the FUSE mount the view covers
    /// there, if the mount table names it. On top again, the view was
    /// unmounted from outside.
    pub fuse: Option<(u32, u32)>,
    /// The unique mount id of the kernel view on top at `path` when the
    /// plan was made (a predecessor's, after a takeover or a restart), as
    /// [`predecessor_view`] found it; `None` when none was.
    pub predecessor: Option<u64>,
}

/// Everything [`show`] and [`remove`] need, prepared before any fork.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    /// The main mount: an overlayfs of its image over the FUSE mount.
    pub main: Layer,
    /// The Index, if mounted: its image alone.
    pub index: Option<Layer>,
    /// Let setuid and setgid bits count (as the FUSE mount does).
    pub suid: bool,
    /// The user the images are written by (the daemon's, confined or
    /// not): an image file of anyone else is refused.
    pub image_owner: u32,
    /// Where the images are written (`STORE/run`): the copies mounted are
    /// made there, unnamed.
    pub image_dir: CString,
    /// The store's decoded copies (`STORE/decoded`), stacked as the first
    /// data-only layer: the images redirect files with a copy there.
    pub decoded: Option<CString>,
}

/// The files of a daemon's kernel view:
/// `STORE/kernel-view/PID/{main,index}.erofs`.
#[derive(Debug, Clone)]
pub(super) struct Files {
    /// The main image.
    pub main: PathBuf,
    /// The Index's image.
    pub index: PathBuf,
    /// The store's decoded copies, if the view reads from them.
    pub decoded: Option<PathBuf>,
}

impl Files {
    /// The image paths in `dir`, this daemon's own ([`image_dir`]);
    /// `decoded`: the store's decoded copies ([`decoded_dir`]).
    pub fn new(dir: &Path, decoded: Option<PathBuf>) -> Files {
        Files {
            main: dir.join("main.erofs"),
            index: dir.join("index.erofs"),
            decoded,
        }
    }

    /// The plan for a daemon with its main mount on `mountpoint` and the
    /// Index, if any, on `index` (both mounted already).
    pub fn plan(&self, mountpoint: &Path, index: Option<&Path>, suid: bool) -> Result<Plan> {
        let index = index
            .map(|dir| {
                Ok::<_, anyhow::Error>(Layer {
                    path: cstring(dir)?,
                    image: cstring(&self.index)?,
                    // Beneath a predecessor's view when taking over.
                    fuse: super::mounts::find_served_mount(dir)?.and_then(|m| m.dev),
                    predecessor: predecessor_view(dir)?,
                })
            })
            .transpose()?;
        Ok(Plan {
            main: Layer {
                path: cstring(mountpoint)?,
                image: cstring(&self.main)?,
                fuse: None,
                predecessor: predecessor_view(mountpoint)?,
            },
            index,
            suid,
            image_owner: rustix::process::geteuid().as_raw(),
            image_dir: cstring(self.main.parent().unwrap_or(Path::new("/")))?,
            decoded: self.decoded.as_deref().map(cstring).transpose()?,
        })
    }

    /// Removes the image files (the mounts keep what they opened).
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.main);
        let _ = std::fs::remove_file(&self.index);
    }
}

/// The unique mount id of the kernel view on top at `path` as a daemon
/// starts there (a predecessor's, after a takeover or a restart), so that
/// its keeper replaces that view and no other mount. The mount the path
/// reaches must be one the mount table lists at the path itself (found by
/// its id), and a kernel view there: a link swapped into a directory above
/// the mount point moves the view's line to where the directory went, so
/// it cannot make another mount (a container's root) pass for the view.
/// The line is found by the id, not taken as the last one at the path: a
/// switch cut short between placing the new view beneath and detaching
/// the old one lists the new one after the old, which is still on top.
/// `None` when no view is on top.
pub(super) fn predecessor_view(path: &Path) -> Result<Option<u64>> {
    use super::mounts::{MountEntry, kernel_view_on_top, mounts_at};
    let at = mounts_at(path)?;
    let view_kind = |m: &MountEntry| m.is_kernel_view() || m.fs_type == "erofs";
    if !at.iter().any(view_kind) {
        return Ok(None);
    }
    let (legacy, unique) = open_dir(&cstring(path)?)
        .and_then(|fd| {
            Ok((
                legacy_mount_id(fd.as_fd())?,
                unique_mount_id(fd.as_fd(), c"")?,
            ))
        })
        .map_err(std::io::Error::from_raw_os_error)
        .with_context(|| format!("examining the kernel view on {}", path.display()))?;
    let Some(reached) = at.iter().position(|m| m.id == Some(legacy)) else {
        anyhow::bail!(
            "{} reaches another mount than the mount table lists there \
             (a directory above it replaced by a link?)",
            path.display()
        );
    };
    Ok(unique.filter(|_| kernel_view_on_top(&at[..=reached])))
}

/// The id `fd`'s mount has in the mount table (`STATX_MNT_ID`, reused once
/// the mount is gone), read without asking a file system server.
fn legacy_mount_id(fd: BorrowedFd) -> Result<u64, Errno> {
    use rustix::fs::{AtFlags, StatxFlags};
    let flags = AtFlags::EMPTY_PATH | AtFlags::STATX_DONT_SYNC | AtFlags::SYMLINK_NOFOLLOW;
    let st = rustix::fs::statx(fd, c"", flags, StatxFlags::MNT_ID).map_err(errno)?;
    if st.stx_mask & StatxFlags::MNT_ID.bits() == 0 {
        return Err(libc::ENOSYS);
    }
    Ok(st.stx_mnt_id)
}

/// The directory of the kernel views' images, `STORE/kernel-view`, made
/// if missing. Each mount daemon writes its images in a directory of its
/// own below it, which its Landlock rules alone grant: the keeper mounts
/// what it finds there as root for every user, and every daemon of the
/// store runs as the same sandbox user, so a directory they share (as
/// `STORE/run` is) would let any of them (a virtio-fs daemon a guest took
/// over) plant the image another's keeper mounts.
pub(crate) fn images_root(store: &Path) -> Result<PathBuf> {
    let dir = store.join(IMAGES_DIR);
    make_private_dir(&dir)?;
    Ok(dir)
}

/// Where the kernel views' images are written, in the store.
pub(crate) const IMAGES_DIR: &str = "kernel-view";

/// This daemon's image directory, `STORE/kernel-view/PID`, made empty;
/// those of daemons no longer running are removed first.
pub(super) fn image_dir(store: &Path) -> Result<PathBuf> {
    let root = images_root(store)?;
    if let Ok(entries) = std::fs::read_dir(&root) {
        for entry in entries.flatten() {
            let alive = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
            if !alive {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let dir = root.join(std::process::id().to_string());
    // Never reused as it is: what a dead daemon of this pid left there is
    // not this one's.
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("emptying {}", dir.display())),
    }
    make_private_dir(&dir)?;
    Ok(dir)
}

fn make_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            if std::fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
                Ok(())
            } else {
                anyhow::bail!("{} is not a directory", dir.display())
            }
        }
        Err(e) => Err(e).with_context(|| format!("creating {}", dir.display())),
    }
}

/// `STORE/decoded` (root's `nip decode` writes it; daemons only read it),
/// made if missing so that the kernel view always stacks it: a copy
/// written later is used from the next image on. `None`, logged, if it
/// cannot be made.
pub(super) fn decoded_dir(store: &Path) -> Option<PathBuf> {
    nexus_store::decoded::ensure_dir(store)
        .inspect_err(|e| tracing::warn!("the kernel view reads no decoded copies: {e}"))
        .ok()
}

fn cstring(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_encoded_bytes())
        .with_context(|| format!("{} has a NUL byte", path.display()))
}

/// The FUSE mount's root, for overlayfs's data-only layer: opened while
/// nothing covers it.
pub(super) fn open_data(mountpoint: &Path) -> Result<OwnedFd> {
    rustix::fs::open(
        mountpoint,
        rustix::fs::OFlags::PATH
            | rustix::fs::OFlags::DIRECTORY
            | rustix::fs::OFlags::NOFOLLOW
            | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .with_context(|| format!("opening the mount {}", mountpoint.display()))
}

/// `root`, a descriptor taken as the FUSE mount's root beneath the kernel
/// view on `mountpoint` (handed over by systemd's descriptor store or by
/// the daemon a takeover replaces, or opened by path at a fresh mount), if
/// it is that: the root directory, inode number 1, of a mount of the nexus
/// FUSE file system at `mountpoint`. Anything else is refused: a
/// compromised daemon could have stored a descriptor of a directory of its
/// choosing, and a link swapped into a directory above the mount point
/// could have the path reach one, which overlayfs would then read every
/// file's contents from. Asked without a request to the FUSE mount, which
/// nothing serves yet.
pub(super) fn checked_root(root: OwnedFd, mountpoint: &Path) -> Result<OwnedFd> {
    use rustix::fs::{AtFlags, StatxAttributes, StatxFlags};
    let served = super::mounts::find_served_mount(mountpoint)?
        .filter(|m| m.is_nexus())
        .and_then(|m| m.dev)
        .ok_or_else(|| anyhow::anyhow!("no nexus mount on {}", mountpoint.display()))?;
    let st = rustix::fs::statx(
        &root,
        c"",
        AtFlags::EMPTY_PATH | AtFlags::STATX_DONT_SYNC,
        StatxFlags::TYPE | StatxFlags::INO,
    )
    .context("examining the descriptor of the mount's root")?;
    let is_root = st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT)
        && st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT)
        && st.stx_ino == nexus_fs::ino::ROOT
        && rustix::fs::FileType::from_raw_mode(u32::from(st.stx_mode))
            == rustix::fs::FileType::Directory
        && (st.stx_dev_major, st.stx_dev_minor) == served;
    if !is_root {
        anyhow::bail!(
            "the directory taken as the root of the mount on {} is not its root \
             (device {}:{}, inode {}); refused",
            mountpoint.display(),
            st.stx_dev_major,
            st.stx_dev_minor,
            st.stx_ino
        );
    }
    Ok(root)
}

/// Errno of a failed step.
type Errno = i32;

fn errno(e: rustix::io::Errno) -> Errno {
    e.raw_os_error()
}

/// `/proc/self/fd/N`, NUL-terminated, formatted on the stack (no
/// allocation: this runs in the keeper).
struct FdPath {
    buf: [u8; 32],
}

impl FdPath {
    fn new(fd: std::os::fd::RawFd) -> FdPath {
        const PREFIX: &[u8] = b"/proc/self/fd/";
        let mut buf = [0u8; 32];
        buf[..PREFIX.len()].copy_from_slice(PREFIX);
        let mut digits = [0u8; 10];
        let (mut n, mut len) = (fd.unsigned_abs(), 0);
        loop {
            digits[len] = b'0' + (n % 10) as u8;
            len += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for (i, d) in digits[..len].iter().rev().enumerate() {
            buf[PREFIX.len() + i] = *d;
        }
        FdPath { buf }
    }

    fn as_cstr(&self) -> &CStr {
        // The buffer always holds a NUL after the digits.
        CStr::from_bytes_until_nul(&self.buf).unwrap_or(c"/")
    }
}

/// The largest image the keeper copies and mounts: far above any store's
/// (about 270 bytes an inode: 25 MB for 94,000).
const MAX_IMAGE: i64 = 1 << 30;

/// A detached mount of the EROFS image `image` (file-backed: no loop
/// device). The image is opened here, without following a link, and must
/// be a regular file of `owner` with one name, so that a link or another
/// file planted at the path (by a compromised daemon, which writes there)
/// is never read. What is mounted is a copy of it, made unnamed in `dir`:
/// the writer can still change its own file, and the kernel's parser must
/// not see the image change under it.
fn mount_image(image: &CStr, owner: u32, dir: &CStr, main: bool) -> Result<OwnedFd, Errno> {
    use rustix::fs::{FileType, Mode, OFlags};
    // `openat`, not `open`: the keeper's filter allows the former only.
    let file = rustix::fs::openat(
        rustix::fs::CWD,
        image,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno)?;
    let stat = rustix::fs::fstat(&file).map_err(errno)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile
        || stat.st_uid != owner
        || stat.st_nlink != 1
    {
        return Err(libc::EPERM);
    }
    // The copy is root's: a daemon's image must not fill the disk with it
    // (a sparse file costs the daemon nothing).
    if stat.st_size > MAX_IMAGE {
        return Err(libc::EFBIG);
    }
    let copy = rustix::fs::openat(
        rustix::fs::CWD,
        dir,
        OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(errno)?;
    // The writer can still grow its file after the size was checked: no
    // more than the size checked is copied.
    copy_all(&file, &copy, u64::try_from(stat.st_size).unwrap_or(0))?;
    drop(file);
    let source = FdPath::new(std::os::fd::AsRawFd::as_raw_fd(&copy));
    let fs = fsopen(c"erofs", FsOpenFlags::FSOPEN_CLOEXEC).map_err(errno)?;
    fsconfig_set_string(&fs, c"source", source.as_cstr()).map_err(errno)?;
    fsconfig_create(&fs).map_err(errno)?;
    // Never setuid from an image: the main one is only the overlay's lower
    // layer (whose own flags count), the Index's is shown as it is and
    // holds directories and links only.
    let mut attrs = MountAttrFlags::MOUNT_ATTR_RDONLY
        | MountAttrFlags::MOUNT_ATTR_NODEV
        | MountAttrFlags::MOUNT_ATTR_NOSUID;
    if !main {
        attrs |= MountAttrFlags::MOUNT_ATTR_NOEXEC;
    }
    fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs).map_err(errno)
}

/// A directory, for a layer or a mount point: opened `O_PATH` without
/// following a link at its end (at a mount point, the top mount's root).
fn open_dir(path: &CStr) -> Result<OwnedFd, Errno> {
    use rustix::fs::{Mode, OFlags};
    rustix::fs::openat(
        rustix::fs::CWD,
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno)
}

/// Copies `from` to `to` (read and write only, as the keeper's filter
/// allows; no allocation); `EFBIG` if `from` holds more than `limit`
/// bytes, which are then not all written.
fn copy_all(from: &OwnedFd, to: &OwnedFd, limit: u64) -> Result<(), Errno> {
    let mut buf = [0u8; 64 * 1024];
    let mut copied: u64 = 0;
    loop {
        let n = match rustix::io::read(from, &mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(errno(e)),
        };
        copied += n as u64;
        if copied > limit {
            return Err(libc::EFBIG);
        }
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            match rustix::io::write(to, rest) {
                Ok(0) => return Err(libc::EIO),
                Ok(w) => rest = &rest[w..],
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(errno(e)),
            }
        }
    }
}

/// A detached overlayfs of the mounted image `meta` over the data-only
/// layers `decoded` (the decoded copies, if any: searched first) and
/// `data` (the FUSE mount).
fn overlay(
    meta: BorrowedFd,
    decoded: Option<BorrowedFd>,
    data: BorrowedFd,
    suid: bool,
) -> Result<OwnedFd, Errno> {
    let fs = fsopen(c"overlay", FsOpenFlags::FSOPEN_CLOEXEC).map_err(errno)?;
    // What `nexus umount` and `findmnt` recognise it by
    // (`mounts::KERNEL_VIEW_SOURCE`).
    fsconfig_set_string(&fs, c"source", c"nexus-kernel-view").map_err(errno)?;
    fsconfig_set_fd(&fs, c"lowerdir+", meta).map_err(errno)?;
    if let Some(decoded) = decoded {
        fsconfig_set_fd(&fs, c"datadir+", decoded).map_err(errno)?;
    }
    fsconfig_set_fd(&fs, c"datadir+", data).map_err(errno)?;
    // Metacopy files with absolute redirects into the data-only layer.
    fsconfig_set_string(&fs, c"metacopy", c"on").map_err(errno)?;
    fsconfig_set_string(&fs, c"redirect_dir", c"follow").map_err(errno)?;
    fsconfig_create(&fs).map_err(errno)?;
    let mut attrs = MountAttrFlags::MOUNT_ATTR_RDONLY | MountAttrFlags::MOUNT_ATTR_NODEV;
    if !suid {
        attrs |= MountAttrFlags::MOUNT_ATTR_NOSUID;
    }
    fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs).map_err(errno)
}

/// Whether a kernel view of ours is on top at `layer.path` (rather than the
/// FUSE mount): a mount of its kind, mounted there (a directory that is no
/// mount point, on a root file system of that kind, is not one).
fn covered(layer: &Layer, main: bool) -> Result<bool, Errno> {
    let at = open_dir(&layer.path)?;
    let kind = rustix::fs::fstatfs(&at).map_err(errno)?.f_type;
    Ok(kind == if main { OVERLAYFS_MAGIC } else { EROFS_MAGIC } && mount_point(at.as_fd())?)
}

/// Whether something is mounted at the directory `at`: the mount it
/// reaches is not the one its parent directory is on (`..` of a mount's
/// root is the parent of the mount point, below).
fn mount_point(at: BorrowedFd) -> Result<bool, Errno> {
    let here = unique_mount_id(at, c"")?;
    let above = unique_mount_id(at, c"..")?;
    // Without unique ids (before Linux 6.8) the kind alone decides.
    Ok(here.is_none() || here != above)
}

/// The device number of what is on top at `path` (relative to `dir`
/// unless absolute; `c""` for `dir` itself), asked without a request to a
/// file system server (`AT_STATX_DONT_SYNC`).
fn top_device(dir: BorrowedFd, path: &CStr) -> Result<(u32, u32), Errno> {
    use rustix::fs::{AtFlags, StatxFlags};
    let mut flags = AtFlags::STATX_DONT_SYNC | AtFlags::SYMLINK_NOFOLLOW | AtFlags::NO_AUTOMOUNT;
    if path.is_empty() {
        flags |= AtFlags::EMPTY_PATH;
    }
    let top = rustix::fs::statx(dir, path, flags, StatxFlags::TYPE).map_err(errno)?;
    Ok((top.stx_dev_major, top.stx_dev_minor))
}

/// Whether the Index is still where `layer` shows it: under a kernel view,
/// or its FUSE mount uncovered. Neither once it was unmounted from outside
/// (umount(8) of both): a new image there would stand on a bare directory.
fn index_mounted(layer: &Layer) -> bool {
    covered(layer, false).unwrap_or(false)
        || layer
            .fuse
            .is_some_and(|fuse| top_device(rustix::fs::CWD, &layer.path) == Ok(fuse))
}

/// Puts the detached mount `mnt` on `layer.path`: beneath the kernel view
/// shown there, which is then detached, or on top of the FUSE mount
/// (`fuse_id`: the main FUSE mount's unique id, if known; the Index's is
/// known by its device, `layer.fuse`).
///
/// The path is resolved once; what it reaches must be the view this
/// process showed there last (if none, the predecessor's view its plan
/// found there), or the FUSE mount, else nothing is done
/// (`ESTALE`): a link swapped into a directory above the mount point
/// must not have root place a view, or detach a mount, elsewhere. Every
/// later step works on the descriptor it reached.
fn place(mnt: BorrowedFd, layer: &Layer, main: bool, fuse_id: Option<u64>) -> Result<(), Errno> {
    let at = open_dir(&layer.path)?;
    let kind = rustix::fs::fstatfs(&at).map_err(errno)?.f_type;
    let stacked = kind == if main { OVERLAYFS_MAGIC } else { EROFS_MAGIC };
    let ours = if stacked {
        our_view(layer, main, at.as_fd())
    } else if main {
        fuse_id.is_none_or(|id| unique_mount_id(at.as_fd(), c"") == Ok(Some(id)))
    } else {
        layer
            .fuse
            .is_some_and(|fuse| top_device(at.as_fd(), c"") == Ok(fuse))
    };
    if !ours {
        return Err(libc::ESTALE);
    }
    let mut flags =
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH;
    if stacked {
        flags |= MoveMountFlags::MOVE_MOUNT_BENEATH;
    }
    move_mount(mnt, c"", &at, c"", flags).map_err(errno)?;
    if stacked {
        // The view `at` is the root of, through the descriptor's own
        // link: no name is looked up again.
        let path = FdPath::new(std::os::fd::AsRawFd::as_raw_fd(&at));
        unmount(path.as_cstr(), UnmountFlags::DETACH).map_err(errno)?;
    }
    Ok(())
}

/// Whether `at`, the mount the path of `layer` reached, is our view there:
/// the one this process showed last, else the predecessor's its plan found
/// on top when it started. Known by unique id, never by kind, so that
/// another mount a link leads to is never taken for it (kernel views need
/// Linux 6.12, which has unique ids).
fn our_view(layer: &Layer, main: bool, at: BorrowedFd) -> bool {
    let shown = SHOWN[usize::from(!main)].load(std::sync::atomic::Ordering::Relaxed);
    let known = if shown != 0 {
        Some(shown)
    } else {
        layer.predecessor
    };
    known.is_some() && unique_mount_id(at, c"") == Ok(known)
}

/// The unique mount ids (`STATX_MNT_ID_UNIQUE`) of the views this process
/// showed last, the main mount's and the Index's; 0 for none. Only those
/// are ever removed: a daemon shutting down must not detach the view of a
/// daemon mounted at the same path since (`nexus umount` returns once the
/// old mounts are gone from the path, before the old daemon has finished).
static SHOWN: [std::sync::atomic::AtomicU64; 2] = [
    std::sync::atomic::AtomicU64::new(0),
    std::sync::atomic::AtomicU64::new(0),
];

/// The unique mount id (`STATX_MNT_ID_UNIQUE`) of the mount `fd` is the
/// root of, or of the top mount at `path` (relative to `fd` unless
/// absolute; `c""` for `fd` itself), read without asking a file system
/// server (which may be dead, or not serving yet): `Err` (an errno) when
/// it cannot be examined, `Ok(None)` on a kernel older than 6.8.
pub(super) fn unique_mount_id(fd: BorrowedFd, path: &CStr) -> Result<Option<u64>, Errno> {
    mount_identity(fd, path).map(|(_, id)| id)
}

/// The device number of the file system and the unique mount id of the
/// mount `fd` is the root of, or of the top mount at `path`, read
/// together as [`unique_mount_id`] reads the id.
fn mount_identity(fd: BorrowedFd, path: &CStr) -> Result<((u32, u32), Option<u64>), Errno> {
    let mut flags = libc::AT_STATX_DONT_SYNC | libc::AT_SYMLINK_NOFOLLOW | libc::AT_NO_AUTOMOUNT;
    if path.is_empty() {
        flags |= libc::AT_EMPTY_PATH;
    }
    // SAFETY: statx into a zeroed structure on this stack, on a
    // NUL-terminated path and a descriptor we hold.
    unsafe {
        let mut stx: libc::statx = std::mem::zeroed();
        let rc = libc::statx(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            path.as_ptr(),
            flags,
            libc::STATX_TYPE | libc::STATX_MNT_ID_UNIQUE,
            &mut stx,
        );
        if rc != 0 {
            return Err(*libc::__errno_location());
        }
        let id = (stx.stx_mask & libc::STATX_MNT_ID_UNIQUE != 0).then_some(stx.stx_mnt_id);
        Ok(((stx.stx_dev_major, stx.stx_dev_minor), id))
    }
}

/// The unique mount id of the mount `path` reaches, which must be of the
/// file system `dev` (the device the mount table lists at `path`): both
/// are read by one `statx`, so a link swapped into a directory above the
/// mount point between the table's read and this one gives `ESTALE`, never
/// another mount's id for a keeper to unmount later. `Ok(None)` on a
/// kernel older than 6.8.
pub(super) fn unique_id_of_listed(path: &CStr, dev: (u32, u32)) -> Result<Option<u64>, Errno> {
    let (reached, id) = mount_identity(rustix::fs::CWD, path)?;
    if reached != dev {
        return Err(libc::ESTALE);
    }
    Ok(id)
}

/// Shows the images the plan names (written beforehand), replacing the
/// kernel view shown, if any; the Index's only `with_index` (its image was
/// written) and while it is mounted. `data` is the FUSE mount's root.
pub(super) fn show(plan: &Plan, data: BorrowedFd, with_index: bool) -> Result<(), Errno> {
    let meta = mount_image(&plan.main.image, plan.image_owner, &plan.image_dir, true)?;
    let decoded = plan.decoded.as_deref().map(open_dir).transpose()?;
    let top = overlay(
        meta.as_fd(),
        decoded.as_ref().map(AsFd::as_fd),
        data,
        plan.suid,
    )?;
    // The index's image is mounted before anything is placed, so that a
    // failure leaves both as they were.
    let index = plan
        .index
        .as_ref()
        .filter(|layer| with_index && index_mounted(layer))
        .map(|layer| {
            mount_image(&layer.image, plan.image_owner, &plan.image_dir, false).map(|m| (m, layer))
        })
        .transpose()?;
    let ordering = std::sync::atomic::Ordering::Relaxed;
    let fuse_id = unique_mount_id(data, c"").ok().flatten();
    place(top.as_fd(), &plan.main, true, fuse_id)?;
    let id = |mnt: &OwnedFd| {
        unique_mount_id(mnt.as_fd(), c"")
            .ok()
            .flatten()
            .unwrap_or(0)
    };
    SHOWN[0].store(id(&top), ordering);
    if let Some((mnt, layer)) = index {
        place(mnt.as_fd(), layer, false, None)?;
        SHOWN[1].store(id(&mnt), ordering);
    }
    Ok(())
}

/// Detaches the kernel view on `layer.path` (`main`: the main mount's
/// overlay; else the Index's image), uncovering the FUSE mount: only the
/// one this process showed last, or, if it showed none, the predecessor's
/// its plan found there, by unique id. The path is resolved once.
pub(super) fn remove(layer: &Layer, main: bool) -> Result<(), Errno> {
    // A path that cannot be examined (the FUSE mount of a dead daemon on
    // top: ENOTCONN) has no view of ours on top: the mount below must
    // still be unmounted.
    let Ok(at) = open_dir(&layer.path) else {
        return Ok(());
    };
    if our_view(layer, main, at.as_fd()) {
        // Through the descriptor: no name is looked up again.
        let path = FdPath::new(std::os::fd::AsRawFd::as_raw_fd(&at));
        unmount(path.as_cstr(), UnmountFlags::DETACH).map_err(errno)?;
    }
    Ok(())
}

/// How the daemon has a kernel view shown: itself, or through the keeper.
pub(super) trait Shower: Send + Sync {
    /// Shows the images written to the plan's paths (the Index's only
    /// `with_index`).
    fn show(&self, with_index: bool) -> std::io::Result<()>;
}

/// The FUSE mount's root, until the mount is unmounted: held, it would
/// keep the mount busy, and alive once detached.
pub(super) type DataRoot = Arc<std::sync::Mutex<Option<OwnedFd>>>;

/// Shows the kernel view from the daemon itself (unconfined).
pub(super) struct Direct {
    /// The plan.
    pub plan: Plan,
    /// The FUSE mount's root.
    pub data: DataRoot,
}

impl Shower for Direct {
    fn show(&self, with_index: bool) -> std::io::Result<()> {
        let data = self.data.lock().unwrap_or_else(|p| p.into_inner());
        match data.as_ref() {
            Some(fd) => {
                show(&self.plan, fd.as_fd(), with_index).map_err(std::io::Error::from_raw_os_error)
            }
            None => Err(std::io::Error::other("the mount is being unmounted")),
        }
    }
}

/// Writes the images of the generation `view` shows (and of `index`, when
/// mounted), each through a temporary file renamed into place; the main
/// image names decoded copies of files of `copies_from` bytes or more.
fn write_images(view: &View, index: Option<&Index>, files: &Files, copies_from: u64) -> Result<()> {
    let decoded = files
        .decoded
        .as_deref()
        .map(|dir| nexus_fs::kernel_view::DecodedCopies {
            dir,
            min_size: copies_from,
        });
    let main = nexus_fs::kernel_view::main_image(view, decoded)
        .context("making the kernel view's image")?;
    write_atomically(&files.main, &main)?;
    if let Some(index) = index {
        let image =
            nexus_fs::kernel_view::index_image(index).context("making the Index's image")?;
        write_atomically(&files.index, &image)?;
    }
    Ok(())
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".kernel-view")
        .tempfile_in(dir)
        .with_context(|| format!("creating an image in {}", dir.display()))?;
    tmp.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The smallest file whose decoded copy the next image may name: the
/// store's threshold (`nip decode`), said in the runtime record `record`
/// before it is read, and read again after, so that a prune, which changes
/// the threshold first and reads the records after, never removes a copy
/// the image names. Until the new image replaces it, the record keeps
/// covering the copies the one shown names (from `decoded_from` up).
fn copies_from(view: &View, record: Option<&RuntimeRoot>) -> Result<u64> {
    let read = || {
        view.decoded_min_size()
            .context("reading the decoded copies' threshold")
    };
    let Some(record) = record else {
        return read();
    };
    let shown = record.served().decoded_from;
    let covering = |threshold: u64| match shown {
        0 => threshold,
        shown => threshold.min(shown),
    };
    let mut said = covering(read()?);
    loop {
        record
            .set_decoded_from(said)
            .context("recording which decoded copies the kernel view may name")?;
        let threshold = read()?;
        if threshold >= said {
            return Ok(threshold);
        }
        // Lowered meanwhile: say the lower one before using it.
        said = covering(threshold);
    }
}

/// Shows the generation the view (and Index) show now; logs what it took.
/// `record`, the daemon's runtime record, says which decoded copies the
/// images shown may name.
pub(super) fn refresh(
    view: &View,
    index: Option<&Index>,
    files: &Files,
    shower: &dyn Shower,
    record: Option<&RuntimeRoot>,
) -> Result<()> {
    let started = Instant::now();
    let copies_from = match files.decoded {
        Some(_) => copies_from(view, record)?,
        None => 0,
    };
    write_images(view, index, files, copies_from)?;
    let written = started.elapsed();
    let shown = shower.show(index.is_some()).context(
        "mounting the kernel view (EROFS file-backed mounts and overlayfs data-only layers \
         need Linux 6.12 or later)",
    );
    // Mounted images stay open in their mounts: nothing is left on disk.
    files.remove();
    // The walk that made the images freed most of what it allocated, in
    // small pieces the allocator keeps unless asked: give them back.
    // SAFETY: malloc_trim only returns free heap memory to the system.
    unsafe { libc::malloc_trim(0) };
    shown?;
    // The image shown before is detached: only the new one's copies are
    // named now.
    if let Some(record) = record
        && let Err(e) = record.set_decoded_from(copies_from)
    {
        tracing::warn!("recording which decoded copies the kernel view names: {e}");
    }
    tracing::info!(
        "kernel view of generation {:?}: images written in {:.0} ms, shown in {:.0} ms",
        view.generation(),
        written.as_secs_f64() * 1e3,
        (started.elapsed() - written).as_secs_f64() * 1e3,
    );
    Ok(())
}

/// How often a daemon checks that its kernel view is still shown.
const REMOVAL_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Stops the daemon, as SIGTERM would, once its kernel view is unmounted
/// from outside (umount(8) of the mount point, which is how systemd stops
/// an fstab mount): the FUSE mount beneath, then on top, would otherwise
/// stay mounted and served. Known by the device at `mountpoint` becoming
/// the FUSE mount's (`data`, its root); asked without a request to the
/// daemon (`AT_STATX_DONT_SYNC`). Switches and takeovers put a view
/// beneath the old one before detaching it, so the FUSE mount never shows
/// in between.
///
/// The Index's view (`index`, its layer) unmounted from outside the same
/// way uncovers the FUSE Index: that one is then unmounted too, the main
/// mount served on, and no image of the Index shown again.
pub(super) fn stop_when_removed(
    mountpoint: &Path,
    data: BorrowedFd,
    index: Option<&Layer>,
    termination: super::signals::Termination,
) -> Result<()> {
    let fuse = rustix::fs::fstat(data).context("examining the FUSE mount's root")?;
    let main = cstring(mountpoint)?;
    let mountpoint = mountpoint.to_path_buf();
    let mut index = index.cloned();
    std::thread::Builder::new()
        .name("view-watch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(REMOVAL_CHECK);
                if let Some(layer) = &index
                    && layer
                        .fuse
                        .is_some_and(|fuse| top_device(rustix::fs::CWD, &layer.path) == Ok(fuse))
                {
                    tracing::info!(
                        "the kernel view of the Index on {} was unmounted from outside: \
                         unmounting the Index",
                        layer.path.to_string_lossy()
                    );
                    termination.unmount_index_now();
                    index = None;
                }
                let Ok((major, minor)) = top_device(rustix::fs::CWD, &main) else {
                    continue;
                };
                if rustix::fs::makedev(major, minor) == fuse.st_dev {
                    tracing::info!(
                        "the kernel view on {} was unmounted from outside",
                        mountpoint.display()
                    );
                    termination.unmount_now();
                    return;
                }
            }
        })
        .context("starting the thread that watches the kernel view")?;
    Ok(())
}

/// The follower that shows each new generation in the kernel view. It must
/// come after the Index's follower, which moves the Index first.
pub(super) struct KernelViewFollower {
    /// The view.
    pub view: Arc<View>,
    /// The Index, when mounted (until it is unmounted).
    pub index: Option<super::index::ServedIndex>,
    /// Where the images go.
    pub files: Files,
    /// Who mounts them.
    pub shower: Arc<dyn Shower>,
    /// The generation shown, for the runtime record.
    pub shown: super::runtime_root::ShownGeneration,
    /// The runtime record, which says which decoded copies are named.
    pub record: Option<Arc<RuntimeRoot>>,
}

impl Follower for KernelViewFollower {
    fn moved(&mut self, _changes: &Changes) {
        match refresh(
            &self.view,
            self.index.as_ref().and_then(|i| i.mounted()),
            &self.files,
            &*self.shower,
            self.record.as_deref(),
        ) {
            Ok(()) => self.shown.store(
                self.view.generation().unwrap_or(-1),
                std::sync::atomic::Ordering::Release,
            ),
            // The previous generation stays shown (and recorded); the FUSE
            // mount below already shows the new one to whoever reaches it.
            Err(e) => {
                tracing::error!("{e:#}: the kernel view still shows the previous generation")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nexus_fs::kernel_view::{Body, Node, Tree, erofs};
    use std::os::unix::fs::PermissionsExt;

    /// The keeper copies no more than the size it checked: a writer that
    /// grows its file afterwards (sparse, at no cost to it) gets EFBIG, not
    /// root's disk.
    #[test]
    fn an_image_grown_after_its_check_is_not_copied_past_it() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("image");
        std::fs::write(&source, vec![7u8; 200_000]).unwrap();
        let open = |path: &Path| {
            OwnedFd::from(
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(path)
                    .unwrap(),
            )
        };
        let (from, to) = (open(&source), open(&dir.path().join("copy")));
        assert_eq!(copy_all(&from, &to, 100_000), Err(libc::EFBIG));
        let copied = std::fs::metadata(dir.path().join("copy")).unwrap().len();
        assert!(copied <= 100_000 + 64 * 1024, "copied {copied} bytes");
        let (from, to) = (open(&source), open(&dir.path().join("copy2")));
        assert_eq!(copy_all(&from, &to, 200_000), Ok(()));
        assert_eq!(
            std::fs::read(dir.path().join("copy2")).unwrap().len(),
            200_000
        );
    }

    /// A valid image of a root directory holding an empty directory `d`,
    /// written by `uid` at `path`.
    fn image_at(path: &Path, uid: u32) {
        let dir = |parent, entries| Node {
            perm: 0o755,
            uid: 0,
            gid: 0,
            mtime: 0,
            nlink: 2,
            xattrs: Vec::new(),
            body: Body::Dir { parent, entries },
        };
        let tree = Tree {
            nodes: vec![dir(0, vec![(b"d".to_vec(), 1)]), dir(0, Vec::new())],
        };
        std::fs::write(path, erofs::write(&tree).unwrap()).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(path, Some(uid), None).unwrap();
    }

    fn c(path: &Path) -> CString {
        cstring(path).unwrap()
    }

    #[test]
    fn fd_paths_name_the_descriptor() {
        for fd in [0, 7, 42, 1_000_000, i32::MAX] {
            assert_eq!(
                FdPath::new(fd).as_cstr().to_str().unwrap(),
                format!("/proc/self/fd/{fd}")
            );
        }
    }

    /// A new, detached tmpfs.
    fn detached_tmpfs() -> OwnedFd {
        let fs = fsopen(c"tmpfs", FsOpenFlags::FSOPEN_CLOEXEC).unwrap();
        fsconfig_create(&fs).unwrap();
        fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::empty()).unwrap()
    }

    /// The unique mount id of the top mount at `path`.
    fn id_at(path: &Path) -> Option<u64> {
        unique_mount_id(rustix::fs::CWD, &c(path)).unwrap()
    }

    /// Two mount points, `a/mnt` and `b/mnt`, in a scratch directory, with
    /// a tmpfs standing for the FUSE mount at `a/mnt`; `a` can be swapped
    /// for a link to `b`, as a local user who may write the scratch
    /// directory would.
    struct LinkAbove {
        dir: tempfile::TempDir,
        a: PathBuf,
        b: PathBuf,
        /// The FUSE mount's unique id.
        fuse_id: Option<u64>,
    }

    impl LinkAbove {
        fn new() -> LinkAbove {
            let dir = tempfile::tempdir().unwrap();
            let (a, b) = (dir.path().join("a"), dir.path().join("b"));
            for d in [&a, &b] {
                std::fs::create_dir_all(d.join("mnt")).unwrap();
            }
            let fuse = detached_tmpfs();
            move_mount(
                &fuse,
                c"",
                rustix::fs::CWD,
                c(&a.join("mnt")),
                MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
            )
            .unwrap();
            let fuse_id = unique_mount_id(fuse.as_fd(), c"").unwrap();
            LinkAbove { dir, a, b, fuse_id }
        }

        /// The main view's layer on `a/mnt`.
        fn layer(&self, predecessor: Option<u64>) -> Layer {
            Layer {
                path: c(&self.a.join("mnt")),
                image: c(&self.dir.path().join("unused.erofs")),
                fuse: None,
                predecessor,
            }
        }

        /// Moves `a` aside and puts a link to `b` in its place.
        fn swap_in_link(&self) {
            std::fs::rename(&self.a, self.dir.path().join("a-moved")).unwrap();
            std::os::unix::fs::symlink(&self.b, &self.a).unwrap();
        }

        /// Puts `a` back.
        fn restore(&self) {
            std::fs::remove_file(&self.a).unwrap();
            std::fs::rename(self.dir.path().join("a-moved"), &self.a).unwrap();
        }
    }

    /// A link swapped into a directory above the mount point (one a local
    /// user may write) must not have the keeper, as root, place the next
    /// view where the link leads: what the path reaches is neither the
    /// FUSE mount nor the view shown, so nothing is mounted anywhere.
    #[test]
    fn a_view_is_never_placed_where_a_link_above_the_mount_point_leads() {
        if !crate::root_or_skip("mounting") {
            return;
        }
        let fx = LinkAbove::new();
        let layer = fx.layer(None);
        let bare = id_at(&fx.b.join("mnt"));

        fx.swap_in_link();
        let view = detached_tmpfs();
        assert_eq!(
            place(view.as_fd(), &layer, true, fx.fuse_id),
            Err(libc::ESTALE)
        );
        assert_eq!(
            id_at(&fx.b.join("mnt")),
            bare,
            "a view was placed where the link leads"
        );

        // The control: the path reaches the FUSE mount again.
        fx.restore();
        place(view.as_fd(), &layer, true, fx.fuse_id).unwrap();
        assert_eq!(
            id_at(&fx.a.join("mnt")),
            unique_mount_id(view.as_fd(), c"").unwrap()
        );
        for _ in 0..2 {
            unmount(c(&fx.a.join("mnt")), UnmountFlags::DETACH).unwrap();
        }
    }

    /// Mounts a read-only overlayfs with `source` on `at` (two fresh lower
    /// directories in `scratch`).
    fn overlay_at(at: &Path, source: &CStr, scratch: &Path) {
        let (lower, lower2) = (scratch.join("lower"), scratch.join("lower2"));
        for d in [&lower, &lower2] {
            std::fs::create_dir_all(d).unwrap();
        }
        let options =
            CString::new(format!("lowerdir={}:{}", lower.display(), lower2.display())).unwrap();
        // SAFETY: mount(2) of a read-only overlayfs on our own directory.
        let rc = unsafe {
            libc::mount(
                source.as_ptr(),
                c(at).as_ptr(),
                c"overlay".as_ptr(),
                libc::MS_RDONLY,
                options.as_ptr().cast(),
            )
        };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    }

    /// After a takeover, the successor's keeper replaces the predecessor's
    /// view by the id the mount table gave it for the mount point, never
    /// by its kind: a link swapped in above the mount point before the
    /// first switch must not have root place the view beneath another
    /// overlayfs where the link leads (a container's root), nor detach it.
    #[test]
    fn a_predecessors_view_is_replaced_by_its_id_never_by_its_kind() {
        if !crate::root_or_skip("mounting") {
            return;
        }
        // Under the view of the daemon taken over at a/mnt; at b/mnt, an
        // overlayfs that is no view.
        let fx = LinkAbove::new();
        let (a, b) = (fx.a.join("mnt"), fx.b.join("mnt"));
        let source = CString::new(crate::nexus::mounts::KERNEL_VIEW_SOURCE).unwrap();
        overlay_at(&a, &source, fx.dir.path());
        overlay_at(&b, c"overlay", fx.dir.path());
        let old_view = id_at(&a);
        let container = id_at(&b);
        let predecessor = predecessor_view(&a).unwrap();
        assert!(predecessor.is_some());
        assert_eq!(predecessor, old_view);
        let layer = fx.layer(predecessor);

        fx.swap_in_link();
        // A plan made now finds no view at the path: the table lists it
        // where the directory went.
        assert_eq!(predecessor_view(&a).unwrap(), None);
        let view = detached_tmpfs();
        for layer in [&layer, &fx.layer(None)] {
            assert_eq!(
                place(view.as_fd(), layer, true, fx.fuse_id),
                Err(libc::ESTALE)
            );
            assert_eq!(remove(layer, true), Ok(()));
            assert_eq!(
                id_at(&b),
                container,
                "the overlayfs the link leads to was replaced or detached"
            );
        }

        // The control: the path reaches the predecessor's view again; the
        // new view goes beneath it and the old one is detached.
        fx.restore();
        place(view.as_fd(), &layer, true, fx.fuse_id).unwrap();
        assert_eq!(id_at(&a), unique_mount_id(view.as_fd(), c"").unwrap());
        for _ in 0..2 {
            unmount(c(&a), UnmountFlags::DETACH).unwrap();
        }
        unmount(c(&b), UnmountFlags::DETACH).unwrap();
    }

    /// A switch cut short (the keeper killed between placing the new view
    /// beneath the old one and detaching the old) leaves the new view
    /// listed after the old one, which is still on top: a daemon started
    /// then knows the old one, the mount the path reaches, as the view it
    /// replaces, rather than failing every start.
    #[test]
    fn a_switch_cut_short_leaves_the_view_on_top_known() {
        if !crate::root_or_skip("mounting") {
            return;
        }
        let fx = LinkAbove::new();
        let a = fx.a.join("mnt");
        let source = CString::new(crate::nexus::mounts::KERNEL_VIEW_SOURCE).unwrap();
        overlay_at(&a, &source, fx.dir.path());
        let old = id_at(&a);
        let new = detached_tmpfs();
        let at = open_dir(&c(&a)).unwrap();
        move_mount(
            &new,
            c"",
            &at,
            c"",
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH
                | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH
                | MoveMountFlags::MOVE_MOUNT_BENEATH,
        )
        .unwrap();
        drop(at);
        assert_eq!(id_at(&a), old, "the old view is still on top");
        assert!(old.is_some());
        assert_eq!(predecessor_view(&a).unwrap(), old);
        for _ in 0..3 {
            unmount(c(&a), UnmountFlags::DETACH).unwrap();
        }
    }

    /// Mounts a FUSE file system of the nexus type on `at`, served by
    /// nobody (its kernel side answers what is asked without a request to
    /// a server, as the daemon asks of its root before serving); the
    /// `/dev/fuse` descriptor is returned to keep the connection.
    fn unserved_nexus_mount(at: &Path) -> OwnedFd {
        let dev = rustix::fs::open(
            "/dev/fuse",
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        let options = CString::new(format!(
            "fd={},rootmode=40000,user_id=0,group_id=0",
            std::os::fd::AsRawFd::as_raw_fd(&dev)
        ))
        .unwrap();
        // SAFETY: mount(2) of a FUSE file system on our own directory.
        let rc = unsafe {
            libc::mount(
                c"nexus".as_ptr(),
                c(at).as_ptr(),
                c"fuse.nexus".as_ptr(),
                libc::MS_RDONLY | libc::MS_NODEV | libc::MS_NOSUID,
                options.as_ptr().cast(),
            )
        };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        dev
    }

    /// At a fresh mount the daemon opens the FUSE mount's root by path for
    /// the kernel view to read contents through: a link swapped into a
    /// directory above the mount point must not have it take another
    /// directory, which the view would serve every file's bytes from.
    #[test]
    fn a_root_opened_through_a_link_above_the_mount_point_is_refused() {
        if !crate::root_or_skip("mounting") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        for d in [&a, &b] {
            std::fs::create_dir_all(d.join("mnt")).unwrap();
        }
        let _connection = unserved_nexus_mount(&a.join("mnt"));
        let root = open_data(&a.join("mnt")).unwrap();
        assert!(
            checked_root(root, &a.join("mnt")).is_ok(),
            "the mount's own root"
        );

        // b/mnt: a directory of the attacker's, and then a mount of the
        // same kind (another daemon's).
        std::fs::rename(&a, dir.path().join("a-moved")).unwrap();
        std::os::unix::fs::symlink(&b, &a).unwrap();
        let root = open_data(&a.join("mnt")).unwrap();
        assert!(
            checked_root(root, &a.join("mnt")).is_err(),
            "a plain directory"
        );
        let _other = unserved_nexus_mount(&b.join("mnt"));
        let root = open_data(&a.join("mnt")).unwrap();
        let refused = checked_root(root, &a.join("mnt"));
        assert!(refused.is_err(), "another nexus mount's root");

        for at in [dir.path().join("a-moved/mnt"), b.join("mnt")] {
            unmount(c(&at), UnmountFlags::DETACH).unwrap();
        }
    }

    /// The id a keeper later unmounts by is read with the device, which
    /// must be the one the mount table listed at the mount point: a link
    /// swapped in above the mount point in between gives ESTALE, never the
    /// id of the mount the link leads to.
    #[test]
    fn a_mounts_id_is_taken_only_with_the_device_the_table_lists() {
        if !crate::root_or_skip("mounting") {
            return;
        }
        let fx = LinkAbove::new();
        let (a, b) = (fx.a.join("mnt"), fx.b.join("mnt"));
        let listed = nexus_fs::fuse::mount_device(&a).unwrap();
        assert_eq!(unique_id_of_listed(&c(&a), listed), Ok(fx.fuse_id));
        let other = detached_tmpfs();
        move_mount(
            &other,
            c"",
            rustix::fs::CWD,
            c(&b),
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )
        .unwrap();
        fx.swap_in_link();
        // What the path alone names now: the other mount.
        assert_eq!(
            unique_mount_id(rustix::fs::CWD, &c(&a)),
            unique_mount_id(other.as_fd(), c"")
        );
        assert_eq!(unique_id_of_listed(&c(&a), listed), Err(libc::ESTALE));
        fx.restore();
        for at in [&a, &b] {
            unmount(c(at), UnmountFlags::DETACH).unwrap();
        }
    }

    /// A directory of a file system of the view's kind (a host whose root
    /// is overlayfs or EROFS) is not taken for a view shown on it: only a
    /// mount at the path is.
    #[test]
    fn a_bare_directory_on_a_file_system_of_the_views_kind_is_no_view() {
        if !crate::root_or_skip("mounting") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let at = dir.path().join("at");
        for d in [&dir.path().join("lower/sub"), &at] {
            std::fs::create_dir_all(d).unwrap();
        }
        overlay_at(&at, c"overlay", dir.path());
        let layer = |path: &Path| Layer {
            path: c(path),
            image: c(&dir.path().join("unused.erofs")),
            fuse: None,
            predecessor: None,
        };
        assert_eq!(covered(&layer(&at), true), Ok(true));
        assert_eq!(covered(&layer(&at.join("sub")), true), Ok(false));
        unmount(c(&at), UnmountFlags::DETACH).unwrap();
    }

    /// The keeper mounts the daemon's own image and nothing a compromised
    /// daemon could plant at its path: a link to another file system's
    /// image, a second name of someone else's file, a file of another
    /// user, a device or a fifo.
    #[test]
    fn only_the_writers_own_image_is_mounted() {
        if !crate::root_or_skip("mounting") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let writer = 65534;
        let own = dir.path().join("own.erofs");
        image_at(&own, writer);
        let scratch = c(dir.path());
        // The control: the very same bytes, as the writer's own file, mount.
        let mounted = mount_image(&c(&own), writer, &scratch, true);
        assert!(mounted.is_ok(), "the writer's image: {mounted:?}");
        // What is mounted does not change with the writer's file: the
        // kernel parses a copy.
        let len = std::fs::metadata(&own).unwrap().len() as usize;
        std::fs::write(&own, vec![0xa5; len]).unwrap();
        let mnt = mounted.unwrap();
        let lookup = rustix::fs::openat(
            &mnt,
            c"d",
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
            rustix::fs::Mode::empty(),
        );
        assert!(lookup.is_ok(), "the mounted image changed: {lookup:?}");
        drop((lookup, mnt));
        image_at(&own, writer);

        // Someone else's image (root's, not readable by the writer).
        let secret = dir.path().join("secret.erofs");
        image_at(&secret, 0);
        let link = dir.path().join("link.erofs");
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        assert_eq!(
            mount_image(&c(&link), writer, &scratch, true).err(),
            Some(libc::ELOOP)
        );
        // A link to the writer's own image is refused as well: only the
        // file itself names it.
        let own_link = dir.path().join("own-link.erofs");
        std::os::unix::fs::symlink(&own, &own_link).unwrap();
        assert_eq!(
            mount_image(&c(&own_link), writer, &scratch, true).err(),
            Some(libc::ELOOP)
        );
        // A hard link to root's image, chowned by nobody: two names.
        let hard = dir.path().join("hard.erofs");
        std::fs::hard_link(&secret, &hard).unwrap();
        assert_eq!(
            mount_image(&c(&hard), 0, &scratch, true).err(),
            Some(libc::EPERM)
        );
        // Root's image at the path, under the writer's name.
        assert_eq!(
            mount_image(&c(&secret), writer, &scratch, true).err(),
            Some(libc::EPERM)
        );
        // Not regular files.
        assert_eq!(
            mount_image(c"/dev/null", 0, &scratch, true).err(),
            Some(libc::EPERM)
        );
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        std::os::unix::fs::chown(&fifo, Some(writer), None).unwrap();
        assert_eq!(
            mount_image(&c(&fifo), writer, &scratch, true).err(),
            Some(libc::EPERM)
        );
    }
}
