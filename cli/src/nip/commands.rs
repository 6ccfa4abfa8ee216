//! What each `nip` command does.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nexus_graft::{
    self as graft, AddOptions, ArchiveRequest, GraftError, Limits, ReadOptions, Source, Trust,
};
use nexus_npk::{ArchiveKind, KeyStore, Member, WriteOptions, write_archive_with_progress};
use nexus_store::scan::SourcePolicy;
use nexus_store::{AddDir, Progress, Store, export, gc, names, verify};
use serde_json::json;

use super::output::{file_json, file_line, kind_name};
use super::{Cli, Command};
use crate::config::Settings;
use crate::epoch::{ExpiresIn, source_date_epoch};
use crate::exit;
use crate::human;
use crate::progress::Bar;

/// Runs a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> Result<i32> {
    let settings = Settings::load(&cli.overrides())?;
    let dir = settings.store.value.clone();
    let keys_dir = settings.keys.value.clone();
    match cli.command {
        Command::Init { json } => {
            Store::init(&dir)
                .with_context(|| format!("creating the store in {}", dir.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&json!({"store": dir}))?);
            } else {
                println!("store ready in {}", dir.display());
            }
            Ok(exit::OK)
        }
        Command::Add {
            paths,
            name,
            version,
            skip_special,
            trust_source_owner,
            keep_source_privileges,
            lock_timeout,
            max_unpacked_size,
            max_entries,
            threads,
            insecure,
            allow_downgrade,
            allow_expired,
            json,
        } => {
            let trust = if insecure {
                Trust::Insecure
            } else {
                Trust::Keys(KeyStore::new(&keys_dir).trust_set()?)
            };
            let read = ReadOptions {
                limits: Limits {
                    max_unpacked_size,
                    max_entries,
                },
                skip_special,
            };
            let options = AddOptions {
                threads: threads.map_or(nexus_store::AddOptions::default().threads, |t| t.max(1)),
                read,
                trust,
                allow_downgrade,
                allow_expired,
                source_policy: SourcePolicy {
                    trust_owner: trust_source_owner,
                    keep_privileges: keep_source_privileges,
                },
            };
            let lock_timeout = Duration::from_secs(lock_timeout);
            add(&dir, paths, name, version, options, lock_timeout, json)
        }
        Command::Pack {
            spec,
            output,
            key,
            unsigned: _,
            expires_in,
            json,
        } => pack(
            &dir,
            &keys_dir,
            &spec,
            &output,
            key.as_deref(),
            expires_in,
            json,
        ),
        Command::Key(command) => crate::keys::run(&keys_dir, command),
        Command::Remove { specs, json } => {
            let generation = open(&dir)?.remove(&specs)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &json!({"generation": generation, "removed": specs})
                    )?
                );
            } else {
                println!("removed {}; generation {generation}", specs.join(" "));
            }
            Ok(exit::OK)
        }
        Command::List { generation, json } => list(&dir, generation, json),
        Command::Info { name, json } => info(&dir, &name, json),
        Command::Files { spec, json } => files(&dir, &spec, json),
        Command::History { json } => super::changes::history(&dir, json),
        Command::Diff { from, to, json } => super::changes::show_diff(&dir, from, to, json),
        Command::Pin { generation, json } => super::pins::pin(&dir, generation, json),
        Command::Unpin { generation, json } => super::pins::unpin(&dir, generation, json),
        Command::Current { app, version, json } => super::pins::current(&dir, &app, &version, json),
        Command::Rollback(args) => crate::generations::rollback(&dir, args),
        Command::Switch(args) => crate::generations::switch(&dir, &keys_dir, args),
        Command::Config(command) => crate::config_cmd::run(&settings, command),
        Command::Tui => super::tui::run(&dir),
        Command::Remote(command) => super::remote::run_remote(command, &dir, &keys_dir, &settings),
        Command::Publish(args) => super::remote::run_publish(args, &dir, &keys_dir, &settings),
        Command::Pull(args) => super::remote::run_pull(args, &dir, &keys_dir, &settings),
        Command::Prefetch(args) => super::remote::run_prefetch(args, &dir),
        Command::Gc {
            keep,
            older_than,
            grace,
            json,
        } => {
            let mut store = open(&dir)?;
            let bar = Bar::for_stderr();
            let report = gc::collect_with_progress(
                &mut store,
                gc::GcOptions {
                    keep_last: keep.unwrap_or(if older_than.is_some() { 1 } else { 10 }),
                    keep_younger_than: older_than,
                    grace: Duration::from_secs(grace),
                    ..Default::default()
                },
                &bar,
            );
            bar.finish();
            let report = report?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "gc: {} generations, {} packages, {} file contents dropped; {} chunks deleted, {} newly unreferenced (kept {grace} s); {} packs deleted, {} rewritten; {} freed{}",
                    report.generations_deleted,
                    report.packages_deleted,
                    report.blobs_deleted,
                    report.chunks_deleted,
                    report.chunks_condemned,
                    report.packs_deleted,
                    report.packs_rewritten,
                    human::size(report.bytes_freed),
                    if report.debris_sweep_skipped {
                        " (an add is running: stale pack files left for next time)"
                    } else {
                        ""
                    }
                );
                if report.decoded_removed > 0 {
                    println!(
                        "gc: {} decoded copies removed ({})",
                        report.decoded_removed,
                        human::size(report.decoded_bytes_removed)
                    );
                }
                super::pins::print_gc_retention(&report, grace);
            }
            Ok(exit::OK)
        }
        Command::Decode {
            generation,
            min_size,
            prune_smaller,
            json,
        } => decode(&dir, generation, min_size, prune_smaller, json),
        Command::Verify { json } => {
            let mut store = open(&dir)?;
            let bar = Bar::for_stderr();
            let report = verify::verify_with_progress(&mut store, &bar);
            bar.finish();
            let report = report?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for problem in &report.catalog_problems {
                    println!("catalog: {problem}");
                }
                for (chunk, reason) in &report.damaged_chunks {
                    println!("damaged chunk {chunk}: {reason}");
                }
                for d in &report.damaged {
                    println!("damaged: {}: {} ({})", d.package, d.path, d.reason);
                }
                for d in &report.damaged_packages {
                    println!("damaged package: {}: {}", d.package, d.reason);
                }
                for (copy, reason) in &report.damaged_copies {
                    println!("damaged decoded copy {copy}: {reason}");
                }
                for b in &report.damaged_blocks {
                    println!(
                        "damaged block at {} of pack {}: {}",
                        b.offset, b.pack, b.reason
                    );
                }
                for r in &report.remote_packs {
                    println!(
                        "remote-only pack {} on {}: {} chunks not read here (each is verified when fetched)",
                        r.pack, r.remote, r.chunks
                    );
                }
                println!(
                    "{} chunks, {} file contents, {} package trees checked: {}",
                    report.chunks_checked,
                    report.files_checked,
                    report.packages_checked,
                    if report.ok { "all good" } else { "DAMAGED" }
                );
            }
            Ok(if report.ok { exit::OK } else { exit::DAMAGED })
        }
        Command::Cat { spec, path } => {
            let store = open(&dir)?;
            let package = store.installed(&spec)?;
            let inode = store.resolve(&package, path.as_os_str().as_bytes())?;
            if inode.kind != nexus_store::tree::InodeType::File {
                bail!(
                    "{spec}: {} is a {}, not a file",
                    path.display(),
                    kind_name(inode.kind)
                );
            }
            // Verify the whole file before writing anything, so a damaged
            // file never leaks a prefix of good bytes into a pipeline.
            let mut buf = Vec::with_capacity(inode.size as usize);
            if let Some(blob) = inode.blob {
                store.read_blob(blob, &mut buf)?;
            }
            let mut out = std::io::stdout().lock();
            out.write_all(&buf)?;
            out.flush()?;
            Ok(exit::OK)
        }
        Command::Export {
            spec,
            dest,
            no_same_owner,
            no_xattrs,
            preserve_privileged,
            json,
        } => {
            let store = open(&dir)?;
            let package = store.installed(&spec)?;
            let options = export::ExportOptions {
                same_owner: !no_same_owner,
                xattrs: !no_xattrs,
                preserve_privileged,
            };
            let bar = Bar::for_stderr();
            let exported = export::export_with_progress(&store, &package, &dest, options, &bar);
            bar.finish();
            exported?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({
                        "spec": package.spec(),
                        "dest": dest,
                        "files": package.files,
                        "bytes": package.bytes,
                    }))?
                );
            } else {
                println!(
                    "{spec} written to {} ({} files, {})",
                    dest.display(),
                    package.files,
                    human::size(package.bytes.max(0) as u64)
                );
            }
            Ok(exit::OK)
        }
        Command::Stats { json } => {
            let stats = open(&dir)?.stats()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                println!(
                    "{} packages, {} files, {} logical\n{} distinct contents, {} chunks ({} raw)\n{} packs, {} stored; catalog {}; {} generations",
                    stats.packages,
                    stats.files,
                    human::size(stats.logical_bytes),
                    stats.blobs,
                    stats.chunks,
                    human::size(stats.chunk_raw_bytes),
                    stats.packs,
                    human::size(stats.stored_bytes),
                    human::size(stats.catalog_bytes),
                    stats.generations
                );
            }
            Ok(exit::OK)
        }
    }
}

