//! Catalog schema and its migrations (FORMAT.md, "Catalog").
//!
//! `PRAGMA user_version` holds the schema version. Each migration runs in one
//! transaction together with the version bump, so a crash leaves the catalog
//! at either the old or the new version, never in between.
//!
//! Readers (the mount daemon, the virtio-fs server) run for months across
//! upgrades of the software on disk. The `meta` key `oldest_reader` names the
//! oldest schema version whose readers can still read the catalog: a step
//! that only adds what old readers never query (or drops an index) keeps
//! it, any other step raises it to its own version. A reader reads a
//! catalog newer than itself when that key allows it, and an upgrade that
//! would leave a running reader unable to open connections is refused
//! before it starts (see [`Upgrade`]).

use rusqlite::Connection;

use crate::error::{Result, StoreError};

/// The `meta` key naming the oldest schema version whose readers can read
/// the catalog.
pub const OLDEST_READER_KEY: &str = "oldest_reader";

/// One step of the schema.
struct Migration {
    /// Run in the step's transaction.
    sql: &'static str,
    /// Whether a reader built for the version before this step still reads
    /// the catalog correctly after it.
    keeps_readers: bool,
}

/// Migrations in order; `MIGRATIONS[i]` takes the schema from version `i` to
/// `i + 1`.
const MIGRATIONS: &[Migration] = &[
    // v1: the initial schema.
    Migration {
        keeps_readers: false,
        sql: r#"
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
    },
    // v2: catalog ids are never reused. Without AUTOINCREMENT, SQLite
    // hands out max(id)+1 again once gc deleted the highest rows, and
    // readers that name files by id (the mount's inode numbers, its caches,
    // VM guests) would meet another package's file under an old number.
    // Tables are rebuilt with AUTOINCREMENT (SQLite cannot add it in
    // place); copying the rows sets each table's sequence to its highest
    // id. `incarnation` names this catalog's id space for FUSE's inode
    // generation numbers.
    Migration {
        keeps_readers: false,
        sql: r#"
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
    },
    // v3: pins, and the grace window for package and blob rows (gc condemns
    // them as it does chunks). New tables only, so this migration does not
    // depend on any other.
    Migration {
        keeps_readers: true,
        sql: r#"
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
    },
    // v4: remotes. A pack whose `remote` is set is not in `packs/`: it is
    // the object `packs/NAME` of that remote (a generation pulled from it),
    // read by range. `chunks_by_block` finds the chunks of one block, which
    // a fetched block is verified against.
    Migration {
        keeps_readers: false,
        sql: r#"
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
    },
    // v5: packs may hold blocks of format v2 (framed, codec 2). Nothing to
    // convert (v1 blocks are still read); the version itself keeps builds
    // that know only v1 blocks from reading this store, where they would
    // take every new block for damage.
    Migration {
        keeps_readers: false,
        sql: r#"
    INSERT OR REPLACE INTO meta(key, value) VALUES ('block_format', '2');
    "#,
    },
    // v6: `chunks_by_block` (pack, offset) answers every query by pack
    // alone as well, so `chunks_by_pack` only cost a fourth B-tree insert
    // per new chunk (ingest, pull, repack) and its pages on disk.
    Migration {
        keeps_readers: true,
        sql: r#"
    DROP INDEX chunks_by_pack;
    "#,
    },
    // v7: `packages.restricted_to`, the App patterns the package's signer
    // was trusted for when that grant was restricted to some Apps (NULL:
    // added unrestricted). The Index ranks restricted packages after every
    // unrestricted one, so that a key trusted for `acme-*` cannot take
    // `bin/ls` from `coreutils`. Readers of v6 never select the column;
    // rows from before this step are NULL: their grant was not recorded.
    Migration {
        keeps_readers: true,
        sql: r#"
    ALTER TABLE packages ADD COLUMN restricted_to TEXT;
    "#,
    },
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// A schema upgrade about to start, as shown to the check that may refuse
/// it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Upgrade {
    /// The catalog's version now.
    pub from: i64,
    /// The version it will have ([`SCHEMA_VERSION`]).
    pub to: i64,
    /// The oldest version whose readers will still read it then.
    pub oldest_reader: i64,
}

impl Upgrade {
    /// Whether a reader built for schema `reader` reads the catalog after
    /// this upgrade. `None` is a reader of a build that predates
    /// `oldest_reader`: it reads only the version it was built for.
    pub fn keeps_reader(&self, reader: Option<i64>) -> bool {
        match reader {
            Some(r) => r == self.to || (r < self.to && self.oldest_reader <= r),
            None => false,
        }
    }
}

/// The oldest version whose readers read a catalog at `version`, as
/// recorded (a catalog upgraded before the key existed: `version` itself).
fn oldest_reader(conn: &Connection, version: i64) -> Result<i64> {
    if version == 0 {
        return Ok(0);
    }
    Ok(super::writes::meta(conn, OLDEST_READER_KEY)?
        .and_then(|v| v.parse::<i64>().ok())
        .filter(|&v| (0..=version).contains(&v))
        .unwrap_or(version))
}

