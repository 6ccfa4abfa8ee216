//! The daemons' sandbox (`cli/src/nexus/sandbox`, ARCHITECTURE.md "Threat
//! model"), checked from outside on the real running daemons: every
//! thread of `nexus mount` and `nexus serve --virtio-fs` has
//! `no_new_privs`, a seccomp filter, only the documented capabilities and
//! an unprivileged user; what an attacker who took a daemon over would try
//! fails inside the real daemon (`--sandbox-selftest`); and the confined
//! daemons still serve: real packages read and run from the mount, a
//! generation switch and gc under it, SIGTERM unmounting, vhost-user
//! clients connecting one after another (tests/virtiofs.rs boots QEMU
//! guests against the same, confined, daemon).
//!
//! Needs root (FUSE, and the sandbox's user switch); skipped otherwise.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nexus_integration_tests::fixtures::{Scratch, write_file};
use nexus_integration_tests::nexus::{alive, is_mounted, nexus, show, wait_for};
use nexus_integration_tests::vm::Server;
use nexus_integration_tests::{Mount, Store, fetch_debs, nexus_bin, root_or_skip};

/// `CAP_DAC_OVERRIDE | CAP_DAC_READ_SEARCH`: what a confined daemon keeps.
const SERVER_CAPS: u64 = 0x6;
/// `CAP_SYS_ADMIN | CAP_DAC_OVERRIDE`: what the keeper keeps.
const KEEPER_CAPS: u64 = (1 << 21) | (1 << 1);

/// What the selftest must find refused, and what must still work.
const REFUSED: [&str; 19] = [
    "read-etc-shadow",
    "write-catalog",
    "write-catalog-wal",
    "write-catalog-shm",
    "create-in-store",
    "plant-kernel-view-image",
    "write-proc-self-mem",
    "chmod-catalog",
    "socket-inet",
    "connect-unix",
    "fork",
    "execve",
    "ptrace-init",
    "mount",
    "open-by-handle",
    "setuid-root",
    "kill-init",
    "unshare-user",
    "mmap-exec",
];
const ALLOWED: [&str; 3] = ["read-catalog", "list-packs", "spawn-thread"];

/// The fields of `/proc/PID/task/TID/status`, if the thread still exists.
fn task_status(pid: i32, tid: i32) -> Option<BTreeMap<String, String>> {
    let text = fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
    Some(
        text.lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect(),
    )
}

/// The fields of `/proc/PID/status`.
fn status(pid: i32, tid: i32) -> BTreeMap<String, String> {
    task_status(pid, tid).unwrap_or_else(|| panic!("no status of {pid}/{tid}"))
}

fn threads(pid: i32) -> Vec<i32> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap_or_else(|e| panic!("threads of {pid}: {e}"))
        .map(|e| e.unwrap().file_name().to_string_lossy().parse().unwrap())
        .collect()
}

fn hex(field: &str) -> u64 {
    u64::from_str_radix(field, 16).unwrap_or_else(|e| panic!("{field:?}: {e}"))
}

/// The sandbox user's uid: `nexus` if it exists, else `nobody`.
fn sandbox_uid() -> u32 {
    for name in [c"nexus", c"nobody"] {
        // SAFETY: getpwnam with a NUL-terminated name; the result is read
        // at once.
        let entry = unsafe { libc::getpwnam(name.as_ptr()) };
        if !entry.is_null() {
            // SAFETY: a valid passwd entry.
            return unsafe { (*entry).pw_uid };
        }
    }
    panic!("neither a nexus nor a nobody user exists");
}

