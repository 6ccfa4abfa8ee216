//! Building a profile: resolve each line to a stored package or a recipe,
//! graft what is missing, check the version constraints against what was
//! grafted, and commit a generation of exactly the profile's packages.
//!
//! Which version a line builds is decided before anything is fetched
//! ([`decide`]). A line or recipe that names the version (`= V`,
//! `version`) builds that one, reused if stored. A Debian line that does
//! not builds the highest of apt's candidate (asked of apt's local index
//! for every such line in one call, [`fetch::Candidates`]), if it
//! satisfies the line's constraint, and the stored versions that do: a
//! version stored once does not keep apt's newer candidate (a security
//! update) out of every later build, nor does an older candidate (apt
//! pinning, a stale or rolled-back mirror) move the App back. Only for a
//! package apt's index does not know (a machine with only the cache) is
//! the highest stored version that fits reused without a candidate.
//!
//! Everything is one store transaction (`nexus_graft::add::add_checked`
//! with `Membership::Exactly`): a failed fetch, script or constraint
//! leaves the store as it was.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use nexus_graft::AddOptions;
use nexus_graft::add::{ArchiveRequest, Source, add_checked};
use nexus_store::commit::{ExactSet, Membership, Restrictions, StagedPackage};
use nexus_store::{AddDir, Progress, Store};

use crate::error::{Result, SystemError};
use crate::locate::load_recipe;
use crate::profile::{Entry, Profile};
use crate::recipe::{self, Recipe};
use crate::script::{self, ScriptOptions};
use crate::{fetch, version};
use nexus_graft::package::without_epoch;

/// Where recipes and fetched packages are, and how to graft.
pub struct BuildOptions {
    /// The recipes directory.
    pub recipes: PathBuf,
    /// The cache of Debian packages fetched with apt.
    pub cache: PathBuf,
    /// Grafting options (threads, limits, whose `.npk` signatures count).
    pub add: AddOptions,
    /// How build scripts run, and whether the paths recipes name are
    /// checked ([`crate::trust`]).
    pub script: ScriptOptions,
}

/// One package of the built generation.
#[derive(Clone, Debug)]
pub struct BuiltPackage {
    /// `NAME/VERSION`.
    pub spec: String,
    /// It is its App's `Current`.
    pub current: bool,
    /// It was already in the store and was not fetched or read again.
    pub reused: bool,
}

/// What a build made.
#[derive(Clone, Debug)]
pub struct Built {
    /// The generation holding exactly the profile's packages.
    pub generation: i64,
    /// False when the live generation already was exactly that.
    pub new_generation: bool,
    /// Its packages, by name.
    pub packages: Vec<BuiltPackage>,
}

/// Builds `profile` into `store`.
pub fn build(
    store: &mut Store,
    profile: &Profile,
    options: &BuildOptions,
    progress: &dyn Progress,
) -> Result<Built> {
    // Every recipe is read and checked before any work: a typo costs no
    // download.
    let recipes: Vec<Recipe> = profile
        .entries
        .iter()
        .map(|e| {
            load_recipe(&options.recipes, &e.recipe, options.script.trust).map_err(
                |err| match err {
                    // A recipe that cannot be found is the profile line's
                    // problem: point at the line.
                    SystemError::Recipe(message) => profile
                        .file
                        .error(
                            e.span,
                            message,
                            "no such recipe",
                            Some(format!(
                                "add {}/{}.kdl, or name another recipe with recipe=\"...\"",
                                options.recipes.display(),
                                e.recipe
                            )),
                        )
                        .into(),
                    other => other,
                },
            )
        })
        .collect::<Result<_>>()?;
    for (entry, recipe) in profile.entries.iter().zip(&recipes) {
        check_app(profile, entry, recipe)?;
    }

    // apt's candidate of every line that takes one, from its local index
    // in one call: without it a stored older version would keep a
    // security update out forever (`decide` weighs it against the store).
    let asked: Vec<&str> = profile
        .entries
        .iter()
        .zip(&recipes)
        .filter_map(|(entry, recipe)| takes_candidate(entry, recipe))
        .collect();
    if !asked.is_empty() {
        progress.phase("asking apt for candidates");
    }
    let candidates = fetch::Candidates::query(&asked)?;

    // What the store already has is reused; a fetched or built package
    // needs its source made ready first (scripts first: they fail fastest).
    let mut sources: Vec<Option<Source>> = vec![None; recipes.len()];
    let mut reused = HashSet::new();
    for (i, (entry, recipe)) in profile.entries.iter().zip(&recipes).enumerate() {
        let offer = offer(entry, recipe, &candidates);
        let stored: Vec<Stored> = store
            .catalog()
            .packages_named(&entry.app)?
            .iter()
            .map(Stored::of)
            .collect();
        let kept = |v: &str| stored.iter().find(|s| s.version == v);
        match decide(profile, entry, recipe, &offer, &stored, &reused)? {
            Decision::Reuse(v) => {
                match &offer {
                    Offer::Candidate(c) if !entry.constraint.matches(without_epoch(c)) => {
                        tracing::info!(
                            "{}/{v}: already stored, reused (apt's candidate {c} is outside `{}`)",
                            entry.app,
                            entry.constraint
                        )
                    }
                    // Worth a warning: apt pinning, or a stale or
                    // rolled-back mirror, offers an older version.
                    Offer::Candidate(c) if kept(&v).is_some_and(|s| s.against(c).is_gt()) => {
                        tracing::warn!(
                            "{}/{v}: already stored (as {}), kept: apt's candidate {c} is \
                             older, and a build never moves back (apt pinning, or a stale \
                             mirror?)",
                            entry.app,
                            kept(&v).map_or(v.as_str(), Stored::ordered)
                        )
                    }
                    _ => tracing::info!("{}/{v}: already stored, reused", entry.app),
                }
                reused.insert(format!("{}/{v}", entry.app));
                sources[i] = Some(Source::Stored(entry.app.clone(), v));
            }
            Decision::Make => {
                if let Offer::Candidate(v) = &offer {
                    tracing::info!("{}/{v}: apt's candidate, not stored yet", entry.app);
                }
            }
        }
    }
    let mut scratch = Vec::new(); // build scripts' outputs and fetched .debs, kept until the commit
    let order = (0..recipes.len())
        .filter(|&i| matches!(recipes[i].source, recipe::Source::Script { .. }))
        .chain(
            (0..recipes.len())
                .filter(|&i| !matches!(recipes[i].source, recipe::Source::Script { .. })),
        );
    for i in order.collect::<Vec<_>>() {
        if sources[i].is_none() {
            progress.phase(&format!("preparing {}", recipes[i].name));
            sources[i] = Some(prepare(
                &profile.entries[i].app,
                &recipes[i],
                options,
                &candidates,
                &mut scratch,
            )?);
        }
    }
    let sources: Vec<Source> = sources.into_iter().flatten().collect();

    let membership = Membership::Exactly(ExactSet {
        current: profile.current_pins(),
        action: format!("build profile {}", profile.name),
        // A profile build adds packages as `nip add` does: a restricted
        // recipe takes nothing from what root vouched for.
        restrictions: Restrictions::MostTrusted,
    });
    let accept = |staged: &[StagedPackage]| check_staged(profile, staged);
    let outcome = add_checked(
        store,
        &sources,
        options.add.clone(),
        membership,
        &accept,
        progress,
    )?;
    drop(scratch);
    let (generation, new_generation) = match outcome.generation {
        Some(g) => (g, true),
        // The live generation already was exactly this set.
        None => (
            store
                .catalog()
                .current_generation()?
                .ok_or_else(|| SystemError::Recipe("the store has no generation".into()))?,
            false,
        ),
    };
    let packages = store
        .catalog()
        .members(generation)?
        .into_iter()
        .map(|m| {
            let spec = m.package.spec();
            BuiltPackage {
                reused: reused.contains(&spec),
                current: m.current,
                spec,
            }
        })
        .collect();
    Ok(Built {
        generation,
        new_generation,
        packages,
    })
}

