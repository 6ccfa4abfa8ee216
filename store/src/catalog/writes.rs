//! The rows a commit writes: packs and chunk locations of a content
//! batch, blobs, and packages with their inodes and directory entries.
//! `commit` decides what is written; every statement is here.

use std::collections::{HashMap, HashSet};

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::bulk;
use crate::commit::StagedPackage;
use crate::error::{Result, StoreError};
use crate::hash::Hash;
use crate::ingest::{ContentBatch, FileContent};
use crate::pack::{ChunkLocation, SealedPack};
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

/// Records that package `id` was added unrestricted (again): its
/// `restricted_to` becomes NULL, and its `origin` and `metadata` those of
/// this add. True when it was restricted until now.
///
/// A package is its tree: the same `name`/`version` with the same tree
/// hash is the same content, and once an unrestricted source (root's own
/// import, a key trusted for every App) has vouched for it, a restricted
/// grant it also came under takes nothing away. The reverse never
/// happens through an add: a restricted add of a package stored
/// unrestricted leaves it so. Only a whole system states otherwise
/// ([`mark_restricted`]).
///
/// The description goes with the grant: the metadata a restricted signer
/// wrote (its version, epoch included, which builds order versions by)
/// must not come to speak for the package once it ranks as vouched for
/// by root or a key of every App, so a lifted row takes the lifting add's
/// origin and metadata; a row that is unrestricted already keeps its own.
pub(crate) fn mark_unrestricted(
    conn: &Connection,
    id: i64,
    origin: &str,
    metadata: &str,
) -> Result<bool> {
    let changed = conn
        .prepare_cached(
            "UPDATE packages SET restricted_to = NULL, origin = ?2, metadata = ?3
             WHERE id = ?1 AND restricted_to IS NOT NULL",
        )?
        .execute(params![id, origin, metadata])?;
    Ok(changed > 0)
}

/// What [`mark_restricted`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Marked {
    /// The package was restricted to exactly these Apps already.
    Unchanged,
    /// It was restricted to other Apps (only the patterns shown change).
    Changed,
    /// It was unrestricted until now.
    Narrowed,
}