/// Fails unless every thread of `pid` is confined as documented.
fn assert_confined(pid: i32, who: &str) {
    let uid = sandbox_uid().to_string();
    let tids = threads(pid);
    assert!(tids.len() > 1, "{who}: one thread only?");
    for tid in tids {
        // A thread may end between the listing and the reading.
        let Some(s) = task_status(pid, tid) else {
            continue;
        };
        let what = format!("{who}, thread {tid} ({})", s["Name"]);
        assert_eq!(s["NoNewPrivs"], "1", "{what}: no_new_privs");
        assert_eq!(s["Seccomp"], "2", "{what}: seccomp filter");
        assert_eq!(
            hex(&s["CapEff"]),
            SERVER_CAPS,
            "{what}: effective capabilities"
        );
        assert_eq!(
            hex(&s["CapPrm"]),
            SERVER_CAPS,
            "{what}: permitted capabilities"
        );
        assert_eq!(hex(&s["CapBnd"]), SERVER_CAPS, "{what}: bounding set");
        assert_eq!(hex(&s["CapInh"]), 0, "{what}: inheritable capabilities");
        assert_eq!(hex(&s["CapAmb"]), 0, "{what}: ambient capabilities");
        let uids: Vec<&str> = s["Uid"].split_whitespace().collect();
        assert_eq!(uids, [uid.as_str(); 4], "{what}: user ids");
        assert_ne!(uid, "0");
        assert!(s["Groups"].is_empty(), "{what}: groups {}", s["Groups"]);
    }
    // Its own network namespace: not the host's.
    let ours = fs::read_link("/proc/self/ns/net").unwrap();
    let theirs = fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    assert_ne!(ours, theirs, "{who} shares the host's network namespace");
}

/// The keeper process of daemon `pid` (its only child).
fn keeper_of(pid: i32) -> i32 {
    let children = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    let children: Vec<i32> = children
        .split_whitespace()
        .map(|c| c.parse().unwrap())
        .collect();
    assert_eq!(children.len(), 1, "the daemon's children: {children:?}");
    children[0]
}

/// Fails unless the keeper is what the sandbox documents: root, only
/// `CAP_SYS_ADMIN` (for a mount) and `CAP_DAC_OVERRIDE`, its own filter.
fn assert_keeper(keeper: i32, mount: bool) {
    let s = status(keeper, keeper);
    assert_eq!(s["Name"], "nexus-keeper");
    assert_eq!(s["Seccomp"], "2", "the keeper's filter");
    assert_eq!(s["NoNewPrivs"], "1");
    let caps = if mount { KEEPER_CAPS } else { 1 << 1 };
    assert_eq!(hex(&s["CapEff"]), caps, "the keeper's capabilities");
    assert_eq!(hex(&s["CapBnd"]), caps, "the keeper's bounding set");
}

/// Waits for the selftest report and checks it: every attack refused,
/// what serving needs allowed.
fn assert_selftest(report: &Path) {
    let complete = |text: &str| text.contains("\"spawn-thread\"");
    assert!(
        wait_for(Duration::from_secs(20), || fs::read_to_string(report)
            .is_ok_and(|t| complete(&t))),
        "no complete selftest report at {}",
        report.display()
    );
    let text = fs::read_to_string(report).unwrap();
    let outcomes: BTreeMap<String, serde_json::Value> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["probe"].as_str().unwrap().to_string(), v)
        })
        .collect();
    for probe in REFUSED {
        let outcome = outcomes
            .get(probe)
            .unwrap_or_else(|| panic!("the selftest did not try {probe}:\n{text}"));
        assert_eq!(
            outcome["allowed"], false,
            "the confined daemon could {probe}: {outcome}"
        );
        // EACCES from Landlock, EPERM from seccomp: a refusal, not an
        // accident such as ENOENT.
        let errno = outcome["errno"].as_i64().unwrap() as i32;
        assert!(
            [libc::EACCES, libc::EPERM].contains(&errno),
            "{probe} failed, but not because it was refused: {outcome}"
        );
    }
    for probe in ALLOWED {
        assert_eq!(
            outcomes[probe]["allowed"], true,
            "the confined daemon cannot {probe}, which serving needs: {}",
            outcomes[probe]
        );
    }
}

/// A store with a real Debian package (hello) and a small directory
/// package `demo/1`.
fn store_with_packages(scratch: &Scratch) -> Store {
    let store = demo_store(scratch);
    let debs = fetch_debs(&["hello"]);
    store.ok([OsString::from("add"), debs[0].clone().into_os_string()]);
    store
}

/// A store with only `demo/1`.
fn demo_store(scratch: &Scratch) -> Store {
    let store = Store::init();
    add_demo(&store, scratch, "1");
    store
}

fn add_demo(store: &Store, scratch: &Scratch, version: &str) {
    let dir = scratch.join(format!("demo-{version}"));
    write_file(
        &dir.join("bin/tool"),
        format!("demo {version}\n").as_bytes(),
    );
    store.ok([
        OsString::from("add"),
        dir.into_os_string(),
        "--name".into(),
        "demo".into(),
        "--version".into(),
        version.into(),
    ]);
}

