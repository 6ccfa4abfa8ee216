//! The build script's seccomp filter: no socket that reaches past the
//! sandbox's namespaces.
//!
//! The network namespace is empty, so Internet sockets reach nothing, and
//! it isolates abstract Unix sockets. Pathname Unix sockets it does not:
//! `connect(2)` works on a socket inode on a read-only, `nosuid` bind
//! mount, and the sandbox's `/` is the host's, so masking `/run` leaves
//! every socket elsewhere (`/var/tmp`, `/home`, a database's or mail
//! system's) reachable. Through one a script would talk to a host daemon,
//! relay to the network, or pass its `$NEXUS_OUT` descriptor (`SCM_RIGHTS`)
//! to a process outside that writes the package after the script ended.
//! No mount can hide sockets in a tree the build must read, and Landlock
//! (ABI 7 on Linux 6.18) scopes only abstract sockets. So the script's
//! processes may not make such sockets at all:
//!
//! | call | refused with |
//! |---|---|
//! | `socket(AF_UNIX, …)` | `EACCES` |
//! | `socketpair(…, SOCK_DGRAM or SOCK_RAW, …)` (a datagram socket, which `sendto`/`connect` can still point at any path) | `EACCES` |
//! | `socket` of a family other than `AF_INET`, `AF_INET6`, `AF_NETLINK` (which the namespace confines): `AF_VSOCK` reaches the hypervisor's host, `AF_BLUETOOTH` the radio | `EAFNOSUPPORT` |
//! | `io_uring_setup` (its `IORING_OP_SOCKET` and `IORING_OP_CONNECT` make and connect sockets past any filter) | `ENOSYS` |
//!
//! `socketpair(AF_UNIX, SOCK_STREAM or SOCK_SEQPACKET)`, a pipe between
//! the build's own processes that can never be connected elsewhere
//! (`EISCONN`), still works, descriptors passed over it included. What
//! this costs: programs that talk over a named Unix socket inside the
//! build (a test suite's own server in `/tmp`, Python's `forkserver`
//! start method, `dbus-launch`) fail there; `syslog(3)` and nscd lookups
//! fall back or stay silent, as on a host without those daemons.
//!
//! Everything else is allowed: a build runs arbitrary programs, and the
//! rest of the confinement is the namespaces'. The family and type are
//! `int`s, compared on their low 32 bits only (the kernel ignores the
//! upper half of the register, so a filter comparing all 64 would let
//! `0x1_0000_0001` through as `AF_UNIX`). On x86_64 the x32 numbers of
//! the same calls (`__X32_SYSCALL_BIT`) are refused alike, and a system
//! call of another ABI (i386's `int 0x80`, whose `socketcall` hides its
//! arguments in memory) kills the process, as `seccompiler` compiles
//! every filter: 32-bit x86 programs cannot run in the build sandbox.

use std::collections::BTreeMap;

use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule,
};

/// The x32 ABI's bit in a system call number: the same calls made
/// through it must be refused alike.
#[cfg(target_arch = "x86_64")]
const ABIS: &[i64] = &[0, 0x4000_0000];
#[cfg(not(target_arch = "x86_64"))]
const ABIS: &[i64] = &[0];

/// `SOCK_TYPE_MASK` (linux/net.h): the type within `socket(2)`'s and
/// `socketpair(2)`'s second argument, the rest being `SOCK_CLOEXEC` and
/// `SOCK_NONBLOCK` (anything else is `EINVAL`).
const SOCK_TYPE_MASK: u64 = 0xf;

/// The families the empty network namespace confines.
const NAMESPACED: &[libc::c_int] = &[libc::AF_INET, libc::AF_INET6, libc::AF_NETLINK];

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

/// Argument `index`'s low 32 bits compared with `value`.
fn int_arg(index: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, BackendError> {
    SeccompCondition::new(index, SeccompCmpArgLen::Dword, op, value)
}

/// Adds `rules` for `call` under every ABI's number of it.
fn add(rules: &mut Rules, call: libc::c_long, alternatives: Vec<SeccompRule>) {
    for abi in ABIS {
        rules.insert(abi | call, alternatives.clone());
    }
}

/// A filter whose matching calls fail with `errno`; every other call is
/// allowed.
fn refusing(rules: Rules, errno: i32) -> Result<BpfProgram, BackendError> {
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|_| BackendError::InvalidTargetArch(std::env::consts::ARCH.into()))?;
    SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno as u32),
        arch,
    )?
    .try_into()
}

