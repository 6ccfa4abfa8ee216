//! `.npk`, the signed native package: packing real Debian packages in one
//! store, importing them into another with the same tree hash, and refusing
//! unsigned, untrusted, revoked, altered or truncated archives without
//! changing the store; and the trust policy: an image is never added as
//! packages, a package key signs only its Apps, an older package does not
//! become Current, expired archives and exposed secret keys are refused.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nexus_integration_tests::fixtures::{chmod, write_file};
use nexus_integration_tests::nexus::{nexus, show};
use nexus_integration_tests::nip::EXIT_ERROR;
use nexus_integration_tests::{Scratch, Store, assert_same_tree, deb_field, fetch_debs};

/// Store A with hello and jq grafted from real .debs, and a signing key.
fn packing_store() -> (Store, Vec<String>) {
    let debs = fetch_debs(&["hello", "jq", "libjq1", "libonig5"]);
    let store = Store::init();
    let mut args = vec!["add".to_string()];
    args.extend(debs.iter().map(|d| d.display().to_string()));
    store.ok(&args);
    let specs = debs
        .iter()
        .map(|d| {
            let v = deb_field(d, "Version");
            let v = v.split_once(':').map_or(v.as_str(), |(_, r)| r).to_string();
            format!("{}/{v}", deb_field(d, "Package"))
        })
        .collect();
    store.ok(["key", "generate", "builder"]);
    (store, specs)
}

/// The public key file of the one key generated in `store`.
fn public_key_file(store: &Store) -> PathBuf {
    let dir = store.path().join("keys/public");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(
        files.len(),
        1,
        "one trusted key expected in {}",
        dir.display()
    );
    files.remove(0)
}

