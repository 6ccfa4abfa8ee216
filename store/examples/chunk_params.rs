//! Measures what chunking parameters and zstd levels would cost on a real
//! corpus: stored bytes (payload plus record headers, after deduplication)
//! and time, using the store's own chunker and block encoder on all cores.
//! This is how the frozen values in `params.rs` were chosen (see
//! `bench/README.md`).
//!
//! Usage: cargo run --release -p nexus-store --example chunk_params -- CORPUS_DIR [AVG_KIB:LEVEL:BLOCK_KIB ...]

use std::collections::HashSet;
use std::fs::File;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use nexus_store::Hash;
use nexus_store::chunker::chunk_stream;
use nexus_store::pack::{BlockBuilder, BlockEncoder, ChunkKind};
use nexus_store::params::ChunkParams;

mod common;

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(corpus) = args.next() else {
        eprintln!("usage: chunk_params CORPUS_DIR [AVG_KIB:LEVEL:BLOCK_KIB ...]");
        std::process::exit(2);
    };
    // BLOCK_KIB 0 puts every chunk in a block of its own.
    let mut grid: Vec<(usize, i32, usize)> = args
        .filter_map(|a| {
            let mut it = a.split(':');
            let avg = it.next()?.parse().ok()?;
            let level = it.next()?.parse().ok()?;
            let block = it.next().and_then(|g| g.parse().ok()).unwrap_or(0);
            Some((avg, level, block))
        })
        .collect();
    if grid.is_empty() {
        grid = vec![
            (32, 3, 0),
            (64, 3, 0),
            (128, 3, 0),
            (64, 1, 1024),
            (64, 3, 512),
            (64, 3, 1024),
            (128, 3, 1024),
            (64, 3, 2048),
            (64, 6, 1024),
        ];
    }
    let mut files = common::corpus_files(Path::new(&corpus));
    // Large files first (largest first), then small files in path order, as
    // the store's ingest does, so small neighbours share blocks.
    files.sort_by(|a, b| {
        let (sa, sb) = (a.1 < 64 * 1024, b.1 < 64 * 1024);
        sa.cmp(&sb)
            .then_with(|| if sa { a.0.cmp(&b.0) } else { b.1.cmp(&a.1) })
    });
    let total: u64 = files.iter().map(|f| f.1).sum();
    println!(
        "corpus: {} files (distinct inodes), {} bytes",
        files.len(),
        total
    );
    println!(
        "| avg KiB | min | max | small-file max | zstd | block KiB | chunks | stored bytes | ratio | seconds | MB/s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (avg_kib, level, block_kib) in grid {
        let avg = avg_kib * 1024;
        let params = ChunkParams {
            min: avg / 4,
            avg,
            max: avg * 4,
            small_file_max: (avg * 2) as u64,
            zstd_level: level,
            block_target: block_kib * 1024,
            framed_file_min: nexus_store::params::FRAMED_FILE_MIN,
        };
        let seen: Mutex<HashSet<Hash>> = Mutex::new(HashSet::new());
        let stored = AtomicU64::new(0);
        let chunks = AtomicU64::new(0);
        let next = AtomicUsize::new(0);
        let started = Instant::now();
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    let mut encoder =
                        BlockEncoder::new(params.zstd_level, nexus_store::params::FRAME_ZSTD_LEVEL)
                            .expect("zstd");
                    let mut block = BlockBuilder::default();
                    let mut flush = |block: &mut BlockBuilder| {
                        if !block.is_empty() {
                            let enc = block.finish(&mut encoder);
                            stored.fetch_add(enc.encoded_len() as u64, Ordering::Relaxed);
                        }
                    };
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some((path, size)) = files.get(i) else {
                            flush(&mut block);
                            break;
                        };
                        let Ok(file) = File::open(path) else { continue };
                        // Framed as ingest frames them (FORMAT.md, section 3).
                        let kind = if *size >= params.small_file_max {
                            ChunkKind::Part
                        } else {
                            ChunkKind::Whole
                        };
                        let _ = chunk_stream(file, *size, &params, |c| {
                            if seen
                                .lock()
                                .map_err(|_| "poisoned".to_string())?
                                .insert(c.hash)
                            {
                                chunks.fetch_add(1, Ordering::Relaxed);
                                block.push_kind(c.hash, &c.data, kind);
                                if block.raw_len() >= params.block_target {
                                    flush(&mut block);
                                }
                            }
                            Ok(())
                        });
                    }
                });
            }
        });
        let secs = started.elapsed().as_secs_f64();
        let stored = stored.load(Ordering::Relaxed);
        println!(
            "| {avg_kib} | {} | {} | {} | {level} | {block_kib} | {} | {stored} | {:.2} | {secs:.1} | {:.0} |",
            params.min / 1024,
            params.max / 1024,
            params.small_file_max / 1024,
            chunks.load(Ordering::Relaxed),
            total as f64 / stored as f64,
            total as f64 / secs / 1e6
        );
    }
}
