//! The store's side of the trust boundary (issue 13, items 1, 6, 7 and 8;
//! security review H2, M2, M3, M6, L1, L5, L6), through the real `nip`:
//!
//! * as root, a directory someone else owns or can write to is refused
//!   unless trusted, and even then its files bring no setuid bit, file
//!   capability or group 0 unless asked (the race itself is reproduced in
//!   `store/tests/source_race.rs`);
//! * packs, catalog and locks are private to the store's owner, an older
//!   store is made private when opened, and a held lock makes `nip add`
//!   fail in time, naming the holder;
//! * an 8.9 KB-class pacman package of 3,000 entries under a
//!   2,000-component path is refused at once;
//! * `nip export` restores no privileges unless asked, honours
//!   `--no-same-owner`/`--no-xattrs`, and refuses a damaged name;
//! * `nip verify` names a package whose mode was flipped in the catalog;
//! * App names with Unicode format characters are refused.
//!
//! These tests need root (files of other owners, `nobody`), as CI runs them.

use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nexus_integration_tests::archive::{TarEntry, pacman};
use nexus_integration_tests::fixtures::{Scratch, cat_as_nobody, chmod, lchown, write_file};
use nexus_integration_tests::nip::{EXIT_DAMAGED, EXIT_ERROR};
use nexus_integration_tests::{Store, root_or_skip};

const NOBODY: u32 = 65534;

/// The value of `security.capability` for `cap_net_raw+ep`.
fn capability() -> Vec<u8> {
    nexus_integration_tests::crafted::cap_net_raw_ep()
}

/// A tree owned by `nobody`: a setuid program with a capability, a file in
/// group 0, a directory anyone may write to.
fn foreign_tree(dir: &Path) {
    write_file(&dir.join("bin/tool"), b"#!/bin/sh\necho tool\n");
    write_file(&dir.join("etc/tool.conf"), b"setting = 1\n");
    std::fs::create_dir_all(dir.join("var/spool")).unwrap();
    for p in ["", "bin", "etc", "var", "var/spool", "bin/tool"] {
        lchown(&dir.join(p), NOBODY, NOBODY);
    }
    lchown(&dir.join("etc/tool.conf"), NOBODY, 0);
    // After chown, which clears them.
    chmod(&dir.join("bin/tool"), 0o4755);
    chmod(&dir.join("var/spool"), 0o777);
    xattr::set(dir.join("bin/tool"), "security.capability", &capability()).unwrap();
}

/// `nip files` row of `path` in `spec`.
fn file(store: &Store, spec: &str, path: &str) -> nexus_integration_tests::nip::FileEntry {
    store
        .files(spec)
        .into_iter()
        .find(|f| f.path == path)
        .unwrap_or_else(|| panic!("{spec} has no {path}"))
}

