//! Writing EROFS images that hold metadata only: directories, symbolic
//! links, attributes and extended attributes, and regular files whose
//! contents are holes (overlayfs fetches them from another layer; see
//! [`super`]).
//!
//! The subset written (FORMAT.md, section 14):
//!
//! - 4 KiB blocks; the superblock at byte 1024 of block 0; inodes from
//!   byte 1152 on (`meta_blkaddr` 0), so the root's number is 36 and no
//!   inode is number 0 (which some programs take for a deleted entry);
//! - every inode in the 64-byte extended form (32-bit owners, 64-bit
//!   size, its own modification time), followed by its inline extended
//!   attributes (at most [`XATTR_ROOM`] bytes of entries);
//! - a directory's entries, `.` and `..` included, sorted bytewise, packed
//!   into blocks; stored inline after the inode when they fit in the
//!   inode's block, else in data blocks after the inode area;
//! - a symbolic link's target inline likewise;
//! - a non-empty regular file chunk-based with one chunk per 2^(12+31)
//!   bytes at most, every chunk a hole (`EROFS_NULL_ADDR`); an empty one
//!   flat, with nothing.
//!
//! Nothing in an image is compressed, shared or deduplicated: the image is
//! small (about 200 bytes a file) and rebuilt whole for each generation.

use thiserror::Error;

/// The block size (`blkszbits` 12).
const BLOCK: usize = 4096;
const BLOCK_BITS: u8 = 12;
/// Where the superblock starts.
const SUPER_OFFSET: usize = 1024;
/// Where the first inode starts: right after the 128-byte superblock.
const FIRST_INODE: usize = SUPER_OFFSET + 128;
/// Inode slots are 32 bytes: an inode's number is its offset / 32.
const SLOT: usize = 32;
/// The extended on-disk inode.
const INODE: usize = 64;
/// A directory entry: nid (8), name offset (2), type (1), reserved (1).
const DIRENT: usize = 12;
/// The header of an inode's inline extended attributes.
const XATTR_HEADER: usize = 12;
const MAGIC: u32 = 0xE0F5_E1E2;
const FEATURE_INCOMPAT_CHUNKED_FILE: u32 = 0x4;
const LAYOUT_FLAT_PLAIN: u16 = 0;
const LAYOUT_FLAT_INLINE: u16 = 2;
const LAYOUT_CHUNK_BASED: u16 = 4;
/// The hole marker of a chunk's block address.
const NULL_ADDR: u32 = u32::MAX;
/// The largest chunk: 2^(12+31) bytes.
const MAX_CHUNK_BITS: u32 = BLOCK_BITS as u32 + 31;
const NAME_MAX: usize = 255;
/// The most bytes one inode's inline extended attribute entries may take:
/// their 16-bit count (`i_xattr_icount`) is 1 + entries / 4, so at most
/// 65,535 − 1 four-byte words follow the header.
pub const XATTR_ROOM: usize = (u16::MAX as usize - 1) * 4;

/// Why an image cannot be written. The writer refuses any tree holding
/// what the format cannot: [`super::fit`] leaves such things out first,
/// so for a tree it fitted only the inconsistencies remain
/// ([`ImageError::TooLarge`], duplicate names).
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ImageError {
    /// A name is empty, longer than 255 bytes, or holds `/` or NUL.
    #[error("the name {name:?} cannot be a directory entry")]
    BadName {
        /// The name, lossily decoded.
        name: String,
    },
    /// An extended attribute's name has no EROFS prefix (`user.`,
    /// `trusted.`, `security.`, the POSIX ACLs) or is too long.
    #[error("the extended attribute {name:?} cannot be stored in EROFS")]
    BadXattrName {
        /// The name, lossily decoded.
        name: String,
    },
    /// An extended attribute's value exceeds 65,535 bytes.
    #[error("the value of extended attribute {name:?} is {len} bytes, over EROFS's 65,535")]
    XattrTooLarge {
        /// The name, lossily decoded.
        name: String,
        /// Its value's length.
        len: usize,
    },
    /// One inode's extended attributes take more than [`XATTR_ROOM`]
    /// bytes: their count would not fit its 16 bits.
    #[error("an inode's extended attributes take {len} bytes, over EROFS's {XATTR_ROOM}")]
    XattrsTooLarge {
        /// The bytes their entries take.
        len: usize,
    },
    /// A symbolic link's target is empty, holds NUL or is 4096 bytes or
    /// longer (over `PATH_MAX`).
    #[error("a symbolic link's target of {len} bytes cannot be stored")]
    BadTarget {
        /// The target's length.
        len: usize,
    },
    /// The tree needs more blocks than 32-bit block numbers address, or
    /// references a node that does not exist.
    #[error("the tree does not fit an EROFS image: {0}")]
    TooLarge(&'static str),
}

/// What a node is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// A directory: its parent's index (the root's own) and its entries
    /// (names without `.` and `..`, each naming a node index).
    Dir {
        /// The parent directory's node index.
        parent: usize,
        /// Name and node index of each entry, in any order.
        entries: Vec<(Vec<u8>, usize)>,
    },
    /// A regular file of this size, its contents a hole.
    File {
        /// The size reported.
        size: u64,
    },
    /// A symbolic link to this target.
    Symlink(Vec<u8>),
}

