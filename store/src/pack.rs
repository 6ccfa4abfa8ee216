//! Pack files: append-only containers of compressed chunks (FORMAT.md, "Packs").
//!
//! A pack is `NXPACK01` followed by blocks. A block holds consecutive new
//! chunks (about 1 MiB of them) in one or more *frames*, each an
//! independently decodable zstd frame of whole chunks: the chunks of small
//! files, read whole and usually with their neighbours, share large frames
//! (whole blocks compress far better than single chunks, measured in
//! `bench/README.md`), and so do the chunks of files up to a few MiB, read
//! whole or nearly; the chunks of large files, which programs map and read
//! at any offset, are framed in about [`FRAME_TARGET`] raw bytes, so that
//! reading 4 KiB of them decodes a frame, not a megabyte
//! ([`crate::params::ChunkParams::chunk_kind`] decides).
//! Each block starts with a 32-byte header, a table naming its chunks
//! (BLAKE3 and length) and, since format v2 (codec 2), a table of its
//! frames, so a pack can be checked, or the index rebuilt, from the pack
//! alone. Blocks of format v1 (codec 0 or 1: the payload raw or one zstd
//! frame) are still read. The catalog's `chunks` table is the index: it
//! maps a chunk hash to its pack, block offset, block length and the
//! chunk's offset inside the decoded block.
//!
//! A pack is only referenced once the catalog transaction that indexes it has
//! committed; until then it is invisible, and a pack left behind by a crashed
//! writer is debris that `gc` removes (see [`crate::lock`] for how gc tells
//! debris from a pack still being written).

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Result, StoreError};
use crate::hash::Hash;
use crate::params::{BLOCK_MAX_RAW, FRAME_TARGET, MIN_SAVING_DIVISOR};

/// Magic bytes at the start of every pack (format v1).
pub const PACK_MAGIC: &[u8; 8] = b"NXPACK01";
/// Magic bytes at the start of every block.
pub const BLOCK_MAGIC: &[u8; 4] = b"NXBK";
/// Size of a block header.
pub const BLOCK_HEADER_LEN: usize = 32;
/// Size of one entry of a block's chunk table.
pub const TABLE_ENTRY_LEN: usize = 36;
/// Size of one entry of a framed block's frame table.
pub const FRAME_ENTRY_LEN: usize = 8;
/// File name suffix of packs.
pub const PACK_SUFFIX: &str = ".pack";

/// How a block payload is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Codec {
    /// Stored as is (compression did not pay); format v1.
    Raw = 0,
    /// A single zstd frame with content checksum; format v1.
    Zstd = 1,
    /// Frames of whole chunks, each zstd (content checksum) or raw, listed
    /// in a frame table; format v2.
    Framed = 2,
}

impl Codec {
    /// Decodes the codec byte of a block header.
    pub fn from_byte(b: u8) -> Option<Codec> {
        match b {
            0 => Some(Codec::Raw),
            1 => Some(Codec::Zstd),
            2 => Some(Codec::Framed),
            _ => None,
        }
    }
}

/// Where a chunk lives: what the catalog's `chunks` row says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkLocation {
    /// Chunk name.
    pub hash: Hash,
    /// File name of the pack (without directory).
    pub pack: Arc<str>,
    /// Offset of the block header in the pack.
    pub offset: u64,
    /// Length of the whole block on disk (header, tables and payload).
    pub block_len: u32,
    /// Offset of the chunk inside the decoded block.
    pub inner: u32,
    /// Length of the chunk.
    pub len: u32,
}

impl ChunkLocation {
    /// Identifies the block holding this chunk (pack name, block offset).
    pub fn block_key(&self) -> (&str, u64) {
        (&self.pack, self.offset)
    }
}

/// How a chunk pushed into a block will be read, which decides the frame it
/// goes into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkKind {
    /// A piece of a file read whole, usually with the files next to it:
    /// consecutive such chunks share one frame (it compresses best).
    Whole,
    /// A piece of a large file, read at any offset: such chunks are framed
    /// in about [`FRAME_TARGET`] raw bytes.
    Part,
}

/// Collects chunks for one block.
#[derive(Default)]
pub struct BlockBuilder {
    chunks: Vec<(Hash, u32)>,
    data: Vec<u8>,
    /// Frames closed so far: raw end offset and kind of each.
    frames: Vec<(usize, ChunkKind)>,
    /// The kind of the open frame (from the last frame end to the end of
    /// `data`), if anything was pushed since.
    open: Option<ChunkKind>,
}

impl BlockBuilder {
    /// Appends a whole small file's chunk.
    pub fn push(&mut self, hash: Hash, bytes: &[u8]) {
        self.push_kind(hash, bytes, ChunkKind::Whole);
    }

    /// Appends a chunk of `kind`; it starts a new frame when the open one
    /// is of the other kind, or is a full frame of parts.
    pub fn push_kind(&mut self, hash: Hash, bytes: &[u8], kind: ChunkKind) {
        let frame_start = self.frames.last().map_or(0, |f| f.0);
        if let Some(open) = self.open {
            let open_len = self.data.len() - frame_start;
            let full = open == ChunkKind::Part && open_len >= FRAME_TARGET;
            // A frame holds at least one byte: empty chunks join any frame.
            if open_len > 0 && (open != kind || full) {
                self.frames.push((self.data.len(), open));
            }
        }
        self.open = Some(kind);
        self.chunks.push((hash, bytes.len() as u32));
        self.data.extend_from_slice(bytes);
    }

