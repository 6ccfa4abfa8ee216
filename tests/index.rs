//! The Index (`nexus mount MOUNTPOINT --index DIR`): real Debian packages
//! run through `PATH=DIR/bin` and `LD_LIBRARY_PATH=DIR/lib`, name clashes
//! between crafted Apps resolve by the documented rule (an App signed by a
//! key trusted only for some Apps ranks after every other; then the App
//! whose name sorts first wins; within one App `bin/` beats `usr/bin/`),
//! the index follows `nip remove` and `nip switch` within a second, a
//! package's private directory is listed to no other user through it, and
//! both mounts go away together on `nexus umount` and SIGTERM.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nexus_integration_tests::debs::{Unpacked, fetch_and_unpack};
use nexus_integration_tests::fixtures::{Scratch, cat_as_nobody, chmod, ls_as_nobody, write_file};
use nexus_integration_tests::nexus::{Mount, alive, is_mounted, nexus, show, wait_for};
use nexus_integration_tests::{Store, root_or_skip};

/// How long a generation change may take to show in the index.
const SHOW_WITHIN: Duration = Duration::from_secs(1);

/// The FUSE tests mount file systems: root only (as CI runs them).
/// Names in a directory, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// An index directory made for a test; unmounted lazily on drop if the test
/// did not see it go, so that a failing test leaves nothing mounted.
struct IndexDir(PathBuf);

impl IndexDir {
    fn new(scratch: &Scratch) -> IndexDir {
        let dir = scratch.join("index");
        fs::create_dir_all(&dir).unwrap();
        IndexDir(fs::canonicalize(dir).unwrap())
    }

    fn arg(&self) -> &str {
        self.0.to_str().expect("a UTF-8 scratch path")
    }

    fn join(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }

    /// Fails unless the index is unmounted within `timeout` and its
    /// directory readable again.
    fn assert_gone(&self, timeout: Duration, context: &str) {
        assert!(
            wait_for(timeout, || !is_mounted(&self.0)),
            "{context}: the index on {} is still mounted",
            self.0.display()
        );
        fs::read_dir(&self.0)
            .unwrap_or_else(|e| panic!("{context}: {} is unreadable: {e}", self.0.display()));
    }
}

