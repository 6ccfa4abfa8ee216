//! Rendering catalog rows for humans and as JSON.

use nexus_store::catalog::InodeRow;
use nexus_store::tree::InodeType;
use serde_json::{Value, json};

use crate::human::for_terminal;

/// The `type` string of an inode.
pub fn kind_name(k: InodeType) -> &'static str {
    match k {
        InodeType::Dir => "dir",
        InodeType::File => "file",
        InodeType::Symlink => "symlink",
    }
}

/// A path for display; non-UTF-8 bytes are replaced (JSON adds the exact
/// bytes in hex).
pub fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// One line of `nip files`: mode, owner, group, size, path and a symlink's
/// target.
pub fn file_line(path: &[u8], inode: &InodeRow) -> String {
    let mut line = format!(
        "{} {:>5} {:>5} {:>10} {}",
        mode_string(inode.kind, inode.mode),
        inode.uid,
        inode.gid,
        inode.size,
        for_terminal(path)
    );
    if let Some(t) = &inode.target {
        line.push_str(" -> ");
        line.push_str(&for_terminal(t));
    }
    line
}

/// One `nip files --json` entry.
pub fn file_json(path: &[u8], inode: &InodeRow) -> Value {
    let mut v = json!({
        "path": lossy(path),
        "type": kind_name(inode.kind),
        "mode": inode.mode,
        "uid": inode.uid,
        "gid": inode.gid,
        "size": inode.size,
        "mtime": inode.mtime,
        "inode": inode.id,
        "nlink": inode.nlink,
        "xattrs": inode.xattrs.iter().map(|(k, val)| (lossy(k), Value::String(hex::encode(val)))).collect::<serde_json::Map<_, _>>(),
    });
    if std::str::from_utf8(path).is_err() {
        v["path_hex"] = Value::String(hex::encode(path));
    }
    if let Some(h) = &inode.content {
        v["hash"] = Value::String(h.to_hex());
    }
    if let Some(t) = &inode.target {
        v["target"] = Value::String(lossy(t));
        if std::str::from_utf8(t).is_err() {
            v["target_hex"] = Value::String(hex::encode(t));
        }
    }
    v
}

/// `ls -l`-style permission string.
pub fn mode_string(k: InodeType, mode: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(match k {
        InodeType::Dir => 'd',
        InodeType::Symlink => 'l',
        InodeType::File => '-',
    });
    let bits = [
        (0o400, 'r'),
        (0o200, 'w'),
        (0o100, 'x'),
        (0o040, 'r'),
        (0o020, 'w'),
        (0o010, 'x'),
        (0o004, 'r'),
        (0o002, 'w'),
        (0o001, 'x'),
    ];
    for (i, (bit, c)) in bits.iter().enumerate() {
        let set = mode & bit != 0;
        let special = match i {
            2 => mode & 0o4000 != 0,
            5 => mode & 0o2000 != 0,
            8 => mode & 0o1000 != 0,
            _ => false,
        };
        s.push(match (set, special, i) {
            (true, true, 8) => 't',
            (false, true, 8) => 'T',
            (true, true, _) => 's',
            (false, true, _) => 'S',
            (true, false, _) => *c,
            (false, false, _) => '-',
        });
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names and symlink targets come from packages, `.deb`s and other
    /// unsigned files included, and may hold any byte but `/` and NUL:
    /// written as they are, an escape sequence reached the admin's
    /// terminal (retitling it, writing its clipboard) and a newline or
    /// U+202E made `nip files` show entries the package does not have.
    #[test]
    fn listed_names_reach_the_terminal_without_control_or_format_characters() {
        let inode = InodeRow {
            id: 1,
            package: 1,
            kind: InodeType::Symlink,
            mode: 0o777,
            uid: 0,
            gid: 0,
            size: 4,
            mtime: 0,
            nlink: 1,
            blob: None,
            content: None,
            target: Some(b"\x1b]52;c;cm0gLXJmIH4=\x07x".to_vec()),
            xattrs: Vec::new(),
        };
        let name =
            "bin/a\n-rwsr-xr-x     0     0      12345 bin/sudo\u{202e}txt.exe\x1b[2J".as_bytes();
        let line = file_line(name, &inode);
        assert!(
            !line
                .chars()
                .any(|c| c.is_control() || nexus_store::names::is_format(c)),
            "{line:?}"
        );
        // Still readable: what was there is spelt out.
        assert!(
            line.contains("bin/a\\n-rwsr") && line.contains("\\u{202e}"),
            "{line}"
        );
    }

    #[test]
    fn formats_modes() {
        assert_eq!(mode_string(InodeType::File, 0o4755), "-rwsr-xr-x");
        assert_eq!(mode_string(InodeType::Dir, 0o1777), "drwxrwxrwt");
    }
}
