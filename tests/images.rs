//! `nexus snapshot`, `verify`, `switch`, `rollback` and `mount --image`:
//! the admin's rollback story on a live mount, reproducible images, and
//! images that are altered, signed by unknown or revoked keys, or older
//! than one already accepted.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nexus_integration_tests::fixtures::{chmod, write_file};
use nexus_integration_tests::nexus::{Mount, nexus, show, wait_for};
use nexus_integration_tests::{Scratch, Store, fetch_debs, is_root};

/// Adds a one-script package `tool/VERSION` whose program prints `says`
/// and exits with `code`, plus a 300 KiB data file.
fn add_tool(store: &Store, scratch: &Scratch, version: &str, says: &str, code: i32) {
    let dir = scratch.join(format!("tool-{version}"));
    write_file(
        &dir.join("bin/tool"),
        format!("#!/bin/sh\necho {says}\nexit {code}\n").as_bytes(),
    );
    chmod(&dir.join("bin/tool"), 0o755);
    let data: Vec<u8> = (0..300 * 1024)
        .map(|i| (i % 251) as u8 ^ version.as_bytes()[0])
        .collect();
    write_file(&dir.join("share/data"), &data);
    store.ok([
        OsString::from("add"),
        dir.into_os_string(),
        "--name".into(),
        "tool".into(),
        "--version".into(),
        version.into(),
    ]);
}