/// One inode of the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Permission bits with setuid, setgid and sticky (`& 0o7777`).
    pub perm: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Link count.
    pub nlink: u32,
    /// Extended attributes, full names (`user.x`, `trusted.overlay.y`).
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// What it is.
    pub body: Body,
}

/// A tree to write: node 0 is the root directory. A node named by several
/// entries is one inode with several names (a hard link).
#[derive(Clone, Debug, Default)]
pub struct Tree {
    /// The nodes, the root first.
    pub nodes: Vec<Node>,
}

/// A directory's entries, sorted, `.` and `..` included: (name, node).
type Entries<'a> = Vec<(&'a [u8], usize)>;

/// Where one node goes, decided before anything is written.
struct Placement {
    /// Byte offset of the inode.
    offset: usize,
    /// Its encoded extended attributes (without the header).
    xattrs: Vec<u8>,
    /// Their count field: 0 without any, else 1 + their length / 4.
    icount: u16,
    /// Data layout.
    layout: u16,
    /// The lengths of its data blocks: for a directory, its entry blocks
    /// (encoded straight into the image once every inode has its number);
    /// for a symlink, its target as one block. Empty for files.
    blocks: Vec<usize>,
    /// Inline (after the inode) rather than in data blocks.
    inline: bool,
    /// First data block, when not inline.
    first_block: u32,
    /// The size reported.
    size: u64,
    /// Chunk bits beyond the block's, for chunk-based files.
    chunk_bits: u32,
    /// Number of chunks (block map entries).
    chunks: usize,
}

impl Placement {
    /// The bytes the inode's record takes after its first byte.
    fn record_len(&self) -> usize {
        let mut len = INODE + self.xattr_area();
        if self.inline {
            len += self.blocks.first().copied().unwrap_or(0);
        }
        len + self.chunks * 4
    }

    fn xattr_area(&self) -> usize {
        if self.xattrs.is_empty() {
            0
        } else {
            XATTR_HEADER + self.xattrs.len()
        }
    }
}

/// The EROFS name index and the rest of the name, or `None` if EROFS has
/// no prefix for it.
fn xattr_index(name: &[u8]) -> Option<(u8, &[u8])> {
    match name {
        b"system.posix_acl_access" => return Some((2, b"")),
        b"system.posix_acl_default" => return Some((3, b"")),
        _ => {}
    }
    for (prefix, index) in [(&b"user."[..], 1u8), (b"trusted.", 4), (b"security.", 6)] {
        if let Some(rest) = name.strip_prefix(prefix)
            && !rest.is_empty()
        {
            return Some((index, rest));
        }
    }
    None
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The bytes one extended attribute's inline entry takes (header, name
/// without its prefix, value, padding to 4), or why EROFS cannot hold it:
/// a name without a prefix EROFS knows, or longer than 255 bytes after
/// it, or a value over 65,535 bytes (its length has 16 bits).
pub fn xattr_len(name: &[u8], value: &[u8]) -> Result<usize, ImageError> {
    let (_, rest, _) = xattr_entry(name, value)?;
    Ok((4 + rest.len() + value.len()).next_multiple_of(4))
}

/// An entry's name index, name without its prefix and value length.
fn xattr_entry<'a>(name: &'a [u8], value: &[u8]) -> Result<(u8, &'a [u8], u16), ImageError> {
    let (index, rest) = xattr_index(name)
        .filter(|(_, rest)| rest.len() <= NAME_MAX)
        .ok_or_else(|| ImageError::BadXattrName { name: lossy(name) })?;
    let value_len = u16::try_from(value.len()).map_err(|_| ImageError::XattrTooLarge {
        name: lossy(name),
        len: value.len(),
    })?;
    Ok((index, rest, value_len))
}

