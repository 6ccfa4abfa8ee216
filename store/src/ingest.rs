//! The content pipeline: files in, durable packs and per-file chunk lists out.
//!
//! Worker threads (one per core) take files (large ones largest-first, then
//! small ones in tree order, so that neighbours compress together), stream
//! each through [`chunk_stream`], and for every chunk decide whether the
//! store or this session already has it (deduplication happens before
//! compression, so repeated content costs only hashing). Each worker gathers
//! its new chunks into a block; a full block (about 1 MiB) is zstd-compressed
//! by the worker and sent over a bounded channel to one pack-writer thread,
//! which appends it to a pack and seals (fsyncs) each full pack. Memory is
//! bounded by the channel depth times the block size plus one block per
//! worker, whatever the file sizes.
//!
//! Nothing here touches the catalog's write lock; the caller commits the
//! result in one transaction ([`crate::commit`]).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;

use crossbeam_channel::{Receiver, Sender, bounded};

use crate::catalog::Catalog;
use crate::chunker::{ChunkError, chunk_stream};
use crate::error::{Result, StoreError};
use crate::hash::Hash;
use crate::pack::{
    BlockBuilder, ChunkLocation, EncodedBlock, PackWriter, SealedPack, block_compressor,
};
use crate::params::{ChunkParams, PACK_TARGET_SIZE};

/// Blocks in flight between the workers and the pack writer.
const CHANNEL_DEPTH: usize = 8;
/// Files at least this large are taken first, largest first; smaller ones
/// follow in tree order so that similar neighbours share blocks.
const LARGE_FILE: u64 = 64 * 1024;

/// A file's content as the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileContent {
    /// BLAKE3 of the whole content.
    pub hash: Hash,
    /// Length in bytes.
    pub size: u64,
    /// The chunks in order, with their raw lengths.
    pub chunks: Vec<(Hash, u32)>,
}

/// One file to ingest.
pub struct FileJob {
    /// Where to read it.
    pub path: PathBuf,
    /// Its size according to the scan (a different size at read time is an
    /// error: the file changed under us).
    pub size: u64,
}

/// What a content run produced; the caller commits it.
#[derive(Default)]
pub struct ContentBatch {
    /// Content of each job, in job order.
    pub files: Vec<FileContent>,
    /// Packs written (still locked until this batch is dropped).
    pub packs: Vec<SealedPack>,
    /// Where every chunk written by this run went.
    pub written: Vec<ChunkLocation>,
    /// Chunks this run did not write because the catalog already had them;
    /// the commit re-checks they still exist (a concurrent gc may have removed
    /// them in between).
    pub reused: HashSet<Hash>,
}

/// Progress callback: called with the number of content bytes just processed.
pub type ProgressFn<'a> = &'a (dyn Fn(u64) + Sync);

struct Shared<'a> {
    jobs: &'a [FileJob],
    order: Vec<usize>,
    next: AtomicUsize,
    failed: AtomicBool,
    claimed: Mutex<HashSet<Hash>>,
    reused: Mutex<HashSet<Hash>>,
    results: Mutex<Vec<Option<FileContent>>>,
    first_error: Mutex<Option<StoreError>>,
    progress: ProgressFn<'a>,
}

impl Shared<'_> {
    fn fail(&self, e: StoreError) {
        self.failed.store(true, Ordering::SeqCst);
        let mut slot = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(e);
        }
    }
}

/// Reads, chunks, deduplicates, compresses and packs the content of `jobs`.
pub fn ingest_files(
    store_dir: &Path,
    jobs: &[FileJob],
    params: &ChunkParams,
    threads: usize,
    progress: ProgressFn<'_>,
) -> Result<ContentBatch> {
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    // Large files first, largest first: long files start early and small
    // ones fill the gaps at the end, so both cores stay busy until the last
    // file. Small files keep their tree order (a stable sort), so files of
    // one directory, often alike, land in the same block.
    order.sort_by_key(|&i| {
        let size = jobs[i].size;
        std::cmp::Reverse(if size >= LARGE_FILE { size } else { 0 })
    });
    let shared = Shared {
        jobs,
        order,
        next: AtomicUsize::new(0),
        failed: AtomicBool::new(false),
        claimed: Mutex::new(HashSet::new()),
        reused: Mutex::new(HashSet::new()),
        results: Mutex::new(vec![None; jobs.len()]),
        first_error: Mutex::new(None),
        progress,
    };
    let packs_dir = store_dir.join(crate::store::PACKS_DIR);
    let catalog_path = store_dir.join(crate::store::CATALOG_FILE);
    let (tx, rx) = bounded::<EncodedBlock>(CHANNEL_DEPTH);

    let writer_result = thread::scope(|scope| {
        let writer = scope.spawn(|| pack_writer(&packs_dir, rx));
        for _ in 0..threads.max(1) {
            let tx = tx.clone();
            let shared = &shared;
            let catalog_path = &catalog_path;
            scope.spawn(move || {
                if let Err(e) = worker(shared, catalog_path, params, tx) {
                    shared.fail(e);
                }
            });
        }
        drop(tx);
        writer.join()
    });
    let (packs, written) = match writer_result {
        Ok(r) => r?,
        Err(_) => return Err(StoreError::Invalid("pack writer thread panicked".into())),
    };
    if let Some(e) = shared
        .first_error
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
    {
        return Err(e);
    }
    let files = shared
        .results
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| StoreError::Invalid("a file was not processed".into()))?;
    Ok(ContentBatch {
        files,
        packs,
        written,
        reused: shared
            .reused
            .into_inner()
            .unwrap_or_else(|p| p.into_inner()),
    })
}

