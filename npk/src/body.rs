//! The body: what the archive holds — package trees with their metadata,
//! file contents as lists of chunks, and where each chunk is in the
//! archive (FORMAT.md, section 8.3).
//!
//! Two versions: 1 (`NXBODY01`) and 2 (`NXBODY02`), which adds each
//! package's restriction (`restricted_to`: its signer was trusted only for
//! some Apps, and the Index ranks it after every unrestricted App). A body
//! is version 2 exactly when a package is restricted, so that builds
//! reading only version 1 still read every body without one and refuse
//! the others, which they would rank wrongly; each body has one encoding.
//!
//! Decoding validates everything a reader relies on, so that a hostile
//! body is refused before anything acts on it: every count fits the bytes
//! left, every index is in range, each tree is a tree (every directory but
//! the root named exactly once, every entry reachable from the root, names
//! safe and unique, at most [`nexus_store::tree::MAX_DEPTH`] deep, paths
//! adding up to at most [`nexus_store::tree::MAX_PATH_BYTES`]), each declared tree hash matches the tree, and every
//! file's content is listed with the right size. The limits are checked
//! by one walk with one path buffer before the tree hash (which costs the
//! sum of every path's length) is computed: a chain 20 000 directories
//! deep once cost 771 MB to validate.
//!
//! An archive's body is decoded as zstd decompresses it
//! ([`Body::decode_frame`]), never held whole, and within the reader's
//! [`BodyLimits`]: each count is checked against them (and against what
//! the body may still hold) before its items are read or anything is
//! reserved for them, file sizes and attributes are charged as they are
//! read. A signed body that claims 27 million entries of one package once
//! made `nip add` hold 3.4 GB before the limits refused it; it is now
//! refused at its count, the rest of the frame never decompressed.

use std::collections::{HashMap, HashSet};
use std::io::{BufReader, Read};

use nexus_store::Hash;
use nexus_store::names::{check_name, check_version};
use nexus_store::params::{BLOCK_MAX_RAW, BLOCK_MAX_STORED};
use nexus_store::tree::{
    Entry, Inode, InodeKind, PathBudget, SYMLINK_TARGET_MAX, Tree, Xattrs, check_xattr,
    encode_xattrs,
};

use crate::error::{FormatError, OverLimit, PackageLimit};
use crate::trust::AppPattern;
use crate::wire::{Fields, StreamReader, Writer};

/// First bytes of a decoded body of version 1: no package restricted.
pub const BODY_MAGIC_V1: &[u8; 8] = b"NXBODY01";
/// First bytes of a decoded body of version 2: every package states its
/// restriction, and at least one is restricted.
pub const BODY_MAGIC_V2: &[u8; 8] = b"NXBODY02";
/// Largest decoded body accepted (a body describes metadata only).
pub const BODY_MAX: u64 = 512 << 20;
/// Domain string of the root hash.
const ROOT_DOMAIN: &[u8] = b"nexus-root-v1\n";
/// Most items reserved for at once from a count: a longer list grows as
/// its items arrive, so a count the body does not back costs nothing.
const RESERVED_MAX: usize = 1 << 16;
/// Decoded bytes read from zstd at a time.
const DECODE_BUFFER: usize = 64 << 10;

/// What a reader accepts of a body beyond the format's own bounds
/// ([`BODY_MAX`] and the tree rules): the per-package limits of an import
/// (`nip add --max-entries`, `--max-unpacked-size`), and how many packages
/// the archive's kind holds. Each is checked as the body is decoded, a
/// count before anything is read or allocated for its items, a size as it
/// is read, so that a body over them is refused before it is held: a
/// signer, even one trusted for a single App, cannot make the importer
/// hold a tree larger than the limits allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyLimits {
    /// Most packages the body may hold (1 in a package archive).
    pub max_packages: u64,
    /// Most directory entries of one package (hard links each count).
    pub max_entries: u64,
    /// Most bytes the regular files of one package may add up to (a
    /// hard-linked file once).
    pub max_unpacked_size: u64,
}

impl BodyLimits {
    /// The format's bounds only: for a body whose signer vouches for whole
    /// systems (an image served, a remote's generation).
    pub const NONE: BodyLimits = BodyLimits {
        max_packages: u64::MAX,
        max_entries: u64::MAX,
        max_unpacked_size: u64::MAX,
    };
}

