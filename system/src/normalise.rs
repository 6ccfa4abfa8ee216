//! What a build script left in its output, made fit to import: owned by
//! root (as root), no directory writable by group or others, and without
//! setuid/setgid bits or file capabilities except on the paths its recipe
//! declares `privileged`.
//!
//! The build user owns what it wrote, and may set the setuid bit on its
//! own files; imported as they are, those would become setuid programs of
//! whoever the store says owns them.
//!
//! The tree may still be changed while it is walked. Every sandbox process
//! is gone, but another process of the build user's uid (a shared `nobody`)
//! may have opened the output's directories through `/proc/PID/root` while
//! the script ran, and keeps those descriptors. Walked by path, such a
//! process could swap a directory for a symlink between two steps and have
//! root chown and chmod anything on the host. So the walk goes by
//! descriptor, never resolving a path twice and never following a link,
//! and it *locks* each directory before reading it: once root owns it and
//! nobody else may write it, its entries cannot change, and every name in
//! it is then acted on relative to it. A privileged file is copied to a
//! new inode before its bits are set: a descriptor opened for writing on
//! the old one (permissions are checked at open) would otherwise rewrite
//! a setuid-root program after its check.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Gid, Mode, OFlags, Uid};
use rustix::io::Errno;

use crate::error::{Result, SystemError};

/// The extended attribute holding file capabilities.
const CAPABILITY_XATTR: &str = "security.capability";
/// setuid and setgid.
const SET_ID_BITS: u32 = 0o6000;
/// Write permission for group and others.
const SHARED_WRITE: u32 = 0o022;
/// Largest file capability attribute (`vfs_ns_cap_data` is 24 bytes).
const CAPABILITY_MAX: usize = 64;

/// Normalises the tree at `root` for `recipe`, keeping setuid/setgid bits
/// and capabilities on the `privileged` paths (relative to `root`), each
/// of which must exist. `root` itself must be reachable only by the caller
/// (it lies in the caller's private scratch directory).
pub fn normalise(recipe: &str, root: &Path, privileged: &[PathBuf]) -> Result<()> {
    let walk = Walk {
        root,
        as_root: nix::unistd::geteuid().is_root(),
        keep: privileged.iter().cloned().collect(),
    };
    let top = rfs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(walk.io(Path::new("")))?;
    let mut seen = BTreeSet::new();
    let mut stack = vec![(top, PathBuf::new())];
    while let Some((dir, relative)) = stack.pop() {
        walk.lock_dir(&dir, &relative)?;
        seen.insert(relative.clone());
        for (name, stat) in walk.entries(&dir, &relative)? {
            let path = relative.join(&name);
            seen.insert(path.clone());
            match FileType::from_raw_mode(stat.st_mode) {
                FileType::Directory => {
                    let child = rfs::openat(
                        &dir,
                        name.as_os_str(),
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(walk.io(&path))?;
                    walk.same_inode(&child, &stat, &path)?;
                    stack.push((child, path));
                }
                FileType::RegularFile if walk.keep.contains(&path) => {
                    walk.renew_privileged(&dir, &name, &stat, &path)?;
                }
                FileType::RegularFile => walk.plain_file(&dir, &name, &stat, &path)?,
                // Links are never followed; FIFOs and sockets are refused
                // by the import, and the build user cannot make devices.
                _ => walk.own_entry(&dir, &name, &stat, &path)?,
            }
        }
    }
    if let Some(missing) = walk.keep.iter().find(|p| !seen.contains(*p)) {
        return Err(SystemError::Recipe(format!(
            "recipe `{recipe}` declares {} privileged, but its build script made no such file",
            missing.display()
        )));
    }
    Ok(())
}

/// One normalisation: where, as whom, and what keeps its privileges.
struct Walk<'a> {
    root: &'a Path,
    as_root: bool,
    keep: BTreeSet<PathBuf>,
}