/// What [`add_recipe`] did.
#[derive(Clone, Debug)]
pub struct Added {
    /// `NAME/VERSION` of the recipe's package.
    pub spec: String,
    /// The new generation, or `None` when the live set already held the
    /// package as its App's `Current`.
    pub generation: Option<i64>,
    /// It was already stored: taken as it is, not built again.
    pub reused: bool,
}

/// Makes recipe `name` (under `options.recipes`) and adds its package to
/// the live set as its App's `Current`, leaving every other package where
/// it is (as `nip add`): the way one package, such as the Rumk guest, is
/// built outside a profile. A stored package of the recipe's App and
/// version is taken as it is, as a profile build would.
pub fn add_recipe(
    store: &mut Store,
    name: &str,
    options: &BuildOptions,
    progress: &dyn Progress,
) -> Result<Added> {
    let recipe = load_recipe(&options.recipes, name, options.script.trust)?;
    let app = known_app(&recipe).map(str::to_string);
    let stored = match (&app, &recipe.version) {
        (Some(app), Some(version)) => store
            .catalog()
            .package(app, version)?
            .map(|p| (p.name, p.version)),
        _ => None,
    };
    let mut scratch = Vec::new();
    let reused = stored.is_some();
    let source = match stored {
        Some((app, version)) => Source::Stored(app, version),
        None => {
            progress.phase(&format!("preparing {}", recipe.name));
            prepare(
                app.as_deref().unwrap_or(&recipe.name),
                &recipe,
                options,
                &fetch::Candidates::default(),
                &mut scratch,
            )?
        }
    };
    let spec = std::cell::RefCell::new(String::new());
    let accept = |staged: &[StagedPackage]| match staged {
        [one] => {
            *spec.borrow_mut() = format!("{}/{}", one.name, one.version);
            Ok(())
        }
        _ => Err(format!(
            "recipe `{}` made {} packages, not one",
            recipe.name,
            staged.len()
        )),
    };
    let outcome = add_checked(
        store,
        &[source],
        options.add.clone(),
        Membership::Add,
        &accept,
        progress,
    )?;
    drop(scratch);
    Ok(Added {
        spec: spec.into_inner(),
        generation: outcome.generation,
        reused,
    })
}

/// The App a recipe makes, when known before grafting: its `app`, else a
/// Debian package's name, else (directories, scripts) the recipe's name.
/// A package file's name is only known once read (checked then).
fn known_app(recipe: &Recipe) -> Option<&str> {
    match (&recipe.app, &recipe.source) {
        (Some(app), _) => Some(app),
        (None, recipe::Source::Debian { package, .. }) => Some(package),
        (None, recipe::Source::Dir { .. } | recipe::Source::Script { .. }) => Some(&recipe.name),
        (None, recipe::Source::File { .. }) => None,
    }
}

