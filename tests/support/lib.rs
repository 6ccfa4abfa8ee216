//! Shared helpers for the end-to-end tests of the Nexus store.
//!
//! The tests drive the real `nip` and `nexus` binaries (see [`nip`] and
//! [`nexus`]) against real Debian packages fetched at test time with
//! `apt-get download` (see [`debs`]); no third-party file is ever committed.
//! Trees are compared with [`tree`], pack files are parsed independently of
//! the store crate with [`pack`], and synthetic data comes from [`fixtures`],
//! [`crafted`] and [`rng`].
//!
//! Conventions:
//! * every helper panics with a message that says what was being done and
//!   shows the command line, exit status and output of the failing command;
//! * temporary directories are removed when their [`fixtures::Scratch`] is
//!   dropped, unless `NEXUS_TEST_KEEP=1` is set (handy when debugging);
//! * randomised tests print their seed; `NEXUS_TEST_SEED=N` replays a run.

pub mod archive;
pub mod crafted;
pub mod debs;
pub mod fixtures;
pub mod nexus;
pub mod nip;
pub mod pack;
pub mod remote;
pub mod rng;
pub mod rumk;
pub mod tree;
pub mod vm;

use std::sync::{Mutex, MutexGuard};

pub use debs::{deb_field, fetch_debs, unpack_deb, unpack_deb_as_app};
pub use fixtures::Scratch;
pub use nexus::{Mount, nexus_bin};
pub use nip::{Store, nip_bin};
pub use tree::{assert_same_tree, snapshot};

/// True when the tests run as root (as they do in CI).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// True when the tests run as root; otherwise says that `test` is skipped
/// (mounting, namespaces and other users need root).
pub fn root_or_skip(test: &str) -> bool {
    if !is_root() {
        eprintln!("{test}: skipped, it needs root");
    }
    is_root()
}

/// Serialises the heavy tests of one test binary.
///
/// `cargo test` runs the tests of a binary on parallel threads; tests that
/// calibrate timings (crash) or push hundreds of megabytes through the store
/// (concurrency) hold this guard so that they neither distort each other's
/// timings nor overload the two CI cores.
pub fn heavy_test_guard() -> MutexGuard<'static, ()> {
    static HEAVY: Mutex<()> = Mutex::new(());
    // A previous test panicking while holding the guard must not fail the
    // others: the mutex protects no data.
    HEAVY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Reads a numeric tuning knob from the environment, falling back to
/// `default` (used for iteration counts and tree sizes).
pub fn env_knob(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a non-negative integer")),
        Err(_) => default,
    }
}
