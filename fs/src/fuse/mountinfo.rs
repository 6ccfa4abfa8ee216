//! What the kernel says about a mount without asking its FUSE server:
//! which device a mount point has (`/proc/self/mountinfo`), and the
//! read-ahead window of that device's backing info (sysfs).

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The device number (major, minor) of the file system mounted at `path`
/// (the topmost mount there), from `/proc/self/mountinfo`: reading it asks
/// nothing of the FUSE server, which may not serve yet.
pub fn mount_device(path: &Path) -> io::Result<(u32, u32)> {
    let table = std::fs::read("/proc/self/mountinfo")?;
    device_in(&table, path).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} is not a mount point", path.display()),
        )
    })
}

/// The device of the last (topmost) mount at `path` in a mountinfo table.
fn device_in(table: &[u8], path: &Path) -> Option<(u32, u32)> {
    let wanted = path.as_os_str().as_bytes();
    let mut found = None;
    for line in table.split(|&b| b == b'\n') {
        let mut fields = line.split(|&b| b == b' ');
        let (Some(dev), Some(point)) = (fields.nth(2), fields.nth(1)) else {
            continue;
        };
        if unescape_mountinfo(point) != wanted {
            continue;
        }
        let dev = std::str::from_utf8(dev).ok().and_then(|d| {
            let (major, minor) = d.split_once(':')?;
            Some((major.parse().ok()?, minor.parse().ok()?))
        });
        if dev.is_some() {
            found = dev;
        }
    }
    found
}

/// The sysfs file holding the read-ahead window, in KiB, of the file system
/// mounted at `path`.
fn read_ahead_file(path: &Path) -> io::Result<PathBuf> {
    let (major, minor) = mount_device(path)?;
    Ok(PathBuf::from(format!(
        "/sys/class/bdi/{major}:{minor}/read_ahead_kb"
    )))
}

/// Sets how far ahead the kernel reads a file of the mount at `path` that
/// is read sequentially, in KiB. A FUSE mount starts with the kernel's
/// default of 128 KiB whatever the server answers at `FUSE_INIT` (the
/// answer can only lower it), so that a sequential reader of a large file
/// waits for one 128 KiB request after another; a wider window lets the
/// kernel ask for up to a request's maximum (1 MiB) at a time, several in
/// flight. Needs root (sysfs); the caller decides what a failure means.
pub fn set_read_ahead(path: &Path, kib: u32) -> io::Result<()> {
    std::fs::write(read_ahead_file(path)?, format!("{kib}\n"))
}

/// A mountinfo field with its octal escapes (`\040` for a space) decoded.
fn unescape_mountinfo(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\'
            && let Some(digits) = field.get(i + 1..i + 4)
            && let Ok(text) = std::str::from_utf8(digits)
            && let Ok(byte) = u8::from_str_radix(text, 8)
        {
            out.push(byte);
            i += 4;
            continue;
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo(br"/a\040b\134c"), b"/a b\\c");
        assert_eq!(unescape_mountinfo(br"/plain"), b"/plain");
        assert_eq!(unescape_mountinfo(br"/odd\04"), br"/odd\04");
    }

    #[test]
    fn the_topmost_mount_at_a_path_is_the_one_found() {
        let table = b"22 1 254:1 / / rw - ext4 /dev/vda1 rw\n\
                      40 22 0:52 / /mnt\\040x rw - fuse.nexus /store ro\n\
                      41 40 0:53 / /mnt\\040x rw - fuse.nexus /store ro\n";
        assert_eq!(device_in(table, Path::new("/mnt x")), Some((0, 53)));
        assert_eq!(device_in(table, Path::new("/")), Some((254, 1)));
        assert_eq!(device_in(table, Path::new("/mnt")), None);
    }

    #[test]
    fn the_mount_device_of_root_is_found() {
        let (major, _) = mount_device(Path::new("/")).unwrap();
        assert!(major < 4096);
        assert!(mount_device(Path::new("/surely/not/a/mount/point")).is_err());
    }
}