fn check_app(profile: &Profile, entry: &Entry, recipe: &Recipe) -> Result<()> {
    match known_app(recipe) {
        Some(app) if app != entry.app => Err(profile
            .file
            .error(
                entry.span,
                format!(
                    "recipe `{}` ({}) makes App `{app}`, not `{}`",
                    recipe.name,
                    recipe.file.path.display(),
                    entry.app
                ),
                "wrong recipe?",
                Some(format!(
                    "give the recipe app \"{}\", or name another recipe with recipe=\"...\"",
                    entry.app
                )),
            )
            .into()),
        _ => Ok(()),
    }
}

/// A stored version of an App, as [`decide`] weighs it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stored {
    /// The version it is stored under (`App/VERSION`).
    version: String,
    /// A grafted package's full version, epoch included (kept in its
    /// metadata, dropped from its name); `None` where no epoch is known (a
    /// directory, a script's output, a NAR, a version renamed) or none is
    /// believed (a signer restricted to some Apps wrote the metadata:
    /// [`nexus_graft::package::full_version`]).
    full: Option<String>,
}

impl Stored {
    fn of(package: &nexus_store::catalog::PackageRow) -> Stored {
        Stored {
            version: package.version.clone(),
            full: nexus_graft::package::full_version(package),
        }
    }

    /// How this stored version compares with apt's `candidate`: by full
    /// versions, epochs included, where this one's is known; else by the
    /// names alone (the candidate's epoch dropped), since an unknown epoch
    /// is no evidence of epoch 0.
    fn against(&self, candidate: &str) -> std::cmp::Ordering {
        match &self.full {
            Some(full) => version::compare(full, candidate),
            None => version::compare(&self.version, without_epoch(candidate)),
        }
    }

    /// The version ordered among the stored ones: the full version where
    /// known.
    fn ordered(&self) -> &str {
        self.full.as_deref().unwrap_or(&self.version)
    }
}

/// The version a recipe names for its package: its `version`, else a
/// Debian source's `version="V"` (epoch dropped, as stored).
fn recipe_version(recipe: &Recipe) -> Option<&str> {
    recipe.version.as_deref().or(match &recipe.source {
        recipe::Source::Debian { version, .. } => version.as_deref().map(without_epoch),
        _ => None,
    })
}

/// The Debian package whose candidate decides what a line builds: a
/// Debian recipe's, when neither the line (`= V`) nor the recipe names a
/// version.
fn takes_candidate<'a>(entry: &Entry, recipe: &'a Recipe) -> Option<&'a str> {
    match &recipe.source {
        recipe::Source::Debian { package, .. }
            if recipe_version(recipe).is_none() && entry.constraint.exact().is_none() =>
        {
            Some(package)
        }
        _ => None,
    }
}

/// What a line's source offers, as far as it is known before anything is
/// fetched, read or built: which versions the line may build.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Offer {
    /// The line (`= V`) or the recipe names the version, or apt's index
    /// knows no such package (a machine with only the cache, which builds
    /// as it did): the highest stored version that fits is reused.
    Fitting,
    /// apt's candidate (its full version, epoch included): built unless a
    /// stored version that fits is as high or higher ([`decide`]).
    Candidate(String),
    /// A package file whose version is known only once it is read: it is
    /// read every time (an identical package is found stored by the
    /// commit), so that the file's newer version is never passed over for
    /// a stored older one.
    Unread,
}

fn offer(entry: &Entry, recipe: &Recipe, candidates: &fetch::Candidates) -> Offer {
    if let recipe::Source::File { .. } = recipe.source
        && recipe_version(recipe).is_none()
        && entry.constraint.exact().is_none()
    {
        return Offer::Unread;
    }
    match takes_candidate(entry, recipe).and_then(|package| candidates.version(package)) {
        Some(v) => Offer::Candidate(v),
        None => Offer::Fitting,
    }
}

/// What a line builds, decided before anything is fetched, read or built.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Decision {
    /// This stored version, taken as it is.
    Reuse(String),
    /// What the recipe makes: apt's candidate fetched, a file read, a
    /// directory or a script's output.
    Make,
}

