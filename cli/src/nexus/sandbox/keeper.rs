//! The keeper: a small process, forked before the daemon confines itself,
//! that does for it what a confined process no longer can, and tidies up
//! after it however it ends.
//!
//! A Landlock domain forbids unmounting (any change of the mount tree),
//! and the sandbox user may not remove files from root's directories, so
//! the confined daemon asks the keeper, over a socket pair, to
//!
//! - unmount one of its mounts (SIGTERM), answering whether it was clean
//!   or detached because busy;
//! - finish: remove the vhost-user socket, the pid file and the image's
//!   scratch directory once empty, then exit.
//!
//! When the daemon's end of the socket closes without a `finish` (it was
//! killed, or a forbidden system call ended it), the keeper detaches the
//! mounts it still has and finishes: no dead mount ("transport endpoint
//! is not connected") is left behind. Under systemd with a descriptor
//! store (`FDSTORE`), it leaves them instead: the store keeps their
//! connections, and the daemon systemd restarts resumes them. A daemon
//! that hands its mounts to a successor finishes first.
//!
//! The keeper parses nothing but one- and two-byte requests from the
//! daemon. It keeps only the capabilities it needs (`CAP_SYS_ADMIN` to
//! unmount, `CAP_DAC_OVERRIDE` to remove files in directories root may not
//! own), runs under its own small seccomp allowlist, and holds no other
//! descriptor (not `/dev/fuse`: the connection ends with the daemon). Each
//! file is checked to be still the daemon's before it is removed: a mount
//! by its device number, the socket by device and inode, the pid file by
//! its content.
//!
//! It is forked from a process that has threads, so between `fork` and
//! `_exit` it makes raw system calls only, on data prepared beforehand.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use nexus_fs::fuse::Unmounted;

/// A mount the keeper unmounts: its path and the identity (unique id,
/// device number) of the file system mounted there by the daemon.
#[derive(Debug)]
pub(super) struct KeptMount {
    pub path: CString,
    pub dev: (u32, u32),
    /// The mount's unique id (`STATX_MNT_ID_UNIQUE`, Linux 6.8), never
    /// reused, unlike the device number, which a mount made at the same
    /// path right after this one is gone often gets again.
    pub unique_id: Option<u64>,
}

/// A file the keeper removes when it is still the one identified.
#[derive(Debug)]
pub(super) struct KeptFile {
    pub path: CString,
    pub dev: u64,
    pub ino: u64,
}

/// How a non-root daemon's mounts are unmounted: the setuid helper.
#[derive(Debug)]
pub(super) struct Fusermount {
    pub program: CString,
}

/// Everything the keeper does, prepared before the fork.
#[derive(Debug, Default)]
pub(super) struct KeeperPlan {
    /// The daemon's mounts, in the order to unmount them (the Index first).
    pub mounts: Vec<KeptMount>,
    /// Through `fusermount3` when not root.
    pub fusermount: Option<Fusermount>,
    /// The vhost-user socket.
    pub socket: Option<KeptFile>,
    /// The pid file and the content it must still have.
    pub pid_file: Option<(CString, Vec<u8>)>,
    /// A scratch directory removed (once the daemon emptied it).
    pub scratch: Option<CString>,
    /// Capabilities kept (root only).
    pub keep_caps: Option<(u64, u32)>,
    /// Its seccomp filter (root only: installing one without
    /// `no_new_privs` needs `CAP_SYS_ADMIN`, and `no_new_privs` would stop
    /// the setuid `fusermount3`).
    pub filter: Option<seccompiler::BpfProgram>,
    /// Leave the mounts when the daemon dies: systemd keeps their
    /// connections and restarts the daemon on them.
    pub leave_mounts: bool,
    /// The kernel view (`--kernel-metadata`), mounted on request, and the
    /// descriptor of the FUSE mount's root it reads contents from.
    pub kernel_view: Option<(crate::nexus::kernel_view::Plan, RawFd)>,
}

