//! `nexus`, the system builder: command-line definition and dispatch. Today
//! it mounts the store as the `/Programs` tree (`nexus mount`, `nexus
//! umount`) and serves the same tree to VM guests (`nexus serve
//! --virtio-fs`).

mod daemon;
mod index;
mod mounts;
mod serve;
mod signals;
mod virtiofs;

use std::fs::File;
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::exit;
use crate::location::default_store_dir;

/// nexus — the Nexus system builder: presents the store as /Programs, on
/// this machine and to VM guests.
///
/// `nexus mount /Programs` shows every installed package of the store
/// (default /var/lib/nexus for root, $XDG_DATA_HOME/nexus otherwise) as
/// /Programs/App/Version, and /Programs/App/Current as a link to the version
/// `nip` made current. The mount is read-only; it shows the live generation
/// and follows `nip add`, `remove`, `rollback` and `switch` without a remount
/// (within about two seconds), or one fixed generation with --generation.
///
/// `nexus serve --virtio-fs SOCKET` serves the same tree to virtual machines
/// as a vhost-user-fs (virtio-fs) device: many guests share one store.
///
/// Exit codes: 0 success; 1 error; 2 bad command line.
#[derive(Debug, Parser)]
#[command(name = "nexus", version, about, long_about, max_term_width = 100)]
pub struct Cli {
    /// Store directory.
    #[arg(long, global = true, env = "NEXUS_STORE", value_name = "DIR")]
    pub store: Option<PathBuf>,

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
    /// library. On a name clash the App whose name sorts first (bytewise)
    /// wins, and within one App bin/ beats usr/bin/. The index follows the
    /// mount's generation and is unmounted with it; `nexus umount DIR`
    /// removes only the index.
    ///
    /// Example: nexus mount /Programs --allow-other --index /System/Index
    Mount {
        /// An existing directory to mount on.
        mountpoint: PathBuf,
        /// Also mount the Index (every App's programs, libraries, headers
        /// and data as one tree of symlinks) on DIR.
        #[arg(long, value_name = "DIR")]
        index: Option<PathBuf>,
        /// Show generation N (see `nip history`) instead of following the
        /// live one.
        #[arg(long, value_name = "N")]
        generation: Option<i64>,
        /// Stay in the foreground (do not daemonize); log to stderr.
        #[arg(long)]
        foreground: bool,
        /// Let every user use the mount, not only the one who mounted it
        /// (a workstation's /Programs). Permissions are checked by the
        /// kernel against each file's mode.
        #[arg(long)]
        allow_other: bool,
        /// Request threads.
        #[arg(long, default_value_t = 4, value_name = "N",
              value_parser = clap::value_parser!(u16).range(1..=64))]
        threads: u16,
        /// Mebibytes of decompressed data kept in memory.
        #[arg(long, default_value_t = 64, value_name = "MIB")]
        cache_mib: u64,
        /// Write the daemon's process id to FILE once the mount is ready
        /// (removed when it exits).
        #[arg(long, value_name = "FILE")]
        pid_file: Option<PathBuf>,
        /// Append the daemon's log to FILE (default: the daemon logs
        /// nothing; in the foreground, logs go to stderr).
        #[arg(long, value_name = "FILE")]
        log_file: Option<PathBuf>,
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
    /// EROFS, and nothing outside the view can be named.
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
        /// socket,path=SOCKET).
        #[arg(long = "virtio-fs", value_name = "SOCKET")]
        virtio_fs: PathBuf,
        /// Serve generation N (see `nip history`) instead of following the
        /// live one.
        #[arg(long, value_name = "N")]
        generation: Option<i64>,
        /// Mebibytes of decompressed data kept in memory, shared by all
        /// guests.
        #[arg(long, default_value_t = 128, value_name = "MIB")]
        cache_mib: u64,
        /// Guests served at once; later ones wait until one disconnects.
        #[arg(long, default_value_t = 64, value_name = "N",
              value_parser = clap::value_parser!(u16).range(1..))]
        max_guests: u16,
        /// Append the log to FILE instead of stderr.
        #[arg(long, value_name = "FILE")]
        log_file: Option<PathBuf>,
    },

    /// Unmount a nexus mount (also one whose daemon died).
    ///
    /// Refuses a busy mount unless --lazy, and anything that is not a nexus
    /// mount. The daemon ends by itself once its mount is gone.
    Umount {
        /// Where the store is mounted.
        mountpoint: PathBuf,
        /// Detach a busy mount now; it goes away when its last user does.
        #[arg(long)]
        lazy: bool,
    },
}

