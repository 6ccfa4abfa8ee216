//! Serving an image in place: a throw-away store whose only pack is the
//! image file itself (linked, never copied) and whose catalog describes the
//! image's packages, so the ordinary mount serves it. Blocks in an archive
//! have the pack block format and chunks are verified by name on every
//! read, exactly as from a pack.

use std::os::unix::fs::symlink;
use std::path::Path;

use nexus_store::commit::{CommitOutcome, ExactSet, Membership, Restrictions, StagedPackage};
use nexus_store::ingest::ContentBatch;
use nexus_store::pack::{ChunkLocation, SealedPack};
use nexus_store::{Store, StoreError};

use crate::error::{NpkError, Result};
use crate::read::Archive;

/// Creates a store in the empty directory `dir` whose one generation is
/// `archive`'s packages, served from the archive file in place.
pub fn adopt(archive: &Archive, dir: &Path) -> Result<(Store, CommitOutcome)> {
    let mut store = Store::init(dir)?;
    // A pack name as the store makes them (32 hex digits), from the root.
    let name = format!("{}.pack", &archive.manifest.root.to_hex()[..32]);
    let image = std::path::absolute(archive.path()).map_err(|e| NpkError::io(archive.path(), e))?;
    let link = store.packs_dir().join(&name);
    symlink(&image, &link).map_err(|e| NpkError::io(&link, e))?;
    let size = std::fs::metadata(&image)
        .map_err(|e| NpkError::io(&image, e))?
        .len();
    let body = &archive.body;
    let written = body
        .chunks
        .iter()
        .map(|c| ChunkLocation {
            hash: c.hash,
            pack: name.as_str().into(),
            offset: c.offset,
            block_len: c.block_len,
            inner: c.inner,
            len: c.len,
        })
        .collect();
    let files = body.file_contents();
    let batch = ContentBatch {
        files,
        packs: vec![SealedPack { name, size }],
        written,
        reused: Default::default(),
        remote: None,
        replaced: Default::default(),
    };
    let staged: Vec<StagedPackage> = body
        .packages
        .iter()
        .map(|p| StagedPackage {
            name: p.name.clone(),
            version: p.version.clone(),
            origin: format!("image:{}", image.display()),
            metadata: p.metadata.clone(),
            tree: p.tree.clone(),
            // An image's signer vouches for the whole system it is,
            // restricted packages as it states them included.
            restricted_to: p.restricted_to.clone(),
        })
        .collect();
    let current = body.current_specs();
    let membership = Membership::Exactly(ExactSet {
        current,
        action: format!("image {}", image.display()),
        restrictions: Restrictions::AsStated,
    });
    let outcome = store
        .commit_batch(&staged, &batch, &membership)
        .map_err(|e: StoreError| NpkError::Store(e))?;
    Ok((store, outcome))
}
