//! The images are checked by the kernel itself: each test mounts what the
//! writer made (root only; skipped, saying so, otherwise) and compares
//! what the kernel shows with the tree written.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::erofs::{self, Body, ImageError, Node, Tree};
use super::{
    Copies, DecodedCopies, LeftOut, METACOPY_XATTR, REDIRECT_XATTR, Served, fit, walk_redirecting,
};
use crate::attr::Listing;
use crate::error::Result;
use crate::view::{GenerationChoice, View, ViewOptions};

fn node(perm: u32, body: Body) -> Node {
    Node {
        perm,
        uid: 0,
        gid: 0,
        mtime: 1_700_000_000,
        nlink: 1,
        xattrs: Vec::new(),
        body,
    }
}

fn dir(parent: usize, entries: Vec<(&str, usize)>) -> Body {
    Body::Dir {
        parent,
        entries: entries
            .into_iter()
            .map(|(n, i)| (n.as_bytes().to_vec(), i))
            .collect(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A valid `security.capability` value (revision 2, effective,
/// `CAP_NET_RAW` permitted): the kernel checks the value it returns.
const NET_RAW: [u8; 20] = [
    1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// An image mounted by the kernel, unmounted on drop.
struct Mounted {
    _dir: tempfile::TempDir,
    at: PathBuf,
}

impl Mounted {
    fn new(image: &[u8]) -> Mounted {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("image.erofs");
        std::fs::write(&file, image).unwrap();
        let at = dir.path().join("mnt");
        std::fs::create_dir(&at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "erofs", "-o", "ro"])
            .arg(&file)
            .arg(&at)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the kernel refused the image: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Mounted { _dir: dir, at }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.at).status();
    }
}

/// What the kernel shows below `root`: path → (mode, uid, gid, size,
/// mtime, nlink, target, xattrs), and the inode of each path.
type Shown = BTreeMap<String, (u32, u32, u32, u64, i64, u64, Option<String>, Vec<String>)>;

fn shown(root: &Path) -> (Shown, BTreeMap<String, u64>) {
    let mut out = Shown::new();
    let mut inos = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(d) = pending.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let target = m
                .file_type()
                .is_symlink()
                .then(|| std::fs::read_link(&p).unwrap().display().to_string());
            let mut xattrs: Vec<String> = xattr::list(&p)
                .unwrap()
                .map(|n| {
                    let v = xattr::get(&p, &n)
                        .unwrap_or_else(|e| panic!("{} {n:?}: {e}", p.display()))
                        .unwrap_or_default();
                    format!("{}={}", n.to_string_lossy(), hex(&v))
                })
                .collect();
            xattrs.sort();
            if m.is_dir() {
                pending.push(p.clone());
            }
            inos.insert(rel.clone(), m.ino());
            out.insert(
                rel,
                (
                    m.mode(),
                    m.uid(),
                    m.gid(),
                    m.size(),
                    m.mtime(),
                    m.nlink(),
                    target,
                    xattrs,
                ),
            );
        }
    }
    (out, inos)
}

/// A tree with every shape the writer handles: a directory of many blocks,
/// inline and block directories, holes of several sizes, an empty file,
/// short and long link targets, hard links, extended attributes of every
/// prefix, odd modes and large owners.
fn every_shape() -> Tree {
    let mut nodes = vec![node(0o755, dir(0, vec![]))];
    let mut root_entries = Vec::new();
    // A directory of 400 long names: several blocks of entries.
    let big = nodes.len();
    nodes.push(node(0o750, dir(0, vec![])));
    root_entries.push(("big", big));
    let mut big_entries = Vec::new();
    for i in 0..400 {
        let idx = nodes.len();
        let mut n = node(0o644, Body::File { size: i as u64 });
        n.mtime = 1_600_000_000 + i;
        nodes.push(n);
        big_entries.push((format!("entry-with-a-rather-long-name-{i:04}"), idx));
    }
    nodes[big].body = Body::Dir {
        parent: 0,
        entries: big_entries
            .into_iter()
            .map(|(n, i)| (n.into_bytes(), i))
            .collect(),
    };
    let mut f = node(0o4755, Body::File { size: 5000 });
    f.uid = 100_000;
    f.gid = 70_000;
    f.xattrs = vec![
        (b"user.note".to_vec(), b"hello".to_vec()),
        (b"security.capability".to_vec(), NET_RAW.to_vec()),
        (b"trusted.overlay.redirect".to_vec(), b"/a/b/c".to_vec()),
        (b"trusted.overlay.metacopy".to_vec(), Vec::new()),
    ];
    f.nlink = 2;
    let file = nodes.len();
    nodes.push(f);
    root_entries.push(("setuid", file));
    root_entries.push(("hardlink", file));
    let huge = nodes.len();
    nodes.push(node(0o444, Body::File { size: 1 << 40 }));
    root_entries.push(("huge", huge));
    let empty = nodes.len();
    nodes.push(node(0o600, Body::File { size: 0 }));
    root_entries.push(("empty", empty));
    let short = nodes.len();
    nodes.push(node(0o777, Body::Symlink(b"big/entry".to_vec())));
    root_entries.push(("link", short));
    let long = nodes.len();
    nodes.push(node(0o777, Body::Symlink(vec![b'x'; 4000])));
    root_entries.push(("long-link", long));
    // A directory whose entries are inline, with a subdirectory.
    let sub = nodes.len();
    nodes.push(node(0o1777, dir(0, vec![])));
    root_entries.push(("sticky", sub));
    let inner = nodes.len();
    nodes.push(node(0o700, dir(sub, vec![])));
    nodes[sub].body = dir(0, vec![("inner", inner)]);
    nodes[0].body = dir(0, root_entries);
    Tree { nodes }
}

#[test]
fn the_kernel_shows_exactly_the_tree_written() {
    if !is_root() {
        eprintln!("skipped: mounting an image needs root");
        return;
    }
    let tree = every_shape();
    let image = erofs::write(&tree).unwrap();
    let mounted = Mounted::new(&image);
    let (shown, inos) = shown(&mounted.at);
    assert_eq!(shown.len(), 400 + 9);
    let big = &shown["big"];
    assert_eq!(big.0, libc::S_IFDIR | 0o750);
    for i in [0u64, 1, 255, 399] {
        let e = &shown[&format!("big/entry-with-a-rather-long-name-{i:04}")];
        assert_eq!(
            (e.0, e.3, e.4),
            (libc::S_IFREG | 0o644, i, 1_600_000_000 + i as i64)
        );
    }
    let s = &shown["setuid"];
    assert_eq!(
        (s.0, s.1, s.2, s.3, s.5),
        (libc::S_IFREG | 0o4755, 100_000, 70_000, 5000, 2)
    );
    assert_eq!(
        s.7,
        vec![
            format!("security.capability={}", hex(&NET_RAW)),
            "trusted.overlay.metacopy=".into(),
            format!("trusted.overlay.redirect={}", hex(b"/a/b/c")),
            format!("user.note={}", hex(b"hello")),
        ]
    );
    assert_eq!(inos["setuid"], inos["hardlink"]);
    assert_eq!(shown["huge"].3, 1 << 40);
    assert_eq!(shown["empty"].3, 0);
    assert_eq!(shown["link"].6.as_deref(), Some("big/entry"));
    assert_eq!(shown["long-link"].6.as_ref().map(String::len), Some(4000));
    assert_eq!(shown["sticky"].0, libc::S_IFDIR | 0o1777);
    assert_eq!(shown["sticky/inner"].0, libc::S_IFDIR | 0o700);
    // Holes read as zeros, to their size.
    let bytes = std::fs::read(mounted.at.join("setuid")).unwrap();
    assert_eq!(bytes, vec![0; 5000]);
    // `..` of a subdirectory is its parent.
    let up = std::fs::metadata(mounted.at.join("sticky/inner/..")).unwrap();
    assert_eq!(up.ino(), inos["sticky"]);
}

#[test]
fn names_and_attributes_erofs_cannot_hold_are_refused() {
    let mut tree = Tree {
        nodes: vec![node(0o755, dir(0, vec![("a/b", 0)]))],
    };
    assert!(matches!(
        erofs::write(&tree),
        Err(ImageError::BadName { .. })
    ));
    tree.nodes = vec![node(0o755, dir(0, vec![("x", 1), ("x", 1)]))];
    tree.nodes.push(node(0o644, Body::File { size: 0 }));
    assert!(matches!(
        erofs::write(&tree),
        Err(ImageError::BadName { .. })
    ));
    let mut f = node(0o644, Body::File { size: 1 });
    f.xattrs = vec![(b"system.other".to_vec(), Vec::new())];
    tree.nodes = vec![node(0o755, dir(0, vec![("f", 1)])), f.clone()];
    assert!(matches!(
        erofs::write(&tree),
        Err(ImageError::BadXattrName { .. })
    ));
    f.xattrs = vec![(b"user.big".to_vec(), vec![0; 70_000])];
    tree.nodes[1] = f;
    assert!(matches!(
        erofs::write(&tree),
        Err(ImageError::XattrTooLarge { .. })
    ));
    tree.nodes[1] = node(0o777, Body::Symlink(vec![b'x'; 4096]));
    assert!(matches!(
        erofs::write(&tree),
        Err(ImageError::BadTarget { .. })
    ));
    // Attributes one word over what the inode's count holds are refused,
    // never written with a count that wrapped.
    let mut f = node(0o644, Body::File { size: 1 });
    f.xattrs = full_xattrs();
    f.xattrs.push((b"user.z".to_vec(), Vec::new()));
    tree.nodes[1] = f;
    assert!(matches!(
        erofs::write(&tree),
        Err(ImageError::XattrsTooLarge { .. })
    ));
    tree.nodes = vec![node(0o755, dir(0, vec![("f", 7)]))];
    assert!(matches!(erofs::write(&tree), Err(ImageError::TooLarge(_))));
}

#[test]
fn many_directories_of_every_size_mount() {
    if !is_root() {
        eprintln!("skipped: mounting an image needs root");
        return;
    }
    // Directories of 0 to 600 entries with names of growing lengths: the
    // boundaries between inline and block directories, and between blocks,
    // are all crossed; each has a file with attributes after it, so inline
    // records land at every offset in a block.
    let mut nodes = vec![node(0o755, dir(0, vec![]))];
    let mut root = Vec::new();
    let mut expected = BTreeMap::new();
    for n in (0..600).step_by(37) {
        let d = nodes.len();
        nodes.push(node(0o755, dir(0, vec![])));
        let mut entries = Vec::new();
        for i in 0..n {
            let name = format!("{}{i}", "n".repeat(1 + (i * 7 + n) % 60));
            let f = nodes.len();
            let mut file = node(
                0o644,
                Body::File {
                    size: (i * 13) as u64,
                },
            );
            file.xattrs = vec![(b"user.i".to_vec(), vec![b'v'; i % 50])];
            nodes.push(file);
            expected.insert(format!("d{n}/{name}"), (i * 13) as u64);
            entries.push((name.into_bytes(), f));
        }
        nodes[d].body = Body::Dir { parent: 0, entries };
        root.push((format!("d{n}").into_bytes(), d));
    }
    nodes[0].body = Body::Dir {
        parent: 0,
        entries: root,
    };
    let image = erofs::write(&Tree { nodes }).unwrap();
    let mounted = Mounted::new(&image);
    let (shown, _) = shown(&mounted.at);
    let files: BTreeMap<String, u64> = shown
        .iter()
        .filter(|(_, v)| v.0 & libc::S_IFMT == libc::S_IFREG)
        .map(|(k, v)| (k.clone(), v.3))
        .collect();
    assert_eq!(files, expected);
}

/// A random tree: up to `n` nodes, each a directory, file or link placed
/// in an earlier directory, some files named twice (hard links).
fn random_tree(picks: &[(u8, u16, u32, u16)]) -> Tree {
    let mut nodes = vec![node(0o755, dir(0, vec![]))];
    let mut dirs = vec![0usize];
    let mut files = Vec::new();
    let mut entries: Vec<Vec<(Vec<u8>, usize)>> = vec![Vec::new()];
    for (i, &(kind, len, size, perm)) in picks.iter().enumerate() {
        let parent = dirs[usize::from(len) % dirs.len()];
        // Names of varied lengths, unique in their directory by the index.
        let name = format!("{i}-{}", "x".repeat(usize::from(len) % 200)).into_bytes();
        let perm = u32::from(perm) & 0o7777;
        let index = nodes.len();
        match kind % 4 {
            0 => {
                nodes.push(node(perm | 0o700, dir(parent, vec![])));
                dirs.push(index);
                entries.push(Vec::new());
            }
            1 if !files.is_empty() => {
                // Another name for an earlier file.
                let f = files[usize::from(len) % files.len()];
                entries[dirs.iter().position(|&d| d == parent).unwrap_or(0)].push((name, f));
                continue;
            }
            2 => {
                // Some over the 4095 bytes a target may take.
                let target = format!("t{}", "y".repeat(size as usize % 4200)).into_bytes();
                nodes.push(node(0o777, Body::Symlink(target)));
            }
            _ => {
                let mut f = node(
                    perm,
                    Body::File {
                        size: u64::from(size),
                    },
                );
                f.xattrs = vec![(b"user.n".to_vec(), vec![b'v'; usize::from(len) % 300])];
                nodes.push(f);
                files.push(index);
            }
        }
        entries[dirs.iter().position(|&d| d == parent).unwrap_or(0)].push((name, index));
    }
    for (d, e) in dirs.iter().zip(entries) {
        let parent = match &nodes[*d].body {
            Body::Dir { parent, .. } => *parent,
            _ => 0,
        };
        nodes[*d].body = Body::Dir { parent, entries: e };
    }
    Tree { nodes }
}

/// Path → (type, size, link target) of a tree, as the writer was told.
fn expected(tree: &Tree) -> BTreeMap<String, (u32, u64, Option<String>)> {
    paths(tree)
        .into_iter()
        .map(|(path, i)| {
            let shown = match &tree.nodes[i].body {
                Body::Dir { .. } => (libc::S_IFDIR, 0, None),
                Body::File { size } => (libc::S_IFREG, *size, None),
                Body::Symlink(t) => (
                    libc::S_IFLNK,
                    t.len() as u64,
                    Some(String::from_utf8_lossy(t).into_owned()),
                ),
            };
            (path, shown)
        })
        .collect()
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

    /// Every random tree, fitted, mounts, and the kernel shows each path
    /// with its type, size and target; only the links too long are left
    /// out.
    #[test]
    fn random_trees_mount_as_written(
        picks in proptest::collection::vec(
            (proptest::prelude::any::<u8>(), proptest::prelude::any::<u16>(),
             0u32..100_000, proptest::prelude::any::<u16>()),
            1..400,
        )
    ) {
        if !is_root() {
            return Ok(());
        }
        let mut tree = random_tree(&picks);
        let mut all = expected(&tree);
        fit(&mut tree);
        all.retain(|_, (kind, size, _)| *kind != libc::S_IFLNK || *size < 4096);
        proptest::prop_assert_eq!(&all, &expected(&tree));
        let image = erofs::write(&tree).unwrap();
        let mounted = Mounted::new(&image);
        let (shown, _) = shown(&mounted.at);
        let shown: BTreeMap<String, (u32, u64, Option<String>)> = shown
            .into_iter()
            .map(|(k, v)| {
                let size = if v.0 & libc::S_IFMT == libc::S_IFDIR { 0 } else { v.3 };
                (k, (v.0 & libc::S_IFMT, size, v.6))
            })
            .collect();
        proptest::prop_assert_eq!(shown, expected(&tree));
    }
}

/// Package attributes whose entries take exactly [`erofs::XATTR_ROOM`]
/// bytes: an inode count of 65,535, the most it holds.
fn full_xattrs() -> Vec<(Vec<u8>, Vec<u8>)> {
    // Entries of 4 + 1 + value bytes, padded to 4: three of 65,536 and one
    // of 65,528.
    let xattrs = vec![
        (b"user.a".to_vec(), vec![b'a'; 65_531]),
        (b"user.b".to_vec(), vec![b'b'; 65_531]),
        (b"user.c".to_vec(), vec![b'c'; 65_531]),
        (b"user.d".to_vec(), vec![b'd'; 65_523]),
    ];
    let len: usize = xattrs
        .iter()
        .map(|(n, v)| erofs::xattr_len(n, v).unwrap())
        .sum();
    assert_eq!(len, erofs::XATTR_ROOM);
    xattrs
}

/// The extended attributes of `node` as [`shown`] lists them.
fn xattrs_shown(node: &Node) -> Vec<String> {
    let mut out: Vec<String> = node
        .xattrs
        .iter()
        .map(|(n, v)| format!("{}={}", String::from_utf8_lossy(n), hex(v)))
        .collect();
    out.sort();
    out
}

/// Path → node index of every entry of `tree`.
fn paths(tree: &Tree) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let mut pending = vec![(0usize, String::new())];
    while let Some((d, prefix)) = pending.pop() {
        let Body::Dir { entries, .. } = &tree.nodes[d].body else {
            continue;
        };
        for (name, i) in entries {
            let path = format!("{prefix}{}", String::from_utf8_lossy(name));
            if matches!(tree.nodes[*i].body, Body::Dir { .. }) {
                pending.push((*i, format!("{path}/")));
            }
            out.insert(path, *i);
        }
    }
    out
}

