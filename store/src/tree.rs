//! The in-memory model of a package tree and its identity, the tree hash.
//!
//! A [`Tree`] is what every importer (directory scan, and later archives)
//! produces and what the catalog stores: inodes (with POSIX metadata) and
//! directory entries naming them, so hard links are several entries sharing one
//! inode. Its [`Tree::tree_hash`] is BLAKE3 over the canonical listing defined
//! in FORMAT.md ("Tree hash"): it depends on names, types, modes, ownership,
//! content hashes, link targets, hard-link structure and xattrs, and not on
//! mtimes or on the order in which entries were found.

use std::collections::HashMap;

use crate::hash::Hash;

/// Index of an inode within a [`Tree`]; the root directory is `0`.
pub type InodeIndex = u32;

/// Extended attributes: name and value, kept sorted by name.
pub type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// The type of an inode, without its type-specific data: what the catalog
/// stores in `inodes.kind` (FORMAT.md section 4) and what every reader of
/// a package (the view, export, listings) matches on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InodeType {
    /// A directory (stored as 1).
    Dir,
    /// A regular file (stored as 2).
    File,
    /// A symbolic link (stored as 3).
    Symlink,
}

impl InodeType {
    /// The number the catalog stores.
    pub fn to_i64(self) -> i64 {
        match self {
            InodeType::Dir => 1,
            InodeType::File => 2,
            InodeType::Symlink => 3,
        }
    }

    /// The type a catalog number stands for, if any.
    pub fn from_i64(n: i64) -> Option<InodeType> {
        match n {
            1 => Some(InodeType::Dir),
            2 => Some(InodeType::File),
            3 => Some(InodeType::Symlink),
            _ => None,
        }
    }
}

/// What an inode is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InodeKind {
    /// A directory.
    Dir,
    /// A regular file. `content` is `None` until the content pipeline has
    /// hashed it.
    File {
        /// Size in bytes.
        size: u64,
        /// BLAKE3 of the whole content.
        content: Option<Hash>,
    },
    /// A symbolic link and its target, byte-exact.
    Symlink {
        /// The link target.
        target: Vec<u8>,
    },
}

impl InodeKind {
    /// The inode's type.
    pub fn inode_type(&self) -> InodeType {
        match self {
            InodeKind::Dir => InodeType::Dir,
            InodeKind::File { .. } => InodeType::File,
            InodeKind::Symlink { .. } => InodeType::Symlink,
        }
    }
}

/// One inode: kind plus the POSIX metadata the store keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    /// Type and type-specific data.
    pub kind: InodeKind,
    /// Permission bits including setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Extended attributes, sorted by name.
    pub xattrs: Xattrs,
}

/// A directory entry: `name` in directory `parent` refers to `inode`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The directory holding the entry.
    pub parent: InodeIndex,
    /// The name, byte-exact (never contains `/` or NUL, never `.` or `..`).
    pub name: Vec<u8>,
    /// The inode named.
    pub inode: InodeIndex,
}

/// A package tree: `inodes[0]` is the root directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tree {
    /// All inodes; hard-linked files appear once.
    pub inodes: Vec<Inode>,
    /// All directory entries.
    pub entries: Vec<Entry>,
}

const TAG_DIR: u8 = b'D';
const TAG_FILE: u8 = b'F';
const TAG_HARDLINK: u8 = b'H';
const TAG_SYMLINK: u8 = b'L';
/// First bytes of the canonical listing.
pub const TREE_HASH_DOMAIN: &[u8] = b"nexus-tree-v1\n";

