//! A small pool of catalog connections shared by the request threads.
//!
//! A SQLite connection serves one thread at a time, so each request borrows
//! one for the duration of its query. The pool is filled when the view opens,
//! so that requests never pay for opening a connection (which runs the schema
//! check in a write transaction); it only grows if more threads query at once
//! than it was filled for.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use nexus_store::catalog::Catalog;

use crate::error::Result;

/// Private page cache per pooled connection, in KiB: the daemon keeps
/// several connections for its whole life, and the kernel caches the
/// catalog file for all of them.
const PAGE_CACHE_KIB: u32 = 2048;

fn open_small(path: &Path) -> nexus_store::Result<Catalog> {
    let catalog = Catalog::open(path, false)?;
    catalog.limit_page_cache(PAGE_CACHE_KIB)?;
    Ok(catalog)
}

/// Idle connections to one catalog.
pub(crate) struct CatalogPool {
    path: PathBuf,
    idle: Mutex<Vec<Catalog>>,
}

impl CatalogPool {
    /// Opens `size` connections to the catalog at `path`.
    pub(crate) fn open(path: &Path, size: usize) -> Result<CatalogPool> {
        let idle = (0..size.max(1))
            .map(|_| open_small(path))
            .collect::<nexus_store::Result<Vec<_>>>()?;
        Ok(CatalogPool {
            path: path.to_path_buf(),
            idle: Mutex::new(idle),
        })
    }

    fn idle(&self) -> MutexGuard<'_, Vec<Catalog>> {
        // The vector stays consistent even if a holder panicked.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` with a connection of the pool.
    pub(crate) fn with<T>(&self, f: impl FnOnce(&Catalog) -> Result<T>) -> Result<T> {
        let borrowed = self.idle().pop();
        let catalog = match borrowed {
            Some(c) => c,
            None => open_small(&self.path)?,
        };
        let result = f(&catalog);
        self.idle().push(catalog);
        result
    }
}
