//! The daemon's catalog connections, opened again once it is confined, so
//! that it then holds no descriptor that writes the catalog, its WAL or the
//! WAL index (nor a mapping of the index that writes it, which SQLite keeps
//! only while it holds the index's descriptor):
//! Landlock grants it reading them only, but checks a path when it is
//! opened, not a descriptor opened before, and a descriptor open for
//! writing is a way around it (see `Reader::disconnect_catalog` for where
//! SQLite leaves such descriptors).

use std::collections::HashSet;
use std::ffi::OsString;
use std::os::fd::RawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use nexus_remote::RemotePacks;
use nexus_store::read::Reader;

/// The descriptors of this process open on the catalog, its WAL or the WAL
/// index, listed before confinement (when `/proc/self/fd` can still be
/// read).
#[derive(Debug)]
pub struct CatalogDescriptors {
    fds: Vec<RawFd>,
    /// Device and inode of the catalog, of its WAL and of the WAL index.
    files: HashSet<(u64, u64)>,
}

impl CatalogDescriptors {
    /// Lists them for the store in `store`.
    pub fn list(store: &Path) -> Result<CatalogDescriptors> {
        let mut files = HashSet::new();
        for suffix in ["", "-wal", "-shm"] {
            let mut name = OsString::from(nexus_store::CATALOG_FILE);
            name.push(suffix);
            if let Ok(meta) = std::fs::metadata(store.join(name)) {
                files.insert((meta.dev(), meta.ino()));
            }
        }
        let mut fds = Vec::new();
        let dir = std::fs::read_dir("/proc/self/fd").context("listing /proc/self/fd")?;
        for entry in dir.flatten() {
            let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            // Without asking a file system server (`AT_STATX_DONT_SYNC`): a
            // descriptor may be on a FUSE mount of this very daemon, not
            // serving yet (the kernel view's).
            let identity = rustix::fs::statx(
                rustix::fs::CWD,
                entry.path(),
                rustix::fs::AtFlags::STATX_DONT_SYNC,
                rustix::fs::StatxFlags::INO,
            )
            .map(|s| {
                (
                    rustix::fs::makedev(s.stx_dev_major, s.stx_dev_minor),
                    s.stx_ino,
                )
            });
            if identity.is_ok_and(|id| files.contains(&id)) {
                fds.push(fd);
            }
        }
        Ok(CatalogDescriptors { fds, files })
    }

    /// Those of them still open on the catalog, its WAL or the WAL index
    /// for writing.
    fn writable(&self) -> Vec<RawFd> {
        self.fds
            .iter()
            .copied()
            .filter(|&fd| {
                // SAFETY: fcntl and fstat on a descriptor number only read
                // its flags and status; a closed one fails with EBADF.
                let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
                if flags < 0 || flags & libc::O_ACCMODE == libc::O_RDONLY {
                    return false;
                }
                let mut st: libc::stat = unsafe { std::mem::zeroed() };
                (unsafe { libc::fstat(fd, &mut st) }) == 0
                    && self.files.contains(&(st.st_dev, st.st_ino))
            })
            .collect()
    }
}

/// Closes every catalog connection of the daemon (the reader's and the
/// remote source's), then opens them again: called confined, SQLite opens
/// the catalog and its WAL read-only. `before` are the descriptors listed
/// before confinement; fails if one of them still writes the catalog.
pub fn reopen(
    reader: &Reader,
    source: Option<&RemotePacks>,
    before: &CatalogDescriptors,
) -> Result<()> {
    nexus_store::catalog::check_access_as_effective_user()?;
    let count = reader.disconnect_catalog();
    if let Some(source) = source {
        source.disconnect_catalog();
        source
            .connect_catalog()
            .context("opening the remote source's catalog connection again")?;
    }
    reader
        .connect_catalog(count.max(1))
        .context("opening the catalog connections again")?;
    let writable = before.writable();
    if !writable.is_empty() {
        bail!(
            "descriptors {writable:?} still write the catalog after its connections were \
             opened again: refusing to serve with them"
        );
    }
    Ok(())
}
