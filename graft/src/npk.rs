//! Importing `.npk` archives: after [`nexus_npk::Archive::open`] has checked
//! the signature and every byte, and decoded the body within the
//! per-package [`Limits`] (a package over them is refused at its count,
//! before its tree is held), each package's files are streamed from the
//! archive's verified chunks into the store, and the package tree is taken
//! as the archive states it (the body decoder has validated it), so the
//! tree hash is the one it had in the store that packed it.

use std::collections::HashSet;
use std::fs;
use std::path::Path;

use nexus_npk::body::BodyLimits;
use nexus_npk::{
    Archive, ArchiveKind, Claim, Expiry, FormatError, NpkError, OverLimit, PackageLimit, Signer,
    TrustSet,
};
use nexus_store::commit::{ExactSet, Membership, Restrictions, StagedPackage};
use nexus_store::ingest::{FileContent, Producer};
use nexus_store::tree::InodeKind;
use nexus_store::{Progress, names};

use crate::add::ArchiveRequest;
use crate::error::{GraftError, Limit, LimitExceeded, Problem};
use crate::limits::Limits;

/// Whose `.npk` signatures `nip add` accepts.
#[derive(Clone, Debug)]
pub enum Trust {
    /// Only archives signed by these keys.
    Keys(TrustSet),
    /// Any well-formed archive (`--insecure`).
    Insecure,
}

