//! Corruption: one byte of a pack file is flipped (or the pack is cut short)
//! behind the store's back. `nip verify` must exit 3 and name exactly the
//! files whose content includes a damaged chunk, and reading those files must
//! fail with an error instead of returning wrong bytes, while every other file
//! still reads fine.
//!
//! Which chunks are damaged is computed here independently, from our own
//! source files and the documented pack format (see `support/pack.rs`), with
//! the reader rules of the format:
//! * a damaged block header, or a chunk or frame table whose lengths do not
//!   add up, damages every chunk of the block;
//! * a zstd frame that does not decode damages every chunk of its frame (a
//!   block of format v2 is made of frames decoded on their own);
//! * a table entry whose hash no longer names its chunk damages that chunk;
//! * a flipped byte in a frame stored as is damages only the chunk covering
//!   it;
//! * a pack cut short damages the chunks of the frames it cuts or drops, or
//!   every chunk of the block when it cuts the header or tables.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;

use nexus_integration_tests::Store;
use nexus_integration_tests::fixtures::{Scratch, random_bytes, text_bytes, write_file};
use nexus_integration_tests::nip::{EXIT_DAMAGED, Run};
use nexus_integration_tests::pack::{self, Block, DecodedBlock, field};

/// `(package spec, path inside the package)`.
type FileId = (String, String);

/// A chunk hash.
type Hash = [u8; 32];

/// A store holding three small packages whose contents the test knows exactly.
struct Fixture {
    _scratch: Scratch,
    store: Store,
    /// Every regular file of the packages and its content.
    files: BTreeMap<FileId, Vec<u8>>,
    /// The chunks making up each file.
    chunks_of: BTreeMap<FileId, BTreeSet<Hash>>,
    /// Every block of the store, as read (and checked) before any damage.
    blocks: Vec<DecodedBlock>,
    /// The multi-chunk file.
    large: FileId,
}

fn id(spec: &str, path: &str) -> FileId {
    (spec.to_string(), path.to_string())
}

fn hex(hash: &Hash) -> String {
    blake3::Hash::from_bytes(*hash).to_hex().to_string()
}

