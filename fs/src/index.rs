//! The Index, as GoboLinux's `/System/Index`: one tree that merges the
//! standard directories of every App's `Current` version, as symlinks into
//! the `/Programs` mount, so that `PATH=INDEX/bin` finds every program.
//!
//! # What it holds
//!
//! The index root always lists the directories of [`layout`]: `bin`,
//! `include`, `lib`, `libexec`, `sbin` and `share`. Each is merged from a
//! list of *sources*, paths inside every App's `Current` version, so that
//! both trees laid out GoboLinux-style (`bin/` at the package root) and
//! Debian packages unpacked with `dpkg-deb -x` (`usr/bin/`) are found:
//!
//! | index | sources, in rank order within one App |
//! |---|---|
//! | `bin` | `bin`, `usr/bin`, `usr/games` |
//! | `include` | `include`, `usr/include` |
//! | `lib` | `lib`, `usr/lib`, `lib/TRIPLET`, `usr/lib/TRIPLET` |
//! | `libexec` | `libexec`, `usr/libexec` |
//! | `sbin` | `sbin`, `usr/sbin` |
//! | `share` | `share`, `usr/share` |
//!
//! `TRIPLET` is the Debian multiarch tuple of the machine ([`MULTIARCH`],
//! `x86_64-linux-gnu` on amd64): Debian puts shared libraries in
//! `usr/lib/x86_64-linux-gnu`, and taking that directory's content into
//! `lib` too means `LD_LIBRARY_PATH=INDEX/lib` (or one `ld.so.conf` line)
//! finds them. `INDEX/lib/x86_64-linux-gnu` exists as well, merged like any
//! subdirectory. `etc` is left out on purpose: configuration belongs to the
//! system, not to packages (GoboLinux keeps it apart, in `/System/Settings`),
//! and `lib64` holds only the dynamic loader, which is found by its absolute
//! path.
//!
//! A name whose highest-ranked source is a file or a symlink is a symlink in
//! the index, to `MOUNT/App/Current/SOURCE/…/name`: through `Current`, so a
//! version switch changes what the link reaches without changing the link.
//! A name whose highest-ranked source is a directory is a real directory in
//! the index, merged recursively by the same rule from every source that has
//! that name as a directory. Symlinks in packages are never followed while
//! merging: a symlink to a directory is a leaf.
//!
//! # The clash rule
//!
//! Sources are ranked first by provenance: every App whose `Current`
//! package is unrestricted ranks before every App whose `Current` package is
//! restricted (a `.npk` whose signer's key is trusted only for some Apps,
//! `restricted_to` in the catalog). Then by App name (bytewise ascending:
//! `alpha` before `beta`, `Zed` before `abc`), then, within one App, by the
//! order of the table above (`bin` before `usr/bin`). For every name the
//! highest-ranked source that has it decides: its file or symlink wins
//! outright (lower-ranked entries of that name are hidden, directories
//! included); if it is a directory, the lower-ranked directories of that
//! name are merged into it and lower-ranked files of that name are hidden.
//!
//! Provenance comes first because the name order is the attacker's choice:
//! a key trusted only for `acme-*` would otherwise ship `acme-tools` with
//! `bin/ls`, sort before `coreutils`, and own `INDEX/bin/ls` for everyone.
//! Ranked last, a restricted App decides only names no unrestricted App
//! has, at every depth (the rank order holds in every merged directory):
//! neither its files nor its directories hide an unrestricted entry, and a
//! directory of its own only merges into an unrestricted one of that name,
//! and only if it lets everyone list and search as much as that one does
//! (see below).
//! Its links point into its own `App/Current`, like every App's.
//!
//! # Owners and modes
//!
//! A merged directory lists names from every source, so it may show no user
//! more than each source directory would through `/Programs`, where the
//! kernel checks its mode (`default_permissions`, as here): a package's
//! 0700 directory (polkit's `usr/share/polkit-1/rules.d`) must not be
//! listed to everyone under `INDEX/share`. Its owner, group and mode are
//! derived from its sources, and for a top directory from the directories
//! on the way to them inside each package, by the rule of `index/access.rs`
//! (`0755 ∩ 0700 = 0700`; a source of another owner that alone is
//! restrictive keeps its owner). A restricted App's directory that would
//! narrow a directory an unrestricted App has is left out of it instead,
//! so that it cannot hide that directory's names from other users.
//! Every answer that carries attributes
//! (lookups, `getattr`, listings and so the kernel view's image, which is
//! written from them) gives these. The root is root's 0755, as is a top
//! directory no App provides; links are 0777, their targets decide.
//!
//! # Numbers, caching and generations
//!
//! Index inode numbers are `4·x + 3` (see [`crate::ino`]), never a number of
//! the main view; the root is `3` ([`ROOT`]). `x` is given to each index path
//! the first time it is seen and never reused by this process, so a number
//! names the same path in every generation (the kernel never sees a number
//! change meaning), though not across remounts. Directories report a link
//! count of 1, the customary "unknown": counting subdirectories would mean
//! merging every one of them.
//!
//! The index follows the generation its [`View`] shows. A merged directory
//! is computed on first use, from one directory-listing query per source
//! directory (never one per entry), and kept for the generation; the
//! listings themselves are of immutable package directories and stay in a
//! bounded cache across generations, so a new generation costs queries only
//! for packages it adds. [`Index::refresh`] reports which names the kernel
//! may hold that a generation change made stale, for transports that can
//! invalidate; everything in the index is generation-bound, so transports
//! also give it short cache lifetimes.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, RwLock};

