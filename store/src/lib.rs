//! The Nexus store: a content-addressed chunk store with a SQLite catalog.
//!
//! Files are cut with FastCDC into chunks named by BLAKE3, kept
//! zstd-compressed in append-only packs; the catalog records packages (as
//! trees of inodes and directory entries), file contents (blobs) and
//! generations. See ARCHITECTURE.md for the map and FORMAT.md for every
//! on-disk structure.

pub mod catalog;
pub mod chunker;
pub mod commit;
pub mod dirs;
pub mod error;
pub mod export;
pub mod gc;
pub mod generations;
pub mod hash;
pub mod ingest;
pub mod lock;
pub mod names;
pub mod pack;
pub mod params;
pub mod read;
pub mod runtime;
pub mod scan;
pub mod store;
pub mod tree;
pub mod verify;
pub mod version;

pub use error::{Result, StoreError};
pub use hash::Hash;
pub use store::{AddDir, AddOptions, CurrentChange, NoProgress, Progress, Stats, Store};
