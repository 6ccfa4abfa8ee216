//! Runtime roots: what running readers of the store serve, so that gc
//! never collects it (FORMAT.md, "Runtime roots").
//!
//! A process that serves a view of the store for longer than one command
//! (the `nexus mount` daemon, `nexus serve --virtio-fs`) registers a
//! [`RuntimeRoot`] when it opens its view and updates it whenever the view
//! moves. Registering takes an exclusive `flock` on `STORE/run/<pid>.lock`
//! for the life of the process and writes `STORE/run/<pid>.json`, the
//! record, atomically (temporary file and rename). The kernel releases the
//! lock when the process dies, however it dies, so *a record counts only
//! while its lock is held*: [`live`] skips a record whose lock it can take,
//! and [`sweep_dead`] (run by gc) deletes it.
//!
//! Why a lock and not the pid: pids are reused, and a pid says nothing
//! across pid namespaces; an flock is released exactly when the holder is
//! gone. Two processes of different pid namespaces sharing a store may have
//! the same pid: the second one takes `<pid>-1`, and so on.
//!
//! The lock file is created before the record is written and removed after
//! it, so a reader that sees a record can always check its lock. A
//! registering process checks, once it holds the lock, that the lock file
//! it locked is still the one at that path: gc may have removed a dead
//! record's lock file in between, and a lock on an unlinked file protects
//! nothing.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use crate::catalog::{SCHEMA_VERSION, Upgrade};
use crate::error::{Result, StoreError, StrandedReader};
use crate::store::now_secs;

/// The directory of runtime records inside the store.
pub const RUN_DIR: &str = "run";
/// The `format` of a record this build writes.
pub const RECORD_FORMAT: &str = "nexus-runtime-root-v1";

/// Suffix of a record file.
const RECORD_SUFFIX: &str = ".json";
/// Suffix of a record's lock file.
const LOCK_SUFFIX: &str = ".lock";
/// How many names (`<pid>`, `<pid>-1`, ...) a process tries before giving
/// up: more processes with one pid than pid namespaces anyone runs.
const MAX_NAME_TRIES: u32 = 64;

/// What kind of reader serves the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServedKind {
    /// A FUSE mount (`nexus mount`).
    Mount,
    /// A vhost-user-fs backend for VM guests (`nexus serve --virtio-fs`).
    VirtioFs,
}

impl ServedKind {
    /// The name used in records and reports: `mount`, `virtio-fs`.
    pub fn as_str(self) -> &'static str {
        match self {
            ServedKind::Mount => "mount",
            ServedKind::VirtioFs => "virtio-fs",
        }
    }
}

/// What a running reader serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Served {
    /// Mount or virtio-fs backend.
    pub kind: ServedKind,
    /// The mount point, or the vhost-user socket.
    pub target: PathBuf,
    /// The generations it serves: the one shown first, then any it still
    /// answers for. gc keeps each of them and its packages.
    pub generations: Vec<i64>,
    /// Packages (catalog ids) its clients still hold inodes of (the kernel
    /// behind a mount, VM guests): files open in programs, whatever
    /// generation they came from. gc keeps them too.
    pub packages: Vec<i64>,
    /// The smallest file whose decoded copy (`STORE/decoded`) a kernel
    /// view it shows, or is about to show, may name; 0 when it shows none.
    /// Copies at least that large are never pruned while it runs. A record
    /// of a build before this field reads as 1 for a mount (any copy) and
    /// 0 for a virtio-fs backend.
    pub decoded_from: u64,
}

/// A record of a running reader, as [`live`] reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServedRecord {
    /// The process (as its own pid namespace numbers it).
    pub pid: u32,
    /// What it serves.
    pub served: Served,
    /// When it registered (seconds since the epoch).
    pub started: i64,
    /// When it last updated its record.
    pub updated: i64,
    /// The catalog schema its build was made for; `None` for a build that
    /// predates the field (it reads only the schema it opened).
    pub schema: Option<i64>,
}

/// The record file as written: `target` is text when the path is UTF-8,
/// else lossy text plus the exact bytes in `target_hex`.
#[derive(Serialize, Deserialize)]
struct RecordFile {
    format: String,
    pid: u32,
    kind: ServedKind,
    target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target_hex: Option<String>,
    generations: Vec<i64>,
    #[serde(default)]
    packages: Vec<i64>,
    started: i64,
    updated: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    schema: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    decoded_from: Option<u64>,
}

