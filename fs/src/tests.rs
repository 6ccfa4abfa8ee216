//! Tests of the view against real stores built in temporary directories.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nexus_store::{AddDir, AddOptions, NoProgress, Store};

use crate::attr::{Entry, Kind};
use crate::changes::{AppChange, Changes, CurrentChange, Invalidation, VersionChange};
use crate::error::ViewError;
use crate::ino::{self, Node};
use crate::view::{GenerationChoice, View, ViewOptions};

/// Deterministic incompressible bytes (xorshift64*: enough to defeat zstd).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

struct Fixture {
    _tmp: tempfile::TempDir,
    store: PathBuf,
    src: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("store");
        Store::init(&store).unwrap();
        let src = tmp.path().join("src");
        Fixture {
            _tmp: tmp,
            store,
            src,
        }
    }

    /// Adds `dir` (below the source root) as NAME/VERSION.
    fn add(&self, dir: &str, name: &str, version: &str) {
        let mut store = Store::open(&self.store).unwrap();
        let d = AddDir {
            path: self.src.join(dir),
            name: name.into(),
            version: version.into(),
        };
        store
            .add_dirs(&[d], AddOptions::default(), &NoProgress)
            .unwrap();
    }

    fn view(&self, generation: GenerationChoice) -> View {
        let options = ViewOptions {
            generation,
            cache_bytes: 8 << 20,
            connections: 2,
        };
        View::open(&self.store, options).unwrap()
    }
}

/// A tree with every kind of entry: text, a multi-block random file, an
/// empty file, a symlink, hard links, xattrs and special mode bits.
fn rich_tree(root: &Path) -> Vec<u8> {
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::create_dir_all(root.join("share/doc")).unwrap();
    let big = noise(1, 3 * 1024 * 1024 + 4321);
    fs::write(root.join("share/big.bin"), &big).unwrap();
    fs::write(root.join("share/doc/README"), "read me\n".repeat(500)).unwrap();
    fs::write(root.join("share/empty"), b"").unwrap();
    fs::write(root.join("bin/tool"), b"#!/bin/sh\necho tool\n").unwrap();
    fs::set_permissions(root.join("bin/tool"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::hard_link(root.join("bin/tool"), root.join("bin/tool-again")).unwrap();
    std::os::unix::fs::symlink("../share/doc/README", root.join("bin/readme")).unwrap();
    xattr::set(root.join("share/doc/README"), "user.nexus", b"\x00value").unwrap();
    big
}

/// Looks a `/`-separated path up from the root, component by component.
fn walk(view: &View, path: &str) -> Result<Entry, ViewError> {
    let mut parent = ino::ROOT;
    let mut found = None;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        let entry = view.lookup(parent, part.as_bytes())?;
        parent = entry.attr.ino;
        found = Some(entry);
    }
    found.ok_or(ViewError::NotFound)
}

fn names(view: &View, ino: u64) -> Vec<String> {
    view.list(ino)
        .unwrap()
        .entries
        .iter()
        .map(|e| String::from_utf8_lossy(&e.name).into_owned())
        .collect()
}

fn read_all(view: &View, ino: u64, piece: u32) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let data = view.read_inode(ino, out.len() as u64, piece).unwrap();
        if data.is_empty() {
            break;
        }
        out.extend_from_slice(&data);
    }
    out
}

