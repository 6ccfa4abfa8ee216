//! Turning a directory on disk into a [`Tree`] (metadata only; content is read
//! later by the ingest pipeline), without trusting whoever can write to it.
//!
//! Root often imports trees a user built. Looked up by path, such a tree
//! can be changed between two looks: a component swapped for a symlink
//! (`renameat2(RENAME_EXCHANGE)`) made the store pair one file's metadata
//! (uid 0, mode 04755) with another file's bytes, or read a root-only file
//! through a symlink. So the walk never resolves a path twice:
//!
//! * every directory is opened relative to its parent's descriptor with
//!   `O_NOFOLLOW`, and every entry is looked at through a descriptor of its
//!   own (`O_PATH | O_NOFOLLOW`): type, mode, owner and xattrs all come from
//!   that one inode (xattrs through `/proc/self/fd`, the one way to read
//!   them from an `O_PATH` descriptor, which works for symlinks too);
//! * a regular file is opened again when its content is read
//!   ([`SourceFile::open`]), below the kept root descriptor with
//!   `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, and refused unless
//!   device, inode, type, mode, owner, size, mtime and ctime are what the
//!   scan saw (ctime moves with every chmod, chown, xattr change and
//!   write); after the read they are compared once more.
//!
//! Policy (FORMAT.md, "What a package may contain"; ARCHITECTURE.md, "Threat
//! model"):
//!
//! * device nodes, FIFOs and sockets are refused with an error naming the
//!   path (a device node in a shared mount is a security hole), or dropped
//!   with a warning when `skip_special` is set;
//! * run as root, a tree is refused unless root owns it, every entry in it
//!   and every directory above it, and none of them is writable by group or
//!   others (a sticky directory excepted: others cannot move root's entries
//!   in it) — git's `safe.directory` rule — unless the caller trusts the
//!   tree's owner ([`SourcePolicy::trust_owner`]);
//! * a file whose owner on disk is not root never brings setuid or setgid
//!   bits, a `security.capability` xattr or group 0 into the store unless
//!   the caller asks ([`SourcePolicy::keep_privileges`]): whoever owns the
//!   file could not have given it root's powers.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{self as rfs, FileType, Mode, OFlags, ResolveFlags, Stat};
use rustix::io::Errno;

use crate::error::{Result, StoreError};
use crate::root_way::{WayError, distrust};
use crate::tree::{Inode, InodeIndex, InodeKind, PathBudget, Tree, Xattrs, check_xattr};

/// The group a file not owned by root is given instead of group 0 (the
/// kernel's overflow id, `nogroup`): the file's owner cannot vouch for
/// root's group.
pub const OVERFLOW_GID: u32 = 65534;

/// The xattr that grants file capabilities.
const CAPABILITY_XATTR: &[u8] = b"security.capability";

/// A scanned directory: its tree, and where on disk each regular file's
/// content is to be read from.
pub struct ScannedTree {
    /// The tree, with file contents not yet hashed.
    pub tree: Tree,
    /// `(inode, file)` for every regular-file inode (once per hard-link group).
    pub sources: Vec<(InodeIndex, SourceFile)>,
    /// Special files that were skipped (only with `skip_special`).
    pub skipped: Vec<PathBuf>,
}

/// Whom a directory import trusts besides root.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourcePolicy {
    /// When run as root, import a tree even though someone other than root
    /// owns it (or a directory above it), or can write to it.
    pub trust_owner: bool,
    /// Keep setuid and setgid bits, `security.capability` and group 0 on
    /// files whose owner on disk is not root.
    pub keep_privileges: bool,
}

/// Options for [`scan_dir`].
#[derive(Clone, Copy, Debug, Default)]
pub struct ScanOptions {
    /// Drop device nodes, FIFOs and sockets instead of failing.
    pub skip_special: bool,
    /// Whom to trust.
    pub policy: SourcePolicy,
}

