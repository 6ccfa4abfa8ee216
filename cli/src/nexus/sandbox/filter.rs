//! The seccomp allowlists: the system calls a confined daemon (and its
//! keeper) makes, found by tracing the daemons through the integration
//! tests (reads, generation switches, gc, SIGTERM, QEMU guests), with
//! argument checks where an allowed call could do more than serving needs.
//! Anything else fails with `EPERM`: a rare path that was missed fails
//! (and is logged by its caller) instead of killing `/Programs` for every
//! user, while an attacker is refused all the same.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

use super::Daemon;

/// `FUSE_DEV_IOC_CLONE`: `_IOR(229, 0, uint32_t)`, which fuser's request
/// threads use to get a device descriptor of their own.
const FUSE_DEV_IOC_CLONE: u64 = 0x8004_e500;

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

/// A condition on argument `arg`.
fn arg(index: u8, op: SeccompCmpOp, value: u64) -> SeccompCondition {
    // Only out-of-range argument indices fail, and ours are constants.
    SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value)
        .expect("argument index below 6")
}

/// A rule of conditions that must all hold.
fn when(conditions: Vec<SeccompCondition>) -> SeccompRule {
    SeccompRule::new(conditions).expect("a rule has conditions")
}

fn allow(rules: &mut Rules, calls: &[libc::c_long]) {
    for &call in calls {
        rules.insert(call, Vec::new());
    }
}

fn allow_when(rules: &mut Rules, call: libc::c_long, alternatives: Vec<SeccompRule>) {
    rules.insert(call, alternatives);
}

/// Compiles `rules`, which get `on_match`; every other call gets
/// `otherwise`.
fn compile(
    rules: Rules,
    otherwise: SeccompAction,
    on_match: SeccompAction,
) -> Result<BpfProgram, seccompiler::BackendError> {
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|_| seccompiler::BackendError::InvalidTargetArch(std::env::consts::ARCH.into()))?;
    SeccompFilter::new(rules, otherwise, on_match, arch)?.try_into()
}

/// Compiles an allowlist: everything else is `EPERM`.
fn allowlist(rules: Rules) -> Result<BpfProgram, seccompiler::BackendError> {
    compile(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
    )
}

/// System calls that exist on x86_64 only (aarch64 has the `*at` forms).
#[cfg(target_arch = "x86_64")]
const LEGACY: &[libc::c_long] = &[
    libc::SYS_access,
    libc::SYS_readlink,
    libc::SYS_rename,
    libc::SYS_unlink,
    libc::SYS_stat,
    libc::SYS_lstat,
    libc::SYS_poll,
    libc::SYS_epoll_wait,
];
#[cfg(not(target_arch = "x86_64"))]
const LEGACY: &[libc::c_long] = &[];

/// The confined daemon's filters, in the order to install them: the
/// allowlist, then one that makes `clone3` fail with `ENOSYS`. (Filters
/// stack, and of two errors the newer filter's wins: glibc creates
/// threads with `clone3` and falls back to `clone`, whose flags a filter
/// can check, on `ENOSYS` only. The allowlist lets a filter be added:
/// another filter can only forbid more.)
///
/// `remote_cache`: the store has remotes, whose verified blocks the
/// daemon caches (directories made and removed, a block's time refreshed
/// through its open descriptor).
pub(super) fn server(
    daemon: Daemon,
    remote_cache: bool,
) -> Result<Vec<BpfProgram>, seccompiler::BackendError> {
    Ok(vec![
        daemon_allowlist(daemon, remote_cache)?,
        clone3_enosys()?,
    ])
}

/// The remote fetcher's filters (module `fetcher`), in the same order:
/// what threads, memory and reading files need, as the daemon's, and
/// Internet sockets instead of Unix ones.
pub(super) fn fetcher() -> Result<Vec<BpfProgram>, seccompiler::BackendError> {
    let mut rules = Rules::new();
    common(&mut rules);
    allow_when(
        &mut rules,
        libc::SYS_ioctl,
        [libc::FIONBIO, libc::FIOCLEX, libc::FIONREAD, libc::TCGETS]
            .into_iter()
            .map(|op| when(vec![arg(1, SeccompCmpOp::Eq, op)]))
            .collect(),
    );
    // TCP to the remotes (Landlock names the ports), UDP for DNS; no Unix
    // socket (nothing local to reach) and no netlink (glibc's resolver
    // does without).
    let type_mask = !((libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK) as u64) & 0xffff_ffff;
    let mut sockets = Vec::new();
    for family in [libc::AF_INET, libc::AF_INET6] {
        for kind in [libc::SOCK_STREAM, libc::SOCK_DGRAM] {
            sockets.push(when(vec![
                arg(0, SeccompCmpOp::Eq, family as u64),
                arg(1, SeccompCmpOp::MaskedEq(type_mask), kind as u64),
            ]));
        }
    }
    allow_when(&mut rules, libc::SYS_socket, sockets);
    allow(
        &mut rules,
        &[
            libc::SYS_connect,
            libc::SYS_setsockopt,
            libc::SYS_getsockopt,
            libc::SYS_getsockname,
            libc::SYS_getpeername,
            libc::SYS_sendto,
            libc::SYS_recvfrom,
            libc::SYS_sendmsg,
            libc::SYS_recvmsg,
            libc::SYS_sendmmsg,
            libc::SYS_recvmmsg,
            libc::SYS_shutdown,
            libc::SYS_uname,
        ],
    );
    Ok(vec![allowlist(rules)?, clone3_enosys()?])
}

