//! What clients still hold: the kernel (or a VM guest's kernel) counts the
//! inodes it has looked up and tells the daemon when it forgets them
//! (`FORGET`). An inode a client still holds may be read at any moment,
//! typically because a program has the file open; its package must not be
//! garbage-collected even when no generation holds it any more.
//!
//! Each client has its own [`Lookups`] (one per FUSE mount, one per guest:
//! a guest cannot forget another's inodes); the view sums them into the
//! packages it publishes as runtime roots, which gc keeps.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

/// The package inodes one client holds, with the kernel's lookup counts.
#[derive(Debug, Default)]
pub struct Lookups {
    /// Inode number → (its package, lookup count).
    held: Mutex<HashMap<u64, (i64, u64)>>,
    /// Shared by every client of a view: bumped whenever an inode starts or
    /// stops being held.
    changes: Arc<AtomicU64>,
}

impl Lookups {
    fn held(&self) -> MutexGuard<'_, HashMap<u64, (i64, u64)>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The client learned inode `ino` of `package` once more (a LOOKUP
    /// reply, a READDIRPLUS entry other than `.` and `..`).
    pub(crate) fn add(&self, ino: u64, package: i64) {
        let mut held = self.held();
        let entry = held.entry(ino).or_insert_with(|| {
            self.changes.fetch_add(1, Ordering::Relaxed);
            (package, 0)
        });
        entry.1 = entry.1.saturating_add(1);
    }

    /// The client forgot `n` lookups of inode `ino` (FORGET); at zero it no
    /// longer holds it. Counts the client never had are ignored.
    pub fn forget(&self, ino: u64, n: u64) {
        let mut held = self.held();
        if let Some(entry) = held.get_mut(&ino) {
            entry.1 = entry.1.saturating_sub(n);
            if entry.1 == 0 {
                held.remove(&ino);
                self.changes.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Inodes held now.
    pub fn len(&self) -> usize {
        self.held().len()
    }

    /// True when the client holds no inode.
    pub fn is_empty(&self) -> bool {
        self.held().is_empty()
    }

    fn packages_into(&self, out: &mut HashSet<i64>) {
        out.extend(self.held().values().map(|(package, _)| *package));
    }
}

/// Every client of one view.
#[derive(Debug, Default)]
pub(crate) struct Clients {
    all: Mutex<Vec<Weak<Lookups>>>,
    changes: Arc<AtomicU64>,
}

impl Clients {
    /// A new client's lookups, counted until it is dropped.
    pub(crate) fn register(&self) -> Arc<Lookups> {
        let lookups = Arc::new(Lookups {
            held: Mutex::default(),
            changes: self.changes.clone(),
        });
        let mut all = self.all.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(&lookups));
        lookups
    }

    /// A number that changes whenever some client starts or stops holding
    /// an inode (or a client goes).
    pub(crate) fn version(&self) -> u64 {
        let clients = self.all.lock().unwrap_or_else(|p| p.into_inner());
        let live = clients.iter().filter(|w| w.strong_count() > 0).count() as u64;
        self.changes
            .load(Ordering::Relaxed)
            .wrapping_add(live << 48)
    }

    /// The packages some client still holds an inode of.
    pub(crate) fn held_packages(&self) -> HashSet<i64> {
        let mut out = HashSet::new();
        let all = self.all.lock().unwrap_or_else(|p| p.into_inner());
        for client in all.iter().filter_map(Weak::upgrade) {
            client.packages_into(&mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packages_are_held_until_every_lookup_is_forgotten() {
        let clients = Clients::default();
        let a = clients.register();
        let b = clients.register();
        a.add(40, 7);
        a.add(40, 7);
        a.add(44, 8);
        b.add(48, 9);
        assert_eq!(clients.held_packages(), HashSet::from([7, 8, 9]));
        a.forget(40, 1);
        a.forget(44, 5);
        assert_eq!(clients.held_packages(), HashSet::from([7, 9]));
        // A client cannot forget what another holds.
        a.forget(48, 10);
        assert_eq!(clients.held_packages(), HashSet::from([7, 9]));
        drop(b);
        a.forget(40, 1);
        assert!(clients.held_packages().is_empty());
        assert!(a.is_empty());
    }
}
