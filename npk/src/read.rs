//! Opening an archive: checking its signature and integrity, decoding its
//! body, and reading file contents chunk by verified chunk.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ed25519_dalek::{Signature, VerifyingKey};
use nexus_store::Hash;
use nexus_store::pack::ChunkLocation;
use nexus_store::read::{BlockReader, SingleFile};

use crate::body::{Body, BodyBlob, BodyLimits, root_hash};
use crate::error::{FormatError, NpkError, Result, TrustError};
use crate::keys::{PublicKey, key_id};
use crate::manifest::{
    ArchiveKind, HEADER_LEN, Manifest, TRAILER_LEN, decode_header, decode_trailer, holds,
};
use crate::trust::{Scope, TrustSet, TrustedKey};

/// What signatures [`Archive::open`] accepts.
#[derive(Clone, Copy, Debug)]
pub enum Policy<'a> {
    /// Only archives signed by a key of this set trusted for their kind
    /// (a package: for its App), not revoked, unaltered, and not expired
    /// as `Expiry` says.
    Trusted(&'a TrustSet, Expiry),
    /// Anything well-formed (`--insecure`); problems are logged as warnings.
    Insecure,
}

/// Whether an expired archive is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// Refused when expired at this time (seconds since the epoch).
    Enforce(i64),
    /// Accepted with a warning (an admin's deliberate choice).
    Ignore,
}

impl Expiry {
    /// Refused when expired at the system's current time.
    pub fn now() -> Self {
        Expiry::Enforce(unix_now())
    }

    /// Refused when expired now, unless `allow_expired`.
    pub fn unless_allowed(allow_expired: bool) -> Self {
        if allow_expired {
            Expiry::Ignore
        } else {
            Expiry::now()
        }
    }
}

/// The system's time, seconds since the epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// How much of the file [`Archive::open`] hashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// Every byte against the signed content hash (importing, `verify`).
    Full,
    /// The manifest, body and root hash only; chunks are verified as they
    /// are read (serving an image without reading it all first).
    Manifest,
}

/// Who signed an accepted archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signer {
    /// A key trusted for this archive (its grant: what it may sign).
    Trusted(Box<TrustedKey>),
    /// Accepted only because of [`Policy::Insecure`]: why it would have
    /// been refused.
    Unverified(String),
}

/// An opened, checked archive.
pub struct Archive {
    path: PathBuf,
    /// Name given to the archive's blocks (it is their one "pack").
    pack: Arc<str>,
    /// The store's block reader over this file: contents read in block
    /// order (see [`Archive::blobs_in_block_order`]) decode each block once,
    /// and every chunk is verified against its name.
    blocks: BlockReader,
    /// The manifest.
    pub manifest: Manifest,
    /// The decoded body.
    pub body: Body,
    /// Who signed it.
    pub signer: Signer,
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archive")
            .field("path", &self.path)
            .field("manifest", &self.manifest)
            .finish_non_exhaustive()
    }
}

/// Decoded blocks kept while an archive is read: contents are read in block
/// order, so a few blocks suffice.
const BLOCK_CACHE_BYTES: u64 = 8 << 20;

/// True if `head` starts like an archive.
pub fn is_archive(head: &[u8]) -> bool {
    head.starts_with(crate::manifest::MAGIC)
}

impl Archive {
    /// Opens `path`: checks the format, the signature against `policy`,
    /// the hash of every byte the manifest covers, and decodes the body
    /// (within the format's bounds only: [`BodyLimits::NONE`]).
    pub fn open(path: &Path, policy: Policy<'_>) -> Result<Archive> {
        Archive::open_with(path, policy, Check::Full)
    }

    /// [`Archive::open`] for an archive that must be of `kind`: another
    /// kind is refused as soon as the header says so, before its signer
    /// is judged ("this is an image" says more than who may sign one). The
    /// kind is read from the very file then verified, so a file swapped
    /// after the check is not taken for the kind it replaced. The body is
    /// decoded within `limits` (a package archive holds one package
    /// whatever they say): a package over them is refused as it is
    /// decoded ([`crate::FormatError::OverLimit`]), before it is held.
    pub fn open_as(
        path: &Path,
        kind: ArchiveKind,
        policy: Policy<'_>,
        limits: &BodyLimits,
    ) -> Result<Archive> {
        Archive::open_file(path, policy, Check::Full, Some(kind), limits)
    }

    /// Opens `path` as [`Archive::open`] does, hashing as much as `check`
    /// says.
    pub fn open_with(path: &Path, policy: Policy<'_>, check: Check) -> Result<Archive> {
        Archive::open_file(path, policy, check, None, &BodyLimits::NONE)
    }