impl Walk<'_> {
    fn io(&self, relative: &Path) -> impl FnOnce(Errno) -> SystemError + use<> {
        let path = self.root.join(relative);
        move |errno| SystemError::Io {
            path,
            source: errno.into(),
        }
    }

    /// The mode `stat` should have: set-id bits only where privileged.
    fn wanted_mode(&self, stat: &rfs::Stat, relative: &Path) -> u32 {
        let mode = stat.st_mode & 0o7777;
        if self.keep.contains(relative) {
            mode
        } else {
            mode & !SET_ID_BITS
        }
    }

    /// Makes directory `dir` root's (as root) and writable by nobody else,
    /// so that no other process can change its entries from now on; then
    /// sets its mode.
    fn lock_dir(&self, dir: &OwnedFd, relative: &Path) -> Result<()> {
        let io = || self.io(relative);
        if self.as_root {
            rfs::fchown(dir, Some(Uid::ROOT), Some(Gid::ROOT)).map_err(io())?;
        }
        // Read again after the chown: until then its owner could change it.
        let stat = rfs::fstat(dir).map_err(io())?;
        let mode = self.wanted_mode(&stat, relative) & !SHARED_WRITE;
        if mode != stat.st_mode & 0o7777 {
            rfs::fchmod(dir, Mode::from_raw_mode(mode)).map_err(io())?;
        }
        Ok(())
    }

    /// The entries of locked directory `dir`, each with its `lstat`.
    fn entries(&self, dir: &OwnedFd, relative: &Path) -> Result<Vec<(OsString, rfs::Stat)>> {
        let io = || self.io(relative);
        let mut out = Vec::new();
        for entry in rfs::Dir::read_from(dir).map_err(io())? {
            let entry = entry.map_err(io())?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let name = OsStr::from_bytes(name).to_os_string();
            let stat = rfs::statat(dir, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(self.io(&relative.join(&name)))?;
            out.push((name, stat));
        }
        Ok(out)
    }

    /// Refuses `fd` unless it is the inode `stat` describes.
    fn same_inode(&self, fd: &impl AsFd, stat: &rfs::Stat, relative: &Path) -> Result<()> {
        let now = rfs::fstat(fd).map_err(self.io(relative))?;
        if (now.st_dev, now.st_ino) != (stat.st_dev, stat.st_ino) {
            return Err(SystemError::Io {
                path: self.root.join(relative),
                source: std::io::Error::other("changed while the build output was normalised"),
            });
        }
        Ok(())
    }

    /// Opens the regular file `name` of locked directory `dir` for reading
    /// (never a link), checked to be the inode `stat` describes.
    fn open_file(
        &self,
        dir: &OwnedFd,
        name: &OsStr,
        stat: &rfs::Stat,
        path: &Path,
    ) -> Result<OwnedFd> {
        let file = rfs::openat(
            dir,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(self.io(path))?;
        self.same_inode(&file, stat, path)?;
        Ok(file)
    }

    /// Makes the entry `name` of locked directory `dir` root's, without
    /// following it (its name cannot change: `dir` is locked).
    fn own_entry(&self, dir: &OwnedFd, name: &OsStr, stat: &rfs::Stat, path: &Path) -> Result<()> {
        if self.as_root && (stat.st_uid != 0 || stat.st_gid != 0) {
            rfs::chownat(
                dir,
                name,
                Some(Uid::ROOT),
                Some(Gid::ROOT),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(self.io(path))?;
        }
        Ok(())
    }

    /// A file without privileges: root's, no set-id bits, no capabilities.
    fn plain_file(&self, dir: &OwnedFd, name: &OsStr, stat: &rfs::Stat, path: &Path) -> Result<()> {
        let io = || self.io(path);
        let file = self.open_file(dir, name, stat, path)?;
        if self.as_root && (stat.st_uid != 0 || stat.st_gid != 0) {
            // chown also clears setuid/setgid and capabilities.
            rfs::fchown(&file, Some(Uid::ROOT), Some(Gid::ROOT)).map_err(io())?;
        }
        let stat = rfs::fstat(&file).map_err(io())?;
        let mode = self.wanted_mode(&stat, path);
        if mode != stat.st_mode & 0o7777 {
            rfs::fchmod(&file, Mode::from_raw_mode(mode)).map_err(io())?;
        }
        // Looked for first: removing a `security.` attribute takes a
        // privilege a build by another user than root does not have, even
        // where there is none to remove.
        match rfs::fgetxattr(&file, CAPABILITY_XATTR, &mut [0u8; CAPABILITY_MAX]) {
            Err(Errno::NODATA) => Ok(()),
            Ok(_) | Err(Errno::RANGE) => match rfs::fremovexattr(&file, CAPABILITY_XATTR) {
                Ok(()) | Err(Errno::NODATA) => Ok(()),
                Err(e) => Err(io()(e)),
            },
            Err(e) => Err(io()(e)),
        }
    }

    /// A privileged file: its bytes, capabilities and mode copied to a new
    /// file of root's that takes its name, so that no descriptor opened on
    /// the old one can change what becomes privileged.
    fn renew_privileged(
        &self,
        dir: &OwnedFd,
        name: &OsStr,
        stat: &rfs::Stat,
        path: &Path,
    ) -> Result<()> {
        let io = || self.io(path);
        let old = self.open_file(dir, name, stat, path)?;
        let mut capability = [0u8; CAPABILITY_MAX];
        let capability = match rfs::fgetxattr(&old, CAPABILITY_XATTR, &mut capability) {
            Ok(len) => Some(capability[..len].to_vec()),
            Err(Errno::NODATA) => None,
            Err(e) => return Err(io()(e)),
        };
        // A name no entry has (the directory is locked: only this walk
        // adds to it), never one of the output's.
        let (temporary, new) = (0u32..)
            .map(|n| OsString::from(format!(".nexus-privileged-{}-{n}", std::process::id())))
            .find_map(|temporary| {
                let created = rfs::openat(
                    dir,
                    temporary.as_os_str(),
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                );
                match created {
                    Err(Errno::EXIST) => None,
                    other => Some(other.map(|fd| (temporary, fd))),
                }
            })
            .unwrap_or(Err(Errno::EXIST))
            .map_err(io())?;
        let mut new = std::fs::File::from(new);
        let finish = std::io::copy(&mut std::fs::File::from(old), &mut new)
            .map_err(|source| SystemError::Io {
                path: self.root.join(path),
                source,
            })
            .and_then(|_| {
                // Not as root, the copy is the caller's, as the build was.
                if self.as_root {
                    rfs::fchown(&new, Some(Uid::ROOT), Some(Gid::ROOT)).map_err(io())?;
                }
                // After the chown, which would clear them.
                rfs::fchmod(&new, Mode::from_raw_mode(stat.st_mode & 0o7777)).map_err(io())?;
                if let Some(value) = &capability {
                    rfs::fsetxattr(&new, CAPABILITY_XATTR, value, rfs::XattrFlags::empty())
                        .map_err(io())?;
                }
                rfs::renameat(dir, temporary.as_os_str(), dir, name).map_err(io())
            });
        if finish.is_err() {
            let _ = rfs::unlinkat(dir, temporary.as_os_str(), AtFlags::empty());
        }
        finish
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown};

    use super::*;

    fn read(path: &Path) -> Vec<u8> {
        fs::read(path).unwrap()
    }

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn set_id_bits_go_unless_declared() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::create_dir_all(root.join("bin")).unwrap();
        for (f, m) in [
            ("bin/su", 0o4755),
            ("bin/evil", 0o6755),
            ("bin/plain", 0o755),
        ] {
            fs::write(root.join(f), b"x").unwrap();
            // The build user's files (a chown after the chmod would clear
            // the bits).
            if nix::unistd::geteuid().is_root() && f != "bin/plain" {
                lchown(root.join(f), Some(65534), Some(65534)).unwrap();
            }
            fs::set_permissions(root.join(f), fs::Permissions::from_mode(m)).unwrap();
        }
        std::os::unix::fs::symlink("su", root.join("bin/link")).unwrap();
        fs::set_permissions(root.join("bin"), fs::Permissions::from_mode(0o2777)).unwrap();
        normalise("r", root, &[PathBuf::from("bin/su")]).unwrap();
        assert_eq!(mode(&root.join("bin/su")), 0o4755);
        assert_eq!(read(&root.join("bin/su")), b"x");
        assert_eq!(mode(&root.join("bin/evil")), 0o755);
        assert_eq!(mode(&root.join("bin/plain")), 0o755);
        assert_eq!(mode(&root.join("bin")), 0o755, "shared write and setgid go");
        let left: Vec<_> = fs::read_dir(root.join("bin")).unwrap().collect();
        assert_eq!(left.len(), 4, "a temporary file was left: {left:?}");
        if nix::unistd::geteuid().is_root() {
            for f in ["bin/evil", "bin/su"] {
                let m = fs::symlink_metadata(root.join(f)).unwrap();
                assert_eq!((m.uid(), m.gid()), (0, 0), "{f}");
            }
        }
        let err = normalise("r", root, &[PathBuf::from("bin/missing")]).unwrap_err();
        assert!(err.to_string().contains("bin/missing"), "{err}");
    }

    /// A descriptor opened for writing on a privileged file before the
    /// walk writes to an inode the output no longer holds.
    #[test]
    fn a_privileged_file_is_a_new_inode_no_old_descriptor_reaches() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::create_dir(root.join("bin")).unwrap();
        fs::write(root.join("bin/su"), b"honest").unwrap();
        fs::set_permissions(root.join("bin/su"), fs::Permissions::from_mode(0o4755)).unwrap();
        let mut held = fs::OpenOptions::new()
            .write(true)
            .open(root.join("bin/su"))
            .unwrap();
        normalise("r", root, &[PathBuf::from("bin/su")]).unwrap();
        held.write_all(b"hostile").unwrap();
        assert_eq!(read(&root.join("bin/su")), b"honest");
        assert_eq!(mode(&root.join("bin/su")), 0o4755);
    }

    /// The attack the walk by path allowed, as it ran: while root walks,
    /// another process keeps exchanging a subdirectory of the output with
    /// a link to a host directory holding the same names. Walked by path,
    /// root chowned and chmodded the host's files (a privileged name came
    /// out setuid root). Whatever the walk meets, nothing behind the link
    /// may change; the walk itself may fail.
    #[test]
    fn a_directory_exchanged_for_a_link_during_the_walk_reaches_nothing_behind_it() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let tmp = tempfile::tempdir().unwrap();
        let host = tmp.path().join("host");
        fs::create_dir(&host).unwrap();
        let names: Vec<String> = (0..2000)
            .map(|i| format!("f{i}"))
            .chain(["su".into()])
            .collect();
        for name in &names {
            fs::write(host.join(name), b"host").unwrap();
            if nix::unistd::geteuid().is_root() {
                lchown(host.join(name), Some(65534), Some(65534)).unwrap();
            }
            fs::set_permissions(host.join(name), fs::Permissions::from_mode(0o755)).unwrap();
        }
        for round in 0..5 {
            let root = tmp.path().join(format!("out{round}"));
            fs::create_dir_all(root.join("bin")).unwrap();
            for name in &names {
                fs::write(root.join("bin").join(name), b"built").unwrap();
            }
            fs::set_permissions(root.join("bin/su"), fs::Permissions::from_mode(0o4755)).unwrap();
            std::os::unix::fs::symlink(&host, root.join("link")).unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let swapper = {
                let (stop, root) = (stop.clone(), root.clone());
                std::thread::spawn(move || {
                    let dir = rfs::open(&root, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
                        .unwrap();
                    while !stop.load(Ordering::Relaxed) {
                        let _ = rfs::renameat_with(
                            &dir,
                            "bin",
                            &dir,
                            "link",
                            rfs::RenameFlags::EXCHANGE,
                        );
                    }
                })
            };
            let _ = normalise("r", &root, &[PathBuf::from("bin/su")]);
            stop.store(true, Ordering::Relaxed);
            swapper.join().unwrap();
            for name in &names {
                let m = fs::symlink_metadata(host.join(name)).unwrap();
                assert_eq!(
                    m.mode() & 0o7777,
                    0o755,
                    "round {round}: host {name}'s mode"
                );
                if nix::unistd::geteuid().is_root() {
                    assert_eq!(m.uid(), 65534, "round {round}: host {name} chowned");
                }
            }
        }
    }

    /// The attack the walk by path allowed: a process of the build user's
    /// uid, holding the output's directory, swaps a subdirectory for a link
    /// to a host directory while root walks. Here the swap is made before
    /// the walk, the worst moment for a walk that locks each directory
    /// before reading it: the link is an entry like any other, never
    /// followed, and nothing behind it changes.
    #[test]
    fn a_link_swapped_in_for_a_directory_is_never_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, host) = (tmp.path().join("out"), tmp.path().join("host"));
        fs::create_dir_all(root.join("bin")).unwrap();
        fs::create_dir(&host).unwrap();
        fs::write(host.join("su"), b"theirs").unwrap();
        if nix::unistd::geteuid().is_root() {
            lchown(host.join("su"), Some(65534), Some(65534)).unwrap();
        }
        fs::set_permissions(host.join("su"), fs::Permissions::from_mode(0o4755)).unwrap();
        fs::remove_dir(root.join("bin")).unwrap();
        std::os::unix::fs::symlink(&host, root.join("bin")).unwrap();
        let err = normalise("r", &root, &[PathBuf::from("bin/su")]).unwrap_err();
        assert!(err.to_string().contains("bin/su"), "{err}");
        assert_eq!(mode(&host.join("su")), 0o4755, "the host file was changed");
        if nix::unistd::geteuid().is_root() {
            let m = fs::symlink_metadata(host.join("su")).unwrap();
            assert_eq!(m.uid(), 65534, "the host file was chowned");
        }
    }
}
