//! Decoded blocks: reading a block from a [`PackSource`], decoding it,
//! verifying each chunk against its BLAKE3 name, and keeping recently used
//! blocks in a bounded cache.
//!
//! Chunks are stored compressed together in blocks of about 1 MiB, and
//! readers take pieces of 4 KiB to 1 MiB, so without a cache a sequential
//! read would decode each block several times. Decoded blocks are kept in a
//! [`quick_cache`] bounded by their byte size; each chunk is checked against
//! its BLAKE3 name the first time it is taken out of a cached block and
//! trusted while the block stays cached. A chunk that fails the check is an
//! error every time: **no bytes whose hash differs from the chunk's name
//! ever leave this module.** Blocks are named by pack and offset, and packs
//! are immutable and never renamed, so a cached block never goes stale.

use std::cell::RefCell;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use quick_cache::sync::{Cache, DefaultLifecycle};
use quick_cache::{DefaultHashBuilder, OptionsBuilder, Weighter};

use super::layout::{Layout, contiguous_run};
use super::source::PackSource;
use crate::error::{Result, StoreError};
use crate::pack::{Block, ChunkLocation, damaged, decode_block_into};
use crate::params::{BLOCK_MAX_STORED, BLOCK_TARGET};

/// Share of the block cache for blocks used more than once. Blocks are used
/// by recency, not frequency: a reader works through one block in several
/// requests, then moves on. quick_cache keeps only 3% of its space for newly
/// admitted entries by default, less than one block for a small cache, so
/// with a few readers a block was evicted before its next request and
/// decoded again; half the space for new entries lets each reader's current
/// blocks stay.
const HOT_SHARE: f64 = 0.5;

/// Decoded-block buffers kept for reuse (at most this many, about 1 MiB
/// each): enough for the threads decoding at once.
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
        if buffer.capacity() == 0 || buffer.capacity() > 2 * BLOCK_TARGET {
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
    /// Bytes of a read spanning several blocks, assembled per thread.
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
        // Not verified yet (or not listed): the full check, which hashes the
        // bytes and explains any mismatch.
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
            .ok_or_else(|| StoreError::Invalid("a chunk run extends past its block".into()))
    }

    fn weight(&self) -> u64 {
        // The capacity: a recycled buffer may be larger than this block,
        // and all of it was touched by an earlier one.
        (self.block.data.capacity() + self.block.entries.len() * 48 + 128) as u64
    }
}

/// A block's name: its pack and offset.
type BlockKey = (Arc<str>, u64);

#[derive(Clone)]
struct BlockWeighter;

impl Weighter<BlockKey, Arc<CachedBlock>> for BlockWeighter {
    fn weight(&self, _key: &BlockKey, block: &Arc<CachedBlock>) -> u64 {
        block.weight()
    }
}

/// Reads verified chunks and byte ranges of file contents from a
/// [`PackSource`], through a bounded cache of decoded blocks.
pub struct BlockReader {
    source: Arc<dyn PackSource>,
    blocks: Cache<BlockKey, Arc<CachedBlock>, BlockWeighter>,
    spare: Arc<SpareBuffers>,
}

impl BlockReader {
    /// A reader of `source` keeping up to `cache_bytes` of decoded blocks.
    pub fn new(source: Arc<dyn PackSource>, cache_bytes: u64) -> BlockReader {
        // Blocks are about 1 MiB decoded.
        let estimated = (cache_bytes / (1 << 20)).max(4) as usize;
        let blocks = OptionsBuilder::new()
            .estimated_items_capacity(estimated)
            .weight_capacity(cache_bytes.max(1))
            .hot_allocation(HOT_SHARE)
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
        BlockReader {
            source,
            blocks,
            spare: Arc::default(),
        }
    }

    /// Where the packs are read from.
    pub fn source(&self) -> &dyn PackSource {
        &*self.source
    }

    /// Closes the source's open packs (after gc replaced some); decoded
    /// blocks stay cached, since a block's bytes never change.
    pub fn forget_packs(&self) {
        self.source.forget();
    }

