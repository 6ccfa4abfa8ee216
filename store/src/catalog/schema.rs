//! Catalog schema and its migrations (FORMAT.md, "Catalog").
//!
//! `PRAGMA user_version` holds the schema version. Each migration runs in one
//! transaction together with the version bump, so a crash leaves the catalog
//! at either the old or the new version, never in between.

use rusqlite::Connection;

use crate::error::{Result, StoreError};

/// Migrations in order; `MIGRATIONS[i]` takes the schema from version `i` to
/// `i + 1`.
const MIGRATIONS: &[&str] = &[
    // v1: the initial schema.
    r#"
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) STRICT;

    CREATE TABLE packs (
        id   INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        size INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE chunks (
        id         INTEGER PRIMARY KEY,
        hash       BLOB NOT NULL UNIQUE,
        pack       INTEGER NOT NULL REFERENCES packs(id),
        offset     INTEGER NOT NULL,
        block_len  INTEGER NOT NULL,
        inner      INTEGER NOT NULL,
        len        INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX chunks_by_pack ON chunks(pack);

    CREATE TABLE blobs (
        id   INTEGER PRIMARY KEY,
        hash BLOB NOT NULL UNIQUE,
        size INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE blob_chunks (
        blob  INTEGER NOT NULL,
        seq   INTEGER NOT NULL,
        chunk INTEGER NOT NULL,
        PRIMARY KEY (blob, seq)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX blob_chunks_by_chunk ON blob_chunks(chunk);

    CREATE TABLE packages (
        id        INTEGER PRIMARY KEY,
        name      TEXT NOT NULL,
        version   TEXT NOT NULL,
        origin    TEXT NOT NULL,
        tree_hash BLOB NOT NULL,
        root      INTEGER NOT NULL,
        added     INTEGER NOT NULL,
        files     INTEGER NOT NULL,
        bytes     INTEGER NOT NULL,
        metadata  TEXT NOT NULL DEFAULT '{}',
        UNIQUE (name, version)
    ) STRICT;

    CREATE TABLE inodes (
        id      INTEGER PRIMARY KEY,
        package INTEGER NOT NULL,
        kind    INTEGER NOT NULL,
        mode    INTEGER NOT NULL,
        uid     INTEGER NOT NULL,
        gid     INTEGER NOT NULL,
        size    INTEGER NOT NULL,
        mtime   INTEGER NOT NULL,
        nlink   INTEGER NOT NULL,
        blob    INTEGER,
        target  BLOB,
        xattrs  BLOB
    ) STRICT;
    CREATE INDEX inodes_by_package ON inodes(package);
    CREATE INDEX inodes_by_blob ON inodes(blob) WHERE blob IS NOT NULL;

    CREATE TABLE dirents (
        dir   INTEGER NOT NULL,
        name  BLOB NOT NULL,
        inode INTEGER NOT NULL,
        PRIMARY KEY (dir, name)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX dirents_by_inode ON dirents(inode);

    CREATE TABLE generations (
        id       INTEGER PRIMARY KEY,
        created  INTEGER NOT NULL,
        action   TEXT NOT NULL,
        restores INTEGER
    ) STRICT;

    CREATE TABLE generation_packages (
        generation INTEGER NOT NULL,
        package    INTEGER NOT NULL,
        current    INTEGER NOT NULL,
        PRIMARY KEY (generation, package)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX generation_packages_by_package ON generation_packages(package);

    CREATE TABLE gc_condemned (
        chunk INTEGER PRIMARY KEY,
        since INTEGER NOT NULL
    ) STRICT;
    "#,
    // v2: catalog ids are never reused. Without AUTOINCREMENT, SQLite
    // hands out max(id)+1 again once gc deleted the highest rows, and
    // readers that name files by id (the mount's inode numbers, its caches,
    // VM guests) would meet another package's file under an old number.
    // Tables are rebuilt with AUTOINCREMENT (SQLite cannot add it in
    // place); copying the rows sets each table's sequence to its highest
    // id. `incarnation` names this catalog's id space for FUSE's inode
    // generation numbers.
    r#"
    CREATE TABLE packs_v2 (
        id   INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE,
        size INTEGER NOT NULL
    ) STRICT;
    INSERT INTO packs_v2 SELECT id, name, size FROM packs;
    DROP TABLE packs;
    ALTER TABLE packs_v2 RENAME TO packs;

    CREATE TABLE chunks_v2 (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        hash       BLOB NOT NULL UNIQUE,
        pack       INTEGER NOT NULL REFERENCES packs(id),
        offset     INTEGER NOT NULL,
        block_len  INTEGER NOT NULL,
        inner      INTEGER NOT NULL,
        len        INTEGER NOT NULL
    ) STRICT;
    INSERT INTO chunks_v2 SELECT id, hash, pack, offset, block_len, inner, len FROM chunks;
    DROP TABLE chunks;
    ALTER TABLE chunks_v2 RENAME TO chunks;
    CREATE INDEX chunks_by_pack ON chunks(pack);

    CREATE TABLE blobs_v2 (
        id   INTEGER PRIMARY KEY AUTOINCREMENT,
        hash BLOB NOT NULL UNIQUE,
        size INTEGER NOT NULL
    ) STRICT;
    INSERT INTO blobs_v2 SELECT id, hash, size FROM blobs;
    DROP TABLE blobs;
    ALTER TABLE blobs_v2 RENAME TO blobs;

    CREATE TABLE packages_v2 (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        name      TEXT NOT NULL,
        version   TEXT NOT NULL,
        origin    TEXT NOT NULL,
        tree_hash BLOB NOT NULL,
        root      INTEGER NOT NULL,
        added     INTEGER NOT NULL,
        files     INTEGER NOT NULL,
        bytes     INTEGER NOT NULL,
        metadata  TEXT NOT NULL DEFAULT '{}',
        UNIQUE (name, version)
    ) STRICT;
    INSERT INTO packages_v2 SELECT id, name, version, origin, tree_hash, root, added, files,
        bytes, metadata FROM packages;
    DROP TABLE packages;
    ALTER TABLE packages_v2 RENAME TO packages;

    CREATE TABLE inodes_v2 (
        id      INTEGER PRIMARY KEY AUTOINCREMENT,
        package INTEGER NOT NULL,
        kind    INTEGER NOT NULL,
        mode    INTEGER NOT NULL,
        uid     INTEGER NOT NULL,
        gid     INTEGER NOT NULL,
        size    INTEGER NOT NULL,
        mtime   INTEGER NOT NULL,
        nlink   INTEGER NOT NULL,
        blob    INTEGER,
        target  BLOB,
        xattrs  BLOB
    ) STRICT;
    INSERT INTO inodes_v2 SELECT id, package, kind, mode, uid, gid, size, mtime, nlink, blob,
        target, xattrs FROM inodes;
    DROP TABLE inodes;
    ALTER TABLE inodes_v2 RENAME TO inodes;
    CREATE INDEX inodes_by_package ON inodes(package);
    CREATE INDEX inodes_by_blob ON inodes(blob) WHERE blob IS NOT NULL;

    CREATE TABLE generations_v2 (
        id       INTEGER PRIMARY KEY AUTOINCREMENT,
        created  INTEGER NOT NULL,
        action   TEXT NOT NULL,
        restores INTEGER
    ) STRICT;
    INSERT INTO generations_v2 SELECT id, created, action, restores FROM generations;
    DROP TABLE generations;
    ALTER TABLE generations_v2 RENAME TO generations;

    INSERT OR IGNORE INTO meta(key, value) VALUES ('incarnation', abs(random() % 4294967296));
    "#,
    // v3: pins, and the grace window for package and blob rows (gc condemns
    // them as it does chunks). New tables only, so this migration does not
    // depend on any other.
    r#"
    CREATE TABLE pins (
        generation INTEGER PRIMARY KEY,
        pinned     INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE gc_condemned_packages (
        package INTEGER PRIMARY KEY,
        since   INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE gc_condemned_blobs (
        blob  INTEGER PRIMARY KEY,
        since INTEGER NOT NULL
    ) STRICT;

    INSERT OR IGNORE INTO meta(key, value) VALUES ('gc_epoch', '0');
    "#,
    // v4: remotes. A pack whose `remote` is set is not in `packs/`: it is
    // the object `packs/NAME` of that remote (a generation pulled from it),
    // read by range. `chunks_by_block` finds the chunks of one block, which
    // a fetched block is verified against.
    r#"
    CREATE TABLE remotes (
        id       INTEGER PRIMARY KEY AUTOINCREMENT,
        name     TEXT NOT NULL UNIQUE,
        url      TEXT NOT NULL,
        endpoint TEXT,
        region   TEXT,
        domain   TEXT NOT NULL,
        added    INTEGER NOT NULL
    ) STRICT;
    ALTER TABLE packs ADD COLUMN remote INTEGER REFERENCES remotes(id);
    CREATE INDEX chunks_by_block ON chunks(pack, offset);
    "#,
    // v5: packs may hold blocks of format v2 (framed, codec 2). Nothing to
    // convert (v1 blocks are still read); the version itself keeps builds
    // that know only v1 blocks from reading this store, where they would
    // take every new block for damage.
    r#"
    INSERT OR REPLACE INTO meta(key, value) VALUES ('block_format', '2');
    "#,
    // v6: `chunks_by_block` (pack, offset) answers every query by pack
    // alone as well, so `chunks_by_pack` only cost a fourth B-tree insert
    // per new chunk (ingest, pull, repack) and its pages on disk.
    r#"
    DROP INDEX chunks_by_pack;
    "#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the catalog up to [`SCHEMA_VERSION`].
pub fn migrate(conn: &mut Connection) -> Result<()> {
    loop {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        if version == SCHEMA_VERSION {
            return Ok(());
        }
        tx.execute_batch(MIGRATIONS[version as usize])?;
        tx.pragma_update(None, "user_version", version + 1)?;
        tx.commit()?;
    }
}
