//! `nexus snapshot`, `verify`, `switch`, `rollback` and `mount --image`:
//! the admin's rollback story on a live mount, reproducible images, and
//! images that are altered, signed by unknown or revoked keys, expired, or
//! older than one already accepted in their trust domain (whichever key
//! signed it, and whether it is switched to or only served).

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nexus_integration_tests::fixtures::{chmod, write_file};
use nexus_integration_tests::nexus::{Mount, nexus, nexus_bin, show, wait_for};
use nexus_integration_tests::{Scratch, Store, fetch_debs, is_root, root_or_skip};

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
    if !root_or_skip("a_bad_update_is_rolled_back_in_one_step_on_a_live_mount") {
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
fn snapshots_are_reproducible_and_expire() {
    let scratch = Scratch::new("images-repro");
    let (store, _) = image_store(&scratch);
    let (a, b) = (scratch.join("a.img"), scratch.join("b.img"));
    for out in [&a, &b] {
        // Signing counter 9 twice is deliberate here: --force-counter.
        let run = Command::new(nexus_bin())
            .args([
                "--store",
                store.path().to_str().unwrap(),
                "snapshot",
                "--key",
                "admin",
            ])
            .args(["--counter", "9", "--force-counter", "--expires-in", "1d"])
            .args(["-o", out.to_str().unwrap()])
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .output()
            .unwrap();
        assert!(run.status.success(), "{}", show(&run));
    }
    assert!(
        fs::read(&a).unwrap() == fs::read(&b).unwrap(),
        "two snapshots differ"
    );
    // Made in 2023 to live a day: expired, unless allowed.
    let out = nexus(store.path(), ["verify", a.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("expired"));
    let report = ok(
        store.path(),
        &["verify", a.to_str().unwrap(), "--json", "--allow-expired"],
    );
    let v: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["counter"], 9, "{v}");
    assert_eq!(v["created"], 1_700_000_000, "{v}");
    assert_eq!(v["expires"], 1_700_000_000 + 86_400, "{v}");
    assert_eq!(v["counter_checked"], true, "{v}");
    // Without --force-counter, a counter the key has signed is refused.
    let out = nexus(
        store.path(),
        ["snapshot", "--key", "admin", "--counter", "9", "-o"]
            .into_iter()
            .chain([scratch.join("c.img").to_str().unwrap()]),
    );
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--force-counter"),
        "{}",
        show(&out)
    );
}

