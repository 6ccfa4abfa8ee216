//! The sandbox's command-line switches, shared by `nexus mount` and
//! `nexus serve`, and who may connect to the vhost-user socket.

use std::path::PathBuf;

use anyhow::{Result, bail};

/// The command-line switches of the sandbox, shared by `nexus mount` and
/// `nexus serve`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct SandboxArgs {
    /// Serve without the sandbox, as root with every capability (for
    /// debugging only: the daemon then parses requests, a VM guest's
    /// included, with full privileges; this is logged as a warning).
    #[arg(long)]
    pub no_sandbox: bool,
    /// The user a daemon started as root serves as once confined
    /// [default: nexus if that user exists, else nobody].
    #[arg(long, value_name = "USER", conflicts_with = "no_sandbox")]
    pub sandbox_user: Option<String>,
    /// Test hook: after confining, try what the sandbox forbids and write
    /// what happened to FILE (JSON lines), then serve as usual.
    #[arg(long, value_name = "FILE", hide = true, conflicts_with = "no_sandbox")]
    pub sandbox_selftest: Option<PathBuf>,
}

/// Who may connect to the vhost-user socket.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct SocketArgs {
    /// The socket's permissions, in octal: 600 lets only the daemon's
    /// user (root) connect; 660 with --socket-group lets a QEMU running
    /// as a member of that group connect too [default: 600].
    #[arg(long, value_name = "MODE", value_parser = parse_mode)]
    pub socket_mode: Option<u32>,
    /// The socket's group (a name or a number).
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,
}

fn parse_mode(text: &str) -> Result<u32, String> {
    let mode = u32::from_str_radix(text, 8)
        .map_err(|_| format!("{text:?} is not an octal mode such as 600 or 660"))?;
    if mode & !0o777 != 0 {
        return Err(format!(
            "{text:?} has bits beyond the permissions (rwx for user, group, others)"
        ));
    }
    Ok(mode)
}

impl SocketArgs {
    /// How the socket is created.
    pub fn options(&self) -> Result<nexus_virtiofs::SocketOptions> {
        let group = self
            .socket_group
            .as_deref()
            .map(|name| {
                let found = match name.parse::<u32>() {
                    Ok(gid) => nix::unistd::Group::from_gid(gid.into()),
                    Err(_) => nix::unistd::Group::from_name(name),
                };
                match found {
                    Ok(Some(group)) => Ok(group.gid.as_raw()),
                    Ok(None) => bail!("--socket-group {name}: no such group"),
                    Err(e) => bail!("--socket-group {name}: {e}"),
                }
            })
            .transpose()?;
        Ok(nexus_virtiofs::SocketOptions {
            mode: self
                .socket_mode
                .unwrap_or(nexus_virtiofs::SocketOptions::default().mode),
            group,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_modes_are_octal_permissions_only() {
        assert_eq!(parse_mode("600"), Ok(0o600));
        assert_eq!(parse_mode("0660"), Ok(0o660));
        assert!(parse_mode("4755").is_err());
        assert!(parse_mode("rw").is_err());
    }
}
