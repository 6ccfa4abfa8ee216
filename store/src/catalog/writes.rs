//! The rows a commit writes: packs and chunk locations of a content
//! batch, blobs, and packages with their inodes and directory entries.
//! `commit` decides what is written; every statement is here.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::commit::StagedPackage;
use crate::error::{Result, StoreError};
use crate::hash::Hash;
use crate::ingest::{ContentBatch, FileContent};
use crate::pack::SealedPack;
use crate::tree::{InodeKind, InodeType, encode_xattrs};

/// The id and tree hash of package `name`/`version`, if stored.
pub(crate) fn package_by_spec(
    conn: &Connection,
    name: &str,
    version: &str,
) -> Result<Option<(i64, Vec<u8>)>> {
    Ok(conn
        .query_row(
            "SELECT id, tree_hash FROM packages WHERE name = ?1 AND version = ?2",
            params![name, version],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?)
}

/// The version of package `id`.
pub(crate) fn package_version(conn: &Connection, id: i64) -> Result<String> {
    Ok(conn
        .prepare_cached("SELECT version FROM packages WHERE id = ?1")?
        .query_row([id], |r| r.get(0))?)
}

/// Every stored version of App `name`, oldest first.
pub(crate) fn stored_versions(conn: &Connection, name: &str) -> Result<Vec<String>> {
    let mut stmt = conn.prepare("SELECT version FROM packages WHERE name = ?1 ORDER BY id")?;
    let rows = stmt.query_map([name], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Pins generation `generation` (as of `now`); false if it was pinned.
pub(crate) fn pin(conn: &Connection, generation: i64, now: i64) -> Result<bool> {
    Ok(conn.execute(
        "INSERT OR IGNORE INTO pins(generation, pinned) VALUES (?1, ?2)",
        params![generation, now],
    )? > 0)
}

/// Unpins generation `generation`; false if it was not pinned.
pub(crate) fn unpin(conn: &Connection, generation: i64) -> Result<bool> {
    Ok(conn.execute("DELETE FROM pins WHERE generation = ?1", [generation])? > 0)
}

/// A `meta` value, as `conn` (perhaps inside a transaction) sees it.
pub(crate) fn meta(conn: &Connection, key: &str) -> Result<Option<String>> {
    Ok(conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()?)
}

/// Sets a `meta` value.
pub(crate) fn set_meta(conn: &Connection, key: &str, value: &str) -> Result<()> {
    conn.execute(
        "INSERT INTO meta(key, value) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}

/// Indexes the packs and chunks this run wrote; returns hash -> chunk id for
/// every chunk the batch references (written or reused) that exists now.
pub(crate) fn index_chunks(
    tx: &Transaction<'_>,
    batch: &ContentBatch,
) -> Result<HashMap<Hash, i64>> {
    let mut pack_ids = HashMap::new();
    for pack in &batch.packs {
        let id = match batch.remote {
            None => {
                tx.execute(
                    "INSERT INTO packs(name, size) VALUES (?1, ?2)",
                    params![pack.name, pack.size as i64],
                )?;
                tx.last_insert_rowid()
            }
            Some(remote) => index_remote_pack(tx, pack, remote)?,
        };
        pack_ids.insert(pack.name.clone(), id);
    }
    // A chunk the store knows keeps its location, except that a chunk
    // written to the store's own packs replaces a location on a remote
    // (an import stores what was remote-only: `Catalog::has_chunk`).
    let mut insert = tx.prepare_cached(match batch.remote {
        None => {
            "INSERT INTO chunks(hash, pack, offset, block_len, inner, len)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(hash) DO UPDATE SET pack = excluded.pack, offset = excluded.offset,
                 block_len = excluded.block_len, inner = excluded.inner
             WHERE (SELECT remote FROM packs WHERE id = chunks.pack) IS NOT NULL"
        }
        Some(_) => {
            "INSERT OR IGNORE INTO chunks(hash, pack, offset, block_len, inner, len)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
        }
    })?;
    for loc in &batch.written {
        let pack = pack_ids
            .get(&*loc.pack)
            .ok_or_else(|| StoreError::Invalid(format!("chunk in unknown pack {}", loc.pack)))?;
        insert.execute(params![
            loc.hash.as_bytes(),
            pack,
            loc.offset as i64,
            loc.block_len,
            loc.inner,
            loc.len
        ])?;
    }
    let mut select = tx.prepare_cached("SELECT id FROM chunks WHERE hash = ?1")?;
    let mut ids = HashMap::new();
    for hash in batch
        .written
        .iter()
        .map(|l| &l.hash)
        .chain(batch.reused.iter())
    {
        if ids.contains_key(hash) {
            continue;
        }
        if let Some(id) = select
            .query_row([hash.as_bytes()], |r| r.get::<_, i64>(0))
            .optional()?
        {
            ids.insert(*hash, id);
        }
    }
    // Anything reused that has disappeared since we looked is left out of
    // the map; insert_blob reports it, unless the blob already exists.
    Ok(ids)
}

/// Indexes a pack of remote `remote` (or finds it indexed by an earlier
/// pull: a pack several remotes serve is read from the one pulled from
/// last). A name that is one of the store's own packs is refused: its
/// chunk locations would be read from the wrong file.
fn index_remote_pack(tx: &Transaction<'_>, pack: &SealedPack, remote: i64) -> Result<i64> {
    tx.execute(
        "INSERT INTO packs(name, size, remote) VALUES (?1, ?2, ?3)
         ON CONFLICT(name) DO UPDATE SET remote = excluded.remote WHERE packs.remote IS NOT NULL",
        params![pack.name, pack.size as i64, remote],
    )?;
    let (id, owner): (i64, Option<i64>) = tx.query_row(
        "SELECT id, remote FROM packs WHERE name = ?1",
        [&pack.name],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    if owner != Some(remote) {
        return Err(StoreError::Invalid(format!(
            "the remote names a pack {} as this store's own packs are named",
            pack.name
        )));
    }
    Ok(id)
}

/// Inserts (or finds) the blob for `content`. `Ok(Err(n))` means `n` of its
/// chunks no longer exist.
pub(crate) fn insert_blob(
    tx: &Transaction<'_>,
    content: &FileContent,
    chunk_ids: &HashMap<Hash, i64>,
) -> Result<std::result::Result<i64, usize>> {
    if let Some(id) = tx
        .prepare_cached("SELECT id FROM blobs WHERE hash = ?1")?
        .query_row([content.hash.as_bytes()], |r| r.get::<_, i64>(0))
        .optional()?
    {
        // Invariant: a blob row exists only while all its chunks do (gc
        // deletes blobs before the chunks they reference).
        return Ok(Ok(id));
    }
    let missing = content
        .chunks
        .iter()
        .filter(|(h, _)| !chunk_ids.contains_key(h))
        .count();
    if missing > 0 {
        return Ok(Err(missing));
    }
    tx.prepare_cached("INSERT INTO blobs(hash, size) VALUES (?1, ?2)")?
        .execute(params![content.hash.as_bytes(), content.size as i64])?;
    let blob = tx.last_insert_rowid();
    let mut stmt =
        tx.prepare_cached("INSERT INTO blob_chunks(blob, seq, chunk) VALUES (?1, ?2, ?3)")?;
    for (seq, (hash, _)) in content.chunks.iter().enumerate() {
        stmt.execute(params![blob, seq as i64, chunk_ids[hash]])?;
    }
    // Chunks condemned by an earlier gc run are live again.
    let mut rescue = tx.prepare_cached("DELETE FROM gc_condemned WHERE chunk = ?1")?;
    for (hash, _) in &content.chunks {
        rescue.execute([chunk_ids[hash]])?;
    }
    Ok(Ok(blob))
}

/// Inserts the package row, its inodes and its directory entries.
pub(crate) fn insert_package(
    tx: &Transaction<'_>,
    staged: &StagedPackage,
    tree_hash: Hash,
    blob_ids: &HashMap<Hash, i64>,
) -> Result<i64> {
    let tree = &staged.tree;
    let (mut files, mut bytes) = (0i64, 0i64);
    for e in &tree.entries {
        if let InodeKind::File { size, .. } = tree.inodes[e.inode as usize].kind {
            files += 1;
            bytes += size as i64;
        }
    }
    tx.execute(
        "INSERT INTO packages(name, version, origin, tree_hash, root, added, files, bytes, metadata)
         VALUES (?1, ?2, ?3, ?4, 0, ?5, ?6, ?7, ?8)",
        params![
            staged.name,
            staged.version,
            staged.origin,
            tree_hash.as_bytes(),
            crate::store::now_secs(),
            files,
            bytes,
            staged.metadata
        ],
    )?;
    let package = tx.last_insert_rowid();
    let nlinks = tree.link_counts();
    let mut insert_inode = tx.prepare_cached(
        "INSERT INTO inodes(package, kind, mode, uid, gid, size, mtime, nlink, blob, target, xattrs)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?;
    let mut ids = Vec::with_capacity(tree.inodes.len());
    for (i, inode) in tree.inodes.iter().enumerate() {
        let (k, size, blob, target) = match &inode.kind {
            InodeKind::Dir => (InodeType::Dir, 0u64, None, None),
            InodeKind::File { size, content } => {
                let hash = content.ok_or_else(|| {
                    StoreError::Invalid(format!("{}: file content was not ingested", staged.name))
                })?;
                let blob = blob_ids.get(&hash).copied().ok_or_else(|| {
                    StoreError::Invalid(format!("{}: content {hash} has no blob", staged.name))
                })?;
                (InodeType::File, *size, Some(blob), None)
            }
            InodeKind::Symlink { target } => (
                InodeType::Symlink,
                target.len() as u64,
                None,
                Some(target.clone()),
            ),
        };
        let xattrs = (!inode.xattrs.is_empty()).then(|| encode_xattrs(&inode.xattrs));
        insert_inode.execute(params![
            package,
            k.to_i64(),
            inode.mode,
            inode.uid,
            inode.gid,
            size as i64,
            inode.mtime,
            nlinks[i],
            blob,
            target,
            xattrs
        ])?;
        ids.push(tx.last_insert_rowid());
    }
    tx.execute(
        "UPDATE packages SET root = ?1 WHERE id = ?2",
        params![ids[0], package],
    )?;
    let mut insert_dirent =
        tx.prepare_cached("INSERT INTO dirents(dir, name, inode) VALUES (?1, ?2, ?3)")?;
    for e in &tree.entries {
        insert_dirent
            .execute(params![
                ids[e.parent as usize],
                e.name,
                ids[e.inode as usize]
            ])
            .map_err(|err| match err {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    StoreError::Invalid(format!(
                        "{}/{}: duplicate entry {:?}",
                        staged.name,
                        staged.version,
                        String::from_utf8_lossy(&e.name)
                    ))
                }
                other => other.into(),
            })?;
    }
    Ok(package)
}
