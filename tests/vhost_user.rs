//! `nexus serve --virtio-fs` as a conventional vhost-user backend (QEMU's
//! vhost-user.rst, "Backend program conventions"): it serves on an
//! inherited listening socket (`--fd N`), its socket file is 0600 whatever
//! the umask (whoever connects reads the whole store, past every file's
//! permissions) or the mode and group asked for, and `--print-capabilities`
//! prints JSON that matches the shipped QEMU description
//! (dist/qemu/50-nexus-virtiofsd.json), also when called by that file's
//! binary name. Socket activation is in tests/systemd.rs.

use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nexus_integration_tests::fixtures::{Scratch, write_file};
use nexus_integration_tests::nexus::{show, vhost_user_features};
use nexus_integration_tests::{Store, nexus_bin, root_or_skip};

/// The repository.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository")
        .to_path_buf()
}

/// A store with one package.
fn store(scratch: &Scratch) -> Store {
    write_file(&scratch.join("a/bin/a"), b"a\n");
    let store = Store::init();
    store.add_dir(&scratch.join("a"), "a", "1");
    store
}

/// A backend this test started; killed on drop.
struct Backend(Child);

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Backend {
    /// Waits for the line scripts wait for.
    fn wait_serving(&mut self) -> String {
        let stderr = self.0.stderr.take().expect("piped stderr");
        let mut line = String::new();
        BufReader::new(stderr).read_line(&mut line).unwrap();
        assert!(line.contains("serving generation 1"), "{line}");
        line
    }
}

/// `nexus --store STORE serve ARGS`, stderr piped, with `setup` run in the
/// child before exec.
fn serve(
    store: &Path,
    args: &[&OsStr],
    setup: impl FnMut() -> std::io::Result<()> + Send + Sync + 'static,
) -> Backend {
    let mut cmd = Command::new(nexus_bin());
    cmd.arg("--store")
        .arg(store)
        .arg("serve")
        .args(args)
        .env("NEXUS_CONFIG", "/dev/null")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: `setup` only makes async-signal-safe calls (umask, dup2).
    unsafe { cmd.pre_exec(setup) };
    Backend(cmd.spawn().expect("nexus serve starts"))
}

#[test]
fn an_inherited_socket_is_served() {
    let scratch = Scratch::new("vhost-fd");
    let store = store(&scratch);
    let path = scratch.join("inherited.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let fd: RawFd = listener.as_raw_fd();
    let mut backend = serve(
        store.path(),
        &[OsStr::new("--fd"), OsStr::new("7")],
        move || {
            // SAFETY: dup2 of a descriptor this process owns onto 7 (not
            // close-on-exec).
            if unsafe { libc::dup2(fd, 7) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        },
    );
    drop(listener);
    let line = backend.wait_serving();
    assert!(line.contains(path.to_str().unwrap()), "{line}");
    let mut guest = UnixStream::connect(&path).unwrap();
    assert_ne!(vhost_user_features(&mut guest) & (1 << 30), 0);

    // Not a listening socket: refused with a clear error.
    let out = Command::new(nexus_bin())
        .arg("--store")
        .arg(store.path())
        .args(["serve", "--fd", "0"])
        .env("NEXUS_CONFIG", "/dev/null")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--fd 0"),
        "{}",
        show(&out)
    );
}

/// Whoever connects to the socket reads every file of the store, past its
/// permissions: with a permissive umask the socket was world-connectable.
/// It is 0600 unless asked otherwise, and a user other than root cannot
/// connect.
#[test]
fn the_socket_is_private_whatever_the_umask() {
    if !root_or_skip("the_socket_is_private_whatever_the_umask") {
        return;
    }
    let scratch = Scratch::new("vhost-mode");
    let store = store(&scratch);
    fs::set_permissions(scratch.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let path = scratch.join("guests.sock");
    let mut backend = serve(
        store.path(),
        &[OsStr::new("--virtio-fs"), path.as_os_str()],
        || {
            // SAFETY: umask has no preconditions.
            unsafe { libc::umask(0) };
            Ok(())
        },
    );
    backend.wait_serving();
    let meta = fs::symlink_metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let probe = format!(
        "import socket; s = socket.socket(socket.AF_UNIX); s.connect({:?})",
        path.to_str().unwrap()
    );
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(["/usr/bin/python3", "-c", &probe])
        .output()
        .unwrap();
    assert!(!out.status.success(), "nobody connected to the backend");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{}",
        show(&out)
    );
    drop(backend);

    // --socket-mode and --socket-group: QEMU's group may connect.
    let path = scratch.join("group.sock");
    let mut backend = serve(
        store.path(),
        &[
            OsStr::new("--socket-path"),
            path.as_os_str(),
            OsStr::new("--socket-group"),
            OsStr::new("nogroup"),
            OsStr::new("--socket-mode"),
            OsStr::new("0660"),
        ],
        || Ok(()),
    );
    backend.wait_serving();
    let meta = fs::symlink_metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    let nogroup = fs::read_to_string("/etc/group")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("nogroup:x:"))
        .and_then(|rest| rest.split(':').next()?.parse::<u32>().ok())
        .expect("nogroup in /etc/group");
    assert_eq!(meta.gid(), nogroup);
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            &format!("--regid={nogroup}"),
            "--clear-groups",
            "--",
        ])
        .args([
            "/usr/bin/python3",
            "-c",
            &format!(
                "import socket; s = socket.socket(socket.AF_UNIX); s.connect({:?})",
                path.to_str().unwrap()
            ),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the group cannot connect: {}",
        show(&out)
    );
    drop(backend);

    // A file in the socket's place is not replaced.
    let file = scratch.join("precious");
    fs::write(&file, b"keep").unwrap();
    let out = Command::new(nexus_bin())
        .arg("--store")
        .arg(store.path())
        .args(["serve", "--virtio-fs"])
        .arg(&file)
        .env("NEXUS_CONFIG", "/dev/null")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", show(&out));
    assert_eq!(fs::read(&file).unwrap(), b"keep");
}

#[test]
fn capabilities_match_the_qemu_description() {
    let description: serde_json::Value = serde_json::from_slice(
        &fs::read(repo().join("dist/qemu/50-nexus-virtiofsd.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(description["type"], "fs");
    assert_eq!(description["binary"], "/usr/libexec/nexus-virtiofsd");
    assert!(
        description["description"]
            .as_str()
            .is_some_and(|d| !d.is_empty())
    );

    let scratch = Scratch::new("vhost-caps");
    // Called by the description's binary name, as QEMU and libvirt call it
    // (without `serve`), and as `nexus serve`; no store or configuration is
    // read for it.
    let named = scratch.join("nexus-virtiofsd");
    std::os::unix::fs::symlink(nexus_bin(), &named).unwrap();
    for mut cmd in [Command::new(&named), {
        let mut c = Command::new(nexus_bin());
        c.arg("serve");
        c
    }] {
        let out = cmd
            .arg("--print-capabilities")
            .env("NEXUS_CONFIG", "/nonexistent/nexus.kdl")
            .env("NEXUS_STORE", "/nonexistent")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", show(&out));
        let caps: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", show(&out)));
        assert_eq!(caps["type"], description["type"], "{caps}");
        if let Some(features) = caps.get("features") {
            assert!(features.is_array(), "{caps}");
        }
    }
    // The backend name takes the conventional options: --socket-path.
    let out = Command::new(&named).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for option in [
        "--socket-path",
        "--fd",
        "--print-capabilities",
        "--socket-group",
    ] {
        assert!(help.contains(option), "{option} missing from:\n{help}");
    }
}
