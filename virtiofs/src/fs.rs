//! The file system a guest sees: `fuse-backend-rs`'s [`FileSystem`] over a
//! [`View`], one per guest connection.
//!
//! Like the FUSE adapter (`nexus_fs::fuse`), this only translates: every
//! request becomes one view call, and each answer gets a cache lifetime.
//! What differs is that a guest gets no invalidation messages (the Linux
//! virtio-fs driver has no notification queue), so what a generation switch
//! changes is given a short lifetime ([`GENERATION_TTL`]) instead of a long
//! one plus notifications; [`crate::SWITCH_BOUND`] is the resulting bound.
//!
//! Guests are not trusted. Nothing here trusts a number a guest sends: inode
//! numbers are decoded by the view (unknown ones are `ENOENT`), directory
//! handles are checked against the ones this guest opened (a guest cannot
//! read or close another guest's), their number is capped, reads are clamped
//! to the guest's buffer and [`MAX_READ`], and every request that would
//! write is `EROFS`. Nor is what a guest's requests make the daemon log
//! the guest's to multiply: a refusal is logged at most once a minute per
//! guest (`log_limit`), a wrong guess not at all.

use std::ffi::CStr;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{
    CreateIn, FsOptions, OpenOptions, SetattrValid, stat64, statvfs64,
};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry as FuseEntry, FileSystem, GetxattrReply, ListxattrReply,
    ZeroCopyReader, ZeroCopyWriter,
};
use nexus_fs::handles::{DirHandles, HandleBudget, HandleLimits};
use nexus_fs::lookups::Lookups;
use nexus_fs::{Attr, Entry, Kind, Listing, View, ViewError};

use crate::log_limit::{LOG_EVERY, LogLimit, unlogged};

/// How long a guest may keep what never changes: package entries and
/// attributes (and, through the page cache, file contents).
pub const IMMUTABLE_TTL: Duration = Duration::from_secs(24 * 3600);

/// How long a guest may keep what a generation switch changes: the root,
/// App directories, `Current` links and the names in them. Guests get no
/// invalidations, so this *is* the delay before a guest sees a switch (after
/// the daemon's own, see [`crate::SWITCH_BOUND`]). One second keeps that
/// short while a path walk through `App/Current` still costs the daemon
/// about one lookup per name per second, however many programs a guest runs.
pub const GENERATION_TTL: Duration = Duration::from_secs(1);

/// The most bytes one READ is answered with. The Linux driver asks for at
/// most `max_pages` (256 pages, 1 MiB); a guest asking for more gets a short
/// read, not a buffer of its choosing.
pub const MAX_READ: u32 = 1 << 20;

/// Directory handles one guest may hold open at once; a guest opening more
/// gets `EMFILE`.
pub const MAX_OPEN_DIRS: usize = 4096;

/// Bytes of directory listings one guest's open handles may hold (each
/// handle counts its listing, shared or not); a guest opening more gets
/// `EMFILE`.
pub const MAX_DIR_BYTES_PER_GUEST: u64 = 64 << 20;

/// Bytes of directory listings all guests of one daemon may hold together
/// ([`crate::ServeOptions::dir_bytes`] by default).
pub const MAX_DIR_BYTES: u64 = 512 << 20;

/// A view as one guest sees it.
pub struct GuestFs {
    view: Arc<View>,
    /// The directory handles this guest opened and has not released: the
    /// only ones it may use. Dropped (and their bytes given back to the
    /// daemon's budget) when the guest goes.
    dirs: DirHandles,
    /// The inodes this guest has looked up and not forgotten: their
    /// packages stay readable (see `nexus_fs::lookups`).
    lookups: Arc<Lookups>,
    /// Directory opens refused for this guest's limits: the guest can ask
    /// again and again.
    refused_dirs: LogLimit,
    /// Requests that met damage or an inconsistency: worth an error, but a
    /// guest can repeat a request that meets it as often as it likes.
    damage: LogLimit,
}

impl GuestFs {
    /// Serves `view` to one guest, whose open directories count against
    /// `budget` (shared by every guest of the daemon).
    pub fn new(view: Arc<View>, budget: Arc<HandleBudget>) -> GuestFs {
        let limits = HandleLimits {
            handles: MAX_OPEN_DIRS,
            bytes: MAX_DIR_BYTES_PER_GUEST,
        };
        let lookups = view.new_client();
        GuestFs {
            view,
            dirs: DirHandles::new(limits, Some(budget)),
            lookups,
            refused_dirs: LogLimit::new(LOG_EVERY),
            damage: LogLimit::new(LOG_EVERY),
        }
    }

