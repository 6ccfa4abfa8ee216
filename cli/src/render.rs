//! Sizes and generation changes for humans, shared by `nip` and `nexus`
//! (`--json` output keeps exact numbers).

use nexus_store::generations::GenerationDiff;

/// Bytes with a binary unit: `512 B`, `1.5 KiB`, `3.2 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A size change with its sign: `+1.5 KiB`, `-20 B`, `±0 B`.
pub fn signed_bytes(delta: i64) -> String {
    match delta.signum() {
        1 => format!("+{}", human_bytes(delta.unsigned_abs())),
        -1 => format!("-{}", human_bytes(delta.unsigned_abs())),
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

#[cfg(test)]
mod tests {
    use super::*;
    use nexus_store::generations::{CurrentMove, SizeChange, VersionRef};

    #[test]
    fn sizes_read_like_people_write_them() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
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
}
