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
//!
//! Packages come from outside, and a package may hold what EROFS cannot:
//! an attribute EROFS has no prefix for, a value of 65,536 bytes, more
//! attributes than one inode's count holds, a link target of 4096 bytes.
//! [`fit`] leaves those out of the image (one warning each, see
//! [`LeftOut`]) rather than fail it, so that no package can stop the
//! kernel view of every other; the writer refuses them all the same, should
//! anything reach it unfitted.

pub mod erofs;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use crate::attr::{Entry, Kind, Listing};
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
    /// The content (catalog blob id) of a regular file.
    fn content_blob(&self, ino: u64) -> Result<Option<i64>>;
    /// The contents of the files shown that `decoded` holds a whole copy
    /// of, by blob id.
    fn copies(&self, decoded: &DecodedCopies<'_>) -> Result<Copies>;
    /// The entries of directory `ino` but `.` and `..`, described.
    fn entries(&self, ino: u64) -> Result<Vec<Described>> {
        described_one_by_one(self, ino)
    }
}

/// A directory entry with what an image holds of it besides its
/// attributes.
struct Described {
    entry: Entry,
    /// Extended attributes as `getxattr` answers them, in `listxattr`'s
    /// order.
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// A symbolic link's target.
    target: Option<Vec<u8>>,
    /// A regular file's content (catalog blob id; `None` when empty).
    blob: Option<i64>,
}

/// The entries of directory `ino` of `served` but `.` and `..`, from its
/// listing and one call per entry for the rest.
fn described_one_by_one<S: Served + ?Sized>(served: &S, ino: u64) -> Result<Vec<Described>> {
    let listing = served.list(ino)?;
    let mut out = Vec::with_capacity(listing.entries.len());
    for entry in &listing.entries {
        if entry.name == b"." || entry.name == b".." {
            continue;
        }
        let ino = entry.attr.ino;
        let (target, blob) = match entry.attr.kind {
            Kind::Symlink => (Some(served.readlink(ino)?), None),
            Kind::File => (None, served.content_blob(ino)?),
            Kind::Dir => (None, None),
        };
        out.push(Described {
            entry: entry.clone(),
            xattrs: served.xattrs(ino)?,
            target,
            blob,
        });
    }
    Ok(out)
}

/// Extended attributes of a catalog row as the view's `listxattr` and
/// `getxattr` answer them: every name listed, each with the first value
/// stored under it.
fn as_answered(stored: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let unique = stored
        .iter()
        .enumerate()
        .all(|(i, (name, _))| stored[..i].iter().all(|(n, _)| n != name));
    if unique {
        return stored;
    }
    stored
        .iter()
        .map(|(name, _)| {
            let first = stored.iter().find(|(n, _)| n == name).map(|(_, v)| v);
            (name.clone(), first.cloned().unwrap_or_default())
        })
        .collect()
}

/// Where a main image looks for decoded copies: the store's directory of
/// them, and the smallest file it looks for one of.
#[derive(Clone, Copy, Debug)]
pub struct DecodedCopies<'a> {
    /// `STORE/decoded`.
    pub dir: &'a Path,
    /// Files smaller than this are read through the FUSE mount, copy or
    /// not: a prune may remove their copies.
    pub min_size: u64,
}

