//! VM guests on the store: the real `nexus serve --virtio-fs` daemon serves
//! real QEMU guests (TCG, Debian's cloud kernel, a busybox initramfs built
//! here). A guest mounts the device, hashes grafted files (compared with
//! `nip export` of the same packages on the host), runs a grafted program
//! from the mount and finds writes refused; two guests at once share one
//! daemon and both see a generation switch within the documented bound.
//!
//! Needs `qemu-system-x86_64` and root (as CI runs it); skipped otherwise.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nexus_integration_tests::debs::fetch_debs;
use nexus_integration_tests::fixtures::{Scratch, random_bytes, write_file};
use nexus_integration_tests::nexus::wait_for;
use nexus_integration_tests::vm::{Guest, GuestKit, Server};
use nexus_integration_tests::{Store, is_root};

/// How long a guest may take from boot to power-off (about 5 s under TCG
/// on an idle machine; CI's two cores are shared with other tests).
const GUEST_TIMEOUT: Duration = Duration::from_secs(180);

/// How long after `nip switch` returns every guest must see `Current` move:
/// the daemon's bound for any change (`nexus_virtiofs::SWITCH_BOUND`, 1.1 s;
/// link targets alone take about 0.1 s) plus the guest's own polling
/// (50 ms) and console writes under TCG, with room for a loaded CI machine.
const SWITCH_SEEN_WITHIN: Duration = Duration::from_millis(3000);

fn qemu_or_skip(test: &str) -> bool {
    let qemu = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !qemu || !is_root() {
        eprintln!("{test}: skipped, needs root and qemu-system-x86_64");
    }
    qemu && is_root()
}

/// `SUM APP HASH  ./PATH` for every regular file below `dir`, sorted: the
/// same lines the guest script prints, computed with the host's sha256sum.
fn sums(app: &str, dir: &Path) -> Vec<String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd '{}' && find . -type f | sort | while read -r f; do echo \"SUM {app} $(sha256sum \"$f\")\"; done",
            dir.display()
        ))
        .output()
        .expect("run sha256sum");
    assert!(out.status.success(), "hashing {}", dir.display());
    lines_with(&String::from_utf8_lossy(&out.stdout), "SUM ")
}

/// The guest script fragment printing [`sums`] for `app`'s Current version.
fn guest_sums(app: &str) -> String {
    format!(
        "(cd /mnt/{app}/Current && find . -type f | sort | while read -r f; do echo \"SUM {app} $(sha256sum \"$f\")\"; done)\n"
    )
}

/// The console lines starting with `prefix`, sorted (console lines may end
/// in `\r`).
fn lines_with(text: &str, prefix: &str) -> Vec<String> {
    let mut lines: Vec<String> = text
        .lines()
        .map(|l| l.trim_end_matches('\r').to_string())
        .filter(|l| l.starts_with(prefix))
        .collect();
    lines.sort();
    lines
}

/// The Current version of `app`.
fn current(store: &Store, app: &str) -> String {
    store
        .list()
        .into_iter()
        .find(|p| p.name == app && p.current)
        .unwrap_or_else(|| panic!("{app} has no Current version"))
        .version
}

#[test]
fn a_guest_reads_hashes_and_runs_grafted_packages() {
    if !qemu_or_skip("a_guest_reads_hashes_and_runs_grafted_packages") {
        return;
    }
    let kit = GuestKit::get();
    let store = Store::init();
    let debs = fetch_debs(&["hello", "busybox-static"]);
    store.ok(["add".as_ref(), debs[0].as_os_str(), debs[1].as_os_str()]);
    let host = Scratch::new("virtiofs-host");
    let mut expected = Vec::new();
    for app in ["hello", "busybox-static"] {
        let dir = host.join(app);
        store.export(&format!("{app}/{}", current(&store, app)), &dir);
        expected.extend(sums(app, &dir));
    }
    expected.sort();
    assert!(expected.len() > 5, "too few files to compare: {expected:?}");

    let script = format!(
        "echo \"APPS $(ls /mnt | tr '\\n' ' ')\"\n\
         {}{}\
         echo \"RUN $(/mnt/busybox-static/Current/bin/busybox echo grafted busybox runs)\"\n\
         touch /mnt/new-file 2>&1 | sed 's/^/WRITE /'\n\
         mkdir /mnt/hello/new-dir 2>&1 | sed 's/^/WRITE /'\n\
         echo \"MOUNT $(grep ' /mnt ' /proc/mounts)\"\n",
        guest_sums("hello"),
        guest_sums("busybox-static"),
    );
    let server = Server::start(store.path(), &[]);
    let initramfs = kit.initramfs(host.path(), &script);
    let started = Instant::now();
    let console =
        Guest::boot(kit, &initramfs, server.socket(), &host.join("console")).finish(GUEST_TIMEOUT);
    eprintln!("boot, mount, hash and run: {:?}", started.elapsed());

    assert!(
        console.contains("APPS busybox-static hello "),
        "the guest does not list the Apps:\n{console}"
    );
    assert_eq!(
        lines_with(&console, "SUM "),
        expected,
        "the guest read other bytes than the store holds:\n{console}"
    );
    assert!(
        console.contains("RUN grafted busybox runs"),
        "the grafted busybox did not run from the mount:\n{console}"
    );
    let writes = lines_with(&console, "WRITE ");
    assert_eq!(writes.len(), 2, "writes were not refused:\n{console}");
    assert!(
        writes.iter().all(|l| l.contains("Read-only file system")),
        "writes were refused with the wrong error:\n{console}"
    );
    assert!(
        console.contains("MOUNT programs /mnt virtiofs ro"),
        "not a read-only virtio-fs mount:\n{console}"
    );
    server.stop();
}

