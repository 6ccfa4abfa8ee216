//! Arbitrary bytes as a NAR (plain or compressed), named as a store path,
//! and as a NAR's file name.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexus_graft::{HashSink, Limits, Naming, ReadOptions};

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
    if let Ok(name) = std::str::from_utf8(data) {
        let _ = nexus_graft::nar::parse_store_file_name(name);
    }
    let naming = Naming {
        file_name: Some("0c3nb2wmh5rmb1ps3w1k8kyprgy1vd4c-hello-2.12.1.nar"),
        ..Naming::default()
    };
    let _ = nexus_graft::nar::read_nar_file(data, &naming, &options(), &mut HashSink::default());
});
