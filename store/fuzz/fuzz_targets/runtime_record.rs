//! A runtime record (FORMAT.md, "Runtime records") as root reads it in gc,
//! prune and `nexus status`: the daemon that wrote it is confined, but its
//! sandbox user may write anything in `STORE/run`. Parsing never panics,
//! and a record that parses is written back as the daemon would write it
//! and reads again the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexus_store::runtime::{encode_record, parse_record};

fuzz_target!(|data: &[u8]| {
    let Some(record) = parse_record(data) else {
        return;
    };
    let text = encode_record(&record).expect("a parsed record encodes");
    assert_eq!(parse_record(&text).as_ref(), Some(&record));
});
