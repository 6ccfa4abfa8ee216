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
//! can leave the store locked.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::error::{Result, StoreError};

/// Lock file taken by writers of unindexed packs.
pub const INGEST_LOCK: &str = "ingest.lock";
/// Lock file serialising garbage collections.
pub const GC_LOCK: &str = "gc.lock";

/// A held lock; released on drop.
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
}

fn open_lock(dir: &Path, name: &str) -> Result<File> {
    let path = dir.join(name);
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
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

impl StoreLock {
    /// Waits for and takes a shared lock.
    pub fn shared(dir: &Path, name: &str) -> Result<StoreLock> {
        let file = open_lock(dir, name)?;
        flock(&file, libc::LOCK_SH).map_err(|e| StoreError::io(dir.join(name), e))?;
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
