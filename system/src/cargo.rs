//! The pinned fetch of a Cargo project (`fetch "cargo" "Cargo.toml"` in a
//! recipe): its crates, vendored before the build script runs, so that the
//! script itself needs no network.
//!
//! `cargo vendor --locked` runs outside the sandbox, with the caller's
//! cargo and its registry cache (and network, for crates not cached yet).
//! It downloads exactly what the project's `Cargo.lock` pins and checks
//! each crate against the lock file's SHA256; it compiles and runs
//! nothing of the project. The script then gets, read-only, the vendored
//! crates and the caller's Rust toolchain (`rustc --print sysroot`, its
//! `bin/` first on `PATH`), and a `CARGO_HOME` whose configuration
//! replaces crates.io with the vendored directory and turns cargo offline.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Result, SystemError};
use crate::sandbox::{RUN_DIR, RunMount};

/// The toolchain's name under `/run/nexus`.
const RUST: &str = "rust";
/// The vendored crates' name under `/run/nexus`.
const VENDOR: &str = "vendor";
/// `CARGO_HOME`'s name under `/run/nexus`.
const CARGO_HOME: &str = "cargo";

/// What a script of a Cargo recipe gets: mounts and environment.
pub struct CargoKit {
    /// The toolchain, the crates and `CARGO_HOME`.
    pub mounts: Vec<RunMount>,
    /// `PATH` directory to put first.
    pub path: String,
    /// `CARGO_HOME`, inside the sandbox.
    pub cargo_home: String,
}

fn fail(recipe: &str, message: String) -> SystemError {
    SystemError::PinnedFetch {
        recipe: recipe.to_string(),
        message,
    }
}

/// Runs `command` in `dir` with a umask that leaves what it writes
/// readable to the build user; returns its stdout.
fn output(recipe: &str, mut command: Command, dir: &Path) -> Result<String> {
    let shown = format!("{command:?}");
    command.current_dir(dir);
    // SAFETY: umask(2) is async-signal-safe and touches no memory.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            libc::umask(0o022);
            Ok(())
        });
    }
    let out = command
        .output()
        .map_err(|e| fail(recipe, format!("cannot run {shown}: {e}")))?;
    if !out.status.success() {
        return Err(fail(
            recipe,
            format!(
                "{shown} failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim_end()
            ),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Vendors the crates of `manifest` into `scratch/vendor`, makes
/// `scratch/cargo` the script's `CARGO_HOME` (owned by `owner`, when
/// given), and finds the toolchain.
pub fn prepare(
    recipe: &str,
    manifest: &Path,
    scratch: &Path,
    owner: Option<(u32, u32)>,
) -> Result<CargoKit> {
    let dir = manifest
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let vendor = scratch.join(VENDOR);
    let mut command = Command::new("cargo");
    command
        .args(["vendor", "--locked", "--versioned-dirs", "--quiet"])
        .arg("--manifest-path")
        .arg(manifest)
        .arg(&vendor);
    tracing::info!(
        "recipe {recipe}: vendoring the crates of {}",
        manifest.display()
    );
    output(recipe, command, dir)?;
    let mut command = Command::new("rustc");
    command.args(["--print", "sysroot"]);
    let sysroot = PathBuf::from(output(recipe, command, dir)?.trim());
    if !sysroot.join("bin/cargo").is_file() {
        return Err(fail(
            recipe,
            format!(
                "the Rust toolchain at {} has no bin/cargo",
                sysroot.display()
            ),
        ));
    }
    let home = scratch.join(CARGO_HOME);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SystemError::Io { path, source }
    };
    std::fs::create_dir(&home).map_err(io(&home))?;
    let config = home.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "# Written by nexus build: crates come from the pinned fetch only.\n\
             [source.crates-io]\nreplace-with = \"nexus-vendored\"\n\n\
             [source.nexus-vendored]\ndirectory = \"{RUN_DIR}/{VENDOR}\"\n\n\
             [net]\noffline = true\n"
        ),
    )
    .map_err(io(&config))?;
    if let Some((uid, gid)) = owner {
        // cargo keeps its locks and caches in CARGO_HOME.
        std::os::unix::fs::chown(&home, Some(uid), Some(gid)).map_err(io(&home))?;
    }
    Ok(CargoKit {
        mounts: vec![
            RunMount {
                source: sysroot,
                name: RUST.into(),
                writable: false,
            },
            RunMount {
                source: vendor,
                name: VENDOR.into(),
                writable: false,
            },
            RunMount {
                source: home,
                name: CARGO_HOME.into(),
                writable: true,
            },
        ],
        path: format!("{RUN_DIR}/{RUST}/bin"),
        cargo_home: format!("{RUN_DIR}/{CARGO_HOME}"),
    })
}
