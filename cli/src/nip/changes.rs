//! `nip diff` and `nip history`: what changed from one generation to the
//! next, computed by the store (`generations::diff`), rendered here.

use std::path::Path;

use anyhow::{Context, Result};
use nexus_store::generations::{self, DiffSizes, GenerationDiff, diff};
use serde_json::json;

use super::commands::open;

use crate::exit;
use crate::human::{self, diff_summary, signed_bytes};

/// `nip diff FROM [TO]` (TO defaults to the live generation).
pub fn show_diff(dir: &Path, from: i64, to: Option<i64>, json: bool) -> Result<i32> {
    let store = open(dir)?;
    let to = match to {
        Some(to) => to,
        None => store
            .catalog()
            .current_generation()?
            .context("the store has no generations yet")?,
    };
    let d = diff(store.catalog(), Some(from), to, DiffSizes::LogicalAndStored)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&d)?);
    } else {
        print_diff(&d);
    }
    Ok(exit::OK)
}

fn print_diff(d: &GenerationDiff) {
    for line in diff_lines(d) {
        println!("{line}");
    }
}

/// A diff in full, as `nip diff` prints it: one line per change, under a
/// title per kind of change, then the sizes.
pub fn diff_lines(d: &GenerationDiff) -> Vec<String> {
    let mut out = vec![match d.from {
        Some(from) => format!("generation {from} → {}", d.to),
        None => format!("nothing → generation {}", d.to),
    }];
    if d.is_empty() {
        out.push("  same Apps, versions and Current choices".to_string());
    }
    let mut list = |title: &str, items: Vec<String>| {
        if !items.is_empty() {
            out.push(format!("{title}:"));
            out.extend(items.into_iter().map(|item| format!("  {item}")));
        }
    };
    list("Apps added", d.apps_added.clone());
    list("Apps removed", d.apps_removed.clone());
    let version = |sign: char, v: &nexus_store::generations::VersionRef| {
        format!(
            "{sign} {:<32} {:>12}",
            format!("{}/{}", v.name, v.version),
            human::size(v.bytes)
        )
    };
    list(
        "Versions added",
        d.versions_added.iter().map(|v| version('+', v)).collect(),
    );
    list(
        "Versions removed",
        d.versions_removed.iter().map(|v| version('-', v)).collect(),
    );
    list(
        "Current",
        d.current_moved
            .iter()
            .map(|m| format!("{:<24} {} → {}", m.app, m.from, m.to))
            .collect(),
    );
    let size = |what: &str, s: &nexus_store::generations::SizeChange| {
        format!(
            "{what:<14} {} → {} ({})",
            human::size(s.before),
            human::size(s.after),
            signed_bytes(s.delta)
        )
    };
    out.push(size("Files", &d.logical_bytes));
    if let Some(stored) = &d.stored_bytes {
        out.push(size("Stored", stored));
    }
    out
}

/// The bracketed summary `nip history` gives a generation: what it changed
/// from the one before, or `(oldest kept)` when gc removed every earlier
/// one.
pub fn history_summary(d: Option<&GenerationDiff>) -> String {
    d.map(diff_summary)
        .unwrap_or_else(|| "(oldest kept)".to_string())
}

/// `nip history`: every retained generation, oldest first, with what it
/// changed from the one before.
pub fn history(dir: &Path, json: bool) -> Result<i32> {
    let store = open(dir)?;
    let history = generations::history(store.catalog())?;
    if json {
        let rows: Vec<_> = history
            .iter()
            .map(|(g, d)| {
                json!({
                    "id": g.id, "created": g.created, "action": g.action,
                    "restores": g.restores, "packages": g.packages, "diff": d,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        let live = history.last().map(|(g, _)| g.id);
        for (g, d) in &history {
            let summary = history_summary(d.as_ref());
            println!(
                "{:>5}{} {}  {:>4} packages  {}  [{summary}]",
                g.id,
                if Some(g.id) == live { "*" } else { " " },
                human::time(g.created),
                g.packages,
                g.action
            );
        }
    }
    Ok(exit::OK)
}
