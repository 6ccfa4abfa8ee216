//! Publish from one store to a `file://` remote, pull into another, read
//! back through the remote pack source: the library path end to end (the
//! real S3 and HTTP servers are exercised by tests/remote.rs).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use nexus_npk::{KeyStore, Scope, TrustSet};
use nexus_remote::client::Timeouts;
use nexus_remote::publish::{PublishOptions, Published, publish};
use nexus_remote::pull::{PullOptions, Pulled, pull};
use nexus_remote::{RemoteError, endpoint_of, open_reader};
use nexus_store::catalog::{NewRemote, RemoteRow};
use nexus_store::read::ReaderOptions;
use nexus_store::{AddDir, AddOptions, NoProgress, Store};

fn text(seed: u32, len: usize) -> Vec<u8> {
    (0..len)
        .flat_map(|i| format!("{seed}:{i} ").into_bytes())
        .take(len)
        .collect()
}

fn add(store: &mut Store, root: &Path, name: &str, version: &str, files: &[(&str, Vec<u8>)]) {
    let dir = root.join(format!("src-{name}-{version}"));
    fs::create_dir_all(&dir).unwrap();
    for (f, bytes) in files {
        fs::write(dir.join(f), bytes).unwrap();
    }
    let d = AddDir {
        path: dir,
        name: name.into(),
        version: version.into(),
    };
    store
        .add_dirs(&[d], AddOptions::default(), &NoProgress)
        .unwrap();
}

fn read_all(dir: &Path, name: &str, version: &str, path: &str) -> (Vec<u8>, u64) {
    let (reader, source) = open_reader(dir, ReaderOptions::default()).unwrap();
    let store = Store::open(dir).unwrap();
    let package = store.catalog().package(name, version).unwrap().unwrap();
    let inode = store.resolve(&package, path.as_bytes()).unwrap();
    let mut out = Vec::new();
    reader.copy_content(inode.blob.unwrap(), &mut out).unwrap();
    (out, source.counters().bytes.load(Ordering::Relaxed))
}

/// The `file://` remote at `dir`, recorded in `store` as `name` (its trust
/// domain too).
fn dir_remote(store: &Store, name: &str, dir: &Path) -> RemoteRow {
    store
        .catalog()
        .add_remote(&NewRemote {
            name: name.into(),
            url: format!("file://{}", dir.display()),
            endpoint: None,
            region: None,
            domain: name.into(),
        })
        .unwrap()
}

/// Publishes `host`'s live generation to `remote`, signed by the key
/// `pub` of `keys`.
fn publish_to(
    host: &Store,
    remote: &RemoteRow,
    keys: &KeyStore,
    expires_in: Option<Duration>,
) -> Published {
    let (reader, _) = open_reader(host.dir(), ReaderOptions::default()).unwrap();
    let options = PublishOptions {
        generation: None,
        keys,
        key_name: "pub",
        trust: &keys.trust_set().unwrap(),
        domain: &remote.domain,
        expires_in,
        fresh: false,
    };
    let key = keys.secret("pub").unwrap();
    let endpoint = endpoint_of(remote).unwrap();
    publish(host, &reader, &endpoint, &key, &options, &NoProgress).unwrap()
}

/// What a subscriber keeping its keys in `dir` trusts: the key `pub` of
/// `keys`, for images of trust domain `domain`.
fn subscriber_trust(keys: &KeyStore, dir: &Path, domain: &str) -> TrustSet {
    let trusted = KeyStore::new(dir);
    let scope = Scope::Images {
        domain: domain.into(),
    };
    trusted
        .trust(&keys.public_file("pub").unwrap(), scope)
        .unwrap();
    trusted.trust_set().unwrap()
}

/// Pulls the newest manifest of `remote` into `store`; the error as text.
fn try_pull(store: &mut Store, remote: &RemoteRow, trust: &TrustSet) -> Result<Pulled, String> {
    pull(
        store,
        remote,
        trust,
        Timeouts::default(),
        PullOptions::default(),
    )
    .map_err(|e| e.to_string())
}

/// [`try_pull`], which must be accepted.
fn pull_from(store: &mut Store, remote: &RemoteRow, trust: &TrustSet) -> Pulled {
    try_pull(store, remote, trust).unwrap_or_else(|e| panic!("pull: {e}"))
}

