//! Grafting package files: real Debian packages compared with `dpkg-deb -x`,
//! a crafted pacman package compared with `bsdtar -x`, a crafted pkgsrc
//! package, NARs made by `nix-store --dump` (from real packages' trees and
//! a crafted one) compared with `nix-store --restore`, and hostile
//! archives of every kind, each refused with a clear error that leaves the
//! store unchanged.
//!
//! The documented mapping (README.md, "Package files"): `usr/X` of a `.deb`
//! or pacman package lands at `X`, everything else keeps its path, and the
//! version loses its epoch. `apply_fhs_mapping` applies it to an unpacked
//! tree so the two can be compared entry by entry.
//!
//! Pacman packages come two ways: built by Debian's makepkg from the
//! PKGBUILDs in `tests/pacman/` (makepkg refuses to run as root, and CI
//! runs as root, so it runs as `nobody` there), and assembled by hand like
//! makepkg does (its dot-files first, then the tree, as a pax tar with
//! xattrs, zstd-compressed) for what fakeroot cannot record, such as a
//! `security.capability` xattr.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nexus_integration_tests::archive::{
    NarNode, TarEntry, ar, deb, nar, nar_str, pacman, tar, zstd,
};
use nexus_integration_tests::crafted::cap_net_raw_ep;
use nexus_integration_tests::fixtures::{chmod, lchown, set_mtime, write_file};
use nexus_integration_tests::nip::EXIT_ERROR;
use nexus_integration_tests::{
    Scratch, Store, assert_same_tree, deb_field, fetch_debs, is_root, unpack_deb,
};

/// Moves `usr/*` of an unpacked package to its root, as `nip add` maps it,
/// keeping every mtime (moving entries changes their directories' times).
fn apply_fhs_mapping(root: &Path) {
    let usr = root.join("usr");
    if !fs::symlink_metadata(&usr).is_ok_and(|m| m.is_dir()) {
        return;
    }
    let root_mtime = fs::metadata(root).unwrap().mtime();
    for entry in fs::read_dir(&usr).unwrap() {
        let entry = entry.unwrap();
        let dest = root.join(entry.file_name());
        assert!(
            !dest.exists(),
            "{} exists both under usr/ and at the root: this test does not merge trees",
            dest.display()
        );
        let mtime = fs::symlink_metadata(entry.path()).unwrap().mtime();
        fs::rename(entry.path(), &dest).unwrap();
        set_mtime(&dest, mtime);
    }
    fs::remove_dir(&usr).unwrap();
    set_mtime(root, root_mtime);
}

/// Seconds since the epoch of a UTC civil time (Howard Hinnant's
/// days-from-civil).
fn epoch_seconds(y: i64, m: i64, d: i64, hh: i64, mm: i64, ss: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe - 719_468) * 86_400 + hh * 3600 + mm * 60 + ss
}

/// Gives the directories of an unpacked `.deb` the mtimes its data.tar
/// records. GNU tar (behind `dpkg-deb -x`) creates symlinks only after it
/// has restored directory times, so a directory holding a symlink ends up
/// with the time of extraction; nip keeps the archive's.
fn restore_directory_mtimes(deb: &Path, expected: &Path) {
    let listing = Command::new("sh")
        .arg("-c")
        .arg("dpkg-deb --fsys-tarfile \"$0\" | TZ=UTC tar -tv --full-time --numeric-owner")
        .arg(deb)
        .output()
        .unwrap();
    assert!(listing.status.success(), "listing {}", deb.display());
    let mut seen = std::collections::HashSet::new();
    for line in String::from_utf8_lossy(&listing.stdout).lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || !f[0].starts_with('d') {
            continue;
        }
        let date: Vec<i64> = f[3].split('-').map(|x| x.parse().unwrap()).collect();
        let time: Vec<i64> = f[4].split(':').map(|x| x.parse().unwrap()).collect();
        let secs = epoch_seconds(date[0], date[1], date[2], time[0], time[1], time[2]);
        let path = f[5].trim_start_matches("./").trim_end_matches('/');
        let mapped = match path {
            "usr" => "",
            p => p.strip_prefix("usr/").unwrap_or(p),
        };
        // The first entry of a directory wins, as in nip.
        if seen.insert(mapped.to_string()) {
            set_mtime(&expected.join(mapped), secs);
        }
    }
}

