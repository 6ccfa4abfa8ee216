//! `nip`, the package manager: command-line definition and dispatch.

mod age;
mod changes;
mod commands;
mod output;
mod pins;
mod remote;
mod tui;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::epoch::ExpiresIn;

pub use commands::run;

/// nip — the Nexus package manager.
///
/// Packages live in a content-addressed store (default /var/lib/nexus for
/// root, $XDG_DATA_HOME/nexus otherwise) and appear as /Programs/App/Version.
/// Every change (add, remove, rollback, switch) is one all-or-nothing
/// transaction that creates a new numbered generation; the highest is live.
///
/// Settings come from flags, then the environment (NEXUS_STORE, NEXUS_KEYS),
/// then /etc/nexus/nexus.kdl (or the file NEXUS_CONFIG or --config names),
/// then built-in defaults; `nip config show` lists them and their origins.
///
/// Every command that changes something or that a script may read takes
/// --json; with --json, an error is also printed on stdout as
/// {"error", "causes", "exit_code"}.
///
/// Exit codes: 0 success; 1 error (nothing was changed); 2 bad command line;
/// 3 `verify` found damaged data.
#[derive(Debug, Parser)]
#[command(name = "nip", version, about, long_about, max_term_width = 100)]
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

impl Cli {
    /// The global options that override the configuration file.
    pub fn overrides(&self) -> crate::config::Overrides {
        crate::config::Overrides {
            config: self.config.clone(),
            store: self.store.clone(),
            keys: self.keys.clone(),
        }
    }
}

