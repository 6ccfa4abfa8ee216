//! Who a build script runs as when `nexus build` runs as root: a build
//! user, as Nix's `nixbld` users.
//!
//! The default is the account `nexusbld` when the system has one (create
//! it with `useradd --system --no-create-home --shell /usr/sbin/nologin
//! nexusbld`): no other process runs as it, so nothing outside a build can
//! signal or trace the build or reach its files. Without that account each
//! build gets a uid of its own, as Nix's automatic build users do: one of
//! [`DYNAMIC_UIDS`] that no account or group names and no process runs as
//! (its gid the same number). Only root can make a process of a uid, so
//! none can appear there but another root's: a build's processes share
//! their uid with no other service, and no process of another can open its
//! output through `/proc` or trace it. A shared account such as `nobody`
//! would let every service running as it do both. Root is never a build
//! user.

use nix::unistd::{Gid, Group, Uid, User};

use crate::error::{Result, SystemError};

/// The account a build runs as by default, when it exists.
pub const DEFAULT_BUILD_USER: &str = "nexusbld";
/// The uids a build without the `nexusbld` account runs as, one each:
/// 65,536 from 1,314,390,016 (`0x4E580000`), above the ranges
/// distributions, systemd's dynamic users and container id maps hand out,
/// and below 2^31 (some tools take uids as signed).
pub const DYNAMIC_UIDS: std::ops::Range<u32> = 0x4E58_0000..0x4E59_0000;

/// A build user: the uid and gid a build script runs as (no
/// supplementary groups).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildUser {
    /// The uid.
    pub uid: u32,
    /// The gid.
    pub gid: u32,
}

impl BuildUser {
    /// The default build user: as root, [`DEFAULT_BUILD_USER`] if it
    /// exists, else a uid of [`DYNAMIC_UIDS`] no account, group or process
    /// has; as another user, that user (its builds run as itself, in a
    /// user namespace).
    pub fn default_user() -> Result<BuildUser> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(BuildUser {
                uid: nix::unistd::getuid().as_raw(),
                gid: nix::unistd::getgid().as_raw(),
            });
        }
        match User::from_name(DEFAULT_BUILD_USER) {
            Ok(Some(u)) if !u.uid.is_root() => Ok(BuildUser {
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
            }),
            _ => BuildUser::dynamic(),
        }
    }

    /// A uid of [`DYNAMIC_UIDS`] that no account or group names and no
    /// process runs as, starting from a place that differs per process
    /// (two builds at once take two uids).
    pub fn dynamic() -> Result<BuildUser> {
        let used = uids_of_processes().map_err(|e| SystemError::BuildUser {
            spec: "(a build uid of its own)".into(),
            why: format!("cannot list the uids of running processes: {e}"),
        })?;
        let count = DYNAMIC_UIDS.end - DYNAMIC_UIDS.start;
        let start = std::process::id().wrapping_mul(2_654_435_761) % count;
        (0..count)
            .map(|i| DYNAMIC_UIDS.start + (start + i) % count)
            .find(|&uid| {
                !used.contains(&uid)
                    && matches!(User::from_uid(Uid::from_raw(uid)), Ok(None))
                    && matches!(Group::from_gid(Gid::from_raw(uid)), Ok(None))
            })
            .map(|uid| BuildUser { uid, gid: uid })
            .ok_or_else(|| SystemError::BuildUser {
                spec: "(a build uid of its own)".into(),
                why: format!(
                    "every uid from {} to {} is taken; create the account {DEFAULT_BUILD_USER} or pass --build-user",
                    DYNAMIC_UIDS.start,
                    DYNAMIC_UIDS.end - 1
                ),
            })
    }

    /// Parses `USER`, `UID`, `USER:GROUP` or `UID:GID` (an account's own
    /// group when none is given; a bare uid without an account gets the
    /// gid of the same number). Root (uid or gid 0) is refused.
    pub fn parse(spec: &str) -> Result<BuildUser> {
        let bad = |why: String| SystemError::BuildUser {
            spec: spec.to_string(),
            why,
        };
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        let account = match user.parse::<u32>() {
            Ok(uid) => User::from_uid(Uid::from_raw(uid))
                .ok()
                .flatten()
                .map(|u| (u.uid.as_raw(), u.gid.as_raw()))
                .or(Some((uid, uid))),
            Err(_) => User::from_name(user)
                .map_err(|e| bad(format!("cannot read the user database: {e}")))?
                .map(|u| (u.uid.as_raw(), u.gid.as_raw())),
        };
        let Some((uid, own_gid)) = account else {
            return Err(bad(format!("no user `{user}`")));
        };
        let gid = match group {
            None => own_gid,
            Some(g) => match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => Group::from_name(g)
                    .map_err(|e| bad(format!("cannot read the group database: {e}")))?
                    .map(|g| g.gid.as_raw())
                    .ok_or_else(|| bad(format!("no group `{g}`")))?,
            },
        };
        if uid == 0 || gid == 0 {
            return Err(bad("root cannot be a build user".into()));
        }
        Ok(BuildUser { uid, gid })
    }

    /// The uid, typed.
    pub(crate) fn uid(&self) -> Uid {
        Uid::from_raw(self.uid)
    }

    /// The gid, typed.
    pub(crate) fn gid(&self) -> Gid {
        Gid::from_raw(self.gid)
    }
}

/// Every uid (real, effective, saved or file system) some process runs as.
fn uids_of_processes() -> std::io::Result<std::collections::HashSet<u32>> {
    let mut uids = std::collections::HashSet::new();
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        if !entry
            .file_name()
            .as_encoded_bytes()
            .iter()
            .all(u8::is_ascii_digit)
        {
            continue;
        }
        // A process may end between the listing and the read.
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        if let Some(line) = status.lines().find(|l| l.starts_with("Uid:")) {
            uids.extend(
                line[4..]
                    .split_whitespace()
                    .filter_map(|u| u.parse::<u32>().ok()),
            );
        }
    }
    Ok(uids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_users_parse_and_root_is_refused() {
        assert_eq!(
            BuildUser::parse("65534").unwrap(),
            BuildUser {
                uid: 65534,
                gid: 65534
            }
        );
        assert_eq!(
            BuildUser::parse("30001:30002").unwrap(),
            BuildUser {
                uid: 30001,
                gid: 30002
            }
        );
        let nobody = BuildUser::parse("nobody").unwrap();
        assert_eq!(nobody.uid, 65534);
        for root in ["root", "0", "nobody:0", "0:65534"] {
            assert!(BuildUser::parse(root).is_err(), "{root} accepted");
        }
        assert!(BuildUser::parse("no-such-user-here").is_err());
        assert_ne!(BuildUser::default_user().unwrap().uid, 0);
    }

    #[test]
    fn a_dynamic_build_user_is_nobody_elses() {
        let user = BuildUser::dynamic().unwrap();
        assert!(DYNAMIC_UIDS.contains(&user.uid));
        assert_eq!(user.gid, user.uid);
        assert!(matches!(User::from_uid(user.uid()), Ok(None)));
        assert!(!uids_of_processes().unwrap().contains(&user.uid));
        // This process's own uid is seen.
        assert!(
            uids_of_processes()
                .unwrap()
                .contains(&nix::unistd::getuid().as_raw())
        );
    }
}
