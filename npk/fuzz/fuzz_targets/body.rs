//! Arbitrary bytes as a decoded body, a compressed body, a manifest and a
//! public key file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexus_npk::body::{Body, decompress};
use nexus_npk::manifest::{Manifest, decode_header, decode_trailer};

fuzz_target!(|data: &[u8]| {
    if let Ok(body) = Body::decode(data, 32, 1 << 40) {
        // Whatever decodes must encode back to the same bytes.
        assert_eq!(body.encode(), data);
    }
    if let Ok(plain) = decompress(data) {
        let _ = Body::decode(&plain, 32, 1 << 40);
    }
    if let Ok(manifest) = Manifest::decode(data) {
        // Signatures cover the re-encoded manifest: it must be these bytes.
        assert_eq!(manifest.encode(), data);
    }
    let _ = decode_trailer(data);
    let _ = decode_header(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = nexus_npk::PublicKey::parse(text);
    }
});
