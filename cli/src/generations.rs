//! `switch` and `rollback`: moving the live generation.
//!
//! Generations are nip's (`nip history`, `nip gc`), so `nip switch` and
//! `nip rollback` are the commands; `nexus switch` and `nexus rollback` are
//! aliases for admins who think of the live system as nexus's. Both run
//! this code with the same arguments and print the same output.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use nexus_graft::{AddOptions, ArchiveRequest, ReadOptions, Source, Trust};
use nexus_npk::KeyStore;
use nexus_store::Store;
use nexus_store::catalog::GenerationRow;
use serde_json::json;

use crate::exit;
use crate::progress::Bar;

/// What to switch to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SwitchTarget {
    /// A retained generation.
    Generation(i64),
    /// A signed system image file.
    Image(PathBuf),
}

/// A number is a generation unless a file of that name exists; anything
/// else must be an image file (refused as a usage error otherwise).
fn parse_target(text: &str) -> Result<SwitchTarget, String> {
    let path = PathBuf::from(text);
    if let (Ok(generation), false) = (text.parse::<i64>(), path.exists()) {
        return Ok(SwitchTarget::Generation(generation));
    }
    if path.is_file() {
        return Ok(SwitchTarget::Image(path));
    }
    Err(format!(
        "{text:?} is neither a generation number (see `nip history`) nor an image file"
    ))
}

/// `switch`'s arguments (`nip switch`, and its alias `nexus switch`).
#[derive(Debug, Args)]
pub struct SwitchArgs {
    /// A generation number (see `nip history`) or a signed image file
    /// (from `nexus snapshot`).
    #[arg(value_name = "GEN|FILE", value_parser = parse_target)]
    pub target: SwitchTarget,
    /// Accept an image older than one already accepted from its key.
    #[arg(long)]
    pub allow_downgrade: bool,
    /// JSON: {generation, action, restores, changed, image, milliseconds}.
    #[arg(long)]
    pub json: bool,
}

/// `rollback`'s arguments (`nip rollback`, and its alias `nexus rollback`).
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// JSON: {generation, action, restores, changed}.
    #[arg(long)]
    pub json: bool,
}

/// `switch --help`, shared by the command and its alias.
pub const SWITCH_ABOUT: &str = "\
Make generation GEN, or the system in image FILE, the live one.

GEN: a new generation with the package set and Current choices of
generation GEN (see `nip history`); switching to a retained generation is
always allowed. FILE: a system image from `nexus snapshot`, checked like
`nexus verify` (signature by a trusted, unrevoked key, every hash) and
imported as exactly its packages and Current choices; one whose counter is
lower than the highest this store accepted from its key (a downgrade or a
replay) is refused unless --allow-downgrade.

One catalog transaction; every live mount shows it within about 100 ms,
without a remount (files already open keep their bytes). `nip switch` and
`nexus switch` are the same command.

Examples: nip switch 7; nip switch system-42.img";

/// `rollback --help`, shared by the command and its alias.
pub const ROLLBACK_ABOUT: &str = "\
Go back: make a new generation equal to the one before the live content.

Repeat to walk further back; `nip switch GEN` goes to any retained
generation. `nip rollback` and `nexus rollback` are the same command.";

fn open(dir: &Path) -> Result<Store> {
    Store::open(dir).with_context(|| format!("opening the store in {}", dir.display()))
}

/// Runs `switch`.
pub fn switch(store_dir: &Path, keys_dir: &Path, args: SwitchArgs) -> Result<i32> {
    let started = Instant::now();
    let (row, changed, image) = match &args.target {
        SwitchTarget::Generation(generation) => {
            let mut store = open(store_dir)?;
            let new = store.switch(*generation)?;
            (generation_row(&store, new)?, true, None)
        }
        SwitchTarget::Image(path) => {
            let (store, generation) =
                import_image(store_dir, keys_dir, path, args.allow_downgrade)?;
            let live = match generation {
                Some(g) => g,
                None => store
                    .catalog()
                    .current_generation()?
                    .context("the store has no generation after importing the image")?,
            };
            (
                generation_row(&store, live)?,
                generation.is_some(),
                Some(path),
            )
        }
    };
    // Opening the catalog and the one durable transaction: what a switch
    // costs, whatever starting a process costs (bench/images.sh reads it).
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if args.json {
        let mut v = row_json(&row, changed);
        v["image"] = json!(image);
        v["milliseconds"] = json!(ms);
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        match (image, changed) {
            (None, _) => println!("generation {}: {} ({ms:.2} ms)", row.id, row.action),
            (Some(path), true) => println!("generation {}: image {}", row.id, path.display()),
            (Some(path), false) => println!(
                "nothing to do: the live generation {} is {} already",
                row.id,
                path.display()
            ),
        }
    }
    Ok(exit::OK)
}

/// Runs `rollback`.
pub fn rollback(store_dir: &Path, args: RollbackArgs) -> Result<i32> {
    let mut store = open(store_dir)?;
    let generation = store.rollback()?;
    let row = generation_row(&store, generation)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&row_json(&row, true))?);
    } else {
        println!("generation {}: {}", row.id, row.action);
    }
    Ok(exit::OK)
}

fn generation_row(store: &Store, id: i64) -> Result<GenerationRow> {
    store
        .catalog()
        .generation(id)?
        .with_context(|| format!("generation {id} vanished right after it was made"))
}

fn row_json(row: &GenerationRow, changed: bool) -> serde_json::Value {
    json!({
        "generation": row.id,
        "action": row.action,
        "restores": row.restores,
        "changed": changed,
    })
}

/// Imports the image at `path` as exactly its packages and Current
/// choices; returns the store and the new generation (`None` when the
/// image is the live system already).
fn import_image(
    store_dir: &Path,
    keys_dir: &Path,
    path: &Path,
    allow_downgrade: bool,
) -> Result<(Store, Option<i64>)> {
    let mut store = open(store_dir)?;
    let options = AddOptions {
        threads: nexus_store::AddOptions::default().threads,
        read: ReadOptions::default(),
        trust: Trust::Keys(KeyStore::new(keys_dir).trust_set()?),
        allow_downgrade,
    };
    let source = Source::Archive(ArchiveRequest {
        path: path.to_path_buf(),
        name: None,
        version: None,
    });
    let bar = Bar::for_stderr();
    let outcome = nexus_graft::add(&mut store, &[source], options, &bar);
    bar.finish();
    let outcome = outcome.map_err(|e| match e {
        nexus_graft::GraftError::Store(s) => anyhow::Error::from(s),
        other => anyhow::Error::from(other),
    })?;
    Ok((store, outcome.generation))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_generations_unless_a_file_is_named() {
        assert_eq!(parse_target("7"), Ok(SwitchTarget::Generation(7)));
        assert!(parse_target("not-a-number").is_err());
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("42");
        std::fs::write(&image, b"x").unwrap();
        let text = image.to_str().unwrap();
        assert_eq!(parse_target(text), Ok(SwitchTarget::Image(image.clone())));
        // A directory is no image.
        assert!(parse_target(dir.path().to_str().unwrap()).is_err());
    }
}