/// Inline extended attribute entries, 4-byte aligned each, at most
/// [`XATTR_ROOM`] bytes in all.
fn encode_xattrs(xattrs: &[(Vec<u8>, Vec<u8>)]) -> Result<Vec<u8>, ImageError> {
    let mut len = 0usize;
    for (name, value) in xattrs {
        len += xattr_len(name, value)?;
    }
    if len > XATTR_ROOM {
        return Err(ImageError::XattrsTooLarge { len });
    }
    let mut out = Vec::with_capacity(len);
    for (name, value) in xattrs {
        let (index, rest, value_len) = xattr_entry(name, value)?;
        // The length fits: `rest` is at most 255 bytes.
        out.push(rest.len() as u8);
        out.push(index);
        out.extend_from_slice(&value_len.to_le_bytes());
        out.extend_from_slice(rest);
        out.extend_from_slice(value);
        out.resize(out.len().next_multiple_of(4), 0);
    }
    Ok(out)
}

/// Checks that `name` can be a directory entry: 1 to 255 bytes, neither
/// `.` nor `..`, without `/` or NUL.
pub fn check_name(name: &[u8]) -> Result<(), ImageError> {
    if name.is_empty()
        || name.len() > NAME_MAX
        || name.contains(&b'/')
        || name.contains(&0)
        || name == b"."
        || name == b".."
    {
        return Err(ImageError::BadName { name: lossy(name) });
    }
    Ok(())
}

/// Checks that `target` can be a symbolic link's target: 1 to 4095 bytes
/// (it is stored in one block, and the kernel follows nothing longer than
/// `PATH_MAX` with its NUL), without NUL.
pub fn check_target(target: &[u8]) -> Result<(), ImageError> {
    if target.is_empty() || target.len() >= BLOCK || target.contains(&0) {
        return Err(ImageError::BadTarget { len: target.len() });
    }
    Ok(())
}

/// The file type of a dirent.
fn file_type(body: &Body) -> u8 {
    match body {
        Body::File { .. } => 1,
        Body::Dir { .. } => 2,
        Body::Symlink(_) => 7,
    }
}

/// A directory's sorted entries, `.` and `..` included, as
/// (name, node index).
fn sorted_entries(
    me: usize,
    parent: usize,
    entries: &[(Vec<u8>, usize)],
) -> Result<Entries<'_>, ImageError> {
    let mut all: Vec<(&[u8], usize)> = Vec::with_capacity(entries.len() + 2);
    all.push((b".", me));
    all.push((b"..", parent));
    for (name, node) in entries {
        check_name(name)?;
        all.push((name, *node));
    }
    all.sort_unstable_by(|a, b| a.0.cmp(b.0));
    if all.windows(2).any(|w| w[0].0 == w[1].0) {
        let dup = all
            .windows(2)
            .find(|w| w[0].0 == w[1].0)
            .map(|w| lossy(w[0].0))
            .unwrap_or_default();
        return Err(ImageError::BadName { name: dup });
    }
    Ok(all)
}

/// Splits sorted entries into blocks: (first entry, count) per block.
fn entry_blocks(entries: &[(&[u8], usize)]) -> Vec<(usize, usize)> {
    let mut blocks = Vec::new();
    let (mut start, mut used) = (0, 0);
    for (i, (name, _)) in entries.iter().enumerate() {
        let need = DIRENT + name.len();
        if used + need > BLOCK {
            blocks.push((start, i - start));
            start = i;
            used = 0;
        }
        used += need;
    }
    blocks.push((start, entries.len() - start));
    blocks
}

