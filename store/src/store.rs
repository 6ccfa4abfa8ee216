//! The store as a whole: directory layout, opening, and the package
//! operations (`add`, `remove`, `rollback`, `switch`) that each commit one new
//! generation.
//!
//! Layout (FORMAT.md, "Store directory"):
//!
//! ```text
//! STORE/catalog.db        SQLite catalog (+ -wal, -shm)
//! STORE/packs/*.pack      chunk packs
//! STORE/locks/            advisory lock files
//! ```

use std::collections::HashSet;
use std::fs::{self, File};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::TransactionBehavior;

use crate::catalog::{Catalog, InodeRow, PackageRow, Stats, writes};
use crate::commit::{CommitOutcome, Membership, StagedPackage, commit_with};
use crate::dirs::DirSet;
use crate::error::{Result, StoreError};
use crate::generations;
use crate::ingest::{ContentBatch, FileContent, Session, run_session};
use crate::lock::{DEFAULT_LOCK_TIMEOUT, INGEST_LOCK, StoreLock};
use crate::names;
use crate::params::FROZEN;
use crate::read::{LocalPacks, Reader, ReaderOptions};
use crate::runtime;
use crate::scan::{ScanOptions, SourcePolicy};
use crate::tree::InodeType;

/// Catalog file name inside the store directory.
pub const CATALOG_FILE: &str = "catalog.db";
/// Pack directory name inside the store directory.
pub const PACKS_DIR: &str = "packs";
/// Lock directory name inside the store directory.
pub const LOCKS_DIR: &str = "locks";
/// Value of `meta.format`: the store format this build writes.
pub const STORE_FORMAT: &str = "nexus-store-v1";

/// Mode of the store directory, `packs/` and `locks/`.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of the catalog, its WAL and shared memory, packs and lock files.
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// How often a transaction that lost reused chunks to a concurrent gc is
/// retried before giving up.
const GC_RACE_RETRIES: usize = 3;

/// Seconds since the epoch (0 if the clock is before 1970).
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Observer of long operations (the CLI draws a progress bar with it).
pub trait Progress: Sync {
    /// Content ingest is starting: `bytes` in `files` files.
    fn start(&self, _bytes: u64, _files: u64) {}
    /// `bytes` more content bytes were processed.
    fn advance(&self, _bytes: u64) {}
    /// The operation entered a new phase (for a status line).
    fn phase(&self, _what: &str) {}
}

/// A [`Progress`] that ignores everything.
pub struct NoProgress;
impl Progress for NoProgress {}

/// One directory to import as NAME/VERSION.
#[derive(Clone, Debug)]
pub struct AddDir {
    /// The directory.
    pub path: PathBuf,
    /// App name.
    pub name: String,
    /// Version.
    pub version: String,
}

/// Options of [`Store::add_dirs`].
#[derive(Clone, Copy, Debug)]
pub struct AddOptions {
    /// Drop special files instead of failing.
    pub skip_special: bool,
    /// Whom the import trusts besides root (owners of the directories).
    pub policy: SourcePolicy,
    /// Worker threads for content processing.
    pub threads: usize,
}

impl Default for AddOptions {
    fn default() -> Self {
        AddOptions {
            skip_special: false,
            policy: SourcePolicy::default(),
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
        }
    }
}

/// An open store.
pub struct Store {
    dir: PathBuf,
    catalog: Catalog,
    reader: Reader,
    lock_timeout: Duration,
}

impl Drop for Store {
    fn drop(&mut self) {
        // The writer is the one to do it: the catalog pool's read-only
        // connections cannot, and the last connection to close (often one
        // of them) leaves the log as large as the last transaction made it.
        self.catalog.shrink_wal();
    }
}

