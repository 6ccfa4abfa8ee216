//! `nexus`, the system builder: command-line definition and dispatch. Today
//! it mounts the store as the `/Programs` tree (`nexus mount`, `nexus
//! umount`), serves the same tree to VM guests (`nexus serve
//! --virtio-fs`), and builds and boots Rumk guests (`nexus build rumk`,
//! `nexus rumk run`).

mod build;
mod daemon;
mod image;
mod index;
mod inherited;
mod kernel_view;
mod logging;
pub mod mount_helper;
mod mounts;
mod rumk;
mod rumk_build;
mod runtime_root;
mod sandbox;
mod serve;
mod signals;
mod socket;
mod status;
mod systemd;
mod takeover;
mod virtiofs;

/// The takeover protocol's messages and framing, as a successor decodes
/// them: public for `cli/fuzz` (target `takeover`), which feeds them what
/// a compromised daemon handing over could send.
pub mod takeover_wire {
    pub use super::takeover::{Envelope, FORMAT, HandedState, Message, Offer, WireHeld, wire};
}

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::config::{Overrides, Settings};
use crate::exit;

/// nexus — the Nexus system builder: presents the store as /Programs, on
/// this machine and to VM guests.
///
/// `nexus mount /Programs` shows every installed package of the store
/// (default /var/lib/nexus for root, $XDG_DATA_HOME/nexus otherwise) as
/// /Programs/App/Version, and /Programs/App/Current as a link to the version
/// `nip` made current. The mount is read-only; it shows the live generation
/// and follows `nip add`, `remove`, `rollback` and `switch` without a remount
/// (within about 100 ms), or one fixed generation with --generation.
///
/// `nexus serve --virtio-fs SOCKET` serves the same tree to virtual machines
/// as a vhost-user-fs (virtio-fs) device: many guests share one store.
/// `nexus rumk run` boots a Rumk guest on it that verifies what it reads.
/// `nexus snapshot` freezes a generation into a signed image that `nexus
/// verify` checks and `nexus switch FILE` makes live.
///
/// Settings come from flags, then the environment (NEXUS_STORE, NEXUS_KEYS),
/// then /etc/nexus/nexus.kdl (or the file NEXUS_CONFIG or --config names),
/// then built-in defaults; `nexus config show` lists them and their origins.
/// With --json, an error is also printed on stdout as {"error", "causes",
/// "exit_code"}.
///
/// Exit codes: 0 success; 1 error; 2 bad command line; 3 damaged or
/// untrusted data (`nexus verify`, `nexus rumk run`).
#[derive(Debug, Parser)]
#[command(name = "nexus", version, about, long_about, max_term_width = 100)]
pub struct Cli {
    /// Store directory [env: NEXUS_STORE; config: store].
    #[arg(long, global = true, value_name = "DIR")]
    pub store: Option<PathBuf>,

    /// Key store: signing keys, and the keys whose signatures are accepted
    /// (shared by nip and nexus) [env: NEXUS_KEYS; config: keys; default:
    /// STORE/keys].
    #[arg(long, global = true, value_name = "DIR")]
    pub keys: Option<PathBuf>,