const KIND_DIR: u8 = 1;
const KIND_FILE: u8 = 2;
const KIND_SYMLINK: u8 = 3;

/// One package of an archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BodyPackage {
    /// App name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Where it came from in the store that packed it.
    pub origin: String,
    /// Metadata JSON, as the catalog keeps it.
    pub metadata: String,
    /// Whether it is its App's `Current` (images).
    pub current: bool,
    /// The App patterns (`a*,b`) the key that signed the package was
    /// trusted for, when that grant was restricted to some Apps
    /// (`packages.restricted_to` of the store that wrote the body); `None`
    /// when it is unrestricted, and for every package of a version-1 body.
    /// The signature covers it (through the body hash), so a mirror cannot
    /// strip it.
    pub restricted_to: Option<String>,
    /// The tree hash (checked against `tree`).
    pub tree_hash: Hash,
    /// The package tree, every file's content hash filled in.
    pub tree: Tree,
}

/// A distinct file content: its chunks, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BodyBlob {
    /// BLAKE3 of the whole content.
    pub hash: Hash,
    /// Its length.
    pub size: u64,
    /// Indexes into [`Body::chunks`].
    pub chunks: Vec<u32>,
}

/// Where a chunk is in the archive: a block, as in a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyChunk {
    /// BLAKE3 of the chunk.
    pub hash: Hash,
    /// Its length.
    pub len: u32,
    /// Offset of its block from the start of the archive.
    pub offset: u64,
    /// Length of the block.
    pub block_len: u32,
    /// Offset of the chunk in the decoded block.
    pub inner: u32,
}

/// The decoded body.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Body {
    /// Packages, in the order they were packed.
    pub packages: Vec<BodyPackage>,
    /// File contents.
    pub blobs: Vec<BodyBlob>,
    /// Chunks.
    pub chunks: Vec<BodyChunk>,
}

/// The root hash of a set of packages: BLAKE3 over their names, versions,
/// tree hashes and `Current` flags, sorted by name and version. It names
/// what an archive holds independently of how it is laid out, so the same
/// package packed in two stores has the same root. Restrictions are not
/// in it (the definition predates them, and older archives must keep
/// their roots): the body hash, and for a remote the metadata hash, which
/// the signature covers, vouch for them.
pub fn root_hash<'a>(packages: impl IntoIterator<Item = &'a BodyPackage>) -> Hash {
    let mut list: Vec<&BodyPackage> = packages.into_iter().collect();
    list.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
    let mut w = Writer::default();
    w.raw(ROOT_DOMAIN);
    w.u32(list.len() as u32);
    for p in list {
        w.str(&p.name);
        w.str(&p.version);
        w.hash(&p.tree_hash);
        w.u8(p.current as u8);
    }
    Hash::of(&w.buf)
}

/// The body format version of a body of `packages`: 2 when one is
/// restricted, else 1 (see [`Body::version`]).
pub fn body_version(packages: &[BodyPackage]) -> u32 {
    if packages.iter().any(|p| p.restricted_to.is_some()) {
        2
    } else {
        1
    }
}

impl Body {
    /// The body format version [`Body::encode`] writes: 2 when a package
    /// is restricted, else 1 (which builds before version 2 read). A
    /// decoded body was read from this version: decoding refuses a
    /// version-2 body without a restricted package.
    pub fn version(&self) -> u32 {
        body_version(&self.packages)
    }

    /// Every file content with its chunk list, as a store session commits
    /// contents (an archive or a remote's metadata made a content batch).
    pub fn file_contents(&self) -> Vec<nexus_store::ingest::FileContent> {
        self.blobs
            .iter()
            .map(|b| nexus_store::ingest::FileContent {
                hash: b.hash,
                size: b.size,
                chunks: b
                    .chunks
                    .iter()
                    .map(|&i| {
                        let c = &self.chunks[i as usize];
                        (c.hash, c.len)
                    })
                    .collect(),
            })
            .collect()
    }