/// What a line builds, given `stored` (the versions the store has of the
/// entry's App). A stored version is eligible if it satisfies the line's
/// constraint and the recipe's version, and no other line of the App pins
/// it with `= V` or took it already.
///
/// With apt's candidate offered, the candidate is eligible too if it
/// satisfies the constraint, and the highest eligible version is built:
/// the candidate (made) only if it is higher than every eligible stored
/// one, else the highest of those (reused). So a stored version older than
/// the candidate does not keep a security update out, a candidate outside
/// the constraint does not push out a stored version inside it, and a
/// candidate older than a stored version that fits (apt pinning, or a
/// stale or rolled-back mirror) never moves the App back: apt itself does
/// not downgrade an installed package unpinned. Versions are compared in
/// Debian's ordering, epochs included: a grafted `.deb`'s epoch is read
/// from its metadata (grafting drops it from the name), so a candidate
/// whose epoch went up is built over a stored version with a higher
/// number. A stored version whose epoch is unknown (a directory, a
/// script's output) or only claimed (metadata a signer restricted to some
/// Apps wrote, which could otherwise hold back every update with a high
/// epoch) is compared by name, the candidate's epoch dropped.
/// Constraints match the stored names, without epochs. Nothing eligible is
/// an error naming the line, the candidate and the constraint, before
/// anything is fetched.
///
/// Otherwise: with a package file unread, the file is read; else the
/// highest eligible stored version is reused, if there is one.
fn decide(
    profile: &Profile,
    entry: &Entry,
    recipe: &Recipe,
    offer: &Offer,
    stored: &[Stored],
    taken: &HashSet<String>,
) -> Result<Decision> {
    let pinned = recipe_version(recipe);
    let highest_stored = stored
        .iter()
        .filter(|s| entry.constraint.matches(&s.version))
        .filter(|s| pinned.is_none_or(|p| p == s.version))
        // Another line of the same App pins this version: leave it to that one.
        .filter(|s| !profile.pinned_by_another_line(entry, &s.version))
        .filter(|s| !taken.contains(&format!("{}/{}", entry.app, s.version)))
        .max_by(|a, b| version::compare(a.ordered(), b.ordered()));
    let candidate = match offer {
        Offer::Unread => return Ok(Decision::Make),
        Offer::Fitting => {
            return Ok(
                highest_stored.map_or(Decision::Make, |s| Decision::Reuse(s.version.clone()))
            );
        }
        Offer::Candidate(c) => c,
    };
    let name = without_epoch(candidate);
    let eligible = entry.constraint.matches(name);
    Ok(match highest_stored {
        // A stored version as high as the candidate (the candidate itself,
        // or a newer one) is kept: never a step back. One stored under
        // the candidate's name is the candidate (one name holds one
        // package).
        Some(s) if !eligible || s.version == name || s.against(candidate).is_ge() => {
            Decision::Reuse(s.version.clone())
        }
        _ if eligible => Decision::Make,
        _ => {
            let (line, _) = profile.file.line_col(entry.span.offset());
            return Err(SystemError::NoEligibleVersion {
                app: entry.app.clone(),
                constraint: entry.constraint.to_string(),
                at: format!("{}:{line}", profile.file.path.display()),
                recipe: entry.recipe.clone(),
                candidate: candidate.clone(),
            });
        }
    })
}