#[test]
fn the_root_lists_apps_and_apps_list_versions_and_current() {
    let f = Fixture::new();
    for (dir, content) in [("h1", "one"), ("h2", "two"), ("j", "jq")] {
        fs::create_dir_all(f.src.join(dir)).unwrap();
        fs::write(f.src.join(dir).join("file"), content).unwrap();
    }
    fs::set_permissions(f.src.join("h2"), fs::Permissions::from_mode(0o750)).unwrap();
    f.add("h1", "hello", "1");
    f.add("j", "jq", "1.6");
    f.add("h2", "hello", "2");
    let view = f.view(GenerationChoice::Live);
    assert_eq!(view.generation(), Some(3));
    assert_eq!(names(&view, ino::ROOT), [".", "..", "hello", "jq"]);
    let root = view.getattr(ino::ROOT).unwrap();
    assert_eq!(
        (root.kind, root.nlink, root.immutable),
        (Kind::Dir, 4, false)
    );

    let hello = view.lookup(ino::ROOT, b"hello").unwrap();
    assert!(!hello.immutable && !hello.attr.immutable);
    assert_eq!(hello.attr.nlink, 4, "2 + two versions");
    assert_eq!(view.getattr(hello.attr.ino).unwrap(), hello.attr);
    assert_eq!(
        names(&view, hello.attr.ino),
        [".", "..", "1", "2", "Current"]
    );

    let current = view.lookup(hello.attr.ino, b"Current").unwrap();
    assert_eq!(current.attr.kind, Kind::Symlink);
    assert_eq!(view.readlink(current.attr.ino).unwrap(), b"2");
    assert_eq!(current.attr.size, 1);
    assert_eq!(
        Node::from_ino(current.attr.ino),
        Node::from_ino(hello.attr.ino).map(|n| match n {
            Node::App(a) => Node::Current(a),
            other => other,
        })
    );

    let two = view.lookup(hello.attr.ino, b"2").unwrap();
    assert_eq!((two.attr.kind, two.attr.perm), (Kind::Dir, 0o750));
    assert!(
        two.attr.immutable && !two.immutable,
        "a Version's name comes and goes"
    );
    let listing = view.list(two.attr.ino).unwrap();
    assert!(listing.immutable);
    assert_eq!(
        listing.entries[1].attr, hello.attr,
        "`..` of a Version is its App"
    );
    let file = view.lookup(two.attr.ino, b"file").unwrap();
    assert_eq!(read_all(&view, file.attr.ino, 4096), b"two");

    assert!(matches!(
        view.lookup(ino::ROOT, b"nope"),
        Err(ViewError::NotFound)
    ));
    assert!(matches!(
        view.lookup(hello.attr.ino, b"3"),
        Err(ViewError::NotFound)
    ));
    assert!(matches!(
        view.list(current.attr.ino),
        Err(ViewError::NotDir)
    ));
    assert!(matches!(
        view.read_inode(hello.attr.ino, 0, 1),
        Err(ViewError::IsDir)
    ));
    assert_eq!(view.statfs().files, 3);
}

