//! Which file system is mounted where, from `/proc/self/mountinfo`.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{Context, Result};

/// The device number of the file system mounted at `path` (the topmost
/// mount there), from `/proc/self/mountinfo`: reading it asks nothing of
/// the FUSE server, which does not serve yet.
pub(super) fn mount_device(path: &Path) -> Result<(u32, u32)> {
    let table = std::fs::read("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let wanted = path.as_os_str().as_bytes();
    let mut found = None;
    for line in table.split(|&b| b == b'\n') {
        let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        let (Some(dev), Some(point)) = (fields.get(2), fields.get(4)) else {
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
    found.with_context(|| format!("{} is not a mount point", path.display()))
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
    fn the_mount_device_of_root_is_found() {
        let (major, _) = mount_device(Path::new("/")).unwrap();
        assert!(major < 4096);
        assert!(mount_device(Path::new("/surely/not/a/mount/point")).is_err());
    }
}
