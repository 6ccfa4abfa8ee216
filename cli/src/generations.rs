//! `switch` and `rollback`: moving the live generation.
//!
//! Generations are nip's (`nip history`, `nip gc`), so `nip switch` and
//! `nip rollback` are the commands; `nexus switch` and `nexus rollback` are
//! aliases for admins who think of the live system as nexus's. Both run
//! this code with the same arguments and print the same output.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use nexus_graft::{AddOptions, ReadOptions, Trust};
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

/// Digits only: a generation number, whatever files exist (a file named
/// `12` in the current directory must not turn `switch 12` into importing
/// it). Anything else: an existing image file (`./12` names a file called
/// `12`); neither is a usage error.
fn parse_target(text: &str) -> Result<SwitchTarget, String> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse()
            .map(SwitchTarget::Generation)
            .map_err(|_| format!("generation {text} is out of range"));
    }
    let path = PathBuf::from(text);
    if path.is_file() {
        return Ok(SwitchTarget::Image(path));
    }
    Err(format!(
        "{text:?} is neither a generation number (digits; see `nip history`) nor an image file"
    ))
}

/// `switch`'s arguments (`nip switch`, and its alias `nexus switch`).
#[derive(Debug, Args)]
pub struct SwitchArgs {
    /// A generation number (digits only; see `nip history`) or a signed
    /// image file (from `nexus snapshot`).
    #[arg(value_name = "GEN|FILE", value_parser = parse_target,
          required_unless_present = "image", conflicts_with = "image")]
    pub target: Option<SwitchTarget>,
    /// The image file to switch to, whatever its name.
    #[arg(long, value_name = "FILE")]
    pub image: Option<PathBuf>,
    /// Accept an image older than one already accepted in its trust domain
    /// (or of the same counter with other content).
    #[arg(long)]
    pub allow_downgrade: bool,
    /// Accept an image whose signature has expired.
    #[arg(long)]
    pub allow_expired: bool,
    /// JSON: {generation, action, restores, changed, image, milliseconds}.
    #[arg(long)]
    pub json: bool,
}

impl SwitchArgs {
    fn target(&self) -> SwitchTarget {
        match (&self.image, &self.target) {
            (Some(file), _) => SwitchTarget::Image(file.clone()),
            (None, Some(target)) => target.clone(),
            // clap requires one of the two.
            (None, None) => SwitchTarget::Image(PathBuf::new()),
        }
    }
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

GEN (digits only, even if a file of that name exists): a new generation
with the package set and Current choices of generation GEN (see `nip
history`); switching to a retained generation is always allowed. FILE
(anything else; name a file called 12 as ./12 or with --image): a system
image from `nexus snapshot`, signed by a key trusted for images (`nip key
trust --for images`), checked like `nexus verify` and imported as exactly
its packages and Current choices. One whose counter is lower than the
highest accepted in its trust domain, or equal to it with other content,
is refused unless --allow-downgrade; an expired one unless
--allow-expired. A package (.npk) is refused: add it with `nip add`.

One catalog transaction; every live mount shows it within about 100 ms,
without a remount (files already open keep their bytes). `nip switch` and
`nexus switch` are the same command.

Examples: nip switch 7; nip switch system-42.img; nip switch --image 42";

/// `rollback --help`, shared by the command and its alias.
pub const ROLLBACK_ABOUT: &str = "\
Go back: make a new generation equal to the one before the live content.

Repeat to walk further back; `nip switch GEN` goes to any retained
generation. `nip rollback` and `nexus rollback` are the same command.";

use crate::open::open_store as open;

/// Runs `switch`.
pub fn switch(store_dir: &Path, keys_dir: &Path, args: SwitchArgs) -> Result<i32> {
    let started = Instant::now();
    let target = args.target();
    let (row, changed, image) = match &target {
        SwitchTarget::Generation(generation) => {
            (switch_to_generation(store_dir, *generation)?, true, None)
        }
        SwitchTarget::Image(path) => {
            let (store, generation) = import_image(store_dir, keys_dir, path, &args)?;
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
            (None, _) => println!("{} ({ms:.2} ms)", generation_made(&row)),
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
    let row = roll_back(store_dir)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&row_json(&row, true))?);
    } else {
        println!("{}", generation_made(&row));
    }
    Ok(exit::OK)
}

/// Makes a new generation with the package set and Current choices of
/// retained generation `generation`: the one operation behind `switch GEN`
/// (and `nip tui`'s switch). Returns the new generation.
pub fn switch_to_generation(store_dir: &Path, generation: i64) -> Result<GenerationRow> {
    let mut store = open(store_dir)?;
    let new = store.switch(generation)?;
    generation_row(&store, new)
}

/// Goes back one step (see [`ROLLBACK_ABOUT`]): the one operation behind
/// `rollback` (and `nip tui`'s). Returns the new generation.
pub fn roll_back(store_dir: &Path) -> Result<GenerationRow> {
    let mut store = open(store_dir)?;
    let generation = store.rollback()?;
    generation_row(&store, generation)
}

/// What a new generation is, as `switch` and `rollback` report it:
/// `generation 8: switch to 3`.
pub fn generation_made(row: &GenerationRow) -> String {
    format!("generation {}: {}", row.id, row.action)
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
/// choices (refused if older than one accepted in its trust domain, or
/// expired, unless `args` allow it); returns the store and the new
/// generation (`None` when the image is the live system already).
fn import_image(
    store_dir: &Path,
    keys_dir: &Path,
    path: &Path,
    args: &SwitchArgs,
) -> Result<(Store, Option<i64>)> {
    if !path.is_file() {
        bail!("{}: no such image file", path.display());
    }
    let mut store = open(store_dir)?;
    let options = AddOptions {
        threads: nexus_store::AddOptions::default().threads,
        read: ReadOptions::default(),
        trust: Trust::Keys(KeyStore::new(keys_dir).trust_set()?),
        allow_downgrade: args.allow_downgrade,
        allow_expired: args.allow_expired,
        source_policy: Default::default(),
    };
    let bar = Bar::for_stderr();
    let outcome = nexus_graft::import_image(&mut store, path, options, &bar);
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
    fn digits_are_a_generation_and_anything_else_a_file() {
        // Digits are a generation whatever files exist.
        assert_eq!(parse_target("12"), Ok(SwitchTarget::Generation(12)));
        let dir = tempfile::tempdir().unwrap();
        for name in ["12", "12.npk", "system.img", "-1", "+3", "1e3"] {
            let file = dir.path().join(name);
            std::fs::write(&file, b"x").unwrap();
            let text = file.to_str().unwrap();
            assert_eq!(
                parse_target(text),
                Ok(SwitchTarget::Image(file.clone())),
                "{text}"
            );
        }
        assert!(parse_target("not-a-number").is_err(), "no such file");
        assert!(
            parse_target(dir.path().to_str().unwrap()).is_err(),
            "a directory"
        );
        assert!(parse_target("99999999999999999999").is_err());
    }
}