    /// `NAME/VERSION` of the packages that are their App's `Current`.
    pub fn current_specs(&self) -> Vec<String> {
        self.packages
            .iter()
            .filter(|p| p.current)
            .map(|p| format!("{}/{}", p.name, p.version))
            .collect()
    }

    /// The blob with this content hash.
    pub fn blob(&self, hash: &Hash) -> Option<&BodyBlob> {
        self.blobs.iter().find(|b| &b.hash == hash)
    }

    /// Encodes the body (uncompressed), in version [`Body::version`].
    pub fn encode(&self) -> Vec<u8> {
        self.encode_as(self.version())
    }

    /// Encodes the body in format `version`; version 1 leaves every
    /// restriction out (what a build before version 2 wrote, or what
    /// stripping them would make).
    fn encode_as(&self, version: u32) -> Vec<u8> {
        let mut w = Writer::default();
        w.raw(if version == 2 {
            BODY_MAGIC_V2
        } else {
            BODY_MAGIC_V1
        });
        w.u32(self.packages.len() as u32);
        for p in &self.packages {
            w.str(&p.name);
            w.str(&p.version);
            w.str(&p.origin);
            w.str(&p.metadata);
            w.u8(p.current as u8);
            if version == 2 {
                // Empty for an unrestricted package: a restricted one
                // names at least one pattern.
                w.str(p.restricted_to.as_deref().unwrap_or(""));
            }
            w.hash(&p.tree_hash);
            w.u32(p.tree.inodes.len() as u32);
            for inode in &p.tree.inodes {
                encode_inode(&mut w, inode);
            }
            w.u32(p.tree.entries.len() as u32);
            for e in &p.tree.entries {
                w.u32(e.parent);
                w.u32(e.inode);
                w.bytes(&e.name);
            }
        }
        w.u32(self.blobs.len() as u32);
        for b in &self.blobs {
            w.hash(&b.hash);
            w.u64(b.size);
            w.u32(b.chunks.len() as u32);
            for &c in &b.chunks {
                w.u32(c);
            }
        }
        w.u32(self.chunks.len() as u32);
        for c in &self.chunks {
            w.hash(&c.hash);
            w.u32(c.len);
            w.u64(c.offset);
            w.u32(c.block_len);
            w.u32(c.inner);
        }
        w.buf
    }

    /// Decodes and validates a body whose blocks lie in
    /// `[blocks_start, blocks_end)` of the archive.
    pub fn decode(bytes: &[u8], blocks_start: u64, blocks_end: u64) -> Result<Body, FormatError> {
        Body::decode_from(
            StreamReader::of_slice(bytes, "body"),
            blocks_start,
            blocks_end,
            &BodyLimits::NONE,
        )
    }

    /// Decodes and validates a body from its zstd `frame` as it is
    /// decompressed, refusing it as soon as it exceeds [`BODY_MAX`] or
    /// `limits`: neither the decoded body nor more of its trees than the
    /// limits allow is ever held.
    pub fn decode_frame(
        frame: &[u8],
        blocks_start: u64,
        blocks_end: u64,
        limits: &BodyLimits,
    ) -> Result<Body, FormatError> {
        let decoder = zstd_decoder(frame)?;
        let stream = BufReader::with_capacity(DECODE_BUFFER, decoder);
        Body::decode_from(
            StreamReader::capped(stream, BODY_MAX, "body"),
            blocks_start,
            blocks_end,
            limits,
        )
    }

