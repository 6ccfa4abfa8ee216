//! The kernel view (`nexus mount --kernel-metadata`): the kernel serves a
//! generation's metadata from an EROFS image, overlayfs reads contents from
//! the FUSE mount below. It must show exactly what the FUSE mount shows,
//! follow switches at once without ever showing half of one (files opened
//! before a switch keep their version), enforce the packages' modes, let no
//! package talk to overlayfs through its own extended attributes, and go
//! away cleanly with `nexus umount`.

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use nexus_integration_tests::fixtures::{Scratch, cat_as_nobody, chmod, ls_as_nobody, write_file};
use nexus_integration_tests::nexus::{Mount, alive, nexus, show, wait_for};
use nexus_integration_tests::{Store, root_or_skip};

/// How long a switch may take to show (the daemon checks every 100 ms;
/// writing and mounting an image of a small store takes milliseconds).
const SHOW_WITHIN: Duration = Duration::from_secs(5);

/// The top file system at `path`, from `/proc/self/mountinfo`.
fn top_type(path: &Path) -> String {
    let table = fs::read_to_string("/proc/self/mountinfo").unwrap();
    table
        .lines()
        .rev()
        .find_map(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            let dash = fields.iter().position(|f| *f == "-")?;
            (Path::new(fields[4]) == path).then(|| fields[dash + 1].to_string())
        })
        .unwrap_or_default()
}

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A version of `app`: a program, a data file, a private file, a link.
fn version_tree(root: &Path, version: &str) -> std::path::PathBuf {
    let dir = root.join(version);
    write_file(
        &dir.join("bin/tool"),
        format!("#!/bin/sh\necho tool {version}\n").as_bytes(),
    );
    chmod(&dir.join("bin/tool"), 0o755);
    write_file(
        &dir.join("share/data"),
        &format!("data of {version}\n").repeat(5000).into_bytes(),
    );
    write_file(&dir.join("share/private"), b"root only\n");
    chmod(&dir.join("share/private"), 0o600);
    write_file(&dir.join("share/empty"), b"");
    std::os::unix::fs::symlink("data", dir.join("share/link")).unwrap();
    dir
}

/// A store holding `app/1`, and the trees of versions 1 and 2.
fn app_store(scratch: &Scratch) -> (Store, std::path::PathBuf, std::path::PathBuf) {
    let store = Store::init();
    let v1 = version_tree(&scratch.join("src"), "1");
    let v2 = version_tree(&scratch.join("src"), "2");
    store.add_dir(&v1, "app", "1");
    (store, v1, v2)
}

#[test]
fn the_kernel_view_shows_the_tree_follows_switches_and_unmounts() {
    if !root_or_skip("the_kernel_view_shows_the_tree_follows_switches_and_unmounts") {
        return;
    }
    let scratch = Scratch::new("kernel-view");
    let (store, v1, v2) = app_store(&scratch);
    let mount = start_view(&store, &scratch);
    assert_eq!(top_type(mount.point()), "overlay", "no kernel view on top");
    let status = nexus(store.path(), ["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(
        status["serving"][0]["kernel_view"],
        serde_json::Value::Bool(true),
        "nexus status does not say the kernel view covers the mount: {status}"
    );

    // The tree, byte for byte, with its modes, links and an empty file.
    let current = mount.join("app/Current");
    assert_eq!(fs::read_link(&current).unwrap(), Path::new("1"));
    assert_eq!(
        read(&current.join("share/data")),
        read(&v1.join("share/data"))
    );
    assert_eq!(read(&current.join("share/empty")), b"");
    assert_eq!(
        fs::read_link(current.join("share/link")).unwrap(),
        Path::new("data")
    );
    let out = std::process::Command::new(current.join("bin/tool"))
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"tool 1\n", "running a program from the view");
    let private = current.join("share/private");
    assert_eq!(fs::metadata(&private).unwrap().mode() & 0o7777, 0o600);
    assert!(
        !cat_as_nobody(&private),
        "another user read a 0600 file through the kernel view"
    );
    assert!(cat_as_nobody(&current.join("share/data")));

    // A file opened under version 1 keeps it across the switch.
    let mut held = File::open(current.join("share/data")).unwrap();
    store.add_dir(&v2, "app", "2");
    assert!(
        wait_for(SHOW_WITHIN, || fs::read_link(&current)
            .is_ok_and(|t| t == Path::new("2"))),
        "the kernel view did not show the new generation\n{}",
        mount.log()
    );
    assert_eq!(
        read(&current.join("share/data")),
        read(&v2.join("share/data"))
    );
    assert_eq!(
        read(&mount.join("app/1/share/data")),
        read(&v1.join("share/data"))
    );
    let mut bytes = Vec::new();
    held.read_to_end(&mut bytes).unwrap();
    assert_eq!(bytes, read(&v1.join("share/data")), "a held file changed");
    drop(held);

    // Rolling back shows the removal too.
    store.ok(["remove", "app/2"]);
    assert!(
        wait_for(SHOW_WITHIN, || !mount.join("app/2").exists()),
        "a removed version stayed in the kernel view\n{}",
        mount.log()
    );
    assert_eq!(fs::read_link(&current).unwrap(), Path::new("1"));
    assert_eq!(top_type(mount.point()), "overlay");

    // One `nexus umount` takes it all away (the daemon included).
    mount.umount();
}

