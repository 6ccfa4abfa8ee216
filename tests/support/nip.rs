//! Running the real `nip` binary against a throw-away store and decoding its
//! JSON output.
//!
//! The JSON decoders are deliberately hand-written and strict about the fields
//! the tests rely on: a missing or mistyped field fails with the offending
//! document in the message instead of being silently defaulted.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::fixtures::Scratch;

/// Exit code of `nip` for success.
pub const EXIT_OK: i32 = 0;
/// Exit code of `nip` for an ordinary error.
pub const EXIT_ERROR: i32 = 1;
/// Exit code of `nip` for a usage error.
pub const EXIT_USAGE: i32 = 2;
/// Exit code of `nip verify` when it found damage.
pub const EXIT_DAMAGED: i32 = 3;

/// How long any single synchronous `nip` invocation may take before the test
/// gives up on it (a hang is a bug, and CI must not wait forever).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(600);

/// Path of the `nip` binary under test.
///
/// Cargo builds it into the same `target/<profile>/` directory as the test
/// executable, which itself lives in `target/<profile>/deps/`. `NEXUS_NIP`
/// overrides the location.
pub fn nip_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("NEXUS_NIP") {
            let p = PathBuf::from(p);
            assert!(p.is_file(), "NEXUS_NIP={} is not a file", p.display());
            return p;
        }
        let exe = std::env::current_exe().expect("cannot find the test executable's path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .unwrap_or_else(|| panic!("unexpected test executable location {}", exe.display()));
        let nip = profile_dir.join("nip");
        assert!(
            nip.is_file(),
            "the nip binary is missing at {}: run `cargo build --workspace` first",
            nip.display()
        );
        nip
    })
}

/// The outcome of one finished `nip` invocation.
pub struct Run {
    /// The arguments after `nip --store STORE`.
    pub args: Vec<OsString>,
    /// Exit status.
    pub status: ExitStatus,
    /// Raw standard output.
    pub stdout: Vec<u8>,
    /// Standard error, lossily decoded.
    pub stderr: String,
    /// Wall-clock duration.
    pub elapsed: Duration,
}

impl Run {
    /// The exit code, `None` if the process was killed by a signal.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// True on exit code 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Standard output, lossily decoded.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// The command line as a user would type it.
    pub fn command_line(&self) -> String {
        let mut s = String::from("nip");
        for a in &self.args {
            s.push(' ');
            let a = a.to_string_lossy();
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c.is_control()) {
                s.push_str(&format!("{a:?}"));
            } else {
                s.push_str(&a);
            }
        }
        s
    }

    /// Whether `nip` crashed with a Rust panic (always a bug, whatever the
    /// input).
    pub fn panicked(&self) -> bool {
        self.code() == Some(101) || self.stderr.contains("panicked at")
    }

    /// Parses standard output as JSON, panicking with the full context if it
    /// is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout of `{}` is not JSON ({e}):\n{self}",
                self.command_line()
            )
        })
    }
}

/// Truncates long outputs in failure messages.
fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}\n[... {} more bytes]", &text[..cut], text.len() - cut)
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "`{}` -> {} after {:.2?}",
            self.command_line(),
            self.status,
            self.elapsed
        )?;
        writeln!(f, "--- stdout ---\n{}", clip(&self.stdout_text(), 4000))?;
        write!(f, "--- stderr ---\n{}", clip(&self.stderr, 4000))
    }
}

/// A store in a temporary directory, plus helpers to run `nip` on it.
pub struct Store {
    root: PathBuf,
    _scratch: Option<Scratch>,
}

impl Store {
    /// Creates a fresh store in its own temporary directory (`nip init`).
    pub fn init() -> Store {
        let scratch = Scratch::new("store");
        let root = scratch.path().join("store");
        let store = Store {
            root,
            _scratch: Some(scratch),
        };
        store.ok(["init"]);
        store
    }

    /// A handle on the store at `root` (which may not exist yet); nothing is
    /// run and nothing is deleted on drop.
    pub fn at(root: impl Into<PathBuf>) -> Store {
        Store {
            root: root.into(),
            _scratch: None,
        }
    }

    /// The store directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The directory holding the pack files.
    pub fn packs_dir(&self) -> PathBuf {
        self.root.join("packs")
    }