#[test]
fn a_published_generation_pulls_and_reads_lazily_and_only_the_difference() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let remote_dir = tmp.path().join("remote");
    let keys = KeyStore::new(tmp.path().join("keys"));
    keys.generate("pub").unwrap();

    let mut host_a = Store::init(&a).unwrap();
    let big = text(1, 3 << 20);
    add(
        &mut host_a,
        tmp.path(),
        "tool",
        "1",
        &[("big", big.clone()), ("small", b"hi".to_vec())],
    );
    add(
        &mut host_a,
        tmp.path(),
        "other",
        "1",
        &[("data", text(2, 500_000))],
    );

    let mut host_b = Store::init(&b).unwrap();
    let row = dir_remote(&host_b, "origin", &remote_dir);
    let trust = subscriber_trust(&keys, &tmp.path().join("keys-b"), "origin");

    let expires_in = Some(Duration::from_secs(3600));
    let first = publish_to(&host_a, &row, &keys, expires_in);
    assert_eq!(first.packages, 2);
    assert!(first.packs_uploaded >= 1);

    let pulled = pull_from(&mut host_b, &row, &trust);
    assert_eq!(pulled.counter, first.counter);
    assert!(pulled.generation.is_some());
    // Nothing but metadata so far: no pack here, the cache empty.
    assert_eq!(fs::read_dir(b.join("packs")).unwrap().count(), 0);
    let (small, fetched) = read_all(&b, "tool", "1", "small");
    assert_eq!(small, b"hi");
    assert!(fetched < big.len() as u64 / 2, "{fetched}");
    let (read, _) = read_all(&b, "tool", "1", "big");
    assert_eq!(read, big);
    // Cached: read again without the remote.
    fs::rename(&remote_dir, tmp.path().join("gone")).unwrap();
    let (again, fetched) = read_all(&b, "tool", "1", "big");
    assert_eq!((again, fetched), (big.clone(), 0));
    fs::rename(tmp.path().join("gone"), &remote_dir).unwrap();

    // Replaying the same manifest: nothing new; an older one: refused.
    let old_manifest = fs::read(remote_dir.join("manifest")).unwrap();
    let mut big2 = big.clone();
    big2.extend_from_slice(b"version two");
    add(
        &mut host_a,
        tmp.path(),
        "tool",
        "2",
        &[("big", big2.clone())],
    );
    let second = publish_to(&host_a, &row, &keys, expires_in);
    assert!(second.counter > first.counter);
    assert!(second.chunks_reused > 0, "{second:?}");
    assert!(
        second.bytes_uploaded < big.len() as u64 / 2,
        "only the difference is uploaded: {second:?}"
    );
    pull_from(&mut host_b, &row, &trust);
    let (read2, fetched) = read_all(&b, "tool", "2", "big");
    assert_eq!(read2, big2);
    assert!(
        fetched < big.len() as u64 / 2,
        "the previous version's blocks are cached: {fetched}"
    );
    fs::write(remote_dir.join("manifest"), &old_manifest).unwrap();
    let replayed = pull(
        &mut host_b,
        &row,
        &trust,
        Timeouts::default(),
        PullOptions::default(),
    );
    assert!(
        matches!(replayed, Err(RemoteError::Replayed { .. })),
        "{replayed:?}"
    );
}

/// A host moves from its origin, gone, to a mirror of it (same trust
/// domain): what it pulled before is read from the mirror too, not only
/// the packages the mirror's newer generation adds.
#[test]
fn after_a_pull_from_a_mirror_every_pack_it_lists_is_read_from_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let (origin_dir, mirror_dir) = (tmp.path().join("origin"), tmp.path().join("mirror"));
    let keys = KeyStore::new(tmp.path().join("keys"));
    keys.generate("pub").unwrap();
    let mut host_a = Store::init(&a).unwrap();
    let big = text(5, 2 << 20);
    add(
        &mut host_a,
        tmp.path(),
        "tool",
        "1",
        &[("big", big.clone())],
    );
    let mut host_b = Store::init(&b).unwrap();
    let origin = dir_remote(&host_b, "origin", &origin_dir);
    let trust = subscriber_trust(&keys, &tmp.path().join("keys-b"), "origin");
    publish_to(&host_a, &origin, &keys, None);
    pull_from(&mut host_b, &origin, &trust);

    add(
        &mut host_a,
        tmp.path(),
        "other",
        "1",
        &[("data", text(6, 300_000))],
    );
    publish_to(&host_a, &origin, &keys, None);
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(&origin_dir)
        .arg(&mirror_dir)
        .status()
        .unwrap();
    assert!(copied.success());
    fs::rename(&origin_dir, tmp.path().join("origin-gone")).unwrap();
    let mirror = host_b
        .catalog()
        .add_remote(&NewRemote {
            name: "mirror".into(),
            url: format!("file://{}", mirror_dir.display()),
            endpoint: None,
            region: None,
            domain: "origin".into(),
        })
        .unwrap();
    pull_from(&mut host_b, &mirror, &trust);
    let (data, _) = read_all(&b, "other", "1", "data");
    assert_eq!(data, text(6, 300_000));
    let (read, fetched) = read_all(&b, "tool", "1", "big");
    assert_eq!(read, big, "a package pulled before reads from the mirror");
    assert!(fetched > 0);
}

/// The block cache files under `dir`.
fn cache_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

/// Any process reading the store writes the block cache, a confined
/// daemon a guest took over too. A cache file it forged, consistent with
/// its own header, is not the block the catalog places there: it is
/// fetched again, never served, and not left to fail every reader.
#[test]
fn a_forged_cache_file_is_fetched_again_not_left_to_fail_readers() {
    let tmp = tempfile::tempdir().unwrap();
    let len = 2 << 20;
    let (b, _) = pulled_noise(tmp.path(), len);
    let big = noise(7, len);
    let (read, _) = read_all(&b, "big", "1", "data");
    assert_eq!(read, big);
    let blocks = b.join("remote-cache").join("blocks");
    let files = cache_files(&blocks);
    assert!(!files.is_empty());
    let real: Vec<Vec<u8>> = files.iter().map(|f| fs::read(f).unwrap()).collect();
    for (file, bytes) in files.iter().zip(&real) {
        let junk = vec![0x5a; bytes.len() - 40];
        let mut forged = b"NXRBLK01".to_vec();
        forged.extend_from_slice(blake3::hash(&junk).as_bytes());
        forged.extend_from_slice(&junk);
        fs::write(file, forged).unwrap();
    }
    let (again, fetched) = read_all(&b, "big", "1", "data");
    assert_eq!(again, big);
    assert!(fetched > 0, "the forged blocks were fetched again");
    for (file, bytes) in files.iter().zip(&real) {
        assert_eq!(&fs::read(file).unwrap(), bytes, "{}", file.display());
    }
}

