//! The view: the store's packages as `ROOT/App/Version/...` with
//! `ROOT/App/Current` links, for one generation (the live one, followed with
//! [`View::refresh`], or a fixed one), with no knowledge of any transport.
//!
//! It is three parts, each in its own module:
//!
//! - `namespace`: the root, App directories and `Current` links, from the
//!   generation's tree in memory (one catalog query per generation change);
//!   what a move to another generation changed ([`Changes`]), and the grace
//!   during which names a move removed still resolve.
//! - `packages`: package inodes below the versions, read from the catalog
//!   on demand and cached (they are immutable); every inode a client names
//!   is checked to belong to a package the view serves.
//! - `files`: file bytes, through the store's one read path.
//!
//! Everything is read through the store's [`Reader`]: the view never opens
//! the catalog or a pack itself.

mod files;
mod namespace;
mod packages;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use nexus_store::catalog::InodeRow;
use nexus_store::read::{Reader, ReaderOptions, Side};
use nexus_store::tree::InodeType;

use crate::attr::{Attr, Entry, FsStats, Listing};
use crate::changes::Changes;
use crate::error::{Result, ViewError};
use crate::generation::GenerationTree;
use crate::ino::Node;
use crate::lookups::{Clients, HeldInode, Lookups};

use namespace::Namespace;
pub use namespace::REMOVED_NAMES_GRACE;
pub(crate) use namespace::{app_attr, current_attr, root_attr};
use packages::Packages;
pub use packages::listing_weight;

/// The name of the link to an App's chosen version.
pub const CURRENT: &str = "Current";

/// The attribute answering a regular file's BLAKE3 (64 lowercase hex
/// digits), as the store recorded it: not listed, never stored.
pub const CONTENT_HASH_XATTR: &[u8] = b"user.nexus.blake3";

/// The SELinux label attribute (see [`View::getxattr`]).
const SELINUX_XATTR: &[u8] = b"security.selinux";

/// Attributes a FUSE mount answers "not supported" for when a file has
/// none, which makes `ls -l` stop asking: the SELinux label and the POSIX
/// ACLs (the mount does not let the kernel apply ACLs; see `fuse`).
pub(crate) const UNSUPPORTED_WHEN_ABSENT: [&[u8]; 3] = [
    SELINUX_XATTR,
    crate::attr::ACL_ACCESS_XATTR,
    crate::attr::ACL_DEFAULT_XATTR,
];

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

impl ViewOptions {
    /// The options of the store reader a view with these options reads
    /// through (whatever its pack source): a daemon's.
    pub fn reader_options(&self) -> ReaderOptions {
        ReaderOptions {
            cache_bytes: self.cache_bytes,
            connections: self.connections,
            snapshots: true,
            // One reader of a large file decodes on every core.
            read_ahead_threads: READ_AHEAD_THREADS,
            // Every chunk served is hashed; the checksum would repeat it.
            frame_check: nexus_store::pack::FrameCheck::ChunkHashes,
        }
    }
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

/// Default size of the decoded-frame cache, in MiB. Readers of different
/// packages at once each need their current frames kept (and a file of a
/// newer version often reads chunks deduplicated into the older version's
/// frames); frames of large files are about 128 KiB, so 16 MiB holds a
/// hundred or more, and what the kernel was handed is served from its page cache.
/// bench/README.md has the measurements.
pub const DEFAULT_BLOCK_CACHE_MIB: u64 = 16;

/// Threads decoding ahead of sequential readers of a view's files.
pub const READ_AHEAD_THREADS: usize = 2;

/// The transport-neutral file system over one store.
pub struct View {
    reader: Arc<Reader>,
    namespace: Namespace,
    packages: Packages,
    /// FUSE's generation number of every inode (see [`View::inode_generation`]).
    inode_generation: u64,
    /// What each client (FUSE mount, VM guest) holds looked up.
    clients: Clients,
}

impl View {
    /// Opens the store in `store_dir` and loads the generation to show.
    pub fn open(store_dir: &Path, options: ViewOptions) -> Result<View> {
        let reader = Reader::open(store_dir, options.reader_options())?;
        View::with_reader(Arc::new(reader), options.generation)
    }

