//! The FUSE adapter: serves a [`View`] to the kernel with `fuser`.
//!
//! Every request becomes one view call; this module only translates types
//! and decides how long the kernel may cache each answer. Package content is
//! immutable, so its entries and attributes get long lifetimes
//! ([`IMMUTABLE_TTL`]) and files are opened with `FOPEN_KEEP_CACHE` (pages
//! stay cached across opens) and directories inside packages with
//! `FOPEN_CACHE_DIR`. The root, App directories and `Current` links change
//! with the generation: when a live view moves, an [`Invalidator`] tells the
//! kernel what became stale (FUSE notifications), and [`GENERATION_TTL`]
//! bounds how long a stale answer could live should a notification be lost.
//! Several request threads serve the mount, each with its own cloned
//! `/dev/fuse` descriptor.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, MountOption, Notifier, OpenAccMode, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr,
    Request, Session, SessionACL, SessionUnmounter,
};

use crate::attr::{Attr, Entry, Kind, Listing};
use crate::changes::Invalidation;
use crate::error::ViewError;
use crate::view::View;

mod index;
pub use index::{INDEX_TTL, IndexFs, IndexNotifier, MountedIndex, mount_index};

/// How long the kernel may keep what never changes: package entries and
/// attributes.
pub const IMMUTABLE_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long the kernel may keep what a generation switch changes: the root,
/// App directories, `Current` links and the names in them. A switch
/// invalidates them at once through notifications, so this is only the bound
/// on staleness should a notification fail; it is short enough for that and
/// long enough for a test to tell a notification from an expiry. (`Current`
/// targets are never cached: every path walk through a link reads it.)
pub const GENERATION_TTL: Duration = Duration::from_secs(5);

/// How a view is mounted.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// Let every user (not only the one mounting) use the mount
    /// (`allow_other`; for a non-root user it needs `user_allow_other` in
    /// `/etc/fuse.conf`).
    pub allow_other: bool,
    /// Request threads (at least 1).
    pub threads: usize,
    /// Honour setuid and setgid bits of programs run from the mount (only
    /// root can mount so).
    pub suid: bool,
}

/// The `fuser` file system: a view and nothing else.
pub struct NexusFs {
    view: Arc<View>,
}