/// Writes `tree` as an EROFS image.
pub fn write(tree: &Tree) -> Result<Vec<u8>, ImageError> {
    let nodes = &tree.nodes;
    match nodes.first() {
        Some(Node {
            body: Body::Dir { .. },
            ..
        }) => {}
        _ => return Err(ImageError::TooLarge("the root is not a directory")),
    }
    // Sorted entries of each directory, by node index.
    let mut dirs: Vec<Option<Entries>> = vec![None; nodes.len()];
    for (i, node) in nodes.iter().enumerate() {
        if let Body::Dir { parent, entries } = &node.body {
            let sorted = sorted_entries(i, *parent, entries)?;
            if sorted.iter().any(|(_, n)| *n >= nodes.len()) {
                return Err(ImageError::TooLarge("an entry names a missing node"));
            }
            dirs[i] = Some(sorted);
        }
    }
    // Inodes in depth-first order from the root, so that a directory's
    // inodes lie together (what `find` and `ls -R` read next).
    let order = depth_first(nodes, &dirs);
    // Sizes and layouts; data block contents of directories wait for the
    // inode numbers.
    let mut places: Vec<Option<Placement>> = (0..nodes.len()).map(|_| None).collect();
    let mut offset = FIRST_INODE;
    for &i in &order {
        let node = &nodes[i];
        let xattrs = encode_xattrs(&node.xattrs)?;
        let icount = if xattrs.is_empty() {
            0
        } else {
            // The area is checked against XATTR_ROOM, which is exactly
            // what the count holds; checked again so that a count that
            // wrapped could never point the kernel at the wrong bytes.
            u16::try_from(1 + xattrs.len() / 4)
                .map_err(|_| ImageError::XattrsTooLarge { len: xattrs.len() })?
        };
        let mut place = Placement {
            offset: 0,
            xattrs,
            icount,
            layout: LAYOUT_FLAT_PLAIN,
            blocks: Vec::new(),
            inline: false,
            first_block: 0,
            size: 0,
            chunk_bits: 0,
            chunks: 0,
        };
        match &node.body {
            Body::Dir { .. } => {
                let entries = dirs[i].as_deref().unwrap_or_default();
                let blocks = entry_blocks(entries);
                let last: usize = blocks.last().map_or(0, |&(s, n)| {
                    entries[s..s + n]
                        .iter()
                        .map(|(name, _)| DIRENT + name.len())
                        .sum()
                });
                place.size = ((blocks.len() - 1) * BLOCK + last) as u64;
                place.blocks = (0..blocks.len())
                    .map(|b| if b + 1 == blocks.len() { last } else { BLOCK })
                    .collect();
            }
            Body::Symlink(target) => {
                check_target(target)?;
                place.size = target.len() as u64;
                place.blocks = vec![target.len()];
            }
            Body::File { size } => {
                place.size = *size;
                if *size > 0 {
                    place.layout = LAYOUT_CHUNK_BASED;
                    let bits = (u64::BITS - (size - 1).leading_zeros())
                        .clamp(u32::from(BLOCK_BITS), MAX_CHUNK_BITS);
                    place.chunk_bits = bits - u32::from(BLOCK_BITS);
                    place.chunks = usize::try_from(size.div_ceil(1u64 << bits))
                        .map_err(|_| ImageError::TooLarge("a file has too many chunks"))?;
                }
            }
        }
        // Inline when the data is one partial block that fits, with the
        // inode, in one block.
        if place.blocks.len() == 1 && place.blocks[0] < BLOCK {
            place.inline = true;
            place.layout = LAYOUT_FLAT_INLINE;
            if place.record_len() > BLOCK {
                place.inline = false;
                place.layout = LAYOUT_FLAT_PLAIN;
            }
        }
        // A record with inline data must not cross a block boundary.
        let len = place.record_len();
        if place.inline && offset % BLOCK + len > BLOCK {
            offset = offset.next_multiple_of(BLOCK);
        }
        place.offset = offset;
        offset += len.next_multiple_of(SLOT);
        places[i] = Some(place);
    }
    // Data blocks after the inodes.
    let mut next_block = offset.div_ceil(BLOCK);
    for &i in &order {
        if let Some(place) = places[i].as_mut()
            && !place.inline
            && !place.blocks.is_empty()
        {
            place.first_block = u32::try_from(next_block)
                .map_err(|_| ImageError::TooLarge("more than 2^32 blocks"))?;
            next_block += place.blocks.len();
        }
    }
    let total_blocks =
        u32::try_from(next_block).map_err(|_| ImageError::TooLarge("more than 2^32 blocks"))?;
    let nids: Vec<u64> = places
        .iter()
        .map(|p| p.as_ref().map_or(0, |p| (p.offset / SLOT) as u64))
        .collect();
    let nid = |i: usize| nids[i];
    // Everything into one buffer.
    let mut image = vec![0u8; total_blocks as usize * BLOCK];
    for &i in &order {
        let (node, Some(place)) = (&nodes[i], places[i].as_ref()) else {
            continue;
        };
        write_inode(&mut image, node, place, nid(i));
        let at = |b: usize| {
            if place.inline {
                place.offset + INODE + place.xattr_area()
            } else {
                (place.first_block as usize + b) * BLOCK
            }
        };
        match (&node.body, &dirs[i]) {
            (Body::Dir { .. }, Some(entries)) => {
                for (b, (start, count)) in entry_blocks(entries).into_iter().enumerate() {
                    let block = &mut image[at(b)..at(b) + place.blocks[b]];
                    write_entry_block(block, &entries[start..start + count], nodes, &nid);
                }
            }
            (Body::Symlink(target), _) => {
                image[at(0)..at(0) + target.len()].copy_from_slice(target);
            }
            _ => {}
        }
    }
    let inodes = order.len() as u64;
    let root = u16::try_from(nid(0)).map_err(|_| ImageError::TooLarge("root inode too far"))?;
    write_super(&mut image, root, inodes, total_blocks);
    Ok(image)
}

