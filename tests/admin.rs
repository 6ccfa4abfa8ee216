//! What an admin reasons about, through the real binaries: gc that never
//! takes what a running mount serves or a program holds open, pins that
//! survive `nip gc --keep 1`, `--older-than` as Nix's
//! `--delete-older-than`, `nip diff` / `history` / `current`, and `nexus
//! status` with real mounts and a virtio-fs daemon running.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nexus_integration_tests::fixtures::{Scratch, random_bytes, write_file};
use nexus_integration_tests::nexus::{nexus, show, wait_for};
use nexus_integration_tests::nip::EXIT_USAGE;
use nexus_integration_tests::vm::Server;
use nexus_integration_tests::{Mount, Store, deb_field, fetch_debs, root_or_skip, unpack_deb};
use serde_json::Value;

/// `nexus --store STORE ARGS... --json`, which must succeed, as JSON.
fn nexus_json(store: &Path, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = nexus(store, &all);
    assert!(out.status.success(), "nexus {all:?}: {}", show(&out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("nexus {all:?} printed no JSON ({e}): {}", show(&out)))
}

/// `nip gc --keep N --grace 0 --json` (plus `extra`), which must succeed.
fn gc_now(store: &Store, keep: &str, extra: &[&str]) -> Value {
    let mut args = vec!["gc", "--keep", keep, "--grace", "0"];
    args.extend_from_slice(extra);
    store.json(args)
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_i64().unwrap_or_else(|| panic!("not a number: {x}")))
        .collect()
}

fn history_ids(store: &Store) -> Vec<i64> {
    store.history().iter().map(|g| g.id).collect()
}

/// Drops the kernel's cached pages of `file`: the next read goes to the
/// daemon.
fn drop_cached_pages(file: &File) {
    // SAFETY: an open descriptor; fadvise has no memory effects.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise failed");
}

/// A package tree of `count` incompressible files under `root`, in a few
/// directories; returns (relative path, content) of each.
fn write_files(root: &Path, label: &str, count: usize, len: usize) -> Vec<(String, Vec<u8>)> {
    (0..count)
        .map(|i| {
            let rel = format!("d{}/f{i}", i % 4);
            let data = random_bytes(format!("{label}-{i}").as_bytes(), len);
            write_file(&root.join(&rel), &data);
            (rel, data)
        })
        .collect()
}

/// A small package `App/Version` under `src`, for churn.
fn small_package(src: &Path, app: &str, version: &str) -> PathBuf {
    let dir = src.join(app).join(version);
    write_file(
        &dir.join("data"),
        &random_bytes(format!("{app}-{version}").as_bytes(), 50_000),
    );
    dir
}