    /// A `nip --store STORE ARGS...` command with a clean environment
    /// (no inherited `NEXUS_STORE`, backtraces on for panics).
    pub fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(nip_bin());
        cmd.arg("--store")
            .arg(&self.root)
            .args(args)
            .env_remove("NEXUS_STORE")
            .env_remove("NEXUS_KEYS")
            // Not the machine's /etc/nexus/nexus.kdl: an empty configuration.
            .env("NEXUS_CONFIG", "/dev/null")
            .env("RUST_BACKTRACE", "1")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        cmd
    }

    /// Starts `nip` without waiting for it; output is discarded. Used by the
    /// crash and concurrency tests, which kill or join the child themselves.
    pub fn spawn<I, S>(&self, args: I) -> Child
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", nip_bin().display()))
    }

    /// Runs `nip` to completion and returns what happened, whatever the exit
    /// status. Fails the test if it runs longer than [`COMMAND_TIMEOUT`].
    pub fn run<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let start = Instant::now();
        let child = self
            .command(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", nip_bin().display()));
        let pid = child.id();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        let output = match rx.recv_timeout(COMMAND_TIMEOUT) {
            Ok(out) => out.expect("waiting for nip failed"),
            Err(_) => {
                // SAFETY: plain kill(2) of the child we started.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                let out = rx.recv().ok().and_then(Result::ok);
                let stderr = out
                    .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                    .unwrap_or_default();
                panic!(
                    "`nip {}` did not finish within {COMMAND_TIMEOUT:?} (hang or deadlock?); stderr:\n{}",
                    args.iter()
                        .map(|a| a.to_string_lossy())
                        .collect::<Vec<_>>()
                        .join(" "),
                    clip(&stderr, 4000)
                );
            }
        };
        Run {
            args,
            status: output.status,
            stdout: output.stdout,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            elapsed: start.elapsed(),
        }
    }

    /// Runs `nip` and fails the test unless it exits with 0.
    pub fn ok<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let run = self.run(args);
        assert!(run.success(), "expected success:\n{run}");
        run
    }

    /// `nip add DIR --name NAME --version VERSION`, which must succeed.
    pub fn add_dir(&self, dir: &Path, name: &str, version: &str) -> Run {
        self.ok([
            OsStr::new("add"),
            dir.as_os_str(),
            OsStr::new("--name"),
            OsStr::new(name),
            OsStr::new("--version"),
            OsStr::new(version),
        ])
    }

    /// Runs `nip` and fails the test unless it exits with one of `codes`
    /// (never 0) without panicking and with an explanation on stderr.
    pub fn fails_with<I, S>(&self, codes: &[i32], args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let run = self.run(args);
        assert!(
            !run.panicked(),
            "nip panicked instead of reporting an error:\n{run}"
        );
        assert!(
            run.code().is_some_and(|c| codes.contains(&c)),
            "expected exit code {codes:?}:\n{run}"
        );
        assert!(
            !run.stderr.trim().is_empty(),
            "nip failed without an error message on stderr:\n{run}"
        );
        run
    }

    /// Runs `nip ARGS --json` successfully and returns the parsed output.
    pub fn json<I, S>(&self, args: I) -> Value
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        args.push("--json".into());
        self.ok(args).json()
    }

    /// `nip list --json`.
    pub fn list(&self) -> Vec<Package> {
        let v = self.json(["list"]);
        as_array(&v, "nip list --json")
            .iter()
            .map(Package::from_json)
            .collect()
    }

    /// The package `name/version` from `nip list --json`, if listed.
    pub fn listed(&self, name: &str, version: &str) -> Option<Package> {
        self.list()
            .into_iter()
            .find(|p| p.name == name && p.version == version)
    }

    /// `nip history --json`, sorted by generation id.
    pub fn history(&self) -> Vec<Generation> {
        let v = self.json(["history"]);
        let mut gens: Vec<Generation> = as_array(&v, "nip history --json")
            .iter()
            .map(Generation::from_json)
            .collect();
        gens.sort_by_key(|g| g.id);
        gens
    }

    /// The current generation (the highest id), if any.
    pub fn current_generation(&self) -> Option<Generation> {
        self.history().into_iter().last()
    }

    /// `nip files SPEC --json`.
    pub fn files(&self, spec: &str) -> Vec<FileEntry> {
        let v = self.json(["files", spec]);
        as_array(&v, "nip files --json")
            .iter()
            .map(FileEntry::from_json)
            .collect()
    }

    /// `nip stats --json`.
    pub fn stats(&self) -> Value {
        self.ok(["stats", "--json"]).json()
    }

    /// `nip verify --json`: the run (exit 0 or 3 only) and its decoded report.
    pub fn verify(&self) -> (Run, VerifyReport) {
        let run = self.run(["verify", "--json"]);
        assert!(
            matches!(run.code(), Some(EXIT_OK) | Some(EXIT_DAMAGED)),
            "nip verify must exit 0 (clean) or 3 (damage):\n{run}"
        );
        let report = VerifyReport::from_json(&run.json());
        (run, report)
    }

    /// Fails the test unless `nip verify` finds the store clean, consistently
    /// in exit code and report.
    pub fn assert_verify_clean(&self, context: &str) {
        let (run, report) = self.verify();
        assert!(
            run.code() == Some(EXIT_OK) && report.ok && report.damaged.is_empty(),
            "{context}: nip verify is not clean:\n{run}"
        );
    }

    /// `nip export SPEC DEST --preserve-privileged`: everything the package
    /// records, setuid bits and privileged xattrs included, to compare
    /// with its source.
    pub fn export(&self, spec: &str, dest: &Path) -> Run {
        self.ok([
            OsStr::new("export"),
            OsStr::new(spec),
            dest.as_os_str(),
            OsStr::new("--preserve-privileged"),
        ])
    }

    /// `nip cat SPEC PATH`, whatever its outcome.
    pub fn cat(&self, spec: &str, path: impl AsRef<OsStr>) -> Run {
        self.run([OsStr::new("cat"), OsStr::new(spec), path.as_ref()])
    }

    /// The observable catalog state: `nip list --json` and
    /// `nip history --json`, raw. Two equal states mean nothing visible
    /// changed.
    pub fn state(&self) -> StoreState {
        StoreState {
            list: self.json(["list"]),
            history: self.json(["history"]),
        }
    }

    /// Fails the test unless the visible state equals `before` and verify is
    /// clean: what every refused operation must guarantee.
    pub fn assert_unchanged(&self, before: &StoreState, context: &str) {
        let after = self.state();
        assert!(
            after.list == before.list,
            "{context}: `nip list` changed\nbefore: {}\nafter:  {}",
            before.list,
            after.list
        );
        assert!(
            after.history == before.history,
            "{context}: `nip history` changed\nbefore: {}\nafter:  {}",
            before.history,
            after.history
        );
        self.assert_verify_clean(context);
    }
}

