//! The ed25519 key store shared by `nip key` and `nexus key`: signing keys,
//! the keys this machine trusts, and the keys it has revoked.
//!
//! Layout (FORMAT.md, "Keys"):
//!
//! ```text
//! KEYS/secret/NAME.key    secret key, mode 0600 (directory 0700)
//! KEYS/trusted/ID.pub     public keys whose signatures are accepted
//! KEYS/revoked/ID.pub     public keys whose signatures are refused for good
//! ```
//!
//! Files are one line of text, so a public key can be mailed or pasted.
//! Every write goes to a temporary file that is synced and renamed, so a
//! crash leaves either the old or the new file, never half of one.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

use crate::error::{NpkError, Result, TrustError};

/// First word of a public key file.
pub const PUBLIC_TAG: &str = "nexus-public-key-v1";
/// First word of a secret key file.
pub const SECRET_TAG: &str = "nexus-secret-key-v1";
/// Domain string hashed before a public key to make its id.
const KEY_ID_DOMAIN: &[u8] = b"nexus-key-id-v1\n";

/// A public key with the name its owner gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    /// The owner's name for the key (informative only: trust is by key).
    pub name: String,
    /// The ed25519 public key.
    pub key: VerifyingKey,
}

impl PublicKey {
    /// The key id: 16 hex digits of BLAKE3 over the public key.
    pub fn id(&self) -> String {
        key_id(self.key.as_bytes())
    }

    /// The one-line file form: `nexus-public-key-v1 ed25519 NAME HEX`.
    pub fn to_line(&self) -> String {
        format!(
            "{PUBLIC_TAG} ed25519 {} {}\n",
            self.name,
            hex::encode(self.key.as_bytes())
        )
    }

    /// Parses [`PublicKey::to_line`]'s form.
    pub fn parse(text: &str) -> Result<PublicKey> {
        let (name, bytes) = parse_line(text, PUBLIC_TAG, "public")?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| NpkError::Key("the public key is not a valid ed25519 point".into()))?;
        Ok(PublicKey { name, key })
    }
}

/// The id of a raw 32-byte public key.
pub fn key_id(public: &[u8; 32]) -> String {
    let mut h = blake3::Hasher::new();
    h.update(KEY_ID_DOMAIN);
    h.update(public);
    hex::encode(&h.finalize().as_bytes()[..8])
}

/// A signing key.
pub struct SecretKey {
    /// Its name.
    pub name: String,
    signing: SigningKey,
}

impl SecretKey {
    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            key: self.signing.verifying_key(),
        }
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }
}

fn parse_line(text: &str, tag: &str, what: &str) -> Result<(String, [u8; 32])> {
    let bad = |why: &str| NpkError::Key(format!("not a Nexus {what} key file: {why}"));
    let line = text.trim_end_matches('\n');
    if line.contains('\n') {
        return Err(bad("more than one line"));
    }
    let words: Vec<&str> = line.split(' ').collect();
    let [t, algo, name, hex_key] = words[..] else {
        return Err(bad(&format!("expected `{tag} ed25519 NAME KEY`")));
    };
    if t != tag {
        return Err(bad(&format!("it does not start with {tag}")));
    }
    if algo != "ed25519" {
        return Err(bad(&format!("unknown algorithm {algo:?}")));
    }
    check_name(name)?;
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(hex_key, &mut bytes).map_err(|_| bad("the key is not 64 hex digits"))?;
    Ok((name.to_string(), bytes))
}

/// Refuses key names that are not `[A-Za-z0-9._-]{1,64}` or start with `.`.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(NpkError::Key(format!(
            "invalid key name {name:?}: use 1 to 64 letters, digits, '.', '_' or '-', not starting with '.'"
        )))
    }
}

/// A key as `list` reports it.
#[derive(Clone, Debug)]
pub struct KeyInfo {
    /// The public key.
    pub key: PublicKey,
    /// Its signatures are accepted.
    pub trusted: bool,
    /// It was revoked.
    pub revoked: bool,
    /// Its secret key is in this key store.
    pub secret: bool,
}

