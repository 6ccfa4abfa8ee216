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

#[test]
fn a_file_whose_bytes_differ_from_the_recorded_hash_fails_verification() {
    if !qemu_or_skip("a_file_whose_bytes_differ_from_the_recorded_hash_fails_verification") {
        return;
    }
    rumk::kernel();
    let store = Store::init();
    let debs = fetch_debs(&["hello"]);
    store.ok(["add".as_ref(), debs[0].as_os_str()]);
    let hello = store
        .list()
        .into_iter()
        .find(|p| p.name == "hello")
        .expect("hello");
    let real = blake3::hash(&store.cat(&hello.spec(), "bin/hello").stdout);
    let forged = blake3::hash(b"not the bytes of bin/hello");
    // The catalog records each content's BLAKE3 (blobs.hash, FORMAT.md);
    // the chunks stay intact, so the daemon serves the real bytes and only
    // the guest's whole-file check can notice.
    let db = rusqlite::Connection::open(store.path().join("catalog.db")).expect("open the catalog");
    let changed = db
        .execute(
            "UPDATE blobs SET hash = ?1 WHERE hash = ?2",
            (forged.as_bytes().as_slice(), real.as_bytes().as_slice()),
        )
        .expect("forge the recorded hash");
    assert_eq!(changed, 1, "bin/hello's content is not in blobs");
    drop(db);

    let server = Server::start(store.path(), &[]);
    let scratch = Scratch::new("rumk");
    let out = rumk::boot(
        Machine::Q35,
        server.socket(),
        &scratch.join("console"),
        "hello/Current/bin/hello hello/Current/share/doc/hello/copyright",
        GUEST_TIMEOUT,
    );
    assert_eq!(out.status, Some(FAILED), "{}", out.console);
    assert_eq!(
        out.lines("RUMK FAIL "),
        [format!(
            "RUMK FAIL hello/Current/bin/hello: BLAKE3 mismatch: recorded {}, read {}",
            forged.to_hex(),
            real.to_hex()
        )],
        "{}",
        out.console
    );
    assert_eq!(out.lines("RUMK ok ").len(), 1, "{}", out.console);
    server.stop();
}

/// `nexus` with a clean environment.
fn nexus(store: &std::path::Path) -> Command {
    let mut c = Command::new(nexus_integration_tests::nexus_bin());
    c.arg("--store")
        .arg(store)
        .env_remove("NEXUS_STORE")
        .env_remove("CARGO_TARGET_DIR")
        .env("RUST_BACKTRACE", "1");
    c
}

