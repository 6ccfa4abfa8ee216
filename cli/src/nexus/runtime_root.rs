//! Announcing what a daemon serves, so that `nip gc` keeps it and `nexus
//! status` shows it (`nexus_store::runtime`, FORMAT.md "Runtime roots").

use std::path::Path;
use std::sync::{Arc, Weak};

use anyhow::{Context, Result};
use nexus_store::runtime::{RuntimeRoot, Served, ServedKind};

/// Registers this process as serving `generation` (the one its view shows)
/// of the store in `store` on `target` (mount point or socket). The record
/// lasts as long as the returned guard (shared with the thread that follows
/// the live generation through [`moved`], which holds it weakly).
pub fn announce(
    store: &Path,
    kind: ServedKind,
    target: &Path,
    generation: Option<i64>,
) -> Result<Arc<RuntimeRoot>> {
    let served = Served {
        kind,
        target: target.to_path_buf(),
        generations: generation.into_iter().collect(),
    };
    let root = RuntimeRoot::register(store, served).with_context(|| {
        format!(
            "recording what this {} serves in {}",
            kind.as_str(),
            store.join(nexus_store::runtime::RUN_DIR).display()
        )
    })?;
    Ok(Arc::new(root))
}

/// Records that the view moved to `generation`, if the record still
/// exists (it goes when serving ends). A failure is logged, not fatal:
/// serving goes on, the record keeps naming the previous generation (which
/// gc then keeps longer than needed), and the new one is the live
/// generation, which gc always keeps.
pub fn moved(root: &Weak<RuntimeRoot>, generation: Option<i64>) {
    let Some(root) = root.upgrade() else { return };
    if let Err(e) = root.update(generation.into_iter().collect()) {
        tracing::warn!("recording the generation now served: {e}");
    }
}
