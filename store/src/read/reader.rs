//! [`Reader`]: the store as long-lived readers see it — catalog queries
//! from a pool of connections, and file contents through the block cache,
//! with chunk layouts cached and looked up again when gc moved a pack.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use quick_cache::Weighter;
use quick_cache::sync::Cache;

use super::blocks::BlockReader;
use super::layout::Layout;
use super::pool::CatalogPool;
use super::source::{LocalPacks, PackSource};
use crate::catalog::Catalog;
use crate::error::{Result, StoreError};
use crate::pack::FrameCheck;
use crate::store::{CATALOG_FILE, PACKS_DIR, Store};

/// How a [`Reader`] is set up.
#[derive(Clone, Copy, Debug)]
pub struct ReaderOptions {
    /// Bytes of decoded frames kept in memory.
    pub cache_bytes: u64,
    /// Catalog connections opened up front (one per thread that queries at
    /// once is right; more are opened when needed).
    pub connections: usize,
    /// Keep each connection's read snapshot across queries (renewed when
    /// 200 ms old or after [`Reader::renew_snapshots`]): much cheaper for
    /// a daemon answering many small queries, but a query may then not see
    /// a commit made in the last 200 ms. Off: every query sees the latest
    /// commit.
    pub snapshots: bool,
    /// Threads decoding ahead of sequential readers (0: none; see
    /// [`BlockReader::with_read_ahead`]): for daemons serving many reads.
    pub read_ahead_threads: usize,
    /// Whether frames' zstd checksums are checked. Every chunk is hashed
    /// before it is used either way; daemons serving reads skip the
    /// checksum ([`FrameCheck::ChunkHashes`]), tools that report damage
    /// keep it, so that `nip verify` names a block whose stored bytes are
    /// damaged even where its chunks still hash right (a copy of it into
    /// an archive or a publish refuses it).
    pub frame_check: FrameCheck,
}

impl Default for ReaderOptions {
    fn default() -> Self {
        ReaderOptions {
            cache_bytes: 8 << 20,
            connections: 0,
            snapshots: false,
            read_ahead_threads: 0,
            frame_check: FrameCheck::Checksum,
        }
    }
}

/// Bytes of chunk layouts kept for contents read again.
const LAYOUT_CACHE_BYTES: u64 = 4 << 20;

#[derive(Clone)]
struct LayoutWeighter;

impl Weighter<i64, Arc<Layout>> for LayoutWeighter {
    fn weight(&self, _blob: &i64, layout: &Arc<Layout>) -> u64 {
        layout.weight()
    }
}

/// Largest catalog [`Reader::prefetch_catalog`] reads ahead.
const PREFETCH_MAX: u64 = 512 << 20;