    /// Raw bytes collected so far.
    pub fn raw_len(&self) -> usize {
        self.data.len()
    }

    /// True when no chunk has been pushed.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Compresses the collected chunks into a framed block and empties the
    /// builder. Each frame is compressed only when zstd saves at least
    /// 1/[`MIN_SAVING_DIVISOR`] of its size; otherwise decompression would
    /// cost time for almost nothing.
    pub fn finish(&mut self, encoder: &mut BlockEncoder) -> EncodedBlock {
        let chunks = std::mem::take(&mut self.chunks);
        let raw = std::mem::take(&mut self.data);
        let mut ends = std::mem::take(&mut self.frames);
        if let Some(open) = self.open.take()
            && ends.last().is_none_or(|f| f.0 < raw.len())
        {
            ends.push((raw.len(), open));
        }
        if ends.is_empty() {
            // Only empty chunks: one empty frame.
            ends.push((0, ChunkKind::Whole));
        }
        let mut frames = Vec::with_capacity(ends.len());
        let mut payload = Vec::with_capacity(raw.len() / 2);
        let mut start = 0;
        for (end, kind) in ends {
            let bytes = &raw[start..end];
            let stored = encoder.compress_into(kind, bytes, &mut payload);
            frames.push((bytes.len() as u32, stored as u32));
            start = end;
        }
        EncodedBlock {
            raw_len: raw.len() as u32,
            chunks,
            codec: Codec::Framed,
            frames,
            payload,
        }
    }
}

/// The zstd compressors blocks are made with: one level for frames of whole
/// files, one for frames of parts.
pub struct BlockEncoder {
    whole: zstd::bulk::Compressor<'static>,
    part: zstd::bulk::Compressor<'static>,
}

impl BlockEncoder {
    /// Compressors at `whole_level` and `part_level` (see
    /// [`crate::params::ZSTD_LEVEL`], [`crate::params::FRAME_ZSTD_LEVEL`]).
    pub fn new(whole_level: i32, part_level: i32) -> Result<BlockEncoder> {
        Ok(BlockEncoder {
            whole: block_compressor(whole_level)?,
            part: block_compressor(part_level)?,
        })
    }

    /// The store's own levels.
    pub fn store_default() -> Result<BlockEncoder> {
        BlockEncoder::new(crate::params::ZSTD_LEVEL, crate::params::FRAME_ZSTD_LEVEL)
    }

    /// Appends `raw` to `out` as one frame, compressed if that saves at
    /// least 1/32 of it, else as is; returns the bytes appended.
    fn compress_into(&mut self, kind: ChunkKind, raw: &[u8], out: &mut Vec<u8>) -> usize {
        let compressor = match kind {
            ChunkKind::Whole => &mut self.whole,
            ChunkKind::Part => &mut self.part,
        };
        let budget = raw.len() - raw.len() / MIN_SAVING_DIVISOR;
        let at = out.len();
        if !raw.is_empty() {
            // compress_to_buffer fails when the output does not fit the
            // budget: exactly the "does not pay" case, found without a
            // second pass.
            out.resize(at + budget, 0);
            // A frame as long as its raw bytes would read as raw: never
            // store a compressed one so (possible below 32 bytes).
            match compressor.compress_to_buffer(raw, &mut out[at..]) {
                Ok(n) if n < raw.len() => {
                    out.truncate(at + n);
                    return n;
                }
                _ => {}
            }
        }
        // Stored as is, which readers tell by its stored length equalling
        // its raw length.
        out.truncate(at);
        out.extend_from_slice(raw);
        raw.len()
    }
}

/// Creates a zstd compressor for block frames: content checksum on, so that
/// any damaged payload byte fails decoding instead of decoding to other
/// bytes.
pub fn block_compressor(level: i32) -> Result<zstd::bulk::Compressor<'static>> {
    let mut c = zstd::bulk::Compressor::new(level)
        .map_err(|e| StoreError::Invalid(format!("zstd: {e}")))?;
    c.include_checksum(true)
        .and_then(|_| c.include_contentsize(true))
        .map_err(|e| StoreError::Invalid(format!("zstd: {e}")))?;
    Ok(c)
}

/// A block ready to be appended.
pub struct EncodedBlock {
    /// The chunks in order, with their lengths.
    pub chunks: Vec<(Hash, u32)>,
    /// Sum of the chunk lengths.
    pub raw_len: u32,
    /// Encoding of `payload`.
    pub codec: Codec,
    /// The frames in order, (raw length, stored length) each
    /// ([`Codec::Framed`]; empty otherwise).
    pub frames: Vec<(u32, u32)>,
    /// The bytes to store: the frames, one after another.
    pub payload: Vec<u8>,
}

impl EncodedBlock {
    /// Bytes the block takes in a pack.
    pub fn encoded_len(&self) -> usize {
        BLOCK_HEADER_LEN
            + TABLE_ENTRY_LEN * self.chunks.len()
            + FRAME_ENTRY_LEN * self.frames.len()
            + self.payload.len()
    }