/// Deepest entry a package may hold, in path components (NAR's limit too):
/// real packages stay below 30, and every walk costs its depth.
pub const MAX_DEPTH: usize = 256;
/// Most bytes the paths of one package's entries may add up to (each
/// entry's full path, components joined by `/`): a hundred times what the
/// largest Debian packages use, and a bound on what a small hostile
/// archive can make an importer hold or hash.
pub const MAX_PATH_BYTES: u64 = 256 << 20;
/// Longest symlink target (the kernel's `PATH_MAX`): a link no kernel
/// could make is refused by every importer, so that every stored package
/// can be packed and read back.
pub const SYMLINK_TARGET_MAX: usize = 4096;
/// Longest xattr name (the kernel's `XATTR_NAME_MAX`).
pub const XATTR_NAME_MAX: usize = 255;
/// Largest xattr value (the kernel's `XATTR_SIZE_MAX`).
pub const XATTR_VALUE_MAX: usize = 64 << 10;
/// Most bytes the xattrs of one package's inodes may add up to (names and
/// values): importers hold them in memory with the tree, and a hostile
/// archive's pax records compress a thousandfold. Real packages carry a
/// few capabilities or labels, kilobytes at most.
pub const MAX_XATTR_BYTES: u64 = 64 << 20;

/// One entry as [`Tree::visit`] shows it.
#[derive(Clone, Copy, Debug)]
pub struct Visit<'a> {
    /// Its full path from the package root, components joined by `/`
    /// (valid only during the call).
    pub path: &'a [u8],
    /// Its index in [`Tree::entries`].
    pub entry: usize,
    /// Its number of path components (1 for the root's children).
    pub depth: usize,
}

/// A package-wide path limit that was exceeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathLimit {
    /// An entry is nested deeper than [`MAX_DEPTH`].
    #[error("an entry is nested {depth} levels deep, more than the limit of {MAX_DEPTH}")]
    TooDeep {
        /// Its depth in components.
        depth: usize,
    },
    /// The paths add up to more than [`MAX_PATH_BYTES`].
    #[error("the package's paths add up to more than the limit of {MAX_PATH_BYTES} bytes")]
    TooManyPathBytes,
    /// The xattrs add up to more than [`MAX_XATTR_BYTES`].
    #[error(
        "the package's extended attributes add up to more than the limit of {MAX_XATTR_BYTES} bytes"
    )]
    TooManyXattrBytes,
}

/// What an importer has spent of the per-package path limits, entry by
/// entry, so that it stops at the first entry that exceeds them.
#[derive(Clone, Copy, Debug, Default)]
pub struct PathBudget {
    bytes: u64,
    xattr_bytes: u64,
}

impl PathBudget {
    /// Counts one more entry, `depth` components deep with a full path of
    /// `path_len` bytes.
    pub fn charge(&mut self, depth: usize, path_len: usize) -> Result<(), PathLimit> {
        if depth > MAX_DEPTH {
            return Err(PathLimit::TooDeep { depth });
        }
        self.bytes = self.bytes.saturating_add(path_len as u64);
        if self.bytes > MAX_PATH_BYTES {
            return Err(PathLimit::TooManyPathBytes);
        }
        Ok(())
    }

    /// Counts the target of one more symlink, which is a path too: a
    /// hostile archive's long link records compress a thousandfold.
    pub fn charge_target(&mut self, len: usize) -> Result<(), PathLimit> {
        self.bytes = self.bytes.saturating_add(len as u64);
        if self.bytes > MAX_PATH_BYTES {
            return Err(PathLimit::TooManyPathBytes);
        }
        Ok(())
    }

    /// Counts one more extended attribute: a reader that decodes them one
    /// by one charges each before it reads the next, so that a list over
    /// the budget is refused before it is held.
    pub fn charge_xattr(&mut self, name: &[u8], value: &[u8]) -> Result<(), PathLimit> {
        let len = (name.len() + value.len()) as u64;
        self.xattr_bytes = self.xattr_bytes.saturating_add(len);
        if self.xattr_bytes > MAX_XATTR_BYTES {
            return Err(PathLimit::TooManyXattrBytes);
        }
        Ok(())
    }

    /// Counts the xattrs of one more inode.
    pub fn charge_xattrs(&mut self, xattrs: &Xattrs) -> Result<(), PathLimit> {
        let len: u64 = xattrs
            .iter()
            .map(|(name, value)| (name.len() + value.len()) as u64)
            .sum();
        self.xattr_bytes = self.xattr_bytes.saturating_add(len);
        if self.xattr_bytes > MAX_XATTR_BYTES {
            return Err(PathLimit::TooManyXattrBytes);
        }
        Ok(())
    }
}

