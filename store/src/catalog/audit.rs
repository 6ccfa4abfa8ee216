//! The catalog side of `verify`: every chunk location, every content's
//! chunk list, and the paths that use a content (to name damage).

use rusqlite::Connection;

use crate::error::Result;
use crate::hash::Hash;
use crate::pack::ChunkLocation;

/// Every chunk with its id, location and, for a chunk in a remote pack, the
/// remote's name; in pack order, so each block is read once.
pub(crate) fn chunk_locations(
    conn: &Connection,
) -> Result<Vec<(i64, ChunkLocation, Option<String>)>> {
    let mut stmt = conn.prepare(
        "SELECT c.hash, p.name, c.offset, c.block_len, c.inner, c.len, c.id, r.name
         FROM chunks c JOIN packs p ON p.id = c.pack LEFT JOIN remotes r ON r.id = p.remote
         ORDER BY c.pack, c.offset, c.inner",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get(6)?, super::location_from_row(r)?, r.get(7)?))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// One file content and its chunks as the catalog lists them.
pub(crate) struct ContentChunks {
    /// `blobs.id`.
    pub id: i64,
    /// The content's recorded hash (zeros if malformed: fails the check).
    pub hash: Hash,
    /// Its recorded size.
    pub size: u64,
    /// Each chunk in order: id, hash (zeros if the row is gone) and length.
    pub chunks: Vec<(i64, Hash, u32)>,
}

/// Every file content with its chunk list, by id.
pub(crate) fn contents(conn: &Connection) -> Result<Vec<ContentChunks>> {
    let mut stmt = conn.prepare(
        "SELECT b.id, b.hash, b.size, bc.chunk, c.hash, c.len
         FROM blobs b JOIN blob_chunks bc ON bc.blob = b.id LEFT JOIN chunks c ON c.id = bc.chunk
         ORDER BY b.id, bc.seq",
    )?;
    let mut rows = stmt.query([])?;
    let mut out: Vec<ContentChunks> = Vec::new();
    while let Some(r) = rows.next()? {
        let id: i64 = r.get(0)?;
        let chunk_hash: Option<Vec<u8>> = r.get(4)?;
        let entry = (
            r.get::<_, i64>(3)?,
            chunk_hash
                .as_deref()
                .and_then(Hash::from_slice)
                .unwrap_or(Hash([0; 32])),
            r.get::<_, Option<u32>>(5)?.unwrap_or(0),
        );
        match out.last_mut() {
            Some(last) if last.id == id => last.chunks.push(entry),
            _ => {
                let hash: Vec<u8> = r.get(1)?;
                out.push(ContentChunks {
                    id,
                    hash: Hash::from_slice(&hash).unwrap_or(Hash([0; 32])),
                    size: r.get::<_, i64>(2)? as u64,
                    chunks: vec![entry],
                });
            }
        }
    }
    Ok(out)
}

/// Every `(NAME/VERSION, path)` whose file content is `blob`.
pub(crate) fn paths_using_content(conn: &Connection, blob: i64) -> Result<Vec<(String, String)>> {
    let mut inodes = conn.prepare_cached(
        "SELECT i.id, p.name || '/' || p.version, p.root FROM inodes i JOIN packages p ON p.id = i.package WHERE i.blob = ?1",
    )?;
    let found: Vec<(i64, String, i64)> = inodes
        .query_map([blob], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut parents = conn.prepare_cached("SELECT dir, name FROM dirents WHERE inode = ?1")?;
    let mut out = Vec::new();
    for (inode, package, root) in found {
        // Walk up from each name of the inode to the package root.
        let mut partial: Vec<(i64, Vec<u8>)> = vec![(inode, Vec::new())];
        while let Some((node, suffix)) = partial.pop() {
            if node == root {
                out.push((
                    package.clone(),
                    String::from_utf8_lossy(&suffix).into_owned(),
                ));
                continue;
            }
            let names: Vec<(i64, Vec<u8>)> = parents
                .query_map([node], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            for (dir, name) in names {
                let mut path = name;
                if !suffix.is_empty() {
                    path.push(b'/');
                    path.extend_from_slice(&suffix);
                }
                partial.push((dir, path));
            }
        }
    }
    Ok(out)
}