#[test]
fn the_mount_daemon_serves_confined() {
    if !root_or_skip("the_mount_daemon_serves_confined") {
        return;
    }
    let scratch = Scratch::new("sandbox-mount");
    let store = store_with_packages(&scratch);
    let report = scratch.join("selftest");
    let mount = Mount::start(
        store.path(),
        &scratch.join("mnt"),
        &["--sandbox-selftest", report.to_str().unwrap()],
    );
    assert_selftest(&report);
    assert_confined(mount.pid(), "nexus mount");
    let keeper = keeper_of(mount.pid());
    assert_keeper(keeper, true);
    assert!(
        mount.log().contains("sandboxed: user"),
        "the log does not say how the daemon is confined:\n{}",
        mount.log()
    );

    // Real reads: a grafted program runs from the mount.
    let hello = Command::new(mount.join("hello/Current/bin/hello"))
        .output()
        .expect("run hello from the mount");
    assert_eq!(String::from_utf8_lossy(&hello.stdout), "Hello, world!\n");
    assert_eq!(
        fs::read(mount.join("demo/1/bin/tool")).unwrap(),
        b"demo 1\n"
    );

    // A new generation shows, and gc collects the old one under it.
    add_demo(&store, &scratch, "2");
    assert!(
        wait_for(Duration::from_secs(5), || {
            fs::read_link(mount.join("demo/Current")).is_ok_and(|t| t == Path::new("2"))
        }),
        "the switch to demo/2 does not show:\n{}",
        mount.log()
    );
    store.ok(["remove", "demo/1"]);
    // The daemon's runtime record (written confined) keeps what it still
    // serves for a grace period after the switch; then gc takes it.
    let mut gc = serde_json::Value::Null;
    assert!(
        wait_for(Duration::from_secs(15), || {
            gc = store.json(["gc", "--keep", "1", "--grace", "0"]);
            gc["packages_deleted"].as_u64().unwrap() >= 1
        }),
        "gc never collected demo/1: {gc}"
    );
    assert!(
        wait_for(Duration::from_secs(5), || !mount.join("demo/1").exists()),
        "the removed version still shows"
    );
    assert_eq!(
        fs::read(mount.join("demo/Current/bin/tool")).unwrap(),
        b"demo 2\n"
    );
    // New request threads, if any, are confined too.
    assert_confined(mount.pid(), "nexus mount after gc");

    // SIGTERM: the keeper unmounts, both processes end.
    // SAFETY: plain kill(2) of the daemon this test started.
    assert_eq!(unsafe { libc::kill(mount.pid(), libc::SIGTERM) }, 0);
    mount.assert_gone(Duration::from_secs(10), "after SIGTERM");
    assert!(
        wait_for(Duration::from_secs(5), || !alive(keeper)),
        "the keeper outlived its daemon"
    );
}

/// A daemon killed outright (SIGKILL; a seccomp kill would look the same)
/// leaves no dead mount behind: its keeper detaches it. Before the
/// sandbox, `/Programs` then failed with ENOTCONN until an admin came.
#[test]
fn a_daemon_killed_outright_leaves_no_dead_mount() {
    if !root_or_skip("a_daemon_killed_outright_leaves_no_dead_mount") {
        return;
    }
    let scratch = Scratch::new("sandbox-killed");
    let store = demo_store(&scratch);
    let mount = Mount::start(store.path(), &scratch.join("mnt"), &[]);
    let keeper = keeper_of(mount.pid());
    // SAFETY: plain kill(2) of the daemon this test started.
    assert_eq!(unsafe { libc::kill(mount.pid(), libc::SIGKILL) }, 0);
    assert!(
        wait_for(Duration::from_secs(10), || !is_mounted(mount.point())),
        "the killed daemon's mount is still there"
    );
    fs::read_dir(mount.point()).expect("the mount point is a plain directory again");
    assert!(wait_for(Duration::from_secs(5), || !alive(keeper)));
}

/// The device number of the file system at `point` (major, minor).
fn device_of(point: &Path) -> u64 {
    fs::symlink_metadata(point).unwrap().dev()
}

