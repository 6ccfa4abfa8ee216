//! A package read from an archive, and what every format shares: where
//! file contents go ([`ContentSink`]), the options, the step from archive
//! entry to tree, and recognising the format ([`read_named_package`]).

use std::fmt;
use std::io::Read;

use nexus_store::Hash;
use nexus_store::catalog::PackageRow;
use nexus_store::tree::Tree;

use crate::builder::{Added, TreeBuilder};
use crate::entry::{ArchiveEntry, EntryKind, Mapping, components};
use crate::error::{Failure, Problem, ReadResult};
use crate::limits::{Budget, Limits};
use crate::sniff::{
    Format, NAR_MAGIC, Peeked, SNIFF_LEN, hex_prefix, is_tar_header, open_decoded, sniff,
};

/// The package formats nip grafts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Debian `.deb`.
    Deb,
    /// Arch Linux / pacman `.pkg.tar.*`.
    Pacman,
    /// pkgsrc binary package `.tgz`.
    Pkgsrc,
    /// Nix archive (`.nar`, `.nar.xz`, `.nar.zst`).
    Nar,
}

impl Kind {
    /// The name used in origins (`deb:/path`) and metadata.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Deb => "deb",
            Kind::Pacman => "pacman",
            Kind::Pkgsrc => "pkgsrc",
            Kind::Nar => "nar",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A package read from an archive, its file contents already stored.
#[derive(Clone, Debug)]
pub struct Package {
    /// Its format.
    pub kind: Kind,
    /// App name, from the package's metadata.
    pub name: String,
    /// Version as a path component (the epoch dropped; see README).
    pub version: String,
    /// Everything else the metadata says, as JSON (`packages.metadata`).
    pub metadata: serde_json::Value,
    /// The tree, every file's content hash filled in.
    pub tree: Tree,
}

/// The full version of a stored package, epoch included (`1:2.0`), where
/// this store can vouch for its epoch; `None` where it cannot, or where
/// the metadata names no full version that drops to the version the
/// package is stored under (other formats, a version renamed). Callers
/// then compare by the stored version alone, as for a directory: an
/// unknown epoch is no evidence of epoch 0.
///
/// A package's metadata (`packages.metadata`, whose `format` and `version`
/// give the epoch grafting drops from the name) is believed when:
///
/// - this store's importer wrote it, reading a `.deb` or pacman file root
///   chose (origin `deb:PATH`, `pacman:PATH`: the file's own control
///   data); or
/// - the package is unrestricted (`packages.restricted_to` NULL): root
///   added it, or a key trusted for every App (or for whole systems: an
///   image, a pulled generation) vouched for it, one that could as well
///   have signed any version of any App under any name. A store's
///   `nip pack` of its own grafted `.deb`, imported under such a key,
///   keeps its place in Debian's order (a stored epoch-2 version is not
///   taken back by apt's epoch-1 candidate).
///
/// Not from a signer restricted to some Apps: its `.npk`'s metadata is its
/// own writing, and a claimed `99:1.0` stored as `1.0` would outrank every
/// candidate apt offers, within any version constraint, and so hold back
/// the App's updates in every build. Its packages are ordered by their
/// stored names. (A restriction an unrestricted add lifts takes that
/// add's metadata with it: see `nexus_store`'s commit.)
pub fn full_version(package: &PackageRow) -> Option<String> {
    let grafted_here = [Kind::Deb, Kind::Pacman].iter().any(|kind| {
        package
            .origin
            .strip_prefix(kind.name())
            .is_some_and(|path| path.starts_with(':'))
    });
    if !grafted_here && package.restricted_to.is_some() {
        return None;
    }
    claimed_full_version(&package.metadata, &package.version)
}

/// The full version `metadata` states for a `.deb` or pacman package, if
/// it drops to `stored`, whoever wrote it.
fn claimed_full_version(metadata: &str, stored: &str) -> Option<String> {
    let metadata: serde_json::Value = serde_json::from_str(metadata).ok()?;
    let format = metadata["format"].as_str()?;
    if format != Kind::Deb.name() && format != Kind::Pacman.name() {
        return None;
    }
    let full = metadata["version"].as_str()?;
    (without_epoch(full) == stored).then(|| full.to_string())
}

/// A version without its epoch (`1:2.0` → `2.0`), as packages are stored.
pub fn without_epoch(version: &str) -> &str {
    match version.split_once(':') {
        Some((epoch, rest)) if !epoch.is_empty() && epoch.bytes().all(|b| b.is_ascii_digit()) => {
            rest
        }
        _ => version,
    }
}

/// How to read packages.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReadOptions {
    /// Size and count limits, per package.
    pub limits: Limits,
    /// Leave device nodes and FIFOs out instead of refusing the package.
    pub skip_special: bool,
}

