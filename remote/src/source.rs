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
//! Read-ahead (daemons, [`RemotePacks::start_read_ahead`]): after a block
//! is fetched on demand that ends a run of [`SEQUENTIAL_BLOCKS`] blocks
//! read one after the other in its pack (a sequential reader), the
//! [`AHEAD_BLOCKS`] blocks that follow it in its pack — the rest of a
//! large file, or the next files of its package, which a pack keeps
//! together — are fetched in one range request on another thread, verified
//! and cached like any block, while the reader goes on; reading the last
//! block of such a run queues the next run, so a sequential reader keeps a
//! run in flight ahead of it. A block being fetched ahead counts as in
//! flight: its readers wait for it.
//!
//! Offline: a remote that fails a read (after its retries, within its
//! deadline) is marked unreachable for a few seconds, during which uncached
//! reads from it fail at once instead of each waiting out the deadline; one
//! line is logged when it goes and one when it is back. Cached blocks and
//! local packs read as before.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, TryLockError};

use bytes::Bytes;
use crossbeam_channel::Sender;
use quick_cache::Weighter;
use quick_cache::sync::Cache;
use std::time::{Duration, Instant};

use nexus_store::catalog::{Catalog, RemoteRow};
use nexus_store::pack::{ChunkLocation, decode_block, lists};
use nexus_store::read::{LocalPacks, PackSource};
use nexus_store::{CATALOG_FILE, PACKS_DIR};
use nexus_store::{Result, StoreError};

use crate::cache::DiskCache;
use crate::fetcher::{Clients, FetcherLink};
use crate::settings::RemoteSettings;

/// How long a remote that failed a read is treated as unreachable.
const OFFLINE_FOR: Duration = Duration::from_secs(3);

/// Bytes of verified blocks kept in memory: a reader asks for a block's
/// head, then for its frames one at a time, and each answer from the disk
/// cache read and hashed the whole cache file again.
const RECENT_BYTES: u64 = 32 << 20;
/// Blocks kept in memory at most (an estimate for the cache's table).
const RECENT_BLOCKS: usize = 128;
/// Bytes of blocks kept decoded, as verifying them left them: the block
/// reader takes the frames it needs from here instead of decoding them a
/// second time (a program faulting in its libraries reads the block of each
/// fault right after it was fetched).
const DECODED_BYTES: u64 = 8 << 20;
/// Decoded blocks kept at most (an estimate for the cache's table).
const DECODED_BLOCKS: usize = 16;

/// Weighs a block kept in memory by its bytes.
#[derive(Clone)]
struct BlockWeight;

impl Weighter<BlockKey, Bytes> for BlockWeight {
    fn weight(&self, _: &BlockKey, block: &Bytes) -> u64 {
        block.len() as u64 + 64
    }
}

/// Blocks fetched ahead, in one request, for a sequential reader.
pub const AHEAD_BLOCKS: usize = 4;
/// How many blocks in a row of one pack a reader must have read before
/// what follows is fetched ahead. A program faulting in its libraries
/// reads two neighbouring blocks now and then, a file read through reads
/// them all: at three, a JVM's start fetched nothing ahead it did not read.
pub const SEQUENTIAL_BLOCKS: u32 = 3;
/// Read-ahead threads of a daemon: fetches wait on the network more than
/// on a core.
pub const AHEAD_THREADS: usize = 2;
/// Read-ahead runs waiting for a thread; more are dropped (the readers
/// fetch what they need themselves).
const AHEAD_QUEUE: usize = 16;
/// Ends of read-ahead runs (and of blocks read) remembered; all forgotten
/// at once beyond.
const MARKS_MAX: usize = 4096;

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
    /// Blocks fetched ahead of their readers (in `fetches` and `bytes`
    /// too: one range request fetches several).
    pub ahead: AtomicU64,
}