/// A keeper outliving its daemon's mount must not unmount the mount made
/// at the same path since (`umount /Programs; mount /Programs`): that one
/// often gets the very device number the old one had, so the keeper knows
/// its mount by its unique id.
#[test]
fn a_keeper_never_unmounts_a_newer_mount_at_its_path() {
    if !root_or_skip("a_keeper_never_unmounts_a_newer_mount_at_its_path") {
        return;
    }
    let scratch = Scratch::new("sandbox-remount");
    let store = demo_store(&scratch);
    let first = Mount::start(store.path(), &scratch.join("mnt"), &[]);
    let keeper = keeper_of(first.pid());
    let old_device = device_of(first.point());
    // The old daemon stops answering; its mount is detached from outside
    // and a new daemon mounts the same path.
    // SAFETY: plain kill(2) of the daemon this test started.
    assert_eq!(unsafe { libc::kill(first.pid(), libc::SIGSTOP) }, 0);
    let out = Command::new("umount")
        .arg("-l")
        .arg(first.point())
        .output()
        .unwrap();
    assert!(out.status.success(), "umount -l: {}", show(&out));
    let second = Mount::start(store.path(), first.point(), &[]);
    let reused = device_of(second.point()) == old_device;
    // The old daemon dies: its keeper cleans up what is still its own.
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(first.pid(), libc::SIGKILL) }, 0);
    assert!(wait_for(Duration::from_secs(10), || !alive(keeper)));
    assert!(
        is_mounted(second.point()),
        "the old keeper unmounted the new daemon's mount (device number reused: {reused})"
    );
    assert_eq!(
        fs::read(second.join("demo/1/bin/tool")).unwrap(),
        b"demo 1\n"
    );
    second.umount();
}

