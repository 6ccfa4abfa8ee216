//! Measures what other block encodings would cost on a real store: every
//! block of its packs, in the order they were written, is decoded and
//! encoded again under each scheme, and the bytes the payloads would take
//! are summed, split by whether a chunk belongs to a small file (one chunk,
//! under `small_file_max`) or to a large, cut file. This is how the block
//! format v2 (independently decodable frames inside a block) was sized; see
//! `bench/README.md`.
//!
//! Schemes: `v1` (one zstd frame per block, as stored), `frames:K[:L]`
//! (whole chunks grouped into frames of at least K KiB raw, each its own
//! zstd frame at level L, default 3), `split:K[:L[:S]]` (large files' chunks
//! in frames of at least K KiB at level L, each run of small files' chunks
//! one frame at level S, default L).
//!
//! Usage: cargo run --release -p nexus-store --example block_formats -- STORE_DIR [SCHEME ...]

use std::collections::HashSet;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use nexus_store::Hash;
use nexus_store::pack::{BLOCK_HEADER_LEN, TABLE_ENTRY_LEN, decode_block};

#[derive(Clone, Copy, Debug)]
enum Scheme {
    V1,
    Frames {
        kib: usize,
        level: i32,
    },
    Split {
        kib: usize,
        level: i32,
        small_level: i32,
    },
}

fn parse(s: &str) -> Option<Scheme> {
    let mut it = s.split(':');
    let name = it.next()?;
    if name == "v1" {
        return Some(Scheme::V1);
    }
    let kib = it.next()?.parse().ok()?;
    let level = it.next().map(|l| l.parse().ok()).unwrap_or(Some(3))?;
    let small_level = it.next().map(|l| l.parse().ok()).unwrap_or(Some(level))?;
    match name {
        "frames" => Some(Scheme::Frames { kib, level }),
        "split" => Some(Scheme::Split {
            kib,
            level,
            small_level,
        }),
        _ => None,
    }
}

/// Bytes one frame of `raw` takes: zstd at `level` if that saves 1/32.
fn frame_len(raw: &[u8], level: i32) -> u64 {
    let compressed = zstd::bulk::compress(raw, level)
        .map(|c| c.len())
        .unwrap_or(raw.len());
    if compressed + raw.len() / 32 <= raw.len() {
        compressed as u64
    } else {
        raw.len() as u64
    }
}

