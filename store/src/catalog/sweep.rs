//! gc's catalog side: choosing the retained generations, marking what they
//! reach, sweeping what has been condemned for a grace window, and the
//! pack rows behind deleting and rewriting packs. The policy and the pack
//! files themselves are `gc`'s; every statement is here.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use rusqlite::{Connection, Transaction, params};

use crate::error::Result;
use crate::pack::{ChunkKind, ChunkLocation, SealedPack};

/// The `meta` key bumped whenever gc deleted catalog rows or packs.
pub const GC_EPOCH_KEY: &str = "gc_epoch";

/// Which generations and packages a sweep keeps.
#[derive(Clone, Debug)]
pub struct Retention<'a> {
    /// Keep this many newest generations (at least 1).
    pub keep_last: usize,
    /// Keep every generation live at some moment within this long.
    pub keep_younger_than: Option<Duration>,
    /// Generations running readers serve.
    pub in_use: &'a BTreeSet<i64>,
    /// Packages clients of running readers hold inodes of.
    pub held: &'a BTreeSet<i64>,
}

/// What one mark-and-sweep transaction did.
#[derive(Clone, Debug, Default)]
pub struct SweepCounts {
    /// Generations deleted by the retention policy.
    pub generations_deleted: u64,
    /// Generations kept only because they are pinned.
    pub kept_pinned: Vec<i64>,
    /// Generations kept only because a running reader serves them.
    pub kept_in_use: Vec<i64>,
    /// Packages kept only because a client holds them (`NAME/VERSION`).
    pub kept_open: Vec<String>,
    /// Packages newly condemned.
    pub packages_condemned: u64,
    /// Packages deleted.
    pub packages_deleted: u64,
    /// Blobs newly condemned.
    pub blobs_condemned: u64,
    /// Blobs deleted.
    pub blobs_deleted: u64,
    /// Chunks newly condemned.
    pub chunks_condemned: u64,
    /// Chunks deleted.
    pub chunks_deleted: u64,
}

/// Bumps `gc_epoch` inside `tx`.
pub(crate) fn bump_epoch(tx: &Transaction<'_>) -> Result<()> {
    tx.execute(
        "INSERT INTO meta(key, value) VALUES (?1, '1')
         ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1",
        [GC_EPOCH_KEY],
    )?;
    Ok(())
}

/// Fills the temporary table `gc_keep` with the generations to retain and
/// records which of them only pins and running readers kept.
fn choose_retained(
    tx: &Transaction<'_>,
    retention: &Retention<'_>,
    now: i64,
    counts: &mut SweepCounts,
) -> Result<()> {
    let keep = retention.keep_last.max(1) as i64;
    tx.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS gc_keep(id INTEGER PRIMARY KEY);
         DELETE FROM gc_keep;",
    )?;
    tx.execute(
        "INSERT INTO gc_keep SELECT id FROM generations ORDER BY id DESC LIMIT ?1",
        [keep],
    )?;
    if let Some(age) = retention.keep_younger_than {
        let cutoff = now.saturating_sub(i64::try_from(age.as_secs()).unwrap_or(i64::MAX));
        // Live at some moment after the cutoff: created after it, or
        // replaced (by the next generation) after it.
        tx.execute(
            "INSERT OR IGNORE INTO gc_keep
             SELECT g.id FROM generations g
             WHERE g.created >= ?1
                OR coalesce((SELECT min(n.created) FROM generations n WHERE n.id > g.id), ?1) >= ?1",
            [cutoff],
        )?;
    }
    let pinned: Vec<i64> = {
        let mut stmt = tx.prepare(
            "SELECT p.generation FROM pins p
             WHERE p.generation IN (SELECT id FROM generations)
               AND p.generation NOT IN (SELECT id FROM gc_keep) ORDER BY 1",
        )?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let mut add =
        tx.prepare("INSERT OR IGNORE INTO gc_keep SELECT id FROM generations WHERE id = ?1")?;
    for g in &pinned {
        add.execute([g])?;
    }
    for g in retention.in_use {
        if add.execute([g])? > 0 {
            counts.kept_in_use.push(*g);
        }
    }
    counts.kept_pinned = pinned;
    Ok(())
}