/// gc runs in a loop, with generations coming and going and the pack that
/// holds the files rewritten under the mount, while `nexus mount
/// --generation 2` reads generation 2's files, each first looked up after
/// gc had already run: no read fails and every byte is right. Without
/// runtime roots, the first gc collects generation 2 (`--keep 1`, no grace)
/// and the first cold lookup fails.
#[test]
fn gc_in_a_loop_never_takes_what_a_fixed_generation_mount_reads() {
    if !root_or_skip("gc_in_a_loop_never_takes_what_a_fixed_generation_mount_reads") {
        return;
    }
    let scratch = Scratch::new("admin-gc-mount");
    let store = Store::init();
    let src = scratch.join("src");
    let files = write_files(&src.join("old/1"), "old", 48, 96 * 1024);
    write_file(&src.join("junk/1/big"), &random_bytes(b"junk", 8 << 20));
    // One transaction: old's and junk's chunks share a pack, which gc
    // rewrites once junk is gone.
    let (old, junk) = (src.join("old/1"), src.join("junk/1"));
    store.ok([OsStr::new("add"), old.as_os_str(), junk.as_os_str()]); // generation 1
    store.ok(["remove", "junk"]); // 2: old alone
    store.ok(["remove", "old"]); // 3
    store.ok([
        OsStr::new("add"),
        small_package(&src, "churn", "0").as_os_str(),
    ]); // 4

    let mount = Mount::start(
        store.path(),
        &scratch.join("mnt"),
        &["--generation", "2", "--cache-mib", "2"],
    );
    let first = gc_now(&store, "1", &[]);
    assert_eq!(ids(&first["kept_in_use"]), vec![2], "{first}");
    assert_eq!(first["generations_deleted"], 2, "{first}");
    assert!(
        first["packs_rewritten"].as_u64() >= Some(1),
        "junk's space was not reclaimed by rewriting the shared pack: {first}"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let reader = {
        let (stop, reads) = (stop.clone(), reads.clone());
        let root = mount.join("old/1");
        let files = files.clone();
        thread::spawn(move || -> Vec<String> {
            let mut failures = Vec::new();
            let mut pass = 0;
            while pass < 2 || !stop.load(Ordering::Relaxed) {
                for (rel, want) in &files {
                    let got = File::open(root.join(rel)).and_then(|f| {
                        drop_cached_pages(&f);
                        let mut got = Vec::with_capacity(want.len());
                        (&f).read_to_end(&mut got)?;
                        Ok(got)
                    });
                    match got {
                        Ok(got) if got == *want => {}
                        Ok(got) => failures.push(format!("{rel}: {} wrong bytes", got.len())),
                        Err(e) => failures.push(format!("{rel}: {e}")),
                    }
                    reads.fetch_add(1, Ordering::Relaxed);
                }
                pass += 1;
            }
            failures
        })
    };
    for round in 1..=8 {
        let app = small_package(&src, "churn", &round.to_string());
        store.ok([OsStr::new("add"), app.as_os_str()]);
        store.ok(["remove", &format!("churn/{}", round - 1)]);
        let report = gc_now(&store, "1", &[]);
        assert_eq!(
            ids(&report["kept_in_use"]),
            vec![2],
            "round {round}: {report}"
        );
        thread::sleep(Duration::from_millis(150));
    }
    stop.store(true, Ordering::Relaxed);
    let failures = reader.join().expect("the reader panicked");
    let reads = reads.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} of {reads} reads of generation 2 failed while gc ran, e.g. {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        mount.log()
    );
    assert!(reads >= 2 * files.len() as u64, "only {reads} reads");
    store.assert_verify_clean("after gc under the mount");

    // Once the mount is gone, nothing keeps generation 2.
    mount.umount();
    let last = gc_now(&store, "1", &[]);
    assert!(ids(&last["kept_in_use"]).is_empty(), "{last}");
    assert!(!history_ids(&store).contains(&2));
    assert!(store.listed("old", "1").is_none());
    let gone = store.fails_with(&[1], ["list", "--generation", "2"]);
    assert!(gone.stderr.contains("does not exist"), "{gone}");
}

/// A pinned generation survives `nip gc --keep 1` (even with no grace),
/// with every byte of its packages; unpinned, the next gc takes it.
#[test]
fn a_pinned_generation_survives_gc_keep_one() {
    let scratch = Scratch::new("admin-pin");
    let store = Store::init();
    let deb = fetch_debs(&["hello"]).remove(0);
    let version = deb_field(&deb, "Version");
    let version = version.split_once(':').map_or(version.as_str(), |(_, v)| v);
    store.ok([OsStr::new("add"), deb.as_os_str()]); // 1
    let tool = small_package(&scratch.join("src"), "tool", "1");
    store.ok([OsStr::new("add"), tool.as_os_str()]); // 2
    store.ok(["remove", "hello"]); // 3

    let pinned = store.json(["pin", "1"]);
    assert_eq!(pinned["changed"], true, "{pinned}");
    assert_eq!(store.json(["pin", "1"])["changed"], false);
    let missing = store.fails_with(&[1], ["pin", "99"]);
    assert!(
        missing.stderr.contains("generation 99 does not exist"),
        "{missing}"
    );
    let pins = store.json(["pin"]);
    assert_eq!(pins[0]["generation"], 1, "{pins}");

    let report = gc_now(&store, "1", &[]);
    assert_eq!(ids(&report["kept_pinned"]), vec![1], "{report}");
    assert_eq!(report["generations_deleted"], 1, "{report}");
    assert_eq!(history_ids(&store), vec![1, 3]);
    let listed = store.json(["list", "--generation", "1"]);
    assert_eq!(listed[0]["name"], "hello", "{listed}");

    // Back to the pinned state: hello's files are all there.
    store.ok(["switch", "1"]);
    let unpacked = scratch.join("unpacked");
    unpack_deb(&deb, &unpacked);
    let spec = format!("hello/{version}");
    let got = store.ok(["cat", &spec, "bin/hello"]).stdout;
    assert!(
        got == fs::read(unpacked.join("usr/bin/hello")).unwrap(),
        "hello's program differs after gc"
    );
    store.assert_verify_clean("after gc with a pin");

    assert_eq!(store.json(["unpin", "1"])["changed"], true);
    store.ok(["remove", "hello"]);
    let report = gc_now(&store, "1", &[]);
    assert!(ids(&report["kept_pinned"]).is_empty(), "{report}");
    assert!(!history_ids(&store).contains(&1));
    assert!(store.json(["pin"]).as_array().unwrap().is_empty());
}