/// Names a few packages in full; a long list becomes a count (`--json`
/// gives every name).
fn summarize(specs: &[String]) -> String {
    const SHOWN: usize = 6;
    if specs.len() <= SHOWN {
        specs.join(" ")
    } else {
        format!(
            "{} and {} more packages",
            specs[..SHOWN].join(" "),
            specs.len() - SHOWN
        )
    }
}

pub(super) fn open(dir: &Path) -> Result<Store> {
    crate::open::open_store(dir)
}

/// Name and version of a directory in `.../App/Version` layout.
fn name_from_layout(path: &Path) -> Result<(String, String)> {
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let version = canonical.file_name().and_then(|v| v.to_str());
    let name = canonical
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str());
    match (name, version) {
        (Some(n), Some(v)) => Ok((n.to_string(), v.to_string())),
        _ => bail!(
            "{}: cannot take NAME/VERSION from the path (expected .../App/Version); give --name and --version",
            path.display()
        ),
    }
}

/// Directories become directory sources, anything else a package file.
fn source(path: &Path, name: Option<(String, String)>) -> Result<Source> {
    let meta = std::fs::metadata(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow::anyhow!("{}: no such file or directory", path.display())
        } else {
            anyhow::Error::from(e).context(path.display().to_string())
        }
    })?;
    if !meta.is_dir() {
        let (name, version) = name.unzip();
        return Ok(Source::Archive(ArchiveRequest {
            path: path.to_path_buf(),
            name,
            version,
        }));
    }
    let (name, version) = match name {
        Some(nv) => nv,
        None => {
            refuse_app_dir(path)?;
            name_from_layout(path)?
        }
    };
    Ok(Source::Dir(AddDir {
        path: path.to_path_buf(),
        name,
        version,
    }))
}

