//! Rumk guests on the store: the freestanding guest built from `rumk/`
//! boots under QEMU TCG on both machine types (`-M microvm`, virtio-mmio;
//! `-M q35`, virtio-pci) against the real `nexus serve --virtio-fs`
//! daemon, lists the Apps, reads grafted files of a real Debian package
//! and verifies their BLAKE3; a chunk corrupted on disk makes it report
//! the failure and exit with the failure status.
//!
//! Needs `qemu-system-x86_64` and root (as CI runs it); skipped otherwise.

use std::fs;
use std::process::Command;
use std::time::Duration;

use nexus_integration_tests::debs::fetch_debs;
use nexus_integration_tests::fixtures::{Scratch, random_bytes, write_file};
use nexus_integration_tests::rumk::{self, FAILED, Machine, VERIFIED};
use nexus_integration_tests::vm::Server;
use nexus_integration_tests::{Store, is_root};

/// Boot to exit takes well under a second under TCG; CI's two cores are
/// shared with other tests.
const GUEST_TIMEOUT: Duration = Duration::from_secs(60);

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

/// `RUMK ok APP/Current/PATH SIZE BLAKE3` for every regular file of
/// `spec`, from the bytes `nip cat` gives on the host (hashed here, not
/// taken from the store's record), sorted.
fn expected_lines(store: &Store, spec: &str) -> (Vec<String>, Vec<String>) {
    let app = spec.split('/').next().expect("NAME/VERSION");
    let mut paths = Vec::new();
    let mut lines = Vec::new();
    for f in store.files(spec).into_iter().filter(|f| f.kind == "file") {
        let data = store.cat(spec, &f.path).stdout;
        assert_eq!(data.len() as u64, f.size, "nip cat {spec} {}", f.path);
        let path = format!("{app}/Current/{}", f.path);
        lines.push(format!(
            "RUMK ok {path} {} {}",
            f.size,
            blake3::hash(&data).to_hex()
        ));
        paths.push(path);
    }
    lines.sort();
    (paths, lines)
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn a_rumk_guest_verifies_grafted_files_on_microvm_and_q35() {
    if !qemu_or_skip("a_rumk_guest_verifies_grafted_files_on_microvm_and_q35") {
        return;
    }
    rumk::kernel();
    let store = Store::init();
    let debs = fetch_debs(&["hello", "busybox-static"]);
    store.ok(["add".as_ref(), debs[0].as_os_str(), debs[1].as_os_str()]);
    let hello = store
        .list()
        .into_iter()
        .find(|p| p.name == "hello")
        .expect("hello is installed");
    let (paths, expected) = expected_lines(&store, &hello.spec());
    assert!(expected.len() > 5, "too few files to compare: {expected:?}");
    let args = paths.join(" ");

    let server = Server::start(store.path(), &[]);
    let scratch = Scratch::new("rumk");
    for machine in Machine::ALL {
        let console = scratch.join(format!("console-{}", machine.name()));
        let out = rumk::boot(machine, server.socket(), &console, &args, GUEST_TIMEOUT);
        eprintln!(
            "{machine:?}: boot, INIT, list, read and verify {} files: {:?}",
            paths.len(),
            out.elapsed
        );
        assert_eq!(
            out.status,
            Some(VERIFIED),
            "the {machine:?} guest did not report success:\n{}",
            out.console
        );
        assert_eq!(
            out.lines("RUMK apps:"),
            ["RUMK apps: busybox-static hello"],
            "the {machine:?} guest did not list the Apps:\n{}",
            out.console
        );
        assert_eq!(
            sorted(out.lines("RUMK ok ")),
            expected,
            "the {machine:?} guest read other bytes than the store holds:\n{}",
            out.console
        );
        assert!(out.lines("RUMK FAIL").is_empty(), "{}", out.console);
        assert_eq!(
            out.lines("RUMK done:"),
            [format!("RUMK done: {} verified, 0 failed", paths.len())]
        );
    }
    server.stop();
}

#[test]
fn a_corrupted_chunk_or_a_missing_file_makes_the_guest_fail() {
    if !qemu_or_skip("a_corrupted_chunk_or_a_missing_file_makes_the_guest_fail") {
        return;
    }
    rumk::kernel();
    let store = Store::init();
    let debs = fetch_debs(&["hello"]);
    store.ok(["add".as_ref(), debs[0].as_os_str()]);
    let packs = |dir: &std::path::Path| -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = fs::read_dir(dir)
            .expect("read the packs directory")
            .map(|e| e.expect("dir entry").path())
            .filter(|p| p.is_file())
            .collect();
        v.sort();
        v
    };
    let before = packs(&store.packs_dir());
    // Incompressible data in a transaction of its own: its pack holds
    // little but the raw payload, so a byte flipped in the middle of it
    // lands in the data's chunks.
    let tree = Scratch::new("rumk-junk");
    write_file(&tree.join("junk/1/data"), &random_bytes(b"rumk", 1 << 20));
    store.ok(["add".as_ref(), tree.join("junk/1").as_os_str()]);
    let new: Vec<_> = packs(&store.packs_dir())
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    assert_eq!(new.len(), 1, "expected one new pack: {new:?}");
    let mut bytes = fs::read(&new[0]).expect("read the pack");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    fs::write(&new[0], bytes).expect("write the damaged pack");

    let server = Server::start(store.path(), &[]);
    let scratch = Scratch::new("rumk");
    let out = rumk::boot(
        Machine::Microvm,
        server.socket(),
        &scratch.join("console"),
        "hello/Current/bin/hello junk/Current/data hello/Current/no-such-file",
        GUEST_TIMEOUT,
    );
    assert_eq!(
        out.status,
        Some(FAILED),
        "a damaged chunk did not make the guest fail:\n{}",
        out.console
    );
    let ok = out.lines("RUMK ok ");
    assert_eq!(ok.len(), 1, "{}", out.console);
    assert!(
        ok[0].starts_with("RUMK ok hello/Current/bin/hello "),
        "{}",
        out.console
    );
    let failed = out.lines("RUMK FAIL ");
    assert_eq!(failed.len(), 2, "{}", out.console);
    assert!(
        failed[0].starts_with("RUMK FAIL junk/Current/data: ")
            && (failed[0].contains("EIO") || failed[0].contains("BLAKE3 mismatch")),
        "the damaged file was not reported as unreadable or unverified:\n{}",
        out.console
    );
    assert_eq!(
        failed[1],
        "RUMK FAIL hello/Current/no-such-file: no such file"
    );
    assert_eq!(out.lines("RUMK done:"), ["RUMK done: 1 verified, 2 failed"]);
    server.stop();
}
