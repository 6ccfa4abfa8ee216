//! The format-neutral archive entry every reader produces, the checks on
//! its path, and the mappings from archive paths to package paths.
//!
//! This is the common layer between archive formats (tar today, NAR and
//! `.npk` later) and the package tree: a reader turns each record into an
//! [`ArchiveEntry`], a [`Mapping`] says where (and whether) it lands in the
//! package, and [`crate::builder::TreeBuilder`] builds the tree.

use nexus_store::tree::Xattrs;

use crate::error::Problem;

/// Longest path component accepted (the kernel's `NAME_MAX`).
pub const NAME_MAX: usize = 255;
/// Longest path accepted (the kernel's `PATH_MAX`).
pub const PATH_MAX: usize = 4096;

/// POSIX metadata of an entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EntryMeta {
    /// Permission bits including setuid, setgid and sticky (`& 0o7777`).
    pub mode: u32,
    /// Numeric owner, as the archive records it.
    pub uid: u32,
    /// Numeric group, as the archive records it.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Extended attributes, sorted by name.
    pub xattrs: Xattrs,
}

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file of `size` bytes, whose content follows.
    File {
        /// Size in bytes.
        size: u64,
    },
    /// A symbolic link.
    Symlink {
        /// The target, byte-exact.
        target: Vec<u8>,
    },
    /// Another name for an earlier regular file.
    HardLink {
        /// The earlier entry's path, as the archive spells it.
        target: Vec<u8>,
    },
    /// A device node, FIFO or socket: "a FIFO", "a character device", ...
    Special(&'static str),
}

/// One entry of an archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveEntry {
    /// The path as the archive spells it.
    pub path: Vec<u8>,
    /// Type and type-specific data.
    pub kind: EntryKind,
    /// Metadata.
    pub meta: EntryMeta,
}

impl ArchiveEntry {
    /// The path for messages.
    pub fn display(&self) -> String {
        lossy(&self.path)
    }
}

/// Bytes for messages.
pub fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A path split into its components: `./usr//bin/` is `["usr", "bin"]`,
/// `.` and `./` are the root (no components).
///
/// Refuses what could land outside the package: absolute paths and `..`
/// components (even ones that would stay inside: no archive needs them),
/// as well as empty paths and over-long names.
pub fn components(raw: &[u8]) -> Result<Vec<Vec<u8>>, Problem> {
    let unsafe_path = |reason: &str| Problem::UnsafePath {
        entry: lossy(raw),
        reason: reason.to_string(),
    };
    if raw.is_empty() {
        return Err(unsafe_path("empty path"));
    }
    if raw.starts_with(b"/") {
        return Err(unsafe_path("absolute path"));
    }
    if raw.len() > PATH_MAX {
        return Err(unsafe_path("path longer than 4096 bytes"));
    }
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(unsafe_path("`..` component (path traversal)")),
            _ if c.len() > NAME_MAX => return Err(unsafe_path("name longer than 255 bytes")),
            _ if c.contains(&0) => return Err(unsafe_path("NUL byte in the name")),
            _ => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

/// Where an archive path lands in the package.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// The package root itself.
    Root,
    /// A path below the root (never empty).
    At(Vec<Vec<u8>>),
}

/// How a format's paths become package paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mapping {
    /// File-system-hierarchy packages (Debian, pacman): `usr/X` becomes
    /// `X` and `usr` itself merges into the root; everything else
    /// (`etc/`, `bin/`, `opt/`, `var/`, ...) keeps its path.
    Fhs,
    /// Paths are already relative to the package root (pkgsrc, whose paths
    /// are relative to its installation prefix).
    Identity,
}

impl Mapping {
    /// The placement of a path given as components.
    pub fn place(self, mut comps: Vec<Vec<u8>>) -> Placement {
        if self == Mapping::Fhs && comps.first().is_some_and(|c| c == b"usr") {
            comps.remove(0);
        }
        if comps.is_empty() {
            Placement::Root
        } else {
            Placement::At(comps)
        }
    }

    /// A name for metadata and documentation.
    pub fn name(self) -> &'static str {
        match self {
            Mapping::Fhs => "fhs",
            Mapping::Identity => "identity",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comps(s: &str) -> Vec<Vec<u8>> {
        components(s.as_bytes()).unwrap()
    }

    #[test]
    fn normalises_harmless_spellings() {
        assert_eq!(
            comps("./usr//bin/hello"),
            vec![b"usr".to_vec(), b"bin".to_vec(), b"hello".to_vec()]
        );
        assert_eq!(comps("./"), Vec::<Vec<u8>>::new());
        assert_eq!(comps("."), Vec::<Vec<u8>>::new());
        assert_eq!(comps("etc/"), vec![b"etc".to_vec()]);
    }

    #[test]
    fn refuses_traversal_and_absolute_paths() {
        for bad in [
            "../etc/passwd",
            "usr/../../x",
            "/etc/passwd",
            "",
            "a/..",
            "..",
        ] {
            let err = components(bad.as_bytes()).unwrap_err().to_string();
            assert!(err.contains("unsafe entry"), "{bad}: {err}");
        }
        assert!(components(&[b'a'; 256]).is_err());
    }

    #[test]
    fn fhs_mapping_strips_usr_and_keeps_the_rest() {
        let m = Mapping::Fhs;
        assert_eq!(
            m.place(comps("usr/bin/hello")),
            Placement::At(comps("bin/hello"))
        );
        assert_eq!(m.place(comps("usr")), Placement::Root);
        assert_eq!(m.place(comps(".")), Placement::Root);
        assert_eq!(
            m.place(comps("etc/hello.conf")),
            Placement::At(comps("etc/hello.conf"))
        );
        assert_eq!(
            m.place(comps("bin/busybox")),
            Placement::At(comps("bin/busybox"))
        );
        assert_eq!(m.place(comps("usrx/a")), Placement::At(comps("usrx/a")));
        assert_eq!(
            Mapping::Identity.place(comps("usr/bin")),
            Placement::At(comps("usr/bin"))
        );
    }
}
