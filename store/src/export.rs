//! Materialising a stored package as a directory tree (`nip export`), with
//! every byte verified and the POSIX metadata restored: modes, ownership
//! (when running as root), mtimes, symlinks, hard links and xattrs.
//!
//! What a package says about privileges is not restored by default: its
//! setuid and setgid bits and its privileged xattrs (`security.*` such as
//! file capabilities and SELinux labels, `trusted.*` such as overlayfs
//! metadata, and `system.*` ACLs) may come from an unsigned `.deb` or pax
//! header that nobody vouched for; [`ExportOptions::preserve_privileged`]
//! restores them. Ownership and xattrs as a whole can be left out too, as
//! tar's `--no-same-owner` and `--no-xattrs` do.
//!
//! Writing never resolves a path from the catalog: every name is checked
//! again (a damaged catalog must not write outside `dest`), and every
//! entry is created relative to its directory's descriptor, with
//! `O_NOFOLLOW`/`O_EXCL`. `dest` is created 0700 and gets its own mode
//! last, so nobody else can reach into the tree while it is written; each
//! directory gets its metadata when its content is complete (depth first),
//! so only the directories on the way down are open.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::BufWriter;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, Gid, Mode, OFlags, Timespec, Timestamps, Uid, XattrFlags};

use crate::catalog::{DirEntryRow, InodeRow, PackageRow};
use crate::error::{Result, StoreError};
use crate::store::{NoProgress, Progress, Store};
use crate::tree::InodeType;

/// What [`export`] restores besides names, contents, permission bits and
/// mtimes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportOptions {
    /// Give files their recorded owner and group (only when running as
    /// root; otherwise the exporter owns everything).
    pub same_owner: bool,
    /// Restore extended attributes at all.
    pub xattrs: bool,
    /// Also restore setuid and setgid bits and the privileged xattrs
    /// (`security.*`, `trusted.*`, `system.*`).
    pub preserve_privileged: bool,
}

impl Default for ExportOptions {
    /// Owners and unprivileged xattrs, no setuid/setgid, no privileged
    /// xattrs.
    fn default() -> Self {
        ExportOptions {
            same_owner: true,
            xattrs: true,
            preserve_privileged: false,
        }
    }
}

impl ExportOptions {
    fn keeps_xattr(&self, name: &[u8]) -> bool {
        let privileged = [&b"security."[..], b"trusted.", b"system."]
            .iter()
            .any(|prefix| name.starts_with(prefix));
        self.xattrs && (self.preserve_privileged || !privileged)
    }

    fn mode(&self, mode: u32) -> u32 {
        if self.preserve_privileged {
            mode & 0o7777
        } else {
            mode & 0o1777
        }
    }
}

/// A directory being written: its descriptor, what it is, and the entries
/// still to write.
struct Frame {
    fd: OwnedFd,
    inode: InodeRow,
    /// Its path below `dest` (empty for `dest` itself).
    relative: PathBuf,
    entries: std::vec::IntoIter<DirEntryRow>,
}

/// Writes `package` to `dest`, which must not exist yet.
pub fn export(
    store: &Store,
    package: &PackageRow,
    dest: &Path,
    options: ExportOptions,
) -> Result<()> {
    export_with_progress(store, package, dest, options, &NoProgress)
}