    fn open_file(
        path: &Path,
        policy: Policy<'_>,
        check: Check,
        expected: Option<ArchiveKind>,
        limits: &BodyLimits,
    ) -> Result<Archive> {
        let file = nexus_store::regular::open_regular(path).map_err(|e| NpkError::io(path, e))?;
        let len = file.metadata().map_err(|e| NpkError::io(path, e))?.len();
        let mut header = [0u8; HEADER_LEN as usize];
        read_header(&file, path, &mut header)?;
        let (kind, version) = decode_header(&header)?;
        if let Some(expected) = expected.filter(|&e| e != kind) {
            return Err(NpkError::KindMismatch {
                expected,
                found: kind,
            });
        }
        if len < HEADER_LEN + TRAILER_LEN {
            return Err(FormatError::Malformed(
                "truncated: shorter than header and trailer".into(),
            )
            .into());
        }
        let mut trailer = vec![0u8; TRAILER_LEN as usize];
        read_at(&file, path, &mut trailer, len - TRAILER_LEN)?;
        let (manifest, signature) = decode_trailer(&trailer)?;
        if manifest.kind != kind || manifest.version != version {
            return Err(FormatError::Malformed(
                "header and manifest disagree on the kind or version".into(),
            )
            .into());
        }
        let content_len = len - TRAILER_LEN;
        if manifest.body_offset < HEADER_LEN
            || manifest.body_offset.checked_add(manifest.body_len) != Some(content_len)
        {
            return Err(FormatError::Malformed(
                "the manifest's body position does not match the file (truncated or extended)"
                    .into(),
            )
            .into());
        }

        let signer = match check_signature(&manifest, &signature, policy) {
            Ok(key) => Signer::Trusted(Box::new(key)),
            Err(problem) => match policy {
                Policy::Trusted(..) => return Err(problem.into()),
                Policy::Insecure => {
                    tracing::warn!("{}: {problem}; accepted anyway (insecure)", path.display());
                    Signer::Unverified(problem.to_string())
                }
            },
        };
        check_expiry(path, &manifest, policy)?;

        let body_frame = if check == Check::Full {
            hash_content(&file, path, &manifest, content_len, policy)?
        } else {
            let mut frame = vec![0u8; manifest.body_len.min(content_len) as usize];
            read_at(&file, path, &mut frame, manifest.body_offset)?;
            frame
        };
        if Hash::of(&body_frame) != manifest.body_hash {
            let problem =
                TrustError::Tampered("its body does not match the signed body hash".into());
            match policy {
                Policy::Trusted(..) => return Err(problem.into()),
                Policy::Insecure => tracing::warn!("{}: {problem}", path.display()),
            }
        }
        // Decoded as it is decompressed: a package over the limits, or a
        // package archive of several packages, is refused at its count.
        let limits = BodyLimits {
            max_packages: match kind {
                ArchiveKind::Package => limits.max_packages.min(1),
                ArchiveKind::Image => limits.max_packages,
            },
            ..*limits
        };
        let body = Body::decode_frame(&body_frame, HEADER_LEN, manifest.body_offset, &limits)?;
        // Restrictions only in an archive of version 4: one of version 3
        // is read by builds that know nothing of them, and its signer
        // wrote it for those.
        if !holds(manifest.version, body.version()) {
            return Err(FormatError::Malformed(format!(
                "an archive of version {} holds a body of version {}",
                manifest.version,
                body.version()
            ))
            .into());
        }
        if root_hash(&body.packages) != manifest.root {
            let problem =
                TrustError::Tampered("its packages do not match the signed root hash".into());
            match policy {
                Policy::Trusted(..) => return Err(problem.into()),
                Policy::Insecure => tracing::warn!("{}: {problem}", path.display()),
            }
        }
        if kind == ArchiveKind::Package && body.packages.len() != 1 {
            return Err(FormatError::Malformed(format!(
                "a package archive holds {} packages, not one",
                body.packages.len()
            ))
            .into());
        }
        // A package key may be limited to some Apps: checked against the
        // App the (now verified) body names.
        if let Signer::Trusted(grant) = &signer
            && let Scope::Packages { .. } = grant.scope
        {
            for package in &body.packages {
                grant.check_app(&package.name)?;
            }
        }
        let source = SingleFile::new(file, path);
        Ok(Archive {
            path: path.to_path_buf(),
            pack: path.display().to_string().into(),
            blocks: BlockReader::new(Arc::new(source), BLOCK_CACHE_BYTES),
            manifest,
            body,
            signer,
        })
    }

    /// The archive's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A reader of the content `blob`, verifying every chunk.
    pub fn blob_reader<'a>(&'a self, blob: &'a BodyBlob) -> BlobReader<'a> {
        BlobReader {
            archive: self,
            blob,
            next: 0,
            chunk: Vec::new(),
            pos: 0,
        }
    }

    /// The archive's contents ordered by where their first chunk is, so
    /// that reading them one after another decodes each block about once.
    pub fn blobs_in_block_order(&self) -> Vec<&BodyBlob> {
        let mut blobs: Vec<&BodyBlob> = self.body.blobs.iter().collect();
        blobs.sort_by_key(|b| {
            b.chunks.first().map(|&i| {
                (
                    self.body.chunks[i as usize].offset,
                    self.body.chunks[i as usize].inner,
                )
            })
        });
        blobs
    }
}

