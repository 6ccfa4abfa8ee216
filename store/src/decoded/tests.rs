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

fn current(store: &Store) -> i64 {
    store.catalog().current_generation().unwrap().unwrap()
}

/// The large files of the generation get whole, read-only copies under
/// their content hash, the small one none; a second run writes nothing.
#[test]
fn large_files_get_whole_read_only_copies_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, files) = store_with_app(tmp.path(), "app", 1);
    let wanted = wanted(&store, current(&store)).unwrap();
    assert_eq!(wanted.len(), 2, "{wanted:?}");
    assert!(wanted[0].size > wanted[1].size, "largest first");
    let mut seen = 0;
    let report = decode(&store, &wanted, &mut |n| seen += n).unwrap();
    assert_eq!((report.written, report.present), (2, 0));
    assert_eq!(seen, (3 << 20) + (3 << 19));
    let dir = dir(store.dir());
    for (want, bytes) in wanted.iter().zip(&files) {
        let path = dir.join(name(&want.hash));
        assert_eq!(&fs::read(&path).unwrap(), bytes);
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o444);
        assert_eq!(want.hash, Hash::of(bytes));
    }
    assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 2, "nothing else");
    let again = decode(&store, &wanted, &mut |_| {}).unwrap();
    assert_eq!((again.written, again.present), (0, 2));
}

/// A copy that is not whole (a crash's temporary file, a copy cut short)
/// or not a file (a planted link) is never taken for one: it is replaced,
/// and the link's target is left alone.
#[test]
fn only_a_whole_regular_copy_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, files) = store_with_app(tmp.path(), "app", 2);
    let wanted = wanted(&store, current(&store)).unwrap();
    let dir = dir(store.dir());
    fs::create_dir(&dir).unwrap();
    let target = tmp.path().join("elsewhere");
    fs::write(&target, b"not yours").unwrap();
    std::os::unix::fs::symlink(&target, dir.join(name(&wanted[0].hash))).unwrap();
    fs::write(dir.join(name(&wanted[1].hash)), &files[1][..1000]).unwrap();
    std::os::unix::fs::symlink(&target, dir.join(format!(".{}.tmp", name(&wanted[0].hash))))
        .unwrap();
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
    let all = wanted(&store, current(&store)).unwrap();
    assert_eq!(all.len(), 4);
    decode(&store, &all, &mut |_| {}).unwrap();
    let dir = dir(store.dir());
    fs::write(dir.join(".leftover.tmp"), b"crash").unwrap();
    store.remove(&["gone".to_string()]).unwrap();
    let options = GcOptions {
        keep_last: 1,
        keep_younger_than: None,
        grace: Duration::ZERO,
        repack_below: 0.5,
    };
    let report = collect(&mut store, options).unwrap();
    assert_eq!(report.decoded_removed, 3, "{report:?}");
    let kept = wanted(&store, current(&store)).unwrap();
    assert_eq!(kept.len(), 2);
    let mut left: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    let mut expected: Vec<String> = kept.iter().map(|w| name(&w.hash)).collect();
    expected.sort();
    assert_eq!(left, expected);
}
