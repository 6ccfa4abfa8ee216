//! Remotes in the catalog (schema 4): the `remotes` table, which packs live
//! on a remote rather than in `packs/`, and the chunks of one block (what a
//! block fetched from a remote is checked against).

use rusqlite::{OptionalExtension, Row, Transaction, TransactionBehavior, params};

use super::Catalog;
use crate::error::{Result, StoreError};
use crate::hash::Hash;

/// A remote as the store records it (FORMAT.md, "Remotes").
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RemoteRow {
    /// Catalog id (never reused).
    pub id: i64,
    /// Its name (`origin`).
    pub name: String,
    /// Where it is: `s3://BUCKET/PREFIX`, `https://…`, `http://…` or
    /// `file:///DIR`.
    pub url: String,
    /// The S3 endpoint (`http://127.0.0.1:8333`), for S3-compatible servers.
    pub endpoint: Option<String>,
    /// The S3 region.
    pub region: Option<String>,
    /// The trust domain its manifests must be signed in.
    pub domain: String,
    /// When it was added (seconds since the epoch).
    pub added: i64,
}

/// What a new remote is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRemote {
    /// Its name.
    pub name: String,
    /// Its URL.
    pub url: String,
    /// S3 endpoint.
    pub endpoint: Option<String>,
    /// S3 region.
    pub region: Option<String>,
    /// Trust domain of its manifests.
    pub domain: String,
}

/// How much of the store one remote holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RemoteUse {
    /// Packs indexed as living on the remote.
    pub packs: u64,
    /// Their size.
    pub bytes: u64,
    /// Packages of retained generations with at least one chunk there.
    pub packages: Vec<String>,
}

/// One chunk of a block, as the index records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockChunk {
    /// Its name.
    pub hash: Hash,
    /// Offset in the decoded block.
    pub inner: u32,
    /// Length.
    pub len: u32,
}

/// A block of another trust domain's remote where the catalog places
/// chunks that a pull's metadata places elsewhere
/// ([`Catalog::foreign_placements`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForeignBlock {
    /// The pack's name.
    pub pack: String,
    /// The block's offset in the pack.
    pub offset: u64,
    /// The block's length.
    pub block_len: u32,
    /// The remote that holds the pack.
    pub remote: String,
    /// The contested chunks the catalog places in it.
    pub chunks: Vec<Hash>,
}

const REMOTE_COLUMNS: &str = "id, name, url, endpoint, region, domain, added";

fn remote_from_row(r: &Row<'_>) -> rusqlite::Result<RemoteRow> {
    Ok(RemoteRow {
        id: r.get(0)?,
        name: r.get(1)?,
        url: r.get(2)?,
        endpoint: r.get(3)?,
        region: r.get(4)?,
        domain: r.get(5)?,
        added: r.get(6)?,
    })
}

