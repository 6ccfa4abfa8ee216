//! Build scripts of recipes: `sh SCRIPT`, run in the recipe's working
//! directory with `NEXUS_OUT` naming an empty directory to fill with the
//! package root (and `NEXUS_RECIPE`, `NEXUS_VERSION`, `NEXUS_RECIPE_DIR`).
//! What it leaves there is grafted as a directory.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::error::{Result, SystemError};
use crate::recipe::Recipe;

/// How much of a failed script's stderr the error quotes.
const TAIL_LINES: usize = 20;

/// Runs `script` for `recipe` into `out` (which must exist and be empty).
pub fn run(recipe: &Recipe, script: &Path, workdir: &Path, out: &Path) -> Result<()> {
    let fail = |status: String, output: String| SystemError::Script {
        recipe: recipe.name.clone(),
        script: script.to_path_buf(),
        status,
        output,
    };
    if !script.is_file() {
        return Err(fail("not run".into(), "the script does not exist".into()));
    }
    let recipe_dir = recipe.file.path.parent().unwrap_or(Path::new("."));
    tracing::info!("running {} for recipe {}", script.display(), recipe.name);
    let result = Command::new("sh")
        .arg(fs::canonicalize(script).unwrap_or_else(|_| script.to_path_buf()))
        .current_dir(workdir)
        .env("NEXUS_OUT", out)
        .env("NEXUS_RECIPE", &recipe.name)
        .env("NEXUS_VERSION", recipe.version.as_deref().unwrap_or(""))
        .env(
            "NEXUS_RECIPE_DIR",
            fs::canonicalize(recipe_dir).unwrap_or_else(|_| recipe_dir.to_path_buf()),
        )
        .stdin(Stdio::null())
        .output()
        .map_err(|e| fail("not run".into(), format!("cannot run sh: {e}")))?;
    if !result.status.success() {
        let stderr = String::from_utf8_lossy(&result.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        let tail = lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n");
        return Err(fail(result.status.to_string(), tail));
    }
    let empty = fs::read_dir(out)
        .map_err(|e| SystemError::Io {
            path: out.to_path_buf(),
            source: e,
        })?
        .next()
        .is_none();
    if empty {
        return Err(fail(
            "succeeded".into(),
            "but left $NEXUS_OUT empty: a package needs at least one file".into(),
        ));
    }
    Ok(())
}
