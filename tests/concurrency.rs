//! Concurrency: four `nip add` processes import different real packages at
//! the same time while `nip gc --keep 1 --grace 0` runs in a loop. Every
//! package must land (each add succeeds, and the final generation holds all
//! of them: no lost update between concurrent commits), nothing already stored
//! may be lost, every package must export identically, and verify must be
//! clean.
//!
//! The second test makes the race nastier: the packages' data is already in
//! the store as garbage (added, then removed), so the adds want to reuse
//! chunks that the concurrent gc is deleting at that very moment.

use std::ffi::OsString;
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nexus_integration_tests::debs::{Unpacked, fetch_and_unpack};
use nexus_integration_tests::fixtures::Scratch;
use nexus_integration_tests::nip::Run;
use nexus_integration_tests::tree::assert_same_tree;
use nexus_integration_tests::{Store, heavy_test_guard};

/// Four real packages of 8–29 MB each, with thousands of files between them.
const PACKAGES: [&str; 4] = [
    "coreutils",
    "perl-modules-5.36",
    "libperl5.36",
    "libpython3.11-stdlib",
];

/// What one concurrent round produced.
struct Round {
    adds: Vec<Run>,
    gcs: Vec<Run>,
}

/// Starts the four adds (`add_args[i]` each) at once, plus a thread running
/// `nip gc --keep 1 --grace 0` back to back until all adds have finished,
/// starting `gc_delay` later or as soon as the first add has finished,
/// whichever comes first: adds that reuse garbage can all end within a
/// fraction of the delay, and a round in which gc never ran tests nothing.
fn concurrent_round(store: &Store, add_args: &[Vec<OsString>], gc_delay: Duration) -> Round {
    let start = Barrier::new(add_args.len() + 1);
    let adds_done = AtomicBool::new(false);
    let adds_finished = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let gc = s.spawn(|| {
            start.wait();
            let woke = Instant::now();
            while woke.elapsed() < gc_delay && adds_finished.load(Ordering::SeqCst) == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            let mut runs = Vec::new();
            while !adds_done.load(Ordering::SeqCst) {
                runs.push(store.run(["gc", "--keep", "1", "--grace", "0"]));
            }
            runs
        });
        let adders: Vec<_> = add_args
            .iter()
            .map(|args| {
                let (start, adds_finished) = (&start, &adds_finished);
                s.spawn(move || {
                    start.wait();
                    let run = store.run(args);
                    adds_finished.fetch_add(1, Ordering::SeqCst);
                    run
                })
            })
            .collect();
        let adds: Vec<Run> = adders
            .into_iter()
            .map(|h| h.join().expect("add thread panicked"))
            .collect();
        adds_done.store(true, Ordering::SeqCst);
        let gcs = gc.join().expect("gc thread panicked");
        Round { adds, gcs }
    })
}

/// Checks a round: every process succeeded and gc really ran alongside.
fn check_round(round: &Round, context: &str) {
    for run in &round.adds {
        assert!(run.success(), "{context}: a concurrent add failed:\n{run}");
    }
    for run in &round.gcs {
        assert!(
            run.success(),
            "{context}: a gc running alongside the adds failed:\n{run}"
        );
    }
    let slowest_add = round.adds.iter().map(|r| r.elapsed).max().unwrap();
    eprintln!(
        "{context}: adds took {:?}; {} gc runs meanwhile",
        round.adds.iter().map(|r| r.elapsed).collect::<Vec<_>>(),
        round.gcs.len()
    );
    assert!(
        !round.gcs.is_empty(),
        "{context}: no gc ran while the adds ({slowest_add:?}) were running"
    );
}

