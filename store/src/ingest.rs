//! The content pipeline: file contents in, durable packs and per-file chunk
//! lists out.
//!
//! A content run ([`run_session`]) starts compressor threads (one per core)
//! and one pack-writer thread, then lets the caller feed content through
//! [`Producer`]s: a producer streams a file through [`chunk_stream`] and, for
//! every chunk, decides whether the store or this run already has it
//! (deduplication happens before compression, so repeated content costs only
//! hashing). New chunks are gathered into a block; a full block (about 1 MiB)
//! goes over a bounded channel to the compressors, and from them to the
//! writer, which appends it to a pack and seals (fsyncs) each full pack.
//!
//! Directories use one producer per core, each taking runs of whole
//! neighbouring files, about a block at a time ([`ingest_files`]); an
//! archive, which can only be read front to back, uses one producer while
//! compression still runs on every core. Memory is bounded
//! by the channel depths times the block size plus one block per producer,
//! whatever the file sizes.
//!
//! Nothing here touches the catalog's write lock; the caller commits the
//! result in one transaction ([`crate::commit`]).

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use crossbeam_channel::{Receiver, Sender, bounded};

use crate::catalog::Catalog;
use crate::chunker::{ChunkError, RawChunk, chunk_stream};
use crate::error::{Result, StoreError};
use crate::hash::Hash;
use crate::pack::{
    BlockBuilder, BlockEncoder, ChunkKind, ChunkLocation, EncodedBlock, PackWriter, SealedPack,
};
use crate::params::{BLOCK_TARGET, ChunkParams, PACK_TARGET_SIZE};
use crate::runtime;
use crate::scan::SourceFile;

/// Blocks in flight on each channel (to the compressors, to the writer).
const CHANNEL_DEPTH: usize = 8;
/// Files at least this large are taken first, largest first; the others
/// keep their tree order. Such a file fills blocks of its own, so moving it
/// costs no locality, while a smaller one shares its block with its
/// neighbours: in tree order those are the files of the same directory,
/// read together later (a cold read of a package then decodes each block
/// once, instead of once per file when mid-size files of every package
/// were interleaved by size).
const LARGE_FILE: u64 = 2 * BLOCK_TARGET as u64;

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
    /// Where to read it: a file found by a directory scan, opened again
    /// below its directory and checked to be the file scanned.
    pub source: SourceFile,
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
    /// The remote (catalog id) every pack of this batch lives on, when the
    /// packs are objects of a remote rather than files in `packs/` (a
    /// generation pulled from it). Chunks the store knows already keep
    /// their location: what is local is never read from the remote.
    pub remote: Option<i64>,
    /// Chunks known already, in a pack of another trust domain's remote,
    /// that this batch of `remote` places anew where `written` says: their
    /// placement there did not hold up when the pull checked it, or could
    /// not be checked ([`crate::catalog::Catalog::foreign_placements`]).
    pub replaced: HashSet<Hash>,
}

/// Progress callback: called with the number of content bytes just processed.
pub type ProgressFn<'a> = &'a (dyn Fn(u64) + Sync);

/// What every producer of one content run shares.
pub struct Session<'a> {
    catalog_path: PathBuf,
    params: &'a ChunkParams,
    /// Chunks this run has seen (written or found in the catalog).
    claimed: Mutex<HashSet<Hash>>,
    /// Chunks found in the catalog instead of written.
    reused: Mutex<HashSet<Hash>>,
    to_compress: Sender<BlockBuilder>,
}

impl Session<'_> {
    /// A new producer, with its own catalog connection and block.
    pub fn producer(&self) -> Result<Producer<'_>> {
        Ok(Producer {
            session: self,
            // The session's store was opened, and its catalog upgraded, by
            // this process: no upgrade is left for this check to see.
            catalog: Catalog::open(&self.catalog_path, false, &|upgrade| {
                let store_dir = self.catalog_path.parent().unwrap_or(Path::new("."));
                runtime::check_upgrade(store_dir, upgrade, &[])
            })?,
            block: BlockBuilder::default(),
        })
    }

    fn lock_failed<T>(_: T) -> StoreError {
        StoreError::Invalid("ingest state lock poisoned".into())
    }
}

/// Feeds file contents into a content run; one per thread.
///
/// Its last, partial block is handed over when it is dropped.
pub struct Producer<'s> {
    session: &'s Session<'s>,
    catalog: Catalog,
    block: BlockBuilder,
}

