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

use crate::error::{Result, StoreError};
use crate::hash::Hash;
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
    let chunks: Vec<(i64, ChunkLocation)> = {
        let mut stmt = store.catalog_mut().conn().prepare(
            "SELECT c.hash, p.name, c.offset, c.block_len, c.inner, c.len, c.id, r.name
             FROM chunks c JOIN packs p ON p.id = c.pack LEFT JOIN remotes r ON r.id = p.remote
             ORDER BY c.pack, c.offset, c.inner",
        )?;
        let mut rows = stmt.query([])?;
        let mut local = Vec::new();
        while let Some(r) = rows.next()? {
            let id: i64 = r.get(6)?;
            let loc = crate::catalog::location_from_row(r)?;
            match r.get::<_, Option<String>>(7)? {
                None => local.push((id, loc)),
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
        local
    };
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
    struct BlobInfo {
        id: i64,
        hash: Hash,
        size: u64,
        chunks: Vec<(i64, Hash, u32)>,
    }
    let blobs: Vec<BlobInfo> = {
        let conn = store.catalog_mut().conn();
        let mut stmt = conn.prepare(
            "SELECT b.id, b.hash, b.size, bc.chunk, c.hash, c.len
             FROM blobs b JOIN blob_chunks bc ON bc.blob = b.id LEFT JOIN chunks c ON c.id = bc.chunk
             ORDER BY b.id, bc.seq",
        )?;
        let mut rows = stmt.query([])?;
        let mut out: Vec<BlobInfo> = Vec::new();
        while let Some(r) = rows.next()? {
            let id: i64 = r.get(0)?;
            let chunk_hash: Option<Vec<u8>> = r.get(4)?;
            let entry = (
                r.get::<_, i64>(3)?,
                chunk_hash
                    .as_deref()
                    .and_then(Hash::from_slice)
                    .unwrap_or(Hash([0; 32])),
                r.get::<_, Option<u32>>(5)?.unwrap_or(0),
            );
            match out.last_mut() {
                Some(last) if last.id == id => last.chunks.push(entry),
                _ => {
                    let hash: Vec<u8> = r.get(1)?;
                    out.push(BlobInfo {
                        id,
                        hash: Hash::from_slice(&hash).unwrap_or(Hash([0; 32])),
                        size: r.get::<_, i64>(2)? as u64,
                        chunks: vec![entry],
                    });
                }
            }
        }
        out
    };
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
        let mut hasher = HashingWriter(blake3::Hasher::new());
        match store.read_blob(blob.id, &mut hasher) {
            Ok(_) if Hash::from(hasher.0.finalize()) == blob.hash => {}
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
        for (package, path) in paths_using_blob(store, *blob)? {
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
    report.ok = report.damaged.is_empty()
        && report.damaged_chunks.is_empty()
        && report.catalog_problems.is_empty()
        && report.damaged_packages.is_empty();
    Ok(report)
}

struct HashingWriter(blake3::Hasher);
impl std::io::Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every `(NAME/VERSION, path)` whose file content is `blob`.
fn paths_using_blob(store: &mut Store, blob: i64) -> Result<Vec<(String, String)>> {
    let conn = store.catalog_mut().conn();
    let mut inodes = conn.prepare_cached(
        "SELECT i.id, p.name || '/' || p.version, p.root FROM inodes i JOIN packages p ON p.id = i.package WHERE i.blob = ?1",
    )?;
    let found: Vec<(i64, String, i64)> = inodes
        .query_map([blob], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut parents = conn.prepare_cached("SELECT dir, name FROM dirents WHERE inode = ?1")?;
    let mut out = Vec::new();
    for (inode, package, root) in found {
        // Walk up from each name of the inode to the package root.
        let mut partial: Vec<(i64, Vec<u8>)> = vec![(inode, Vec::new())];
        while let Some((node, suffix)) = partial.pop() {
            if node == root {
                out.push((
                    package.clone(),
                    String::from_utf8_lossy(&suffix).into_owned(),
                ));
                continue;
            }
            let names: Vec<(i64, Vec<u8>)> = parents
                .query_map([node], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            for (dir, name) in names {
                let mut path = name;
                if !suffix.is_empty() {
                    path.push(b'/');
                    path.extend_from_slice(&suffix);
                }
                partial.push((dir, path));
            }
        }
    }
    Ok(out)
}
