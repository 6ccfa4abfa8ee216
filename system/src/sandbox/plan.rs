//! The sandbox's file system, as a list of mount steps computed before
//! any process is forked: the child runs them with nothing but system
//! calls on ready-made C strings (no allocation between `fork` and
//! `execve`), and the parent names a failed step from the same list.
//!
//! The tree the script sees:
//!
//! | path | what |
//! |---|---|
//! | `/` | the host's file system, recursively read-only, `nosuid`, `nodev` |
//! | `/proc` | a new proc of the sandbox's pid namespace: no host process |
//! | `/dev` | a read-only tmpfs with `null`, `zero`, `full`, `random`, `urandom`, `tty`, a private `shm` |
//! | `/tmp` | the build's private, writable scratch directory (also `$HOME`) |
//! | `/run` | a read-only tmpfs (no host sockets) holding `/run/nexus/NAME` for each [`RunMount`] |
//! | sources | the recipe's directories, read-only, at their own paths |
//!
//! A source under `/tmp` is bound again into the private `/tmp`. A source
//! below a directory the build user may not search (as `/root`, 0700)
//! would be unreachable at its own path: that directory is replaced by an
//! empty read-only tmpfs in which only the sources below it reappear, so
//! the build sees the sources and nothing else of it. Such a source is
//! given only when the recipe lies below that directory too
//! ([`super::check_named`], checked before these steps are made).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::mount::MsFlags;

/// The directory under which [`RunMount`]s appear in the sandbox.
pub const RUN_DIR: &str = "/run/nexus";

/// The host directories replaced in the sandbox: a source below one of
/// them is invisible unless bound again.
const MASKED: &[&str] = &["/tmp", "/run", "/dev", "/proc"];

/// Device nodes bound from the host into the sandbox's `/dev`.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// A host directory given to the sandbox at `/run/nexus/NAME`.
#[derive(Clone, Debug)]
pub struct RunMount {
    /// The host directory.
    pub source: PathBuf,
    /// Its name under `/run/nexus`.
    pub name: String,
    /// Whether the script may write to it.
    pub writable: bool,
}

/// `mount_setattr` attribute bits (linux/mount.h).
pub const ATTR_RDONLY: u64 = 0x1;
/// `MOUNT_ATTR_NOSUID`.
pub const ATTR_NOSUID: u64 = 0x2;
/// `MOUNT_ATTR_NODEV`.
pub const ATTR_NODEV: u64 = 0x4;

/// One step of building the sandbox's tree.
#[derive(Debug)]
pub enum Step {
    /// Stops mounts propagating back to the host: `/` recursively private.
    MakePrivate,
    /// Binds `source` (with everything mounted below it) on `target`.
    BindTree {
        /// The host path.
        source: CString,
        /// Where.
        target: CString,
    },
    /// Sets mount attributes on `target` (and, if `recursive`, every mount
    /// below it).
    SetAttr {
        /// The mount.
        target: CString,
        /// `ATTR_*` bits to set.
        set: u64,
        /// Below it too.
        recursive: bool,
    },
    /// Mounts a new file system.
    Mount {
        /// `proc` or `tmpfs`.
        fstype: CString,
        /// Where.
        target: CString,
        /// Mount flags.
        flags: MsFlags,
        /// Mount options.
        data: CString,
    },
    /// Creates a directory (an existing one is fine).
    Mkdir {
        /// The directory.
        path: CString,
    },
    /// Creates an empty file to bind a device node on.
    Touch {
        /// The file.
        path: CString,
    },
    /// Creates a symbolic link.
    Symlink {
        /// What it points to.
        target: CString,
        /// The link.
        path: CString,
    },
}

