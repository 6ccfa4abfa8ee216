//! The `/Programs` mount: real Debian packages (and a tree crafted to carry
//! every kind of metadata) are added with `nip add`, mounted with the real
//! `nexus mount` daemon, and the mounted `App/Version` trees must be the
//! source trees in every byte, mode, owner, mtime, symlink, hard link and
//! xattr. Programs run from the mount, inode numbers survive a remount, and
//! both `nexus umount` and SIGTERM leave no mount behind.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nexus_integration_tests::crafted::build_crafted_tree;
use nexus_integration_tests::debs::{Unpacked, fetch_and_unpack};
use nexus_integration_tests::fixtures::{
    Scratch, cat_as_nobody, copy_tree, random_bytes, write_file,
};
use nexus_integration_tests::nexus::{
    Mount, alive, is_mounted, nexus, request_counts, show, wait_for,
};
use nexus_integration_tests::tree::{Kind, assert_same_tree, snapshot};
use nexus_integration_tests::{
    Store, fetch_debs, heavy_test_guard, pack, root_or_skip, unpack_deb,
};

/// Names in a directory, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Inode number of every path below `root` (not following symlinks).
fn inode_numbers(root: &Path) -> BTreeMap<PathBuf, u64> {
    snapshot(root)
        .nodes
        .into_iter()
        .map(|(rel, node)| (rel, node.dev_ino.1))
        .collect()
}

/// Fails unless every regular file has the same link count in the mount as
/// in the source.
fn assert_same_nlink(source: &Path, mounted: &Path) {
    for (rel, node) in snapshot(source).nodes {
        if node.kind != Kind::File {
            continue;
        }
        let expected = fs::symlink_metadata(source.join(&rel)).unwrap().nlink();
        let actual = fs::symlink_metadata(mounted.join(&rel)).unwrap().nlink();
        assert_eq!(
            actual,
            expected,
            "nlink of {}",
            mounted.join(&rel).display()
        );
    }
}

/// Runs a program and returns its stdout, failing on a non-zero exit.
fn run(cmd: &mut Command, stdin: &[u8]) -> String {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", show(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn statvfs(path: &Path) -> libc::statvfs {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid path and an out-parameter we own.
    unsafe {
        let mut s = std::mem::zeroed::<libc::statvfs>();
        assert_eq!(
            libc::statvfs(c.as_ptr(), &mut s),
            0,
            "statvfs {}",
            path.display()
        );
        s
    }
}

