//! Arbitrary bytes as a pkgsrc package and as the text of its +CONTENTS
//! and +BUILD_INFO.
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
    if let Ok(c) = nexus_graft::pkgsrc::parse_contents(data) {
        let _ = nexus_graft::pkgsrc::split_pkgname(&c.pkgname);
    }
    let _ = nexus_graft::pkgsrc::parse_build_info(data);
    let _ = nexus_graft::tarpkg::read_tar_package(data, &options(), &mut HashSink::default());
});