    /// The header and tables, as written before the payload.
    pub fn head(&self) -> Vec<u8> {
        let mut h = Vec::with_capacity(self.encoded_len() - self.payload.len());
        h.extend_from_slice(BLOCK_MAGIC);
        h.push(self.codec as u8);
        h.extend_from_slice(&[0; 3]);
        h.extend_from_slice(&(self.chunks.len() as u32).to_le_bytes());
        h.extend_from_slice(&self.raw_len.to_le_bytes());
        h.extend_from_slice(&(self.payload.len() as u32).to_le_bytes());
        h.extend_from_slice(&(self.frames.len() as u32).to_le_bytes());
        h.extend_from_slice(&[0; 8]);
        for (hash, len) in &self.chunks {
            h.extend_from_slice(hash.as_bytes());
            h.extend_from_slice(&len.to_le_bytes());
        }
        for (raw, stored) in &self.frames {
            h.extend_from_slice(&raw.to_le_bytes());
            h.extend_from_slice(&stored.to_le_bytes());
        }
        h
    }
}

/// Builds a fresh, unique pack file name (32 hex digits).
fn new_pack_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut h = blake3::Hasher::new();
    h.update(&nanos.to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    h.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    let digest = h.finalize();
    hex::encode(&digest.as_bytes()[..16])
}

/// Appends records to one new pack.
pub struct PackWriter {
    name: Arc<str>,
    path: PathBuf,
    out: BufWriter<File>,
    len: u64,
}

impl PackWriter {
    /// Creates and locks a new pack in `dir`.
    pub fn create(dir: &Path) -> Result<Self> {
        let name: Arc<str> = format!("{}{}", new_pack_name(), PACK_SUFFIX).into();
        let path = dir.join(&*name);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(crate::store::PRIVATE_FILE_MODE)
            .open(&path)
            .map_err(|e| StoreError::io(&path, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(PACK_MAGIC)
            .map_err(|e| StoreError::io(&path, e))?;
        Ok(PackWriter {
            name,
            path,
            out,
            len: PACK_MAGIC.len() as u64,
        })
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when only the magic has been written.
    pub fn is_empty(&self) -> bool {
        self.len == PACK_MAGIC.len() as u64
    }

    /// Appends one block and returns where each of its chunks went.
    pub fn append(&mut self, block: &EncodedBlock) -> Result<Vec<ChunkLocation>> {
        let offset = self.len;
        let block_len = block.encoded_len() as u32;
        self.out
            .write_all(&block.head())
            .and_then(|_| self.out.write_all(&block.payload))
            .map_err(|e| StoreError::io(&self.path, e))?;
        self.len += u64::from(block_len);
        let mut inner = 0u32;
        Ok(block
            .chunks
            .iter()
            .map(|&(hash, len)| {
                let loc = ChunkLocation {
                    hash,
                    pack: self.name.clone(),
                    offset,
                    block_len,
                    inner,
                    len,
                };
                inner += len;
                loc
            })
            .collect())
    }

    /// Flushes and fsyncs the pack.
    pub fn seal(self) -> Result<SealedPack> {
        let path = self.path;
        let file = self
            .out
            .into_inner()
            .map_err(|e| StoreError::io(&path, e.into_error()))?;
        file.sync_all().map_err(|e| StoreError::io(&path, e))?;
        Ok(SealedPack {
            name: self.name.to_string(),
            size: self.len,
        })
    }
}

/// A complete, durable (fsynced) pack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedPack {
    /// File name within the packs directory.
    pub name: String,
    /// Total size in bytes.
    pub size: u64,
}

/// One entry of a block's chunk table, with its place in the decoded block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockEntry {
    /// BLAKE3 of the chunk.
    pub hash: Hash,
    /// Offset of the chunk in the decoded block.
    pub inner: u32,
    /// Length of the chunk.
    pub len: u32,
}

/// One frame of a block: whole chunks decoded on their own. A block of
/// format v1 is one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Offset of its first byte in the decoded block.
    pub raw_start: u32,
    /// Its decoded length.
    pub raw_len: u32,
    /// Offset of its stored bytes from the start of the block.
    pub stored_at: u32,
    /// Its stored length.
    pub stored_len: u32,
    /// One zstd frame (else the bytes as they are).
    pub compressed: bool,
}

impl Frame {
    /// The range of the block's stored bytes it takes.
    pub fn stored_range(&self) -> std::ops::Range<usize> {
        self.stored_at as usize..self.stored_at as usize + self.stored_len as usize
    }
}

/// A block's header and tables, parsed and checked: where each chunk and
/// each frame is.
#[derive(Clone, Debug)]
pub struct BlockHead {
    /// How the payload is encoded.
    pub codec: Codec,
    /// Decoded length of the whole block.
    pub raw_len: u32,
    /// The chunk table, with each chunk's offset in the decoded block.
    pub entries: Vec<BlockEntry>,
    /// The frames, in order (one for a block of format v1).
    pub frames: Vec<Frame>,
    /// Bytes the header and tables take; the payload follows.
    pub head_len: usize,
}

/// What [`BlockHead::parse`] found.
pub enum ParsedHead {
    /// The head, checked against the block's length.
    Head(BlockHead),
    /// The bytes given end before the head does: this many are needed.
    NeedBytes(usize),
}

