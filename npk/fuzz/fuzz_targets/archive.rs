//! Arbitrary bytes as a whole `.npk` file, opened without a trusted key
//! (`--insecure`, the most permissive path) and every file content read.
#![no_main]

use std::io::Read;

use libfuzzer_sys::fuzz_target;
use nexus_npk::{Archive, Policy};

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("npk-fuzz-{}.npk", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Ok(archive) = Archive::open(&path, Policy::Insecure) {
        for blob in &archive.body.blobs {
            let mut sink = Vec::new();
            let _ = archive.blob_reader(blob).read_to_end(&mut sink);
        }
    }
});
