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

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nexus_graft::control::split_version;
// A file another user could have put in place (`_apt` in the staging
// directory, a writer of the cache) is opened never through a symlink and
// only if regular: a FIFO would block root forever.
use nexus_store::regular::open_regular_nofollow;

use crate::error::{Result, SystemError};
use crate::pins::{self, Pin, Pins};
use crate::version;

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

/// What apt's index says of one package version: its file name, size and
/// SHA256. Public (hidden) for the fuzz target (`system/fuzz`) only.
#[doc(hidden)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Indexed {
    /// The file name apt gives it, `NAME_VERSION_ARCH.deb`.
    pub file: String,
    /// Its size and SHA256 (lower-case), as apt's index gives them.
    pub pin: Pin,
}

/// Parses `apt-get download --print-uris`: `'URI' FILE SIZE SHA256:HEX`.
/// Public (hidden) for the fuzz target (`system/fuzz`) only.
#[doc(hidden)]
pub fn parse_print_uris(out: &str) -> Option<Indexed> {
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

/// Whether apt's complaint (in the C locale) is that it knows no package
/// of the name asked for, rather than that something failed.
fn apt_knows_no_such_package(stderr: &str) -> bool {
    stderr.lines().any(|l| not_located(l).is_some())
}

/// The package of apt's complaint that it knows no package of a name, if
/// `line` is one.
fn not_located(line: &str) -> Option<&str> {
    line.strip_prefix("E: Unable to locate package ")
        .map(str::trim_end)
}

/// The package of apt's complaint that a name it knows has no candidate
/// to download (a virtual package, or one pinned out), if `line` is one.
fn without_candidate(line: &str) -> Option<&str> {
    line.strip_prefix("E: Can't select candidate version from package ")?
        .strip_suffix(" as it has no candidate")
}

/// What apt's index says of `target` (`NAME` or `NAME=VERSION`), or `None`
/// if it knows no package of that name (or there is no apt-get: a machine
/// with only the cache); reads only apt's local lists.
fn query_index(target: &str) -> Result<Option<Indexed>> {
    let fail = |message: String| SystemError::Fetch {
        package: target.to_string(),
        message,
    };
    let out = match Command::new("apt-get")
        // apt's messages untranslated: "no such package" is told from a
        // failure by its words, and only that may send a build to the
        // cache's newest pinned file instead of apt's candidate.
        .env("LC_ALL", "C")
        .env_remove("LANGUAGE")
        .args(["-q", "download", "--print-uris", "--", target])
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!("{target}: cannot run apt-get ({e}), so no index knows it");
            return Ok(None);
        }
        Err(e) => return Err(fail(format!("cannot run apt-get: {e}"))),
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if apt_knows_no_such_package(&stderr) {
            return Ok(None);
        }
        if stderr.lines().any(|l| without_candidate(l).is_some()) {
            return Err(fail(
                "apt's index knows the name but has no package of it to download (a \
                 virtual package? name one that provides it, or store it first)"
                    .into(),
            ));
        }
        return Err(fail(format!(
            "{}\n{stderr}(is the name right? do apt's lists need `apt-get update`?)",
            out.status,
        )));
    }
    parse_print_uris(&String::from_utf8_lossy(&out.stdout))
        .map(Some)
        .ok_or_else(|| {
            fail(format!(
                "apt-get --print-uris gave no file with a SHA256:\n{}",
                String::from_utf8_lossy(&out.stdout)
            ))
        })
}

/// What apt's index says of `target`, which it must know.
fn indexed(target: &str) -> Result<Indexed> {
    query_index(target)?.ok_or_else(|| SystemError::Fetch {
        package: target.to_string(),
        message: "apt's index does not know it (is the name right? do apt's lists need \
                  `apt-get update`?)"
            .into(),
    })
}

/// apt's candidates of several packages, asked of its local index in one
/// `apt-get download --print-uris` (no network): a build asks once for
/// every package it takes the candidate of, where asking per package
/// costs apt's start-up (about 0.6 s) each time.
#[derive(Debug, Default)]
pub struct Candidates {
    /// By package: apt's candidate, or `None` if apt knows no such package;
    /// a package apt knows without a candidate (a virtual package) is not
    /// here: it offers nothing to weigh, and fetching it asks apt again,
    /// which refuses it.
    asked: BTreeMap<String, Option<Indexed>>,
}

