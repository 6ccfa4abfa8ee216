//! Replacing a running mount daemon without unmounting: `nexus takeover
//! MOUNTPOINT` (and `systemctl reload`) starts a daemon of the binary now
//! installed, which takes the live `/dev/fuse` connections of the mount and
//! its Index from the daemon serving them, and that daemon exits. The mount
//! never disappears; open files, working directories and running programs
//! carry on.
//!
//! Every mount daemon listens on a private socket, `STORE/run/takeover-
//! HASH.sock` (mode 0600 in the 0700 run directory; only a process of the
//! daemon's own user is answered). The exchange (FORMAT.md, "Takeover
//! protocol", `nexus-takeover-v1`):
//!
//! 1. the successor says hello; the daemon offers what it serves (store,
//!    mount point, Index, options, the generation shown);
//! 2. the successor opens its view of that generation (the slow part,
//!    while the old daemon still serves), then asks for the state;
//! 3. the daemon holds back every request that would change what the
//!    kernel holds ([`nexus_fs::gate`]) and sends the kernel's lookup
//!    counts, the Index's numbers and the `/dev/fuse` descriptors
//!    (`SCM_RIGHTS`);
//! 4. the successor adopts the connections, records itself (runtime
//!    record, pid file, `MAINPID=` to systemd) and commits; the daemon
//!    exits without unmounting, leaving unanswered the requests it held
//!    back;
//! 5. once the old daemon is gone (the socket closes), the successor asks
//!    the kernel to send those requests again (`FUSE_NOTIFY_RESEND`) and
//!    serves. Until it commits, a failing successor changes nothing: the
//!    daemon lets its requests go on.
//!
//! Inode numbers need no handing over: they come from catalog ids and are
//! the same in every daemon of the store.

mod giver;
mod taker;
pub mod wire;

use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow};
use serde::{Deserialize, Serialize};

pub use giver::{Giver, bind, listen};
pub use taker::{TakeoverRequest, canonical_mountpoint, takeover};

/// The `format` of every message of this protocol version.
pub const FORMAT: &str = "nexus-takeover-v1";

/// The takeover socket of the daemon serving `mountpoint` (canonical) from
/// the store in `store`.
pub fn socket_path(store: &Path, mountpoint: &Path) -> PathBuf {
    let hash = blake3::hash(mountpoint.as_os_str().as_encoded_bytes());
    let name = format!("takeover-{}.sock", &hash.to_hex()[..16]);
    store.join(nexus_store::runtime::RUN_DIR).join(name)
}

/// A message with its protocol version.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope {
    /// [`FORMAT`].
    pub format: String,
    /// The message.
    #[serde(flatten)]
    pub message: Message,
}

impl Envelope {
    /// `message` in this protocol version.
    pub fn new(message: Message) -> Envelope {
        Envelope {
            format: FORMAT.to_string(),
            message,
        }
    }

    /// The message, if it is of this protocol version.
    pub fn open(self) -> Result<Message> {
        if self.format != FORMAT {
            return Err(anyhow!(
                "the other daemon speaks {:?}, this one {FORMAT}",
                self.format
            ));
        }
        Ok(self.message)
    }
}

/// The messages, in the order they are exchanged.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Message {
    /// Successor → daemon: who asks.
    Hello {
        /// The successor's pid.
        pid: u32,
        /// Its `nexus` version.
        version: String,
    },
    /// Daemon → successor: what it serves.
    Offer(Offer),
    /// Daemon → successor: it cannot hand over, and why.
    Refused {
        /// Why.
        reason: String,
    },
    /// Successor → daemon: ready to adopt; send the state.
    Ready,
    /// Daemon → successor: the state, with the descriptors named in
    /// `fds`, in that order.
    State(HandedState),
    /// Successor → daemon: it serves from now on; the daemon exits.
    Commit {
        /// The successor's pid.
        pid: u32,
    },
}

/// What a daemon serves, and how.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Offer {
    /// The daemon's pid.
    pub pid: u32,
    /// Its `nexus` version.
    pub version: String,
    /// The store directory (absolute).
    pub store: String,
    /// The mount point (canonical).
    pub mountpoint: String,
    /// The Index's mount point, if it mounted one.
    pub index: Option<String>,
    /// The generation it was told to show (`--generation`), or `null` when
    /// it follows the live one.
    pub fixed_generation: Option<i64>,
    /// The generation it shows now (`null`: the store has none).
    pub shown_generation: Option<i64>,
    /// `allow_other`.
    pub allow_other: bool,
    /// Whether the mount honours setuid bits.
    pub suid: bool,
    /// Request threads.
    pub threads: usize,
    /// Decoded-block cache bytes.
    pub cache_bytes: u64,
    /// Its `--pid-file`.
    pub pid_file: Option<String>,
    /// Its log file.
    pub log_file: Option<String>,
    /// Whether the kernel view covers its mounts (`--kernel-metadata`):
    /// then the state carries the main mount's root as `data` (absent
    /// from older daemons' offers: none had a kernel view).
    #[serde(default)]
    pub kernel_metadata: bool,
}