/// A Debian version without its epoch, as nip names versions.
fn without_epoch(version: &str) -> &str {
    version.split_once(':').map_or(version, |(_, v)| v)
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn add_args(paths: &[&Path]) -> Vec<OsString> {
    let mut args = vec![OsString::from("add")];
    args.extend(paths.iter().map(|p| p.as_os_str().to_owned()));
    args
}

#[test]
fn real_debs_match_dpkg_deb() {
    let scratch = Scratch::new("graft-debs");
    let debs = fetch_debs(&["hello", "jq", "libjq1", "libonig5", "busybox-static"]);
    let store = Store::init();
    let deb_paths: Vec<&Path> = debs.iter().map(PathBuf::as_path).collect();
    store.ok(add_args(&deb_paths));
    let history = store.history();
    assert_eq!(history.len(), 1, "five .debs must make one generation");

    let dirs = Store::init();
    let mut mapped = Vec::new();
    for deb in &debs {
        let name = deb_field(deb, "Package");
        let full = deb_field(deb, "Version");
        let version = without_epoch(&full).to_string();
        let spec = format!("{name}/{version}");
        let listed = store
            .listed(&name, &version)
            .unwrap_or_else(|| panic!("{spec} is not listed after adding {}", deb.display()));

        let expected = scratch.join(format!("expected/{name}/{version}"));
        fs::create_dir_all(&expected).unwrap();
        unpack_deb(deb, &expected);
        apply_fhs_mapping(&expected);
        restore_directory_mtimes(deb, &expected);
        let exported = scratch.join(format!("exported-{name}"));
        store.export(&spec, &exported);
        assert_same_tree(
            &expected,
            &exported,
            &format!("{spec} from {}", deb.display()),
        );

        let info = store.json(["info", name.as_str()]);
        let meta = &info[0]["metadata"];
        assert_eq!(meta["format"], "deb", "{info}");
        assert_eq!(meta["version"], full.as_str(), "{info}");
        assert!(listed.tree_hash.len() == 64);
        mapped.push((expected, listed));
    }
    // The same tree from a directory gets the same identity.
    let mut args = vec![OsString::from("add")];
    args.extend(mapped.iter().map(|(dir, _)| dir.as_os_str().to_owned()));
    dirs.ok(args);
    for (_, from_deb) in &mapped {
        let from_dir = dirs
            .listed(&from_deb.name, &from_deb.version)
            .unwrap_or_else(|| panic!("{} missing from the directory store", from_deb.spec()));
        assert_eq!(
            from_dir.tree_hash,
            from_deb.tree_hash,
            "{}: the .deb and its unpacked, mapped tree must have the same tree hash",
            from_deb.spec()
        );
    }
    store.assert_verify_clean("after grafting real .debs");
}

#[test]
fn crafted_pacman_package_matches_bsdtar() {
    let scratch = Scratch::new("graft-pacman");
    let root = scratch.join("root");
    write_file(
        &root.join(".PKGINFO"),
        b"pkgname = tool\npkgver = 1:2.0-3\npkgdesc = a crafted tool\nlicense = MIT\ndepend = glibc\n",
    );
    write_file(&root.join(".BUILDINFO"), b"format = 2\npkgarch = x86_64\n");
    write_file(&root.join(".INSTALL"), b"post_install() {\n  :\n}\n");
    let tool = root.join("usr/bin/tool");
    write_file(&tool, b"#!/bin/sh\necho tool\n");
    chmod(&tool, 0o4755);
    fs::hard_link(&tool, root.join("usr/bin/tool-again")).unwrap();
    std::os::unix::fs::symlink("tool", root.join("usr/bin/tool-link")).unwrap();
    write_file(&root.join("etc/tool.conf"), b"verbose=1\n");
    let ping = root.join("usr/bin/ping");
    write_file(&ping, b"\x7fELF not really\n");
    chmod(&ping, 0o755);
    if is_root() {
        xattr::set(&ping, "security.capability", &cap_net_raw_ep()).unwrap();
        lchown(&root.join("etc/tool.conf"), 1234, 5678);
    }
    let plain = scratch.join("tool.tar");
    run(Command::new("tar")
        .args([
            "--format=pax",
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "-C",
        ])
        .arg(&root)
        .arg("-cf")
        .arg(&plain)
        .args([".PKGINFO", ".BUILDINFO", ".INSTALL", "usr", "etc"]));
    let package = scratch.join("tool-2.0-3-x86_64.pkg.tar.zst");
    fs::write(&package, zstd(&fs::read(&plain).unwrap())).unwrap();

    let store = Store::init();
    store.ok(add_args(&[&package]));
    let exported = scratch.join("exported");
    store.export("tool/2.0-3", &exported);

    let expected = scratch.join("expected");
    fs::create_dir_all(&expected).unwrap();
    let bsdtar = Command::new("bsdtar").arg("--version").output().is_ok();
    if bsdtar {
        run(Command::new("bsdtar")
            .args(["-x", "-p", "--xattrs", "--numeric-owner", "-f"])
            .arg(&package)
            .arg("-C")
            .arg(&expected));
    } else {
        eprintln!("bsdtar (libarchive-tools) is missing: comparing with GNU tar instead");
        run(Command::new("tar")
            .args([
                "-x",
                "-p",
                "--xattrs",
                "--xattrs-include=*",
                "--numeric-owner",
                "-f",
            ])
            .arg(&plain)
            .arg("-C")
            .arg(&expected));
    }
    for meta in [".PKGINFO", ".BUILDINFO", ".INSTALL"] {
        fs::remove_file(expected.join(meta)).unwrap();
    }
    // The archive has no entry for its root, so `usr/`, which maps to the
    // root, gives it its metadata.
    let usr = fs::metadata(expected.join("usr")).unwrap();
    apply_fhs_mapping(&expected);
    chmod(&expected, usr.mode() & 0o7777);
    set_mtime(&expected, usr.mtime());
    assert_same_tree(&expected, &exported, "crafted pacman package");

    let info = store.json(["info", "tool"]);
    let meta = &info[0]["metadata"];
    assert_eq!(meta["format"], "pacman", "{info}");
    assert_eq!(meta["version"], "1:2.0-3", "{info}");
    assert_eq!(meta["license"][0], "MIT", "{info}");
    assert_eq!(meta["install"], "post_install() {\n  :\n}\n", "{info}");
    assert_eq!(meta["buildinfo"]["pkgarch"], "x86_64", "{info}");
}

/// Numeric id of `nobody` (`id -u`/`id -g`).
fn nobody_id(flag: &str) -> u32 {
    let out = Command::new("id").args([flag, "nobody"]).output().unwrap();
    assert!(out.status.success(), "id {flag} nobody failed");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Builds the PKGBUILD in `tests/pacman/NAME` with Debian's makepkg and
/// returns the package file. makepkg refuses to run as root, so as root it
/// runs as `nobody`, in a build directory (under `scratch`) that `nobody`
/// owns; fakeroot gives package() the owners and modes it records.
fn makepkg(scratch: &Scratch, name: &str) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("pacman")
        .join(name);
    let build = scratch.join(format!("makepkg-{name}"));
    fs::create_dir_all(&build).unwrap();
    for f in fs::read_dir(&source).unwrap() {
        let f = f.unwrap();
        fs::copy(f.path(), build.join(f.file_name())).unwrap();
    }
    let mut cmd = if is_root() {
        let (uid, gid) = (nobody_id("-u"), nobody_id("-g"));
        chmod(scratch.path(), 0o711);
        for f in fs::read_dir(&build).unwrap() {
            lchown(&f.unwrap().path(), uid, gid);
        }
        lchown(&build, uid, gid);
        let mut c = Command::new("runuser");
        c.args(["-u", "nobody", "--", "makepkg"]);
        c
    } else {
        Command::new("makepkg")
    };
    cmd.current_dir(&build)
        .env("HOME", &build)
        .env("PKGDEST", build.join("out"))
        .env("BUILDDIR", build.join("build"))
        .env("SRCDEST", build.join("src"))
        .env("PKGEXT", ".pkg.tar.zst")
        .args(["--nodeps", "--noconfirm", "--noprogressbar"]);
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run makepkg (Debian packages makepkg and pacman-package-manager, see scripts/setup.sh): {e}")
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut built: Vec<PathBuf> = fs::read_dir(build.join("out"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(built.len(), 1, "makepkg made {built:?}");
    built.remove(0)
}

#[test]
fn makepkg_package_matches_bsdtar() {
    let scratch = Scratch::new("graft-makepkg");
    let package = makepkg(&scratch, "nexus-tool");
    let store = Store::init();
    store.ok(add_args(&[&package]));
    let exported = scratch.join("exported");
    store.export("nexus-tool/2.0-3", &exported);

    let expected = scratch.join("expected");
    fs::create_dir_all(&expected).unwrap();
    run(Command::new("bsdtar")
        .args(["-x", "-p", "--xattrs", "--numeric-owner", "-f"])
        .arg(&package)
        .arg("-C")
        .arg(&expected));
    for meta in [".PKGINFO", ".BUILDINFO", ".INSTALL", ".MTREE"] {
        fs::remove_file(expected.join(meta)).unwrap();
    }
    // makepkg writes no entry for the root, so `usr/` gives it its
    // metadata, as in nip's mapping.
    let usr = fs::metadata(expected.join("usr")).unwrap();
    apply_fhs_mapping(&expected);
    chmod(&expected, usr.mode() & 0o7777);
    set_mtime(&expected, usr.mtime());
    assert_same_tree(&expected, &exported, "makepkg's nexus-tool");

    // What makepkg was asked for is there: setuid, a hard link, a symlink,
    // fakeroot's owner, the empty directory.
    let tool = fs::symlink_metadata(exported.join("bin/tool")).unwrap();
    assert_eq!(tool.mode() & 0o7777, 0o4755);
    let again = fs::symlink_metadata(exported.join("bin/tool-again")).unwrap();
    assert_eq!((tool.ino(), tool.nlink()), (again.ino(), 2));
    assert_eq!(
        fs::read_link(exported.join("bin/tool-link")).unwrap(),
        Path::new("tool")
    );
    let conf = fs::symlink_metadata(exported.join("etc/tool.conf")).unwrap();
    assert_eq!((conf.uid(), conf.gid()), (1234, 5678));
    assert!(exported.join("share/nexus-tool/empty").is_dir());

    let info = store.json(["info", "nexus-tool"]);
    let meta = &info[0]["metadata"];
    assert_eq!(meta["format"], "pacman", "{info}");
    assert_eq!(meta["version"], "1:2.0-3", "{info}");
    assert_eq!(meta["license"][0], "MIT", "{info}");
    assert_eq!(meta["depends"][0], "glibc", "{info}");
    assert_eq!(meta["install"], "post_install() {\n  :\n}\n", "{info}");
    assert_eq!(meta["buildinfo"]["pkgarch"], "any", "{info}");
    store.assert_verify_clean("after grafting makepkg's package");
}

#[test]
fn crafted_pkgsrc_package_keeps_prefix_relative_paths() {
    let scratch = Scratch::new("graft-pkgsrc");
    let dir = scratch.join("pkg");
    write_file(
        &dir.join("+CONTENTS"),
        b"@comment $NetBSD$\n@name hello-2.12nb1\n@pkgdep gettext-lib>=0.14\n@cwd /usr/pkg\n@owner root\nbin/hello\n@comment MD5:0\nshare/doc/hello/README\n",
    );
    write_file(&dir.join("+COMMENT"), b"Prints a friendly greeting\n");
    write_file(&dir.join("+DESC"), b"GNU hello.\n");
    write_file(
        &dir.join("+BUILD_INFO"),
        b"LICENSE=gnu-gpl-v3\nMACHINE_ARCH=x86_64\nOPSYS=Linux\n",
    );
    write_file(&dir.join("bin/hello"), b"#!/bin/sh\necho hello\n");
    chmod(&dir.join("bin/hello"), 0o755);
    write_file(&dir.join("share/doc/hello/README"), b"read me\n");
    let package = scratch.join("hello-2.12nb1.tgz");
    run(Command::new("tar")
        .arg("-C")
        .arg(&dir)
        .arg("-czf")
        .arg(&package)
        .args([
            "+CONTENTS",
            "+COMMENT",
            "+DESC",
            "+BUILD_INFO",
            "bin",
            "share",
        ]));
    let store = Store::init();
    store.ok(add_args(&[&package]));
    let files: Vec<String> = store
        .files("hello/2.12nb1")
        .into_iter()
        .map(|f| f.path)
        .collect();
    assert_eq!(
        files,
        [
            "",
            "bin",
            "bin/hello",
            "share",
            "share/doc",
            "share/doc/hello",
            "share/doc/hello/README"
        ]
    );
    let cat = store.cat("hello/2.12nb1", "bin/hello");
    assert_eq!(cat.stdout, b"#!/bin/sh\necho hello\n");
    let info = store.json(["info", "hello"]);
    let meta = &info[0]["metadata"];
    assert_eq!(meta["format"], "pkgsrc", "{info}");
    assert_eq!(meta["license"][0], "gnu-gpl-v3", "{info}");
    assert_eq!(meta["depends"][0], "gettext-lib>=0.14", "{info}");
    assert_eq!(meta["description"], "Prints a friendly greeting", "{info}");
}

/// Adds the crafted file `bytes` and expects a refusal naming `problem`
/// with the store left as it was.
fn refused(
    store: &Store,
    scratch: &Scratch,
    label: &str,
    bytes: &[u8],
    extra: &[&str],
    problem: &str,
) {
    let before = store.state();
    let file = scratch.join(label);
    fs::write(&file, bytes).unwrap();
    let mut args = add_args(&[&file]);
    args.extend(extra.iter().map(OsString::from));
    let run = store.fails_with(&[EXIT_ERROR], &args);
    assert!(
        run.stderr.contains(problem) && run.stderr.contains(label),
        "{label}: the error must name the file and say {problem:?}:\n{run}"
    );
    store.assert_unchanged(&before, label);
}

#[test]
fn hostile_archives_are_refused() {
    let scratch = Scratch::new("graft-hostile");
    let store = Store::init();
    let ok = pacman(
        "base",
        "1-1",
        &[TarEntry::file("usr/bin/base", b"base\n", 0o755)],
    );
    let base = scratch.join("base.pkg.tar.zst");
    fs::write(&base, &ok).unwrap();
    store.ok(add_args(&[&base]));

    let file = |p: &str| TarEntry::file(p, b"x\n", 0o644);
    refused(
        &store,
        &scratch,
        "traversal.pkg.tar.zst",
        &pacman("evil", "1-1", &[file("usr/../../etc/passwd")]),
        &[],
        "path traversal",
    );
    refused(
        &store,
        &scratch,
        "absolute.pkg.tar.zst",
        &pacman("evil", "1-1", &[file("/etc/passwd")]),
        &[],
        "absolute path",
    );
    refused(
        &store,
        &scratch,
        "symlink-escape.pkg.tar.zst",
        &pacman(
            "evil",
            "1-1",
            &[TarEntry::symlink("usr/lib", "/etc"), file("usr/lib/passwd")],
        ),
        &[],
        "through a symbolic link",
    );
    refused(
        &store,
        &scratch,
        "duplicate.pkg.tar.zst",
        &pacman("evil", "1-1", &[file("usr/bin/a"), file("usr/bin/a")]),
        &[],
        "duplicate entry",
    );
    refused(
        &store,
        &scratch,
        "dangling-hardlink.pkg.tar.zst",
        &pacman(
            "evil",
            "1-1",
            &[TarEntry::hardlink("usr/bin/a", "usr/bin/nothing")],
        ),
        &[],
        "not an earlier regular file",
    );
    let mut absurd = TarEntry::file("usr/share/huge", b"", 0o644);
    absurd.claimed_size = Some(1 << 50);
    refused(
        &store,
        &scratch,
        "absurd-size.pkg.tar.zst",
        &pacman("evil", "1-1", &[absurd]),
        &[],
        "--max-unpacked-size",
    );
    let zeros = vec![0u8; 8 << 20];
    let bomb = pacman(
        "bomb",
        "1-1",
        &[TarEntry::file("usr/share/zeros", &zeros, 0o644)],
    );
    assert!(bomb.len() < 4096, "the bomb must compress well");
    refused(
        &store,
        &scratch,
        "bomb.pkg.tar.zst",
        &bomb,
        &["--max-unpacked-size", "1M"],
        "--max-unpacked-size",
    );
    let many: Vec<TarEntry> = (0..20).map(|i| file(&format!("usr/share/f{i}"))).collect();
    refused(
        &store,
        &scratch,
        "many.pkg.tar.zst",
        &pacman("many", "1-1", &many),
        &["--max-entries", "10"],
        "--max-entries",
    );
    refused(
        &store,
        &scratch,
        "fifo.pkg.tar.zst",
        &pacman("evil", "1-1", &[TarEntry::fifo("usr/run/pipe")]),
        &[],
        "FIFO",
    );
    refused(
        &store,
        &scratch,
        "no-version.pkg.tar.zst",
        &zstd(&tar(&[
            TarEntry::file(".PKGINFO", b"pkgname = evil\n", 0o644),
            file("usr/bin/a"),
        ])),
        &[],
        "has no pkgver",
    );
    let bad_control = deb(
        "Package: evil\nVersion: not a version!\n",
        &tar(&[file("./usr/bin/a")]),
    );
    refused(
        &store,
        &scratch,
        "bad-version.deb",
        &bad_control,
        &[],
        "not a valid Debian version",
    );
    let lz4 = ar(&[
        ("debian-binary", b"2.0\n".to_vec()),
        (
            "control.tar.zst",
            zstd(&tar(&[TarEntry::file(
                "./control",
                b"Package: evil\nVersion: 1\n",
                0o644,
            )])),
        ),
        (
            "data.tar.lz4",
            b"\x04\x22\x4d\x18\x64\x40\xa7 lz4 data".to_vec(),
        ),
    ]);
    refused(
        &store,
        &scratch,
        "lz4.deb",
        &lz4,
        &[],
        "unknown compression",
    );
    refused(
        &store,
        &scratch,
        "random.bin",
        b"\x00\x01\x02 not a package at all",
        &[],
        "not a package",
    );

    // A real package, cut short and with a flipped byte.
    let hello = fs::read(&fetch_debs(&["hello"])[0]).unwrap();
    refused(
        &store,
        &scratch,
        "truncated.deb",
        &hello[..hello.len() / 2],
        &[],
        "truncated",
    );
    let mut flipped = hello.clone();
    let at = flipped.len() - 1000;
    flipped[at] ^= 0x55;
    refused(&store, &scratch, "flipped.deb", &flipped, &[], "corrupt");

    // Raising the limits, or skipping special files, lets them in.
    let many_file = scratch.join("many.pkg.tar.zst");
    store.ok([
        OsStr::new("add"),
        many_file.as_os_str(),
        OsStr::new("--max-entries"),
        OsStr::new("100"),
    ]);
    let fifo_file = scratch.join("fifo.pkg.tar.zst");
    store.ok([
        OsStr::new("add"),
        fifo_file.as_os_str(),
        OsStr::new("--skip-special"),
    ]);
    assert!(store.files("evil/1-1").iter().all(|f| f.path != "run/pipe"));
    store.assert_verify_clean("after the hostile archives");
}

#[test]
fn name_and_version_flags_override_a_package() {
    let scratch = Scratch::new("graft-override");
    let store = Store::init();
    let file = scratch.join("tool.pkg.tar.zst");
    fs::write(
        &file,
        pacman(
            "tool",
            "1.0-1",
            &[TarEntry::file("usr/bin/tool", b"t\n", 0o755)],
        ),
    )
    .unwrap();
    store.ok([
        OsStr::new("add"),
        file.as_os_str(),
        OsStr::new("--name"),
        OsStr::new("mytool"),
        OsStr::new("--version"),
        OsStr::new("7"),
    ]);
    assert!(store.listed("mytool", "7").is_some());
    assert!(store.listed("tool", "1.0-1").is_none());
}

/// A store path name for a NAR file: a valid 32-character hash part (Nix
/// base-32), then `NAME-VERSION`.
fn store_file_name(name: &str, version: &str, suffix: &str) -> String {
    format!("{}-{name}-{version}.nar{suffix}", "0".repeat(32))
}

/// Gives a tree restored by `nix-store --restore` what the store keeps of
/// a NAR: owner 0:0, mtime 1, files 0444 (0555 when executable),
/// directories 0555. Children first, so directories get their mtime last.
fn normalise_like_nix_store(path: &Path) {
    let meta = fs::symlink_metadata(path).unwrap();
    if meta.is_dir() {
        for e in fs::read_dir(path).unwrap() {
            normalise_like_nix_store(&e.unwrap().path());
        }
        chmod(path, 0o555);
    } else if meta.is_file() {
        chmod(
            path,
            if meta.mode() & 0o111 != 0 {
                0o555
            } else {
                0o444
            },
        );
    }
    lchown(path, 0, 0);
    set_mtime(path, 1);
}

fn nix_store(args: &[&OsStr], stdin: Option<&Path>, stdout: Option<&Path>) {
    let mut cmd = Command::new("nix-store");
    cmd.args(args);
    if let Some(input) = stdin {
        cmd.stdin(fs::File::open(input).unwrap());
    }
    if let Some(output) = stdout {
        cmd.stdout(fs::File::create(output).unwrap());
    }
    let status = cmd.status().unwrap_or_else(|e| {
        panic!("cannot run nix-store (Debian package nix-bin, see scripts/setup.sh): {e}")
    });
    assert!(status.success(), "{cmd:?} failed with {status}");
}

/// `nix-store --dump DIR > FILE`.
fn dump(dir: &Path, file: &Path) {
    nix_store(&[OsStr::new("--dump"), dir.as_os_str()], None, Some(file));
}

/// `nix-store --restore DIR < FILE`.
fn restore(file: &Path, dir: &Path) {
    nix_store(
        &[OsStr::new("--restore"), dir.as_os_str()],
        Some(file),
        None,
    );
}

/// The crafted store path: an executable, a plain file, a symlink, an
/// empty file and directory, nested directories, a name that is not
/// UTF-8, and a file of several chunks.
fn crafted_store_path(root: &Path) {
    let tool = root.join("bin/tool");
    write_file(&tool, b"#!/bin/sh\necho tool\n");
    chmod(&tool, 0o755);
    std::os::unix::fs::symlink("tool", root.join("bin/tool-link")).unwrap();
    std::os::unix::fs::symlink("/nix/store/x-glibc/lib/libc.so.6", root.join("lib-c")).unwrap();
    write_file(&root.join("share/doc/tool/deep/er/README"), b"read me\n");
    write_file(&root.join("share/empty-file"), b"");
    fs::create_dir_all(root.join("share/empty-dir")).unwrap();
    let odd = std::ffi::OsStr::from_bytes(b"caf\xe9");
    write_file(&root.join("share").join(odd), b"latin-1 name\n");
    let big = nexus_integration_tests::fixtures::random_bytes(b"nar", 3 << 20);
    write_file(&root.join("lib/big.bin"), &big);
}

#[test]
fn nars_match_nix_store_restore() {
    let scratch = Scratch::new("graft-nar");
    let debs = fetch_debs(&["hello", "jq"]);
    let mut trees = Vec::new();
    for deb in &debs {
        let name = deb_field(deb, "Package");
        let version = without_epoch(&deb_field(deb, "Version")).to_string();
        let dir = scratch.join(format!("src/{name}"));
        fs::create_dir_all(&dir).unwrap();
        unpack_deb(deb, &dir);
        trees.push((name, version, dir));
    }
    let crafted = scratch.join("src/tool");
    crafted_store_path(&crafted);
    trees.push(("tool".into(), "1.0".into(), crafted));

    let store = Store::init();
    for (name, version, dir) in &trees {
        let spec = format!("{name}/{version}");
        let plain = scratch.join(store_file_name(name, version, ""));
        dump(dir, &plain);
        run(Command::new("xz").args(["-k", "-T1"]).arg(&plain));
        run(Command::new("zstd").args(["-q", "-k"]).arg(&plain));
        store.ok(add_args(&[&plain]));
        let listed = store.listed(name, version).unwrap();
        // The same tree, compressed: the same package again (a different
        // tree under the same NAME/VERSION would be refused).
        for suffix in [".xz", ".zst"] {
            let packed = scratch.join(store_file_name(name, version, suffix));
            let out = store.json([OsStr::new("add"), packed.as_os_str()]);
            assert_eq!(
                out["generation"],
                serde_json::Value::Null,
                "{spec}{suffix}: {out}"
            );
            assert_eq!(
                store.listed(name, version).unwrap().tree_hash,
                listed.tree_hash
            );
        }

        let expected = scratch.join(format!("restored/{name}"));
        fs::create_dir_all(expected.parent().unwrap()).unwrap();
        restore(&plain, &expected);
        normalise_like_nix_store(&expected);
        let exported = scratch.join(format!("exported/{name}"));
        fs::create_dir_all(exported.parent().unwrap()).unwrap();
        store.export(&spec, &exported);
        assert_same_tree(&expected, &exported, &format!("{spec} from its NAR"));
        // What the store gives back is the same NAR, byte for byte.
        let again = scratch.join(format!("again-{name}.nar"));
        dump(&exported, &again);
        assert!(
            fs::read(&again).unwrap() == fs::read(&plain).unwrap(),
            "{spec}: nix-store --dump of the export differs from the NAR"
        );
        // And the restored tree, added as a directory, is the same package.
        let dirs = Store::init();
        dirs.ok([
            OsStr::new("add"),
            expected.as_os_str(),
            OsStr::new("--name"),
            OsStr::new(name),
            OsStr::new("--version"),
            OsStr::new(version),
        ]);
        assert_eq!(
            dirs.listed(name, version).unwrap().tree_hash,
            listed.tree_hash
        );

        let info = store.json(["info", name.as_str()]);
        let meta = &info[0]["metadata"];
        assert_eq!(meta["format"], "nar", "{info}");
        assert_eq!(meta["mapping"], "identity", "{info}");
        assert_eq!(
            meta["store_path"],
            format!("/nix/store/{}-{name}-{version}", "0".repeat(32)),
            "{info}"
        );
    }
    // The store path's root is the package root: usr/ stays.
    let hello = store.cat(&format!("hello/{}", trees[0].1), "usr/bin/hello");
    assert!(hello.success(), "{hello}");

    // Flags name a NAR whose file name is no store path name.
    let renamed = scratch.join("tool.nar");
    fs::copy(scratch.join(store_file_name("tool", "1.0", "")), &renamed).unwrap();
    let run = store.fails_with(&[EXIT_ERROR], add_args(&[&renamed]));
    assert!(
        run.stderr.contains("not a store path name") && run.stderr.contains("--name"),
        "{run}"
    );
    store.ok([
        OsStr::new("add"),
        renamed.as_os_str(),
        OsStr::new("--name"),
        OsStr::new("tool"),
        OsStr::new("--version"),
        OsStr::new("2.0"),
    ]);
    assert_eq!(
        store.listed("tool", "2.0").unwrap().tree_hash,
        store.listed("tool", "1.0").unwrap().tree_hash
    );
    store.assert_verify_clean("after grafting NARs");
}

#[test]
fn hostile_nars_are_refused() {
    let scratch = Scratch::new("graft-hostile-nar");
    let store = Store::init();
    let base = scratch.join(store_file_name("base", "1", ""));
    fs::write(&base, nar(&NarNode::dir(&[("a", NarNode::file(b"a\n"))]))).unwrap();
    store.ok(add_args(&[&base]));

    let f = || NarNode::file(b"x\n");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "traversal",
            nar(&NarNode::dir(&[("..", f())])),
            "path traversal",
        ),
        (
            "slash",
            nar(&NarNode::dir(&[("etc/passwd", f())])),
            "`/` in a name",
        ),
        ("dot", nar(&NarNode::dir(&[(".", f())])), "`.` as a name"),
        ("empty-name", nar(&NarNode::dir(&[("", f())])), "empty name"),
        ("nul", nar(&NarNode::dir(&[("a\0b", f())])), "NUL byte"),
        (
            "unsorted",
            nar(&NarNode::dir(&[("b", f()), ("a", f())])),
            "not sorted",
        ),
        (
            "duplicate",
            nar(&NarNode::dir(&[("a", f()), ("a", f())])),
            "duplicate entry",
        ),
        ("single-file", nar(&f()), "not a directory"),
        (
            "symlink-root",
            nar(&NarNode::Symlink(b"/etc".to_vec())),
            "not a directory",
        ),
        (
            "long-name",
            nar(&NarNode::dir(&[(&"n".repeat(300), f())])),
            "at most 255 bytes",
        ),
    ];
    for (label, bytes, problem) in &cases {
        let file = store_file_name(label, "1", "");
        refused(&store, &scratch, &file, bytes, &[], problem);
    }

    let good = nar(&NarNode::dir(&[
        ("bin", NarNode::dir(&[("a", f()), ("b", f())])),
        ("share", f()),
    ]));
    refused(
        &store,
        &scratch,
        &store_file_name("truncated", "1", ""),
        &good[..good.len() - 20],
        &[],
        "truncated",
    );
    let mut trailing = good.clone();
    trailing.extend_from_slice(&[0u8; 64]);
    refused(
        &store,
        &scratch,
        &store_file_name("trailing", "1", ""),
        &trailing,
        &[],
        "data after the end",
    );
    let mut absurd = nar(&NarNode::dir(&[("f", f())]));
    // The file's size field: make it claim a petabyte.
    let at = absurd.len() - 8 * 8;
    absurd[at..at + 8].copy_from_slice(&(1u64 << 50).to_le_bytes());
    refused(
        &store,
        &scratch,
        &store_file_name("absurd-size", "1", ""),
        &absurd,
        &[],
        "--max-unpacked-size",
    );
    let mut huge_string = Vec::new();
    nar_str(&mut huge_string, b"nix-archive-1");
    nar_str(&mut huge_string, b"(");
    huge_string.extend((1u64 << 62).to_le_bytes());
    refused(
        &store,
        &scratch,
        &store_file_name("absurd-string", "1", ""),
        &huge_string,
        &[],
        "a string of 4611686018427387904 bytes",
    );
    let mut deep = NarNode::dir(&[("f", f())]);
    for _ in 0..300 {
        deep = NarNode::Dir(vec![(b"d".to_vec(), deep)]);
    }
    refused(
        &store,
        &scratch,
        &store_file_name("deep", "1", ""),
        &nar(&deep),
        &[],
        "nesting",
    );
    let bomb = zstd(&nar(&NarNode::dir(&[(
        "zeros",
        NarNode::file(&vec![0u8; 8 << 20]),
    )])));
    assert!(bomb.len() < 4096, "the bomb must compress well");
    refused(
        &store,
        &scratch,
        &store_file_name("bomb", "1", ".zst"),
        &bomb,
        &["--max-unpacked-size", "1M"],
        "--max-unpacked-size",
    );
    let many: Vec<(String, NarNode)> = (0..20).map(|i| (format!("f{i:02}"), f())).collect();
    let many: Vec<(&str, NarNode)> = many.iter().map(|(n, f)| (n.as_str(), f.clone())).collect();
    refused(
        &store,
        &scratch,
        &store_file_name("many", "1", ""),
        &nar(&NarNode::dir(&many)),
        &["--max-entries", "10"],
        "--max-entries",
    );
    // A flipped byte in an xz-compressed file's content: only xz's check
    // can tell, and the bytes after it are garbage to the NAR parser.
    let big = nar(&NarNode::dir(&[(
        "big",
        NarNode::file(&nexus_integration_tests::fixtures::random_bytes(
            b"flip",
            1 << 16,
        )),
    )]));
    let big_file = scratch.join("big.nar");
    fs::write(&big_file, &big).unwrap();
    run(Command::new("xz").args(["-k", "-T1"]).arg(&big_file));
    let mut flipped = fs::read(scratch.join("big.nar.xz")).unwrap();
    let at = flipped.len() / 2;
    flipped[at] ^= 0x55;
    refused(
        &store,
        &scratch,
        &store_file_name("flipped", "1", ".xz"),
        &flipped,
        &[],
        "corrupt",
    );
    refused(
        &store,
        &scratch,
        "unnamed.nar",
        &good,
        &[],
        "not a store path name",
    );
    refused(
        &store,
        &scratch,
        &format!("{}-source.nar", "0".repeat(32)),
        &good,
        &[],
        "has no version",
    );
    store.assert_verify_clean("after the hostile NARs");
}
