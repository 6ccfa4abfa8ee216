//! `nexus build --profile`: every profile of `profiles/` built from real
//! Debian packages into one store (each generation exactly its profile's
//! packages and Current choices, programs run from it), reuse of what is
//! stored, signed images, and refusals that leave the store unchanged: bad
//! KDL files (a diagnostic naming the line) and missed version
//! constraints. The unikernel profile builds the Rumk guest from rumk/.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use nexus_integration_tests::nip::EXIT_ERROR;
use nexus_integration_tests::{
    Scratch, Store, deb_field, fetch_debs, nexus_bin, nip_bin, root_or_skip,
};

/// The Debian packages the repository's recipes fetch.
const DEBIAN: &[&str] = &[
    "busybox-static",
    "hello",
    "hello-traditional",
    "jq",
    "libjq1",
    "libonig5",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The version a .deb is stored under: its Version without the epoch.
fn stored_version(deb: &Path) -> String {
    let v = deb_field(deb, "Version");
    v.split_once(':').map_or(v.clone(), |(_, r)| r.to_string())
}

/// Runs `nexus --store STORE build ARGS`.
fn build(store: &Store, args: &[&str]) -> Output {
    Command::new(nexus_bin())
        .arg("--store")
        .arg(store.path())
        .arg("build")
        .args(args)
        .env_remove("NEXUS_PROFILES")
        .env_remove("NEXUS_RECIPES")
        .env_remove("NEXUS_CACHE")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", nexus_bin().display()))
}

fn show(out: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `nexus build --profile=NAME` with the repository's profiles and recipes
/// and the given cache; returns its JSON.
fn build_ok(store: &Store, profile: &str, cache: &Path, extra: &[&str]) -> serde_json::Value {
    let flag = format!("--profile={profile}");
    let dirs = dirs_args(&repo().join("profiles"), &repo().join("recipes"), cache);
    let mut args: Vec<&str> = vec![&flag, "--json"];
    args.extend(dirs.iter().map(String::as_str));
    args.extend_from_slice(extra);
    let out = build(store, &args);
    assert!(out.status.success(), "building {profile}: {}", show(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", show(&out)))
}

fn dirs_args(profiles: &Path, recipes: &Path, cache: &Path) -> Vec<String> {
    vec![
        format!("--profiles={}", profiles.display()),
        format!("--recipes={}", recipes.display()),
        format!("--cache={}", cache.display()),
    ]
}

/// `NAME/VERSION` → Current, of the live generation.
fn live(store: &Store) -> BTreeMap<String, bool> {
    store
        .list()
        .into_iter()
        .map(|p| (p.spec(), p.current))
        .collect()
}

/// Runs a program exported from the store, with its libraries exported
/// beside it; returns its stdout.
fn run_exported(
    store: &Store,
    scratch: &Scratch,
    specs: &[&str],
    program: &str,
    args: &[&str],
) -> String {
    let mut lib_path = Vec::new();
    let mut bin = None;
    for spec in specs {
        let dest = scratch.join(spec.replace('/', "_"));
        if !dest.exists() {
            store.ok(["export", spec, dest.to_str().unwrap()]);
        }
        lib_path.push(dest.join("lib/x86_64-linux-gnu").display().to_string());
        if dest.join(program).is_file() {
            bin = Some(dest.join(program));
        }
    }
    let bin = bin.unwrap_or_else(|| panic!("no {program} in {specs:?}"));
    let out = Command::new(&bin)
        .args(args)
        .env("LD_LIBRARY_PATH", lib_path.join(":"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    assert!(
        out.status.success(),
        "{} {args:?}: {}",
        bin.display(),
        show(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn every_profile_builds_and_reuses_what_is_stored() {
    let debs = fetch_debs(DEBIAN);
    let v: BTreeMap<&str, String> = DEBIAN
        .iter()
        .zip(&debs)
        .map(|(n, d)| (*n, stored_version(d)))
        .collect();
    let spec = |n: &str| format!("{n}/{}", v[n]);
    let hello_traditional = format!("hello/{}", v["hello-traditional"]);
    // Each profile's packages and whether each is Current.
    let core = vec![
        (spec("busybox-static"), true),
        (spec("hello"), true),
        (spec("jq"), true),
        (spec("libjq1"), true),
        (spec("libonig5"), true),
    ];
    let mut fleet = core.clone();
    fleet.push((hello_traditional.clone(), false));
    let expected: BTreeMap<&str, Vec<(String, bool)>> = [
        ("tiny", core[..1].to_vec()),
        ("micro", core[..2].to_vec()),
        ("core", core.clone()),
        ("fleet", fleet),
    ]
    .into_iter()
    .collect();

    let store = Store::init();
    let scratch = Scratch::new("profiles");
    // The first build fetches through apt itself, into an empty cache; the
    // others use the test cache (already filled above).
    let fresh_cache = scratch.join("cache");
    let cache = nexus_integration_tests::debs::cache_dir();
    let mut names: Vec<String> = fs::read_dir(repo().join("profiles"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".kdl")
                .map(String::from)
        })
        .collect();
    // The guest first (it shares busybox-static with tiny), then smallest
    // first, so each build reuses what the previous one grafted and fleet's
    // generation is live at the end.
    names.sort_by_key(|n| {
        ["unikernel", "tiny", "micro", "core", "fleet"]
            .iter()
            .position(|p| p == n)
            .unwrap_or(9)
    });
    let mut built = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let cache = if i == 0 { &fresh_cache } else { &cache };
        let json = build_ok(&store, name, cache, &[]);
        assert_eq!(json["new_generation"], true, "{json}");
        if let Some(want) = expected.get(name.as_str()) {
            let want: BTreeMap<String, bool> = want.iter().cloned().collect();
            assert_eq!(live(&store), want, "profile {name}: the live generation");
        }
        built.push(name.clone());
    }
    assert!(
        ["unikernel", "tiny", "micro", "core", "fleet"]
            .iter()
            .all(|p| built.iter().any(|b| b == p)),
        "profiles built: {built:?}"
    );
    assert!(
        fs::read_dir(&fresh_cache).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("busybox-static_")),
        "the first build fetched busybox-static itself"
    );

    // Programs of the last generation (fleet) run: hello in both versions,
    // jq with its libraries from the store.
    let hello = run_exported(&store, &scratch, &[&spec("hello")], "bin/hello", &[]);
    assert_eq!(hello.trim(), "Hello, world!");
    let traditional = run_exported(&store, &scratch, &[&hello_traditional], "bin/hello", &[]);
    assert_eq!(traditional.trim(), "Hello, world!");
    let jq = run_exported(
        &store,
        &scratch,
        &[&spec("jq"), &spec("libjq1"), &spec("libonig5")],
        "bin/jq",
        &["-n", "[1,2] | add"],
    );
    assert_eq!(jq.trim(), "3");
    let bb = run_exported(
        &store,
        &scratch,
        &[&spec("busybox-static")],
        "bin/busybox",
        &["echo", "tiny"],
    );
    assert_eq!(bb.trim(), "tiny");

    // Building core again reuses every stored package: nothing is fetched
    // (the cache given cannot even be created) and no pack is written.
    let packs = fs::read_dir(store.packs_dir()).unwrap().count();
    let json = build_ok(&store, "core", Path::new("/proc/no-cache-here"), &[]);
    let packages = json["packages"].as_array().unwrap();
    assert_eq!(packages.len(), 5, "{json}");
    assert!(packages.iter().all(|p| p["reused"] == true), "{json}");
    assert_eq!(fs::read_dir(store.packs_dir()).unwrap().count(), packs);
    let want: BTreeMap<String, bool> = expected["core"].iter().cloned().collect();
    assert_eq!(live(&store), want, "core again, after fleet");
    // Once more: the live generation already is core.
    let json = build_ok(&store, "core", Path::new("/proc/no-cache-here"), &[]);
    assert_eq!(json["new_generation"], false, "{json}");

    // A signed image of a profile imports elsewhere as the same system.
    store.ok(["key", "generate", "builder"]);
    let image = scratch.join("micro.img");
    build_ok(
        &store,
        "micro",
        &cache,
        &[
            "-o",
            image.to_str().unwrap(),
            "--key",
            "builder",
            "--counter",
            "3",
        ],
    );
    // Without --counter, the next of the key's counters, as nexus snapshot.
    let again = build_ok(
        &store,
        "micro",
        &cache,
        &[
            "-o",
            scratch.join("micro2.img").to_str().unwrap(),
            "--key",
            "builder",
        ],
    );
    assert_eq!(again["image"]["counter"], 4, "{again}");
    let other = Store::init();
    let public = fs::read_dir(store.path().join("keys/public"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    other.ok(["key", "trust", public.to_str().unwrap(), "--for", "images"]);
    let switched = Command::new(nexus_bin())
        .arg("--store")
        .arg(other.path())
        .args(["switch", "--image"])
        .arg(&image)
        .output()
        .unwrap();
    assert!(switched.status.success(), "{}", show(&switched));
    assert_eq!(
        live(&other),
        live(&store),
        "the image holds the micro generation"
    );
}

/// A scratch profiles/recipes pair with one profile and its recipes.
fn scratch_dirs(profile: &str, recipes: &[(&str, &str)]) -> (Scratch, PathBuf, PathBuf) {
    let s = Scratch::new("kdl");
    let (p, r) = (s.join("profiles"), s.join("recipes"));
    fs::create_dir_all(&p).unwrap();
    fs::create_dir_all(r.join("sub")).unwrap();
    fs::write(p.join("bad.kdl"), profile).unwrap();
    for (name, text) in recipes {
        fs::write(r.join("sub").join(format!("{name}.kdl")), text).unwrap();
    }
    (s, p, r)
}

/// Builds `bad` from scratch dirs; it must fail, leave the store as it was,
/// and say `why` in its error.
fn refused(store: &Store, profile: &str, recipes: &[(&str, &str)], why: &[&str]) -> String {
    let (s, p, r) = scratch_dirs(profile, recipes);
    let before = store.state();
    let args = dirs_args(&p, &r, &nexus_integration_tests::debs::cache_dir());
    let mut all = vec!["--profile", "bad"];
    all.extend(args.iter().map(String::as_str));
    let out = build(store, &all);
    assert_eq!(out.status.code(), Some(EXIT_ERROR), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    for w in why {
        assert!(
            stderr.contains(w),
            "expected {w:?} in the error: {}",
            show(&out)
        );
    }
    assert!(!stderr.contains("panicked"), "{}", show(&out));
    store.assert_unchanged(&before, "a refused build");
    drop(s);
    stderr
}

#[test]
fn bad_files_get_diagnostics_that_name_the_line() {
    let store = Store::init();
    let hello = (
        "hello",
        "recipe \"hello\" {\n    source \"debian\" \"hello\"\n}\n",
    );
    // Unknown node, on line 3.
    let err = refused(
        &store,
        "profile \"bad\" {\n    package \"hello\" \"*\"\n    pakage \"jq\" \"*\"\n}\n",
        &[hello],
        &["bad.kdl:3:5", "unknown node `pakage`", "pakage \"jq\""],
    );
    // The report quotes the line and underlines the node name.
    assert!(err.contains("───"), "{err}");
    // Missing version.
    refused(
        &store,
        "profile \"bad\" {\n\n    package \"hello\"\n}\n",
        &[hello],
        &["bad.kdl:3:", "missing version constraint for `hello`"],
    );
    // Bad constraint.
    refused(
        &store,
        "profile \"bad\" {\n    package \"hello\" \"~> 2\"\n}\n",
        &[hello],
        &["bad.kdl:2:", "bad version constraint `~> 2`"],
    );
    // KDL syntax error.
    refused(
        &store,
        "profile \"bad\" {\n    package \"hello\" \"*\n}\n",
        &[hello],
        &["bad.kdl:2:"],
    );
    // Unknown recipe kind, in the recipe file.
    refused(
        &store,
        "profile \"bad\" {\n    package \"hello\" \"*\"\n}\n",
        &[(
            "hello",
            "recipe \"hello\" {\n    description \"x\"\n    source \"rpm\" \"hello.rpm\"\n}\n",
        )],
        &["hello.kdl:3:12", "unknown recipe kind `rpm`"],
    );
    // A profile line whose recipe does not exist.
    refused(
        &store,
        "profile \"bad\" {\n    package \"hello\" \"*\"\n    package \"jq\" \"*\" recipe=\"jq-nightly\"\n}\n",
        &[hello],
        &["bad.kdl:3:5", "no recipe `jq-nightly`"],
    );
    // A directory recipe without a version.
    refused(
        &store,
        "profile \"bad\" {\n    package \"hello\" \"*\"\n}\n",
        &[(
            "hello",
            "recipe \"hello\" {\n    source \"dir\" \"tree\"\n}\n",
        )],
        &["hello.kdl:2:", "missing version"],
    );
}

/// A package outside its line's constraint is refused, naming the line:
/// apt's candidate before it is fetched (nothing stored fits either), a
/// package file once grafted.
#[test]
fn a_grafted_package_outside_its_constraint_is_refused() {
    let real = fetch_debs(&["hello"]).remove(0);
    let store = Store::init();
    let candidate = format!("apt's candidate is hello/{}", apt_candidate("hello"));
    refused(
        &store,
        "profile \"bad\" {\n    package \"hello\" \">= 3\"\n}\n",
        &[(
            "hello",
            "recipe \"hello\" {\n    source \"debian\" \"hello\"\n}\n",
        )],
        &[
            "package `hello` does not satisfy `>= 3`",
            "bad.kdl:2",
            &candidate,
        ],
    );
    refused(
        &store,
        "profile \"bad\" {\n    package \"hello\" \">= 3\"\n}\n",
        &[(
            "hello",
            &format!(
                "recipe \"hello\" {{\n    source \"deb\" \"{}\"\n}}\n",
                real.display()
            ),
        )],
        &[
            "package `hello` does not satisfy `>= 3`",
            "bad.kdl:2",
            "grafted hello/",
        ],
    );
}

/// `nexus --store STORE build ARGS` run in `cwd`, environment as [`build`].
fn build_in(store: &Store, cwd: &Path, args: &[&str]) -> Output {
    Command::new(nexus_bin())
        .arg("--store")
        .arg(store.path())
        .arg("build")
        .args(args)
        .current_dir(cwd)
        .env_remove("NEXUS_PROFILES")
        .env_remove("NEXUS_RECIPES")
        .env_remove("NEXUS_CACHE")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", nexus_bin().display()))
}

fn chown_tree(path: &Path, uid: u32) {
    nexus_integration_tests::fixtures::lchown(path, uid, uid);
    if path.is_dir() {
        for e in fs::read_dir(path).unwrap() {
            chown_tree(&e.unwrap().path(), uid);
        }
    }
}

/// A store whose live set holds one package, `base/1`.
fn store_with_base() -> (Store, Scratch) {
    let store = Store::init();
    let tree = Scratch::new("base");
    nexus_integration_tests::fixtures::write_file(&tree.join("base/1/bin/base"), b"base\n");
    store.ok(["add", tree.join("base/1").to_str().unwrap()]);
    (store, tree)
}

#[test]
fn a_profile_planted_in_a_writable_ancestor_is_not_built_as_root() {
    if !root_or_skip("a_profile_planted_in_a_writable_ancestor_is_not_built_as_root") {
        return;
    }
    // A user (nobody) plants profiles/ and a script recipe in a shared,
    // world-writable directory, as /tmp; root builds from a job directory
    // below it.
    let s = Scratch::new("planted");
    let shared = s.join("shared");
    fs::create_dir(&shared).unwrap();
    nexus_integration_tests::fixtures::chmod(&shared, 0o1777);
    let marker = shared.join("PWNED");
    fs::create_dir_all(shared.join("profiles")).unwrap();
    fs::create_dir_all(shared.join("recipes")).unwrap();
    fs::write(
        shared.join("profiles/core.kdl"),
        "profile \"core\" {\n    package \"evil\" \"*\"\n}\n",
    )
    .unwrap();
    fs::write(
        shared.join("recipes/evil.kdl"),
        "recipe \"evil\" {\n    source \"script\" \"evil.sh\"\n    version \"1\"\n}\n",
    )
    .unwrap();
    fs::write(
        shared.join("recipes/evil.sh"),
        format!(
            "id > {} || true\nmkdir -p \"$NEXUS_OUT/bin\"\necho evil > \"$NEXUS_OUT/bin/evil\"\n",
            marker.display()
        ),
    )
    .unwrap();
    for d in ["profiles", "recipes"] {
        chown_tree(&shared.join(d), 65534);
    }
    let job = shared.join("root-work/job");
    fs::create_dir_all(&job).unwrap();
    let (store, _base) = store_with_base();
    let before = store.state();

    // No upward search as root: the planted profiles are never read.
    let out = build_in(&store, &job, &["--profile", "core"]);
    assert_eq!(out.status.code(), Some(EXIT_ERROR), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/etc/nexus/profiles") && stderr.contains("--profiles"),
        "{}",
        show(&out)
    );
    assert!(!marker.exists(), "the planted script ran");
    store.assert_unchanged(&before, "a build from a planted profile");

    // Named explicitly, they are refused as another user's.
    let flags = [
        format!("--profiles={}", shared.join("profiles").display()),
        format!("--recipes={}", shared.join("recipes").display()),
    ];
    let mut args = vec!["--profile", "core"];
    args.extend(flags.iter().map(String::as_str));
    let out = build_in(&store, &job, &args);
    assert_eq!(out.status.code(), Some(EXIT_ERROR), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("owned by uid 65534") && stderr.contains("--trust-dirs"),
        "{}",
        show(&out)
    );
    assert!(!marker.exists(), "the planted script ran");
    store.assert_unchanged(&before, "a build from another user's profiles");

    // Root-owned but in a world-writable directory without the sticky bit:
    // anyone could swap them, so they are refused too.
    let open = s.join("open");
    fs::create_dir(&open).unwrap();
    nexus_integration_tests::fixtures::chmod(&open, 0o777);
    fs::create_dir(open.join("profiles")).unwrap();
    fs::copy(
        shared.join("profiles/core.kdl"),
        open.join("profiles/core.kdl"),
    )
    .unwrap();
    let flag = format!("--profiles={}", open.join("profiles").display());
    let out = build_in(&store, &job, &["--profile", "core", &flag, &flags[1]]);
    assert_eq!(out.status.code(), Some(EXIT_ERROR), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("writable by everyone"),
        "{}",
        show(&out)
    );
    store.assert_unchanged(&before, "a build from swappable profiles");

    // Vouched for, the build runs, but the script is sandboxed: it cannot
    // write outside its output.
    args.push("--trust-dirs");
    let out = build_in(&store, &job, &args);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        !marker.exists(),
        "the sandboxed script wrote outside $NEXUS_OUT"
    );
    assert_eq!(
        store.cat("evil/1", "bin/evil").stdout,
        b"evil\n",
        "the vouched-for build"
    );
}

#[test]
fn build_scripts_run_sandboxed_and_their_output_is_normalised() {
    if !root_or_skip("build_scripts_run_sandboxed_and_their_output_is_normalised") {
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    // A host daemon's Unix socket outside /run, open to every user: the
    // script must neither reach it nor pass its $NEXUS_OUT through it.
    let sockets = tempfile::tempdir_in("/var/tmp").unwrap();
    nexus_integration_tests::fixtures::chmod(sockets.path(), 0o755);
    let relay = sockets.path().join("relay.sock");
    let unix_listener = std::os::unix::net::UnixListener::bind(&relay).unwrap();
    unix_listener.set_nonblocking(true).unwrap();
    nexus_integration_tests::fixtures::chmod(&relay, 0o777);
    let host_pid = std::process::id();
    let etc_probe = format!("/etc/nexus-sandbox-probe-{host_pid}");
    let script = format!(
        r#"set -u
out="$NEXUS_OUT"
report="$out/report"
try() {{ if eval "$2" >/dev/null 2>&1; then echo "$1 yes"; else echo "$1 no"; fi >> "$report"; }}
try write-source "echo x > '$NEXUS_RECIPE_DIR/planted'"
try write-etc "echo x > {etc_probe}"
try write-tmp "echo x > /tmp/x"
try network "bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}'"
try host-process "test -e /proc/{host_pid}"
try python "/usr/bin/python3 -c pass"
try host-socket "/usr/bin/python3 '$NEXUS_RECIPE_DIR/relay.py' '{relay}'"
echo "processes $(ls -d /proc/[0-9]* | wc -l)" >> "$report"
echo "uid $(id -u)" >> "$report"
mkdir -p "$out/bin"
printf '#!/bin/sh\necho hi\n' > "$out/bin/evil"
chmod 4755 "$out/bin/evil"
cp "$out/bin/evil" "$out/bin/keep"
chmod 6755 "$out/bin/keep"
"#,
        relay = relay.display(),
    );
    let (s, p, r) = scratch_dirs(
        "profile \"bad\" {\n    package \"probe\" \"= 1\"\n}\n",
        &[(
            "probe",
            "recipe \"probe\" {\n    source \"script\" \"probe.sh\"\n    version \"1\"\n    privileged \"bin/keep\"\n}\n",
        )],
    );
    fs::write(r.join("sub/probe.sh"), script).unwrap();
    fs::write(
        r.join("sub/relay.py"),
        "import array, os, socket, sys\n\
         s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n\
         s.connect(sys.argv[1])\n\
         out = os.open(os.environ['NEXUS_OUT'], os.O_RDONLY | os.O_DIRECTORY)\n\
         s.sendmsg([b'out'], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array('i', [out]))])\n",
    )
    .unwrap();
    let store = Store::init();
    let args = dirs_args(&p, &r, &nexus_integration_tests::debs::cache_dir());
    let mut all = vec!["--profile", "bad"];
    all.extend(args.iter().map(String::as_str));
    let out = build(&store, &all);
    assert!(out.status.success(), "{}", show(&out));

    let report = String::from_utf8(store.cat("probe/1", "report").stdout).unwrap();
    let lines: Vec<&str> = report.lines().collect();
    for want in [
        "write-source no",
        "write-etc no",
        "write-tmp yes",
        "network no",
        "host-process no",
        "host-socket no",
    ] {
        assert!(
            lines.contains(&want),
            "{want:?} not in the report:\n{report}"
        );
    }
    // The socket probe needs Python to mean anything.
    assert!(
        lines.contains(&"python yes") || !Path::new("/usr/bin/python3").exists(),
        "the script could not run /usr/bin/python3:\n{report}"
    );
    // Its own pid namespace: the script's shell, its pid 1 and the
    // commands of that one line.
    let processes: usize = lines
        .iter()
        .find_map(|l| l.strip_prefix("processes "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no process count:\n{report}"));
    assert!(
        processes <= 5,
        "the script saw {processes} processes:\n{report}"
    );
    assert!(
        !lines.contains(&"uid 0"),
        "the script ran as root:\n{report}"
    );
    assert!(!r.join("sub/planted").exists());
    assert!(!Path::new(&etc_probe).exists());
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the script reached the host's network"
    );
    assert!(
        matches!(unix_listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the script reached a host Unix socket"
    );

    // Imported owned by root; setuid only where the recipe says so.
    let files = store.files("probe/1");
    let file = |path: &str| {
        files
            .iter()
            .find(|f| f.path == path)
            .unwrap_or_else(|| panic!("no {path} in {files:?}"))
    };
    assert!(files.iter().all(|f| f.uid == 0 && f.gid == 0), "{files:?}");
    assert_eq!(
        file("bin/evil").mode,
        0o755,
        "setuid kept on an undeclared file"
    );
    assert_eq!(
        file("bin/keep").mode,
        0o6755,
        "the declared privileged file"
    );
    drop(s);
}

/// A user other than root builds as itself, in a user namespace, and its
/// output is normalised as far as that user may: the walk once failed at
/// the first file, since removing a `security.` attribute takes a
/// privilege even where there is none to remove.
#[test]
fn a_user_other_than_root_builds_as_itself() {
    if !root_or_skip("a_user_other_than_root_builds_as_itself") {
        return; // root plays the other user
    }
    let s = Scratch::new("user-build");
    let w = s.path();
    for d in ["profiles", "recipes", "bin"] {
        fs::create_dir(w.join(d)).unwrap();
    }
    fs::write(
        w.join("profiles/p.kdl"),
        "profile \"p\" {\n    package \"tool\" \"= 1.0\"\n}\n",
    )
    .unwrap();
    fs::write(
        w.join("recipes/tool.kdl"),
        "recipe \"tool\" {\n    source \"script\" \"build.sh\"\n    version \"1.0\"\n}\n",
    )
    .unwrap();
    fs::write(
        w.join("recipes/build.sh"),
        "echo \"uid $(id -u)\" > \"$NEXUS_OUT/who\"\n",
    )
    .unwrap();
    // The binaries where the user can run them.
    for bin in [nip_bin(), nexus_bin()] {
        fs::copy(bin, w.join("bin").join(bin.file_name().unwrap())).unwrap();
    }
    fs::set_permissions(w, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    chown_tree(w, 65534);
    let as_nobody = |program: &str, args: &[&str]| -> Output {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "env"])
            .arg(format!("HOME={}", w.display()))
            .arg("NO_COLOR=1")
            .arg(w.join("bin").join(program))
            .arg("--store")
            .arg(w.join("store"))
            .args(args)
            .current_dir(w)
            .stdin(Stdio::null())
            .output()
            .expect("run setpriv")
    };
    let out = as_nobody("nip", &["init"]);
    assert!(out.status.success(), "{}", show(&out));
    let (profiles, recipes) = (w.join("profiles"), w.join("recipes"));
    let out = as_nobody(
        "nexus",
        &[
            "build",
            "--profile",
            "p",
            "--profiles",
            profiles.to_str().unwrap(),
            "--recipes",
            recipes.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", show(&out));
    let out = as_nobody("nip", &["cat", "tool/1.0", "who"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "uid 65534\n",
        "{}",
        show(&out)
    );
}

#[test]
fn a_recipe_outside_a_private_directory_cannot_build_from_it() {
    if !root_or_skip("a_recipe_outside_a_private_directory_cannot_build_from_it") {
        return;
    }
    // A third-party recipe, in a recipes directory root installed, names
    // `../../priv/pub`: priv is root's, 0700, and pub/secret is 0644. Its
    // script would copy the secret into its package, world-readable
    // through /Programs; a `dir` source would graft it as it is.
    let (s, p, r) = scratch_dirs(
        "profile \"bad\" {\n    package \"tool\" \"= 1\"\n}\n",
        &[(
            "tool",
            "recipe \"tool\" {\n    source \"script\" \"build.sh\" workdir=\"../../priv/pub\"\n    version \"1\"\n}\n",
        )],
    );
    let build_sh = "cp -r . \"$NEXUS_OUT/loot\"; chmod -R a+rX \"$NEXUS_OUT\"\n";
    fs::write(r.join("sub/build.sh"), build_sh).unwrap();
    let private = s.join("priv");
    let public = private.join("pub");
    fs::create_dir_all(&public).unwrap();
    nexus_integration_tests::fixtures::chmod(&private, 0o700);
    nexus_integration_tests::fixtures::chmod(&public, 0o755);
    fs::write(public.join("secret"), b"root's secret\n").unwrap();
    nexus_integration_tests::fixtures::chmod(&public.join("secret"), 0o644);
    let (private, public) = (
        fs::canonicalize(&private).unwrap(),
        fs::canonicalize(&public).unwrap(),
    );

    let store = Store::init();
    let before = store.state();
    let cache = nexus_integration_tests::debs::cache_dir();
    let flags = dirs_args(&p, &r, &cache);
    let mut args = vec!["--profile", "bad"];
    args.extend(flags.iter().map(String::as_str));
    let refused = |what: &str| {
        let out = build(&store, &args);
        assert_eq!(
            out.status.code(),
            Some(EXIT_ERROR),
            "{what}: {}",
            show(&out)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!(
                "{} lies below {},",
                public.display(),
                private.display()
            )) && stderr.contains("cannot search"),
            "{what}: {}",
            show(&out)
        );
        store.assert_unchanged(&before, what);
    };
    refused("a script working below another's private directory");
    fs::write(
        r.join("sub/tool.kdl"),
        "recipe \"tool\" {\n    source \"dir\" \"../../priv/pub\"\n    version \"1\"\n}\n",
    )
    .unwrap();
    refused("a dir source below another's private directory");

    // The same recipe inside priv (as the Rumk recipe in a repository
    // under /root): its author reaches pub already, and it builds.
    let inside = private.join("recipes");
    fs::create_dir_all(&inside).unwrap();
    fs::write(
        inside.join("tool.kdl"),
        "recipe \"tool\" {\n    source \"script\" \"build.sh\" workdir=\"../pub\"\n    version \"1\"\n}\n",
    )
    .unwrap();
    fs::write(inside.join("build.sh"), build_sh).unwrap();
    let flags = dirs_args(&p, &inside, &cache);
    let mut args = vec!["--profile", "bad"];
    args.extend(flags.iter().map(String::as_str));
    let out = build(&store, &args);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(
        store.cat("tool/1", "loot/secret").stdout,
        b"root's secret\n"
    );
    drop(s);
}

#[test]
fn a_planted_or_altered_cached_deb_is_refused() {
    use nexus_integration_tests::archive::{self, TarEntry};
    let real = fetch_debs(&["hello"]).remove(0);
    let name = real.file_name().unwrap().to_str().unwrap().to_string();
    let (s, p, r) = scratch_dirs(
        "profile \"bad\" {\n    package \"hello\" \"*\"\n}\n",
        &[(
            "hello",
            "recipe \"hello\" {\n    source \"debian\" \"hello\"\n}\n",
        )],
    );
    let build_with = |store: &Store, cache: &Path| {
        let args = dirs_args(&p, &r, cache);
        let mut all = vec!["--profile", "bad"];
        all.extend(args.iter().map(String::as_str));
        build(store, &all)
    };

    // A well-formed .deb of hello's very name and version, other bytes,
    // put into the cache by someone else: apt's index does not vouch for it.
    let planted = s.join("planted-cache");
    fs::create_dir(&planted).unwrap();
    let control = format!(
        "Package: hello\nVersion: {}\nArchitecture: {}\nMaintainer: nobody\nDescription: planted\n",
        deb_field(&real, "Version"),
        deb_field(&real, "Architecture")
    );
    let data = archive::tar(&[
        TarEntry::dir("./usr/"),
        TarEntry::dir("./usr/bin/"),
        TarEntry::file("./usr/bin/hello", b"#!/bin/sh\necho planted\n", 0o755),
    ]);
    fs::write(planted.join(&name), archive::deb(&control, &data)).unwrap();
    let store = Store::init();
    let before = store.state();
    let out = build_with(&store, &planted);
    assert_eq!(out.status.code(), Some(EXIT_ERROR), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&name) && stderr.contains("SHA256"),
        "{}",
        show(&out)
    );
    store.assert_unchanged(&before, "a build from a planted .deb");

    // Fetched by the build, it is pinned in the cache's lock file...
    let fresh = s.join("fresh-cache");
    let out = build_with(&store, &fresh);
    assert!(out.status.success(), "{}", show(&out));
    let lock = fs::read_to_string(fresh.join("debs.lock")).unwrap();
    assert!(
        lock.lines().any(|l| l.ends_with(&format!(" {name}"))),
        "{lock}"
    );
    // ...and once altered, refused on reuse.
    let cached = fresh.join(&name);
    let mut bytes = fs::read(&cached).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    fs::write(&cached, bytes).unwrap();
    let other = Store::init();
    let before = other.state();
    let out = build_with(&other, &fresh);
    assert_eq!(out.status.code(), Some(EXIT_ERROR), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pinned"),
        "{}",
        show(&out)
    );
    other.assert_unchanged(&before, "a build from an altered cached .deb");
}

/// A recipe without a version builds apt's candidate. An older version in
/// the cache, pinned by an earlier build (so its bytes pass) and touched
/// to be the cache's newest file by whoever can write the cache, was
/// built in its place (a rollback); it must not be.
#[test]
fn a_touched_older_cached_deb_is_not_built_for_apt_s_candidate() {
    let real = fetch_debs(&["hello"]).remove(0);
    let (s, p, r) = scratch_dirs(
        "profile \"bad\" {\n    package \"hello\" \"*\"\n}\n",
        &[(
            "hello",
            "recipe \"hello\" {\n    source \"debian\" \"hello\"\n}\n",
        )],
    );
    let cache = s.join("cache");
    fs::create_dir(&cache).unwrap();
    // The candidate cached already (apt's index vouches for it), unless
    // the test cache's copy is no longer the candidate: then it is fetched.
    let name = real.file_name().unwrap().to_str().unwrap();
    fs::copy(&real, cache.join(name)).unwrap();
    // An older version of hello, as a build fetched and pinned it then.
    let old = old_hello(&cache, &real);
    let old_name = old.file_name().unwrap().to_str().unwrap().to_string();
    let sum = Command::new("sha256sum").arg(&old).output().unwrap();
    assert!(sum.status.success(), "{}", show(&sum));
    let sha256 = String::from_utf8_lossy(&sum.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let size = fs::metadata(&old).unwrap().len();
    fs::write(
        cache.join("debs.lock"),
        format!("# nexus debs.lock v1: SHA256 SIZE FILE\n{sha256} {size} {old_name}\n"),
    )
    .unwrap();
    // The cache's writer makes it the newest file there.
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(later)
        .unwrap();

    let store = Store::init();
    let args = dirs_args(&p, &r, &cache);
    let mut all = vec!["--profile", "bad"];
    all.extend(args.iter().map(String::as_str));
    let out = build(&store, &all);
    assert!(out.status.success(), "{}", show(&out));
    let want: BTreeMap<String, bool> = [(format!("hello/{}", apt_candidate("hello")), true)].into();
    assert_eq!(live(&store), want, "apt's candidate, not the touched 0.1-1");
}

/// apt's candidate of `package` from its local index, as a build asks it,
/// as the store names it (epoch dropped).
fn apt_candidate(package: &str) -> String {
    let policy = Command::new("apt-cache")
        .args(["show", "--no-all-versions", package])
        .env("LC_ALL", "C")
        .output()
        .unwrap();
    assert!(policy.status.success(), "{}", show(&policy));
    let candidate = String::from_utf8_lossy(&policy.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Version: ").map(str::to_string))
        .expect("apt-cache show names the candidate's version");
    candidate
        .split_once(':')
        .map_or(candidate.clone(), |(_, v)| v.to_string())
}

/// A `.deb` of hello 0.1-1, older than any Debian has, for the
/// architecture of `real` (a real hello `.deb`), written into `dir` as apt
/// would name it: a version a build could have stored or cached before
/// Debian's current one.
fn old_hello(dir: &Path, real: &Path) -> PathBuf {
    use nexus_integration_tests::archive::{self, TarEntry};
    let arch = deb_field(real, "Architecture");
    let control = format!(
        "Package: hello\nVersion: 0.1-1\nArchitecture: {arch}\nMaintainer: nobody\nDescription: old\n"
    );
    let data = archive::tar(&[
        TarEntry::dir("./usr/"),
        TarEntry::dir("./usr/bin/"),
        TarEntry::file("./usr/bin/hello", b"#!/bin/sh\necho old\n", 0o755),
    ]);
    let old = dir.join(format!("hello_0.1-1_{arch}.deb"));
    fs::write(&old, archive::deb(&control, &data)).unwrap();
    old
}

/// A profile line without an exact version builds apt's candidate. Once
/// an older version was stored (hello 0.1-1 here, as a build made before
/// a security update stored it), every later build reused it, since it
/// fits `*`, and never took the candidate apt's index knew: it must not.
/// The candidate, once stored, is reused; so is a version a line pins
/// with `= V`, the highest stored version that fits when the constraint
/// excludes the candidate or it is older, and (apt knowing no such
/// package: a machine with only the cache) the highest stored version
/// that fits.
#[test]
fn a_stored_older_version_is_not_built_for_apt_s_candidate() {
    let real = fetch_debs(&["hello"]).remove(0);
    let candidate = format!("hello/{}", apt_candidate("hello"));
    let absent = "nexus-test-no-such-package";
    let (s, p, r) = scratch_dirs(
        "profile \"bad\" {\n    package \"hello\" \"*\"\n}\n",
        &[
            (
                "hello",
                "recipe \"hello\" {\n    source \"debian\" \"hello\"\n}\n",
            ),
            (
                absent,
                &format!("recipe \"{absent}\" {{\n    source \"debian\" \"{absent}\"\n}}\n"),
            ),
            // A virtual package: apt knows the name, with no candidate.
            (
                "awk",
                "recipe \"awk\" {\n    source \"debian\" \"awk\"\n}\n",
            ),
        ],
    );
    fs::write(
        p.join("virtual.kdl"),
        "profile \"virtual\" {\n    package \"awk\" \"*\"\n}\n",
    )
    .unwrap();
    fs::write(
        p.join("old.kdl"),
        "profile \"old\" {\n    package \"hello\" \"= 0.1-1\"\n}\n",
    )
    .unwrap();
    fs::write(
        p.join("below.kdl"),
        format!(
            "profile \"below\" {{\n    package \"hello\" \"< {}\"\n}}\n",
            apt_candidate("hello")
        ),
    )
    .unwrap();
    fs::write(
        p.join("offline.kdl"),
        format!("profile \"offline\" {{\n    package \"{absent}\" \"*\"\n}}\n"),
    )
    .unwrap();
    let build_json = |store: &Store, profile: &str, cache: &Path| {
        let args = dirs_args(&p, &r, cache);
        let flag = format!("--profile={profile}");
        let mut all = vec![flag.as_str(), "--json"];
        all.extend(args.iter().map(String::as_str));
        let out = build(store, &all);
        assert!(out.status.success(), "{}", show(&out));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        json["packages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let spec = p["spec"].as_str().unwrap().to_string();
                (spec, p["reused"].as_bool().unwrap())
            })
            .collect::<BTreeMap<String, bool>>()
    };

    let store = Store::init();
    let debs = s.join("debs");
    fs::create_dir(&debs).unwrap();
    let old = old_hello(&debs, &real);
    store.ok(["add", old.to_str().unwrap()]);
    assert_eq!(live(&store), [("hello/0.1-1".to_string(), true)].into());

    // apt's candidate is fetched and grafted, Current, not the stored one.
    let cache = nexus_integration_tests::debs::cache_dir();
    let built = build_json(&store, "bad", &cache);
    assert_eq!(
        built,
        [(candidate.clone(), false)].into(),
        "grafted, not reused"
    );
    assert_eq!(
        live(&store),
        [(candidate.clone(), true)].into(),
        "apt's candidate, not the stored 0.1-1"
    );
    // Stored now, the candidate itself is reused: nothing is fetched (the
    // cache given cannot even be created).
    let nowhere = Path::new("/proc/no-cache-here");
    let built = build_json(&store, "bad", nowhere);
    assert_eq!(built, [(candidate.clone(), true)].into());
    // A line naming the old version exactly still has it, from the store.
    let built = build_json(&store, "old", nowhere);
    assert_eq!(built, [("hello/0.1-1".to_string(), true)].into());
    assert_eq!(live(&store), [("hello/0.1-1".to_string(), true)].into());
    // A constraint that excludes apt's candidate: the stored version that
    // fits is reused, not the candidate fetched and refused.
    let built = build_json(&store, "below", nowhere);
    assert_eq!(built, [("hello/0.1-1".to_string(), true)].into());

    // A stored version newer than apt's candidate (apt pinning, a stale
    // mirror) is kept: a build never moves hello back to the candidate.
    let newer = s.join("newer");
    nexus_integration_tests::fixtures::write_file(&newer.join("bin/hello"), b"newer");
    store.ok([
        "add",
        newer.to_str().unwrap(),
        "--name",
        "hello",
        "--version",
        "999-1",
    ]);
    let built = build_json(&store, "bad", nowhere);
    assert_eq!(built, [("hello/999-1".to_string(), true)].into());

    // A package apt's index does not know (a machine with only the cache):
    // the highest stored version that fits is reused, as before.
    let tree = s.join("tree");
    for v in ["1", "2"] {
        nexus_integration_tests::fixtures::write_file(&tree.join(v).join("bin/x"), v.as_bytes());
        store.ok([
            "add",
            tree.join(v).to_str().unwrap(),
            "--name",
            absent,
            "--version",
            v,
        ]);
    }
    let built = build_json(&store, "offline", nowhere);
    assert_eq!(built, [(format!("{absent}/2"), true)].into());

    // A virtual package apt has no candidate of: refused while nothing of
    // it is stored, naming why; once stored, reused.
    let before = store.state();
    let mut all = vec!["--profile=virtual".to_string()];
    all.extend(dirs_args(&p, &r, &cache));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let out = build(&store, &all);
    assert_eq!(out.status.code(), Some(EXIT_ERROR), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("virtual package"),
        "{}",
        show(&out)
    );
    store.assert_unchanged(&before, "a build of a virtual package");
    nexus_integration_tests::fixtures::write_file(&tree.join("awk/bin/awk"), b"awk");
    store.ok([
        "add",
        tree.join("awk").to_str().unwrap(),
        "--name",
        "awk",
        "--version",
        "1.3.4",
    ]);
    let built = build_json(&store, "virtual", nowhere);
    assert_eq!(built, [("awk/1.3.4".to_string(), true)].into());
}

/// A package file recipe (`source "deb" FILE`) that names no version
/// builds the version the file holds: replaced by a newer one, the file
/// was passed over for the older version stored from it before (it fit
/// `*`), never read again.
#[test]
fn a_package_file_recipe_builds_the_file_s_version_not_a_stored_one() {
    let real = fetch_debs(&["hello"]).remove(0);
    let (s, p, r) = scratch_dirs(
        "profile \"bad\" {\n    package \"hello\" \"*\"\n}\n",
        &[(
            "hello",
            "recipe \"hello\" {\n    source \"deb\" \"hello.deb\"\n}\n",
        )],
    );
    let file = r.join("sub/hello.deb");
    fs::rename(old_hello(&r.join("sub"), &real), &file).unwrap();
    let store = Store::init();
    let args = dirs_args(&p, &r, Path::new("/proc/no-cache-here"));
    let mut all = vec!["--profile", "bad"];
    all.extend(args.iter().map(String::as_str));
    let out = build(&store, &all);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(live(&store), [("hello/0.1-1".to_string(), true)].into());

    fs::copy(&real, &file).unwrap();
    let out = build(&store, &all);
    assert!(out.status.success(), "{}", show(&out));
    let newer = format!("hello/{}", stored_version(&real));
    assert_eq!(
        live(&store),
        [(newer, true)].into(),
        "the file's version, not the stored 0.1-1"
    );
    drop(s);
}
