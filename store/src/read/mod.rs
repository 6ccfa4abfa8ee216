//! The one read path: every byte of a stored file is read here, by the
//! mount and virtio-fs daemons, `nip cat`, `export` and `verify`, gc's
//! repacking and image serving alike.
//!
//! From the bottom up:
//!
//! - `source`: where pack bytes come from ([`PackSource`]): the store's
//!   own `packs/` directory ([`LocalPacks`], a bounded set of open
//!   handles) or a signed archive served in place ([`SingleFile`]). A
//!   remote pack store is another implementation of the same trait.
//! - `blocks`: [`BlockReader`] reads a block's head and the frames a read
//!   needs, decodes them, verifies each chunk against its BLAKE3 name and
//!   keeps decoded frames in a bounded cache; it reads byte ranges of a
//!   content given its [`Layout`]. `ahead` decodes on other threads what a
//!   sequential reader will want next.
//! - [`Reader`]: catalog queries from a pool of connections (with read
//!   snapshots for daemons), layouts cached by content id, and the one
//!   retry when gc moved a pack.

mod ahead;
mod blocks;
mod layout;
mod pool;
mod reader;
mod source;

pub use blocks::{BlockReader, CachedBytes, Side};
pub use layout::Layout;
pub use reader::{Reader, ReaderOptions};
pub use source::{LocalPacks, OPEN_PACKS, PackSource, SingleFile};
