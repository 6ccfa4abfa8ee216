//! A synchronous client of one remote: object_store's futures run on a
//! small runtime of this crate's own, every read bounded by a deadline and
//! retried with backoff inside it.
//!
//! The callers are synchronous (FUSE request threads, the CLI); they must
//! never wait for the network forever. A read gets at most `attempts`
//! tries, each bounded by what is left of `timeout`, with a doubling pause
//! between them; past the deadline it fails, whatever the server does.

use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{
    GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    UpdateVersion,
};
use tokio::runtime::Runtime;

use crate::error::{RemoteError, Result};
use crate::http_client;
use crate::location::{self, Endpoint, Location};

/// How long reads may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Longest a read of one object or range may take, retries included.
    pub read: Duration,
    /// Tries per read (at least 1).
    pub attempts: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            read: Duration::from_secs(10),
            attempts: 3,
        }
    }
}

/// First pause between two tries of a read; it doubles after each.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// The runtime every client shares: two worker threads are plenty for
/// network waits, and it lives as long as the process.
fn runtime() -> Result<Arc<Runtime>> {
    static RUNTIME: Mutex<Option<Arc<Runtime>>> = Mutex::new(None);
    let mut slot = RUNTIME.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(rt) = slot.as_ref() {
        return Ok(rt.clone());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("nexus-remote")
        .enable_all()
        .build()
        .map_err(|e| RemoteError::Invalid(format!("starting the network runtime: {e}")))?;
    let rt = Arc::new(rt);
    *slot = Some(rt.clone());
    Ok(rt)
}

/// An object read whole, with its version tag.
pub struct Fetched {
    /// Its bytes.
    pub bytes: Bytes,
    /// Its ETag (for a conditional replace), when the server gives one.
    pub e_tag: Option<String>,
}

/// What a conditional write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// The object was written.
    Written,
    /// `Create`: an object of that name exists already.
    Exists,
    /// `Replace`: the object is not the version the write was based on.
    Changed,
}

/// How a write treats an object already there.
#[derive(Clone, Debug)]
pub enum WriteMode {
    /// Only if there is none (`If-None-Match: *`).
    Create,
    /// Only if it is still the version with this ETag (`If-Match`).
    Replace(String),
    /// Whatever is there.
    Overwrite,
}

/// One remote's objects.
pub struct Client {
    name: String,
    location: Location,
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    runtime: Arc<Runtime>,
    timeouts: Timeouts,
}

/// Gathers `stream` (of `expected` bytes, as declared) unless it holds
/// more than `max`: then `Err(n)`, `n` the bytes it had reached, of which
/// at most `max` were held.
async fn gather_at_most(
    mut stream: impl futures_util::Stream<Item = object_store::Result<Bytes>> + Unpin,
    expected: u64,
    max: u64,
) -> object_store::Result<std::result::Result<Bytes, u64>> {
    let mut buf = Vec::with_capacity(usize::try_from(expected.min(max)).unwrap_or(0));
    while let Some(part) = stream.next().await {
        let part = part?;
        let reached = (buf.len() + part.len()) as u64;
        if reached > max {
            return Ok(Err(reached));
        }
        buf.extend_from_slice(&part);
    }
    Ok(Ok(Bytes::from(buf)))
}

/// `error`'s message followed by those of its causes that it does not
/// already repeat: object_store's messages stop at the HTTP client's, whose
/// causes say what actually went wrong.
fn with_causes(error: &object_store::Error) -> String {
    let mut message = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(e) = cause {
        let part = e.to_string();
        if !message.contains(&part) {
            message.push_str(": ");
            message.push_str(&part);
        }
        cause = e.source();
    }
    message
}

impl Client {
    /// Opens the remote `endpoint` (no request is made yet).
    pub fn open(endpoint: &Endpoint, timeouts: Timeouts) -> Result<Client> {
        let (store, prefix) = location::open(endpoint, timeouts.read)?;
        Ok(Client {
            name: endpoint.name.clone(),
            location: endpoint.location.clone(),
            store,
            prefix,
            runtime: runtime()?,
            timeouts,
        })
    }

    /// The remote's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where it is.
    pub fn location(&self) -> &Location {
        &self.location
    }

    fn path(&self, key: &str) -> ObjectPath {
        key.split('/')
            .fold(self.prefix.clone(), |path, part| path.join(part))
    }

    fn unavailable(&self, what: &str, why: impl std::fmt::Display) -> RemoteError {
        RemoteError::Unavailable {
            remote: self.name.clone(),
            what: what.to_string(),
            why: why.to_string(),
        }
    }

