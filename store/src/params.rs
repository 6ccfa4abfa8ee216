//! Format parameters frozen in FORMAT.md (store format v1).
//!
//! They were chosen by measurement on the 233-package benchmark corpus (see
//! `bench/README.md`, "Choosing the chunk parameters"). Changing any of them
//! changes chunk boundaries and therefore destroys deduplication against data
//! already stored, so they are part of the on-disk format, not tunables.

/// FastCDC (v2020, normalisation level 1) minimum chunk size in bytes.
pub const CHUNK_MIN: usize = 16 * 1024;
/// FastCDC average chunk size in bytes.
pub const CHUNK_AVG: usize = 64 * 1024;
/// FastCDC maximum chunk size in bytes; also the largest chunk the store holds.
pub const CHUNK_MAX: usize = 256 * 1024;
/// Files smaller than this are stored as a single chunk, never cut.
pub const SMALL_FILE_MAX: u64 = 128 * 1024;
/// zstd level of the frames of small and medium files, as large as a block
/// (chosen by measurement: bench/README.md, "Frames only for large files").
pub const ZSTD_LEVEL: i32 = 4;
/// A block is stored compressed only when that saves at least 1/32 of its
/// size; otherwise decompression would cost time for almost nothing.
pub const MIN_SAVING_DIVISOR: usize = 32;
/// A block is closed once it holds at least this many raw bytes. New chunks
/// are compressed together in blocks of this size: 1 MiB stores the corpus
/// 12% smaller than compressing chunk by chunk, at the cost of decoding at
/// most one block (< 1.25 MiB) to read any chunk.
pub const BLOCK_TARGET: usize = 1024 * 1024;
/// A frame of chunks of a large file (format v2) is closed once it holds at
/// least this many raw bytes: the most a random read of such a file decodes
/// beyond its own chunk. See FORMAT.md, "Packs and blocks".
pub const FRAME_TARGET: usize = 128 * 1024;
/// zstd level of the frames of large files' chunks (format v2). Small
/// frames lose the context a whole block gives; a higher level wins it back.
pub const FRAME_ZSTD_LEVEL: i32 = 7;
/// Files at least a block long have their chunks framed in about
/// [`FRAME_TARGET`] raw bytes (format v2), so that a random read decodes a
/// frame, not a block; smaller files, read whole or nearly, share frames
/// as large as a block at [`ZSTD_LEVEL`], much faster to write, and framing
/// them would only split runs of small files.
/// A writer's choice: readers read either kind anywhere.
pub const FRAMED_FILE_MIN: u64 = BLOCK_TARGET as u64;
/// Readers refuse blocks claiming more raw bytes than this (a damaged or
/// hostile header must not make them allocate gigabytes).
pub const BLOCK_MAX_RAW: usize = 4 * 1024 * 1024;
/// Largest stored block a reader reads: the header and table of a block
/// and a payload that decodes to at most [`BLOCK_MAX_RAW`] bytes never come
/// near it, so a larger length in an index or archive is refused before
/// anything is allocated for it.
pub const BLOCK_MAX_STORED: usize = BLOCK_MAX_RAW * 2 + (1 << 20);
// A framed file is always cut into chunks, and its largest frame fits in a
// block.
const _: () = assert!(FRAMED_FILE_MIN >= SMALL_FILE_MAX);
const _: () = assert!(FRAME_TARGET + CHUNK_MAX <= BLOCK_MAX_RAW);

/// A pack is closed once it holds at least this many bytes.
pub const PACK_TARGET_SIZE: u64 = 64 * 1024 * 1024;

/// Chunking parameters, passed explicitly so that the measurement tools in
/// `bench/` can try other values; the store itself always uses [`FROZEN`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkParams {
    /// FastCDC minimum chunk size (even).
    pub min: usize,
    /// FastCDC average chunk size (even).
    pub avg: usize,
    /// FastCDC maximum chunk size (even).
    pub max: usize,
    /// Files below this size become one chunk.
    pub small_file_max: u64,
    /// zstd compression level.
    pub zstd_level: i32,
    /// Raw bytes collected before a block is compressed and written.
    pub block_target: usize,
    /// Files at least this large have their chunks framed for random reads.
    pub framed_file_min: u64,
}

impl ChunkParams {
    /// How the chunks of a file (or content) of `size` bytes go into
    /// blocks: the one rule every writer of blocks follows.
    pub fn chunk_kind(&self, size: u64) -> crate::pack::ChunkKind {
        if size >= self.framed_file_min {
            crate::pack::ChunkKind::Part
        } else {
            crate::pack::ChunkKind::Whole
        }
    }
}

/// The parameters of store format v1.
pub const FROZEN: ChunkParams = ChunkParams {
    min: CHUNK_MIN,
    avg: CHUNK_AVG,
    max: CHUNK_MAX,
    small_file_max: SMALL_FILE_MAX,
    zstd_level: ZSTD_LEVEL,
    block_target: BLOCK_TARGET,
    framed_file_min: FRAMED_FILE_MIN,
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::ChunkKind;

    #[test]
    fn files_of_a_block_or_more_are_framed_apart() {
        assert_eq!(FROZEN.chunk_kind(0), ChunkKind::Whole);
        assert_eq!(FROZEN.chunk_kind(SMALL_FILE_MAX), ChunkKind::Whole);
        assert_eq!(FROZEN.chunk_kind(FRAMED_FILE_MIN - 1), ChunkKind::Whole);
        assert_eq!(FROZEN.chunk_kind(FRAMED_FILE_MIN), ChunkKind::Part);
        assert_eq!(FROZEN.chunk_kind(u64::MAX), ChunkKind::Part);
    }
}
