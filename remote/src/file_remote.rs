//! A `file://` remote's directory as a publisher writes it: only a
//! directory nobody else can change, and one publisher at a time.
//!
//! The objects are written by path (object_store's local backend creates
//! `packs/`, `meta/` and `manifests/` and follows symlinks in them), so a
//! user who could write the directory, or swap a link into the way to it,
//! would choose where root creates files: a pack in `/etc/cron.d`, a
//! manifest in a system directory. A web server serves the directory; it
//! never needs to write it. So the directory and its three object
//! directories must be real directories owned by the publisher (or root)
//! and writable by no one else, and root also requires the way to it to be
//! root's alone ([`nexus_store::root_way`]). Once checked, nobody else can
//! change what the paths reach.

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{RemoteError, Result};

/// The directories objects are written into, below the remote's own.
const OBJECT_DIRS: [&str; 3] = ["packs", "meta", "manifests"];

/// The lease file, in the remote's directory.
const LEASE_FILE: &str = ".nexus-publish.lock";

/// How long a publisher waits for another to end before it gives up.
pub const LEASE_WAIT: Duration = Duration::from_secs(60);

/// How often a waiting publisher tries the lease again.
const LEASE_POLL: Duration = Duration::from_millis(100);

/// Makes `dir` ready to publish into (creating it and its object
/// directories when missing) after checking that nobody but this process's
/// user, or root, can change what it reaches; returns the directory's
/// canonical path.
pub fn ready(dir: &Path) -> Result<PathBuf> {
    let euid = rustix::process::geteuid().as_raw();
    let dir = if euid == 0 {
        nexus_store::root_way::resolve_checked(dir).map_err(|e| RemoteError::UnsafeDir {
            path: dir.to_path_buf(),
            why: e.to_string(),
        })?
    } else {
        std::path::absolute(dir).map_err(|e| RemoteError::io(dir, e))?
    };
    make_dir(&dir, euid)?;
    for name in OBJECT_DIRS {
        make_dir(&dir.join(name), euid)?;
    }
    Ok(dir)
}

/// Creates directory `path` if missing, then refuses it unless it is a
/// directory (not a symlink) owned by `euid` or root that nobody else can
/// write.
fn make_dir(path: &Path, euid: u32) -> Result<()> {
    match std::fs::DirBuilder::new().mode(0o755).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(RemoteError::io(path, e)),
    }
    let meta = std::fs::symlink_metadata(path).map_err(|e| RemoteError::io(path, e))?;
    let refuse = |why: String| {
        Err(RemoteError::UnsafeDir {
            path: path.to_path_buf(),
            why,
        })
    };
    if !meta.file_type().is_dir() {
        return refuse("not a directory (a symlink is never followed here)".into());
    }
    if meta.uid() != euid && meta.uid() != 0 {
        return refuse(format!("owned by uid {}", meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        return refuse(format!(
            "writable by its group or by others (mode {:04o})",
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// The publish lease of the `file://` remote in `dir` (checked by
/// [`ready`]): an exclusive lock on `DIR/.nexus-publish.lock`, held until
/// the returned file is dropped or the process ends. The file is the
/// publisher's alone (mode 0600), so no other user can open it to hold
/// the lock; another publisher holding it longer than `wait` is an error
/// naming the file, never an endless wait.
pub fn lease(dir: &Path, wait: Duration) -> Result<File> {
    let path = dir.join(LEASE_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| RemoteError::io(&path, e))?;
    // A lease file an older publisher made readable to all: narrowed, so
    // that from now on only its owner opens it.
    let meta = file.metadata().map_err(|e| RemoteError::io(&path, e))?;
    let euid = rustix::process::geteuid().as_raw();
    if meta.uid() != euid || !meta.file_type().is_file() {
        return Err(RemoteError::UnsafeDir {
            path,
            why: format!("the lease file is owned by uid {}", meta.uid()),
        });
    }
    if meta.mode() & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| RemoteError::io(&path, e))?;
    }
    let deadline = Instant::now() + wait;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(LEASE_POLL);
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(RemoteError::Invalid(format!(
                    "{}: another publish has held this remote for over {} s",
                    path.display(),
                    wait.as_secs()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(RemoteError::io(&path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn missing_directories_are_made_and_a_linked_object_directory_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let remote = tmp.path().join("remote");
        let ready_dir = ready(&remote).unwrap();
        for name in OBJECT_DIRS {
            assert!(ready_dir.join(name).is_dir(), "{name} was not made");
        }

        let other = tmp.path().join("other");
        std::fs::create_dir(&other).unwrap();
        let linked = tmp.path().join("linked");
        std::fs::create_dir(&linked).unwrap();
        std::os::unix::fs::symlink(&other, linked.join("packs")).unwrap();
        match ready(&linked) {
            Err(RemoteError::UnsafeDir { path, why }) => {
                assert_eq!(path, linked.join("packs"));
                assert!(why.contains("symlink"), "{why}");
            }
            other => panic!("a symlinked packs/ was taken: {other:?}"),
        }
        assert_eq!(std::fs::read_dir(&other).unwrap().count(), 0);
    }

    #[test]
    fn a_directory_others_can_write_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let open = tmp.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        match ready(&open) {
            Err(RemoteError::UnsafeDir { path, why }) => {
                assert_eq!(path, open);
                assert!(why.contains("writable"), "{why}");
            }
            other => panic!("a world-writable remote directory was taken: {other:?}"),
        }
        // Its sticky bit does not make it safe to write objects into.
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(matches!(ready(&open), Err(RemoteError::UnsafeDir { .. })));
    }

    #[test]
    fn a_held_lease_is_waited_for_then_refused_and_is_its_owners_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ready(tmp.path()).unwrap();
        let held = lease(&dir, Duration::ZERO).unwrap();
        let mode = held.metadata().unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600, "the lease file is open to others");
        let started = Instant::now();
        let err = lease(&dir, Duration::from_millis(300)).unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(err.to_string().contains("another publish"), "{err}");
        drop(held);
        lease(&dir, Duration::ZERO).unwrap();
    }

    /// A lease file opened by name through a planted symlink would have
    /// the publisher create the file it names (`/etc/nologin`, anywhere).
    #[test]
    fn the_lease_never_follows_a_planted_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        let remote = dir.path().join("remote");
        std::fs::create_dir(&remote).unwrap();
        std::os::unix::fs::symlink(&victim, remote.join(LEASE_FILE)).unwrap();
        assert!(lease(&remote, Duration::ZERO).is_err());
        assert!(
            std::fs::symlink_metadata(&victim).is_err(),
            "the lease created the symlink's target"
        );
        std::fs::remove_file(remote.join(LEASE_FILE)).unwrap();
        drop(lease(&remote, Duration::ZERO).unwrap());
        assert!(remote.join(LEASE_FILE).is_file());
    }
}
