//! Following the live generation: the one loop, per daemon, that moves a
//! [`View`] to each new generation and tells whoever caches answers
//! (the kernel behind a FUSE mount, the Index) what became stale.
//!
//! Every [`REFRESH_EVERY`] the loop asks the view to [`View::refresh`] (one
//! small query when nothing changed; it also notices a gc and drops what
//! gc made stale). When the view moved, each [`Follower`] hears of it; once
//! the view stopped resolving the names the move removed (after
//! [`View::removed_names_grace`]), each hears of that too, since a client
//! may have cached those names anew meanwhile.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::changes::{Changes, Invalidation};
use crate::view::View;

/// How often a daemon checks for a new generation: most of the delay
/// before a switch shows. The check is one indexed query (`max(id)` of the
/// generations), so checking often costs next to nothing.
pub const REFRESH_EVERY: Duration = Duration::from_millis(100);

/// Something that must hear of every move of a live view.
pub trait Follower: Send {
    /// The view now shows another generation; `changes` says what changed.
    fn moved(&mut self, changes: &Changes);

    /// The grace after a move ended: the names in `later`
    /// ([`Changes::after_grace`]) no longer resolve.
    fn grace_ended(&mut self, later: &[Invalidation]) {
        let _ = later;
    }

    /// Called on every turn of the loop, moved or not (every
    /// [`REFRESH_EVERY`]), for followers that watch something besides the
    /// generation.
    fn tick(&mut self) {}
}

/// The running loop; dropping it stops the loop (after its current turn).
pub struct Following {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Following {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the thread following the live generation panicked");
        }
    }
}

/// Starts the loop that keeps `view` on the live generation (a view of a
/// fixed generation only notices gc) and tells `followers` what changed.
pub fn follow(view: Arc<View>, mut followers: Vec<Box<dyn Follower>>) -> io::Result<Following> {
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let thread = std::thread::Builder::new()
        .name("follow".into())
        .spawn(move || {
            // Names moves removed, to announce once the view stops
            // resolving them; oldest first.
            let mut after_grace: VecDeque<(Instant, Vec<Invalidation>)> = VecDeque::new();
            while !stopped.load(Ordering::Relaxed) {
                std::thread::sleep(REFRESH_EVERY);
                match view.refresh() {
                    Ok(Some(changes)) => {
                        tracing::info!(
                            "now showing generation {:?} (from {:?}: {} Apps added, {} removed; \
                             {} versions added, {} removed; {} Current links changed)",
                            changes.to,
                            changes.from,
                            changes.apps_added.len(),
                            changes.apps_removed.len(),
                            changes.versions_added.len(),
                            changes.versions_removed.len(),
                            changes.current_changed.len(),
                        );
                        for follower in followers.iter_mut() {
                            follower.moved(&changes);
                        }
                        let later = changes.after_grace();
                        if !later.is_empty() {
                            // Measured from now, after the view moved: the
                            // view's grace ends first.
                            after_grace
                                .push_back((Instant::now() + view.removed_names_grace(), later));
                        }
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!("checking for a new generation: {e}"),
                }
                for follower in followers.iter_mut() {
                    follower.tick();
                }
                while let Some((due, _)) = after_grace.front() {
                    if *due > Instant::now() {
                        break;
                    }
                    if let Some((_, later)) = after_grace.pop_front() {
                        for follower in followers.iter_mut() {
                            follower.grace_ended(&later);
                        }
                    }
                }
            }
        })?;
    Ok(Following {
        stop,
        thread: Some(thread),
    })
}
