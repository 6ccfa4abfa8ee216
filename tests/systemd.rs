//! The shipped systemd units (dist/systemd), run as systemd would run
//! them on a machine whose PID 1 is not systemd: each unit's `ExecStart=`
//! line is read from the unit file (so a broken unit breaks the test), its
//! specifiers filled in, and run with a fake `NOTIFY_SOCKET` (a datagram
//! socket this test reads, with the sender's credentials) and, for the
//! socket-activated backend, the listening socket passed as systemd does
//! (`LISTEN_FDS`).
//!
//! Checked: `READY=1` once the mount is live, sent by the process systemd
//! started (no fork); `STATUS=` naming the generation, and again after a
//! switch; the mount's `/dev/fuse` descriptor in the file descriptor store;
//! `STOPPING=1` on SIGTERM; the journal's format when stderr is the journal
//! stream; a daemon killed and restarted with the stored descriptor resumes
//! the live mount, answering a read that waited meanwhile; the log file is
//! reopened on SIGHUP.

use std::ffi::OsString;
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nexus_integration_tests::fixtures::{Scratch, write_file};
use nexus_integration_tests::nexus::{alive, is_mounted, vhost_user_features, wait_for};
use nexus_integration_tests::{Store, nexus_bin, root_or_skip};

/// The repository.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository")
        .to_path_buf()
}

/// The FUSE tests mount file systems: root only (as CI runs them).
/// The value of `key=` in `section` of a unit file.
fn unit_value(unit: &str, section: &str, key: &str) -> String {
    let text = fs::read_to_string(repo().join("dist/systemd").join(unit))
        .unwrap_or_else(|e| panic!("dist/systemd/{unit}: {e}"));
    let mut current = String::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            current = line.to_string();
        } else if current == format!("[{section}]")
            && let Some(value) = line.strip_prefix(&format!("{key}="))
        {
            return value.to_string();
        }
    }
    panic!("{unit} has no {key}= in [{section}]");
}

/// A unit's `ExecStart=` as a command line: the words of the line, with
/// `/usr/bin/nexus` replaced by the binary under test and the specifiers
/// `%f` (the instance as a path) and `%i` filled in.
fn exec_start(unit: &str, instance: &str, path: &Path) -> Vec<OsString> {
    let line = unit_value(unit, "Service", "ExecStart");
    line.split_whitespace()
        .map(|word| match word {
            "/usr/bin/nexus" => nexus_bin().as_os_str().to_owned(),
            "%f" => path.as_os_str().to_owned(),
            "%i" => instance.into(),
            other => {
                assert!(!other.contains('%'), "unexpected specifier in {line}");
                other.into()
            }
        })
        .collect()
}

/// One notification: its text, the sender's pid, and the descriptors it
/// carried.
struct Note {
    text: String,
    pid: i32,
    fds: Vec<OwnedFd>,
}

impl Note {
    fn has(&self, line: &str) -> bool {
        self.text.lines().any(|l| l == line)
    }

    fn value(&self, key: &str) -> Option<&str> {
        self.text
            .lines()
            .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
    }
}

