//! What the view says about an inode and a directory entry, independent of
//! the transport that carries it.

use nexus_store::catalog::InodeRow;

use crate::error::Result;
use crate::ino::Node;

/// The type of an inode: the store's (a directory, a regular file, a
/// symbolic link), which is also what the view's own nodes (the root, Apps,
/// `Current` links) are.
pub use nexus_store::tree::InodeType as Kind;

/// The attributes of an inode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    /// Inode number (see [`crate::ino`]).
    pub ino: u64,
    /// Its type.
    pub kind: Kind,
    /// Permission bits including setuid, setgid and sticky (`& 0o7777`).
    pub perm: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes (symlinks: the target's length; directories: 0).
    pub size: u64,
    /// Modification time, seconds since the epoch (also used as atime and
    /// ctime: the tree is read-only).
    pub mtime: i64,
    /// Number of names (directories: 2 + subdirectories).
    pub nlink: u32,
    /// True when these attributes can never change: package inodes are
    /// immutable, so transports may cache them for as long as they like. The
    /// root, App directories and `Current` links change with the generation.
    pub immutable: bool,
}

impl Attr {
    /// The attributes of a package inode.
    pub(crate) fn of_row(row: &InodeRow) -> Result<Attr> {
        let kind = row.kind;
        Ok(Attr {
            ino: Node::Package(row.id).ino()?,
            kind,
            perm: row.mode & 0o7777,
            uid: row.uid,
            gid: row.gid,
            size: row.size,
            mtime: row.mtime,
            nlink: row.nlink,
            immutable: true,
        })
    }
}

/// A directory entry with the attributes of the inode it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The name, byte-exact.
    pub name: Vec<u8>,
    /// The inode it names.
    pub attr: Attr,
    /// True when the name always names this inode: entries inside packages.
    /// Entries of the root and of App directories come and go with the
    /// generation.
    pub immutable: bool,
}

/// A whole directory listing, `.` and `..` first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listing {
    /// The entries.
    pub entries: Vec<Entry>,
    /// True when the listing can never change (a directory inside a package).
    pub immutable: bool,
}

/// File system totals for `statfs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FsStats {
    /// Block size the totals are counted in.
    pub block_size: u32,
    /// Blocks the files of the generation would take unpacked.
    pub blocks: u64,
    /// Regular-file entries of the generation.
    pub files: u64,
    /// Longest name allowed.
    pub name_max: u32,
}
