//! The one transaction that makes new packages visible: it indexes the packs
//! and chunks written by the content pipeline, records blobs, packages with
//! their inodes and directory entries, and a new generation.
//!
//! Durability rule (FORMAT.md, "Durability"): every pack referenced here was
//! fsynced, and the packs directory too, before this transaction begins; the
//! transaction itself commits with `synchronous = FULL`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use crate::catalog::Catalog;
use crate::error::{Result, StoreError};
use crate::generations::{self, Member};
use crate::hash::Hash;
use crate::ingest::{ContentBatch, FileContent};
use crate::pack::SealedPack;
use crate::tree::{InodeKind, InodeType, Tree, encode_xattrs};

/// A package whose content has been ingested and which is ready to commit.
pub struct StagedPackage {
    /// App name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Origin description (`dir:/abs/path`, later `deb:...`).
    pub origin: String,
    /// JSON metadata.
    pub metadata: String,
    /// The tree with every file's content hash filled in.
    pub tree: Tree,
}

/// What a commit did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitOutcome {
    /// The new generation, or `None` when nothing changed (every package was
    /// already installed with an identical tree).
    pub generation: Option<i64>,
    /// `NAME/VERSION` of packages newly stored.
    pub added: Vec<String>,
    /// `NAME/VERSION` of packages that were already stored identically.
    pub unchanged: Vec<String>,
}

/// How a commit forms the new generation's package set, and what must hold
/// for it to happen.
#[derive(Clone, Debug, Default)]
pub enum Membership {
    /// The live set plus the staged packages, each becoming its App's
    /// `Current` (`nip add`).
    #[default]
    Add,
    /// Exactly the staged packages (importing a system image, building a
    /// profile): whatever was live before is not in the new generation.
    Exactly(ExactSet),
    /// The inner membership, committed only if every precondition holds
    /// (built by [`Membership::with_precondition`]).
    Checked(Box<Membership>, Vec<Precondition>),
}

impl Membership {
    /// This membership, committed only if `precondition` holds too.
    pub fn with_precondition(self, precondition: Precondition) -> Membership {
        match self {
            Membership::Checked(inner, mut list) => {
                list.push(precondition);
                Membership::Checked(inner, list)
            }
            other => Membership::Checked(Box::new(other), vec![precondition]),
        }
    }

    /// The exact set, if the membership is one, and every precondition.
    fn parts(&self) -> (Option<&ExactSet>, Vec<&Precondition>) {
        match self {
            Membership::Add => (None, Vec::new()),
            Membership::Exactly(set) => (Some(set), Vec::new()),
            Membership::Checked(inner, list) => {
                let (set, mut all) = inner.parts();
                all.extend(list);
                (set, all)
            }
        }
    }
}

/// The package set of [`Membership::Exactly`].
#[derive(Clone, Debug, Default)]
pub struct ExactSet {
    /// `NAME/VERSION` of the staged packages that are their App's `Current`
    /// (an App with none listed gets its highest version by package order).
    pub current: Vec<String>,
    /// The history line, e.g. `switch to image hello.img`.
    pub action: String,
}

/// A rule a commit must satisfy, written by the crate whose policy it is
/// (image replay counters in `npk`, no older `Current` in `graft`) so that
/// the store knows none of them. It runs inside the commit's transaction,
/// once the new generation's members are known and before anything is
/// visible: what it reads cannot change before the commit, and what it
/// records (`meta` rows) lands with the generation or not at all. An
/// error — [`StoreError::Refused`] for a refusal — rolls the commit back.
#[derive(Clone)]
pub struct Precondition {
    what: String,
    check: Arc<CheckFn>,
}

/// The check a [`Precondition`] runs.
type CheckFn = dyn Fn(&mut PendingCommit<'_>) -> Result<()> + Send + Sync;

impl Precondition {
    /// A precondition named `what` (for logs) that runs `check`.
    pub fn new(
        what: impl Into<String>,
        check: impl Fn(&mut PendingCommit<'_>) -> Result<()> + Send + Sync + 'static,
    ) -> Self {
        Precondition {
            what: what.into(),
            check: Arc::new(check),
        }
    }
}

impl std::fmt::Debug for Precondition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Precondition").field(&self.what).finish()
    }
}

/// What a [`Precondition`] sees of a commit in progress, and may record.
pub struct PendingCommit<'a> {
    conn: &'a Connection,
    before: &'a [Member],
    after: &'a [Member],
    recorded: bool,
}

/// An App whose `Current` version the commit changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CurrentChange {
    /// The App.
    pub app: String,
    /// Its `Current` version in the live generation, if it had one.
    pub from: Option<String>,
    /// Its `Current` version in the new generation, if it keeps one.
    pub to: Option<String>,
}

