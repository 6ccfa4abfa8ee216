//! Garbage collection (FORMAT.md, "Garbage collection").
//!
//! 1. One transaction applies the retention policy (keep the newest
//!    `keep_last` generations, always including the current one), deletes
//!    packages no retained generation holds, blobs no inode references, and
//!    marks chunks no blob references as *condemned* (with the time first
//!    seen). Chunks condemned for at least `grace` and still unreferenced are
//!    deleted from the index in the same transaction.
//! 2. Packs without live chunks are deleted; packs that are mostly dead are
//!    rewritten (live chunks copied, verified, to a new pack; index updated in
//!    one transaction; old file deleted).
//! 3. Pack files the catalog does not know (debris of crashed writers) are
//!    deleted, but only while no writer holds the ingest lock.
//!
//! Safety against a concurrent `nip add`: an add commits only after checking,
//! inside its own write transaction, that every chunk it reuses still exists
//! (else it retries), and its own new packs are protected by the ingest lock.
//! So gc can never leave a committed generation referencing missing data; the
//! grace window only makes such retries rare. Anything gc cannot classify
//! (an unknown file in `packs/`, a pack it cannot read) is left alone.

use std::collections::HashSet;
use std::fs;
use std::time::Duration;

use rusqlite::{TransactionBehavior, params};

use crate::error::{Result, StoreError};
use crate::lock::{GC_LOCK, INGEST_LOCK, StoreLock};
use crate::pack::{BlockBuilder, PACK_SUFFIX, PackWriter, SealedPack, block_compressor};
use crate::store::{BlockCursor, NoProgress, Progress, Store, now_secs, sync_dir};

/// Retention and timing policy.
#[derive(Clone, Copy, Debug)]
pub struct GcOptions {
    /// Keep this many newest generations (at least 1: the current one).
    pub keep_last: usize,
    /// Unreferenced data is deleted only after being unreferenced this long.
    pub grace: Duration,
    /// Rewrite packs whose live bytes are below this fraction of their size.
    pub repack_below: f64,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            keep_last: 10,
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
    /// Packages no retained generation held.
    pub packages_deleted: u64,
    /// File contents no longer referenced.
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
    let mut report = GcReport::default();
    let before = pack_bytes(store)?;
    progress.phase("catalog");
    sweep_catalog(store, options, &mut report)?;
    sweep_packs(store, options, &mut report, progress)?;
    progress.phase("debris");
    sweep_debris(store, options, &mut report)?;
    report.bytes_freed = before.saturating_sub(pack_bytes(store)?);
    store.forget_open_packs();
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

fn sweep_catalog(store: &mut Store, options: GcOptions, report: &mut GcReport) -> Result<()> {
    let now = now_secs();
    let deadline = now - options.grace.as_secs() as i64;
    let keep = options.keep_last.max(1) as i64;
    let tx = store
        .catalog_mut()
        .conn()
        .transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS gc_keep(id INTEGER PRIMARY KEY);
         DELETE FROM gc_keep;",
    )?;
    tx.execute(
        "INSERT INTO gc_keep SELECT id FROM generations ORDER BY id DESC LIMIT ?1",
        [keep],
    )?;
    tx.execute(
        "DELETE FROM generation_packages WHERE generation NOT IN (SELECT id FROM gc_keep)",
        [],
    )?;
    report.generations_deleted = tx.execute(
        "DELETE FROM generations WHERE id NOT IN (SELECT id FROM gc_keep)",
        [],
    )? as u64;
    tx.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS gc_dead(id INTEGER PRIMARY KEY);
         DELETE FROM gc_dead;
         INSERT INTO gc_dead SELECT id FROM packages
             WHERE id NOT IN (SELECT package FROM generation_packages);
         DELETE FROM dirents WHERE dir IN
             (SELECT id FROM inodes WHERE package IN (SELECT id FROM gc_dead));
         DELETE FROM inodes WHERE package IN (SELECT id FROM gc_dead);",
    )?;
    report.packages_deleted = tx.execute(
        "DELETE FROM packages WHERE id IN (SELECT id FROM gc_dead)",
        [],
    )? as u64;
    tx.execute_batch(
        "DELETE FROM gc_dead;
         INSERT INTO gc_dead SELECT id FROM blobs
             WHERE id NOT IN (SELECT blob FROM inodes WHERE blob IS NOT NULL);
         DELETE FROM blob_chunks WHERE blob IN (SELECT id FROM gc_dead);",
    )?;
    report.blobs_deleted =
        tx.execute("DELETE FROM blobs WHERE id IN (SELECT id FROM gc_dead)", [])? as u64;
    // Mark: unreferenced chunks start their grace period; referenced ones are
    // rescued.
    tx.execute(
        "DELETE FROM gc_condemned WHERE chunk IN (SELECT chunk FROM blob_chunks)",
        [],
    )?;
    report.chunks_condemned = tx.execute(
        "INSERT OR IGNORE INTO gc_condemned(chunk, since)
         SELECT id, ?1 FROM chunks WHERE id NOT IN (SELECT chunk FROM blob_chunks)",
        [now],
    )? as u64;
    // Sweep: condemned long enough and still unreferenced.
    report.chunks_deleted = tx.execute(
        "DELETE FROM chunks WHERE id IN (SELECT chunk FROM gc_condemned WHERE since <= ?1)
           AND id NOT IN (SELECT chunk FROM blob_chunks)",
        [deadline],
    )? as u64;
    tx.execute(
        "DELETE FROM gc_condemned WHERE chunk NOT IN (SELECT id FROM chunks)",
        [],
    )?;
    tx.execute_batch("DROP TABLE gc_keep; DROP TABLE gc_dead;")?;
    tx.commit()?;
    Ok(())
}

