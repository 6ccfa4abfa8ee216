//! Nix archives (NAR): a store path serialised by `nix-store --dump`,
//! plain or compressed (`.nar`, `.nar.xz`, `.nar.zst`; gzip and bzip2
//! too).
//!
//! A NAR holds a tree and nothing else: no name, no owners, no times.
//! The mapping:
//!
//! - the store path's root is the package root, every path kept as it is
//!   ([`Mapping::Identity`]: `bin/hello` is `hello/2.12/bin/hello`); a NAR
//!   whose root is a single file or symlink is refused (a package is a
//!   directory, and a wrapper would have to invent a name);
//! - everything is owned by 0:0 and has mtime 1, regular files mode 0444,
//!   executable ones 0555, directories 0555, as in Nix's store;
//! - name and version come from the file's name, the store path name
//!   `<32-character hash>-NAME-VERSION` with `.nar[.xz|.zst|.gz|.bz2]`
//!   after it, split as Nix's `parseDrvName` does (the version starts at
//!   the first `-` not followed by a letter: `hello-2.12.1` is `hello`,
//!   `2.12.1`), or from `--name`/`--version`, which win. Neither is a
//!   clear error, before the NAR is read.

use std::io::Read;

use serde_json::json;

use crate::builder::TreeBuilder;
use crate::entry::Mapping;
use crate::error::{Problem, ReadResult};
use crate::limits::Budget;
use crate::narstream::read_nar;
use crate::package::{ContentSink, Kind, Naming, Package, ReadOptions, graft_entry};
use crate::sniff::Decoded;

/// Length of a store path's hash part.
pub const HASH_LEN: usize = 32;
/// The digits of Nix's base-32 (no `e`, `o`, `t`, `u`).
const NIX_BASE32: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
/// File name endings of NARs, longest first.
const SUFFIXES: &[&str] = &[".nar.zst", ".nar.bz2", ".nar.xz", ".nar.gz", ".nar"];

/// A store path name, `<hash>-<name>`, split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorePathName {
    /// The 32-character hash part.
    pub hash: String,
    /// Everything after the hash and its `-` (`hello-2.12.1`).
    pub full_name: String,
    /// The name part (`hello`).
    pub name: String,
    /// The version part (`2.12.1`), if there is one.
    pub version: Option<String>,
}

/// Parses a NAR's file name as a store path name, dropping a NAR suffix
/// (`.nar`, `.nar.xz`, ...) if there is one. `None` if it is not one:
/// a 32-character Nix base-32 hash, `-`, then a name of the characters
/// Nix allows (`A-Za-z0-9+-._?=`, not starting with `.`).
pub fn parse_store_file_name(file_name: &str) -> Option<StorePathName> {
    let base = SUFFIXES
        .iter()
        .find_map(|s| file_name.strip_suffix(s))
        .unwrap_or(file_name);
    let hash = base.get(..HASH_LEN)?;
    let full_name = base.get(HASH_LEN..)?.strip_prefix('-')?;
    if !hash.bytes().all(|b| NIX_BASE32.contains(&b)) {
        return None;
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || "+-._?=".contains(c);
    if full_name.is_empty() || full_name.starts_with('.') || !full_name.chars().all(allowed) {
        return None;
    }
    let (name, version) = split_drv_name(full_name);
    Some(StorePathName {
        hash: hash.to_string(),
        full_name: full_name.to_string(),
        name: name.to_string(),
        version: version.map(str::to_string),
    })
}

/// Splits `NAME-VERSION` as Nix's `parseDrvName`: the version starts after
/// the first `-` that is followed by something other than a letter.
pub fn split_drv_name(s: &str) -> (&str, Option<&str>) {
    let bytes = s.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'-' && bytes.get(i + 1).is_some_and(|c| !c.is_ascii_alphabetic()) {
            return (&s[..i], Some(&s[i + 1..]));
        }
    }
    (s, None)
}

/// The package's name and version, from the flags or the file's name.
fn names(naming: &Naming<'_>, store: Option<&StorePathName>) -> ReadResult<(String, String)> {
    let from_file = match (store, naming.file_name) {
        (Some(s), _) => match &s.version {
            Some(v) => Some((s.name.clone(), v.clone())),
            None if naming.version.is_some() => Some((s.name.clone(), String::new())),
            None => {
                return Err(Problem::Naming(format!(
                    "the store path name {:?} has no version (a version starts at a `-` not followed by a letter)",
                    s.full_name
                ))
                .into());
            }
        },
        (None, _) if naming.name.is_some() && naming.version.is_some() => None,
        (None, Some(f)) => {
            return Err(Problem::Naming(format!(
                "a NAR names no package, and its file name {f:?} is not a store path name (`<32-character hash>-NAME-VERSION.nar`, `.nar.xz`, `.nar.zst`)"
            ))
            .into());
        }
        (None, None) => {
            return Err(Problem::Naming("a NAR names no package".into()).into());
        }
    };
    let (file_name, file_version) = from_file.unwrap_or_default();
    Ok((
        naming.name.map_or(file_name, str::to_string),
        naming.version.map_or(file_version, str::to_string),
    ))
}