impl BlockHead {
    /// Parses and checks the head of a block of `block_len` bytes from
    /// `buf`, its first bytes: the header fields, the chunk table (lengths
    /// adding up to the raw length) and, for a framed block, the frame table
    /// (raw lengths adding up to the raw length, stored lengths to the
    /// payload length, every frame holding whole chunks).
    pub fn parse(buf: &[u8], block_len: usize) -> std::result::Result<ParsedHead, String> {
        let head = buf
            .get(..BLOCK_HEADER_LEN)
            .ok_or("block shorter than its header")?;
        let u32_at =
            |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
        if &head[..4] != BLOCK_MAGIC {
            return Err("bad block magic".into());
        }
        let codec =
            Codec::from_byte(head[4]).ok_or_else(|| format!("unknown codec {}", head[4]))?;
        let (count, raw_len, stored_len, frame_count) = (
            u32_at(8) as usize,
            u32_at(12) as usize,
            u32_at(16) as usize,
            u32_at(20) as usize,
        );
        let reserved = match codec {
            Codec::Framed => &head[24..32],
            Codec::Raw | Codec::Zstd => &head[20..32],
        };
        if head[5..8].iter().chain(reserved).any(|&b| b != 0) {
            return Err("reserved header bytes are not zero".into());
        }
        if count == 0 {
            return Err("block lists no chunk".into());
        }
        if raw_len > BLOCK_MAX_RAW {
            return Err(format!(
                "block claims {raw_len} raw bytes, more than the {BLOCK_MAX_RAW} allowed"
            ));
        }
        let frame_count = match codec {
            Codec::Framed if frame_count == 0 || frame_count > count => {
                return Err(format!("{frame_count} frames for {count} chunks"));
            }
            Codec::Framed => frame_count,
            Codec::Raw | Codec::Zstd => 0,
        };
        let table_end = count
            .checked_mul(TABLE_ENTRY_LEN)
            .and_then(|t| t.checked_add(BLOCK_HEADER_LEN))
            .ok_or("absurd chunk count")?;
        let head_len = table_end + frame_count * FRAME_ENTRY_LEN;
        if head_len.checked_add(stored_len) != Some(block_len) {
            return Err("block header does not match the block length in the index".into());
        }
        if buf.len() < head_len {
            return Ok(ParsedHead::NeedBytes(head_len));
        }
        let mut entries = Vec::with_capacity(count);
        let mut inner = 0usize;
        for entry in buf[BLOCK_HEADER_LEN..table_end].chunks_exact(TABLE_ENTRY_LEN) {
            let hash = Hash::from_slice(&entry[..32]).ok_or("bad table entry")?;
            let len = u32::from_le_bytes([entry[32], entry[33], entry[34], entry[35]]);
            entries.push(BlockEntry {
                hash,
                inner: inner as u32,
                len,
            });
            inner += len as usize;
            if inner > raw_len {
                return Err("chunk table lengths exceed the block's raw length".into());
            }
        }
        if inner != raw_len {
            return Err("chunk table lengths do not add up to the block's raw length".into());
        }
        let frames = match codec {
            Codec::Raw if stored_len != raw_len => {
                return Err("raw block with stored length != raw length".into());
            }
            Codec::Raw | Codec::Zstd => vec![Frame {
                raw_start: 0,
                raw_len: raw_len as u32,
                stored_at: head_len as u32,
                stored_len: stored_len as u32,
                compressed: codec == Codec::Zstd,
            }],
            Codec::Framed => parse_frames(
                &buf[table_end..head_len],
                &entries,
                raw_len,
                head_len,
                stored_len,
            )?,
        };
        Ok(ParsedHead::Head(BlockHead {
            codec,
            raw_len: raw_len as u32,
            entries,
            frames,
            head_len,
        }))
    }

    /// The frame holding all the bytes of a chunk at `inner`, `len` bytes
    /// long, if one does.
    pub fn frame_of(&self, inner: u32, len: u32) -> Option<usize> {
        let f = self
            .frames
            .partition_point(|f| f.raw_start <= inner)
            .checked_sub(1)?;
        let frame = &self.frames[f];
        (u64::from(inner) + u64::from(len) <= u64::from(frame.raw_start) + u64::from(frame.raw_len))
            .then_some(f)
    }

    /// The index of the table entry naming the chunk `loc` at its place.
    pub fn entry_of(&self, loc: &ChunkLocation) -> Option<usize> {
        // Empty chunks share their inner offset with the next chunk, so look
        // at every entry starting there.
        let first = self.entries.partition_point(|e| e.inner < loc.inner);
        self.entries[first..]
            .iter()
            .take_while(|e| e.inner == loc.inner)
            .position(|e| e.hash == loc.hash && e.len == loc.len)
            .map(|i| first + i)
    }
}

