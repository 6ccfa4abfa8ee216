//! Cutting file content into chunks and hashing it, in bounded memory.

use std::io::Read;

use fastcdc::v2020::{Normalization, StreamCDC};

use crate::hash::Hash;
use crate::params::ChunkParams;

/// A chunk as produced by [`chunk_stream`]: its name and raw bytes.
pub struct RawChunk {
    /// BLAKE3 of `data`.
    pub hash: Hash,
    /// The bytes.
    pub data: Vec<u8>,
}

/// Why chunking a stream failed.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// Reading the source failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The consumer refused a chunk (its error is passed through).
    #[error("{0}")]
    Sink(String),
}

/// Splits `source` into chunks, calling `sink` for each in order, and returns
/// the BLAKE3 of the whole content and its length.
///
/// Content shorter than `params.small_file_max` (known from `size_hint`)
/// becomes a single chunk; longer content is cut with FastCDC v2020
/// (normalisation level 1). At most one maximum-size chunk is held in memory,
/// whatever the length of the source.
pub fn chunk_stream<R: Read>(
    mut source: R,
    size_hint: u64,
    params: &ChunkParams,
    mut sink: impl FnMut(RawChunk) -> Result<(), String>,
) -> Result<(Hash, u64), ChunkError> {
    let mut whole = blake3::Hasher::new();
    let mut total = 0u64;
    if size_hint < params.small_file_max {
        let mut data = Vec::with_capacity(size_hint as usize);
        // Read one byte more than allowed so a file that grew is noticed and
        // chunked the normal way instead of becoming an oversized chunk.
        (&mut source)
            .take(params.small_file_max)
            .read_to_end(&mut data)?;
        if (data.len() as u64) < params.small_file_max {
            let hash = Hash::of(&data);
            let len = data.len() as u64;
            sink(RawChunk { hash, data }).map_err(ChunkError::Sink)?;
            return Ok((hash, len));
        }
        // The file grew past the threshold while we read it: chunk what we
        // have followed by the rest.
        let rest = std::io::Cursor::new(data).chain(source);
        return chunk_large(rest, params, &mut whole, &mut total, &mut sink);
    }
    chunk_large(source, params, &mut whole, &mut total, &mut sink)
}

fn chunk_large<R: Read>(
    source: R,
    params: &ChunkParams,
    whole: &mut blake3::Hasher,
    total: &mut u64,
    sink: &mut impl FnMut(RawChunk) -> Result<(), String>,
) -> Result<(Hash, u64), ChunkError> {
    let cdc = StreamCDC::with_level(
        source,
        params.min,
        params.avg,
        params.max,
        Normalization::Level1,
    );
    for chunk in cdc {
        let chunk = chunk.map_err(|e| ChunkError::Io(e.into()))?;
        whole.update(&chunk.data);
        *total += chunk.data.len() as u64;
        let hash = Hash::of(&chunk.data);
        sink(RawChunk {
            hash,
            data: chunk.data,
        })
        .map_err(ChunkError::Sink)?;
    }
    Ok((Hash::from(whole.finalize()), *total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::FROZEN;

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut s = seed | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                s as u8
            })
            .collect()
    }

    fn chunks_of(data: &[u8]) -> (Hash, Vec<RawChunk>) {
        let mut out = Vec::new();
        let (h, len) = chunk_stream(data, data.len() as u64, &FROZEN, |c| {
            out.push(c);
            Ok(())
        })
        .unwrap();
        assert_eq!(len, data.len() as u64);
        (h, out)
    }

    #[test]
    fn small_content_is_one_chunk_named_like_the_file() {
        let data = b"small file".to_vec();
        let (h, chunks) = chunks_of(&data);
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].hash, h);
        assert_eq!(h, Hash::of(&data));
    }

    #[test]
    fn large_content_reassembles_and_respects_bounds() {
        let data = pseudo_random(3 * 1024 * 1024 + 17, 7);
        let (h, chunks) = chunks_of(&data);
        assert_eq!(h, Hash::of(&data));
        assert!(chunks.len() > 3);
        let joined: Vec<u8> = chunks.iter().flat_map(|c| c.data.iter().copied()).collect();
        assert_eq!(joined, data);
        for c in &chunks[..chunks.len() - 1] {
            assert!(c.data.len() >= FROZEN.min && c.data.len() <= FROZEN.max);
            assert_eq!(c.hash, Hash::of(&c.data));
        }
    }

    #[test]
    fn an_insertion_only_disturbs_nearby_chunks() {
        let data = pseudo_random(4 * 1024 * 1024, 11);
        let mut edited = data.clone();
        edited.splice(2_000_000..2_000_000, b"inserted bytes".iter().copied());
        let (_, a) = chunks_of(&data);
        let (_, b) = chunks_of(&edited);
        let set: std::collections::HashSet<Hash> = a.iter().map(|c| c.hash).collect();
        let shared = b.iter().filter(|c| set.contains(&c.hash)).count();
        assert!(
            shared + 3 >= b.len(),
            "only {shared} of {} chunks shared",
            b.len()
        );
    }
}