/// The read side of a store: what `nip cat`, `export` and `verify`, the
/// mount and virtio-fs daemons and image serving read through.
///
/// Catalog ids are never reused (FORMAT.md, "Catalog"), so what is cached
/// by id stays true; still, when gc has run ([`Reader::check_gc_epoch`])
/// the layouts are dropped and the open packs closed, so that the space gc
/// freed returns and a moved chunk is looked up where it is now.
pub struct Reader {
    dir: PathBuf,
    pool: CatalogPool,
    blocks: BlockReader,
    layouts: Cache<i64, Arc<Layout>, LayoutWeighter>,
    gc_epoch: AtomicU64,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Reader {
    /// Opens the store in `store_dir` for reading its own packs.
    pub fn open(store_dir: &Path, options: ReaderOptions) -> Result<Reader> {
        let source = Arc::new(LocalPacks::new(&store_dir.join(PACKS_DIR)));
        Reader::with_source(store_dir, options, source)
    }

    /// Opens the store in `store_dir`, reading pack bytes from `source`
    /// (the store's own packs, or another source of the same packs).
    pub fn with_source(
        store_dir: &Path,
        options: ReaderOptions,
        source: Arc<dyn PackSource>,
    ) -> Result<Reader> {
        // Checks that this is a store of a format we know, and migrates its
        // catalog if it is older: the pool's connections then need no
        // write lock.
        drop(Store::open(store_dir)?);
        Reader::open_checked(store_dir, options, source)
    }

    /// [`Reader::with_source`] for a store already opened (and so checked)
    /// by the caller.
    pub(crate) fn open_checked(
        store_dir: &Path,
        options: ReaderOptions,
        source: Arc<dyn PackSource>,
    ) -> Result<Reader> {
        let pool = CatalogPool::open(
            &store_dir.join(CATALOG_FILE),
            options.connections,
            options.snapshots,
        )?;
        let reader = Reader {
            dir: store_dir.to_path_buf(),
            pool,
            blocks: BlockReader::checking(source, options.cache_bytes, options.frame_check)
                .with_read_ahead(options.read_ahead_threads),
            layouts: Cache::with_weighter(4096, LAYOUT_CACHE_BYTES, LayoutWeighter),
            gc_epoch: AtomicU64::new(u64::MAX),
        };
        if options.snapshots {
            // A long-lived reader: only records the epoch (nothing is
            // cached yet), so that the next check sees a gc run since.
            reader.check_gc_epoch()?;
        }
        Ok(reader)
    }

    /// Asks the kernel to read the catalog into its page cache in the
    /// background: a cold walk or read of a mount looks up inodes, listings
    /// and chunk lists all over it, and one sequential read ahead of time
    /// replaces thousands of random 4 KiB reads from disk. The pages are the
    /// kernel's (evictable), the call returns at once, and a catalog too
    /// large to be worth it is left alone. A failure only loses the
    /// optimisation.
    pub fn prefetch_catalog(&self) {
        use std::os::fd::AsRawFd;
        let Ok(file) = std::fs::File::open(self.dir.join(CATALOG_FILE)) else {
            return;
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
        if len <= PREFETCH_MAX {
            // SAFETY: posix_fadvise only reads its integer arguments.
            unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_WILLNEED) };
        }
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs catalog queries `f` (from a snapshot if the reader keeps them).
    pub fn query<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&Catalog) -> Result<T, E>,
    ) -> Result<T, E> {
        self.pool.with(f)
    }

    /// Runs catalog queries `f` on a new snapshot: they see every commit
    /// made before this call.
    pub fn query_fresh<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&Catalog) -> Result<T, E>,
    ) -> Result<T, E> {
        self.pool.with_fresh(f)
    }

    /// Closes the reader's catalog connections; returns how many there
    /// were, for [`Reader::connect_catalog`]. Call it while no query runs.
    ///
    /// For a process that confines itself after opening the store, so that
    /// it then holds no descriptor that writes the catalog or its WAL:
    /// SQLite opens the WAL read-write even for a read-only connection (it
    /// falls back to read-only only where writing is refused), and keeps a
    /// closed connection's descriptor open while another connection of the
    /// process holds a lock on the file. So every connection of the process
    /// must be closed before the first is opened again, under the
    /// confinement.
    pub fn disconnect_catalog(&self) -> usize {
        self.pool.disconnect()
    }

    /// Opens `count` catalog connections (after
    /// [`Reader::disconnect_catalog`]).
    pub fn connect_catalog(&self, count: usize) -> Result<()> {
        self.pool.connect(count)
    }

    /// Makes every connection start a new snapshot before its next query:
    /// call it after seeing a commit (in [`Reader::query_fresh`]) and before
    /// letting other threads act on what it changed.
    pub fn renew_snapshots(&self) {
        self.pool.renew_all();
    }

    /// The decoded-block reader, for readers that have chunk locations.
    pub fn blocks(&self) -> &BlockReader {
        &self.blocks
    }

    /// If gc ran since the last call, drops the cached layouts and closes
    /// the open packs (returns true: callers drop what they cached by
    /// catalog id too). One small query.
    pub fn check_gc_epoch(&self) -> Result<bool> {
        let epoch = self.query_fresh(|c| c.gc_epoch())?;
        let epoch = u64::try_from(epoch).unwrap_or(0);
        let before = self.gc_epoch.swap(epoch, Ordering::AcqRel);
        if before == epoch || before == u64::MAX {
            return Ok(false);
        }
        tracing::info!("gc ran (epoch {before} → {epoch}): dropping cached layouts and open packs");
        self.layouts.clear();
        self.blocks.forget_packs();
        Ok(true)
    }

    /// The chunk layout of content `blob`, from the cache or the catalog
    /// (`fresh`: a new snapshot, after a pack went missing).
    fn load_layout(&self, blob: i64, fresh: bool) -> Result<Arc<Layout>> {
        let query = |c: &Catalog| c.blob_chunks(blob);
        let chunks = if fresh {
            self.query_fresh(query)?
        } else {
            self.query(query)?
        };
        let layout = Arc::new(Layout::of_chunks(chunks));
        self.layouts.insert(blob, layout.clone());
        Ok(layout)
    }

    /// The chunk layout of content `blob`, checked against `size`, the
    /// length an inode says the content has.
    pub fn layout(&self, blob: i64, size: u64) -> Result<Arc<Layout>> {
        let layout = match self.layouts.get(&blob) {
            Some(layout) => layout,
            None => self.load_layout(blob, false)?,
        };
        if layout.size() != size {
            return Err(StoreError::Invalid(format!(
                "the chunks of a {size}-byte file add up to {} bytes",
                layout.size()
            )));
        }
        Ok(layout)
    }

    /// Caches the layouts of the files directly in package directory `dir`
    /// that are not cached yet, from one query: names looked up one after
    /// another in a directory are usually files about to be read.
    pub fn preload_dir_layouts(&self, dir: i64) -> Result<()> {
        let rows = self.query(|c| c.dir_blob_chunks(dir))?;
        let mut rows = rows.into_iter().peekable();
        while let Some((blob, first)) = rows.next() {
            let mut chunks = vec![first];
            while let Some((_, loc)) = rows.next_if(|(b, _)| *b == blob) {
                chunks.push(loc);
            }
            if self.layouts.get(&blob).is_none() {
                self.layouts
                    .insert(blob, Arc::new(Layout::of_chunks(chunks)));
            }
        }
        Ok(())
    }

    /// Reads up to `len` bytes at `offset` of content `blob` (`size` bytes
    /// long) and hands them to `consume` where they lie (see
    /// [`BlockReader::read_with`]). A pack gc removed since the chunk
    /// locations were cached is looked up again, once. Damaged data is an
    /// error, never handed over.
    pub fn read_with<T>(
        &self,
        blob: i64,
        size: u64,
        offset: u64,
        len: u32,
        consume: impl FnOnce(&[u8]) -> T,
    ) -> Result<T> {
        let layout = self.layout(blob, size)?;
        // Only a missing pack lets `consume` go unused, and then it is
        // needed for the retry: keep it aside until a read succeeds.
        let mut consume = Some(consume);
        let mut attempt = |layout: &Layout| {
            self.blocks.read_with(layout, offset, len, |bytes| {
                consume.take().map(|f| f(bytes))
            })
        };
        let result = match attempt(&layout) {
            Err(StoreError::PackMissing { pack }) => {
                tracing::info!("pack {pack} is gone; looking up the chunk locations again");
                let fresh = self.load_layout(blob, true)?;
                attempt(&fresh)
            }
            other => other,
        }?;
        result.ok_or_else(|| StoreError::Invalid("a read was answered twice".into()))
    }

    /// The verified bytes of content `blob` (`size` bytes long) on `side`
    /// of offset `at`, at most `limit` of them, that lie in frames already
    /// decoded (see [`BlockReader::cached_beside`]).
    pub fn cached_beside(
        &self,
        blob: i64,
        size: u64,
        at: u64,
        side: super::Side,
        limit: u64,
    ) -> Result<Vec<(u64, super::CachedBytes)>> {
        let layout = self.layout(blob, size)?;
        self.blocks.cached_beside(&layout, at, side, limit)
    }

    /// Writes the whole content `blob` to `out`, every chunk verified; a
    /// pack gc removed meanwhile is looked up again, once, and the copy
    /// resumes where it stopped. Returns the bytes written.
    pub fn copy_content(&self, blob: i64, out: &mut dyn Write) -> Result<u64> {
        let layout = match self.layouts.get(&blob) {
            Some(layout) => layout,
            None => self.load_layout(blob, false)?,
        };
        let (done, result) = self.blocks.copy_chunks(&layout, 0, out);
        match result {
            Ok(()) => Ok(layout.size()),
            Err(StoreError::PackMissing { pack }) => {
                tracing::info!("pack {pack} is gone; looking up the chunk locations again");
                let fresh = self.load_layout(blob, true)?;
                self.blocks.copy_chunks(&fresh, done, out).1?;
                Ok(fresh.size())
            }
            Err(e) => Err(e),
        }
    }
}