/// `nexus takeover` with the sandbox on: the confined daemon hands its
/// mount over through the socket it bound before confinement (accept,
/// `SO_PEERCRED`, `sendmsg` with `SCM_RIGHTS`, all allowed it); its keeper
/// exits without unmounting; the successor confines itself and gets a
/// keeper of its own, which detaches the mount when the successor is
/// killed.
#[test]
fn a_confined_daemon_hands_over_to_a_confined_successor_with_its_own_keeper() {
    if !root_or_skip("a_confined_daemon_hands_over_to_a_confined_successor") {
        return;
    }
    let scratch = Scratch::new("sandbox-takeover");
    let store = demo_store(&scratch);
    let mount = Mount::start(store.path(), &scratch.join("mnt"), &[]);
    assert_confined(mount.pid(), "the first daemon");
    let first_keeper = keeper_of(mount.pid());
    let mut held = fs::File::open(mount.join("demo/1/bin/tool")).unwrap();

    let out = nexus(
        store.path(),
        [
            OsString::from("takeover"),
            mount.point().as_os_str().to_owned(),
            "--json".into(),
        ],
    );
    assert!(
        out.status.success(),
        "nexus takeover of a confined daemon: {}\n{}",
        show(&out),
        mount.log()
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let successor = i32::try_from(report["pid"].as_i64().unwrap()).unwrap();
    assert_ne!(successor, mount.pid());
    assert!(
        wait_for(Duration::from_secs(10), || !alive(mount.pid())),
        "the old daemon still runs\n{}",
        mount.log()
    );
    assert!(
        wait_for(Duration::from_secs(5), || !alive(first_keeper)),
        "the old daemon's keeper outlived the handover"
    );
    assert!(is_mounted(mount.point()), "the handover unmounted");
    assert_confined(successor, "the successor");
    let keeper = keeper_of(successor);
    assert_keeper(keeper, true);
    let mut text = String::new();
    held.read_to_string(&mut text).unwrap();
    assert_eq!(text, "demo 1\n", "the file held open across the handover");
    assert_eq!(
        fs::read(mount.join("demo/1/bin/tool")).unwrap(),
        b"demo 1\n"
    );
    drop(held);

    // SAFETY: plain kill(2) of the daemon this test made take over.
    assert_eq!(unsafe { libc::kill(successor, libc::SIGKILL) }, 0);
    assert!(
        wait_for(Duration::from_secs(10), || !is_mounted(mount.point())),
        "the killed successor's mount is still there: it has no keeper"
    );
    fs::read_dir(mount.point()).expect("the mount point is a plain directory again");
    assert!(wait_for(Duration::from_secs(5), || !alive(keeper)));
}

#[test]
fn no_sandbox_serves_unconfined_and_says_so_loudly() {
    if !root_or_skip("no_sandbox_serves_unconfined_and_says_so_loudly") {
        return;
    }
    let scratch = Scratch::new("sandbox-off");
    let store = demo_store(&scratch);
    let mount = Mount::start(store.path(), &scratch.join("mnt"), &["--no-sandbox"]);
    let s = status(mount.pid(), mount.pid());
    assert_eq!(s["Seccomp"], "0");
    assert_eq!(s["Uid"].split_whitespace().next(), Some("0"));
    assert!(
        mount.log().contains("THE SANDBOX IS OFF"),
        "--no-sandbox is not logged loudly:\n{}",
        mount.log()
    );
    assert_eq!(
        fs::read(mount.join("demo/1/bin/tool")).unwrap(),
        b"demo 1\n"
    );
    mount.umount();
}

/// `VHOST_USER_GET_FEATURES` on a new connection: the daemon must accept
/// it and answer (a guest's first message).
fn vhost_user_handshake(socket: &Path) -> UnixStream {
    let mut stream = UnixStream::connect(socket).expect("connect to the vhost-user socket");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // request 1 (GET_FEATURES), flags 1 (protocol version 1), no payload.
    let mut request = Vec::new();
    for word in [1u32, 1, 0] {
        request.extend_from_slice(&word.to_le_bytes());
    }
    stream.write_all(&request).unwrap();
    let mut reply = [0u8; 20];
    stream
        .read_exact(&mut reply)
        .expect("a reply to GET_FEATURES");
    let word = |i: usize| u32::from_le_bytes(reply[i * 4..i * 4 + 4].try_into().unwrap());
    assert_eq!(word(0), 1, "reply to another request");
    assert_eq!(word(1) & 0x4, 0x4, "not flagged as a reply");
    assert_eq!(word(2), 8, "the features are a u64");
    stream
}

#[test]
fn the_virtio_fs_daemon_serves_confined_and_accepts_new_guests() {
    if !root_or_skip("the_virtio_fs_daemon_serves_confined_and_accepts_new_guests") {
        return;
    }
    let scratch = Scratch::new("sandbox-virtiofs");
    let store = demo_store(&scratch);
    let report = scratch.join("selftest");
    let server = Server::start(
        store.path(),
        &["--sandbox-selftest", report.to_str().unwrap()],
    );
    assert_selftest(&report);
    assert_confined(server.pid(), "nexus serve --virtio-fs");
    assert_keeper(keeper_of(server.pid()), false);
    // Guests connect after confinement: two at once, then another after
    // both left.
    let first = vhost_user_handshake(server.socket());
    let second = vhost_user_handshake(server.socket());
    drop((first, second));
    std::thread::sleep(Duration::from_millis(200));
    drop(vhost_user_handshake(server.socket()));
    assert_confined(server.pid(), "nexus serve --virtio-fs after three guests");
    // SIGTERM: exit 0 with the socket removed (by the keeper).
    server.stop();
}

/// Runs `nexus serve --virtio-fs SOCKET EXTRA` expecting it to refuse to
/// start; returns its stderr. Kills it if it serves instead.
fn serve_refused(store: &Path, socket: &Path, extra: &[&str]) -> String {
    let mut child = Command::new(nexus_bin())
        .arg("--store")
        .arg(store)
        .arg("serve")
        .arg("--virtio-fs")
        .arg(socket)
        .args(extra)
        .env_remove("NEXUS_STORE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run nexus serve");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("nexus serve --virtio-fs {} served", socket.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "nexus serve succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The vhost-user socket is 0600 unless a group and mode let others in;
/// a file that is not a socket is never deleted to make room for it, nor
/// is a socket made where others could swap it.
#[test]
fn the_socket_is_private_unless_a_group_is_let_in() {
    if !root_or_skip("the_socket_is_private_unless_a_group_is_let_in") {
        return;
    }
    let scratch = Scratch::new("sandbox-socket");
    let store = demo_store(&scratch);

    let server = Server::start(store.path(), &[]);
    let meta = fs::symlink_metadata(server.socket()).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600, "default mode");
    assert_eq!(meta.gid(), 0);
    server.stop();

    // SAFETY: getgrnam with a NUL-terminated name; read at once.
    let group = unsafe { libc::getgrnam(c"daemon".as_ptr()) };
    assert!(!group.is_null(), "no group named daemon");
    // SAFETY: a valid group entry.
    let gid = unsafe { (*group).gr_gid };
    let server = Server::start(
        store.path(),
        &["--socket-group", "daemon", "--socket-mode", "660"],
    );
    let meta = fs::symlink_metadata(server.socket()).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o660);
    assert_eq!(meta.gid(), gid);
    server.stop();

    // A root daemon told to listen on an existing file must not delete it.
    let victim = scratch.join("precious");
    fs::write(&victim, b"precious").unwrap();
    let stderr = serve_refused(store.path(), &victim, &[]);
    assert!(stderr.contains("not a socket"), "{stderr}");
    assert_eq!(fs::read(&victim).unwrap(), b"precious");

    // A directory anyone may rename things in (not sticky) is refused.
    let open = scratch.join("open");
    fs::create_dir(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
    let stderr = serve_refused(store.path(), &open.join("s.sock"), &[]);
    assert!(stderr.contains("writable by users other"), "{stderr}");
    assert!(!open.join("s.sock").exists());

    assert!(
        serve_refused(
            store.path(),
            &scratch.join("x.sock"),
            &["--socket-mode", "4755"]
        )
        .contains("bits beyond")
    );
}

/// The sandbox user must exist and must not be root; the daemon then
/// refuses to mount at all (nothing is left mounted).
#[test]
fn the_sandbox_user_must_exist_and_not_be_root() {
    if !root_or_skip("the_sandbox_user_must_exist_and_not_be_root") {
        return;
    }
    let scratch = Scratch::new("sandbox-user");
    let store = demo_store(&scratch);
    let point = scratch.join("mnt");
    fs::create_dir(&point).unwrap();
    for (user, says) in [("no-such-user-here", "no such user"), ("root", "is root")] {
        let out = nexus(
            store.path(),
            [
                "mount".as_ref(),
                point.as_os_str(),
                "--sandbox-user".as_ref(),
                user.as_ref(),
            ],
        );
        assert_eq!(out.status.code(), Some(1), "{}", show(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(says),
            "{}",
            show(&out)
        );
        assert!(!is_mounted(&point), "a refused daemon left its mount");
    }
}

/// The descriptors of `pid` open on `store`'s catalog, its WAL or the WAL
/// index for writing, as `FD PATH flags`, and its shared mappings of them
/// that write them, as `map PATH PERMS`.
fn writable_catalog_descriptors(pid: i32, store: &Path) -> Vec<String> {
    let files: Vec<_> = ["catalog.db", "catalog.db-wal", "catalog.db-shm"]
        .iter()
        .map(|name| store.join(name))
        .collect();
    let mut found = Vec::new();
    for fd in fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
        let Ok(target) = fs::read_link(fd.path()) else {
            continue;
        };
        if !files.contains(&target) {
            continue;
        }
        let name = fd.file_name().to_string_lossy().into_owned();
        let Ok(info) = fs::read_to_string(format!("/proc/{pid}/fdinfo/{name}")) else {
            continue;
        };
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
            .unwrap();
        if flags as i32 & libc::O_ACCMODE != libc::O_RDONLY {
            found.push(format!("{name} {} flags {flags:o}", target.display()));
        }
    }
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(perms), Some(path)) = (fields.get(1), fields.get(5)) else {
            continue;
        };
        if perms.contains('w') && files.iter().any(|f| f.as_os_str() == *path) {
            found.push(format!("map {path} {perms}"));
        }
    }
    found
}

