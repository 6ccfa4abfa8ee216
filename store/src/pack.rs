//! Pack files: append-only containers of compressed chunks (FORMAT.md, "Packs").
//!
//! A pack is `NXPACK01` followed by records, each a 48-byte header (BLAKE3 of
//! the raw chunk, raw length, stored length, codec) and the stored payload. The
//! catalog's `chunks` table is the index: it maps a chunk hash to its pack and
//! record offset. The record header repeats what the index says so that a pack
//! can be checked, or the index rebuilt, from the pack alone.
//!
//! A pack is only referenced once the catalog transaction that indexes it has
//! committed; until then it is invisible, and a pack left behind by a crashed
//! writer is debris that `gc` removes (see [`crate::lock`] for how gc tells
//! debris from a pack still being written).

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Result, StoreError};
use crate::hash::Hash;
use crate::params::MIN_SAVING_DIVISOR;

/// Magic bytes at the start of every pack (format v1).
pub const PACK_MAGIC: &[u8; 8] = b"NXPACK01";
/// Size of a record header.
pub const RECORD_HEADER_LEN: usize = 48;
/// File name suffix of packs.
pub const PACK_SUFFIX: &str = ".pack";

/// How a chunk payload is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Codec {
    /// Stored as is (compression did not pay).
    Raw = 0,
    /// A single zstd frame.
    Zstd = 1,
}

impl Codec {
    /// Decodes the codec byte of a record header.
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
    pub pack: String,
    /// Offset of the record header in the pack.
    pub offset: u64,
    /// Payload length on disk.
    pub stored_len: u32,
    /// Uncompressed length.
    pub raw_len: u32,
    /// Payload encoding.
    pub codec: Codec,
}

/// A chunk ready to be appended: already hashed and (maybe) compressed.
pub struct EncodedChunk {
    /// BLAKE3 of the raw bytes.
    pub hash: Hash,
    /// Length of the raw bytes.
    pub raw_len: u32,
    /// Encoding of `payload`.
    pub codec: Codec,
    /// The bytes to store.
    pub payload: Vec<u8>,
}