/// What the oldest reader will be once a catalog at `version` whose oldest
/// reader is `oldest` is brought to [`SCHEMA_VERSION`].
fn oldest_reader_after(version: i64, oldest: i64) -> i64 {
    (version..SCHEMA_VERSION).fold(oldest, |oldest, step| {
        if MIGRATIONS[step as usize].keeps_readers {
            oldest
        } else {
            step + 1
        }
    })
}

/// Whether this build reads a catalog at `version` (read by a reader that
/// never migrates): its own version, or a newer one whose every step since
/// keeps readers of this build.
pub fn readable(conn: &Connection, version: i64) -> Result<()> {
    if version == SCHEMA_VERSION
        || (version > SCHEMA_VERSION && oldest_reader(conn, version)? <= SCHEMA_VERSION)
    {
        return Ok(());
    }
    Err(StoreError::SchemaMismatch {
        found: version,
        expected: SCHEMA_VERSION,
    })
}

/// Brings the catalog up to [`SCHEMA_VERSION`]. Before the first step,
/// `check` is shown the whole upgrade, inside the transaction that holds
/// the catalog's write lock, and may refuse it (running readers it would
/// break): nothing is changed then.
pub fn migrate(conn: &mut Connection, check: &dyn Fn(&Upgrade) -> Result<()>) -> Result<()> {
    let mut checked = false;
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
        let oldest = oldest_reader(&tx, version)?;
        if !checked {
            // A new catalog (version 0) has no readers.
            if version > 0 {
                check(&Upgrade {
                    from: version,
                    to: SCHEMA_VERSION,
                    oldest_reader: oldest_reader_after(version, oldest),
                })?;
            }
            checked = true;
        }
        let step = &MIGRATIONS[version as usize];
        tx.execute_batch(step.sql)?;
        let oldest = if step.keeps_readers {
            oldest
        } else {
            version + 1
        };
        super::writes::set_meta(&tx, OLDEST_READER_KEY, &oldest.to_string())?;
        tx.pragma_update(None, "user_version", version + 1)?;
        tx.commit()?;
    }
}

