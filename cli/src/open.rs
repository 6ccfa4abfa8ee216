//! Opening a store for a command, with errors that tell the user what to
//! do: the library says what is wrong, the command says which command
//! fixes it. Stores are read through [`nexus_remote::RemotePacks`] (its
//! own packs first, then for a pack that lives on a remote the disk cache,
//! then the remote), so that commands and daemons serve pulled generations
//! as any other.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use nexus_fs::{View, ViewError, ViewOptions};
use nexus_remote::{RemotePacks, RemoteSettings};
use nexus_store::read::Reader;
use nexus_store::{Store, StoreError};

/// What to add to an error from opening the store in `dir`.
fn context(dir: &Path, not_a_store: bool) -> String {
    if not_a_store {
        format!(
            "opening the store in {} (create one with `nip init`, or choose another with --store)",
            dir.display()
        )
    } else {
        format!("opening the store in {}", dir.display())
    }
}

fn store_error(dir: &Path, e: StoreError) -> anyhow::Error {
    let hint = matches!(e, StoreError::NotAStore { .. });
    anyhow::Error::new(e).context(context(dir, hint))
}

/// The pack source of `store`: its own packs, then those of its remotes
/// (a store with none never looks further than `packs/`).
pub fn remote_source(store: &Store) -> Result<Arc<RemotePacks>> {
    let settings = RemoteSettings::load(store.catalog())?;
    Ok(Arc::new(RemotePacks::open(store.dir(), &settings)?))
}

/// Opens the store in `dir`.
pub fn open_store(dir: &Path) -> Result<Store> {
    let mut store = Store::open(dir).map_err(|e| store_error(dir, e))?;
    let source = remote_source(&store)?;
    store.set_source(source)?;
    Ok(store)
}

/// Opens a view of the store in `dir`.
pub fn open_view(dir: &Path, options: ViewOptions) -> Result<View> {
    open_view_and_source(dir, options).map(|(view, _)| view)
}

/// Opens a view of the store in `dir`, and returns its pack source too (a
/// daemon tells it how to reach remotes once confined).
pub fn open_view_and_source(dir: &Path, options: ViewOptions) -> Result<(View, Arc<RemotePacks>)> {
    let view_error = |e: ViewError| {
        let hint = matches!(e, ViewError::Store(StoreError::NotAStore { .. }));
        anyhow::Error::new(e).context(context(dir, hint))
    };
    // Always the remote-aware source: a generation pulled while the daemon
    // runs is followed like any switch, and read from its remote.
    let store = Store::open(dir).map_err(|e| store_error(dir, e))?;
    let source = remote_source(&store)?;
    drop(store);
    // A daemon serves programs: the blocks after one they fetch are
    // likely read next.
    source
        .start_read_ahead(nexus_remote::source::AHEAD_THREADS)
        .context("starting the remote read-ahead threads")?;
    let reader = Reader::with_source(dir, options.reader_options(), source.clone())
        .map_err(|e| store_error(dir, e))?;
    let view = View::with_reader(Arc::new(reader), options.generation).map_err(view_error)?;
    Ok((view, source))
}
