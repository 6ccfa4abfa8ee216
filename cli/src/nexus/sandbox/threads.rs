//! Applying one confinement step to every thread of the process.
//!
//! Namespaces, `no_new_privs`, user and group ids, capabilities and Landlock
//! domains belong to a *thread*, not to the process: `unshare(2)`,
//! `setresuid(2)`, `capset(2)` and `landlock_restrict_self(2)` change only
//! the thread that calls them (glibc broadcasts its own `setuid` to every
//! thread for the same reason). The daemons have threads before they
//! confine themselves (the catalog pool's snapshot thread starts when the
//! view opens, and other start-up code may add more), and a thread left
//! unconfined shares the memory of the confined ones: whoever takes over
//! one thread can run code on any. So the step runs on every thread, the
//! way glibc's setxid broadcast and libcap's `psx` (which go-landlock uses)
//! do it: each other thread is sent a real-time signal whose handler
//! applies the step to itself, and the caller waits for every one to
//! report; threads listed anew until no unconfined one is left, then the
//! caller confines itself. Threads created afterwards inherit everything
//! from their creator.
//!
//! The handler makes raw system calls only (async-signal-safe: it may
//! interrupt a thread holding any lock), and the step it applies is plain
//! data prepared beforehand. A thread that blocks the signal (the highest
//! real-time one) cannot be confined: the daemon then refuses to serve,
//! naming it. Each thread gets a Landlock domain of its own (the same
//! rules): Landlock's signal scope lets threads of one process signal
//! each other whatever their domains (on kernels with the fix that allows
//! it), and nothing in the daemon signals another thread anyway.

use std::collections::HashSet;
use std::io;
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit capability sets in two words.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// How long one thread may take to run its handler.
const THREAD_DEADLINE: Duration = Duration::from_secs(5);

/// What every thread applies to itself, in this order.
#[derive(Debug)]
pub(super) struct ThreadStep {
    /// `unshare(2)` flags (new network and IPC namespaces), or 0.
    pub unshare: libc::c_int,
    /// Drop every capability outside `keep_caps` from the bounding set
    /// (needs `CAP_SETPCAP`: root only).
    pub drop_bounding: bool,
    /// The highest capability number the kernel knows.
    pub last_cap: u32,
    /// Become this user and group (no supplementary groups).
    pub identity: Option<(libc::uid_t, libc::gid_t)>,
    /// The capabilities kept, effective and permitted (bit N = capability N).
    pub keep_caps: u64,
    /// The Landlock ruleset to restrict the thread with.
    pub landlock: libc::c_int,
}

/// Which part of a [`ThreadStep`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stage {
    Namespaces = 1,
    NoNewPrivs,
    BoundingSet,
    Identity,
    Capabilities,
    Landlock,
}

impl Stage {
    fn from_code(code: u64) -> Stage {
        match code {
            1 => Stage::Namespaces,
            2 => Stage::NoNewPrivs,
            3 => Stage::BoundingSet,
            4 => Stage::Identity,
            5 => Stage::Capabilities,
            _ => Stage::Landlock,
        }
    }

    /// What the stage does, for error messages.
    pub(super) fn describe(self) -> &'static str {
        match self {
            Stage::Namespaces => "entering new network and IPC namespaces",
            Stage::NoNewPrivs => "setting no_new_privs",
            Stage::BoundingSet => "dropping capabilities from the bounding set",
            Stage::Identity => "switching to the sandbox user",
            Stage::Capabilities => "dropping capabilities",
            Stage::Landlock => "entering the Landlock domain",
        }
    }
}

/// A thread that could not confine itself.
#[derive(Debug, thiserror::Error)]
pub(super) enum ThreadError {
    /// The step failed on thread `tid`.
    #[error("thread {tid}: {}: {source}", stage.describe())]
    Step {
        tid: libc::pid_t,
        stage: Stage,
        source: io::Error,
    },
    /// Thread `tid` did not run its handler in time.
    #[error("thread {tid} did not confine itself within {THREAD_DEADLINE:?}")]
    Timeout { tid: libc::pid_t },
    /// Listing or signalling the threads failed.
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: io::Error,
    },
}

fn last_errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EINVAL)
}

/// `capset(2)`'s two structures.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Sets the calling thread's effective and permitted capabilities to
/// `keep` and its inheritable and ambient ones to nothing. Raw system
/// calls only.
pub(super) fn set_capabilities(keep: u64) -> Result<(), i32> {
    // SAFETY: prctl with integer arguments; EINVAL on kernels without
    // ambient capabilities, which then have none to clear.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let words = [keep as u32, (keep >> 32) as u32];
    let data = words.map(|w| CapData {
        effective: w,
        permitted: w,
        inheritable: 0,
    });
    // SAFETY: capset reads the header and two data words we own.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if rc != 0 {
        return Err(last_errno());
    }
    Ok(())
}

/// Drops every capability but `keep` from the calling thread's bounding
/// set. Raw system calls only.
pub(super) fn drop_bounding_set(keep: u64, last_cap: u32) -> Result<(), i32> {
    for cap in 0..=last_cap.min(63) {
        if keep & (1 << cap) != 0 {
            continue;
        }
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
            let errno = last_errno();
            // A capability this kernel does not know.
            if errno != libc::EINVAL {
                return Err(errno);
            }
        }
    }
    Ok(())
}