impl Candidates {
    /// Asks apt's local index for the candidates of `packages` (names
    /// checked by the recipe parser: they reach apt as arguments). A
    /// package apt knows nothing of has none; no apt-get at all (a machine
    /// with only the cache) means none has one. Any other complaint of
    /// apt's is an error: the cache does not stand in for a candidate apt
    /// could not give.
    pub fn query(packages: &[&str]) -> Result<Candidates> {
        let mut packages = packages.to_vec();
        packages.sort_unstable();
        packages.dedup();
        if packages.is_empty() {
            return Ok(Candidates::default());
        }
        let fail = |message: String| SystemError::Fetch {
            package: packages.join(" "),
            message,
        };
        let out = match Command::new("apt-get")
            // Untranslated, as `query_index`: "no such package" is told
            // from a failure by its words.
            .env("LC_ALL", "C")
            .env_remove("LANGUAGE")
            .args(["-q", "download", "--print-uris", "--"])
            .args(&packages)
            .output()
        {
            Ok(out) => out,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!("cannot run apt-get ({e}), so no index knows {packages:?}");
                return Ok(Candidates {
                    asked: packages.iter().map(|p| (p.to_string(), None)).collect(),
                });
            }
            Err(e) => return Err(fail(format!("cannot run apt-get: {e}"))),
        };
        let stderr = String::from_utf8_lossy(&out.stderr);
        parse_candidates(
            &packages,
            &String::from_utf8_lossy(&out.stdout),
            &stderr,
            out.status.success(),
        )
        .map(|asked| Candidates { asked })
        .map_err(|why| {
            fail(format!(
                "{why} ({})\n{stderr}(are the names right? do apt's lists need `apt-get \
                 update`?)",
                out.status
            ))
        })
    }

    /// The version (its epoch kept) of apt's candidate of `package`, or
    /// `None` if apt's index knows no such package or it was not asked.
    pub fn version(&self, package: &str) -> Option<String> {
        let indexed = self.asked.get(package)?.as_ref()?;
        parse_deb_name(&indexed.file).map(|n| n.version)
    }

    /// Candidates as apt would have answered: each package's file, or
    /// `None` for one apt knows nothing of (for tests of the decisions
    /// made on them).
    #[cfg(test)]
    pub(crate) fn answered<'a>(
        answers: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
    ) -> Candidates {
        let pin = Pin {
            sha256: "00".repeat(32),
            size: 0,
        };
        Candidates {
            asked: answers
                .into_iter()
                .map(|(package, file)| {
                    let indexed = file.map(|file| Indexed {
                        file: file.to_string(),
                        pin: pin.clone(),
                    });
                    (package.to_string(), indexed)
                })
                .collect(),
        }
    }

    /// What apt's index says of `target` (`NAME` or `NAME=VERSION`): the
    /// answer already had for a package asked, else apt asked now.
    fn answer(&self, target: &str) -> Result<Option<Indexed>> {
        match self.asked.get(target) {
            Some(answer) => Ok(answer.clone()),
            None => query_index(target),
        }
    }
}

/// Reads what `apt-get download --print-uris -- PACKAGES...` printed (in
/// the C locale) into each package's candidate, or `None` for a package
/// apt says it cannot locate. apt takes a name that is no package as a
/// pattern and may print files of other packages: only a file of the
/// very package asked for counts. A package apt knows without a candidate
/// ("has no candidate": a virtual package, or one pinned out) is left out
/// of the answer. A package asked that gets none of these is an error, as
/// is any other `E:` line when apt failed. Public (hidden) for the fuzz
/// target (`system/fuzz`) only.
#[doc(hidden)]
pub fn parse_candidates(
    packages: &[&str],
    stdout: &str,
    stderr: &str,
    success: bool,
) -> std::result::Result<BTreeMap<String, Option<Indexed>>, String> {
    let mut found: BTreeMap<&str, Indexed> = BTreeMap::new();
    for line in stdout.lines().filter(|l| l.starts_with('\'')) {
        let indexed =
            parse_print_uris(line).ok_or_else(|| format!("a file without a SHA256: {line}"))?;
        let name =
            parse_deb_name(&indexed.file).ok_or_else(|| format!("an odd file name: {line}"))?;
        let Some(package) = packages.iter().find(|p| **p == name.package) else {
            continue; // another package, of a name apt took as a pattern
        };
        if let Some(other) = found.get(package).filter(|other| **other != indexed) {
            return Err(format!(
                "two files for {package}: {} and {}",
                other.file, indexed.file
            ));
        }
        found.insert(package, indexed);
    }
    let (mut unknown, mut no_candidate) = (Vec::new(), Vec::new());
    for line in stderr.lines().filter(|l| l.starts_with("E: ")) {
        match (not_located(line), without_candidate(line)) {
            (Some(package), _) => unknown.push(package),
            (_, Some(package)) => no_candidate.push(package),
            // Only apt's failing makes its complaints fatal.
            _ if !success => return Err(format!("apt failed: {line}")),
            _ => {}
        }
    }
    if !success && unknown.is_empty() && no_candidate.is_empty() {
        return Err("apt failed".into());
    }
    let mut answers = BTreeMap::new();
    for package in packages {
        match (found.remove(package), unknown.contains(package)) {
            (Some(indexed), _) => answers.insert(package.to_string(), Some(indexed)),
            (None, true) => answers.insert(package.to_string(), None),
            (None, false) if no_candidate.contains(package) => None,
            (None, false) => return Err(format!("apt named no file for {package}")),
        };
    }
    Ok(answers)
}

