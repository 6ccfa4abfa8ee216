//! Pack files: append-only containers of compressed chunks (FORMAT.md, "Packs").
//!
//! A pack is `NXPACK01` followed by blocks. A block holds consecutive new
//! chunks (about 1 MiB of them) compressed together as one zstd frame: whole
//! blocks compress far better than single chunks (measured in
//! `bench/README.md`), and a reader pays at most one block's decompression
//! per chunk. Each block starts with a 32-byte header and a table naming its
//! chunks (BLAKE3 and length), so a pack can be checked, or the index
//! rebuilt, from the pack alone. The catalog's `chunks` table is the index: it
//! maps a chunk hash to its pack, block offset, block length and the chunk's
//! offset inside the decoded block.
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
use crate::params::{BLOCK_MAX_RAW, MIN_SAVING_DIVISOR};

/// Magic bytes at the start of every pack (format v1).
pub const PACK_MAGIC: &[u8; 8] = b"NXPACK01";
/// Magic bytes at the start of every block.
pub const BLOCK_MAGIC: &[u8; 4] = b"NXBK";
/// Size of a block header.
pub const BLOCK_HEADER_LEN: usize = 32;
/// Size of one entry of a block's chunk table.
pub const TABLE_ENTRY_LEN: usize = 36;
/// File name suffix of packs.
pub const PACK_SUFFIX: &str = ".pack";

/// How a block payload is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Codec {
    /// Stored as is (compression did not pay).
    Raw = 0,
    /// A single zstd frame with content checksum.
    Zstd = 1,
}

