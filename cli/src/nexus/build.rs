//! `nexus build --profile NAME [-o FILE]`: a generation of exactly a
//! profile's packages, grafted through recipes where the store lacks them,
//! and optionally its signed system image.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use nexus_graft::{AddOptions, ReadOptions, Trust as KeyTrust};
use nexus_npk::{ArchiveKind, CounterRequest, KeyStore, Member, WriteOptions, write_archive};

use nexus_system::fetch::default_cache_dir;
use nexus_system::sandbox::BuildUser;
use nexus_system::script::ScriptOptions;
use nexus_system::trust::{self, Trust, euid};
use nexus_system::{BuildOptions, Built, locate};
use serde_json::json;

use crate::epoch::{ExpiresIn, source_date_epoch};
use crate::exit;
use crate::progress::Bar;

/// `nexus build --help`: what the command does, in full.
pub const LONG_ABOUT: &str = "\
Build a system profile into a generation (and a signed image).

Reads profiles/NAME.kdl: the packages of the system, each with a version
constraint, and which version of each App is Current (see
profiles/README.md). A line builds the version it or its recipe pins;
with none, a Debian package's is the highest of apt's candidate (asked
of apt's local index, once for the whole build) and the stored versions,
among those that satisfy the line's constraint: never an older version
merely because the store holds it, nor an older candidate over a newer
stored version; a package file's is the one the file holds (read every
time). A package the store already holds at that version is reused
as it is (for a package apt's index does not know, the highest stored
version that fits); every other one is made by its recipe
(recipes/**/RECIPE.kdl, see recipes/README.md): a Debian package fetched
with `apt-get download` into the cache, a package file, a directory, or
a build script. Each grafted package's version is checked against its
constraint before anything is committed; then one transaction makes a
generation holding exactly the profile's packages: what was live before
and is not in the profile is no longer in /Programs (`nip rollback`
brings it back).

With -o FILE, the generation is also written as a system image signed
with --key, exactly as `nexus snapshot` would write it (verify it with
`nexus verify`, make it another machine's system with `nexus switch
FILE`). SOURCE_DATE_EPOCH, when set, is the image's creation time, so the
same generation, key and --counter give the same bytes.

A bad profile or recipe is reported with its file, line and the spot
underlined; nothing is fetched or stored then.

Where profiles and recipes come from: --profiles DIR and --recipes DIR
(recipes default to recipes/ beside the profiles). Without --profiles,
root takes /etc/nexus/profiles, else /usr/share/nexus/profiles: root never
searches the current directory or its parents, where anyone able to write
an ancestor (as /tmp) could plant a profile that replaces the system. Any
other user gets profiles/ of the current directory or its nearest parent
that has one, searching only through directories that user or root owns
and no one else may write. As root, a directory (or a file or directory on
the way to it) that another user owns or may write is refused, unless
--trust-dirs says the caller vouches for it.

Build scripts run sandboxed: as an unprivileged build user (--build-user;
as root, the `nexusbld` account if it exists, else a uid of the build's
own that no account or process has), in new mount,
pid, network, IPC and UTS namespaces, with no network, the host file
system read-only, their sources read-only and only $NEXUS_OUT and a
private /tmp writable. What they output is imported owned by root,
without setuid/setgid bits or file capabilities unless the recipe
declares the path `privileged` (see recipes/README.md).

Examples:
  nexus build --profile=core
  nexus build --profile fleet -o fleet.img --key builder --counter 7";

/// `nexus build`'s arguments.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// `rumk`: build the Rumk guest kernel from its recipe
    /// (recipes/rumk/minimal-rumk.kdl) and add it to the live set as
    /// rumk/VERSION (instead of a profile); a stored rumk/VERSION is
    /// taken as it is.
    #[arg(
        value_name = "TARGET",
        required_unless_present = "profile",
        conflicts_with = "profile"
    )]
    pub target: Option<String>,

    /// The profile: profiles/NAME.kdl.
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,

    /// With `rumk`: the Nexus source tree holding recipes/ and rumk/
    /// (its recipes are SOURCE/recipes) [default: as --recipes].
    #[arg(long, value_name = "DIR", requires = "target")]
    pub source: Option<PathBuf>,

    /// Also write the generation as a signed system image to FILE.
    #[arg(short = 'o', long = "output", value_name = "FILE", requires = "key")]
    pub output: Option<PathBuf>,

    /// The signing key of the image (`nexus key generate NAME`).
    #[arg(long, value_name = "NAME", requires = "output")]
    pub key: Option<String>,

    /// The image's snapshot counter [default: one more than the last
    /// this key signed, as `nexus snapshot`]. Stores refuse an image whose
    /// counter is lower than one they accepted in its trust domain.
    #[arg(long, value_name = "N", requires = "output")]
    pub counter: Option<u64>,

    /// Sign with --counter even if the key has signed that counter or a
    /// higher one (re-signing an old state on purpose).
    #[arg(long, requires = "counter")]
    pub force_counter: bool,

    /// How long the image's signature vouches for it, as `nexus snapshot
    /// --expires-in`.
    #[arg(long, value_name = "DURATION", default_value = crate::epoch::IMAGE_LIFETIME,
          value_parser = ExpiresIn::parse)]
    pub expires_in: ExpiresIn,

    /// Profiles directory [default for root: /etc/nexus/profiles, else
    /// /usr/share/nexus/profiles; for other users: `profiles/` of the
    /// nearest directory, from the current one upwards through directories
    /// only they or root can write, that has one].
    #[arg(long, env = "NEXUS_PROFILES", value_name = "DIR")]
    pub profiles: Option<PathBuf>,

    /// Recipes directory [default: `recipes/` beside the profiles
    /// directory; with `rumk`: SOURCE/recipes, else as for profiles].
    #[arg(long, env = "NEXUS_RECIPES", value_name = "DIR")]
    pub recipes: Option<PathBuf>,

    /// As root, build from the profiles, recipes and sources named even if
    /// another user owns them or could write them (or a directory on the
    /// way to them). Without it such directories are refused.
    #[arg(long)]
    pub trust_dirs: bool,

    /// The user build scripts run as when nexus runs as root: USER, UID,
    /// USER:GROUP or UID:GID, never root [default: the `nexusbld` account
    /// if it exists, else a uid from 1314390016 that no account or running
    /// process has, one per build]. Another user's build runs as that user,
    /// in a user namespace of its own.
    #[arg(long, value_name = "USER")]
    pub build_user: Option<String>,

    /// Where Debian packages fetched with `apt-get download` are kept
    /// [default: /var/cache/nexus/debs for root, else
    /// $XDG_CACHE_HOME/nexus/debs].
    #[arg(long, env = "NEXUS_CACHE", value_name = "DIR")]
    pub cache: Option<PathBuf>,

    /// Compressor threads [default: one per core].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,

    /// Print what was built as JSON: {profile, generation, new_generation,
    /// packages: [{spec, current, reused}], image}; with `rumk`: {spec,
    /// generation, reused}.
    #[arg(long)]
    pub json: bool,
}