/// Checks one extended attribute against what the kernel can hold: a name
/// of 1 to [`XATTR_NAME_MAX`] bytes without NUL (listings are NUL
/// separated, so a NUL would split one name into two) and a value of at
/// most [`XATTR_VALUE_MAX`] bytes. The error says what is wrong.
pub fn check_xattr(name: &[u8], value: &[u8]) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("an extended attribute without a name");
    }
    if name.contains(&0) {
        return Err("an extended attribute name holding a NUL byte");
    }
    if name.len() > XATTR_NAME_MAX {
        return Err("an extended attribute name longer than 255 bytes");
    }
    if value.len() > XATTR_VALUE_MAX {
        return Err("an extended attribute value larger than 64 KiB");
    }
    Ok(())
}

impl Tree {
    /// A tree holding only a root directory with the given metadata.
    pub fn with_root(mode: u32, uid: u32, gid: u32, mtime: i64, xattrs: Xattrs) -> Self {
        Tree {
            inodes: vec![Inode {
                kind: InodeKind::Dir,
                mode,
                uid,
                gid,
                mtime,
                xattrs,
            }],
            entries: Vec::new(),
        }
    }

    /// Adds an inode and returns its index.
    pub fn push_inode(&mut self, inode: Inode) -> InodeIndex {
        self.inodes.push(inode);
        (self.inodes.len() - 1) as InodeIndex
    }

    /// Adds a directory entry.
    pub fn push_entry(&mut self, parent: InodeIndex, name: Vec<u8>, inode: InodeIndex) {
        self.entries.push(Entry {
            parent,
            name,
            inode,
        });
    }

    /// Children of every directory, each list sorted by name.
    pub fn children(&self) -> Vec<Vec<usize>> {
        let mut children = vec![Vec::new(); self.inodes.len()];
        for (i, e) in self.entries.iter().enumerate() {
            children[e.parent as usize].push(i);
        }
        for list in &mut children {
            list.sort_by(|&a, &b| self.entries[a].name.cmp(&self.entries[b].name));
        }
        children
    }

    /// Number of directory entries naming each inode (the hard-link count of
    /// files); directories get `2 + subdirectories`.
    pub fn link_counts(&self) -> Vec<u32> {
        let mut counts = vec![0u32; self.inodes.len()];
        for e in &self.entries {
            counts[e.inode as usize] += 1;
        }
        let mut subdirs = vec![0u32; self.inodes.len()];
        for e in &self.entries {
            if self.inodes[e.inode as usize].kind == InodeKind::Dir {
                subdirs[e.parent as usize] += 1;
            }
        }
        for (i, inode) in self.inodes.iter().enumerate() {
            if inode.kind == InodeKind::Dir {
                counts[i] = 2 + subdirs[i];
            }
        }
        counts
    }

