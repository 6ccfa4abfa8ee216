//! What `nip tui` shows, read from the catalog in one read transaction:
//! the Apps with their stored versions, the retained generations with
//! what each changed (the summary `nip history` prints) and the pins.

use std::collections::BTreeSet;

use anyhow::Result;
use nexus_store::Store;
use nexus_store::catalog::{Catalog, GenerationRow, PackageRow, PinRow};
use nexus_store::generations::{self, GenerationDiff};
use nexus_store::version;

/// One stored version of an App.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionEntry {
    /// The package.
    pub package: PackageRow,
    /// In the live generation.
    pub installed: bool,
    /// Its App's Current in the live generation.
    pub current: bool,
}

/// One retained generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenerationEntry {
    /// The generation.
    pub row: GenerationRow,
    /// What it changed from the retained generation before it (`None`:
    /// the oldest kept after gc, nothing to compare with).
    pub diff: Option<GenerationDiff>,
    /// `nip gc` keeps it until it is unpinned.
    pub pinned: bool,
}

/// Everything on the screen, as the catalog had it at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Every stored version of every App that some retained generation
    /// holds, by App name, newest version first.
    pub versions: Vec<VersionEntry>,
    /// The retained generations, newest (the live one) first.
    pub generations: Vec<GenerationEntry>,
    /// The pins, by generation.
    pub pins: Vec<PinRow>,
}

impl Snapshot {
    /// Reads everything in one read transaction, so that the parts agree
    /// with each other even while another `nip` commits.
    pub fn load(store: &Store) -> Result<Snapshot> {
        let catalog = store.catalog();
        catalog.begin_read()?;
        let snapshot = read(catalog);
        catalog.end_read()?;
        snapshot
    }

    /// The live generation (the highest number).
    pub fn live(&self) -> Option<&GenerationRow> {
        self.generations.first().map(|g| &g.row)
    }

    /// The retained generation `id`.
    pub fn generation(&self, id: i64) -> Option<&GenerationEntry> {
        self.generations.iter().find(|g| g.row.id == id)
    }

    /// The generation `nip rollback` would restore: the newest retained
    /// one before the generation whose content is live (the one the live
    /// generation restores, if it is a rollback or switch), as the store
    /// chooses it; shown in the confirmation, and checked again by the
    /// store when it acts.
    pub fn rollback_target(&self) -> Option<i64> {
        let live = self.live()?;
        let content = live.restores.unwrap_or(live.id);
        self.generations
            .iter()
            .map(|g| g.row.id)
            .filter(|&id| id < content)
            .max()
    }
}

fn read(catalog: &Catalog) -> Result<Snapshot> {
    let history = generations::history(catalog)?;
    let pins = catalog.pins()?;
    // Every version a retained generation holds was either in the oldest
    // one compared with nothing (diff `None`) or added by some
    // generation's diff: the Apps of all retained generations, without
    // reading each generation's packages a second time.
    let mut apps = BTreeSet::new();
    for (g, d) in &history {
        match d {
            Some(d) => apps.extend(d.versions_added.iter().map(|v| v.name.clone())),
            None => apps.extend(catalog.members(g.id)?.into_iter().map(|m| m.package.name)),
        }
    }
    let live = catalog.current_members()?;
    let mut versions = Vec::new();
    for app in &apps {
        let mut stored = catalog.packages_named(app)?;
        stored.sort_by(|a, b| version::compare(&b.version, &a.version));
        versions.extend(stored.into_iter().map(|package| {
            let member = live.iter().find(|m| m.package.id == package.id);
            VersionEntry {
                installed: member.is_some(),
                current: member.is_some_and(|m| m.current),
                package,
            }
        }));
    }
    let generations = history
        .into_iter()
        .rev()
        .map(|(row, diff)| GenerationEntry {
            pinned: pins.iter().any(|p| p.generation == row.id),
            row,
            diff,
        })
        .collect();
    Ok(Snapshot {
        versions,
        generations,
        pins,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generation(id: i64, restores: Option<i64>) -> GenerationEntry {
        GenerationEntry {
            row: GenerationRow {
                id,
                created: 0,
                action: String::new(),
                restores,
                packages: 0,
            },
            diff: None,
            pinned: false,
        }
    }

    fn snapshot(generations: Vec<GenerationEntry>) -> Snapshot {
        Snapshot {
            generations,
            ..Snapshot::default()
        }
    }

    #[test]
    fn rollback_goes_before_the_live_content() {
        // 5 is a rollback to 3: the next rollback goes before 3, to 2.
        let s = snapshot(vec![
            generation(5, Some(3)),
            generation(4, None),
            generation(3, None),
            generation(2, None),
        ]);
        assert_eq!(s.rollback_target(), Some(2));
        // An ordinary live generation: the one before it.
        let s = snapshot(vec![generation(4, None), generation(2, None)]);
        assert_eq!(s.rollback_target(), Some(2));
        // Nothing retained before: no rollback.
        let s = snapshot(vec![generation(4, Some(1)), generation(3, None)]);
        assert_eq!(s.rollback_target(), None);
        assert_eq!(snapshot(vec![]).rollback_target(), None);
    }
}