/// Refuses a directory that looks like an App (`hello/` holding `1.0/` and
/// `2.0/`) where a version (`hello/1.0`) is expected: taken as App/Version
/// it would become App `src`, version `hello`, holding both versions as
/// plain directories.
fn refuse_app_dir(path: &Path) -> Result<()> {
    let versions = app_dir_versions(path)?;
    if versions.is_empty() {
        return Ok(());
    }
    let shown = |v: &String| path.join(v).display().to_string();
    bail!(
        "{} looks like an App directory holding versions {}: add {} (or give --name and --version to import it as one package)",
        path.display(),
        versions.join(", "),
        versions.iter().map(shown).collect::<Vec<_>>().join(" ")
    )
}

/// The version directories of `path` if it has the shape of an App
/// directory: only directories whose names start with a digit (a version),
/// beside at most GoboLinux's `Current` link and `Settings`/`Variable`
/// directories; an empty list otherwise.
fn app_dir_versions(path: &Path) -> Result<Vec<String>> {
    const APP_EXTRAS: &[&str] = &["Current", "Settings", "Variable"];
    let mut versions = Vec::new();
    let entries = std::fs::read_dir(path).with_context(|| format!("reading {}", path.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", path.display()))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return Ok(Vec::new());
        };
        if APP_EXTRAS.contains(&name) {
            continue;
        }
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if !is_dir || !name.starts_with(|c: char| c.is_ascii_digit()) {
            return Ok(Vec::new());
        }
        versions.push(name.to_string());
    }
    versions.sort();
    Ok(versions)
}

