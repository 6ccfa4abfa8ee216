//! Importing `.npk` archives: after [`nexus_npk::Archive::open`] has checked
//! the signature and every byte, each package's files are streamed from the
//! archive's verified chunks into the store, and the package tree is taken
//! as the archive states it (the body decoder has validated it), so the
//! tree hash is the one it had in the store that packed it.

use std::collections::HashSet;
use std::fs;
use std::path::Path;

use nexus_npk::body::BodyPackage;
use nexus_npk::{Archive, NpkError, Signer, TrustSet};
use nexus_store::commit::{CounterCheck, ExactSet, Membership, StagedPackage};
use nexus_store::ingest::{FileContent, Producer};
use nexus_store::tree::InodeKind;
use nexus_store::{Progress, names};

use crate::add::ArchiveRequest;
use crate::error::{GraftError, Problem};
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

/// Opens and checks an archive.
pub fn open(path: &Path, trust: &Trust) -> Result<Archive, GraftError> {
    let policy = match trust {
        Trust::Keys(set) => nexus_npk::Policy::Trusted(set),
        Trust::Insecure => nexus_npk::Policy::Insecure,
    };
    let archive = Archive::open(path, policy).map_err(|error| GraftError::Npk {
        file: path.to_path_buf(),
        error,
    })?;
    // Unverified archives were reported by the reader already.
    if let Signer::Trusted(key) = &archive.signer {
        tracing::info!("{}: signed by {} ({})", path.display(), key.name, key.id());
    }
    Ok(archive)
}

/// The package set importing `image` makes: exactly its packages, its
/// `Current` choices, and its counter checked against the highest this
/// store accepted from the same key.
pub fn image_membership(
    image: &Archive,
    request: &ArchiveRequest,
    allow_downgrade: bool,
) -> Membership {
    let current = image.body.current_specs();
    let counter = match &image.signer {
        Signer::Trusted(key) => Some(CounterCheck {
            key_id: key.id(),
            counter: image.manifest.counter,
            allow_downgrade,
        }),
        Signer::Unverified(_) => None,
    };
    Membership::Exactly(ExactSet {
        current,
        action: format!(
            "image {} (counter {})",
            request.path.display(),
            image.manifest.counter
        ),
        counter,
    })
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
        return Err(refused(Problem::Metadata(
            "--name/--version apply to an archive of one package".into(),
        )));
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
            flag: Some("--max-entries"),
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
            flag: Some("--max-unpacked-size"),
        }));
    }
    Ok(())
}