/// Random (incompressible, so stored as is) bytes.
fn noise(seed: u8, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut h = blake3::Hasher::new();
    h.update(&[seed]);
    let mut reader = h.finalize_xof();
    out.resize(len, 0);
    reader.fill(&mut out);
    out
}

#[test]
fn no_byte_of_an_unpublished_package_leaves_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let keys = KeyStore::new(tmp.path().join("keys"));
    keys.generate("pub").unwrap();
    let mut store = Store::init(&a).unwrap();
    // Both in one add: their chunks share blocks and a pack.
    let (public, secret) = (noise(1, 200_000), noise(2, 200_000));
    for (name, bytes) in [("public", &public), ("secret", &secret)] {
        let dir = tmp.path().join(name);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("f"), bytes).unwrap();
    }
    let dirs: Vec<AddDir> = ["public", "secret"]
        .iter()
        .map(|n| AddDir {
            path: tmp.path().join(n),
            name: n.to_string(),
            version: "1".into(),
        })
        .collect();
    store
        .add_dirs(&dirs, AddOptions::default(), &NoProgress)
        .unwrap();
    store.remove(&["secret".to_string()]).unwrap();
    let pack = fs::read_dir(a.join("packs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let local = fs::read(pack.path()).unwrap();
    let probe = &secret[100_000..100_064];
    assert!(local.windows(64).any(|w| w == probe), "stored as is");

    let remote_dir = tmp.path().join("remote");
    let row = dir_remote(&store, "out", &remote_dir);
    publish_to(&store, &row, &keys, None);
    let mut published = Vec::new();
    for entry in fs::read_dir(remote_dir.join("packs")).unwrap() {
        published.extend(fs::read(entry.unwrap().path()).unwrap());
    }
    assert!(
        published
            .windows(64)
            .any(|w| w == &public[100_000..100_064])
    );
    assert!(
        !published.windows(64).any(|w| w == probe),
        "bytes of the unpublished package were uploaded"
    );
}

/// The packs of `dir`'s `packs/`, by name.
fn packs_in(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir.join("packs"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn blocks_verified_on_every_core_still_make_the_same_packs() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = KeyStore::new(tmp.path().join("keys"));
    keys.generate("pub").unwrap();
    let mut store = Store::init(&tmp.path().join("a")).unwrap();
    // Far more blocks than are prepared at once, some copied as stored
    // and, where the removed package shares a block, some re-encoded.
    let mut dirs = Vec::new();
    for (name, files) in [("keep", 40u8), ("gone", 6)] {
        let dir = tmp.path().join(name);
        fs::create_dir_all(&dir).unwrap();
        for i in 0..files {
            let seed = if name == "keep" { i } else { 100 + i };
            fs::write(dir.join(format!("f{i:02}")), noise(seed, 300_000)).unwrap();
        }
        dirs.push(AddDir {
            path: dir,
            name: name.into(),
            version: "1".into(),
        });
    }
    store
        .add_dirs(&dirs, AddOptions::default(), &NoProgress)
        .unwrap();
    store.remove(&["gone".to_string()]).unwrap();

    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    publish_to(&store, &dir_remote(&store, "one", &one), &keys, None);
    publish_to(&store, &dir_remote(&store, "two", &two), &keys, None);
    let (first, second) = (packs_in(&one), packs_in(&two));
    assert!(!first.is_empty());
    assert_eq!(
        first.keys().collect::<Vec<_>>(),
        second.keys().collect::<Vec<_>>()
    );
    assert!(first == second, "the same generation made different packs");
    let published: usize = first.values().map(Vec::len).sum();
    assert!(published > 40 * 300_000, "every kept byte is published");
    let gone = noise(100, 300_000);
    assert!(
        !first
            .values()
            .any(|p| p.windows(64).any(|w| w == &gone[1000..1064])),
        "bytes of the removed package were published"
    );

    // And what was laid out in order reads back.
    let mut sub = Store::init(&tmp.path().join("b")).unwrap();
    let trust = subscriber_trust(&keys, &tmp.path().join("sub-keys"), "one");
    let row = dir_remote(&sub, "one", &one);
    pull_from(&mut sub, &row, &trust);
    let (bytes, _) = read_all(&tmp.path().join("b"), "keep", "1", "f17");
    assert_eq!(bytes, noise(17, 300_000));
}

#[test]
fn chunks_the_store_has_are_never_fetched_and_gc_forgets_remote_packs() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let keys = KeyStore::new(tmp.path().join("keys"));
    keys.generate("pub").unwrap();
    let shared = text(7, 2 << 20);
    let mut host_a = Store::init(&a).unwrap();
    add(
        &mut host_a,
        tmp.path(),
        "tool",
        "1",
        &[("big", shared.clone())],
    );
    // Host B has the same content locally already (another package).
    let mut host_b = Store::init(&b).unwrap();
    add(
        &mut host_b,
        &tmp.path().join("b-src"),
        "mine",
        "1",
        &[("copy", shared.clone())],
    );
    let remote_dir = tmp.path().join("remote");
    let row_a = dir_remote(&host_a, "dir", &remote_dir);
    publish_to(&host_a, &row_a, &keys, None);
    let row_b = dir_remote(&host_b, "dir", &remote_dir);
    let trust = subscriber_trust(&keys, &tmp.path().join("keys-b"), "dir");
    pull_from(&mut host_b, &row_b, &trust);
    let (read, fetched) = read_all(&b, "tool", "1", "big");
    assert_eq!(read, shared);
    assert_eq!(fetched, 0, "every chunk was local already");

    // A package only the remote has; then its generation is collected.
    add(
        &mut host_a,
        tmp.path(),
        "only",
        "1",
        &[("f", text(9, 1 << 20))],
    );
    publish_to(&host_a, &row_a, &keys, None);
    pull_from(&mut host_b, &row_b, &trust);
    assert!(!host_b.catalog().remote_packs().unwrap().is_empty());
    host_b
        .remove(&["only".to_string(), "tool".to_string()])
        .unwrap();
    let options = nexus_store::gc::GcOptions {
        keep_last: 1,
        grace: Duration::ZERO,
        ..Default::default()
    };
    nexus_store::gc::collect(&mut host_b, options).unwrap();
    nexus_store::gc::collect(&mut host_b, options).unwrap();
    assert!(host_b.catalog().remote_packs().unwrap().is_empty());
    assert!(host_b.catalog().remote_use(row_b.id).unwrap().packs == 0);
    host_b.catalog().remove_remote("dir").unwrap();
    let report = nexus_store::verify::verify(&mut host_b).unwrap();
    assert!(report.ok && report.remote_packs.is_empty(), "{report:?}");
}

/// A store `b` that pulled, from a `file://` remote, a package holding
/// one file of `len` random bytes; the remote's directory is returned.
fn pulled_noise(tmp: &Path, len: usize) -> (std::path::PathBuf, std::path::PathBuf) {
    let (a, b) = (tmp.join("a"), tmp.join("b"));
    let remote_dir = tmp.join("remote");
    let keys = KeyStore::new(tmp.join("keys"));
    keys.generate("pub").unwrap();
    let mut host_a = Store::init(&a).unwrap();
    add(&mut host_a, tmp, "big", "1", &[("data", noise(7, len))]);
    let out = dir_remote(&host_a, "origin", &remote_dir);
    publish_to(&host_a, &out, &keys, None);
    let mut host_b = Store::init(&b).unwrap();
    let row = dir_remote(&host_b, "origin", &remote_dir);
    let trust = subscriber_trust(&keys, &tmp.join("keys-b"), "origin");
    pull_from(&mut host_b, &row, &trust);
    (b, remote_dir)
}

/// Waits (bounded) until `done` holds.
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(30), "{what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_sequential_reader_gets_the_following_blocks_in_one_request_only_verified_ones_cached() {
    use nexus_remote::source::{AHEAD_BLOCKS, SEQUENTIAL_BLOCKS};
    use nexus_store::read::PackSource;

    let tmp = tempfile::tempdir().unwrap();
    // Random bytes are stored as is: about one block per MiB.
    let (b, remote_dir) = pulled_noise(tmp.path(), 8 << 20);
    let store = Store::open(&b).unwrap();
    let packs = store.catalog().remote_packs().unwrap();
    assert_eq!(packs.len(), 1, "{packs:?}");
    let pack = &packs[0].0;
    let blocks = store.catalog().blocks_from(pack, 0, 100).unwrap();
    let seq = SEQUENTIAL_BLOCKS as usize;
    assert!(blocks.len() > seq + AHEAD_BLOCKS, "{blocks:?}");
    for pair in blocks.windows(2) {
        assert_eq!(pair[0].0 + u64::from(pair[0].1), pair[1].0, "adjacent");
    }
    // The server alters one byte of the second block fetched ahead.
    let altered = blocks[SEQUENTIAL_BLOCKS as usize + 1];
    let object = remote_dir.join("packs").join(pack);
    let mut bytes = fs::read(&object).unwrap();
    bytes[(altered.0 + u64::from(altered.1) / 2) as usize] ^= 1;
    fs::write(&object, &bytes).unwrap();

    let (_reader, source) = open_reader(&b, ReaderOptions::default()).unwrap();
    source.start_read_ahead(1).unwrap();
    let counters = source.counters();
    // Fewer than SEQUENTIAL_BLOCKS blocks in a row are no sequential
    // reader: nothing is read ahead. One more is: the AHEAD_BLOCKS blocks
    // after it come in one more request; the altered one is refused, the
    // others verified and cached.
    let mut head = [0u8; 16];
    for &(offset, _) in &blocks[..seq - 1] {
        source.read_exact_at(pack, offset, &mut head).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(counters.ahead.load(Ordering::Relaxed), 0);
    assert_eq!(counters.fetches.load(Ordering::Relaxed), seq as u64 - 1);
    source
        .read_exact_at(pack, blocks[seq - 1].0, &mut head)
        .unwrap();
    wait_until("the read-ahead ends", || {
        counters.ahead.load(Ordering::Relaxed) + counters.refused.load(Ordering::Relaxed)
            >= AHEAD_BLOCKS as u64
    });
    assert_eq!(counters.fetches.load(Ordering::Relaxed), seq as u64 + 1);
    assert_eq!(counters.refused.load(Ordering::Relaxed), 1);
    assert_eq!(
        counters.ahead.load(Ordering::Relaxed),
        AHEAD_BLOCKS as u64 - 1
    );
    let cache = source.cache();
    for (i, &(offset, len)) in blocks.iter().enumerate() {
        let cached = cache.contains(pack, offset, len as usize);
        let expected = i < seq + AHEAD_BLOCKS && (offset, len) != altered;
        assert_eq!(cached, expected, "block {i} at {offset}");
    }
    // The altered block is fetched again when read, and refused again.
    let mut buf = [0u8; 16];
    let err = source.read_exact_at(pack, altered.0, &mut buf).unwrap_err();
    assert!(err.to_string().contains("wrong bytes"), "{err}");
    assert!(!cache.contains(pack, altered.0, altered.1 as usize));
}

#[test]
fn reading_the_last_block_fetched_ahead_fetches_the_next_run() {
    use nexus_remote::source::{AHEAD_BLOCKS, SEQUENTIAL_BLOCKS};
    use nexus_store::read::PackSource;

    let tmp = tempfile::tempdir().unwrap();
    let (b, _remote) = pulled_noise(tmp.path(), 14 << 20);
    let store = Store::open(&b).unwrap();
    let pack = store.catalog().remote_packs().unwrap()[0].0.clone();
    let blocks = store.catalog().blocks_from(&pack, 0, 100).unwrap();
    let seq = SEQUENTIAL_BLOCKS as usize;
    let last = seq + 2 * AHEAD_BLOCKS - 1;
    assert!(blocks.len() > last + 1, "{blocks:?}");
    let (_reader, source) = open_reader(&b, ReaderOptions::default()).unwrap();
    source.start_read_ahead(1).unwrap();
    let counters = source.counters();
    let mut buf = [0u8; 16];
    for &(offset, _) in &blocks[..seq] {
        source.read_exact_at(&pack, offset, &mut buf).unwrap();
    }
    let ahead = |n: u64| {
        wait_until("the read-ahead ends", || {
            counters.ahead.load(Ordering::Relaxed) >= n
        })
    };
    ahead(AHEAD_BLOCKS as u64);
    // Reading a block fetched ahead, not the last: nothing more.
    source
        .read_exact_at(&pack, blocks[seq].0, &mut buf)
        .unwrap();
    // The last: the next run.
    source
        .read_exact_at(&pack, blocks[seq + AHEAD_BLOCKS - 1].0, &mut buf)
        .unwrap();
    ahead(2 * AHEAD_BLOCKS as u64);
    assert_eq!(counters.fetches.load(Ordering::Relaxed), seq as u64 + 2);
    assert_eq!(
        counters.ahead.load(Ordering::Relaxed),
        2 * AHEAD_BLOCKS as u64
    );
    for &(offset, len) in &blocks[..=last] {
        assert!(source.cache().contains(&pack, offset, len as usize));
    }
    let (offset, len) = blocks[last + 1];
    assert!(!source.cache().contains(&pack, offset, len as usize));
}

#[test]
fn a_verified_block_stays_decoded_for_the_reader_and_a_refused_one_does_not() {
    use nexus_store::read::PackSource;

    let tmp = tempfile::tempdir().unwrap();
    let (b, remote_dir) = pulled_noise(tmp.path(), 3 << 20);
    let store = Store::open(&b).unwrap();
    let pack = store.catalog().remote_packs().unwrap()[0].0.clone();
    let blocks = store.catalog().blocks_from(&pack, 0, 100).unwrap();
    assert!(blocks.len() >= 2, "{blocks:?}");
    // The server alters the second block.
    let object = remote_dir.join("packs").join(&pack);
    let mut bytes = fs::read(&object).unwrap();
    let (bad, bad_len) = blocks[1];
    bytes[(bad + u64::from(bad_len) / 2) as usize] ^= 1;
    fs::write(&object, &bytes).unwrap();

    let (_reader, source) = open_reader(&b, ReaderOptions::default()).unwrap();
    let (good, good_len) = blocks[0];
    let mut out = Vec::new();
    assert!(
        !source.decoded(&pack, good, good_len, 0..16, &mut out),
        "nothing is decoded before it is fetched"
    );
    let mut head = [0u8; 16];
    source.read_exact_at(&pack, good, &mut head).unwrap();
    let stored = &bytes[good as usize..(good + u64::from(good_len)) as usize];
    let expected = nexus_store::pack::decode_block(stored).unwrap().data;
    assert!(source.decoded(&pack, good, good_len, 0..expected.len(), &mut out));
    assert_eq!(out, expected, "the block as the format decodes it");
    let mut past = Vec::new();
    assert!(!source.decoded(&pack, good, good_len, 8..expected.len() + 1, &mut past));
    assert!(
        past.is_empty(),
        "nothing appended for a range past the block"
    );

    let err = source.read_exact_at(&pack, bad, &mut head).unwrap_err();
    assert!(err.to_string().contains("wrong bytes"), "{err}");
    assert!(!source.decoded(&pack, bad, bad_len, 0..16, &mut past));
    assert!(past.is_empty());
}

/// A remote's metadata names each content by its hash and lists its
/// chunks, and a pull records both without reading a byte (contents are
/// fetched on first read, each chunk checked against its own name only).
/// A signer trusted for the packages of one remote's domain could list,
/// under the hash of a content it does not have (the bytes of a popular
/// file, say), chunks of its own: the store kept that row, and a package
/// later added from elsewhere, whose file has that content, read the
/// signer's bytes instead of its own (its setuid bits and all).
#[test]
fn a_remote_cannot_give_its_bytes_to_a_content_added_later_from_elsewhere() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let remote_dir = tmp.path().join("remote");
    let keys = KeyStore::new(tmp.path().join("keys"));
    keys.generate("pub").unwrap();

    // The bytes root will add later from a trusted source, and the
    // signer's own, of the same length.
    let good = text(7, 100_000);
    let mut evil = good.clone();
    evil[..4].copy_from_slice(b"EVIL");
    let good_hash = blake3::hash(&good);

    // The publisher's store lists its own bytes under the good hash (a
    // hostile publisher writes what it likes; here its catalog is forged
    // and the package's tree hash recomputed, so it publishes).
    let mut host_a = Store::init(&a).unwrap();
    add(&mut host_a, tmp.path(), "bait", "1", &[("f", evil.clone())]);
    drop(host_a);
    {
        let db = rusqlite::Connection::open(a.join(nexus_store::CATALOG_FILE)).unwrap();
        let n = db
            .execute(
                "UPDATE blobs SET hash = ?1 WHERE hash = ?2",
                rusqlite::params![
                    good_hash.as_bytes().to_vec(),
                    blake3::hash(&evil).as_bytes().to_vec()
                ],
            )
            .unwrap();
        assert_eq!(n, 1);
        let host_a = Store::open(&a).unwrap();
        let row = host_a.catalog().package("bait", "1").unwrap().unwrap();
        let tree = host_a.catalog().package_tree(&row).unwrap().tree;
        db.execute(
            "UPDATE packages SET tree_hash = ?1 WHERE id = ?2",
            rusqlite::params![tree.tree_hash().as_bytes().to_vec(), row.id],
        )
        .unwrap();
    }
    let host_a = Store::open(&a).unwrap();

    let mut host_b = Store::init(&b).unwrap();
    let row = dir_remote(&host_b, "origin", &remote_dir);
    let trust = subscriber_trust(&keys, &tmp.path().join("keys-b"), "origin");
    publish_to(&host_a, &row, &keys, Some(Duration::from_secs(3600)));
    pull_from(&mut host_b, &row, &trust);
    // Root then adds a package of its own from a directory it trusts.
    let dir = tmp.path().join("src-trusted");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("f"), &good).unwrap();
    let request = AddDir {
        path: dir,
        name: "trusted".into(),
        version: "1".into(),
    };
    match host_b.add_dirs(&[request], AddOptions::default(), &NoProgress) {
        // Refused: the store holds other chunks under that content's hash.
        Err(e) => {
            assert!(e.to_string().contains("recorded with other chunks"), "{e}");
            assert!(host_b.catalog().package("trusted", "1").unwrap().is_none());
        }
        Ok(_) => {
            let (read, _) = read_all(&b, "trusted", "1", "f");
            assert!(
                read == good,
                "a package added from a local directory reads the remote signer's bytes ({:?}...)",
                String::from_utf8_lossy(&read[..8])
            );
        }
    }
}

