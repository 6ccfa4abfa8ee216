//! Debian binary packages (`.deb`).
//!
//! A `.deb` is an ar archive: `debian-binary` (format `2.x`), then
//! `control.tar[.gz|.xz|.zst]`, then `data.tar[.gz|.xz|.zst|.bz2]`; members
//! whose names start with `_` may sit in between and are ignored, as dpkg
//! does. Compressions are recognised by magic number, not member name.
//!
//! Metadata: every field of `control` (name from `Package`, version from
//! `Version` without its epoch), the maintainer scripts and `conffiles`
//! as text, and the licences of a machine-readable (DEP-5)
//! `usr/share/doc/PACKAGE/copyright`. `data.tar` is mapped with
//! [`Mapping::Fhs`].

use std::io::{self, Read};

use serde_json::{Map, Value, json};

use crate::builder::TreeBuilder;
use crate::control::{
    check_package_name, dep5_licenses, field, parse_control, relations, split_version,
};
use crate::entry::{EntryKind, Mapping, components, lossy};
use crate::error::{Failure, Problem, ReadResult};
use crate::limits::{Budget, Counted, METADATA_FILE_MAX, Metered, push_metadata_name, read_capped};
use crate::package::{ContentSink, Kind, Package, ReadOptions, graft_entry};
use crate::sniff::{Compression, Peeked, SNIFF_LEN, decoder, hex_prefix, is_tar_header};
use crate::tarstream::read_tar;

/// Control members kept as text in the metadata.
const KEPT_CONTROL_FILES: &[&str] = &[
    "conffiles",
    "preinst",
    "postinst",
    "prerm",
    "postrm",
    "config",
    "triggers",
];
/// Largest `copyright` file read for licences.
const COPYRIGHT_MAX: u64 = 1 << 20;

/// Reads a `.deb` from `reader`, storing its files' contents in `sink`.
pub fn read_deb(
    reader: impl Read,
    options: &ReadOptions,
    sink: &mut dyn ContentSink,
) -> ReadResult<Package> {
    let budget = Budget::new(options.limits);
    let mut ar = crate::ar::ArReader::new(reader);

    let first = member(&mut ar, &budget, |name, size, m| {
        if name != "debian-binary" {
            return Err(Problem::UnknownFormat(format!(
                "an ar archive whose first member is {name:?}, not debian-binary: not a .deb"
            ))
            .into());
        }
        let text = read_capped(m, 64, "debian-binary").map_err(|e| Failure::from_io(e, &name))?;
        crate::package::check_size(&name, text.len() as u64, size)?;
        if !(text.starts_with(b"2.") && text.ends_with(b"\n")) {
            return Err(Problem::Metadata(format!(
                "unsupported .deb format version {:?} (nip reads 2.x)",
                lossy(&text)
            ))
            .into());
        }
        Ok(())
    })?;
    first.ok_or_else(|| Problem::UnknownFormat("an empty ar archive: not a .deb".into()))?;

    let control = loop {
        let read = member(&mut ar, &budget, |name, _, m| {
            if name.starts_with('_') {
                return Ok(None);
            }
            if !name.starts_with("control.tar") {
                return Err(Problem::Corrupt(format!(
                    "member {name:?} where control.tar was expected"
                ))
                .into());
            }
            Ok(Some(read_control(m, &name, &budget)?))
        })?;
        match read {
            Some(Some(c)) => break c,
            Some(None) => continue,
            None => return Err(Problem::Corrupt("no control.tar member".into()).into()),
        }
    };
    let fields = parse_control(&control.control)?;
    let package = field(&fields, "Package").unwrap_or_default().to_string();
    let full_version = field(&fields, "Version").unwrap_or_default().to_string();
    check_package_name(&package)?;
    let (epoch, version) = split_version(&full_version)?;
    let version = version.to_string();

    let mut builder = TreeBuilder::new(options.skip_special);
    let mut licenses = Vec::new();
    let copyright: Vec<Vec<u8>> = ["usr", "share", "doc", package.as_str(), "copyright"]
        .iter()
        .map(|c| c.as_bytes().to_vec())
        .collect();
    loop {
        let read = member(&mut ar, &budget, |name, _, m| {
            if name.starts_with('_') {
                return Ok(false);
            }
            if !name.starts_with("data.tar") {
                return Err(Problem::Corrupt(format!(
                    "member {name:?} where data.tar was expected"
                ))
                .into());
            }
            tar_member(m, &name, &budget, |entry, content| {
                let is_copyright = matches!(entry.kind, EntryKind::File { size } if size <= COPYRIGHT_MAX)
                    && components(&entry.path).is_ok_and(|c| c == copyright);
                if is_copyright {
                    // Small enough to hold: read it once for the licences
                    // and store it from memory.
                    let text = read_capped(content, COPYRIGHT_MAX, "copyright")
                        .map_err(|e| Failure::from_io(e, &entry.display()))?;
                    licenses = dep5_licenses(&text);
                    graft_entry(&mut builder, Mapping::Fhs, sink, &entry, &mut &text[..])?;
                } else {
                    graft_entry(&mut builder, Mapping::Fhs, sink, &entry, content)?;
                }
                Ok(())
            })?;
            Ok(true)
        })?;
        match read {
            Some(true) => break,
            Some(false) => continue,
            None => return Err(Problem::Corrupt("no data.tar member".into()).into()),
        }
    }

    let mut control_fields = Map::new();
    for (k, v) in &fields {
        control_fields.insert(k.clone(), Value::String(v.clone()));
    }
    let description = field(&fields, "Description").unwrap_or_default();
    let (summary, long) = description.split_once('\n').unwrap_or((description, ""));
    let mut depends = relations(field(&fields, "Pre-Depends"));
    depends.extend(relations(field(&fields, "Depends")));
    let metadata = json!({
        "format": Kind::Deb.name(),
        "name": package,
        "version": full_version,
        "epoch": epoch,
        "description": summary,
        "long_description": long,
        "depends": depends,
        "license": licenses,
        "homepage": field(&fields, "Homepage"),
        "architecture": field(&fields, "Architecture"),
        "maintainer": field(&fields, "Maintainer"),
        "mapping": Mapping::Fhs.name(),
        "control": control_fields,
        "scripts": control.scripts,
        "control_files": control.names,
        "skipped": builder.skipped(),
    });
    Ok(Package {
        kind: Kind::Deb,
        name: package,
        version,
        metadata,
        tree: builder.finish(),
    })
}

