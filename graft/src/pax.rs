//! pax extended header records (POSIX.1-2001): `LEN KEY=VALUE\n`, where LEN
//! counts the whole record including itself and the newline. Values are
//! bytes, not lines: an xattr value may contain newlines, so records are
//! split by their length, never at newlines.

use crate::error::Problem;

/// Key and value pairs of a pax header.
pub type Records = Vec<(Vec<u8>, Vec<u8>)>;

/// Parses the records of one pax header; later records win over earlier
/// ones with the same key, as POSIX says.
pub fn parse_records(mut data: &[u8]) -> Result<Records, Problem> {
    let bad = |why: &str| Problem::Corrupt(format!("malformed pax header: {why}"));
    let mut out: Records = Vec::new();
    // Where each key's record is in `out`: a later record replaces it in
    // place (a scan of `out` per record made one header of many records
    // cost seconds, and every entry may bring its own).
    let mut at: std::collections::HashMap<Vec<u8>, usize> = std::collections::HashMap::new();
    while !data.is_empty() {
        let space = data
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| bad("record without a length"))?;
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("record length is not a number"))?;
        if len <= space + 1 || len > data.len() {
            return Err(bad("record length out of range"));
        }
        let record = &data[space + 1..len];
        let Some((b'\n', body)) = record.split_last() else {
            return Err(bad("record does not end with a newline"));
        };
        let eq = body
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| bad("record without `=`"))?;
        let (key, value) = (&body[..eq], &body[eq + 1..]);
        if key.is_empty() {
            return Err(bad("empty key"));
        }
        match at.get(key) {
            Some(&i) => out[i].1 = value.to_vec(),
            None => {
                at.insert(key.to_vec(), out.len());
                out.push((key.to_vec(), value.to_vec()));
            }
        }
        data = &data[len..];
    }
    Ok(out)
}

/// A record for tests and fuzz seeds.
pub fn record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    // The length counts its own digits: find the fixed point.
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut out = format!("{len} ").into_bytes();
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_may_hold_newlines() {
        let mut data = record(b"SCHILY.xattr.security.capability", b"\x01\n\x00\x02");
        data.extend(record(b"path", b"a/b"));
        let r = parse_records(&data).unwrap();
        assert_eq!(r[0].1, b"\x01\n\x00\x02");
        assert_eq!(r[1], (b"path".to_vec(), b"a/b".to_vec()));
    }

    #[test]
    fn record_lengths_count_themselves() {
        for n in [0, 1, 5, 90, 95, 1000] {
            let v = vec![b'x'; n];
            let r = record(b"k", &v);
            let space = r.iter().position(|&b| b == b' ').unwrap();
            let len: usize = std::str::from_utf8(&r[..space]).unwrap().parse().unwrap();
            assert_eq!(len, r.len(), "value of {n} bytes");
        }
    }

    #[test]
    fn refuses_malformed_records() {
        for bad in [
            &b"5 a=b"[..],
            b"x a=b\n",
            b"99 a=b\n",
            b"6 ab\n\n",
            b"5 =b\n",
            b"4 a=\n",
        ] {
            assert!(
                parse_records(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(parse_records(b"").unwrap(), vec![]);
    }
}
