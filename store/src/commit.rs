//! The one transaction that makes new packages visible: it indexes the packs
//! and chunks written by the content pipeline, records blobs, packages with
//! their inodes and directory entries, and a new generation.
//!
//! Durability rule (FORMAT.md, "Durability"): every pack referenced here was
//! fsynced, and the packs directory too, before this transaction begins; the
//! transaction itself commits with `synchronous = FULL`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use rusqlite::{Connection, TransactionBehavior};

use crate::catalog::{Catalog, writes};
use crate::error::{Result, StoreError};
use crate::generations::{self, Member};
use crate::hash::Hash;
use crate::ingest::ContentBatch;
use crate::tree::Tree;

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
    /// The App patterns (`a*,b`) its signer's key is trusted for, when that
    /// grant is restricted to some Apps (a `.npk` signed by a key trusted
    /// only for them, `--apps`), or as an image or a pulled generation
    /// states it (whose keys vouch for a whole system, restricted packages
    /// included); `None` when it is added unrestricted: by root from a
    /// directory or an unsigned format, signed by a key trusted for every
    /// App, unrestricted in an image or a pulled generation. The Index
    /// ranks restricted packages after every unrestricted one
    /// (`nexus_fs::index`).
    pub restricted_to: Option<String>,
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
    /// Whose word decides the restriction of a package the store holds
    /// already.
    pub restrictions: Restrictions,
}

