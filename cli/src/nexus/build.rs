//! `nexus build --profile NAME [-o FILE]`: a generation of exactly a
//! profile's packages, grafted through recipes where the store lacks them,
//! and optionally its signed system image.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use nexus_graft::{AddOptions, ReadOptions, Trust};
use nexus_npk::{ArchiveKind, KeyStore, Member, WriteOptions, write_archive};
use nexus_store::Store;
use nexus_system::fetch::default_cache_dir;
use nexus_system::{BuildOptions, Built, locate};
use serde_json::json;

use crate::epoch::source_date_epoch;
use crate::exit;
use crate::progress::Bar;

/// `nexus build --help`: what the command does, in full.
pub const LONG_ABOUT: &str = "\
Build a system profile into a generation (and a signed image).

Reads profiles/NAME.kdl: the packages of the system, each with a version
constraint, and which version of each App is Current (see
profiles/README.md). A package the store already holds at a version that
fits is reused as it is; every other one is made by its recipe
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

Examples:
  nexus build --profile=core
  nexus build --profile fleet -o fleet.img --key builder --counter 7";

/// `nexus build`'s arguments.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// `rumk`: build the Rumk guest kernel from
    /// recipes/rumk/minimal-rumk.kdl and add it to the live set as
    /// rumk/VERSION (instead of a profile).
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
    /// (default: the current directory).
    #[arg(long, value_name = "DIR", requires = "target")]
    pub source: Option<PathBuf>,

    /// Also write the generation as a signed system image to FILE.
    #[arg(short = 'o', long = "output", value_name = "FILE", requires = "key")]
    pub output: Option<PathBuf>,

    /// The signing key of the image (`nexus key generate NAME`).
    #[arg(long, value_name = "NAME", requires = "output")]
    pub key: Option<String>,

    /// The image's snapshot counter [default: one more than the last
    /// this key signed, as `nexus snapshot`]. Stores refuse to switch to an
    /// image whose counter is lower than one they accepted from the same key.
    #[arg(long, value_name = "N", requires = "output")]
    pub counter: Option<u64>,

    /// Profiles directory [default: `profiles/` of the nearest directory,
    /// from the current one upwards, that has one (the repository)].
    #[arg(long, env = "NEXUS_PROFILES", value_name = "DIR")]
    pub profiles: Option<PathBuf>,

    /// Recipes directory [default: `recipes/` beside the profiles
    /// directory].
    #[arg(long, env = "NEXUS_RECIPES", value_name = "DIR")]
    pub recipes: Option<PathBuf>,

    /// Where Debian packages fetched with `apt-get download` are kept
    /// [default: /var/cache/nexus/debs for root, else
    /// $XDG_CACHE_HOME/nexus/debs].
    #[arg(long, env = "NEXUS_CACHE", value_name = "DIR")]
    pub cache: Option<PathBuf>,

    /// Compressor threads [default: one per core].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,

    /// Print what was built as JSON: {generation, new_generation,
    /// packages: [{spec, current, reused}], image}.
    #[arg(long)]
    pub json: bool,
}

/// The profiles directory when none is given: `profiles/` in the current
/// directory or the nearest parent that has one.
fn find_profiles_dir() -> Result<PathBuf> {
    let cwd = std::env::current_dir().context("reading the current directory")?;
    for dir in cwd.ancestors() {
        let candidate = dir.join("profiles");
        if candidate.is_dir() {
            return Ok(candidate);
        }
    }
    bail!(
        "no profiles/ directory in {} or its parents: give --profiles DIR (and --recipes DIR)",
        cwd.display()
    )
}

/// Runs `nexus build`.
pub fn run(store_dir: &Path, keys_dir: &Path, args: BuildArgs) -> Result<i32> {
    let Some(profile_name) = args.profile.clone() else {
        bail!("nexus build: give --profile NAME (or the target `rumk`)");
    };
    let profiles = match args.profiles {
        Some(p) => p,
        None => find_profiles_dir()?,
    };
    let recipes = match args.recipes {
        Some(r) => r,
        None => profiles
            .parent()
            .map(|p| p.join("recipes"))
            .unwrap_or_else(|| PathBuf::from("recipes")),
    };
    // The signing key is checked before any work.
    let signer = args
        .key
        .as_deref()
        .map(|name| KeyStore::new(keys_dir).secret(name))
        .transpose()?;
    // A bad profile or recipe is a KDL diagnostic: the error reporter
    // renders it with its file, line and the spot underlined.
    let profile = locate::load_profile(&profiles, &profile_name)?;
    let mut store = Store::open(store_dir)
        .with_context(|| format!("opening the store in {}", store_dir.display()))?;
    let options = BuildOptions {
        recipes,
        cache: args.cache.unwrap_or_else(default_cache_dir),
        add: AddOptions {
            threads: args
                .threads
                .map_or(nexus_store::AddOptions::default().threads, |t| t.max(1)),
            read: ReadOptions::default(),
            // A `.npk` recipe must be signed by a key this store trusts.
            trust: Trust::Keys(KeyStore::new(keys_dir).trust_set()?),
            allow_downgrade: false,
        },
    };
    let bar = Bar::for_stderr();
    let result = nexus_system::build(&mut store, &profile, &options, &bar);
    bar.finish();
    let built = result?;
    let image = match (&args.output, &signer) {
        (Some(out), Some(key)) => {
            let counter = KeyStore::new(keys_dir).take_counter(&key.name, args.counter)?;
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
            let written = write_archive(
                &store,
                &members,
                out,
                &WriteOptions {
                    kind: ArchiveKind::Image,
                    counter,
                    created: source_date_epoch()?,
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