/// A package root imports may carry overlayfs's own attributes. Were they
/// copied into the image, a package could redirect its file to another
/// App's, or make a directory opaque; they must have no effect.
#[test]
fn a_package_cannot_speak_to_overlayfs() {
    if !root_or_skip("a_package_cannot_speak_to_overlayfs") {
        return;
    }
    let scratch = Scratch::new("kernel-view-xattrs");
    let store = Store::init();
    let victim = scratch.join("victim");
    write_file(&victim.join("secret"), b"the victim's secret\n");
    chmod(&victim.join("secret"), 0o600);
    let evil = scratch.join("evil");
    write_file(&evil.join("lure"), b"harmless\n");
    chmod(&evil.join("lure"), 0o644);
    write_file(&evil.join("dir/kept"), b"kept\n");
    xattr::set(
        evil.join("lure"),
        "trusted.overlay.redirect",
        b"/victim/1/secret",
    )
    .unwrap();
    xattr::set(evil.join("lure"), "trusted.overlay.metacopy", b"").unwrap();
    xattr::set(evil.join("dir"), "trusted.overlay.opaque", b"y").unwrap();
    xattr::set(evil.join("lure"), "user.kept", b"yes").unwrap();
    store.add_dir(&victim, "victim", "1");
    store.add_dir(&evil, "evil", "1");
    let mount = start_view(&store, &scratch);
    let lure = mount.join("evil/1/lure");
    assert_eq!(read(&lure), b"harmless\n", "a package redirected its file");
    assert!(cat_as_nobody(&lure));
    assert_eq!(
        xattr::get(&lure, "user.kept").unwrap().as_deref(),
        Some(&b"yes"[..]),
        "a package's own user attribute was lost"
    );
    assert_eq!(read(&mount.join("evil/1/dir/kept")), b"kept\n");
    mount.umount();
}

