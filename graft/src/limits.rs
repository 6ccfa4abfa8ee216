//! Limits that keep a hostile package from exhausting memory, disk or time,
//! and the reader that enforces them on decompressed bytes.
//!
//! The limits are per package. A package's unpacked size counts every
//! decompressed byte of its tar members (headers and padding included), so
//! a decompression bomb stops at the limit whatever the sizes its headers
//! claim; a single entry claiming more than what is left is refused before
//! a byte of it is read. Metadata kept in memory (control files,
//! `.PKGINFO`, `+CONTENTS`, pax headers) has fixed, much smaller caps.

use std::cell::Cell;
use std::io::{self, Read};

use crate::error::{Limit, LimitExceeded};

/// Largest metadata file kept in memory (`control`, `.PKGINFO`,
/// `+CONTENTS`, maintainer scripts, ...): 16 MiB, room for the file lists of
/// the largest real packages.
pub const METADATA_FILE_MAX: u64 = 16 << 20;
/// Largest pax extended header or GNU long name record.
pub const EXTENSION_MAX: u64 = 1 << 20;
/// Most names of metadata files a package's metadata lists (a `.deb`'s
/// `control.tar` members, pacman's ignored top-level dot-files): real
/// packages have about ten, and each name is kept, and stored, as text.
pub const METADATA_NAMES_MAX: usize = 256;

/// Records `name` in a package's list of metadata file names, refusing
/// more than [`METADATA_NAMES_MAX`] of what `what` says.
pub fn push_metadata_name(
    names: &mut Vec<String>,
    name: String,
    what: impl FnOnce() -> String,
) -> Result<(), LimitExceeded> {
    if names.len() >= METADATA_NAMES_MAX {
        return Err(LimitExceeded {
            what: what(),
            limit: METADATA_NAMES_MAX as u64,
            raisable: None,
        });
    }
    names.push(name);
    Ok(())
}

/// Memory the xz decoder may use, in KiB (xz -9 needs about 65 MiB).
pub const XZ_MEMORY_KIB: u32 = 256 * 1024;

/// Per-package limits (`nip add --max-unpacked-size`, `--max-entries`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Decompressed bytes of the package's tar streams.
    pub max_unpacked_size: u64,
    /// Archive entries (files, directories, links) of the package.
    pub max_entries: u64,
}

impl Default for Limits {
    /// 8 GiB and one million entries: several times the largest Debian
    /// packages (texlive and game data, about 2 GiB and 150 000 files).
    fn default() -> Self {
        Limits {
            max_unpacked_size: 8 << 30,
            max_entries: 1_000_000,
        }
    }
}

/// What one package has used of its limits so far.
#[derive(Debug)]
pub struct Budget {
    limits: Limits,
    unpacked: Cell<u64>,
    entries: Cell<u64>,
}

impl Budget {
    /// A fresh budget.
    pub fn new(limits: Limits) -> Self {
        Budget {
            limits,
            unpacked: Cell::new(0),
            entries: Cell::new(0),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Counts one more archive entry.
    pub fn entry(&self) -> Result<(), LimitExceeded> {
        let n = self.entries.get() + 1;
        if n > self.limits.max_entries {
            return Err(LimitExceeded {
                what: "the number of entries".into(),
                limit: self.limits.max_entries,
                raisable: Some(Limit::Entries),
            });
        }
        self.entries.set(n);
        Ok(())
    }

    /// Refuses an entry that claims more bytes than the package may still
    /// unpack, before reading any of them.
    pub fn check_claim(&self, entry: &str, size: u64) -> Result<(), LimitExceeded> {
        let left = self
            .limits
            .max_unpacked_size
            .saturating_sub(self.unpacked.get());
        if size > left {
            return Err(self.too_large(format!("entry {entry:?} of {size} bytes")));
        }
        Ok(())
    }

    fn too_large(&self, what: String) -> LimitExceeded {
        LimitExceeded {
            what: format!("{what}: the unpacked size"),
            limit: self.limits.max_unpacked_size,
            raisable: Some(Limit::UnpackedSize),
        }
    }

    fn consume(&self, n: usize) -> Result<(), LimitExceeded> {
        let total = self.unpacked.get().saturating_add(n as u64);
        self.unpacked.set(total);
        if total > self.limits.max_unpacked_size {
            return Err(self.too_large("the package".into()));
        }
        Ok(())
    }
}

/// Counts decompressed bytes against a [`Budget`]; reading past the limit
/// is an error carrying [`LimitExceeded`].
pub struct Metered<'b, R> {
    inner: R,
    budget: &'b Budget,
}

impl<'b, R: Read> Metered<'b, R> {
    /// Meters `inner`.
    pub fn new(inner: R, budget: &'b Budget) -> Self {
        Metered { inner, budget }
    }
}

impl<R: Read> Read for Metered<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.budget
            .consume(n)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(n)
    }
}

/// Counts the bytes read through it.
pub struct Counted<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Counted<R> {
    /// Counts from zero.
    pub fn new(inner: R) -> Self {
        Counted { inner, count: 0 }
    }

    /// Bytes read so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The reader inside.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

/// Reads at most `max` bytes of `reader` into memory; more is a limit error
/// naming `what`.
pub fn read_capped(reader: &mut dyn Read, max: u64, what: &str) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    reader.take(max + 1).read_to_end(&mut out)?;
    if out.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            LimitExceeded {
                what: what.to_string(),
                limit: max,
                raisable: None,
            },
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metered_reader_stops_at_the_limit() {
        let budget = Budget::new(Limits {
            max_unpacked_size: 10,
            max_entries: 2,
        });
        let mut r = Metered::new(&[0u8; 11][..], &budget);
        let mut out = Vec::new();
        let err = r.read_to_end(&mut out).unwrap_err();
        assert!(format!("{err:?}").contains("UnpackedSize"), "{err:?}");
        budget.entry().unwrap();
        budget.entry().unwrap();
        assert!(budget.entry().unwrap_err().raisable == Some(Limit::Entries));
    }

    #[test]
    fn claims_beyond_what_is_left_are_refused() {
        let budget = Budget::new(Limits {
            max_unpacked_size: 100,
            max_entries: 10,
        });
        budget.check_claim("a", 100).unwrap();
        budget.consume(50).unwrap();
        assert!(budget.check_claim("a", 51).is_err());
        budget.check_claim("a", 50).unwrap();
    }

    #[test]
    fn capped_reads_refuse_more() {
        assert_eq!(read_capped(&mut &b"abc"[..], 3, "x").unwrap(), b"abc");
        assert!(read_capped(&mut &b"abcd"[..], 3, "x").is_err());
    }
}