impl RecordFile {
    fn new(pid: u32, served: &Served, started: i64) -> RecordFile {
        let bytes = served.target.as_os_str().as_bytes();
        let exact = std::str::from_utf8(bytes).is_ok();
        RecordFile {
            format: RECORD_FORMAT.to_string(),
            pid,
            kind: served.kind,
            target: String::from_utf8_lossy(bytes).into_owned(),
            target_hex: (!exact).then(|| hex::encode(bytes)),
            generations: served.generations.clone(),
            packages: served.packages.clone(),
            started,
            updated: now_secs(),
            schema: Some(SCHEMA_VERSION),
            decoded_from: Some(served.decoded_from),
        }
    }

    fn into_record(self) -> Option<ServedRecord> {
        if self.format != RECORD_FORMAT {
            return None;
        }
        let target = match &self.target_hex {
            Some(h) => PathBuf::from(std::ffi::OsString::from_vec(hex::decode(h).ok()?)),
            None => PathBuf::from(self.target),
        };
        // A build that did not say may show a kernel view naming any copy.
        let decoded_from = self.decoded_from.unwrap_or(match self.kind {
            ServedKind::Mount => 1,
            ServedKind::VirtioFs => 0,
        });
        Some(ServedRecord {
            pid: self.pid,
            served: Served {
                kind: self.kind,
                target,
                generations: self.generations,
                packages: self.packages,
                decoded_from,
            },
            started: self.started,
            updated: self.updated,
            schema: self.schema,
        })
    }
}

/// A registered runtime root: holds the lock for as long as it lives;
/// dropping it removes the record and its lock file.
#[derive(Debug)]
pub struct RuntimeRoot {
    dir: PathBuf,
    stem: String,
    pid: u32,
    started: i64,
    served: Mutex<Served>,
    /// Set, under `served`'s lock, once the record is removed: an update
    /// racing the withdrawal (the follow thread against the signal thread)
    /// must not write the record back.
    withdrawn: AtomicBool,
    _lock: File,
}

impl RuntimeRoot {
    /// Announces that this process serves `served` from the store in
    /// `store_dir`: takes `STORE/run/<pid>.lock` and writes the record.
    pub fn register(store_dir: &Path, served: Served) -> Result<RuntimeRoot> {
        let dir = run_dir(store_dir)?;
        let pid = std::process::id();
        let (stem, lock) = claim_name(&dir, pid)?;
        let root = RuntimeRoot {
            dir,
            stem,
            pid,
            started: now_secs(),
            served: Mutex::new(served.clone()),
            withdrawn: AtomicBool::new(false),
            _lock: lock,
        };
        root.write(&served)?;
        Ok(root)
    }

    /// Rewrites the record with the generations now served (the one shown
    /// first) and the packages clients hold, when either changed.
    pub fn update(&self, generations: Vec<i64>, packages: Vec<i64>) -> Result<()> {
        // Held while writing: two updates never share the temporary file.
        let mut served = self.served.lock().unwrap_or_else(|p| p.into_inner());
        if self.withdrawn.load(Ordering::Relaxed) {
            return Ok(());
        }
        if served.generations == generations && served.packages == packages {
            return Ok(());
        }
        // Kept in memory only once written: after a failed write the next
        // update with the same values writes them (what memory says is
        // what the file says).
        let new = Served {
            generations,
            packages,
            ..served.clone()
        };
        self.write(&new)?;
        *served = new;
        Ok(())
    }

    /// Rewrites the record with the smallest file whose decoded copy the
    /// kernel view shown, or about to be shown, may name (0: none), when
    /// it changed. Written before the view looks for copies, so that a
    /// prune reading the record afterwards keeps them.
    pub fn set_decoded_from(&self, from: u64) -> Result<()> {
        let mut served = self.served.lock().unwrap_or_else(|p| p.into_inner());
        if self.withdrawn.load(Ordering::Relaxed) || served.decoded_from == from {
            return Ok(());
        }
        let new = Served {
            decoded_from: from,
            ..served.clone()
        };
        self.write(&new)?;
        *served = new;
        Ok(())
    }

