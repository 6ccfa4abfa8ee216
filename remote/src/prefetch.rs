//! `nip prefetch`: the blocks of packages fetched ahead of use into the
//! disk cache, several at once, each verified as any read is.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use nexus_store::read::PackSource;
use nexus_store::{Progress, StoreError};

use crate::source::RemotePacks;

/// Blocks fetched at once.
pub const WIDTH: usize = 4;

/// What a prefetch did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Prefetched {
    /// Remote blocks the packages use.
    pub blocks: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Of which were in the cache already.
    pub cached: u64,
    /// Blocks fetched now.
    pub fetched: u64,
    /// Bytes fetched now.
    pub fetched_bytes: u64,
}

/// The blocks of an access record (`PACK OFFSET LENGTH` lines, as
/// [`crate::source::ACCESS_LOG`] holds), in order, each once; lines that
/// name no pack are refused.
pub fn parse_recorded(text: &str) -> Result<Vec<(String, u64, u32)>, String> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut words = line.split(' ');
        let parsed = (|| {
            let pack = words.next()?;
            let offset = words.next()?.parse().ok()?;
            let len = words.next()?.parse().ok()?;
            (words.next().is_none() && crate::meta::is_pack_name(pack))
                .then(|| (pack.to_string(), offset, len))
        })();
        let block = parsed.ok_or_else(|| format!("line {}: not `PACK OFFSET LENGTH`", n + 1))?;
        if seen.insert(block.clone()) {
            out.push(block);
        }
    }
    Ok(out)
}

/// Fetches every block of `blocks` (pack, offset, length) that is neither
/// local nor cached. The first error is returned once every block was
/// tried.
pub fn prefetch(
    source: &RemotePacks,
    blocks: &[(String, u64, u32)],
    progress: &dyn Progress,
) -> Result<Prefetched, StoreError> {
    let total: u64 = blocks.iter().map(|b| u64::from(b.2)).sum();
    progress.start(total, blocks.len() as u64);
    let next = AtomicUsize::new(0);
    let cached = AtomicU64::new(0);
    let fetched = AtomicU64::new(0);
    let fetched_bytes = AtomicU64::new(0);
    let failure: Mutex<Option<StoreError>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..WIDTH {
            scope.spawn(|| {
                let mut buf = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((pack, offset, len)) = blocks.get(i) else {
                        return;
                    };
                    let len = *len as usize;
                    let outcome = match source.is_local(pack, *offset, len) {
                        Ok(true) => {
                            cached.fetch_add(1, Ordering::Relaxed);
                            Ok(())
                        }
                        Ok(false) => {
                            buf.resize(len, 0);
                            source.read_exact_at(pack, *offset, &mut buf).map(|()| {
                                fetched.fetch_add(1, Ordering::Relaxed);
                                fetched_bytes.fetch_add(len as u64, Ordering::Relaxed);
                            })
                        }
                        Err(e) => Err(e),
                    };
                    if let Err(e) = outcome {
                        let mut first = failure.lock().unwrap_or_else(|p| p.into_inner());
                        first.get_or_insert(e);
                    }
                    progress.advance(len as u64);
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    Ok(Prefetched {
        blocks: blocks.len() as u64,
        bytes: total,
        cached: cached.into_inner(),
        fetched: fetched.into_inner(),
        fetched_bytes: fetched_bytes.into_inner(),
    })
}
