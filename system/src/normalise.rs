//! What a build script left in its output, made fit to import: owned by
//! root (as root), and without setuid/setgid bits or file capabilities
//! except on the paths its recipe declares `privileged`.
//!
//! The build user owns what it wrote, and may set the setuid bit on its
//! own files; imported as they are, those would become setuid programs of
//! whoever the store says owns them. Nothing can change the tree while it
//! is walked: every sandbox process is gone once its pid 1 has exited, and
//! the tree sits in the caller's private scratch directory. Symlinks are
//! never followed.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown};
use std::path::{Path, PathBuf};

use crate::error::{Result, SystemError};

/// The extended attribute holding file capabilities.
const CAPABILITY_XATTR: &str = "security.capability";
/// setuid and setgid.
const SET_ID_BITS: u32 = 0o6000;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SystemError + '_ {
    move |source| SystemError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Normalises the tree at `root` for `recipe`, keeping setuid/setgid bits
/// and capabilities on the `privileged` paths (relative to `root`), each
/// of which must exist.
pub fn normalise(recipe: &str, root: &Path, privileged: &[PathBuf]) -> Result<()> {
    let as_root = nix::unistd::geteuid().is_root();
    let keep: BTreeSet<PathBuf> = privileged.iter().map(|p| root.join(p)).collect();
    for path in &keep {
        if fs::symlink_metadata(path).is_err() {
            return Err(SystemError::Recipe(format!(
                "recipe `{recipe}` declares {} privileged, but its build script made no such file",
                path.strip_prefix(root).unwrap_or(path).display()
            )));
        }
    }
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = fs::symlink_metadata(&path).map_err(io(&path))?;
        if as_root && (meta.uid() != 0 || meta.gid() != 0) {
            // chown also clears setuid/setgid and capabilities; what is
            // kept is put back below.
            lchown(&path, Some(0), Some(0)).map_err(io(&path))?;
        }
        if meta.file_type().is_symlink() {
            continue;
        }
        let privileged = keep.contains(&path);
        let mode = meta.mode() & 0o7777;
        let wanted = if privileged {
            mode
        } else {
            mode & !SET_ID_BITS
        };
        if wanted != mode || (as_root && privileged && mode & SET_ID_BITS != 0) {
            fs::set_permissions(&path, fs::Permissions::from_mode(wanted)).map_err(io(&path))?;
        }
        if !privileged && meta.is_file() {
            match xattr::remove(&path, CAPABILITY_XATTR) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {}
                Err(e) => return Err(SystemError::Io { path, source: e }),
            }
        }
        if meta.is_dir() {
            for entry in fs::read_dir(&path).map_err(io(&path))? {
                stack.push(entry.map_err(io(&path))?.path());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
            fs::set_permissions(root.join(f), fs::Permissions::from_mode(m)).unwrap();
        }
        std::os::unix::fs::symlink("su", root.join("bin/link")).unwrap();
        fs::set_permissions(root.join("bin"), fs::Permissions::from_mode(0o2755)).unwrap();
        if nix::unistd::geteuid().is_root() {
            lchown(root.join("bin/evil"), Some(65534), Some(65534)).unwrap();
        }
        normalise("r", root, &[PathBuf::from("bin/su")]).unwrap();
        assert_eq!(mode(&root.join("bin/su")), 0o4755);
        assert_eq!(mode(&root.join("bin/evil")), 0o755);
        assert_eq!(mode(&root.join("bin/plain")), 0o755);
        assert_eq!(mode(&root.join("bin")), 0o755);
        if nix::unistd::geteuid().is_root() {
            let m = fs::symlink_metadata(root.join("bin/evil")).unwrap();
            assert_eq!((m.uid(), m.gid()), (0, 0));
        }
        let err = normalise("r", root, &[PathBuf::from("bin/missing")]).unwrap_err();
        assert!(err.to_string().contains("bin/missing"), "{err}");
    }
}
