//! Hand-made archives for the grafting tests: a tar writer that can spell
//! anything, hostile entries included (`..`, absolute paths, duplicates,
//! absurd sizes, FIFOs, pax xattrs), and an ar writer for `.deb`s. Written
//! from the formats (POSIX ustar and pax, the common ar format), not from
//! the code under test.

/// One tar entry.
#[derive(Clone, Debug)]
pub struct TarEntry {
    /// Path as stored.
    pub path: Vec<u8>,
    /// Type flag: `b'0'` file, `b'1'` hard link, `b'2'` symlink, `b'5'`
    /// directory, `b'6'` FIFO.
    pub kind: u8,
    /// Permission bits.
    pub mode: u32,
    /// Owner and group.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Content (files).
    pub data: Vec<u8>,
    /// Link target (links).
    pub link: Vec<u8>,
    /// pax records to put before the entry.
    pub pax: Vec<(Vec<u8>, Vec<u8>)>,
    /// Size to claim in the header instead of the data's length (the data
    /// written is then left out).
    pub claimed_size: Option<u64>,
}

impl TarEntry {
    fn new(path: &str, kind: u8, mode: u32) -> TarEntry {
        TarEntry {
            path: path.as_bytes().to_vec(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            data: Vec::new(),
            link: Vec::new(),
            pax: Vec::new(),
            claimed_size: None,
        }
    }

    /// A regular file.
    pub fn file(path: &str, data: &[u8], mode: u32) -> TarEntry {
        TarEntry {
            data: data.to_vec(),
            ..TarEntry::new(path, b'0', mode)
        }
    }

    /// A directory.
    pub fn dir(path: &str) -> TarEntry {
        TarEntry::new(path, b'5', 0o755)
    }

    /// A symbolic link.
    pub fn symlink(path: &str, target: &str) -> TarEntry {
        TarEntry {
            link: target.as_bytes().to_vec(),
            ..TarEntry::new(path, b'2', 0o777)
        }
    }

    /// A hard link to an earlier entry.
    pub fn hardlink(path: &str, target: &str) -> TarEntry {
        TarEntry {
            link: target.as_bytes().to_vec(),
            ..TarEntry::new(path, b'1', 0o644)
        }
    }

    /// A FIFO.
    pub fn fifo(path: &str) -> TarEntry {
        TarEntry::new(path, b'6', 0o644)
    }
}

fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    assert!(
        text.len() == digits,
        "{value} does not fit in {digits} octal digits"
    );
    field[..digits].copy_from_slice(text.as_bytes());
    field[digits] = 0;
}

fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3;
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut out = format!("{len} ").into_bytes();
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
    out
}

fn header(
    path: &[u8],
    kind: u8,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    link: &[u8],
) -> [u8; 512] {
    let mut h = [0u8; 512];
    assert!(
        path.len() <= 100 && link.len() <= 100,
        "use pax for long names"
    );
    h[..path.len()].copy_from_slice(path);
    octal(&mut h[100..108], u64::from(mode));
    octal(&mut h[108..116], u64::from(uid));
    octal(&mut h[116..124], u64::from(gid));
    if size < 1 << 33 {
        octal(&mut h[124..136], size);
    } else {
        // GNU base-256: high bit set, big-endian value.
        h[124] = 0x80;
        h[128..136].copy_from_slice(&size.to_be_bytes());
    }
    octal(&mut h[136..148], 1_700_000_000);
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let text = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(text.as_bytes());
    h
}

fn pad(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(512) {
        out.push(0);
    }
}

/// A tar archive of `entries`, ended by two zero blocks.
pub fn tar(entries: &[TarEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut pax = Vec::new();
        for (k, v) in &e.pax {
            pax.extend(pax_record(k, v));
        }
        let mut path = e.path.clone();
        if path.len() > 100 {
            pax.extend(pax_record(b"path", &path));
            path.truncate(100);
        }
        if !pax.is_empty() {
            out.extend(header(
                b"PaxHeader",
                b'x',
                0o644,
                0,
                0,
                pax.len() as u64,
                b"",
            ));
            out.extend(&pax);
            pad(&mut out);
        }
        let size = e.claimed_size.unwrap_or(e.data.len() as u64);
        out.extend(header(&path, e.kind, e.mode, e.uid, e.gid, size, &e.link));
        if e.claimed_size.is_none() {
            out.extend(&e.data);
            pad(&mut out);
        }
    }
    out.extend([0u8; 1024]);
    out
}

