//! A mirror that answers a manifest or metadata request with far more
//! bytes than the object may have must be refused without the subscriber
//! holding them: the manifest is 224 bytes and the metadata exactly the
//! length its signed manifest names. Alone in its test binary, so that the
//! process's peak memory is this test's.

use std::fs;
use std::path::Path;

use nexus_npk::{KeyStore, Scope};
use nexus_remote::client::Timeouts;
use nexus_remote::publish::{PublishOptions, publish};
use nexus_remote::pull::{PullOptions, pull};
use nexus_remote::{endpoint_of, open_reader};
use nexus_store::catalog::NewRemote;
use nexus_store::read::ReaderOptions;
use nexus_store::{AddDir, AddOptions, NoProgress, Store};

/// Bytes a hostile object is made to hold (sparse: nothing on disk).
const HUGE: u64 = 3 << 30;

/// The process's peak resident memory, in bytes.
fn peak_rss() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib << 10
}

fn grow_sparse(path: &Path) {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(HUGE)
        .unwrap();
}

#[test]
fn oversized_manifests_and_metadata_are_refused_without_being_held() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = KeyStore::new(tmp.path().join("keys"));
    keys.generate("pub").unwrap();
    let mut host = Store::init(&tmp.path().join("a")).unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"hello").unwrap();
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
    let remote_dir = tmp.path().join("remote");
    let mut subscriber = Store::init(&tmp.path().join("b")).unwrap();
    let row = subscriber
        .catalog()
        .add_remote(&NewRemote {
            name: "origin".into(),
            url: format!("file://{}", remote_dir.display()),
            endpoint: None,
            region: None,
            domain: "origin".into(),
        })
        .unwrap();
    let (reader, _) = open_reader(host.dir(), ReaderOptions::default()).unwrap();
    let options = PublishOptions {
        generation: None,
        keys: &keys,
        key_name: "pub",
        trust: &keys.trust_set().unwrap(),
        domain: &row.domain,
        expires_in: None,
        fresh: false,
    };
    let key = keys.secret("pub").unwrap();
    publish(
        &host,
        &reader,
        &endpoint_of(&row).unwrap(),
        &key,
        &options,
        &NoProgress,
    )
    .unwrap();
    let trusted = KeyStore::new(tmp.path().join("keys-b"));
    trusted
        .trust(
            &keys.public_file("pub").unwrap(),
            Scope::Images {
                domain: "origin".into(),
            },
        )
        .unwrap();
    let trust = trusted.trust_set().unwrap();
    let try_pull = |subscriber: &mut Store| {
        pull(
            subscriber,
            &row,
            &trust,
            Timeouts::default(),
            PullOptions::default(),
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    };
    let before = peak_rss();

    // The metadata object the signed manifest names, with gigabytes after
    // the bytes it should hold.
    let meta = fs::read_dir(remote_dir.join("meta"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let meta_bytes = fs::read(&meta).unwrap();
    grow_sparse(&meta);
    let err = try_pull(&mut subscriber).unwrap_err();
    assert!(err.contains("meta/"), "{err}");
    fs::write(&meta, &meta_bytes).unwrap();

    // The manifest itself, gigabytes long.
    let manifest = remote_dir.join("manifest");
    let manifest_bytes = fs::read(&manifest).unwrap();
    grow_sparse(&manifest);
    let err = try_pull(&mut subscriber).unwrap_err();
    assert!(err.contains("manifest"), "{err}");
    fs::write(&manifest, &manifest_bytes).unwrap();

    let grown = peak_rss().saturating_sub(before);
    assert!(
        grown < 256 << 20,
        "pulling from a hostile mirror took {} MiB",
        grown >> 20
    );
    // Restored, the remote pulls.
    try_pull(&mut subscriber).unwrap();
}