/// Rewrites the publish in `dir`, signed by `keys`' key `pub` with the
/// next counter: `forge` changes its metadata, seeing `victim`'s. What a
/// key trusted for one domain can sign.
fn forge_meta(
    dir: &Path,
    keys: &KeyStore,
    victim: &Path,
    forge: impl FnOnce(&mut nexus_remote::meta::Meta, &nexus_remote::meta::Meta),
) {
    use nexus_remote::manifest::RemoteManifest;
    use nexus_remote::meta::Meta;
    let meta_of = |dir: &Path| {
        let (manifest, _) =
            RemoteManifest::decode(&fs::read(dir.join("manifest")).unwrap()).unwrap();
        let path = dir.join(nexus_remote::meta_key(&manifest.meta));
        (manifest, Meta::decode(&fs::read(path).unwrap()).unwrap())
    };
    let (_, theirs) = meta_of(victim);
    let (manifest, mut ours) = meta_of(dir);
    forge(&mut ours, &theirs);
    let bytes = ours.encode().unwrap();
    let hash = nexus_store::Hash::of(&bytes);
    fs::write(dir.join(nexus_remote::meta_key(&hash)), &bytes).unwrap();
    let (_, signed) = RemoteManifest {
        counter: manifest.counter + 1,
        meta: hash,
        meta_len: bytes.len() as u64,
        ..manifest
    }
    .sign(&keys.secret("pub").unwrap());
    fs::write(dir.join("manifest"), signed).unwrap();
}

