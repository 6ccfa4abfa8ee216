//! Round trip: real package trees (fetched with `apt-get download`, unpacked
//! with `dpkg-deb -x`) are added to a store and read back through it — with
//! `nip export`, `nip files --json` and `nip cat` — and every byte, mode,
//! owner, mtime, symlink, hard link and xattr must be identical.

use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nexus_integration_tests::crafted::build_crafted_tree;
use nexus_integration_tests::debs::{Unpacked, fetch_and_unpack};
use nexus_integration_tests::fixtures::{Scratch, copy_tree};
use nexus_integration_tests::tree::{
    Kind, Snapshot, assert_files_json_match, assert_same_tree, snapshot,
};
use nexus_integration_tests::{Store, fetch_debs, is_root, unpack_deb};

/// Real packages: tiny (hello), with shared libraries and their symlinks
/// (libjq1, libonig5), a static binary (busybox-static), many files
/// (coreutils), hard links (perl-base: `perl` and `perl5.36.0`) and a larger
/// interpreter tree (python3.11-minimal).
const PACKAGES: &[&str] = &[
    "hello",
    "jq",
    "libjq1",
    "libonig5",
    "busybox-static",
    "coreutils",
    "perl-base",
    "python3.11-minimal",
];

/// Checks `nip cat` on the largest file of the package and on up to `sample`
/// others spread over the tree: the bytes must be the source's.
fn check_cat(store: &Store, spec: &str, snap: &Snapshot, sample: usize) {
    let mut files: Vec<(&PathBuf, u64)> = snap.files().map(|(p, n)| (p, n.size)).collect();
    assert!(!files.is_empty(), "{spec}: the source has no regular files");
    files.sort_by_key(|&(p, size)| (std::cmp::Reverse(size), p.clone()));
    let step = (files.len() / sample.max(1)).max(1);
    let chosen = std::iter::once(files[0]).chain(files.iter().copied().step_by(step).take(sample));
    for (rel, _) in chosen {
        let run = store.cat(spec, rel.as_os_str());
        assert!(run.success(), "cat of an intact file failed:\n{run}");
        let expected = fs::read(snap.abs(rel)).unwrap();
        assert!(
            run.stdout == expected,
            "`nip cat {spec} {}` returned {} bytes that differ from the source's {} bytes",
            rel.display(),
            run.stdout.len(),
            expected.len()
        );
    }
}

/// Exports `spec` and compares it with `source` in every respect, then
/// checks `nip files --json` and `nip cat` against the source too.
fn check_round_trip(store: &Store, spec: &str, source: &Path, export_root: &Path) {
    fs::create_dir_all(export_root).unwrap();
    let dest = export_root.join(spec.replace('/', "@"));
    store.export(spec, &dest);
    assert_same_tree(source, &dest, &format!("nip export {spec}"));
    let snap = snapshot(source);
    assert_files_json_match(&snap, &store.files(spec), &format!("nip files {spec}"));
    check_cat(store, spec, &snap, 10);
}

#[test]
fn real_packages_round_trip() {
    let scratch = Scratch::new("roundtrip");
    let pkgs: Vec<Unpacked> = fetch_and_unpack(PACKAGES, &scratch.join("src"));
    let store = Store::init();
    let generations_before = store.history();

    let mut args = vec![OsString::from("add")];
    args.extend(pkgs.iter().map(|p| p.dir.clone().into_os_string()));
    store.ok(&args);

    // All paths form one transaction: exactly one new generation holding all.
    let history = store.history();
    assert_eq!(
        history.len(),
        generations_before.len() + 1,
        "one `nip add` of {} packages must create exactly one generation; history: {history:?}",
        pkgs.len()
    );
    let current = history.last().unwrap();
    assert_eq!(
        current.packages,
        pkgs.len() as u64,
        "the new generation should hold every added package: {current:?}"
    );

    let listed = store.list();
    let mut hashes = std::collections::BTreeSet::new();
    for p in &pkgs {
        let entry = listed
            .iter()
            .find(|l| l.name == p.name && l.version == p.version)
            .unwrap_or_else(|| panic!("{} is missing from `nip list`: {listed:?}", p.spec()));
        assert!(
            entry.current,
            "{} is the only version of its App, so it must be current: {entry:?}",
            p.spec()
        );
        assert!(
            entry.tree_hash.len() == 64 && entry.tree_hash.bytes().all(|b| b.is_ascii_hexdigit()),
            "{}: tree_hash is not 64 hex digits: {:?}",
            p.spec(),
            entry.tree_hash
        );
        assert!(
            hashes.insert(entry.tree_hash.clone()),
            "two different packages share tree hash {}",
            entry.tree_hash
        );
    }

    for p in &pkgs {
        check_round_trip(&store, &p.spec(), &p.dir, &scratch.join("export"));
    }

    // The real trees must actually exercise what we claim to test.
    let perl = pkgs.iter().find(|p| p.name == "perl-base").unwrap();
    assert!(
        snapshot(&perl.dir).hardlink_groups() > 0,
        "perl-base no longer ships hard links; pick another package to cover them"
    );
    let libjq = pkgs.iter().find(|p| p.name == "libjq1").unwrap();
    assert!(
        snapshot(&libjq.dir)
            .nodes
            .values()
            .any(|n| n.kind == Kind::Symlink),
        "libjq1 no longer ships symlinks; pick another package to cover them"
    );
    store.assert_verify_clean("after adding real packages");
}

