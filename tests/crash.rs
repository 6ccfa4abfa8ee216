//! Crash safety: `nip add` of a large tree and `nip gc` are killed with SIGKILL
//! at random moments, at least 30 times each. After every kill `nip verify`
//! must be clean, the last committed generation must be complete (packages
//! added before still export identically; nothing half-added is visible), and
//! at the end a retry of the interrupted operation must succeed.
//!
//! Kill times are drawn uniformly over the duration of an uninterrupted run,
//! measured on the same store first, with every fifth kill aimed at the end
//! of the run, where the catalog commit happens. Knobs:
//! `NEXUS_CRASH_ITERATIONS` (default 30), `NEXUS_CRASH_EXTRA_MB` (generated
//! data added to the real packages of the large tree, default 80),
//! `NEXUS_TEST_SEED` (replays the kill times).

use std::ffi::OsString;
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use nexus_integration_tests::debs::{Unpacked, fetch_and_unpack};
use nexus_integration_tests::fixtures::{Scratch, build_large_tree, random_bytes, write_file};
use nexus_integration_tests::nip::Generation;
use nexus_integration_tests::rng::Rng;
use nexus_integration_tests::tree::{assert_files_json_match, assert_same_tree, snapshot};
use nexus_integration_tests::{Store, env_knob, heavy_test_guard};

/// The real packages every crash test adds before the loop and checks after
/// every kill.
const BASELINE: &[&str] = &["hello", "jq"];

fn iterations() -> u64 {
    env_knob("NEXUS_CRASH_ITERATIONS", 30)
}

/// `nip add --name NAME --version VERSION DIR` as arguments.
fn add_args(name: &str, version: &str, dir: &Path) -> Vec<OsString> {
    vec![
        "add".into(),
        "--name".into(),
        name.into(),
        "--version".into(),
        version.into(),
        dir.as_os_str().to_owned(),
    ]
}

/// `nip gc` collecting everything unreferenced right away.
const GC_NOW: [&str; 5] = ["gc", "--keep", "1", "--grace", "0"];

/// Runs `nip ARGS` and SIGKILLs it after `delay`. Returns the exit status and
/// whether the kill is what ended it (`false`: it had finished by itself).
/// Runs `nip ARGS` and SIGKILLs it after `delay`; returns its exit status,
/// whether the kill ended it, and what it wrote on stderr (to explain a
/// failure that was not the kill).
fn run_and_kill(store: &Store, args: &[OsString], delay: Duration) -> (ExitStatus, bool, String) {
    let stderr = tempfile::tempfile().expect("a temporary file for stderr");
    let mut child = store
        .command(args)
        .stdout(std::process::Stdio::null())
        .stderr(stderr.try_clone().expect("clone the stderr file"))
        .spawn()
        .expect("starting nip");
    std::thread::sleep(delay);
    // Sends SIGKILL; harmless if the process has exited already (it is not
    // reaped until `wait`, so the pid cannot have been reused).
    let _ = child.kill();
    let status = child.wait().expect("waiting for the killed nip");
    let mut text = String::new();
    let mut stderr = stderr;
    let _ = std::io::Seek::rewind(&mut stderr);
    let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
    (status, status.signal() == Some(libc::SIGKILL), text)
}

/// Picks a kill delay: uniform over `[lo, typical]`, except every fifth
/// iteration, which aims at the last 20 % (and a little past the end) where
/// the commit happens.
fn kill_delay(rng: &mut Rng, i: u64, lo: Duration, typical: Duration) -> Duration {
    if i % 5 == 4 {
        rng.duration_between(typical.mul_f64(0.8).max(lo), typical.mul_f64(1.1).max(lo))
    } else {
        rng.duration_between(lo, typical.max(lo))
    }
}

/// Exports each baseline package and compares it with its source.
fn check_baseline(store: &Store, baseline: &[Unpacked], scratch: &Scratch, context: &str) {
    for p in baseline {
        let dest = scratch.join(format!("check-{}", p.name));
        store.export(&p.spec(), &dest);
        assert_same_tree(
            &p.dir,
            &dest,
            &format!("{context}: baseline package {}", p.spec()),
        );
        fs::remove_dir_all(&dest).unwrap();
    }
}

/// Adds the baseline packages in one transaction and returns them.
fn add_baseline(store: &Store, scratch: &Scratch) -> Vec<Unpacked> {
    let baseline = fetch_and_unpack(BASELINE, &scratch.join("baseline"));
    let mut args = vec![OsString::from("add")];
    args.extend(baseline.iter().map(|p| p.arg().to_owned()));
    store.ok(&args);
    baseline
}

