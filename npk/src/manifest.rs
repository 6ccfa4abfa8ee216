//! The fixed parts of an archive: header, signed manifest and trailer
//! (FORMAT.md, section 8).

use nexus_store::Hash;

use crate::error::FormatError;
use crate::wire::{Fields, Reader, Writer};

/// First 8 bytes of every archive.
pub const MAGIC: &[u8; 8] = b"NEXUSNPK";
/// Last 8 bytes of every archive.
pub const END_MAGIC: &[u8; 8] = b"NXNPKEND";
/// First 8 bytes of the manifest.
pub const MANIFEST_MAGIC: &[u8; 8] = b"NXMANIF1";
/// The newest archive format version this build writes and reads: 2
/// added the expiry time to the manifest; 3 allows blocks of store format
/// v2 (framed, codec 2), which builds reading only 1 and 2 would take for
/// damage; 4 holds a body of version 2 (a package is restricted to some
/// Apps), which builds reading only 1 to 3 refuse by this number rather
/// than by the body's magic. See [`version_for`].
pub const VERSION: u32 = 4;
/// The archive format version of an archive holding a body of version 1:
/// written whenever no package is restricted, so that builds reading
/// versions 1 to 3 keep reading such archives.
pub const VERSION_UNRESTRICTED: u32 = 3;
/// The oldest archive format version this build reads (version 1: no
/// expiry, read as never expiring).
pub const OLDEST_VERSION: u32 = 1;
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

/// The archive format version written for a body of format
/// `body_version` ([`crate::body::body_version`]): [`VERSION`] for version
/// 2 (a package is restricted), [`VERSION_UNRESTRICTED`] otherwise.
pub fn version_for(body_version: u32) -> u32 {
    if body_version >= 2 {
        VERSION
    } else {
        VERSION_UNRESTRICTED
    }
}

/// True when an archive of format `version` may hold a body of format
/// `body_version`: version 2 exactly in an archive of version 4 (versions
/// 1 to 3 hold bodies of version 1).
pub fn holds(version: u32, body_version: u32) -> bool {
    (version >= VERSION) == (body_version >= 2)
}

/// Encodes the 32-byte header of an archive of format `version`.
pub fn encode_header(kind: ArchiveKind, version: u32) -> Vec<u8> {
    let mut w = Writer::default();
    w.raw(MAGIC);
    w.u32(version);
    w.u32(kind.code());
    w.raw(&[0; 16]);
    w.buf
}

/// Decodes the header: the archive's kind and format version.
pub fn decode_header(bytes: &[u8]) -> Result<(ArchiveKind, u32), FormatError> {
    if bytes.len() < HEADER_LEN as usize || &bytes[..8] != MAGIC {
        return Err(FormatError::NotNpk);
    }
    let mut r = Reader::new(&bytes[8..HEADER_LEN as usize], "header");
    let version = check_version(r.u32("version")?)?;
    let kind = ArchiveKind::from_code(r.u32("kind")?)?;
    if r.take(16, "reserved")?.iter().any(|&b| b != 0) {
        return Err(FormatError::Malformed(
            "reserved header bytes are not zero".into(),
        ));
    }
    Ok((kind, version))
}

fn check_version(version: u32) -> Result<u32, FormatError> {
    if (OLDEST_VERSION..=VERSION).contains(&version) {
        Ok(version)
    } else {
        Err(FormatError::UnsupportedVersion(version))
    }
}