/// A directory a build reads from, and how it was chosen.
pub struct Located {
    /// The directory.
    pub dir: PathBuf,
    /// Whether what is read from it is checked.
    pub trust: Trust,
}

/// How a directory the caller named is trusted: as root, checked unless
/// `--trust-dirs`; another user's own choice is theirs.
fn named(dir: PathBuf, trust_dirs: bool) -> Located {
    let caller = euid();
    let trust = if caller == 0 && !trust_dirs {
        Trust::Checked { caller }
    } else {
        Trust::Vouched
    };
    Located { dir, trust }
}

/// A directory nobody named: root's built-in ones, or (not as root) `name`
/// found upwards from the current directory through safe directories.
fn default_dir(name: &str, builtin: &[&str], flag: &str) -> Result<Located> {
    let caller = euid();
    let checked = Trust::Checked { caller };
    if caller == 0 {
        return match trust::first_existing(builtin) {
            Some(dir) => Ok(Located {
                dir,
                trust: checked,
            }),
            None => bail!(
                "no {name} directory: as root, nexus build reads only {} or the directory {flag} names (it does not search the current directory's parents)",
                builtin.join(" or ")
            ),
        };
    }
    let cwd = std::env::current_dir().context("reading the current directory")?;
    match trust::find_upwards(&cwd, name, caller) {
        Some(dir) => Ok(Located {
            dir,
            trust: checked,
        }),
        None => bail!(
            "no {name}/ directory in {} or its parents that only you or root can write: give {flag}",
            cwd.display()
        ),
    }
}

/// Checks a located directory; the error says how to vouch for it.
fn checked(located: &Located) -> Result<()> {
    located.trust.check(&located.dir).map_err(|e| {
        anyhow::anyhow!(
            "refusing {}: {e}; another user could replace what is built from it (give --trust-dirs to build from it anyway)",
            located.dir.display()
        )
    })
}

/// The profiles and recipes directories of a profile build.
fn profile_dirs(args: &BuildArgs) -> Result<(Located, Located)> {
    let profiles = match &args.profiles {
        Some(p) => named(p.clone(), args.trust_dirs),
        None => default_dir("profiles", trust::BUILTIN_PROFILES, "--profiles DIR")?,
    };
    let recipes = match &args.recipes {
        Some(r) => named(r.clone(), args.trust_dirs),
        None => Located {
            dir: profiles
                .dir
                .parent()
                .map(|p| p.join("recipes"))
                .unwrap_or_else(|| PathBuf::from("recipes")),
            trust: profiles.trust,
        },
    };
    checked(&profiles)?;
    if recipes.dir.exists() {
        checked(&recipes)?;
    }
    Ok((profiles, recipes))
}

