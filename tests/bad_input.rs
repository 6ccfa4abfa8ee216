//! Bad input: missing or non-directory paths, unreadable and special files,
//! invalid names and versions, usage errors, conflicting re-adds. Each must be
//! refused with a clear error (exit 1, or 2 for usage errors; never a panic)
//! and leave the store exactly as it was: same `nip list`, same
//! `nip history`, clean `nip verify`.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nexus_integration_tests::fixtures::{
    Scratch, chmod, copy_tree, mkfifo, mknod_char, write_file,
};
use nexus_integration_tests::nip::{EXIT_ERROR, EXIT_USAGE};
use nexus_integration_tests::{Store, is_root};

/// Writes a small, valid package tree.
fn small_tree(dir: &Path, flavour: &str) {
    write_file(
        &dir.join("bin/tool"),
        format!("#!/bin/sh\necho {flavour}\n").as_bytes(),
    );
    chmod(&dir.join("bin/tool"), 0o755);
    write_file(
        &dir.join("share/doc/README"),
        format!("the {flavour} package\n").as_bytes(),
    );
}

/// A store that already holds `base/1`, so that "unchanged" means something.
fn populated_store(scratch: &Scratch) -> Store {
    let store = Store::init();
    let base = scratch.join("pkgs/base/1");
    small_tree(&base, "base");
    store.ok([OsStr::new("add"), base.as_os_str()]);
    assert!(
        store.listed("base", "1").is_some(),
        "setup: base/1 not listed after adding it"
    );
    store
}

/// `add` arguments for `--name NAME --version VERSION DIR`.
fn add_named(dir: &Path, name: impl AsRef<OsStr>, version: impl AsRef<OsStr>) -> Vec<OsString> {
    vec![
        "add".into(),
        dir.as_os_str().to_owned(),
        "--name".into(),
        name.as_ref().to_owned(),
        "--version".into(),
        version.as_ref().to_owned(),
    ]
}

#[test]
fn missing_directory_is_refused() {
    let scratch = Scratch::new("bad-missing");
    let store = populated_store(&scratch);
    let before = store.state();
    let missing = scratch.join("does-not-exist/App/1");
    let run = store.fails_with(&[EXIT_ERROR], [OsStr::new("add"), missing.as_os_str()]);
    assert!(
        run.stderr.contains("does-not-exist"),
        "the error must name the missing path:\n{run}"
    );
    store.assert_unchanged(&before, "after adding a missing directory");

    let run = store.fails_with(&[EXIT_ERROR], add_named(&missing, "app", "1"));
    assert!(
        run.stderr.contains("does-not-exist"),
        "the error must name the missing path:\n{run}"
    );
    store.assert_unchanged(&before, "after adding a missing directory by name");
}

#[test]
fn regular_file_instead_of_directory_is_refused() {
    let scratch = Scratch::new("bad-file");
    let store = populated_store(&scratch);
    let before = store.state();
    let file = scratch.join("pkgs/App/1");
    write_file(&file, b"not a directory\n");
    let run = store.fails_with(&[EXIT_ERROR], [OsStr::new("add"), file.as_os_str()]);
    assert!(
        run.stderr.contains(&*file.to_string_lossy()),
        "the error must name the path:\n{run}"
    );
    store.assert_unchanged(&before, "after adding a regular file");
    store.fails_with(&[EXIT_ERROR], add_named(&file, "app", "1"));
    store.assert_unchanged(&before, "after adding a regular file by name");
}

/// A package file swapped for a FIFO (in a directory its owner may write,
/// while root runs `nip add`) must be refused at once: opening it plainly
/// would wait for a writer forever, holding the store's write lock. A
/// device is refused too rather than read without end.
#[test]
fn a_package_file_that_is_a_fifo_or_a_device_is_refused_at_once() {
    let scratch = Scratch::new("bad-fifo-package");
    let store = populated_store(&scratch);
    let before = store.state();
    let fifo = scratch.join("downloads/app_1_all.deb");
    std::fs::create_dir_all(scratch.join("downloads")).unwrap();
    mkfifo(&fifo);
    for path in [fifo.as_path(), Path::new("/dev/zero")] {
        for args in [
            vec![OsString::from("add"), path.as_os_str().to_owned()],
            add_named(path, "app", "1"),
        ] {
            let run = store.fails_with(&[EXIT_ERROR], &args);
            assert!(
                run.stderr.contains(&*path.to_string_lossy())
                    && run.stderr.contains("not a regular file"),
                "the error must name the path and what is wrong with it:\n{run}"
            );
        }
    }
    store.assert_unchanged(&before, "after adding a FIFO and a device");
}

