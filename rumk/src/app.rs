//! What the guest does once the FUSE session is up: list the programs at
//! the root of the view, then read every file named on the command line
//! and verify the BLAKE3 of all its bytes against the hash the store
//! recorded (`user.nexus.blake3`, 64 lowercase hex digits). A file that
//! fails is reported and its bytes are dropped unused.
//!
//! Console lines (one per event, `RUMK ` first, stable for the tests):
//! `RUMK apps: A B ...`, `RUMK ok PATH SIZE HASH`, `RUMK FAIL PATH: WHY`,
//! `RUMK done: N verified, M failed`.

use core::fmt;

use crate::exit::Status;
use crate::fuse::{self, Channel, Entry, S_IFDIR, S_IFLNK, S_IFREG, Session};
use crate::{print, println};

/// The attribute holding a regular file's recorded BLAKE3.
const HASH_XATTR: &[u8] = b"user.nexus.blake3";
/// Symbolic links followed in one path walk before giving up (as Linux).
const MAX_LINKS: usize = 40;
/// The longest path walked, links expanded.
const MAX_PATH: usize = 4096;
/// Node ids one walk may hold lookups on (each one is forgotten after).
const MAX_HELD: usize = 128;
/// Entries per READDIRPLUS reply whose lookups are forgotten (a 64 KiB
/// reply holds fewer than 440).
const MAX_BATCH: usize = 512;

/// Bytes shown as UTF-8 where they are, `\xNN` elsewhere.
struct Show<'a>(&'a [u8]);

impl fmt::Display for Show<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            for c in chunk.valid().chars() {
                if c.is_control() {
                    write!(f, "\\x{:02x}", c as u32)?;
                } else {
                    write!(f, "{c}")?;
                }
            }
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

/// Why one file was not verified.
enum Failure {
    Fuse(fuse::Error),
    NotFound,
    NotAFile,
    NotADirectory,
    TooManyLinks,
    AbsoluteLink,
    PathTooLong,
    NoHash,
    BadHash,
    Short {
        at: u64,
        size: u64,
    },
    Mismatch {
        expected: [u8; 32],
        actual: [u8; 32],
    },
}

impl From<fuse::Error> for Failure {
    fn from(e: fuse::Error) -> Self {
        match e {
            fuse::Error::Errno(2) => Failure::NotFound,
            e => Failure::Fuse(e),
        }
    }
}

struct Hex<'a>(&'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Fuse(e) => write!(f, "{e}"),
            Failure::NotFound => write!(f, "no such file"),
            Failure::NotAFile => write!(f, "not a regular file"),
            Failure::NotADirectory => write!(f, "a path component is not a directory"),
            Failure::TooManyLinks => write!(f, "too many symbolic links"),
            Failure::AbsoluteLink => write!(f, "absolute symbolic link leaves the view"),
            Failure::PathTooLong => write!(f, "path too long"),
            Failure::NoHash => write!(f, "the store recorded no BLAKE3 for it"),
            Failure::BadHash => write!(f, "recorded BLAKE3 is not 64 lowercase hex digits"),
            Failure::Short { at, size } => {
                write!(f, "file ended at byte {at} of {size}")
            }
            Failure::Mismatch { expected, actual } => write!(
                f,
                "BLAKE3 mismatch: recorded {}, read {}",
                Hex(expected),
                Hex(actual)
            ),
        }
    }
}

/// Lists the programs, verifies each file named in `cmdline`; the status
/// tells whether every one was verified.
pub fn run<C: Channel>(s: &mut Session<C>, cmdline: &str) -> Status {
    if let Err(e) = list_programs(s) {
        println!("RUMK FAIL listing the programs: {e}");
        return Status::Failed;
    }
    let (mut ok, mut failed) = (0u32, 0u32);
    for path in cmdline.split_ascii_whitespace() {
        match verify(s, path.as_bytes()) {
            Ok((size, hash)) => {
                ok += 1;
                println!("RUMK ok {path} {size} {}", Hex(&hash));
            }
            Err(why) => {
                failed += 1;
                println!("RUMK FAIL {path}: {why}");
            }
        }
    }
    println!("RUMK done: {ok} verified, {failed} failed");
    if failed == 0 {
        Status::Verified
    } else {
        Status::Failed
    }
}

