//! Debian packages fetched with `apt-get download` into a cache directory,
//! once per version: a version already in the cache is not fetched again,
//! and is reused only with the bytes apt's signed index named.
//!
//! The version (`choose`) is the one a recipe asks for, else apt's
//! candidate, which apt's local index gives at every fetch (`apt-get
//! download --print-uris`, no network; a build asks once for all its
//! packages, [`Candidates`], and decides what to reuse by the same
//! answer), so that a security update is taken once `apt-get update` has
//! seen it. What the cache holds never decides it: whoever can write the
//! cache would otherwise have an older version built (a rollback) by
//! touching or planting a file. Only when apt's index knows no package of
//! that name (an offline machine with only the cache) is it the newest
//! version `debs.lock` pins, by Debian's ordering ([`crate::version`]),
//! and that file must still be there: the build fails rather than take an
//! older one. No file's modification time is ever read, and no other
//! architecture's file than this machine's (dpkg's) or `all` is taken
//! without apt naming it.
//!
//! The cache directory must be safe for the caller ([`crate::trust`]:
//! owned by root or the caller, writable by no one else, nor is any
//! directory above it unless sticky). Whoever else could write it could
//! move `debs.lock` aside and back, rolling back the pins an offline build
//! chooses from, or hold a planted `.lock` and stall every build.
//!
//! An exclusive `flock` on `CACHE/.lock` serialises fetches between builds
//! (and with the integration tests, which share the layout). apt names
//! each file `NAME_VERSION_ARCH.deb` (the epoch's `:` as `%3a`), and a
//! cached file is found by exactly the name apt's index gives or
//! `debs.lock` pins, never by another spelling of a version.
//!
//! Every file is pinned ([`crate::pins`]): `apt-get download --print-uris`
//! gives the SHA256 of apt's (signed) index, which `CACHE/debs.lock`
//! records when the file is fetched; a cached file is reused only if it
//! still has those bytes. A cached file with no pin yet (another tool put
//! it there) is taken only if it is the one apt's index names now, with
//! that hash.
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

// A file another user could have put in place (`_apt` in the staging
// directory, a writer of the cache) is opened never through a symlink and
// only if regular: a FIFO would block root forever.
use nexus_store::regular::open_regular_nofollow;

use crate::error::{Result, SystemError};
use crate::pins::{self, Pin, Pins};

mod apt;
mod choose;

use apt::indexed;
pub use apt::{Candidates, DebName, Indexed, parse_candidates, parse_deb_name, parse_print_uris};
use choose::{Choice, choose, native_arch};

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

