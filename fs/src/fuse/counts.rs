//! How many requests of each kind the kernel sent a mount: one relaxed
//! atomic increment per request, read while the mount runs (the
//! [`REQUESTS_XATTR`] attribute of its root) and logged when it ends.
//!
//! The point is to see what a workload costs the daemon: a warm program
//! start should send nothing but the requests the kernel forwards whatever
//! the daemon answers (`IOCTL`, `STATFS`), and a test can assert it.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// The extended attribute of a mount's root that answers the request
/// counts, as one JSON object `{"LOOKUP": 12, ...}` (opcodes in the
/// kernel's spelling, without the `FUSE_` prefix; kinds never sent are
/// left out). Not listed by `listxattr`; answered only to root and the
/// user that started the daemon (not the sandbox user a confined daemon
/// serves as, `nobody` when no `nexus` account exists, which other
/// services and build scripts may share). Reading it is not counted.
pub const REQUESTS_XATTR: &[u8] = b"user.nexus.requests";

/// The request kinds counted: every request the kernel may send a
/// read-only mount that reaches the file system (`INIT`, `DESTROY`,
/// `INTERRUPT` and opcodes `fuser` does not know are answered by `fuser`
/// itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Op {
    /// `FUSE_LOOKUP`
    Lookup,
    /// `FUSE_FORGET`, one per inode forgotten (also those of a
    /// `FUSE_BATCH_FORGET`, which `fuser` hands over one by one)
    Forget,
    /// `FUSE_GETATTR`
    Getattr,
    /// `FUSE_READLINK`
    Readlink,
    /// `FUSE_OPEN`
    Open,
    /// `FUSE_READ`
    Read,
    /// `FUSE_FLUSH`
    Flush,
    /// `FUSE_RELEASE`
    Release,
    /// `FUSE_OPENDIR`
    Opendir,
    /// `FUSE_READDIR`
    Readdir,
    /// `FUSE_READDIRPLUS`
    Readdirplus,
    /// `FUSE_RELEASEDIR`
    Releasedir,
    /// `FUSE_STATFS`
    Statfs,
    /// `FUSE_GETXATTR`
    Getxattr,
    /// `FUSE_LISTXATTR`
    Listxattr,
    /// `FUSE_ACCESS`
    Access,
    /// `FUSE_IOCTL`
    Ioctl,
    /// `FUSE_LSEEK`
    Lseek,
    /// `FUSE_POLL`
    Poll,
    /// `FUSE_FSYNC`
    Fsync,
    /// `FUSE_FSYNCDIR`
    Fsyncdir,
    /// `FUSE_GETLK`
    Getlk,
    /// `FUSE_SETLK` and `FUSE_SETLKW`
    Setlk,
    /// `FUSE_BMAP`
    Bmap,
}

impl Op {
    /// Every kind, in the order of [`Op`]'s discriminants.
    pub const ALL: [Op; 24] = [
        Op::Lookup,
        Op::Forget,
        Op::Getattr,
        Op::Readlink,
        Op::Open,
        Op::Read,
        Op::Flush,
        Op::Release,
        Op::Opendir,
        Op::Readdir,
        Op::Readdirplus,
        Op::Releasedir,
        Op::Statfs,
        Op::Getxattr,
        Op::Listxattr,
        Op::Access,
        Op::Ioctl,
        Op::Lseek,
        Op::Poll,
        Op::Fsync,
        Op::Fsyncdir,
        Op::Getlk,
        Op::Setlk,
        Op::Bmap,
    ];

    /// The kernel's name of the opcode, without `FUSE_`.
    pub fn name(self) -> &'static str {
        match self {
            Op::Lookup => "LOOKUP",
            Op::Forget => "FORGET",
            Op::Getattr => "GETATTR",
            Op::Readlink => "READLINK",
            Op::Open => "OPEN",
            Op::Read => "READ",
            Op::Flush => "FLUSH",
            Op::Release => "RELEASE",
            Op::Opendir => "OPENDIR",
            Op::Readdir => "READDIR",
            Op::Readdirplus => "READDIRPLUS",
            Op::Releasedir => "RELEASEDIR",
            Op::Statfs => "STATFS",
            Op::Getxattr => "GETXATTR",
            Op::Listxattr => "LISTXATTR",
            Op::Access => "ACCESS",
            Op::Ioctl => "IOCTL",
            Op::Lseek => "LSEEK",
            Op::Poll => "POLL",
            Op::Fsync => "FSYNC",
            Op::Fsyncdir => "FSYNCDIR",
            Op::Getlk => "GETLK",
            Op::Setlk => "SETLK",
            Op::Bmap => "BMAP",
        }
    }
}