/// Flips a byte in the middle of the store's only pack, in place (a
/// reader that holds the pack open sees it).
fn flip_pack_byte(store: &Path) {
    let packs: Vec<PathBuf> = fs::read_dir(store.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(packs.len(), 1);
    let mut bytes = fs::read(&packs[0]).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    fs::OpenOptions::new()
        .write(true)
        .open(&packs[0])
        .and_then(|mut file| std::io::Write::write_all(&mut file, &bytes))
        .unwrap();
}

/// Reads `data`'s file in 128 KiB pieces through `read(offset, size)`;
/// every byte returned must be right and every failure EIO. Returns the
/// number of failed reads.
fn failed_reads(data: &[u8], read: impl Fn(u64, u32) -> Result<Vec<u8>, ViewError>) -> usize {
    let mut failed = 0;
    for offset in (0..data.len() as u64).step_by(128 * 1024) {
        match read(offset, 128 * 1024) {
            Ok(got) => {
                let at = offset as usize;
                assert!(got == data[at..at + got.len()], "wrong bytes at {offset}");
            }
            Err(e) => {
                assert_eq!(e.errno(), libc::EIO, "{e}");
                failed += 1;
            }
        }
    }
    failed
}

#[test]
fn package_trees_read_back_exactly() {
    let f = Fixture::new();
    let big = rich_tree(&f.src.join("rich"));
    f.add("rich", "rich", "1.0");
    let view = f.view(GenerationChoice::Live);
    let base = "rich/1.0";

    let tool = walk(&view, &format!("{base}/bin/tool")).unwrap();
    let again = walk(&view, &format!("{base}/bin/tool-again")).unwrap();
    assert_eq!(tool.attr.ino, again.attr.ino, "hard links are one inode");
    assert_eq!((tool.attr.nlink, tool.attr.perm), (2, 0o4755));
    assert!(tool.immutable && tool.attr.immutable);

    let link = walk(&view, &format!("{base}/bin/readme")).unwrap();
    assert_eq!(link.attr.kind, Kind::Symlink);
    assert_eq!(
        view.readlink(link.attr.ino).unwrap(),
        b"../share/doc/README"
    );
    assert!(matches!(
        view.readlink(tool.attr.ino),
        Err(ViewError::WrongKind)
    ));

    let readme = walk(&view, &format!("{base}/share/doc/README")).unwrap();
    assert_eq!(view.listxattr(readme.attr.ino).unwrap(), b"user.nexus\0");
    assert_eq!(
        view.getxattr(readme.attr.ino, b"user.nexus").unwrap(),
        b"\x00value"
    );
    assert!(matches!(
        view.getxattr(readme.attr.ino, b"user.other"),
        Err(ViewError::NoXattr)
    ));
    // The recorded content hash, answered but not listed.
    let hash = view
        .getxattr(readme.attr.ino, b"user.nexus.blake3")
        .unwrap();
    let content = view
        .read_inode(readme.attr.ino, 0, readme.attr.size as u32)
        .unwrap();
    assert_eq!(hash, nexus_store::Hash::of(&content).to_hex().into_bytes());
    assert!(matches!(
        view.getxattr(ino::ROOT, b"user.nexus.blake3"),
        Err(ViewError::NoXattr)
    ));
    // No label kept: "not supported", so `ls -l` stops asking per file.
    let label = view.getxattr(readme.attr.ino, b"security.selinux");
    assert!(matches!(label, Err(ViewError::XattrUnsupported)));
    assert_eq!(ViewError::XattrUnsupported.errno(), libc::EOPNOTSUPP);
    assert_eq!(view.listxattr(tool.attr.ino).unwrap(), b"");
    assert_eq!(view.listxattr(ino::ROOT).unwrap(), b"");

    let empty = walk(&view, &format!("{base}/share/empty")).unwrap();
    assert_eq!(read_all(&view, empty.attr.ino, 4096), b"");

    let big_entry = walk(&view, &format!("{base}/share/big.bin")).unwrap();
    assert_eq!(big_entry.attr.size, big.len() as u64);
    for piece in [128 * 1024, 1 << 20, 4096 + 7] {
        assert!(
            read_all(&view, big_entry.attr.ino, piece) == big,
            "piece {piece}"
        );
    }
    // Reads at arbitrary offsets, across chunk and block boundaries and past
    // the end.
    let mut x = 12345u64;
    for _ in 0..200 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let offset = (x >> 20) % (big.len() as u64 + 1000);
        let size = ((x >> 8) % 300_000) as u32;
        let got = view.read_inode(big_entry.attr.ino, offset, size).unwrap();
        let start = (offset as usize).min(big.len());
        let end = (offset as usize + size as usize).min(big.len());
        assert!(got == big[start..end], "read({offset}, {size})");
    }

    // A directory listing agrees with lookups, `.` and `..` first.
    let bin = walk(&view, &format!("{base}/bin")).unwrap();
    let listing = view.list(bin.attr.ino).unwrap();
    let listed: Vec<&[u8]> = listing.entries.iter().map(|e| &e.name[..]).collect();
    assert_eq!(
        listed,
        [&b"."[..], b"..", b"readme", b"tool", b"tool-again"]
    );
    let root = walk(&view, base).unwrap();
    assert_eq!(listing.entries[0].attr, bin.attr);
    assert_eq!(listing.entries[1].attr, root.attr);
    for e in &listing.entries[2..] {
        assert_eq!(view.lookup(bin.attr.ino, &e.name).unwrap().attr, e.attr);
        assert_eq!(view.getattr(e.attr.ino).unwrap(), e.attr);
    }
}

#[test]
fn fixed_generations_stay_and_live_views_follow() {
    let f = Fixture::new();
    for dir in ["a", "b"] {
        fs::create_dir_all(f.src.join(dir)).unwrap();
        fs::write(f.src.join(dir).join("f"), dir).unwrap();
    }
    f.add("a", "app", "1");
    let live = f.view(GenerationChoice::Live);
    let fixed = f.view(GenerationChoice::Fixed(1));
    let app = live.lookup(ino::ROOT, b"app").unwrap();
    f.add("b", "app", "2");
    assert_eq!(names(&live, app.attr.ino), [".", "..", "1", "Current"]);
    let changes = live.refresh().unwrap().expect("the live view moves");
    assert_eq!((changes.from, changes.to), (Some(1), Some(2)));
    assert!(live.refresh().unwrap().is_none(), "nothing changed since");
    assert_eq!(live.generation(), Some(2));
    assert_eq!(names(&live, app.attr.ino), [".", "..", "1", "2", "Current"]);
    let current = live.lookup(app.attr.ino, b"Current").unwrap();
    assert_eq!(live.readlink(current.attr.ino).unwrap(), b"2");

    assert!(fixed.refresh().unwrap().is_none());
    assert_eq!(fixed.generation(), Some(1));
    assert_eq!(names(&fixed, app.attr.ino), [".", "..", "1", "Current"]);
    assert_eq!(fixed.readlink(current.attr.ino).unwrap(), b"1");

    let missing = View::open(
        &f.store,
        ViewOptions {
            generation: GenerationChoice::Fixed(7),
            ..ViewOptions::default()
        },
    );
    assert!(matches!(missing, Err(ViewError::NoGeneration(7))));
}

