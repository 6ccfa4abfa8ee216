//! `nip pull`: the newest manifest of a remote, checked (signature by a key
//! trusted for the remote's trust domain, not revoked, not expired, counter
//! above what the store accepted), then its metadata (checked against the
//! manifest's hash and validated as an image's body), committed as a new
//! generation whose packs live on the remote. No file content is
//! downloaded: it is read when used (`crate::source`).
//!
//! Anything refused leaves the store as it was: the checks come before the
//! one commit, and the counter is checked again inside it.

use nexus_npk::body::root_hash;
use nexus_npk::read::unix_now;
use nexus_npk::{Claim, ReplayError, TrustSet};
use nexus_store::catalog::RemoteRow;
use nexus_store::commit::{ExactSet, Membership, Restrictions, StagedPackage};
use nexus_store::ingest::ContentBatch;
use nexus_store::pack::SealedPack;
use nexus_store::{Hash, Store, StoreError};

use crate::client::{Client, Timeouts};
use crate::error::{RemoteError, Result};
use crate::manifest::{self, RemoteManifest};
use crate::meta::{META_MAX, Meta};
use crate::settings::RemoteSettings;
use crate::source::RemotePacks;
use crate::{MANIFEST_KEY, endpoint_of, meta_key};

/// How to pull.
#[derive(Clone, Copy, Debug, Default)]
pub struct PullOptions {
    /// Accept an expired manifest (with a warning).
    pub allow_expired: bool,
}

/// What a pull did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Pulled {
    /// The remote.
    pub remote: String,
    /// The manifest's counter.
    pub counter: u64,
    /// The new generation; `None` when it holds what the live one does.
    pub generation: Option<i64>,
    /// `NAME/VERSION` of the packages newly stored.
    pub added: Vec<String>,
    /// Packages of the generation.
    pub packages: usize,
    /// Bytes of metadata fetched (manifest and metadata object).
    pub fetched_bytes: u64,
    /// When the manifest was published and until when it is accepted
    /// (seconds since the epoch; `None`: never expires).
    pub created: i64,
    /// The manifest's expiry.
    pub expires: Option<i64>,
    /// The generation's root hash.
    pub root: String,
}

/// A manifest as fetched: well formed, not yet trusted.
pub(crate) struct Fetched {
    pub manifest: RemoteManifest,
    pub signature: [u8; 64],
    pub e_tag: Option<String>,
    pub bytes: u64,
}

/// Fetches the newest manifest of `client`'s remote and decodes it;
/// `None` when nothing is published.
pub(crate) fn read_manifest(client: &Client) -> Result<Option<Fetched>> {
    let remote = client.name().to_string();
    let Some(fetched) = client.get(MANIFEST_KEY, manifest::LEN as u64)? else {
        return Ok(None);
    };
    if fetched.bytes.len() != manifest::LEN {
        return Err(RemoteError::Malformed {
            remote,
            what: MANIFEST_KEY.into(),
            why: format!(
                "{} bytes, a manifest is {} (a truncated or wrong object)",
                fetched.bytes.len(),
                manifest::LEN
            ),
        });
    }
    let (manifest, signature) =
        RemoteManifest::decode(&fetched.bytes).map_err(|source| RemoteError::Format {
            remote: remote.clone(),
            what: MANIFEST_KEY.into(),
            source,
        })?;
    Ok(Some(Fetched {
        manifest,
        signature,
        e_tag: fetched.e_tag,
        bytes: fetched.bytes.len() as u64,
    }))
}

/// Checks a fetched manifest: signed by a key of `trust` trusted for
/// images (of trust domain `domain`, when given), not revoked, not
/// expired unless `allow_expired`.
pub(crate) fn accept(
    remote: &str,
    fetched: &Fetched,
    trust: &TrustSet,
    domain: Option<&str>,
    allow_expired: bool,
) -> Result<()> {
    let remote = remote.to_string();
    let (manifest, signature) = (&fetched.manifest, &fetched.signature);
    let grant = manifest
        .check_signature(signature, trust)
        .map_err(|source| RemoteError::Untrusted {
            remote: remote.clone(),
            source,
        })?;
    if let Some(expected) = domain {
        let found = grant.domain().unwrap_or_default();
        if found != expected {
            return Err(RemoteError::WrongDomain {
                remote,
                id: grant.key.id(),
                name: grant.key.name.clone(),
                found: found.to_string(),
                expected: expected.to_string(),
            });
        }
    }
    if let Err(source) = manifest.check_expiry(unix_now()) {
        if !allow_expired {
            return Err(RemoteError::Untrusted { remote, source });
        }
        tracing::warn!("the manifest of remote {remote}: {source}; accepted anyway");
    }
    if manifest.expires.is_none() {
        tracing::warn!(
            "the manifest of remote {remote} never expires: nothing would reveal a mirror that keeps serving it"
        );
    }
    Ok(())
}

