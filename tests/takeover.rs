//! Replacing the mount daemon without unmounting (`nexus takeover`):
//! while readers loop over the files of real Debian packages, a program
//! runs from the mount again and again, a Python process keeps a file open
//! and re-reads it past the page cache, a shell sits inside the mount and
//! the Index is read, the daemon is replaced 20 times. No read fails, the
//! mount never leaves /proc/self/mountinfo, each new daemon owns the
//! runtime record and the pid file, and a file held open from a package
//! that was removed and collected in between still reads.
//!
//! Also: a successor that gives up halfway leaves the old daemon serving,
//! and a user other than the daemon's cannot take over.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nexus_integration_tests::debs::fetch_and_unpack;
use nexus_integration_tests::fixtures::{Scratch, random_bytes, write_file};
use nexus_integration_tests::nexus::{Mount, alive, is_mounted, nexus, show, wait_for};
use nexus_integration_tests::{Store, env_knob, root_or_skip};

/// The FUSE tests mount file systems: root only (as CI runs them).
/// Every regular file under `root`, by path relative to it, with content.
fn files_of(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                let rel = entry.path().strip_prefix(root).unwrap().to_path_buf();
                out.insert(rel, fs::read(entry.path()).unwrap());
            }
        }
    }
    out
}

/// What the background checkers saw.
#[derive(Default)]
struct Seen {
    reads: AtomicU64,
    runs: AtomicU64,
    index_reads: AtomicU64,
    mountinfo_checks: AtomicU64,
    failures: std::sync::Mutex<Vec<String>>,
}

impl Seen {
    fn fail(&self, what: String) {
        let mut failures = self.failures.lock().unwrap();
        if failures.len() < 20 {
            failures.push(what);
        }
    }
}

/// A process the test started, killed if the test ends early.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Detaches a mount the test did not take down (a failing test).
struct Detach(PathBuf);

