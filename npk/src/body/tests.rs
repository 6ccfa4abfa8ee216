use proptest::prelude::*;

use nexus_store::tree::{MAX_DEPTH, MAX_PATH_BYTES};

use super::*;

fn file(content: &[u8], mode: u32) -> Inode {
    Inode {
        kind: InodeKind::File {
            size: content.len() as u64,
            content: Some(Hash::of(content)),
        },
        mode,
        uid: 0,
        gid: 0,
        mtime: 1,
        xattrs: Vec::new(),
    }
}

fn dir() -> Inode {
    Inode {
        kind: InodeKind::Dir,
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime: 1,
        xattrs: vec![(b"user.a".to_vec(), b"1".to_vec())],
    }
}

/// A body with one package: root/{bin/{tool, tool-hard}, link -> bin/tool}.
fn sample(contents: &[Vec<u8>]) -> Body {
    let mut tree = Tree::default();
    tree.push_inode(dir());
    let bin = tree.push_inode(dir());
    tree.push_entry(0, b"bin".to_vec(), bin);
    let mut blobs = Vec::new();
    let mut chunks = Vec::new();
    for (i, c) in contents.iter().enumerate() {
        let f = tree.push_inode(file(c, 0o4755));
        tree.push_entry(bin, format!("tool{i}").into_bytes(), f);
        tree.push_entry(bin, format!("hard{i}").into_bytes(), f);
        if blobs.iter().any(|b: &BodyBlob| b.hash == Hash::of(c)) {
            continue;
        }
        chunks.push(BodyChunk {
            hash: Hash::of(c),
            len: c.len() as u32,
            offset: 32,
            block_len: 100,
            inner: 0,
        });
        blobs.push(BodyBlob {
            hash: Hash::of(c),
            size: c.len() as u64,
            chunks: vec![chunks.len() as u32 - 1],
        });
    }
    let l = tree.push_inode(Inode {
        kind: InodeKind::Symlink {
            target: b"bin/tool0".to_vec(),
        },
        mode: 0o777,
        uid: 0,
        gid: 0,
        mtime: 1,
        xattrs: Vec::new(),
    });
    tree.push_entry(0, b"link".to_vec(), l);
    let package = BodyPackage {
        name: "tool".into(),
        version: "1.0".into(),
        origin: "dir:/x".into(),
        metadata: "{}".into(),
        current: true,
        tree_hash: tree.tree_hash(),
        tree,
    };
    Body {
        packages: vec![package],
        blobs,
        chunks,
    }
}

#[test]
fn round_trip() {
    let body = sample(&[b"a".to_vec(), b"bb".to_vec()]);
    let bytes = body.encode();
    assert_eq!(Body::decode(&bytes, 32, 1000).unwrap(), body);
    let frame = compress(&bytes).unwrap();
    assert_eq!(decompress(&frame).unwrap(), bytes);
}

#[test]
fn highly_compressed_blocks_are_accepted() {
    // A small stored block may decode to megabytes (zeros compress ~1:10^4).
    let mut body = sample(&[vec![0u8; 40]]);
    body.chunks[0].block_len = 100;
    body.chunks[0].inner = 3 << 20;
    assert!(Body::decode(&body.encode(), 32, 1000).is_ok());
    body.chunks[0].inner = 5 << 20;
    assert!(Body::decode(&body.encode(), 32, 1000).is_err());
}

