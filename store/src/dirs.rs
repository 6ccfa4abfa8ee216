//! Directories as packages: scanning them, then staging them inside a
//! content run.
//!
//! Scanning comes first and on its own so that a bad tree (a FIFO, an
//! unreadable file) is refused before any content is stored; staging then
//! feeds every file through the run's producers and fills in the content
//! hashes of the scanned trees.

use std::fs;

use crate::commit::StagedPackage;
use crate::error::Result;
use crate::ingest::{FileContent, FileJob, ProgressFn, Session, ingest_files};
use crate::scan::{ScanOptions, ScannedTree, scan_dir};
use crate::store::AddDir;
use crate::tree::InodeKind;

/// A directory scanned from disk, ready to be staged.
struct ScannedDir {
    /// What was asked for: the directory and its NAME/VERSION.
    request: AddDir,
    /// Its tree, with file contents still to be read.
    scanned: ScannedTree,
}

impl ScannedDir {
    fn content_bytes(&self) -> u64 {
        self.scanned
            .sources
            .iter()
            .map(|(inode, _)| file_size(&self.scanned, *inode))
            .sum()
    }
}

fn file_size(s: &ScannedTree, inode: u32) -> u64 {
    match s.tree.inodes[inode as usize].kind {
        InodeKind::File { size, .. } => size,
        _ => 0,
    }
}

/// Directories to import as packages, scanned: the one way a directory
/// comes into the store, whichever importer asked (`Store::add_dirs`, `nip
/// add` mixing directories and package files).
pub struct DirSet {
    dirs: Vec<ScannedDir>,
}

impl DirSet {
    /// Scans every directory of `dirs`, in order, refusing a bad tree
    /// before anything is stored.
    pub fn scan(dirs: &[AddDir], options: ScanOptions) -> Result<DirSet> {
        let dirs = dirs
            .iter()
            .map(|d| {
                Ok(ScannedDir {
                    request: d.clone(),
                    scanned: scan_dir(&d.path, options)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(DirSet { dirs })
    }

    /// Bytes of file content to read (each hard-linked file once).
    pub fn content_bytes(&self) -> u64 {
        self.dirs.iter().map(ScannedDir::content_bytes).sum()
    }

    /// Files to read.
    pub fn files(&self) -> u64 {
        self.dirs
            .iter()
            .map(|d| d.scanned.sources.len() as u64)
            .sum()
    }

    /// Stores the content of the directories in `session` with `threads`
    /// producers, and returns them as packages ready to commit together
    /// with the contents the commit needs.
    pub fn stage(
        &self,
        session: &Session<'_>,
        threads: usize,
        progress: ProgressFn<'_>,
    ) -> Result<(Vec<StagedPackage>, Vec<FileContent>)> {
        stage_dirs(session, &self.dirs, threads, progress)
    }
}

fn stage_dirs(
    session: &Session<'_>,
    dirs: &[ScannedDir],
    threads: usize,
    progress: ProgressFn<'_>,
) -> Result<(Vec<StagedPackage>, Vec<FileContent>)> {
    let mut jobs = Vec::new();
    let mut targets = Vec::new();
    for (p, d) in dirs.iter().enumerate() {
        for (inode, source) in &d.scanned.sources {
            jobs.push(FileJob {
                source: source.clone(),
                size: file_size(&d.scanned, *inode),
            });
            targets.push((p, *inode));
        }
    }
    let files = ingest_files(session, &jobs, threads, progress)?;
    let mut staged: Vec<StagedPackage> = dirs
        .iter()
        .map(|d| {
            let origin =
                fs::canonicalize(&d.request.path).unwrap_or_else(|_| d.request.path.clone());
            StagedPackage {
                name: d.request.name.clone(),
                version: d.request.version.clone(),
                origin: format!("dir:{}", origin.display()),
                metadata: "{}".into(),
                tree: d.scanned.tree.clone(),
                // Root chose the directory: unrestricted.
                restricted_to: None,
            }
        })
        .collect();
    for ((p, inode), content) in targets.iter().zip(&files) {
        if let InodeKind::File { content: slot, .. } =
            &mut staged[*p].tree.inodes[*inode as usize].kind
        {
            *slot = Some(content.hash);
        }
    }
    Ok((staged, files))
}
