//! What `nip tui` is showing and what each key does to it.

use std::path::PathBuf;

use anyhow::Result;
use nexus_store::Store;
use nexus_store::generations::{DiffSizes, diff_from_previous};
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::action::Action;
use super::snapshot::{GenerationEntry, Snapshot};
use crate::human;
use crate::nip::changes::diff_lines;

/// The three lists, in Tab order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pane {
    /// Every stored version of every App.
    Apps,
    /// The retained generations, newest first.
    Generations,
    /// The pinned generations.
    Pins,
}

impl Pane {
    fn next(self) -> Pane {
        match self {
            Pane::Apps => Pane::Generations,
            Pane::Generations => Pane::Pins,
            Pane::Pins => Pane::Apps,
        }
    }

    fn previous(self) -> Pane {
        self.next().next()
    }
}

/// A question waiting for y or n.
#[derive(Clone, Debug)]
pub struct Confirmation {
    /// What `y` does.
    pub action: Action,
    /// The question, saying exactly what will happen.
    pub lines: Vec<String>,
    /// The store as the question describes it: if it changed meanwhile,
    /// `y` does nothing and says so.
    basis: Snapshot,
}

/// A window over the lists.
#[derive(Clone, Debug)]
pub enum Overlay {
    /// The keys.
    Help,
    /// Everything about the selected item.
    Details {
        /// Its title.
        title: String,
        /// Its text.
        lines: Vec<String>,
        /// Lines scrolled past.
        scroll: u16,
    },
    /// A change waiting for confirmation.
    Confirm(Confirmation),
}

/// The line under the lists: what the last key did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// The message.
    pub text: String,
    /// A failure (shown as one).
    pub is_error: bool,
}

/// The selected row of each pane.
#[derive(Clone, Copy, Debug, Default)]
pub struct Selection {
    /// Row of the Apps pane.
    pub apps: usize,
    /// Row of the Generations pane.
    pub generations: usize,
    /// Row of the Pins pane.
    pub pins: usize,
}

/// The whole state of the interface.
pub struct App {
    /// The store directory (what each action opens, as its command does).
    pub dir: PathBuf,
    /// What the catalog held at the last reload.
    pub snapshot: Snapshot,
    /// The pane the keys act on.
    pub focus: Pane,
    /// The selected rows.
    pub selected: Selection,
    /// A window over the lists, if one is open.
    pub overlay: Option<Overlay>,
    /// What the last key did.
    pub status: Option<Status>,
    /// Set by q: leave after this frame.
    pub quit: bool,
    /// Set after an action: repaint the whole screen (whatever the store
    /// logged to the terminal meanwhile is wiped).
    pub repaint: bool,
}

impl App {
    /// Starts on the Apps pane.
    pub fn new(dir: PathBuf, snapshot: Snapshot) -> App {
        App {
            dir,
            snapshot,
            focus: Pane::Apps,
            selected: Selection::default(),
            overlay: None,
            status: None,
            quit: false,
            repaint: false,
        }
    }

    /// Reads the store again, keeping each pane's selection on the same
    /// item where it still exists. A failure is shown, never fatal.
    pub fn reload(&mut self, store: &Store) {
        match Snapshot::load(store) {
            Ok(snapshot) => self.replace_snapshot(snapshot),
            Err(e) => self.fail(&e),
        }
    }

    fn replace_snapshot(&mut self, snapshot: Snapshot) {
        let old = std::mem::replace(&mut self.snapshot, snapshot);
        let s = &self.snapshot;
        let keep = |before: usize, found: Option<usize>, len: usize| {
            found.unwrap_or(before).min(len.saturating_sub(1))
        };
        let version = old
            .versions
            .get(self.selected.apps)
            .and_then(|v| s.versions.iter().position(|n| n.package.id == v.package.id));
        self.selected.apps = keep(self.selected.apps, version, s.versions.len());
        let generation = old
            .generations
            .get(self.selected.generations)
            .and_then(|g| s.generations.iter().position(|n| n.row.id == g.row.id));
        self.selected.generations =
            keep(self.selected.generations, generation, s.generations.len());
        let pin = old
            .pins
            .get(self.selected.pins)
            .and_then(|p| s.pins.iter().position(|n| n.generation == p.generation));
        self.selected.pins = keep(self.selected.pins, pin, s.pins.len());
    }

    fn say(&mut self, text: impl Into<String>) {
        self.status = Some(Status {
            text: text.into(),
            is_error: false,
        });
    }

