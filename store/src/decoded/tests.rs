use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use super::*;
use crate::gc::{GcOptions, collect};
use crate::store::{AddDir, AddOptions, NoProgress};

/// Pseudo-random bytes (incompressible enough to be stored in frames).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A store holding APP/1 with a 3 MiB file, a 1.5 MiB one and a small one.
fn store_with_app(root: &Path, app: &str, seed: u64) -> (Store, Vec<Vec<u8>>) {
    let src = root.join(format!("src-{app}"));
    fs::create_dir_all(&src).unwrap();
    let files = vec![
        noise(seed, 3 << 20),
        noise(seed + 1, 3 << 19),
        noise(seed + 2, 4096),
    ];
    for (i, bytes) in files.iter().enumerate() {
        fs::write(src.join(format!("f{i}")), bytes).unwrap();
    }
    let store_dir = root.join("store");
    let mut store = if store_dir.exists() {
        Store::open(&store_dir).unwrap()
    } else {
        Store::init(&store_dir).unwrap()
    };
    let add = AddDir {
        path: src,
        name: app.into(),
        version: "1".into(),
    };
    store
        .add_dirs(&[add], AddOptions::default(), &NoProgress)
        .unwrap();
    (store, files)
}

/// gc keeping only the current generation, with no grace time.
fn gc_now() -> GcOptions {
    GcOptions {
        keep_last: 1,
        keep_younger_than: None,
        grace: Duration::ZERO,
        repack_below: 0.5,
    }
}

fn current(store: &Store) -> i64 {
    store.catalog().current_generation().unwrap().unwrap()
}

/// The large files of the generation get whole, read-only copies under
/// their content hash, the small one none; a second run writes nothing.
#[test]
fn large_files_get_whole_read_only_copies_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, files) = store_with_app(tmp.path(), "app", 1);
    let wanted = wanted(&store, current(&store), DEFAULT_MIN_SIZE).unwrap();
    assert_eq!(wanted.len(), 2, "{wanted:?}");
    let mut sizes: Vec<u64> = wanted.iter().map(|w| w.size).collect();
    sizes.sort();
    assert_eq!(sizes, [3 << 19, 3 << 20]);
    let mut seen = 0;
    let report = decode(&store, &wanted, &mut |n| seen += n).unwrap();
    assert_eq!((report.written, report.present), (2, 0));
    assert_eq!(seen, (3 << 20) + (3 << 19));
    let dir = dir(store.dir());
    for bytes in &files[..2] {
        let path = dir.join(name(&Hash::of(bytes)));
        assert_eq!(&fs::read(&path).unwrap(), bytes);
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o444);
    }
    assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 2, "nothing else");
    let again = decode(&store, &wanted, &mut |_| {}).unwrap();
    assert_eq!((again.written, again.present), (0, 2));
}

/// A content whose catalog chunk list does not add up to its name (what a
/// lying remote's metadata makes: each chunk right, the whole another
/// file's name) gets no copy: the kernel would serve the copy under that
/// name, unchecked, to whatever file later has it. The others are decoded.
#[test]
fn a_content_whose_chunks_are_not_its_name_gets_no_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, files) = store_with_app(tmp.path(), "app", 7);
    let claimed = Hash::of(&noise(99, files[0].len()));
    {
        let db = rusqlite::Connection::open(store.dir().join(crate::CATALOG_FILE)).unwrap();
        let n = db
            .execute(
                "UPDATE blobs SET hash = ?1 WHERE hash = ?2",
                rusqlite::params![
                    claimed.as_bytes().to_vec(),
                    Hash::of(&files[0]).as_bytes().to_vec()
                ],
            )
            .unwrap();
        assert_eq!(n, 1);
    }
    let store = Store::open(store.dir()).unwrap();
    let wanted = wanted(&store, current(&store), DEFAULT_MIN_SIZE).unwrap();
    assert!(wanted.iter().any(|w| w.hash == claimed), "{wanted:?}");
    let report = decode(&store, &wanted, &mut |_| {}).unwrap();
    assert_eq!(report.refused, [claimed.to_hex()]);
    assert_eq!(report.written, 1, "the other large file");
    let dir = dir(store.dir());
    assert!(
        !dir.join(name(&claimed)).exists(),
        "a copy under the claimed name"
    );
    assert_eq!(
        fs::read_dir(&dir).unwrap().count(),
        1,
        "no temporary file left behind"
    );
    assert_eq!(
        fs::read(dir.join(name(&Hash::of(&files[1])))).unwrap(),
        files[1]
    );
}

