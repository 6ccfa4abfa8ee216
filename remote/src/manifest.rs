//! The signed manifest of a published generation (FORMAT.md, "Remotes"):
//! 160 bytes saying who signed, which counter, until when, and which
//! metadata object (by BLAKE3 and length) describes the generation; then
//! an ed25519 signature over a domain string and those bytes.

use ed25519_dalek::{Signature, VerifyingKey};
use nexus_npk::wire::{Fields, Reader, Writer};
use nexus_npk::{ArchiveKind, FormatError, SecretKey, TrustError, TrustSet, TrustedKey};
use nexus_store::Hash;

/// First 8 bytes.
pub const MAGIC: &[u8; 8] = b"NXRMAN01";
/// The version this build writes and reads.
pub const VERSION: u32 = 1;
/// Length of the signed part.
pub const BODY_LEN: usize = 160;
/// Length of the whole manifest object: signed part and signature.
pub const LEN: usize = BODY_LEN + 64;
/// Signed before the manifest bytes: a signature over a remote manifest is
/// never one over an archive manifest, or the reverse.
pub const SIGNATURE_DOMAIN: &[u8] = b"nexus-remote-v1 manifest\n";

/// What a publisher signs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteManifest {
    /// The signer's ed25519 public key.
    pub signer: [u8; 32],
    /// Goes up with every publish; a subscriber refuses one not above the
    /// highest it accepted in the signer's trust domain (the same counter
    /// only for the same root).
    pub counter: u64,
    /// When it was published, seconds since the epoch.
    pub created: i64,
    /// When subscribers stop accepting it, seconds since the epoch; `None`
    /// never (no freeze protection).
    pub expires: Option<i64>,
    /// The root hash of the generation's packages (as an image's).
    pub root: Hash,
    /// BLAKE3 of the metadata object.
    pub meta: Hash,
    /// Its length in bytes.
    pub meta_len: u64,
    /// The publisher's generation number (informative).
    pub generation: i64,
}