#[test]
fn altered_images_never_serve_wrong_bytes() {
    if !root_or_skip("altered_images_never_serve_wrong_bytes") {
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
        (0, "header", true),
        (36, "first block header", true),
        (32 + 32 + 10, "first block table", true),
        (body_offset / 3, "block data", true),
        (body_offset * 2 / 3, "block data", true),
        (body_offset - 6, "last block", true),
        // The last bytes of a compressed frame are zstd's checksum, which
        // the mount daemon does not check (it hashes every chunk it serves
        // instead): altered, no byte of a file changes, and the mount need
        // not notice (`false`). `nexus verify` still refuses the image.
        (body_offset - 2, "last frame's checksum", false),
        (body_offset + 5, "body", true),
        ((body_offset + manifest) / 2, "body", true),
        (manifest + 20, "manifest signer", true),
        (manifest + 50, "manifest counter", true),
        (manifest + 100, "manifest content hash", true),
        (manifest + 160, "manifest body hash", true),
        (manifest + 210, "signature", true),
        (len - 1, "end mark", true),
    ];
    // (offset, what is there, whether a mount must fail a read)
    for (offset, what, noticed) in offsets {
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
            failed > 0 || !noticed,
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
            "--force-counter",
            "-o",
            older.to_str().unwrap(),
        ],
    );

    let target = Store::init();
    refused(&target, &["switch", image.to_str().unwrap()], "not trusted");
    trust_for_images(&target, &source, &[]);
    ok(target.path(), &["switch", image.to_str().unwrap()]);
    assert_eq!(target.list().len(), 4);
    refused(
        &target,
        &["switch", older.to_str().unwrap()],
        "lower than 5",
    );
    let out = nexus(target.path(), ["verify", older.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    ok(
        target.path(),
        &["switch", older.to_str().unwrap(), "--allow-downgrade"],
    );
    // A local rollback is always allowed.
    ok(target.path(), &["switch", "1"]);
    ok(target.path(), &["key", "revoke", "admin"]);
    refused(&target, &["switch", image.to_str().unwrap()], "revoked");
    let out = nexus(target.path(), ["verify", image.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
}

/// The public key file of the one key generated in `store`.
fn public_key(store: &Store) -> PathBuf {
    fs::read_dir(store.path().join("keys/public"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
}

/// Trusts the public key of `source`'s one key in `target` for images
/// (`extra`: `--domain NAME`).
fn trust_for_images(target: &Store, source: &Store, extra: &[&str]) {
    let key = public_key(source);
    let mut args = vec!["key", "trust", key.to_str().unwrap(), "--for", "images"];
    args.extend_from_slice(extra);
    ok(target.path(), &args);
}

/// A refused `nexus mount POINT --image IMAGE` on `target`.
fn mount_refused(target: &Store, scratch: &Scratch, image: &Path, why: &str) {
    let point = scratch.join("mnt");
    fs::create_dir_all(&point).unwrap();
    let args = ["mount", point.to_str().unwrap(), "--image"];
    refused(
        target,
        &[&args[..], &[image.to_str().unwrap()]].concat(),
        why,
    );
}

/// `nexus snapshot` of `store`'s live generation signed by `key` with
/// `counter`, to `out`.
fn snapshot(store: &Store, key: &str, counter: u64, out: &Path) {
    let counter = counter.to_string();
    ok(
        store.path(),
        &[
            "snapshot",
            "--key",
            key,
            "--counter",
            &counter,
            "-o",
            out.to_str().unwrap(),
        ],
    );
}

/// A refused `nexus ARGS` on `target`: fails, says `why`, changes nothing.
fn refused(target: &Store, args: &[&str], why: &str) {
    let before = target.state();
    let out = nexus(target.path(), args);
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "accepted: {}", show(&out));
    assert!(text.contains(why), "{why:?} not in: {}", show(&out));
    target.assert_unchanged(&before, &format!("refused {args:?}"));
}

/// Counters go up per trust domain, not per key: after an image of key 1
/// with counter 5, key 2 (same domain, as in a key rotation) can replay
/// neither a lower counter nor counter 5 with other content; the same
/// image again is fine; another domain counts on its own.
#[test]
fn image_counters_are_per_trust_domain_not_per_key() {
    let scratch = Scratch::new("images-domains");
    let one = Store::init();
    add_tool(&one, &scratch, "1", "one", 0);
    ok(one.path(), &["key", "generate", "k1"]);
    let a5 = scratch.join("a5.img");
    snapshot(&one, "k1", 5, &a5);
    let two = Store::init();
    add_tool(&two, &scratch, "2", "two", 0);
    ok(two.path(), &["key", "generate", "k2"]);
    let (b3, b5, b6) = (
        scratch.join("b3.img"),
        scratch.join("b5.img"),
        scratch.join("b6.img"),
    );
    snapshot(&two, "k2", 3, &b3);
    snapshot(&two, "k2", 5, &b5);
    add_tool(&two, &scratch, "3", "three", 0);
    snapshot(&two, "k2", 6, &b6);
    let lab = Store::init();
    add_tool(&lab, &scratch, "9", "lab", 0);
    ok(lab.path(), &["key", "generate", "k3"]);
    let l1 = scratch.join("l1.img");
    snapshot(&lab, "k3", 1, &l1);

    let target = Store::init();
    trust_for_images(&target, &one, &[]);
    trust_for_images(&target, &two, &[]);
    trust_for_images(&target, &lab, &["--domain", "lab"]);
    ok(target.path(), &["switch", a5.to_str().unwrap()]);
    refused(
        &target,
        &["switch", b3.to_str().unwrap()],
        "lower than 5, the highest this store has accepted in trust domain images",
    );
    refused(&target, &["switch", b5.to_str().unwrap()], "other content");
    let out = nexus(target.path(), ["verify", b5.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    // The same image again: accepted (nothing to do).
    let again = ok(target.path(), &["switch", a5.to_str().unwrap()]);
    assert!(again.contains("nothing to do"), "{again}");
    ok(target.path(), &["switch", b6.to_str().unwrap()]);
    refused(&target, &["switch", a5.to_str().unwrap()], "lower than 6");
    // Domain "lab" starts from nothing.
    ok(target.path(), &["switch", l1.to_str().unwrap()]);
}

/// `mount --image` and `serve --image` check the counter against the
/// store's record and advance it: an older image is not served after a
/// newer switch (unless --allow-downgrade), and a newer image served makes
/// the older one refused by `switch`.
#[test]
fn serving_an_image_checks_and_records_its_counter() {
    if !root_or_skip("serving_an_image_checks_and_records_its_counter") {
        return;
    }
    let scratch = Scratch::new("images-serve-counter");
    let source = Store::init();
    ok(source.path(), &["key", "generate", "admin"]);
    let mut images = Vec::new();
    for (version, counter) in [("1", 3), ("2", 5), ("3", 7)] {
        add_tool(&source, &scratch, version, &format!("v{version}"), 0);
        let img = scratch.join(format!("c{counter}.img"));
        snapshot(&source, "admin", counter, &img);
        images.push(img);
    }
    let [c3, c5, c7] = &images[..] else {
        unreachable!()
    };
    let target = Store::init();
    trust_for_images(&target, &source, &[]);
    ok(target.path(), &["switch", c5.to_str().unwrap()]);

    mount_refused(&target, &scratch, c3, "lower than 5");
    let point = scratch.join("mnt");
    let socket = scratch.join("fs.sock");
    refused(
        &target,
        &[
            "serve",
            "--virtio-fs",
            socket.to_str().unwrap(),
            "--image",
            c3.to_str().unwrap(),
        ],
        "lower than 5",
    );
    assert!(!socket.exists(), "the refused daemon made its socket");
    // On purpose: served, and the record stays at 5.
    let old = Mount::start(
        target.path(),
        &point,
        &["--image", c3.to_str().unwrap(), "--allow-downgrade"],
    );
    assert_eq!(run_tool(&old), (true, "v1".into()));
    old.umount();
    ok(target.path(), &["switch", c5.to_str().unwrap()]);
    // A newer image served advances the domain.
    let new = Mount::start(target.path(), &point, &["--image", c7.to_str().unwrap()]);
    assert_eq!(run_tool(&new), (true, "v3".into()));
    new.umount();
    refused(&target, &["switch", c5.to_str().unwrap()], "lower than 7");
}

/// An image past its expiry is refused by verify, switch and mount, unless
/// --allow-expired; without a store, verify says the counter was not
/// checked.
#[test]
fn expired_images_are_refused_unless_allowed() {
    let scratch = Scratch::new("images-expired");
    let source = Store::init();
    add_tool(&source, &scratch, "1", "one", 0);
    ok(source.path(), &["key", "generate", "admin"]);
    let stale = scratch.join("stale.img");
    let two_days_ago = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 2 * 86_400)
        .to_string();
    let out = Command::new(nexus_bin())
        .arg("--store")
        .arg(source.path())
        .args(["snapshot", "--key", "admin", "--expires-in", "1d", "-o"])
        .arg(&stale)
        .env("SOURCE_DATE_EPOCH", &two_days_ago)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));

    let target = Store::init();
    trust_for_images(&target, &source, &[]);
    let out = nexus(target.path(), ["verify", stale.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    refused(&target, &["switch", stale.to_str().unwrap()], "expired");
    refused(
        &target,
        &["switch", stale.to_str().unwrap()],
        "--allow-expired",
    );
    if is_root() {
        mount_refused(&target, &scratch, &stale, "expired");
    }
    ok(
        target.path(),
        &["switch", stale.to_str().unwrap(), "--allow-expired"],
    );

    // No store to check the counter against: said, not silently passed.
    let nowhere = scratch.join("no-store");
    let out = Command::new(nexus_bin())
        .arg("--store")
        .arg(&nowhere)
        .arg("--keys")
        .arg(target.path().join("keys"))
        .args(["verify", "--allow-expired", "--json"])
        .arg(&stale)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["counter_checked"], false, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("NOT checked"), "{v}");
}

/// `nexus switch 12` is generation 12 even with a file named `12` in the
/// current directory; the file is reached as ./12 or --image 12.
#[test]
fn switch_takes_digits_as_a_generation_number() {
    let scratch = Scratch::new("images-switch-target");
    let store = Store::init();
    add_tool(&store, &scratch, "1", "one", 0);
    add_tool(&store, &scratch, "2", "two", 0);
    ok(store.path(), &["key", "generate", "admin"]);
    snapshot(&store, "admin", 1, &scratch.join("1"));
    let switch = |args: &[&str]| {
        let out = Command::new(nexus_bin())
            .arg("--store")
            .arg(store.path())
            .arg("switch")
            .args(args)
            .current_dir(scratch.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", show(&out));
        store.history().last().unwrap().action.clone()
    };
    assert_eq!(switch(&["1"]), "switch to 1");
    assert!(switch(&["./1"]).starts_with("image ./1"));
    ok(store.path(), &["switch", "1"]);
    assert!(switch(&["--image", "1"]).starts_with("image 1"));
}

/// Snapshots signed at the same moment with one key never share a counter
/// (they are taken under a lock of the key store).
#[test]
fn concurrent_snapshots_never_share_a_counter() {
    let scratch = Scratch::new("images-concurrent");
    let store = Store::init();
    add_tool(&store, &scratch, "1", "one", 0);
    ok(store.path(), &["key", "generate", "admin"]);
    let outs: Vec<PathBuf> = (0..8).map(|i| scratch.join(format!("{i}.img"))).collect();
    let children: Vec<_> = outs
        .iter()
        .map(|out| {
            Command::new(nexus_bin())
                .arg("--store")
                .arg(store.path())
                .args(["snapshot", "--key", "admin", "-o"])
                .arg(out)
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    let mut counters: Vec<u64> = outs
        .iter()
        .map(|out| {
            let report = ok(store.path(), &["verify", out.to_str().unwrap(), "--json"]);
            let v: serde_json::Value = serde_json::from_str(&report).unwrap();
            v["counter"].as_u64().unwrap()
        })
        .collect();
    counters.sort_unstable();
    assert_eq!(counters, (1..=8).collect::<Vec<u64>>());
}
