//! Handing the kernel decoded file bytes before it asks for them.
//!
//! A READ decodes a whole frame (about 128 KiB of a large file, or a run of
//! small files), and the read-ahead decodes the frames after it; the
//! kernel, though, asks for its pages a window at a time, each a round
//! trip, and a random 4 KiB read of a page decoded a moment ago by another
//! read costs one more. After each READ of a file the pusher thread stores
//! the bytes that follow it, as far as they lie verified in decoded frames
//! (at most [`PUSH_BYTES`]), into the file's page cache with a FUSE store
//! notification: reads of them never reach the daemon. After a READ that
//! does not continue the file's last one (a random read, or a loader
//! jumping to a section) it also stores the decoded bytes just before it
//! (at most [`PUSH_BACK_BYTES`]): the rest of the frame the READ decoded.
//! Package files never change, so pages stored this way never go stale,
//! and the kernel may evict them like any other.
//!
//! The pusher is its own thread because storing pages waits for the locks
//! of pages a READ in flight is filling; request threads never wait for
//! it (a full queue drops the offer).

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

use fuser::{INodeNo, Notifier};
use nexus_store::params::{CHUNK_MAX, FRAME_TARGET};
use nexus_store::read::{CachedBytes, Side};

use crate::view::View;

/// How far past a read the pusher stores what is decoded.
pub const PUSH_BYTES: u64 = 2 << 20;

/// How far before a random read the pusher stores what is decoded: as much
/// as a frame of a large file can hold (it is closed at the frame target,
/// and its last chunk may be as long as a chunk can be).
pub const PUSH_BACK_BYTES: u64 = (FRAME_TARGET + CHUNK_MAX) as u64;

/// READs of at least this many bytes are the kernel's own read-ahead at
/// full width (see [`super::READ_AHEAD_KIB`]): nothing is pushed after them.
pub(super) const KERNEL_READS_AHEAD: u32 = 512 << 10;

/// Offers waiting for the pusher; more are dropped.
const QUEUE: usize = 256;

/// Files remembered with how far their pages were stored (forgotten all at
/// once beyond this).
const REMEMBERED: usize = 4096;

const PAGE: u64 = 4096;

/// The request threads' end of the pusher.
#[derive(Default)]
pub(super) struct Pusher {
    queue: Mutex<Option<SyncSender<Offer>>>,
}

/// A READ the kernel was answered: file `ino`, bytes `start..end`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Offer {
    /// The file's inode.
    pub ino: u64,
    /// Where the READ began.
    pub start: u64,
    /// Where the bytes it returned end.
    pub end: u64,
    /// Whether the file goes on after `end` (the READ was answered in
    /// full): then what follows may be pushed too.
    pub more_follows: bool,
}

/// What the pusher remembers of a file.
#[derive(Clone, Copy, Default)]
struct Pushed {
    /// Where its last READ ended.
    read_end: u64,
    /// Where the last store of pages after a READ ended.
    stored_end: u64,
}

impl Pusher {
    /// Starts the pusher thread, which stores pages through `notifier`.
    pub(super) fn start(&self, view: Arc<View>, notifier: Notifier) -> std::io::Result<()> {
        let (queue, offers) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("push".into())
            .spawn(move || push_loop(&view, &notifier, offers))?;
        *self.queue.lock().unwrap_or_else(|p| p.into_inner()) = Some(queue);
        Ok(())
    }

    /// Offers the decoded bytes around a READ just answered; never waits.
    pub(super) fn offer(&self, offer: Offer) {
        let queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(queue) = queue.as_ref()
            && let Err(TrySendError::Disconnected(_)) = queue.try_send(offer)
        {
            tracing::debug!("the pusher thread is gone");
        }
    }
}

fn push_loop(view: &View, notifier: &Notifier, offers: Receiver<Offer>) {
    // What was read and stored of each file: a READ that continues the
    // last one has the pages before it cached already, and one inside what
    // was stored after a READ (the kernel's read-ahead was already under
    // way) offers nothing new after it.
    let mut files: HashMap<u64, Pushed> = HashMap::new();
    let mut run = Vec::new();
    for offer in offers {
        if files.len() > REMEMBERED {
            files.clear();
        }
        let pushed = files.get(&offer.ino).copied().unwrap_or_default();
        let continues = offer.start == pushed.read_end || offer.start == pushed.stored_end;
        if !continues {
            // Up to the READ's first page (it filled that page on), from
            // the first whole page of what is decoded before it.
            let end = offer.start - offer.start % PAGE;
            if let Ok(spans) = view.cached_beside(offer.ino, end, Side::Before, PUSH_BACK_BYTES)
                && let Some(stored) = gather(&spans, &mut run)
                && stored.end == end
            {
                let from = stored.start;
                let skip = (from.next_multiple_of(PAGE) - from) as usize;
                if skip < run.len() {
                    store(notifier, offer.ino, from + skip as u64, &run[skip..]);
                }
            }
        }
        let mut stored_end = pushed.stored_end;
        if offer.more_follows {
            // From the first whole page after the read (the READ filled its
            // last page), or from where the last store ended if the read
            // lies in what it stored (READs sent before the store).
            let after_read = offer.end.next_multiple_of(PAGE);
            let in_last_store = offer.start >= pushed.read_end && after_read <= pushed.stored_end;
            let from = if in_last_store {
                pushed.stored_end
            } else {
                after_read
            };
            if let Ok(spans) = view.cached_beside(offer.ino, from, Side::After, PUSH_BYTES)
                && let Some(stored) = gather(&spans, &mut run)
                && stored.start == from
            {
                // Whole pages only (or up to the end of the file): a
                // partial page would not be marked up to date.
                let size = view.getattr(offer.ino).map(|a| a.size).unwrap_or(0);
                let keep = if stored.end >= size {
                    run.len()
                } else {
                    (run.len() as u64 - run.len() as u64 % PAGE) as usize
                };
                if keep > 0 && store(notifier, offer.ino, from, &run[..keep]) {
                    stored_end = from + keep as u64;
                }
            }
        }
        files.insert(
            offer.ino,
            Pushed {
                read_end: offer.end,
                stored_end,
            },
        );
    }
}

/// Gathers into `run` the first of `spans` and those that follow it
/// without a gap; returns the file range they cover.
fn gather(spans: &[(u64, CachedBytes)], run: &mut Vec<u8>) -> Option<std::ops::Range<u64>> {
    let (first, _) = spans.first()?;
    run.clear();
    let mut at = *first;
    for (offset, bytes) in spans {
        if *offset != at {
            break;
        }
        run.extend_from_slice(bytes.bytes());
        at += bytes.bytes().len() as u64;
    }
    Some(*first..at)
}

/// Stores `bytes` at `offset` of file `ino` in the kernel's page cache.
fn store(notifier: &Notifier, ino: u64, offset: u64, bytes: &[u8]) -> bool {
    match notifier.store(INodeNo(ino), offset, bytes) {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!("storing pages of inode {ino}: {e}");
            false
        }
    }
}
