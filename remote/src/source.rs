//! [`RemotePacks`]: the pack source of a store with remotes. A pack in the
//! store's own `packs/` is read there; a pack that lives on a remote is read
//! by range from the on-disk cache or, failing that, from the remote —
//! whole blocks, as the block reader asks for them — verified against the
//! catalog before anything is served or cached.
//!
//! Request collapsing: concurrent readers of one block (two FUSE threads,
//! two guests, prefetch next to a program) wait for the one fetch of the
//! first, then read the cache. Within one process that is one fetch per
//! block; two processes sharing a store (a mount and `nip prefetch`) each
//! fetch a block the other is fetching at the same moment, then share the
//! cached copy.
//!
//! Offline: a remote that fails a read (after its retries, within its
//! deadline) is marked unreachable for a few seconds, during which uncached
//! reads from it fail at once instead of each waiting out the deadline; one
//! line is logged when it goes and one when it is back. Cached blocks and
//! local packs read as before.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nexus_store::catalog::{Catalog, RemoteRow};
use nexus_store::pack::{ChunkLocation, decode_block};
use nexus_store::read::{LocalPacks, PackSource};
use nexus_store::{CATALOG_FILE, PACKS_DIR};
use nexus_store::{Result, StoreError};

use crate::cache::DiskCache;
use crate::fetcher::{Clients, FetcherLink};
use crate::settings::RemoteSettings;

/// How long a remote that failed a read is treated as unreachable.
const OFFLINE_FOR: Duration = Duration::from_secs(3);

/// What a source has fetched, for reports and tests.
#[derive(Default, Debug)]
pub struct Counters {
    /// Range requests that reached a remote.
    pub fetches: AtomicU64,
    /// Bytes they returned.
    pub bytes: AtomicU64,
    /// Blocks served from the disk cache.
    pub cache_hits: AtomicU64,
    /// Fetched blocks refused (wrong or short bytes).
    pub refused: AtomicU64,
}

/// A remote's health as this process saw it.
#[derive(Default)]
struct Health {
    /// Unreachable until then (after a failed read).
    offline_until: Option<Instant>,
    /// The failure, repeated to readers meanwhile.
    last_error: String,
}

/// One block in flight: readers of the same block wait on its lock.
type Inflight = Arc<Mutex<()>>;

/// The pack source of a store whose generations may read from remotes.
pub struct RemotePacks {
    local: LocalPacks,
    catalog: Mutex<Catalog>,
    cache: DiskCache,
    /// Pack name → its remote (packs are never renamed, and a pack's
    /// remote changes only when another remote is pulled from, which is
    /// still a remote serving the same bytes).
    remotes_of: Mutex<HashMap<String, Arc<RemoteRow>>>,
    clients: Clients,
    /// The fetcher process remote reads go through, once set (a
    /// confined daemon has no network of its own).
    link: OnceLock<FetcherLink>,
    health: Mutex<HashMap<i64, Health>>,
    inflight: Mutex<HashMap<(String, u64, usize), Inflight>>,
    counters: Arc<Counters>,
    /// The access record (`remote-cache/access.log`), opened on first use.
    record: Mutex<Option<std::fs::File>>,
    store_dir: std::path::PathBuf,
}

/// The access record: every block fetched from a remote, in order, one
/// `PACK OFFSET LENGTH` line each (what programs read at their first
/// start: `nip prefetch --recorded` fetches the same ahead of time).
pub const ACCESS_LOG: &str = "access.log";
/// The record stops growing past this size.
const ACCESS_LOG_MAX: u64 = 4 << 20;

impl RemotePacks {
    /// The source of the store in `store_dir`, with its remote settings.
    pub fn open(store_dir: &Path, settings: &RemoteSettings) -> Result<RemotePacks> {
        let catalog = Catalog::open_existing(&store_dir.join(CATALOG_FILE))?;
        let cache = DiskCache::open(store_dir, settings.cache_bytes)
            .map_err(|e| StoreError::io(store_dir.join(crate::cache::CACHE_DIR), e))?;
        Ok(RemotePacks {
            local: LocalPacks::new(&store_dir.join(PACKS_DIR)),
            catalog: Mutex::new(catalog),
            cache,
            remotes_of: Mutex::new(HashMap::new()),
            clients: Clients::new(settings.timeouts()),
            link: OnceLock::new(),
            health: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            counters: Arc::default(),
            record: Mutex::new(None),
            store_dir: store_dir.to_path_buf(),
        })
    }

