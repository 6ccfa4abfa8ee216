//! Read-ahead: decoding on other threads the frames a sequential reader
//! will ask for next, while the kernel copies out the ones it has.
//!
//! A reader of one large file is otherwise one thread decoding one frame
//! after another, each request waiting for its decode: one core, however
//! many the machine has. Once [`SEQUENTIAL_READS`] reads in a row each
//! continued the one before (within [`AHEAD_BYTES`] of where it ended: the
//! kernel's own read-ahead requests may arrive out of order), the chunks of
//! the next [`AHEAD_BYTES`] whose frames are not decoded yet are queued for
//! the read-ahead threads, which decode them into the shared frame cache. The
//! queue is bounded and never waited for: a read-ahead that cannot keep up
//! is dropped, and the reader decodes the frame itself as it would without
//! read-ahead. Memory stays bounded by the frame cache.

use std::io;
use std::sync::Arc;

use crossbeam_channel::{Sender, TrySendError, bounded};

use super::blocks::Frames;
use super::layout::Layout;
use crate::pack::ChunkLocation;

/// How far past a read its read-ahead reaches, and how close a read must be
/// to the end of the previous one to count as sequential.
pub(super) const AHEAD_BYTES: u64 = 2 << 20;

/// Reads in a row that must each continue the one before for the reads to
/// count as sequential. One is not enough: random reads of a large file
/// land near the previous one now and then, and each false start would
/// decode [`AHEAD_BYTES`] nobody reads, on the cores the reader needs.
const SEQUENTIAL_READS: u32 = 2;

/// Chunks waiting for a read-ahead thread; more are dropped.
const QUEUE: usize = 64;

/// The read-ahead threads of one [`super::BlockReader`]; they end when it
/// is dropped.
pub(super) struct ReadAhead {
    queue: Sender<ChunkLocation>,
}

impl ReadAhead {
    /// Starts `threads` threads decoding into `frames`.
    pub(super) fn start(frames: Arc<Frames>, threads: usize) -> io::Result<ReadAhead> {
        let (queue, wanted) = bounded::<ChunkLocation>(QUEUE);
        for i in 0..threads {
            let (frames, wanted) = (frames.clone(), wanted.clone());
            std::thread::Builder::new()
                .name(format!("read-ahead-{i}"))
                .spawn(move || {
                    for loc in wanted {
                        frames.warm(&loc);
                    }
                })?;
        }
        Ok(ReadAhead { queue })
    }

    /// Called after a read of `offset..end` of `layout`: if it and the
    /// reads before it read the content sequentially, queues what follows.
    pub(super) fn after_read(&self, frames: &Frames, layout: &Layout, offset: u64, end: u64) {
        let streak = layout.note_read(offset, end, AHEAD_BYTES);
        if streak < SEQUENTIAL_READS || end >= layout.size() {
            return;
        }
        let until = layout.size().min(end + AHEAD_BYTES);
        let (first, last) = layout.covering(end, until);
        for loc in &layout.chunks()[first..=last] {
            if loc.len == 0 || frames.is_cached(loc) {
                continue;
            }
            match self.queue.try_send(loc.clone()) {
                Ok(()) => {}
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => return,
            }
        }
    }
}
