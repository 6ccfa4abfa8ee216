//! Many machines, one store: two stores on one machine stand for two hosts.
//! One publishes real Debian packages to SeaweedFS (S3) or to a directory
//! nginx serves as a mirror; the other pulls, mounts (real FUSE) and runs a
//! program from the mount, fetching only what it reads. Faults are real:
//! publishers killed mid-write, servers frozen and killed mid-read, bytes
//! altered on the server, old and expired manifests served again.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nexus_integration_tests::fixtures::{Scratch, random_bytes, write_file};
use nexus_integration_tests::nexus::{Mount, wait_for};
use nexus_integration_tests::remote::{
    Nginx, S3_ENDPOINT, bucket, copy_tree, ensure_seaweedfs, nip_env, nip_env_ok, packs_in, s3_env,
};
use nexus_integration_tests::rng::Rng;
use nexus_integration_tests::{Store, fetch_debs, heavy_test_guard, root_or_skip};

/// The publisher's key: generated in `store`, its public file returned.
fn signing_key(store: &Store) -> PathBuf {
    store.ok(["key", "generate", "publisher"]);
    let dir = store.path().join("keys/public");
    fs::read_dir(&dir)
        .expect("public keys")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "pub"))
        .expect("the publisher's public key")
}

/// A subscriber store with remote `name` at `url`, trusting `key`.
fn subscriber(name: &str, url: &str, key: &Path, extra: &[&str]) -> Store {
    let store = Store::init();
    let mut args = vec!["remote", "add", name, url, "--key"];
    let key = key.to_str().expect("utf-8 path");
    args.push(key);
    args.extend(extra);
    store.ok(&args);
    store
}

/// The python3.11 interpreter, its minimal standard library, and the rest
/// of the standard library (which `print` does not need).
fn python_debs() -> Vec<PathBuf> {
    fetch_debs(&[
        "python3.11-minimal",
        "libpython3.11-minimal",
        "libpython3.11-stdlib",
    ])
}