impl Store {
    /// Creates a store in `dir` (which may exist and be empty, or hold a store
    /// already: then this only opens it).
    ///
    /// The store is private to its owner (FORMAT.md, section 1): the store
    /// directory, `packs/` and `locks/` are 0700, the catalog 0600 (SQLite
    /// gives its `-wal` and `-shm` the catalog's mode), packs 0600. File
    /// modes are enforced by the mount; the bytes behind them must not be
    /// readable beside it.
    pub fn init(dir: &Path) -> Result<Store> {
        // Directories above the store keep the usual modes; the store and
        // its subdirectories are created private.
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(|e| StoreError::io(parent, e))?;
        }
        for sub in [Path::new(""), Path::new(PACKS_DIR), Path::new(LOCKS_DIR)] {
            let path = dir.join(sub);
            match fs::DirBuilder::new().mode(PRIVATE_DIR_MODE).create(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                    return Err(StoreError::io(&path, e));
                }
                _ => {}
            }
        }
        let catalog_path = dir.join(CATALOG_FILE);
        // Created empty (an empty file is an empty database) with its final
        // mode before SQLite opens it, so it is never readable by others.
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(PRIVATE_FILE_MODE)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&catalog_path)
            .map_err(|e| StoreError::io(&catalog_path, e))?;
        tighten_modes(dir);
        let catalog = Catalog::open(&catalog_path, true, &|upgrade| {
            runtime::check_upgrade(dir, upgrade, &[])
        })?;
        match catalog.meta("format")? {
            None => {
                catalog.set_meta("format", STORE_FORMAT)?;
                catalog.set_meta("chunk_min", &FROZEN.min.to_string())?;
                catalog.set_meta("chunk_avg", &FROZEN.avg.to_string())?;
                catalog.set_meta("chunk_max", &FROZEN.max.to_string())?;
                catalog.set_meta("small_file_max", &FROZEN.small_file_max.to_string())?;
                catalog.set_meta("zstd_level", &FROZEN.zstd_level.to_string())?;
                catalog.set_meta("block_target", &FROZEN.block_target.to_string())?;
            }
            Some(f) if f == STORE_FORMAT => {}
            Some(other) => {
                return Err(StoreError::NotAStore {
                    path: dir.to_path_buf(),
                    reason: format!("unknown format {other:?}"),
                });
            }
        }
        sync_dir(dir)?;
        Self::open(dir)
    }

    /// Opens an existing store. If its catalog must be upgraded to this
    /// build's schema first, and a running reader of an older build could
    /// not read it then, nothing is changed and
    /// [`StoreError::UpgradeStrandsReaders`] names them.
    pub fn open(dir: &Path) -> Result<Store> {
        Self::open_excusing(dir, &[])
    }

    /// [`Store::open`], upgrading the catalog even if the readers whose
    /// pids are in `excused` could not read it then: the caller is about to
    /// replace them (a takeover, which opens the store while the daemon it
    /// replaces still serves).
    pub fn open_excusing(dir: &Path, excused: &[u32]) -> Result<Store> {
        let catalog_path = dir.join(CATALOG_FILE);
        if !catalog_path.is_file() {
            return Err(StoreError::NotAStore {
                path: dir.to_path_buf(),
                reason: "no catalog.db".into(),
            });
        }
        // A store made before stores were private is made private by its
        // owner's first open; anyone else (a reader of a store it does not
        // own) changes nothing.
        tighten_modes(dir);
        let catalog = Catalog::open(&catalog_path, false, &|upgrade| {
            runtime::check_upgrade(dir, upgrade, excused)
        })?;
        match catalog.meta("format")?.as_deref() {
            Some(STORE_FORMAT) => {}
            other => {
                return Err(StoreError::NotAStore {
                    path: dir.to_path_buf(),
                    reason: format!("catalog format is {other:?}, expected {STORE_FORMAT}"),
                });
            }
        }
        let packs = Arc::new(LocalPacks::new(&dir.join(PACKS_DIR)));
        let reader = Reader::open_checked(dir, ReaderOptions::default(), packs)?;
        Ok(Store {
            dir: dir.to_path_buf(),
            catalog,
            reader,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
        })
    }

    /// How long a writer waits for a store lock another process holds
    /// before failing with [`StoreError::LockTimeout`] (default
    /// [`DEFAULT_LOCK_TIMEOUT`]).
    pub fn set_lock_timeout(&mut self, timeout: Duration) {
        self.lock_timeout = timeout;
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The catalog, for queries.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Mutable catalog access for the crate's own transactions.
    pub(crate) fn catalog_mut(&mut self) -> &mut Catalog {
        &mut self.catalog
    }

    /// The directory holding packs.
    pub fn packs_dir(&self) -> PathBuf {
        self.dir.join(PACKS_DIR)
    }

    /// The directory holding lock files.
    pub fn locks_dir(&self) -> PathBuf {
        self.dir.join(LOCKS_DIR)
    }

    /// Imports directories as packages, all in one transaction that creates
    /// one generation (none if every package was already installed
    /// identically).
    pub fn add_dirs(
        &mut self,
        dirs: &[AddDir],
        options: AddOptions,
        progress: &dyn Progress,
    ) -> Result<CommitOutcome> {
        // Checked before scanning as well as before the commit, so a typo
        // fails at once rather than after the content was stored.
        check_specs(dirs.iter().map(|d| (d.name.as_str(), d.version.as_str())))?;
        progress.phase("scanning");
        let set = DirSet::scan(
            dirs,
            ScanOptions {
                skip_special: options.skip_special,
                policy: options.policy,
            },
        )?;
        self.add_staged_with(options.threads, progress, |session| {
            progress.start(set.content_bytes(), set.files());
            set.stage(session, options.threads, &|n| progress.advance(n))
        })
    }

    /// Adds packages whose content `read` stores, as one transaction that
    /// creates one generation (none if every package was already installed
    /// identically): the one mechanism behind every importer.
    ///
    /// `read` gets an open content run (`threads` compressors and the pack
    /// writer) and returns the packages, their trees' file hashes filled in,
    /// and the contents it stored. The ingest lock is held from before the
    /// first pack is written until the commit ends, so gc cannot sweep the
    /// new packs as debris. If a concurrent gc collected chunks this run
    /// reused, `read` is called again (at most three more times), so it must
    /// be able to start over. An error of `read` leaves the store unchanged:
    /// the packs it wrote are never indexed, and gc removes them.
    pub fn add_staged_with<E>(
        &mut self,
        threads: usize,
        progress: &dyn Progress,
        read: impl FnMut(&Session<'_>) -> Result<(Vec<StagedPackage>, Vec<FileContent>), E>,
    ) -> Result<CommitOutcome, E>
    where
        E: From<StoreError>,
    {
        self.stage_and_commit(threads, progress, &Membership::Add, read)
    }

    /// As [`Store::add_staged_with`], with the new generation's package set
    /// formed by `membership`: [`Membership::Exactly`] makes a generation of
    /// exactly the staged packages (importing an image, building a profile).
    pub fn stage_and_commit<E>(
        &mut self,
        threads: usize,
        progress: &dyn Progress,
        membership: &Membership,
        mut read: impl FnMut(&Session<'_>) -> Result<(Vec<StagedPackage>, Vec<FileContent>), E>,
    ) -> Result<CommitOutcome, E>
    where
        E: From<StoreError>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            progress.phase("storing content");
            // Held from before the first pack exists until the commit ended.
            let _ingest_lock =
                StoreLock::shared_within(&self.locks_dir(), INGEST_LOCK, self.lock_timeout)?;
            // The importer's own error travels as the run's value, so the
            // pipeline still shuts down in order before it is returned.
            let (staged, batch) = run_session(&self.dir, &FROZEN, threads, |session| {
                Ok(match read(session) {
                    Ok((staged, files)) => (Ok(staged), files),
                    Err(e) => (Err(e), Vec::new()),
                })
            })?;
            let staged = staged?;
            check_specs(staged.iter().map(|p| (p.name.as_str(), p.version.as_str())))?;
            progress.phase("committing");
            sync_dir(&self.packs_dir())?;
            match commit_with(&mut self.catalog, &staged, &batch, membership) {
                Err(StoreError::ConcurrentGc(n)) if attempt <= GC_RACE_RETRIES => {
                    tracing::warn!("{n} reused chunks were collected by a concurrent gc; retrying");
                    continue;
                }
                other => return Ok(other?),
            }
        }
    }

    /// Commits packages whose chunks are already in pack files that the
    /// ingest pipeline did not write (an image file linked into `packs/`
    /// to be served in place): `batch` names those packs, every chunk's
    /// location and every content's chunk list. The caller guarantees the
    /// packs are durable and immutable; one transaction, as every commit.
    pub fn commit_batch(
        &mut self,
        staged: &[StagedPackage],
        batch: &ContentBatch,
        membership: &Membership,
    ) -> Result<CommitOutcome> {
        check_specs(staged.iter().map(|p| (p.name.as_str(), p.version.as_str())))?;
        commit_with(&mut self.catalog, staged, batch, membership)
    }

    /// Removes packages (`NAME` = every version, `NAME/VERSION` = one) from
    /// the installed set, as one new generation. Their data stays until gc.
    pub fn remove(&mut self, specs: &[String]) -> Result<i64> {
        let parsed = specs
            .iter()
            .map(|s| names::parse_spec(s))
            .collect::<Result<Vec<_>>>()?;
        let tx = self
            .catalog
            .conn()
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current = generations::current_in(&tx)?;
        let mut members = generations::members_of(&tx, current)?;
        let mut removed = Vec::new();
        for (spec, (name, version)) in specs.iter().zip(&parsed) {
            let mut matched = Vec::new();
            for m in &members {
                if &m.name != name {
                    continue;
                }
                let v = writes::package_version(&tx, m.package)?;
                if version.as_ref().is_none_or(|want| *want == v) {
                    matched.push((m.package, format!("{name}/{v}")));
                }
            }
            if matched.is_empty() {
                return Err(StoreError::NotFound(format!("{spec} is not installed")));
            }
            for (package, label) in matched {
                members = generations::with_removed(members, package);
                removed.push(label);
            }
        }
        let action = format!("remove {}", removed.join(" "));
        let id = generations::create(&tx, &action, None, &members)?;
        tx.commit()?;
        Ok(id)
    }

    /// Makes a new generation with the package set of generation `target`.
    pub fn switch(&mut self, target: i64) -> Result<i64> {
        self.restore(target, &format!("switch to {target}"))
    }

    /// Goes back one step: a new generation with the package set of the
    /// generation before the one whose content is live now. Repeated rollbacks
    /// keep walking back through history.
    pub fn rollback(&mut self) -> Result<i64> {
        let current = self.catalog.current_generation()?.ok_or_else(|| {
            StoreError::Invalid("nothing to roll back: the store has no generations".into())
        })?;
        let live = self
            .catalog
            .generation(current)?
            .and_then(|g| g.restores)
            .unwrap_or(current);
        let target = self.catalog.previous_generation(live)?.ok_or_else(|| {
            StoreError::Invalid(format!(
                "no retained generation before {live} to roll back to"
            ))
        })?;
        self.restore(target, &format!("rollback to {target}"))
    }

    fn restore(&mut self, target: i64, action: &str) -> Result<i64> {
        let tx = self
            .catalog
            .conn()
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        generations::require_in(&tx, target)?;
        let members = generations::members_of(&tx, Some(target))?;
        let id = generations::create(&tx, action, Some(target), &members)?;
        tx.commit()?;
        Ok(id)
    }

    /// A package of the current generation by `NAME/VERSION`.
    pub fn installed(&self, spec: &str) -> Result<PackageRow> {
        let (name, version) = names::parse_spec(spec)?;
        let version =
            version.ok_or_else(|| StoreError::Invalid(format!("{spec}: give NAME/VERSION")))?;
        self.catalog
            .current_members()?
            .into_iter()
            .map(|m| m.package)
            .find(|p| p.name == name && p.version == version)
            .ok_or_else(|| StoreError::NotFound(format!("{name}/{version} is not installed")))
    }

    /// Resolves a `/`-separated path inside a package (no symlinks followed).
    pub fn resolve(&self, package: &PackageRow, path: &[u8]) -> Result<InodeRow> {
        let mut inode = self.catalog.inode(package.root)?.ok_or_else(|| {
            StoreError::Invalid(format!("{}: root inode missing", package.spec()))
        })?;
        for component in path
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty() && *c != b".")
        {
            if inode.kind != InodeType::Dir {
                return Err(no_such_path(package, path));
            }
            inode = self
                .catalog
                .lookup(inode.id, component)?
                .ok_or_else(|| no_such_path(package, path))?;
        }
        Ok(inode)
    }

    /// Every entry of a package with its `/`-joined path, depth-first in name
    /// order (one catalog query per directory). The root itself is first,
    /// with an empty path.
    pub fn walk_package(&self, package: &PackageRow) -> Result<Vec<(Vec<u8>, InodeRow)>> {
        let root = self.catalog.inode(package.root)?.ok_or_else(|| {
            StoreError::Invalid(format!("{}: root inode missing", package.spec()))
        })?;
        let mut out = vec![(Vec::new(), root)];
        let mut pending = vec![(Vec::new(), package.root)];
        while let Some((prefix, dir)) = pending.pop() {
            let mut subdirs = Vec::new();
            for entry in self.catalog.dir_entries(dir)? {
                let mut path = prefix.clone();
                if !path.is_empty() {
                    path.push(b'/');
                }
                path.extend_from_slice(&entry.name);
                if entry.inode.kind == InodeType::Dir {
                    subdirs.push((path.clone(), entry.inode.id));
                }
                out.push((path, entry.inode));
            }
            // Reverse so the stack pops them in name order.
            pending.extend(subdirs.into_iter().rev());
        }
        out.sort_by(|a, b| a.0.split(|&c| c == b'/').cmp(b.0.split(|&c| c == b'/')));
        Ok(out)
    }

    /// Reads pack bytes from `source` from now on (a source that also
    /// reaches the packs of remotes, say) instead of `packs/` alone.
    pub fn set_source(&mut self, source: Arc<dyn crate::read::PackSource>) -> Result<()> {
        self.reader = Reader::open_checked(&self.dir, ReaderOptions::default(), source)?;
        Ok(())
    }

    /// The read side of the store: file contents and verified chunks.
    pub fn reader(&self) -> &Reader {
        &self.reader
    }

    /// Reads a whole blob, verifying every chunk, into `out`.
    pub fn read_blob(&self, blob: i64, out: &mut dyn std::io::Write) -> Result<u64> {
        self.reader.copy_content(blob, out)
    }

    /// Totals for `nip stats`.
    pub fn stats(&mut self) -> Result<Stats> {
        let catalog_bytes = [CATALOG_FILE, "catalog.db-wal"]
            .iter()
            .filter_map(|f| fs::metadata(self.dir.join(f)).ok())
            .map(|m| m.len())
            .sum::<u64>();
        Ok(Stats {
            catalog_bytes,
            ..self.catalog.stats()?
        })
    }
}