/// An inode whose attributes fill their count exactly is read whole by the
/// kernel, and so are the file's chunk map and the directory's entries
/// after them.
#[test]
fn attributes_filling_the_inode_count_mount() {
    if !is_root() {
        eprintln!("skipped: mounting an image needs root");
        return;
    }
    let mut f = node(0o644, Body::File { size: 5000 });
    f.xattrs = full_xattrs();
    let mut d = node(0o755, dir(0, vec![("inner", 3)]));
    d.xattrs = full_xattrs();
    let tree = Tree {
        nodes: vec![
            node(0o755, dir(0, vec![("f", 1), ("d", 2)])),
            f,
            d,
            node(0o600, Body::File { size: 7 }),
        ],
    };
    let image = erofs::write(&tree).unwrap();
    let mounted = Mounted::new(&image);
    let (shown, _) = shown(&mounted.at);
    assert_eq!(shown.len(), 3);
    assert_eq!(shown["f"].7, xattrs_shown(&tree.nodes[1]));
    assert_eq!(shown["d"].7, xattrs_shown(&tree.nodes[2]));
    assert_eq!(shown["f"].3, 5000);
    assert_eq!(shown["d/inner"].3, 7);
    // Holes read as zeros: the block map after the attributes is the one
    // written.
    assert_eq!(std::fs::read(mounted.at.join("f")).unwrap(), vec![0; 5000]);
}