/// Runs `python3.11 -S -c 'print(6*7)'` from a mount; its output.
fn run_python(mount: &Path) -> std::process::Output {
    Command::new(mount.join("python3.11-minimal/Current/bin/python3.11"))
        .args(["-S", "-c", "print(6*7)"])
        .env_clear()
        .env("PYTHONHOME", mount.join("libpython3.11-minimal/Current"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run python3.11 from the mount")
}

/// What the subscriber's disk cache holds (every fetched block is cached).
fn cached_bytes(store: &Store) -> u64 {
    store.ok(["remote", "cache", "--json"]).json()["bytes"]
        .as_u64()
        .expect("cache bytes")
}

/// Stored bytes of the packs the store reads from its remotes.
fn remote_pack_bytes(store: &Store) -> u64 {
    store.ok(["remote", "list", "--json"]).json()["remotes"]
        .as_array()
        .expect("remotes")
        .iter()
        .map(|r| r["pack_bytes"].as_u64().unwrap_or(0))
        .sum()
}

#[test]
fn a_host_pulls_a_published_store_and_runs_a_program_reading_only_part_of_it() {
    if !root_or_skip("a_host_pulls_a_published_store_and_runs_a_program_reading_only_part_of_it") {
        return;
    }
    let _heavy = heavy_test_guard();
    ensure_seaweedfs();
    let env = s3_env();
    let scratch = Scratch::new("remote-main");
    let url = format!("s3://{}/fleet", bucket("main"));

    // Host A publishes real packages to S3, and to a directory a mirror
    // serves.
    let a = Store::init();
    let debs = python_debs();
    let mut add = vec!["add".to_string()];
    add.extend(debs.iter().map(|d| d.display().to_string()));
    a.ok(&add);
    let key = signing_key(&a);
    a.ok(["remote", "add", "origin", &url, "--endpoint", S3_ENDPOINT]);
    let published = nip_env_ok(&a, &env, ["publish", "origin", "--json"]).json();
    assert_eq!(published["packages"], 3, "{published}");
    let tree = scratch.join("published");
    let file_url = format!("file://{}", tree.display());
    a.ok(["remote", "add", "dir", &file_url]);
    a.ok(["publish", "dir"]);

    // Host B pulls from S3: metadata only, no pack, nothing cached.
    let b = subscriber("origin", &url, &key, &["--endpoint", S3_ENDPOINT]);
    let pulled = nip_env_ok(&b, &env, ["pull", "origin", "--json"]).json();
    assert_eq!(pulled["packages"], 3, "{pulled}");
    assert_eq!(fs::read_dir(b.packs_dir()).unwrap().count(), 0);
    assert_eq!(cached_bytes(&b), 0);
    let stored = remote_pack_bytes(&b);
    assert!(stored > 1 << 20, "{stored}");

    // It mounts and runs python from the mount.
    let mount = Mount::start_with_env(b.path(), &scratch.join("mnt-b"), &[], &env);
    let out = run_python(mount.point());
    assert!(
        out.status.success() && out.stdout == b"42\n",
        "python from the mount: {out:?}\n{}",
        mount.log()
    );
    let fetched = cached_bytes(&b);
    eprintln!(
        "S3: the first run fetched {fetched} of {stored} published bytes ({:.0}%)",
        100.0 * fetched as f64 / stored as f64
    );
    assert!(fetched > 0 && fetched < stored, "{fetched} of {stored}");
    // The mount's view shows where its files are.
    let verify = b.ok(["verify"]).stdout_text();
    assert!(verify.contains("remote-only pack"), "{verify}");
    mount.umount();

    // Host C pulls the same generation from a copy of the tree that nginx
    // serves: the server counts what it sent.
    let mirror = scratch.join("mirror");
    copy_tree(&tree, &mirror);
    let nginx = Nginx::serve(&mirror);
    let c = subscriber("mirror", &nginx.url(), &key, &["--domain", "dir"]);
    c.ok(["pull", "mirror"]);
    let mount = Mount::start(c.path(), &scratch.join("mnt-c"), &[]);
    let out = run_python(mount.point());
    assert!(out.status.success() && out.stdout == b"42\n", "{out:?}");
    let sent = nginx.pack_bytes_sent();
    let held: u64 = packs_in(&mirror).iter().map(|p| p.1).sum();
    eprintln!("mirror: nginx sent {sent} of {held} pack bytes");
    assert!(sent > 0 && sent < held, "{sent} of {held}");
    // Every request was a range of one block, never a whole pack.
    for (path, status, bytes, range) in nginx.requests() {
        if path.starts_with("/packs/") {
            assert_eq!(status, 206, "{path} {range}");
            assert!(range.starts_with("bytes="), "{path}: {range:?}");
            assert!(bytes <= 4 << 20, "{path}: {bytes}");
        }
    }
    mount.umount();

    // Host D prefetches what C's first start read, in that order (C's
    // access record): its own first start then fetches nothing more.
    let record = c.path().join("remote-cache/access.log");
    let d = subscriber("mirror", &nginx.url(), &key, &["--domain", "dir"]);
    d.ok(["pull", "mirror"]);
    let report = d
        .ok(["prefetch", "--recorded", record.to_str().unwrap(), "--json"])
        .json();
    assert!(report["fetched"].as_u64().unwrap() > 0, "{report}");
    let before = nginx.pack_bytes_sent();
    let mount = Mount::start(d.path(), &scratch.join("mnt-d"), &[]);
    let out = run_python(mount.point());
    assert!(out.status.success() && out.stdout == b"42\n", "{out:?}");
    assert_eq!(
        nginx.pack_bytes_sent(),
        before,
        "the recorded blocks were all the first start needed"
    );
    mount.umount();

    // A forged record: a real block with a length of 4 GiB (a buffer that
    // size each), and a block the catalog places nowhere. Both skipped.
    let text = fs::read_to_string(&record).expect("the access record");
    let first = text.lines().next().expect("a recorded block");
    let mut words = first.split(' ');
    let (pack, offset) = (words.next().unwrap(), words.next().unwrap());
    let forged = scratch.join("forged.log");
    fs::write(
        &forged,
        format!("{pack} {offset} 4294967295\n{pack} 3 4096\n"),
    )
    .expect("write the forged record");
    let report = d
        .ok(["prefetch", "--recorded", forged.to_str().unwrap(), "--json"])
        .json();
    assert_eq!(report["recorded_skipped"], 2, "{report}");
    assert_eq!(report["blocks"], 0, "{report}");
}

/// A package of `len` random bytes (so publishing it has something to
/// upload), named NAME/VERSION.
fn add_random(store: &Store, root: &Path, name: &str, version: &str, len: usize) {
    let dir = root.join(format!("{name}-{version}"));
    write_file(
        &dir.join("data"),
        &random_bytes(format!("{name}{version}").as_bytes(), len),
    );
    store.ok([
        "add",
        dir.to_str().unwrap(),
        "--name",
        name,
        "--version",
        version,
    ]);
}

/// Pulls the remote into a fresh store and fetches every block of every
/// package: the remote is consistent (the manifest verifies, every object
/// it names is there and right). The manifest's counter, or `None` if
/// nothing was published yet.
fn check_consistent(url: &str, key: &Path, env: &[(&str, &str)], extra: &[&str]) -> Option<u64> {
    let s = subscriber("origin", url, key, extra);
    let pulled = nip_env(&s, env, ["pull", "origin", "--json"]);
    if !pulled.success() && pulled.stderr.contains("nothing was published") {
        return None;
    }
    assert!(pulled.success(), "pull after a killed publish:\n{pulled}");
    let counter = pulled.json()["counter"].as_u64();
    let apps: Vec<String> = s
        .ok(["list", "--json"])
        .json()
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|p| p["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    if !apps.is_empty() {
        let mut args = vec!["prefetch".to_string()];
        args.extend(apps);
        nip_env_ok(&s, env, &args);
    }
    counter
}

#[test]
fn a_publisher_killed_at_random_moments_leaves_the_remote_consistent() {
    let _heavy = heavy_test_guard();
    ensure_seaweedfs();
    let env = s3_env();
    let scratch = Scratch::new("remote-kill");
    let url = format!("s3://{}/fleet", bucket("kill"));
    let a = Store::init();
    let key = signing_key(&a);
    a.ok(["remote", "add", "origin", &url, "--endpoint", S3_ENDPOINT]);
    let s3 = ["--endpoint", S3_ENDPOINT];

    // How long one publish of a new package takes.
    add_random(&a, scratch.path(), "p0", "1", 6 << 20);
    let start = Instant::now();
    nip_env_ok(&a, &env, ["publish", "origin"]);
    let full = start.elapsed();
    let mut last = check_consistent(&url, &key, &env, &s3).expect("published");
    let mut rng =
        Rng::from_env("a_publisher_killed_at_random_moments_leaves_the_remote_consistent");
    for round in 1..=20 {
        add_random(&a, scratch.path(), &format!("p{round}"), "1", 6 << 20);
        let delay = Duration::from_micros(rng.below(full.as_micros() as u64 * 3 / 2 + 1));
        let mut child = a
            .command(["publish", "origin"])
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start publish");
        std::thread::sleep(delay);
        let _ = child.kill();
        let _ = child.wait();
        let counter = check_consistent(&url, &key, &env, &s3).expect("a manifest");
        assert!(
            counter >= last,
            "round {round}: the manifest went back from {last} to {counter}"
        );
        last = counter;
    }
    // The publisher itself recovers: the next publish completes.
    let done = nip_env_ok(&a, &env, ["publish", "origin", "--json"]).json();
    assert!(done["counter"].as_u64().unwrap() > last, "{done}");
}

#[test]
fn two_publishers_at_once_never_corrupt_the_remote() {
    let _heavy = heavy_test_guard();
    ensure_seaweedfs();
    let env = s3_env();
    let scratch = Scratch::new("remote-race");
    let url = format!("s3://{}/fleet", bucket("race"));
    // Both publishers sign with the same key (one publishing identity on
    // two build hosts).
    let a = Store::init();
    let key = signing_key(&a);
    let b = Store::init();
    copy_tree(&a.path().join("keys"), &b.path().join("keys-copy"));
    fs::remove_dir_all(b.path().join("keys")).ok();
    fs::rename(b.path().join("keys-copy"), b.path().join("keys")).unwrap();
    for s in [&a, &b] {
        s.ok(["remote", "add", "origin", &url, "--endpoint", S3_ENDPOINT]);
    }
    let mut counters = Vec::new();
    let mut conflicts = 0;
    for round in 0..6 {
        add_random(&a, scratch.path(), &format!("a{round}"), "1", 2 << 20);
        add_random(&b, scratch.path(), &format!("b{round}"), "1", 2 << 20);
        let spawn = |s: &Store| {
            s.command(["publish", "origin", "--json"])
                .envs(env.iter().copied())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start publish")
        };
        let (pa, pb) = (spawn(&a), spawn(&b));
        for out in [
            pa.wait_with_output().unwrap(),
            pb.wait_with_output().unwrap(),
        ] {
            if out.status.success() {
                let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                counters.push(report["counter"].as_u64().unwrap());
            } else {
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(
                    err.contains("another publisher"),
                    "a publish failed for another reason: {err}"
                );
                conflicts += 1;
            }
        }
        check_consistent(&url, &key, &env, &["--endpoint", S3_ENDPOINT]).expect("a manifest");
    }
    let mut distinct = counters.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        counters.len(),
        "one counter twice: {counters:?}"
    );
    let newest = check_consistent(&url, &key, &env, &["--endpoint", S3_ENDPOINT]).unwrap();
    assert_eq!(Some(&newest), distinct.last(), "{counters:?}");
    eprintln!(
        "{} publishes landed, {conflicts} refused as conflicts",
        counters.len()
    );
}

/// A published tree served by nginx, and a subscriber that pulled it.
struct Mirrored {
    scratch: Scratch,
    nginx: Nginx,
    mirror: PathBuf,
    subscriber: Store,
    key: PathBuf,
}

/// Host A publishes two random packages to a directory; nginx serves a
/// copy; a subscriber (read deadline `timeout` seconds) pulls it.
fn mirrored(label: &str, timeout: &str) -> Mirrored {
    let scratch = Scratch::new(label);
    let a = Store::init();
    // The publisher's store goes with this function; its public key stays.
    let key = scratch.join("publisher.pub");
    fs::copy(signing_key(&a), &key).expect("copy the public key");
    let tree = scratch.join("published");
    a.ok([
        "remote",
        "add",
        "dir",
        &format!("file://{}", tree.display()),
    ]);
    // One publish each: `two` lies in a remote pack of its own, out of
    // reach of the read-ahead a sequential read of `one` starts, so that
    // reading `one` never caches `two`.
    add_random(&a, scratch.path(), "one", "1", 3 << 20);
    a.ok(["publish", "dir"]);
    add_random(&a, scratch.path(), "two", "1", 3 << 20);
    a.ok(["publish", "dir"]);
    let mirror = scratch.join("mirror");
    copy_tree(&tree, &mirror);
    let nginx = Nginx::serve(&mirror);
    let subscriber = subscriber("mirror", &nginx.url(), &key, &["--domain", "dir"]);
    subscriber.ok(["remote", "cache", "--timeout", timeout]);
    subscriber.ok(["pull", "mirror"]);
    Mirrored {
        scratch,
        nginx,
        mirror,
        subscriber,
        key,
    }
}

/// A selftest report (`--sandbox-selftest`) once its probe `last` is in:
/// probe name → outcome.
fn selftest_report(path: &Path, last: &str) -> BTreeMap<String, serde_json::Value> {
    let marker = format!("\"{last}\"");
    assert!(
        wait_for(Duration::from_secs(20), || fs::read_to_string(path)
            .is_ok_and(|t| t.contains(&marker))),
        "no complete selftest report at {}",
        path.display()
    );
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["probe"].as_str().unwrap().to_string(), v)
        })
        .collect()
}