    fn fail(&mut self, e: &anyhow::Error) {
        let mut text = format!("{e:#}");
        if let Some(hint) = crate::hints::hint(e) {
            text.push_str(" — ");
            text.push_str(&hint);
        }
        self.status = Some(Status {
            text,
            is_error: true,
        });
    }

    /// Handles one key press.
    pub fn on_key(&mut self, key: KeyEvent, store: &Store) {
        let ctrl_c =
            key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL);
        // Ctrl-S is not s, nor Alt-Y y: a chord is never taken for a key.
        let chord = key
            .modifiers
            .intersects(KeyModifiers::CONTROL | KeyModifiers::ALT);
        if chord && !ctrl_c {
            return;
        }
        match self.overlay.take() {
            Some(Overlay::Confirm(confirmation)) => match key.code {
                KeyCode::Char('y' | 'Y') => self.confirm(confirmation, store),
                KeyCode::Char('n' | 'N' | 'q') | KeyCode::Esc => {
                    self.say(format!(
                        "cancelled: {} not run, nothing changed",
                        confirmation.action.command_line()
                    ));
                }
                _ if ctrl_c => self.say("cancelled: nothing changed"),
                // Only an explicit answer closes the question.
                _ => self.overlay = Some(Overlay::Confirm(confirmation)),
            },
            Some(Overlay::Details {
                title,
                lines,
                scroll,
            }) => {
                let scroll = match key.code {
                    KeyCode::Down | KeyCode::Char('j') => scroll.saturating_add(1),
                    KeyCode::Up | KeyCode::Char('k') => scroll.saturating_sub(1),
                    KeyCode::PageDown => scroll.saturating_add(10),
                    KeyCode::PageUp => scroll.saturating_sub(10),
                    _ => return,
                };
                self.overlay = Some(Overlay::Details {
                    title,
                    lines,
                    scroll,
                });
            }
            Some(Overlay::Help) => {}
            None if ctrl_c => self.quit = true,
            None => self.on_list_key(key.code, store),
        }
    }

    fn on_list_key(&mut self, code: KeyCode, store: &Store) {
        match code {
            KeyCode::Char('q') => self.quit = true,
            KeyCode::Char('?') => self.overlay = Some(Overlay::Help),
            KeyCode::Tab => self.focus = self.focus.next(),
            KeyCode::BackTab => self.focus = self.focus.previous(),
            KeyCode::Down | KeyCode::Char('j') => self.move_by(1),
            KeyCode::Up | KeyCode::Char('k') => self.move_by(-1),
            KeyCode::PageDown => self.move_by(10),
            KeyCode::PageUp => self.move_by(-10),
            KeyCode::Home | KeyCode::Char('g') => self.move_by(isize::MIN),
            KeyCode::End | KeyCode::Char('G') => self.move_by(isize::MAX),
            KeyCode::Enter => self.details(store),
            KeyCode::Char('s') => match self.selected_generation() {
                Some(generation) => self.ask(Action::Switch { generation }, store),
                None => self.say("select a generation to switch to (Tab to Generations)"),
            },
            KeyCode::Char('r') => match self.snapshot.rollback_target() {
                Some(to) => self.ask(Action::Rollback { to }, store),
                None => self
                    .say("nothing to roll back to: no retained generation before the live content"),
            },
            KeyCode::Char('p') => match self.selected_generation() {
                Some(generation) => {
                    let pinned = self
                        .snapshot
                        .pins
                        .iter()
                        .any(|p| p.generation == generation);
                    self.ask(
                        Action::Pin {
                            generation,
                            pinned: !pinned,
                        },
                        store,
                    );
                }
                None => {
                    self.say("select a generation to pin or unpin (Tab to Generations or Pins)")
                }
            },
            KeyCode::Char('c') => self.ask_current(store),
            _ => {}
        }
    }

    /// The length of the focused pane's list and its selected row.
    fn focused_list(&mut self) -> (usize, &mut usize) {
        match self.focus {
            Pane::Apps => (self.snapshot.versions.len(), &mut self.selected.apps),
            Pane::Generations => (
                self.snapshot.generations.len(),
                &mut self.selected.generations,
            ),
            Pane::Pins => (self.snapshot.pins.len(), &mut self.selected.pins),
        }
    }

    fn move_by(&mut self, delta: isize) {
        let (len, row) = self.focused_list();
        let last = len.saturating_sub(1);
        *row = row.saturating_add_signed(delta).min(last);
    }

    /// The generation selected in the Generations or Pins pane.
    fn selected_generation(&self) -> Option<i64> {
        match self.focus {
            Pane::Generations => self
                .snapshot
                .generations
                .get(self.selected.generations)
                .map(|g| g.row.id),
            Pane::Pins => self
                .snapshot
                .pins
                .get(self.selected.pins)
                .map(|p| p.generation),
            Pane::Apps => None,
        }
    }

    fn ask_current(&mut self, store: &Store) {
        if self.focus != Pane::Apps {
            self.say("select a version to make Current (Tab to Apps)");
            return;
        }
        let Some(entry) = self.snapshot.versions.get(self.selected.apps) else {
            self.say("no App is stored yet");
            return;
        };
        let (app, version) = (entry.package.name.clone(), entry.package.version.clone());
        if entry.current {
            self.say(format!("{app}/{version} is Current already; nothing to do"));
            return;
        }
        self.ask(Action::Current { app, version }, store);
    }

    /// Opens the confirmation of `action`.
    fn ask(&mut self, action: Action, store: &Store) {
        match action.question(store, &self.snapshot) {
            Ok(lines) => {
                self.overlay = Some(Overlay::Confirm(Confirmation {
                    action,
                    lines,
                    basis: self.snapshot.clone(),
                }));
            }
            Err(e) => self.fail(&e),
        }
    }

    /// `y`: acts, unless the store changed since the question was asked.
    fn confirm(&mut self, confirmation: Confirmation, store: &Store) {
        let now = match Snapshot::load(store) {
            Ok(now) => now,
            Err(e) => return self.fail(&e),
        };
        if now != confirmation.basis {
            self.replace_snapshot(now);
            self.status = Some(Status {
                text: format!(
                    "the store changed while you were deciding (another nip ran): {} not run; look again",
                    confirmation.action.command_line()
                ),
                is_error: true,
            });
            return;
        }
        match confirmation.action.perform(&self.dir) {
            Ok(done) => self.say(done),
            Err(e) => self.fail(&e),
        }
        self.repaint = true;
        self.reload(store);
    }

    /// Enter: everything about the selected item.
    fn details(&mut self, store: &Store) {
        let shown = match self.focus {
            Pane::Apps => self.version_details(),
            Pane::Generations | Pane::Pins => match self.selected_generation() {
                Some(id) => self.generation_details(id, store),
                None => Ok(None),
            },
        };
        match shown {
            Ok(Some((title, lines))) => {
                self.overlay = Some(Overlay::Details {
                    title,
                    lines,
                    scroll: 0,
                });
            }
            Ok(None) => self.say("nothing selected"),
            Err(e) => self.fail(&e),
        }
    }

    fn version_details(&self) -> Result<Option<(String, Vec<String>)>> {
        let Some(v) = self.snapshot.versions.get(self.selected.apps) else {
            return Ok(None);
        };
        let p = &v.package;
        let state = match (v.current, v.installed) {
            (true, _) => "installed, Current",
            (false, true) => "installed",
            (false, false) => "stored (kept for rollback or by gc's grace), not installed",
        };
        let lines = vec![
            format!("state      {state}"),
            format!("tree hash  {}", p.tree_hash),
            format!("origin     {}", p.origin),
            format!("added      {}", human::time(p.added)),
            format!(
                "files      {} ({})",
                p.files,
                human::size(p.bytes.max(0) as u64)
            ),
            String::new(),
            format!("Same as: nip info {}; nip files {}", p.name, p.spec()),
        ];
        Ok(Some((p.spec(), lines)))
    }

    fn generation_details(&self, id: i64, store: &Store) -> Result<Option<(String, Vec<String>)>> {
        let Some(GenerationEntry { row, .. }) = self.snapshot.generation(id) else {
            return Ok(None);
        };
        let live = self.snapshot.live().map(|g| g.id) == Some(id);
        let mut lines = vec![
            format!("created   {}", human::time(row.created)),
            format!("action    {}", row.action),
            format!("packages  {}", row.packages),
        ];
        if let Some(restores) = row.restores {
            lines.push(format!("restores  generation {restores}"));
        }
        if let Some(pin) = self.snapshot.pins.iter().find(|p| p.generation == id) {
            lines.push(format!(
                "pinned    {}: `nip gc` keeps it until it is unpinned",
                human::time(pin.pinned)
            ));
        }
        lines.push(String::new());
        match diff_from_previous(store.catalog(), id, DiffSizes::LogicalAndStored)? {
            Some(d) => {
                let same_as = match d.from {
                    Some(from) => format!("Same as: nip diff {from} {id}"),
                    None => "Same as: nip list --generation 1".to_string(),
                };
                lines.extend(diff_lines(&d));
                lines.push(String::new());
                lines.push(same_as);
            }
            None => {
                lines.push("the oldest generation kept: nothing earlier to compare with".into())
            }
        }
        let title = if live {
            format!("generation {id} (live)")
        } else {
            format!("generation {id}")
        };
        Ok(Some((title, lines)))
    }
}

