//! `CACHE/debs.lock` as whoever wrote it left it (its owner, or a tool
//! that edited it): parsing never panics; a refusal names a line within
//! the file; what parses, written back as `Pins::record` writes it,
//! parses again to the same pins and the same text.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use nexus_system::SystemError;
use nexus_system::pins::Pins;

fuzz_target!(|data: &[u8]| {
    // Read with read_to_string: never anything but UTF-8.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/cache/debs.lock");
    let pins = match Pins::parse(path, text) {
        Ok(pins) => pins,
        Err(SystemError::DebPin { file, message }) => {
            assert_eq!(file, path);
            let line: usize = message
                .strip_prefix("line ")
                .and_then(|m| m.split_once(':'))
                .and_then(|(n, _)| n.parse().ok())
                .unwrap_or_else(|| panic!("names no line: {message}"));
            assert!(
                (1..=text.lines().count().max(1)).contains(&line),
                "{message}"
            );
            return;
        }
        Err(other) => panic!("not a DebPin error: {other}"),
    };
    for (name, pin) in pins.iter() {
        assert!(!name.is_empty() && !name.contains('/'), "{name:?}");
        assert_eq!(pin.sha256.len(), 64);
        assert!(
            pin.sha256
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        );
        assert_eq!(pins.get(name), Some(pin));
    }
    let written = pins.render();
    let again = Pins::parse(path, &written)
        .unwrap_or_else(|e| panic!("written back, it does not parse: {e}\n{written}"));
    assert_eq!(again, pins, "{written}");
    assert_eq!(again.render(), written);
});
