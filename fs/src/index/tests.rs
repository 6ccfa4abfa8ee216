//! Tests of the index against real stores built in temporary directories.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nexus_store::dirs::DirSet;
use nexus_store::scan::ScanOptions;
use nexus_store::{AddDir, AddOptions, NoProgress, Store, StoreError};

use super::{Index, MULTIARCH, ROOT};
use crate::attr::Kind;
use crate::error::ViewError;
use crate::ino::Node;
use crate::view::{GenerationChoice, View, ViewOptions};

/// Where the view is taken to be mounted (links point below it).
const MOUNT: &str = "/P";

struct Fixture {
    _tmp: tempfile::TempDir,
    store: PathBuf,
    src: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("store");
        Store::init(&store).unwrap();
        let src = tmp.path().join("src");
        Fixture {
            _tmp: tmp,
            store,
            src,
        }
    }

    /// Writes `files` (path → content; content `@TARGET` makes a symlink)
    /// below `NAME-VERSION` in the source root and adds it as NAME/VERSION.
    fn add(&self, name: &str, version: &str, files: &[(&str, &str)]) {
        let add = self.write(name, version, files);
        let mut store = Store::open(&self.store).unwrap();
        store
            .add_dirs(&[add], AddOptions::default(), &NoProgress)
            .unwrap();
    }

    /// As [`Fixture::add`], as a package whose signer is trusted only for
    /// the Apps `apps` (what `nip add` of such a `.npk` records).
    fn add_restricted(&self, name: &str, version: &str, apps: &str, files: &[(&str, &str)]) {
        let add = self.write(name, version, files);
        let set = DirSet::scan(&[add], ScanOptions::default()).unwrap();
        let mut store = Store::open(&self.store).unwrap();
        store
            .add_staged_with(1, &NoProgress, |session| {
                let (mut staged, contents) = set.stage(session, 1, &|_| {})?;
                for package in &mut staged {
                    package.restricted_to = Some(apps.into());
                }
                Ok::<_, StoreError>((staged, contents))
            })
            .unwrap();
    }

    /// Writes the files of [`Fixture::add`] and names the directory. One
    /// written before is taken as it is (rewritten, its mtimes would make
    /// another tree): adding it again adds the same package.
    fn write(&self, name: &str, version: &str, files: &[(&str, &str)]) -> AddDir {
        let dir = self.src.join(format!("{name}-{version}"));
        let files = if dir.exists() { &[][..] } else { files };
        for (path, content) in files {
            let path = dir.join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            match content.strip_prefix('@') {
                Some(target) => symlink(target, &path).unwrap(),
                None => fs::write(&path, content).unwrap(),
            }
        }
        fs::create_dir_all(&dir).unwrap();
        AddDir {
            path: dir,
            name: name.into(),
            version: version.into(),
        }
    }

    fn store(&self) -> Store {
        Store::open(&self.store).unwrap()
    }

    fn index(&self, generation: GenerationChoice) -> (Arc<View>, Index) {
        let options = ViewOptions {
            generation,
            cache_bytes: 1 << 20,
            connections: 1,
        };
        let view = Arc::new(View::open(&self.store, options).unwrap());
        let index = Index::open(view.clone(), Path::new(MOUNT));
        (view, index)
    }
}

/// Looks a `/`-separated path up from the index root.
fn walk(index: &Index, path: &str) -> Result<crate::attr::Entry, ViewError> {
    let mut parent = ROOT;
    let mut found = Err(ViewError::NotFound);
    for part in path.split('/') {
        let entry = index.lookup(parent, part.as_bytes())?;
        parent = entry.attr.ino;
        found = Ok(entry);
    }
    found
}

fn names(index: &Index, path: &str) -> Vec<String> {
    let ino = if path.is_empty() {
        ROOT
    } else {
        walk(index, path).unwrap().attr.ino
    };
    index
        .list(ino)
        .unwrap()
        .entries
        .iter()
        .map(|e| String::from_utf8_lossy(&e.name).into_owned())
        .collect()
}

