//! What clients still hold: the kernel (or a VM guest's kernel) counts the
//! inodes it has looked up and tells the daemon when it forgets them
//! (`FORGET`). An inode a client still holds may be read at any moment,
//! typically because a program has the file open; its package must not be
//! garbage-collected even when no generation holds it any more.
//!
//! Each client has its own [`Lookups`] (one per FUSE mount, one per guest:
//! a guest cannot forget another's inodes); the view sums them into the
//! packages it publishes as runtime roots, which gc keeps.
//!
//! A kernel forgets an inode only when it evicts it, and it keeps unused
//! names cached indefinitely: a name that was in use when a switch
//! invalidated its directory stays cached after the program closed it.
//! So each held inode remembers the name it was learned under, and a FUSE
//! mount drops again, now and then, the names of held inodes whose
//! package the view no longer shows ([`Lookups::orphans`]): the kernel then
//! forgets what no program uses any more, and gc can take it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

/// One inode a client holds.
#[derive(Debug)]
struct Held {
    /// Its package.
    package: i64,
    /// The kernel's lookup count.
    count: u64,
    /// The directory and name it was last learned under.
    parent: u64,
    name: Box<[u8]>,
}

/// The package inodes one client holds, with the kernel's lookup counts.
#[derive(Debug, Default)]
pub struct Lookups {
    /// Inode number → what is held of it.
    held: Mutex<HashMap<u64, Held>>,
    /// Shared by every client of a view: bumped whenever an inode starts or
    /// stops being held.
    changes: Arc<AtomicU64>,
}

impl Lookups {
    fn held(&self) -> MutexGuard<'_, HashMap<u64, Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The client learned inode `ino` of `package`, named `name` in
    /// directory `parent`, once more (a LOOKUP reply, a READDIRPLUS entry
    /// other than `.` and `..`).
    pub(crate) fn add(&self, ino: u64, package: i64, parent: u64, name: &[u8]) {
        let mut held = self.held();
        let entry = held.entry(ino).or_insert_with(|| {
            self.changes.fetch_add(1, Ordering::Relaxed);
            Held {
                package,
                count: 0,
                parent,
                name: Box::default(),
            }
        });
        entry.count = entry.count.saturating_add(1);
        if *entry.name != *name || entry.parent != parent {
            entry.parent = parent;
            entry.name = name.into();
        }
    }

    /// The client forgot `n` lookups of inode `ino` (FORGET); at zero it no
    /// longer holds it. Counts the client never had are ignored.
    pub fn forget(&self, ino: u64, n: u64) {
        let mut held = self.held();
        if let Some(entry) = held.get_mut(&ino) {
            entry.count = entry.count.saturating_sub(n);
            if entry.count == 0 {
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
        out.extend(self.held().values().map(|h| h.package));
    }

    /// `(directory, name)` of the held inodes whose package is not in
    /// `shown`: names a client may have kept cached though no program uses
    /// them (see the module documentation), for a transport that can tell
    /// the client to drop them.
    pub fn orphans(&self, shown: &HashSet<i64>) -> Vec<(u64, Vec<u8>)> {
        self.held()
            .values()
            .filter(|h| !shown.contains(&h.package))
            .map(|h| (h.parent, h.name.to_vec()))
            .collect()
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
        a.add(40, 7, 4, b"x");
        a.add(40, 7, 4, b"x");
        a.add(44, 8, 4, b"y");
        b.add(48, 9, 8, b"z");
        assert_eq!(
            a.orphans(&HashSet::from([7])),
            vec![(4, b"y".to_vec())],
            "held inodes of packages not shown"
        );
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
