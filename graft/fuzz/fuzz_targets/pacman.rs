//! Arbitrary bytes as a pacman package (tar, pax records) and as the text
//! of .PKGINFO.
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
    let _ = nexus_graft::pax::parse_records(data);
    if let Ok(info) = nexus_graft::pkginfo::parse_info(data, ".PKGINFO") {
        if let Ok(v) = nexus_graft::pkginfo::single(&info, "pkgver") {
            let _ = nexus_graft::pkginfo::split_version(v);
        }
    }
    let _ = nexus_graft::tarpkg::read_tar_package(data, &options(), &mut HashSink::default());
});
