//! `nip remote`, `nip publish`, `nip pull` and `nip prefetch`: one store
//! published to object storage or a mirror, pulled by other hosts whose
//! mounts fetch file contents on first read (`nexus_remote`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use nexus_npk::{KeyStore, Scope, TrustSet};
use nexus_remote::cache::{DiskCache, Usage};
use nexus_remote::prefetch::prefetch;
use nexus_remote::publish::{PublishOptions, publish};
use nexus_remote::pull::{PullOptions, pull};
use nexus_remote::{Location, RemoteSettings, endpoint_of};
use nexus_store::Store;
use nexus_store::catalog::{NewRemote, RemoteRow};
use nexus_store::names::parse_spec;
use serde_json::json;

use super::parse_size;
use crate::config::{Remote as FileRemote, Settings};
use crate::epoch::ExpiresIn;
use crate::exit;
use crate::human;
use crate::progress::Bar;

/// How long a published manifest is accepted unless `--expires-in`: a
/// publisher republishes at least this often, or subscribers notice a
/// mirror that stopped following (TUF's freeze attack).
pub const MANIFEST_LIFETIME: &str = "7d";

/// `nip remote`.
#[derive(Debug, Subcommand)]
pub enum RemoteCommand {
    /// Record a remote this store publishes to or pulls from.
    ///
    /// URL is s3://BUCKET/PREFIX (S3 or an S3-compatible server with
    /// --endpoint; credentials and region from AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION), http(s)://HOST/PATH
    /// (a read-only mirror: any web server holding a copy of the published
    /// objects) or file:///DIR (a directory).
    ///
    /// The remote's manifests must be signed by a key trusted for images of
    /// its trust domain (--domain, default the remote's name); --key FILE
    /// trusts that public key for it. Counters only go up per domain, so a
    /// mirror cannot bring back an older generation.
    ///
    /// Example: nip remote add origin s3://fleet/nexus --endpoint
    /// http://127.0.0.1:8333 --key publisher.pub
    Add {
        /// Its name (letters, digits, '.', '_', '-').
        name: String,
        /// Where it is.
        url: String,
        /// S3 endpoint of an S3-compatible server (http://HOST:PORT).
        #[arg(long, value_name = "URL")]
        endpoint: Option<String>,
        /// S3 region [default: AWS_REGION, else us-east-1].
        #[arg(long)]
        region: Option<String>,
        /// Trust domain its manifests are signed in [default: NAME].
        #[arg(long)]
        domain: Option<String>,
        /// Trust this public key file for the remote's domain.
        #[arg(long, value_name = "PUBKEY")]
        key: Option<PathBuf>,
        /// JSON: the remote.
        #[arg(long)]
        json: bool,
    },
    /// The remotes of the store (and those the configuration file
    /// declares), what the store reads from each, and the cache.
    List {
        /// JSON: {remotes: [...], declared: [...], cache}.
        #[arg(long)]
        json: bool,
    },
    /// Forget a remote (refused while generations pulled from it are
    /// stored: collect them first).
    Remove {
        /// Its name.
        name: String,
        /// JSON: {removed}.
        #[arg(long)]
        json: bool,
    },
    /// Show or set the disk cache of remote blocks (STORE/remote-cache) and
    /// the read deadline, shared by every process reading the store.
    Cache {
        /// Largest size of the cache (e.g. 4G, 512M) [default: 4G].
        #[arg(long, value_parser = parse_size, value_name = "SIZE")]
        size: Option<u64>,
        /// Seconds an uncached read waits for a remote before failing
        /// (EIO in a mount) [default: 10].
        #[arg(long, value_name = "SECONDS")]
        timeout: Option<f64>,
        /// Delete every cached block.
        #[arg(long)]
        clear: bool,
        /// JSON: {cache_bytes, timeout_ms, blocks, bytes}.
        #[arg(long)]
        json: bool,
    },
}

