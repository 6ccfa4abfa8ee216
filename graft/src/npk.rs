//! Importing `.npk` archives: after [`nexus_npk::Archive::open`] has checked
//! the signature and every byte, each package's files are streamed from the
//! archive's verified chunks into the store, and the package tree is taken
//! as the archive states it (the body decoder has validated it), so the
//! tree hash is the one it had in the store that packed it.

use std::collections::HashSet;
use std::fs;
use std::path::Path;

use nexus_npk::body::BodyPackage;
use nexus_npk::{Archive, ArchiveKind, Claim, Expiry, NpkError, Signer, TrustSet};
use nexus_store::commit::{ExactSet, Membership, Restrictions, StagedPackage};
use nexus_store::ingest::{FileContent, Producer};
use nexus_store::tree::InodeKind;
use nexus_store::{Progress, names};

use crate::add::ArchiveRequest;
use crate::error::{GraftError, Limit, Problem};
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
pub fn open(
    path: &Path,
    trust: &Trust,
    kind: ArchiveKind,
    allow_expired: bool,
) -> Result<Archive, GraftError> {
    let failed = |error: NpkError| GraftError::Npk {
        file: path.to_path_buf(),
        error,
    };
    let expiry = Expiry::unless_allowed(allow_expired);
    let policy = match trust {
        Trust::Keys(set) => nexus_npk::Policy::Trusted(set, expiry),
        Trust::Insecure => nexus_npk::Policy::Insecure,
    };
    let archive = Archive::open_as(path, kind, policy).map_err(failed)?;
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

/// Stages every package of `archive`, storing its file contents.
pub fn stage(
    archive: &Archive,
    request: &ArchiveRequest,
    limits: &Limits,
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
        check_limits(package, limits).map_err(&refused)?;
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

fn check_limits(package: &BodyPackage, limits: &Limits) -> Result<(), Problem> {
    let entries = package.tree.entries.len() as u64;
    if entries > limits.max_entries {
        return Err(Problem::Limit(crate::error::LimitExceeded {
            what: format!("the entry count ({entries})"),
            limit: limits.max_entries,
            raisable: Some(Limit::Entries),
        }));
    }
    let bytes: u64 = package
        .tree
        .inodes
        .iter()
        .map(|i| match i.kind {
            InodeKind::File { size, .. } => size,
            _ => 0,
        })
        .sum();
    if bytes > limits.max_unpacked_size {
        return Err(Problem::Limit(crate::error::LimitExceeded {
            what: format!("the unpacked size ({bytes} bytes)"),
            limit: limits.max_unpacked_size,
            raisable: Some(Limit::UnpackedSize),
        }));
    }
    Ok(())
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
                if let Ok(archive) = open(&path, &trust, expected, false) {
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
}
