//! `nip tui` driven as a person would: the real binary in a
//! pseudo-terminal, keys typed into it, its screen read back through a
//! terminal emulator (vt100), and the store checked afterwards with `nip
//! history --json`, `nip list --json` and `nip pin --json` — the changes
//! confirmed happened, exactly, and the ones declined did not.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::num::NonZeroU16;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nexus_integration_tests::fixtures::app_tree;
use nexus_integration_tests::{Scratch, Store, nip_bin};
use portable_pty::{Child, CommandBuilder, MasterPty, PtySize, native_pty_system};
use serde_json::Value;

const ROWS: u16 = 40;
const COLS: u16 = 150;

/// How long the screen may take to show what a key should bring.
const SCREEN_TIMEOUT: Duration = Duration::from_secs(30);

/// `nip --store STORE tui` running in a pseudo-terminal.
struct Tui {
    master: Box<dyn MasterPty + Send>,
    writer: Box<dyn Write + Send>,
    child: Box<dyn Child + Send + Sync>,
    screen: Arc<Mutex<vt100::Parser>>,
}

impl Tui {
    fn start(store: &Store) -> Tui {
        let pair = native_pty_system()
            .openpty(PtySize {
                rows: ROWS,
                cols: COLS,
                pixel_width: 0,
                pixel_height: 0,
            })
            .expect("opening a pseudo-terminal");
        let mut cmd = CommandBuilder::new(nip_bin());
        cmd.arg("--store");
        cmd.arg(store.path());
        cmd.arg("tui");
        cmd.env_remove("NEXUS_STORE");
        cmd.env_remove("NEXUS_KEYS");
        cmd.env("NEXUS_CONFIG", "/dev/null");
        cmd.env("TERM", "xterm-256color");
        cmd.env("RUST_BACKTRACE", "1");
        let child = pair
            .slave
            .spawn_command(cmd)
            .expect("starting nip tui in the pseudo-terminal");
        // Only the child holds the terminal's other end now: when it exits,
        // reading the master ends.
        drop(pair.slave);
        let size = |n| NonZeroU16::new(n).expect("a terminal has rows and columns");
        let screen = Arc::new(Mutex::new(vt100::Parser::new(size(ROWS), size(COLS), 0)));
        let mut reader = pair.master.try_clone_reader().expect("pty reader");
        let parser = Arc::clone(&screen);
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            // EOF or EIO: the child has gone.
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                parser.lock().unwrap().process(&buf[..n]);
            }
        });
        let writer = pair.master.take_writer().expect("pty writer");
        Tui {
            master: pair.master,
            writer,
            child,
            screen,
        }
    }

    /// Types `keys`.
    fn press(&mut self, keys: &str) {
        self.writer.write_all(keys.as_bytes()).unwrap();
        self.writer.flush().unwrap();
    }

    /// The screen, one string per row.
    fn rows(&self) -> Vec<String> {
        let parser = self.screen.lock().unwrap();
        parser.screen().rows(0, COLS).collect()
    }

    fn text(&self) -> String {
        self.rows().join("\n")
    }

    /// Waits until `condition` holds for the screen; fails showing it.
    fn wait_for(&self, what: &str, condition: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = Instant::now() + SCREEN_TIMEOUT;
        loop {
            let rows = self.rows();
            if condition(&rows) {
                return rows;
            }
            if Instant::now() > deadline {
                panic!(
                    "the screen did not show {what} within {SCREEN_TIMEOUT:?}:\n{}",
                    rows.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the screen shows every one of `texts`.
    fn wait_text(&self, texts: &[&str]) -> Vec<String> {
        self.wait_for(&format!("{texts:?}"), |rows| {
            let all = rows.join("\n");
            texts.iter().all(|t| all.contains(t))
        })
    }

    /// Waits until the screen no longer shows `text` (a window closed).
    fn wait_gone(&self, text: &str) {
        self.wait_for(&format!("{text:?} gone"), |rows| {
            !rows.join("\n").contains(text)
        });
    }

    /// Waits until the row selected in the focused pane (marked ▶) starts
    /// with `start`.
    fn wait_selected(&self, start: &str) {
        self.wait_for(&format!("the selected row starting {start:?}"), |rows| {
            selected(rows).is_some_and(|row| row.starts_with(start))
        });
    }

    /// Whether the terminal is in canonical (line) mode, as a shell
    /// leaves it and raw mode does not.
    fn canonical(&self) -> bool {
        let fd = self.master.as_raw_fd().expect("the master's descriptor");
        // SAFETY: tcgetattr fills the termios it is given, from a
        // descriptor that stays open while `self` lives.
        let mut termios: libc::termios = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::tcgetattr(fd, &mut termios) }, 0);
        termios.c_lflag & libc::ICANON != 0
    }

    /// Waits for the process to exit; returns its exit code.
    fn exit_code(&mut self) -> u32 {
        let deadline = Instant::now() + SCREEN_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.exit_code();
            }
            if Instant::now() > deadline {
                panic!("nip tui did not exit; screen:\n{}", self.text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn alternate_screen(&self) -> bool {
        self.screen.lock().unwrap().screen().alternate_screen()
    }
}

impl Drop for Tui {
    fn drop(&mut self) {
        // A failed test must not leave the process behind.
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
        }
    }
}

/// The text after the ▶ that marks the selected row of the focused pane.
fn selected(rows: &[String]) -> Option<String> {
    rows.iter().find_map(|row| {
        row.split_once("▶ ")
            .map(|(_, rest)| rest.trim_start().to_string())
    })
}

const TAB: &str = "\t";
const BACKTAB: &str = "\x1b[Z";
const ENTER: &str = "\r";
const ESC: &str = "\x1b";

/// A store with four generations:
/// 1 `add hello/1.0`, 2 `add hello/2.0` (Current moves to 2.0),
/// 3 `add jq/1.6`, 4 `remove hello/1.0` (still stored, for rollback).
fn store_with_history(scratch: &Scratch) -> Store {
    let store = Store::at(scratch.join("store"));
    store.ok(["init"]);
    let corpus = scratch.join("corpus");
    for (name, version) in [("hello", "1.0"), ("hello", "2.0"), ("jq", "1.6")] {
        store.ok([
            OsStr::new("add"),
            app_tree(&corpus, name, version).as_os_str(),
        ]);
    }
    store.ok(["remove", "hello/1.0"]);
    assert_eq!(store.history().len(), 4);
    store
}

/// `nip history --json`, raw.
fn history(store: &Store) -> Vec<Value> {
    store.json(["history"]).as_array().unwrap().clone()
}

/// The pinned generations, from `nip pin --json`.
fn pins(store: &Store) -> Vec<i64> {
    let v = store.json(["pin"]);
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| p["generation"].as_i64().unwrap())
        .collect()
}

/// `name/version` and Current flag of every installed package.
fn installed(store: &Store) -> Vec<(String, bool)> {
    let mut list: Vec<_> = store
        .list()
        .into_iter()
        .map(|p| (p.spec(), p.current))
        .collect();
    list.sort();
    list
}

fn owned(items: &[(&str, bool)]) -> Vec<(String, bool)> {
    items.iter().map(|(s, c)| (s.to_string(), *c)).collect()
}

#[test]
fn switch_pin_and_current_through_the_tui_do_exactly_that() {
    let scratch = Scratch::new("tui");
    let store = store_with_history(&scratch);
    let before = history(&store);
    let mut tui = Tui::start(&store);

    // The Apps with their stored versions, which is Current, and the
    // generations with the summary `nip history` prints.
    let rows = tui.wait_text(&["Apps (2, 3 versions stored)", "Generations (4,"]);
    let apps_row = |app: &str, version: &str| {
        rows.iter()
            .find(|r| r.contains(version) && (app.is_empty() || r.contains(app)))
            .cloned()
            .unwrap_or_else(|| panic!("no row for {app} {version}:\n{}", rows.join("\n")))
    };
    assert!(apps_row("hello", "2.0").contains("Current"));
    assert!(apps_row("", "1.0 ").contains("stored"), "removed, kept");
    assert!(apps_row("jq", "1.6").contains("Current"));
    let text = rows.join("\n");
    for summary in ["hello 1.0→2.0, +hello/2.0", "+jq/1.6", "-hello/1.0"] {
        assert!(text.contains(summary), "{summary:?} missing:\n{text}");
    }
    assert!(!tui.canonical(), "the TUI runs the terminal in raw mode");

    // Enter on a generation: its whole diff, as `nip diff 1 2`.
    tui.press(TAB);
    tui.wait_selected("4*");
    tui.press("jj");
    tui.wait_selected("2 ");
    tui.press(ENTER);
    tui.wait_text(&["generation 1 → 2", "Current:", "Same as: nip diff 1 2"]);
    tui.press(ESC);
    tui.wait_gone("Same as: nip diff 1 2");

    // Switch to the older generation 2, after a question naming it.
    tui.press("s");
    tui.wait_text(&[
        "Switch to generation 2?",
        "Changes from the live generation 4: +hello/1.0, -jq/1.6",
        "Same as: nip switch 2",
    ]);
    tui.press("y");
    tui.wait_text(&["generation 5: switch to 2", "Generations (5,"]);

    // Pin generation 2 (still selected).
    tui.wait_selected("2 ");
    tui.press("p");
    tui.wait_text(&["Pin generation 2?", "Same as: nip pin 2"]);
    tui.press("y");
    tui.wait_text(&["generation 2 pinned", "Pins (1)"]);

    // Make hello/1.0 Current: back to the Apps pane, down to 1.0.
    tui.press(BACKTAB);
    tui.wait_selected("hello");
    tui.press("j");
    tui.wait_selected("1.0");
    tui.press("c");
    tui.wait_text(&[
        "Make hello/1.0 Current?",
        "hello's Current is 1.0 instead of 2.0",
        "Same as: nip current hello 1.0",
    ]);
    tui.press("y");
    tui.wait_text(&["hello/1.0 is Current (was 2.0); generation 6"]);
    // The new generation's line, as `nip history` summarises it.
    tui.wait_text(&["current hello/1.0", "hello 2.0→1.0"]);

    tui.press("q");
    assert_eq!(tui.exit_code(), 0, "screen:\n{}", tui.text());
    assert!(!tui.alternate_screen(), "the shell's screen is back");
    assert!(tui.canonical(), "the terminal is out of raw mode");

    // Exactly those three changes: two new generations, one pin.
    let after = history(&store);
    assert_eq!(after.len(), 6, "{after:#?}");
    assert_eq!(
        &after[..4],
        &before[..],
        "the old generations are untouched"
    );
    assert_eq!(after[4]["id"], 5);
    assert_eq!(after[4]["action"], "switch to 2");
    assert_eq!(after[4]["restores"], 2);
    assert_eq!(after[5]["id"], 6);
    assert_eq!(after[5]["action"], "current hello/1.0");
    assert_eq!(pins(&store), vec![2]);
    assert_eq!(
        installed(&store),
        owned(&[("hello/1.0", true), ("hello/2.0", false)]),
        "generation 2's packages, with hello/1.0 Current"
    );
}

#[test]
fn declining_or_a_stale_question_changes_nothing() {
    let scratch = Scratch::new("tui-decline");
    let store = store_with_history(&scratch);
    let before = store.state();
    let mut tui = Tui::start(&store);
    tui.wait_text(&["Apps (2, 3 versions stored)", "Generations (4,"]);

    // n, Esc and q each decline; keys other than y or n leave the
    // question open.
    // (Current already: nothing to ask.)
    tui.press("c");
    tui.wait_text(&["hello/2.0 is Current already; nothing to do"]);
    tui.press("j");
    tui.wait_selected("1.0");
    for decline in ["n", ESC, "q"] {
        tui.press("c");
        tui.wait_text(&["Make hello/1.0 Current?", "back into the installed set"]);
        tui.press("x");
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            tui.text().contains("Make hello/1.0 Current?"),
            "still asking"
        );
        tui.press(decline);
        tui.wait_text(&["cancelled: nip current hello 1.0 not run"]);
        tui.wait_gone("Make hello/1.0 Current?");
    }
    tui.press("r");
    tui.wait_text(&[
        "Roll back?",
        "generation 3, the one before",
        "Same as: nip rollback",
    ]);
    tui.press("n");
    tui.wait_text(&["cancelled: nip rollback not run"]);
    tui.press(TAB);
    tui.press("p");
    tui.wait_text(&["Pin generation 4?"]);
    tui.press("n");
    tui.wait_text(&["cancelled: nip pin 4 not run"]);
    store.assert_unchanged(&before, "after declining in the TUI");
    assert!(pins(&store).is_empty());

    // Another nip changes the store: the screen follows.
    store.ok(["pin", "1"]);
    tui.wait_text(&["Pins (1)"]);

    // A question asked before another nip changed the store is not
    // answered by acting on a store it no longer describes.
    tui.press("s");
    tui.wait_text(&["Switch to generation 4?"]);
    store.ok(["unpin", "1"]);
    let changed = store.state();
    tui.press("y");
    tui.wait_text(&[
        "the store changed while you were deciding",
        "nip switch 4 not run",
    ]);
    store.assert_unchanged(&changed, "after a stale confirmation");
    tui.wait_text(&["Pins (0)"]);

    // A failure is shown, and the interface goes on: the store's catalog
    // moved away while the question was open.
    tui.press("p");
    tui.wait_text(&["Pin generation 4?"]);
    let catalog = store.path().join("catalog.db");
    let aside = store.path().join("catalog.db.aside");
    std::fs::rename(&catalog, &aside).unwrap();
    tui.press("y");
    tui.wait_text(&["error: opening the store in", "catalog.db"]);
    std::fs::rename(&aside, &catalog).unwrap();
    store.assert_unchanged(&changed, "after a failed pin");
    tui.press("?");
    tui.wait_text(&["(nip pin/unpin GEN)", "Any key closes this window."]);
    tui.press("x");
    tui.wait_gone("Any key closes this window.");

    // SIGTERM ends it cleanly too: the terminal is given back.
    let pid = tui.child.process_id().expect("pid") as libc::pid_t;
    // SAFETY: kill(2) of the child this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    assert_eq!(tui.exit_code(), 0);
    assert!(!tui.alternate_screen());
    assert!(tui.canonical());
}

#[test]
fn without_a_terminal_it_says_what_to_use_instead() {
    let store = Store::init();
    // The harness's stdin is /dev/null and stdout a pipe.
    let run = store.fails_with(&[1], ["tui"]);
    assert!(run.stderr.contains("needs a terminal"), "{run}");
    assert!(run.stderr.contains("--json"), "{run}");
    assert!(run.stdout.is_empty(), "no screen drawn into a pipe:\n{run}");
}
