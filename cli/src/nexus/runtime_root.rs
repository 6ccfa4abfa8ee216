//! Announcing what a daemon serves, so that `nip gc` keeps it and `nexus
//! status` shows it (`nexus_store::runtime`, FORMAT.md "Runtime roots"):
//! the generations its view shows, and the packages its clients (the
//! kernel, VM guests) still hold files of.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use anyhow::{Context, Result};
use nexus_fs::View;
use nexus_fs::follow::Follower;
use nexus_store::runtime::{RuntimeRoot, Served, ServedKind};

/// Registers this process as serving what `view` shows of the store in
/// `store` on `target` (mount point or socket). The record lasts as long
/// as the returned [`Recorder`], which keeps it up to date when it follows
/// the view (`nexus_fs::follow`).
pub fn announce(
    store: &Path,
    kind: ServedKind,
    target: &Path,
    view: Arc<View>,
) -> Result<Recorder> {
    let served = Served {
        kind,
        target: target.to_path_buf(),
        generations: view.served_generations(),
        // Not empty when the daemon took a mount over: the kernel already
        // holds files of these packages.
        packages: view.held_packages(),
        // Said by the kernel view, if any, before it looks for copies.
        decoded_from: 0,
    };
    let root = RuntimeRoot::register(store, served).with_context(|| {
        format!(
            "recording what this {} serves in {}",
            kind.as_str(),
            store.join(nexus_store::runtime::RUN_DIR).display()
        )
    })?;
    Ok(Recorder {
        root: Arc::new(root),
        view,
        published: None,
        shown: None,
    })
}

/// The generation a kernel view shows (`-1`: none yet), which the record
/// names besides the view's own: should a switch's image fail, the view
/// moves on and the kernel view stays on the old generation, whose files
/// it still redirects to by path, so gc must not take its packages (a
/// package added since under the same name and version would otherwise
/// lend the old metadata its bytes).
pub type ShownGeneration = Arc<AtomicI64>;

/// Keeps a runtime record in step with the view and its clients.
pub struct Recorder {
    root: Arc<RuntimeRoot>,
    view: Arc<View>,
    /// The clients' version last published.
    published: Option<u64>,
    /// The generation a kernel view over the mount shows, if any.
    shown: Option<ShownGeneration>,
}

impl Recorder {
    /// The record, for a thread that must withdraw it before the process
    /// exits (the termination signal's).
    pub fn root(&self) -> Arc<RuntimeRoot> {
        self.root.clone()
    }

    /// Names also the generation `shown` holds (a kernel view's).
    pub fn with_shown(mut self, shown: ShownGeneration) -> Recorder {
        self.shown = Some(shown);
        self
    }

    /// The generations to record: the view's, and the kernel view's.
    fn generations(&self) -> Vec<i64> {
        let mut generations = self.view.served_generations();
        if let Some(shown) = &self.shown {
            let shown = shown.load(Ordering::Acquire);
            if shown >= 0 && !generations.contains(&shown) {
                generations.push(shown);
                generations.sort_unstable();
            }
        }
        generations
    }

    /// Rewrites the record if what it says changed. A failure is logged,
    /// not fatal: serving goes on, and the record keeps naming what was
    /// served before (which gc then keeps longer than needed; the live
    /// generation gc always keeps).
    fn publish(&mut self) {
        let version = self.view.held_version();
        let generations = self.generations();
        if let Err(e) = self.root.update(generations, self.view.held_packages()) {
            tracing::warn!("recording what this daemon serves: {e}");
            return;
        }
        self.published = Some(version);
    }
}

impl Follower for Recorder {
    fn moved(&mut self, _changes: &nexus_fs::Changes) {
        self.publish();
    }

    fn tick(&mut self) {
        // The grace after a move ends with no move: the record drops the
        // old generation then (update() writes only when it changed).
        if self.published != Some(self.view.held_version())
            || self.root.served().generations != self.generations()
        {
            self.publish();
        }
    }
}
