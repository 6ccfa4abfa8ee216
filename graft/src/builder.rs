//! Builds a package [`Tree`] from archive entries as they stream by.
//!
//! The checks that make a hostile archive harmless live here, once for
//! every format: an entry may not be written through a symlink or a file
//! (it would escape the directory it claims to be in), the same archive
//! path may not appear twice, two entries may not map to one package path
//! unless both are directories (whose first metadata wins: `usr/bin/` and
//! `bin/` of a `.deb` merge), and a hard link must name an earlier regular
//! file. Directories an archive leaves out are created with mode 0755,
//! owner 0:0 and mtime 0.
//!
//! What the builder keeps per entry is bounded by the entry's name, not its
//! path: paths are looked up one component at a time in per-directory
//! maps, archive paths already seen are kept as 32-byte hashes, and the
//! package's depth and total path bytes are limited
//! ([`nexus_store::tree::MAX_DEPTH`], [`nexus_store::tree::MAX_PATH_BYTES`]).
//! An 8.9 KB archive of 3,000 entries under a 2,000-component path took
//! 362 MB and 37 s when every entry's full path and components were kept.

use std::collections::{HashMap, HashSet};

use nexus_store::Hash;
use nexus_store::tree::{
    Inode, InodeIndex, InodeKind, MAX_DEPTH, MAX_PATH_BYTES, MAX_XATTR_BYTES, PathBudget,
    PathLimit, SYMLINK_TARGET_MAX, Tree,
};

use crate::entry::{ArchiveEntry, EntryKind, EntryMeta, Placement, lossy};
use crate::error::{LimitExceeded, Problem};

/// What [`TreeBuilder::add`] did with an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Added {
    /// A new regular file: its content is to be stored and given with
    /// [`TreeBuilder::set_content`].
    File(InodeIndex),
    /// Recorded; nothing more to do.
    Done,
    /// Left out (a special file with `skip_special`).
    Skipped,
}

/// A package tree under construction.
pub struct TreeBuilder {
    tree: Tree,
    /// Each directory's entries by name: package paths are looked up one
    /// component at a time from the root.
    children: HashMap<InodeIndex, HashMap<Vec<u8>, InodeIndex>>,
    /// Archive paths seen: BLAKE3 of the normalised path.
    seen: HashSet<[u8; 32]>,
    /// The package's depth and path bytes so far.
    budget: PathBudget,
    /// Directories whose metadata came from an entry (not implied).
    explicit: HashSet<InodeIndex>,
    skip_special: bool,
    skipped: Vec<String>,
}

fn implied_dir() -> Inode {
    Inode {
        kind: InodeKind::Dir,
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime: 0,
        xattrs: Vec::new(),
    }
}

fn inode(kind: InodeKind, meta: &EntryMeta) -> Inode {
    Inode {
        kind,
        mode: meta.mode & 0o7777,
        uid: meta.uid,
        gid: meta.gid,
        mtime: meta.mtime,
        xattrs: meta.xattrs.clone(),
    }
}

fn join(comps: &[Vec<u8>]) -> Vec<u8> {
    comps.join(&b'/')
}

/// The length of `comps` joined by `/`.
fn joined_len(comps: &[Vec<u8>]) -> usize {
    comps.iter().map(Vec::len).sum::<usize>() + comps.len().saturating_sub(1)
}

/// BLAKE3 of a normalised path: components cannot hold `/` or NUL, so
/// joining them by `/` is unambiguous.
fn path_key(comps: &[Vec<u8>]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    for (i, c) in comps.iter().enumerate() {
        if i > 0 {
            h.update(b"/");
        }
        h.update(c);
    }
    *h.finalize().as_bytes()
}

/// A path for a message about its length: long ones cut in the middle.
fn abbreviated(name: &str) -> String {
    const KEEP: usize = 60;
    let chars: Vec<char> = name.chars().collect();
    if chars.len() <= 2 * KEEP {
        return name.to_string();
    }
    let head: String = chars[..KEEP].iter().collect();
    let tail: String = chars[chars.len() - KEEP..].iter().collect();
    format!("{head}…{tail}")
}

