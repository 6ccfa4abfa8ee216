//! Temporary directories and synthetic trees.

use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tempfile::TempDir;

use crate::debs;
use crate::rng::Rng;

/// A temporary directory removed on drop (kept when `NEXUS_TEST_KEEP=1`).
///
/// Before removal every directory below it is made writable again, so trees
/// with read-only directories (as real packages and exports have) do not
/// survive their test.
pub struct Scratch {
    dir: Option<TempDir>,
}

impl Scratch {
    /// Creates `$TMPDIR/nexus-it-LABEL-XXXXXX`.
    pub fn new(label: &str) -> Scratch {
        let mut dir = tempfile::Builder::new()
            .prefix(&format!("nexus-it-{label}-"))
            .tempdir()
            .expect("cannot create a temporary directory");
        if std::env::var_os("NEXUS_TEST_KEEP").is_some_and(|v| v == "1") {
            eprintln!("NEXUS_TEST_KEEP=1: keeping {}", dir.path().display());
            dir.disable_cleanup(true);
        }
        Scratch { dir: Some(dir) }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir
            .as_ref()
            .expect("scratch dir already dropped")
            .path()
    }

    /// `self.path().join(rel)`.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path().join(rel)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            make_dirs_writable(dir.path());
            // TempDir's own drop ignores errors; nothing more to do.
            drop(dir);
        }
    }
}

/// Gives every directory below `root` mode 0700 (best effort) so the tree can
/// be deleted even when it holds read-only directories.
fn make_dirs_writable(root: &Path) {
    let Ok(meta) = fs::symlink_metadata(root) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let _ = fs::set_permissions(root, fs::Permissions::from_mode(0o700));
    if let Ok(rd) = fs::read_dir(root) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                make_dirs_writable(&e.path());
            }
        }
    }
}

/// Deterministic incompressible bytes: the BLAKE3 extendable output keyed by
/// `seed` (fast, and the same seed always gives the same bytes).
pub fn random_bytes(seed: &[u8], len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(b"nexus-test-data\0")
        .update(seed)
        .finalize_xof()
        .fill(&mut out);
    out
}

/// Deterministic, compressible text-like bytes (words drawn from a small
/// vocabulary), to exercise the zstd path.
pub fn text_bytes(seed: u64, len: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "nexus",
        "store",
        "chunk",
        "pack",
        "the",
        "of",
        "generation",
        "package",
        "tree",
        "hash",
        "file",
        "directory",
        "link",
        "mode",
        "and",
        "version",
        "current",
        "\n",
    ];
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        out.extend_from_slice(WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes());
        out.push(b' ');
    }
    out.truncate(len);
    out
}

/// Writes `data` to `path`, creating parent directories.
pub fn write_file(path: &Path, data: &[u8]) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap_or_else(|e| panic!("mkdir {}: {e}", parent.display()));
    }
    let mut f = fs::File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.write_all(data)
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// A small App/Version tree, `ROOT/NAME/VERSION/bin/NAME` (a script
/// printing its name and version); returns `ROOT/NAME/VERSION`.
pub fn app_tree(root: &Path, name: &str, version: &str) -> PathBuf {
    let dir = root.join(name).join(version);
    write_file(
        &dir.join("bin").join(name),
        format!("#!/bin/sh\necho {name} {version}\n").as_bytes(),
    );
    dir
}

fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("path contains NUL")
}

