//! `CACHE/debs.lock`: the SHA256 and size of every `.deb` in the fetch
//! cache, as apt's signed index gave them when the file was fetched (or
//! first vouched for), so that a file is reused only with those bytes.
//!
//! The format (FORMAT.md, "The .deb cache lock"): a comment line naming
//! the version, then one line per file, sorted by name:
//!
//! ```text
//! # nexus debs.lock v1: SHA256 SIZE FILE
//! 2e6e2f1a...878a 53080 hello_2.10-3_amd64.deb
//! ```
//!
//! It is rewritten whole (a temporary file renamed over it) under the
//! cache's lock.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Result, SystemError};

/// The lock file's name in the cache.
pub const LOCK_FILE: &str = "debs.lock";
/// Its first line.
const HEADER: &str = "# nexus debs.lock v1: SHA256 SIZE FILE";

/// What a `.deb` must be: its SHA256 (lower-case hex) and size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pin {
    /// SHA256, lower-case hex.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// The pins of a cache, by file name.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pins(BTreeMap<String, Pin>);

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SystemError + '_ {
    move |source| SystemError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

impl Pins {
    /// Reads the cache's lock file (none yet: no pins).
    pub fn read(cache: &Path) -> Result<Pins> {
        let path = cache.join(LOCK_FILE);
        // Never through a symlink, and only a file of the caller's that no
        // one else can write: the cache may be shared, and whoever could
        // write this file would choose what counts as pinned.
        let mut file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Pins::default()),
            Err(e) => return Err(io(&path)(e)),
        };
        let meta = file.metadata().map_err(io(&path))?;
        let caller = nix::unistd::geteuid().as_raw();
        if !meta.is_file() || meta.uid() != caller || meta.mode() & 0o022 != 0 {
            return Err(SystemError::DebPin {
                file: path.clone(),
                message: format!(
                    "not a regular file of uid {caller} that only it can write (uid {}, mode {:o}): \
                     it cannot vouch for the cache's files",
                    meta.uid(),
                    meta.mode()
                ),
            });
        }
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(io(&path))?;
        Pins::parse(&path, &text)
    }

    /// Parses the text of a lock file (`path` is named in errors, never
    /// opened); an error names the line. Public for the fuzz target
    /// (`system/fuzz`): [`Pins::read`] is the way to a cache's pins.
    pub fn parse(path: &Path, text: &str) -> Result<Pins> {
        let bad = |line: usize, why: &str| SystemError::DebPin {
            file: path.to_path_buf(),
            message: format!("line {line}: {why}"),
        };
        let mut pins = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            if i == 0 {
                if line != HEADER {
                    return Err(bad(1, "not a v1 debs.lock"));
                }
                continue;
            }
            let mut parts = line.splitn(3, ' ');
            let (Some(sha256), Some(size), Some(name)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(bad(i + 1, "expected SHA256 SIZE FILE"));
            };
            let size = size.parse().map_err(|_| bad(i + 1, "bad size"))?;
            // No control character: a name ending in `\r` (of a line
            // `lines` does not take as `\r\n`) was written back shorter,
            // so the file rewritten pinned another name.
            if !is_sha256(sha256)
                || name.is_empty()
                || name.contains(|c: char| c == '/' || c.is_control())
            {
                return Err(bad(i + 1, "bad hash or file name"));
            }
            pins.insert(
                name.to_string(),
                Pin {
                    sha256: sha256.to_string(),
                    size,
                },
            );
        }
        Ok(Pins(pins))
    }

    /// The text of the lock file holding these pins, as [`Pins::record`]
    /// writes it (and [`Pins::parse`] reads it back).
    pub fn render(&self) -> String {
        let mut text = format!("{HEADER}\n");
        for (name, pin) in &self.0 {
            text.push_str(&format!("{} {} {name}\n", pin.sha256, pin.size));
        }
        text
    }

    /// The pin of file `name`.
    pub fn get(&self, name: &str) -> Option<&Pin> {
        self.0.get(name)
    }

    /// Every pinned file name with its pin, sorted by name: what the cache
    /// was known to hold, which whoever can write the cache cannot add to.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Pin)> {
        self.0.iter().map(|(name, pin)| (name.as_str(), pin))
    }

    /// Records `name`'s pin and rewrites the lock file.
    pub fn record(&mut self, cache: &Path, name: &str, pin: Pin) -> Result<()> {
        self.0.insert(name.to_string(), pin);
        let text = self.render();
        let path = cache.join(LOCK_FILE);
        let mut tmp = tempfile::Builder::new()
            .prefix(".debs.lock.")
            .tempfile_in(cache)
            .map_err(io(cache))?;
        tmp.write_all(text.as_bytes()).map_err(io(tmp.path()))?;
        tmp.as_file().sync_all().map_err(io(&path))?;
        std::fs::set_permissions(
            tmp.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .map_err(io(&path))?;
        tmp.persist(&path).map_err(|e| io(&path)(e.error))?;
        Ok(())
    }
}