/// Decoded copies a walk redirects to: the content hash (the copy's name)
/// of each blob that has one.
type Copies = HashMap<i64, nexus_store::Hash>;

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
    fn content_blob(&self, ino: u64) -> Result<Option<i64>> {
        View::content_blob(self, ino)
    }
    fn entries(&self, ino: u64) -> Result<Vec<Described>> {
        // A package directory's rows hold everything: one query, and
        // nothing kept in the caches the transports' requests use (a walk
        // of every directory would only push out what they use, and leave
        // its memory in this thread's allocator).
        let Some(rows) = self.package_entries_unkept(ino)? else {
            return described_one_by_one(self, ino);
        };
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let attr = crate::attr::Attr::of_row(&row.inode)?;
            let inode = row.inode;
            let target = match inode.kind {
                nexus_store::tree::InodeType::Symlink => inode.target,
                _ => None,
            };
            let blob = match inode.kind {
                nexus_store::tree::InodeType::File => inode.blob,
                _ => None,
            };
            out.push(Described {
                entry: Entry {
                    name: row.name,
                    attr,
                    immutable: true,
                },
                xattrs: as_answered(inode.xattrs),
                target,
                blob,
            });
        }
        Ok(out)
    }
    fn copies(&self, decoded: &DecodedCopies<'_>) -> Result<Copies> {
        // The names first: without copies, nothing else is asked. Then the
        // contents of the generation among them, and a stat of each one: a
        // query per file, or a stat per content, would cost more than the
        // image.
        let dir = decoded.dir;
        let names = nexus_store::decoded::names(dir)?;
        if names.is_empty() {
            return Ok(Copies::new());
        }
        Ok(self
            .decoded_candidates(decoded.min_size, &names)?
            .into_iter()
            .filter(|(_, hash, size)| nexus_store::decoded::has_copy(dir, hash, *size))
            .map(|(blob, hash, _)| (blob, hash))
            .collect())
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
    fn content_blob(&self, _ino: u64) -> Result<Option<i64>> {
        Ok(None)
    }
    fn copies(&self, _decoded: &DecodedCopies<'_>) -> Result<Copies> {
        Ok(Copies::new())
    }
}

/// The tree of the generation `view` shows, for [`erofs::write`]: every
/// non-empty regular file redirected to its own path in the data layer,
/// or, when `decoded` (the store's decoded copies, stacked as the first
/// data-only layer) holds a whole copy of its contents and it is at least
/// `decoded.min_size` bytes, to that copy.
/// What the image cannot hold is left out and warned of ([`fit`]).
pub fn main_tree(view: &View, decoded: Option<DecodedCopies<'_>>) -> Result<Tree> {
    walk(view, decoded)
}

/// The tree of the Index's generation, for [`erofs::write`]: directories
/// and symbolic links only, those the image cannot hold left out ([`fit`]).
pub fn index_tree(index: &Index) -> Result<Tree> {
    walk(index, None)
}

/// The image of the generation `view` shows (see [`main_tree`]).
pub fn main_image(
    view: &View,
    decoded: Option<DecodedCopies<'_>>,
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

/// Something [`fit`] left out of an image because EROFS cannot hold it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeftOut {
    /// A path of the node concerned, from the image's root
    /// (`/App/Version/…`).
    pub path: Vec<u8>,
    /// The extended attribute left out, or `None` when it is the entry
    /// (the name `path` ends with) that is.
    pub xattr: Option<Vec<u8>>,
    /// Why EROFS cannot hold it.
    pub why: ImageError,
}

impl fmt::Display for LeftOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Escaped: names are a package's, and could hold line breaks.
        let path = self.path.escape_ascii();
        match &self.xattr {
            Some(name) => write!(
                f,
                "{path}: left its extended attribute {} out of the kernel view: {}",
                name.escape_ascii(),
                self.why
            ),
            None => write!(f, "{path}: left out of the kernel view: {}", self.why),
        }
    }
}

/// How many of the things [`fit`] leaves out are warned of one by one, per
/// image: a hostile package may hold millions.
const WARNINGS: usize = 32;