/// [`export`], reporting the file bytes written to `progress`.
pub fn export_with_progress(
    store: &Store,
    package: &PackageRow,
    dest: &Path,
    options: ExportOptions,
    progress: &dyn Progress,
) -> Result<()> {
    if std::fs::symlink_metadata(dest).is_ok() {
        return Err(StoreError::BadInput {
            path: dest.to_path_buf(),
            reason: "already exists; export writes a new directory".into(),
        });
    }
    let root = store
        .catalog()
        .inode(package.root)?
        .ok_or_else(|| StoreError::Invalid(format!("{}: root inode missing", package.spec())))?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |e: rustix::io::Errno| StoreError::io(&path, e.into())
    };
    rfs::mkdirat(rfs::CWD, dest, Mode::from_raw_mode(0o700)).map_err(io(dest))?;
    progress.start(package.bytes.max(0) as u64, package.files.max(0) as u64);
    let dest_fd = rfs::openat(
        rfs::CWD,
        dest,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io(dest))?;
    // For hard links: names relative to `dest`.
    let links_from = dest_fd.try_clone().map_err(|e| StoreError::io(dest, e))?;
    let writer = Writer {
        store,
        dest,
        options,
        chown: options.same_owner && rustix::process::geteuid().is_root(),
    };
    // Where the first name of each hard-linked file was written.
    let mut first_path: HashMap<i64, PathBuf> = HashMap::new();
    let mut stack = vec![Frame {
        entries: store.catalog().dir_entries(root.id)?.into_iter(),
        fd: dest_fd,
        inode: root,
        relative: PathBuf::new(),
    }];
    while let Some(top) = stack.last_mut() {
        let Some(entry) = top.entries.next() else {
            // Its content is complete: now its mode (maybe read-only),
            // owner, xattrs and mtime.
            if let Some(done) = stack.pop() {
                writer.finish(done.fd.as_fd(), None, &done.inode, &done.relative)?;
            }
            continue;
        };
        let name = checked_name(package, &top.relative, &entry.name)?;
        let relative = top.relative.join(OsStr::from_bytes(&entry.name));
        let dir = top.fd.as_fd();
        let inode = entry.inode;
        match inode.kind {
            InodeType::Dir => {
                rfs::mkdirat(dir, name.as_c_str(), Mode::from_raw_mode(0o700))
                    .map_err(io(&dest.join(&relative)))?;
                let fd = rfs::openat(
                    dir,
                    name.as_c_str(),
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(io(&dest.join(&relative)))?;
                let entries = store.catalog().dir_entries(inode.id)?.into_iter();
                stack.push(Frame {
                    fd,
                    inode,
                    relative,
                    entries,
                });
            }
            InodeType::File => {
                if let Some(existing) = first_path.get(&inode.id) {
                    // Relative to `dest`, whose directories are ours and
                    // out of everyone else's reach until the export ends.
                    rfs::linkat(
                        &links_from,
                        existing.as_path(),
                        dir,
                        name.as_c_str(),
                        AtFlags::empty(),
                    )
                    .map_err(io(&dest.join(&relative)))?;
                    continue;
                }
                let file = writer.write_file(dir, &name, &inode, &relative)?;
                progress.advance(inode.size);
                writer.finish(file.as_fd(), None, &inode, &relative)?;
                first_path.insert(inode.id, relative);
            }
            InodeType::Symlink => {
                let target = inode.target.clone().unwrap_or_default();
                rfs::symlinkat(OsStr::from_bytes(&target), dir, name.as_c_str())
                    .map_err(io(&dest.join(&relative)))?;
                writer.finish(dir, Some(&name), &inode, &relative)?;
            }
        }
    }
    Ok(())
}

/// `name` as a C string, if it is one file name: the catalog's rules
/// checked again, since a damaged catalog must not write elsewhere.
fn checked_name(package: &PackageRow, parent: &Path, name: &[u8]) -> Result<CString> {
    let bad = name.is_empty()
        || name == b"."
        || name == b".."
        || name.len() > 255
        || name.contains(&b'/');
    match CString::new(name) {
        Ok(c) if !bad => Ok(c),
        _ => Err(StoreError::Invalid(format!(
            "{}: the catalog names an entry {:?} in {:?}, which is no file name (the catalog is damaged)",
            package.spec(),
            String::from_utf8_lossy(name),
            parent.display()
        ))),
    }
}

/// What every entry of one export shares.
struct Writer<'a> {
    store: &'a Store,
    dest: &'a Path,
    options: ExportOptions,
    /// Whether owners are set (as root, unless told not to).
    chown: bool,
}

