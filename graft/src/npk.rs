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
use nexus_store::commit::{ExactSet, Membership, StagedPackage};
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
    let mut f = fs::File::open(path).map_err(|e| GraftError::Io {
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
    // The kind first (from the header; the signed manifest must agree):
    // "this is an image" says more than who may sign one.
    let found = Archive::kind_of(path).map_err(failed)?;
    if found != kind {
        return Err(failed(NpkError::KindMismatch {
            expected: kind,
            found,
        }));
    }
    let archive = Archive::open(path, policy).map_err(failed)?;
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
        });
    }
    Ok(staged)
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