/// Whose word decides the restriction (`packages.restricted_to`) of a
/// package the store holds already (same name, version and tree) when it
/// is staged again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Restrictions {
    /// The most trusted grant it was ever added under stands: an
    /// unrestricted add lifts a restriction, a restricted one never sets
    /// one (`nip add`, profile builds: a restricted signer takes nothing
    /// from what root or a key of every App vouched for).
    #[default]
    MostTrusted,
    /// As the staged packages state, either way: the set is a whole system
    /// its signer vouches for (an image switched to, a generation pulled),
    /// whose key decides every package's rank, so each ranks here as in
    /// the store that wrote it. A stored package it marks restricted is
    /// restricted from then on, even one that an image or pull of a build
    /// before restrictions travelled (FORMAT.md, section 8) stored
    /// unrestricted: that is what lets the fix reach hosts the attack
    /// already reached.
    AsStated,
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
        writes::meta(self.conn, key)
    }

    /// Sets `meta` `key` to `value` as part of the commit (kept even when
    /// the commit makes no new generation).
    pub fn set_meta(&mut self, key: &str, value: &str) -> Result<()> {
        writes::set_meta(self.conn, key, value)?;
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
        let mut changes = Vec::new();
        for (app, (from, to)) in apps {
            if from == to {
                continue;
            }
            let name = |id: Option<i64>| -> Result<Option<String>> {
                id.map(|id| writes::package_version(self.conn, id))
                    .transpose()
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

/// A staged package's tree hash, and whether the store holds a package of
/// its name and version with that tree.
struct Standing {
    tree_hash: Hash,
    stored: bool,
}

impl Standing {
    /// Of each of `packages`, as the transaction `conn` sees the store.
    fn of(conn: &Connection, packages: &[StagedPackage]) -> Result<Vec<Standing>> {
        packages
            .iter()
            .map(|p| {
                let tree_hash = p.tree.tree_hash();
                let existing = writes::package_by_spec(conn, &p.name, &p.version)?;
                Ok(Standing {
                    stored: existing.is_some_and(|(_, hash)| hash == tree_hash.as_bytes()),
                    tree_hash,
                })
            })
            .collect()
    }
}

/// The contents of the staged packages not stored yet with the same tree:
/// the rows the commit must find or add. A package stored already has
/// every row it needs, so a pull of a generation that changes a few of its
/// packages costs what they hold, not what the generation holds.
fn contents_of_new(packages: &[StagedPackage], standing: &[Standing]) -> HashSet<Hash> {
    let mut needed = HashSet::new();
    for (staged, _) in packages.iter().zip(standing).filter(|(_, s)| !s.stored) {
        for inode in &staged.tree.inodes {
            if let crate::tree::InodeKind::File {
                content: Some(hash),
                ..
            } = &inode.kind
            {
                needed.insert(*hash);
            }
        }
    }
    needed
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
    let standing = Standing::of(&tx, packages)?;
    let needed = contents_of_new(packages, &standing);
    let contents: Vec<_> = crate::ingest::distinct_contents(&batch.files)
        .into_values()
        .filter(|c| needed.contains(&c.hash))
        .collect();
    // A pull's batch locates every chunk of the generation; only those of
    // the contents it adds are indexed. A local batch's chunks were
    // written to this store's packs for it, and are all indexed.
    let chunk_ids = match batch.remote {
        Some(_) => {
            let chunks: HashSet<Hash> = contents
                .iter()
                .flat_map(|c| c.chunks.iter().map(|(h, _)| *h))
                .collect();
            writes::index_chunks(&tx, batch, Some(&chunks))?
        }
        None => writes::index_chunks(&tx, batch, None)?,
    };
    let blob_ids = match writes::insert_blobs(&tx, &contents, &chunk_ids)? {
        Ok(ids) => ids,
        // Dropping the transaction rolls it back: nothing of this add lands.
        Err(missing) => return Err(StoreError::ConcurrentGc(missing)),
    };

    let previous = generations::current_in(&tx)?;
    let before = generations::members_of(&tx, previous)?;
    let (exact, preconditions) = membership.parts();
    let mut members: Vec<Member> = if exact.is_some() {
        Vec::new()
    } else {
        before.clone()
    };
    let mut ids: HashMap<String, i64> = HashMap::new();
    let restrictions = exact.map_or(Restrictions::MostTrusted, |set| set.restrictions);
    // Whether a stored package's restriction changed (lifted, or set as
    // an image states it), and whether one unrestricted until now is
    // restricted.
    let mut remarked = false;
    let mut narrowed = false;
    let mut outcome = CommitOutcome {
        generation: None,
        added: Vec::new(),
        unchanged: Vec::new(),
    };
    for (staged, Standing { tree_hash, .. }) in packages.iter().zip(standing) {
        let spec = format!("{}/{}", staged.name, staged.version);
        // Asked again: a package earlier in this batch may be the same.
        let existing = writes::package_by_spec(&tx, &staged.name, &staged.version)?;
        let package_id = match existing {
            Some((id, stored)) if stored == tree_hash.as_bytes() => {
                // The same content, now vouched for unrestricted: the
                // most trusted grant it was ever added under stands, with
                // that add's origin and metadata (a restricted signer's
                // claimed version never speaks for it then). Kept even
                // when no generation follows; a mount sees it from its
                // next generation on (until then it ranks the package
                // lower, never higher, than it now may).
                match (&staged.restricted_to, restrictions) {
                    (None, _) => {
                        if writes::mark_unrestricted(&tx, id, &staged.origin, &staged.metadata)? {
                            tracing::info!("{spec}: added unrestricted now, no longer restricted");
                            remarked = true;
                        }
                    }
                    (Some(apps), Restrictions::AsStated) => {
                        match writes::mark_restricted(&tx, id, apps)? {
                            writes::Marked::Unchanged => {}
                            writes::Marked::Changed => remarked = true,
                            writes::Marked::Narrowed => {
                                tracing::info!(
                                    "{spec}: restricted to Apps {apps} now, as the set states"
                                );
                                remarked = true;
                                narrowed = true;
                            }
                        }
                    }
                    (Some(_), Restrictions::MostTrusted) => {}
                }
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
            None => writes::insert_package(&tx, staged, tree_hash, &blob_ids)?,
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
    let recorded = pending.recorded || remarked;
    // A package restricted now must rank lower at once: mounts load a
    // package's rank with a generation, so one that was unrestricted
    // makes a new generation even of the same packages. (A lifted
    // restriction can wait for the next one: until then it ranks lower,
    // never higher, than it may.)
    if !narrowed && generations::same_state(&before, &members) {
        // Nothing to show: keep the catalog as it was (packs written by this
        // run hold only chunks that are now unreferenced; gc reclaims them).
        // What a precondition recorded (an image counter seen) is kept, and
        // so is a package's widened grant.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;
    use crate::ingest::FileContent;
    use crate::pack::ChunkLocation;

    /// An empty package `name/version` (a root directory, its mtime telling
    /// versions apart).
    fn package(name: &str, version: &str, mtime: i64) -> StagedPackage {
        StagedPackage {
            name: name.into(),
            version: version.into(),
            origin: "test".into(),
            metadata: "{}".into(),
            tree: Tree::with_root(0o755, 0, 0, mtime, Vec::new()),
            restricted_to: None,
        }
    }

    fn add(store: &mut Store, p: StagedPackage, membership: &Membership) -> Result<CommitOutcome> {
        store.commit_batch(&[p], &ContentBatch::default(), membership)
    }

    /// A package `name/1` holding one file of one chunk, as a remote's
    /// metadata describes it: the file's content, and where its chunk is.
    fn remote_package(name: &str, pack: &str) -> (StagedPackage, FileContent, ChunkLocation) {
        let bytes = format!("the one file of {name}");
        let (content, chunk) = (Hash::of(bytes.as_bytes()), Hash::of(name.as_bytes()));
        let mut tree = Tree::with_root(0o755, 0, 0, 1, Vec::new());
        let file = tree.push_inode(crate::tree::Inode {
            kind: crate::tree::InodeKind::File {
                size: bytes.len() as u64,
                content: Some(content),
            },
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 1,
            xattrs: Vec::new(),
        });
        tree.push_entry(0, b"file".to_vec(), file);
        let len = bytes.len() as u32;
        (
            StagedPackage {
                tree,
                ..package(name, "1", 1)
            },
            FileContent {
                hash: content,
                size: len.into(),
                chunks: vec![(chunk, len)],
            },
            ChunkLocation {
                hash: chunk,
                pack: pack.into(),
                offset: 8,
                block_len: 100,
                inner: 0,
                len,
            },
        )
    }

    /// A new store with one remote, `origin`.
    fn store_with_remote() -> (tempfile::TempDir, Store, crate::catalog::RemoteRow) {
        let d = tempfile::tempdir().unwrap();
        let store = Store::init(d.path()).unwrap();
        let remote = store
            .catalog()
            .add_remote(&crate::catalog::NewRemote {
                name: "origin".into(),
                url: "file:///nowhere".into(),
                endpoint: None,
                region: None,
                domain: "test".into(),
            })
            .unwrap();
        (d, store, remote)
    }

    /// Three pack names.
    fn pack_names() -> [String; 3] {
        ["1", "2", "3"].map(|d| format!("{}.pack", d.repeat(32)))
    }

    /// A sealed pack of 1000 bytes named `name`.
    fn sealed(name: &str) -> crate::pack::SealedPack {
        crate::pack::SealedPack {
            name: name.into(),
            size: 1000,
        }
    }

    /// A pull that changes one package of a generation writes the rows of
    /// that package alone: what the store holds for the packages it has
    /// is neither looked up nor rewritten, whatever the batch says of them
    /// (here: their chunk in a pack the batch does not even list), and a
    /// pack holding only their chunks is not indexed.
    #[test]
    fn a_pull_writes_no_content_rows_of_the_packages_it_has() {
        let (_d, mut store, remote) = store_with_remote();
        let [p1, p2, p3] = pack_names();
        let system = |current: &[&str]| {
            Membership::Exactly(ExactSet {
                current: current.iter().map(|s| s.to_string()).collect(),
                action: "pull".into(),
                restrictions: Restrictions::AsStated,
            })
        };
        let (a, a_content, a_chunk) = remote_package("a", &p1);
        let first = ContentBatch {
            files: vec![a_content.clone()],
            packs: vec![sealed(&p1)],
            written: vec![a_chunk.clone()],
            reused: Default::default(),
            remote: Some(remote.id),
            replaced: Default::default(),
        };
        store.commit_batch(&[a], &first, &system(&["a/1"])).unwrap();

        let (a, _, _) = remote_package("a", &p1);
        let (b, b_content, b_chunk) = remote_package("b", &p3);
        let moved = ChunkLocation {
            pack: p2.as_str().into(),
            ..a_chunk
        };
        let unlisted = ChunkLocation {
            pack: "unlisted.pack".into(),
            offset: 500,
            ..moved.clone()
        };
        let second = ContentBatch {
            files: vec![a_content, b_content],
            packs: vec![sealed(&p2), sealed(&p3)],
            written: vec![moved, unlisted, b_chunk],
            reused: Default::default(),
            remote: Some(remote.id),
            replaced: Default::default(),
        };
        let outcome = store
            .commit_batch(&[a, b], &second, &system(&["a/1", "b/1"]))
            .unwrap();
        assert_eq!(outcome.added, ["b/1"]);
        let packs: Vec<String> = store
            .catalog()
            .remote_packs()
            .unwrap()
            .into_iter()
            .map(|(pack, _)| pack)
            .collect();
        // Every pack the remote lists is read from it (a host moved to a
        // mirror reads what it had from there), but the known chunk keeps
        // the location it had: none of the pull's rows about it is used.
        assert_eq!(packs, [p1.clone(), p2, p3]);
        let pack_of_known: String = store
            .catalog_mut()
            .conn()
            .query_row(
                "SELECT p.name FROM chunks c JOIN packs p ON p.id = c.pack WHERE c.hash = ?1",
                [a_chunk.hash.as_bytes().to_vec()],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(pack_of_known, p1);
    }

    /// A pull places anew the known chunks its batch names as `replaced`
    /// (their place on another domain's remote did not hold up) — but
    /// never a chunk in the store's own packs.
    #[test]
    fn a_pull_replaces_only_the_remote_places_it_names() {
        let (_d, mut store, remote) = store_with_remote();
        let [local, p1, p2] = pack_names();
        let (a, a_content, a_local) = remote_package("a", &local);
        let (b, b_content, b_first) = remote_package("b", &p1);
        let batch = |files, packs, written, remote, replaced| ContentBatch {
            files,
            packs,
            written,
            reused: Default::default(),
            remote,
            replaced,
        };
        store
            .commit_batch(
                &[a],
                &batch(
                    vec![a_content.clone()],
                    vec![sealed(&local)],
                    vec![a_local.clone()],
                    None,
                    Default::default(),
                ),
                &Membership::Add,
            )
            .unwrap();
        store
            .commit_batch(
                &[b],
                &batch(
                    vec![b_content.clone()],
                    vec![sealed(&p1)],
                    vec![b_first.clone()],
                    Some(remote.id),
                    Default::default(),
                ),
                &Membership::Add,
            )
            .unwrap();
        // A pull naming both chunks as replaced, placing them in p2 (its
        // packages are new names for the same trees, so their chunks are
        // indexed).
        let renamed = |like: &str, name: &str| StagedPackage {
            name: name.into(),
            ..remote_package(like, &p1).0
        };
        let moved = |loc: &ChunkLocation| ChunkLocation {
            pack: p2.as_str().into(),
            offset: 300,
            ..loc.clone()
        };
        store
            .commit_batch(
                &[renamed("a", "c"), renamed("b", "d")],
                &batch(
                    vec![a_content, b_content],
                    vec![sealed(&p2)],
                    vec![moved(&a_local), moved(&b_first)],
                    Some(remote.id),
                    HashSet::from([a_local.hash, b_first.hash]),
                ),
                &Membership::Add,
            )
            .unwrap();
        let mut place = |hash: &Hash| -> (String, i64) {
            store
                .catalog_mut()
                .conn()
                .query_row(
                    "SELECT p.name, c.offset FROM chunks c JOIN packs p ON p.id = c.pack
                     WHERE c.hash = ?1",
                    [hash.as_bytes().to_vec()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .unwrap()
        };
        assert_eq!(place(&a_local.hash), (local, 8), "a local chunk moved");
        assert_eq!(place(&b_first.hash), (p2, 300), "the remote chunk stayed");
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

    /// An image or a pulled generation states every package's restriction
    /// (its key vouches for the whole system): a stored package it marks
    /// restricted is restricted from then on, with a new generation even
    /// of the same packages so that mounts rank it lower at once, and one
    /// it marks unrestricted is lifted. An add, or a profile build, never
    /// narrows what the store holds unrestricted. Before, a pulled package
    /// stayed as an earlier pull (which carried no restriction) stored it:
    /// unrestricted, taking Index names, for good.
    #[test]
    fn a_whole_system_states_restrictions_and_an_add_never_narrows() {
        let d = tempfile::tempdir().unwrap();
        let mut store = Store::init(d.path()).unwrap();
        let restricted = |apps: Option<&str>| StagedPackage {
            restricted_to: apps.map(str::to_string),
            ..package("aa-app", "1", 1)
        };
        let system = |restrictions| {
            Membership::Exactly(ExactSet {
                current: vec!["aa-app/1".into()],
                action: "switch".into(),
                restrictions,
            })
        };
        let mark = |store: &Store| store.installed("aa-app/1").unwrap().restricted_to;

        // Stored unrestricted (as a pull before restrictions travelled).
        let first = add(
            &mut store,
            restricted(None),
            &system(Restrictions::AsStated),
        )
        .unwrap();
        let first = first.generation.unwrap();
        for membership in [Membership::Add, system(Restrictions::MostTrusted)] {
            let outcome = add(&mut store, restricted(Some("aa-*")), &membership).unwrap();
            assert_eq!(outcome.generation, None);
            assert_eq!(mark(&store), None, "a restricted add narrowed");
        }

        let narrowed = add(
            &mut store,
            restricted(Some("aa-*")),
            &system(Restrictions::AsStated),
        )
        .unwrap();
        assert_eq!(mark(&store).as_deref(), Some("aa-*"));
        let second = narrowed.generation.expect("a generation for the mounts");
        assert!(second > first);
        assert_eq!(
            store.catalog().members(second).unwrap().len(),
            1,
            "the same package set"
        );
        assert_eq!(narrowed.unchanged, ["aa-app/1"]);

        // Stated again: nothing to do. Other patterns: recorded, no
        // generation (it ranks as it did).
        let again = add(
            &mut store,
            restricted(Some("aa-*")),
            &system(Restrictions::AsStated),
        )
        .unwrap();
        assert_eq!(again.generation, None);
        let other = add(
            &mut store,
            restricted(Some("aa-*,ab")),
            &system(Restrictions::AsStated),
        )
        .unwrap();
        assert_eq!(other.generation, None);
        assert_eq!(mark(&store).as_deref(), Some("aa-*,ab"));

        // Stated unrestricted: lifted, as by any unrestricted add.
        add(
            &mut store,
            restricted(None),
            &system(Restrictions::AsStated),
        )
        .unwrap();
        assert_eq!(mark(&store), None);
    }

    /// A restricted signer's metadata (its claimed version, epoch
    /// included, which `nexus build` orders versions by) stays with its
    /// restriction: an unrestricted add of the same package lifts both,
    /// the row then describing that add; a later add of a package stored
    /// unrestricted changes nothing, a restricted one least of all.
    #[test]
    fn a_lifted_restriction_takes_the_lifting_add_s_description() {
        let d = tempfile::tempdir().unwrap();
        let mut store = Store::init(d.path()).unwrap();
        let staged = |origin: &str, metadata: &str, apps: Option<&str>| StagedPackage {
            origin: origin.into(),
            metadata: metadata.into(),
            restricted_to: apps.map(str::to_string),
            ..package("aa-app", "1", 1)
        };
        let row = |store: &Store| {
            let p = store.installed("aa-app/1").unwrap();
            (p.origin, p.metadata, p.restricted_to)
        };
        let claim = r#"{"format":"deb","version":"99:1"}"#;
        add(
            &mut store,
            staged("npk:/signer.npk", claim, Some("aa-*")),
            &Membership::Add,
        )
        .unwrap();
        assert_eq!(
            row(&store),
            ("npk:/signer.npk".into(), claim.into(), Some("aa-*".into()))
        );
        add(&mut store, staged("dir:/src", "{}", None), &Membership::Add).unwrap();
        let lifted = ("dir:/src".to_string(), "{}".to_string(), None);
        assert_eq!(row(&store), lifted);
        for apps in [None, Some("aa-*")] {
            add(
                &mut store,
                staged("npk:/other.npk", claim, apps),
                &Membership::Add,
            )
            .unwrap();
            assert_eq!(row(&store), lifted, "restricted to {apps:?}");
        }
    }
}
