//! `mount.fuse.nexus` (and `mount.nexus`): the helper mount(8) runs for
//! `mount -t fuse.nexus STORE MOUNTPOINT -o OPTIONS` and for fstab lines
//! of type `fuse.nexus`, as `nexus` called by another name (a symlink).
//!
//! mount(8) runs `mount.fuse.nexus SOURCE MOUNTPOINT [-sfnv] [-N NS] [-o
//! OPTIONS] [-t TYPE]`; the source is the store directory. The helper turns
//! that into `nexus --store SOURCE mount MOUNTPOINT` with these options:
//!
//! | option | becomes |
//! |---|---|
//! | `allow_other` | `--allow-other` |
//! | `index=DIR` | `--index DIR` |
//! | `threads=N` | `--threads N` |
//! | `cache_mib=N` | `--cache-mib N` |
//! | `generation=N` | `--generation N` |
//! | `log_file=FILE` | `--log-file FILE` |
//! | `pid_file=FILE` | `--pid-file FILE` |
//! | `config=FILE` | `--config FILE` |
//! | `nosuid` | `--nosuid` |
//! | `kernel_metadata` | `--kernel-metadata` |
//!
//! Options that mean nothing to a read-only FUSE mount, or that belong to
//! mount(8), systemd or fstab, are ignored as other FUSE helpers ignore
//! them ([`IGNORED`], `x-*`, `comment=*`); any other option is refused
//! (with `-s`, "sloppy", ignored with a warning). `-f` (fake) does
//! nothing; `-v` logs more.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

/// The names it is called by.
pub const NAMES: [&str; 2] = ["mount.fuse.nexus", "mount.nexus"];

/// Options accepted and ignored: mount(8)'s, fstab's and systemd's, and
/// those a read-only FUSE mount has no use for (it is always read-only,
/// `nodev`, and keeps no access times).
pub const IGNORED: &[&str] = &[
    "defaults",
    "auto",
    "noauto",
    "nofail",
    "_netdev",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "ro",
    "rw",
    "sync",
    "async",
    "atime",
    "noatime",
    "relatime",
    "norelatime",
    "strictatime",
    "nostrictatime",
    "lazytime",
    "nolazytime",
    "diratime",
    "nodiratime",
    "dev",
    "nodev",
    "exec",
    "suid",
    "silent",
    "loud",
    "default_permissions",
];

/// Options with a value that are accepted and ignored (by prefix).
const IGNORED_PREFIXES: &[&str] = &["x-", "comment=", "fsname=", "subtype="];

/// How a helper run ends without mounting.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A wrong command line: the message says what (mount(8)'s exit code 1).
    Usage(String),
    /// `-f`: mount(8) only pretends; nothing to do (exit code 0).
    Fake,
}

/// Whether `argv0` is one of the helper's names.
pub fn is_helper(argv0: &OsStr) -> bool {
    let name = std::path::Path::new(argv0)
        .file_name()
        .unwrap_or(argv0)
        .as_bytes();
    NAMES.iter().any(|n| n.as_bytes() == name)
}

/// The `nexus` command line (program name first) for the helper's
/// arguments `args` (after the program name).
pub fn translate(args: &[OsString]) -> Result<Vec<OsString>, Refusal> {
    let mut positional: Vec<OsString> = Vec::new();
    let mut options: Vec<String> = Vec::new();
    let mut sloppy = false;
    let mut fake = false;
    let mut verbose = false;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let bytes = arg.as_bytes();
        if bytes == b"-o" {
            let value = iter
                .next()
                .ok_or_else(|| Refusal::Usage("-o needs a value".into()))?;
            options.push(text(value)?);
        } else if let Some(value) = bytes.strip_prefix(b"-o") {
            options.push(text(OsStr::from_bytes(value))?);
        } else if bytes == b"-t" {
            let kind = iter
                .next()
                .ok_or_else(|| Refusal::Usage("-t needs a value".into()))?;
            check_type(kind)?;
        } else if let Some(kind) = bytes.strip_prefix(b"-t") {
            check_type(OsStr::from_bytes(kind))?;
        } else if bytes == b"-N" || bytes.starts_with(b"-N") {
            return Err(Refusal::Usage(
                "-N (mounting in another namespace) is not supported".into(),
            ));
        } else if bytes.len() > 1 && bytes[0] == b'-' {
            for flag in &bytes[1..] {
                match flag {
                    b's' => sloppy = true,
                    b'f' => fake = true,
                    b'n' => {} // no mtab: there is none to write
                    b'v' => verbose = true,
                    b'r' | b'w' => {} // read-only always
                    other => {
                        return Err(Refusal::Usage(format!(
                            "unknown flag -{}",
                            char::from(*other)
                        )));
                    }
                }
            }
        } else {
            positional.push(arg.clone());
        }
    }
    let [source, mountpoint] = <[OsString; 2]>::try_from(positional).map_err(|p| {
        Refusal::Usage(format!(
            "expected SOURCE (the store) and MOUNTPOINT, got {} arguments",
            p.len()
        ))
    })?;
    let mut out: Vec<OsString> = vec!["nexus".into(), "--store".into(), source];
    let mut mount: Vec<OsString> = vec!["mount".into(), mountpoint];
    let mut config = None;
    for option in options.iter().flat_map(|o| o.split(',')) {
        let (name, value) = match option.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (option, None),
        };
        let flag = |flag: &str, value: Option<&str>| -> Result<Vec<OsString>, Refusal> {
            let value = value
                .filter(|v| !v.is_empty())
                .ok_or_else(|| Refusal::Usage(format!("option {name} needs a value")))?;
            Ok(vec![flag.into(), value.into()])
        };
        match name {
            "" => {}
            "allow_other" => mount.push("--allow-other".into()),
            "nosuid" => mount.push("--nosuid".into()),
            "kernel_metadata" => mount.push("--kernel-metadata".into()),
            "index" => mount.extend(flag("--index", value)?),
            "threads" => mount.extend(flag("--threads", value)?),
            "cache_mib" | "cache-mib" => mount.extend(flag("--cache-mib", value)?),
            "generation" => mount.extend(flag("--generation", value)?),
            "log_file" | "log-file" => mount.extend(flag("--log-file", value)?),
            "pid_file" | "pid-file" => mount.extend(flag("--pid-file", value)?),
            "config" => config = Some(flag("--config", value)?),
            _ if IGNORED.contains(&option)
                || IGNORED_PREFIXES.iter().any(|p| option.starts_with(p)) => {}
            _ if sloppy => eprintln!("mount.fuse.nexus: ignoring the unknown option {option}"),
            _ => {
                return Err(Refusal::Usage(format!(
                    "unknown option {option} (see nexus --help mount)"
                )));
            }
        }
    }
    if fake {
        return Err(Refusal::Fake);
    }
    if let Some(config) = config {
        out.extend(config);
    }
    if verbose {
        out.push("-v".into());
    }
    out.extend(mount);
    Ok(out)
}