/// Encodes one directory block, `entries` (sorted, those of this block),
/// into `block`, which is exactly as long as they take: each entry's inode
/// number, name offset and file type, then the names.
fn write_entry_block(
    block: &mut [u8],
    entries: &[(&[u8], usize)],
    nodes: &[Node],
    nid: &impl Fn(usize) -> u64,
) {
    let mut name_off = DIRENT * entries.len();
    for (k, (name, node)) in entries.iter().enumerate() {
        let dirent = &mut block[k * DIRENT..(k + 1) * DIRENT];
        dirent[..8].copy_from_slice(&nid(*node).to_le_bytes());
        dirent[8..10].copy_from_slice(&(name_off as u16).to_le_bytes());
        dirent[10] = file_type(&nodes[*node].body);
        dirent[11] = 0;
        block[name_off..name_off + name.len()].copy_from_slice(name);
        name_off += name.len();
    }
}

/// Node indices, depth first from the root, each once.
fn depth_first(nodes: &[Node], dirs: &[Option<Entries>]) -> Vec<usize> {
    let mut seen = vec![false; nodes.len()];
    let mut order = Vec::with_capacity(nodes.len());
    let mut stack = vec![0usize];
    seen[0] = true;
    while let Some(i) = stack.pop() {
        order.push(i);
        if let Some(entries) = &dirs[i] {
            // Reversed onto the stack, so taken in name order.
            for (name, node) in entries.iter().rev() {
                if *name != b"." && *name != b".." && !seen[*node] {
                    seen[*node] = true;
                    stack.push(*node);
                }
            }
        }
    }
    order
}

fn put16(image: &mut [u8], at: usize, v: u16) {
    image[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(image: &mut [u8], at: usize, v: u32) {
    image[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(image: &mut [u8], at: usize, v: u64) {
    image[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn write_inode(image: &mut [u8], node: &Node, place: &Placement, nid: u64) {
    let at = place.offset;
    let kind = match node.body {
        Body::Dir { .. } => libc::S_IFDIR,
        Body::File { .. } => libc::S_IFREG,
        Body::Symlink(_) => libc::S_IFLNK,
    };
    // Extended form (bit 0) and the data layout.
    put16(image, at, 1 | (place.layout << 1));
    put16(image, at + 2, place.icount);
    put16(image, at + 4, (kind | (node.perm & 0o7777)) as u16);
    put64(image, at + 8, place.size);
    let i_u = match place.layout {
        LAYOUT_CHUNK_BASED => place.chunk_bits,
        _ => place.first_block,
    };
    put32(image, at + 16, i_u);
    put32(image, at + 20, nid as u32);
    put32(image, at + 24, node.uid);
    put32(image, at + 28, node.gid);
    put64(image, at + 32, node.mtime.max(0) as u64);
    put32(image, at + 44, node.nlink);
    let mut p = at + INODE;
    if !place.xattrs.is_empty() {
        // Header: no name filter, no shared attributes.
        p += XATTR_HEADER;
        image[p..p + place.xattrs.len()].copy_from_slice(&place.xattrs);
        p += place.xattrs.len();
    }
    if place.layout == LAYOUT_CHUNK_BASED {
        // Block map entries are 4-byte aligned; p already is.
        for c in 0..place.chunks {
            put32(image, p + 4 * c, NULL_ADDR);
        }
    }
}

fn write_super(image: &mut [u8], root: u16, inodes: u64, blocks: u32) {
    let s = SUPER_OFFSET;
    put32(image, s, MAGIC);
    image[s + 12] = BLOCK_BITS;
    put16(image, s + 14, root);
    put64(image, s + 16, inodes);
    put32(image, s + 36, blocks);
    put32(image, s + 80, FEATURE_INCOMPAT_CHUNKED_FILE);
}