/// A fake `NOTIFY_SOCKET`.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    fn new(dir: &Path) -> NotifySocket {
        let path = dir.join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        let on: libc::c_int = 1;
        // SAFETY: setsockopt on our socket with a valid int option.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PASSCRED,
                (&on as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_PASSCRED");
        NotifySocket { socket, path }
    }

    /// The next notification within `timeout`.
    fn next(&self, timeout: Duration) -> Option<Note> {
        self.socket.set_read_timeout(Some(timeout)).unwrap();
        let mut data = vec![0u8; 4096];
        let mut control = vec![0u8; 512];
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr().cast(),
            iov_len: data.len(),
        };
        // SAFETY: a zeroed msghdr pointing at our buffers.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = control.len();
        // SAFETY: recvmsg into the buffers described above.
        let n = unsafe { libc::recvmsg(self.socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            return None;
        }
        let mut note = Note {
            text: String::from_utf8_lossy(&data[..n as usize]).into_owned(),
            pid: 0,
            fds: Vec::new(),
        };
        // SAFETY: walking the control messages recvmsg filled in.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                let body = libc::CMSG_DATA(cmsg);
                let len = (*cmsg).cmsg_len - libc::CMSG_LEN(0) as usize;
                match ((*cmsg).cmsg_level, (*cmsg).cmsg_type) {
                    (libc::SOL_SOCKET, libc::SCM_RIGHTS) => {
                        for i in 0..len / size_of::<RawFd>() {
                            let fd = std::ptr::read_unaligned(body.cast::<RawFd>().add(i));
                            note.fds.push(OwnedFd::from_raw_fd(fd));
                        }
                    }
                    (libc::SOL_SOCKET, libc::SCM_CREDENTIALS) => {
                        let cred = std::ptr::read_unaligned(body.cast::<libc::ucred>());
                        note.pid = cred.pid;
                    }
                    _ => {}
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        Some(note)
    }

    /// Reads notifications until one satisfies `wanted`, within `timeout`;
    /// returns it and everything before it.
    fn until(
        &self,
        timeout: Duration,
        what: &str,
        wanted: impl Fn(&Note) -> bool,
    ) -> (Note, Vec<Note>) {
        let deadline = Instant::now() + timeout;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let note = self
                .next(left.max(Duration::from_millis(1)))
                .unwrap_or_else(|| {
                    let seen: Vec<&str> = before.iter().map(|n: &Note| n.text.as_str()).collect();
                    panic!("no {what} within {timeout:?}; got: {seen:?}")
                });
            if wanted(&note) {
                return (note, before);
            }
            before.push(note);
        }
    }
}

/// A daemon started as systemd would; killed on drop, its mount detached.
struct Service {
    child: Child,
    mountpoint: Option<PathBuf>,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(point) = &self.mountpoint
            && is_mounted(point)
        {
            let _ = Command::new("umount").arg("-l").arg(point).status();
        }
    }
}