fn path_limit(name: &str, limit: PathLimit) -> Problem {
    let name = abbreviated(name);
    Problem::Limit(match limit {
        PathLimit::TooDeep { depth } => LimitExceeded {
            what: format!("entry {name:?}: its depth of {depth} path components"),
            limit: MAX_DEPTH as u64,
            raisable: None,
        },
        PathLimit::TooManyPathBytes => LimitExceeded {
            what: format!("at entry {name:?}, the bytes of all the package's paths"),
            limit: MAX_PATH_BYTES,
            raisable: None,
        },
        PathLimit::TooManyXattrBytes => LimitExceeded {
            what: format!("at entry {name:?}, the bytes of all the package's extended attributes"),
            limit: MAX_XATTR_BYTES,
            raisable: None,
        },
    })
}

impl TreeBuilder {
    /// An empty package (an implied root directory).
    pub fn new(skip_special: bool) -> Self {
        let mut tree = Tree::default();
        tree.push_inode(implied_dir());
        TreeBuilder {
            tree,
            children: HashMap::new(),
            seen: HashSet::new(),
            budget: PathBudget::default(),
            explicit: HashSet::new(),
            skip_special,
            skipped: Vec::new(),
        }
    }

    /// Archive paths left out as special files.
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    /// Number of regular-file inodes so far.
    pub fn file_count(&self) -> usize {
        self.tree
            .inodes
            .iter()
            .filter(|i| matches!(i.kind, InodeKind::File { .. }))
            .count()
    }

    /// Adds `entry` (whose path normalises to `raw`) at `place`; a hard
    /// link's target is given already placed as `link_target`.
    pub fn add(
        &mut self,
        entry: &ArchiveEntry,
        raw: &[Vec<u8>],
        place: &Placement,
        link_target: Option<&Placement>,
    ) -> Result<Added, Problem> {
        let name = entry.display();
        self.budget
            .charge(raw.len(), joined_len(raw))
            .and_then(|()| self.budget.charge_xattrs(&entry.meta.xattrs))
            .map_err(|limit| path_limit(&name, limit))?;
        if !self.seen.insert(path_key(raw)) {
            return Err(Problem::Duplicate {
                entry: name,
                detail: String::new(),
            });
        }
        if let EntryKind::Special(what) = entry.kind {
            if self.skip_special {
                tracing::warn!("skipping {name}: {what}");
                self.skipped.push(name);
                return Ok(Added::Skipped);
            }
            return Err(Problem::Special { entry: name, what });
        }
        let comps = match place {
            Placement::Root => {
                if entry.kind != EntryKind::Dir {
                    return Err(Problem::UnsafePath {
                        entry: name,
                        reason: "takes the place of the package root, which must be a directory"
                            .into(),
                    });
                }
                self.set_dir_meta(0, &entry.meta);
                return Ok(Added::Done);
            }
            Placement::At(comps) => comps,
        };
        let Some((last, parents)) = comps.split_last() else {
            return Err(Problem::UnsafePath {
                entry: name,
                reason: "no name".into(),
            });
        };
        let parent = self.parent_dir(&name, parents)?;
        if let Some(existing) = self.child(parent, last) {
            if entry.kind == EntryKind::Dir
                && self.tree.inodes[existing as usize].kind == InodeKind::Dir
            {
                self.set_dir_meta(existing, &entry.meta);
                return Ok(Added::Done);
            }
            return Err(Problem::Duplicate {
                entry: name,
                detail: format!(
                    ": another entry already lands at {:?} in the package",
                    lossy(&join(comps))
                ),
            });
        }
        let (ino, added) = match &entry.kind {
            EntryKind::Dir => {
                let ino = self.tree.push_inode(inode(InodeKind::Dir, &entry.meta));
                self.explicit.insert(ino);
                (ino, Added::Done)
            }
            EntryKind::File { size } => {
                let kind = InodeKind::File {
                    size: *size,
                    content: None,
                };
                let ino = self.tree.push_inode(inode(kind, &entry.meta));
                (ino, Added::File(ino))
            }
            EntryKind::Symlink { target } => {
                if target.is_empty() || target.contains(&0) {
                    return Err(Problem::Corrupt(format!(
                        "symlink {name:?} has an empty or invalid target"
                    )));
                }
                // What no kernel could make, and what a package may hold
                // of link targets in all (they are paths too).
                if target.len() > SYMLINK_TARGET_MAX {
                    return Err(Problem::Corrupt(format!(
                        "symlink {name:?} has a target of {} bytes, more than the {SYMLINK_TARGET_MAX} a link may hold",
                        target.len()
                    )));
                }
                self.budget
                    .charge_target(target.len())
                    .map_err(|limit| path_limit(&name, limit))?;
                let kind = InodeKind::Symlink {
                    target: target.clone(),
                };
                (self.tree.push_inode(inode(kind, &entry.meta)), Added::Done)
            }
            EntryKind::HardLink { target } => {
                let ino = self.link_target(&name, target, link_target)?;
                (ino, Added::Done)
            }
            // Handled above; kept as an error so no path skips the policy.
            EntryKind::Special(what) => return Err(Problem::Special { entry: name, what }),
        };
        self.link(parent, last, ino);
        Ok(added)
    }

