//! A warm program start costs the daemon nothing: real Debian packages
//! (Python's standard library, Perl's modules) grafted into a store,
//! mounted with the Index, and walked twice the way interpreters do —
//! listing directories, `stat` and `lstat` of every entry, reading every
//! link, opening, `isatty()`, reading and closing every file, asking for
//! names that do not exist — through `App/Current/` and through the Index.
//! The daemon's request counter (the `user.nexus.requests` attribute of
//! each mount's root) must show that the second walk sent nothing but what
//! the kernel forwards whatever the daemon answers: one `IOCTL` per
//! `isatty()` (the Index, only directories and links, gets nothing). Between
//! the walks the files' pages are locked in memory, since this machine's
//! proactive reclaim drops cached pages now and then; a link's cached
//! target cannot be locked, so the warm walk may be tried a few times and
//! one of them must show the floor. The kernel is not
//! asked to apply POSIX ACLs (asking costs a round trip per inode), so a
//! file whose ACL narrows its owning group must still be refused to it.
//! With the kernel view (`--kernel-metadata`) the second walk must send
//! nothing at all.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{ErrorKind, Read};
use std::os::fd::AsRawFd;
use std::path::Path;

use nexus_integration_tests::fixtures::{Scratch, cat_as_nobody, write_file};
use nexus_integration_tests::nexus::{
    Mount, covered_request_counts, request_counts, settled_request_counts, wait_for,
};
use nexus_integration_tests::{Store, fetch_debs, root_or_skip};

/// What one walk did.
#[derive(Debug, Default, PartialEq, Eq)]
struct Walked {
    dirs: u64,
    files: u64,
    links: u64,
    bytes: u64,
}

/// `after - before`, kinds that did not change left out.
fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(kind, n)| {
            let d = n - before.get(kind).copied().unwrap_or(0);
            (d > 0).then(|| (kind.clone(), d))
        })
        .collect()
}

/// Opens, asks `isatty()` (Python does on every open), reads and closes
/// the file at `path`; returns its length.
fn read_like_python(path: &Path) -> u64 {
    let mut file = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    // SAFETY: isatty on a descriptor we own.
    let tty = unsafe { libc::isatty(file.as_raw_fd()) };
    let errno = std::io::Error::last_os_error().raw_os_error();
    assert!(
        tty == 0 && errno == Some(libc::ENOTTY),
        "isatty({}) = {tty}, errno {errno:?}: a file must answer ENOTTY",
        path.display()
    );
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    bytes.len() as u64
}

/// Walks `dir` as an interpreter searching and loading modules would;
/// `depth` limits how deep (the Index is walked only near its top).
fn walk(dir: &Path, depth: usize, out: &mut Walked) {
    out.dirs += 1;
    let mut names: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    // A module searched where it is not.
    match fs::symlink_metadata(dir.join("__no_such_module__.py")) {
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        other => panic!("a missing name in {}: {other:?}", dir.display()),
    }
    for name in names {
        let path = dir.join(&name);
        let meta =
            fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
        if meta.file_type().is_symlink() {
            out.links += 1;
            fs::read_link(&path).unwrap_or_else(|e| panic!("readlink {}: {e}", path.display()));
            match fs::metadata(&path) {
                Ok(m) if m.is_file() => {
                    out.files += 1;
                    out.bytes += read_like_python(&path);
                }
                Ok(m) if m.is_dir() && depth > 0 => walk(&path, depth - 1, out),
                // Links to directories beyond the depth, or dangling (a
                // package's link to a file another package ships).
                _ => {}
            }
        } else if meta.is_dir() {
            if depth > 0 {
                walk(&path, depth - 1, out);
            }
        } else {
            fs::metadata(&path).unwrap();
            out.files += 1;
            out.bytes += read_like_python(&path);
        }
    }
}

/// The page-cache pages of files, locked in memory until dropped.
struct Pinned(Vec<(*mut libc::c_void, usize)>);

impl Drop for Pinned {
    fn drop(&mut self) {
        for &(at, len) in &self.0 {
            // SAFETY: a mapping `pin` made and nothing else uses.
            unsafe { libc::munmap(at, len) };
        }
    }
}

/// Maps every regular file below `dir` (symlinks not followed) and locks
/// its pages in memory: the kernel may otherwise drop cached pages between
/// two walks (memory pressure, or proactive reclaim such as DAMON's on a
/// virtual machine, which this machine runs), and reading them again is a
/// READ no daemon can avoid. Opens are not sent to the daemon (see
/// `NexusFs::open`); a page not cached is read now, before the warm walk.
fn pin(dir: &Path, pinned: &mut Pinned) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            pin(&path, pinned);
        } else if meta.is_file() && meta.len() > 0 {
            let file = File::open(&path).unwrap();
            let len = meta.len() as usize;
            // SAFETY: a read-only shared mapping of an open file (it
            // outlives the descriptor), unmapped when `pinned` drops.
            unsafe {
                let at = libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ,
                    libc::MAP_SHARED,
                    file.as_raw_fd(),
                    0,
                );
                assert_ne!(at, libc::MAP_FAILED, "mmap {}", path.display());
                pinned.0.push((at, len));
                assert_eq!(libc::mlock(at, len), 0, "mlock {}", path.display());
            }
        }
    }
}

