//! The Nexus store: a content-addressed chunk store with a SQLite catalog.
//!
//! Files are cut with FastCDC into chunks named by BLAKE3, kept
//! zstd-compressed in append-only packs; the catalog records packages (as
//! trees of inodes and directory entries), file contents (blobs) and
//! generations. See ARCHITECTURE.md for the map and FORMAT.md for every
//! on-disk structure.

// The modules other crates use, each a part of the store's API.
pub mod catalog;
pub mod chunker;
pub mod commit;
pub mod decoded;
pub mod dirs;
pub mod export;
pub mod gc;
pub mod generations;
pub mod ingest;
pub mod names;
pub mod pack;
pub mod params;
pub mod read;
pub mod regular;
pub mod root_way;
pub mod runtime;
pub mod scan;
pub mod tree;
pub mod verify;
pub mod version;

// Internal: reached through the re-exports below or through `Store`.
mod error;
mod hash;
mod lock;
mod store;

pub use catalog::Stats;
pub use error::{Result, StoreError, StrandedReader};
pub use hash::Hash;
pub use lock::DEFAULT_LOCK_TIMEOUT;
pub use store::{
    AddDir, AddOptions, CATALOG_FILE, CurrentChange, NoProgress, PACKS_DIR, Progress, Store,
    now_secs,
};