impl Producer<'_> {
    /// Stores the content read from `source` (`size` bytes are expected: a
    /// different length is reported as [`ChunkError::Io`] by the caller's
    /// check) and returns its hash and chunk list. `progress` is called with
    /// the bytes of each chunk as it is processed.
    pub fn add(
        &mut self,
        source: impl Read,
        size: u64,
        progress: &dyn Fn(u64),
    ) -> std::result::Result<FileContent, ChunkError> {
        let mut chunks = Vec::new();
        let params = self.session.params;
        // A large file is read at any offset (mapped, seeked): its chunks
        // go into frames of their own (see `BlockBuilder`).
        let kind = params.chunk_kind(size);
        // A file read whole is decoded whole: it starts a new block when it
        // would not fit in the open one, so that no read of it decodes two
        // blocks (its size may overstate what is new: dedup only helps).
        if kind == ChunkKind::Whole
            && self.block.raw_len() as u64 + size > params.block_target as u64
        {
            self.flush().map_err(|e| ChunkError::Sink(e.to_string()))?;
        }
        let (hash, size) = chunk_stream(source, size, params, |chunk| {
            chunks.push((chunk.hash, chunk.data.len() as u32));
            let len = chunk.data.len() as u64;
            self.take(chunk, kind).map_err(|e| e.to_string())?;
            progress(len);
            Ok(())
        })?;
        if self.block.raw_len() >= params.block_target {
            self.flush().map_err(|e| ChunkError::Sink(e.to_string()))?;
        }
        Ok(FileContent { hash, size, chunks })
    }

    fn take(&mut self, chunk: RawChunk, kind: ChunkKind) -> Result<()> {
        let session = self.session;
        let is_new = session
            .claimed
            .lock()
            .map_err(Session::lock_failed)?
            .insert(chunk.hash);
        if !is_new {
            return Ok(());
        }
        if self.catalog.has_chunk(&chunk.hash)? {
            session
                .reused
                .lock()
                .map_err(Session::lock_failed)?
                .insert(chunk.hash);
            return Ok(());
        }
        self.block.push_kind(chunk.hash, &chunk.data, kind);
        // Parts close a block as soon as it is full; a file read whole
        // closes it at its end (see `add`), unless it grew past its scanned
        // size so far that the block would outgrow what readers accept.
        let target = session.params.block_target;
        let limit = match kind {
            ChunkKind::Part => target,
            ChunkKind::Whole => target + session.params.max,
        };
        if self.block.raw_len() >= limit {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.block.is_empty() {
            return Ok(());
        }
        self.session
            .to_compress
            .send(std::mem::take(&mut self.block))
            .map_err(|_| StoreError::Invalid("the pack writer stopped".into()))
    }
}

impl Drop for Producer<'_> {
    fn drop(&mut self) {
        // If this fails the pipeline is already broken and the run fails with
        // the writer's error; the commit would also refuse chunks never
        // written.
        let _ = self.flush();
    }
}