use nexus_store::catalog::Catalog;
use nexus_store::tree::InodeType;
use quick_cache::Weighter;
use quick_cache::sync::Cache;

use crate::attr::{Attr, Entry, Kind, Listing, enforced_mode};
use crate::error::{Result, ViewError};
use crate::gate::Gate;
use crate::generation::GenerationTree;
use crate::view::{CURRENT, View};

mod access;

use access::Access;

/// The index root's inode number (`4·0 + 3`). FUSE calls its root `1`; the
/// adapter translates.
pub const ROOT: u64 = 3;

/// The Debian multiarch tuple of the machine this was built for, whose
/// library directories also feed the index's `lib`.
pub const MULTIARCH: Option<&str> = multiarch();

const fn multiarch() -> Option<&'static str> {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        None
    } else if cfg!(target_arch = "x86_64") {
        Some("x86_64-linux-gnu")
    } else if cfg!(target_arch = "aarch64") {
        Some("aarch64-linux-gnu")
    } else if cfg!(target_arch = "x86") {
        Some("i386-linux-gnu")
    } else if cfg!(target_arch = "riscv64") {
        Some("riscv64-linux-gnu")
    } else {
        None
    }
}

/// One directory of the index root and where its content comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexDir {
    /// Its name under the index root.
    pub name: &'static str,
    /// Paths inside an App's `Current` version merged into it, highest rank
    /// first.
    pub sources: Vec<String>,
}

/// The directories of the index root, sorted by name, with their sources
/// (the table in the [module documentation](self)).
pub fn layout() -> &'static [IndexDir] {
    static LAYOUT: LazyLock<Vec<IndexDir>> = LazyLock::new(|| {
        let dir = |name, sources: &[&str]| IndexDir {
            name,
            sources: sources.iter().map(|s| s.to_string()).collect(),
        };
        let mut lib = dir("lib", &["lib", "usr/lib"]);
        if let Some(triplet) = MULTIARCH {
            lib.sources.push(format!("lib/{triplet}"));
            lib.sources.push(format!("usr/lib/{triplet}"));
        }
        vec![
            dir("bin", &["bin", "usr/bin", "usr/games"]),
            dir("include", &["include", "usr/include"]),
            lib,
            dir("libexec", &["libexec", "usr/libexec"]),
            dir("sbin", &["sbin", "usr/sbin"]),
            dir("share", &["share", "usr/share"]),
        ]
    });
    &LAYOUT
}

/// What a generation change made stale in the index, for a transport that
/// can tell its clients (FUSE invalidation notifications).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexChanges {
    /// The generation the index shows now.
    pub generation: Option<i64>,
    /// `(directory inode, name)` of entries that disappeared, appeared (a
    /// client may cache that a name does not exist) or now name something
    /// else (another link target, a directory instead of a link or the
    /// reverse), in directories that had been listed or looked in.
    pub entries: Vec<(u64, Vec<u8>)>,
    /// Symlinks whose target changed (their cached attributes and target
    /// are stale).
    pub inodes: Vec<u64>,
    /// Directories whose listing changed or that are gone (a cached
    /// listing is stale).
    pub dirs: Vec<u64>,
}

impl IndexChanges {
    /// True when nothing needs invalidating.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.inodes.is_empty() && self.dirs.is_empty()
    }
}

