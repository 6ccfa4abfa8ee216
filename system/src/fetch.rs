//! Debian packages fetched with `apt-get download` into a cache directory,
//! once: a package already in the cache is not fetched again, and is
//! reused only with the bytes apt's signed index named.
//!
//! An exclusive `flock` on `CACHE/.lock` serialises fetches between builds
//! (and with the integration tests, which share the layout), and apt names
//! each file `NAME_VERSION_ARCH.deb` (the epoch's `:` as `%3a`), which is
//! how cached files are found again.
//!
//! Every file is pinned ([`crate::pins`]): `apt-get download --print-uris`
//! gives the SHA256 of apt's (signed) index, which `CACHE/debs.lock`
//! records when the file is fetched; a cached file is reused only if it
//! still has those bytes. A cached file with no pin yet (another tool put
//! it there) is taken only if apt's index gives its name and hash now.
//! The build gets a private copy made while hashing ([`Fetched`]), never
//! the cache's file, which whoever can write the cache could replace
//! between the check and the graft.
//!
//! apt runs as the caller. As root it keeps its own privilege drop: it
//! downloads as `_apt` into a private directory `_apt` owns, and root
//! copies the file into the cache while hashing it, so nothing `_apt`
//! could still change is what the pin vouches for.

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Result, SystemError};
use crate::pins::{self, Pin, Pins};

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

/// What apt's index says of one package version: its file name, size and
/// SHA256.
#[derive(Debug, PartialEq, Eq)]
struct Indexed {
    file: String,
    pin: Pin,
}

/// Parses `apt-get download --print-uris`: `'URI' FILE SIZE SHA256:HEX`.
fn parse_print_uris(out: &str) -> Option<Indexed> {
    let line = out.lines().find(|l| l.starts_with('\''))?;
    let mut fields = line.rsplitn(4, ' ');
    let hash = fields.next()?;
    let size = fields.next()?.parse().ok()?;
    let file = fields.next()?;
    let sha256 = hash.strip_prefix("SHA256:")?.to_ascii_lowercase();
    let plain = !file.is_empty() && !file.contains('/') && file.ends_with(".deb");
    (plain && sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit())).then(|| {
        Indexed {
            file: file.to_string(),
            pin: Pin { sha256, size },
        }
    })
}