/// Checks that exactly `expected` (spec, source) are listed as current,
/// export identically, and that verify is clean.
fn check_store(store: &Store, scratch: &Scratch, expected: &[(String, &Unpacked)], context: &str) {
    let listed = store.list();
    let current = store
        .current_generation()
        .expect("no generation after the adds");
    assert_eq!(
        current.packages,
        expected.len() as u64,
        "{context}: the current generation should hold exactly {} packages (a concurrent commit was lost?): {current:?}; listed: {listed:?}",
        expected.len()
    );
    for (spec, src) in expected {
        let pkg = listed
            .iter()
            .find(|p| &p.spec() == spec)
            .unwrap_or_else(|| panic!("{context}: {spec} is missing from `nip list`: {listed:?}"));
        assert!(
            pkg.current,
            "{context}: {spec} is the only version of its App and must be current"
        );
        let dest = scratch.join(format!("export-{}", spec.replace('/', "@")));
        store.export(spec, &dest);
        assert_same_tree(&src.dir, &dest, &format!("{context}: export of {spec}"));
        std::fs::remove_dir_all(&dest).unwrap();
    }
    store.assert_verify_clean(context);
}

#[test]
fn concurrent_adds_while_gc_loops() {
    let _heavy = heavy_test_guard();
    let scratch = Scratch::new("concurrency");
    let base = fetch_and_unpack(&["hello"], &scratch.join("base"));
    let pkgs = fetch_and_unpack(&PACKAGES, &scratch.join("src"));
    let store = Store::init();
    store.ok([OsString::from("add"), base[0].arg().to_owned()]);

    let t = Instant::now();
    let args: Vec<Vec<OsString>> = pkgs
        .iter()
        .map(|p| vec!["add".into(), p.arg().to_owned()])
        .collect();
    let round = concurrent_round(&store, &args, Duration::ZERO);
    check_round(&round, "concurrent adds of fresh packages");
    eprintln!("round took {:?}", t.elapsed());

    let mut expected: Vec<(String, &Unpacked)> = vec![(base[0].spec(), &base[0])];
    expected.extend(pkgs.iter().map(|p| (p.spec(), p)));
    check_store(&store, &scratch, &expected, "after concurrent adds");
}

#[test]
fn concurrent_adds_reusing_garbage_while_gc_loops() {
    let _heavy = heavy_test_guard();
    let scratch = Scratch::new("concurrency-reuse");
    let pkgs = fetch_and_unpack(&PACKAGES, &scratch.join("src"));
    let store = Store::init();

    // Rounds 1..=3: the data of the previous round is garbage (its packages
    // were removed) when the same trees are added again under a new version.
    // `one_add` is roughly how long one add takes on its own.
    let mut add_all = vec![OsString::from("add")];
    add_all.extend(pkgs.iter().map(|p| p.arg().to_owned()));
    let one_add = store.ok(&add_all).elapsed / pkgs.len() as u32;
    let mut previous: Vec<String> = pkgs.iter().map(|p| p.spec()).collect();
    for round_no in 1..=3 {
        let mut remove = vec![OsString::from("remove")];
        remove.extend(previous.iter().map(OsString::from));
        store.ok(&remove);

        let version = format!("round{round_no}");
        let args: Vec<Vec<OsString>> = pkgs
            .iter()
            .map(|p| {
                vec![
                    "add".into(),
                    "--name".into(),
                    p.name.clone().into(),
                    "--version".into(),
                    version.clone().into(),
                    p.arg().to_owned(),
                ]
            })
            .collect();
        let context = format!("round {round_no}: re-adding removed data while gc deletes it");
        // The gc loop starts a little later each round, so that its first,
        // busiest pass (deleting the garbage) meets the adds at a different
        // stage: scanning, chunk lookup, writing, committing.
        let gc_delay = one_add.mul_f64(0.3 * (round_no - 1) as f64);
        let round = concurrent_round(&store, &args, gc_delay);
        check_round(&round, &context);

        let expected: Vec<(String, &Unpacked)> = pkgs
            .iter()
            .map(|p| (format!("{}/{version}", p.name), p))
            .collect();
        check_store(&store, &scratch, &expected, &context);
        previous = expected.into_iter().map(|(spec, _)| spec).collect();
    }
}
