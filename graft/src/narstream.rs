//! Reads a Nix archive (NAR) stream into [`ArchiveEntry`]s, handing each
//! regular file's content to the caller as a reader, in one pass and in
//! bounded memory.
//!
//! The grammar (Dolstra's thesis, figure 5.2, as Nix writes it):
//!
//! ```text
//! nar       = str("nix-archive-1") node
//! node      = str("(") str("type") body str(")")
//! body      = str("regular") [str("executable") str("")] str("contents") str(BYTES)
//!           | str("symlink") str("target") str(TARGET)
//!           | str("directory") { str("entry") str("(") str("name") str(NAME)
//!                                str("node") node str(")") }
//! str(s)    = u64le(len(s)) s zeros-to-a-multiple-of-8
//! ```
//!
//! Refused, as Nix refuses them: names that are empty, `.` or `..`, or hold
//! `/` or NUL; entries of a directory not in strictly increasing byte
//! order (which also rules out duplicates); non-zero padding. Refused as
//! well, to keep a hostile stream harmless: strings longer than their
//! role allows (keywords 16 bytes, names 255, symlink targets 4096),
//! directories nested deeper than [`MAX_DEPTH`], files claiming more
//! than the budget has left, and anything after the root node. The parser
//! keeps an explicit stack, never recursion, and holds one name per open
//! directory: memory is bounded whatever the input.

use std::io::{self, Read};

use crate::entry::{ArchiveEntry, EntryKind, EntryMeta, NAME_MAX, PATH_MAX, lossy};
use crate::error::{Failure, LimitExceeded, Problem, ReadResult};
use crate::limits::{Budget, Counted};

/// Deepest directory nesting accepted (real store paths rarely pass 20).
pub const MAX_DEPTH: usize = nexus_store::tree::MAX_DEPTH;
/// Longest keyword string (`nix-archive-1`, `executable`, ...).
const KEYWORD_MAX: u64 = 16;
/// The NAR's root, as an archive path.
const ROOT: &[u8] = b".";

/// Mode of a regular file, as Nix's store has it.
pub const FILE_MODE: u32 = 0o444;
/// Mode of an executable file (and of a directory), as Nix's store has it.
pub const EXEC_MODE: u32 = 0o555;
/// Mode recorded for symlinks (Linux ignores it).
pub const SYMLINK_MODE: u32 = 0o777;
/// Modification time of every entry, as Nix's store has it.
pub const MTIME: i64 = 1;

/// The metadata a NAR implies: owner root, the store's modes, mtime 1.
fn meta(mode: u32) -> EntryMeta {
    EntryMeta {
        mode,
        uid: 0,
        gid: 0,
        mtime: MTIME,
        xattrs: Vec::new(),
    }
}

/// A directory being read: its archive path and the last name it listed.
struct OpenDir {
    path: Vec<u8>,
    last: Option<Vec<u8>>,
}

/// What a node turned out to be, once its `type` was read.
enum Node {
    /// A directory: its entries follow.
    Dir,
    /// A file or symlink, read to its closing `)`.
    Leaf,
}

/// The NAR reader: the stream and where it is.
struct Parser<'w, R> {
    input: Counted<R>,
    what: &'w str,
}