/// A `.deb`'s name as apt writes it, `NAME_VERSION_ARCH.deb`, taken apart.
/// Public (hidden) for the fuzz target (`system/fuzz`) only.
#[doc(hidden)]
#[derive(Debug, PartialEq, Eq)]
pub struct DebName<'a> {
    /// The package.
    pub package: &'a str,
    /// The version, its epoch's `:` decoded.
    pub version: String,
    /// The architecture (`amd64`, `all`, ...).
    pub arch: &'a str,
}

/// Parses a `.deb`'s name, accepting only the one spelling apt gives a
/// package version: three `_`-separated fields, a package, a Debian
/// version with its epoch's `:` as `%3a` (the one character of a
/// version apt escapes), an architecture. Any other spelling (`%32` for
/// `2`, a raw `:`, a fourth field) names no version at all, so that no
/// name can pass for a version under a second spelling. Public (hidden)
/// for the fuzz target (`system/fuzz`) only.
#[doc(hidden)]
pub fn parse_deb_name(name: &str) -> Option<DebName<'_>> {
    let stem = name.strip_suffix(".deb")?;
    let mut fields = stem.split('_');
    let (package, quoted, arch) = (fields.next()?, fields.next()?, fields.next()?);
    if fields.next().is_some() {
        return None;
    }
    // The package is whatever the caller asked for (a recipe's name,
    // checked there); only a name equal to it is ever taken.
    if package.is_empty() {
        return None;
    }
    let version = quoted.replace("%3a", ":");
    if version.replace(':', "%3a") != quoted {
        return None;
    }
    split_version(&version).ok()?;
    let arch_ok = !arch.is_empty()
        && arch
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    arch_ok.then_some(DebName {
        package,
        version,
        arch,
    })
}

/// Where the `.deb` a fetch uses comes from.
#[derive(Debug, PartialEq, Eq)]
enum Choice {
    /// The cache's file of this name, used only if it has these bytes;
    /// `record` when the pin is what apt's index says now and `debs.lock`
    /// has none yet (another tool put the file there).
    Cached {
        file: String,
        pin: Pin,
        record: bool,
    },
    /// Not cached: `apt-get download` this (`NAME=VERSION`).
    Download(String),
}

/// Which `.deb` of `package` to use: the decision alone, with apt's index
/// (`index`, asked at most once), the cache (`present`: whether a name is
/// taken there) and this machine's architecture (`native`, dpkg's; `None`
/// if unknown) passed in, so that it is tested without any of them.
///
/// With a version asked for, its one pinned cached file of this machine's
/// architecture or `all` (apt is not asked: the version may have left the
/// index since), else the file apt's index names for that version, cached
/// or to be fetched. Another architecture's file is never taken without
/// apt: a cache shared between machines (or filled by `apt-get download
/// NAME:ARCH`) may pin it, and it is not this machine's package. With no
/// version, apt's candidate, cached or to be fetched. Only when apt knows
/// no package of that name (a machine offline with only the cache) does
/// the cache decide, and then by what `debs.lock` pins (which only the
/// caller writes): the newest version of this machine's architecture by
/// Debian's ordering, which must still be cached. Never by which files
/// the cache's directory holds, nor by when one was modified: whoever can
/// write the cache chooses those, and would choose an older version (a
/// rollback) or keep a security update out.
fn choose(
    package: &str,
    version: Option<&str>,
    pins: &Pins,
    present: &dyn Fn(&str) -> bool,
    native: Option<&str>,
    index: impl FnOnce(&str) -> Result<Option<Indexed>>,
) -> Result<Choice> {
    let Some(version) = version else {
        return match index(package)? {
            Some(candidate) => from_index(package, candidate, pins, present),
            None => {
                tracing::warn!(
                    "{package}: apt's index does not know it, so its candidate is unknown: \
                     taking the newest version {} pins",
                    pins::LOCK_FILE
                );
                newest_pinned(package, pins, present, native)
            }
        };
    };
    let target = format!("{package}={version}");
    // Every pinned, present file of the version, and which of them are
    // this machine's.
    let pinned: Vec<(&str, &Pin, bool)> = pins
        .iter()
        .filter_map(|(file, pin)| {
            let name = parse_deb_name(file)?;
            (name.package == package && name.version == version)
                .then(|| (file, pin, runs_here(name.arch, native)))
        })
        .filter(|(file, _, _)| present(file))
        .collect();
    let here: Vec<(&str, &Pin)> = pinned
        .iter()
        .filter(|(_, _, here)| *here)
        .map(|(file, pin, _)| (*file, *pin))
        .collect();
    match (here.as_slice(), index) {
        ([(file, pin)], _) => Ok(Choice::Cached {
            file: file.to_string(),
            pin: (*pin).clone(),
            record: false,
        }),
        // No pinned file of that version for this machine: apt's index
        // must name one.
        ([], index) => match index(&target)? {
            Some(indexed) => from_index(package, indexed, pins, present),
            None if pinned.is_empty() => Err(SystemError::DebUnknown { target }),
            None => Err(SystemError::DebOtherArch {
                target,
                arch: native.unwrap_or("unknown").to_string(),
                files: pinned.iter().map(|(f, _, _)| f.to_string()).collect(),
            }),
        },
        // Several (the machine's architecture's and `all`): apt's index
        // names the one it means, if it still has it.
        (several, index) => match index(&target) {
            Ok(Some(indexed)) => from_index(package, indexed, pins, present),
            Ok(None) | Err(_) => Err(SystemError::DebAmbiguous {
                package: package.to_string(),
                version: version.to_string(),
                files: several.iter().map(|(f, _)| f.to_string()).collect(),
            }),
        },
    }
}

