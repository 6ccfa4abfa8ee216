//! Little-endian, length-prefixed encoding of the `.npk` manifest and body:
//! a writer that cannot fail and a reader that checks every length against
//! what is left, so that hostile input yields an error, never a panic or a
//! huge allocation.

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

    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N], FormatError> {
        let bytes = self.take(N, field)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    /// Reads one byte.
    pub fn u8(&mut self, field: &str) -> Result<u8, FormatError> {
        Ok(self.array::<1>(field)?[0])
    }
    /// Reads a u32.
    pub fn u32(&mut self, field: &str) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }
    /// Reads a u64.
    pub fn u64(&mut self, field: &str) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }
    /// Reads an i64.
    pub fn i64(&mut self, field: &str) -> Result<i64, FormatError> {
        Ok(i64::from_le_bytes(self.array(field)?))
    }
    /// Reads a hash.
    pub fn hash(&mut self, field: &str) -> Result<Hash, FormatError> {
        Ok(Hash(self.array(field)?))
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
}