#[test]
fn two_guests_at_once_share_the_store_and_follow_a_switch() {
    if !qemu_or_skip("two_guests_at_once_share_the_store_and_follow_a_switch") {
        return;
    }
    let kit = GuestKit::get();
    let store = Store::init();
    let src = Scratch::new("virtiofs-src");
    // Two versions of a small App, each with a multi-chunk file, added one
    // generation apart: generation 1 has Current -> 1, the live one -> 2.
    for v in ["1", "2"] {
        let dir = src.join(format!("demo/{v}"));
        write_file(&dir.join("version.txt"), format!("demo {v}\n").as_bytes());
        write_file(
            &dir.join("data.bin"),
            &random_bytes(format!("demo {v}").as_bytes(), 3 << 20),
        );
        store.ok(["add".as_ref(), dir.as_os_str()]);
    }
    assert_eq!(current(&store, "demo"), "2");
    let host = Scratch::new("virtiofs-host");
    store.export("demo/1", &host.join("demo-1"));
    let expected = sums("demo", &host.join("demo-1"));

    // Each guest says WAITING once it has read Current (which it may then
    // cache for up to GENERATION_TTL), polls the link until it moves, then
    // hashes the files it now leads to.
    let script = format!(
        "first=$(readlink /mnt/demo/Current)\n\
         echo \"WAITING $first\"\n\
         i=0\n\
         while [ \"$(readlink /mnt/demo/Current)\" = \"$first\" ]; do\n\
           i=$((i+1)); [ $i -gt 1200 ] && break\n\
           usleep 50000\n\
         done\n\
         echo \"SWITCHED $(readlink /mnt/demo/Current) $(cat /mnt/demo/Current/version.txt)\"\n\
         {}",
        guest_sums("demo")
    );
    let server = Server::start(store.path(), &[]);
    let a_dir = Scratch::new("virtiofs-guest-a");
    let b_dir = Scratch::new("virtiofs-guest-b");
    let a_init = kit.initramfs(a_dir.path(), &script);
    let b_init = kit.initramfs(b_dir.path(), &script);
    let started = Instant::now();
    let a = Guest::boot(kit, &a_init, server.socket(), &a_dir.join("console"));
    let b = Guest::boot(kit, &b_init, server.socket(), &b_dir.join("console"));
    // Stop waiting early when a guest has ended (or died) instead.
    let ended = |c: &str| c.contains("NEXUS-GUEST-DONE") || c.contains("Kernel panic");
    wait_for(GUEST_TIMEOUT, || {
        let (ca, cb) = (a.console(), b.console());
        (ca.contains("WAITING 2") && cb.contains("WAITING 2")) || ended(&ca) || ended(&cb)
    });
    let both_waiting = a.console().contains("WAITING 2") && b.console().contains("WAITING 2");
    assert!(
        both_waiting,
        "the guests did not both read Current -> 2:\n--- a ---\n{}\n--- b ---\n{}\n--- daemon ---\n{}",
        a.console(),
        b.console(),
        server.log()
    );
    eprintln!("two guests booted and mounted: {:?}", started.elapsed());

    store.ok(["switch", "1"]);
    let switched = Instant::now();
    let mut seen = Vec::new();
    for guest in [&a, &b] {
        wait_for(Duration::from_secs(60), || {
            guest.console().contains("SWITCHED")
        });
        seen.push(switched.elapsed());
    }
    eprintln!("the switch reached the guests after {seen:?}");
    let consoles = [a.finish(GUEST_TIMEOUT), b.finish(GUEST_TIMEOUT)];
    for console in &consoles {
        assert!(
            console.contains("SWITCHED 1 demo 1"),
            "a guest did not follow the switch:\n{console}"
        );
        assert_eq!(
            lines_with(console, "SUM "),
            expected,
            "a guest read other bytes than the store holds:\n{console}"
        );
    }
    for delay in &seen {
        assert!(
            *delay <= SWITCH_SEEN_WITHIN,
            "a guest saw the switch only after {delay:?} (bound {SWITCH_SEEN_WITHIN:?})"
        );
    }
    let log = server.log();
    assert!(
        log.contains("guest-0 connected") && log.contains("guest-1 connected"),
        "the daemon did not serve two guests:\n{log}"
    );
    server.stop();
}
