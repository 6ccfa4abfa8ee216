//! What changes in the view when it moves to another generation, and which
//! cached answers that makes stale.
//!
//! Only the root and the App directories depend on the generation; package
//! inodes are immutable (see [`crate::view`]). So a move is fully described
//! by the Apps and versions that appeared or disappeared, the `Current` links
//! that point elsewhere, and the root, App and `Current` inodes whose
//! attributes differ. Transports that let a client cache answers (the kernel
//! behind FUSE) turn [`Changes::invalidations`] into their own notifications;
//! a tree derived from the `Current` versions (the Index) can follow
//! [`Changes::current_changed`].

use std::collections::HashSet;

use crate::error::Result;
use crate::generation::{App, GenerationTree};
use crate::ino::{self, Node};
use crate::view::{CURRENT, app_attr, current_attr, root_attr};

/// An App directory that appeared or disappeared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppChange {
    /// Its name under the root.
    pub name: String,
    /// Its inode number.
    pub ino: u64,
}

/// A version directory that appeared in or disappeared from its App.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionChange {
    /// The App's name.
    pub app: String,
    /// The App directory's inode number.
    pub app_ino: u64,
    /// The version's name in the App directory.
    pub version: String,
    /// The inode number of the package root it names.
    pub ino: u64,
}

/// An App whose `Current` link now points elsewhere, appeared or
/// disappeared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CurrentChange {
    /// The App's name.
    pub app: String,
    /// The App directory's inode number.
    pub app_ino: u64,
    /// The `Current` link's inode number.
    pub link_ino: u64,
    /// The version it pointed to (`None`: there was no link).
    pub from: Option<String>,
    /// The version it points to now (`None`: the link is gone).
    pub to: Option<String>,
}

/// How the view changed when it moved from one generation to another.
///
/// Removing an App lists all its versions as removed and its `Current` as
/// gone (adding one, likewise), so each list is complete on its own. An App
/// whose anchor changed (its first package was collected) has a new inode
/// number: it is listed as removed and added.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// The generation shown before (`None`: the store had none).
    pub from: Option<i64>,
    /// The generation shown now.
    pub to: Option<i64>,
    /// Apps now listed in the root that were not before.
    pub apps_added: Vec<AppChange>,
    /// Apps no longer listed in the root.
    pub apps_removed: Vec<AppChange>,
    /// Versions now listed in their App directory that were not before.
    pub versions_added: Vec<VersionChange>,
    /// Versions no longer listed in their App directory.
    pub versions_removed: Vec<VersionChange>,
    /// `Current` links whose target changed.
    pub current_changed: Vec<CurrentChange>,
    /// Root, App directory and `Current` inodes whose attributes (link
    /// count, size, mtime) differ, or which appeared or disappeared. The
    /// generation's creation time is their mtime, so usually all of them.
    pub attrs_changed: Vec<u64>,
}

/// One cached answer that a change made stale.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Invalidation {
    /// What the name `name` in directory `parent` refers to.
    Entry {
        /// The directory's inode number.
        parent: u64,
        /// The name, byte-exact.
        name: Vec<u8>,
    },
    /// The attributes of inode `ino`, the listing of a directory and the
    /// target of a link.
    Inode(u64),
}

impl Changes {
    /// Describes the move from `old` to `new`.
    pub(crate) fn between(old: &GenerationTree, new: &GenerationTree) -> Result<Changes> {
        let mut changes = Changes {
            from: old.id,
            to: new.id,
            ..Changes::default()
        };
        if root_attr(old) != root_attr(new) {
            changes.attrs_changed.push(ino::ROOT);
        }
        for (name, was) in &old.apps {
            match new.apps.get(name) {
                Some(now) if now.anchor == was.anchor => changes.app_changed(old, was, new, now)?,
                _ => changes.app_gone(was)?,
            }
        }
        for (name, now) in &new.apps {
            match old.apps.get(name) {
                Some(was) if was.anchor == now.anchor => {}
                _ => changes.app_new(now)?,
            }
        }
        Ok(changes)
    }

    /// True when nothing a client may have cached changed.
    pub fn is_empty(&self) -> bool {
        self.apps_added.is_empty()
            && self.apps_removed.is_empty()
            && self.versions_added.is_empty()
            && self.versions_removed.is_empty()
            && self.current_changed.is_empty()
            && self.attrs_changed.is_empty()
    }

    fn app_gone(&mut self, app: &App) -> Result<()> {
        let ino = Node::App(app.anchor).ino()?;
        let link_ino = Node::Current(app.anchor).ino()?;
        self.apps_removed.push(AppChange {
            name: app.name.clone(),
            ino,
        });
        for (version, root) in &app.versions {
            self.versions_removed
                .push(version_change(app, ino, version, root.id)?);
        }
        if app.current.is_some() {
            self.current_changed.push(CurrentChange {
                app: app.name.clone(),
                app_ino: ino,
                link_ino,
                from: app.current.clone(),
                to: None,
            });
        }
        // A process may still hold the directory (as its working directory):
        // its attributes must be asked for again, which then fails.
        self.attrs_changed.extend([ino, link_ino]);
        Ok(())
    }

