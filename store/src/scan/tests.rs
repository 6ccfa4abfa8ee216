use super::*;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};

fn is_root() -> bool {
    running_as_root()
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn trusting(keep_privileges: bool) -> ScanOptions {
    ScanOptions {
        skip_special: false,
        policy: SourcePolicy {
            trust_owner: true,
            keep_privileges,
        },
    }
}

fn inode_at<'t>(tree: &'t Tree, name: &[u8]) -> &'t Inode {
    let e = tree.entries.iter().find(|e| e.name == name).unwrap();
    &tree.inodes[e.inode as usize]
}

#[test]
fn scans_files_links_and_hardlinks() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::create_dir(root.join("bin")).unwrap();
    fs::write(root.join("bin/tool"), b"#!/bin/sh\n").unwrap();
    fs::hard_link(root.join("bin/tool"), root.join("bin/tool2")).unwrap();
    symlink("tool", root.join("bin/link")).unwrap();
    let scanned = scan_dir(root, ScanOptions::default()).unwrap();
    // root, bin, tool (shared by two names), link
    assert_eq!(scanned.tree.inodes.len(), 4);
    assert_eq!(scanned.tree.entries.len(), 4);
    assert_eq!(scanned.sources.len(), 1);
    assert_eq!(scanned.sources[0].1.path(), root.join("bin/tool"));
    assert_eq!(
        inode_at(&scanned.tree, b"link").kind,
        InodeKind::Symlink {
            target: b"tool".to_vec()
        }
    );
}

#[test]
fn refuses_fifos_unless_told_to_skip() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe");
    rfs::mkfifoat(rfs::CWD, &fifo, Mode::from_raw_mode(0o644)).unwrap();
    let err = scan_dir(dir.path(), ScanOptions::default()).err().unwrap();
    assert!(err.to_string().contains("FIFO"), "{err}");
    let skip = ScanOptions {
        skip_special: true,
        ..ScanOptions::default()
    };
    let ok = scan_dir(dir.path(), skip).unwrap();
    assert_eq!(ok.skipped, vec![fifo]);
}

#[test]
fn refuses_missing_and_non_directories() {
    let dir = tempfile::tempdir().unwrap();
    assert!(scan_dir(&dir.path().join("nope"), ScanOptions::default()).is_err());
    fs::write(dir.path().join("f"), b"x").unwrap();
    let err = scan_dir(&dir.path().join("f"), ScanOptions::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("not a directory"), "{err}");
}

