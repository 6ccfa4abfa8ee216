//! A tree with every kind of metadata the store promises to keep, built
//! from a copy of a real package: plain, empty and multi-chunk files, hard
//! links, non-UTF-8 names, every kind of symlink, setuid/setgid/sticky and
//! unusual modes, foreign owners, xattrs (`security.capability` and
//! `trusted.*` too) and old and future mtimes. Shared by the round-trip and
//! mount suites.

use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::fixtures::{chmod, lchown, random_bytes, set_mtime, text_bytes, write_file};
use crate::is_root;

/// The value of a `security.capability` xattr granting `cap_net_raw+ep`
/// (VFS_CAP_REVISION_2, effective flag, permitted = 1 << CAP_NET_RAW), as
/// `setcap cap_net_raw+ep` writes it.
pub fn cap_net_raw_ep() -> Vec<u8> {
    let mut v = Vec::with_capacity(20);
    v.extend_from_slice(&(0x0200_0000u32 | 1).to_le_bytes()); // magic_etc
    v.extend_from_slice(&(1u32 << 13).to_le_bytes()); // permitted[0]
    v.extend_from_slice(&0u32.to_le_bytes()); // inheritable[0]
    v.extend_from_slice(&0u32.to_le_bytes()); // permitted[1]
    v.extend_from_slice(&0u32.to_le_bytes()); // inheritable[1]
    v
}

/// Builds, from a copy of the real `hello` tree, a tree with every kind of
/// metadata the store promises to keep. Returns the names of the features
/// that could not be set up (only when not running as root).
pub fn build_crafted_tree(tree: &Path) -> Vec<&'static str> {
    let root = is_root();
    let mut skipped = Vec::new();
    let p = |rel: &str| tree.join(rel);

    // Plain content of several kinds.
    write_file(&p("data/empty"), b"");
    fs::create_dir_all(p("data/empty-dir")).unwrap();
    write_file(&p("data/text.txt"), &text_bytes(7, 20_000));
    write_file(
        &p("data/large.bin"),
        &random_bytes(b"crafted-large", 3 * 1024 * 1024 + 17),
    );
    // Hard links: a pair across directories (on the multi-chunk file) and a
    // triple in one directory.
    fs::create_dir_all(p("links")).unwrap();
    fs::hard_link(p("data/large.bin"), p("links/large-again.bin")).unwrap();
    write_file(&p("links/a"), b"three names, one inode\n");
    fs::hard_link(p("links/a"), p("links/b")).unwrap();
    fs::hard_link(p("links/a"), p("links/c")).unwrap();
    // Non-UTF-8 names and targets, dangling, absolute and directory symlinks.
    let odd = OsString::from(std::ffi::OsStr::from_bytes(b"odd-\xff\xfe"));
    write_file(&p("names").join(&odd), b"a file whose name is not UTF-8\n");
    std::os::unix::fs::symlink(&odd, p("names/link-to-odd")).unwrap();
    std::os::unix::fs::symlink("does/not/exist", p("names/dangling")).unwrap();
    std::os::unix::fs::symlink("/usr/bin/hello", p("names/absolute")).unwrap();
    std::os::unix::fs::symlink("../data", p("names/dir-link")).unwrap();
    // Special permission bits.
    fs::copy(p("usr/bin/hello"), p("usr/bin/hello-suid")).unwrap();
    fs::create_dir_all(p("perm/setgid-dir")).unwrap();
    fs::create_dir_all(p("perm/sticky-dir")).unwrap();
    fs::create_dir_all(p("perm/read-only-dir")).unwrap();
    write_file(&p("perm/read-only-dir/inside"), b"in a 0555 directory\n");
    write_file(&p("perm/private"), b"0600\n");
    write_file(&p("perm/no-permissions"), b"mode 0000\n");

    // Ownership first: chown clears setuid bits and file capabilities.
    if root {
        lchown(&p("data/text.txt"), 1234, 5678);
        lchown(&p("perm/setgid-dir"), 1001, 1002);
        lchown(&p("names/dangling"), 4321, 8765);
        lchown(&p("usr/bin/hello-suid"), 0, 0);
    } else {
        skipped.push("foreign ownership");
    }
    chmod(&p("usr/bin/hello-suid"), 0o4755);
    chmod(&p("perm/setgid-dir"), 0o2775);
    chmod(&p("perm/sticky-dir"), 0o1777);
    chmod(&p("perm/private"), 0o600);
    if root {
        chmod(&p("perm/no-permissions"), 0o000);
    }

    // Extended attributes, after chown/chmod.
    xattr::set(
        p("usr/share/doc/hello/copyright"),
        "user.test",
        b"hello xattr",
    )
    .unwrap();
    xattr::set(p("usr/share/doc/hello/copyright"), "user.empty", b"").unwrap();
    xattr::set(p("data"), "user.dir", b"\x00\x01binary\xff").unwrap();
    xattr::set(p("links/a"), "user.on-hardlink", b"shared by three names").unwrap();
    if root {
        xattr::set(p("usr/bin/hello"), "security.capability", &cap_net_raw_ep()).unwrap();
        // user.* is not allowed on symlinks; trusted.* is (for root).
        xattr::set(p("names/absolute"), "trusted.nexus-test", b"on a symlink").unwrap();
    } else {
        skipped.push("security.capability and trusted.* xattrs");
    }

    // Times last: creating entries changes their directory's mtime.
    set_mtime(&p("data/text.txt"), 1);
    set_mtime(&p("data/empty"), 4_000_000_000);
    set_mtime(&p("names/dangling"), 1_234_567_890);
    set_mtime(&p("data"), 1_000_000_000);
    set_mtime(&p("names"), 999_999_999);
    chmod(&p("perm/read-only-dir"), 0o555);
    skipped
}
