//! Little-endian, length-prefixed encoding of the `.npk` manifest and body:
//! a writer that cannot fail and a reader that checks every length against
//! what is left, so that hostile input yields an error, never a panic or a
//! huge allocation.

use std::io::Read;

use nexus_store::Hash;

use crate::error::FormatError;

/// Appends encoded values to a buffer.
#[derive(Default)]
pub struct Writer {
    /// The bytes written so far.
    pub buf: Vec<u8>,
}

impl Writer {
    /// Appends one byte.
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    /// Appends a u32.
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// Appends a u64.
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// Appends an i64.
    pub fn i64(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// Appends a hash (32 bytes, no length).
    pub fn hash(&mut self, h: &Hash) {
        self.buf.extend_from_slice(h.as_bytes());
    }
    /// Appends raw bytes with no length.
    pub fn raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }
    /// Appends a u32 length, then the bytes.
    pub fn bytes(&mut self, bytes: &[u8]) {
        self.u32(bytes.len() as u32);
        self.buf.extend_from_slice(bytes);
    }
    /// Appends a string as [`Writer::bytes`].
    pub fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
}

/// Reads encoded values, checking bounds.
pub struct Reader<'a> {
    rest: &'a [u8],
    /// What is being read, for error messages ("body", "manifest").
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// Reads `bytes`, naming them `what` in errors.
    pub fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Reader { rest: bytes, what }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }

    fn short(&self, field: &str) -> FormatError {
        FormatError::Malformed(format!("{}: truncated at {field}", self.what))
    }

    /// Takes `n` raw bytes.
    pub fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], FormatError> {
        if self.rest.len() < n {
            return Err(self.short(field));
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    /// Reads length-prefixed bytes.
    pub fn bytes(&mut self, field: &str) -> Result<&'a [u8], FormatError> {
        let len = self.u32(field)? as usize;
        self.take(len, field)
    }
    /// Reads a length-prefixed UTF-8 string.
    pub fn str(&mut self, field: &str) -> Result<&'a str, FormatError> {
        let bytes = self.bytes(field)?;
        std::str::from_utf8(bytes).map_err(|_| {
            FormatError::Malformed(format!("{}: {field} is not valid UTF-8", self.what))
        })
    }

    /// Reads a count of items each at least `min_item` bytes long, refusing
    /// counts the remaining bytes cannot hold (so a hostile count cannot
    /// make us reserve gigabytes).
    pub fn count(&mut self, field: &str, min_item: usize) -> Result<usize, FormatError> {
        let n = self.u32(field)? as usize;
        if n.saturating_mul(min_item.max(1)) > self.rest.len() {
            return Err(FormatError::Malformed(format!(
                "{}: {field} claims {n} items, more than the {} bytes left can hold",
                self.what,
                self.rest.len()
            )));
        }
        Ok(n)
    }

    /// Fails unless everything was read.
    pub fn finish(self) -> Result<(), FormatError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(FormatError::Malformed(format!(
                "{}: {} unexpected trailing bytes",
                self.what,
                self.rest.len()
            )))
        }
    }
}

/// The fixed-size fields of the encoding, read alike from a slice
/// ([`Reader`]) or a stream ([`StreamReader`]): each reader says how to
/// take `N` bytes, the fields are made from them here.
pub trait Fields {
    /// Reads `N` raw bytes.
    fn raw<const N: usize>(&mut self, field: &str) -> Result<[u8; N], FormatError>;

    /// Reads one byte.
    fn u8(&mut self, field: &str) -> Result<u8, FormatError> {
        Ok(self.raw::<1>(field)?[0])
    }
    /// Reads a little-endian u32.
    fn u32(&mut self, field: &str) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.raw(field)?))
    }
    /// Reads a little-endian u64.
    fn u64(&mut self, field: &str) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.raw(field)?))
    }
    /// Reads a little-endian i64.
    fn i64(&mut self, field: &str) -> Result<i64, FormatError> {
        Ok(i64::from_le_bytes(self.raw(field)?))
    }
    /// Reads a hash.
    fn hash(&mut self, field: &str) -> Result<Hash, FormatError> {
        Ok(Hash(self.raw(field)?))
    }
}