impl Writer<'_> {
    fn path(&self, relative: &Path) -> PathBuf {
        self.dest.join(relative)
    }

    /// Creates the file `name` in `dir` (never through a symlink, never
    /// over an existing file) and writes its verified content.
    fn write_file(
        &self,
        dir: BorrowedFd<'_>,
        name: &CString,
        inode: &InodeRow,
        relative: &Path,
    ) -> Result<File> {
        let path = self.path(relative);
        let fd = rfs::openat(
            dir,
            name.as_c_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| StoreError::io(&path, e.into()))?;
        let mut out = BufWriter::new(File::from(fd));
        if let Some(blob) = inode.blob {
            self.store.read_blob(blob, &mut out)?;
        }
        let file: File = out
            .into_inner()
            .map_err(|e| StoreError::io(&path, e.into_error()))?;
        file.sync_data().ok();
        Ok(file)
    }

    /// Applies owner, mode, xattrs and mtime: to the inode `fd` refers to,
    /// or, for a symlink, to `name` in the directory `fd` without following
    /// it.
    fn finish(
        &self,
        fd: BorrowedFd<'_>,
        symlink: Option<&CString>,
        inode: &InodeRow,
        relative: &Path,
    ) -> Result<()> {
        let path = self.path(relative);
        let io = |e: rustix::io::Errno| StoreError::io(&path, e.into());
        let owner = (
            Some(Uid::from_raw(inode.uid)),
            Some(Gid::from_raw(inode.gid)),
        );
        // chown before chmod: chown clears setuid/setgid bits.
        if self.chown {
            match symlink {
                Some(name) => rfs::chownat(
                    fd,
                    name.as_c_str(),
                    owner.0,
                    owner.1,
                    AtFlags::SYMLINK_NOFOLLOW,
                ),
                None => rfs::fchown(fd, owner.0, owner.1),
            }
            .map_err(io)?;
        }
        if symlink.is_none() {
            rfs::fchmod(fd, Mode::from_raw_mode(self.options.mode(inode.mode))).map_err(io)?;
        }
        // xattrs after chown and chmod: the kernel drops
        // `security.capability` on chown and on writes.
        for (name, value) in inode
            .xattrs
            .iter()
            .filter(|(n, _)| self.options.keeps_xattr(n))
        {
            let c_name = CString::new(name.as_slice()).map_err(|_| {
                StoreError::Invalid(format!("{}: xattr name with NUL", path.display()))
            })?;
            match symlink {
                // `/proc/self/fd/DIR/NAME`: the directory we hold, and the
                // link itself (lsetxattr does not follow the last name).
                Some(name) => {
                    let mut at = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
                    at.push(OsStr::from_bytes(name.as_bytes()));
                    rfs::lsetxattr(&at, c_name.as_c_str(), value, XattrFlags::empty())
                }
                None => rfs::fsetxattr(fd, c_name.as_c_str(), value, XattrFlags::empty()),
            }
            .map_err(io)?;
        }
        let time = Timespec {
            tv_sec: inode.mtime,
            tv_nsec: 0,
        };
        let times = Timestamps {
            last_access: time,
            last_modification: time,
        };
        match symlink {
            Some(name) => rfs::utimensat(fd, name.as_c_str(), &times, AtFlags::SYMLINK_NOFOLLOW),
            None => rfs::futimens(fd, &times),
        }
        .map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn privileged_attributes_need_asking() {
        let default = ExportOptions::default();
        assert_eq!(default.mode(0o4755), 0o755);
        assert_eq!(default.mode(0o3775), 0o1775);
        assert!(default.keeps_xattr(b"user.mime_type"));
        for name in [
            &b"security.capability"[..],
            b"security.selinux",
            b"trusted.overlay.opaque",
            b"system.posix_acl_access",
        ] {
            assert!(!default.keeps_xattr(name), "{name:?}");
        }
        let all = ExportOptions {
            preserve_privileged: true,
            ..default
        };
        assert_eq!(all.mode(0o6755), 0o6755);
        assert!(all.keeps_xattr(b"security.capability"));
        let none = ExportOptions {
            xattrs: false,
            ..all
        };
        assert!(!none.keeps_xattr(b"user.a"));
    }
}
