//! `nip pin`, `nip unpin` and `nip current`: choices an admin makes about
//! generations and versions, each a store operation rendered here.

use std::path::Path;

use anyhow::{Result, bail};
use nexus_store::StoreError;
use nexus_store::gc::GcReport;
use serde_json::json;

use super::commands::open;
use crate::exit;
use crate::human;

/// `nip pin [GEN]`: pins GEN, or lists the pins.
pub fn pin(dir: &Path, generation: Option<i64>, json: bool) -> Result<i32> {
    let mut store = open(dir)?;
    let Some(generation) = generation else {
        let pins = store.catalog().pins()?;
        if json {
            println!("{}", serde_json::to_string_pretty(&pins)?);
        } else if pins.is_empty() {
            println!("no generation is pinned");
        } else {
            for p in &pins {
                println!("{:>5}  pinned {}", p.generation, human::time(p.pinned));
            }
        }
        return Ok(exit::OK);
    };
    let changed = store.pin(generation)?;
    print_pin_change(generation, true, changed, json)
}

/// `nip unpin GEN`.
pub fn unpin(dir: &Path, generation: i64, json: bool) -> Result<i32> {
    let changed = open(dir)?.unpin(generation)?;
    print_pin_change(generation, false, changed, json)
}

fn print_pin_change(generation: i64, pinned: bool, changed: bool, json: bool) -> Result<i32> {
    if json {
        let report = json!({"generation": generation, "pinned": pinned, "changed": changed});
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(exit::OK);
    }
    match (pinned, changed) {
        (true, true) => println!(
            "generation {generation} pinned: `nip gc` keeps it until `nip unpin {generation}`"
        ),
        (true, false) => println!("generation {generation} was pinned already"),
        (false, true) => println!("generation {generation} unpinned: `nip gc` may collect it"),
        (false, false) => println!("generation {generation} was not pinned"),
    }
    Ok(exit::OK)
}

/// `nip current APP VERSION`.
pub fn current(dir: &Path, app: &str, version: &str, json: bool) -> Result<i32> {
    let mut store = open(dir)?;
    let change = match store.set_current(app, version) {
        Ok(change) => change,
        Err(e @ StoreError::VersionNotStored { .. }) => {
            bail!("{e}; `nip add` stores a new version, `nip info {app}` lists the installed ones")
        }
        Err(e) => return Err(e.into()),
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "app": app,
                "version": version,
                "previous": change.previous,
                "generation": change.generation,
                "reinstated": change.reinstated,
            }))?
        );
        return Ok(exit::OK);
    }
    match (change.generation, &change.previous) {
        (None, _) => println!("{app}/{version} is Current already; nothing to do"),
        (Some(g), previous) => {
            let was = previous
                .as_deref()
                .map(|p| format!(" (was {p})"))
                .unwrap_or_default();
            let back = if change.reinstated {
                ", back in the installed set"
            } else {
                ""
            };
            println!("{app}/{version} is Current{was}{back}; generation {g}");
        }
    }
    Ok(exit::OK)
}

/// The lines `nip gc` adds about what it kept and why: generations only
/// pins or running readers kept, and data now unused but within its grace.
pub fn print_gc_retention(report: &GcReport, grace: u64) {
    let list = |ids: &[i64]| {
        ids.iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !report.kept_pinned.is_empty() {
        println!("kept pinned generations {}", list(&report.kept_pinned));
    }
    if !report.kept_in_use.is_empty() {
        println!(
            "kept generations {} (served by a running mount or virtio-fs daemon)",
            list(&report.kept_in_use)
        );
    }
    if !report.kept_open.is_empty() {
        println!(
            "kept {} (files open under a mount)",
            report.kept_open.join(", ")
        );
    }
    if report.packages_condemned + report.blobs_condemned > 0 {
        println!(
            "{} packages and {} file contents are unused from now: deleted by a gc {grace} s or more from now, unless used again",
            report.packages_condemned, report.blobs_condemned
        );
    }
}
