//! Exit codes scripts can rely on (documented in `nip --help`).

/// Success.
pub const OK: i32 = 0;
/// The operation failed; the message says why. Nothing was changed.
pub const ERROR: i32 = 1;
/// The command line was wrong (clap's own code).
pub const USAGE: i32 = 2;
/// `verify` found damaged data.
pub const DAMAGED: i32 = 3;