impl NexusFs {
    /// Serves `view`.
    pub fn new(view: Arc<View>) -> NexusFs {
        NexusFs { view }
    }
}

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
fn fill_dir(
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

/// Answers a READDIRPLUS like [`fill_dir`], with each entry's attributes
/// and the lifetime `ttl` gives it.
fn fill_dir_plus(
    listing: &Listing,
    offset: u64,
    node: impl Fn(u64) -> INodeNo,
    ttl: impl Fn(&Entry) -> Duration,
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
            Generation(0),
        ) {
            break;
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

fn file_attr(a: &Attr) -> FileAttr {
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

fn ttl(immutable: bool) -> Duration {
    if immutable {
        IMMUTABLE_TTL
    } else {
        GENERATION_TTL
    }
}

/// The errno for a failed view call; damage and inconsistencies are logged.
fn errno(op: &str, ino: INodeNo, e: &ViewError) -> Errno {
    if e.is_serious() {
        tracing::error!("{op} of inode {}: {e}", ino.0);
    } else {
        tracing::debug!("{op} of inode {}: {e}", ino.0);
    }
    Errno::from_i32(e.errno())
}

fn reply_entry(reply: ReplyEntry, entry: &Entry) {
    reply.entry_with_ttls(
        &ttl(entry.attr.immutable),
        &ttl(entry.immutable),
        &file_attr(&entry.attr),
        Generation(0),
    );
}

/// Answers a size probe (`size == 0`) or the data of an xattr request.
fn reply_xattr(reply: ReplyXattr, size: u32, data: &[u8]) {
    if size == 0 {
        reply.size(u32::try_from(data.len()).unwrap_or(u32::MAX));
    } else if data.len() > size as usize {
        reply.error(Errno::from_i32(libc::ERANGE));
    } else {
        reply.data(data);
    }
}

impl Filesystem for NexusFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // Each is an optimisation: take what the kernel offers.
        for flag in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_PARALLEL_DIROPS,
            // The kernel then caches each inode's (absent) POSIX ACLs, so
            // `ls -l` asks the daemon for system.posix_acl_* once per inode
            // instead of once per call.
            InitFlags::FUSE_POSIX_ACL,
            // A cached directory listing is re-checked against the
            // directory's mtime when its attributes expire: the fallback
            // that bounds a stale root or App listing should a switch's
            // invalidation be lost (package files never change, so for
            // them this costs nothing).
            InitFlags::FUSE_AUTO_INVAL_DATA,
        ] {
            if config.add_capabilities(flag).is_err() {
                tracing::debug!("the kernel does not offer {flag:?}");
            }
        }
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.view.lookup(parent.0, name.as_bytes()) {
            Ok(entry) => reply_entry(reply, &entry),
            Err(e) => reply.error(errno("lookup", parent, &e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.view.getattr(ino.0) {
            Ok(attr) => reply.attr(&ttl(attr.immutable), &file_attr(&attr)),
            Err(e) => reply.error(errno("getattr", ino, &e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.view.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(errno("readlink", ino, &e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            reply.error(Errno::from_i32(libc::EROFS));
            return;
        }
        // Check the inode is a readable file, then answer ENOSYS: the kernel
        // takes that as "opens need no reply" and from then on opens files
        // without asking the daemon, keeping their page cache
        // (FOPEN_KEEP_CACHE is its default in that mode). Package files are
        // immutable, so reads need only the inode: this saves an open and a
        // release round trip per file, most of the cost of reading many
        // small files from a warm cache.
        match self.view.getattr(ino.0) {
            Ok(attr) if attr.kind == Kind::File => reply.error(Errno::from_i32(libc::ENOSYS)),
            Ok(attr) if attr.kind == Kind::Dir => reply.error(Errno::from_i32(libc::EISDIR)),
            Ok(_) => reply.error(Errno::from_i32(libc::EINVAL)),
            Err(e) => reply.error(errno("open", ino, &e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        // Opens are not sent (see `open`), so reads come without a handle.
        let _ = fh;
        // The bytes go to the kernel straight from the block cache.
        let mut reply = Some(reply);
        let read = self.view.read_inode_with(ino.0, offset, size, |data| {
            if let Some(reply) = reply.take() {
                reply.data(data);
            }
        });
        if let (Err(e), Some(reply)) = (read, reply) {
            reply.error(errno("read", ino, &e));
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // ENOSYS once, and the kernel never sends FLUSH again (it succeeds
        // every close itself): a read-only file system has nothing to
        // flush, and a FLUSH round trip per close() was most of the cost
        // of reading many small files from a warm page cache.
        reply.error(Errno::from_i32(libc::ENOSYS));
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // File opens are answered with ENOSYS (see `open`), so the kernel
        // sends no release; a handle from another path is still forgotten.
        self.view.release(fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // As with files (see `open`): check it is a directory, then answer
        // ENOSYS. The kernel then opens directories without asking (no
        // OPENDIR or RELEASEDIR round trips) and keeps every listing it has
        // read in its page cache (FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR is its
        // default in that mode), so a warm `find` or `ls -lR` sends no
        // request at all. Listings of the root and of Apps change with the
        // generation: a switch invalidates them (see `Notifier`), and
        // FUSE_AUTO_INVAL_DATA makes the kernel re-check a cached listing
        // once the directory's 5 s attributes expire, should a notification
        // be lost.
        match self.view.getattr(ino.0) {
            Ok(attr) if attr.kind == Kind::Dir => reply.error(Errno::from_i32(libc::ENOSYS)),
            Ok(_) => reply.error(Errno::from_i32(libc::ENOTDIR)),
            Err(e) => reply.error(errno("opendir", ino, &e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        // Directories are not opened (see `opendir`): read by inode.
        match self.view.dir_listing(ino.0) {
            Ok(listing) => fill_dir(&listing, offset, INodeNo, reply),
            Err(e) => reply.error(errno("readdir", ino, &e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        match self.view.dir_listing(ino.0) {
            Ok(listing) => fill_dir_plus(
                &listing,
                offset,
                INodeNo,
                |e| ttl(e.immutable && e.attr.immutable),
                reply,
            ),
            Err(e) => reply.error(errno("readdirplus", ino, &e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.view.release(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.view.statfs();
        reply.statfs(
            s.blocks,
            0,
            0,
            s.files,
            0,
            s.block_size,
            s.name_max,
            s.block_size,
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.view.getxattr(ino.0, name.as_bytes()) {
            Ok(value) => reply_xattr(reply, size, &value),
            Err(e) => reply.error(errno("getxattr", ino, &e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.view.listxattr(ino.0) {
            Ok(names) => reply_xattr(reply, size, &names),
            Err(e) => reply.error(errno("listxattr", ino, &e)),
        }
    }
}

/// A mounted view, not yet serving requests.
pub struct Mounted {
    session: Session<NexusFs>,
    mountpoint: PathBuf,
}

/// Mounts `view` read-only at `mountpoint`. When this returns the kernel has
/// completed the FUSE handshake: the mount exists, and requests are served
/// once [`Mounted::run`] is called.
pub fn mount(view: Arc<View>, mountpoint: &Path, options: &MountOptions) -> io::Result<Mounted> {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("nexus".into()),
        MountOption::Subtype("nexus".into()),
        MountOption::RO,
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
        MountOption::Exec,
        MountOption::NoDev,
    ];
    if options.suid {
        config.mount_options.push(MountOption::Suid);
    }
    if options.allow_other {
        config.acl = SessionACL::All;
    }
    config.n_threads = Some(options.threads.max(1));
    config.clone_fd = true;
    let session = Session::new(NexusFs::new(view), mountpoint, &config)?;
    Ok(Mounted {
        session,
        mountpoint: mountpoint.to_path_buf(),
    })
}

impl Mounted {
    /// Something another thread can unmount with (e.g. on SIGTERM).
    pub fn unmounter(&mut self) -> Unmounter {
        Unmounter {
            session: self.session.unmount_callable(),
            mountpoint: self.mountpoint.clone(),
        }
    }

    /// Something another thread can invalidate the kernel's caches with.
    pub fn invalidator(&self) -> Invalidator {
        Invalidator {
            notifier: self.session.notifier(),
        }
    }

    /// Serves requests until the file system is unmounted.
    pub fn run(self) -> io::Result<()> {
        self.session.run()
    }
}

/// Tells the kernel which of its cached answers a generation change made
/// stale, so that a switch shows at once instead of when they expire
/// ([`crate::Changes`]).
///
/// Call it after the view has moved (never before: the kernel would ask
/// again and cache the old answers anew), and never from a request handler:
/// dropping a name waits for the lookups in progress in its directory.
#[derive(Clone, Debug)]
pub struct Invalidator {
    notifier: Notifier,
}

impl Invalidator {
    /// Sends one notification per invalidation (from
    /// [`crate::Changes::invalidations`] or [`crate::Changes::after_grace`]), all of them
    /// even if some fail; returns how many were sent. Names the kernel has
    /// not cached are no error. The error, if any, counts the failures and
    /// carries the first.
    pub fn send(&self, all: &[Invalidation]) -> io::Result<usize> {
        let mut failed = 0usize;
        let mut first = None;
        for invalidation in all {
            let sent = match invalidation {
                Invalidation::Entry { parent, name } => self
                    .notifier
                    .inval_entry(INodeNo(*parent), OsStr::from_bytes(name)),
                // Offset 0, length 0: the attributes and every cached page
                // (a directory's cached listing, a link's cached target).
                Invalidation::Inode(ino) => self.notifier.inval_inode(INodeNo(*ino), 0, 0),
            };
            if let Err(e) = sent {
                failed += 1;
                first.get_or_insert(e);
            }
        }
        match first {
            None => Ok(all.len()),
            Some(e) => Err(io::Error::new(
                e.kind(),
                format!(
                    "{failed} of {} cache invalidations failed, the first with: {e}",
                    all.len()
                ),
            )),
        }
    }
}

/// How an unmount went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unmounted {
    /// The mount is gone and the session ends now.
    Clean,
    /// The mount was busy: it was detached (gone from the tree at once), and
    /// the session ends when the last file open in it is closed.
    Detached,
}

/// Unmounts a [`Mounted`] view from another thread.
pub struct Unmounter {
    session: SessionUnmounter,
    mountpoint: PathBuf,
}

impl Unmounter {
    /// Unmounts; a busy mount is detached lazily instead of failing, so no
    /// dead mount is left behind once the session ends.
    pub fn unmount(&mut self) -> io::Result<Unmounted> {
        match self.session.unmount() {
            Ok(()) => Ok(Unmounted::Clean),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                detach(&self.mountpoint)?;
                Ok(Unmounted::Detached)
            }
            Err(e) => Err(e),
        }
    }
}

/// Lazily unmounts whatever is mounted at `mountpoint` (`umount -l`): as
/// root with `umount2(MNT_DETACH)`, otherwise through `fusermount3 -uz`.
pub fn detach(mountpoint: &Path) -> io::Result<()> {
    let path = std::ffi::CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: a valid NUL-terminated path; umount2 has no other preconditions.
    if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EPERM) {
        return Err(err);
    }
    fusermount(mountpoint, true)
}

/// Unmounts with the setuid helper `fusermount3` (or `fusermount`), as a
/// user who mounted without being root must.
pub fn fusermount(mountpoint: &Path, lazy: bool) -> io::Result<()> {
    let flags = if lazy { "-uz" } else { "-u" };
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no fusermount3 or fusermount");
    for helper in ["fusermount3", "fusermount"] {
        match std::process::Command::new(helper)
            .arg(flags)
            .arg("--")
            .arg(mountpoint)
            .output()
        {
            Ok(out) if out.status.success() => return Ok(()),
            Ok(out) => {
                return Err(io::Error::other(format!(
                    "{helper} {flags} {}: {}",
                    mountpoint.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}