/// Whether a `.deb` of architecture `arch` is this machine's to use: its
/// own (`native`, dpkg's), or `all`. With the machine's unknown, only
/// `all` is.
fn runs_here(arch: &str, native: Option<&str>) -> bool {
    arch == "all" || native == Some(arch)
}

/// This machine's Debian architecture, as dpkg names it (`amd64`): asked
/// of dpkg, else (no dpkg: a machine with only the cache) the one Rust's
/// target has, where that is unambiguous; `None` otherwise.
fn native_arch() -> Option<String> {
    let asked = Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|out| out.trim().to_string())
        .filter(|arch| !arch.is_empty());
    asked.or_else(|| {
        let arch = match (std::env::consts::ARCH, cfg!(target_endian = "little")) {
            ("x86_64", _) => "amd64",
            ("aarch64", true) => "arm64",
            ("x86", _) => "i386",
            ("riscv64", _) => "riscv64",
            ("s390x", _) => "s390x",
            ("powerpc64", true) => "ppc64el",
            ("loongarch64", _) => "loong64",
            // 32-bit arm (armel or armhf?) and the rest: not guessed.
            _ => return None,
        };
        Some(arch.to_string())
    })
}

/// The file apt's index names for `package`: the cached one, checked
/// against its pin (or, none yet, against the index), else fetched.
fn from_index(
    package: &str,
    indexed: Indexed,
    pins: &Pins,
    present: &dyn Fn(&str) -> bool,
) -> Result<Choice> {
    let Some(name) = parse_deb_name(&indexed.file).filter(|n| n.package == package) else {
        return Err(SystemError::Fetch {
            package: package.to_string(),
            message: format!(
                "apt's index names {} for it, not a {package}_VERSION_ARCH.deb",
                indexed.file
            ),
        });
    };
    if !present(&indexed.file) {
        return Ok(Choice::Download(format!("{package}={}", name.version)));
    }
    Ok(match pins.get(&indexed.file) {
        // debs.lock's pin stands: it is what apt's signed index named
        // when this very file was fetched.
        Some(pin) => Choice::Cached {
            file: indexed.file,
            pin: pin.clone(),
            record: false,
        },
        None => Choice::Cached {
            file: indexed.file,
            pin: indexed.pin,
            record: true,
        },
    })
}