#[test]
fn real_packages_are_served_faithfully_and_run_from_the_mount() {
    if !root_or_skip("real_packages_are_served_faithfully_and_run_from_the_mount") {
        return;
    }
    let _heavy = heavy_test_guard();
    let scratch = Scratch::new("mount");
    let pkgs: Vec<Unpacked> =
        fetch_and_unpack(&["hello", "jq", "libjq1", "libonig5"], &scratch.join("src"));
    let crafted = scratch.join("crafted");
    let base = scratch.join("hello-base");
    unpack_deb(&fetch_debs(&["hello"])[0], &base);
    copy_tree(&base, &crafted);
    assert!(
        build_crafted_tree(&crafted).is_empty(),
        "root sets up everything"
    );

    let store = Store::init();
    let mut args = vec![OsString::from("add")];
    args.extend(pkgs.iter().map(|p| p.dir.clone().into_os_string()));
    store.ok(&args);
    store.ok([
        OsString::from("add"),
        crafted.clone().into_os_string(),
        "--name".into(),
        "crafted".into(),
        "--version".into(),
        "1".into(),
        // Files of other owners and a group-writable directory, kept as
        // they are (the crafted tree's whole point).
        "--trust-source-owner".into(),
        "--keep-source-privileges".into(),
    ]);

    let mount = Mount::start(store.path(), &scratch.join("mnt"), &[]);
    let mut apps: Vec<String> = pkgs.iter().map(|p| p.name.clone()).collect();
    apps.push("crafted".into());
    apps.sort();
    assert_eq!(names(mount.point()), apps);

    // Every package, byte for byte and in all its metadata.
    for p in &pkgs {
        let app = mount.join(&p.name);
        assert_eq!(names(&app), [p.version.as_str(), "Current"], "{}", p.name);
        assert_eq!(
            fs::read_link(app.join("Current")).unwrap(),
            Path::new(&p.version)
        );
        let mounted = app.join(&p.version);
        assert_same_tree(&p.dir, &mounted, &format!("mounted {}", p.spec()));
        assert_same_nlink(&p.dir, &mounted);
    }
    let mounted = mount.join("crafted/1");
    assert_same_tree(&crafted, &mounted, "mounted crafted tree");
    assert_same_nlink(&crafted, &mounted);
    assert!(
        xattr::get(mounted.join("usr/bin/hello"), "security.capability")
            .unwrap()
            .is_some(),
        "security.capability is served"
    );
    let suid = fs::metadata(mounted.join("usr/bin/hello-suid")).unwrap();
    assert_eq!(suid.mode() & 0o7777, 0o4755);

    // Programs run from the mount (exec and mmap of the binary and its
    // libraries), the libraries too coming from the mount.
    let hello = mount.join("hello/Current/usr/bin/hello");
    assert_eq!(run(&mut Command::new(&hello), b""), "Hello, world!\n");
    let lib_path = format!(
        "{}:{}",
        mount
            .join("libjq1/Current/usr/lib/x86_64-linux-gnu")
            .display(),
        mount
            .join("libonig5/Current/usr/lib/x86_64-linux-gnu")
            .display()
    );
    let jq = mount.join("jq/Current/usr/bin/jq");
    let resolved = run(
        Command::new(&jq)
            .env("LD_LIBRARY_PATH", &lib_path)
            .env("LD_TRACE_LOADED_OBJECTS", "1"),
        b"",
    );
    for lib in ["libjq.so.1", "libonig.so.5"] {
        let line = resolved
            .lines()
            .find(|l| l.contains(lib))
            .unwrap_or_else(|| panic!("jq does not load {lib}:\n{resolved}"));
        assert!(
            line.contains(&mount.point().display().to_string()),
            "{lib} is not loaded from the mount: {line}"
        );
    }
    let out = run(
        Command::new(&jq)
            .arg("-c")
            .arg(".a | map(. * 2)")
            .env("LD_LIBRARY_PATH", &lib_path),
        br#"{"a": [1, 2, 3]}"#,
    );
    assert_eq!(out, "[2,4,6]\n");

    // statfs counts the files of the generation.
    let sources: Vec<&Path> = pkgs
        .iter()
        .map(|p| p.dir.as_path())
        .chain([crafted.as_path()])
        .collect();
    let files: u64 = sources
        .iter()
        .map(|s| snapshot(s).files().count() as u64)
        .sum();
    let bytes: u64 = sources
        .iter()
        .map(|s| snapshot(s).files().map(|(_, n)| n.size).sum::<u64>())
        .sum();
    let st = statvfs(mount.point());
    assert_eq!(st.f_files, files);
    assert_eq!(st.f_namemax, 255);
    assert!(st.f_blocks * st.f_frsize >= bytes, "{} blocks", st.f_blocks);

    // A frozen view of generation 1 (before crafted was added), side by side
    // with the live one, with the same inode numbers.
    let frozen = Mount::start(store.path(), &scratch.join("gen1"), &["--generation", "1"]);
    let mut without_crafted: Vec<String> = pkgs.iter().map(|p| p.name.clone()).collect();
    without_crafted.sort();
    assert_eq!(names(frozen.point()), without_crafted);
    for rel in ["hello", "hello/Current", "jq/Current/usr/bin/jq"] {
        assert_eq!(
            fs::symlink_metadata(frozen.join(rel)).unwrap().ino(),
            fs::symlink_metadata(mount.join(rel)).unwrap().ino(),
            "{rel}"
        );
    }
    frozen.umount();

    // Inode numbers are the same after a remount.
    let before = inode_numbers(mount.point());
    assert!(
        before.len() > 100,
        "the walk saw only {} paths",
        before.len()
    );
    mount.umount();
    let again = Mount::start(store.path(), &scratch.join("mnt"), &[]);
    assert_eq!(
        inode_numbers(again.point()),
        before,
        "inode numbers changed"
    );

    // SIGTERM unmounts cleanly too.
    // SAFETY: plain kill(2) of the daemon we started.
    assert_eq!(unsafe { libc::kill(again.pid(), libc::SIGTERM) }, 0);
    again.assert_gone(Duration::from_secs(10), "after SIGTERM");
    assert!(
        again.log().contains("unmounted"),
        "the daemon log does not say it unmounted:\n{}",
        again.log()
    );
}