/// What a package may hold and EROFS cannot is left out of the image, one
/// item each, and the rest of the tree is shown exactly as written.
#[test]
fn what_erofs_cannot_hold_is_left_out_and_the_rest_shown() {
    let mut tree = every_shape();
    // A whole untouched tree is left as it is.
    let untouched = tree.clone();
    assert_eq!(fit(&mut tree), Vec::new());
    assert_eq!(tree.nodes, untouched.nodes);
    let add = |tree: &mut Tree, name: &str, n: Node| {
        let i = tree.nodes.len();
        tree.nodes.push(n);
        if let Body::Dir { entries, .. } = &mut tree.nodes[0].body {
            entries.push((name.as_bytes().to_vec(), i));
        }
        i
    };
    // (a) A name without an EROFS prefix, as pax archives carry them.
    let mut a = node(0o644, Body::File { size: 3 });
    a.xattrs = vec![
        (b"SCHILY.xattr.foo".to_vec(), b"x".to_vec()),
        (b"user.kept".to_vec(), b"1".to_vec()),
        (b"system.nfs4_acl".to_vec(), b"y".to_vec()),
    ];
    let a = add(&mut tree, "unknown-prefix", a);
    // (b) A value of 64 KiB, which the store takes and EROFS's 16-bit
    // length does not.
    let mut b = node(0o755, dir(0, vec![]));
    b.xattrs = vec![
        (b"user.big".to_vec(), vec![b'v'; 65_536]),
        (b"user.most".to_vec(), vec![b'w'; 65_535]),
    ];
    let b = add(&mut tree, "big-value", b);
    // (c) Link targets of 4096 bytes and more, under two names, and an
    // empty one.
    let c = add(
        &mut tree,
        "long-target",
        node(0o777, Body::Symlink(vec![b'y'; 4096])),
    );
    if let Body::Dir { entries, .. } = &mut tree.nodes[0].body {
        entries.push((b"long-target-again".to_vec(), c));
    }
    add(
        &mut tree,
        "empty-target",
        node(0o777, Body::Symlink(Vec::new())),
    );
    // (d) Five values of about 64 KiB on one file: four fit its count.
    let mut d = node(0o644, Body::File { size: 10 });
    d.xattrs = (0..5u8)
        .map(|k| (format!("user.v{k}").into_bytes(), vec![b'0' + k; 65_000]))
        .collect();
    let d = add(&mut tree, "five-values", d);
    // Deeper down: a link too long, a name too long for an entry (the
    // second name of a file kept under its first), an attribute with
    // nothing after its prefix two levels down.
    let sub = add(&mut tree, "sub", node(0o755, dir(0, vec![])));
    let ok = tree.nodes.len();
    tree.nodes.push(node(0o644, Body::File { size: 1 }));
    let deep = tree.nodes.len();
    tree.nodes
        .push(node(0o777, Body::Symlink(vec![b'z'; 5000])));
    let inner = tree.nodes.len();
    tree.nodes.push(node(0o755, dir(sub, vec![])));
    let mut f_node = node(0o644, Body::File { size: 0 });
    f_node.xattrs = vec![(b"user.".to_vec(), b"no name".to_vec())];
    let f = tree.nodes.len();
    tree.nodes.push(f_node);
    tree.nodes[inner].body = dir(sub, vec![("f", f)]);
    tree.nodes[sub].body = Body::Dir {
        parent: 0,
        entries: vec![
            (b"ok".to_vec(), ok),
            (vec![b'n'; 256], ok),
            (b"deep-link".to_vec(), deep),
            (b"inner".to_vec(), inner),
        ],
    };
    let before = tree.clone();
    let mut left = fit(&mut tree);
    left.sort_by(|x, y| (&x.path, &x.xattr).cmp(&(&y.path, &y.xattr)));
    let short = |l: &LeftOut| {
        (
            String::from_utf8_lossy(&l.path).into_owned(),
            l.xattr
                .as_deref()
                .map(|n| String::from_utf8_lossy(n).into_owned()),
        )
    };
    assert_eq!(
        left.iter().map(short).collect::<Vec<_>>(),
        vec![
            ("/big-value".into(), Some("user.big".into())),
            ("/empty-target".into(), None),
            ("/five-values".into(), Some("user.v4".into())),
            ("/long-target".into(), None),
            ("/long-target-again".into(), None),
            ("/sub/deep-link".into(), None),
            ("/sub/inner/f".into(), Some("user.".into())),
            (format!("/sub/{}", "n".repeat(256)), None),
            ("/unknown-prefix".into(), Some("SCHILY.xattr.foo".into())),
            ("/unknown-prefix".into(), Some("system.nfs4_acl".into())),
        ]
    );
    assert!(matches!(
        left[0].why,
        ImageError::XattrTooLarge { len: 65_536, .. }
    ));
    assert!(matches!(left[2].why, ImageError::XattrsTooLarge { .. }));
    assert!(matches!(left[3].why, ImageError::BadTarget { len: 4096 }));
    assert!(matches!(left[7].why, ImageError::BadName { .. }));
    assert!(matches!(left[8].why, ImageError::BadXattrName { .. }));
    assert!(
        left[8].to_string().contains("/unknown-prefix") && left[8].to_string().contains("SCHILY"),
        "{}",
        left[8]
    );
    // Only the offending items changed.
    assert_eq!(
        tree.nodes[a].xattrs,
        vec![(b"user.kept".to_vec(), b"1".to_vec())]
    );
    assert_eq!(tree.nodes[b].xattrs, before.nodes[b].xattrs[1..]);
    assert_eq!(tree.nodes[d].xattrs, before.nodes[d].xattrs[..4]);
    for (i, (now, was)) in tree.nodes.iter().zip(&before.nodes).enumerate().skip(1) {
        if ![a, b, d, sub, f].contains(&i) {
            assert_eq!(now, was, "node {i}");
        }
    }
    let mut gone = paths(&before);
    gone.retain(|p, _| !paths(&tree).contains_key(p));
    assert_eq!(
        gone.keys().collect::<Vec<_>>(),
        [
            "empty-target",
            "long-target",
            "long-target-again",
            "sub/deep-link",
            &format!("sub/{}", "n".repeat(256)),
        ]
    );
    // What is left out is left out for good: a second pass finds nothing.
    let fitted = tree.clone();
    assert_eq!(fit(&mut tree), Vec::new());
    assert_eq!(tree.nodes, fitted.nodes);
    if !is_root() {
        eprintln!("skipped: mounting an image needs root");
        return;
    }
    let image = erofs::write(&tree).unwrap();
    let mounted = Mounted::new(&image);
    let (shown, _) = shown(&mounted.at);
    let types: BTreeMap<String, (u32, u64, Option<String>)> = shown
        .iter()
        .map(|(k, v)| {
            let size = if v.0 & libc::S_IFMT == libc::S_IFDIR {
                0
            } else {
                v.3
            };
            (k.clone(), (v.0 & libc::S_IFMT, size, v.6.clone()))
        })
        .collect();
    assert_eq!(types, expected(&tree));
    // Every node with all its attributes, mode and owners as written.
    for (path, i) in paths(&tree) {
        let n = &tree.nodes[i];
        let s = &shown[&path];
        assert_eq!(
            (s.0 & 0o7777, s.1, s.2, s.4, &s.7),
            (n.perm, n.uid, n.gid, n.mtime, &xattrs_shown(n)),
            "{path}"
        );
    }
}