/// How many warm walks may be tried before one must show the floor.
const WARM_TRIES: usize = 3;

/// Walks the packages through `Current` and part of the Index; returns
/// the walks (packages, index).
fn pass(mount: &Mount, index: &Path) -> (Walked, Walked) {
    let mut packages = Walked::default();
    for app in ["libpython3.11-stdlib", "perl-modules-5.36"] {
        walk(&mount.join(app).join("Current"), usize::MAX, &mut packages);
    }
    let mut indexed = Walked::default();
    walk(&index.join("lib/python3.11"), 1, &mut indexed);
    walk(&index.join("share/perl"), 2, &mut indexed);
    (packages, indexed)
}

/// A store of Python's standard library and Perl's modules, and an
/// empty directory for the Index.
fn python_and_perl(scratch: &Scratch) -> (Store, std::path::PathBuf) {
    let store = Store::init();
    let debs = fetch_debs(&["libpython3.11-stdlib", "perl-modules-5.36"]);
    let mut add = vec!["add".to_string()];
    add.extend(debs.iter().map(|d| d.to_string_lossy().into_owned()));
    store.ok(&add);
    let index = scratch.join("index");
    fs::create_dir_all(&index).unwrap();
    (store, fs::canonicalize(index).unwrap())
}

#[test]
fn a_warm_walk_sends_the_daemon_nothing_avoidable() {
    if !root_or_skip("a_warm_walk_sends_the_daemon_nothing_avoidable") {
        return;
    }
    let scratch = Scratch::new("warm-requests");
    let (store, index) = python_and_perl(&scratch);
    let mount = Mount::start(
        store.path(),
        &scratch.join("mnt"),
        &["--index", index.to_str().unwrap()],
    );

    let cold = (request_counts(mount.point()), request_counts(&index));
    let (first, first_index) = pass(&mount, &index);
    let mut pinned = Pinned(Vec::new());
    for app in ["libpython3.11-stdlib", "perl-modules-5.36"] {
        pin(&mount.join(app).join("Current/"), &mut pinned);
    }
    let warm = (
        settled_request_counts(mount.point()),
        settled_request_counts(&index),
    );
    let cold_mount = delta(&cold.0, &warm.0);
    for kind in ["LOOKUP", "READ", "READDIRPLUS"] {
        assert!(
            cold_mount.contains_key(kind),
            "the cold walk sent no {kind}: is the counter counting? {cold_mount:?}"
        );
    }
    let cold_index = delta(&cold.1, &warm.1);

    // A link's target is cached in a page no one can lock, so the kernel
    // may drop one between two walks and ask again: a warm walk is
    // repeated (up to WARM_TRIES times) until one of them shows the floor.
    // A daemon that made the kernel forget would fail every try.
    let mut tries = Vec::new();
    let mut before = warm;
    for _ in 0..WARM_TRIES {
        let (second, second_index) = pass(&mount, &index);
        assert_eq!(first, second, "the two walks saw different trees");
        assert_eq!(first_index, second_index, "the two index walks differ");
        assert!(
            second.files > 1000 && second_index.files > 100 && second_index.links > 100,
            "too small a walk to mean anything: {second:?}, index {second_index:?}"
        );
        let after = (
            settled_request_counts(mount.point()),
            settled_request_counts(&index),
        );
        let warm_mount = delta(&before.0, &after.0);
        let warm_index = delta(&before.1, &after.1);
        eprintln!(
            "walked {second:?} and in the index {second_index:?}; cold: {cold_mount:?}, \
             index {cold_index:?}; warm: {warm_mount:?}, index {warm_index:?}"
        );
        // The floor: the kernel forwards every ioctl, and remembers no answer.
        let opened = second.files + second_index.files;
        let floor = BTreeMap::from([("IOCTL".to_string(), opened)]);
        let at_floor = warm_mount == floor && warm_index.is_empty();
        tries.push((warm_mount, warm_index));
        if at_floor {
            break;
        }
        before = after;
    }
    drop(pinned);
    let (warm_mount, warm_index) = tries.last().expect("one warm walk at least");
    let opened = first.files + first_index.files;
    assert_eq!(
        warm_mount,
        &BTreeMap::from([("IOCTL".to_string(), opened)]),
        "no warm walk of the mount sent only one IOCTL per opened file: {tries:?}\n{}",
        mount.log()
    );
    assert!(
        warm_index.is_empty(),
        "every warm walk through the Index sent requests: {tries:?}\n{}",
        mount.log()
    );
    mount.umount();
}