/// Requests and answers.
const UNMOUNT: u8 = b'U';
const FINISH: u8 = b'F';
const SHOW_KERNEL_VIEW: u8 = b'V';
const CLEAN: u8 = b'C';
const DETACHED: u8 = b'D';
const FAILED: u8 = b'E';
const FINISHED: u8 = b'K';
/// The descriptor the keeper talks on.
const KEEPER_FD: RawFd = 3;
/// The FUSE mount's root, for the kernel view.
const DATA_FD: RawFd = 4;

/// The daemon's side: a running keeper.
#[derive(Debug)]
pub(super) struct Keeper {
    socket: Mutex<Option<OwnedFd>>,
    pid: libc::pid_t,
}

fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two new descriptors into the array.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both are new and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Forks the keeper. The plan's data is only read by the child.
pub(super) fn spawn(plan: &KeeperPlan) -> io::Result<Keeper> {
    let (ours, theirs) = socketpair()?;
    // SAFETY: the child runs `keeper_main`, which makes raw system calls
    // only on memory prepared before the fork, and never returns.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        keeper_main(plan, theirs.as_raw_fd());
    }
    drop(theirs);
    Ok(Keeper {
        socket: Mutex::new(Some(ours)),
        pid,
    })
}

impl Keeper {
    /// The keeper's process id.
    pub(super) fn pid(&self) -> libc::pid_t {
        self.pid
    }

    fn request(&self, message: &[u8]) -> io::Result<Vec<u8>> {
        let guard = self.socket.lock().unwrap_or_else(|p| p.into_inner());
        let Some(socket) = guard.as_ref() else {
            return Err(io::Error::other("the keeper has finished"));
        };
        let fd = socket.as_raw_fd();
        // SAFETY: write and read on our descriptor, into buffers we own.
        let sent = unsafe { libc::write(fd, message.as_ptr().cast(), message.len()) };
        if sent != message.len() as isize {
            return Err(io::Error::other("the keeper process is gone"));
        }
        let mut answer = [0u8; 8];
        loop {
            let got = unsafe { libc::read(fd, answer.as_mut_ptr().cast(), answer.len()) };
            if got > 0 {
                return Ok(answer[..got as usize].to_vec());
            }
            if got < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(io::Error::other("the keeper process is gone"));
        }
    }

    /// Has the keeper unmount mount `index` of its plan.
    pub(super) fn unmount(&self, index: usize) -> io::Result<Unmounted> {
        let index = u8::try_from(index).map_err(io::Error::other)?;
        let answer = self.request(&[UNMOUNT, index])?;
        match answer.as_slice() {
            [CLEAN] => Ok(Unmounted::Clean),
            [DETACHED] => Ok(Unmounted::Detached),
            [FAILED, errno @ ..] if errno.len() == 4 => {
                Err(io::Error::from_raw_os_error(i32::from_le_bytes([
                    errno[0], errno[1], errno[2], errno[3],
                ])))
            }
            _ => Err(io::Error::other("the keeper answered nonsense")),
        }
    }

    /// Has the keeper show the kernel view's images (written beforehand;
    /// the Index's only `with_index`).
    pub(super) fn show_kernel_view(&self, with_index: bool) -> io::Result<()> {
        match self
            .request(&[SHOW_KERNEL_VIEW, u8::from(with_index)])?
            .as_slice()
        {
            [CLEAN] => Ok(()),
            [FAILED, errno @ ..] if errno.len() == 4 => {
                Err(io::Error::from_raw_os_error(i32::from_le_bytes([
                    errno[0], errno[1], errno[2], errno[3],
                ])))
            }
            _ => Err(io::Error::other("the keeper answered nonsense")),
        }
    }

    /// Has the keeper remove the socket, pid file and scratch directory and
    /// exit, and reaps it. Later calls do nothing.
    pub(super) fn finish(&self) {
        if let Err(e) = self.request(&[FINISH]) {
            tracing::debug!("asking the keeper to finish: {e}");
        }
        let mut guard = self.socket.lock().unwrap_or_else(|p| p.into_inner());
        if guard.take().is_some() {
            let mut status = 0;
            // SAFETY: waitpid on our own child.
            unsafe { libc::waitpid(self.pid, &mut status, 0) };
        }
    }
}

// ---- the keeper process: raw system calls only from here on ----

