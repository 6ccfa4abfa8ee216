//! The signed Nexus archive: `.npk` packages (and, with the same format,
//! system images), and the ed25519 key store that decides whom to trust.
//!
//! An archive is self-contained: a header, the chunk data in the store's
//! block format, a body describing the package trees and where each chunk
//! is, and a signed manifest that covers every byte before it
//! (FORMAT.md, section 8). Layers:
//!
//! - [`wire`] encodes and bounds-checks integers and byte strings;
//! - [`manifest`] is the fixed header, manifest and trailer;
//! - [`body`] is the variable part, validated as it is decoded;
//! - [`write`] packs packages of a store; [`read`] opens and verifies;
//! - [`adopt`] makes a throw-away store that serves an image in place;
//! - [`keys`] is the key store shared by `nip key` and `nexus key`;
//! - [`trust`] is the policy signatures are judged by: keys trusted for
//!   packages (of some Apps) or for images (of a trust domain);
//! - [`replay`] keeps image counters going up per trust domain.

pub mod adopt;
pub mod body;
pub mod error;
pub mod keys;
pub mod manifest;
pub mod read;
pub mod replay;
pub mod trust;
pub mod wire;
pub mod write;

pub use error::{FormatError, NpkError, OverLimit, PackageLimit, TrustError};
pub use keys::{CounterRequest, KeyStore, PublicKey, SecretKey};
pub use manifest::{ArchiveKind, Manifest};
pub use read::{Archive, Check, Expiry, Policy, Signer, is_archive};
pub use replay::{Claim, ReplayError};
pub use trust::{AppPattern, Scope, TrustSet, TrustedKey};
pub use write::{Member, WriteOptions, Written, write_archive, write_archive_with_progress};
