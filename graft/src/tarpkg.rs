//! Pacman and pkgsrc packages: tar archives, possibly compressed, whose
//! leading entries are metadata files.
//!
//! Which of the two a tar archive is follows from those leading top-level
//! files, read before the first package file (makepkg writes its dot-files
//! first, and pkg_add requires `+CONTENTS` first): `.PKGINFO` makes it a
//! pacman package, `+CONTENTS` a pkgsrc one.
//!
//! Pacman: name and version from `.PKGINFO` (`pkgname`, `pkgver` without
//! its epoch), `.BUILDINFO` and `.INSTALL` kept as metadata, `.MTREE` and
//! `.CHANGELOG` read past (the store hashes every file itself), other
//! top-level dot-files skipped as pacman does. Paths are mapped with
//! [`Mapping::Fhs`].
//!
//! pkgsrc: name and version from `+CONTENTS`'s `@name`, description from
//! `+COMMENT` and `+DESC`, licence from `+BUILD_INFO`'s `LICENSE`; the
//! files are relative to the `@cwd` prefix and keep their paths
//! ([`Mapping::Identity`]); every file of the archive must be listed in
//! `+CONTENTS` and every listed file must be in the archive.

use std::collections::BTreeSet;
use std::io::Read;

use serde_json::{Map, Value, json};

use crate::builder::TreeBuilder;
use crate::entry::{ArchiveEntry, EntryKind, Mapping, Placement, components, lossy};
use crate::error::{Failure, Problem, ReadResult};
use crate::limits::{Budget, METADATA_FILE_MAX, read_capped};
use crate::package::{ContentSink, Kind, Package, ReadOptions, check_size, graft_entry};
use crate::pkginfo::{self, Info, parse_info, single, values};
use crate::pkgsrc::{Contents, parse_build_info, parse_contents, split_pkgname};
use crate::sniff::{Decoded, is_tar_header, open_decoded};
use crate::tarstream::read_tar;

/// Pacman metadata files whose text is kept.
const PACMAN_KEPT: &[&str] = &[".PKGINFO", ".BUILDINFO", ".INSTALL"];

/// What the leading metadata files said.
enum Flavour {
    Pacman { info: Info },
    Pkgsrc { contents: Contents },
}

/// Reads a pacman or pkgsrc package from `reader` (a tar archive, plain or
/// compressed).
pub fn read_tar_package(
    reader: impl Read,
    options: &ReadOptions,
    sink: &mut dyn ContentSink,
) -> ReadResult<Package> {
    let budget = Budget::new(options.limits);
    let decoded = open_decoded(reader, &budget)?;
    if !is_tar_header(decoded.stream.head()) {
        return Err(Problem::UnknownFormat(format!(
            "{} is not a tar archive",
            decoded.describe("data")
        ))
        .into());
    }
    read_tar_stream(decoded, &budget, options, sink)
}

/// Reads a pacman or pkgsrc package from an opened tar stream (its first
/// bytes checked to be a tar header), within `budget`.
pub fn read_tar_stream(
    decoded: Decoded<'_>,
    budget: &Budget,
    options: &ReadOptions,
    sink: &mut dyn ContentSink,
) -> ReadResult<Package> {
    let what = decoded.describe("tar archive");
    let tar = decoded.stream;
    let mut builder = TreeBuilder::new(options.skip_special);
    let mut captured: Vec<(String, Vec<u8>)> = Vec::new();
    let mut flavour: Option<Flavour> = None;
    let mut ignored: Vec<String> = Vec::new();
    read_tar(tar, budget, &what, |entry, content| {
        let comps = components(&entry.path)?;
        let top_meta = match comps.as_slice() {
            [one] if one.starts_with(b".") || one.starts_with(b"+") => Some(lossy(one)),
            _ => None,
        };
        let Some(current) = &flavour else {
            if let (Some(name), EntryKind::File { size }) = (&top_meta, &entry.kind) {
                return capture(&mut captured, name, *size, content);
            }
            if comps.is_empty() {
                // The root directory's own entry, before any file.
                graft_entry(&mut builder, Mapping::Identity, sink, &entry, content)?;
                return Ok(());
            }
            let decided = decide(&captured)?;
            let mapping = mapping_of(&decided);
            flavour = Some(decided);
            return data_entry(
                &mut builder,
                mapping,
                sink,
                &entry,
                content,
                top_meta,
                &mut ignored,
            );
        };
        let mapping = mapping_of(current);
        data_entry(
            &mut builder,
            mapping,
            sink,
            &entry,
            content,
            top_meta,
            &mut ignored,
        )
    })?;
    let flavour = match flavour {
        Some(f) => f,
        // Only metadata: a meta-package that installs no file.
        None => decide(&captured)?,
    };
    match flavour {
        Flavour::Pacman { info } => pacman_package(info, &captured, builder, ignored),
        Flavour::Pkgsrc { contents } => pkgsrc_package(contents, &captured, builder),
    }
}

