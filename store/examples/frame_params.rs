//! Measures what the unit of decoding of large files would cost: stored
//! bytes, compression time and the time to decode one frame (what a cold
//! random read pays), for frames of several sizes and zstd levels, with or
//! without a prefix dictionary (the raw first bytes of the frame's block,
//! which a reader decodes once per block and keeps).
//!
//! The bytes are those of a sample of the corpus's files above the store's
//! small-file limit (the files whose chunks go into frames), concatenated
//! and cut into blocks of `BLOCK_TARGET`. Frames are cut at fixed offsets
//! here; the store cuts them at chunk boundaries, once they hold at least
//! `FRAME_TARGET`, so its frames are a little larger on average. Results
//! are in `bench/README.md`, "Smaller frames: what they cost".
//!
//! Usage: cargo run --release -p nexus-store --example frame_params -- CORPUS_DIR [SAMPLE_MB] [FRAME_KIB:LEVEL:PREFIX_KIB ...]
//! (FRAME_KIB 0: the whole block is one frame.)

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nexus_store::params::{BLOCK_TARGET, SMALL_FILE_MAX};

mod common;

/// One way of cutting and compressing blocks.
#[derive(Clone, Copy, Debug)]
struct Variant {
    /// Raw bytes per frame; 0 for the whole block.
    frame: usize,
    /// zstd level.
    level: i32,
    /// Raw bytes at the start of each block compressed alone and used as
    /// the dictionary of its other frames; 0 for none.
    prefix: usize,
}

/// What a variant cost over the whole sample.
struct Cost {
    stored: usize,
    frames: usize,
    compress: Duration,
    decode: Duration,
}

/// Every `step`-th large file of the corpus until `limit` bytes: a sample
/// spread over all packages, the same on every run.
fn sample(corpus: &Path, limit: usize) -> Vec<u8> {
    let files: Vec<(PathBuf, u64)> = common::corpus_files(corpus)
        .into_iter()
        .filter(|(_, size)| *size > SMALL_FILE_MAX)
        .collect();
    let total: u64 = files.iter().map(|(_, size)| size).sum();
    let step = ((total as usize / limit.max(1)).max(1)).min(files.len().max(1));
    let mut data = Vec::with_capacity(limit);
    for (file, _) in files.iter().step_by(step) {
        if data.len() >= limit {
            break;
        }
        match std::fs::read(file) {
            Ok(bytes) => data.extend_from_slice(&bytes),
            Err(e) => eprintln!("skipping {}: {e}", file.display()),
        }
    }
    data
}

fn measure(blocks: &[&[u8]], v: Variant) -> std::io::Result<Cost> {
    let frame = if v.frame == 0 { BLOCK_TARGET } else { v.frame };
    let mut encoded: Vec<(Vec<u8>, Vec<Vec<u8>>)> = Vec::with_capacity(blocks.len());
    let started = Instant::now();
    for block in blocks {
        let prefix = &block[..v.prefix.min(block.len())];
        let mut frames = Vec::new();
        if !prefix.is_empty() {
            frames.push(zstd::bulk::compress(prefix, v.level)?);
        }
        let mut compressor = zstd::bulk::Compressor::with_dictionary(v.level, prefix)?;
        for part in block[prefix.len()..].chunks(frame) {
            frames.push(compressor.compress(part)?);
        }
        encoded.push((prefix.to_vec(), frames));
    }
    let compress = started.elapsed();
    // Decode every frame once, each on its own as a random read would (the
    // prefix is decoded once per block: a reader keeps it).
    let started = Instant::now();
    let mut count = 0;
    for (prefix, frames) in &encoded {
        let mut decompressor = zstd::bulk::Decompressor::with_dictionary(prefix)?;
        for (i, f) in frames.iter().enumerate() {
            let capacity = frame.max(prefix.len());
            let out = if i == 0 && !prefix.is_empty() {
                zstd::bulk::decompress(f, capacity)?
            } else {
                decompressor.decompress(f, capacity)?
            };
            std::hint::black_box(out);
            count += 1;
        }
    }
    let decode = started.elapsed();
    Ok(Cost {
        stored: encoded.iter().flat_map(|(_, f)| f).map(Vec::len).sum(),
        frames: count,
        compress,
        decode,
    })
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(corpus) = args.next() else {
        eprintln!("usage: frame_params CORPUS_DIR [SAMPLE_MB] [FRAME_KIB:LEVEL:PREFIX_KIB ...]");
        std::process::exit(2);
    };
    let rest: Vec<String> = args.collect();
    let (sample_mb, specs) = match rest.first().and_then(|a| a.parse::<usize>().ok()) {
        Some(mb) => (mb, &rest[1..]),
        None => (250, &rest[..]),
    };
    let mut variants: Vec<Variant> = specs
        .iter()
        .filter_map(|a| {
            let mut it = a.split(':');
            Some(Variant {
                frame: it.next()?.parse::<usize>().ok()? << 10,
                level: it.next()?.parse().ok()?,
                prefix: it.next().map_or(Some(0), |p| p.parse::<usize>().ok())? << 10,
            })
        })
        .collect();
    if variants.is_empty() {
        variants = [
            (0, 3, 0),
            (64, 7, 0),
            (64, 4, 0),
            (64, 4, 64),
            (64, 5, 64),
            (16, 7, 0),
            (16, 3, 64),
            (16, 7, 64),
        ]
        .iter()
        .map(|&(f, level, p)| Variant {
            frame: f << 10,
            level,
            prefix: p << 10,
        })
        .collect();
    }
    let data = sample(Path::new(&corpus), sample_mb * 1_000_000);
    let blocks: Vec<&[u8]> = data.chunks(BLOCK_TARGET).collect();
    println!(
        "sample: {:.1} MB of files over {} KiB, {} blocks of {} KiB",
        data.len() as f64 / 1e6,
        SMALL_FILE_MAX >> 10,
        blocks.len(),
        BLOCK_TARGET >> 10
    );
    println!(
        "| frame | level | prefix | stored MB | vs whole blocks | compress s | decode µs per frame |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut whole = None;
    for v in variants {
        let cost = measure(&blocks, v)?;
        let base = *whole.get_or_insert(if v.frame == 0 { cost.stored } else { 0 });
        let ratio = if base > 0 {
            format!("{:.3}", cost.stored as f64 / base as f64)
        } else {
            "n/a".into()
        };
        println!(
            "| {} | {} | {} | {:.1} | {} | {:.2} | {:.1} |",
            if v.frame == 0 {
                "block".to_string()
            } else {
                format!("{} KiB", v.frame >> 10)
            },
            v.level,
            if v.prefix == 0 {
                "none".to_string()
            } else {
                format!("{} KiB", v.prefix >> 10)
            },
            cost.stored as f64 / 1e6,
            ratio,
            cost.compress.as_secs_f64(),
            cost.decode.as_secs_f64() * 1e6 / cost.frames.max(1) as f64,
        );
    }
    Ok(())
}