/// Entries of package directories kept across generations (their sum of
/// names, weighed by entry).
const LISTING_CACHE_ENTRIES: u64 = 1 << 18;
/// Superseded generations kept for [`Index::refresh`] to compare; beyond
/// this the oldest is forgotten and the transport's short cache lifetime
/// covers what it held.
const RETIRED_MAX: usize = 4;

/// How long a superseded generation is compared again after the move: a
/// request that took the old generation just before the move may compute
/// a directory of it after the first comparison, and its answer must be
/// invalidated too. Such a request takes milliseconds.
pub const LATE_ANSWERS: std::time::Duration = std::time::Duration::from_secs(2);

/// A superseded generation and what of it was compared already.
struct Retired {
    generation: Arc<IndexGeneration>,
    /// When it was superseded.
    since: std::time::Instant,
    /// Paths of the directories compared so far.
    compared: std::collections::HashSet<Arc<[u8]>>,
    /// Whether a [`Index::refresh`] reported the move away from it.
    reported: bool,
}

/// One entry of a package directory, as the merge needs it.
#[derive(Debug)]
struct Child {
    name: Box<[u8]>,
    id: i64,
    kind: InodeType,
    /// Its owner, group and mode, which a merged directory may not exceed.
    access: Access,
}

#[derive(Clone)]
struct ListingWeighter;

impl Weighter<i64, Arc<[Child]>> for ListingWeighter {
    fn weight(&self, _dir: &i64, children: &Arc<[Child]>) -> u64 {
        children.len() as u64 + 1
    }
}

/// A package directory feeding an index directory.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Source {
    /// The App whose `Current` version holds it.
    app: Arc<str>,
    /// Its catalog inode id.
    dir: i64,
    /// Its path inside the App's `Current` version.
    rel: Arc<[u8]>,
    /// Who may list it through `/Programs`: its own access, and for a top
    /// directory's source also that of the directories on the way to it.
    access: Access,
    /// Whether the App's `Current` package is restricted.
    restricted: bool,
}

/// What a name in an index directory is.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Merged {
    /// A directory merged from these sources, highest rank first, that
    /// gives no one more than `access` (the [`Access::meet`] of theirs).
    Dir {
        /// Its owner, group and mode.
        access: Access,
        /// Its sources.
        sources: Vec<Source>,
    },
    /// A symlink with this target.
    Link(Vec<u8>),
}

impl Merged {
    fn kind(&self) -> Kind {
        match self {
            Merged::Dir { .. } => Kind::Dir,
            Merged::Link(_) => Kind::Symlink,
        }
    }
}

/// Merges `source` into a directory merged from `sources` (higher-ranked)
/// that gives no one more than `access`, narrowing that to what `source`
/// gives; false if it is left out instead.
///
/// A restricted App's source is left out of a directory an unrestricted
/// App has when it would take from anyone a permission to list or search
/// it (write means nothing here): otherwise a key trusted only for `acme-*`
/// would hide all of `INDEX/bin` from every user but root with a 0700
/// `bin`, where the clash rule lets it hide no unrestricted name.
fn add_source(access: &mut Access, sources: &mut Vec<Source>, source: Source) -> bool {
    let Some(first) = sources.first() else {
        *access = source.access;
        sources.push(source);
        return true;
    };
    let met = access.meet(source.access);
    let read_search = |a: Access| (a.uid, a.gid, a.perm & 0o555);
    if source.restricted && !first.restricted && read_search(met) != read_search(*access) {
        return false;
    }
    *access = met;
    sources.push(source);
    true
}

/// A merged index directory.
struct MergedDir {
    /// Its owner, group and mode, from its sources.
    access: Access,
    /// Name → what it is, sorted bytewise.
    entries: BTreeMap<Box<[u8]>, Merged>,
}

/// An App whose `Current` version feeds the index.
struct RankedApp {
    name: Arc<str>,
    /// The root inode of its `Current` version.
    root: i64,
    /// Who may search that root.
    way: Access,
    /// Whether its `Current` package is restricted.
    restricted: bool,
}

/// The index of one generation: its Apps and the directories computed so
/// far.
struct IndexGeneration {
    id: Option<i64>,
    created: i64,
    /// The Apps with a `Current` version, in rank order: unrestricted Apps
    /// first, each part sorted by name.
    apps: Vec<RankedApp>,
    /// Index path (`bin`, `share/man/man1`) → its merged directory.
    dirs: Mutex<HashMap<Arc<[u8]>, Arc<MergedDir>>>,
    /// Directory inode → its listing, as handed to each opener: a program
    /// lists the same directories at every start.
    listings: Mutex<HashMap<u64, Arc<Listing>>>,
}

