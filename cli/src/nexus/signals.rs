//! Unmounting (or, for `nexus serve`, removing the socket) on SIGTERM and
//! SIGINT.
//!
//! The signals are blocked in every thread (the mask is set before any
//! thread exists, and threads inherit it) and one thread takes them with
//! `sigwait`, so that unmounting runs as ordinary code, not in a signal
//! handler. The first signal unmounts (detaching a busy mount; with
//! `--index`, both mounts); the sessions then end and the process exits
//! normally. A second signal ends the process at once.

use std::io;

use anyhow::{Context, Result};
use nexus_fs::fuse::Unmounted;

use super::sandbox::Unmount;

/// The signals that end the daemon.
fn termination_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a set we own.
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        set
    }
}

/// Blocks SIGTERM and SIGINT in the calling thread and every thread it
/// creates afterwards. Call before creating any thread.
pub fn block_termination() -> Result<()> {
    let set = termination_set();
    // SAFETY: a valid set; the old mask is not wanted.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc)).context("blocking SIGTERM and SIGINT");
    }
    Ok(())
}

/// Starts the thread that unmounts with each of `unmounters`, in order, on
/// SIGTERM or SIGINT (directly, or through the sandbox's keeper).
pub fn unmount_on_termination(mut unmounters: Vec<Box<dyn Unmount>>) -> Result<()> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let set = termination_set();
            let mut received = 0;
            loop {
                let mut signal = 0;
                // SAFETY: a valid set and an out-parameter we own.
                if unsafe { libc::sigwait(&set, &mut signal) } != 0 {
                    continue;
                }
                received += 1;
                if received > 1 {
                    tracing::warn!("signal {signal} again: exiting without waiting");
                    std::process::exit(crate::exit::ERROR);
                }
                tracing::info!("signal {signal}: unmounting");
                for unmounter in &mut unmounters {
                    match unmounter.unmount() {
                        Ok(Unmounted::Clean) => tracing::info!("unmounted"),
                        Ok(Unmounted::Detached) => tracing::warn!(
                            "the mount is busy: detached it; exiting when its last file is closed"
                        ),
                        Err(e) => tracing::error!("unmounting failed: {e}"),
                    }
                }
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}

/// Starts the thread that, on SIGTERM or SIGINT, runs `cleanup` and ends
/// the process with exit code 0 (`nexus serve`: its guests lose the device,
/// nothing else is left to tidy).
pub fn exit_on_termination(cleanup: impl FnOnce() + Send + 'static) -> Result<()> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let set = termination_set();
            let mut signal = 0;
            // SAFETY: a valid set and an out-parameter we own.
            while unsafe { libc::sigwait(&set, &mut signal) } != 0 {}
            tracing::info!("signal {signal}: stopping");
            cleanup();
            std::process::exit(crate::exit::OK);
        })
        .context("starting the signal thread")?;
    Ok(())
}
