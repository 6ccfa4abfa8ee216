//! The store's `/Programs` view served to VM guests over virtio-fs: a
//! vhost-user-fs device backend (`nexus serve --virtio-fs SOCKET`).
//!
//! The view is `nexus_fs::View`, the same transport-neutral file system the
//! FUSE mount serves; this crate is the second adapter beside
//! `nexus_fs::fuse`. Guests see virtual inodes straight from the store: no
//! host file descriptor is held per guest inode (stock virtiofsd pins one
//! per inode it exports).
//!
//! - [`fs`] — [`GuestFs`]: `fuse-backend-rs`'s `FileSystem` trait over a
//!   view for one guest (its directory handles, its cache lifetimes, EROFS
//!   for writes). `fuse-backend-rs` decodes the FUSE messages; fuser's
//!   decoder, which the FUSE mount uses, is private to fuser.
//! - [`device`] — [`FsDevice`]: one guest's vhost-user virtio-fs device:
//!   virtqueues in, FUSE replies out.
//! - [`listener`] — [`serve`]: the socket several guests connect to, one
//!   device (and thread) per connection, all sharing one view.
//! - `loopback` (feature `loopback`) — raw request bytes through the whole
//!   decode-and-answer path in memory, and a fixture store: for the
//!   hostile-request tests and the fuzz target (`virtiofs/fuzz`).

pub mod device;
pub mod error;
pub mod fs;
pub mod listener;
mod log_limit;
#[cfg(any(test, feature = "loopback"))]
pub mod loopback;

#[cfg(test)]
mod tests;

pub use device::FsDevice;
pub use error::Error;
pub use fs::{GENERATION_TTL, GuestFs, IMMUTABLE_TTL};
pub use listener::{GuestSocket, ServeOptions, SocketOptions, bind, serve};

use std::time::Duration;

/// How long after a switch (`nip switch`, `rollback`, `add`, `remove`)
/// every guest sees the new generation: the daemon notices within
/// [`nexus_fs::follow::REFRESH_EVERY`], and what a guest cached of the root, App directories
/// and attributes expires within [`GENERATION_TTL`]. `Current` targets are
/// never cached by a guest (a path walk reads the link each time), so a
/// moved `Current` shows within [`nexus_fs::follow::REFRESH_EVERY`] already. A version the
/// switch removed may still resolve (unlisted) for
/// `nexus_fs::view::REMOVED_NAMES_GRACE` more, so that path walks under way
/// end where they were sent.
pub const SWITCH_BOUND: Duration = Duration::from_millis(1100);
