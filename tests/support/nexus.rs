//! Running the real `nexus` binary: mounting a store, finding the daemon,
//! and making sure no mount outlives its test.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::fixtures::Scratch;

/// Path of the `nexus` binary under test: next to the test executable's
/// directory, like [`crate::nip_bin`]; `NEXUS_BIN` overrides it.
pub fn nexus_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("NEXUS_BIN") {
            let p = PathBuf::from(p);
            assert!(p.is_file(), "NEXUS_BIN={} is not a file", p.display());
            return p;
        }
        let nip = crate::nip_bin();
        let nexus = nip.with_file_name("nexus");
        assert!(
            nexus.is_file(),
            "the nexus binary is missing at {}: run `cargo build --workspace` first",
            nexus.display()
        );
        nexus
    })
}

/// Runs `nexus --store STORE ARGS...` to completion with a clean environment.
pub fn nexus<I, S>(store: &Path, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    nexus_with_env(store, args, &[])
}

/// [`nexus`] with the variables `env` set (S3 credentials, say).
pub fn nexus_with_env<I, S>(store: &Path, args: I, env: &[(&str, &str)]) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(nexus_bin());
    cmd.envs(env.iter().copied());
    cmd.arg("--store")
        .arg(store)
        .args(args)
        .env_remove("NEXUS_STORE")
        .env_remove("NEXUS_KEYS")
        // Not the machine's /etc/nexus/nexus.kdl: an empty configuration.
        .env("NEXUS_CONFIG", "/dev/null")
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null());
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", nexus_bin().display()));
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("panicked at"),
        "nexus panicked: {cmd:?}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Describes a finished command for failure messages.