fn mapping_of(f: &Flavour) -> Mapping {
    match f {
        Flavour::Pacman { .. } => Mapping::Fhs,
        Flavour::Pkgsrc { .. } => Mapping::Identity,
    }
}

fn capture(
    captured: &mut Vec<(String, Vec<u8>)>,
    name: &str,
    size: u64,
    content: &mut dyn Read,
) -> ReadResult<()> {
    if captured.iter().any(|(k, _)| k == name) {
        return Err(Problem::Duplicate {
            entry: name.to_string(),
            detail: String::new(),
        }
        .into());
    }
    let total: u64 = captured.iter().map(|(_, v)| v.len() as u64).sum::<u64>() + size;
    if total > METADATA_FILE_MAX {
        return Err(Problem::Limit(crate::error::LimitExceeded {
            what: "the package's metadata files".into(),
            limit: METADATA_FILE_MAX,
            raisable: None,
        })
        .into());
    }
    let text =
        read_capped(content, METADATA_FILE_MAX, name).map_err(|e| Failure::from_io(e, name))?;
    check_size(name, text.len() as u64, size)?;
    captured.push((name.to_string(), text));
    Ok(())
}

/// A captured metadata file.
fn get<'a>(captured: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    captured
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_slice())
}

fn decide(captured: &[(String, Vec<u8>)]) -> ReadResult<Flavour> {
    match (get(captured, ".PKGINFO"), get(captured, "+CONTENTS")) {
        (Some(_), Some(_)) => Err(Problem::UnknownFormat(
            "a tar archive with both .PKGINFO (pacman) and +CONTENTS (pkgsrc)".into(),
        )
        .into()),
        (Some(text), None) => Ok(Flavour::Pacman {
            info: parse_info(text, ".PKGINFO")?,
        }),
        (None, Some(text)) => Ok(Flavour::Pkgsrc {
            contents: parse_contents(text)?,
        }),
        (None, None) => Err(Problem::UnknownFormat(
            "a tar archive without .PKGINFO (pacman) or +CONTENTS (pkgsrc) before its first file"
                .into(),
        )
        .into()),
    }
}

fn data_entry(
    builder: &mut TreeBuilder,
    mapping: Mapping,
    sink: &mut dyn ContentSink,
    entry: &ArchiveEntry,
    content: &mut dyn Read,
    top_meta: Option<String>,
    ignored: &mut Vec<String>,
) -> ReadResult<()> {
    if let Some(name) = top_meta {
        if mapping == Mapping::Identity && name.starts_with('+') {
            return Err(Problem::Metadata(format!(
                "{name} comes after the package's files; pkgsrc packages start with their + files"
            ))
            .into());
        }
        if mapping == Mapping::Fhs && name.starts_with('.') {
            // pacman skips unknown top-level dot-files "for future use".
            crate::limits::push_metadata_name(ignored, name, || {
                "the package's top-level dot-files".into()
            })
            .map_err(Problem::Limit)?;
            return Ok(());
        }
    }
    graft_entry(builder, mapping, sink, entry, content)?;
    Ok(())
}

