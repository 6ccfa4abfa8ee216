//! The sandbox's three processes, after `fork`:
//!
//! 1. the *intermediate* enters the new namespaces (`unshare`; a new user
//!    namespace maps only the caller's own ids when not run as root),
//!    forks the sandbox's pid 1 and passes its exit status on;
//! 2. *init* (pid 1 of the new pid namespace, so its `/proc` shows no
//!    host process) builds the file system ([`super::plan`]), pivots into
//!    it, becomes the build user, sets `no_new_privs`, forks the script and
//!    reaps every process until the script ends; when it exits the kernel
//!    kills whatever the script left running;
//! 3. the *script* process points its standard streams at the log,
//!    installs the seccomp filter ([`super::filter`]) and `execve`s.
//!
//! The caller may be multi-threaded, so between `fork` and `execve` only
//! system calls run, on data [`Prepared`] made beforehand: no allocation,
//! no lock. A failure is written to the report pipe as (stage, index,
//! errno) and the process exits; the parent turns it into an error.

use std::ffi::{CStr, CString};
use std::os::fd::RawFd;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::sys::prctl;
use nix::sys::signal::Signal;
use nix::sys::stat::{Mode, umask};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{
    ForkResult, Gid, Pid, Uid, chdir, fork, pivot_root, setgroups, sethostname, setresgid,
    setresuid,
};

use super::plan::Step;

/// The exit status of a sandbox process that failed to set up (the
/// report pipe says why; a script may exit with the same number).
pub const SETUP_FAILED: i32 = 125;
/// The sandbox's host name.
const HOSTNAME: &str = "nexus-build";

/// Where the sandbox failed, besides a [`Step`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Stage {
    /// A file-system step; the record's index names it.
    Step = 0,
    /// Entering the namespaces.
    Unshare = 1,
    /// Writing the user namespace's id maps.
    IdMaps = 2,
    /// Forking.
    Fork = 3,
    /// Pivoting into the new root.
    Pivot = 4,
    /// Setting the host name.
    Hostname = 5,
    /// Becoming the build user.
    Identity = 6,
    /// Setting `no_new_privs`.
    NoNewPrivs = 7,
    /// Changing to the working directory.
    Workdir = 8,
    /// Redirecting the standard streams.
    Streams = 9,
    /// Executing the program.
    Exec = 10,
    /// Installing the seccomp filter.
    Filter = 11,
}

impl Stage {
    /// The stage a report names.
    pub fn from_u32(n: u32) -> Option<Stage> {
        use Stage::*;
        [
            Step, Unshare, IdMaps, Fork, Pivot, Hostname, Identity, NoNewPrivs, Workdir, Streams,
            Exec, Filter,
        ]
        .into_iter()
        .find(|s| *s as u32 == n)
    }
}

/// The id maps a process writes for its own new user namespace.
pub struct IdMaps {
    /// `"UID UID 1\n"`.
    pub uid_map: CString,
    /// `"GID GID 1\n"`.
    pub gid_map: CString,
}

/// `struct sock_fprog`: a seccomp filter as `seccomp(2)` takes it,
/// pointing into one of [`Prepared::filters`].
#[repr(C)]
pub struct FilterProg {
    len: libc::c_ushort,
    filter: *const seccompiler::sock_filter,
}

/// Everything the children need, made before `fork`.
pub struct Prepared {
    /// The namespaces to enter.
    pub flags: CloneFlags,
    /// With a new user namespace: the caller's own ids, mapped to themselves.
    pub id_maps: Option<IdMaps>,
    /// The file-system steps.
    pub steps: Vec<Step>,
    /// The new root (a mount point once the steps ran).
    pub new_root: CString,
    /// The build user, when run as root.
    pub user: Option<(Uid, Gid)>,
    /// The working directory inside the sandbox.
    pub cwd: CString,
    /// The program (absolute, inside the sandbox).
    pub program: CString,
    /// Its argv, and the NULL-terminated pointer array into it.
    pub argv: Vec<CString>,
    /// Pointers into `argv`.
    pub argv_ptrs: Vec<*const libc::c_char>,
    /// Its environment, `NAME=VALUE`.
    pub envp: Vec<CString>,
    /// Pointers into `envp`.
    pub envp_ptrs: Vec<*const libc::c_char>,
    /// Standard input (`/dev/null`).
    pub stdin: RawFd,
    /// Standard output and error (the log).
    pub output: RawFd,
    /// The report pipe's write end (close-on-exec).
    pub report: RawFd,
    /// The script's seccomp filters ([`super::filter`]).
    pub filters: Vec<seccompiler::BpfProgram>,
    /// Pointers into `filters`.
    pub filter_progs: Vec<FilterProg>,
}