impl IndexGeneration {
    fn new(tree: &GenerationTree) -> IndexGeneration {
        let mut apps: Vec<RankedApp> = tree
            .apps
            .values()
            .filter_map(|app| {
                let root = app.versions.get(app.current.as_deref()?)?;
                Some(RankedApp {
                    name: Arc::from(app.name.as_str()),
                    root: root.id,
                    way: Access::of_dir(root.uid, root.gid, enforced_mode(root)).to_pass(),
                    restricted: app.current_restricted,
                })
            })
            .collect();
        // The clash rule: provenance first (false, unrestricted, sorts
        // first), then the name. The tree's Apps come sorted by name, and a
        // stable sort by provenance keeps that order within each part.
        apps.sort_by_key(|app| app.restricted);
        IndexGeneration {
            id: tree.id,
            created: tree.created,
            apps,
            dirs: Mutex::new(HashMap::new()),
            listings: Mutex::new(HashMap::new()),
        }
    }

    fn dirs(&self) -> MutexGuard<'_, HashMap<Arc<[u8]>, Arc<MergedDir>>> {
        // The map stays consistent even if a holder panicked.
        self.dirs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn listings(&self) -> MutexGuard<'_, HashMap<u64, Arc<Listing>>> {
        self.listings.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Index paths and the numbers given to them.
#[derive(Default)]
struct Numbers {
    by_path: HashMap<Arc<[u8]>, u64>,
    /// `x` → path; `x = 0` is the root (the empty path).
    paths: Vec<Arc<[u8]>>,
}

impl Numbers {
    /// Only the root numbered.
    fn root_only() -> Numbers {
        Numbers {
            by_path: HashMap::from([(Arc::from(&b""[..]), 0)]),
            paths: vec![Arc::from(&b""[..])],
        }
    }
}

/// `PARENT/NAME` as an index path (no leading slash; the root is empty).
fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut path = Vec::with_capacity(parent.len() + 1 + name.len());
    if !parent.is_empty() {
        path.extend_from_slice(parent);
        path.push(b'/');
    }
    path.extend_from_slice(name);
    path
}

/// Splits an index path into its parent and last name.
fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

/// The transport-neutral Index over a [`View`]'s generation.
pub struct Index {
    view: Arc<View>,
    /// Where the view is mounted, as bytes without a trailing slash.
    mount: Vec<u8>,
    numbers: RwLock<Numbers>,
    /// Passed before giving a new path a number; closed while a takeover
    /// copies the numbers ([`Index::freeze_numbers`]).
    numbering: Gate,
    listings: Cache<i64, Arc<[Child]>, ListingWeighter>,
    current: RwLock<Arc<IndexGeneration>>,
    retired: Mutex<Vec<Retired>>,
}

impl Index {
    /// The index of the generation `view` shows, with links into `mount`
    /// (where `view` is mounted; an absolute path). It reads through the
    /// view's store reader and follows the view's generation tree: nothing
    /// is loaded twice.
    pub fn open(view: Arc<View>, mount: &Path) -> Index {
        Index::with_numbers(view, mount, Numbers::root_only())
    }

    /// The index of `view` mounted at `mount`, as [`Index::open`], that
    /// keeps the numbers another daemon gave: `paths[x]` is the path of
    /// number `4·x + 3`, as [`Index::freeze_numbers`] returned them (the
    /// kernel still holds those numbers). `paths` must start with the root
    /// (the empty path) and name no path twice.
    pub fn open_numbered(view: Arc<View>, mount: &Path, paths: Vec<Vec<u8>>) -> Result<Index> {
        let mut numbers = Numbers::default();
        for path in paths {
            let path: Arc<[u8]> = Arc::from(path);
            let x = numbers.paths.len() as u64;
            if numbers.by_path.insert(path.clone(), x).is_some() {
                return Err(ViewError::Inconsistent(
                    "index numbers hand over a path twice".into(),
                ));
            }
            numbers.paths.push(path);
        }
        if numbers.paths.first().is_none_or(|root| !root.is_empty()) {
            return Err(ViewError::Inconsistent(
                "index numbers must start with the root".into(),
            ));
        }
        Ok(Index::with_numbers(view, mount, numbers))
    }

