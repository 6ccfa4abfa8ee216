//! Debian packages fetched with `apt-get download` into a cache directory,
//! once: a package already in the cache is not fetched again.
//!
//! An exclusive `flock` on `CACHE/.lock` serialises fetches between builds
//! (and with the integration tests, which share the layout), and apt names
//! each file `NAME_VERSION_ARCH.deb` (the epoch's `:` as `%3a`), which is
//! how cached files are found again.

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Result, SystemError};

/// The default cache: `/var/cache/nexus/debs` for root, else
/// `$XDG_CACHE_HOME/nexus/debs` (default `~/.cache/nexus/debs`).
pub fn default_cache_dir() -> PathBuf {
    if is_root() {
        return PathBuf::from("/var/cache/nexus/debs");
    }
    if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("nexus/debs");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".cache/nexus/debs")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// An exclusive lock on the cache, released on drop.
struct CacheLock(File);

impl CacheLock {
    fn acquire(dir: &Path) -> Result<CacheLock> {
        let path = dir.join(".lock");
        // Never through a symlink planted in the cache, never truncating.
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| SystemError::Io {
                path: path.clone(),
                source: e,
            })?;
        // SAFETY: flock on a descriptor we own; blocks until the lock is ours.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(SystemError::Io {
                path,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(CacheLock(file))
    }
}

impl Drop for CacheLock {
    fn drop(&mut self) {
        // SAFETY: as above; closing the file would release it anyway.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// The cached `.deb` of `package` (at `version` if given; else the most
/// recently fetched), if any.
fn cached(dir: &Path, package: &str, version: Option<&str>) -> Option<PathBuf> {
    let prefix = match version {
        Some(v) => format!("{package}_{}_", v.replace(':', "%3a")),
        None => format!("{package}_"),
    };
    fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            // Debian package names hold no `_`, so the prefix is exact.
            n.starts_with(&prefix) && n.ends_with(".deb")
        })
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
}

/// The `.deb` of `package` (`version`, or apt's candidate), from the
/// cache or fetched into it.
pub fn fetch(cache: &Path, package: &str, version: Option<&str>) -> Result<PathBuf> {
    fs::create_dir_all(cache).map_err(|e| SystemError::Io {
        path: cache.to_path_buf(),
        source: e,
    })?;
    let _lock = CacheLock::acquire(cache)?;
    if let Some(found) = cached(cache, package, version) {
        tracing::info!("{package}: cached {}", found.display());
        return Ok(found);
    }
    let target = match version {
        Some(v) => format!("{package}={v}"),
        None => package.to_string(),
    };
    let mut cmd = Command::new("apt-get");
    cmd.current_dir(cache).arg("-q");
    if is_root() {
        // As root, apt would drop to `_apt`, which cannot write to the
        // cache directory; stay root.
        cmd.args(["-o", "APT::Sandbox::User=root"]);
    }
    cmd.args(["download", "--", &target]);
    tracing::info!("fetching {target} with apt-get download");
    let out = cmd.output().map_err(|e| SystemError::Fetch {
        package: target.clone(),
        message: format!("cannot run apt-get: {e}"),
    })?;
    if !out.status.success() {
        return Err(SystemError::Fetch {
            package: target,
            message: format!(
                "{}\n{}(is the name right? do apt's lists need `apt-get update`?)",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    cached(cache, package, version).ok_or_else(|| SystemError::Fetch {
        package: target,
        message: format!(
            "apt-get succeeded but left no {package}_*.deb in {}",
            cache.display()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache chosen through `NEXUS_CACHE` may hold a `.lock` an attacker
    /// planted as a symlink: it must not be followed (nor its target
    /// truncated).
    #[test]
    fn the_cache_lock_never_follows_a_planted_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        let cache = dir.path().join("cache");
        fs::create_dir(&cache).unwrap();
        std::os::unix::fs::symlink(&victim, cache.join(".lock")).unwrap();
        assert!(CacheLock::acquire(&cache).is_err());
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        fs::remove_file(cache.join(".lock")).unwrap();
        drop(CacheLock::acquire(&cache).unwrap());
    }
}