    /// What the record says now.
    pub fn served(&self) -> Served {
        self.served
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The record file's path.
    pub fn record_path(&self) -> PathBuf {
        self.dir.join(format!("{}{RECORD_SUFFIX}", self.stem))
    }

    fn lock_path(&self) -> PathBuf {
        self.dir.join(format!("{}{LOCK_SUFFIX}", self.stem))
    }

    /// Writes the record to a temporary file and renames it into place, so
    /// a reader sees the old record or the new one, never a torn one. The
    /// temporary name is ours alone while we hold the lock. No fsync: a
    /// record means nothing once its process is gone, and a crash ends it.
    fn write(&self, served: &Served) -> Result<()> {
        let text = encode(&RecordFile::new(self.pid, served, self.started))?;
        let tmp = self.dir.join(format!(".{}{RECORD_SUFFIX}.tmp", self.stem));
        // A temporary file left by an earlier process of the same name.
        remove_if_present(&tmp)?;
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(|e| StoreError::io(&tmp, e))?;
        out.write_all(&text)
            .and_then(|()| out.write_all(b"\n"))
            .map_err(|e| StoreError::io(&tmp, e))?;
        drop(out);
        let path = self.record_path();
        fs::rename(&tmp, &path).map_err(|e| StoreError::io(&path, e))
    }
}

impl RuntimeRoot {
    /// Removes the record (the process stops serving; also on drop).
    pub fn withdraw(&self) {
        // After any update in progress, and before any later one.
        let _served = self.served.lock().unwrap_or_else(|p| p.into_inner());
        self.withdrawn.store(true, Ordering::Relaxed);
        // Record first, then the lock file, while the lock is still held:
        // nobody can mistake the record for a dead one meanwhile.
        let _ = fs::remove_file(self.record_path());
        let _ = fs::remove_file(self.lock_path());
    }
}

impl Drop for RuntimeRoot {
    fn drop(&mut self) {
        self.withdraw();
    }
}

/// `STORE/run`, created with mode 0700 if missing (the records name mount
/// points and sockets; they are nobody else's business).
fn run_dir(store_dir: &Path) -> Result<PathBuf> {
    let dir = store_dir.join(RUN_DIR);
    match fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(StoreError::io(&dir, e)),
    }
    let meta = fs::symlink_metadata(&dir).map_err(|e| StoreError::io(&dir, e))?;
    if !meta.is_dir() {
        return Err(StoreError::BadInput {
            path: dir,
            reason: "is not a directory".into(),
        });
    }
    if meta.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| StoreError::io(&dir, e))?;
    }
    Ok(dir)
}

/// Takes the lock of the first free name of `pid` and returns it with the
/// open lock file.
fn claim_name(dir: &Path, pid: u32) -> Result<(String, File)> {
    for n in 0..MAX_NAME_TRIES {
        let stem = if n == 0 {
            pid.to_string()
        } else {
            format!("{pid}-{n}")
        };
        let path = dir.join(format!("{stem}{LOCK_SUFFIX}"));
        // gc may unlink a dead record's lock file between our open and our
        // flock; then lock the new file at that path instead.
        loop {
            let file = match OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(&path)
            {
                Ok(file) => file,
                // Something else planted at the name (a socket, a link):
                // no one's lock; the next name is tried.
                Err(e) if not_a_file(&e) => break,
                Err(e) => return Err(StoreError::io(&path, e)),
            };
            if !file.metadata().is_ok_and(|m| m.is_file()) {
                break;
            }
            if !try_flock(&file, libc::LOCK_EX).map_err(|e| StoreError::io(&path, e))? {
                break; // Held by a live process of another pid namespace.
            }
            let held = file.metadata().map_err(|e| StoreError::io(&path, e))?;
            match fs::symlink_metadata(&path) {
                Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => {
                    return Ok((stem, file));
                }
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::io(&path, e)),
            }
        }
    }
    Err(StoreError::Invalid(format!(
        "{}: no free runtime record name for pid {pid}",
        dir.display()
    )))
}

/// `flock(op | LOCK_NB)`: `true` when taken, `false` when someone holds it.
fn try_flock(file: &File, op: libc::c_int) -> io::Result<bool> {
    loop {
        // SAFETY: flock on an owned, open descriptor has no memory effects.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => return Ok(false),
            _ => return Err(err),
        }
    }
}