/// Asserts that `probe` was refused by the sandbox (EACCES from Landlock,
/// EPERM from seccomp), not failed by accident (ECONNREFUSED, ENOENT).
fn assert_refused(report: &BTreeMap<String, serde_json::Value>, who: &str, probe: &str) {
    let outcome = report
        .get(probe)
        .unwrap_or_else(|| panic!("the {who} selftest did not try {probe}: {report:?}"));
    assert_eq!(
        outcome["allowed"], false,
        "the {who} could {probe}: {outcome}"
    );
    let errno = outcome["errno"].as_i64().unwrap() as i32;
    assert!(
        [libc::EACCES, libc::EPERM].contains(&errno),
        "{who}: {probe} failed, but not because it was refused: {outcome}"
    );
}

#[test]
fn a_store_with_remotes_keeps_its_daemon_off_the_network_and_its_fetcher_to_the_remotes_port() {
    if !root_or_skip(
        "a_store_with_remotes_keeps_its_daemon_off_the_network_and_its_fetcher_to_the_remotes_port",
    ) {
        return;
    }
    let m = mirrored("remote-sandbox", "5");
    let report = m.scratch.join("selftest");
    let mount = Mount::start(
        m.subscriber.path(),
        &m.scratch.join("mnt"),
        &["--sandbox-selftest", report.to_str().unwrap()],
    );
    // Served through the fetcher, cached by the daemon.
    let data = fs::read(mount.join("one/Current/data")).expect("read from the remote");
    assert_eq!(data.len(), 3 << 20);
    assert!(
        cached_bytes(&m.subscriber) > 0,
        "the daemon caches what it fetched"
    );

    // The daemon: no network at all, its block cache writable.
    let daemon = selftest_report(&report, "spawn-thread");
    assert_refused(&daemon, "daemon", "socket-inet");
    assert_refused(&daemon, "daemon", "connect-unix");
    assert_eq!(daemon["write-remote-cache"]["allowed"], true, "{daemon:?}");

    // The fetcher: the remote's port and nothing else; no store file.
    let mut fetcher_report = report.into_os_string();
    fetcher_report.push(".fetcher");
    let fetcher = selftest_report(Path::new(&fetcher_report), "mmap-exec");
    assert_eq!(
        fetcher["connect-tcp-remote-port"]["allowed"],
        true,
        "the fetcher reaches nginx on {}: {fetcher:?}",
        m.nginx.port()
    );
    for probe in [
        "connect-tcp-other-port",
        "read-catalog",
        "read-etc-shadow",
        "create-in-tmp",
        "socket-unix",
        "fork",
        "execve",
        "ptrace-init",
        "setuid-root",
        "kill-init",
        "mmap-exec",
    ] {
        assert_refused(&fetcher, "fetcher", probe);
    }
    mount.umount();
}