/// One transaction: applies `retention`, marks what the retained
/// generations and held packages reach, condemns the rest (as of `now`)
/// and deletes what was condemned at or before `deadline`: packages first,
/// then blobs no inode names, then chunks no blob uses. Bumps `gc_epoch`
/// if anything was deleted.
pub(crate) fn mark_and_sweep(
    conn: &mut Connection,
    retention: &Retention<'_>,
    now: i64,
    deadline: i64,
) -> Result<SweepCounts> {
    let mut counts = SweepCounts::default();
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    choose_retained(&tx, retention, now, &mut counts)?;
    tx.execute(
        "DELETE FROM generation_packages WHERE generation NOT IN (SELECT id FROM gc_keep)",
        [],
    )?;
    counts.generations_deleted = tx.execute(
        "DELETE FROM generations WHERE id NOT IN (SELECT id FROM gc_keep)",
        [],
    )? as u64;
    // A pin outlives nothing it names.
    tx.execute(
        "DELETE FROM pins WHERE generation NOT IN (SELECT id FROM generations)",
        [],
    )?;

    // Mark: what the retained generations and open files reach, level by
    // level.
    tx.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS gc_live_packages(id INTEGER PRIMARY KEY);
         CREATE TEMP TABLE IF NOT EXISTS gc_live_blobs(id INTEGER PRIMARY KEY);
         CREATE TEMP TABLE IF NOT EXISTS gc_live_chunks(id INTEGER PRIMARY KEY);
         DELETE FROM gc_live_packages; DELETE FROM gc_live_blobs; DELETE FROM gc_live_chunks;
         INSERT INTO gc_live_packages SELECT DISTINCT package FROM generation_packages;",
    )?;
    {
        let mut keep = tx.prepare(
            "INSERT OR IGNORE INTO gc_live_packages SELECT id FROM packages WHERE id = ?1",
        )?;
        let mut spec = tx.prepare("SELECT name || '/' || version FROM packages WHERE id = ?1")?;
        for id in retention.held {
            if keep.execute([id])? > 0 {
                counts.kept_open.push(spec.query_row([id], |r| r.get(0))?);
            }
        }
    }
    tx.execute_batch(
        "INSERT OR IGNORE INTO gc_live_blobs
             SELECT i.blob FROM inodes i JOIN gc_live_packages l ON l.id = i.package
             WHERE i.blob IS NOT NULL;
         INSERT OR IGNORE INTO gc_live_chunks
             SELECT bc.chunk FROM blob_chunks bc JOIN gc_live_blobs l ON l.id = bc.blob;
         DELETE FROM gc_condemned_packages WHERE package IN (SELECT id FROM gc_live_packages);
         DELETE FROM gc_condemned_blobs WHERE blob IN (SELECT id FROM gc_live_blobs);
         DELETE FROM gc_condemned WHERE chunk IN (SELECT id FROM gc_live_chunks);",
    )?;
    counts.packages_condemned = tx.execute(
        "INSERT OR IGNORE INTO gc_condemned_packages(package, since)
         SELECT id, ?1 FROM packages WHERE id NOT IN (SELECT id FROM gc_live_packages)",
        [now],
    )? as u64;
    counts.blobs_condemned = tx.execute(
        "INSERT OR IGNORE INTO gc_condemned_blobs(blob, since)
         SELECT id, ?1 FROM blobs WHERE id NOT IN (SELECT id FROM gc_live_blobs)",
        [now],
    )? as u64;
    counts.chunks_condemned = tx.execute(
        "INSERT OR IGNORE INTO gc_condemned(chunk, since)
         SELECT id, ?1 FROM chunks WHERE id NOT IN (SELECT id FROM gc_live_chunks)",
        [now],
    )? as u64;

    // Sweep: condemned long enough. Packages first, then what only they
    // used: blobs no inode names any more, chunks no blob uses any more.
    tx.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS gc_dead(id INTEGER PRIMARY KEY);
         DELETE FROM gc_dead;",
    )?;
    tx.execute(
        "INSERT INTO gc_dead SELECT package FROM gc_condemned_packages
         WHERE since <= ?1 AND package NOT IN (SELECT id FROM gc_live_packages)",
        [deadline],
    )?;
    tx.execute_batch(
        "DELETE FROM dirents WHERE dir IN
             (SELECT id FROM inodes WHERE package IN (SELECT id FROM gc_dead));
         DELETE FROM inodes WHERE package IN (SELECT id FROM gc_dead);",
    )?;
    counts.packages_deleted = tx.execute(
        "DELETE FROM packages WHERE id IN (SELECT id FROM gc_dead)",
        [],
    )? as u64;
    tx.execute("DELETE FROM gc_dead", [])?;
    tx.execute(
        "INSERT INTO gc_dead SELECT c.blob FROM gc_condemned_blobs c
         WHERE c.since <= ?1 AND NOT EXISTS (SELECT 1 FROM inodes i WHERE i.blob = c.blob)",
        [deadline],
    )?;
    tx.execute(
        "DELETE FROM blob_chunks WHERE blob IN (SELECT id FROM gc_dead)",
        [],
    )?;
    counts.blobs_deleted =
        tx.execute("DELETE FROM blobs WHERE id IN (SELECT id FROM gc_dead)", [])? as u64;
    counts.chunks_deleted = tx.execute(
        "DELETE FROM chunks WHERE id IN (SELECT c.chunk FROM gc_condemned c
             WHERE c.since <= ?1
               AND NOT EXISTS (SELECT 1 FROM blob_chunks bc WHERE bc.chunk = c.chunk))",
        [deadline],
    )? as u64;
    tx.execute_batch(
        "DELETE FROM gc_condemned_packages WHERE package NOT IN (SELECT id FROM packages);
         DELETE FROM gc_condemned_blobs WHERE blob NOT IN (SELECT id FROM blobs);
         DELETE FROM gc_condemned WHERE chunk NOT IN (SELECT id FROM chunks);
         DROP TABLE gc_keep; DROP TABLE gc_dead;
         DROP TABLE gc_live_packages; DROP TABLE gc_live_blobs; DROP TABLE gc_live_chunks;",
    )?;
    let deleted = counts.generations_deleted
        + counts.packages_deleted
        + counts.blobs_deleted
        + counts.chunks_deleted;
    if deleted > 0 {
        bump_epoch(&tx)?;
    }
    tx.commit()?;
    Ok(counts)
}