impl Prepared {
    /// Fills the pointer arrays; call once `argv` and `envp` are final.
    pub fn seal(&mut self) {
        self.argv_ptrs = self.argv.iter().map(|a| a.as_ptr()).collect();
        self.argv_ptrs.push(std::ptr::null());
        self.envp_ptrs = self.envp.iter().map(|a| a.as_ptr()).collect();
        self.envp_ptrs.push(std::ptr::null());
        // seccompiler keeps a program below 4096 instructions; a longer
        // one would get length 0, which the kernel refuses (EINVAL).
        self.filter_progs = self
            .filters
            .iter()
            .map(|f| FilterProg {
                len: libc::c_ushort::try_from(f.len()).unwrap_or(0),
                filter: f.as_ptr(),
            })
            .collect();
    }
}

/// Exits at once: no destructors, no atexit handlers, no stdio flush
/// (the process shares its memory image with a multi-threaded parent).
fn _exit(code: i32) -> ! {
    // SAFETY: _exit(2) is async-signal-safe.
    unsafe { libc::_exit(code) }
}

/// Writes a failure record and exits.
fn fail(report: RawFd, stage: Stage, index: usize, errno: Errno) -> ! {
    let mut record = [0u8; 12];
    record[..4].copy_from_slice(&(stage as u32).to_ne_bytes());
    record[4..8].copy_from_slice(&(index as u32).to_ne_bytes());
    record[8..].copy_from_slice(&(errno as i32).to_ne_bytes());
    // SAFETY: write(2) of a stack buffer on a descriptor we hold.
    unsafe { libc::write(report, record.as_ptr().cast(), record.len()) };
    _exit(SETUP_FAILED)
}

/// Decodes a failure record.
pub fn decode(record: &[u8]) -> Option<(Stage, usize, Errno)> {
    let word = |i: usize| -> Option<[u8; 4]> { record.get(i..i + 4)?.try_into().ok() };
    let stage = Stage::from_u32(u32::from_ne_bytes(word(0)?))?;
    let index = u32::from_ne_bytes(word(4)?) as usize;
    let errno = Errno::from_raw(i32::from_ne_bytes(word(8)?));
    Some((stage, index, errno))
}

/// The exit code that passes a child's status on: its own, or 128 + the
/// signal that ended it (as shells report it).
fn code_of(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, sig, _) => Some(128 + sig as i32),
        _ => None,
    }
}

/// Writes `data` to the file at `path` (a `/proc/self` map).
fn write_file(path: &CStr, data: &[u8]) -> Result<(), Errno> {
    // SAFETY: open/write/close on a C string we own; no allocation.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: as above.
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    let err = Errno::last();
    // SAFETY: closing the descriptor opened above.
    unsafe { libc::close(fd) };
    if n < 0 { Err(err) } else { Ok(()) }
}

/// The intermediate process: enters the namespaces, forks init, passes its
/// status on.
pub fn intermediate(p: &Prepared) -> ! {
    // The parent waits for us from the thread that forked: if it dies, so do we.
    let _ = prctl::set_pdeathsig(Signal::SIGKILL);
    if let Err(e) = unshare(p.flags) {
        fail(p.report, Stage::Unshare, 0, e);
    }
    if let Some(maps) = &p.id_maps {
        // An unprivileged process may map exactly its own ids, and must
        // give up setgroups(2) to map its group.
        for (file, data) in [
            (c"/proc/self/setgroups", c"deny".to_bytes()),
            (c"/proc/self/uid_map", maps.uid_map.to_bytes()),
            (c"/proc/self/gid_map", maps.gid_map.to_bytes()),
        ] {
            if let Err(e) = write_file(file, data) {
                fail(p.report, Stage::IdMaps, 0, e);
            }
        }
    }
    // SAFETY: the child runs only system calls on prepared data.
    match unsafe { fork() } {
        Err(e) => fail(p.report, Stage::Fork, 0, e),
        Ok(ForkResult::Child) => init(p),
        Ok(ForkResult::Parent { child }) => loop {
            match waitpid(child, None) {
                Ok(status) => {
                    if let Some(code) = code_of(status) {
                        _exit(code);
                    }
                }
                Err(Errno::EINTR) => {}
                Err(_) => _exit(SETUP_FAILED),
            }
        },
    }
}

