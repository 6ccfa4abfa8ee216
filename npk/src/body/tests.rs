use proptest::prelude::*;

use nexus_store::tree::{MAX_DEPTH, MAX_PATH_BYTES, MAX_XATTR_BYTES};

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
        restricted_to: None,
        tree_hash: tree.tree_hash(),
        tree,
    };
    Body {
        packages: vec![package],
        blobs,
        chunks,
    }
}

/// [`sample`] with a second package, `aa-evil/1.0` (a copy of `tool`'s tree
/// under another name), restricted to `apps`.
fn with_restricted(apps: &str) -> Body {
    let mut body = sample(&[b"a".to_vec(), b"bb".to_vec()]);
    let mut evil = body.packages[0].clone();
    evil.name = "aa-evil".into();
    evil.restricted_to = Some(apps.into());
    body.packages.push(evil);
    body
}

/// The body of version 1 exactly as FORMAT.md spells it (and as builds
/// before restrictions wrote it), for `body`, whose restrictions it has
/// no room for.
fn version_1_bytes(body: &Body) -> Vec<u8> {
    let mut w = Writer::default();
    w.raw(b"NXBODY01");
    w.u32(body.packages.len() as u32);
    for p in &body.packages {
        w.str(&p.name);
        w.str(&p.version);
        w.str(&p.origin);
        w.str(&p.metadata);
        w.u8(p.current as u8);
        w.hash(&p.tree_hash);
        w.u32(p.tree.inodes.len() as u32);
        for inode in &p.tree.inodes {
            encode_inode(&mut w, inode);
        }
        w.u32(p.tree.entries.len() as u32);
        for e in &p.tree.entries {
            w.u32(e.parent);
            w.u32(e.inode);
            w.bytes(&e.name);
        }
    }
    w.u32(body.blobs.len() as u32);
    for b in &body.blobs {
        w.hash(&b.hash);
        w.u64(b.size);
        w.u32(b.chunks.len() as u32);
        for &c in &b.chunks {
            w.u32(c);
        }
    }
    w.u32(body.chunks.len() as u32);
    for c in &body.chunks {
        w.hash(&c.hash);
        w.u32(c.len);
        w.u64(c.offset);
        w.u32(c.block_len);
        w.u32(c.inner);
    }
    w.buf
}

/// Old data reads as it always did: a version-1 body (an image or a
/// remote's metadata written before restrictions travelled) decodes with
/// every package unrestricted, and a body without a restricted package is
/// still written as version 1, byte for byte, so builds reading only
/// version 1 read it.
#[test]
fn version_1_bodies_read_as_unrestricted_and_are_still_written() {
    let mut stripped = with_restricted("aa-*");
    for p in &mut stripped.packages {
        p.restricted_to = None;
    }
    let old = version_1_bytes(&stripped);
    let decoded = Body::decode(&old, 32, 1000).unwrap();
    assert!(decoded.packages.iter().all(|p| p.restricted_to.is_none()));
    assert_eq!(decoded, stripped);
    assert_eq!(decoded.version(), 1);
    assert_eq!(stripped.encode(), old, "an unrestricted body is version 1");
}

#[test]
fn restrictions_round_trip_in_version_2_only() {
    let body = with_restricted("aa-*,acme-tools");
    assert_eq!(body.version(), 2);
    let bytes = body.encode();
    assert_eq!(&bytes[..8], BODY_MAGIC_V2);
    let decoded = Body::decode(&bytes, 32, 1000).unwrap();
    assert_eq!(decoded, body);
    assert_eq!(decoded.packages[0].restricted_to, None);
    assert_eq!(
        decoded.packages[1].restricted_to.as_deref(),
        Some("aa-*,acme-tools")
    );
    // Written as version 1, the restriction is gone: what a mirror would
    // have to serve to strip it, which is not what the signer hashed.
    let stripped = body.encode_as(1);
    assert_ne!(Hash::of(&stripped), Hash::of(&bytes));
    assert!(
        Body::decode(&stripped, 32, 1000).unwrap().packages[1]
            .restricted_to
            .is_none()
    );
}

