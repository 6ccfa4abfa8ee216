//! Noticing that another process changed the store, so that the screen
//! follows it: every commit writes SQLite's write-ahead log (a checkpoint
//! the database file), which changes its size or modification time.
//!
//! Reading the catalog writes neither (only the shared-memory index, which
//! is left out), so the TUI's own reads do not wake it; its own changes
//! do, which costs one extra reload.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nexus_store::store::CATALOG_FILE;

/// A file's identity, size and modification time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        ino: meta.ino(),
        len: meta.len(),
        mtime: meta.mtime(),
        mtime_nsec: meta.mtime_nsec(),
    })
}

/// The catalog files of a store, and how they looked when last asked.
pub struct CatalogWatch {
    files: [PathBuf; 2],
    seen: [Option<Stamp>; 2],
}

impl CatalogWatch {
    /// Watches the catalog of the store in `dir`, as it is now.
    pub fn new(dir: &Path) -> CatalogWatch {
        let database = dir.join(CATALOG_FILE);
        let mut log = database.clone().into_os_string();
        log.push("-wal");
        let files = [database, PathBuf::from(log)];
        let seen = [stamp(&files[0]), stamp(&files[1])];
        CatalogWatch { files, seen }
    }

    /// True when a catalog file changed since the last call (or since
    /// [`CatalogWatch::new`]).
    pub fn changed(&mut self) -> bool {
        let now = [stamp(&self.files[0]), stamp(&self.files[1])];
        let changed = now != self.seen;
        self.seen = now;
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_is_noticed_and_a_read_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let store_dir = dir.path().join("store");
        let store = nexus_store::Store::init(&store_dir).unwrap();
        let mut watch = CatalogWatch::new(&store_dir);
        assert!(!watch.changed());
        store.catalog().current_members().unwrap();
        store.catalog().pins().unwrap();
        assert!(!watch.changed(), "reads change nothing");
        // Any committed write: a meta value is the smallest.
        store.catalog().set_meta("tui-watch-test", "1").unwrap();
        assert!(watch.changed(), "a commit is noticed");
        assert!(!watch.changed(), "once");
    }
}