struct PackUse {
    id: i64,
    name: String,
    size: i64,
    live_chunks: i64,
    live_bytes: i64,
}

fn sweep_packs(
    store: &mut Store,
    options: GcOptions,
    report: &mut GcReport,
    progress: &dyn Progress,
) -> Result<()> {
    let uses: Vec<PackUse> = {
        let mut stmt = store.catalog_mut().conn().prepare(
            "SELECT p.id, p.name, p.size,
                    (SELECT count(*) FROM chunks c WHERE c.pack = p.id),
                    (SELECT coalesce(sum(block_len), 0) FROM
                        (SELECT DISTINCT c.offset, c.block_len FROM chunks c WHERE c.pack = p.id))
             FROM packs p",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(PackUse {
                id: r.get(0)?,
                name: r.get(1)?,
                size: r.get(2)?,
                live_chunks: r.get(3)?,
                live_bytes: r.get(4)?,
            })
        })?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    progress.start(
        uses.iter().map(|p| p.size.max(0) as u64).sum(),
        uses.len() as u64,
    );
    progress.phase("packs");
    for pack in uses {
        progress.advance(pack.size.max(0) as u64);
        if pack.live_chunks == 0 {
            let deleted = store.catalog_mut().conn().execute(
                "DELETE FROM packs WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM chunks WHERE pack = ?1)",
                [pack.id],
            )?;
            if deleted > 0 {
                remove_pack_file(store, &pack.name)?;
                report.packs_deleted += 1;
            }
        } else if (pack.live_bytes as f64) < options.repack_below * pack.size as f64
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
    let locations = {
        let mut stmt = store.catalog_mut().conn().prepare(
            "SELECT c.hash, p.name, c.offset, c.block_len, c.inner, c.len, c.id
             FROM chunks c JOIN packs p ON p.id = c.pack WHERE c.pack = ?1 ORDER BY c.offset, c.inner",
        )?;
        let rows = stmt.query_map([pack.id], |r| {
            Ok((crate::catalog::location_from_row(r)?, r.get::<_, i64>(6)?))
        })?;
        rows.collect::<rusqlite::Result<Vec<_>>>()?
    };
    let mut writer = PackWriter::create(&store.packs_dir())?;
    let mut compressor = block_compressor(crate::params::ZSTD_LEVEL)?;
    let mut moved = Vec::with_capacity(locations.len());
    let mut builder = BlockBuilder::default();
    let mut pending_ids = Vec::new();
    let mut cursor = BlockCursor::default();
    for (i, (loc, id)) in locations.iter().enumerate() {
        match cursor.chunk(store, loc) {
            Ok(data) => builder.push(loc.hash, data),
            Err(e) => {
                tracing::warn!("not repacking {}: {e}", pack.name);
                drop(writer);
                return Ok(false);
            }
        }
        pending_ids.push(*id);
        if builder.raw_len() >= crate::params::BLOCK_TARGET || i + 1 == locations.len() {
            let written = writer.append(&builder.finish(&mut compressor))?;
            moved.extend(pending_ids.drain(..).zip(written));
        }
    }
    let sealed: SealedPack = writer.seal()?;
    sync_dir(&store.packs_dir())?;
    let tx = store
        .catalog_mut()
        .conn()
        .transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute(
        "INSERT INTO packs(name, size) VALUES (?1, ?2)",
        params![sealed.name, sealed.size as i64],
    )?;
    let new_id = tx.last_insert_rowid();
    {
        let mut update = tx.prepare(
            "UPDATE chunks SET pack = ?1, offset = ?2, block_len = ?3, inner = ?4 WHERE id = ?5 AND pack = ?6",
        )?;
        for (id, loc) in &moved {
            update.execute(params![
                new_id,
                loc.offset as i64,
                loc.block_len,
                loc.inner,
                id,
                pack.id
            ])?;
        }
    }
    let old_gone = tx.execute(
        "DELETE FROM packs WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM chunks WHERE pack = ?1)",
        [pack.id],
    )? > 0;
    tx.commit()?;
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
    let known: HashSet<String> = {
        let mut stmt = store
            .catalog_mut()
            .conn()
            .prepare("SELECT name FROM packs")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
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
}