impl Step {
    /// What the step does, for an error message.
    pub fn describe(&self) -> String {
        let s = |c: &CString| c.to_string_lossy().into_owned();
        match self {
            Step::MakePrivate => "making the mounts private".into(),
            Step::BindTree { source, target } => format!("binding {} on {}", s(source), s(target)),
            Step::SetAttr { target, set, .. } => {
                format!("setting attributes {set:#x} on {}", s(target))
            }
            Step::Mount { fstype, target, .. } => {
                format!("mounting {} on {}", s(fstype), s(target))
            }
            Step::Mkdir { path } => format!("creating {}", s(path)),
            Step::Touch { path } => format!("creating {}", s(path)),
            Step::Symlink { target, path } => format!("linking {} to {}", s(path), s(target)),
        }
    }
}

/// A path as a C string; paths never hold NUL bytes.
pub fn cstring(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).unwrap_or_default()
}

fn text(s: &str) -> CString {
    CString::new(s).unwrap_or_default()
}

/// `root` joined with the absolute sandbox path `inside`.
fn under(root: &Path, inside: &Path) -> PathBuf {
    let mut p = root.to_path_buf();
    for c in inside.components() {
        if let Component::Normal(n) = c {
            p.push(n);
        }
    }
    p
}

/// The masked directory `path` lies under, if any.
pub fn masked_under(path: &Path) -> Option<&'static str> {
    MASKED.iter().copied().find(|m| path.starts_with(m))
}

/// What the sandbox's tree is made of.
pub struct Layout<'a> {
    /// The empty host directory that becomes the sandbox's root.
    pub new_root: &'a Path,
    /// The host directory that becomes `/tmp`.
    pub tmp: &'a Path,
    /// Host directories readable at their own paths (canonical). Those
    /// under `/tmp` are bound again into the private `/tmp`; those under
    /// `/run`, `/dev` or `/proc` cannot be given.
    pub sources: &'a [PathBuf],
    /// Directories at `/run/nexus/NAME`.
    pub run: &'a [RunMount],
    /// Host directories the build user may not search, above sources:
    /// each becomes an empty tmpfs holding only the sources below it.
    pub hidden: &'a [PathBuf],
}