/// A run of blocks to fetch ahead: those that follow `from` in `pack`.
struct AheadJob {
    remote: Arc<RemoteRow>,
    pack: String,
    from: u64,
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

/// A block: pack, offset and length.
type BlockKey = (String, u64, usize);

/// The pack source of a store whose generations may read from remotes.
pub struct RemotePacks {
    local: LocalPacks,
    /// `None` only between `disconnect_catalog` and `connect_catalog`.
    catalog: Mutex<Option<Catalog>>,
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
    inflight: Mutex<HashMap<BlockKey, Inflight>>,
    /// Verified blocks recently fetched or read from the disk cache.
    recent: Cache<BlockKey, Bytes, BlockWeight>,
    /// The same blocks decoded, the latest few ([`DECODED_BYTES`]).
    decoded: Cache<BlockKey, Bytes, BlockWeight>,
    /// The read-ahead threads' queue, once started.
    ahead: OnceLock<Sender<AheadJob>>,
    /// The last block of each run fetched ahead, until read: reading it
    /// queues the next run.
    marks: Mutex<HashSet<(String, u64)>>,
    /// Where the blocks read lately end, by pack, and how many blocks in
    /// a row end there (read-ahead only).
    read_ends: Mutex<HashMap<(String, u64), u32>>,
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

/// The source's catalog connection, borrowed.
struct CatalogGuard<'a>(std::sync::MutexGuard<'a, Option<Catalog>>);

impl std::ops::Deref for CatalogGuard<'_> {
    type Target = Catalog;

    fn deref(&self) -> &Catalog {
        // Checked when the guard was made, and held locked since.
        self.0.as_ref().expect("a connected catalog")
    }
}

