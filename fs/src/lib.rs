//! The Nexus store presented as a file system tree: `/Programs/App/Version/…`
//! with `/Programs/App/Current` links to each App's chosen version.
//!
//! The tree is written once, independent of how it is served:
//!
//! - [`view`] is the transport-neutral file system: inode numbers
//!   ([`ino`]), attributes and directory entries ([`attr`]), directory
//!   listings, symlinks, extended attributes and file reads, with errors that
//!   map to errno values ([`error`]). It knows nothing of FUSE, and reads
//!   everything through the store's one read path
//!   ([`nexus_store::read::Reader`]). When a live view moves to a new
//!   generation it says what changed ([`changes`]), so that transports can
//!   drop what their clients cached.
//! - [`follow`] is the one loop that keeps a live view on the newest
//!   generation and tells every [`follow::Follower`] (a FUSE mount's
//!   invalidator, the Index) what changed.
//! - [`fuse`] serves a view through the kernel's FUSE interface (`fuser`):
//!   a thin adapter that turns requests into view calls and view answers
//!   into replies with cache lifetimes. The virtio-fs adapter for VM guests
//!   is the `nexus-virtiofs` crate, over the same view.
//! - [`index`] is the Index (GoboLinux's `/System/Index`): `bin`, `lib`,
//!   `share`… of every App's `Current` version merged into one tree of
//!   symlinks into the mount, served by [`fuse::mount_index`] as a second
//!   mount. It shares the view's reader and generation tree.
//! - [`handles`] holds directory handles for the clients that open
//!   directories (VM guests), bounded in count and bytes.
//! - [`gate`] holds request threads back while a daemon hands its mounts
//!   to a successor and copies what the kernel holds.
//!
//! Internals: `generation` loads the root and App levels of a generation in
//! one query.

pub mod attr;
pub mod changes;
pub mod error;
pub mod follow;
pub mod fuse;
pub mod gate;
mod generation;
pub mod handles;
pub mod index;
pub mod ino;
pub mod kernel_view;
pub mod lookups;
pub mod view;

#[cfg(test)]
mod tests;

pub use attr::{Attr, Entry, FsStats, Kind, Listing};
pub use changes::{Changes, Invalidation};
pub use error::{Result, ViewError};
pub use index::{Index, IndexChanges};
pub use view::{CONTENT_HASH_XATTR, CURRENT, GenerationChoice, View, ViewOptions};