/// Records that package `id` is restricted to `apps`, as a set whose
/// signer vouches for whole systems states it (an image, a pulled
/// generation: `Restrictions::AsStated` of the commit).
pub(crate) fn mark_restricted(conn: &Connection, id: i64, apps: &str) -> Result<Marked> {
    let was: Option<String> = conn
        .prepare_cached("SELECT restricted_to FROM packages WHERE id = ?1")?
        .query_row([id], |r| r.get(0))?;
    if was.as_deref() == Some(apps) {
        return Ok(Marked::Unchanged);
    }
    conn.prepare_cached("UPDATE packages SET restricted_to = ?2 WHERE id = ?1")?
        .execute(params![id, apps])?;
    Ok(if was.is_none() {
        Marked::Narrowed
    } else {
        Marked::Changed
    })
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

/// Indexes the packs and chunks this run wrote, or only the chunks of
/// `only` when given (the packs all the same: a pull records every pack
/// its remote lists as read from that remote, those of packages stored
/// before too, so that a host moved to a mirror reads them from there);
/// returns hash -> chunk id for every chunk indexed or reused that
/// exists now.
pub(crate) fn index_chunks(
    tx: &Transaction<'_>,
    batch: &ContentBatch,
    only: Option<&HashSet<Hash>>,
) -> Result<HashMap<Hash, i64>> {
    let wanted = |hash: &Hash| only.is_none_or(|set| set.contains(hash));
    let mut written: Vec<&ChunkLocation> =
        batch.written.iter().filter(|l| wanted(&l.hash)).collect();
    // In hash order, the unique index on the hash is written from one end
    // to the other instead of at random: each page of it is changed once
    // (new keys after every existing one are appended). Nothing reads the
    // chunks in id order; where they lie is their pack and offset.
    written.sort_unstable_by(|a, b| a.hash.as_bytes().cmp(b.hash.as_bytes()));
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
    let conflict = match batch.remote {
        None => {
            "ON CONFLICT(hash) DO UPDATE SET pack = excluded.pack, offset = excluded.offset,
                 block_len = excluded.block_len, inner = excluded.inner
             WHERE (SELECT remote FROM packs WHERE id = chunks.pack) IS NOT NULL"
        }
        Some(_) => "ON CONFLICT(hash) DO NOTHING",
    };
    let mut cells = Vec::with_capacity(written.len() * 6);
    for loc in &written {
        let pack = pack_ids
            .get(&*loc.pack)
            .ok_or_else(|| StoreError::Invalid(format!("chunk in unknown pack {}", loc.pack)))?;
        cells.extend([
            bulk::blob(loc.hash.as_bytes()),
            bulk::int(*pack),
            bulk::int(loc.offset as i64),
            bulk::int(loc.block_len.into()),
            bulk::int(loc.inner.into()),
            bulk::int(loc.len.into()),
        ]);
    }
    let before = max_id(tx, "chunks")?;
    bulk::insert(
        tx,
        "INSERT OR FAIL INTO chunks(hash, pack, offset, block_len, inner, len)",
        conflict,
        6,
        &cells,
    )?;
    // A chunk another trust domain's remote placed first, whose placement
    // the pull found false (or could not check), is placed where this
    // remote says instead; a chunk in the store's own packs never moves.
    if batch.remote.is_some() && !batch.replaced.is_empty() {
        let mut place = tx.prepare_cached(
            "UPDATE chunks SET pack = ?2, offset = ?3, block_len = ?4, inner = ?5, len = ?6
             WHERE hash = ?1 AND (SELECT remote FROM packs WHERE id = chunks.pack) IS NOT NULL",
        )?;
        for loc in written.iter().filter(|l| batch.replaced.contains(&l.hash)) {
            let pack = pack_ids.get(&*loc.pack).ok_or_else(|| {
                StoreError::Invalid(format!("chunk in unknown pack {}", loc.pack))
            })?;
            place.execute(params![
                loc.hash.as_bytes(),
                pack,
                loc.offset as i64,
                loc.block_len,
                loc.inner,
                loc.len
            ])?;
        }
    }
    // The new rows are those above the highest id before; chunks known
    // before (kept or moved) are looked up one by one.
    let mut ids = new_rows_by_hash(tx, "chunks", before)?;
    let mut select = tx.prepare_cached("SELECT id FROM chunks WHERE hash = ?1")?;
    for hash in written
        .iter()
        .map(|l| &l.hash)
        .chain(batch.reused.iter().filter(|h| wanted(h)))
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
    // the map; insert_blobs reports it, unless the blob already exists.
    Ok(ids)
}

/// The highest id of `table` (0 when empty): rows inserted from now on in
/// this transaction have higher ids (`AUTOINCREMENT`).
fn max_id(conn: &Connection, table: &str) -> Result<i64> {
    Ok(conn.query_row(
        &format!("SELECT COALESCE(MAX(id), 0) FROM {table}"),
        [],
        |r| r.get(0),
    )?)
}

/// Hash -> id of the rows of `table` (`chunks` or `blobs`) above id
/// `above`.
fn new_rows_by_hash(conn: &Connection, table: &str, above: i64) -> Result<HashMap<Hash, i64>> {
    let mut stmt = conn.prepare_cached(&format!("SELECT id, hash FROM {table} WHERE id > ?1"))?;
    let mut rows = stmt.query([above])?;
    let mut ids = HashMap::new();
    while let Some(row) = rows.next()? {
        let hash = row
            .get_ref(1)?
            .as_blob()
            .ok()
            .and_then(Hash::from_slice)
            .ok_or_else(|| StoreError::Invalid(format!("a {table} row's hash is not 32 bytes")))?;
        ids.insert(hash, row.get(0)?);
    }
    Ok(ids)
}

/// Indexes a pack of remote `remote` (or finds it indexed by an earlier
/// pull: a pack several remotes of one trust domain serve, a store and
/// its mirrors, is read from the one pulled from last). A name that is one
/// of the store's own packs is refused: its chunk locations would be read
/// from the wrong file. So is a pack a remote of another trust domain
/// holds, or one of another size: a key trusted for one domain would
/// otherwise place its chunks in another domain's blocks (every read of
/// such a block then fails its check) and send that domain's reads to its
/// own server.
fn index_remote_pack(tx: &Transaction<'_>, pack: &SealedPack, remote: i64) -> Result<i64> {
    let held: Option<(i64, Option<String>, Option<String>)> = tx
        .query_row(
            "SELECT p.size, r.name, r.domain FROM packs p LEFT JOIN remotes r ON r.id = p.remote
             WHERE p.name = ?1",
            [&pack.name],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    if let Some((size, Some(holder), Some(holder_domain))) = held {
        let domain: String =
            tx.query_row("SELECT domain FROM remotes WHERE id = ?1", [remote], |r| {
                r.get(0)
            })?;
        if holder_domain != domain {
            return Err(StoreError::Invalid(format!(
                "the remote names pack {}, which this store reads from remote {holder} of \
                 trust domain {holder_domain}: a remote of trust domain {domain} cannot claim it",
                pack.name
            )));
        }
        if size != pack.size as i64 {
            return Err(StoreError::Invalid(format!(
                "the remote names pack {} of {} bytes, which remote {holder} holds with {size}",
                pack.name, pack.size
            )));
        }
    }
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

/// Inserts (or finds) the blobs of `contents`: content hash -> blob id.
/// `Ok(Err(n))` means `n` chunks of blobs not stored yet no longer exist
/// (gc took them meanwhile); nothing is inserted then.
///
/// A stored blob is used only if its chunks are the ones `contents` lists
/// for it: chunking is the same in every store ([`crate::params::FROZEN`]),
/// so one content has one chunk list, and two lists under one content hash
/// mean one was not made from its bytes (a remote's metadata is checked
/// chunk by chunk as it is read, never as a whole). Using the stored list
/// served a lying remote's chunks for the same content added later from a
/// directory, a package file or another remote; the transaction is refused
/// instead.
pub(crate) fn insert_blobs(
    tx: &Transaction<'_>,
    contents: &[&FileContent],
    chunk_ids: &HashMap<Hash, i64>,
) -> Result<std::result::Result<HashMap<Hash, i64>, usize>> {
    let mut find = tx.prepare_cached("SELECT id FROM blobs WHERE hash = ?1")?;
    let mut stored_chunks = tx.prepare_cached(
        "SELECT c.hash FROM blob_chunks b JOIN chunks c ON c.id = b.chunk
         WHERE b.blob = ?1 ORDER BY b.seq",
    )?;
    let mut check = |content: &FileContent, blob: i64| -> Result<()> {
        let stored = stored_chunks
            .query_map([blob], |r| r.get::<_, Vec<u8>>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let same = stored.len() == content.chunks.len()
            && stored
                .iter()
                .zip(&content.chunks)
                .all(|(s, (h, _))| s.as_slice() == h.as_bytes());
        if same {
            return Ok(());
        }
        Err(StoreError::Invalid(format!(
            "content {} is recorded with other chunks than this transaction names for it \
             (metadata pulled from a remote that lied?): refused, so that no file reads bytes \
             other than its content; `nip verify` names the packages that use it",
            content.hash
        )))
    };
    let mut ids = HashMap::with_capacity(contents.len());
    let mut missing = 0;
    let mut complete = Vec::with_capacity(contents.len());
    for &content in contents {
        let lost = content
            .chunks
            .iter()
            .filter(|(h, _)| !chunk_ids.contains_key(h))
            .count();
        if lost == 0 {
            complete.push(content);
            continue;
        }
        // Invariant: a blob row exists only while all its chunks do (gc
        // deletes blobs before the chunks they reference): a stored blob
        // whose chunks are not in the map is one this batch reused.
        match find
            .query_row([content.hash.as_bytes()], |r| r.get::<_, i64>(0))
            .optional()?
        {
            Some(id) => {
                check(content, id)?;
                ids.insert(content.hash, id);
            }
            None => missing += lost,
        }
    }
    if missing > 0 {
        return Ok(Err(missing));
    }
    let mut cells = Vec::with_capacity(complete.len() * 2);
    for content in &complete {
        cells.extend([
            bulk::blob(content.hash.as_bytes()),
            bulk::int(content.size as i64),
        ]);
    }
    let before = max_id(tx, "blobs")?;
    bulk::insert(
        tx,
        "INSERT OR FAIL INTO blobs(hash, size)",
        "ON CONFLICT(hash) DO NOTHING",
        2,
        &cells,
    )?;
    let new = new_rows_by_hash(tx, "blobs", before)?;
    // Chunks condemned by an earlier gc run are live again (a store that
    // never ran gc, a fresh subscriber, has none to look for).
    let condemned: bool = tx.query_row("SELECT EXISTS (SELECT 1 FROM gc_condemned)", [], |r| {
        r.get(0)
    })?;
    let mut rescue = tx.prepare_cached("DELETE FROM gc_condemned WHERE chunk = ?1")?;
    let mut cells = Vec::new();
    for content in complete {
        let Some(&blob) = new.get(&content.hash) else {
            let id = find.query_row([content.hash.as_bytes()], |r| r.get::<_, i64>(0))?;
            check(content, id)?;
            ids.insert(content.hash, id);
            continue;
        };
        ids.insert(content.hash, blob);
        for (seq, (hash, _)) in content.chunks.iter().enumerate() {
            let chunk = chunk_ids[hash];
            cells.extend([bulk::int(blob), bulk::int(seq as i64), bulk::int(chunk)]);
            if condemned {
                rescue.execute([chunk])?;
            }
        }
    }
    bulk::insert(
        tx,
        "INSERT OR FAIL INTO blob_chunks(blob, seq, chunk)",
        "",
        3,
        &cells,
    )?;
    Ok(Ok(ids))
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
        "INSERT INTO packages(name, version, origin, tree_hash, root, added, files, bytes, metadata,
                              restricted_to)
         VALUES (?1, ?2, ?3, ?4, 0, ?5, ?6, ?7, ?8, ?9)",
        params![
            staged.name,
            staged.version,
            staged.origin,
            tree_hash.as_bytes(),
            crate::store::now_secs(),
            files,
            bytes,
            staged.metadata,
            staged.restricted_to,
        ],
    )?;
    let package = tx.last_insert_rowid();
    let nlinks = tree.link_counts();
    let xattrs: Vec<Option<Vec<u8>>> = tree
        .inodes
        .iter()
        .map(|inode| (!inode.xattrs.is_empty()).then(|| encode_xattrs(&inode.xattrs)))
        .collect();
    let mut cells = Vec::with_capacity(tree.inodes.len() * 11);
    for ((inode, nlink), xattrs) in tree.inodes.iter().zip(&nlinks).zip(&xattrs) {
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
                Some(target.as_slice()),
            ),
        };
        cells.extend([
            bulk::int(package),
            bulk::int(k.to_i64()),
            bulk::int(inode.mode.into()),
            bulk::int(inode.uid.into()),
            bulk::int(inode.gid.into()),
            bulk::int(size as i64),
            bulk::int(inode.mtime),
            bulk::int((*nlink).into()),
            bulk::opt_int(blob),
            bulk::opt_blob(target),
            bulk::opt_blob(xattrs.as_deref()),
        ]);
    }
    bulk::insert(
        tx,
        "INSERT OR FAIL INTO inodes(package, kind, mode, uid, gid, size, mtime, nlink, blob, target, xattrs)",
        "",
        11,
        &cells,
    )?;
    // In id order, the package's inodes are in the order inserted.
    let ids: Vec<i64> = tx
        .prepare_cached("SELECT id FROM inodes WHERE package = ?1 ORDER BY id")?
        .query_map([package], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    if ids.len() != tree.inodes.len() {
        return Err(StoreError::Invalid(format!(
            "{}/{}: {} inodes stored of {}",
            staged.name,
            staged.version,
            ids.len(),
            tree.inodes.len()
        )));
    }
    tx.execute(
        "UPDATE packages SET root = ?1 WHERE id = ?2",
        params![ids[0], package],
    )?;
    let mut cells = Vec::with_capacity(tree.entries.len() * 3);
    for e in &tree.entries {
        cells.extend([
            bulk::int(ids[e.parent as usize]),
            bulk::blob(&e.name),
            bulk::int(ids[e.inode as usize]),
        ]);
    }
    bulk::insert(
        tx,
        "INSERT OR FAIL INTO dirents(dir, name, inode)",
        "",
        3,
        &cells,
    )
    .map_err(|err| match err {
        StoreError::Catalog(rusqlite::Error::SqliteFailure(f, _))
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            let mut seen = std::collections::HashSet::new();
            let name = tree
                .entries
                .iter()
                .find(|e| !seen.insert((e.parent, e.name.as_slice())))
                .map(|e| String::from_utf8_lossy(&e.name).into_owned())
                .unwrap_or_default();
            StoreError::Invalid(format!(
                "{}/{}: duplicate entry {name:?}",
                staged.name, staged.version
            ))
        }
        other => other,
    })?;
    Ok(package)
}
