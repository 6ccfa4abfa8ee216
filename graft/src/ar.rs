//! The ar archives `.deb`s are: a magic line, then members, each a 60-byte
//! header and its bytes, padded to an even length.
//!
//! Read as a stream, and only with the plain names a `.deb` uses (GNU ar's
//! trailing `/` allowed). The GNU and BSD extensions for long names (a `//`
//! table, `/N` references into it, `#1/N` names stored before the data) are
//! refused: a `.deb` needs none, and a reader of them holds a table of
//! whatever size its header declares (the `ar` crate allocated 9.3 GB for
//! one header, and panicked on a reference past its table).

use std::io::{self, Read};

/// The first bytes of every ar archive.
const MAGIC: &[u8; 8] = b"!<arch>\n";
/// A member header's length.
const HEADER_LEN: usize = 60;

/// A member's name (without GNU's trailing `/` and the padding) and size.
#[derive(Debug, PartialEq, Eq)]
pub struct MemberHeader {
    /// The name.
    pub name: Vec<u8>,
    /// Its bytes.
    pub size: u64,
}

/// A streaming reader of an ar archive: [`ArReader::next_member`], then
/// the member's bytes through [`Read`].
pub struct ArReader<R> {
    inner: R,
    started: bool,
    /// Bytes of the current member not read yet.
    left: u64,
    /// Whether the current member is followed by a padding byte.
    pad: bool,
}

fn invalid(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

impl<R: Read> ArReader<R> {
    /// A reader of the archive `inner` (nothing is read yet).
    pub fn new(inner: R) -> ArReader<R> {
        ArReader {
            inner,
            started: false,
            left: 0,
            pad: false,
        }
    }

    /// The next member's header, once what is left of the previous member
    /// is skipped; `None` at the end of the archive.
    pub fn next_member(&mut self) -> io::Result<Option<MemberHeader>> {
        if !self.started {
            let mut magic = [0u8; MAGIC.len()];
            self.inner.read_exact(&mut magic)?;
            if &magic != MAGIC {
                return Err(invalid("not an ar archive".into()));
            }
            self.started = true;
        }
        let skipped = io::copy(&mut (&mut self.inner).take(self.left), &mut io::sink())?;
        if skipped != self.left {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.left = 0;
        let mut header = [0u8; HEADER_LEN];
        let mut got = 0;
        if std::mem::take(&mut self.pad) {
            // The last member's padding may be missing.
            match fill(&mut self.inner, &mut header[..1])? {
                0 => return Ok(None),
                _ if header[0] == b'\n' => {}
                _ => got = 1,
            }
        }
        got += fill(&mut self.inner, &mut header[got..])?;
        match got {
            0 => return Ok(None),
            HEADER_LEN => {}
            n => return Err(invalid(format!("a member header of {n} bytes"))),
        }
        if &header[58..60] != b"`\n" {
            return Err(invalid("a member header without its end mark".into()));
        }
        let field = &header[..16];
        let mut name = field.to_vec();
        while name.last() == Some(&b' ') {
            name.pop();
        }
        if name.starts_with(b"/") || name.starts_with(b"#1/") {
            return Err(invalid(format!(
                "member name {:?}: long-name tables and references are not read",
                String::from_utf8_lossy(&name)
            )));
        }
        if name.last() == Some(&b'/') {
            name.pop();
        }
        let size = std::str::from_utf8(&header[48..58])
            .ok()
            .map(str::trim_end)
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| invalid("a member size that is not a number".into()))?;
        self.left = size;
        self.pad = size % 2 == 1;
        Ok(Some(MemberHeader { name, size }))
    }
}

/// Reads into `buf` until it is full or the stream ends; how much was read.
fn fill(inner: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match inner.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

impl<R: Read> Read for ArReader<R> {
    /// The current member's bytes; its end reads as the end of the stream.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, size: &str) -> Vec<u8> {
        let mut h = format!(
            "{name:<16}{:<12}{:<6}{:<6}{:<8}{size:<10}",
            0, 0, 0, "100644"
        )
        .into_bytes();
        h.extend_from_slice(b"`\n");
        assert_eq!(h.len(), HEADER_LEN);
        h
    }

    fn archive(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        for (name, data) in members {
            out.extend(header(name, &data.len().to_string()));
            out.extend_from_slice(data);
            if data.len() % 2 == 1 {
                out.push(b'\n');
            }
        }
        out
    }

    #[test]
    fn members_read_in_order_skipped_or_not() {
        let bytes = archive(&[
            ("debian-binary", b"2.0\n"),
            ("odd/", b"abc"),
            ("last", b"xy"),
        ]);
        let mut ar = ArReader::new(&bytes[..]);
        let first = ar.next_member().unwrap().unwrap();
        assert_eq!(
            (first.name.as_slice(), first.size),
            (&b"debian-binary"[..], 4)
        );
        let mut text = String::new();
        ar.read_to_string(&mut text).unwrap();
        assert_eq!(text, "2.0\n");
        // Not read: skipped, padding included.
        assert_eq!(ar.next_member().unwrap().unwrap().name, b"odd");
        let last = ar.next_member().unwrap().unwrap();
        assert_eq!(last.name, b"last");
        let mut data = Vec::new();
        ar.read_to_end(&mut data).unwrap();
        assert_eq!(data, b"xy");
        assert_eq!(ar.next_member().unwrap(), None);
    }

    /// The `ar` crate panicked on a `/999` reference and allocated the
    /// declared size of a `//` table (9.3 GB) before reading it.
    #[test]
    fn long_name_extensions_and_broken_headers_are_refused() {
        for name in ["/999", "//", "/", "#1/20"] {
            let mut bytes = MAGIC.to_vec();
            bytes.extend(header(name, "9999999999"));
            let err = ArReader::new(&bytes[..]).next_member().unwrap_err();
            assert!(err.to_string().contains("not read"), "{name}: {err}");
        }
        let mut bytes = MAGIC.to_vec();
        bytes.extend(header("x", "12z"));
        assert!(ArReader::new(&bytes[..]).next_member().is_err());
        let mut bytes = MAGIC.to_vec();
        bytes.extend(&header("x", "1")[..30]);
        assert!(ArReader::new(&bytes[..]).next_member().is_err());
        assert!(ArReader::new(&b"!<arch>X"[..]).next_member().is_err());
        // A member shorter than its size: the skip fails.
        let mut bytes = MAGIC.to_vec();
        bytes.extend(header("x", "100"));
        bytes.extend_from_slice(b"short");
        let mut ar = ArReader::new(&bytes[..]);
        ar.next_member().unwrap();
        assert!(ar.next_member().is_err());
    }
}