/// The filter making `clone3` fail with `ENOSYS`.
fn clone3_enosys() -> Result<BpfProgram, seccompiler::BackendError> {
    let mut clone3 = Rules::new();
    allow(&mut clone3, &[libc::SYS_clone3]);
    compile(
        clone3,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
    )
}

fn daemon_allowlist(
    daemon: Daemon,
    remote_cache: bool,
) -> Result<BpfProgram, seccompiler::BackendError> {
    let mut rules = Rules::new();
    common(&mut rules);
    if remote_cache {
        // Landlock confines these to the cache directory.
        allow(&mut rules, &[libc::SYS_mkdirat]);
        #[cfg(target_arch = "x86_64")]
        allow(&mut rules, &[libc::SYS_mkdir, libc::SYS_rmdir]);
        // futimens only (no path): the times of a file already open.
        allow_when(
            &mut rules,
            libc::SYS_utimensat,
            vec![when(vec![arg(1, SeccompCmpOp::Eq, 0)])],
        );
    }
    daemon_sockets(&mut rules, daemon);
    allowlist(rules)
}

/// What every confined process of ours calls: memory, threads, time,
/// signals to itself, and reading and writing the files Landlock lets it
/// open.
fn common(rules: &mut Rules) {
    // Memory, threads, time, signals to itself, randomness.
    allow(
        rules,
        &[
            libc::SYS_brk,
            libc::SYS_munmap,
            libc::SYS_mremap,
            libc::SYS_madvise,
            libc::SYS_futex,
            libc::SYS_set_robust_list,
            libc::SYS_rseq,
            libc::SYS_set_tid_address,
            libc::SYS_exit,
            libc::SYS_exit_group,
            libc::SYS_sched_yield,
            libc::SYS_sched_getaffinity,
            libc::SYS_gettid,
            libc::SYS_getpid,
            libc::SYS_getuid,
            libc::SYS_geteuid,
            libc::SYS_getgid,
            libc::SYS_getegid,
            libc::SYS_clock_gettime,
            libc::SYS_clock_getres,
            libc::SYS_clock_nanosleep,
            libc::SYS_nanosleep,
            libc::SYS_gettimeofday,
            libc::SYS_rt_sigprocmask,
            libc::SYS_rt_sigaction,
            libc::SYS_rt_sigreturn,
            libc::SYS_rt_sigtimedwait,
            libc::SYS_sigaltstack,
            libc::SYS_restart_syscall,
            libc::SYS_getrandom,
            libc::SYS_wait4,
        ],
    );
    // Adding a filter (the clone3 one, after this).
    allow_when(
        rules,
        libc::SYS_seccomp,
        vec![when(vec![arg(
            0,
            SeccompCmpOp::Eq,
            libc::SECCOMP_SET_MODE_FILTER as u64,
        )])],
    );
    // No executable memory: nothing is loaded or generated after start.
    let no_exec = || {
        vec![when(vec![arg(
            2,
            SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
            0,
        )])]
    };
    allow_when(rules, libc::SYS_mmap, no_exec());
    allow_when(rules, libc::SYS_mprotect, no_exec());
    // Threads, never processes. clone3's flags are in memory a filter
    // cannot read: ENOSYS makes glibc fall back to clone, whose it can.
    let thread = libc::CLONE_THREAD as u64;
    allow_when(
        rules,
        libc::SYS_clone,
        vec![when(vec![arg(0, SeccompCmpOp::MaskedEq(thread), thread)])],
    );
    // Thread names, and no_new_privs (set already; seccompiler sets it
    // again before adding a filter).
    allow_when(
        rules,
        libc::SYS_prctl,
        [
            libc::PR_SET_NAME,
            libc::PR_GET_NAME,
            libc::PR_SET_NO_NEW_PRIVS,
        ]
        .into_iter()
        .map(|op| when(vec![arg(0, SeccompCmpOp::Eq, op as u64)]))
        .collect(),
    );
    // Signals to its own threads only (abort, raise).
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u64;
    allow_when(
        rules,
        libc::SYS_tgkill,
        vec![when(vec![arg(0, SeccompCmpOp::Eq, pid)])],
    );
    // Limits may be read, not raised.
    allow_when(
        rules,
        libc::SYS_prlimit64,
        vec![when(vec![arg(2, SeccompCmpOp::Eq, 0)])],
    );
    // Files: Landlock decides which; these only read and write them, take
    // SQLite's and the runtime record's locks, and replace records.
    allow(
        rules,
        &[
            libc::SYS_openat,
            libc::SYS_close,
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_pread64,
            libc::SYS_pwrite64,
            libc::SYS_readv,
            libc::SYS_writev,
            libc::SYS_lseek,
            libc::SYS_fstat,
            libc::SYS_newfstatat,
            libc::SYS_statx,
            libc::SYS_fcntl,
            libc::SYS_flock,
            libc::SYS_ftruncate,
            libc::SYS_fsync,
            libc::SYS_fdatasync,
            libc::SYS_fadvise64,
            libc::SYS_readlinkat,
            libc::SYS_faccessat,
            libc::SYS_faccessat2,
            libc::SYS_getcwd,
            libc::SYS_getdents64,
            libc::SYS_unlinkat,
            libc::SYS_renameat,
            libc::SYS_renameat2,
            libc::SYS_dup,
            libc::SYS_dup3,
            libc::SYS_pipe2,
            libc::SYS_ppoll,
            libc::SYS_eventfd2,
            libc::SYS_epoll_create1,
            libc::SYS_epoll_ctl,
            libc::SYS_epoll_pwait,
        ],
    );
    allow(rules, LEGACY);
}

