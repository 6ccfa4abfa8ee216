//! The generation-bound top of the tree: the root (listing the Apps), App
//! directories (listing their versions and `Current`) and `Current` links,
//! all answered from the [`GenerationTree`] in memory.
//!
//! A live view moves to a newer generation with [`Namespace::refresh`].
//! The names a move removes from App directories still resolve, unlisted,
//! for a grace period ([`REMOVED_NAMES_GRACE`]), so that a path walk
//! through `Current` that read the link just before the move ends where
//! the link sent it instead of failing.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use nexus_store::read::Reader;

use crate::attr::{Attr, Entry, Kind, Listing};
use crate::changes::Changes;
use crate::error::{Result, ViewError};
use crate::generation::{App, GenerationTree};
use crate::ino::{self, Node};

use super::{CURRENT, GenerationChoice};

/// How long the names a generation switch removed from App directories still
/// resolve, unlisted (see [`crate::View::with_removed_names_grace`]).
///
/// Resolving `App/Current/...` takes two steps: reading the link, then
/// looking its target up in the App directory. A switch that removes the
/// version `Current` pointed to can fall between the two; for this long the
/// old names still resolve, so that a walk under way ends where the link sent
/// it instead of failing. The two steps normally take microseconds, but a
/// walker descheduled between them on an overloaded machine (two cores, three
/// spinning processes, parallel readers, a debug build) was seen to need over
/// 300 ms. A walk stalled for longer still fails with `ENOENT`, as it would
/// on a disk whose old version was deleted right after the link moved.
pub const REMOVED_NAMES_GRACE: Duration = Duration::from_millis(500);

/// The tree shown before the last refresh, while its names still resolve.
struct Recent {
    tree: Arc<GenerationTree>,
    until: Instant,
}

/// The root, Apps and `Current` links of the generation shown.
pub(crate) struct Namespace {
    choice: GenerationChoice,
    tree: RwLock<Arc<GenerationTree>>,
    recent: RwLock<Option<Recent>>,
    refreshing: Mutex<()>,
    pub(crate) grace: Duration,
}

fn dir_attr(ino: u64, nlink: usize, mtime: i64) -> Attr {
    Attr {
        ino,
        kind: Kind::Dir,
        perm: 0o755,
        uid: 0,
        gid: 0,
        size: 0,
        mtime,
        nlink: u32::try_from(nlink.saturating_add(2)).unwrap_or(u32::MAX),
        immutable: false,
    }
}

/// The root directory's attributes in `tree`.
pub(crate) fn root_attr(tree: &GenerationTree) -> Attr {
    dir_attr(ino::ROOT, tree.apps.len(), tree.created)
}

/// An App directory's attributes in `tree`.
pub(crate) fn app_attr(tree: &GenerationTree, app: &App) -> Result<Attr> {
    Ok(dir_attr(
        Node::App(app.anchor).ino()?,
        app.versions.len(),
        tree.created,
    ))
}

/// The attributes of an App's `Current` link to `target`.
pub(crate) fn current_attr(tree: &GenerationTree, app: &App, target: &str) -> Result<Attr> {
    Ok(Attr {
        ino: Node::Current(app.anchor).ino()?,
        kind: Kind::Symlink,
        perm: 0o777,
        uid: 0,
        gid: 0,
        size: target.len() as u64,
        mtime: tree.created,
        nlink: 1,
        immutable: false,
    })
}

/// `.` and `..` of a directory whose attributes are `this`, in `parent`.
pub(crate) fn dot_entries(this: Attr, parent: Attr) -> [Entry; 2] {
    let immutable = this.immutable;
    [
        Entry {
            name: b".".to_vec(),
            attr: this,
            immutable,
        },
        Entry {
            name: b"..".to_vec(),
            attr: parent,
            immutable,
        },
    ]
}