#[test]
fn xattrs_come_from_the_entry_itself_even_for_symlinks() {
    if !is_root() {
        eprintln!("not root: trusted.* xattrs on symlinks need root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::write(root.join("file"), b"x").unwrap();
    xattr::set(root.join("file"), "user.on-file", b"f").unwrap();
    symlink("file", root.join("link")).unwrap();
    xattr::set(root.join("link"), "trusted.on-link", b"l").unwrap();
    let scanned = scan_dir(root, ScanOptions::default()).unwrap();
    assert_eq!(
        inode_at(&scanned.tree, b"file").xattrs,
        vec![(b"user.on-file".to_vec(), b"f".to_vec())]
    );
    assert_eq!(
        inode_at(&scanned.tree, b"link").xattrs,
        vec![(b"trusted.on-link".to_vec(), b"l".to_vec())]
    );
}

#[test]
fn as_root_foreign_or_writable_trees_are_refused_unless_trusted() {
    if !is_root() {
        eprintln!("not root: the ownership rule applies to root only");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    fs::create_dir_all(root.join("share")).unwrap();
    fs::write(root.join("share/data"), b"data").unwrap();
    // A root-owned tree with a sticky, world-writable directory is fine:
    // nobody else can move root's entries in it.
    fs::create_dir(root.join("tmp")).unwrap();
    chmod(&root.join("tmp"), 0o1777);
    scan_dir(&root, ScanOptions::default()).unwrap();

    // A file someone else owns.
    chown(&root.join("share/data"), 65534, 65534);
    let err = scan_dir(&root, ScanOptions::default()).err().unwrap();
    assert!(
        matches!(&err, StoreError::UntrustedSource { path, .. } if path.ends_with("share/data")),
        "{err}"
    );
    assert!(err.to_string().contains("uid 65534"), "{err}");
    scan_dir(&root, trusting(false)).unwrap();
    chown(&root.join("share/data"), 0, 0);

    // A directory its group can write to.
    chmod(&root.join("share"), 0o775);
    let err = scan_dir(&root, ScanOptions::default()).err().unwrap();
    assert!(err.to_string().contains("mode 0775"), "{err}");
    scan_dir(&root, trusting(false)).unwrap();
    chmod(&root.join("share"), 0o755);

    // Refused as untrusted, naming `dir`.
    let refused_naming = |tree: &Path, dir: &Path| {
        let err = scan_dir(tree, ScanOptions::default()).err().unwrap();
        assert!(
            matches!(&err, StoreError::UntrustedSource { path, .. } if path == dir),
            "{err}"
        );
    };
    // A directory above the tree that others can write to (without the
    // sticky bit, they could swap the whole tree).
    let above = dir.path().join("open");
    fs::create_dir_all(above.join("tree")).unwrap();
    chmod(&above, 0o777);
    refused_naming(&above.join("tree"), &above);
    scan_dir(&above.join("tree"), trusting(false)).unwrap();

    // A symlink kept in such a directory, though it leads to root's tree:
    // whoever writes the directory chooses what it leads to next time.
    std::os::unix::fs::symlink(&root, above.join("link")).unwrap();
    refused_naming(&above.join("link"), &above);
    // Sticky, others cannot move root's entries there, but the link is its
    // creator's to replace.
    chmod(&above, 0o1777);
    refused_naming(&above.join("link"), &above);
    // The same link in a directory only root can change is followed.
    chmod(&above, 0o755);
    scan_dir(&above.join("link"), ScanOptions::default()).unwrap();
}

#[test]
fn foreign_files_lose_privileges_unless_kept() {
    if !is_root() {
        eprintln!("not root: needs files of other owners");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let cap = [
        1u8, 0, 0, 2, 0, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    for (name, uid) in [("theirs", 65534), ("roots", 0)] {
        let p = root.join(name);
        fs::write(&p, b"#!/bin/sh\n").unwrap();
        // Ownership first: chown clears setuid bits and capabilities.
        chown(&p, uid, 0);
        chmod(&p, 0o6755);
        xattr::set(&p, "security.capability", &cap).unwrap();
    }
    let scanned = scan_dir(root, trusting(false)).unwrap();
    let theirs = inode_at(&scanned.tree, b"theirs");
    assert_eq!(theirs.mode, 0o755);
    assert_eq!((theirs.uid, theirs.gid), (65534, OVERFLOW_GID));
    assert!(theirs.xattrs.is_empty(), "{:?}", theirs.xattrs);
    let roots = inode_at(&scanned.tree, b"roots");
    assert_eq!(roots.mode, 0o6755);
    assert_eq!((roots.uid, roots.gid), (0, 0));
    assert_eq!(roots.xattrs.len(), 1);

    let kept = scan_dir(root, trusting(true)).unwrap();
    let theirs = inode_at(&kept.tree, b"theirs");
    assert_eq!(theirs.mode, 0o6755);
    assert_eq!((theirs.uid, theirs.gid), (65534, 0));
    assert_eq!(theirs.xattrs.len(), 1);
}

#[test]
fn trees_deeper_than_the_limit_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut deep = dir.path().to_path_buf();
    for _ in 0..crate::tree::MAX_DEPTH {
        deep.push("d");
    }
    fs::create_dir_all(&deep).unwrap();
    scan_dir(dir.path(), ScanOptions::default()).unwrap();
    fs::write(deep.join("one-too-deep"), b"x").unwrap();
    let err = scan_dir(dir.path(), ScanOptions::default()).err().unwrap();
    assert!(
        matches!(
            err,
            StoreError::PathLimit {
                limit: crate::tree::PathLimit::TooDeep { depth: 257 },
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_file_swapped_after_the_scan_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::write(root.join("bin/tool"), b"mine").unwrap();
    fs::write(dir.path().join("secret"), b"SECR").unwrap();
    let scanned = scan_dir(&root, ScanOptions::default()).unwrap();
    let source = &scanned.sources[0].1;
    source.open().unwrap();

    // The file becomes a symlink to another file of the same size.
    fs::rename(root.join("bin/tool"), root.join("bin/old")).unwrap();
    symlink(dir.path().join("secret"), root.join("bin/tool")).unwrap();
    let err = source.open().unwrap_err();
    assert!(matches!(err, StoreError::SourceChanged { .. }), "{err}");

    // Its directory becomes a symlink to a directory holding the file.
    fs::remove_file(root.join("bin/tool")).unwrap();
    fs::rename(root.join("bin/old"), root.join("bin/tool")).unwrap();
    fs::rename(root.join("bin"), dir.path().join("bin")).unwrap();
    symlink(dir.path().join("bin"), root.join("bin")).unwrap();
    let err = source.open().unwrap_err();
    assert!(matches!(err, StoreError::SourceChanged { .. }), "{err}");

    // Another file of the same size moved in its place.
    fs::remove_file(root.join("bin")).unwrap();
    fs::create_dir(root.join("bin")).unwrap();
    fs::write(root.join("bin/tool"), b"evil").unwrap();
    let err = source.open().unwrap_err();
    assert!(err.to_string().contains("it is another file now"), "{err}");
}

#[test]
fn a_file_changed_after_the_scan_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("f"), b"1234").unwrap();
    let scanned = scan_dir(dir.path(), ScanOptions::default()).unwrap();
    let source = &scanned.sources[0].1;
    let file = source.open().unwrap();
    chmod(&dir.path().join("f"), 0o4755);
    let err = source.check_unchanged(&file).unwrap_err();
    assert!(err.to_string().contains("mode changed"), "{err}");
}
