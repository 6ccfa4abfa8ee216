//! Many machines, one store: a generation of a store published to
//! S3-compatible object storage (or a directory a web server mirrors), and
//! pulled by other hosts whose mounts then fetch file contents on first
//! read, by range, whole compressed blocks at a time, verified before they
//! are served or cached (FORMAT.md, "Remotes").
//!
//! - [`location`] — the URL forms and the object store each opens;
//! - `http_client` — the HTTP client under S3 and HTTP remotes: redirects
//!   followed only within the remote's origin;
//! - [`client`] — a synchronous client over object_store with a runtime of
//!   its own: deadlines, retries with backoff, conditional writes;
//! - [`manifest`] — the signed manifest (counter, expiry, metadata hash);
//! - [`meta`] — the metadata object (an image body and a pack table);
//! - [`publish`] — objects first, the manifest last, conditionally;
//! - [`pull`] — the manifest and metadata checked, then one commit;
//! - [`fetcher`] — remote reads from a separate fetcher process, for a
//!   confined daemon that has no network;
//! - [`cache`] — the bounded on-disk cache of verified blocks;
//! - [`source`] — [`RemotePacks`], the pack source a store with remotes
//!   is read through (local packs, then the cache, then the remote);
//! - [`prefetch`] — packages' blocks fetched ahead of use;
//! - [`settings`] — cache size and read deadline, kept in the catalog.
//!
//! This crate alone runs async code (object_store's futures on a small
//! tokio runtime); the store and the file system stay synchronous and know
//! remotes only as another `PackSource`.

pub mod cache;
pub mod client;
pub mod error;
pub mod fetcher;
pub mod file_remote;
mod http_client;
pub mod location;
pub mod manifest;
pub mod meta;
pub mod prefetch;
pub mod publish;
pub mod pull;
pub mod settings;
pub mod source;

use std::path::Path;
use std::sync::Arc;

use nexus_store::catalog::RemoteRow;
use nexus_store::read::{Reader, ReaderOptions};
use nexus_store::{Hash, Store};

pub use error::{RemoteError, Result};
pub use location::{Endpoint, Location};
pub use settings::RemoteSettings;
pub use source::RemotePacks;

/// The object every subscriber reads first: the newest signed manifest.
pub const MANIFEST_KEY: &str = "manifest";

/// The object of the metadata named by `hash`.
pub fn meta_key(hash: &Hash) -> String {
    format!("meta/{}.meta", hash.to_hex())
}

/// The write-once copy of the manifest of counter `counter`.
pub fn history_key(counter: u64) -> String {
    format!("manifests/{counter:020}")
}

/// How to reach a remote the store records.
pub fn endpoint_of(remote: &RemoteRow) -> Result<Endpoint> {
    Ok(Endpoint {
        name: remote.name.clone(),
        location: Location::parse(&remote.url)?,
        endpoint: remote.endpoint.clone(),
        region: remote.region.clone(),
    })
}

/// A reader of the store in `dir` whose packs may live on remotes: local
/// packs are read in place, remote ones through the disk cache.
pub fn open_reader(dir: &Path, options: ReaderOptions) -> Result<(Reader, Arc<RemotePacks>)> {
    let settings = {
        let store = Store::open(dir)?;
        RemoteSettings::load(store.catalog())?
    };
    let source = Arc::new(RemotePacks::open(dir, &settings)?);
    let reader = Reader::with_source(dir, options, source.clone())?;
    Ok((reader, source))
}
