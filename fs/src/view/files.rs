//! File bytes: reading a package's regular file by inode, through the
//! store's one read path ([`nexus_store::read::Reader`]), which verifies
//! every chunk and keeps decoded blocks and chunk layouts in bounded
//! caches.
//!
//! Reads need no handle: package files never change, so the inode alone
//! says what to read, and a transport that skips opens (FUSE once the
//! kernel is told opens need no reply, virtio-fs) reads by inode number.

use nexus_store::catalog::InodeRow;
use nexus_store::read::{Reader, Side};
use nexus_store::tree::InodeType;

use crate::error::{Result, ViewError};

/// Reads up to `size` bytes at `offset` of the regular file `row` (fewer
/// only at the end of the file) and hands them to `consume` where they lie
/// (in the block cache, or a per-thread buffer) instead of copying them.
/// `consume` must not read from the view.
pub(crate) fn read_with<T>(
    reader: &Reader,
    row: &InodeRow,
    offset: u64,
    size: u32,
    consume: impl FnOnce(&[u8]) -> T,
) -> Result<T> {
    match row.kind {
        InodeType::File => {}
        InodeType::Dir => return Err(ViewError::IsDir),
        _ => return Err(ViewError::WrongKind),
    }
    let blob = row
        .blob
        .ok_or_else(|| ViewError::Inconsistent(format!("file inode {} has no content", row.id)))?;
    Ok(reader.read_with(blob, row.size, offset, size, consume)?)
}

/// The verified bytes of the regular file `row` on `side` of offset `at`,
/// at most `limit`, that lie decoded in the store's frame cache (see
/// [`Reader::cached_beside`]); empty for anything else.
pub(crate) fn cached_beside(
    reader: &Reader,
    row: &InodeRow,
    at: u64,
    side: Side,
    limit: u64,
) -> Result<Vec<(u64, nexus_store::read::CachedBytes)>> {
    match (row.kind, row.blob) {
        (InodeType::File, Some(blob)) => Ok(reader.cached_beside(blob, row.size, at, side, limit)?),
        _ => Ok(Vec::new()),
    }
}