/// Each body has one encoding: a version-2 body restricting nothing is
/// refused (it would be written as version 1), and so is a restriction a
/// grant could not have made.
#[test]
fn version_2_bodies_must_restrict_something_as_a_grant_would() {
    let mut unrestricted = sample(&[b"a".to_vec()]);
    let bytes = unrestricted.encode_as(2);
    let err = Body::decode(&bytes, 32, 1000).unwrap_err().to_string();
    assert!(err.contains("no package is restricted"), "{err}");
    unrestricted.packages[0].restricted_to = Some(String::new());
    assert!(Body::decode(&unrestricted.encode(), 32, 1000).is_err());

    for bad in ["*", "aa-*,**", "a b", "a,,b", "a/b", ",", "x\u{7}"] {
        let body = with_restricted(bad);
        let err = Body::decode(&body.encode(), 32, 1000)
            .unwrap_err()
            .to_string();
        assert!(err.contains("aa-evil/1.0: restricted to"), "{bad:?}: {err}");
    }
    for good in ["aa-*", "a?c,b*", "\u{17c}\u{f3}\u{142}w*"] {
        let body = with_restricted(good);
        assert_eq!(Body::decode(&body.encode(), 32, 1000).unwrap(), body);
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
fn a_block_longer_than_any_reader_reads_is_refused() {
    // Read-ahead and prefetch size buffers by the declared length.
    let mut body = sample(&[vec![7u8; 40]]);
    body.chunks[0].inner = 0;
    body.chunks[0].block_len = nexus_store::params::BLOCK_MAX_STORED as u32;
    assert!(Body::decode(&body.encode(), 0, u64::MAX).is_ok());
    body.chunks[0].block_len += 1;
    let err = Body::decode(&body.encode(), 0, u64::MAX)
        .unwrap_err()
        .to_string();
    assert!(err.contains("longer than any block"), "{err}");
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
            if check_tree(&p.tree, PathBudget::default()).is_ok() {
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
    /// Any mix of restricted and unrestricted packages decodes to what was
    /// encoded, in the version its restrictions call for.
    #[test]
    fn random_restrictions_round_trip(
        marks in proptest::collection::vec(proptest::option::of("[a-z?*]{0,6}[a-z][a-z*?]{0,3}(,[a-z][a-z*?]{0,5}){0,2}"), 1..5),
    ) {
        let mut body = sample(&[b"a".to_vec()]);
        let template = body.packages[0].clone();
        body.packages.clear();
        for (i, mark) in marks.iter().enumerate() {
            let mut p = template.clone();
            p.name = format!("app{i}");
            p.restricted_to = mark.clone();
            body.packages.push(p);
        }
        let bytes = body.encode();
        let version = if marks.iter().any(Option::is_some) { 2 } else { 1 };
        prop_assert_eq!(body.version(), version);
        prop_assert_eq!(&bytes[..8], if version == 2 { BODY_MAGIC_V2 } else { BODY_MAGIC_V1 });
        prop_assert_eq!(Body::decode(&bytes, 32, 1000).unwrap(), body);
    }

    #[test]
    fn random_contents_round_trip(contents in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..6)) {
        let body = sample(&contents);
        prop_assert_eq!(Body::decode(&body.encode(), 32, 1000).unwrap(), body);
    }

    #[test]
    fn truncation_or_garbage_never_panics(cut in 0usize..800, flip in 0usize..800, v2: bool) {
        let bytes = if v2 { with_restricted("aa-*") } else { sample(&[b"xyz".to_vec()]) }.encode();
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
            restricted_to: None,
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

/// `limits` with `max_entries` and `max_unpacked_size` set, one package.
fn limits(max_entries: u64, max_unpacked_size: u64) -> BodyLimits {
    BodyLimits {
        max_packages: 1,
        max_entries,
        max_unpacked_size,
    }
}

fn over(err: FormatError) -> OverLimit {
    match err {
        FormatError::OverLimit(over) => over,
        other => panic!("refused by a limit, not {other}"),
    }
}

/// The per-package limits and the package count are checked while the
/// body is decoded (from its zstd frame, as an archive holds it): exactly
/// what the old check after decoding counted (entries, hard links each;
/// file sizes, a hard-linked file once) is accepted up to the limit and
/// refused one past it, naming the package and the limit.
#[test]
fn limits_are_checked_as_the_body_is_decoded() {
    let body = sample(&[b"abc".to_vec(), b"de".to_vec()]);
    let entries = body.packages[0].tree.entries.len() as u64;
    let frame = compress(&body.encode()).unwrap();
    let decode = |l: BodyLimits| Body::decode_frame(&frame, 32, 1000, &l);
    assert_eq!(decode(BodyLimits::NONE).unwrap(), body);
    assert_eq!(decode(limits(entries, 5)).unwrap(), body);

    let refused = over(decode(limits(entries - 1, 5)).unwrap_err());
    assert_eq!(refused.package, "tool/1.0");
    assert_eq!(refused.which, PackageLimit::Entries);
    assert_eq!(refused.limit, entries - 1);
    assert!(refused.what.contains(&format!("({entries})")), "{refused}");
    let refused = over(decode(limits(entries, 4)).unwrap_err());
    assert_eq!(refused.which, PackageLimit::UnpackedSize);
    assert!(refused.to_string().contains("limit of 4"), "{refused}");

    let two = with_restricted("aa-*");
    let frame = compress(&two.encode()).unwrap();
    let err = Body::decode_frame(&frame, 32, 1000, &limits(100, 100))
        .unwrap_err()
        .to_string();
    assert!(err.contains("2 packages, more than the 1"), "{err}");
}

/// A count over the limits is refused when it is read: what follows it
/// is neither read nor decompressed, so a body that claims millions of
/// entries costs what its first bytes do. Here nothing follows the count
/// at all; without limits the same body is refused as truncated.
#[test]
fn a_count_over_the_limits_is_refused_before_its_items_are_read() {
    let body = sample(&[b"a".to_vec()]);
    let bytes = body.encode();
    let tree = &body.packages[0].tree;
    let inodes_len: usize = tree
        .inodes
        .iter()
        .map(|i| {
            let mut w = Writer::default();
            encode_inode(&mut w, i);
            w.buf.len()
        })
        .sum();
    // magic, package count, name, version, origin, metadata, current,
    // tree hash, inode count, inodes: then the entry count.
    let p = &body.packages[0];
    let at = 8
        + 4
        + [&p.name, &p.version, &p.origin, &p.metadata]
            .iter()
            .map(|s| 4 + s.len())
            .sum::<usize>()
        + 1
        + 32
        + 4
        + inodes_len;
    assert_eq!(
        bytes[at..at + 4],
        (tree.entries.len() as u32).to_le_bytes(),
        "the entry count is where the format puts it"
    );
    let mut cut = bytes[..at].to_vec();
    cut.extend_from_slice(&40_000_000u32.to_le_bytes());
    let frame = compress(&cut).unwrap();
    let refused =
        over(Body::decode_frame(&frame, 32, 1000, &limits(1_000_000, 1 << 30)).unwrap_err());
    assert_eq!(refused.which, PackageLimit::Entries);
    assert!(refused.what.contains("(40000000)"), "{refused}");
    let err = Body::decode_frame(&frame, 32, 1000, &BodyLimits::NONE)
        .unwrap_err()
        .to_string();
    assert!(err.contains("truncated at entry parent"), "{err}");
}

/// An inode's attributes are checked and charged to the package's 64 MiB
/// budget one by one as they are read: a list over it is refused at the
/// attribute that passes it, before the rest is read or held (the whole
/// list was decoded first: 28 million attributes of one inode, from a
/// 17 MB archive, cost 2.6 GB to refuse). Here the list claims more than
/// the body holds, which is only found after the budget refuses it.
#[test]
fn attributes_are_charged_to_the_budget_as_they_are_read() {
    let value = vec![b'v'; 64 << 10];
    let per = 255 + value.len();
    let over = MAX_XATTR_BYTES as usize / per + 1;
    let mut w = Writer::default();
    w.raw(BODY_MAGIC_V1);
    w.u32(1);
    for text in ["tool", "1", "", "{}"] {
        w.str(text);
    }
    w.u8(1);
    w.hash(&Hash([7; 32]));
    w.u32(1);
    w.u8(KIND_DIR);
    w.u32(0o755);
    w.u32(0);
    w.u32(0);
    w.i64(0);
    w.u32(u32::MAX); // the xattrs' length: more than follows
    w.u32(2 * over as u32);
    for i in 0..over {
        w.bytes(format!("user.{i:0>250}").as_bytes());
        w.bytes(&value);
    }
    let err = Body::decode(&w.buf, 32, 1000).unwrap_err().to_string();
    assert!(
        err.contains("tool/1") && err.contains(&format!("limit of {MAX_XATTR_BYTES} bytes")),
        "{err}"
    );
}