/// Payload bytes of one block (its chunks `spans`, each (start, len,
/// large)) under `scheme`, counting 8 bytes of frame table per frame, split
/// into (small-file bytes, large-file bytes) by where each frame's chunks
/// came from (a mixed frame counts as small).
fn encode(scheme: Scheme, data: &[u8], spans: &[(usize, usize, bool)], stored: u64) -> (u64, u64) {
    let (min, level, small_level, split) = match scheme {
        Scheme::V1 => {
            let large = spans.iter().filter(|s| s.2).map(|s| s.1).sum::<usize>();
            let share = stored * large as u64 / data.len().max(1) as u64;
            return (stored - share, share);
        }
        Scheme::Frames { kib, level } => (kib << 10, level, level, false),
        Scheme::Split {
            kib,
            level,
            small_level,
        } => (kib << 10, level, small_level, true),
    };
    let (mut small, mut large) = (0u64, 0u64);
    let mut i = 0;
    while i < spans.len() {
        let (start, _, is_large) = spans[i];
        let mut end = i;
        let mut raw = 0;
        let mut mixed = false;
        while end < spans.len() {
            if split && spans[end].2 != is_large {
                break;
            }
            mixed |= spans[end].2 != is_large;
            raw += spans[end].1;
            end += 1;
            // Small files' runs stay whole in `split`.
            if raw >= min && (!split || is_large) {
                break;
            }
        }
        let frame_level = if is_large { level } else { small_level };
        let bytes = frame_len(&data[start..start + raw], frame_level) + 8;
        if is_large && !mixed {
            large += bytes;
        } else {
            small += bytes;
        }
        i = end;
    }
    (small, large)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(store) = args.next() else {
        eprintln!("usage: block_formats STORE_DIR [SCHEME ...]");
        std::process::exit(2);
    };
    let mut schemes: Vec<(String, Scheme)> =
        args.filter_map(|a| parse(&a).map(|s| (a, s))).collect();
    if schemes.is_empty() {
        schemes = [
            "v1",
            "frames:64",
            "frames:128",
            "frames:256",
            "split:64",
            "split:128",
        ]
        .iter()
        .map(|s| (s.to_string(), parse(s).unwrap()))
        .collect();
    }
    let store = Path::new(&store);
    let db = rusqlite::Connection::open_with_flags(
        store.join("catalog.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open the catalog");
    let mut large: HashSet<Hash> = HashSet::new();
    let mut q = db
        .prepare(
            "SELECT DISTINCT c.hash FROM chunks c JOIN blob_chunks bc ON bc.chunk = c.id \
             JOIN blobs b ON b.id = bc.blob WHERE b.size >= 131072",
        )
        .unwrap();
    for h in q.query_map([], |r| r.get::<_, Vec<u8>>(0)).unwrap() {
        large.insert(Hash::from_slice(&h.unwrap()).unwrap());
    }
    let packs: Vec<String> = db
        .prepare("SELECT name FROM packs ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    // Every block (pack, offset, length), in write order.
    let mut blocks = Vec::new();
    for pack in &packs {
        let file = std::fs::File::open(store.join("packs").join(pack)).unwrap();
        let len = file.metadata().unwrap().len();
        let mut at = 8u64;
        while at < len {
            let mut head = [0u8; BLOCK_HEADER_LEN];
            file.read_exact_at(&mut head, at).unwrap();
            let u32_at = |i: usize| u32::from_le_bytes(head[i..i + 4].try_into().unwrap()) as u64;
            let block_len =
                BLOCK_HEADER_LEN as u64 + TABLE_ENTRY_LEN as u64 * u32_at(8) + u32_at(16);
            blocks.push((pack.clone(), at, block_len));
            at += block_len;
        }
    }
    let started = Instant::now();
    let next = Mutex::new(blocks.iter());
    let totals: Vec<(AtomicU64, AtomicU64)> = schemes
        .iter()
        .map(|_| (AtomicU64::new(0), AtomicU64::new(0)))
        .collect();
    let raw_small = AtomicU64::new(0);
    let raw_large = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for _ in 0..std::thread::available_parallelism().map_or(2, |n| n.get()) {
            scope.spawn(|| {
                loop {
                    let Some((pack, at, len)) = next.lock().unwrap().next().cloned() else {
                        break;
                    };
                    let file = std::fs::File::open(store.join("packs").join(&pack)).unwrap();
                    let mut buf = vec![0u8; len as usize];
                    file.read_exact_at(&mut buf, at).unwrap();
                    let stored = u32::from_le_bytes(buf[16..20].try_into().unwrap()) as u64;
                    let block = decode_block(&buf).unwrap();
                    let spans: Vec<(usize, usize, bool)> = block
                        .entries
                        .iter()
                        .map(|e| (e.inner as usize, e.len as usize, large.contains(&e.hash)))
                        .collect();
                    for &(_, l, is_large) in &spans {
                        if is_large {
                            raw_large.fetch_add(l as u64, Ordering::Relaxed);
                        } else {
                            raw_small.fetch_add(l as u64, Ordering::Relaxed);
                        }
                    }
                    for ((_, scheme), (s, l)) in schemes.iter().zip(&totals) {
                        let (small, lg) = encode(*scheme, &block.data, &spans, stored);
                        s.fetch_add(small, Ordering::Relaxed);
                        l.fetch_add(lg, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    println!(
        "{} blocks in {} packs; raw: small files {} B, large files {} B; {:.0} s",
        blocks.len(),
        packs.len(),
        raw_small.load(Ordering::Relaxed),
        raw_large.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    println!("| scheme | payload bytes | small files | large files |");
    println!("|---|---:|---:|---:|");
    for ((name, _), (s, l)) in schemes.iter().zip(&totals) {
        let (s, l) = (s.load(Ordering::Relaxed), l.load(Ordering::Relaxed));
        println!("| {name} | {} | {s} | {l} |", s + l);
    }
}