/// Prints the names at the root of the view (the Apps) on one line.
fn list_programs<C: Channel>(s: &mut Session<C>) -> Result<(), fuse::Error> {
    let fh = s.opendir(fuse::ROOT)?;
    print!("RUMK apps:");
    let mut offset = 0;
    let result = loop {
        let mut held = [0u64; MAX_BATCH];
        let mut n = 0;
        let step = s.readdirplus(fuse::ROOT, fh, offset, |d| {
            print!(" {}", Show(d.name));
            if d.entry.nodeid != 0 && n < MAX_BATCH {
                held[n] = d.entry.nodeid;
                n += 1;
            }
        });
        for &node in &held[..n] {
            if let Err(e) = s.forget(node, 1) {
                forget_failed(e);
            }
        }
        match step {
            Ok(Some(next)) => offset = next,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    println!();
    s.release(fuse::ROOT, fh, true)?;
    result
}

/// A FORGET that could not be sent costs the server a little memory,
/// nothing more: it is reported, not fatal.
fn forget_failed(e: fuse::Error) {
    println!("RUMK warning: FORGET not sent: {e}");
}

/// Node ids looked up during one walk, forgotten when it ends.
struct Held {
    nodes: [u64; MAX_HELD],
    len: usize,
}

impl Held {
    fn push(&mut self, node: u64) -> Result<(), Failure> {
        if self.len == MAX_HELD {
            return Err(Failure::PathTooLong);
        }
        self.nodes[self.len] = node;
        self.len += 1;
        Ok(())
    }

    fn forget_all<C: Channel>(&mut self, s: &mut Session<C>) {
        for &node in &self.nodes[..self.len] {
            if let Err(e) = s.forget(node, 1) {
                forget_failed(e);
            }
        }
        self.len = 0;
    }
}

/// Reads the file at `path` and verifies it: its size and BLAKE3.
fn verify<C: Channel>(s: &mut Session<C>, path: &[u8]) -> Result<(u64, [u8; 32]), Failure> {
    let mut held = Held {
        nodes: [0; MAX_HELD],
        len: 0,
    };
    let result = walk(s, path, &mut held).and_then(|entry| verify_node(s, &entry));
    held.forget_all(s);
    result
}

/// Resolves `path` (relative to the root of the view) following symbolic
/// links; returns the final entry, a LOOKUP's (its node id is in `held`).
fn walk<C: Channel>(s: &mut Session<C>, path: &[u8], held: &mut Held) -> Result<Entry, Failure> {
    let mut buf = [0u8; MAX_PATH];
    if path.len() > MAX_PATH {
        return Err(Failure::PathTooLong);
    }
    buf[..path.len()].copy_from_slice(path);
    let mut len = path.len();
    let mut at = 0;
    // The directories walked through, for `..`; the root is never left.
    let mut dirs = [fuse::ROOT; MAX_HELD];
    let mut depth = 1;
    let mut links = 0;
    let mut last: Option<Entry> = None;
    loop {
        // The next component of buf[at..len].
        while at < len && buf[at] == b'/' {
            at += 1;
        }
        if at == len {
            break;
        }
        let end = buf[at..len]
            .iter()
            .position(|&b| b == b'/')
            .map_or(len, |p| at + p);
        let name_start = at;
        at = end;
        let name = &buf[name_start..end];
        if let Some(prev) = &last
            && prev.attr.kind() != S_IFDIR
        {
            return Err(Failure::NotADirectory);
        }
        if name == b"." {
            continue;
        }
        if name == b".." {
            depth = (depth - 1).max(1);
            last = None;
            continue;
        }
        let entry = s.lookup(dirs[depth - 1], name)?;
        held.push(entry.nodeid)?;
        match entry.attr.kind() {
            S_IFLNK => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(Failure::TooManyLinks);
                }
                let mut target = [0u8; MAX_PATH];
                let target = s.readlink(entry.nodeid, &mut target)?;
                if target.first() == Some(&b'/') {
                    return Err(Failure::AbsoluteLink);
                }
                // buf = target + "/" + rest
                let rest_len = len - at;
                let new_len = target.len() + 1 + rest_len;
                if new_len > MAX_PATH {
                    return Err(Failure::PathTooLong);
                }
                buf.copy_within(at..len, target.len() + 1);
                buf[..target.len()].copy_from_slice(target);
                buf[target.len()] = b'/';
                len = new_len;
                at = 0;
                last = None;
            }
            S_IFDIR => {
                if depth == MAX_HELD {
                    return Err(Failure::PathTooLong);
                }
                dirs[depth] = entry.nodeid;
                depth += 1;
                last = Some(entry);
            }
            _ => last = Some(entry),
        }
    }
    last.ok_or(Failure::NotAFile)
}

/// Reads all of the regular file `entry` and checks its BLAKE3.
fn verify_node<C: Channel>(s: &mut Session<C>, entry: &Entry) -> Result<(u64, [u8; 32]), Failure> {
    // The attributes of the lookup may be cached by a server; ask afresh.
    let attr = s.getattr(entry.nodeid)?;
    if attr.kind() != S_IFREG {
        return Err(Failure::NotAFile);
    }
    let expected = recorded_hash(s, entry.nodeid)?;
    let fh = s.open(entry.nodeid)?;
    let mut hasher = blake3::Hasher::new();
    let mut offset = 0u64;
    let read = loop {
        if offset >= attr.size {
            break Ok(());
        }
        let want = u32::try_from(attr.size - offset)
            .unwrap_or(u32::MAX)
            .min(s.max_read());
        match s.read(entry.nodeid, fh, offset, want) {
            Ok([]) => {
                break Err(Failure::Short {
                    at: offset,
                    size: attr.size,
                });
            }
            Ok(data) => {
                hasher.update(data);
                offset += data.len() as u64;
            }
            Err(e) => break Err(e.into()),
        }
    };
    if let Some(fh) = fh {
        s.release(entry.nodeid, fh, false)?;
    }
    read?;
    let actual: [u8; 32] = *hasher.finalize().as_bytes();
    if actual != expected {
        return Err(Failure::Mismatch { expected, actual });
    }
    Ok((attr.size, actual))
}