/// `nip publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The remote (`nip remote add`, or declared in the configuration).
    pub remote: String,
    /// The generation to publish [default: the live one].
    #[arg(long, value_name = "N")]
    pub generation: Option<i64>,
    /// The signing key [default: the key store's only secret key].
    #[arg(long, value_name = "NAME")]
    pub key: Option<String>,
    /// How long subscribers accept the manifest: a duration (s, m, h, d,
    /// w, y) or `never`.
    #[arg(long, default_value = MANIFEST_LIFETIME, value_parser = ExpiresIn::parse, value_name = "DURATION")]
    pub expires_in: ExpiresIn,
    /// Upload everything again instead of reusing what the remote has
    /// (also when its manifest is signed by a key this store does not
    /// trust).
    #[arg(long)]
    pub fresh: bool,
    /// JSON report.
    #[arg(long)]
    pub json: bool,
}

/// `nip pull`.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// The remote.
    pub remote: String,
    /// Accept an expired manifest.
    #[arg(long)]
    pub allow_expired: bool,
    /// Also set the size of the disk cache (as `nip remote cache --size`).
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub cache_size: Option<u64>,
    /// JSON report.
    #[arg(long)]
    pub json: bool,
}

/// `nip prefetch`.
#[derive(Debug, Args)]
pub struct PrefetchArgs {
    /// Packages of the live generation: APP (its Current version) or
    /// APP/VERSION.
    #[arg(required_unless_present = "recorded", value_name = "APP[/VERSION]")]
    pub packages: Vec<String>,
    /// Also fetch, first and in their order, the blocks an access record
    /// lists (STORE/remote-cache/access.log: what programs read at their
    /// first start, on this host or one whose record was copied here);
    /// blocks this store does not read from a remote are skipped.
    #[arg(long, value_name = "FILE")]
    pub recorded: Option<PathBuf>,
    /// Also set the size of the disk cache (as `nip remote cache --size`).
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub cache_size: Option<u64>,
    /// JSON report.
    #[arg(long)]
    pub json: bool,
}

