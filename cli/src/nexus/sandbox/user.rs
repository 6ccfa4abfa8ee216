//! The unprivileged user a daemon started as root serves as.

use anyhow::{Context, Result, bail};

/// The sandbox user when `--sandbox-user` is not given, if it exists.
const DEFAULT_USER: &str = "nexus";
/// The sandbox user when [`DEFAULT_USER`] does not exist.
const FALLBACK_USER: &str = "nobody";

/// The sandbox user.
pub(super) struct SandboxUser {
    pub name: String,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
}

/// The user `asked` for, or the default one; never root.
pub(super) fn sandbox_user(asked: Option<&str>) -> Result<SandboxUser> {
    let lookup = |name: &str| {
        nix::unistd::User::from_name(name).with_context(|| format!("looking up the user {name}"))
    };
    let user = match asked {
        Some(name) => {
            lookup(name)?.with_context(|| format!("--sandbox-user {name}: no such user"))?
        }
        None => match lookup(DEFAULT_USER)? {
            Some(user) => user,
            None => lookup(FALLBACK_USER)?.with_context(|| {
                format!(
                    "neither a {DEFAULT_USER} nor a {FALLBACK_USER} user exists to serve as: \
                     name one with --sandbox-user"
                )
            })?,
        },
    };
    if user.uid.is_root() {
        bail!(
            "the sandbox user {} is root: choose an unprivileged one with --sandbox-user",
            user.name
        );
    }
    Ok(SandboxUser {
        name: user.name,
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
    })
}
