//! What the KDL targets share: naming the file after the node an input
//! declares (so that inputs get past the name check to the schema), and
//! the invariants of every diagnostic. The configuration file's target
//! (`cli/fuzz`) checks its diagnostics with these too: one definition of
//! what a diagnostic must say for every KDL file nexus reads.

use miette::Diagnostic;
use nexus_system::{Diag, SourceFile};

/// The name in the first `kind "NAME"` of `text` when it is a plain
/// quoted string usable as a file stem, else `fuzz`: a profile or recipe
/// must be named as its file, and a fuzzer cannot guess the file.
pub fn stem(text: &str, kind: &str) -> String {
    let name = text
        .match_indices(kind)
        .find_map(|(at, _)| {
            let rest = text[at + kind.len()..].trim_start().strip_prefix('"')?;
            rest.split_once('"').map(|(name, _)| name)
        })
        .unwrap_or_default();
    let usable =
        !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0']);
    if usable { name.into() } else { "fuzz".into() }
}

/// How many lines `text` has, as a diagnostic counts them (the last one
/// may be empty).
pub fn lines_in(text: &str) -> usize {
    text.matches('\n').count() + 1
}

/// A diagnostic about `file` names the file and a line and column within
/// it (so do the related ones: further syntax errors), its spans lie
/// within the text, and it renders as `nexus` renders it.
pub fn check_diag(file: &SourceFile, diag: &Diag) {
    let text = &*file.text;
    assert_eq!(diag.file(), file.path);
    assert!(!diag.message().is_empty(), "{diag}");
    check_location(file, &diag.to_string());
    assert!(
        (1..=lines_in(text)).contains(&diag.line()),
        "line {} of a text of {} lines: {diag}",
        diag.line(),
        lines_in(text)
    );
    let line = text.split('\n').nth(diag.line() - 1).unwrap_or_default();
    assert!(
        (1..=line.chars().count() + 1).contains(&diag.column()),
        "column {} of a line of {} characters: {diag}",
        diag.column(),
        line.chars().count()
    );
    for span in diag.labels().into_iter().flatten() {
        assert!(
            span.offset() + span.len() <= text.len(),
            "span {}..{} past the end ({}): {diag}",
            span.offset(),
            span.offset() + span.len(),
            text.len()
        );
    }
    for related in diag.related().into_iter().flatten() {
        check_location(file, &related.to_string());
    }
    let mut out = String::new();
    miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
        .render_report(&mut out, diag)
        .expect("a diagnostic renders");
}

/// `message` starts `PATH:LINE:COL: ` with LINE a line of the file and
/// COL at most one past the end of that line.
fn check_location(file: &SourceFile, message: &str) {
    let path = file.path.display().to_string();
    let rest = message
        .strip_prefix(&path)
        .and_then(|r| r.strip_prefix(':'))
        .unwrap_or_else(|| panic!("does not start with {path}: {message}"));
    let mut parts = rest.splitn(3, ':');
    let (Some(line), Some(col), Some(what)) = (parts.next(), parts.next(), parts.next()) else {
        panic!("no line and column: {message}");
    };
    let line: usize = line.parse().expect("a line number");
    let col: usize = col.parse().expect("a column number");
    assert!(what.starts_with(' ') && what.len() > 1, "{message}");
    let text = &*file.text;
    assert!((1..=lines_in(text)).contains(&line), "{message}");
    let chars = text
        .split('\n')
        .nth(line - 1)
        .unwrap_or_default()
        .chars()
        .count();
    assert!((1..=chars + 1).contains(&col), "{message}");
}