/// The keys whose signatures are accepted or refused: what verifying needs.
#[derive(Clone, Debug, Default)]
pub struct TrustSet {
    /// Trusted keys.
    pub trusted: Vec<PublicKey>,
    /// Revoked keys (refused even if also trusted).
    pub revoked: Vec<PublicKey>,
}

impl TrustSet {
    /// The trusted key with these bytes, or why it is not acceptable.
    pub fn check(&self, public: &[u8; 32]) -> Result<&PublicKey, TrustError> {
        if let Some(k) = self.revoked.iter().find(|k| k.key.as_bytes() == public) {
            return Err(TrustError::Revoked {
                id: k.id(),
                name: k.name.clone(),
            });
        }
        self.trusted
            .iter()
            .find(|k| k.key.as_bytes() == public)
            .ok_or_else(|| TrustError::UnknownKey { id: key_id(public) })
    }
}

/// A key store directory.
#[derive(Clone, Debug)]
pub struct KeyStore {
    dir: PathBuf,
}

impl KeyStore {
    /// The key store in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        KeyStore { dir: dir.into() }
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn secret_path(&self, name: &str) -> PathBuf {
        self.dir.join("secret").join(format!("{name}.key"))
    }

    fn public_path(&self, list: &str, id: &str) -> PathBuf {
        self.dir.join(list).join(format!("{id}.pub"))
    }

    fn ensure_dir(&self, sub: &str, mode: u32) -> Result<PathBuf> {
        let d = self.dir.join(sub);
        fs::create_dir_all(&d).map_err(|e| NpkError::io(&d, e))?;
        fs::set_permissions(&d, fs::Permissions::from_mode(mode))
            .map_err(|e| NpkError::io(&d, e))?;
        Ok(d)
    }