#[cfg(test)]
mod tests {
    use nexus_store::Hash;
    use nexus_store::catalog::{GenerationRow, PackageRow};

    use super::*;
    use crate::nip::tui::snapshot::VersionEntry;

    fn version(id: i64, name: &str, version: &str) -> VersionEntry {
        VersionEntry {
            package: PackageRow {
                id,
                name: name.into(),
                version: version.into(),
                origin: String::new(),
                tree_hash: Hash::of(b""),
                root: 0,
                added: 0,
                files: 0,
                bytes: 0,
                metadata: String::new(),
                restricted_to: None,
            },
            installed: true,
            current: false,
        }
    }

    fn generation(id: i64) -> GenerationEntry {
        GenerationEntry {
            row: GenerationRow {
                id,
                created: 0,
                action: String::new(),
                restores: None,
                packages: 0,
            },
            diff: None,
            pinned: false,
        }
    }

    #[test]
    fn the_selection_stays_on_its_item_when_the_store_changes() {
        let before = Snapshot {
            versions: vec![version(1, "a", "1"), version(2, "b", "1")],
            generations: vec![generation(3), generation(2), generation(1)],
            pins: Vec::new(),
        };
        let mut app = App::new(PathBuf::from("/store"), before);
        app.selected.apps = 1;
        app.selected.generations = 1;
        // A new App sorts before `b`, a new generation comes first.
        app.replace_snapshot(Snapshot {
            versions: vec![
                version(1, "a", "1"),
                version(3, "a0", "1"),
                version(2, "b", "1"),
            ],
            generations: vec![generation(4), generation(3), generation(2), generation(1)],
            pins: Vec::new(),
        });
        assert_eq!(app.snapshot.versions[app.selected.apps].package.id, 2);
        assert_eq!(app.snapshot.generations[app.selected.generations].row.id, 2);
        // Gone (gc): the nearest row that exists.
        app.replace_snapshot(Snapshot {
            versions: vec![version(1, "a", "1")],
            generations: vec![generation(4)],
            pins: Vec::new(),
        });
        assert_eq!((app.selected.apps, app.selected.generations), (0, 0));
    }