    /// Configuration file [env: NEXUS_CONFIG; default:
    /// /etc/nexus/nexus.kdl, if it exists].
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Log more (-v info, -vv debug); also RUST_LOG.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// nexus's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount the store read-only at MOUNTPOINT as App/Version trees.
    ///
    /// The command returns once the mount is ready (programs can run from
    /// it) and leaves a daemon serving it until `nexus umount MOUNTPOINT`, or
    /// until the daemon gets SIGTERM or SIGINT: then it unmounts cleanly. A
    /// busy mount (a file open in it, a shell inside) is detached instead: it
    /// disappears at once and the daemon ends when the last user is gone.
    /// With --foreground nothing is forked and logs go to stderr.
    ///
    /// Under systemd (NOTIFY_SOCKET set: a Type=notify unit such as the
    /// shipped nexus-mount@.service) nothing is forked either: the daemon
    /// tells systemd READY=1 once the mount is live, STATUS= with the
    /// generation served (updated on every switch) and STOPPING=1, logs to
    /// the journal unless a log file is set, and keeps the mount's
    /// connection in the unit's file descriptor store, so that a daemon
    /// restarted after a crash resumes the live mount instead of mounting
    /// anew. SIGHUP reopens the log file (for logrotate). To upgrade the
    /// daemon without unmounting, see `nexus takeover`.
    ///
    /// Files keep their modes (setuid and setgid too), owners, mtimes,
    /// symlinks, hard links and extended attributes (security.capability
    /// included); inode numbers are the same after every remount.
    ///
    /// With --index DIR the daemon also mounts the Index on DIR, as
    /// GoboLinux's /System/Index: bin, include, lib, libexec, sbin and share,
    /// each merged from every App's Current version (from bin/ and usr/bin/,
    /// lib/, usr/lib/ and the multiarch usr/lib/x86_64-linux-gnu/, ...) as
    /// directories of symlinks to MOUNTPOINT/App/Current/..., so that
    /// PATH=DIR/bin finds every program and LD_LIBRARY_PATH=DIR/lib every
    /// library. On a name clash an App whose Current package is
    /// unrestricted beats one whose package is restricted (signed by a key
    /// trusted only for some Apps); among Apps of the same kind the one
    /// whose name sorts first (bytewise) wins, and within one App bin/ beats usr/bin/. The index
    /// follows the mount's generation and is unmounted with it; `nexus
    /// umount DIR` removes only the index.
    ///
    /// Without MOUNTPOINT, the system mount is made: on mount.mountpoint
    /// of the configuration (default /Programs), with the configuration's
    /// mount.index; the configuration's allow-other, threads, cache-mib and
    /// log-file apply to every mount unless a flag says otherwise.
    ///
    /// Example: nexus mount /Programs --allow-other --index /System/Index
    Mount {
        /// An existing directory to mount on [default: the configuration's
        /// mount.mountpoint, or /Programs].
        mountpoint: Option<PathBuf>,
        /// Also mount the Index (every App's programs, libraries, headers
        /// and data as one tree of symlinks) on DIR [default: the
        /// configuration's mount.index, for a mount on mount.mountpoint].
        #[arg(long, value_name = "DIR")]
        index: Option<PathBuf>,
        /// Show generation N (see `nip history`) instead of following the
        /// live one.
        #[arg(long, value_name = "N", conflicts_with = "image")]
        generation: Option<i64>,
        #[command(flatten)]
        image: ImageArgs,
        /// Stay in the foreground (do not daemonize); log to stderr.
        #[arg(long)]
        foreground: bool,
        /// Let every user use the mount, not only the one who mounted it
        /// (a workstation's /Programs). Permissions are checked by the
        /// kernel against each file's mode. `--allow-other=false` overrides
        /// the configuration [default: mount.allow-other, or false].
        #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
              default_missing_value = "true")]
        allow_other: Option<bool>,
        /// Request threads [default: mount.threads, or 4].
        #[arg(long, value_name = "N",
              value_parser = clap::value_parser!(u16).range(1..=64))]
        threads: Option<u16>,
        /// Mebibytes of decompressed data kept in memory. Once read, files
        /// are served from the kernel's page cache; this cache only spares
        /// re-decoding a frame (about 64 KiB of a large file, up to 1 MiB of
        /// small ones) while readers work through it, so a few frames per
        /// concurrent reader suffice [default: mount.cache-mib, or 16].
        #[arg(long, value_name = "MIB")]
        cache_mib: Option<u64>,
        /// Write the daemon's process id to FILE once the mount is ready
        /// (removed when it exits).
        #[arg(long, value_name = "FILE")]
        pid_file: Option<PathBuf>,
        /// Ignore the setuid and setgid bits of programs run from the mount
        /// (mount's nosuid); a mount by root honours them otherwise.
        #[arg(long)]
        nosuid: bool,
        /// Serve names, attributes, listings and links from the kernel: an
        /// EROFS image of each generation's metadata, with overlayfs reading
        /// file contents from the FUSE mount below it (composefs's split).
        /// A warm program then costs the daemon no request at all, `isatty`
        /// included. Needs root, `--allow-other` (the kernel serves the view
        /// to every user, as each file's mode allows) and Linux 6.12 or
        /// later; systemd's
        /// descriptor store does not keep such a mount across a crash.
        /// `--kernel-metadata=false` overrides the configuration
        /// [default: mount.kernel-metadata, or false]
        #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
              default_missing_value = "true")]
        kernel_metadata: Option<bool>,
        /// Append the daemon's log to FILE [default: mount.log-file; without
        /// one the daemon logs nothing; in the foreground, logs go to stderr].
        /// Give it a directory of its own (/var/log/nexus/): the daemon may
        /// write every file there, and refuses one that holds the store.
        #[arg(long, value_name = "FILE")]
        log_file: Option<PathBuf>,
        #[command(flatten)]
        sandbox: sandbox::SandboxArgs,
    },

    /// Replace the daemon serving MOUNTPOINT by one of this binary, without
    /// unmounting.
    ///
    /// Run from a newly installed nexus, it starts a daemon that takes over
    /// the live mount (and its Index) from the daemon serving it, which then
    /// exits: programs running from the mount, files open in it and shells
    /// inside it carry on, and no request fails. The new daemon serves with
    /// the old one's settings (store, Index, allow-other, threads, cache,
    /// pid file and log file, when the old daemon holds them) and, first,
    /// the generation it showed, then follows the live one as usual. The
    /// command returns once the new daemon serves.
    ///
    /// `systemctl reload nexus-mount@Programs` runs this through the unit.
    /// The old daemon hands over only to a process of its own user (root
    /// for a system mount). Needs Linux 6.9 or later (the kernel re-sends
    /// requests the old daemon left unanswered) and an old daemon of a
    /// version with takeover. A mount of an image (--image) cannot be
    /// taken over: remount it.
    ///
    /// Example: nexus takeover /Programs
    Takeover {
        /// Where the store is mounted.
        mountpoint: PathBuf,
        /// Stay in the foreground (do not daemonize).
        #[arg(long)]
        foreground: bool,
        /// Log to FILE instead of where the old daemon logged.
        #[arg(long, value_name = "FILE")]
        log_file: Option<PathBuf>,
        /// JSON: {mountpoint, pid, message}.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        sandbox: sandbox::SandboxArgs,
    },

    /// Serve the store to VM guests as a virtio-fs device (vhost-user-fs).
    ///
    /// Listens on the vhost-user socket SOCKET (a stale socket file is
    /// replaced) and serves every guest that connects the same read-only
    /// App/Version tree as `nexus mount`, straight from the store: no host
    /// file is opened per guest file. Several guests may connect to the one
    /// socket at once; they share the daemon's block cache. Runs in the
    /// foreground, logging to stderr, until SIGTERM or SIGINT (which
    /// removes the socket).
    ///
    /// The live generation is followed: after `nip switch`, `rollback`,
    /// `add` or `remove`, guests follow moved Current links within 0.1 s
    /// (guests never cache link targets) and see added or removed Apps and
    /// versions within 1.1 s (guests get no cache invalidations, so names
    /// in the root and App directories are cached for 1 s only; package
    /// contents never change and are cached for a day). A running program
    /// keeps reading the files it opened.
    ///
    /// Guests are not trusted: malformed requests get errors, writes get
    /// EROFS, and nothing outside the view can be named. Whoever can connect
    /// to the socket reads every file of the store, whatever its
    /// permissions: the socket is 0600 unless --socket-mode and
    /// --socket-group say otherwise.
    ///
    /// A conventional vhost-user backend (as virtiofsd): --socket-path is
    /// --virtio-fs; --fd N serves on an inherited listening socket; under
    /// systemd's socket activation (LISTEN_FDS, the shipped
    /// nexus-virtiofs@.socket) it serves on the socket passed, and says
    /// READY=1 and STATUS= to systemd; --print-capabilities prints its
    /// vhost-user capabilities as JSON. Installed as
    /// /usr/libexec/nexus-virtiofsd, it takes these options without `serve`
    /// (QEMU's /usr/share/qemu/vhost-user/50-nexus-virtiofsd.json names it).
    ///
    /// Example: nexus serve --virtio-fs /run/nexus/programs.sock
    #[command(after_long_help = "\