/// Requests counted by kind.
#[derive(Debug)]
pub struct RequestCounts {
    counts: [AtomicU64; Op::ALL.len()],
    /// The user the counts are answered to besides root: the effective
    /// user when they were made, before the daemon confined itself.
    owner: u32,
}

impl Default for RequestCounts {
    fn default() -> RequestCounts {
        RequestCounts {
            counts: Default::default(),
            // SAFETY: geteuid has no preconditions.
            owner: unsafe { libc::geteuid() },
        }
    }
}

impl RequestCounts {
    /// Counts one request of kind `op`.
    #[inline]
    pub fn count(&self, op: Op) {
        self.counts[op as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// How many requests of kind `op` were counted.
    pub fn get(&self, op: Op) -> u64 {
        self.counts[op as usize].load(Ordering::Relaxed)
    }

    /// The counts as one JSON object, kinds never sent left out (see
    /// [`REQUESTS_XATTR`]).
    pub fn to_json(&self) -> String {
        let mut out = String::from("{");
        for op in Op::ALL {
            let n = self.get(op);
            if n > 0 {
                if out.len() > 1 {
                    out.push_str(", ");
                }
                let _ = write!(out, "\"{}\": {n}", op.name());
            }
        }
        out.push('}');
        out
    }

    /// The counts as `KIND n` pairs for a log line.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for op in Op::ALL {
            let n = self.get(op);
            if n > 0 {
                if !out.is_empty() {
                    out.push_str(", ");
                }
                let _ = write!(out, "{} {n}", op.name());
            }
        }
        if out.is_empty() {
            out.push_str("none");
        }
        out
    }
}

/// Answers a read of [`REQUESTS_XATTR`] with `counts`: to root and to the
/// user that started the daemon; anyone else (the sandbox user included)
/// is told there is no such attribute (the counts show what other users
/// do).
pub(super) fn reply_counts(
    counts: &RequestCounts,
    req: &fuser::Request,
    size: u32,
    reply: fuser::ReplyXattr,
) {
    if req.uid() != 0 && req.uid() != counts.owner {
        reply.error(fuser::Errno::from_i32(libc::ENODATA));
        return;
    }
    super::reply::reply_xattr(reply, size, counts.to_json().as_bytes());
}

