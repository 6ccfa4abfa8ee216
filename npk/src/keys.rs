//! The ed25519 key store shared by `nip key` and `nexus key`: signing keys,
//! the keys this machine trusts (for packages, for images), and the keys it
//! has revoked.
//!
//! Layout (FORMAT.md, "Keys"):
//!
//! ```text
//! KEYS/secret/NAME.key            secret key, mode 0600 (directory 0700)
//! KEYS/secret/NAME.counter        the highest image counter NAME signed
//! KEYS/public/ID.pub              the public half of a key made here
//! KEYS/trusted-packages/ID.pub    keys trusted for packages (+ `apps`)
//! KEYS/trusted-images/ID.pub      keys trusted for images (+ `domain`)
//! KEYS/revoked/ID.pub             keys whose signatures are refused for good
//! KEYS/trusted/ID.pub             format 1: trusted for both, with a warning
//! ```
//!
//! Files are text, so a public key can be mailed or pasted. Every write
//! goes to a temporary file that is synced and renamed, so a crash leaves
//! either the old or the new file, never half of one.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

use crate::error::{NpkError, Result};
use crate::trust::{AppPattern, DEFAULT_DOMAIN, Scope, TrustSet, TrustedKey, check_domain};

/// First word of a public key file.
pub const PUBLIC_TAG: &str = "nexus-public-key-v1";
/// First word of a secret key file.
pub const SECRET_TAG: &str = "nexus-secret-key-v1";
/// Domain string hashed before a public key to make its id.
const KEY_ID_DOMAIN: &[u8] = b"nexus-key-id-v1\n";
/// Bytes of the BLAKE3 hash a key id keeps: 128 bits, so that no two keys
/// anyone can make share an id (and a trust file name). Format-1 ids were
/// the first 8 of them, so an old id is a prefix of the new one.
const KEY_ID_BYTES: usize = 16;
/// The shortest id prefix accepted to name a key (a format-1 id).
const MIN_ID_PREFIX: usize = 16;

/// The list directories of the key store.
const PACKAGES: &str = "trusted-packages";
const IMAGES: &str = "trusted-images";
const LEGACY: &str = "trusted";
const REVOKED: &str = "revoked";
const PUBLIC: &str = "public";
const SECRET: &str = "secret";

/// A public key with the name its owner gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    /// The owner's name for the key (informative only: trust is by key).
    pub name: String,
    /// The ed25519 public key.
    pub key: VerifyingKey,
}

impl PublicKey {
    /// The key id: 32 hex digits of BLAKE3 over the public key.
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
    hex::encode(&h.finalize().as_bytes()[..KEY_ID_BYTES])
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

/// A trust file: the public key line, then what the key may sign
/// (`apps PATTERN,...` for a package key, `domain NAME` for an image key).
fn trust_file_text(grant: &TrustedKey) -> String {
    let mut text = grant.key.to_line();
    match &grant.scope {
        Scope::Packages { apps } if !apps.is_empty() => {
            text.push_str(&format!("apps {}\n", crate::trust::patterns_text(apps)));
        }
        Scope::Packages { .. } => {}
        Scope::Images { domain } => text.push_str(&format!("domain {domain}\n")),
    }
    text
}

/// Parses a trust file of the list `list`.
fn parse_trust_file(text: &str, list: &str) -> Result<Vec<TrustedKey>> {
    let mut lines = text.lines();
    let key = PublicKey::parse(lines.next().unwrap_or(""))?;
    let mut apps = Vec::new();
    let mut domain = None;
    for line in lines {
        match line.split_once(' ') {
            Some(("apps", value)) if list == PACKAGES && apps.is_empty() => {
                apps = AppPattern::parse_list(value)?;
            }
            Some(("domain", value)) if list == IMAGES && domain.is_none() => {
                check_domain(value)?;
                domain = Some(value.to_string());
            }
            // Fail closed: a restriction this build does not understand
            // must not be read as no restriction.
            _ => {
                return Err(NpkError::Key(format!(
                    "unexpected line {line:?} in a trust file of {list}/"
                )));
            }
        }
    }
    let domain = domain.unwrap_or_else(|| DEFAULT_DOMAIN.to_string());
    Ok(match list {
        PACKAGES => vec![TrustedKey {
            key,
            scope: Scope::Packages { apps },
            legacy: false,
        }],
        IMAGES => vec![TrustedKey {
            key,
            scope: Scope::Images { domain },
            legacy: false,
        }],
        _ => vec![
            TrustedKey {
                key: key.clone(),
                scope: Scope::Packages { apps: Vec::new() },
                legacy: true,
            },
            TrustedKey {
                key,
                scope: Scope::Images { domain },
                legacy: true,
            },
        ],
    })
}

/// A key as `list` reports it.
#[derive(Clone, Debug)]
pub struct KeyInfo {
    /// The public key.
    pub key: PublicKey,
    /// What it is trusted to sign (empty when revoked or not trusted).
    pub scopes: Vec<Scope>,
    /// Trusted in the format-1 layout (`KEYS/trusted/`).
    pub legacy: bool,
    /// It was revoked.
    pub revoked: bool,
    /// Its secret key is in this key store.
    pub secret: bool,
}

impl KeyInfo {
    /// True when its signatures are accepted for something.
    pub fn trusted(&self) -> bool {
        !self.revoked && !self.scopes.is_empty()
    }
}

/// Which image counter [`KeyStore::take_counter`] hands out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterRequest {
    /// One more than the highest the key has signed.
    Next,
    /// This one; refused unless above the highest the key has signed,
    /// or `force` (re-signing an old state on purpose).
    Exactly {
        /// The counter.
        counter: u64,
        /// Accept a counter the key may have used before.
        force: bool,
    },
}