#[test]
fn as_root_foreign_trees_need_trust_and_lose_privileges() {
    if !root_or_skip("as_root_foreign_trees_need_trust_and_lose_privileges") {
        return;
    }
    let scratch = Scratch::new("trust-foreign");
    let store = Store::init();
    let tree = scratch.join("pkgs/theirs/1");
    foreign_tree(&tree);
    let before = store.state();

    let run = store.fails_with(&[EXIT_ERROR], [OsStr::new("add"), tree.as_os_str()]);
    assert!(
        run.stderr.contains("uid 65534") && run.stderr.contains("--trust-source-owner"),
        "the refusal must say who owns the tree and how to trust it:\n{run}"
    );
    store.assert_unchanged(&before, "after refusing a tree nobody owns");

    // Owned by root but writable by others: refused too.
    let writable = scratch.join("pkgs/writable/1");
    write_file(&writable.join("bin/tool"), b"#!/bin/sh\n");
    chmod(&writable.join("bin"), 0o777);
    let run = store.fails_with(&[EXIT_ERROR], [OsStr::new("add"), writable.as_os_str()]);
    assert!(run.stderr.contains("mode 0777"), "{run}");
    store.assert_unchanged(&before, "after refusing a world-writable tree");

    // Trusted: imported, without the privileges nobody could grant.
    store.ok([
        OsStr::new("add"),
        tree.as_os_str(),
        OsStr::new("--trust-source-owner"),
    ]);
    let tool = file(&store, "theirs/1", "bin/tool");
    assert_eq!((tool.mode, tool.uid, tool.gid), (0o755, NOBODY, NOBODY));
    assert!(tool.xattrs.is_empty(), "{:?}", tool.xattrs);
    let conf = file(&store, "theirs/1", "etc/tool.conf");
    assert_eq!(
        (conf.uid, conf.gid),
        (NOBODY, NOBODY),
        "group 0 must not pass"
    );
    assert_eq!(file(&store, "theirs/1", "var/spool").mode, 0o777);

    // Asked for: kept.
    let again = scratch.join("pkgs/theirs/2");
    foreign_tree(&again);
    store.ok([
        OsStr::new("add"),
        again.as_os_str(),
        OsStr::new("--trust-source-owner"),
        OsStr::new("--keep-source-privileges"),
    ]);
    let tool = file(&store, "theirs/2", "bin/tool");
    assert_eq!((tool.mode, tool.uid), (0o4755, NOBODY));
    assert!(
        tool.xattrs.contains_key("security.capability"),
        "{:?}",
        tool.xattrs
    );
    assert_eq!(file(&store, "theirs/2", "etc/tool.conf").gid, 0);
    store.assert_verify_clean("after trusted imports");
}

fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