    fn decode_from<R: Read>(
        mut r: StreamReader<R>,
        blocks_start: u64,
        blocks_end: u64,
        limits: &BodyLimits,
    ) -> Result<Body, FormatError> {
        let magic = r.raw::<8>("magic")?;
        let version = match &magic {
            m if m == BODY_MAGIC_V1 => 1,
            m if m == BODY_MAGIC_V2 => 2,
            _ => return Err(malformed("body: bad magic".into())),
        };
        let n = r.u32("package count")?;
        if u64::from(n) > limits.max_packages {
            return Err(malformed(format!(
                "body: {n} packages, more than the {} its archive holds",
                limits.max_packages
            )));
        }
        let n = r.fits(n, "package count", 40)?;
        let mut packages = Vec::with_capacity(n.min(RESERVED_MAX));
        for _ in 0..n {
            packages.push(decode_package(&mut r, version, limits)?);
        }
        let n = r.count("blob count", 44)?;
        let mut blobs = Vec::with_capacity(n.min(RESERVED_MAX));
        for _ in 0..n {
            let hash = r.hash("blob hash")?;
            let size = r.u64("blob size")?;
            let k = r.count("blob chunk count", 4)?;
            let mut chunks = Vec::with_capacity(k.min(RESERVED_MAX));
            for _ in 0..k {
                chunks.push(r.u32("chunk index")?);
            }
            blobs.push(BodyBlob { hash, size, chunks });
        }
        let n = r.count("chunk count", 52)?;
        let mut chunks = Vec::with_capacity(n.min(RESERVED_MAX));
        for _ in 0..n {
            chunks.push(BodyChunk {
                hash: r.hash("chunk hash")?,
                len: r.u32("chunk length")?,
                offset: r.u64("block offset")?,
                block_len: r.u32("block length")?,
                inner: r.u32("inner offset")?,
            });
        }
        r.finish()?;
        let body = Body {
            packages,
            blobs,
            chunks,
        };
        if body.version() != version {
            // Writers write version 1 then; a second encoding of the same
            // body would only be one more thing to get wrong.
            return Err(malformed(
                "body: version 2, but no package is restricted".into(),
            ));
        }
        body.validate(blocks_start, blocks_end)?;
        Ok(body)
    }

    fn validate(&self, blocks_start: u64, blocks_end: u64) -> Result<(), FormatError> {
        let mut seen_chunks = HashSet::with_capacity(self.chunks.len());
        for c in &self.chunks {
            if !seen_chunks.insert(&c.hash) {
                return Err(malformed(format!("chunk {} listed twice", c.hash)));
            }
            let end = c.offset.checked_add(u64::from(c.block_len));
            if c.offset < blocks_start || end.is_none_or(|e| e > blocks_end) {
                return Err(malformed(format!(
                    "chunk {}: its block lies outside the archive's data",
                    c.hash
                )));
            }
            // No reader reads a longer block: refused here, before any
            // read-ahead or prefetch sizes a buffer by it.
            if c.block_len as usize > BLOCK_MAX_STORED {
                return Err(malformed(format!(
                    "chunk {}: a block of {} bytes, longer than any block",
                    c.hash, c.block_len
                )));
            }
            // A block decodes to at most BLOCK_MAX_RAW bytes; the block
            // decoder checks the rest when the chunk is read.
            if u64::from(c.inner) + u64::from(c.len) > BLOCK_MAX_RAW as u64 {
                return Err(malformed(format!(
                    "chunk {}: extends past the largest block",
                    c.hash
                )));
            }
        }
        let mut blob_sizes = HashMap::with_capacity(self.blobs.len());
        for b in &self.blobs {
            let mut total: u64 = 0;
            for &i in &b.chunks {
                let c = self.chunks.get(i as usize).ok_or_else(|| {
                    malformed(format!("content {}: chunk index {i} out of range", b.hash))
                })?;
                total += u64::from(c.len);
            }
            if total != b.size {
                return Err(malformed(format!(
                    "content {}: its chunks add up to {total} bytes, not {}",
                    b.hash, b.size
                )));
            }
            if blob_sizes.insert(&b.hash, b.size).is_some() {
                return Err(malformed(format!("content {} listed twice", b.hash)));
            }
        }
        let mut specs = HashSet::new();
        for p in &self.packages {
            let spec = format!("{}/{}", p.name, p.version);
            if !specs.insert(spec.clone()) {
                return Err(malformed(format!("package {spec} listed twice")));
            }
            for inode in &p.tree.inodes {
                if let InodeKind::File { size, content } = &inode.kind {
                    let hash = content.unwrap_or(Hash([0; 32]));
                    if blob_sizes.get(&hash) != Some(size) {
                        return Err(malformed(format!(
                            "{spec}: a file's content {hash} ({size} bytes) is not in the archive"
                        )));
                    }
                }
            }
        }
        Ok(())
    }
}

fn malformed(msg: String) -> FormatError {
    FormatError::Malformed(msg)
}