/// What [`Store::set_current`] did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CurrentChange {
    /// The new generation; `None` when the version was `Current` already.
    pub generation: Option<i64>,
    /// The App's `Current` version before, if it had one.
    pub previous: Option<String>,
    /// True when the version was stored but not in the live generation,
    /// and came back into it.
    pub reinstated: bool,
}

// Administration: pins and per-App `Current` choices.
impl Store {
    /// Pins generation `generation`: gc never collects it (nor its packages)
    /// until it is unpinned. Returns false if it was pinned already.
    pub fn pin(&mut self, generation: i64) -> Result<bool> {
        let tx = self
            .catalog
            .conn()
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        generations::require_in(&tx, generation)?;
        let added = writes::pin(&tx, generation, now_secs())?;
        tx.commit()?;
        Ok(added)
    }

    /// Unpins generation `generation`; returns false if it was not pinned.
    pub fn unpin(&mut self, generation: i64) -> Result<bool> {
        writes::unpin(self.catalog.conn(), generation)
    }

    /// Makes the stored version `version` of App `name` its `Current`, as
    /// one new generation (GoboLinux's `SymlinkProgram`). A version that is
    /// stored but not in the live generation (removed, still kept for
    /// rollback or within gc's grace) comes back into it.
    pub fn set_current(&mut self, name: &str, version: &str) -> Result<CurrentChange> {
        names::check_name(name)?;
        names::check_version(version)?;
        let tx = self
            .catalog
            .conn()
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let Some((package, _)) = writes::package_by_spec(&tx, name, version)? else {
            let stored = writes::stored_versions(&tx, name)?;
            return Err(StoreError::VersionNotStored {
                name: name.to_string(),
                version: version.to_string(),
                stored,
            });
        };
        let live = generations::current_in(&tx)?;
        let members = generations::members_of(&tx, live)?;
        let previous = match members.iter().find(|m| m.name == name && m.current) {
            Some(m) if m.package == package => {
                return Ok(CurrentChange {
                    generation: None,
                    previous: Some(version.to_string()),
                    reinstated: false,
                });
            }
            Some(m) => Some(writes::package_version(&tx, m.package)?),
            None => None,
        };
        let reinstated = !members.iter().any(|m| m.package == package);
        let members = generations::with_added(members, package, name);
        let id = generations::create(&tx, &format!("current {name}/{version}"), None, &members)?;
        tx.commit()?;
        Ok(CurrentChange {
            generation: Some(id),
            previous,
            reinstated,
        })
    }
}

