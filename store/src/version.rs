//! Ordering versions as Debian does (`dpkg --compare-versions`): the
//! ordering of profile version constraints and of `nip add`'s refusal to
//! move an App's `Current` to an older version. It also sorts the
//! upstream-style versions of the other formats sensibly (`1.6` < `1.10`,
//! `1.0~rc1` < `1.0`).
//!
//! Store versions have no epoch (grafting drops it, see README), but an
//! epoch in a constraint or a version is understood: `N:` is compared
//! first, missing means 0.

use std::cmp::Ordering;

/// Compares two versions the way dpkg does.
pub fn compare(a: &str, b: &str) -> Ordering {
    let (ea, ua, ra) = split(a);
    let (eb, ub, rb) = split(b);
    ea.cmp(&eb)
        .then_with(|| compare_part(ua, ub))
        .then_with(|| compare_part(ra, rb))
}

/// `[epoch:]upstream[-revision]`; the revision is after the last `-`.
fn split(v: &str) -> (u64, &str, &str) {
    let (epoch, rest) = match v.split_once(':') {
        Some((e, rest)) if !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()) => {
            (e.parse().unwrap_or(u64::MAX), rest)
        }
        _ => (0, v),
    };
    match rest.rsplit_once('-') {
        Some((upstream, revision)) => (epoch, upstream, revision),
        None => (epoch, rest, ""),
    }
}

/// The weight of a non-digit character: `~` sorts before everything, even
/// the end of the string; letters before other characters.
fn order(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(b'~') => -1,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(c) => i32::from(c) + 256,
    }
}

/// dpkg's `verrevcmp`: alternating runs of non-digits (compared by
/// `order`) and digits (compared as numbers).
fn compare_part(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        while (i < a.len() && !a[i].is_ascii_digit()) || (j < b.len() && !b[j].is_ascii_digit()) {
            let ac = order(a.get(i).copied().filter(|c| !c.is_ascii_digit()));
            let bc = order(b.get(j).copied().filter(|c| !c.is_ascii_digit()));
            if ac != bc {
                return ac.cmp(&bc);
            }
            if i < a.len() && !a[i].is_ascii_digit() {
                i += 1;
            }
            if j < b.len() && !b[j].is_ascii_digit() {
                j += 1;
            }
        }
        while i < a.len() && a[i] == b'0' {
            i += 1;
        }
        while j < b.len() && b[j] == b'0' {
            j += 1;
        }
        let (si, sj) = (i, j);
        while i < a.len() && a[i].is_ascii_digit() {
            i += 1;
        }
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        // Without leading zeros, a longer run of digits is a larger number.
        let (na, nb) = (&a[si..i], &b[sj..j]);
        let by_number = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
        if by_number != Ordering::Equal {
            return by_number;
        }
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::*;

    #[test]
    fn orders_as_dpkg_does() {
        // Cases checked against `dpkg --compare-versions`.
        for (a, b, want) in [
            ("1.6", "1.10", Less),
            ("1.6-2.1+deb12u3", "1.6-2.1+deb12u2", Greater),
            ("1.6-2.1+deb12u3", "1.6", Greater),
            ("1.0~rc1", "1.0", Less),
            ("1.0", "1.0-0", Equal),
            ("2.10-3", "2.10-6", Less),
            ("1:1.0", "2.0", Greater),
            ("1.35.0-4+deb12u1+b1", "1.35", Greater),
            ("1.0a", "1.0+", Less),
            ("007", "7", Equal),
            ("1.2.3", "1.2.3", Equal),
        ] {
            assert_eq!(compare(a, b), want, "{a} vs {b}");
            assert_eq!(compare(b, a), want.reverse(), "{b} vs {a}");
        }
    }
}
