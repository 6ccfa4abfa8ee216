//! What apt's local index says: the file, size and SHA256 of a package's
//! candidate or of a version asked for (`apt-get download --print-uris`,
//! no network), for one package or for every package of a build at once,
//! and the names apt gives the files it downloads.

use std::collections::BTreeMap;
use std::process::Command;

use nexus_graft::control::split_version;

use crate::error::{Result, SystemError};
use crate::pins::Pin;

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
pub(super) fn indexed(target: &str) -> Result<Indexed> {
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
    pub(super) fn answer(&self, target: &str) -> Result<Option<Indexed>> {
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
}
