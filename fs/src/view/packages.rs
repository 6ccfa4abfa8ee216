//! Everything below an App's version directories: package inodes, read from
//! the catalog on demand and kept in bounded caches.
//!
//! A lookup is one indexed query, a whole directory listing is one query
//! (never one per entry), and inode rows seen in listings and lookups are
//! kept so that the `stat` and `getxattr` calls that follow a listing do
//! not query again. Package inodes are immutable and catalog ids are never
//! reused, so nothing cached here ever goes stale.
//!
//! **Membership.** A client may send any inode number (a VM guest is not
//! trusted), and a package inode number encodes a catalog id: every row
//! read here is checked to belong to a package the view has served (the
//! generation shown, or one it showed before since it opened — files opened
//! then must keep reading). A package of another generation is "no such
//! file", exactly like an id that never existed; an id that existed and
//! that gc has since deleted is stale (`ESTALE`).

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use nexus_store::catalog::{DirEntryRow, InodeRow};
use nexus_store::read::Reader;
use nexus_store::tree::InodeType;
use quick_cache::Weighter;
use quick_cache::sync::Cache;

use crate::attr::{Attr, Entry, Listing};
use crate::error::{Result, ViewError};
use crate::generation::GenerationTree;

use super::namespace::dot_entries;

/// Inode rows kept in memory after a listing or lookup: a read follows its
/// lookup closely, and the kernel keeps attributes for a day, so this need
/// not hold a whole tree.
const INODE_CACHE_ITEMS: usize = 32_768;

/// Bytes of package directory listings kept.
const LISTING_CACHE_BYTES: u64 = 4 << 20;

/// Largest listing loaded to answer lookups (about 2,000 entries): in a
/// bigger directory names are looked up one by one.
const LOOKUP_LISTING_MAX_BYTES: u64 = LISTING_CACHE_BYTES / 16;

/// Package directories remembered as looked in (see
/// [`Packages::lookup_listed`]).
const LOOKED_IN_ITEMS: usize = 4096;

/// What lookups in a package directory whose listing is not cached do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LookedIn {
    /// One name was looked up: the next lookup loads the listing.
    Once,
    /// The listing is too large to load for lookups.
    ByName,
}

#[derive(Clone)]
struct ListingWeighter;

impl Weighter<i64, Arc<Listing>> for ListingWeighter {
    fn weight(&self, _dir: &i64, listing: &Arc<Listing>) -> u64 {
        listing_weight(listing)
    }
}

/// Memory a listing takes: names plus the fixed part of each entry, roughly.
pub fn listing_weight(listing: &Listing) -> u64 {
    listing
        .entries
        .iter()
        .map(|e| e.name.len() as u64 + 96)
        .sum::<u64>()
        .max(1)
}

/// The package inodes of one view.
pub(crate) struct Packages {
    inodes: Cache<i64, Arc<InodeRow>>,
    listings: Cache<i64, Arc<Listing>, ListingWeighter>,
    looked_in: Cache<i64, LookedIn>,
    /// The packages of every generation the view has shown.
    served: RwLock<HashSet<i64>>,
}

impl Packages {
    /// Package inodes of the packages of `tree`.
    pub(crate) fn new(tree: &GenerationTree) -> Packages {
        Packages {
            inodes: Cache::new(INODE_CACHE_ITEMS),
            listings: Cache::with_weighter(1024, LISTING_CACHE_BYTES, ListingWeighter),
            looked_in: Cache::new(LOOKED_IN_ITEMS),
            served: RwLock::new(tree.packages.clone()),
        }
    }

    /// Serves the packages of `tree` too (the view is about to show it).
    pub(crate) fn serve(&self, tree: &GenerationTree) {
        let mut served = self.served.write().unwrap_or_else(|p| p.into_inner());
        served.extend(tree.packages.iter().copied());
    }

    /// Serves `packages` too (packages a client holds inodes of).
    pub(crate) fn serve_packages(&self, packages: impl IntoIterator<Item = i64>) {
        let mut served = self.served.write().unwrap_or_else(|p| p.into_inner());
        served.extend(packages);
    }