/// What identifies a file and everything the store takes from it, as seen
/// through one descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: (i64, u64),
    ctime: (i64, u64),
}

impl Identity {
    fn of(st: &Stat) -> Identity {
        Identity {
            dev: st.st_dev,
            ino: st.st_ino,
            mode: st.st_mode,
            uid: st.st_uid,
            gid: st.st_gid,
            size: st.st_size as u64,
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
        }
    }

    /// What differs between two looks at "the same" file, if anything.
    fn change(&self, now: &Identity) -> Option<&'static str> {
        if (self.dev, self.ino) != (now.dev, now.ino) {
            Some("it is another file now")
        } else if self.mode != now.mode {
            Some("its type or mode changed")
        } else if (self.uid, self.gid) != (now.uid, now.gid) {
            Some("its owner changed")
        } else if self.size != now.size {
            Some("its size changed")
        } else if self.mtime != now.mtime {
            Some("it was modified")
        } else if self.ctime != now.ctime {
            Some("its metadata or xattrs changed")
        } else {
            None
        }
    }
}

/// A regular file found by the scan: where its bytes are, and what it was
/// when scanned.
#[derive(Clone, Debug)]
pub struct SourceFile {
    /// The scanned directory, kept open: files are opened below it.
    root: Arc<OwnedFd>,
    /// The file's path below `root`.
    relative: PathBuf,
    /// The file's path as the caller spelt it, for messages.
    display: PathBuf,
    identity: Identity,
}

impl SourceFile {
    /// The file's path (the scanned directory joined with its path inside).
    pub fn path(&self) -> &Path {
        &self.display
    }

    /// Its size when scanned.
    pub fn size(&self) -> u64 {
        self.identity.size
    }

    /// Opens the file for reading, below the scanned directory and through
    /// no symlink, and checks that it is the file the scan saw, unchanged.
    pub fn open(&self) -> Result<File> {
        let fd = open_beneath(&self.root, &self.relative).map_err(|e| match e {
            // A component became a symlink or another mount, or vanished.
            Errno::LOOP | Errno::XDEV | Errno::NOENT | Errno::NOTDIR | Errno::AGAIN => {
                self.changed("a directory on its path was replaced or it disappeared")
            }
            e => StoreError::io(&self.display, e.into()),
        })?;
        let file = File::from(fd);
        self.check_unchanged(&file)?;
        Ok(file)
    }

    /// Checks that `file` (opened with [`SourceFile::open`]) still is what
    /// the scan saw: after its content was read, this catches writes and
    /// metadata changes made during the read.
    pub fn check_unchanged(&self, file: &File) -> Result<()> {
        let st = rfs::fstat(file).map_err(|e| StoreError::io(&self.display, e.into()))?;
        match self.identity.change(&Identity::of(&st)) {
            Some(what) => Err(self.changed(what)),
            None => Ok(()),
        }
    }

    fn changed(&self, what: &str) -> StoreError {
        StoreError::SourceChanged {
            path: self.display.clone(),
            what: what.to_string(),
        }
    }
}

/// Opens `relative` below `root` for reading without following any symlink.
fn open_beneath(root: &OwnedFd, relative: &Path) -> rustix::io::Result<OwnedFd> {
    // Never blocks on a FIFO, never becomes a controlling terminal: the
    // type is checked only after the open.
    let flags =
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    let mut again = 0;
    loop {
        match rfs::openat2(root, relative, flags, Mode::empty(), resolve) {
            // The kernel asks for a retry when a rename raced the lookup.
            Err(Errno::AGAIN) if again < 8 => again += 1,
            // Kernels before 5.6 (or a seccomp filter) lack openat2: one
            // component at a time, each refused if it is a symlink.
            Err(Errno::NOSYS) => return open_by_components(root, relative, flags),
            other => return other,
        }
    }
}

