//! What the daemons do on signals: SIGTERM and SIGINT end them (a mount
//! daemon unmounts, and its sessions then end; `nexus serve` removes its
//! socket and exits), SIGHUP reopens the log file (logrotate).
//!
//! `signal-hook`'s handlers only write to a pipe; one thread reads it and
//! acts, so everything runs as ordinary code, not in a signal handler. The
//! thread starts before anything can fail halfway (a signal that arrives
//! before the daemon said what to do is remembered and acted on once it
//! has). The first termination signal ends the daemon cleanly (detaching a
//! busy mount; with `--index`, both mounts); a second one ends the process
//! at once.

use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{Context, Result};
use nexus_fs::fuse::Unmounted;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use super::sandbox::Unmount;
use super::{logging, systemd};

/// What a termination signal does.
enum Action {
    /// Not said yet: remember the signal.
    Unset,
    /// Unmount with each, in order (directly, or through the sandbox's
    /// keeper); `None` for one unmounted already.
    Unmount(Vec<Option<Box<dyn Unmount>>>),
    /// Run this, then exit with success.
    Exit(Box<dyn FnOnce() + Send>),
    /// The daemon handed its mounts over and is exiting: do nothing.
    Ignore,
}

struct State {
    action: Action,
    /// Termination signals received.
    received: u32,
}

/// The signal thread: tell it what termination means once it is known.
#[derive(Clone)]
pub struct Termination {
    state: Arc<Mutex<State>>,
}

impl Termination {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// From now on, termination unmounts with each of `unmounters`, in
    /// order; at once if a signal already came.
    pub fn unmount(&self, unmounters: Vec<Box<dyn Unmount>>) {
        let mut state = self.state();
        state.action = Action::Unmount(unmounters.into_iter().map(Some).collect());
        if state.received > 0 {
            act(&mut state);
        }
    }

    /// From now on, termination runs `cleanup` and exits with code 0; at
    /// once if a signal already came.
    pub fn exit(&self, cleanup: impl FnOnce() + Send + 'static) {
        let mut state = self.state();
        state.action = Action::Exit(Box::new(cleanup));
        if state.received > 0 {
            act(&mut state);
        }
    }

    /// Does now what a termination signal would (starting failed after
    /// the mounts were made).
    pub fn now(&self) {
        act(&mut self.state());
    }

    /// Unmounts with the first of the unmounters now, and not again at
    /// termination: the Index's, which comes first when there is one (its
    /// kernel view was unmounted from outside; the main mount stays).
    pub fn unmount_index_now(&self) {
        let mut state = self.state();
        if let Action::Unmount(unmounters) = &mut state.action
            && let Some(mut first) = unmounters.first_mut().and_then(Option::take)
        {
            report(first.unmount());
        }
    }

    /// Unmounts now, as SIGTERM would, if the daemon serves its mounts
    /// (neither starting, nor handed over, nor already stopping).
    pub fn unmount_now(&self) {
        let mut state = self.state();
        if matches!(state.action, Action::Unmount(_)) {
            act(&mut state);
        }
    }

    /// From now on, termination signals are ignored: the daemon handed its
    /// mounts to a successor and exits by itself (unmounting now would take
    /// the mounts from the successor).
    pub fn ignore(&self) {
        self.state().action = Action::Ignore;
    }
}

/// Does what a termination signal calls for.
fn act(state: &mut State) {
    match std::mem::replace(&mut state.action, Action::Unset) {
        Action::Unset => {
            // Still starting: what to do is not known yet (there may be a
            // mount to undo). The daemon acts once it says.
            tracing::info!("stopping once started");
        }
        Action::Ignore => state.action = Action::Ignore,
        Action::Exit(cleanup) => {
            systemd::stopping();
            tracing::info!("stopping");
            cleanup();
            std::process::exit(crate::exit::OK);
        }
        Action::Unmount(mut unmounters) => {
            systemd::stopping();
            tracing::info!("unmounting");
            for unmounter in unmounters.iter_mut().flatten() {
                report(unmounter.unmount());
            }
        }
    }
}

/// Logs what an unmount did.
fn report(unmounted: std::io::Result<Unmounted>) {
    match unmounted {
        Ok(Unmounted::Clean) => tracing::info!("unmounted"),
        Ok(Unmounted::Detached) => {
            tracing::warn!("the mount is busy: detached it; exiting when its last file is closed")
        }
        Err(e) => tracing::error!("unmounting failed: {e}"),
    }
}

/// Starts the signal thread. Call it first thing: until it runs, SIGTERM
/// kills the process outright.
pub fn watch() -> Result<Termination> {
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])
        .context("installing the handlers of SIGTERM, SIGINT and SIGHUP")?;
    let termination = Termination {
        state: Arc::new(Mutex::new(State {
            action: Action::Unset,
            received: 0,
        })),
    };
    let watched = termination.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if signal == SIGHUP {
                    match logging::reopen() {
                        Ok(true) => tracing::info!("SIGHUP: reopened the log file"),
                        Ok(false) => {}
                        Err(e) => tracing::error!("SIGHUP: reopening the log file: {e}"),
                    }
                    continue;
                }
                let mut state = watched.state();
                state.received += 1;
                if state.received > 1 && !matches!(state.action, Action::Ignore) {
                    tracing::warn!("signal {signal} again: exiting without waiting");
                    std::process::exit(crate::exit::ERROR);
                }
                tracing::info!("signal {signal}");
                act(&mut state);
            }
        })
        .context("starting the signal thread")?;
    Ok(termination)
}