    fn with_numbers(view: Arc<View>, mount: &Path, numbers: Numbers) -> Index {
        let generation = view.tree();
        let mut mount = mount.as_os_str().as_encoded_bytes().to_vec();
        while mount.len() > 1 && mount.ends_with(b"/") {
            mount.pop();
        }
        Index {
            view,
            mount,
            numbers: RwLock::new(numbers),
            numbering: Gate::default(),
            listings: Cache::with_weighter(16_384, LISTING_CACHE_ENTRIES, ListingWeighter),
            current: RwLock::new(Arc::new(IndexGeneration::new(&generation))),
            retired: Mutex::new(Vec::new()),
        }
    }

    /// Stops new numbers from being given, waiting for one being given
    /// now, and returns the path of every number given so far (`paths[x]`
    /// for `4·x + 3`): what a daemon taking over the index mount needs
    /// ([`Index::open_numbered`]). A request that would give a new number
    /// waits until [`Index::thaw_numbers`].
    pub fn freeze_numbers(&self) -> Vec<Vec<u8>> {
        self.numbering.close();
        let numbers = self.numbers.read().unwrap_or_else(|p| p.into_inner());
        numbers.paths.iter().map(|p| p.to_vec()).collect()
    }

    /// Lets new numbers be given again after [`Index::freeze_numbers`].
    pub fn thaw_numbers(&self) {
        self.numbering.open();
    }