/// What `nip list` and `nip history` show, for before/after comparisons.
#[derive(Clone, Debug, PartialEq)]
pub struct StoreState {
    /// `nip list --json`.
    pub list: Value,
    /// `nip history --json`.
    pub history: Value,
}

/// One entry of `nip list --json`.
#[derive(Clone, Debug, PartialEq)]
pub struct Package {
    /// Package name.
    pub name: String,
    /// Package version.
    pub version: String,
    /// Tree hash, lower-case hex.
    pub tree_hash: String,
    /// Whether this version is the App's `Current`.
    pub current: bool,
}

impl Package {
    fn from_json(v: &Value) -> Package {
        Package {
            name: str_field(v, "name"),
            version: str_field(v, "version"),
            tree_hash: str_field(v, "tree_hash"),
            current: bool_field(v, "current"),
        }
    }

    /// `name/version`.
    pub fn spec(&self) -> String {
        format!("{}/{}", self.name, self.version)
    }
}

/// One entry of `nip history --json`.
#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    /// Generation number.
    pub id: i64,
    /// Creation time (seconds).
    pub created: i64,
    /// What created it.
    pub action: String,
    /// Number of packages in it.
    pub packages: u64,
}

impl Generation {
    fn from_json(v: &Value) -> Generation {
        Generation {
            id: i64_field(v, "id"),
            created: i64_field(v, "created"),
            action: str_field(v, "action"),
            packages: u64_field(v, "packages"),
        }
    }
}