/// What apt's index says of `target` (`NAME` or `NAME=VERSION`); reads
/// only apt's local lists.
fn indexed(target: &str) -> Result<Indexed> {
    let fail = |message: String| SystemError::Fetch {
        package: target.to_string(),
        message,
    };
    let out = Command::new("apt-get")
        .args(["-q", "download", "--print-uris", "--", target])
        .output()
        .map_err(|e| fail(format!("cannot run apt-get: {e}")))?;
    if !out.status.success() {
        return Err(fail(format!(
            "{}\n{}(is the name right? do apt's lists need `apt-get update`?)",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    parse_print_uris(&String::from_utf8_lossy(&out.stdout)).ok_or_else(|| {
        fail(format!(
            "apt-get --print-uris gave no file with a SHA256:\n{}",
            String::from_utf8_lossy(&out.stdout)
        ))
    })
}

/// The version in a cached file's name `NAME_VERSION_ARCH.deb`.
fn version_in_name(name: &str) -> Option<String> {
    let stem = name.strip_suffix(".deb")?;
    let mut parts = stem.split('_');
    let (_, version, _) = (parts.next()?, parts.next()?, parts.next()?);
    Some(version.replace("%3a", ":"))
}

/// The pin a cached file must match: its own, or (none yet) what apt's
/// index says now, which is recorded once the file matched it.
fn pin_for_cached(path: &Path, pins: &Pins, package: &str) -> Result<(Pin, bool)> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Some(pin) = pins.get(&name) {
        return Ok((pin.clone(), false));
    }
    let version = version_in_name(&name).ok_or_else(|| SystemError::DebUnverified {
        file: path.to_path_buf(),
        message: "its name is not NAME_VERSION_ARCH.deb".into(),
    })?;
    let apt = indexed(&format!("{package}={version}")).map_err(|e| SystemError::DebUnverified {
        file: path.to_path_buf(),
        message: format!(
            "it is not pinned in {} and apt cannot vouch for it: {e}",
            pins::LOCK_FILE
        ),
    })?;
    if apt.file != name {
        return Err(SystemError::DebUnverified {
            file: path.to_path_buf(),
            message: format!("apt's index names that version {}", apt.file),
        });
    }
    Ok((apt.pin, true))
}

/// A fetched `.deb`: a private copy (in a directory only the caller can
/// enter) of exactly the bytes its pin names, removed on drop. The build
/// grafts this copy, not the cache's file, which whoever can write the
/// cache could replace once it was checked.
#[derive(Debug)]
pub struct Fetched {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Fetched {
    /// The copy.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for Fetched {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

/// Opens a file another user could have put in place (`_apt` in the
/// staging directory, a writer of the cache): never through a symlink
/// (which would have root read, and report the hash of, a file of its
/// choosing), and only a regular file (a FIFO would block root forever).
fn open_planted(path: &Path) -> std::io::Result<File> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(file)
}

/// Copies `path` privately while hashing it; refused unless it is `pin`.
fn private_copy(path: &Path, pin: &Pin) -> Result<Fetched> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| SystemError::Io { path: p, source }
    };
    let source = open_planted(path).map_err(io(path))?;
    let dir = tempfile::Builder::new()
        .prefix("nexus-deb-")
        .permissions(fs::Permissions::from_mode(0o700))
        .tempdir()
        .map_err(io(&std::env::temp_dir()))?;
    let copy = dir
        .path()
        .join(path.file_name().unwrap_or("package.deb".as_ref()));
    let sink = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&copy)
        .map_err(io(&copy))?;
    let got = pins::hash_copy(source, sink).map_err(io(path))?;
    if &got != pin {
        return Err(SystemError::DebMismatch {
            file: path.to_path_buf(),
            expected_sha256: pin.sha256.clone(),
            actual_sha256: got.sha256,
        });
    }
    Ok(Fetched {
        path: copy,
        _dir: dir,
    })
}

/// The `_apt` account apt drops to as root, if the system has one.
fn apt_user() -> Option<(u32, u32)> {
    nix::unistd::User::from_name("_apt")
        .ok()
        .flatten()
        .map(|u| (u.uid.as_raw(), u.gid.as_raw()))
}

/// Downloads `target` with apt into a private directory (owned by `_apt`
/// as root, so apt's sandbox stays on) and copies it into the cache,
/// checking it against apt's index; returns its path in the cache.
fn download(cache: &Path, pins: &mut Pins, target: &str) -> Result<(PathBuf, Pin)> {
    let fail = |message: String| SystemError::Fetch {
        package: target.to_string(),
        message,
    };
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SystemError::Io { path, source }
    };
    let expected = indexed(target)?;
    let staging = tempfile::Builder::new()
        .prefix("nexus-apt-")
        .permissions(fs::Permissions::from_mode(0o700))
        .tempdir()
        .map_err(io(&std::env::temp_dir()))?;
    if is_root()
        && let Some((uid, gid)) = apt_user()
    {
        std::os::unix::fs::chown(staging.path(), Some(uid), Some(gid))
            .map_err(io(staging.path()))?;
    }
    tracing::info!("fetching {target} with apt-get download");
    let out = Command::new("apt-get")
        .current_dir(staging.path())
        .args(["-q", "download", "--", target])
        .output()
        .map_err(|e| fail(format!("cannot run apt-get: {e}")))?;
    if !out.status.success() {
        return Err(fail(format!(
            "{}\n{}(is the name right? do apt's lists need `apt-get update`?)",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let fetched = staging.path().join(&expected.file);
    let source = open_planted(&fetched).map_err(|e| {
        fail(format!(
            "apt-get succeeded but left no {} ({e})",
            expected.file
        ))
    })?;
    // Copied (not moved) while hashing: the pin vouches for exactly the
    // bytes that land in the cache, in a file only the caller owns.
    let mut partial = tempfile::Builder::new()
        .prefix(".fetch-")
        .tempfile_in(cache)
        .map_err(io(cache))?;
    let got = pins::hash_copy(source, partial.as_file_mut()).map_err(io(&fetched))?;
    if got != expected.pin {
        return Err(SystemError::DebMismatch {
            file: fetched,
            expected_sha256: expected.pin.sha256,
            actual_sha256: got.sha256,
        });
    }
    let dest = cache.join(&expected.file);
    fs::set_permissions(partial.path(), fs::Permissions::from_mode(0o644))
        .map_err(io(partial.path()))?;
    partial.persist(&dest).map_err(|e| io(&dest)(e.error))?;
    pins.record(cache, &expected.file, expected.pin.clone())?;
    Ok((dest, expected.pin))
}

/// The `.deb` of `package` (`version`, or apt's candidate), from the
/// cache (checked against its pin) or fetched into it (and pinned), as a
/// private copy of the pinned bytes.
pub fn fetch(cache: &Path, package: &str, version: Option<&str>) -> Result<Fetched> {
    fs::create_dir_all(cache).map_err(|e| SystemError::Io {
        path: cache.to_path_buf(),
        source: e,
    })?;
    let _lock = CacheLock::acquire(cache)?;
    let mut pins = Pins::read(cache)?;
    if let Some(found) = cached(cache, package, version) {
        let (pin, new) = pin_for_cached(&found, &pins, package)?;
        let copy = private_copy(&found, &pin)?;
        if new {
            let name = found.file_name().unwrap_or_default().to_string_lossy();
            pins.record(cache, &name, pin)?;
        }
        tracing::info!("{package}: cached {}, SHA256 as pinned", found.display());
        return Ok(copy);
    }
    let target = match version {
        Some(v) => format!("{package}={v}"),
        None => package.to_string(),
    };
    let (path, pin) = download(cache, &mut pins, &target)?;
    private_copy(&path, &pin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn print_uris_lines_parse() {
        let out = "'http://deb.debian.org/debian/pool/main/h/hello/hello_2.10-3_amd64.deb' hello_2.10-3_amd64.deb 53080 SHA256:2e6e2f1a0007dc43bc91c273fd36e91e40a4f1c2765a03eca68b70a42103878a\n";
        assert_eq!(
            parse_print_uris(out),
            Some(Indexed {
                file: "hello_2.10-3_amd64.deb".into(),
                pin: Pin {
                    sha256: "2e6e2f1a0007dc43bc91c273fd36e91e40a4f1c2765a03eca68b70a42103878a"
                        .into(),
                    size: 53080
                }
            })
        );
        // No SHA256 (an older apt's MD5Sum), or a path for a name: refused.
        assert_eq!(parse_print_uris("'u' a_1_all.deb 5 MD5Sum:abcd\n"), None);
        assert_eq!(
            parse_print_uris(&out.replace(" hello_2", " ../hello_2")),
            None
        );
        assert_eq!(
            version_in_name("libc6_2.36-9%3a1_amd64.deb").as_deref(),
            Some("2.36-9:1")
        );
    }

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

    /// Whoever can write the cache may replace a file once it was checked
    /// against its pin: a build fetches every package before it grafts
    /// any, so the file it grafts must be the bytes the pin vouched for,
    /// not whatever the cache holds by then.
    #[test]
    fn a_cached_deb_swapped_after_its_check_is_never_used() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path();
        let name = "x_1_all.deb";
        fs::write(cache.join(name), b"the pinned bytes").unwrap();
        let mut pins = Pins::read(cache).unwrap();
        pins.record(cache, name, pins::pin_of(&cache.join(name)).unwrap())
            .unwrap();
        let got = fetch(cache, "x", Some("1")).unwrap();
        // The cache's writer swaps the file in before the graft reads it.
        let planted = cache.join(".planted");
        fs::write(&planted, b"other bytes").unwrap();
        fs::rename(&planted, cache.join(name)).unwrap();
        let path: &Path = got.as_ref();
        assert_eq!(fs::read(path).unwrap(), b"the pinned bytes");
    }

    /// `_apt` owns the staging directory apt downloads into, and anyone
    /// who can write the cache its files: a symlink there must not have
    /// root read (and name the SHA256 of) a file of its choosing, nor a
    /// FIFO block the build forever.
    #[test]
    fn planted_symlinks_and_fifos_are_never_read() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        fs::write(&secret, b"root only").unwrap();
        let link = dir.path().join("x_1_all.deb");
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        assert!(open_planted(&link).is_err());
        let fifo = dir.path().join("y_1_all.deb");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(open_planted(&fifo).is_err());
        fs::remove_file(&link).unwrap();
        fs::write(&link, b"a deb").unwrap();
        assert!(open_planted(&link).is_ok());
        // Through fetch: a pinned name that is now a FIFO fails at once,
        // not holding the cache's lock forever.
        let cache = dir.path().join("cache");
        fs::create_dir(&cache).unwrap();
        let mut pins = Pins::read(&cache).unwrap();
        pins.record(&cache, "y_1_all.deb", pins::pin_of(&link).unwrap())
            .unwrap();
        nix::unistd::mkfifo(
            &cache.join("y_1_all.deb"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(fetch(&cache, "y", Some("1")).is_err()));
        let refused = rx.recv_timeout(std::time::Duration::from_secs(10));
        assert_eq!(refused, Ok(true), "fetch must refuse a FIFO, not block");
    }

    /// With no version asked for, the cache's most recently modified file
    /// of the package is taken, not apt's candidate: whoever can write the
    /// cache can touch an older pinned (or still indexed) version and have
    /// it built instead of a newer one (a rollback), and a security update
    /// is never fetched once an older version is cached. Fixing it needs
    /// apt's candidate at every build (`indexed`), which changes the
    /// fetch-once design: left for a decision.
    #[test]
    #[ignore = "rollback through the cache: the fix changes the fetch-once design"]
    fn an_older_cached_version_is_not_taken_for_the_candidate() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path();
        let mut pins = Pins::read(cache).unwrap();
        for (name, bytes) in [("x_1_all.deb", b"old"), ("x_2_all.deb", b"new")] {
            fs::write(cache.join(name), bytes).unwrap();
            pins.record(cache, name, pins::pin_of(&cache.join(name)).unwrap())
                .unwrap();
        }
        // The cache's writer makes the old version the newest file.
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
        File::options()
            .write(true)
            .open(cache.join("x_1_all.deb"))
            .unwrap()
            .set_modified(later)
            .unwrap();
        let got = fetch(cache, "x", None).unwrap();
        assert_eq!(fs::read(got.path()).unwrap(), b"new");
    }

    /// `debs.lock` sits in the cache: whoever can write the cache could
    /// replace it with pins of their own file and have that reused as
    /// "pinned". A lock file the caller does not own (or that others can
    /// write) must not vouch for anything.
    #[test]
    fn a_lock_file_planted_by_another_user_pins_nothing() {
        if crate::trust::euid() != 0 {
            return; // planting another user's file needs root
        }
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path();
        let name = "x_1_all.deb";
        fs::write(cache.join(name), b"the attacker's bytes").unwrap();
        // The attacker writes the lock file in the shared cache.
        let planted = cache.join(".planted");
        let pin = pins::pin_of(&cache.join(name)).unwrap();
        fs::write(
            &planted,
            format!(
                "# nexus debs.lock v1: SHA256 SIZE FILE\n{} {} {name}\n",
                pin.sha256, pin.size
            ),
        )
        .unwrap();
        std::os::unix::fs::lchown(&planted, Some(65534), Some(65534)).unwrap();
        fs::rename(&planted, cache.join(pins::LOCK_FILE)).unwrap();
        // (apt's index knows no `x`: only the planted pin could vouch.)
        assert!(fetch(cache, "x", Some("1")).is_err());
    }
}
