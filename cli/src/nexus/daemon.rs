//! Becoming a daemon with a readiness report.
//!
//! `nexus mount` must return only once the mount is usable, and with the
//! daemon's error if it is not. So the process forks first (while it still
//! has a single thread, as `fork` requires) and the parent waits on a pipe:
//! the daemon writes `ok` and a message once the mount is ready, or `error`
//! and the reason, and closes the pipe. The daemon starts a new session and
//! points its standard streams at `/dev/null`, so that nothing waiting for
//! the parent's output (a shell's `$(…)`, a test harness) also waits for the
//! daemon; stderr is kept when it is systemd's journal stream (the daemon
//! logs there).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{Context, Result, bail};

/// Which side of the fork this is.
pub enum Role {
    /// The original process; the daemon (`pid`) reported `message` on
    /// success.
    Parent {
        /// The daemon's report.
        message: String,
        /// The daemon's pid.
        pid: i32,
    },
    /// The daemon; it must report through [`Ready`].
    Daemon(Ready),
}

/// The daemon's end of the readiness pipe.
pub struct Ready {
    pipe: Option<File>,
}

impl Ready {
    fn send(&mut self, status: &str, message: &str) {
        if let Some(mut pipe) = self.pipe.take() {
            // If the parent is gone there is nobody left to tell.
            let _ = pipe.write_all(format!("{status}\n{message}").as_bytes());
        }
    }

    /// Reports that the mount is ready; the parent prints `message` and
    /// exits with success.
    pub fn ok(&mut self, message: &str) {
        self.send("ok", message);
    }

    /// Reports a failure (only the first report counts).
    pub fn fail(&mut self, message: &str) {
        self.send("error", message);
    }
}

fn pipe() -> Result<(File, File)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("creating a pipe");
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((File::from(r), File::from(w)))
}

/// Points stdin, stdout and (unless `keep_stderr`) stderr at `/dev/null`.
fn detach_stdio(keep_stderr: bool) -> Result<()> {
    let null = File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .context("opening /dev/null")?;
    let last = if keep_stderr { 2 } else { 3 };
    for fd in 0..last {
        // SAFETY: dup2 onto the standard descriptors, which we own.
        if unsafe { libc::dup2(null.as_raw_fd(), fd) } < 0 {
            return Err(std::io::Error::last_os_error()).context("redirecting stdio");
        }
    }
    Ok(())
}

/// Forks. Must be called while the process has one thread. The parent waits
/// until the daemon reports and returns [`Role::Parent`] on success or the
/// daemon's error; the daemon gets [`Role::Daemon`], in a new session, with
/// `/` as its working directory and stdio on `/dev/null` (stderr kept if
/// `keep_stderr`).
pub fn daemonize(keep_stderr: bool) -> Result<Role> {
    let (mut read, write) = pipe()?;
    // SAFETY: the process is single-threaded here (nothing has spawned a
    // thread yet), so the child may go on running arbitrary code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error()).context("fork");
    }
    if pid == 0 {
        drop(read);
        let mut ready = Ready { pipe: Some(write) };
        // SAFETY: setsid and chdir have no memory-safety preconditions.
        unsafe {
            libc::setsid();
            libc::chdir(c"/".as_ptr());
        }
        if let Err(e) = detach_stdio(keep_stderr) {
            ready.fail(&format!("{e:#}"));
            std::process::exit(crate::exit::ERROR);
        }
        return Ok(Role::Daemon(ready));
    }
    drop(write);
    let mut report = String::new();
    let read_result = read.read_to_string(&mut report);
    let (status, message) = report.split_once('\n').unwrap_or((report.as_str(), ""));
    match (read_result, status) {
        (Ok(_), "ok") => Ok(Role::Parent {
            message: message.to_string(),
            pid,
        }),
        (Ok(_), "error") => bail!("{message}"),
        _ => {
            let mut status = 0;
            // SAFETY: waitpid on our own child; WNOHANG never blocks.
            let reaped = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid;
            let how = if reaped && libc::WIFSIGNALED(status) {
                format!("was killed by signal {}", libc::WTERMSIG(status))
            } else {
                "exited".to_string()
            };
            bail!("the mount daemon (pid {pid}) {how} before the mount was ready")
        }
    }
}

/// Runs `serve`, a daemon's work: in this process when `fork` is false
/// (`--foreground`, or under systemd, which wants its main process to be
/// the daemon), else in a forked daemon, this process waiting until it
/// reports ready. Returns the daemon's report (message and pid) in the
/// process that forked; the daemon itself never returns.
pub fn run_daemon(
    fork: bool,
    keep_stderr: bool,
    serve: impl FnOnce(Option<&mut Ready>) -> Result<()>,
) -> Result<Option<(String, i32)>> {
    if !fork {
        serve(None)?;
        return Ok(None);
    }
    match daemonize(keep_stderr)? {
        Role::Parent { message, pid } => Ok(Some((message, pid))),
        Role::Daemon(mut ready) => {
            let outcome = serve(Some(&mut ready));
            if let Err(e) = &outcome {
                ready.fail(&format!("{e:#}"));
                tracing::error!("{e:#}");
            }
            std::process::exit(if outcome.is_ok() {
                crate::exit::OK
            } else {
                crate::exit::ERROR
            });
        }
    }
}
