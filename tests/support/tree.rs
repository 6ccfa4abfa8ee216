//! Snapshots of directory trees and their comparison.
//!
//! A [`Snapshot`] records, for every path below a root (the root itself is the
//! empty path), what `lstat` says plus the symlink target and xattrs. Two
//! trees are "the same" for the store when they have the same relative paths,
//! and for each path the same type, permission bits (`& 0o7777`), owner,
//! group, mtime (seconds), size, symlink target, file bytes and xattrs, and
//! the same hard-link structure: paths sharing an inode in one tree share one
//! in the other, and vice versa.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::nip::FileEntry;

/// The type of a tree entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Directory.
    Dir,
    /// Regular file.
    File,
    /// Symbolic link.
    Symlink,
    /// FIFO, socket or device node.
    Special,
}

impl Kind {
    /// The spelling `nip files --json` uses.
    pub fn json_name(self) -> &'static str {
        match self {
            Kind::Dir => "dir",
            Kind::File => "file",
            Kind::Symlink => "symlink",
            Kind::Special => "special",
        }
    }
}

/// What is recorded about one path.
#[derive(Clone, Debug)]
pub struct Node {
    /// Type.
    pub kind: Kind,
    /// `st_mode & 0o7777`.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// `st_mtime` (seconds).
    pub mtime: i64,
    /// `st_size`.
    pub size: u64,
    /// `(st_dev, st_ino)`, to find hard links.
    pub dev_ino: (u64, u64),
    /// Symlink target, byte-exact.
    pub target: Option<OsString>,
    /// Extended attributes, byte-exact.
    pub xattrs: BTreeMap<OsString, Vec<u8>>,
}

/// Every path below a root, keyed by relative path (root = empty path).
pub struct Snapshot {
    /// The directory that was walked.
    pub root: PathBuf,
    /// The entries.
    pub nodes: BTreeMap<PathBuf, Node>,
}

fn read_xattrs(path: &Path) -> BTreeMap<OsString, Vec<u8>> {
    let names = match xattr::list(path) {
        Ok(names) => names,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return BTreeMap::new(),
        Err(e) => panic!("listxattr {}: {e}", path.display()),
    };
    names
        .filter_map(|name| {
            let value = xattr::get(path, &name)
                .unwrap_or_else(|e| panic!("getxattr {} {name:?}: {e}", path.display()))?;
            Some((name, value))
        })
        .collect()
}

/// Walks `root` without following symlinks.
pub fn snapshot(root: &Path) -> Snapshot {
    let mut nodes = BTreeMap::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let path = if rel.as_os_str().is_empty() {
            root.to_path_buf()
        } else {
            root.join(&rel)
        };
        let meta =
            fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_file() {
            Kind::File
        } else if ft.is_symlink() {
            Kind::Symlink
        } else {
            assert!(
                ft.is_fifo() || ft.is_socket() || ft.is_block_device() || ft.is_char_device(),
                "unknown file type at {}",
                path.display()
            );
            Kind::Special
        };
        let target = (kind == Kind::Symlink).then(|| {
            fs::read_link(&path)
                .unwrap_or_else(|e| panic!("readlink {}: {e}", path.display()))
                .into_os_string()
        });
        if kind == Kind::Dir {
            for e in
                fs::read_dir(&path).unwrap_or_else(|e| panic!("readdir {}: {e}", path.display()))
            {
                let e = e.unwrap_or_else(|e| panic!("readdir {}: {e}", path.display()));
                pending.push(rel.join(e.file_name()));
            }
        }
        nodes.insert(
            rel,
            Node {
                kind,
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
                mtime: meta.mtime(),
                size: meta.len(),
                dev_ino: (meta.dev(), meta.ino()),
                target,
                xattrs: read_xattrs(&path),
            },
        );
    }
    Snapshot {
        root: root.to_path_buf(),
        nodes,
    }
}

