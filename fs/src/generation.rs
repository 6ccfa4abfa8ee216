//! The top two levels of the view for one generation: the root, listing the
//! Apps, and each App, listing its versions and `Current`. Loaded in one
//! catalog query and kept in memory; package trees below are read from the
//! catalog on demand.

use std::collections::{BTreeMap, HashMap, HashSet};

use nexus_store::catalog::{Catalog, InodeRow};
use nexus_store::read::Reader;

use crate::error::{Result, ViewError};
use crate::view::GenerationChoice;

/// One App of a generation.
#[derive(Debug)]
pub(crate) struct App {
    /// Its name (the directory name under the root).
    pub name: String,
    /// The package id that names it in inode numbers (see [`crate::ino`]).
    pub anchor: i64,
    /// Version name → the package's root directory inode.
    pub versions: BTreeMap<String, InodeRow>,
    /// The version `Current` points to.
    pub current: Option<String>,
    /// Whether the `Current` version's package is restricted (its signer
    /// was trusted only for some Apps, `restricted_to` in the catalog):
    /// the Index ranks it after every unrestricted App.
    pub current_restricted: bool,
}

/// The Apps of one generation.
#[derive(Debug, Default)]
pub(crate) struct GenerationTree {
    /// The generation shown; `None` for a store without generations (an
    /// empty root).
    pub id: Option<i64>,
    /// When it was created (the mtime of the root, App directories and links).
    pub created: i64,
    /// The Apps by name.
    pub apps: BTreeMap<String, App>,
    /// App anchor → name.
    pub by_anchor: HashMap<i64, String>,
    /// Package root inode id → the anchor of its App (to answer `..`).
    pub root_app: HashMap<i64, i64>,
    /// The packages shown (catalog ids).
    pub packages: HashSet<i64>,
    /// Regular-file entries over all packages.
    pub files: u64,
    /// Bytes of those entries.
    pub bytes: u64,
}

impl GenerationTree {
    /// Loads generation `id` (`None`: an empty tree).
    pub(crate) fn load(catalog: &Catalog, id: Option<i64>) -> Result<GenerationTree> {
        let Some(id) = id else {
            return Ok(GenerationTree::default());
        };
        let generation = catalog.generation(id)?.ok_or(ViewError::NoGeneration(id))?;
        let mut tree = GenerationTree {
            id: Some(id),
            created: generation.created,
            ..GenerationTree::default()
        };
        for rooted in catalog.rooted_members(id)? {
            let package = rooted.member.package;
            tree.packages.insert(package.id);
            tree.files += u64::try_from(package.files).unwrap_or(0);
            tree.bytes += u64::try_from(package.bytes).unwrap_or(0);
            tree.root_app
                .insert(rooted.root.id, rooted.app_first_package);
            tree.by_anchor
                .insert(rooted.app_first_package, package.name.clone());
            let app = tree
                .apps
                .entry(package.name.clone())
                .or_insert_with(|| App {
                    name: package.name.clone(),
                    anchor: rooted.app_first_package,
                    versions: BTreeMap::new(),
                    current: None,
                    current_restricted: false,
                });
            if rooted.member.current {
                app.current = Some(package.version.clone());
                app.current_restricted = package.restricted_to.is_some();
            }
            app.versions.insert(package.version, rooted.root);
        }
        Ok(tree)
    }

    /// Loads the generation `choice` names, from a fresh snapshot (`Live`:
    /// the newest).
    pub(crate) fn load_wanted(reader: &Reader, choice: GenerationChoice) -> Result<GenerationTree> {
        reader.query_fresh(|c| {
            let wanted = match choice {
                GenerationChoice::Live => c.current_generation()?,
                GenerationChoice::Fixed(n) => Some(n),
            };
            GenerationTree::load(c, wanted)
        })
    }

    /// The App an anchor names.
    pub(crate) fn app(&self, anchor: i64) -> Option<&App> {
        self.by_anchor.get(&anchor).and_then(|n| self.apps.get(n))
    }
}