#[test]
fn inode_numbers_are_the_same_in_every_view() {
    let f = Fixture::new();
    rich_tree(&f.src.join("rich"));
    f.add("rich", "rich", "1");
    let paths = [
        "rich",
        "rich/Current",
        "rich/1",
        "rich/1/bin/tool",
        "rich/1/bin/readme",
        "rich/1/share/doc",
    ];
    let first = f.view(GenerationChoice::Live);
    let second = f.view(GenerationChoice::Fixed(1));
    for path in paths {
        let a = walk(&first, path).unwrap().attr.ino;
        assert_eq!(a, walk(&second, path).unwrap().attr.ino, "{path}");
        assert!(a < 1 << 32, "{path}: {a}");
    }
}

#[test]
fn an_empty_store_is_an_empty_root() {
    let f = Fixture::new();
    let view = f.view(GenerationChoice::Live);
    assert_eq!(view.generation(), None);
    assert_eq!(names(&view, ino::ROOT), [".", ".."]);
    assert_eq!(view.statfs().files, 0);
    assert!(view.refresh().unwrap().is_none());
}

#[test]
fn a_damaged_chunk_is_an_error_never_bytes() {
    let f = Fixture::new();
    fs::create_dir_all(f.src.join("d")).unwrap();
    let data = noise(9, 2 * 1024 * 1024);
    fs::write(f.src.join("d/data"), &data).unwrap();
    f.add("d", "d", "1");
    flip_pack_byte(&f.store);

    let view = f.view(GenerationChoice::Live);
    let file = walk(&view, "d/1/data").unwrap();
    let failed = failed_reads(&data, |offset, size| {
        view.read_inode(file.attr.ino, offset, size)
    });
    assert!(failed > 0, "the flipped byte went unnoticed");
}

/// Reads `ino` whole, 256 KiB at a time, from `from`.
fn read_from(view: &View, ino: u64, mut out: Vec<u8>) -> Result<Vec<u8>, ViewError> {
    loop {
        let piece = view.read_inode(ino, out.len() as u64, 256 * 1024)?;
        if piece.is_empty() {
            return Ok(out);
        }
        out.extend_from_slice(&piece);
    }
}

#[test]
fn a_file_being_read_keeps_its_bytes_while_gc_keeps_its_package() {
    let f = Fixture::new();
    fs::create_dir_all(f.src.join("d")).unwrap();
    let data = noise(5, 3 * 1024 * 1024 + 7);
    fs::write(f.src.join("d/data"), &data).unwrap();
    f.add("d", "d", "1");
    let view = f.view(GenerationChoice::Live);
    let file = walk(&view, "d/1/data").unwrap();
    let first = view.read_inode(file.attr.ino, 0, 4096).unwrap();

    // Removed and collected with the default grace: its rows and chunks
    // stay for the grace, and the file reads on.
    let mut store = Store::open(&f.store).unwrap();
    store.remove(&["d".to_string()]).unwrap();
    let options = nexus_store::gc::GcOptions {
        keep_last: 1,
        ..Default::default()
    };
    nexus_store::gc::collect(&mut store, options).unwrap();
    view.refresh().unwrap();
    assert!(matches!(walk(&view, "d"), Err(ViewError::NotFound)));
    let out = read_from(&view, file.attr.ino, first).unwrap();
    assert!(out == data, "the file changed");
}