fn errno() -> i32 {
    // SAFETY: this thread's errno slot.
    unsafe { *libc::__errno_location() }
}

fn exit(code: i32) -> ! {
    // SAFETY: ends the process without running anything of the parent's.
    unsafe { libc::_exit(code) }
}

fn reply(message: &[u8]) {
    // SAFETY: write from a buffer we own.
    unsafe { libc::write(KEEPER_FD, message.as_ptr().cast(), message.len()) };
}

fn keeper_main(plan: &KeeperPlan, socket: RawFd) -> ! {
    // SAFETY (whole function): system calls on integers, on memory the plan
    // owns, or on buffers on this stack.
    unsafe {
        // Both are first copied above the numbers they go to: either may
        // be at the other's (a descriptor systemd passed sits at 3), and
        // the first dup2 would close it.
        let above = |fd: RawFd| libc::fcntl(fd, libc::F_DUPFD, DATA_FD + 1);
        let socket = above(socket);
        let data = plan.kernel_view.as_ref().map(|(_, data)| above(*data));
        if socket < 0 || libc::dup2(socket, KEEPER_FD) != KEEPER_FD {
            exit(1);
        }
        if let Some(data) = data
            && (data < 0 || libc::dup2(data, DATA_FD) != DATA_FD)
        {
            exit(1);
        }
        // Every other descriptor the daemon had (the FUSE device above
        // all, and the pipe its parent waits on for EOF) is closed; stdio
        // stays, pointing where the daemon's does.
        let first = match plan.kernel_view {
            Some(_) => DATA_FD + 1,
            None => KEEPER_FD + 1,
        };
        if libc::syscall(libc::SYS_close_range, first, u32::MAX, 0) != 0 {
            for fd in first..4096 {
                libc::close(fd);
            }
        }
        libc::prctl(libc::PR_SET_NAME, c"nexus-keeper".as_ptr(), 0, 0, 0);
        if let Some((keep, last_cap)) = plan.keep_caps
            && (super::threads::drop_bounding_set(keep, last_cap).is_err()
                || super::threads::set_capabilities(keep).is_err())
        {
            exit(1);
        }
        if let Some(filter) = &plan.filter
            && seccompiler::apply_filter(filter).is_err()
        {
            exit(1);
        }
    }
    let mut unmounted = [false; 8];
    // Whether the main mount's unmount began, which closes DATA_FD.
    let mut data_closed = false;
    let mut request = [0u8; 8];
    loop {
        // SAFETY: read into a buffer on this stack.
        let got = unsafe { libc::read(KEEPER_FD, request.as_mut_ptr().cast(), request.len()) };
        if got < 0 && errno() == libc::EINTR {
            continue;
        }
        match (got, request[0]) {
            (2.., UNMOUNT) => {
                let index = usize::from(request[1]);
                match plan.mounts.get(index) {
                    Some(mount) => {
                        if plan
                            .kernel_view
                            .as_ref()
                            .is_some_and(|(view, _)| view.main.path == mount.path)
                        {
                            data_closed = true;
                        }
                        let answer = unmount(plan, mount, false);
                        if let Some(done) = unmounted.get_mut(index) {
                            *done = answer.is_ok();
                        }
                        match answer {
                            Ok(Unmounted::Clean) => reply(&[CLEAN]),
                            Ok(Unmounted::Detached) => reply(&[DETACHED]),
                            Err(e) => {
                                let e = e.to_le_bytes();
                                reply(&[FAILED, e[0], e[1], e[2], e[3]]);
                            }
                        }
                    }
                    None => {
                        let e = libc::EINVAL.to_le_bytes();
                        reply(&[FAILED, e[0], e[1], e[2], e[3]]);
                    }
                }
            }
            (2.., SHOW_KERNEL_VIEW) => {
                let answer = match &plan.kernel_view {
                    // Once the main mount's unmount began, its root
                    // (DATA_FD) is closed: the number could name another
                    // file by now.
                    Some(_) if data_closed => Err(libc::EBADF),
                    // SAFETY: DATA_FD was duplicated from the plan's
                    // descriptor above and stays open until then.
                    Some((view, _)) => crate::nexus::kernel_view::show(
                        view,
                        unsafe { std::os::fd::BorrowedFd::borrow_raw(DATA_FD) },
                        request[1] != 0,
                    ),
                    None => Err(libc::EINVAL),
                };
                match answer {
                    Ok(()) => reply(&[CLEAN]),
                    Err(e) => {
                        let e = e.to_le_bytes();
                        reply(&[FAILED, e[0], e[1], e[2], e[3]]);
                    }
                }
            }
            (1.., FINISH) => {
                finish(plan);
                reply(&[FINISHED]);
                exit(0);
            }
            (1.., _) => {}
            _ => {
                // The daemon is gone without finishing: leave no dead
                // mount and none of its files behind; unless systemd keeps
                // the mounts' connections for the daemon it restarts.
                for (index, mount) in plan.mounts.iter().enumerate() {
                    if plan.leave_mounts {
                        break;
                    }
                    if !unmounted.get(index).copied().unwrap_or(false) {
                        let _ = unmount(plan, mount, true);
                    }
                }
                finish(plan);
                exit(0);
            }
        }
    }
}

