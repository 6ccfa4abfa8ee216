//! An independent reader for pack files (blocks of format v1 and v2), used
//! to check the on-disk format and to find and damage specific blocks,
//! frames and chunks.
//!
//! A pack is the 8-byte magic `NXPACK01` followed by blocks. A block is a
//! 32-byte header, a table of `count` 36-byte entries, a frame table of
//! `frame_count` 8-byte entries (codec 2 only), then `stored_len` payload
//! bytes:
//!
//! * header: bytes 0..4 the magic `NXBK`, byte 4 the codec (0 raw, 1 zstd:
//!   format v1; 2 framed: format v2), 5..8 zero, 8..12 `count` (u32 LE, at
//!   least 1), 12..16 `raw_len` (u32 LE, the sum of the chunk lengths, at
//!   most 4 MiB), 16..20 `stored_len` (u32 LE), 20..24 `frame_count` (codec
//!   2; zero otherwise), 24..32 zero;
//! * table entry `k`: the BLAKE3 of chunk `k` (32 bytes), then its length
//!   (u32 LE);
//! * frame entry `j` (codec 2): its decoded length, then its stored length
//!   (u32 LE each). Frames hold whole chunks, in order; a frame whose stored
//!   length equals its decoded length is stored as is, any other is one
//!   zstd frame with the content checksum on;
//! * payload: the chunks concatenated in table order (chunk `k` starts at the
//!   sum of the lengths before it, its "inner offset"), stored as is (codec
//!   0), as one zstd frame of exactly `raw_len` bytes with the content
//!   checksum on (codec 1), or as the frames one after another (codec 2).
//!
//! A block (a frame) is compressed only if that saves at least 1/32 of its
//! raw length, and a block is closed as soon as its raw length reaches 1 MiB.
//!
//! This module deliberately does not use the store crate: the tests check the
//! format as documented, not as implemented.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Magic bytes opening every pack.
pub const MAGIC: &[u8; 8] = b"NXPACK01";
/// Magic bytes opening every block.
pub const BLOCK_MAGIC: &[u8; 4] = b"NXBK";
/// Block header size.
pub const BLOCK_HEADER_LEN: u64 = 32;
/// Size of one table entry.
pub const ENTRY_LEN: u64 = 36;
/// Codec byte of a block stored as is.
pub const CODEC_RAW: u8 = 0;
/// Codec byte of a zstd-compressed block (format v1).
pub const CODEC_ZSTD: u8 = 1;
/// Codec byte of a framed block (format v2).
pub const CODEC_FRAMED: u8 = 2;
/// Size of one frame table entry.
pub const FRAME_ENTRY_LEN: u64 = 8;
/// Readers refuse blocks holding more raw bytes than this.
pub const BLOCK_MAX_RAW: u32 = 4 * 1024 * 1024;
/// A block is closed once its raw length reaches this.
pub const BLOCK_TARGET: u64 = 1024 * 1024;
/// The zstd level blocks are compressed with.
pub const ZSTD_LEVEL: i32 = 4;
/// The largest chunk the chunker cuts.
pub const CHUNK_MAX: u64 = 256 * 1024;
/// Files smaller than this are a single chunk (chunk hash = file hash).
pub const SMALL_FILE_MAX: usize = 128 * 1024;

/// Offsets of the header fields, relative to the block header.
pub mod field {
    /// The block magic, 4 bytes.
    pub const MAGIC: u64 = 0;
    /// The codec byte.
    pub const CODEC: u64 = 4;
    /// First reserved range (must be zero), 3 bytes.
    pub const RESERVED_A: u64 = 5;
    /// Number of chunks, u32 LE.
    pub const COUNT: u64 = 8;
    /// Sum of the chunk lengths, u32 LE.
    pub const RAW_LEN: u64 = 12;
    /// Payload length, u32 LE.
    pub const STORED_LEN: u64 = 16;
    /// Number of frames (codec 2), u32 LE.
    pub const FRAME_COUNT: u64 = 20;
    /// Second reserved range (must be zero): 12 bytes in format v1, the last
    /// 8 of them in format v2.
    pub const RESERVED_B: u64 = 20;
}