#[test]
fn a_file_whose_package_was_collected_is_stale_never_other_bytes() {
    let f = Fixture::new();
    fs::create_dir_all(f.src.join("d")).unwrap();
    let data = noise(5, 3 * 1024 * 1024 + 7);
    fs::write(f.src.join("d/data"), &data).unwrap();
    f.add("d", "d", "1");
    let view = f.view(GenerationChoice::Live);
    let file = walk(&view, "d/1/data").unwrap();
    let first = view.read_inode(file.attr.ino, 0, 4096).unwrap();

    let mut store = Store::open(&f.store).unwrap();
    store.remove(&["d".to_string()]).unwrap();
    let options = nexus_store::gc::GcOptions {
        keep_last: 1,
        grace: std::time::Duration::ZERO,
        ..Default::default()
    };
    let report = nexus_store::gc::collect(&mut store, options).unwrap();
    assert_eq!(report.packages_deleted, 1, "{report:?}");
    assert!(report.packs_deleted >= 1, "{report:?}");
    assert_eq!(
        fs::read_dir(f.store.join("packs")).unwrap().count(),
        0,
        "gc left pack files"
    );
    // Another package now takes the place the first had in the catalog.
    fs::create_dir_all(f.src.join("e")).unwrap();
    fs::write(f.src.join("e/data"), b"other package, other bytes").unwrap();
    f.add("e", "e", "1");
    view.refresh().unwrap();

    // The view noticed the gc and closed the deleted pack; what it still
    // knows of the file leads to no bytes, and never to another file's.
    match read_from(&view, file.attr.ino, first) {
        Err(ViewError::Stale | ViewError::Store(_) | ViewError::NotFound) => {}
        Err(e) => panic!("unexpected error {e}"),
        Ok(out) => assert!(out == data, "a collected file returned other bytes"),
    }
    // Looked up afresh, the inode number names nothing.
    let fresh = f.view(GenerationChoice::Live);
    assert!(matches!(
        fresh.getattr(file.attr.ino),
        Err(ViewError::Stale)
    ));
    assert_eq!(
        walk(&fresh, "e/1/data")
            .map(|e| fresh.read_inode(e.attr.ino, 0, 100).unwrap())
            .unwrap(),
        b"other package, other bytes"
    );
    assert_ne!(walk(&fresh, "e/1/data").unwrap().attr.ino, file.attr.ino);
}

/// The changes of one refresh, which must have moved the view.
fn moved(view: &View) -> Changes {
    let changes = view.refresh().unwrap().expect("the live view moves");
    let invalidations = changes.invalidations();
    let distinct: std::collections::HashSet<_> = invalidations.iter().collect();
    assert_eq!(distinct.len(), invalidations.len(), "{invalidations:?}");
    changes
}

fn version(app: &str, app_ino: u64, version: &str, view: &View) -> VersionChange {
    VersionChange {
        app: app.into(),
        app_ino,
        version: version.into(),
        ino: walk(view, &format!("{app}/{version}")).unwrap().attr.ino,
    }
}

fn entry(parent: u64, name: &str) -> Invalidation {
    Invalidation::Entry {
        parent,
        name: name.as_bytes().to_vec(),
    }
}

