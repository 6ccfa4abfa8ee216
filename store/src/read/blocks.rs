//! Decoded frames: reading a block's head and the frames a read needs from
//! a [`PackSource`], decoding them, verifying each chunk against its
//! BLAKE3 name, and keeping recently used frames in a bounded cache.
//!
//! Chunks are stored compressed together in blocks of about 1 MiB, each
//! made of frames decoded on their own (FORMAT.md, "Packs and blocks"): a
//! run of small files shares one frame, the chunks of a large file are
//! framed in about 128 KiB, and a block of format v1 is one frame. Readers
//! take pieces of 4 KiB to 1 MiB, so a read decodes only the frames holding
//! the chunks it covers, and a sequential read does not decode a frame
//! twice: decoded frames are kept in a [`quick_cache`] bounded by their
//! byte size, and each block's parsed head (its chunk and frame tables) in
//! another. Each chunk is checked against its BLAKE3 name the first time it
//! is taken out of a cached frame and trusted while the frame stays cached.
//! A chunk that fails the check is an error every time: **no bytes whose
//! hash differs from the chunk's name ever leave this module.** Blocks are
//! named by pack and offset, and packs are immutable and never renamed, so
//! nothing cached ever goes stale.

use std::cell::RefCell;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use quick_cache::sync::{Cache, DefaultLifecycle};
use quick_cache::{DefaultHashBuilder, OptionsBuilder, Weighter};

use super::ahead::ReadAhead;
use super::layout::{Layout, contiguous_run};
use super::source::PackSource;
use crate::error::{Result, StoreError};
use crate::pack::{
    BlockHead, ChunkLocation, Frame, FrameCheck, ParsedHead, chunk_of, damaged, decode_frame_into,
};
use crate::params::{BLOCK_MAX_STORED, BLOCK_TARGET};

/// Share of the frame cache for frames used more than once. Frames are used
/// by recency, not frequency: a reader works through one frame in several
/// requests, then moves on. quick_cache keeps only 3% of its space for newly
/// admitted entries by default, less than one block for a small cache, so
/// with a few readers a block was evicted before its next request and
/// decoded again; half the space for new entries lets each reader's current
/// frames stay.
const HOT_SHARE: f64 = 0.5;

/// Decoded-frame buffers kept for reuse. Frames are evicted as often as
/// new ones are decoded, so a few suffice; each kept is resident memory
/// (up to 1.5 MiB).
const SPARE_BUFFERS: usize = 4;

/// The smallest buffer capacity handed out for a frame.
const SMALLEST_BUFFER: usize = 64 << 10;

/// Bytes read first from a block not seen yet: its header and tables
/// (those of a block of 100 chunks fit), before the frames a read needs.
const HEAD_READ: usize = 4096;

/// Bytes of parsed block heads kept: a head is its chunk table (about 50
/// bytes a chunk), and a pack of 64 MiB has about 64 blocks.
const HEAD_CACHE_BYTES: u64 = 4 << 20;

/// Payload buffers of evicted frames, handed to the next decode. A frame
/// decoded into fresh memory makes the kernel map and zero it page by page;
/// under a cold read of many files that cost more than zstd.
///
/// Buffers come in size classes (powers of two and the halfway points
/// between them), and a frame gets one of its own class only: the cache
/// weighs a frame by its buffer, and a 128 KiB frame of a large file
/// decoded into a spare 1 MiB buffer weighed eight times its bytes, so
/// that a cold read of many files pushed out frames a few megabytes after
/// they were decoded, and decoded them again.
#[derive(Default)]
struct SpareBuffers(Mutex<Vec<Vec<u8>>>);

impl SpareBuffers {
    /// An empty buffer of capacity [`buffer_class`]`(len)`: a spare one of
    /// that class, or a new one.
    fn take(&self, len: usize) -> Vec<u8> {
        let class = buffer_class(len);
        let mut spare = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match spare.iter().rposition(|b| b.capacity() == class) {
            Some(i) => spare.swap_remove(i),
            None => Vec::with_capacity(class),
        }
    }

    /// Keeps `buffer` for a later frame of its class, in place of the
    /// spare kept longest when there are [`SPARE_BUFFERS`] already (the
    /// sizes wanted follow what is being read).
    fn give(&self, mut buffer: Vec<u8>) {
        // Buffers grown past their class (a rare large block) are not
        // worth keeping.
        if buffer.capacity() != buffer_class(buffer.capacity())
            || buffer.capacity() > 2 * BLOCK_TARGET
        {
            return;
        }
        buffer.clear();
        let mut spare = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if spare.len() >= SPARE_BUFFERS {
            spare.remove(0);
        }
        spare.push(buffer);
    }
}

/// The capacity of the buffer a frame of `len` bytes is decoded into: the
/// smallest power of two, or three quarters of one, that holds it (at
/// least [`SMALLEST_BUFFER`]), so that a buffer is at most half again as
/// large as its frame (beyond the smallest class).
fn buffer_class(len: usize) -> usize {
    let len = len.max(SMALLEST_BUFFER);
    let power = len.checked_next_power_of_two().unwrap_or(len);
    let three_quarters = power / 4 * 3;
    if three_quarters >= len {
        three_quarters
    } else {
        power
    }
}

