//! The fetcher's reading of a daemon's requests (FORMAT.md, "Fetcher
//! link"): whatever bytes a compromised daemon sends, the fetcher reads
//! requests until the stream ends or is cut, and accepts only requests
//! whose pack name and range pass the check, re-encoding to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexus_remote::fetcher::{MAX_RANGE, RangeRequest};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some(request)) = RangeRequest::read_from(&mut rest) {
        if let Ok((pack, range)) = request.checked() {
            assert!(!pack.contains('/'));
            assert!(range.end > range.start);
            assert!(range.end - range.start <= u64::from(MAX_RANGE));
        }
        let encoded = request.encode().expect("a name read back is at most 255 bytes");
        let mut again = &encoded[..];
        assert_eq!(RangeRequest::read_from(&mut again).ok().flatten(), Some(request));
    }
});
