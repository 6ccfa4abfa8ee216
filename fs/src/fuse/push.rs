//! Handing the kernel decoded file bytes before it asks for them.
//!
//! A READ decodes a whole frame (about 64 KiB of a large file, or a run of
//! small files), and the read-ahead decodes the frames after it; the
//! kernel, though, asks for its pages a window at a time, each a round
//! trip, and a random 4 KiB read of a page decoded a moment ago by another
//! read costs one more. After each READ of a file the pusher thread stores
//! the bytes that follow it, as far as they lie verified in decoded frames
//! (at most [`PUSH_BYTES`]), into the file's page cache with a FUSE store
//! notification: reads of them never reach the daemon. Package files never
//! change, so pages stored this way never go stale, and the kernel may
//! evict them like any other.
//!
//! The pusher is its own thread because storing pages waits for the locks
//! of pages a READ in flight is filling; request threads never wait for
//! it (a full queue drops the offer).

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

use fuser::{INodeNo, Notifier};

use crate::view::View;

/// How far past a read the pusher stores what is decoded.
pub const PUSH_BYTES: u64 = 2 << 20;

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
    queue: Mutex<Option<SyncSender<(u64, u64)>>>,
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

    /// Offers the bytes of file `ino` from `end` on (a READ just ended
    /// there); never waits.
    pub(super) fn offer(&self, ino: u64, end: u64) {
        let queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(queue) = queue.as_ref()
            && let Err(TrySendError::Disconnected(_)) = queue.try_send((ino, end))
        {
            tracing::debug!("the pusher thread is gone");
        }
    }
}

fn push_loop(view: &View, notifier: &Notifier, offers: Receiver<(u64, u64)>) {
    // How far each file's pages were stored: a READ inside what was stored
    // (the kernel's readahead was already under way) offers nothing new.
    let mut stored: HashMap<u64, u64> = HashMap::new();
    let mut run = Vec::new();
    for (ino, end) in offers {
        if stored.len() > REMEMBERED {
            stored.clear();
        }
        // From the first whole page after the read (the READ filled its
        // last page), or from where the last store ended.
        let from = end
            .next_multiple_of(PAGE)
            .max(stored.get(&ino).copied().unwrap_or(0));
        let spans = match view.cached_after(ino, from, PUSH_BYTES) {
            Ok(spans) => spans,
            Err(_) => continue,
        };
        // One contiguous run of whole pages (or up to the end of the file):
        // a partial page would not be marked up to date.
        run.clear();
        let mut at = from;
        for (offset, bytes) in &spans {
            if *offset != at {
                break;
            }
            run.extend_from_slice(bytes.bytes());
            at += bytes.bytes().len() as u64;
        }
        let size = view.getattr(ino).map(|a| a.size).unwrap_or(0);
        let keep = if at >= size {
            run.len()
        } else {
            (run.len() as u64 - run.len() as u64 % PAGE) as usize
        };
        if keep == 0 {
            continue;
        }
        match notifier.store(INodeNo(ino), from, &run[..keep]) {
            Ok(()) => {
                stored.insert(ino, from + keep as u64);
            }
            Err(e) => tracing::debug!("storing pages of inode {ino}: {e}"),
        }
    }
}