/// nip's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the store (does nothing if it exists).
    Init {
        /// JSON: {store}.
        #[arg(long)]
        json: bool,
    },

    /// Import packages: directory trees and package files, all in one
    /// transaction.
    ///
    /// A directory without --name/--version must end in App/Version (the
    /// GoboLinux layout), e.g. `nip add corpus/*/*` imports a whole tree of
    /// programs at once; an App directory holding versions (hello/ with
    /// 1.0/ and 2.0/) is refused, naming the versions to add instead. A file is recognised by its content: a Debian
    /// .deb, an Arch/pacman .pkg.tar.{zst,xz,gz}, a pkgsrc binary .tgz,
    /// a Nix NAR (.nar, .nar.xz, .nar.zst) or a Nexus .npk; its name and
    /// version come from its own metadata (`usr/` is dropped from .deb and
    /// pacman paths, so usr/bin/hello becomes hello/VERSION/bin/hello; a
    /// version's epoch is left out), a NAR's from its file name, the store
    /// path name HASH-NAME-VERSION.nar (the store path is the package root). Nothing is
    /// unpacked to disk. Archives with unsafe paths, duplicates, broken
    /// links or more than the limits unpack to are refused.
    ///
    /// Adding a NAME/VERSION again with an identical tree does nothing;
    /// with a different tree it is refused (versions are immutable).
    /// Device nodes, FIFOs and sockets are refused unless --skip-special.
    ///
    /// A .npk must be signed by a key trusted for packages of its App
    /// (`nip key trust --for packages`), not revoked, unaltered and not
    /// expired; otherwise it is refused unless --insecure (or
    /// --allow-expired). It keeps its tree hash: the package is the same
    /// in every store. A signed system image is refused: it replaces the
    /// whole system, through `nexus switch --image FILE`.
    ///
    /// Each package becomes its App's Current version; one older (Debian
    /// ordering) than the App's Current is refused unless
    /// --allow-downgrade, so an old, legitimately signed package cannot be
    /// replayed to bring back what a newer one fixed.
    ///
    /// Run as root, nip imports a directory only if root owns it, all it
    /// holds and every directory above it, and nobody else can write to
    /// them (as git's safe.directory): whoever can write to a tree while
    /// root imports it decides what root imports. --trust-source-owner
    /// accepts such a tree; even then, files not owned by root lose their
    /// setuid/setgid bits, file capabilities (security.capability) and
    /// group 0 unless --keep-source-privileges. A file or directory that
    /// changes while it is read fails the whole add.
    ///
    /// Examples: nip add hello_2.10-3_amd64.deb jq_1.6-2.1_amd64.deb;
    /// nip add ./hello-root --name hello --version 2.10-3
    Add {
        /// Directories and package files to import.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// Package name (only with a single PATH; overrides a package's own).
        #[arg(long, requires = "version")]
        name: Option<String>,
        /// Package version (only with a single PATH; overrides a package's own).
        #[arg(long, requires = "name")]
        version: Option<String>,
        /// Leave out device nodes, FIFOs and sockets instead of failing.
        #[arg(long)]
        skip_special: bool,
        /// As root, import directories that someone other than root owns
        /// or can write to (you trust whoever that is).
        #[arg(long)]
        trust_source_owner: bool,
        /// Keep setuid/setgid bits, file capabilities and group 0 of files
        /// in the directories that root does not own.
        #[arg(long)]
        keep_source_privileges: bool,
        /// Seconds to wait for a store lock held by another process
        /// (another add, a gc) before giving up and naming it.
        #[arg(long, value_name = "SECONDS", default_value_t = 60)]
        lock_timeout: u64,
        /// Most bytes one package file may unpack to (suffixes K, M, G, T).
        #[arg(long, value_name = "SIZE", default_value = "8G", value_parser = parse_size)]
        max_unpacked_size: u64,
        /// Most entries (files, directories, links) in one package file.
        #[arg(long, value_name = "N", default_value_t = 1_000_000)]
        max_entries: u64,
        /// Worker threads for hashing and compression (default: all cores).
        #[arg(long, value_name = "N")]
        threads: Option<usize>,
        /// Accept .npk archives that are unsigned, signed by an unknown key
        /// or altered (each still checked chunk by chunk).
        #[arg(long)]
        insecure: bool,
        /// Let an App's Current move to an older version (a deliberate
        /// downgrade).
        #[arg(long)]
        allow_downgrade: bool,
        /// Accept .npk archives whose signature has expired.
        #[arg(long)]
        allow_expired: bool,
        /// JSON: {generation, added, unchanged, seconds}.
        #[arg(long)]
        json: bool,
    },

    /// Write an installed package as a signed, self-contained .npk.
    ///
    /// The archive holds the package's tree and metadata and every chunk
    /// of its files (FORMAT.md, section 8), signed with the ed25519 key
    /// NAME from the key store. `nip add FILE.npk` in any store that
    /// trusts the key for packages imports it with the same tree hash. The
    /// same package, key, SOURCE_DATE_EPOCH and --expires-in give the same
    /// bytes.
    ///
    /// Example: nip key generate builder; nip pack hello/2.10-3 --key builder -o hello.npk
    Pack {
        /// NAME/VERSION.
        spec: String,
        /// Output file.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        /// Signing key name (see `nip key list`).
        #[arg(long, value_name = "NAME", required_unless_present = "unsigned")]
        key: Option<String>,
        /// Write an unsigned archive (importing it needs --insecure).
        #[arg(long, conflicts_with = "key")]
        unsigned: bool,
        /// How long the signature vouches for the package, from its
        /// creation time (SOURCE_DATE_EPOCH when set): `never`, or e.g.
        /// `30d`, `12h`, `1y` (units s, m, h, d, w, y). Stores refuse it
        /// once expired.
        #[arg(long, value_name = "DURATION", default_value = "never",
              value_parser = ExpiresIn::parse)]
        expires_in: ExpiresIn,
        /// JSON: {file, spec, bytes, blobs, chunks, tree_hash, signer: {id, name} or null}.
        #[arg(long)]
        json: bool,
    },

    /// Signing keys and trusted keys (shared with `nexus key`).
    #[command(subcommand)]
    Key(crate::keys::KeyCommand),

    /// Remove packages from the installed set (NAME = all versions).
    ///
    /// The data stays in the store until `nip gc` finds no retained
    /// generation using it, so `nip rollback` brings them back instantly.
    Remove {
        /// NAME or NAME/VERSION.
        #[arg(required = true, value_name = "SPEC")]
        specs: Vec<String>,
        /// JSON: {generation, removed}.
        #[arg(long)]
        json: bool,
    },

    /// List installed packages (of the current generation).
    List {
        /// Show generation N instead of the current one.
        #[arg(long, value_name = "N")]
        generation: Option<i64>,
        /// JSON array of {name, version, tree_hash, current, files, bytes, origin}.
        #[arg(long)]
        json: bool,
    },

    /// Show every stored version of a package and which one is Current.
    Info {
        /// Package name.
        name: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },

    /// List the files of an installed package with their metadata.
    Files {
        /// NAME/VERSION.
        spec: String,
        /// JSON array of {path, type, mode, uid, gid, size, mtime, target, hash, inode, nlink, xattrs}.
        #[arg(long)]
        json: bool,
    },

    /// Show the generations, oldest first; the last one is live.
    ///
    /// Each line ends with what the generation changed from the one before
    /// it: Current moves (`hello 1→2`), versions added (`+jq/1.6`) and
    /// removed (`-curl/8`) and the change in file bytes; `nip diff` tells
    /// one change in full.
    History {
        /// JSON array of {id, created, action, restores, packages, diff},
        /// diff as `nip diff --json` without stored_bytes (null for the
        /// oldest generation kept after gc).
        #[arg(long)]
        json: bool,
    },

    /// What changed from generation FROM to generation TO (default: the
    /// live one): Apps and versions added and removed, Current moves, and
    /// the size of each side in file bytes and in stored (deduplicated,
    /// compressed) pack bytes.
    ///
    /// Example: nip diff 7 (what happened since generation 7)
    Diff {
        /// The earlier generation (see `nip history`).
        from: i64,
        /// The later generation (default: the live one).
        to: Option<i64>,
        /// JSON {from, to, apps_added, apps_removed, versions_added,
        /// versions_removed, current_moved, logical_bytes, stored_bytes},
        /// sizes as {before, after, delta} in bytes.
        #[arg(long)]
        json: bool,
    },

    /// Pin generation GEN: `nip gc` never collects it, nor anything it
    /// holds, until `nip unpin GEN` (as `ostree admin pin`). Without GEN,
    /// list the pins.
    Pin {
        /// Generation number (see `nip history`).
        generation: Option<i64>,
        /// JSON: {generation, pinned, changed}, or the list [{generation, pinned}].
        #[arg(long)]
        json: bool,
    },

    /// Unpin generation GEN, so that gc's retention rules decide again.
    Unpin {
        /// Generation number.
        generation: i64,
        /// JSON: {generation, pinned, changed}.
        #[arg(long)]
        json: bool,
    },

    /// Make VERSION of APP its Current, as one new generation (GoboLinux's
    /// SymlinkProgram).
    ///
    /// VERSION must be stored: installed, or removed but still kept (by a
    /// retained generation or gc's grace), which brings it back. Refused,
    /// with nothing changed, for a version the store does not hold.
    ///
    /// Example: nip current hello 2.10-3
    Current {
        /// App name.
        app: String,
        /// The version to make Current.
        version: String,
        /// JSON: {app, version, previous, generation, reinstated}
        /// (generation null: it was Current already).
        #[arg(long)]
        json: bool,
    },

    /// Go back to the generation before the live one (repeat to go further).
    #[command(long_about = crate::generations::ROLLBACK_ABOUT)]
    Rollback(crate::generations::RollbackArgs),

    /// Make generation GEN, or the system in image FILE, the live one.
    #[command(long_about = crate::generations::SWITCH_ABOUT)]
    Switch(crate::generations::SwitchArgs),

    /// Browse and change the store in a terminal interface.
    ///
    /// Apps with their stored versions (which one is Current, which are
    /// installed), the generations with what each changed (as `nip
    /// history`; Enter for the whole `nip diff`) and the pins. Keys: s
    /// switches to the selected generation, r rolls back, p pins or unpins
    /// the selected generation, c makes the selected version Current; each
    /// asks first, naming what will happen, and is the same command as
    /// `nip switch`, `nip rollback`, `nip pin`/`unpin` and `nip current`.
    /// Tab moves between the panes, ? lists the keys, q quits. The screen
    /// follows the store while another nip changes it.
    ///
    /// Needs a terminal; scripts read the same with `nip list`, `nip
    /// history` and `nip pin`, with --json.
    Tui,

    /// Delete data that no retained generation references.
    ///
    /// Retained: the newest --keep generations (the live one always); with
    /// --older-than AGE, also every generation that was live within AGE,
    /// as Nix's --delete-older-than (so the state of AGE ago can still be
    /// restored): each option only ever keeps more. --older-than alone
    /// keeps no count (as if --keep 1). Always retained: pinned
    /// generations (`nip pin`), and what running mounts and virtio-fs
    /// daemons serve (`nexus status`) or programs hold open under a
    /// mount.
    ///
    /// Packages, file contents and chunks that no retained generation
    /// uses are deleted only after they have been unused for --grace
    /// seconds, so gc is safe to run while other `nip add`s are in
    /// progress and while readers resolve paths.
    ///
    /// Example: nip gc --older-than 30d
    Gc {
        /// Generations to keep (default 10; 1 with --older-than).
        #[arg(long, value_name = "N")]
        keep: Option<usize>,
        /// Also keep generations that were live within AGE (s, m, h, d or
        /// w: 30d, 12h, 2w).
        #[arg(long, value_name = "AGE", value_parser = age::parse_age)]
        older_than: Option<std::time::Duration>,
        /// Seconds data must have been unreferenced before it is deleted.
        #[arg(long, default_value_t = 3600, value_name = "SECONDS")]
        grace: u64,
        /// JSON report.
        #[arg(long)]
        json: bool,
    },

    /// Re-hash every chunk and file, and recompute every package's tree
    /// hash from the catalog; name each damaged file, and each package
    /// whose modes, owners, xattrs, names or links were changed, and
    /// re-hash every decoded copy (nip decode writes a damaged one anew).
    /// Frames gc left holding only deleted chunks are checked too: a
    /// damaged one is named by its block, whose files still read right
    /// but which nip publish and .npk export refuse. Exit 3 if any.
    Verify {
        /// JSON report {ok, chunks_checked, files_checked, damaged: [{package,
        /// path, reason}], packages_checked, damaged_packages: [{package, reason}],
        /// damaged_copies: [[copy, reason]], damaged_blocks: [{pack, offset,
        /// reason}]}.
        #[arg(long)]
        json: bool,
    },

    /// Keep decoded copies of the generation's large files for the kernel
    /// to read itself.
    ///
    /// Every file of at least --min-size of the generation (the current
    /// one by default) gets a whole, plain copy of its contents in
    /// STORE/decoded,
    /// named by its content hash and read through the store's checks, so
    /// every byte is verified. A mount with --kernel-metadata made or
    /// switched after this reads those files from the copies through the
    /// kernel (each identical file of several versions once, in one page
    /// cache) instead of through its FUSE mount: at the speed of the disk,
    /// cold or warm. The copies cost their plain size on disk; `nip gc`
    /// removes those of contents no stored package holds.
    ///
    /// With --min-size 1 every file gets a copy and the kernel serves the
    /// whole tree, metadata and contents, without the daemon (composefs's
    /// layout): cold reads of many small files at the disk's speed, for
    /// the plain size of the whole generation on disk. Kernel views look
    /// for copies of files down to the smallest --min-size ever given,
    /// until --prune-smaller raises it again.
    ///
    /// Example: nip decode && nexus umount /Programs && nexus mount /Programs --kernel-metadata --allow-other
    ///
    /// Example (take the disk back): nip decode --min-size 1M --prune-smaller
    Decode {
        /// The generation whose files to decode (default: the current one).
        #[arg(long, value_name = "N")]
        generation: Option<i64>,
        /// Decode files of at least this size (K, M, G suffixes).
        #[arg(long, value_name = "SIZE", default_value = "1M", value_parser = parse_size)]
        min_size: u64,
        /// Make --min-size the threshold even if a smaller one was given
        /// before, and remove the copies of smaller files: at once those
        /// no running kernel view names, the others with the first `nip
        /// gc` after their views switch generation or are mounted again.
        #[arg(long)]
        prune_smaller: bool,
        /// JSON report {generation, min_size, threshold, written,
        /// written_bytes, present, present_bytes, replaced, refused (the
        /// contents whose chunks hash to another name: no copy; exit status
        /// 3), pruned: {removed, removed_bytes, held, held_bytes}}.
        #[arg(long)]
        json: bool,
    },

    /// Write a file of an installed package to stdout (verified).
    Cat {
        /// NAME/VERSION.
        spec: String,
        /// Path inside the package, e.g. usr/bin/hello.
        path: PathBuf,
    },

    /// Write an installed package out as a directory tree (verified), with
    /// modes, ownership (as root), mtimes, links and xattrs.
    ///
    /// What a package claims about privileges is left out unless
    /// --preserve-privileged: setuid/setgid bits, and security.* (file
    /// capabilities, SELinux labels), trusted.* and system.* (ACLs) xattrs,
    /// which an unsigned package file may carry.
    Export {
        /// NAME/VERSION.
        spec: String,
        /// Destination directory (must not exist).
        dest: PathBuf,
        /// Leave files owned by the exporter, as tar --no-same-owner (the
        /// default when not root).
        #[arg(long)]
        no_same_owner: bool,
        /// Write no extended attributes, as tar --no-xattrs.
        #[arg(long)]
        no_xattrs: bool,
        /// Also restore setuid/setgid bits and security.*, trusted.* and
        /// system.* xattrs.
        #[arg(long, conflicts_with = "no_xattrs")]
        preserve_privileged: bool,
        /// JSON: {spec, dest, files, bytes}.
        #[arg(long)]
        json: bool,
    },

    /// Store totals: packs, chunks, stored and logical bytes.
    Stats {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },

    /// The settings in force and where each came from (shared with
    /// `nexus config`).
    #[command(subcommand)]
    Config(crate::config_cmd::ConfigCommand),

    /// Remotes: S3-compatible object storage, HTTP mirrors and directories
    /// this store publishes to or pulls from (add, list, remove, cache).
    #[command(subcommand)]
    Remote(remote::RemoteCommand),

    /// Publish a generation to a remote: its new chunks, its metadata, then
    /// a signed manifest (counter, expiry).
    ///
    /// Objects are written first and the manifest last, conditionally (S3
    /// If-Match/If-None-Match; a lock for file:// remotes), so a publisher
    /// killed at any moment leaves the previous manifest with everything
    /// it names, and of two publishers at once one fails naming the
    /// conflict. Chunks the remote has are not uploaded again; no byte of
    /// a package that is not published is uploaded.
    ///
    /// Example: nip publish origin --expires-in 7d
    Publish(remote::PublishArgs),

    /// Make the newest generation a remote published a local generation,
    /// exactly its packages; file contents are fetched when first read.
    ///
    /// The manifest must be signed by a key trusted for images of the
    /// remote's trust domain, not revoked, not expired, with a counter
    /// above the highest this store accepted there; its metadata must be
    /// the bytes it names. Anything refused leaves the store as it was.
    /// Chunks the store has are never fetched. Running mounts follow the
    /// new generation as they follow any switch.
    ///
    /// Example: nip pull origin
    Pull(remote::PullArgs),

    /// Fetch the blocks of packages into the disk cache ahead of use, so
    /// they read at local speed (and offline).
    ///
    /// Example: nip prefetch python3.11 openjdk-17-jre-headless/17.0.13
    Prefetch(remote::PrefetchArgs),
}

/// Parses a size: a number of bytes with an optional binary suffix (`K`,
/// `M`, `G`, `T`, also spelt `KiB`...).
fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (digits, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("{text:?}: unknown unit {c:?} (use K, M, G or T)")),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 8G, 512M, 1048576)"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("8G"), Ok(8 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("2k"), Ok(2048));
        assert!(parse_size("1X").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