/// The entries of an App directory, sorted by name.
fn app_entries(tree: &GenerationTree, app: &App) -> Result<Vec<Entry>> {
    let mut entries = Vec::with_capacity(app.versions.len() + 1);
    for (version, root) in &app.versions {
        entries.push(Entry {
            name: version.as_bytes().to_vec(),
            attr: Attr::of_row(root)?,
            immutable: false,
        });
    }
    if let Some(target) = &app.current {
        entries.push(Entry {
            name: CURRENT.as_bytes().to_vec(),
            attr: current_attr(tree, app, target)?,
            immutable: false,
        });
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}

fn entry(name: &[u8], attr: Attr) -> Entry {
    Entry {
        name: name.to_vec(),
        attr,
        immutable: false,
    }
}

impl Namespace {
    /// The namespace of the generation `choice` names, as the catalog has
    /// it now.
    pub(crate) fn load(reader: &Reader, choice: GenerationChoice) -> Result<Namespace> {
        Ok(Namespace {
            choice,
            tree: RwLock::new(Arc::new(GenerationTree::load_wanted(reader, choice)?)),
            recent: RwLock::new(None),
            refreshing: Mutex::new(()),
            grace: REMOVED_NAMES_GRACE,
        })
    }

    /// The tree shown.
    pub(crate) fn tree(&self) -> Arc<GenerationTree> {
        self.tree.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The tree shown before the last refresh, while its grace lasts.
    fn recent(&self) -> Option<Arc<GenerationTree>> {
        let recent = self.recent.read().unwrap_or_else(|p| p.into_inner());
        recent
            .as_ref()
            .filter(|r| Instant::now() < r.until)
            .map(|r| r.tree.clone())
    }

    /// `answer` for App `anchor` as the tree shown has it, or, if the App or
    /// the name asked about is gone from it, as the tree shown before had it
    /// while the grace lasts.
    fn at_app<T>(
        &self,
        anchor: i64,
        answer: impl Fn(&GenerationTree, &App) -> Result<T>,
    ) -> Result<T> {
        let in_tree = |tree: &GenerationTree| match tree.app(anchor) {
            Some(app) => answer(tree, app),
            None => Err(ViewError::NotFound),
        };
        match in_tree(&self.tree()) {
            Err(ViewError::NotFound) => match self.recent() {
                Some(before) => in_tree(&before),
                None => Err(ViewError::NotFound),
            },
            other => other,
        }
    }

    /// For a live view: moves to the live generation if it is not the one
    /// shown, and returns what changed and the new tree (`None`: it did not
    /// move). `before_publish` runs after the new tree is loaded and
    /// before any request can see it.
    pub(crate) fn refresh(
        &self,
        reader: &Reader,
        before_publish: impl FnOnce(&GenerationTree),
    ) -> Result<Option<Changes>> {
        if self.choice != GenerationChoice::Live {
            return Ok(None);
        }
        // One refresh at a time, so that the changes returned describe
        // exactly the tree this call replaced.
        let _one = self.refreshing.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.tree();
        // A fresh snapshot: the commit that moved the live generation must
        // be seen, and the new tree loaded from that same snapshot.
        let moved = reader.query_fresh(|c| {
            let live = c.current_generation()?;
            if live == old.id {
                return Ok(None);
            }
            GenerationTree::load(c, live).map(Some)
        })?;
        let Some(tree) = moved else {
            return Ok(None);
        };
        let changes = Changes::between(&old, &tree)?;
        before_publish(&tree);
        // Before anyone can see the new tree: every request that does must
        // query a snapshot that holds its packages.
        reader.renew_snapshots();
        // The old names first: a lookup that misses in the new tree must
        // find them.
        *self.recent.write().unwrap_or_else(|p| p.into_inner()) = Some(Recent {
            tree: old,
            until: Instant::now() + self.grace,
        });
        *self.tree.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(tree);
        Ok(Some(changes))
    }

    /// The attributes of the root, an App or a `Current` link.
    pub(crate) fn getattr(&self, node: Node) -> Result<Attr> {
        match node {
            Node::Root => Ok(root_attr(&self.tree())),
            Node::App(anchor) => self.at_app(anchor, app_attr),
            Node::Current(anchor) => self.at_app(anchor, |tree, app| {
                let target = app.current.as_deref().ok_or(ViewError::NotFound)?;
                current_attr(tree, app, target)
            }),
            Node::Package(_) => Err(ViewError::NotFound),
        }
    }

    /// Looks `name` up in the root or an App directory.
    pub(crate) fn lookup(&self, parent: Node, name: &[u8]) -> Result<Entry> {
        let name_str = || std::str::from_utf8(name).map_err(|_| ViewError::NotFound);
        let attr = match parent {
            Node::Root => {
                let tree = self.tree();
                app_attr(
                    &tree,
                    tree.apps.get(name_str()?).ok_or(ViewError::NotFound)?,
                )?
            }
            Node::App(anchor) => {
                let name = name_str()?;
                self.at_app(anchor, |tree, app| match (name, &app.current) {
                    (CURRENT, Some(target)) => current_attr(tree, app, target),
                    _ => Attr::of_row(app.versions.get(name).ok_or(ViewError::NotFound)?),
                })?
            }
            Node::Current(_) => return Err(ViewError::NotDir),
            Node::Package(_) => return Err(ViewError::NotFound),
        };
        Ok(entry(name, attr))
    }

    /// The whole listing of the root or an App directory, `.` and `..`
    /// first.
    pub(crate) fn list(&self, node: Node) -> Result<Listing> {
        let tree = self.tree();
        let entries = match node {
            Node::Root => {
                let root = root_attr(&tree);
                let mut entries = Vec::from(dot_entries(root.clone(), root));
                for app in tree.apps.values() {
                    entries.push(entry(app.name.as_bytes(), app_attr(&tree, app)?));
                }
                entries
            }
            Node::App(anchor) => {
                let app = tree.app(anchor).ok_or(ViewError::NotFound)?;
                let mut entries = Vec::from(dot_entries(app_attr(&tree, app)?, root_attr(&tree)));
                entries.extend(app_entries(&tree, app)?);
                entries
            }
            Node::Current(_) => return Err(ViewError::NotDir),
            Node::Package(_) => return Err(ViewError::NotFound),
        };
        Ok(Listing {
            entries,
            immutable: false,
        })
    }

    /// The target of App `anchor`'s `Current` link.
    pub(crate) fn readlink(&self, anchor: i64) -> Result<Vec<u8>> {
        self.at_app(anchor, |_, app| {
            let target = app.current.as_deref().ok_or(ViewError::NotFound)?;
            Ok(target.as_bytes().to_vec())
        })
    }

    /// The attributes of the App directory holding package root `id` in the
    /// tree shown, if it is one.
    pub(crate) fn app_of_root(&self, id: i64) -> Option<Result<Attr>> {
        let tree = self.tree();
        let anchor = tree.root_app.get(&id)?;
        tree.app(*anchor).map(|app| app_attr(&tree, app))
    }
}
