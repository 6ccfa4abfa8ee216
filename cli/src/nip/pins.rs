//! `nip pin`, `nip unpin` and `nip current`: choices an admin makes about
//! generations and versions, each a store operation rendered here.

use std::path::Path;

use anyhow::{Result, bail};
use nexus_store::gc::GcReport;
use nexus_store::{CurrentChange, StoreError};
use serde_json::json;

use super::commands::open;
use crate::exit;
use crate::human;

/// `nip pin [GEN]`: pins GEN, or lists the pins.
pub fn pin(dir: &Path, generation: Option<i64>, json: bool) -> Result<i32> {
    let Some(generation) = generation else {
        let pins = open(dir)?.catalog().pins()?;
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
    let changed = set_pinned(dir, generation, true)?;
    print_pin_change(generation, true, changed, json)
}

/// `nip unpin GEN`.
pub fn unpin(dir: &Path, generation: i64, json: bool) -> Result<i32> {
    let changed = set_pinned(dir, generation, false)?;
    print_pin_change(generation, false, changed, json)
}

/// Pins (`pinned`) or unpins generation `generation`: the one operation
/// behind `nip pin GEN`, `nip unpin GEN` and `nip tui`'s pin key. Returns
/// false when it was so already.
pub fn set_pinned(dir: &Path, generation: i64, pinned: bool) -> Result<bool> {
    let mut store = open(dir)?;
    Ok(if pinned {
        store.pin(generation)?
    } else {
        store.unpin(generation)?
    })
}

fn print_pin_change(generation: i64, pinned: bool, changed: bool, json: bool) -> Result<i32> {
    if json {
        let report = json!({"generation": generation, "pinned": pinned, "changed": changed});
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", pin_change_text(generation, pinned, changed));
    }
    Ok(exit::OK)
}

/// What a pin or unpin did, in words.
pub fn pin_change_text(generation: i64, pinned: bool, changed: bool) -> String {
    match (pinned, changed) {
        (true, true) => format!(
            "generation {generation} pinned: `nip gc` keeps it until `nip unpin {generation}`"
        ),
        (true, false) => format!("generation {generation} was pinned already"),
        (false, true) => format!("generation {generation} unpinned: `nip gc` may collect it"),
        (false, false) => format!("generation {generation} was not pinned"),
    }
}

/// Makes stored version `version` of `app` its Current: the one operation
/// behind `nip current APP VERSION` and `nip tui`'s Current key.
pub fn make_current(dir: &Path, app: &str, version: &str) -> Result<CurrentChange> {
    let mut store = open(dir)?;
    match store.set_current(app, version) {
        Ok(change) => Ok(change),
        Err(e @ StoreError::VersionNotStored { .. }) => {
            bail!("{e}; `nip add` stores a new version, `nip info {app}` lists the installed ones")
        }
        Err(e) => Err(e.into()),
    }
}

/// `nip current APP VERSION`.
pub fn current(dir: &Path, app: &str, version: &str, json: bool) -> Result<i32> {
    let change = make_current(dir, app, version)?;
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
    println!("{}", current_change_text(app, version, &change));
    Ok(exit::OK)
}

/// What making `app/version` Current did, in words.
pub fn current_change_text(app: &str, version: &str, change: &CurrentChange) -> String {
    match (change.generation, &change.previous) {
        (None, _) => format!("{app}/{version} is Current already; nothing to do"),
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
            format!("{app}/{version} is Current{was}{back}; generation {g}")
        }
    }
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
