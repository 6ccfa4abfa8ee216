//! The catalog → tree conversion: a stored package's rows rebuilt as the
//! [`Tree`] that was committed, for everything that needs a package as a
//! whole (its tree hash checked by `verify`, its archive written by `npk`,
//! a stored package reused by a build).

use std::collections::HashMap;

use rusqlite::Connection;

use crate::error::{Result, StoreError};
use crate::hash::Hash;
use crate::tree::{Inode, InodeIndex, InodeKind, InodeType, Tree, decode_xattrs};

/// A stored package as a tree, with the contents its files use.
#[derive(Clone, Debug)]
pub struct PackageTree {
    /// The tree, root at inode 0, inodes in the order they were committed.
    pub tree: Tree,
    /// Each file inode's content: its hash and the catalog's content id
    /// (`blobs.id`), in inode order (a hard-linked file once).
    pub contents: Vec<(Hash, i64)>,
}

fn damaged(package: i64, what: String) -> StoreError {
    StoreError::CatalogDamaged { package, what }
}

/// Rebuilds package `package` (root inode `root`) from its rows: two set
/// queries, never a walk, so a damaged catalog (an entry naming another
/// package's inode, a cycle) is reported, not followed.
pub(super) fn package_tree(conn: &Connection, package: i64, root: i64) -> Result<PackageTree> {
    let mut inodes = conn.prepare_cached(
        "SELECT i.id, i.kind, i.mode, i.uid, i.gid, i.size, i.mtime, b.hash, i.blob, i.target,
                i.xattrs
         FROM inodes i LEFT JOIN blobs b ON b.id = i.blob WHERE i.package = ?1 ORDER BY i.id",
    )?;
    let mut pending: Vec<(i64, Inode)> = Vec::new();
    let mut contents = Vec::new();
    let mut rows = inodes.query([package])?;
    while let Some(r) = rows.next()? {
        let id: i64 = r.get(0)?;
        let kind: i64 = r.get(1)?;
        let xattrs: Option<Vec<u8>> = r.get(10)?;
        let xattrs = match xattrs.as_deref() {
            None => Vec::new(),
            Some(bytes) => decode_xattrs(bytes)
                .ok_or_else(|| damaged(package, format!("inode #{id}: malformed xattrs")))?,
        };
        let kind = match InodeType::from_i64(kind) {
            Some(InodeType::Dir) => InodeKind::Dir,
            Some(InodeType::File) => {
                let hash: Option<Vec<u8>> = r.get(7)?;
                let blob: Option<i64> = r.get(8)?;
                let (Some(hash), Some(blob)) = (hash.as_deref().and_then(Hash::from_slice), blob)
                else {
                    return Err(damaged(package, format!("file inode #{id} has no content")));
                };
                contents.push((hash, blob));
                InodeKind::File {
                    size: r.get::<_, i64>(5)? as u64,
                    content: Some(hash),
                }
            }
            Some(InodeType::Symlink) => InodeKind::Symlink {
                target: r.get::<_, Option<Vec<u8>>>(9)?.unwrap_or_default(),
            },
            None => {
                return Err(damaged(
                    package,
                    format!("inode #{id}: unknown kind {kind}"),
                ));
            }
        };
        let inode = Inode {
            kind,
            mode: r.get(2)?,
            uid: r.get(3)?,
            gid: r.get(4)?,
            mtime: r.get(6)?,
            xattrs,
        };
        // The root is inode 0 of a tree.
        if id == root {
            pending.insert(0, (id, inode));
        } else {
            pending.push((id, inode));
        }
    }
    drop(rows);
    if pending.first().is_none_or(|(i, _)| *i != root) {
        return Err(damaged(package, "its root directory is missing".into()));
    }
    let mut tree = Tree::default();
    let mut index: HashMap<i64, InodeIndex> = HashMap::with_capacity(pending.len());
    for (id, inode) in pending {
        index.insert(id, tree.push_inode(inode));
    }
    let mut entries = conn.prepare_cached(
        "SELECT d.dir, d.name, d.inode FROM dirents d JOIN inodes i ON i.id = d.dir
         WHERE i.package = ?1 ORDER BY d.dir, d.name",
    )?;
    let rows = entries.query_map([package], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, Vec<u8>>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    for row in rows {
        let (dir, name, inode) = row?;
        let (Some(&parent), Some(&child)) = (index.get(&dir), index.get(&inode)) else {
            return Err(damaged(
                package,
                format!(
                    "entry {:?} names an inode of another package",
                    String::from_utf8_lossy(&name)
                ),
            ));
        };
        tree.push_entry(parent, name, child);
    }
    // A cycle or an absurd depth would make any walk endless or costly.
    tree.check_limits()
        .map_err(|limit| damaged(package, format!("its tree is malformed: {limit}")))?;
    Ok(PackageTree { tree, contents })
}