/// A file's own metacopy and redirect are kept before any of its package's
/// attributes, so that overlayfs still reads its contents from the data
/// layer; a file whose redirect cannot be held is left out, not shown as
/// zeros.
#[test]
fn a_files_redirect_outlives_its_package_attributes() {
    let data = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(data.path().join("App/1")).unwrap();
    std::fs::write(data.path().join("App/1/f"), b"the contents").unwrap();
    // Package attributes first, as the walk lists them, and more than the
    // inode holds with the view's own.
    let mut f = node(0o644, Body::File { size: 12 });
    f.xattrs = full_xattrs();
    f.xattrs.push((METACOPY_XATTR.to_vec(), Vec::new()));
    f.xattrs
        .push((REDIRECT_XATTR.to_vec(), b"/App/1/f".to_vec()));
    let mut lost = node(0o644, Body::File { size: 12 });
    lost.xattrs = vec![
        (b"user.small".to_vec(), b"s".to_vec()),
        (METACOPY_XATTR.to_vec(), Vec::new()),
        (REDIRECT_XATTR.to_vec(), vec![b'/'; 65_536]),
    ];
    let mut tree = Tree {
        nodes: vec![
            node(0o755, dir(0, vec![("App", 1)])),
            node(0o755, dir(0, vec![("1", 2)])),
            node(0o755, dir(1, vec![("f", 3), ("lost", 4)])),
            f,
            lost,
        ],
    };
    let left = fit(&mut tree);
    assert_eq!(left.len(), 2, "{left:?}");
    assert_eq!(left[0].path, b"/App/1/f");
    assert_eq!(left[0].xattr.as_deref(), Some(&b"user.d"[..]));
    assert_eq!(
        (&left[1].path[..], &left[1].xattr),
        (&b"/App/1/lost"[..], &None)
    );
    let names: Vec<&[u8]> = tree.nodes[3].xattrs.iter().map(|(n, _)| &n[..]).collect();
    assert_eq!(
        names,
        [
            &b"user.a"[..],
            b"user.b",
            b"user.c",
            METACOPY_XATTR,
            REDIRECT_XATTR
        ]
    );
    if !is_root() {
        eprintln!("skipped: mounting an image needs root");
        return;
    }
    let image = erofs::write(&tree).unwrap();
    let meta = Mounted::new(&image);
    let over = tempfile::tempdir().unwrap();
    let out = Command::new("mount")
        .args(["-t", "overlay", "nexus-test", "-o"])
        .arg(format!(
            "ro,metacopy=on,redirect_dir=follow,lowerdir={}::{}",
            meta.at.display(),
            data.path().display()
        ))
        .arg(over.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "overlayfs refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = std::fs::read(over.path().join("App/1/f"));
    let listed = xattr::list(over.path().join("App/1/f")).map(|l| l.count());
    let lost = std::fs::symlink_metadata(over.path().join("App/1/lost"));
    let _ = Command::new("umount").arg(over.path()).status();
    assert_eq!(read.unwrap(), b"the contents");
    assert_eq!(listed.unwrap(), 3);
    assert_eq!(lost.unwrap_err().kind(), std::io::ErrorKind::NotFound);
}

/// The view walked only through the answers a transport gets, one call per
/// entry, as every directory but a package's is walked.
struct OneByOne<'a>(&'a View);