impl Fields for Reader<'_> {
    fn raw<const N: usize>(&mut self, field: &str) -> Result<[u8; N], FormatError> {
        let bytes = self.take(N, field)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }
}

impl<R: Read> Fields for StreamReader<R> {
    fn raw<const N: usize>(&mut self, field: &str) -> Result<[u8; N], FormatError> {
        let mut out = [0u8; N];
        self.fill(&mut out, field)?;
        Ok(out)
    }
}

/// Reads encoded values from a stream (a body as zstd decodes it), as
/// [`Reader`] does from a slice, never past a cap: a count or length is
/// checked against what the cap leaves before anything is done with it,
/// and bytes are held only once they were read, so a claim the stream
/// does not back costs nothing.
pub struct StreamReader<R> {
    inner: R,
    /// Bytes read so far.
    read: u64,
    /// Most bytes the stream may hold.
    cap: u64,
    /// The cap is the stream's length (a slice), not a limit on it.
    exact: bool,
    /// What is being read, for error messages ("body").
    what: &'static str,
}

impl<'a> StreamReader<&'a [u8]> {
    /// Reads `bytes` (errors as [`Reader`]'s), naming them `what`.
    pub fn of_slice(bytes: &'a [u8], what: &'static str) -> Self {
        StreamReader {
            inner: bytes,
            read: 0,
            cap: bytes.len() as u64,
            exact: true,
            what,
        }
    }
}

impl<R: Read> StreamReader<R> {
    /// Reads `inner`, refusing more than `cap` bytes of it.
    pub fn capped(inner: R, cap: u64, what: &'static str) -> Self {
        StreamReader {
            inner,
            read: 0,
            cap,
            exact: false,
            what,
        }
    }

    /// Bytes read so far.
    pub fn position(&self) -> u64 {
        self.read
    }

    /// Bytes the cap still allows.
    pub fn left(&self) -> u64 {
        self.cap - self.read
    }

    fn short(&self, field: &str) -> FormatError {
        FormatError::Malformed(format!("{}: truncated at {field}", self.what))
    }

    /// Reads exactly `buf.len()` bytes.
    fn fill(&mut self, buf: &mut [u8], field: &str) -> Result<(), FormatError> {
        self.admit(buf.len() as u64, field)?;
        self.inner
            .read_exact(buf)
            .map_err(|e| self.failed(e, field))?;
        self.read += buf.len() as u64;
        Ok(())
    }

    /// Refuses `n` more bytes past the cap.
    fn admit(&self, n: u64, field: &str) -> Result<(), FormatError> {
        if n <= self.left() {
            Ok(())
        } else if self.exact {
            Err(self.short(field))
        } else {
            Err(FormatError::Malformed(format!(
                "{}: larger than {} bytes (at {field})",
                self.what, self.cap
            )))
        }
    }

