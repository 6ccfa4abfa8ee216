//! Validation of package names and versions.
//!
//! Both become path components of `/Programs/App/Version`, so they must be
//! usable as one: non-empty, no `/`, not `.` or `..`, no control characters
//! and no Unicode format characters (General_Category Cf: bidirectional
//! overrides such as U+202E, zero-width joiners, the BOM), which would let
//! a listing show one name while meaning another.
//! `Current` is reserved as a version because `App/Current` is the link to the
//! chosen version.

use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

use crate::error::{Result, StoreError};

/// Longest accepted name or version, in bytes (a file-name component limit).
pub const MAX_LEN: usize = 255;

fn check(what: &'static str, value: &str) -> Result<()> {
    let fail = |reason| {
        Err(StoreError::InvalidName {
            what,
            value: value.to_string(),
            reason,
        })
    };
    if value.is_empty() {
        return fail("must not be empty");
    }
    if value.len() > MAX_LEN {
        return fail("longer than 255 bytes");
    }
    if value == "." || value == ".." {
        return fail("must not be `.` or `..`");
    }
    if value.contains('/') {
        return fail("must not contain `/`");
    }
    if value.chars().any(|c| c.is_control()) {
        return fail("must not contain control characters");
    }
    if value.chars().any(is_format) {
        return fail("must not contain Unicode format characters (such as U+202E)");
    }
    if value.starts_with('-') {
        return fail("must not start with `-`");
    }
    if value.chars().any(char::is_whitespace) {
        return fail("must not contain whitespace");
    }
    Ok(())
}

/// True for a Unicode format character (General_Category Cf: U+202E and
/// the other bidirectional controls, zero-width joiners, the BOM): shown,
/// it makes text read as other text.
pub fn is_format(c: char) -> bool {
    c.general_category() == GeneralCategory::Format
}

/// Checks a package name.
pub fn check_name(name: &str) -> Result<()> {
    check("name", name)
}

/// Checks a package version.
pub fn check_version(version: &str) -> Result<()> {
    check("version", version)?;
    if version == "Current" {
        return Err(StoreError::InvalidName {
            what: "version",
            value: version.into(),
            reason: "`Current` is reserved for the link to the chosen version",
        });
    }
    Ok(())
}

/// Splits `NAME/VERSION` (version optional) and validates both parts.
pub fn parse_spec(spec: &str) -> Result<(String, Option<String>)> {
    match spec.split_once('/') {
        Some((name, version)) => {
            check_name(name)?;
            check_version(version)?;
            Ok((name.to_string(), Some(version.to_string())))
        }
        None => {
            check_name(spec)?;
            Ok((spec.to_string(), None))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_debian_style_versions() {
        for v in ["2.10-3", "1:15.0.6-4+b1", "12.2.0-14+deb12u1", "43~beta"] {
            check_version(v).unwrap();
        }
        check_name("libstdc++6").unwrap();
    }

    #[test]
    fn refuses_bad_components() {
        for bad in ["", ".", "..", "a/b", "x\u{1}y", "tab\tbed", "-rf"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
            assert!(check_version(bad).is_err(), "{bad:?}");
        }
        assert!(check_version("Current").is_err());
        // Bidirectional overrides, zero-width characters, the BOM and tag
        // characters (all of General_Category Cf) would spoof listings.
        for bad in [
            "evil\u{202E}txt.exe",
            "a\u{200B}b",
            "a\u{200D}b",
            "\u{FEFF}app",
            "a\u{2066}b",
            "a\u{E0041}",
            "soft\u{00AD}hyphen",
        ] {
            let err = check_name(bad).unwrap_err().to_string();
            assert!(err.contains("format characters"), "{bad:?}: {err}");
            assert!(check_version(bad).is_err(), "{bad:?}");
        }
        // Letters of any script stay allowed.
        check_name("résumé-ツール").unwrap();
        assert!(check_name(&"a".repeat(256)).is_err());
    }

    #[test]
    fn parses_specs() {
        assert_eq!(parse_spec("hello").unwrap(), ("hello".into(), None));
        assert_eq!(
            parse_spec("hello/2.10").unwrap(),
            ("hello".into(), Some("2.10".into()))
        );
        assert!(parse_spec("hello/2.10/x").is_err());
    }
}
