//! Turning view answers into `fuser` replies, for both FUSE file systems
//! (the `/Programs` tree and the Index).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileType, Generation, INodeNo, ReplyDirectory, ReplyDirectoryPlus, ReplyOpen,
    ReplyXattr,
};

use crate::attr::{Attr, Entry, Kind, Listing};
use crate::error::ViewError;

fn time(secs: i64) -> SystemTime {
    let offset = Duration::from_secs(secs.unsigned_abs());
    let t = if secs >= 0 {
        UNIX_EPOCH.checked_add(offset)
    } else {
        UNIX_EPOCH.checked_sub(offset)
    };
    t.unwrap_or(UNIX_EPOCH)
}

/// Answers a READDIR from a directory listing, resuming after `offset`
/// (an entry's offset is that of the next one) until the reply is full.
pub(super) fn fill_dir(
    listing: &Listing,
    offset: u64,
    node: impl Fn(u64) -> INodeNo,
    mut reply: ReplyDirectory,
) {
    for (i, e) in listing.entries.iter().enumerate().skip(offset as usize) {
        let name = OsStr::from_bytes(&e.name);
        if reply.add(node(e.attr.ino), i as u64 + 1, file_type(e.attr.kind), name) {
            break;
        }
    }
    reply.ok();
}

/// Answers a READDIRPLUS like [`fill_dir`], with each entry's attributes,
/// the lifetime `ttl` gives it and the inode generation `generation`;
/// `sent` hears of every entry the kernel now holds a lookup of (all but
/// `.` and `..`).
pub(super) fn fill_dir_plus(
    listing: &Listing,
    offset: u64,
    node: impl Fn(u64) -> INodeNo,
    ttl: impl Fn(&Entry) -> Duration,
    generation: Generation,
    mut sent: impl FnMut(&Entry),
    mut reply: ReplyDirectoryPlus,
) {
    for (i, e) in listing.entries.iter().enumerate().skip(offset as usize) {
        let name = OsStr::from_bytes(&e.name);
        let attr = file_attr(&e.attr);
        if reply.add(
            node(e.attr.ino),
            i as u64 + 1,
            name,
            &ttl(e),
            &attr,
            generation,
        ) {
            break;
        }
        if e.name != b"." && e.name != b".." {
            sent(e);
        }
    }
    reply.ok();
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::Dir => FileType::Directory,
        Kind::File => FileType::RegularFile,
        Kind::Symlink => FileType::Symlink,
    }
}

/// FUSE's attributes for view attributes `a`.
pub(super) fn file_attr(a: &Attr) -> FileAttr {
    let t = time(a.mtime);
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: t,
        mtime: t,
        ctime: t,
        crtime: t,
        kind: file_type(a.kind),
        perm: (a.perm & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

/// The errno for a failed view call; damage and inconsistencies are logged.
pub(super) fn errno(op: &str, ino: INodeNo, e: &ViewError) -> Errno {
    if e.is_serious() {
        tracing::error!("{op} of inode {}: {e}", ino.0);
    } else {
        tracing::debug!("{op} of inode {}: {e}", ino.0);
    }
    Errno::from_i32(e.errno())
}

/// Answers an OPENDIR of `ino`, whose attributes are `attr`: `ENOSYS` for
/// a directory. The kernel then opens directories without asking (no
/// OPENDIR or RELEASEDIR round trips) and keeps every listing it has read
/// in its page cache (FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR is its default in
/// that mode): listings are read by inode, and a generation change that
/// changes one invalidates it.
pub(super) fn reply_opendir(
    op: &str,
    ino: INodeNo,
    attr: Result<Attr, ViewError>,
    reply: ReplyOpen,
) {
    match attr {
        Ok(attr) if attr.kind == Kind::Dir => reply.error(Errno::from_i32(libc::ENOSYS)),
        Ok(_) => reply.error(Errno::from_i32(libc::ENOTDIR)),
        Err(e) => reply.error(errno(op, ino, &e)),
    }
}

/// Answers a size probe (`size == 0`) or the data of an xattr request.
pub(super) fn reply_xattr(reply: ReplyXattr, size: u32, data: &[u8]) {
    if size == 0 {
        reply.size(u32::try_from(data.len()).unwrap_or(u32::MAX));
    } else if data.len() > size as usize {
        reply.error(Errno::from_i32(libc::ERANGE));
    } else {
        reply.data(data);
    }
}