#[test]
fn refresh_reports_what_changed_and_what_to_invalidate() {
    let f = Fixture::new();
    for dir in ["a1", "a2", "b1"] {
        fs::create_dir_all(f.src.join(dir)).unwrap();
        fs::write(f.src.join(dir).join("f"), dir).unwrap();
    }
    f.add("a1", "a", "1");
    let live = f.view(GenerationChoice::Live);
    let old = f.view(GenerationChoice::Fixed(1));
    let a = walk(&live, "a").unwrap().attr.ino;
    let a_current = walk(&live, "a/Current").unwrap().attr.ino;
    let current =
        |app: &str, app_ino, link_ino, from: Option<&str>, to: Option<&str>| CurrentChange {
            app: app.into(),
            app_ino,
            link_ino,
            from: from.map(String::from),
            to: to.map(String::from),
        };

    // A new version becomes Current.
    f.add("a2", "a", "2");
    let c = moved(&live);
    assert_eq!(c.versions_added, [version("a", a, "2", &live)]);
    assert!(c.versions_removed.is_empty() && c.apps_added.is_empty());
    assert_eq!(
        c.current_changed,
        [current("a", a, a_current, Some("1"), Some("2"))]
    );
    assert!(c.attrs_changed.contains(&a), "a lists one more version");
    let inv = c.invalidations();
    assert!(inv.contains(&entry(a, "2")), "{inv:?}");
    assert!(inv.contains(&Invalidation::Inode(a_current)), "{inv:?}");
    assert!(inv.contains(&Invalidation::Inode(a)), "{inv:?}");
    assert!(
        !inv.contains(&entry(a, "Current")),
        "the link keeps its name and number: {inv:?}"
    );

    // A new App.
    f.add("b1", "b", "1");
    let c = moved(&live);
    let b = walk(&live, "b").unwrap().attr.ino;
    let b_current = walk(&live, "b/Current").unwrap().attr.ino;
    assert_eq!(
        c.apps_added,
        [AppChange {
            name: "b".into(),
            ino: b
        }]
    );
    assert_eq!(c.versions_added, [version("b", b, "1", &live)]);
    assert_eq!(
        c.current_changed,
        [current("b", b, b_current, None, Some("1"))]
    );
    assert!(
        c.attrs_changed.contains(&ino::ROOT),
        "the root lists one more App"
    );
    let inv = c.invalidations();
    for i in [entry(ino::ROOT, "b"), entry(b, "1"), entry(b, "Current")] {
        assert!(inv.contains(&i), "{i:?} missing from {inv:?}");
    }
    assert!(
        !inv.contains(&entry(a, "2")),
        "a's names did not change: {inv:?}"
    );

    // Several generations at once: a version goes, the App b goes, and the
    // view moves from generation 3 straight to 5.
    let mut store = Store::open(&f.store).unwrap();
    let removed_a2 = version("a", a, "2", &live);
    let removed_b1 = version("b", b, "1", &live);
    store.remove(&["a/2".to_string()]).unwrap();
    store.remove(&["b".to_string()]).unwrap();
    let c = moved(&live);
    assert_eq!((c.from, c.to), (Some(3), Some(5)));
    assert_eq!(
        c.apps_removed,
        [AppChange {
            name: "b".into(),
            ino: b
        }]
    );
    assert_eq!(c.versions_removed, [removed_a2, removed_b1]);
    assert!(c.versions_added.is_empty() && c.apps_added.is_empty());
    assert_eq!(
        c.current_changed,
        [
            current("a", a, a_current, Some("2"), Some("1")),
            current("b", b, b_current, Some("1"), None),
        ]
    );
    for ino in [ino::ROOT, a, b, b_current] {
        assert!(c.attrs_changed.contains(&ino), "{ino} in {c:?}");
    }
    let inv = c.invalidations();
    for i in [
        entry(ino::ROOT, "b"),
        entry(a, "2"),
        entry(b, "1"),
        entry(b, "Current"),
        Invalidation::Inode(a_current),
    ] {
        assert!(inv.contains(&i), "{i:?} missing from {inv:?}");
    }
    assert!(matches!(walk(&live, "b"), Err(ViewError::NotFound)));

    // Back to generation 1's content: the same changes as a frozen view of
    // generation 1 would need, had it followed.
    store.switch(1).unwrap();
    let c = moved(&live);
    assert!(c.apps_added.is_empty() && c.apps_removed.is_empty());
    assert!(c.versions_added.is_empty() && c.versions_removed.is_empty());
    assert!(c.current_changed.is_empty(), "a/Current stays at 1: {c:?}");
    assert_eq!(names(&live, a), names(&old, a));
    assert!(live.refresh().unwrap().is_none());
}