/// ARCHITECTURE.md: "the daemon holds no descriptor that writes the
/// catalog, its WAL or the WAL index" — what keeps a
/// daemon someone took over (a hostile guest's, say) from rewriting
/// packages' modes, owners and contents for every other mount of the
/// store (setuid honoured on /Programs). Landlock checks a path when it is
/// opened, not a descriptor opened before the daemon confined itself, and
/// the filter allows pwrite64: a descriptor open for writing is a way
/// around both.
///
/// The descriptors come from before confinement: the read-write catalog
/// descriptor `Store::open` made, which SQLite keeps open after the store
/// is dropped while another connection of the process holds a lock on the
/// file, and `-wal` and `-shm` opened read-write by read-only connections.
/// A writable WAL index would let the daemon tell other SQLite processes,
/// nip's writers among them, that an older version of a page is the
/// newest, so that a writer commits over what it never saw. Each daemon
/// closes every catalog connection once confined and opens them again,
/// read-only under Landlock (`sandbox/catalog.rs`).
#[test]
fn a_confined_daemon_holds_no_descriptor_that_writes_the_catalog() {
    if !root_or_skip("a_confined_daemon_holds_no_descriptor_that_writes_the_catalog") {
        return;
    }
    let scratch = Scratch::new("sandbox-catalog-fds");
    let store = demo_store(&scratch);
    let mount = Mount::start(store.path(), &scratch.join("mnt"), &[]);
    assert_confined(mount.pid(), "nexus mount");
    assert_eq!(
        fs::read(mount.join("demo/1/bin/tool")).unwrap(),
        b"demo 1\n"
    );
    let writable = writable_catalog_descriptors(mount.pid(), store.path());
    mount.umount();
    // The guests' daemon, which parses what hostile kernels send.
    let server = Server::start(store.path(), &[]);
    // The socket is bound before confinement; the handshake's answer
    // comes after it.
    drop(vhost_user_handshake(server.socket()));
    assert_confined(server.pid(), "nexus serve --virtio-fs");
    let guests = writable_catalog_descriptors(server.pid(), store.path());
    server.stop();
    assert!(
        writable.is_empty() && guests.is_empty(),
        "the confined daemons can write the catalog: mount {writable:?}, virtio-fs {guests:?}"
    );
}

