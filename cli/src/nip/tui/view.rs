//! Drawing `nip tui`'s screen from its state: a title line, the Apps and
//! Pins side by side over the Generations, a status line and the keys; a
//! window for help, details or a confirmation on top.

use std::path::Path;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{Block, Clear, Paragraph, Row, Table, TableState, Wrap};

use super::state::{App, Overlay, Pane};
use crate::human;
use crate::nip::changes::history_summary;

/// Styles, in colour or (`NO_COLOR` set) with attributes only.
#[derive(Clone, Copy, Debug)]
pub struct Theme {
    color: bool,
}

impl Theme {
    /// Colour unless `NO_COLOR` is set to anything non-empty
    /// (no-color.org).
    pub fn from_env() -> Theme {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Theme { color: !no_color }
    }

    fn tinted(&self, color: Color) -> Style {
        if self.color {
            Style::new().fg(color)
        } else {
            Style::new()
        }
    }

    fn focused(&self) -> Style {
        self.tinted(Color::Cyan).add_modifier(Modifier::BOLD)
    }

    fn selected(&self) -> Style {
        Style::new().add_modifier(Modifier::REVERSED)
    }

    fn error(&self) -> Style {
        self.tinted(Color::Red).add_modifier(Modifier::BOLD)
    }

    fn good(&self) -> Style {
        self.tinted(Color::Green)
    }

    fn muted(&self) -> Style {
        if self.color {
            Style::new().fg(Color::DarkGray)
        } else {
            Style::new().add_modifier(Modifier::DIM)
        }
    }

    fn header(&self) -> Style {
        Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED)
    }
}

/// The keys, on the last line.
const KEYS: &str =
    "↑↓ move  Tab pane  Enter details  s switch  r rollback  p pin  c Current  ? help  q quit";

/// The help window.
const HELP: &[&str] = &[
    "↑ ↓ j k          move in the list (PgUp PgDn, g G or Home End: further)",
    "Tab, Shift-Tab   next, previous pane: Apps, Generations, Pins",
    "Enter            details: a version (as nip info), a generation and",
    "                 what it changed (as nip diff)",
    "s                switch to the selected generation    (nip switch GEN)",
    "r                roll back                            (nip rollback)",
    "p                pin or unpin the selected generation (nip pin/unpin GEN)",
    "c                make the selected version Current    (nip current APP VERSION)",
    "q                quit",
    "",
    "Each change is asked first: y does it, n or Esc cancels. Each is the nip",
    "command named, run through the same code; the screen follows the store,",
    "also when another nip changes it.",
    "",
    "Any key closes this window.",
];

/// Draws the whole screen.
pub fn draw(frame: &mut Frame, app: &App, theme: &Theme, store_dir: &Path) {
    let status_line = match &app.status {
        Some(s) if s.is_error => Line::styled(format!("error: {}", s.text), theme.error()),
        Some(s) => Line::styled(s.text.clone(), theme.good()),
        None => Line::styled("Tab: next pane, Enter: details, ?: help", theme.muted()),
    };
    // A long message (an error and its causes) wraps onto up to three
    // lines rather than being cut.
    let width = usize::from(frame.area().width.max(1));
    let status_rows = status_line.width().div_ceil(width).clamp(1, 3) as u16;
    let [title, body, status, keys] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(6),
        Constraint::Length(status_rows),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    draw_title(frame, title, app, store_dir);
    let [top, bottom] =
        Layout::vertical([Constraint::Percentage(45), Constraint::Percentage(55)]).areas(body);
    let [apps, pins] = Layout::horizontal([Constraint::Min(40), Constraint::Length(40)]).areas(top);
    draw_apps(frame, apps, app, theme);
    draw_pins(frame, pins, app, theme);
    draw_generations(frame, bottom, app, theme);
    frame.render_widget(
        Paragraph::new(status_line).wrap(Wrap { trim: false }),
        status,
    );
    frame.render_widget(Paragraph::new(Line::styled(KEYS, theme.muted())), keys);
    if let Some(overlay) = &app.overlay {
        draw_overlay(frame, overlay, theme);
    }
}

