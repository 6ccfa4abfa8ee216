//! `nip publish`: a generation of the store to a remote, so that other
//! hosts can pull it and read its files lazily.
//!
//! Order of writes (FORMAT.md, "Remotes"): new packs, then the metadata
//! object, then the manifest under `manifests/COUNTER` (write-once), and
//! last the `manifest` every subscriber reads, replaced only if it is
//! still the one this publish started from (S3 `If-Match`; `If-None-Match`
//! for the first). Objects are immutable and named by content or counter,
//! so a publisher killed at any point leaves the previous manifest in
//! place with everything it names, and of two publishers racing one wins
//! and the other fails naming the conflict. A `file://` remote has no
//! conditional replace: publishers of one directory take turns on an
//! exclusive lock of `DIR/.nexus-publish.lock` (a lease the kernel ends
//! with the process), and the manifest is renamed into place; the
//! directory must be one nobody else can change ([`crate::file_remote`]).
//!
//! Packs on the remote are not the store's packs: they hold exactly the
//! chunks of published generations. A chunk an earlier publish put there
//! (found through the remote's current metadata) is reused; the others are
//! copied in the store's block order, a block whose chunks are all
//! published going verbatim (after its chunks were verified) and the rest
//! re-encoded, so no byte of a package that is not published leaves the
//! store, and publishing the next version uploads only what changed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use nexus_npk::body::{Body, BodyBlob, BodyChunk, BodyPackage, root_hash};
use nexus_npk::read::unix_now;
use nexus_npk::{CounterRequest, KeyStore, Scope, SecretKey, TrustSet, TrustedKey};
use nexus_store::pack::{
    BlockBuilder, BlockEncoder, ChunkKind, ChunkLocation, PACK_MAGIC, PACK_SUFFIX, decode_block,
};
use nexus_store::params::{BLOCK_TARGET, FROZEN, PACK_TARGET_SIZE};
use nexus_store::read::Reader;
use nexus_store::{Hash, Progress, Store, StoreError};

use crate::client::{Client, Timeouts, WriteMode, Written};
use crate::error::{RemoteError, Result};
use crate::location::{Endpoint, Location};
use crate::manifest::RemoteManifest;
use crate::meta::Meta;
use crate::pull::{accept, fetch_meta, read_manifest};
use crate::{MANIFEST_KEY, history_key, meta_key};

/// Uploads in flight at once.
const UPLOADERS: usize = 3;
/// Counters tried past one whose history slot is taken.
const HISTORY_TRIES: u32 = 8;

/// How to publish.
pub struct PublishOptions<'a> {
    /// The generation to publish (`None`: the live one).
    pub generation: Option<i64>,
    /// The key store (its counter file for `key_name`).
    pub keys: &'a KeyStore,
    /// The signing key's name.
    pub key_name: &'a str,
    /// The store's trusted keys: of them, those trusted for images of
    /// `domain` vouch for a manifest already on the remote.
    pub trust: &'a TrustSet,
    /// The remote's trust domain.
    pub domain: &'a str,
    /// How long subscribers accept the manifest (`None`: forever).
    pub expires_in: Option<Duration>,
    /// Reuse nothing already on the remote.
    pub fresh: bool,
}

/// What a publish did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Published {
    /// The remote.
    pub remote: String,
    /// The generation published.
    pub generation: i64,
    /// The manifest's counter.
    pub counter: u64,
    /// Packages published.
    pub packages: usize,
    /// Chunks of the generation.
    pub chunks: u64,
    /// Of which already on the remote.
    pub chunks_reused: u64,
    /// New packs uploaded.
    pub packs_uploaded: u64,
    /// Their bytes.
    pub bytes_uploaded: u64,
    /// Bytes of the metadata object.
    pub meta_bytes: u64,
    /// The generation's root hash.
    pub root: String,
    /// Expiry of the manifest (seconds since the epoch).
    pub expires: Option<i64>,
}

/// A chunk's place on the remote: pack index in the metadata, block.
#[derive(Clone, Copy)]
struct Placed {
    pack: u32,
    offset: u64,
    block_len: u32,
    inner: u32,
    len: u32,
}