/// One table entry of a block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// BLAKE3 of the chunk.
    pub hash: [u8; 32],
    /// Length of the chunk.
    pub len: u32,
    /// Offset of the chunk in the block's decoded payload.
    pub inner: u64,
}

impl Entry {
    /// The chunk hash in hex.
    pub fn hash_hex(&self) -> String {
        blake3::Hash::from_bytes(self.hash).to_hex().to_string()
    }
}

/// One frame of a block (a block of format v1 is one frame).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Offset of its first byte in the decoded block.
    pub raw_start: u64,
    /// Its decoded length.
    pub raw_len: u32,
    /// Offset of its stored bytes in the pack.
    pub stored_at: u64,
    /// Its stored length.
    pub stored_len: u32,
    /// A zstd frame (else stored as is).
    pub compressed: bool,
}

/// One block found in a pack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    /// The pack file.
    pub pack: PathBuf,
    /// Offset of the block header in the pack.
    pub offset: u64,
    /// Codec byte ([`CODEC_RAW`], [`CODEC_ZSTD`] or [`CODEC_FRAMED`]).
    pub codec: u8,
    /// Sum of the chunk lengths.
    pub raw_len: u32,
    /// Payload length on disk.
    pub stored_len: u32,
    /// The table, in payload order.
    pub entries: Vec<Entry>,
    /// The frames, in payload order.
    pub frames: Vec<Frame>,
}

impl Block {
    /// Offset of table entry `k` in the pack.
    pub fn entry_offset(&self, k: usize) -> u64 {
        self.offset + BLOCK_HEADER_LEN + ENTRY_LEN * k as u64
    }

    /// Offset of frame table entry `j` in the pack (codec 2).
    pub fn frame_entry_offset(&self, j: usize) -> u64 {
        self.entry_offset(self.entries.len()) + FRAME_ENTRY_LEN * j as u64
    }

    /// Length of the frame table.
    fn frame_table_len(&self) -> u64 {
        if self.codec == CODEC_FRAMED {
            FRAME_ENTRY_LEN * self.frames.len() as u64
        } else {
            0
        }
    }

    /// Offset of the first payload byte in the pack.
    pub fn payload_offset(&self) -> u64 {
        self.entry_offset(self.entries.len()) + self.frame_table_len()
    }

    /// Header, tables and payload length.
    pub fn block_len(&self) -> u64 {
        BLOCK_HEADER_LEN
            + ENTRY_LEN * self.entries.len() as u64
            + self.frame_table_len()
            + self.stored_len as u64
    }

    /// Offset just past the block in the pack.
    pub fn end(&self) -> u64 {
        self.offset + self.block_len()
    }

    /// True when some frame of the block is zstd.
    pub fn is_zstd(&self) -> bool {
        self.frames.iter().any(|f| f.compressed)
    }

    /// The index of the entry for chunk `hash`, if the block holds it.
    pub fn position(&self, hash: &[u8; 32]) -> Option<usize> {
        self.entries.iter().position(|e| e.hash == *hash)
    }

    /// The frame holding entry `k` (an empty chunk where a frame starts
    /// belongs to that frame).
    pub fn frame_of(&self, k: usize) -> usize {
        let inner = self.entries[k].inner;
        self.frames
            .iter()
            .rposition(|f| f.raw_start <= inner)
            .expect("every chunk is in a frame")
    }

    /// The entries of frame `j`.
    pub fn frame_entries(&self, j: usize) -> Vec<usize> {
        (0..self.entries.len())
            .filter(|&k| self.frame_of(k) == j)
            .collect()
    }