impl PendingCommit<'_> {
    /// The catalog's `meta` value of `key`, as of this transaction.
    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    /// Sets `meta` `key` to `value` as part of the commit (kept even when
    /// the commit makes no new generation).
    pub fn set_meta(&mut self, key: &str, value: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO meta(key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        self.recorded = true;
        Ok(())
    }

    /// Every App whose `Current` version differs between the live
    /// generation and the one being committed, by App name.
    pub fn current_changes(&self) -> Result<Vec<CurrentChange>> {
        let mut apps: BTreeMap<&str, (Option<i64>, Option<i64>)> = BTreeMap::new();
        for m in self.before.iter().filter(|m| m.current) {
            apps.entry(&m.name).or_default().0 = Some(m.package);
        }
        for m in self.after.iter().filter(|m| m.current) {
            apps.entry(&m.name).or_default().1 = Some(m.package);
        }
        let mut version = self
            .conn
            .prepare_cached("SELECT version FROM packages WHERE id = ?1")?;
        let mut changes = Vec::new();
        for (app, (from, to)) in apps {
            if from == to {
                continue;
            }
            let mut name = |id: Option<i64>| -> Result<Option<String>> {
                id.map(|id| version.query_row([id], |r| r.get(0)))
                    .transpose()
                    .map_err(StoreError::from)
            };
            changes.push(CurrentChange {
                app: app.to_string(),
                from: name(from)?,
                to: name(to)?,
            });
        }
        Ok(changes)
    }
}