/// Runs `argv` as systemd runs a service: `NOTIFY_SOCKET`, `FDSTORE`, the store in the
/// environment, stdout and stderr to `log` (and `JOURNAL_STREAM` naming it,
/// as systemd names the journal stream), and `passed` as descriptors from 3
/// on with `LISTEN_FDS`, `LISTEN_PID` (the service's own pid, set by the
/// shell that execs it) and `LISTEN_FDNAMES`.
fn start_service(
    argv: &[OsString],
    notify: &NotifySocket,
    store: &Path,
    log: &Path,
    passed: &[(RawFd, &str)],
) -> Child {
    let out = fs::File::create(log).unwrap();
    let meta = out.metadata().unwrap();
    let mut cmd = if passed.is_empty() {
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        cmd
    } else {
        let names: Vec<&str> = passed.iter().map(|(_, n)| *n).collect();
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("LISTEN_PID=$$ exec \"$0\" \"$@\"")
            .args(argv)
            .env("LISTEN_FDS", passed.len().to_string())
            .env("LISTEN_FDNAMES", names.join(":"));
        let fds: Vec<RawFd> = passed.iter().map(|(fd, _)| *fd).collect();
        // SAFETY: between fork and exec, only dup2/fcntl on descriptors
        // this process owns (async-signal-safe calls).
        unsafe {
            cmd.pre_exec(move || {
                // Out of the way first, in case one is already at 3..
                let high: Vec<RawFd> = fds
                    .iter()
                    .map(|&fd| libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100))
                    .collect();
                for (i, fd) in high.into_iter().enumerate() {
                    if fd < 0 || libc::dup2(fd, 3 + i as RawFd) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        cmd
    };
    // As systemd sets it for a unit with FileDescriptorStoreMax= (the
    // mount unit's value; the daemon stores its descriptors only then).
    let store_max = unit_value("nexus-mount@.service", "Service", "FileDescriptorStoreMax");
    cmd.env("FDSTORE", store_max)
        .env("NOTIFY_SOCKET", &notify.path)
        .env("NEXUS_STORE", store)
        .env("NEXUS_CONFIG", "/dev/null")
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    cmd.spawn().expect("the service starts")
}

/// `generation N` in a STATUS= line.
fn generation_in(status: &str) -> Option<i64> {
    let rest = status.split("generation ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// SIGTERM to `child`.
fn terminate(child: &Child) {
    // SAFETY: plain kill(2) of a process this test started.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
}

/// What each mount test starts from: a store holding App `a` (the
/// directory `b` is ready to be added as a second generation, `extra`
/// files join `a`), a mount point named `Programs`, and a fake
/// `NOTIFY_SOCKET`.
struct Fixture {
    scratch: Scratch,
    store: Store,
    mnt: PathBuf,
    notify: NotifySocket,
}

impl Fixture {
    fn new(label: &str, extra: &[(&str, &[u8])]) -> Fixture {
        let scratch = Scratch::new(label);
        write_file(&scratch.join("a/bin/a"), b"first\n");
        write_file(&scratch.join("b/bin/b"), b"second\n");
        for (rel, data) in extra {
            write_file(&scratch.join("a").join(rel), data);
        }
        let store = Store::init();
        store.add_dir(&scratch.join("a"), "a", "1");
        let mnt = scratch.join("Programs");
        fs::create_dir_all(&mnt).unwrap();
        let mnt = fs::canonicalize(mnt).unwrap();
        let notify = NotifySocket::new(scratch.path());
        Fixture {
            scratch,
            store,
            mnt,
            notify,
        }
    }
}

#[test]
fn the_mount_unit_notifies_readiness_status_and_stopping() {
    if !root_or_skip("the_mount_unit_notifies") {
        return;
    }
    let Fixture {
        scratch,
        store,
        mnt,
        notify,
    } = Fixture::new("systemd-mount", &[]);
    let argv = exec_start("nexus-mount@.service", "Programs", &mnt);
    let log = scratch.join("journal");
    let child = start_service(&argv, &notify, store.path(), &log, &[]);
    let mut service = Service {
        child,
        mountpoint: Some(mnt.clone()),
    };

    let (ready, before) = notify.until(Duration::from_secs(30), "READY=1", |n| n.has("READY=1"));
    assert_eq!(
        ready.pid,
        service.child.id() as i32,
        "READY=1 must come from the process systemd started (no fork)"
    );
    assert!(is_mounted(&mnt), "READY=1 before the mount is live");
    assert_eq!(fs::read(mnt.join("a/1/bin/a")).unwrap(), b"first\n");
    let status = ready.value("STATUS").expect("STATUS= with READY=1");
    assert_eq!(generation_in(status), Some(1), "{status}");
    assert!(status.contains(mnt.to_str().unwrap()), "{status}");
    let stored: Vec<&Note> = before.iter().filter(|n| n.has("FDSTORE=1")).collect();
    assert_eq!(stored.len(), 1, "one descriptor stored (no index)");
    assert_eq!(stored[0].value("FDNAME"), Some("nexus-fuse"));
    assert_eq!(stored[0].fds.len(), 1, "FDSTORE=1 carries the descriptor");
    let target = fs::read_link(format!("/proc/self/fd/{}", stored[0].fds[0].as_raw_fd())).unwrap();
    assert_eq!(target, Path::new("/dev/fuse"));

    // A switch: STATUS= follows.
    store.add_dir(&scratch.join("b"), "b", "1");
    let (moved, _) = notify.until(Duration::from_secs(5), "a STATUS= of generation 2", |n| {
        n.value("STATUS").and_then(generation_in) == Some(2)
    });
    assert!(!moved.has("READY=1"));

    // stderr is the journal stream: lines carry sd-daemon priorities, no
    // time stamps.
    let journal = fs::read_to_string(&log).unwrap();
    let mounted = journal
        .lines()
        .find(|l| l.contains("mounted generation 1"))
        .unwrap_or_else(|| panic!("no `mounted` line in the journal:\n{journal}"));
    assert!(mounted.starts_with("<6>"), "{mounted}");

    terminate(&service.child);
    notify.until(Duration::from_secs(10), "STOPPING=1", |n| {
        n.has("STOPPING=1")
    });
    let status = service.child.wait().unwrap();
    assert!(status.success(), "the daemon exited with {status}");
    assert!(!is_mounted(&mnt), "still mounted after SIGTERM");
    service.mountpoint = None;
}

#[test]
fn a_daemon_restarted_with_its_stored_descriptor_resumes_the_live_mount() {
    if !root_or_skip("a_daemon_restarted_with_its_stored_descriptor") {
        return;
    }
    let Fixture {
        scratch,
        store,
        mnt,
        notify,
    } = Fixture::new(
        "systemd-fdstore",
        &[("share/late", b"read only after the crash\n")],
    );
    let argv = exec_start("nexus-mount@.service", "Programs", &mnt);
    let first = start_service(&argv, &notify, store.path(), &scratch.join("log1"), &[]);
    let mut first = Service {
        child: first,
        mountpoint: Some(mnt.clone()),
    };
    let (_, before) = notify.until(Duration::from_secs(30), "READY=1", |n| n.has("READY=1"));
    let mut stored = before
        .into_iter()
        .find(|n| n.has("FDSTORE=1"))
        .expect("the descriptor is stored");
    let fuse = stored.fds.pop().expect("FDSTORE=1 carries it");
    assert_eq!(fs::read(mnt.join("a/1/bin/a")).unwrap(), b"first\n");

    // The daemon dies; systemd (here: this test) keeps the connection, so
    // the mount stays and a read waits instead of failing.
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    assert!(is_mounted(&mnt), "the mount went with the daemon");
    let late = mnt.join("a/1/share/late");
    let waiting = std::thread::spawn(move || fs::read(late));
    std::thread::sleep(Duration::from_millis(300));
    assert!(!waiting.is_finished(), "a read was answered with no daemon");

    // Restart=on-failure: the same ExecStart, with the stored descriptor.
    let second = start_service(
        &argv,
        &notify,
        store.path(),
        &scratch.join("log2"),
        &[(fuse.as_raw_fd(), "nexus-fuse")],
    );
    first.mountpoint = None;
    let mut second = Service {
        child: second,
        mountpoint: Some(mnt.clone()),
    };
    let (ready, _) = notify.until(Duration::from_secs(30), "READY=1", |n| n.has("READY=1"));
    assert_eq!(ready.pid, second.child.id() as i32);
    let read = waiting.join().unwrap();
    assert_eq!(
        read.expect("the waiting read"),
        b"read only after the crash\n",
        "{}",
        fs::read_to_string(scratch.join("log2")).unwrap_or_default()
    );
    let log = fs::read_to_string(scratch.join("log2")).unwrap();
    assert!(log.contains("took over"), "{log}");
    assert_eq!(fs::read(mnt.join("a/1/bin/a")).unwrap(), b"first\n");
    drop(fuse);
    terminate(&second.child);
    assert!(second.child.wait().unwrap().success());
    assert!(
        wait_for(Duration::from_secs(5), || !is_mounted(&mnt)),
        "still mounted after SIGTERM"
    );
    second.mountpoint = None;
}

/// The descriptors the daemon stored (`FDSTORE=1`) among `notes`, with
/// their names, sorted by name.
fn stored_descriptors(notes: Vec<Note>) -> Vec<(OwnedFd, String)> {
    let mut stored: Vec<(OwnedFd, String)> = notes
        .into_iter()
        .filter(|n| n.has("FDSTORE=1"))
        .map(|mut n| {
            let name = n.value("FDNAME").unwrap().to_string();
            (n.fds.pop().expect("a descriptor"), name)
        })
        .collect();
    stored.sort_by(|a, b| a.1.cmp(&b.1));
    stored
}

/// `stored` as `start_service` passes descriptors.
fn as_passed(stored: &[(OwnedFd, String)]) -> Vec<(RawFd, &str)> {
    stored
        .iter()
        .map(|(fd, name)| (fd.as_raw_fd(), name.as_str()))
        .collect()
}

/// The mount id (mountinfo's first field) of what is mounted at `point`.
fn mount_id(point: &Path) -> Option<u64> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .rev()
        .filter(|l| l.split(' ').nth(4) == point.to_str())
        .find_map(|l| l.split(' ').next()?.parse().ok())
}

/// A restart from the descriptor store keeps the main mount (the same
/// mount, never unmounted) and replaces the Index's, whose numbers died
/// with the old daemon.
#[test]
fn a_restart_from_the_descriptor_store_remounts_only_the_index() {
    if !root_or_skip("a_restart_from_the_descriptor_store") {
        return;
    }
    let Fixture {
        scratch,
        store,
        mnt,
        notify,
    } = Fixture::new("systemd-index", &[]);
    let index = scratch.join("Index");
    fs::create_dir_all(&index).unwrap();
    let index = fs::canonicalize(index).unwrap();
    let argv: Vec<OsString> = vec![
        nexus_bin().into(),
        "mount".into(),
        mnt.clone().into(),
        "--index".into(),
        index.clone().into(),
    ];
    let first = start_service(&argv, &notify, store.path(), &scratch.join("log1"), &[]);
    let mut first = Service {
        child: first,
        mountpoint: Some(mnt.clone()),
    };
    let _index_guard = Service {
        child: Command::new("true").spawn().unwrap(),
        mountpoint: Some(index.clone()),
    };
    let (_, before) = notify.until(Duration::from_secs(30), "READY=1", |n| n.has("READY=1"));
    let stored = stored_descriptors(before);
    let names: Vec<&str> = stored.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names, ["nexus-fuse", "nexus-index"]);
    let link = mnt.join("a/Current/bin/a");
    assert_eq!(fs::read_link(index.join("bin/a")).unwrap(), link);
    let main_id = mount_id(&mnt).unwrap();

    first.child.kill().unwrap();
    first.child.wait().unwrap();
    first.mountpoint = None;
    let passed = as_passed(&stored);
    let second = start_service(&argv, &notify, store.path(), &scratch.join("log2"), &passed);
    let mut second = Service {
        child: second,
        mountpoint: Some(mnt.clone()),
    };
    notify.until(Duration::from_secs(30), "READY=1", |n| n.has("READY=1"));
    drop(stored);
    assert_eq!(mount_id(&mnt), Some(main_id), "the main mount was replaced");
    // (Mount ids are reused: the log says the index was replaced.)
    let log = fs::read_to_string(scratch.join("log2")).unwrap();
    assert!(log.contains("mounting the index on"), "{log}");
    assert!(mount_id(&index).is_some(), "no index mounted");
    assert_eq!(fs::read_link(index.join("bin/a")).unwrap(), link);
    assert_eq!(fs::read(index.join("bin/a")).unwrap(), b"first\n");
    terminate(&second.child);
    assert!(second.child.wait().unwrap().success());
    assert!(!is_mounted(&mnt) && !is_mounted(&index), "still mounted");
    second.mountpoint = None;
}

/// The mounts at `point`, bottom first: (mount id, file system type).
fn stack_at(point: &Path) -> Vec<(u64, String)> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4) == point.to_str())
        .filter_map(|l| {
            let id = l.split(' ').next()?.parse().ok()?;
            let kind = l.split(" - ").nth(1)?.split(' ').next()?.to_string();
            Some((id, kind))
        })
        .collect()
}

