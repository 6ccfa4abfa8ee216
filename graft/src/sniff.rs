//! Recognising packages and compressions by content, never by file name.
//!
//! A `.deb` is an ar archive (`!<arch>\n`) whose first member is
//! `debian-binary`. Pacman and pkgsrc packages are tar archives, possibly
//! compressed; which of the two is decided by their leading metadata
//! entries (`crate::tarpkg`). A Nix NAR, possibly compressed, starts with
//! the string `nix-archive-1` in NAR framing ([`NAR_MAGIC`]). Compressions
//! are recognised by their magic numbers: gzip `1f 8b`, xz
//! `fd 37 7a 58 5a 00`, zstd `28 b5 2f fd`, bzip2 `BZh`; a tar stream by
//! `ustar` at offset 257 or, for old-style headers, by a valid header
//! checksum. What a compressed file holds is recognised the same way once
//! it is decompressed ([`open_decoded`]).

use std::io::{self, Read};

use crate::error::{Failure, Problem, ReadResult};
use crate::limits::{Budget, Metered, XZ_MEMORY_KIB};

/// First bytes of an ar archive.
pub const AR_MAGIC: &[u8] = b"!<arch>\n";
/// How many bytes [`sniff`] wants to see (one tar header).
pub const SNIFF_LEN: usize = 512;
/// First bytes of a NAR: the string `nix-archive-1` as NAR writes strings
/// (a 64-bit little-endian length, the bytes, zeros up to a multiple of 8).
pub const NAR_MAGIC: &[u8] = b"\x0d\0\0\0\0\0\0\0nix-archive-1\0\0\0";

/// How a stream is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Not compressed.
    None,
    /// gzip (RFC 1952), possibly several members.
    Gzip,
    /// xz.
    Xz,
    /// Zstandard.
    Zstd,
    /// bzip2.
    Bzip2,
}

impl Compression {
    /// The compression whose magic number starts `head`, if any.
    pub fn from_magic(head: &[u8]) -> Option<Compression> {
        if head.starts_with(&[0x1f, 0x8b]) {
            Some(Compression::Gzip)
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Some(Compression::Xz)
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Some(Compression::Zstd)
        } else if head.starts_with(b"BZh") {
            Some(Compression::Bzip2)
        } else {
            None
        }
    }

    /// A name for messages and metadata.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::Bzip2 => "bzip2",
        }
    }
}

/// What a file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// An ar archive (a `.deb` if its first member is `debian-binary`).
    Ar,
    /// An uncompressed tar archive (pacman or pkgsrc).
    Tar,
    /// An uncompressed Nix archive.
    Nar,
    /// Compressed data: a tar archive or a NAR, told apart once
    /// decompressed.
    Compressed(Compression),
}

/// True if `block` (the first 512 bytes of a stream) is a tar header.
pub fn is_tar_header(block: &[u8]) -> bool {
    if block.len() < SNIFF_LEN {
        return false;
    }
    if &block[257..262] == b"ustar" {
        return true;
    }
    // Old (v7) headers have no magic: accept a header whose checksum field
    // matches its bytes, which random data practically never does.
    let field = &block[148..156];
    let digits: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|b| *b == b' ')
        .take_while(|b| (b'0'..=b'7').contains(b))
        .collect();
    let Some(stored) = std::str::from_utf8(&digits)
        .ok()
        .and_then(|s| u32::from_str_radix(s, 8).ok())
    else {
        return false;
    };
    let sum: u32 = block[..148]
        .iter()
        .chain(&block[156..SNIFF_LEN])
        .map(|&b| u32::from(b))
        .sum::<u32>()
        + 8 * u32::from(b' ');
    !digits.is_empty() && stored == sum && block[0] != 0
}

/// Recognises a package file from its first bytes (at least [`SNIFF_LEN`]
/// when the file is that long). For compressed files only the compression
/// is checked here; what they hold is checked once they are decompressed.
pub fn sniff(head: &[u8]) -> Result<Format, Problem> {
    if head.starts_with(AR_MAGIC) {
        return Ok(Format::Ar);
    }
    if head.starts_with(NAR_MAGIC) {
        return Ok(Format::Nar);
    }
    if let Some(c) = Compression::from_magic(head) {
        return Ok(Format::Compressed(c));
    }
    if is_tar_header(head) {
        return Ok(Format::Tar);
    }
    Err(Problem::UnknownFormat(format!(
        "neither a .deb (ar archive), nor a tar archive or a Nix NAR, plain or compressed with gzip, xz, zstd or bzip2 (first bytes {})",
        hex_prefix(head)
    )))
}

/// A package stream opened for reading: decompressed, every decompressed
/// byte counted against the package's budget, and its first
/// [`SNIFF_LEN`] bytes read ahead to recognise what it holds.
pub struct Decoded<'a> {
    /// The compression it was stored with.
    pub compression: Compression,
    /// The decompressed, metered stream.
    pub stream: Peeked<Metered<'a, Box<dyn Read + 'a>>>,
}

impl Decoded<'_> {
    /// Names the stream in messages: "the xz-compressed NAR".
    pub fn describe(&self, what: &str) -> String {
        match self.compression {
            Compression::None => format!("the {what}"),
            c => format!("the {}-compressed {what}", c.name()),
        }
    }
}