    fn failed(&self, e: std::io::Error, field: &str) -> FormatError {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            self.short(field)
        } else {
            FormatError::Malformed(format!("{}: {e} (at {field})", self.what))
        }
    }

    /// Reads length-prefixed bytes; the buffer grows as they arrive.
    pub fn bytes(&mut self, field: &str) -> Result<Vec<u8>, FormatError> {
        let len = self.u32(field)?;
        self.take_bytes(len, field)
    }

    /// Reads `len` bytes whose length was read already; the buffer grows
    /// as they arrive.
    pub fn take_bytes(&mut self, len: u32, field: &str) -> Result<Vec<u8>, FormatError> {
        let len = u64::from(len);
        self.admit(len, field)?;
        let mut out = Vec::new();
        let got = (&mut self.inner)
            .take(len)
            .read_to_end(&mut out)
            .map_err(|e| self.failed(e, field))?;
        self.read += got as u64;
        if got as u64 != len {
            return Err(self.short(field));
        }
        Ok(out)
    }

    /// Reads a length-prefixed UTF-8 string.
    pub fn str(&mut self, field: &str) -> Result<String, FormatError> {
        String::from_utf8(self.bytes(field)?).map_err(|_| {
            FormatError::Malformed(format!("{}: {field} is not valid UTF-8", self.what))
        })
    }

    /// Refuses `n` items each at least `min_item` bytes long that the cap
    /// cannot hold (as [`Reader::count`], for a count read already).
    pub fn fits(&self, n: u32, field: &str, min_item: usize) -> Result<usize, FormatError> {
        let n = n as usize;
        if (n as u64).saturating_mul(min_item.max(1) as u64) > self.left() {
            let room = if self.exact {
                "left can hold"
            } else {
                "it may still hold"
            };
            return Err(FormatError::Malformed(format!(
                "{}: {field} claims {n} items, more than the {} bytes {room}",
                self.what,
                self.left()
            )));
        }
        Ok(n)
    }

    /// Reads a count of items each at least `min_item` bytes long, refusing
    /// counts the cap cannot hold.
    pub fn count(&mut self, field: &str, min_item: usize) -> Result<usize, FormatError> {
        let n = self.u32(field)?;
        self.fits(n, field, min_item)
    }

    /// Fails unless the stream ends here.
    pub fn finish(mut self) -> Result<(), FormatError> {
        let mut probe = [0u8; 1];
        loop {
            match self.inner.read(&mut probe) {
                Ok(0) => return Ok(()),
                Ok(_) if self.exact => {
                    return Err(FormatError::Malformed(format!(
                        "{}: {} unexpected trailing bytes",
                        self.what,
                        self.left()
                    )));
                }
                Ok(_) => {
                    return Err(FormatError::Malformed(format!(
                        "{}: unexpected trailing bytes",
                        self.what
                    )));
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.failed(e, "the end")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bounds() {
        let mut w = Writer::default();
        w.u8(7);
        w.u32(1);
        w.u64(2);
        w.i64(-3);
        w.str("héllo");
        w.hash(&Hash::of(b"x"));
        let mut r = Reader::new(&w.buf, "test");
        assert_eq!(r.u8("a").unwrap(), 7);
        assert_eq!(r.u32("b").unwrap(), 1);
        assert_eq!(r.u64("c").unwrap(), 2);
        assert_eq!(r.i64("d").unwrap(), -3);
        assert_eq!(r.str("e").unwrap(), "héllo");
        assert_eq!(r.hash("f").unwrap(), Hash::of(b"x"));
        r.finish().unwrap();

        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0x7f], "test");
        assert!(r.count("n", 1).is_err());
        let mut r = Reader::new(&[5, 0, 0, 0, b'a'], "test");
        assert!(r.bytes("s").is_err());
    }

    /// A stream reads as the slice does, and refuses what its cap cannot
    /// hold before reading or holding any of it.
    #[test]
    fn a_stream_reads_as_the_slice_and_stops_at_its_cap() {
        let mut w = Writer::default();
        w.u8(7);
        w.u32(1);
        w.u64(2);
        w.i64(-3);
        w.str("héllo");
        w.hash(&Hash::of(b"x"));
        for mut r in [
            StreamReader::of_slice(&w.buf, "test"),
            StreamReader::capped(&w.buf[..], w.buf.len() as u64, "test"),
        ] {
            assert_eq!(r.u8("a").unwrap(), 7);
            assert_eq!(r.u32("b").unwrap(), 1);
            assert_eq!(r.u64("c").unwrap(), 2);
            assert_eq!(r.i64("d").unwrap(), -3);
            assert_eq!(r.str("e").unwrap(), "héllo");
            assert_eq!(r.hash("f").unwrap(), Hash::of(b"x"));
            r.finish().unwrap();
        }
        let long = [0xff, 0xff, 0xff, 0x7f];
        let mut r = StreamReader::of_slice(&long, "test");
        assert!(
            r.count("n", 1)
                .unwrap_err()
                .to_string()
                .contains("bytes left")
        );
        // A length the cap cannot hold is refused before it is read.
        let claim = [0, 0, 0, 0x40, b'a'];
        let mut r = StreamReader::capped(std::io::repeat(b'a'), 1000, "test");
        let err = r.bytes("s").unwrap_err().to_string();
        assert!(err.contains("larger than 1000 bytes"), "{err}");
        let mut r = StreamReader::capped(&claim[..], 1 << 40, "test");
        assert!(r.bytes("s").unwrap_err().to_string().contains("truncated"));
        let mut r = StreamReader::capped(&[1u8, 2][..], 1, "test");
        assert_eq!(r.u8("x").unwrap(), 1);
        assert!(r.finish().unwrap_err().to_string().contains("trailing"));
    }
}