/// The same walks with the kernel view (`--kernel-metadata`): the kernel
/// answers names, attributes, listings, links and `isatty()` itself, so the
/// warm walk sends the daemon nothing at all, not even the `IOCTL` floor.
/// The cold walk reads every file through the FUSE mount below.
#[test]
fn with_the_kernel_view_a_warm_walk_sends_the_daemon_nothing() {
    if !root_or_skip("with_the_kernel_view_a_warm_walk_sends_the_daemon_nothing") {
        return;
    }
    let scratch = Scratch::new("warm-kernel-view");
    let (store, index) = python_and_perl(&scratch);
    let mount = Mount::start(
        store.path(),
        &scratch.join("mnt"),
        &[
            "--index",
            index.to_str().unwrap(),
            "--kernel-metadata",
            "--allow-other",
        ],
    );
    let counts = |root: &Path| {
        // Settled: a read sent ahead at the end of a walk belongs to it.
        let mut last = covered_request_counts(root);
        let mut settled = false;
        wait_for(std::time::Duration::from_secs(5), || {
            let now = covered_request_counts(root);
            settled = now == last;
            last = now;
            settled
        });
        last
    };

    let cold = (counts(mount.point()), counts(&index));
    let (first, first_index) = pass(&mount, &index);
    let mut pinned = Pinned(Vec::new());
    for app in ["libpython3.11-stdlib", "perl-modules-5.36"] {
        pin(&mount.join(app).join("Current/"), &mut pinned);
    }
    let warm = (counts(mount.point()), counts(&index));
    let (second, second_index) = pass(&mount, &index);
    let after = (counts(mount.point()), counts(&index));
    drop(pinned);
    assert_eq!(first, second, "the two walks saw different trees");
    assert_eq!(first_index, second_index, "the two index walks differ");
    assert!(
        second.files > 1000 && second_index.files > 100 && second_index.links > 100,
        "too small a walk to mean anything: {second:?}, index {second_index:?}"
    );
    let cold_mount = delta(&cold.0, &warm.0);
    assert!(
        cold_mount.contains_key("READ"),
        "the cold walk read nothing through the FUSE mount: {cold_mount:?}"
    );
    let warm_mount = delta(&warm.0, &after.0);
    let warm_index = delta(&warm.1, &after.1);
    eprintln!(
        "walked {second:?} and in the index {second_index:?}; cold: {cold_mount:?}; \
         warm: {warm_mount:?}, index {warm_index:?}"
    );
    assert!(
        warm_mount.is_empty() && warm_index.is_empty(),
        "a warm walk through the kernel view sent {warm_mount:?} (index {warm_index:?})\n{}",
        mount.log()
    );
    mount.umount();
}

/// A POSIX access ACL in the kernel's xattr encoding: version 2, then
/// (tag, perm, id) entries.
fn acl_xattr(entries: &[(u16, u16)]) -> Vec<u8> {
    let mut out = 2u32.to_le_bytes().to_vec();
    for (tag, perm) in entries {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        out.extend_from_slice(&u32::MAX.to_le_bytes());
    }
    out
}

#[test]
fn an_acl_narrowing_the_owning_group_is_enforced() {
    if !root_or_skip("an_acl_narrowing_the_owning_group_is_enforced") {
        return;
    }
    let scratch = Scratch::new("acl");
    let src = scratch.join("src");
    // Both files mode 0640, group nogroup (65534): the group may read. On
    // `secret` an ACL says otherwise: group::--- with mask::r-- (which is
    // what the mode's group bits show).
    for name in ["secret", "open"] {
        let path = src.join(name);
        write_file(&path, format!("{name}\n").as_bytes());
        std::os::unix::fs::chown(&path, Some(0), Some(65534)).unwrap();
        nexus_integration_tests::fixtures::chmod(&path, 0o640);
    }
    let secret = src.join("secret");
    let (user_obj, group_obj, mask, other) = (0x01, 0x04, 0x10, 0x20);
    xattr::set(
        &secret,
        "system.posix_acl_access",
        &acl_xattr(&[(user_obj, 6), (group_obj, 0), (mask, 4), (other, 0)]),
    )
    .expect("setting an ACL on the scratch file system");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&secret).unwrap().permissions().mode() & 0o777,
        0o640,
        "setup: the mode's group bits show the mask"
    );
    assert!(
        !cat_as_nobody(&secret),
        "setup: the ACL refuses the group natively"
    );
    assert!(
        cat_as_nobody(&src.join("open")),
        "setup: the group reads the other file"
    );

    let store = Store::init();
    store.ok([
        "add",
        src.to_str().unwrap(),
        "--name",
        "acl",
        "--version",
        "1",
    ]);
    let mount = Mount::start(store.path(), &scratch.join("mnt"), &["--allow-other"]);
    assert!(
        cat_as_nobody(&mount.join("acl/1/open")),
        "a member of the owning group cannot read a 0640 file"
    );
    assert!(
        !cat_as_nobody(&mount.join("acl/1/secret")),
        "a member of the owning group read a file whose ACL refuses it"
    );
    mount.umount();
}