#[test]
fn the_store_is_private_to_its_owner() {
    if !root_or_skip("the_store_is_private_to_its_owner") {
        return;
    }
    let scratch = Scratch::new("trust-private");
    let store = Store::init();
    let tree = scratch.join("pkgs/secret/1");
    write_file(&tree.join("etc/key"), b"TOP-SECRET-KEY-MATERIAL\n");
    chmod(&tree.join("etc/key"), 0o600);
    store.ok([OsStr::new("add"), tree.as_os_str()]);

    let root = store.path();
    let packs: Vec<_> = std::fs::read_dir(store.packs_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(!packs.is_empty());
    for dir in [root.to_path_buf(), root.join("packs"), root.join("locks")] {
        assert_eq!(mode_of(&dir), 0o700, "{}", dir.display());
    }
    let mut files = packs.clone();
    files.push(root.join("catalog.db"));
    files.push(root.join("locks/ingest.lock"));
    for f in ["catalog.db-wal", "catalog.db-shm"] {
        if root.join(f).exists() {
            files.push(root.join(f));
        }
    }
    for f in &files {
        assert_eq!(mode_of(f), 0o600, "{}", f.display());
        assert!(!cat_as_nobody(f), "nobody read {}", f.display());
    }

    // A store made before stores were private is made private when its
    // owner opens it.
    for dir in [root.to_path_buf(), root.join("packs"), root.join("locks")] {
        chmod(&dir, 0o755);
    }
    for f in &files {
        chmod(f, 0o644);
    }
    assert!(cat_as_nobody(&packs[0]), "setup: the old store is readable");
    store.ok(["list"]);
    for f in &files {
        assert_eq!(mode_of(f), 0o600, "{} after reopening", f.display());
        assert!(!cat_as_nobody(f), "nobody read {}", f.display());
    }
    assert_eq!(mode_of(root), 0o700);
}

#[test]
fn a_held_lock_fails_add_in_time_naming_the_holder() {
    let scratch = Scratch::new("trust-lock");
    let store = Store::init();
    let tree = scratch.join("pkgs/waits/1");
    write_file(&tree.join("bin/tool"), b"#!/bin/sh\n");
    let lock = store.path().join("locks/ingest.lock");
    // What a user did to jam root's adds: hold the lock forever.
    // -F: flock takes the lock and execs sleep, so killing it frees the lock.
    let mut holder = Command::new("flock")
        .args(["-F", "-x"])
        .arg(&lock)
        .args(["sleep", "60"])
        .spawn()
        .expect("run flock");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lock.exists() {
        assert!(Instant::now() < deadline, "flock never created the lock");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    let before = store.state();
    let run = store.fails_with(
        &[EXIT_ERROR],
        [
            OsStr::new("add"),
            tree.as_os_str(),
            OsStr::new("--lock-timeout"),
            OsStr::new("2"),
        ],
    );
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert!(
        run.elapsed < Duration::from_secs(20),
        "nip add waited {:?}",
        run.elapsed
    );
    assert!(
        run.stderr.contains(&format!("process {}", holder.id())),
        "the error must name the holder (pid {}):\n{run}",
        holder.id()
    );
    store.assert_unchanged(&before, "after a lock timeout");
    store.ok([OsStr::new("add"), tree.as_os_str()]);
}

#[test]
fn a_deep_pacman_package_is_refused_at_once() {
    let scratch = Scratch::new("trust-deep");
    let store = Store::init();
    // The review's package: 3,000 files under one 2,000-component path
    // (about 4 KB, within PATH_MAX); 8.9 KB as .pkg.tar.xz, it cost 362 MB
    // and 37 s to refuse nothing.
    let deep = vec!["a"; 2000].join("/");
    let entries: Vec<TarEntry> = (0..3000)
        .map(|i| TarEntry::file(&format!("{deep}/{i}"), b"", 0o644))
        .collect();
    let package = scratch.join("deep-1-1-any.pkg.tar.zst");
    std::fs::write(&package, pacman("deep", "1-1", &entries)).unwrap();
    eprintln!("{} bytes", std::fs::metadata(&package).unwrap().len());
    let before = store.state();
    let run = store.fails_with(&[EXIT_ERROR], [OsStr::new("add"), package.as_os_str()]);
    assert!(
        run.stderr.contains("path components") && run.stderr.contains("limit of 256"),
        "the error must name the depth limit:\n{run}"
    );
    assert!(
        run.elapsed < Duration::from_secs(10),
        "took {:?}",
        run.elapsed
    );
    store.assert_unchanged(&before, "after refusing a deep package");
}

/// A package with a setuid program, a capability, trusted.* and user.*
/// xattrs and a foreign owner.
fn privileged_package(store: &Store, scratch: &Scratch) {
    let tree = scratch.join("pkgs/priv/1");
    write_file(&tree.join("bin/tool"), b"#!/bin/sh\necho tool\n");
    lchown(&tree.join("bin/tool"), 0, 0);
    chmod(&tree.join("bin/tool"), 0o4755);
    xattr::set(tree.join("bin/tool"), "security.capability", &capability()).unwrap();
    xattr::set(tree.join("bin/tool"), "trusted.overlay.opaque", b"y").unwrap();
    xattr::set(tree.join("bin/tool"), "user.note", b"kept").unwrap();
    write_file(&tree.join("share/data"), b"data\n");
    lchown(&tree.join("share/data"), 1234, 5678);
    store.ok([
        OsStr::new("add"),
        tree.as_os_str(),
        OsStr::new("--trust-source-owner"),
    ]);
}

#[test]
fn export_restores_no_privileges_unless_asked() {
    if !root_or_skip("export_restores_no_privileges_unless_asked") {
        return;
    }
    let scratch = Scratch::new("trust-export");
    let store = Store::init();
    privileged_package(&store, &scratch);
    let names = |p: &Path| -> Vec<String> {
        let mut n: Vec<String> = xattr::list(p)
            .unwrap()
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        n.sort();
        n
    };

    let plain = scratch.join("plain");
    store.ok([
        OsStr::new("export"),
        OsStr::new("priv/1"),
        plain.as_os_str(),
    ]);
    let tool = plain.join("bin/tool");
    assert_eq!(mode_of(&tool), 0o755, "setuid restored by default");
    assert_eq!(names(&tool), ["user.note"]);
    let data = std::fs::metadata(plain.join("share/data")).unwrap();
    assert_eq!((data.uid(), data.gid()), (1234, 5678));

    let all = scratch.join("all");
    store.export("priv/1", &all);
    assert_eq!(mode_of(&all.join("bin/tool")), 0o4755);
    assert_eq!(
        names(&all.join("bin/tool")),
        ["security.capability", "trusted.overlay.opaque", "user.note"]
    );

    let bare = scratch.join("bare");
    store.ok([
        OsStr::new("export"),
        OsStr::new("priv/1"),
        bare.as_os_str(),
        OsStr::new("--no-same-owner"),
        OsStr::new("--no-xattrs"),
    ]);
    assert!(names(&bare.join("bin/tool")).is_empty());
    let data = std::fs::metadata(bare.join("share/data")).unwrap();
    assert_eq!((data.uid(), data.gid()), (0, 0), "--no-same-owner");
}

/// Runs SQL on the store's catalog (as a damaged disk or a tamperer would).
fn tamper(store: &Store, sql: &str) {
    let conn = rusqlite::Connection::open(store.path().join("catalog.db")).unwrap();
    let changed = conn.execute(sql, []).unwrap();
    assert!(changed > 0, "{sql} changed nothing");
}

#[test]
fn export_refuses_a_damaged_name() {
    let scratch = Scratch::new("trust-export-name");
    let store = Store::init();
    let tree = scratch.join("pkgs/named/1");
    write_file(&tree.join("share/data"), b"data\n");
    store.ok([OsStr::new("add"), tree.as_os_str()]);
    tamper(
        &store,
        "UPDATE dirents SET name = CAST('../escaped' AS BLOB) WHERE name = CAST('data' AS BLOB)",
    );
    let dest = scratch.join("out/dest");
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    let run = store.fails_with(
        &[EXIT_ERROR],
        [
            OsStr::new("export"),
            OsStr::new("named/1"),
            dest.as_os_str(),
        ],
    );
    assert!(run.stderr.contains("../escaped"), "{run}");
    assert!(
        !scratch.join("out/escaped").exists(),
        "written outside the export"
    );
}

#[test]
fn verify_names_a_package_whose_metadata_was_flipped() {
    let scratch = Scratch::new("trust-verify");
    let store = Store::init();
    let tree = scratch.join("pkgs/flipped/1");
    write_file(&tree.join("bin/tool"), b"#!/bin/sh\n");
    chmod(&tree.join("bin/tool"), 0o755);
    let other = scratch.join("pkgs/intact/1");
    write_file(&other.join("bin/tool"), b"#!/bin/sh\necho intact\n");
    store.ok([OsStr::new("add"), tree.as_os_str(), other.as_os_str()]);
    store.assert_verify_clean("before the flip");

    // A setuid bit turned on behind the store's back.
    tamper(
        &store,
        "UPDATE inodes SET mode = 2541 WHERE mode = 493 AND kind = 2 AND package = \
         (SELECT id FROM packages WHERE name = 'flipped')",
    );
    let run = store.run(["verify"]);
    assert_eq!(run.code(), Some(EXIT_DAMAGED), "{run}");
    let out = String::from_utf8_lossy(&run.stdout);
    assert!(out.contains("damaged package: flipped/1"), "{run}");
    assert!(!out.contains("intact/1"), "{run}");
    let report = store.run(["verify", "--json"]).json();
    assert_eq!(report["damaged_packages"][0]["package"], "flipped/1");
}

#[test]
fn app_names_with_format_characters_are_refused() {
    let scratch = Scratch::new("trust-names");
    let store = Store::init();
    let tree = scratch.join("pkgs/spoof/1");
    write_file(&tree.join("bin/tool"), b"#!/bin/sh\n");
    let before = store.state();
    for name in ["evil\u{202E}txt", "zero\u{200B}width", "\u{FEFF}bom"] {
        let run = store.fails_with(
            &[EXIT_ERROR],
            [
                OsStr::new("add"),
                tree.as_os_str(),
                OsStr::new("--name"),
                OsStr::new(name),
                OsStr::new("--version"),
                OsStr::new("1"),
            ],
        );
        assert!(run.stderr.contains("format characters"), "{run}");
    }
    store.assert_unchanged(&before, "after refusing spoofing names");
}