/// Publishes a generation of `store` (read through `reader`, which may
/// itself read from remotes) to `endpoint`.
pub fn publish(
    store: &Store,
    reader: &Reader,
    endpoint: &Endpoint,
    key: &SecretKey,
    options: &PublishOptions<'_>,
    progress: &dyn Progress,
) -> Result<Published> {
    if !endpoint.location.writable() {
        return Err(RemoteError::ReadOnly(endpoint.name.clone()));
    }
    let _lease = match &endpoint.location {
        Location::File { dir } => {
            let dir = crate::file_remote::ready(dir)?;
            Some(crate::file_remote::lease(
                &dir,
                crate::file_remote::LEASE_WAIT,
            )?)
        }
        _ => None,
    };
    // Publishing waits for large uploads; the read deadline still bounds
    // every read.
    let client = Client::open(endpoint, Timeouts::default())?;
    let remote = endpoint.name.clone();

    let catalog = store.catalog();
    let generation = match options.generation {
        Some(g) => g,
        None => catalog
            .current_generation()?
            .ok_or_else(|| RemoteError::Invalid("the store has no generation to publish".into()))?,
    };
    let members = catalog.members(generation)?;
    if members.is_empty() && catalog.generation(generation)?.is_none() {
        return Err(RemoteError::Store(StoreError::NotFound(format!(
            "no generation {generation}"
        ))));
    }
    progress.phase("reading the remote");
    // The manifest this publish replaces. Its counter is exceeded and its
    // chunks reused only if it is vouched for: anyone who can write the
    // bucket could otherwise choose the counter this key signs next (up
    // to exhausting it) and make the new manifest name objects that are
    // not there.
    let previous = read_manifest(&client)?;
    let vouched = match &previous {
        None => None,
        Some(p) => match accept(
            &remote,
            p,
            &vouchers(key, options),
            Some(options.domain),
            true,
        ) {
            Ok(()) => Some(p),
            Err(e) if options.fresh => {
                tracing::warn!(
                    "remote {remote}: {e}; the manifest there is replaced, and neither its counter nor its chunks are taken"
                );
                None
            }
            Err(e) => {
                return Err(RemoteError::Invalid(format!(
                    "{e}; publish with --fresh to replace it without reusing what it names"
                )));
            }
        },
    };
    let reusable: HashMap<Hash, (String, u64, ChunkLocation)> = match vouched {
        Some(p) if !options.fresh => {
            let meta = fetch_meta(&client, &p.manifest)?;
            let present: HashMap<String, u64> = client.list("packs")?.into_iter().collect();
            let sizes: HashMap<&str, u64> =
                meta.packs.iter().map(|(n, s)| (n.as_str(), *s)).collect();
            meta.locations()
                .into_iter()
                .filter(|l| present.get(&*l.pack) == sizes.get(&*l.pack))
                .map(|l| (l.hash, (l.pack.to_string(), sizes[&*l.pack], l)))
                .collect()
        }
        _ => HashMap::new(),
    };

    // The packages and every distinct content, in the order files use them.
    progress.phase("reading the generation");
    let mut packages = Vec::with_capacity(members.len());
    let mut files: Vec<(Hash, i64)> = Vec::new();
    for m in &members {
        let rebuilt = store.catalog().package_tree(&m.package)?;
        let (tree, blobs) = (rebuilt.tree, rebuilt.contents);
        let tree_hash = tree.tree_hash();
        if tree_hash != m.package.tree_hash {
            return Err(RemoteError::Invalid(format!(
                "{}: its stored tree no longer matches its tree hash (verify the store)",
                m.package.spec()
            )));
        }
        files.extend(blobs);
        packages.push(BodyPackage {
            name: m.package.name.clone(),
            version: m.package.version.clone(),
            origin: m.package.origin.clone(),
            metadata: m.package.metadata.clone(),
            current: m.current,
            // As this store ranks it: subscribers must not rank a
            // restricted package as unrestricted.
            restricted_to: m.package.restricted_to.clone(),
            tree_hash,
            tree,
        });
    }
    let mut contents: Vec<(Hash, Vec<ChunkLocation>)> = Vec::new();
    let mut seen = HashSet::new();
    for (hash, blob) in files {
        if seen.insert(hash) {
            contents.push((hash, reader.query(|c| c.blob_chunks(blob))?));
        }
    }

    // Where every chunk goes: reused, or into new packs.
    let mut pack_names: Vec<(String, u64)> = Vec::new();
    let mut pack_index: HashMap<String, u32> = HashMap::new();
    let mut placed: HashMap<Hash, Placed> = HashMap::new();
    let mut wanted: HashSet<Hash> = HashSet::new();
    let mut by_block: BTreeMap<(Arc<str>, u64), Vec<ChunkLocation>> = BTreeMap::new();
    // Chunks of large contents, framed for random reads when re-encoded,
    // as the store frames them.
    let mut parts: HashSet<Hash> = HashSet::new();
    let mut reused = 0u64;
    for (_, chunks) in &contents {
        let size = chunks.iter().map(|l| u64::from(l.len)).sum::<u64>();
        if FROZEN.chunk_kind(size) == ChunkKind::Part {
            parts.extend(chunks.iter().map(|l| l.hash));
        }
        for loc in chunks {
            if !wanted.insert(loc.hash) {
                continue;
            }
            if let Some((name, size, at)) = reusable.get(&loc.hash) {
                let index = *pack_index.entry(name.clone()).or_insert_with(|| {
                    pack_names.push((name.clone(), *size));
                    (pack_names.len() - 1) as u32
                });
                placed.insert(
                    loc.hash,
                    Placed {
                        pack: index,
                        offset: at.offset,
                        block_len: at.block_len,
                        inner: at.inner,
                        len: at.len,
                    },
                );
                reused += 1;
            } else {
                by_block
                    .entry((loc.pack.clone(), loc.offset))
                    .or_default()
                    .push(loc.clone());
            }
        }
    }

    progress.phase("uploading packs");
    progress.start(
        by_block.values().flatten().map(|l| u64::from(l.len)).sum(),
        by_block.len() as u64,
    );
    let uploaded = Uploads::default();
    let (tx, rx) = std::sync::mpsc::sync_channel::<(String, Bytes)>(1);
    let rx = std::sync::Mutex::new(rx);
    // The first failed upload; the others then only drain the channel
    // (the builder must never wait on a queue nobody reads) and the
    // builder stops at its next pack.
    let failure: std::sync::Mutex<Option<RemoteError>> = std::sync::Mutex::new(None);
    let built = std::thread::scope(|scope| {
        for _ in 0..UPLOADERS {
            scope.spawn(|| {
                loop {
                    let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    let Ok((name, bytes)) = next else {
                        return;
                    };
                    if uploaded.failed.load(Ordering::Acquire) {
                        continue;
                    }
                    let len = bytes.len() as u64;
                    let put = client
                        .put(&format!("packs/{name}"), bytes, WriteMode::Create)
                        .and_then(|written| match written {
                            // Named by its content: one there already is this one.
                            Written::Written | Written::Exists => Ok(()),
                            Written::Changed => unreachable_write(&remote, &name),
                        });
                    match put {
                        Ok(()) => {
                            uploaded.packs.fetch_add(1, Ordering::Relaxed);
                            uploaded.bytes.fetch_add(len, Ordering::Relaxed);
                        }
                        Err(e) => {
                            uploaded.failed.store(true, Ordering::Release);
                            failure
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .get_or_insert(e);
                        }
                    }
                }
            });
        }
        let built = build_packs(
            reader,
            &by_block,
            &wanted,
            &parts,
            progress,
            &tx,
            &uploaded.failed,
        );
        drop(tx);
        built
    });
    if let Some(e) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    let new_packs = built?;
    for pack in new_packs {
        let index = pack_names.len() as u32;
        pack_names.push((pack.name.clone(), pack.size));
        for (hash, mut at) in pack.chunks {
            at.pack = index;
            placed.insert(hash, at);
        }
    }

    // The metadata: every chunk once, in first-use order.
    let mut chunks = Vec::with_capacity(placed.len());
    let mut chunk_packs = Vec::with_capacity(placed.len());
    let mut index_of: HashMap<Hash, u32> = HashMap::new();
    let mut blobs = Vec::with_capacity(contents.len());
    for (hash, locs) in &contents {
        let mut indexes = Vec::with_capacity(locs.len());
        for loc in locs {
            let i = match index_of.get(&loc.hash) {
                Some(&i) => i,
                None => {
                    let at = placed.get(&loc.hash).ok_or_else(|| {
                        RemoteError::Invalid(format!("chunk {} was not placed", loc.hash))
                    })?;
                    chunks.push(BodyChunk {
                        hash: loc.hash,
                        len: at.len,
                        offset: at.offset,
                        block_len: at.block_len,
                        inner: at.inner,
                    });
                    chunk_packs.push(at.pack);
                    let i = (chunks.len() - 1) as u32;
                    index_of.insert(loc.hash, i);
                    i
                }
            };
            indexes.push(i);
        }
        blobs.push(BodyBlob {
            hash: *hash,
            size: locs.iter().map(|l| u64::from(l.len)).sum(),
            chunks: indexes,
        });
    }
    let meta = Meta {
        packs: pack_names,
        chunk_packs,
        body: Body {
            packages,
            blobs,
            chunks,
        },
    };
    let root = root_hash(&meta.body.packages);
    let meta_bytes = meta.encode().map_err(|e| RemoteError::io("metadata", e))?;
    let meta_hash = Hash::of(&meta_bytes);
    progress.phase("writing the manifest");
    match client.put(
        &meta_key(&meta_hash),
        Bytes::from(meta_bytes.clone()),
        WriteMode::Create,
    )? {
        Written::Written | Written::Exists => {}
        Written::Changed => unreachable_write(&remote, "metadata")?,
    }

    // The counter: above the remote's and above any this key signed.
    let previous_counter = vouched.map_or(0, |p| p.manifest.counter);
    let exhausted = || RemoteError::Invalid("the counter of the signing key is exhausted".into());
    let mut counter = options
        .keys
        .take_counter(options.key_name, CounterRequest::Next)?;
    if counter <= previous_counter {
        counter = options.keys.take_counter(
            options.key_name,
            CounterRequest::Exactly {
                counter: previous_counter.checked_add(1).ok_or_else(exhausted)?,
                force: false,
            },
        )?;
    }
    let created = unix_now();
    let expires = options
        .expires_in
        .map(|d| created.saturating_add(i64::try_from(d.as_secs()).unwrap_or(i64::MAX)));
    let conflict = |what: &str| RemoteError::Conflict {
        remote: remote.clone(),
        what: what.to_string(),
    };
    // Write-once: of two publishers that took the same counter, one wins;
    // the other (or one after a publisher killed between this write and
    // the manifest's) takes the next counter. The manifest's replace
    // below decides between live publishers.
    let mut tries = 0;
    let object = loop {
        let (_, object) = RemoteManifest {
            signer: [0; 32],
            counter,
            created,
            expires,
            root,
            meta: meta_hash,
            meta_len: meta_bytes.len() as u64,
            generation,
        }
        .sign(key);
        let object = Bytes::from(object);
        match client.put(&history_key(counter), object.clone(), WriteMode::Create)? {
            Written::Written => break object,
            _ if tries < HISTORY_TRIES => {
                tries += 1;
                counter = options.keys.take_counter(
                    options.key_name,
                    CounterRequest::Exactly {
                        counter: counter.checked_add(1).ok_or_else(exhausted)?,
                        force: true,
                    },
                )?;
            }
            _ => return Err(conflict(&history_key(counter))),
        }
    };
    let mode = match (&endpoint.location, &previous) {
        // Under the lease, renamed into place.
        (Location::File { .. }, _) => WriteMode::Overwrite,
        (_, None) => WriteMode::Create,
        (_, Some(p)) => WriteMode::Replace(p.e_tag.clone().ok_or_else(|| {
            RemoteError::Invalid(format!(
                "remote {remote} gives no ETag for its manifest: publishers could not be kept from overwriting each other"
            ))
        })?),
    };
    if client.put(MANIFEST_KEY, object, mode)? != Written::Written {
        return Err(conflict(MANIFEST_KEY));
    }
    Ok(Published {
        remote,
        generation,
        counter,
        packages: meta.body.packages.len(),
        chunks: meta.body.chunks.len() as u64,
        chunks_reused: reused,
        packs_uploaded: uploaded.packs.load(Ordering::Relaxed),
        bytes_uploaded: uploaded.bytes.load(Ordering::Relaxed),
        meta_bytes: meta_bytes.len() as u64,
        root: root.to_hex(),
        expires,
    })
}