impl CounterRequest {
    /// `explicit` if given (forced or not), else the next.
    pub fn new(explicit: Option<u64>, force: bool) -> Self {
        match explicit {
            Some(counter) => CounterRequest::Exactly { counter, force },
            None => CounterRequest::Next,
        }
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
        self.dir.join(SECRET).join(format!("{name}.key"))
    }

    fn list_path(&self, list: &str, id: &str) -> PathBuf {
        self.dir.join(list).join(format!("{id}.pub"))
    }

    /// The subdirectory `sub`, created with `mode` (and the key store with
    /// 0755) if missing: created with its mode, never chmodded after, so
    /// it is never more open than `mode` even for an instant. An existing
    /// one more open than `mode` is tightened; a symlink is refused.
    fn ensure_dir(&self, sub: &str, mode: u32) -> Result<PathBuf> {
        let d = self.dir.join(sub);
        for (path, mode, recursive) in [(&self.dir, 0o755, true), (&d, mode, false)] {
            match DirBuilder::new()
                .recursive(recursive)
                .mode(mode)
                .create(path)
            {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(NpkError::io(path, e)),
            }
        }
        let dir = open_dir_nofollow(&d)?;
        let meta = dir.metadata().map_err(|e| NpkError::io(&d, e))?;
        let have = meta.mode() & 0o7777;
        if have & !mode != 0 {
            dir.set_permissions(fs::Permissions::from_mode(have & mode))
                .map_err(|e| NpkError::io(&d, e))?;
        }
        Ok(d)
    }