/// An ar archive (the common format `.deb`s use).
pub fn ar(members: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut out = b"!<arch>\n".to_vec();
    for (name, data) in members {
        let h = format!(
            "{name:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
            0,
            0,
            0,
            "100644",
            data.len()
        );
        assert_eq!(h.len(), 60);
        out.extend(h.as_bytes());
        out.extend(data);
        if !out.len().is_multiple_of(2) {
            out.push(b'\n');
        }
    }
    out
}

/// zstd-compresses `data`.
pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).expect("zstd compression failed")
}

/// A `.deb` with the given control file and data.tar (zstd-compressed).
pub fn deb(control: &str, data_tar: &[u8]) -> Vec<u8> {
    let control_tar = tar(&[TarEntry::file("./control", control.as_bytes(), 0o644)]);
    ar(&[
        ("debian-binary", b"2.0\n".to_vec()),
        ("control.tar.zst", zstd(&control_tar)),
        ("data.tar.zst", zstd(data_tar)),
    ])
}

/// A pacman package (zstd-compressed tar) with `.PKGINFO` for NAME/VERSION
/// followed by `entries`.
pub fn pacman(name: &str, version: &str, entries: &[TarEntry]) -> Vec<u8> {
    let info = format!("pkgname = {name}\npkgver = {version}\npkgdesc = test\n");
    let mut all = vec![TarEntry::file(".PKGINFO", info.as_bytes(), 0o644)];
    all.extend_from_slice(entries);
    zstd(&tar(&all))
}

/// A node of a hand-made NAR, spelled freely (entries are written in the
/// order given, names as given), so that hostile archives can be made.
#[derive(Clone, Debug)]
pub enum NarNode {
    /// A regular file.
    File {
        /// Content.
        data: Vec<u8>,
        /// The executable flag.
        executable: bool,
    },
    /// A symbolic link and its target.
    Symlink(Vec<u8>),
    /// A directory and its entries.
    Dir(Vec<(Vec<u8>, NarNode)>),
}

impl NarNode {
    /// A plain file.
    pub fn file(data: &[u8]) -> NarNode {
        NarNode::File {
            data: data.to_vec(),
            executable: false,
        }
    }

    /// A directory of `(name, node)` entries.
    pub fn dir(entries: &[(&str, NarNode)]) -> NarNode {
        NarNode::Dir(
            entries
                .iter()
                .map(|(n, node)| (n.as_bytes().to_vec(), node.clone()))
                .collect(),
        )
    }
}

/// Appends a NAR string: its length as a 64-bit little-endian number, its
/// bytes, then zeros up to a multiple of 8 bytes.
pub fn nar_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s);
    out.resize(out.len().div_ceil(8) * 8, 0);
}

fn nar_tokens(out: &mut Vec<u8>, tokens: &[&str]) {
    for t in tokens {
        nar_str(out, t.as_bytes());
    }
}

fn nar_node(out: &mut Vec<u8>, node: &NarNode) {
    match node {
        NarNode::File { data, executable } => {
            nar_tokens(out, &["(", "type", "regular"]);
            if *executable {
                nar_tokens(out, &["executable", ""]);
            }
            nar_tokens(out, &["contents"]);
            nar_str(out, data);
            nar_str(out, b")");
        }
        NarNode::Symlink(target) => {
            nar_tokens(out, &["(", "type", "symlink", "target"]);
            nar_str(out, target);
            nar_str(out, b")");
        }
        NarNode::Dir(entries) => {
            nar_tokens(out, &["(", "type", "directory"]);
            for (name, child) in entries {
                nar_tokens(out, &["entry", "(", "name"]);
                nar_str(out, name);
                nar_str(out, b"node");
                nar_node(out, child);
                nar_str(out, b")");
            }
            nar_str(out, b")");
        }
    }
}

/// A NAR (`nix-archive-1`) of `root`, written from the grammar in Eelco
/// Dolstra's thesis (figure 5.2), not from the code under test.
pub fn nar(root: &NarNode) -> Vec<u8> {
    let mut out = Vec::new();
    nar_str(&mut out, b"nix-archive-1");
    nar_node(&mut out, root);
    out
}
