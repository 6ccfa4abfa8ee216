//! A remote's metadata object as a mirror serves it (after the manifest's
//! hash, which a fuzzer need not match): decoding and validation never
//! panic, and every chunk location of what validates lies in a listed pack.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexus_remote::meta::Meta;

fuzz_target!(|data: &[u8]| {
    if let Ok(meta) = Meta::decode(data) {
        for location in meta.locations() {
            assert!(meta.packs.iter().any(|(name, _)| **name == *location.pack));
        }
    }
});