fn encode_inode(w: &mut Writer, inode: &Inode) {
    let kind = match &inode.kind {
        InodeKind::Dir => KIND_DIR,
        InodeKind::File { .. } => KIND_FILE,
        InodeKind::Symlink { .. } => KIND_SYMLINK,
    };
    w.u8(kind);
    w.u32(inode.mode & 0o7777);
    w.u32(inode.uid);
    w.u32(inode.gid);
    w.i64(inode.mtime);
    w.bytes(&encode_xattrs(&inode.xattrs));
    match &inode.kind {
        InodeKind::Dir => {}
        InodeKind::File { size, content } => {
            w.u64(*size);
            w.hash(&content.unwrap_or(Hash([0; 32])));
        }
        InodeKind::Symlink { target } => w.bytes(target),
    }
}

/// Reads an inode's xattrs (one length-prefixed field holding the
/// catalog encoding: a count, then each name and value), checking each
/// attribute and charging it to the package's `budget` as it is read, so
/// that a list over the budget is refused before it is held (27 million
/// attributes of one inode once cost 2.6 GB to refuse).
fn read_xattrs<R: Read>(
    r: &mut StreamReader<R>,
    budget: &mut PathBudget,
) -> Result<Xattrs, FormatError> {
    let bad = || malformed("malformed xattrs".into());
    let len = u64::from(r.u32("xattrs")?);
    let end = r.position().saturating_add(len);
    // Each read below must end within the field.
    let fits = |r: &StreamReader<R>, n: u64| {
        if r.position().saturating_add(n) <= end {
            Ok(())
        } else {
            Err(bad())
        }
    };
    fits(r, 4)?;
    let count = r.u32("xattr count")?;
    let mut xattrs: Xattrs = Vec::with_capacity((count as usize).min(1024));
    for _ in 0..count {
        let mut item = [Vec::new(), Vec::new()];
        for (part, field) in item.iter_mut().zip(["xattr name", "xattr value"]) {
            fits(r, 4)?;
            let n = r.u32(field)?;
            fits(r, u64::from(n))?;
            *part = r.take_bytes(n, field)?;
        }
        let [name, value] = item;
        check_xattr(&name, &value).map_err(|reason| malformed(reason.to_string()))?;
        if xattrs.last().is_some_and(|(last, _)| *last >= name) {
            return Err(malformed("xattr names unsorted or repeated".into()));
        }
        budget
            .charge_xattr(&name, &value)
            .map_err(|limit| malformed(limit.to_string()))?;
        xattrs.push((name, value));
    }
    if r.position() != end {
        return Err(bad());
    }
    Ok(xattrs)
}

fn decode_inode<R: Read>(
    r: &mut StreamReader<R>,
    budget: &mut PathBudget,
) -> Result<Inode, FormatError> {
    let kind = r.u8("inode kind")?;
    let mode = r.u32("mode")?;
    if mode & !0o7777 != 0 {
        return Err(malformed(format!("mode {mode:o} has bits beyond 07777")));
    }
    let uid = r.u32("uid")?;
    let gid = r.u32("gid")?;
    let mtime = r.i64("mtime")?;
    let xattrs = read_xattrs(r, budget)?;
    let kind = match kind {
        KIND_DIR => InodeKind::Dir,
        KIND_FILE => InodeKind::File {
            size: r.u64("file size")?,
            content: Some(r.hash("content hash")?),
        },
        KIND_SYMLINK => {
            let target = r.bytes("symlink target")?;
            if target.is_empty() || target.len() > SYMLINK_TARGET_MAX || target.contains(&0) {
                return Err(malformed(
                    "symlink target empty, too long or with NUL".into(),
                ));
            }
            InodeKind::Symlink { target }
        }
        k => return Err(malformed(format!("unknown inode kind {k}"))),
    };
    Ok(Inode {
        kind,
        mode,
        uid,
        gid,
        mtime,
        xattrs,
    })
}