/// Removes `path`; one already gone is fine.
pub(crate) fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io(path, e)),
    }
}

/// Whether `e`, opening a name in `STORE/run`, says that no regular file
/// is there: a socket, link or FIFO a daemon (which may write there)
/// planted. Such a name is no one's record or lock; opening it must not
/// fail gc and status for good, nor block them.
fn not_a_file(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::InvalidInput
        || matches!(e.raw_os_error(), Some(libc::ENXIO | libc::ELOOP))
}

/// Opens a record's lock file (never through a link, never blocking):
/// `None` if there is none, or if what is there is not a regular file.
fn open_lock(path: &Path) -> Result<Option<File>> {
    match crate::regular::open_regular_nofollow(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) if not_a_file(&e) => {
            tracing::warn!("{}: {e}; not a runtime lock, ignored", path.display());
            Ok(None)
        }
        Err(e) => Err(StoreError::io(path, e)),
    }
}

/// Whether the lock of a record is held by a live process. `None` when the
/// lock file does not exist (or is no file).
fn lock_held(path: &Path) -> Result<Option<bool>> {
    let Some(file) = open_lock(path)? else {
        return Ok(None);
    };
    // A shared lock we can take means nobody holds the exclusive one; it is
    // released when `file` closes.
    let free = try_flock(&file, libc::LOCK_SH).map_err(|e| StoreError::io(path, e))?;
    Ok(Some(!free))
}

/// The stems of every `<stem>.json` and `<stem>.lock` in `STORE/run`.
fn stems(dir: &Path) -> Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io(dir, e)),
    };
    let mut stems = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') {
            continue;
        }
        if let Some(stem) = name
            .strip_suffix(RECORD_SUFFIX)
            .or_else(|| name.strip_suffix(LOCK_SUFFIX))
        {
            stems.push(stem.to_string());
        }
    }
    stems.sort();
    stems.dedup();
    Ok(stems)
}

/// The records of every running reader of the store in `store_dir`: those
/// whose lock is held. Records of dead processes, and records this build
/// cannot read, are skipped. Sorted by kind, target and pid.
pub fn live(store_dir: &Path) -> Result<Vec<ServedRecord>> {
    let mut records: Vec<ServedRecord> = held_records(store_dir)?
        .into_iter()
        .filter_map(|(_, record)| record)
        .collect();
    records.sort_by(|a, b| {
        (a.served.kind, &a.served.target, a.pid).cmp(&(b.served.kind, &b.served.target, b.pid))
    });
    Ok(records)
}

/// The name of every record whose lock is held (its process runs), with
/// the record once it is written and this build can read it.
fn held_records(store_dir: &Path) -> Result<Vec<(String, Option<ServedRecord>)>> {
    let dir = store_dir.join(RUN_DIR);
    let mut held = Vec::new();
    for stem in stems(&dir)? {
        if lock_held(&dir.join(format!("{stem}{LOCK_SUFFIX}")))? != Some(true) {
            continue;
        }
        let record_path = dir.join(format!("{stem}{RECORD_SUFFIX}"));
        let record = match read_record_file(&record_path) {
            Ok(text) => {
                let record = parse_record(&text);
                if record.is_none() {
                    tracing::warn!(
                        "{}: not a runtime record this program can read; ignored",
                        record_path.display()
                    );
                }
                record
            }
            // Registering (lock taken, record not written yet) or ending.
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) if not_a_file(&e) => {
                tracing::warn!(
                    "{}: {e}; not a runtime record, ignored",
                    record_path.display()
                );
                None
            }
            Err(e) => return Err(StoreError::io(&record_path, e)),
        };
        held.push((stem, record));
    }
    Ok(held)
}