/// Creates a FIFO.
pub fn mkfifo(path: &Path) {
    // SAFETY: valid NUL-terminated path.
    let rc = unsafe { libc::mkfifo(c_path(path).as_ptr(), 0o644) };
    assert_eq!(
        rc,
        0,
        "mkfifo {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// Creates a character device node (root only).
pub fn mknod_char(path: &Path, major: u32, minor: u32) {
    let dev = libc::makedev(major, minor);
    // SAFETY: valid NUL-terminated path.
    let rc = unsafe { libc::mknod(c_path(path).as_ptr(), libc::S_IFCHR | 0o644, dev) };
    assert_eq!(
        rc,
        0,
        "mknod {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// Sets the modification (and access) time of `path` without following
/// symlinks.
pub fn set_mtime(path: &Path, secs: i64) {
    let ts = libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: 0,
    };
    let times = [ts, ts];
    // SAFETY: valid path and a two-element timespec array.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c_path(path).as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(
        rc,
        0,
        "utimensat {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// Changes ownership of `path` without following symlinks.
pub fn lchown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("lchown {}: {e}", path.display()));
}

/// Sets the permission bits of `path` (including setuid/setgid/sticky).
pub fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// Copies a tree with `cp -a` (modes, owners, times, hard links, xattrs).
pub fn copy_tree(src: &Path, dst: &Path) {
    let out = Command::new("cp")
        .arg("-a")
        .arg(src)
        .arg(dst)
        .output()
        .expect("cannot run cp");
    assert!(
        out.status.success(),
        "cp -a {} {}: {}",
        src.display(),
        dst.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Total size in bytes of the regular files below `root` (hard links once).
pub fn tree_bytes(root: &Path) -> u64 {
    crate::tree::snapshot(root).content_bytes()
}

/// The real packages unpacked into the large tree (about 85 MB unpacked,
/// 15 MB to download): many small files (perl modules, python stdlib) and
/// large binaries.
pub const LARGE_TREE_DEBS: &[&str] = &[
    "coreutils",
    "perl-base",
    "perl-modules-5.36",
    "libperl5.36",
    "python3.11-minimal",
    "libpython3.11-stdlib",
];

/// Builds a large tree at `dest`: the [`LARGE_TREE_DEBS`] unpacked on top of
/// each other, plus `extra_mb` MB of generated data under `generated/` (a mix
/// of incompressible large files, compressible text and a thousand small
/// files). `seed` makes the generated part unique per caller. Returns the
/// total content size in bytes.
pub fn build_large_tree(dest: &Path, extra_mb: u64, seed: u64) -> u64 {
    fs::create_dir_all(dest).unwrap_or_else(|e| panic!("mkdir {}: {e}", dest.display()));
    for deb in debs::fetch_debs(LARGE_TREE_DEBS) {
        debs::unpack_deb(&deb, dest);
    }
    generate_data(&dest.join("generated"), extra_mb * 1024 * 1024, seed);
    tree_bytes(dest)
}

/// Writes about `total` bytes of generated files below `dir`: 1000 small
/// files (1–16 KiB, half random, half text), then 4 MiB–16 MiB files
/// alternating between incompressible and compressible content until `total`
/// is reached.
pub fn generate_data(dir: &Path, total: u64, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut written = 0u64;
    for i in 0..1000u64 {
        let len = 1024 + rng.below(15 * 1024) as usize;
        let data = if i % 2 == 0 {
            random_bytes(
                &[&seed.to_le_bytes()[..], &i.to_le_bytes()[..]].concat(),
                len,
            )
        } else {
            text_bytes(seed ^ i, len)
        };
        write_file(&dir.join(format!("small/{:02}/{i:04}.dat", i % 50)), &data);
        written += len as u64;
    }
    let mut i = 0u64;
    while written < total {
        let len = (4 + rng.below(13)) * 1024 * 1024;
        let len = len.min(total - written).max(1);
        let data = if i % 3 == 2 {
            text_bytes(seed.wrapping_add(1_000_000 + i), len as usize)
        } else {
            random_bytes(
                &[&seed.to_le_bytes()[..], b"large", &i.to_le_bytes()[..]].concat(),
                len as usize,
            )
        };
        write_file(&dir.join(format!("large/blob-{i:03}.bin")), &data);
        written += len;
        i += 1;
    }
}

/// Runs `ls -a DIR` as the user `nobody` (uid and gid 65534, no other
/// groups); returns the names it listed, or `None` if it could not list
/// the directory.
pub fn ls_as_nobody(dir: &Path) -> Option<Vec<String>> {
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "ls",
            "-a",
        ])
        .arg(dir)
        .stderr(Stdio::null())
        .output()
        .expect("run setpriv");
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    })
}

/// Runs `cat PATH` as the user `nobody` (uid and gid 65534, no other
/// groups); returns whether it could read it.
pub fn cat_as_nobody(path: &Path) -> bool {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
        .arg(path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run setpriv")
        .success()
}
