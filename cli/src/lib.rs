//! Shared plumbing of the `nip` and `nexus` binaries: where the store lives,
//! progress bars, and exit codes.

pub mod exit;
pub mod location;
pub mod nexus;
pub mod nip;
pub mod progress;