/// Fetches the metadata object a checked manifest names and validates it.
pub(crate) fn fetch_meta(client: &Client, manifest: &RemoteManifest) -> Result<Meta> {
    let remote = client.name().to_string();
    let key = meta_key(&manifest.meta);
    let malformed = |why: String| RemoteError::Malformed {
        remote: remote.clone(),
        what: key.clone(),
        why,
    };
    if manifest.meta_len > META_MAX {
        return Err(malformed(format!(
            "the manifest names {} bytes of metadata, more than {META_MAX}",
            manifest.meta_len
        )));
    }
    let fetched = client
        .get(&key, manifest.meta_len)?
        .ok_or_else(|| malformed("missing (the manifest names it)".into()))?;
    if fetched.bytes.len() as u64 != manifest.meta_len || Hash::of(&fetched.bytes) != manifest.meta
    {
        return Err(malformed(format!(
            "{} bytes that are not the {} bytes the manifest names (altered or truncated)",
            fetched.bytes.len(),
            manifest.meta_len
        )));
    }
    let meta = Meta::decode(&fetched.bytes).map_err(|source| RemoteError::Format {
        remote: remote.clone(),
        what: key.clone(),
        source,
    })?;
    if root_hash(&meta.body.packages) != manifest.root {
        return Err(malformed(
            "its packages are not those the manifest's root hash names".into(),
        ));
    }
    Ok(meta)
}

/// Pulls the newest manifest of `remote` into `store` as a new generation
/// of exactly its packages.
pub fn pull(
    store: &mut Store,
    remote: &RemoteRow,
    trust: &TrustSet,
    timeouts: Timeouts,
    options: PullOptions,
) -> Result<Pulled> {
    let client = Client::open(&endpoint_of(remote)?, timeouts)?;
    let accepted = read_manifest(&client)?
        .ok_or_else(|| RemoteError::NothingPublished(remote.name.clone()))?;
    accept(
        &remote.name,
        &accepted,
        trust,
        Some(&remote.domain),
        options.allow_expired,
    )?;
    let m = &accepted.manifest;
    let claim = Claim::new(&remote.domain, m.counter, m.root, trust);
    // Refused before the metadata is fetched; checked again in the commit.
    if let Err(source) = nexus_npk::replay::check(store, &claim, false)? {
        return Err(RemoteError::Replayed {
            remote: remote.name.clone(),
            source,
        });
    }
    let meta = fetch_meta(&client, m)?;
    let names: Vec<String> = meta.packs.iter().map(|(n, _)| n.clone()).collect();
    let clashing = store.catalog().local_packs_named(&names)?;
    if let Some(name) = clashing.first() {
        return Err(RemoteError::Malformed {
            remote: remote.name.clone(),
            what: meta_key(&m.meta),
            why: format!("it names a pack {name}, the name of one of this store's own packs"),
        });
    }
    let body = &meta.body;
    let files = body.file_contents();
    let written = meta.locations();
    // Chunk places of another domain are possible only where one holds
    // packs; a store whose remotes share one domain skips the search.
    let replaced = if store.catalog().other_domains_hold_packs(&remote.domain)? {
        displaced(store, remote, &chunks_of_new_packages(store, body)?)?
    } else {
        std::collections::HashSet::new()
    };
    let batch = ContentBatch {
        files,
        packs: meta
            .packs
            .iter()
            .map(|(name, size)| SealedPack {
                name: name.clone(),
                size: *size,
            })
            .collect(),
        written,
        reused: Default::default(),
        remote: Some(remote.id),
        replaced,
    };
    let staged: Vec<StagedPackage> = body
        .packages
        .iter()
        .map(|p| StagedPackage {
            name: p.name.clone(),
            version: p.version.clone(),
            origin: format!("remote:{}", remote.name),
            metadata: p.metadata.clone(),
            tree: p.tree.clone(),
            // The remote's domain keys vouch for whole generations,
            // restricted packages as the metadata states them included:
            // ranked here as in the store that published them.
            restricted_to: p.restricted_to.clone(),
        })
        .collect();
    let membership = Membership::Exactly(ExactSet {
        current: body.current_specs(),
        action: format!("pull {} (counter {})", remote.name, m.counter),
        // The domain's key decides the rank of every package it publishes.
        restrictions: Restrictions::AsStated,
    })
    .with_precondition(claim.precondition(false));
    let outcome = store
        .commit_batch(&staged, &batch, &membership)
        .map_err(|e| match e {
            StoreError::Refused(inner) => match inner.downcast::<ReplayError>() {
                Ok(source) => RemoteError::Replayed {
                    remote: remote.name.clone(),
                    source: *source,
                },
                Err(other) => RemoteError::Store(StoreError::Refused(other)),
            },
            other => RemoteError::Store(other),
        })?;
    Ok(Pulled {
        remote: remote.name.clone(),
        counter: m.counter,
        generation: outcome.generation,
        added: outcome.added,
        packages: body.packages.len(),
        fetched_bytes: accepted.bytes + m.meta_len,
        created: m.created,
        expires: m.expires,
        root: m.root.to_hex(),
    })
}