/// Its first chunk placed in the first block of `victim`'s first pack,
/// which it lists as its own.
fn claim_first_block_of(dir: &Path, keys: &KeyStore, victim: &Path) {
    forge_meta(dir, keys, victim, |ours, theirs| {
        let pack = theirs.chunk_packs[0] as usize;
        ours.packs.push(theirs.packs[pack].clone());
        ours.chunk_packs[0] = (ours.packs.len() - 1) as u32;
        ours.body.chunks[0].offset = theirs.body.chunks[0].offset;
        ours.body.chunks[0].block_len = theirs.body.chunks[0].block_len;
    });
}

/// Its first chunk named as `victim`'s first chunk, where its own bytes
/// are: a hash anyone reads in the victim's published metadata, in a
/// block that does not hold it.
fn misname_first_chunk_as(dir: &Path, keys: &KeyStore, victim: &Path) {
    forge_meta(dir, keys, victim, |ours, theirs| {
        ours.body.chunks[0].hash = theirs.body.chunks[0].hash;
    });
}

/// Two trust domains, each published to a directory: `origin` with
/// package `tool/1` (one file `big`), `evil` with `evil/1`; a subscriber
/// trusts each domain's key for its own domain.
struct TwoDomains {
    tmp: tempfile::TempDir,
    origin_dir: PathBuf,
    evil_dir: PathBuf,
    evil_keys: KeyStore,
    trust: TrustSet,
    big: Vec<u8>,
}

