//! Decoded copies: the contents of files kept whole and plain in
//! `STORE/decoded/`, one file per content, named by its content hash, for
//! the kernel to read itself (the kernel view stacks this directory as a
//! data-only layer before the FUSE mount, FORMAT.md section 15). By default
//! only large files get one ([`DEFAULT_MIN_SIZE`]); an admin who trades
//! disk for cold reads may decode smaller ones too, down to every file,
//! which is composefs's layout.
//!
//! Only root's `nip decode` writes them, through the store's read path (so
//! every chunk is verified before it is written), each to a temporary name
//! first and renamed once synced: a copy present under its final name is
//! whole. Daemons never write here. [`prune`] (`nip gc`, `nip decode
//! --prune-smaller`) removes the copies of contents no stored package holds
//! any more (a generation any mount still shows keeps its packages), and
//! those smaller than the threshold once no running kernel view may name
//! them: no kernel view is left naming a removed copy.

use std::collections::HashSet;
use std::fs;
use std::io::BufWriter;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::catalog::Catalog;
use crate::error::{Result, StoreError};
use crate::hash::{Hash, HashingWriter};
use crate::store::{Store, sync_dir};

/// The directory of decoded copies, in the store.
pub const DECODED_DIR: &str = "decoded";

/// The smallest file that gets a decoded copy unless told otherwise: the
/// files stored in frames of their own (a file of a block or more), the
/// ones read in large runs.
pub const DEFAULT_MIN_SIZE: u64 = 1 << 20;

/// The catalog `meta` key holding the smallest size any `nip decode` was
/// given: kernel views look for copies of files of at least that size.
const MIN_SIZE_KEY: &str = "decoded_min_size";

/// The smallest file a kernel view looks for a decoded copy of: the
/// smallest size any [`record_min_size`] recorded, else
/// [`DEFAULT_MIN_SIZE`]. Never 0: an empty file has no contents to copy.
pub fn min_size(catalog: &Catalog) -> Result<u64> {
    let recorded = catalog
        .meta(MIN_SIZE_KEY)?
        .and_then(|v| v.parse::<u64>().ok());
    Ok(recorded.unwrap_or(DEFAULT_MIN_SIZE).max(1))
}

/// Records that copies of files of `size` bytes or more are being written,
/// lowering what [`min_size`] answers if `size` is smaller, never raising
/// it (a routine `nip decode` does not undo an admin's smaller one).
/// Returns the size now recorded.
pub fn record_min_size(catalog: &Catalog, size: u64) -> Result<u64> {
    set_min_size(catalog, size.min(min_size(catalog)?))
}

/// Makes `size` (at least 1) what [`min_size`] answers, raised or lowered:
/// views made from now on look for copies of files that large, and the
/// smaller copies go once no running view may name them ([`prune`]).
/// Returns the size now recorded.
pub fn set_min_size(catalog: &Catalog, size: u64) -> Result<u64> {
    let size = size.max(1);
    catalog.set_meta(MIN_SIZE_KEY, &size.to_string())?;
    Ok(size)
}

/// The smallest copy that must stay: `threshold`, the one views made from
/// now on use ([`min_size`]), or the one a running kernel view said it may
/// name (its runtime record's `decoded_from`), whichever is smaller. A view
/// writes its record before it reads the threshold, and reads it again
/// after, so a prune that reads the records after changing the threshold
/// sees every copy a view may name.
fn keep_from(store: &Store, threshold: u64) -> Result<u64> {
    let views = crate::runtime::live(store.dir())?
        .into_iter()
        .map(|r| r.served.decoded_from)
        .filter(|&from| from > 0);
    Ok(views.fold(threshold, u64::min))
}

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
/// Its bytes are checked by [`decode`] and [`check`], not here: this is
/// what an image asks of every file it looks for a copy of.
pub fn has_copy(dir: &Path, hash: &Hash, size: u64) -> bool {
    fs::symlink_metadata(dir.join(name(hash))).is_ok_and(|m| m.is_file() && m.len() == size)
}