/// Runs one file-system step.
fn run_step(step: &Step) -> Result<(), Errno> {
    const NONE: Option<&CStr> = None;
    match step {
        Step::MakePrivate => mount(
            NONE,
            c"/",
            NONE,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            NONE,
        ),
        Step::BindTree { source, target } => mount(
            Some(source.as_c_str()),
            target.as_c_str(),
            NONE,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            NONE,
        ),
        Step::SetAttr {
            target,
            set,
            recursive,
        } => {
            let attr = libc::mount_attr {
                attr_set: *set,
                attr_clr: 0,
                propagation: 0,
                userns_fd: 0,
            };
            let flags = if *recursive { libc::AT_RECURSIVE } else { 0 };
            // SAFETY: mount_setattr(2) with a C string and a struct we own.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_mount_setattr,
                    libc::AT_FDCWD,
                    target.as_ptr(),
                    flags as libc::c_uint,
                    &attr as *const libc::mount_attr,
                    std::mem::size_of::<libc::mount_attr>(),
                )
            };
            if rc < 0 { Err(Errno::last()) } else { Ok(()) }
        }
        Step::Mount {
            fstype,
            target,
            flags,
            data,
        } => mount(
            Some(fstype.as_c_str()),
            target.as_c_str(),
            Some(fstype.as_c_str()),
            *flags,
            Some(data.as_c_str()),
        ),
        Step::Mkdir { path } => {
            match nix::unistd::mkdir(path.as_c_str(), Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(Errno::EEXIST) => Ok(()),
                Err(e) => Err(e),
            }
        }
        Step::Touch { path } => {
            // SAFETY: open/close on a C string we own.
            let fd = unsafe {
                libc::open(
                    path.as_ptr(),
                    libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                    0o644 as libc::c_uint,
                )
            };
            if fd < 0 {
                return Err(Errno::last());
            }
            // SAFETY: closing it.
            unsafe { libc::close(fd) };
            Ok(())
        }
        Step::Symlink { target, path } => {
            // SAFETY: symlink(2) on C strings we own.
            let rc = unsafe { libc::symlink(target.as_ptr(), path.as_ptr()) };
            if rc < 0 { Err(Errno::last()) } else { Ok(()) }
        }
    }
}

/// Pid 1 of the sandbox.
fn init(p: &Prepared) -> ! {
    let _ = prctl::set_pdeathsig(Signal::SIGKILL);
    for (i, step) in p.steps.iter().enumerate() {
        if let Err(e) = run_step(step) {
            fail(p.report, Stage::Step, i, e);
        }
    }
    // pivot_root(".", ".") stacks the old root under the new one; detaching
    // it leaves only the new tree.
    if let Err(e) = chdir(p.new_root.as_c_str())
        .and_then(|()| pivot_root(c".", c"."))
        .and_then(|()| umount2(c".", MntFlags::MNT_DETACH))
        .and_then(|()| chdir(c"/"))
    {
        fail(p.report, Stage::Pivot, 0, e);
    }
    if let Err(e) = sethostname(HOSTNAME) {
        fail(p.report, Stage::Hostname, 0, e);
    }
    if let Some((uid, gid)) = p.user {
        // Groups first, while still root; then the gid, then the uid (which
        // clears every capability: root's are gone for good).
        if let Err(e) = setgroups(&[gid])
            .and_then(|()| setresgid(gid, gid, gid))
            .and_then(|()| setresuid(uid, uid, uid))
        {
            fail(p.report, Stage::Identity, 0, e);
        }
    }
    if let Err(e) = prctl::set_no_new_privs() {
        fail(p.report, Stage::NoNewPrivs, 0, e);
    }
    if let Err(e) = chdir(p.cwd.as_c_str()) {
        fail(p.report, Stage::Workdir, 0, e);
    }
    // SAFETY: as for the intermediate.
    let script = match unsafe { fork() } {
        Err(e) => fail(p.report, Stage::Fork, 0, e),
        Ok(ForkResult::Child) => script(p),
        Ok(ForkResult::Parent { child }) => child,
    };
    // Reap everything (orphans are ours); end with the script.
    loop {
        match waitpid(Pid::from_raw(-1), None) {
            Ok(status) if status.pid() == Some(script) => {
                if let Some(code) = code_of(status) {
                    _exit(code);
                }
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => _exit(SETUP_FAILED),
        }
    }
}

/// The script process: standard streams, umask, exec.
fn script(p: &Prepared) -> ! {
    for (from, to) in [(p.stdin, 0), (p.output, 1), (p.output, 2)] {
        // SAFETY: dup2(2) on descriptors we hold.
        if unsafe { libc::dup2(from, to) } < 0 {
            fail(p.report, Stage::Streams, 0, Errno::last());
        }
    }
    umask(Mode::from_bits_truncate(0o022));
    // The filter last, just before exec: nothing of the setup runs under
    // it, and `no_new_privs` (set by init) lets the build user install it.
    for prog in &p.filter_progs {
        // SAFETY: seccomp(2) copies the program; `prog` points into
        // `p.filters`, which outlives the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                prog as *const FilterProg,
            )
        };
        if rc < 0 {
            fail(p.report, Stage::Filter, 0, Errno::last());
        }
    }
    // SAFETY: execve(2) with NULL-terminated arrays of pointers into
    // C strings that live in `p`.
    unsafe {
        libc::execve(
            p.program.as_ptr(),
            p.argv_ptrs.as_ptr(),
            p.envp_ptrs.as_ptr(),
        )
    };
    fail(p.report, Stage::Exec, 0, Errno::last())
}