/// `nexus takeover` replaces the daemon of a kernel-view mount without
/// unmounting: the old daemon hands over the FUSE root beneath the view
/// with its connections, the successor shows its own view beneath the old
/// one and detaches it, a file held throughout still reads, and the
/// successor follows the next switch.
#[test]
fn a_kernel_view_mount_is_taken_over_without_unmounting() {
    if !root_or_skip("a_kernel_view_mount_is_taken_over_without_unmounting") {
        return;
    }
    let scratch = Scratch::new("kernel-view-takeover");
    let (store, v1, v2) = app_store(&scratch);
    let (mount, index) = start_view_with_index(&store, &scratch);
    let old = mount.pid();
    let mut held = File::open(mount.join("app/Current/share/data")).unwrap();
    let out = nexus(
        store.path(),
        [std::ffi::OsStr::new("takeover"), mount.point().as_os_str()],
    );
    assert!(
        out.status.success(),
        "takeover failed: {}\n{}",
        show(&out),
        mount.log()
    );
    assert!(
        wait_for(Duration::from_secs(10), || !alive(old)),
        "the old daemon still runs\n{}",
        mount.log()
    );
    assert_eq!(
        top_type(mount.point()),
        "overlay",
        "the kernel view is gone"
    );
    assert_eq!(top_type(&index), "erofs", "the Index's view is gone");
    let status = nexus(store.path(), ["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let new = status["serving"][0]["pid"].as_i64().unwrap_or(0) as i32;
    assert!(new != old && alive(new), "no successor serves: {status}");
    assert_eq!(
        status["serving"][0]["kernel_view"],
        serde_json::Value::Bool(true)
    );
    // Exactly one view on each path: the successor detached the old one.
    let table = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let on = |p: &Path| {
        table
            .lines()
            .filter(|l| l.split(' ').nth(4) == p.to_str())
            .count()
    };
    assert_eq!(
        on(mount.point()),
        2,
        "FUSE and one view on the mount:\n{table}"
    );
    assert_eq!(on(&index), 2, "FUSE and one view on the Index:\n{table}");
    // The Index's image is shown as it is: it never makes a file setuid
    // or executable of its own (it holds directories and links only).
    let index_view = table
        .lines()
        .rfind(|l| l.split(' ').nth(4) == index.to_str())
        .unwrap();
    let options: Vec<&str> = index_view.split(' ').nth(5).unwrap().split(',').collect();
    for wanted in ["ro", "nosuid", "nodev", "noexec"] {
        assert!(
            options.contains(&wanted),
            "the Index's view is not {wanted}: {index_view}"
        );
    }
    let mut bytes = Vec::new();
    held.read_to_end(&mut bytes).unwrap();
    assert_eq!(bytes, read(&v1.join("share/data")));
    drop(held);
    assert_eq!(read(&index.join("bin/tool")), read(&v1.join("bin/tool")));
    store.add_dir(&v2, "app", "2");
    let current = mount.join("app/Current");
    assert!(
        wait_for(SHOW_WITHIN, || fs::read_link(&current)
            .is_ok_and(|t| t == Path::new("2"))),
        "the successor's kernel view did not follow the switch"
    );
    assert_eq!(read(&index.join("bin/tool")), read(&v2.join("bin/tool")));
    let out = umount(&store, &mount);
    assert!(out.status.success(), "nexus umount: {}", show(&out));
    assert!(
        wait_for(Duration::from_secs(10), || !alive(new)),
        "the successor still runs after nexus umount"
    );
    assert_eq!(on_now(mount.point()), 0, "something is still mounted");
    assert_eq!(on_now(&index), 0, "something is still mounted on the Index");
}

/// How many mounts are on `path` now.
fn on_now(path: &Path) -> usize {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4) == path.to_str())
        .count()
}

/// Mounts `store` on `scratch`'s `mnt` with a kernel view.
fn start_view(store: &Store, scratch: &Scratch) -> Mount {
    Mount::start(
        store.path(),
        &scratch.join("mnt"),
        &["--kernel-metadata", "--allow-other"],
    )
}

/// Mounts `store` on `scratch`'s `mnt` with a kernel view, and its Index
/// on `scratch`'s `index` (returned, canonical).
fn start_view_with_index(store: &Store, scratch: &Scratch) -> (Mount, std::path::PathBuf) {
    let index = scratch.join("index");
    fs::create_dir_all(&index).unwrap();
    let index = fs::canonicalize(index).unwrap();
    let mount = Mount::start(
        store.path(),
        &scratch.join("mnt"),
        &[
            "--kernel-metadata",
            "--allow-other",
            "--index",
            index.to_str().unwrap(),
        ],
    );
    (mount, index)
}

/// `nexus umount` of `mount`.
fn umount(store: &Store, mount: &Mount) -> std::process::Output {
    nexus(
        store.path(),
        [std::ffi::OsStr::new("umount"), mount.point().as_os_str()],
    )
}

/// A store holding app/1 with one small file at `path` ("small\n"), which
/// `nip decode --min-size 1` gave a copy.
fn small_app_decoded_whole(scratch: &Scratch, path: &str) -> Store {
    let store = Store::init();
    let src = scratch.join("src/1");
    write_file(&src.join(path), b"small\n");
    store.add_dir(&src, "app", "1");
    let report = decode(&store, &["--min-size", "1"]);
    assert_eq!(report["written"], 1, "{report}");
    store
}

/// `nip decode ARGS --json`, its report.
fn decode(store: &Store, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["decode"];
    all.extend_from_slice(args);
    all.push("--json");
    serde_json::from_slice(&store.ok(all).stdout).unwrap()
}

