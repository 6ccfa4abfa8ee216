//! Sizes and times as people read them, for text output (JSON keeps exact
//! byte counts and seconds since the epoch).

use bytesize::ByteSize;
use jiff::Timestamp;
use jiff::tz::TimeZone;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_use_binary_units() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(3 << 30), "3.0 GiB");
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
