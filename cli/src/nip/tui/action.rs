//! The changes `nip tui` can make: each is one nip command, run through
//! the same function as that command, after a confirmation that says
//! exactly what will happen.

use std::path::Path;

use anyhow::{Context, Result};
use nexus_store::Store;
use nexus_store::generations::{DiffSizes, diff};

use super::snapshot::Snapshot;
use crate::generations::{generation_made, roll_back, switch_to_generation};
use crate::human::diff_summary;
use crate::nip::pins::{current_change_text, make_current, pin_change_text, set_pinned};

/// One change, with what it acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// `nip switch GEN`.
    Switch {
        /// The generation whose package set comes back.
        generation: i64,
    },
    /// `nip rollback`.
    Rollback {
        /// The generation it restores (as the snapshot tells it).
        to: i64,
    },
    /// `nip pin GEN` (`pinned`) or `nip unpin GEN`.
    Pin {
        /// The generation.
        generation: i64,
        /// Pin, or unpin.
        pinned: bool,
    },
    /// `nip current APP VERSION`.
    Current {
        /// The App.
        app: String,
        /// The stored version to make Current.
        version: String,
    },
}

impl Action {
    /// The nip command that does the same.
    pub fn command_line(&self) -> String {
        match self {
            Action::Switch { generation } => format!("nip switch {generation}"),
            Action::Rollback { .. } => "nip rollback".to_string(),
            Action::Pin {
                generation,
                pinned: true,
            } => format!("nip pin {generation}"),
            Action::Pin {
                generation,
                pinned: false,
            } => format!("nip unpin {generation}"),
            Action::Current { app, version } => format!("nip current {app} {version}"),
        }
    }

    /// The question asked before acting: what will happen, in full.
    pub fn question(&self, store: &Store, snapshot: &Snapshot) -> Result<Vec<String>> {
        let mut lines = Vec::new();
        match self {
            Action::Switch { generation } => {
                lines.push(format!("Switch to generation {generation}?"));
                lines.push(format!(
                    "A new generation gets the packages and Current choices of generation {generation}."
                ));
                lines.push(changes_from_live(store, snapshot, *generation)?);
            }
            Action::Rollback { to } => {
                lines.push("Roll back?".to_string());
                lines.push(format!(
                    "A new generation gets the packages and Current choices of generation {to}, the one before the live content."
                ));
                lines.push(changes_from_live(store, snapshot, *to)?);
            }
            Action::Pin {
                generation,
                pinned: true,
            } => {
                lines.push(format!("Pin generation {generation}?"));
                lines.push(
                    "`nip gc` will keep it, and everything it holds, until it is unpinned."
                        .to_string(),
                );
            }
            Action::Pin {
                generation,
                pinned: false,
            } => {
                lines.push(format!("Unpin generation {generation}?"));
                lines.push(
                    "`nip gc` may then collect it, as its --keep and --older-than rules decide."
                        .to_string(),
                );
            }
            Action::Current { app, version } => {
                lines.push(format!("Make {app}/{version} Current?"));
                let entries = || snapshot.versions.iter().filter(|v| v.package.name == *app);
                let now = entries().find(|v| v.current).map(|v| &v.package.version);
                lines.push(match now {
                    Some(now) => format!(
                        "A new generation in which {app}'s Current is {version} instead of {now}."
                    ),
                    None => format!("A new generation in which {app}'s Current is {version}."),
                });
                let installed = entries().any(|v| v.package.version == *version && v.installed);
                if !installed {
                    lines.push(format!(
                        "{app}/{version} is stored but not installed: it comes back into the installed set."
                    ));
                }
            }
        }
        lines.push(String::new());
        lines.push(format!("Same as: {}", self.command_line()));
        Ok(lines)
    }

    /// Acts, through the function the nip command calls; returns what the
    /// command prints.
    pub fn perform(&self, dir: &Path) -> Result<String> {
        Ok(match self {
            Action::Switch { generation } => {
                generation_made(&switch_to_generation(dir, *generation)?)
            }
            Action::Rollback { .. } => generation_made(&roll_back(dir)?),
            Action::Pin { generation, pinned } => {
                let changed = set_pinned(dir, *generation, *pinned)?;
                pin_change_text(*generation, *pinned, changed)
            }
            Action::Current { app, version } => {
                let change = make_current(dir, app, version)?;
                current_change_text(app, version, &change)
            }
        })
    }
}

/// What making generation `target`'s content live changes, as `nip
/// history` would summarise the new generation.
fn changes_from_live(store: &Store, snapshot: &Snapshot, target: i64) -> Result<String> {
    let live = snapshot
        .live()
        .context("the store has no generations yet")?
        .id;
    let d = diff(store.catalog(), Some(live), target, DiffSizes::Logical)?;
    Ok(if d.is_empty() {
        format!("Nothing changes: generation {target} holds what is live (generation {live}).")
    } else {
        format!(
            "Changes from the live generation {live}: {}",
            diff_summary(&d)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_action_is_a_nip_command() {
        let cases = [
            (Action::Switch { generation: 3 }, "nip switch 3"),
            (Action::Rollback { to: 2 }, "nip rollback"),
            (
                Action::Pin {
                    generation: 4,
                    pinned: true,
                },
                "nip pin 4",
            ),
            (
                Action::Pin {
                    generation: 4,
                    pinned: false,
                },
                "nip unpin 4",
            ),
            (
                Action::Current {
                    app: "hello".into(),
                    version: "1.0".into(),
                },
                "nip current hello 1.0",
            ),
        ];
        for (action, line) in cases {
            assert_eq!(action.command_line(), line);
        }
    }
}