/// Parses a frame table (`table`, 8 bytes an entry) and checks it against
/// the chunk table and header: the frames' raw lengths add up to `raw_len`,
/// their stored lengths to `stored_len`, and each frame starts where a
/// chunk starts; only a block of no bytes has an empty frame.
fn parse_frames(
    table: &[u8],
    entries: &[BlockEntry],
    raw_len: usize,
    head_len: usize,
    stored_len: usize,
) -> std::result::Result<Vec<Frame>, String> {
    let mut frames = Vec::with_capacity(table.len() / FRAME_ENTRY_LEN);
    let (mut raw_at, mut stored_at) = (0usize, head_len);
    let mut chunk = 0usize;
    for entry in table.chunks_exact(FRAME_ENTRY_LEN) {
        let frame_raw = u32::from_le_bytes([entry[0], entry[1], entry[2], entry[3]]) as usize;
        let frame_stored = u32::from_le_bytes([entry[4], entry[5], entry[6], entry[7]]) as usize;
        if frame_raw == 0 && raw_len != 0 {
            return Err("an empty frame in a block that is not empty".into());
        }
        // Chunks before this frame's start must end at or before it, and
        // one must start exactly there (or the block is empty).
        while chunk < entries.len() && (entries[chunk].inner as usize) < raw_at {
            chunk += 1;
        }
        if raw_at < raw_len
            && entries
                .get(chunk)
                .is_none_or(|e| e.inner as usize != raw_at)
        {
            return Err("a frame does not start where a chunk starts".into());
        }
        if chunk > 0 {
            let prev = &entries[chunk - 1];
            if prev.inner as usize + prev.len as usize > raw_at {
                return Err("a chunk runs over the end of its frame".into());
            }
        }
        if frame_stored > frame_raw && frame_raw == 0 {
            return Err("an empty frame with stored bytes".into());
        }
        frames.push(Frame {
            raw_start: raw_at as u32,
            raw_len: frame_raw as u32,
            stored_at: stored_at as u32,
            stored_len: frame_stored as u32,
            compressed: frame_stored != frame_raw,
        });
        raw_at = raw_at
            .checked_add(frame_raw)
            .filter(|&r| r <= raw_len)
            .ok_or("frame lengths exceed the block's raw length")?;
        stored_at = stored_at
            .checked_add(frame_stored)
            .filter(|&s| s <= head_len + stored_len)
            .ok_or("frame lengths exceed the block's stored length")?;
    }
    if raw_at != raw_len || stored_at != head_len + stored_len {
        return Err("frame lengths do not add up to the block's lengths".into());
    }
    if let Some(last) = entries.last()
        && last.inner as usize + last.len as usize > raw_len
    {
        return Err("a chunk runs over the end of the block".into());
    }
    Ok(frames)
}

/// A block read from a pack and decoded (not yet verified chunk by chunk).
pub struct Block {
    /// The chunk table.
    pub entries: Vec<BlockEntry>,
    /// The decoded payload: every chunk, concatenated.
    pub data: Vec<u8>,
}

impl Block {
    /// Returns the bytes of the chunk `loc` names, after checking that the
    /// block's table lists it at that place and that its BLAKE3 matches.
    pub fn chunk(&self, loc: &ChunkLocation) -> Result<&[u8]> {
        chunk_of(&self.entries, &self.data, 0, loc)
    }
}

/// True when `entries` (a block's table, in the order of their offsets)
/// lists chunk `hash` of `len` bytes at offset `inner` of the decoded block.
pub fn lists(entries: &[BlockEntry], hash: Hash, inner: u32, len: u32) -> bool {
    let first = entries.partition_point(|e| e.inner < inner);
    entries[first..]
        .iter()
        .take_while(|e| e.inner == inner)
        .any(|e| e.hash == hash && e.len == len)
}

/// The bytes of chunk `loc` in `data`, the decoded bytes of a block from
/// offset `data_start` on (a frame, or the whole block), after checking
/// that `entries` (the block's table) lists it at that place and that its
/// BLAKE3 matches.
pub fn chunk_of<'d>(
    entries: &[BlockEntry],
    data: &'d [u8],
    data_start: u32,
    loc: &ChunkLocation,
) -> Result<&'d [u8]> {
    let damaged = |reason: &str| damaged(loc, reason.to_string());
    if !lists(entries, loc.hash, loc.inner, loc.len) {
        return Err(damaged(
            "the block's table does not list the chunk where the index says",
        ));
    }
    let bytes = loc
        .inner
        .checked_sub(data_start)
        .map(|start| start as usize)
        .and_then(|start| data.get(start..start + loc.len as usize))
        .ok_or_else(|| damaged("chunk extends past the block"))?;
    if Hash::of(bytes) != loc.hash {
        return Err(damaged("BLAKE3 mismatch"));
    }
    Ok(bytes)
}

/// The error for chunk `loc`, whose block is damaged in the way `reason`
/// says.
pub(crate) fn damaged(loc: &ChunkLocation, reason: String) -> StoreError {
    StoreError::Damaged {
        chunk: loc.hash,
        reason: format!("pack {} block at {}: {reason}", loc.pack, loc.offset),
    }
}

/// Whether a decode checks a zstd frame's own checksum (XXH64 of its
/// decoded bytes, which every writer adds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameCheck {
    /// Checked: for callers that go on to hash fewer than all the decoded
    /// bytes (a block copied verbatim after its wanted chunks were hashed)
    /// and those that report damage (`nip verify`).
    Checksum = 0,
    /// Not checked: the caller hashes every byte it uses against its
    /// chunk's BLAKE3 hash before using it (the daemons' readers), which
    /// the checksum would only repeat, at a tenth of the decode's time.
    ChunkHashes = 1,
}