/// Sets up `tracing`: to `file` if given, else to stderr. The level comes
/// from `-v` (warnings by default; info in a log file), or RUST_LOG.
fn init_logging(verbose: u8, file: Option<File>) {
    // fuser warns "Failed to umount filesystem" whenever the mount was
    // removed from outside (`nexus umount`, SIGTERM): the normal way to stop,
    // so not worth a warning unless debugging.
    let level = match (verbose, file.is_some()) {
        (0, false) => "warn,fuser::session=error",
        (0, true) | (1, _) => "info,fuser::session=error",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match file {
        Some(f) => builder.with_ansi(false).with_writer(Mutex::new(f)).init(),
        None => builder.with_writer(std::io::stderr).init(),
    }
}

/// Runs a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Mount {
            mountpoint,
            index,
            generation,
            foreground,
            allow_other,
            threads,
            cache_mib,
            pid_file,
            log_file,
        } => {
            let store = cli.store.unwrap_or_else(default_store_dir);
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
                allow_other,
                threads: usize::from(threads),
                cache_bytes: cache_mib.saturating_mul(1 << 20),
                pid_file: pid_file.map(std::path::absolute).transpose()?,
            };
            let log = log_file
                .map(|path| {
                    File::options()
                        .create(true)
                        .append(true)
                        .open(&path)
                        .with_context(|| format!("opening the log file {}", path.display()))
                })
                .transpose()?;
            if foreground {
                init_logging(cli.verbose, log);
                serve::serve(&request, None)?;
                return Ok(exit::OK);
            }
            match daemon::daemonize()? {
                daemon::Role::Parent(message) => {
                    println!("{message}");
                    Ok(exit::OK)
                }
                daemon::Role::Daemon(mut ready) => {
                    init_logging(cli.verbose, log);
                    let outcome = serve::serve(&request, Some(&mut ready));
                    if let Err(e) = &outcome {
                        ready.fail(&format!("{e:#}"));
                        tracing::error!("{e:#}");
                    }
                    std::process::exit(if outcome.is_ok() {
                        exit::OK
                    } else {
                        exit::ERROR
                    });
                }
            }
        }
        Command::Serve {
            virtio_fs,
            generation,
            cache_mib,
            max_guests,
            log_file,
        } => {
            let store = cli.store.unwrap_or_else(default_store_dir);
            let log = log_file
                .map(|path| {
                    File::options()
                        .create(true)
                        .append(true)
                        .open(&path)
                        .with_context(|| format!("opening the log file {}", path.display()))
                })
                .transpose()?;
            init_logging(cli.verbose, log);
            let request = virtiofs::Request {
                store: std::path::absolute(&store)
                    .with_context(|| format!("store path {}", store.display()))?,
                socket: std::path::absolute(&virtio_fs)
                    .with_context(|| format!("socket path {}", virtio_fs.display()))?,
                generation,
                cache_bytes: cache_mib.saturating_mul(1 << 20),
                max_guests: usize::from(max_guests),
            };
            virtiofs::serve(&request)?;
            Ok(exit::OK)
        }
        Command::Umount { mountpoint, lazy } => {
            init_logging(cli.verbose, None);
            mounts::umount(&mountpoint, lazy)?;
            Ok(exit::OK)
        }
    }
}