/// A small store of generated files, without network access.
fn small_store(scratch: &Scratch) -> (Store, Vec<u8>) {
    let tree = scratch.join("tree");
    let data = random_bytes(b"mount-small", 2 * 1024 * 1024 + 99);
    write_file(&tree.join("data/big.bin"), &data);
    write_file(&tree.join("bin/tool"), b"#!/bin/sh\necho tool\n");
    let store = Store::init();
    store.ok([
        OsString::from("add"),
        tree.into_os_string(),
        "--name".into(),
        "small".into(),
        "--version".into(),
        "1".into(),
    ]);
    (store, data)
}

#[test]
fn sigterm_detaches_a_busy_mount_and_the_daemon_ends_with_its_last_user() {
    if !root_or_skip("sigterm_detaches_a_busy_mount") {
        return;
    }
    let scratch = Scratch::new("mount-busy");
    let (store, _) = small_store(&scratch);
    let mount = Mount::start(store.path(), &scratch.join("mnt"), &[]);
    let mut user = Command::new("sleep")
        .arg("60")
        .current_dir(mount.join("small/1/bin"))
        .spawn()
        .expect("start sleep inside the mount");

    let refused = nexus(
        store.path(),
        [
            OsString::from("umount"),
            mount.point().as_os_str().to_owned(),
        ],
    );
    assert_eq!(refused.status.code(), Some(1), "{}", show(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("busy"),
        "{}",
        show(&refused)
    );
    assert!(is_mounted(mount.point()), "a refused umount unmounted");

    // SAFETY: plain kill(2) of the daemon we started.
    assert_eq!(unsafe { libc::kill(mount.pid(), libc::SIGTERM) }, 0);
    assert!(
        wait_for(Duration::from_secs(10), || !is_mounted(mount.point())),
        "SIGTERM did not detach the busy mount:\n{}",
        mount.log()
    );
    assert!(
        alive(mount.pid()),
        "the daemon left while the mount is in use"
    );
    user.kill().unwrap();
    user.wait().unwrap();
    mount.assert_gone(Duration::from_secs(10), "after the last user left");
}

/// The read-ahead window, in KiB, of the file system mounted at `point`
/// (its backing device info in sysfs, found by the device number).
fn read_ahead_kib(point: &Path) -> u32 {
    let dev = fs::metadata(point)
        .unwrap_or_else(|e| panic!("stat {}: {e}", point.display()))
        .dev();
    let file = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("reading {file}: {e}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{file}: {e}"))
}

#[test]
fn a_mount_reads_large_files_ahead_in_wide_windows() {
    if !root_or_skip("a_mount_reads_large_files_ahead_in_wide_windows") {
        return;
    }
    let scratch = Scratch::new("mount-read-ahead");
    let (store, data) = small_store(&scratch);
    let mount = Mount::start(store.path(), &scratch.join("mnt"), &[]);
    // The kernel's default for a FUSE mount is 128 KiB, one 128 KiB
    // request after another for a sequential reader.
    assert_eq!(read_ahead_kib(mount.point()), 4096, "{}", mount.log());
    let read = fs::read(mount.join("small/1/data/big.bin")).expect("read the large file");
    assert!(read == data, "the large file read back differs");
}