fn decode_package<R: Read>(
    r: &mut StreamReader<R>,
    format: u32,
    limits: &BodyLimits,
) -> Result<BodyPackage, FormatError> {
    let name = r.str("package name")?;
    let version = r.str("package version")?;
    check_name(&name).map_err(|e| malformed(e.to_string()))?;
    check_version(&version).map_err(|e| malformed(e.to_string()))?;
    let spec = format!("{name}/{version}");
    let origin = r.str("origin")?;
    let metadata = r.str("metadata")?;
    let current = match r.u8("current")? {
        0 => false,
        1 => true,
        v => return Err(malformed(format!("{spec}: current flag {v}"))),
    };
    let restricted_to = match format {
        2 => {
            let apps = r.str("restricted to")?;
            if apps.is_empty() {
                None
            } else {
                check_restricted_to(&apps)
                    .map_err(|why| malformed(format!("{spec}: restricted to {apps:?}: {why}")))?;
                Some(apps)
            }
        }
        _ => None,
    };
    let tree_hash = r.hash("tree hash")?;
    let over = |what: String, limit: u64, which: PackageLimit| {
        FormatError::from(OverLimit {
            package: spec.clone(),
            what,
            limit,
            which,
        })
    };
    // Every inode but the root is named by an entry at least once: more
    // inodes than the entries allowed make a package over the limit (or
    // no tree), refused before one is read.
    let n = r.u32("inode count")?;
    let named = u64::from(n).saturating_sub(1);
    if named > limits.max_entries {
        return Err(over(
            format!("the number of entries (at least {named}, to name its {n} inodes)"),
            limits.max_entries,
            PackageLimit::Entries,
        ));
    }
    let n = r.fits(n, "inode count", 25)?;
    let mut tree = Tree::default();
    tree.inodes.reserve(n.min(RESERVED_MAX));
    // The per-package limits, charged as they are read: the xattrs' (a
    // store rule) attribute by attribute, the caller's unpacked size
    // inode by inode.
    let mut budget = PathBudget::default();
    let mut unpacked: u64 = 0;
    for _ in 0..n {
        let inode = decode_inode(r, &mut budget).map_err(|e| match e {
            FormatError::Malformed(why) => malformed(format!("{spec}: {why}")),
            other => other,
        })?;
        if let InodeKind::File { size, .. } = inode.kind {
            unpacked = unpacked.saturating_add(size);
            if unpacked > limits.max_unpacked_size {
                return Err(over(
                    format!("the unpacked size (at least {unpacked} bytes)"),
                    limits.max_unpacked_size,
                    PackageLimit::UnpackedSize,
                ));
            }
        }
        tree.inodes.push(inode);
    }
    let n = r.u32("entry count")?;
    if u64::from(n) > limits.max_entries {
        return Err(over(
            format!("the number of entries ({n})"),
            limits.max_entries,
            PackageLimit::Entries,
        ));
    }
    let n = r.fits(n, "entry count", 12)?;
    tree.entries.reserve(n.min(RESERVED_MAX));
    for _ in 0..n {
        let parent = r.u32("entry parent")?;
        let inode = r.u32("entry inode")?;
        let name = r.bytes("entry name")?;
        tree.entries.push(Entry {
            parent,
            name,
            inode,
        });
    }
    check_tree(&tree, budget).map_err(|why| malformed(format!("{spec}: {why}")))?;
    if tree.tree_hash() != tree_hash {
        return Err(malformed(format!(
            "{spec}: the tree does not match its tree hash"
        )));
    }
    Ok(BodyPackage {
        name,
        version,
        origin,
        metadata,
        current,
        restricted_to,
        tree_hash,
        tree,
    })
}

/// Checks a package's restriction as `nip key trust --apps` would have
/// made it: App patterns separated by `,`, none matching every App (a
/// grant of every App restricts nothing and is written as none).
fn check_restricted_to(apps: &str) -> Result<(), String> {
    let patterns = AppPattern::parse_list(apps).map_err(|e| e.to_string())?;
    if patterns.iter().any(AppPattern::matches_every_app) {
        return Err("a pattern matches every App, which is no restriction".into());
    }
    Ok(())
}