/// Runs one content run: starts the compressors and the pack writer, calls
/// `feed` with the session to produce content, then waits until every block
/// is durable (packs sealed and fsynced). `feed` returns a value of its own
/// and the contents it stored, which go into the batch to commit.
pub fn run_session<T>(
    store_dir: &Path,
    params: &ChunkParams,
    threads: usize,
    feed: impl FnOnce(&Session<'_>) -> Result<(T, Vec<FileContent>)>,
) -> Result<(T, ContentBatch)> {
    let packs_dir = store_dir.join(crate::store::PACKS_DIR);
    let (to_compress, compress_rx) = bounded::<BlockBuilder>(CHANNEL_DEPTH);
    let (to_write, write_rx) = bounded::<EncodedBlock>(CHANNEL_DEPTH);
    thread::scope(|scope| {
        let writer = scope.spawn(|| pack_writer(&packs_dir, write_rx));
        let compressors: Vec<_> = (0..threads.max(1))
            .map(|_| {
                let (rx, tx) = (compress_rx.clone(), to_write.clone());
                scope.spawn(move || compress_blocks(params.zstd_level, rx, tx))
            })
            .collect();
        drop((compress_rx, to_write));
        let session = Session {
            catalog_path: store_dir.join(crate::store::CATALOG_FILE),
            params,
            claimed: Mutex::new(HashSet::new()),
            reused: Mutex::new(HashSet::new()),
            to_compress,
        };
        let fed = feed(&session);
        // Dropping the session closes the channel: the compressors, then the
        // writer, drain what is in flight and finish.
        let Session {
            reused,
            to_compress,
            ..
        } = session;
        drop(to_compress);
        let reused = reused.into_inner().unwrap_or_else(|p| p.into_inner());
        let mut pipeline_error = None;
        for c in compressors {
            let outcome = c.join().unwrap_or_else(|_| {
                Err(StoreError::Invalid("a compressor thread panicked".into()))
            });
            if let Err(e) = outcome {
                pipeline_error.get_or_insert(e);
            }
        }
        let written = writer.join().unwrap_or_else(|_| {
            Err(StoreError::Invalid(
                "the pack writer thread panicked".into(),
            ))
        });
        // A broken pipeline is the real cause of any "writer stopped" error a
        // producer saw, so it is reported first.
        let (packs, written) = written?;
        if let Some(e) = pipeline_error {
            return Err(e);
        }
        let (value, files) = fed?;
        Ok((
            value,
            ContentBatch {
                files,
                packs,
                written,
                reused,
                remote: None,
                replaced: HashSet::new(),
            },
        ))
    })
}

fn compress_blocks(level: i32, rx: Receiver<BlockBuilder>, tx: Sender<EncodedBlock>) -> Result<()> {
    let mut encoder = if level == crate::params::ZSTD_LEVEL {
        BlockEncoder::store_default()?
    } else {
        BlockEncoder::new(level, crate::params::FRAME_ZSTD_LEVEL.max(level))?
    };
    for mut block in rx {
        tx.send(block.finish(&mut encoder))
            .map_err(|_| StoreError::Invalid("the pack writer stopped".into()))?;
    }
    Ok(())
}

/// Feeds the content of `jobs` (files on disk) into an open content run with
/// `threads` producers; returns each job's content, in job order.
pub fn ingest_files(
    session: &Session<'_>,
    jobs: &[FileJob],
    threads: usize,
    progress: ProgressFn<'_>,
) -> Result<Vec<FileContent>> {
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    // Large files first, largest first: long files start early and the
    // others fill the gaps at the end, so both cores stay busy until the
    // last file. The others keep their tree order (a stable sort), so
    // files of one directory, often alike and read together, share blocks.
    order.sort_by_key(|&i| {
        let size = jobs[i].size;
        std::cmp::Reverse(if size >= LARGE_FILE { size } else { 0 })
    });
    // Workers take runs of consecutive files rather than single files: two
    // workers taking alternate small files would split each directory's
    // files between two blocks, and neighbours compress best together.
    let runs = runs_of(order.iter().map(|&i| jobs[i].size));
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<FileContent>>> = Mutex::new(vec![None; jobs.len()]);
    thread::scope(|scope| {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    let mut producer = session.producer()?;
                    while let Some(run) = runs.get(next.fetch_add(1, Ordering::SeqCst)) {
                        for &index in &order[run.clone()] {
                            let content = match ingest_file(&mut producer, &jobs[index], progress) {
                                Ok(c) => c,
                                Err(e) => {
                                    // Stop the other workers early.
                                    next.store(runs.len(), Ordering::SeqCst);
                                    return Err(e);
                                }
                            };
                            results.lock().map_err(Session::lock_failed)?[index] = Some(content);
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        let mut first_error = None;
        for w in workers {
            let outcome = w
                .join()
                .unwrap_or_else(|_| Err(StoreError::Invalid("an ingest worker panicked".into())));
            if let Err(e) = outcome {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    })?;
    results
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| StoreError::Invalid("a file was not processed".into()))
}

/// Cuts files, given by their sizes in ingest order, into the runs one
/// worker takes whole: a file of a block or more alone (it fills blocks of
/// its own), smaller files together until the run holds about a block.
fn runs_of(sizes: impl IntoIterator<Item = u64>) -> Vec<Range<usize>> {
    let block = BLOCK_TARGET as u64;
    let mut runs = Vec::new();
    let (mut start, mut bytes) = (0, 0u64);
    let mut end = 0;
    for (i, size) in sizes.into_iter().enumerate() {
        end = i + 1;
        if size >= block {
            if start < i {
                runs.push(start..i);
            }
            runs.push(i..end);
            (start, bytes) = (end, 0);
            continue;
        }
        bytes += size;
        if bytes >= block {
            runs.push(start..end);
            (start, bytes) = (end, 0);
        }
    }
    if start < end {
        runs.push(start..end);
    }
    runs
}

fn ingest_file(
    producer: &mut Producer<'_>,
    job: &FileJob,
    progress: ProgressFn<'_>,
) -> Result<FileContent> {
    let path = job.source.path();
    let file = job.source.open()?;
    let content = producer
        .add(&file, job.size, progress)
        .map_err(|e| match e {
            ChunkError::Io(io) => StoreError::io(path, io),
            ChunkError::Sink(msg) => StoreError::Invalid(format!("{}: {msg}", path.display())),
        })?;
    if content.size != job.size {
        return Err(StoreError::SourceChanged {
            path: path.to_path_buf(),
            what: format!("size {} then {}", job.size, content.size),
        });
    }
    // Written to, or its metadata changed, while it was read: the bytes
    // might not belong with the metadata taken at the scan.
    job.source.check_unchanged(&file)?;
    Ok(content)
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

#[cfg(test)]
mod tests {
    use crate::pack::{BlockHead, ParsedHead};
    use crate::params::{BLOCK_TARGET, CHUNK_MAX, FRAME_TARGET, FRAMED_FILE_MIN, SMALL_FILE_MAX};
    use crate::store::{AddDir, AddOptions, NoProgress, Store};

    /// Compressible bytes that differ from line to line, so FastCDC cuts
    /// them where it would cut real text.
    fn text(seed: u32, len: usize) -> Vec<u8> {
        (0..len)
            .flat_map(|i| format!("line {i} of file {seed}\n").into_bytes())
            .take(len)
            .collect()
    }

    /// For each chunk of `file` in package `p/1`: the decoded length of
    /// the frame holding it.
    fn frames_of(store: &Store, file: &str) -> Vec<u32> {
        let catalog = store.catalog();
        let package = catalog.package("p", "1").unwrap().unwrap();
        let inode = catalog
            .lookup(package.root, file.as_bytes())
            .unwrap()
            .unwrap();
        let locations = catalog.blob_chunks(inode.blob.unwrap()).unwrap();
        locations
            .iter()
            .map(|loc| {
                let raw = store.reader().blocks().stored_block(loc).unwrap();
                let ParsedHead::Head(head) = BlockHead::parse(&raw, raw.len()).unwrap() else {
                    panic!("a whole block's head parses");
                };
                let f = head.frame_of(loc.inner, loc.len).unwrap();
                head.frames[f].raw_len
            })
            .collect()
    }

    #[test]
    fn workers_take_large_files_alone_and_small_ones_a_block_at_a_time() {
        let block = BLOCK_TARGET as u64;
        let quarter = block / 4;
        // Two large files first (the ingest order puts them there), then
        // small ones: each large file is a run of its own, the small ones
        // are grouped until a run holds a block, and the rest ends a run.
        let sizes = [3 * block, block, quarter, quarter, quarter, quarter, 10, 20];
        assert_eq!(super::runs_of(sizes), vec![0..1, 1..2, 2..6, 6..8]);
        // A large file among small ones closes the run before it.
        let sizes = [10, 20, 2 * block, 30];
        assert_eq!(super::runs_of(sizes), vec![0..2, 2..3, 3..4]);
        assert!(super::runs_of([]).is_empty());
        // Every file lands in exactly one run, in order.
        let sizes: Vec<u64> = (0..500).map(|i| (i * 7919 % 300_000) as u64).collect();
        let runs = super::runs_of(sizes.iter().copied());
        let flat: Vec<usize> = runs.iter().flat_map(|r| r.clone()).collect();
        assert_eq!(flat, (0..sizes.len()).collect::<Vec<_>>());
        assert!(runs.iter().all(|r| {
            let bytes: u64 = sizes[r.clone()].iter().sum();
            r.len() == 1 || bytes < block + 300_000
        }));
    }

    #[test]
    fn only_files_of_a_block_or_more_are_framed_apart() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("p");
        std::fs::create_dir(&dir).unwrap();
        let medium = 3 * SMALL_FILE_MAX as usize;
        // The large file comes first and leaves most of a block open, too
        // little for the medium file after it.
        let large = 2 * FRAMED_FILE_MIN as usize - 100_000;
        std::fs::write(dir.join("a-large"), text(3, large)).unwrap();
        std::fs::write(dir.join("b-small"), text(1, 20_000)).unwrap();
        std::fs::write(dir.join("c-medium"), text(2, medium)).unwrap();
        let mut store = Store::init(&tmp.path().join("store")).unwrap();
        let add = AddDir {
            path: dir,
            name: "p".into(),
            version: "1".into(),
        };
        // One producer, so that the files go into blocks in this order.
        let options = AddOptions {
            threads: 1,
            ..AddOptions::default()
        };
        store.add_dirs(&[add], options, &NoProgress).unwrap();

        // A medium file is cut into chunks, but they share one frame, in one
        // block: it is read whole, like a small file.
        let medium_frames = frames_of(&store, "c-medium");
        assert!(medium_frames.len() > 1, "the medium file is cut");
        assert!(
            medium_frames.iter().all(|&f| f as usize >= medium),
            "a medium file's chunks share a frame at least its size: {medium_frames:?}"
        );
        // A large file's chunks are framed apart, in frames of about the
        // frame target, so a random read decodes one such frame.
        let large_frames = frames_of(&store, "a-large");
        assert!(
            large_frames
                .iter()
                .all(|&f| (f as usize) < FRAME_TARGET + CHUNK_MAX),
            "{large_frames:?}"
        );
        assert!(
            large_frames.iter().any(|&f| f as usize >= FRAME_TARGET),
            "{large_frames:?}"
        );
    }
}
