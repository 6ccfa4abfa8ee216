//! The directory import against a racing owner of the directory (issue 13,
//! item 1; security review H2): while root imports a tree, the tree's owner
//! swaps, with `renameat2(RENAME_EXCHANGE)`, (a) a file with a symlink to a
//! root-only file of the same size, and (b) a directory with a symlink to a
//! root-owned directory holding a setuid-root program of the same size.
//! Looked up by path twice, the store once imported the root-only bytes,
//! or paired uid 0 and mode 04755 with the attacker's bytes. Every attempt
//! must now either be refused (the tree changed) or store a file whose
//! bytes and metadata belong together.
//!
//! The importer is given every trust flag there is (owner trusted,
//! privileges kept): what is tested is the walk by descriptors, not the
//! ownership rule that would otherwise refuse the tree outright.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use nexus_store::scan::SourcePolicy;
use nexus_store::{AddDir, AddOptions, NoProgress, Store, StoreError};
use rustix::fs::{CWD, RenameFlags, renameat_with};

const NOBODY: u32 = 65534;
/// Attempts per scenario (each is one `add`).
const ATTEMPTS: u32 = 150;
/// Same length as the secret and the setuid program: sizes are public.
const ATTACKER: &[u8] = b"#!/bin/sh\nid # attacker code xxx\n";
const SECRET: &[u8] = b"TOP-SECRET-KEY-MATERIAL-0123456\n\n";
const SETUID: &[u8] = b"#!/bin/sh\necho real setuid tool!\n";

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn write(path: &Path, bytes: &[u8], uid: u32, mode: u32) {
    fs::write(path, bytes).unwrap();
    std::os::unix::fs::lchown(path, Some(uid), Some(uid)).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn mkdir(path: &Path, uid: u32) {
    fs::create_dir_all(path).unwrap();
    std::os::unix::fs::lchown(path, Some(uid), Some(uid)).unwrap();
}

/// Swaps `a` and `b` as fast as it can until told to stop; returns how
/// many swaps it made.
fn racer(a: PathBuf, b: PathBuf, stop: Arc<AtomicBool>, swaps: Arc<AtomicU64>) {
    while !stop.load(Ordering::Relaxed) {
        renameat_with(CWD, &a, CWD, &b, RenameFlags::EXCHANGE).unwrap();
        swaps.fetch_add(1, Ordering::Relaxed);
    }
}

struct Outcome {
    refused: u32,
    stored: u32,
}

/// Adds `tree` again and again while `a` and `b` are swapped, and checks
/// each stored `bin/tool` with `check`.
fn race(
    label: &str,
    tree: &Path,
    a: PathBuf,
    b: PathBuf,
    check: impl Fn(&[u8], u32, u32, u32),
) -> Outcome {
    let store_dir = tempfile::tempdir().unwrap();
    let mut store = Store::init(store_dir.path()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicU64::new(0));
    let handle = {
        let (stop, swaps) = (stop.clone(), swaps.clone());
        std::thread::spawn(move || racer(a, b, stop, swaps))
    };
    let options = AddOptions {
        policy: SourcePolicy {
            trust_owner: true,
            keep_privileges: true,
        },
        ..AddOptions::default()
    };
    let mut outcome = Outcome {
        refused: 0,
        stored: 0,
    };
    let started = Instant::now();
    for attempt in 0..ATTEMPTS {
        let add = AddDir {
            path: tree.to_path_buf(),
            name: "victim".into(),
            version: attempt.to_string(),
        };
        match store.add_dirs(&[add], options, &NoProgress) {
            Ok(_) => {}
            Err(StoreError::SourceChanged { .. }) => {
                outcome.refused += 1;
                continue;
            }
            // The old walk also failed in ways of its own (a directory
            // gone between listing and lookup): refusals all the same.
            Err(StoreError::Io { .. } | StoreError::BadInput { .. }) => {
                outcome.refused += 1;
                continue;
            }
            Err(e) => panic!("{label}: attempt {attempt}: {e}"),
        }
        outcome.stored += 1;
        let package = store.installed(&format!("victim/{attempt}")).unwrap();
        // The swap may have made bin/tool (or bin) a symlink when it was
        // scanned: that is the attacker's own symlink, nothing more.
        let Ok(inode) = store.resolve(&package, b"bin/tool") else {
            continue;
        };
        let Some(blob) = inode.blob else {
            continue;
        };
        let mut bytes = Vec::new();
        store.read_blob(blob, &mut bytes).unwrap();
        check(&bytes, inode.uid, inode.gid, inode.mode);
    }
    stop.store(true, Ordering::Relaxed);
    handle.join().unwrap();
    eprintln!(
        "{label}: {} attempts in {:?}: {} stored, {} refused; {} swaps",
        ATTEMPTS,
        started.elapsed(),
        outcome.stored,
        outcome.refused,
        swaps.load(Ordering::Relaxed)
    );
    assert!(
        swaps.load(Ordering::Relaxed) > u64::from(ATTEMPTS),
        "{label}: the racer barely ran"
    );
    outcome
}

#[test]
fn a_swapped_file_never_brings_in_root_only_bytes() {
    if !is_root() {
        eprintln!("skipped: the race needs files of root and of nobody (run as root, as CI does)");
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let secret_dir = scratch.path().join("root-only");
    mkdir(&secret_dir, 0);
    let secret = secret_dir.join("key");
    write(&secret, SECRET, 0, 0o600);
    assert_eq!(SECRET.len(), ATTACKER.len());

    let tree = scratch.path().join("victim");
    mkdir(&tree.join("bin"), NOBODY);
    std::os::unix::fs::lchown(&tree, Some(NOBODY), Some(NOBODY)).unwrap();
    write(&tree.join("bin/tool"), ATTACKER, NOBODY, 0o755);
    symlink(&secret, tree.join("bin/swap")).unwrap();
    // Padding widens the gap between the scan and the read of bin/tool.
    mkdir(&tree.join("pad"), NOBODY);
    for i in 0..300 {
        write(&tree.join(format!("pad/{i}")), b"pad", NOBODY, 0o644);
    }
    let outcome = race(
        "file swap",
        &tree,
        tree.join("bin/tool"),
        tree.join("bin/swap"),
        |bytes, uid, _, mode| {
            assert_ne!(
                bytes, SECRET,
                "the root-only file was imported as {uid} {mode:o}"
            );
            assert_eq!(bytes, ATTACKER);
            assert_eq!((uid, mode), (NOBODY, 0o755));
        },
    );
    assert!(outcome.stored + outcome.refused == ATTEMPTS);
}

#[test]
fn a_swapped_directory_never_pairs_setuid_root_with_foreign_bytes() {
    if !is_root() {
        eprintln!("skipped: the race needs files of root and of nobody (run as root, as CI does)");
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    // A root-owned directory holding a setuid-root program, as /usr/bin.
    let system = scratch.path().join("system-bin");
    mkdir(&system, 0);
    write(&system.join("tool"), SETUID, 0, 0o4755);
    assert_eq!(SETUID.len(), ATTACKER.len());

    let tree = scratch.path().join("victim");
    mkdir(&tree.join("bin"), NOBODY);
    std::os::unix::fs::lchown(&tree, Some(NOBODY), Some(NOBODY)).unwrap();
    write(&tree.join("bin/tool"), ATTACKER, NOBODY, 0o755);
    symlink(&system, tree.join("bin.swap")).unwrap();
    mkdir(&tree.join("pad"), NOBODY);
    for i in 0..300 {
        write(&tree.join(format!("pad/{i}")), b"pad", NOBODY, 0o644);
    }
    race(
        "directory swap",
        &tree,
        tree.join("bin"),
        tree.join("bin.swap"),
        |bytes, uid, _, mode| {
            let privileged = uid == 0 || mode & 0o6000 != 0;
            assert!(
                !(privileged && bytes == ATTACKER),
                "uid {uid} mode {mode:o} paired with the attacker's bytes"
            );
            if bytes == SETUID {
                // Root's own program, whole: its own metadata.
                assert_eq!((uid, mode), (0, 0o4755));
            } else {
                assert_eq!(bytes, ATTACKER);
                assert_eq!((uid, mode), (NOBODY, 0o755));
            }
        },
    );
}
