//! A profile's version constraint (`">= 1.6, < 2"`) and the versions it is
//! matched against: the first line is the constraint, the next three are
//! versions. Parsing and matching never panic; a parsed constraint written
//! back parses again to the same; Debian's ordering, which constraints and
//! `nip add` rely on, is a total order on any three versions.
#![no_main]

use std::cmp::Ordering;

use libfuzzer_sys::fuzz_target;
use nexus_system::constraint::Constraint;
use nexus_system::version::compare;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.splitn(4, '\n');
    let constraint = lines.next().unwrap_or_default();
    let versions: Vec<&str> = lines.collect();
    let mut versions = versions.into_iter();
    let (a, b, c) = (
        versions.next().unwrap_or_default(),
        versions.next().unwrap_or_default(),
        versions.next().unwrap_or_default(),
    );

    for v in [a, b, c] {
        assert_eq!(compare(v, v), Ordering::Equal, "{v:?}");
    }
    for (x, y) in [(a, b), (b, c), (a, c)] {
        assert_eq!(compare(x, y), compare(y, x).reverse(), "{x:?} vs {y:?}");
    }
    let le = |x, y| compare(x, y) != Ordering::Greater;
    for (x, y, z) in [
        (a, b, c),
        (a, c, b),
        (b, a, c),
        (b, c, a),
        (c, a, b),
        (c, b, a),
    ] {
        if le(x, y) && le(y, z) {
            assert!(le(x, z), "{x:?} <= {y:?} <= {z:?} but not {x:?} <= {z:?}");
        }
    }

    let Ok(parsed) = Constraint::parse(constraint) else {
        return;
    };
    let shown = parsed.to_string();
    let again = Constraint::parse(&shown).expect("a constraint written back parses");
    assert_eq!(again, parsed, "{shown}");
    assert_eq!(again.to_string(), shown);
    if let Some(exact) = parsed.exact() {
        assert!(parsed.matches(exact), "{shown} refuses its own version");
        assert_eq!(parsed.matches(a), compare(a, exact) == Ordering::Equal);
    }
    let _ = parsed.matches(a);
    assert!(Constraint::any().matches(a));
});
