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
use crate::pack::{ChunkLocation, Frame, FrameCheck, decode_frame_into};
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
    /// Blocks whose every indexed chunk reads right but that hold a damaged
    /// frame of chunks no longer indexed: `nip publish` and `.npk` writing,
    /// which check and copy blocks whole, refuse them.
    pub damaged_blocks: Vec<BlockDamage>,
}

/// A block a whole-block copy refuses although its indexed chunks read
/// right.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct BlockDamage {
    /// The pack holding it.
    pub pack: String,
    /// Its offset in the pack.
    pub offset: u64,
    /// What failed.
    pub reason: String,
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
    // Chunks come in block order: each frame is read and decoded once.
    let same_block = |(_, a): &(i64, ChunkLocation), (_, b): &(i64, ChunkLocation)| {
        a.block_key() == b.block_key()
    };
    for block in chunks.chunk_by(same_block) {
        let mut intact = true;
        for (id, loc) in block {
            report.chunks_checked += 1;
            progress.advance(u64::from(loc.len));
            let checked = store.reader().blocks().chunk_with(loc, |_| ());
            if let Err(e) = checked {
                let reason = damage(e)?;
                report
                    .damaged_chunks
                    .push((loc.hash.to_hex(), reason.clone()));
                bad_chunks.insert(*id, reason);
                intact = false;
            }
        }
        if intact && let Some(reason) = unindexed_frames_damage(store, block)? {
            report.damaged_blocks.push(BlockDamage {
                pack: block[0].1.pack.to_string(),
                offset: block[0].1.offset,
                reason,
            });
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
        && report.damaged_packages.is_empty()
        && report.damaged_blocks.is_empty();
    Ok(report)
}

/// Checks the frames of a block that hold none of its indexed chunks
/// (`block`, each already read through its own frame): what gc left of
/// chunks it deleted. No read needs them, but publishing and `.npk`
/// writing check every frame, checksum included, before they copy a block
/// whole. Why the first damaged one fails, if one does.
fn unindexed_frames_damage(
    store: &Store,
    block: &[(i64, ChunkLocation)],
) -> Result<Option<String>> {
    let Some((_, first)) = block.first() else {
        return Ok(None);
    };
    let blocks = store.reader().blocks();
    let head = match blocks.head(first) {
        Ok(head) => head,
        Err(e) => return damage(e).map(Some),
    };
    let indexed = |frame: &Frame| {
        let raw = frame.raw_start..frame.raw_start + frame.raw_len;
        frame.raw_len == 0 || block.iter().any(|(_, loc)| raw.contains(&loc.inner))
    };
    for (j, frame) in head.frames.iter().enumerate() {
        if indexed(frame) {
            continue;
        }
        let stored = match blocks.stored_frame(first, frame) {
            Ok(stored) => stored,
            Err(e) => return damage(e).map(Some),
        };
        if let Err(why) = decode_frame_into(frame, &stored, Vec::new(), FrameCheck::Checksum) {
            return Ok(Some(format!(
                "frame {j}, which holds no indexed chunk, is damaged ({why}): \
                 publishing or exporting this block's files fails"
            )));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gc::{GcOptions, collect};
    use crate::pack::{BlockHead, ParsedHead};
    use crate::store::{AddDir, AddOptions};
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::time::Duration;

    /// Text-like bytes: words drawn from a small vocabulary, which zstd
    /// compresses (so frames carry checksums) and FastCDC cuts by content.
    fn text(seed: u64, len: usize) -> Vec<u8> {
        const WORDS: [&[u8]; 8] = [
            b"store ", b"chunk ", b"frame ", b"block ", b"pack ", b"view ", b"mount\n", b"nexus ",
        ];
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(WORDS[(x % 8) as usize]);
            out.extend_from_slice(format!("{} ", x % 1000).as_bytes());
        }
        out.truncate(len);
        out
    }

    /// The stored bytes of the block at `offset` of pack `pack`.
    fn stored_block(store: &Store, pack: &str, offset: u64, len: u32) -> Vec<u8> {
        let mut file = std::fs::File::open(store.dir().join("packs").join(pack)).unwrap();
        file.seek(SeekFrom::Start(offset)).unwrap();
        let mut buf = vec![0; len as usize];
        file.read_exact(&mut buf).unwrap();
        buf
    }

    /// gc leaves the frames of a removed file's chunks in a block it keeps
    /// for another file's. No read needs them, but publishing and `.npk`
    /// writing check every frame of a block they copy whole: verify checks
    /// them too and names the block, while the files still read right.
    #[test]
    fn a_damaged_frame_of_deleted_chunks_is_named_by_its_block() {
        let tmp = tempfile::tempdir().unwrap();
        // A large file, stored in frames of its own; its version 2 has new
        // bytes for the first 600 kB and the same after, so that the first
        // frames of version 1 hold chunks no file has once it is gone.
        let v1 = tmp.path().join("v1");
        let v2 = tmp.path().join("v2");
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::create_dir_all(&v2).unwrap();
        let first = text(1, 3 << 19);
        let mut second = text(2, 600_000);
        second.extend_from_slice(&first[600_000..]);
        std::fs::write(v1.join("f"), &first).unwrap();
        std::fs::write(v2.join("f"), &second).unwrap();
        let mut store = Store::init(&tmp.path().join("store")).unwrap();
        for (path, version) in [(v1, "1"), (v2, "2")] {
            let add = AddDir {
                path,
                name: "app".into(),
                version: version.into(),
            };
            store
                .add_dirs(&[add], AddOptions::default(), &NoProgress)
                .unwrap();
        }
        store.remove(&["app/1".to_string()]).unwrap();
        let options = GcOptions {
            keep_last: 1,
            keep_younger_than: None,
            grace: Duration::ZERO,
            repack_below: 0.0,
        };
        collect(&mut store, options).unwrap();
        assert!(verify(&mut store).unwrap().ok, "the store before damage");

        // A compressed frame of a block version 2 uses that holds none of
        // the chunks still indexed.
        let kept: Vec<ChunkLocation> = audit::chunk_locations(store.catalog_mut().conn())
            .unwrap()
            .into_iter()
            .map(|(_, loc, _)| loc)
            .collect();
        let (loc, frame) = kept
            .iter()
            .find_map(|loc| {
                let stored = stored_block(&store, &loc.pack, loc.offset, loc.block_len);
                let Ok(ParsedHead::Head(head)) = BlockHead::parse(&stored, stored.len()) else {
                    panic!("an undamaged block does not parse");
                };
                head.frames
                    .into_iter()
                    .find(|f| {
                        let raw = f.raw_start..f.raw_start + f.raw_len;
                        f.compressed
                            && !kept
                                .iter()
                                .any(|k| k.block_key() == loc.block_key() && raw.contains(&k.inner))
                    })
                    .map(|f| (loc.clone(), f))
            })
            .expect("fixture: no block holds a frame of version 1's chunks beside version 2's");
        // Its zstd checksum, the frame's last byte: the frame's data and so
        // every chunk in it stay as they were.
        let at = loc.offset + u64::from(frame.stored_at + frame.stored_len - 1);
        let mut pack = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(store.dir().join("packs").join(&*loc.pack))
            .unwrap();
        let mut byte = [0u8];
        pack.seek(SeekFrom::Start(at)).unwrap();
        pack.read_exact(&mut byte).unwrap();
        pack.seek(SeekFrom::Start(at)).unwrap();
        pack.write_all(&[byte[0] ^ 0x40]).unwrap();
        drop(pack);

        let mut store = Store::open(store.dir()).unwrap();
        let report = verify(&mut store).unwrap();
        assert!(!report.ok, "{report:?}");
        assert!(report.damaged_chunks.is_empty(), "{report:?}");
        assert!(
            report.damaged.is_empty(),
            "version 2 reads right: {report:?}"
        );
        assert_eq!(report.damaged_blocks.len(), 1, "{report:?}");
        let damage = &report.damaged_blocks[0];
        assert_eq!((&*damage.pack, damage.offset), (&*loc.pack, loc.offset));
        assert!(
            damage.reason.contains("holds no indexed chunk"),
            "{damage:?}"
        );
        // What a whole-block copy would do with it.
        let stored = stored_block(&store, &loc.pack, loc.offset, loc.block_len);
        assert!(crate::pack::decode_block(&stored).is_err());
    }
}
