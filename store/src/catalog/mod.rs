//! The SQLite catalog: packs and chunks (the pack index), blobs (file
//! contents), packages with their inodes and directory entries, and
//! generations. FORMAT.md ("Catalog") describes every table.
//!
//! Connections use WAL (readers never block the writer), a busy timeout, and
//! `synchronous = FULL` so that a committed generation survives power loss.
//! Writers take the write lock up front (`BEGIN IMMEDIATE`) and hold it only
//! for the commit itself: all slow work (reading, chunking, compressing,
//! writing packs) happens before.

pub(crate) mod audit;
mod bulk;
mod confined;
pub(crate) mod generations;
mod remotes;
mod schema;
pub(crate) mod sweep;
mod trees;
pub(crate) mod writes;

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params};

use crate::error::{Result, StoreError};
use crate::hash::Hash;
use crate::pack::ChunkLocation;
use crate::tree::{InodeType, Xattrs, decode_xattrs};

pub use confined::check_access_as_effective_user;
pub use remotes::{BlockChunk, ForeignBlock, NewRemote, RemoteRow, RemoteUse};
pub use schema::{OLDEST_READER_KEY, SCHEMA_VERSION, Upgrade};
pub use trees::PackageTree;

/// Store totals for `nip stats`: row counts and bytes of the catalog's
/// tables ([`Catalog::stats`]) and the catalog's own size (the store's).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Stats {
    /// Pack files indexed.
    pub packs: u64,
    /// Bytes in indexed pack files.
    pub stored_bytes: u64,
    /// Bytes of the catalog (database and WAL).
    pub catalog_bytes: u64,
    /// Distinct chunks.
    pub chunks: u64,
    /// Their uncompressed bytes.
    pub chunk_raw_bytes: u64,
    /// Their stored payload bytes.
    pub chunk_stored_bytes: u64,
    /// Distinct file contents.
    pub blobs: u64,
    /// Their bytes.
    pub blob_bytes: u64,
    /// Packages stored (in any retained generation).
    pub packages: u64,
    /// Regular-file entries over all packages.
    pub files: u64,
    /// Bytes of those entries (what unpacking everything would write).
    pub logical_bytes: u64,
    /// Retained generations.
    pub generations: u64,
}

/// How long a connection waits for a lock held by another process.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(60);

/// Bytes of write-ahead log kept between transactions (see
/// [`Catalog::shrink_wal`]).
const WAL_KEEP_BYTES: i64 = 4 << 20;

/// Up to how many names [`Catalog::generation_contents_named`] looks up
/// one by one (each a few microseconds) rather than pass over every file of
/// the generation (tens of milliseconds for the corpus' 100,000 files).
const NAMES_LOOKED_UP_MAX: usize = 4096;

/// How long [`Catalog::shrink_wal`] waits for readers of older snapshots
/// (a mount daemon renews its snapshots within 200 ms).
const SHRINK_WAIT: Duration = Duration::from_secs(1);

/// A package as the catalog records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackageRow {
    /// Catalog id.
    pub id: i64,
    /// App name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Where it came from (e.g. `dir:/path`).
    pub origin: String,
    /// The package identity.
    pub tree_hash: Hash,
    /// Inode id of its root directory.
    pub root: i64,
    /// When it was added (seconds since the epoch).
    pub added: i64,
    /// Number of regular-file entries.
    pub files: i64,
    /// Sum of regular-file sizes over entries.
    pub bytes: i64,
    /// Package metadata as JSON (description, dependencies, licence...).
    pub metadata: String,
    /// The App patterns (`a*,b`) its signer's key was trusted for, when
    /// that grant was restricted to some Apps; `None` when it was added
    /// unrestricted (see [`StagedPackage::restricted_to`]).
    ///
    /// [`StagedPackage::restricted_to`]: crate::commit::StagedPackage::restricted_to
    pub restricted_to: Option<String>,
}

impl PackageRow {
    /// `NAME/VERSION`.
    pub fn spec(&self) -> String {
        format!("{}/{}", self.name, self.version)
    }
}

/// A package within a generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberRow {
    /// The package.
    pub package: PackageRow,
    /// True when this version is the App's `Current`.
    pub current: bool,
}

/// A package of a generation together with its root directory: what a view
/// presenting a generation as `App/Version` trees needs, read in one query
/// ([`Catalog::rooted_members`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootedMember {
    /// The package and whether it is its App's `Current`.
    pub member: MemberRow,
    /// Its root directory inode.
    pub root: InodeRow,
    /// The lowest package id stored under the same App name (its oldest
    /// retained version, in this generation or not): a number that names the
    /// App for as long as that package is kept, whatever the generation.
    pub app_first_package: i64,
}

/// An inode as the catalog records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InodeRow {
    /// Catalog id; stable, the mounted view derives its inode numbers from it.
    pub id: i64,
    /// Owning package id.
    pub package: i64,
    /// Its type.
    pub kind: InodeType,
    /// Permission bits (`& 0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size (files: content length; symlinks: target length; dirs: 0).
    pub size: u64,
    /// Modification time.
    pub mtime: i64,
    /// Link count.
    pub nlink: u32,
    /// Content blob id (files).
    pub blob: Option<i64>,
    /// Content hash (files; `None` from the `*_without_hash` queries).
    pub content: Option<Hash>,
    /// Symlink target.
    pub target: Option<Vec<u8>>,
    /// Extended attributes.
    pub xattrs: Xattrs,
}

