//! The fixed parts of an archive: header, signed manifest and trailer
//! (FORMAT.md, section 8).

use nexus_store::Hash;

use crate::error::FormatError;
use crate::wire::{Reader, Writer};

/// First 8 bytes of every archive.
pub const MAGIC: &[u8; 8] = b"NEXUSNPK";
/// Last 8 bytes of every archive.
pub const END_MAGIC: &[u8; 8] = b"NXNPKEND";
/// First 8 bytes of the manifest.
pub const MANIFEST_MAGIC: &[u8; 8] = b"NXMANIF1";
/// The archive format version this build writes and reads.
pub const VERSION: u32 = 1;
/// Header length.
pub const HEADER_LEN: u64 = 32;
/// Manifest length.
pub const MANIFEST_LEN: usize = 192;
/// Signature length.
pub const SIGNATURE_LEN: usize = 64;
/// Trailer length: manifest, signature, end magic.
pub const TRAILER_LEN: u64 = (MANIFEST_LEN + SIGNATURE_LEN + END_MAGIC.len()) as u64;
/// Domain string signed before the manifest bytes, so a signature over an
/// archive manifest can never be mistaken for one over anything else.
pub const SIGNATURE_DOMAIN: &[u8] = b"nexus-npk-v1 manifest\n";

/// What an archive holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchiveKind {
    /// A `.npk`: one package.
    Package,
    /// A system image: the packages of a generation and their `Current`
    /// choices.
    Image,
}

impl ArchiveKind {
    fn code(self) -> u32 {
        match self {
            ArchiveKind::Package => 1,
            ArchiveKind::Image => 2,
        }
    }

    fn from_code(code: u32) -> Result<Self, FormatError> {
        match code {
            1 => Ok(ArchiveKind::Package),
            2 => Ok(ArchiveKind::Image),
            _ => Err(FormatError::Malformed(format!(
                "unknown archive kind {code}"
            ))),
        }
    }

    /// "package" or "image".
    pub fn name(self) -> &'static str {
        match self {
            ArchiveKind::Package => "package",
            ArchiveKind::Image => "image",
        }
    }
}

/// Encodes the 32-byte header.
pub fn encode_header(kind: ArchiveKind) -> Vec<u8> {
    let mut w = Writer::default();
    w.raw(MAGIC);
    w.u32(VERSION);
    w.u32(kind.code());
    w.raw(&[0; 16]);
    w.buf
}

/// Decodes the header.
pub fn decode_header(bytes: &[u8]) -> Result<ArchiveKind, FormatError> {
    if bytes.len() < HEADER_LEN as usize || &bytes[..8] != MAGIC {
        return Err(FormatError::NotNpk);
    }
    let mut r = Reader::new(&bytes[8..HEADER_LEN as usize], "header");
    let version = r.u32("version")?;
    if version != VERSION {
        return Err(FormatError::UnsupportedVersion(version));
    }
    let kind = ArchiveKind::from_code(r.u32("kind")?)?;
    if r.take(16, "reserved")?.iter().any(|&b| b != 0) {
        return Err(FormatError::Malformed(
            "reserved header bytes are not zero".into(),
        ));
    }
    Ok(kind)
}

/// The signed statement about an archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// Same as the header's.
    pub kind: ArchiveKind,
    /// The signer's ed25519 public key; all zero when unsigned.
    pub signer: [u8; 32],
    /// Snapshot counter (images; 0 for packages): only goes up per key.
    pub counter: u64,
    /// Creation time, seconds since the epoch (`SOURCE_DATE_EPOCH` when set).
    pub created: i64,
    /// Where the body starts.
    pub body_offset: u64,
    /// The body's length on disk (compressed).
    pub body_len: u64,
    /// BLAKE3 of every byte before the trailer (header, blocks, body).
    pub content_hash: Hash,
    /// The root hash: what the archive holds (see `crate::body::root_hash`).
    pub root: Hash,
    /// BLAKE3 of the body as stored (compressed): lets a reader trust the
    /// body, and with it every chunk list, without hashing the whole file.
    pub body_hash: Hash,
}