fn text(value: &OsStr) -> Result<String, Refusal> {
    value
        .to_str()
        .map(str::to_string)
        .ok_or_else(|| Refusal::Usage("options must be UTF-8".into()))
}

fn check_type(kind: &OsStr) -> Result<(), Refusal> {
    match kind.as_bytes() {
        b"fuse.nexus" | b"nexus" => Ok(()),
        other => Err(Refusal::Usage(format!(
            "this helper mounts type fuse.nexus, not {}",
            String::from_utf8_lossy(other)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &[&str]) -> Vec<OsString> {
        line.iter().map(OsString::from).collect()
    }

    fn strings(out: Vec<OsString>) -> Vec<String> {
        out.into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    #[test]
    fn options_map_to_flags_and_generic_ones_are_ignored() {
        let out = translate(&args(&[
            "/var/lib/nexus",
            "/Programs",
            "-o",
            "ro,allow_other,index=/System/Index,noauto,nofail,_netdev,x-systemd.automount,\
             threads=8,cache_mib=64,defaults,nosuid,kernel_metadata",
            "-n",
            "-t",
            "fuse.nexus",
        ]))
        .unwrap();
        assert_eq!(
            strings(out),
            [
                "nexus",
                "--store",
                "/var/lib/nexus",
                "mount",
                "/Programs",
                "--allow-other",
                "--index",
                "/System/Index",
                "--threads",
                "8",
                "--cache-mib",
                "64",
                "--nosuid",
                "--kernel-metadata"
            ]
        );
    }

    #[test]
    fn unknown_options_are_refused_unless_sloppy() {
        let line = args(&["/s", "/m", "-o", "rw,frobnicate"]);
        assert!(matches!(translate(&line), Err(Refusal::Usage(m)) if m.contains("frobnicate")));
        let mut sloppy = line.clone();
        sloppy.push("-s".into());
        assert!(translate(&sloppy).is_ok());
    }

    #[test]
    fn wrong_lines_are_refused() {
        assert!(matches!(translate(&args(&["/s"])), Err(Refusal::Usage(_))));
        assert!(matches!(
            translate(&args(&["/s", "/m", "-t", "fuse.sshfs"])),
            Err(Refusal::Usage(_))
        ));
        assert!(matches!(
            translate(&args(&["/s", "/m", "-o", "index="])),
            Err(Refusal::Usage(_))
        ));
        assert_eq!(translate(&args(&["/s", "/m", "-f"])), Err(Refusal::Fake));
        let verbose =
            strings(translate(&args(&["/s", "/m", "-v", "-oconfig=/etc/n.kdl"])).unwrap());
        assert_eq!(
            verbose,
            [
                "nexus",
                "--store",
                "/s",
                "--config",
                "/etc/n.kdl",
                "-v",
                "mount",
                "/m"
            ]
        );
    }

    #[test]
    fn the_helper_is_known_by_its_names() {
        assert!(is_helper(OsStr::new("/sbin/mount.fuse.nexus")));
        assert!(is_helper(OsStr::new("mount.nexus")));
        assert!(!is_helper(OsStr::new("/usr/bin/nexus")));
    }
}