/// Total size of the pack files.
fn packs_bytes(store: &Store) -> u64 {
    fs::read_dir(store.packs_dir())
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn sigkill_during_add_leaves_store_consistent() {
    let _heavy = heavy_test_guard();
    let mut rng = Rng::from_env("sigkill_during_add");
    let n = iterations();
    let scratch = Scratch::new("crash-add");
    let big = scratch.join("big");
    let big_bytes = build_large_tree(&big, env_knob("NEXUS_CRASH_EXTRA_MB", 80), 0xadd);
    let big_snap = snapshot(&big);
    let store = Store::init();
    let baseline = add_baseline(&store, &scratch);

    // Calibration: an uninterrupted add of the same tree, then removed and
    // collected so that every attempt below has to write all of it again.
    let typical = store.ok(add_args("calibration", "1", &big)).elapsed;
    store.ok(["remove", "calibration"]);
    store.ok(GC_NOW);
    store.assert_verify_clean("after calibration");
    eprintln!(
        "large tree: {} files, {:.0} MB; an uninterrupted add takes {typical:.2?}",
        big_snap.files().count(),
        big_bytes as f64 / 1e6
    );

    let mut killed = 0;
    let mut committed = 0;
    for i in 0..n {
        let before = store.state();
        let history_before = store.history();
        let delay = kill_delay(&mut rng, i, Duration::from_millis(10), typical);
        let (status, was_killed, stderr) = run_and_kill(&store, &add_args("big", "1", &big), delay);
        let context =
            format!("iteration {i}: `nip add` of the large tree, SIGKILL after {delay:.2?}");
        if was_killed {
            killed += 1;
        } else {
            assert!(
                status.success(),
                "{context}: it finished before the kill, but with {status}:\n{stderr}"
            );
        }

        match store.listed("big", "1") {
            None => store.assert_unchanged(&before, &context),
            Some(_) => {
                // It committed before dying: exactly one new generation on top
                // of the previous ones, and the package in it is complete.
                committed += 1;
                store.assert_verify_clean(&context);
                let history = store.history();
                assert_eq!(
                    history.len(),
                    history_before.len() + 1,
                    "{context}: a committed add must add exactly one generation: {history:?}"
                );
                assert_eq!(
                    &history[..history_before.len()],
                    &history_before[..],
                    "{context}: old generations changed"
                );
                assert_eq!(
                    history.last().unwrap().packages,
                    history_before.last().unwrap().packages + 1,
                    "{context}: the new generation must hold the old packages plus big/1"
                );
                assert_files_json_match(&big_snap, &store.files("big/1"), &context);
                // Start over, so that later attempts write all the data again.
                store.ok(["remove", "big"]);
                store.ok(GC_NOW);
                store.assert_verify_clean(&format!("{context}, then removed and collected"));
            }
        }
        check_baseline(&store, &baseline, &scratch, &context);

        if (i + 1) % 10 == 0 {
            // Killed adds leave partial packs behind; collect them now and
            // then so the test's disk use stays bounded.
            let before_gc = packs_bytes(&store);
            store.ok(GC_NOW);
            store.assert_verify_clean(&format!("after gc following iteration {i}"));
            eprintln!(
                "after {} iterations: gc shrank the packs from {:.0} MB to {:.0} MB",
                i + 1,
                before_gc as f64 / 1e6,
                packs_bytes(&store) as f64 / 1e6
            );
        }
    }

    // The retry succeeds and the result is complete.
    store.ok(add_args("big", "1", &big));
    store.assert_verify_clean("after the final, uninterrupted add");
    let dest = scratch.join("export-big");
    store.export("big/1", &dest);
    assert_same_tree(&big, &dest, "export of the large tree after the crashes");
    check_baseline(&store, &baseline, &scratch, "at the end");
    eprintln!(
        "{n} iterations: {killed} adds killed mid-way, {committed} had committed before the kill"
    );
    assert!(
        killed >= n / 2,
        "only {killed} of {n} adds were still running when killed: the calibration ({typical:?}) does not reflect the real duration"
    );
}

/// Writes a small tree of incompressible files unique to `seed` (the live
/// data that shares packs with garbage in the gc test).
fn write_keep_tree(dir: &Path, seed: u64) -> u64 {
    let mut total = 0;
    for j in 0..8u64 {
        let len = 64 * 1024 + (j as usize) * 60 * 1024;
        let data = random_bytes(&[seed.to_le_bytes(), j.to_le_bytes()].concat(), len);
        write_file(&dir.join(format!("part-{j}.bin")), &data);
        total += len as u64;
    }
    total
}

#[test]
fn sigkill_during_gc_leaves_store_consistent() {
    let _heavy = heavy_test_guard();
    let mut rng = Rng::from_env("sigkill_during_gc");
    let n = iterations();
    let scratch = Scratch::new("crash-gc");
    let store = Store::init();
    let baseline = add_baseline(&store, &scratch);
    let mut live_bytes: u64 = baseline
        .iter()
        .map(|p| snapshot(&p.dir).content_bytes())
        .sum();

    // The garbage: a large tree added as Drop/<i> together with a small live
    // package Keep/<i> (so live and dead chunks share packs and gc has to
    // rewrite packs, not just delete them), then removed before each gc.
    let drop_root = scratch.join("garbage/Drop");
    let mut drop_dir: PathBuf = drop_root.join("0");
    build_large_tree(&drop_dir, env_knob("NEXUS_CRASH_GC_EXTRA_MB", 30), 0x6c);
    let mut keeps: Vec<(String, PathBuf)> = Vec::new();

    let mut typical = Duration::ZERO;
    let mut killed = 0;
    // Iteration 0 runs gc to completion to measure it.
    for i in 0..=n {
        if i > 0 {
            let next = drop_root.join(i.to_string());
            fs::rename(&drop_dir, &next).unwrap();
            drop_dir = next;
        }
        let keep_dir = scratch.join(format!("keep/Keep/{i}"));
        live_bytes += write_keep_tree(&keep_dir, i);
        store.ok([
            OsString::from("add"),
            keep_dir.clone().into_os_string(),
            drop_dir.clone().into_os_string(),
        ]);
        store.ok(["remove", "Drop"]);
        keeps.push((format!("Keep/{i}"), keep_dir.clone()));

        let before = store.state();
        let current_before: Generation = store.current_generation().expect("no generation");
        let context;
        if i == 0 {
            typical = store.ok(GC_NOW).elapsed;
            eprintln!("an uninterrupted gc of the large garbage takes {typical:.2?}");
            context = "calibration gc".to_string();
        } else {
            let args: Vec<OsString> = GC_NOW.iter().map(OsString::from).collect();
            let delay = kill_delay(&mut rng, i, Duration::from_millis(1), typical);
            let (status, was_killed, stderr) = run_and_kill(&store, &args, delay);
            context = format!("iteration {i}: `nip gc`, SIGKILL after {delay:.2?}");
            if was_killed {
                killed += 1;
            } else {
                assert!(
                    status.success(),
                    "{context}: it finished before the kill, but with {status}:\n{stderr}"
                );
            }
        }

        store.assert_verify_clean(&context);
        // gc may drop old generations, but never touches the current one.
        let after = store.state();
        assert_eq!(after.list, before.list, "{context}: `nip list` changed");
        assert_eq!(
            store.current_generation().as_ref(),
            Some(&current_before),
            "{context}: the current generation changed"
        );
        let dest = scratch.join("check-keep");
        store.export(&format!("Keep/{i}"), &dest);
        assert_same_tree(
            &keep_dir,
            &dest,
            &format!("{context}: Keep/{i}, which shares packs with the garbage"),
        );
        fs::remove_dir_all(&dest).unwrap();
        check_baseline(&store, &baseline[..1], &scratch, &context);
    }

    // A final gc succeeds, keeps everything live, and reclaims the garbage
    // (including the debris of the killed runs).
    store.ok(GC_NOW);
    store.assert_verify_clean("after the final gc");
    for (spec, dir) in &keeps {
        assert_files_json_match(
            &snapshot(dir),
            &store.files(spec),
            &format!("{spec} after the final gc"),
        );
    }
    check_baseline(&store, &baseline, &scratch, "after the final gc");
    let packs = packs_bytes(&store);
    eprintln!(
        "{n} gc runs: {killed} killed mid-way; packs hold {:.1} MB for {:.1} MB of live content",
        packs as f64 / 1e6,
        live_bytes as f64 / 1e6
    );
    assert!(
        packs <= live_bytes + live_bytes / 20 + (1 << 20),
        "after a complete `nip gc --keep 1 --grace 0` the packs still hold {packs} bytes for {live_bytes} bytes of live \
         (mostly incompressible) content: garbage or debris of killed runs was not reclaimed"
    );
    assert!(
        killed >= n / 2,
        "only {killed} of {n} gc runs were still running when killed: the calibration ({typical:?}) does not reflect the real duration"
    );
}