/// Refuses `upgrade` of the catalog of the store in `store_dir` if a
/// running reader could not read the catalog after it: its connections
/// opened from then on (a pool that grows, a fetcher starting) would fail
/// until it is replaced. Readers whose pid is in `excused` are about to be
/// replaced by the caller (a takeover). A reader whose record is not
/// written yet, or not readable by this build, counts as one that reads
/// only the schema it opened.
pub fn check_upgrade(store_dir: &Path, upgrade: &Upgrade, excused: &[u32]) -> Result<()> {
    let mut stranded = Vec::new();
    for (stem, record) in held_records(store_dir)? {
        let reader = match record {
            Some(r) => StrandedReader {
                pid: Some(r.pid),
                kind: Some(r.served.kind.as_str()),
                target: Some(r.served.target),
                schema: r.schema,
            },
            None => StrandedReader {
                pid: stem.split('-').next().and_then(|p| p.parse().ok()),
                kind: None,
                target: None,
                schema: None,
            },
        };
        if reader.pid.is_some_and(|pid| excused.contains(&pid))
            || upgrade.keeps_reader(reader.schema)
        {
            continue;
        }
        stranded.push(reader);
    }
    if stranded.is_empty() {
        return Ok(());
    }
    Err(StoreError::UpgradeStrandsReaders {
        from: upgrade.from,
        to: upgrade.to,
        readers: stranded,
    })
}

/// Deletes the records and lock files of processes that are gone (whose lock
/// can be taken); returns how many records it removed.
pub fn sweep_dead(store_dir: &Path) -> Result<u64> {
    let dir = store_dir.join(RUN_DIR);
    let mut removed = 0;
    for stem in stems(&dir)? {
        let lock_path = dir.join(format!("{stem}{LOCK_SUFFIX}"));
        let record_path = dir.join(format!("{stem}{RECORD_SUFFIX}"));
        let lock = open_lock(&lock_path)?;
        // Held exclusively while we delete, so nobody registers under this
        // name meanwhile (a registrant re-checks the path after locking).
        let dead = match &lock {
            Some(f) => try_flock(f, libc::LOCK_EX).map_err(|e| StoreError::io(&lock_path, e))?,
            // A record without a lock file can never be live again.
            None => true,
        };
        if !dead {
            continue;
        }
        if fs::symlink_metadata(&record_path).is_ok() {
            remove_if_present(&record_path)?;
            removed += 1;
        }
        remove_if_present(&dir.join(format!(".{stem}{RECORD_SUFFIX}.tmp")))?;
        // Ours (held), or something planted that is no file.
        let planted = fs::symlink_metadata(&lock_path).is_ok_and(|m| !m.is_file());
        if lock.is_some() || planted {
            remove_if_present(&lock_path)?;
        }
    }
    Ok(removed)
}

/// The record a record file's bytes hold, if they are one this build can
/// read. Records are written by daemons, confined to a sandbox user that
/// may write `STORE/run`, and read by root (gc, prune, `nexus status`):
/// whatever the bytes, this answers (fuzzed in `store/fuzz`, target
/// `runtime_record`).
pub fn parse_record(bytes: &[u8]) -> Option<ServedRecord> {
    serde_json::from_slice::<RecordFile>(bytes)
        .ok()
        .and_then(RecordFile::into_record)
}

/// `record` as a record file says it, which [`parse_record`] reads back
/// the same: what [`RuntimeRoot`] writes (with `updated` now and `schema`
/// this build's), exposed for the fuzz target's check of that.
pub fn encode_record(record: &ServedRecord) -> Result<Vec<u8>> {
    let mut file = RecordFile::new(record.pid, &record.served, record.started);
    file.updated = record.updated;
    file.schema = record.schema;
    encode(&file)
}

/// A record file's bytes.
fn encode(file: &RecordFile) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(file)
        .map_err(|e| StoreError::Invalid(format!("encoding a runtime record: {e}")))
}

