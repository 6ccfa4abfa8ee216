//! Writing an archive from packages of a store.
//!
//! The output is deterministic: the same packages of the same store,
//! options and signing key give the same bytes (packages in the order
//! given, files in canonical tree order, chunks in the store's pack order,
//! zstd run single-threaded), which makes images reproducible.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nexus_store::catalog::PackageRow;
use nexus_store::pack::{
    BlockBuilder, BlockEncoder, ChunkKind, ChunkLocation, EncodedBlock, decode_block,
};
use nexus_store::params::{BLOCK_TARGET, FROZEN};
use nexus_store::{Hash, NoProgress, Progress, Store, StoreError};

use crate::body::{self, Body, BodyBlob, BodyChunk, BodyPackage, root_hash};
use crate::error::{NpkError, Result};
use crate::keys::SecretKey;
use crate::manifest::{ArchiveKind, END_MAGIC, HEADER_LEN, Manifest, encode_header, version_for};

/// A package to write, and whether it is its App's `Current`.
pub struct Member<'a> {
    /// The package.
    pub package: &'a PackageRow,
    /// `Current` flag (images).
    pub current: bool,
}

/// How to write an archive.
pub struct WriteOptions<'a> {
    /// Package or image.
    pub kind: ArchiveKind,
    /// Snapshot counter (0 for packages).
    pub counter: u64,
    /// Creation time, seconds since the epoch.
    pub created: i64,
    /// When the signature stops vouching for the archive, seconds since
    /// the epoch; `None` never.
    pub expires: Option<i64>,
    /// Who signs; `None` writes an unsigned archive.
    pub signer: Option<&'a SecretKey>,
}

/// What was written.
#[derive(Clone, Debug)]
pub struct Written {
    /// The manifest, as signed.
    pub manifest: Manifest,
    /// Archive length in bytes.
    pub bytes: u64,
    /// Distinct file contents.
    pub blobs: usize,
    /// Distinct chunks.
    pub chunks: usize,
}