A QEMU guest needs shared memory and a vhost-user-fs device:

  -object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem
  -chardev socket,id=c0,path=SOCKET
  -device vhost-user-fs-pci,chardev=c0,tag=programs

and mounts it with: mount -t virtiofs -o ro programs /Programs")]
    Serve {
        /// Listen on this vhost-user socket for guests (QEMU's -chardev
        /// socket,path=SOCKET). Needed unless --fd, or a socket passed by
        /// systemd.
        #[arg(
            long = "virtio-fs",
            visible_alias = "socket-path",
            value_name = "SOCKET"
        )]
        virtio_fs: Option<PathBuf>,
        /// Serve on the listening unix socket inherited as descriptor FD
        /// instead of binding SOCKET.
        #[arg(long, value_name = "FD", conflicts_with = "virtio_fs")]
        fd: Option<i32>,
        /// Print the vhost-user backend capabilities (JSON) and exit.
        #[arg(long)]
        print_capabilities: bool,
        /// Serve generation N (see `nip history`) instead of following the
        /// live one.
        #[arg(long, value_name = "N", conflicts_with = "image")]
        generation: Option<i64>,
        #[command(flatten)]
        image: ImageArgs,

        /// Mebibytes of decompressed data kept in memory, shared by all
        /// guests [default: serve.cache-mib, or 128].
        #[arg(long, value_name = "MIB")]
        cache_mib: Option<u64>,
        /// Guests served at once; later ones wait until one disconnects.
        #[arg(long, default_value_t = 64, value_name = "N",
              value_parser = clap::value_parser!(u16).range(1..))]
        max_guests: u16,
        /// Append the log to FILE instead of stderr [default:
        /// serve.log-file]. Give it a directory of its own (/var/log/nexus/):
        /// the daemon may write every file there, and refuses one that holds
        /// the store.
        #[arg(long, value_name = "FILE")]
        log_file: Option<PathBuf>,
        #[command(flatten)]
        socket: sandbox::SocketArgs,
        #[command(flatten)]
        sandbox: sandbox::SandboxArgs,
    },

    /// Rumk guests: freestanding VMs that read the store over virtio-fs
    /// and verify every byte.
    #[command(subcommand)]
    Rumk(RumkCommand),

    /// Unmount a nexus mount (also one whose daemon died).
    ///
    /// Refuses a busy mount unless --lazy, and anything that is not a nexus
    /// mount. The daemon ends by itself once its mount is gone. Of a mount
    /// under its kernel view (--kernel-metadata) the view is unmounted; its
    /// daemon then takes the mount and its Index down within a second.
    Umount {
        /// Where the store is mounted.
        mountpoint: PathBuf,
        /// Detach a busy mount now; it goes away when its last user does.
        #[arg(long)]
        lazy: bool,
        /// JSON: {unmounted}.
        #[arg(long)]
        json: bool,
    },

    /// Signing keys and trusted keys (the same key store as `nip key`).
    #[command(subcommand)]
    Key(crate::keys::KeyCommand),

    /// Freeze a generation into one signed, self-contained image file.
    ///
    /// The image holds every package of the generation (trees, metadata,
    /// every chunk) and its Current choices, under a manifest signed with
    /// KEY: key id, a counter (the key's next one, or --counter), the
    /// creation time (SOURCE_DATE_EPOCH when set), the expiry time
    /// (--expires-in after the creation time) and the root hash. The same
    /// generation, key, --counter, SOURCE_DATE_EPOCH and --expires-in give
    /// a byte-identical file. Other machines that trust KEY for images
    /// check it with `nexus verify`, serve it with `nexus mount --image`,
    /// or make it their live system with `nexus switch FILE`; they refuse
    /// it once expired, or once they accepted a higher counter in the
    /// key's trust domain. When a domain's signing key is replaced, start
    /// the new key's counters above the old key's (--counter).
    ///
    /// Example: nexus snapshot --key admin -o system-42.img
    Snapshot {
        /// Freeze generation N (default: the live one).
        #[arg(long, value_name = "N")]
        generation: Option<i64>,
        /// Freeze the system of profile NAME instead: built first, as
        /// `nexus build --profile NAME -o FILE` does (with its default
        /// profiles and recipes directories).
        #[arg(long, value_name = "NAME", conflicts_with = "generation")]
        profile: Option<String>,
        /// Signing key name (see `nexus key list`).
        #[arg(long, value_name = "NAME")]
        key: String,
        /// Snapshot counter (default: one more than this key's last);
        /// refused unless above every counter the key has signed.
        #[arg(long, value_name = "N")]
        counter: Option<u64>,
        /// Sign with --counter even if the key has signed that counter or
        /// a higher one (re-signing an old state on purpose: two different
        /// images with one counter are refused by every store that saw the
        /// other).
        #[arg(long, requires = "counter")]
        force_counter: bool,
        /// How long the signature vouches for the image, from its creation
        /// time: e.g. `90d`, `12h`, `1y` (units s, m, h, d, w, y), or
        /// `never`. Machines refuse an expired image, so one a mirror keeps
        /// serving after newer ones exist stops working: re-sign well
        /// within this time.
        #[arg(long, value_name = "DURATION", default_value = crate::epoch::IMAGE_LIFETIME,
              value_parser = crate::epoch::ExpiresIn::parse)]
        expires_in: crate::epoch::ExpiresIn,
        /// Output file.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        /// JSON: {file, generation, packages, bytes, counter, key: {id,
        /// name}, root, seconds} (with --profile: as `nexus build --json`).
        #[arg(long)]
        json: bool,
    },

    /// Check an image or .npk: signature by a key trusted for its kind
    /// (a package: for its App), not revoked, not expired; every hash
    /// (file, body, each chunk, each file content); and for images the
    /// counter against the highest this store has accepted in the key's
    /// trust domain (said so when there is no store to check against).
    ///
    /// Exit codes: 0 good; 1 an older image (a downgrade or replay) or one
    /// whose counter names other content; 3 unsigned, untrusted, expired,
    /// altered or damaged.
    Verify {
        /// The image or .npk file.
        file: PathBuf,
        /// Do not fail an image older than one already accepted.
        #[arg(long)]
        allow_downgrade: bool,
        /// Do not fail an archive whose signature has expired.
        #[arg(long)]
        allow_expired: bool,
        /// JSON report {file, ok, detail, kind, signer, counter,
        /// counter_checked, created, expires, root, packages}.
        #[arg(long)]
        json: bool,
    },

    /// Make generation GEN, or the system in image FILE, the live one (the
    /// same command as `nip switch`).
    #[command(long_about = crate::generations::SWITCH_ABOUT)]
    Switch(crate::generations::SwitchArgs),

    /// Go back to the generation before the live one (the same command as
    /// `nip rollback`).
    #[command(long_about = crate::generations::ROLLBACK_ABOUT)]
    Rollback(crate::generations::RollbackArgs),

    /// The settings in force and where each came from (shared with `nip
    /// config`).
    #[command(subcommand)]
    Config(crate::config_cmd::ConfigCommand),

    /// Show what is live and what serves it.
    ///
    /// The live generation and what it changed; every running `nexus
    /// mount` and `nexus serve --virtio-fs` of this store with the
    /// generation it serves (each records it in STORE/run while it runs;
    /// `nip gc` keeps what they serve); pinned generations; the newest
    /// image counter accepted per trust domain; the store's size; and the
    /// download cache, if there is one.
    Status {
        /// The download cache to measure (default as `nexus build`).
        #[arg(long, env = "NEXUS_CACHE", value_name = "DIR")]
        cache: Option<PathBuf>,
        /// JSON {store, live_generation, serving: [{pid, kind, target,
        /// generation, generations, started, updated}], pins,
        /// image_counters: [{domain, value}], size, gc_epoch,
        /// download_cache}.
        #[arg(long)]
        json: bool,
    },

    /// Build a system profile into a generation (and a signed image).
    #[command(long_about = build::LONG_ABOUT)]
    Build(build::BuildArgs),

    /// Internal: the remote fetcher a mount or virtio-fs daemon starts for
    /// a store with remotes (reads remotes on the confined daemon's
    /// behalf, over the descriptors it inherits).
    #[command(hide = true)]
    RemoteFetcher {
        /// A connection inherited from the daemon (repeated).
        #[arg(long = "fd", value_name = "N", required = true)]
        fds: Vec<i32>,
        #[command(flatten)]
        sandbox: sandbox::SandboxArgs,
    },
}