impl Drop for Detach {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Kills the daemon serving at the end, whichever it is, should the test
/// fail before unmounting.
struct LatestDaemon(Arc<AtomicU64>);

impl Drop for LatestDaemon {
    fn drop(&mut self) {
        let pid = self.0.load(Ordering::Relaxed) as i32;
        if pid > 0 && alive(pid) {
            // SAFETY: plain kill(2) of a daemon this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// The Python program that holds `PATH` open and re-reads it until the
/// file `STOP` exists, dropping the page cache before each read so that
/// every read goes to the daemon; exits 1 at the first wrong read.
const HOLDER: &str = r#"
import hashlib, os, sys, time
path, stop, want = sys.argv[1], sys.argv[2], sys.argv[3]
fd = os.open(path, os.O_RDONLY)
n = 0
while not os.path.exists(stop):
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    data = os.pread(fd, 1 << 24, 0)
    if hashlib.blake2b(data).hexdigest() != want:
        print(f"read {n}: {len(data)} bytes, wrong content", flush=True)
        sys.exit(1)
    n += 1
    time.sleep(0.005)
print(n, flush=True)
"#;

fn blake2b_hex(data: &[u8]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg("import hashlib,sys; print(hashlib.blake2b(sys.stdin.buffer.read()).hexdigest())")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(data)?;
            c.wait_with_output()
        })
        .expect("python3 runs");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The runtime records' pids serving `target`, from `nexus status --json`.
fn serving_pids(store: &Path, target: &Path) -> Vec<i64> {
    let out = nexus(store, ["status", "--json"]);
    assert!(out.status.success(), "nexus status: {}", show(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    status["serving"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["target"] == target.to_str().unwrap())
        .map(|r| r["pid"].as_i64().unwrap())
        .collect()
}

/// The packages the runtime record of `pid` says the kernel holds.
fn recorded_packages(store: &Path, pid: i64) -> Vec<i64> {
    let text = fs::read_to_string(store.join(format!("run/{pid}.json"))).unwrap();
    let record: serde_json::Value = serde_json::from_str(&text).unwrap();
    record["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_i64().unwrap())
        .collect()
}

#[test]
fn the_daemon_is_replaced_twenty_times_under_running_programs() {
    if !root_or_skip("the_daemon_is_replaced_twenty_times") {
        return;
    }
    let takeovers = env_knob("NEXUS_TEST_TAKEOVERS", 20) as usize;
    let scratch = Scratch::new("takeover");
    let pkgs = fetch_and_unpack(&["hello", "jq", "libjq1", "libonig5"], &scratch.join("src"));
    let store = Store::init();
    let mut args = vec![OsString::from("add")];
    args.extend(pkgs.iter().map(|p| p.dir.clone().into_os_string()));
    store.ok(&args);
    // A package a program holds a file of, removed and collected while the
    // daemons change: 3 MiB, more than the page cache is allowed to keep
    // here (the holder drops it before every read).
    let old = random_bytes(b"takeover-held", 3 << 20);
    write_file(&scratch.join("tool/data/big.bin"), &old);
    store.add_dir(&scratch.join("tool"), "tool", "1");
    let index = scratch.join("index");
    fs::create_dir_all(&index).unwrap();
    let index = fs::canonicalize(index).unwrap();
    let _detach_index = Detach(index.clone());
    let mount = Mount::start(
        store.path(),
        &scratch.join("mnt"),
        &["--index", index.to_str().unwrap()],
    );
    let latest = Arc::new(AtomicU64::new(mount.pid() as u64));
    let _kill_latest = LatestDaemon(latest.clone());
    // Mount::start passes --pid-file: the daemon's command line names it.
    let cmdline = fs::read_to_string(format!("/proc/{}/cmdline", mount.pid())).unwrap();
    let words: Vec<&str> = cmdline.split('\0').collect();
    let pid_file = words
        .iter()
        .position(|w| *w == "--pid-file")
        .and_then(|at| words.get(at + 1))
        .map(PathBuf::from)
        .expect("the daemon's --pid-file");

    let mut expected: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    for pkg in &pkgs {
        for (rel, data) in files_of(&pkg.dir) {
            expected.push((mount.join(&pkg.name).join("Current").join(&rel), data));
        }
    }
    assert!(expected.len() > 20, "few files: {}", expected.len());
    let expected = Arc::new(expected);
    let hello = pkgs.iter().find(|p| p.name == "hello").unwrap();
    let hello_bin = mount.join("hello/Current/usr/bin/hello");

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Seen::default());
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    for reader in 0..3 {
        let (stop, seen, expected) = (stop.clone(), seen.clone(), expected.clone());
        threads.push(thread::spawn(move || {
            let mut i = reader * 7;
            while !stop.load(Ordering::Relaxed) {
                let (path, data) = &expected[i % expected.len()];
                match fs::read(path) {
                    Ok(got) if got == *data => {}
                    Ok(got) => seen.fail(format!(
                        "{}: {} bytes, not the {} packaged",
                        path.display(),
                        got.len(),
                        data.len()
                    )),
                    Err(e) => seen.fail(format!("{}: {e}", path.display())),
                }
                seen.reads.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    {
        // A program run from the mount, again and again.
        let (stop, seen, bin) = (stop.clone(), seen.clone(), hello_bin.clone());
        threads.push(thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match Command::new(&bin).stdin(Stdio::null()).output() {
                    Ok(out) if out.status.success() && out.stdout == b"Hello, world!\n" => {}
                    Ok(out) => seen.fail(format!("{}: {}", bin.display(), show(&out))),
                    Err(e) => seen.fail(format!("running {}: {e}", bin.display())),
                }
                seen.runs.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    {
        // The Index: a listing, and a link followed into the mount.
        let (stop, seen, index) = (stop.clone(), seen.clone(), index.clone());
        let manual = fs::read(hello.dir.join("usr/share/man/man1/hello.1.gz")).unwrap();
        threads.push(thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match fs::read_dir(index.join("bin")).and_then(|l| l.collect::<Result<Vec<_>, _>>())
                {
                    Ok(names) if names.iter().any(|n| n.file_name() == "hello") => {}
                    Ok(_) => seen.fail("index/bin does not list hello".into()),
                    Err(e) => seen.fail(format!("listing index/bin: {e}")),
                }
                match fs::read(index.join("share/man/man1/hello.1.gz")) {
                    Ok(got) if got == manual => {}
                    Ok(_) => seen.fail("index/share/man/man1/hello.1.gz: wrong bytes".into()),
                    Err(e) => seen.fail(format!("index/share/man/man1/hello.1.gz: {e}")),
                }
                seen.index_reads.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    {
        // The mounts never leave the mount table.
        let (stop, seen) = (stop.clone(), seen.clone());
        let points = [mount.point().to_path_buf(), index.clone()];
        threads.push(thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for point in &points {
                    if !is_mounted(point) {
                        seen.fail(format!("{} left /proc/self/mountinfo", point.display()));
                    }
                }
                seen.mountinfo_checks.fetch_add(1, Ordering::Relaxed);
                thread::sleep(Duration::from_millis(1));
            }
        }));
    }
    // A file held open by a program, re-read from the daemon every 5 ms.
    let stop_file = scratch.join("stop-holder");
    let holder = Killed(
        Command::new("python3")
            .arg("-c")
            .arg(HOLDER)
            .arg(mount.join("tool/1/data/big.bin"))
            .arg(&stop_file)
            .arg(blake2b_hex(&old))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 runs"),
    );
    // A shell-like process whose working directory is in the mount, and
    // tail -f on a file of it.
    let inside = Killed(
        Command::new("sleep")
            .arg("600")
            .current_dir(mount.join("hello/Current/usr/share/doc"))
            .spawn()
            .unwrap(),
    );
    let tail = Killed(
        Command::new("tail")
            .arg("-f")
            .arg(mount.join("hello/Current/usr/share/doc/hello/copyright"))
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    thread::sleep(Duration::from_millis(300));

    let mut previous = mount.pid();
    let mut took = Vec::new();
    for round in 1..=takeovers {
        if round == takeovers / 2 {
            // The held package leaves every retained generation and gc
            // runs: the new daemons must keep serving it (and keep it).
            store.ok(["remove", "tool"]);
            store.ok(["gc", "--keep", "1", "--grace", "0"]);
        }
        let started = Instant::now();
        let out = nexus(
            store.path(),
            [
                OsString::from("takeover"),
                mount.point().as_os_str().to_owned(),
                "--json".into(),
            ],
        );
        took.push(started.elapsed());
        assert!(
            out.status.success(),
            "round {round}: nexus takeover: {}\n{}",
            show(&out),
            mount.log()
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let pid = report["pid"].as_i64().unwrap() as i32;
        latest.store(pid as u64, Ordering::Relaxed);
        assert_ne!(pid, previous, "round {round}: the same daemon");
        assert!(
            alive(pid),
            "round {round}: the new daemon {pid} is not running"
        );
        assert!(
            wait_for(Duration::from_secs(10), || !alive(previous)),
            "round {round}: the old daemon {previous} still runs\n{}",
            mount.log()
        );
        assert_eq!(
            serving_pids(store.path(), mount.point()),
            [i64::from(pid)],
            "round {round}: the runtime record does not follow the new daemon"
        );
        assert_eq!(
            fs::read_to_string(&pid_file).unwrap().trim(),
            pid.to_string(),
            "round {round}: the pid file"
        );
        if round >= takeovers / 2 {
            assert!(
                !recorded_packages(store.path(), i64::from(pid)).is_empty(),
                "round {round}: the record forgot the package held open"
            );
        }
        previous = pid;
        thread::sleep(Duration::from_millis(150));
    }
    fs::write(&stop_file, b"").unwrap();
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().expect("a checker panicked");
    }
    // After the last takeover, the mount still follows the live generation.
    store.ok(["remove", "jq"]);
    assert!(
        wait_for(Duration::from_secs(2), || !mount.join("jq").exists()),
        "the last daemon does not follow nip remove"
    );
    let mut holder = holder;
    let status = holder.0.wait().unwrap();
    let mut said = String::new();
    holder
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut said)
        .unwrap();
    let mut complained = String::new();
    holder
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut complained)
        .unwrap();
    assert!(
        status.success(),
        "the program holding a file open failed: {said}{complained}"
    );
    let failures = seen.failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "failures:\n{}\n{}",
        failures.join("\n"),
        mount.log()
    );
    let cwd = fs::read_link(format!("/proc/{}/cwd", inside.0.id())).unwrap();
    assert!(
        fs::read_dir(format!("/proc/{}/cwd", inside.0.id())).is_ok(),
        "the working directory {} in the mount is gone",
        cwd.display()
    );
    let mut tail = tail;
    assert!(tail.0.try_wait().unwrap().is_none(), "tail -f ended");
    took.sort();
    eprintln!(
        "{takeovers} takeovers: {:?} median, {:?} max per `nexus takeover`; meanwhile {} reads, \
         {} runs of hello, {} index reads, {} re-reads of the held file, {} mountinfo checks, \
         no failure",
        took[took.len() / 2],
        took[took.len() - 1],
        seen.reads.load(Ordering::Relaxed),
        seen.runs.load(Ordering::Relaxed),
        seen.index_reads.load(Ordering::Relaxed),
        said.trim(),
        seen.mountinfo_checks.load(Ordering::Relaxed),
    );
    drop(inside);
    drop(tail);
    let out = nexus(
        store.path(),
        [OsString::from("umount"), index.into_os_string()],
    );
    assert!(out.status.success(), "{}", show(&out));
    mount.umount();
    assert!(
        wait_for(Duration::from_secs(10), || !alive(previous)),
        "the last daemon did not end with its mount"
    );
}

/// Speaks the takeover protocol (FORMAT.md) as a successor that dies after
/// receiving the state, and as one of another user.
#[test]
fn a_failed_or_foreign_successor_leaves_the_daemon_serving() {
    if !root_or_skip("a_failed_or_foreign_successor") {
        return;
    }
    let scratch = Scratch::new("takeover-fail");
    write_file(&scratch.join("a/bin/a"), b"a\n");
    write_file(&scratch.join("b/bin/b"), b"b\n");
    let store = Store::init();
    store.add_dir(&scratch.join("a"), "a", "1");
    let mount = Mount::start(store.path(), &scratch.join("mnt"), &[]);
    assert_eq!(fs::read(mount.join("a/1/bin/a")).unwrap(), b"a\n");
    let run = store.path().join("run");
    let socket = fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "sock"))
        .expect("a takeover socket in STORE/run");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        fs::metadata(&run).unwrap().permissions().mode() & 0o777,
        0o700
    );

    let frame = |value: serde_json::Value| {
        let body = serde_json::to_vec(&value).unwrap();
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend(body);
        out
    };
    let read_frame = |stream: &mut UnixStream| -> serde_json::Value {
        let mut len = [0u8; 4];
        stream.read_exact(&mut len).unwrap();
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        stream.read_exact(&mut body).unwrap();
        serde_json::from_slice(&body).unwrap()
    };
    // A package the kernel has not looked into yet (its App directory is
    // looked up now: that changes nothing a takeover hands over).
    store.add_dir(&scratch.join("b"), "b", "1");
    assert!(wait_for(Duration::from_secs(2), || mount
        .join("b")
        .exists()));
    let mut stream = UnixStream::connect(&socket).unwrap();
    stream
        .write_all(&frame(serde_json::json!({
            "format": "nexus-takeover-v1", "type": "hello", "pid": std::process::id(),
            "version": "test"
        })))
        .unwrap();
    let offer = read_frame(&mut stream);
    assert_eq!(offer["type"], "offer", "{offer}");
    assert_eq!(offer["mountpoint"], mount.point().to_str().unwrap());
    assert_eq!(offer["pid"], mount.pid());
    stream
        .write_all(&frame(
            serde_json::json!({"format": "nexus-takeover-v1", "type": "ready"}),
        ))
        .unwrap();
    let state = read_frame(&mut stream);
    assert_eq!(state["type"], "state", "{state}");
    assert_eq!(state["fds"], serde_json::json!(["fuse"]));
    // While the daemon waits for a commit, package inodes cannot be looked
    // up (the lookup counts are handed over): a lookup waits.
    let waiting = {
        let path = mount.join("b/1/bin/b");
        thread::spawn(move || fs::read(path))
    };
    thread::sleep(Duration::from_millis(500));
    assert!(
        !waiting.is_finished(),
        "a lookup was answered while the state was handed over"
    );
    // The successor dies without committing.
    drop(stream);
    let read = waiting.join().unwrap();
    assert_eq!(
        read.unwrap(),
        b"b\n",
        "the held-back lookup was not answered"
    );
    assert!(alive(mount.pid()), "the daemon exited\n{}", mount.log());
    assert!(
        mount.log().contains("did not complete"),
        "the daemon did not log the failed takeover:\n{}",
        mount.log()
    );

    // Another user cannot even reach the socket, let alone be answered.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(nexus_integration_tests::nexus_bin())
        .arg("--store")
        .arg(store.path())
        .arg("takeover")
        .arg(mount.point())
        .arg("--foreground")
        .env("NEXUS_CONFIG", "/dev/null")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "nobody took over: {}", show(&out));
    assert!(alive(mount.pid()));
    assert_eq!(fs::read(mount.join("a/1/bin/a")).unwrap(), b"a\n");
    mount.umount();
}

/// A mount of an image is served from a scratch store of its daemon's own:
/// it refuses to hand over, and says why; it serves on.
#[test]
fn an_image_mount_refuses_a_takeover_saying_why() {
    if !root_or_skip("an_image_mount_refuses_a_takeover") {
        return;
    }
    let scratch = Scratch::new("takeover-image");
    write_file(&scratch.join("a/bin/a"), b"a\n");
    let store = Store::init();
    store.add_dir(&scratch.join("a"), "a", "1");
    let image = scratch.join("system.img");
    for args in [
        vec![OsString::from("key"), "generate".into(), "admin".into()],
        vec![
            "snapshot".into(),
            "--key".into(),
            "admin".into(),
            "-o".into(),
            image.clone().into_os_string(),
        ],
    ] {
        let out = nexus(store.path(), &args);
        assert!(out.status.success(), "{}", show(&out));
    }
    let mount = Mount::start(
        store.path(),
        &scratch.join("mnt"),
        &["--image", image.to_str().unwrap()],
    );
    let out = nexus(
        store.path(),
        [
            OsString::from("takeover"),
            mount.point().as_os_str().to_owned(),
        ],
    );
    assert!(!out.status.success(), "an image mount was taken over");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("serves the image"), "{}", show(&out));
    assert!(alive(mount.pid()));
    assert_eq!(fs::read(mount.join("a/1/bin/a")).unwrap(), b"a\n");
    mount.umount();
}

/// An upgrade of `nexus` whose catalog schema is newer than the running
/// daemon's: `nip` refuses to upgrade the catalog under that daemon (its
/// new catalog connections would fail), naming it and `nexus takeover`,
/// and changes nothing; the takeover by the new build upgrades the catalog
/// as it replaces the daemon, and `nip` works again.
///
/// The older build is played by this one: the catalog is put back one
/// schema version (the last step added `packages.restricted_to`; it is
/// dropped) and
/// the daemon's runtime record loses the schema field, as a build from
/// before the field writes it.
#[test]
fn an_upgrade_under_an_older_daemon_waits_for_its_takeover() {
    if !root_or_skip("an_upgrade_under_an_older_daemon") {
        return;
    }
    let scratch = Scratch::new("takeover-upgrade");
    write_file(&scratch.join("a/bin/a"), b"a\n");
    write_file(&scratch.join("b/bin/b"), b"b\n");
    let store = Store::init();
    store.add_dir(&scratch.join("a"), "a", "1");
    let mount = Mount::start(store.path(), &scratch.join("mnt"), &[]);
    let _detach = Detach(mount.point().to_path_buf());
    let latest = Arc::new(AtomicU64::new(mount.pid() as u64));
    let _kill = LatestDaemon(latest.clone());
    assert_eq!(fs::read(mount.join("a/1/bin/a")).unwrap(), b"a\n");

    let catalog = rusqlite::Connection::open(store.path().join("catalog.db")).unwrap();
    let version = || -> i64 {
        catalog
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap()
    };
    let schema = version();
    // Wait for the record to name package `a` (the daemon rewrites it when
    // the kernel first holds a package's files), so it is not rewritten
    // under the test.
    let record_path = store.path().join(format!("run/{}.json", mount.pid()));
    let read_record = || -> serde_json::Value {
        serde_json::from_slice(&fs::read(&record_path).unwrap()).unwrap()
    };
    assert!(wait_for(Duration::from_secs(5), || {
        !read_record()["packages"].as_array().unwrap().is_empty()
    }));
    let mut record = read_record();
    assert_eq!(record["schema"], schema, "the record names its schema");
    record.as_object_mut().unwrap().remove("schema");
    fs::write(&record_path, serde_json::to_vec(&record).unwrap()).unwrap();
    catalog
        .execute_batch(&format!(
            "ALTER TABLE packages DROP COLUMN restricted_to;
             DELETE FROM meta WHERE key = 'oldest_reader';
             PRAGMA user_version = {};",
            schema - 1
        ))
        .unwrap();

    let refused = store.run([
        OsString::from("add"),
        scratch.join("b").into_os_string(),
        "--name".into(),
        "b".into(),
        "--version".into(),
        "1".into(),
    ]);
    assert_eq!(refused.code(), Some(1), "{}", refused.command_line());
    let said = refused.stderr.clone();
    for words in [
        "would leave 1 running reader",
        &format!("mount {}", mount.point().display()),
        &format!("pid {}", mount.pid()),
        "nexus takeover",
    ] {
        assert!(said.contains(words), "{words:?} not said:\n{said}");
    }
    assert_eq!(version(), schema - 1, "the catalog was upgraded anyway");
    assert!(alive(mount.pid()));
    assert_eq!(fs::read(mount.join("a/1/bin/a")).unwrap(), b"a\n");

    let out = nexus(
        store.path(),
        [OsString::from("takeover"), mount.point().into()],
    );
    assert!(out.status.success(), "{}", show(&out));
    let pids = serving_pids(store.path(), mount.point());
    assert_eq!(pids.len(), 1, "{pids:?}");
    assert_ne!(pids[0], i64::from(mount.pid()));
    latest.store(pids[0] as u64, Ordering::Relaxed);
    assert_eq!(
        version(),
        schema,
        "the takeover did not upgrade the catalog"
    );

    store.add_dir(&scratch.join("b"), "b", "1");
    assert!(wait_for(Duration::from_secs(5), || fs::read(
        mount.join("b/1/bin/b")
    )
    .is_ok_and(|b| b == b"b\n")));
    assert_eq!(fs::read(mount.join("a/1/bin/a")).unwrap(), b"a\n");

    let out = nexus(
        store.path(),
        [OsString::from("umount"), mount.point().into()],
    );
    assert!(out.status.success(), "{}", show(&out));
    assert!(wait_for(Duration::from_secs(10), || !alive(pids[0] as i32)));
}

/// The daemon on the takeover socket is a confined process (the sandbox
/// user, no capability but two): should a request handling bug give one
/// code execution in it, the offer it makes is an attacker's. The
/// successor runs as root, so nothing in the offer may choose what root
/// writes or serves: not the log file (root appended to any file, the
/// offer's version string included, and the new daemon's Landlock rules
/// granted appending under the log's directory), not the store (root
/// served a store of the attacker's with setuid honoured), not the Index
/// (its keeper unmounts it). Here the test answers on the mount's
/// takeover socket as such a daemon would, and `nexus takeover` must write
/// nothing, and refuse another store or Index before it says it is ready.
#[test]
fn a_hostile_daemon_on_the_takeover_socket_chooses_nothing_root_writes() {
    if !root_or_skip("a_hostile_daemon_on_the_takeover_socket") {
        return;
    }
    let scratch = Scratch::new("takeover-hostile");
    write_file(&scratch.join("a/bin/a"), b"a\n");
    let store = Store::init();
    store.add_dir(&scratch.join("a"), "a", "1");
    let other = Store::init();
    other.add_dir(&scratch.join("a"), "evil", "1");
    let mount = Mount::start(store.path(), &scratch.join("mnt"), &[]);
    let socket = fs::read_dir(store.path().join("run"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "sock"))
        .expect("a takeover socket in STORE/run");
    // The compromised daemon answers on the socket (it may bind and replace
    // files in STORE/run; its own socket would do as well).
    fs::remove_file(&socket).unwrap();
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();

    let victim = scratch.join("etc/victim");
    write_file(&victim, b"precious\n");
    let frame = |value: serde_json::Value| {
        let body = serde_json::to_vec(&value).unwrap();
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend(body);
        out
    };
    let read_frame = |stream: &mut UnixStream| -> Option<serde_json::Value> {
        let mut len = [0u8; 4];
        stream.read_exact(&mut len).ok()?;
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        stream.read_exact(&mut body).ok()?;
        serde_json::from_slice(&body).ok()
    };
    let offer = |store: &Path, log: Option<&Path>, index: Option<&Path>| {
        serde_json::json!({
            "format": "nexus-takeover-v1", "type": "offer",
            "pid": std::process::id(), "version": "0.1.0\nroot# injected line",
            "store": store, "mountpoint": mount.point(), "index": index,
            "fixed_generation": null, "shown_generation": null,
            "allow_other": true, "suid": true, "threads": 2, "cache_bytes": 1 << 20,
            "pid_file": null, "log_file": log,
        })
    };
    // A log file the old daemon does not hold is left out (the successor
    // logs to stderr); another store or an Index that is not one is refused.
    let cases = [
        (
            "a log file",
            offer(store.path(), Some(&victim), None),
            false,
        ),
        ("another store", offer(other.path(), None, None), true),
        (
            "an Index that is not one",
            offer(store.path(), None, Some(&scratch.join("etc"))),
            true,
        ),
    ];
    for (what, offer, refused) in cases {
        let giver = {
            let listener = listener.try_clone().unwrap();
            let hello = frame(offer);
            thread::spawn(move || {
                let (mut stream, _) = listener.accept().unwrap();
                let first = read_frame(&mut stream);
                assert_eq!(first.unwrap()["type"], "hello");
                stream.write_all(&hello).unwrap();
                // What the successor says next, if anything.
                read_frame(&mut stream)
            })
        };
        let out = nexus(
            store.path(),
            [
                OsString::from("takeover"),
                mount.point().into(),
                "--foreground".into(),
            ],
        );
        let answer = giver.join().unwrap();
        assert!(
            !out.status.success(),
            "{what}: the takeover succeeded: {}",
            show(&out)
        );
        assert_eq!(
            String::from_utf8_lossy(&fs::read(&victim).unwrap()),
            "precious\n",
            "{what}: root wrote to the file the offer named"
        );
        assert!(
            !refused || answer.is_none(),
            "{what}: the successor went on with a hostile offer: {answer:?}\n{}",
            show(&out)
        );
    }
    assert!(alive(mount.pid()));
    assert_eq!(fs::read(mount.join("a/1/bin/a")).unwrap(), b"a\n");
    drop(listener);
    mount.umount();
}

/// A successor that says it is ready and then stops reading (stopped with
/// Ctrl-Z, stuck): the daemon holds back every lookup while it sends the
/// state, and the successor has `QUICK` (10 s) to commit. The state of
/// a mount whose kernel holds a few thousand inodes is larger than a unix
/// socket's buffer, so the daemon blocked in sending it, for as long as
/// the successor did not read: every lookup on the mount hung with it.
#[test]
fn a_successor_that_stops_reading_the_state_does_not_hang_the_mount() {
    if !root_or_skip("a_successor_that_stops_reading_the_state") {
        return;
    }
    let scratch = Scratch::new("takeover-stalled");
    // Long names: each held inode takes its name, hex-encoded, in the state.
    for i in 0..4000 {
        write_file(
            &scratch.join(format!("many/share/{i:04}-{}", "n".repeat(100))),
            b"x",
        );
    }
    write_file(&scratch.join("b/bin/b"), b"b\n");
    let store = Store::init();
    store.add_dir(&scratch.join("many"), "many", "1");
    let mount = Mount::start(store.path(), &scratch.join("mnt"), &[]);
    // The kernel looks up (and holds) every file.
    let mut held = 0;
    for entry in fs::read_dir(mount.join("many/1/share")).unwrap() {
        assert_eq!(fs::metadata(entry.unwrap().path()).unwrap().len(), 1);
        held += 1;
    }
    assert_eq!(held, 4000);
    store.add_dir(&scratch.join("b"), "b", "1");
    assert!(wait_for(Duration::from_secs(2), || mount
        .join("b")
        .exists()));

    let socket = fs::read_dir(store.path().join("run"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "sock"))
        .expect("a takeover socket in STORE/run");
    let frame = |value: serde_json::Value| {
        let body = serde_json::to_vec(&value).unwrap();
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend(body);
        out
    };
    let mut stream = UnixStream::connect(&socket).unwrap();
    stream
        .write_all(&frame(serde_json::json!({
            "format": "nexus-takeover-v1", "type": "hello", "pid": std::process::id(),
            "version": "test"
        })))
        .unwrap();
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).unwrap();
    let mut offer = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut offer).unwrap();
    stream
        .write_all(&frame(
            serde_json::json!({"format": "nexus-takeover-v1", "type": "ready"}),
        ))
        .unwrap();
    // ... and reads nothing more. A lookup waits, but not for ever.
    let started = Instant::now();
    let waiting = {
        let path = mount.join("b/1/bin/b");
        thread::spawn(move || fs::read(path))
    };
    let answered = wait_for(Duration::from_secs(20), || waiting.is_finished());
    let waited = started.elapsed();
    drop(stream);
    assert!(
        answered,
        "a lookup still waited {waited:?} after the successor stopped reading\n{}",
        mount.log()
    );
    assert_eq!(waiting.join().unwrap().unwrap(), b"b\n");
    assert!(alive(mount.pid()));
    mount.umount();
}