fn worker(
    shared: &Shared<'_>,
    catalog_path: &Path,
    params: &ChunkParams,
    tx: Sender<EncodedBlock>,
) -> Result<()> {
    let catalog = Catalog::open(catalog_path, false)?;
    let mut compressor = block_compressor(params.zstd_level)?;
    let mut block = BlockBuilder::default();
    loop {
        if shared.failed.load(Ordering::SeqCst) {
            return Ok(());
        }
        let n = shared.next.fetch_add(1, Ordering::SeqCst);
        let Some(&index) = shared.order.get(n) else {
            if !block.is_empty() {
                tx.send(block.finish(&mut compressor))
                    .map_err(|_| StoreError::Invalid("pack writer stopped".into()))?;
            }
            return Ok(());
        };
        let job = &shared.jobs[index];
        let file = File::open(&job.path).map_err(|e| StoreError::io(&job.path, e))?;
        let mut chunks = Vec::new();
        let mut sink = |chunk: crate::chunker::RawChunk| -> Result<(), String> {
            let len = chunk.data.len() as u64;
            chunks.push((chunk.hash, chunk.data.len() as u32));
            let is_new = shared
                .claimed
                .lock()
                .map_err(|_| "lock poisoned".to_string())?
                .insert(chunk.hash);
            if is_new {
                if catalog.has_chunk(&chunk.hash).map_err(|e| e.to_string())? {
                    shared
                        .reused
                        .lock()
                        .map_err(|_| "lock poisoned".to_string())?
                        .insert(chunk.hash);
                } else {
                    block.push(chunk.hash, &chunk.data);
                    if block.raw_len() >= params.block_target {
                        tx.send(block.finish(&mut compressor))
                            .map_err(|_| "pack writer stopped".to_string())?;
                    }
                }
            }
            (shared.progress)(len);
            Ok(())
        };
        let (hash, size) =
            chunk_stream(file, job.size, params, &mut sink).map_err(|e| match e {
                ChunkError::Io(io) => StoreError::io(&job.path, io),
                ChunkError::Sink(msg) => {
                    StoreError::Invalid(format!("{}: {msg}", job.path.display()))
                }
            })?;
        if size != job.size {
            return Err(StoreError::BadInput {
                path: job.path.clone(),
                reason: format!("changed while being read (size {} then {size})", job.size),
            });
        }
        let mut results = shared
            .results
            .lock()
            .map_err(|_| StoreError::Invalid("lock poisoned".into()))?;
        results[index] = Some(FileContent { hash, size, chunks });
    }
}

fn pack_writer(
    dir: &Path,
    rx: Receiver<EncodedBlock>,
) -> Result<(Vec<SealedPack>, Vec<ChunkLocation>)> {
    let mut sealed = Vec::new();
    let mut written = Vec::new();
    let mut current: Option<PackWriter> = None;
    for block in rx {
        let writer = match current.as_mut() {
            Some(w) => w,
            None => current.insert(PackWriter::create(dir)?),
        };
        written.extend(writer.append(&block)?);
        if writer.len() >= PACK_TARGET_SIZE
            && let Some(full) = current.take()
        {
            sealed.push(full.seal()?);
        }
    }
    if let Some(last) = current.take() {
        sealed.push(last.seal()?);
    }
    Ok((sealed, written))
}

/// Groups identical contents so the commit writes each blob once.
pub fn distinct_contents(files: &[FileContent]) -> HashMap<Hash, &FileContent> {
    files.iter().map(|f| (f.hash, f)).collect()
}