/// The contents `dir` holds copies under the name of, as far as names say
/// ([`has_copy`] checks one): none when there is no directory.
pub fn names(dir: &Path) -> Result<HashSet<Hash>> {
    Ok(our_files(dir)?
        .into_iter()
        .filter(|f| !f.temporary)
        .filter_map(|f| Hash::from_hex(&f.name))
        .collect())
}

/// A file of the directory of copies named as this module names them.
struct OurFile {
    /// Its name: a copy's (64 hex digits) or a temporary one.
    name: String,
    /// Whether it is a copy being written (`.HEX.PID.tmp`).
    temporary: bool,
}

/// The files of `dir` with names of ours ([`ours`]): none when there is no
/// directory; an error if a link or anything else stands in its place.
fn our_files(dir: &Path) -> Result<Vec<OurFile>> {
    if !real_dir(dir)? {
        return Ok(Vec::new());
    }
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| StoreError::io(dir, e))? {
        let entry = entry.map_err(|e| StoreError::io(dir, e))?;
        if let Some(name) = entry.file_name().to_str()
            && let Some(temporary) = ours(name)
        {
            files.push(OurFile {
                name: name.to_owned(),
                temporary,
            });
        }
    }
    Ok(files)
}

/// The content hash of the file at `path` (never through a link).
fn hash_file(path: &Path) -> std::io::Result<Hash> {
    let mut file = crate::regular::open_regular_nofollow(path)?;
    let mut hasher = blake3::Hasher::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(Hash(*hasher.finalize().as_bytes()))
}

/// Whether a file name is a copy's (64 lowercase hex digits) or one of a
/// copy being written (`.HEX.PID.tmp`): the only names this module writes,
/// and the only ones [`prune`] removes.
fn ours(file_name: &str) -> Option<bool> {
    let is_hex =
        |s: &str| s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if is_hex(file_name) {
        return Some(false);
    }
    let temp = file_name.strip_prefix('.')?.strip_suffix(".tmp")?;
    let (hex, pid) = temp.split_once('.')?;
    (is_hex(hex) && pid.bytes().all(|b| b.is_ascii_digit())).then_some(true)
}

/// The directory of copies, if it is one (a link there is never followed:
/// gc would remove what it points at).
fn real_dir(dir: &Path) -> Result<bool> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => Ok(true),
        Ok(_) => Err(StoreError::Invalid(format!(
            "{} is not a directory",
            dir.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StoreError::io(dir, e)),
    }
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
    /// Copies already there (their bytes checked).
    pub present: u64,
    /// Their bytes.
    pub present_bytes: u64,
    /// Copies found with other bytes than their name says, written anew.
    pub replaced: u64,
    /// Contents given no copy because their chunks, read back, hash to
    /// another name (the catalog's chunk list of the content is wrong: a
    /// remote's metadata lied): hex names.
    pub refused: Vec<String>,
}

/// The contents of at least `min_size` bytes (and at least one) of the
/// files of generation `generation`, each once, in the order they were
/// stored: a block's contents one after the other, so that each block is
/// decoded once, not once per file in it.
pub fn wanted(store: &Store, generation: i64, min_size: u64) -> Result<Vec<Wanted>> {
    Ok(store
        .catalog()
        .generation_blobs_at_least(generation, min_size.max(1))?
        .into_iter()
        .map(|(blob, hash, size)| Wanted { blob, hash, size })
        .collect())
}

/// The store's directory of copies, made (private to the store's owner,
/// as the store is) if missing; an error if something else is there.
pub fn ensure_dir(store_dir: &Path) -> Result<PathBuf> {
    let dir = dir(store_dir);
    match fs::create_dir(&dir) {
        Ok(()) => fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| StoreError::io(&dir, e))?,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            real_dir(&dir)?;
        }
        Err(e) => return Err(StoreError::io(&dir, e)),
    }
    Ok(dir)
}

/// Copies written between two syncs of the file system: one `syncfs` for
/// many small copies costs far less than an `fsync` of each.
const BATCH_BYTES: u64 = 256 << 20;
/// See [`BATCH_BYTES`].
const BATCH_FILES: usize = 4096;