impl Snapshot {
    /// Absolute path of a relative one.
    pub fn abs(&self, rel: &Path) -> PathBuf {
        if rel.as_os_str().is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        }
    }

    /// Relative paths of the regular files.
    pub fn files(&self) -> impl Iterator<Item = (&PathBuf, &Node)> {
        self.nodes.iter().filter(|(_, n)| n.kind == Kind::File)
    }

    /// For every regular file, the set of paths in this tree sharing its
    /// inode (a single-element set when it has no other name here).
    pub fn link_groups(&self) -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
        let mut by_inode: HashMap<(u64, u64), BTreeSet<PathBuf>> = HashMap::new();
        for (rel, node) in self.files() {
            by_inode
                .entry(node.dev_ino)
                .or_default()
                .insert(rel.clone());
        }
        self.files()
            .map(|(rel, node)| (rel.clone(), by_inode[&node.dev_ino].clone()))
            .collect()
    }

    /// Number of hard-link groups with more than one path.
    pub fn hardlink_groups(&self) -> usize {
        let groups: BTreeSet<BTreeSet<PathBuf>> = self
            .link_groups()
            .into_values()
            .filter(|g| g.len() > 1)
            .collect();
        groups.len()
    }

    /// Total size of the regular files, each inode counted once.
    pub fn content_bytes(&self) -> u64 {
        let mut seen = BTreeSet::new();
        self.files()
            .filter(|(_, n)| seen.insert(n.dev_ino))
            .map(|(_, n)| n.size)
            .sum()
    }
}

/// Displays a relative path, the root as `.`.
fn show(rel: &Path) -> String {
    if rel.as_os_str().is_empty() {
        ".".into()
    } else {
        format!("{:?}", rel)
    }
}

/// Displays xattrs as `{name=hex, ...}`.
fn show_xattrs(xattrs: &BTreeMap<OsString, Vec<u8>>) -> String {
    let items: Vec<String> = xattrs
        .iter()
        .map(|(k, v)| format!("{}={}", k.to_string_lossy(), hex(v)))
        .collect();
    format!("{{{}}}", items.join(", "))
}

/// Compares two files' bytes; `None` if identical, else where they differ.
fn content_difference(a: &Path, b: &Path) -> Option<String> {
    let open = |p: &Path| File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    let (mut fa, mut fb) = (open(a), open(b));
    let mut ba = vec![0u8; 1 << 20];
    let mut bb = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    loop {
        let na = read_full(&mut fa, &mut ba, a);
        let nb = read_full(&mut fb, &mut bb, b);
        if let Some(i) = ba[..na.min(nb)]
            .iter()
            .zip(&bb[..na.min(nb)])
            .position(|(x, y)| x != y)
        {
            return Some(format!("bytes differ at offset {}", offset + i as u64));
        }
        if na != nb {
            return Some(format!(
                "lengths differ (one ends at {})",
                offset + na.min(nb) as u64
            ));
        }
        if na == 0 {
            return None;
        }
        offset += na as u64;
    }
}

fn read_full(f: &mut File, buf: &mut [u8], path: &Path) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read {}: {e}", path.display()),
        }
    }
    n
}