thread_local! {
    /// Stored (compressed) bytes of the frame being decoded, per thread.
    static STORED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// Bytes of a read spanning several frames, assembled per thread.
    static ASSEMBLED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A decoded frame and which of its chunks were verified already.
struct CachedFrame {
    /// The head of its block (for the chunk table).
    head: Arc<BlockHead>,
    /// Offset of the frame's first byte in the decoded block.
    raw_start: u32,
    /// The decoded bytes.
    data: Vec<u8>,
    /// Index in the block's table of the frame's first chunk.
    first_entry: usize,
    /// Whether each of the frame's chunks (from `first_entry` on) was
    /// verified.
    verified: Vec<AtomicBool>,
    /// Where the buffer goes when the frame leaves the cache.
    spare: Arc<SpareBuffers>,
}

impl Drop for CachedFrame {
    fn drop(&mut self) {
        self.spare.give(std::mem::take(&mut self.data));
    }
}

impl CachedFrame {
    fn new(head: Arc<BlockHead>, frame: usize, data: Vec<u8>, spare: Arc<SpareBuffers>) -> Self {
        let f = head.frames[frame];
        // The chunks starting in the frame (an empty chunk at its end
        // belongs to the next frame, as `BlockHead::frame_of` says, unless
        // this is the last).
        let first_entry = head.entries.partition_point(|e| e.inner < f.raw_start);
        let next_entry = if frame + 1 == head.frames.len() {
            head.entries.len()
        } else {
            head.entries
                .partition_point(|e| e.inner < f.raw_start + f.raw_len)
        };
        let count = next_entry.saturating_sub(first_entry);
        CachedFrame {
            raw_start: f.raw_start,
            head,
            data,
            first_entry,
            verified: (0..count).map(|_| AtomicBool::new(false)).collect(),
            spare,
        }
    }

    /// The verified bytes of the chunk `loc` names.
    fn chunk(&self, loc: &ChunkLocation) -> Result<&[u8]> {
        let flag = self
            .head
            .entry_of(loc)
            .and_then(|i| i.checked_sub(self.first_entry))
            .and_then(|i| self.verified.get(i));
        if let Some(flag) = flag
            && flag.load(Ordering::Acquire)
        {
            let start = (loc.inner - self.raw_start) as usize;
            if let Some(bytes) = self.data.get(start..start + loc.len as usize) {
                return Ok(bytes);
            }
        }
        // Not verified yet (or not listed): the full check, which hashes the
        // bytes and explains any mismatch.
        let bytes = chunk_of(&self.head.entries, &self.data, self.raw_start, loc)?;
        if let Some(flag) = flag {
            flag.store(true, Ordering::Release);
        }
        Ok(bytes)
    }

    /// The verified bytes of `chunks`, which lie one after another in this
    /// frame, as one slice.
    fn run(&self, chunks: &[ChunkLocation]) -> Result<&[u8]> {
        let mut span: Option<(usize, usize)> = None;
        for loc in chunks.iter().filter(|c| c.len > 0) {
            let bytes = self.chunk(loc)?;
            let start = (loc.inner - self.raw_start) as usize;
            span = Some(match span {
                None => (start, start + bytes.len()),
                Some((from, _)) => (from, start + bytes.len()),
            });
        }
        let (from, to) = span.unwrap_or((0, 0));
        self.data
            .get(from..to)
            .ok_or_else(|| StoreError::Invalid("a chunk run extends past its frame".into()))
    }

    /// True when the frame holds every byte of `inner..end` of its block.
    fn holds(&self, inner: u32, end: u64) -> bool {
        inner >= self.raw_start && end <= u64::from(self.raw_start) + self.data.len() as u64
    }

    fn weight(&self) -> u64 {
        // The capacity (the frame's class, see `SpareBuffers`): all of it
        // is memory a decode touched.
        (self.data.capacity() + self.verified.len() * 8 + 160) as u64
    }
}

/// Verified bytes of a content that lie decoded in the frame cache,
/// held (the frame stays alive while this does): what a transport may hand
/// its client ahead of a read ([`BlockReader::cached_beside`]).
pub struct CachedBytes {
    frame: Arc<CachedFrame>,
    range: std::ops::Range<usize>,
}

impl CachedBytes {
    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.frame.data[self.range.clone()]
    }
}

/// Which side of a content offset [`BlockReader::cached_beside`] looks on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The bytes that end at the offset.
    Before,
    /// The bytes that start at the offset.
    After,
}

/// A frame's name: its block's pack and offset, and its index.
type FrameKey = (Arc<str>, u64, u32);
/// A block's name: its pack and offset.
type HeadKey = (Arc<str>, u64);

#[derive(Clone)]
struct FrameWeighter;