    /// Creates the signing key NAME, writes its public key to `public/`
    /// and trusts it here for packages of every App and for images of the
    /// default domain (this machine's own key). Refuses to replace a key.
    pub fn generate(&self, name: &str) -> Result<PublicKey> {
        check_name(name)?;
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)
            .map_err(|e| NpkError::Key(format!("no randomness for a new key: {e}")))?;
        let secret = SecretKey {
            name: name.to_string(),
            signing: SigningKey::from_bytes(&seed),
        };
        self.ensure_dir(SECRET, 0o700)?;
        let path = self.secret_path(name);
        let line = format!("{SECRET_TAG} ed25519 {name} {}\n", hex::encode(seed));
        // create_new: never overwrite a key (its signatures would become
        // unverifiable); mode 0600 from the start, not chmod after writing.
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
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
        self.write_list(PUBLIC, &public.id(), &public.to_line())?;
        for scope in [
            Scope::Packages { apps: Vec::new() },
            Scope::Images {
                domain: DEFAULT_DOMAIN.to_string(),
            },
        ] {
            self.write_grant(&TrustedKey {
                key: public.clone(),
                scope,
                legacy: false,
            })?;
        }
        Ok(public)
    }

    /// The one-line public key file of the key NAME or ID made here (for
    /// sharing); written from the secret key if it is missing (keys made
    /// before `public/` existed).
    pub fn public_file(&self, name_or_id: &str) -> Result<PathBuf> {
        let info = self.find(name_or_id)?;
        let path = self.list_path(PUBLIC, &info.key.id());
        if !path.exists() {
            if !info.secret {
                return Err(NpkError::Key(format!(
                    "key {} ({}) was not made here: its public key file is wherever it came from",
                    info.key.id(),
                    info.key.name
                )));
            }
            self.write_list(PUBLIC, &info.key.id(), &info.key.to_line())?;
        }
        Ok(path)
    }

    /// The signing key NAME. Refused, as ssh refuses, when the file is a
    /// symlink, is not owned by the caller, or can be read or written by
    /// group or others: a key others could read signs for them too.
    pub fn secret(&self, name: &str) -> Result<SecretKey> {
        check_name(name)?;
        let path = self.secret_path(name);
        let mut file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => NpkError::Key(format!(
                    "no secret key named {name} in {}",
                    self.dir.display()
                )),
                _ if e.raw_os_error() == Some(libc::ELOOP) => NpkError::UnsafeSecretKey {
                    path: path.clone(),
                    why: "it is a symlink".into(),
                },
                _ => NpkError::io(&path, e),
            })?;
        let meta = file.metadata().map_err(|e| NpkError::io(&path, e))?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        if meta.uid() != euid {
            return Err(NpkError::UnsafeSecretKey {
                path,
                why: format!("it is owned by uid {}, not by uid {euid}", meta.uid()),
            });
        }
        if meta.mode() & 0o077 != 0 {
            return Err(NpkError::UnsafeSecretKey {
                path,
                why: format!(
                    "group or others may access it (mode {:04o}; it must be 0600 or stricter)",
                    meta.mode() & 0o7777
                ),
            });
        }
        let mut text = String::new();
        file.read_to_string(&mut text)
            .map_err(|e| NpkError::io(&path, e))?;
        let (file_name, seed) = parse_line(&text, SECRET_TAG, "secret")?;
        Ok(SecretKey {
            name: file_name,
            signing: SigningKey::from_bytes(&seed),
        })
    }

    /// The counter to sign the next image with key NAME, recorded
    /// (`KEYS/secret/NAME.counter`) before it is returned so that counters
    /// only go up. Taken under an exclusive lock of `KEYS/secret/`, so two
    /// snapshots running at once never get the same counter.
    pub fn take_counter(&self, name: &str, request: CounterRequest) -> Result<u64> {
        check_name(name)?;
        let dir = self.ensure_dir(SECRET, 0o700)?;
        let lock = open_dir_nofollow(&dir)?;
        lock.lock().map_err(|e| NpkError::io(&dir, e))?;
        let path = dir.join(format!("{name}.counter"));
        let used = match fs::read_to_string(&path) {
            Ok(text) => text
                .trim()
                .parse::<u64>()
                .map_err(|_| NpkError::Key(format!("{}: not a counter", path.display())))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(NpkError::io(&path, e)),
        };
        let counter = match request {
            CounterRequest::Exactly { counter: 0, .. } => {
                return Err(NpkError::Key("image counters start at 1".into()));
            }
            CounterRequest::Exactly {
                counter,
                force: false,
            } if counter <= used => {
                return Err(NpkError::CounterUsed {
                    key: name.to_string(),
                    counter,
                    highest: used,
                });
            }
            CounterRequest::Exactly { counter, .. } => counter,
            CounterRequest::Next => used
                .checked_add(1)
                .ok_or_else(|| NpkError::Key("the counter of this key is exhausted".into()))?,
        };
        if counter > used {
            write_atomically(&dir, &path, format!("{counter}\n").as_bytes(), 0o600)?;
        }
        drop(lock);
        Ok(counter)
    }

    /// Trusts the public key in `file` for `scope` (replacing what it was
    /// trusted for in that role before). Refuses a revoked key.
    pub fn trust(&self, file: &Path, scope: Scope) -> Result<TrustedKey> {
        let text = fs::read_to_string(file).map_err(|e| NpkError::io(file, e))?;
        let key = PublicKey::parse(&text)?;
        if let Scope::Images { domain } = &scope {
            check_domain(domain)?;
        }
        if self.read_keys(REVOKED)?.iter().any(|k| k.key == key.key) {
            return Err(NpkError::Key(format!(
                "key {} ({}) has been revoked; it cannot be trusted again",
                key.id(),
                key.name
            )));
        }
        let grant = TrustedKey {
            key,
            scope,
            legacy: false,
        };
        self.write_grant(&grant)?;
        Ok(grant)
    }

    /// Revokes the key NAME or ID: its signatures are refused from now on,
    /// even if someone trusts it again, and its trust files are removed.
    pub fn revoke(&self, name_or_id: &str) -> Result<PublicKey> {
        let info = self.find(name_or_id)?;
        if info.revoked {
            return Err(NpkError::Key(format!(
                "key {} ({}) is already revoked",
                info.key.id(),
                info.key.name
            )));
        }
        self.write_list(REVOKED, &info.key.id(), &info.key.to_line())?;
        for list in [PACKAGES, IMAGES, LEGACY] {
            self.remove_key(list, &info.key)?;
        }
        Ok(info.key)
    }

    /// Every key the store knows (made here, trusted or revoked), sorted by
    /// name then id.
    pub fn list(&self) -> Result<Vec<KeyInfo>> {
        let mut out: Vec<KeyInfo> = Vec::new();
        let mut entry = |key: &PublicKey| -> usize {
            match out.iter().position(|i| i.key.key == key.key) {
                Some(i) => i,
                None => {
                    out.push(KeyInfo {
                        key: key.clone(),
                        scopes: Vec::new(),
                        legacy: false,
                        revoked: false,
                        secret: false,
                    });
                    out.len() - 1
                }
            }
        };
        let mut infos: Vec<(usize, Option<TrustedKey>, bool)> = Vec::new();
        for grant in self.read_grants()? {
            infos.push((entry(&grant.key), Some(grant), false));
        }
        for key in self.read_keys(REVOKED)? {
            infos.push((entry(&key), None, true));
        }
        for key in self.read_keys(PUBLIC)? {
            infos.push((entry(&key), None, false));
        }
        for (i, grant, revoked) in infos {
            let info = &mut out[i];
            info.revoked |= revoked;
            if let Some(g) = grant {
                info.legacy |= g.legacy;
                if !info.scopes.contains(&g.scope) {
                    info.scopes.push(g.scope);
                }
            }
        }
        for info in &mut out {
            if info.revoked {
                info.scopes.clear();
            }
            info.secret = self
                .secret_path(&info.key.name)
                .exists()
                .then(|| self.secret(&info.key.name))
                .and_then(|s| s.ok())
                .is_some_and(|s| s.public().key == info.key.key);
        }
        out.sort_by(|a, b| (&a.key.name, a.key.id()).cmp(&(&b.key.name, b.key.id())));
        Ok(out)
    }

    /// The trusted and revoked keys, for verifying. As root, refuses a key
    /// store that someone else could change ([`KeyStore::audit`]): whoever
    /// can write there decides which signatures root accepts.
    pub fn trust_set(&self) -> Result<TrustSet> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } == 0
            && let Some((path, why)) = self.unsafe_parts().into_iter().next()
        {
            return Err(NpkError::UnsafeKeyStore { path, why });
        }
        Ok(TrustSet {
            trusted: self.read_grants()?,
            revoked: self.read_keys(REVOKED)?,
        })
    }

    /// What makes the key store unsafe to rely on as root, one line each
    /// (what [`KeyStore::trust_set`] refuses as root).
    pub fn audit(&self) -> Vec<String> {
        self.unsafe_parts()
            .into_iter()
            .map(|(path, why)| format!("key store {}: {why}", path.display()))
            .collect()
    }

    /// The parts of the key store someone other than root could change:
    /// the way to it (`nexus_store::root_way`), the store and its list
    /// directories (not root's, or writable by group or others), and the
    /// key files in the lists (also: not plain files). Empty when there is
    /// no key store.
    fn unsafe_parts(&self) -> Vec<(PathBuf, String)> {
        let mut out = Vec::new();
        if fs::symlink_metadata(&self.dir).is_err() {
            return out;
        }
        if let Err(e) = nexus_store::root_way::resolve_checked(&self.dir) {
            out.push((
                self.dir.clone(),
                format!("the way to it is not root's alone ({e})"),
            ));
        }
        let shared = |meta: &fs::Metadata| -> Option<String> {
            if meta.uid() != 0 {
                Some(format!(
                    "owned by uid {}, not root: that user decides which signatures root accepts",
                    meta.uid()
                ))
            } else if meta.mode() & 0o022 != 0 {
                Some(format!(
                    "writable by group or others (mode {:04o}): they decide which signatures root accepts",
                    meta.mode() & 0o7777
                ))
            } else {
                None
            }
        };
        let lists = [PACKAGES, IMAGES, LEGACY, REVOKED].map(|l| self.dir.join(l));
        for dir in std::iter::once(self.dir.clone()).chain(lists.clone()) {
            if let Ok(meta) = fs::symlink_metadata(&dir)
                && let Some(why) = shared(&meta)
            {
                out.push((dir, why));
            }
        }
        for list in lists {
            let Ok(entries) = fs::read_dir(&list) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_none_or(|x| x != "pub") {
                    continue;
                }
                let why = match fs::symlink_metadata(&path) {
                    Ok(meta) if !meta.is_file() => Some("not a plain file".to_string()),
                    Ok(meta) => shared(&meta),
                    Err(e) => Some(e.to_string()),
                };
                if let Some(why) = why {
                    out.push((path, why));
                }
            }
        }
        out
    }

    fn find(&self, name_or_id: &str) -> Result<KeyInfo> {
        let all = self.list()?;
        let by_id =
            name_or_id.len() >= MIN_ID_PREFIX && name_or_id.bytes().all(|b| b.is_ascii_hexdigit());
        let matches: Vec<&KeyInfo> = all
            .iter()
            .filter(|i| {
                i.key.name == name_or_id
                    || (by_id && i.key.id().starts_with(&name_or_id.to_ascii_lowercase()))
            })
            .collect();
        match matches[..] {
            [one] => Ok(one.clone()),
            [] => Err(NpkError::Key(format!(
                "no key named or with id {name_or_id:?} in {}",
                self.dir.display()
            ))),
            _ => Err(NpkError::Key(format!(
                "several keys are named {name_or_id:?}: give the key id"
            ))),
        }
    }

    /// The grants of every trust list.
    fn read_grants(&self) -> Result<Vec<TrustedKey>> {
        let mut grants = Vec::new();
        for list in [PACKAGES, IMAGES, LEGACY] {
            for (path, text) in self.read_files(list)? {
                grants.extend(
                    parse_trust_file(&text, list)
                        .map_err(|e| NpkError::Key(format!("{}: {e}", path.display())))?,
                );
            }
        }
        grants.sort_by_key(|g| (g.key.id(), g.legacy));
        Ok(grants)
    }

    /// The one-line key files of `list`.
    fn read_keys(&self, list: &str) -> Result<Vec<PublicKey>> {
        let mut keys = Vec::new();
        for (path, text) in self.read_files(list)? {
            keys.push(
                PublicKey::parse(&text)
                    .map_err(|e| NpkError::Key(format!("{}: {e}", path.display())))?,
            );
        }
        keys.sort_by_key(PublicKey::id);
        Ok(keys)
    }

    /// The `.pub` files of `list` (any name: format-1 files are named by
    /// 64-bit ids) and their text.
    fn read_files(&self, list: &str) -> Result<Vec<(PathBuf, String)>> {
        let dir = self.dir.join(list);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(NpkError::io(&dir, e)),
        };
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| NpkError::io(&dir, e))?;
            let path = entry.path();
            if path.extension().is_none_or(|x| x != "pub") {
                continue; // temporary files of an interrupted write
            }
            let text = fs::read_to_string(&path).map_err(|e| NpkError::io(&path, e))?;
            files.push((path, text));
        }
        Ok(files)
    }

    /// Removes every file of `list` that holds `key`, whatever its name.
    fn remove_key(&self, list: &str, key: &PublicKey) -> Result<()> {
        let mut removed = false;
        for (path, text) in self.read_files(list)? {
            let holds = text
                .lines()
                .next()
                .and_then(|l| PublicKey::parse(l).ok())
                .is_some_and(|k| k.key == key.key);
            if holds {
                fs::remove_file(&path).map_err(|e| NpkError::io(&path, e))?;
                removed = true;
            }
        }
        if removed {
            sync_dir(&self.dir.join(list))?;
        }
        Ok(())
    }

    fn write_grant(&self, grant: &TrustedKey) -> Result<()> {
        let list = match grant.scope {
            Scope::Packages { .. } => PACKAGES,
            Scope::Images { .. } => IMAGES,
        };
        self.write_list(list, &grant.key.id(), &trust_file_text(grant))
    }

    fn write_list(&self, list: &str, id: &str, text: &str) -> Result<()> {
        let dir = self.ensure_dir(list, 0o755)?;
        write_atomically(&dir, &self.list_path(list, id), text.as_bytes(), 0o644)
    }
}