/// Compresses one chunk, falling back to raw storage when zstd does not save
/// at least 1/[`MIN_SAVING_DIVISOR`] of the size.
pub fn encode_chunk(
    compressor: &mut zstd::bulk::Compressor<'_>,
    hash: Hash,
    raw: Vec<u8>,
) -> EncodedChunk {
    let raw_len = raw.len() as u32;
    let budget = raw.len() - raw.len() / MIN_SAVING_DIVISOR;
    let mut out = Vec::with_capacity(budget);
    // compress_to_buffer fails when the output does not fit the budget: that
    // is exactly the "does not pay" case, detected without a second pass.
    match compressor.compress_to_buffer(&raw[..], &mut out) {
        Ok(n) if n < budget && !raw.is_empty() => {
            out.truncate(n);
            EncodedChunk {
                hash,
                raw_len,
                codec: Codec::Zstd,
                payload: out,
            }
        }
        _ => EncodedChunk {
            hash,
            raw_len,
            codec: Codec::Raw,
            payload: raw,
        },
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
    name: String,
    path: PathBuf,
    out: BufWriter<File>,
    len: u64,
}

impl PackWriter {
    /// Creates and locks a new pack in `dir`.
    pub fn create(dir: &Path) -> Result<Self> {
        let name = format!("{}{}", new_pack_name(), PACK_SUFFIX);
        let path = dir.join(&name);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
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

    /// Appends one record and returns where it went.
    pub fn append(&mut self, chunk: &EncodedChunk) -> Result<ChunkLocation> {
        let offset = self.len;
        let header = record_header(chunk.hash, chunk.raw_len, chunk.payload.len() as u32, chunk.codec);
        self.out
            .write_all(&header)
            .and_then(|_| self.out.write_all(&chunk.payload))
            .map_err(|e| StoreError::io(&self.path, e))?;
        self.len += (RECORD_HEADER_LEN + chunk.payload.len()) as u64;
        Ok(ChunkLocation {
            hash: chunk.hash,
            pack: self.name.clone(),
            offset,
            stored_len: chunk.payload.len() as u32,
            raw_len: chunk.raw_len,
            codec: chunk.codec,
        })
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
            name: self.name,
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

/// Encodes a record header.
pub fn record_header(hash: Hash, raw_len: u32, stored_len: u32, codec: Codec) -> [u8; RECORD_HEADER_LEN] {
    let mut h = [0u8; RECORD_HEADER_LEN];
    h[..32].copy_from_slice(hash.as_bytes());
    h[32..36].copy_from_slice(&raw_len.to_le_bytes());
    h[36..40].copy_from_slice(&stored_len.to_le_bytes());
    h[40] = codec as u8;
    h
}

/// A parsed record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// BLAKE3 of the raw chunk.
    pub hash: Hash,
    /// Raw length.
    pub raw_len: u32,
    /// Stored length.
    pub stored_len: u32,
    /// Codec byte, if known.
    pub codec: Option<Codec>,
}

/// Decodes a record header.
pub fn parse_record_header(h: &[u8; RECORD_HEADER_LEN]) -> RecordHeader {
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&h[..32]);
    RecordHeader {
        hash: Hash(hash),
        raw_len: u32::from_le_bytes([h[32], h[33], h[34], h[35]]),
        stored_len: u32::from_le_bytes([h[36], h[37], h[38], h[39]]),
        codec: Codec::from_byte(h[40]),
    }
}

/// Reads one chunk from an open pack: checks the record header against the
/// index entry, decodes the payload and verifies its BLAKE3. Never returns
/// bytes that do not hash to `loc.hash`.
pub fn read_chunk(file: &File, loc: &ChunkLocation) -> Result<Vec<u8>> {
    let damaged = |reason: String| StoreError::Damaged {
        chunk: loc.hash,
        reason: format!("pack {} offset {}: {reason}", loc.pack, loc.offset),
    };
    let mut buf = vec![0u8; RECORD_HEADER_LEN + loc.stored_len as usize];
    file.read_exact_at(&mut buf, loc.offset).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            damaged("record extends past the end of the pack".into())
        } else {
            damaged(format!("read failed: {e}"))
        }
    })?;
    let mut header = [0u8; RECORD_HEADER_LEN];
    header.copy_from_slice(&buf[..RECORD_HEADER_LEN]);
    let parsed = parse_record_header(&header);
    if parsed.hash != loc.hash
        || parsed.raw_len != loc.raw_len
        || parsed.stored_len != loc.stored_len
        || parsed.codec != Some(loc.codec)
        || header[41..].iter().any(|&b| b != 0)
    {
        return Err(damaged("record header does not match the index".into()));
    }
    let payload = &buf[RECORD_HEADER_LEN..];
    let raw = match loc.codec {
        Codec::Raw => buf.split_off(RECORD_HEADER_LEN),
        Codec::Zstd => {
            let mut out = Vec::with_capacity(loc.raw_len as usize);
            zstd::bulk::Decompressor::new()
                .and_then(|mut d| d.decompress_to_buffer(payload, &mut out))
                .map_err(|e| damaged(format!("zstd: {e}")))?;
            out
        }
    };
    if raw.len() != loc.raw_len as usize {
        return Err(damaged(format!(
            "decoded {} bytes, expected {}",
            raw.len(),
            loc.raw_len
        )));
    }
    if Hash::of(&raw) != loc.hash {
        return Err(damaged("BLAKE3 mismatch".into()));
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_one(dir: &Path, data: &[u8]) -> (SealedPack, ChunkLocation) {
        let mut c = zstd::bulk::Compressor::new(3).unwrap();
        let enc = encode_chunk(&mut c, Hash::of(data), data.to_vec());
        let mut w = PackWriter::create(dir).unwrap();
        let loc = w.append(&enc).unwrap();
        (w.seal().unwrap(), loc)
    }

    #[test]
    fn round_trip_compressible_and_raw() {
        let dir = tempfile::tempdir().unwrap();
        let text = b"hello hello hello hello hello hello hello hello".repeat(100);
        let (_p, loc) = write_one(dir.path(), &text);
        assert_eq!(loc.codec, Codec::Zstd);
        let f = File::open(dir.path().join(&loc.pack)).unwrap();
        assert_eq!(read_chunk(&f, &loc).unwrap(), text);

        let noise: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let (_p, loc) = write_one(dir.path(), &noise);
        let f = File::open(dir.path().join(&loc.pack)).unwrap();
        assert_eq!(read_chunk(&f, &loc).unwrap(), noise);
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let text = b"abcdefgh".repeat(64);
        let (_p, loc) = write_one(dir.path(), &text);
        let path = dir.path().join(&loc.pack);
        let original = std::fs::read(&path).unwrap();
        for i in loc.offset as usize..original.len() {
            let mut bytes = original.clone();
            bytes[i] ^= 0x40;
            std::fs::write(&path, &bytes).unwrap();
            let f = File::open(&path).unwrap();
            match read_chunk(&f, &loc) {
                Err(StoreError::Damaged { .. }) => {}
                Ok(data) => panic!("flip at {i} returned data of len {}", data.len()),
                Err(e) => panic!("flip at {i}: unexpected error {e}"),
            }
        }
    }
}
