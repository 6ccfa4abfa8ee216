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

/// Runs `command` from `/` (see the module's documentation) with a umask
/// that leaves what it writes readable to the build user; returns its
/// stdout.
fn output(recipe: &str, mut command: Command) -> Result<String> {
    let shown = format!("{command:?}");
    command.current_dir("/");
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
/// given), and finds the toolchain. `manifest` must be absolute.
pub fn prepare(
    recipe: &str,
    manifest: &Path,
    scratch: &Path,
    owner: Option<(u32, u32)>,
) -> Result<CargoKit> {
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
    output(recipe, command)?;
    let mut command = Command::new("rustc");
    command.args(["--print", "sysroot"]);
    let sysroot = PathBuf::from(output(recipe, command)?.trim());
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

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// Set, for the test run again in a child, to the planted directory.
    const PLANTED: &str = "NEXUS_TEST_PLANTED_ABOVE";

    /// A project under a directory others may write, as `/tmp` is: a
    /// toolchain file planted above it must not choose the cargo and rustc
    /// that root runs, and a cargo configuration planted there must not be
    /// read (this one cannot even parse, so reading it fails the vendoring).
    #[test]
    fn files_planted_above_the_project_choose_nothing() {
        if let Some(above) = std::env::var_os(PLANTED) {
            return prepare_below(Path::new(&above));
        }
        let above = tempfile::tempdir().unwrap();
        let project = above.path().join("project");
        fs::create_dir_all(project.join("src")).unwrap();
        fs::write(project.join("src/lib.rs"), "").unwrap();
        let manifest = project.join("Cargo.toml");
        fs::write(
            &manifest,
            "[package]\nname = \"planted\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
        )
        .unwrap();
        let mut lock = Command::new("cargo");
        lock.args(["generate-lockfile", "--offline", "--manifest-path"])
            .arg(&manifest);
        output("planted", lock).unwrap();

        // The planter's toolchain: its cargo and rustc only leave a mark.
        let planted = above.path().join("toolchain");
        fs::create_dir_all(planted.join("bin")).unwrap();
        for tool in ["cargo", "rustc"] {
            let path = planted.join("bin").join(tool);
            let mark = above.path().join("ran");
            fs::write(
                &path,
                format!("#!/bin/sh\ntouch '{}'\nexit 1\n", mark.display()),
            )
            .unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        }
        fs::write(
            above.path().join("rust-toolchain.toml"),
            format!("[toolchain]\npath = \"{}\"\n", planted.display()),
        )
        .unwrap();
        fs::create_dir(above.path().join(".cargo")).unwrap();
        fs::write(above.path().join(".cargo/config.toml"), "not [ toml").unwrap();

        // `cargo test` sets RUSTUP_TOOLCHAIN for what it runs, and rustup
        // then ignores toolchain files: the vendoring is tried again in a
        // child without it, as root's shell would run `nexus build`.
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "cargo::tests::files_planted_above_the_project_choose_nothing",
                "--test-threads=1",
                "--nocapture",
            ])
            .env(PLANTED, above.path())
            .env_remove("RUSTUP_TOOLCHAIN")
            .output()
            .unwrap();
        assert!(
            child.status.success(),
            "the child found the plants used:\n{}{}",
            String::from_utf8_lossy(&child.stdout),
            String::from_utf8_lossy(&child.stderr)
        );
    }

    /// In the child: vendors the project below `above` and checks that
    /// nothing planted there was used.
    fn prepare_below(above: &Path) {
        let scratch = tempfile::tempdir().unwrap();
        let manifest = above.join("project/Cargo.toml");
        let kit = prepare("planted", &manifest, scratch.path(), None).unwrap();
        assert!(
            !above.join("ran").exists(),
            "root ran the planted toolchain"
        );
        assert!(
            kit.mounts.iter().all(|m| !m.source.starts_with(above)),
            "the sandbox was given the planted toolchain"
        );
    }
}