    fn is_served(&self, package: i64) -> bool {
        self.served
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&package)
    }

    /// Package inode `id`, from the cache or the catalog, if it belongs to a
    /// package the view serves.
    pub(crate) fn inode(&self, reader: &Reader, id: i64) -> Result<Arc<InodeRow>> {
        if let Some(row) = self.inodes.get(&id) {
            return Ok(row);
        }
        let row = reader.query(|c| {
            match c.inode_without_hash(id)? {
                Some(row) => Ok(Some(row)),
                // Gone: stale if the catalog once handed the id out.
                None if c.inode_id_issued(id)? => Err(ViewError::Stale),
                None => Ok(None),
            }
        })?;
        match row {
            Some(row) if self.is_served(row.package) => Ok(self.remember(row)),
            _ => Err(ViewError::NotFound),
        }
    }

    /// Caches a row read from a directory the view serves (its entries are
    /// of the same package).
    fn remember(&self, row: InodeRow) -> Arc<InodeRow> {
        let row = Arc::new(row);
        self.inodes.insert(row.id, row.clone());
        row
    }

    /// Looks `name` up in package directory `dir`.
    ///
    /// From the second lookup in a directory on, lookups are answered from
    /// its listing (loaded then, with where its files' chunks are, since
    /// names looked up one after another are usually files about to be
    /// read): a cold read of a tree looks up every name of every directory,
    /// and one range query per directory costs less than one per name. A
    /// directory whose listing is too large is looked up name by name.
    pub(crate) fn lookup(
        &self,
        reader: &Reader,
        dir: i64,
        name: &[u8],
        parent: impl FnOnce() -> Result<Option<Attr>>,
    ) -> Result<Entry> {
        let this = self.inode(reader, dir)?;
        if this.kind != InodeType::Dir {
            return Err(ViewError::NotDir);
        }
        let listing = match self.listings.get(&dir) {
            Some(listing) => Some(listing),
            None => match self.looked_in.get(&dir) {
                None => {
                    self.looked_in.insert(dir, LookedIn::Once);
                    None
                }
                Some(LookedIn::ByName) => None,
                Some(LookedIn::Once) => {
                    let listing = self.listing(reader, dir, parent)?;
                    if listing_weight(&listing) > LOOKUP_LISTING_MAX_BYTES {
                        self.looked_in.insert(dir, LookedIn::ByName);
                    } else {
                        reader.preload_dir_layouts(dir)?;
                    }
                    Some(listing)
                }
            },
        };
        if let Some(listing) = listing {
            // `.` and `..` first, then the entries sorted by name (bytes).
            let named = listing.entries.get(2..).unwrap_or_default();
            return named
                .binary_search_by(|e| e.name.as_slice().cmp(name))
                .map(|i| named[i].clone())
                .map_err(|_| ViewError::NotFound);
        }
        let row = reader
            .query(|c| c.lookup_without_hash(dir, name))?
            .ok_or(ViewError::NotFound)?;
        Ok(Entry {
            name: name.to_vec(),
            attr: Attr::of_row(&self.remember(row))?,
            immutable: true,
        })
    }

    /// The listing of package directory `dir`, `.` and `..` first, shared:
    /// it never changes, and is kept for the next reader. `parent` gives the
    /// attributes of the directory holding it (`None`: it is its own, as a
    /// root whose App is gone).
    pub(crate) fn listing(
        &self,
        reader: &Reader,
        dir: i64,
        parent: impl FnOnce() -> Result<Option<Attr>>,
    ) -> Result<Arc<Listing>> {
        if let Some(listing) = self.listings.get(&dir) {
            return Ok(listing);
        }
        let this = self.inode(reader, dir)?;
        if this.kind != InodeType::Dir {
            return Err(ViewError::NotDir);
        }
        let rows = reader.query(|c| c.dir_entries_without_hash(dir))?;
        let this = Attr::of_row(&this)?;
        let parent = parent()?.unwrap_or_else(|| this.clone());
        let mut entries = Vec::from(dot_entries(this, parent));
        entries.reserve(rows.len());
        for row in rows {
            let inode = self.remember(row.inode);
            entries.push(Entry {
                name: row.name,
                attr: Attr::of_row(&inode)?,
                immutable: true,
            });
        }
        let listing = Arc::new(Listing {
            entries,
            immutable: true,
        });
        self.listings.insert(dir, listing.clone());
        Ok(listing)
    }

    /// The entries of package directory `dir`, rows whole, none kept: see
    /// [`View::package_entries_unkept`](super::View::package_entries_unkept).
    /// Every entry must belong to a package the view serves, as an inode
    /// looked up must; a directory's entries are of its package.
    pub(crate) fn entries_unkept(&self, reader: &Reader, dir: i64) -> Result<Vec<DirEntryRow>> {
        let rows = reader.query(|c| c.dir_entries_without_hash(dir))?;
        let served = self.served.read().unwrap_or_else(|p| p.into_inner());
        if rows.iter().any(|row| !served.contains(&row.inode.package)) {
            return Err(ViewError::NotFound);
        }
        Ok(rows)
    }

    /// The attributes of the directory whose entry names package inode `id`
    /// (for a package root, the caller knows its App).
    pub(crate) fn parent_attr(&self, reader: &Reader, id: i64) -> Result<Option<Attr>> {
        match reader.query(|c| c.parent_dir(id))? {
            Some(parent) => Ok(Some(Attr::of_row(&*self.inode(reader, parent)?)?)),
            None => Ok(None),
        }
    }
}