/// Checks that `tree` is a tree a store can hold, charging its paths to
/// `budget` (which holds its xattrs already).
fn check_tree(tree: &Tree, mut budget: PathBudget) -> Result<(), String> {
    let n = tree.inodes.len();
    if tree.inodes.first().map(|i| &i.kind) != Some(&InodeKind::Dir) {
        return Err("the root is not a directory".into());
    }
    let mut named = vec![0u32; n];
    let mut names = HashSet::new();
    for e in &tree.entries {
        let (p, i) = (e.parent as usize, e.inode as usize);
        if p >= n || i >= n {
            return Err("an entry refers to a missing inode".into());
        }
        if tree.inodes[p].kind != InodeKind::Dir {
            return Err("an entry's parent is not a directory".into());
        }
        if i == 0 {
            return Err("an entry names the root".into());
        }
        let name = &e.name;
        if name.is_empty()
            || name == b"."
            || name == b".."
            || name.len() > 255
            || name.contains(&b'/')
            || name.contains(&0)
        {
            return Err(format!("unsafe name {:?}", String::from_utf8_lossy(name)));
        }
        if !names.insert((e.parent, name.as_slice())) {
            return Err(format!(
                "duplicate name {:?}",
                String::from_utf8_lossy(name)
            ));
        }
        named[i] += 1;
    }
    for (i, inode) in tree.inodes.iter().enumerate().skip(1) {
        match (&inode.kind, named[i]) {
            (InodeKind::Dir, 1) => {}
            (InodeKind::Dir, _) => return Err("a directory is not named exactly once".into()),
            (_, 0) => return Err("an inode is named by no entry".into()),
            _ => {}
        }
    }
    // With every directory named once, walking from the root terminates;
    // entries it does not reach hang off a cycle detached from the root.
    // The walk stops at the first entry beyond the depth or path limits.
    let mut reached = 0usize;
    tree.visit(|v| {
        reached += 1;
        budget.charge(v.depth, v.path.len())
    })
    .map_err(|limit| limit.to_string())?;
    if reached != tree.entries.len() {
        return Err("some entries are not reachable from the root".into());
    }
    Ok(())
}

/// Decompresses a body frame, refusing more than [`BODY_MAX`] bytes and a
/// window wider than [`BODY_WINDOW_LOG`] allows: for a reader that holds
/// the decoded body whole (a remote's metadata); an archive's is decoded
/// as it is decompressed ([`Body::decode_frame`]).
pub fn decompress(frame: &[u8]) -> Result<Vec<u8>, FormatError> {
    let decoder = zstd_decoder(frame)?;
    let mut out = Vec::new();
    decoder
        .take(BODY_MAX + 1)
        .read_to_end(&mut out)
        .map_err(|e| malformed(format!("body: zstd: {e}")))?;
    if out.len() as u64 > BODY_MAX {
        return Err(malformed(format!("body larger than {BODY_MAX} bytes")));
    }
    Ok(out)
}

/// A decoder of a body frame, refusing a window wider than
/// [`BODY_WINDOW_LOG`] allows.
fn zstd_decoder(frame: &[u8]) -> Result<zstd::stream::read::Decoder<'_, &[u8]>, FormatError> {
    let mut decoder = zstd::stream::read::Decoder::with_buffer(frame)
        .map_err(|e| malformed(format!("body: zstd: {e}")))?;
    decoder
        .window_log_max(BODY_WINDOW_LOG)
        .map_err(|e| malformed(format!("body: zstd: {e}")))?;
    Ok(decoder)
}

/// zstd level of a body.
const BODY_ZSTD_LEVEL: i32 = 12;
/// Window of a body, writing and reading: 128 MiB, the most every zstd
/// decoder accepts by default.
const BODY_WINDOW_LOG: u32 = 27;

/// Compresses an encoded body, with a checksum. A body names the same
/// chunk and content hashes in places far apart (a content's chunk list,
/// the chunk table), repeats only a long window finds: a middle level with
/// long-distance matching compresses a generation's body nearly as well
/// as the slowest levels, many times faster (bench/README.md).
pub fn compress(body: &[u8]) -> std::io::Result<Vec<u8>> {
    use zstd::zstd_safe::CParameter;
    let mut c = zstd::bulk::Compressor::new(BODY_ZSTD_LEVEL)?;
    c.set_parameter(CParameter::EnableLongDistanceMatching(true))?;
    c.set_parameter(CParameter::WindowLog(BODY_WINDOW_LOG))?;
    c.include_checksum(true)?;
    c.compress(body)
}

#[cfg(test)]
mod tests;