/// `--image FILE` and what it may let through, as `mount`, `serve` and
/// `rumk run` take them.
#[derive(Debug, clap::Args)]
pub struct ImageArgs {
    /// Serve the signed image FILE (from `nexus snapshot`) read-only
    /// instead of the store, without importing it: its signature (by a key
    /// trusted for images), expiry, counter and body are checked before
    /// serving starts, and every chunk as it is read.
    #[arg(long, value_name = "FILE")]
    image: Option<PathBuf>,
    /// With --image: serve an image older than one the store has accepted
    /// in its trust domain (refused by default: the image's counter is
    /// checked against the store's record, and recorded).
    #[arg(long, requires = "image")]
    allow_downgrade: bool,
    /// With --image: serve an image whose signature has expired.
    #[arg(long, requires = "image")]
    allow_expired: bool,
}

impl ImageArgs {
    /// The image to serve, if any, checked against the keys in `keys` and
    /// the counter record of the store in `store`.
    fn request(self, keys: &Path, store: &Path) -> Result<Option<serve::ImageRequest>> {
        serve::ImageRequest::from_option(
            self.image,
            keys,
            store,
            self.allow_downgrade,
            self.allow_expired,
        )
    }
}

/// `nexus rumk` commands.
#[derive(Debug, Subcommand)]
pub enum RumkCommand {
    /// Boot a Rumk guest against the store and report what it verified.
    ///
    /// Starts `nexus serve --virtio-fs` on a private socket, boots the
    /// guest in QEMU (TCG) on the chosen machine, and passes ARGS to it:
    /// paths below the store's root (App/Version/... or App/Current/...)
    /// that it reads, BLAKE3-verifying every byte against the store's
    /// record. The guest first lists the Apps. Its console is this
    /// command's output.
    ///
    /// The kernel is the store's rumk/Current/boot/rumk (see `nexus build
    /// rumk`) of the generation or image served, checked against its
    /// recorded BLAKE3 before it boots, unless --kernel names a file.
    ///
    /// Exit codes: 0 every file verified; 3 a file could not be read or
    /// failed verification; 1 anything else (no kernel, QEMU or the guest
    /// failed, timeout).
    ///
    /// Example: nexus rumk run --machine q35 -- hello/Current/bin/hello
    Run {
        /// Serve generation N (see `nip history`) instead of the live one.
        #[arg(long, value_name = "N", conflicts_with = "image")]
        generation: Option<i64>,
        #[command(flatten)]
        image: ImageArgs,

        /// microvm boots virtio-mmio, q35 virtio-pci.
        #[arg(long, value_enum, default_value = "microvm")]
        machine: rumk::Machine,
        /// Boot this kernel file instead of the store's rumk/Current.
        #[arg(long, value_name = "FILE")]
        kernel: Option<PathBuf>,
        /// Guest memory (MiB), shared with the daemon.
        #[arg(long, default_value_t = 128, value_name = "MIB",
              value_parser = clap::value_parser!(u32).range(32..=65536))]
        memory_mib: u32,
        /// Stop a guest still running after SECS seconds.
        #[arg(long, default_value_t = 60, value_name = "SECS")]
        timeout: u64,
        /// The QEMU binary.
        #[arg(long, default_value = "qemu-system-x86_64", value_name = "PATH")]
        qemu: PathBuf,
        /// Append the daemon's log to FILE.
        #[arg(long, value_name = "FILE")]
        log_file: Option<PathBuf>,
        /// Paths for the guest to read and verify.
        #[arg(last = true, value_name = "ARGS")]
        args: Vec<String>,
    },
}