/// A daemon killed outright leaves nothing behind: its keeper detaches the
/// kernel view and the FUSE mount below it (no dead mount, no view over
/// one).
#[test]
fn a_killed_daemon_leaves_no_view_and_no_dead_mount() {
    if !root_or_skip("a_killed_daemon_leaves_no_view_and_no_dead_mount") {
        return;
    }
    let scratch = Scratch::new("kernel-view-kill");
    let (store, _, _) = app_store(&scratch);
    let mount = start_view(&store, &scratch);
    assert_eq!(on_now(mount.point()), 2);
    // SAFETY: kill of the daemon this test started.
    unsafe { libc::kill(mount.pid(), libc::SIGKILL) };
    assert!(
        wait_for(Duration::from_secs(10), || on_now(mount.point()) == 0),
        "mounts left on {} after the daemon was killed:\n{}",
        mount.point().display(),
        fs::read_to_string("/proc/self/mountinfo").unwrap()
    );
    fs::read_dir(mount.point()).expect("the mount point is an ordinary directory again");
}

/// A daemon killed together with its keeper leaves its view and a dead
/// FUSE mount (no one is left to detach them): `nexus umount` takes off
/// both, as it does a dead daemon's mount without a view.
#[test]
fn nexus_umount_clears_a_view_whose_daemon_and_keeper_were_killed() {
    if !root_or_skip("nexus_umount_clears_a_view_whose_daemon_and_keeper_were_killed") {
        return;
    }
    let scratch = Scratch::new("kernel-view-kill-both");
    let (store, _, _) = app_store(&scratch);
    let mount = start_view(&store, &scratch);
    assert_eq!(on_now(mount.point()), 2);
    let keeper = fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let ppid = stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok());
            comm.trim() == "nexus-keeper" && ppid == Some(mount.pid())
        })
        .expect("the daemon's keeper");
    // SAFETY: kills of the processes this test started.
    unsafe {
        libc::kill(keeper, libc::SIGKILL);
        libc::kill(mount.pid(), libc::SIGKILL);
    }
    assert!(wait_for(Duration::from_secs(10), || !alive(mount.pid())));
    assert!(
        on_now(mount.point()) > 0,
        "something unmounted the dead mounts"
    );
    let out = umount(&store, &mount);
    assert!(out.status.success(), "nexus umount: {}", show(&out));
    assert_eq!(
        on_now(mount.point()),
        0,
        "{}",
        fs::read_to_string("/proc/self/mountinfo").unwrap()
    );
    fs::read_dir(mount.point()).expect("the mount point is an ordinary directory again");
}

/// umount(8) of the mount point, as systemd runs it to stop an fstab
/// mount, takes off the view alone: the daemon sees its FUSE mount on top
/// and stops as on SIGTERM, so nothing stays mounted or busy.
#[test]
fn umount_of_the_view_stops_the_daemon_and_leaves_nothing_mounted() {
    if !root_or_skip("umount_of_the_view_stops_the_daemon") {
        return;
    }
    let scratch = Scratch::new("kernel-view-umount");
    let (store, v1, _) = app_store(&scratch);
    let mount = start_view(&store, &scratch);
    assert_eq!(on_now(mount.point()), 2);
    assert_eq!(
        read(&mount.join("app/1/share/data")),
        read(&v1.join("share/data"))
    );
    let out = std::process::Command::new("umount")
        .arg(mount.point())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        wait_for(Duration::from_secs(10), || on_now(mount.point()) == 0
            && !alive(mount.pid())),
        "after umount(8) of the view: {} mounts on {}, daemon alive: {}\n{}",
        on_now(mount.point()),
        mount.point().display(),
        alive(mount.pid()),
        mount.log()
    );
    assert!(
        mount.log().contains("unmounted from outside"),
        "{}",
        mount.log()
    );
    drop(mount);

    // `nexus umount` takes it down the same way, whatever store it is told
    // of, and signals no process: a runtime record's pid is whatever its
    // writer (a compromised daemon, say) claims. Here a forged record, its
    // lock held, names a bystander as the daemon serving the mount point
    // (started first: records are read in pid order).
    let mut bystander = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let mount = start_view(&store, &scratch);
    let run = store.path().join("run");
    let name = bystander.id().to_string();
    let lock = File::create(run.join(format!("{name}.lock"))).unwrap();
    // SAFETY: flock on a descriptor this test owns.
    assert_eq!(
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) },
        0
    );
    let forged = serde_json::json!({
        "format": "nexus-runtime-root-v1",
        "pid": bystander.id(),
        "kind": "mount",
        "target": mount.point(),
        "generations": [1],
        "packages": [],
        "started": 1,
        "updated": 1,
        "schema": 7,
    });
    fs::write(run.join(format!("{name}.json")), forged.to_string()).unwrap();
    let listed = nexus(store.path(), ["status", "--json"]);
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains(&format!("\"pid\": {name}")),
        "the forged record is not read as live: {}",
        show(&listed)
    );
    let out = umount(&store, &mount);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(on_now(mount.point()), 0, "{}", mount.log());
    assert!(
        bystander.try_wait().unwrap().is_none(),
        "nexus umount signalled the pid a record named"
    );
    bystander.kill().unwrap();
    bystander.wait().unwrap();
    drop(lock);
}