impl Drop for IndexDir {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Runs `sh -c script` with the index's `bin` first in `PATH` (the system's
/// after it, for `sh` itself) and `extra` environment; returns its stdout,
/// failing on a non-zero exit.
fn sh_in(index: &IndexDir, script: &str, extra: &[(&str, PathBuf)]) -> String {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(script)
        .env_clear()
        .env(
            "PATH",
            format!("{}:/usr/bin:/bin", index.join("bin").display()),
        )
        .stdin(Stdio::null());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run /bin/sh");
    assert!(out.status.success(), "{script}: {}", show(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn real_programs_run_through_the_index() {
    if !root_or_skip("real_programs_run_through_the_index") {
        return;
    }
    let scratch = Scratch::new("index-real");
    let pkgs: Vec<Unpacked> =
        fetch_and_unpack(&["hello", "jq", "libjq1", "libonig5"], &scratch.join("src"));
    let store = Store::init();
    let mut args = vec![OsString::from("add")];
    args.extend(pkgs.iter().map(|p| p.dir.clone().into_os_string()));
    store.ok(&args);

    let index = IndexDir::new(&scratch);
    let mount = Mount::start(
        store.path(),
        &scratch.join("mnt"),
        &["--index", index.arg()],
    );
    assert_eq!(
        names(&index.0),
        ["bin", "include", "lib", "libexec", "sbin", "share"]
    );
    assert_eq!(
        fs::read_link(index.join("bin/hello")).unwrap(),
        mount.join("hello/Current/usr/bin/hello"),
        "links go through Current into the mount"
    );

    // Programs are found through PATH, libraries through the index's lib
    // (Debian's usr/lib/x86_64-linux-gnu content is merged into it).
    assert_eq!(
        sh_in(&index, "command -v hello; command -v jq", &[]),
        format!(
            "{}\n{}\n",
            index.join("bin/hello").display(),
            index.join("bin/jq").display()
        )
    );
    assert_eq!(sh_in(&index, "hello", &[]), "Hello, world!\n");
    let libs = [("LD_LIBRARY_PATH", index.join("lib"))];
    let resolved = sh_in(&index, "LD_TRACE_LOADED_OBJECTS=1 jq", &libs);
    for lib in ["libjq.so.1", "libonig.so.5"] {
        let expected = format!("{lib} => {}", index.join("lib").join(lib).display());
        assert!(
            resolved.contains(&expected),
            "jq does not load {lib} from the index:\n{resolved}"
        );
    }
    assert_eq!(
        sh_in(
            &index,
            r#"echo '{"a": [1, 2, 3]}' | jq -c '.a | map(. * 2)'"#,
            &libs
        ),
        "[2,4,6]\n"
    );
    let multiarch = index.join("lib/x86_64-linux-gnu");
    assert!(
        fs::symlink_metadata(&multiarch).unwrap().is_dir(),
        "the multiarch directory is merged too"
    );
    assert!(names(&multiarch).contains(&"libjq.so.1".to_string()));

    // Subdirectories are real directories, merged from several packages,
    // with links at the leaves that read as the packaged files.
    let man1 = index.join("share/man/man1");
    assert!(fs::symlink_metadata(&man1).unwrap().is_dir());
    assert!(
        names(&man1).starts_with(&["hello.1.gz".to_string(), "jq.1.gz".to_string()]),
        "{:?}",
        names(&man1)
    );
    let hello = pkgs.iter().find(|p| p.name == "hello").unwrap();
    assert!(
        fs::symlink_metadata(man1.join("hello.1.gz"))
            .unwrap()
            .is_symlink()
    );
    assert_eq!(
        fs::read(man1.join("hello.1.gz")).unwrap(),
        fs::read(hello.dir.join("usr/share/man/man1/hello.1.gz")).unwrap()
    );

    // Index inode numbers are 4·x + 3 (the root 3), never a number of the
    // main view.
    assert_eq!(fs::metadata(&index.0).unwrap().ino(), 3);
    for path in ["bin", "bin/hello", "share/man/man1", "lib/libjq.so.1"] {
        let ino = fs::symlink_metadata(index.join(path)).unwrap().ino();
        assert_eq!(ino % 4, 3, "{path}: {ino}");
    }

    // SIGTERM takes both mounts down.
    // SAFETY: plain kill(2) of the daemon we started.
    assert_eq!(unsafe { libc::kill(mount.pid(), libc::SIGTERM) }, 0);
    index.assert_gone(Duration::from_secs(10), "after SIGTERM");
    mount.assert_gone(Duration::from_secs(10), "after SIGTERM");
}

/// Polls `condition` every 10 ms; true if it holds before `deadline`.
fn holds_before(deadline: Instant, mut condition: impl FnMut() -> bool) -> bool {
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Writes an executable script printing `says` at `root/rel`.
fn program(root: &Path, rel: &str, says: &str) {
    let path = root.join(rel);
    write_file(&path, format!("#!/bin/sh\necho {says}\n").as_bytes());
    chmod(&path, 0o755);
}

#[test]
fn clashes_resolve_by_the_rule_and_switches_show_within_a_second() {
    if !root_or_skip("clashes_resolve_by_the_rule_and_switches_show_within_a_second") {
        return;
    }
    let scratch = Scratch::new("index-clash");
    let src = scratch.join("src");
    let (alpha, beta, gamma) = (src.join("alpha/1"), src.join("beta/1"), src.join("gamma/1"));
    program(&alpha, "bin/tool", "alpha");
    program(&alpha, "usr/bin/tool2", "alpha-usr");
    program(&alpha, "usr/bin/only-alpha", "only-alpha");
    program(&beta, "usr/bin/tool", "beta-usr");
    program(&beta, "bin/tool2", "beta");
    program(&gamma, "usr/bin/x", "gamma-usr");
    program(&gamma, "bin/x", "gamma");
    let store = Store::init();
    store.ok([
        OsString::from("add"),
        alpha.into_os_string(),
        beta.into_os_string(),
        gamma.into_os_string(),
    ]);

    let index = IndexDir::new(&scratch);
    let mount = Mount::start(
        store.path(),
        &scratch.join("mnt"),
        &["--index", index.arg()],
    );
    let link = |name: &str| fs::read_link(index.join("bin").join(name)).ok();
    // alpha sorts before beta, wherever in them the names are; within gamma
    // bin/ beats usr/bin/.
    assert_eq!(
        sh_in(&index, "tool; tool2; x; only-alpha", &[]),
        "alpha\nalpha-usr\ngamma\nonly-alpha\n"
    );
    assert_eq!(link("tool"), Some(mount.join("alpha/Current/bin/tool")));
    assert_eq!(
        link("tool2"),
        Some(mount.join("alpha/Current/usr/bin/tool2"))
    );
    assert_eq!(link("x"), Some(mount.join("gamma/Current/bin/x")));

    // Removing alpha: its names go or pass to beta, within a second of the
    // command even for names the kernel has just cached. The second counts
    // from the moment the kernel cached the name, so that only an
    // invalidation, not the entry's expiry (also a second), can make it.
    let started = Instant::now();
    fs::symlink_metadata(index.join("bin/only-alpha")).unwrap();
    store.ok(["remove", "alpha/1"]);
    assert!(
        holds_before(started + SHOW_WITHIN, || {
            link("tool") == Some(mount.join("beta/Current/usr/bin/tool"))
                && fs::symlink_metadata(index.join("bin/only-alpha")).is_err()
        }),
        "the index does not follow `nip remove` within {SHOW_WITHIN:?}:\n{}",
        mount.log()
    );
    eprintln!("the index followed nip remove in {:?}", started.elapsed());
    assert_eq!(sh_in(&index, "tool; tool2", &[]), "beta-usr\nbeta\n");
    assert_eq!(names(&index.join("bin")), ["tool", "tool2", "x"]);

    // A switch back to the first generation brings alpha's back.
    let started = Instant::now();
    store.ok(["switch", "1"]);
    assert!(
        holds_before(started + SHOW_WITHIN, || link("tool")
            == Some(mount.join("alpha/Current/bin/tool"))),
        "the index does not follow `nip switch` within {SHOW_WITHIN:?}:\n{}",
        mount.log()
    );
    assert_eq!(
        sh_in(&index, "tool; only-alpha", &[]),
        "alpha\nonly-alpha\n"
    );

    // `nexus umount MOUNTPOINT` takes the index down with the mount.
    mount.umount();
    index.assert_gone(Duration::from_secs(10), "after nexus umount");
}

/// What the restricted-signer tests share: a store holding `zz-core/1`
/// (added by root) and `aa-evil/1`, a `.npk` signed by a vendor key it
/// trusts only for Apps `aa-*`, so recorded restricted; both ship
/// `bin/tool`, and `aa-evil` sorts first. The `.npk` is left in
/// `SCRATCH/aa-evil-1.npk`.
fn restricted_setup(scratch: &Scratch) -> Store {
    let src = scratch.join("src");
    let vendor = Store::init();
    vendor.ok(["key", "generate", "vendor"]);
    let evil = src.join("aa-evil/1");
    program(&evil, "bin/tool", "evil");
    program(&evil, "bin/only-evil", "only-evil");
    vendor.add_dir(&evil, "aa-evil", "1");
    let npk = scratch.join("aa-evil-1.npk");
    vendor.ok([
        OsString::from("pack"),
        "aa-evil/1".into(),
        "-o".into(),
        npk.clone().into_os_string(),
        "--key".into(),
        "vendor".into(),
    ]);
    let public = public_key(&vendor, "vendor");

    let store = Store::init();
    let core = src.join("zz-core/1");
    program(&core, "bin/tool", "core");
    store.add_dir(&core, "zz-core", "1");
    store.ok([
        OsString::from("key"),
        "trust".into(),
        public.into_os_string(),
        "--for".into(),
        "packages".into(),
        "--apps".into(),
        "aa-*".into(),
    ]);
    store.ok([OsString::from("add"), npk.into_os_string()]);
    assert_eq!(store.json(["info", "aa-evil"])[0]["restricted_to"], "aa-*");
    assert!(store.json(["info", "zz-core"])[0]["restricted_to"].is_null());
    store
}

/// The public key file (`KEYS/public/ID.pub`) of the key named `name`
/// generated in `store`.
fn public_key(store: &Store, name: &str) -> PathBuf {
    fs::read_dir(store.path().join("keys/public"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            // nexus-public-key-v1 ed25519 NAME HEX64
            fs::read_to_string(p).unwrap().split(' ').nth(2) == Some(name)
        })
        .unwrap_or_else(|| panic!("no public key named {name}"))
}

/// Mounts `store` (or the image in `extra`) with an Index and checks that
/// `bin/tool` is `zz-core`'s, not the restricted `aa-evil`'s, and that what
/// only `aa-evil` has is there.
fn assert_core_keeps_tool(store: &Store, scratch: &Scratch, label: &str, extra: &[&str]) {
    let index = IndexDir(scratch.join(format!("index-{label}")));
    fs::create_dir_all(&index.0).unwrap();
    let index = IndexDir(fs::canonicalize(&index.0).unwrap());
    let mut args = vec!["--index", index.arg()];
    args.extend_from_slice(extra);
    let mount = Mount::start(store.path(), &scratch.join(format!("mnt-{label}")), &args);
    let link = |name: &str| fs::read_link(index.join("bin").join(name)).ok();
    assert_eq!(
        link("tool"),
        Some(mount.join("zz-core/Current/bin/tool")),
        "{label}: a restricted App took a name an unrestricted App has"
    );
    assert_eq!(
        link("only-evil"),
        Some(mount.join("aa-evil/Current/bin/only-evil"))
    );
    assert_eq!(sh_in(&index, "tool; only-evil", &[]), "core\nonly-evil\n");
    mount.umount();
    index.assert_gone(
        Duration::from_secs(10),
        &format!("{label}: after nexus umount"),
    );
}

/// The hole: a key trusted only for `aa-*` signs `aa-evil`, which sorts
/// before `zz-core`, with a `bin/tool` of its own; by App name alone
/// `INDEX/bin/tool` was its program for everyone with the Index in `PATH`,
/// root included. Its package is recorded restricted and ranks after every
/// unrestricted App: `zz-core`'s `tool` stays, and what only `aa-evil` has
/// is still there.
#[test]
fn a_restricted_signer_takes_no_index_name_from_an_unrestricted_app() {
    if !root_or_skip("a_restricted_signer_takes_no_index_name_from_an_unrestricted_app") {
        return;
    }
    let scratch = Scratch::new("index-restricted");
    let store = restricted_setup(&scratch);
    assert_core_keeps_tool(&store, &scratch, "local", &[]);
}

/// The same hole through an image: `nexus snapshot` of that store carried
/// no restriction, so on every host that switched to the image (or served
/// it with `mount --image`) `aa-evil` ranked unrestricted and took
/// `bin/tool`. The image states it now, and the host ranks it as the
/// publisher does.
#[test]
fn an_image_keeps_a_restricted_package_restricted_on_every_host() {
    if !root_or_skip("an_image_keeps_a_restricted_package_restricted_on_every_host") {
        return;
    }
    let scratch = Scratch::new("index-restricted-image");
    let publisher = &restricted_setup(&scratch);
    publisher.ok(["key", "generate", "admin"]);
    let image = scratch.join("system.img");
    let image_arg = image.to_str().expect("a UTF-8 scratch path");
    let out = nexus(
        publisher.path(),
        ["snapshot", "--key", "admin", "-o", image_arg],
    );
    assert!(out.status.success(), "{}", show(&out));
    let admin = public_key(publisher, "admin");

    let host = Store::init();
    host.ok([
        OsString::from("key"),
        "trust".into(),
        admin.into_os_string(),
        "--for".into(),
        "images".into(),
    ]);
    // Served in place: the throw-away store made from the image.
    assert_core_keeps_tool(&host, &scratch, "served", &["--image", image_arg]);
    // Switched to: imported into the host's store.
    let out = nexus(host.path(), ["switch", image_arg]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(host.json(["info", "aa-evil"])[0]["restricted_to"], "aa-*");
    assert!(host.json(["info", "zz-core"])[0]["restricted_to"].is_null());
    assert_core_keeps_tool(&host, &scratch, "switched", &[]);
}

/// The same hole through a remote: a generation published by that store
/// carried no restriction, so every subscriber that pulled it ranked
/// `aa-evil` unrestricted. The metadata states it now, and the pull makes
/// it restricted even on a subscriber already holding the very package
/// unrestricted (here added by root; as a pull by a build before this one
/// left it): the publisher's key vouches for the whole generation,
/// restrictions included.
#[test]
fn a_pulled_generation_keeps_a_restricted_package_restricted() {
    if !root_or_skip("a_pulled_generation_keeps_a_restricted_package_restricted") {
        return;
    }
    let scratch = Scratch::new("index-restricted-pull");
    let publisher = &restricted_setup(&scratch);
    publisher.ok(["key", "generate", "publisher"]);
    let tree = scratch.join("published");
    let url = format!("file://{}", tree.display());
    publisher.ok(["remote", "add", "dir", &url]);
    publisher.ok(["publish", "dir", "--key", "publisher"]);
    let key = public_key(publisher, "publisher");

    let host = Store::init();
    host.ok([
        OsString::from("add"),
        "--insecure".into(),
        scratch.join("aa-evil-1.npk").into_os_string(),
    ]);
    assert!(host.json(["info", "aa-evil"])[0]["restricted_to"].is_null());
    host.ok([
        OsString::from("remote"),
        "add".into(),
        "dir".into(),
        url.into(),
        "--key".into(),
        key.into_os_string(),
    ]);
    host.ok(["pull", "dir"]);
    assert_eq!(host.json(["info", "aa-evil"])[0]["restricted_to"], "aa-*");
    assert!(host.json(["info", "zz-core"])[0]["restricted_to"].is_null());
    assert_core_keeps_tool(&host, &scratch, "pulled", &[]);
}

#[test]
fn the_index_alone_can_be_unmounted_and_bad_index_directories_are_refused() {
    if !root_or_skip("the_index_alone_can_be_unmounted") {
        return;
    }
    let scratch = Scratch::new("index-alone");
    program(&scratch.join("src/small/1"), "bin/tool", "tool");
    let store = Store::init();
    store.ok([
        OsString::from("add"),
        scratch.join("src/small/1").into_os_string(),
    ]);
    // Below a directory of the scratch one, so that the directory above the
    // mount point is not sticky /tmp (refused first, see `mount`).
    let point = scratch.join("top/mnt");
    fs::create_dir_all(point.join("inside")).unwrap();

    // Refused before anything is mounted.
    for (dir, says) in [
        (scratch.join("nonexistent"), "index directory"),
        (point.clone(), "must not contain each other"),
        (point.join("inside"), "must not contain each other"),
        (scratch.join("top"), "must not contain each other"),
    ] {
        let out = nexus(
            store.path(),
            [
                OsString::from("mount"),
                point.clone().into_os_string(),
                "--index".into(),
                dir.into_os_string(),
            ],
        );
        assert_eq!(out.status.code(), Some(1), "{}", show(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(says),
            "{}",
            show(&out)
        );
        assert!(!is_mounted(&fs::canonicalize(&point).unwrap()));
    }

    let index = IndexDir::new(&scratch);
    let mount = Mount::start(store.path(), &point, &["--index", index.arg()]);
    let out = nexus(store.path(), ["umount", index.arg()]);
    assert!(out.status.success(), "{}", show(&out));
    index.assert_gone(Duration::from_secs(10), "after nexus umount INDEX");
    assert!(alive(mount.pid()), "unmounting the index ended the daemon");
    assert_eq!(
        fs::read(mount.join("small/1/bin/tool")).unwrap(),
        b"#!/bin/sh\necho tool\n",
        "the main mount serves on"
    );
    mount.umount();
}

/// A package's private directory (0700, as polkit's `rules.d`) is listed
/// to no other user through the Index, which merges it into `share`, any
/// more than through the mount; root still lists it, and the open
/// directories beside it stay open.
#[test]
fn a_private_directory_is_listed_to_no_other_user_through_the_index() {
    if !root_or_skip("a_private_directory_is_listed_to_no_other_user_through_the_index") {
        return;
    }
    let scratch = Scratch::new("index-private");
    let src = scratch.join("src");
    let secret = src.join("usr/share/secret/db-credentials-prod.conf");
    write_file(&secret, b"x\n");
    chmod(&secret, 0o600);
    chmod(&src.join("usr/share/secret"), 0o700);
    write_file(&src.join("usr/share/open/readme"), b"open\n");
    let store = Store::init();
    store.add_dir(&src, "demo", "1");

    let index = IndexDir::new(&scratch);
    let mount = Mount::start(
        store.path(),
        &scratch.join("mnt"),
        &["--allow-other", "--index", index.arg()],
    );
    // Through the mount, as the package has it.
    assert_eq!(ls_as_nobody(&mount.join("demo/1/usr/share/secret")), None);
    let listed = ls_as_nobody(&mount.join("demo/1/usr/share/open"));
    assert_eq!(
        listed.as_deref(),
        Some(&[".", "..", "readme"].map(String::from)[..])
    );

    // Through the Index: the same.
    let merged = index.join("share/secret");
    let meta = fs::metadata(&merged).unwrap();
    assert_eq!(
        (meta.mode() & 0o7777, meta.uid(), meta.gid()),
        (0o700, 0, 0),
        "the merged directory is the package's"
    );
    assert_eq!(
        ls_as_nobody(&merged),
        None,
        "another user listed a 0700 directory through the Index"
    );
    assert!(!cat_as_nobody(&merged.join("db-credentials-prod.conf")));
    assert_eq!(
        names(&merged),
        ["db-credentials-prod.conf"],
        "root lists it"
    );
    let listed = ls_as_nobody(&index.join("share/open"));
    assert_eq!(
        listed.as_deref(),
        Some(&[".", "..", "readme"].map(String::from)[..])
    );
    let share = ls_as_nobody(&index.join("share")).expect("share is open");
    assert!(share.contains(&"secret".to_string()), "{share:?}");
    mount.umount();
    index.assert_gone(Duration::from_secs(10), "after nexus umount");
}