/// Applies `step` to the calling thread. Raw system calls only: it runs in
/// a signal handler.
fn apply(step: &ThreadStep) -> Result<(), (Stage, i32)> {
    // SAFETY (whole function): system calls with integer arguments or
    // pointers to data we own; none of them touches memory otherwise.
    if step.unshare != 0 && unsafe { libc::unshare(step.unshare) } != 0 {
        return Err((Stage::Namespaces, last_errno()));
    }
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err((Stage::NoNewPrivs, last_errno()));
    }
    if step.drop_bounding {
        drop_bounding_set(step.keep_caps, step.last_cap).map_err(|e| (Stage::BoundingSet, e))?;
    }
    if let Some((uid, gid)) = step.identity {
        // Keep the permitted set across the change of user: the effective
        // set is emptied by it and filled again from `keep_caps` below.
        let rc = unsafe {
            libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0
                || libc::syscall(libc::SYS_setgroups, 0, ptr::null::<libc::gid_t>()) != 0
                || libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0
                || libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0
                || libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) != 0
        };
        if rc {
            return Err((Stage::Identity, last_errno()));
        }
    }
    set_capabilities(step.keep_caps).map_err(|e| (Stage::Capabilities, e))?;
    if unsafe { libc::syscall(libc::SYS_landlock_restrict_self, step.landlock, 0) } != 0 {
        return Err((Stage::Landlock, last_errno()));
    }
    Ok(())
}

/// The step the handler applies (set while a broadcast runs).
static STEP: AtomicPtr<ThreadStep> = AtomicPtr::new(ptr::null_mut());
/// Handlers that finished.
static DONE: AtomicUsize = AtomicUsize::new(0);
/// The first failure: stage << 32 | errno, or 0.
static FAILED: AtomicU64 = AtomicU64::new(0);

extern "C" fn handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: __errno_location returns this thread's errno slot.
    let errno = unsafe { *libc::__errno_location() };
    let step = STEP.load(Ordering::Acquire);
    // SAFETY: the broadcast keeps the step alive until every handler it
    // sent has reported.
    if let Some(step) = unsafe { step.as_ref() }
        && let Err((stage, errno)) = apply(step)
    {
        let code = (stage as u64) << 32 | errno as u32 as u64;
        let _ = FAILED.compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
    }
    DONE.fetch_add(1, Ordering::AcqRel);
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

fn gettid() -> libc::pid_t {
    // SAFETY: gettid has no arguments.
    unsafe { libc::syscall(libc::SYS_gettid) as libc::pid_t }
}

/// The process's threads, from `/proc/self/task`.
fn threads() -> Result<Vec<libc::pid_t>, ThreadError> {
    let io = |source| ThreadError::Io {
        what: "listing the daemon's threads in /proc/self/task",
        source,
    };
    let mut tids = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task").map_err(io)? {
        let entry = entry.map_err(io)?;
        if let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) {
            tids.push(tid);
        }
    }
    Ok(tids)
}

/// The signal the broadcast uses: the highest real-time one, which
/// nothing in the daemon (or glibc, which reserves the lowest) uses.
fn signal() -> libc::c_int {
    libc::SIGRTMAX()
}

fn take_failure(tid: libc::pid_t) -> Result<(), ThreadError> {
    let code = FAILED.swap(0, Ordering::AcqRel);
    if code == 0 {
        return Ok(());
    }
    Err(ThreadError::Step {
        tid,
        stage: Stage::from_code(code >> 32),
        source: io::Error::from_raw_os_error((code & 0xffff_ffff) as i32),
    })
}

/// Runs `step` on every thread of the process, the caller last. Returns
/// how many threads were confined. Must not run twice at once (it is
/// called once, from the thread that confines the daemon).
pub(super) fn on_every_thread(step: &ThreadStep) -> Result<usize, ThreadError> {
    let signal = signal();
    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = handler as *const () as usize;
    action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
    // SAFETY: installing a handler for a signal nothing else uses.
    if unsafe { libc::sigaction(signal, &action, ptr::null_mut()) } != 0 {
        return Err(ThreadError::Io {
            what: "installing the confinement signal handler",
            source: io::Error::last_os_error(),
        });
    }
    STEP.store(ptr::from_ref(step).cast_mut(), Ordering::Release);
    FAILED.store(0, Ordering::Release);
    let result = signal_others(signal);
    STEP.store(ptr::null_mut(), Ordering::Release);
    // SAFETY: restores the default action; nothing sends the signal now.
    unsafe { libc::signal(signal, libc::SIG_DFL) };
    let others = result?;
    apply(step).map_err(|(stage, errno)| ThreadError::Step {
        tid: gettid(),
        stage,
        source: io::Error::from_raw_os_error(errno),
    })?;
    Ok(others + 1)
}

/// Signals every thread but the caller, one at a time, until a listing
/// shows none left unconfined.
fn signal_others(signal: libc::c_int) -> Result<usize, ThreadError> {
    // SAFETY: getpid has no arguments.
    let pid = unsafe { libc::getpid() };
    let mut seen: HashSet<libc::pid_t> = HashSet::from([gettid()]);
    let mut confined = 0;
    loop {
        let new: Vec<_> = threads()?
            .into_iter()
            .filter(|t| !seen.contains(t))
            .collect();
        if new.is_empty() {
            return Ok(confined);
        }
        for tid in new {
            seen.insert(tid);
            let before = DONE.load(Ordering::Acquire);
            // SAFETY: tgkill with integer arguments, to a thread of ours.
            if unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, signal) } != 0 {
                let err = io::Error::last_os_error();
                if err.raw_os_error() == Some(libc::ESRCH) {
                    continue; // It has exited.
                }
                return Err(ThreadError::Io {
                    what: "signalling a thread to confine itself",
                    source: err,
                });
            }
            let start = Instant::now();
            while DONE.load(Ordering::Acquire) == before {
                if start.elapsed() > THREAD_DEADLINE {
                    if std::path::Path::new(&format!("/proc/self/task/{tid}")).exists() {
                        return Err(ThreadError::Timeout { tid });
                    }
                    break; // It exited before handling the signal.
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            take_failure(tid)?;
            confined += 1;
        }
    }
}
