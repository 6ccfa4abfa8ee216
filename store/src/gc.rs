//! Garbage collection (FORMAT.md, "Garbage collection").
//!
//! 1. One transaction applies the retention policy, marks and sweeps:
//!    * **retained**: the newest `keep_last` generations (always the live
//!      one), those live within `keep_younger_than`, every pinned generation
//!      and every generation a running reader serves (its runtime root,
//!      [`crate::runtime`]); the others are deleted. Packages that
//!      processes hold open under a running mount are kept as if retained;
//!    * **mark**: packages no retained generation holds, blobs no retained
//!      package uses and chunks no retained blob uses are *condemned* with
//!      the time first seen; anything retained again is un-condemned;
//!    * **sweep**: what has been condemned for at least `grace` is deleted
//!      (a package with its inodes and directory entries), a blob only once
//!      no inode names it and a chunk once no blob does. So a package, its
//!      contents and their chunks leave together, one grace after the last
//!      generation holding them went: a reader that resolved a name just
//!      before (a path walk, a mount opening its view) finds its rows.
//! 2. Packs without live chunks are deleted; packs that are mostly dead are
//!    rewritten (live chunks copied, verified, to a new pack; index updated in
//!    one transaction; old file deleted).
//! 3. Pack files the catalog does not know (debris of crashed writers) are
//!    deleted, but only while no writer holds the ingest lock.
//!
//! Every transaction that deletes rows bumps the `meta` key `gc_epoch`, so
//! long-lived readers know when to drop what they cached by id.
//!
//! Safety against a concurrent `nip add`: an add commits only after checking,
//! inside its own write transaction, that every chunk it reuses still exists
//! (else it retries), and its own new packs are protected by the ingest lock.
//! So gc can never leave a committed generation referencing missing data; the
//! grace window only makes such retries rare. Anything gc cannot classify
//! (an unknown file in `packs/`, a pack it cannot read) is left alone.

use std::collections::BTreeSet;
use std::fs;
use std::time::Duration;

use crate::catalog::sweep::{self, PackUse, Retention};
use crate::error::{Result, StoreError};
use crate::lock::{GC_LOCK, INGEST_LOCK, StoreLock};
use crate::pack::{BlockBuilder, BlockEncoder, PACK_SUFFIX, PackWriter, SealedPack};
use crate::runtime;
use crate::store::{NoProgress, Progress, Store, now_secs, sync_dir};

pub use crate::catalog::sweep::GC_EPOCH_KEY;

/// Retention and timing policy.
#[derive(Clone, Copy, Debug)]
pub struct GcOptions {
    /// Keep this many newest generations (at least 1: the current one).
    pub keep_last: usize,
    /// Also keep every generation that was live at some moment within this
    /// long before now (as Nix's `--delete-older-than`: a generation
    /// created before the cutoff but replaced after it is kept, so that the
    /// state of the cutoff itself can be restored).
    pub keep_younger_than: Option<Duration>,
    /// Unreferenced data is deleted only after being unreferenced this long.
    pub grace: Duration,
    /// Rewrite packs whose live bytes are below this fraction of their size.
    pub repack_below: f64,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            keep_last: 10,
            keep_younger_than: None,
            grace: Duration::from_secs(3600),
            repack_below: 0.5,
        }
    }
}

/// What a gc run did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct GcReport {
    /// Generations dropped by the retention policy.
    pub generations_deleted: u64,
    /// Generations the age and count policy alone would have dropped, kept
    /// because they are pinned.
    pub kept_pinned: Vec<i64>,
    /// Generations the age and count policy alone would have dropped, kept
    /// because a running mount or virtio-fs daemon serves them.
    pub kept_in_use: Vec<i64>,
    /// Packages in no retained generation kept because a client of a
    /// running mount or virtio-fs daemon still holds files of them (a
    /// program has them open; `NAME/VERSION`).
    pub kept_open: Vec<String>,
    /// Packages newly found in no retained generation (deleted after the
    /// grace window).
    pub packages_condemned: u64,
    /// Packages deleted, with their inodes and directory entries.
    pub packages_deleted: u64,
    /// File contents newly found unused by retained packages.
    pub blobs_condemned: u64,
    /// File contents deleted.
    pub blobs_deleted: u64,
    /// Chunks newly marked as unreferenced (deleted after the grace window).
    pub chunks_condemned: u64,
    /// Chunks deleted from the index.
    pub chunks_deleted: u64,
    /// Pack files deleted (empty packs and debris).
    pub packs_deleted: u64,
    /// Packs rewritten to drop dead chunks.
    pub packs_rewritten: u64,
    /// Pack bytes before minus after.
    pub bytes_freed: u64,
    /// Whether the debris sweep was skipped because an add was running.
    pub debris_sweep_skipped: bool,
    /// Runtime records of processes that are gone, deleted.
    pub stale_runtime_records: u64,
    /// Decoded copies (`STORE/decoded`) of contents no package holds any
    /// more, and leftovers of interrupted copies, deleted.
    pub decoded_removed: u64,
    /// Their bytes.
    pub decoded_bytes_removed: u64,
    /// The `gc_epoch` after this run.
    pub gc_epoch: i64,
}

