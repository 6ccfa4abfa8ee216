//! A small pool of catalog connections shared by the request threads.
//!
//! A SQLite connection serves one thread at a time, so each request borrows
//! one for the duration of its query. The pool is filled when the view opens,
//! so that requests never pay for opening a connection (which runs the schema
//! check in a write transaction); it only grows if more threads query at once
//! than it was filled for.
//!
//! Each connection keeps one read transaction (a snapshot) open across the
//! queries of many requests. Run on its own, every query takes and drops
//! the WAL read lock (`fcntl` calls on the shared-memory file) and checks
//! whether the database file changed: under a cold read of many files that
//! cost more than the queries themselves. A snapshot is renewed
//!
//! - once it is [`SNAPSHOT_LIFETIME`] old, at the connection's next use;
//! - before the next use of every connection once [`CatalogPool::renew_all`]
//!   was called (the view moved to a generation committed since);
//! - right away for [`CatalogPool::with_fresh`] (a query that must see the
//!   latest commit: which generation is live, where gc moved chunks to);
//!
//! and a thread ends the snapshots of connections left idle for
//! [`SNAPSHOT_LIFETIME`], so that an idle daemon never keeps writers' WAL
//! from being checkpointed and reset.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use crate::catalog::Catalog;
use crate::error::{Result, StoreError};

/// Private page cache per pooled connection, in KiB: the daemon keeps
/// several connections for its whole life, and the kernel caches the
/// catalog file for all of them.
const PAGE_CACHE_KIB: u32 = 1024;

/// Longest a connection reads from one snapshot, and longest an idle
/// connection keeps one.
const SNAPSHOT_LIFETIME: Duration = Duration::from_millis(200);

fn open_small(path: &Path) -> Result<Catalog> {
    let catalog = Catalog::open_existing(path)?;
    catalog.limit_page_cache(PAGE_CACHE_KIB)?;
    Ok(catalog)
}

/// A pooled connection and its open snapshot, if any.
struct Pooled {
    catalog: Catalog,
    /// When the snapshot began, and the pool's epoch then.
    snapshot: Option<(Instant, u64)>,
}

impl Pooled {
    fn new(catalog: Catalog) -> Pooled {
        Pooled {
            catalog,
            snapshot: None,
        }
    }

    fn end_snapshot(&mut self) {
        if self.snapshot.take().is_some()
            && let Err(e) = self.catalog.end_read()
        {
            tracing::warn!("ending a catalog read transaction: {e}");
        }
    }

    /// Makes sure the connection reads from a snapshot begun at `epoch`
    /// and younger than [`SNAPSHOT_LIFETIME`] (or `fresh` now).
    fn ready(&mut self, epoch: u64, fresh: bool) {
        if let Some((since, at)) = self.snapshot
            && (fresh || at != epoch || since.elapsed() >= SNAPSHOT_LIFETIME)
        {
            self.end_snapshot();
        }
        if self.snapshot.is_none() {
            match self.catalog.begin_read() {
                Ok(()) => self.snapshot = Some((Instant::now(), epoch)),
                // Queries then run on their own, as without snapshots.
                Err(e) => tracing::warn!("starting a catalog read transaction: {e}"),
            }
        }
    }
}

struct Shared {
    path: PathBuf,
    /// Whether connections keep read snapshots across queries.
    snapshots: bool,
    idle: Mutex<Vec<Pooled>>,
    /// Bumped by [`CatalogPool::renew_all`].
    epoch: AtomicU64,
}

impl Shared {
    fn idle(&self) -> MutexGuard<'_, Vec<Pooled>> {
        // The vector stays consistent even if a holder panicked.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Idle connections to one catalog.
pub(crate) struct CatalogPool {
    shared: Arc<Shared>,
}

impl CatalogPool {
    /// Opens `size` connections to the catalog at `path` (more are opened
    /// when more threads query at once). With `snapshots`, connections keep
    /// read snapshots across queries as the module documentation says;
    /// without, every query runs on its own and sees the latest commit.
    pub(crate) fn open(path: &Path, size: usize, snapshots: bool) -> Result<CatalogPool> {
        let idle = (0..size)
            .map(|_| open_small(path).map(Pooled::new))
            .collect::<Result<Vec<_>>>()?;
        let shared = Arc::new(Shared {
            path: path.to_path_buf(),
            snapshots,
            idle: Mutex::new(idle),
            epoch: AtomicU64::new(0),
        });
        if snapshots {
            spawn_snapshot_reaper(Arc::downgrade(&shared));
        }
        Ok(CatalogPool { shared })
    }