    /// Records the content of a file added as [`Added::File`].
    pub fn set_content(&mut self, ino: InodeIndex, hash: Hash) {
        if let Some(Inode {
            kind: InodeKind::File { content, .. },
            ..
        }) = self.tree.inodes.get_mut(ino as usize)
        {
            *content = Some(hash);
        }
    }

    /// The finished tree.
    pub fn finish(self) -> Tree {
        self.tree
    }

    /// The package path of every regular file, symlink and hard link added
    /// so far, for checks against a package's own file list.
    pub fn non_dir_paths(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let _ = self.tree.visit(|v| -> Result<(), ()> {
            let ino = self.tree.entries[v.entry].inode;
            if self.tree.inodes[ino as usize].kind != InodeKind::Dir {
                out.push(v.path.to_vec());
            }
            Ok(())
        });
        out
    }

    /// The inode `name` names in directory `dir`, if any.
    fn child(&self, dir: InodeIndex, name: &[u8]) -> Option<InodeIndex> {
        self.children.get(&dir)?.get(name).copied()
    }

    /// Names `ino` `name` in directory `dir`.
    fn link(&mut self, dir: InodeIndex, name: &[u8], ino: InodeIndex) {
        self.tree.push_entry(dir, name.to_vec(), ino);
        self.children
            .entry(dir)
            .or_default()
            .insert(name.to_vec(), ino);
    }

    /// The inode at package path `comps`, if any.
    fn lookup(&self, comps: &[Vec<u8>]) -> Option<InodeIndex> {
        comps.iter().try_fold(0, |dir, name| self.child(dir, name))
    }

    fn set_dir_meta(&mut self, ino: InodeIndex, meta: &EntryMeta) {
        // The first entry of a directory wins: a later one can only come
        // from two archive paths mapped together (`usr/bin`, `bin`).
        if self.explicit.insert(ino) {
            self.tree.inodes[ino as usize] = inode(InodeKind::Dir, meta);
        }
    }

    /// The directory `parents` names, created (implied) where missing.
    fn parent_dir(&mut self, name: &str, parents: &[Vec<u8>]) -> Result<InodeIndex, Problem> {
        let mut dir: InodeIndex = 0;
        for depth in 0..parents.len() {
            let path = || join(&parents[..=depth]);
            dir = match self.child(dir, &parents[depth]) {
                Some(ino) => match self.tree.inodes[ino as usize].kind {
                    InodeKind::Dir => ino,
                    InodeKind::Symlink { .. } => {
                        return Err(Problem::UnsafePath {
                            entry: name.to_string(),
                            reason: format!(
                                "goes through the symlink {:?}; an entry may not be written through a symbolic link",
                                lossy(&path())
                            ),
                        });
                    }
                    InodeKind::File { .. } => {
                        return Err(Problem::UnsafePath {
                            entry: name.to_string(),
                            reason: format!("its parent {:?} is a file", lossy(&path())),
                        });
                    }
                },
                None => {
                    let ino = self.tree.push_inode(implied_dir());
                    self.link(dir, &parents[depth], ino);
                    ino
                }
            };
        }
        Ok(dir)
    }

