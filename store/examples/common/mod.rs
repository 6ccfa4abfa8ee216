//! What the measurement examples share.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The regular files below `dir` with their sizes, one path per inode (a
/// hard-linked file counts once), in path order; unreadable entries are
/// left out.
pub fn corpus_files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    collect(dir, &mut HashSet::new(), &mut out);
    out
}

fn collect(dir: &Path, seen: &mut HashSet<(u64, u64)>, out: &mut Vec<(PathBuf, u64)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        let Ok(meta) = path.symlink_metadata() else {
            continue;
        };
        if meta.is_dir() {
            collect(&path, seen, out);
        } else if meta.is_file() && seen.insert((meta.dev(), meta.ino())) {
            out.push((path, meta.len()));
        }
    }
}