thread_local! {
    /// One zstd decompression context per thread and [`FrameCheck`]:
    /// creating one per block allocates (and faults in) its tables every
    /// time.
    static DECOMPRESSORS: RefCell<[Option<zstd::bulk::Decompressor<'static>>; 2]> =
        const { RefCell::new([None, None]) };
}

/// Decompresses the single zstd frame `payload` into `out` with this
/// thread's context for `check`; returns the decoded length.
fn zstd_decompress<C: zstd::zstd_safe::WriteBuf + ?Sized>(
    payload: &[u8],
    out: &mut C,
    check: FrameCheck,
) -> std::result::Result<usize, String> {
    DECOMPRESSORS.with(|cell| {
        let mut slots = cell.borrow_mut();
        let slot = &mut slots[check as usize];
        let decompressor = match slot {
            Some(d) => d,
            None => {
                let mut d = zstd::bulk::Decompressor::new().map_err(|e| format!("zstd: {e}"))?;
                d.set_parameter(zstd::zstd_safe::DParameter::ForceIgnoreChecksum(
                    check == FrameCheck::ChunkHashes,
                ))
                .map_err(|e| format!("zstd: {e}"))?;
                slot.insert(d)
            }
        };
        decompressor
            .decompress_to_buffer(payload, out)
            .map_err(|e| format!("zstd: {e}"))
    })
}

/// Decodes `frame` from `stored`, exactly its stored bytes, into `out`,
/// whose allocation is reused (its contents are discarded). The decoded
/// length must be the frame's raw length; a compressed frame must be
/// exactly one zstd frame (the format has no use for several, and a reader
/// accepting them would accept payloads no writer makes). `check` says
/// whether the frame's checksum is checked.
pub fn decode_frame_into(
    frame: &Frame,
    stored: &[u8],
    mut out: Vec<u8>,
    check: FrameCheck,
) -> std::result::Result<Vec<u8>, String> {
    let raw_len = frame.raw_len as usize;
    if stored.len() != frame.stored_len as usize {
        return Err("frame shorter than its stored length".into());
    }
    out.clear();
    // Exact: a recycled buffer a little too small for this frame must not
    // double its size.
    out.reserve_exact(raw_len);
    if !frame.compressed {
        out.extend_from_slice(stored);
        return Ok(out);
    }
    if zstd::zstd_safe::find_frame_compressed_size(stored) != Ok(stored.len()) {
        return Err("zstd payload is not exactly one frame".into());
    }
    zstd_decompress(stored, &mut out, check)?;
    if out.len() != raw_len {
        return Err(format!("decoded {} bytes, expected {raw_len}", out.len()));
    }
    Ok(out)
}

/// Decodes one whole block (header, tables, payload) held in `buf`.
pub fn decode_block(buf: &[u8]) -> std::result::Result<Block, String> {
    decode_block_into(buf, Vec::new())
}

/// [`decode_block`] into `out`, whose allocation is reused for the payload
/// (its contents are discarded).
pub fn decode_block_into(buf: &[u8], out: Vec<u8>) -> std::result::Result<Block, String> {
    let head = match BlockHead::parse(buf, buf.len())? {
        ParsedHead::Head(head) => head,
        ParsedHead::NeedBytes(_) => return Err("block shorter than its tables".into()),
    };
    let mut data = out;
    if let [frame] = head.frames[..] {
        data = decode_frame_into(
            &frame,
            &buf[frame.stored_range()],
            data,
            FrameCheck::Checksum,
        )?;
    } else {
        data.clear();
        data.reserve_exact(head.raw_len as usize);
        let mut part = Vec::new();
        for frame in &head.frames {
            part = decode_frame_into(
                frame,
                &buf[frame.stored_range()],
                part,
                FrameCheck::Checksum,
            )?;
            data.extend_from_slice(&part);
        }
    }
    Ok(Block {
        entries: head.entries,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads chunk `loc` from the pack in `dir` with nothing but the
    /// format's own functions.
    fn read_chunk(dir: &Path, loc: &ChunkLocation) -> Result<Vec<u8>> {
        let block = read_stored(dir, loc);
        decode_block(&block)
            .map_err(|why| damaged(loc, why))?
            .chunk(loc)
            .map(<[u8]>::to_vec)
    }

    fn read_stored(dir: &Path, loc: &ChunkLocation) -> Vec<u8> {
        let pack = std::fs::read(dir.join(&*loc.pack)).unwrap();
        let at = loc.offset as usize;
        pack[at..at + loc.block_len as usize].to_vec()
    }

    fn append(dir: &Path, block: &EncodedBlock) -> Vec<ChunkLocation> {
        let mut w = PackWriter::create(dir).unwrap();
        let locs = w.append(block).unwrap();
        w.seal().unwrap();
        locs
    }

    fn write_kinds(
        dir: &Path,
        chunks: &[(&[u8], ChunkKind)],
    ) -> (Vec<ChunkLocation>, EncodedBlock) {
        let mut b = BlockBuilder::default();
        for (data, kind) in chunks {
            b.push_kind(Hash::of(data), data, *kind);
        }
        let enc = b.finish(&mut BlockEncoder::new(3, 3).unwrap());
        (append(dir, &enc), enc)
    }

    fn write_block(dir: &Path, chunks: &[&[u8]]) -> (Vec<ChunkLocation>, EncodedBlock) {
        let whole: Vec<_> = chunks.iter().map(|c| (*c, ChunkKind::Whole)).collect();
        write_kinds(dir, &whole)
    }

    /// A block of format v1, as builds before framed blocks wrote it: the
    /// payload as one zstd frame when that saves 1/32, else raw.
    fn v1_block(chunks: &[&[u8]]) -> EncodedBlock {
        let raw: Vec<u8> = chunks.concat();
        let compressed = block_compressor(3).unwrap().compress(&raw).unwrap();
        let (codec, payload) = if compressed.len() + raw.len() / 32 <= raw.len() {
            (Codec::Zstd, compressed)
        } else {
            (Codec::Raw, raw.clone())
        };
        EncodedBlock {
            chunks: chunks
                .iter()
                .map(|c| (Hash::of(c), c.len() as u32))
                .collect(),
            raw_len: raw.len() as u32,
            codec,
            frames: Vec::new(),
            payload,
        }
    }

    fn noise(seed: u64, n: usize) -> Vec<u8> {
        // xorshift64*: incompressible enough that zstd cannot save 1/32.
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
            })
            .collect()
    }

    fn head_of(block: &[u8]) -> BlockHead {
        match BlockHead::parse(block, block.len()).unwrap() {
            ParsedHead::Head(h) => h,
            ParsedHead::NeedBytes(_) => panic!("the whole block is there"),
        }
    }

    #[test]
    fn round_trip_compressible_raw_and_empty_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let text = b"hello hello hello hello hello hello hello hello".repeat(100);
        let other = b"another text, another chunk ".repeat(50);
        let chunks: [&[u8]; 4] = [&text, b"", &other, b""];
        let (locs, enc) = write_block(dir.path(), &chunks);
        assert_eq!(enc.codec, Codec::Framed);
        assert_eq!(enc.frames.len(), 1, "whole files share one frame");
        assert!(enc.frames[0].1 < enc.frames[0].0, "and it is compressed");
        for (loc, data) in locs.iter().zip(chunks) {
            assert_eq!(read_chunk(dir.path(), loc).unwrap(), data);
        }

        let random = noise(7, 4096);
        let (locs, enc) = write_block(dir.path(), &[&random]);
        assert_eq!(enc.frames, [(4096, 4096)], "stored raw");
        assert_eq!(read_chunk(dir.path(), &locs[0]).unwrap(), random);

        let (locs, enc) = write_block(dir.path(), &[b""]);
        assert_eq!(enc.frames, [(0, 0)], "one empty frame");
        assert_eq!(read_chunk(dir.path(), &locs[0]).unwrap(), b"");
    }

    #[test]
    fn parts_are_framed_apart_and_decode_on_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let part = |i: u64| {
            let mut c = b"a mapped library, read at any offset ".repeat(2000);
            c.extend_from_slice(&noise(i, 9000));
            c
        };
        let (p1, p2, p3) = (part(1), part(2), part(3));
        let (w1, w2) = (b"small file one ".repeat(40), b"small file two ".repeat(40));
        let chunks: Vec<(&[u8], ChunkKind)> = vec![
            (&w1, ChunkKind::Whole),
            (&p1, ChunkKind::Part),
            (&p2, ChunkKind::Part),
            (b"", ChunkKind::Part),
            (&p3, ChunkKind::Part),
            (&w2, ChunkKind::Whole),
        ];
        let (locs, enc) = write_kinds(dir.path(), &chunks);
        // p1 and p2 make a frame of at least FRAME_TARGET (128 KiB); p3
        // starts the next; whole files around them get frames of their own.
        let raws: Vec<u32> = enc.frames.iter().map(|f| f.0).collect();
        assert_eq!(
            raws,
            [
                w1.len() as u32,
                (p1.len() + p2.len()) as u32,
                p3.len() as u32,
                w2.len() as u32
            ]
        );
        let block = read_stored(dir.path(), &locs[0]);
        let head = head_of(&block);
        assert_eq!(head.codec, Codec::Framed);
        for (loc, (data, _)) in locs.iter().zip(&chunks) {
            assert_eq!(read_chunk(dir.path(), loc).unwrap(), *data);
            // Only the chunk's own frame is decoded.
            let f = head.frame_of(loc.inner, loc.len).unwrap();
            let frame = head.frames[f];
            let decoded = decode_frame_into(
                &frame,
                &block[frame.stored_range()],
                Vec::new(),
                FrameCheck::Checksum,
            )
            .unwrap();
            assert_eq!(
                chunk_of(&head.entries, &decoded, frame.raw_start, loc).unwrap(),
                *data
            );
        }
        // The empty part sits at p3's frame start: it reads from there.
        assert_eq!(head.frame_of(locs[3].inner, 0), Some(2));
        assert_eq!(
            head.frame_of(locs[2].inner, locs[2].len + 1),
            None,
            "past its frame"
        );
    }

    #[test]
    fn blocks_of_format_v1_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let text = b"written before frames existed ".repeat(200);
        let random = noise(3, 3000);
        for chunks in [vec![&text[..], b"", &text[..100]], vec![&random[..]]] {
            let enc = v1_block(&chunks);
            let locs = append(dir.path(), &enc);
            let block = read_stored(dir.path(), &locs[0]);
            let head = head_of(&block);
            assert_eq!(head.codec, enc.codec);
            assert_eq!(head.frames.len(), 1, "a v1 block is one frame");
            for (loc, data) in locs.iter().zip(&chunks) {
                assert_eq!(read_chunk(dir.path(), loc).unwrap(), *data);
            }
        }
    }

    #[test]
    fn recycled_buffers_decode_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let text = b"recycled buffers must not leak old bytes ".repeat(200);
        let random = noise(11, 4096);
        let (zstd_locs, _) = write_block(dir.path(), &[&text, b"tail"]);
        let (raw_locs, _) = write_block(dir.path(), &[&random]);
        for loc in [&zstd_locs[0], &zstd_locs[1], &raw_locs[0]] {
            let stored = read_stored(dir.path(), loc);
            let fresh = decode_block(&stored).unwrap();
            // A dirty buffer longer than the block, as a cache hands back.
            let used = decode_block_into(&stored, vec![0xAA; 2 << 20]).unwrap();
            assert_eq!(used.data, fresh.data);
            assert_eq!(used.entries, fresh.entries);
            assert_eq!(used.chunk(loc).unwrap(), fresh.chunk(loc).unwrap());
        }
    }

    #[test]
    fn a_chunk_at_the_wrong_place_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (b"first chunk".repeat(30), b"second chunk".repeat(30));
        let (locs, _) = write_block(dir.path(), &[&a, &b]);
        let mut wrong = locs[1].clone();
        wrong.inner = 0;
        assert!(matches!(
            read_chunk(dir.path(), &wrong),
            Err(StoreError::Damaged { .. })
        ));
    }

    #[test]
    fn frames_that_split_a_chunk_or_do_not_add_up_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (noise(5, 3000), noise(6, 5000));
        let (locs, enc) = write_kinds(dir.path(), &[(&a, ChunkKind::Whole), (&b, ChunkKind::Part)]);
        assert_eq!(enc.frames, [(3000, 3000), (5000, 5000)]);
        let block = read_stored(dir.path(), &locs[0]);
        let table = BLOCK_HEADER_LEN + 2 * TABLE_ENTRY_LEN;
        // Frames of 2000 and 6000 raw bytes: the first ends inside chunk a.
        let mut split = block.clone();
        split[table..table + 4].copy_from_slice(&2000u32.to_le_bytes());
        split[table + 8..table + 12].copy_from_slice(&6000u32.to_le_bytes());
        assert!(decode_block(&split).is_err());
        // Raw lengths that do not add up.
        let mut short = block.clone();
        short[table + 8..table + 12].copy_from_slice(&4999u32.to_le_bytes());
        assert!(decode_block(&short).is_err());
        // More frames than chunks.
        let mut many = block.clone();
        many[20..24].copy_from_slice(&3u32.to_le_bytes());
        assert!(decode_block(&many).is_err());
        assert!(decode_block(&block).is_ok());
    }

    fn stored_len(pack: &[u8], loc: &ChunkLocation) -> usize {
        let at = loc.offset as usize + 16;
        u32::from_le_bytes(pack[at..at + 4].try_into().unwrap()) as usize
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let text = b"abcdefgh".repeat(64);
        let random = noise(1, 2000);
        let part = b"a part of a large file ".repeat(200);
        let blocks: [Vec<(&[u8], ChunkKind)>; 3] = [
            vec![
                (&text[..], ChunkKind::Whole),
                (&text[..100], ChunkKind::Whole),
            ],
            vec![
                (&random[..], ChunkKind::Whole),
                (&random[..300], ChunkKind::Whole),
            ],
            vec![
                (&text[..], ChunkKind::Whole),
                (&part[..], ChunkKind::Part),
                (&random[..], ChunkKind::Part),
            ],
        ];
        for chunks in &blocks {
            let (locs, _) = write_kinds(dir.path(), chunks);
            let path = dir.path().join(&*locs[0].pack);
            let original = std::fs::read(&path).unwrap();
            let start = locs[0].offset as usize;
            let head = head_of(&original[start..start + locs[0].block_len as usize]);
            assert_eq!(
                head.head_len + stored_len(&original, &locs[0]),
                locs[0].block_len as usize
            );
            // The zstd frame headers hold fields (the window size) whose
            // change alters no decoded byte; everywhere else a flip must be
            // noticed.
            let harmless = |i: usize| {
                head.frames.iter().any(|f| {
                    let at = start + f.stored_at as usize;
                    f.compressed && (at..at + 6).contains(&i)
                })
            };
            for i in start..original.len() {
                let mut bytes = original.clone();
                bytes[i] ^= 0x40;
                std::fs::write(&path, &bytes).unwrap();
                // A flip may damage one chunk or all, never return wrong data.
                let results: Vec<_> = locs.iter().map(|l| read_chunk(dir.path(), l)).collect();
                for (r, (data, _)) in results.iter().zip(chunks) {
                    match r {
                        Ok(got) => assert_eq!(got, data, "flip at {i} returned wrong bytes"),
                        Err(StoreError::Damaged { .. }) => {}
                        Err(e) => panic!("flip at {i}: unexpected error {e}"),
                    }
                }
                if !harmless(i) {
                    assert!(
                        results.iter().any(Result::is_err),
                        "flip at {i} went unnoticed"
                    );
                }
            }
        }
    }
}
