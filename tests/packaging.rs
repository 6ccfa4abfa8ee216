//! The Debian package (scripts/deb.sh, cargo-deb) and the host integration
//! it ships (dist/): what the package holds, that it installs with `dpkg -i`
//! and leaves nothing behind after `dpkg -P`, and that
//! /etc/profile.d/nexus.sh adds the Index to a login shell's paths only
//! where the Index is.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nexus_integration_tests::nexus::show;
use nexus_integration_tests::{Scratch, is_root, nexus_bin, nip_bin};

/// The repository.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository")
        .to_path_buf()
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", show(&out));
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Purges the package on drop, so that a failing test leaves the machine
/// as it found it.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg")
            .args(["-P", "nexus"])
            .stdout(Stdio::null())
            .status();
    }
}

fn installed_version() -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status} ${Version}", "nexus"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.starts_with("install ok installed").then_some(text)
}

#[test]
fn the_package_holds_everything_and_installs_and_purges_cleanly() {
    let scratch = Scratch::new("deb");
    // The package of the debug build the tests run against: same binaries,
    // no second (release) build.
    let target = nip_bin()
        .parent()
        .and_then(Path::parent)
        .expect("target/PROFILE/nip");
    let deb = ok(Command::new("bash")
        .arg(repo().join("scripts/deb.sh"))
        .args(["--profile", "dev", "--output"])
        .arg(scratch.path())
        .env("CARGO_TARGET_DIR", target))
    .trim()
    .to_string();
    let deb = PathBuf::from(deb);
    assert!(deb.is_file(), "scripts/deb.sh printed {}", deb.display());

    let field = |name: &str| ok(Command::new("dpkg-deb").arg("-f").arg(&deb).arg(name));
    assert_eq!(field("Package").trim(), "nexus");
    assert!(field("Depends").contains("libc6"), "{}", field("Depends"));
    let listing = ok(Command::new("dpkg-deb").arg("-c").arg(&deb));
    let files: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .collect();
    for expected in [
        "./usr/bin/nip",
        "./usr/bin/nexus",
        "./usr/share/man/man1/nip.1.gz",
        "./usr/share/man/man1/nip-add.1.gz",
        "./usr/share/man/man1/nip-config-show.1.gz",
        "./usr/share/man/man1/nexus.1.gz",
        "./usr/share/man/man1/nexus-mount.1.gz",
        "./usr/share/bash-completion/completions/nip",
        "./usr/share/bash-completion/completions/nexus",
        "./usr/share/zsh/vendor-completions/_nip",
        "./usr/share/fish/vendor_completions.d/nexus.fish",
        "./etc/nexus/nexus.kdl",
        "./etc/profile.d/nexus.sh",
        "./etc/ld.so.conf.d/zz-nexus.conf",
        "./usr/lib/systemd/system/nexus-mount@.service",
        "./usr/lib/systemd/system/nexus-virtiofs@.service",
        "./usr/lib/systemd/system/nexus-virtiofs@.socket",
        "./usr/share/qemu/vhost-user/50-nexus-virtiofsd.json",
        "./usr/share/man/man1/nexus-takeover.1.gz",
    ] {
        assert!(files.contains(&expected), "{expected} missing:\n{listing}");
    }
    // The mount helper and the vhost-user backend are nexus by other names.
    for link in [
        "./usr/sbin/mount.fuse.nexus",
        "./usr/libexec/nexus-virtiofsd",
    ] {
        assert!(
            listing
                .lines()
                .any(|l| l.starts_with('l') && l.contains(&format!("{link} -> ../bin/nexus"))),
            "{link} is not a link to ../bin/nexus:\n{listing}"
        );
    }
    assert!(
        !files.iter().any(|f| f.contains("nexus-docs")),
        "the generator is not shipped:\n{listing}"
    );

    // Unpacked anywhere, the binaries run and the man pages are roff.
    let root = scratch.join("root");
    ok(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    let version = ok(Command::new(root.join("usr/bin/nip")).arg("--version"));
    assert!(version.starts_with("nip "), "{version}");
    let page = ok(Command::new("zcat").arg(root.join("usr/share/man/man1/nexus-switch.1.gz")));
    assert!(
        page.contains(".TH") && page.contains("nip switch"),
        "{page}"
    );
    // The shipped configuration is valid and sets nothing.
    let shown = ok(Command::new(nexus_bin())
        .arg("--config")
        .arg(root.join("etc/nexus/nexus.kdl"))
        .args(["config", "show", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(v["config_file"]["found"], true);
    for (name, setting) in v["settings"].as_object().unwrap() {
        assert_ne!(
            setting["source"], "file",
            "{name} is set by the example: {shown}"
        );
    }

    // Installed for real, when that cannot clobber an admin's package.
    if !is_root() {
        eprintln!("skipped dpkg -i: needs root");
        return;
    }
    if let Some(existing) = installed_version() {
        eprintln!("skipped dpkg -i: a nexus package is installed already ({existing})");
        return;
    }
    let guard = Installed;
    ok(Command::new("dpkg").arg("-i").arg(&deb));
    let owned = ok(Command::new("dpkg").args(["-L", "nexus"]));
    for path in [
        "/usr/bin/nip",
        "/etc/profile.d/nexus.sh",
        "/usr/share/man/man1/nip.1.gz",
    ] {
        assert!(
            owned.lines().any(|l| l == path),
            "{path} not installed:\n{owned}"
        );
        assert!(Path::new(path).is_file(), "{path}");
    }
    let conffiles = ok(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "nexus"]));
    assert!(conffiles.contains("/etc/nexus/nexus.kdl"), "{conffiles}");
    let version = ok(Command::new("/usr/bin/nexus").arg("--version"));
    assert!(version.starts_with("nexus "), "{version}");
    // The helpers are nexus by other names, where mount(8) and QEMU look.
    assert_eq!(
        std::fs::canonicalize("/sbin/mount.fuse.nexus").unwrap(),
        Path::new("/usr/bin/nexus")
    );
    let caps = ok(Command::new("/usr/libexec/nexus-virtiofsd").arg("--print-capabilities"));
    let caps: serde_json::Value = serde_json::from_str(&caps).unwrap();
    assert_eq!(caps["type"], "fs");
    assert!(Path::new("/usr/lib/systemd/system/nexus-mount@.service").is_file());
    // The installed binary reads the installed configuration by default.
    let shown = ok(Command::new("/usr/bin/nip")
        .env_remove("NEXUS_CONFIG")
        .args(["config", "show", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(v["config_file"]["path"], "/etc/nexus/nexus.kdl");
    assert_eq!(v["config_file"]["found"], true);
    drop(guard);
    assert!(installed_version().is_none(), "dpkg -P left the package");
    for path in [
        "/usr/bin/nip",
        "/etc/nexus/nexus.kdl",
        "/etc/ld.so.conf.d/zz-nexus.conf",
    ] {
        assert!(!Path::new(path).exists(), "{path} survived dpkg -P");
    }
}

/// Sources dist/profile.d/nexus.sh (twice, as nested login shells do) in
/// `shell` and returns PATH, MANPATH and XDG_DATA_DIRS after it, and what
/// it wrote on stderr.
fn profile_paths(shell: &str, config: &Path, path: &str) -> (String, String, String, String) {
    let script = repo().join("dist/profile.d/nexus.sh");
    let probe = format!(
        ". '{0}'; . '{0}'; printf '%s\\n%s\\n%s\\n' \"$PATH\" \"${{MANPATH-unset}}\" \"${{XDG_DATA_DIRS-unset}}\"",
        script.display()
    );
    let out = Command::new(shell)
        .arg("-c")
        .arg(&probe)
        .env_clear()
        .env("PATH", path)
        .env("NEXUS_CONFIG", config)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {shell}: {e}"));
    assert!(out.status.success(), "{shell}: {}", show(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines().map(str::to_string);
    let mut next = || lines.next().unwrap_or_default();
    (
        next(),
        next(),
        next(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn profile_d_adds_the_configured_index_after_the_system_paths() {
    let scratch = Scratch::new("profile-d");
    let index = scratch.join("Index");
    for d in ["bin", "lib", "share/man/man1", "share/applications"] {
        std::fs::create_dir_all(index.join(d)).unwrap();
    }
    let config = scratch.join("nexus.kdl");
    std::fs::write(
        &config,
        format!("mount {{\n    index \"{}\"\n}}\n", index.display()),
    )
    .unwrap();
    // `nexus config get` must be found: the debug build first in PATH.
    let bin_dir = nip_bin().parent().unwrap().display().to_string();
    let base = format!("{bin_dir}:/usr/bin:/bin");
    for shell in ["sh", "bash"] {
        let (path, manpath, xdg, err) = profile_paths(shell, &config, &base);
        assert_eq!(path, format!("{base}:{}/bin", index.display()), "{shell}");
        assert_eq!(
            manpath,
            format!(":{}/share/man", index.display()),
            "{shell}"
        );
        assert_eq!(
            xdg,
            format!("/usr/local/share:/usr/share:{}/share", index.display()),
            "{shell}"
        );
        assert!(err.is_empty(), "{shell}: {err}");
    }

    // An Index that is not there (not mounted) changes nothing.
    std::fs::write(
        &config,
        format!(
            "mount {{\n    index \"{}\"\n}}\n",
            scratch.join("absent").display()
        ),
    )
    .unwrap();
    let (path, manpath, xdg, err) = profile_paths("sh", &config, &base);
    assert_eq!(
        (path.as_str(), manpath.as_str(), xdg.as_str()),
        (base.as_str(), "unset", "unset")
    );
    assert!(err.is_empty(), "{err}");

    // A broken configuration must not break logins: silently the default.
    std::fs::write(&config, "mount {\n").unwrap();
    let (path, _, _, err) = profile_paths("sh", &config, &base);
    assert!(err.is_empty(), "a login shell saw: {err}");
    let system_index = Path::new("/System/Index/bin");
    if !system_index.is_dir() {
        assert_eq!(path, base);
    }
    // Without nexus at all, the default Index, and no error either.
    let (path, _, _, err) = profile_paths("sh", &config, "/usr/bin:/bin");
    assert!(err.is_empty(), "{err}");
    if !system_index.is_dir() {
        assert_eq!(path, "/usr/bin:/bin");
    }
}