/// Hashes every byte before the trailer against the manifest's content
/// hash, in one pass that keeps the body on the way.
fn hash_content(
    file: &File,
    path: &Path,
    manifest: &Manifest,
    content_len: u64,
    policy: Policy<'_>,
) -> Result<Vec<u8>> {
    let mut hasher = blake3::Hasher::new();
    let mut body_frame = Vec::with_capacity(manifest.body_len.min(1 << 30) as usize);
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    while pos < content_len {
        let n = (content_len - pos).min(buf.len() as u64) as usize;
        read_at(file, path, &mut buf[..n], pos)?;
        hasher.update(&buf[..n]);
        let end = pos + n as u64;
        if end > manifest.body_offset {
            let from = manifest.body_offset.saturating_sub(pos) as usize;
            body_frame.extend_from_slice(&buf[from..n]);
        }
        pos = end;
    }
    if Hash::from(hasher.finalize()) != manifest.content_hash {
        let problem = TrustError::Tampered("its bytes do not match the signed content hash".into());
        match policy {
            Policy::Trusted(..) => return Err(problem.into()),
            Policy::Insecure => tracing::warn!("{}: {problem}", path.display()),
        }
    }
    Ok(body_frame)
}

/// Refuses an expired archive (after its signature was checked: the
/// expiry is only worth what the signature is), as `policy` says.
fn check_expiry(path: &Path, manifest: &Manifest, policy: Policy<'_>) -> Result<()> {
    let Some(expires) = manifest.expires else {
        if manifest.version < 2 && manifest.kind == ArchiveKind::Image {
            tracing::warn!(
                "{}: an image of format version 1, signed before archives carried an expiry: nothing limits how long it is accepted",
                path.display()
            );
        }
        return Ok(());
    };
    let (now, enforce) = match policy {
        Policy::Trusted(_, Expiry::Enforce(now)) => (now, true),
        _ => (unix_now(), false),
    };
    if expires > now {
        return Ok(());
    }
    let problem = TrustError::Expired { expires, now };
    if enforce {
        return Err(problem.into());
    }
    tracing::warn!("{}: {problem}; accepted anyway", path.display());
    Ok(())
}

fn check_signature(
    manifest: &Manifest,
    signature: &[u8; 64],
    policy: Policy<'_>,
) -> std::result::Result<TrustedKey, TrustError> {
    if manifest.unsigned() {
        return Err(TrustError::Unsigned);
    }
    let grant = match policy {
        Policy::Trusted(set, _) => set.check(&manifest.signer, manifest.kind)?.clone(),
        Policy::Insecure => TrustedKey {
            key: PublicKey {
                name: "(unverified)".into(),
                key: VerifyingKey::from_bytes(&manifest.signer).map_err(|_| {
                    TrustError::BadSignature {
                        id: key_id(&manifest.signer),
                    }
                })?,
            },
            scope: Scope::Packages { apps: Vec::new() },
            legacy: false,
        },
    };
    grant
        .key
        .key
        .verify_strict(
            &manifest.signed_message(),
            &Signature::from_bytes(signature),
        )
        .map_err(|_| TrustError::BadSignature { id: grant.key.id() })?;
    match policy {
        Policy::Trusted(..) => Ok(grant),
        // A good signature by a key nobody trusts is still untrusted.
        Policy::Insecure => Err(TrustError::UnknownKey { id: grant.key.id() }),
    }
}

/// Reads the header; a file shorter than one is not an archive.
fn read_header(file: &File, path: &Path, header: &mut [u8; HEADER_LEN as usize]) -> Result<()> {
    read_at(file, path, header, 0).map_err(|e| match e {
        NpkError::Io { source, .. } if source.kind() == io::ErrorKind::UnexpectedEof => {
            FormatError::NotNpk.into()
        }
        e => e,
    })
}

fn read_at(file: &File, path: &Path, buf: &mut [u8], offset: u64) -> Result<()> {
    file.read_exact_at(buf, offset)
        .map_err(|e| NpkError::io(path, e))
}

/// Reads one file content out of an archive, chunk by chunk; a chunk whose
/// bytes do not hash to its name is an error, never data.
pub struct BlobReader<'a> {
    archive: &'a Archive,
    blob: &'a BodyBlob,
    next: usize,
    chunk: Vec<u8>,
    pos: usize,
}

impl BlobReader<'_> {
    fn load_next(&mut self) -> Result<bool> {
        let Some(&index) = self.blob.chunks.get(self.next) else {
            return Ok(false);
        };
        self.next += 1;
        let c = self.archive.body.chunks[index as usize];
        let loc = ChunkLocation {
            hash: c.hash,
            pack: self.archive.pack.clone(),
            offset: c.offset,
            block_len: c.block_len,
            inner: c.inner,
            len: c.len,
        };
        let chunk = &mut self.chunk;
        self.archive
            .blocks
            .chunk_with(&loc, |bytes| {
                chunk.clear();
                chunk.extend_from_slice(bytes);
            })
            .map_err(|e| NpkError::Damaged(e.to_string()))?;
        self.pos = 0;
        Ok(true)
    }
}

impl Read for BlobReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.load_next() {
                Ok(true) => {}
                Ok(false) => return Ok(0),
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
