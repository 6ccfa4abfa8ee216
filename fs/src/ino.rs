//! Inode numbers: derived from catalog ids so that they are the same after
//! every remount.
//!
//! The two low bits say what a number names, the rest is a catalog id:
//!
//! | number | names |
//! |---|---|
//! | `1` | the root |
//! | `4·i` | package inode `inodes.id = i` (files, symlinks, directories, package roots) |
//! | `4·a + 1` (a ≥ 1) | App directory, `a` = the App's first stored package id |
//! | `4·a + 2` | that App's `Current` link |
//! | `4·x + 3` | the Index tree ([`crate::index`]; never decoded here) |
//!
//! Hard links are one catalog inode, so they get one number. An App is named
//! by the lowest package id stored under its name
//! ([`nexus_store::catalog::RootedMember::app_first_package`]), which holds
//! while that package is kept; numbers stay below 2³² until the catalog has a
//! billion inodes, so even 32-bit `stat` works.

use crate::error::{Result, ViewError};

/// The root directory's inode number (FUSE's fixed root id).
pub const ROOT: u64 = 1;

/// What an inode number names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Node {
    /// The root directory, listing the Apps.
    Root,
    /// An App directory, listing its versions and `Current`.
    App(i64),
    /// An App's `Current` symlink.
    Current(i64),
    /// A catalog inode of a package.
    Package(i64),
}

impl Node {
    /// Decodes an inode number; `None` for numbers the view never hands out.
    pub fn from_ino(ino: u64) -> Option<Node> {
        let id = i64::try_from(ino >> 2).ok()?;
        match (ino & 3, id) {
            (1, 0) => Some(Node::Root),
            (_, 0) => None,
            (0, id) => Some(Node::Package(id)),
            (1, id) => Some(Node::App(id)),
            (2, id) => Some(Node::Current(id)),
            _ => None,
        }
    }

    /// The inode number; an error if a catalog id is beyond the number space
    /// (ids are positive and below 2⁶², which SQLite rowids never reach in
    /// practice).
    pub fn ino(self) -> Result<u64> {
        let (id, tag) = match self {
            Node::Root => return Ok(ROOT),
            Node::App(id) => (id, 1),
            Node::Current(id) => (id, 2),
            Node::Package(id) => (id, 0),
        };
        u64::try_from(id)
            .ok()
            .filter(|&id| id > 0)
            .and_then(|id| id.checked_mul(4))
            .map(|n| n | tag)
            .ok_or_else(|| ViewError::Inconsistent(format!("catalog id {id} out of range")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip_and_never_collide() {
        let mut seen = std::collections::HashSet::new();
        for id in [1i64, 2, 3, 1000, (1 << 61) + 5] {
            for node in [Node::App(id), Node::Current(id), Node::Package(id)] {
                let ino = node.ino().unwrap();
                assert_eq!(Node::from_ino(ino), Some(node));
                assert!(seen.insert(ino), "{node:?} collides");
                assert_ne!(ino, ROOT);
            }
        }
        assert_eq!(Node::from_ino(ROOT), Some(Node::Root));
        assert_eq!(Node::Root.ino().unwrap(), ROOT);
        assert_eq!(
            Node::Package(7).ino().unwrap(),
            28,
            "package inodes are 4·id"
        );
    }

    #[test]
    fn foreign_numbers_are_refused() {
        for ino in [0u64, 2, 3, 4 * 5 + 3, u64::MAX] {
            assert_eq!(Node::from_ino(ino), None, "{ino}");
        }
        assert!(Node::Package(0).ino().is_err());
        assert!(Node::App(-3).ino().is_err());
        assert!(Node::Package(i64::MAX).ino().is_err());
    }
}
