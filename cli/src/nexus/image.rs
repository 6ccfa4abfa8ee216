//! `nexus snapshot` and `verify`: freezing a generation into a signed
//! image and checking one (`switch` and `rollback`, which move the live
//! generation, are `crate::generations`).

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, bail};
use nexus_npk::{
    Archive, ArchiveKind, Check, KeyStore, Member, Policy, WriteOptions,
    write_archive_with_progress,
};
use nexus_store::commit::counter_meta_key;
use nexus_store::{Hash, Store};
use serde_json::json;

use crate::epoch::source_date_epoch;
use crate::exit;
use crate::human;
use crate::progress::Bar;

fn open_store(dir: &Path) -> Result<Store> {
    Store::open(dir).with_context(|| format!("opening the store in {}", dir.display()))
}

/// `nexus snapshot`: writes generation `generation` (default: the live one)
/// as an image signed with key `key`.
pub fn snapshot(
    store_dir: &Path,
    keys_dir: &Path,
    generation: Option<i64>,
    key: &str,
    counter: Option<u64>,
    out: &Path,
    json_out: bool,
) -> Result<i32> {
    let store = open_store(store_dir)?;
    let catalog = store.catalog();
    let generation = match generation {
        Some(g) => g,
        None => catalog
            .current_generation()?
            .context("the store has no generation yet: nothing to snapshot")?,
    };
    if catalog.generation(generation)?.is_none() {
        bail!("generation {generation} does not exist (or was removed by gc)");
    }
    let mut members = catalog.members(generation)?;
    // Deterministic order, whatever the catalog's.
    members.sort_by(|a, b| {
        (&a.package.name, &a.package.version).cmp(&(&b.package.name, &b.package.version))
    });
    let keys = KeyStore::new(keys_dir);
    let secret = keys.secret(key)?;
    let counter = keys.take_counter(key, counter)?;
    let started = std::time::Instant::now();
    let bar = Bar::for_stderr();
    let written = write_archive_with_progress(
        &store,
        &members
            .iter()
            .map(|m| Member {
                package: &m.package,
                current: m.current,
            })
            .collect::<Vec<_>>(),
        out,
        &WriteOptions {
            kind: ArchiveKind::Image,
            counter,
            created: source_date_epoch()?,
            signer: Some(&secret),
        },
        &bar,
    );
    bar.finish();
    let written = written.with_context(|| format!("writing {}", out.display()))?;
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "file": out,
                "generation": generation,
                "packages": members.len(),
                "bytes": written.bytes,
                "counter": counter,
                "key": {"id": secret.public().id(), "name": secret.name},
                "root": written.manifest.root.to_hex(),
                "seconds": started.elapsed().as_secs_f64(),
            }))?
        );
        return Ok(exit::OK);
    }
    println!(
        "{}: generation {generation}, {} packages, {}, counter {counter}, signed by {} ({}), root {} ({:.2} s)",
        out.display(),
        members.len(),
        human::size(written.bytes),
        secret.name,
        secret.public().id(),
        written.manifest.root,
        started.elapsed().as_secs_f64()
    );
    Ok(exit::OK)
}

/// `nexus verify FILE`: signature, counter and every hash.
pub fn verify(
    store_dir: &Path,
    keys_dir: &Path,
    file: &Path,
    allow_downgrade: bool,
    json_out: bool,
) -> Result<i32> {
    let trust = KeyStore::new(keys_dir).trust_set()?;
    let archive = match Archive::open_with(file, Policy::Trusted(&trust), Check::Full) {
        Ok(a) => a,
        Err(e) => {
            report(json_out, file, false, &e.to_string(), None)?;
            return Ok(exit::DAMAGED);
        }
    };
    // Every file content, chunk by verified chunk, against its own hash.
    let mut files = 0u64;
    let mut bytes = 0u64;
    for blob in archive.blobs_in_block_order() {
        let mut reader = archive.blob_reader(blob);
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    report(
                        json_out,
                        file,
                        false,
                        &format!("content {}: {e}", blob.hash),
                        Some(&archive),
                    )?;
                    return Ok(exit::DAMAGED);
                }
            };
            hasher.update(&buf[..n]);
            bytes += n as u64;
        }
        if Hash::from(hasher.finalize()) != blob.hash {
            report(
                json_out,
                file,
                false,
                &format!("content {} does not match its hash", blob.hash),
                Some(&archive),
            )?;
            return Ok(exit::DAMAGED);
        }
        files += 1;
    }
    // The counter against the highest this store accepted from the key.
    if archive.manifest.kind == ArchiveKind::Image
        && let nexus_npk::Signer::Trusted(key) = &archive.signer
        && let Ok(store) = Store::open(store_dir)
        && let Some(highest) = store
            .catalog()
            .meta(&counter_meta_key(&key.id()))?
            .and_then(|v| v.parse::<u64>().ok())
        && archive.manifest.counter < highest
        && !allow_downgrade
    {
        report(
            json_out,
            file,
            false,
            &format!(
                "counter {} is lower than {highest}, the highest this store accepted from key {}: an older or replayed image",
                archive.manifest.counter,
                key.id()
            ),
            Some(&archive),
        )?;
        return Ok(exit::ERROR);
    }
    report(
        json_out,
        file,
        true,
        &format!("{files} file contents, {} verified", human::size(bytes)),
        Some(&archive),
    )?;
    Ok(exit::OK)
}

fn report(
    json_out: bool,
    file: &Path,
    ok: bool,
    detail: &str,
    archive: Option<&Archive>,
) -> Result<()> {
    let signer = archive.map(|a| match &a.signer {
        nexus_npk::Signer::Trusted(k) => format!("{} ({})", k.name, k.id()),
        nexus_npk::Signer::Unverified(why) => format!("unverified: {why}"),
    });
    if json_out {
        let m = archive.map(|a| &a.manifest);
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "file": file.display().to_string(),
                "ok": ok,
                "detail": detail,
                "kind": m.map(|m| m.kind.name()),
                "signer": signer,
                "counter": m.map(|m| m.counter),
                "created": m.map(|m| m.created),
                "root": m.map(|m| m.root.to_hex()),
                "packages": archive.map(|a| a.body.packages.iter().map(|p| format!("{}/{}", p.name, p.version)).collect::<Vec<_>>()),
            }))?
        );
    } else if ok {
        let a = archive.context("verified archive missing")?;
        println!(
            "{}: OK — {} of {} packages, counter {}, signed by {}; {detail}",
            file.display(),
            a.manifest.kind.name(),
            a.body.packages.len(),
            a.manifest.counter,
            signer.unwrap_or_default()
        );
    } else {
        println!("{}: FAILED — {detail}", file.display());
    }
    Ok(())
}
