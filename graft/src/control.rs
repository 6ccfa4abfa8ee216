//! Debian control data (deb822): the `control` file of a `.deb`, and the
//! machine-readable `copyright` file (DEP-5) from which licences are taken.

use crate::error::Problem;

/// The fields of one paragraph, in file order. Continuation lines are
/// joined with `\n`, their leading space kept off.
pub type Fields = Vec<(String, String)>;

/// Parses a binary package's `control` file: exactly one paragraph, UTF-8,
/// unique field names, and `Package` and `Version` present.
pub fn parse_control(text: &[u8]) -> Result<Fields, Problem> {
    let text = std::str::from_utf8(text)
        .map_err(|_| Problem::Metadata("the control file is not UTF-8".into()))?;
    let mut paragraphs = paragraphs(text)?;
    if paragraphs.len() != 1 {
        return Err(Problem::Metadata(format!(
            "the control file has {} paragraphs, not one",
            paragraphs.len()
        )));
    }
    let fields = paragraphs.remove(0);
    for required in ["Package", "Version"] {
        if field(&fields, required).is_none_or(str::is_empty) {
            return Err(Problem::Metadata(format!(
                "the control file has no {required} field"
            )));
        }
    }
    Ok(fields)
}

/// Splits deb822 text into paragraphs of fields.
pub fn paragraphs(text: &str) -> Result<Vec<Fields>, Problem> {
    let mut out: Vec<Fields> = Vec::new();
    let mut current: Fields = Vec::new();
    // The current paragraph's field names, lowercased: a scan of `current`
    // per field made a control file of many fields cost hours.
    let mut names: std::collections::HashSet<String> = std::collections::HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let bad = |why: &str| Problem::Metadata(format!("control line {}: {why}", n + 1));
        if line.trim().is_empty() {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
                names.clear();
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            let Some((_, value)) = current.last_mut() else {
                return Err(bad("continuation line before any field"));
            };
            let more = line[1..].trim_end();
            value.push('\n');
            // A lone `.` stands for an empty line of a long description.
            value.push_str(if more == "." { "" } else { more });
            continue;
        }
        let (name, value) = line.split_once(':').ok_or_else(|| bad("no `:`"))?;
        if name.is_empty() || name.starts_with('-') || !name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad("invalid field name"));
        }
        if !names.insert(name.to_ascii_lowercase()) {
            return Err(bad(&format!("field {name} given twice")));
        }
        current.push((name.to_string(), value.trim().to_string()));
    }
    if !current.is_empty() {
        out.push(current);
    }
    Ok(out)
}

/// A field's value (names compare case-insensitively, as in deb822).
pub fn field<'a>(fields: &'a Fields, name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A comma-separated relation field (`Depends`) as a list; alternatives
/// stay together (`a | b`).
pub fn relations(value: Option<&str>) -> Vec<String> {
    value
        .unwrap_or("")
        .split(',')
        .map(|r| r.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|r| !r.is_empty())
        .collect()
}

/// Checks a Debian package name: `[a-z0-9][a-z0-9+.-]+`.
pub fn check_package_name(name: &str) -> Result<(), Problem> {
    let ok = name.len() >= 2
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Problem::Metadata(format!(
            "{name:?} is not a valid Debian package name"
        )))
    }
}

/// Splits a Debian version `[epoch:]upstream[-revision]` into its epoch and
/// the rest, checking its characters.
pub fn split_version(version: &str) -> Result<(Option<u32>, &str), Problem> {
    let bad = || Problem::Metadata(format!("{version:?} is not a valid Debian version"));
    let (epoch, rest) = match version.split_once(':') {
        // Digits only: `u32::from_str` also takes a leading `+`, which
        // would give `+1:2` and `1:2` one meaning and two spellings.
        Some((e, rest)) if !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()) => {
            (Some(e.parse::<u32>().map_err(|_| bad())?), rest)
        }
        Some(_) => return Err(bad()),
        None => (None, version),
    };
    let ok = rest.bytes().next().is_some_and(|b| b.is_ascii_digit())
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+.~-:".contains(&b))
        && !rest.ends_with('-');
    if ok { Ok((epoch, rest)) } else { Err(bad()) }
}

/// The licences a DEP-5 `copyright` file names (the first word of every
/// `License:` field, in order, each once); empty if it is not DEP-5.
pub fn dep5_licenses(text: &[u8]) -> Vec<String> {
    let Ok(text) = std::str::from_utf8(text) else {
        return Vec::new();
    };
    let Ok(paras) = paragraphs(text) else {
        return Vec::new();
    };
    let machine_readable = paras
        .first()
        .and_then(|p| field(p, "Format"))
        .is_some_and(|f| f.contains("copyright-format"));
    if !machine_readable {
        return Vec::new();
    }
    let mut out: Vec<String> = Vec::new();
    for p in &paras {
        if let Some(short) = field(p, "License")
            .and_then(|l| l.lines().next())
            .map(str::trim)
            .filter(|l| !l.is_empty())
            && !out.iter().any(|o| o == short)
        {
            out.push(short.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str = "Package: hello\nVersion: 2.10-3\nArchitecture: amd64\nDepends: libc6 (>= 2.34), foo | bar\nDescription: example package\n GNU hello prints.\n .\n Second paragraph.\n";

    #[test]
    fn parses_a_control_file() {
        let f = parse_control(HELLO.as_bytes()).unwrap();
        assert_eq!(field(&f, "package"), Some("hello"));
        assert_eq!(
            field(&f, "Description"),
            Some("example package\nGNU hello prints.\n\nSecond paragraph.")
        );
        assert_eq!(
            relations(field(&f, "Depends")),
            ["libc6 (>= 2.34)", "foo | bar"]
        );
    }

    #[test]
    fn refuses_bad_control_files() {
        for bad in [
            "Version: 1\n",
            "Package: a\nPackage: b\nVersion: 1\n",
            " leading continuation\n",
            "Package: a\nVersion: 1\n\nPackage: b\n",
            "no colon\n",
        ] {
            assert!(parse_control(bad.as_bytes()).is_err(), "{bad:?}");
        }
        assert!(parse_control(b"Package: \xff\nVersion: 1\n").is_err());
    }

    #[test]
    fn checks_names_and_versions() {
        check_package_name("libstdc++6").unwrap();
        assert!(check_package_name("Hello").is_err());
        assert_eq!(split_version("1:2.10-3").unwrap(), (Some(1), "2.10-3"));
        assert_eq!(split_version("2.10").unwrap(), (None, "2.10"));
        for bad in ["x:1", "a1", "1 2", "1/2", "", "1-", "+1:2", ":2", "-1:2"] {
            assert!(split_version(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reads_dep5_licences() {
        let c = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\nFiles: *\nLicense: GPL-3+\n\nFiles: a\nLicense: MIT\n text\n\nLicense: GPL-3+\n full text\n";
        assert_eq!(dep5_licenses(c.as_bytes()), ["GPL-3+", "MIT"]);
        assert!(dep5_licenses(b"This is free software.\n").is_empty());
    }
}
