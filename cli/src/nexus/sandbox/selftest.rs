//! `--sandbox-selftest FILE` (hidden, for the tests): right after a real
//! daemon confined itself, try what an attacker who took it over would,
//! and write each outcome to FILE as a JSON line, `{"probe", "allowed",
//! "errno", "error"}`. The daemon then serves as usual, so that the same
//! process shows the confinement refuses these and still serves. The
//! remote fetcher ([`super::fetcher`]) writes its own probes to
//! `FILE.fetcher`.
//!
//! Every probe is harmless if the sandbox failed to refuse it: paths that
//! do not exist where the call would otherwise act, a child that exits at
//! once, a trace detached at once.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::Confinement;

fn cpath(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).unwrap_or_default()
}

/// A probe's outcome: `Ok` if the system call succeeded.
fn outcome(rc: libc::c_long) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn open(path: &Path, flags: libc::c_int) -> io::Result<()> {
    let path = cpath(path);
    // SAFETY: open on a NUL-terminated path; the descriptor is closed.
    let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC, 0o600) };
    if fd >= 0 {
        // SAFETY: ours.
        unsafe { libc::close(fd) };
    }
    outcome(fd.into())
}

fn report(out: &mut File, probe: &str, result: io::Result<()>) {
    let line = serde_json::json!({
        "probe": probe,
        "allowed": result.is_ok(),
        "errno": result.as_ref().err().and_then(io::Error::raw_os_error),
        "error": result.as_ref().err().map(ToString::to_string),
    });
    let _ = writeln!(out, "{line}");
}

/// Runs the probes and writes their outcomes to `out`.
pub(super) fn run(out: &mut File, c: &Confinement, remote_cache: bool) {
    let catalog = c.store.join(nexus_store::CATALOG_FILE);
    // What serving needs still works.
    report(out, "read-catalog", open(&catalog, libc::O_RDONLY));
    report(
        out,
        "list-packs",
        std::fs::read_dir(c.store.join(nexus_store::PACKS_DIR)).map(drop),
    );
    // Files outside the store, and the store's own files for writing.
    report(
        out,
        "read-etc-shadow",
        open(Path::new("/etc/shadow"), libc::O_RDONLY),
    );
    report(out, "write-catalog", open(&catalog, libc::O_WRONLY));
    for (probe, suffix) in [("write-catalog-wal", "-wal"), ("write-catalog-shm", "-shm")] {
        let mut path = catalog.clone().into_os_string();
        path.push(suffix);
        report(out, probe, open(Path::new(&path), libc::O_RDWR));
    }
    report(
        out,
        "create-in-store",
        open(
            &c.store.join("planted"),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
        ),
    );
    // The keeper mounts what a mount daemon's image directory holds: no
    // daemon may write outside its own (a kernel-view mount's), and none
    // other than a mount daemon there at all.
    report(
        out,
        "plant-kernel-view-image",
        open(
            &c.store
                .join(crate::nexus::kernel_view::IMAGES_DIR)
                .join("planted"),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
        ),
    );
    report(
        out,
        "write-proc-self-mem",
        open(Path::new("/proc/self/mem"), libc::O_RDWR),
    );
    let catalog_c = cpath(&catalog);
    // SAFETY (all probes below): system calls on constants, NUL-terminated
    // paths and null pointers; any child exits at once.
    report(
        out,
        "chmod-catalog",
        outcome(unsafe { libc::chmod(catalog_c.as_ptr(), 0o644).into() }),
    );
    report(out, "socket-inet", {
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        if fd >= 0 {
            unsafe { libc::close(fd) };
        }
        outcome(fd.into())
    });
    report(out, "connect-unix", {
        let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            outcome(fd.into())
        } else {
            let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
            addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
            for (dst, src) in addr.sun_path.iter_mut().zip(b"/run/nexus-no-such-socket") {
                *dst = *src as libc::c_char;
            }
            let rc = unsafe {
                libc::connect(
                    fd,
                    std::ptr::from_ref(&addr).cast(),
                    std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
                )
            };
            let result = outcome(rc.into());
            unsafe { libc::close(fd) };
            result
        }
    });
    escapes(out);
    if remote_cache {
        // The remote block cache is writable (blocks fetched are kept).
        let cache = c.store.join(nexus_remote::cache::CACHE_DIR);
        let probe = cache.join("nexus-selftest-probe");
        report(
            out,
            "write-remote-cache",
            std::fs::write(&probe, b"probe").and_then(|()| std::fs::remove_file(&probe)),
        );
    }
    // A thread can still be made (the request threads need them).
    report(
        out,
        "spawn-thread",
        std::thread::Builder::new()
            .spawn(|| ())
            .and_then(|h| h.join().map_err(|_| io::Error::other("panicked"))),
    );
}

