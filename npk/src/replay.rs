//! Image replay protection: every system image carries a signed counter,
//! and a store accepts, in each trust domain, no counter lower than the
//! highest it has accepted there, and that highest one only for the same
//! content (root hash). Counters are kept per domain, not per key, so an
//! older image signed by a second key of the domain (during a key
//! rotation, say) is refused as well.
//!
//! The record is the catalog's `meta` row `image_counter:DOMAIN`, value
//! `COUNTER ROOTHEX`. It is checked and written by a
//! [`nexus_store::commit::Precondition`] inside the very transaction that
//! makes the image's generation (`nexus switch`), or that records nothing
//! else (serving an image in place), so two imports racing cannot both
//! pass. Format-1 stores kept counters per signing key (`image_counter:`
//! and the key's 16-digit id, value `COUNTER`): while a domain has no
//! record of its own, the highest of those of its keys stands in for it.

use nexus_store::commit::{Membership, Precondition};
use nexus_store::ingest::ContentBatch;
use nexus_store::{Hash, Store, StoreError};

use crate::error::Result;
use crate::manifest::ArchiveKind;
use crate::read::{Archive, Signer};
use crate::trust::TrustSet;

/// The `meta` key of a trust domain's highest image counter.
pub fn meta_key(domain: &str) -> String {
    format!("image_counter:{domain}")
}

/// The length of a format-1 key id (the `meta` key of its counter).
const LEGACY_ID_LEN: usize = 16;

/// The highest counter a store accepted in a domain, and what it named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    /// The counter.
    pub counter: u64,
    /// The image's root hash (`None` in a format-1 record).
    pub root: Option<Hash>,
}

impl Recorded {
    /// Parses `COUNTER ROOTHEX`, or a format-1 `COUNTER`.
    pub fn parse(text: &str) -> Option<Recorded> {
        let mut words = text.split(' ');
        let counter = words.next()?.parse().ok()?;
        let root = match words.next() {
            Some(hex) => Some(Hash::from_hex(hex)?),
            None => None,
        };
        words.next().is_none().then_some(Recorded { counter, root })
    }

    /// The `meta` value.
    pub fn encode(&self) -> String {
        match self.root {
            Some(root) => format!("{} {}", self.counter, root.to_hex()),
            None => self.counter.to_string(),
        }
    }
}

/// Why an image was refused as a replay.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// Older than an image accepted before.
    #[error(
        "image counter {counter} is lower than {highest}, the highest this store has accepted in trust domain {domain}: an older or replayed image"
    )]
    Older {
        /// The trust domain.
        domain: String,
        /// The image's counter.
        counter: u64,
        /// The highest accepted.
        highest: u64,
    },
    /// Same counter as the image accepted, other content.
    #[error(
        "image counter {counter} was accepted in trust domain {domain} already for other content (root {recorded}; this image's is {root}): two images signed with one counter"
    )]
    Conflict {
        /// The trust domain.
        domain: String,
        /// The counter both carry.
        counter: u64,
        /// This image's root hash.
        root: Hash,
        /// The accepted image's root hash.
        recorded: Hash,
    },
}

/// What an image claims, for the replay check.
#[derive(Clone, Debug)]
pub struct Claim {
    /// The trust domain of its signer.
    pub domain: String,
    /// Its counter.
    pub counter: u64,
    /// Its root hash.
    pub root: Hash,
    /// Format-1 ids of the domain's keys (their per-key records stand in
    /// for a domain record not written yet).
    legacy_ids: Vec<String>,
}

impl Claim {
    /// The claim of `archive`, an image signed by a key of `trust` trusted
    /// for images; `None` for a package or an unverified (insecure) image,
    /// which have no domain to check against.
    pub fn of(archive: &Archive, trust: &TrustSet) -> Option<Claim> {
        if archive.manifest.kind != ArchiveKind::Image {
            return None;
        }
        let Signer::Trusted(grant) = &archive.signer else {
            return None;
        };
        let domain = grant.domain()?.to_string();
        let legacy_ids = trust
            .domain_keys(&domain)
            .map(|k| k.id()[..LEGACY_ID_LEN].to_string())
            .collect();
        Some(Claim {
            domain,
            counter: archive.manifest.counter,
            root: archive.manifest.root,
            legacy_ids,
        })
    }