/// Lists every difference between the trees at `expected` and `actual`
/// (empty when they are the same in the sense of this module).
pub fn differences(expected: &Path, actual: &Path) -> Vec<String> {
    let e = snapshot(expected);
    let a = snapshot(actual);
    let mut diffs = Vec::new();
    for rel in e.nodes.keys().filter(|k| !a.nodes.contains_key(*k)) {
        diffs.push(format!("{}: missing", show(rel)));
    }
    for rel in a.nodes.keys().filter(|k| !e.nodes.contains_key(*k)) {
        diffs.push(format!("{}: unexpected extra path", show(rel)));
    }
    for (rel, en) in &e.nodes {
        let Some(an) = a.nodes.get(rel) else { continue };
        let mut d = Vec::new();
        if en.kind != an.kind {
            diffs.push(format!(
                "{}: type {:?}, expected {:?}",
                show(rel),
                an.kind,
                en.kind
            ));
            continue;
        }
        if en.mode != an.mode {
            d.push(format!("mode {:04o}, expected {:04o}", an.mode, en.mode));
        }
        if (en.uid, en.gid) != (an.uid, an.gid) {
            d.push(format!(
                "owner {}:{}, expected {}:{}",
                an.uid, an.gid, en.uid, en.gid
            ));
        }
        if en.mtime != an.mtime {
            d.push(format!("mtime {}, expected {}", an.mtime, en.mtime));
        }
        if en.kind == Kind::File && en.size != an.size {
            d.push(format!("size {}, expected {}", an.size, en.size));
        }
        if en.target != an.target {
            d.push(format!(
                "symlink target {:?}, expected {:?}",
                an.target, en.target
            ));
        }
        if en.xattrs != an.xattrs {
            d.push(format!(
                "xattrs {}, expected {}",
                show_xattrs(&an.xattrs),
                show_xattrs(&en.xattrs)
            ));
        }
        if en.kind == Kind::File
            && en.size == an.size
            && let Some(c) = content_difference(&e.abs(rel), &a.abs(rel))
        {
            d.push(c);
        }
        if !d.is_empty() {
            diffs.push(format!("{}: {}", show(rel), d.join("; ")));
        }
    }
    let (eg, ag) = (e.link_groups(), a.link_groups());
    let mut reported = BTreeSet::new();
    for (rel, group) in &eg {
        if let Some(actual_group) = ag.get(rel)
            && actual_group != group
            && reported.insert(group.clone())
        {
            diffs.push(format!(
                "{}: hard-linked with {:?}, expected with {:?}",
                show(rel),
                actual_group,
                group
            ));
        }
    }
    diffs
}

/// Fails the test, listing the differences, unless the trees are the same.
pub fn assert_same_tree(expected: &Path, actual: &Path, context: &str) {
    let diffs = differences(expected, actual);
    fail_on_differences(
        &format!(
            "{context}: {} differs from the source {}",
            actual.display(),
            expected.display()
        ),
        &diffs,
    );
}

/// Panics with `what` and the first 60 differences, if there are any.
fn fail_on_differences(what: &str, diffs: &[String]) {
    if diffs.is_empty() {
        return;
    }
    let mut msg = format!("{what} in {} ways:\n", diffs.len());
    for d in diffs.iter().take(60) {
        let _ = writeln!(msg, "  {d}");
    }
    if diffs.len() > 60 {
        let _ = writeln!(msg, "  ... and {} more", diffs.len() - 60);
    }
    panic!("{msg}");
}