/// What neither the daemon nor its fetcher may do: make processes, run
/// programs, trace, become root, signal outside, mount, map code.
fn escapes(out: &mut File) {
    // SAFETY (all probes below): system calls on constants, NUL-terminated
    // paths and null pointers; any child exits at once.
    report(out, "fork", {
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            unsafe { libc::_exit(0) };
        }
        if pid > 0 {
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        }
        outcome(pid.into())
    });
    report(out, "execve", {
        let argv = [c"/nonexistent-nexus-probe".as_ptr(), std::ptr::null()];
        let envp = [std::ptr::null()];
        outcome(unsafe { libc::execve(argv[0], argv.as_ptr(), envp.as_ptr()) }.into())
    });
    report(out, "ptrace-init", {
        let rc = unsafe { libc::ptrace(libc::PTRACE_SEIZE, 1, 0, 0) };
        if rc == 0 {
            unsafe { libc::ptrace(libc::PTRACE_DETACH, 1, 0, 0) };
        }
        outcome(rc)
    });
    report(
        out,
        "mount",
        outcome(unsafe {
            libc::mount(
                c"none".as_ptr(),
                c"/nonexistent-nexus-probe".as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                std::ptr::null(),
            )
            .into()
        }),
    );
    // With CAP_DAC_READ_SEARCH, open_by_handle_at would open any file of
    // the host by its handle, around Landlock's paths ("shocker").
    report(
        out,
        "open-by-handle",
        outcome(unsafe {
            libc::syscall(
                libc::SYS_open_by_handle_at,
                libc::AT_FDCWD,
                std::ptr::null::<u8>(),
                libc::O_RDONLY,
            )
        }),
    );
    report(
        out,
        "setuid-root",
        outcome(unsafe { libc::syscall(libc::SYS_setuid, 0) }),
    );
    report(
        out,
        "kill-init",
        outcome(unsafe { libc::kill(1, 0).into() }),
    );
    report(
        out,
        "unshare-user",
        outcome(unsafe { libc::unshare(libc::CLONE_NEWUSER).into() }),
    );
    report(out, "mmap-exec", {
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            Err(io::Error::last_os_error())
        } else {
            unsafe { libc::munmap(p, 4096) };
            Ok(())
        }
    });
}

/// A TCP connection attempt to `127.0.0.1:port`.
fn connect_tcp(port: u16) -> io::Result<()> {
    // SAFETY: a socket we close, and an address on this stack.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_port = port.to_be();
        addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
        let rc = libc::connect(
            fd,
            std::ptr::from_ref(&addr).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        let result = outcome(rc.into());
        libc::close(fd);
        result
    }
}

/// The fetcher's probes: it reaches the remotes' `ports` and nothing else
/// (no other port, no store file, no Unix socket), and makes no process.
pub(super) fn fetcher(out: &mut File, store: &Path, ports: &[u16]) {
    report(
        out,
        "read-catalog",
        open(&store.join(nexus_store::CATALOG_FILE), libc::O_RDONLY),
    );
    report(
        out,
        "read-etc-shadow",
        open(Path::new("/etc/shadow"), libc::O_RDONLY),
    );
    report(
        out,
        "create-in-tmp",
        open(
            Path::new("/tmp/nexus-fetcher-probe"),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
        ),
    );
    if let Some(&port) = ports.first() {
        report(out, "connect-tcp-remote-port", connect_tcp(port));
    }
    // A port no remote uses (ports are listed, so one of the two is free).
    let other = if ports.contains(&1) { 2 } else { 1 };
    report(out, "connect-tcp-other-port", connect_tcp(other));
    report(out, "socket-unix", {
        // SAFETY: a socket we close.
        let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd >= 0 {
            unsafe { libc::close(fd) };
        }
        outcome(fd.into())
    });
    escapes(out);
}
