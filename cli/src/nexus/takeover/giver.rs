//! The serving daemon's side: the takeover socket, and handing the mounts
//! to the successor that asks.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nexus_fs::{Index, View};
use nexus_store::runtime::RuntimeRoot;

use super::wire;
use super::{Envelope, HandedState, Message};
use crate::nexus::sandbox::Confined;
use crate::nexus::serve::Settings;
use crate::nexus::signals::Termination;
use crate::nexus::systemd;

/// How long a successor may take to say hello, and to commit once it has
/// the state (requests that change lookups wait meanwhile).
const QUICK: Duration = Duration::from_secs(10);
/// How long a successor may take to open its view.
const SLOW: Duration = Duration::from_secs(300);

/// What a daemon hands over.
pub struct Giver {
    /// How it serves.
    pub settings: Settings,
    /// Its view (its clients' lookups are handed over).
    pub view: Arc<View>,
    /// Its Index, if it mounted one (its numbers are handed over).
    pub index: Option<Arc<Index>>,
    /// The main mount's `/dev/fuse` descriptor.
    pub fuse: OwnedFd,
    /// The Index mount's.
    pub index_fuse: Option<OwnedFd>,
    /// The main mount's root beneath the kernel view, if any: the
    /// successor can reach it no other way.
    pub kernel_data: Option<crate::nexus::kernel_view::DataRoot>,
    /// Its runtime record, withdrawn when it hands over.
    pub record: Option<Arc<RuntimeRoot>>,
    /// Its signal thread, told to ignore termination once handed over.
    pub termination: Termination,
    /// The user that started it (root for a system mount), the only one
    /// it hands over to (confined, it serves as another).
    pub owner: rustix::process::Uid,
    /// Its sandbox: the keeper must exit without unmounting once the
    /// mounts are handed over.
    pub confined: Arc<Confined>,
}

/// The takeover socket of a running daemon; dropping it removes the
/// socket file, if it is still this daemon's.
pub struct Listening {
    path: PathBuf,
    inode: u64,
}