fn run_tool(mount: &Mount) -> (bool, String) {
    let out = Command::new(mount.join("tool/Current/bin/tool"))
        .output()
        .expect("run tool from the mount");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

fn ok(store: &Path, args: &[&str]) -> String {
    let out = nexus(store, args);
    assert!(out.status.success(), "{}", show(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_bad_update_is_rolled_back_in_one_step_on_a_live_mount() {
    if !is_root() {
        eprintln!("skipped: needs root for FUSE");
        return;
    }
    let scratch = Scratch::new("images-rollback");
    let store = Store::init();
    add_tool(&store, &scratch, "1", "working", 0);
    let mount = Mount::start(store.path(), &scratch.join("mnt"), &[]);
    assert_eq!(run_tool(&mount), (true, "working".into()));
    // A reader keeps version 1's data open across both switches.
    let held = fs::File::open(mount.join("tool/1/share/data")).unwrap();
    let expected = fs::read(mount.join("tool/1/share/data")).unwrap();

    add_tool(&store, &scratch, "2", "broken", 1);
    assert!(
        wait_for(Duration::from_secs(2), || run_tool(&mount)
            == (false, "broken".into())),
        "the update does not show on the live mount"
    );
    ok(store.path(), &["rollback"]);
    assert!(
        wait_for(Duration::from_secs(2), || run_tool(&mount)
            == (true, "working".into())),
        "the rollback does not show on the live mount"
    );
    let mut buf = vec![0u8; expected.len()];
    held.read_exact_at(&mut buf, 0).unwrap();
    assert!(buf == expected, "the held file changed across the switches");

    // The same through an image: freeze the good state, break, switch back.
    ok(store.path(), &["key", "generate", "admin"]);
    let good = scratch.join("good.img");
    ok(
        store.path(),
        &["snapshot", "--key", "admin", "-o", good.to_str().unwrap()],
    );
    ok(store.path(), &["switch", "2"]);
    assert!(wait_for(Duration::from_secs(2), || !run_tool(&mount).0));
    ok(store.path(), &["switch", good.to_str().unwrap()]);
    assert!(
        wait_for(Duration::from_secs(2), || run_tool(&mount)
            == (true, "working".into())),
        "switching to the good image does not show"
    );
    held.read_exact_at(&mut buf, 0).unwrap();
    assert!(buf == expected);
    drop(held);
    mount.umount();
}

/// A store with real Debian packages, a signing key, and an image of it.
fn image_store(scratch: &Scratch) -> (Store, PathBuf) {
    let debs = fetch_debs(&["hello", "jq", "libjq1", "libonig5"]);
    let store = Store::init();
    let mut args = vec!["add".to_string()];
    args.extend(debs.iter().map(|d| d.display().to_string()));
    store.ok(&args);
    ok(store.path(), &["key", "generate", "admin"]);
    let image = scratch.join("system.img");
    ok(
        store.path(),
        &[
            "snapshot",
            "--key",
            "admin",
            "--counter",
            "5",
            "-o",
            image.to_str().unwrap(),
        ],
    );
    (store, image)
}

#[test]
fn snapshots_are_reproducible() {
    let scratch = Scratch::new("images-repro");
    let (store, _) = image_store(&scratch);
    let (a, b) = (scratch.join("a.img"), scratch.join("b.img"));
    for out in [&a, &b] {
        let run = Command::new(nexus_integration_tests::nexus::nexus_bin())
            .args([
                "--store",
                store.path().to_str().unwrap(),
                "snapshot",
                "--key",
                "admin",
            ])
            .args(["--counter", "9", "-o", out.to_str().unwrap()])
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .output()
            .unwrap();
        assert!(run.status.success(), "{}", show(&run));
    }
    assert!(
        fs::read(&a).unwrap() == fs::read(&b).unwrap(),
        "two snapshots differ"
    );
    let report = ok(store.path(), &["verify", a.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["counter"], 9, "{v}");
    assert_eq!(v["created"], 1_700_000_000, "{v}");
}

#[test]
fn altered_images_never_serve_wrong_bytes() {
    if !is_root() {
        eprintln!("skipped: needs root for FUSE");
        return;
    }
    let scratch = Scratch::new("images-tamper");
    let (store, image) = image_store(&scratch);
    let bytes = fs::read(&image).unwrap();
    // Every file of the intact image, as the store serves it.
    let intact = Mount::start(
        store.path(),
        &scratch.join("intact"),
        &["--image", image.to_str().unwrap()],
    );
    let files = regular_files(intact.point());
    assert!(files.len() > 10, "{files:?}");
    let expected: Vec<Vec<u8>> = files
        .iter()
        .map(|f| fs::read(intact.join(f)).unwrap())
        .collect();
    intact.umount();

    let len = bytes.len();
    let manifest = len - 264;
    let body_offset =
        u64::from_le_bytes(bytes[manifest + 64..manifest + 72].try_into().unwrap()) as usize;
    let offsets = [
        (0, "header"),
        (36, "first block header"),
        (32 + 32 + 10, "first block table"),
        (body_offset / 3, "block data"),
        (body_offset * 2 / 3, "block data"),
        (body_offset - 2, "last block"),
        (body_offset + 5, "body"),
        ((body_offset + manifest) / 2, "body"),
        (manifest + 20, "manifest signer"),
        (manifest + 50, "manifest counter"),
        (manifest + 100, "manifest content hash"),
        (manifest + 160, "manifest body hash"),
        (manifest + 210, "signature"),
        (len - 1, "end mark"),
    ];
    for (offset, what) in offsets {
        let mut bad = bytes.clone();
        bad[offset] ^= 0x40;
        let file = scratch.join(format!("bad-{offset}.img"));
        fs::write(&file, &bad).unwrap();
        let verify = nexus(store.path(), ["verify", file.to_str().unwrap()]);
        assert!(
            !verify.status.success(),
            "verify accepted an image with its {what} (offset {offset}) altered: {}",
            show(&verify)
        );
        let point = scratch.join(format!("mnt-{offset}"));
        fs::create_dir_all(&point).unwrap();
        let mount = nexus(
            store.path(),
            [
                "mount",
                point.to_str().unwrap(),
                "--image",
                file.to_str().unwrap(),
            ],
        );
        if !mount.status.success() {
            continue; // refused before serving: fine
        }
        let mut failed = 0;
        for (f, want) in files.iter().zip(&expected) {
            match fs::read(point.join(f)) {
                Ok(got) => assert!(
                    &got == want,
                    "{what} (offset {offset}) altered: {} served wrong bytes",
                    f.display()
                ),
                Err(_) => failed += 1,
            }
        }
        assert!(
            failed > 0,
            "{what} (offset {offset}) altered: the mount served everything"
        );
        ok(store.path(), &["umount", point.to_str().unwrap()]);
    }
}

fn regular_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in fs::read_dir(root.join(&rel)).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            let p = rel.join(e.file_name());
            if t.is_dir() {
                stack.push(p);
            } else if t.is_file() {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn unknown_revoked_and_older_images_are_refused() {
    let scratch = Scratch::new("images-keys");
    let (source, image) = image_store(&scratch);
    let older = scratch.join("older.img");
    ok(
        source.path(),
        &[
            "snapshot",
            "--key",
            "admin",
            "--counter",
            "3",
            "-o",
            older.to_str().unwrap(),
        ],
    );
    let public = fs::read_dir(source.path().join("keys/trusted"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();

    let target = Store::init();
    let refused = |args: &[&str], why: &str| {
        let before = target.history().len();
        let out = nexus(target.path(), args);
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "accepted: {}", show(&out));
        assert!(text.contains(why), "{why:?} not in: {}", show(&out));
        assert_eq!(
            target.history().len(),
            before,
            "a refused switch changed the store"
        );
    };
    refused(&["switch", image.to_str().unwrap()], "not trusted");
    ok(target.path(), &["key", "trust", public.to_str().unwrap()]);
    ok(target.path(), &["switch", image.to_str().unwrap()]);
    assert_eq!(target.list().len(), 4);
    refused(&["switch", older.to_str().unwrap()], "downgrade");
    let out = nexus(target.path(), ["verify", older.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    ok(
        target.path(),
        &["switch", older.to_str().unwrap(), "--allow-downgrade"],
    );
    // A local rollback is always allowed.
    ok(target.path(), &["switch", "1"]);
    ok(target.path(), &["key", "revoke", "admin"]);
    refused(&["switch", image.to_str().unwrap()], "revoked");
    let out = nexus(target.path(), ["verify", image.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
}
