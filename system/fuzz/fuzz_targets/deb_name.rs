//! A `.deb` file name as `debs.lock` pins it or apt's index names it, as
//! the fetch takes it apart into package and version to choose a cached
//! file: never a panic, and a name stands for a version only in the one
//! spelling apt gives it, so that no other name passes for the same
//! package version.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexus_system::fetch::parse_deb_name;

fuzz_target!(|data: &[u8]| {
    // apt's output is decoded lossily, debs.lock as UTF-8.
    let name = String::from_utf8_lossy(data);
    let Some(parsed) = parse_deb_name(&name) else {
        return;
    };
    assert!(!parsed.package.is_empty() && !parsed.package.contains('_'));
    assert!(
        parsed.version.starts_with(|c: char| c.is_ascii_digit()),
        "{name}"
    );
    // Written back as apt spells it, it is the same name.
    let spelled = format!("{}_{}_", parsed.package, parsed.version.replace(':', "%3a"));
    let arch = name
        .strip_prefix(&spelled)
        .and_then(|rest| rest.strip_suffix(".deb"))
        .unwrap_or_else(|| panic!("{name} is not spelled {spelled}ARCH.deb"));
    assert!(!arch.is_empty());
    assert!(
        arch.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    );
    assert_eq!(
        parse_deb_name(&format!("{spelled}{arch}.deb")),
        Some(parsed)
    );
});
