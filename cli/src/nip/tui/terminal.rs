//! The terminal while `nip tui` runs: raw mode and the alternate screen,
//! always given back as they were — when the interface returns, fails or
//! panics, and when a signal (SIGTERM, SIGHUP, SIGINT) asks it to stop.

use std::io::{Stdout, stdout};
use std::sync::Arc;
use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::cursor::Show;
use ratatui::crossterm::execute;
use ratatui::crossterm::terminal::{
    EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode,
};
use ratatui::layout::Rect;

/// True while the terminal is in raw mode on the alternate screen: what
/// the panic hook checks before restoring it.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Puts the terminal back: normal mode, the screen it had, a visible
/// cursor. Does nothing unless a [`Session`] changed it.
fn restore() {
    if ACTIVE.swap(false, Ordering::SeqCst) {
        // Nothing more can be done if the terminal is gone.
        let _ = disable_raw_mode();
        let _ = execute!(stdout(), LeaveAlternateScreen, Show);
    }
}

/// Restores the terminal before the panic message is printed, so that the
/// message is readable and the shell usable.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}

/// The terminal in raw mode on the alternate screen, restored on drop.
pub struct Session {
    /// What ratatui draws on.
    pub terminal: Terminal<CrosstermBackend<Stdout>>,
}

impl Session {
    /// Takes over the terminal.
    pub fn start() -> Result<Session> {
        install_panic_hook();
        enable_raw_mode().context("switching the terminal to raw mode")?;
        ACTIVE.store(true, Ordering::SeqCst);
        // From here, an early return restores through `restore`.
        let started = execute!(stdout(), EnterAlternateScreen)
            .context("switching to the alternate screen")
            .and_then(|()| {
                Terminal::new(CrosstermBackend::new(stdout())).context("setting up the screen")
            });
        match started {
            Ok(terminal) => Ok(Session { terminal }),
            Err(e) => {
                restore();
                Err(e)
            }
        }
    }
}

impl Session {
    /// Clears the screen and draws everything anew on the next frame
    /// (wiping whatever else wrote to the terminal meanwhile). Through
    /// `resize` to the same size: ratatui's `clear` asks the terminal
    /// where its cursor is, and fails on one that does not answer.
    pub fn repaint(&mut self) -> Result<()> {
        let size = self.terminal.size()?;
        self.terminal
            .resize(Rect::new(0, 0, size.width, size.height))?;
        Ok(())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        restore();
    }
}

/// A flag raised by SIGTERM, SIGHUP or SIGINT, which the event loop reads
/// to stop (and restore the terminal) instead of dying in raw mode.
pub fn stop_signals() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGINT,
    ] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .with_context(|| format!("handling signal {signal}"))?;
    }
    Ok(stop)
}