fn pack(store: &Store, spec: &str, out: &Path, extra: &[&str]) {
    let mut args = vec!["pack", spec, "-o", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    store.ok(&args);
}

fn add_refused(store: &Store, file: &Path, extra: &[&str], why: &str) {
    let before = store.history().len();
    let mut args = vec!["add", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    let run = store.fails_with(&[EXIT_ERROR], &args);
    assert!(
        run.stderr.contains(why),
        "the refusal of {} should mention {why:?}:\n{run}",
        file.display()
    );
    assert_eq!(
        store.history().len(),
        before,
        "a refused add changed the store"
    );
}

#[test]
fn signed_packages_move_between_stores_with_their_tree_hash() {
    let scratch = Scratch::new("npk-roundtrip");
    let (a, specs) = packing_store();
    let b = Store::init();
    let key = public_key_file(&a);

    let mut files = Vec::new();
    for spec in &specs {
        let file = scratch.join(format!("{}.npk", spec.replace('/', "_")));
        pack(&a, spec, &file, &["--key", "builder"]);
        files.push(file);
    }
    // Not trusted yet: refused, nothing stored.
    add_refused(&b, &files[0], &[], "not trusted");
    b.ok(["key", "trust", key.to_str().unwrap(), "--for", "packages"]);
    let mut args = vec!["add".to_string()];
    args.extend(files.iter().map(|f| f.display().to_string()));
    b.ok(&args);
    assert_eq!(
        b.history().len(),
        1,
        "several .npk in one call make one generation"
    );
    for spec in &specs {
        let (name, version) = spec.split_once('/').unwrap();
        let from = a.listed(name, version).unwrap();
        let to = b
            .listed(name, version)
            .unwrap_or_else(|| panic!("{spec} missing after importing its .npk"));
        assert_eq!(from.tree_hash, to.tree_hash, "{spec}: tree hash changed");
        let (ea, eb) = (
            scratch.join(format!("a-{name}")),
            scratch.join(format!("b-{name}")),
        );
        a.export(spec, &ea);
        b.export(spec, &eb);
        assert_same_tree(&ea, &eb, &format!("{spec} exported from both stores"));
    }
    b.assert_verify_clean("after importing .npk files");
    // The program still runs after the trip.
    let hello = scratch.join("b-hello/bin/hello");
    let out = std::process::Command::new(&hello).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("Hello, world!"));

    // Reproducible: same package, key and SOURCE_DATE_EPOCH, same bytes.
    let (r1, r2) = (scratch.join("r1.npk"), scratch.join("r2.npk"));
    for r in [&r1, &r2] {
        let run = a
            .command([
                "pack",
                &specs[0],
                "-o",
                r.to_str().unwrap(),
                "--key",
                "builder",
            ])
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .output()
            .unwrap();
        assert!(run.status.success(), "{run:?}");
    }
    assert!(
        fs::read(&r1).unwrap() == fs::read(&r2).unwrap(),
        "two packs differ"
    );

    // Unsigned: refused unless --insecure.
    let c = Store::init();
    let unsigned = scratch.join("unsigned.npk");
    pack(&a, &specs[0], &unsigned, &["--unsigned"]);
    add_refused(&c, &unsigned, &[], "unsigned");
    c.ok(["add", unsigned.to_str().unwrap(), "--insecure"]);
    assert_eq!(c.list().len(), 1);

    // Revoked: refused even though it was trusted.
    b.ok(["key", "revoke", "builder"]);
    let again = scratch.join("again.npk");
    pack(&a, &specs[1], &again, &["--key", "builder"]);
    b.ok(["remove", &specs[1]]);
    add_refused(&b, &again, &[], "revoked");
    let list = b.json(["key", "list"]);
    assert_eq!(list[0]["revoked"], true, "{list}");
    b.fails_with(
        &[EXIT_ERROR],
        ["key", "trust", key.to_str().unwrap(), "--for", "packages"],
    );
}

/// Offsets worth damaging: the header, the first block's header, table and
/// payload, the body, each manifest field, the signature and the end mark.
fn tamper_offsets(bytes: &[u8]) -> Vec<(usize, &'static str)> {
    let len = bytes.len();
    let manifest = len - 264;
    let body_offset =
        u64::from_le_bytes(bytes[manifest + 64..manifest + 72].try_into().unwrap()) as usize;
    vec![
        (0, "magic"),
        (9, "version"),
        (20, "header reserved"),
        (32, "block magic"),
        (40, "block chunk count"),
        (32 + 32 + 5, "block table"),
        ((32 + body_offset) / 2, "block payload"),
        (body_offset - 1, "last block byte"),
        (body_offset + 3, "body"),
        ((body_offset + manifest) / 2, "body middle"),
        (manifest + 2, "manifest magic"),
        (manifest + 20, "manifest signer"),
        (manifest + 50, "manifest counter"),
        (manifest + 60, "manifest created"),
        (manifest + 70, "manifest body offset"),
        (manifest + 90, "manifest content hash"),
        (manifest + 120, "manifest root hash"),
        (manifest + 150, "manifest body hash"),
        (manifest + 180, "manifest reserved"),
        (manifest + 200, "signature"),
        (len - 3, "end magic"),
    ]
}

#[test]
fn altered_or_truncated_archives_are_refused() {
    let scratch = Scratch::new("npk-tamper");
    let (a, specs) = packing_store();
    let good = scratch.join("good.npk");
    let hello = specs.iter().find(|s| s.starts_with("hello/")).unwrap();
    pack(&a, hello, &good, &["--key", "builder"]);
    let bytes = fs::read(&good).unwrap();
    let b = Store::init();
    b.ok([
        "key",
        "trust",
        public_key_file(&a).to_str().unwrap(),
        "--for",
        "packages",
    ]);

    for (offset, what) in tamper_offsets(&bytes) {
        let mut bad = bytes.clone();
        bad[offset] ^= 0x01;
        let file = scratch.join(format!("flip-{offset}.npk"));
        fs::write(&file, &bad).unwrap();
        let before = b.history().len();
        let run = b.run(["add", file.to_str().unwrap()]);
        assert!(
            run.code() == Some(EXIT_ERROR) && !run.panicked(),
            "flipping a byte of the {what} (offset {offset}) must be refused:\n{run}"
        );
        assert_eq!(
            b.history().len(),
            before,
            "{what}: refused add changed the store"
        );
    }
    // Flips in the data are caught by the chunk hashes even with --insecure.
    let offsets = tamper_offsets(&bytes);
    for (offset, what) in offsets
        .iter()
        .filter(|(_, w)| w.starts_with("block payload") || w.starts_with("body"))
    {
        let mut bad = bytes.clone();
        bad[*offset] ^= 0x01;
        let file = scratch.join(format!("insecure-{offset}.npk"));
        fs::write(&file, &bad).unwrap();
        let run = b.run(["add", file.to_str().unwrap(), "--insecure"]);
        assert!(
            run.code() == Some(EXIT_ERROR) && !run.panicked(),
            "--insecure must still refuse damaged {what}:\n{run}"
        );
    }
    for cut in [
        0,
        10,
        31,
        32,
        100,
        bytes.len() / 2,
        bytes.len() - 265,
        bytes.len() - 1,
    ] {
        let file = scratch.join(format!("cut-{cut}.npk"));
        fs::write(&file, &bytes[..cut]).unwrap();
        let run = b.run(["add", file.to_str().unwrap(), "--insecure"]);
        assert!(
            run.code() == Some(EXIT_ERROR) && !run.panicked(),
            "an archive cut at {cut} bytes must be refused:\n{run}"
        );
    }
    assert!(b.list().is_empty());
    b.ok(["add", good.to_str().unwrap()]);
    b.assert_verify_clean("after the intact archive");
}

/// Adds a one-program package `name/version` (bin/NAME prints its version)
/// built from a directory.
fn add_app(store: &Store, scratch: &Scratch, name: &str, version: &str) {
    let dir = scratch.join(format!("src-{name}-{version}"));
    let program = dir.join("bin").join(name);
    write_file(
        &program,
        format!("#!/bin/sh\necho {name} {version}\n").as_bytes(),
    );
    chmod(&program, 0o755);
    store.ok([
        OsString::from("add"),
        dir.into_os_string(),
        "--name".into(),
        name.into(),
        "--version".into(),
        version.into(),
    ]);
}

/// A vendor's store holding `apps` (name, version), its key `vendor`, and
/// each app packed and signed as `NAME-VERSION.npk` in `scratch`.
fn vendor_packages(scratch: &Scratch, apps: &[(&str, &str)]) -> (Store, Vec<PathBuf>) {
    let vendor = Store::init();
    vendor.ok(["key", "generate", "vendor"]);
    let files = apps
        .iter()
        .map(|(name, version)| {
            add_app(&vendor, scratch, name, version);
            let file = scratch.join(format!("{name}-{version}.npk"));
            pack(
                &vendor,
                &format!("{name}/{version}"),
                &file,
                &["--key", "vendor"],
            );
            file
        })
        .collect();
    (vendor, files)
}

fn trust(store: &Store, key: &Path, extra: &[&str]) {
    let mut args = vec!["key", "trust", key.to_str().unwrap()];
    args.extend_from_slice(extra);
    store.ok(&args);
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The review's reproduction: a vendor key trusted for its `.npk`s ships a
/// *system image*; `nip add` of it replaced the whole live set. Now `nip
/// add` refuses images whoever signed them, and `nexus switch` refuses an
/// image signed by a key trusted for packages only.
#[test]
fn an_image_signed_by_a_package_key_never_replaces_the_system() {
    let scratch = Scratch::new("npk-kind");
    let vendor = Store::init();
    add_app(&vendor, &scratch, "vendortool", "1");
    vendor.ok(["key", "generate", "vendor"]);
    let image = scratch.join("vendortool-1.npk");
    let out = nexus(
        vendor.path(),
        ["snapshot", "--key", "vendor", "-o", image.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", show(&out));

    let target = Store::init();
    add_app(&target, &scratch, "appa", "1");
    add_app(&target, &scratch, "appa", "2");
    let key = public_key_file(&vendor);
    trust(&target, &key, &["--for", "packages"]);
    let before = target.state();
    add_refused(&target, &image, &[], "a system image, not a package");
    target.assert_unchanged(&before, "nip add of an image");
    let run = target.fails_with(&[EXIT_ERROR], ["add", image.to_str().unwrap()]);
    assert!(run.stderr.contains("nexus switch"), "no hint:\n{run}");

    let out = nexus(target.path(), ["switch", image.to_str().unwrap()]);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("not trusted to sign images"),
        "{}",
        show(&out)
    );
    target.assert_unchanged(&before, "nexus switch to an image of a package key");
    // Trusted for images as well: still never through `nip add`.
    trust(&target, &key, &["--for", "images"]);
    add_refused(&target, &image, &[], "a system image, not a package");
    target.assert_unchanged(&before, "nip add of an image by an image key");
    // And a package is not a system: `nexus switch` refuses it.
    let package = scratch.join("appa.npk");
    target.ok(["key", "generate", "admin"]);
    pack(&target, "appa/1", &package, &["--key", "admin"]);
    let out = nexus(target.path(), ["switch", package.to_str().unwrap()]);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("a package, not a system image"),
        "{}",
        show(&out)
    );
    target.assert_unchanged(&before, "nexus switch to a package");
}

/// A package key limited to `vendor*` signs `openssh`: refused, also when
/// its own package is renamed to `openssh` on the way in.
#[test]
fn a_package_key_signs_only_the_apps_it_is_trusted_for() {
    let scratch = Scratch::new("npk-apps");
    let (vendor, files) = vendor_packages(&scratch, &[("vendortool", "1"), ("openssh", "9.9")]);
    let [tool, ssh] = &files[..] else {
        unreachable!()
    };

    let target = Store::init();
    let key = public_key_file(&vendor);
    trust(
        &target,
        &key,
        &["--for", "packages", "--apps", "vendor*,acme-?"],
    );
    let before = target.state();
    add_refused(&target, ssh, &[], "trusted only for Apps vendor*,acme-?");
    add_refused(
        &target,
        tool,
        &["--name", "openssh", "--version", "9.9"],
        "package of App openssh",
    );
    target.assert_unchanged(&before, "packages outside the key's Apps");
    target.ok(["add", tool.to_str().unwrap()]);
    assert!(target.listed("vendortool", "1").is_some());
    let keys = target.json(["key", "list"]);
    assert_eq!(keys[0]["packages"]["apps"][0], "vendor*", "{keys}");
    assert_eq!(keys[0]["images"], serde_json::Value::Null, "{keys}");
    // --apps belongs to package keys: a usage error for an image key.
    target.fails_with(
        &[2],
        [
            "key",
            "trust",
            key.to_str().unwrap(),
            "--for",
            "images",
            "--apps",
            "x",
        ],
    );
}

/// An old, legitimately signed package replayed to bring back what a newer
/// one fixed: refused unless --allow-downgrade (Debian ordering: 1.10 is
/// newer than 1.9).
#[test]
fn an_older_signed_package_does_not_become_current() {
    let scratch = Scratch::new("npk-downgrade");
    let (vendor, files) = vendor_packages(&scratch, &[("tool", "1.9"), ("tool", "1.10")]);
    let [old, new] = &files[..] else {
        unreachable!()
    };

    let target = Store::init();
    trust(&target, &public_key_file(&vendor), &["--for", "packages"]);
    target.ok(["add", new.to_str().unwrap()]);
    let before = target.state();
    add_refused(&target, old, &[], "would downgrade tool");
    let run = target.fails_with(&[EXIT_ERROR], ["add", old.to_str().unwrap()]);
    assert!(run.stderr.contains("--allow-downgrade"), "no hint:\n{run}");
    target.assert_unchanged(&before, "an older package");
    target.ok(["add", old.to_str().unwrap(), "--allow-downgrade"]);
    let current: Vec<String> = target
        .list()
        .into_iter()
        .filter(|p| p.current)
        .map(|p| p.spec())
        .collect();
    assert_eq!(current, ["tool/1.9"]);
    // Going back up needs nothing.
    target.ok(["remove", "tool/1.10"]);
    target.ok(["add", new.to_str().unwrap()]);
}

/// A package whose signature expired is refused unless --allow-expired.
#[test]
fn expired_packages_are_refused() {
    let scratch = Scratch::new("npk-expired");
    let vendor = Store::init();
    add_app(&vendor, &scratch, "tool", "1");
    vendor.ok(["key", "generate", "vendor"]);
    let expired = scratch.join("expired.npk");
    let run = vendor
        .command([
            "pack",
            "tool/1",
            "-o",
            expired.to_str().unwrap(),
            "--key",
            "vendor",
            "--expires-in",
            "1d",
        ])
        .env("SOURCE_DATE_EPOCH", (now() - 2 * 86_400).to_string())
        .output()
        .unwrap();
    assert!(run.status.success(), "{run:?}");
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("already past"),
        "packing an archive born expired warns: {run:?}"
    );
    let fresh = scratch.join("fresh.npk");
    pack(
        &vendor,
        "tool/1",
        &fresh,
        &["--key", "vendor", "--expires-in", "1d"],
    );

    let target = Store::init();
    trust(&target, &public_key_file(&vendor), &["--for", "packages"]);
    let before = target.state();
    add_refused(&target, &expired, &[], "expired");
    target.assert_unchanged(&before, "an expired package");
    target.ok(["add", expired.to_str().unwrap(), "--allow-expired"]);
    target.ok(["remove", "tool"]);
    target.ok(["add", fresh.to_str().unwrap()]);
}

/// A secret key others can read signs for them too: refused, as ssh
/// refuses such keys, until it is private again.
#[test]
fn secret_keys_others_can_read_are_not_used() {
    let scratch = Scratch::new("npk-secret");
    let store = Store::init();
    add_app(&store, &scratch, "tool", "1");
    store.ok(["key", "generate", "k"]);
    let secret = store.path().join("keys/secret/k.key");
    let out = scratch.join("tool.npk");
    for mode in [0o644, 0o640, 0o606] {
        fs::set_permissions(&secret, fs::Permissions::from_mode(mode)).unwrap();
        let run = store.fails_with(
            &[EXIT_ERROR],
            ["pack", "tool/1", "-o", out.to_str().unwrap(), "--key", "k"],
        );
        assert!(
            run.stderr.contains("group or others") && run.stderr.contains("chmod 600"),
            "mode {mode:o}:\n{run}"
        );
        assert!(!out.exists());
    }
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    pack(&store, "tool/1", &out, &["--key", "k"]);
}

/// Keys trusted before scopes existed (`KEYS/trusted/ID.pub`, 64-bit ids)
/// keep their meaning — packages of every App, images of the default
/// domain — with a warning naming the way out.
#[test]
fn keys_trusted_in_the_old_layout_keep_working_with_a_warning() {
    let scratch = Scratch::new("npk-legacy");
    let (vendor, files) = vendor_packages(&scratch, &[("tool", "1")]);
    let file = &files[0];
    let key = public_key_file(&vendor);
    let id = key.file_stem().unwrap().to_str().unwrap().to_string();
    assert_eq!(id.len(), 32, "key ids are 128 bits");

    let target = Store::init();
    let old = target.path().join("keys/trusted");
    fs::create_dir_all(&old).unwrap();
    fs::copy(&key, old.join(format!("{}.pub", &id[..16]))).unwrap();
    let run = target.ok(["add", file.to_str().unwrap()]);
    assert!(run.stderr.contains("old key store layout"), "{run}");
    let keys = target.json(["key", "list"]);
    assert_eq!(keys[0]["legacy"], true, "{keys}");
    assert_eq!(keys[0]["images"]["domain"], "images", "{keys}");
    // Named by its old id, revoked: gone from the old layout too.
    target.ok(["key", "revoke", &id[..16]]);
    assert!(fs::read_dir(&old).unwrap().next().is_none());
}