/// The keys that vouch for a manifest already on the remote: the key
/// publishing now, and the keys this store trusts for images of the
/// remote's trust domain (a key trusted for another domain, or for
/// packages only, vouches for nothing here). Revoked keys stay revoked.
fn vouchers(key: &SecretKey, options: &PublishOptions<'_>) -> TrustSet {
    let scope = Scope::Images {
        domain: options.domain.to_string(),
    };
    let own = TrustedKey {
        key: key.public(),
        scope: scope.clone(),
        legacy: false,
    };
    let domain_keys = options
        .trust
        .domain_keys(options.domain)
        .map(|k| TrustedKey {
            key: k.clone(),
            scope: scope.clone(),
            legacy: false,
        });
    TrustSet {
        trusted: std::iter::once(own).chain(domain_keys).collect(),
        revoked: options.trust.revoked.clone(),
    }
}

fn unreachable_write(remote: &str, what: &str) -> Result<()> {
    Err(RemoteError::Invalid(format!(
        "remote {remote} refused a write of {what} that no condition guarded"
    )))
}

#[derive(Default)]
struct Uploads {
    packs: AtomicU64,
    bytes: AtomicU64,
    /// An upload failed: the builder stops.
    failed: std::sync::atomic::AtomicBool,
}

/// A pack built for the remote, with where its chunks are.
struct NewPack {
    name: String,
    size: u64,
    chunks: Vec<(Hash, Placed)>,
}