    /// Creates the signing key NAME and trusts its public key. Refuses to
    /// replace an existing key.
    pub fn generate(&self, name: &str) -> Result<PublicKey> {
        check_name(name)?;
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)
            .map_err(|e| NpkError::Key(format!("no randomness for a new key: {e}")))?;
        let secret = SecretKey {
            name: name.to_string(),
            signing: SigningKey::from_bytes(&seed),
        };
        self.ensure_dir("secret", 0o700)?;
        let path = self.secret_path(name);
        let line = format!("{SECRET_TAG} ed25519 {name} {}\n", hex::encode(seed));
        // create_new: never overwrite a key (its signatures would become
        // unverifiable); mode 0600 from the start, not chmod after writing.
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    NpkError::Key(format!(
                        "a key named {name} exists already ({})",
                        path.display()
                    ))
                } else {
                    NpkError::io(&path, e)
                }
            })?;
        f.write_all(line.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| NpkError::io(&path, e))?;
        sync_dir(path.parent().unwrap_or(&self.dir))?;
        let public = secret.public();
        self.write_public("trusted", &public)?;
        Ok(public)
    }

    /// The public key file of key NAME or ID (for sharing).
    pub fn public_file(&self, name_or_id: &str) -> Result<PathBuf> {
        let info = self.find(name_or_id)?;
        let list = if info.revoked { "revoked" } else { "trusted" };
        Ok(self.public_path(list, &info.key.id()))
    }

    /// The signing key NAME.
    pub fn secret(&self, name: &str) -> Result<SecretKey> {
        check_name(name)?;
        let path = self.secret_path(name);
        let text = fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                NpkError::Key(format!(
                    "no secret key named {name} in {} (create one with `nip key generate {name}`)",
                    self.dir.display()
                ))
            } else {
                NpkError::io(&path, e)
            }
        })?;
        let (file_name, seed) = parse_line(&text, SECRET_TAG, "secret")?;
        Ok(SecretKey {
            name: file_name,
            signing: SigningKey::from_bytes(&seed),
        })
    }

    /// The snapshot counter to sign the next image with key NAME: `explicit`
    /// if given (at least 1), else one more than the highest this key store
    /// has used; the highest is recorded (`KEYS/secret/NAME.counter`) so
    /// that counters only go up.
    pub fn take_counter(&self, name: &str, explicit: Option<u64>) -> Result<u64> {
        check_name(name)?;
        let path = self.dir.join("secret").join(format!("{name}.counter"));
        let used = match fs::read_to_string(&path) {
            Ok(text) => text
                .trim()
                .parse::<u64>()
                .map_err(|_| NpkError::Key(format!("{}: not a counter", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(NpkError::io(&path, e)),
        };
        let counter = match explicit {
            Some(0) => return Err(NpkError::Key("image counters start at 1".into())),
            Some(n) => n,
            None => used
                .checked_add(1)
                .ok_or_else(|| NpkError::Key("the counter of this key is exhausted".into()))?,
        };
        if counter > used {
            let dir = self.ensure_dir("secret", 0o700)?;
            let tmp = dir.join(format!(".{name}.counter.tmp{}", std::process::id()));
            let mut f = File::create(&tmp).map_err(|e| NpkError::io(&tmp, e))?;
            f.write_all(format!("{counter}\n").as_bytes())
                .and_then(|_| f.sync_all())
                .map_err(|e| NpkError::io(&tmp, e))?;
            fs::rename(&tmp, &path).map_err(|e| NpkError::io(&path, e))?;
            sync_dir(&dir)?;
        }
        Ok(counter)
    }

    /// Trusts the public key in `file`. Refuses a revoked key.
    pub fn trust(&self, file: &Path) -> Result<PublicKey> {
        let text = fs::read_to_string(file).map_err(|e| NpkError::io(file, e))?;
        let key = PublicKey::parse(&text)?;
        if self.read_list("revoked")?.iter().any(|k| k.key == key.key) {
            return Err(NpkError::Key(format!(
                "key {} ({}) has been revoked; it cannot be trusted again",
                key.id(),
                key.name
            )));
        }
        self.write_public("trusted", &key)?;
        Ok(key)
    }

    /// Revokes the trusted key NAME or ID: its signatures are refused from
    /// now on, even if someone trusts it again.
    pub fn revoke(&self, name_or_id: &str) -> Result<PublicKey> {
        let info = self.find(name_or_id)?;
        if info.revoked {
            return Err(NpkError::Key(format!(
                "key {} ({}) is already revoked",
                info.key.id(),
                info.key.name
            )));
        }
        self.write_public("revoked", &info.key)?;
        let trusted = self.public_path("trusted", &info.key.id());
        match fs::remove_file(&trusted) {
            Ok(()) => sync_dir(&self.dir.join("trusted"))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(NpkError::io(&trusted, e)),
        }
        Ok(info.key)
    }

    /// Every key the store knows, trusted or revoked, sorted by name then id.
    pub fn list(&self) -> Result<Vec<KeyInfo>> {
        let mut out: Vec<KeyInfo> = Vec::new();
        for (list, revoked) in [("trusted", false), ("revoked", true)] {
            for key in self.read_list(list)? {
                if let Some(existing) = out.iter_mut().find(|i| i.key.key == key.key) {
                    existing.revoked |= revoked;
                    existing.trusted &= !revoked;
                    continue;
                }
                let secret = self
                    .secret(&key.name)
                    .map(|s| s.public().key == key.key)
                    .unwrap_or(false);
                out.push(KeyInfo {
                    key,
                    trusted: !revoked,
                    revoked,
                    secret,
                });
            }
        }
        out.sort_by(|a, b| (&a.key.name, a.key.id()).cmp(&(&b.key.name, b.key.id())));
        Ok(out)
    }

    /// The trusted and revoked keys, for verifying.
    pub fn trust_set(&self) -> Result<TrustSet> {
        Ok(TrustSet {
            trusted: self.read_list("trusted")?,
            revoked: self.read_list("revoked")?,
        })
    }

    fn find(&self, name_or_id: &str) -> Result<KeyInfo> {
        let all = self.list()?;
        let matches: Vec<&KeyInfo> = all
            .iter()
            .filter(|i| i.key.id() == name_or_id || i.key.name == name_or_id)
            .collect();
        match matches[..] {
            [one] => Ok(one.clone()),
            [] => Err(NpkError::Key(format!(
                "no key named or with id {name_or_id:?} (see `nip key list`)"
            ))),
            _ => Err(NpkError::Key(format!(
                "several keys are named {name_or_id:?}: give the key id (see `nip key list`)"
            ))),
        }
    }

    fn read_list(&self, list: &str) -> Result<Vec<PublicKey>> {
        let dir = self.dir.join(list);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(NpkError::io(&dir, e)),
        };
        let mut keys = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| NpkError::io(&dir, e))?;
            let path = entry.path();
            if path.extension().is_none_or(|x| x != "pub") {
                continue; // temporary files of an interrupted write
            }
            let text = fs::read_to_string(&path).map_err(|e| NpkError::io(&path, e))?;
            let key = PublicKey::parse(&text)
                .map_err(|e| NpkError::Key(format!("{}: {e}", path.display())))?;
            keys.push(key);
        }
        keys.sort_by_key(PublicKey::id);
        Ok(keys)
    }

    fn write_public(&self, list: &str, key: &PublicKey) -> Result<()> {
        let dir = self.ensure_dir(list, 0o755)?;
        let path = self.public_path(list, &key.id());
        let tmp = dir.join(format!(".{}.tmp{}", key.id(), std::process::id()));
        let mut f = File::create(&tmp).map_err(|e| NpkError::io(&tmp, e))?;
        f.write_all(key.to_line().as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| NpkError::io(&tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| NpkError::io(&path, e))?;
        sync_dir(&dir)
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| NpkError::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_trust_revoke() {
        let d = tempfile::tempdir().unwrap();
        let keys = KeyStore::new(d.path());
        let pk = keys.generate("alice").unwrap();
        let mode = fs::metadata(d.path().join("secret/alice.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(keys.generate("alice").is_err());
        assert!(keys.generate("../x").is_err());
        let set = keys.trust_set().unwrap();
        assert_eq!(set.check(pk.key.as_bytes()).unwrap().name, "alice");

        let other = KeyStore::new(d.path().join("other"));
        let bob = other.generate("bob").unwrap();
        assert!(matches!(
            keys.trust_set().unwrap().check(bob.key.as_bytes()),
            Err(TrustError::UnknownKey { .. })
        ));
        keys.trust(&other.public_file("bob").unwrap()).unwrap();
        assert!(keys.trust_set().unwrap().check(bob.key.as_bytes()).is_ok());
        keys.revoke(&bob.id()).unwrap();
        assert!(matches!(
            keys.trust_set().unwrap().check(bob.key.as_bytes()),
            Err(TrustError::Revoked { .. })
        ));
        assert!(keys.trust(&other.public_file("bob").unwrap()).is_err());
        let list = keys.list().unwrap();
        assert_eq!(list.len(), 2);
        assert!(
            list.iter()
                .any(|k| k.key.name == "alice" && k.secret && k.trusted)
        );
        assert!(
            list.iter()
                .any(|k| k.key.name == "bob" && k.revoked && !k.trusted)
        );
    }

    #[test]
    fn signatures_verify() {
        let d = tempfile::tempdir().unwrap();
        let keys = KeyStore::new(d.path());
        keys.generate("k").unwrap();
        let s = keys.secret("k").unwrap();
        let sig = ed25519_dalek::Signature::from_bytes(&s.sign(b"msg"));
        assert!(s.public().key.verify_strict(b"msg", &sig).is_ok());
        assert!(s.public().key.verify_strict(b"msh", &sig).is_err());
    }

    #[test]
    fn malformed_key_files_are_refused() {
        for text in [
            "",
            "nexus-public-key-v1 ed25519 a",
            "nexus-public-key-v1 rsa a 00",
            "nexus-public-key-v1 ed25519 a zz",
            "other ed25519 a 0000000000000000000000000000000000000000000000000000000000000000",
        ] {
            assert!(PublicKey::parse(text).is_err(), "{text:?}");
        }
    }
}
