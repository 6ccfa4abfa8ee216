//! A gate that request threads pass before changing state a takeover must
//! hand over whole: what the kernel holds looked up ([`crate::lookups`]),
//! the numbers the Index gave its paths ([`crate::index`]).
//!
//! A daemon handing its mount to a successor closes the gate, waits for the
//! threads already through to leave, copies the state, and never opens the
//! gate again: a request thread that arrives meanwhile waits at the gate
//! without having answered its request, and the successor gets that
//! request from the kernel again (`FUSE_NOTIFY_RESEND`) once the old daemon
//! is gone. Nothing it changed is lost, nothing is counted twice. Should
//! the successor fail, the gate opens and the waiting threads go on.
//!
//! Passing an open gate costs one uncontended mutex lock.

use std::sync::{Condvar, Mutex, MutexGuard};

/// The gate (open when created).
#[derive(Debug, Default)]
pub struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    closed: bool,
    inside: usize,
}

/// A thread's way through an open gate: while it lives, [`Gate::close`]
/// waits. Never take a second pass while holding one.
#[must_use]
pub struct Pass<'a>(&'a Gate);

impl Gate {
    fn state(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Passes the gate, waiting while it is closed.
    pub fn enter(&self) -> Pass<'_> {
        let mut state = self.state();
        while state.closed {
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.inside += 1;
        Pass(self)
    }

    /// Closes the gate and returns once no thread is through it: from then
    /// on the state behind it stays as it is until [`Gate::open`].
    pub fn close(&self) {
        let mut state = self.state();
        state.closed = true;
        while state.inside > 0 {
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Opens the gate again; waiting threads go on.
    pub fn open(&self) {
        self.state().closed = false;
        self.changed.notify_all();
    }

    /// True while the gate is closed.
    pub fn is_closed(&self) -> bool {
        self.state().closed
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.inside -= 1;
        if state.inside == 0 {
            self.0.changed.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn close_waits_for_threads_inside_and_holds_back_new_ones() {
        let gate = Arc::new(Gate::default());
        let changes = Arc::new(AtomicUsize::new(0));
        let pass = gate.enter();
        let closer = {
            let gate = gate.clone();
            std::thread::spawn(move || gate.close())
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!closer.is_finished(), "close returned with a thread inside");
        drop(pass);
        closer.join().unwrap();
        assert!(gate.is_closed());
        let late = {
            let (gate, changes) = (gate.clone(), changes.clone());
            std::thread::spawn(move || {
                let _pass = gate.enter();
                changes.fetch_add(1, Ordering::SeqCst);
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(changes.load(Ordering::SeqCst), 0, "passed a closed gate");
        gate.open();
        late.join().unwrap();
        assert_eq!(changes.load(Ordering::SeqCst), 1);
    }
}