/// With no index to ask: the newest version of `package` of this
/// machine's architecture (or `all`) that `debs.lock` pins, by Debian's
/// ordering. It must still be cached: were it gone (or removed by whoever
/// can write the cache), taking the next older one would be the very
/// rollback this guards against. Other architectures' files are not this
/// machine's packages, however new.
fn newest_pinned(
    package: &str,
    pins: &Pins,
    present: &dyn Fn(&str) -> bool,
    native: Option<&str>,
) -> Result<Choice> {
    let mut newest: Vec<(&str, &Pin, String)> = Vec::new();
    let mut elsewhere = Vec::new();
    for (file, pin) in pins.iter() {
        let Some(name) = parse_deb_name(file).filter(|n| n.package == package) else {
            continue;
        };
        if !runs_here(name.arch, native) {
            elsewhere.push(file.to_string());
            continue;
        }
        match newest
            .first()
            .map(|(_, _, v)| version::compare(&name.version, v))
        {
            None | Some(Ordering::Greater) => newest = vec![(file, pin, name.version)],
            Some(Ordering::Equal) => newest.push((file, pin, name.version)),
            Some(Ordering::Less) => {}
        }
    }
    match newest.as_slice() {
        [] if elsewhere.is_empty() => Err(SystemError::DebUnknown {
            target: package.to_string(),
        }),
        [] => Err(SystemError::DebOtherArch {
            target: package.to_string(),
            arch: native.unwrap_or("unknown").to_string(),
            files: elsewhere,
        }),
        [(file, pin, _)] if present(file) => Ok(Choice::Cached {
            file: file.to_string(),
            pin: (*pin).clone(),
            record: false,
        }),
        [(file, _, _)] => Err(SystemError::DebNewestMissing {
            package: package.to_string(),
            file: file.to_string(),
        }),
        // Two spellings dpkg orders alike (`1.0`, `1.0-0`), or a version
        // both of this machine's architecture and `all`: nothing says
        // which is meant.
        several => Err(SystemError::DebAmbiguous {
            package: package.to_string(),
            version: several[0].2.clone(),
            files: several.iter().map(|(f, _, _)| f.to_string()).collect(),
        }),
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
    }

    /// One apt call answers for every package of a build: each its own
    /// file, or none for a package apt cannot locate; anything else apt
    /// says or fails with is no answer at all.
    #[test]
    fn one_apt_call_gives_every_candidate() {
        let line = |file: &str| {
            format!(
                "'http://deb.example/pool/{file}' {file} 7 SHA256:{}\n",
                "ab".repeat(32)
            )
        };
        let both = line("hello_2.10-3_amd64.deb") + &line("jq_1.6-2.1+deb12u3_amd64.deb");
        let got = parse_candidates(&["jq", "hello"], &both, "", true).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(
            got["hello"].as_ref().unwrap().file,
            "hello_2.10-3_amd64.deb"
        );
        assert_eq!(
            got["jq"].as_ref().unwrap().file,
            "jq_1.6-2.1+deb12u3_amd64.deb"
        );
        let unknown = "E: Unable to locate package zz\n";
        let got = parse_candidates(&["hello", "zz"], &both, unknown, false).unwrap();
        assert_eq!(got["zz"], None);
        assert!(got["hello"].is_some());
        // A virtual package: known, without a candidate; no answer of it.
        let virtual_ =
            "E: Can't select candidate version from package awk as it has no candidate\n";
        let got = parse_candidates(&["awk", "hello"], &both, virtual_, false).unwrap();
        assert!(!got.contains_key("awk"));
        assert!(got["hello"].is_some());
        for (packages, stdout, stderr, success) in [
            // A name apt took as a pattern: other packages' files only.
            (&["hell."][..], both.as_str(), "", true),
            // A failure that is not "no such package".
            (
                &["hello"],
                "",
                "E: Could not open lock file /var/lib/apt/lists/lock\n",
                false,
            ),
            (
                &["hello", "zz"],
                &both,
                "E: Unable to locate package zz\nE: Can't select candidate version from package hello\n",
                false,
            ),
            (&["hello"], "", "", false),
            // Two files for one package, or one without a SHA256.
            (
                &["hello"],
                &(line("hello_1_amd64.deb") + &line("hello_2_amd64.deb")),
                "",
                true,
            ),
            (
                &["hello"],
                "'u' hello_1_amd64.deb 5 MD5Sum:abcd\n",
                "",
                true,
            ),
        ] {
            assert!(
                parse_candidates(packages, stdout, stderr, success).is_err(),
                "{packages:?} {stdout:?} {stderr:?}"
            );
        }
        // apt itself, asked once for several: what it says of each alone.
        // A virtual package (Debian's `awk`) offers no candidate, and
        // fetching it is refused, naming why.
        let candidates = Candidates::query(&["awk", "hello"]).unwrap();
        assert_eq!(candidates.version("awk"), None);
        assert!(candidates.version("hello").is_some());
        let refused = candidates.answer("awk").unwrap_err().to_string();
        assert!(refused.contains("virtual package"), "{refused}");
        let candidates = Candidates::query(&["x", "hello", "x"]).unwrap();
        assert_eq!(candidates.answer("x").unwrap(), None);
        assert_eq!(
            candidates.answer("hello").unwrap(),
            query_index("hello").unwrap()
        );
        assert_eq!(
            candidates.version("hello"),
            query_index("hello")
                .unwrap()
                .and_then(|i| parse_deb_name(&i.file).map(|n| n.version))
        );
    }

    /// A cached file's name stands for a version only in the one spelling
    /// apt gives it, so that a name in the cache cannot pass for another
    /// version (or another package) than apt would have named it.
    #[test]
    fn cached_names_parse_only_as_apt_writes_them() {
        let version = |name| parse_deb_name(name).map(|n| (n.package.to_string(), n.version));
        assert_eq!(
            version("a2ps_1%3a4.14-8_amd64.deb"),
            Some(("a2ps".into(), "1:4.14-8".into()))
        );
        assert_eq!(
            version("abiword-common_3.0.5~dfsg-3.2_all.deb"),
            Some(("abiword-common".into(), "3.0.5~dfsg-3.2".into()))
        );
        for odd in [
            "x_1_all",              // not a .deb
            "x_1.deb",              // no architecture
            "x_1_all_more.deb",     // a fourth field
            "x__all.deb",           // no version
            "x_1_.deb",             // no architecture
            "x_1%3A2_all.deb",      // another spelling of the epoch
            "x_1:2_all.deb",        // the epoch's colon unescaped
            "x_%32_all.deb",        // another spelling of `2`
            "x_+1%3a2_all.deb",     // an epoch that is no number
            "x_%3a2_all.deb",       // an empty epoch
            "x_2.36-9%3a1_all.deb", // an epoch that is no number
            "x_a1_all.deb",         // a version not starting with a digit
            "x_1-_all.deb",         // an empty revision
            "x_1 2_all.deb",        // a space
            "x_1_All.deb",          // an architecture in capitals
            "_1_all.deb",           // no package
        ] {
            assert_eq!(parse_deb_name(odd), None, "{odd}");
        }
    }

    /// apt's "no such package" is told from its failures: only the former
    /// lets the cache's newest pinned file stand in for apt's candidate.
    #[test]
    fn only_an_unknown_package_counts_as_apt_not_knowing_it() {
        assert!(apt_knows_no_such_package(
            "E: Unable to locate package zzzz\n"
        ));
        for failure in [
            "E: Version '9.9' for 'hello' was not found\n",
            "E: Can't select candidate version from package mail-transport-agent as it has no \
             candidate\n",
            "E: Could not open lock file /var/lib/apt/lists/lock - open (13: Permission denied)\n",
            "",
        ] {
            assert!(!apt_knows_no_such_package(failure), "{failure}");
        }
        // apt itself: no package is named `x` (the tests below rely on it).
        assert_eq!(query_index("x").unwrap(), None);
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

    /// The machine the decision's tests run on.
    const HERE: Option<&str> = Some("amd64");

    /// A pin the decision never reads the bytes of.
    fn pin(n: u8) -> Pin {
        Pin {
            sha256: format!("{n:02x}").repeat(32),
            size: n.into(),
        }
    }

    /// `debs.lock` pinning `names` (the `n`th with `pin(n)`), in a fresh
    /// directory kept alive with it.
    fn pinned(names: &[&str]) -> (tempfile::TempDir, Pins) {
        let dir = tempfile::tempdir().unwrap();
        let mut pins = Pins::read(dir.path()).unwrap();
        for (n, name) in names.iter().enumerate() {
            pins.record(dir.path(), name, pin(n as u8)).unwrap();
        }
        (dir, pins)
    }

    /// What apt's index would say of a file.
    fn indexed_as(file: &str, n: u8) -> Result<Option<Indexed>> {
        Ok(Some(Indexed {
            file: file.into(),
            pin: pin(n),
        }))
    }

    /// An index that must not be asked.
    fn unasked(target: &str) -> Result<Option<Indexed>> {
        panic!("apt's index was asked for {target}")
    }

    fn cached(file: &str, n: u8, record: bool) -> Choice {
        Choice::Cached {
            file: file.into(),
            pin: pin(n),
            record,
        }
    }

    /// With no version asked for, apt's candidate is the version, whatever
    /// the cache holds: its cached file if there is one (with the pin
    /// debs.lock has, else apt's), else a download of exactly it.
    #[test]
    fn apt_s_candidate_is_taken_whatever_the_cache_holds() {
        let (_dir, pins) = pinned(&["x_1_all.deb", "x_2_all.deb", "x_3_all.deb"]);
        let all = |_: &str| true;
        let choose_with = |candidate: &str, apt_pin: u8, present: &dyn Fn(&str) -> bool| {
            choose("x", None, &pins, present, HERE, |target| {
                assert_eq!(target, "x");
                indexed_as(candidate, apt_pin)
            })
            .unwrap()
        };
        // The newest cached and pinned (3) is not the candidate.
        assert_eq!(
            choose_with("x_2_all.deb", 9, &all),
            cached("x_2_all.deb", 1, false)
        );
        // apt's policy may prefer an older version than one cached.
        assert_eq!(
            choose_with("x_1_all.deb", 9, &all),
            cached("x_1_all.deb", 0, false)
        );
        // A candidate newer than anything cached is fetched.
        let none = |_: &str| false;
        assert_eq!(
            choose_with("x_4_all.deb", 9, &none),
            Choice::Download("x=4".into())
        );
        assert_eq!(
            choose_with("x_1%3a4_amd64.deb", 9, &none),
            Choice::Download("x=1:4".into())
        );
        // Cached by another tool (no pin yet): apt's pin, then recorded.
        assert_eq!(
            choose_with("x_5_all.deb", 9, &all),
            cached("x_5_all.deb", 9, true)
        );
        // A candidate cached but gone is fetched again, not replaced by
        // another cached version.
        let not_2 = |n: &str| n != "x_2_all.deb";
        assert_eq!(
            choose_with("x_2_all.deb", 9, &not_2),
            Choice::Download("x=2".into())
        );
        // apt naming another package's file is refused.
        assert!(matches!(
            choose("x", None, &pins, &all, HERE, |_| indexed_as(
                "y_2_all.deb",
                9
            )),
            Err(SystemError::Fetch { .. })
        ));
        // apt failing is a failure, not "unknown": the cache does not
        // stand in for a candidate apt could not give.
        let failed = |target: &str| {
            Err(SystemError::Fetch {
                package: target.into(),
                message: "locked".into(),
            })
        };
        assert!(matches!(
            choose("x", None, &pins, &all, HERE, failed),
            Err(SystemError::Fetch { .. })
        ));
    }

    /// With no candidate (apt's index knows no such package), the newest
    /// version debs.lock pins, by Debian's ordering: not by name as text,
    /// not by which files are present, never by mtime.
    #[test]
    fn with_no_candidate_the_newest_pinned_version_by_debian_order_is_taken() {
        let all = |_: &str| true;
        for (names, want) in [
            (&["x_1.9_all.deb", "x_1.10_all.deb"][..], "x_1.10_all.deb"),
            (&["x_2.0~rc1_all.deb", "x_1.9_all.deb"], "x_2.0~rc1_all.deb"),
            (&["x_2.0_all.deb", "x_2.0~rc1_all.deb"], "x_2.0_all.deb"),
            (&["x_9_all.deb", "x_1%3a0.1_all.deb"], "x_1%3a0.1_all.deb"),
            (
                &["x_2.10-3+deb12u1_amd64.deb", "x_2.10-3_amd64.deb"],
                "x_2.10-3+deb12u1_amd64.deb",
            ),
            // Other packages, and names apt would not write, are no
            // versions of `x`, however high they read.
            (
                &[
                    "x_1_all.deb",
                    "xx_9_all.deb",
                    "x-dev_9_all.deb",
                    "x_%39_all.deb",
                    "x_9_all_x.deb",
                    "x_+9%3a1_all.deb",
                ],
                "x_1_all.deb",
            ),
        ] {
            let (_dir, pins) = pinned(names);
            let n = names.iter().position(|n| *n == want).unwrap() as u8;
            let got = choose("x", None, &pins, &all, HERE, |_| Ok(None)).unwrap();
            assert_eq!(got, cached(want, n, false), "{names:?}");
        }
    }

    /// Without a candidate the cache's directory decides nothing: a newest
    /// pinned version that is gone fails the build (taking the older one
    /// would be a rollback), an unpinned file is never taken, and two
    /// files of one version are not guessed between.
    #[test]
    fn with_no_candidate_nothing_older_or_unpinned_is_taken() {
        let (_dir, pins) = pinned(&["x_1_all.deb", "x_2_all.deb"]);
        let only_1 = |n: &str| n == "x_1_all.deb";
        assert!(matches!(
            choose("x", None, &pins, &only_1, HERE, |_| Ok(None)),
            Err(SystemError::DebNewestMissing { file, .. }) if file == "x_2_all.deb"
        ));
        let all = |_: &str| true;
        assert!(matches!(
            choose("y", None, &pins, &all, HERE, |_| Ok(None)),
            Err(SystemError::DebUnknown { target }) if target == "y"
        ));
        for names in [
            ["x_2_amd64.deb", "x_2_all.deb"],
            ["x_1.0_all.deb", "x_1.0-0_all.deb"],
        ] {
            let (_dir, pins) = pinned(&names);
            assert!(
                matches!(
                    choose("x", None, &pins, &all, HERE, |_| Ok(None)),
                    Err(SystemError::DebAmbiguous { files, .. }) if files.len() == 2
                ),
                "{names:?}"
            );
        }
    }

    /// A version asked for is its pinned cached file, with no need for
    /// apt (it may have left the index); else the file apt's index names
    /// for it.
    #[test]
    fn a_version_asked_for_is_its_pinned_file_or_apt_s() {
        let (_dir, pins) = pinned(&["x_1_all.deb", "x_2_all.deb", "x_1%3a4_all.deb"]);
        let all = |_: &str| true;
        assert_eq!(
            choose("x", Some("1"), &pins, &all, HERE, unasked).unwrap(),
            cached("x_1_all.deb", 0, false)
        );
        assert_eq!(
            choose("x", Some("1:4"), &pins, &all, HERE, unasked).unwrap(),
            cached("x_1%3a4_all.deb", 2, false)
        );
        let asked = |want: &'static str, file: &'static str| {
            move |target: &str| {
                assert_eq!(target, want);
                indexed_as(file, 9)
            }
        };
        let none = |_: &str| false;
        assert_eq!(
            choose(
                "x",
                Some("3"),
                &pins,
                &none,
                HERE,
                asked("x=3", "x_3_all.deb")
            )
            .unwrap(),
            Choice::Download("x=3".into())
        );
        // The pinned file gone: apt's index names it again, to fetch.
        let not_1 = |n: &str| n != "x_1_all.deb";
        assert_eq!(
            choose(
                "x",
                Some("1"),
                &pins,
                &not_1,
                HERE,
                asked("x=1", "x_1_all.deb")
            )
            .unwrap(),
            Choice::Download("x=1".into())
        );
        assert!(matches!(
            choose("x", Some("3"), &pins, &none, HERE, |_| Ok(None)),
            Err(SystemError::DebUnknown { target }) if target == "x=3"
        ));
        // The version both for this machine and `all`: apt's index names
        // the one it means; without it, neither is guessed.
        let (_dir, pins) = pinned(&["x_2_amd64.deb", "x_2_all.deb"]);
        assert_eq!(
            choose(
                "x",
                Some("2"),
                &pins,
                &all,
                HERE,
                asked("x=2", "x_2_all.deb")
            )
            .unwrap(),
            cached("x_2_all.deb", 1, false)
        );
        assert!(matches!(
            choose("x", Some("2"), &pins, &all, HERE, |_| Ok(None)),
            Err(SystemError::DebAmbiguous { .. })
        ));
    }

    /// A cache shared between machines (or filled by `apt-get download
    /// NAME:ARCH`) may pin another architecture's file of a version. Its
    /// one pinned file was taken without asking apt, whatever its
    /// architecture: an arm64 package grafted on an amd64 machine. Only
    /// this machine's architecture or `all` is taken without apt; offline,
    /// only they are candidates.
    #[test]
    fn another_architecture_s_pinned_file_is_never_taken_without_apt() {
        let all = |_: &str| true;
        let only_arm64 = |n: &str| n == "x_2_arm64.deb";
        let (_dir, pins) = pinned(&["x_2_arm64.deb"]);
        let apt_names_amd64 = |target: &str| {
            assert_eq!(target, "x=2");
            indexed_as("x_2_amd64.deb", 9)
        };
        assert_eq!(
            choose("x", Some("2"), &pins, &only_arm64, HERE, apt_names_amd64).unwrap(),
            Choice::Download("x=2".into())
        );
        assert!(matches!(
            choose("x", Some("2"), &pins, &all, HERE, |_| Ok(None)),
            Err(SystemError::DebOtherArch { target, arch, files })
                if target == "x=2" && arch == "amd64" && files == ["x_2_arm64.deb"]
        ));
        // This machine's file beside another's: taken, apt not asked.
        let (_dir, pins) = pinned(&["x_2_arm64.deb", "x_2_amd64.deb"]);
        assert_eq!(
            choose("x", Some("2"), &pins, &all, HERE, unasked).unwrap(),
            cached("x_2_amd64.deb", 1, false)
        );
        // The machine's architecture unknown: only `all` is its own.
        assert!(matches!(
            choose("x", Some("2"), &pins, &all, None, |_| Ok(None)),
            Err(SystemError::DebOtherArch { arch, .. }) if arch == "unknown"
        ));
        // Offline: the newest of this machine's, not another's newer one.
        let (_dir, pins) = pinned(&["x_1_amd64.deb", "x_2_arm64.deb"]);
        assert_eq!(
            choose("x", None, &pins, &all, HERE, |_| Ok(None)).unwrap(),
            cached("x_1_amd64.deb", 0, false)
        );
        let (_dir, pins) = pinned(&["x_2_arm64.deb"]);
        assert!(matches!(
            choose("x", None, &pins, &all, HERE, |_| Ok(None)),
            Err(SystemError::DebOtherArch { target, .. }) if target == "x"
        ));
    }

    /// dpkg names this machine's architecture as the cache's files do.
    #[test]
    fn this_machine_s_architecture_is_dpkg_s() {
        let arch = native_arch().expect("the tests' machine has a known architecture");
        assert!(
            parse_deb_name(&format!("x_1_{arch}.deb")).is_some_and(|n| n.arch == arch),
            "{arch}"
        );
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
