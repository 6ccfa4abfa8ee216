//! The fetcher process of a daemon whose store has remotes
//! ([`nexus_remote::fetcher`]): the confined daemon keeps no network at
//! all, and this process, started before it confines itself, reads the
//! remotes for it under a sandbox of its own:
//!
//! - the sandbox user, no capabilities, `no_new_privs`;
//! - Landlock: read only what name resolution and TLS read (the resolver's
//!   files in `/etc`, the CA certificates) and `file://` remotes'
//!   directories, nothing of the store; TCP connections to the remotes'
//!   ports only, binding none;
//! - seccomp ([`super::filter::fetcher`]): Internet sockets (TCP, and UDP
//!   for DNS), no Unix or netlink sockets, no processes, no executable
//!   mappings.
//!
//! The daemon talks to it over socket pairs whose far ends it inherits
//! (`nexus remote-fetcher --fd N`, hidden); it exits when the daemon closes
//! them.

use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nexus_remote::fetcher::{FetcherLink, FetcherServer};
use nexus_remote::{Location, RemoteSettings};
use nexus_store::catalog::{Catalog, RemoteRow};

use super::rules::{Grant, Rule};
use super::{SandboxArgs, filter, last_capability, rules, selftest, threads, user};
use crate::is_root;

/// Connections between a daemon and its fetcher: as many remote reads at
/// once (others wait for one to be free).
const CONNECTIONS: usize = 4;
/// How much longer than the read deadline the daemon waits for an answer
/// before it gives up on the fetcher (which answers within the deadline).
const GRACE: Duration = Duration::from_secs(30);

/// What name resolution and TLS read: glibc's resolver files, and where
/// rustls-platform-verifier (through rustls-native-certs) looks for the
/// system's CA certificates. Those that exist are granted.
const READ_FOR_NETWORK: &[&str] = &[
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/ssl",
    "/etc/pki",
    "/etc/ca-certificates",
    "/usr/share/ca-certificates",
    "/usr/local/share/ca-certificates",
    "/usr/lib/ssl",
];