/// A copy that is not whole (a crash's temporary file, a copy cut short)
/// or not a file (a planted link) is never taken for one: it is replaced,
/// and the link's target is left alone.
#[test]
fn only_a_whole_regular_copy_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, files) = store_with_app(tmp.path(), "app", 2);
    let mut wanted = wanted(&store, current(&store), DEFAULT_MIN_SIZE).unwrap();
    // In the order of `files`: largest first.
    wanted.sort_by_key(|w| std::cmp::Reverse(w.size));
    let dir = dir(store.dir());
    fs::create_dir(&dir).unwrap();
    let target = tmp.path().join("elsewhere");
    fs::write(&target, b"not yours").unwrap();
    std::os::unix::fs::symlink(&target, dir.join(name(&wanted[0].hash))).unwrap();
    fs::write(dir.join(name(&wanted[1].hash)), &files[1][..1000]).unwrap();
    let temp = format!(".{}.{}.tmp", name(&wanted[0].hash), std::process::id());
    std::os::unix::fs::symlink(&target, dir.join(temp)).unwrap();
    assert!(!has_copy(&dir, &wanted[0].hash, wanted[0].size));
    assert!(!has_copy(&dir, &wanted[1].hash, wanted[1].size));
    let report = decode(&store, &wanted, &mut |_| {}).unwrap();
    assert_eq!(report.written, 2);
    assert_eq!(fs::read(&target).unwrap(), b"not yours");
    assert_eq!(fs::read(dir.join(name(&wanted[0].hash))).unwrap(), files[0]);
    assert_eq!(fs::read(dir.join(name(&wanted[1].hash))).unwrap(), files[1]);
}

/// gc removes the copies of contents no stored package holds any more,
/// and leftovers, and keeps those of packages still stored.
#[test]
fn gc_prunes_copies_of_contents_no_package_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = store_with_app(tmp.path(), "keep", 3);
    drop(store);
    let (mut store, _) = store_with_app(tmp.path(), "gone", 4);
    let all = wanted(&store, current(&store), DEFAULT_MIN_SIZE).unwrap();
    assert_eq!(all.len(), 4);
    decode(&store, &all, &mut |_| {}).unwrap();
    let dir = dir(store.dir());
    // A crash's leftover, two hours old, and another decode's, fresh.
    let old = dir.join(format!(".{}.1.tmp", "ab".repeat(32)));
    fs::write(&old, b"crash").unwrap();
    let two_hours = std::time::SystemTime::now() - Duration::from_secs(7200);
    fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(two_hours)
        .unwrap();
    let fresh = format!(".{}.2.tmp", "cd".repeat(32));
    fs::write(dir.join(&fresh), b"being written").unwrap();
    // Not a name of ours: left alone.
    fs::write(dir.join("notes.txt"), b"mine").unwrap();
    store.remove(&["gone".to_string()]).unwrap();
    let options = gc_now();
    let report = collect(&mut store, options).unwrap();
    assert_eq!(report.decoded_removed, 3, "{report:?}");
    let kept = wanted(&store, current(&store), DEFAULT_MIN_SIZE).unwrap();
    assert_eq!(kept.len(), 2);
    let mut left: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    let mut expected: Vec<String> = kept.iter().map(|w| name(&w.hash)).collect();
    expected.push(fresh);
    expected.push("notes.txt".into());
    expected.sort();
    assert_eq!(left, expected);
}

/// A copy with other bytes than its name says (of the right size: the
/// image takes it) is reported by verify's check and written anew by the
/// next decode; a link in place of the directory is never followed by gc.
#[test]
fn damaged_copies_are_found_and_replaced_and_links_never_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut store, files) = store_with_app(tmp.path(), "app", 5);
    let mut wanted = wanted(&store, current(&store), DEFAULT_MIN_SIZE).unwrap();
    // In the order of `files`: largest first.
    wanted.sort_by_key(|w| std::cmp::Reverse(w.size));
    decode(&store, &wanted, &mut |_| {}).unwrap();
    let dir = dir(store.dir());
    let copy = dir.join(name(&wanted[0].hash));
    let mut bytes = fs::read(&copy).unwrap();
    bytes[1000] ^= 0xff;
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&copy, &bytes).unwrap();
    assert!(has_copy(&dir, &wanted[0].hash, wanted[0].size));
    let damaged = check(&store).unwrap();
    assert_eq!(damaged.len(), 1, "{damaged:?}");
    assert_eq!(damaged[0].0, name(&wanted[0].hash));
    let verified = crate::verify::verify(&mut store).unwrap();
    assert!(!verified.ok, "verify passed a damaged copy");
    let report = decode(&store, &wanted, &mut |_| {}).unwrap();
    assert_eq!((report.replaced, report.written, report.present), (1, 1, 1));
    assert_eq!(fs::read(&copy).unwrap(), files[0]);
    assert!(check(&store).unwrap().is_empty());

    // gc with a link where the directory was: refused, the target kept.
    let elsewhere = tmp.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    let victim = elsewhere.join(name(&Hash::of(b"victim")));
    fs::write(&victim, b"victim").unwrap();
    fs::rename(&dir, tmp.path().join("moved")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &dir).unwrap();
    assert!(prune(&store).is_err());
    assert!(victim.exists(), "gc followed the link");
}

