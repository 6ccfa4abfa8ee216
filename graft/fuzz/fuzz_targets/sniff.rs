//! Arbitrary bytes through format recognition and the whole reader.
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
    let _ = nexus_graft::sniff::sniff(data);
    let _ = nexus_graft::sniff::is_tar_header(data);
    let _ = nexus_graft::read_package(data, &options(), &mut HashSink::default());
});
