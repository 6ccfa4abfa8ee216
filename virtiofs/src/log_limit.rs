//! At most one log line per interval for what a guest can cause at will.
//!
//! A guest's requests are the guest's to repeat: a line logged for each one
//! a daemon refuses lets a guest write the host's log as fast as it can
//! send requests, and bury what else is logged there. So what a guest's
//! requests make the daemon log is logged at most once per
//! [`LOG_EVERY`] for each guest and kind of message, with the count of
//! those left unlogged since the last line.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The shortest time between two lines of one kind for one guest.
pub(crate) const LOG_EVERY: Duration = Duration::from_secs(60);

/// One kind of message of one guest.
#[derive(Debug)]
pub(crate) struct LogLimit {
    every: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// When the last line was logged.
    last: Option<Instant>,
    /// Occurrences since then that were not.
    unlogged: u64,
}

impl LogLimit {
    /// A limit of one line per `every`.
    pub(crate) const fn new(every: Duration) -> LogLimit {
        LogLimit {
            every,
            state: Mutex::new(State {
                last: None,
                unlogged: 0,
            }),
        }
    }

    /// Counts one occurrence; `Some(n)` when it is to be logged, `n` the
    /// occurrences before it that were not.
    pub(crate) fn due(&self) -> Option<u64> {
        self.due_at(Instant::now())
    }

    fn due_at(&self, now: Instant) -> Option<u64> {
        // A poisoned lock only means a panic while counting: the count is
        // still a count.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match state.last {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                state.unlogged = state.unlogged.saturating_add(1);
                None
            }
            _ => {
                state.last = Some(now);
                Some(std::mem::take(&mut state.unlogged))
            }
        }
    }
}

/// What a line adds about the `unlogged` occurrences before it.
pub(crate) fn unlogged(unlogged: u64) -> String {
    match unlogged {
        0 => String::new(),
        n => format!(" ({n} more since the last such line)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_of_the_rest() {
        let limit = LogLimit::new(Duration::from_secs(60));
        let start = Instant::now();
        assert_eq!(limit.due_at(start), Some(0));
        for s in 1..=3 {
            assert_eq!(limit.due_at(start + Duration::from_secs(s)), None);
        }
        assert_eq!(limit.due_at(start + Duration::from_secs(60)), Some(3));
        assert_eq!(limit.due_at(start + Duration::from_secs(61)), None);
        assert_eq!(limit.due_at(start + Duration::from_secs(200)), Some(1));
        assert_eq!(unlogged(0), "");
        assert_eq!(unlogged(3), " (3 more since the last such line)");
    }
}