/// `--older-than` keeps what was live within the age, as Nix does
/// (including the generation replaced after the cutoff), and combines
/// with `--keep` so that either keeps a generation.
#[test]
fn older_than_keeps_what_was_live_within_the_age() {
    let scratch = Scratch::new("admin-older");
    let store = Store::init();
    for app in ["a", "b", "c", "d", "e"] {
        let dir = small_package(&scratch.join("src"), app, "1");
        store.ok([OsStr::new("add"), dir.as_os_str()]);
    }
    // Backdate generations 1..5 to 100, 50, 40, 10 and 1 days ago.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let db = rusqlite::Connection::open(store.path().join("catalog.db")).unwrap();
    for (id, days) in [(1, 100), (2, 50), (3, 40), (4, 10), (5, 1)] {
        db.execute(
            "UPDATE generations SET created = ?1 WHERE id = ?2",
            [now - days * 86_400, id],
        )
        .unwrap();
    }
    drop(db);

    for bad in ["30", "30y", "d", "-1d"] {
        let run = store.fails_with(&[EXIT_USAGE], ["gc", &format!("--older-than={bad}")]);
        assert!(run.stderr.contains("--older-than"), "{run}");
    }
    assert_eq!(history_ids(&store), vec![1, 2, 3, 4, 5]);

    let report = store.json(["gc", "--older-than", "30d", "--grace", "0"]);
    assert_eq!(report["generations_deleted"], 2, "{report}");
    // 3 was live until 4 replaced it ten days ago: still restorable.
    assert_eq!(history_ids(&store), vec![3, 4, 5]);
    // The oldest kept has nothing left to compare with.
    let history = store.json(["history"]);
    assert!(history[0]["diff"].is_null(), "{history}");
    assert_eq!(history[1]["diff"]["from"], 3, "{history}");
    assert_eq!(history[1]["diff"]["apps_added"][0], "d", "{history}");

    let report = store.json(["gc", "--older-than", "5d", "--keep", "3"]);
    assert_eq!(
        report["generations_deleted"], 0,
        "--keep 3 keeps 3: {report}"
    );
    let report = store.json(["gc", "--older-than", "5d"]);
    assert_eq!(report["generations_deleted"], 1, "{report}");
    assert_eq!(history_ids(&store), vec![4, 5]);
    store.ok(["switch", "4"]);
    store.assert_verify_clean("after --older-than");
}