/// The BLAKE3 the store recorded for node `node`.
fn recorded_hash<C: Channel>(s: &mut Session<C>, node: u64) -> Result<[u8; 32], Failure> {
    let mut hex = [0u8; 64];
    let value = match s.getxattr(node, HASH_XATTR, &mut hex) {
        Ok(v) => v,
        Err(fuse::Error::Errno(61)) => return Err(Failure::NoHash),
        Err(e) => return Err(e.into()),
    };
    if value.len() != 64 {
        return Err(Failure::BadHash);
    }
    let mut hash = [0u8; 32];
    for (i, pair) in value.chunks_exact(2).enumerate() {
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        match (digit(pair[0]), digit(pair[1])) {
            (Some(hi), Some(lo)) => hash[i] = hi << 4 | lo,
            _ => return Err(Failure::BadHash),
        }
    }
    Ok(hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testfs::{Node, TestFs};

    fn session(fs: TestFs) -> Session<TestFs> {
        Session::init(fs).unwrap_or_else(|e| panic!("INIT: {e}"))
    }

    fn ok(s: &mut Session<TestFs>, path: &str) -> u64 {
        match verify(s, path.as_bytes()) {
            Ok((size, hash)) => {
                assert_eq!(hash, *blake3::hash(b"hello, world\n").as_bytes());
                size
            }
            Err(e) => panic!("{path}: {e}"),
        }
    }

    #[test]
    fn paths_through_links_and_dot_dot_verify() {
        let mut s = session(TestFs::new());
        for path in [
            "hello/Current/bin/hello",
            "hello/1.0/bin/hi",
            "/hello//Current/./bin/../bin/hi",
        ] {
            assert_eq!(ok(&mut s, path), 13);
        }
        assert_eq!(run(&mut s, "hello/Current/bin/hello"), Status::Verified);
    }

    #[test]
    fn every_lookup_is_forgotten() {
        let mut s = session(TestFs::new());
        assert_eq!(run(&mut s, "hello/Current/bin/hi nope"), Status::Failed);
        let held: std::vec::Vec<_> = s
            .device_for_tests()
            .lookups
            .iter()
            .filter(|(_, n)| **n != 0)
            .collect();
        assert!(held.is_empty(), "lookups not forgotten: {held:?}");
    }

    #[test]
    fn failures_are_reported_not_used() {
        let mut fs = TestFs::new();
        fs.flip_read = true;
        let mut s = session(fs);
        assert!(matches!(
            verify(&mut s, b"hello/Current/bin/hello"),
            Err(Failure::Mismatch { .. })
        ));
        assert!(matches!(
            verify(&mut s, b"hello/Current/bin"),
            Err(Failure::NotAFile)
        ));
        assert!(matches!(
            verify(&mut s, b"hello/Current/bin/hello/x"),
            Err(Failure::NotADirectory)
        ));
        assert!(matches!(verify(&mut s, b"nope"), Err(Failure::NotFound)));
    }

    #[test]
    fn links_are_bounded_and_stay_in_the_view() {
        let mut fs = TestFs::new();
        fs.nodes.insert(7, Node::Link(b"hi".to_vec())); // hi -> hi
        fs.nodes.insert(3, Node::Link(b"/etc".to_vec())); // Current -> /etc
        let mut s = session(fs);
        assert!(matches!(
            verify(&mut s, b"hello/1.0/bin/hi"),
            Err(Failure::TooManyLinks)
        ));
        assert!(matches!(
            verify(&mut s, b"hello/Current/bin/hello"),
            Err(Failure::AbsoluteLink)
        ));
    }

    #[test]
    fn a_recorded_hash_must_be_64_lowercase_hex_digits() {
        for bad in [
            "ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef0123456789",
            "abc",
            "g000000000000000000000000000000000000000000000000000000000000000",
        ] {
            let mut fs = TestFs::new();
            fs.nodes
                .insert(6, Node::File(b"hello, world\n".to_vec(), bad.into()));
            let mut s = session(fs);
            assert!(
                matches!(
                    verify(&mut s, b"hello/1.0/bin/hello"),
                    Err(Failure::BadHash)
                ),
                "{bad}"
            );
        }
    }
}