/// The filters, in any order (no call matches two of them).
pub fn programs() -> Result<Vec<BpfProgram>, BackendError> {
    // EACCES: Unix sockets that could be pointed at a host path.
    let mut unix = Rules::new();
    add(
        &mut unix,
        libc::SYS_socket,
        vec![SeccompRule::new(vec![int_arg(
            0,
            SeccompCmpOp::Eq,
            libc::AF_UNIX as u64,
        )?])?],
    );
    // Any type but the connected-for-good stream and seqpacket: listed
    // whole, so that a type the kernel adds later is refused too.
    let mut datagram = Vec::new();
    for kind in 0..=SOCK_TYPE_MASK {
        if kind == libc::SOCK_STREAM as u64 || kind == libc::SOCK_SEQPACKET as u64 {
            continue;
        }
        datagram.push(SeccompRule::new(vec![int_arg(
            1,
            SeccompCmpOp::MaskedEq(SOCK_TYPE_MASK),
            kind,
        )?])?);
    }
    add(&mut unix, libc::SYS_socketpair, datagram);

    // EAFNOSUPPORT, which programs take as "not built into this kernel":
    // families the network namespace does not confine.
    let mut others = Vec::new();
    for family in NAMESPACED.iter().chain(&[libc::AF_UNIX]) {
        others.push(int_arg(0, SeccompCmpOp::Ne, *family as u64)?);
    }
    let mut families = Rules::new();
    add(
        &mut families,
        libc::SYS_socket,
        vec![SeccompRule::new(others)?],
    );

    // ENOSYS, on which io_uring's users fall back to plain system calls.
    let mut uring = Rules::new();
    for call in [
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
    ] {
        add(&mut uring, call, Vec::new());
    }

    Ok(vec![
        refusing(unix, libc::EACCES)?,
        refusing(families, libc::EAFNOSUPPORT)?,
        refusing(uring, libc::ENOSYS)?,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `probe` in a forked child under the filters; returns its exit
    /// code (the probe's own, or 100 + a signal).
    fn filtered(probe: fn() -> i32) -> i32 {
        let programs = programs().unwrap();
        // SAFETY: the child makes only system calls, then _exits.
        match unsafe { libc::fork() } {
            0 => {
                // SAFETY: prctl and seccomp on filters we own.
                unsafe {
                    libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                    for p in &programs {
                        if seccompiler::apply_filter(p).is_err() {
                            libc::_exit(99);
                        }
                    }
                    libc::_exit(probe())
                }
            }
            pid => {
                assert!(pid > 0, "fork failed");
                let mut status = 0;
                // SAFETY: waiting for our child.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                if libc::WIFSIGNALED(status) {
                    100 + libc::WTERMSIG(status)
                } else {
                    libc::WEXITSTATUS(status)
                }
            }
        }
    }

    /// A raw system call's errno, or 0 on success.
    fn errno_of(rc: libc::c_long) -> i32 {
        if rc < 0 {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
        } else {
            // SAFETY: closing what the call returned.
            unsafe { libc::close(rc as i32) };
            0
        }
    }

    fn socket(family: libc::c_long, kind: libc::c_long) -> i32 {
        // SAFETY: socket(2) with integer arguments.
        errno_of(unsafe { libc::syscall(libc::SYS_socket, family, kind, 0) })
    }

    fn socketpair(kind: libc::c_long) -> i32 {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: socketpair(2) into an array we own.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_socketpair,
                libc::AF_UNIX as libc::c_long,
                kind,
                0,
                fds.as_mut_ptr(),
            )
        };
        if rc < 0 {
            return errno_of(rc);
        }
        // SAFETY: closing the pair.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        0
    }

    #[test]
    fn unix_and_unconfined_sockets_are_refused_pipes_between_processes_are_not() {
        // Each probe returns the number of the first check that failed, 0
        // when all hold.
        fn probe() -> i32 {
            let (unix, stream) = (
                libc::AF_UNIX as libc::c_long,
                libc::SOCK_STREAM as libc::c_long,
            );
            let checks = [
                socket(unix, stream) == libc::EACCES,
                socket(
                    unix,
                    libc::SOCK_DGRAM as libc::c_long | libc::SOCK_CLOEXEC as libc::c_long,
                ) == libc::EACCES,
                // The upper half of the register is not the kernel's int.
                socket(0x1_0000_0000 | unix, stream) == libc::EACCES,
                socket(libc::AF_VSOCK as libc::c_long, stream) == libc::EAFNOSUPPORT,
                socket(libc::AF_INET as libc::c_long, stream) == 0,
                socket(
                    libc::AF_NETLINK as libc::c_long,
                    libc::SOCK_RAW as libc::c_long,
                ) == 0,
                socketpair(stream) == 0,
                socketpair(
                    libc::SOCK_SEQPACKET as libc::c_long | libc::SOCK_NONBLOCK as libc::c_long,
                ) == 0,
                socketpair(libc::SOCK_DGRAM as libc::c_long) != 0,
                socketpair(libc::SOCK_RAW as libc::c_long) != 0,
                // SAFETY: io_uring_setup with a null parameter block
                // fails before reading it, if it is not refused.
                errno_of(unsafe { libc::syscall(libc::SYS_io_uring_setup, 1, 0) }) == libc::ENOSYS,
            ];
            checks.iter().position(|ok| !ok).map_or(0, |i| i as i32 + 1)
        }
        assert_eq!(filtered(probe), 0, "check failed (1-based)");
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn x32_numbers_are_refused_too() {
        // This kernel may have no x32 (every such call is ENOSYS): look
        // for the comparisons in each filter instead.
        let programs = programs().unwrap();
        let compares = |p: &BpfProgram, nr: i64| {
            p.iter().any(|i| i.code == 0x15 && i64::from(i.k) == nr) // BPF_JMP | BPF_JEQ | BPF_K
        };
        for (p, call) in programs.iter().zip([
            libc::SYS_socketpair,
            libc::SYS_socket,
            libc::SYS_io_uring_setup,
        ]) {
            assert!(compares(p, call) && compares(p, 0x4000_0000 | call));
        }
        assert!(compares(&programs[0], 0x4000_0000 | libc::SYS_socket));
    }
}
