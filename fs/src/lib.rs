//! The Nexus store presented as a file system tree: `/Programs/App/Version/…`
//! with `/Programs/App/Current` links to each App's chosen version.
//!
//! The tree is written once, independent of how it is served:
//!
//! - [`view`] is the transport-neutral file system: inode numbers
//!   ([`ino`]), attributes and directory entries ([`attr`]), directory
//!   listings, symlinks, extended attributes and file reads, with errors that
//!   map to errno values ([`error`]). It knows nothing of FUSE. When a live
//!   view moves to a new generation it says what changed ([`changes`]), so
//!   that transports can drop what their clients cached.
//! - [`fuse`] serves a view through the kernel's FUSE interface (`fuser`):
//!   a thin adapter that turns requests into view calls and view answers
//!   into replies with cache lifetimes. The virtio-fs adapter for VM guests
//!   is the `nexus-virtiofs` crate, over the same view.
//! - [`index`] is the Index (GoboLinux's `/System/Index`): `bin`, `lib`,
//!   `share`… of every App's `Current` version merged into one tree of
//!   symlinks into the mount, served by [`fuse::mount_index`] as a second
//!   mount.
//!
//! Internals: `generation` loads the root and App levels of a generation in
//! one query; `content` reads file bytes through a bounded cache of decoded,
//! verified blocks; `pool` shares catalog connections between request
//! threads.

pub mod attr;
pub mod changes;
mod content;
pub mod error;
pub mod fuse;
mod generation;
pub mod index;
pub mod ino;
mod pool;
pub mod view;

#[cfg(test)]
mod tests;

pub use attr::{Attr, Entry, FsStats, Kind, Listing};
pub use changes::{Changes, Invalidation};
pub use error::{Result, ViewError};
pub use index::{Index, IndexChanges};
pub use view::{CONTENT_HASH_XATTR, CURRENT, GenerationChoice, View, ViewOptions};
