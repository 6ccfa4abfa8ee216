//! File content: where a file's bytes are (its chunk layout) and reading a
//! byte range of it through a bounded cache of decoded blocks.
//!
//! Chunks are stored compressed together in blocks of about 1 MiB, and the
//! kernel reads in pieces of 128 KiB to 1 MiB, so without a cache a
//! sequential read would decode each block several times. Decoded blocks are
//! kept in a [`quick_cache`] bounded by their byte size; each chunk is
//! checked against its BLAKE3 name the first time it is taken out of a
//! cached block and trusted while the block stays cached. A chunk that fails
//! the check is an error every time: the reader never returns bytes whose
//! hash differs from the chunk's name.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use nexus_store::pack::{Block, ChunkLocation, read_block_reusing};
use quick_cache::Weighter;
use quick_cache::sync::{Cache, DefaultLifecycle};
use quick_cache::{DefaultHashBuilder, OptionsBuilder};

/// Share of the block cache for blocks used more than once (see
/// [`ContentReader::new`]).
const BLOCK_CACHE_HOT_SHARE: f64 = 0.5;

use crate::error::{Result, ViewError};

/// Where the bytes of one file content are: its chunks in order, and the
/// file offset at which each starts.
#[derive(Debug)]
pub(crate) struct Layout {
    chunks: Vec<ChunkLocation>,
    starts: Vec<u64>,
    size: u64,
}

impl Layout {
    /// Builds the layout of a content of `size` bytes; an error unless the
    /// chunk lengths add up to it.
    pub(crate) fn new(chunks: Vec<ChunkLocation>, size: u64) -> Result<Layout> {
        let mut starts = Vec::with_capacity(chunks.len());
        let mut at = 0u64;
        for c in &chunks {
            starts.push(at);
            at += u64::from(c.len);
        }
        if at != size {
            return Err(ViewError::Inconsistent(format!(
                "the chunks of a {size}-byte file add up to {at} bytes"
            )));
        }
        Ok(Layout {
            chunks,
            starts,
            size,
        })
    }

    /// The size of the content.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Approximate memory the layout takes (for cache weights).
    pub(crate) fn weight(&self) -> u64 {
        let per_chunk = std::mem::size_of::<ChunkLocation>() + 8 + 40;
        (64 + self.chunks.len() * per_chunk) as u64
    }
}

/// Decoded-block buffers kept for reuse (at most this many, about 1 MiB
/// each): enough for the request threads decoding at once.
const SPARE_BUFFERS: usize = 4;

/// Payload buffers of evicted blocks, handed to the next decode. A block
/// decoded into fresh memory makes the kernel map and zero a megabyte page
/// by page; under a cold read of many files that cost more than zstd.
#[derive(Default)]
struct SpareBuffers(Mutex<Vec<Vec<u8>>>);

impl SpareBuffers {
    fn take(&self) -> Vec<u8> {
        let mut spare = self.0.lock().unwrap_or_else(|p| p.into_inner());
        spare.pop().unwrap_or_default()
    }

    fn give(&self, buffer: Vec<u8>) {
        // Buffers grown past the usual block size (a rare large block) are
        // not worth keeping around.
        if buffer.capacity() == 0 || buffer.capacity() > 2 * nexus_store::params::BLOCK_TARGET {
            return;
        }
        let mut spare = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if spare.len() < SPARE_BUFFERS {
            spare.push(buffer);
        }
    }
}