#[test]
fn a_dead_or_frozen_server_fails_reads_in_bounded_time_and_cached_files_keep_working() {
    if !root_or_skip(
        "a_dead_or_frozen_server_fails_reads_in_bounded_time_and_cached_files_keep_working",
    ) {
        return;
    }
    let mut m = mirrored("remote-offline", "2");
    let mount = Mount::start(m.subscriber.path(), &m.scratch.join("mnt"), &[]);
    let one = mount.join("one/Current/data");
    let two = mount.join("two/Current/data");
    let first = fs::read(&one).expect("read while the server runs");
    assert_eq!(first.len(), 3 << 20);

    // Frozen: it accepts connections and answers nothing.
    m.nginx.freeze();
    let start = Instant::now();
    let err = fs::read(&two).expect_err("an uncached file cannot be read");
    let waited = start.elapsed();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(waited < Duration::from_secs(8), "EIO after {waited:?}");
    // Cached: read at once, the same bytes.
    let start = Instant::now();
    assert_eq!(fs::read(&one).unwrap(), first);
    assert!(start.elapsed() < Duration::from_secs(1));

    // Killed mid-life: refused connections fail as fast.
    m.nginx.kill();
    let start = Instant::now();
    let err = fs::read(&two).expect_err("the server is gone");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(start.elapsed() < Duration::from_secs(8));
    assert_eq!(fs::read(&one).unwrap(), first);
    let log = mount.log();
    let lines = log
        .lines()
        .filter(|l| l.contains("remote mirror") && l.contains("unreachable"))
        .count();
    assert!(lines >= 1, "one line names the remote:\n{log}");

    // Back on its port: the file reads once the remote answers again.
    let _back = Nginx::serve_at(&m.mirror, m.nginx.port());
    assert!(
        wait_for(Duration::from_secs(10), || fs::read(&two).is_ok()),
        "the file reads again once the server is back"
    );
    assert_eq!(fs::read(&two).unwrap().len(), 3 << 20);
    assert!(mount.log().contains("answers again"), "{}", mount.log());
    mount.umount();
}

