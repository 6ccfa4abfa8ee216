//! Who may do what with a merged Index directory: an owner, a group and
//! permission bits derived from the package directories it merges, so that
//! the Index never lists to a user names that `/Programs` would not.
//!
//! # The rule
//!
//! Each source directory is a *gate* ([`Access`]): its owner, group and
//! `rwxrwxrwx` bits (setuid, setgid and sticky are dropped: they mean
//! nothing on a read-only tree of links). A top Index directory (`bin`,
//! `share`…) also takes, for each source, the directories on the way to it
//! inside the package (its root, `usr`, `lib`), each as a gate that lets a
//! class of users do everything if the class may search it and nothing if
//! not ([`Access::to_pass`]): reaching `usr/share` through `/Programs` needs
//! search permission on the package root and `usr`. A deeper directory is
//! only reached through its Index parent, which already holds those gates,
//! so its own sources are enough.
//!
//! The merged directory's access is the [`Access::meet`] of every gate: an
//! owner, group and mode that give **no user more than every gate gives
//! them**, whatever groups that user is in (the Index does not know
//! `/etc/group`). When the gates agree on owner and group, that is the
//! intersection of their bits (`0755 ∩ 0700 = 0700`). When they disagree, a
//! class of the result keeps only the bits every user who may fall in it
//! gets from each gate: another gate's owner may be in any class but the
//! result's owner, and a user may or may not be in a gate's group unless
//! that group is the result's. Of the owners and groups of the two gates,
//! the pair that keeps the most bits is taken (every pair is safe; this one
//! loses the least): a `polkitd:root 0700` directory reached through root's
//! `0755` ones is `polkitd:root 0700` in the Index, so polkitd still lists
//! it and no one else does. Root is never refused by the kernel, whatever
//! the bits.
//!
//! One restrictive source narrows the whole merged directory for everyone,
//! the other Apps' names included: showing less is the safe side, and root
//! chose to add the package. A restricted App's source (a key trusted only
//! for some Apps) is left out instead where it would narrow a directory an
//! unrestricted App has (`add_source` in the index).

/// An owner, a group and permission bits (`rwxrwxrwx`, `& 0o777`): one
/// source directory's, or a merged directory's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Access {
    /// The owner.
    pub uid: u32,
    /// The group.
    pub gid: u32,
    /// Permission bits, `& 0o777`.
    pub perm: u32,
}

/// Every permission of one class (`rwx`).
const ALL: u32 = 0o7;

impl Access {
    /// Root's `0755`: the Index root, and a top directory no App provides.
    pub(crate) const OPEN: Access = Access {
        uid: 0,
        gid: 0,
        perm: 0o755,
    };

    /// A package directory's gate: its owner, group and permission bits,
    /// setuid, setgid and sticky dropped.
    pub(crate) fn of_dir(uid: u32, gid: u32, perm: u32) -> Access {
        Access {
            uid,
            gid,
            perm: perm & 0o777,
        }
    }

    /// The gate this directory is on the way to another: a class that may
    /// search it may do anything below as far as it is concerned, one that
    /// may not may do nothing.
    pub(crate) fn to_pass(self) -> Access {
        let class = |shift: u32| if self.perm >> shift & 1 != 0 { ALL } else { 0 };
        Access {
            perm: class(6) << 6 | class(3) << 3 | class(0),
            ..self
        }
    }

    /// An owner, group and mode that give no user more than `self` and
    /// `other` both give them (see the [module documentation](self)).
    pub(crate) fn meet(self, other: Access) -> Access {
        if self == other {
            return self;
        }
        let candidates = [
            (self.uid, self.gid),
            (self.uid, other.gid),
            (other.uid, self.gid),
            (other.uid, other.gid),
        ];
        let mut best: Option<Access> = None;
        for (uid, gid) in candidates {
            let perm = self.bound(uid, gid) & other.bound(uid, gid);
            // The first of equals wins: `self`'s owner and group, which is
            // the higher-ranked side when a merge folds its sources.
            if best.is_none_or(|b| perm.count_ones() > b.perm.count_ones()) {
                best = Some(Access { uid, gid, perm });
            }
        }
        best.unwrap_or(Access {
            uid: self.uid,
            gid: self.gid,
            perm: 0,
        })
    }