    /// The view of generation `choice` over an open store reader (whose pack
    /// source may be anything: the store's packs, an image, a remote).
    pub fn with_reader(reader: Arc<Reader>, choice: GenerationChoice) -> Result<View> {
        // A cold walk or read of the mount looks up inodes, listings and
        // chunk lists all over the catalog: reading it ahead replaces
        // thousands of random reads from disk.
        reader.prefetch_catalog();
        let namespace = Namespace::load(&reader, choice)?;
        let packages = Packages::new(&namespace.tree());
        let inode_generation = reader.query(|c| c.store_incarnation())?;
        Ok(View {
            reader,
            namespace,
            packages,
            inode_generation,
            clients: Clients::default(),
        })
    }

    /// Sets how long names a switch removed from App directories still
    /// resolve ([`REMOVED_NAMES_GRACE`] by default; zero: not at all).
    pub fn with_removed_names_grace(mut self, grace: Duration) -> View {
        self.namespace.grace = grace;
        self
    }

    /// How long names a switch removed from App directories still resolve.
    pub fn removed_names_grace(&self) -> Duration {
        self.namespace.grace
    }

    /// The store reader the view reads through (shared with the Index).
    pub fn reader(&self) -> &Arc<Reader> {
        &self.reader
    }

    /// The generation tree shown.
    pub(crate) fn tree(&self) -> Arc<GenerationTree> {
        self.namespace.tree()
    }

    /// The generation shown (`None` while the store has none).
    pub fn generation(&self) -> Option<i64> {
        self.namespace.tree().id
    }

    /// The generation number FUSE attaches to every inode number this view
    /// hands out: the store's incarnation, fixed when the store (or its
    /// catalog schema with never-reused ids) was created. Catalog ids are
    /// never reused within one incarnation, so an `(inode, generation)`
    /// pair names one file forever.
    pub fn inode_generation(&self) -> u64 {
        self.inode_generation
    }

    /// A new client of the view (a FUSE mount, a VM guest): the inodes it
    /// is told of through [`View::looked_up`] and forgets through
    /// [`Lookups::forget`] are counted until it is dropped.
    pub fn new_client(&self) -> Arc<Lookups> {
        self.clients.register()
    }

    /// A new client that already holds `held`: the kernel behind a mount
    /// this daemon took over from another, which handed over what the
    /// kernel holds ([`View::freeze_clients`]). Their packages are served
    /// and kept from now on, whatever generation they came from, so that
    /// files programs have open stay readable.
    pub fn new_client_holding(&self, held: &[HeldInode]) -> Arc<Lookups> {
        self.packages.serve_packages(held.iter().map(|h| h.package));
        self.clients.register_holding(held)
    }

    /// Stops every client's lookup counts from changing, waiting for the
    /// changes under way: what [`Lookups::table`] says then stays true until
    /// [`View::thaw_clients`]. A request thread that would change a count
    /// waits meanwhile (see [`crate::gate`]).
    pub fn freeze_clients(&self) {
        self.clients.gate().close();
    }

    /// What the clients hold looked up, counts summed per inode: what a
    /// daemon hands to its successor, taken between
    /// [`View::freeze_clients`] and [`View::thaw_clients`].
    pub fn held_table(&self) -> Vec<HeldInode> {
        self.clients.held_table()
    }

    /// Lets lookup counts change again after [`View::freeze_clients`].
    pub fn thaw_clients(&self) {
        self.clients.gate().open();
    }

    /// For a live view not yet served: shows generation `id` (`None`: the
    /// empty store) until the next [`View::refresh`], which then reports
    /// what changed from it. A daemon taking over a mount shows first what
    /// its predecessor showed, so that the kernel hears of every change
    /// since.
    pub fn show_first(&self, id: Option<i64>) -> Result<()> {
        if self.generation() == id {
            return Ok(());
        }
        self.namespace
            .show_first(&self.reader, id, |tree| self.packages.serve(tree))
    }

    /// Counts one more lookup of `entry`, found in directory `parent`, by
    /// `client` (a LOOKUP reply, a READDIRPLUS entry other than `.` and
    /// `..`): while the client holds
    /// a package inode, its package stays readable (see
    /// [`View::runtime_packages`]).
    pub fn looked_up(&self, client: &Lookups, parent: u64, entry: &Entry) {
        if let Some(Node::Package(id)) = Node::from_ino(entry.attr.ino)
            && let Ok(row) = self.inode(id)
        {
            client.add(entry.attr.ino, row.package, parent, &entry.name);
        }
    }

    /// The packages of the generation shown.
    pub fn shown_packages(&self) -> std::collections::HashSet<i64> {
        self.tree().packages.clone()
    }

