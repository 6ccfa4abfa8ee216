//! Ordering versions as Debian does: the comparison lives in the store
//! (`nexus_store::version`), the lowest crate that needs it (`nip add`
//! refuses to move `Current` to an older version); profiles and their
//! constraints use the same one.

pub use nexus_store::version::compare;