/// `user.nexus.requests` on the mount's root shows what every user of the
/// mount does: it is answered to root and to the user that started the
/// daemon, not to the sandbox user a confined daemon serves as (`nobody`
/// here, shared with other services and, without a `nexusbld` account,
/// with build scripts), nor to anyone else.
#[test]
fn the_request_counts_are_not_answered_to_the_sandbox_user() {
    if !root_or_skip("the_request_counts_are_not_answered_to_the_sandbox_user") {
        return;
    }
    let scratch = Scratch::new("sandbox-counts");
    fs::set_permissions(scratch.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let store = demo_store(&scratch);
    let mount = Mount::start(store.path(), &scratch.join("mnt"), &["--allow-other"]);
    assert_confined(mount.pid(), "nexus mount");
    let sandbox = fs::metadata(format!("/proc/{}", mount.pid()))
        .unwrap()
        .uid();
    assert_ne!(sandbox, 0);
    let read_as = |uid: u32| {
        Command::new("setpriv")
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .args(["--clear-groups", "--", "/usr/bin/python3", "-c"])
            .arg("import os,sys; sys.stdout.write(os.getxattr(sys.argv[1], 'user.nexus.requests').decode())")
            .arg(mount.point())
            .output()
            .unwrap()
    };
    let root = read_as(0);
    assert!(root.status.success(), "root: {}", show(&root));
    assert!(String::from_utf8_lossy(&root.stdout).starts_with('{'));
    for uid in [sandbox, 4321] {
        let out = read_as(uid);
        assert!(
            !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("No data"),
            "uid {uid} read the request counts: {}",
            show(&out)
        );
    }
    mount.umount();
}

/// A log file whose directory holds the store would let the confined
/// daemon write the catalog (it may create and write files beneath its
/// log's directory, to reopen the log): the mount is refused, saying so,
/// and nothing is mounted.
#[test]
fn a_log_directory_holding_the_store_is_refused() {
    if !root_or_skip("a_log_directory_holding_the_store_is_refused") {
        return;
    }
    let scratch = Scratch::new("sandbox-log-over-store");
    let store = demo_store(&scratch);
    let point = scratch.join("mnt");
    fs::create_dir_all(&point).unwrap();
    let parent = store.path().parent().unwrap().to_path_buf();
    let mount_logging_in = |dir: &Path| {
        nexus(
            store.path(),
            [
                OsString::from("mount"),
                point.clone().into(),
                "--log-file".into(),
                dir.join("nexus.log").into(),
            ],
        )
    };
    let out = mount_logging_in(&parent);
    assert!(!out.status.success(), "mounted: {}", show(&out));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("holds the store") && said.contains("a directory of its own"),
        "{}",
        show(&out)
    );
    assert!(!is_mounted(&point));
    // Inside the store: the daemon could write decoded copies, which the
    // kernel serves to every user, or another daemon's images.
    let inside = store.path().join("decoded");
    fs::create_dir_all(&inside).unwrap();
    let out = mount_logging_in(&inside);
    assert!(!out.status.success(), "mounted: {}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("lies inside the store"),
        "{}",
        show(&out)
    );
    assert!(!is_mounted(&point));
}