/// A pack being filled.
struct OpenPack {
    bytes: Vec<u8>,
    chunks: Vec<(Hash, Placed)>,
    builder: BlockBuilder,
    encoder: BlockEncoder,
    /// Chunks in `builder`: (hash, inner offset, length).
    pending: Vec<(Hash, u32, u32)>,
}

impl OpenPack {
    fn new() -> Result<OpenPack> {
        Ok(OpenPack {
            bytes: PACK_MAGIC.to_vec(),
            chunks: Vec::new(),
            builder: BlockBuilder::default(),
            encoder: BlockEncoder::store_default()?,
            pending: Vec::new(),
        })
    }

    fn verbatim(&mut self, raw: &[u8], chunks: &[(Hash, u32, u32)]) {
        let offset = self.bytes.len() as u64;
        self.bytes.extend_from_slice(raw);
        for &(hash, inner, len) in chunks {
            self.chunks.push((
                hash,
                Placed {
                    pack: 0,
                    offset,
                    block_len: raw.len() as u32,
                    inner,
                    len,
                },
            ));
        }
    }

    fn push(&mut self, hash: Hash, bytes: &[u8], kind: ChunkKind) {
        self.pending
            .push((hash, self.builder.raw_len() as u32, bytes.len() as u32));
        self.builder.push_kind(hash, bytes, kind);
        if self.builder.raw_len() >= BLOCK_TARGET {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.builder.is_empty() {
            return;
        }
        let block = self.builder.finish(&mut self.encoder);
        let mut raw = block.head();
        raw.extend_from_slice(&block.payload);
        let pending = std::mem::take(&mut self.pending);
        self.verbatim(&raw, &pending);
    }

    /// Seals the pack: named by its content.
    fn seal(mut self) -> (NewPack, Bytes) {
        self.flush();
        let name = format!("{}{PACK_SUFFIX}", &Hash::of(&self.bytes).to_hex()[..32]);
        let size = self.bytes.len() as u64;
        (
            NewPack {
                name,
                size,
                chunks: self.chunks,
            },
            Bytes::from(self.bytes),
        )
    }
}

/// Blocks read and verified ahead of the one the pack builder waits for.
const PREPARE_AHEAD: usize = 8;

/// What one stored block brings to the new packs, worked out on any
/// thread: read, decoded, and every published chunk in it verified.
enum Prepared {
    /// Every chunk of the block is published: its stored bytes as they
    /// are, with (hash, inner offset, length) of the chunks wanted.
    Verbatim(Vec<u8>, Vec<(Hash, u32, u32)>),
    /// Only some are: their bytes, to encode into new blocks.
    Chunks(Vec<(Hash, Vec<u8>, ChunkKind)>),
}

fn prepare(
    reader: &Reader,
    chunks: &[ChunkLocation],
    wanted: &HashSet<Hash>,
    parts: &HashSet<Hash>,
) -> Result<Prepared> {
    let first = &chunks[0];
    let raw = reader.blocks().stored_block(first)?;
    let block = decode_block(&raw).map_err(|reason| StoreError::Damaged {
        chunk: first.hash,
        reason: format!("pack {} block at {}: {reason}", first.pack, first.offset),
    })?;
    // Verbatim only when every chunk of the block is published: no byte
    // of anything else leaves the store.
    if block.entries.iter().all(|e| wanted.contains(&e.hash)) {
        for loc in chunks {
            block.chunk(loc)?;
        }
        let list = chunks.iter().map(|l| (l.hash, l.inner, l.len)).collect();
        return Ok(Prepared::Verbatim(raw, list));
    }
    let mut out = Vec::with_capacity(chunks.len());
    for loc in chunks {
        let kind = if parts.contains(&loc.hash) {
            ChunkKind::Part
        } else {
            ChunkKind::Whole
        };
        out.push((loc.hash, block.chunk(loc)?.to_vec(), kind));
    }
    Ok(Prepared::Chunks(out))
}

/// Copies the chunks of `by_block` into new packs, sending each sealed
/// pack to `uploads`; re-encoded chunks in `parts` are framed as pieces of
/// large files.
///
/// Reading, decoding and verifying blocks is most of the work: it runs on
/// every core, at most [`PREPARE_AHEAD`] blocks ahead, while this thread
/// lays the prepared blocks into packs in `by_block`'s order, so the packs
/// are the same whatever the threads' timing.
fn build_packs(
    reader: &Reader,
    by_block: &BTreeMap<(Arc<str>, u64), Vec<ChunkLocation>>,
    wanted: &HashSet<Hash>,
    parts: &HashSet<Hash>,
    progress: &dyn Progress,
    uploads: &std::sync::mpsc::SyncSender<(String, Bytes)>,
    failed: &std::sync::atomic::AtomicBool,
) -> Result<Vec<NewPack>> {
    let blocks: Vec<&[ChunkLocation]> = by_block.values().map(Vec::as_slice).collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // A worker takes a ticket before a block and this thread gives one back
    // for each block it lays: never more than PREPARE_AHEAD blocks wait.
    let (ticket_back, tickets) = std::sync::mpsc::sync_channel::<()>(PREPARE_AHEAD);
    for _ in 0..PREPARE_AHEAD {
        let _ = ticket_back.send(());
    }
    let tickets = std::sync::Mutex::new(tickets);
    let (prepared_tx, prepared) = std::sync::mpsc::sync_channel(PREPARE_AHEAD);
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let prepared_tx = prepared_tx.clone();
            let (tickets, next, blocks) = (&tickets, &next, &blocks);
            scope.spawn(move || {
                loop {
                    let ticket = tickets.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let (Ok(()), Some(chunks)) = (ticket, blocks.get(index)) else {
                        return;
                    };
                    let outcome = prepare(reader, chunks, wanted, parts);
                    if prepared_tx.send((index, outcome)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(prepared_tx);
        // Dropping `ticket_back` on the way out (an error) stops the
        // workers after the blocks they hold tickets for.
        lay_out(&blocks, &prepared, ticket_back, progress, uploads, failed)
    })
}

/// Lays the prepared blocks into packs in order (see [`build_packs`]).
fn lay_out(
    blocks: &[&[ChunkLocation]],
    prepared: &std::sync::mpsc::Receiver<(usize, Result<Prepared>)>,
    ticket_back: std::sync::mpsc::SyncSender<()>,
    progress: &dyn Progress,
    uploads: &std::sync::mpsc::SyncSender<(String, Bytes)>,
    failed: &std::sync::atomic::AtomicBool,
) -> Result<Vec<NewPack>> {
    let mut done = Vec::new();
    let mut open = OpenPack::new()?;
    let send = |pack: OpenPack, done: &mut Vec<NewPack>| -> Result<()> {
        if failed.load(Ordering::Acquire) {
            return Err(RemoteError::Invalid("an upload failed".into()));
        }
        let (new, bytes) = pack.seal();
        uploads
            .send((new.name.clone(), bytes))
            .map_err(|_| RemoteError::Invalid("the uploads stopped".into()))?;
        done.push(new);
        Ok(())
    };
    let mut waiting: BTreeMap<usize, Result<Prepared>> = BTreeMap::new();
    for (index, chunks) in blocks.iter().enumerate() {
        let block = loop {
            if let Some(block) = waiting.remove(&index) {
                break block?;
            }
            let (at, outcome) = prepared
                .recv()
                .map_err(|_| RemoteError::Invalid("the block readers stopped".into()))?;
            waiting.insert(at, outcome);
        };
        // Never blocks: only a ticket taken for a block comes back. It
        // fails only once the workers are gone, when none is needed.
        let _ = ticket_back.send(());
        progress.advance(chunks.iter().map(|l| u64::from(l.len)).sum());
        match block {
            Prepared::Verbatim(raw, list) => {
                open.flush();
                open.verbatim(&raw, &list);
            }
            Prepared::Chunks(chunks) => {
                for (hash, bytes, kind) in chunks {
                    open.push(hash, &bytes, kind);
                }
            }
        }
        if open.bytes.len() as u64 + open.builder.raw_len() as u64 >= PACK_TARGET_SIZE {
            let full = std::mem::replace(&mut open, OpenPack::new()?);
            send(full, &mut done)?;
        }
    }
    if !open.chunks.is_empty() || !open.builder.is_empty() {
        send(open, &mut done)?;
    }
    Ok(done)
}