/// The `ar` crate the importer used panicked on a `.deb` of 76 bytes
/// whose member name referred into a long-name table it did not have, and
/// allocated whatever size a `//` table declared (9.3 GB) before reading it.
#[test]
fn a_deb_with_ar_long_name_tables_is_refused_without_a_crash() {
    let scratch = Scratch::new("bad-ar-names");
    let store = populated_store(&scratch);
    let before = store.state();
    std::fs::create_dir_all(scratch.join("downloads")).unwrap();
    for (label, name, size, data) in [
        ("reference", "/999", "4", &b"2.0\n"[..]),
        ("table", "//", "9999999999", &b""[..]),
        ("bsd", "#1/20", "9999999999", &b""[..]),
    ] {
        let mut deb = b"!<arch>\n".to_vec();
        deb.extend(
            format!(
                "{name:<16}{:<12}{:<6}{:<6}{:<8}{size:<10}`\n",
                0, 0, 0, "100644"
            )
            .bytes(),
        );
        deb.extend_from_slice(data);
        let path = scratch.join(format!("downloads/{label}_1_all.deb"));
        std::fs::write(&path, &deb).unwrap();
        let run = store.fails_with(&[EXIT_ERROR], [OsStr::new("add"), path.as_os_str()]);
        assert!(
            run.stderr.contains("long-name tables"),
            "{label}: the error must say what is wrong:\n{run}"
        );
    }
    store.assert_unchanged(&before, "after adding .debs with ar long-name tables");
}

#[test]
fn unreadable_entries_are_refused() {
    if is_root() {
        eprintln!("SKIPPED unreadable_entries_are_refused: root reads files whatever their mode");
        return;
    }
    let scratch = Scratch::new("bad-unreadable");
    let store = populated_store(&scratch);
    let before = store.state();

    let tree = scratch.join("pkgs/secret/1");
    small_tree(&tree, "secret");
    write_file(&tree.join("private/key"), b"secret\n");
    chmod(&tree.join("private/key"), 0o000);
    let run = store.fails_with(&[EXIT_ERROR], [OsStr::new("add"), tree.as_os_str()]);
    assert!(
        run.stderr.contains("private/key"),
        "the error must name the unreadable file:\n{run}"
    );
    store.assert_unchanged(&before, "after adding a tree with an unreadable file");

    chmod(&tree.join("private/key"), 0o644);
    chmod(&tree.join("private"), 0o000);
    let run = store.fails_with(&[EXIT_ERROR], [OsStr::new("add"), tree.as_os_str()]);
    chmod(&tree.join("private"), 0o755);
    assert!(
        run.stderr.contains("private"),
        "the error must name the unreadable directory:\n{run}"
    );
    store.assert_unchanged(&before, "after adding a tree with an unreadable directory");
}

/// The kinds of special file a package tree might contain.
#[derive(Clone, Copy, Debug)]
enum Special {
    Fifo,
    Socket,
    CharDevice,
}

impl Special {
    fn create(self, path: &Path) {
        match self {
            Special::Fifo => mkfifo(path),
            Special::Socket => {
                // The socket file outlives the listener.
                drop(std::os::unix::net::UnixListener::bind(path).unwrap());
            }
            Special::CharDevice => mknod_char(path, 1, 3),
        }
    }
}

#[test]
fn special_files_are_refused_unless_skipped() {
    let scratch = Scratch::new("bad-special");
    let store = populated_store(&scratch);
    let mut kinds = vec![Special::Fifo, Special::Socket];
    if is_root() {
        kinds.push(Special::CharDevice);
    } else {
        eprintln!("not root: not covering device nodes");
    }
    for (i, kind) in kinds.into_iter().enumerate() {
        let before = store.state();
        let name = format!("special{i}");
        let tree = scratch.join(format!("pkgs/{name}/1"));
        small_tree(&tree, &name);
        let special = tree.join("var/run/the-special-one");
        std::fs::create_dir_all(special.parent().unwrap()).unwrap();
        kind.create(&special);

        let run = store.fails_with(&[EXIT_ERROR], [OsStr::new("add"), tree.as_os_str()]);
        assert!(
            run.stderr.contains("var/run/the-special-one"),
            "refusing a {kind:?} must name its path:\n{run}"
        );
        store.assert_unchanged(&before, &format!("after refusing a {kind:?}"));

        store.ok([
            OsStr::new("add"),
            tree.as_os_str(),
            OsStr::new("--skip-special"),
        ]);
        let spec = format!("{name}/1");
        let listed: Vec<String> = store.files(&spec).into_iter().map(|f| f.path).collect();
        assert!(
            !listed.iter().any(|p| p.contains("the-special-one")),
            "--skip-special must leave the {kind:?} out: {listed:?}"
        );
        for wanted in ["bin/tool", "share/doc/README", "var/run"] {
            assert!(
                listed.iter().any(|p| p == wanted),
                "{spec} lacks {wanted}: {listed:?}"
            );
        }
        let dest = scratch.join(format!("export-{name}"));
        store.export(&spec, &dest);
        assert!(
            std::fs::symlink_metadata(dest.join("var/run/the-special-one")).is_err(),
            "the exported {spec} contains the skipped {kind:?}"
        );
        assert_eq!(
            std::fs::read(dest.join("bin/tool")).unwrap(),
            std::fs::read(tree.join("bin/tool")).unwrap()
        );
        store.assert_verify_clean(&format!("after adding with --skip-special ({kind:?})"));
    }
}

