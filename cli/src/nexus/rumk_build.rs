//! `nexus build rumk`: makes the Rumk guest from its recipe
//! (`recipes/rumk/minimal-rumk.kdl`) and adds it to the live set as
//! `rumk/VERSION` (`boot/rumk` inside), so that the guest that boots is
//! content-addressed and verified like every other program.
//!
//! This is nexus-system's one build path for a single recipe
//! ([`nexus_system::build::add_recipe`]): the recipe is found and checked
//! as a profile build's are, its script runs in the build sandbox after
//! the pinned fetch of the guest's crates, and the package joins the live
//! set as its App's `Current`, every other package staying where it is. A
//! `rumk` of the recipe's version already stored is taken as it is.

use std::path::Path;

use anyhow::Result;
use nexus_store::NoProgress;
use serde_json::json;

use super::build::{BuildArgs, build_options, rumk_recipes_dir};
use crate::exit;

/// The recipe, relative to the recipes directory.
pub const RECIPE: &str = "minimal-rumk";

/// Builds the guest and adds it to the store at `store`.
pub fn build_rumk(store: &Path, keys: &Path, args: &BuildArgs) -> Result<i32> {
    let recipes = rumk_recipes_dir(args)?;
    let options = build_options(keys, args, &recipes)?;
    let mut store = crate::open::open_store(store)?;
    eprintln!(
        "nexus: building recipe {RECIPE} from {}",
        recipes.dir.display()
    );
    let added = nexus_system::build::add_recipe(&mut store, RECIPE, &options, &NoProgress)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "spec": added.spec,
                "generation": added.generation,
                "reused": added.reused,
            }))?
        );
        return Ok(exit::OK);
    }
    let how = if added.reused {
        " (already stored, not built again)"
    } else {
        ""
    };
    match added.generation {
        Some(g) => println!("added {}{how}; generation {g}", added.spec),
        None => println!(
            "nothing to do: {} already installed as Current{how}",
            added.spec
        ),
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nexus_system::trust::Trust;

    #[test]
    fn the_recipe_version_matches_the_guest_crate() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let recipe =
            nexus_system::locate::load_recipe(&root.join("recipes"), RECIPE, Trust::Vouched)
                .expect("the guest's recipe");
        let version = recipe.version.expect("the recipe names a version");
        let cargo = std::fs::read_to_string(root.join("rumk/Cargo.toml")).expect("rumk/Cargo.toml");
        assert!(
            cargo.contains(&format!("\nversion = \"{version}\"\n")),
            "recipes/rumk/minimal-rumk.kdl says {version}; rumk/Cargo.toml must agree"
        );
    }
}