fn pacman_package(
    info: Info,
    captured: &[(String, Vec<u8>)],
    builder: TreeBuilder,
    ignored: Vec<String>,
) -> ReadResult<Package> {
    let file = |n: &str| get(captured, n);
    let name = single(&info, "pkgname")?.to_string();
    pkginfo::check_name(&name)?;
    let full_version = single(&info, "pkgver")?.to_string();
    let (epoch, version) = pkginfo::split_version(&full_version)?;
    let version = version.to_string();
    let mut all = Map::new();
    for (k, v) in &info {
        let slot = all
            .entry(k.clone())
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(list) = slot {
            list.push(Value::String(v.clone()));
        }
    }
    let buildinfo = match file(".BUILDINFO") {
        Some(text) => {
            let parsed = parse_info(text, ".BUILDINFO")?;
            Value::Object(
                parsed
                    .into_iter()
                    .map(|(k, v)| (k, Value::String(v)))
                    .collect(),
            )
        }
        None => Value::Null,
    };
    let one = |k: &str| values(&info, k).first().map(|v| v.to_string());
    let metadata = json!({
        "format": Kind::Pacman.name(),
        "name": name,
        "version": full_version,
        "epoch": epoch,
        "description": one("pkgdesc"),
        "depends": values(&info, "depend"),
        "license": values(&info, "license"),
        "homepage": one("url"),
        "architecture": one("arch"),
        "mapping": Mapping::Fhs.name(),
        "pkginfo": all,
        "buildinfo": buildinfo,
        "install": file(".INSTALL").map(lossy),
        "metadata_files": PACMAN_KEPT.iter().filter(|n| file(n).is_some()).collect::<Vec<_>>(),
        "ignored": ignored,
        "skipped": builder.skipped(),
    });
    Ok(Package {
        kind: Kind::Pacman,
        name,
        version,
        metadata,
        tree: builder.finish(),
    })
}

fn pkgsrc_package(
    contents: Contents,
    captured: &[(String, Vec<u8>)],
    builder: TreeBuilder,
) -> ReadResult<Package> {
    let file = |n: &str| get(captured, n);
    let (name, version) = split_pkgname(&contents.pkgname)?;
    let (name, version) = (name.to_string(), version.to_string());
    let mut listed = BTreeSet::new();
    for f in &contents.files {
        match Mapping::Identity.place(components(f.as_bytes())?) {
            Placement::At(c) => {
                listed.insert(c.join(&b'/'));
            }
            Placement::Root => {
                return Err(Problem::Metadata(format!("+CONTENTS lists {f:?}, not a file")).into());
            }
        }
    }
    let present: BTreeSet<Vec<u8>> = builder.non_dir_paths().into_iter().collect();
    if let Some(extra) = present.difference(&listed).next() {
        return Err(Problem::Metadata(format!(
            "the archive holds {:?}, which +CONTENTS does not list",
            lossy(extra)
        ))
        .into());
    }
    if let Some(missing) = listed.difference(&present).next() {
        return Err(Problem::Metadata(format!(
            "+CONTENTS lists {:?}, which the archive lacks",
            lossy(missing)
        ))
        .into());
    }
    let build_info = match file("+BUILD_INFO") {
        Some(text) => parse_build_info(text)?,
        None => Vec::new(),
    };
    let info = |k: &str| {
        build_info
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let text = |n: &str| file(n).map(|t| lossy(t).trim_end().to_string());
    let metadata = json!({
        "format": Kind::Pkgsrc.name(),
        "name": name,
        "version": version,
        "pkgname": contents.pkgname,
        "description": text("+COMMENT"),
        "long_description": text("+DESC"),
        "depends": contents.depends,
        "build_depends": contents.build_depends,
        "conflicts": contents.conflicts,
        "license": info("LICENSE").map(|l| vec![l]).unwrap_or_default(),
        "homepage": info("HOMEPAGE"),
        "architecture": info("MACHINE_ARCH"),
        "prefix": contents.prefix,
        "mapping": Mapping::Identity.name(),
        "build_info": build_info.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect::<Map<_, _>>(),
        "install": text("+INSTALL"),
        "deinstall": text("+DEINSTALL"),
        "display": text("+DISPLAY"),
        "skipped": builder.skipped(),
    });
    Ok(Package {
        kind: Kind::Pkgsrc,
        name,
        version,
        metadata,
        tree: builder.finish(),
    })
}