/// Writes the decoded copy of each of `wanted` that the store lacks,
/// calling `progress` with the bytes of each content done (written or
/// found).
pub fn decode(store: &Store, wanted: &[Wanted], progress: &mut dyn FnMut(u64)) -> Result<Decoded> {
    let dir = ensure_dir(store.dir())?;
    let mut report = Decoded::default();
    let mut batch = Batch::new(&dir)?;
    let mut each = || -> Result<()> {
        for want in wanted {
            let present = has_copy(&dir, &want.hash, want.size);
            // A copy is served by the kernel without any check: one with other
            // bytes (a damaged disk, a hand's edit) is found and replaced here.
            let whole =
                present && hash_file(&dir.join(name(&want.hash))).is_ok_and(|h| h == want.hash);
            if whole {
                report.present += 1;
                report.present_bytes += want.size;
            } else {
                if present {
                    tracing::warn!(
                        "{}: the decoded copy does not hold its content; written anew",
                        dir.join(name(&want.hash)).display()
                    );
                    report.replaced += 1;
                }
                if batch.write(store, want)? {
                    report.written += 1;
                    report.written_bytes += want.size;
                } else {
                    report.refused.push(want.hash.to_hex());
                }
            }
            progress(want.size);
        }
        Ok(())
    };
    let done = each();
    // What was written is whole: put in place even when a later copy failed.
    let committed = batch.commit();
    done?;
    committed?;
    Ok(report)
}

/// Copies written under their temporary names, not yet synced nor renamed
/// into place: a crash leaves only temporary files (gc removes them).
struct Batch<'d> {
    dir: &'d Path,
    /// The directory, open: `syncfs` syncs its file system.
    handle: fs::File,
    /// Temporary and final name of each copy written.
    pending: Vec<(PathBuf, PathBuf)>,
    bytes: u64,
}

impl<'d> Batch<'d> {
    fn new(dir: &'d Path) -> Result<Batch<'d>> {
        let handle = fs::File::open(dir).map_err(|e| StoreError::io(dir, e))?;
        Ok(Batch {
            dir,
            handle,
            pending: Vec::new(),
            bytes: 0,
        })
    }

    /// Writes one copy under its temporary name (never through a link),
    /// made read-only, and commits the batch once it is large enough.
    /// False, and nothing kept, when the bytes written do not hash to the
    /// content's name.
    fn write(&mut self, store: &Store, want: &Wanted) -> Result<bool> {
        let dir = self.dir;
        // Named by the writer too: two `nip decode`s at once never write
        // into each other's file.
        let temp = dir.join(format!(".{}.{}.tmp", name(&want.hash), std::process::id()));
        let final_path = dir.join(name(&want.hash));
        // A temporary file a crash of this pid left, or a copy to replace.
        for stale in [&temp, &final_path] {
            crate::runtime::remove_if_present(stale)?;
        }
        match write_temp(store, &temp, want) {
            Ok(hash) if hash == want.hash => {}
            other => {
                let _ = fs::remove_file(&temp);
                return other.map(|_| false);
            }
        }
        self.pending.push((temp, final_path));
        self.bytes += want.size;
        if self.bytes >= BATCH_BYTES || self.pending.len() >= BATCH_FILES {
            self.commit()?;
        }
        Ok(true)
    }

    /// Syncs the copies written, renames them into place and syncs the
    /// directory: a file under a final name is whole, after a crash too.
    fn commit(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        rustix::fs::syncfs(&self.handle).map_err(|e| StoreError::io(self.dir, e.into()))?;
        for (temp, final_path) in self.pending.drain(..) {
            fs::rename(&temp, &final_path).map_err(|e| StoreError::io(&final_path, e))?;
        }
        self.bytes = 0;
        sync_dir(self.dir)
    }
}

/// Writes the contents of `want` to the new file `temp` (created
/// exclusively, never through a link), makes it read-only for all and
/// returns the BLAKE3 of the bytes written. Each chunk read is checked
/// against its own name, but only this says whether the chunks the
/// catalog lists for the content add up to the content its name says: a
/// copy is served by the kernel under that name, unchecked.
fn write_temp(store: &Store, temp: &Path, want: &Wanted) -> Result<Hash> {
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .custom_flags(libc::O_NOFOLLOW)
        .open(temp)
        .map_err(|e| StoreError::io(temp, e))?;
    let mut out = HashingWriter::new(BufWriter::with_capacity(1 << 20, file));
    let written = store.read_blob(want.blob, &mut out)?;
    let (out, hash) = out.finish();
    let file = out
        .into_inner()
        .map_err(|e| StoreError::io(temp, e.into_error()))?;
    if written != want.size {
        return Err(StoreError::Invalid(format!(
            "content {} read as {written} bytes, not {}",
            want.hash.to_hex(),
            want.size
        )));
    }
    // On the open file: a name can be swapped for a link meanwhile.
    file.set_permissions(fs::Permissions::from_mode(0o444))
        .map_err(|e| StoreError::io(temp, e))?;
    Ok(hash)
}

/// How long a temporary file may be another `nip decode`'s, still being
/// written: younger ones are left to it.
const TEMP_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);

