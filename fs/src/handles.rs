//! Directory handles: listings a client opened, held until it releases
//! them, bounded in number and in bytes.
//!
//! A handle keeps the listing it was opened with (the root's and an App's
//! change with the generation, and a client reads a listing in pieces by
//! offset). Listings of package directories are shared with the view's
//! cache, but each handle counts the bytes of its listing against its
//! owner's limit and against an optional budget shared by several owners
//! (every guest of one daemon): a client cannot make the daemon hold more
//! than that, however many times it opens a large directory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::attr::Listing;
use crate::error::{Result, ViewError};
use crate::view::listing_weight;

/// How much one owner's handles may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandleLimits {
    /// Handles open at once.
    pub handles: usize,
    /// Bytes of listings (as [`listing_weight`] counts them) held at once.
    pub bytes: u64,
}

/// Bytes of listings held by the handles of several owners together.
#[derive(Debug)]
pub struct HandleBudget {
    used: AtomicU64,
    limit: u64,
}

impl HandleBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Arc<HandleBudget> {
        Arc::new(HandleBudget {
            used: AtomicU64::new(0),
            limit,
        })
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    fn take(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&n| n <= self.limit)
            })
            .is_ok()
    }

    fn give(&self, bytes: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(bytes))
            });
    }
}

#[derive(Default)]
struct Open {
    listings: HashMap<u64, (Arc<Listing>, u64)>,
    bytes: u64,
}

/// One owner's directory handles.
pub struct DirHandles {
    open: Mutex<Open>,
    next: AtomicU64,
    limits: HandleLimits,
    budget: Option<Arc<HandleBudget>>,
}

impl DirHandles {
    /// Handles within `limits`, counted against `budget` too if given.
    pub fn new(limits: HandleLimits, budget: Option<Arc<HandleBudget>>) -> DirHandles {
        DirHandles {
            open: Mutex::new(Open::default()),
            next: AtomicU64::new(1),
            limits,
            budget,
        }
    }

    fn open_handles(&self) -> MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds `listing` under a new handle; [`ViewError::TooManyOpen`] when
    /// that would exceed the limits or the budget.
    pub fn open(&self, listing: Arc<Listing>) -> Result<u64> {
        let bytes = listing_weight(&listing);
        let mut open = self.open_handles();
        if open.listings.len() >= self.limits.handles
            || open.bytes.saturating_add(bytes) > self.limits.bytes
        {
            return Err(ViewError::TooManyOpen);
        }
        if let Some(budget) = &self.budget
            && !budget.take(bytes)
        {
            return Err(ViewError::TooManyOpen);
        }
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        open.bytes += bytes;
        open.listings.insert(fh, (listing, bytes));
        Ok(fh)
    }

    /// The listing of handle `fh`.
    pub fn get(&self, fh: u64) -> Result<Arc<Listing>> {
        self.open_handles()
            .listings
            .get(&fh)
            .map(|(listing, _)| listing.clone())
            .ok_or(ViewError::BadHandle(fh))
    }

    /// Releases handle `fh` (unknown handles are ignored).
    pub fn release(&self, fh: u64) {
        let mut open = self.open_handles();
        if let Some((_, bytes)) = open.listings.remove(&fh) {
            open.bytes -= bytes;
            if let Some(budget) = &self.budget {
                budget.give(bytes);
            }
        }
    }

    /// Handles open now, and the bytes they hold.
    pub fn usage(&self) -> (usize, u64) {
        let open = self.open_handles();
        (open.listings.len(), open.bytes)
    }
}

impl Drop for DirHandles {
    /// An owner that goes (a guest disconnecting) gives its bytes back.
    fn drop(&mut self) {
        let open = self.open_handles();
        if let Some(budget) = &self.budget {
            budget.give(open.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attr::{Attr, Entry, Kind};

    fn listing(entries: usize) -> Arc<Listing> {
        let attr = Attr {
            ino: 4,
            kind: Kind::File,
            perm: 0o644,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: 0,
            nlink: 1,
            immutable: true,
        };
        Arc::new(Listing {
            entries: (0..entries)
                .map(|i| Entry {
                    name: format!("name-{i}").into_bytes(),
                    attr: attr.clone(),
                    immutable: true,
                })
                .collect(),
            immutable: true,
        })
    }

    #[test]
    fn handles_are_bounded_by_count_bytes_and_a_shared_budget() {
        let big = listing(1000);
        let weight = listing_weight(&big);
        let budget = HandleBudget::new(weight * 5);
        let limits = HandleLimits {
            handles: 4,
            bytes: weight * 3,
        };
        let a = DirHandles::new(limits, Some(budget.clone()));
        let b = DirHandles::new(limits, Some(budget.clone()));
        let held: Vec<u64> = (0..3).map(|_| a.open(big.clone()).unwrap()).collect();
        assert!(
            matches!(a.open(big.clone()), Err(ViewError::TooManyOpen)),
            "bytes"
        );
        b.open(big.clone()).unwrap();
        b.open(big.clone()).unwrap();
        assert!(
            matches!(b.open(big.clone()), Err(ViewError::TooManyOpen)),
            "budget"
        );
        a.release(held[0]);
        assert!(matches!(a.get(held[0]), Err(ViewError::BadHandle(_))));
        b.open(big.clone()).unwrap();
        assert_eq!(budget.used(), weight * 5);
        drop(a);
        assert_eq!(budget.used(), weight * 3, "a gone: its bytes come back");
        let small = DirHandles::new(
            HandleLimits {
                handles: 2,
                bytes: u64::MAX,
            },
            None,
        );
        small.open(listing(1)).unwrap();
        small.open(listing(1)).unwrap();
        assert!(
            matches!(small.open(listing(1)), Err(ViewError::TooManyOpen)),
            "count"
        );
    }
}