impl TwoDomains {
    fn published() -> TwoDomains {
        let tmp = tempfile::tempdir().unwrap();
        let (origin_dir, evil_dir) = (tmp.path().join("origin"), tmp.path().join("evil"));
        let (keys, evil_keys) = (
            KeyStore::new(tmp.path().join("keys")),
            KeyStore::new(tmp.path().join("evil-keys")),
        );
        keys.generate("pub").unwrap();
        evil_keys.generate("pub").unwrap();
        let mut host = Store::init(&tmp.path().join("a")).unwrap();
        let big = text(7, 600_000);
        add(&mut host, tmp.path(), "tool", "1", &[("big", big.clone())]);
        let mut evil_host = Store::init(&tmp.path().join("c")).unwrap();
        add(
            &mut evil_host,
            tmp.path(),
            "evil",
            "1",
            &[("x", text(8, 50_000))],
        );
        subscriber_trust(&keys, &tmp.path().join("keys-b"), "origin");
        let trust = subscriber_trust(&evil_keys, &tmp.path().join("keys-b"), "evil");
        publish_to(
            &host,
            &dir_remote(&host, "origin", &origin_dir),
            &keys,
            None,
        );
        publish_to(
            &evil_host,
            &dir_remote(&evil_host, "evil", &evil_dir),
            &evil_keys,
            None,
        );
        TwoDomains {
            tmp,
            origin_dir,
            evil_dir,
            evil_keys,
            trust,
            big,
        }
    }

