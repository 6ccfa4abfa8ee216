//! The on-disk cache of blocks fetched from remotes (FORMAT.md, "Remote
//! block cache"): one file per block, `STORE/remote-cache/blocks/PACK/
//! OFFSET-LENGTH`, holding a magic, the BLAKE3 of the block's bytes and
//! the bytes as stored in the pack.
//!
//! Only blocks verified against the catalog are written (by
//! [`crate::source::RemotePacks`]); every read checks the file's hash, and
//! a file that fails it (a torn write, a damaged disk) is deleted and
//! counts as absent. The block reader above verifies every chunk against
//! its name again, so a cache file can never serve a wrong byte.
//!
//! The cache is bounded: when the bytes written since the last look would
//! take it past its limit, the files are listed and the least recently
//! used (by modification time, which a hit refreshes at most once a
//! minute) are deleted until it holds 90 % of the limit. Several processes
//! (the mount daemons, fetchers, `nip prefetch`) share the directory, each
//! seeing the others' writes only when it lists the files: so each also
//! lists them again after writing a sixteenth of the limit, and together
//! they pass the limit by at most that share each. Files appear by
//! rename, whole, and a reader holds its open file even if another process
//! evicts it meanwhile, so eviction never breaks a read. The catalog (the
//! metadata of every generation) is not in the cache: it is never evicted.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use nexus_store::Hash;

use crate::meta::is_pack_name;

/// First bytes of a cache file.
const MAGIC: &[u8; 8] = b"NXRBLK01";
/// Bytes before the block: magic and hash.
const HEADER: usize = 8 + 32;
/// A hit refreshes a file's time at most this often.
const TOUCH_EVERY: Duration = Duration::from_secs(60);
/// Eviction leaves the cache at this share of its limit.
const LOW_WATER: f64 = 0.9;
/// Remembered hits (for [`TOUCH_EVERY`]); forgotten all at once beyond.
const TOUCHED_MAX: usize = 65_536;
/// Age past which a temporary file is a killed writer's.
const STALE_TEMPORARY: Duration = Duration::from_secs(600);
/// A process lists the cache again after writing this share of its limit,
/// to see what the others wrote.
const LOOK_AGAIN_EVERY: u64 = 16;

/// The cache directory's name inside the store.
pub const CACHE_DIR: &str = "remote-cache";

/// How much the cache holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    /// Cached blocks.
    pub blocks: u64,
    /// Their bytes on disk.
    pub bytes: u64,
}

/// The block cache of one store.
pub struct DiskCache {
    dir: PathBuf,
    limit: u64,
    /// Bytes in the cache as of the last listing, plus what was written
    /// since (other processes' writes are seen at the next listing).
    estimate: AtomicU64,
    /// Bytes this process wrote since the last listing.
    written_since_look: AtomicU64,
    touched: Mutex<HashMap<PathBuf, Instant>>,
    evicting: Mutex<()>,
}

impl DiskCache {
    /// The cache in `STORE/remote-cache`, holding at most `limit` bytes
    /// (its directories are made, 0700, by the first block cached).
    pub fn open(store_dir: &Path, limit: u64) -> std::io::Result<DiskCache> {
        let dir = store_dir.join(CACHE_DIR);
        let cache = DiskCache {
            dir,
            limit,
            estimate: AtomicU64::new(0),
            written_since_look: AtomicU64::new(0),
            touched: Mutex::new(HashMap::new()),
            evicting: Mutex::new(()),
        };
        let usage = cache.usage();
        cache.estimate.store(usage.bytes, Ordering::Relaxed);
        if usage.bytes > limit {
            cache.evict();
        }
        Ok(cache)
    }

    /// The limit in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The file of a block, if `pack` is a pack name.
    fn path(&self, pack: &str, offset: u64, len: usize) -> Option<PathBuf> {
        let stem = pack.strip_suffix(nexus_store::pack::PACK_SUFFIX)?;
        is_pack_name(pack).then(|| {
            self.dir
                .join("blocks")
                .join(stem)
                .join(format!("{offset:016x}-{len:08x}"))
        })
    }

    /// True when the block is cached (not checked).
    pub fn contains(&self, pack: &str, offset: u64, len: usize) -> bool {
        self.path(pack, offset, len).is_some_and(|p| p.is_file())
    }