/// Reads every node of the NAR stream `reader`, calling `each` with the
/// entry and a reader of its content (empty except for regular files).
/// The root is the entry `.`. `what` names the stream in messages.
pub fn read_nar(
    reader: impl Read,
    budget: &Budget,
    what: &str,
    mut each: impl FnMut(ArchiveEntry, &mut dyn Read) -> ReadResult<()>,
) -> ReadResult<()> {
    let mut p = Parser {
        input: Counted::new(reader),
        what,
    };
    p.expect(b"nix-archive-1", "the NAR's magic")?;
    let mut stack: Vec<OpenDir> = Vec::new();
    if let Node::Dir = p.node(ROOT, budget, &mut each)? {
        stack.push(OpenDir {
            path: ROOT.to_vec(),
            last: None,
        });
    }
    while let Some(dir) = stack.last_mut() {
        let token = p.keyword("`entry` or `)`")?;
        match token.as_slice() {
            b")" => {
                stack.pop();
                if !stack.is_empty() {
                    // The `)` of the `entry (` that held the directory.
                    p.expect(b")", "the end of a directory entry")?;
                }
            }
            b"entry" => {
                p.expect(b"(", "a directory entry")?;
                p.expect(b"name", "a directory entry")?;
                let name = p.string(NAME_MAX as u64, "name")?;
                let path = check_name(dir, &name)?;
                dir.last = Some(name);
                p.expect(b"node", "a directory entry")?;
                if stack.len() > MAX_DEPTH {
                    return Err(LimitExceeded {
                        what: format!("the nesting of {:?} in {what}", lossy(&path)),
                        limit: MAX_DEPTH as u64,
                        raisable: None,
                    }
                    .into());
                }
                match p.node(&path, budget, &mut each)? {
                    Node::Dir => stack.push(OpenDir { path, last: None }),
                    Node::Leaf => p.expect(b")", "the end of a directory entry")?,
                }
            }
            other => return Err(p.unexpected(other, "`entry` or `)` in a directory")),
        }
    }
    p.end()
}

/// Checks `name`, the next entry of `dir`, and returns its archive path.
fn check_name(dir: &OpenDir, name: &[u8]) -> ReadResult<Vec<u8>> {
    let path = if dir.path == ROOT {
        name.to_vec()
    } else {
        [dir.path.as_slice(), b"/", name].concat()
    };
    let unsafe_name = |reason: &str| Problem::UnsafePath {
        entry: lossy(&path),
        reason: reason.to_string(),
    };
    match name {
        b"" => return Err(unsafe_name("empty name in a NAR directory").into()),
        b"." => return Err(unsafe_name("`.` as a name").into()),
        b".." => return Err(unsafe_name("`..` as a name (path traversal)").into()),
        _ if name.contains(&b'/') => return Err(unsafe_name("`/` in a name").into()),
        _ if name.contains(&0) => return Err(unsafe_name("NUL byte in the name").into()),
        _ => {}
    }
    if path.len() > PATH_MAX {
        return Err(unsafe_name("path longer than 4096 bytes").into());
    }
    match dir.last.as_deref() {
        Some(last) if last == name => Err(Problem::Duplicate {
            entry: lossy(&path),
            detail: " (listed twice in its NAR directory)".into(),
        }
        .into()),
        Some(last) if last > name => Err(Problem::Corrupt(format!(
            "NAR directory {:?} is not sorted: {:?} comes after {:?}",
            lossy(&dir.path),
            lossy(name),
            lossy(last)
        ))
        .into()),
        _ => Ok(path),
    }
}