impl RemoteManifest {
    /// The 160 signed bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.raw(MAGIC);
        w.u32(VERSION);
        w.u32(0);
        w.raw(&self.signer);
        w.u64(self.counter);
        w.i64(self.created);
        // 0 is "never": an expiry at the epoch itself is written as the
        // second before it.
        w.i64(self.expires.map_or(0, |t| if t == 0 { -1 } else { t }));
        w.hash(&self.root);
        w.hash(&self.meta);
        w.u64(self.meta_len);
        w.i64(self.generation);
        w.raw(&[0; 8]);
        debug_assert_eq!(w.buf.len(), BODY_LEN);
        w.buf
    }

    /// What the signature covers.
    fn signed_message(body: &[u8]) -> Vec<u8> {
        [SIGNATURE_DOMAIN, body].concat()
    }

    /// The manifest object: these bytes signed by `key` (whose public key
    /// replaces `signer`).
    pub fn sign(mut self, key: &SecretKey) -> (RemoteManifest, Vec<u8>) {
        self.signer = *key.public().key.as_bytes();
        let body = self.encode();
        let signature = key.sign(&Self::signed_message(&body));
        let mut object = body;
        object.extend_from_slice(&signature);
        (self, object)
    }

    /// Decodes a manifest object, not checking its signature.
    pub fn decode(object: &[u8]) -> Result<(RemoteManifest, [u8; 64]), FormatError> {
        if object.len() != LEN {
            return Err(FormatError::Malformed(format!(
                "a remote manifest is {LEN} bytes, this one {}",
                object.len()
            )));
        }
        let mut r = Reader::new(&object[..BODY_LEN], "remote manifest");
        if r.take(8, "magic")? != MAGIC {
            return Err(FormatError::Malformed("not a remote manifest".into()));
        }
        let version = r.u32("version")?;
        if version != VERSION {
            return Err(FormatError::UnsupportedVersion(version));
        }
        if r.u32("reserved")? != 0 {
            return Err(FormatError::Malformed("reserved bytes are not zero".into()));
        }
        let mut signer = [0u8; 32];
        signer.copy_from_slice(r.take(32, "signer")?);
        let manifest = RemoteManifest {
            signer,
            counter: r.u64("counter")?,
            created: r.i64("created")?,
            expires: Some(r.i64("expires")?).filter(|&t| t != 0),
            root: r.hash("root hash")?,
            meta: r.hash("metadata hash")?,
            meta_len: r.u64("metadata length")?,
            generation: r.i64("generation")?,
        };
        if r.take(8, "reserved")?.iter().any(|&b| b != 0) {
            return Err(FormatError::Malformed("reserved bytes are not zero".into()));
        }
        r.finish()?;
        let mut signature = [0u8; 64];
        signature.copy_from_slice(&object[BODY_LEN..]);
        Ok((manifest, signature))
    }

    /// Checks the signature: by a key of `trust` trusted for images and
    /// not revoked, verified strictly. Returns the key's grant (its trust
    /// domain is the caller's to compare).
    pub fn check_signature(
        &self,
        signature: &[u8; 64],
        trust: &TrustSet,
    ) -> Result<TrustedKey, TrustError> {
        if self.signer == [0; 32] {
            return Err(TrustError::Unsigned);
        }
        let grant = trust.check(&self.signer, ArchiveKind::Image)?.clone();
        let key = VerifyingKey::from_bytes(&self.signer)
            .map_err(|_| TrustError::BadSignature { id: grant.key.id() })?;
        key.verify_strict(
            &Self::signed_message(&self.encode()),
            &Signature::from_bytes(signature),
        )
        .map_err(|_| TrustError::BadSignature { id: grant.key.id() })?;
        Ok(grant)
    }

    /// Refuses the manifest at or past its expiry (`now`, seconds).
    pub fn check_expiry(&self, now: i64) -> Result<(), TrustError> {
        match self.expires {
            Some(expires) if expires <= now => Err(TrustError::Expired { expires, now }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nexus_npk::{KeyStore, Scope};

    fn manifest() -> RemoteManifest {
        RemoteManifest {
            signer: [0; 32],
            counter: 7,
            created: 1_700_000_000,
            expires: Some(1_700_600_000),
            root: Hash::of(b"root"),
            meta: Hash::of(b"meta"),
            meta_len: 1234,
            generation: 42,
        }
    }

    #[test]
    fn manifests_round_trip_and_any_flipped_bit_breaks_the_signature() {
        let dir = tempfile::tempdir().unwrap();
        let keys = KeyStore::new(dir.path());
        keys.generate("pub").unwrap();
        let key = keys.secret("pub").unwrap();
        let (signed, object) = manifest().sign(&key);
        assert_eq!(object.len(), LEN);
        let (decoded, signature) = RemoteManifest::decode(&object).unwrap();
        assert_eq!(decoded, signed);
        let trust = keys.trust_set().unwrap();
        let grant = decoded.check_signature(&signature, &trust).unwrap();
        assert!(matches!(grant.scope, Scope::Images { .. }));
        for byte in [9, 20, 50, 60, 100, 140, 150, 170] {
            let mut bad = object.clone();
            bad[byte] ^= 1;
            let checked = RemoteManifest::decode(&bad)
                .map_err(|_| ())
                .and_then(|(m, s)| m.check_signature(&s, &trust).map_err(|_| ()));
            assert!(checked.is_err(), "byte {byte}");
        }
        assert!(RemoteManifest::decode(&object[1..]).is_err());
        // Expiry.
        assert!(decoded.check_expiry(1_700_599_999).is_ok());
        assert!(decoded.check_expiry(1_700_600_000).is_err());
        // Unknown and revoked keys.
        let other = tempfile::tempdir().unwrap();
        let empty = KeyStore::new(other.path()).trust_set().unwrap();
        assert!(matches!(
            decoded.check_signature(&signature, &empty),
            Err(TrustError::UnknownKey { .. })
        ));
        keys.revoke("pub").unwrap();
        assert!(matches!(
            decoded.check_signature(&signature, &keys.trust_set().unwrap()),
            Err(TrustError::Revoked { .. })
        ));
    }
}