/// Whether the file system at `mount.path` is still the daemon's: the
/// same mount (its unique id), or on older kernels the same device number.
/// A path that cannot be examined is taken to be the daemon's dead mount.
fn still_ours(mount: &KeptMount) -> bool {
    if let (Some(ours), Ok(Some(there))) = (
        mount.unique_id,
        crate::nexus::kernel_view::unique_mount_id(rustix::fs::CWD, &mount.path),
    ) {
        return ours == there;
    }
    // SAFETY: statx into a zeroed structure on this stack.
    unsafe {
        let mut stx: libc::statx = std::mem::zeroed();
        let rc = libc::statx(
            libc::AT_FDCWD,
            mount.path.as_ptr(),
            libc::AT_STATX_DONT_SYNC | libc::AT_SYMLINK_NOFOLLOW | libc::AT_NO_AUTOMOUNT,
            libc::STATX_TYPE,
            &mut stx,
        );
        rc != 0 || (stx.stx_dev_major, stx.stx_dev_minor) == mount.dev
    }
}

/// Unmounts one mount: cleanly, or detached when busy (at once when
/// `lazy`). Errors are errno values.
fn unmount(plan: &KeeperPlan, mount: &KeptMount, lazy: bool) -> Result<Unmounted, i32> {
    if let Some((view, _)) = &plan.kernel_view {
        // The kernel view covers the FUSE mount: uncover it first.
        if view.main.path == mount.path {
            crate::nexus::kernel_view::remove(&view.main, true)?;
            // The last reference this process holds on the FUSE mount:
            // kept, it would keep the mount busy, and alive once detached.
            // SAFETY: closing our own descriptor; a second close fails
            // harmlessly with EBADF (the keeper opens nothing else).
            unsafe { libc::close(DATA_FD) };
        } else if let Some(index) = view.index.as_ref().filter(|i| i.path == mount.path) {
            crate::nexus::kernel_view::remove(index, false)?;
        }
    }
    if !still_ours(mount) {
        return Err(libc::ESTALE);
    }
    if let Some(fusermount) = &plan.fusermount {
        if !lazy && run_fusermount(fusermount, mount, c"-u") {
            return Ok(Unmounted::Clean);
        }
        if run_fusermount(fusermount, mount, c"-uz") {
            return Ok(Unmounted::Detached);
        }
        return Err(libc::EPERM);
    }
    // SAFETY: umount2 on a path the plan owns.
    unsafe {
        if !lazy && libc::umount2(mount.path.as_ptr(), 0) == 0 {
            return Ok(Unmounted::Clean);
        }
        if !lazy && errno() != libc::EBUSY {
            return Err(errno());
        }
        if libc::umount2(mount.path.as_ptr(), libc::MNT_DETACH) == 0 {
            return Ok(Unmounted::Detached);
        }
    }
    Err(errno())
}