    fn app_new(&mut self, app: &App) -> Result<()> {
        let ino = Node::App(app.anchor).ino()?;
        let link_ino = Node::Current(app.anchor).ino()?;
        self.apps_added.push(AppChange {
            name: app.name.clone(),
            ino,
        });
        for (version, root) in &app.versions {
            self.versions_added
                .push(version_change(app, ino, version, root.id)?);
        }
        if app.current.is_some() {
            self.current_changed.push(CurrentChange {
                app: app.name.clone(),
                app_ino: ino,
                link_ino,
                from: None,
                to: app.current.clone(),
            });
        }
        // The same App may have been shown before the previous generation,
        // and its inode still be cached with that generation's attributes.
        self.attrs_changed.extend([ino, link_ino]);
        Ok(())
    }

    fn app_changed(
        &mut self,
        old: &GenerationTree,
        was: &App,
        new: &GenerationTree,
        now: &App,
    ) -> Result<()> {
        let ino = Node::App(now.anchor).ino()?;
        let link_ino = Node::Current(now.anchor).ino()?;
        for (version, root) in &was.versions {
            if now.versions.get(version).map(|r| r.id) != Some(root.id) {
                self.versions_removed
                    .push(version_change(was, ino, version, root.id)?);
            }
        }
        for (version, root) in &now.versions {
            if was.versions.get(version).map(|r| r.id) != Some(root.id) {
                self.versions_added
                    .push(version_change(now, ino, version, root.id)?);
            }
        }
        if was.current != now.current {
            self.current_changed.push(CurrentChange {
                app: now.name.clone(),
                app_ino: ino,
                link_ino,
                from: was.current.clone(),
                to: now.current.clone(),
            });
        }
        if app_attr(old, was)? != app_attr(new, now)? {
            self.attrs_changed.push(ino);
        }
        let link_attr = |tree, app: &App| {
            app.current
                .as_deref()
                .map(|target| current_attr(tree, app, target))
                .transpose()
        };
        if link_attr(old, was)? != link_attr(new, now)? {
            self.attrs_changed.push(link_ino);
        }
        Ok(())
    }

    /// The cached answers this change makes stale, each once: names first
    /// (which also drops what the kernel cached about the directory holding
    /// them), then inodes.
    pub fn invalidations(&self) -> Vec<Invalidation> {
        let root = |name: &str| Invalidation::Entry {
            parent: ino::ROOT,
            name: name.as_bytes().to_vec(),
        };
        let in_app = |app_ino: u64, name: &str| Invalidation::Entry {
            parent: app_ino,
            name: name.as_bytes().to_vec(),
        };
        let mut out = Vec::new();
        // Added names too: a client may cache that a name does not exist.
        for app in self.apps_removed.iter().chain(&self.apps_added) {
            out.push(root(&app.name));
        }
        for v in self.versions_removed.iter().chain(&self.versions_added) {
            out.push(in_app(v.app_ino, &v.version));
        }
        for c in &self.current_changed {
            // The link keeps its inode number while it exists: only its
            // appearing or disappearing changes the name.
            if c.from.is_none() || c.to.is_none() {
                out.push(in_app(c.app_ino, CURRENT));
            }
            out.push(Invalidation::Inode(c.link_ino));
        }
        out.extend(self.attrs_changed.iter().copied().map(Invalidation::Inode));
        distinct(out)
    }

    /// What must be invalidated again once the view's grace for removed
    /// names ([`crate::view::REMOVED_NAMES_GRACE`]) has passed: the names this
    /// change removed from App directories, and the inodes of removed Apps
    /// and links, which the view still answered for meanwhile (and a client
    /// may have cached anew). Empty when nothing was removed.
    pub fn after_grace(&self) -> Vec<Invalidation> {
        let mut out = Vec::new();
        for v in &self.versions_removed {
            out.push(Invalidation::Entry {
                parent: v.app_ino,
                name: v.version.as_bytes().to_vec(),
            });
        }
        for c in self.current_changed.iter().filter(|c| c.to.is_none()) {
            out.push(Invalidation::Entry {
                parent: c.app_ino,
                name: CURRENT.as_bytes().to_vec(),
            });
            out.push(Invalidation::Inode(c.link_ino));
        }
        out.extend(self.apps_removed.iter().map(|a| Invalidation::Inode(a.ino)));
        distinct(out)
    }
}

/// `all` without repetitions, in order.
fn distinct(mut all: Vec<Invalidation>) -> Vec<Invalidation> {
    let mut seen = HashSet::new();
    all.retain(|i| seen.insert(i.clone()));
    all
}

fn version_change(app: &App, app_ino: u64, version: &str, root: i64) -> Result<VersionChange> {
    Ok(VersionChange {
        app: app.name.clone(),
        app_ino,
        version: version.to_string(),
        ino: Node::Package(root).ino()?,
    })
}
