//! Generations: every change to the installed set is a new, numbered
//! generation holding the full package set and each App's `Current` choice.
//! The highest-numbered generation is the live one, so a change becomes
//! visible exactly when its transaction commits.

use std::collections::{BTreeMap, BTreeSet};

pub use crate::catalog::generations::{Member, create, current_in, members_of, require_in};
use crate::catalog::{Catalog, GenerationRow, MemberRow};
use crate::error::{Result, StoreError};

/// Adds `package` to `members`, making it its App's `Current` (installing a
/// version selects it, as in GoboLinux).
pub fn with_added(mut members: Vec<Member>, package: i64, name: &str) -> Vec<Member> {
    members.retain(|m| m.package != package);
    for m in members.iter_mut().filter(|m| m.name == name) {
        m.current = false;
    }
    members.push(Member {
        package,
        name: name.to_string(),
        current: true,
    });
    members
}

/// Removes `package`; if it was its App's `Current`, the most recently added
/// remaining version (highest package id) becomes `Current`.
pub fn with_removed(mut members: Vec<Member>, package: i64) -> Vec<Member> {
    let Some(pos) = members.iter().position(|m| m.package == package) else {
        return members;
    };
    let removed = members.remove(pos);
    if removed.current
        && let Some(next) = members
            .iter_mut()
            .filter(|m| m.name == removed.name)
            .max_by_key(|m| m.package)
    {
        next.current = true;
    }
    members
}

/// True when two member lists describe the same installed state.
pub fn same_state(a: &[Member], b: &[Member]) -> bool {
    let key = |m: &[Member]| {
        let mut v: Vec<(i64, bool)> = m.iter().map(|x| (x.package, x.current)).collect();
        v.sort();
        v
    };
    key(a) == key(b)
}

/// One version of an App, as a diff names it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct VersionRef {
    /// App name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Bytes of its files (as `packages.bytes`).
    pub bytes: u64,
}

/// An App whose `Current` version changed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CurrentMove {
    /// App name.
    pub app: String,
    /// `Current` before.
    pub from: String,
    /// `Current` after.
    pub to: String,
}

/// A size before and after.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SizeChange {
    /// In the first generation.
    pub before: u64,
    /// In the second.
    pub after: u64,
    /// `after - before`.
    pub delta: i64,
}

impl SizeChange {
    fn new(before: u64, after: u64) -> SizeChange {
        SizeChange {
            before,
            after,
            delta: after as i64 - before as i64,
        }
    }
}

/// What changed from one generation to another (as `nix store
/// diff-closures` or `rpm-ostree db diff` tell it).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct GenerationDiff {
    /// The first generation (`None`: the empty state before any).
    pub from: Option<i64>,
    /// The second generation.
    pub to: i64,
    /// Apps with no version in `from` and some in `to`.
    pub apps_added: Vec<String>,
    /// Apps with versions in `from` and none in `to`.
    pub apps_removed: Vec<String>,
    /// Versions in `to` and not in `from` (those of added Apps included).
    pub versions_added: Vec<VersionRef>,
    /// Versions in `from` and not in `to`.
    pub versions_removed: Vec<VersionRef>,
    /// Apps in both whose `Current` version differs.
    pub current_moved: Vec<CurrentMove>,
    /// Bytes of every file of every package (what unpacking would write).
    pub logical_bytes: SizeChange,
    /// Pack bytes of the generations' distinct chunks
    /// ([`Catalog::generation_stored_bytes`]), when asked for.
    pub stored_bytes: Option<SizeChange>,
}

impl GenerationDiff {
    /// True when both generations hold the same versions and `Current`s.
    pub fn is_empty(&self) -> bool {
        self.versions_added.is_empty()
            && self.versions_removed.is_empty()
            && self.current_moved.is_empty()
    }
}

/// Which sizes [`diff`] computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiffSizes {
    /// Logical bytes only: a sum over package rows, cheap for any number of
    /// generations (`nip history`).
    Logical,
    /// Stored bytes too: a walk over both generations' chunks.
    LogicalAndStored,
}