impl<R: Read> Parser<'_, R> {
    /// Reads `( type ...` of the node at `path`: a file or symlink to its
    /// closing `)`, handing it to `each`; a directory up to its entries.
    fn node(
        &mut self,
        path: &[u8],
        budget: &Budget,
        each: &mut impl FnMut(ArchiveEntry, &mut dyn Read) -> ReadResult<()>,
    ) -> ReadResult<Node> {
        self.expect(b"(", "a node")?;
        self.expect(b"type", "a node")?;
        let kind = self.keyword("a node type")?;
        budget.entry()?;
        if path == ROOT && kind != b"directory" {
            return Err(Problem::Unsupported {
                entry: "the NAR's root".into(),
                reason: format!(
                    "it is a {}, not a directory: a store path that is a single file or symlink is not a package (a package's root is a directory)",
                    lossy(&kind)
                ),
            }
            .into());
        }
        let entry = |kind, mode| ArchiveEntry {
            path: path.to_vec(),
            kind,
            meta: meta(mode),
        };
        match kind.as_slice() {
            b"directory" => {
                each(entry(EntryKind::Dir, EXEC_MODE), &mut io::empty())?;
                Ok(Node::Dir)
            }
            b"symlink" => {
                self.expect(b"target", "a symlink")?;
                let target = self.string(PATH_MAX as u64, "symlink target")?;
                let link = entry(EntryKind::Symlink { target }, SYMLINK_MODE);
                each(link, &mut io::empty())?;
                self.expect(b")", "the end of a symlink")?;
                Ok(Node::Leaf)
            }
            b"regular" => {
                let mut tag = self.keyword("`executable` or `contents`")?;
                let mut mode = FILE_MODE;
                if tag == b"executable" {
                    self.expect(b"", "the executable flag")?;
                    mode = EXEC_MODE;
                    tag = self.keyword("`contents`")?;
                }
                if tag != b"contents" {
                    return Err(self.unexpected(&tag, "`contents`"));
                }
                self.contents(entry(EntryKind::File { size: 0 }, mode), budget, each)?;
                self.expect(b")", "the end of a file")?;
                Ok(Node::Leaf)
            }
            other => Err(self.unexpected(other, "`regular`, `symlink` or `directory`")),
        }
    }

    /// Reads a file's contents string, handing the bytes to `each`.
    fn contents(
        &mut self,
        mut entry: ArchiveEntry,
        budget: &Budget,
        each: &mut impl FnMut(ArchiveEntry, &mut dyn Read) -> ReadResult<()>,
    ) -> ReadResult<()> {
        let size = self.u64("a file's size")?;
        let name = entry.display();
        budget.check_claim(&name, size)?;
        entry.kind = EntryKind::File { size };
        let (rest, left) = {
            let mut content = (&mut self.input).take(size);
            each(entry, &mut content)?;
            // Whatever the caller left (nothing, normally) is read past; a
            // stream that ends first is truncated.
            let rest = io::copy(&mut content, &mut io::sink());
            (rest, content.limit())
        };
        rest.map_err(|e| self.io(e))?;
        if left > 0 {
            return Err(self.truncated(&format!("the contents of {name:?}")));
        }
        self.padding(size)
    }

    /// A string that must be `token`.
    fn expect(&mut self, token: &[u8], context: &str) -> ReadResult<()> {
        let got = self.keyword(context)?;
        if got != token {
            let wanted = format!("{:?} in {context}", lossy(token));
            return Err(self.unexpected(&got, &wanted));
        }
        Ok(())
    }

    /// A keyword string.
    fn keyword(&mut self, context: &str) -> ReadResult<Vec<u8>> {
        self.string(KEYWORD_MAX, context)
    }

    /// A string of at most `max` bytes.
    fn string(&mut self, max: u64, context: &str) -> ReadResult<Vec<u8>> {
        let at = self.input.count();
        let len = self.u64(context)?;
        if len > max {
            return Err(Problem::Corrupt(format!(
                "{}: a string of {len} bytes at byte {at}, where {context} is at most {max} bytes",
                self.what
            ))
            .into());
        }
        // `len <= max <= PATH_MAX`: a small allocation.
        let mut buf = vec![0u8; len as usize];
        self.fill(&mut buf, context)?;
        self.padding(len)?;
        Ok(buf)
    }

    /// A 64-bit little-endian number.
    fn u64(&mut self, context: &str) -> ReadResult<u64> {
        let mut buf = [0u8; 8];
        self.fill(&mut buf, context)?;
        Ok(u64::from_le_bytes(buf))
    }

    /// The zeros after a string of `len` bytes.
    fn padding(&mut self, len: u64) -> ReadResult<()> {
        let mut pad = [0u8; 8];
        let n = ((8 - len % 8) % 8) as usize;
        self.fill(&mut pad[..n], "padding")?;
        if pad[..n].iter().any(|&b| b != 0) {
            return Err(Problem::Corrupt(format!(
                "{}: non-zero padding before byte {}",
                self.what,
                self.input.count()
            ))
            .into());
        }
        Ok(())
    }

    /// Fills `buf` from the stream; its end is truncation.
    fn fill(&mut self, mut buf: &mut [u8], context: &str) -> ReadResult<()> {
        while !buf.is_empty() {
            match self.input.read(buf) {
                Ok(0) => return Err(self.truncated(context)),
                Ok(n) => buf = &mut buf[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io(e)),
            }
        }
        Ok(())
    }

    /// After the root node: the stream must end (which also lets the
    /// decompressor check its checksum).
    fn end(&mut self) -> ReadResult<()> {
        let at = self.input.count();
        let mut buf = [0u8; 8192];
        loop {
            match self.input.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(_) => {
                    return Err(Problem::Corrupt(format!(
                        "{}: data after the end of the archive (at byte {at})",
                        self.what
                    ))
                    .into());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io(e)),
            }
        }
    }

    fn truncated(&self, context: &str) -> Failure {
        Problem::Corrupt(format!(
            "{} is truncated: it ends at byte {} in {context}",
            self.what,
            self.input.count()
        ))
        .into()
    }

    fn unexpected(&self, got: &[u8], wanted: &str) -> Failure {
        Problem::Corrupt(format!(
            "{}: {:?} before byte {} where {wanted} was expected",
            self.what,
            lossy(got),
            self.input.count()
        ))
        .into()
    }

    fn io(&self, e: io::Error) -> Failure {
        Failure::from_io(e, self.what)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::limits::Limits;

    /// Builds NARs, including wrong ones.
    #[derive(Default)]
    pub(crate) struct Nar(pub(crate) Vec<u8>);

    impl Nar {
        pub(crate) fn s(mut self, s: &[u8]) -> Self {
            self.0.extend((s.len() as u64).to_le_bytes());
            self.0.extend(s);
            self.0.resize(self.0.len().div_ceil(8) * 8, 0);
            self
        }
        pub(crate) fn tokens(self, tokens: &[&str]) -> Self {
            tokens.iter().fold(self, |n, t| n.s(t.as_bytes()))
        }
    }

    fn start() -> Nar {
        Nar::default().s(b"nix-archive-1")
    }

    fn file(n: Nar, name: &str, data: &[u8]) -> Nar {
        n.tokens(&["entry", "(", "name", name, "node", "(", "type", "regular"])
            .tokens(&["contents"])
            .s(data)
            .tokens(&[")", ")"])
    }

    fn dir_of(names: &[&str]) -> Vec<u8> {
        let mut n = start().tokens(&["(", "type", "directory"]);
        for name in names {
            n = file(n, name, b"x");
        }
        n.tokens(&[")"]).0
    }

    fn read_all(bytes: &[u8], limits: Limits) -> ReadResult<Vec<(ArchiveEntry, Vec<u8>)>> {
        let budget = Budget::new(limits);
        let mut out = Vec::new();
        read_nar(bytes, &budget, "the NAR", |e, r| {
            let mut data = Vec::new();
            r.read_to_end(&mut data)
                .map_err(|e| Failure::from_io(e, "x"))?;
            out.push((e, data));
            Ok(())
        })?;
        Ok(out)
    }

    fn error(bytes: &[u8]) -> String {
        match read_all(bytes, Limits::default()) {
            Err(Failure::Problem(p)) => p.to_string(),
            other => panic!("expected a problem, got {other:?}"),
        }
    }

    fn tree() -> Nar {
        let n = start().tokens(&["(", "type", "directory"]);
        let n = n
            .tokens(&[
                "entry",
                "(",
                "name",
                "bin",
                "node",
                "(",
                "type",
                "directory",
            ])
            .tokens(&[
                "entry", "(", "name", "hello", "node", "(", "type", "regular",
            ])
            .tokens(&["executable", "", "contents"])
            .s(b"#!/bin/sh\necho hello\n")
            .tokens(&[")", ")", ")", ")"]);
        let n = n
            .tokens(&["entry", "(", "name", "lib", "node", "(", "type", "symlink"])
            .tokens(&["target", "/nix/store/x-glibc/lib", ")", ")"]);
        file(n, "share", b"12345678").tokens(&[")"])
    }

    #[test]
    fn reads_directories_files_executables_and_symlinks() {
        let entries = read_all(&tree().0, Limits::default()).unwrap();
        let seen: Vec<(String, EntryKind, u32)> = entries
            .iter()
            .map(|(e, _)| (e.display(), e.kind.clone(), e.meta.mode))
            .collect();
        assert_eq!(
            seen,
            [
                (".".into(), EntryKind::Dir, 0o555),
                ("bin".into(), EntryKind::Dir, 0o555),
                ("bin/hello".into(), EntryKind::File { size: 21 }, 0o555),
                (
                    "lib".into(),
                    EntryKind::Symlink {
                        target: b"/nix/store/x-glibc/lib".to_vec()
                    },
                    0o777
                ),
                ("share".into(), EntryKind::File { size: 8 }, 0o444),
            ]
        );
        assert_eq!(entries[2].1, b"#!/bin/sh\necho hello\n");
        assert_eq!(entries[4].1, b"12345678");
        assert!(
            entries
                .iter()
                .all(|(e, _)| e.meta.mtime == 1 && e.meta.uid == 0)
        );
    }

    #[test]
    fn refuses_bad_names_and_order() {
        for (name, want) in [
            ("", "empty name"),
            (".", "`.` as a name"),
            ("..", "path traversal"),
            ("a/b", "`/` in a name"),
            ("a\0b", "NUL byte"),
        ] {
            let err = error(&dir_of(&[name]));
            assert!(err.contains(want), "{name:?}: {err}");
        }
        assert!(error(&dir_of(&["b", "a"])).contains("not sorted"));
        assert!(error(&dir_of(&["a", "a"])).contains("duplicate entry"));
        let long = "n".repeat(256);
        assert!(error(&dir_of(&[&long])).contains("at most 255"));
        read_all(&dir_of(&["a", "b", "ba"]), Limits::default()).unwrap();
    }

    #[test]
    fn refuses_truncation_garbage_and_bad_framing() {
        let full = tree().0;
        for cut in [0, 7, 20, 24, 60, full.len() - 30, full.len() - 1] {
            let err = error(&full[..cut]);
            assert!(err.contains("truncated"), "cut at {cut}: {err}");
        }
        let mut junk = full.clone();
        junk.extend_from_slice(b"junk");
        assert!(error(&junk).contains("data after the end"));
        let mut bad_pad = start().tokens(&["(", "type"]).0;
        bad_pad.extend(9u64.to_le_bytes());
        bad_pad.extend(b"directoryXXXXXXX");
        assert!(error(&bad_pad).contains("non-zero padding"));
        let mut huge = start().tokens(&["(", "type"]).0;
        huge.extend(u64::MAX.to_le_bytes());
        assert!(error(&huge).contains("a string of 18446744073709551615 bytes"));
        let fifo = start().tokens(&["(", "type", "directory"]);
        let fifo = fifo.tokens(&["entry", "(", "name", "p", "node", "(", "type", "fifo"]);
        assert!(error(&fifo.0).contains("\"fifo\""));
        assert!(error(&Nar::default().s(b"nix-archive-2").0).contains("magic"));
    }

    #[test]
    fn refuses_a_root_that_is_not_a_directory() {
        let single = start()
            .tokens(&["(", "type", "regular", "contents"])
            .s(b"x")
            .tokens(&[")"]);
        let err = error(&single.0);
        assert!(
            err.contains("the NAR's root") && err.contains("regular"),
            "{err}"
        );
        let link = start().tokens(&["(", "type", "symlink", "target", "x", ")"]);
        assert!(error(&link.0).contains("symlink, not a directory"));
    }

    #[test]
    fn limits_apply_to_claims_entries_and_depth() {
        let mut claim = start().tokens(&["(", "type", "directory"]);
        claim = claim.tokens(&["entry", "(", "name", "f", "node", "(", "type", "regular"]);
        let mut bytes = claim.tokens(&["contents"]).0;
        bytes.extend((1u64 << 50).to_le_bytes());
        assert!(error(&bytes).contains("unpacked size"), "{}", error(&bytes));
        let few = Limits {
            max_unpacked_size: 1 << 20,
            max_entries: 3,
        };
        let err = read_all(&dir_of(&["a", "b", "c"]), few).unwrap_err();
        assert!(format!("{err:?}").contains("Entries"), "{err:?}");
        let mut deep = start().tokens(&["(", "type", "directory"]);
        for _ in 0..=MAX_DEPTH {
            deep = deep.tokens(&["entry", "(", "name", "d", "node", "(", "type", "directory"]);
        }
        assert!(error(&deep.0).contains("nesting"));
    }
}
