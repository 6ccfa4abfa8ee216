//! Turning a directory on disk into a [`Tree`] (metadata only; content is read
//! later by the ingest pipeline).
//!
//! Policy for special files (FORMAT.md, "What a package may contain"): device
//! nodes, FIFOs and sockets are refused with an error naming the path, because
//! a read-only program tree has no use for them and a device node in a shared
//! mount is a security hole. `skip_special` drops them instead, with a warning.

use std::collections::HashMap;
use std::fs::{self, Metadata};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::{Result, StoreError};
use crate::tree::{Inode, InodeIndex, InodeKind, Tree, Xattrs};

/// A scanned directory: its tree, and where on disk each regular file's
/// content is to be read from.
pub struct ScannedTree {
    /// The tree, with file contents not yet hashed.
    pub tree: Tree,
    /// `(inode, path)` for every regular-file inode (once per hard-link group).
    pub sources: Vec<(InodeIndex, PathBuf)>,
    /// Special files that were skipped (only with `skip_special`).
    pub skipped: Vec<PathBuf>,
}

/// Options for [`scan_dir`].
#[derive(Clone, Copy, Debug, Default)]
pub struct ScanOptions {
    /// Drop device nodes, FIFOs and sockets instead of failing.
    pub skip_special: bool,
}

/// Reads the xattrs of `path` (not following symlinks), sorted by name.
fn read_xattrs(path: &Path) -> Result<Xattrs> {
    let names = match xattr::list(path) {
        Ok(names) => names,
        // File systems without xattr support simply have none.
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io(path, e)),
    };
    let mut out = Vec::new();
    for name in names {
        match xattr::get(path, &name) {
            Ok(Some(value)) => out.push((name.as_bytes().to_vec(), value)),
            Ok(None) => {}
            Err(e) => return Err(StoreError::io(path, e)),
        }
    }
    out.sort();
    Ok(out)
}

fn inode_from(meta: &Metadata, kind: InodeKind, xattrs: Xattrs) -> Inode {
    Inode {
        kind,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime: meta.mtime(),
        xattrs,
    }
}

/// Scans `root` recursively without following symlinks.
pub fn scan_dir(root: &Path, options: ScanOptions) -> Result<ScannedTree> {
    let root_meta = fs::symlink_metadata(root).map_err(|e| StoreError::io(root, e))?;
    if !root_meta.is_dir() {
        return Err(StoreError::BadInput {
            path: root.to_path_buf(),
            reason: "not a directory".into(),
        });
    }
    let mut tree = Tree::default();
    tree.push_inode(inode_from(&root_meta, InodeKind::Dir, read_xattrs(root)?));
    let mut sources = Vec::new();
    let mut skipped = Vec::new();
    let mut hardlinks: HashMap<(u64, u64), InodeIndex> = HashMap::new();
    let mut pending: Vec<(PathBuf, InodeIndex)> = vec![(root.to_path_buf(), 0)];

    while let Some((dir_path, dir_inode)) = pending.pop() {
        let reader = fs::read_dir(&dir_path).map_err(|e| StoreError::io(&dir_path, e))?;
        let mut names = Vec::new();
        for entry in reader {
            let entry = entry.map_err(|e| StoreError::io(&dir_path, e))?;
            names.push(entry.file_name());
        }
        // Sorted so that inode numbering, and thus the catalog, is
        // deterministic for the same input.
        names.sort();
        for name in names {
            let path = dir_path.join(&name);
            let meta = fs::symlink_metadata(&path).map_err(|e| StoreError::io(&path, e))?;
            let ft = meta.file_type();
            let name_bytes = name.as_bytes().to_vec();
            if ft.is_dir() {
                let ino = tree.push_inode(inode_from(&meta, InodeKind::Dir, read_xattrs(&path)?));
                tree.push_entry(dir_inode, name_bytes, ino);
                pending.push((path, ino));
            } else if ft.is_file() {
                let key = (meta.dev(), meta.ino());
                if meta.nlink() > 1
                    && let Some(&existing) = hardlinks.get(&key)
                {
                    tree.push_entry(dir_inode, name_bytes, existing);
                    continue;
                }
                let kind = InodeKind::File {
                    size: meta.len(),
                    content: None,
                };
                let ino = tree.push_inode(inode_from(&meta, kind, read_xattrs(&path)?));
                if meta.nlink() > 1 {
                    hardlinks.insert(key, ino);
                }
                tree.push_entry(dir_inode, name_bytes, ino);
                sources.push((ino, path));
            } else if ft.is_symlink() {
                let target = fs::read_link(&path).map_err(|e| StoreError::io(&path, e))?;
                let kind = InodeKind::Symlink {
                    target: target.as_os_str().as_bytes().to_vec(),
                };
                let ino = tree.push_inode(inode_from(&meta, kind, read_xattrs(&path)?));
                tree.push_entry(dir_inode, name_bytes, ino);
            } else {
                let what = if ft.is_fifo() {
                    "a FIFO"
                } else if ft.is_socket() {
                    "a socket"
                } else if ft.is_block_device() {
                    "a block device"
                } else if ft.is_char_device() {
                    "a character device"
                } else {
                    "an unknown file type"
                };
                if options.skip_special {
                    tracing::warn!("skipping {}: {what}", path.display());
                    skipped.push(path);
                    continue;
                }
                return Err(StoreError::BadInput {
                    path,
                    reason: format!(
                        "is {what}; packages may hold only files, directories and symlinks (use --skip-special to leave such files out)"
                    ),
                });
            }
        }
    }
    Ok(ScannedTree {
        tree,
        sources,
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn scans_files_links_and_hardlinks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir(root.join("bin")).unwrap();
        fs::write(root.join("bin/tool"), b"#!/bin/sh\n").unwrap();
        fs::hard_link(root.join("bin/tool"), root.join("bin/tool2")).unwrap();
        symlink("tool", root.join("bin/link")).unwrap();
        let scanned = scan_dir(root, ScanOptions::default()).unwrap();
        // root, bin, tool (shared by two names), link
        assert_eq!(scanned.tree.inodes.len(), 4);
        assert_eq!(scanned.tree.entries.len(), 4);
        assert_eq!(scanned.sources.len(), 1);
    }

    #[test]
    fn refuses_fifos_unless_told_to_skip() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let err = scan_dir(dir.path(), ScanOptions::default()).err().unwrap();
        assert!(err.to_string().contains("FIFO"), "{err}");
        let ok = scan_dir(dir.path(), ScanOptions { skip_special: true }).unwrap();
        assert_eq!(ok.skipped, vec![fifo]);
    }

    #[test]
    fn refuses_missing_and_non_directories() {
        let dir = tempfile::tempdir().unwrap();
        assert!(scan_dir(&dir.path().join("nope"), ScanOptions::default()).is_err());
        fs::write(dir.path().join("f"), b"x").unwrap();
        let err = scan_dir(&dir.path().join("f"), ScanOptions::default())
            .err()
            .unwrap();
        assert!(err.to_string().contains("not a directory"));
    }
}
