//! The view: the store's packages as `ROOT/App/Version/...` with
//! `ROOT/App/Current` links, for one generation (the live one, followed with
//! [`View::refresh`], or a fixed one).
//!
//! The root and App levels come from memory ([`GenerationTree`], one catalog
//! query per generation change). Below them everything is a package inode,
//! read from the catalog on demand: a lookup is one indexed query, a whole
//! directory listing is one query (never one per entry), and inode rows seen
//! in listings and lookups are kept in a bounded cache so that the `stat` and
//! `getxattr` calls that follow a listing do not query again. Package inodes
//! are immutable, so nothing cached about them ever needs invalidating; only
//! the in-memory top levels change when the generation does.
//!
//! Files are read through handles: [`View::open_file`] looks up the file's chunk
//! layout once (and keeps recent layouts), [`View::read`] serves byte ranges
//! through the block cache of [`crate::content`]. A handle keeps the content
//! it was opened with, whatever generation becomes live meanwhile and
//! whatever gc deletes: its packs are opened with it and stay open.
//!
//! [`View::refresh`] moves a live view to a new generation and returns the
//! [`Changes`], from which a transport that caches answers learns what to
//! invalidate. The names a move removes from App directories still resolve
//! (unlisted) for [`REMOVED_NAMES_GRACE`], so that a path walk through
//! `Current` that read the link just before the move does not fail.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use nexus_store::Store;
use nexus_store::catalog::{Catalog, InodeRow, kind};
use nexus_store::store::CATALOG_FILE;
use quick_cache::Weighter;
use quick_cache::sync::Cache;

use crate::attr::{Attr, Entry, FsStats, Kind, Listing};
use crate::changes::Changes;
use crate::content::{ContentReader, Layout};
use crate::error::{Result, ViewError};
use crate::generation::{App, GenerationTree};
use crate::ino::{self, Node};
use crate::pool::CatalogPool;

/// The name of the link to an App's chosen version.
pub const CURRENT: &str = "Current";

/// How long the names a generation switch removed from App directories still
/// resolve, unlisted (see [`View::with_removed_names_grace`]).
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

/// Which generation a view shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GenerationChoice {
    /// The live (newest) generation; [`View::refresh`] moves to a newer one.
    Live,
    /// Always this generation.
    Fixed(i64),
}

/// How a view is set up.
#[derive(Clone, Copy, Debug)]
pub struct ViewOptions {
    /// The generation shown.
    pub generation: GenerationChoice,
    /// Bytes of decoded blocks kept in memory.
    pub cache_bytes: u64,
    /// Catalog connections opened up front (one per request thread is right).
    pub connections: usize,
}

impl Default for ViewOptions {
    fn default() -> Self {
        ViewOptions {
            generation: GenerationChoice::Live,
            cache_bytes: DEFAULT_BLOCK_CACHE_MIB << 20,
            connections: 4,
        }
    }
}

/// Default size of the decoded-block cache, in MiB. Readers of different
/// packages at once each need their current blocks kept (and a file of a
/// newer version often reads chunks deduplicated into the older version's
/// blocks): on the benchmark corpus with four readers, 40 MiB decoded 20%
/// fewer blocks than 24 MiB, and a cold full read was about 1 s faster.
pub const DEFAULT_BLOCK_CACHE_MIB: u64 = 40;

/// Inode rows kept in memory after a listing or lookup: a read follows
/// its lookup closely, and the kernel keeps attributes for a day, so this
/// need not hold a whole tree.
const INODE_CACHE_ITEMS: usize = 32_768;
/// The attribute answering a regular file's BLAKE3 (64 lowercase hex
/// digits), as the store recorded it: not listed, never stored.
pub const CONTENT_HASH_XATTR: &[u8] = b"user.nexus.blake3";
/// The SELinux label attribute (see [`View::getxattr`]).
const SELINUX_XATTR: &[u8] = b"security.selinux";
/// Bytes of chunk layouts kept for files opened again.
const LAYOUT_CACHE_BYTES: u64 = 4 << 20;

#[derive(Clone)]
struct LayoutWeighter;

