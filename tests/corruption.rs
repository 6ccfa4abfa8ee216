//! Corruption: one byte of a pack file is flipped behind the store's back.
//! `nip verify` must exit 3 and name exactly the files whose content includes
//! the damaged chunk (computed here independently, from our own source files
//! and the documented pack format), and reading those files must fail with an
//! error instead of returning wrong bytes, while every other file still reads
//! fine.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;

use nexus_integration_tests::Store;
use nexus_integration_tests::fixtures::{Scratch, random_bytes, text_bytes, write_file};
use nexus_integration_tests::nip::{EXIT_DAMAGED, Run};
use nexus_integration_tests::pack::{self, Record};

/// `(package spec, path inside the package)`.
type FileId = (String, String);

/// A store holding two small packages whose contents the test knows exactly.
struct Fixture {
    _scratch: Scratch,
    store: Store,
    /// Every regular file of both packages and its content.
    files: BTreeMap<FileId, Vec<u8>>,
    /// Content shared by three files in two packages (one chunk).
    shared: Vec<u8>,
    /// The multi-chunk file.
    large: FileId,
}

fn id(spec: &str, path: &str) -> FileId {
    (spec.to_string(), path.to_string())
}

/// Builds `alpha/1` (distinct small files, two files with the same content
/// `S`, one 3 MiB incompressible file) and `beta/1` (a third copy of `S` and a
/// file of its own), added in one transaction.
fn fixture() -> Fixture {
    let scratch = Scratch::new("corruption");
    let shared = text_bytes(42, 6000);
    let mut files = BTreeMap::new();
    files.insert(id("alpha/1", "shared.txt"), shared.clone());
    files.insert(id("alpha/1", "docs/shared-copy.txt"), shared.clone());
    for i in 0..5u8 {
        let data = random_bytes(&[b'u', i], 2048 + 1500 * i as usize);
        files.insert(id("alpha/1", &format!("uniq/u{i}.bin")), data);
    }
    files.insert(id("alpha/1", "notes.txt"), text_bytes(7, 9000));
    let large = id("alpha/1", "big/large.bin");
    files.insert(large.clone(), random_bytes(b"large", 3 * 1024 * 1024 + 5));
    files.insert(id("beta/1", "share/again.txt"), shared.clone());
    files.insert(id("beta/1", "own.txt"), text_bytes(99, 3000));

    for ((spec, path), data) in &files {
        write_file(&scratch.join("src").join(spec).join(path), data);
    }
    let store = Store::init();
    store.ok([
        OsString::from("add"),
        scratch.join("src/alpha/1").into_os_string(),
        scratch.join("src/beta/1").into_os_string(),
    ]);
    let (run, report) = store.verify();
    assert!(
        run.code() == Some(0) && report.ok,
        "the store must verify clean before it is damaged:\n{run}"
    );
    let distinct_chunks: BTreeSet<[u8; 32]> = pack::read_all_packs(&store.packs_dir())
        .iter()
        .map(|r| r.hash)
        .collect();
    assert_eq!(
        report.chunks_checked,
        distinct_chunks.len() as u64,
        "a fresh store references every chunk in its packs, so verify should check them all"
    );
    assert!(
        report.files_checked > 0,
        "verify checked no files: {report:?}"
    );
    Fixture {
        _scratch: scratch,
        store,
        files,
        shared,
        large,
    }
}

impl Fixture {
    /// The files below the small-file threshold (each stored as one chunk
    /// named by its content hash), with their hashes.
    fn small_file_hashes(&self) -> BTreeSet<[u8; 32]> {
        self.files
            .iter()
            .filter(|(id, _)| **id != self.large)
            .map(|(_, data)| *blake3::hash(data).as_bytes())
            .collect()
    }

    /// The one pack record holding the chunk with content `data`.
    fn record_of(&self, data: &[u8]) -> Record {
        let hash = *blake3::hash(data).as_bytes();
        let records: Vec<Record> = pack::read_all_packs(&self.store.packs_dir())
            .into_iter()
            .filter(|r| r.hash == hash)
            .collect();
        assert_eq!(
            records.len(),
            1,
            "expected exactly one record for chunk {} (identical content is stored once): {records:?}",
            blake3::Hash::from_bytes(hash).to_hex()
        );
        assert_eq!(
            records[0].raw_len as usize,
            data.len(),
            "raw length of {records:?}"
        );
        records.into_iter().next().unwrap()
    }

