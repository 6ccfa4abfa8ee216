//! Shared plumbing of the `nip` and `nexus` binaries: the configuration
//! and where each setting comes from, error reporting (text and JSON),
//! progress bars, sizes and times for people, exit codes, man pages and
//! completions, and the commands both binaries share (keys, config,
//! switch and rollback).

pub mod config;
pub mod config_cmd;
pub mod docs;
pub mod epoch;
pub mod exit;
pub mod generations;
pub mod hints;
pub mod human;
pub mod keys;
pub mod location;
pub mod nexus;
pub mod nip;
pub mod open;
pub mod progress;
pub mod report;

/// Whether this process runs as root (effective uid 0): the store keeps
/// owners, daemons confine themselves, and mounts are made differently.
pub(crate) fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// For tests that mount or change users: true when running as root, else
/// says the test was skipped (`why`) and returns false.
#[cfg(test)]
pub(crate) fn root_or_skip(why: &str) -> bool {
    if !is_root() {
        eprintln!("skipped: {why} needs root");
    }
    is_root()
}