/// Opens `reader` (a tar archive or a NAR, plain or compressed) through
/// its decompressor, recognised by magic number, and meters it with
/// `budget`. An unknown compression is refused here.
pub fn open_decoded<'a>(reader: impl Read + 'a, budget: &'a Budget) -> ReadResult<Decoded<'a>> {
    let peeked = Peeked::new(reader, SNIFF_LEN).map_err(|e| Failure::from_io(e, "reading"))?;
    let compression = match Compression::from_magic(peeked.head()) {
        Some(c) => c,
        None if is_tar_header(peeked.head()) || peeked.head().starts_with(NAR_MAGIC) => {
            Compression::None
        }
        None => {
            return Err(Problem::UnknownFormat(format!(
                "neither a tar archive nor a NAR, plain or compressed (first bytes {})",
                hex_prefix(peeked.head())
            ))
            .into());
        }
    };
    let decoded = decoder(compression, peeked).map_err(|e| Failure::from_io(e, "decoding"))?;
    let stream = Peeked::new(Metered::new(decoded, budget), SNIFF_LEN)
        .map_err(|e| Failure::from_io(e, compression.name()))?;
    Ok(Decoded {
        compression,
        stream,
    })
}

/// The first bytes of `head` in hex, for messages.
pub fn hex_prefix(head: &[u8]) -> String {
    if head.is_empty() {
        return "none: the file is empty".into();
    }
    head.iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A reader whose first bytes were read ahead to recognise it; reading it
/// returns them again, then the rest.
pub struct Peeked<R> {
    head: Vec<u8>,
    pos: usize,
    rest: R,
}

impl<R: Read> Peeked<R> {
    /// Reads up to `n` bytes ahead (fewer only at the end of the stream).
    pub fn new(mut rest: R, n: usize) -> io::Result<Self> {
        let mut head = Vec::with_capacity(n);
        (&mut rest).take(n as u64).read_to_end(&mut head)?;
        Ok(Peeked { head, pos: 0, rest })
    }

    /// The bytes read ahead.
    pub fn head(&self) -> &[u8] {
        &self.head
    }
}

impl<R: Read> Read for Peeked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos < self.head.len() {
            let n = buf.len().min(self.head.len() - self.pos);
            buf[..n].copy_from_slice(&self.head[self.pos..self.pos + n]);
            self.pos += n;
            return Ok(n);
        }
        self.rest.read(buf)
    }
}

/// Wraps `reader` in the decoder of `compression`. Every decoder checks its
/// stream's integrity (gzip CRC-32 and length, xz and zstd checksums, bzip2
/// CRCs) when read to the end, and accepts concatenated streams as the
/// command-line tools do.
pub fn decoder<'a>(
    compression: Compression,
    reader: impl Read + 'a,
) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match compression {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
        Compression::Xz => Box::new(lzma_rust2::XzReader::new_mem_limit(
            reader,
            true,
            XZ_MEMORY_KIB,
        )),
        Compression::Zstd => {
            let mut d = zstd::stream::read::Decoder::new(reader)?;
            // zstd's own default: windows up to 128 MiB (what `zstd -d`
            // accepts without --long); larger frames are refused.
            d.window_log_max(27)?;
            Box::new(d)
        }
        Compression::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(reader)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with_one_file() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(3);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "a", &b"abc"[..]).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn recognises_formats_by_magic() {
        assert_eq!(sniff(b"!<arch>\ndebian-binary").unwrap(), Format::Ar);
        assert_eq!(
            sniff(&[0x1f, 0x8b, 8, 0]).unwrap(),
            Format::Compressed(Compression::Gzip)
        );
        assert_eq!(
            sniff(&[0xfd, b'7', b'z', b'X', b'Z', 0, 0]).unwrap(),
            Format::Compressed(Compression::Xz)
        );
        assert_eq!(
            sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]).unwrap(),
            Format::Compressed(Compression::Zstd)
        );
        assert_eq!(
            sniff(b"BZh91AY").unwrap(),
            Format::Compressed(Compression::Bzip2)
        );
        assert_eq!(sniff(&tar_with_one_file()).unwrap(), Format::Tar);
        assert_eq!(sniff(NAR_MAGIC).unwrap(), Format::Nar);
        assert!(sniff(&NAR_MAGIC[..20]).is_err());
        let err = sniff(b"PK\x03\x04 a zip file").unwrap_err().to_string();
        assert!(err.contains("50 4b 03 04"), "{err}");
        assert!(sniff(b"").unwrap_err().to_string().contains("empty"));
    }

    #[test]
    fn old_style_tar_headers_are_recognised_by_checksum() {
        let mut block = tar_with_one_file()[..512].to_vec();
        block[257..265].fill(0); // no ustar magic
        let mut h = tar::Header::from_byte_slice(&block).clone();
        h.set_cksum();
        assert!(is_tar_header(h.as_bytes()));
        let mut broken = h.as_bytes().to_vec();
        broken[0] ^= 1;
        assert!(!is_tar_header(&broken));
        assert!(!is_tar_header(&[0u8; 512]));
    }

    #[test]
    fn peeked_reader_replays_its_head() {
        let mut p = Peeked::new(&b"hello world"[..], 5).unwrap();
        assert_eq!(p.head(), b"hello");
        let mut all = String::new();
        p.read_to_string(&mut all).unwrap();
        assert_eq!(all, "hello world");
    }
}
