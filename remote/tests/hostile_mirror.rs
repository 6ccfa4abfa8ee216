//! A mirror that answers a manifest or metadata request with far more
//! bytes than the object may have must be refused without the subscriber
//! holding them: the manifest is 224 bytes and the metadata exactly the
//! length its signed manifest names. Alone in its test binary, so that the
//! process's peak memory is this test's.

use std::fs;
use std::path::Path;

use nexus_remote::client::Timeouts;
use nexus_remote::pull::{PullOptions, pull};
use nexus_store::Store;

mod support;
use support::{origin, peak_rss, publish_one_file, trusting};

/// Bytes a hostile object is made to hold (sparse: nothing on disk).
const HUGE: u64 = 3 << 30;

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
    let remote_dir = tmp.path().join("remote");
    let keys = publish_one_file(tmp.path(), b"hello", &remote_dir);
    let mut subscriber = Store::init(&tmp.path().join("b")).unwrap();
    let row = origin(&subscriber, &format!("file://{}", remote_dir.display()));
    let trust = trusting(tmp.path(), &keys);
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
