//! `nexus build rumk`: builds the Rumk guest from its recipe
//! (`recipes/rumk/minimal-rumk.kdl`) and grafts the kernel into the store
//! as `rumk/VERSION` (`boot/rumk` inside), so that the guest that boots is
//! content-addressed and verified like every other program.
//!
//! Unlike `nexus build --profile` (a generation of exactly a profile's
//! packages), this adds the guest to the live set and leaves every other
//! package where it is. The recipe is read with nexus-system's parser (its
//! version); its build script runs the way a `script` source is run
//! (`sh build.sh` in the recipe's workdir, `NEXUS_OUT` and friends in the
//! environment), and the result is grafted as a directory. The unikernel
//! profile builds the same recipe through nexus-system.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use nexus_store::{AddDir, AddOptions, NoProgress, Store};

use crate::exit;

/// The recipe, relative to the source tree.
pub const RECIPE: &str = "recipes/rumk/minimal-rumk.kdl";
/// Its build script, beside it.
const SCRIPT: &str = "recipes/rumk/build.sh";
/// Its workdir (the recipe's `workdir="../../rumk"`).
const WORKDIR: &str = "rumk";

/// Builds the guest in the source tree `source` and grafts it into the
/// store at `store`.
pub fn build_rumk(store: &Path, source: Option<PathBuf>) -> Result<i32> {
    let source = match source {
        Some(s) => s,
        None => std::env::current_dir().context("the current directory")?,
    };
    let recipe = source.join(RECIPE);
    if !recipe.is_file() {
        bail!(
            "no {RECIPE} below {}: run in a Nexus source tree or name one with --source",
            source.display()
        );
    }
    let version = recipe_version(&recipe)?;
    let out = tempfile::Builder::new()
        .prefix("nexus-build-rumk-")
        .tempdir()
        .context("creating the package root")?;
    let root = out.path().join("root");
    std::fs::create_dir(&root).context("creating the package root")?;
    let recipe_dir = recipe.parent().unwrap_or(&source).to_path_buf();
    eprintln!("nexus: building rumk {version} ({})", recipe.display());
    let status = Command::new("sh")
        .arg(source.join(SCRIPT))
        .current_dir(source.join(WORKDIR))
        .env("NEXUS_OUT", &root)
        .env("NEXUS_RECIPE", "minimal-rumk")
        .env("NEXUS_VERSION", &version)
        .env("NEXUS_RECIPE_DIR", &recipe_dir)
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("running {SCRIPT}"))?;
    if !status.success() {
        bail!("{SCRIPT} failed ({status})");
    }
    let kernel = root.join(super::rumk::KERNEL_PATH);
    if !kernel.is_file() {
        bail!("{SCRIPT} left no {}", super::rumk::KERNEL_PATH);
    }
    let mut store =
        Store::open(store).with_context(|| format!("opening the store in {}", store.display()))?;
    let outcome = store
        .add_dirs(
            &[AddDir {
                path: root,
                name: super::rumk::APP.to_string(),
                version: version.clone(),
            }],
            AddOptions::default(),
            &NoProgress,
        )
        .with_context(|| format!("grafting rumk/{version}"))?;
    match outcome.generation {
        Some(g) => println!("added rumk/{version}; generation {g}"),
        None => println!("nothing to do: rumk/{version} already installed, identical"),
    }
    Ok(exit::OK)
}

/// The recipe's `version`, read with nexus-system's parser (which checks
/// the whole recipe and reports problems with their line).
fn recipe_version(recipe: &Path) -> Result<String> {
    let dir = recipe.parent().context("the recipe's directory")?;
    let parsed = nexus_system::locate::load_recipe(dir, "minimal-rumk")
        .map_err(|e| anyhow::anyhow!("{e:?}"))
        .with_context(|| format!("reading {}", recipe.display()))?;
    parsed
        .version
        .with_context(|| format!("{} names no version", recipe.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recipe_version_matches_the_guest_crate() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let version = recipe_version(&root.join(RECIPE)).expect("the recipe's version");
        let cargo = std::fs::read_to_string(root.join("rumk/Cargo.toml")).expect("rumk/Cargo.toml");
        assert!(
            cargo.contains(&format!("\nversion = \"{version}\"\n")),
            "recipes/rumk/minimal-rumk.kdl says {version}; rumk/Cargo.toml must agree"
        );
    }
}
