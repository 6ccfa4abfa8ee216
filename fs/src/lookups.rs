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
//!
//! A daemon that hands its mount to a successor hands these counts over too
//! ([`HeldInode`]): the kernel still holds the inodes, and the successor
//! must keep their packages served and kept. Changes pass a [`Gate`] that
//! the handover closes while it copies them.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use crate::gate::Gate;

/// One inode a client holds, as a takeover hands it over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldInode {
    /// The inode number.
    pub ino: u64,
    /// The package (catalog id) it belongs to.
    pub package: i64,
    /// The kernel's lookup count.
    pub count: u64,
    /// The directory it was last learned in.
    pub parent: u64,
    /// The name it was last learned under.
    pub name: Vec<u8>,
}

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
    /// Shared by every client of a view: closed while a takeover copies the
    /// counts.
    gate: Arc<Gate>,
}

impl Lookups {
    fn held(&self) -> MutexGuard<'_, HashMap<u64, Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The client learned inode `ino` of `package`, named `name` in
    /// directory `parent`, once more (a LOOKUP reply, a READDIRPLUS entry
    /// other than `.` and `..`).
    pub(crate) fn add(&self, ino: u64, package: i64, parent: u64, name: &[u8]) {
        let _pass = self.gate.enter();
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
        let _pass = self.gate.enter();
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

    /// Every inode held, with its package, count and name, sorted by inode.
    pub fn table(&self) -> Vec<HeldInode> {
        let mut table: Vec<HeldInode> = self
            .held()
            .iter()
            .map(|(&ino, h)| HeldInode {
                ino,
                package: h.package,
                count: h.count,
                parent: h.parent,
                name: h.name.to_vec(),
            })
            .collect();
        table.sort_unstable_by_key(|h| h.ino);
        table
    }
}

/// Every client of one view.
#[derive(Debug, Default)]
pub(crate) struct Clients {
    all: Mutex<Vec<Weak<Lookups>>>,
    changes: Arc<AtomicU64>,
    gate: Arc<Gate>,
}

impl Clients {
    /// A new client's lookups, counted until it is dropped.
    pub(crate) fn register(&self) -> Arc<Lookups> {
        self.register_holding(&[])
    }

    /// A new client that already holds `held` (handed over by the daemon
    /// that served it before).
    pub(crate) fn register_holding(&self, held: &[HeldInode]) -> Arc<Lookups> {
        let table = held
            .iter()
            .filter(|h| h.count > 0)
            .map(|h| {
                let entry = Held {
                    package: h.package,
                    count: h.count,
                    parent: h.parent,
                    name: h.name.clone().into_boxed_slice(),
                };
                (h.ino, entry)
            })
            .collect();
        if !held.is_empty() {
            self.changes.fetch_add(1, Ordering::Relaxed);
        }
        let lookups = Arc::new(Lookups {
            held: Mutex::new(table),
            changes: self.changes.clone(),
            gate: self.gate.clone(),
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

    /// The gate every client's changes pass.
    pub(crate) fn gate(&self) -> &Gate {
        &self.gate
    }

    /// What every client holds, counts summed per inode, sorted by inode.
    pub(crate) fn held_table(&self) -> Vec<HeldInode> {
        let mut sum: HashMap<u64, HeldInode> = HashMap::new();
        let all = self.all.lock().unwrap_or_else(|p| p.into_inner());
        for client in all.iter().filter_map(Weak::upgrade) {
            for held in client.table() {
                match sum.get_mut(&held.ino) {
                    Some(h) => h.count = h.count.saturating_add(held.count),
                    None => {
                        sum.insert(held.ino, held);
                    }
                }
            }
        }
        let mut table: Vec<HeldInode> = sum.into_values().collect();
        table.sort_unstable_by_key(|h| h.ino);
        table
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

    #[test]
    fn a_handed_over_table_is_held_as_it_was() {
        let old = Clients::default();
        let a = old.register();
        a.add(40, 7, 4, b"x");
        a.add(40, 7, 4, b"x");
        a.add(48, 9, 8, b"z");
        let table = a.table();
        assert_eq!(table.len(), 2);
        assert_eq!((table[0].ino, table[0].package, table[0].count), (40, 7, 2));
        assert_eq!((table[1].parent, &table[1].name[..]), (8, &b"z"[..]));
        assert_eq!(old.held_table(), table);
        let new = Clients::default();
        let b = new.register_holding(&table);
        assert_eq!(new.held_packages(), HashSet::from([7, 9]));
        assert_eq!(
            b.orphans(&HashSet::from([7])),
            vec![(8, b"z".to_vec())],
            "names are handed over too"
        );
        b.forget(40, 1);
        assert_eq!(
            new.held_packages(),
            HashSet::from([7, 9]),
            "one lookup left"
        );
        b.forget(40, 1);
        b.forget(48, 1);
        assert!(new.held_packages().is_empty());
    }
}