    fn link_target(
        &self,
        name: &str,
        target: &[u8],
        placed: Option<&Placement>,
    ) -> Result<InodeIndex, Problem> {
        let found = match placed {
            Some(Placement::At(comps)) => self.lookup(comps),
            _ => None,
        };
        match found {
            Some(ino) if matches!(self.tree.inodes[ino as usize].kind, InodeKind::File { .. }) => {
                Ok(ino)
            }
            _ => Err(Problem::Corrupt(format!(
                "hard link {name:?} names {:?}, which is not an earlier regular file of the archive",
                lossy(target)
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{Mapping, components};

    fn meta(mode: u32) -> EntryMeta {
        EntryMeta {
            mode,
            ..EntryMeta::default()
        }
    }

    fn entry(path: &str, kind: EntryKind) -> ArchiveEntry {
        ArchiveEntry {
            path: path.as_bytes().to_vec(),
            kind,
            meta: meta(0o644),
        }
    }

    fn add(b: &mut TreeBuilder, e: &ArchiveEntry) -> Result<Added, Problem> {
        let raw = components(&e.path)?;
        let place = Mapping::Fhs.place(raw.clone());
        let link = match &e.kind {
            EntryKind::HardLink { target } => Some(Mapping::Fhs.place(components(target)?)),
            _ => None,
        };
        b.add(e, &raw, &place, link.as_ref())
    }

    fn file(path: &str) -> ArchiveEntry {
        entry(path, EntryKind::File { size: 1 })
    }

    #[test]
    fn builds_implied_directories_links_and_merges() {
        let mut b = TreeBuilder::new(false);
        assert_eq!(
            add(&mut b, &entry("./", EntryKind::Dir)).unwrap(),
            Added::Done
        );
        assert!(matches!(
            add(&mut b, &file("./usr/bin/hello")).unwrap(),
            Added::File(_)
        ));
        add(&mut b, &entry("./bin/", EntryKind::Dir)).unwrap(); // merges with usr/bin
        add(
            &mut b,
            &entry(
                "./usr/bin/hi",
                EntryKind::HardLink {
                    target: b"./usr/bin/hello".to_vec(),
                },
            ),
        )
        .unwrap();
        add(
            &mut b,
            &entry(
                "./usr/bin/link",
                EntryKind::Symlink {
                    target: b"hello".to_vec(),
                },
            ),
        )
        .unwrap();
        let mut paths: Vec<String> = b.non_dir_paths().iter().map(|p| lossy(p)).collect();
        paths.sort();
        assert_eq!(paths, ["bin/hello", "bin/hi", "bin/link"]);
        let tree = b.finish();
        let counts = tree.link_counts();
        let hello = tree
            .entries
            .iter()
            .find(|e| e.name == b"hello")
            .unwrap()
            .inode;
        assert_eq!(counts[hello as usize], 2);
    }

    /// A link no kernel could make was stored, and a package holding one
    /// could be packed but never read back; targets of a megabyte each
    /// (GNU long-link records compress well) took gigabytes.
    #[test]
    fn link_targets_are_bounded_each_and_in_all() {
        let link = |name: &str, len: usize| {
            entry(
                name,
                EntryKind::Symlink {
                    target: vec![b'a'; len],
                },
            )
        };
        let mut b = TreeBuilder::new(false);
        add(&mut b, &link("longest", SYMLINK_TARGET_MAX)).unwrap();
        let err = add(&mut b, &link("longer", SYMLINK_TARGET_MAX + 1))
            .unwrap_err()
            .to_string();
        assert!(err.contains("a link may hold"), "{err}");
        let mut b = TreeBuilder::new(false);
        let fit = MAX_PATH_BYTES as usize / SYMLINK_TARGET_MAX;
        let mut refused = None;
        for i in 0..fit + 2 {
            if let Err(e) = add(&mut b, &link(&format!("l{i}"), SYMLINK_TARGET_MAX)) {
                refused = Some((i, e.to_string()));
                break;
            }
        }
        let (at, err) = refused.expect("link targets of any total size were taken");
        assert!(at <= fit, "refused only at link {at}: {err}");
    }

    #[test]
    fn refuses_writing_through_symlinks_and_files() {
        let mut b = TreeBuilder::new(false);
        add(
            &mut b,
            &entry(
                "lib",
                EntryKind::Symlink {
                    target: b"/etc".to_vec(),
                },
            ),
        )
        .unwrap();
        let err = add(&mut b, &file("lib/passwd")).unwrap_err().to_string();
        assert!(err.contains("symlink"), "{err}");
        add(&mut b, &file("f")).unwrap();
        let err = add(&mut b, &file("f/g")).unwrap_err().to_string();
        assert!(err.contains("is a file"), "{err}");
    }

    #[test]
    fn refuses_duplicates_and_bad_hard_links() {
        let mut b = TreeBuilder::new(false);
        add(&mut b, &file("usr/bin/a")).unwrap();
        let err = add(&mut b, &file("./usr/bin/a")).unwrap_err().to_string();
        assert!(err.contains("duplicate"), "{err}");
        let err = add(&mut b, &file("bin/a")).unwrap_err().to_string();
        assert!(err.contains("duplicate") && err.contains("bin/a"), "{err}");
        let err = add(
            &mut b,
            &entry(
                "x",
                EntryKind::HardLink {
                    target: b"later".to_vec(),
                },
            ),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("not an earlier regular file"), "{err}");
        add(&mut b, &entry("d", EntryKind::Dir)).unwrap();
        assert!(
            add(
                &mut b,
                &entry(
                    "y",
                    EntryKind::HardLink {
                        target: b"d".to_vec()
                    }
                )
            )
            .is_err()
        );
        assert!(
            add(&mut b, &file("usr")).is_err(),
            "a file cannot be the root"
        );
    }

    #[test]
    fn special_files_are_refused_or_skipped() {
        let fifo = entry("run/pipe", EntryKind::Special("a FIFO"));
        let err = add(&mut TreeBuilder::new(false), &fifo)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("FIFO") && err.contains("only files, directories and symlinks"),
            "{err}"
        );
        let mut b = TreeBuilder::new(true);
        assert_eq!(add(&mut b, &fifo).unwrap(), Added::Skipped);
        assert_eq!(b.skipped(), ["run/pipe"]);
    }

    #[test]
    fn deep_paths_are_refused_at_the_limit() {
        let mut b = TreeBuilder::new(false);
        let at_limit = vec!["d"; MAX_DEPTH].join("/");
        add(&mut b, &file(&at_limit)).unwrap();
        let deeper = format!("{at_limit}/x");
        let err = add(&mut b, &file(&deeper)).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Problem::Limit(_)), "{text}");
        assert!(
            text.contains("257 path components") && text.contains("256"),
            "{text}"
        );
    }

    #[test]
    fn total_path_bytes_are_limited() {
        let mut b = TreeBuilder::new(false);
        // 255-byte names under one 3,500-byte directory path: each entry
        // costs about 3,750 path bytes.
        let dir = vec!["p".repeat(250); 14].join("/");
        let per_entry = (dir.len() + 1 + 255) as u64;
        let fits = MAX_PATH_BYTES / per_entry;
        for i in 0..fits {
            let name = format!("{dir}/{:0>255}", i);
            add(&mut b, &file(&name)).unwrap();
        }
        let err = add(&mut b, &file(&format!("{dir}/{:x>255}", 0)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bytes of all the package's paths"), "{err}");
    }
}