#[test]
fn invalid_names_and_versions_are_refused() {
    let scratch = Scratch::new("bad-names");
    let store = populated_store(&scratch);
    let before = store.state();
    let tree = scratch.join("pkgs/valid/1");
    small_tree(&tree, "valid");

    let bad: [&[u8]; 5] = [b"", b"a/b", b"..", b".", b"x\x01y"];
    for value in bad {
        let value = OsStr::from_bytes(value);
        let run = store.fails_with(&[EXIT_ERROR, EXIT_USAGE], add_named(&tree, value, "1"));
        store.assert_unchanged(
            &before,
            &format!("after refusing name {value:?} ({})", run.stderr.trim()),
        );
        let run = store.fails_with(&[EXIT_ERROR, EXIT_USAGE], add_named(&tree, "valid", value));
        store.assert_unchanged(
            &before,
            &format!("after refusing version {value:?} ({})", run.stderr.trim()),
        );
    }
    let run = store.fails_with(
        &[EXIT_ERROR, EXIT_USAGE],
        add_named(&tree, "valid", "Current"),
    );
    assert!(
        run.stderr.contains("Current"),
        "the error should say what is wrong:\n{run}"
    );
    store.assert_unchanged(&before, "after refusing version `Current`");

    // The same rules apply to names and versions taken from the path.
    let from_path: [&[u8]; 4] = [b"App/Current", b"App/x\x01y", b"A\x02pp/1", b"App/\xff\xfe"];
    for rel in from_path {
        let dir = scratch.join("paths").join(OsStr::from_bytes(rel));
        small_tree(&dir, "path");
        let run = store.fails_with(
            &[EXIT_ERROR, EXIT_USAGE],
            [OsStr::new("add"), dir.as_os_str()],
        );
        store.assert_unchanged(
            &before,
            &format!("after refusing path {dir:?} ({})", run.stderr.trim()),
        );
    }
}

#[test]
fn usage_errors_exit_2() {
    let scratch = Scratch::new("bad-usage");
    let store = populated_store(&scratch);
    let before = store.state();
    let a = scratch.join("pkgs/ua/1");
    let b = scratch.join("pkgs/ub/1");
    small_tree(&a, "ua");
    small_tree(&b, "ub");
    let a = a.as_os_str();

    let cases: Vec<Vec<&OsStr>> = vec![
        vec![OsStr::new("add")],
        vec![OsStr::new("add"), a, OsStr::new("--name"), OsStr::new("x")],
        vec![
            OsStr::new("add"),
            a,
            OsStr::new("--version"),
            OsStr::new("1"),
        ],
        vec![OsStr::new("add"), a, OsStr::new("--no-such-flag")],
        vec![OsStr::new("frobnicate")],
        vec![OsStr::new("switch"), OsStr::new("not-a-number")],
        vec![OsStr::new("gc"), OsStr::new("--keep"), OsStr::new("many")],
    ];
    for args in cases {
        store.fails_with(&[EXIT_USAGE], &args);
        store.assert_unchanged(&before, &format!("after usage error {args:?}"));
    }
    // More than one PATH with --name: a usage error, or at least an error.
    let two_paths = [
        OsStr::new("add"),
        a,
        b.as_os_str(),
        OsStr::new("--name"),
        OsStr::new("x"),
        OsStr::new("--version"),
        OsStr::new("1"),
    ];
    store.fails_with(&[EXIT_ERROR, EXIT_USAGE], two_paths);
    store.assert_unchanged(&before, "after --name with two paths");
}

