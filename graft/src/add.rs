//! `nip add`'s engine: directories and package files together, in one
//! transaction of the store.
//!
//! Directories are scanned first (so a bad tree fails before anything is
//! stored) and their files fed by one producer per core; package files are
//! then read one after another, front to back, by one producer, while the
//! store's compressors still use every core. Each package is read straight
//! from its file into the store: nothing is unpacked to disk.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use nexus_npk::ArchiveKind;
use nexus_store::commit::{CommitOutcome, Membership, Precondition, StagedPackage};
use nexus_store::dirs::DirSet;
use nexus_store::ingest::{FileContent, Producer};
use nexus_store::scan::{ScanOptions, SourcePolicy};
use nexus_store::{AddDir, Hash, Progress, Store, StoreError, names, version};

use crate::error::{Failure, GraftError, Problem, ReadResult, SourceError};
use crate::npk::{self, Trust};
use crate::package::{ContentSink, Naming, ReadOptions, check_size, read_named_package};

/// A package file to graft, with optional NAME/VERSION overrides.
#[derive(Clone, Debug)]
pub struct ArchiveRequest {
    /// The package file.
    pub path: PathBuf,
    /// Replaces the name from the package's metadata.
    pub name: Option<String>,
    /// Replaces the version from the package's metadata.
    pub version: Option<String>,
}

/// Something to add.
#[derive(Clone, Debug)]
pub enum Source {
    /// A directory tree with its NAME/VERSION.
    Dir(AddDir),
    /// A package file.
    Archive(ArchiveRequest),
    /// A package already in the store, `NAME/VERSION`, taken as it is
    /// (nothing is read but its catalog rows): with
    /// [`Membership::Exactly`], a profile build keeps what is stored.
    Stored(String, String),
}

/// Checks the staged packages before they are committed; an `Err` (its
/// text says why) refuses them all and leaves the store unchanged.
pub type Accept<'a> = &'a dyn Fn(&[StagedPackage]) -> Result<(), String>;

/// Options of [`add`].
#[derive(Clone, Debug)]
pub struct AddOptions {
    /// Compressor threads, and directory producers.
    pub threads: usize,
    /// Reading options (limits, special files) for package files; its
    /// `skip_special` applies to directories too.
    pub read: ReadOptions,
    /// Whose signatures `.npk` archives must carry.
    pub trust: Trust,
    /// [`add`]: let an App's `Current` move to an older version;
    /// [`import_image`]: accept an image older than one its trust domain
    /// accepted before.
    pub allow_downgrade: bool,
    /// Accept signed archives whose signature has expired.
    pub allow_expired: bool,
    /// Whom directory imports trust besides root.
    pub source_policy: SourcePolicy,
}

/// An App's `Current` would move to an older version: refused by
/// [`add`] unless downgrades are allowed (a replayed, legitimately signed
/// old package must not quietly become the one that runs).
#[derive(Debug, thiserror::Error)]
#[error(
    "{app}/{to} is older than {app}/{from}, its Current version: adding it would downgrade {app}"
)]
pub struct OlderCurrent {
    /// The App.
    pub app: String,
    /// Its `Current` version now.
    pub from: String,
    /// The older version that would become `Current`.
    pub to: String,
}

/// The precondition that no App's `Current` moves to an older version
/// (Debian ordering, `nexus_store::version`), checked inside the commit.
pub fn no_older_current() -> Precondition {
    Precondition::new("no App's Current moves to an older version", |pending| {
        for change in pending.current_changes()? {
            if let (Some(from), Some(to)) = (change.from, change.to)
                && version::compare(&to, &from).is_lt()
            {
                return Err(StoreError::Refused(Box::new(OlderCurrent {
                    app: change.app,
                    from,
                    to,
                })));
            }
        }
        Ok(())
    })
}

/// Adds every source in one transaction that makes one generation: each
/// package becomes its App's `Current`, unless that would move `Current`
/// to an older version (refused unless `options.allow_downgrade`). System
/// images are refused: see [`import_image`].
pub fn add(
    store: &mut Store,
    sources: &[Source],
    options: AddOptions,
    progress: &dyn Progress,
) -> Result<CommitOutcome, GraftError> {
    let membership = if options.allow_downgrade {
        Membership::Add
    } else {
        Membership::Add.with_precondition(no_older_current())
    };
    add_as(store, sources, options, membership, progress)
}

