//! Arbitrary bytes as a .deb (ar, control.tar, data.tar) and as the text
//! of its control and copyright files.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexus_graft::{HashSink, Limits, ReadOptions};

/// Small limits keep each run fast; the limits themselves are code under
/// test too.
fn options() -> ReadOptions {
    ReadOptions {
        limits: Limits {
            max_unpacked_size: 16 << 20,
            max_entries: 10_000,
        },
        skip_special: false,
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = nexus_graft::control::parse_control(data);
    let _ = nexus_graft::control::dep5_licenses(data);
    let _ = nexus_graft::deb::read_deb(data, &options(), &mut HashSink::default());
});