    /// What this source fetched so far.
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// The disk cache.
    pub fn cache(&self) -> &DiskCache {
        &self.cache
    }

    fn catalog(&self) -> std::sync::MutexGuard<'_, Catalog> {
        self.catalog.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The remote holding `pack`, if it is a remote pack.
    fn remote_of(&self, pack: &str) -> Result<Option<Arc<RemoteRow>>> {
        let mut known = self.remotes_of.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(remote) = known.get(pack) {
            return Ok(Some(remote.clone()));
        }
        // Not cached negatively: a pull may index the pack any moment.
        let found = self.catalog().pack_remote(pack)?.map(Arc::new);
        if let Some(remote) = &found {
            known.insert(pack.to_string(), remote.clone());
        }
        Ok(found)
    }

    /// The deadlines of its remote reads.
    pub fn timeouts(&self) -> crate::client::Timeouts {
        self.clients.timeouts()
    }

    /// The remotes the catalog lists now.
    pub fn remotes(&self) -> Result<Vec<RemoteRow>> {
        self.catalog().remotes()
    }

    /// From now on, reads from remotes go through the fetcher process at
    /// the other end of `link` (module [`crate::fetcher`]). Only the first
    /// call counts.
    pub fn fetch_through(&self, link: FetcherLink) {
        let _ = self.link.set(link);
    }

    /// Fails at once while `remote` is marked unreachable.
    fn check_online(&self, remote: &RemoteRow, pack: &str) -> Result<()> {
        let health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = health.get(&remote.id)
            && h.offline_until.is_some_and(|t| Instant::now() < t)
        {
            return Err(StoreError::Remote {
                pack: pack.to_string(),
                remote: remote.name.clone(),
                reason: format!("unreachable ({})", h.last_error),
            });
        }
        Ok(())
    }

    /// Records the outcome of a fetch from `remote`, logging the changes.
    fn record_health(&self, remote: &RemoteRow, failure: Option<&str>) {
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let h = health.entry(remote.id).or_default();
        match failure {
            Some(why) => {
                if h.offline_until.is_none() {
                    tracing::error!(
                        "remote {} ({}) is unreachable: {why}; files not in the local cache fail with EIO until it answers",
                        remote.name,
                        remote.url
                    );
                }
                h.offline_until = Some(Instant::now() + OFFLINE_FOR);
                h.last_error = why.to_string();
            }
            None => {
                if h.offline_until.take().is_some() {
                    tracing::warn!("remote {} ({}) answers again", remote.name, remote.url);
                }
            }
        }
    }