/// Makes the system image at `path` the live system: one generation of
/// exactly its packages and `Current` choices, committed only if its
/// counter passes the replay check of its signer's trust domain (older
/// refused unless `options.allow_downgrade`). A package archive is refused.
pub fn import_image(
    store: &mut Store,
    path: &Path,
    options: AddOptions,
    progress: &dyn Progress,
) -> Result<CommitOutcome, GraftError> {
    progress.phase("verifying");
    let image = npk::open(
        path,
        &options.trust,
        ArchiveKind::Image,
        options.allow_expired,
        &options.read.limits,
    )?;
    let membership = npk::image_membership(&image, &options.trust, options.allow_downgrade);
    let request = ArchiveRequest {
        path: path.to_path_buf(),
        name: None,
        version: None,
    };
    let total = image.body.blobs.iter().map(|b| b.size).sum::<u64>();
    store.stage_and_commit(options.threads, progress, &membership, |session| {
        progress.start(total, 1);
        let mut contents = Vec::new();
        let mut producer = session.producer()?;
        let staged = npk::stage(&image, &request, &mut producer, &mut contents, progress)?;
        Ok((staged, contents))
    })
}

/// As [`add`], with the new generation's package set formed by
/// `membership` as it is (a profile build makes a generation of exactly
/// its packages).
pub fn add_as(
    store: &mut Store,
    sources: &[Source],
    options: AddOptions,
    membership: Membership,
    progress: &dyn Progress,
) -> Result<CommitOutcome, GraftError> {
    add_checked(store, sources, options, membership, &|_| Ok(()), progress)
}

/// As [`add_as`], with `accept` judging the staged packages (names,
/// versions as the packages state them) before the commit: a profile
/// build checks its version constraints against what was grafted.
pub fn add_checked(
    store: &mut Store,
    sources: &[Source],
    options: AddOptions,
    membership: Membership,
    accept: Accept<'_>,
    progress: &dyn Progress,
) -> Result<CommitOutcome, GraftError> {
    let mut dirs = Vec::new();
    let mut archives = Vec::new();
    let mut npks = Vec::new();
    let mut stored = Vec::new();
    for s in sources {
        match s {
            Source::Stored(name, version) => {
                let row = store
                    .catalog()
                    .package(name, version)?
                    .ok_or_else(|| StoreError::NotFound(format!("{name}/{version}")))?;
                // Its tree as stored: same tree hash, so the commit finds
                // the package rather than inserting it (no content needed).
                let tree = store.catalog().package_tree(&row)?.tree;
                stored.push(StagedPackage {
                    name: row.name,
                    version: row.version,
                    origin: row.origin,
                    metadata: row.metadata,
                    tree,
                    // As it was recorded: taking a stored package again (a
                    // profile build) must not make a restricted one
                    // unrestricted.
                    restricted_to: row.restricted_to,
                });
            }
            Source::Dir(d) => dirs.push(d.clone()),
            Source::Archive(a) => {
                check_overrides(a)?;
                if npk::looks_like_npk(&a.path)? {
                    // Checked (signature, every byte) before anything is
                    // stored: a refused archive costs no store work.
                    progress.phase("verifying");
                    let archive = npk::open(
                        &a.path,
                        &options.trust,
                        ArchiveKind::Package,
                        options.allow_expired,
                        &options.read.limits,
                    )?;
                    npk::check_rename(&archive, a)?;
                    npks.push((a.clone(), archive));
                } else {
                    archives.push(a.clone());
                }
            }
        }
    }
    for d in &dirs {
        names::check_name(&d.name)?;
        names::check_version(&d.version)?;
    }
    progress.phase("scanning");
    let set = DirSet::scan(
        &dirs,
        ScanOptions {
            skip_special: options.read.skip_special,
            policy: options.source_policy,
        },
    )?;
    let mut total: u64 = set.content_bytes();
    for a in &archives {
        total += fs::metadata(&a.path)
            .map_err(|e| GraftError::Io {
                path: a.path.clone(),
                source: e,
            })?
            .len();
    }
    for (_, archive) in &npks {
        total += archive.body.blobs.iter().map(|b| b.size).sum::<u64>();
    }
    let files = set.files() + archives.len() as u64 + npks.len() as u64;
    store.stage_and_commit(options.threads, progress, &membership, |session| {
        progress.start(total, files);
        let (mut staged, mut contents) =
            set.stage(session, options.threads, &|n| progress.advance(n))?;
        let mut producer = session.producer()?;
        for a in &archives {
            staged.push(stage_archive(
                a,
                &options.read,
                &mut producer,
                &mut contents,
                progress,
            )?);
        }
        for (request, archive) in &npks {
            staged.extend(npk::stage(
                archive,
                request,
                &mut producer,
                &mut contents,
                progress,
            )?);
        }
        staged.extend(stored.iter().map(|p| StagedPackage {
            name: p.name.clone(),
            version: p.version.clone(),
            origin: p.origin.clone(),
            metadata: p.metadata.clone(),
            tree: p.tree.clone(),
            restricted_to: p.restricted_to.clone(),
        }));
        accept(&staged).map_err(GraftError::Refused)?;
        Ok((staged, contents))
    })
}