    /// Where the bytes of chunk `k` lie in the pack; only meaningful for
    /// chunks of a frame stored as is.
    pub fn raw_chunk_range(&self, k: usize) -> std::ops::Range<u64> {
        let frame = &self.frames[self.frame_of(k)];
        assert!(
            !frame.compressed,
            "chunk byte ranges exist only in raw frames: {self:?}"
        );
        let start = frame.stored_at + (self.entries[k].inner - frame.raw_start);
        start..start + self.entries[k].len as u64
    }

    /// A short description for failure messages.
    pub fn describe(&self) -> String {
        let zstd = self.frames.iter().filter(|f| f.compressed).count();
        format!(
            "block at {}@{} (codec {}, {} chunks, {} frames of which {zstd} zstd, {} raw / {} stored bytes)",
            self.pack.display(),
            self.offset,
            self.codec,
            self.entries.len(),
            self.frames.len(),
            self.raw_len,
            self.stored_len
        )
    }
}

/// A block together with its decoded chunks.
#[derive(Clone, Debug)]
pub struct DecodedBlock {
    /// The block.
    pub block: Block,
    /// The bytes of each chunk, in table order.
    pub chunks: Vec<Vec<u8>>,
}

/// The pack files of a store (`STORE/packs/*.pack`), sorted by name.
pub fn pack_files(packs_dir: &Path) -> Vec<PathBuf> {
    let mut packs: Vec<PathBuf> = fs::read_dir(packs_dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", packs_dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "pack"))
        .collect();
    packs.sort();
    packs
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// Parses and decodes every block of one pack, failing the test if the file
/// does not follow the documented format in every respect: magics, reserved
/// bytes, codecs, lengths, the zstd frame (one frame, content checksum on,
/// exactly `raw_len` bytes), the 1/32 saving rule, the block size rule and
/// the BLAKE3 of every chunk.
pub fn read_pack(path: &Path) -> Vec<DecodedBlock> {
    let data = fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let name = path.display();
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    assert!(
        stem.len() == 32
            && stem
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)),
        "{name}: a pack must be named by 32 lowercase hex digits"
    );
    assert!(
        data.len() >= MAGIC.len() && &data[..MAGIC.len()] == MAGIC,
        "{name} does not start with the pack magic {MAGIC:?}"
    );
    let mut blocks = Vec::new();
    let mut pos = MAGIC.len();
    while pos < data.len() {
        let hlen = BLOCK_HEADER_LEN as usize;
        assert!(
            pos + hlen <= data.len(),
            "{name}: truncated block header at offset {pos}"
        );
        let h = &data[pos..pos + hlen];
        assert!(
            &h[..4] == BLOCK_MAGIC,
            "{name}: block at offset {pos} does not start with {BLOCK_MAGIC:?}: {:?}",
            &h[..4]
        );
        let codec = h[4];
        assert!(
            codec == CODEC_RAW || codec == CODEC_ZSTD || codec == CODEC_FRAMED,
            "{name}: block at offset {pos} has unknown codec {codec}"
        );
        let reserved = if codec == CODEC_FRAMED {
            &h[24..32]
        } else {
            &h[20..32]
        };
        assert!(
            h[5..8].iter().chain(reserved).all(|&b| b == 0),
            "{name}: block at offset {pos} has non-zero reserved bytes: {h:?}"
        );
        let count = u32_at(h, 8) as usize;
        let raw_len = u32_at(h, 12);
        let stored_len = u32_at(h, 16);
        let frame_count = if codec == CODEC_FRAMED {
            u32_at(h, 20) as usize
        } else {
            0
        };
        assert!(count >= 1, "{name}: block at offset {pos} holds no chunk");
        assert!(
            codec != CODEC_FRAMED || (1..=count).contains(&frame_count),
            "{name}: block at offset {pos}: {frame_count} frames for {count} chunks"
        );
        assert!(
            raw_len <= BLOCK_MAX_RAW,
            "{name}: block at offset {pos} claims {raw_len} raw bytes, over {BLOCK_MAX_RAW}"
        );
        let table = pos + hlen;
        let frame_table = table + count * ENTRY_LEN as usize;
        let payload = frame_table + frame_count * FRAME_ENTRY_LEN as usize;
        let end = payload + stored_len as usize;
        assert!(
            end <= data.len(),
            "{name}: block at offset {pos} ({count} chunks, {stored_len} payload bytes) runs past the end of the file ({} bytes)",
            data.len()
        );
        let mut entries = Vec::with_capacity(count);
        let mut inner = 0u64;
        for k in 0..count {
            let e = &data[table + k * ENTRY_LEN as usize..table + (k + 1) * ENTRY_LEN as usize];
            let len = u32_at(e, 32);
            assert!(
                len as u64 <= CHUNK_MAX,
                "{name}: block at offset {pos}, entry {k}: chunk of {len} bytes, over the maximum {CHUNK_MAX}"
            );
            entries.push(Entry {
                hash: e[..32].try_into().unwrap(),
                len,
                inner,
            });
            inner += len as u64;
        }
        assert_eq!(
            inner, raw_len as u64,
            "{name}: block at offset {pos}: the table lengths do not add up to raw_len"
        );
        let last_len = entries.last().unwrap().len as u64;
        assert!(
            inner - last_len < BLOCK_TARGET,
            "{name}: block at offset {pos} ({raw_len} raw bytes) was not closed when it reached {BLOCK_TARGET} bytes"
        );
        let frames: Vec<Frame> = if codec == CODEC_FRAMED {
            let starts: Vec<u64> = entries.iter().map(|e| e.inner).collect();
            let (mut raw_at, mut stored_at) = (0u64, payload as u64);
            let mut frames = Vec::new();
            for j in 0..frame_count {
                let f = &data[frame_table + j * 8..frame_table + j * 8 + 8];
                let (raw, stored) = (u32_at(f, 0), u32_at(f, 4));
                assert!(
                    raw > 0 || raw_len == 0,
                    "{name}: block at offset {pos}, frame {j}: empty"
                );
                assert!(
                    raw_at == raw_len as u64 || starts.contains(&raw_at),
                    "{name}: block at offset {pos}, frame {j} starts at {raw_at}, where no chunk starts"
                );
                frames.push(Frame {
                    raw_start: raw_at,
                    raw_len: raw,
                    stored_at,
                    stored_len: stored,
                    compressed: stored != raw,
                });
                raw_at += raw as u64;
                stored_at += stored as u64;
            }
            assert_eq!(
                (raw_at, stored_at),
                (raw_len as u64, end as u64),
                "{name}: block at offset {pos}: the frame lengths do not add up"
            );
            for e in &entries {
                let f = frames.iter().rposition(|f| f.raw_start <= e.inner).unwrap();
                assert!(
                    e.inner + e.len as u64 <= frames[f].raw_start + frames[f].raw_len as u64,
                    "{name}: block at offset {pos}: a chunk runs over the end of its frame"
                );
            }
            frames
        } else {
            assert!(
                codec == CODEC_ZSTD || stored_len == raw_len,
                "{name}: raw block at offset {pos}: stored and raw lengths differ"
            );
            vec![Frame {
                raw_start: 0,
                raw_len,
                stored_at: payload as u64,
                stored_len,
                compressed: codec == CODEC_ZSTD,
            }]
        };
        let mut raw = Vec::with_capacity(raw_len as usize);
        for (j, f) in frames.iter().enumerate() {
            let what = format!("{name}: block at offset {pos}, frame {j}");
            let stored = &data[f.stored_at as usize..(f.stored_at + f.stored_len as u64) as usize];
            if f.compressed {
                assert!(
                    f.stored_len < f.raw_len && f.raw_len - f.stored_len >= f.raw_len / 32,
                    "{what}: zstd saves less than 1/32 ({} -> {}): it should be raw",
                    f.raw_len,
                    f.stored_len
                );
                check_zstd_frame(stored, &what);
                let decoded = zstd::bulk::decompress(stored, f.raw_len as usize)
                    .unwrap_or_else(|e| panic!("{what}: does not decode: {e}"));
                assert_eq!(
                    decoded.len(),
                    f.raw_len as usize,
                    "{what}: decodes to the wrong length"
                );
                raw.extend_from_slice(&decoded);
            } else {
                check_incompressible(stored, &what);
                raw.extend_from_slice(stored);
            }
        }
        let chunks: Vec<Vec<u8>> = entries
            .iter()
            .enumerate()
            .map(|(k, e)| {
                let bytes = raw[e.inner as usize..(e.inner + e.len as u64) as usize].to_vec();
                assert_eq!(
                    *blake3::hash(&bytes).as_bytes(),
                    e.hash,
                    "{name}: block at offset {pos}, entry {k}: BLAKE3 of the chunk does not match the table"
                );
                bytes
            })
            .collect();
        blocks.push(DecodedBlock {
            block: Block {
                pack: path.to_path_buf(),
                offset: pos as u64,
                codec,
                raw_len,
                stored_len,
                entries,
                frames,
            },
            chunks,
        });
        pos = end;
    }
    blocks
}