/// A record file's bytes, read only from a regular file (never through a
/// link, never blocking on a FIFO).
fn read_record_file(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    crate::regular::open_regular_nofollow(path)?.read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(generations: Vec<i64>) -> Served {
        Served {
            kind: ServedKind::Mount,
            target: PathBuf::from("/Programs"),
            generations,
            packages: Vec::new(),
            decoded_from: 0,
        }
    }

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_registered_root_is_live_until_dropped() {
        let store = tempfile::tempdir().unwrap();
        let root = RuntimeRoot::register(store.path(), served(vec![3])).unwrap();
        let dir = store.path().join(RUN_DIR);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&root.record_path()), 0o600);
        assert_eq!(mode(&root.lock_path()), 0o600);
        let live = live(store.path()).unwrap();
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].pid, std::process::id());
        assert_eq!(live[0].served, served(vec![3]));

        root.update(vec![5, 3], vec![17, 40]).unwrap();
        let record = &super::live(store.path()).unwrap()[0].served;
        assert_eq!(record.generations, vec![5, 3]);
        assert_eq!(record.packages, vec![17, 40], "held packages are recorded");
        root.set_decoded_from(1 << 20).unwrap();
        let record = &super::live(store.path()).unwrap()[0].served;
        assert_eq!(record.decoded_from, 1 << 20);
        assert_eq!(record.generations, vec![5, 3], "the rest stays");
        // A record of a build that did not say which decoded copies its
        // kernel view names may name any.
        let text = fs::read_to_string(root.record_path()).unwrap();
        let old: String = text
            .lines()
            .filter(|l| !l.contains("decoded_from"))
            .collect::<Vec<_>>()
            .join("\n")
            .replace(",\n}", "\n}");
        fs::write(root.record_path(), old).unwrap();
        assert_eq!(super::live(store.path()).unwrap()[0].served.decoded_from, 1);
        // A live record is never swept.
        assert_eq!(sweep_dead(store.path()).unwrap(), 0);
        assert_eq!(super::live(store.path()).unwrap().len(), 1);

        drop(root);
        assert!(super::live(store.path()).unwrap().is_empty());
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0, "files left behind");
    }

    /// A write that failed (a full disk) is made again by the next call
    /// with the same values: the record never says less than the view
    /// shows because an earlier write of it failed.
    #[test]
    fn a_failed_record_write_is_made_again_with_the_same_values() {
        let dir = tempfile::tempdir().unwrap();
        let root = RuntimeRoot::register(dir.path(), served(vec![1])).unwrap();
        // A directory where the temporary record goes makes writes fail.
        let tmp = root.dir.join(format!(".{}{RECORD_SUFFIX}.tmp", root.stem));
        fs::create_dir(&tmp).unwrap();
        fs::write(tmp.join("x"), b"").unwrap();
        root.set_decoded_from(1).unwrap_err();
        root.update(vec![2, 1], vec![9]).unwrap_err();
        fs::remove_dir_all(&tmp).unwrap();
        root.set_decoded_from(1).unwrap();
        root.update(vec![2, 1], vec![9]).unwrap();
        let record = &live(dir.path()).unwrap()[0].served;
        assert_eq!(record.decoded_from, 1);
        assert_eq!(
            (&record.generations[..], &record.packages[..]),
            (&[2, 1][..], &[9][..])
        );
    }

    /// The follow thread may update the record while the signal thread
    /// withdraws it: nothing is written back once it is withdrawn.
    #[test]
    fn an_update_after_the_withdrawal_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = RuntimeRoot::register(dir.path(), served(vec![1])).unwrap();
        root.withdraw();
        root.update(vec![2], vec![7]).unwrap();
        assert!(!root.record_path().exists(), "the record came back");
        assert!(live(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn a_record_whose_lock_is_free_is_dead_and_swept() {
        let store = tempfile::tempdir().unwrap();
        let root = RuntimeRoot::register(store.path(), served(vec![7])).unwrap();
        // What a SIGKILLed process leaves: the files, without the lock.
        let record = fs::read(root.record_path()).unwrap();
        let dir = store.path().join(RUN_DIR);
        fs::write(dir.join("999999.json"), &record).unwrap();
        fs::write(dir.join("999999.lock"), b"").unwrap();
        // A record with no lock file at all.
        fs::write(dir.join("999998.json"), &record).unwrap();
        let pids: Vec<u32> = live(store.path()).unwrap().iter().map(|r| r.pid).collect();
        assert_eq!(pids, vec![std::process::id()], "only the held record");
        assert_eq!(sweep_dead(store.path()).unwrap(), 2);
        let mut left: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let stem = std::process::id().to_string();
        assert_eq!(left, vec![format!("{stem}.json"), format!("{stem}.lock")]);
        drop(root);
    }

    /// A socket planted at a daemon's lock name does not stop it from
    /// registering: the next name is taken.
    #[test]
    fn a_planted_socket_at_the_lock_name_takes_the_next_name() {
        let store = tempfile::tempdir().unwrap();
        let dir = store.path().join(RUN_DIR);
        fs::create_dir_all(&dir).unwrap();
        let pid = std::process::id();
        let _socket =
            std::os::unix::net::UnixListener::bind(dir.join(format!("{pid}.lock"))).unwrap();
        let root = RuntimeRoot::register(store.path(), served(vec![7])).unwrap();
        assert!(
            root.record_path().ends_with(format!("{pid}-1.json")),
            "{}",
            root.record_path().display()
        );
        drop(root);
    }

    /// A daemon may write `STORE/run`: a socket bound at a lock's name, or
    /// a FIFO at a held record's, must neither fail gc and status for good
    /// nor block them; they are ignored, and gc removes the planted lock.
    #[test]
    fn planted_sockets_and_fifos_in_the_run_directory_are_ignored() {
        let store = tempfile::tempdir().unwrap();
        let root = RuntimeRoot::register(store.path(), served(vec![7])).unwrap();
        let dir = store.path().join(RUN_DIR);
        let _socket = std::os::unix::net::UnixListener::bind(dir.join("4242.lock")).unwrap();
        // A FIFO as the record of a name whose lock is held.
        let held = fs::File::create(dir.join("4243.lock")).unwrap();
        assert!(try_flock(&held, libc::LOCK_EX).unwrap());
        let fifo =
            std::ffi::CString::new(dir.join("4243.json").into_os_string().into_encoded_bytes())
                .unwrap();
        // SAFETY: mkfifo on a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let pids: Vec<u32> = live(store.path()).unwrap().iter().map(|r| r.pid).collect();
        assert_eq!(pids, vec![std::process::id()]);
        sweep_dead(store.path()).unwrap();
        assert!(
            fs::symlink_metadata(dir.join("4242.lock")).is_err(),
            "the planted socket is still there"
        );
        drop(held);
        drop(root);
    }

    #[test]
    fn a_second_root_of_the_same_pid_takes_another_name() {
        let store = tempfile::tempdir().unwrap();
        let a = RuntimeRoot::register(store.path(), served(vec![1])).unwrap();
        let b = RuntimeRoot::register(
            store.path(),
            Served {
                kind: ServedKind::VirtioFs,
                target: PathBuf::from("/run/guests.sock"),
                generations: vec![2],
                packages: Vec::new(),
                decoded_from: 0,
            },
        )
        .unwrap();
        assert_ne!(a.record_path(), b.record_path());
        let kinds: Vec<ServedKind> = live(store.path())
            .unwrap()
            .iter()
            .map(|r| r.served.kind)
            .collect();
        assert_eq!(kinds, vec![ServedKind::Mount, ServedKind::VirtioFs]);
    }

    #[test]
    fn non_utf8_targets_survive_the_record() {
        let store = tempfile::tempdir().unwrap();
        let target = PathBuf::from(std::ffi::OsString::from_vec(b"/mnt/\xffx".to_vec()));
        let _root = RuntimeRoot::register(
            store.path(),
            Served {
                kind: ServedKind::Mount,
                target: target.clone(),
                generations: vec![],
                packages: Vec::new(),
                decoded_from: 0,
            },
        )
        .unwrap();
        assert_eq!(live(store.path()).unwrap()[0].served.target, target);
    }

    #[test]
    fn unreadable_records_are_ignored() {
        let store = tempfile::tempdir().unwrap();
        let root = RuntimeRoot::register(store.path(), served(vec![1])).unwrap();
        fs::write(root.record_path(), b"{\"format\": \"something-else\"}").unwrap();
        assert!(live(store.path()).unwrap().is_empty());
    }

    /// What root reads from a record a daemon wrote, without the files:
    /// encoded records read back the same, a damaged one is no record.
    #[test]
    fn records_parse_back_and_damage_reads_as_none() {
        let record = ServedRecord {
            pid: 42,
            served: Served {
                kind: ServedKind::VirtioFs,
                target: PathBuf::from(std::ffi::OsString::from_vec(b"/run/\xffs".to_vec())),
                generations: vec![3, 2],
                packages: vec![9],
                decoded_from: 0,
            },
            started: 1,
            updated: 2,
            schema: None,
        };
        let text = encode_record(&record).unwrap();
        assert_eq!(parse_record(&text), Some(record));
        let text = String::from_utf8(text).unwrap();
        let odd_hex = text.replace("\"2f72756e2fff73\"", "\"2f7\"");
        assert_ne!(odd_hex, text);
        assert_eq!(parse_record(odd_hex.as_bytes()), None);
        assert_eq!(parse_record(b"\xff{"), None);
        assert_eq!(parse_record(b"[]"), None);
    }
}