#[test]
fn removed_names_resolve_unlisted_for_the_grace() {
    let f = Fixture::new();
    for dir in ["a1", "a2"] {
        fs::create_dir_all(f.src.join(dir)).unwrap();
        fs::write(f.src.join(dir).join("f"), dir).unwrap();
    }
    f.add("a1", "a", "1");
    f.add("a2", "a", "2");
    let patient = f
        .view(GenerationChoice::Live)
        .with_removed_names_grace(std::time::Duration::from_secs(3600));
    let strict = f
        .view(GenerationChoice::Live)
        .with_removed_names_grace(std::time::Duration::ZERO);
    let a = walk(&patient, "a").unwrap().attr.ino;
    let current = walk(&patient, "a/Current").unwrap().attr.ino;
    let second = walk(&patient, "a/2").unwrap().attr.ino;

    // A walk reads Current, then a switch removes the version it points to…
    assert_eq!(patient.readlink(current).unwrap(), b"2");
    let mut store = Store::open(&f.store).unwrap();
    store.switch(1).unwrap();
    let c = patient.refresh().unwrap().expect("moved");
    strict.refresh().unwrap().expect("moved");
    // …and the walk still finds it, though it is no longer listed.
    assert_eq!(patient.lookup(a, b"2").unwrap().attr.ino, second);
    assert_eq!(names(&patient, a), [".", "..", "1", "Current"]);
    assert_eq!(patient.readlink(current).unwrap(), b"1", "the link moved");
    assert!(matches!(strict.lookup(a, b"2"), Err(ViewError::NotFound)));
    assert_eq!(c.after_grace(), [entry(a, "2")]);

    // A whole App removed: the root no longer names it, but a walk already
    // inside it goes on.
    store.remove(&["a".to_string()]).unwrap();
    let c = patient.refresh().unwrap().expect("moved");
    strict.refresh().unwrap().expect("moved");
    assert!(matches!(walk(&patient, "a"), Err(ViewError::NotFound)));
    assert_eq!(names(&patient, ino::ROOT), [".", ".."]);
    assert_eq!(patient.getattr(a).unwrap().kind, Kind::Dir);
    assert_eq!(patient.readlink(current).unwrap(), b"1");
    assert_eq!(patient.lookup(a, b"Current").unwrap().attr.ino, current);
    assert!(patient.lookup(a, b"1").is_ok());
    assert!(matches!(strict.getattr(a), Err(ViewError::NotFound)));
    assert!(matches!(strict.readlink(current), Err(ViewError::NotFound)));
    let later = c.after_grace();
    for i in [
        entry(a, "1"),
        entry(a, "Current"),
        Invalidation::Inode(current),
        Invalidation::Inode(a),
    ] {
        assert!(later.contains(&i), "{i:?} missing from {later:?}");
    }
}

#[test]
fn a_tiny_block_cache_recycles_buffers_without_mixing_bytes() {
    let f = Fixture::new();
    let dir = f.src.join("mixed");
    fs::create_dir_all(&dir).unwrap();
    // Compressible files (zstd blocks) of different sizes and one
    // incompressible file (raw blocks), several blocks each.
    let mut files = Vec::new();
    for i in 0..4u8 {
        let line = format!("file {i} line of text that compresses well\n");
        let data = line.repeat((600_000 + usize::from(i) * 333_333) / line.len());
        fs::write(dir.join(format!("text{i}")), &data).unwrap();
        files.push((format!("text{i}"), data.into_bytes()));
    }
    let random = noise(5, 2_500_000);
    fs::write(dir.join("random"), &random).unwrap();
    files.push(("random".into(), random));
    f.add("mixed", "mixed", "1");

    // One byte of cache: every block is evicted as soon as it is replaced,
    // so each decode reuses the buffer of another block.
    let options = ViewOptions {
        generation: GenerationChoice::Live,
        cache_bytes: 1,
        connections: 1,
    };
    let view = View::open(&f.store, options).unwrap();
    let inos: Vec<u64> = files
        .iter()
        .map(|(name, _)| walk(&view, &format!("mixed/1/{name}")).unwrap().attr.ino)
        .collect();
    // Read the files interleaved, piece by piece, through both read paths.
    let mut got = vec![Vec::new(); files.len()];
    let piece = 100_000u32;
    loop {
        let mut progressed = false;
        for (i, &ino) in inos.iter().enumerate() {
            let at = got[i].len() as u64;
            let borrowed = view
                .read_inode_with(ino, at, piece, |bytes| bytes.to_vec())
                .unwrap();
            assert_eq!(borrowed, view.read_inode(ino, at, piece).unwrap());
            progressed |= !borrowed.is_empty();
            got[i].extend_from_slice(&borrowed);
        }
        if !progressed {
            break;
        }
    }
    for ((name, want), got) in files.iter().zip(&got) {
        assert!(got == want, "{name} read back differently");
    }
}

