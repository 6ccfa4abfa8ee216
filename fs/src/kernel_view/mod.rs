//! The kernel view: a generation's metadata as an EROFS image the kernel
//! mounts itself, so that names, attributes, listings, symbolic links and
//! `ioctl`s never reach a daemon, with file contents still served by the
//! FUSE mount of the same [`View`] (composefs's split).
//!
//! The main tree becomes an image in which every non-empty regular file is
//! a hole carrying overlayfs's `trusted.overlay.metacopy` and an absolute
//! `trusted.overlay.redirect` to its own path (`/App/Version/…`); an
//! overlayfs whose only layers are that image and, as its data-only layer,
//! the FUSE mount serves the tree: overlayfs answers everything but reads
//! from the image, and opens the FUSE file for the contents. The Index
//! holds only directories and symbolic links, so its image is mounted as it
//! is.
//!
//! Package files never speak to overlayfs: their own `trusted.*` extended
//! attributes are left out of the image (a package could otherwise redirect
//! its file to another App's, or hide a directory's contents with
//! `trusted.overlay.opaque`). The image is built from the view's answers,
//! through the same checks every transport's requests go through.

pub mod erofs;

use std::collections::HashMap;
use std::path::Path;

use crate::attr::{Kind, Listing};
use crate::error::Result;
use crate::index::Index;
use crate::view::View;
pub use erofs::{Body, ImageError, Node, Tree};

/// The extended attribute marking a file whose contents live in a lower
/// layer.
pub const METACOPY_XATTR: &[u8] = b"trusted.overlay.metacopy";
/// The extended attribute naming where in the data-only layer a file's
/// contents are.
pub const REDIRECT_XATTR: &[u8] = b"trusted.overlay.redirect";

/// What the walk needs of a tree served by inode numbers.
trait Served {
    fn root(&self) -> u64;
    fn list(&self, ino: u64) -> Result<std::sync::Arc<Listing>>;
    fn readlink(&self, ino: u64) -> Result<Vec<u8>>;
    /// Extended attributes, full names and values.
    fn xattrs(&self, ino: u64) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// Whether regular files get redirects (the main tree) or are refused
    /// (the Index has none).
    fn redirects(&self) -> bool;
    /// The content hash of a regular file.
    fn content_hash(&self, ino: u64) -> Result<Option<nexus_store::Hash>>;
}

impl Served for View {
    fn root(&self) -> u64 {
        crate::ino::ROOT
    }
    fn list(&self, ino: u64) -> Result<std::sync::Arc<Listing>> {
        View::list(self, ino)
    }
    fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        View::readlink(self, ino)
    }
    fn xattrs(&self, ino: u64) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let names = self.listxattr(ino)?;
        let mut out = Vec::new();
        for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            out.push((name.to_vec(), self.getxattr(ino, name)?));
        }
        Ok(out)
    }
    fn redirects(&self) -> bool {
        true
    }
    fn content_hash(&self, ino: u64) -> Result<Option<nexus_store::Hash>> {
        View::content_hash(self, ino)
    }
}

impl Served for Index {
    fn root(&self) -> u64 {
        crate::index::ROOT
    }
    fn list(&self, ino: u64) -> Result<std::sync::Arc<Listing>> {
        Index::list(self, ino)
    }
    fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        Index::readlink(self, ino)
    }
    fn xattrs(&self, _ino: u64) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(Vec::new())
    }
    fn redirects(&self) -> bool {
        false
    }
    fn content_hash(&self, _ino: u64) -> Result<Option<nexus_store::Hash>> {
        Ok(None)
    }
}

/// The tree of the generation `view` shows, for [`erofs::write`]: every
/// non-empty regular file redirected to its own path in the data layer,
/// or, when `decoded` (the store's decoded copies, stacked as the first
/// data-only layer) holds a whole copy of its contents, to that copy.
pub fn main_tree(view: &View, decoded: Option<&Path>) -> Result<Tree> {
    walk(view, decoded)
}

/// The tree of the Index's generation, for [`erofs::write`]: directories
/// and symbolic links only.
pub fn index_tree(index: &Index) -> Result<Tree> {
    walk(index, None)
}

/// The image of the generation `view` shows (see [`main_tree`]).
pub fn main_image(
    view: &View,
    decoded: Option<&Path>,
) -> std::result::Result<Vec<u8>, KernelViewError> {
    Ok(erofs::write(&main_tree(view, decoded)?)?)
}