thread_local! {
    /// Stored (compressed) bytes of the block being decoded, per thread.
    static STORED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// Bytes of a read spanning several chunks, assembled per thread.
    static ASSEMBLED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A decoded block and which of its chunks were verified already.
struct CachedBlock {
    block: Block,
    verified: Vec<AtomicBool>,
    /// Where the payload buffer goes when the block leaves the cache.
    spare: Arc<SpareBuffers>,
}

impl Drop for CachedBlock {
    fn drop(&mut self) {
        self.spare.give(std::mem::take(&mut self.block.data));
    }
}

impl CachedBlock {
    fn new(block: Block, spare: Arc<SpareBuffers>) -> CachedBlock {
        let verified = block
            .entries
            .iter()
            .map(|_| AtomicBool::new(false))
            .collect();
        CachedBlock {
            block,
            verified,
            spare,
        }
    }

    /// The verified bytes of the chunk `loc` names.
    fn chunk(&self, loc: &ChunkLocation) -> Result<&[u8]> {
        let entries = &self.block.entries;
        // Empty chunks share their inner offset with the next chunk.
        let first = entries.partition_point(|e| e.inner < loc.inner);
        let index = entries[first..]
            .iter()
            .take_while(|e| e.inner == loc.inner)
            .position(|e| e.hash == loc.hash && e.len == loc.len)
            .map(|i| first + i);
        if let Some(i) = index
            && self.verified[i].load(Ordering::Acquire)
        {
            let start = loc.inner as usize;
            if let Some(bytes) = self.block.data.get(start..start + loc.len as usize) {
                return Ok(bytes);
            }
        }
        // Not verified yet (or not listed): the store's check, which hashes
        // the bytes and explains any mismatch.
        let bytes = self.block.chunk(loc)?;
        if let Some(i) = index {
            self.verified[i].store(true, Ordering::Release);
        }
        Ok(bytes)
    }

    /// The verified bytes of `chunks`, which [`contiguous_run`] found to
    /// lie one after another in this block, as one slice.
    fn run(&self, chunks: &[ChunkLocation]) -> Result<&[u8]> {
        let mut span: Option<(usize, usize)> = None;
        for loc in chunks.iter().filter(|c| c.len > 0) {
            let bytes = self.chunk(loc)?;
            let start = loc.inner as usize;
            span = Some(match span {
                None => (start, start + bytes.len()),
                Some((from, _)) => (from, start + bytes.len()),
            });
        }
        let (from, to) = span.unwrap_or((0, 0));
        self.block
            .data
            .get(from..to)
            .ok_or_else(|| ViewError::Inconsistent("a chunk run extends past its block".into()))
    }

    fn weight(&self) -> u64 {
        // The capacity: a recycled buffer may be larger than this block,
        // and all of it was touched by an earlier one.
        (self.block.data.capacity() + self.block.entries.len() * 48 + 128) as u64
    }
}

/// The first non-empty chunk of `chunks` when all the non-empty ones lie
/// one after another in the same block (so that their bytes are one slice
/// of it once decoded).
fn contiguous_run(chunks: &[ChunkLocation]) -> Option<&ChunkLocation> {
    let mut present = chunks.iter().filter(|c| c.len > 0);
    let first = present.next()?;
    let mut next_inner = u64::from(first.inner) + u64::from(first.len);
    for c in present {
        if c.offset != first.offset || c.pack != first.pack || u64::from(c.inner) != next_inner {
            return None;
        }
        next_inner += u64::from(c.len);
    }
    Some(first)
}

#[derive(Clone)]
struct BlockWeighter;

impl Weighter<(String, u64), Arc<CachedBlock>> for BlockWeighter {
    fn weight(&self, _key: &(String, u64), block: &Arc<CachedBlock>) -> u64 {
        block.weight()
    }
}

/// Reads file contents from the packs of one store.
pub(crate) struct ContentReader {
    packs_dir: PathBuf,
    packs: Mutex<HashMap<String, Arc<File>>>,
    blocks: Cache<(String, u64), Arc<CachedBlock>, BlockWeighter>,
    spare: Arc<SpareBuffers>,
}

impl ContentReader {
    /// A reader of the packs in `packs_dir` keeping up to `cache_bytes` of
    /// decoded blocks.
    pub(crate) fn new(packs_dir: &Path, cache_bytes: u64) -> ContentReader {
        // Blocks are about 1 MiB decoded.
        let estimated = (cache_bytes / (1 << 20)).max(4) as usize;
        // Blocks are used by recency, not frequency: a reader works through
        // one block in several requests, then moves on. quick_cache keeps
        // only 3% of its space for newly admitted entries by default, less
        // than one block here, so with a few readers a block was evicted
        // before its next request and decoded again. Half the space for new
        // entries lets each reader's current blocks stay (a cold read of the
        // corpus: 18% fewer block decodes).
        let blocks = OptionsBuilder::new()
            .estimated_items_capacity(estimated)
            .weight_capacity(cache_bytes.max(1))
            .hot_allocation(BLOCK_CACHE_HOT_SHARE)
            .build()
            .map(|options| {
                Cache::with_options(
                    options,
                    BlockWeighter,
                    DefaultHashBuilder::default(),
                    DefaultLifecycle::default(),
                )
            })
            .unwrap_or_else(|_| Cache::with_weighter(estimated, cache_bytes.max(1), BlockWeighter));
        ContentReader {
            packs_dir: packs_dir.to_path_buf(),
            packs: Mutex::new(HashMap::new()),
            blocks,
            spare: Arc::default(),
        }
    }

    /// An open handle on pack `name`. Handles stay open: a pack gc deletes
    /// after we opened it still reads the same (immutable) bytes.
    fn pack(&self, name: &str) -> Result<Arc<File>> {
        let mut packs = self.packs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = packs.get(name) {
            return Ok(f.clone());
        }
        let path = self.packs_dir.join(name);
        let file = File::open(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                ViewError::PackMissing(path.display().to_string())
            } else {
                ViewError::Store(nexus_store::StoreError::io(&path, e))
            }
        })?;
        let file = Arc::new(file);
        packs.insert(name.to_string(), file.clone());
        Ok(file)
    }

    /// Opens every pack `layout` reads from (once: handles are kept for the
    /// reader's lifetime). From then on the layout reads even after gc
    /// deleted those pack files.
    pub(crate) fn open_packs(&self, layout: &Layout) -> Result<()> {
        let mut last: Option<&str> = None;
        for loc in &layout.chunks {
            // A file's chunks are mostly in one pack, in runs.
            if last != Some(loc.pack.as_str()) {
                self.pack(&loc.pack)?;
                last = Some(&loc.pack);
            }
        }
        Ok(())
    }

    fn block(&self, loc: &ChunkLocation) -> Result<Arc<CachedBlock>> {
        let key = (loc.pack.clone(), loc.offset);
        self.blocks.get_or_insert_with(&key, || {
            let file = self.pack(&loc.pack)?;
            let block = STORED.with(|stored| {
                let mut stored = stored.borrow_mut();
                read_block_reusing(&file, loc, &mut stored, self.spare.take())
            })?;
            Ok(Arc::new(CachedBlock::new(block, self.spare.clone())))
        })
    }

    /// Reads up to `size` bytes at `offset` of the content `layout`
    /// describes (fewer only at the end of the file) and hands them to
    /// `consume`, which must not read through this reader again.
    ///
    /// A range inside one chunk is handed over straight from the cached
    /// block; a range over several chunks is assembled in a buffer this
    /// thread reuses. Either way no memory is allocated per read: a
    /// transport writes the bytes to its channel from where they lie.
    pub(crate) fn read_with<T>(
        &self,
        layout: &Layout,
        offset: u64,
        size: u32,
        consume: impl FnOnce(&[u8]) -> T,
    ) -> Result<T> {
        let end = layout.size.min(offset.saturating_add(u64::from(size)));
        if offset >= end {
            return Ok(consume(&[]));
        }
        // The last chunk starting at or before `offset`, skipping empty
        // chunks (they share their start with the next one), and the last
        // one starting before `end`.
        let mut i = layout.starts.partition_point(|&s| s <= offset) - 1;
        let last = layout.starts.partition_point(|&s| s < end) - 1;
        let covering = &layout.chunks[i..=last];
        if let Some(first) = contiguous_run(covering) {
            // One stretch of one decoded block (the usual case: a file's
            // chunks were stored one after another).
            let block = self.block(first)?;
            let bytes = block.run(covering)?;
            let from = (offset - layout.starts[i]) as usize;
            let to = (end - layout.starts[i]) as usize;
            return Ok(consume(&bytes[from..to]));
        }
        ASSEMBLED.with(|assembled| {
            let mut out = assembled.borrow_mut();
            out.clear();
            let mut at = offset;
            while at < end {
                let (loc, start) = (&layout.chunks[i], layout.starts[i]);
                i += 1;
                if loc.len == 0 {
                    continue;
                }
                let block = self.block(loc)?;
                let bytes = block.chunk(loc)?;
                let from = (at - start) as usize;
                let to = ((end - start) as usize).min(bytes.len());
                out.extend_from_slice(&bytes[from..to]);
                at = start + to as u64;
            }
            let result = consume(&out);
            // A rare huge read should not pin its buffer for the thread's life.
            if out.capacity() > 4 << 20 {
                *out = Vec::new();
            }
            Ok(result)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nexus_store::Hash;

    fn loc(len: u32) -> ChunkLocation {
        ChunkLocation {
            hash: Hash([0; 32]),
            pack: "p".into(),
            offset: 0,
            block_len: 0,
            inner: 0,
            len,
        }
    }

    fn at(offset: u64, inner: u32, len: u32) -> ChunkLocation {
        ChunkLocation {
            offset,
            inner,
            ..loc(len)
        }
    }

    #[test]
    fn runs_are_chunks_side_by_side_in_one_block() {
        let side_by_side = [at(0, 0, 3), at(0, 3, 4), at(0, 7, 0), at(0, 7, 2)];
        let run = contiguous_run(&side_by_side).expect("one run");
        assert_eq!((run.inner, run.len), (0, 3));
        // Empty chunks are skipped wherever their location points.
        assert!(contiguous_run(&[at(9, 0, 0), at(0, 5, 3), at(0, 8, 1)]).is_some());
        assert!(
            contiguous_run(&[at(0, 0, 3), at(0, 4, 4)]).is_none(),
            "a gap"
        );
        assert!(
            contiguous_run(&[at(0, 3, 3), at(0, 0, 3)]).is_none(),
            "out of order"
        );
        assert!(
            contiguous_run(&[at(0, 0, 3), at(1, 3, 3)]).is_none(),
            "two blocks"
        );
        let mut other_pack = at(0, 3, 3);
        other_pack.pack = "q".into();
        assert!(contiguous_run(&[at(0, 0, 3), other_pack]).is_none());
        assert!(contiguous_run(&[at(0, 0, 0)]).is_none(), "nothing to read");
    }

    #[test]
    fn layouts_must_add_up() {
        assert!(Layout::new(vec![loc(3), loc(4)], 7).is_ok());
        assert!(Layout::new(vec![loc(3), loc(4)], 8).is_err());
        assert!(Layout::new(vec![loc(0)], 0).is_ok());
    }
}