/// Detaches every layer at `point` (a kernel view over a FUSE mount).
struct Stack(PathBuf);

impl Drop for Stack {
    fn drop(&mut self) {
        for _ in 0..4 {
            if is_mounted(&self.0) {
                let _ = Command::new("umount").arg("-l").arg(&self.0).status();
            }
        }
    }
}

/// With the kernel view (`--kernel-metadata`), the descriptor store keeps
/// the FUSE mount's root beneath the view too: a daemon restarted after a
/// crash resumes the same FUSE mount, the old view staying shown
/// meanwhile (names and links answered with no daemon at all), then shows
/// its own view in place of it, exactly one, and follows switches.
#[test]
fn a_kernel_view_mount_restarted_from_the_descriptor_store_stays_mounted() {
    if !root_or_skip("a_kernel_view_mount_restarted_from_the_descriptor_store") {
        return;
    }
    let Fixture {
        scratch,
        store,
        mnt,
        notify,
    } = Fixture::new(
        "systemd-kernel-view",
        &[("share/late", b"read only after the crash\n")],
    );
    let index = scratch.join("Index");
    fs::create_dir_all(&index).unwrap();
    let index = fs::canonicalize(index).unwrap();
    let _stacks = (Stack(mnt.clone()), Stack(index.clone()));
    let mut argv = exec_start("nexus-mount@.service", "Programs", &mnt);
    argv.extend(
        ["--kernel-metadata", "--allow-other", "--index"]
            .map(OsString::from)
            .into_iter()
            .chain([index.clone().into()]),
    );
    let first = start_service(&argv, &notify, store.path(), &scratch.join("log1"), &[]);
    let mut first = Service {
        child: first,
        mountpoint: None,
    };
    let (_, before) = notify.until(Duration::from_secs(30), "READY=1", |n| n.has("READY=1"));
    let stored = stored_descriptors(before);
    let names: Vec<&str> = stored.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names, ["nexus-data", "nexus-fuse", "nexus-index"]);
    let store_max: usize = unit_value("nexus-mount@.service", "Service", "FileDescriptorStoreMax")
        .parse()
        .unwrap();
    assert!(
        names.len() <= store_max,
        "the unit keeps {store_max} descriptors, the daemon stores {}",
        names.len()
    );
    let kinds = |p: &Path| -> Vec<String> { stack_at(p).into_iter().map(|(_, k)| k).collect() };
    assert_eq!(kinds(&mnt), ["fuse.nexus", "overlay"]);
    assert_eq!(kinds(&index), ["fuse.nexus-index", "erofs"]);
    let fuse_id = stack_at(&mnt)[0].0;
    assert_eq!(fs::read(mnt.join("a/1/bin/a")).unwrap(), b"first\n");

    first.child.kill().unwrap();
    first.child.wait().unwrap();
    assert_eq!(
        kinds(&mnt),
        ["fuse.nexus", "overlay"],
        "the view went with the daemon"
    );
    // The view answers names and links with no daemon; contents wait.
    assert_eq!(
        fs::read_link(mnt.join("a/Current")).unwrap(),
        Path::new("1")
    );
    let late = mnt.join("a/1/share/late");
    let waiting = std::thread::spawn(move || fs::read(late));
    std::thread::sleep(Duration::from_millis(300));
    assert!(!waiting.is_finished(), "a read was answered with no daemon");

    let passed = as_passed(&stored);
    let second = start_service(&argv, &notify, store.path(), &scratch.join("log2"), &passed);
    let mut second = Service {
        child: second,
        mountpoint: None,
    };
    notify.until(Duration::from_secs(30), "READY=1", |n| n.has("READY=1"));
    let log = || fs::read_to_string(scratch.join("log2")).unwrap_or_default();
    assert_eq!(
        waiting.join().unwrap().expect("the waiting read"),
        b"read only after the crash\n",
        "{}",
        log()
    );
    assert!(
        wait_for(Duration::from_secs(10), || kinds(&mnt)
            == ["fuse.nexus", "overlay"]
            && stack_at(&mnt)[0].0 == fuse_id),
        "not the same FUSE mount under exactly one view: {:?}\n{}",
        stack_at(&mnt),
        log()
    );
    assert_eq!(kinds(&index), ["fuse.nexus-index", "erofs"], "{}", log());
    assert_eq!(
        fs::read_link(index.join("bin/a")).unwrap(),
        mnt.join("a/Current/bin/a")
    );

    // A compromised daemon could store a root of its choosing (a directory
    // a user writes) for its successors' views to read contents from. A
    // restart given one refuses it, takes the view off and opens the
    // mount's root afresh.
    second.child.kill().unwrap();
    second.child.wait().unwrap();
    let planted = scratch.join("planted");
    write_file(&planted.join("a/1/bin/a"), b"planted\n");
    let planted = fs::File::open(&planted).unwrap();
    let mut passed = as_passed(&stored);
    for (fd, name) in &mut passed {
        if *name == "nexus-data" {
            *fd = planted.as_raw_fd();
        }
    }
    let third = start_service(&argv, &notify, store.path(), &scratch.join("log3"), &passed);
    let mut third = Service {
        child: third,
        mountpoint: None,
    };
    notify.until(Duration::from_secs(30), "READY=1", |n| n.has("READY=1"));
    drop(stored);
    let log = || fs::read_to_string(scratch.join("log3")).unwrap_or_default();
    assert!(log().contains("refused"), "{}", log());
    assert_eq!(kinds(&mnt), ["fuse.nexus", "overlay"], "{}", log());
    assert_eq!(stack_at(&mnt)[0].0, fuse_id, "{}", log());
    assert_eq!(fs::read(mnt.join("a/1/bin/a")).unwrap(), b"first\n");

    // The new daemon's view follows the live generation.
    store.add_dir(&scratch.join("b"), "b", "1");
    assert!(
        wait_for(Duration::from_secs(10), || mnt.join("b/1/bin/b").exists()),
        "the view did not follow the switch: {}",
        log()
    );
    assert_eq!(fs::read(mnt.join("b/1/bin/b")).unwrap(), b"second\n");
    terminate(&third.child);
    assert!(third.child.wait().unwrap().success(), "{}", log());
    assert!(
        wait_for(Duration::from_secs(5), || !is_mounted(&mnt)
            && !is_mounted(&index)),
        "still mounted after SIGTERM: {:?} {:?}",
        stack_at(&mnt),
        stack_at(&index)
    );
}