fn draw_title(frame: &mut Frame, area: Rect, app: &App, store_dir: &Path) {
    let live = match app.snapshot.live() {
        Some(g) => format!("live generation {}", g.id),
        None => "no generation yet".to_string(),
    };
    let text = format!(" nip tui · store {} · {live}", store_dir.display());
    frame.render_widget(
        Paragraph::new(Line::styled(
            text,
            Style::new().add_modifier(Modifier::BOLD),
        )),
        area,
    );
}

/// A time in a list: to the minute (`2026-11-01 12:34`), as the details
/// show it in full.
fn list_time(secs: i64) -> String {
    human::time(secs).chars().take(16).collect()
}

/// A pane's frame, its title marking the focused one.
fn pane_block<'a>(title: String, focused: bool, theme: &Theme) -> Block<'a> {
    let block = Block::bordered().title(format!(" {title} "));
    if focused {
        block.border_style(theme.focused())
    } else {
        block
    }
}

/// Renders `table` with row `selected` marked: highlighted in the focused
/// pane, only pointed at in the others.
fn render_list(
    frame: &mut Frame,
    area: Rect,
    table: Table<'_>,
    selected: usize,
    focused: bool,
    theme: &Theme,
) {
    let table = if focused {
        table
            .row_highlight_style(theme.selected())
            .highlight_symbol("▶ ")
    } else {
        table.highlight_symbol("▷ ")
    };
    let mut state = TableState::default().with_selected(Some(selected));
    frame.render_stateful_widget(table, area, &mut state);
}

/// A pane with nothing to list: its frame and a line saying how to fill it.
fn render_empty(frame: &mut Frame, area: Rect, block: Block<'_>, text: &str, theme: &Theme) {
    frame.render_widget(
        Paragraph::new(Line::styled(text.to_string(), theme.muted()))
            .wrap(Wrap { trim: true })
            .block(block),
        area,
    );
}

fn draw_apps(frame: &mut Frame, area: Rect, app: &App, theme: &Theme) {
    let focused = app.focus == Pane::Apps;
    let versions = &app.snapshot.versions;
    let apps = {
        let mut names: Vec<&str> = versions.iter().map(|v| v.package.name.as_str()).collect();
        names.dedup();
        names.len()
    };
    let block = pane_block(
        format!("Apps ({apps}, {} versions stored)", versions.len()),
        focused,
        theme,
    );
    if versions.is_empty() {
        let text = "no App stored yet: nip add DIR --name APP --version VERSION";
        return render_empty(frame, area, block, text, theme);
    }
    let rows = versions.iter().enumerate().map(|(i, v)| {
        let first_of_app = i == 0 || versions[i - 1].package.name != v.package.name;
        let name = if first_of_app {
            v.package.name.clone()
        } else {
            String::new()
        };
        let (state, style) = match (v.current, v.installed) {
            (true, _) => ("Current", theme.good()),
            (false, true) => ("installed", Style::new()),
            (false, false) => ("stored", theme.muted()),
        };
        Row::new(vec![
            name,
            v.package.version.clone(),
            state.to_string(),
            human::size(v.package.bytes.max(0) as u64),
        ])
        .style(style)
    });
    // Names and versions as wide as the longest (within reason), so that
    // a wide terminal does not scatter a row across the screen.
    let widest = |texts: &mut dyn Iterator<Item = &str>, title: &str, most: usize| {
        let width = texts.map(str::len).chain([title.len()]).max().unwrap_or(0);
        Constraint::Length(width.min(most) as u16)
    };
    let app_width = widest(
        &mut versions.iter().map(|v| v.package.name.as_str()),
        "App",
        32,
    );
    let version_width = widest(
        &mut versions.iter().map(|v| v.package.version.as_str()),
        "Version",
        32,
    );
    let table = Table::new(
        rows,
        [
            app_width,
            version_width,
            Constraint::Length(9),
            Constraint::Length(10),
        ],
    )
    .header(Row::new(["App", "Version", "State", "Size"]).style(theme.header()))
    .block(block);
    render_list(frame, area, table, app.selected.apps, focused, theme);
}