impl Weighter<FrameKey, Arc<CachedFrame>> for FrameWeighter {
    fn weight(&self, _key: &FrameKey, frame: &Arc<CachedFrame>) -> u64 {
        frame.weight()
    }
}

#[derive(Clone)]
struct HeadWeighter;

impl Weighter<HeadKey, Arc<BlockHead>> for HeadWeighter {
    fn weight(&self, _key: &HeadKey, head: &Arc<BlockHead>) -> u64 {
        (head.entries.len() * 48 + head.frames.len() * 24 + 96) as u64
    }
}

/// Block heads and decoded frames of a [`PackSource`], in bounded caches:
/// what [`BlockReader`] and its read-ahead threads share.
pub(super) struct Frames {
    source: Arc<dyn PackSource>,
    frames: Cache<FrameKey, Arc<CachedFrame>, FrameWeighter>,
    heads: Cache<HeadKey, Arc<BlockHead>, HeadWeighter>,
    spare: Arc<SpareBuffers>,
    check: FrameCheck,
}

/// Reads verified chunks and byte ranges of file contents from a
/// [`PackSource`], through bounded caches of block heads and decoded
/// frames, optionally decoding ahead of sequential readers on other
/// threads.
pub struct BlockReader {
    frames: Arc<Frames>,
    ahead: Option<ReadAhead>,
}

impl BlockReader {
    /// A reader of `source` keeping up to `cache_bytes` of decoded frames,
    /// checking frames' zstd checksums.
    pub fn new(source: Arc<dyn PackSource>, cache_bytes: u64) -> BlockReader {
        BlockReader::checking(source, cache_bytes, FrameCheck::Checksum)
    }

    /// A reader of `source` keeping up to `cache_bytes` of decoded frames,
    /// checking frames as `check` says (chunks are hashed either way).
    pub fn checking(
        source: Arc<dyn PackSource>,
        cache_bytes: u64,
        check: FrameCheck,
    ) -> BlockReader {
        BlockReader {
            frames: Arc::new(Frames::new(source, cache_bytes, check)),
            ahead: None,
        }
    }

    /// Also decodes the frames a sequential reader will want next, on
    /// `threads` threads of its own (none: no read-ahead), so that one
    /// reader of a large file uses more than one core. What they decode
    /// goes into the same bounded cache; a read-ahead that cannot keep up
    /// is dropped, never waited for.
    pub fn with_read_ahead(mut self, threads: usize) -> BlockReader {
        if threads > 0 {
            match ReadAhead::start(self.frames.clone(), threads) {
                Ok(ahead) => self.ahead = Some(ahead),
                Err(e) => tracing::warn!("no read-ahead: {e}"),
            }
        }
        self
    }

    /// Where the packs are read from.
    pub fn source(&self) -> &dyn PackSource {
        &*self.frames.source
    }

    /// Closes the source's open packs (after gc replaced some); decoded
    /// frames stay cached, since a block's bytes never change.
    pub fn forget_packs(&self) {
        self.frames.source.forget();
    }

    /// The block holding `loc`, exactly as stored (header, tables, payload),
    /// not decoded or verified: for copying blocks verbatim into an archive
    /// after checking them with [`crate::pack::decode_block`].
    pub fn stored_block(&self, loc: &ChunkLocation) -> Result<Vec<u8>> {
        let mut buf = vec![0; checked_block_len(loc)?];
        self.frames.read_at(loc, 0, &mut buf)?;
        Ok(buf)
    }

    /// The head (header and tables, checked) of the block holding `loc`,
    /// read once and then cached.
    pub fn head(&self, loc: &ChunkLocation) -> Result<Arc<BlockHead>> {
        self.frames.head(loc)
    }

    /// The stored bytes of `frame` of the block holding `loc` (a frame of
    /// [`BlockReader::head`]'s), not decoded or verified.
    pub fn stored_frame(&self, loc: &ChunkLocation, frame: &Frame) -> Result<Vec<u8>> {
        let mut buf = vec![0; frame.stored_len as usize];
        self.frames
            .read_at(loc, frame.stored_at as usize, &mut buf)?;
        Ok(buf)
    }

    /// Hands the verified bytes of chunk `loc` to `consume`.
    pub fn chunk_with<T>(
        &self,
        loc: &ChunkLocation,
        consume: impl FnOnce(&[u8]) -> T,
    ) -> Result<T> {
        let frame = self.frames.frame_of(loc)?;
        Ok(consume(frame.chunk(loc)?))
    }
}

impl Frames {
    fn new(source: Arc<dyn PackSource>, cache_bytes: u64, check: FrameCheck) -> Frames {
        // Frames are 128 KiB to 1 MiB decoded.
        let estimated = (cache_bytes / (256 << 10)).max(16) as usize;
        let frames = OptionsBuilder::new()
            .estimated_items_capacity(estimated)
            .weight_capacity(cache_bytes.max(1))
            .hot_allocation(HOT_SHARE)
            .build()
            .map(|options| {
                Cache::with_options(
                    options,
                    FrameWeighter,
                    DefaultHashBuilder::default(),
                    DefaultLifecycle::default(),
                )
            })
            .unwrap_or_else(|_| Cache::with_weighter(estimated, cache_bytes.max(1), FrameWeighter));
        Frames {
            source,
            frames,
            heads: Cache::with_weighter(4096, HEAD_CACHE_BYTES, HeadWeighter),
            spare: Arc::default(),
            check,
        }
    }