/// The error for a generation that is not (or no longer) in the catalog.
pub(crate) fn missing(generation: i64) -> StoreError {
    StoreError::NotFound(format!(
        "generation {generation} does not exist (or was removed by gc)"
    ))
}

fn members_or_missing(catalog: &Catalog, generation: i64) -> Result<Vec<MemberRow>> {
    if catalog.generation(generation)?.is_none() {
        return Err(missing(generation));
    }
    catalog.members(generation)
}

fn version_ref(m: &MemberRow) -> VersionRef {
    VersionRef {
        name: m.package.name.clone(),
        version: m.package.version.clone(),
        bytes: m.package.bytes.max(0) as u64,
    }
}

/// What changed from generation `from` (or the empty state) to `to`.
pub fn diff(
    catalog: &Catalog,
    from: Option<i64>,
    to: i64,
    sizes: DiffSizes,
) -> Result<GenerationDiff> {
    let before = match from {
        Some(g) => members_or_missing(catalog, g)?,
        None => Vec::new(),
    };
    let after = members_or_missing(catalog, to)?;
    let mut d = compare(from, &before, to, &after);
    if sizes == DiffSizes::LogicalAndStored {
        d.stored_bytes = Some(SizeChange::new(
            match from {
                Some(g) => catalog.generation_stored_bytes(g)?,
                None => 0,
            },
            catalog.generation_stored_bytes(to)?,
        ));
    }
    Ok(d)
}

/// The diff of two member lists, logical sizes only.
fn compare(
    from: Option<i64>,
    before: &[MemberRow],
    to: i64,
    after: &[MemberRow],
) -> GenerationDiff {
    let key = |m: &MemberRow| (m.package.name.clone(), m.package.version.clone());
    let versions = |ms: &[MemberRow]| ms.iter().map(key).collect::<BTreeSet<_>>();
    let (had, has) = (versions(before), versions(after));
    let apps = |ms: &[MemberRow]| {
        ms.iter()
            .map(|m| m.package.name.clone())
            .collect::<BTreeSet<_>>()
    };
    let (apps_before, apps_after) = (apps(before), apps(after));
    let currents = |ms: &[MemberRow]| {
        ms.iter()
            .filter(|m| m.current)
            .map(|m| (m.package.name.clone(), m.package.version.clone()))
            .collect::<BTreeMap<_, _>>()
    };
    let (current_before, current_after) = (currents(before), currents(after));
    let logical = |ms: &[MemberRow]| ms.iter().map(|m| m.package.bytes.max(0) as u64).sum();
    GenerationDiff {
        from,
        to,
        apps_added: apps_after.difference(&apps_before).cloned().collect(),
        apps_removed: apps_before.difference(&apps_after).cloned().collect(),
        versions_added: after
            .iter()
            .filter(|m| !had.contains(&key(m)))
            .map(version_ref)
            .collect(),
        versions_removed: before
            .iter()
            .filter(|m| !has.contains(&key(m)))
            .map(version_ref)
            .collect(),
        current_moved: current_before
            .iter()
            .filter_map(|(app, was)| {
                let now = current_after.get(app)?;
                (now != was).then(|| CurrentMove {
                    app: app.clone(),
                    from: was.clone(),
                    to: now.clone(),
                })
            })
            .collect(),
        logical_bytes: SizeChange::new(logical(before), logical(after)),
        stored_bytes: None,
    }
}

/// Every retained generation, oldest first, with what it changed from
/// the one before it (as [`diff_from_previous`], logical sizes only),
/// reading each generation's packages once.
pub fn history(catalog: &Catalog) -> Result<Vec<(GenerationRow, Option<GenerationDiff>)>> {
    let mut out = Vec::new();
    let mut previous: Option<(i64, Vec<MemberRow>)> = None;
    for g in catalog.generations()? {
        let members = catalog.members(g.id)?;
        let d = match &previous {
            Some((id, before)) => Some(compare(Some(*id), before, g.id, &members)),
            None if g.id == 1 => Some(compare(None, &[], g.id, &members)),
            None => None,
        };
        previous = Some((g.id, members));
        out.push((g, d));
    }
    Ok(out)
}

