//! Decoded copies: the contents of large files kept whole and plain in
//! `STORE/decoded/`, one file per content, named by its content hash, for
//! the kernel to read itself (the kernel view stacks this directory as a
//! data-only layer before the FUSE mount, FORMAT.md section 15).
//!
//! Only root's `nip decode` writes them, through the store's read path (so
//! every chunk is verified before it is written), each to a temporary name
//! first and renamed once synced: a copy present under its final name is
//! whole. Daemons never write here. Copies of contents no stored package
//! holds any more are removed by [`prune`] (`nip gc` runs it), and only
//! those: a generation any mount still shows keeps its packages, so no
//! kernel view is left naming a removed copy.

use std::collections::HashSet;
use std::fs;
use std::io::BufWriter;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Result, StoreError};
use crate::hash::Hash;
use crate::store::{Store, sync_dir};

/// The directory of decoded copies, in the store.
pub const DECODED_DIR: &str = "decoded";

/// The smallest file that gets a decoded copy: the files stored in frames
/// of their own (a file of a block or more), the ones read in large runs.
pub const MIN_SIZE: u64 = 1 << 20;

/// The name of the copy of content `hash`: its hexadecimal form.
pub fn name(hash: &Hash) -> String {
    hash.to_hex()
}

/// The decoded-copies directory of the store at `store_dir`.
pub fn dir(store_dir: &Path) -> PathBuf {
    store_dir.join(DECODED_DIR)
}

/// Whether `dir` holds a whole copy of content `hash` of `size` bytes: a
/// regular file of that size under its name (never followed if a link).
pub fn has_copy(dir: &Path, hash: &Hash, size: u64) -> bool {
    fs::symlink_metadata(dir.join(name(hash))).is_ok_and(|m| m.is_file() && m.len() == size)
}

/// One content to decode.
#[derive(Clone, Debug)]
pub struct Wanted {
    /// The blob's catalog id.
    pub blob: i64,
    /// Its content hash.
    pub hash: Hash,
    /// Its size in bytes.
    pub size: u64,
}

/// What [`decode`] did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Decoded {
    /// Copies written.
    pub written: u64,
    /// Their bytes.
    pub written_bytes: u64,
    /// Copies already there.
    pub present: u64,
    /// Their bytes.
    pub present_bytes: u64,
}

/// The contents of at least [`MIN_SIZE`] bytes of the files of generation
/// `generation`, each once, largest first.
pub fn wanted(store: &Store, generation: i64) -> Result<Vec<Wanted>> {
    Ok(store
        .catalog()
        .generation_blobs_at_least(generation, MIN_SIZE)?
        .into_iter()
        .map(|(blob, hash, size)| Wanted { blob, hash, size })
        .collect())
}

/// Writes the decoded copy of each of `wanted` that the store lacks,
/// calling `progress` with the bytes of each content done (written or
/// found).
pub fn decode(store: &Store, wanted: &[Wanted], progress: &mut dyn FnMut(u64)) -> Result<Decoded> {
    let dir = dir(store.dir());
    make_dir(&dir)?;
    let mut report = Decoded::default();
    for want in wanted {
        if has_copy(&dir, &want.hash, want.size) {
            report.present += 1;
            report.present_bytes += want.size;
        } else {
            write_copy(store, &dir, want)?;
            report.written += 1;
            report.written_bytes += want.size;
        }
        progress(want.size);
    }
    sync_dir(&dir)?;
    Ok(report)
}

/// Makes the directory, private to the store's owner as the store is.
fn make_dir(dir: &Path) -> Result<()> {
    match fs::create_dir(dir) {
        Ok(()) => fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| StoreError::io(dir, e)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let meta = fs::symlink_metadata(dir).map_err(|e| StoreError::io(dir, e))?;
            if meta.is_dir() {
                Ok(())
            } else {
                Err(StoreError::Invalid(format!(
                    "{} is not a directory",
                    dir.display()
                )))
            }
        }
        Err(e) => Err(StoreError::io(dir, e)),
    }
}

/// Writes one copy: to a temporary name (never through a link), synced,
/// then renamed into place read-only.
fn write_copy(store: &Store, dir: &Path, want: &Wanted) -> Result<()> {
    let temp = dir.join(format!(".{}.tmp", name(&want.hash)));
    let final_path = dir.join(name(&want.hash));
    // A temporary file a crash left, or a stale copy of another size.
    for stale in [&temp, &final_path] {
        crate::runtime::remove_if_present(stale)?;
    }
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&temp)
        .map_err(|e| StoreError::io(&temp, e))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let written = store.read_blob(want.blob, &mut out)?;
    let file = out
        .into_inner()
        .map_err(|e| StoreError::io(&temp, e.into_error()))?;
    if written != want.size {
        let _ = fs::remove_file(&temp);
        return Err(StoreError::Invalid(format!(
            "content {} read as {written} bytes, not {}",
            want.hash.to_hex(),
            want.size
        )));
    }
    file.sync_all().map_err(|e| StoreError::io(&temp, e))?;
    fs::set_permissions(&temp, fs::Permissions::from_mode(0o444))
        .map_err(|e| StoreError::io(&temp, e))?;
    fs::rename(&temp, &final_path).map_err(|e| StoreError::io(&final_path, e))?;
    Ok(())
}

/// Removes every copy (and leftover temporary file) whose content no
/// stored package holds; returns how many files it removed and their bytes.
pub fn prune(store: &Store) -> Result<(u64, u64)> {
    let dir = dir(store.dir());
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(StoreError::io(&dir, e)),
    };
    let stored: HashSet<String> = store
        .catalog()
        .blob_hashes_at_least(MIN_SIZE)?
        .iter()
        .map(name)
        .collect();
    let (mut files, mut bytes) = (0, 0);
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(&dir, e))?;
        let file_name = entry.file_name();
        if file_name.to_str().is_some_and(|n| stored.contains(n)) {
            continue;
        }
        let path = entry.path();
        let size = entry.metadata().map_or(0, |m| m.len());
        fs::remove_file(&path).map_err(|e| StoreError::io(&path, e))?;
        files += 1;
        bytes += size;
    }
    if files > 0 {
        sync_dir(&dir)?;
    }
    Ok((files, bytes))
}

#[cfg(test)]
mod tests;
