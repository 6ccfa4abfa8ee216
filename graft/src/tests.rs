//! Whole packages built in memory, read through the parsing layer.

use std::io::Write;

use nexus_store::tree::InodeKind;

use crate::entry::lossy;
use crate::error::{Failure, Problem};
use crate::limits::Limits;
use crate::narstream::tests::Nar;
use crate::package::{
    HashSink, Kind, Naming, Package, ReadOptions, read_named_package, read_package,
};
use crate::pax::record;

/// A tar entry to build.
enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8], u32),
    Link(&'a str, &'a str),
    Hard(&'a str, &'a str),
    Pax(&'a str, &'a [u8], Vec<u8>),
}

fn tar(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        match e {
            E::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
            E::File(p, data, mode) => {
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, *data).unwrap();
            }
            E::Link(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, p, target).unwrap();
            }
            E::Hard(p, target) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_mode(0o644);
                h.set_size(0);
                b.append_link(&mut h, p, target).unwrap();
            }
            E::Pax(p, data, pax) => {
                let mut ph = tar::Header::new_ustar();
                ph.set_entry_type(tar::EntryType::XHeader);
                ph.set_size(pax.len() as u64);
                b.append_data(&mut ph, "PaxHeader", &pax[..]).unwrap();
                h.set_mode(0o755);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, *data).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn ar(members: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut b = ar::Builder::new(Vec::new());
    for (name, data) in members {
        let h = ar::Header::new(name.as_bytes().to_vec(), data.len() as u64);
        b.append(&h, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

const COPYRIGHT: &[u8] = b"Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\nFiles: *\nLicense: GPL-3+\n";

fn deb(data_tar: Vec<u8>) -> Vec<u8> {
    let control = tar(&[
        E::Dir("./"),
        E::File(
            "./control",
            b"Package: hello\nVersion: 1:2.10-3\nDepends: libc6\nDescription: hi\n long\n",
            0o644,
        ),
        E::File("./postinst", b"#!/bin/sh\n", 0o755),
        E::File("./md5sums", b"x\n", 0o644),
    ]);
    ar(&[
        ("debian-binary", b"2.0\n".to_vec()),
        ("control.tar.gz", gzip(&control)),
        ("data.tar.zst", zstd::encode_all(&data_tar[..], 3).unwrap()),
    ])
}

fn hello_data() -> Vec<u8> {
    tar(&[
        E::Dir("./"),
        E::Dir("./usr/"),
        E::Dir("./usr/bin/"),
        E::File("./usr/bin/hello", b"\x7fELF hello", 0o4755),
        E::Hard("./usr/bin/hi", "./usr/bin/hello"),
        E::Link("./usr/bin/hey", "hello"),
        E::File("./etc/hello.conf", b"greeting=hi\n", 0o644),
        E::File("./usr/share/doc/hello/copyright", COPYRIGHT, 0o644),
    ])
}

fn read(bytes: &[u8]) -> Result<Package, Failure> {
    read_package(bytes, &ReadOptions::default(), &mut HashSink::default())
}

fn problem(bytes: &[u8], options: ReadOptions) -> String {
    match read_package(bytes, &options, &mut HashSink::default()) {
        Err(Failure::Problem(p)) => p.to_string(),
        Err(other) => panic!("expected a problem, got {other:?}"),
        Ok(p) => panic!("expected a problem, read {}/{}", p.name, p.version),
    }
}

fn paths(p: &Package) -> Vec<String> {
    let mut out = Vec::new();
    p.tree
        .visit(|v| -> Result<(), ()> {
            out.push(lossy(v.path));
            Ok(())
        })
        .unwrap();
    out
}

#[test]
fn reads_a_deb() {
    let p = read(&deb(hello_data())).unwrap();
    assert_eq!(
        (p.kind, p.name.as_str(), p.version.as_str()),
        (Kind::Deb, "hello", "2.10-3")
    );
    assert_eq!(p.metadata["version"], "1:2.10-3");
    assert_eq!(p.metadata["license"][0], "GPL-3+");
    assert_eq!(p.metadata["depends"][0], "libc6");
    assert_eq!(p.metadata["scripts"]["postinst"], "#!/bin/sh\n");
    assert_eq!(
        paths(&p),
        [
            "bin",
            "bin/hello",
            "bin/hey",
            "bin/hi",
            "etc",
            "etc/hello.conf",
            "share",
            "share/doc",
            "share/doc/hello",
            "share/doc/hello/copyright"
        ]
    );
    let hello = p
        .tree
        .entries
        .iter()
        .find(|e| e.name == b"hello")
        .unwrap()
        .inode;
    assert_eq!(p.tree.inodes[hello as usize].mode, 0o4755);
    assert_eq!(p.tree.link_counts()[hello as usize], 2);
    assert!(matches!(
        p.tree.inodes[hello as usize].kind,
        InodeKind::File {
            content: Some(_),
            ..
        }
    ));
}

#[test]
fn reads_pacman_and_pkgsrc_packages() {
    let pkginfo =
        b"pkgname = tool\npkgver = 2:1.0-2\npkgdesc = a tool\nlicense = MIT\ndepend = glibc\n";
    let mut pax = record(
        b"SCHILY.xattr.security.capability",
        b"\x01\x00\x00\x02\x00\x20\x00\x00",
    );
    pax.extend(record(b"uid", b"1234"));
    let pacman = tar(&[
        E::File(".PKGINFO", pkginfo, 0o644),
        E::File(".BUILDINFO", b"format = 2\n", 0o644),
        E::File(".INSTALL", b"post_install() { :; }\n", 0o644),
        E::File(".MTREE", b"\x1f\x8bnot read", 0o644),
        E::Pax("usr/bin/ping", b"ping", pax),
        E::File(".hidden-later", b"x", 0o644),
    ]);
    let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
    bz.write_all(&pacman).unwrap();
    let p = read(&bz.finish().unwrap()).unwrap();
    assert_eq!(
        (p.kind, p.name.as_str(), p.version.as_str()),
        (Kind::Pacman, "tool", "1.0-2")
    );
    assert_eq!(p.metadata["install"], "post_install() { :; }\n");
    assert_eq!(p.metadata["ignored"][0], ".hidden-later");
    assert_eq!(paths(&p), ["bin", "bin/ping"]);
    let ping = &p.tree.inodes[p.tree.entries[1].inode as usize];
    assert_eq!(ping.uid, 1234);
    assert_eq!(ping.xattrs[0].0, b"security.capability");

    let contents = b"@name hello-2.12nb1\n@pkgdep libiconv>=1\n@cwd /usr/pkg\nbin/hello\n@comment MD5:00\nman/man1/hello.1\n";
    let pkgsrc = |extra: &[E<'_>]| {
        let mut entries = vec![
            E::File("+CONTENTS", contents, 0o644),
            E::File("+COMMENT", b"says hello\n", 0o644),
            E::File(
                "+BUILD_INFO",
                b"LICENSE=gnu-gpl-v3\nMACHINE_ARCH=x86_64\n",
                0o644,
            ),
            E::File("bin/hello", b"hello", 0o755),
            E::File("man/man1/hello.1", b".TH", 0o644),
        ];
        for e in extra {
            entries.push(match e {
                E::File(p, d, m) => E::File(p, d, *m),
                _ => unreachable!(),
            });
        }
        gzip(&tar(&entries))
    };
    let p = read(&pkgsrc(&[])).unwrap();
    assert_eq!(
        (p.kind, p.name.as_str(), p.version.as_str()),
        (Kind::Pkgsrc, "hello", "2.12nb1")
    );
    assert_eq!(p.metadata["license"][0], "gnu-gpl-v3");
    assert_eq!(p.metadata["prefix"], "/usr/pkg");
    assert_eq!(
        paths(&p),
        ["bin", "bin/hello", "man", "man/man1", "man/man1/hello.1"]
    );
    let err = problem(
        &pkgsrc(&[E::File("bin/extra", b"x", 0o755)]),
        ReadOptions::default(),
    );
    assert!(err.contains("does not list"), "{err}");
    let err = problem(
        &pkgsrc(&[E::File("+DESC", b"late", 0o644)]),
        ReadOptions::default(),
    );
    assert!(err.contains("comes after"), "{err}");
}

#[test]
fn refuses_broken_debs() {
    let good = deb(hello_data());
    for cut in [good.len() - 10, good.len() / 2, 70] {
        let err = problem(&good[..cut], ReadOptions::default());
        assert!(err.contains("corrupt or truncated"), "cut at {cut}: {err}");
    }
    let mut flipped = good.clone();
    let at = flipped.len() - 20;
    flipped[at] ^= 0xff;
    let err = problem(&flipped, ReadOptions::default());
    assert!(err.contains("corrupt"), "{err}");

    let odd = ar(&[
        ("debian-binary", b"2.0\n".to_vec()),
        (
            "control.tar.gz",
            gzip(&tar(&[E::File(
                "./control",
                b"Package: a1\nVersion: 1\n",
                0o644,
            )])),
        ),
        ("data.tar.lz4", b"\x04\x22\x4d\x18 lz4 frame".to_vec()),
    ]);
    let err = problem(&odd, ReadOptions::default());
    assert!(
        err.contains("unknown compression") && err.contains("data.tar.lz4"),
        "{err}"
    );

    let bad_meta = ar(&[
        ("debian-binary", b"2.0\n".to_vec()),
        (
            "control.tar.gz",
            gzip(&tar(&[E::File("./control", b"Package: a1\n", 0o644)])),
        ),
    ]);
    let err = problem(&bad_meta, ReadOptions::default());
    assert!(err.contains("no Version"), "{err}");
}

#[test]
fn limits_stop_bombs() {
    let zeros = vec![0u8; 1 << 20];
    let bomb = deb(tar(&[E::File("./usr/share/zeros", &zeros, 0o644)]));
    let small = ReadOptions {
        limits: Limits {
            max_unpacked_size: 512 << 10,
            max_entries: 100,
        },
        skip_special: false,
    };
    let err = problem(&bomb, small);
    assert!(err.contains("unpacked size exceeds the limit"), "{err}");
    let few = ReadOptions {
        limits: Limits {
            max_unpacked_size: 1 << 30,
            max_entries: 5,
        },
        skip_special: false,
    };
    let err = problem(&deb(hello_data()), few);
    assert!(err.contains("exceeds the limit of 5"), "{err}");
}

/// Every name of a `control.tar` member was kept and stored: 200,000
/// empty files with long names in a 308 KB `.deb` took 900 MB and a
/// 278 MB catalog.
#[test]
fn a_control_tar_of_too_many_files_is_refused() {
    let names: Vec<String> = (0..=crate::limits::METADATA_NAMES_MAX)
        .map(|i| format!("./extra{i}"))
        .collect();
    let mut entries = vec![
        E::Dir("./"),
        E::File("./control", b"Package: many\nVersion: 1\n", 0o644),
    ];
    entries.extend(names.iter().map(|n| E::File(n, b"", 0o644)));
    let bytes = ar(&[
        ("debian-binary", b"2.0\n".to_vec()),
        ("control.tar.gz", gzip(&tar(&entries))),
        (
            "data.tar.zst",
            zstd::encode_all(&hello_data()[..], 3).unwrap(),
        ),
    ]);
    let err = problem(&bytes, ReadOptions::default());
    assert!(err.contains("the files of control.tar.gz"), "{err}");
    // `control` and 255 others: the limit, which reads.
    entries.truncate(entries.len() - 2);
    let bytes = ar(&[
        ("debian-binary", b"2.0\n".to_vec()),
        ("control.tar.gz", gzip(&tar(&entries))),
        (
            "data.tar.zst",
            zstd::encode_all(&hello_data()[..], 3).unwrap(),
        ),
    ]);
    if let Err(e) = read(&bytes) {
        panic!("a control.tar of as many files as allowed: {e:?}");
    }
}

#[test]
fn recognises_what_is_not_a_package() {
    let err = problem(
        b"just some text that is long enough",
        ReadOptions::default(),
    );
    assert!(err.contains("not a package"), "{err}");
    let err = problem(&gzip(b"not a tar"), ReadOptions::default());
    assert!(
        err.contains("gzip-compressed data is neither a tar archive nor a NAR"),
        "{err}"
    );
    let plain = tar(&[E::File("README", b"hi", 0o644)]);
    let err = problem(&plain, ReadOptions::default());
    assert!(err.contains("without .PKGINFO"), "{err}");
    let err = problem(&ar(&[("foo.o", vec![1, 2])]), ReadOptions::default());
    assert!(err.contains("not a .deb"), "{err}");
    let _ = Problem::Corrupt(String::new());
}

/// A store path with `bin/hello` (executable), `lib` (a symlink) and
/// `share/doc/README`.
fn hello_nar() -> Vec<u8> {
    let entry = |n: Nar, name: &str, kind: &str| {
        n.tokens(&["entry", "(", "name", name, "node", "(", "type", kind])
    };
    let n = Nar::default()
        .s(b"nix-archive-1")
        .tokens(&["(", "type", "directory"]);
    let n = entry(n, "bin", "directory");
    let n = entry(n, "hello", "regular")
        .tokens(&["executable", "", "contents"])
        .s(b"\x7fELF hello")
        .tokens(&[")", ")", ")", ")"]);
    let n = entry(n, "lib", "symlink").tokens(&["target", "/nix/store/x-glibc/lib", ")", ")"]);
    let n = entry(n, "share", "directory");
    let n = entry(n, "doc", "directory");
    let n = entry(n, "README", "regular")
        .tokens(&["contents"])
        .s(b"read me\n")
        .tokens(&[")", ")", ")", ")", ")", ")"]);
    n.tokens(&[")"]).0
}

const NAR_NAME: &str = "0c3nb2wmh5rmb1ps3w1k8kyprgy1vd4c-hello-2.12.1.nar";

fn read_nar(bytes: &[u8], file_name: &str) -> Result<Package, Failure> {
    let naming = Naming {
        file_name: Some(file_name),
        ..Naming::default()
    };
    read_named_package(
        bytes,
        &naming,
        &ReadOptions::default(),
        &mut HashSink::default(),
    )
}

#[test]
fn reads_a_nar_plain_or_compressed() {
    let nar = hello_nar();
    let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
    bz.write_all(&nar).unwrap();
    let forms = [
        ("", nar.clone()),
        (".zst", zstd::encode_all(&nar[..], 3).unwrap()),
        (".gz", gzip(&nar)),
        (".bz2", bz.finish().unwrap()),
    ];
    for (suffix, bytes) in forms {
        let p = read_nar(&bytes, &format!("{NAR_NAME}{suffix}")).unwrap();
        assert_eq!(
            (p.kind, p.name.as_str(), p.version.as_str()),
            (Kind::Nar, "hello", "2.12.1"),
            "{suffix}"
        );
        assert_eq!(
            p.metadata["store_path"],
            "/nix/store/0c3nb2wmh5rmb1ps3w1k8kyprgy1vd4c-hello-2.12.1"
        );
        assert_eq!(
            paths(&p),
            [
                "bin",
                "bin/hello",
                "lib",
                "share",
                "share/doc",
                "share/doc/README"
            ]
        );
        let modes: Vec<(u32, i64, u32)> = p
            .tree
            .inodes
            .iter()
            .map(|i| (i.mode, i.mtime, i.uid))
            .collect();
        assert_eq!(modes[0], (0o555, 1, 0), "the root");
        let by_name = |n: &[u8]| {
            let ino = p.tree.entries.iter().find(|e| e.name == n).unwrap().inode;
            p.tree.inodes[ino as usize].clone()
        };
        assert_eq!(by_name(b"hello").mode, 0o555);
        assert_eq!(by_name(b"README").mode, 0o444);
        assert_eq!(by_name(b"share").mode, 0o555);
        assert_eq!(
            by_name(b"lib").kind,
            InodeKind::Symlink {
                target: b"/nix/store/x-glibc/lib".to_vec()
            }
        );
    }
}

#[test]
fn a_nar_needs_a_store_path_name_or_flags() {
    let err = match read_nar(&hello_nar(), "hello.nar") {
        Err(Failure::Problem(p)) => p.to_string(),
        other => panic!("expected a problem, got {other:?}"),
    };
    assert!(err.contains("not a store path name"), "{err}");
    let naming = Naming {
        file_name: Some("hello.nar"),
        name: Some("hi"),
        version: Some("1"),
    };
    let p = read_named_package(
        &hello_nar()[..],
        &naming,
        &ReadOptions::default(),
        &mut HashSink::default(),
    )
    .unwrap();
    assert_eq!((p.name.as_str(), p.version.as_str()), ("hi", "1"));
    // Without a file name at all (read_package), the message says so too.
    let err = problem(&hello_nar(), ReadOptions::default());
    assert!(err.contains("a NAR names no package"), "{err}");
}

/// Extended attributes are held in memory with the tree until the package
/// is committed, and the entry count and unpacked size (8 GiB by default,
/// counted in decompressed bytes) were all that bounded them: pax records
/// of zeros compress about a thousandfold, so a .deb of a few megabytes
/// made root's `nip add` hold gigabytes. They are limited per package, as
/// path bytes are.
#[test]
fn xattr_bytes_held_in_memory_are_limited_per_package() {
    let value = vec![0u8; 64 << 10];
    let mut pax = Vec::new();
    for i in 0..15 {
        pax.extend(record(format!("SCHILY.xattr.user.a{i}").as_bytes(), &value));
    }
    let names: Vec<String> = (0..80).map(|i| format!("./usr/lib/f{i}")).collect();
    let entries: Vec<E<'_>> = names.iter().map(|n| E::Pax(n, b"x", pax.clone())).collect();
    let bomb = deb(tar(&entries));
    // About 78 MiB of xattrs from an archive this small.
    assert!(bomb.len() < 1 << 20, "{}", bomb.len());
    let err = problem(&bomb, ReadOptions::default());
    assert!(err.contains("extended attributes"), "{err}");
    // What real packages carry (a capability here and there) still reads.
    let mut ok = Vec::new();
    ok.extend(record(b"SCHILY.xattr.security.capability", &[1u8; 20]));
    let p = read(&deb(tar(&[E::Pax("./usr/bin/ping", b"x", ok)]))).unwrap();
    assert_eq!(paths(&p), ["bin", "bin/ping"]);
}