impl Drop for Listening {
    fn drop(&mut self) {
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.inode) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds a takeover socket at `path` (replacing a stale one): mode 0600,
/// in a directory only the daemon's user can enter.
pub fn bind(path: &Path) -> Result<UnixListener> {
    // STORE/run exists unless only images were served; as the runtime
    // records make it: private to the store's owner.
    if let Some(dir) = path.parent() {
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
    }
    crate::nexus::socket::bind(path, 0o600)
        .with_context(|| format!("listening for a successor on {}", path.display()))
}

/// Starts the thread that hands the mounts over to the first successor
/// that completes the exchange, on `listener` bound at `path`.
pub fn listen(listener: UnixListener, path: &Path, giver: Giver) -> Result<Listening> {
    let inode = std::fs::symlink_metadata(path)
        .with_context(|| format!("{}", path.display()))?
        .ino();
    let shown = path.to_path_buf();
    std::thread::Builder::new()
        .name("takeover".into())
        .spawn(move || {
            for connection in listener.incoming() {
                let mut stream = match connection {
                    Ok(stream) => stream,
                    Err(e) => {
                        tracing::warn!("takeover socket {}: {e}", shown.display());
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                };
                if let Err(e) = hand_over(&mut stream, &giver) {
                    tracing::warn!("a takeover did not complete (still serving): {e:#}");
                }
            }
        })
        .context("starting the takeover thread")?;
    Ok(Listening {
        path: path.to_path_buf(),
        inode,
    })
}

/// The peer's pid and uid (`SO_PEERCRED`).
pub fn peer(stream: &UnixStream) -> Result<(u32, rustix::process::Uid)> {
    let peer = rustix::net::sockopt::socket_peercred(stream.as_fd())
        .context("reading the peer's credentials")?;
    Ok((peer.pid.as_raw_nonzero().get() as u32, peer.uid))
}

/// Refuses a peer that is not of user `owner`: the descriptors handed over
/// control everything the mount shows (setuid programs included).
pub fn check_peer(stream: &UnixStream, owner: rustix::process::Uid) -> Result<u32> {
    let (pid, uid) = peer(stream)?;
    if uid != owner {
        bail!(
            "refused a takeover by pid {pid} of uid {}: only uid {} may take over",
            uid.as_raw(),
            owner.as_raw()
        );
    }
    Ok(pid)
}

fn receive(stream: &mut UnixStream, timeout: Duration) -> Result<Message> {
    let (envelope, fds): (Envelope, _) = wire::receive(stream, timeout)?;
    if !fds.is_empty() {
        bail!("the successor sent descriptors");
    }
    envelope.open()
}

fn send(
    stream: &mut UnixStream,
    message: Message,
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> Result<()> {
    // The successor reads at once; one that stops reading must not hold
    // back the mount's lookups (see send_state_and_wait) any longer than
    // it may take to commit.
    wire::send(stream, &Envelope::new(message), fds, QUICK)?;
    Ok(())
}

/// One exchange with a would-be successor. Returns only if it did not
/// complete; on commit the process exits.
fn hand_over(stream: &mut UnixStream, giver: &Giver) -> Result<()> {
    let peer = check_peer(stream, giver.owner)?;
    let Message::Hello { pid, version } = receive(stream, QUICK)? else {
        bail!("pid {peer} did not start with hello");
    };
    tracing::info!("pid {pid} (nexus {version}) asks to take over");
    let offer = match super::offer(&giver.settings, &giver.view) {
        Ok(offer) => offer,
        Err(e) => {
            let reason = format!("{e:#}");
            send(
                stream,
                Message::Refused {
                    reason: reason.clone(),
                },
                &[],
            )?;
            bail!("refused: {reason}");
        }
    };
    send(stream, Message::Offer(offer), &[])?;
    let Message::Ready = receive(stream, SLOW)? else {
        bail!("pid {pid} did not say it was ready");
    };
    systemd::reloading();
    // From here until commit or failure, requests that would change what
    // the kernel holds wait (see nexus_fs::gate).
    giver.view.freeze_clients();
    let index_paths = giver.index.as_ref().map(|i| i.freeze_numbers());
    let outcome = send_state_and_wait(stream, giver, index_paths, pid).map(|never| match never {});
    // Only reached when the successor failed: serve on.
    giver.view.thaw_clients();
    if let Some(index) = &giver.index {
        index.thaw_numbers();
    }
    systemd::ready(&systemd::status_line(
        giver.view.generation(),
        &giver.settings.store,
        &giver.settings.mountpoint.display().to_string(),
    ));
    outcome
}

fn send_state_and_wait(
    stream: &mut UnixStream,
    giver: &Giver,
    index_paths: Option<Vec<Vec<u8>>>,
    pid: u32,
) -> Result<std::convert::Infallible> {
    let held = giver
        .view
        .held_table()
        .iter()
        .map(super::WireHeld::of)
        .collect();
    let mut fds = vec![giver.fuse.as_fd()];
    let mut names = vec!["fuse".to_string()];
    if let Some(fd) = &giver.index_fuse {
        fds.push(fd.as_fd());
        names.push("index".to_string());
    }
    // A duplicate: the daemon's own is dropped when it unmounts.
    let data = match &giver.kernel_data {
        Some(data) => Some(
            data.lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("the mount is being unmounted"))?
                .try_clone()
                .context("duplicating the mount's root")?,
        ),
        None => None,
    };
    if let Some(fd) = &data {
        fds.push(fd.as_fd());
        names.push("data".to_string());
    }
    let state = HandedState {
        shown_generation: giver.view.generation(),
        held,
        index_paths: index_paths
            .unwrap_or_default()
            .iter()
            .map(hex::encode)
            .collect(),
        fds: names,
    };
    send(stream, Message::State(state), &fds)?;
    let Message::Commit { pid: committed } = receive(stream, QUICK)? else {
        bail!("pid {pid} did not commit");
    };
    // Point of no return: the successor serves. Leave without unmounting
    // (no destructor runs; the keeper exits without unmounting),
    // withdrawing the record the successor replaced.
    giver.termination.ignore();
    if let Some(record) = &giver.record {
        record.withdraw();
    }
    giver.confined.handed_over();
    tracing::info!(
        "handed {} over to pid {committed}; exiting",
        giver.settings.mountpoint.display()
    );
    std::process::exit(crate::exit::OK);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// The descriptors a takeover hands over serve the whole mount: a peer
    /// of another user is refused even where the socket is reachable.
    #[test]
    fn a_peer_of_another_user_is_refused() {
        if !crate::root_or_skip("connecting as another user") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let path = dir.path().join("t.sock");
        let listener = UnixListener::bind(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
        let child = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg("/usr/bin/python3")
            .arg("-c")
            .arg("import socket,sys,time; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); time.sleep(2)")
            .arg(&path)
            .spawn()
            .unwrap();
        let (stream, _) = listener.accept().unwrap();
        let root = rustix::process::Uid::ROOT;
        let err = check_peer(&stream, root).unwrap_err();
        assert!(format!("{err}").contains("uid 65534"), "{err}");
        let (ours, _) = (UnixStream::connect(&path).unwrap(), ());
        let (accepted, _) = listener.accept().unwrap();
        assert!(check_peer(&accepted, root).is_ok());
        drop(ours);
        let mut child = child;
        let _ = child.wait();
    }
}