/// The SHA256 and size of what `reader` yields, copying it to `sink`.
pub fn hash_copy(mut reader: impl Read, mut sink: impl Write) -> std::io::Result<Pin> {
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        sink.write_all(&buf[..n])?;
        size += n as u64;
    }
    Ok(Pin {
        sha256: hex::encode(hasher.finalize()),
        size,
    })
}

/// The pin of the file at `path`.
pub fn pin_of(path: &Path) -> Result<Pin> {
    let file = File::open(path).map_err(io(path))?;
    hash_copy(file, std::io::sink()).map_err(io(path))
}

/// Checks `path` against `expected`; a difference is refused.
pub fn verify(path: &Path, expected: &Pin) -> Result<()> {
    let actual = pin_of(path)?;
    if &actual == expected {
        Ok(())
    } else {
        Err(SystemError::DebMismatch {
            file: PathBuf::from(path),
            expected_sha256: expected.sha256.clone(),
            actual_sha256: actual.sha256,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_round_trip_and_catch_a_changed_file() {
        let tmp = tempfile::tempdir().unwrap();
        let deb = tmp.path().join("x_1_all.deb");
        std::fs::write(&deb, b"a deb").unwrap();
        let mut pins = Pins::read(tmp.path()).unwrap();
        pins.record(tmp.path(), "x_1_all.deb", pin_of(&deb).unwrap())
            .unwrap();
        let again = Pins::read(tmp.path()).unwrap();
        let pin = again.get("x_1_all.deb").unwrap();
        assert_eq!(pin.size, 5);
        verify(&deb, pin).unwrap();
        std::fs::write(&deb, b"a dev").unwrap();
        assert!(matches!(
            verify(&deb, pin),
            Err(SystemError::DebMismatch { .. })
        ));
        std::fs::write(tmp.path().join(LOCK_FILE), "garbage\n").unwrap();
        assert!(Pins::read(tmp.path()).is_err());
    }

    /// Found by fuzzing (system/fuzz, `pins`): a name ending in `\r` on
    /// the last line (no `\n` after it, so `lines` kept the `\r`) was
    /// written back with a line end that reads as `\r\n`: the rewritten
    /// file pinned another name. Names with control characters are
    /// refused; a file with `\r\n` line ends still reads the same.
    #[test]
    fn a_pin_s_name_reads_back_as_it_was_written() {
        let sha = "2e6e2f1a0007dc43bc91c273fd36e91e40a4f1c2765a03eca68b70a42103878a";
        let path = Path::new("debs.lock");
        for name in [
            "x_1_all.deb\r",
            "x_1\r_all.deb",
            "x_1_all.deb\x1b[2K",
            "x\t.deb",
        ] {
            let text = format!("{HEADER}\n{sha} 5 {name}");
            match Pins::parse(path, &text) {
                Err(SystemError::DebPin { message, .. }) => {
                    assert_eq!(message, "line 2: bad hash or file name", "{name:?}")
                }
                other => panic!("{name:?}: {other:?}"),
            }
        }
        let crlf = format!("{HEADER}\r\n{sha} 5 x_1_all.deb\r\n");
        let pins = Pins::parse(path, &crlf).unwrap();
        assert_eq!(
            pins.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            ["x_1_all.deb"]
        );
        assert_eq!(Pins::parse(path, &pins.render()).unwrap(), pins);
    }
}