#[test]
fn hostile_bodies_are_refused() {
    let good = sample(&[b"a".to_vec()]);
    let check = |mutate: &dyn Fn(&mut Body), why: &str| {
        let mut b = good.clone();
        mutate(&mut b);
        // Keep the declared tree hash in step so that the structural check,
        // not the hash, must catch the problem.
        for p in &mut b.packages {
            if check_tree(&p.tree).is_ok() {
                p.tree_hash = p.tree.tree_hash();
            }
        }
        let err = Body::decode(&b.encode(), 32, 1000).unwrap_err().to_string();
        assert!(err.contains(why), "{err} should mention {why}");
    };
    check(
        &|b| b.packages[0].tree.entries[0].name = b"..".to_vec(),
        "unsafe name",
    );
    check(
        &|b| b.packages[0].tree.entries[0].name = b"a/b".to_vec(),
        "unsafe name",
    );
    check(
        &|b| b.packages[0].tree.entries[2].name = b"tool0".to_vec(),
        "duplicate name",
    );
    check(
        &|b| b.packages[0].tree.entries[0].inode = 0,
        "names the root",
    );
    check(
        &|b| b.packages[0].tree.entries[0].inode = 99,
        "missing inode",
    );
    check(
        &|b| b.packages[0].tree.entries[1].parent = 2,
        "not a directory",
    );
    check(&|b| b.packages[0].name = "../x".into(), "invalid name");
    check(&|b| b.chunks[0].offset = 2000, "outside");
    check(&|b| b.blobs[0].size = 5, "add up");
    check(&|b| b.blobs[0].chunks = vec![7], "out of range");
    check(
        &|b| {
            let p = b.packages[0].clone();
            b.packages.push(p);
        },
        "listed twice",
    );
    check(
        &|b| {
            // A directory that contains itself, detached from the root.
            let t = &mut b.packages[0].tree;
            let d = t.push_inode(dir());
            t.push_entry(d, b"self".to_vec(), d);
        },
        "not reachable",
    );
    check(
        &|b| b.packages[0].tree.inodes[1].xattrs = vec![(b"user.a\0b".to_vec(), b"1".to_vec())],
        "NUL",
    );
    check(
        &|b| b.packages[0].tree.inodes[1].xattrs = vec![(vec![b'u'; 256], b"1".to_vec())],
        "longer than 255",
    );
    check(
        &|b| b.packages[0].tree.inodes[1].xattrs = vec![(b"user.v".to_vec(), vec![0; 65537])],
        "larger than 64 KiB",
    );
    check(
        &|b| b.packages[0].tree.inodes[1].xattrs = vec![(Vec::new(), b"1".to_vec())],
        "without a name",
    );
    // A wrong tree hash.
    let mut b = good.clone();
    b.packages[0].tree_hash = Hash::of(b"other");
    assert!(Body::decode(&b.encode(), 32, 1000).is_err());
}

proptest! {
    #[test]
    fn random_contents_round_trip(contents in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..6)) {
        let body = sample(&contents);
        prop_assert_eq!(Body::decode(&body.encode(), 32, 1000).unwrap(), body);
    }

    #[test]
    fn truncation_or_garbage_never_panics(cut in 0usize..400, flip in 0usize..400) {
        let bytes = sample(&[b"xyz".to_vec()]).encode();
        let _ = Body::decode(&bytes[..cut.min(bytes.len())], 32, 1000);
        let mut b = bytes.clone();
        if flip < b.len() {
            b[flip] ^= 0x80;
        }
        let _ = Body::decode(&b, 32, 1000);
    }
}

/// A body of one package named NAME/1 with `tree` and a tree hash that is
/// not its own: the limits must refuse it before any hashing.
fn unhashed(name: &str, tree: Tree, blobs: Vec<BodyBlob>) -> Body {
    Body {
        packages: vec![BodyPackage {
            name: name.into(),
            version: "1".into(),
            origin: "dir:/x".into(),
            metadata: "{}".into(),
            current: true,
            tree_hash: Hash::of(b"never computed"),
            tree,
        }],
        blobs,
        chunks: Vec::new(),
    }
}

/// A package whose tree is one chain of `depth` directories.
fn chain(depth: usize) -> Body {
    let mut tree = Tree::default();
    tree.push_inode(dir());
    let mut parent = 0;
    for _ in 0..depth {
        let d = tree.push_inode(dir());
        tree.push_entry(parent, b"d".to_vec(), d);
        parent = d;
    }
    unhashed("deep", tree, Vec::new())
}

#[test]
fn deep_chains_are_refused_quickly() {
    let mut at_limit = chain(MAX_DEPTH);
    at_limit.packages[0].tree_hash = at_limit.packages[0].tree.tree_hash();
    Body::decode(&at_limit.encode(), 32, 1000).unwrap();

    // 200 000 levels: about 7 MB encoded; validating it by materialised
    // paths would hold ~77 GB.
    let deep = chain(200_000).encode();
    let started = std::time::Instant::now();
    let err = Body::decode(&deep, 32, 1000).unwrap_err().to_string();
    assert!(
        err.contains("257 levels deep") && err.contains("limit of 256"),
        "{err}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn total_path_bytes_are_limited() {
    // Wide rather than deep: 72 000 entries with 255-byte names under a
    // directory 14 levels of 250-byte names down: about 271 MB of paths.
    let mut tree = Tree::default();
    tree.push_inode(dir());
    let mut parent = 0;
    for _ in 0..14 {
        let d = tree.push_inode(dir());
        tree.push_entry(parent, vec![b'p'; 250], d);
        parent = d;
    }
    let f = tree.push_inode(file(b"", 0o644));
    for i in 0..72_000u32 {
        let mut name = format!("{i:0>255}").into_bytes();
        name.truncate(255);
        tree.push_entry(parent, name, f);
    }
    let empty = BodyBlob {
        hash: Hash::of(b""),
        size: 0,
        chunks: Vec::new(),
    };
    let body = unhashed("wide", tree, vec![empty]);
    let err = Body::decode(&body.encode(), 32, 1000)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&MAX_PATH_BYTES.to_string()), "{err}");
}