    /// Fetches `buf.len()` bytes at `offset` of remote pack `pack`,
    /// verifies them as the block the catalog places there, caches them.
    fn fetch(&self, remote: &RemoteRow, pack: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check_online(remote, pack)?;
        let range = offset..offset + buf.len() as u64;
        let fetched = match self.link.get() {
            Some(link) => link.get_range(remote, pack, range),
            None => self.clients.get_range(remote, pack, range),
        };
        let bytes = match fetched {
            Ok(bytes) => bytes,
            Err(e) => {
                let why = e.to_string();
                self.record_health(remote, Some(&why));
                return Err(StoreError::Remote {
                    pack: pack.to_string(),
                    remote: remote.name.clone(),
                    reason: why,
                });
            }
        };
        self.record_health(remote, None);
        self.counters.fetches.fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        let cacheable = match self.verify(pack, offset, &bytes) {
            Ok(cacheable) => cacheable,
            Err(why) => {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    "remote {} served wrong bytes for pack {pack} at {offset}: {why}; refused",
                    remote.name
                );
                return Err(StoreError::Remote {
                    pack: pack.to_string(),
                    remote: remote.name.clone(),
                    reason: format!("served wrong bytes at {offset}: {why}"),
                });
            }
        };
        if cacheable {
            self.cache.put(pack, offset, &bytes);
            self.record(pack, offset, bytes.len());
        }
        buf.copy_from_slice(&bytes);
        Ok(())
    }

    /// Checks fetched bytes that should be the block at `offset` of `pack`:
    /// they decode, every chunk of the block's table hashes to its name,
    /// and every chunk the catalog places in this block is listed where
    /// the catalog says. True when they are such a block (and may be
    /// cached); false for a range the catalog knows no block at (served
    /// uncached: the block reader verifies the chunks it takes from it).
    fn verify(&self, pack: &str, offset: u64, bytes: &[u8]) -> std::result::Result<bool, String> {
        let indexed = self
            .catalog()
            .block_chunks(pack, offset)
            .map_err(|e| e.to_string())?;
        if indexed.is_empty() {
            return Ok(false);
        }
        let block = decode_block(bytes)?;
        let at = |hash, inner, len| ChunkLocation {
            hash,
            pack: pack.into(),
            offset,
            block_len: bytes.len() as u32,
            inner,
            len,
        };
        for e in &block.entries {
            block
                .chunk(&at(e.hash, e.inner, e.len))
                .map_err(|e| e.to_string())?;
        }
        for c in &indexed {
            block
                .chunk(&at(c.hash, c.inner, c.len))
                .map_err(|e| e.to_string())?;
        }
        Ok(true)
    }

    /// Appends a fetched block to the access record (best effort).
    fn record(&self, pack: &str, offset: u64, len: usize) {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut slot = self.record.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            let path = self
                .store_dir
                .join(crate::cache::CACHE_DIR)
                .join(ACCESS_LOG);
            *slot = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)
                .ok();
        }
        if let Some(file) = slot.as_mut()
            && file.metadata().is_ok_and(|m| m.len() < ACCESS_LOG_MAX)
        {
            let _ = writeln!(file, "{pack} {offset} {len}");
        }
    }

    /// True when the block is in the local packs or the cache (no read).
    pub fn is_local(&self, pack: &str, offset: u64, len: usize) -> Result<bool> {
        Ok(self.remote_of(pack)?.is_none() || self.cache.contains(pack, offset, len))
    }
}

impl std::fmt::Debug for RemotePacks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemotePacks")
            .field("store_dir", &self.store_dir)
            .field("through_fetcher", &self.link.get().is_some())
            .finish_non_exhaustive()
    }
}

impl PackSource for RemotePacks {
    fn read_exact_at(&self, pack: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
        match self.local.read_exact_at(pack, offset, buf) {
            Err(StoreError::PackMissing { .. }) => {}
            other => return other,
        }
        let Some(remote) = self.remote_of(pack)? else {
            return Err(StoreError::PackMissing {
                pack: pack.to_string(),
            });
        };
        // Readers ask for a block's head, then for the frames they need
        // (FORMAT.md, section 3); a remote block is fetched, verified and
        // cached whole, and the part asked for copied out of it.
        let holding = self
            .catalog()
            .block_holding(pack, offset, buf.len() as u64)?;
        match holding {
            Some((start, len)) if (start, len as usize) != (offset, buf.len()) => {
                let mut whole = vec![0; len as usize];
                self.read_block(&remote, pack, start, &mut whole)?;
                let from = (offset - start) as usize;
                buf.copy_from_slice(&whole[from..from + buf.len()]);
                Ok(())
            }
            _ => self.read_block(&remote, pack, offset, buf),
        }
    }

    fn forget(&self) {
        self.local.forget();
        self.remotes_of
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

impl RemotePacks {
    /// Reads the block (or, when the catalog knows no block there, the
    /// range) at `offset` of remote pack `pack` into `buf`: from the cache,
    /// or fetched once however many readers ask at the same time.
    fn read_block(
        &self,
        remote: &Arc<RemoteRow>,
        pack: &str,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<()> {
        if self.cache.get(pack, offset, buf) {
            self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        // One fetch per block: later readers wait for the first, then find
        // its bytes in the cache.
        let key = (pack.to_string(), offset, buf.len());
        let slot = self
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        let result = {
            let _turn = slot.lock().unwrap_or_else(|p| p.into_inner());
            if self.cache.get(pack, offset, buf) {
                self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
                Ok(())
            } else {
                self.fetch(remote, pack, offset, buf)
            }
        };
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if inflight.get(&key).is_some_and(|s| Arc::ptr_eq(s, &slot))
            && Arc::strong_count(&slot) <= 2
        {
            inflight.remove(&key);
        }
        result
    }
}