    /// The generation a running daemon of this view serves (none for an
    /// empty store). A daemon publishes it as its runtime root; gc keeps
    /// it. (What a program still reads of an older one is kept through
    /// [`View::held_packages`].)
    pub fn served_generations(&self) -> Vec<i64> {
        self.generation().into_iter().collect()
    }

    /// The packages some client of this view still holds an inode of
    /// (sorted): a daemon publishes them with its runtime root, so that gc
    /// keeps what programs have open even when no generation holds it.
    pub fn held_packages(&self) -> Vec<i64> {
        let mut packages: Vec<i64> = self.clients.held_packages().into_iter().collect();
        packages.sort_unstable();
        packages
    }

    /// A number that changes whenever what clients hold changes (see
    /// [`View::held_packages`]), so a publisher rewrites only then.
    pub fn held_version(&self) -> u64 {
        self.clients.version()
    }

    /// For a live view: moves to the live generation if it is not the one
    /// shown, and says what changed (`None`: the view did not move). Costs
    /// one small query when nothing changed. Also drops cached chunk
    /// locations and open packs when gc ran.
    ///
    /// Names the move removed from App directories still resolve for the
    /// grace ([`REMOVED_NAMES_GRACE`]); a transport that lets clients cache
    /// names must drop [`Changes::after_grace`] again once it has passed.
    pub fn refresh(&self) -> Result<Option<Changes>> {
        self.reader.check_gc_epoch()?;
        self.namespace
            .refresh(&self.reader, |tree| self.packages.serve(tree))
    }

    fn node(ino: u64) -> Result<Node> {
        Node::from_ino(ino).ok_or(ViewError::NotFound)
    }

    fn inode(&self, id: i64) -> Result<Arc<InodeRow>> {
        self.packages.inode(&self.reader, id)
    }

    /// The attributes of the directory holding package directory `id`: its
    /// App for a package root of the generation shown, else the directory
    /// whose entry names it.
    fn parent_attr(&self, id: i64) -> Result<Option<Attr>> {
        match self.namespace.app_of_root(id) {
            Some(app) => app.map(Some),
            None => self.packages.parent_attr(&self.reader, id),
        }
    }

    /// The attributes of inode `ino`.
    pub fn getattr(&self, ino: u64) -> Result<Attr> {
        match Self::node(ino)? {
            Node::Package(id) => Attr::of_row(&*self.inode(id)?),
            node => self.namespace.getattr(node),
        }
    }

    /// Looks `name` up in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Entry> {
        match Self::node(parent)? {
            Node::Package(dir) => self
                .packages
                .lookup(&self.reader, dir, name, || self.parent_attr(dir)),
            node => self.namespace.lookup(node, name),
        }
    }

    /// The whole listing of directory `ino`, `.` and `..` first: shared
    /// and kept for a package directory (it never changes), taken from the
    /// generation shown at each call for the root and an App.
    pub fn list(&self, ino: u64) -> Result<Arc<Listing>> {
        match Self::node(ino)? {
            Node::Package(id) => self
                .packages
                .listing(&self.reader, id, || self.parent_attr(id)),
            node => Ok(Arc::new(self.namespace.list(node)?)),
        }
    }

    /// The entries of package directory `ino` with their whole rows, read
    /// without keeping any in the caches requests use (`None` when `ino` is
    /// no package inode): for a walk of every directory (a kernel view's
    /// image).
    pub(crate) fn package_entries_unkept(
        &self,
        ino: u64,
    ) -> Result<Option<Vec<nexus_store::catalog::DirEntryRow>>> {
        match Self::node(ino)? {
            Node::Package(id) => Ok(Some(self.packages.entries_unkept(&self.reader, id)?)),
            _ => Ok(None),
        }
    }