/// A directory entry joined with its inode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntryRow {
    /// Entry name.
    pub name: Vec<u8>,
    /// The inode it names.
    pub inode: InodeRow,
}

/// A generation and the size of its package set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenerationRow {
    /// Generation number; the highest is the current one.
    pub id: i64,
    /// Creation time (seconds since the epoch).
    pub created: i64,
    /// What created it (`add hello/2.10`, `rollback to 3`...).
    pub action: String,
    /// For rollback/switch: the generation whose package set it restored.
    pub restores: Option<i64>,
    /// Number of packages in it.
    pub packages: i64,
}

/// A connection to a store's catalog.
pub struct Catalog {
    conn: Connection,
}

/// The columns [`inode_from_row`] reads, with the content hash taken from
/// `blobs b` (`hash`) or left out (`no_hash`: one join fewer).
macro_rules! inode_columns {
    (hash) => {
        "i.id, i.package, i.kind, i.mode, i.uid, i.gid, i.size, i.mtime, i.nlink, i.blob, b.hash, i.target, i.xattrs"
    };
    (no_hash) => {
        "i.id, i.package, i.kind, i.mode, i.uid, i.gid, i.size, i.mtime, i.nlink, i.blob, NULL, i.target, i.xattrs"
    };
}

const INODE_COLUMNS: &str = inode_columns!(hash);

// The queries a mount runs for every name and file, as static strings:
// their statement-cache key needs no formatting per call.
const INODE_SQL: &str = concat!(
    "SELECT ",
    inode_columns!(hash),
    " FROM inodes i LEFT JOIN blobs b ON b.id = i.blob WHERE i.id = ?1"
);
const INODE_NO_HASH_SQL: &str = concat!(
    "SELECT ",
    inode_columns!(no_hash),
    " FROM inodes i WHERE i.id = ?1"
);
const DIR_ENTRIES_SQL: &str = concat!(
    "SELECT d.name, ",
    inode_columns!(hash),
    " FROM dirents d JOIN inodes i ON i.id = d.inode LEFT JOIN blobs b ON b.id = i.blob",
    " WHERE d.dir = ?1 ORDER BY d.name"
);
const DIR_ENTRIES_NO_HASH_SQL: &str = concat!(
    "SELECT d.name, ",
    inode_columns!(no_hash),
    " FROM dirents d JOIN inodes i ON i.id = d.inode WHERE d.dir = ?1 ORDER BY d.name"
);
const LOOKUP_SQL: &str = concat!(
    "SELECT ",
    inode_columns!(hash),
    " FROM dirents d JOIN inodes i ON i.id = d.inode LEFT JOIN blobs b ON b.id = i.blob",
    " WHERE d.dir = ?1 AND d.name = ?2"
);
const LOOKUP_NO_HASH_SQL: &str = concat!(
    "SELECT ",
    inode_columns!(no_hash),
    " FROM dirents d JOIN inodes i ON i.id = d.inode WHERE d.dir = ?1 AND d.name = ?2"
);

fn inode_from_row(r: &Row<'_>, base: usize) -> rusqlite::Result<InodeRow> {
    let content: Option<Vec<u8>> = r.get(base + 10)?;
    let xattrs: Option<Vec<u8>> = r.get(base + 12)?;
    Ok(InodeRow {
        id: r.get(base)?,
        package: r.get(base + 1)?,
        kind: {
            let n: i64 = r.get(base + 2)?;
            InodeType::from_i64(n).ok_or(rusqlite::Error::IntegralValueOutOfRange(base + 2, n))?
        },
        mode: r.get(base + 3)?,
        uid: r.get(base + 4)?,
        gid: r.get(base + 5)?,
        size: r.get::<_, i64>(base + 6)? as u64,
        mtime: r.get(base + 7)?,
        nlink: r.get(base + 8)?,
        blob: r.get(base + 9)?,
        content: content.as_deref().and_then(Hash::from_slice),
        target: r.get(base + 11)?,
        // A malformed xattr blob cannot come from this program; report it as
        // no xattrs rather than failing every stat of the file.
        xattrs: xattrs
            .as_deref()
            .and_then(decode_xattrs)
            .unwrap_or_default(),
    })
}

const PACKAGE_COLUMNS: &str = "p.id, p.name, p.version, p.origin, p.tree_hash, p.root, p.added, \
     p.files, p.bytes, p.metadata, p.restricted_to";
/// How many columns [`PACKAGE_COLUMNS`] selects: the index of the first
/// column a query selects after them.
const PACKAGE_COLUMN_COUNT: usize = 11;