fn show(out: &std::process::Output) -> String {
    format!(
        "exit {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn nexus_build_rumk_grafts_the_guest_and_nexus_rumk_run_boots_it() {
    if !qemu_or_skip("nexus_build_rumk_grafts_the_guest_and_nexus_rumk_run_boots_it") {
        return;
    }
    // nexus build rumk compiles the guest in its build sandbox, from the
    // crates of its pinned fetch, in a private target directory.
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let store = Store::init();
    let debs = fetch_debs(&["hello"]);
    store.ok(["add".as_ref(), debs[0].as_os_str()]);

    let build = |what: &str| {
        let out = nexus(store.path())
            .args(["build", "rumk", "--source"])
            .arg(&source)
            .output()
            .expect("run nexus build rumk");
        assert!(
            out.status.success(),
            "nexus build rumk ({what}):\n{}",
            show(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = build("first");
    assert!(first.starts_with("added rumk/"), "{first}");
    // Stored already: reused, as a profile build reuses what fits.
    let again = build("again");
    assert!(
        again.starts_with("nothing to do: rumk/"),
        "a second build changed the store: {again}"
    );
    let rumk = store
        .list()
        .into_iter()
        .find(|p| p.name == "rumk")
        .expect("rumk is grafted");
    let files: Vec<_> = store
        .files(&rumk.spec())
        .into_iter()
        .map(|f| f.path)
        .collect();
    assert!(files.contains(&"boot/rumk".to_string()), "{files:?}");

    for machine in ["microvm", "q35"] {
        let out = nexus(store.path())
            .args(["rumk", "run", "--machine", machine, "--"])
            .args(["hello/Current/bin/hello", "rumk/Current/boot/rumk"])
            .output()
            .expect("run nexus rumk run");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{machine}:\n{}", show(&out));
        assert!(
            stdout.contains("RUMK apps: hello rumk"),
            "{machine}:\n{}",
            show(&out)
        );
        assert!(
            stdout.contains("RUMK done: 2 verified, 0 failed"),
            "{machine}:\n{}",
            show(&out)
        );
    }
    // A failed verification is exit code 3, as for nip verify.
    let out = nexus(store.path())
        .args(["rumk", "run", "--", "hello/Current/no-such-file"])
        .output()
        .expect("run nexus rumk run");
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    // Generation 1 predates the guest: there is no kernel to boot.
    let out = nexus(store.path())
        .args([
            "rumk",
            "run",
            "--generation",
            "1",
            "--",
            "hello/Current/bin/hello",
        ])
        .output()
        .expect("run nexus rumk run");
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nexus build rumk"),
        "{}",
        show(&out)
    );

    // A signed image carries the guest with it: once rumk is removed from
    // the store, --image still boots the image's own kernel, served from
    // the image.
    let scratch = Scratch::new("rumk-image");
    let image = scratch.join("system.npk");
    for args in [
        vec!["key", "generate", "admin"],
        vec![
            "snapshot",
            "--key",
            "admin",
            "-o",
            image.to_str().expect("UTF-8 path"),
        ],
    ] {
        let out = nexus(store.path()).args(&args).output().expect("run nexus");
        assert!(out.status.success(), "nexus {args:?}:\n{}", show(&out));
    }
    store.ok(["remove", "rumk"]);
    let out = nexus(store.path())
        .args(["rumk", "run", "--image"])
        .arg(&image)
        .args(["--", "rumk/Current/boot/rumk"])
        .output()
        .expect("run nexus rumk run --image");
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("RUMK done: 1 verified, 0 failed"),
        "{}",
        show(&out)
    );
}

#[test]
fn two_rumk_guests_and_a_linux_guest_share_one_store_at_once() {
    if !qemu_or_skip("two_rumk_guests_and_a_linux_guest_share_one_store_at_once") {
        return;
    }
    rumk::kernel();
    let kit = nexus_integration_tests::vm::GuestKit::get();
    let store = Store::init();
    let debs = fetch_debs(&["hello"]);
    store.ok(["add".as_ref(), debs[0].as_os_str()]);
    let hello = store
        .list()
        .into_iter()
        .find(|p| p.name == "hello")
        .expect("hello");
    let (paths, expected) = expected_lines(&store, &hello.spec());
    let args = paths.join(" ");
    let server = Server::start(store.path(), &[]);
    let scratch = Scratch::new("rumk-share");

    // The Linux guest hashes hello's binary, then keeps reading its mount
    // until the App `rumk-done` appears in it: the test adds that App once
    // both Rumk guests have finished, so all three certainly overlapped.
    let script = "echo \"SUM $(sha256sum /mnt/hello/Current/bin/hello)\"\n\
                  i=0; while [ ! -e /mnt/rumk-done ] && [ $i -lt 900 ]; do ls /mnt/hello/Current/bin >/dev/null; i=$((i+1)); sleep 0.2; done\n\
                  echo \"WAITED $i\"\n\
                  echo \"SUM2 $(sha256sum /mnt/hello/Current/bin/hello)\"\n";
    let initramfs = kit.initramfs(scratch.path(), script);
    let linux = nexus_integration_tests::vm::Guest::boot(
        kit,
        &initramfs,
        server.socket(),
        &scratch.join("linux-console"),
    );
    let mounted = nexus_integration_tests::nexus::wait_for(Duration::from_secs(180), || {
        linux.console().contains("NEXUS-GUEST-MOUNTED")
    });
    assert!(
        mounted,
        "the Linux guest did not mount:\n{}",
        linux.console()
    );

    let guests: Vec<_> = Machine::ALL
        .iter()
        .map(|&m| {
            rumk::spawn(
                m,
                server.socket(),
                &scratch.join(format!("rumk-{}", m.name())),
                &args,
            )
        })
        .collect();
    for (guest, machine) in guests.into_iter().zip(Machine::ALL) {
        let out = guest.finish(GUEST_TIMEOUT);
        assert_eq!(out.status, Some(VERIFIED), "{machine:?}:\n{}", out.console);
        assert_eq!(
            sorted(out.lines("RUMK ok ")),
            expected,
            "{machine:?}:\n{}",
            out.console
        );
    }
    let linux_still_up = !linux.console().contains("WAITED");
    let marker = scratch.join("rumk-done/1");
    write_file(&marker.join("done"), b"both Rumk guests finished\n");
    store.ok(["add".as_ref(), marker.as_os_str()]);
    let console = linux.finish(Duration::from_secs(240));
    assert!(
        !console.contains("WAITED 900"),
        "the Linux guest never saw rumk-done appear:\n{console}"
    );
    let sums: Vec<&str> = console
        .lines()
        .filter(|l| l.starts_with("SUM"))
        .map(|l| l.split_whitespace().nth(1).unwrap_or(""))
        .collect();
    let host = store.cat(&hello.spec(), "bin/hello").stdout;
    let host_sum = {
        let out = Command::new("sha256sum")
            .arg("-")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().expect("stdin").write_all(&host)?;
                c.wait_with_output()
            })
            .expect("run sha256sum");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(sums, [host_sum.as_str(), host_sum.as_str()], "{console}");
    assert!(
        linux_still_up,
        "the Linux guest stopped reading before the Rumk guests ended:\n{console}"
    );
    server.stop();
}