    /// The target of symlink `ino`.
    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        match Self::node(ino)? {
            Node::Current(anchor) => self.namespace.readlink(anchor),
            Node::Package(id) => {
                let row = self.inode(id)?;
                match (&row.target, row.kind) {
                    (Some(target), InodeType::Symlink) => Ok(target.clone()),
                    _ => Err(ViewError::WrongKind),
                }
            }
            Node::Root | Node::App(_) => Err(ViewError::WrongKind),
        }
    }

    /// The inode row holding the extended attributes of `ino` (`None`
    /// outside packages, which have none).
    fn xattr_row(&self, ino: u64) -> Result<Option<Arc<InodeRow>>> {
        match Self::node(ino)? {
            Node::Package(id) => Ok(Some(self.inode(id)?)),
            node => {
                self.namespace.getattr(node)?;
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
    /// support labels; then it stops asking for the whole mount. (The FUSE
    /// mount answers POSIX ACLs the same way, see `fuse::NexusFs`; VM
    /// guests, whose kernels apply ACLs, are told "no such attribute".)
    pub fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>> {
        let row = self.xattr_row(ino)?;
        if name == CONTENT_HASH_XATTR {
            // Not listed by listxattr (the tree stays as packaged), but
            // answered: the hash the store recorded, for clients that
            // verify what they read (Rumk guests over virtio-fs). Rows are
            // read without it (one join fewer per lookup), so look it up now.
            let blob = row
                .as_ref()
                .filter(|r| r.kind == InodeType::File)
                .and_then(|r| r.blob);
            let hash = match (row.as_ref().and_then(|r| r.content), blob) {
                (Some(hash), _) => Some(hash),
                (None, Some(blob)) => self.reader.query(|c| c.blob_hash(blob))?,
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
        let tree = self.namespace.tree();
        const BLOCK: u64 = 4096;
        FsStats {
            block_size: BLOCK as u32,
            blocks: tree.bytes.div_ceil(BLOCK),
            files: tree.files,
            name_max: 255,
        }
    }

    /// The content (catalog blob id) of regular file `ino` (`None` for an
    /// empty file, or another kind of node).
    pub fn content_blob(&self, ino: u64) -> Result<Option<i64>> {
        let Node::Package(id) = Self::node(ino)? else {
            return Ok(None);
        };
        Ok(self.inode(id)?.blob)
    }

    /// The smallest file views made now look for a decoded copy of
    /// (`nexus_store::decoded::min_size`, read afresh).
    pub fn decoded_min_size(&self) -> Result<u64> {
        Ok(self.reader.query_fresh(nexus_store::decoded::min_size)?)
    }

    /// The contents named in `names` (the decoded copies there are) of at
    /// least `min_size` bytes that files of the generation shown hold, which
    /// a kernel view redirects to their copies, in no order: blob id,
    /// content hash, size.
    pub fn decoded_candidates(
        &self,
        min_size: u64,
        names: &std::collections::HashSet<nexus_store::Hash>,
    ) -> Result<Vec<(i64, nexus_store::Hash, u64)>> {
        let Some(generation) = self.generation() else {
            return Ok(Vec::new());
        };
        Ok(self
            .reader
            .query(|c| c.generation_contents_named(generation, min_size.max(1), names))?)
    }

    /// Reads up to `size` bytes at `offset` of regular file `ino` (fewer
    /// only at the end of the file) into a new vector. Damaged data is an
    /// error, never returned.
    pub fn read_inode(&self, ino: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        self.read_inode_with(ino, offset, size, <[u8]>::to_vec)
    }

    /// The verified bytes of regular file `ino` on `side` of offset `at`,
    /// at most `limit` of them, that its reads (or the read-ahead) already
    /// decoded, each run with the file offset it starts at: what a
    /// transport may hand its client before the reads that would ask for
    /// them. Reads and decodes nothing.
    pub fn cached_beside(
        &self,
        ino: u64,
        at: u64,
        side: Side,
        limit: u64,
    ) -> Result<Vec<(u64, nexus_store::read::CachedBytes)>> {
        let Node::Package(id) = Self::node(ino)? else {
            return Ok(Vec::new());
        };
        files::cached_beside(&self.reader, &*self.inode(id)?, at, side, limit)
    }

    /// Reads up to `size` bytes at `offset` of regular file `ino` and hands
    /// them to `consume` where they lie (in the block cache, or a
    /// per-thread buffer): a transport writes them to its channel from
    /// there. `consume` must not read from this view.
    pub fn read_inode_with<T>(
        &self,
        ino: u64,
        offset: u64,
        size: u32,
        consume: impl FnOnce(&[u8]) -> T,
    ) -> Result<T> {
        let Node::Package(id) = Self::node(ino)? else {
            return Err(match self.getattr(ino)?.kind {
                crate::attr::Kind::Dir => ViewError::IsDir,
                _ => ViewError::WrongKind,
            });
        };
        let row = self.inode(id)?;
        files::read_with(&self.reader, &row, offset, size, consume)
    }
}
