//! Sizes, times and generation changes as people read them, for text
//! output shared by `nip` and `nexus` (JSON keeps exact byte counts and
//! seconds since the epoch).

use bytesize::ByteSize;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use nexus_store::generations::GenerationDiff;

/// A byte count in binary units: `512 B`, `1.4 MiB`, `3.0 GiB`.
pub fn size(bytes: u64) -> String {
    ByteSize::b(bytes).display().iec().to_string()
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM:SS ZONE` in the system's
/// time zone (`TZ`, else `/etc/localtime`).
pub fn time(secs: i64) -> String {
    time_in(secs, &TimeZone::system())
}

/// [`time`] in a given zone.
pub fn time_in(secs: i64, zone: &TimeZone) -> String {
    match Timestamp::from_second(secs) {
        Ok(t) => t
            .to_zoned_datetime(zone.clone())
            .strftime("%Y-%m-%d %H:%M:%S %Z")
            .to_string(),
        // Out of jiff's range (years beyond ±9999): say what is stored.
        Err(_) => format!("{secs} s after the epoch"),
    }
}

/// A size change with its sign: `+1.5 KiB`, `-20 B`, `±0 B`.
pub fn signed_bytes(delta: i64) -> String {
    match delta.signum() {
        1 => format!("+{}", size(delta.unsigned_abs())),
        -1 => format!("-{}", size(delta.unsigned_abs())),
        _ => "±0 B".to_string(),
    }
}

/// At most this many changes are named in a one-line summary; more are
/// counted.
const NAMED_CHANGES: usize = 5;

/// One line saying what a generation changed: `hello 1→2, +jq/1.6,
/// -curl/8 (+1.2 MiB)`; `no change` for a generation equal to the one
/// before (a rollback to where one already is).
pub fn diff_summary(diff: &GenerationDiff) -> String {
    let mut pieces: Vec<String> = diff
        .current_moved
        .iter()
        .map(|m| format!("{} {}→{}", m.app, m.from, m.to))
        .collect();
    pieces.extend(
        diff.versions_added
            .iter()
            .map(|v| format!("+{}/{}", v.name, v.version)),
    );
    pieces.extend(
        diff.versions_removed
            .iter()
            .map(|v| format!("-{}/{}", v.name, v.version)),
    );
    let mut line = if pieces.is_empty() {
        "no change".to_string()
    } else if pieces.len() <= NAMED_CHANGES {
        pieces.join(", ")
    } else {
        format!(
            "{} versions added, {} removed, {} Current moved",
            diff.versions_added.len(),
            diff.versions_removed.len(),
            diff.current_moved.len()
        )
    };
    if diff.logical_bytes.delta != 0 {
        line.push_str(&format!(" ({})", signed_bytes(diff.logical_bytes.delta)));
    }
    line
}

/// A name for a terminal (a file name or link target from a package, a
/// mount point from a runtime record): as UTF-8, lossily, with control and
/// Unicode format characters spelt out (`\n`, `\u{1b}`, `\u{202e}`) and
/// backslashes doubled, so that a name shows what it holds and nothing
/// else (no escape sequence reaches the terminal, no line or bidirectional
/// override fakes another entry).
pub fn for_terminal(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for c in String::from_utf8_lossy(bytes).chars() {
        if c == '\\' || c.is_control() || nexus_store::names::is_format(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use nexus_store::generations::{CurrentMove, SizeChange, VersionRef};

    #[test]
    fn control_characters_are_shown_escaped() {
        assert_eq!(for_terminal(b"/Programs"), "/Programs");
        assert_eq!(
            for_terminal(b"/mnt\x1b]0;owned\x07\nroot#"),
            "/mnt\\u{1b}]0;owned\\u{7}\\nroot#"
        );
    }

    #[test]
    fn sizes_read_like_people_write_them() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(3 << 30), "3.0 GiB");
        assert_eq!(signed_bytes(-2048), "-2.0 KiB");
        assert_eq!(signed_bytes(0), "±0 B");
    }

    fn version(name: &str, version: &str) -> VersionRef {
        VersionRef {
            name: name.into(),
            version: version.into(),
            bytes: 0,
        }
    }

    #[test]
    fn summaries_name_a_few_changes_and_count_many() {
        let mut diff = GenerationDiff {
            from: Some(1),
            to: 2,
            apps_added: vec!["jq".into()],
            apps_removed: vec![],
            versions_added: vec![version("hello", "2"), version("jq", "1.6")],
            versions_removed: vec![],
            current_moved: vec![CurrentMove {
                app: "hello".into(),
                from: "1".into(),
                to: "2".into(),
            }],
            logical_bytes: SizeChange {
                before: 0,
                after: 1536,
                delta: 1536,
            },
            stored_bytes: None,
        };
        assert_eq!(
            diff_summary(&diff),
            "hello 1→2, +hello/2, +jq/1.6 (+1.5 KiB)"
        );
        diff.versions_removed = (0..5).map(|i| version("x", &i.to_string())).collect();
        assert_eq!(
            diff_summary(&diff),
            "2 versions added, 5 removed, 1 Current moved (+1.5 KiB)"
        );
    }

    #[test]
    fn times_are_shown_in_a_zone() {
        assert_eq!(time_in(0, &TimeZone::UTC), "1970-01-01 00:00:00 UTC");
        assert_eq!(
            time_in(1_700_000_000, &TimeZone::UTC),
            "2023-11-14 22:13:20 UTC"
        );
        let paris = TimeZone::get("Europe/Paris").unwrap();
        assert_eq!(time_in(1_700_000_000, &paris), "2023-11-14 23:13:20 CET");
        assert_eq!(
            time_in(i64::MAX, &TimeZone::UTC),
            format!("{} s after the epoch", i64::MAX)
        );
    }
}