#[test]
fn lookups_answered_from_listings_agree_with_single_lookups() {
    let f = Fixture::new();
    let dir = f.src.join("many");
    // A small directory (its listing answers lookups from the second on)
    // and one too large for that (looked up name by name throughout).
    fs::create_dir_all(dir.join("small")).unwrap();
    fs::create_dir_all(dir.join("large")).unwrap();
    let small: Vec<String> = (0..20).map(|i| format!("f{i:02}")).collect();
    let large: Vec<String> = (0..3000).map(|i| format!("file-number-{i:05}")).collect();
    for name in &small {
        fs::write(dir.join("small").join(name), format!("content of {name}")).unwrap();
    }
    for name in &large {
        fs::write(dir.join("large").join(name), format!("content of {name}")).unwrap();
    }
    // Beside the small files: a file of many chunks, an empty one and a
    // hard link, whose layouts come with the listing too.
    let big = noise(3, 700_000);
    fs::write(dir.join("small/g-big"), &big).unwrap();
    fs::write(dir.join("small/g-empty"), b"").unwrap();
    fs::hard_link(dir.join("small/f03"), dir.join("small/g-link")).unwrap();
    f.add("many", "many", "1");

    for (sub, names) in [("small", &small), ("large", &large)] {
        let view = f.view(GenerationChoice::Live);
        let dir_ino = walk(&view, &format!("many/1/{sub}")).unwrap().attr.ino;
        // Misses before, between and after the names, at every stage.
        for round in 0..3 {
            for missing in [&b"a"[..], b"f", b"f00x", b"zzz", b"file-number-"] {
                assert!(
                    matches!(view.lookup(dir_ino, missing), Err(ViewError::NotFound)),
                    "{sub}, round {round}: {missing:?}"
                );
            }
        }
        let mut inodes = std::collections::HashSet::new();
        for (i, name) in names.iter().enumerate().rev() {
            let entry = view.lookup(dir_ino, name.as_bytes()).unwrap();
            assert_eq!(entry.name, name.as_bytes());
            assert!(inodes.insert(entry.attr.ino), "{name}: a distinct inode");
            let content = view.read_inode(entry.attr.ino, 0, 100).unwrap();
            assert_eq!(content, format!("content of {name}").as_bytes());
            if i % 97 == 0 {
                // A new view's first lookup there is a single query.
                let reference = f.view(GenerationChoice::Live);
                let single = reference.lookup(dir_ino, name.as_bytes()).unwrap();
                assert_eq!(single.attr, entry.attr, "{name}");
            }
        }
        if sub == "small" {
            let big_ino = view.lookup(dir_ino, b"g-big").unwrap().attr.ino;
            let mut read = Vec::new();
            while read.len() < big.len() {
                let piece = view
                    .read_inode(big_ino, read.len() as u64, 100_000)
                    .unwrap();
                assert!(!piece.is_empty());
                read.extend_from_slice(&piece);
            }
            assert!(read == big, "the file of many chunks reads back");
            let empty = view.lookup(dir_ino, b"g-empty").unwrap().attr.ino;
            assert_eq!(view.read_inode(empty, 0, 10).unwrap(), b"");
            let link = view.lookup(dir_ino, b"g-link").unwrap().attr;
            assert_eq!(link.ino, view.lookup(dir_ino, b"f03").unwrap().attr.ino);
            assert_eq!(
                view.read_inode(link.ino, 0, 100).unwrap(),
                b"content of f03"
            );
        }
    }
}

#[test]
fn damage_after_a_block_was_verified_is_still_an_error() {
    let f = Fixture::new();
    fs::create_dir_all(f.src.join("d")).unwrap();
    // Compressible (zstd blocks with a checksum), several blocks.
    let line = b"a line of text that zstd compresses into far fewer bytes\n";
    let data: Vec<u8> = line.iter().copied().cycle().take(3 << 20).collect();
    fs::write(f.src.join("d/data"), &data).unwrap();
    f.add("d", "d", "1");
    // Nothing cached: every read decodes its block again.
    let view = View::open(
        &f.store,
        ViewOptions {
            cache_bytes: 1,
            connections: 1,
            ..ViewOptions::default()
        },
    )
    .unwrap();
    let ino = walk(&view, "d/1/data").unwrap().attr.ino;
    let read_all = || failed_reads(&data, |offset, size| view.read_inode(ino, offset, size));
    // Twice intact: every block verified, then decoded again.
    assert_eq!((read_all(), read_all()), (0, 0));
    // Now damage the pack under the reader (it keeps it open).
    flip_pack_byte(&f.store);
    assert!(read_all() > 0, "the damage went unnoticed");
}