/// What running readers use, besides what the retention policy keeps.
struct Roots {
    /// Generations served by running mounts and virtio-fs daemons.
    generations: BTreeSet<i64>,
    /// Packages (ids) clients of running readers still hold inodes of.
    held: BTreeSet<i64>,
}

/// Runs one garbage collection.
pub fn collect(store: &mut Store, options: GcOptions) -> Result<GcReport> {
    collect_with_progress(store, options, &NoProgress)
}

/// [`collect`], reporting its phases and the pack bytes it went through to
/// `progress`.
pub fn collect_with_progress(
    store: &mut Store,
    options: GcOptions,
    progress: &dyn Progress,
) -> Result<GcReport> {
    let _gc = StoreLock::try_exclusive(&store.locks_dir(), GC_LOCK)?
        .ok_or_else(|| StoreError::Invalid("another gc is running on this store".into()))?;
    let mut report = GcReport {
        stale_runtime_records: runtime::sweep_dead(store.dir())?,
        ..GcReport::default()
    };
    // Read before the catalog transaction: a reader registering later opened
    // its view later, and what it resolved meanwhile is under the grace.
    let records = runtime::live(store.dir())?;
    let roots = Roots {
        generations: records
            .iter()
            .flat_map(|r| r.served.generations.iter().copied())
            .collect(),
        held: records
            .iter()
            .flat_map(|r| r.served.packages.iter().copied())
            .collect(),
    };
    let before = pack_bytes(store)?;
    progress.phase("catalog");
    sweep_catalog(store, options, &roots, &mut report)?;
    // Copies are only an optimisation: a decoded directory gc cannot
    // prune (a link in its place) is said, not a reason to stop halfway.
    match crate::decoded::prune(store) {
        Ok(pruned) => {
            (report.decoded_removed, report.decoded_bytes_removed) =
                (pruned.removed, pruned.removed_bytes)
        }
        Err(e) => tracing::warn!("decoded copies left as they are: {e}"),
    }
    sweep_packs(store, options, &mut report, progress)?;
    progress.phase("debris");
    sweep_debris(store, options, &mut report)?;
    report.bytes_freed = before.saturating_sub(pack_bytes(store)?);
    report.gc_epoch = store.catalog().gc_epoch()?;
    store.reader().blocks().forget_packs();
    Ok(report)
}

fn pack_bytes(store: &Store) -> Result<u64> {
    let mut total = 0;
    let dir = store.packs_dir();
    for entry in fs::read_dir(&dir).map_err(|e| StoreError::io(&dir, e))? {
        let entry = entry.map_err(|e| StoreError::io(&dir, e))?;
        total += entry.metadata().map(|m| m.len()).unwrap_or(0);
    }
    Ok(total)
}

fn sweep_catalog(
    store: &mut Store,
    options: GcOptions,
    roots: &Roots,
    report: &mut GcReport,
) -> Result<()> {
    let now = now_secs();
    let retention = Retention {
        keep_last: options.keep_last,
        keep_younger_than: options.keep_younger_than,
        in_use: &roots.generations,
        held: &roots.held,
    };
    let counts = sweep::mark_and_sweep(
        store.catalog_mut().conn(),
        &retention,
        now,
        now - options.grace.as_secs() as i64,
    )?;
    report.generations_deleted = counts.generations_deleted;
    report.kept_pinned = counts.kept_pinned;
    report.kept_in_use = counts.kept_in_use;
    report.kept_open = counts.kept_open;
    report.packages_condemned = counts.packages_condemned;
    report.packages_deleted = counts.packages_deleted;
    report.blobs_condemned = counts.blobs_condemned;
    report.blobs_deleted = counts.blobs_deleted;
    report.chunks_condemned = counts.chunks_condemned;
    report.chunks_deleted = counts.chunks_deleted;
    Ok(())
}