/// The signed statement about an archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// The archive format version (as the header's): [`version_for`] the
    /// body for everything written now; 1 for archives written before
    /// expiry times existed (kept, so that their signed bytes re-encode
    /// exactly).
    pub version: u32,
    /// Same as the header's.
    pub kind: ArchiveKind,
    /// The signer's ed25519 public key; all zero when unsigned.
    pub signer: [u8; 32],
    /// Snapshot counter (images; 0 for packages): only goes up per trust
    /// domain (see `crate::replay`).
    pub counter: u64,
    /// Creation time, seconds since the epoch (`SOURCE_DATE_EPOCH` when set).
    pub created: i64,
    /// When the signature stops vouching for the archive, seconds since the
    /// epoch; `None` never (always for version 1). Readers refuse an
    /// expired archive unless told otherwise, so a held-back image cannot
    /// be served forever (freeze protection).
    pub expires: Option<i64>,
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

    /// True when the archive has expired at `now` (seconds since the epoch).
    pub fn expired_at(&self, now: i64) -> bool {
        self.expires.is_some_and(|t| t <= now)
    }

    /// The 192 bytes that are signed. A version-1 manifest has no room for
    /// an expiry: `expires` must then be `None`.
    pub fn encode(&self) -> Vec<u8> {
        debug_assert!(self.version >= 2 || self.expires.is_none());
        let mut w = Writer::default();
        w.raw(MANIFEST_MAGIC);
        w.u32(self.version);
        w.u32(self.kind.code());
        w.raw(&self.signer);
        w.u64(self.counter);
        w.i64(self.created);
        w.u64(self.body_offset);
        w.u64(self.body_len);
        w.hash(&self.content_hash);
        w.hash(&self.root);
        w.hash(&self.body_hash);
        if self.version >= 2 {
            // 0 is "never": no archive expires at the epoch itself.
            w.i64(self.expires.unwrap_or(0));
            w.raw(&[0; 8]);
        } else {
            w.raw(&[0; 16]);
        }
        debug_assert_eq!(w.buf.len(), MANIFEST_LEN);
        w.buf
    }

    /// Decodes [`Manifest::encode`]'s bytes.
    pub fn decode(bytes: &[u8]) -> Result<Manifest, FormatError> {
        let mut r = Reader::new(bytes, "manifest");
        if r.take(8, "magic")? != MANIFEST_MAGIC {
            return Err(FormatError::Malformed("bad manifest magic".into()));
        }
        let version = check_version(r.u32("version")?)?;
        let kind = ArchiveKind::from_code(r.u32("kind")?)?;
        let mut signer = [0u8; 32];
        signer.copy_from_slice(r.take(32, "signer")?);
        let mut m = Manifest {
            version,
            kind,
            signer,
            counter: r.u64("counter")?,
            created: r.i64("created")?,
            body_offset: r.u64("body offset")?,
            body_len: r.u64("body length")?,
            content_hash: r.hash("content hash")?,
            root: r.hash("root hash")?,
            body_hash: r.hash("body hash")?,
            expires: None,
        };
        if version >= 2 {
            m.expires = Some(r.i64("expires")?).filter(|&t| t != 0);
        }
        let reserved = if version >= 2 { 8 } else { 16 };
        if r.take(reserved, "reserved")?.iter().any(|&b| b != 0) {
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
            version: VERSION,
            kind: ArchiveKind::Image,
            signer: [7; 32],
            counter: 42,
            created: -5,
            expires: Some(1_000_000),
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
            decode_header(&encode_header(ArchiveKind::Package, VERSION)).unwrap(),
            (ArchiveKind::Package, VERSION)
        );
        assert!(!m.expired_at(999_999));
        assert!(m.expired_at(1_000_000));
        let never = Manifest {
            expires: None,
            ..m.clone()
        };
        assert_eq!(Manifest::decode(&never.encode()).unwrap(), never);
        assert!(!never.expired_at(i64::MAX));
    }

    proptest::proptest! {
        /// A signature covers the re-encoded manifest: whatever decodes
        /// must encode back to exactly its bytes, in either version.
        #[test]
        fn decoded_manifests_encode_to_their_bytes(
            version in 1u32..=VERSION,
            kind in 1u32..=2,
            fields in proptest::collection::vec(proptest::num::u8::ANY, 160),
            expires in proptest::num::i64::ANY,
        ) {
            let mut bytes = MANIFEST_MAGIC.to_vec();
            bytes.extend_from_slice(&version.to_le_bytes());
            bytes.extend_from_slice(&kind.to_le_bytes());
            bytes.extend_from_slice(&fields);
            let expires = if version >= 2 { expires } else { 0 };
            bytes.extend_from_slice(&expires.to_le_bytes());
            bytes.extend_from_slice(&[0; 8]);
            let m = Manifest::decode(&bytes).unwrap();
            proptest::prop_assert_eq!(m.encode(), bytes);
        }
    }

    /// A body restricting a package goes in an archive of version 4, and
    /// only there: every other archive stays version 3, which builds that
    /// know nothing of restrictions read.
    #[test]
    fn restricted_bodies_take_version_4_and_only_they() {
        assert_eq!(version_for(1), VERSION_UNRESTRICTED);
        assert_eq!(version_for(2), VERSION);
        assert_eq!(VERSION, 4);
        for version in OLDEST_VERSION..VERSION {
            assert!(holds(version, 1), "{version}");
            assert!(!holds(version, 2), "{version}");
        }
        assert!(holds(VERSION, 2));
        assert!(!holds(VERSION, 1));
    }

    /// A version-1 manifest (written before expiry times) still decodes,
    /// re-encodes to the very bytes its signature covers, and never
    /// expires; bytes where version 2 keeps the expiry must be zero in it.
    #[test]
    fn version_1_manifests_still_read() {
        let v2 = Manifest {
            version: VERSION,
            kind: ArchiveKind::Package,
            signer: [1; 32],
            counter: 0,
            created: 1_600_000_000,
            expires: None,
            body_offset: 32,
            body_len: 9,
            content_hash: Hash::of(b"a"),
            root: Hash::of(b"b"),
            body_hash: Hash::of(b"c"),
        };
        let mut bytes = v2.encode();
        bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
        let v1 = Manifest::decode(&bytes).unwrap();
        assert_eq!(v1.version, 1);
        assert_eq!(v1.expires, None);
        assert_eq!(v1.encode(), bytes);
        bytes[176] = 1; // an "expiry" smuggled into a version-1 manifest
        assert!(Manifest::decode(&bytes).is_err());
        for unknown in [0u32, VERSION + 1] {
            let mut b = v2.encode();
            b[8..12].copy_from_slice(&unknown.to_le_bytes());
            assert!(matches!(
                Manifest::decode(&b),
                Err(FormatError::UnsupportedVersion(_))
            ));
        }
    }
}