#[test]
fn an_object_altered_on_the_server_is_detected_and_never_served_or_cached() {
    if !root_or_skip("an_object_altered_on_the_server_is_detected_and_never_served_or_cached") {
        return;
    }
    let m = mirrored("remote-altered", "3");
    // Flip one byte in the middle of every pack the mirror serves, and
    // cut the last one short.
    let packs = packs_in(&m.mirror);
    for (path, len) in &packs {
        let mut bytes = fs::read(path).unwrap();
        let at = (*len / 2) as usize;
        bytes[at] ^= 0x40;
        fs::write(path, &bytes).unwrap();
    }
    let mount = Mount::start(m.subscriber.path(), &m.scratch.join("mnt"), &[]);
    let mut failed = 0;
    for app in ["one", "two"] {
        match fs::read(mount.join(format!("{app}/Current/data"))) {
            Ok(bytes) => {
                // Served bytes are always the published ones.
                assert_eq!(
                    bytes,
                    random_bytes(format!("{app}1").as_bytes(), 3 << 20),
                    "{app}: wrong bytes served"
                );
            }
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
                failed += 1;
            }
        }
    }
    assert!(failed > 0, "the altered block was read by someone");
    assert!(
        mount.log().contains("served wrong bytes"),
        "{}",
        mount.log()
    );
    mount.umount();
    // Nothing of the altered blocks is in the cache: restoring the
    // server's bytes makes every file read right.
    let prefetch = m.subscriber.run(["prefetch", "one", "two"]);
    assert!(!prefetch.success(), "{prefetch}");
    for (path, len) in &packs {
        let mut bytes = fs::read(path).unwrap();
        bytes[(*len / 2) as usize] ^= 0x40;
        fs::write(path, &bytes).unwrap();
    }
    m.subscriber.ok(["prefetch", "one", "two"]);
    let mount = Mount::start(m.subscriber.path(), &m.scratch.join("mnt2"), &[]);
    for app in ["one", "two"] {
        assert_eq!(
            fs::read(mount.join(format!("{app}/Current/data"))).unwrap(),
            random_bytes(format!("{app}1").as_bytes(), 3 << 20)
        );
    }
    mount.umount();

    // Altered or truncated metadata: the pull is refused, the generation
    // stays.
    let live = m.subscriber.ok(["history", "--json"]).stdout_text();
    for meta in fs::read_dir(m.mirror.join("meta")).unwrap().flatten() {
        let original = fs::read(meta.path()).unwrap();
        fs::write(meta.path(), &original[..original.len() - 10]).unwrap();
    }
    let fresh = subscriber("mirror", &m.nginx.url(), &m.key, &["--domain", "dir"]);
    let refused = fresh.run(["pull", "mirror"]);
    assert!(
        !refused.success() && refused.stderr.contains("altered or truncated"),
        "{refused}"
    );
    let again = m.subscriber.run(["pull", "mirror"]);
    assert!(!again.success(), "{again}");
    assert_eq!(m.subscriber.ok(["history", "--json"]).stdout_text(), live);
}