/// What `control.tar` held.
struct Control {
    control: Vec<u8>,
    scripts: Map<String, Value>,
    names: Vec<String>,
}

fn read_control(m: &mut dyn Read, name: &str, budget: &Budget) -> ReadResult<Control> {
    let mut control = None;
    let mut scripts = Map::new();
    let mut names = Vec::new();
    let mut kept = 0u64;
    tar_member(m, name, budget, |entry, content| {
        let comps = components(&entry.path)?;
        let [file] = comps.as_slice() else {
            return Ok(());
        };
        let file = lossy(file);
        let EntryKind::File { size } = entry.kind else {
            return Ok(());
        };
        push_metadata_name(&mut names, file.clone(), || format!("the files of {name}"))
            .map_err(Problem::Limit)?;
        let wanted = file == "control" || KEPT_CONTROL_FILES.contains(&file.as_str());
        if !wanted {
            return Ok(());
        }
        kept += size;
        if kept > METADATA_FILE_MAX {
            return Err(Problem::Limit(crate::error::LimitExceeded {
                what: format!("the control files of {name}"),
                limit: METADATA_FILE_MAX,
                raisable: None,
            })
            .into());
        }
        let text = read_capped(content, METADATA_FILE_MAX, &file)
            .map_err(|e| Failure::from_io(e, &file))?;
        crate::package::check_size(&file, text.len() as u64, size)?;
        if file == "control" {
            control = Some(text);
        } else {
            scripts.insert(file, Value::String(lossy(&text)));
        }
        Ok(())
    })?;
    let control =
        control.ok_or_else(|| Problem::Metadata(format!("{name} has no control file")))?;
    Ok(Control {
        control,
        scripts,
        names,
    })
}

/// Calls `f` with the next ar member's name and content, then checks the
/// member was read whole. `None` at the end of the archive.
fn member<R: Read, T>(
    ar: &mut crate::ar::ArReader<R>,
    budget: &Budget,
    f: impl FnOnce(String, u64, &mut dyn Read) -> ReadResult<T>,
) -> ReadResult<Option<T>> {
    let Some(header) = ar
        .next_member()
        .map_err(|e| Failure::from_io(e, "ar archive"))?
    else {
        return Ok(None);
    };
    budget.entry()?;
    let name = lossy(&header.name);
    let size = header.size;
    let mut counted = Counted::new(&mut *ar);
    let value = f(name.clone(), size, &mut counted)?;
    // Whatever the reader left must be nothing: a compressed stream ends
    // where its member ends.
    let rest = io::copy(&mut counted, &mut io::sink()).map_err(|e| Failure::from_io(e, &name))?;
    if counted.count() != size {
        return Err(Problem::Corrupt(format!(
            "member {name:?} is truncated ({} of its {size} bytes)",
            counted.count()
        ))
        .into());
    }
    if rest > 0 && (name.starts_with("control.tar") || name.starts_with("data.tar")) {
        return Err(Problem::Corrupt(format!(
            "member {name:?}: {rest} bytes after its compressed data"
        ))
        .into());
    }
    Ok(Some(value))
}

/// Reads a (possibly compressed) tar member, decoding by magic number.
fn tar_member(
    m: &mut dyn Read,
    name: &str,
    budget: &Budget,
    each: impl FnMut(crate::entry::ArchiveEntry, &mut dyn Read) -> ReadResult<()>,
) -> ReadResult<()> {
    let peeked = Peeked::new(m, SNIFF_LEN).map_err(|e| Failure::from_io(e, name))?;
    let compression = match Compression::from_magic(peeked.head()) {
        Some(c) => c,
        None if is_tar_header(peeked.head()) => Compression::None,
        None => {
            return Err(Problem::UnknownCompression {
                member: name.to_string(),
                magic: hex_prefix(peeked.head()),
            }
            .into());
        }
    };
    let decoded = decoder(compression, peeked).map_err(|e| Failure::from_io(e, name))?;
    read_tar(Metered::new(decoded, budget), budget, name, each)
}