/// Reads a NAR package from an opened stream (its first bytes checked to
/// be the NAR magic), within `budget`.
pub fn read_nar_package(
    decoded: Decoded<'_>,
    budget: &Budget,
    naming: &Naming<'_>,
    options: &ReadOptions,
    sink: &mut dyn ContentSink,
) -> ReadResult<Package> {
    let store = naming.file_name.and_then(parse_store_file_name);
    let (name, version) = names(naming, store.as_ref())?;
    let what = decoded.describe("NAR");
    let compression = decoded.compression;
    let mut builder = TreeBuilder::new(options.skip_special);
    read_nar(decoded.stream, budget, &what, |entry, content| {
        graft_entry(&mut builder, Mapping::Identity, sink, &entry, content)?;
        Ok(())
    })?;
    let metadata = json!({
        "format": Kind::Nar.name(),
        "name": name,
        "version": version,
        "store_path": store.as_ref().map(|s| format!("/nix/store/{}-{}", s.hash, s.full_name)),
        "compression": compression.name(),
        "mapping": Mapping::Identity.name(),
    });
    Ok(Package {
        kind: Kind::Nar,
        name,
        version,
        metadata,
        tree: builder.finish(),
    })
}

/// Reads a NAR, plain or compressed, from `reader`.
pub fn read_nar_file(
    reader: impl Read,
    naming: &Naming<'_>,
    options: &ReadOptions,
    sink: &mut dyn ContentSink,
) -> ReadResult<Package> {
    let budget = Budget::new(options.limits);
    let decoded = crate::sniff::open_decoded(reader, &budget)?;
    if !decoded.stream.head().starts_with(crate::sniff::NAR_MAGIC) {
        return Err(
            Problem::UnknownFormat(format!("{} is not a NAR", decoded.describe("data"))).into(),
        );
    }
    read_nar_package(decoded, &budget, naming, options, sink)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "0c3nb2wmh5rmb1ps3w1k8kyprgy1vd4c";

    #[test]
    fn store_path_names_split_like_parse_drv_name() {
        let p = parse_store_file_name(&format!("{HASH}-hello-2.12.1.nar.xz")).unwrap();
        assert_eq!(p.hash, HASH);
        assert_eq!(
            (p.name.as_str(), p.version.as_deref()),
            ("hello", Some("2.12.1"))
        );
        let p = parse_store_file_name(&format!("{HASH}-python3.11-numpy-1.26.4.nar")).unwrap();
        assert_eq!(
            (p.name.as_str(), p.version.as_deref()),
            ("python3.11-numpy", Some("1.26.4"))
        );
        let p = parse_store_file_name(&format!("{HASH}-glibc-2.39-52-bin.nar.zst")).unwrap();
        assert_eq!(
            (p.name.as_str(), p.version.as_deref()),
            ("glibc", Some("2.39-52-bin"))
        );
        let p = parse_store_file_name(&format!("{HASH}-source")).unwrap();
        assert_eq!((p.name.as_str(), p.version), ("source", None));
        for bad in [
            "hello-2.12.nar".to_string(),
            format!("{}-hello-1.nar", &HASH[1..]),
            format!("{}e-hello-1.nar", &HASH[1..]), // `e` is no Nix base-32 digit
            format!("{HASH}hello-1.nar"),
            format!("{HASH}-.hidden-1.nar"),
            format!("{HASH}-he llo-1.nar"),
            format!("{HASH}-.nar"),
        ] {
            assert_eq!(parse_store_file_name(&bad), None, "{bad}");
        }
    }

    #[test]
    fn flags_win_and_missing_names_are_clear_errors() {
        let store = parse_store_file_name(&format!("{HASH}-hello-2.12.nar"));
        let file = format!("{HASH}-hello-2.12.nar");
        let naming = Naming {
            file_name: Some(&file),
            ..Naming::default()
        };
        assert_eq!(
            names(&naming, store.as_ref()).unwrap(),
            ("hello".into(), "2.12".into())
        );
        let flags = Naming {
            file_name: Some("x.nar"),
            name: Some("hi"),
            version: Some("1"),
        };
        assert_eq!(names(&flags, None).unwrap(), ("hi".into(), "1".into()));
        let unnamed = Naming {
            file_name: Some("x.nar"),
            ..Naming::default()
        };
        let err = format!("{:?}", names(&unnamed, None).unwrap_err());
        assert!(err.contains("not a store path name"), "{err}");
        let source = parse_store_file_name(&format!("{HASH}-source.nar"));
        let err = format!("{:?}", names(&naming, source.as_ref()).unwrap_err());
        assert!(err.contains("has no version"), "{err}");
    }
}