/// What names a package besides its bytes: the file's name (a NAR is named
/// only by the store path in it) and `nip add --name`/`--version`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Naming<'a> {
    /// The package file's name, without its directory.
    pub file_name: Option<&'a str>,
    /// `--name`, if given.
    pub name: Option<&'a str>,
    /// `--version`, if given.
    pub version: Option<&'a str>,
}

/// Where file contents go as the archive streams by: the store, or (for
/// tests and fuzzing) nowhere but a hash.
pub trait ContentSink {
    /// Stores `size` bytes read from `content` (the file `entry` of the
    /// archive) and returns their BLAKE3. Fewer bytes is an error: the
    /// archive is truncated.
    fn store(&mut self, content: &mut dyn Read, size: u64, entry: &str) -> ReadResult<Hash>;
}

/// A [`ContentSink`] that only hashes: the parsing layer without a store.
#[derive(Default)]
pub struct HashSink {
    /// Files stored.
    pub files: u64,
    /// Bytes stored.
    pub bytes: u64,
}

impl ContentSink for HashSink {
    fn store(&mut self, content: &mut dyn Read, size: u64, entry: &str) -> ReadResult<Hash> {
        let mut h = blake3::Hasher::new();
        let n = std::io::copy(content, &mut h).map_err(|e| Failure::from_io(e, entry))?;
        check_size(entry, n, size)?;
        self.files += 1;
        self.bytes += n;
        Ok(Hash::from(h.finalize()))
    }
}

/// Refuses content shorter than its entry claimed.
pub fn check_size(entry: &str, got: u64, size: u64) -> Result<(), Problem> {
    if got != size {
        return Err(Problem::Corrupt(format!(
            "entry {entry:?} is truncated ({got} of its {size} bytes)"
        )));
    }
    Ok(())
}

/// Places `entry` in the package by `mapping`, storing its content if it
/// is a new regular file.
pub fn graft_entry(
    builder: &mut TreeBuilder,
    mapping: Mapping,
    sink: &mut dyn ContentSink,
    entry: &ArchiveEntry,
    content: &mut dyn Read,
) -> ReadResult<Added> {
    let raw = components(&entry.path)?;
    let place = mapping.place(raw.clone());
    let link = match &entry.kind {
        EntryKind::HardLink { target } => Some(mapping.place(components(target)?)),
        _ => None,
    };
    let added = builder.add(entry, &raw, &place, link.as_ref())?;
    if let (Added::File(ino), EntryKind::File { size }) = (added, &entry.kind) {
        let hash = sink.store(content, *size, &entry.display())?;
        builder.set_content(ino, hash);
    }
    Ok(added)
}

/// Reads a package of any supported format, recognised by its content.
/// A NAR, which names no package, cannot be read this way: see
/// [`read_named_package`].
pub fn read_package(
    reader: impl Read,
    options: &ReadOptions,
    sink: &mut dyn ContentSink,
) -> ReadResult<Package> {
    read_named_package(reader, &Naming::default(), options, sink)
}