fn package_from_row(r: &Row<'_>) -> rusqlite::Result<PackageRow> {
    let tree_hash: Vec<u8> = r.get(4)?;
    Ok(PackageRow {
        id: r.get(0)?,
        name: r.get(1)?,
        version: r.get(2)?,
        origin: r.get(3)?,
        tree_hash: Hash::from_slice(&tree_hash).unwrap_or(Hash([0; 32])),
        root: r.get(5)?,
        added: r.get(6)?,
        files: r.get(7)?,
        bytes: r.get(8)?,
        metadata: r.get(9)?,
        restricted_to: r.get(10)?,
    })
}

/// Runs `stmt`, a query of a generation's contents (`?1` the generation,
/// `?2` the smallest size; columns blob id, hash, size), and collects
/// its rows.
fn generation_contents(
    stmt: &mut rusqlite::CachedStatement<'_>,
    generation: i64,
    min_size: u64,
) -> Result<Vec<(i64, Hash, u64)>> {
    let min = i64::try_from(min_size).unwrap_or(i64::MAX);
    let rows = stmt.query_map(params![generation, min], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, Vec<u8>>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (blob, hash, size) = row?;
        let hash = Hash::from_slice(&hash)
            .ok_or_else(|| StoreError::Invalid(format!("blob {blob} has a malformed hash")))?;
        out.push((blob, hash, u64::try_from(size).unwrap_or(0)));
    }
    Ok(out)
}

/// Applies the connection settings every catalog connection uses.
fn configure(conn: &Connection) -> Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    conn.pragma_update(None, "cache_size", -32_000)?;
    // The write-ahead log holds every page a transaction writes until the
    // checkpoint after it, so adding many packages grows it to the size of
    // the catalog; without a limit SQLite keeps the file that large for
    // reuse. With one, the next transaction starts a log this small again.
    conn.pragma_update(None, "journal_size_limit", WAL_KEEP_BYTES)?;
    // Room for the multi-row inserts of a commit (`bulk`: a few sizes per
    // table) next to every reader's statements.
    conn.set_prepared_statement_cache_capacity(64);
    // Without the query planner stability guarantee, SQLite (3.47 and later)
    // marks a statement whose plan looked at the value bound to an `= ?`
    // term for re-preparation whenever that value changes: every cached
    // lookup with a new name or inode was parsed and planned again, a fifth
    // of the mount daemon's time under a cold read. Our queries have one
    // right plan whatever the values, so keep it.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    Ok(())
}

impl Catalog {
    /// Checkpoints the write-ahead log into the catalog and truncates it
    /// when a large transaction left it over [`WAL_KEEP_BYTES`], so that a
    /// store at rest takes its catalog's size on disk, not twice it. Waits
    /// at most [`SHRINK_WAIT`] for readers of older snapshots; a log still
    /// in use is left (the next transaction shrinks it). Only an
    /// optimisation: nothing fails when it does not happen.
    pub(crate) fn shrink_wal(&self) {
        let Some(path) = self.conn.path() else {
            return;
        };
        let large =
            std::fs::metadata(format!("{path}-wal")).is_ok_and(|m| m.len() > WAL_KEEP_BYTES as u64);
        if !large {
            return;
        }
        let _ = self.conn.busy_timeout(SHRINK_WAIT);
        if let Err(e) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        {
            tracing::debug!("the catalog's write-ahead log stays as it is: {e}");
        }
        let _ = self.conn.busy_timeout(BUSY_TIMEOUT);
    }

    /// Opens (and if needed creates and migrates) the catalog at `path`.
    /// An upgrade of its schema is shown to `check` first, which may refuse
    /// it (see [`schema::migrate`]).
    pub fn open(path: &Path, create: bool, check: &dyn Fn(&Upgrade) -> Result<()>) -> Result<Self> {
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let mut conn = Connection::open_with_flags(path, flags).map_err(|e| match e {
            rusqlite::Error::SqliteFailure(ref f, _)
                if f.code == rusqlite::ErrorCode::CannotOpen =>
            {
                StoreError::NotAStore {
                    path: path.to_path_buf(),
                    reason: "no catalog.db".into(),
                }
            }
            e => e.into(),
        })?;
        configure(&conn)?;
        schema::migrate(&mut conn, check)?;
        Ok(Catalog { conn })
    }