#[test]
fn the_virtiofs_units_serve_on_the_activated_socket() {
    let scratch = Scratch::new("systemd-virtiofs");
    write_file(&scratch.join("a/bin/a"), b"first\n");
    let store = Store::init();
    store.add_dir(&scratch.join("a"), "a", "1");
    // The socket unit's socket, made as systemd makes it (in a scratch
    // directory instead of /run/nexus).
    let listen = unit_value_socket("ListenStream");
    let name = Path::new(&listen.replace("%i", "guests"))
        .file_name()
        .unwrap()
        .to_owned();
    let path = scratch.join(name);
    let listener = UnixListener::bind(&path).unwrap();
    let mode = u32::from_str_radix(&unit_value_socket("SocketMode"), 8).unwrap();
    assert_eq!(mode, 0o600, "only root may connect by default");
    fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();

    let notify = NotifySocket::new(scratch.path());
    let argv = exec_start("nexus-virtiofs@.service", "guests", &path);
    let log = scratch.join("log");
    let child = start_service(
        &argv,
        &notify,
        store.path(),
        &log,
        &[(listener.as_raw_fd(), "nexus-virtiofs@guests.socket")],
    );
    drop(listener);
    let mut service = Service {
        child,
        mountpoint: None,
    };
    let (ready, _) = notify.until(Duration::from_secs(30), "READY=1", |n| n.has("READY=1"));
    assert_eq!(ready.pid, service.child.id() as i32, "no fork");
    let status = ready.value("STATUS").unwrap();
    assert_eq!(generation_in(status), Some(1), "{status}");
    assert!(status.contains(path.to_str().unwrap()), "{status}");
    let said = fs::read_to_string(&log).unwrap();
    assert!(said.contains("serving generation 1"), "{said}");
    let mut guest = UnixStream::connect(&path).unwrap();
    let features = vhost_user_features(&mut guest);
    assert_ne!(features & (1 << 30), 0, "VHOST_USER_F_PROTOCOL_FEATURES");
    drop(guest);
    terminate(&service.child);
    notify.until(Duration::from_secs(10), "STOPPING=1", |n| {
        n.has("STOPPING=1")
    });
    assert!(service.child.wait().unwrap().success());
    assert!(
        fs::symlink_metadata(&path).is_ok(),
        "the socket is systemd's to remove (RemoveOnStop=), not the daemon's"
    );
}