    /// Reads `buf.len()` bytes at `at` of the block holding `loc`. A block
    /// that is not where the index says damages the chunk; a missing pack
    /// is [`StoreError::PackMissing`].
    fn read_at(&self, loc: &ChunkLocation, at: usize, buf: &mut [u8]) -> Result<()> {
        self.source
            .read_exact_at(&loc.pack, loc.offset + at as u64, buf)
            .map_err(|e| match e {
                StoreError::PackShort { .. } => {
                    damaged(loc, "block extends past the end of the pack".into())
                }
                StoreError::Io { source, .. } => damaged(loc, format!("read failed: {source}")),
                other => other,
            })
    }

    /// The parsed head of the block holding `loc`: read (its first
    /// [`HEAD_READ`] bytes, more if its tables are longer) and checked the
    /// first time, then cached.
    fn head(&self, loc: &ChunkLocation) -> Result<Arc<BlockHead>> {
        let key = (loc.pack.clone(), loc.offset);
        self.heads.get_or_insert_with(&key, || {
            let block_len = checked_block_len(loc)?;
            let mut buf = vec![0; block_len.min(HEAD_READ)];
            if let Err(e) = self.read_at(loc, 0, &mut buf) {
                // A pack cut short inside the block: the head alone may
                // still be there (then only the frames past the cut are
                // lost). Any other failure stands.
                if !matches!(e, StoreError::Damaged { .. }) {
                    return Err(e);
                }
                buf.truncate(crate::pack::BLOCK_HEADER_LEN.min(block_len));
                self.read_at(loc, 0, &mut buf)?;
            }
            let parsed = BlockHead::parse(&buf, block_len).map_err(|why| damaged(loc, why))?;
            let head = match parsed {
                ParsedHead::Head(head) => head,
                ParsedHead::NeedBytes(n) => {
                    buf.resize(n, 0);
                    self.read_at(loc, 0, &mut buf)?;
                    match BlockHead::parse(&buf, block_len).map_err(|why| damaged(loc, why))? {
                        ParsedHead::Head(head) => head,
                        ParsedHead::NeedBytes(_) => {
                            return Err(damaged(loc, "block tables longer than the block".into()));
                        }
                    }
                }
            };
            Ok(Arc::new(head))
        })
    }

    /// Frame `index` of the block whose head is `head`, decoded (read and
    /// decoded the first time, then cached).
    fn frame(
        &self,
        loc: &ChunkLocation,
        head: &Arc<BlockHead>,
        index: usize,
    ) -> Result<Arc<CachedFrame>> {
        let key = (loc.pack.clone(), loc.offset, index as u32);
        self.frames.get_or_insert_with(&key, || {
            let frame = head.frames[index];
            // Empty, with room for the frame.
            let mut buffer = self.spare.take(frame.raw_len as usize);
            let raw = frame.raw_start as usize..(frame.raw_start + frame.raw_len) as usize;
            let data =
                if self
                    .source
                    .decoded(&loc.pack, loc.offset, loc.block_len, raw, &mut buffer)
                {
                    buffer
                } else {
                    STORED.with(|stored| {
                        let mut stored = stored.borrow_mut();
                        stored.resize(frame.stored_len as usize, 0);
                        self.read_at(loc, frame.stored_at as usize, &mut stored)?;
                        // Every chunk is hashed before it is served
                        // (`CachedFrame::chunk`), whatever `check` says.
                        decode_frame_into(&frame, &stored, buffer, self.check)
                            .map_err(|why| damaged(loc, why))
                    })?
                };
            Ok(Arc::new(CachedFrame::new(
                head.clone(),
                index,
                data,
                self.spare.clone(),
            )))
        })
    }

    /// The decoded frame holding chunk `loc`.
    fn frame_of(&self, loc: &ChunkLocation) -> Result<Arc<CachedFrame>> {
        let head = self.head(loc)?;
        let index = head
            .frame_of(loc.inner, loc.len)
            .ok_or_else(|| damaged(loc, "no frame of the block holds the chunk".into()))?;
        self.frame(loc, &head, index)
    }

    /// Decodes the frame holding chunk `loc` into the cache, if it is not
    /// there (for read-ahead: errors are left for the reader to meet).
    pub(super) fn warm(&self, loc: &ChunkLocation) {
        let _ = self.frame_of(loc);
    }

    /// True when the frame holding chunk `loc` is decoded in the cache.
    pub(super) fn is_cached(&self, loc: &ChunkLocation) -> bool {
        let Some(head) = self.heads.peek(&(loc.pack.clone(), loc.offset)) else {
            return false;
        };
        head.frame_of(loc.inner, loc.len).is_some_and(|index| {
            self.frames
                .peek(&(loc.pack.clone(), loc.offset, index as u32))
                .is_some()
        })
    }
}

