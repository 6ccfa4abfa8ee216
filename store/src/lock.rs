//! Store-wide advisory locks (`flock` on files in `STORE/locks/`).
//!
//! * `ingest.lock`: every process that writes packs not yet indexed in the
//!   catalog (`nip add`, gc's repacking) holds it **shared** from before it
//!   creates its first pack until after its catalog transaction has ended.
//!   `gc` deletes unindexed pack files only while holding it **exclusive**
//!   (taken without waiting, else it skips that step), so it can never delete
//!   a pack that a live writer is about to index. A writer killed by SIGKILL
//!   loses its lock with its life, so its debris becomes collectable.
//! * `gc.lock`: held exclusive by a running gc, so two never interleave.
//!
//! flock locks are released by the kernel when the process dies, so no crash
//! can leave the store locked. Lock files are 0600 in a 0700 directory, so
//! only the store's owner can take them, and nobody waits forever: a wait
//! ends after a timeout with an error naming the processes holding the lock.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Result, StoreError};

/// Lock file taken by writers of unindexed packs.
pub const INGEST_LOCK: &str = "ingest.lock";
/// Lock file serialising garbage collections.
pub const GC_LOCK: &str = "gc.lock";
/// How long [`StoreLock::shared`] waits for a lock before giving up.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(60);

/// A held lock; released on drop.
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
}

/// Opens (creating) a lock file: never through a symlink, never for
/// anyone but the store's owner to open (a lock file others can open is one
/// they can hold forever).
fn open_lock(dir: &Path, name: &str) -> Result<File> {
    let path = dir.join(name);
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(crate::store::PRIVATE_FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| StoreError::io(&path, e))
}

fn flock(file: &File, op: libc::c_int) -> io::Result<bool> {
    loop {
        // SAFETY: flock on a valid, owned descriptor has no memory effects.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) if op & libc::LOCK_NB != 0 => return Ok(false),
            _ => return Err(err),
        }
    }
}

/// Processes holding a `flock` on `file`, from `/proc/locks` (empty when
/// it cannot be read). flock locks have no `F_GETLK`: the kernel's list
/// of locks, keyed by device and inode, is the one place naming them.
pub fn lock_holders(file: &File) -> Vec<u32> {
    let Ok(meta) = file.metadata() else {
        return Vec::new();
    };
    let Ok(locks) = std::fs::read_to_string("/proc/locks") else {
        return Vec::new();
    };
    holders_in(&locks, meta.dev(), meta.ino())
}

