//! Build scripts of recipes, the one way a script runs: `sh SCRIPT` in
//! the [`sandbox`](crate::sandbox) as the build user, in the recipe's
//! working directory, with a clean environment:
//!
//! | variable | value |
//! |---|---|
//! | `NEXUS_OUT` | `/run/nexus/out`, an empty directory to fill with the package root: the only writable place besides `/tmp` |
//! | `NEXUS_RECIPE`, `NEXUS_VERSION` | the recipe's name and version |
//! | `NEXUS_RECIPE_DIR` | the recipe file's directory |
//! | `HOME`, `TMPDIR` | `/tmp`, private to this build |
//! | `PATH` | the system's directories (for a Cargo recipe, the toolchain's `bin/` first) |
//! | `SOURCE_DATE_EPOCH` | the caller's, when set |
//! | `CARGO_HOME` | for a Cargo recipe ([`crate::cargo`]) |
//!
//! Before it runs, every path the recipe names (script, working
//! directory, manifest) passes the build's [`Trust`] check and, as root,
//! [`check_named`]: nothing below a directory the build user cannot
//! search unless the recipe lies there too. What it leaves
//! in `NEXUS_OUT` is [normalised](crate::normalise) and then grafted as a
//! directory.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use crate::cargo;
use crate::error::{Result, SystemError};
use crate::normalise::normalise;
use crate::recipe::{Fetch, Recipe};
use crate::sandbox::{self, BuildUser, RUN_DIR, RunMount, Sandbox};
use crate::trust::Trust;

/// How much of a failed script's output the error quotes.
const TAIL_LINES: usize = 20;
/// The system directories on a script's `PATH`.
const SYSTEM_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin";
/// The output's name under `/run/nexus`.
const OUT: &str = "out";

/// How build scripts run.
#[derive(Clone, Debug)]
pub struct ScriptOptions {
    /// Who runs them when the caller is root.
    pub user: BuildUser,
    /// Whether the paths a recipe names are checked.
    pub trust: Trust,
}

/// A script's output, kept (with its scratch directory) until grafted.
pub struct Output {
    /// The package root.
    pub root: PathBuf,
    _scratch: tempfile::TempDir,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SystemError + '_ {
    move |source| SystemError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn canonical(path: &Path) -> Result<PathBuf> {
    fs::canonicalize(path).map_err(io(path))
}

/// Refuses, when the caller is root, a `path` that `recipe` names below a
/// directory `user` cannot search, unless the recipe file lies below that
/// directory too ([`sandbox::check_named`]). An unprivileged caller's
/// build runs as the caller, who reaches nothing more through it.
pub fn check_named(recipe: &Recipe, path: &Path, user: &BuildUser) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    sandbox::check_named(&canonical(path)?, &canonical(&recipe.file.path)?, user)?;
    Ok(())
}

/// Runs `script` for `recipe` in `workdir`; returns the normalised output.
pub fn run(
    recipe: &Recipe,
    script: &Path,
    workdir: &Path,
    options: &ScriptOptions,
) -> Result<Output> {
    let fail = |status: String, output: String| SystemError::Script {
        recipe: recipe.name.clone(),
        script: script.to_path_buf(),
        status,
        output,
    };
    if !script.is_file() {
        return Err(fail("not run".into(), "the script does not exist".into()));
    }
    let recipe_dir = recipe
        .file
        .path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    for path in [script, workdir, recipe_dir] {
        options.trust.check(path)?;
    }
    if let Some(Fetch::Cargo { manifest }) = &recipe.fetch {
        options.trust.check(manifest)?;
        check_named(recipe, manifest, &options.user)?;
    }
    // Before anything is fetched; the sandbox checks its sources again.
    for path in [script, workdir] {
        check_named(recipe, path, &options.user)?;
    }
    let recipe_file = canonical(&recipe.file.path)?;
    let (script, workdir, recipe_dir) = (
        canonical(script)?,
        canonical(workdir)?,
        canonical(recipe_dir)?,
    );
    let as_root = nix::unistd::geteuid().is_root();
    let owner = as_root.then_some((options.user.uid, options.user.gid));

    // The caller's private directory: nothing below it is reachable by the
    // build user except through the sandbox's mounts.
    let scratch = tempfile::Builder::new()
        .prefix("nexus-build-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir()
        .map_err(io(&std::env::temp_dir()))?;
    let out = scratch.path().join(OUT);
    fs::create_dir(&out).map_err(io(&out))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&out, Some(uid), Some(gid)).map_err(io(&out))?;
    }
    let mut run = vec![RunMount {
        source: out.clone(),
        name: OUT.into(),
        writable: true,
    }];
    let mut path = SYSTEM_PATH.to_string();
    let mut env: Vec<(String, OsString)> = Vec::new();
    if let Some(Fetch::Cargo { manifest }) = &recipe.fetch {
        let kit = cargo::prepare(&recipe.name, &canonical(manifest)?, scratch.path(), owner)?;
        run.extend(kit.mounts);
        path = format!("{}:{path}", kit.path);
        env.push(("CARGO_HOME".into(), kit.cargo_home.into()));
    }
    env.extend([
        ("PATH".into(), path.into()),
        ("HOME".into(), "/tmp".into()),
        ("TMPDIR".into(), "/tmp".into()),
        ("LANG".into(), "C.UTF-8".into()),
        ("NEXUS_OUT".into(), format!("{RUN_DIR}/{OUT}").into()),
        ("NEXUS_RECIPE".into(), recipe.name.clone().into()),
        (
            "NEXUS_VERSION".into(),
            recipe.version.clone().unwrap_or_default().into(),
        ),
        ("NEXUS_RECIPE_DIR".into(), recipe_dir.clone().into()),
    ]);
    if let Some(epoch) = std::env::var_os("SOURCE_DATE_EPOCH") {
        env.push(("SOURCE_DATE_EPOCH".into(), epoch));
    }
    let mut sources = vec![recipe_dir.clone(), workdir.clone()];
    if let Some(dir) = script.parent() {
        sources.push(dir.to_path_buf());
    }
    sources.sort();
    sources.dedup();
    let sandbox_dir = scratch.path().join("sandbox");
    fs::create_dir(&sandbox_dir).map_err(io(&sandbox_dir))?;

    tracing::info!(
        "running {} for recipe {} in the build sandbox",
        script.display(),
        recipe.name
    );
    let finished = sandbox::run(&Sandbox {
        program: Path::new("/bin/sh"),
        args: &[script.clone().into_os_string()],
        env: &env,
        cwd: &workdir,
        sources: &sources,
        named_by: &recipe_file,
        run: &run,
        user: &options.user,
        scratch: &sandbox_dir,
    })?;
    if finished.code != 0 {
        return Err(fail(
            format!("exit status {}", finished.code),
            finished.tail(TAIL_LINES),
        ));
    }
    let empty = fs::read_dir(&out).map_err(io(&out))?.next().is_none();
    if empty {
        return Err(fail(
            "succeeded".into(),
            "but left $NEXUS_OUT empty: a package needs at least one file".into(),
        ));
    }
    normalise(&recipe.name, &out, &recipe.privileged)?;
    Ok(Output {
        root: out,
        _scratch: scratch,
    })
}