    /// The claim of another signed statement about a whole system (a
    /// remote's manifest): counter `counter` for root `root` in `domain`,
    /// whose keys in `trust` may have format-1 records.
    pub fn new(domain: &str, counter: u64, root: Hash, trust: &TrustSet) -> Claim {
        Claim {
            domain: domain.to_string(),
            counter,
            root,
            legacy_ids: trust
                .domain_keys(domain)
                .map(|k| k.id()[..LEGACY_ID_LEN].to_string())
                .collect(),
        }
    }

    /// The domain's record, read through `meta`.
    pub fn recorded(
        &self,
        meta: impl Fn(&str) -> nexus_store::Result<Option<String>>,
    ) -> nexus_store::Result<Option<Recorded>> {
        let parse = |key: &str, value: String| {
            Recorded::parse(&value).ok_or_else(|| {
                StoreError::Invalid(format!(
                    "catalog meta {key} holds {value:?}, not an image counter"
                ))
            })
        };
        let key = meta_key(&self.domain);
        if let Some(value) = meta(&key)? {
            return parse(&key, value).map(Some);
        }
        let mut highest: Option<Recorded> = None;
        for id in &self.legacy_ids {
            let key = meta_key(id);
            if let Some(value) = meta(&key)? {
                let r = parse(&key, value)?;
                if highest.as_ref().is_none_or(|h| r.counter > h.counter) {
                    highest = Some(r);
                }
            }
        }
        Ok(highest)
    }

    /// Judges the claim against `recorded`: `Ok(Some(new))` to record,
    /// `Ok(None)` when the record stays as it is, or why it is refused.
    /// `allow_downgrade` accepts what would be refused, without lowering
    /// the record.
    pub fn judge(
        &self,
        recorded: Option<&Recorded>,
        allow_downgrade: bool,
    ) -> Result<Option<Recorded>, ReplayError> {
        let new = Recorded {
            counter: self.counter,
            root: Some(self.root),
        };
        let Some(r) = recorded else {
            return Ok(Some(new));
        };
        if self.counter > r.counter {
            return Ok(Some(new));
        }
        if self.counter < r.counter {
            if allow_downgrade {
                return Ok(None);
            }
            return Err(ReplayError::Older {
                domain: self.domain.clone(),
                counter: self.counter,
                highest: r.counter,
            });
        }
        match r.root {
            // The same image again.
            Some(root) if root == self.root => Ok(None),
            Some(_) if allow_downgrade => Ok(None),
            Some(recorded) => Err(ReplayError::Conflict {
                domain: self.domain.clone(),
                counter: self.counter,
                root: self.root,
                recorded,
            }),
            // A format-1 record knew no content: from now on it does.
            None => Ok(Some(new)),
        }
    }

    /// The check as a precondition of the commit that accepts the image.
    pub fn precondition(self, allow_downgrade: bool) -> Precondition {
        Precondition::new(
            format!("image counter {} in domain {}", self.counter, self.domain),
            move |pending| {
                let recorded = self.recorded(|key| pending.meta(key))?;
                let verdict = self
                    .judge(recorded.as_ref(), allow_downgrade)
                    .map_err(|e| StoreError::Refused(Box::new(e)))?;
                if let Some(new) = verdict {
                    pending.set_meta(&meta_key(&self.domain), &new.encode())?;
                }
                Ok(())
            },
        )
    }
}

/// Checks `claim` against `store`'s record and records it (an image served
/// in place, not imported, still advances its domain), in one transaction
/// that changes nothing else.
pub fn record(store: &mut Store, claim: Claim, allow_downgrade: bool) -> Result<()> {
    let membership = Membership::Add.with_precondition(claim.precondition(allow_downgrade));
    store.commit_batch(&[], &ContentBatch::default(), &membership)?;
    Ok(())
}

