//! Man pages and shell completions of `nip` and `nexus`, generated from
//! their clap definitions (so they never drift from `--help`). Packaging
//! runs this through the `nexus-docs` binary; nothing generates them at
//! build time.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

/// The commands documented, by binary name.
fn commands() -> [clap::Command; 2] {
    [crate::nip::Cli::command(), crate::nexus::Cli::command()]
}

/// Where each shell looks for a command's completion script, relative to
/// the output directory, in the layout Debian's packages use under
/// `/usr/share`.
fn completion_path(shell: Shell, name: &str) -> Option<PathBuf> {
    match shell {
        Shell::Bash => Some(PathBuf::from("bash-completion/completions").join(name)),
        Shell::Zsh => Some(PathBuf::from("zsh/vendor-completions").join(format!("_{name}"))),
        Shell::Fish => {
            Some(PathBuf::from("fish/vendor_completions.d").join(format!("{name}.fish")))
        }
        _ => None,
    }
}

/// Writes `man/man1/*.1` (one page per command and subcommand: `nip.1`,
/// `nip-add.1`, `nexus-key-generate.1`...) and the bash, zsh and fish
/// completions under `out`, laid out as under `/usr/share`. Returns the
/// files written, sorted.
pub fn generate(out: &Path) -> Result<Vec<PathBuf>> {
    let man = out.join("man/man1");
    fs::create_dir_all(&man).with_context(|| format!("creating {}", man.display()))?;
    let mut written = Vec::new();
    for command in commands() {
        let name = command.get_name().to_string();
        clap_mangen::generate_to(command.clone(), &man)
            .with_context(|| format!("writing the man pages of {name} to {}", man.display()))?;
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let Some(relative) = completion_path(shell, &name) else {
                continue;
            };
            let path = out.join(relative);
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command.clone(), &name, &mut script);
            File::create(&path)
                .and_then(|mut f| f.write_all(&script))
                .with_context(|| format!("writing {}", path.display()))?;
            written.push(path);
        }
    }
    for entry in fs::read_dir(&man).with_context(|| format!("listing {}", man.display()))? {
        written.push(entry?.path());
    }
    written.sort();
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_lines_are_consistent() {
        // clap's own checks (duplicate flags, a global --config beside the
        // `config` subcommand...), which otherwise only run when a command
        // line is parsed.
        for command in commands() {
            command.debug_assert();
        }
    }

    #[test]
    fn every_command_gets_a_page_and_every_shell_a_script() {
        let dir = tempfile::tempdir().unwrap();
        let files = generate(dir.path()).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|p| {
                p.strip_prefix(dir.path())
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        for expected in [
            "man/man1/nip.1",
            "man/man1/nip-add.1",
            "man/man1/nip-key-generate.1",
            "man/man1/nip-config-show.1",
            "man/man1/nexus.1",
            "man/man1/nexus-mount.1",
            "man/man1/nexus-switch.1",
            "bash-completion/completions/nip",
            "bash-completion/completions/nexus",
            "zsh/vendor-completions/_nip",
            "fish/vendor_completions.d/nexus.fish",
        ] {
            assert!(
                names.iter().any(|n| n == expected),
                "{expected} missing from {names:?}"
            );
        }
        // The pages carry the --help text, not just the synopsis.
        let page = fs::read_to_string(dir.path().join("man/man1/nip-add.1")).unwrap();
        assert!(page.contains("App/Version"), "{page}");
        let nexus = fs::read_to_string(dir.path().join("man/man1/nexus.1")).unwrap();
        assert!(nexus.contains("Exit codes"), "{nexus}");
        // The completion scripts know the subcommands and their flags.
        let bash = fs::read_to_string(dir.path().join("bash-completion/completions/nip")).unwrap();
        assert!(
            bash.contains("rollback") && bash.contains("--json"),
            "{bash}"
        );
        let fish =
            fs::read_to_string(dir.path().join("fish/vendor_completions.d/nexus.fish")).unwrap();
        assert!(fish.contains("snapshot"), "{fish}");
    }
}