/// Builds the store in two transactions, so that both codecs occur whatever
/// order the store packs files in:
///
/// 1. `bulk/1`: incompressible data only — a 3 MiB file cut into many chunks
///    and five small files — so every block of it is stored raw;
/// 2. `alpha/1` and `beta/1`, mostly text (compressed): content `S` in three
///    files of both packages (one chunk), other text, small random files, and
///    copies of `bulk/1`'s small files (already stored, so those chunks stay
///    in the raw blocks).
///
/// Both run with one worker thread (each worker fills its own blocks), so
/// that small files share blocks with each other and with the tail of the
/// large file. The expected damage is always computed from the blocks as
/// found on disk, never from an assumed layout.
fn fixture() -> Fixture {
    let scratch = Scratch::new("corruption");
    let shared = text_bytes(42, 6000);
    let mut files = BTreeMap::new();

    let large = id("bulk/1", "big/large.bin");
    files.insert(large.clone(), random_bytes(b"large", 3 * 1024 * 1024 + 5));
    for i in 0..5u8 {
        let data = random_bytes(&[b'r', i], 2048 + 1500 * i as usize);
        files.insert(id("bulk/1", &format!("r/r{i}.bin")), data.clone());
        files.insert(id("alpha/1", &format!("copies/bulk-r{i}.bin")), data);
    }

    files.insert(id("alpha/1", "shared.txt"), shared.clone());
    files.insert(id("alpha/1", "docs/shared-copy.txt"), shared.clone());
    for i in 0..5u8 {
        let data = random_bytes(&[b'u', i], 2048 + 1500 * i as usize);
        files.insert(id("alpha/1", &format!("uniq/u{i}.bin")), data);
    }
    files.insert(id("alpha/1", "notes.txt"), text_bytes(7, 20_000));
    files.insert(id("beta/1", "share/again.txt"), shared.clone());
    files.insert(id("beta/1", "own.txt"), text_bytes(99, 3000));

    for ((spec, path), data) in &files {
        write_file(&scratch.join("src").join(spec).join(path), data);
    }
    let store = Store::init();
    store.ok([
        OsString::from("add"),
        OsString::from("--threads=1"),
        scratch.join("src/bulk/1").into_os_string(),
    ]);
    store.ok([
        OsString::from("add"),
        OsString::from("--threads=1"),
        scratch.join("src/alpha/1").into_os_string(),
        scratch.join("src/beta/1").into_os_string(),
    ]);
    let (run, report) = store.verify();
    assert!(
        run.code() == Some(0) && report.ok,
        "the store must verify clean before it is damaged:\n{run}"
    );

    // Read (and check) every block, and find which file uses which chunk.
    let blocks = pack::read_all_packs(&store.packs_dir());
    let mut stored: BTreeMap<Hash, &[u8]> = BTreeMap::new();
    for b in &blocks {
        for (e, bytes) in b.block.entries.iter().zip(&b.chunks) {
            assert!(
                stored.insert(e.hash, bytes).is_none(),
                "chunk {} is stored twice (identical content must be stored once)",
                e.hash_hex()
            );
        }
    }
    let chunks_of = file_chunks(&files, &large, &stored);
    let used: BTreeSet<Hash> = chunks_of.values().flatten().copied().collect();
    let in_packs: BTreeSet<Hash> = stored.keys().copied().collect();
    assert_eq!(
        used, in_packs,
        "a fresh store should hold exactly the chunks of its files"
    );
    assert_eq!(
        report.chunks_checked,
        in_packs.len() as u64,
        "a fresh store references every chunk in its packs, so verify should check them all"
    );
    assert!(
        report.files_checked > 0,
        "verify checked no files: {report:?}"
    );

    let fx = Fixture {
        _scratch: scratch,
        store,
        files,
        chunks_of,
        blocks,
        large,
    };
    // The fixture is built so that both kinds of frame occur, each in a
    // block shared by several files; check that it worked.
    let zstd = fx.busiest_block(true);
    assert!(
        fx.files_using(&fx.frame_chunks(zstd, true)).len() >= 5,
        "a compressed frame should hold chunks of many files: {}",
        fx.layout()
    );
    let raw = fx.busiest_block(false);
    let large = &fx.chunks_of[&fx.large];
    let raw_chunks = fx.frame_chunks(raw, false);
    assert!(
        fx.files_using(&raw_chunks).len() >= 3 && !raw_chunks.is_disjoint(large),
        "raw frames of one block should hold chunks of the large file and of small files: {}",
        fx.layout()
    );
    fx
}

/// The chunks of each file: small files are one chunk named by their content
/// hash; the large file is rebuilt from the stored chunks that are no small
/// file's, matching their bytes against its content.
fn file_chunks(
    files: &BTreeMap<FileId, Vec<u8>>,
    large: &FileId,
    stored: &BTreeMap<Hash, &[u8]>,
) -> BTreeMap<FileId, BTreeSet<Hash>> {
    let mut chunks_of = BTreeMap::new();
    for (fid, data) in files {
        if fid == large {
            continue;
        }
        assert!(
            data.len() < pack::SMALL_FILE_MAX,
            "fixture: {fid:?} is not small"
        );
        let h = *blake3::hash(data).as_bytes();
        assert!(
            stored.contains_key(&h),
            "the single chunk of {fid:?} ({}) is in no pack",
            hex(&h)
        );
        chunks_of.insert(fid.clone(), BTreeSet::from([h]));
    }
    let small: BTreeSet<Hash> = chunks_of.values().flatten().copied().collect();
    let candidates: Vec<(&Hash, &&[u8])> = stored
        .iter()
        .filter(|(h, bytes)| !small.contains(*h) && !bytes.is_empty())
        .collect();
    let data = &files[large];
    let mut pos = 0;
    let mut seq: Vec<Hash> = Vec::new();
    while pos < data.len() {
        let (h, bytes) = candidates
            .iter()
            .find(|(_, bytes)| data[pos..].starts_with(bytes))
            .unwrap_or_else(|| {
                panic!(
                    "no stored chunk matches the large file at offset {pos} (after {} chunks)",
                    seq.len()
                )
            });
        assert!(
            pos + bytes.len() == data.len() || bytes.len() >= 16 * 1024,
            "chunk {} of the large file is {} bytes, below the 16 KiB minimum",
            seq.len(),
            bytes.len()
        );
        seq.push(**h);
        pos += bytes.len();
    }
    assert!(
        seq.len() >= 8,
        "a 3 MiB file should be cut into many chunks (average 64 KiB), found {}",
        seq.len()
    );
    chunks_of.insert(large.clone(), seq.into_iter().collect());
    chunks_of
}