/// What a prepared source grafts from, kept (and removed when dropped)
/// until the commit.
enum Kept {
    Script(#[allow(dead_code)] script::Output),
    Deb(#[allow(dead_code)] fetch::Fetched),
}

/// Makes a recipe's source ready to graft: fetch, check or build it.
fn prepare(
    app: &str,
    recipe: &Recipe,
    options: &BuildOptions,
    candidates: &fetch::Candidates,
    scratch: &mut Vec<Kept>,
) -> Result<Source> {
    let archive = |path: PathBuf| {
        Source::Archive(ArchiveRequest {
            path,
            name: recipe.app.clone(),
            version: recipe.version.clone(),
        })
    };
    let dir = |path: PathBuf| {
        Source::Dir(AddDir {
            path,
            name: app.to_string(),
            // The parser requires a version for directories and scripts.
            version: recipe.version.clone().unwrap_or_default(),
        })
    };
    let exists = |path: &Path| -> Result<()> {
        if path.exists() {
            options.script.trust.check(path)?;
            // Root grafts a `dir` or package file as it is: what a private
            // directory above it keeps from others would reach them
            // through /Programs.
            script::check_named(recipe, path, &options.script.user)?;
            Ok(())
        } else {
            Err(SystemError::Recipe(format!(
                "recipe `{}` ({}): {} does not exist",
                recipe.name,
                recipe.file.path.display(),
                path.display()
            )))
        }
    };
    Ok(match &recipe.source {
        recipe::Source::Debian { package, version } => {
            // A private copy of the pinned bytes, kept until the commit.
            let fetched =
                fetch::fetch_with(&options.cache, package, version.as_deref(), candidates)?;
            let path = fetched.path().to_path_buf();
            scratch.push(Kept::Deb(fetched));
            archive(path)
        }
        recipe::Source::File { format, path } => {
            exists(path)?;
            let is_npk = nexus_graft::npk::looks_like_npk(path)?;
            if is_npk != (format == "npk") {
                return Err(SystemError::Recipe(format!(
                    "recipe `{}` ({}): {} is {}a .npk archive, but the recipe says `{format}`",
                    recipe.name,
                    recipe.file.path.display(),
                    path.display(),
                    if is_npk { "" } else { "not " }
                )));
            }
            archive(path.clone())
        }
        recipe::Source::Dir { path } => {
            exists(path)?;
            dir(path.clone())
        }
        recipe::Source::Script { path, workdir } => {
            exists(workdir)?;
            let output = script::run(recipe, path, workdir, &options.script)?;
            let root = output.root.clone();
            scratch.push(Kept::Script(output));
            dir(root)
        }
    })
}

/// The staged packages must be exactly the profile's: one per line, each
/// of the line's App and within its constraint.
fn check_staged(profile: &Profile, staged: &[StagedPackage]) -> std::result::Result<(), String> {
    let mut by_app: BTreeMap<&str, Vec<&StagedPackage>> = BTreeMap::new();
    for p in staged {
        if !profile.entries.iter().any(|e| e.app == p.name) {
            return Err(format!(
                "{}/{} (from {}) is not in profile `{}`, which lists {}; give its recipe app \"NAME\"",
                p.name,
                p.version,
                p.origin,
                profile.name,
                apps(profile)
            ));
        }
        by_app.entry(&p.name).or_default().push(p);
    }
    for entry in &profile.entries {
        let (line, _) = profile.file.line_col(entry.span.offset());
        let at = format!("{}:{line}", profile.file.path.display());
        let got = by_app.get(entry.app.as_str()).cloned().unwrap_or_default();
        let fits: Vec<&&StagedPackage> = got
            .iter()
            .filter(|p| entry.constraint.matches(&p.version))
            .collect();
        match fits.as_slice() {
            [_] => {}
            [] => {
                let what = got
                    .iter()
                    .map(|p| format!("{}/{} (from {})", p.name, p.version, p.origin))
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(format!(
                    "package `{}` does not satisfy `{}` ({at}, recipe `{}`): grafted {}",
                    entry.app,
                    entry.constraint,
                    entry.recipe,
                    if what.is_empty() {
                        "nothing of that name".into()
                    } else {
                        what
                    }
                ));
            }
            _ => {
                return Err(format!(
                    "package `{}` `{}` ({at}) matches several grafted versions",
                    entry.app, entry.constraint
                ));
            }
        }
    }
    let lines_per_app = |app: &str| profile.entries.iter().filter(|e| e.app == app).count();
    for (app, got) in by_app {
        if got.len() != lines_per_app(app) {
            return Err(format!(
                "{} versions of `{app}` were grafted but profile `{}` lists {}",
                got.len(),
                profile.name,
                lines_per_app(app)
            ));
        }
    }
    Ok(())
}

fn apps(profile: &Profile) -> String {
    let mut names: Vec<&str> = profile.entries.iter().map(|e| e.app.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::SourceFile;
    use nexus_store::tree::Tree;

    fn profile(text: &str) -> Profile {
        Profile::parse(SourceFile::new("profiles/p.kdl", text)).unwrap()
    }

    fn recipe(name: &str, body: &str) -> Recipe {
        let text = format!("recipe \"{name}\" {{\n{body}\n}}\n");
        Recipe::parse(SourceFile::new(format!("recipes/{name}.kdl"), text)).unwrap()
    }

    /// Stored versions: `V` as a directory or a script stores it (no
    /// epoch known), `=V` or `E:V` a package grafted from full version `V`
    /// or `E:V`.
    fn versions(list: &[&str]) -> Vec<Stored> {
        list.iter()
            .map(|v| {
                let full = v.strip_prefix('=').unwrap_or(v);
                Stored {
                    version: without_epoch(full).to_string(),
                    full: (v.starts_with('=') || full.contains(':')).then(|| full.to_string()),
                }
            })
            .collect()
    }

    /// A Debian recipe for package `name`, without a version.
    fn debian(name: &str) -> Recipe {
        recipe(name, &format!("  source \"debian\" \"{name}\""))
    }

    /// `decide` for line `i` of `profile_text` (its recipe `recipe`), with
    /// apt's `candidates` and the `stored` versions, nothing taken.
    fn decide_line(
        profile_text: &str,
        i: usize,
        recipe: &Recipe,
        candidates: &fetch::Candidates,
        stored: &[&str],
    ) -> Result<Decision> {
        let p = profile(profile_text);
        let entry = &p.entries[i];
        let offer = offer(entry, recipe, candidates);
        decide(
            &p,
            entry,
            recipe,
            &offer,
            &versions(stored),
            &HashSet::new(),
        )
    }

    fn reuse(v: &str) -> Option<Decision> {
        Some(Decision::Reuse(v.into()))
    }

    const OPENSSL_ANY: &str = "profile \"p\" {\n  package \"openssl\" \"*\"\n}\n";

    /// apt's candidate newer than every stored version that fits is built.
    /// Once openssl/3.0.11-1 was stored, every later build reused it, since
    /// it fits `*`, and never took apt's security update.
    #[test]
    fn apt_s_newer_candidate_is_built_over_a_stored_older_version() {
        let candidates = fetch::Candidates::answered([
            ("openssl", Some("openssl_3.0.11-1+deb12u1_amd64.deb")),
            (
                "busybox-static",
                Some("busybox-static_1%3a1.35.0-4_amd64.deb"),
            ),
        ]);
        let r = debian("openssl");
        let got = decide_line(OPENSSL_ANY, 0, &r, &candidates, &["3.0.11-1"]);
        assert_eq!(got.ok(), Some(Decision::Make));
        // Nothing stored: the candidate is fetched, as always.
        let got = decide_line(OPENSSL_ANY, 0, &r, &candidates, &[]);
        assert_eq!(got.ok(), Some(Decision::Make));
        // The candidate stored: reused, not fetched again.
        let got = decide_line(
            OPENSSL_ANY,
            0,
            &r,
            &candidates,
            &["3.0.11-1", "3.0.11-1+deb12u1"],
        );
        assert_eq!(got.ok(), reuse("3.0.11-1+deb12u1"));
        // Stored under its version without the epoch, as grafted.
        let got = decide_line(
            "profile \"p\" {\n  package \"busybox-static\" \">= 1.35\"\n}\n",
            0,
            &debian("busybox-static"),
            &candidates,
            &["1.35.0-3", "1.35.0-4"],
        );
        assert_eq!(got.ok(), reuse("1.35.0-4"));
    }

    /// A candidate outside the line's constraint is not eligible: the
    /// highest stored version inside it is reused, not the candidate
    /// fetched and refused.
    #[test]
    fn a_candidate_outside_the_constraint_leaves_the_highest_stored_version_that_fits() {
        let candidates =
            fetch::Candidates::answered([("python3.11", Some("python3.11_3.11.6-1_amd64.deb"))]);
        let got = decide_line(
            "profile \"p\" {\n  package \"python3.11\" \"< 3.11.5\"\n}\n",
            0,
            &debian("python3.11"),
            &candidates,
            &["3.11.1-1", "3.11.2-6", "3.11.7-1"],
        );
        assert_eq!(got.ok(), reuse("3.11.2-6"));
    }

    /// apt's candidate older than a stored version that fits (apt
    /// pinning, a stale or rolled-back mirror) never moves the App back:
    /// the highest eligible version is built, whichever offers it.
    #[test]
    fn a_candidate_older_than_a_stored_version_that_fits_never_moves_it_back() {
        let candidates =
            fetch::Candidates::answered([("openssl", Some("openssl_3.0.11-1_amd64.deb"))]);
        let r = debian("openssl");
        let got = decide_line(
            OPENSSL_ANY,
            0,
            &r,
            &candidates,
            &["3.0.11-1", "3.0.11-1+deb12u1"],
        );
        assert_eq!(got.ok(), reuse("3.0.11-1+deb12u1"));
        let got = decide_line(OPENSSL_ANY, 0, &r, &candidates, &["3.0.11-1+deb12u1"]);
        assert_eq!(got.ok(), reuse("3.0.11-1+deb12u1"));
        // A newer stored version outside the constraint does not count:
        // the candidate, inside it, is built.
        let got = decide_line(
            "profile \"p\" {\n  package \"openssl\" \"< 3.1\"\n}\n",
            0,
            &r,
            &candidates,
            &["3.0.2-1", "3.1.0-1"],
        );
        assert_eq!(got.ok(), Some(Decision::Make));
    }

    /// No eligible version, neither apt's candidate nor a stored one: the
    /// build fails before fetching, naming the line, the candidate and the
    /// constraint.
    #[test]
    fn nothing_eligible_is_an_error_naming_the_line_the_candidate_and_the_constraint() {
        let candidates = fetch::Candidates::answered([("jq", Some("jq_1.5_amd64.deb"))]);
        let text = "profile \"p\" {\n  package \"hello\" \"*\"\n  package \"jq\" \">= 1.6\"\n}\n";
        let err = decide_line(text, 1, &debian("jq"), &candidates, &["1.4", "1.5"])
            .expect_err("nothing eligible");
        assert!(
            matches!(&err, SystemError::NoEligibleVersion { app, constraint, at, recipe, candidate }
                if app == "jq" && constraint == ">= 1.6" && at == "profiles/p.kdl:3"
                    && recipe == "jq" && candidate == "1.5"),
            "{err:?}"
        );
        let message = err.to_string();
        for part in ["`jq`", "`>= 1.6`", "profiles/p.kdl:3", "jq/1.5"] {
            assert!(message.contains(part), "{part} in {message}");
        }
    }

    /// Epochs count, though stored names drop them: a candidate whose
    /// epoch went up (upstream renumbered) is built over a stored version
    /// with a higher number, which it replaces in Debian's ordering; one
    /// stored from a higher epoch is never moved back.
    #[test]
    fn epochs_decide_between_a_candidate_and_stored_versions() {
        let text = "profile \"p\" {\n  package \"tzdata\" \"*\"\n}\n";
        let r = debian("tzdata");
        let renumbered =
            fetch::Candidates::answered([("tzdata", Some("tzdata_1%3a1.0-1_all.deb"))]);
        // Grafted from 2024a-1 (epoch 0): apt's 1:1.0-1 is newer.
        let got = decide_line(text, 0, &r, &renumbered, &["=2024a-1"]);
        assert_eq!(got.ok(), Some(Decision::Make));
        // Stored as 2024a-1 from a directory, no epoch known: compared by
        // name, as before, so a build never steps back to 1.0-1.
        let got = decide_line(text, 0, &r, &renumbered, &["2024a-1"]);
        assert_eq!(got.ok(), reuse("2024a-1"));
        // The candidate itself stored (as 1.0-1): reused.
        let got = decide_line(text, 0, &r, &renumbered, &["=2024a-1", "1:1.0-1"]);
        assert_eq!(got.ok(), reuse("1.0-1"));
        // Stored from epoch 2: apt's epoch-1 candidate is older; kept.
        let got = decide_line(text, 0, &r, &renumbered, &["2:0.5-1"]);
        assert_eq!(got.ok(), reuse("0.5-1"));
        // Without a candidate, the highest stored version in that order.
        let offline = fetch::Candidates::answered([("tzdata", None)]);
        let got = decide_line(text, 0, &r, &offline, &["=2024a-1", "1:1.0-1"]);
        assert_eq!(got.ok(), reuse("1.0-1"));
    }

    /// apt knowing no such package (a machine with only the cache), a
    /// line or recipe naming its version, or a package file: as before.
    #[test]
    fn without_apt_s_candidate_a_line_builds_as_before() {
        let p = profile(
            "profile \"p\" {\n  package \"openssl\" \"*\"\n  package \"hello\" \"= 2.10-3\"\n}\n",
        );
        let [openssl, hello] = [0, 1].map(|i| &p.entries[i]);
        let none = HashSet::new();
        let candidates = fetch::Candidates::answered([
            ("openssl", Some("openssl_3.0.11-1+deb12u1_amd64.deb")),
            ("hello", Some("hello_2.10-4_amd64.deb")),
        ]);
        let decide_with = |entry: &Entry, recipe: &Recipe, c: &fetch::Candidates, s: &[&str]| {
            let offer = offer(entry, recipe, c);
            decide(&p, entry, recipe, &offer, &versions(s), &none).ok()
        };

        // apt knows no such package: the highest stored version that fits.
        let offline = fetch::Candidates::answered([("openssl", None)]);
        let r = debian("openssl");
        assert_eq!(offer(openssl, &r, &offline), Offer::Fitting);
        assert_eq!(
            decide_with(openssl, &r, &offline, &["3.0.11-1", "2.0"]),
            reuse("3.0.11-1")
        );
        assert_eq!(
            decide_with(openssl, &r, &offline, &[]),
            Some(Decision::Make)
        );

        // `= V` on the line, or a version in the recipe: that version,
        // whatever apt's candidate; apt is not even asked.
        let r = debian("hello");
        assert_eq!(takes_candidate(hello, &r), None);
        assert_eq!(
            decide_with(hello, &r, &candidates, &["2.10-3", "2.10-4"]),
            reuse("2.10-3")
        );
        let pinned = recipe(
            "openssl",
            "  source \"debian\" \"openssl\" version=\"3.0.11-1\"",
        );
        assert_eq!(takes_candidate(openssl, &pinned), None);
        assert_eq!(
            decide_with(openssl, &pinned, &candidates, &["3.0.11-1", "3.1"]),
            reuse("3.0.11-1")
        );
        let dir = recipe("openssl", "  source \"dir\" \"tree\"\n  version \"3.0\"");
        assert_eq!(takes_candidate(openssl, &dir), None);
        assert_eq!(
            decide_with(openssl, &dir, &candidates, &["2.9", "3.0"]),
            reuse("3.0")
        );

        // A package file names its version only once read: read again
        // every time, unless the line or the recipe names the version.
        let file = recipe("openssl", "  source \"deb\" \"openssl.deb\"");
        assert_eq!(offer(openssl, &file, &candidates), Offer::Unread);
        assert_eq!(
            decide_with(openssl, &file, &candidates, &["3.0.11-1"]),
            Some(Decision::Make)
        );
        let file_at = recipe(
            "openssl",
            "  source \"deb\" \"openssl.deb\"\n  version \"3.0.11-1\"",
        );
        assert_eq!(
            decide_with(openssl, &file_at, &candidates, &["3.0.11-1", "3.1"]),
            reuse("3.0.11-1")
        );
        let file = recipe("hello", "  source \"deb\" \"hello.deb\"");
        assert_eq!(
            decide_with(hello, &file, &candidates, &["2.10-3"]),
            reuse("2.10-3")
        );

        // A stored version another line already took is not reused twice.
        let taken: HashSet<String> = ["openssl/3.0.11-1+deb12u1".to_string()].into();
        let offer = Offer::Candidate("3.0.11-1+deb12u1".into());
        let r = debian("openssl");
        assert_eq!(
            decide(
                &p,
                openssl,
                &r,
                &offer,
                &versions(&["3.0.11-1+deb12u1"]),
                &taken
            )
            .ok(),
            Some(Decision::Make)
        );
    }

    /// The review's finding: `nexus build` took a stored package's epoch
    /// from its metadata, which for a `.npk` its signer wrote. A signer
    /// trusted only for App `tzdata` shipped tzdata/1.0-1 claiming
    /// `"format":"deb","version":"2:1.0-1"`, and every build kept it over
    /// apt's newer candidate 1:1.1-1 (epoch 2 outranks any epoch 1),
    /// within any constraint: the App's updates held back for good. The
    /// archive goes through the real import (signature, grant, commit);
    /// the decision is the build's own.
    ///
    /// Now a restricted signer's package is ordered by its stored name,
    /// and apt's candidate is built. The same archive under a key trusted
    /// for every App keeps its epoch (that key could sign any version of
    /// any App anyway; a store's packed `.deb` keeps its place in Debian's
    /// order): the stored epoch-2 version is not moved back. And once
    /// root adds the same tree itself, lifting the restriction, the
    /// signer's metadata goes with it.
    #[test]
    fn a_restricted_signer_s_claimed_epoch_never_holds_back_apt_s_candidate() {
        use nexus_graft::{AddOptions, ArchiveRequest, ReadOptions, Trust};
        use nexus_npk::{
            AppPattern, ArchiveKind, KeyStore, Member, Scope, WriteOptions, write_archive,
        };
        use nexus_store::dirs::DirSet;
        use nexus_store::scan::{ScanOptions, SourcePolicy};
        use nexus_store::{AddDir, NoProgress, Store, StoreError};

        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("share/zoneinfo")).unwrap();
        std::fs::write(src.join("share/zoneinfo/UTC"), b"TZif2").unwrap();
        let tzdata = AddDir {
            path: src,
            name: "tzdata".into(),
            version: "1.0-1".into(),
        };

        // The signer's store and archive: its metadata claims epoch 2.
        let mut vendor = Store::init(&dir.path().join("vendor")).unwrap();
        let set = DirSet::scan(std::slice::from_ref(&tzdata), ScanOptions::default()).unwrap();
        vendor
            .add_staged_with(1, &NoProgress, |session| {
                let (mut staged, contents) = set.stage(session, 1, &|_| {})?;
                staged[0].metadata = r#"{"format":"deb","version":"2:1.0-1"}"#.into();
                Ok::<_, StoreError>((staged, contents))
            })
            .unwrap();
        let keys = KeyStore::new(dir.path().join("vendor-keys"));
        keys.generate("vendor").unwrap();
        let npk = dir.path().join("tzdata.npk");
        let member = Member {
            package: &vendor.installed("tzdata/1.0-1").unwrap(),
            current: true,
        };
        let options = WriteOptions {
            kind: ArchiveKind::Package,
            counter: 0,
            created: 0,
            expires: None,
            signer: Some(&keys.secret("vendor").unwrap()),
        };
        write_archive(&vendor, &[member], &npk, &options).unwrap();

        // A host trusting the key for `apps` (none: every App) imports it.
        let import = |name: &str, apps: &[&str]| {
            let host_keys = KeyStore::new(dir.path().join(format!("{name}-keys")));
            let apps = apps.iter().map(|a| AppPattern::parse(a).unwrap()).collect();
            host_keys
                .trust(
                    &keys.public_file("vendor").unwrap(),
                    Scope::Packages { apps },
                )
                .unwrap();
            let mut host = Store::init(&dir.path().join(name)).unwrap();
            let options = AddOptions {
                threads: 1,
                read: ReadOptions::default(),
                trust: Trust::Keys(host_keys.trust_set().unwrap()),
                allow_downgrade: false,
                allow_expired: false,
                source_policy: SourcePolicy::default(),
            };
            let request = ArchiveRequest {
                path: npk.clone(),
                name: None,
                version: None,
            };
            nexus_graft::add(&mut host, &[Source::Archive(request)], options, &NoProgress).unwrap();
            host
        };
        let text = "profile \"p\" {\n  package \"tzdata\" \">= 1.0\"\n}\n";
        let p = profile(text);
        let r = debian("tzdata");
        let candidates =
            fetch::Candidates::answered([("tzdata", Some("tzdata_1%3a1.1-1_all.deb"))]);
        let decide_in = |store: &Store| {
            let stored: Vec<Stored> = store
                .catalog()
                .packages_named("tzdata")
                .unwrap()
                .iter()
                .map(Stored::of)
                .collect();
            let offer = offer(&p.entries[0], &r, &candidates);
            decide(&p, &p.entries[0], &r, &offer, &stored, &HashSet::new()).unwrap()
        };

        let mut restricted = import("restricted", &["tz*"]);
        let row = restricted.installed("tzdata/1.0-1").unwrap();
        assert_eq!(row.restricted_to.as_deref(), Some("tz*"));
        assert_eq!(
            decide_in(&restricted),
            Decision::Make,
            "the claimed epoch held back apt's candidate"
        );

        let unrestricted = import("unrestricted", &[]);
        assert_eq!(
            unrestricted
                .installed("tzdata/1.0-1")
                .unwrap()
                .restricted_to,
            None
        );
        assert_eq!(decide_in(&unrestricted), Decision::Reuse("1.0-1".into()));

        // Root adds the same tree: the restriction is lifted, and the
        // signer's claim is no longer the package's metadata.
        restricted
            .add_dirs(&[tzdata], nexus_store::AddOptions::default(), &NoProgress)
            .unwrap();
        let row = restricted.installed("tzdata/1.0-1").unwrap();
        assert_eq!(row.restricted_to, None);
        assert_eq!(
            decide_in(&restricted),
            Decision::Make,
            "the signer's claim outlived its restriction"
        );
        assert!(row.origin.starts_with("dir:"), "{}", row.origin);
    }

    fn staged(spec: &str) -> StagedPackage {
        let (name, version) = spec.split_once('/').unwrap();
        StagedPackage {
            name: name.into(),
            version: version.into(),
            origin: format!("deb:/cache/{name}.deb"),
            metadata: "{}".into(),
            tree: Tree::default(),
            restricted_to: None,
        }
    }

    #[test]
    fn staged_packages_must_be_the_profile() {
        let p = profile(
            "profile \"p\" {\n  package \"hello\" \"= 2.10-3\" current=#true\n  package \"hello\" \"= 2.10-6\"\n  package \"jq\" \">= 1.6\"\n}\n",
        );
        let ok = [
            staged("hello/2.10-3"),
            staged("hello/2.10-6"),
            staged("jq/1.6-2.1"),
        ];
        assert_eq!(check_staged(&p, &ok), Ok(()));

        let old_jq = [
            staged("hello/2.10-3"),
            staged("hello/2.10-6"),
            staged("jq/1.5"),
        ];
        let err = check_staged(&p, &old_jq).unwrap_err();
        assert!(
            err.contains("package `jq` does not satisfy `>= 1.6`"),
            "{err}"
        );
        assert!(
            err.contains("profiles/p.kdl:4") && err.contains("jq/1.5 (from deb:/cache/jq.deb)"),
            "{err}"
        );

        let stranger = [
            staged("hello/2.10-3"),
            staged("hello/2.10-6"),
            staged("jq/1.6"),
            staged("sed/4.9"),
        ];
        let err = check_staged(&p, &stranger).unwrap_err();
        assert!(
            err.contains("sed/4.9") && err.contains("not in profile `p`"),
            "{err}"
        );

        let missing = [staged("hello/2.10-3"), staged("jq/1.6")];
        let err = check_staged(&p, &missing).unwrap_err();
        assert!(err.contains("does not satisfy `= 2.10-6`"), "{err}");
    }
}