    /// The widest bits a directory owned by `uid` and group `gid` may have
    /// and give no user more than this gate does.
    fn bound(self, uid: u32, gid: u32) -> u32 {
        let owner = self.perm >> 6 & ALL;
        let group = self.perm >> 3 & ALL;
        let other = self.perm & ALL;
        // Whether the gate's owner may be a user of a class of the result
        // other than its owner, and what they would get then.
        let as_gate_owner = if self.uid == uid { ALL } else { owner };
        // The result's owner: the gate's owner class, or, being someone
        // else to the gate, in its group or not (unknown).
        let new_owner = if self.uid == uid {
            owner
        } else {
            group & other
        };
        // A member of the result's group: the gate's owner, or someone in
        // the gate's group (certain when it is the same group) or not.
        let in_group = if self.gid == gid {
            group
        } else {
            group & other
        };
        let new_group = as_gate_owner & in_group;
        // Anyone else: the gate's owner, a member of the gate's group
        // (unless that is the result's group, which they are not in), or
        // neither.
        let in_gate_group = if self.gid == gid { ALL } else { group };
        let new_other = as_gate_owner & in_gate_group & other;
        new_owner << 6 | new_group << 3 | new_other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the kernel grants a user (not root) with `uid` in `groups`
    /// under `access`, as `rwx`.
    fn granted(access: Access, uid: u32, groups: &[u32]) -> u32 {
        if uid == access.uid {
            access.perm >> 6 & ALL
        } else if groups.contains(&access.gid) {
            access.perm >> 3 & ALL
        } else {
            access.perm & ALL
        }
    }

    /// Every user of uids 1–3 in every subset of groups 1–3.
    fn users() -> Vec<(u32, Vec<u32>)> {
        let mut users = Vec::new();
        for uid in 1..=3 {
            for set in 0..8u32 {
                let groups = (1..=3).filter(|g| set >> (g - 1) & 1 != 0).collect();
                users.push((uid, groups));
            }
        }
        users
    }

    /// A gate of uid and gid 1–3 (few, so that they often agree).
    fn gate() -> impl proptest::strategy::Strategy<Value = Access> {
        use proptest::strategy::Strategy;
        (1u32..=3, 1u32..=3, 0u32..0o1000).prop_map(|(uid, gid, perm)| Access { uid, gid, perm })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]

        /// Whatever two gates, the meet grants no user, in any groups,
        /// a bit that either gate refuses them.
        #[test]
        fn the_meet_gives_no_user_more_than_either_gate(a in gate(), b in gate()) {
            let met = a.meet(b);
            for (uid, groups) in users() {
                let got = granted(met, uid, &groups);
                let most = granted(a, uid, &groups) & granted(b, uid, &groups);
                proptest::prop_assert_eq!(
                    got & !most,
                    0,
                    "{:?} meet {:?} = {:?} gives uid {} in {:?} {:o}, more than both ({:o})",
                    a, b, met, uid, groups, got, most
                );
            }
        }
    }

    #[test]
    fn one_owner_and_group_intersect_their_bits() {
        let open = Access::of_dir(0, 0, 0o755);
        let closed = Access::of_dir(0, 0, 0o700);
        assert_eq!(open.meet(closed), closed);
        assert_eq!(closed.meet(open), closed);
        assert_eq!(open.meet(open), open);
        assert_eq!(
            Access::of_dir(0, 0, 0o750).meet(Access::of_dir(0, 0, 0o705)),
            Access::of_dir(0, 0, 0o700)
        );
    }

    #[test]
    fn setuid_setgid_and_sticky_are_dropped() {
        assert_eq!(Access::of_dir(0, 0, 0o7755).perm, 0o755);
    }

    #[test]
    fn a_foreign_owners_private_directory_stays_that_owners() {
        // polkit's `usr/share/polkit-1/rules.d`, reached through root's
        // 0755 package root, `usr`, `share`…
        const POLKITD: u32 = 997;
        let rules = Access::of_dir(POLKITD, 0, 0o700);
        let way = Access::of_dir(0, 0, 0o755).to_pass();
        assert_eq!(way.perm, 0o777);
        assert_eq!(way.meet(rules), rules);
        assert_eq!(rules.meet(way), rules);
        // Merged with another App's root 0755 directory of that name:
        // polkitd keeps listing it, no one else does.
        let other = Access::of_dir(0, 0, 0o755);
        assert_eq!(rules.meet(other), Access::of_dir(POLKITD, 0, 0o500));
    }

    #[test]
    fn owners_that_differ_keep_only_what_holds_for_everyone() {
        // Two owners, both 0755: everyone may list either; only the bits
        // every class has survive (no one may write both).
        let a = Access::of_dir(1, 1, 0o755);
        let b = Access::of_dir(2, 2, 0o755);
        assert_eq!(a.meet(b), Access::of_dir(1, 1, 0o555));
        // A group's directory: the group keeps it, others are out.
        let shared = Access::of_dir(0, 0, 0o755);
        let staff = Access::of_dir(0, 50, 0o750);
        assert_eq!(shared.meet(staff), staff);
    }

    #[test]
    fn a_way_nobody_else_may_search_closes_everything_below() {
        let way = Access::of_dir(0, 0, 0o700).to_pass();
        assert_eq!(way.perm, 0o700);
        let open = Access::of_dir(0, 0, 0o755);
        assert_eq!(way.meet(open), Access::of_dir(0, 0, 0o700));
        // Searchable by others but not listable (0711): passing is enough.
        assert_eq!(Access::of_dir(0, 0, 0o711).to_pass().perm, 0o777);
    }
}