    /// The block holding `loc`, exactly as stored (header, table, payload),
    /// not decoded or verified: for copying blocks verbatim into an archive
    /// after checking them with [`crate::pack::decode_block`].
    pub fn stored_block(&self, loc: &ChunkLocation) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.read_stored(loc, &mut buf)?;
        Ok(buf)
    }

    /// Reads the stored block holding `loc` into `buf` (resized to its
    /// length). A block that is not where the index says damages the
    /// chunk; a missing pack is [`StoreError::PackMissing`].
    fn read_stored(&self, loc: &ChunkLocation, buf: &mut Vec<u8>) -> Result<()> {
        if loc.block_len as usize > BLOCK_MAX_STORED {
            return Err(damaged(
                loc,
                format!("absurd block length {}", loc.block_len),
            ));
        }
        buf.resize(loc.block_len as usize, 0);
        self.source
            .read_exact_at(&loc.pack, loc.offset, buf)
            .map_err(|e| match e {
                StoreError::PackShort { .. } => {
                    damaged(loc, "block extends past the end of the pack".into())
                }
                StoreError::Io { source, .. } => damaged(loc, format!("read failed: {source}")),
                other => other,
            })
    }

    fn block(&self, loc: &ChunkLocation) -> Result<Arc<CachedBlock>> {
        let key = (loc.pack.clone(), loc.offset);
        self.blocks.get_or_insert_with(&key, || {
            let block = STORED.with(|stored| {
                let mut stored = stored.borrow_mut();
                self.read_stored(loc, &mut stored)?;
                decode_block_into(&stored, self.spare.take()).map_err(|why| damaged(loc, why))
            })?;
            Ok(Arc::new(CachedBlock::new(block, self.spare.clone())))
        })
    }

    /// Hands the verified bytes of chunk `loc` to `consume`.
    pub fn chunk_with<T>(
        &self,
        loc: &ChunkLocation,
        consume: impl FnOnce(&[u8]) -> T,
    ) -> Result<T> {
        let block = self.block(loc)?;
        Ok(consume(block.chunk(loc)?))
    }

    /// Reads up to `size` bytes at `offset` of the content `layout`
    /// describes (fewer only at the end of the content) and hands them to
    /// `consume`, which must not read through this reader again.
    ///
    /// A range inside one block is handed over straight from the cached
    /// block; a range over several blocks is assembled in a buffer this
    /// thread reuses. Either way no memory is allocated per read: a
    /// transport writes the bytes to its channel from where they lie.
    pub fn read_with<T>(
        &self,
        layout: &Layout,
        offset: u64,
        size: u32,
        consume: impl FnOnce(&[u8]) -> T,
    ) -> Result<T> {
        let end = layout.size().min(offset.saturating_add(u64::from(size)));
        if offset >= end {
            return Ok(consume(&[]));
        }
        let (mut i, last) = layout.covering(offset, end);
        let covering = &layout.chunks()[i..=last];
        if let Some(first) = contiguous_run(covering) {
            // One stretch of one decoded block (the usual case: a file's
            // chunks were stored one after another).
            let block = self.block(first)?;
            let bytes = block.run(covering)?;
            let from = (offset - layout.start(i)) as usize;
            let to = (end - layout.start(i)) as usize;
            return Ok(consume(&bytes[from..to]));
        }
        ASSEMBLED.with(|assembled| {
            let mut out = assembled.borrow_mut();
            out.clear();
            let mut at = offset;
            while at < end {
                let (loc, start) = (&layout.chunks()[i], layout.start(i));
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

    /// Writes chunks `from..` of `layout` to `out`, verified, one after
    /// another; returns how many chunks were written before an error, with
    /// it. A caller that looks the layout up again after
    /// [`StoreError::PackMissing`] resumes at that chunk.
    pub fn copy_chunks(
        &self,
        layout: &Layout,
        from: usize,
        out: &mut dyn Write,
    ) -> (usize, Result<()>) {
        let mut done = from;
        for loc in &layout.chunks()[from.min(layout.chunks().len())..] {
            let written = self.chunk_with(loc, |bytes| {
                out.write_all(bytes)
                    .map_err(|e| StoreError::io("<output>", e))
            });
            if let Err(e) = written.and_then(|w| w) {
                return (done, Err(e));
            }
            done += 1;
        }
        (done, Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::Hash;
    use crate::pack::{BlockBuilder, PackWriter, block_compressor};
    use crate::read::source::LocalPacks;

    fn pack_of(dir: &std::path::Path, chunks: &[&[u8]]) -> Vec<ChunkLocation> {
        let mut writer = PackWriter::create(dir).unwrap();
        let mut builder = BlockBuilder::default();
        for c in chunks {
            builder.push(Hash::of(c), c);
        }
        let locs = writer
            .append(&builder.finish(&mut block_compressor(3).unwrap()))
            .unwrap();
        writer.seal().unwrap();
        locs
    }

    #[test]
    fn ranges_read_across_chunks_and_damage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (vec![b'a'; 5000], vec![b'b'; 3000]);
        let locs = pack_of(dir.path(), &[&a, &b]);
        let reader = BlockReader::new(Arc::new(LocalPacks::new(dir.path())), 8 << 20);
        let layout = Layout::of_chunks(locs.clone());
        let bytes = reader.read_with(&layout, 4990, 20, <[u8]>::to_vec).unwrap();
        assert_eq!(bytes, [&a[..10], &b[..10]].concat());
        let mut all = Vec::new();
        let (done, result) = reader.copy_chunks(&layout, 0, &mut all);
        result.unwrap();
        assert_eq!(done, 2);
        assert_eq!(all, [a.clone(), b.clone()].concat());

        // A location naming another hash is damage, never bytes.
        let mut wrong = locs[0].clone();
        wrong.hash = Hash::of(b"something else");
        assert!(matches!(
            reader.chunk_with(&wrong, <[u8]>::to_vec),
            Err(StoreError::Damaged { .. })
        ));
        // A pack that is gone is told apart from damage.
        let mut gone = locs[0].clone();
        gone.pack = "0000.pack".into();
        assert!(matches!(
            reader.chunk_with(&gone, <[u8]>::to_vec),
            Err(StoreError::PackMissing { .. })
        ));
    }
}
