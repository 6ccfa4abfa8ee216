//! `nip tui`: the store in a terminal interface — Apps and their stored
//! versions, generations and what each changed, pins — and the changes
//! nip's commands make (switch, rollback, pin and unpin, Current), each
//! confirmed first and run through the very function its command runs:
//! the interface can do nothing the command line cannot.
//!
//! [`snapshot`] reads what is shown, [`state`] decides what each key does,
//! [`action`] runs the changes, [`view`] draws, [`watch`] notices another
//! process changing the store, [`terminal`] owns (and always gives back)
//! the terminal.

mod action;
mod snapshot;
mod state;
mod terminal;
mod view;
mod watch;

use std::io::IsTerminal;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Result, bail};
use nexus_store::Store;
use ratatui::crossterm::event::{self, Event, KeyEventKind};

use self::snapshot::Snapshot;
use self::state::App;
use self::terminal::Session;
use self::view::Theme;
use self::watch::CatalogWatch;
use crate::exit;

/// How often the loop wakes without a key: to notice the store changing
/// and a stop signal.
const TICK: Duration = Duration::from_millis(250);

/// Runs the interface on the store in `dir` until `q`.
pub fn run(dir: &Path) -> Result<i32> {
    if !std::io::stdin().is_terminal() || !std::io::stdout().is_terminal() {
        bail!(
            "`nip tui` needs a terminal on its input and output; scripts read `nip list`, `nip history` and `nip pin` with --json"
        );
    }
    // Failing to open the store is reported before the screen changes.
    let store = crate::open::open_store(dir)?;
    let mut watch = CatalogWatch::new(dir);
    let snapshot = Snapshot::load(&store)?;
    let mut app = App::new(dir.to_path_buf(), snapshot);
    let stop = terminal::stop_signals()?;
    let theme = Theme::from_env();
    let mut session = Session::start()?;
    let result = event_loop(&mut session, &mut app, &store, &mut watch, &stop, &theme);
    // The terminal is back before an error is printed.
    drop(session);
    result.map(|()| exit::OK)
}

fn event_loop(
    session: &mut Session,
    app: &mut App,
    store: &Store,
    watch: &mut CatalogWatch,
    stop: &AtomicBool,
    theme: &Theme,
) -> Result<()> {
    loop {
        if std::mem::take(&mut app.repaint) {
            session.repaint()?;
        }
        session
            .terminal
            .draw(|frame| view::draw(frame, app, theme, &app.dir))?;
        if app.quit || stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        if event::poll(TICK)? {
            // A resize needs nothing but the next draw.
            if let Event::Key(key) = event::read()?
                && key.kind == KeyEventKind::Press
            {
                app.on_key(key, store);
            }
        }
        if watch.changed() {
            app.reload(store);
        }
    }
}
