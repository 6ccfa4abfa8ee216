//! Where the bytes of packs come from.
//!
//! Everything above this module (decoding, verification, caches, layouts)
//! works on `(pack, offset, length)` reads and does not care whether the
//! pack is a file in `STORE/packs`, a signed archive served in place, or an
//! object on a remote server: each is a [`PackSource`]. [`LocalPacks`] is
//! the store's own directory.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use quick_cache::sync::Cache;

use crate::error::{Result, StoreError};

/// A provider of pack bytes, read by range.
pub trait PackSource: Send + Sync {
    /// Fills `buf` with the bytes at `offset` of pack `pack` (a file name
    /// such as `0123…cdef.pack`).
    ///
    /// Errors: [`StoreError::PackMissing`] when the pack does not exist
    /// (gc may have moved its chunks: the caller looks their locations up
    /// again), [`StoreError::PackShort`] when the range extends past the
    /// pack's end, anything else when the bytes could not be had.
    fn read_exact_at(&self, pack: &str, offset: u64, buf: &mut [u8]) -> Result<()>;

    /// Appends to `out` the bytes `raw` of the decoded block of
    /// `block_len` bytes at `offset` of pack `pack`, and returns true, when
    /// the source holds that block decoded already (a remote source
    /// decodes a block it fetched whole, to verify it before caching it);
    /// false, with `out` untouched, when it does not: the caller then reads
    /// the stored bytes and decodes them itself. Either way the caller
    /// verifies every chunk it takes, as it would have.
    fn decoded(
        &self,
        _pack: &str,
        _offset: u64,
        _block_len: u32,
        _raw: std::ops::Range<usize>,
        _out: &mut Vec<u8>,
    ) -> bool {
        false
    }

    /// Drops whatever the source keeps open: called when gc may have
    /// deleted or replaced packs, so that their space is freed.
    fn forget(&self);
}

/// Pack files kept open at once by [`LocalPacks`]: enough for the packs a
/// busy mount reads from (a pack holds 64 MiB), few enough that a daemon
/// holds a bounded number of descriptors and a pack gc deleted is closed
/// soon after.
pub const OPEN_PACKS: usize = 256;

/// The packs of a store directory (`STORE/packs`), with a bounded set of
/// open handles.
///
/// A handle stays usable while a reader holds it, even after gc deleted
/// the file (the bytes are immutable); handles leave the set when it is
/// full and all of them on [`PackSource::forget`], so a deleted pack's space
/// returns to the file system once its last reader is done.
pub struct LocalPacks {
    dir: PathBuf,
    open: Cache<Arc<str>, Arc<File>>,
}

impl LocalPacks {
    /// The packs in directory `dir`.
    pub fn new(dir: &Path) -> LocalPacks {
        LocalPacks {
            dir: dir.to_path_buf(),
            open: Cache::new(OPEN_PACKS),
        }
    }

    fn file(&self, pack: &str) -> Result<Arc<File>> {
        if let Some(file) = self.open.get(pack) {
            return Ok(file);
        }
        let path = self.dir.join(pack);
        let file = File::open(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                StoreError::PackMissing {
                    pack: pack.to_string(),
                }
            } else {
                StoreError::io(&path, e)
            }
        })?;
        let file = Arc::new(file);
        self.open.insert(Arc::from(pack), file.clone());
        Ok(file)
    }
}

impl PackSource for LocalPacks {
    fn read_exact_at(&self, pack: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
        let file = self.file(pack)?;
        file.read_exact_at(buf, offset).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                StoreError::PackShort {
                    pack: pack.to_string(),
                    offset,
                    len: buf.len() as u64,
                }
            } else {
                StoreError::io(self.dir.join(pack), e)
            }
        })
    }

    fn forget(&self) {
        self.open.clear();
    }
}

/// One file read as a single pack whatever name is asked for: a signed
/// archive (`.npk`, image), whose blocks have the pack block format.
pub struct SingleFile {
    file: File,
    path: PathBuf,
}

impl SingleFile {
    /// Reads `file`, opened from `path` (named in errors).
    pub fn new(file: File, path: &Path) -> SingleFile {
        SingleFile {
            file,
            path: path.to_path_buf(),
        }
    }
}

impl PackSource for SingleFile {
    fn read_exact_at(&self, _pack: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.file.read_exact_at(buf, offset).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                StoreError::PackShort {
                    pack: self.path.display().to_string(),
                    offset,
                    len: buf.len() as u64,
                }
            } else {
                StoreError::io(&self.path, e)
            }
        })
    }

    fn forget(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_short_packs_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.pack"), b"0123456789").unwrap();
        let packs = LocalPacks::new(dir.path());
        let mut buf = [0u8; 4];
        packs.read_exact_at("a.pack", 2, &mut buf).unwrap();
        assert_eq!(&buf, b"2345");
        assert!(matches!(
            packs.read_exact_at("b.pack", 0, &mut buf),
            Err(StoreError::PackMissing { pack }) if pack == "b.pack"
        ));
        assert!(matches!(
            packs.read_exact_at("a.pack", 8, &mut buf),
            Err(StoreError::PackShort {
                offset: 8,
                len: 4,
                ..
            })
        ));
    }

    #[test]
    fn forgotten_handles_let_deleted_packs_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.pack");
        std::fs::write(&path, b"abcd").unwrap();
        let packs = LocalPacks::new(dir.path());
        let mut buf = [0u8; 4];
        packs.read_exact_at("a.pack", 0, &mut buf).unwrap();
        std::fs::remove_file(&path).unwrap();
        // Still open: the bytes are immutable, a reader may finish.
        packs.read_exact_at("a.pack", 0, &mut buf).unwrap();
        packs.forget();
        assert!(matches!(
            packs.read_exact_at("a.pack", 0, &mut buf),
            Err(StoreError::PackMissing { .. })
        ));
    }
}