fn sweep_packs(
    store: &mut Store,
    options: GcOptions,
    report: &mut GcReport,
    progress: &dyn Progress,
) -> Result<()> {
    let uses = sweep::pack_uses(store.catalog_mut().conn())?;
    progress.start(
        uses.iter()
            .filter(|p| !p.remote)
            .map(|p| p.size.max(0) as u64)
            .sum(),
        uses.len() as u64,
    );
    progress.phase("packs");
    for pack in uses {
        progress.advance(pack.size.max(0) as u64);
        if pack.live_chunks == 0 {
            let deleted = sweep::delete_empty_pack(store.catalog_mut().conn(), pack.id)?;
            if deleted && !pack.remote {
                remove_pack_file(store, &pack.name)?;
                report.packs_deleted += 1;
            }
        } else if !pack.remote
            && (pack.live_bytes as f64) < options.repack_below * pack.size as f64
            && repack(store, &pack)?
        {
            report.packs_rewritten += 1;
        }
    }
    Ok(())
}

fn remove_pack_file(store: &Store, name: &str) -> Result<()> {
    let path = store.packs_dir().join(name);
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        // Already gone (an earlier run crashed after its commit): fine.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io(&path, e)),
    }
}

/// Copies the live chunks of `pack` into new blocks of a new pack (dead
/// chunks inside a live block are dropped too). Returns false when it
/// left the pack alone (e.g. a chunk failed verification: its damage must stay
/// visible to `verify`, not be silently dropped).
fn repack(store: &mut Store, pack: &PackUse) -> Result<bool> {
    let _writer = StoreLock::shared(&store.locks_dir(), INGEST_LOCK)?;
    let locations = sweep::pack_chunks(store.catalog_mut().conn(), pack.id)?;
    let mut writer = PackWriter::create(&store.packs_dir())?;
    let mut encoder = BlockEncoder::store_default()?;
    let mut moved = Vec::with_capacity(locations.len());
    let mut builder = BlockBuilder::default();
    let mut pending_ids = Vec::new();
    for (i, (loc, id, kind)) in locations.iter().enumerate() {
        match store
            .reader()
            .blocks()
            .chunk_with(loc, |data| builder.push_kind(loc.hash, data, *kind))
        {
            Ok(()) => {}
            Err(e) => {
                tracing::warn!("not repacking {}: {e}", pack.name);
                drop(writer);
                return Ok(false);
            }
        }
        pending_ids.push(*id);
        if builder.raw_len() >= crate::params::BLOCK_TARGET || i + 1 == locations.len() {
            let written = writer.append(&builder.finish(&mut encoder))?;
            moved.extend(pending_ids.drain(..).zip(written));
        }
    }
    let sealed: SealedPack = writer.seal()?;
    sync_dir(&store.packs_dir())?;
    let old_gone = sweep::record_repack(store.catalog_mut().conn(), &sealed, &moved, pack.id)?;
    if old_gone {
        remove_pack_file(store, &pack.name)?;
    }
    Ok(true)
}