/// A publisher store with a `file://` remote `dir` (a directory of
/// `scratch`) to which it published package `app` 1 (`len` random bytes in
/// `data`): the store, its public key, the directory and its URL.
fn directory_publisher(scratch: &Scratch, len: usize) -> (Store, PathBuf, PathBuf, String) {
    let a = Store::init();
    let key = signing_key(&a);
    let tree = scratch.join("published");
    let url = format!("file://{}", tree.display());
    a.ok(["remote", "add", "dir", &url]);
    add_random(&a, scratch.path(), "app", "1", len);
    a.ok(["publish", "dir"]);
    (a, key, tree, url)
}

#[test]
fn a_confined_mount_reads_a_directory_remote() {
    if !root_or_skip("a_confined_mount_reads_a_directory_remote") {
        return;
    }
    let scratch = Scratch::new("remote-dir-mount");
    let (_publisher, key, _, url) = directory_publisher(&scratch, 2 << 20);
    let s = subscriber("dir", &url, &key, &[]);
    s.ok(["pull", "dir"]);
    // The fetcher runs confined: it reads the published directory and
    // must not need to create it.
    let mount = Mount::start(s.path(), &scratch.join("mnt"), &[]);
    let data = fs::read(mount.join("app/Current/data"))
        .unwrap_or_else(|e| panic!("reading through a file:// remote: {e}\n{}", mount.log()));
    assert!(
        data == random_bytes(b"app1", 2 << 20),
        "other bytes than published"
    );
}