/// The daemon's ioctls and Unix sockets.
fn daemon_sockets(rules: &mut Rules, daemon: Daemon) {
    // Descriptor flags and terminals only; the FUSE device's clone.
    let mut ioctls = vec![
        when(vec![arg(1, SeccompCmpOp::Eq, libc::FIONBIO)]),
        when(vec![arg(1, SeccompCmpOp::Eq, libc::FIOCLEX)]),
        when(vec![arg(1, SeccompCmpOp::Eq, libc::TCGETS)]),
    ];
    if daemon == Daemon::Mount {
        ioctls.push(when(vec![arg(1, SeccompCmpOp::Eq, FUSE_DEV_IOC_CLONE)]));
    }
    allow_when(rules, libc::SYS_ioctl, ioctls);
    // Unix stream and seqpacket sockets that listen and accept (guests,
    // a taking-over daemon) or are already connected; never `connect`,
    // and `sendto` only without an address, so nothing outside reaches.
    let type_mask = !((libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK) as u64) & 0xffff_ffff;
    allow_when(
        rules,
        libc::SYS_socket,
        [libc::SOCK_STREAM, libc::SOCK_SEQPACKET]
            .into_iter()
            .map(|kind| {
                when(vec![
                    arg(0, SeccompCmpOp::Eq, libc::AF_UNIX as u64),
                    arg(1, SeccompCmpOp::MaskedEq(type_mask), kind as u64),
                ])
            })
            .collect(),
    );
    allow(
        rules,
        &[
            libc::SYS_bind,
            libc::SYS_listen,
            libc::SYS_accept,
            libc::SYS_accept4,
            libc::SYS_recvfrom,
            libc::SYS_recvmsg,
            libc::SYS_sendmsg,
            libc::SYS_shutdown,
            libc::SYS_getsockopt,
            libc::SYS_getsockname,
            libc::SYS_getpeername,
        ],
    );
    allow_when(
        rules,
        libc::SYS_sendto,
        vec![when(vec![arg(4, SeccompCmpOp::Eq, 0)])],
    );
}

/// The keeper's filter (module `keeper`): its requests, unmounting,
/// checking and removing files, and mounting the kernel view (the new
/// mount API only: `mount(2)` stays forbidden).
pub(super) fn keeper() -> Result<BpfProgram, seccompiler::BackendError> {
    let mut rules = Rules::new();
    allow(
        &mut rules,
        &[
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_close,
            libc::SYS_openat,
            libc::SYS_newfstatat,
            libc::SYS_statx,
            libc::SYS_umount2,
            libc::SYS_unlinkat,
            libc::SYS_fstat,
            libc::SYS_fsopen,
            libc::SYS_fsconfig,
            libc::SYS_fsmount,
            libc::SYS_move_mount,
            libc::SYS_statfs,
            libc::SYS_fstatfs,
            libc::SYS_exit,
            libc::SYS_exit_group,
            libc::SYS_rt_sigreturn,
            libc::SYS_restart_syscall,
        ],
    );
    allow(&mut rules, LEGACY);
    #[cfg(target_arch = "x86_64")]
    allow(&mut rules, &[libc::SYS_rmdir]);
    allowlist(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_filters_compile() {
        assert_eq!(server(Daemon::Mount, false).unwrap().len(), 2);
        assert_eq!(server(Daemon::VirtioFs, true).unwrap().len(), 2);
        assert_eq!(fetcher().unwrap().len(), 2);
        assert!(!keeper().unwrap().is_empty());
    }
}
