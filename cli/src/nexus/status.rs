//! `nexus status`: what is live and what serves it, as `ostree admin
//! status` and `rpm-ostree status` tell it: the live generation, every
//! running mount and virtio-fs daemon with the generation it serves (their
//! runtime records), pins, the newest image counter accepted per trust
//! domain, store size and the download cache.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nexus_store::Store;
use nexus_store::catalog::{GenerationRow, PinRow};
use nexus_store::generations::{DiffSizes, diff_from_previous};
use nexus_store::runtime::{self, ServedRecord};
use serde_json::{Value, json};

use crate::exit;
use crate::human::{self, diff_summary};

/// The `meta` key prefix of the image counters, one key per trust domain.
const COUNTER_PREFIX: &str = "image_counter:";

/// A directory's regular files: how many, how many bytes.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
struct DirUse {
    files: u64,
    bytes: u64,
}

/// Everything `nexus status` reports.
struct Status {
    store: PathBuf,
    live: Option<GenerationRow>,
    live_change: Option<String>,
    serving: Vec<ServedRecord>,
    pins: Vec<PinRow>,
    counters: Vec<(String, String)>,
    stats: nexus_store::Stats,
    gc_epoch: i64,
    cache: Option<(PathBuf, DirUse)>,
}

/// `nexus status [--json]`; `cache` is the download cache to measure.
pub fn run(store_dir: &Path, cache: &Path, json: bool) -> Result<i32> {
    let status = gather(store_dir, cache)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&to_json(&status))?);
    } else {
        print(&status);
    }
    Ok(exit::OK)
}

fn gather(store_dir: &Path, cache: &Path) -> Result<Status> {
    let mut store = Store::open(store_dir)
        .with_context(|| format!("opening the store in {}", store_dir.display()))?;
    let catalog = store.catalog();
    let live = match catalog.current_generation()? {
        Some(id) => catalog.generation(id)?,
        None => None,
    };
    // What the live generation changed from the retained one before it.
    let live_change = match &live {
        Some(g) => diff_from_previous(catalog, g.id, DiffSizes::Logical)?
            .as_ref()
            .map(diff_summary),
        None => None,
    };
    let serving = runtime::live(store_dir).with_context(|| {
        format!(
            "reading what runs from {}",
            store_dir.join(runtime::RUN_DIR).display()
        )
    })?;
    let pins = catalog.pins()?;
    let counters = catalog
        .meta_with_prefix(COUNTER_PREFIX)?
        .into_iter()
        .map(|(key, value)| (key[COUNTER_PREFIX.len()..].to_string(), value))
        .collect();
    let gc_epoch = catalog.gc_epoch()?;
    let stats = store.stats()?;
    let cache = dir_use(cache)?.map(|u| (cache.to_path_buf(), u));
    Ok(Status {
        store: store_dir.to_path_buf(),
        live,
        live_change,
        serving,
        pins,
        counters,
        stats,
        gc_epoch,
        cache,
    })
}

/// The files directly in `dir` (the download cache is flat), or `None`
/// when it does not exist.
fn dir_use(dir: &Path) -> Result<Option<DirUse>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut usage = DirUse::default();
    for entry in entries {
        let meta = entry
            .and_then(|e| e.metadata())
            .with_context(|| format!("reading {}", dir.display()))?;
        if meta.is_file() {
            usage.files += 1;
            usage.bytes += meta.len();
        }
    }
    Ok(Some(usage))
}

/// Whether the kernel view (`--kernel-metadata`) covers the mount at
/// `target` (read from the mount table: nothing asks the daemon).
fn kernel_view(target: &Path) -> bool {
    super::mounts::covered_by_kernel_view(target).unwrap_or(false)
}

fn record_json(r: &ServedRecord) -> Value {
    json!({
        "pid": r.pid,
        "kind": r.served.kind.as_str(),
        "target": r.served.target.to_string_lossy(),
        "kernel_view": kernel_view(&r.served.target),
        "generation": r.served.generations.first(),
        "generations": r.served.generations,
        "started": r.started,
        "updated": r.updated,
    })
}

fn to_json(s: &Status) -> Value {
    json!({
        "store": s.store.to_string_lossy(),
        "live_generation": s.live.as_ref().map(|g| json!({
            "id": g.id, "created": g.created, "action": g.action,
            "restores": g.restores, "packages": g.packages,
            "change": s.live_change,
        })),
        "serving": s.serving.iter().map(record_json).collect::<Vec<_>>(),
        "pins": s.pins,
        "image_counters": s.counters.iter()
            .map(|(domain, value)| json!({"domain": domain, "value": value}))
            .collect::<Vec<_>>(),
        "size": {
            "packages": s.stats.packages,
            "generations": s.stats.generations,
            "logical_bytes": s.stats.logical_bytes,
            "packs": s.stats.packs,
            "pack_bytes": s.stats.stored_bytes,
            "catalog_bytes": s.stats.catalog_bytes,
        },
        "gc_epoch": s.gc_epoch,
        "download_cache": s.cache.as_ref().map(|(dir, u)| json!({
            "dir": dir.to_string_lossy(), "files": u.files, "bytes": u.bytes,
        })),
    })
}

fn print(s: &Status) {
    println!("Store {}", s.store.display());
    match &s.live {
        Some(g) => {
            println!(
                "● generation {} (live), {}: {}",
                g.id,
                human::time(g.created),
                g.action
            );
            println!(
                "    {} packages{}",
                g.packages,
                s.live_change
                    .as_ref()
                    .map(|c| format!("; changed: {c}"))
                    .unwrap_or_default()
            );
        }
        None => println!("● no generation yet (`nip add` makes the first)"),
    }
    let live = s.live.as_ref().map(|g| g.id);
    if s.pins.is_empty() {
        println!("Pinned: none");
    } else {
        let pins: Vec<String> = s.pins.iter().map(|p| p.generation.to_string()).collect();
        println!("Pinned: {}", pins.join(", "));
    }
    if s.serving.is_empty() {
        println!("Serving: nothing (no nexus mount or virtio-fs daemon runs)");
    } else {
        println!("Serving:");
        for r in &s.serving {
            let shown = match r.served.generations.first() {
                Some(g) if Some(*g) == live => format!("generation {g} (live)"),
                Some(g) => format!("generation {g}"),
                None => "the empty store".to_string(),
            };
            let kernel = if kernel_view(&r.served.target) {
                " (kernel view)"
            } else {
                ""
            };
            println!(
                "  {:<9} {:<32} pid {:<7} {shown}{kernel}, since {}",
                r.served.kind.as_str(),
                human::for_terminal(r.served.target.as_os_str().as_bytes()),
                r.pid,
                human::time(r.started)
            );
        }
    }
    if !s.counters.is_empty() {
        println!("Image counters accepted (per trust domain):");
        for (domain, value) in &s.counters {
            println!("  {domain:<20} {value}");
        }
    }
    println!(
        "Size: {} packages ({} of files) in {} generations; {} packs, {}; catalog {}",
        s.stats.packages,
        human::size(s.stats.logical_bytes),
        s.stats.generations,
        s.stats.packs,
        human::size(s.stats.stored_bytes),
        human::size(s.stats.catalog_bytes)
    );
    if let Some((dir, u)) = &s.cache {
        println!(
            "Download cache: {}, {} files, {}",
            dir.display(),
            u.files,
            human::size(u.bytes)
        );
    }
}