    /// A new subscriber store `name` with both remotes recorded.
    fn subscriber(&self, name: &str) -> (PathBuf, Store, RemoteRow, RemoteRow) {
        let dir = self.tmp.path().join(name);
        let store = Store::init(&dir).unwrap();
        let origin = dir_remote(&store, "origin", &self.origin_dir);
        let evil = dir_remote(&store, "evil", &self.evil_dir);
        (dir, store, origin, evil)
    }
}

/// A key trusted for one trust domain cannot place its chunks in another
/// domain's packs: once they were indexed, every read of that block
/// failed its check (the catalog placing a chunk there the block does not
/// list), and the pack's reads went to the claiming domain's server.
/// Claimed after the pack is indexed, the pull is refused; claimed first,
/// the other domain's pull is refused, naming both — never a silent
/// breakage.
#[test]
fn a_key_of_another_domain_cannot_claim_a_domains_packs() {
    let d = TwoDomains::published();
    claim_first_block_of(&d.evil_dir, &d.evil_keys, &d.origin_dir);

    let (dir, mut store, origin, evil) = d.subscriber("b");
    pull_from(&mut store, &origin, &d.trust);
    let err = try_pull(&mut store, &evil, &d.trust).unwrap_err();
    assert!(
        err.contains("trust domain origin") && err.contains("trust domain evil"),
        "{err}"
    );
    let (read, _) = read_all(&dir, "tool", "1", "big");
    assert_eq!(read, d.big, "the domain's package no longer reads");

    // Claimed first: the domain's own pull is refused, loudly.
    let (_, mut second, origin, evil) = d.subscriber("b2");
    pull_from(&mut second, &evil, &d.trust);
    let err = try_pull(&mut second, &origin, &d.trust).unwrap_err();
    assert!(err.contains("cannot claim it"), "{err}");
}

