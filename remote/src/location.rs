//! Where a remote is: the URL forms `nip remote add` takes, and the object
//! store each one opens.
//!
//! - `s3://BUCKET[/PREFIX]`: S3 or an S3-compatible server (`--endpoint`),
//!   credentials and region from the usual `AWS_*` environment variables
//!   (the region also from the remote's record);
//! - `https://HOST/PATH`, `http://HOST/PATH`: a read-only mirror, any
//!   static web server holding a copy of the published objects (range
//!   requests are all it needs);
//! - `file:///DIR`: a directory, to publish into and copy elsewhere, or to
//!   read from a mounted file system.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::http::HttpBuilder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, RetryConfig};

use crate::error::{RemoteError, Result};
use crate::http_client::SameOriginConnector;

/// The kind of a remote, from its URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// `s3://BUCKET/PREFIX`.
    S3 {
        /// The bucket.
        bucket: String,
        /// The key prefix inside it (no leading or trailing `/`).
        prefix: String,
    },
    /// `http(s)://…`: a read-only mirror.
    Http {
        /// The base URL (ending in `/`).
        base: String,
    },
    /// `file:///DIR`.
    File {
        /// The directory.
        dir: PathBuf,
    },
}

impl Location {
    /// Parses a remote URL.
    pub fn parse(url: &str) -> Result<Location> {
        let bad = |why: &str| RemoteError::BadUrl {
            url: url.to_string(),
            why: why.to_string(),
        };
        if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(bad("no spaces or control characters"));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty()
                || !bucket
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-".contains(&b))
            {
                return Err(bad(
                    "the bucket name must be lower-case letters, digits, '.' or '-'",
                ));
            }
            let prefix = prefix.trim_matches('/').to_string();
            if prefix.split('/').any(|c| c == "." || c == "..") {
                return Err(bad("the prefix may not hold '.' or '..' components"));
            }
            return Ok(Location::S3 {
                bucket: bucket.to_string(),
                prefix,
            });
        }
        if url.starts_with("http://") || url.starts_with("https://") {
            let host = url.split("://").nth(1).unwrap_or("");
            if host.is_empty() || host.starts_with('/') {
                return Err(bad("no host"));
            }
            let base = if url.ends_with('/') {
                url.to_string()
            } else {
                format!("{url}/")
            };
            return Ok(Location::Http { base });
        }
        if let Some(path) = url.strip_prefix("file://") {
            let dir = PathBuf::from(path);
            if !dir.is_absolute() {
                return Err(bad("a file URL names an absolute directory: file:///DIR"));
            }
            return Ok(Location::File { dir });
        }
        Err(bad(
            "not a remote URL: use s3://BUCKET/PREFIX, https://HOST/PATH, http://HOST/PATH or file:///DIR",
        ))
    }

    /// True for a remote publishing can write to.
    pub fn writable(&self) -> bool {
        !matches!(self, Location::Http { .. })
    }
}

/// How to reach a remote: its URL's location and S3 settings.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// The remote's name, for messages.
    pub name: String,
    /// Where it is.
    pub location: Location,
    /// S3 endpoint URL (an S3-compatible server).
    pub endpoint: Option<String>,
    /// S3 region.
    pub region: Option<String>,
}

/// The object store of `endpoint`, and the prefix objects live under.
/// `connect_timeout` bounds each connection attempt; the object store
/// retries nothing itself (the caller retries within its own deadline).
pub(crate) fn open(
    endpoint: &Endpoint,
    connect_timeout: Duration,
) -> Result<(Arc<dyn ObjectStore>, ObjectPath)> {
    let failed = |e: object_store::Error| RemoteError::Unavailable {
        remote: endpoint.name.clone(),
        what: "opening".into(),
        why: e.to_string(),
    };
    // Large packs are uploaded in one request; reads are bounded by the
    // caller's deadline.
    let request_timeout = Duration::from_secs(600);
    let client = ClientOptions::new()
        .with_connect_timeout(connect_timeout)
        .with_timeout(request_timeout)
        .with_allow_http(true);
    let connector = || SameOriginConnector {
        connect_timeout,
        timeout: request_timeout,
    };
    let no_retries = RetryConfig {
        max_retries: 0,
        ..RetryConfig::default()
    };
    match &endpoint.location {
        Location::S3 { bucket, prefix } => {
            let mut builder = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_client_options(client)
                .with_http_connector(connector())
                .with_retry(no_retries);
            if let Some(url) = &endpoint.endpoint {
                builder = builder.with_endpoint(url).with_allow_http(true);
            }
            let region = endpoint
                .region
                .clone()
                .or_else(|| std::env::var("AWS_REGION").ok())
                .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
                .unwrap_or_else(|| "us-east-1".into());
            builder = builder.with_region(region);
            let store = builder.build().map_err(failed)?;
            Ok((Arc::new(store), ObjectPath::from(prefix.as_str())))
        }
        Location::Http { base } => {
            let store = HttpBuilder::new()
                .with_url(base)
                .with_client_options(client)
                .with_http_connector(connector())
                .with_retry(no_retries)
                .build()
                .map_err(failed)?;
            Ok((Arc::new(store), ObjectPath::default()))
        }
        Location::File { dir } => {
            // Readers never create it: a confined fetcher may not, and a
            // missing directory is a remote with nothing published. The
            // publisher creates it first (`publish`).
            let store = LocalFileSystem::new_with_prefix(dir).map_err(failed)?;
            Ok((Arc::new(store), ObjectPath::default()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_one_kind_of_remote() {
        assert_eq!(
            Location::parse("s3://fleet/nexus/prod/").unwrap(),
            Location::S3 {
                bucket: "fleet".into(),
                prefix: "nexus/prod".into()
            }
        );
        assert_eq!(
            Location::parse("s3://fleet").unwrap(),
            Location::S3 {
                bucket: "fleet".into(),
                prefix: String::new()
            }
        );
        assert_eq!(
            Location::parse("https://mirror.example/nexus").unwrap(),
            Location::Http {
                base: "https://mirror.example/nexus/".into()
            }
        );
        assert!(!Location::parse("http://h/x").unwrap().writable());
        assert_eq!(
            Location::parse("file:///srv/nexus").unwrap(),
            Location::File {
                dir: "/srv/nexus".into()
            }
        );
        for bad in [
            "ftp://x",
            "s3://",
            "s3://Bucket/x",
            "s3://b/../x",
            "file://relative",
            "http://",
            "s3://b/a b",
        ] {
            assert!(Location::parse(bad).is_err(), "{bad}");
        }
    }
}