    /// Runs `attempt` until it succeeds, fails for good, or the read
    /// deadline passes.
    fn with_retries<T, F, Fut>(&self, what: &str, mut attempt: F) -> Result<Option<T>>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = object_store::Result<T>>,
    {
        let deadline = Instant::now() + self.timeouts.read;
        let mut backoff = FIRST_BACKOFF;
        let mut tries = 0;
        loop {
            tries += 1;
            let left = deadline.saturating_duration_since(Instant::now());
            let outcome = self
                .runtime
                .block_on(async { tokio::time::timeout(left, attempt()).await });
            let error = match outcome {
                Ok(Ok(value)) => return Ok(Some(value)),
                Ok(Err(object_store::Error::NotFound { .. })) => return Ok(None),
                Ok(Err(e)) if http_client::refused_redirect(&e) => {
                    // The server's choice, not a passing fault: the same
                    // request would be sent the same way again.
                    return Err(self.unavailable(what, with_causes(&e)));
                }
                Ok(Err(e)) => with_causes(&e),
                Err(_) => format!("no answer within {:.1} s", self.timeouts.read.as_secs_f64()),
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if tries >= self.timeouts.attempts.max(1) || left <= backoff {
                return Err(self.unavailable(what, format!("{error} (after {tries} tries)")));
            }
            tracing::debug!("remote {}: {what}: {error}; trying again", self.name);
            std::thread::sleep(backoff);
            backoff *= 2;
        }
    }

    /// The whole object `key`, or `None` if there is none; an object of
    /// more than `max` bytes is refused (`Malformed`) without holding more
    /// than `max` bytes of it: a server chooses what it answers, and
    /// gathering the whole answer would let it take any amount of memory.
    pub fn get(&self, key: &str, max: u64) -> Result<Option<Fetched>> {
        let path = self.path(key);
        let fetched = self.with_retries(key, || async {
            let result = self.store.get(&path).await?;
            let e_tag = result.meta.e_tag.clone();
            let len = result.range.end.saturating_sub(result.range.start);
            if len > max {
                return Ok(Err(len));
            }
            Ok(gather_at_most(result.into_stream(), len, max)
                .await?
                .map(|bytes| Fetched { bytes, e_tag }))
        })?;
        match fetched {
            None => Ok(None),
            Some(Ok(fetched)) => Ok(Some(fetched)),
            Some(Err(len)) => Err(RemoteError::Malformed {
                remote: self.name.clone(),
                what: key.to_string(),
                why: format!("{len} bytes or more, more than the {max} it may have"),
            }),
        }
    }

    /// The bytes `range` of object `key`, exactly that many: a shorter or
    /// longer answer is an error. An answer is read only until it holds
    /// more than was asked for: the server declares its body's length, and
    /// gathering a body of any declared length would let it take any amount
    /// of memory (as [`Client::get`] bounds whole objects).
    pub fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let path = self.path(key);
        let want = range.end - range.start;
        let fetched = self
            .with_retries(key, || async {
                let options = GetOptions {
                    range: Some(GetRange::Bounded(range.clone())),
                    ..GetOptions::default()
                };
                let result = self.store.get_opts(&path, options).await?;
                gather_at_most(result.into_stream(), want, want).await
            })?
            .ok_or_else(|| self.unavailable(key, "no such object"))?;
        let got = match fetched {
            Ok(bytes) if bytes.len() as u64 == want => return Ok(bytes),
            Ok(bytes) => format!("{}", bytes.len()),
            Err(more) => format!("{more} or more"),
        };
        Err(self.unavailable(
            key,
            format!("asked for {want} bytes at {}, got {got}", range.start),
        ))
    }

    /// Writes object `key` as `mode` says. Not retried (a retried
    /// conditional write could not tell its own first success from
    /// another writer's).
    pub fn put(&self, key: &str, bytes: Bytes, mode: WriteMode) -> Result<Written> {
        let path = self.path(key);
        let mode = match mode {
            WriteMode::Create => PutMode::Create,
            WriteMode::Overwrite => PutMode::Overwrite,
            WriteMode::Replace(e_tag) => PutMode::Update(UpdateVersion {
                e_tag: Some(e_tag),
                version: None,
            }),
        };
        let options = PutOptions {
            mode,
            ..PutOptions::default()
        };
        let result = self.runtime.block_on(self.store.put_opts(
            &path,
            PutPayload::from_bytes(bytes),
            options,
        ));
        match result {
            Ok(_) => Ok(Written::Written),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(Written::Exists),
            Err(object_store::Error::Precondition { .. }) => Ok(Written::Changed),
            Err(e) => Err(self.unavailable(&format!("writing {key}"), e)),
        }
    }

    /// The objects directly under `dir` (`packs`), as (name, size).
    pub fn list(&self, dir: &str) -> Result<Vec<(String, u64)>> {
        let path = self.path(dir);
        let listed = self.runtime.block_on(async {
            let mut stream = self.store.list(Some(&path));
            let mut out = Vec::new();
            while let Some(meta) = stream.next().await {
                let meta = meta?;
                if let Some(name) = meta.location.filename() {
                    out.push((name.to_string(), meta.size));
                }
            }
            Ok::<_, object_store::Error>(out)
        });
        listed.map_err(|e| self.unavailable(&format!("listing {dir}"), e))
    }
}