/// Sets up `tracing` on stderr, for the commands that are no daemon.
fn init_logging(verbose: u8) {
    // Only the global subscriber being set already can fail, and then
    // logging works anyway.
    let _ = logging::init(verbose, &logging::Destination::Stderr);
}

impl Cli {
    /// The global options that override the configuration file.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            config: self.config.clone(),
            store: self.store.clone(),
            keys: self.keys.clone(),
        }
    }
}

/// Runs a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> Result<i32> {
    // Before anything can fail: management software (libvirt) asks a
    // vhost-user backend for its capabilities with nothing else set up.
    if let Command::Serve {
        print_capabilities: true,
        ..
    } = &cli.command
    {
        println!("{}", virtiofs::CAPABILITIES);
        return Ok(exit::OK);
    }
    let settings = Settings::load(&cli.overrides())?;
    let store = settings.store.value.clone();
    let keys = settings.keys.value.clone();
    match cli.command {
        Command::Mount {
            mountpoint,
            index,
            generation,
            image,
            foreground,
            allow_other,
            threads,
            cache_mib,
            pid_file,
            nosuid,
            kernel_metadata,
            log_file,
            sandbox,
        } => {
            let m = &settings.mount;
            // The configuration's Index goes with the system mount only: a
            // second mount elsewhere (an old generation, an image) must not
            // try to mount another Index on the same directory.
            // Compared without looking into either: a mount there may be
            // waiting for this very daemon (a restart on the live mount).
            let system_mount = mountpoint
                .as_deref()
                .is_none_or(|dir| mounts::same_place(dir, &m.mountpoint.value));
            let mountpoint = mountpoint.unwrap_or_else(|| m.mountpoint.value.clone());
            let index = match index {
                Some(dir) => Some(dir),
                None if system_mount => m.index.value.clone(),
                None => None,
            };
            let allow_other = m.allow_other.clone().or_flag(allow_other, "--allow-other");
            let kernel_metadata = m
                .kernel_metadata
                .clone()
                .or_flag(kernel_metadata, "--kernel-metadata");
            if kernel_metadata.value && !allow_other.value {
                // The kernel serves overlayfs and EROFS to every user (as
                // each file's mode allows); a FUSE mount without
                // allow_other only to the user who made it.
                let asked = match &kernel_metadata.origin {
                    crate::config::Origin::File { path, line } => {
                        format!("mount.kernel-metadata ({}, line {line})", path.display())
                    }
                    _ => "--kernel-metadata".to_string(),
                };
                eprintln!(
                    "nexus: error: {asked} needs --allow-other (or mount.allow-other #true): \
                     the kernel view is open to every user, as each file's mode allows, \
                     which a mount without allow-other is not"
                );
                return Ok(exit::USAGE);
            }
            let threads = m.threads.clone().or_flag(threads, "--threads");
            let cache_mib = m.cache_mib.clone().or_flag(cache_mib, "--cache-mib");
            let log_file = m.log_file.clone().or_flag(log_file.map(Some), "--log-file");
            let image = image.request(&keys, &store)?;
            let mountpoint = serve::check_mountpoint(&mountpoint)?;
            let index = index
                .map(|dir| index::check_index_dir(&dir, &mountpoint))
                .transpose()?;
            let request = serve::Request {
                store: std::path::absolute(&store)
                    .with_context(|| format!("store path {}", store.display()))?,
                mountpoint,
                index,
                generation,
                allow_other: allow_other.value,
                threads: usize::from(threads.value),
                cache_bytes: cache_mib.value.saturating_mul(1 << 20),
                pid_file: pid_file.map(std::path::absolute).transpose()?,
                log_file: log_file.value.clone(),
                nosuid,
                image,
                kernel_metadata: kernel_metadata.value,
                sandbox,
            };
            let destination = logging::destination(log_file.value.clone());
            if let logging::Destination::File(path) = &destination {
                logging::check_file(path)?;
            }
            // No fork under systemd: its main process is the daemon.
            let fork = !foreground && !systemd::supervised();
            let keep_stderr = destination == logging::Destination::Journal;
            let report = daemon::run_daemon(fork, keep_stderr, |ready| {
                logging::init(cli.verbose, &destination)?;
                serve::serve(&request, ready)
            })?;
            if let Some((message, _)) = report {
                println!("{message}");
            }
            Ok(exit::OK)
        }
        Command::Takeover {
            mountpoint,
            foreground,
            log_file,
            json,
            sandbox,
        } => {
            let mountpoint = takeover::canonical_mountpoint(&mountpoint)?;
            if let Some(path) = &log_file {
                logging::check_file(path)?;
            }
            let request = takeover::TakeoverRequest {
                store: std::path::absolute(&store)
                    .with_context(|| format!("store path {}", store.display()))?,
                mountpoint: mountpoint.clone(),
                log_file: log_file.map(std::path::absolute).transpose()?,
                verbose: cli.verbose,
                sandbox,
            };
            // Forks even under systemd: `systemctl reload` waits for this
            // command to return; the new daemon becomes the unit's main
            // process (MAINPID=).
            let keep_stderr = logging::stderr_is_journal();
            let report = daemon::run_daemon(!foreground, keep_stderr, |ready| {
                takeover::takeover(&request, ready)
            })?;
            if let Some((message, pid)) = report {
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&serde_json::json!({
                            "mountpoint": mountpoint,
                            "pid": pid,
                            "message": message,
                        }))?
                    );
                } else {
                    println!("{message}");
                }
            }
            Ok(exit::OK)
        }
        Command::Serve {
            virtio_fs,
            fd,
            print_capabilities: _,
            generation,
            image,
            cache_mib,
            max_guests,
            log_file,
            socket,
            sandbox,
        } => {
            let s = &settings.serve;
            let cache_mib = s.cache_mib.clone().or_flag(cache_mib, "--cache-mib");
            let log_file = s.log_file.clone().or_flag(log_file.map(Some), "--log-file");
            logging::init(cli.verbose, &logging::destination(log_file.value))?;
            let listen = match (virtio_fs, fd) {
                (_, Some(fd)) => virtiofs::Listen::Fd(virtiofs::inherited_socket(fd)?),
                (Some(path), None) => virtiofs::Listen::Path {
                    path: std::path::absolute(&path)
                        .with_context(|| format!("socket path {}", path.display()))?,
                    options: socket.options()?,
                },
                (None, None) => match virtiofs::activation_socket()? {
                    Some(fd) => virtiofs::Listen::Fd(fd),
                    None => {
                        eprintln!(
                            "nexus serve: no socket: give --virtio-fs SOCKET, --fd N, or \
                             start it by systemd socket activation"
                        );
                        return Ok(exit::USAGE);
                    }
                },
            };
            let request = virtiofs::Request {
                store: std::path::absolute(&store)
                    .with_context(|| format!("store path {}", store.display()))?,
                listen,
                generation,
                image: image.request(&keys, &store)?,
                cache_bytes: cache_mib.value.saturating_mul(1 << 20),
                max_guests: usize::from(max_guests),
                sandbox,
            };
            virtiofs::serve(request)?;
            Ok(exit::OK)
        }
        Command::Umount {
            mountpoint,
            lazy,
            json,
        } => {
            init_logging(cli.verbose);
            mounts::umount(&mountpoint, lazy)?;
            if json {
                let unmounted = std::path::absolute(&mountpoint)?;
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "unmounted": unmounted }))?
                );
            }
            Ok(exit::OK)
        }
        Command::Snapshot {
            generation,
            profile: Some(profile),
            key,
            counter,
            force_counter,
            expires_in,
            output,
            json,
        } => {
            init_logging(cli.verbose);
            let _ = generation; // clap makes --profile and --generation exclusive
            let args = build::BuildArgs {
                target: None,
                profile: Some(profile),
                source: None,
                output: Some(output),
                key: Some(key),
                counter,
                force_counter,
                expires_in,
                profiles: None,
                recipes: None,
                trust_dirs: false,
                build_user: None,
                cache: None,
                threads: None,
                json,
            };
            build::run(&store, &keys, args)
        }
        Command::Snapshot {
            generation,
            profile: None,
            key,
            counter,
            force_counter,
            expires_in,
            output,
            json,
        } => {
            init_logging(cli.verbose);
            let signing = image::Signing {
                key,
                counter: nexus_npk::CounterRequest::new(counter, force_counter),
                expires_in,
            };
            image::snapshot(&store, &keys, generation, &signing, &output, json)
        }
        Command::Verify {
            file,
            allow_downgrade,
            allow_expired,
            json,
        } => {
            init_logging(cli.verbose);
            let allow = image::Allow {
                downgrade: allow_downgrade,
                expired: allow_expired,
            };
            image::verify(&store, &keys, &file, allow, json)
        }
        Command::Switch(args) => {
            init_logging(cli.verbose);
            crate::generations::switch(&store, &keys, args)
        }
        Command::Rollback(args) => {
            init_logging(cli.verbose);
            crate::generations::rollback(&store, args)
        }
        Command::Status { cache, json } => {
            init_logging(cli.verbose);
            let cache = cache.unwrap_or_else(nexus_system::fetch::default_cache_dir);
            status::run(&store, &cache, json)
        }
        Command::Config(command) => crate::config_cmd::run(&settings, command),
        Command::RemoteFetcher { fds, sandbox } => {
            init_logging(cli.verbose);
            sandbox::serve_fetcher(&sandbox, &store, &fds).map(|()| 0)
        }
        Command::Key(command) => {
            init_logging(cli.verbose);
            crate::keys::run(&keys, command)
        }
        Command::Build(args) => {
            init_logging(cli.verbose);
            match args.target.as_deref() {
                Some("rumk") => rumk_build::build_rumk(&store, &keys, &args),
                Some(other) => anyhow::bail!(
                    "nexus build {other}: unknown target (`nexus build rumk`, or --profile NAME)"
                ),
                None => build::run(&store, &keys, args),
            }
        }
        Command::Rumk(RumkCommand::Run {
            generation,
            image,
            machine,
            kernel,
            memory_mib,
            timeout,
            qemu,
            log_file,
            args,
        }) => {
            init_logging(cli.verbose);
            let request = rumk::RunRequest {
                store: std::path::absolute(&store)
                    .with_context(|| format!("store path {}", store.display()))?,
                keys: std::path::absolute(&keys)
                    .with_context(|| format!("key store path {}", keys.display()))?,
                generation,
                image: image.request(&keys, &store)?,
                kernel: kernel.map(std::path::absolute).transpose()?,
                machine,
                memory_mib,
                timeout: std::time::Duration::from_secs(timeout),
                qemu,
                args,
                log_file: log_file.map(std::path::absolute).transpose()?,
            };
            rumk::run(&request)
        }
    }
}