/// Refuses invalid names and versions, and the same NAME/VERSION twice in
/// one transaction.
fn check_specs<'a>(specs: impl Iterator<Item = (&'a str, &'a str)>) -> Result<()> {
    let mut seen = HashSet::new();
    for (name, version) in specs {
        names::check_name(name)?;
        names::check_version(version)?;
        let spec = format!("{name}/{version}");
        if !seen.insert(spec.clone()) {
            return Err(StoreError::DuplicateInTransaction(spec));
        }
    }
    Ok(())
}

fn no_such_path(package: &PackageRow, path: &[u8]) -> StoreError {
    StoreError::NoSuchPath {
        package: package.spec(),
        path: String::from_utf8_lossy(path).into_owned(),
    }
}

/// Makes a store made before stores were private (or by a looser hand)
/// private: directories 0700, catalog files, packs and locks 0600. Only
/// what this process owns is touched, and failures are only logged: a
/// reader that does not own the store must still be able to open it. Packs
/// are visited only when `packs/` itself was open to others.
fn tighten_modes(dir: &Path) {
    let euid = rustix::process::geteuid().as_raw();
    let tighten = |path: &Path, mode: u32| -> bool {
        let Ok(meta) = fs::symlink_metadata(path) else {
            return false;
        };
        if meta.uid() != euid || meta.file_type().is_symlink() || meta.mode() & 0o777 == mode {
            return false;
        }
        if let Err(e) = fs::set_permissions(path, fs::Permissions::from_mode(mode)) {
            tracing::debug!("cannot make {} private: {e}", path.display());
            return false;
        }
        true
    };
    tighten(dir, PRIVATE_DIR_MODE);
    tighten(&dir.join(LOCKS_DIR), PRIVATE_DIR_MODE);
    for file in [CATALOG_FILE, "catalog.db-wal", "catalog.db-shm"] {
        tighten(&dir.join(file), PRIVATE_FILE_MODE);
    }
    for lock in [crate::lock::INGEST_LOCK, crate::lock::GC_LOCK] {
        tighten(&dir.join(LOCKS_DIR).join(lock), PRIVATE_FILE_MODE);
    }
    let packs = dir.join(PACKS_DIR);
    if tighten(&packs, PRIVATE_DIR_MODE)
        && let Ok(entries) = fs::read_dir(&packs)
    {
        for entry in entries.flatten() {
            tighten(&entry.path(), PRIVATE_FILE_MODE);
        }
    }
}

/// fsyncs a directory so that entries created in it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| StoreError::io(dir, e))
}