    /// Fills `buf` with the cached block at `offset` of `pack` (as long as
    /// `buf`); false when it is not cached or its file fails its hash
    /// (then deleted).
    pub fn get(&self, pack: &str, offset: u64, buf: &mut [u8]) -> bool {
        let Some(path) = self.path(pack, offset, buf.len()) else {
            return false;
        };
        let Ok(mut file) = File::open(&path) else {
            return false;
        };
        let mut header = [0u8; HEADER];
        let read = file
            .read_exact(&mut header)
            .and_then(|()| file.read_exact(buf));
        // Nothing may follow the block.
        let trailing = file.read(&mut [0u8; 1]).map(|n| n > 0).unwrap_or(true);
        if read.is_err()
            || trailing
            || &header[..8] != MAGIC
            || header[8..] != *Hash::of(buf).as_bytes()
        {
            tracing::warn!(
                "remote cache: {} is damaged; deleting it (the block is fetched again)",
                path.display()
            );
            let _ = fs::remove_file(&path);
            return false;
        }
        self.touch(&path, &file);
        true
    }

    /// Deletes the cached block at `offset` of `pack`, if any.
    pub fn remove(&self, pack: &str, offset: u64, len: usize) {
        if let Some(path) = self.path(pack, offset, len)
            && let Err(e) = fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("remote cache: deleting {}: {e}", path.display());
        }
    }

    /// Refreshes the file's time (its recency) at most every minute.
    fn touch(&self, path: &Path, file: &File) {
        let mut touched = self.touched.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if touched
            .get(path)
            .is_some_and(|t| now.duration_since(*t) < TOUCH_EVERY)
        {
            return;
        }
        if touched.len() >= TOUCHED_MAX {
            touched.clear();
        }
        touched.insert(path.to_path_buf(), now);
        drop(touched);
        let _ = file.set_modified(SystemTime::now());
    }

    /// Caches `bytes` as the block at `offset` of `pack` (the caller has
    /// verified them). A failure only loses the cache entry.
    pub fn put(&self, pack: &str, offset: u64, bytes: &[u8]) {
        let Some(path) = self.path(pack, offset, bytes.len()) else {
            return;
        };
        if let Err(e) = self.write(&path, bytes) {
            tracing::warn!("remote cache: writing {}: {e}", path.display());
            return;
        }
        let len = (bytes.len() + HEADER) as u64;
        let total = self.estimate.fetch_add(len, Ordering::Relaxed) + len;
        let written = self.written_since_look.fetch_add(len, Ordering::Relaxed) + len;
        if total > self.limit || written > self.limit / LOOK_AGAIN_EVERY {
            self.evict();
        }
    }

    fn write(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        let tmp_dir = self.dir.join("tmp");
        let parent = path.parent().unwrap_or(&tmp_dir);
        for d in [&self.dir, &self.dir.join("blocks"), &tmp_dir, parent] {
            match fs::DirBuilder::new().mode(0o700).create(d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).map_err(std::io::Error::other)?;
        let tmp = self.dir.join("tmp").join(hex::encode(nonce));
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        let written = file
            .write_all(MAGIC)
            .and_then(|()| file.write_all(Hash::of(bytes).as_bytes()))
            .and_then(|()| file.write_all(bytes));
        // No fsync: a torn file fails its hash and is fetched again.
        match written.and_then(|()| fs::rename(&tmp, path)) {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// Every cached file with its size and time.
    fn files(&self) -> Vec<(PathBuf, u64, SystemTime)> {
        let mut out = Vec::new();
        let Ok(packs) = fs::read_dir(self.dir.join("blocks")) else {
            return out;
        };
        for pack in packs.flatten() {
            let Ok(blocks) = fs::read_dir(pack.path()) else {
                continue;
            };
            for block in blocks.flatten() {
                if let Ok(meta) = block.metadata()
                    && meta.is_file()
                {
                    let time = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    out.push((block.path(), meta.len(), time));
                }
            }
        }
        out
    }

    /// What the cache holds now.
    pub fn usage(&self) -> Usage {
        let files = self.files();
        Usage {
            blocks: files.len() as u64,
            bytes: files.iter().map(|(_, len, _)| len).sum(),
        }
    }

    /// Lists the cache; when it holds more than its limit, deletes the
    /// least recently used files until it holds at most [`LOW_WATER`] of
    /// it. Deletes the temporary files a killed writer left behind too
    /// (which the limit does not count).
    pub fn evict(&self) {
        let Ok(_one) = self.evicting.try_lock() else {
            return; // another thread is at it
        };
        self.written_since_look.store(0, Ordering::Relaxed);
        self.remove_stale_temporaries();
        let mut files = self.files();
        let mut total: u64 = files.iter().map(|(_, len, _)| len).sum();
        let target = (self.limit as f64 * LOW_WATER) as u64;
        if total > self.limit {
            files.sort_by_key(|(_, _, time)| *time);
            let mut removed = 0u64;
            for (path, len, _) in files {
                if total <= target {
                    break;
                }
                if fs::remove_file(&path).is_ok() {
                    total -= len;
                    removed += 1;
                    // Empty pack directories go with their last block.
                    if let Some(parent) = path.parent() {
                        let _ = fs::remove_dir(parent);
                    }
                }
            }
            tracing::debug!("remote cache: evicted {removed} blocks");
        }
        self.estimate.store(total, Ordering::Relaxed);
    }

    /// Deletes temporary files older than [`STALE_TEMPORARY`]: a write
    /// renames its file into place within moments, so an older one is a
    /// killed process's.
    fn remove_stale_temporaries(&self) {
        let Ok(entries) = fs::read_dir(self.dir.join("tmp")) else {
            return;
        };
        let now = SystemTime::now();
        for entry in entries.flatten() {
            let stale = entry.metadata().is_ok_and(|m| {
                m.is_file()
                    && m.modified()
                        .ok()
                        .and_then(|t| now.duration_since(t).ok())
                        .is_some_and(|age| age > STALE_TEMPORARY)
            });
            if stale {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    /// Deletes every cached block.
    pub fn clear(&self) -> std::io::Result<()> {
        match fs::remove_dir_all(self.dir.join("blocks")) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        self.estimate.store(0, Ordering::Relaxed);
        self.written_since_look.store(0, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACK: &str = "0123456789abcdef0123456789abcdef.pack";

    #[test]
    fn blocks_come_back_and_damaged_files_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 1 << 20).unwrap();
        let block = vec![7u8; 1000];
        let mut buf = vec![0u8; 1000];
        assert!(!cache.get(PACK, 8, &mut buf));
        cache.put(PACK, 8, &block);
        assert!(cache.contains(PACK, 8, 1000));
        assert!(cache.get(PACK, 8, &mut buf));
        assert_eq!(buf, block);
        // Another length is another entry.
        assert!(!cache.get(PACK, 8, &mut [0u8; 999]));
        // A flipped byte: refused and deleted.
        let path = cache.path(PACK, 8, 1000).unwrap();
        let mut bytes = fs::read(&path).unwrap();
        bytes[HEADER + 10] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(!cache.get(PACK, 8, &mut buf));
        assert!(!path.exists());
        // Names that are not pack names never make paths.
        cache.put("../../etc/passwd", 0, &block);
        assert!(!cache.get("../../etc/passwd", 0, &mut buf));
    }

    #[test]
    fn the_least_recently_used_blocks_leave_first() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 10 * 1040).unwrap();
        let block = vec![1u8; 1000];
        for i in 0..10u64 {
            cache.put(PACK, 8 + i * 1000, &block);
            // Distinct times, oldest first.
            let path = cache.path(PACK, 8 + i * 1000, 1000).unwrap();
            let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + i);
            File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
        // Block 0 used again: recent.
        cache.touched.lock().unwrap().clear();
        assert!(cache.get(PACK, 8, &mut vec![0u8; 1000]));
        cache.put(PACK, 8 + 10 * 1000, &block);
        let usage = cache.usage();
        assert!(usage.bytes <= 10 * 1040, "{usage:?}");
        assert!(cache.contains(PACK, 8, 1000), "recently used");
        assert!(!cache.contains(PACK, 8 + 1000, 1000), "least recently used");
        assert!(cache.contains(PACK, 8 + 10 * 1000, 1000), "just written");
    }

    #[test]
    fn processes_sharing_the_cache_keep_it_near_its_limit_together() {
        let dir = tempfile::tempdir().unwrap();
        let limit = 64 * 1040;
        // Four caches on one directory stand for four processes (a
        // daemon, fetchers, `nip prefetch`), each with the same limit.
        let caches: Vec<DiskCache> = (0..4)
            .map(|_| DiskCache::open(dir.path(), limit).unwrap())
            .collect();
        let block = vec![3u8; 1000];
        let mut most = 0;
        for i in 0..400u64 {
            caches[(i % 4) as usize].put(PACK, 8 + i * 1000, &block);
            most = most.max(caches[0].usage().bytes);
        }
        let slack = caches.len() as u64 * (limit / LOOK_AGAIN_EVERY + 1040);
        assert!(
            most <= limit + slack,
            "four processes took the cache to {most} bytes, its limit {limit}"
        );
    }

    #[test]
    fn a_killed_writers_temporary_files_go_with_the_next_eviction() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 1000).unwrap();
        cache.put(PACK, 8, &[1u8; 100]);
        let (old, fresh) = (cache.dir.join("tmp/old"), cache.dir.join("tmp/fresh"));
        for path in [&old, &fresh] {
            fs::write(path, [0u8; 500]).unwrap();
        }
        let long_ago = SystemTime::now() - 2 * STALE_TEMPORARY;
        File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        cache.put(PACK, 9000, &[2u8; 900]);
        assert!(!old.exists(), "a stale temporary file stayed");
        assert!(fresh.exists(), "a write in progress lost its file");
    }
}
