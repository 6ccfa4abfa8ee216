//! The live switch: while a store is mounted, `nip switch` and `nip
//! rollback` change what the mount shows within one second, without a
//! remount, while parallel readers keep opening and reading files through
//! `App/Current`. Every read returns exactly one version's bytes, never a
//! mix and never an error; files opened under a version keep returning that
//! version's bytes across switches, and, as the daemon has served them
//! before, even after gc collected the version.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{ErrorKind, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nexus_integration_tests::fixtures::{Scratch, random_bytes, write_file};
use nexus_integration_tests::nexus::Mount;
use nexus_integration_tests::{Store, root_or_skip};

/// How long a switch may take to show in the mount.
const SHOW_WITHIN: Duration = Duration::from_secs(1);
/// Switches in the loop (half of them rollbacks).
const SWITCHES: usize = 20;

/// One version of the app: its big file and its script.
struct Version {
    name: &'static str,
    data: Vec<u8>,
    script: Vec<u8>,
}

impl Version {
    /// Writes the version's tree under `root` and returns it. The two
    /// versions' big files differ in every block and in size, so that any
    /// mix or truncation is seen.
    fn write(root: &Path, name: &'static str, len: usize) -> Version {
        let data = random_bytes(format!("live-switch-{name}").as_bytes(), len);
        let script = format!("#!/bin/sh\necho version {name}\n").into_bytes();
        write_file(&root.join("data/big.bin"), &data);
        write_file(&root.join("bin/tool"), &script);
        nexus_integration_tests::fixtures::chmod(&root.join("bin/tool"), 0o755);
        Version { name, data, script }
    }
}

/// Which version `got` is, or a description of what is wrong with it.
fn which<'a>(got: &[u8], versions: &'a [Version; 2]) -> Result<&'a Version, String> {
    if let Some(v) = versions.iter().find(|v| v.data == got) {
        return Ok(v);
    }
    let diverges = |v: &Version| {
        v.data
            .iter()
            .zip(got)
            .position(|(a, b)| a != b)
            .unwrap_or(v.data.len().min(got.len()))
    };
    Err(format!(
        "{} bytes matching neither version (version 1 differs from byte {}, version 2 from byte {})",
        got.len(),
        diverges(&versions[0]),
        diverges(&versions[1])
    ))
}

/// Drops the kernel's cached pages of `file`, so that the next reads are
/// served by the daemon.
fn drop_cached_pages(file: &File) {
    // SAFETY: an open descriptor; fadvise has no memory effects.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(
        rc,
        0,
        "posix_fadvise: {}",
        std::io::Error::from_raw_os_error(rc)
    );
}

/// Reads the whole of `file` from the start with `pread`.
fn read_whole(file: &File, len_hint: usize) -> std::io::Result<Vec<u8>> {
    let mut out = vec![0u8; len_hint + 4096];
    let mut at = 0;
    loop {
        if at == out.len() {
            out.resize(out.len() * 2, 0);
        }
        let n = file.read_at(&mut out[at..], at as u64)?;
        if n == 0 {
            out.truncate(at);
            return Ok(out);
        }
        at += n;
    }
}

/// What the readers saw.
#[derive(Default)]
struct Seen {
    /// Whole reads through `Current` that returned version 1, version 2.
    current: [AtomicU64; 2],
    /// Whole reads of `App/1` (always version 1).
    pinned: AtomicU64,
    /// Runs of `App/Current/bin/tool`.
    runs: AtomicU64,
}

