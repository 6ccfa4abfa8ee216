//! Opening a file a caller names as a package or an archive: only a
//! regular file is read, and what is not one is refused at once.
//!
//! A plain `open` of a FIFO waits for a writer: a name in a directory
//! another user may write (a download directory, a build's cache) could be
//! swapped for a FIFO and hold `nip add` — and the store's write lock with
//! it — forever. A device would be read without end. So the file is opened
//! without blocking, its type checked on the open descriptor (not on the
//! name, which may change in between), and only then made blocking again.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Opens `path` for reading if it is a regular file (symlinks followed),
/// refusing a directory, FIFO, socket or device with an
/// [`io::ErrorKind::InvalidInput`] error that names what it is.
pub fn open_regular(path: &Path) -> io::Result<File> {
    open(path, 0)
}

/// [`open_regular`], refusing also a symlink at `path` itself (`ELOOP`):
/// for a name in a directory others may write, whose symlink could point
/// root at a file of the planter's choosing.
pub fn open_regular_nofollow(path: &Path) -> io::Result<File> {
    open(path, libc::O_NOFOLLOW)
}

fn open(path: &Path, flags: libc::c_int) -> io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | flags)
        .open(path)?;
    let kind = file.metadata()?.file_type();
    let what = if kind.is_file() {
        None
    } else if kind.is_dir() {
        Some("a directory")
    } else if kind.is_fifo() {
        Some("a FIFO")
    } else if kind.is_socket() {
        Some("a socket")
    } else if kind.is_char_device() || kind.is_block_device() {
        Some("a device")
    } else {
        Some("not a file")
    };
    if let Some(what) = what {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what}, not a regular file"),
        ));
    }
    // Reads of a regular file never block on O_NONBLOCK anyway; cleared so
    // that nothing later mistakes the descriptor for a non-blocking one.
    let flags = rustix::fs::fcntl_getfl(&file)?;
    rustix::fs::fcntl_setfl(&file, flags - rustix::fs::OFlags::NONBLOCK)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_open() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.deb");
        std::fs::write(&file, b"x").unwrap();
        assert!(open_regular(&file).is_ok());
        let link = dir.path().join("link.deb");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(open_regular(&link).is_ok());

        // A FIFO with no writer: refused at once, not waited on.
        let fifo = dir.path().join("b.deb");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let err = open_regular(&fifo).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("FIFO"), "{err}");

        for (path, what) in [
            (Path::new("/dev/zero"), "device"),
            (dir.path(), "directory"),
        ] {
            let err = open_regular(path).unwrap_err();
            assert!(err.to_string().contains(what), "{err}");
        }
    }
}