impl Catalog {
    /// Every remote, by name.
    pub fn remotes(&self) -> Result<Vec<RemoteRow>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {REMOTE_COLUMNS} FROM remotes ORDER BY name"
        ))?;
        let rows = stmt.query_map([], remote_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The remote named `name`.
    pub fn remote(&self, name: &str) -> Result<Option<RemoteRow>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {REMOTE_COLUMNS} FROM remotes WHERE name = ?1"
        ))?;
        Ok(stmt.query_row([name], remote_from_row).optional()?)
    }

    /// Records a new remote; an error if the name is taken.
    pub fn add_remote(&self, remote: &NewRemote) -> Result<RemoteRow> {
        let tx = Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        let taken: bool = tx
            .prepare("SELECT 1 FROM remotes WHERE name = ?1")?
            .exists([&remote.name])?;
        if taken {
            return Err(StoreError::Invalid(format!(
                "a remote named {} exists already",
                remote.name
            )));
        }
        tx.execute(
            "INSERT INTO remotes(name, url, endpoint, region, domain, added)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                remote.name,
                remote.url,
                remote.endpoint,
                remote.region,
                remote.domain,
                crate::store::now_secs()
            ],
        )?;
        let id = tx.last_insert_rowid();
        tx.commit()?;
        self.remote(&remote.name)?
            .filter(|r| r.id == id)
            .ok_or_else(|| StoreError::Invalid(format!("remote {} vanished", remote.name)))
    }

    /// What the store reads from the remote `id`.
    pub fn remote_use(&self, id: i64) -> Result<RemoteUse> {
        let (packs, bytes): (i64, i64) = self.conn.query_row(
            "SELECT count(*), coalesce(sum(size), 0) FROM packs p
             WHERE p.remote = ?1 AND EXISTS (SELECT 1 FROM chunks c WHERE c.pack = p.id)",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let mut stmt = self.conn.prepare(
            "SELECT DISTINCT p.name || '/' || p.version FROM packages p
             JOIN inodes i ON i.package = p.id AND i.blob IS NOT NULL
             JOIN blob_chunks bc ON bc.blob = i.blob
             JOIN chunks c ON c.id = bc.chunk
             JOIN packs k ON k.id = c.pack
             WHERE k.remote = ?1 ORDER BY 1",
        )?;
        let packages = stmt
            .query_map([id], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(RemoteUse {
            packs: packs as u64,
            bytes: bytes as u64,
            packages,
        })
    }

    /// Forgets the remote `name`. Refused while any pack is indexed as
    /// living there (a generation pulled from it is still stored): the
    /// error names its packages.
    pub fn remove_remote(&self, name: &str) -> Result<()> {
        let remote = self
            .remote(name)?
            .ok_or_else(|| StoreError::NotFound(format!("no remote named {name}")))?;
        let using = self.remote_use(remote.id)?;
        if using.packs > 0 {
            let shown: Vec<&str> = using.packages.iter().take(5).map(String::as_str).collect();
            return Err(StoreError::Invalid(format!(
                "remote {name} still holds {} packs of this store (packages {}{}); collect the generations pulled from it first",
                using.packs,
                shown.join(", "),
                if using.packages.len() > shown.len() {
                    ", …"
                } else {
                    ""
                }
            )));
        }
        let tx = Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        // Rows gc left behind that name no chunk.
        tx.execute("DELETE FROM packs WHERE remote = ?1", [remote.id])?;
        tx.execute("DELETE FROM remotes WHERE id = ?1", [remote.id])?;
        tx.commit()?;
        Ok(())
    }

    /// The remote holding pack `pack` (a file name), if it is a remote pack.
    pub fn pack_remote(&self, pack: &str) -> Result<Option<RemoteRow>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT r.id, r.name, r.url, r.endpoint, r.region, r.domain, r.added
             FROM packs p JOIN remotes r ON r.id = p.remote WHERE p.name = ?1",
        )?;
        Ok(stmt.query_row([pack], remote_from_row).optional()?)
    }

    /// The names of every pack that lives on a remote, with the remote's
    /// name, by pack name.
    pub fn remote_packs(&self) -> Result<Vec<(String, String)>> {
        let mut stmt = self.conn.prepare(
            "SELECT p.name, r.name FROM packs p JOIN remotes r ON r.id = p.remote ORDER BY p.name",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Which of `names` are packs of this store's own `packs/` (not remote).
    pub fn local_packs_named(&self, names: &[String]) -> Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT 1 FROM packs WHERE name = ?1 AND remote IS NULL")?;
        let mut found = Vec::new();
        for name in names {
            if stmt.exists([name])? {
                found.push(name.clone());
            }
        }
        Ok(found)
    }

    /// The block of pack `pack` whose bytes hold `offset..offset + len`:
    /// its offset and length, from the catalog's chunk locations (`None`
    /// when no indexed block does). Readers ask for a block's head or one
    /// of its frames; a remote block is fetched and verified whole.
    pub fn block_holding(&self, pack: &str, offset: u64, len: u64) -> Result<Option<(u64, u32)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT c.offset, c.block_len FROM chunks c JOIN packs p ON p.id = c.pack
             WHERE p.name = ?1 AND c.offset <= ?2 ORDER BY c.offset DESC LIMIT 1",
        )?;
        let found = stmt
            .query_row(params![pack, offset as i64], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, u32>(1)?))
            })
            .optional()?;
        Ok(found.filter(|&(start, block_len)| {
            offset.checked_add(len) <= start.checked_add(u64::from(block_len))
        }))
    }

    /// The first `limit` indexed blocks of pack `pack` at or after
    /// `offset`, in pack order: offset and length of each.
    pub fn blocks_from(&self, pack: &str, offset: u64, limit: usize) -> Result<Vec<(u64, u32)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT DISTINCT c.offset, c.block_len FROM chunks c JOIN packs p ON p.id = c.pack
             WHERE p.name = ?1 AND c.offset >= ?2 ORDER BY c.offset LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![pack, offset as i64, limit as i64], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get(1)?))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The indexed chunks of the block at `offset` of pack `pack`.
    pub fn block_chunks(&self, pack: &str, offset: u64) -> Result<Vec<BlockChunk>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT c.hash, c.inner, c.len FROM chunks c JOIN packs p ON p.id = c.pack
             WHERE p.name = ?1 AND c.offset = ?2 ORDER BY c.inner",
        )?;
        let rows = stmt.query_map(params![pack, offset as i64], |r| {
            let hash: Vec<u8> = r.get(0)?;
            Ok(BlockChunk {
                hash: Hash::from_slice(&hash).unwrap_or(Hash([0; 32])),
                inner: r.get(1)?,
                len: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Whether a remote of a trust domain other than `domain` holds an
    /// indexed pack: only then can [`Catalog::foreign_placements`] find
    /// anything (a store whose remotes share one domain never asks it).
    pub fn other_domains_hold_packs(&self, domain: &str) -> Result<bool> {
        Ok(self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM packs p JOIN remotes r ON r.id = p.remote
                            WHERE r.domain != ?1)",
            [domain],
            |r| r.get(0),
        )?)
    }

    /// The blocks, each on a remote of a trust domain other than `domain`,
    /// where the catalog places some of `chunks` (a pull's metadata, which
    /// places each in a pack of its own remote): one domain's key names
    /// chunks any subscriber can read in another's published metadata, so
    /// where it placed them first is only its word, and a pull of the
    /// other domain checks it ([`crate::ingest::ContentBatch::replaced`]).
    /// Nothing to look up unless [`Catalog::other_domains_hold_packs`].
    pub fn foreign_placements(&self, chunks: &[Hash], domain: &str) -> Result<Vec<ForeignBlock>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT p.name, c.offset, c.block_len, r.name FROM chunks c
             JOIN packs p ON p.id = c.pack JOIN remotes r ON r.id = p.remote
             WHERE c.hash = ?1 AND r.domain != ?2",
        )?;
        let mut blocks: std::collections::BTreeMap<(String, u64, u32), ForeignBlock> =
            Default::default();
        for hash in chunks {
            let found = stmt
                .query_row(params![hash.as_bytes(), domain], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)? as u64,
                        r.get::<_, u32>(2)?,
                        r.get::<_, String>(3)?,
                    ))
                })
                .optional()?;
            if let Some((pack, offset, block_len, remote)) = found {
                blocks
                    .entry((pack.clone(), offset, block_len))
                    .or_insert_with(|| ForeignBlock {
                        pack,
                        offset,
                        block_len,
                        remote,
                        chunks: Vec::new(),
                    })
                    .chunks
                    .push(*hash);
            }
        }
        Ok(blocks.into_values().collect())
    }

    /// The distinct remote blocks `(pack, offset, block length)` holding
    /// chunks of `package`, in pack order: what prefetching it reads.
    pub fn package_blocks(&self, package: i64) -> Result<Vec<(String, u64, u32)>> {
        let mut stmt = self.conn.prepare(
            "SELECT DISTINCT k.name, c.offset, c.block_len FROM inodes i
             JOIN blob_chunks bc ON bc.blob = i.blob
             JOIN chunks c ON c.id = bc.chunk
             JOIN packs k ON k.id = c.pack
             WHERE i.package = ?1 AND i.blob IS NOT NULL AND k.remote IS NOT NULL
             ORDER BY k.name, c.offset",
        )?;
        let rows = stmt.query_map([package], |r| {
            Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get(2)?))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}