    /// The listing of directory handle `fh`, if this guest opened it.
    fn listing(&self, fh: u64) -> io::Result<Arc<Listing>> {
        self.dirs
            .get(fh)
            .map_err(|e| self.failed("readdir", fh, &e))
    }

    /// The error the guest gets for a failed view call; damage and
    /// inconsistencies are logged (at most once per [`LOG_EVERY`]), a
    /// guest's wrong guesses are not.
    fn failed(&self, op: &str, ino: u64, e: &ViewError) -> io::Error {
        if e.is_serious() {
            if let Some(n) = self.damage.due() {
                tracing::error!("{op} of inode {ino}: {e}{}", unlogged(n));
            }
        } else {
            tracing::trace!("{op} of inode {ino}: {e}");
        }
        errno(e.errno())
    }
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

fn read_only() -> io::Error {
    errno(libc::EROFS)
}

fn ttl(immutable: bool) -> Duration {
    if immutable {
        IMMUTABLE_TTL
    } else {
        GENERATION_TTL
    }
}

fn stat(a: &Attr) -> stat64 {
    // SAFETY: stat64 is plain data; all-zero is a valid value.
    let mut st: stat64 = unsafe { std::mem::zeroed() };
    let kind = match a.kind {
        Kind::Dir => libc::S_IFDIR,
        Kind::File => libc::S_IFREG,
        Kind::Symlink => libc::S_IFLNK,
    };
    st.st_ino = a.ino;
    st.st_mode = kind | (a.perm & 0o7777);
    st.st_nlink = u64::from(a.nlink);
    st.st_uid = a.uid;
    st.st_gid = a.gid;
    st.st_size = i64::try_from(a.size).unwrap_or(i64::MAX);
    st.st_blocks = i64::try_from(a.size.div_ceil(512)).unwrap_or(i64::MAX);
    st.st_blksize = 4096;
    st.st_atime = a.mtime;
    st.st_mtime = a.mtime;
    st.st_ctime = a.mtime;
    st
}

fn dirent_type(kind: Kind) -> u32 {
    u32::from(match kind {
        Kind::Dir => libc::DT_DIR,
        Kind::File => libc::DT_REG,
        Kind::Symlink => libc::DT_LNK,
    })
}

/// The reply to a LOOKUP (and each READDIRPLUS entry): the name's and the
/// attributes' lifetimes follow what the view says can change.
fn fuse_entry(entry: &Entry, generation: u64) -> FuseEntry {
    FuseEntry {
        inode: entry.attr.ino,
        generation,
        attr: stat(&entry.attr),
        attr_flags: 0,
        attr_timeout: ttl(entry.attr.immutable),
        entry_timeout: ttl(entry.immutable && entry.attr.immutable),
    }
}

/// Feeds `listing` from `offset` on to `add` until it reports a full buffer
/// (an entry's offset is that of the next one, so the guest resumes there).
fn fill(
    listing: &Listing,
    offset: u64,
    mut add: impl FnMut(DirEntry, &Entry) -> io::Result<usize>,
) -> io::Result<()> {
    let skip = usize::try_from(offset).unwrap_or(usize::MAX);
    for (i, e) in listing.entries.iter().enumerate().skip(skip) {
        let d = DirEntry {
            ino: e.attr.ino,
            offset: i as u64 + 1,
            type_: dirent_type(e.attr.kind),
            name: &e.name,
        };
        if add(d, e)? == 0 {
            break;
        }
    }
    Ok(())
}

/// Answers a size probe (`size == 0`) or the data of an xattr request.
fn xattr_reply(size: u32, data: Vec<u8>) -> io::Result<Option<Vec<u8>>> {
    if size == 0 {
        Ok(None)
    } else if data.len() > size as usize {
        Err(errno(libc::ERANGE))
    } else {
        Ok(Some(data))
    }
}

fn len_u32(data: &[u8]) -> u32 {
    u32::try_from(data.len()).unwrap_or(u32::MAX)
}

impl FileSystem for GuestFs {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, _capable: FsOptions) -> io::Result<FsOptions> {
        // What the kernel offers of these is taken; each is an
        // optimisation. POSIX_ACL lets the guest cache each inode's (absent)
        // ACLs instead of asking for them at every permission check.
        Ok(FsOptions::ASYNC_READ
            | FsOptions::PARALLEL_DIROPS
            | FsOptions::DO_READDIRPLUS
            | FsOptions::READDIRPLUS_AUTO
            | FsOptions::MAX_PAGES
            | FsOptions::POSIX_ACL)
    }