fn print_json(value: &serde_json::Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// The remote `name` of the store; one only the configuration declares is
/// recorded in the store first. Declared and recorded differently: an
/// error (which one is meant is not obvious).
fn resolve(store: &Store, settings: &Settings, name: &str) -> Result<RemoteRow> {
    let declared = settings.remotes.iter().find(|r| r.name == name);
    match (store.catalog().remote(name)?, declared) {
        (Some(row), None) => Ok(row),
        (Some(row), Some(d)) => {
            let same = row.url == d.url
                && row.endpoint == d.endpoint
                && row.region == d.region
                && row.domain == d.domain.clone().unwrap_or_else(|| d.name.clone());
            if !same {
                bail!(
                    "remote {name} is recorded in the store as {} and declared in {} line {} as {}; remove one (`nip remote remove {name}` or the file's line)",
                    row.url,
                    settings.config_file.value.display(),
                    d.line,
                    d.url
                );
            }
            Ok(row)
        }
        (None, Some(d)) => Ok(store.catalog().add_remote(&new_remote(d)?)?),
        (None, None) => bail!("no remote named {name} (add one with `nip remote add {name} URL`)"),
    }
}

fn new_remote(d: &FileRemote) -> Result<NewRemote> {
    Location::parse(&d.url)?;
    let domain = d.domain.clone().unwrap_or_else(|| d.name.clone());
    nexus_npk::trust::check_domain(&domain)?;
    Ok(NewRemote {
        name: d.name.clone(),
        url: d.url.clone(),
        endpoint: d.endpoint.clone(),
        region: d.region.clone(),
        domain,
    })
}

fn remote_json(row: &RemoteRow, store: &Store) -> Result<serde_json::Value> {
    let using = store.catalog().remote_use(row.id)?;
    Ok(json!({
        "name": row.name,
        "url": row.url,
        "endpoint": row.endpoint,
        "region": row.region,
        "domain": row.domain,
        "added": row.added,
        "packs": using.packs,
        "pack_bytes": using.bytes,
        "packages": using.packages,
    }))
}

fn cache_json(settings: &RemoteSettings, usage: Usage) -> serde_json::Value {
    json!({
        "cache_bytes": settings.cache_bytes,
        "timeout_ms": settings.timeout.as_millis() as u64,
        "blocks": usage.blocks,
        "bytes": usage.bytes,
    })
}

/// `nip remote …`.
pub fn run_remote(
    command: RemoteCommand,
    dir: &Path,
    keys_dir: &Path,
    settings: &Settings,
) -> Result<i32> {
    let store = crate::open::open_store(dir)?;
    match command {
        RemoteCommand::Add {
            name,
            url,
            endpoint,
            region,
            domain,
            key,
            json,
        } => {
            check_remote_name(&name)?;
            let declared = FileRemote {
                name: name.clone(),
                url,
                endpoint,
                region,
                domain,
                line: 0,
            };
            let new = new_remote(&declared)?;
            if let Some(d) = settings.remotes.iter().find(|r| r.name == name) {
                bail!(
                    "remote {name} is declared in {} line {}; edit the file, or pick another name",
                    settings.config_file.value.display(),
                    d.line
                );
            }
            if let Some(file) = &key {
                trust_for_domain(keys_dir, file, &new.domain)?;
            }
            let row = store.catalog().add_remote(&new)?;
            if json {
                print_json(&remote_json(&row, &store)?)?;
            } else {
                println!(
                    "remote {} added: {} (manifests signed in trust domain {})",
                    row.name, row.url, row.domain
                );
            }
            Ok(exit::OK)
        }
        RemoteCommand::List { json } => {
            let rows = store.catalog().remotes()?;
            let remote_settings = RemoteSettings::load(store.catalog())?;
            let usage = DiskCache::open(dir, remote_settings.cache_bytes)
                .map(|c| c.usage())
                .unwrap_or_default();
            let declared: Vec<&FileRemote> = settings
                .remotes
                .iter()
                .filter(|d| !rows.iter().any(|r| r.name == d.name))
                .collect();
            if json {
                let remotes = rows
                    .iter()
                    .map(|r| remote_json(r, &store))
                    .collect::<Result<Vec<_>>>()?;
                let declared: Vec<_> = declared
                    .iter()
                    .map(|d| json!({"name": d.name, "url": d.url, "line": d.line}))
                    .collect();
                print_json(&json!({
                    "remotes": remotes,
                    "declared": declared,
                    "cache": cache_json(&remote_settings, usage),
                }))?;
            } else {
                for r in &rows {
                    let using = store.catalog().remote_use(r.id)?;
                    println!(
                        "{}\t{}\tdomain {}\t{} packs ({}) read from it",
                        r.name,
                        r.url,
                        r.domain,
                        using.packs,
                        human::size(using.bytes)
                    );
                }
                for d in declared {
                    println!(
                        "{}\t{}\t(declared in {} line {}; recorded on first use)",
                        d.name,
                        d.url,
                        settings.config_file.value.display(),
                        d.line
                    );
                }
                println!(
                    "cache: {} in {} blocks, at most {}; uncached reads wait {:.1} s",
                    human::size(usage.bytes),
                    usage.blocks,
                    human::size(remote_settings.cache_bytes),
                    remote_settings.timeout.as_secs_f64()
                );
            }
            Ok(exit::OK)
        }
        RemoteCommand::Remove { name, json } => {
            store.catalog().remove_remote(&name)?;
            if json {
                print_json(&json!({"removed": name}))?;
            } else {
                println!("remote {name} removed");
            }
            Ok(exit::OK)
        }
        RemoteCommand::Cache {
            size,
            timeout,
            clear,
            json,
        } => {
            if let Some(bytes) = size {
                RemoteSettings::set_cache_bytes(store.catalog(), bytes)?;
            }
            if let Some(secs) = timeout {
                if !secs.is_finite() || secs <= 0.0 {
                    bail!("--timeout must be a positive number of seconds");
                }
                RemoteSettings::set_timeout(store.catalog(), Duration::from_secs_f64(secs))?;
            }
            let remote_settings = RemoteSettings::load(store.catalog())?;
            let cache = DiskCache::open(dir, remote_settings.cache_bytes)
                .with_context(|| format!("opening the cache of {}", dir.display()))?;
            if clear {
                cache.clear().context("clearing the remote cache")?;
            } else if size.is_some() {
                cache.evict();
            }
            let usage = cache.usage();
            if json {
                print_json(&cache_json(&remote_settings, usage))?;
            } else {
                println!(
                    "cache: {} in {} blocks, at most {}; uncached reads wait {:.1} s",
                    human::size(usage.bytes),
                    usage.blocks,
                    human::size(remote_settings.cache_bytes),
                    remote_settings.timeout.as_secs_f64()
                );
            }
            Ok(exit::OK)
        }
    }
}

/// Remote names follow key and domain names.
fn check_remote_name(name: &str) -> Result<()> {
    nexus_npk::trust::check_domain(name)
        .map_err(|_| anyhow::anyhow!("invalid remote name {name:?}: use 1 to 64 letters, digits, '.', '_' or '-', not starting with '.' or '-'"))
}

/// Trusts the public key in `file` for images of `domain`, unless it is
/// trusted for images of another domain already (which would silently
/// move it).
fn trust_for_domain(keys_dir: &Path, file: &Path, domain: &str) -> Result<()> {
    let keys = KeyStore::new(keys_dir);
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading the public key {}", file.display()))?;
    let public = nexus_npk::PublicKey::parse(&text)?;
    let trust = keys.trust_set()?;
    if let Some(other) = trust
        .trusted
        .iter()
        .filter(|t| t.key.key == public.key)
        .find_map(|t| t.domain().filter(|d| *d != domain))
    {
        bail!(
            "key {} ({}) is trusted for images of domain {other}; give --domain {other}, or trust it for {domain} with `nip key trust --for images --domain {domain}`",
            public.id(),
            public.name
        );
    }
    keys.trust(
        file,
        Scope::Images {
            domain: domain.to_string(),
        },
    )?;
    Ok(())
}

/// The signing key: the one named, or the key store's only secret key.
fn signing_key(keys: &KeyStore, named: Option<String>) -> Result<String> {
    if let Some(name) = named {
        return Ok(name);
    }
    let secret: Vec<String> = keys
        .list()?
        .into_iter()
        .filter(|k| k.secret && !k.revoked)
        .map(|k| k.key.name)
        .collect();
    match &secret[..] {
        [one] => Ok(one.clone()),
        [] => bail!(
            "no signing key in {} (make one with `nip key generate NAME`)",
            keys.dir().display()
        ),
        many => bail!(
            "several signing keys ({}): name one with --key",
            many.join(", ")
        ),
    }
}

/// `nip publish`.
pub fn run_publish(
    args: PublishArgs,
    dir: &Path,
    keys_dir: &Path,
    settings: &Settings,
) -> Result<i32> {
    let store = crate::open::open_store(dir)?;
    let remote = resolve(&store, settings, &args.remote)?;
    let keys = KeyStore::new(keys_dir);
    let key_name = signing_key(&keys, args.key)?;
    let key = keys.secret(&key_name)?;
    let trust = keys.trust_set()?;
    let expires_in = match args.expires_in {
        ExpiresIn::Never => None,
        ExpiresIn::After(secs) => Some(Duration::from_secs(secs)),
    };
    let options = PublishOptions {
        generation: args.generation,
        keys: &keys,
        key_name: &key_name,
        trust: &trust,
        domain: &remote.domain,
        expires_in,
        fresh: args.fresh,
    };
    let bar = Bar::for_stderr();
    let published = publish(
        &store,
        store.reader(),
        &endpoint_of(&remote)?,
        &key,
        &options,
        &bar,
    );
    bar.finish();
    let published = published.with_context(|| format!("publishing to remote {}", remote.name))?;
    if args.json {
        print_json(&serde_json::to_value(&published)?)?;
    } else {
        println!(
            "published generation {} to {} as counter {}: {} packages, {} new packs ({}), {} of {} chunks already there",
            published.generation,
            published.remote,
            published.counter,
            published.packages,
            published.packs_uploaded,
            human::size(published.bytes_uploaded),
            published.chunks_reused,
            published.chunks
        );
    }
    Ok(exit::OK)
}

/// `nip pull`.
pub fn run_pull(args: PullArgs, dir: &Path, keys_dir: &Path, settings: &Settings) -> Result<i32> {
    let mut store = crate::open::open_store(dir)?;
    let remote = resolve(&store, settings, &args.remote)?;
    if let Some(bytes) = args.cache_size {
        RemoteSettings::set_cache_bytes(store.catalog(), bytes)?;
    }
    let trust: TrustSet = KeyStore::new(keys_dir).trust_set()?;
    let remote_settings = RemoteSettings::load(store.catalog())?;
    let pulled = pull(
        &mut store,
        &remote,
        &trust,
        remote_settings.timeouts(),
        PullOptions {
            allow_expired: args.allow_expired,
        },
    )
    .with_context(|| format!("pulling from remote {}", remote.name))?;
    if args.json {
        print_json(&serde_json::to_value(&pulled)?)?;
    } else {
        match pulled.generation {
            Some(g) => println!(
                "generation {g}: {} packages of {} (counter {}), {} new; contents are fetched when read",
                pulled.packages,
                pulled.remote,
                pulled.counter,
                pulled.added.len()
            ),
            None => println!(
                "{} (counter {}) holds what the live generation holds: nothing to do",
                pulled.remote, pulled.counter
            ),
        }
    }
    Ok(exit::OK)
}

/// `nip prefetch`.
pub fn run_prefetch(args: PrefetchArgs, dir: &Path) -> Result<i32> {
    let store = crate::open::open_store(dir)?;
    if let Some(bytes) = args.cache_size {
        RemoteSettings::set_cache_bytes(store.catalog(), bytes)?;
    }
    let members = store.catalog().current_members()?;
    let mut blocks = Vec::new();
    let mut names = Vec::new();
    let mut skipped = 0u64;
    if let Some(file) = &args.recorded {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading the access record {}", file.display()))?;
        let recorded = nexus_remote::prefetch::parse_recorded(&text)
            .map_err(|why| anyhow::anyhow!("{}: {why}", file.display()))?;
        // A record is the daemon's (which a compromised daemon writes) or
        // another host's: only blocks the catalog places there, at the
        // length it places them, are fetched (a recorded length is
        // otherwise a buffer of any size).
        for (pack, offset, len) in recorded {
            let known = store.catalog().pack_remote(&pack)?.is_some()
                && store.catalog().blocks_from(&pack, offset, 1)?.first() == Some(&(offset, len));
            if known {
                blocks.push((pack, offset, len));
            } else {
                skipped += 1;
            }
        }
        names.push(format!("{} (recorded)", file.display()));
    }
    let recorded_count = blocks.len();
    for spec in &args.packages {
        let (name, version) = parse_spec(spec)?;
        let found = members.iter().find(|m| {
            m.package.name == name
                && version
                    .as_ref()
                    .map_or(m.current, |v| *v == m.package.version)
        });
        let Some(member) = found else {
            bail!("{spec} is not in the live generation");
        };
        names.push(member.package.spec());
        blocks.extend(store.catalog().package_blocks(member.package.id)?);
    }
    // The recorded blocks keep their order, ahead of the packages' (in
    // pack order); each block once.
    let mut seen = std::collections::HashSet::new();
    let mut rest = blocks.split_off(recorded_count);
    rest.sort();
    let blocks: Vec<_> = blocks
        .into_iter()
        .chain(rest)
        .filter(|b| seen.insert(b.clone()))
        .collect();
    let source = crate::open::remote_source(&store)?;
    let bar = Bar::for_stderr();
    let done = prefetch(&source, &blocks, &bar);
    bar.finish();
    let done = done.context("prefetching")?;
    if args.json {
        print_json(&json!({
            "packages": names,
            "blocks": done.blocks,
            "bytes": done.bytes,
            "cached": done.cached,
            "fetched": done.fetched,
            "fetched_bytes": done.fetched_bytes,
            "recorded_skipped": skipped,
        }))?;
    } else {
        println!(
            "{}: {} remote blocks ({}), {} fetched now ({}), {} were cached",
            names.join(" "),
            done.blocks,
            human::size(done.bytes),
            done.fetched,
            human::size(done.fetched_bytes),
            done.cached
        );
    }
    Ok(exit::OK)
}