/// Bytes of package directory listings kept for [`View::dir_listing`].
const LISTING_CACHE_BYTES: u64 = 4 << 20;

/// Largest listing loaded to answer lookups (about 2,000 entries): in a
/// bigger directory names are looked up one by one.
const LOOKUP_LISTING_MAX_BYTES: u64 = LISTING_CACHE_BYTES / 16;
/// Package directories remembered as looked in (see [`View::lookup_listed`]).
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

impl Weighter<u64, Arc<Listing>> for ListingWeighter {
    fn weight(&self, _ino: &u64, listing: &Arc<Listing>) -> u64 {
        listing_weight(listing)
    }
}

/// Memory a listing takes: names plus the fixed part of each entry, roughly.
fn listing_weight(listing: &Listing) -> u64 {
    listing
        .entries
        .iter()
        .map(|e| e.name.len() as u64 + 96)
        .sum::<u64>()
        .max(1)
}

impl Weighter<i64, Arc<Layout>> for LayoutWeighter {
    fn weight(&self, _blob: &i64, layout: &Arc<Layout>) -> u64 {
        layout.weight()
    }
}

/// An open regular file: where its bytes were when it was opened. Its packs
/// are open too (see [`View::open_file`]), so the locations stay valid.
struct OpenFile {
    layout: Arc<Layout>,
}

/// What a handle refers to.
enum Handle {
    File(Arc<OpenFile>),
    Dir(Arc<Listing>),
}

/// The tree shown before the last refresh, while its names still resolve.
struct Recent {
    tree: Arc<GenerationTree>,
    until: Instant,
}

/// The transport-neutral file system over one store.
pub struct View {
    choice: GenerationChoice,
    pool: CatalogPool,
    tree: RwLock<Arc<GenerationTree>>,
    refreshing: Mutex<()>,
    recent: RwLock<Option<Recent>>,
    grace: Duration,
    inodes: Cache<i64, Arc<InodeRow>>,
    layouts: Cache<i64, Arc<Layout>, LayoutWeighter>,
    listings: Cache<u64, Arc<Listing>, ListingWeighter>,
    looked_in: Cache<u64, LookedIn>,
    content: ContentReader,
    handles: Mutex<HashMap<u64, Handle>>,
    next_handle: AtomicU64,
}

/// Largest catalog [`prefetch`] reads ahead.
const PREFETCH_MAX: u64 = 512 << 20;

