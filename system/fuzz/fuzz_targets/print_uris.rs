//! What `apt-get download --print-uris` prints (`'URI' FILE SIZE
//! SHA256:HEX`), as the fetch reads it (lossily decoded): parsing never
//! panics; what it accepts is a plain `.deb` name with a size and a
//! lower-case SHA256, and the line apt would print for that parses again
//! to the same. Read as a build's one call for several packages, it
//! answers for exactly the packages asked, each with a file of its own or
//! none.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexus_system::fetch::{parse_candidates, parse_deb_name, parse_print_uris};

fuzz_target!(|data: &[u8]| {
    let out = String::from_utf8_lossy(data);
    let asked = ["hello", "jq", "hell."];
    for success in [true, false] {
        if let Ok(got) = parse_candidates(&asked, &out, &out, success) {
            assert!(got.keys().map(String::as_str).eq(["hell.", "hello", "jq"]));
            for (package, indexed) in got.iter() {
                if let Some(indexed) = indexed {
                    let name = parse_deb_name(&indexed.file).expect("a file apt names parses");
                    assert_eq!(name.package, package);
                }
            }
        }
    }
    let Some(indexed) = parse_print_uris(&out) else {
        return;
    };
    let file = &indexed.file;
    assert!(
        file.ends_with(".deb") && !file.contains(['/', ' ', '\n']),
        "{file:?}"
    );
    let sha = &indexed.pin.sha256;
    assert_eq!(sha.len(), 64);
    assert!(
        sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "{sha}"
    );
    let line = format!(
        "'http://deb.example/pool/{file}' {file} {} SHA256:{sha}\n",
        indexed.pin.size
    );
    assert_eq!(parse_print_uris(&line).as_ref(), Some(&indexed), "{line}");
    // The name is then taken apart as a cached file's.
    let _ = parse_deb_name(file);
});