/// Reader `id`: until `stop`, opens and reads the big file through
/// `Current` (dropping the kernel's pages every other time, so that the
/// daemon serves the reads too), through `App/1`, and runs the tool through
/// `Current`. Returns the first failure.
fn reader(
    id: usize,
    app: PathBuf,
    versions: Arc<[Version; 2]>,
    stop: Arc<AtomicBool>,
    seen: Arc<Seen>,
) -> Result<(), String> {
    let current = app.join("Current/data/big.bin");
    let pinned = app.join("1/data/big.bin");
    let tool = app.join("Current/bin/tool");
    let mut round = 0usize;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let file = File::open(&current).map_err(|e| format!("open {}: {e}", current.display()))?;
        if (round + id).is_multiple_of(2) {
            drop_cached_pages(&file);
        }
        let got = read_whole(&file, versions[1].data.len())
            .map_err(|e| format!("read {}: {e}", current.display()))?;
        let v = which(&got, &versions).map_err(|e| format!("{}: {e}", current.display()))?;
        let index = usize::from(v.name == "2");
        seen.current[index].fetch_add(1, Ordering::Relaxed);

        if round % 4 == id % 4 {
            let mut got = Vec::new();
            File::open(&pinned)
                .and_then(|mut f| f.read_to_end(&mut got))
                .map_err(|e| format!("{}: {e}", pinned.display()))?;
            if got != versions[0].data {
                return Err(format!(
                    "{}: {}",
                    pinned.display(),
                    match which(&got, &versions) {
                        Ok(v) => format!("version {}'s bytes", v.name),
                        Err(e) => e,
                    }
                ));
            }
            seen.pinned.fetch_add(1, Ordering::Relaxed);
        }
        if round % 8 == id {
            let out = Command::new(&tool)
                .output()
                .map_err(|e| format!("run {}: {e}", tool.display()))?;
            let said = String::from_utf8_lossy(&out.stdout).into_owned();
            if !out.status.success() || !["version 1\n", "version 2\n"].contains(&said.as_str()) {
                return Err(format!(
                    "{}: {} said {said:?}, stderr {:?}",
                    tool.display(),
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            seen.runs.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// Polls `condition` every 2 ms until it holds; returns how long that took,
/// or `None` past `limit`.
fn time_until(limit: Duration, mut condition: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if condition() {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        thread::sleep(Duration::from_millis(2));
    }
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Whether `path` resolves (stat, not following a final link).
fn exists(path: &Path) -> bool {
    match fs::symlink_metadata(path) {
        Ok(_) => true,
        Err(e) if e.kind() == ErrorKind::NotFound => false,
        Err(e) => panic!("stat {}: {e}", path.display()),
    }
}

#[test]
fn switches_show_within_a_second_and_readers_never_see_a_mix() {
    if !root_or_skip("switches_show_within_a_second_and_readers_never_see_a_mix") {
        return;
    }
    let scratch = Scratch::new("live-switch");
    let versions = Arc::new([
        Version::write(&scratch.join("v1"), "1", 1536 * 1024 + 11),
        Version::write(&scratch.join("v2"), "2", 2048 * 1024 + 5),
    ]);
    let store = Store::init();
    for v in versions.iter() {
        store.ok([
            OsString::from("add"),
            scratch.join(format!("v{}", v.name)).into_os_string(),
            "--name".into(),
            "app".into(),
            "--version".into(),
            v.name.into(),
        ]);
    }
    // Generation 1 holds version 1; generation 2 (live) both, with Current
    // at 2.
    let mount = Mount::start(store.path(), &scratch.join("mnt"), &[]);
    let app = mount.join("app");
    let current = app.join("Current");
    let second = app.join("2");
    assert_eq!(fs::read_link(&current).unwrap(), Path::new("2"));

    // Opened under version 2 (through Current) and version 1, and kept open
    // through every switch.
    let held = [
        File::open(app.join("1/data/big.bin")).unwrap(),
        File::open(current.join("data/big.bin")).unwrap(),
    ];

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Seen::default());
    let readers: Vec<_> = (0..3)
        .map(|id| {
            let (app, versions) = (app.clone(), versions.clone());
            let (stop, seen) = (stop.clone(), seen.clone());
            thread::spawn(move || reader(id, app, versions, stop, seen))
        })
        .collect();

    let (mut latencies, mut removals) = (Vec::new(), Vec::new());
    for step in 0..SWITCHES {
        // Alternately back to generation 1's content (version 2 gone,
        // Current at 1) and forward to generation 2's.
        let to_second = step % 2 == 1;
        if !to_second {
            // Make sure the kernel has the name cached: only a notification
            // can then make it disappear within the second.
            assert!(
                exists(&second),
                "step {step}: app/2 missing before the switch"
            );
        }
        let out = if to_second {
            store.ok(["switch", "2"])
        } else {
            store.ok(["rollback"])
        };
        let target = if to_second { "2" } else { "1" };
        let shown = time_until(SHOW_WITHIN, || {
            fs::read_link(&current).is_ok_and(|t| t == Path::new(target))
        });
        let Some(latency) = shown else {
            panic!(
                "step {step}: Current does not point at {target} within {SHOW_WITHIN:?} after `{}`\n{}",
                out.command_line(),
                mount.log()
            );
        };
        latencies.push(latency);
        // A removed name resolves (unlisted) for a short grace after the
        // switch; even so it is gone within the second.
        let Some(took) = time_until(SHOW_WITHIN, || exists(&second) == to_second) else {
            panic!(
                "step {step}: app/2 {} within {SHOW_WITHIN:?} of `{}`\n{}",
                if to_second {
                    "does not appear"
                } else {
                    "does not disappear"
                },
                out.command_line(),
                mount.log()
            );
        };
        if !to_second {
            removals.push(latency + took);
        }
        let expected: &[&str] = if to_second {
            &["1", "2", "Current"]
        } else {
            &["1", "Current"]
        };
        // The view moves before the kernel is told (the follow loop
        // refreshes, then notifies): the cached listing may lag the names
        // for a moment, within the same second.
        if time_until(SHOW_WITHIN, || listing(&app) == expected).is_none() {
            assert_eq!(listing(&app), expected, "step {step}");
        }

        // The files opened before the loop still read their own version,
        // from the daemon rather than the kernel's pages every other time.
        for (file, v) in held.iter().zip(versions.iter()) {
            if step % 2 == 0 {
                drop_cached_pages(file);
            }
            let at = (step * 97 * 1024) % (v.data.len() - 4096);
            let mut buf = vec![0u8; 4096];
            file.read_exact_at(&mut buf, at as u64)
                .unwrap_or_else(|e| panic!("step {step}: held version {} file: {e}", v.name));
            assert!(
                buf == v.data[at..at + 4096],
                "step {step}: the file held open under version {} changed at {at}",
                v.name
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    for (id, r) in readers.into_iter().enumerate() {
        if let Err(e) = r.join().expect("reader panicked") {
            panic!("reader {id}: {e}\n{}", mount.log());
        }
    }
    let counts = [
        seen.current[0].load(Ordering::Relaxed),
        seen.current[1].load(Ordering::Relaxed),
    ];
    let (pinned, runs) = (
        seen.pinned.load(Ordering::Relaxed),
        seen.runs.load(Ordering::Relaxed),
    );
    assert!(
        counts.iter().all(|&n| n > 0) && pinned > 0 && runs > 0,
        "the readers did not see both versions: {counts:?} through Current, {pinned} of app/1, {runs} runs"
    );
    latencies.sort();
    removals.sort();
    eprintln!(
        "{SWITCHES} switches: Current moved after {:?} (median), {:?} (max); app/2 stopped \
         resolving after {:?} (median), {:?} (max); readers: {counts:?} reads of versions 1/2 \
         through Current, {pinned} of app/1, {runs} runs of the tool",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1],
        removals[removals.len() / 2],
        removals[removals.len() - 1],
    );

    // Back to version 1 alone, then collect version 2 for good (no retained
    // generation holds it, no grace): the file held open under it, whose
    // bytes the daemon has served before, still reads, now only from what
    // the daemon holds (its inode row, its chunk layout, its open pack).
    store.ok(["rollback"]);
    assert!(
        time_until(SHOW_WITHIN, || !exists(&second)).is_some(),
        "app/2 does not disappear after the last rollback"
    );
    assert_eq!(fs::read_link(&current).unwrap(), Path::new("1"));
    store.ok(["gc", "--keep", "1", "--grace", "0"]);
    drop_cached_pages(&held[1]);
    let got = read_whole(&held[1], versions[1].data.len()).expect("read the held file after gc");
    assert!(
        got == versions[1].data,
        "after gc, the file held open under version 2 reads {}",
        match which(&got, &versions) {
            Ok(v) => format!("version {}", v.name),
            Err(e) => e,
        }
    );
    assert!(
        versions[0].script == fs::read(current.join("bin/tool")).unwrap(),
        "Current/bin/tool is not version 1's"
    );
    drop(held);
    mount.umount();
}

/// Adds the directory `dir` as NAME/VERSION.
fn add_dir(store: &Store, dir: &Path, name: &str, version: &str) {
    store.ok([
        OsString::from("add"),
        dir.as_os_str().to_owned(),
        "--name".into(),
        name.into(),
        "--version".into(),
        version.into(),
    ]);
}

/// The attack of issue 12 (H1): `nip remove foo`, `nip gc`, `nip add bar`
/// under a live mount made SQLite hand foo's catalog ids to bar, and the
/// daemon, which had read foo's file, served foo's bytes as bar's.
#[test]
fn a_package_added_after_gc_never_reads_as_the_collected_one() {
    if !root_or_skip("a_package_added_after_gc_never_reads_as_the_collected_one") {
        return;
    }
    let scratch = Scratch::new("gc-ids");
    let foo = b"FOO: private content of package foo.".to_vec();
    let bar = b"BAR: other package, attacker text!!!".to_vec();
    assert_eq!(foo.len(), bar.len(), "same size, as in the reproduction");
    write_file(&scratch.join("base/bin/base"), b"base\n");
    write_file(&scratch.join("foo/bin/f"), &foo);
    write_file(&scratch.join("bar/bin/f"), &bar);
    let store = Store::init();
    add_dir(&store, &scratch.join("base"), "base", "1");
    add_dir(&store, &scratch.join("foo"), "foo", "1");
    let mount = Mount::start(store.path(), &scratch.join("mnt"), &[]);
    assert_eq!(fs::read(mount.join("foo/1/bin/f")).unwrap(), foo);

    store.ok(["remove", "foo"]);
    store.ok(["gc", "--keep", "1"]);
    add_dir(&store, &scratch.join("bar"), "bar", "1");
    let path = mount.join("bar/1/bin/f");
    assert!(
        time_until(SHOW_WITHIN, || exists(&path)).is_some(),
        "bar/1 does not show"
    );
    let got = fs::read(&path).unwrap();
    assert!(
        got == bar,
        "the mount served {:?} for bar/1/bin/f",
        String::from_utf8_lossy(&got)
    );
    // Also from the daemon, not the kernel's pages.
    let file = File::open(&path).unwrap();
    drop_cached_pages(&file);
    assert_eq!(read_whole(&file, bar.len()).unwrap(), bar);
    assert_eq!(store.cat("bar/1", "bin/f").stdout, bar);
    drop(file);
    mount.umount();
}