/// One entry of `nip files --json`.
#[derive(Clone, Debug, PartialEq)]
pub struct FileEntry {
    /// `/`-joined relative path; the root is `""`.
    pub path: String,
    /// `"dir"`, `"file"` or `"symlink"`.
    pub kind: String,
    /// `st_mode & 0o7777`.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes (meaningful for files).
    pub size: u64,
    /// Modification time in seconds.
    pub mtime: i64,
    /// Symlink target.
    pub target: Option<String>,
    /// BLAKE3 of the content, hex (files).
    pub hash: Option<String>,
    /// Inode number within the package; hard links share it.
    pub inode: u64,
    /// Number of paths naming this inode.
    pub nlink: u64,
    /// Extended attributes: name to hex value.
    pub xattrs: BTreeMap<String, String>,
}

impl FileEntry {
    fn from_json(v: &Value) -> FileEntry {
        let xattrs = match v.get("xattrs") {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(Value::Object(map)) => map
                .iter()
                .map(|(k, val)| {
                    let hex = val
                        .as_str()
                        .unwrap_or_else(|| panic!("xattr {k} value is not a hex string in {v}"));
                    (k.clone(), hex.to_string())
                })
                .collect(),
            Some(other) => panic!("`xattrs` is not an object: {other} in {v}"),
        };
        FileEntry {
            path: str_field(v, "path"),
            kind: str_field(v, "type"),
            mode: u64_field(v, "mode") as u32,
            uid: u64_field(v, "uid") as u32,
            gid: u64_field(v, "gid") as u32,
            size: v.get("size").and_then(Value::as_u64).unwrap_or(0),
            mtime: i64_field(v, "mtime"),
            target: opt_str_field(v, "target"),
            hash: opt_str_field(v, "hash"),
            inode: u64_field(v, "inode"),
            nlink: u64_field(v, "nlink"),
            xattrs,
        }
    }
}

/// One damaged file reported by `nip verify --json`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Damage {
    /// `name/version`.
    pub package: String,
    /// Path inside the package.
    pub path: String,
    /// Explanation.
    pub reason: String,
}

/// The report of `nip verify --json`.
#[derive(Clone, Debug)]
pub struct VerifyReport {
    /// No damage found.
    pub ok: bool,
    /// Chunks read and checked.
    pub chunks_checked: u64,
    /// Files checked.
    pub files_checked: u64,
    /// Damaged files.
    pub damaged: Vec<Damage>,
}

impl VerifyReport {
    fn from_json(v: &Value) -> VerifyReport {
        let damaged = as_array(
            v.get("damaged")
                .unwrap_or_else(|| panic!("verify report lacks `damaged`: {v}")),
            "verify damaged",
        )
        .iter()
        .map(|d| Damage {
            package: str_field(d, "package"),
            path: str_field(d, "path"),
            reason: str_field(d, "reason"),
        })
        .collect();
        VerifyReport {
            ok: bool_field(v, "ok"),
            chunks_checked: u64_field(v, "chunks_checked"),
            files_checked: u64_field(v, "files_checked"),
            damaged,
        }
    }
}

fn as_array<'a>(v: &'a Value, what: &str) -> &'a Vec<Value> {
    v.as_array()
        .unwrap_or_else(|| panic!("{what}: expected a JSON array, got {v}"))
}

fn field<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.get(key)
        .unwrap_or_else(|| panic!("JSON object lacks field `{key}`: {v}"))
}

fn str_field(v: &Value, key: &str) -> String {
    field(v, key)
        .as_str()
        .unwrap_or_else(|| panic!("field `{key}` is not a string: {v}"))
        .to_string()
}

fn opt_str_field(v: &Value, key: &str) -> Option<String> {
    match v.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => panic!("field `{key}` is not a string: {other} in {v}"),
    }
}

fn bool_field(v: &Value, key: &str) -> bool {
    field(v, key)
        .as_bool()
        .unwrap_or_else(|| panic!("field `{key}` is not a boolean: {v}"))
}

fn u64_field(v: &Value, key: &str) -> u64 {
    field(v, key)
        .as_u64()
        .unwrap_or_else(|| panic!("field `{key}` is not a non-negative integer: {v}"))
}

fn i64_field(v: &Value, key: &str) -> i64 {
    field(v, key)
        .as_i64()
        .unwrap_or_else(|| panic!("field `{key}` is not an integer: {v}"))
}
