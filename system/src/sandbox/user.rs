//! Who a build script runs as when `nexus build` runs as root: a build
//! user, as Nix's `nixbld` users.
//!
//! The default is the account `nexusbld` when the system has one (create
//! it with `useradd --system --no-create-home --shell /usr/sbin/nologin
//! nexusbld`): no other process runs as it, so nothing outside a build can
//! signal or trace the build or reach its files. Without that account the
//! build runs as `nobody` (65534), which other services may share: they
//! cannot reach the build's files through the file system (its scratch
//! directory is root's, mode 0700) but, running as the same user, could
//! signal or trace it. Root is never a build user.

use nix::unistd::{Gid, Group, Uid, User};

use crate::error::{Result, SystemError};

/// The account a build runs as by default, when it exists.
pub const DEFAULT_BUILD_USER: &str = "nexusbld";
/// The fallback: `nobody`'s uid and gid on Debian.
const NOBODY: u32 = 65534;

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
    /// The default build user: [`DEFAULT_BUILD_USER`] if it exists, else
    /// `nobody`.
    pub fn default_user() -> BuildUser {
        match User::from_name(DEFAULT_BUILD_USER) {
            Ok(Some(u)) if !u.uid.is_root() => BuildUser {
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
            },
            _ => match User::from_name("nobody") {
                Ok(Some(u)) if !u.uid.is_root() => BuildUser {
                    uid: u.uid.as_raw(),
                    gid: u.gid.as_raw(),
                },
                _ => BuildUser {
                    uid: NOBODY,
                    gid: NOBODY,
                },
            },
        }
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
        assert_ne!(BuildUser::default_user().uid, 0);
    }
}
