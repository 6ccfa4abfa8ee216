//! System profiles and package recipes, written in KDL, and building a
//! generation (and its signed image) from them.
//!
//! - [`profile`] and [`recipe`] are the two schemas, parsed with the `kdl`
//!   crate and checked by [`schema`]'s helpers; every problem is a
//!   [`diag::Diag`], a miette diagnostic that names the file and line and
//!   carries the source span;
//! - [`constraint`] and [`version`] are version constraints and Debian's
//!   version ordering;
//! - [`locate`] finds profiles and recipes by name;
//! - [`trust`] decides whose directories a build may read (no profile or
//!   recipe another user could have planted);
//! - [`fetch`] downloads Debian packages with `apt-get download` into a
//!   cache, each pinned by the SHA256 apt's index gave;
//! - [`script`] runs build scripts in the [`sandbox`] as an unprivileged
//!   build user, after a recipe's pinned fetch ([`cargo`]), and
//!   [`normalise`]s what they output;
//! - [`qemu`] is the one QEMU command line for virtio-fs guests;
//! - [`build`] resolves a profile against the store (reusing what is
//!   stored), grafts the rest through `nexus-graft` and commits a
//!   generation of exactly the profile's packages.

pub mod build;
pub mod cargo;
pub mod constraint;
pub mod diag;
pub mod error;
pub mod fetch;
pub mod locate;
pub mod normalise;
pub mod pins;
pub mod profile;
pub mod qemu;
pub mod recipe;
pub mod sandbox;
pub mod schema;
pub mod script;
pub mod trust;
pub mod version;

pub use build::{BuildOptions, Built, build};
pub use diag::{Diag, SourceFile};
pub use error::{Result, SystemError};
pub use profile::Profile;
pub use recipe::Recipe;