fn open_by_components(
    root: &OwnedFd,
    relative: &Path,
    flags: OFlags,
) -> rustix::io::Result<OwnedFd> {
    let names: Vec<&OsStr> = relative
        .components()
        .map(|c| match c {
            Component::Normal(name) => Ok(name),
            _ => Err(Errno::INVAL),
        })
        .collect::<rustix::io::Result<_>>()?;
    let Some((last, dirs)) = names.split_last() else {
        return Err(Errno::INVAL);
    };
    let mut dir: Option<OwnedFd> = None;
    for name in dirs {
        let at = dir.as_ref().map_or(root.as_fd(), |d| d.as_fd());
        let next = rfs::openat(
            at,
            *name,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        dir = Some(next);
    }
    let at = dir.as_ref().map_or(root.as_fd(), |d| d.as_fd());
    rfs::openat(at, *last, flags, Mode::empty())
}

/// Reads the xattrs of the inode `fd` refers to (any kind of descriptor,
/// `O_PATH` included), sorted by name.
fn read_xattrs(fd: BorrowedFd<'_>, display: &Path) -> Result<Xattrs> {
    // `/proc/self/fd/N` leads to the inode itself, even to a symlink: the
    // f*xattr calls refuse `O_PATH` descriptors.
    let proc = format!("/proc/self/fd/{}", fd.as_raw_fd());
    // The kernel's own limits: a list and a value are at most 64 KiB.
    let mut list = vec![0u8; 64 << 10];
    let len = match rfs::listxattr(&proc, &mut list[..]) {
        Ok(len) => len,
        // File systems without xattr support simply have none.
        Err(Errno::NOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io(display, e.into())),
    };
    let mut value = vec![0u8; 64 << 10];
    let mut out = Vec::new();
    for name in list[..len].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let c_name = std::ffi::CString::new(name)
            .map_err(|_| StoreError::Invalid("xattr name with NUL".into()))?;
        let n = match rfs::getxattr(&proc, c_name.as_c_str(), &mut value[..]) {
            Ok(n) => n,
            // Removed between the listing and now: its inode no longer has it.
            Err(Errno::NODATA) => continue,
            Err(e) => return Err(StoreError::io(display, e.into())),
        };
        check_xattr(name, &value[..n]).map_err(|reason| StoreError::BadInput {
            path: display.to_path_buf(),
            reason: reason.into(),
        })?;
        out.push((name.to_vec(), value[..n].to_vec()));
    }
    out.sort();
    Ok(out)
}

/// True when this process is root, for whom foreign trees are refused.
fn running_as_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn untrusted(path: &Path, reason: String) -> StoreError {
    StoreError::UntrustedSource {
        path: path.to_path_buf(),
        reason,
    }
}

/// The inode the store keeps for `st`, with the privileges its owner could
/// not have granted taken away unless the caller keeps them.
fn inode_from(st: &Stat, kind: InodeKind, mut xattrs: Xattrs, policy: SourcePolicy) -> Inode {
    let mut mode = st.st_mode & 0o7777;
    let mut gid = st.st_gid;
    if st.st_uid != 0 && !policy.keep_privileges {
        mode &= !0o6000;
        xattrs.retain(|(name, _)| name != CAPABILITY_XATTR);
        if gid == 0 {
            gid = OVERFLOW_GID;
        }
    }
    Inode {
        kind,
        mode,
        uid: st.st_uid,
        gid,
        mtime: st.st_mtime,
        xattrs,
    }
}