#[test]
fn replayed_expired_and_untrusted_manifests_are_refused() {
    let scratch = Scratch::new("remote-replay");
    let (a, key, tree, url) = directory_publisher(&scratch, 1 << 20);
    let first = fs::read(tree.join("manifest")).unwrap();
    add_random(&a, scratch.path(), "app", "2", 1 << 20);
    a.ok(["publish", "dir"]);

    let s = subscriber("dir", &url, &key, &[]);
    s.ok(["pull", "dir"]);
    let live = s.ok(["history", "--json"]).stdout_text();

    // A mirror serving the older manifest (and its objects, all there).
    let newest = fs::read(tree.join("manifest")).unwrap();
    fs::write(tree.join("manifest"), &first).unwrap();
    let replayed = s.run(["pull", "dir"]);
    assert!(
        !replayed.success() && replayed.stderr.contains("older or replayed"),
        "{replayed}"
    );
    assert_eq!(s.ok(["history", "--json"]).stdout_text(), live);
    fs::write(tree.join("manifest"), &newest).unwrap();

    // Expired.
    add_random(&a, scratch.path(), "app", "3", 1 << 20);
    a.ok(["publish", "dir", "--expires-in", "1s"]);
    std::thread::sleep(Duration::from_millis(2100));
    let expired = s.run(["pull", "dir"]);
    assert!(
        !expired.success() && expired.stderr.contains("expired"),
        "{expired}"
    );
    assert_eq!(s.ok(["history", "--json"]).stdout_text(), live);
    s.ok(["pull", "dir", "--allow-expired"]);

    // Signed by a key the subscriber does not trust for this remote.
    let other = Store::init();
    other.ok(["key", "generate", "intruder"]);
    other.ok(["remote", "add", "dir", &url]);
    add_random(&other, scratch.path(), "evil", "1", 1 << 16);
    other.ok(["publish", "dir", "--fresh"]);
    let untrusted = s.run(["pull", "dir"]);
    assert!(
        !untrusted.success() && untrusted.stderr.contains("not trusted"),
        "{untrusted}"
    );
    // The publisher's key revoked: refused as well.
    a.ok(["publish", "dir", "--fresh"]);
    let key_id = key.file_stem().unwrap().to_str().unwrap().to_string();
    s.ok(["key", "revoke", &key_id]);
    let revoked = s.run(["pull", "dir"]);
    assert!(
        !revoked.success() && revoked.stderr.contains("revoked"),
        "{revoked}"
    );
}