/// BLAKE3 of a file's content, hex.
pub fn file_hash(path: &Path) -> String {
    let mut h = blake3::Hasher::new();
    h.update_reader(File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display())))
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    h.finalize().to_hex().to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lists every disagreement between `nip files --json` output and the source
/// tree it was added from.
///
/// JSON paths are strings, so a source path that is not UTF-8 cannot be
/// matched by name: such paths are only counted (the listing must have exactly
/// as many entries it cannot match as the source has non-UTF-8 paths).
pub fn files_json_differences(source: &Snapshot, listing: &[FileEntry]) -> Vec<String> {
    let mut diffs = Vec::new();
    let mut by_path: BTreeMap<PathBuf, &FileEntry> = BTreeMap::new();
    let mut unmatched = 0usize;
    for entry in listing {
        let rel = PathBuf::from(&entry.path);
        if source.nodes.contains_key(&rel) {
            if by_path.insert(rel, entry).is_some() {
                diffs.push(format!("{:?} is listed twice", entry.path));
            }
        } else {
            unmatched += 1;
        }
    }
    let non_utf8 = source
        .nodes
        .keys()
        .filter(|p| std::str::from_utf8(p.as_os_str().as_bytes()).is_err())
        .count();
    if unmatched != non_utf8 {
        let extra: Vec<&str> = listing
            .iter()
            .filter(|e| !source.nodes.contains_key(Path::new(&e.path)))
            .map(|e| e.path.as_str())
            .collect();
        diffs.push(format!(
            "{unmatched} listed paths are not in the source (expected {non_utf8}, the number of non-UTF-8 source paths): {extra:?}"
        ));
    }
    for (rel, node) in &source.nodes {
        if std::str::from_utf8(rel.as_os_str().as_bytes()).is_err() {
            continue;
        }
        let Some(entry) = by_path.get(rel) else {
            diffs.push(format!("{}: not listed", show(rel)));
            continue;
        };
        let mut d = Vec::new();
        if entry.kind != node.kind.json_name() {
            d.push(format!(
                "type {:?}, expected {:?}",
                entry.kind,
                node.kind.json_name()
            ));
        }
        if entry.mode != node.mode {
            d.push(format!(
                "mode {:04o}, expected {:04o}",
                entry.mode, node.mode
            ));
        }
        if (entry.uid, entry.gid) != (node.uid, node.gid) {
            d.push(format!(
                "owner {}:{}, expected {}:{}",
                entry.uid, entry.gid, node.uid, node.gid
            ));
        }
        if entry.mtime != node.mtime {
            d.push(format!("mtime {}, expected {}", entry.mtime, node.mtime));
        }
        match node.kind {
            Kind::File => {
                if entry.size != node.size {
                    d.push(format!("size {}, expected {}", entry.size, node.size));
                }
                let expected = file_hash(&source.abs(rel));
                if entry.hash.as_deref() != Some(expected.as_str()) {
                    d.push(format!("hash {:?}, expected {expected}", entry.hash));
                }
            }
            Kind::Symlink => {
                let expected = node.target.as_ref().unwrap().to_string_lossy().into_owned();
                if entry.target.as_deref() != Some(expected.as_str()) {
                    d.push(format!("target {:?}, expected {expected:?}", entry.target));
                }
            }
            _ => {}
        }
        let expected_xattrs: BTreeMap<String, String> = node
            .xattrs
            .iter()
            .map(|(k, v)| (k.to_string_lossy().into_owned(), hex(v)))
            .collect();
        if entry.xattrs != expected_xattrs {
            d.push(format!(
                "xattrs {:?}, expected {:?}",
                entry.xattrs, expected_xattrs
            ));
        }
        if !d.is_empty() {
            diffs.push(format!("{}: {}", show(rel), d.join("; ")));
        }
    }
    // Hard links: same inode number in the listing exactly when the source
    // paths share an inode, and nlink = number of names in the package.
    let mut listed_groups: BTreeMap<u64, BTreeSet<PathBuf>> = BTreeMap::new();
    for (rel, entry) in &by_path {
        if entry.kind == "file" {
            listed_groups
                .entry(entry.inode)
                .or_default()
                .insert(rel.clone());
        }
    }
    let mut reported = BTreeSet::new();
    for (rel, group) in source.link_groups() {
        let Some(entry) = by_path.get(&rel) else {
            continue;
        };
        let listed = listed_groups.get(&entry.inode).cloned().unwrap_or_default();
        let group_utf8: BTreeSet<PathBuf> = group
            .iter()
            .filter(|p| std::str::from_utf8(p.as_os_str().as_bytes()).is_ok())
            .cloned()
            .collect();
        if listed != group_utf8 && reported.insert(group.clone()) {
            diffs.push(format!(
                "{}: listed with the same inode as {listed:?}, expected {group_utf8:?}",
                show(&rel)
            ));
        }
        if entry.nlink != group.len() as u64 {
            diffs.push(format!(
                "{}: nlink {}, expected {}",
                show(&rel),
                entry.nlink,
                group.len()
            ));
        }
    }
    diffs
}

/// Fails the test unless `nip files --json` agrees with the source tree.
pub fn assert_files_json_match(source: &Snapshot, listing: &[FileEntry], context: &str) {
    let diffs = files_json_differences(source, listing);
    fail_on_differences(
        &format!(
            "{context}: `nip files --json` disagrees with the source {}",
            source.root.display()
        ),
        &diffs,
    );
}
