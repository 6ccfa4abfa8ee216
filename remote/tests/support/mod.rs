//! What the hostile-server tests share: a publisher with one file
//! published to a directory, a subscriber trusting its key, and the
//! process's peak memory (each such test is alone in its binary, so the
//! peak is its own).

use std::fs;
use std::path::Path;

use nexus_npk::{KeyStore, Scope, TrustSet};
use nexus_remote::publish::{PublishOptions, publish};
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