    /// Checks `nip verify` (JSON and human forms) names exactly `expected`,
    /// and that each of those files fails to read while all others read back
    /// correctly.
    fn assert_damage_reported(&self, expected: &BTreeSet<FileId>, what: &str) {
        let (run, report) = self.store.verify();
        assert_eq!(
            run.code(),
            Some(EXIT_DAMAGED),
            "{what}: verify must exit 3:\n{run}"
        );
        assert!(!report.ok, "{what}: verify says ok despite damage:\n{run}");
        let named: Vec<FileId> = report
            .damaged
            .iter()
            .map(|d| (d.package.clone(), d.path.clone()))
            .collect();
        let named_set: BTreeSet<FileId> = named.iter().cloned().collect();
        assert_eq!(
            &named_set, expected,
            "{what}: verify must name exactly the files containing the damaged chunk:\n{run}"
        );
        assert_eq!(
            named.len(),
            named_set.len(),
            "{what}: verify names a file twice:\n{run}"
        );
        for d in &report.damaged {
            assert!(
                !d.reason.trim().is_empty(),
                "{what}: no reason given for {d:?}"
            );
        }

        let human = self.store.run(["verify"]);
        assert_eq!(
            human.code(),
            Some(EXIT_DAMAGED),
            "{what}: plain verify must exit 3 too:\n{human}"
        );
        let text = format!("{}{}", human.stdout_text(), human.stderr);
        for (spec, path) in &self.files_ids() {
            let line = format!("{spec}: {path}");
            let damaged = expected.contains(&(spec.clone(), path.clone()));
            assert_eq!(
                text.contains(&line),
                damaged,
                "{what}: plain verify output {} `{line}`:\n{human}",
                if damaged {
                    "must name"
                } else {
                    "must not name"
                }
            );
        }

        for ((spec, path), data) in &self.files {
            let run = self.store.cat(spec, path);
            if expected.contains(&(spec.clone(), path.clone())) {
                assert_cat_refuses(&run, data, what);
            } else {
                assert!(
                    run.success(),
                    "{what}: an undamaged file no longer reads:\n{run}"
                );
                assert!(
                    run.stdout == *data,
                    "{what}: `{}` returned wrong bytes",
                    run.command_line()
                );
            }
        }
    }

    fn files_ids(&self) -> Vec<FileId> {
        self.files.keys().cloned().collect()
    }
}

/// A read of damaged content must fail with a message, and whatever reached
/// stdout before the failure must be a correct prefix — never wrong bytes.
fn assert_cat_refuses(run: &Run, data: &[u8], what: &str) {
    assert!(
        !run.panicked(),
        "{what}: nip panicked reading damaged content:\n{run}"
    );
    assert!(
        !run.success(),
        "{what}: `{}` succeeded on damaged content",
        run.command_line()
    );
    assert!(
        !run.stderr.trim().is_empty(),
        "{what}: failed read without an error message:\n{run}"
    );
    assert!(
        run.stdout.len() < data.len() && data.starts_with(&run.stdout),
        "{what}: `{}` wrote {} bytes that are not a strict prefix of the true content",
        run.command_line(),
        run.stdout.len()
    );
}

#[test]
fn flipped_byte_in_shared_small_chunk() {
    let fx = fixture();
    let record = fx.record_of(&fx.shared);
    pack::flip_byte(
        &record.pack,
        record.payload_offset() + record.stored_len as u64 / 2,
    );
    let expected: BTreeSet<FileId> = fx
        .files
        .iter()
        .filter(|(_, data)| **data == fx.shared)
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(
        expected.len(),
        3,
        "fixture: the shared content is in three files"
    );
    fx.assert_damage_reported(
        &expected,
        "payload byte flipped in the chunk shared by three files",
    );
}

#[test]
fn flipped_byte_in_large_file_chunk() {
    let fx = fixture();
    let small = fx.small_file_hashes();
    let large_records: Vec<Record> = pack::read_all_packs(&fx.store.packs_dir())
        .into_iter()
        .filter(|r| !small.contains(&r.hash))
        .collect();
    assert!(
        large_records.len() >= 2,
        "a 3 MiB file should be cut into several chunks, found {} records outside the small files",
        large_records.len()
    );
    let total: u64 = large_records.iter().map(|r| r.raw_len as u64).sum();
    assert_eq!(
        total,
        fx.files[&fx.large].len() as u64,
        "the non-small-file chunks should add up to the large file"
    );
    let record = &large_records[large_records.len() / 2];
    pack::flip_byte(
        &record.pack,
        record.payload_offset() + record.stored_len as u64 / 2,
    );
    let expected = BTreeSet::from([fx.large.clone()]);
    fx.assert_damage_reported(
        &expected,
        "payload byte flipped in a chunk in the middle of the large file",
    );
}

#[test]
fn flipped_byte_in_record_header() {
    let fx = fixture();
    let target = id("alpha/1", "uniq/u3.bin");
    let record = fx.record_of(&fx.files[&target]);
    // A byte inside the stored chunk hash: the record no longer matches.
    pack::flip_byte(&record.pack, record.offset + 5);
    fx.assert_damage_reported(
        &BTreeSet::from([target]),
        "byte flipped in a record header's chunk hash",
    );
}

#[test]
fn truncated_pack_damages_the_files_at_its_end() {
    let fx = fixture();
    // Cut the pack holding the last record in the middle of that record's
    // payload: exactly the files using that chunk are damaged.
    let records = pack::read_all_packs(&fx.store.packs_dir());
    let last = records
        .iter()
        .filter(|r| {
            let len = std::fs::metadata(&r.pack).unwrap().len();
            r.payload_offset() + r.stored_len as u64 == len
        })
        .max_by_key(|r| r.offset)
        .expect("no record ends its pack")
        .clone();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&last.pack)
        .unwrap();
    f.set_len(last.payload_offset() + last.stored_len as u64 / 2)
        .unwrap();
    drop(f);
    let expected: BTreeSet<FileId> = if fx.small_file_hashes().contains(&last.hash) {
        fx.files
            .iter()
            .filter(|(_, data)| *blake3::hash(data).as_bytes() == last.hash)
            .map(|(id, _)| id.clone())
            .collect()
    } else {
        BTreeSet::from([fx.large.clone()])
    };
    fx.assert_damage_reported(
        &expected,
        &format!("pack truncated inside record {}", last.hash_hex()),
    );
}