fn draw_pins(frame: &mut Frame, area: Rect, app: &App, theme: &Theme) {
    let focused = app.focus == Pane::Pins;
    let pins = &app.snapshot.pins;
    let block = pane_block(format!("Pins ({})", pins.len()), focused, theme);
    if pins.is_empty() {
        let text = "no generation pinned: p on a generation pins it";
        return render_empty(frame, area, block, text, theme);
    }
    let rows = pins
        .iter()
        .map(|p| Row::new(vec![p.generation.to_string(), list_time(p.pinned)]));
    let table = Table::new(rows, [Constraint::Length(6), Constraint::Fill(1)])
        .header(Row::new(["Gen", "Pinned"]).style(theme.header()))
        .block(block);
    render_list(frame, area, table, app.selected.pins, focused, theme);
}

fn draw_generations(frame: &mut Frame, area: Rect, app: &App, theme: &Theme) {
    let focused = app.focus == Pane::Generations;
    let generations = &app.snapshot.generations;
    let block = pane_block(
        format!("Generations ({}, newest first; * live)", generations.len()),
        focused,
        theme,
    );
    if generations.is_empty() {
        let text = "no generation yet: every nip add, remove, switch or rollback makes one";
        return render_empty(frame, area, block, text, theme);
    }
    let rows = generations.iter().enumerate().map(|(i, g)| {
        let live = i == 0;
        let id = format!("{}{}", g.row.id, if live { "*" } else { "" });
        let row = Row::new(vec![
            id,
            if g.pinned { "pin" } else { "" }.to_string(),
            list_time(g.row.created),
            g.row.action.clone(),
            history_summary(g.diff.as_ref()),
        ]);
        if live { row.style(theme.good()) } else { row }
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(6),
            Constraint::Length(3),
            Constraint::Length(16),
            Constraint::Fill(1),
            Constraint::Fill(2),
        ],
    )
    .header(Row::new(["Gen", "Pin", "Created", "Action", "Changes"]).style(theme.header()))
    .block(block);
    render_list(frame, area, table, app.selected.generations, focused, theme);
}

fn draw_overlay(frame: &mut Frame, overlay: &Overlay, theme: &Theme) {
    let (title, lines, scroll, border): (String, Vec<Line>, u16, Style) = match overlay {
        Overlay::Help => (
            "Keys".into(),
            HELP.iter().map(|l| Line::raw(*l)).collect(),
            0,
            theme.focused(),
        ),
        Overlay::Details {
            title,
            lines,
            scroll,
        } => {
            let mut text: Vec<Line> = lines.iter().map(|l| Line::raw(l.clone())).collect();
            text.push(Line::raw(""));
            text.push(Line::styled(
                "↑↓ scroll, any other key closes",
                theme.muted(),
            ));
            (title.clone(), text, *scroll, theme.focused())
        }
        Overlay::Confirm(c) => {
            let mut text: Vec<Line> = c.lines.iter().map(|l| Line::raw(l.clone())).collect();
            text.push(Line::raw(""));
            text.push(Line::from(vec![
                Span::styled("y", theme.error()),
                Span::raw(": yes, do it    "),
                Span::styled("n", Style::new().add_modifier(Modifier::BOLD)),
                Span::raw(" or Esc: no, change nothing"),
            ]));
            ("Confirm".into(), text, 0, theme.error())
        }
    };
    let area = frame.area();
    let width = area.width.saturating_sub(4).clamp(20, 96);
    // Wrapped lines can take more rows than there are lines: leave room.
    let height = (lines.len() as u16 + 4).min(area.height.saturating_sub(2));
    let window = area.centered(Constraint::Length(width), Constraint::Length(height));
    frame.render_widget(Clear, window);
    frame.render_widget(
        Paragraph::new(Text::from(lines))
            .wrap(Wrap { trim: false })
            .scroll((scroll, 0))
            .block(
                Block::bordered()
                    .title(format!(" {title} "))
                    .border_style(border),
            ),
        window,
    );
}