impl Fixture {
    /// The block whose zstd (or raw) frames hold chunks of the most files.
    fn busiest_block(&self, zstd: bool) -> &Block {
        self.blocks
            .iter()
            .map(|b| &b.block)
            .filter(|b| b.frames.iter().any(|f| f.compressed == zstd))
            .max_by_key(|b| self.files_using(&self.frame_chunks(b, zstd)).len())
            .unwrap_or_else(|| {
                panic!(
                    "no {} block in the store: {}",
                    if zstd { "zstd" } else { "raw" },
                    self.layout()
                )
            })
    }

    /// The blocks of the store, for failure messages.
    fn layout(&self) -> String {
        let lines: Vec<String> = self
            .blocks
            .iter()
            .map(|b| {
                let files = self.files_using(&self.all_chunks(&b.block));
                format!("  {}: files {files:?}", b.block.describe())
            })
            .collect();
        format!("blocks:\n{}", lines.join("\n"))
    }

    /// The block holding chunk `hash` and the index of its table entry.
    fn locate(&self, hash: &Hash) -> (&Block, usize) {
        self.blocks
            .iter()
            .find_map(|b| b.block.position(hash).map(|k| (&b.block, k)))
            .unwrap_or_else(|| panic!("chunk {} is in no block", hex(hash)))
    }

    /// The chunk hash of small file `fid`.
    fn small_chunk(&self, fid: &FileId) -> Hash {
        let set = &self.chunks_of[fid];
        assert_eq!(set.len(), 1, "{fid:?} is not a single-chunk file");
        *set.iter().next().unwrap()
    }

    /// Every chunk of `block`.
    fn all_chunks(&self, block: &Block) -> BTreeSet<Hash> {
        block.entries.iter().map(|e| e.hash).collect()
    }

    /// The chunks of `block` in its zstd (or raw) frames.
    fn frame_chunks(&self, block: &Block, zstd: bool) -> BTreeSet<Hash> {
        (0..block.entries.len())
            .filter(|&k| block.frames[block.frame_of(k)].compressed == zstd)
            .map(|k| block.entries[k].hash)
            .collect()
    }

    /// The chunks of frame `j` of `block`.
    fn chunks_of_frame(&self, block: &Block, j: usize) -> BTreeSet<Hash> {
        block
            .frame_entries(j)
            .into_iter()
            .map(|k| block.entries[k].hash)
            .collect()
    }

    /// The files that use at least one of `chunks`.
    fn files_using(&self, chunks: &BTreeSet<Hash>) -> BTreeSet<FileId> {
        self.chunks_of
            .iter()
            .filter(|(_, set)| !set.is_disjoint(chunks))
            .map(|(fid, _)| fid.clone())
            .collect()
    }