/// Whether page `index` of `file` is in the page cache.
fn page_cached(file: &fs::File, index: usize) -> bool {
    use std::os::fd::AsRawFd;
    let page = 4096;
    let len = file.metadata().expect("stat the mapped file").len() as usize;
    // SAFETY: a private read-only mapping of a file we hold open, unmapped
    // below; mincore only reads the page tables.
    unsafe {
        let map = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        );
        assert!(
            map != libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        let mut residency = vec![0u8; len.div_ceil(page)];
        let rc = libc::mincore(map, len, residency.as_mut_ptr());
        let err = std::io::Error::last_os_error();
        libc::munmap(map, len);
        assert_eq!(rc, 0, "mincore: {err}");
        residency[index] & 1 == 1
    }
}

/// The number of READ requests the mount at `root` answered.
fn reads_answered(root: &Path) -> u64 {
    request_counts(root).get("READ").copied().unwrap_or(0)
}

#[test]
fn a_random_read_hands_the_kernel_what_it_decoded_before_the_read() {
    if !root_or_skip("a_random_read_hands_the_kernel_what_it_decoded_before_the_read") {
        return;
    }
    let scratch = Scratch::new("mount-push-back");
    let (store, data) = small_store(&scratch);
    let mount = Mount::start(store.path(), &scratch.join("mnt"), &[]);
    let file = fs::File::open(mount.join("small/1/data/big.bin")).expect("open the large file");
    // A 4 KiB read in the middle of the file: the daemon decodes (and
    // verifies) the whole chunk, which begins pages before it.
    let page = 4096;
    let at = 1024 * 1024 + 40 * page;
    let mut buf = vec![0u8; page];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut buf, at as u64).expect("random read");
    assert!(
        buf == data[at..at + page],
        "the random read returned other bytes"
    );
    // The kernel reads nothing before a random read itself: the page
    // before it arrives only if the daemon stored it.
    assert!(
        wait_for(Duration::from_secs(5), || page_cached(&file, at / page - 1)),
        "the page before a random read was not handed to the kernel\n{}",
        mount.log()
    );
    let before = reads_answered(mount.point());
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut buf, (at - page) as u64)
        .expect("read the page before");
    assert!(
        buf == data[at - page..at],
        "the page stored before the read holds other bytes"
    );
    assert_eq!(
        reads_answered(mount.point()) - before,
        0,
        "reading a page the daemon stored still sent a READ"
    );
    // A random read before everything stored so far gets what follows it
    // in its frame stored too.
    let earlier = 256 * 1024 + 8 * page;
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut buf, earlier as u64)
        .expect("an earlier random read");
    assert!(
        buf == data[earlier..earlier + page],
        "the earlier random read returned other bytes"
    );
    assert!(
        wait_for(Duration::from_secs(5), || page_cached(
            &file,
            earlier / page + 1
        )),
        "the page after an earlier random read was not handed to the kernel\n{}",
        mount.log()
    );
    drop(file);
    mount.umount();
}

