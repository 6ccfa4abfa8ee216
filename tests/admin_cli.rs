//! The admin's everyday command line (issue 16): the configuration file
//! and its precedence, `--json` on every command a script reads (errors
//! included), the fixes to `nip add`, switch and rollback shared by nip
//! and nexus, and the generated man pages and completions.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use nexus_integration_tests::fixtures::app_tree as app;
use nexus_integration_tests::nexus::{is_mounted, show, wait_for};
use nexus_integration_tests::nip::{EXIT_ERROR, EXIT_OK, EXIT_USAGE};
use nexus_integration_tests::{Scratch, Store, nexus_bin, nip_bin, root_or_skip};
use serde_json::Value;

/// `BIN ARGS...` with only the environment given (no inherited NEXUS_*).
fn run(bin: &Path, env: &[(&str, &OsStr)], args: &[&OsStr]) -> Output {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env_remove("NEXUS_STORE")
        .env_remove("NEXUS_KEYS")
        .env_remove("NEXUS_CONFIG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("panicked"),
        "{}",
        show(&out)
    );
    out
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{}", show(out)))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `PREFIX ARGS` as one argument list.
fn prefixed<'a>(prefix: [&'a OsStr; 2], args: &[&'a OsStr]) -> Vec<&'a OsStr> {
    let mut all = prefix.to_vec();
    all.extend_from_slice(args);
    all
}

#[test]
fn settings_come_from_the_flag_then_the_environment_then_the_file() {
    let scratch = Scratch::new("config-precedence");
    let config = scratch.join("nexus.kdl");
    let file_store = scratch.join("file-store");
    std::fs::write(
        &config,
        format!(
            "// the admin's settings\nstore \"{}\"\nmount {{\n    threads 7\n}}\n",
            file_store.display()
        ),
    )
    .unwrap();
    let show_config = |env: &[(&str, &OsStr)], flags: &[&OsStr]| {
        let mut args = flags.to_vec();
        args.extend([
            OsStr::new("config"),
            OsStr::new("show"),
            OsStr::new("--json"),
        ]);
        let out = run(nip_bin(), env, &args);
        assert!(out.status.success(), "{}", show(&out));
        json(&out)
    };
    let with_file = [("NEXUS_CONFIG", config.as_os_str())];

    // The file.
    let v = show_config(&with_file, &[]);
    let store = &v["settings"]["store"];
    assert_eq!(store["value"], file_store.to_str().unwrap(), "{v:#}");
    assert_eq!(store["source"], "file");
    assert_eq!(store["from"], format!("{}:2", config.display()));
    assert_eq!(v["settings"]["mount.threads"]["value"], 7);
    assert_eq!(
        v["settings"]["mount.threads"]["from"],
        format!("{}:4", config.display())
    );
    assert_eq!(v["settings"]["mount.cache-mib"]["source"], "default");
    assert_eq!(v["config_file"]["found"], true);
    assert_eq!(v["config_file"]["source"], "env");

    // The environment beats the file.
    let env_store = scratch.join("env-store");
    let with_env = [
        ("NEXUS_CONFIG", config.as_os_str()),
        ("NEXUS_STORE", env_store.as_os_str()),
    ];
    let v = show_config(&with_env, &[]);
    assert_eq!(v["settings"]["store"]["value"], env_store.to_str().unwrap());
    assert_eq!(v["settings"]["store"]["source"], "env");
    assert_eq!(v["settings"]["store"]["from"], "NEXUS_STORE");
    // keys follows the store in force.
    assert_eq!(
        v["settings"]["keys"]["value"],
        env_store.join("keys").to_str().unwrap()
    );

    // The flag beats both.
    let flag_store = scratch.join("flag-store");
    let v = show_config(&with_env, &[OsStr::new("--store"), flag_store.as_os_str()]);
    assert_eq!(
        v["settings"]["store"]["value"],
        flag_store.to_str().unwrap()
    );
    assert_eq!(v["settings"]["store"]["source"], "flag");

    // nexus shows the same, being the same code.
    let out = run(
        nexus_bin(),
        &with_env,
        &[
            OsStr::new("config"),
            OsStr::new("show"),
            OsStr::new("--json"),
        ],
    );
    assert_eq!(json(&out), show_config(&with_env, &[]));

    // And the commands use what it shows: the file's store gets the package.
    let corpus = scratch.join("corpus");
    let hello = app(&corpus, "hello", "1.0");
    for args in [
        vec![OsStr::new("init")],
        vec![OsStr::new("add"), hello.as_os_str()],
    ] {
        let out = run(nip_bin(), &with_file, &args);
        assert!(out.status.success(), "{}", show(&out));
    }
    let listed = Store::at(&file_store).list();
    assert_eq!(listed.len(), 1, "the file's store holds the package");
    assert!(
        !env_store.exists(),
        "nothing touched the environment's store"
    );

    // `config get` prints one value, nothing for an unset one.
    let get = |name: &str| {
        let out = run(
            nip_bin(),
            &with_file,
            &[OsStr::new("config"), OsStr::new("get"), OsStr::new(name)],
        );
        assert!(out.status.success(), "{}", show(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(get("mount.threads"), "7\n");
    assert_eq!(get("mount.index"), "");
}

#[test]
fn a_bad_configuration_file_is_reported_at_its_line() {
    let scratch = Scratch::new("config-bad");
    let config = scratch.join("nexus.kdl");
    std::fs::write(
        &config,
        "store \"/srv/nexus\"\nmount {\n    threads 100\n}\n",
    )
    .unwrap();
    let env = [("NEXUS_CONFIG", config.as_os_str())];
    let out = run(nip_bin(), &env, &[OsStr::new("list")]);
    assert_eq!(out.status.code(), Some(EXIT_ERROR), "{}", show(&out));
    let err = stderr(&out);
    let place = format!("{}:3:13", config.display());
    assert!(err.contains(&place), "names file:line:column: {err}");
    assert!(err.contains("from 1 to 64"), "{err}");
    assert!(
        err.contains("threads 100") && err.contains('─'),
        "quotes and underlines the line: {err}"
    );
    assert!(out.stdout.is_empty(), "{}", show(&out));

    // With --json the error is also JSON, with the place.
    let out = run(nip_bin(), &env, &[OsStr::new("list"), OsStr::new("--json")]);
    assert_eq!(out.status.code(), Some(EXIT_ERROR), "{}", show(&out));
    let v = json(&out);
    assert_eq!(v["exit_code"], EXIT_ERROR);
    assert_eq!(v["location"]["line"], 3);
    assert_eq!(v["location"]["column"], 13);
    assert_eq!(v["location"]["file"], config.to_str().unwrap());

    // A named file that does not exist is an error; nexus reports the same.
    let missing = scratch.join("missing.kdl");
    let out = run(
        nexus_bin(),
        &[("NEXUS_CONFIG", missing.as_os_str())],
        &[OsStr::new("config"), OsStr::new("show")],
    );
    assert_eq!(out.status.code(), Some(EXIT_ERROR), "{}", show(&out));
    let err = stderr(&out);
    assert!(
        err.contains("NEXUS_CONFIG") && err.contains("No such file or directory"),
        "{err}"
    );
}

/// Runs `nip --store STORE ARGS --json` (or nexus), which must succeed,
/// and returns its JSON.
fn ok_json(bin: &Path, store: &Store, args: &[&OsStr]) -> Value {
    let mut all = vec![OsStr::new("--store"), store.path().as_os_str()];
    all.extend_from_slice(args);
    all.push(OsStr::new("--json"));
    let out = run(bin, &[("NEXUS_CONFIG", OsStr::new("/dev/null"))], &all);
    assert_eq!(out.status.code(), Some(EXIT_OK), "{}", show(&out));
    json(&out)
}

#[test]
fn every_command_a_script_reads_prints_json() {
    let scratch = Scratch::new("json-everywhere");
    let store = Store::at(scratch.join("store"));
    let s = OsStr::new;
    let v = ok_json(nip_bin(), &store, &[s("init")]);
    assert_eq!(v["store"], store.path().to_str().unwrap());
    let corpus = scratch.join("corpus");
    let (one, two) = (app(&corpus, "hello", "1.0"), app(&corpus, "hello", "2.0"));
    let v = ok_json(nip_bin(), &store, &[s("add"), one.as_os_str()]);
    assert_eq!(v["generation"], 1);
    let v = ok_json(nip_bin(), &store, &[s("add"), two.as_os_str()]);
    assert_eq!(v["added"][0], "hello/2.0");
    let v = ok_json(nip_bin(), &store, &[s("remove"), s("hello/1.0")]);
    assert_eq!(
        (v["generation"].as_i64(), &v["removed"][0]),
        (Some(3), &Value::from("hello/1.0"))
    );
    let v = ok_json(nip_bin(), &store, &[s("rollback")]);
    assert_eq!(v["generation"], 4);
    assert_eq!(v["restores"], 2);
    assert_eq!(v["changed"], true);
    let v = ok_json(nip_bin(), &store, &[s("switch"), s("3")]);
    assert_eq!(v["generation"], 5);
    assert_eq!(v["action"], "switch to 3");
    assert!(v["milliseconds"].as_f64().is_some(), "{v}");
    let v = ok_json(nip_bin(), &store, &[s("gc"), s("--keep"), s("10")]);
    assert!(v["bytes_freed"].is_u64(), "{v}");
    let v = ok_json(nip_bin(), &store, &[s("verify")]);
    assert_eq!(v["ok"], true);
    let v = ok_json(nip_bin(), &store, &[s("stats")]);
    assert!(v["stored_bytes"].as_u64().unwrap() > 0, "exact bytes: {v}");
    let dest = scratch.join("exported");
    let v = ok_json(
        nip_bin(),
        &store,
        &[s("export"), s("hello/2.0"), dest.as_os_str()],
    );
    assert_eq!(v["spec"], "hello/2.0");
    assert!(dest.join("bin/hello").is_file());

    // Signing: pack, snapshot, verify; nexus's switch and rollback.
    let keys = scratch.join("keys");
    let with_keys = [s("--keys"), keys.as_os_str()];
    let out = run(
        nip_bin(),
        &[],
        &prefixed(
            with_keys,
            &[
                s("--store"),
                store.path().as_os_str(),
                s("key"),
                s("generate"),
                s("admin"),
            ],
        ),
    );
    assert!(out.status.success(), "{}", show(&out));
    let npk = scratch.join("hello.npk");
    let v = ok_json(
        nip_bin(),
        &store,
        &prefixed(
            with_keys,
            &[
                s("pack"),
                s("hello/2.0"),
                s("--key"),
                s("admin"),
                s("-o"),
                npk.as_os_str(),
            ],
        ),
    );
    assert_eq!(v["signer"]["name"], "admin");
    assert_eq!(v["bytes"], std::fs::metadata(&npk).unwrap().len());
    let image = scratch.join("system.img");
    let v = ok_json(
        nexus_bin(),
        &store,
        &prefixed(
            with_keys,
            &[
                s("snapshot"),
                s("--key"),
                s("admin"),
                s("-o"),
                image.as_os_str(),
            ],
        ),
    );
    assert_eq!(v["generation"], 5);
    assert_eq!(v["bytes"], std::fs::metadata(&image).unwrap().len());
    assert_eq!(v["key"]["name"], "admin");
    let v = ok_json(
        nexus_bin(),
        &store,
        &prefixed(with_keys, &[s("verify"), image.as_os_str()]),
    );
    assert_eq!(v["ok"], true);
    let v = ok_json(nexus_bin(), &store, &[s("rollback")]);
    assert_eq!(v["generation"], 6);
    let v = ok_json(
        nexus_bin(),
        &store,
        &prefixed(with_keys, &[s("switch"), image.as_os_str()]),
    );
    assert_eq!(v["image"], image.to_str().unwrap());
    assert_eq!(v["changed"], true);
    // The listing commands were JSON already; they still are.
    for args in [
        vec![s("list")],
        vec![s("history")],
        vec![s("info"), s("hello")],
        vec![s("files"), s("hello/2.0")],
    ] {
        assert!(ok_json(nip_bin(), &store, &args).is_array());
    }
}

#[test]
fn errors_are_json_when_json_is_asked() {
    let scratch = Scratch::new("json-errors");
    let store = Store::init();
    let s = OsStr::new;
    let none = [("NEXUS_CONFIG", s("/dev/null"))];
    let at = [s("--store"), store.path().as_os_str()];
    // An ordinary error: exit 1, JSON on stdout, the text on stderr.
    let out = run(
        nip_bin(),
        &none,
        &prefixed(at, &[s("remove"), s("nothing/1"), s("--json")]),
    );
    assert_eq!(out.status.code(), Some(EXIT_ERROR), "{}", show(&out));
    let v = json(&out);
    assert_eq!(v["exit_code"], EXIT_ERROR);
    assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    assert!(v["causes"].is_array(), "{v}");
    assert!(stderr(&out).starts_with("nip: error: "), "{}", show(&out));
    // Without --json, stdout stays empty.
    let out = run(
        nip_bin(),
        &none,
        &prefixed(at, &[s("remove"), s("nothing/1")]),
    );
    assert_eq!(out.status.code(), Some(EXIT_ERROR));
    assert!(out.stdout.is_empty(), "{}", show(&out));
    // A store that does not exist, with its cause.
    let missing = scratch.join("no-store");
    let out = run(
        nip_bin(),
        &none,
        &[s("--store"), missing.as_os_str(), s("list"), s("--json")],
    );
    let v = json(&out);
    assert_eq!(v["exit_code"], EXIT_ERROR);
    assert!(
        v["error"].as_str().unwrap().contains("opening the store"),
        "{v}"
    );
    assert!(!v["causes"].as_array().unwrap().is_empty(), "{v}");
    // A usage error keeps exit 2.
    let out = run(
        nip_bin(),
        &none,
        &prefixed(at, &[s("switch"), s("not-a-generation"), s("--json")]),
    );
    assert_eq!(out.status.code(), Some(EXIT_USAGE), "{}", show(&out));
    assert_eq!(json(&out)["exit_code"], EXIT_USAGE);
    // nexus too.
    let out = run(
        nexus_bin(),
        &none,
        &prefixed(at, &[s("rollback"), s("--json")]),
    );
    assert_eq!(out.status.code(), Some(EXIT_ERROR), "{}", show(&out));
    assert!(
        json(&out)["error"].as_str().unwrap().contains("roll back"),
        "{}",
        show(&out)
    );
}

#[test]
fn an_app_directory_is_refused_with_the_versions_to_add() {
    let scratch = Scratch::new("add-app-dir");
    let store = Store::init();
    let src = scratch.join("src");
    app(&src, "hello", "1.0");
    app(&src, "hello", "2.0");
    let before = store.state();
    let app_dir = src.join("hello");
    let run = store.fails_with(&[EXIT_ERROR], [OsStr::new("add"), app_dir.as_os_str()]);
    let expected = format!(
        "{} looks like an App directory holding versions 1.0, 2.0: add {} {}",
        app_dir.display(),
        app_dir.join("1.0").display(),
        app_dir.join("2.0").display()
    );
    assert!(run.stderr.contains(&expected), "{run}");
    store.assert_unchanged(&before, "after adding an App directory");
    // What it suggests works, and so does naming it explicitly.
    store.ok([
        OsStr::new("add"),
        app_dir.join("1.0").as_os_str(),
        app_dir.join("2.0").as_os_str(),
    ]);
    assert!(store.listed("hello", "2.0").is_some());
    store.ok([
        OsStr::new("add"),
        app_dir.as_os_str(),
        OsStr::new("--name"),
        OsStr::new("both"),
        OsStr::new("--version"),
        OsStr::new("1"),
    ]);
    assert!(store.listed("both", "1").is_some());
}

#[test]
fn a_missing_path_is_no_such_file_or_directory() {
    let store = Store::init();
    let before = store.state();
    let run = store.fails_with(&[EXIT_ERROR], ["add", "/nonexistent/hello"]);
    assert!(
        run.stderr
            .contains("/nonexistent/hello: no such file or directory"),
        "{run}"
    );
    assert!(!run.stderr.contains("NAME/VERSION"), "{run}");
    store.assert_unchanged(&before, "after adding a missing path");
}

#[test]
fn nexus_switch_and_rollback_are_nip_s_under_another_name() {
    let scratch = Scratch::new("switch-alias");
    let corpus = scratch.join("corpus");
    let paths = [app(&corpus, "a", "1"), app(&corpus, "b", "1")];
    let stores = [Store::init(), Store::init()];
    for store in &stores {
        for p in &paths {
            store.ok([OsStr::new("add"), p.as_os_str()]);
        }
    }
    let text = |bin: &Path, store: &Store, args: &[&str]| {
        let mut a = vec![OsStr::new("--store"), store.path().as_os_str()];
        a.extend(args.iter().map(OsStr::new));
        let out = run(bin, &[("NEXUS_CONFIG", OsStr::new("/dev/null"))], &a);
        assert!(out.status.success(), "{}", show(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let rolled = text(nip_bin(), &stores[0], &["rollback"]);
    assert_eq!(rolled, text(nexus_bin(), &stores[1], &["rollback"]));
    assert_eq!(rolled, "generation 3: rollback to 1\n");
    // A switch reports its own duration; all else is the same.
    let without_time = |s: String| s.split(" (").next().unwrap().to_string();
    assert_eq!(
        without_time(text(nip_bin(), &stores[0], &["switch", "2"])),
        without_time(text(nexus_bin(), &stores[1], &["switch", "2"]))
    );
    let mut a: Value =
        serde_json::from_str(&text(nip_bin(), &stores[0], &["rollback", "--json"])).unwrap();
    let mut b: Value =
        serde_json::from_str(&text(nexus_bin(), &stores[1], &["rollback", "--json"])).unwrap();
    assert_eq!(a, b);
    a = serde_json::from_str(&text(nip_bin(), &stores[0], &["switch", "1", "--json"])).unwrap();
    b = serde_json::from_str(&text(nexus_bin(), &stores[1], &["switch", "1", "--json"])).unwrap();
    a["milliseconds"] = Value::Null;
    b["milliseconds"] = Value::Null;
    assert_eq!(a, b);
    // The same help, but for the program's name.
    for command in ["switch", "rollback"] {
        let help = |bin: &Path| text(bin, &stores[0], &[command, "--help"]);
        assert_eq!(
            help(nip_bin()),
            help(nexus_bin()).replace("Usage: nexus ", "Usage: nip ")
        );
    }
}

#[test]
fn the_help_says_what_is_true() {
    // Wrapped to the terminal's width: compare words, not lines.
    let help_of = |bin: &Path| {
        let out = run(bin, &[], &[OsStr::new("--help")]);
        let text = String::from_utf8(out.stdout).unwrap();
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    };
    let help = help_of(nexus_bin());
    assert!(help.contains("within about 100 ms"), "{help}");
    assert!(!help.contains("two seconds"), "{help}");
    assert!(help.contains("3 damaged"), "{help}");
    let help = help_of(nip_bin());
    assert!(help.contains("3 `verify` found damaged data"), "{help}");
}

#[test]
fn man_pages_and_completions_come_from_the_command_definitions() {
    let scratch = Scratch::new("docs");
    let out_dir = scratch.join("docs");
    let docs_bin = nip_bin().with_file_name("nexus-docs");
    let out = run(&docs_bin, &[], &[out_dir.as_os_str()]);
    assert!(out.status.success(), "{}", show(&out));
    for page in [
        "nip.1",
        "nip-add.1",
        "nip-config-show.1",
        "nexus.1",
        "nexus-mount.1",
    ] {
        let text = std::fs::read_to_string(out_dir.join("man/man1").join(page))
            .unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(
            text.starts_with(".ie") || text.contains(".TH"),
            "{page}: {text}"
        );
    }
    // Every subcommand has its page.
    let pages = std::fs::read_dir(out_dir.join("man/man1")).unwrap().count();
    assert!(pages >= 30, "{pages} man pages");
    for name in ["nip", "nexus"] {
        let script = out_dir.join("bash-completion/completions").join(name);
        let check = Command::new("bash")
            .arg("-n")
            .arg(&script)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{}: {}",
            script.display(),
            show(&check)
        );
        // Sourced, it completes the subcommands.
        let probe = format!(
            "source {}; COMP_WORDS=({name} con); COMP_CWORD=1; _{name} {name} con {name}; echo \"${{COMPREPLY[@]}}\"",
            script.display()
        );
        let out = Command::new("bash").arg("-c").arg(&probe).output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "config",
            "{}",
            show(&out)
        );
        assert!(
            out_dir
                .join("zsh/vendor-completions")
                .join(format!("_{name}"))
                .is_file()
        );
        assert!(
            out_dir
                .join("fish/vendor_completions.d")
                .join(format!("{name}.fish"))
                .is_file()
        );
    }
}

#[test]
fn nexus_mount_without_a_mountpoint_makes_the_configured_system_mount() {
    if !root_or_skip("nexus_mount_without_a_mountpoint_makes_the_configured_system_mount") {
        return;
    }
    let scratch = Scratch::new("config-mount");
    let store = Store::init();
    let corpus = scratch.join("corpus");
    store.ok([OsStr::new("add"), app(&corpus, "hello", "1.0").as_os_str()]);
    let (programs, index, other) = (
        scratch.join("Programs"),
        scratch.join("Index"),
        scratch.join("other"),
    );
    for d in [&programs, &index, &other] {
        std::fs::create_dir_all(d).unwrap();
    }
    let config = scratch.join("nexus.kdl");
    std::fs::write(
        &config,
        format!(
            "store \"{}\"\nmount {{\n    mountpoint \"{}\"\n    index \"{}\"\n    threads 2\n    log-file \"{}\"\n}}\n",
            store.path().display(),
            programs.display(),
            index.display(),
            scratch.join("mount.log").display()
        ),
    )
    .unwrap();
    /// Unmounts whatever the test left mounted.
    struct Cleanup(Vec<PathBuf>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for p in &self.0 {
                if is_mounted(p) {
                    let _ = Command::new("umount").arg("-l").arg(p).status();
                }
            }
        }
    }
    let _cleanup = Cleanup(vec![index.clone(), programs.clone(), other.clone()]);
    let env = [("NEXUS_CONFIG", config.as_os_str())];
    let out = run(nexus_bin(), &env, &[OsStr::new("mount")]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        is_mounted(&programs) && is_mounted(&index),
        "{}",
        show(&out)
    );
    assert!(programs.join("hello/1.0/bin/hello").is_file());
    assert!(
        std::fs::symlink_metadata(index.join("bin/hello")).is_ok(),
        "the Index serves hello"
    );
    assert!(
        std::fs::read_to_string(scratch.join("mount.log")).is_ok(),
        "the configured log file is the daemon's"
    );
    // Another mount does not take the system mount's Index.
    let out = run(nexus_bin(), &env, &[OsStr::new("mount"), other.as_os_str()]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(is_mounted(&other));
    for p in [&other, &programs] {
        let out = run(
            nexus_bin(),
            &env,
            &[OsStr::new("umount"), p.as_os_str(), OsStr::new("--json")],
        );
        assert!(out.status.success(), "{}", show(&out));
        assert_eq!(json(&out)["unmounted"], p.to_str().unwrap());
    }
    assert!(
        wait_for(std::time::Duration::from_secs(10), || !is_mounted(&index)),
        "the Index goes with its mount"
    );
}