/// Writes `path` (in `dir`) through a fresh temporary file (never one an
/// attacker placed: `O_EXCL`, no symlinks followed), synced and renamed.
fn write_atomically(dir: &Path, path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let _ = fs::remove_file(&tmp); // debris of a crashed run with our pid
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(|e| NpkError::io(&tmp, e))?;
    let written = f.write_all(bytes).and_then(|_| f.sync_all());
    if let Err(e) = written.and_then(|_| fs::rename(&tmp, path)) {
        let _ = fs::remove_file(&tmp);
        return Err(NpkError::io(path, e));
    }
    sync_dir(dir)
}

fn open_dir_nofollow(dir: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(dir)
        .map_err(|e| NpkError::io(dir, e))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| NpkError::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ArchiveKind;
    use crate::error::TrustError;

    fn image_scope(domain: &str) -> Scope {
        Scope::Images {
            domain: domain.into(),
        }
    }

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
        for kind in [ArchiveKind::Package, ArchiveKind::Image] {
            assert_eq!(
                set.check(pk.key.as_bytes(), kind).unwrap().key.name,
                "alice"
            );
        }

        let other = KeyStore::new(d.path().join("other"));
        let bob = other.generate("bob").unwrap();
        assert!(matches!(
            keys.trust_set()
                .unwrap()
                .check(bob.key.as_bytes(), ArchiveKind::Package),
            Err(TrustError::UnknownKey { .. })
        ));
        let bob_file = other.public_file("bob").unwrap();
        keys.trust(&bob_file, Scope::Packages { apps: Vec::new() })
            .unwrap();
        let set = keys.trust_set().unwrap();
        assert!(set.check(bob.key.as_bytes(), ArchiveKind::Package).is_ok());
        // Trusted for packages is not trusted for images.
        assert!(matches!(
            set.check(bob.key.as_bytes(), ArchiveKind::Image),
            Err(TrustError::WrongKind { .. })
        ));
        keys.revoke(&bob.id()).unwrap();
        assert!(matches!(
            keys.trust_set()
                .unwrap()
                .check(bob.key.as_bytes(), ArchiveKind::Package),
            Err(TrustError::Revoked { .. })
        ));
        assert!(keys.trust(&bob_file, image_scope("images")).is_err());
        let list = keys.list().unwrap();
        assert_eq!(list.len(), 2);
        assert!(
            list.iter()
                .any(|k| k.key.name == "alice" && k.secret && k.trusted() && k.scopes.len() == 2)
        );
        assert!(
            list.iter()
                .any(|k| k.key.name == "bob" && k.revoked && !k.trusted())
        );
    }

    #[test]
    fn ids_are_128_bits_and_old_ids_still_name_keys() {
        let d = tempfile::tempdir().unwrap();
        let keys = KeyStore::new(d.path());
        let pk = keys.generate("k").unwrap();
        assert_eq!(pk.id().len(), 32);
        assert!(d.path().join(format!("public/{}.pub", pk.id())).exists());
        // A format-1 store: the key trusted under its 64-bit id.
        let old = KeyStore::new(d.path().join("old"));
        fs::create_dir_all(old.dir().join("trusted")).unwrap();
        fs::write(
            old.dir().join(format!("trusted/{}.pub", &pk.id()[..16])),
            pk.to_line(),
        )
        .unwrap();
        let set = old.trust_set().unwrap();
        for kind in [ArchiveKind::Package, ArchiveKind::Image] {
            let grant = set.check(pk.key.as_bytes(), kind).unwrap();
            assert!(grant.legacy);
        }
        assert_eq!(
            set.check(pk.key.as_bytes(), ArchiveKind::Image)
                .unwrap()
                .domain(),
            Some(DEFAULT_DOMAIN)
        );
        assert_eq!(set.trusted.iter().filter(|t| t.legacy).count(), 2);
        // Named by the old id, revoked: every trust file of it goes.
        old.revoke(&pk.id()[..16]).unwrap();
        assert!(
            fs::read_dir(old.dir().join("trusted"))
                .unwrap()
                .next()
                .is_none()
        );
        assert!(
            old.find(&pk.id()[..15]).is_err(),
            "short prefixes are refused"
        );
    }

    #[test]
    fn package_keys_can_be_limited_to_apps_and_image_keys_have_a_domain() {
        let d = tempfile::tempdir().unwrap();
        let vendor = KeyStore::new(d.path().join("vendor"));
        let pk = vendor.generate("vendor").unwrap();
        let file = vendor.public_file("vendor").unwrap();
        let keys = KeyStore::new(d.path().join("here"));
        keys.trust(
            &file,
            Scope::Packages {
                apps: AppPattern::parse_list("vendor*").unwrap(),
            },
        )
        .unwrap();
        keys.trust(&file, image_scope("fleet")).unwrap();
        let set = keys.trust_set().unwrap();
        let grant = set.check(pk.key.as_bytes(), ArchiveKind::Package).unwrap();
        assert!(grant.check_app("vendortool").is_ok());
        assert!(matches!(
            grant.check_app("openssh"),
            Err(TrustError::AppNotAllowed { .. })
        ));
        let image = set.check(pk.key.as_bytes(), ArchiveKind::Image).unwrap();
        assert_eq!(image.domain(), Some("fleet"));
        assert_eq!(set.domain_keys("fleet").count(), 1);
        assert_eq!(set.domain_keys(DEFAULT_DOMAIN).count(), 0);
        // The trust file states the restriction; one this build does not
        // know is refused rather than ignored.
        let text = fs::read_to_string(
            d.path()
                .join(format!("here/trusted-packages/{}.pub", pk.id())),
        )
        .unwrap();
        assert!(text.ends_with("apps vendor*\n"), "{text}");
        fs::write(
            d.path()
                .join(format!("here/trusted-packages/{}.pub", pk.id())),
            format!("{}only-on tuesdays\n", pk.to_line()),
        )
        .unwrap();
        assert!(keys.trust_set().is_err());
        assert!(keys.trust(&file, image_scope("0123456789abcdef")).is_err());
    }

    #[test]
    fn secret_keys_others_can_read_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let keys = KeyStore::new(d.path());
        keys.generate("k").unwrap();
        let path = d.path().join("secret/k.key");
        for mode in [0o644, 0o640, 0o604, 0o620] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            assert!(
                matches!(keys.secret("k"), Err(NpkError::UnsafeSecretKey { .. })),
                "mode {mode:o} accepted"
            );
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        keys.secret("k").unwrap();
        // A symlink to a private key is refused too (whose key is it?).
        std::os::unix::fs::symlink(&path, d.path().join("secret/l.key")).unwrap();
        assert!(matches!(
            keys.secret("l"),
            Err(NpkError::UnsafeSecretKey { .. })
        ));
    }

    #[test]
    fn counters_only_go_up_and_are_never_shared() {
        let d = tempfile::tempdir().unwrap();
        let keys = KeyStore::new(d.path());
        keys.generate("k").unwrap();
        assert_eq!(keys.take_counter("k", CounterRequest::Next).unwrap(), 1);
        let exactly = |counter, force| CounterRequest::Exactly { counter, force };
        assert_eq!(keys.take_counter("k", exactly(5, false)).unwrap(), 5);
        for used in [5, 3] {
            assert!(matches!(
                keys.take_counter("k", exactly(used, false)),
                Err(NpkError::CounterUsed { highest: 5, .. })
            ));
        }
        assert_eq!(keys.take_counter("k", exactly(3, true)).unwrap(), 3);
        assert_eq!(keys.take_counter("k", CounterRequest::Next).unwrap(), 6);
        // Many takers at once, each a separate key store handle (as
        // separate processes are): every counter handed out once.
        let taken: Vec<u64> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..16)
                .map(|_| {
                    let keys = KeyStore::new(d.path());
                    s.spawn(move || {
                        (0..8)
                            .map(|_| keys.take_counter("k", CounterRequest::Next).unwrap())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        let mut sorted = taken.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), taken.len(), "a counter was handed out twice");
        assert_eq!(sorted, (7..7 + 128).collect::<Vec<u64>>());
    }

    #[test]
    fn directories_are_created_private_and_symlinks_refused() {
        let d = tempfile::tempdir().unwrap();
        let keys = KeyStore::new(d.path().join("keys"));
        keys.generate("k").unwrap();
        let mode = |p: &str| fs::metadata(d.path().join(p)).unwrap().mode() & 0o777;
        assert_eq!(mode("keys/secret"), 0o700);
        assert_eq!(mode("keys") & 0o022, 0);
        fs::set_permissions(
            d.path().join("keys/secret"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        keys.take_counter("k", CounterRequest::Next).unwrap();
        assert_eq!(
            mode("keys/secret"),
            0o700,
            "a too open directory is tightened"
        );
        // Anyone who can write the trust lists decides what root accepts.
        assert!(keys.audit().iter().all(|w| w.contains("owned by uid")));
        fs::set_permissions(
            d.path().join("keys/trusted-images"),
            fs::Permissions::from_mode(0o777),
        )
        .unwrap();
        let warnings = keys.audit();
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("trusted-images") && w.contains("writable by group or others")),
            "{warnings:?}"
        );
        let elsewhere = tempfile::tempdir().unwrap();
        let hijacked = KeyStore::new(d.path().join("hijacked"));
        fs::create_dir(hijacked.dir()).unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), hijacked.dir().join("secret")).unwrap();
        assert!(hijacked.generate("k").is_err());
        assert!(fs::read_dir(elsewhere.path()).unwrap().next().is_none());
    }

    /// Whoever can change root's key store decides which signatures root
    /// accepts: as root, a store whose lists, key files or way others can
    /// change is refused, not only warned of.
    #[test]
    fn as_root_a_key_store_others_can_change_is_refused() {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return; // the rule is root's
        }
        let d = tempfile::tempdir().unwrap();
        let keys = KeyStore::new(d.path().join("keys"));
        let signer = KeyStore::new(d.path().join("signer"));
        signer.generate("s").unwrap();
        let scope = Scope::Images {
            domain: "site".into(),
        };
        keys.trust(&signer.public_file("s").unwrap(), scope)
            .unwrap();
        keys.trust_set().unwrap();
        let list = d.path().join("keys").join(IMAGES);
        let file = fs::read_dir(&list).unwrap().next().unwrap().unwrap().path();
        let refused = |what: &str| {
            let err = keys.trust_set().unwrap_err();
            assert!(
                matches!(err, NpkError::UnsafeKeyStore { .. }),
                "{what}: {err}"
            );
            err.to_string()
        };

        fs::set_permissions(&list, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(refused("a list others can write").contains(IMAGES));
        fs::set_permissions(&list, fs::Permissions::from_mode(0o755)).unwrap();

        std::os::unix::fs::lchown(&file, Some(65534), None).unwrap();
        assert!(refused("a key file of another user's").contains("uid 65534"));
        std::os::unix::fs::lchown(&file, Some(0), None).unwrap();

        let planted = d.path().join("planted.pub");
        fs::rename(&file, &planted).unwrap();
        std::os::unix::fs::symlink(&planted, &file).unwrap();
        assert!(refused("a key file that is a link").contains("not a plain file"));
        fs::remove_file(&file).unwrap();
        fs::rename(&planted, &file).unwrap();
        keys.trust_set().unwrap();

        let theirs = d.path().join("theirs");
        fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::lchown(&theirs, Some(65534), Some(65534)).unwrap();
        fs::rename(d.path().join("keys"), theirs.join("keys")).unwrap();
        let moved = KeyStore::new(theirs.join("keys"));
        let err = moved.trust_set().unwrap_err();
        assert!(err.to_string().contains("not root's alone"), "{err}");
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