/// The image of the Index's generation.
pub fn index_image(index: &Index) -> std::result::Result<Vec<u8>, KernelViewError> {
    Ok(erofs::write(&index_tree(index)?)?)
}

/// Why a kernel view's image could not be made.
#[derive(Debug, thiserror::Error)]
pub enum KernelViewError {
    /// The view could not answer.
    #[error(transparent)]
    View(#[from] crate::error::ViewError),
    /// The tree does not fit the image format.
    #[error(transparent)]
    Image(#[from] ImageError),
}

/// Keeps a package's extended attribute unless overlayfs would read it.
fn kept(name: &[u8]) -> bool {
    !name.starts_with(b"trusted.")
}

/// Where the data-only layers hold the contents of a regular file of
/// `size` bytes at `path`: its decoded copy (`/HASH`, found in the first
/// layer) if `decoded` holds a whole one, else its own path, which
/// overlayfs looks up in the FUSE mount (the first layer has no directory,
/// so a path of several names is never found there, even under an App
/// named like a copy).
fn redirect(
    served: &impl Served,
    ino: u64,
    size: u64,
    path: Vec<u8>,
    decoded: Option<&Path>,
) -> Result<Vec<u8>> {
    if let Some(dir) = decoded
        && size >= nexus_store::decoded::MIN_SIZE
        && let Some(hash) = served.content_hash(ino)?
        && nexus_store::decoded::has_copy(dir, &hash, size)
    {
        return Ok(format!("/{}", nexus_store::decoded::name(&hash)).into_bytes());
    }
    Ok(path)
}

fn walk(served: &impl Served, decoded: Option<&Path>) -> Result<Tree> {
    let root = served.root();
    let listing = served.list(root)?;
    let root_attr = &listing.entries[0].attr;
    let mut tree = Tree::default();
    tree.nodes.push(Node {
        perm: root_attr.perm,
        uid: root_attr.uid,
        gid: root_attr.gid,
        mtime: root_attr.mtime,
        nlink: root_attr.nlink,
        xattrs: Vec::new(),
        body: Body::Dir {
            parent: 0,
            entries: Vec::new(),
        },
    });
    // Node index of each inode number met, so that a file with several
    // names is one inode.
    let mut seen: HashMap<u64, usize> = HashMap::new();
    seen.insert(root, 0);
    // Directories to list: (inode number, node index, path from the root).
    let mut pending: Vec<(u64, usize, Vec<u8>)> = vec![(root, 0, Vec::new())];
    let mut first = Some(listing);
    while let Some((ino, index, path)) = pending.pop() {
        let listing = match first.take() {
            Some(listing) => listing,
            None => served.list(ino)?,
        };
        let mut entries = Vec::new();
        for entry in &listing.entries {
            if entry.name == b"." || entry.name == b".." {
                continue;
            }
            let attr = &entry.attr;
            let mut child_path = path.clone();
            child_path.push(b'/');
            child_path.extend_from_slice(&entry.name);
            if let Some(&known) = seen.get(&attr.ino) {
                if attr.kind != Kind::Dir {
                    entries.push((entry.name.clone(), known));
                }
                continue;
            }
            let node_index = tree.nodes.len();
            let mut xattrs: Vec<_> = served
                .xattrs(attr.ino)?
                .into_iter()
                .filter(|(name, _)| kept(name))
                .collect();
            let body = match attr.kind {
                Kind::Dir => {
                    pending.push((attr.ino, node_index, child_path));
                    Body::Dir {
                        parent: index,
                        entries: Vec::new(),
                    }
                }
                Kind::Symlink => Body::Symlink(served.readlink(attr.ino)?),
                Kind::File => {
                    if attr.size > 0 && served.redirects() {
                        let target = redirect(served, attr.ino, attr.size, child_path, decoded)?;
                        xattrs.push((METACOPY_XATTR.to_vec(), Vec::new()));
                        xattrs.push((REDIRECT_XATTR.to_vec(), target));
                    }
                    Body::File { size: attr.size }
                }
            };
            seen.insert(attr.ino, node_index);
            tree.nodes.push(Node {
                perm: attr.perm,
                uid: attr.uid,
                gid: attr.gid,
                mtime: attr.mtime,
                nlink: attr.nlink,
                xattrs,
                body,
            });
            entries.push((entry.name.clone(), node_index));
        }
        if let Body::Dir { entries: e, .. } = &mut tree.nodes[index].body {
            *e = entries;
        }
    }
    Ok(tree)
}

#[cfg(test)]
mod tests;