    #[test]
    fn chords_are_not_keys_and_ctrl_c_quits() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(&dir.path().join("store")).unwrap();
        let snapshot = Snapshot {
            generations: (1..=3).rev().map(generation).collect(),
            ..Snapshot::default()
        };
        let mut app = App::new(dir.path().join("store"), snapshot);
        app.focus = Pane::Generations;
        for modifier in [KeyModifiers::CONTROL, KeyModifiers::ALT] {
            for key in ['j', 's', 'r', 'p', 'q'] {
                app.on_key(KeyEvent::new(KeyCode::Char(key), modifier), &store);
            }
        }
        assert_eq!(app.selected.generations, 0, "Ctrl-J is not j");
        assert!(app.overlay.is_none(), "nothing asked");
        assert!(!app.quit, "Ctrl-Q is not q");
        app.on_key(
            KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL),
            &store,
        );
        assert!(app.quit, "Ctrl-C quits (raw mode sends no SIGINT)");
    }

    #[test]
    fn moving_stops_at_either_end() {
        let snapshot = Snapshot {
            generations: (1..=5).rev().map(generation).collect(),
            ..Snapshot::default()
        };
        let mut app = App::new(PathBuf::from("/store"), snapshot);
        app.focus = Pane::Generations;
        app.move_by(-1);
        assert_eq!(app.selected.generations, 0);
        app.move_by(3);
        assert_eq!(app.selected.generations, 3);
        app.move_by(10);
        assert_eq!(app.selected.generations, 4);
        app.move_by(isize::MIN);
        assert_eq!(app.selected.generations, 0);
        // An empty pane has nothing to select but row 0.
        app.focus = Pane::Pins;
        app.move_by(isize::MAX);
        assert_eq!(app.selected.pins, 0);
    }
}