/// Whoever can write the bucket (or a key this store trusts only for
/// another domain) must not choose the counter the publisher signs next:
/// a manifest there with a counter near the end of the range would
/// otherwise be "exceeded", spending the publisher's key to its last
/// counter, after which it could never publish again.
#[test]
fn a_manifest_the_publisher_does_not_vouch_for_chooses_no_counter() {
    let scratch = Scratch::new("remote-counter");
    let (a, key, tree, url) = directory_publisher(&scratch, 1 << 16);
    // The counter of the manifest on the remote (FORMAT.md: u64 at 48).
    let counter_of = || -> u64 {
        let manifest = fs::read(tree.join("manifest")).unwrap();
        u64::from_le_bytes(manifest[48..56].try_into().unwrap())
    };
    let before = counter_of();

    // The intruder: trusted by the publisher, but for images of another
    // domain; its key's next counter the last but one.
    let other = Store::init();
    other.ok(["key", "generate", "intruder"]);
    let intruder_pub = fs::read_dir(other.path().join("keys/public"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "pub"))
        .unwrap();
    a.ok([
        "key",
        "trust",
        intruder_pub.to_str().unwrap(),
        "--for",
        "images",
        "--domain",
        "elsewhere",
    ]);
    fs::write(
        other.path().join("keys/secret/intruder.counter"),
        format!("{}\n", u64::MAX - 2),
    )
    .unwrap();
    other.ok(["remote", "add", "dir", &url]);
    add_random(&other, scratch.path(), "evil", "1", 1 << 12);
    other.ok(["publish", "dir", "--fresh"]);
    assert_eq!(counter_of(), u64::MAX - 1, "setup: the planted counter");

    // Reusing what that manifest names is refused, naming the domain.
    add_random(&a, scratch.path(), "app", "2", 1 << 12);
    let refused = a.run(["publish", "dir"]);
    assert!(
        !refused.success() && refused.stderr.contains("--fresh"),
        "{refused}"
    );
    // Replacing it takes the publisher's own next counter.
    a.ok(["publish", "dir", "--fresh"]);
    let after = counter_of();
    assert!(
        after > before && after < 1000,
        "the publisher signed counter {after} (before: {before})"
    );
    let s = subscriber("dir", &url, &key, &[]);
    s.ok(["pull", "dir"]);
    a.ok(["publish", "dir"]);
}

#[test]
fn concurrent_readers_of_a_cold_file_cause_one_fetch_per_block() {
    if !root_or_skip("concurrent_readers_of_a_cold_file_cause_one_fetch_per_block") {
        return;
    }
    let m = mirrored("remote-collapse", "10");
    let mount = Mount::start(m.subscriber.path(), &m.scratch.join("mnt"), &[]);
    let file = mount.join("one/Current/data");
    // Two readers from the start, two from the middle, all at once.
    let data = random_bytes(b"one1", 3 << 20);
    let readers: Vec<_> = ["0", "0", "1572864", "1572864"]
        .iter()
        .map(|skip| {
            Command::new("dd")
                .arg(format!("if={}", file.display()))
                .args(["bs=65536", "iflag=skip_bytes", "status=none"])
                .arg(format!("skip={skip}"))
                .stdout(Stdio::piped())
                .spawn()
                .expect("dd")
        })
        .collect();
    for (r, skip) in readers.into_iter().zip([0, 0, 1572864, 1572864]) {
        let out = r.wait_with_output().unwrap();
        assert!(out.status.success());
        assert!(out.stdout == data[skip..], "wrong bytes from {skip}");
    }
    let ranges: Vec<(String, String)> = m
        .nginx
        .requests()
        .into_iter()
        .filter(|r| r.0.starts_with("/packs/"))
        .map(|r| (r.0, r.3))
        .collect();
    // One request may fetch several blocks (read-ahead): no byte of a
    // pack is asked for twice.
    let mut spans: Vec<(String, u64, u64)> = ranges
        .iter()
        .map(|(path, range)| {
            let (start, end) = range
                .strip_prefix("bytes=")
                .and_then(|r| r.split_once('-'))
                .unwrap_or_else(|| panic!("{path}: range {range:?}"));
            let span = (start.parse().unwrap(), end.parse().unwrap());
            (path.clone(), span.0, span.1)
        })
        .collect();
    spans.sort();
    assert!(!spans.is_empty());
    for pair in spans.windows(2) {
        assert!(
            pair[0].0 != pair[1].0 || pair[0].2 < pair[1].1,
            "a block was fetched twice: {ranges:?}"
        );
    }
    // Random data does not compress: about one block per MiB.
    let fetched: u64 = spans.iter().map(|s| s.2 + 1 - s.1).sum();
    assert!(fetched >= 3 << 20, "{ranges:?}");
    mount.umount();
}