/// What [`prune`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Pruned {
    /// Files removed.
    pub removed: u64,
    /// Their bytes.
    pub removed_bytes: u64,
    /// Copies smaller than the threshold kept because a running kernel
    /// view may name them (they go with a prune after it switches or is
    /// mounted again).
    pub held: u64,
    /// Their bytes.
    pub held_bytes: u64,
}

/// Removes every copy whose content no stored package holds, every copy
/// smaller than the threshold that no running view may name, and temporary files older than
/// [`TEMP_GRACE`] (a crash's leftovers). Only names this module writes are
/// touched, and only regular files.
pub fn prune(store: &Store) -> Result<Pruned> {
    let dir = dir(store.dir());
    let ours = our_files(&dir)?;
    let mut pruned = Pruned::default();
    if ours.is_empty() {
        return Ok(pruned);
    }
    // Read before the copies are looked at: a view starting meanwhile
    // names only copies of at least the threshold read here.
    let threshold = min_size(store.catalog())?;
    let keep_from = keep_from(store, threshold)?;
    let stored: HashSet<Hash> = store.catalog().blob_hashes()?.into_iter().collect();
    for file in ours {
        let path = dir.join(&file.name);
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        let keep = if file.temporary {
            meta.modified()
                .ok()
                .and_then(|m| m.elapsed().ok())
                .is_none_or(|age| age < TEMP_GRACE)
        } else {
            let stored = Hash::from_hex(&file.name).is_some_and(|hash| stored.contains(&hash));
            if stored && meta.len() < threshold && meta.len() >= keep_from {
                pruned.held += 1;
                pruned.held_bytes += meta.len();
            }
            stored && meta.len() >= keep_from
        };
        if keep || !meta.is_file() {
            continue;
        }
        crate::runtime::remove_if_present(&path)?;
        pruned.removed += 1;
        pruned.removed_bytes += meta.len();
    }
    if pruned.removed > 0 {
        sync_dir(&dir)?;
    }
    Ok(pruned)
}

/// The copies whose bytes are not the content their name says, with why
/// (`nip verify`): the kernel serves copies without checking them.
pub fn check(store: &Store) -> Result<Vec<(String, String)>> {
    let dir = dir(store.dir());
    let mut damaged = Vec::new();
    for file in our_files(&dir)?.into_iter().filter(|f| !f.temporary) {
        match hash_file(&dir.join(&file.name)) {
            Ok(hash) if name(&hash) == file.name => {}
            Ok(hash) => damaged.push((
                file.name,
                format!("holds content {} (run nip decode)", name(&hash)),
            )),
            Err(e) => damaged.push((file.name, e.to_string())),
        }
    }
    damaged.sort();
    Ok(damaged)
}

#[cfg(test)]
mod tests;