fn sweep_debris(store: &mut Store, options: GcOptions, report: &mut GcReport) -> Result<()> {
    let Some(_exclusive) = StoreLock::try_exclusive(&store.locks_dir(), INGEST_LOCK)? else {
        report.debris_sweep_skipped = true;
        return Ok(());
    };
    let known = sweep::pack_names(store.catalog_mut().conn())?;
    let dir = store.packs_dir();
    let now = std::time::SystemTime::now();
    for entry in fs::read_dir(&dir).map_err(|e| StoreError::io(&dir, e))? {
        let entry = entry.map_err(|e| StoreError::io(&dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(PACK_SUFFIX) || known.contains(&name) {
            continue;
        }
        let old_enough = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age >= options.grace);
        if old_enough {
            remove_pack_file(store, &name)?;
            report.packs_deleted += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AddDir, AddOptions, NoProgress};

    fn text(seed: u32, len: usize) -> Vec<u8> {
        (0..len)
            .flat_map(|i| {
                format!(
                    "line {i} of file {seed}
"
                )
                .into_bytes()
            })
            .take(len)
            .collect()
    }

    /// Two packages share one pack (one transaction); removing one leaves the
    /// pack mostly dead, and gc rewrites it with only the live chunks, which
    /// still read back byte for byte.
    #[test]
    fn mostly_dead_pack_is_rewritten_and_survivors_read_back() {
        let tmp = tempfile::tempdir().unwrap();
        let (keep_dir, drop_dir) = (tmp.path().join("keep"), tmp.path().join("drop"));
        fs::create_dir_all(&keep_dir).unwrap();
        fs::create_dir_all(&drop_dir).unwrap();
        let kept = text(1, 300_000);
        fs::write(keep_dir.join("kept.txt"), &kept).unwrap();
        for i in 0..8 {
            fs::write(drop_dir.join(format!("f{i}")), text(100 + i, 400_000)).unwrap();
        }
        let mut store = Store::init(&tmp.path().join("store")).unwrap();
        let dirs = [
            AddDir {
                path: keep_dir,
                name: "keep".into(),
                version: "1".into(),
            },
            AddDir {
                path: drop_dir,
                name: "drop".into(),
                version: "1".into(),
            },
        ];
        store
            .add_dirs(&dirs, AddOptions::default(), &NoProgress)
            .unwrap();
        store.remove(&["drop".to_string()]).unwrap();
        let options = GcOptions {
            keep_last: 1,
            keep_younger_than: None,
            grace: Duration::ZERO,
            repack_below: 0.5,
        };
        let report = collect(&mut store, options).unwrap();
        assert_eq!(report.packages_deleted, 1, "{report:?}");
        assert!(report.chunks_deleted > 0, "{report:?}");
        assert_eq!(report.packs_rewritten, 1, "{report:?}");
        assert!(report.bytes_freed > 0, "{report:?}");

        let package = store.installed("keep/1").unwrap();
        let inode = store.resolve(&package, b"kept.txt").unwrap();
        let mut out = Vec::new();
        store.read_blob(inode.blob.unwrap(), &mut out).unwrap();
        assert_eq!(out, kept);
        let verified = crate::verify::verify(&mut store).unwrap();
        assert!(verified.ok, "{verified:?}");
    }

    /// Adds a one-file package NAME/VERSION whose file holds `seed`'s text.
    fn add(store: &mut Store, root: &std::path::Path, name: &str, version: &str, seed: u32) {
        let dir = root.join(format!("src-{name}-{version}"));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("file"), text(seed, 200_000)).unwrap();
        let d = AddDir {
            path: dir,
            name: name.into(),
            version: version.into(),
        };
        store
            .add_dirs(&[d], AddOptions::default(), &NoProgress)
            .unwrap();
    }

    /// The file of NAME/VERSION read back from the store, whichever
    /// generation holds it.
    fn read_file(store: &Store, name: &str, version: &str) -> Vec<u8> {
        let package = store.catalog().package(name, version).unwrap().unwrap();
        let inode = store.resolve(&package, b"file").unwrap();
        let mut out = Vec::new();
        store.read_blob(inode.blob.unwrap(), &mut out).unwrap();
        out
    }

    fn now_only(keep_last: usize) -> GcOptions {
        GcOptions {
            keep_last,
            grace: Duration::ZERO,
            ..GcOptions::default()
        }
    }

    #[test]
    fn pinned_and_served_generations_survive_keep_one() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = Store::init(&tmp.path().join("store")).unwrap();
        add(&mut store, tmp.path(), "a", "1", 1); // generation 1
        store.remove(&["a".to_string()]).unwrap(); // 2
        add(&mut store, tmp.path(), "b", "1", 2); // 3
        store.remove(&["b".to_string()]).unwrap(); // 4
        add(&mut store, tmp.path(), "c", "1", 3); // 5
        assert!(store.pin(1).unwrap());
        let served = runtime::RuntimeRoot::register(
            store.dir(),
            runtime::Served {
                kind: runtime::ServedKind::Mount,
                target: "/Programs".into(),
                generations: vec![3],
                packages: Vec::new(),
                decoded_from: 0,
            },
        )
        .unwrap();
        let epoch = store.catalog().gc_epoch().unwrap();

        let report = collect(&mut store, now_only(1)).unwrap();
        assert_eq!(report.kept_pinned, vec![1], "{report:?}");
        assert_eq!(report.kept_in_use, vec![3], "{report:?}");
        assert_eq!(report.generations_deleted, 2, "{report:?}");
        assert_eq!(report.packages_deleted, 0, "{report:?}");
        assert!(report.gc_epoch > epoch, "{report:?}");
        let kept: Vec<i64> = store
            .catalog()
            .generations()
            .unwrap()
            .iter()
            .map(|g| g.id)
            .collect();
        assert_eq!(kept, vec![1, 3, 5]);
        assert_eq!(read_file(&store, "a", "1"), text(1, 200_000));
        assert_eq!(read_file(&store, "b", "1"), text(2, 200_000));

        // Unpinned and no longer served: collected, with their data.
        drop(served);
        assert!(store.unpin(1).unwrap());
        assert!(!store.unpin(1).unwrap(), "unpinning twice");
        let report = collect(&mut store, now_only(1)).unwrap();
        assert_eq!(report.generations_deleted, 2, "{report:?}");
        assert_eq!(report.packages_deleted, 2, "{report:?}");
        assert_eq!(report.blobs_deleted, 2, "{report:?}");
        assert!(report.chunks_deleted > 0, "{report:?}");
        assert!(store.catalog().package("a", "1").unwrap().is_none());
        let verified = crate::verify::verify(&mut store).unwrap();
        assert!(verified.ok, "{verified:?}");
    }

    #[test]
    fn rows_wait_out_the_grace_window_like_chunks() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = Store::init(&tmp.path().join("store")).unwrap();
        add(&mut store, tmp.path(), "a", "1", 1);
        add(&mut store, tmp.path(), "b", "1", 2);
        store.remove(&["a".to_string(), "b".to_string()]).unwrap();
        let hour = GcOptions {
            keep_last: 1,
            ..GcOptions::default()
        };
        let report = collect(&mut store, hour).unwrap();
        assert_eq!(
            (report.packages_condemned, report.blobs_condemned),
            (2, 2),
            "{report:?}"
        );
        assert!(report.chunks_condemned > 0, "{report:?}");
        assert_eq!(
            (
                report.packages_deleted,
                report.blobs_deleted,
                report.chunks_deleted
            ),
            (0, 0, 0),
            "{report:?}"
        );
        // Within the grace, every row still reads.
        assert_eq!(read_file(&store, "a", "1"), text(1, 200_000));

        // b comes back before the grace ends: it is rescued, a is not.
        store.set_current("b", "1").unwrap();
        let conn = store.catalog_mut().conn();
        for table in [
            "gc_condemned_packages",
            "gc_condemned_blobs",
            "gc_condemned",
        ] {
            conn.execute(&format!("UPDATE {table} SET since = since - 7200"), [])
                .unwrap();
        }
        let epoch = store.catalog().gc_epoch().unwrap();
        let report = collect(&mut store, hour).unwrap();
        assert_eq!(report.packages_deleted, 1, "{report:?}");
        assert_eq!(report.blobs_deleted, 1, "{report:?}");
        assert!(report.chunks_deleted > 0, "{report:?}");
        assert!(report.gc_epoch > epoch, "{report:?}");
        assert!(store.catalog().package("a", "1").unwrap().is_none());
        assert_eq!(read_file(&store, "b", "1"), text(2, 200_000));

        // Nothing left to delete: the epoch stays.
        let report = collect(&mut store, hour).unwrap();
        assert_eq!(store.catalog().gc_epoch().unwrap(), report.gc_epoch);
        let again = collect(&mut store, hour).unwrap();
        assert_eq!(again.gc_epoch, report.gc_epoch, "{again:?}");
        let verified = crate::verify::verify(&mut store).unwrap();
        assert!(verified.ok, "{verified:?}");
    }

    #[test]
    fn older_than_keeps_what_was_live_within_the_window() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = Store::init(&tmp.path().join("store")).unwrap();
        for (i, name) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            add(&mut store, tmp.path(), name, "1", i as u32);
        }
        let day = 86_400;
        let now = now_secs();
        // Generations 1..5 created 100, 50, 40, 10 and 1 days ago.
        for (id, days) in [(1, 100), (2, 50), (3, 40), (4, 10), (5, 1)] {
            store
                .catalog_mut()
                .conn()
                .execute(
                    "UPDATE generations SET created = ?1 WHERE id = ?2",
                    rusqlite::params![now - days * day, id],
                )
                .unwrap();
        }
        let options = GcOptions {
            keep_last: 1,
            keep_younger_than: Some(Duration::from_secs(30 * day as u64)),
            grace: Duration::ZERO,
            ..GcOptions::default()
        };
        let report = collect(&mut store, options).unwrap();
        assert_eq!(report.generations_deleted, 2, "{report:?}");
        let kept: Vec<i64> = store
            .catalog()
            .generations()
            .unwrap()
            .iter()
            .map(|g| g.id)
            .collect();
        // 3 was live until 4 replaced it 10 days ago: restorable.
        assert_eq!(kept, vec![3, 4, 5]);

        // --keep N as well: either rule keeps a generation.
        let options = GcOptions {
            keep_last: 3,
            keep_younger_than: Some(Duration::from_secs(5 * day as u64)),
            grace: Duration::ZERO,
            ..GcOptions::default()
        };
        assert_eq!(collect(&mut store, options).unwrap().generations_deleted, 0);
        let options = GcOptions {
            keep_last: 1,
            keep_younger_than: Some(Duration::from_secs(5 * day as u64)),
            grace: Duration::ZERO,
            ..GcOptions::default()
        };
        assert_eq!(
            collect(&mut store, options).unwrap().generations_deleted,
            1,
            "3 was replaced 10 days ago, 4 only a day ago"
        );
    }
}