impl RemotePacks {
    /// The source of the store in `store_dir`, with its remote settings.
    pub fn open(store_dir: &Path, settings: &RemoteSettings) -> Result<RemotePacks> {
        let catalog = Catalog::open_existing(&store_dir.join(CATALOG_FILE))?;
        let cache = DiskCache::open(store_dir, settings.cache_bytes)
            .map_err(|e| StoreError::io(store_dir.join(crate::cache::CACHE_DIR), e))?;
        Ok(RemotePacks {
            local: LocalPacks::new(&store_dir.join(PACKS_DIR)),
            catalog: Mutex::new(Some(catalog)),
            cache,
            remotes_of: Mutex::new(HashMap::new()),
            clients: Clients::new(settings.timeouts()),
            link: OnceLock::new(),
            health: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            recent: Cache::with_weighter(RECENT_BLOCKS, RECENT_BYTES, BlockWeight),
            decoded: Cache::with_weighter(DECODED_BLOCKS, DECODED_BYTES, BlockWeight),
            ahead: OnceLock::new(),
            marks: Mutex::new(HashSet::new()),
            read_ends: Mutex::new(HashMap::new()),
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

    fn catalog(&self) -> Result<CatalogGuard<'_>> {
        let guard = self.catalog.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            return Err(StoreError::Invalid(
                "the remote source's catalog connection is closed".into(),
            ));
        }
        Ok(CatalogGuard(guard))
    }

    /// Closes the source's catalog connection (see
    /// `Reader::disconnect_catalog`, whose rules it follows).
    pub fn disconnect_catalog(&self) {
        *self.catalog.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Opens the source's catalog connection again.
    pub fn connect_catalog(&self) -> Result<()> {
        let catalog = Catalog::open_existing(&self.store_dir.join(CATALOG_FILE))?;
        *self.catalog.lock().unwrap_or_else(|p| p.into_inner()) = Some(catalog);
        Ok(())
    }

    /// The remote holding `pack`, if it is a remote pack.
    fn remote_of(&self, pack: &str) -> Result<Option<Arc<RemoteRow>>> {
        let mut known = self.remotes_of.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(remote) = known.get(pack) {
            return Ok(Some(remote.clone()));
        }
        // Not cached negatively: a pull may index the pack any moment.
        let found = self.catalog()?.pack_remote(pack)?.map(Arc::new);
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
        self.catalog()?.remotes()
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

    /// Fetches `len` bytes at `offset` of remote pack `pack`, verifies
    /// them as the block the catalog places there, caches them.
    fn fetch(&self, remote: &RemoteRow, pack: &str, offset: u64, len: usize) -> Result<Bytes> {
        let bytes = self.fetch_range(remote, pack, offset..offset + len as u64)?;
        self.accept(remote, pack, offset, &bytes)?;
        Ok(bytes)
    }

    /// Fetches `range` of remote pack `pack` (unverified), keeping the
    /// remote's health and the counters.
    fn fetch_range(
        &self,
        remote: &RemoteRow,
        pack: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes> {
        self.check_online(remote, pack)?;
        let fetched = match self.link.get() {
            // Readers may queue for the fetcher's connections: one that
            // waited while the remote went offline fails at once.
            Some(link) => link.get_range(remote, pack, range, || self.check_online(remote, pack)),
            None => self.clients.get_range(remote, pack, range),
        };
        let bytes = match fetched {
            Ok(bytes) => bytes,
            // Offline meanwhile: recorded already.
            Err(crate::error::RemoteError::Store(e)) => return Err(e),
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
        Ok(bytes)
    }

    /// Verifies fetched `bytes`, the block at `offset` of remote pack
    /// `pack`, and caches them (an error, and nothing cached, when they
    /// are not the block the catalog places there).
    fn accept(&self, remote: &RemoteRow, pack: &str, offset: u64, bytes: &Bytes) -> Result<()> {
        let decoded = match self.verify(pack, offset, bytes) {
            Ok(decoded) => decoded,
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
        if let Some(decoded) = decoded {
            self.cache.put(pack, offset, bytes);
            let key = (pack.to_string(), offset, bytes.len());
            self.recent.insert(key.clone(), bytes.clone());
            self.decoded.insert(key, Bytes::from(decoded));
            self.record(pack, offset, bytes.len());
        }
        Ok(())
    }

    /// Checks fetched bytes that should be the block at `offset` of `pack`:
    /// they decode, every chunk of the block's table hashes to its name,
    /// and every chunk the catalog places in this block is listed where
    /// the catalog says. The block decoded when they are such a block (and
    /// may be cached); `None` for a range the catalog knows no block at
    /// (served uncached: the block reader verifies the chunks it takes
    /// from it).
    fn verify(
        &self,
        pack: &str,
        offset: u64,
        bytes: &[u8],
    ) -> std::result::Result<Option<Vec<u8>>, String> {
        let indexed = self
            .catalog()
            .and_then(|c| c.block_chunks(pack, offset))
            .map_err(|e| e.to_string())?;
        if indexed.is_empty() {
            return Ok(None);
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
        // Every listed chunk hashed right: a chunk the catalog places here
        // needs only to be listed where it says (hashing it again doubled
        // the verification's cost).
        for c in &indexed {
            if !lists(&block.entries, c.hash, c.inner, c.len) {
                return Err(format!(
                    "the block's table does not list chunk {} at {} where the catalog places it",
                    c.hash, c.inner
                ));
            }
        }
        Ok(Some(block.data))
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

    /// Whether the block of `len` bytes at `offset` of remote pack `pack`
    /// is what the catalog places there now: true once it verifies (from
    /// memory or the cache, or fetched, then cached as any fetched block);
    /// false when its remote serves other bytes. An error when it cannot be
    /// fetched.
    pub fn placement_holds(&self, pack: &str, offset: u64, len: usize) -> Result<bool> {
        let Some(remote) = self.remote_of(pack)? else {
            return Err(StoreError::PackMissing {
                pack: pack.to_string(),
            });
        };
        let key = (pack.to_string(), offset, len);
        if self.cached(&remote, &key).is_some() {
            return Ok(true);
        }
        let bytes = self.fetch_range(&remote, pack, offset..offset + len as u64)?;
        Ok(self.accept(&remote, pack, offset, &bytes).is_ok())
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
            .catalog()?
            .block_holding(pack, offset, buf.len() as u64)?;
        let (start, len) = holding.map_or((offset, buf.len()), |(s, l)| (s, l as usize));
        let block = self.read_block(&remote, pack, start, len)?;
        let from = (offset - start) as usize;
        buf.copy_from_slice(&block[from..from + buf.len()]);
        Ok(())
    }

    fn decoded(
        &self,
        pack: &str,
        offset: u64,
        block_len: u32,
        raw: std::ops::Range<usize>,
        out: &mut Vec<u8>,
    ) -> bool {
        if self.decoded.is_empty() {
            return false;
        }
        let key = (pack.to_string(), offset, block_len as usize);
        self.decoded
            .get(&key)
            .and_then(|block| block.get(raw).map(|bytes| out.extend_from_slice(bytes)))
            .is_some()
    }

    fn forget(&self) {
        self.local.forget();
        self.remotes_of
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.marks.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

impl RemotePacks {
    /// The block (or, when the catalog knows no block there, the range)
    /// of `len` bytes at `offset` of remote pack `pack`: from memory, from
    /// the disk cache, or fetched once however many readers ask at the
    /// same time.
    fn read_block(
        &self,
        remote: &Arc<RemoteRow>,
        pack: &str,
        offset: u64,
        len: usize,
    ) -> Result<Bytes> {
        let key = (pack.to_string(), offset, len);
        if let Some(block) = self.cached(remote, &key) {
            return Ok(block);
        }
        // One fetch per block: later readers wait for the first (or for
        // the read-ahead fetching it), then find its bytes cached.
        let slot = self.slot(&key);
        let result = {
            let _turn = slot.lock().unwrap_or_else(|p| p.into_inner());
            match self.cached(remote, &key) {
                Some(block) => Ok(block),
                None => self.fetch(remote, pack, offset, len).inspect(|_| {
                    if self.follows_a_read(pack, offset, len) {
                        self.queue_ahead(remote, pack, offset + len as u64);
                    }
                }),
            }
        };
        self.release(&key, slot);
        result
    }

    /// Block `key` from memory or from the disk cache (kept in memory
    /// then: a reader takes a block's head, then its frames one by one).
    fn cached(&self, remote: &Arc<RemoteRow>, key: &BlockKey) -> Option<Bytes> {
        let (pack, offset, len) = (&key.0, key.1, key.2);
        let block = match self.recent.get(key) {
            Some(block) => block,
            None => {
                let mut buf = vec![0; len];
                if !self.cache.get(pack, offset, &mut buf) {
                    return None;
                }
                // Every process reading the store writes this cache, the
                // confined daemons too: a cached block is checked as a
                // fetched one is, and one that is not the block the
                // catalog places there is fetched again, not left to fail
                // every reader.
                let decoded = match self.verify(pack, offset, &buf) {
                    Ok(decoded) => decoded,
                    Err(why) => {
                        tracing::warn!(
                            "remote cache: the cached block of pack {pack} at {offset} is not \
                             the one the catalog places there ({why}); deleting it, it is \
                             fetched again"
                        );
                        self.cache.remove(pack, offset, len);
                        return None;
                    }
                };
                let block = Bytes::from(buf);
                if let Some(decoded) = decoded {
                    self.decoded.insert(key.clone(), Bytes::from(decoded));
                }
                self.recent.insert(key.clone(), block.clone());
                block
            }
        };
        self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
        self.after_hit(remote, pack, offset, len);
        Some(block)
    }

    /// The in-flight slot of block `key` (made if there is none).
    fn slot(&self, key: &BlockKey) -> Inflight {
        self.inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default()
            .clone()
    }

    /// Drops `slot`, and its entry once no one else holds it.
    fn release(&self, key: &BlockKey, slot: Inflight) {
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if inflight.get(key).is_some_and(|s| Arc::ptr_eq(s, &slot)) && Arc::strong_count(&slot) <= 2
        {
            inflight.remove(key);
        }
    }

    /// From now on, after each block fetched on demand, `threads` threads
    /// fetch the blocks that follow it (module documentation). For daemons
    /// serving programs; one-shot commands read only what they name.
    /// Only the first call counts.
    pub fn start_read_ahead(self: &Arc<Self>, threads: usize) -> std::io::Result<()> {
        if threads == 0 || self.ahead.get().is_some() {
            return Ok(());
        }
        let (queue, jobs) = crossbeam_channel::bounded::<AheadJob>(AHEAD_QUEUE);
        for i in 0..threads {
            // Weak: the threads end when the source is dropped (its queue
            // with it), not keep it alive.
            let (source, jobs) = (Arc::downgrade(self), jobs.clone());
            std::thread::Builder::new()
                .name(format!("remote-ahead-{i}"))
                .spawn(move || {
                    for job in jobs {
                        let Some(source) = source.upgrade() else {
                            break;
                        };
                        source.read_ahead(&job);
                    }
                })?;
        }
        let _ = self.ahead.set(queue);
        Ok(())
    }

    /// Queues the run of blocks that follow `from` in `pack`, if read-ahead
    /// runs and its queue has room.
    fn queue_ahead(&self, remote: &Arc<RemoteRow>, pack: &str, from: u64) {
        if let Some(queue) = self.ahead.get() {
            let _ = queue.try_send(AheadJob {
                remote: remote.clone(),
                pack: pack.to_string(),
                from,
            });
        }
    }

    /// Notes that the block at `offset..offset + len` of `pack` was read;
    /// true when it ends a run of [`SEQUENTIAL_BLOCKS`] or more read one
    /// after the other: a sequential reader, worth reading ahead for (a
    /// program faulting in pieces of its libraries here and there is not:
    /// blocks fetched ahead for it were mostly never read, and took the
    /// cores and the link from those it waited for).
    fn follows_a_read(&self, pack: &str, offset: u64, len: usize) -> bool {
        if self.ahead.get().is_none() {
            return false;
        }
        let mut ends = self.read_ends.lock().unwrap_or_else(|p| p.into_inner());
        if ends.len() >= MARKS_MAX {
            ends.clear();
        }
        let run = ends.get(&(pack.to_string(), offset)).copied().unwrap_or(0) + 1;
        let end = ends
            .entry((pack.to_string(), offset + len as u64))
            .or_default();
        *end = (*end).max(run);
        run >= SEQUENTIAL_BLOCKS
    }

    /// After a cache hit: the last block of a run fetched ahead is being
    /// read, so the next run is queued.
    fn after_hit(&self, remote: &Arc<RemoteRow>, pack: &str, offset: u64, len: usize) {
        if self.ahead.get().is_none() {
            return;
        }
        self.follows_a_read(pack, offset, len);
        let marked = self
            .marks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(pack.to_string(), offset));
        if marked {
            self.queue_ahead(remote, pack, offset + len as u64);
        }
    }

    /// Fetches, in one range request, the blocks of `job.pack` that follow
    /// one another from `job.from`, up to [`AHEAD_BLOCKS`], stopping at
    /// the first one cached or in flight; each is verified and cached as
    /// a block fetched on demand, and its waiting readers released.
    fn read_ahead(&self, job: &AheadJob) {
        let Ok(blocks) = self
            .catalog()
            .and_then(|c| c.blocks_from(&job.pack, job.from, AHEAD_BLOCKS))
        else {
            return;
        };
        let mut slots = Vec::new();
        let mut end = job.from;
        for (offset, len) in blocks {
            let len = len as usize;
            if offset != end || self.cache.contains(&job.pack, offset, len) {
                break;
            }
            let key = (job.pack.clone(), offset, len);
            let slot = self.slot(&key);
            slots.push((key, slot));
            end = offset + len as u64;
        }
        // The guards end with this block, before the slots are released.
        {
            let mut guards = Vec::new();
            for (key, slot) in &slots {
                let guard = match slot.try_lock() {
                    Ok(guard) => guard,
                    Err(TryLockError::Poisoned(p)) => p.into_inner(),
                    Err(TryLockError::WouldBlock) => break,
                };
                // Fetched by a reader between the look above and the lock.
                if self.cache.contains(&key.0, key.1, key.2) {
                    break;
                }
                guards.push(guard);
            }
            if let (Some(first), Some(last)) =
                (slots.first(), slots.get(guards.len().wrapping_sub(1)))
            {
                let (start, stop) = (first.0.1, last.0.1 + last.0.2 as u64);
                if let Ok(bytes) = self.fetch_range(&job.remote, &job.pack, start..stop) {
                    let mut guards = guards.into_iter();
                    for ((_, offset, len), _) in &slots[..guards.len()] {
                        let from = (offset - start) as usize;
                        if self
                            .accept(
                                &job.remote,
                                &job.pack,
                                *offset,
                                &bytes.slice(from..from + len),
                            )
                            .is_ok()
                        {
                            self.counters.ahead.fetch_add(1, Ordering::Relaxed);
                        }
                        drop(guards.next());
                    }
                    let mut marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
                    if marks.len() >= MARKS_MAX {
                        marks.clear();
                    }
                    marks.insert((job.pack.clone(), last.0.1));
                }
            }
        }
        for (key, slot) in slots {
            self.release(&key, slot);
        }
    }
}