/// The steps that build `layout`, in order; the child then pivots into
/// `layout.new_root`.
pub fn steps(layout: &Layout<'_>) -> Vec<Step> {
    let root = layout.new_root;
    let at = |inside: &str| cstring(&under(root, Path::new(inside)));
    let mut v = vec![
        Step::MakePrivate,
        Step::BindTree {
            source: text("/"),
            target: cstring(root),
        },
        Step::SetAttr {
            target: cstring(root),
            set: ATTR_RDONLY | ATTR_NOSUID | ATTR_NODEV,
            recursive: true,
        },
        Step::Mount {
            fstype: text("proc"),
            target: at("/proc"),
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            data: text(""),
        },
        Step::Mount {
            fstype: text("tmpfs"),
            target: at("/dev"),
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            data: text("mode=0755,size=1m"),
        },
    ];
    for dev in DEVICES {
        let inside = format!("/dev/{dev}");
        if !Path::new(&inside).exists() {
            continue;
        }
        v.push(Step::Touch { path: at(&inside) });
        v.push(Step::BindTree {
            source: text(&inside),
            target: at(&inside),
        });
    }
    v.push(Step::Mkdir {
        path: at("/dev/shm"),
    });
    v.push(Step::Mount {
        fstype: text("tmpfs"),
        target: at("/dev/shm"),
        flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        data: text("mode=1777,size=64m"),
    });
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        v.push(Step::Symlink {
            target: text(target),
            path: at(&format!("/dev/{link}")),
        });
    }
    v.push(Step::SetAttr {
        target: at("/dev"),
        set: ATTR_RDONLY,
        recursive: false,
    });
    // /tmp: the build's own scratch directory.
    v.push(Step::BindTree {
        source: cstring(layout.tmp),
        target: at("/tmp"),
    });
    v.push(Step::SetAttr {
        target: at("/tmp"),
        set: ATTR_NOSUID | ATTR_NODEV,
        recursive: true,
    });
    // Directories the build user cannot search: emptied.
    for hidden in layout.hidden {
        v.push(Step::Mount {
            fstype: text("tmpfs"),
            target: cstring(&under(root, hidden)),
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            data: text("mode=0755,size=1m"),
        });
    }
    // Sources in a replaced directory, at their own paths inside it.
    for source in layout.sources {
        let base = if masked_under(source) == Some("/tmp") {
            Path::new("/tmp")
        } else if let Some(hidden) = layout.hidden.iter().find(|h| source.starts_with(h)) {
            hidden.as_path()
        } else {
            continue;
        };
        let target = under(root, source);
        let mut dirs: Vec<&Path> = source.ancestors().take_while(|a| *a != base).collect();
        dirs.reverse();
        for d in dirs {
            v.push(Step::Mkdir {
                path: cstring(&under(root, d)),
            });
        }
        v.push(Step::BindTree {
            source: cstring(source),
            target: cstring(&target),
        });
        v.push(Step::SetAttr {
            target: cstring(&target),
            set: ATTR_RDONLY | ATTR_NOSUID | ATTR_NODEV,
            recursive: true,
        });
    }
    for hidden in layout.hidden {
        v.push(Step::SetAttr {
            target: cstring(&under(root, hidden)),
            set: ATTR_RDONLY,
            recursive: false,
        });
    }
    // /run: nothing of the host's (no daemon sockets), only ours.
    v.push(Step::Mount {
        fstype: text("tmpfs"),
        target: at("/run"),
        flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        data: text("mode=0755,size=1m"),
    });
    v.push(Step::Mkdir { path: at(RUN_DIR) });
    for m in layout.run {
        let target = at(&format!("{RUN_DIR}/{}", m.name));
        v.push(Step::Mkdir {
            path: target.clone(),
        });
        v.push(Step::BindTree {
            source: cstring(&m.source),
            target: target.clone(),
        });
        v.push(Step::SetAttr {
            target,
            set: if m.writable {
                ATTR_NOSUID | ATTR_NODEV
            } else {
                ATTR_RDONLY | ATTR_NOSUID | ATTR_NODEV
            },
            recursive: true,
        });
    }
    v.push(Step::SetAttr {
        target: at("/run"),
        set: ATTR_RDONLY,
        recursive: false,
    });
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_under_tmp_or_hidden_dirs_are_bound_again_others_are_visible() {
        let sources = [
            PathBuf::from("/tmp/x/recipes"),
            PathBuf::from("/work/src"),
            PathBuf::from("/root/nexus/rumk"),
        ];
        let run = [RunMount {
            source: "/var/tmp/s/out".into(),
            name: "out".into(),
            writable: true,
        }];
        let steps = steps(&Layout {
            new_root: Path::new("/var/tmp/s/root"),
            tmp: Path::new("/var/tmp/s/tmp"),
            sources: &sources,
            run: &run,
            hidden: &[PathBuf::from("/root")],
        });
        let text: Vec<String> = steps.iter().map(Step::describe).collect();
        assert!(text.contains(&"binding /tmp/x/recipes on /var/tmp/s/root/tmp/x/recipes".into()));
        assert!(text.contains(&"creating /var/tmp/s/root/tmp/x".into()));
        assert!(!text.iter().any(|t| t.contains("/work/src")), "{text:#?}");
        assert!(text.contains(&"binding /var/tmp/s/out on /var/tmp/s/root/run/nexus/out".into()));
        assert!(text.contains(&"mounting tmpfs on /var/tmp/s/root/root".into()));
        assert!(text.contains(&"creating /var/tmp/s/root/root/nexus".into()));
        assert!(
            text.contains(&"binding /root/nexus/rumk on /var/tmp/s/root/root/nexus/rumk".into())
        );
        // The whole host tree is read-only before anything is added.
        assert!(matches!(
            steps[2],
            Step::SetAttr {
                recursive: true,
                set,
                ..
            } if set & ATTR_RDONLY != 0
        ));
    }
}