pub fn show(out: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// True when something is mounted exactly at `path` (canonical).
pub fn is_mounted(path: &Path) -> bool {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    let wanted = path.as_os_str().to_string_lossy().replace(' ', "\\040");
    info.lines()
        .any(|l| l.split(' ').nth(4) == Some(wanted.as_str()))
}

/// True while process `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// The request counts by kind of the nexus mount whose root is `root`
/// (its `user.nexus.requests` attribute).
pub fn request_counts(root: &Path) -> std::collections::BTreeMap<String, u64> {
    let raw = xattr::get(root, "user.nexus.requests")
        .unwrap_or_else(|e| panic!("reading the request counts of {}: {e}", root.display()))
        .unwrap_or_else(|| panic!("{} answers no request counts", root.display()));
    serde_json::from_slice(&raw).unwrap_or_else(|e| {
        panic!(
            "the request counts of {} are not a JSON object of numbers ({e}): {}",
            root.display(),
            String::from_utf8_lossy(&raw)
        )
    })
}

/// The request counts of the FUSE mount at `root` beneath the kernel view
/// (`nexus mount --kernel-metadata`), which answers none of its own: read
/// in a private mount namespace whose copy of the kernel view is detached
/// first (the FUSE mount below is the same, and counts the same).
pub fn covered_request_counts(root: &Path) -> std::collections::BTreeMap<String, u64> {
    let script = "import ctypes, os, sys\n\
                  p = sys.argv[1].encode()\n\
                  if ctypes.CDLL(None, use_errno=True).umount2(p, 2) != 0:\n\
                  \x20   sys.exit('umount2: ' + os.strerror(ctypes.get_errno()))\n\
                  sys.stdout.write(os.getxattr(p, 'user.nexus.requests').decode())\n";
    let out = std::process::Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "python3",
            "-c",
            script,
        ])
        .arg(root)
        .output()
        .expect("running unshare");
    assert!(
        out.status.success(),
        "reading the request counts beneath the kernel view on {}: {}",
        root.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "the request counts beneath {} are not a JSON object of numbers ({e}): {}",
            root.display(),
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The request counts of the mount at `root` once they stopped moving
/// (unchanged over 100 ms, for at most 5 s): a read the kernel sent ahead
/// at the end of one pass may reach the daemon after the pass returned,
/// and belongs to that pass.
pub fn settled_request_counts(root: &Path) -> std::collections::BTreeMap<String, u64> {
    let start = Instant::now();
    let mut last = request_counts(root);
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = request_counts(root);
        if now == last || start.elapsed() > Duration::from_secs(5) {
            return now;
        }
        last = now;
    }
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes.
pub fn wait_for(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    condition()
}

/// A daemon started by `nexus mount`. Dropping it detaches the mount and
/// kills the daemon if the test did not end them, so that a failing test
/// leaves nothing mounted.
pub struct Mount {
    store: PathBuf,
    point: PathBuf,
    pid: i32,
    log: PathBuf,
    _files: Scratch,
}

impl Mount {
    /// `nexus --store STORE mount POINT EXTRA...` as a daemon; fails the
    /// test unless it returns 0 with the mount in place and the daemon
    /// running.
    pub fn start(store: &Path, point: &Path, extra: &[&str]) -> Mount {
        Mount::start_with_env(store, point, extra, &[])
    }

    /// [`Mount::start`] with the variables `env` set for the daemon.
    pub fn start_with_env(
        store: &Path,
        point: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Mount {
        let files = Scratch::new("nexus-daemon");
        let (pid_file, log) = (files.join("pid"), files.join("log"));
        fs::create_dir_all(point).unwrap_or_else(|e| panic!("mkdir {}: {e}", point.display()));
        let point = fs::canonicalize(point).expect("canonical mount point");
        let mut args: Vec<&OsStr> = vec![
            OsStr::new("mount"),
            point.as_os_str(),
            OsStr::new("--pid-file"),
            pid_file.as_os_str(),
            OsStr::new("--log-file"),
            log.as_os_str(),
            OsStr::new("-v"),
        ];
        args.extend(extra.iter().map(OsStr::new));
        let out = nexus_with_env(store, &args, env);
        let log_text = fs::read_to_string(&log).unwrap_or_default();
        assert!(
            out.status.success(),
            "nexus mount failed: {}\n--- daemon log ---\n{log_text}",
            show(&out)
        );
        assert!(
            is_mounted(&point),
            "nexus mount returned 0 but nothing is mounted at {}",
            point.display()
        );
        let pid: i32 = fs::read_to_string(&pid_file)
            .unwrap_or_else(|e| panic!("the daemon wrote no pid file: {e}"))
            .trim()
            .parse()
            .expect("pid file holds a number");
        assert!(alive(pid), "the daemon {pid} is not running");
        Mount {
            store: store.to_path_buf(),
            point,
            pid,
            log,
            _files: files,
        }
    }

    /// The mount point.
    pub fn point(&self) -> &Path {
        &self.point
    }

    /// `POINT/rel`.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.point.join(rel)
    }

    /// The daemon's process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails the test unless the daemon has exited and the mount point is an
    /// ordinary, readable directory again within `timeout`.
    pub fn assert_gone(&self, timeout: Duration, context: &str) {
        assert!(
            wait_for(timeout, || !alive(self.pid)),
            "{context}: the daemon {} still runs after {timeout:?}\n{}",
            self.pid,
            self.log()
        );
        assert!(
            !is_mounted(&self.point),
            "{context}: {} is still mounted",
            self.point.display()
        );
        fs::read_dir(&self.point).unwrap_or_else(|e| {
            panic!(
                "{context}: {} is not readable after unmounting: {e}",
                self.point.display()
            )
        });
    }

    /// `nexus umount POINT`, which must succeed, then waits for the daemon
    /// to exit.
    pub fn umount(self) {
        let out = nexus(&self.store, [OsStr::new("umount"), self.point.as_os_str()]);
        assert!(out.status.success(), "nexus umount failed: {}", show(&out));
        self.assert_gone(Duration::from_secs(10), "after nexus umount");
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if is_mounted(&self.point) {
            let _ = Command::new("umount").arg("-l").arg(&self.point).status();
        }
        if alive(self.pid) {
            // SAFETY: plain kill(2) of the daemon this guard started.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        }
    }
}

/// Sends a vhost-user `GET_FEATURES` (request 1, version-1 flags, no
/// payload) over `socket`, a connection to a `nexus serve` backend, and
/// returns the feature bits of its reply, failing the test unless it is a
/// well-formed reply.
pub fn vhost_user_features(socket: &mut std::os::unix::net::UnixStream) -> u64 {
    use std::io::{Read, Write};
    let mut request = Vec::new();
    for word in [1u32, 1, 0] {
        request.extend(word.to_le_bytes());
    }
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("a read timeout");
    socket.write_all(&request).expect("sending GET_FEATURES");
    let mut reply = [0u8; 20];
    socket
        .read_exact(&mut reply)
        .expect("the reply to GET_FEATURES");
    let word = |i: usize| u32::from_le_bytes(reply[i * 4..i * 4 + 4].try_into().unwrap());
    assert_eq!(word(0), 1, "a reply to GET_FEATURES");
    assert_ne!(word(1) & 0x4, 0, "flagged as a reply");
    assert_eq!(word(2), 8, "a u64 payload");
    u64::from_le_bytes(reply[12..20].try_into().unwrap())
}