/// Opens the directory to scan (for reading), after checking, when root
/// must distrust foreign trees, every directory above it.
fn open_root(root: &Path, check_ancestors: bool) -> Result<OwnedFd> {
    let not_a_dir = || StoreError::BadInput {
        path: root.to_path_buf(),
        reason: "not a directory".into(),
    };
    let read_dir = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let open_err = |e: Errno| match e {
        Errno::NOTDIR => not_a_dir(),
        e => StoreError::io(root, e.into()),
    };
    if !check_ancestors {
        return rfs::openat(rfs::CWD, root, read_dir, Mode::empty()).map_err(open_err);
    }
    let way_error = |e: WayError| match e {
        WayError::Untrusted { path, reason } => {
            untrusted(&path, format!("a directory above the tree is {reason}"))
        }
        WayError::Replaced { path } => StoreError::SourceChanged {
            path,
            what: "a directory on its path was replaced by a symlink".into(),
        },
        WayError::Io { path, source } => StoreError::io(&path, source),
    };
    // Resolved with the directories holding the symlinks it follows
    // checked too, then walked again by descriptors to the tree.
    let canonical = crate::root_way::resolve_checked(root).map_err(way_error)?;
    let parent = crate::root_way::open_parent_checked(&canonical).map_err(way_error)?;
    let at = match canonical.file_name() {
        Some(name) => {
            let step = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            rfs::openat(&parent, name, step, Mode::empty()).map_err(open_err)?
        }
        None => parent,
    };
    // The tree's own file system too, before anything asks its server (a
    // FUSE server another user runs says who owns what).
    crate::root_way::check(&at, &canonical, &crate::root_way::mount_table()).map_err(
        |e| match e {
            WayError::Untrusted { path, reason } => untrusted(&path, reason),
            e => way_error(e),
        },
    )?;
    rfs::openat(&at, ".", read_dir, Mode::empty()).map_err(open_err)
}

/// One directory being walked: its open descriptor and the subdirectories
/// still to enter.
struct Frame {
    dir: Arc<OwnedFd>,
    /// Length of the directory's path below the root (bytes).
    relative_len: usize,
    subdirs: std::vec::IntoIter<(Vec<u8>, InodeIndex, Identity)>,
}

/// The walk of one tree.
struct Walk<'a> {
    root: &'a Path,
    root_fd: Arc<OwnedFd>,
    options: ScanOptions,
    check_owner: bool,
    tree: Tree,
    sources: Vec<(InodeIndex, SourceFile)>,
    skipped: Vec<PathBuf>,
    hardlinks: HashMap<(u64, u64), InodeIndex>,
    budget: PathBudget,
    /// The path, below the root, of the directory being read.
    relative: Vec<u8>,
    /// Devices of the file systems found in the tree so far that are not a
    /// FUSE one another user mounted.
    devices_trusted: std::collections::HashSet<u64>,
    /// The mount table, read when a device is first met.
    mount_table: Option<String>,
}