    /// The generation the index shows (`None` for an empty store).
    pub fn generation(&self) -> Option<i64> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).id
    }

    /// The index of the generation the view shows now, started afresh if
    /// the view moved since the last call.
    fn sync(&self) -> Result<Arc<IndexGeneration>> {
        let tree = self.view.tree();
        let shown = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if shown.id == tree.id {
            return Ok(shown);
        }
        // The view renewed its snapshots before it published this tree, so
        // every query from here on sees its packages.
        let fresh = Arc::new(IndexGeneration::new(&tree));
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        if current.id == tree.id {
            // Another request thread loaded it meanwhile.
            return Ok(current.clone());
        }
        let old = std::mem::replace(&mut *current, fresh.clone());
        drop(current);
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        retired.push(Retired {
            generation: old,
            since: std::time::Instant::now(),
            compared: Default::default(),
            reported: false,
        });
        if retired.len() > RETIRED_MAX {
            retired.remove(0);
        }
        Ok(fresh)
    }

    /// Moves the index to the generation the view shows and reports what
    /// that made stale since the previous call (`None` when the generation
    /// did not change and no late answer was found stale).
    /// Every directory of the superseded generations that was computed
    /// (listed or looked in) is computed again for the new one and compared
    /// name by name; for [`LATE_ANSWERS`] after a move, each call also
    /// compares the directories of a superseded generation computed since
    /// (by requests that took it just before the move).
    pub fn refresh(&self) -> Result<Option<IndexChanges>> {
        let now = self.sync()?;
        let mut retired =
            std::mem::take(&mut *self.retired.lock().unwrap_or_else(|p| p.into_inner()));
        if retired.is_empty() {
            return Ok(None);
        }
        let mut changes = IndexChanges {
            generation: now.id,
            ..IndexChanges::default()
        };
        let moved = retired.iter().any(|old| !old.reported);
        for old in &mut retired {
            old.reported = true;
            let dirs: Vec<(Arc<[u8]>, Arc<MergedDir>)> = old
                .generation
                .dirs()
                .iter()
                .filter(|(p, _)| !old.compared.contains(*p))
                .map(|(p, d)| (p.clone(), d.clone()))
                .collect();
            for (path, before) in dirs {
                old.compared.insert(path.clone());
                let dir_ino = self.number(&path)?;
                // A directory gone in the new generation is reported by its
                // parent (computed too, since it was looked in to reach it);
                // its own listing is stale.
                let Some(after) = self.dir(&now, &path)? else {
                    changes.dirs.push(dir_ino);
                    continue;
                };
                // Its owner or mode changed (a package with a private
                // directory came or went): the kernel checks permissions
                // with the attributes it holds, which must not outlive
                // this.
                if before.access != after.access {
                    changes.inodes.push(dir_ino);
                }
                let mut changed = false;
                for (name, was) in before.entries.iter() {
                    match (was, after.entries.get(name)) {
                        (Merged::Dir { access: a, .. }, Some(Merged::Dir { access: b, .. }))
                            if a == b => {}
                        (Merged::Dir { .. }, Some(Merged::Dir { .. })) => {
                            // Only its attributes are stale (it may never
                            // have been computed, just listed).
                            changes.inodes.push(self.number(&join(&path, name))?);
                        }
                        (Merged::Link(a), Some(Merged::Link(b))) if a == b => {}
                        (was, _) => {
                            changed = true;
                            changes.entries.push((dir_ino, name.to_vec()));
                            if matches!(was, Merged::Link(_)) {
                                changes.inodes.push(self.number(&join(&path, name))?);
                            }
                        }
                    }
                }
                for name in after
                    .entries
                    .keys()
                    .filter(|name| !before.entries.contains_key(*name))
                {
                    changed = true;
                    changes.entries.push((dir_ino, name.to_vec()));
                }
                if changed {
                    changes.dirs.push(dir_ino);
                }
            }
        }
        // Kept for the late answers; a move meanwhile added its own.
        retired.retain(|old| old.since.elapsed() < LATE_ANSWERS);
        {
            let mut kept = self.retired.lock().unwrap_or_else(|p| p.into_inner());
            retired.append(&mut kept);
            *kept = retired;
            let over = kept.len().saturating_sub(RETIRED_MAX);
            kept.drain(..over);
        }
        if !moved && changes.is_empty() {
            return Ok(None);
        }
        changes.entries.sort();
        changes.entries.dedup();
        changes.inodes.sort_unstable();
        changes.inodes.dedup();
        changes.dirs.sort_unstable();
        changes.dirs.dedup();
        Ok(Some(changes))
    }

    /// True while a superseded generation is still compared for late
    /// answers ([`LATE_ANSWERS`]): [`Index::refresh`] is worth calling
    /// then even though the view did not move.
    pub fn comparing_late_answers(&self) -> bool {
        !self
            .retired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// The inode number of index path `path`, given on first sight.
    fn number(&self, path: &[u8]) -> Result<u64> {
        let x = {
            let numbers = self.numbers.read().unwrap_or_else(|p| p.into_inner());
            numbers.by_path.get(path).copied()
        };
        let x = match x {
            Some(x) => x,
            None => {
                let _pass = self.numbering.enter();
                let mut numbers = self.numbers.write().unwrap_or_else(|p| p.into_inner());
                let next = numbers.paths.len() as u64;
                let path: Arc<[u8]> = Arc::from(path);
                let x = *numbers.by_path.entry(path.clone()).or_insert(next);
                if x == next {
                    numbers.paths.push(path);
                }
                x
            }
        };
        x.checked_mul(4)
            .and_then(|n| n.checked_add(3))
            .ok_or_else(|| ViewError::Inconsistent("index inode numbers exhausted".into()))
    }

    /// The index path inode number `ino` was given to.
    fn path(&self, ino: u64) -> Result<Arc<[u8]>> {
        if ino & 3 != 3 {
            return Err(ViewError::NotFound);
        }
        let numbers = self.numbers.read().unwrap_or_else(|p| p.into_inner());
        usize::try_from(ino >> 2)
            .ok()
            .and_then(|x| numbers.paths.get(x))
            .cloned()
            .ok_or(ViewError::NotFound)
    }

    /// The entries of package directory `dir`, from the cache or one query.
    fn children(&self, dir: i64) -> Result<Arc<[Child]>> {
        if let Some(children) = self.listings.get(&dir) {
            return Ok(children);
        }
        let rows = self
            .view
            .reader()
            .query(|c: &Catalog| c.dir_entries_without_hash(dir))?;
        let children: Arc<[Child]> = rows
            .into_iter()
            .map(|row| Child {
                access: Access::of_dir(row.inode.uid, row.inode.gid, enforced_mode(&row.inode)),
                name: row.name.into_boxed_slice(),
                id: row.inode.id,
                kind: row.inode.kind,
            })
            .collect();
        self.listings.insert(dir, children.clone());
        Ok(children)
    }

    /// The package directory at `rel` below package directory `root`, if
    /// every component is a real directory (symlinks are not followed),
    /// with who may list it there: its own access met with the passage
    /// through `root` (`way`) and each directory between.
    fn resolve(&self, root: i64, way: Access, rel: &str) -> Result<Option<(i64, Access)>> {
        let (mut dir, mut access) = (root, way);
        let mut parts = rel.split('/').peekable();
        while let Some(part) = parts.next() {
            let children = self.children(dir)?;
            // Listings are sorted bytewise by name (the catalog's order).
            match children.binary_search_by(|c| c.name[..].cmp(part.as_bytes())) {
                Ok(i) if children[i].kind == InodeType::Dir => {
                    let child = &children[i];
                    dir = child.id;
                    let gate = match parts.peek() {
                        Some(_) => child.access.to_pass(),
                        None => child.access,
                    };
                    access = access.meet(gate);
                }
                _ => return Ok(None),
            }
        }
        Ok(Some((dir, access)))
    }

    /// The sources of top-level index directory `top`, in rank order, and
    /// who may list it (root's 0755 when no App has it).
    fn top_sources(
        &self,
        generation: &IndexGeneration,
        top: &IndexDir,
    ) -> Result<(Access, Vec<Source>)> {
        let (mut access, mut sources) = (Access::OPEN, Vec::new());
        for app in &generation.apps {
            for rel in &top.sources {
                if let Some((dir, own)) = self.resolve(app.root, app.way, rel)? {
                    let source = Source {
                        app: app.name.clone(),
                        dir,
                        rel: Arc::from(rel.as_bytes()),
                        access: own,
                        restricted: app.restricted,
                    };
                    add_source(&mut access, &mut sources, source);
                }
            }
        }
        Ok((access, sources))
    }

    fn link_target(&self, source: &Source, name: &[u8]) -> Vec<u8> {
        let mut target = self.mount.clone();
        for part in [
            source.app.as_bytes(),
            CURRENT.as_bytes(),
            &source.rel[..],
            name,
        ] {
            if !target.ends_with(b"/") {
                target.push(b'/');
            }
            target.extend_from_slice(part);
        }
        target
    }

    /// Merges `sources` (highest rank first) by the clash rule, into a
    /// directory that gives no one more than `access`.
    fn merge(&self, access: Access, sources: &[Source]) -> Result<MergedDir> {
        let mut merged = BTreeMap::new();
        for source in sources {
            for child in self.children(source.dir)?.iter() {
                let is_dir = child.kind == InodeType::Dir;
                // A subdirectory is reached through this one, which holds
                // the gates on the way: its own access is its gate.
                let sub = || Source {
                    app: source.app.clone(),
                    dir: child.id,
                    rel: Arc::from(join(&source.rel, &child.name)),
                    access: child.access,
                    restricted: source.restricted,
                };
                match merged.get_mut(&child.name) {
                    None => {
                        let entry = if is_dir {
                            Merged::Dir {
                                access: child.access,
                                sources: vec![sub()],
                            }
                        } else {
                            Merged::Link(self.link_target(source, &child.name))
                        };
                        merged.insert(child.name.clone(), entry);
                    }
                    Some(Merged::Dir {
                        access: lower_access,
                        sources: lower,
                    }) if is_dir => {
                        add_source(lower_access, lower, sub());
                    }
                    // A higher-ranked source decided this name.
                    Some(_) => {}
                }
            }
        }
        Ok(MergedDir {
            access,
            entries: merged,
        })
    }

    /// The merged directory at index path `path` (not the root) in
    /// `generation`, computed on first use; `None` if it is not a directory
    /// there.
    fn dir(&self, generation: &IndexGeneration, path: &[u8]) -> Result<Option<Arc<MergedDir>>> {
        if let Some(dir) = generation.dirs().get(path) {
            return Ok(Some(dir.clone()));
        }
        let (parent, name) = split(path);
        let merged = if parent.is_empty() {
            match layout().iter().find(|d| d.name.as_bytes() == name) {
                Some(top) => {
                    let (access, sources) = self.top_sources(generation, top)?;
                    self.merge(access, &sources)?
                }
                None => return Ok(None),
            }
        } else {
            let Some(parent) = self.dir(generation, parent)? else {
                return Ok(None);
            };
            match parent.entries.get(name) {
                Some(Merged::Dir { access, sources }) => self.merge(*access, sources)?,
                _ => return Ok(None),
            }
        };
        let merged = Arc::new(merged);
        // Another thread may have computed it meanwhile: keep the first, so
        // that every answer of a generation comes from one computation.
        let mut dirs = generation.dirs();
        Ok(Some(dirs.entry(Arc::from(path)).or_insert(merged).clone()))
    }

    /// The attributes of a directory that gives no one more than `access`.
    fn dir_attr(&self, generation: &IndexGeneration, ino: u64, access: Access) -> Attr {
        Attr {
            ino,
            kind: Kind::Dir,
            perm: access.perm,
            uid: access.uid,
            gid: access.gid,
            size: 0,
            mtime: generation.created,
            // The number of subdirectories is unknown until each is merged;
            // 1 is the customary "unknown" that keeps find(1) from using
            // link counts to skip directories.
            nlink: 1,
            immutable: false,
        }
    }

    fn attr(&self, generation: &IndexGeneration, path: &[u8], what: &Merged) -> Result<Attr> {
        let ino = self.number(path)?;
        Ok(match what {
            Merged::Dir { access, .. } => self.dir_attr(generation, ino, *access),
            Merged::Link(target) => Attr {
                ino,
                kind: Kind::Symlink,
                perm: 0o777,
                uid: 0,
                gid: 0,
                size: target.len() as u64,
                mtime: generation.created,
                nlink: 1,
                immutable: false,
            },
        })
    }

    /// What index path `path` (not the root) is in `generation`.
    fn find(&self, generation: &IndexGeneration, path: &[u8]) -> Result<Merged> {
        let (parent, name) = split(path);
        if parent.is_empty() {
            // A top directory's access is its merged directory's; its
            // sources are not needed to answer for it.
            let dir = self.dir(generation, path)?.ok_or(ViewError::NotFound)?;
            return Ok(Merged::Dir {
                access: dir.access,
                sources: Vec::new(),
            });
        }
        let dir = self.dir(generation, parent)?.ok_or(ViewError::NotFound)?;
        dir.entries.get(name).cloned().ok_or(ViewError::NotFound)
    }

    /// The attributes of index inode `ino`.
    pub fn getattr(&self, ino: u64) -> Result<Attr> {
        let generation = self.sync()?;
        let path = self.path(ino)?;
        if path.is_empty() {
            return Ok(self.dir_attr(&generation, ROOT, Access::OPEN));
        }
        let what = self.find(&generation, &path)?;
        self.attr(&generation, &path, &what)
    }

    /// Looks `name` up in index directory `parent`.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Entry> {
        let generation = self.sync()?;
        let parent = self.path(parent)?;
        if !parent.is_empty() && self.find(&generation, &parent)?.kind() != Kind::Dir {
            return Err(ViewError::NotDir);
        }
        let path = join(&parent, name);
        let what = self.find(&generation, &path)?;
        Ok(Entry {
            name: name.to_vec(),
            attr: self.attr(&generation, &path, &what)?,
            immutable: false,
        })
    }

    /// The whole listing of index directory `ino`, `.` and `..` first,
    /// computed once per generation.
    pub fn list(&self, ino: u64) -> Result<Arc<Listing>> {
        let generation = self.sync()?;
        if let Some(listing) = generation.listings().get(&ino) {
            return Ok(listing.clone());
        }
        let listing = Arc::new(self.list_in(&generation, ino)?);
        Ok(generation.listings().entry(ino).or_insert(listing).clone())
    }

    /// The listing of index directory `ino` in `generation`.
    fn list_in(&self, generation: &IndexGeneration, ino: u64) -> Result<Listing> {
        let path = self.path(ino)?;
        let mut entries = Vec::new();
        let dot = |name: &[u8], attr: Attr| Entry {
            name: name.to_vec(),
            attr,
            immutable: false,
        };
        if path.is_empty() {
            let this = self.dir_attr(generation, ino, Access::OPEN);
            entries.push(dot(b".", this.clone()));
            entries.push(dot(b"..", this));
            for top in layout() {
                let name = top.name.as_bytes();
                let what = self.find(generation, name)?;
                entries.push(dot(name, self.attr(generation, name, &what)?));
            }
            return Ok(Listing {
                entries,
                immutable: false,
            });
        }
        let Some(dir) = self.dir(generation, &path)? else {
            return Err(match self.find(generation, &path) {
                Ok(_) => ViewError::NotDir,
                Err(e) => e,
            });
        };
        let (parent, _) = split(&path);
        let parent_ino = self.number(parent)?;
        let parent_access = if parent.is_empty() {
            Access::OPEN
        } else {
            self.dir(generation, parent)?
                .ok_or(ViewError::NotFound)?
                .access
        };
        entries.reserve(dir.entries.len() + 2);
        entries.push(dot(b".", self.dir_attr(generation, ino, dir.access)));
        entries.push(dot(
            b"..",
            self.dir_attr(generation, parent_ino, parent_access),
        ));
        for (name, what) in dir.entries.iter() {
            let attr = self.attr(generation, &join(&path, name), what)?;
            entries.push(dot(name, attr));
        }
        Ok(Listing {
            entries,
            immutable: false,
        })
    }

    /// The target of index symlink `ino`.
    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        let generation = self.sync()?;
        let path = self.path(ino)?;
        if path.is_empty() {
            return Err(ViewError::WrongKind);
        }
        match self.find(&generation, &path)? {
            Merged::Link(target) => Ok(target),
            Merged::Dir { .. } => Err(ViewError::WrongKind),
        }
    }
}

#[cfg(test)]
mod tests;
