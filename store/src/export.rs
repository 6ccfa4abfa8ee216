//! Materialising a stored package as a directory tree (`nip export`), with
//! every byte verified and the POSIX metadata restored: modes (setuid
//! included), ownership (when running as root), mtimes, symlinks, hard links
//! and xattrs.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::BufWriter;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::catalog::{InodeRow, PackageRow, kind};
use crate::error::{Result, StoreError};
use crate::store::{NoProgress, Progress, Store};

/// Writes `package` to `dest`, which must not exist yet.
pub fn export(store: &Store, package: &PackageRow, dest: &Path) -> Result<()> {
    export_with_progress(store, package, dest, &NoProgress)
}

/// [`export`], reporting the file bytes written to `progress`.
pub fn export_with_progress(
    store: &Store,
    package: &PackageRow,
    dest: &Path,
    progress: &dyn Progress,
) -> Result<()> {
    if fs::symlink_metadata(dest).is_ok() {
        return Err(StoreError::BadInput {
            path: dest.to_path_buf(),
            reason: "already exists; export writes a new directory".into(),
        });
    }
    let root = store
        .catalog()
        .inode(package.root)?
        .ok_or_else(|| StoreError::Invalid(format!("{}: root inode missing", package.spec())))?;
    fs::create_dir(dest).map_err(|e| StoreError::io(dest, e))?;
    progress.start(package.bytes.max(0) as u64, package.files.max(0) as u64);
    let privileged = unsafe { libc::geteuid() } == 0;
    let mut first_path: HashMap<i64, PathBuf> = HashMap::new();
    // Directories get their final mode and mtime after their content is
    // written (a read-only directory could not be filled, and writing into a
    // directory changes its mtime).
    let mut dirs: Vec<(PathBuf, InodeRow)> = vec![(dest.to_path_buf(), root)];
    let mut pending = vec![(dest.to_path_buf(), package.root)];
    while let Some((dir_path, dir_id)) = pending.pop() {
        for entry in store.catalog().dir_entries(dir_id)? {
            let path = dir_path.join(OsStr::from_bytes(&entry.name));
            let inode = entry.inode;
            match inode.kind {
                kind::DIR => {
                    fs::create_dir(&path).map_err(|e| StoreError::io(&path, e))?;
                    pending.push((path.clone(), inode.id));
                    dirs.push((path, inode));
                }
                kind::FILE => {
                    if let Some(existing) = first_path.get(&inode.id) {
                        fs::hard_link(existing, &path).map_err(|e| StoreError::io(&path, e))?;
                        continue;
                    }
                    write_file(store, &inode, &path)?;
                    progress.advance(inode.size);
                    apply_metadata(&path, &inode, privileged, false)?;
                    first_path.insert(inode.id, path);
                }
                kind::SYMLINK => {
                    let target = inode.target.clone().unwrap_or_default();
                    std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)
                        .map_err(|e| StoreError::io(&path, e))?;
                    apply_metadata(&path, &inode, privileged, true)?;
                }
                other => {
                    return Err(StoreError::Invalid(format!(
                        "{}: unknown inode kind {other}",
                        path.display()
                    )));
                }
            }
        }
    }
    for (path, inode) in dirs.iter().rev() {
        apply_metadata(path, inode, privileged, false)?;
    }
    Ok(())
}

fn write_file(store: &Store, inode: &InodeRow, path: &Path) -> Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| StoreError::io(path, e))?;
    let mut out = BufWriter::new(file);
    if let Some(blob) = inode.blob {
        store.read_blob(blob, &mut out)?;
    }
    let file: File = out
        .into_inner()
        .map_err(|e| StoreError::io(path, e.into_error()))?;
    file.sync_data().ok();
    Ok(())
}

fn apply_metadata(path: &Path, inode: &InodeRow, privileged: bool, is_symlink: bool) -> Result<()> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| StoreError::Invalid(format!("{}: path contains NUL", path.display())))?;
    if privileged {
        // chown before chmod: chown clears setuid/setgid bits.
        // SAFETY: valid NUL-terminated path.
        if unsafe { libc::lchown(c_path.as_ptr(), inode.uid, inode.gid) } != 0 {
            return Err(StoreError::io(path, std::io::Error::last_os_error()));
        }
    }
    if !is_symlink {
        fs::set_permissions(path, fs::Permissions::from_mode(inode.mode))
            .map_err(|e| StoreError::io(path, e))?;
    }
    // xattrs last: the kernel drops `security.capability` on chown and on
    // writes, so setting it earlier would lose it.
    for (name, value) in &inode.xattrs {
        xattr::set(path, OsStr::from_bytes(name), value).map_err(|e| StoreError::io(path, e))?;
    }
    let times = [
        libc::timespec {
            tv_sec: inode.mtime as libc::time_t,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: inode.mtime as libc::time_t,
            tv_nsec: 0,
        },
    ];
    // SAFETY: valid path and a two-element timespec array.
    if unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c_path.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    } != 0
    {
        return Err(StoreError::io(path, std::io::Error::last_os_error()));
    }
    Ok(())
}