impl BlockReader {
    /// Reads up to `size` bytes at `offset` of the content `layout`
    /// describes (fewer only at the end of the content) and hands them to
    /// `consume`, which must not read through this reader again.
    ///
    /// A range inside one frame is handed over straight from the cached
    /// frame; a range over several frames is assembled in a buffer this
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
            // One stretch of one block (the usual case: a file's chunks were
            // stored one after another); one slice if one frame holds it.
            let run_end = covering
                .iter()
                .rev()
                .find(|c| c.len > 0)
                .map_or(0, |c| u64::from(c.inner) + u64::from(c.len));
            let frame = self.frames.frame_of(first)?;
            if frame.holds(first.inner, run_end) {
                let bytes = frame.run(covering)?;
                let from = (offset - layout.start(i)) as usize;
                let to = (end - layout.start(i)) as usize;
                self.read_ahead(layout, offset, end);
                return Ok(consume(&bytes[from..to]));
            }
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
                let frame = self.frames.frame_of(loc)?;
                let bytes = frame.chunk(loc)?;
                let from = (at - start) as usize;
                let to = ((end - start) as usize).min(bytes.len());
                out.extend_from_slice(&bytes[from..to]);
                at = start + to as u64;
            }
            self.read_ahead(layout, offset, end);
            let result = consume(&out);
            // A rare huge read should not pin its buffer for the thread's life.
            if out.capacity() > 4 << 20 {
                *out = Vec::new();
            }
            Ok(result)
        })
    }

    /// The bytes of the content `layout` describes on `side` of offset
    /// `at`, at most `limit` of them, as far as they lie one after another
    /// in frames already decoded: each run with the content offset it
    /// starts at, in content order. Every chunk is verified first. Nothing
    /// is read or decoded: a transport pushes what a read or the
    /// read-ahead decoded anyway.
    pub fn cached_beside(
        &self,
        layout: &Layout,
        at: u64,
        side: Side,
        limit: u64,
    ) -> Result<Vec<(u64, CachedBytes)>> {
        match side {
            Side::After => self.cached_from(layout, at, limit),
            Side::Before => {
                let at = at.min(layout.size());
                let start = at.saturating_sub(limit);
                if start >= at {
                    return Ok(Vec::new());
                }
                // The cached chunks that end the range, walking back from
                // the one holding the byte before `at`.
                let (first, last) = layout.covering(start, at);
                let mut begin = None;
                for i in (first..=last).rev() {
                    let loc = &layout.chunks()[i];
                    if loc.len > 0 && !self.frames.is_cached(loc) {
                        break;
                    }
                    begin = Some(layout.start(i).max(start));
                }
                match begin {
                    Some(begin) => self.cached_from(layout, begin, at - begin),
                    None => Ok(Vec::new()),
                }
            }
        }
    }

    /// [`BlockReader::cached_beside`] after `at`.
    fn cached_from(&self, layout: &Layout, at: u64, limit: u64) -> Result<Vec<(u64, CachedBytes)>> {
        let end = layout.size().min(at.saturating_add(limit));
        let mut out: Vec<(u64, CachedBytes)> = Vec::new();
        if at >= end {
            return Ok(out);
        }
        let (first, last) = layout.covering(at, end);
        for i in first..=last {
            let loc = &layout.chunks()[i];
            if loc.len == 0 {
                continue;
            }
            if !self.frames.is_cached(loc) {
                break;
            }
            let frame = self.frames.frame_of(loc)?;
            frame.chunk(loc)?;
            let start = layout.start(i);
            // The part of the chunk inside at..end, as a range of the frame.
            let from = at.max(start) - start;
            let to = (end - start).min(u64::from(loc.len));
            let inner = (loc.inner - frame.raw_start) as usize;
            let range = inner + from as usize..inner + to as usize;
            match out.last_mut() {
                Some((_, run))
                    if Arc::ptr_eq(&run.frame, &frame) && run.range.end == range.start =>
                {
                    run.range.end = range.end;
                }
                _ => out.push((start + from, CachedBytes { frame, range })),
            }
        }
        Ok(out)
    }

    /// Asks the read-ahead threads, if any, for what follows a read of
    /// `offset..end` of `layout`.
    fn read_ahead(&self, layout: &Layout, offset: u64, end: u64) {
        if let Some(ahead) = &self.ahead {
            ahead.after_read(&self.frames, layout, offset, end);
        }
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

/// The length of the block holding `loc`, refused when absurd (a damaged
/// or hostile index must not make a reader allocate gigabytes).
fn checked_block_len(loc: &ChunkLocation) -> Result<usize> {
    if loc.block_len as usize > BLOCK_MAX_STORED {
        return Err(damaged(
            loc,
            format!("absurd block length {}", loc.block_len),
        ));
    }
    Ok(loc.block_len as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::Hash;
    use crate::pack::{BlockBuilder, BlockEncoder, ChunkKind, PackWriter};
    use crate::read::source::LocalPacks;
    use std::sync::atomic::AtomicU64;

    /// The store's packs, counting the bytes read from them.
    struct Counting {
        packs: LocalPacks,
        bytes: AtomicU64,
    }

    impl PackSource for Counting {
        fn read_exact_at(&self, pack: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
            self.bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
            self.packs.read_exact_at(pack, offset, buf)
        }

        fn forget(&self) {}
    }

    /// Chunks of about 50 KiB, compressible but each different.
    fn part(i: u8) -> Vec<u8> {
        (0..50_000u32)
            .map(|n| (n % 251) as u8 ^ i ^ ((n / 1000) as u8))
            .collect()
    }

    #[test]
    fn buffer_classes_hold_their_frame_with_at_most_half_again() {
        for len in (0..=(3 << 20)).step_by(997).chain([
            SMALLEST_BUFFER,
            128 << 10,
            (128 << 10) + 1,
            192 << 10,
            (192 << 10) + 1,
            1 << 20,
            (1 << 20) + 1,
        ]) {
            let class = buffer_class(len);
            assert!(class >= len, "{len} in a buffer of {class}");
            assert!(
                2 * class <= 3 * len.max(SMALLEST_BUFFER),
                "{len} in a buffer of {class}"
            );
            assert_eq!(buffer_class(class), class, "a class is its own class");
        }
    }

    #[test]
    fn a_frame_never_gets_the_larger_buffer_of_an_earlier_one() {
        let spare = SpareBuffers::default();
        // A block-sized frame's buffer, evicted and kept.
        let large = spare.take(1 << 20);
        let large_at = large.as_ptr();
        spare.give(large);
        // A part frame of a large file gets a buffer of its own size: the
        // cache weighs frames by their buffers.
        let part = spare.take(130 << 10);
        assert!(part.capacity() >= 130 << 10);
        assert!(part.capacity() <= 195 << 10, "{}", part.capacity());
        assert_ne!(part.as_ptr(), large_at);
        // A frame of the large one's class gets it back.
        let again = spare.take(900 << 10);
        assert_eq!(again.as_ptr(), large_at);
        assert_eq!(again.capacity(), 1 << 20);
        // At most SPARE_BUFFERS are kept, the newest.
        for len in 1..=SPARE_BUFFERS + 2 {
            spare.give(Vec::with_capacity(buffer_class(len << 16)));
        }
        let kept = spare.0.lock().unwrap();
        assert_eq!(kept.len(), SPARE_BUFFERS);
        assert_eq!(kept[0].capacity(), buffer_class(3 << 16));
    }

    #[test]
    fn a_small_read_of_a_large_file_reads_and_decodes_one_frame() {
        let dir = tempfile::tempdir().unwrap();
        let small = b"a small file next to a large one ".repeat(100);
        let parts: Vec<Vec<u8>> = (0..16).map(part).collect();
        let mut writer = PackWriter::create(dir.path()).unwrap();
        let mut builder = BlockBuilder::default();
        builder.push(Hash::of(&small), &small);
        for p in &parts {
            builder.push_kind(Hash::of(p), p, ChunkKind::Part);
        }
        let block = builder.finish(&mut BlockEncoder::new(3, 3).unwrap());
        // A frame of parts closes once it holds the frame target.
        let per = crate::params::FRAME_TARGET.div_ceil(50_000);
        assert_eq!(
            block.frames.len(),
            1 + 16usize.div_ceil(per),
            "the small file, then parts {per} by {per}"
        );
        let locs = writer.append(&block).unwrap();
        writer.seal().unwrap();
        let counting = Arc::new(Counting {
            packs: LocalPacks::new(dir.path()),
            bytes: AtomicU64::new(0),
        });
        let reader = BlockReader::new(counting.clone(), 8 << 20);
        let layout = Layout::of_chunks(locs[1..].to_vec());
        let at = 11 * 50_000 + 1234;
        let got = reader
            .read_with(&layout, at as u64, 4096, <[u8]>::to_vec)
            .unwrap();
        assert_eq!(got, parts[11][1234..1234 + 4096]);
        let read = counting.bytes.load(Ordering::Relaxed);
        let frame = block.frames[1 + 11 / per].1 as u64;
        assert!(
            read <= HEAD_READ as u64 + frame,
            "a 4 KiB read read {read} bytes of a {}-byte block",
            block.encoded_len()
        );
        // A read across two frames assembles both; the whole file reads back.
        let across = reader
            .read_with(&layout, (per * 50_000 - 10) as u64, 20, <[u8]>::to_vec)
            .unwrap();
        assert_eq!(
            across,
            [&parts[per - 1][49_990..], &parts[per][..10]].concat()
        );
        let mut all = Vec::new();
        reader.copy_chunks(&layout, 0, &mut all).1.unwrap();
        assert_eq!(all, parts.concat());
    }

    /// The store's packs, with every block also held decoded (as a remote
    /// source holds the blocks it fetched and verified), its bytes flipped
    /// at `flip` when given; counts the stored bytes read.
    struct HoldingDecoded {
        counting: Counting,
        decoded: Vec<u8>,
        flip: Option<usize>,
    }

    impl PackSource for HoldingDecoded {
        fn read_exact_at(&self, pack: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
            self.counting.read_exact_at(pack, offset, buf)
        }

        fn decoded(
            &self,
            _pack: &str,
            _offset: u64,
            _block_len: u32,
            raw: std::ops::Range<usize>,
            out: &mut Vec<u8>,
        ) -> bool {
            let start = out.len();
            out.extend_from_slice(&self.decoded[raw.clone()]);
            if let Some(at) = self.flip.filter(|at| raw.contains(at)) {
                out[start + at - raw.start] ^= 1;
            }
            true
        }

        fn forget(&self) {}
    }

    #[test]
    fn frames_the_source_holds_decoded_are_taken_from_it_and_still_verified() {
        let dir = tempfile::tempdir().unwrap();
        let parts: Vec<Vec<u8>> = (0..8).map(part).collect();
        let locs = pack_of_parts(dir.path(), &parts, 8);
        let layout = Layout::of_chunks(locs.clone());
        let decoded = parts.concat();
        let source = |flip| {
            Arc::new(HoldingDecoded {
                counting: Counting {
                    packs: LocalPacks::new(dir.path()),
                    bytes: AtomicU64::new(0),
                },
                decoded: decoded.clone(),
                flip,
            })
        };
        let holding = source(None);
        let reader = BlockReader::new(holding.clone(), 8 << 20);
        let mut all = Vec::new();
        reader.copy_chunks(&layout, 0, &mut all).1.unwrap();
        assert_eq!(all, decoded);
        let read = holding.counting.bytes.load(Ordering::Relaxed);
        assert!(
            read <= HEAD_READ as u64,
            "only the head was read from the pack, not {read} bytes"
        );

        // Decoded bytes that are not the chunks': refused, never served.
        let flipped = source(Some(3 * 50_000 + 7));
        let reader = BlockReader::new(flipped, 8 << 20);
        let err = reader
            .read_with(&layout, 3 * 50_000, 4096, <[u8]>::to_vec)
            .unwrap_err();
        assert!(matches!(err, StoreError::Damaged { .. }), "{err}");
        let fine = reader
            .read_with(&layout, 50_000, 4096, <[u8]>::to_vec)
            .unwrap();
        assert_eq!(fine, parts[1][..4096]);
    }

    /// A pack of `parts`, cut files' chunks, `per_block` to a block.
    fn pack_of_parts(
        dir: &std::path::Path,
        parts: &[Vec<u8>],
        per_block: usize,
    ) -> Vec<ChunkLocation> {
        let mut writer = PackWriter::create(dir).unwrap();
        let mut locs = Vec::new();
        let mut encoder = BlockEncoder::new(3, 3).unwrap();
        for block in parts.chunks(per_block) {
            let mut builder = BlockBuilder::default();
            for p in block {
                builder.push_kind(Hash::of(p), p, ChunkKind::Part);
            }
            locs.extend(writer.append(&builder.finish(&mut encoder)).unwrap());
        }
        writer.seal().unwrap();
        locs
    }

    #[test]
    fn sequential_reads_get_the_next_frames_decoded_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let parts: Vec<Vec<u8>> = (0..24).map(part).collect();
        let locs = pack_of_parts(dir.path(), &parts, 12);
        let layout = Layout::of_chunks(locs.clone());
        let source = Arc::new(LocalPacks::new(dir.path()));
        let plain = BlockReader::new(source.clone(), 16 << 20);
        let ahead = BlockReader::new(source, 16 << 20).with_read_ahead(2);
        for reader in [&plain, &ahead] {
            // Three reads, each continuing the one before: two in a row
            // make the reads sequential.
            let read: Vec<u8> = (0..3)
                .flat_map(|i| {
                    reader
                        .read_with(&layout, i * 4096, 4096, <[u8]>::to_vec)
                        .unwrap()
                })
                .collect();
            assert_eq!(read, parts[0][..3 * 4096]);
        }
        // The chunks of the next 2 MiB, in both blocks, get decoded without
        // being read; without read-ahead, nothing past the read is.
        let last = &locs[23];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !ahead.frames.is_cached(last) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(
            ahead.frames.is_cached(last),
            "the last frame was not decoded ahead"
        );
        // The first chunk of the second frame (frames close at the target).
        let per = crate::params::FRAME_TARGET.div_ceil(50_000);
        assert!(!plain.frames.is_cached(&locs[per]));
        let mut all = Vec::new();
        ahead.copy_chunks(&layout, 0, &mut all).1.unwrap();
        assert_eq!(all, parts.concat());
    }

    #[test]
    fn what_lies_decoded_beside_a_read_is_found_on_either_side() {
        let dir = tempfile::tempdir().unwrap();
        let parts: Vec<Vec<u8>> = (0..8).map(part).collect();
        let locs = pack_of_parts(dir.path(), &parts, 8);
        let reader = BlockReader::new(Arc::new(LocalPacks::new(dir.path())), 8 << 20);
        let layout = Layout::of_chunks(locs);
        let joined = |spans: Vec<(u64, CachedBytes)>| -> (u64, Vec<u8>) {
            let start = spans.first().map_or(0, |(at, _)| *at);
            (
                start,
                spans.iter().flat_map(|(_, b)| b.bytes().to_vec()).collect(),
            )
        };
        // Nothing decoded yet: nothing on either side.
        let at = 5 * 50_000 + 4096;
        assert!(
            reader
                .cached_beside(&layout, at, Side::Before, 1 << 20)
                .unwrap()
                .is_empty()
        );
        assert!(
            reader
                .cached_beside(&layout, at, Side::After, 1 << 20)
                .unwrap()
                .is_empty()
        );
        // A read of part 5 decodes its frame (frames close once they hold
        // the frame target: `per` parts of 50,000 bytes each).
        let per = crate::params::FRAME_TARGET.div_ceil(50_000);
        let (first, end) = (5 / per * per, (5 / per * per + per).min(8));
        reader.read_with(&layout, at, 4096, <[u8]>::to_vec).unwrap();
        let all = parts.concat();
        let (start, before) = joined(
            reader
                .cached_beside(&layout, at, Side::Before, 1 << 20)
                .unwrap(),
        );
        assert_eq!(
            start,
            (first * 50_000) as u64,
            "the frame's first chunk begins the run"
        );
        assert_eq!(before, all[first * 50_000..at as usize]);
        let (start, after) = joined(
            reader
                .cached_beside(&layout, at, Side::After, 1 << 20)
                .unwrap(),
        );
        assert_eq!(start, at);
        assert_eq!(after, all[at as usize..end * 50_000]);
        // A limit cuts the run short on its far end.
        let (start, near) = joined(
            reader
                .cached_beside(&layout, at, Side::Before, 100)
                .unwrap(),
        );
        assert_eq!(
            (start, near.as_slice()),
            (at - 100, &all[at as usize - 100..at as usize])
        );
    }

    fn pack_of(dir: &std::path::Path, chunks: &[&[u8]]) -> Vec<ChunkLocation> {
        let mut writer = PackWriter::create(dir).unwrap();
        let mut builder = BlockBuilder::default();
        for c in chunks {
            builder.push(Hash::of(c), c);
        }
        let locs = writer
            .append(&builder.finish(&mut BlockEncoder::new(3, 3).unwrap()))
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

    /// The store's packs with one byte of the pack at `flip` changed.
    struct Flipped {
        packs: LocalPacks,
        flip: u64,
    }

    impl PackSource for Flipped {
        fn read_exact_at(&self, pack: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
            self.packs.read_exact_at(pack, offset, buf)?;
            if let Some(i) = self.flip.checked_sub(offset)
                && let Some(byte) = buf.get_mut(i as usize)
            {
                *byte ^= 0x10;
            }
            Ok(())
        }

        fn forget(&self) {}
    }

    #[test]
    fn a_damaged_byte_anywhere_in_a_block_reads_as_damage_never_as_other_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let text = b"the quick brown fox jumps over the lazy dog; ".repeat(150);
        let varied = part(7)[..12_000].to_vec();
        let locs = pack_of(dir.path(), &[&text, &varied]);
        let layout = Layout::of_chunks(locs.clone());
        let expected = [text, varied].concat();
        let block = locs[0].offset..locs[0].offset + u64::from(locs[0].block_len);
        // The frame's checksum is its last 4 bytes.
        let checksum = block.end - 4..block.end;
        for check in [FrameCheck::ChunkHashes, FrameCheck::Checksum] {
            let mut served_intact = std::collections::BTreeSet::new();
            for flip in block.clone().step_by(3).chain(checksum.clone()) {
                let source = Flipped {
                    packs: LocalPacks::new(dir.path()),
                    flip,
                };
                let reader = BlockReader::checking(Arc::new(source), 8 << 20, check);
                let mut all = Vec::new();
                match reader.copy_chunks(&layout, 0, &mut all).1 {
                    Ok(()) => {
                        assert_eq!(
                            all, expected,
                            "{check:?}: byte {flip} damaged, other bytes served"
                        );
                        served_intact.insert(flip);
                    }
                    Err(StoreError::Damaged { .. }) => {}
                    Err(e) => panic!("{check:?}: byte {flip} damaged: {e}"),
                }
            }
            // Chunk hashes alone (the daemons) leave the chunks readable
            // when only the checksum is damaged; a reader that reports
            // damage (`nip verify`) names it.
            let checksum_served = served_intact
                .iter()
                .filter(|f| checksum.contains(f))
                .count();
            match check {
                FrameCheck::ChunkHashes => assert_eq!(checksum_served, 4),
                FrameCheck::Checksum => assert_eq!(checksum_served, 0),
            }
        }
    }
}