    /// Calls `visit` with every entry, in canonical (depth-first,
    /// byte-sorted) order, the root excepted, and stops at its first error.
    ///
    /// The path handed over is one buffer, extended and cut as the walk
    /// goes down and up, so a walk costs the entries and the depth, not
    /// the sum of every path's length (a chain 20 000 directories deep
    /// held 771 MB of paths when each was its own vector). Deep trees
    /// cannot overflow the call stack: the walk keeps an explicit stack.
    pub fn visit<E>(&self, mut visit: impl FnMut(Visit<'_>) -> Result<(), E>) -> Result<(), E> {
        let children = self.children();
        let mut path = Vec::new();
        // (directory inode, next child, length of the directory's own path)
        let mut stack: Vec<(usize, usize, usize)> = vec![(0, 0, 0)];
        while let Some(top) = stack.last_mut() {
            let (dir, next, prefix) = *top;
            let Some(&entry_index) = children[dir].get(next) else {
                stack.pop();
                continue;
            };
            top.1 += 1;
            let entry = &self.entries[entry_index];
            path.truncate(prefix);
            if prefix > 0 {
                path.push(b'/');
            }
            path.extend_from_slice(&entry.name);
            visit(Visit {
                path: &path,
                entry: entry_index,
                depth: stack.len(),
            })?;
            let child = entry.inode as usize;
            if self.inodes[child].kind == InodeKind::Dir {
                stack.push((child, 0, path.len()));
            }
        }
        Ok(())
    }

    /// Refuses a tree deeper than [`MAX_DEPTH`] or whose paths add up to
    /// more than [`MAX_PATH_BYTES`]; stops walking at the first excess, so
    /// a hostile tree costs no more than the limits.
    pub fn check_limits(&self) -> Result<(), PathLimit> {
        let mut budget = PathBudget::default();
        self.visit(|v| budget.charge(v.depth, v.path.len()))
    }

    /// The package identity: BLAKE3 over the canonical listing (FORMAT.md).
    ///
    /// Panics in debug builds if a file has no content hash yet; in release
    /// such a file hashes as all-zero content, which can never collide with a
    /// real tree because real trees always carry hashes.
    pub fn tree_hash(&self) -> Hash {
        let mut h = blake3::Hasher::new();
        h.update(TREE_HASH_DOMAIN);
        write_record_common(&mut h, TAG_DIR, b"", &self.inodes[0]);
        write_xattrs(&mut h, &self.inodes[0].xattrs);
        let mut first_seen: HashMap<InodeIndex, u64> = HashMap::new();
        let mut ordinal = 0u64;
        let _ = self.visit(|v| -> Result<(), std::convert::Infallible> {
            ordinal += 1;
            let inode_index = self.entries[v.entry].inode;
            let inode = &self.inodes[inode_index as usize];
            match &inode.kind {
                InodeKind::Dir => {
                    write_record_common(&mut h, TAG_DIR, v.path, inode);
                }
                InodeKind::File { size, content } => {
                    if let Some(&primary) = first_seen.get(&inode_index) {
                        h.update(&[TAG_HARDLINK]);
                        write_bytes(&mut h, v.path);
                        h.update(&primary.to_le_bytes());
                        return Ok(());
                    }
                    first_seen.insert(inode_index, ordinal);
                    debug_assert!(content.is_some(), "file without content hash");
                    write_record_common(&mut h, TAG_FILE, v.path, inode);
                    h.update(&size.to_le_bytes());
                    h.update(content.unwrap_or(Hash([0; 32])).as_bytes());
                }
                InodeKind::Symlink { target } => {
                    write_record_common(&mut h, TAG_SYMLINK, v.path, inode);
                    write_bytes(&mut h, target);
                }
            }
            write_xattrs(&mut h, &inode.xattrs);
            Ok(())
        });
        Hash::from(h.finalize())
    }
}

fn write_bytes(h: &mut blake3::Hasher, bytes: &[u8]) {
    h.update(&(bytes.len() as u32).to_le_bytes());
    h.update(bytes);
}

fn write_record_common(h: &mut blake3::Hasher, tag: u8, path: &[u8], inode: &Inode) {
    h.update(&[tag]);
    write_bytes(h, path);
    h.update(&(inode.mode & 0o7777).to_le_bytes());
    h.update(&inode.uid.to_le_bytes());
    h.update(&inode.gid.to_le_bytes());
}

fn write_xattrs(h: &mut blake3::Hasher, xattrs: &Xattrs) {
    h.update(&(xattrs.len() as u32).to_le_bytes());
    for (name, value) in xattrs {
        write_bytes(h, name);
        write_bytes(h, value);
    }
}

/// Encodes xattrs for the catalog (`inodes.xattrs`): the same length-prefixed
/// form as in the tree hash. Empty lists are stored as SQL NULL by callers.
pub fn encode_xattrs(xattrs: &Xattrs) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(xattrs.len() as u32).to_le_bytes());
    for (name, value) in xattrs {
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value);
    }
    out
}