    /// Runs `f` with a connection of the pool, reading from a snapshot at
    /// most [`SNAPSHOT_LIFETIME`] old.
    pub(crate) fn with<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&Catalog) -> Result<T, E>,
    ) -> Result<T, E> {
        self.run(false, f)
    }

    /// Runs `f` with a connection of the pool reading from a new snapshot:
    /// it sees every commit made before this call.
    pub(crate) fn with_fresh<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&Catalog) -> Result<T, E>,
    ) -> Result<T, E> {
        self.run(true, f)
    }

    /// Makes every connection start a new snapshot before its next query:
    /// call it after seeing a commit (in a [`CatalogPool::with_fresh`]) and
    /// before letting other threads act on what it changed.
    pub(crate) fn renew_all(&self) {
        self.shared.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Closes every idle connection; returns how many there were. A
    /// connection borrowed by a query meanwhile stays open: call it while
    /// no query runs.
    pub(crate) fn disconnect(&self) -> usize {
        let mut idle = self.shared.idle();
        let count = idle.len();
        idle.clear();
        count
    }

    /// Opens `count` connections (after [`CatalogPool::disconnect`]).
    pub(crate) fn connect(&self, count: usize) -> Result<()> {
        let opened = (0..count)
            .map(|_| open_small(&self.shared.path).map(Pooled::new))
            .collect::<Result<Vec<_>>>()?;
        self.shared.idle().extend(opened);
        Ok(())
    }

    fn run<T, E: From<StoreError>>(
        &self,
        fresh: bool,
        f: impl FnOnce(&Catalog) -> Result<T, E>,
    ) -> Result<T, E> {
        let borrowed = self.shared.idle().pop();
        let mut conn = match borrowed {
            Some(c) => c,
            None => Pooled::new(open_small(&self.shared.path)?),
        };
        if self.shared.snapshots {
            conn.ready(self.shared.epoch.load(Ordering::Acquire), fresh);
        }
        let result = f(&conn.catalog);
        if result.is_err() {
            // Whatever went wrong, the next query starts clean.
            conn.end_snapshot();
        }
        self.shared.idle().push(conn);
        result
    }
}

/// Ends the snapshots of connections idle for [`SNAPSHOT_LIFETIME`], until
/// the pool is dropped.
fn spawn_snapshot_reaper(shared: Weak<Shared>) {
    let spawned = std::thread::Builder::new()
        .name("catalog-snapshots".into())
        .spawn(move || {
            loop {
                std::thread::sleep(SNAPSHOT_LIFETIME);
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                for conn in shared.idle().iter_mut() {
                    if conn
                        .snapshot
                        .is_some_and(|(since, _)| since.elapsed() >= SNAPSHOT_LIFETIME)
                    {
                        conn.end_snapshot();
                    }
                }
            }
        });
    if let Err(e) = spawned {
        // Snapshots then end only when their connection is next used.
        tracing::warn!("starting the catalog snapshot thread: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{CATALOG_FILE, Store};

    fn generation_count(pool: &CatalogPool, fresh: bool) -> i64 {
        let count = |c: &Catalog| Ok::<_, StoreError>(c.generations()?.len() as i64);
        if fresh {
            pool.with_fresh(count).unwrap()
        } else {
            pool.with(count).unwrap()
        }
    }

    #[test]
    fn snapshots_are_renewed_on_demand_and_with_age() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        Store::init(&dir).unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("f"), b"x").unwrap();
        let add = |version: &str| {
            let mut store = Store::open(&dir).unwrap();
            let d = crate::AddDir {
                path: src.clone(),
                name: "p".into(),
                version: version.into(),
            };
            store
                .add_dirs(&[d], crate::AddOptions::default(), &crate::NoProgress)
                .unwrap();
        };
        add("1");
        let pool = CatalogPool::open(&dir.join(CATALOG_FILE), 1, true).unwrap();
        let before = generation_count(&pool, false);
        add("2");
        // The one connection still reads its snapshot...
        assert_eq!(generation_count(&pool, false), before);
        // ...until asked for a fresh one,
        assert_eq!(generation_count(&pool, true), before + 1);
        add("3");
        // or told that every snapshot is out of date,
        pool.renew_all();
        assert_eq!(generation_count(&pool, false), before + 2);
        add("4");
        // or its snapshot has aged.
        std::thread::sleep(SNAPSHOT_LIFETIME + Duration::from_millis(50));
        assert_eq!(generation_count(&pool, false), before + 3);
    }

    #[test]
    fn idle_connections_end_their_snapshots() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        Store::init(&dir).unwrap();
        let pool = CatalogPool::open(&dir.join(CATALOG_FILE), 2, true).unwrap();
        let open_snapshots = || {
            pool.shared
                .idle()
                .iter()
                .filter(|c| c.snapshot.is_some())
                .count()
        };
        pool.with(|c| Ok::<_, StoreError>(c.generations()?.len()))
            .unwrap();
        assert_eq!(open_snapshots(), 1);
        // An idle daemon must not keep writers' WAL from being reset.
        std::thread::sleep(SNAPSHOT_LIFETIME * 3);
        assert_eq!(open_snapshots(), 0);
    }
}