    /// Checks `nip verify` (JSON and human forms) names exactly the files
    /// using one of the `damaged` chunks, and that each of those files fails
    /// to read while all others read back correctly.
    fn assert_damage_reported(&self, damaged: &BTreeSet<Hash>, what: &str) {
        let expected = self.files_using(damaged);
        assert!(
            !expected.is_empty(),
            "{what}: test bug, the damaged chunks belong to no file"
        );
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
            named_set, expected,
            "{what}: verify must name exactly the files containing a damaged chunk:\n{run}"
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
        for fid @ (spec, path) in self.files.keys() {
            let line = format!("{spec}: {path}");
            let damaged = expected.contains(fid);
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

        for (fid @ (spec, path), data) in &self.files {
            let run = self.store.cat(spec, path);
            if expected.contains(fid) {
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
fn flipped_byte_in_a_zstd_frame_damages_the_chunks_of_that_frame() {
    let fx = fixture();
    let shared = fx.small_chunk(&id("alpha/1", "shared.txt"));
    let (block, k) = fx.locate(&shared);
    let j = block.frame_of(k);
    let frame = &block.frames[j];
    assert!(
        frame.compressed,
        "fixture: the text shared by three files should be in a zstd frame: {}",
        block.describe()
    );
    pack::flip_byte(&block.pack, frame.stored_at + frame.stored_len as u64 / 2);
    fx.assert_damage_reported(
        &fx.chunks_of_frame(block, j),
        &format!(
            "payload byte flipped in the middle of zstd frame {j} of the {}",
            block.describe()
        ),
    );
}

#[test]
fn flipped_byte_in_raw_payload_damages_one_small_chunk() {
    let fx = fixture();
    // A small random file whose raw block also holds other files' chunks; it
    // has a copy in another package (same chunk, stored once).
    let (block, k) = (0..5)
        .map(|i| fx.locate(&fx.small_chunk(&id("bulk/1", &format!("r/r{i}.bin")))))
        .find(|(b, _)| fx.files_using(&fx.all_chunks(b)).len() >= 3)
        .unwrap_or_else(|| panic!("no small random file shares its block: {}", fx.layout()));
    assert!(
        !block.frames[block.frame_of(k)].compressed,
        "fixture: chunk {k} of {} should be in a raw frame",
        block.describe()
    );
    let range = block.raw_chunk_range(k);
    pack::flip_byte(&block.pack, (range.start + range.end) / 2);
    let hash = block.entries[k].hash;
    assert_eq!(
        fx.files_using(&BTreeSet::from([hash])).len(),
        2,
        "fixture: the small random file and its copy share one chunk"
    );
    fx.assert_damage_reported(
        &BTreeSet::from([hash]),
        &format!(
            "byte flipped in chunk {} (entry {k}) of the {}",
            hex(&hash),
            block.describe()
        ),
    );
}

#[test]
fn flipped_byte_in_raw_payload_damages_one_large_file_chunk() {
    let fx = fixture();
    // A chunk of the large file in the raw block holding the most files, not
    // at either end of the block.
    let block = fx.busiest_block(false);
    let large = &fx.chunks_of[&fx.large];
    let candidates: Vec<usize> = (0..block.entries.len())
        .filter(|&k| {
            large.contains(&block.entries[k].hash) && !block.frames[block.frame_of(k)].compressed
        })
        .collect();
    assert!(
        !candidates.is_empty(),
        "no chunk of the large file in {}",
        block.describe()
    );
    let k = candidates[candidates.len() / 2];
    let range = block.raw_chunk_range(k);
    pack::flip_byte(&block.pack, (range.start + range.end) / 2);
    let hash = block.entries[k].hash;
    fx.assert_damage_reported(
        &BTreeSet::from([hash]),
        &format!(
            "byte flipped in large-file chunk {} (entry {k}) of the {}",
            hex(&hash),
            block.describe()
        ),
    );
}

/// Which block a header case damages.
#[derive(Clone, Copy, Debug)]
enum Target {
    Zstd,
    Raw,
}

#[test]
fn flipped_byte_in_block_header_or_lengths_damages_the_whole_block() {
    // (block, offset in the block, what it breaks)
    let cases: &[(Target, u64, &str)] = &[
        (Target::Zstd, field::MAGIC + 1, "block magic"),
        (Target::Raw, field::MAGIC + 3, "block magic"),
        (Target::Raw, field::CODEC, "codec (raw -> unknown)"),
        (Target::Zstd, field::CODEC, "codec (zstd -> unknown)"),
        (Target::Raw, field::RESERVED_A + 1, "reserved byte"),
        (Target::Zstd, field::RESERVED_B + 7, "reserved byte"),
        (Target::Raw, field::COUNT, "chunk count"),
        (Target::Zstd, field::COUNT, "chunk count"),
        (
            Target::Raw,
            field::RAW_LEN,
            "raw_len (sum of the table lengths)",
        ),
        (Target::Zstd, field::RAW_LEN + 2, "raw_len (over 4 MiB)"),
        (Target::Raw, field::RAW_LEN + 2, "raw_len (over 4 MiB)"),
        (Target::Raw, field::STORED_LEN, "stored_len (block length)"),
        (
            Target::Zstd,
            field::STORED_LEN + 1,
            "stored_len (block length)",
        ),
        (
            Target::Zstd,
            field::FRAME_COUNT,
            "frame count (block length)",
        ),
    ];
    for &(target, at, what) in cases {
        let fx = fixture();
        let block = match target {
            Target::Zstd => fx.busiest_block(true),
            Target::Raw => fx.busiest_block(false),
        };
        pack::flip_byte(&block.pack, block.offset + at);
        fx.assert_damage_reported(
            &fx.all_chunks(block),
            &format!(
                "header byte {at} ({what}) flipped in the {}",
                block.describe()
            ),
        );
    }
    // A frame's raw length no longer adds up (or splits a chunk), its
    // stored length no longer matches the payload.
    for (field_at, what) in [(0u64, "raw length"), (5, "stored length")] {
        let fx = fixture();
        let block = fx.busiest_block(true);
        let j = block.frames.len() / 2;
        pack::flip_byte(&block.pack, block.frame_entry_offset(j) + field_at);
        fx.assert_damage_reported(
            &fx.all_chunks(block),
            &format!("{what} of frame {j} flipped in the {}", block.describe()),
        );
    }
    // A table length no longer adds up to raw_len.
    for target in [Target::Zstd, Target::Raw] {
        let fx = fixture();
        let block = match target {
            Target::Zstd => fx.busiest_block(true),
            Target::Raw => fx.busiest_block(false),
        };
        let k = block.entries.len() / 2;
        pack::flip_byte(&block.pack, block.entry_offset(k) + 32);
        fx.assert_damage_reported(
            &fx.all_chunks(block),
            &format!(
                "length of table entry {k} flipped in the {}",
                block.describe()
            ),
        );
    }
}

#[test]
fn flipped_byte_in_table_hash_damages_only_that_chunk() {
    // In the zstd block: the payload still decodes, one entry is wrong.
    {
        let fx = fixture();
        let target = id("alpha/1", "uniq/u3.bin");
        let (block, k) = fx.locate(&fx.small_chunk(&target));
        assert!(
            block.frames[block.frame_of(k)].compressed,
            "fixture: {target:?} should be compressed"
        );
        pack::flip_byte(&block.pack, block.entry_offset(k) + 5);
        fx.assert_damage_reported(
            &BTreeSet::from([block.entries[k].hash]),
            &format!(
                "hash of table entry {k} flipped in the {}",
                block.describe()
            ),
        );
    }
    // In a raw block, for a chunk of the large file.
    {
        let fx = fixture();
        let block = fx.busiest_block(false);
        let large = &fx.chunks_of[&fx.large];
        let k = (0..block.entries.len())
            .rev()
            .find(|&k| {
                large.contains(&block.entries[k].hash)
                    && !block.frames[block.frame_of(k)].compressed
            })
            .expect("no large-file chunk in a raw frame of the busiest raw block");
        pack::flip_byte(&block.pack, block.entry_offset(k) + 31);
        fx.assert_damage_reported(
            &BTreeSet::from([block.entries[k].hash]),
            &format!(
                "hash of table entry {k} flipped in the {}",
                block.describe()
            ),
        );
    }
}

#[test]
fn truncated_pack_damages_the_files_of_its_last_block() {
    // Cut the pack holding the last-written block in the middle of the
    // block's payload (the frames from the cut on are lost), then (in a
    // fresh store) in the middle of its header (every chunk of the block is
    // lost).
    for (cut, what) in [
        (None, "in the middle of the payload"),
        (Some(field::COUNT + 2), "in the middle of the header"),
    ] {
        let fx = fixture();
        let block = fx
            .blocks
            .iter()
            .map(|b| &b.block)
            .filter(|b| b.frames.len() > 1)
            .find(|b| std::fs::metadata(&b.pack).unwrap().len() == b.end())
            .unwrap_or_else(|| panic!("no block of several frames ends its pack: {}", fx.layout()));
        let len = match cut {
            None => block.payload_offset() + block.stored_len as u64 / 2,
            Some(at) => block.offset + at,
        };
        let lost = match cut {
            None => (0..block.frames.len())
                .filter(|&j| {
                    let f = &block.frames[j];
                    f.stored_at + f.stored_len as u64 > len
                })
                .flat_map(|j| fx.chunks_of_frame(block, j))
                .collect(),
            Some(_) => fx.all_chunks(block),
        };
        assert!(
            cut.is_some() || lost.len() < block.entries.len(),
            "fixture: a cut in the middle of the payload should spare the first frames: {}",
            block.describe()
        );
        pack::truncate(&block.pack, len);
        fx.assert_damage_reported(
            &lost,
            &format!(
                "pack cut to {len} bytes, {what} of the {}",
                block.describe()
            ),
        );
    }
}
