//! `.npk`, the signed native package: packing real Debian packages in one
//! store, importing them into another with the same tree hash, and refusing
//! unsigned, untrusted, revoked, altered or truncated archives without
//! changing the store.

use std::fs;
use std::path::{Path, PathBuf};

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

fn public_key_file(store: &Store) -> PathBuf {
    let dir = store.path().join("keys/trusted");
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
    b.ok(["key", "trust", key.to_str().unwrap()]);
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
    b.fails_with(&[EXIT_ERROR], ["key", "trust", key.to_str().unwrap()]);
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
    b.ok(["key", "trust", public_key_file(&a).to_str().unwrap()]);

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