/// Checks that a block stored raw is one zstd would not have shrunk by 1/32
/// (give or take a few bytes of frame header, which depend on encoder
/// settings the format leaves open).
fn check_incompressible(raw: &[u8], what: &str) {
    const SLACK: usize = 64;
    let packed = zstd::bulk::compress(raw, ZSTD_LEVEL)
        .unwrap_or_else(|e| panic!("{what}: zstd cannot compress it: {e}"));
    assert!(
        packed.len() + raw.len() / 32 + SLACK > raw.len(),
        "{what}: zstd level {ZSTD_LEVEL} shrinks its {} bytes to {}, so it should have been compressed",
        raw.len(),
        packed.len()
    );
}

/// Checks that `payload` is exactly one zstd frame with the content checksum
/// flag set.
fn check_zstd_frame(payload: &[u8], what: &str) {
    const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
    assert!(
        payload.len() > 5 && payload[..4] == ZSTD_MAGIC,
        "{what}: the payload is not a zstd frame"
    );
    // Frame_Header_Descriptor, bit 2: Content_Checksum_flag.
    assert!(
        payload[4] & 0x04 != 0,
        "{what}: the zstd frame has no content checksum"
    );
    let frame_len = zstd::zstd_safe::find_frame_compressed_size(payload)
        .unwrap_or_else(|e| panic!("{what}: cannot size the zstd frame (error {e})"));
    assert_eq!(
        frame_len,
        payload.len(),
        "{what}: the payload is not exactly one zstd frame"
    );
}

/// All blocks of all packs in `packs_dir`, decoded.
pub fn read_all_packs(packs_dir: &Path) -> Vec<DecodedBlock> {
    pack_files(packs_dir)
        .iter()
        .flat_map(|p| read_pack(p))
        .collect()
}

/// Inverts all bits of the byte at `offset` in `path`, in place.
pub fn flip_byte(path: &Path, offset: u64) {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open {} for writing: {e}", path.display()));
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset)
        .unwrap_or_else(|e| panic!("read {}@{offset}: {e}", path.display()));
    b[0] ^= 0xff;
    f.write_all_at(&b, offset)
        .unwrap_or_else(|e| panic!("write {}@{offset}: {e}", path.display()));
    f.sync_all().expect("fsync after flipping a byte");
}

/// Cuts `path` to `len` bytes.
pub fn truncate(path: &Path, len: u64) {
    let f = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open {} for writing: {e}", path.display()));
    f.set_len(len)
        .unwrap_or_else(|e| panic!("truncate {} to {len}: {e}", path.display()));
    f.sync_all().expect("fsync after truncating");
}