/// Writes `members` of `store` to `out` (through a temporary file renamed
/// into place, so `out` is never half-written).
pub fn write_archive(
    store: &Store,
    members: &[Member<'_>],
    out: &Path,
    options: &WriteOptions<'_>,
) -> Result<Written> {
    write_archive_with_progress(store, members, out, options, &NoProgress)
}

/// [`write_archive`], reporting the chunk bytes copied to `progress`.
pub fn write_archive_with_progress(
    store: &Store,
    members: &[Member<'_>],
    out: &Path,
    options: &WriteOptions<'_>,
    progress: &dyn Progress,
) -> Result<Written> {
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = out
        .file_name()
        .ok_or_else(|| NpkError::Key(format!("{}: not a file name", out.display())))?;
    // Unpredictable, and created with O_EXCL|O_NOFOLLOW below: a name
    // planted in a shared directory (a symlink to a file root can write)
    // makes the write fail instead of landing elsewhere.
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).map_err(|e| NpkError::io(dir, std::io::Error::other(e)))?;
    let tmp: PathBuf = dir.join(format!(
        ".{}.tmp{}.{}",
        file_name.to_string_lossy(),
        std::process::id(),
        hex::encode(nonce)
    ));
    let result = write_to(store, members, &tmp, options, progress);
    match result {
        Ok(written) => {
            fs::rename(&tmp, out).map_err(|e| NpkError::io(out, e))?;
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| NpkError::io(dir, e))?;
            Ok(written)
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// A file writer that hashes and counts what goes through it.
struct Hashing {
    out: BufWriter<File>,
    hasher: blake3::Hasher,
    pos: u64,
    path: PathBuf,
}

impl Hashing {
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.out
            .write_all(bytes)
            .map_err(|e| NpkError::io(&self.path, e))?;
        self.hasher.update(bytes);
        self.pos += bytes.len() as u64;
        Ok(())
    }
}

fn write_to(
    store: &Store,
    members: &[Member<'_>],
    tmp: &Path,
    options: &WriteOptions<'_>,
    progress: &dyn Progress,
) -> Result<Written> {
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(tmp)
        .map_err(|e| NpkError::io(tmp, e))?;
    let mut out = Hashing {
        out: BufWriter::with_capacity(1 << 20, file),
        hasher: blake3::Hasher::new(),
        pos: 0,
        path: tmp.to_path_buf(),
    };
    let mut packages = Vec::with_capacity(members.len());
    let mut files: Vec<(Hash, i64)> = Vec::new();
    for m in members {
        let rebuilt = store.catalog().package_tree(m.package)?;
        let (tree, blobs) = (rebuilt.tree, rebuilt.contents);
        files.extend(blobs);
        packages.push(BodyPackage {
            name: m.package.name.clone(),
            version: m.package.version.clone(),
            origin: m.package.origin.clone(),
            metadata: m.package.metadata.clone(),
            current: m.current,
            // As this store ranks it: an image of a store holding a
            // restricted package must not make it unrestricted wherever
            // it is switched to.
            restricted_to: m.package.restricted_to.clone(),
            tree_hash: tree.tree_hash(),
            tree,
        });
        if packages.last().map(|p| p.tree_hash) != Some(m.package.tree_hash) {
            return Err(StoreError::Invalid(format!(
                "{}: its stored tree no longer matches its tree hash",
                m.package.spec()
            ))
            .into());
        }
    }
    // The packages decide the body's version, and with it the archive's:
    // known before the first byte is written.
    let version = version_for(body::body_version(&packages));
    out.write(&encode_header(options.kind, version))?;
    debug_assert_eq!(out.pos, HEADER_LEN);

    // Every distinct content and the chunks it needs, in the order files
    // first use them.
    let mut wanted: Vec<(Hash, Vec<ChunkLocation>)> = Vec::new();
    let mut blob_seen: HashSet<Hash> = HashSet::new();
    for (hash, blob_id) in files {
        if blob_seen.insert(hash) {
            wanted.push((hash, store.catalog().blob_chunks(blob_id)?));
        }
    }
    let mut blocks = BlockWriter::new()?;
    copy_chunks(store, &wanted, &mut blocks, &mut out, progress)?;
    blocks.flush(&mut out)?;
    let mut blobs: Vec<BodyBlob> = Vec::with_capacity(wanted.len());
    for (hash, locations) in &wanted {
        let mut indexes = Vec::with_capacity(locations.len());
        for loc in locations {
            let i =
                blocks.index.get(&loc.hash).copied().ok_or_else(|| {
                    StoreError::Invalid(format!("chunk {} was not copied", loc.hash))
                })?;
            indexes.push(i);
        }
        blobs.push(BodyBlob {
            hash: *hash,
            size: locations.iter().map(|l| u64::from(l.len)).sum(),
            chunks: indexes,
        });
    }

    let body = Body {
        packages,
        blobs,
        chunks: blocks.chunks,
    };
    let root = root_hash(&body.packages);
    let frame = body::compress(&body.encode()).map_err(|e| NpkError::io(tmp, e))?;
    let body_offset = out.pos;
    out.write(&frame)?;
    let mut manifest = Manifest {
        version,
        kind: options.kind,
        signer: [0; 32],
        counter: options.counter,
        created: options.created,
        // 0 encodes "never": an expiry at the epoch itself (long past
        // anyway) is written as the second before it.
        expires: options.expires.map(|t| if t == 0 { -1 } else { t }),
        body_offset,
        body_len: frame.len() as u64,
        content_hash: Hash::from(out.hasher.finalize()),
        root,
        body_hash: Hash::of(&frame),
    };
    let mut signature = [0u8; 64];
    if let Some(key) = options.signer {
        manifest.signer = *key.public().key.as_bytes();
        signature = key.sign(&manifest.signed_message());
    }
    let manifest_bytes = manifest.encode();
    out.write(&manifest_bytes)?;
    out.write(&signature)?;
    out.write(END_MAGIC)?;
    let bytes = out.pos;
    let file = out
        .out
        .into_inner()
        .map_err(|e| NpkError::io(tmp, e.into_error()))?;
    file.sync_all().map_err(|e| NpkError::io(tmp, e))?;
    Ok(Written {
        manifest,
        bytes,
        blobs: body.blobs.len(),
        chunks: body.chunks.len(),
    })
}

/// Share of a stored block's raw bytes the archive must need for the block
/// to be copied as it is (no decoding or recompressing): 7/8.
const VERBATIM_NUMERATOR: u64 = 7;
const VERBATIM_DENOMINATOR: u64 = 8;

/// Copies every chunk `wanted` needs into the archive, visiting the store's
/// blocks in pack order so that each is read and decoded once (decoding a
/// 1 MiB block per chunk read out of order made snapshots slow). A block
/// the archive needs almost all of is copied verbatim, after its needed
/// chunks were verified; the others' needed chunks are re-encoded into new
/// blocks.
fn copy_chunks(
    store: &Store,
    wanted: &[(Hash, Vec<ChunkLocation>)],
    blocks: &mut BlockWriter,
    out: &mut Hashing,
    progress: &dyn Progress,
) -> Result<()> {
    let mut by_block: BTreeMap<(Arc<str>, u64), Vec<&ChunkLocation>> = BTreeMap::new();
    let mut seen: HashSet<Hash> = HashSet::new();
    // Chunks of large contents are framed for random reads, as the store
    // frames them.
    let mut parts: HashSet<Hash> = HashSet::new();
    for (_, locations) in wanted {
        let size: u64 = locations.iter().map(|l| u64::from(l.len)).sum();
        if FROZEN.chunk_kind(size) == ChunkKind::Part {
            parts.extend(locations.iter().map(|l| l.hash));
        }
        for loc in locations {
            if seen.insert(loc.hash) {
                by_block
                    .entry((loc.pack.clone(), loc.offset))
                    .or_default()
                    .push(loc);
            }
        }
    }
    progress.start(
        by_block.values().flatten().map(|l| u64::from(l.len)).sum(),
        wanted.len() as u64,
    );
    for chunks in by_block.values() {
        let first = chunks[0];
        let raw = store.reader().blocks().stored_block(first)?;
        let block = decode_block(&raw).map_err(|reason| StoreError::Damaged {
            chunk: first.hash,
            reason: format!("pack {} block at {}: {reason}", first.pack, first.offset),
        })?;
        let needed: u64 = chunks.iter().map(|l| u64::from(l.len)).sum();
        progress.advance(needed);
        let total = block.data.len() as u64;
        if needed * VERBATIM_DENOMINATOR >= total * VERBATIM_NUMERATOR {
            for loc in chunks {
                block.chunk(loc)?; // verified before it is copied
            }
            blocks.verbatim(&raw, chunks, out)?;
        } else {
            for loc in chunks {
                let bytes = block.chunk(loc)?;
                let kind = if parts.contains(&loc.hash) {
                    ChunkKind::Part
                } else {
                    ChunkKind::Whole
                };
                blocks.push(loc.hash, bytes, kind, out)?;
            }
        }
    }
    Ok(())
}

/// Gathers chunks into blocks as the store's ingest does, and remembers
/// where each chunk went.
struct BlockWriter {
    builder: BlockBuilder,
    encoder: BlockEncoder,
    /// Chunks pushed but not yet written: (index in `chunks`, inner offset).
    pending: Vec<(usize, u32)>,
    chunks: Vec<BodyChunk>,
    index: HashMap<Hash, u32>,
}

impl BlockWriter {
    fn new() -> Result<Self> {
        Ok(BlockWriter {
            builder: BlockBuilder::default(),
            encoder: BlockEncoder::store_default()?,
            pending: Vec::new(),
            chunks: Vec::new(),
            index: HashMap::new(),
        })
    }

    fn push(
        &mut self,
        hash: Hash,
        bytes: &[u8],
        kind: ChunkKind,
        out: &mut Hashing,
    ) -> Result<u32> {
        let i = self.chunks.len();
        self.pending.push((i, self.builder.raw_len() as u32));
        self.chunks.push(BodyChunk {
            hash,
            len: bytes.len() as u32,
            offset: 0,
            block_len: 0,
            inner: 0,
        });
        self.index.insert(hash, i as u32);
        self.builder.push_kind(hash, bytes, kind);
        if self.builder.raw_len() >= BLOCK_TARGET {
            self.flush(out)?;
        }
        Ok(i as u32)
    }

    /// Writes a stored block as it is; records where its `chunks` went.
    fn verbatim(&mut self, raw: &[u8], chunks: &[&ChunkLocation], out: &mut Hashing) -> Result<()> {
        let offset = out.pos;
        out.write(raw)?;
        for loc in chunks {
            let i = self.chunks.len();
            self.chunks.push(BodyChunk {
                hash: loc.hash,
                len: loc.len,
                offset,
                block_len: raw.len() as u32,
                inner: loc.inner,
            });
            self.index.insert(loc.hash, i as u32);
        }
        Ok(())
    }

    fn flush(&mut self, out: &mut Hashing) -> Result<()> {
        if self.builder.is_empty() {
            return Ok(());
        }
        let block: EncodedBlock = self.builder.finish(&mut self.encoder);
        let offset = out.pos;
        out.write(&block.head())?;
        out.write(&block.payload)?;
        let block_len = block.encoded_len() as u32;
        for (i, inner) in self.pending.drain(..) {
            let c = &mut self.chunks[i];
            c.offset = offset;
            c.block_len = block_len;
            c.inner = inner;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::TrustError;
    use crate::manifest::{TRAILER_LEN, decode_trailer};
    use crate::read::{Archive, Expiry, Policy};
    use crate::trust::Scope;
    use crate::{KeyStore, TrustSet};
    use nexus_store::dirs::DirSet;
    use nexus_store::scan::ScanOptions;
    use nexus_store::{AddDir, AddOptions, NoProgress};

    /// A store in `dir` holding `zz-core/1`, added by root, and `aa-evil/1`,
    /// recorded restricted to `aa-*` (what `nip add` of a `.npk` signed by
    /// a key trusted only for those Apps records); both ship `bin/tool`.
    fn mixed_store(dir: &Path) -> Store {
        let mut store = Store::init(&dir.join("store")).unwrap();
        let add = |name: &str| {
            let src = dir.join(name);
            fs::create_dir_all(src.join("bin")).unwrap();
            fs::write(src.join("bin/tool"), format!("#!/bin/sh\necho {name}\n")).unwrap();
            AddDir {
                path: src,
                name: name.into(),
                version: "1".into(),
            }
        };
        store
            .add_dirs(&[add("zz-core")], AddOptions::default(), &NoProgress)
            .unwrap();
        let set = DirSet::scan(&[add("aa-evil")], ScanOptions::default()).unwrap();
        store
            .add_staged_with(1, &NoProgress, |session| {
                let (mut staged, contents) = set.stage(session, 1, &|_| {})?;
                staged[0].restricted_to = Some("aa-*".into());
                Ok::<_, StoreError>((staged, contents))
            })
            .unwrap();
        store
    }

    /// An image key `admin` in `dir/keys`, and a trust set trusting it.
    fn image_key(dir: &Path) -> (SecretKey, TrustSet) {
        let keys = KeyStore::new(dir.join("keys"));
        keys.generate("admin").unwrap();
        let scope = Scope::Images {
            domain: "images".into(),
        };
        keys.trust(&keys.public_file("admin").unwrap(), scope)
            .unwrap();
        (keys.secret("admin").unwrap(), keys.trust_set().unwrap())
    }

    fn image_of(store: &Store, specs: &[&str], key: &SecretKey, out: &Path) -> Written {
        let rows: Vec<PackageRow> = specs.iter().map(|s| store.installed(s).unwrap()).collect();
        let members: Vec<Member<'_>> = rows
            .iter()
            .map(|package| Member {
                package,
                current: true,
            })
            .collect();
        let options = WriteOptions {
            kind: ArchiveKind::Image,
            counter: 1,
            created: 0,
            expires: None,
            signer: Some(key),
        };
        write_archive(store, &members, out, &options).unwrap()
    }

    /// The hole: an image of a store holding a restricted package carried
    /// no restriction, so wherever it was switched to the package ranked
    /// unrestricted and took Index names from unrestricted Apps. The image
    /// now states it (archive version 4), and one without restricted
    /// packages stays version 3, which builds before restrictions read.
    #[test]
    fn an_image_states_which_packages_are_restricted() {
        let dir = tempfile::tempdir().unwrap();
        let store = mixed_store(dir.path());
        let (key, trust) = image_key(dir.path());
        let policy = Policy::Trusted(&trust, Expiry::Ignore);

        let mixed = dir.path().join("mixed.img");
        let written = image_of(&store, &["aa-evil/1", "zz-core/1"], &key, &mixed);
        assert_eq!(written.manifest.version, 4);
        assert_eq!(fs::read(&mixed).unwrap()[8..12], 4u32.to_le_bytes());
        let archive = Archive::open(&mixed, policy).unwrap();
        let marks: Vec<_> = archive
            .body
            .packages
            .iter()
            .map(|p| (p.name.as_str(), p.restricted_to.as_deref()))
            .collect();
        assert_eq!(marks, [("aa-evil", Some("aa-*")), ("zz-core", None)]);

        let plain = dir.path().join("plain.img");
        let written = image_of(&store, &["zz-core/1"], &key, &plain);
        assert_eq!(written.manifest.version, 3);
        let archive = Archive::open(&plain, policy).unwrap();
        assert_eq!(archive.body.version(), 1);
    }

    /// Whoever can change the image on its way (a mirror) cannot strip a
    /// restriction: the body hash the signature covers names the body
    /// with it. The forgery below is consistent in every other respect
    /// (version 3, body, positions and hashes redone): only the signature
    /// refuses it, and unverified it would indeed rank `aa-evil` as
    /// unrestricted.
    #[test]
    fn a_stripped_restriction_breaks_the_signature() {
        let dir = tempfile::tempdir().unwrap();
        let store = mixed_store(dir.path());
        let (key, trust) = image_key(dir.path());
        let image = dir.path().join("mixed.img");
        image_of(&store, &["aa-evil/1", "zz-core/1"], &key, &image);

        let bytes = fs::read(&image).unwrap();
        let trailer_at = bytes.len() - TRAILER_LEN as usize;
        let (mut manifest, signature) = decode_trailer(&bytes[trailer_at..]).unwrap();
        let start = manifest.body_offset as usize;
        let frame = &bytes[start..start + manifest.body_len as usize];
        let mut body = Body::decode(
            &body::decompress(frame).unwrap(),
            HEADER_LEN,
            manifest.body_offset,
        )
        .unwrap();
        for p in &mut body.packages {
            p.restricted_to = None;
        }
        let frame = body::compress(&body.encode()).unwrap();
        let mut forged = bytes[..start].to_vec();
        forged[8..12].copy_from_slice(&3u32.to_le_bytes());
        forged.extend_from_slice(&frame);
        manifest.version = 3;
        manifest.body_len = frame.len() as u64;
        manifest.body_hash = Hash::of(&frame);
        manifest.content_hash = Hash::of(&forged);
        forged.extend_from_slice(&manifest.encode());
        forged.extend_from_slice(&signature);
        forged.extend_from_slice(END_MAGIC);
        let path = dir.path().join("forged.img");
        fs::write(&path, &forged).unwrap();

        let refused = Archive::open(&path, Policy::Trusted(&trust, Expiry::Ignore)).unwrap_err();
        assert!(
            matches!(refused, NpkError::Trust(TrustError::BadSignature { .. })),
            "{refused}"
        );
        let unverified = Archive::open(&path, Policy::Insecure).unwrap();
        assert!(
            unverified
                .body
                .packages
                .iter()
                .all(|p| p.restricted_to.is_none())
        );
    }

    /// The review's L2: the temporary file had a predictable name
    /// (`.NAME.tmpPID`) and was opened with `File::create`, which follows a
    /// symlink planted there and truncates its target.
    #[test]
    fn a_planted_temporary_name_writes_nothing_through() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(src.join("bin")).unwrap();
        fs::write(src.join("bin/tool"), b"#!/bin/sh\n").unwrap();
        let mut store = Store::init(&dir.path().join("store")).unwrap();
        let add = AddDir {
            path: src,
            name: "tool".into(),
            version: "1".into(),
        };
        store
            .add_dirs(&[add], AddOptions::default(), &NoProgress)
            .unwrap();
        let package = store.installed("tool/1").unwrap();

        let victim = dir.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        let out_dir = dir.path().join("shared");
        fs::create_dir(&out_dir).unwrap();
        let planted = out_dir.join(format!(".tool.npk.tmp{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        let out = out_dir.join("tool.npk");
        let options = WriteOptions {
            kind: ArchiveKind::Package,
            counter: 0,
            created: 0,
            expires: None,
            signer: None,
        };
        let member = Member {
            package: &package,
            current: true,
        };
        write_archive(&store, &[member], &out, &options).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert!(fs::symlink_metadata(&out).unwrap().is_file());
        // Nothing left behind but the planted link.
        let left: Vec<_> = fs::read_dir(&out_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
    }
}