/// The recipes directory of `nexus build rumk`: --recipes, SOURCE/recipes,
/// else the default.
pub fn rumk_recipes_dir(args: &BuildArgs) -> Result<Located> {
    let located = match (&args.recipes, &args.source) {
        (Some(r), _) => named(r.clone(), args.trust_dirs),
        (None, Some(s)) => named(s.join("recipes"), args.trust_dirs),
        (None, None) => default_dir("recipes", trust::BUILTIN_RECIPES, "--source DIR")?,
    };
    checked(&located)?;
    Ok(located)
}

/// Build options shared by profiles and single recipes.
pub fn build_options(keys_dir: &Path, args: &BuildArgs, recipes: &Located) -> Result<BuildOptions> {
    let user = match &args.build_user {
        Some(spec) => BuildUser::parse(spec)?,
        None => BuildUser::default_user()?,
    };
    Ok(BuildOptions {
        recipes: recipes.dir.clone(),
        cache: args.cache.clone().unwrap_or_else(default_cache_dir),
        add: AddOptions {
            threads: args
                .threads
                .map_or(nexus_store::AddOptions::default().threads, |t| t.max(1)),
            read: ReadOptions::default(),
            // A `.npk` recipe must be signed by a key this store trusts.
            trust: KeyTrust::Keys(KeyStore::new(keys_dir).trust_set()?),
            allow_downgrade: false,
            allow_expired: false,
            source_policy: Default::default(),
        },
        script: ScriptOptions {
            user,
            trust: recipes.trust,
        },
    })
}

/// Runs `nexus build`.
pub fn run(store_dir: &Path, keys_dir: &Path, args: BuildArgs) -> Result<i32> {
    let Some(profile_name) = args.profile.clone() else {
        bail!("nexus build: give --profile NAME (or the target `rumk`)");
    };
    let (profiles, recipes) = profile_dirs(&args)?;
    // The signing key is checked before any work.
    let signer = args
        .key
        .as_deref()
        .map(|name| KeyStore::new(keys_dir).secret(name))
        .transpose()?;
    // A bad profile or recipe is a KDL diagnostic: the error reporter
    // renders it with its file, line and the spot underlined.
    let profile = locate::load_profile(&profiles.dir, &profile_name, profiles.trust)?;
    let options = build_options(keys_dir, &args, &recipes)?;
    let mut store = crate::open::open_store(store_dir)?;
    let bar = Bar::for_stderr();
    let result = nexus_system::build(&mut store, &profile, &options, &bar);
    bar.finish();
    let built = result?;
    let image = match (&args.output, &signer) {
        (Some(out), Some(key)) => {
            let counter = KeyStore::new(keys_dir).take_counter(
                &key.name,
                CounterRequest::new(args.counter, args.force_counter),
            )?;
            let mut members = store.catalog().members(built.generation)?;
            // Deterministic order, whatever the catalog's (as nexus snapshot).
            members.sort_by(|a, b| {
                (&a.package.name, &a.package.version).cmp(&(&b.package.name, &b.package.version))
            });
            let members: Vec<Member<'_>> = members
                .iter()
                .map(|m| Member {
                    package: &m.package,
                    current: m.current,
                })
                .collect();
            let created = source_date_epoch()?;
            let written = write_archive(
                &store,
                &members,
                out,
                &WriteOptions {
                    kind: ArchiveKind::Image,
                    counter,
                    created,
                    expires: args.expires_in.expires(created),
                    signer: Some(key),
                },
            )
            .with_context(|| format!("writing the image {}", out.display()))?;
            Some((out, written, key.public().id(), key.name.clone(), counter))
        }
        _ => None,
    };
    if args.json {
        let packages: Vec<_> = built
            .packages
            .iter()
            .map(|p| json!({"spec": p.spec, "current": p.current, "reused": p.reused}))
            .collect();
        let image = image.as_ref().map(|(out, w, id, _, counter)| {
            json!({"path": out, "bytes": w.bytes, "key": id, "counter": counter})
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "profile": profile.name,
                "generation": built.generation,
                "new_generation": built.new_generation,
                "packages": packages,
                "image": image,
            }))?
        );
    } else {
        print_built(&profile.name, &built);
        if let Some((out, w, id, name, counter)) = &image {
            println!(
                "{}: system image, {}, signed by {id} ({name}), counter {counter}",
                out.display(),
                crate::human::size(w.bytes)
            );
        }
    }
    Ok(exit::OK)
}

fn print_built(profile: &str, built: &Built) {
    for p in &built.packages {
        let mut notes = Vec::new();
        if p.current {
            notes.push("Current");
        }
        notes.push(if p.reused { "reused" } else { "grafted" });
        println!("  {:<40} {}", p.spec, notes.join(", "));
    }
    let reused = built.packages.iter().filter(|p| p.reused).count();
    let what = if built.new_generation {
        "generation"
    } else {
        "already live: generation"
    };
    println!(
        "profile {profile}: {} packages ({reused} reused); {what} {}",
        built.packages.len(),
        built.generation
    );
}
