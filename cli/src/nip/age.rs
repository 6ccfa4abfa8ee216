//! Ages on the command line: `30d`, `12h`, `2w` (`nip gc --older-than`).

use std::time::Duration;

/// Parses an age: a whole number followed by `s`, `m`, `h`, `d` or `w`
/// (seconds, minutes, hours, days, weeks); `30d` is thirty days, as Nix's
/// `--delete-older-than 30d`.
pub fn parse_age(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let Some(unit) = t.chars().last().filter(char::is_ascii_alphabetic) else {
        return Err(format!(
            "{text:?} needs a unit: s, m, h, d or w (e.g. 30d, 12h)"
        ));
    };
    let seconds: u64 = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        'w' => 7 * 86_400,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?} (use s, m, h, d or w)"
            ));
        }
    };
    let n: u64 = t[..t.len() - 1]
        .parse()
        .map_err(|_| format!("{text:?} is not an age (e.g. 30d, 12h, 2w)"))?;
    n.checked_mul(seconds)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::parse_age;
    use std::time::Duration;

    #[test]
    fn parses_ages() {
        assert_eq!(parse_age("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_age("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse_age("2w"), Ok(Duration::from_secs(14 * 86_400)));
        assert_eq!(parse_age("0s"), Ok(Duration::ZERO));
        assert!(parse_age("30").is_err(), "a unit is required");
        assert!(parse_age("30y").is_err());
        assert!(parse_age("d").is_err());
        assert!(parse_age("-3d").is_err());
        assert!(parse_age("99999999999999999w").is_err());
    }
}