fn unit_value_socket(key: &str) -> String {
    unit_value("nexus-virtiofs@.socket", "Socket", key)
}

#[test]
fn the_log_file_is_reopened_on_sighup() {
    if !root_or_skip("the_log_file_is_reopened_on_sighup") {
        return;
    }
    let Fixture {
        scratch,
        store,
        mnt,
        ..
    } = Fixture::new("sighup", &[]);
    let log = scratch.join("nexus.log");
    let child = Command::new(nexus_bin())
        .arg("--store")
        .arg(store.path())
        .arg("mount")
        .arg(&mnt)
        .arg("--foreground")
        .arg("--log-file")
        .arg(&log)
        .env("NEXUS_CONFIG", "/dev/null")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let service = Service {
        child,
        mountpoint: Some(mnt.clone()),
    };
    assert!(
        wait_for(Duration::from_secs(30), || fs::read_to_string(&log)
            .is_ok_and(|t| t.contains("mounted generation 1"))),
        "the daemon never logged its mount"
    );
    // logrotate: rename, then SIGHUP.
    let rotated = scratch.join("nexus.log.1");
    fs::rename(&log, &rotated).unwrap();
    // SAFETY: plain kill(2) of the daemon this test started.
    assert_eq!(
        unsafe { libc::kill(service.child.id() as i32, libc::SIGHUP) },
        0
    );
    assert!(
        wait_for(Duration::from_secs(5), || log.exists()),
        "no new log file after SIGHUP"
    );
    store.add_dir(&scratch.join("b"), "b", "1");
    assert!(
        wait_for(Duration::from_secs(5), || fs::read_to_string(&log)
            .is_ok_and(|t| t.contains("now showing generation Some(2)"))),
        "the switch was not logged to the new file: {:?}",
        fs::read_to_string(&log)
    );
    assert!(
        !fs::read_to_string(&rotated)
            .unwrap()
            .contains("now showing generation"),
        "logged to the rotated file after SIGHUP"
    );
    assert!(alive(service.child.id() as i32), "SIGHUP ended the daemon");
    terminate(&service.child);
    let mut service = service;
    assert!(service.child.wait().unwrap().success());
    service.mountpoint = None;
}