/// Copies `path` privately while hashing it; refused unless it is `pin`.
fn private_copy(path: &Path, pin: &Pin) -> Result<Fetched> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| SystemError::Io { path: p, source }
    };
    let source = open_regular_nofollow(path).map_err(io(path))?;
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
    let source = open_regular_nofollow(&fetched).map_err(|e| {
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
/// private copy of the pinned bytes. Which file: see `choose`.
pub fn fetch(cache: &Path, package: &str, version: Option<&str>) -> Result<Fetched> {
    fetch_with(cache, package, version, &Candidates::default())
}

/// As [`fetch`], with the candidates apt gave already (a build asks once
/// for all its packages): the very candidate the build chose by is the
/// one fetched, and apt is not asked again.
pub fn fetch_with(
    cache: &Path,
    package: &str,
    version: Option<&str>,
    candidates: &Candidates,
) -> Result<Fetched> {
    fs::create_dir_all(cache).map_err(|e| SystemError::Io {
        path: cache.to_path_buf(),
        source: e,
    })?;
    crate::trust::check(cache, crate::trust::euid())?;
    let _lock = CacheLock::acquire(cache)?;
    let mut pins = Pins::read(cache)?;
    // Anything at a name counts as cached, a symlink or a FIFO too: it is
    // then refused (by `private_copy`), never passed over for another file.
    let present = |name: &str| {
        !matches!(fs::symlink_metadata(cache.join(name)),
                  Err(e) if e.kind() == std::io::ErrorKind::NotFound)
    };
    let native = native_arch();
    match choose(
        package,
        version,
        &pins,
        &present,
        native.as_deref(),
        |target| candidates.answer(target),
    )? {
        Choice::Cached { file, pin, record } => {
            let path = cache.join(&file);
            let copy = private_copy(&path, &pin)?;
            if record {
                pins.record(cache, &file, pin)?;
            }
            tracing::info!("{package}: cached {}, SHA256 as pinned", path.display());
            Ok(copy)
        }
        Choice::Download(target) => {
            let (path, pin) = download(cache, &mut pins, &target)?;
            private_copy(&path, &pin)
        }
    }
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
        assert!(open_regular_nofollow(&link).is_err());
        let fifo = dir.path().join("y_1_all.deb");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(open_regular_nofollow(&fifo).is_err());
        fs::remove_file(&link).unwrap();
        fs::write(&link, b"a deb").unwrap();
        assert!(open_regular_nofollow(&link).is_ok());
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
    /// of the package was taken, not apt's candidate: whoever can write the
    /// cache could touch an older pinned version and have it built instead
    /// of a newer one (a rollback), and a security update was never
    /// fetched once an older version was cached. apt's index knows no `x`,
    /// so this takes the newest pinned version by Debian's ordering; apt's
    /// candidate, when it has one, is `choose`'s (tests below).
    #[test]
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

    /// Once the offline choice has a newest pinned version, the cache's
    /// writer can only make the build fail, not take an older one: not by
    /// deleting the newest file, nor by altering it, nor by putting a
    /// symlink to the older one in its place.
    #[test]
    fn offline_the_newest_pinned_version_is_never_traded_for_an_older_one() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path();
        let mut pins = Pins::read(cache).unwrap();
        for (name, bytes) in [("x_1.9_all.deb", b"old"), ("x_1.10_all.deb", b"new")] {
            fs::write(cache.join(name), bytes).unwrap();
            pins.record(cache, name, pins::pin_of(&cache.join(name)).unwrap())
                .unwrap();
        }
        // 1.10 is newer than 1.9, which sorts after it as text.
        assert_eq!(
            fs::read(fetch(cache, "x", None).unwrap().path()).unwrap(),
            b"new"
        );
        let newest = cache.join("x_1.10_all.deb");
        fs::write(&newest, b"altered").unwrap();
        assert!(matches!(
            fetch(cache, "x", None),
            Err(SystemError::DebMismatch { .. })
        ));
        fs::remove_file(&newest).unwrap();
        std::os::unix::fs::symlink("x_1.9_all.deb", &newest).unwrap();
        assert!(matches!(
            fetch(cache, "x", None),
            Err(SystemError::Io { .. })
        ));
        fs::remove_file(&newest).unwrap();
        assert!(matches!(
            fetch(cache, "x", None),
            Err(SystemError::DebNewestMissing { file, .. }) if file == "x_1.10_all.deb"
        ));
        // An unpinned file, however new its name, is no candidate.
        fs::write(cache.join("x_9_all.deb"), b"planted").unwrap();
        assert!(matches!(
            fetch(cache, "x", None),
            Err(SystemError::DebNewestMissing { .. })
        ));
    }

    /// A cache others may write (group- or world-writable, not sticky, or
    /// owned by another user) is refused before anything in it is read:
    /// its writers could swap `debs.lock` for an older one of the owner's.
    #[test]
    fn a_cache_others_can_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        fs::create_dir(&cache).unwrap();
        for mode in [0o777, 0o775, 0o757] {
            fs::set_permissions(&cache, fs::Permissions::from_mode(mode)).unwrap();
            match fetch(&cache, "x", Some("1")) {
                Err(SystemError::Untrusted(_)) => {}
                other => panic!("mode {mode:o}: {:?}", other.map(|f| f.path().to_owned())),
            }
        }
        if crate::trust::euid() == 0 {
            fs::set_permissions(&cache, fs::Permissions::from_mode(0o755)).unwrap();
            std::os::unix::fs::chown(&cache, Some(65534), None).unwrap();
            assert!(matches!(
                fetch(&cache, "x", Some("1")),
                Err(SystemError::Untrusted(_))
            ));
        }
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
