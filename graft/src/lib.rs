//! Grafting packages into the Nexus store: Debian `.deb`, Arch/pacman
//! `.pkg.tar.{zst,xz,gz}`, pkgsrc binary `.tgz`, Nix archives (`.nar`,
//! `.nar.xz`, `.nar.zst`), and Nexus's own signed `.npk` (whose format
//! lives in the `nexus-npk` crate; [`npk`] imports it).
//!
//! Layers, from bytes to store:
//!
//! - [`sniff`] recognises a file by content and opens its decompressor;
//! - [`tarstream`] reads a tar stream and [`narstream`] a NAR stream into
//!   format-neutral [`entry::ArchiveEntry`]s (ar members are read by the
//!   `ar` crate in [`deb`]); [`pax`] parses pax records;
//! - [`control`], [`pkginfo`] and [`pkgsrc`] parse each format's metadata;
//!   [`deb`], [`tarpkg`] and [`nar`] put a format together (a NAR's name
//!   and version come from its file's name);
//! - [`entry`] maps archive paths to package paths, and [`builder`] builds
//!   the package tree, refusing traversal, writes through symlinks,
//!   duplicates and bad hard links, whatever the format;
//! - [`package`] is what formats share, including the [`package::ContentSink`]
//!   contents stream into, so the parsing layer runs (and is fuzzed)
//!   without a store;
//! - [`add`] feeds the store: directories and package files in one
//!   transaction, through `Store::add_staged_with`.
//!
//! [`limits`] bounds what a hostile package can make us unpack or hold.
//! The mapping into `App/Version` is documented in README.md and
//! ARCHITECTURE.md.

pub mod add;
pub mod ar;
pub mod builder;
pub mod control;
pub mod deb;
pub mod entry;
pub mod error;
pub mod limits;
pub mod nar;
pub mod narstream;
pub mod npk;
pub mod package;
pub mod pax;
pub mod pkginfo;
pub mod pkgsrc;
pub mod sniff;
pub mod tarpkg;
pub mod tarstream;

#[cfg(test)]
mod tests;

pub use add::{AddOptions, ArchiveRequest, OlderCurrent, Source, add, import_image};
pub use error::{Failure, GraftError, Limit, LimitExceeded, Problem};
pub use limits::Limits;
pub use npk::Trust;
pub use package::{
    ContentSink, HashSink, Kind, Naming, Package, ReadOptions, read_named_package, read_package,
};