/// umount(8) of the Index's kernel view alone takes the Index off: the
/// daemon sees the FUSE Index uncovered, unmounts it too and serves the
/// main mount on, and a later switch shows no image of the Index on the
/// bare directory. (Before, the FUSE Index stayed mounted and served, and
/// once that was unmounted as well, the next switch mounted the Index's
/// image there again, with nothing beneath it.)
#[test]
fn umount_of_the_index_view_takes_the_index_off_for_good() {
    if !root_or_skip("umount_of_the_index_view_takes_the_index_off_for_good") {
        return;
    }
    let scratch = Scratch::new("kernel-view-index-umount");
    let (store, v1, v2) = app_store(&scratch);
    let (mount, index) = start_view_with_index(&store, &scratch);
    assert_eq!(on_now(&index), 2, "the FUSE Index and its view");
    let out = std::process::Command::new("umount")
        .arg(&index)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        wait_for(Duration::from_secs(10), || on_now(&index) == 0),
        "after umount(8) of the Index's view: {} mounts on it\n{}",
        on_now(&index),
        mount.log()
    );
    assert!(alive(mount.pid()), "the daemon stopped\n{}", mount.log());
    assert_eq!(
        read(&mount.join("app/1/share/data")),
        read(&v1.join("share/data"))
    );

    store.add_dir(&v2, "app", "2");
    assert!(
        wait_for(SHOW_WITHIN, || mount
            .log()
            .contains("kernel view of generation Some(2)")),
        "the kernel view did not show the switch\n{}",
        mount.log()
    );
    assert_eq!(
        fs::read_link(mount.join("app/Current")).unwrap(),
        Path::new("2")
    );
    assert_eq!(
        on_now(&index),
        0,
        "the switch mounted the Index again\n{}",
        mount.log()
    );
    let out = umount(&store, &mount);
    assert!(out.status.success(), "nexus umount: {}", show(&out));
    assert_eq!(on_now(mount.point()), 0, "{}", mount.log());
}

#[test]
fn no_second_daemon_is_stacked_on_a_kernel_view_or_its_index() {
    if !root_or_skip("no_second_daemon_is_stacked_on_a_kernel_view_or_its_index") {
        return;
    }
    let scratch = Scratch::new("kernel-view-twice");
    let (store, v1, _) = app_store(&scratch);
    let (mount, index) = start_view_with_index(&store, &scratch);
    let (here, there) = (on_now(mount.point()), on_now(&index));
    assert_eq!((here, there), (2, 2), "FUSE mounts and their views");
    // On the view's mount point; then elsewhere, with the Index's directory.
    let elsewhere = scratch.join("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    let mountpoint = mount.point().as_os_str();
    for (point, what) in [
        (mountpoint, "mount point"),
        (elsewhere.as_os_str(), "index directory"),
    ] {
        let refused = nexus(
            store.path(),
            [
                std::ffi::OsStr::new("mount"),
                point,
                "--kernel-metadata".as_ref(),
                "--allow-other".as_ref(),
                "--index".as_ref(),
                index.as_os_str(),
            ],
        );
        assert_eq!(refused.status.code(), Some(1), "{}", show(&refused));
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains(&format!("{what} ")),
            "{}",
            show(&refused)
        );
    }
    assert_eq!((on_now(mount.point()), on_now(&index)), (here, there));
    assert_eq!(on_now(&elsewhere), 0);
    assert!(alive(mount.pid()), "{}", mount.log());
    assert_eq!(
        read(&mount.join("app/1/share/data")),
        read(&v1.join("share/data"))
    );
    let out = umount(&store, &mount);
    assert!(out.status.success(), "nexus umount: {}", show(&out));
}