#[test]
fn damaged_data_reads_as_an_error_never_as_other_bytes() {
    if !root_or_skip("damaged_data_reads_as_an_error") {
        return;
    }
    let scratch = Scratch::new("mount-damage");
    let (store, data) = small_store(&scratch);
    let packs = pack::pack_files(&store.packs_dir());
    assert_eq!(packs.len(), 1);
    let len = fs::metadata(&packs[0]).unwrap().len();
    pack::flip_byte(&packs[0], len / 2);

    let mount = Mount::start(store.path(), &scratch.join("mnt"), &[]);
    let err = fs::read(mount.join("small/1/data/big.bin")).expect_err("damaged file read");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    // The intact parts still read, and what reads is right.
    let f = fs::File::open(mount.join("small/1/data/big.bin")).unwrap();
    let mut good = 0;
    for offset in (0..data.len()).step_by(64 * 1024) {
        let mut buf = vec![0u8; 4096.min(data.len() - offset)];
        if std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, offset as u64).is_ok() {
            assert!(
                buf == data[offset..offset + buf.len()],
                "wrong bytes at {offset}"
            );
            good += 1;
        }
    }
    assert!(good > 0, "no part of the file was readable");
    drop(f);
    assert_eq!(
        fs::read(mount.join("small/1/bin/tool")).unwrap(),
        b"#!/bin/sh\necho tool\n"
    );
    mount.umount();
}

#[test]
fn a_live_mount_follows_new_generations() {
    if !root_or_skip("a_live_mount_follows_new_generations") {
        return;
    }
    let scratch = Scratch::new("mount-live");
    let (store, _) = small_store(&scratch);
    let mount = Mount::start(store.path(), &scratch.join("mnt"), &[]);
    let tree = scratch.join("v2");
    write_file(&tree.join("bin/tool"), b"#!/bin/sh\necho version 2\n");
    store.ok([
        OsString::from("add"),
        tree.into_os_string(),
        "--name".into(),
        "small".into(),
        "--version".into(),
        "2".into(),
    ]);
    let current = mount.join("small/Current");
    assert!(
        wait_for(Duration::from_secs(5), || {
            fs::read_link(&current).is_ok_and(|t| t == Path::new("2"))
        }),
        "Current does not point at the new version"
    );
    assert_eq!(names(&mount.join("small")), ["1", "2", "Current"]);
    assert_eq!(
        fs::read(mount.join("small/Current/bin/tool")).unwrap(),
        b"#!/bin/sh\necho version 2\n"
    );
    store.ok(["remove", "small/2"]);
    assert!(
        wait_for(Duration::from_secs(5), || names(&mount.join("small"))
            == ["1", "Current"]),
        "the removed version is still listed"
    );
    // The root's listing, cached by the kernel once read, follows too.
    let before = names(mount.point());
    assert!(!before.contains(&"other".to_string()), "{before:?}");
    let other = scratch.join("other");
    write_file(&other.join("bin/other"), b"other\n");
    store.ok([
        OsString::from("add"),
        other.into_os_string(),
        "--name".into(),
        "other".into(),
        "--version".into(),
        "1".into(),
    ]);
    assert!(
        wait_for(Duration::from_secs(5), || names(mount.point())
            .contains(&"other".to_string())),
        "a new App is not listed in the root"
    );
    store.ok(["remove", "other"]);
    assert!(
        wait_for(Duration::from_secs(5), || names(mount.point()) == before),
        "a removed App is still listed in the root"
    );
    mount.umount();
}