impl Manifest {
    /// True when the archive carries no signature.
    pub fn unsigned(&self) -> bool {
        self.signer == [0; 32]
    }

    /// The 192 bytes that are signed.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.raw(MANIFEST_MAGIC);
        w.u32(VERSION);
        w.u32(self.kind.code());
        w.raw(&self.signer);
        w.u64(self.counter);
        w.i64(self.created);
        w.u64(self.body_offset);
        w.u64(self.body_len);
        w.hash(&self.content_hash);
        w.hash(&self.root);
        w.hash(&self.body_hash);
        w.raw(&[0; 16]);
        debug_assert_eq!(w.buf.len(), MANIFEST_LEN);
        w.buf
    }

    /// Decodes [`Manifest::encode`]'s bytes.
    pub fn decode(bytes: &[u8]) -> Result<Manifest, FormatError> {
        let mut r = Reader::new(bytes, "manifest");
        if r.take(8, "magic")? != MANIFEST_MAGIC {
            return Err(FormatError::Malformed("bad manifest magic".into()));
        }
        let version = r.u32("version")?;
        if version != VERSION {
            return Err(FormatError::UnsupportedVersion(version));
        }
        let kind = ArchiveKind::from_code(r.u32("kind")?)?;
        let mut signer = [0u8; 32];
        signer.copy_from_slice(r.take(32, "signer")?);
        let m = Manifest {
            kind,
            signer,
            counter: r.u64("counter")?,
            created: r.i64("created")?,
            body_offset: r.u64("body offset")?,
            body_len: r.u64("body length")?,
            content_hash: r.hash("content hash")?,
            root: r.hash("root hash")?,
            body_hash: r.hash("body hash")?,
        };
        if r.take(16, "reserved")?.iter().any(|&b| b != 0) {
            return Err(FormatError::Malformed(
                "reserved manifest bytes are not zero".into(),
            ));
        }
        r.finish()?;
        Ok(m)
    }

    /// The message a signature covers.
    pub fn signed_message(&self) -> Vec<u8> {
        let mut msg = SIGNATURE_DOMAIN.to_vec();
        msg.extend_from_slice(&self.encode());
        msg
    }
}

/// Splits a trailer into manifest and signature, checking the end magic.
pub fn decode_trailer(trailer: &[u8]) -> Result<(Manifest, [u8; 64]), FormatError> {
    if trailer.len() != TRAILER_LEN as usize {
        return Err(FormatError::Malformed(
            "archive shorter than its trailer".into(),
        ));
    }
    let (rest, end) = trailer.split_at(MANIFEST_LEN + SIGNATURE_LEN);
    if end != END_MAGIC {
        return Err(FormatError::Malformed(
            "no NXNPKEND at the end (truncated or not an archive)".into(),
        ));
    }
    let (manifest, sig) = rest.split_at(MANIFEST_LEN);
    let mut signature = [0u8; 64];
    signature.copy_from_slice(sig);
    Ok((Manifest::decode(manifest)?, signature))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_round_trip() {
        let m = Manifest {
            kind: ArchiveKind::Image,
            signer: [7; 32],
            counter: 42,
            created: -5,
            body_offset: 1000,
            body_len: 77,
            content_hash: Hash::of(b"a"),
            root: Hash::of(b"b"),
            body_hash: Hash::of(b"c"),
        };
        let bytes = m.encode();
        assert_eq!(bytes.len(), MANIFEST_LEN);
        assert_eq!(Manifest::decode(&bytes).unwrap(), m);
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 1;
            assert_ne!(Manifest::decode(&b).ok(), Some(m.clone()), "byte {i}");
        }
        assert_eq!(
            decode_header(&encode_header(ArchiveKind::Package)).unwrap(),
            ArchiveKind::Package
        );
    }
}