#[test]
fn operations_on_things_that_do_not_exist_fail() {
    let scratch = Scratch::new("bad-missing-things");
    let store = populated_store(&scratch);
    let before = store.state();
    let existing = scratch.join("already-here");
    std::fs::create_dir(&existing).unwrap();
    let cases: Vec<Vec<OsString>> = vec![
        vec!["switch".into(), "999".into()],
        vec!["remove".into(), "no-such-package".into()],
        vec!["remove".into(), "base/2".into()],
        vec!["info".into(), "no-such-package".into()],
        vec!["files".into(), "base/2".into()],
        vec!["cat".into(), "base/1".into(), "no/such/path".into()],
        vec![
            "export".into(),
            "no-such/1".into(),
            scratch.join("fresh").into_os_string(),
        ],
        vec![
            "export".into(),
            "base/1".into(),
            existing.clone().into_os_string(),
        ],
    ];
    for args in cases {
        store.fails_with(&[EXIT_ERROR], &args);
        store.assert_unchanged(&before, &format!("after `nip {args:?}`"));
    }
    assert!(
        std::fs::read_dir(&existing).unwrap().next().is_none(),
        "a refused export wrote into the existing destination"
    );
    assert!(
        !scratch.join("fresh").exists(),
        "a failed export left its destination behind"
    );

    // A store that was never initialised is an error, and is not created.
    let nowhere = Store::at(scratch.join("no-store"));
    let run = nowhere.fails_with(&[EXIT_ERROR], ["list"]);
    assert!(
        run.stderr.contains("init"),
        "the error should point at `nip init`:\n{run}"
    );
    assert!(
        !nowhere.path().exists(),
        "`nip list` created a store directory"
    );
}

#[test]
fn conflicting_readd_is_refused_and_identical_readd_is_a_noop() {
    let scratch = Scratch::new("bad-conflict");
    let store = populated_store(&scratch);
    let tree = scratch.join("pkgs/app/1");
    small_tree(&tree, "app");
    store.ok([OsStr::new("add"), tree.as_os_str()]);
    let before = store.state();

    // Identical again: by the same path, and from a copy.
    let run = store.ok([OsStr::new("add"), tree.as_os_str()]);
    store.assert_unchanged(
        &before,
        &format!("after re-adding an identical tree ({})", run.stderr.trim()),
    );
    let copy = scratch.join("copy/app/1");
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    copy_tree(&tree, &copy);
    store.ok([OsStr::new("add"), copy.as_os_str()]);
    store.assert_unchanged(&before, "after re-adding an identical copy");

    // Different content, a different mode, an extra file: all conflicts.
    type Change = fn(&Path);
    let variants: [(&str, Change); 3] = [
        ("one byte changed", |d| {
            write_file(&d.join("share/doc/README"), b"the app packagE\n")
        }),
        ("mode changed", |d| chmod(&d.join("bin/tool"), 0o700)),
        ("file added", |d| {
            write_file(&d.join("share/doc/NEWS"), b"news\n")
        }),
    ];
    for (i, (what, change)) in variants.into_iter().enumerate() {
        let variant = scratch.join(format!("variant{i}/app/1"));
        std::fs::create_dir_all(variant.parent().unwrap()).unwrap();
        copy_tree(&tree, &variant);
        change(&variant);
        let run = store.fails_with(&[EXIT_ERROR], [OsStr::new("add"), variant.as_os_str()]);
        assert!(
            run.stderr.contains("app/1"),
            "the conflict error must name app/1 ({what}):\n{run}"
        );
        store.assert_unchanged(&before, &format!("after a conflicting re-add ({what})"));
    }
}

#[test]
fn failed_transaction_adds_nothing() {
    let scratch = Scratch::new("bad-transaction");
    let store = populated_store(&scratch);
    let before = store.state();
    let good = scratch.join("good/Good/1");
    small_tree(&good, "good");

    // A valid package together with a refused one: neither lands.
    let bad = scratch.join("bad/Bad/1");
    small_tree(&bad, "bad");
    mkfifo(&bad.join("pipe"));
    store.fails_with(
        &[EXIT_ERROR],
        [OsStr::new("add"), good.as_os_str(), bad.as_os_str()],
    );
    store.assert_unchanged(
        &before,
        "after a transaction with a FIFO in its second package",
    );

    let missing: PathBuf = scratch.join("missing/Missing/1");
    store.fails_with(
        &[EXIT_ERROR],
        [OsStr::new("add"), good.as_os_str(), missing.as_os_str()],
    );
    store.assert_unchanged(&before, "after a transaction with a missing second package");

    // The same NAME/VERSION twice in one transaction.
    let twin = scratch.join("twin/Good/1");
    small_tree(&twin, "twin");
    store.fails_with(
        &[EXIT_ERROR, EXIT_USAGE],
        [OsStr::new("add"), good.as_os_str(), twin.as_os_str()],
    );
    store.assert_unchanged(&before, "after a transaction naming Good/1 twice");

    // A conflicting re-add of base/1 sinks the whole transaction too.
    let base_variant = scratch.join("variant/base/1");
    small_tree(&base_variant, "base, but different");
    store.fails_with(
        &[EXIT_ERROR],
        [
            OsStr::new("add"),
            good.as_os_str(),
            base_variant.as_os_str(),
        ],
    );
    store.assert_unchanged(&before, "after a transaction with a conflicting base/1");

    // And the good package alone is fine.
    store.ok([OsStr::new("add"), good.as_os_str()]);
    assert!(
        store.listed("Good", "1").is_some(),
        "Good/1 not listed after adding it alone"
    );
}