#[test]
fn command_line_errors_are_reported() {
    let scratch = Scratch::new("nexus-cli");
    let dir = scratch.join("dir");
    fs::create_dir_all(&dir).unwrap();
    let store = Store::init();

    let help = nexus(store.path(), ["--help"]);
    assert!(help.status.success(), "{}", show(&help));
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("mount") && text.contains("umount"), "{text}");
    let help = nexus(store.path(), ["mount", "--help"]);
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        text.contains("--generation") && text.contains("SIGTERM"),
        "{text}"
    );

    // (`nexus mount` alone is the configured system mount: not a usage error.)
    let usage = nexus(store.path(), ["mount", "x", "y"]);
    assert_eq!(usage.status.code(), Some(2), "{}", show(&usage));
    let usage = nexus(store.path(), ["mount", "x", "--generation", "two"]);
    assert_eq!(usage.status.code(), Some(2), "{}", show(&usage));

    let missing = nexus(store.path(), ["mount", "/nonexistent/nexus-mnt"]);
    assert_eq!(missing.status.code(), Some(1), "{}", show(&missing));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/nexus-mnt"));

    // Errors of the daemon come back through the readiness pipe.
    let no_store = nexus(
        &scratch.join("no-store"),
        [OsString::from("mount"), dir.clone().into()],
    );
    assert_eq!(no_store.status.code(), Some(1), "{}", show(&no_store));
    assert!(
        String::from_utf8_lossy(&no_store.stderr).contains("not a Nexus store"),
        "{}",
        show(&no_store)
    );
    let no_gen = nexus(
        store.path(),
        [
            OsString::from("mount"),
            dir.clone().into(),
            "--generation".into(),
            "42".into(),
        ],
    );
    assert_eq!(no_gen.status.code(), Some(1), "{}", show(&no_gen));
    assert!(
        String::from_utf8_lossy(&no_gen.stderr).contains("generation 42"),
        "{}",
        show(&no_gen)
    );
    assert!(!is_mounted(&fs::canonicalize(&dir).unwrap()));

    let not_mounted = nexus(store.path(), [OsString::from("umount"), dir.into()]);
    assert_eq!(not_mounted.status.code(), Some(1), "{}", show(&not_mounted));
    assert!(String::from_utf8_lossy(&not_mounted.stderr).contains("not a mount point"));
    let foreign = nexus(store.path(), ["umount", "/"]);
    assert_eq!(foreign.status.code(), Some(1), "{}", show(&foreign));
    assert!(
        String::from_utf8_lossy(&foreign.stderr).contains("not a nexus mount"),
        "{}",
        show(&foreign)
    );
}

/// Different inodes have different numbers: the App directory, its
/// `Current` link, the Version directory and the files never collide.
#[test]
fn inode_numbers_identify_inodes() {
    if !root_or_skip("inode_numbers_identify_inodes") {
        return;
    }
    let scratch = Scratch::new("mount-ino");
    let (store, _) = small_store(&scratch);
    let mount = Mount::start(store.path(), &scratch.join("mnt"), &[]);
    let numbers = inode_numbers(mount.point());
    let distinct: BTreeSet<u64> = numbers.values().copied().collect();
    assert_eq!(distinct.len(), numbers.len(), "{numbers:?}");
    mount.umount();
}

#[test]
fn only_allow_other_lets_other_users_in() {
    if !root_or_skip("only_allow_other_lets_other_users_in") {
        return;
    }
    let scratch = Scratch::new("mount-users");
    nexus_integration_tests::fixtures::chmod(scratch.path(), 0o755);
    let (store, _) = small_store(&scratch);
    let private = Mount::start(store.path(), &scratch.join("private"), &[]);
    let shared = Mount::start(store.path(), &scratch.join("shared"), &["--allow-other"]);
    assert!(
        !cat_as_nobody(&private.join("small/1/bin/tool")),
        "another user read a mount made without --allow-other"
    );
    assert!(
        cat_as_nobody(&shared.join("small/1/bin/tool")),
        "another user cannot read a mount made with --allow-other"
    );
    private.umount();
    shared.umount();
}

