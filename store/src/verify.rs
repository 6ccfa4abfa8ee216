//! `nip verify`: re-hash every chunk and every file, and name what is damaged.
//!
//! Pass 1 reads every indexed chunk pack by pack (sequential I/O), checks its
//! record header against the index, decodes it and compares its BLAKE3.
//! Pass 2 re-hashes every file content (blob) from its chunks. A single-chunk
//! blob is the chunk itself, so pass 2 only checks that names and sizes agree
//! instead of reading it again. Damaged blobs are then mapped to every package
//! and path that uses them (all names of a hard-linked file).
//! Pass 3 rebuilds every package's tree from its catalog rows and recomputes
//! its tree hash: a mode, owner, xattr, name or link target changed in the
//! catalog (a setuid bit flipped on) no longer matches the identity the
//! package was imported with. The tree hash is one digest over the whole
//! tree, so such damage is named by package, not by path.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::catalog::audit;
use crate::error::{Result, StoreError};
use crate::hash::HashingWriter;
use crate::pack::ChunkLocation;
use crate::store::{NoProgress, Progress, Store};

/// One damaged file.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Damage {
    /// `NAME/VERSION`.
    pub package: String,
    /// Path inside the package.
    pub path: String,
    /// What failed.
    pub reason: String,
}

/// Result of a verification.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct VerifyReport {
    /// True when nothing is damaged.
    pub ok: bool,
    /// Chunks read and hashed.
    pub chunks_checked: u64,
    /// File contents checked.
    pub files_checked: u64,
    /// Problems SQLite's integrity check found in the catalog.
    pub catalog_problems: Vec<String>,
    /// Chunks that failed, with the reason.
    pub damaged_chunks: Vec<(String, String)>,
    /// Damaged files, sorted by package and path.
    pub damaged: Vec<Damage>,
    /// Packages checked against their tree hash.
    pub packages_checked: u64,
    /// Packages whose catalog rows no longer match their tree hash, with
    /// the reason, sorted.
    pub damaged_packages: Vec<PackageDamage>,
    /// Packs that live on a remote, not in `packs/` (a pulled generation):
    /// their chunks are not read here (each is verified when fetched), and
    /// the file contents made of them are not re-hashed.
    pub remote_packs: Vec<RemotePack>,
    /// File contents not re-hashed because some of their chunks are on a
    /// remote.
    pub files_remote: u64,
    /// Decoded copies (`STORE/decoded`) whose bytes are not the content
    /// their name says, with why: the kernel serves them unchecked.
    pub damaged_copies: Vec<(String, String)>,
}

/// A pack verify did not read because it lives on a remote.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct RemotePack {
    /// The pack.
    pub pack: String,
    /// The remote holding it.
    pub remote: String,
    /// Its indexed chunks.
    pub chunks: u64,
}

/// A package whose metadata in the catalog is not what it was imported as.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct PackageDamage {
    /// `NAME/VERSION`.
    pub package: String,
    /// What failed.
    pub reason: String,
}

/// The reason to report when a read failed because the data is damaged
/// or gone; any other error stops the check.
fn damage(e: StoreError) -> Result<String> {
    match e {
        StoreError::Damaged { reason, .. } => Ok(reason),
        StoreError::PackMissing { pack } => Ok(format!("pack file missing: {pack}")),
        e => Err(e),
    }
}

/// Verifies the whole store.
pub fn verify(store: &mut Store) -> Result<VerifyReport> {
    verify_with_progress(store, &NoProgress)
}