/// The kernel serves its view to every user (as each file's mode allows),
/// so a mount that was not asked to let others in is not given one: the
/// flag without `--allow-other` is refused, saying why, and nothing is
/// mounted.
#[test]
fn the_kernel_view_is_refused_without_allow_other() {
    if !root_or_skip("the_kernel_view_is_refused_without_allow_other") {
        return;
    }
    let scratch = Scratch::new("kernel-view-private");
    let (store, _, _) = app_store(&scratch);
    let point = scratch.join("mnt");
    fs::create_dir_all(&point).unwrap();
    let point = fs::canonicalize(point).unwrap();
    let out = nexus(
        store.path(),
        [
            std::ffi::OsStr::new("mount"),
            point.as_os_str(),
            std::ffi::OsStr::new("--kernel-metadata"),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("--allow-other"), "{}", show(&out));
    assert_eq!(on_now(&point), 0, "something was mounted");
}

/// The daemon's count of `opcode` requests, from the line it logs when it
/// stops (`requests served: LOOKUP 3, READ 2, …`; absent means none).
fn served(log: &str, opcode: &str) -> u64 {
    let line = log
        .lines()
        .rfind(|l| l.contains("requests served:"))
        .unwrap_or_else(|| panic!("no request counts in the log:\n{log}"));
    line.split("requests served:")
        .nth(1)
        .unwrap_or("")
        .split(',')
        .filter_map(|kv| {
            let mut it = kv.split_whitespace();
            (it.next()? == opcode).then(|| it.next()?.parse::<u64>().ok())?
        })
        .sum()
}

/// Mounts `store` with a kernel view, reads `file` of app/1 whole, and
/// returns what was read and the daemon's log once it stopped.
fn read_through_kernel_view(store: &Store, scratch: &Scratch, file: &str) -> (Vec<u8>, String) {
    let mount = start_view(store, scratch);
    let bytes = read(&mount.join(format!("app/1/{file}")));
    let out = umount(store, &mount);
    assert!(out.status.success(), "nexus umount: {}", show(&out));
    assert!(
        wait_for(Duration::from_secs(10), || !alive(mount.pid())),
        "the daemon still runs\n{}",
        mount.log()
    );
    (bytes, mount.log())
}

/// `nip decode` keeps plain copies of a generation's large files; a kernel
/// view stacks them as its first data-only layer, so the kernel reads such
/// a file from its copy and the daemon is sent no READ for it (without the
/// copy, the same read reaches the daemon). `--min-size 1` does the same
/// for every file. gc drops the copies once no package holds their
/// contents.
#[test]
fn files_are_read_from_their_decoded_copies() {
    if !root_or_skip("files_are_read_from_their_decoded_copies") {
        return;
    }
    let scratch = Scratch::new("kernel-view-decoded");
    let store = Store::init();
    let src = scratch.join("src/1");
    // Incompressible, and larger than a block: stored in frames.
    let mut big = Vec::with_capacity(3 << 20);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    while big.len() < 3 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        big.extend_from_slice(&x.to_le_bytes());
    }
    write_file(&src.join("lib/big.so"), &big);
    write_file(&src.join("share/small"), b"small\n");
    store.add_dir(&src, "app", "1");

    // Without copies, the read reaches the daemon.
    let (bytes, log) = read_through_kernel_view(&store, &scratch, "lib/big.so");
    assert!(bytes == big, "the file read differs from the one added");
    assert!(served(&log, "READ") > 0, "no READ without a copy:\n{log}");

    let report = decode(&store, &[]);
    assert_eq!(report["written"], 1, "{report}");
    assert_eq!(report["written_bytes"], big.len() as u64, "{report}");
    let decoded = store.path().join("decoded");
    let copies: Vec<_> = fs::read_dir(&decoded).unwrap().flatten().collect();
    assert_eq!(copies.len(), 1);
    assert_eq!(read(&copies[0].path()), big);

    let (bytes, log) = read_through_kernel_view(&store, &scratch, "lib/big.so");
    assert!(bytes == big, "the file read from its copy differs");
    assert_eq!(served(&log, "READ"), 0, "the copy was not read:\n{log}");
    // A small file still comes through the FUSE mount.
    let (bytes, log) = read_through_kernel_view(&store, &scratch, "share/small");
    assert_eq!(bytes, b"small\n");
    assert!(served(&log, "READ") > 0, "{log}");

    // Down to every file: the small one is read from its copy too.
    let report = decode(&store, &["--min-size", "1"]);
    assert_eq!(
        (&report["written"], &report["present"]),
        (&1.into(), &1.into()),
        "{report}"
    );
    assert_eq!(report["min_size"], 1, "{report}");
    let (bytes, log) = read_through_kernel_view(&store, &scratch, "share/small");
    assert_eq!(bytes, b"small\n");
    assert_eq!(
        served(&log, "READ"),
        0,
        "the small file's copy was not read:\n{log}"
    );

    store.ok(["remove", "app"]);
    store.ok(["gc", "--keep", "1", "--grace", "0"]);
    assert_eq!(
        fs::read_dir(&decoded).unwrap().count(),
        0,
        "gc left the copy of contents no package holds"
    );
}