/// A smaller --min-size decodes small files too and lowers what views look
/// for; a larger one later never raises it (copies once written keep being
/// used), and gc keeps a small file's copy while its content is stored.
#[test]
fn a_smaller_min_size_decodes_small_files_and_is_remembered() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut store, files) = store_with_app(tmp.path(), "app", 6);
    assert_eq!(min_size(store.catalog()).unwrap(), DEFAULT_MIN_SIZE);
    assert_eq!(record_min_size(store.catalog(), 0).unwrap(), 1, "never 0");
    let all = wanted(&store, current(&store), 1).unwrap();
    assert_eq!(all.len(), 3, "{all:?}");
    let report = decode(&store, &all, &mut |_| {}).unwrap();
    assert_eq!(report.written, 3);
    let small = dir(store.dir()).join(name(&Hash::of(&files[2])));
    assert_eq!(fs::read(&small).unwrap(), files[2]);
    assert_eq!(record_min_size(store.catalog(), 4 << 20).unwrap(), 1);
    assert_eq!(min_size(store.catalog()).unwrap(), 1);

    let options = gc_now();
    let report = collect(&mut store, options).unwrap();
    assert_eq!(report.decoded_removed, 0, "{report:?}");
    assert!(small.exists());
}

/// A raised threshold takes the disk back: copies of smaller files go at
/// once when no running view names them, and stay while one says it may
/// (its runtime record), until it says it names only the larger ones. A
/// plain `record_min_size` never raises it.
#[test]
fn a_raised_threshold_prunes_smaller_copies_no_running_view_names() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, files) = store_with_app(tmp.path(), "app", 7);
    set_min_size(store.catalog(), 1).unwrap();
    let all = wanted(&store, current(&store), 1).unwrap();
    assert_eq!(decode(&store, &all, &mut |_| {}).unwrap().written, 3);
    let copy = |i: usize| dir(store.dir()).join(name(&Hash::of(&files[i])));

    // A kernel view that named every copy is running.
    let view = crate::runtime::RuntimeRoot::register(
        store.dir(),
        crate::runtime::Served {
            kind: crate::runtime::ServedKind::Mount,
            target: tmp.path().join("mnt"),
            generations: vec![current(&store)],
            packages: Vec::new(),
            decoded_from: 1,
        },
    )
    .unwrap();
    assert_eq!(set_min_size(store.catalog(), 2 << 20).unwrap(), 2 << 20);
    let held = prune(&store).unwrap();
    assert_eq!((held.removed, held.held), (0, 2), "{held:?}");
    assert_eq!(held.held_bytes, (3 << 19) + 4096);
    assert!(copy(1).exists() && copy(2).exists());

    // It switched: its image names copies of 2 MiB or more only.
    view.set_decoded_from(2 << 20).unwrap();
    let pruned = prune(&store).unwrap();
    assert_eq!((pruned.removed, pruned.held), (2, 0), "{pruned:?}");
    assert_eq!(pruned.removed_bytes, (3 << 19) + 4096);
    assert!(copy(0).exists(), "a copy above the threshold stays");
    assert!(!copy(1).exists() && !copy(2).exists());

    assert_eq!(record_min_size(store.catalog(), 4 << 20).unwrap(), 2 << 20);
    drop(view);
    assert_eq!(prune(&store).unwrap(), Pruned::default());
    assert!(copy(0).exists());
}

/// The contents a kernel view looks for copies of: those named, of at
/// least the threshold, that files of the generation hold, whether the
/// names are looked up one by one or found in a pass over every file.
#[test]
fn the_contents_named_are_found_by_either_way_alike() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, a) = store_with_app(tmp.path(), "a", 11);
    let first = current(&store);
    drop(store);
    let (store, b) = store_with_app(tmp.path(), "b", 21);
    let second = current(&store);
    let stranger = Hash::of(b"no file holds this");
    let names: HashSet<Hash> = [&a[0], &a[1], &b[0], &b[1], &b[2]]
        .into_iter()
        .map(|bytes| Hash::of(bytes))
        .chain([stranger])
        .collect();
    let size = |bytes: &Vec<u8>| (Hash::of(bytes), bytes.len() as u64);
    let cases = [
        (first, DEFAULT_MIN_SIZE, vec![size(&a[0]), size(&a[1])]),
        (
            second,
            DEFAULT_MIN_SIZE,
            vec![size(&a[0]), size(&a[1]), size(&b[0]), size(&b[1])],
        ),
        (
            second,
            1,
            vec![
                size(&a[0]),
                size(&a[1]),
                size(&b[0]),
                size(&b[1]),
                size(&b[2]),
            ],
        ),
    ];
    for (generation, min_size, wanted) in cases {
        let wanted: HashSet<(Hash, u64)> = wanted.into_iter().collect();
        for lookups_max in [0, usize::MAX] {
            let found = store
                .catalog()
                .generation_contents_named_by(generation, min_size, &names, lookups_max)
                .unwrap();
            let found: HashSet<(Hash, u64)> = found.iter().map(|(_, h, s)| (*h, *s)).collect();
            assert_eq!(
                found, wanted,
                "generation {generation}, at least {min_size} bytes, lookups up to {lookups_max}"
            );
        }
    }
}