/// Leaves out of `tree` what an EROFS image cannot hold, so that
/// [`erofs::write`] takes it, and says what it left out:
///
/// - an extended attribute whose name has no EROFS prefix (or over 255
///   bytes after it) or whose value is over 65,535 bytes: dropped;
/// - a node's extended attributes beyond [`erofs::XATTR_ROOM`] bytes: the
///   view's own (`trusted.*`, never a package's: see [`kept`]) are kept
///   first, then the package's in their order while they fit, each that
///   does not being dropped;
/// - a node that cannot be shown as it is: a symbolic link whose target is
///   empty, holds NUL or is 4096 bytes or longer (cutting it would point
///   it elsewhere), a file whose own redirect cannot be held (it would
///   read as zeros): every entry naming it is left out, so the path is
///   absent from the kernel view rather than wrong;
/// - an entry whose name cannot be a directory entry (over 255 bytes).
///
/// Everything else is left as it is. Inconsistencies of the tree itself
/// (duplicate names, missing nodes) stay for the writer to refuse.
pub fn fit(tree: &mut Tree) -> Vec<LeftOut> {
    // What is left out, paths found only if anything is: (node, attribute
    // name, why) and (directory, entry index, why).
    let mut dropped: Vec<(usize, Vec<u8>, ImageError)> = Vec::new();
    let mut cut: Vec<(usize, usize, ImageError)> = Vec::new();
    // Why each node left out is.
    let mut gone: HashMap<usize, ImageError> = HashMap::new();
    for (i, node) in tree.nodes.iter_mut().enumerate() {
        if let Body::Symlink(target) = &node.body
            && let Err(e) = erofs::check_target(target)
        {
            gone.insert(i, e);
            continue;
        }
        let (own, package): (Vec<_>, Vec<_>) = std::mem::take(&mut node.xattrs)
            .into_iter()
            .partition(|(name, _)| !kept(name));
        let mut used = 0usize;
        for (name, value) in &own {
            match erofs::xattr_len(name, value) {
                Ok(len) => used += len,
                Err(e) => {
                    gone.insert(i, e);
                }
            }
        }
        if !gone.contains_key(&i) && used > erofs::XATTR_ROOM {
            gone.insert(i, ImageError::XattrsTooLarge { len: used });
        }
        if gone.contains_key(&i) {
            continue;
        }
        for (name, value) in package {
            let why = match erofs::xattr_len(&name, &value) {
                Ok(len) if used + len <= erofs::XATTR_ROOM => {
                    used += len;
                    node.xattrs.push((name, value));
                    continue;
                }
                Ok(len) => ImageError::XattrsTooLarge { len: used + len },
                Err(e) => e,
            };
            dropped.push((i, name, why));
        }
        node.xattrs.extend(own);
    }
    for (d, node) in tree.nodes.iter().enumerate() {
        let Body::Dir { entries, .. } = &node.body else {
            continue;
        };
        for (k, (name, child)) in entries.iter().enumerate() {
            let why = match erofs::check_name(name) {
                Err(e) => e,
                Ok(()) => match gone.get(child) {
                    Some(e) => e.clone(),
                    None => continue,
                },
            };
            cut.push((d, k, why));
        }
    }
    if dropped.is_empty() && cut.is_empty() {
        return Vec::new();
    }
    let parents = first_parents(tree);
    let mut left = Vec::with_capacity(dropped.len() + cut.len());
    for (i, name, why) in dropped {
        let mut path = path_of(tree, &parents, i);
        if path.is_empty() {
            path.push(b'/');
        }
        left.push(LeftOut {
            path,
            xattr: Some(name),
            why,
        });
    }
    for (d, k, why) in &cut {
        let mut path = path_of(tree, &parents, *d);
        if let Body::Dir { entries, .. } = &tree.nodes[*d].body {
            path.push(b'/');
            path.extend_from_slice(&entries[*k].0);
        }
        left.push(LeftOut {
            path,
            xattr: None,
            why: why.clone(),
        });
    }
    // `cut` is in directory and entry order.
    let mut cut = cut.iter().map(|(d, k, _)| (*d, *k)).peekable();
    for (d, node) in tree.nodes.iter_mut().enumerate() {
        let Body::Dir { entries, .. } = &mut node.body else {
            continue;
        };
        let mut k = 0;
        entries.retain(|_| {
            let keep = cut.next_if_eq(&(d, k)).is_none();
            k += 1;
            keep
        });
    }
    left
}