impl Walk<'_> {
    fn display(&self, name: &[u8]) -> PathBuf {
        let mut p = self.root.join(OsStr::from_bytes(&self.relative));
        p.push(OsStr::from_bytes(name));
        p
    }

    fn relative_to(&self, name: &[u8]) -> Vec<u8> {
        let mut p = self.relative.clone();
        if !p.is_empty() {
            p.push(b'/');
        }
        p.extend_from_slice(name);
        p
    }

    /// Reads the xattrs of `fd`, counting them against the package's
    /// budget (they are held in memory until the commit).
    fn read_xattrs(&mut self, fd: BorrowedFd<'_>, path: &Path) -> Result<Xattrs> {
        let xattrs = read_xattrs(fd, path)?;
        self.budget
            .charge_xattrs(&xattrs)
            .map_err(|limit| StoreError::PathLimit {
                path: path.to_path_buf(),
                limit,
            })?;
        Ok(xattrs)
    }

    fn trust(&mut self, st: &Stat, path: &Path) -> Result<()> {
        if !self.check_owner {
            return Ok(());
        }
        if let Some(reason) = distrust(st) {
            return Err(untrusted(path, reason));
        }
        // Another file system mounted inside the tree: not a FUSE one
        // another user serves.
        if !self.devices_trusted.contains(&st.st_dev) {
            let table = self
                .mount_table
                .get_or_insert_with(crate::root_way::mount_table);
            if crate::root_way::foreign_fuse(st.st_dev, table) {
                return Err(untrusted(path, crate::root_way::FOREIGN_FUSE.into()));
            }
            self.devices_trusted.insert(st.st_dev);
        }
        Ok(())
    }

    /// Reads the directory `dir` (the tree's inode `dir_inode`, `depth`
    /// components below the root): every entry becomes an inode; returns
    /// the subdirectories, to be entered next.
    fn read_dir(
        &mut self,
        dir: &OwnedFd,
        dir_inode: InodeIndex,
        depth: usize,
    ) -> Result<Vec<(Vec<u8>, InodeIndex, Identity)>> {
        let here = self.root.join(OsStr::from_bytes(&self.relative));
        let io = |e: Errno| StoreError::io(&here, e.into());
        let mut names = Vec::new();
        for entry in rfs::Dir::read_from(dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(name.to_vec());
            }
        }
        // Sorted so that inode numbering, and thus the catalog, is
        // deterministic for the same input.
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            let path = self.display(&name);
            let path_len =
                self.relative.len() + usize::from(!self.relative.is_empty()) + name.len();
            self.budget
                .charge(depth, path_len)
                .map_err(|limit| StoreError::PathLimit {
                    path: path.clone(),
                    limit,
                })?;
            let c_name = std::ffi::CString::new(name.clone())
                .map_err(|_| StoreError::Invalid("file name with NUL".into()))?;
            let fd = rfs::openat(
                dir,
                c_name.as_c_str(),
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| match e {
                Errno::NOENT => StoreError::SourceChanged {
                    path: path.clone(),
                    what: "it disappeared".into(),
                },
                e => StoreError::io(&path, e.into()),
            })?;
            let st = rfs::fstat(&fd).map_err(|e| StoreError::io(&path, e.into()))?;
            let kind = FileType::from_raw_mode(st.st_mode);
            if let Some(what) = special(kind) {
                if self.options.skip_special {
                    tracing::warn!("skipping {}: {what}", path.display());
                    self.skipped.push(path);
                    continue;
                }
                return Err(StoreError::SpecialFile { path, what });
            }
            self.trust(&st, &path)?;
            let policy = self.options.policy;
            match kind {
                FileType::Directory => {
                    let xattrs = self.read_xattrs(fd.as_fd(), &path)?;
                    let ino = self
                        .tree
                        .push_inode(inode_from(&st, InodeKind::Dir, xattrs, policy));
                    self.tree.push_entry(dir_inode, name.clone(), ino);
                    subdirs.push((name, ino, Identity::of(&st)));
                }
                FileType::RegularFile => {
                    let key = (st.st_dev, st.st_ino);
                    if st.st_nlink > 1
                        && let Some(&existing) = self.hardlinks.get(&key)
                    {
                        self.tree.push_entry(dir_inode, name, existing);
                        continue;
                    }
                    let xattrs = self.read_xattrs(fd.as_fd(), &path)?;
                    let kind = InodeKind::File {
                        size: st.st_size as u64,
                        content: None,
                    };
                    let ino = self.tree.push_inode(inode_from(&st, kind, xattrs, policy));
                    if st.st_nlink > 1 {
                        self.hardlinks.insert(key, ino);
                    }
                    let relative = PathBuf::from(OsStr::from_bytes(&self.relative_to(&name)));
                    self.tree.push_entry(dir_inode, name, ino);
                    self.sources.push((
                        ino,
                        SourceFile {
                            root: self.root_fd.clone(),
                            relative,
                            display: path,
                            identity: Identity::of(&st),
                        },
                    ));
                }
                FileType::Symlink => {
                    // The link the descriptor holds, not whatever the name
                    // means by now.
                    let target = rfs::readlinkat(&fd, c"", Vec::new())
                        .map_err(|e| StoreError::io(&path, e.into()))?;
                    let kind = InodeKind::Symlink {
                        target: target.into_bytes(),
                    };
                    let xattrs = self.read_xattrs(fd.as_fd(), &path)?;
                    let ino = self.tree.push_inode(inode_from(&st, kind, xattrs, policy));
                    self.tree.push_entry(dir_inode, name, ino);
                }
                _ => {
                    return Err(StoreError::BadInput {
                        path,
                        reason: "is an unknown file type".into(),
                    });
                }
            }
        }
        Ok(subdirs)
    }

    /// Opens the subdirectory `name` of `parent` again, checking that it is
    /// the directory read when its parent was.
    fn enter(&self, parent: &OwnedFd, name: &[u8], scanned: &Identity) -> Result<OwnedFd> {
        let path = self.display(name);
        let changed = |what: &str| StoreError::SourceChanged {
            path: path.clone(),
            what: what.to_string(),
        };
        let c_name = std::ffi::CString::new(name)
            .map_err(|_| StoreError::Invalid("file name with NUL".into()))?;
        let fd = rfs::openat(
            parent,
            c_name.as_c_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::LOOP | Errno::NOTDIR | Errno::NOENT => {
                changed("it was replaced by something else or disappeared")
            }
            e => StoreError::io(&path, e.into()),
        })?;
        let st = rfs::fstat(&fd).map_err(|e| StoreError::io(&path, e.into()))?;
        match scanned.change(&Identity::of(&st)) {
            Some(what) => Err(changed(what)),
            None => Ok(fd),
        }
    }
}