#[test]
fn nexus_umount_removes_the_mount_of_a_dead_daemon() {
    if !root_or_skip("nexus_umount_removes_the_mount_of_a_dead_daemon") {
        return;
    }
    let scratch = Scratch::new("mount-dead");
    let (store, _) = small_store(&scratch);
    let mount = Mount::start(store.path(), &scratch.join("mnt"), &[]);
    // The daemon's keeper detaches the mount of a daemon killed alone
    // (tests/sandbox.rs): kill it first, as when everything dies at once.
    let children = fs::read_to_string(format!("/proc/{0}/task/{0}/children", mount.pid()))
        .expect("the daemon's children");
    for child in children.split_whitespace() {
        let child: i32 = child.parse().expect("a pid");
        // SAFETY: plain kill(2) of the daemon's keeper.
        assert_eq!(unsafe { libc::kill(child, libc::SIGKILL) }, 0);
        assert!(wait_for(Duration::from_secs(10), || !alive(child)));
    }
    // SAFETY: plain kill(2) of the daemon we started.
    assert_eq!(unsafe { libc::kill(mount.pid(), libc::SIGKILL) }, 0);
    assert!(wait_for(Duration::from_secs(10), || !alive(mount.pid())));
    let err = fs::read_dir(mount.point()).expect_err("a dead daemon's mount is readable");
    // The kernel says ENOTCONN, or ECONNABORTED when it was still tearing
    // the connection down: either way, the mount is dead.
    assert!(
        matches!(
            err.raw_os_error(),
            Some(libc::ENOTCONN | libc::ECONNABORTED)
        ),
        "{err}"
    );
    // A new daemon is not stacked on the dead mount: it is told to remove
    // it first, and once removed it mounts.
    let refused = nexus(
        store.path(),
        [
            OsString::from("mount"),
            mount.point().as_os_str().to_owned(),
        ],
    );
    assert_eq!(refused.status.code(), Some(1), "{}", show(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("nexus umount"),
        "{}",
        show(&refused)
    );
    let point = mount.point().to_path_buf();
    mount.umount();
    assert!(!is_mounted(&point), "nexus umount left the dead mount");
    let again = Mount::start(store.path(), &point, &[]);
    assert_eq!(
        fs::read(again.join("small/1/bin/tool")).unwrap(),
        b"#!/bin/sh\necho tool\n"
    );
    again.umount();
}

#[test]
fn a_second_daemon_is_not_stacked_on_a_live_mount() {
    if !root_or_skip("a_second_daemon_is_not_stacked_on_a_live_mount") {
        return;
    }
    let scratch = Scratch::new("mount-twice");
    let (store, _) = small_store(&scratch);
    let mount = Mount::start(store.path(), &scratch.join("mnt"), &[]);
    let mounts_here = || {
        fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.split(' ').nth(4) == Some(mount.point().to_str().unwrap()))
            .count()
    };
    assert_eq!(mounts_here(), 1);
    for extra in [&[][..], &["--foreground"][..]] {
        let mut args = vec![
            OsString::from("mount"),
            mount.point().as_os_str().to_owned(),
        ];
        args.extend(extra.iter().map(OsString::from));
        let refused = nexus(store.path(), args);
        assert_eq!(refused.status.code(), Some(1), "{}", show(&refused));
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            stderr.contains("is a nexus mount already") && stderr.contains("nexus takeover"),
            "{}",
            show(&refused)
        );
    }
    // Nothing was stacked, and the first daemon serves on.
    assert_eq!(mounts_here(), 1);
    assert!(alive(mount.pid()));
    assert_eq!(
        fs::read(mount.join("small/1/bin/tool")).unwrap(),
        b"#!/bin/sh\necho tool\n"
    );
    mount.umount();
}

/// `nexus ARGS` must fail (exit 1) naming `dir` as what others could
/// change, and leave `point` unmounted.
fn refused_for(store: &Path, args: &[&Path], dir: &Path, point: &Path) {
    let mut argv: Vec<OsString> = Vec::new();
    argv.extend(args.iter().map(|a| a.as_os_str().to_owned()));
    let out = nexus(store, argv);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        err.contains(&format!("the directory {} on the way", dir.display()))
            && err.contains("writable by"),
        "{}",
        show(&out)
    );
    assert!(!is_mounted(point), "{} was mounted", point.display());
}