/// For each node, the directory and entry index first met naming it,
/// depth first from the root (`None` for the root and nodes no entry
/// reaches).
fn first_parents(tree: &Tree) -> Vec<Option<(usize, usize)>> {
    let mut parents = vec![None; tree.nodes.len()];
    let mut seen = vec![false; tree.nodes.len()];
    let mut pending = Vec::new();
    if let Some(root) = seen.first_mut() {
        *root = true;
        pending.push(0usize);
    }
    while let Some(d) = pending.pop() {
        let Body::Dir { entries, .. } = &tree.nodes[d].body else {
            continue;
        };
        for (k, (_, child)) in entries.iter().enumerate() {
            if seen.get(*child) == Some(&false) {
                seen[*child] = true;
                parents[*child] = Some((d, k));
                pending.push(*child);
            }
        }
    }
    parents
}

/// The path of node `i` from the root by `parents` (empty for the root).
fn path_of(tree: &Tree, parents: &[Option<(usize, usize)>], i: usize) -> Vec<u8> {
    let mut names = Vec::new();
    let mut at = i;
    while let Some((d, k)) = parents[at] {
        if let Body::Dir { entries, .. } = &tree.nodes[d].body {
            names.push(&entries[k].0[..]);
        }
        at = d;
    }
    let mut path = Vec::new();
    for name in names.iter().rev() {
        path.push(b'/');
        path.extend_from_slice(name);
    }
    path
}

/// Where the data-only layers hold the contents of a regular file of
/// content `blob` at `path`: its decoded copy (`/HASH`, found in the first layer) if
/// `copies` has one, else its own path, which overlayfs looks up in the
/// FUSE mount (the first layer has no directory, so a path of several
/// names is never found there, even under an App named like a copy).
fn redirect(blob: Option<i64>, path: Vec<u8>, copies: &Copies) -> Vec<u8> {
    if let Some(hash) = blob.and_then(|blob| copies.get(&blob)) {
        return format!("/{}", nexus_store::decoded::name(hash)).into_bytes();
    }
    path
}

fn walk(served: &impl Served, decoded: Option<DecodedCopies<'_>>) -> Result<Tree> {
    let copies = match decoded {
        Some(decoded) => served.copies(&decoded)?,
        None => Copies::new(),
    };
    walk_redirecting(served, &copies)
}

/// The tree of `served`, its files with a copy in `copies` redirected to it.
fn walk_redirecting(served: &impl Served, copies: &Copies) -> Result<Tree> {
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
    while let Some((ino, index, path)) = pending.pop() {
        let mut entries = Vec::new();
        for described in served.entries(ino)? {
            let Described {
                entry: Entry { name, attr, .. },
                xattrs,
                target,
                blob,
            } = described;
            if let Some(&known) = seen.get(&attr.ino) {
                if attr.kind != Kind::Dir {
                    entries.push((name, known));
                }
                continue;
            }
            let mut child_path = Vec::with_capacity(path.len() + 1 + name.len());
            child_path.extend_from_slice(&path);
            child_path.push(b'/');
            child_path.extend_from_slice(&name);
            let node_index = tree.nodes.len();
            let mut xattrs: Vec<_> = xattrs.into_iter().filter(|(n, _)| kept(n)).collect();
            let body = match attr.kind {
                Kind::Dir => {
                    pending.push((attr.ino, node_index, child_path));
                    Body::Dir {
                        parent: index,
                        entries: Vec::new(),
                    }
                }
                Kind::Symlink => Body::Symlink(target.ok_or(crate::error::ViewError::WrongKind)?),
                Kind::File => {
                    if attr.size > 0 && served.redirects() {
                        let target = redirect(blob, child_path, copies);
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
            entries.push((name, node_index));
        }
        if let Body::Dir { entries: e, .. } = &mut tree.nodes[index].body {
            *e = entries;
        }
    }
    let left = fit(&mut tree);
    for one in left.iter().take(WARNINGS) {
        tracing::warn!("{one}");
    }
    if left.len() > WARNINGS {
        tracing::warn!(
            "{} more names or extended attributes left out of the kernel view",
            left.len() - WARNINGS
        );
    }
    Ok(tree)
}

#[cfg(test)]
mod tests;
