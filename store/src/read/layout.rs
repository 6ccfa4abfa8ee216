//! Where the bytes of one file content are: its chunks in order, and the
//! offset in the file at which each starts.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::error::{Result, StoreError};
use crate::pack::ChunkLocation;

/// The chunk layout of one file content.
#[derive(Debug)]
pub struct Layout {
    chunks: Vec<ChunkLocation>,
    starts: Vec<u64>,
    size: u64,
    /// Where the last read of this content ended (for read-ahead).
    last_read_end: AtomicU64,
    /// How many reads in a row continued the one before (for read-ahead).
    sequential_reads: AtomicU32,
}

impl Layout {
    /// The layout of a content made of `chunks`: its size is what their
    /// lengths add up to.
    pub fn of_chunks(chunks: Vec<ChunkLocation>) -> Layout {
        let mut starts = Vec::with_capacity(chunks.len());
        let mut at = 0u64;
        for c in &chunks {
            starts.push(at);
            at += u64::from(c.len);
        }
        Layout {
            chunks,
            starts,
            size: at,
            last_read_end: AtomicU64::new(u64::MAX),
            sequential_reads: AtomicU32::new(0),
        }
    }

    /// The layout of a content of `size` bytes made of `chunks`; an error
    /// unless their lengths add up to it.
    pub fn new(chunks: Vec<ChunkLocation>, size: u64) -> Result<Layout> {
        let layout = Layout::of_chunks(chunks);
        if layout.size != size {
            return Err(StoreError::Invalid(format!(
                "the chunks of a {size}-byte file add up to {} bytes",
                layout.size
            )));
        }
        Ok(layout)
    }

    /// The size of the content.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The chunks, in content order.
    pub fn chunks(&self) -> &[ChunkLocation] {
        &self.chunks
    }

    /// The indexes of the first and last chunk holding bytes of
    /// `offset..end` (`offset < end <= size`), skipping empty chunks at the
    /// start (they share their start with the next chunk).
    pub(crate) fn covering(&self, offset: u64, end: u64) -> (usize, usize) {
        let first = self.starts.partition_point(|&s| s <= offset) - 1;
        let last = self.starts.partition_point(|&s| s < end) - 1;
        (first, last)
    }

    /// Where chunk `i` starts in the content.
    pub(crate) fn start(&self, i: usize) -> u64 {
        self.starts[i]
    }

    /// Records a read of `offset..end` of this content; returns how many
    /// reads in a row, this one included, began within `gap` bytes of where
    /// the one before ended (0: this read did not).
    pub(crate) fn note_read(&self, offset: u64, end: u64, gap: u64) -> u32 {
        let previous = self.last_read_end.swap(end, Ordering::Relaxed);
        if previous != u64::MAX && previous.abs_diff(offset) <= gap {
            self.sequential_reads
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1)
        } else {
            self.sequential_reads.store(0, Ordering::Relaxed);
            0
        }
    }

    /// Approximate memory the layout takes (for cache weights).
    pub fn weight(&self) -> u64 {
        let per_chunk = std::mem::size_of::<ChunkLocation>() + 8 + 40;
        (64 + self.chunks.len() * per_chunk) as u64
    }
}

/// The first non-empty chunk of `chunks` when all the non-empty ones lie
/// one after another in the same block (so that their bytes are one slice
/// of it once decoded).
pub(crate) fn contiguous_run(chunks: &[ChunkLocation]) -> Option<&ChunkLocation> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::Hash;

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
    fn only_reads_that_continue_the_one_before_make_a_streak() {
        let layout = Layout::of_chunks(vec![loc(1 << 20), loc(1 << 20)]);
        // The first read continues nothing.
        assert_eq!(layout.note_read(0, 4096, 1024), 0);
        assert_eq!(layout.note_read(4096, 8192, 1024), 1);
        // Out of order by less than the gap still counts.
        assert_eq!(layout.note_read(8192 + 512, 9000, 1024), 2);
        // A jump ends the streak; the read after it starts a new one.
        assert_eq!(layout.note_read(500_000, 504_096, 1024), 0);
        assert_eq!(layout.note_read(504_096, 508_192, 1024), 1);
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
        assert_eq!(Layout::of_chunks(vec![loc(3), loc(4)]).size(), 7);
    }

    #[test]
    fn covering_skips_leading_empty_chunks() {
        let layout = Layout::new(vec![loc(3), loc(0), loc(4), loc(2)], 9).unwrap();
        assert_eq!(layout.covering(0, 3), (0, 0));
        assert_eq!(layout.covering(3, 4), (2, 2), "the empty chunk is skipped");
        assert_eq!(layout.covering(2, 9), (0, 3));
    }
}
