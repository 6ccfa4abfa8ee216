//! Real Debian packages, fetched at test time.
//!
//! `.deb` files are downloaded with `apt-get download` into a cache directory
//! that outlives test runs (`$NEXUS_TEST_CACHE`, default
//! `/var/tmp/nexus-test-debs`), so a package is fetched once per machine. An
//! exclusive `flock` on `CACHE/.lock` serialises fetches between the test
//! threads and test binaries that run at the same time.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The cache directory for downloaded packages.
pub fn cache_dir() -> PathBuf {
    let dir = std::env::var_os("NEXUS_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/nexus-test-debs"));
    fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create the package cache {}: {e}", dir.display()));
    dir
}

/// An exclusive lock on the cache, released on drop.
struct CacheLock(File);

impl CacheLock {
    fn acquire(dir: &Path) -> CacheLock {
        let path = dir.join(".lock");
        let file =
            File::create(&path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        // SAFETY: flock on a descriptor we own; blocks until the lock is ours.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(
            rc,
            0,
            "flock {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        CacheLock(file)
    }
}

impl Drop for CacheLock {
    fn drop(&mut self) {
        // SAFETY: as above; closing the file would release it anyway.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// The newest cached `.deb` of package `name`, if any. Debian file names are
/// `NAME_VERSION_ARCH.deb` and package names never contain `_`.
fn cached(dir: &Path, name: &str) -> Option<PathBuf> {
    let prefix = format!("{name}_");
    fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.starts_with(&prefix) && n.ends_with(".deb")
        })
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
}

/// Runs a command, returning its combined output on failure.
fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed with {}:\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn apt_get(args: &[&str], cwd: &Path) -> Result<(), String> {
    let mut cmd = Command::new("apt-get");
    cmd.current_dir(cwd).arg("-q");
    if crate::is_root() {
        // Downloading as root makes apt drop privileges to `_apt`, which cannot
        // write to our cache directory and complains; stay root instead.
        cmd.args(["-o", "APT::Sandbox::User=root"]);
    }
    cmd.args(args);
    run(&mut cmd)
}

/// True when apt has package lists (otherwise `apt-get download` can find
/// nothing and `apt-get update` is needed first).
fn apt_lists_present() -> bool {
    fs::read_dir("/var/lib/apt/lists")
        .map(|rd| {
            rd.filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
        })
        .unwrap_or(false)
}

/// Returns the `.deb` files of the named packages (in the same order),
/// downloading the ones not cached yet. Panics with apt's output if a package
/// cannot be fetched.
pub fn fetch_debs(names: &[&str]) -> Vec<PathBuf> {
    let dir = cache_dir();
    let _lock = CacheLock::acquire(&dir);
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| cached(&dir, n).is_none())
        .collect();
    if !missing.is_empty() {
        if !apt_lists_present() {
            apt_get(&["update"], &dir).unwrap_or_else(|e| panic!("apt-get update: {e}"));
        }
        let mut args = vec!["download"];
        args.extend(&missing);
        if let Err(first) = apt_get(&args, &dir) {
            // Stale lists point at versions the mirror no longer has: refresh
            // them once and try again.
            apt_get(&["update"], &dir).unwrap_or_else(|e| {
                panic!(
                    "downloading {missing:?} failed:\n{first}\nand apt-get update failed too:\n{e}"
                )
            });
            apt_get(&args, &dir).unwrap_or_else(|e| {
                panic!(
                    "cannot download the test packages {missing:?} even after apt-get update:\n{e}"
                )
            });
        }
    }
    names
        .iter()
        .map(|n| {
            cached(&dir, n).unwrap_or_else(|| {
                panic!(
                    "apt-get download {n} succeeded but no {n}_*.deb is in {}",
                    dir.display()
                )
            })
        })
        .collect()
}

/// Extracts the file system tree of `deb` into `dest` (`dpkg-deb -x`; `dest`
/// is created if needed, and existing content is merged with).
pub fn unpack_deb(deb: &Path, dest: &Path) {
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dest))
        .unwrap_or_else(|e| panic!("unpacking {}: {e}", deb.display()));
}

/// A control field of `deb` (e.g. `Package`, `Version`).
pub fn deb_field(deb: &Path, field: &str) -> String {
    let out = Command::new("dpkg-deb")
        .arg("-f")
        .arg(deb)
        .arg(field)
        .output()
        .unwrap_or_else(|e| panic!("cannot run dpkg-deb: {e}"));
    assert!(
        out.status.success(),
        "dpkg-deb -f {} {field}: {}",
        deb.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("dpkg-deb printed non-UTF-8")
        .trim()
        .to_string()
}

/// A package unpacked in the `.../App/Version` layout `nip add` understands.
#[derive(Clone, Debug)]
pub struct Unpacked {
    /// Debian package name, used as the App name.
    pub name: String,
    /// Debian version, used as the Version.
    pub version: String,
    /// `root/NAME/VERSION`.
    pub dir: PathBuf,
}

impl Unpacked {
    /// `name/version`, as `nip` spells a package.
    pub fn spec(&self) -> String {
        format!("{}/{}", self.name, self.version)
    }

    /// The directory as an argument.
    pub fn arg(&self) -> &OsStr {
        self.dir.as_os_str()
    }
}

/// Unpacks `deb` into `root/NAME/VERSION`, named after its control fields.
pub fn unpack_deb_as_app(deb: &Path, root: &Path) -> Unpacked {
    let name = deb_field(deb, "Package");
    let version = deb_field(deb, "Version");
    let dir = root.join(&name).join(&version);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    unpack_deb(deb, &dir);
    Unpacked { name, version, dir }
}

/// Fetches and unpacks several packages in the `App/Version` layout under
/// `root`.
pub fn fetch_and_unpack(names: &[&str], root: &Path) -> Vec<Unpacked> {
    fetch_debs(names)
        .iter()
        .map(|deb| unpack_deb_as_app(deb, root))
        .collect()
}