/// What the kernel holds of the daemon's mounts.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HandedState {
    /// The generation shown when the state was taken.
    pub shown_generation: Option<i64>,
    /// Every package inode the kernel holds looked up in the main mount.
    pub held: Vec<WireHeld>,
    /// The Index's paths by number (`index_paths[x]` is the path of inode
    /// `4·x + 3`), hex-encoded bytes; empty without an Index.
    pub index_paths: Vec<String>,
    /// The descriptors attached: `fuse` (the mount), then `index`, then
    /// `data` (the main mount's root, beneath the kernel view).
    pub fds: Vec<String>,
}

/// The offer of a daemon serving with `settings` the generation `view`
/// shows.
pub(super) fn offer(settings: &super::serve::Settings, view: &nexus_fs::View) -> Result<Offer> {
    if let Some(image) = &settings.image {
        return Err(anyhow!(
            "it serves the image {} from a scratch store of its own; remount to upgrade",
            image.display()
        ));
    }
    let optional = |p: &Option<PathBuf>| p.as_deref().map(text).transpose();
    Ok(Offer {
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        store: text(&settings.store)?,
        mountpoint: text(&settings.mountpoint)?,
        index: optional(&settings.index)?,
        fixed_generation: settings.generation,
        shown_generation: view.generation(),
        allow_other: settings.mount.allow_other,
        suid: settings.mount.suid,
        threads: settings.mount.threads,
        cache_bytes: settings.cache_bytes,
        pid_file: optional(&settings.pid_file)?,
        log_file: optional(&settings.log_file)?,
        kernel_metadata: settings.kernel_metadata,
    })
}

/// One held inode on the wire: `[inode, package, lookup count, directory,
/// "name in hex"]` (the directory and name it was last looked up under).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireHeld(pub u64, pub i64, pub u64, pub u64, pub String);

impl WireHeld {
    /// `held` on the wire.
    pub fn of(held: &nexus_fs::lookups::HeldInode) -> WireHeld {
        WireHeld(
            held.ino,
            held.package,
            held.count,
            held.parent,
            hex::encode(&held.name),
        )
    }

    /// Back from the wire; an error for a name that is not hex.
    pub fn held(&self) -> Result<nexus_fs::lookups::HeldInode> {
        Ok(nexus_fs::lookups::HeldInode {
            ino: self.0,
            package: self.1,
            count: self.2,
            parent: self.3,
            name: hex::decode(&self.4).map_err(|e| anyhow!("a held inode's name: {e}"))?,
        })
    }
}

/// `path` as protocol text: paths must be UTF-8.
fn text(path: &Path) -> Result<String> {
    path.to_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("{} is not UTF-8", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_format_and_type() {
        let hello = Envelope::new(Message::Hello {
            pid: 7,
            version: "0.1.0".into(),
        });
        let json = serde_json::to_value(&hello).unwrap();
        assert_eq!(json["format"], FORMAT);
        assert_eq!(json["type"], "hello");
        assert_eq!(json["pid"], 7);
        let back: Envelope = serde_json::from_value(json).unwrap();
        assert!(matches!(
            back.open().unwrap(),
            Message::Hello { pid: 7, .. }
        ));
        let other = serde_json::json!({"format": "nexus-takeover-v9", "type": "ready"});
        let other: Envelope = serde_json::from_value(other).unwrap();
        assert!(other.open().is_err(), "another version is refused");
    }

    #[test]
    fn held_inodes_cross_as_arrays() {
        let held = nexus_fs::lookups::HeldInode {
            ino: 40,
            package: 7,
            count: 2,
            parent: 4,
            name: b"ls".to_vec(),
        };
        let wire = WireHeld::of(&held);
        assert_eq!(
            serde_json::to_value(&wire).unwrap(),
            serde_json::json!([40, 7, 2, 4, "6c73"])
        );
        assert_eq!(wire.held().unwrap(), held);
        assert!(WireHeld(1, 1, 1, 1, "zz".into()).held().is_err());
    }

    #[test]
    fn each_mount_point_has_its_own_socket() {
        let store = Path::new("/var/lib/nexus");
        let a = socket_path(store, Path::new("/Programs"));
        let b = socket_path(store, Path::new("/mnt/old"));
        assert_ne!(a, b);
        assert!(a.starts_with("/var/lib/nexus/run"));
        assert_eq!(a, socket_path(store, Path::new("/Programs")));
    }
}