/// How much of a pack its indexed chunks still use.
#[derive(Clone, Debug)]
pub struct PackUse {
    /// `packs.id`.
    pub id: i64,
    /// The pack's file (or object) name.
    pub name: String,
    /// Its size in bytes.
    pub size: i64,
    /// Chunks located in it.
    pub live_chunks: i64,
    /// Bytes of the distinct blocks those chunks are in.
    pub live_bytes: i64,
    /// The pack is an object of a remote: no file here to delete or
    /// rewrite, only its row.
    pub remote: bool,
}

/// Every pack with what of it is still used.
pub(crate) fn pack_uses(conn: &Connection) -> Result<Vec<PackUse>> {
    let mut stmt = conn.prepare(
        "SELECT p.id, p.name, p.size,
                (SELECT count(*) FROM chunks c WHERE c.pack = p.id),
                (SELECT coalesce(sum(block_len), 0) FROM
                    (SELECT DISTINCT c.offset, c.block_len FROM chunks c WHERE c.pack = p.id)),
                p.remote IS NOT NULL
         FROM packs p",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(PackUse {
            id: r.get(0)?,
            name: r.get(1)?,
            size: r.get(2)?,
            live_chunks: r.get(3)?,
            live_bytes: r.get(4)?,
            remote: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Deletes pack `id`'s row if no chunk is located in it (checked inside
/// the transaction); bumps `gc_epoch` then. True if it was deleted.
pub(crate) fn delete_empty_pack(conn: &mut Connection, id: i64) -> Result<bool> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let deleted = tx.execute(
        "DELETE FROM packs WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM chunks WHERE pack = ?1)",
        [id],
    )? > 0;
    if deleted {
        bump_epoch(&tx)?;
    }
    tx.commit()?;
    Ok(deleted)
}

/// The chunks located in pack `id`, in pack order, with their ids and
/// whether they are pieces of a large file (framed for random reads when
/// written again, as ingest frames them).
pub(crate) fn pack_chunks(
    conn: &Connection,
    id: i64,
) -> Result<Vec<(ChunkLocation, i64, ChunkKind)>> {
    let mut stmt = conn.prepare(
        "SELECT c.hash, p.name, c.offset, c.block_len, c.inner, c.len, c.id,
                EXISTS (SELECT 1 FROM blob_chunks bc JOIN blobs b ON b.id = bc.blob
                        WHERE bc.chunk = c.id AND b.size >= ?2)
         FROM chunks c JOIN packs p ON p.id = c.pack WHERE c.pack = ?1 ORDER BY c.offset, c.inner",
    )?;
    let framed_file_min = crate::params::FRAMED_FILE_MIN as i64;
    let rows = stmt.query_map(params![id, framed_file_min], |r| {
        let kind = if r.get::<_, bool>(7)? {
            ChunkKind::Part
        } else {
            ChunkKind::Whole
        };
        Ok((super::location_from_row(r)?, r.get::<_, i64>(6)?, kind))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Records a repack in one transaction: the new pack `sealed`, the chunks
/// `moved` (id, new location) out of pack `old`, and `old`'s row deleted if
/// nothing is left in it (returned). Bumps `gc_epoch`: locations readers
/// cached point into a pack that is about to go.
pub(crate) fn record_repack(
    conn: &mut Connection,
    sealed: &SealedPack,
    moved: &[(i64, ChunkLocation)],
    old: i64,
) -> Result<bool> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute(
        "INSERT INTO packs(name, size) VALUES (?1, ?2)",
        params![sealed.name, sealed.size as i64],
    )?;
    let new_id = tx.last_insert_rowid();
    {
        let mut update = tx.prepare(
            "UPDATE chunks SET pack = ?1, offset = ?2, block_len = ?3, inner = ?4 WHERE id = ?5 AND pack = ?6",
        )?;
        for (id, loc) in moved {
            update.execute(params![
                new_id,
                loc.offset as i64,
                loc.block_len,
                loc.inner,
                id,
                old
            ])?;
        }
    }
    let old_gone = tx.execute(
        "DELETE FROM packs WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM chunks WHERE pack = ?1)",
        [old],
    )? > 0;
    bump_epoch(&tx)?;
    tx.commit()?;
    Ok(old_gone)
}

/// The names of every indexed pack.
pub(crate) fn pack_names(conn: &Connection) -> Result<HashSet<String>> {
    let mut stmt = conn.prepare("SELECT name FROM packs")?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