/// Parses `/proc/locks` lines such as
/// `3: FLOCK  ADVISORY  WRITE 4242 00:2f:1234 0 EOF` (device as hex
/// major:minor) for the holders of the lock on `(dev, ino)`; waiters
/// (`->` lines) are not holders.
fn holders_in(locks: &str, dev: u64, ino: u64) -> Vec<u32> {
    let want = format!(
        "{:02x}:{:02x}:{ino}",
        rustix::fs::major(dev),
        rustix::fs::minor(dev)
    );
    let mut pids: Vec<u32> = locks
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace().skip(1);
            if words.next()? != "FLOCK" {
                return None;
            }
            let mut words = words.skip(2);
            let pid = words.next()?.parse().ok()?;
            (words.next()? == want).then_some(pid)
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Waits until `op` (with `LOCK_NB`) succeeds on `file`, up to `timeout`:
/// polled, since a blocking flock cannot be given a deadline without a
/// signal.
fn flock_within(file: &File, op: libc::c_int, path: PathBuf, timeout: Duration) -> Result<()> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        if flock(file, op | libc::LOCK_NB).map_err(|e| StoreError::io(&path, e))? {
            return Ok(());
        }
        let waited = started.elapsed();
        if waited >= timeout {
            return Err(StoreError::LockTimeout {
                holders: lock_holders(file),
                path,
                waited_secs: waited.as_secs(),
            });
        }
        std::thread::sleep(pause.min(timeout - waited));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

impl StoreLock {
    /// Waits for and takes a shared lock, for at most
    /// [`DEFAULT_LOCK_TIMEOUT`].
    pub fn shared(dir: &Path, name: &str) -> Result<StoreLock> {
        Self::shared_within(dir, name, DEFAULT_LOCK_TIMEOUT)
    }

    /// Waits for and takes a shared lock, for at most `timeout`; then
    /// fails with [`StoreError::LockTimeout`], naming who holds it.
    pub fn shared_within(dir: &Path, name: &str, timeout: Duration) -> Result<StoreLock> {
        let file = open_lock(dir, name)?;
        flock_within(&file, libc::LOCK_SH, dir.join(name), timeout)?;
        Ok(StoreLock { _file: file })
    }

    /// Takes an exclusive lock if nobody holds the lock; `None` otherwise.
    pub fn try_exclusive(dir: &Path, name: &str) -> Result<Option<StoreLock>> {
        let file = open_lock(dir, name)?;
        let got = flock(&file, libc::LOCK_EX | libc::LOCK_NB)
            .map_err(|e| StoreError::io(dir.join(name), e))?;
        Ok(got.then_some(StoreLock { _file: file }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_times_out_naming_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(INGEST_LOCK);
        // Another process holds it exclusively (flock(1) from util-linux).
        let mut holder = std::process::Command::new("flock")
            .args(["-F", "-x"])
            .arg(&path)
            .args(["sleep", "30"])
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while StoreLock::try_exclusive(dir.path(), INGEST_LOCK)
            .unwrap()
            .is_some()
        {
            assert!(Instant::now() < deadline, "flock never took the lock");
            std::thread::sleep(Duration::from_millis(20));
        }
        let started = Instant::now();
        let err = StoreLock::shared_within(dir.path(), INGEST_LOCK, Duration::from_millis(300))
            .unwrap_err();
        let elapsed = started.elapsed();
        holder.kill().unwrap();
        holder.wait().unwrap();
        assert!(elapsed < Duration::from_secs(5), "waited {elapsed:?}");
        match &err {
            StoreError::LockTimeout { holders, .. } => {
                // flock(1) takes the lock in its own process, then execs sleep.
                assert_eq!(holders, &vec![holder.id()], "{err}");
            }
            other => panic!("expected a lock timeout, got {other}"),
        }
        assert!(err.to_string().contains(&holder.id().to_string()), "{err}");
    }

    #[test]
    fn lock_files_are_private_and_never_followed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        drop(StoreLock::shared(dir.path(), GC_LOCK).unwrap());
        let mode = std::fs::metadata(dir.path().join(GC_LOCK))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join(INGEST_LOCK)).unwrap();
        assert!(StoreLock::shared(dir.path(), INGEST_LOCK).is_err());
    }

    #[test]
    fn proc_locks_lines_are_parsed() {
        let dev = rustix::fs::makedev(0, 0x2f);
        let text = "1: POSIX  ADVISORY  WRITE 11 00:2f:99 0 EOF\n\
                    2: FLOCK  ADVISORY  WRITE 4242 00:2f:99 0 EOF\n\
                    2: -> FLOCK  ADVISORY  READ 4343 00:2f:99 0 EOF\n\
                    3: FLOCK  ADVISORY  READ 7 00:2f:100 0 EOF\n";
        assert_eq!(holders_in(text, dev, 99), vec![4242]);
    }

    #[test]
    fn shared_excludes_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let a = StoreLock::shared(dir.path(), INGEST_LOCK).unwrap();
        let _b = StoreLock::shared(dir.path(), INGEST_LOCK).unwrap();
        assert!(
            StoreLock::try_exclusive(dir.path(), INGEST_LOCK)
                .unwrap()
                .is_none()
        );
        drop(a);
        drop(_b);
        assert!(
            StoreLock::try_exclusive(dir.path(), INGEST_LOCK)
                .unwrap()
                .is_some()
        );
    }
}
