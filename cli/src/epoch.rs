//! The times recorded in archives: when one was made, and until when its
//! signature vouches for it.

use anyhow::{Context, Result};

/// `SOURCE_DATE_EPOCH` when set (reproducible builds), otherwise now.
pub fn source_date_epoch() -> Result<i64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds")),
        Err(_) => Ok(nexus_store::now_secs()),
    }
}

/// How long a signed archive stays valid (`--expires-in`), counted from
/// its creation time, so the same inputs still give the same bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpiresIn {
    /// It never expires.
    Never,
    /// It expires this many seconds after it was made.
    After(u64),
}

/// The default lifetime of a system image: a fleet re-signs at least this
/// often (as CVMFS re-signs its whitelist every 30 days), or machines stop
/// accepting what a mirror holding back updates still serves them.
pub const IMAGE_LIFETIME: &str = "90d";

impl ExpiresIn {
    /// Parses `never` or a number with a unit: `s`, `m` (minutes), `h`,
    /// `d`, `w`, `y` (365 days), e.g. `90d`, `12h`, `1y`.
    pub fn parse(text: &str) -> Result<ExpiresIn, String> {
        let t = text.trim();
        if t.eq_ignore_ascii_case("never") {
            return Ok(ExpiresIn::Never);
        }
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        let scale: u64 = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            "w" => 7 * 86_400,
            "y" => 365 * 86_400,
            _ => {
                return Err(format!(
                    "{text:?}: give `never` or a number with a unit s, m, h, d, w or y (e.g. 90d)"
                ));
            }
        };
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("{text:?}: no number before the unit (e.g. 90d)"))?;
        match n.checked_mul(scale) {
            Some(0) => Err(format!("{text:?}: an archive valid for no time at all")),
            Some(secs) if i64::try_from(secs).is_ok() => Ok(ExpiresIn::After(secs)),
            _ => Err(format!("{text:?} is too long (use `never`)")),
        }
    }

    /// The expiry time of an archive made at `created`; warns when that is
    /// already past (a reproducible rebuild with an old
    /// `SOURCE_DATE_EPOCH`, say): readers will refuse the archive.
    pub fn expires(self, created: i64) -> Option<i64> {
        let ExpiresIn::After(secs) = self else {
            return None;
        };
        let at = created.saturating_add(i64::try_from(secs).unwrap_or(i64::MAX));
        if at <= nexus_npk::read::unix_now() {
            tracing::warn!(
                "the archive expires at {at}, {secs} s after its creation time {created}, which is already past: readers will refuse it unless told --allow-expired"
            );
        }
        Some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lifetimes() {
        assert_eq!(ExpiresIn::parse("never"), Ok(ExpiresIn::Never));
        assert_eq!(ExpiresIn::parse("90d"), Ok(ExpiresIn::After(90 * 86_400)));
        assert_eq!(ExpiresIn::parse("12h"), Ok(ExpiresIn::After(43_200)));
        assert_eq!(ExpiresIn::parse("30s"), Ok(ExpiresIn::After(30)));
        assert_eq!(ExpiresIn::parse("1y"), Ok(ExpiresIn::After(31_536_000)));
        for bad in [
            "",
            "90",
            "d",
            "0d",
            "-1d",
            "1.5d",
            "3x",
            "99999999999999999y",
        ] {
            assert!(ExpiresIn::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(ExpiresIn::After(10).expires(100), Some(110));
        assert_eq!(ExpiresIn::Never.expires(100), None);
    }
}