/// Runs `fusermount3 FLAG -- PATH` and waits for it; true on success.
fn run_fusermount(fusermount: &Fusermount, mount: &KeptMount, flag: &std::ffi::CStr) -> bool {
    let argv = [
        fusermount.program.as_ptr(),
        flag.as_ptr(),
        c"--".as_ptr(),
        mount.path.as_ptr(),
        std::ptr::null(),
    ];
    let envp = [std::ptr::null::<libc::c_char>()];
    // SAFETY: the child only calls execve and _exit on prepared arrays.
    unsafe {
        let pid = libc::fork();
        if pid == 0 {
            libc::execve(argv[0], argv.as_ptr(), envp.as_ptr());
            libc::_exit(127);
        }
        if pid < 0 {
            return false;
        }
        let mut status = 0;
        while libc::waitpid(pid, &mut status, 0) < 0 && errno() == libc::EINTR {}
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
    }
}

/// Removes the socket and pid file if they are still the daemon's, and
/// the scratch directory if it is empty.
fn finish(plan: &KeeperPlan) {
    // SAFETY: lstat, open, read and unlink on paths the plan owns, into
    // buffers on this stack.
    unsafe {
        if let Some(socket) = &plan.socket {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::lstat(socket.path.as_ptr(), &mut st) == 0
                && st.st_dev == socket.dev
                && st.st_ino == socket.ino
            {
                libc::unlink(socket.path.as_ptr());
            }
        }
        if let Some((path, content)) = &plan.pid_file {
            let fd = libc::open(
                path.as_ptr(),
                libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            );
            if fd >= 0 {
                let mut buf = [0u8; 32];
                let got = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
                libc::close(fd);
                if got >= 0 && &buf[..got as usize] == content.as_slice() {
                    libc::unlink(path.as_ptr());
                }
            }
        }
        if let Some(dir) = &plan.scratch {
            libc::rmdir(dir.as_ptr());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nexus::kernel_view::{Layer, Plan, unique_mount_id};
    use std::os::fd::AsFd;

    fn c(path: &std::path::Path) -> CString {
        CString::new(path.as_os_str().as_encoded_bytes()).unwrap()
    }

    /// Unmounting the main mount closes the FUSE root the keeper shows
    /// views over: a show request after that is refused before anything
    /// is looked at, not served from whatever file has taken the
    /// descriptor's number. (Unmounting the Index alone leaves it open:
    /// `kernel_view::umount_of_the_index_view_takes_the_index_off_for_good`
    /// shows views after it.)
    #[test]
    fn no_view_is_shown_once_a_mount_is_unmounted() {
        if !crate::root_or_skip("mounting") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let point = dir.path().join("mnt");
        std::fs::create_dir(&point).unwrap();
        let path = c(&point);
        // SAFETY: mount(2) of a tmpfs on our own directory.
        let rc = unsafe {
            libc::mount(
                c"none".as_ptr(),
                path.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        let root = std::fs::File::open(&point).unwrap();
        let st = rustix::fs::stat(&point).unwrap();
        let mount = KeptMount {
            path: path.clone(),
            dev: (rustix::fs::major(st.st_dev), rustix::fs::minor(st.st_dev)),
            unique_id: unique_mount_id(root.as_fd(), c"").unwrap(),
        };
        let view = Plan {
            main: Layer {
                path: path.clone(),
                image: c(&dir.path().join("main.erofs")),
                fuse: None,
                predecessor: None,
            },
            index: None,
            suid: false,
            image_owner: 0,
            image_dir: c(dir.path()),
            decoded: None,
        };
        let plan = KeeperPlan {
            mounts: vec![mount],
            fusermount: None,
            socket: None,
            pid_file: None,
            scratch: None,
            keep_caps: None,
            filter: None,
            leave_mounts: false,
            kernel_view: Some((view, std::os::fd::AsRawFd::as_raw_fd(&root))),
        };
        let keeper = spawn(&plan).unwrap();
        drop(root);
        assert!(matches!(keeper.unmount(0), Ok(Unmounted::Clean)));
        let refused = keeper.show_kernel_view(false).unwrap_err();
        assert_eq!(refused.raw_os_error(), Some(libc::EBADF), "{refused}");
        keeper.finish();
    }
}