fn add(
    dir: &Path,
    paths: Vec<PathBuf>,
    name: Option<String>,
    version: Option<String>,
    options: AddOptions,
    lock_timeout: Duration,
    json: bool,
) -> Result<i32> {
    let sources = match (name, version) {
        (Some(name), Some(version)) => {
            if paths.len() != 1 {
                bail!(
                    "--name/--version name one package; give exactly one PATH (or none of the flags to take names from App/Version paths and package files)"
                );
            }
            names::check_name(&name)?;
            names::check_version(&version)?;
            vec![source(&paths[0], Some((name, version)))?]
        }
        _ => paths
            .iter()
            .map(|p| source(p, None))
            .collect::<Result<Vec<_>>>()?,
    };
    for s in &sources {
        if let Source::Dir(d) = s {
            names::check_name(&d.name).with_context(|| format!("{}", d.path.display()))?;
            names::check_version(&d.version).with_context(|| format!("{}", d.path.display()))?;
        }
    }
    let mut store = open(dir)?;
    store.set_lock_timeout(lock_timeout);
    let bar = Bar::for_stderr();
    let started = std::time::Instant::now();
    let result = graft::add(&mut store, &sources, options, &bar);
    bar.finish();
    // A store error keeps its type, so `nip` can tell damage apart.
    let outcome = result.map_err(|e| match e {
        GraftError::Store(s) => anyhow::Error::from(s),
        other => anyhow::Error::from(other),
    })?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "generation": outcome.generation,
                "added": outcome.added,
                "unchanged": outcome.unchanged,
                "seconds": started.elapsed().as_secs_f64(),
            }))?
        );
    } else {
        match outcome.generation {
            Some(g) => println!("added {}; generation {g}", summarize(&outcome.added)),
            None => println!(
                "nothing to do: {} already installed",
                summarize(&outcome.unchanged)
            ),
        }
    }
    Ok(exit::OK)
}

fn pack(
    dir: &Path,
    keys_dir: &Path,
    spec: &str,
    output: &Path,
    key: Option<&str>,
    expires_in: ExpiresIn,
    json: bool,
) -> Result<i32> {
    let store = open(dir)?;
    let package = store.installed(spec)?;
    let signer = key
        .map(|name| KeyStore::new(keys_dir).secret(name))
        .transpose()?;
    let created = source_date_epoch()?;
    let bar = Bar::for_stderr();
    let written = write_archive_with_progress(
        &store,
        &[Member {
            package: &package,
            current: true,
        }],
        output,
        &WriteOptions {
            kind: ArchiveKind::Package,
            counter: 0,
            created,
            expires: expires_in.expires(created),
            signer: signer.as_ref(),
        },
        &bar,
    );
    bar.finish();
    let written = written.with_context(|| format!("packing {spec} into {}", output.display()))?;
    if json {
        let signer = signer
            .as_ref()
            .map(|s| json!({"id": s.public().id(), "name": s.name}));
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "file": output,
                "spec": package.spec(),
                "bytes": written.bytes,
                "blobs": written.blobs,
                "chunks": written.chunks,
                "tree_hash": package.tree_hash.to_hex(),
                "signer": signer,
            }))?
        );
        return Ok(exit::OK);
    }
    let by = signer
        .map(|s| format!("signed by {} ({})", s.name, s.public().id()))
        .unwrap_or_else(|| "UNSIGNED".to_string());
    println!(
        "{}: {spec}, {}, {} file contents in {} chunks, {by}; tree {}",
        output.display(),
        human::size(written.bytes),
        written.blobs,
        written.chunks,
        package.tree_hash
    );
    Ok(exit::OK)
}