fn target(index: &Index, path: &str) -> String {
    let entry = walk(index, path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(entry.attr.kind, Kind::Symlink, "{path}");
    let target = index.readlink(entry.attr.ino).unwrap();
    assert_eq!(entry.attr.size, target.len() as u64, "{path}");
    String::from_utf8(target).unwrap()
}

#[test]
fn packages_merge_by_the_clash_rule() {
    let f = Fixture::new();
    f.add(
        "alpha",
        "1",
        &[
            ("bin/tool", "alpha"),
            ("usr/bin/tool2", "alpha"),
            ("usr/share/thing", "a file"),
            ("usr/share/doc/alpha/README", "alpha"),
            ("usr/lib/x86_64-linux-gnu/libfoo.so.1", "@libfoo.so.1.0"),
            ("usr/lib/x86_64-linux-gnu/libfoo.so.1.0", "alpha lib"),
            ("usr/lib/libbar.so", "bar"),
            ("etc/alpha.conf", "not indexed"),
        ],
    );
    f.add(
        "beta",
        "1",
        &[
            ("bin/tool", "beta"),
            ("bin/tool2", "beta"),
            ("usr/bin/only-beta", "beta"),
            ("share/thing/inside", "a directory"),
            ("share/doc/beta/README", "beta"),
            ("usr/lib/x86_64-linux-gnu/libfoo.so.1", "beta lib"),
        ],
    );
    f.add(
        "gamma",
        "1",
        &[
            ("bin/x", "root bin"),
            ("usr/bin/x", "usr bin"),
            ("usr/bin/dirlink", "@../share"),
            ("usr/share/man/man1/gamma.1", "manual"),
            ("include/gamma.h", "header"),
            ("libexec/gamma-helper", "helper"),
            ("usr/sbin/gammad", "daemon"),
        ],
    );
    // Uppercase sorts before lowercase, bytewise.
    f.add("Zed", "1", &[("usr/bin/tool", "Zed")]);
    let (_view, index) = f.index(GenerationChoice::Live);

    assert_eq!(
        names(&index, ""),
        [
            ".", "..", "bin", "include", "lib", "libexec", "sbin", "share"
        ]
    );
    assert_eq!(
        names(&index, "bin"),
        [".", "..", "dirlink", "only-beta", "tool", "tool2", "x"]
    );
    // The App that sorts first wins, wherever in it the name is...
    assert_eq!(target(&index, "bin/tool"), "/P/Zed/Current/usr/bin/tool");
    assert_eq!(
        target(&index, "bin/tool2"),
        "/P/alpha/Current/usr/bin/tool2"
    );
    // ...and within one App, bin/ beats usr/bin/.
    assert_eq!(target(&index, "bin/x"), "/P/gamma/Current/bin/x");
    assert_eq!(
        target(&index, "bin/only-beta"),
        "/P/beta/Current/usr/bin/only-beta"
    );
    // A symlink is a leaf, even to a directory.
    assert_eq!(
        target(&index, "bin/dirlink"),
        "/P/gamma/Current/usr/bin/dirlink"
    );
    // A file that ranks higher hides a directory of the same name.
    assert_eq!(
        target(&index, "share/thing"),
        "/P/alpha/Current/usr/share/thing"
    );
    // Directories merge recursively, real directories in the index.
    assert_eq!(names(&index, "share"), [".", "..", "doc", "man", "thing"]);
    assert_eq!(names(&index, "share/doc"), [".", "..", "alpha", "beta"]);
    assert_eq!(
        target(&index, "share/doc/beta/README"),
        "/P/beta/Current/share/doc/beta/README"
    );
    assert_eq!(
        target(&index, "share/man/man1/gamma.1"),
        "/P/gamma/Current/usr/share/man/man1/gamma.1"
    );
    assert_eq!(walk(&index, "share/man").unwrap().attr.kind, Kind::Dir);
    assert_eq!(
        target(&index, "include/gamma.h"),
        "/P/gamma/Current/include/gamma.h"
    );
    assert_eq!(
        target(&index, "libexec/gamma-helper"),
        "/P/gamma/Current/libexec/gamma-helper"
    );
    assert_eq!(
        target(&index, "sbin/gammad"),
        "/P/gamma/Current/usr/sbin/gammad"
    );
    assert_eq!(
        target(&index, "lib/libbar.so"),
        "/P/alpha/Current/usr/lib/libbar.so"
    );
    assert_eq!(
        target(&index, "lib/x86_64-linux-gnu/libfoo.so.1"),
        "/P/alpha/Current/usr/lib/x86_64-linux-gnu/libfoo.so.1"
    );
    if MULTIARCH == Some("x86_64-linux-gnu") {
        // The multiarch directory's content is in lib/ itself too.
        assert_eq!(
            names(&index, "lib"),
            [
                ".",
                "..",
                "libbar.so",
                "libfoo.so.1",
                "libfoo.so.1.0",
                "x86_64-linux-gnu"
            ]
        );
        assert_eq!(
            target(&index, "lib/libfoo.so.1"),
            "/P/alpha/Current/usr/lib/x86_64-linux-gnu/libfoo.so.1"
        );
    }

    // Listings, lookups and getattr agree; the numbers are the index's own.
    let mut seen = std::collections::HashSet::new();
    for dir in ["", "bin", "share", "share/doc", "share/doc/alpha"] {
        let ino = if dir.is_empty() {
            ROOT
        } else {
            walk(&index, dir).unwrap().attr.ino
        };
        let listing = index.list(ino).unwrap();
        assert!(!listing.immutable);
        assert_eq!(listing.entries[0].attr, index.getattr(ino).unwrap());
        for e in &listing.entries[2..] {
            assert_eq!(index.lookup(ino, &e.name).unwrap().attr, e.attr);
            assert_eq!(index.getattr(e.attr.ino).unwrap(), e.attr);
            assert!(!e.immutable && !e.attr.immutable);
            assert_eq!(e.attr.ino & 3, 3, "index numbers are 4·x + 3");
            assert_eq!(Node::from_ino(e.attr.ino), None, "not a view number");
            assert!(seen.insert(e.attr.ino), "{:?} reuses a number", e.name);
        }
    }
    assert_eq!(
        index
            .list(walk(&index, "share").unwrap().attr.ino)
            .unwrap()
            .entries[1]
            .attr,
        index.getattr(ROOT).unwrap(),
        "`..` of a top directory is the root"
    );

    // What is not there.
    assert!(matches!(walk(&index, "etc"), Err(ViewError::NotFound)));
    assert!(matches!(walk(&index, "bin/nope"), Err(ViewError::NotFound)));
    assert!(matches!(walk(&index, "bin/tool/x"), Err(ViewError::NotDir)));
    let tool = walk(&index, "bin/tool").unwrap().attr.ino;
    assert!(matches!(index.list(tool), Err(ViewError::NotDir)));
    assert!(matches!(index.readlink(ROOT), Err(ViewError::WrongKind)));
    let bin = walk(&index, "bin").unwrap().attr.ino;
    assert!(matches!(index.readlink(bin), Err(ViewError::WrongKind)));
    assert!(matches!(index.getattr(1), Err(ViewError::NotFound)));
    assert!(matches!(
        index.getattr(4 * 9999 + 3),
        Err(ViewError::NotFound)
    ));

    // A listing is computed once per generation.
    assert!(Arc::ptr_eq(
        &index.list(bin).unwrap(),
        &index.list(bin).unwrap()
    ));
}

/// A key trusted only for `aa-*` ships `aa-evil`, which sorts before
/// `zz-core`: by name alone it would decide every name it shares with
/// `zz-core`, files and directories alike. Ranked after every unrestricted
/// App, it decides only the names no unrestricted App has.
#[test]
fn restricted_packages_rank_after_every_unrestricted_one() {
    let f = Fixture::new();
    f.add(
        "zz-core",
        "1",
        &[
            ("usr/games/tool", "core"),
            ("bin/ls", "core ls"),
            ("share/thing", "a file"),
            ("share/doc/zz-core/README", "core doc"),
            ("share/man/man1/ls.1", "core manual"),
            ("usr/lib/x86_64-linux-gnu/libc.so.6", "core libc"),
        ],
    );
    f.add_restricted(
        "aa-evil",
        "1",
        "aa-*",
        &[
            // Its highest-ranked source against zz-core's lowest.
            ("bin/tool", "evil"),
            ("bin/ls", "@/tmp/evil"),
            ("bin/only-evil", "evil"),
            ("bin/both-restricted", "aa-evil"),
            // A directory where zz-core has a file, a file where zz-core
            // has a directory.
            ("share/thing/inside", "evil"),
            ("share/doc", "evil"),
            ("share/man/man1/ls.1", "evil manual"),
            ("share/man/man1/evil.1", "evil manual"),
            ("lib/libc.so.6", "evil libc"),
        ],
    );
    f.add_restricted(
        "ab-other",
        "1",
        "ab-*",
        &[("bin/both-restricted", "ab-other")],
    );
    let (_view, index) = f.index(GenerationChoice::Live);

    assert_eq!(
        target(&index, "bin/tool"),
        "/P/zz-core/Current/usr/games/tool"
    );
    assert_eq!(target(&index, "bin/ls"), "/P/zz-core/Current/bin/ls");
    assert_eq!(
        target(&index, "share/thing"),
        "/P/zz-core/Current/share/thing"
    );
    assert_eq!(walk(&index, "share/doc").unwrap().attr.kind, Kind::Dir);
    assert_eq!(names(&index, "share/doc"), [".", "..", "zz-core"]);
    assert_eq!(
        target(&index, "share/man/man1/ls.1"),
        "/P/zz-core/Current/share/man/man1/ls.1"
    );
    if MULTIARCH == Some("x86_64-linux-gnu") {
        assert_eq!(
            target(&index, "lib/libc.so.6"),
            "/P/zz-core/Current/usr/lib/x86_64-linux-gnu/libc.so.6"
        );
    }
    // What only restricted Apps have is still there, merged into the
    // unrestricted directories; among them the name order holds.
    assert_eq!(
        target(&index, "bin/only-evil"),
        "/P/aa-evil/Current/bin/only-evil"
    );
    assert_eq!(
        target(&index, "share/man/man1/evil.1"),
        "/P/aa-evil/Current/share/man/man1/evil.1"
    );
    assert_eq!(
        target(&index, "bin/both-restricted"),
        "/P/aa-evil/Current/bin/both-restricted"
    );

    // The rank follows the Current version: zz-core's restricted version 2
    // ranks it after aa-evil, whose name then decides.
    f.add_restricted("zz-core", "2", "zz-*", &[("bin/tool", "core 2")]);
    let (_view, index) = f.index(GenerationChoice::Live);
    assert_eq!(target(&index, "bin/tool"), "/P/aa-evil/Current/bin/tool");
    let (_view, index) = f.index(GenerationChoice::Fixed(3));
    assert_eq!(
        target(&index, "bin/tool"),
        "/P/zz-core/Current/usr/games/tool"
    );
}

/// The same package (name, version and tree) added again unrestricted, by
/// root or a key trusted for every App, is unrestricted from then on; a
/// restricted add never narrows it again.
#[test]
fn a_package_added_again_unrestricted_ranks_as_unrestricted() {
    let f = Fixture::new();
    f.add("zz-core", "1", &[("bin/tool", "core")]);
    f.add_restricted("aa-app", "1", "aa-*", &[("bin/tool", "aa")]);
    let (_view, index) = f.index(GenerationChoice::Live);
    assert_eq!(target(&index, "bin/tool"), "/P/zz-core/Current/bin/tool");
    let restricted = |spec: &str| f.store().installed(spec).unwrap().restricted_to;
    assert_eq!(restricted("aa-app/1").as_deref(), Some("aa-*"));
    assert_eq!(restricted("zz-core/1"), None);

    // No new generation (nothing to show changed), but the grant widens.
    let generation = f.store().catalog().current_generation().unwrap();
    f.add("aa-app", "1", &[("bin/tool", "aa")]);
    assert_eq!(
        f.store().catalog().current_generation().unwrap(),
        generation
    );
    assert_eq!(restricted("aa-app/1"), None);
    let (_view, index) = f.index(GenerationChoice::Live);
    assert_eq!(target(&index, "bin/tool"), "/P/aa-app/Current/bin/tool");

    f.add_restricted("aa-app", "1", "aa-*", &[("bin/tool", "aa")]);
    f.add_restricted("zz-core", "1", "zz-*", &[("bin/tool", "core")]);
    assert_eq!(restricted("aa-app/1"), None);
    assert_eq!(restricted("zz-core/1"), None);
}

#[test]
fn the_index_follows_its_view_and_reports_what_went_stale() {
    let f = Fixture::new();
    f.add("alpha", "1", &[("bin/tool", "alpha"), ("bin/a", "a")]);
    f.add(
        "beta",
        "1",
        &[("usr/bin/tool", "beta"), ("usr/share/doc/beta/x", "x")],
    );
    let (view, index) = f.index(GenerationChoice::Live);
    let (_fixed_view, fixed) = f.index(GenerationChoice::Fixed(2));
    assert_eq!(index.generation(), Some(2));
    assert_eq!(index.refresh().unwrap(), None, "nothing moved yet");

    // Look around, as a shell searching PATH and a user would.
    let bin = walk(&index, "bin").unwrap().attr.ino;
    let tool = walk(&index, "bin/tool").unwrap().attr.ino;
    let a = walk(&index, "bin/a").unwrap().attr.ino;
    assert_eq!(target(&index, "bin/tool"), "/P/alpha/Current/bin/tool");
    assert_eq!(names(&index, "share/doc/beta"), [".", "..", "x"]);

    // The index follows the view, not the catalog: it moves when the view
    // does.
    f.store().remove(&["alpha/1".to_string()]).unwrap();
    assert_eq!(target(&index, "bin/tool"), "/P/alpha/Current/bin/tool");
    view.refresh().unwrap();
    let changes = index.refresh().unwrap().expect("the view moved");
    assert_eq!(changes.generation, Some(3));
    assert_eq!(index.generation(), Some(3));
    assert_eq!(
        changes.entries,
        [(bin, b"a".to_vec()), (bin, b"tool".to_vec())],
        "gone and changed names; the unchanged share/doc/beta is not listed"
    );
    assert_eq!(changes.inodes, [tool.min(a), tool.max(a)]);
    assert_eq!(
        changes.dirs,
        [bin],
        "bin's listing changed, share's did not"
    );
    assert_eq!(index.refresh().unwrap(), None, "reported once");

    // The same paths keep their numbers; what is gone is gone.
    assert_eq!(walk(&index, "bin/tool").unwrap().attr.ino, tool);
    assert_eq!(target(&index, "bin/tool"), "/P/beta/Current/usr/bin/tool");
    assert!(matches!(walk(&index, "bin/a"), Err(ViewError::NotFound)));
    assert!(matches!(index.getattr(a), Err(ViewError::NotFound)));

    // A switch back is followed too, even when a request noticed it first.
    f.store().switch(2).unwrap();
    view.refresh().unwrap();
    assert_eq!(target(&index, "bin/tool"), "/P/alpha/Current/bin/tool");
    let changes = index.refresh().unwrap().expect("the view moved");
    assert_eq!(
        changes.entries,
        [(bin, b"a".to_vec()), (bin, b"tool".to_vec())],
        "a name that appears is reported too: its absence may be cached"
    );
    assert!(changes.inodes.contains(&tool));
    assert_eq!(changes.dirs, [bin]);

    // A new version of an App changes no link: they go through `Current`.
    f.add(
        "beta",
        "2",
        &[("usr/bin/tool", "beta 2"), ("usr/share/doc/beta/x", "x 2")],
    );
    view.refresh().unwrap();
    let changes = index.refresh().unwrap().expect("the view moved");
    assert!(changes.is_empty(), "{changes:?}");

    // A fixed view's index stays where it was.
    assert_eq!(fixed.generation(), Some(2));
    assert_eq!(target(&fixed, "bin/tool"), "/P/alpha/Current/bin/tool");
    assert_eq!(fixed.refresh().unwrap(), None);
}

#[test]
fn an_empty_store_has_empty_index_directories() {
    let f = Fixture::new();
    let (_view, index) = f.index(GenerationChoice::Live);
    assert_eq!(index.generation(), None);
    assert_eq!(names(&index, "bin"), [".", ".."]);
    assert_eq!(names(&index, "share"), [".", ".."]);
}

/// A daemon that takes the index mount over keeps every number the kernel
/// holds meaning the same path, gives new paths new numbers, refuses a
/// numbering that is not one, and answers a directory handle it never gave
/// with a fresh listing.
#[test]
fn handed_over_numbers_keep_their_paths() {
    let f = Fixture::new();
    f.add("alpha", "1", &[("bin/a", "a"), ("share/man/man1/a.1", "m")]);
    f.add("beta", "1", &[("bin/b", "b"), ("lib/libb.so", "l")]);
    let (view, old) = f.index(GenerationChoice::Live);
    let seen: Vec<(&str, u64)> = ["share/man/man1/a.1", "bin/b", "bin"]
        .into_iter()
        .map(|p| (p, walk(&old, p).unwrap().attr.ino))
        .collect();
    let paths = old.freeze_numbers();
    assert_eq!(paths[0], b"", "the root first");
    old.thaw_numbers();

    let new = Index::open_numbered(view.clone(), Path::new(MOUNT), paths.clone()).unwrap();
    for (path, ino) in &seen {
        assert_eq!(new.getattr(*ino).unwrap().ino, *ino, "{path}");
        assert_eq!(walk(&new, path).unwrap().attr.ino, *ino, "{path}");
    }
    assert_eq!(new.readlink(seen[1].1).unwrap(), b"/P/beta/Current/bin/b");
    let fresh = walk(&new, "lib/libb.so").unwrap().attr.ino;
    assert!(
        seen.iter().all(|(_, ino)| *ino != fresh),
        "a new path reuses a handed-over number"
    );
    // A directory numbered by the old daemon lists what is there now.
    let listing = new.list(seen[2].1).unwrap();
    assert!(listing.entries.iter().any(|e| e.name == b"b"));

    let mut twice = paths.clone();
    twice.push(paths[1].clone());
    assert!(Index::open_numbered(view.clone(), Path::new(MOUNT), twice).is_err());
    assert!(Index::open_numbered(view, Path::new(MOUNT), paths[1..].to_vec()).is_err());
}

#[test]
fn what_a_request_computes_from_the_old_generation_after_the_move_is_reported_too() {
    let f = Fixture::new();
    f.add("alpha", "1", &[("bin/tool", "alpha")]);
    f.add("beta", "1", &[("bin/b", "b")]);
    let (view, index) = f.index(GenerationChoice::Live);
    // A request thread takes the generation shown...
    let old = index.sync().unwrap();
    // ...the view moves, and the follower compares what had been computed:
    // `bin` had not been, so nothing is said of it.
    f.store().remove(&["alpha/1".to_string()]).unwrap();
    view.refresh().unwrap();
    let first = index.refresh().unwrap().expect("the view moved");
    let bin = index.number(b"bin").unwrap();
    assert!(!first.dirs.contains(&bin), "{first:?}");
    // ...then the request lists `bin` from the old generation, an answer
    // the kernel keeps.
    let stale = index.list_in(&old, bin).unwrap();
    assert!(stale.entries.iter().any(|e| e.name == b"tool"));
    // The follower's next turn finds that answer stale.
    assert!(index.comparing_late_answers());
    let late = index.refresh().unwrap().expect("a late answer was stale");
    assert_eq!(late.dirs, [bin]);
    assert!(late.entries.contains(&(bin, b"tool".to_vec())), "{late:?}");
    assert_eq!(index.refresh().unwrap(), None, "reported once");
}

/// Adds NAME/VERSION as [`Fixture::add`], after giving the directories
/// `modes` names (paths inside the package; `""` is its root) those modes.
fn add_with_modes(
    f: &Fixture,
    name: &str,
    version: &str,
    files: &[(&str, &str)],
    modes: &[(&str, u32)],
) {
    let add = f.write(name, version, files);
    for (rel, mode) in modes {
        let path = if rel.is_empty() {
            add.path.clone()
        } else {
            add.path.join(rel)
        };
        fs::set_permissions(&path, fs::Permissions::from_mode(*mode)).unwrap();
    }
    f.store()
        .add_dirs(&[add], AddOptions::default(), &NoProgress)
        .unwrap();
}

/// The owner, group and mode the index gives `path`, by lookup, by its
/// own listing's `.` and by its parent's listing (what `getattr`, `lookup`
/// and `readdirplus` answer, and what the kernel view's image takes).
fn access(index: &Index, path: &str) -> (u32, u32, u32) {
    let entry = walk(index, path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let by_lookup = (entry.attr.uid, entry.attr.gid, entry.attr.perm);
    let by_getattr = index.getattr(entry.attr.ino).unwrap();
    assert_eq!(
        by_lookup,
        (by_getattr.uid, by_getattr.gid, by_getattr.perm),
        "{path}"
    );
    let own = index.list(entry.attr.ino).unwrap();
    let dot = &own.entries[0].attr;
    assert_eq!(by_lookup, (dot.uid, dot.gid, dot.perm), "{path}/.");
    let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
    let parent = if parent.is_empty() {
        ROOT
    } else {
        walk(index, parent).unwrap().attr.ino
    };
    let listed = index.list(parent).unwrap();
    let listed = listed
        .entries
        .iter()
        .find(|e| e.name == name.as_bytes())
        .unwrap();
    assert_eq!(
        by_lookup,
        (listed.attr.uid, listed.attr.gid, listed.attr.perm),
        "{path} listed"
    );
    by_lookup
}

/// A package's private directory stays private in the index: a merged
/// directory gives no one more than each directory it merges, and no more
/// than the directories on the way to those (the package root, `usr`).
#[test]
fn a_merged_directory_lists_to_no_one_more_than_its_sources_do() {
    let f = Fixture::new();
    add_with_modes(
        &f,
        "alpha",
        "1",
        &[("usr/share/secret/db.conf", "x"), ("usr/share/open/a", "a")],
        &[("usr/share/secret", 0o700)],
    );
    let (view, index) = f.index(GenerationChoice::Live);
    let me = fs::metadata(f.src.join("alpha-1")).unwrap();
    let (uid, gid) = (me.uid(), me.gid());
    assert_eq!(access(&index, "share/secret"), (uid, gid, 0o700));
    assert_eq!(access(&index, "share/open"), (uid, gid, 0o755));
    assert_eq!(access(&index, "share"), (uid, gid, 0o755));
    assert_eq!(access(&index, "bin"), (0, 0, 0o755), "no source: root's");
    let root = index.getattr(ROOT).unwrap();
    assert_eq!((root.uid, root.gid, root.perm), (0, 0, 0o755));

    // A second App's open directory of the same name opens nothing.
    f.add("beta", "1", &[("share/secret/other.conf", "y")]);
    view.refresh().unwrap();
    index.refresh().unwrap();
    assert_eq!(
        names(&index, "share/secret"),
        [".", "..", "db.conf", "other.conf"]
    );
    assert_eq!(access(&index, "share/secret"), (uid, gid, 0o700));

    // A directory that turns private is reported stale, for the kernel to
    // drop the attributes it holds.
    let open = walk(&index, "share/open").unwrap().attr.ino;
    add_with_modes(
        &f,
        "gamma",
        "1",
        &[("share/open/b", "b")],
        &[("share/open", 0o750)],
    );
    view.refresh().unwrap();
    let changes = index.refresh().unwrap().expect("the view moved");
    assert!(changes.inodes.contains(&open), "{changes:?}");
    assert_eq!(access(&index, "share/open"), (uid, gid, 0o750));

    // A way into a package that others may not search closes what is
    // below it: `usr` 0700 (and a root 0711, which lets them pass).
    let share = walk(&index, "share").unwrap().attr.ino;
    add_with_modes(
        &f,
        "delta",
        "1",
        &[("usr/share/doc/d", "d")],
        &[("usr", 0o700), ("", 0o711)],
    );
    view.refresh().unwrap();
    let changes = index.refresh().unwrap().expect("the view moved");
    assert!(changes.inodes.contains(&share), "{changes:?}");
    assert_eq!(access(&index, "share"), (uid, gid, 0o700));
    assert_eq!(access(&index, "bin"), (0, 0, 0o755), "delta has no bin");
}

/// A restricted App's private directory is left out of a directory an
/// unrestricted App has rather than narrow it (hiding every name in it
/// from users but root), and keeps its access where it is alone.
#[test]
fn a_restricted_apps_private_directory_never_narrows_an_unrestricted_one() {
    let f = Fixture::new();
    f.add(
        "zz-core",
        "1",
        &[("bin/ls", "ls"), ("share/doc/zz-core/README", "doc")],
    );
    let evil = f.write(
        "aa-evil",
        "1",
        &[
            ("bin/evil", "evil"),
            ("share/doc/aa-evil/README", "evil doc"),
            ("share/private/x", "x"),
        ],
    );
    for (rel, mode) in [
        ("bin", 0o700),
        ("share/doc", 0o700),
        ("share/private", 0o700),
    ] {
        fs::set_permissions(evil.path.join(rel), fs::Permissions::from_mode(mode)).unwrap();
    }
    // Written already: taken as it is, modes included.
    f.add_restricted("aa-evil", "1", "aa-*", &[]);
    let (_view, index) = f.index(GenerationChoice::Live);
    let me = fs::metadata(f.src.join("zz-core-1")).unwrap();
    let (uid, gid) = (me.uid(), me.gid());

    assert_eq!(access(&index, "bin"), (uid, gid, 0o755));
    assert_eq!(names(&index, "bin"), [".", "..", "ls"]);
    assert_eq!(access(&index, "share/doc"), (uid, gid, 0o755));
    assert_eq!(names(&index, "share/doc"), [".", "..", "zz-core"]);
    // Its own directory, which no unrestricted App has, stays private.
    assert_eq!(access(&index, "share/private"), (uid, gid, 0o700));
    assert_eq!(names(&index, "share/private"), [".", "..", "x"]);
}