/// `nip diff`, `nip history` and `nip current` on real Debian packages and a
/// second version of one of them.
#[test]
fn diff_history_and_current_tell_and_make_changes() {
    let scratch = Scratch::new("admin-diff");
    let store = Store::init();
    let debs = fetch_debs(&["hello", "jq"]);
    let hello_version = deb_field(&debs[0], "Version");
    let hello_version = hello_version
        .split_once(':')
        .map_or(hello_version.as_str(), |(_, v)| v)
        .to_string();
    store.ok([OsStr::new("add"), debs[0].as_os_str()]); // 1
    store.ok([OsStr::new("add"), debs[1].as_os_str()]); // 2
    // hello/99: the same program and one more file.
    let v99 = scratch.join("hello99");
    unpack_deb(&debs[0], &scratch.join("unpacked"));
    nexus_integration_tests::fixtures::copy_tree(&scratch.join("unpacked/usr"), &v99);
    let extra = random_bytes(b"hello-99-extra", 300_000);
    write_file(&v99.join("share/extra"), &extra);
    store.ok([
        OsStr::new("add"),
        v99.as_os_str(),
        OsStr::new("--name"),
        OsStr::new("hello"),
        OsStr::new("--version"),
        OsStr::new("99"),
    ]); // 3

    let d = store.json(["diff", "2", "3"]);
    assert_eq!(d["current_moved"][0]["app"], "hello", "{d}");
    assert_eq!(d["current_moved"][0]["from"], hello_version.as_str(), "{d}");
    assert_eq!(d["current_moved"][0]["to"], "99", "{d}");
    assert_eq!(d["versions_added"][0]["version"], "99", "{d}");
    assert!(d["versions_removed"].as_array().unwrap().is_empty(), "{d}");
    let hello99_bytes = d["versions_added"][0]["bytes"].as_i64().unwrap();
    assert_eq!(d["logical_bytes"]["delta"], hello99_bytes, "{d}");
    // Only the extra file is new in the packs: hello's program is shared.
    let stored = d["stored_bytes"]["delta"].as_i64().unwrap();
    assert!(
        (300_000..hello99_bytes).contains(&stored),
        "stored growth {stored} for {hello99_bytes} bytes of files: {d}"
    );

    let back = store.json(["current", "hello", &hello_version]);
    assert_eq!(back["previous"], "99", "{back}");
    assert_eq!(back["generation"], 4, "{back}");
    let again = store.json(["current", "hello", &hello_version]);
    assert!(again["generation"].is_null(), "{again}");
    let refused = store.fails_with(&[1], ["current", "hello", "100"]);
    assert!(
        refused.stderr.contains(&format!(
            "hello/100 is not stored (stored versions: {hello_version}, 99)"
        )),
        "{refused}"
    );
    assert_eq!(
        history_ids(&store),
        vec![1, 2, 3, 4],
        "a refusal changed history"
    );
    store.ok(["remove", "jq"]); // 5

    let d = store.json(["diff", "4"]);
    assert_eq!(d["to"], 5, "the live generation by default: {d}");
    assert_eq!(d["apps_removed"][0], "jq", "{d}");
    assert_eq!(d["versions_removed"][0]["name"], "jq", "{d}");
    assert!(d["stored_bytes"]["delta"].as_i64().unwrap() < 0, "{d}");
    let same = store.json(["diff", "5", "5"]);
    assert!(
        same["current_moved"].as_array().unwrap().is_empty(),
        "{same}"
    );
    store.fails_with(&[1], ["diff", "9", "5"]);

    let history = store.json(["history"]);
    let rows = history.as_array().unwrap();
    assert_eq!(rows[0]["diff"]["apps_added"][0], "hello", "{history}");
    assert_eq!(
        rows[3]["diff"]["current_moved"][0]["to"],
        hello_version.as_str()
    );
    assert!(
        rows[4]["diff"]["stored_bytes"].is_null(),
        "history skips stored sizes"
    );
    let text = store.ok(["history"]).stdout_text();
    let line = text.lines().last().unwrap();
    assert!(line.contains("-jq/"), "{text}");
    assert!(
        text.contains(&format!("hello {hello_version}→99")),
        "{text}"
    );
    let human = store.ok(["diff", "2", "3"]).stdout_text();
    assert!(human.contains("generation 2 → 3"), "{human}");
    assert!(human.contains("Stored"), "{human}");
}