/// Commits `packages` and the content `batch` in one transaction; the new
/// generation's members follow `membership`.
pub fn commit_with(
    catalog: &mut Catalog,
    packages: &[StagedPackage],
    batch: &ContentBatch,
    membership: &Membership,
) -> Result<CommitOutcome> {
    let tx = catalog
        .conn()
        .transaction_with_behavior(TransactionBehavior::Immediate)?;
    let chunk_ids = index_chunks(&tx, batch)?;
    let mut blob_ids = HashMap::new();
    let mut missing = 0usize;
    for content in crate::ingest::distinct_contents(&batch.files).into_values() {
        match insert_blob(&tx, content, &chunk_ids)? {
            Ok(id) => {
                blob_ids.insert(content.hash, id);
            }
            Err(n) => missing += n,
        }
    }
    if missing > 0 {
        // Dropping the transaction rolls it back: nothing of this add lands.
        return Err(StoreError::ConcurrentGc(missing));
    }

    let previous = generations::current_in(&tx)?;
    let before = generations::members_of(&tx, previous)?;
    let (exact, preconditions) = membership.parts();
    let mut members: Vec<Member> = if exact.is_some() {
        Vec::new()
    } else {
        before.clone()
    };
    let mut ids: HashMap<String, i64> = HashMap::new();
    let mut outcome = CommitOutcome {
        generation: None,
        added: Vec::new(),
        unchanged: Vec::new(),
    };
    for staged in packages {
        let spec = format!("{}/{}", staged.name, staged.version);
        let tree_hash = staged.tree.tree_hash();
        let existing: Option<(i64, Vec<u8>)> = tx
            .query_row(
                "SELECT id, tree_hash FROM packages WHERE name = ?1 AND version = ?2",
                params![staged.name, staged.version],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let package_id = match existing {
            Some((id, stored)) if stored == tree_hash.as_bytes() => {
                if before.iter().any(|m| m.package == id) {
                    outcome.unchanged.push(spec.clone());
                    if exact.is_none() {
                        continue;
                    }
                }
                id
            }
            Some((_, stored)) => {
                return Err(StoreError::VersionConflict {
                    name: staged.name.clone(),
                    version: staged.version.clone(),
                    existing: Hash::from_slice(&stored).unwrap_or(Hash([0; 32])),
                });
            }
            None => insert_package(&tx, staged, tree_hash, &blob_ids)?,
        };
        members = generations::with_added(members, package_id, &staged.name);
        ids.insert(spec.clone(), package_id);
        if !outcome.unchanged.contains(&spec) {
            outcome.added.push(spec);
        }
    }
    if let Some(set) = exact {
        apply_current(&mut members, &ids, &set.current)?;
    }
    let mut pending = PendingCommit {
        conn: &tx,
        before: &before,
        after: &members,
        recorded: false,
    };
    for precondition in preconditions {
        tracing::debug!("checking {}", precondition.what);
        (precondition.check)(&mut pending)?;
    }
    let recorded = pending.recorded;
    if generations::same_state(&before, &members) {
        // Nothing to show: keep the catalog as it was (packs written by this
        // run hold only chunks that are now unreferenced; gc reclaims them).
        // What a precondition recorded (an image counter seen) is kept.
        if recorded {
            tx.commit()?;
        }
        return Ok(outcome);
    }
    let action = match exact {
        Some(set) => set.action.clone(),
        None => format!("add {}", outcome.added.join(" ")),
    };
    outcome.generation = Some(generations::create(&tx, &action, None, &members)?);
    tx.commit()?;
    Ok(outcome)
}

/// Sets the `Current` flags of an exact set: each listed version is its
/// App's `Current`; an App with none listed keeps the one staged last (as
/// `with_added` left it).
fn apply_current(
    members: &mut [Member],
    ids: &HashMap<String, i64>,
    current: &[String],
) -> Result<()> {
    for spec in current {
        let id = *ids.get(spec).ok_or_else(|| {
            StoreError::Invalid(format!(
                "{spec} is named Current but is not in the package set"
            ))
        })?;
        let name = members
            .iter()
            .find(|m| m.package == id)
            .map(|m| m.name.clone())
            .unwrap_or_default();
        for m in members.iter_mut().filter(|m| m.name == name) {
            m.current = m.package == id;
        }
    }
    Ok(())
}

/// Indexes the packs and chunks this run wrote; returns hash -> chunk id for
/// every chunk the batch references (written or reused) that exists now.
fn index_chunks(tx: &Transaction<'_>, batch: &ContentBatch) -> Result<HashMap<Hash, i64>> {
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
fn insert_blob(
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
fn insert_package(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;

    /// An empty package `name/version` (a root directory, its mtime telling
    /// versions apart).
    fn package(name: &str, version: &str, mtime: i64) -> StagedPackage {
        StagedPackage {
            name: name.into(),
            version: version.into(),
            origin: "test".into(),
            metadata: "{}".into(),
            tree: Tree::with_root(0o755, 0, 0, mtime, Vec::new()),
        }
    }

    fn add(store: &mut Store, p: StagedPackage, membership: &Membership) -> Result<CommitOutcome> {
        store.commit_batch(&[p], &ContentBatch::default(), membership)
    }

    #[derive(Debug, thiserror::Error)]
    #[error("no {0} today")]
    struct NotToday(String);

    #[test]
    fn a_precondition_sees_the_current_changes_and_can_refuse_the_commit() {
        let d = tempfile::tempdir().unwrap();
        let mut store = Store::init(d.path()).unwrap();
        add(&mut store, package("a", "2", 2), &Membership::Add).unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        let refuse_a = Precondition::new("no a", move |pending| {
            let changes = pending.current_changes()?;
            log.lock().unwrap().extend(changes.clone());
            if changes.iter().any(|c| c.app == "a") {
                return Err(StoreError::Refused(Box::new(NotToday("a".into()))));
            }
            pending.set_meta("seen", "yes")
        });
        let guarded = Membership::Add.with_precondition(refuse_a);
        let before = store.catalog().current_generation().unwrap();
        let refused = add(&mut store, package("a", "1", 1), &guarded);
        assert!(
            matches!(&refused, Err(StoreError::Refused(e)) if e.downcast_ref::<NotToday>().is_some()),
            "{refused:?}"
        );
        assert_eq!(
            seen.lock().unwrap()[..],
            [CurrentChange {
                app: "a".into(),
                from: Some("2".into()),
                to: Some("1".into()),
            }]
        );
        // Refused: no generation, no package, no meta.
        assert_eq!(store.catalog().current_generation().unwrap(), before);
        assert!(store.catalog().package("a", "1").unwrap().is_none());
        assert_eq!(store.catalog().meta("seen").unwrap(), None);
        // Another App passes, and what the precondition recorded lands.
        add(&mut store, package("b", "1", 1), &guarded).unwrap();
        assert_eq!(
            store.catalog().meta("seen").unwrap().as_deref(),
            Some("yes")
        );
        assert_eq!(
            seen.lock().unwrap().last(),
            Some(&CurrentChange {
                app: "b".into(),
                from: None,
                to: Some("1".into()),
            })
        );
    }

    #[test]
    fn what_a_precondition_records_lands_even_without_a_new_generation() {
        let d = tempfile::tempdir().unwrap();
        let mut store = Store::init(d.path()).unwrap();
        add(&mut store, package("a", "1", 1), &Membership::Add).unwrap();
        let record = Precondition::new("record", |pending| pending.set_meta("k", "v"));
        let outcome = add(
            &mut store,
            package("a", "1", 1),
            &Membership::Add.with_precondition(record),
        )
        .unwrap();
        assert_eq!(outcome.generation, None, "nothing changed");
        assert_eq!(store.catalog().meta("k").unwrap().as_deref(), Some("v"));
    }
}
