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
            perm: enforced_mode(row),
            uid: row.uid,
            gid: row.gid,
            size: row.size,
            mtime: row.mtime,
            nlink: row.nlink,
            immutable: true,
        })
    }
}

/// The name of the POSIX access ACL attribute.
pub(crate) const ACL_ACCESS_XATTR: &[u8] = b"system.posix_acl_access";
/// The name of the POSIX default ACL attribute (directories).
pub(crate) const ACL_DEFAULT_XATTR: &[u8] = b"system.posix_acl_default";

/// The permission bits the kernel is told for `row`: its mode, except that
/// an inode carrying an extended POSIX access ACL gets group bits no wider
/// than the ACL grants its owning group.
///
/// The mount does not let the kernel apply ACLs (asking for them costs a
/// round trip per inode; packages almost never carry any), so the kernel
/// checks the mode bits alone. With an extended ACL the group bits are the
/// ACL's mask, which can grant the owning group more than the ACL does:
/// narrowing them to the owning group's entry (masked) fails closed. Named
/// users and groups lose the access the ACL gave them, never gain any.
pub(crate) fn enforced_mode(row: &InodeRow) -> u32 {
    let mode = row.mode & 0o7777;
    let Some((_, acl)) = row.xattrs.iter().find(|(n, _)| n == ACL_ACCESS_XATTR) else {
        return mode;
    };
    match acl_group_limit(acl) {
        Some(group) => (mode & !0o070) | (mode & 0o070 & (group << 3)),
        // Unreadable: no access for the group at all.
        None => mode & !0o070,
    }
}

/// What an ACL in the kernel's xattr encoding (`u32` version 2, then
/// entries of `u16` tag, `u16` perm, `u32` id) grants the owning group:
/// its `ACL_GROUP_OBJ` entry, limited by the `ACL_MASK` entry if there is
/// one (rwx as 3 bits). `None` when the bytes are no such ACL.
fn acl_group_limit(acl: &[u8]) -> Option<u32> {
    const VERSION: u32 = 2;
    const GROUP_OBJ: u16 = 0x04;
    const MASK: u16 = 0x10;
    let (version, entries) = acl.split_first_chunk::<4>()?;
    if u32::from_le_bytes(*version) != VERSION || entries.len() % 8 != 0 {
        return None;
    }
    let (mut group, mut mask) = (None, 0o7);
    for e in entries.chunks_exact(8) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let perm = u32::from(u16::from_le_bytes([e[2], e[3]]) & 0o7);
        match tag {
            GROUP_OBJ => group = Some(perm),
            MASK => mask = perm,
            _ => {}
        }
    }
    group.map(|g| g & mask)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut out = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in entries {
            out.extend_from_slice(&tag.to_le_bytes());
            out.extend_from_slice(&perm.to_le_bytes());
            out.extend_from_slice(&id.to_le_bytes());
        }
        out
    }

    fn row(mode: u32, xattrs: Vec<(Vec<u8>, Vec<u8>)>) -> InodeRow {
        InodeRow {
            id: 1,
            package: 1,
            kind: nexus_store::tree::InodeType::File,
            mode,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: 0,
            nlink: 1,
            blob: None,
            content: None,
            target: None,
            xattrs,
        }
    }

    #[test]
    fn an_acl_never_widens_what_the_mode_bits_grant() {
        let plain = row(0o4755, Vec::new());
        assert_eq!(enforced_mode(&plain), 0o4755);
        // group::--- with mask rwx: the mode shows g=rwx (the mask); the
        // owning group gets nothing; user:1000:rwx is not honoured.
        let restricted = acl(&[
            (0x01, 7, 0),
            (0x02, 7, 1000),
            (0x04, 0, 0),
            (0x10, 7, 0),
            (0x20, 5, 0),
        ]);
        let r = row(0o775, vec![(ACL_ACCESS_XATTR.to_vec(), restricted)]);
        assert_eq!(enforced_mode(&r), 0o705);
        // group::rwx masked to r-x.
        let masked = acl(&[(0x01, 7, 0), (0x04, 7, 0), (0x10, 5, 0), (0x20, 0, 0)]);
        let m = row(0o750, vec![(ACL_ACCESS_XATTR.to_vec(), masked)]);
        assert_eq!(enforced_mode(&m), 0o750);
        // Garbage in the attribute: no group access.
        let bad = row(
            0o775,
            vec![(ACL_ACCESS_XATTR.to_vec(), b"nonsense".to_vec())],
        );
        assert_eq!(enforced_mode(&bad), 0o705);
    }
}