/// A program holding a directory and a file of a version that has left
/// every generation keeps the package through `nip gc --keep 1 --grace 0`:
/// a file of it never opened before still opens and reads right (a
/// program's later `openat` in its own directory), and gc says why it kept
/// it. Closed, the next gc collects it.
#[test]
fn a_program_holding_files_under_the_mount_keeps_its_package() {
    if !root_or_skip("a_program_holding_files_under_the_mount_keeps_its_package") {
        return;
    }
    let scratch = Scratch::new("admin-open");
    let store = Store::init();
    let src = scratch.join("src");
    let files = write_files(&src.join("app/1"), "app", 8, 64 * 1024);
    store.ok([OsStr::new("add"), src.join("app/1").as_os_str()]);
    let mount = Mount::start(store.path(), &scratch.join("mnt"), &[]);
    let dir = File::open(mount.join("app/1/d1")).unwrap();
    let held = File::open(mount.join(format!("app/1/{}", files[1].0))).unwrap();
    store.ok(["remove", "app"]);
    assert!(
        wait_for(Duration::from_secs(2), || !mount.join("app").exists()),
        "the removal does not show"
    );

    let report = gc_now(&store, "1", &[]);
    assert_eq!(report["kept_open"][0], "app/1", "{report}");
    assert_eq!(report["packages_deleted"], 0, "{report}");
    // d1/f5 was never looked up: openat in the held directory.
    let (rel, want) = &files[5];
    let name = std::ffi::CString::new(Path::new(rel).file_name().unwrap().as_bytes()).unwrap();
    // SAFETY: a valid directory descriptor and NUL-terminated name.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), libc::O_RDONLY) };
    assert!(fd >= 0, "openat {rel}: {}", std::io::Error::last_os_error());
    // SAFETY: a descriptor we own from here on.
    let mut fresh = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut got = Vec::new();
    fresh.read_to_end(&mut got).unwrap();
    assert!(got == *want, "{rel} read wrong after gc");
    drop_cached_pages(&held);
    let mut got = Vec::new();
    (&held).read_to_end(&mut got).unwrap();
    assert!(got == files[1].1, "the held file read wrong after gc");

    drop((dir, held, fresh));
    // The kernel forgets the closed files' inodes and the daemon rewrites
    // its record within its 100 ms loop; until then gc still keeps them.
    let deadline = Instant::now() + Duration::from_secs(5);
    let report = loop {
        let report = gc_now(&store, "1", &[]);
        if report["kept_open"].as_array().unwrap().is_empty() || Instant::now() > deadline {
            break report;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        report["kept_open"].as_array().unwrap().is_empty(),
        "{report}"
    );
    assert_eq!(report["packages_deleted"], 1, "{report}");
    mount.umount();
}

/// `nexus status` with a live mount, a mount of a fixed generation and a
/// virtio-fs daemon running: each listed with the generation it serves,
/// the live mount's moving when the live generation does; pins, image
/// counters and sizes shown; a daemon killed with SIGKILL disappears from
/// the list and gc removes its record.
#[test]
fn nexus_status_shows_what_runs_and_what_it_serves() {
    if !root_or_skip("nexus_status_shows_what_runs_and_what_it_serves") {
        return;
    }
    let scratch = Scratch::new("admin-status");
    let store = Store::init();
    let debs = fetch_debs(&["hello", "jq"]);
    store.ok([OsStr::new("add"), debs[0].as_os_str()]); // 1
    store.ok([OsStr::new("add"), debs[1].as_os_str()]); // 2
    // An accepted image records its counter.
    let out = nexus(store.path(), ["key", "generate", "admin"]);
    assert!(out.status.success(), "{}", show(&out));
    let image = scratch.join("system.img");
    let out = nexus(
        store.path(),
        ["snapshot", "--key", "admin", "-o", image.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", show(&out));
    let out = nexus(store.path(), ["switch", image.to_str().unwrap()]);
    assert!(out.status.success(), "{}", show(&out));
    store.ok(["pin", "1"]);
    let live = store.current_generation().unwrap().id;

    let idle = nexus_json(store.path(), &["status"]);
    assert!(idle["serving"].as_array().unwrap().is_empty(), "{idle}");

    let following = Mount::start(store.path(), &scratch.join("live"), &[]);
    let fixed = Mount::start(store.path(), &scratch.join("fixed"), &["--generation", "2"]);
    let mut guests = Server::start(store.path(), &[]);
    let status = nexus_json(store.path(), &["status"]);
    let serving = status["serving"].as_array().unwrap();
    assert_eq!(serving.len(), 3, "{status}");
    let entry = |target: &Path| {
        let target = target.to_string_lossy();
        serving
            .iter()
            .find(|s| s["target"] == target.as_ref())
            .unwrap_or_else(|| panic!("{target} is not listed: {status}"))
            .clone()
    };
    let live_mount = entry(following.point());
    assert_eq!(live_mount["kind"], "mount");
    assert_eq!(live_mount["pid"], following.pid());
    assert_eq!(live_mount["generation"], live, "{status}");
    let fixed_mount = entry(fixed.point());
    assert_eq!(fixed_mount["generation"], 2, "{status}");
    assert_eq!(fixed_mount["pid"], fixed.pid());
    let daemon = entry(guests.socket());
    assert_eq!(daemon["kind"], "virtio-fs");
    assert_eq!(daemon["generation"], live, "{status}");
    assert_eq!(status["live_generation"]["id"], live, "{status}");
    assert_eq!(status["pins"][0]["generation"], 1, "{status}");
    let counters = status["image_counters"].as_array().unwrap();
    assert_eq!(counters.len(), 1, "{status}");
    assert!(
        !counters[0]["domain"].as_str().unwrap().is_empty()
            && !counters[0]["value"].as_str().unwrap().is_empty(),
        "{status}"
    );
    assert!(
        status["size"]["pack_bytes"].as_u64().unwrap() > 0,
        "{status}"
    );
    let text = {
        let out = nexus(store.path(), ["status"]);
        assert!(out.status.success(), "{}", show(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        text.contains(&format!("● generation {live} (live)")),
        "{text}"
    );
    assert!(
        text.contains(&following.point().display().to_string())
            && text.contains(&format!("generation {live} (live)")),
        "{text}"
    );
    assert!(text.contains("Pinned: 1"), "{text}");

    // The live readers follow a new generation; the fixed one stays.
    store.ok(["remove", "jq"]);
    let newer = store.current_generation().unwrap().id;
    let moved = wait_for(Duration::from_secs(3), || {
        let s = nexus_json(store.path(), &["status"]);
        s["serving"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["generation"] == newer)
            .count()
            == 2
    });
    assert!(moved, "{}", nexus_json(store.path(), &["status"]));

    // A daemon killed outright leaves its record, which no longer counts.
    let pid = daemon["pid"].as_i64().unwrap() as i32;
    // SAFETY: kill(2) of the daemon this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(wait_for(Duration::from_secs(5), || !guests.running()));
    let status = nexus_json(store.path(), &["status"]);
    assert_eq!(status["serving"].as_array().unwrap().len(), 2, "{status}");
    let report = gc_now(&store, "1", &[]);
    assert_eq!(report["stale_runtime_records"], 1, "{report}");
    assert_eq!(ids(&report["kept_in_use"]), vec![2], "{report}");
    assert_eq!(ids(&report["kept_pinned"]), vec![1], "{report}");
    assert!(
        !store.path().join(format!("run/{pid}.json")).exists(),
        "gc left the dead daemon's record"
    );

    // A daemon stopped with SIGTERM removes its record itself. (Its own
    // files only: the other daemons rewrite theirs meanwhile, through
    // temporary files.)
    let stopped = Server::start(store.path(), &[]);
    let server = stopped.pid();
    let own = ["json", "lock"].map(|ext| store.path().join(format!("run/{server}.{ext}")));
    assert!(own.iter().all(|f| f.exists()), "no record of the server");
    stopped.stop();
    for file in &own {
        assert!(!file.exists(), "SIGTERM left {}", file.display());
    }
    let temporary = format!(".{server}.");
    let left: Vec<_> = fs::read_dir(store.path().join("run"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&temporary))
        .collect();
    assert!(left.is_empty(), "SIGTERM left {left:?}");

    fixed.umount();
    following.umount();
    let status = nexus_json(store.path(), &["status"]);
    assert!(status["serving"].as_array().unwrap().is_empty(), "{status}");
    assert_eq!(
        fs::read_dir(store.path().join("run")).unwrap().count(),
        0,
        "unmounted daemons left records"
    );
}