/// Asks the kernel to read the catalog into its page cache in the
/// background. A cold walk or read of the mount looks up inodes, listings
/// and chunk lists all over the catalog: one sequential read ahead of time
/// replaces thousands of random 4 KiB reads from disk. The pages are the
/// kernel's (evictable, not the daemon's memory), the call returns at once
/// (mount time does not grow with the store), and a catalog too large to be
/// worth it is left alone. A failure only loses the optimisation.
fn prefetch(catalog: &Path) {
    use std::os::fd::AsRawFd;
    let Ok(file) = std::fs::File::open(catalog) else {
        return;
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
    if len <= PREFETCH_MAX {
        // SAFETY: posix_fadvise only reads its integer arguments.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_WILLNEED) };
    }
}

fn wanted(catalog: &Catalog, choice: GenerationChoice) -> Result<Option<i64>> {
    match choice {
        GenerationChoice::Live => Ok(catalog.current_generation()?),
        GenerationChoice::Fixed(n) => Ok(Some(n)),
    }
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

pub(crate) fn root_attr(tree: &GenerationTree) -> Attr {
    dir_attr(ino::ROOT, tree.apps.len(), tree.created)
}

pub(crate) fn app_attr(tree: &GenerationTree, app: &App) -> Result<Attr> {
    Ok(dir_attr(
        Node::App(app.anchor).ino()?,
        app.versions.len(),
        tree.created,
    ))
}

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

fn dot_entries(this: Attr, parent: Attr) -> [Entry; 2] {
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

impl View {
    /// Opens the store in `store_dir` and loads the generation to show.
    pub fn open(store_dir: &Path, options: ViewOptions) -> Result<View> {
        // Store::open checks that this is a store of a format we know.
        let packs_dir = Store::open(store_dir)?.packs_dir();
        let catalog = store_dir.join(CATALOG_FILE);
        prefetch(&catalog);
        let pool = CatalogPool::open(&catalog, options.connections)?;
        let tree = pool.with(|c| GenerationTree::load(c, wanted(c, options.generation)?))?;
        Ok(View {
            choice: options.generation,
            pool,
            tree: RwLock::new(Arc::new(tree)),
            refreshing: Mutex::new(()),
            recent: RwLock::new(None),
            grace: REMOVED_NAMES_GRACE,
            inodes: Cache::new(INODE_CACHE_ITEMS),
            layouts: Cache::with_weighter(4096, LAYOUT_CACHE_BYTES, LayoutWeighter),
            listings: Cache::with_weighter(1024, LISTING_CACHE_BYTES, ListingWeighter),
            looked_in: Cache::new(LOOKED_IN_ITEMS),
            content: ContentReader::new(&packs_dir, options.cache_bytes),
            handles: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
        })
    }

    /// Sets how long names a switch removed from App directories still
    /// resolve ([`REMOVED_NAMES_GRACE`] by default; zero: not at all).
    pub fn with_removed_names_grace(mut self, grace: Duration) -> View {
        self.grace = grace;
        self
    }

    /// How long names a switch removed from App directories still resolve.
    pub fn removed_names_grace(&self) -> Duration {
        self.grace
    }

    fn tree(&self) -> Arc<GenerationTree> {
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

    fn handles(&self) -> MutexGuard<'_, HashMap<u64, Handle>> {
        self.handles.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The generation shown (`None` while the store has none).
    pub fn generation(&self) -> Option<i64> {
        self.tree().id
    }

    /// For a live view: moves to the live generation if it is not the one
    /// shown, and says what changed (`None`: the view did not move). Costs
    /// one small query when nothing changed.
    ///
    /// Names the move removed from App directories still resolve for the
    /// grace ([`REMOVED_NAMES_GRACE`]); a transport that lets clients cache
    /// names must drop [`Changes::after_grace`] again once it has passed.
    pub fn refresh(&self) -> Result<Option<Changes>> {
        if self.choice != GenerationChoice::Live {
            return Ok(None);
        }
        // One refresh at a time, so that the changes returned describe
        // exactly the tree this call replaced.
        let _one = self.refreshing.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.tree();
        // A fresh snapshot: the commit that moved the live generation must
        // be seen, and the new tree loaded from that same snapshot.
        let moved = self.pool.with_fresh(|c| {
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
        // Before anyone can see the new tree: every request that does must
        // query a snapshot that holds its packages.
        self.pool.renew_all();
        // The old names first: a lookup that misses in the new tree must
        // find them.
        *self.recent.write().unwrap_or_else(|p| p.into_inner()) = Some(Recent {
            tree: old,
            until: Instant::now() + self.grace,
        });
        *self.tree.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(tree);
        Ok(Some(changes))
    }

    /// A package inode row, from the cache or the catalog.
    fn inode(&self, id: i64) -> Result<Arc<InodeRow>> {
        if let Some(row) = self.inodes.get(&id) {
            return Ok(row);
        }
        let row = self
            .pool
            .with(|c| Ok(c.inode_without_hash(id)?))?
            .ok_or(ViewError::NotFound)?;
        Ok(self.remember(row))
    }

    fn remember(&self, row: InodeRow) -> Arc<InodeRow> {
        let row = Arc::new(row);
        self.inodes.insert(row.id, row.clone());
        row
    }

    /// Answers a lookup in package directory `dir` from its listing when
    /// that is cached, or loads the listing at the second lookup there: a
    /// cold read of a tree looks up every name of every directory, and one
    /// range query per directory costs less than a query per name. `None`:
    /// look the name up on its own (first lookup, or a large directory).
    ///
    /// When it loads a listing it also loads where the chunks of the
    /// directory's files are (one query): names looked up one after another
    /// are usually files about to be read.
    fn lookup_listed(&self, id: i64, dir: u64, name: &[u8]) -> Result<Option<Option<Entry>>> {
        let listing = match self.listings.get(&dir) {
            Some(listing) => listing,
            None => match self.looked_in.get(&dir) {
                None => {
                    self.looked_in.insert(dir, LookedIn::Once);
                    return Ok(None);
                }
                Some(LookedIn::ByName) => return Ok(None),
                Some(LookedIn::Once) => {
                    let listing = self.dir_listing(dir)?;
                    if listing_weight(&listing) > LOOKUP_LISTING_MAX_BYTES {
                        self.looked_in.insert(dir, LookedIn::ByName);
                    } else {
                        self.load_dir_layouts(id)?;
                    }
                    listing
                }
            },
        };
        // `.` and `..` first, then the entries sorted by name (bytes).
        let named = listing.entries.get(2..).unwrap_or_default();
        Ok(Some(
            named
                .binary_search_by(|e| e.name.as_slice().cmp(name))
                .ok()
                .map(|i| named[i].clone()),
        ))
    }

    /// The attributes of inode `ino`.
    pub fn getattr(&self, ino: u64) -> Result<Attr> {
        let tree = self.tree();
        match Node::from_ino(ino).ok_or(ViewError::NotFound)? {
            Node::Root => Ok(root_attr(&tree)),
            Node::App(anchor) => self.at_app(anchor, app_attr),
            Node::Current(anchor) => self.at_app(anchor, |tree, app| {
                let target = app.current.as_deref().ok_or(ViewError::NotFound)?;
                current_attr(tree, app, target)
            }),
            Node::Package(id) => Attr::of_row(&*self.inode(id)?),
        }
    }

    /// Looks `name` up in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Entry> {
        let tree = self.tree();
        let attr = match Node::from_ino(parent).ok_or(ViewError::NotFound)? {
            Node::Root => {
                let name = std::str::from_utf8(name).map_err(|_| ViewError::NotFound)?;
                app_attr(&tree, tree.apps.get(name).ok_or(ViewError::NotFound)?)?
            }
            Node::App(anchor) => {
                let name = std::str::from_utf8(name).map_err(|_| ViewError::NotFound)?;
                self.at_app(anchor, |tree, app| match (name, &app.current) {
                    (CURRENT, Some(target)) => current_attr(tree, app, target),
                    _ => Attr::of_row(app.versions.get(name).ok_or(ViewError::NotFound)?),
                })?
            }
            Node::Current(_) => return Err(ViewError::NotDir),
            Node::Package(dir) => {
                if let Some(listed) = self.lookup_listed(dir, parent, name)? {
                    return listed.ok_or(ViewError::NotFound);
                }
                let row = self
                    .pool
                    .with(|c| Ok(c.lookup_without_hash(dir, name)?))?
                    .ok_or(ViewError::NotFound)?;
                return Ok(Entry {
                    name: name.to_vec(),
                    attr: Attr::of_row(&self.remember(row))?,
                    immutable: true,
                });
            }
        };
        Ok(Entry {
            name: name.to_vec(),
            attr,
            immutable: false,
        })
    }

    /// The whole listing of directory `ino`, `.` and `..` first.
    pub fn list(&self, ino: u64) -> Result<Listing> {
        let tree = self.tree();
        match Node::from_ino(ino).ok_or(ViewError::NotFound)? {
            Node::Root => {
                let root = root_attr(&tree);
                let mut entries = Vec::from(dot_entries(root.clone(), root));
                for app in tree.apps.values() {
                    entries.push(Entry {
                        name: app.name.as_bytes().to_vec(),
                        attr: app_attr(&tree, app)?,
                        immutable: false,
                    });
                }
                Ok(Listing {
                    entries,
                    immutable: false,
                })
            }
            Node::App(anchor) => {
                let app = tree.app(anchor).ok_or(ViewError::NotFound)?;
                let mut entries = Vec::from(dot_entries(app_attr(&tree, app)?, root_attr(&tree)));
                entries.extend(app_entries(&tree, app)?);
                Ok(Listing {
                    entries,
                    immutable: false,
                })
            }
            Node::Current(_) => Err(ViewError::NotDir),
            Node::Package(id) => {
                let this = self.inode(id)?;
                if this.kind != kind::DIR {
                    return Err(ViewError::NotDir);
                }
                let rows = self.pool.with(|c| Ok(c.dir_entries_without_hash(id)?))?;
                let this = Attr::of_row(&this)?;
                let parent = self.parent_attr(&tree, id)?.unwrap_or_else(|| this.clone());
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
                Ok(Listing {
                    entries,
                    immutable: true,
                })
            }
        }
    }

    /// The attributes of the directory holding package directory `id`, if
    /// known: the App for a package root of the generation shown, else the
    /// directory whose entry names it.
    fn parent_attr(&self, tree: &GenerationTree, id: i64) -> Result<Option<Attr>> {
        if let Some(anchor) = tree.root_app.get(&id) {
            return match tree.app(*anchor) {
                Some(app) => Ok(Some(app_attr(tree, app)?)),
                None => Ok(None),
            };
        }
        match self.pool.with(|c| Ok(c.parent_dir(id)?))? {
            Some(parent) => Ok(Some(Attr::of_row(&*self.inode(parent)?)?)),
            None => Ok(None),
        }
    }

    fn add_handle(&self, handle: Handle) -> u64 {
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.handles().insert(fh, handle);
        fh
    }

    /// The listing of directory `ino` for a transport that reads
    /// directories without opening them (FUSE once the kernel is told opens
    /// need no reply): a package directory's listing never changes and is
    /// kept for the next piece of the same listing; the root's and an
    /// App's are taken from the generation shown at each call.
    pub fn dir_listing(&self, ino: u64) -> Result<Arc<Listing>> {
        if let Some(listing) = self.listings.get(&ino) {
            return Ok(listing);
        }
        let listing = Arc::new(self.list(ino)?);
        if listing.immutable {
            self.listings.insert(ino, listing.clone());
        }
        Ok(listing)
    }

    /// Opens directory `ino` for reading: its listing is taken now and served
    /// from memory until [`View::release`].
    pub fn opendir(&self, ino: u64) -> Result<(u64, Arc<Listing>)> {
        let listing = Arc::new(self.list(ino)?);
        Ok((self.add_handle(Handle::Dir(listing.clone())), listing))
    }

    /// The listing of an open directory handle.
    pub fn listing(&self, fh: u64) -> Result<Arc<Listing>> {
        match self.handles().get(&fh) {
            Some(Handle::Dir(listing)) => Ok(listing.clone()),
            _ => Err(ViewError::BadHandle(fh)),
        }
    }

    /// Forgets a file or directory handle.
    pub fn release(&self, fh: u64) {
        self.handles().remove(&fh);
    }

    /// The target of symlink `ino`.
    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        match Node::from_ino(ino).ok_or(ViewError::NotFound)? {
            Node::Current(anchor) => self.at_app(anchor, |_, app| {
                let target = app.current.as_deref().ok_or(ViewError::NotFound)?;
                Ok(target.as_bytes().to_vec())
            }),
            Node::Package(id) => {
                let row = self.inode(id)?;
                match (&row.target, row.kind) {
                    (Some(target), kind::SYMLINK) => Ok(target.clone()),
                    _ => Err(ViewError::WrongKind),
                }
            }
            Node::Root | Node::App(_) => Err(ViewError::WrongKind),
        }
    }

    /// The extended attributes of `ino` (none outside packages).
    fn xattr_row(&self, ino: u64) -> Result<Option<Arc<InodeRow>>> {
        match Node::from_ino(ino).ok_or(ViewError::NotFound)? {
            Node::Package(id) => Ok(Some(self.inode(id)?)),
            _ => {
                self.getattr(ino)?;
                Ok(None)
            }
        }
    }

    /// The value of extended attribute `name` of `ino`.
    ///
    /// A missing `security.selinux` is "not supported" rather than "no such
    /// attribute": the store keeps no labels unless a package brought one,
    /// and `ls -l` asks for the label of every file it lists — a round
    /// trip to the daemon each, since the kernel caches no xattrs of FUSE
    /// file systems — until one answer says the file system does not
    /// support labels; then it stops asking for the whole mount. That alone
    /// made a warm `ls -lR` several times slower than on a local disk.
    pub fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>> {
        let row = self.xattr_row(ino)?;
        if name == CONTENT_HASH_XATTR {
            // Not listed by listxattr (the tree stays as packaged), but
            // answered: the hash the store recorded, for clients that
            // verify what they read (Rumk guests over virtio-fs).
            // Rows are read without it (one join fewer per lookup), so
            // look it up now.
            let blob = row
                .as_ref()
                .filter(|r| r.kind == kind::FILE)
                .and_then(|r| r.blob);
            let hash = match (row.as_ref().and_then(|r| r.content), blob) {
                (Some(hash), _) => Some(hash),
                (None, Some(blob)) => self.pool.with(|c| Ok(c.blob_hash(blob)?))?,
                (None, None) => None,
            };
            return match hash {
                Some(hash) => Ok(hash.to_hex().into_bytes()),
                None => Err(ViewError::NoXattr),
            };
        }
        let value = row.and_then(|row| {
            row.xattrs
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        });
        match value {
            Some(v) => Ok(v),
            None if name == SELINUX_XATTR => Err(ViewError::XattrUnsupported),
            None => Err(ViewError::NoXattr),
        }
    }

    /// The names of the extended attributes of `ino`, each followed by a NUL
    /// byte (the `listxattr(2)` format).
    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        if let Some(row) = self.xattr_row(ino)? {
            for (name, _) in &row.xattrs {
                out.extend_from_slice(name);
                out.push(0);
            }
        }
        Ok(out)
    }

    /// Totals of the generation shown, for `statfs`.
    pub fn statfs(&self) -> FsStats {
        let tree = self.tree();
        const BLOCK: u64 = 4096;
        FsStats {
            block_size: BLOCK as u32,
            blocks: tree.bytes.div_ceil(BLOCK),
            files: tree.files,
            name_max: 255,
        }
    }

    /// The layout of blob `blob`, from the cache or the catalog, checked
    /// against the `size` the inode says the content has.
    fn layout(&self, blob: i64, size: u64) -> Result<Arc<Layout>> {
        let layout = match self.layouts.get(&blob) {
            Some(layout) => layout,
            None => self.load_layout(blob, size, false)?,
        };
        if layout.size() != size {
            return Err(ViewError::Inconsistent(format!(
                "the chunks of a {size}-byte file add up to {} bytes",
                layout.size()
            )));
        }
        Ok(layout)
    }

    /// Caches the layouts of the files directly in package directory `id`
    /// that are not cached yet, from one query. Each layout's size is the
    /// sum of its chunks; reads check it against the inode's size.
    fn load_dir_layouts(&self, id: i64) -> Result<()> {
        let rows = self.pool.with(|c| Ok(c.dir_blob_chunks(id)?))?;
        let mut rows = rows.into_iter().peekable();
        while let Some((blob, first)) = rows.next() {
            let mut chunks = vec![first];
            while let Some((_, loc)) = rows.next_if(|(b, _)| *b == blob) {
                chunks.push(loc);
            }
            if self.layouts.get(&blob).is_none() {
                let size = chunks.iter().map(|c| u64::from(c.len)).sum();
                self.layouts
                    .insert(blob, Arc::new(Layout::new(chunks, size)?));
            }
        }
        Ok(())
    }

    /// Looks up where the chunks of `blob` are; `fresh` after a pack went
    /// missing (gc moved the chunks, and an older snapshot would still
    /// point at the old pack).
    fn load_layout(&self, blob: i64, size: u64, fresh: bool) -> Result<Arc<Layout>> {
        let query = |c: &Catalog| Ok(c.blob_chunks(blob)?);
        let chunks = if fresh {
            self.pool.with_fresh(query)?
        } else {
            self.pool.with(query)?
        };
        let layout = Arc::new(Layout::new(chunks, size)?);
        self.layouts.insert(blob, layout.clone());
        Ok(layout)
    }

    /// Reads up to `size` bytes at `offset` of regular file `ino` without an
    /// open handle (fewer only at the end of the file). This is the read path
    /// of transports that skip opens: package files never change, so the
    /// inode alone says what to read. A pack that gc removed since the chunk
    /// locations were cached is looked up again, once. Damaged data is an
    /// error, never returned.
    pub fn read_inode(&self, ino: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        self.read_inode_with(ino, offset, size, <[u8]>::to_vec)
    }

    /// [`View::read_inode`], handing the bytes to `consume` where they lie
    /// (in the block cache, or a per-thread buffer) instead of copying them
    /// into a new vector: a transport writes them to its channel from there.
    /// `consume` must not read from this view.
    pub fn read_inode_with<T>(
        &self,
        ino: u64,
        offset: u64,
        size: u32,
        consume: impl FnOnce(&[u8]) -> T,
    ) -> Result<T> {
        let (blob, file_size) = self.file_content(ino)?;
        let layout = self.layout(blob, file_size)?;
        // Only an unreadable pack lets `consume` go unused, and then it is
        // needed for the retry: keep it aside until a read succeeds.
        let mut consume = Some(consume);
        let mut attempt = |layout: &Layout| {
            self.content.read_with(layout, offset, size, |bytes| {
                consume.take().map(|f| f(bytes))
            })
        };
        let result = match attempt(&layout) {
            Err(ViewError::PackMissing(pack)) => {
                tracing::info!("{pack} is gone; looking up the chunk locations again");
                let fresh = self.load_layout(blob, file_size, true)?;
                attempt(&fresh)
            }
            other => other,
        }?;
        result.ok_or_else(|| ViewError::Inconsistent("a read was answered twice".into()))
    }

    /// The content (blob id) and size of regular file `ino`.
    fn file_content(&self, ino: u64) -> Result<(i64, u64)> {
        let Some(Node::Package(id)) = Node::from_ino(ino) else {
            return Err(match self.getattr(ino)?.kind {
                Kind::Dir => ViewError::IsDir,
                _ => ViewError::WrongKind,
            });
        };
        let row = self.inode(id)?;
        match row.kind {
            kind::FILE => {}
            kind::DIR => return Err(ViewError::IsDir),
            _ => return Err(ViewError::WrongKind),
        }
        let blob = row
            .blob
            .ok_or_else(|| ViewError::Inconsistent(format!("file inode {id} has no content")))?;
        Ok((blob, row.size))
    }

    /// Opens regular file `ino` for reading; returns the handle.
    pub fn open_file(&self, ino: u64) -> Result<u64> {
        let (blob, file_size) = self.file_content(ino)?;
        let layout = self.layout(blob, file_size)?;
        // Open the packs now rather than at the first read: the reader keeps
        // pack files open, so whatever `nip remove` and gc do from here on
        // (deleting the package, its packs, or moving its chunks to a new
        // pack), this handle reads the bytes it opened, as an unlinked file
        // would. A pack gone already means gc moved the chunks since the
        // layout was looked up: look again, once.
        let layout = match self.content.open_packs(&layout) {
            Ok(()) => layout,
            Err(ViewError::PackMissing(pack)) => {
                tracing::info!("{pack} is gone; looking up the chunk locations again");
                let fresh = self.load_layout(blob, file_size, true)?;
                self.content.open_packs(&fresh)?;
                fresh
            }
            Err(e) => return Err(e),
        };
        let file = OpenFile { layout };
        Ok(self.add_handle(Handle::File(Arc::new(file))))
    }

    /// Reads up to `size` bytes at `offset` of the open file `fh` (fewer only
    /// at the end of the file). Damaged data is an error, never returned.
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        self.read_with(fh, offset, size, <[u8]>::to_vec)
    }

    /// [`View::read`], handing the bytes to `consume` where they lie (see
    /// [`View::read_inode_with`]).
    pub fn read_with<T>(
        &self,
        fh: u64,
        offset: u64,
        size: u32,
        consume: impl FnOnce(&[u8]) -> T,
    ) -> Result<T> {
        let file = match self.handles().get(&fh) {
            Some(Handle::File(file)) => file.clone(),
            _ => return Err(ViewError::BadHandle(fh)),
        };
        self.content.read_with(&file.layout, offset, size, consume)
    }
}