/// Checks `claim` against `store`'s record without recording anything.
pub fn check(
    store: &Store,
    claim: &Claim,
    allow_downgrade: bool,
) -> Result<Result<(), ReplayError>> {
    let recorded = claim.recorded(|key| store.catalog().meta(key))?;
    Ok(claim.judge(recorded.as_ref(), allow_downgrade).map(|_| ()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(domain: &str, counter: u64, root: &[u8]) -> Claim {
        Claim {
            domain: domain.into(),
            counter,
            root: Hash::of(root),
            legacy_ids: vec!["0123456789abcdef".into()],
        }
    }

    fn recorded(store: &Store, c: &Claim) -> Option<Recorded> {
        c.recorded(|k| store.catalog().meta(k)).unwrap()
    }

    #[test]
    fn counters_go_up_per_domain_and_one_counter_names_one_image() {
        let d = tempfile::tempdir().unwrap();
        let mut store = Store::init(d.path()).unwrap();
        record(&mut store, claim("fleet", 5, b"five"), false).unwrap();
        assert_eq!(
            recorded(&store, &claim("fleet", 0, b"")),
            Some(Recorded {
                counter: 5,
                root: Some(Hash::of(b"five"))
            })
        );
        // Older: refused, also when allowed the record stays at 5.
        let older = record(&mut store, claim("fleet", 4, b"four"), false);
        assert!(
            matches!(&older, Err(crate::NpkError::Store(StoreError::Refused(e)))
                if matches!(e.downcast_ref::<ReplayError>(), Some(ReplayError::Older { highest: 5, .. }))),
            "{older:?}"
        );
        record(&mut store, claim("fleet", 4, b"four"), true).unwrap();
        // The same image again: accepted. Same counter, other content: not.
        record(&mut store, claim("fleet", 5, b"five"), false).unwrap();
        let conflict = record(&mut store, claim("fleet", 5, b"other"), false);
        assert!(
            matches!(&conflict, Err(crate::NpkError::Store(StoreError::Refused(e)))
                if matches!(e.downcast_ref::<ReplayError>(), Some(ReplayError::Conflict { .. }))),
            "{conflict:?}"
        );
        // Another domain has its own counter.
        record(&mut store, claim("lab", 1, b"lab"), false).unwrap();
        record(&mut store, claim("fleet", 6, b"six"), false).unwrap();
        assert_eq!(
            recorded(&store, &claim("fleet", 0, b"")).unwrap().counter,
            6
        );
        assert_eq!(recorded(&store, &claim("lab", 0, b"")).unwrap().counter, 1);
        // Nothing but meta was written: no generation.
        assert_eq!(store.catalog().current_generation().unwrap(), None);
    }

    #[test]
    fn format_1_per_key_records_stand_in_for_a_new_domain() {
        let d = tempfile::tempdir().unwrap();
        let mut store = Store::init(d.path()).unwrap();
        // A format-1 store accepted counter 7 from the key 0123456789abcdef.
        let format_1 = Precondition::new("a format-1 record", |pending| {
            pending.set_meta("image_counter:0123456789abcdef", "7")
        });
        store
            .commit_batch(
                &[],
                &ContentBatch::default(),
                &Membership::Add.with_precondition(format_1),
            )
            .unwrap();
        let c = claim("images", 6, b"six");
        assert_eq!(recorded(&store, &c).unwrap().counter, 7);
        assert!(check(&store, &c, false).unwrap().is_err());
        assert!(
            check(&store, &claim("images", 8, b"eight"), false)
                .unwrap()
                .is_ok()
        );
        // The first record of the domain is its own, with the content.
        record(&mut store, claim("images", 7, b"seven"), false).unwrap();
        let own = recorded(&store, &c).unwrap();
        assert_eq!(own.root, Some(Hash::of(b"seven")));
        assert_eq!(Recorded::parse(&own.encode()), Some(own));
        assert_eq!(Recorded::parse("7").unwrap().root, None);
        for bad in ["", "x", "1 zz", "1 2 3"] {
            assert_eq!(Recorded::parse(bad), None, "{bad:?}");
        }
    }
}