fn check_overrides(a: &ArchiveRequest) -> Result<(), GraftError> {
    if let Some(n) = &a.name {
        names::check_name(n)?;
    }
    if let Some(v) = &a.version {
        names::check_version(v)?;
    }
    Ok(())
}

/// Reads one package file into the store.
fn stage_archive(
    request: &ArchiveRequest,
    options: &ReadOptions,
    producer: &mut Producer<'_>,
    contents: &mut Vec<FileContent>,
    progress: &dyn Progress,
) -> Result<StagedPackage, GraftError> {
    let path = &request.path;
    let file = nexus_store::regular::open_regular(path).map_err(|e| GraftError::Io {
        path: path.clone(),
        source: e,
    })?;
    let mut sink = ProducerSink { producer, contents };
    let naming = Naming {
        file_name: path.file_name().and_then(|n| n.to_str()),
        name: request.name.as_deref(),
        version: request.version.as_deref(),
    };
    let package = read_named_package(SourceFile { file, progress }, &naming, options, &mut sink)
        .map_err(|f| f.at(path))?;
    let name = request.name.clone().unwrap_or(package.name);
    let version = request.version.clone().unwrap_or(package.version);
    let invalid = |e: StoreError| GraftError::Package {
        file: path.clone(),
        problem: Problem::Naming(e.to_string()),
    };
    names::check_name(&name).map_err(invalid)?;
    names::check_version(&version).map_err(invalid)?;
    Ok(StagedPackage {
        name,
        version,
        origin: format!("{}:{}", package.kind, absolute(path).display()),
        metadata: package.metadata.to_string(),
        tree: package.tree,
        // Unsigned formats: root chose the file.
        restricted_to: None,
    })
}

fn absolute(path: &Path) -> PathBuf {
    fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The package file: reports progress, and marks its own read errors so
/// they are not taken for corruption.
struct SourceFile<'p> {
    file: File,
    progress: &'p dyn Progress,
}

impl Read for SourceFile<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self
            .file
            .read(buf)
            .map_err(|e| io::Error::new(e.kind(), SourceError(e)))?;
        self.progress.advance(n as u64);
        Ok(n)
    }
}

/// Stores file contents through a producer of the store's content run.
struct ProducerSink<'a, 's> {
    producer: &'a mut Producer<'s>,
    contents: &'a mut Vec<FileContent>,
}

impl ContentSink for ProducerSink<'_, '_> {
    fn store(&mut self, content: &mut dyn Read, size: u64, entry: &str) -> ReadResult<Hash> {
        let stored = self
            .producer
            .add(content, size, &|_| {})
            .map_err(|e| match e {
                nexus_store::chunker::ChunkError::Io(io) => Failure::from_io(io, entry),
                nexus_store::chunker::ChunkError::Sink(msg) => {
                    Failure::Store(StoreError::Invalid(msg))
                }
            })?;
        check_size(entry, stored.size, size)?;
        let hash = stored.hash;
        self.contents.push(stored);
        Ok(hash)
    }
}

#[cfg(test)]
mod tests {
    use nexus_store::NoProgress;
    use nexus_store::commit::{ExactSet, Restrictions};

    use super::*;

    /// A profile build takes a stored package again as it is
    /// ([`Source::Stored`]): a restricted one stays restricted, or every
    /// build would vouch for it as if root had added it.
    #[test]
    fn a_stored_package_taken_again_keeps_its_restriction() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(src.join("bin")).unwrap();
        fs::write(src.join("bin/tool"), b"tool").unwrap();
        let mut store = Store::init(&dir.path().join("store")).unwrap();
        let add = AddDir {
            path: src,
            name: "aa-app".into(),
            version: "1".into(),
        };
        let set = DirSet::scan(&[add], ScanOptions::default()).unwrap();
        store
            .add_staged_with(1, &NoProgress, |session| {
                let (mut staged, contents) = set.stage(session, 1, &|_| {})?;
                staged[0].restricted_to = Some("aa-*".into());
                Ok::<_, StoreError>((staged, contents))
            })
            .unwrap();
        let options = AddOptions {
            threads: 1,
            read: ReadOptions::default(),
            trust: Trust::Insecure,
            allow_downgrade: false,
            allow_expired: false,
            source_policy: SourcePolicy::default(),
        };
        let membership = Membership::Exactly(ExactSet {
            current: vec!["aa-app/1".into()],
            action: "build".into(),
            restrictions: Restrictions::MostTrusted,
        });
        let stored = Source::Stored("aa-app".into(), "1".into());
        add_as(&mut store, &[stored], options, membership, &NoProgress).unwrap();
        let row = store.installed("aa-app/1").unwrap();
        assert_eq!(row.restricted_to.as_deref(), Some("aa-*"));
    }
}