/// Decodes [`encode_xattrs`]; `None` when the bytes are malformed.
pub fn decode_xattrs(mut bytes: &[u8]) -> Option<Xattrs> {
    fn take_u32(b: &mut &[u8]) -> Option<u32> {
        let (head, rest) = b.split_first_chunk::<4>()?;
        *b = rest;
        Some(u32::from_le_bytes(*head))
    }
    fn take_bytes(b: &mut &[u8]) -> Option<Vec<u8>> {
        let len = take_u32(b)? as usize;
        if b.len() < len {
            return None;
        }
        let (head, rest) = b.split_at(len);
        *b = rest;
        Some(head.to_vec())
    }
    let count = take_u32(&mut bytes)?;
    let mut out = Vec::with_capacity((count as usize).min(1024));
    for _ in 0..count {
        let name = take_bytes(&mut bytes)?;
        let value = take_bytes(&mut bytes)?;
        out.push((name, value));
    }
    bytes.is_empty().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn file(content: &[u8], mode: u32) -> Inode {
        Inode {
            kind: InodeKind::File {
                size: content.len() as u64,
                content: Some(Hash::of(content)),
            },
            mode,
            uid: 0,
            gid: 0,
            mtime: 0,
            xattrs: Vec::new(),
        }
    }

    fn dir() -> Inode {
        Inode {
            kind: InodeKind::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: 0,
            xattrs: Vec::new(),
        }
    }

    /// A flat description of a tree: paths are built under subdirectory `d`
    /// or at the root, so insertion order can be permuted freely.
    #[derive(Clone, Debug)]
    struct Spec {
        files: Vec<(Vec<u8>, Vec<u8>, u32, bool)>, // name, content, mode, in subdir
    }

    fn build(spec: &Spec, order: &[usize]) -> Tree {
        let mut t = Tree::with_root(0o755, 0, 0, 0, Vec::new());
        let sub = t.push_inode(dir());
        t.push_entry(0, b"d".to_vec(), sub);
        for &i in order {
            let (name, content, mode, in_sub) = &spec.files[i];
            let ino = t.push_inode(file(content, *mode));
            t.push_entry(if *in_sub { sub } else { 0 }, name.clone(), ino);
        }
        t
    }

    fn spec_strategy() -> impl Strategy<Value = Spec> {
        proptest::collection::btree_map(
            proptest::collection::vec(
                prop_oneof![Just(b'a'), Just(b'b'), Just(0xffu8), Just(b'.')],
                1..6,
            )
            .prop_filter("not d", |n| n != b"d" && n != b"." && n != b".."),
            (
                proptest::collection::vec(any::<u8>(), 0..64),
                0u32..0o7777,
                any::<bool>(),
            ),
            1..12,
        )
        .prop_map(|m| Spec {
            files: m
                .into_iter()
                .map(|(n, (c, mode, s))| (n, c, mode, s))
                .collect(),
        })
    }

    proptest! {
        #[test]
        fn tree_hash_ignores_insertion_order(spec in spec_strategy(), seed in any::<u64>()) {
            let n = spec.files.len();
            let forward: Vec<usize> = (0..n).collect();
            let mut shuffled = forward.clone();
            // Deterministic Fisher-Yates driven by the seed.
            let mut s = seed | 1;
            for i in (1..n).rev() {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                shuffled.swap(i, (s % (i as u64 + 1)) as usize);
            }
            prop_assert_eq!(build(&spec, &forward).tree_hash(), build(&spec, &shuffled).tree_hash());
        }

        #[test]
        fn tree_hash_sees_every_field(spec in spec_strategy(), which in 0usize..5, pick in any::<prop::sample::Index>()) {
            let order: Vec<usize> = (0..spec.files.len()).collect();
            let base = build(&spec, &order);
            let mut changed = base.clone();
            // inode 2.. are the files, in `order`
            let target = 2 + pick.index(spec.files.len());
            let inode = &mut changed.inodes[target];
            match which {
                0 => inode.mode ^= 0o4000,
                1 => inode.uid += 1,
                2 => inode.xattrs.push((b"user.x".to_vec(), b"1".to_vec())),
                3 => if let InodeKind::File { content, .. } = &mut inode.kind {
                    *content = Some(Hash::of(b"something else entirely, not in strategy range"));
                },
                _ => {
                    let e = changed.entries.iter_mut().find(|e| e.inode as usize == target).unwrap();
                    e.name.push(b'z');
                }
            }
            prop_assert_ne!(base.tree_hash(), changed.tree_hash());
        }

        #[test]
        fn xattr_encoding_round_trips(x in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..20), proptest::collection::vec(any::<u8>(), 0..40)), 0..6)) {
            prop_assert_eq!(decode_xattrs(&encode_xattrs(&x)), Some(x));
        }

        #[test]
        fn xattr_decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_xattrs(&bytes);
        }
    }

    #[test]
    fn mtime_is_not_identity_but_hardlinks_are() {
        let mut a = Tree::with_root(0o755, 0, 0, 0, Vec::new());
        let f = a.push_inode(file(b"x", 0o644));
        a.push_entry(0, b"one".to_vec(), f);
        let mut b = a.clone();
        b.inodes[1].mtime = 12345;
        assert_eq!(a.tree_hash(), b.tree_hash());

        // same names and contents, but hard-linked vs two separate files
        let mut linked = a.clone();
        linked.push_entry(0, b"two".to_vec(), f);
        let mut copied = a.clone();
        let g = copied.push_inode(file(b"x", 0o644));
        copied.push_entry(0, b"two".to_vec(), g);
        assert_ne!(linked.tree_hash(), copied.tree_hash());
        assert_eq!(linked.link_counts()[1], 2);
    }

    #[test]
    fn walk_is_depth_first_and_sorted() {
        let mut t = Tree::with_root(0o755, 0, 0, 0, Vec::new());
        let d = t.push_inode(dir());
        let x = t.push_inode(file(b"", 0o644));
        let y = t.push_inode(file(b"", 0o644));
        t.push_entry(0, b"z".to_vec(), x);
        t.push_entry(0, b"a".to_vec(), d);
        t.push_entry(d, b"b".to_vec(), y);
        let mut seen = Vec::new();
        t.visit(|v| -> Result<(), ()> {
            seen.push((v.path.to_vec(), v.depth));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            seen,
            vec![(b"a".to_vec(), 1), (b"a/b".to_vec(), 2), (b"z".to_vec(), 1)]
        );
    }

    /// A tree with every kind of record (directories, files, a hard link,
    /// a symlink, xattrs, a non-UTF-8 name, nesting), whose hash was
    /// computed by the walk before it became a visitor: the format of
    /// FORMAT.md section 5 must not move.
    #[test]
    fn tree_hash_is_stable() {
        let mut t = Tree::with_root(0o755, 0, 0, 7, vec![(b"user.root".to_vec(), b"r".to_vec())]);
        let bin = t.push_inode(dir());
        let share = t.push_inode(Inode {
            uid: 1000,
            gid: 100,
            ..dir()
        });
        let tool = t.push_inode(file(b"#!/bin/sh\necho hi\n", 0o4755));
        let data = t.push_inode(Inode {
            xattrs: vec![
                (b"security.capability".to_vec(), vec![1, 0, 0, 2]),
                (b"user.a".to_vec(), Vec::new()),
            ],
            ..file(&[0xff; 300], 0o600)
        });
        let link = t.push_inode(Inode {
            kind: InodeKind::Symlink {
                target: b"../bin/tool".to_vec(),
            },
            mode: 0o777,
            uid: 0,
            gid: 0,
            mtime: 0,
            xattrs: vec![(b"trusted.x".to_vec(), b"y".to_vec())],
        });
        let deep = t.push_inode(dir());
        t.push_entry(0, b"share".to_vec(), share);
        t.push_entry(0, b"bin".to_vec(), bin);
        t.push_entry(bin, b"tool".to_vec(), tool);
        t.push_entry(bin, b"again".to_vec(), tool);
        t.push_entry(share, b"\xffdata".to_vec(), data);
        t.push_entry(share, b"link".to_vec(), link);
        t.push_entry(share, b"deep".to_vec(), deep);
        t.push_entry(deep, b"tool".to_vec(), tool);
        assert_eq!(
            t.tree_hash().to_hex(),
            "5b9ef61467d0b81e4d61749b6ee6a20676da44d2954928c0677bd0d6ef7179c9"
        );
    }
}