/// [`verify`], reporting the chunk bytes checked to `progress`.
pub fn verify_with_progress(store: &mut Store, progress: &dyn Progress) -> Result<VerifyReport> {
    let mut report = VerifyReport {
        catalog_problems: store.catalog().integrity_check()?,
        ..Default::default()
    };

    // Pass 1: every chunk of the store's own packs; those of remote packs
    // are only counted.
    let mut remote_chunks: HashSet<i64> = HashSet::new();
    let mut remote_packs: BTreeMap<String, RemotePack> = BTreeMap::new();
    let mut chunks: Vec<(i64, ChunkLocation)> = Vec::new();
    for (id, loc, remote) in audit::chunk_locations(store.catalog_mut().conn())? {
        match remote {
            None => chunks.push((id, loc)),
            Some(remote) => {
                remote_chunks.insert(id);
                remote_packs
                    .entry(loc.pack.to_string())
                    .or_insert_with(|| RemotePack {
                        pack: loc.pack.to_string(),
                        remote,
                        chunks: 0,
                    })
                    .chunks += 1;
            }
        }
    }
    report.remote_packs = remote_packs.into_values().collect();
    let mut bad_chunks: HashMap<i64, String> = HashMap::new();
    progress.start(
        chunks.iter().map(|(_, loc)| u64::from(loc.len)).sum(),
        chunks.len() as u64,
    );
    progress.phase("chunks");
    // Chunks come in block order: each block is read and decoded once.
    for (id, loc) in &chunks {
        report.chunks_checked += 1;
        progress.advance(u64::from(loc.len));
        let checked = store.reader().blocks().chunk_with(loc, |_| ());
        if let Err(e) = checked {
            let reason = damage(e)?;
            report
                .damaged_chunks
                .push((loc.hash.to_hex(), reason.clone()));
            bad_chunks.insert(*id, reason);
        }
    }

    // Pass 2: every file content.
    progress.phase("files");
    let blobs = audit::contents(store.catalog_mut().conn())?;
    let mut known_chunks: HashSet<i64> = chunks.iter().map(|(id, _)| *id).collect();
    known_chunks.extend(remote_chunks.iter().copied());
    let mut bad_blobs: HashMap<i64, String> = HashMap::new();
    for blob in &blobs {
        report.files_checked += 1;
        if let Some((chunk, _, _)) = blob
            .chunks
            .iter()
            .find(|(c, _, _)| !known_chunks.contains(c))
        {
            bad_blobs.insert(blob.id, format!("chunk #{chunk} is missing from the index"));
            continue;
        }
        if let Some(reason) = blob.chunks.iter().find_map(|(c, _, _)| bad_chunks.get(c)) {
            bad_blobs.insert(blob.id, reason.clone());
            continue;
        }
        let remote = blob
            .chunks
            .iter()
            .any(|(c, _, _)| remote_chunks.contains(c));
        let size: u64 = blob.chunks.iter().map(|(_, _, len)| *len as u64).sum();
        if size != blob.size {
            bad_blobs.insert(
                blob.id,
                format!("chunks add up to {size} bytes, file has {}", blob.size),
            );
            continue;
        }
        if blob.chunks.len() == 1 {
            if blob.chunks[0].1 != blob.hash {
                bad_blobs.insert(blob.id, "single chunk does not match the file hash".into());
            }
            continue;
        }
        if remote {
            // Its chunks are verified by name when fetched; hashing the
            // whole content here would download it.
            report.files_remote += 1;
            continue;
        }
        let mut hasher = HashingWriter::new(std::io::sink());
        match store.read_blob(blob.id, &mut hasher) {
            Ok(_) if hasher.finish().1 == blob.hash => {}
            Ok(_) => {
                bad_blobs.insert(blob.id, "file BLAKE3 mismatch".into());
            }
            Err(e) => {
                bad_blobs.insert(blob.id, damage(e)?);
            }
        }
    }

    // Name the damaged files.
    let mut damaged = BTreeSet::new();
    for (blob, reason) in &bad_blobs {
        for (package, path) in audit::paths_using_content(store.catalog_mut().conn(), *blob)? {
            damaged.insert(Damage {
                package,
                path,
                reason: reason.clone(),
            });
        }
    }
    report.damaged = damaged.into_iter().collect();

    // Pass 3: every package's metadata against its tree hash.
    let packages = store.catalog().all_packages()?;
    for package in packages {
        report.packages_checked += 1;
        let problem = match store.catalog().package_tree(&package) {
            Ok(rebuilt) if rebuilt.tree.tree_hash() == package.tree_hash => None,
            Ok(_) => Some(
                "its modes, owners, xattrs, names or links in the catalog no longer match its tree hash"
                    .to_string(),
            ),
            Err(StoreError::CatalogDamaged { what, .. }) => Some(what),
            Err(e) => return Err(e),
        };
        if let Some(reason) = problem {
            report.damaged_packages.push(PackageDamage {
                package: package.spec(),
                reason,
            });
        }
    }
    report.damaged_packages.sort();
    report.damaged_copies = crate::decoded::check(store)?;
    report.ok = report.damaged.is_empty()
        && report.damaged_copies.is_empty()
        && report.damaged_chunks.is_empty()
        && report.catalog_problems.is_empty()
        && report.damaged_packages.is_empty();
    Ok(report)
}
