//! The remote settings of a store, kept in its catalog (`meta`) so that
//! every process reading the store — the mount and virtio-fs daemons,
//! `nip` — uses one cache size and one deadline.

use std::time::Duration;

use nexus_store::catalog::Catalog;

use crate::client::Timeouts;
use crate::error::{RemoteError, Result};

/// `meta` key of the disk cache's limit in bytes.
pub const CACHE_BYTES_KEY: &str = "remote_cache_bytes";
/// `meta` key of the read deadline in milliseconds.
pub const TIMEOUT_MS_KEY: &str = "remote_timeout_ms";
/// The disk cache's limit when none was set: 4 GiB.
pub const DEFAULT_CACHE_BYTES: u64 = 4 << 30;
/// The deadline of an uncached read when none was set.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The smallest cache accepted (a few blocks).
pub const MIN_CACHE_BYTES: u64 = 16 << 20;

/// How a store reads its remotes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RemoteSettings {
    /// Limit of the disk cache, in bytes.
    pub cache_bytes: u64,
    /// Longest an uncached read waits for a remote (retries included)
    /// before it fails (EIO in a mount).
    #[serde(with = "millis")]
    pub timeout: Duration,
}

mod millis {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
}

impl Default for RemoteSettings {
    fn default() -> Self {
        RemoteSettings {
            cache_bytes: DEFAULT_CACHE_BYTES,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl RemoteSettings {
    /// The settings recorded in `catalog` (defaults for what is not).
    pub fn load(catalog: &Catalog) -> Result<RemoteSettings> {
        let mut s = RemoteSettings::default();
        if let Some(v) = catalog.meta(CACHE_BYTES_KEY)? {
            s.cache_bytes = v.parse().map_err(|_| bad(CACHE_BYTES_KEY, &v))?;
        }
        if let Some(v) = catalog.meta(TIMEOUT_MS_KEY)? {
            s.timeout = Duration::from_millis(v.parse().map_err(|_| bad(TIMEOUT_MS_KEY, &v))?);
        }
        Ok(s)
    }

    /// Records a new cache limit.
    pub fn set_cache_bytes(catalog: &Catalog, bytes: u64) -> Result<()> {
        if bytes < MIN_CACHE_BYTES {
            return Err(RemoteError::Invalid(format!(
                "a remote cache of {bytes} bytes is too small: at least {} MiB",
                MIN_CACHE_BYTES >> 20
            )));
        }
        Ok(catalog.set_meta(CACHE_BYTES_KEY, &bytes.to_string())?)
    }

    /// Records a new read deadline.
    pub fn set_timeout(catalog: &Catalog, timeout: Duration) -> Result<()> {
        if timeout < Duration::from_millis(100) || timeout > Duration::from_secs(3600) {
            return Err(RemoteError::Invalid(
                "a remote timeout must be between 0.1 s and an hour".into(),
            ));
        }
        Ok(catalog.set_meta(TIMEOUT_MS_KEY, &timeout.as_millis().to_string())?)
    }

    /// The client deadlines these settings give.
    pub fn timeouts(&self) -> Timeouts {
        Timeouts {
            read: self.timeout,
            ..Timeouts::default()
        }
    }
}

fn bad(key: &str, value: &str) -> RemoteError {
    RemoteError::Invalid(format!("catalog meta {key} holds {value:?}, not a number"))
}