impl Served for OneByOne<'_> {
    fn root(&self) -> u64 {
        Served::root(self.0)
    }
    fn list(&self, ino: u64) -> Result<std::sync::Arc<Listing>> {
        self.0.list(ino)
    }
    fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        Served::readlink(self.0, ino)
    }
    fn xattrs(&self, ino: u64) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.0.xattrs(ino)
    }
    fn redirects(&self) -> bool {
        self.0.redirects()
    }
    fn content_blob(&self, ino: u64) -> Result<Option<i64>> {
        Served::content_blob(self.0, ino)
    }
    fn copies(&self, decoded: &DecodedCopies<'_>) -> Result<Copies> {
        self.0.copies(decoded)
    }
}

#[test]
fn package_rows_make_the_tree_the_answers_make() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    nexus_store::Store::init(&store).unwrap();
    let src = tmp.path().join("src");
    for (version, extra) in [("1", "one"), ("2", "two")] {
        let root = src.join(version);
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::create_dir_all(root.join("share/doc/deep")).unwrap();
        std::fs::write(root.join("bin/tool"), b"#!/bin/sh\necho tool\n").unwrap();
        std::fs::set_permissions(
            root.join("bin/tool"),
            std::fs::Permissions::from_mode(0o4755),
        )
        .unwrap();
        std::fs::hard_link(root.join("bin/tool"), root.join("bin/tool-again")).unwrap();
        std::fs::write(root.join("share/doc/README"), "read me\n".repeat(500)).unwrap();
        std::fs::write(root.join("share/doc/deep/only"), extra).unwrap();
        std::fs::write(root.join("share/empty"), b"").unwrap();
        std::os::unix::fs::symlink("../share/doc/README", root.join("bin/readme")).unwrap();
        xattr::set(root.join("share/doc/README"), "user.nexus", b"\x00value").unwrap();
        xattr::set(root.join("share/doc"), "user.dir", extra.as_bytes()).unwrap();
        xattr::set(root.join("bin/tool"), "user.a", b"1").unwrap();
        xattr::set(root.join("bin/tool"), "user.b", b"").unwrap();
        let mut store = nexus_store::Store::open(&store).unwrap();
        let dir = nexus_store::AddDir {
            path: root,
            name: "App".into(),
            version: version.into(),
        };
        store
            .add_dirs(
                &[dir],
                nexus_store::AddOptions::default(),
                &nexus_store::NoProgress,
            )
            .unwrap();
    }
    let options = ViewOptions {
        generation: GenerationChoice::Live,
        cache_bytes: 8 << 20,
        connections: 1,
    };
    let view = View::open(&store, options).unwrap();
    // Every content "has a copy", named after its blob id, so that each
    // file's redirect says which content the walk found for it.
    let copies: Copies = (1..64i64)
        .map(|blob| (blob, nexus_store::Hash::of(&blob.to_le_bytes())))
        .collect();
    let by_rows = walk_redirecting(&view, &copies).unwrap();
    let by_answers = walk_redirecting(&OneByOne(&view), &copies).unwrap();
    assert_eq!(by_rows.nodes, by_answers.nodes);
    let paths = paths(&by_rows);
    for path in ["App/1/bin/tool", "App/2/share/doc/deep/only", "App/Current"] {
        assert!(paths.contains_key(path), "{path} missing from {paths:?}");
    }
    let tool = &by_rows.nodes[paths["App/1/bin/tool"]];
    assert_eq!(paths["App/1/bin/tool"], paths["App/1/bin/tool-again"]);
    let names: Vec<&[u8]> = tool.xattrs.iter().map(|(n, _)| &n[..]).collect();
    assert_eq!(
        names,
        [&b"user.a"[..], b"user.b", METACOPY_XATTR, REDIRECT_XATTR]
    );
    // A package's own directory entries, read by rows, are the same
    // entries its listing answers.
    let dir = by_rows.nodes[paths["App/2/share/doc"]].clone();
    let Body::Dir { entries, .. } = &dir.body else {
        panic!("not a directory")
    };
    let listed: Vec<&[u8]> = entries.iter().map(|(n, _)| &n[..]).collect();
    assert_eq!(listed, [&b"README"[..], b"deep"]);
}