    /// Opens the catalog at `path`, which must exist at this build's
    /// schema version (or a newer one that readers of this version still
    /// read, see [`schema::readable`]), read-only: for the connections of a reader, which
    /// must not take the write lock a migration check needs (the store was
    /// opened, and migrated, once before). Read-only, so that a daemon that
    /// confines itself later holds no descriptor that could write the
    /// catalog; SQLite still opens the WAL index (`-shm`) for writing where
    /// it may, so a confined daemon reopens its connections where it may
    /// not.
    pub fn open_existing(path: &Path) -> Result<Self> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)?;
        configure(&conn)?;
        // Sorts and temporary b-trees stay in memory: SQLite spills a large
        // one (a generation's contents, ordered) to a temporary file, which
        // a confined daemon may not create.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        schema::readable(&conn, version)?;
        Ok(Catalog { conn })
    }

    /// Caps this connection's private page cache at `kib` KiB. Long-lived
    /// readers that keep several connections (the mount daemon) use a small
    /// cache each: the kernel's page cache already holds the catalog file,
    /// and a 32 MB cache per connection would multiply the daemon's memory.
    pub fn limit_page_cache(&self, kib: u32) -> Result<()> {
        self.conn
            .pragma_update(None, "cache_size", -i64::from(kib))?;
        Ok(())
    }

    /// Starts a read transaction: the queries that follow see one snapshot
    /// of the catalog and skip the locking and change checks SQLite does
    /// around every query run on its own, until [`Catalog::end_read`].
    /// A long-lived reader (the mount daemon) keeps one open across many
    /// small queries, and ends it to see newer commits.
    pub fn begin_read(&self) -> Result<()> {
        self.conn.execute_batch("BEGIN DEFERRED")?;
        Ok(())
    }

    /// Ends the transaction [`Catalog::begin_read`] started, if one is open.
    pub fn end_read(&self) -> Result<()> {
        if !self.conn.is_autocommit() {
            self.conn.execute_batch("COMMIT")?;
        }
        Ok(())
    }

    /// The underlying connection, for modules of this crate that run their own
    /// statements (ingest commit, gc, verify).
    pub(crate) fn conn(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// Reads a `meta` value.
    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        writes::meta(&self.conn, key)
    }

    /// Writes a `meta` value.
    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        writes::set_meta(&self.conn, key, value)
    }

    /// The number naming this catalog's id space (FUSE inode generation
    /// numbers): set once, when the catalog got never-reused ids.
    pub fn store_incarnation(&self) -> Result<u64> {
        Ok(self
            .meta("incarnation")?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    /// True when inode id `id` was handed out by this catalog (whether or
    /// not the inode still exists): ids are never reused, so an id at or
    /// below the highest ever issued names a file that existed.
    pub fn inode_id_issued(&self, id: i64) -> Result<bool> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT seq FROM sqlite_sequence WHERE name = 'inodes'")?;
        let highest: Option<i64> = stmt.query_row([], |r| r.get(0)).optional()?;
        Ok(id > 0 && highest.is_some_and(|h| id <= h))
    }

    /// The current generation: the highest-numbered one, if any.
    pub fn current_generation(&self) -> Result<Option<i64>> {
        Ok(self
            .conn
            .query_row("SELECT max(id) FROM generations", [], |r| r.get(0))?)
    }

    /// One generation, if it exists.
    pub fn generation(&self, id: i64) -> Result<Option<GenerationRow>> {
        Ok(self
            .conn
            .query_row(
                "SELECT g.id, g.created, g.action, g.restores,
                        (SELECT count(*) FROM generation_packages gp WHERE gp.generation = g.id)
                 FROM generations g WHERE g.id = ?1",
                [id],
                |r| {
                    Ok(GenerationRow {
                        id: r.get(0)?,
                        created: r.get(1)?,
                        action: r.get(2)?,
                        restores: r.get(3)?,
                        packages: r.get(4)?,
                    })
                },
            )
            .optional()?)
    }

    /// All retained generations, oldest first.
    pub fn generations(&self) -> Result<Vec<GenerationRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT g.id, g.created, g.action, g.restores, count(gp.package)
             FROM generations g LEFT JOIN generation_packages gp ON gp.generation = g.id
             GROUP BY g.id ORDER BY g.id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(GenerationRow {
                id: r.get(0)?,
                created: r.get(1)?,
                action: r.get(2)?,
                restores: r.get(3)?,
                packages: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The packages of generation `id`, sorted by name then version.
    pub fn members(&self, generation: i64) -> Result<Vec<MemberRow>> {
        let sql = format!(
            "SELECT {PACKAGE_COLUMNS}, gp.current FROM generation_packages gp
             JOIN packages p ON p.id = gp.package
             WHERE gp.generation = ?1 ORDER BY p.name, p.version"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map([generation], |r| {
            Ok(MemberRow {
                package: package_from_row(r)?,
                current: r.get(PACKAGE_COLUMN_COUNT)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The packages of the current generation (empty before the first add).
    pub fn current_members(&self) -> Result<Vec<MemberRow>> {
        match self.current_generation()? {
            Some(g) => self.members(g),
            None => Ok(Vec::new()),
        }
    }

    /// The packages of generation `id` with their root directory inodes, sorted
    /// by name then version, in one query.
    pub fn rooted_members(&self, generation: i64) -> Result<Vec<RootedMember>> {
        let sql = format!(
            "SELECT {PACKAGE_COLUMNS}, gp.current,
                    (SELECT min(q.id) FROM packages q WHERE q.name = p.name),
                    {INODE_COLUMNS}
             FROM generation_packages gp
             JOIN packages p ON p.id = gp.package
             JOIN inodes i ON i.id = p.root LEFT JOIN blobs b ON b.id = i.blob
             WHERE gp.generation = ?1 ORDER BY p.name, p.version"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map([generation], |r| {
            Ok(RootedMember {
                member: MemberRow {
                    package: package_from_row(r)?,
                    current: r.get(PACKAGE_COLUMN_COUNT)?,
                },
                app_first_package: r.get(PACKAGE_COLUMN_COUNT + 1)?,
                root: inode_from_row(r, PACKAGE_COLUMN_COUNT + 2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// A stored package by name and version, whether or not any generation
    /// still includes it.
    pub fn package(&self, name: &str, version: &str) -> Result<Option<PackageRow>> {
        let sql = format!(
            "SELECT {PACKAGE_COLUMNS} FROM packages p WHERE p.name = ?1 AND p.version = ?2"
        );
        Ok(self
            .conn
            .query_row(&sql, params![name, version], package_from_row)
            .optional()?)
    }

    /// Every stored package, in catalog order.
    pub fn all_packages(&self) -> Result<Vec<PackageRow>> {
        let sql = format!("SELECT {PACKAGE_COLUMNS} FROM packages p ORDER BY p.id");
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map([], package_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Every stored version of App `name`, whether or not any generation
    /// still includes it (a profile build reuses one that fits).
    pub fn packages_named(&self, name: &str) -> Result<Vec<PackageRow>> {
        let sql =
            format!("SELECT {PACKAGE_COLUMNS} FROM packages p WHERE p.name = ?1 ORDER BY p.id");
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(params![name], package_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// One inode.
    pub fn inode(&self, id: i64) -> Result<Option<InodeRow>> {
        self.inode_by(INODE_SQL, id)
    }

    /// One inode without its content hash ([`InodeRow::content`] is `None`;
    /// [`Catalog::blob_hash`] has it): one join fewer, for readers that
    /// look up every inode and rarely need the hash (the mount).
    pub fn inode_without_hash(&self, id: i64) -> Result<Option<InodeRow>> {
        self.inode_by(INODE_NO_HASH_SQL, id)
    }

    fn inode_by(&self, sql: &str, id: i64) -> Result<Option<InodeRow>> {
        // Cached: the mount asks for inodes one by one, often.
        let mut stmt = self.conn.prepare_cached(sql)?;
        Ok(stmt.query_row([id], |r| inode_from_row(r, 0)).optional()?)
    }

    /// Stored package `package` rebuilt as the tree that was committed
    /// (see [`PackageTree`]); [`StoreError::CatalogDamaged`] when its rows
    /// do not form one.
    pub fn package_tree(&self, package: &PackageRow) -> Result<PackageTree> {
        trees::package_tree(&self.conn, package.id, package.root)
    }

    /// The whole listing of directory `dir`, sorted by name, in one query.
    pub fn dir_entries(&self, dir: i64) -> Result<Vec<DirEntryRow>> {
        self.dir_entries_by(DIR_ENTRIES_SQL, dir)
    }

    /// [`Catalog::dir_entries`] without content hashes (see
    /// [`Catalog::inode_without_hash`]).
    pub fn dir_entries_without_hash(&self, dir: i64) -> Result<Vec<DirEntryRow>> {
        self.dir_entries_by(DIR_ENTRIES_NO_HASH_SQL, dir)
    }

    fn dir_entries_by(&self, sql: &str, dir: i64) -> Result<Vec<DirEntryRow>> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let rows = stmt.query_map([dir], |r| {
            Ok(DirEntryRow {
                name: r.get(0)?,
                inode: inode_from_row(r, 1)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Looks up one name in a directory.
    pub fn lookup(&self, dir: i64, name: &[u8]) -> Result<Option<InodeRow>> {
        self.lookup_by(LOOKUP_SQL, dir, name)
    }

    /// [`Catalog::lookup`] without the content hash (see
    /// [`Catalog::inode_without_hash`]).
    pub fn lookup_without_hash(&self, dir: i64, name: &[u8]) -> Result<Option<InodeRow>> {
        self.lookup_by(LOOKUP_NO_HASH_SQL, dir, name)
    }

    fn lookup_by(&self, sql: &str, dir: i64, name: &[u8]) -> Result<Option<InodeRow>> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        Ok(stmt
            .query_row(params![dir, name], |r| inode_from_row(r, 0))
            .optional()?)
    }

    /// The contents named in `names` of at least `min_size` bytes that
    /// files of generation `generation` hold, in no order, each at least
    /// once: (blob id, hash, size). A few names (the usual decoded copies
    /// of large files) are looked up one by one, which costs a fraction of
    /// a pass over every file of the generation; many, by that pass.
    pub fn generation_contents_named(
        &self,
        generation: i64,
        min_size: u64,
        names: &HashSet<Hash>,
    ) -> Result<Vec<(i64, Hash, u64)>> {
        self.generation_contents_named_by(generation, min_size, names, NAMES_LOOKED_UP_MAX)
    }

    /// [`Catalog::generation_contents_named`], looking names up one by
    /// one when there are at most `lookups_max` of them.
    pub(crate) fn generation_contents_named_by(
        &self,
        generation: i64,
        min_size: u64,
        names: &HashSet<Hash>,
        lookups_max: usize,
    ) -> Result<Vec<(i64, Hash, u64)>> {
        let min = i64::try_from(min_size).unwrap_or(i64::MAX);
        if names.len() <= lookups_max {
            let mut stmt = self.conn.prepare_cached(
                "SELECT b.id, b.size FROM blobs b \
                 WHERE b.hash = ?1 AND b.size >= ?2 AND EXISTS (\
                   SELECT 1 FROM inodes i JOIN generation_packages gp \
                   ON gp.package = i.package AND gp.generation = ?3 WHERE i.blob = b.id)",
            )?;
            let mut out = Vec::new();
            for hash in names {
                let row = stmt
                    .query_row(params![hash.as_bytes(), min, generation], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
                    })
                    .optional()?;
                if let Some((blob, size)) = row {
                    out.push((blob, *hash, u64::try_from(size).unwrap_or(0)));
                }
            }
            return Ok(out);
        }
        // Neither DISTINCT nor ORDER BY: a sort of every content of a
        // generation costs more than the rows themselves.
        let mut stmt = self.conn.prepare_cached(
            "SELECT b.id, b.hash, b.size FROM generation_packages gp \
             JOIN inodes i ON i.package = gp.package \
             JOIN blobs b ON b.id = i.blob \
             WHERE gp.generation = ?1 AND b.size >= ?2",
        )?;
        let mut contents = generation_contents(&mut stmt, generation, min_size)?;
        contents.retain(|(_, hash, _)| names.contains(hash));
        Ok(contents)
    }

    /// The contents of at least `min_size` bytes of the files of generation
    /// `generation`, each once, in the order of their first chunks in the
    /// packs (contents side by side in a block come one after the other):
    /// (blob id, hash, size). Empty contents, which have no chunk, are
    /// never among them.
    pub fn generation_blobs_at_least(
        &self,
        generation: i64,
        min_size: u64,
    ) -> Result<Vec<(i64, Hash, u64)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT DISTINCT b.id, b.hash, b.size FROM generation_packages gp \
             JOIN inodes i ON i.package = gp.package \
             JOIN blobs b ON b.id = i.blob \
             JOIN blob_chunks bc ON bc.blob = b.id AND bc.seq = 0 \
             JOIN chunks c ON c.id = bc.chunk \
             WHERE gp.generation = ?1 AND b.size >= ?2 \
             ORDER BY c.pack, c.offset, c.inner",
        )?;
        generation_contents(&mut stmt, generation, min_size)
    }

    /// The hashes of every stored non-empty content.
    pub fn blob_hashes(&self) -> Result<Vec<Hash>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT hash FROM blobs WHERE size > 0")?;
        let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
        let mut out = Vec::new();
        for row in rows {
            if let Some(hash) = Hash::from_slice(&row?) {
                out.push(hash);
            }
        }
        Ok(out)
    }

    /// The content hash of blob `blob`, if it exists.
    pub fn blob_hash(&self, blob: i64) -> Result<Option<Hash>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT hash FROM blobs WHERE id = ?1")?;
        let hash: Option<Vec<u8>> = stmt.query_row([blob], |r| r.get(0)).optional()?;
        Ok(hash.as_deref().and_then(Hash::from_slice))
    }

    /// The directory holding `inode`, if a directory entry names it (package
    /// roots have none). Directories have exactly one name, so this is their
    /// parent; for a hard-linked file it is one of its directories.
    pub fn parent_dir(&self, inode: i64) -> Result<Option<i64>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT dir FROM dirents WHERE inode = ?1 ORDER BY dir LIMIT 1")?;
        Ok(stmt.query_row([inode], |r| r.get(0)).optional()?)
    }

    /// Where each chunk of blob `blob` lives, in content order.
    pub fn blob_chunks(&self, blob: i64) -> Result<Vec<ChunkLocation>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT c.hash, p.name, c.offset, c.block_len, c.inner, c.len
             FROM blob_chunks bc JOIN chunks c ON c.id = bc.chunk JOIN packs p ON p.id = c.pack
             WHERE bc.blob = ?1 ORDER BY bc.seq",
        )?;
        let rows = stmt.query_map([blob], location_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Where the chunks of every file directly in directory `dir` live, as
    /// (blob, location) pairs grouped by blob, each in content order: one
    /// query for what [`Catalog::blob_chunks`] takes one query per file for.
    pub fn dir_blob_chunks(&self, dir: i64) -> Result<Vec<(i64, ChunkLocation)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT c.hash, p.name, c.offset, c.block_len, c.inner, c.len, bc.blob
             FROM blob_chunks bc JOIN chunks c ON c.id = bc.chunk JOIN packs p ON p.id = c.pack
             WHERE bc.blob IN (SELECT i.blob FROM dirents d JOIN inodes i ON i.id = d.inode
                               WHERE d.dir = ?1 AND i.blob IS NOT NULL)
             ORDER BY bc.blob, bc.seq",
        )?;
        let rows = stmt.query_map([dir], |r| Ok((r.get::<_, i64>(6)?, location_from_row(r)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// True when a chunk with this hash is indexed in one of the store's
    /// own packs. A chunk known only on a remote counts as absent, so that
    /// an import stores it here: what is added locally never depends on a
    /// remote (the commit then moves the chunk's location to the new pack).
    pub fn has_chunk(&self, hash: &Hash) -> Result<bool> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT 1 FROM chunks c JOIN packs p ON p.id = c.pack
             WHERE c.hash = ?1 AND p.remote IS NULL",
        )?;
        Ok(stmt.exists([hash.as_bytes()])?)
    }

    /// Runs SQLite's own consistency check of the catalog file.
    pub fn integrity_check(&self) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare("PRAGMA integrity_check")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        let problems: Vec<String> = rows
            .collect::<rusqlite::Result<Vec<_>>>()?
            .into_iter()
            .filter(|s| s != "ok")
            .collect();
        Ok(problems)
    }
}

/// A pinned generation: never collected by gc until unpinned.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PinRow {
    /// The generation.
    pub generation: i64,
    /// When it was pinned (seconds since the epoch).
    pub pinned: i64,
}

// Queries for administration: pins, gc's epoch, meta keys by prefix, the
// stored size of a generation.
impl Catalog {
    /// Every pin, by generation.
    pub fn pins(&self) -> Result<Vec<PinRow>> {
        let mut stmt = self
            .conn
            .prepare("SELECT generation, pinned FROM pins ORDER BY generation")?;
        let rows = stmt.query_map([], |r| {
            Ok(PinRow {
                generation: r.get(0)?,
                pinned: r.get(1)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Row counts and byte totals of the whole catalog, for `nip stats`
    /// (`catalog_bytes` left 0: the files are the store's).
    pub fn stats(&self) -> Result<Stats> {
        let conn = &self.conn;
        let (packs, stored_bytes): (i64, i64) = conn.query_row(
            "SELECT count(*), coalesce(sum(size), 0) FROM packs",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let (chunks, chunk_raw_bytes, chunk_stored_bytes): (i64, i64, i64) = conn.query_row(
            "SELECT count(*), coalesce(sum(len), 0),
                    (SELECT coalesce(sum(block_len), 0)
                     FROM (SELECT DISTINCT pack, offset, block_len FROM chunks))
             FROM chunks",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        let (blobs, blob_bytes): (i64, i64) = conn.query_row(
            "SELECT count(*), coalesce(sum(size), 0) FROM blobs",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let (packages, logical_bytes, files): (i64, i64, i64) = conn.query_row(
            "SELECT count(*), coalesce(sum(bytes), 0), coalesce(sum(files), 0) FROM packages",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        let generations: i64 =
            conn.query_row("SELECT count(*) FROM generations", [], |r| r.get(0))?;
        let n = |v: i64| v.max(0) as u64;
        Ok(Stats {
            packs: n(packs),
            catalog_bytes: 0,
            stored_bytes: n(stored_bytes),
            chunks: n(chunks),
            chunk_raw_bytes: n(chunk_raw_bytes),
            chunk_stored_bytes: n(chunk_stored_bytes),
            blobs: n(blobs),
            blob_bytes: n(blob_bytes),
            packages: n(packages),
            files: n(files),
            logical_bytes: n(logical_bytes),
            generations: n(generations),
        })
    }

    /// The retained generation just before `id`, if any.
    pub fn previous_generation(&self, id: i64) -> Result<Option<i64>> {
        Ok(self
            .conn
            .query_row("SELECT max(id) FROM generations WHERE id < ?1", [id], |r| {
                r.get(0)
            })?)
    }

    /// The `gc_epoch` meta value: bumped by every gc that deleted catalog
    /// rows or packs (0 in a store gc never changed).
    pub fn gc_epoch(&self) -> Result<i64> {
        Ok(self
            .meta(crate::gc::GC_EPOCH_KEY)?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    /// Every `meta` key starting with `prefix`, with its value, by key.
    pub fn meta_with_prefix(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        let mut stmt = self.conn.prepare(
            "SELECT key, value FROM meta WHERE substr(key, 1, length(?1)) = ?1 ORDER BY key",
        )?;
        let rows = stmt.query_map([prefix], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The pack bytes that the distinct chunks of generation `generation`
    /// occupy: each chunk counts for its share of its block's stored length
    /// (header and table included), in proportion to its raw length among
    /// the indexed chunks of that block. Shared chunks count once.
    pub fn generation_stored_bytes(&self, generation: i64) -> Result<u64> {
        let bytes: f64 = self.conn.query_row(
            "WITH used(chunk) AS (
                 SELECT DISTINCT bc.chunk FROM generation_packages gp
                 JOIN inodes i ON i.package = gp.package AND i.blob IS NOT NULL
                 JOIN blob_chunks bc ON bc.blob = i.blob
                 WHERE gp.generation = ?1),
             located AS (
                 SELECT c.pack, c.offset, c.block_len, c.len FROM used u JOIN chunks c ON c.id = u.chunk),
             blocks AS (
                 SELECT c.pack, c.offset, sum(c.len) AS raw FROM chunks c
                 WHERE c.pack IN (SELECT DISTINCT pack FROM located)
                 GROUP BY c.pack, c.offset)
             SELECT coalesce(sum(CAST(l.len AS REAL) * l.block_len / max(b.raw, 1)), 0)
             FROM located l JOIN blocks b ON b.pack = l.pack AND b.offset = l.offset",
            [generation],
            |r| r.get(0),
        )?;
        Ok(bytes.round() as u64)
    }
}

/// Decodes a `chunks` row joined with its pack name.
pub(crate) fn location_from_row(r: &Row<'_>) -> rusqlite::Result<ChunkLocation> {
    let hash: Vec<u8> = r.get(0)?;
    Ok(ChunkLocation {
        // A malformed hash reads as zeros and then fails verification with a
        // clear "damaged" error instead of a panic.
        hash: Hash::from_slice(&hash).unwrap_or(Hash([0; 32])),
        pack: r.get::<_, String>(1)?.into(),
        offset: r.get::<_, i64>(2)? as u64,
        block_len: r.get(3)?,
        inner: r.get(4)?,
        len: r.get(5)?,
    })
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    use crate::store::{AddDir, AddOptions, NoProgress, Store};

    fn add(store: &mut Store, dir: &std::path::Path, name: &str, version: &str) {
        let d = AddDir {
            path: dir.to_path_buf(),
            name: name.into(),
            version: version.into(),
        };
        store
            .add_dirs(&[d], AddOptions::default(), &NoProgress)
            .unwrap();
    }

    #[test]
    fn rooted_members_name_apps_by_their_first_package() {
        let tmp = tempfile::tempdir().unwrap();
        let (one, two, other) = (
            tmp.path().join("one"),
            tmp.path().join("two"),
            tmp.path().join("other"),
        );
        for (d, content) in [(&one, "1"), (&two, "2"), (&other, "x")] {
            fs::create_dir_all(d.join("sub")).unwrap();
            fs::write(d.join("sub/file"), content).unwrap();
        }
        fs::set_permissions(&two, fs::Permissions::from_mode(0o750)).unwrap();
        let mut store = Store::init(&tmp.path().join("store")).unwrap();
        add(&mut store, &one, "hello", "1");
        add(&mut store, &other, "jq", "1.6");
        add(&mut store, &two, "hello", "2");
        let catalog = store.catalog();
        let generation = catalog.current_generation().unwrap().unwrap();
        let rooted = catalog.rooted_members(generation).unwrap();
        let summary: Vec<(String, String, bool)> = rooted
            .iter()
            .map(|r| {
                let p = &r.member.package;
                (p.name.clone(), p.version.clone(), r.member.current)
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("hello".into(), "1".into(), false),
                ("hello".into(), "2".into(), true),
                ("jq".into(), "1.6".into(), true),
            ]
        );
        let hello1 = rooted[0].member.package.id;
        assert_eq!(rooted[0].app_first_package, hello1);
        assert_eq!(rooted[1].app_first_package, hello1);
        assert_eq!(
            rooted[2].app_first_package, rooted[2].member.package.id,
            "jq is named by its own first package"
        );
        for r in &rooted {
            assert_eq!(r.root.id, r.member.package.root);
            assert_eq!(r.root.kind, crate::tree::InodeType::Dir);
        }
        assert_eq!(rooted[1].root.mode, 0o750);
        // The first generation still shows only hello/1.
        let first = catalog.rooted_members(generation - 2).unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].app_first_package, hello1);
    }

    #[test]
    fn parent_dir_walks_up_to_the_package_root() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir_all(src.join("a/b")).unwrap();
        fs::write(src.join("a/b/f"), "f").unwrap();
        let mut store = Store::init(&tmp.path().join("store")).unwrap();
        add(&mut store, &src, "p", "1");
        let package = store.installed("p/1").unwrap();
        let file = store.resolve(&package, b"a/b/f").unwrap();
        let b = store.resolve(&package, b"a/b").unwrap();
        let a = store.resolve(&package, b"a").unwrap();
        let catalog = store.catalog();
        assert_eq!(catalog.parent_dir(file.id).unwrap(), Some(b.id));
        assert_eq!(catalog.parent_dir(b.id).unwrap(), Some(a.id));
        assert_eq!(catalog.parent_dir(a.id).unwrap(), Some(package.root));
        assert_eq!(catalog.parent_dir(package.root).unwrap(), None);
    }
}

#[cfg(test)]
mod wal_tests {
    use super::*;

    fn wal_len(dir: &Path) -> u64 {
        std::fs::metadata(dir.join("catalog.db-wal")).map_or(0, |m| m.len())
    }

    #[test]
    fn a_large_transaction_leaves_no_large_log_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.db");
        let catalog = Catalog::open(&path, true, &|_| Ok(())).unwrap();
        // Another connection that stays open, as a mount daemon's would:
        // then closing the writer does not remove the log.
        let reader = Connection::open(&path).unwrap();
        let _: i64 = reader
            .query_row("SELECT count(*) FROM meta", [], |r| r.get(0))
            .unwrap();
        let tx = catalog.conn.unchecked_transaction().unwrap();
        let value = "x".repeat(4096);
        for i in 0..3000 {
            tx.execute(
                "INSERT INTO meta(key, value) VALUES (?1, ?2)",
                (format!("k{i}"), &value),
            )
            .unwrap();
        }
        tx.commit().unwrap();
        assert!(
            wal_len(dir.path()) > WAL_KEEP_BYTES as u64,
            "the test wrote too little"
        );
        catalog.shrink_wal();
        assert!(
            wal_len(dir.path()) <= WAL_KEEP_BYTES as u64,
            "the log is still {} bytes",
            wal_len(dir.path())
        );
        let rows: i64 = reader
            .query_row("SELECT count(*) FROM meta WHERE key LIKE 'k%'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(rows, 3000);
    }
}