/// The requests a read-only file system never serves, answered as cheaply
/// as a request can be (no lock, no allocation, no log: `fuser`'s defaults
/// log a warning each), and counted. A `Filesystem` impl with a `counts`
/// field of type [`RequestCounts`] invokes it among its methods.
///
/// - `IOCTL`: `ENOTTY`, what a file that is not a terminal answers. The
///   kernel forwards every ioctl it does not handle itself and remembers
///   no answer (an `ENOSYS` is turned into `ENOTTY` each time), so
///   `isatty()` on each opened file (Python does) costs one round trip
///   whatever is answered: the floor of a warm open.
/// - `LSEEK` (`SEEK_DATA`/`SEEK_HOLE`), `POLL`, `FSYNC`, `FSYNCDIR`,
///   `ACCESS`, `BMAP`: `ENOSYS`, which the kernel remembers for the whole
///   mount and then handles them itself.
/// - `GETLK`, `SETLK`: `ENOSYS`; never sent, since no lock support is
///   negotiated (the kernel keeps locks locally).
macro_rules! cheap_answers {
    () => {
        fn ioctl(
            &self,
            _req: &::fuser::Request,
            _ino: ::fuser::INodeNo,
            _fh: ::fuser::FileHandle,
            _flags: ::fuser::IoctlFlags,
            _cmd: u32,
            _in_data: &[u8],
            _out_size: u32,
            reply: ::fuser::ReplyIoctl,
        ) {
            self.counts.count($crate::fuse::Op::Ioctl);
            reply.error(::fuser::Errno::from_i32(::libc::ENOTTY));
        }

        fn lseek(
            &self,
            _req: &::fuser::Request,
            _ino: ::fuser::INodeNo,
            _fh: ::fuser::FileHandle,
            _offset: i64,
            _whence: i32,
            reply: ::fuser::ReplyLseek,
        ) {
            self.counts.count($crate::fuse::Op::Lseek);
            reply.error(::fuser::Errno::from_i32(::libc::ENOSYS));
        }

        fn poll(
            &self,
            _req: &::fuser::Request,
            _ino: ::fuser::INodeNo,
            _fh: ::fuser::FileHandle,
            _ph: ::fuser::PollNotifier,
            _events: ::fuser::PollEvents,
            _flags: ::fuser::PollFlags,
            reply: ::fuser::ReplyPoll,
        ) {
            self.counts.count($crate::fuse::Op::Poll);
            reply.error(::fuser::Errno::from_i32(::libc::ENOSYS));
        }

        fn fsync(
            &self,
            _req: &::fuser::Request,
            _ino: ::fuser::INodeNo,
            _fh: ::fuser::FileHandle,
            _datasync: bool,
            reply: ::fuser::ReplyEmpty,
        ) {
            self.counts.count($crate::fuse::Op::Fsync);
            reply.error(::fuser::Errno::from_i32(::libc::ENOSYS));
        }

        fn fsyncdir(
            &self,
            _req: &::fuser::Request,
            _ino: ::fuser::INodeNo,
            _fh: ::fuser::FileHandle,
            _datasync: bool,
            reply: ::fuser::ReplyEmpty,
        ) {
            self.counts.count($crate::fuse::Op::Fsyncdir);
            reply.error(::fuser::Errno::from_i32(::libc::ENOSYS));
        }

        fn access(
            &self,
            _req: &::fuser::Request,
            _ino: ::fuser::INodeNo,
            _mask: ::fuser::AccessFlags,
            reply: ::fuser::ReplyEmpty,
        ) {
            self.counts.count($crate::fuse::Op::Access);
            reply.error(::fuser::Errno::from_i32(::libc::ENOSYS));
        }

        fn getlk(
            &self,
            _req: &::fuser::Request,
            _ino: ::fuser::INodeNo,
            _fh: ::fuser::FileHandle,
            _lock_owner: ::fuser::LockOwner,
            _start: u64,
            _end: u64,
            _typ: i32,
            _pid: u32,
            reply: ::fuser::ReplyLock,
        ) {
            self.counts.count($crate::fuse::Op::Getlk);
            reply.error(::fuser::Errno::from_i32(::libc::ENOSYS));
        }

        fn setlk(
            &self,
            _req: &::fuser::Request,
            _ino: ::fuser::INodeNo,
            _fh: ::fuser::FileHandle,
            _lock_owner: ::fuser::LockOwner,
            _start: u64,
            _end: u64,
            _typ: i32,
            _pid: u32,
            _sleep: bool,
            reply: ::fuser::ReplyEmpty,
        ) {
            self.counts.count($crate::fuse::Op::Setlk);
            reply.error(::fuser::Errno::from_i32(::libc::ENOSYS));
        }

        fn bmap(
            &self,
            _req: &::fuser::Request,
            _ino: ::fuser::INodeNo,
            _blocksize: u32,
            _idx: u64,
            reply: ::fuser::ReplyBmap,
        ) {
            self.counts.count($crate::fuse::Op::Bmap);
            reply.error(::fuser::Errno::from_i32(::libc::ENOSYS));
        }
    };
}
pub(super) use cheap_answers;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_come_out_by_kernel_name() {
        let counts = RequestCounts::default();
        assert_eq!(counts.to_json(), "{}");
        assert_eq!(counts.summary(), "none");
        counts.count(Op::Lookup);
        counts.count(Op::Lookup);
        counts.count(Op::Ioctl);
        assert_eq!(counts.get(Op::Lookup), 2);
        assert_eq!(counts.to_json(), "{\"LOOKUP\": 2, \"IOCTL\": 1}");
        assert_eq!(counts.summary(), "LOOKUP 2, IOCTL 1");
        for (i, op) in Op::ALL.iter().enumerate() {
            assert_eq!(*op as usize, i, "{op:?} is out of place in Op::ALL");
        }
    }
}