#[cfg(test)]
pub(crate) fn migrate_to(conn: &mut Connection, target: i64) -> Result<()> {
    for version in 0..target {
        let tx = conn.transaction()?;
        tx.execute_batch(MIGRATIONS[version as usize].sql)?;
        tx.pragma_update(None, "user_version", version + 1)?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::catalog::Catalog;
    use crate::runtime::{self, RuntimeRoot, Served, ServedKind};

    /// A catalog in `store` last written by a build of schema `version`.
    fn catalog_at(store: &Path, version: i64) -> std::path::PathBuf {
        let path = store.join("catalog.db");
        let mut conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        migrate_to(&mut conn, version).unwrap();
        path
    }

    fn version_of(path: &Path) -> i64 {
        Connection::open(path)
            .unwrap()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap()
    }

    /// A running mount daemon whose build reads `schema` (`None`: a build
    /// from before records said so), as its runtime record shows it.
    fn reader(store: &Path, schema: Option<i64>) -> RuntimeRoot {
        let served = Served {
            kind: ServedKind::Mount,
            target: "/Programs".into(),
            generations: vec![1],
            packages: Vec::new(),
            decoded_from: 0,
        };
        let root = RuntimeRoot::register(store, served).unwrap();
        let path = root.record_path();
        let mut record: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        match schema {
            Some(s) => record["schema"] = s.into(),
            None => {
                record.as_object_mut().unwrap().remove("schema");
            }
        }
        std::fs::write(&path, serde_json::to_vec(&record).unwrap()).unwrap();
        root
    }

    fn open(path: &Path, excused: &[u32]) -> Result<Catalog> {
        let store = path.parent().unwrap();
        Catalog::open(path, false, &|u| runtime::check_upgrade(store, u, excused))
    }

    #[test]
    fn an_upgrade_that_would_strand_a_running_reader_is_refused_and_changes_nothing() {
        let store = tempfile::tempdir().unwrap();
        let path = catalog_at(store.path(), SCHEMA_VERSION - 2);
        let daemon = reader(store.path(), None);

        match open(&path, &[]) {
            Err(StoreError::UpgradeStrandsReaders { from, to, readers }) => {
                assert_eq!((from, to), (SCHEMA_VERSION - 2, SCHEMA_VERSION));
                assert_eq!(readers.len(), 1);
                assert_eq!(readers[0].pid, Some(std::process::id()));
                assert_eq!(readers[0].target.as_deref(), Some(Path::new("/Programs")));
            }
            other => panic!("expected the upgrade refused, got {:?}", other.err()),
        }
        assert_eq!(version_of(&path), SCHEMA_VERSION - 2);

        // Once the reader is gone (or replaced), the upgrade goes ahead.
        drop(daemon);
        open(&path, &[]).unwrap();
        assert_eq!(version_of(&path), SCHEMA_VERSION);
    }

    #[test]
    fn a_takeover_excuses_the_daemon_it_replaces_and_no_other() {
        let store = tempfile::tempdir().unwrap();
        let path = catalog_at(store.path(), SCHEMA_VERSION - 1);
        let _daemon = reader(store.path(), None);
        let me = std::process::id();

        // Another reader with the same pid cannot be told apart here, so
        // excusing the wrong pid must still refuse.
        assert!(matches!(
            open(&path, &[me + 1]),
            Err(StoreError::UpgradeStrandsReaders { .. })
        ));
        open(&path, &[me]).unwrap();
        assert_eq!(version_of(&path), SCHEMA_VERSION);
    }

    #[test]
    fn readers_of_the_last_version_keep_reading_through_steps_that_keep_them() {
        // The last step (adding a column they never select) keeps
        // readers: a daemon built for the version before it does not stop
        // the upgrade, and reads the result.
        assert!(MIGRATIONS[(SCHEMA_VERSION - 1) as usize].keeps_readers);
        let store = tempfile::tempdir().unwrap();
        let path = catalog_at(store.path(), SCHEMA_VERSION - 1);
        let _daemon = reader(store.path(), Some(SCHEMA_VERSION - 1));
        let catalog = open(&path, &[]).unwrap();
        assert_eq!(version_of(&path), SCHEMA_VERSION);
        assert_eq!(
            catalog.meta(OLDEST_READER_KEY).unwrap().as_deref(),
            Some((SCHEMA_VERSION - 1).to_string().as_str())
        );

        // A step that does not keep them (v5's block format) does stop it.
        let store = tempfile::tempdir().unwrap();
        let path = catalog_at(store.path(), 4);
        let _daemon = reader(store.path(), Some(4));
        assert!(matches!(
            open(&path, &[]),
            Err(StoreError::UpgradeStrandsReaders { .. })
        ));
        assert_eq!(version_of(&path), 4);
    }

    #[test]
    fn a_reader_reads_a_newer_catalog_only_where_the_writer_says_it_may() {
        let store = tempfile::tempdir().unwrap();
        let path = catalog_at(store.path(), SCHEMA_VERSION);
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        let set_oldest = |v: i64| {
            conn.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES (?1, ?2)",
                rusqlite::params![OLDEST_READER_KEY, v.to_string()],
            )
            .unwrap();
        };

        set_oldest(SCHEMA_VERSION);
        Catalog::open_existing(&path).unwrap();

        set_oldest(SCHEMA_VERSION + 1);
        assert!(matches!(
            Catalog::open_existing(&path),
            Err(StoreError::SchemaMismatch { .. })
        ));
        // Nonsense in the key counts as "only its own version".
        conn.execute(
            "UPDATE meta SET value = 'x' WHERE key = ?1",
            [OLDEST_READER_KEY],
        )
        .unwrap();
        assert!(Catalog::open_existing(&path).is_err());
        // Writers never write a catalog newer than themselves.
        assert!(matches!(
            open(&path, &[]),
            Err(StoreError::SchemaTooNew { .. })
        ));
    }

    #[test]
    fn packages_stored_before_v7_read_as_unrestricted_and_v6_queries_still_work() {
        let store = tempfile::tempdir().unwrap();
        let path = catalog_at(store.path(), 6);
        Connection::open(&path)
            .unwrap()
            .execute(
                "INSERT INTO packages(name, version, origin, tree_hash, root, added, files, bytes)
                 VALUES ('old', '1', 'npk:/old.npk', x'00', 1, 0, 0, 0)",
                [],
            )
            .unwrap();
        let catalog = open(&path, &[]).unwrap();
        assert_eq!(version_of(&path), 7);
        let row = catalog.package("old", "1").unwrap().unwrap();
        assert_eq!(row.restricted_to, None, "its grant was never recorded");
        // What a v6 reader selects, by name, still reads.
        let origin: String = Connection::open(&path)
            .unwrap()
            .query_row(
                "SELECT p.id, p.name, p.version, p.origin, p.tree_hash, p.root, p.added, p.files,
                        p.bytes, p.metadata FROM packages p WHERE p.name = 'old'",
                [],
                |r| r.get(3),
            )
            .unwrap();
        assert_eq!(origin, "npk:/old.npk");
    }

    #[test]
    fn a_new_catalog_records_who_may_read_it() {
        let store = tempfile::tempdir().unwrap();
        let path = store.path().join("catalog.db");
        let catalog =
            Catalog::open(&path, true, &|u| panic!("no upgrade to check: {u:?}")).unwrap();
        // v5 (block format 2) is the last step that changed what readers
        // must understand.
        assert_eq!(
            catalog.meta(OLDEST_READER_KEY).unwrap().as_deref(),
            Some("5")
        );
    }
}