    fn lookup(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<FuseEntry> {
        match self.view.lookup(parent, name.to_bytes()) {
            Ok(entry) => {
                self.view.looked_up(&self.lookups, parent, &entry);
                Ok(fuse_entry(&entry, self.view.inode_generation()))
            }
            Err(e) => Err(self.failed("lookup", parent, &e)),
        }
    }

    fn forget(&self, _ctx: &Context, inode: u64, count: u64) {
        self.lookups.forget(inode, count);
    }

    fn batch_forget(&self, _ctx: &Context, requests: Vec<(u64, u64)>) {
        for (inode, count) in requests {
            self.lookups.forget(inode, count);
        }
    }

    fn getattr(
        &self,
        _ctx: &Context,
        ino: u64,
        _handle: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        match self.view.getattr(ino) {
            Ok(attr) => Ok((stat(&attr), ttl(attr.immutable))),
            Err(e) => Err(self.failed("getattr", ino, &e)),
        }
    }

    fn readlink(&self, _ctx: &Context, ino: u64) -> io::Result<Vec<u8>> {
        self.view
            .readlink(ino)
            .map_err(|e| self.failed("readlink", ino, &e))
    }

    fn open(
        &self,
        _ctx: &Context,
        ino: u64,
        flags: u32,
        _fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        if flags & libc::O_ACCMODE as u32 != libc::O_RDONLY as u32 {
            return Err(read_only());
        }
        // As in the FUSE adapter: check that the inode is a readable file,
        // then answer ENOSYS, which the kernel takes as "opens need no
        // reply". Reads then come by inode alone (package files never
        // change), the guest keeps its page cache across opens, and the
        // daemon holds no per-file state a guest could pile up.
        match self.view.getattr(ino) {
            Ok(attr) if attr.kind == Kind::File => Err(errno(libc::ENOSYS)),
            Ok(attr) if attr.kind == Kind::Dir => Err(errno(libc::EISDIR)),
            Ok(_) => Err(errno(libc::EINVAL)),
            Err(e) => Err(self.failed("open", ino, &e)),
        }
    }

    fn read(
        &self,
        _ctx: &Context,
        ino: u64,
        _handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _flags: u32,
    ) -> io::Result<usize> {
        let room = u32::try_from(w.available_bytes()).unwrap_or(u32::MAX);
        let size = size.min(room).min(MAX_READ);
        // Copied into guest memory straight from the block cache.
        self.view
            .read_inode_with(ino, offset, size, |data| {
                w.write_all(data).map(|()| data.len())
            })
            .map_err(|e| self.failed("read", ino, &e))?
    }

    fn release(
        &self,
        _ctx: &Context,
        _ino: u64,
        _flags: u32,
        _handle: u64,
        _flush: bool,
        _flock_release: bool,
        _lock_owner: Option<u64>,
    ) -> io::Result<()> {
        // Opens are answered with ENOSYS: there is never a file handle.
        Ok(())
    }

    fn statfs(&self, _ctx: &Context, _ino: u64) -> io::Result<statvfs64> {
        let s = self.view.statfs();
        // SAFETY: statvfs64 is plain data; all-zero is a valid value.
        let mut st: statvfs64 = unsafe { std::mem::zeroed() };
        st.f_bsize = u64::from(s.block_size);
        st.f_frsize = u64::from(s.block_size);
        st.f_blocks = s.blocks;
        st.f_files = s.files;
        st.f_namemax = u64::from(s.name_max);
        st.f_flag = libc::ST_RDONLY;
        Ok(st)
    }

    fn getxattr(
        &self,
        _ctx: &Context,
        ino: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        let value = self
            .view
            .getxattr(ino, name.to_bytes())
            .map_err(|e| self.failed("getxattr", ino, &e))?;
        let count = len_u32(&value);
        Ok(match xattr_reply(size, value)? {
            Some(value) => GetxattrReply::Value(value),
            None => GetxattrReply::Count(count),
        })
    }

    fn listxattr(&self, _ctx: &Context, ino: u64, size: u32) -> io::Result<ListxattrReply> {
        let names = self
            .view
            .listxattr(ino)
            .map_err(|e| self.failed("listxattr", ino, &e))?;
        let count = len_u32(&names);
        Ok(match xattr_reply(size, names)? {
            Some(names) => ListxattrReply::Names(names),
            None => ListxattrReply::Count(count),
        })
    }

    fn opendir(
        &self,
        _ctx: &Context,
        ino: u64,
        _flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        let listing = self
            .view
            .list(ino)
            .map_err(|e| self.failed("opendir", ino, &e))?;
        let immutable = listing.immutable;
        let fh = self.dirs.open(listing).map_err(|e| {
            if let Some(n) = self.refused_dirs.due() {
                let (handles, bytes) = self.dirs.usage();
                tracing::warn!(
                    "a guest holds {handles} open directories ({bytes} bytes of listings): \
                     refusing more{}",
                    unlogged(n)
                );
            }
            self.failed("opendir", ino, &e)
        })?;
        // Listings inside packages never change: the guest may cache them.
        let options = if immutable {
            OpenOptions::KEEP_CACHE | OpenOptions::CACHE_DIR
        } else {
            OpenOptions::empty()
        };
        Ok((Some(fh), options))
    }

    fn readdir(
        &self,
        _ctx: &Context,
        _ino: u64,
        handle: u64,
        _size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let listing = self.listing(handle)?;
        fill(&listing, offset, |d, _| add_entry(d))
    }

    fn readdirplus(
        &self,
        _ctx: &Context,
        ino: u64,
        handle: u64,
        _size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, FuseEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let listing = self.listing(handle)?;
        let generation = self.view.inode_generation();
        fill(&listing, offset, |d, e| {
            let added = add_entry(d, fuse_entry(e, generation))?;
            // The guest's kernel counts a lookup of every entry it took
            // but `.` and `..`.
            if added > 0 && e.name != b"." && e.name != b".." {
                self.view.looked_up(&self.lookups, ino, e);
            }
            Ok(added)
        })
    }

    fn releasedir(&self, _ctx: &Context, _ino: u64, _flags: u32, handle: u64) -> io::Result<()> {
        // Only this guest's own handles: another guest's stay open.
        self.dirs.release(handle);
        Ok(())
    }

    fn access(&self, _ctx: &Context, ino: u64, mask: u32) -> io::Result<()> {
        if mask & libc::W_OK as u32 != 0 {
            return Err(read_only());
        }
        self.view
            .getattr(ino)
            .map(|_| ())
            .map_err(|e| self.failed("access", ino, &e))
    }

    // Everything that would write: the view is read-only.

    fn setattr(
        &self,
        _ctx: &Context,
        _ino: u64,
        _attr: stat64,
        _handle: Option<u64>,
        _valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        Err(read_only())
    }

    fn symlink(
        &self,
        _ctx: &Context,
        _linkname: &CStr,
        _parent: u64,
        _name: &CStr,
    ) -> io::Result<FuseEntry> {
        Err(read_only())
    }

    fn mknod(
        &self,
        _ctx: &Context,
        _parent: u64,
        _name: &CStr,
        _mode: u32,
        _rdev: u32,
        _umask: u32,
    ) -> io::Result<FuseEntry> {
        Err(read_only())
    }

    fn mkdir(
        &self,
        _ctx: &Context,
        _parent: u64,
        _name: &CStr,
        _mode: u32,
        _umask: u32,
    ) -> io::Result<FuseEntry> {
        Err(read_only())
    }

    fn unlink(&self, _ctx: &Context, _parent: u64, _name: &CStr) -> io::Result<()> {
        Err(read_only())
    }

    fn rmdir(&self, _ctx: &Context, _parent: u64, _name: &CStr) -> io::Result<()> {
        Err(read_only())
    }

    fn rename(
        &self,
        _ctx: &Context,
        _olddir: u64,
        _oldname: &CStr,
        _newdir: u64,
        _newname: &CStr,
        _flags: u32,
    ) -> io::Result<()> {
        Err(read_only())
    }

    fn link(
        &self,
        _ctx: &Context,
        _ino: u64,
        _newparent: u64,
        _newname: &CStr,
    ) -> io::Result<FuseEntry> {
        Err(read_only())
    }

    fn create(
        &self,
        _ctx: &Context,
        _parent: u64,
        _name: &CStr,
        _args: CreateIn,
    ) -> io::Result<(FuseEntry, Option<u64>, OpenOptions, Option<u32>)> {
        Err(read_only())
    }

    fn write(
        &self,
        _ctx: &Context,
        _ino: u64,
        _handle: u64,
        _r: &mut dyn ZeroCopyReader,
        _size: u32,
        _offset: u64,
        _lock_owner: Option<u64>,
        _delayed_write: bool,
        _flags: u32,
        _fuse_flags: u32,
    ) -> io::Result<usize> {
        Err(read_only())
    }

    fn fallocate(
        &self,
        _ctx: &Context,
        _ino: u64,
        _handle: u64,
        _mode: u32,
        _offset: u64,
        _length: u64,
    ) -> io::Result<()> {
        Err(read_only())
    }

    fn setxattr(
        &self,
        _ctx: &Context,
        _ino: u64,
        _name: &CStr,
        _value: &[u8],
        _flags: u32,
    ) -> io::Result<()> {
        Err(read_only())
    }

    fn removexattr(&self, _ctx: &Context, _ino: u64, _name: &CStr) -> io::Result<()> {
        Err(read_only())
    }
}