/// A key trusted for one trust domain cannot break another domain's reads
/// by naming that domain's chunks (public, in its published metadata) in
/// its own metadata at places that do not hold them. A chunk known already
/// kept its place, so once such a generation was pulled first, every read
/// of the other domain's file failed. The other domain's pull now checks
/// the block and places the chunks where its own metadata says, also when
/// the claimant's server has gone dark; pulled in the other order, the
/// false places are checked and never taken.
#[test]
fn a_key_of_another_domain_cannot_misplace_a_domains_chunks() {
    let d = TwoDomains::published();
    misname_first_chunk_as(&d.evil_dir, &d.evil_keys, &d.origin_dir);

    // The other domain's generation is pulled first.
    let (dir, mut store, origin, evil) = d.subscriber("b");
    pull_from(&mut store, &evil, &d.trust);
    pull_from(&mut store, &origin, &d.trust);
    let (read, _) = read_all(&dir, "tool", "1", "big");
    assert_eq!(read, d.big, "the domain's package no longer reads");

    // In the other order: the false place is checked and not taken.
    let (dir, mut store, origin, evil) = d.subscriber("b2");
    pull_from(&mut store, &origin, &d.trust);
    pull_from(&mut store, &evil, &d.trust);
    let (read, _) = read_all(&dir, "tool", "1", "big");
    assert_eq!(
        read, d.big,
        "a later pull of the other domain broke the package"
    );

    // First, then dark: the claim cannot be checked, and yields.
    let (dir, mut store, origin, evil) = d.subscriber("b3");
    pull_from(&mut store, &evil, &d.trust);
    let gone = d.tmp.path().join("evil-gone");
    fs::rename(&d.evil_dir, &gone).unwrap();
    pull_from(&mut store, &origin, &d.trust);
    let (read, _) = read_all(&dir, "tool", "1", "big");
    assert_eq!(read, d.big, "a claimant gone dark kept its false place");
    fs::rename(&gone, &d.evil_dir).unwrap();
}

/// A content two trust domains both publish is fetched from one of them:
/// the second domain's pull checks the first's block, finds it holds the
/// chunks, and leaves them there; both packages read.
#[test]
fn a_content_two_domains_publish_is_read_from_the_first_place_that_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let (one_dir, two_dir) = (tmp.path().join("one"), tmp.path().join("two"));
    let (one_keys, two_keys) = (
        KeyStore::new(tmp.path().join("keys-one")),
        KeyStore::new(tmp.path().join("keys-two")),
    );
    one_keys.generate("pub").unwrap();
    two_keys.generate("pub").unwrap();
    let shared = text(9, 400_000);
    let mut one = Store::init(&tmp.path().join("a")).unwrap();
    // Each publish holds something of its own too: packs are named by
    // their bytes, and two domains publishing the same pack is a claim
    // refused (a_key_of_another_domain_cannot_claim_a_domains_packs).
    add(
        &mut one,
        tmp.path(),
        "lib",
        "1",
        &[("so", shared.clone()), ("own", text(10, 30_000))],
    );
    let mut two = Store::init(&tmp.path().join("c")).unwrap();
    add(
        &mut two,
        tmp.path(),
        "app",
        "1",
        &[("so", shared.clone()), ("own", text(11, 30_000))],
    );
    publish_to(&one, &dir_remote(&one, "one", &one_dir), &one_keys, None);
    let remote_two = dir_remote(&two, "two", &two_dir);
    publish_to(&two, &remote_two, &two_keys, None);

    let dir = tmp.path().join("b");
    let mut store = Store::init(&dir).unwrap();
    let (first, second) = (
        dir_remote(&store, "one", &one_dir),
        dir_remote(&store, "two", &two_dir),
    );
    subscriber_trust(&one_keys, &tmp.path().join("keys-b"), "one");
    let trust = subscriber_trust(&two_keys, &tmp.path().join("keys-b"), "two");
    pull_from(&mut store, &first, &trust);
    let packs_of_one: Vec<String> = store
        .catalog()
        .remote_packs()
        .unwrap()
        .into_iter()
        .map(|(pack, _)| pack)
        .collect();
    pull_from(&mut store, &second, &trust);
    let app = store.catalog().package("app", "1").unwrap().unwrap();
    let blob = store.resolve(&app, b"so").unwrap().blob.unwrap();
    let placed: Vec<String> = store
        .catalog()
        .blob_chunks(blob)
        .unwrap()
        .into_iter()
        .map(|c| c.pack.to_string())
        .collect();
    assert!(
        placed.iter().all(|p| packs_of_one.contains(p)),
        "the shared content moved to the second domain's packs: {placed:?}"
    );
    assert_eq!(read_all(&dir, "app", "1", "so").0, shared);
    assert_eq!(read_all(&dir, "lib", "1", "so").0, shared);

    // The second domain publishes again, one package more. The pull checks
    // the places of the new package's chunks only: app/1 is held already,
    // and nothing of the first domain's is fetched again.
    let log = dir
        .join(nexus_remote::cache::CACHE_DIR)
        .join(nexus_remote::source::ACCESS_LOG);
    let _ = fs::remove_file(&log);
    // Nothing cached either: a check would have to fetch.
    let _ = fs::remove_dir_all(dir.join(nexus_remote::cache::CACHE_DIR).join("blocks"));
    add(
        &mut two,
        tmp.path(),
        "more",
        "1",
        &[("x", text(12, 20_000))],
    );
    publish_to(&two, &remote_two, &two_keys, None);
    pull_from(&mut store, &second, &trust);
    assert!(store.catalog().package("more", "1").unwrap().is_some());
    let fetched = fs::read_to_string(&log).unwrap_or_default();
    assert!(
        packs_of_one.iter().all(|p| !fetched.contains(p.as_str())),
        "a pull of a held package checked its places again: {fetched}"
    );
}