impl Codec {
    /// Decodes the codec byte of a block header.
    pub fn from_byte(b: u8) -> Option<Codec> {
        match b {
            0 => Some(Codec::Raw),
            1 => Some(Codec::Zstd),
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
    /// Length of the whole block on disk (header, table and payload).
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

/// Collects chunks for one block.
#[derive(Default)]
pub struct BlockBuilder {
    chunks: Vec<(Hash, u32)>,
    data: Vec<u8>,
}

impl BlockBuilder {
    /// Appends a chunk's bytes.
    pub fn push(&mut self, hash: Hash, bytes: &[u8]) {
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

    /// Compresses the collected chunks into a block and empties the builder.
    /// zstd is used only when it saves at least 1/[`MIN_SAVING_DIVISOR`] of
    /// the size; otherwise decompression would cost time for almost nothing.
    pub fn finish(&mut self, compressor: &mut zstd::bulk::Compressor<'_>) -> EncodedBlock {
        let chunks = std::mem::take(&mut self.chunks);
        let raw = std::mem::take(&mut self.data);
        let budget = raw.len() - raw.len() / MIN_SAVING_DIVISOR;
        let mut out = Vec::with_capacity(budget);
        // compress_to_buffer fails when the output does not fit the budget:
        // that is exactly the "does not pay" case, found without a second pass.
        let (codec, payload) = match compressor.compress_to_buffer(&raw[..], &mut out) {
            // The buffer holds `budget` bytes, so success means zstd saved
            // at least 1/32.
            Ok(n) if !raw.is_empty() => {
                out.truncate(n);
                (Codec::Zstd, out)
            }
            _ => (Codec::Raw, raw.clone()),
        };
        EncodedBlock {
            raw_len: raw.len() as u32,
            chunks,
            codec,
            payload,
        }
    }
}

/// Creates the zstd compressor blocks are made with: content checksum on, so
/// that any damaged payload byte fails decoding instead of decoding to other
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
    /// The bytes to store.
    pub payload: Vec<u8>,
}

impl EncodedBlock {
    /// Bytes the block takes in a pack.
    pub fn encoded_len(&self) -> usize {
        BLOCK_HEADER_LEN + TABLE_ENTRY_LEN * self.chunks.len() + self.payload.len()
    }

    /// The header and chunk table, as written before the payload.
    pub fn head(&self) -> Vec<u8> {
        let mut h = Vec::with_capacity(BLOCK_HEADER_LEN + TABLE_ENTRY_LEN * self.chunks.len());
        h.extend_from_slice(BLOCK_MAGIC);
        h.push(self.codec as u8);
        h.extend_from_slice(&[0; 3]);
        h.extend_from_slice(&(self.chunks.len() as u32).to_le_bytes());
        h.extend_from_slice(&self.raw_len.to_le_bytes());
        h.extend_from_slice(&(self.payload.len() as u32).to_le_bytes());
        h.extend_from_slice(&[0; 12]);
        for (hash, len) in &self.chunks {
            h.extend_from_slice(hash.as_bytes());
            h.extend_from_slice(&len.to_le_bytes());
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
        let damaged = |reason: &str| damaged(loc, reason.to_string());
        // Empty chunks share their inner offset with the next chunk, so look
        // at every entry starting there.
        let first = self.entries.partition_point(|e| e.inner < loc.inner);
        let listed = self.entries[first..]
            .iter()
            .take_while(|e| e.inner == loc.inner)
            .any(|e| e.hash == loc.hash && e.len == loc.len);
        if !listed {
            return Err(damaged(
                "the block's table does not list the chunk where the index says",
            ));
        }
        let start = loc.inner as usize;
        let bytes = self
            .data
            .get(start..start + loc.len as usize)
            .ok_or_else(|| damaged("chunk extends past the block"))?;
        if Hash::of(bytes) != loc.hash {
            return Err(damaged("BLAKE3 mismatch"));
        }
        Ok(bytes)
    }
}

/// The error for chunk `loc`, whose block is damaged in the way `reason`
/// says.
pub(crate) fn damaged(loc: &ChunkLocation, reason: String) -> StoreError {
    StoreError::Damaged {
        chunk: loc.hash,
        reason: format!("pack {} block at {}: {reason}", loc.pack, loc.offset),
    }
}

thread_local! {
    /// One zstd decompression context per thread: creating one per block
    /// allocates (and faults in) its tables every time.
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

/// Decompresses the single zstd frame `payload` into `out` (which has room
/// for the expected length) with this thread's context.
fn zstd_decompress(payload: &[u8], out: &mut Vec<u8>) -> std::result::Result<usize, String> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let decompressor = match &mut *slot {
            Some(d) => d,
            None => slot.insert(zstd::bulk::Decompressor::new().map_err(|e| format!("zstd: {e}"))?),
        };
        decompressor
            .decompress_to_buffer(payload, out)
            .map_err(|e| format!("zstd: {e}"))
    })
}

/// Decodes one whole block (header, table, payload) held in `buf`.
pub fn decode_block(buf: &[u8]) -> std::result::Result<Block, String> {
    decode_block_into(buf, Vec::new())
}

/// [`decode_block`] into `out`, whose allocation is reused for the payload
/// (its contents are discarded).
pub fn decode_block_into(buf: &[u8], mut out: Vec<u8>) -> std::result::Result<Block, String> {
    let head = buf
        .get(..BLOCK_HEADER_LEN)
        .ok_or("block shorter than its header")?;
    let u32_at = |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
    if &head[..4] != BLOCK_MAGIC {
        return Err("bad block magic".into());
    }
    if head[5..8].iter().chain(&head[20..32]).any(|&b| b != 0) {
        return Err("reserved header bytes are not zero".into());
    }
    let codec = Codec::from_byte(head[4]).ok_or_else(|| format!("unknown codec {}", head[4]))?;
    let (count, raw_len, stored_len) =
        (u32_at(8) as usize, u32_at(12) as usize, u32_at(16) as usize);
    if count == 0 {
        return Err("block lists no chunk".into());
    }
    if raw_len > BLOCK_MAX_RAW {
        return Err(format!(
            "block claims {raw_len} raw bytes, more than the {BLOCK_MAX_RAW} allowed"
        ));
    }
    let table_end = count
        .checked_mul(TABLE_ENTRY_LEN)
        .and_then(|t| t.checked_add(BLOCK_HEADER_LEN))
        .ok_or("absurd chunk count")?;
    if table_end.checked_add(stored_len) != Some(buf.len()) {
        return Err("block header does not match the block length in the index".into());
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
    let payload = &buf[table_end..];
    out.clear();
    // Exact: a recycled buffer a little too small for this block must not
    // double its size.
    out.reserve_exact(raw_len);
    match codec {
        Codec::Raw if stored_len == raw_len => out.extend_from_slice(payload),
        Codec::Raw => return Err("raw block with stored length != raw length".into()),
        Codec::Zstd => {
            // Exactly one frame: the format has no use for several, and a
            // reader accepting them would accept payloads no writer makes.
            if zstd::zstd_safe::find_frame_compressed_size(payload) != Ok(payload.len()) {
                return Err("zstd payload is not exactly one frame".into());
            }
            zstd_decompress(payload, &mut out)?;
            if out.len() != raw_len {
                return Err(format!("decoded {} bytes, expected {raw_len}", out.len()));
            }
        }
    }
    Ok(Block { entries, data: out })
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

    fn write_block(dir: &Path, chunks: &[&[u8]]) -> (Vec<ChunkLocation>, Codec) {
        let mut c = block_compressor(3).unwrap();
        let mut b = BlockBuilder::default();
        for data in chunks {
            b.push(Hash::of(data), data);
        }
        let enc = b.finish(&mut c);
        let mut w = PackWriter::create(dir).unwrap();
        let locs = w.append(&enc).unwrap();
        w.seal().unwrap();
        (locs, enc.codec)
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

    #[test]
    fn round_trip_compressible_raw_and_empty_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let text = b"hello hello hello hello hello hello hello hello".repeat(100);
        let other = b"another text, another chunk ".repeat(50);
        let chunks: [&[u8]; 4] = [&text, b"", &other, b""];
        let (locs, codec) = write_block(dir.path(), &chunks);
        assert_eq!(codec, Codec::Zstd);
        for (loc, data) in locs.iter().zip(chunks) {
            assert_eq!(read_chunk(dir.path(), loc).unwrap(), data);
        }

        let random = noise(7, 4096);
        let (locs, codec) = write_block(dir.path(), &[&random]);
        assert_eq!(codec, Codec::Raw);
        assert_eq!(read_chunk(dir.path(), &locs[0]).unwrap(), random);
    }

    #[test]
    fn recycled_buffers_decode_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let text = b"recycled buffers must not leak old bytes ".repeat(200);
        let random = noise(11, 4096);
        let (zstd_locs, _) = write_block(dir.path(), &[&text, b"tail"]);
        let (raw_locs, codec) = write_block(dir.path(), &[&random]);
        assert_eq!(codec, Codec::Raw);
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

    fn stored_len(pack: &[u8], loc: &ChunkLocation) -> usize {
        let at = loc.offset as usize + 16;
        u32::from_le_bytes(pack[at..at + 4].try_into().unwrap()) as usize
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let text = b"abcdefgh".repeat(64);
        let random = noise(1, 2000);
        for chunks in [[&text[..], &text[..100]], [&random[..], &random[..300]]] {
            let (locs, _) = write_block(dir.path(), &chunks);
            let path = dir.path().join(&*locs[0].pack);
            let original = std::fs::read(&path).unwrap();
            for i in locs[0].offset as usize..original.len() {
                let mut bytes = original.clone();
                bytes[i] ^= 0x40;
                std::fs::write(&path, &bytes).unwrap();
                // A flip may damage one chunk or both, never return wrong data.
                let results: Vec<_> = locs.iter().map(|l| read_chunk(dir.path(), l)).collect();
                for (r, data) in results.iter().zip(chunks) {
                    match r {
                        Ok(got) => assert_eq!(got, data, "flip at {i} returned wrong bytes"),
                        Err(StoreError::Damaged { .. }) => {}
                        Err(e) => panic!("flip at {i}: unexpected error {e}"),
                    }
                }
                // The zstd frame header holds fields (the window size) whose
                // change alters no decoded byte; everywhere else a flip must
                // be noticed.
                let table_end = locs[0].block_len as usize - stored_len(&original, &locs[0]);
                let frame_header =
                    locs[0].offset as usize + table_end..locs[0].offset as usize + table_end + 6;
                if !frame_header.contains(&i) {
                    assert!(
                        results.iter().any(Result::is_err),
                        "flip at {i} went unnoticed"
                    );
                }
            }
        }
    }
}