/// Starts the fetcher of the store in `store` (which has remotes) and
/// returns the daemon's end; `deadline` is the store's remote read
/// deadline. Call before confining: it runs a program.
pub(super) fn spawn(args: &SandboxArgs, store: &Path, deadline: Duration) -> Result<FetcherLink> {
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for _ in 0..CONNECTIONS {
        let (a, b) = UnixStream::pair().context("creating the fetcher's sockets")?;
        a.set_read_timeout(Some(deadline + GRACE))
            .context("setting the fetcher sockets' timeout")?;
        ours.push(a);
        theirs.push(b);
    }
    let exe = std::env::current_exe().context("finding the nexus program to run the fetcher")?;
    let mut command = Command::new(exe);
    command.arg("--store").arg(store).arg("remote-fetcher");
    for s in &theirs {
        command.arg("--fd").arg(s.as_raw_fd().to_string());
    }
    if let Some(name) = &args.sandbox_user {
        command.arg("--sandbox-user").arg(name);
    }
    if let Some(report) = &args.sandbox_selftest {
        command.arg("--sandbox-selftest").arg(report_path(report));
    }
    let inherited: Vec<RawFd> = theirs.iter().map(AsRawFd::as_raw_fd).collect();
    // SAFETY: the closure only calls fcntl (async-signal-safe) on
    // descriptors this process owns, between fork and exec.
    unsafe {
        command.pre_exec(move || {
            for &fd in &inherited {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("starting the remote fetcher process")?;
    tracing::info!("remote reads go through the fetcher process {}", child.id());
    drop(theirs);
    Ok(FetcherLink::new(ours))
}

/// Where the fetcher writes its selftest report: next to the daemon's.
pub(super) fn report_path(daemon_report: &Path) -> PathBuf {
    let mut path = daemon_report.as_os_str().to_os_string();
    path.push(".fetcher");
    PathBuf::from(path)
}

/// `nexus remote-fetcher`: loads the remotes of the store in `store`,
/// confines itself, and answers on the inherited descriptors `fds` until
/// the daemon closes them.
pub fn serve(args: &SandboxArgs, store: &Path, fds: &[RawFd]) -> Result<()> {
    let mut streams = Vec::new();
    for &fd in fds {
        // SAFETY: fstat on an integer; a descriptor that is not an open
        // socket is refused before it is owned.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(fd, &mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
            bail!("descriptor {fd} is not a socket (the fetcher is started by its daemon only)");
        }
        // SAFETY: inherited from the daemon for this process alone.
        let stream = unsafe { UnixStream::from_raw_fd(fd) };
        // SAFETY: fcntl on the descriptor just taken.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        streams.push(stream);
    }
    let (remotes, settings) = {
        let catalog = Catalog::open_existing(&store.join(nexus_store::CATALOG_FILE))
            .with_context(|| format!("opening the catalog of {}", store.display()))?;
        (catalog.remotes()?, RemoteSettings::load(&catalog)?)
    };
    let server = FetcherServer::new(remotes.clone(), settings.timeouts());
    confine(args, store, &remotes)?;
    std::thread::scope(|scope| {
        for stream in streams {
            let server = &server;
            scope.spawn(move || {
                if let Err(e) = server.serve(stream) {
                    tracing::warn!("remote fetcher: a connection to the daemon broke: {e}");
                }
            });
        }
    });
    Ok(())
}

/// The TCP port of `url` (`scheme://[user@]host[:port]/…`): the one given,
/// else the scheme's.
pub(super) fn port_of(url: &str) -> Option<u16> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let port = match host_port.rfind(']') {
        Some(end) => host_port[end + 1..].strip_prefix(':'),
        None => host_port.rsplit_once(':').map(|(_, p)| p),
    };
    match port {
        Some(p) => p.parse().ok(),
        None => match scheme {
            "https" => Some(443),
            "http" => Some(80),
            _ => None,
        },
    }
}

/// The ports the fetcher may connect to, and the directories of `file://`
/// remotes it reads: exactly what `remotes` (and a proxy set in the
/// environment, which the HTTP client honours) need.
pub(super) fn reach(remotes: &[RemoteRow]) -> (Vec<u16>, Vec<PathBuf>) {
    let mut ports = Vec::new();
    let mut dirs = Vec::new();
    for remote in remotes {
        match Location::parse(&remote.url) {
            Ok(Location::S3 { .. }) => {
                ports.extend(match &remote.endpoint {
                    Some(endpoint) => port_of(endpoint),
                    None => Some(443),
                });
            }
            Ok(Location::Http { base }) => ports.extend(port_of(&base)),
            Ok(Location::File { dir }) => dirs.push(dir),
            Err(_) => {}
        }
    }
    for var in [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        if let Ok(proxy) = std::env::var(var) {
            ports.extend(port_of(&proxy));
        }
    }
    ports.sort_unstable();
    ports.dedup();
    (ports, dirs)
}

/// Confines the fetcher (module documentation).
fn confine(args: &SandboxArgs, store: &Path, remotes: &[RemoteRow]) -> Result<()> {
    let root = is_root();
    let identity = root
        .then(|| user::sandbox_user(args.sandbox_user.as_deref()))
        .transpose()?;
    let (ports, dirs) = reach(remotes);
    let mut granted: Vec<Rule> = READ_FOR_NETWORK
        .iter()
        .map(PathBuf::from)
        .chain(
            ["SSL_CERT_FILE", "SSL_CERT_DIR"]
                .iter()
                .filter_map(|v| std::env::var_os(v).map(PathBuf::from)),
        )
        .chain(dirs)
        .filter(|p| p.exists())
        .map(|path| Rule {
            path,
            grant: Grant::Read,
        })
        .collect();
    granted.dedup_by(|a, b| a.path == b.path);
    let ruleset = rules::ruleset(&granted, &ports).context("preparing the fetcher's sandbox")?;
    let report = args
        .sandbox_selftest
        .as_deref()
        .map(|path| {
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))
        })
        .transpose()?;
    let filters = filter::fetcher().context("compiling the fetcher's seccomp filter")?;
    let step = threads::ThreadStep {
        unshare: 0,
        drop_bounding: root,
        last_cap: last_capability(),
        identity: identity.as_ref().map(|u| (u.uid, u.gid)),
        keep_caps: 0,
        landlock: std::os::fd::AsRawFd::as_raw_fd(&ruleset),
    };
    threads::on_every_thread(&step).context("confining the fetcher's threads")?;
    drop(ruleset);
    for f in &filters {
        seccompiler::apply_filter_all_threads(f)
            .context("installing the fetcher's seccomp filter")?;
    }
    tracing::info!("remote fetcher sandboxed: TCP to ports {ports:?} only, no store files");
    if let Some(mut report) = report {
        selftest::fetcher(&mut report, store, &ports);
        let _ = std::io::Write::flush(&mut report);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_come_from_the_url_or_its_scheme() {
        assert_eq!(port_of("http://127.0.0.1:8333"), Some(8333));
        assert_eq!(port_of("https://mirror.example/nexus/"), Some(443));
        assert_eq!(port_of("http://user:pw@proxy:3128/"), Some(3128));
        assert_eq!(port_of("http://[::1]:9000/x"), Some(9000));
        assert_eq!(port_of("http://[::1]/x"), Some(80));
        assert_eq!(port_of("ftp://x"), None);
        assert_eq!(port_of("no url"), None);
    }
}
