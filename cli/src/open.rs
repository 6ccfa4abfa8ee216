//! Opening a store for a command, with errors that tell the user what to
//! do: the library says what is wrong, the command says which command
//! fixes it.

use std::path::Path;

use anyhow::Result;
use nexus_fs::{View, ViewError, ViewOptions};
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

/// Opens the store in `dir`.
pub fn open_store(dir: &Path) -> Result<Store> {
    Store::open(dir).map_err(|e| {
        let hint = matches!(e, StoreError::NotAStore { .. });
        anyhow::Error::new(e).context(context(dir, hint))
    })
}

/// Opens a view of the store in `dir`.
pub fn open_view(dir: &Path, options: ViewOptions) -> Result<View> {
    View::open(dir, options).map_err(|e| {
        let hint = matches!(e, ViewError::Store(StoreError::NotAStore { .. }));
        anyhow::Error::new(e).context(context(dir, hint))
    })
}
