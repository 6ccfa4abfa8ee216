//! A remote manifest as a mirror serves it: decoding never panics, and
//! what decodes encodes back to the same signed bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexus_remote::manifest::RemoteManifest;

fuzz_target!(|data: &[u8]| {
    if let Ok((manifest, signature)) = RemoteManifest::decode(data) {
        let mut again = manifest.encode();
        again.extend_from_slice(&signature);
        assert_eq!(again, data);
    }
});