/// A user who can rename an entry in a directory on the way to a mount
/// point can make the same path reach another place, or another mount,
/// between two of root's looks: a daemon restarted from systemd's
/// descriptor store (which runs the same `nexus mount` command line) would
/// then take whatever mount the path reaches for its own, detach its view
/// or cover it with one. As root, `nexus mount` (for the mount point and
/// the Index) and `nexus takeover` refuse such a way, symlinks followed
/// out of such a directory included; a sticky directory holding root's
/// own directories is fine.
#[test]
fn a_mount_point_whose_way_others_can_change_is_refused_as_root() {
    use std::os::unix::fs::PermissionsExt;
    if !root_or_skip("a_mount_point_whose_way_others_can_change_is_refused_as_root") {
        return;
    }
    let scratch = Scratch::new("mount-way");
    let (store, _) = small_store(&scratch);
    let mode = |p: &Path, m: u32| fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
    let base = fs::canonicalize(scratch.path()).unwrap();
    mode(&base, 0o755);
    // Another user's writable directory holding the mount point.
    let shared = base.join("shared");
    fs::create_dir_all(shared.join("Programs")).unwrap();
    mode(&shared, 0o777);
    let mount = Path::new("mount");
    refused_for(
        store.path(),
        &[mount, &shared.join("Programs")],
        &shared,
        &shared.join("Programs"),
    );
    // A link in such a directory, though it leads to root's own.
    let trusted = base.join("trusted");
    fs::create_dir_all(trusted.join("Programs")).unwrap();
    fs::create_dir_all(trusted.join("Index")).unwrap();
    std::os::unix::fs::symlink(trusted.join("Programs"), shared.join("link")).unwrap();
    refused_for(
        store.path(),
        &[mount, &shared.join("link")],
        &shared,
        &trusted.join("Programs"),
    );
    // The Index directory likewise.
    fs::create_dir_all(shared.join("Index")).unwrap();
    refused_for(
        store.path(),
        &[
            mount,
            &trusted.join("Programs"),
            Path::new("--index"),
            &shared.join("Index"),
        ],
        &shared,
        &trusted.join("Programs"),
    );
    // Root's own way mounts; a takeover through the link is refused and
    // the daemon serving the mount goes on serving it.
    let served = Mount::start(store.path(), &trusted.join("Programs"), &[]);
    refused_for(
        store.path(),
        &[Path::new("takeover"), &shared.join("link")],
        &shared,
        &shared.join("link"),
    );
    assert!(alive(served.pid()), "the daemon serving the mount ended");
    assert_eq!(
        fs::read(served.join("small/1/bin/tool")).unwrap(),
        b"#!/bin/sh\necho tool\n"
    );
    drop(served);
    // A sticky directory others can write: others cannot move root's
    // entries in it, so it may hold root's mount point or a directory
    // above it; but not another user's directory as the mount point (they
    // could swap it between the check and the mount), nor is a symlink
    // another user keeps there followed.
    let sticky = base.join("sticky");
    fs::create_dir_all(sticky.join("theirs")).unwrap();
    std::os::unix::fs::lchown(sticky.join("theirs"), Some(65534), Some(65534)).unwrap();
    fs::create_dir_all(sticky.join("roots/Programs")).unwrap();
    mode(&sticky, 0o1777);
    refused_for(
        store.path(),
        &[mount, &sticky.join("theirs")],
        &sticky,
        &sticky.join("theirs"),
    );
    std::os::unix::fs::symlink(trusted.join("Programs"), sticky.join("link")).unwrap();
    std::os::unix::fs::lchown(sticky.join("link"), Some(65534), Some(65534)).unwrap();
    refused_for(
        store.path(),
        &[mount, &sticky.join("link")],
        &sticky,
        &trusted.join("Programs"),
    );
    // Root's own directory in it, or below one of root's there, mounts.
    let served = Mount::start(store.path(), &sticky.join("roots"), &[]);
    assert!(is_mounted(&sticky.join("roots")));
    drop(served);
    let served = Mount::start(store.path(), &sticky.join("roots/Programs"), &[]);
    assert!(is_mounted(&sticky.join("roots/Programs")));
    drop(served);
}