/// What generation `id` changed from the retained generation before it,
/// or from the empty store for the very first generation (number 1).
/// `None` when gc has removed every generation before `id`: there is
/// nothing left to compare with.
pub fn diff_from_previous(
    catalog: &Catalog,
    id: i64,
    sizes: DiffSizes,
) -> Result<Option<GenerationDiff>> {
    match catalog.previous_generation(id)? {
        Some(previous) => diff(catalog, Some(previous), id, sizes).map(Some),
        None if id == 1 => diff(catalog, None, id, sizes).map(Some),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(package: i64, name: &str, current: bool) -> Member {
        Member {
            package,
            name: name.into(),
            current,
        }
    }

    #[test]
    fn adding_selects_the_new_version() {
        let members = with_added(vec![m(1, "hello", true), m(2, "jq", true)], 3, "hello");
        assert_eq!(
            members,
            vec![m(1, "hello", false), m(2, "jq", true), m(3, "hello", true)]
        );
    }

    #[test]
    fn removing_current_falls_back_to_latest_remaining() {
        let members = vec![
            m(1, "hello", false),
            m(4, "hello", false),
            m(5, "hello", true),
        ];
        let after = with_removed(members, 5);
        assert_eq!(after, vec![m(1, "hello", false), m(4, "hello", true)]);
        let after = with_removed(after, 1);
        assert_eq!(after, vec![m(4, "hello", true)]);
    }

    mod store {
        use std::fs;
        use std::path::Path;

        use crate::error::StoreError;
        use crate::store::{AddDir, AddOptions, NoProgress, Store};

        use super::super::{DiffSizes, diff};

        /// Adds NAME/VERSION holding `files` (name, content).
        fn add(store: &mut Store, root: &Path, name: &str, version: &str, files: &[(&str, &[u8])]) {
            let dir = root.join(format!("src-{name}-{version}"));
            fs::create_dir_all(&dir).unwrap();
            for (file, content) in files {
                fs::write(dir.join(file), content).unwrap();
            }
            let d = AddDir {
                path: dir,
                name: name.into(),
                version: version.into(),
            };
            store
                .add_dirs(&[d], AddOptions::default(), &NoProgress)
                .unwrap();
        }

        fn noise(seed: u8, len: usize) -> Vec<u8> {
            let mut out = vec![0; len];
            blake3::Hasher::new()
                .update(&[seed])
                .finalize_xof()
                .fill(&mut out);
            out
        }

        #[test]
        fn diff_names_apps_versions_current_moves_and_sizes() {
            let tmp = tempfile::tempdir().unwrap();
            let mut store = Store::init(&tmp.path().join("store")).unwrap();
            let big = noise(1, 300_000);
            add(&mut store, tmp.path(), "hello", "1", &[("bin", &big)]); // 1
            add(&mut store, tmp.path(), "curl", "8", &[("bin", b"curl")]); // 2
            let other = noise(2, 100_000);
            // hello/2 shares hello/1's big file and adds another.
            add(
                &mut store,
                tmp.path(),
                "hello",
                "2",
                &[("bin", &big), ("extra", &other)],
            ); // 3
            store.remove(&["curl".to_string()]).unwrap(); // 4
            add(&mut store, tmp.path(), "jq", "1.6", &[("jq", b"jq")]); // 5

            let d = diff(store.catalog(), Some(2), 5, DiffSizes::LogicalAndStored).unwrap();
            assert_eq!(d.apps_added, vec!["jq"]);
            assert_eq!(d.apps_removed, vec!["curl"]);
            let added: Vec<String> = d
                .versions_added
                .iter()
                .map(|v| format!("{}/{}", v.name, v.version))
                .collect();
            assert_eq!(added, vec!["hello/2", "jq/1.6"]);
            let removed: Vec<String> = d
                .versions_removed
                .iter()
                .map(|v| format!("{}/{}", v.name, v.version))
                .collect();
            assert_eq!(removed, vec!["curl/8"]);
            assert_eq!(d.current_moved.len(), 1);
            assert_eq!(
                (
                    d.current_moved[0].app.as_str(),
                    d.current_moved[0].from.as_str(),
                    d.current_moved[0].to.as_str()
                ),
                ("hello", "1", "2")
            );
            assert_eq!(d.logical_bytes.before, 300_000 + 4);
            assert_eq!(d.logical_bytes.after, 300_000 + 400_000 + 2);
            assert_eq!(d.logical_bytes.delta, 400_000 - 2);
            // The shared file is stored once: the stored growth is about the
            // new, incompressible file, not twice the big one.
            let stored = d.stored_bytes.unwrap();
            assert!(
                (95_000..120_000).contains(&stored.delta),
                "stored delta {stored:?}"
            );
            assert!(stored.before >= 300_000, "{stored:?}");

            // Against itself: nothing; from nothing: everything.
            assert!(
                diff(store.catalog(), Some(5), 5, DiffSizes::Logical)
                    .unwrap()
                    .is_empty()
            );
            let first = diff(store.catalog(), None, 1, DiffSizes::Logical).unwrap();
            assert_eq!(first.apps_added, vec!["hello"]);
            assert!(first.stored_bytes.is_none());
            assert!(matches!(
                diff(store.catalog(), Some(99), 5, DiffSizes::Logical),
                Err(StoreError::NotFound(_))
            ));
        }

        #[test]
        fn set_current_flips_reinstates_and_refuses_what_is_not_stored() {
            let tmp = tempfile::tempdir().unwrap();
            let mut store = Store::init(&tmp.path().join("store")).unwrap();
            add(&mut store, tmp.path(), "hello", "1", &[("f", b"1")]);
            add(&mut store, tmp.path(), "hello", "2", &[("f", b"2")]);
            let current = |store: &Store| -> Vec<String> {
                store
                    .catalog()
                    .current_members()
                    .unwrap()
                    .iter()
                    .filter(|m| m.current)
                    .map(|m| m.package.spec())
                    .collect()
            };
            assert_eq!(current(&store), vec!["hello/2"]);

            let change = store.set_current("hello", "1").unwrap();
            assert_eq!(change.previous.as_deref(), Some("2"));
            assert!(!change.reinstated);
            let generation = change.generation.unwrap();
            assert_eq!(current(&store), vec!["hello/1"]);
            let row = store.catalog().generation(generation).unwrap().unwrap();
            assert_eq!(row.action, "current hello/1");

            // Already Current: no new generation.
            let again = store.set_current("hello", "1").unwrap();
            assert_eq!(again.generation, None);
            assert_eq!(
                store.catalog().current_generation().unwrap(),
                Some(generation)
            );

            // A removed version that is still stored comes back.
            store.remove(&["hello/2".to_string()]).unwrap();
            let back = store.set_current("hello", "2").unwrap();
            assert!(back.reinstated);
            assert_eq!(current(&store), vec!["hello/2"]);

            let before = store.catalog().current_generation().unwrap();
            match store.set_current("hello", "3") {
                Err(StoreError::VersionNotStored { stored, .. }) => {
                    assert_eq!(stored, vec!["1", "2"]);
                }
                other => panic!("expected VersionNotStored, got {other:?}"),
            }
            let err = store.set_current("nope", "1").unwrap_err();
            assert_eq!(
                err.to_string(),
                "nope/1 is not stored (no version of nope is stored)"
            );
            assert_eq!(store.catalog().current_generation().unwrap(), before);
        }

        #[test]
        fn pins_name_existing_generations() {
            let tmp = tempfile::tempdir().unwrap();
            let mut store = Store::init(&tmp.path().join("store")).unwrap();
            add(&mut store, tmp.path(), "hello", "1", &[("f", b"1")]);
            assert!(matches!(store.pin(2), Err(StoreError::NotFound(_))));
            assert!(store.pin(1).unwrap());
            assert!(!store.pin(1).unwrap(), "pinning twice");
            let pins = store.catalog().pins().unwrap();
            assert_eq!(pins.len(), 1);
            assert_eq!(pins[0].generation, 1);
            assert!(store.unpin(1).unwrap());
            assert!(store.catalog().pins().unwrap().is_empty());
        }
    }
}