fn list(dir: &Path, generation: Option<i64>, json: bool) -> Result<i32> {
    let store = open(dir)?;
    let members = match generation {
        Some(g) => {
            if store.catalog().generation(g)?.is_none() {
                bail!("generation {g} does not exist (or was removed by gc)");
            }
            store.catalog().members(g)?
        }
        None => store.catalog().current_members()?,
    };
    if json {
        let rows: Vec<_> = members
            .iter()
            .map(|m| {
                json!({
                    "name": m.package.name,
                    "version": m.package.version,
                    "tree_hash": m.package.tree_hash.to_hex(),
                    "current": m.current,
                    "files": m.package.files,
                    "bytes": m.package.bytes,
                    "origin": m.package.origin,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        for m in &members {
            println!(
                "{:<28} {:<24} {}",
                m.package.name,
                m.package.version,
                if m.current { "Current" } else { "" }
            );
        }
    }
    Ok(exit::OK)
}

fn info(dir: &Path, name: &str, json: bool) -> Result<i32> {
    names::check_name(name)?;
    let store = open(dir)?;
    let installed = store.catalog().current_members()?;
    let mut versions = Vec::new();
    for m in installed.iter().filter(|m| m.package.name == name) {
        versions.push((m.package.clone(), true, m.current));
    }
    if versions.is_empty() {
        bail!("{name} is not installed");
    }
    if json {
        let rows: Vec<_> = versions
            .iter()
            .map(|(p, installed, current)| {
                json!({
                    "name": p.name, "version": p.version, "tree_hash": p.tree_hash.to_hex(),
                    "origin": p.origin, "restricted_to": p.restricted_to,
                    "added": p.added, "files": p.files, "bytes": p.bytes,
                    "installed": installed, "current": current,
                    "metadata": serde_json::from_str::<serde_json::Value>(&p.metadata).unwrap_or_default(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        for (p, _, current) in &versions {
            println!(
                "{}/{}{}",
                p.name,
                p.version,
                if *current { "  (Current)" } else { "" }
            );
            println!("  tree hash  {}", p.tree_hash);
            println!("  origin     {}", p.origin);
            if let Some(apps) = &p.restricted_to {
                // The Index ranks it after every unrestricted App.
                println!(
                    "  restricted {} (its signer is trusted only for these Apps)",
                    human::for_terminal(apps.as_bytes())
                );
            }
            println!("  added      {}", human::time(p.added));
            println!(
                "  files      {} ({})",
                p.files,
                human::size(p.bytes.max(0) as u64)
            );
        }
    }
    Ok(exit::OK)
}

fn files(dir: &Path, spec: &str, json: bool) -> Result<i32> {
    let store = open(dir)?;
    let package = store.installed(spec)?;
    let entries = store.walk_package(&package)?;
    if json {
        let rows: Vec<_> = entries
            .iter()
            .map(|(path, inode)| file_json(path, inode))
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        let mut out = std::io::stdout().lock();
        for (path, inode) in entries.iter().skip(1) {
            writeln!(out, "{}", file_line(path, inode))?;
        }
    }
    Ok(exit::OK)
}

/// `nip decode`: decoded copies of a generation's files of at least
/// `min_size` bytes.
fn decode(
    dir: &Path,
    generation: Option<i64>,
    min_size: u64,
    prune_smaller: bool,
    json: bool,
) -> Result<i32> {
    let store = open(dir)?;
    let generation = match generation {
        Some(g) => g,
        None => store
            .catalog()
            .current_generation()?
            .context("the store has no generation yet: nothing to decode")?,
    };
    if store.catalog().generation(generation)?.is_none() {
        bail!("there is no generation {generation} (see nip history)");
    }
    // Recorded first: a view made while copies are being written looks for
    // them, and uses those already whole.
    let threshold = if prune_smaller {
        nexus_store::decoded::set_min_size(store.catalog(), min_size)?
    } else {
        nexus_store::decoded::record_min_size(store.catalog(), min_size)?
    };
    let wanted = nexus_store::decoded::wanted(&store, generation, min_size)?;
    let bar = Bar::for_stderr();
    bar.phase("decoding");
    bar.start(wanted.iter().map(|w| w.size).sum(), wanted.len() as u64);
    let report = nexus_store::decoded::decode(&store, &wanted, &mut |n| bar.advance(n));
    bar.finish();
    let report = report?;
    // After the threshold was raised: the copies below it that no running
    // kernel view names go now, the others once those views move on.
    let pruned = prune_smaller
        .then(|| nexus_store::decoded::prune(&store))
        .transpose()
        .context("removing the copies of smaller files")?;
    if json {
        let mut value = serde_json::to_value(&report)?;
        value["generation"] = json!(generation);
        value["min_size"] = json!(min_size);
        value["threshold"] = json!(threshold);
        if let Some(pruned) = &pruned {
            value["pruned"] = serde_json::to_value(pruned)?;
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!(
            "generation {generation}: {} decoded copies written ({}), {} already there ({}); \
             kernel-view mounts read them from their next mount or switch",
            report.written,
            human::size(report.written_bytes),
            report.present,
            human::size(report.present_bytes)
        );
        if report.replaced > 0 {
            println!(
                "{} copies held other bytes than their content and were written anew",
                report.replaced
            );
        }
        if let Some(pruned) = pruned {
            println!(
                "{} copies removed ({}); kernel views look for copies of files of {} or more",
                pruned.removed,
                human::size(pruned.removed_bytes),
                human::size(threshold)
            );
            if pruned.held > 0 {
                println!(
                    "{} copies of smaller files ({}) stay while running kernel views name them: \
                     `nip gc` removes them once those views switch generation or are mounted again",
                    pruned.held,
                    human::size(pruned.held_bytes)
                );
            }
        }
    }
    // Damaged metadata: the rest was decoded, and scripts are told.
    for hash in &report.refused {
        eprintln!(
            "nip: content {hash}: its chunks hash to another name (damaged or forged metadata); \
             no decoded copy written, and its files are read through the mount (`nip verify` \
             checks the store)"
        );
    }
    Ok(if report.refused.is_empty() {
        exit::OK
    } else {
        exit::DAMAGED
    })
}