/// The description of a special file type, `None` for the kinds a package
/// may hold.
fn special(kind: FileType) -> Option<&'static str> {
    match kind {
        FileType::Fifo => Some("a FIFO"),
        FileType::Socket => Some("a socket"),
        FileType::BlockDevice => Some("a block device"),
        FileType::CharacterDevice => Some("a character device"),
        _ => None,
    }
}

/// Scans `root` recursively, without following symlinks, under `options`'
/// policy.
pub fn scan_dir(root: &Path, options: ScanOptions) -> Result<ScannedTree> {
    let check_owner = !options.policy.trust_owner && running_as_root();
    let root_fd = Arc::new(open_root(root, check_owner)?);
    let st = rfs::fstat(&*root_fd).map_err(|e| StoreError::io(root, e.into()))?;
    let mut walk = Walk {
        root,
        root_fd: root_fd.clone(),
        options,
        check_owner,
        tree: Tree::default(),
        sources: Vec::new(),
        skipped: Vec::new(),
        hardlinks: HashMap::new(),
        budget: PathBudget::default(),
        relative: Vec::new(),
        devices_trusted: std::collections::HashSet::new(),
        mount_table: None,
    };
    walk.trust(&st, root)?;
    let xattrs = walk.read_xattrs(root_fd.as_fd(), root)?;
    walk.tree
        .push_inode(inode_from(&st, InodeKind::Dir, xattrs, options.policy));
    let subdirs = walk.read_dir(&root_fd, 0, 1)?;
    // Directories are entered depth first; only the directories on the way
    // down are open, at most `MAX_DEPTH` of them.
    let mut stack = vec![Frame {
        dir: root_fd,
        relative_len: 0,
        subdirs: subdirs.into_iter(),
    }];
    while let Some(top) = stack.last_mut() {
        let Some((name, ino, identity)) = top.subdirs.next() else {
            stack.pop();
            continue;
        };
        let parent = top.dir.clone();
        walk.relative.truncate(top.relative_len);
        let fd = walk.enter(&parent, &name, &identity)?;
        if !walk.relative.is_empty() {
            walk.relative.push(b'/');
        }
        walk.relative.extend_from_slice(&name);
        let depth = stack.len() + 1;
        let subdirs = walk.read_dir(&fd, ino, depth)?;
        stack.push(Frame {
            dir: Arc::new(fd),
            relative_len: walk.relative.len(),
            subdirs: subdirs.into_iter(),
        });
    }
    Ok(ScannedTree {
        tree: walk.tree,
        sources: walk.sources,
        skipped: walk.skipped,
    })
}

#[cfg(test)]
mod tests;
