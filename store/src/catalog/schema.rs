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
    // Pins, and the grace window for package and blob rows (gc condemns
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