#[test]
fn crafted_metadata_round_trips() {
    let scratch = Scratch::new("crafted");
    let hello = &fetch_debs(&["hello"])[0];
    let base = scratch.join("base");
    unpack_deb(hello, &base);
    let tree = scratch.join("crafted");
    copy_tree(&base, &tree);
    let skipped = build_crafted_tree(&tree);
    if !skipped.is_empty() {
        eprintln!("not running as root: not covering {skipped:?}");
    }

    // The source must really have what we test, or the test proves nothing.
    let snap = snapshot(&tree);
    let node = |rel: &str| {
        snap.nodes
            .get(Path::new(rel))
            .unwrap_or_else(|| panic!("crafted tree lacks {rel}"))
    };
    assert_eq!(
        node("usr/bin/hello-suid").mode,
        0o4755,
        "setuid bit did not stick in the source"
    );
    assert_eq!(node("perm/setgid-dir").mode, 0o2775);
    assert_eq!(node("perm/sticky-dir").mode, 0o1777);
    assert!(node("usr/share/doc/hello/copyright").xattrs.len() >= 2);
    assert!(snap.hardlink_groups() >= 2);
    if is_root() {
        assert!(
            node("usr/bin/hello")
                .xattrs
                .contains_key(std::ffi::OsStr::new("security.capability"))
        );
        assert_eq!(
            (node("data/text.txt").uid, node("data/text.txt").gid),
            (1234, 5678)
        );
    }

    let store = Store::init();
    store.ok([
        OsString::from("add"),
        tree.clone().into_os_string(),
        "--name".into(),
        "crafted".into(),
        "--version".into(),
        "1".into(),
        // Files of other owners and a group-writable directory, kept as
        // they are (the crafted tree's whole point).
        "--trust-source-owner".into(),
        "--keep-source-privileges".into(),
    ]);
    check_round_trip(&store, "crafted/1", &tree, &scratch.join("export"));

    // The non-UTF-8 name can be read back by its byte-exact path.
    let odd_rel = Path::new(std::ffi::OsStr::from_bytes(b"names/odd-\xff\xfe"));
    let run = store.cat("crafted/1", odd_rel.as_os_str());
    assert!(run.success(), "cat of a non-UTF-8 path failed:\n{run}");
    assert_eq!(run.stdout, b"a file whose name is not UTF-8\n");

    // Same tree under another name: the tree hash is a function of the tree.
    let copy = scratch.join("copy");
    copy_tree(&tree, &copy);
    store.ok([
        OsString::from("add"),
        copy.into_os_string(),
        "--name".into(),
        "crafted-copy".into(),
        "--version".into(),
        "1".into(),
        // Files of other owners and a group-writable directory, kept as
        // they are (the crafted tree's whole point).
        "--trust-source-owner".into(),
        "--keep-source-privileges".into(),
    ]);
    let a = store.listed("crafted", "1").expect("crafted/1 not listed");
    let b = store
        .listed("crafted-copy", "1")
        .expect("crafted-copy/1 not listed");
    assert_eq!(
        a.tree_hash, b.tree_hash,
        "identical trees (cp -a) got different tree hashes"
    );
    store.assert_verify_clean("after adding the crafted tree");
}
