//! `nexus snapshot` and `verify`: freezing a generation into a signed
//! image and checking one (`switch` and `rollback`, which move the live
//! generation, are `crate::generations`).

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, bail};
use nexus_npk::{
    Archive, ArchiveKind, Check, Claim, CounterRequest, Expiry, KeyStore, Member, NpkError, Policy,
    WriteOptions, replay, write_archive_with_progress,
};
use nexus_store::{Hash, Store};
use serde_json::json;

use super::serve::ImageRequest;
use crate::epoch::{ExpiresIn, source_date_epoch};
use crate::exit;
use crate::human;
use crate::progress::Bar;

/// How `nexus snapshot` signs.
#[derive(Debug)]
pub struct Signing {
    /// The signing key's name.
    pub key: String,
    /// Which counter.
    pub counter: CounterRequest,
    /// How long the signature vouches for the image.
    pub expires_in: ExpiresIn,
}

/// What a check of an image lets through (`--allow-downgrade`,
/// `--allow-expired`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Allow {
    /// An image older than one accepted in its trust domain.
    pub downgrade: bool,
    /// An expired signature.
    pub expired: bool,
}

impl Allow {
    fn expiry(self) -> Expiry {
        Expiry::unless_allowed(self.expired)
    }
}

use crate::open::open_store;

/// `nexus snapshot`: writes generation `generation` (default: the live one)
/// as an image signed with key `key`.
pub fn snapshot(
    store_dir: &Path,
    keys_dir: &Path,
    generation: Option<i64>,
    signing: &Signing,
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
    let secret = keys.secret(&signing.key)?;
    let counter = keys.take_counter(&signing.key, signing.counter)?;
    let created = source_date_epoch()?;
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
            created,
            expires: signing.expires_in.expires(created),
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

/// `nexus verify FILE`: signature, expiry, counter and every hash.
pub fn verify(
    store_dir: &Path,
    keys_dir: &Path,
    file: &Path,
    allow: Allow,
    json_out: bool,
) -> Result<i32> {
    let trust = KeyStore::new(keys_dir).trust_set()?;
    let archive =
        match Archive::open_with(file, Policy::Trusted(&trust, allow.expiry()), Check::Full) {
            Ok(a) => a,
            Err(e) => {
                report(json_out, file, false, &e.to_string(), None, None)?;
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
                    let why = format!("content {}: {e}", blob.hash);
                    report(json_out, file, false, &why, Some(&archive), None)?;
                    return Ok(exit::DAMAGED);
                }
            };
            hasher.update(&buf[..n]);
            bytes += n as u64;
        }
        if Hash::from(hasher.finalize()) != blob.hash {
            let why = format!("content {} does not match its hash", blob.hash);
            report(json_out, file, false, &why, Some(&archive), None)?;
            return Ok(exit::DAMAGED);
        }
        files += 1;
    }
    let mut detail = format!("{files} file contents, {} verified", human::size(bytes));
    // The counter against the highest this store accepted in the domain.
    let mut counter_checked = None;
    if let Some(claim) = Claim::of(&archive, &trust) {
        match Store::open(store_dir) {
            Ok(store) => {
                if let Err(replayed) = replay::check(&store, &claim, allow.downgrade)? {
                    let why = replayed.to_string();
                    report(json_out, file, false, &why, Some(&archive), Some(true))?;
                    return Ok(exit::ERROR);
                }
                counter_checked = Some(true);
            }
            Err(e) => {
                counter_checked = Some(false);
                detail.push_str(&format!(
                    "; the counter was NOT checked against replay: no store to check it against ({e})"
                ));
            }
        }
    }
    report(
        json_out,
        file,
        true,
        &detail,
        Some(&archive),
        counter_checked,
    )?;
    Ok(exit::OK)
}

fn report(
    json_out: bool,
    file: &Path,
    ok: bool,
    detail: &str,
    archive: Option<&Archive>,
    counter_checked: Option<bool>,
) -> Result<()> {
    let signer = archive.map(|a| match &a.signer {
        nexus_npk::Signer::Trusted(g) => {
            format!("{} ({}), trusted for {}", g.key.name, g.key.id(), g.scope)
        }
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
                "counter_checked": counter_checked,
                "created": m.map(|m| m.created),
                "expires": m.and_then(|m| m.expires),
                "root": m.map(|m| m.root.to_hex()),
                "packages": archive.map(|a| a.body.packages.iter().map(|p| format!("{}/{}", p.name, p.version)).collect::<Vec<_>>()),
            }))?
        );
    } else if ok {
        let a = archive.context("verified archive missing")?;
        let expires = a
            .manifest
            .expires
            .map_or("never expires".to_string(), |t| format!("expires at {t}"));
        println!(
            "{}: OK — {} of {} packages, counter {}, {expires}, signed by {}; {detail}",
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

/// Refuses to serve a package as a system, then checks the counter of the
/// image `archive` (opened for `image`) against the store's record and
/// records it. Without a store to hold the record, serving is refused
/// unless downgrades are allowed (then nothing is checked, and it is said).
pub(super) fn record_served(archive: &Archive, image: &ImageRequest) -> Result<()> {
    if archive.manifest.kind != ArchiveKind::Image {
        return Err(NpkError::KindMismatch {
            expected: ArchiveKind::Image,
            found: archive.manifest.kind,
        })
        .with_context(|| format!("serving {}", image.path.display()));
    }
    let Some(claim) = Claim::of(archive, &image.trust) else {
        return Ok(());
    };
    let mut store = match Store::open(&image.store) {
        Ok(store) => store,
        Err(e) if image.allow_downgrade => {
            tracing::warn!(
                "{}: image counter {} NOT checked against replay ({e})",
                image.path.display(),
                claim.counter
            );
            return Ok(());
        }
        Err(e) => {
            return Err(e).context(
                "the image's counter must be checked against the store's record (give a store with --store, or serve without the check with --allow-downgrade)",
            );
        }
    };
    replay::record(&mut store, claim, image.allow_downgrade).with_context(|| {
        format!(
            "checking the counter of {} against the store in {}",
            image.path.display(),
            image.store.display()
        )
    })
}