/// `nip decode --min-size 1M --prune-smaller` takes back the disk a
/// `--min-size 1` took: views made from then on name only the larger
/// copies, and the smaller ones go once no running view names them. A
/// running view that names one keeps it (it reads on), until its next
/// switch makes an image under the raised threshold; then `nip gc` takes
/// it, and the file reads through the FUSE mount.
#[test]
fn a_raised_decode_threshold_prunes_small_copies_once_no_view_names_them() {
    if !root_or_skip("a_raised_decode_threshold_prunes_small_copies_once_no_view_names_them") {
        return;
    }
    let scratch = Scratch::new("kernel-view-raised-threshold");
    let store = small_app_decoded_whole(&scratch, "share/small");
    let copy = fs::read_dir(store.path().join("decoded"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();

    let mount = start_view(&store, &scratch);
    let small = mount.join("app/1/share/small");
    assert_eq!(read(&small), b"small\n");
    let report = decode(&store, &["--min-size", "1M", "--prune-smaller"]);
    assert_eq!(report["threshold"], 1 << 20, "{report}");
    assert_eq!(
        (&report["pruned"]["removed"], &report["pruned"]["held"]),
        (&0.into(), &1.into()),
        "a copy the running view names was not kept: {report}"
    );
    assert!(copy.exists());
    assert_eq!(read(&small), b"small\n");

    // A switch: the daemon's next image names copies of 1 MiB or more.
    let other = scratch.join("src/other");
    write_file(&other.join("bin/other"), b"other\n");
    store.add_dir(&other, "other", "1");
    let said_raised = || {
        fs::read_dir(store.path().join("run"))
            .unwrap()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .any(|e| {
                fs::read_to_string(e.path())
                    .is_ok_and(|t| t.contains(&format!("\"decoded_from\": {}", 1 << 20)))
            })
    };
    assert!(
        wait_for(SHOW_WITHIN, || mount.join("other/1").exists()
            && said_raised()),
        "the view did not switch under the raised threshold\n{}",
        mount.log()
    );
    let gc = store.ok(["gc", "--keep", "1", "--grace", "0", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&gc.stdout).unwrap();
    assert_eq!(report["decoded_removed"], 1, "{report}");
    assert!(!copy.exists(), "gc left the small file's copy");
    assert_eq!(read(&small), b"small\n", "the file no longer reads");
    let out = umount(&store, &mount);
    assert!(out.status.success(), "nexus umount: {}", show(&out));
}

/// A generation of many files, with copies looked for down to every file:
/// the image's one query for the candidates sorts tens of thousands of
/// contents, which SQLite spilled to a temporary file the confined daemon
/// may not create ("unable to open database file"), and the mount failed.
/// (Only the first generation's one file is decoded: what the query sorts
/// is every content of at least the smallest size ever decoded.)
#[test]
fn a_view_looking_for_many_copies_is_made_by_the_confined_daemon() {
    if !root_or_skip("a_view_looking_for_many_copies_is_made_by_the_confined_daemon") {
        return;
    }
    let scratch = Scratch::new("kernel-view-many-copies");
    let store = small_app_decoded_whole(&scratch, "small");
    let many = scratch.join("src/many");
    for i in 0..20_000 {
        let name = format!("d{:03}/f{i:05}", i / 200);
        write_file(&many.join(name), format!("file {i}\n").as_bytes());
    }
    store.add_dir(&many, "many", "1");
    let (bytes, log) = read_through_kernel_view(&store, &scratch, "small");
    assert_eq!(bytes, b"small\n");
    assert_eq!(served(&log, "READ"), 0, "not read from its copy:\n{log}");
}

/// Should a switch's image fail, the kernel view stays on the old
/// generation, whose files it still redirects to by their App/Version path.
/// The daemon's runtime record keeps naming that generation, so gc keeps
/// its packages, and a different tree cannot be added under a name and
/// version the view still shows (it would lend the old metadata, setuid
/// bits included, its bytes). Once a switch shows again, gc may take them.
#[test]
fn a_generation_the_kernel_view_still_shows_is_kept_by_gc() {
    if !root_or_skip("a_generation_the_kernel_view_still_shows_is_kept_by_gc") {
        return;
    }
    let scratch = Scratch::new("kernel-view-shown-kept");
    let (store, v1, v2) = app_store(&scratch);
    let other = scratch.join("src/other");
    write_file(&other.join("bin/other"), b"other\n");
    store.add_dir(&other, "other", "1");
    let mount = start_view(&store, &scratch);
    // Make the daemon's next image fail: a directory where it renames it.
    let images: Vec<_> = fs::read_dir(store.path().join("kernel-view"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(images.len(), 1, "one daemon, one image directory");
    let blocker = images[0].path().join("main.erofs");
    write_file(&blocker.join("blocked"), b"");
    let failures = |log: &str| log.matches("still shows the previous generation").count();

    store.ok(["remove", "app"]);
    assert!(
        wait_for(SHOW_WITHIN, || failures(&mount.log()) >= 1),
        "the image did not fail\n{}",
        mount.log()
    );
    let gc = store.ok(["gc", "--keep", "1", "--grace", "0", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&gc.stdout).unwrap();
    assert_eq!(
        report["packages_deleted"], 0,
        "gc took a package the kernel view still shows: {report}"
    );
    // Another tree under app/1 is refused while app/1 is stored.
    let other_tree = store.run([
        std::ffi::OsStr::new("add"),
        v2.as_os_str(),
        std::ffi::OsStr::new("--name"),
        std::ffi::OsStr::new("app"),
        std::ffi::OsStr::new("--version"),
        std::ffi::OsStr::new("1"),
    ]);
    assert!(
        !other_tree.success(),
        "another tree was stored as app/1 while the view shows app/1: {other_tree}"
    );

    // Shown again: the record drops the old generation, gc takes app/1.
    fs::remove_dir_all(&blocker).unwrap();
    store.add_dir(&v1, "other", "2");
    assert!(
        wait_for(SHOW_WITHIN, || {
            fs::read_dir(mount.join("other"))
                .map(|d| d.flatten().any(|e| e.file_name() == "2"))
                .unwrap_or(false)
        }),
        "the view did not show the next generation\n{}",
        mount.log()
    );
    assert!(
        wait_for(Duration::from_secs(10), || {
            let gc = store.ok(["gc", "--keep", "1", "--grace", "0", "--json"]);
            let report: serde_json::Value = serde_json::from_slice(&gc.stdout).unwrap();
            report["packages_deleted"].as_u64().unwrap_or(0) >= 1
        }),
        "gc never took app/1 once the view moved on\n{}",
        mount.log()
    );
    mount.umount();
}

/// The Index's kernel view carries the modes the FUSE Index derives: a
/// package's 0700 directory merged into `share` is 0700 in the image, and
/// no other user lists it there.
#[test]
fn the_index_view_lists_a_private_directory_to_no_other_user() {
    if !root_or_skip("the_index_view_lists_a_private_directory_to_no_other_user") {
        return;
    }
    let scratch = Scratch::new("kernel-view-index-private");
    let src = scratch.join("src");
    write_file(&src.join("usr/share/secret/db.conf"), b"x\n");
    chmod(&src.join("usr/share/secret"), 0o700);
    write_file(&src.join("usr/share/open/readme"), b"open\n");
    let store = Store::init();
    store.add_dir(&src, "demo", "1");
    let (mount, index) = start_view_with_index(&store, &scratch);
    assert_eq!(top_type(&index), "erofs", "no kernel view on the Index");
    let merged = index.join("share/secret");
    let meta = fs::metadata(&merged).unwrap();
    assert_eq!((meta.mode() & 0o7777, meta.uid()), (0o700, 0));
    assert_eq!(ls_as_nobody(&merged), None, "another user listed it");
    assert!(ls_as_nobody(&index.join("share/open")).is_some());
    let out = umount(&store, &mount);
    assert!(out.status.success(), "{}", show(&out));
}