/// The chunks of the contents of `body`'s packages that the store does not
/// hold yet with the same tree: those the commit indexes (the rows of a
/// package held already stay as they are), so those whose places matter.
fn chunks_of_new_packages(store: &Store, body: &nexus_npk::body::Body) -> Result<Vec<Hash>> {
    let mut contents = std::collections::HashSet::new();
    for package in &body.packages {
        let held = store
            .catalog()
            .package(&package.name, &package.version)?
            .is_some_and(|row| row.tree_hash == package.tree_hash);
        if held {
            continue;
        }
        for inode in &package.tree.inodes {
            if let nexus_store::tree::InodeKind::File {
                content: Some(hash),
                ..
            } = &inode.kind
            {
                contents.insert(*hash);
            }
        }
    }
    let chunks: std::collections::HashSet<Hash> = body
        .blobs
        .iter()
        .filter(|blob| contents.contains(&blob.hash))
        .flat_map(|blob| blob.chunks.iter().map(|&i| body.chunks[i as usize].hash))
        .collect();
    Ok(chunks.into_iter().collect())
}

/// The chunks of `new` (of the packages this pull adds) that the store
/// places in a block of another trust domain's remote that does not hold
/// them now: they are placed where `remote`'s metadata says instead.
///
/// Chunk names are public (any subscriber reads them in a domain's
/// metadata), and a chunk known already keeps its place. So a key trusted
/// for one domain could name another domain's chunks in its own metadata,
/// at places that do not hold them, and once pulled first, make every read
/// of them fail. Each such block is checked (fetched and verified, then
/// cached as any fetched block). A block that verifies keeps its chunks: a
/// content two domains publish is fetched from one. One that does not, or
/// whose remote cannot be reached now, yields them to this pull: otherwise
/// a domain could keep its false places by going dark.
fn displaced(
    store: &Store,
    remote: &RemoteRow,
    new: &[Hash],
) -> Result<std::collections::HashSet<Hash>> {
    let foreign = store.catalog().foreign_placements(new, &remote.domain)?;
    let mut replaced = std::collections::HashSet::new();
    if foreign.is_empty() {
        return Ok(replaced);
    }
    let settings = RemoteSettings::load(store.catalog())?;
    let source = RemotePacks::open(store.dir(), &settings)?;
    for block in foreign {
        let why = match source.placement_holds(&block.pack, block.offset, block.block_len as usize)
        {
            Ok(true) => continue,
            Ok(false) => "does not hold them".to_string(),
            Err(e) => format!("could not be checked ({e})"),
        };
        tracing::warn!(
            "remote {}'s block at {} of pack {} {why}: {} of its chunks are read from remote {} now",
            block.remote,
            block.offset,
            block.pack,
            block.chunks.len(),
            remote.name
        );
        replaced.extend(block.chunks);
    }
    Ok(replaced)
}
