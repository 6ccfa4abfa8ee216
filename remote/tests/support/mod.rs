//! What the hostile-server tests share: a publisher with one file
//! published to a directory, a subscriber trusting its key, and the
//! process's peak memory (each such test is alone in its binary, so the
//! peak is its own).

use std::fs;
use std::io::BufRead;
use std::path::Path;

use nexus_npk::{KeyStore, Scope, TrustSet};
use nexus_remote::client::Timeouts;
use nexus_remote::publish::{PublishOptions, publish};
use nexus_remote::pull::{PullOptions, Pulled, pull};
use nexus_remote::{endpoint_of, open_reader};
use nexus_store::catalog::{NewRemote, RemoteRow};
use nexus_store::read::ReaderOptions;
use nexus_store::{AddDir, AddOptions, NoProgress, Store};

/// The process's peak resident memory, in bytes.
// Not every test binary that shares this module measures memory.
#[allow(dead_code)]
pub fn peak_rss() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib << 10
}

/// Publishes package `tool/1`, one file `f` holding `bytes`, from a new
/// store in `tmp/a` to the directory `remote_dir` (trust domain `origin`),
/// signed by a new key `pub`; returns the publisher's keys.
pub fn publish_one_file(tmp: &Path, bytes: &[u8], remote_dir: &Path) -> KeyStore {
    let keys = KeyStore::new(tmp.join("keys"));
    keys.generate("pub").unwrap();
    let mut host = Store::init(&tmp.join("a")).unwrap();
    let src = tmp.join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), bytes).unwrap();
    host.add_dirs(
        &[AddDir {
            path: src,
            name: "tool".into(),
            version: "1".into(),
        }],
        AddOptions::default(),
        &NoProgress,
    )
    .unwrap();
    let row = origin(&host, &format!("file://{}", remote_dir.display()));
    let (reader, _) = open_reader(host.dir(), ReaderOptions::default()).unwrap();
    let options = PublishOptions {
        generation: None,
        keys: &keys,
        key_name: "pub",
        trust: &keys.trust_set().unwrap(),
        domain: "origin",
        expires_in: None,
        fresh: false,
    };
    let key = keys.secret("pub").unwrap();
    let endpoint = endpoint_of(&row).unwrap();
    publish(&host, &reader, &endpoint, &key, &options, &NoProgress).unwrap();
    keys
}

/// Records the remote at `url` in `store` as `origin`, of trust domain
/// `origin`.
pub fn origin(store: &Store, url: &str) -> RemoteRow {
    store
        .catalog()
        .add_remote(&NewRemote {
            name: "origin".into(),
            url: url.into(),
            endpoint: None,
            region: None,
            domain: "origin".into(),
        })
        .unwrap()
}

/// What a subscriber keeping its keys in `tmp/keys-b` trusts: the
/// publisher's key `pub`, for trust domain `origin`.
pub fn trusting(tmp: &Path, keys: &KeyStore) -> TrustSet {
    let trusted = KeyStore::new(tmp.join("keys-b"));
    let scope = Scope::Images {
        domain: "origin".into(),
    };
    trusted
        .trust(&keys.public_file("pub").unwrap(), scope)
        .unwrap();
    trusted.trust_set().unwrap()
}

/// `len` bytes that compress poorly, so that a file spans blocks.
#[allow(dead_code)] // not every test binary reads a large file
pub fn noise(len: u32) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// A new subscriber store in `tmp/b`, trusting `keys` as [`trusting`]
/// does, and what its pull of the remote at `url` (named `origin`) gave.
#[allow(dead_code)] // not every test binary pulls once into a new store
pub fn subscribe(tmp: &Path, keys: &KeyStore, url: &str) -> (Store, nexus_remote::Result<Pulled>) {
    let mut subscriber = Store::init(&tmp.join("b")).unwrap();
    let row = origin(&subscriber, url);
    let pulled = pull(
        &mut subscriber,
        &row,
        &trusting(tmp, keys),
        Timeouts::default(),
        PullOptions::default(),
    );
    (subscriber, pulled)
}

/// The bytes of file `f` of `tool/1` in `store`, read through the store's
/// one read path (lazily from the remote, if pulled).
#[allow(dead_code)] // not every test binary reads the file back
pub fn read_published_file(store: &Store) -> nexus_store::Result<Vec<u8>> {
    let (reader, _) = open_reader(store.dir(), ReaderOptions::default()).unwrap();
    let package = store.catalog().package("tool", "1").unwrap().unwrap();
    let inode = store.resolve(&package, b"f").unwrap();
    let mut read = Vec::new();
    reader.copy_content(inode.blob.unwrap(), &mut read)?;
    Ok(read)
}

/// One HTTP/1.1 request as the test servers read it.
#[allow(dead_code)] // not every test binary serves HTTP
pub struct Request {
    /// `GET`, `HEAD`, ...
    pub method: String,
    /// The path asked for.
    pub path: String,
    /// The `Range: bytes=START-END` asked for, both ends included.
    pub range: Option<(u64, u64)>,
}

/// Reads the next request's line and headers from `reader`; `None` when
/// the client hung up.
#[allow(dead_code)] // not every test binary serves HTTP
pub fn read_request(reader: &mut impl BufRead) -> Option<Request> {
    let mut request = String::new();
    if reader.read_line(&mut request).unwrap_or(0) == 0 {
        return None;
    }
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
            let (start, end) = value.split_once('-').unwrap();
            range = Some((start.parse().unwrap(), end.parse().unwrap()));
        }
    }
    let mut parts = request.split_whitespace();
    Some(Request {
        method: parts.next().unwrap_or("").to_string(),
        path: parts.next().unwrap_or("/").to_string(),
        range,
    })
}