/// Reads a package of any supported format, recognised by its content
/// (compressed files by what they hold once decompressed); `naming` names
/// a NAR.
pub fn read_named_package(
    reader: impl Read,
    naming: &Naming<'_>,
    options: &ReadOptions,
    sink: &mut dyn ContentSink,
) -> ReadResult<Package> {
    let peeked = Peeked::new(reader, SNIFF_LEN).map_err(|e| Failure::from_io(e, "reading"))?;
    if sniff(peeked.head())? == Format::Ar {
        return crate::deb::read_deb(peeked, options, sink);
    }
    let budget = Budget::new(options.limits);
    let decoded = open_decoded(peeked, &budget)?;
    let head = decoded.stream.head();
    if head.starts_with(NAR_MAGIC) {
        crate::nar::read_nar_package(decoded, &budget, naming, options, sink)
    } else if is_tar_header(head) {
        crate::tarpkg::read_tar_stream(decoded, &budget, options, sink)
    } else {
        Err(Problem::UnknownFormat(format!(
            "{} is neither a tar archive nor a NAR (first bytes {})",
            decoded.describe("data"),
            hex_prefix(head)
        ))
        .into())
    }
}

#[cfg(test)]
mod tests {
    use nexus_store::Hash;
    use nexus_store::catalog::PackageRow;

    use super::{claimed_full_version, full_version};

    #[test]
    fn the_full_version_is_read_back_only_where_it_names_the_stored_one() {
        let deb = r#"{"format":"deb","version":"1:2.36-9","epoch":1}"#;
        assert_eq!(
            claimed_full_version(deb, "2.36-9").as_deref(),
            Some("1:2.36-9")
        );
        let plain = r#"{"format":"pacman","version":"2.0-1"}"#;
        assert_eq!(
            claimed_full_version(plain, "2.0-1").as_deref(),
            Some("2.0-1")
        );
        // Metadata that names another version, or none, or another format.
        assert_eq!(claimed_full_version(deb, "2.36-10"), None);
        assert_eq!(claimed_full_version(r#"{"format":"deb"}"#, "1"), None);
        assert_eq!(
            claimed_full_version(r#"{"format":"nar","version":"1:1"}"#, "1"),
            None
        );
        assert_eq!(claimed_full_version("not json", "1"), None);
    }

    /// Whose word the epoch is: this store's grafting of a file, or a
    /// package vouched for unrestricted; never a restricted signer's.
    #[test]
    fn an_epoch_is_believed_only_from_this_store_s_graft_or_an_unrestricted_package() {
        let row = |origin: &str, restricted_to: Option<&str>| PackageRow {
            id: 1,
            name: "tzdata".into(),
            version: "1.0-1".into(),
            origin: origin.into(),
            tree_hash: Hash([0; 32]),
            root: 1,
            added: 0,
            files: 0,
            bytes: 0,
            metadata: r#"{"format":"deb","version":"99:1.0-1"}"#.into(),
            restricted_to: restricted_to.map(str::to_string),
        };
        let believed = Some("99:1.0-1".to_string());
        for origin in ["deb:/var/cache/tzdata.deb", "pacman:/p.pkg.tar.zst"] {
            // Grafted here: the file's own control data, whatever rank an
            // image gave the package since.
            assert_eq!(full_version(&row(origin, None)), believed);
            assert_eq!(full_version(&row(origin, Some("tz*"))), believed);
        }
        for origin in ["npk:/vendor.npk", "remote:origin", "image:/i.npk"] {
            assert_eq!(full_version(&row(origin, None)), believed, "{origin}");
            assert_eq!(full_version(&row(origin, Some("tz*"))), None, "{origin}");
        }
        // Not a grafted file's origin, however it starts.
        assert_eq!(full_version(&row("debian:/x", Some("tz*"))), None);
        assert_eq!(full_version(&row("deb", Some("tz*"))), None);
    }
}