/// True if the file at `path` starts like a `.npk`.
pub fn looks_like_npk(path: &Path) -> Result<bool, GraftError> {
    use std::io::Read;
    let mut head = [0u8; 8];
    let mut f = nexus_store::regular::open_regular(path).map_err(|e| GraftError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let n = f.read(&mut head).map_err(|e| GraftError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    Ok(nexus_npk::is_archive(&head[..n]))
}

/// Opens and checks an archive of `kind` (an archive of the other kind is
/// refused: a package is never taken for a whole system, nor an image
/// added as packages); an expired one is refused unless `allow_expired`.
/// Each package's body must keep within `limits`, checked as it is
/// decoded: a signer, even one trusted for a single App, cannot make the
/// importer hold more of a tree than the limits allow before it is
/// refused (with the limit and how to raise it, as a package file's).
pub fn open(
    path: &Path,
    trust: &Trust,
    kind: ArchiveKind,
    allow_expired: bool,
    limits: &Limits,
) -> Result<Archive, GraftError> {
    let failed = |error: NpkError| match error {
        NpkError::Format(FormatError::OverLimit(over)) => GraftError::Package {
            file: path.to_path_buf(),
            problem: Problem::Limit(limit_exceeded(over)),
        },
        error => GraftError::Npk {
            file: path.to_path_buf(),
            error,
        },
    };
    let expiry = Expiry::unless_allowed(allow_expired);
    let policy = match trust {
        Trust::Keys(set) => nexus_npk::Policy::Trusted(set, expiry),
        Trust::Insecure => nexus_npk::Policy::Insecure,
    };
    let body_limits = BodyLimits {
        max_packages: u64::MAX,
        max_entries: limits.max_entries,
        max_unpacked_size: limits.max_unpacked_size,
    };
    let archive = Archive::open_as(path, kind, policy, &body_limits).map_err(failed)?;
    // Unverified archives were reported by the reader already.
    if let Signer::Trusted(grant) = &archive.signer {
        tracing::info!(
            "{}: signed by {} ({}), trusted for {}",
            path.display(),
            grant.key.name,
            grant.key.id(),
            grant.scope
        );
    }
    Ok(archive)
}

/// Refuses `request`'s new name for the package of `archive` unless its
/// key may sign that App too: a key limited to some Apps signs only for
/// them, whatever the package is renamed to here.
pub fn check_rename(archive: &Archive, request: &ArchiveRequest) -> Result<(), GraftError> {
    if let (Signer::Trusted(grant), Some(name)) = (&archive.signer, &request.name) {
        grant.check_app(name).map_err(|e| GraftError::Npk {
            file: request.path.clone(),
            error: e.into(),
        })?;
    }
    Ok(())
}

/// The package set importing `image` makes: exactly its packages and its
/// `Current` choices, committed only if its counter passes the replay
/// check of its trust domain (and is then recorded with it).
pub fn image_membership(image: &Archive, trust: &Trust, allow_downgrade: bool) -> Membership {
    let exact = Membership::Exactly(ExactSet {
        current: image.body.current_specs(),
        action: format!(
            "image {} (counter {})",
            image.path().display(),
            image.manifest.counter
        ),
        // Its key decides the rank of every package it holds.
        restrictions: Restrictions::AsStated,
    });
    let claim = match trust {
        Trust::Keys(set) => Claim::of(image, set),
        Trust::Insecure => None,
    };
    match claim {
        Some(claim) => exact.with_precondition(claim.precondition(allow_downgrade)),
        None => exact,
    }
}

/// The limit a body went over, as a package file's would be told (the
/// caller's limits are the ones the body was decoded within).
fn limit_exceeded(over: OverLimit) -> LimitExceeded {
    LimitExceeded {
        what: format!("{}: {}", over.package, over.what),
        limit: over.limit,
        raisable: Some(match over.which {
            PackageLimit::Entries => Limit::Entries,
            PackageLimit::UnpackedSize => Limit::UnpackedSize,
        }),
    }
}

/// Stages every package of `archive` (opened by [`open`], within the
/// limits), storing its file contents.
pub fn stage(
    archive: &Archive,
    request: &ArchiveRequest,
    producer: &mut Producer<'_>,
    contents: &mut Vec<FileContent>,
    progress: &dyn Progress,
) -> Result<Vec<StagedPackage>, GraftError> {
    let path = archive.path();
    let refused = |problem: Problem| GraftError::Package {
        file: path.to_path_buf(),
        problem,
    };
    if archive.body.packages.len() != 1 && (request.name.is_some() || request.version.is_some()) {
        return Err(refused(Problem::Naming(format!(
            "a name and version were given for an archive of {} packages",
            archive.body.packages.len()
        ))));
    }

    // Which contents the packages use (the body holds no others, but only
    // what is used is stored), stored in block order: each block of the
    // archive is then decoded about once.
    let mut used = HashSet::new();
    for package in &archive.body.packages {
        for inode in &package.tree.inodes {
            if let InodeKind::File {
                content: Some(hash),
                ..
            } = &inode.kind
            {
                used.insert(*hash);
            }
        }
    }
    for blob in archive.blobs_in_block_order() {
        if !used.contains(&blob.hash) {
            continue;
        }
        let hash = &blob.hash;
        let mut reader = archive.blob_reader(blob);
        let file = producer
            .add(&mut reader, blob.size, &|n| progress.advance(n))
            .map_err(|e| match e {
                nexus_store::chunker::ChunkError::Io(io) => GraftError::Npk {
                    file: path.to_path_buf(),
                    error: NpkError::Damaged(io.to_string()),
                },
                nexus_store::chunker::ChunkError::Sink(msg) => {
                    GraftError::Store(nexus_store::StoreError::Invalid(msg))
                }
            })?;
        if file.hash != *hash || file.size != blob.size {
            return Err(refused(Problem::Corrupt(format!(
                "content {hash} reads back as {} ({} bytes)",
                file.hash, file.size
            ))));
        }
        contents.push(file);
    }
    let granted = restricted_to(archive);
    let mut staged = Vec::new();
    for package in &archive.body.packages {
        let name = request.name.clone().unwrap_or_else(|| package.name.clone());
        let version = request
            .version
            .clone()
            .unwrap_or_else(|| package.version.clone());
        names::check_name(&name)?;
        names::check_version(&version)?;
        staged.push(StagedPackage {
            name,
            version,
            origin: format!(
                "npk:{}",
                fs::canonicalize(path)
                    .unwrap_or_else(|_| path.to_path_buf())
                    .display()
            ),
            metadata: package.metadata.clone(),
            tree: package.tree.clone(),
            // The local grant first (it is this store's policy); else
            // what the signed body states: an image's packages, which its
            // key vouches for as a whole system, rank here as they did in
            // the store that wrote it. A stated restriction only ever
            // ranks a package lower, so it is honoured from any signer.
            restricted_to: granted.clone().or_else(|| package.restricted_to.clone()),
        });
    }
    Ok(staged)
}

/// The App patterns `archive`'s signer is restricted to, recorded with its
/// packages: `None` for a key trusted for every App or for images, and for
/// an archive accepted unverified (`--insecure`: root took it as is, and
/// no grant limits what it claims).
fn restricted_to(archive: &Archive) -> Option<String> {
    match &archive.signer {
        Signer::Trusted(grant) => grant.restricted_to(),
        Signer::Unverified(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use nexus_npk::manifest::{VERSION, encode_header};
    use nexus_npk::{AppPattern, KeyStore, Member, Scope, WriteOptions, write_archive};
    use nexus_store::{AddDir, AddOptions, NoProgress, Store};

    use super::*;

    /// The kind `open` checks (from the header, one open of the path) must
    /// be the kind of the archive it returns (checked and read through a
    /// second open). A file swapped in between, by whoever can write the
    /// archive's directory, turned a signed package into a whole system
    /// for `nexus switch` (no counter, every other App dropped), and a
    /// signed image into packages for `nip add` (no counter either).
    #[test]
    fn an_archive_swapped_after_its_kind_was_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(src.join("bin")).unwrap();
        fs::write(src.join("bin/vendortool"), b"#!/bin/sh\n").unwrap();
        let mut store = Store::init(&dir.path().join("store")).unwrap();
        let add = AddDir {
            path: src,
            name: "vendortool".into(),
            version: "1".into(),
        };
        store
            .add_dirs(&[add], AddOptions::default(), &NoProgress)
            .unwrap();
        let package = store.installed("vendortool/1").unwrap();
        let keys = KeyStore::new(dir.path().join("keys"));
        keys.generate("vendor").unwrap();
        let secret = keys.secret("vendor").unwrap();
        let public = keys.public_file("vendor").unwrap();
        // A vendor key trusted for its own Apps' packages, and (another
        // grant) for images.
        keys.trust(
            &public,
            Scope::Packages {
                apps: vec![AppPattern::parse("vendor*").unwrap()],
            },
        )
        .unwrap();
        keys.trust(
            &public,
            Scope::Images {
                domain: "images".into(),
            },
        )
        .unwrap();
        let trust = Trust::Keys(keys.trust_set().unwrap());
        let write = |kind: ArchiveKind, name: &str| {
            let out = dir.path().join(name);
            let member = Member {
                package: &package,
                current: true,
            };
            let options = WriteOptions {
                kind,
                counter: u64::from(kind == ArchiveKind::Image),
                created: 0,
                expires: None,
                signer: Some(&secret),
            };
            write_archive(&store, &[member], &out, &options).unwrap();
            out
        };
        let cases = [
            (ArchiveKind::Image, write(ArchiveKind::Package, "real.npk")),
            (ArchiveKind::Package, write(ArchiveKind::Image, "image.npk")),
        ];
        for (expected, real) in cases {
            // A decoy whose header alone claims the expected kind.
            let decoy = dir.path().join("decoy");
            fs::write(&decoy, encode_header(expected, VERSION)).unwrap();
            let path = dir.path().join("offered.npk");
            fs::copy(&decoy, &path).unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let swapper = {
                let (stop, path, real, decoy) =
                    (stop.clone(), path.clone(), real.clone(), decoy.clone());
                let tmp = path.with_extension("tmp");
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        for from in [&real, &decoy] {
                            let _ = fs::remove_file(&tmp);
                            fs::hard_link(from, &tmp).unwrap();
                            fs::rename(&tmp, &path).unwrap();
                        }
                    }
                })
            };
            let started = Instant::now();
            let mut opened = 0;
            let mut wrong = None;
            while started.elapsed() < Duration::from_secs(2) && wrong.is_none() {
                if let Ok(archive) = open(&path, &trust, expected, false, &Limits::default()) {
                    opened += 1;
                    if archive.manifest.kind != expected {
                        wrong = Some(archive.manifest.kind);
                    }
                }
            }
            stop.store(true, Ordering::Relaxed);
            swapper.join().unwrap();
            assert_eq!(
                wrong, None,
                "asked for {expected:?}, got an archive of another kind ({opened} opened)"
            );
        }
    }

    /// The review's finding: the body of a signed `.npk` was decoded whole
    /// (up to 512 MiB, trees and all) before the per-package limits were
    /// checked, so a signer trusted for one App made `nip add` hold several
    /// times that before refusing it (3.4 GB for 27 million hard links of
    /// one empty file, from a 7 MB archive). Now the decoder checks each
    /// count against the limits before it reads the items, and sums file
    /// sizes as it reads them. The bodies below do not bother to match
    /// their tree hash (nothing checked it before the whole tree was held):
    /// the old decoder refused them as malformed, having held them; now
    /// the limit refuses them, naming itself and the flag that raises it,
    /// and the store is left as it was.
    #[test]
    fn a_signed_body_over_the_limits_is_refused_before_it_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let vendor = KeyStore::new(dir.path().join("vendor-keys"));
        vendor.generate("vendor").unwrap();
        let host_keys = KeyStore::new(dir.path().join("keys"));
        let apps = vec![AppPattern::parse("vendor*").unwrap()];
        host_keys
            .trust(
                &vendor.public_file("vendor").unwrap(),
                Scope::Packages { apps },
            )
            .unwrap();
        let mut store = Store::init(&dir.path().join("store")).unwrap();
        let limits = Limits {
            max_unpacked_size: 1 << 20,
            max_entries: 1000,
        };
        let options = crate::AddOptions {
            threads: 1,
            read: crate::ReadOptions {
                limits,
                skip_special: false,
            },
            trust: Trust::Keys(host_keys.trust_set().unwrap()),
            allow_downgrade: false,
            allow_expired: false,
            source_policy: Default::default(),
        };
        let add = |store: &mut Store, shape: Hostile| {
            let path = dir.path().join("hostile.npk");
            hostile_archive(&path, &vendor.secret("vendor").unwrap(), shape);
            let request = ArchiveRequest {
                path,
                name: None,
                version: None,
            };
            let sources = [crate::Source::Archive(request)];
            crate::add(store, &sources, options.clone(), &NoProgress)
        };
        let cases = [
            (
                Hostile::Links(1001),
                Limit::Entries,
                "the number of entries (1001)",
            ),
            (
                Hostile::Inodes(1001),
                Limit::Entries,
                "to name its 1002 inodes",
            ),
            (
                Hostile::Sizes {
                    files: 3,
                    size: 400 << 10,
                },
                Limit::UnpackedSize,
                "the unpacked size (at least 1228800 bytes)",
            ),
        ];
        for (shape, limit, what) in cases {
            match add(&mut store, shape) {
                Err(GraftError::Package {
                    problem: Problem::Limit(exceeded),
                    ..
                }) => {
                    assert_eq!(exceeded.raisable, Some(limit), "{shape:?}: {exceeded}");
                    assert!(
                        exceeded.what.starts_with("vendortool/1: ") && exceeded.what.contains(what),
                        "{shape:?}: {exceeded}"
                    );
                }
                other => panic!("{shape:?}: refused by the limit, not {other:?}"),
            }
        }
        // At the limit the count passes; the tree hash refuses the body.
        match add(&mut store, Hostile::Links(1000)) {
            Err(GraftError::Npk {
                error: NpkError::Format(FormatError::Malformed(why)),
                ..
            }) => assert!(why.contains("tree hash"), "{why}"),
            other => panic!("refused for its tree hash, not {other:?}"),
        }
        assert_eq!(store.catalog().current_generation().unwrap(), None);
    }

    /// What a hostile body is made of, beyond one package `vendortool/1`
    /// (an App a key trusted for `vendor*` signs). Its tree hash is not
    /// computed: an attacker need not, since the importer checks it only
    /// once the tree is held.
    #[derive(Clone, Copy, Debug)]
    enum Hostile {
        /// One empty file and this many hard links of it, each under its
        /// own short name: about 19 bytes an entry on the wire.
        Links(u32),
        /// This many files, each claiming `size` bytes.
        Sizes { files: u32, size: u64 },
        /// This many empty directories' worth of inodes, named by nothing.
        Inodes(u32),
        /// The root directory with this many attributes (8-byte names,
        /// empty values: 16 bytes each on the wire).
        Xattrs(u32),
        /// A valid one-file package, then this many chunks (52 bytes each
        /// on the wire) in the body's chunk table.
        Chunks(u32),
    }

    /// Writes `shape` as a package archive signed by `key` to `out`,
    /// streaming the body through zstd (nothing as large as the decoded
    /// body is held).
    fn hostile_archive(out: &Path, key: &nexus_npk::SecretKey, shape: Hostile) {
        use std::io::Write;

        use nexus_npk::body::BODY_MAGIC_V1;
        use nexus_npk::manifest::{END_MAGIC, HEADER_LEN, Manifest, VERSION_UNRESTRICTED};
        use nexus_store::Hash;
        use nexus_store::tree::Tree;

        let mut z = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
        z.include_checksum(true).unwrap();
        let mut w = |bytes: &[u8]| z.write_all(bytes).unwrap();
        let u32_ = |v: u32| v.to_le_bytes();
        let field = |w: &mut dyn FnMut(&[u8]), bytes: &[u8]| {
            w(&u32_(bytes.len() as u32));
            w(bytes);
        };
        let no_xattrs = 0u32.to_le_bytes();
        // kind, mode, uid, gid, mtime, xattrs
        let inode = |w: &mut dyn FnMut(&[u8]), kind: u8, xattrs: &[u8]| {
            w(&[kind]);
            w(&u32_(0o755));
            w(&u32_(0));
            w(&u32_(0));
            w(&0i64.to_le_bytes());
            field(w, xattrs);
        };
        let empty = Hash::of(b"");
        w(BODY_MAGIC_V1);
        w(&u32_(1));
        for text in ["vendortool", "1", "", "{}"] {
            field(&mut w, text.as_bytes());
        }
        w(&[1]); // current
        // The tree hash is not computed, but for the one valid tree.
        let tree_hash = match shape {
            Hostile::Chunks(_) => {
                let mut tree = Tree::with_root(0o755, 0, 0, 0, Vec::new());
                let file = tree.push_inode(nexus_store::tree::Inode {
                    kind: nexus_store::tree::InodeKind::File {
                        size: 0,
                        content: Some(empty),
                    },
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                    mtime: 0,
                    xattrs: Vec::new(),
                });
                tree.push_entry(0, b"f".to_vec(), file);
                tree.tree_hash()
            }
            _ => Hash([7; 32]),
        };
        w(tree_hash.as_bytes());
        match shape {
            Hostile::Links(n) => {
                w(&u32_(2));
                inode(&mut w, 1, &no_xattrs);
                inode(&mut w, 2, &no_xattrs);
                w(&0u64.to_le_bytes());
                w(empty.as_bytes());
                w(&u32_(n));
                for i in 0..n {
                    w(&u32_(0));
                    w(&u32_(1));
                    field(&mut w, format!("{i:x}").as_bytes());
                }
            }
            Hostile::Sizes { files, size } => {
                w(&u32_(files + 1));
                inode(&mut w, 1, &no_xattrs);
                for _ in 0..files {
                    inode(&mut w, 2, &no_xattrs);
                    w(&size.to_le_bytes());
                    w(empty.as_bytes());
                }
                w(&u32_(files));
                for i in 0..files {
                    w(&u32_(0));
                    w(&u32_(i + 1));
                    field(&mut w, format!("{i:x}").as_bytes());
                }
            }
            Hostile::Inodes(n) => {
                w(&u32_(n + 1));
                inode(&mut w, 1, &no_xattrs);
                for _ in 0..n {
                    inode(&mut w, 1, &no_xattrs);
                }
                w(&u32_(0));
            }
            Hostile::Chunks(_) => {
                w(&u32_(2));
                inode(&mut w, 1, &no_xattrs);
                inode(&mut w, 2, &no_xattrs);
                w(&0u64.to_le_bytes());
                w(empty.as_bytes());
                w(&u32_(1));
                w(&u32_(0));
                w(&u32_(1));
                field(&mut w, b"f");
            }
            Hostile::Xattrs(n) => {
                w(&u32_(1));
                let mut xattrs = u32_(n).to_vec();
                for i in 0..n {
                    xattrs.extend_from_slice(&u32_(8));
                    xattrs.extend_from_slice(format!("{i:08x}").as_bytes());
                    xattrs.extend_from_slice(&u32_(0));
                }
                inode(&mut w, 1, &xattrs);
                w(&u32_(0));
            }
        }
        // One empty content (the files'), and the chunks.
        w(&u32_(1));
        w(empty.as_bytes());
        w(&0u64.to_le_bytes());
        w(&u32_(0));
        let chunks = match shape {
            Hostile::Chunks(n) => n,
            _ => 0,
        };
        w(&u32_(chunks));
        for i in 0..chunks {
            w(Hash::of(&i.to_le_bytes()).as_bytes());
            w(&u32_(1)); // length
            w(&HEADER_LEN.to_le_bytes()); // block offset
            w(&u32_(0)); // block length
            w(&u32_(0)); // inner offset
        }
        let frame = z.finish().unwrap();

        let header = encode_header(ArchiveKind::Package, VERSION_UNRESTRICTED);
        let mut content = blake3::Hasher::new();
        content.update(&header);
        content.update(&frame);
        let stated = nexus_npk::body::BodyPackage {
            name: "vendortool".into(),
            version: "1".into(),
            origin: String::new(),
            metadata: "{}".into(),
            current: true,
            restricted_to: None,
            tree_hash,
            tree: Tree::default(),
        };
        let manifest = Manifest {
            version: VERSION_UNRESTRICTED,
            kind: ArchiveKind::Package,
            signer: *key.public().key.as_bytes(),
            counter: 0,
            created: 0,
            expires: None,
            body_offset: HEADER_LEN,
            body_len: frame.len() as u64,
            content_hash: Hash::from(content.finalize()),
            root: nexus_npk::body::root_hash([&stated]),
            body_hash: Hash::of(&frame),
        };
        let signature = key.sign(&manifest.signed_message());
        let mut file = std::io::BufWriter::new(fs::File::create(out).unwrap());
        for part in [
            &header[..],
            &frame,
            &manifest.encode(),
            &signature,
            END_MAGIC,
        ] {
            file.write_all(part).unwrap();
        }
        file.flush().unwrap();
    }

    /// Writes a hostile archive for measuring what importing it costs
    /// (`nip add` under `/usr/bin/time -v`): `NEXUS_HOSTILE=DIR,SHAPE,N`
    /// with SHAPE `links`, `inodes`, `xattrs` or `chunks`; DIR gets `hostile.npk` and
    /// `vendor.pub`, the key to trust with `--apps 'vendor*'`.
    #[test]
    #[ignore = "writes a large file for a measurement; run by hand"]
    fn write_a_hostile_archive_for_measuring() {
        let Ok(spec) = std::env::var("NEXUS_HOSTILE") else {
            return;
        };
        let [dir, shape, n] = spec.split(',').collect::<Vec<_>>()[..] else {
            panic!("NEXUS_HOSTILE=DIR,SHAPE,N");
        };
        let n: u32 = n.parse().unwrap();
        let shape = match shape {
            "links" => Hostile::Links(n),
            "inodes" => Hostile::Inodes(n),
            "xattrs" => Hostile::Xattrs(n),
            "chunks" => Hostile::Chunks(n),
            other => panic!("unknown shape {other}"),
        };
        let dir = Path::new(dir);
        let keys = KeyStore::new(dir.join("keys"));
        keys.generate("vendor").unwrap();
        fs::copy(keys.public_file("vendor").unwrap(), dir.join("vendor.pub")).unwrap();
        hostile_archive(
            &dir.join("hostile.npk"),
            &keys.secret("vendor").unwrap(),
            shape,
        );
    }
}
