//! Shared plumbing of the `nip` and `nexus` binaries: where the store lives,
//! progress bars, exit codes, and the key commands both share.

pub mod epoch;
pub mod exit;
pub mod hints;
pub mod keys;
pub mod location;
pub mod nexus;
pub mod nip;
pub mod open;
pub mod progress;
pub mod render;
