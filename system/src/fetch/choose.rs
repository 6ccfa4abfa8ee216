//! Which `.deb` a fetch uses: the decision alone, from apt's answer, the
//! pins of `debs.lock`, the names the cache holds and this machine's
//! architecture, each passed in so that it is tested without them.

use std::cmp::Ordering;
use std::process::Command;

use crate::error::{Result, SystemError};
use crate::pins::{self, Pin, Pins};
use crate::version;

use super::apt::{Indexed, parse_deb_name};

/// Where the `.deb` a fetch uses comes from.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Choice {
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
pub(super) fn choose(
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
pub(super) fn native_arch() -> Option<String> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
