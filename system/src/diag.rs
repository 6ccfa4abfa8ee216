//! Diagnostics that point into a KDL file: the file's name, the line and
//! column in the message (so a plain `Display` still says where), and the
//! source span for miette to underline.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use miette::{NamedSource, SourceSpan};

/// How many of a file's syntax errors a diagnostic shows. One mistake (an
/// unclosed string) often makes hundreds, and a file of junk one per few
/// bytes: miette renders each with its lines, finding them by scanning
/// the file from the start, so 16 000 errors took 2.9 s and printed
/// 2.7 MB.
const MAX_SHOWN: usize = 20;

/// A KDL file read into memory, kept so that diagnostics can quote it.
#[derive(Clone, Debug)]
pub struct SourceFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// Its text (never changed after [`SourceFile::new`], which indexes
    /// its lines).
    pub text: Arc<str>,
    lines: LineStarts,
}

/// The byte offset at which each line of a text starts, the first at 0:
/// a line number is then a binary search, where scanning the text up to
/// each offset made a lookup per line of a profile (or per syntax error)
/// quadratic in the file's size.
#[derive(Clone)]
struct LineStarts(Arc<[usize]>);

impl LineStarts {
    fn of(text: &str) -> Self {
        let after_newlines = text.match_indices('\n').map(|(i, _)| i + 1);
        LineStarts(std::iter::once(0).chain(after_newlines).collect())
    }
}

// Not derived: a file's Debug would list an offset per line.
impl std::fmt::Debug for LineStarts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LineStarts({} lines)", self.0.len())
    }
}

impl SourceFile {
    /// A file from its path and text (tests build them from strings).
    pub fn new(path: impl Into<PathBuf>, text: impl Into<Arc<str>>) -> Self {
        let text = text.into();
        SourceFile {
            path: path.into(),
            lines: LineStarts::of(&text),
            text,
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        // Spans come from the parser and are byte offsets; clamp to a
        // character boundary anyway rather than panic on a bad one.
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        // The lines starting at or before the offset; the first starts
        // at 0, so there is at least one.
        let line = self.lines.0.partition_point(|&start| start <= offset);
        let start = line
            .checked_sub(1)
            .and_then(|i| self.lines.0.get(i))
            .copied()
            .unwrap_or(0);
        (line, self.text[start..offset].chars().count() + 1)
    }

    /// A diagnostic at `span`.
    pub fn error(
        &self,
        span: SourceSpan,
        message: impl Into<String>,
        label: impl Into<String>,
        help: Option<String>,
    ) -> Diag {
        let (line, column) = self.line_col(span.offset());
        Diag(Box::new(Problem {
            message: message.into(),
            path: self.path.clone(),
            line,
            column,
            src: NamedSource::new(self.path.display().to_string(), Arc::clone(&self.text)),
            span,
            label: label.into(),
            help,
            more: Vec::new(),
        }))
    }

    /// The file's syntax errors, as reported by the `kdl` crate, as one
    /// diagnostic (the first) with the next ones related to it, up to
    /// [`MAX_SHOWN`] in all, then one at the next error saying how many
    /// more there are.
    pub fn syntax_error(&self, err: &kdl::KdlError) -> Diag {
        let mut shown = err.diagnostics.iter().take(MAX_SHOWN).map(|d| {
            self.error(
                d.span,
                d.message.clone().unwrap_or_else(|| "invalid KDL".into()),
                d.label.clone().unwrap_or_else(|| "here".into()),
                d.help.clone(),
            )
        });
        let Some(mut first) = shown.next() else {
            return self.error(SourceSpan::from(0..0), "invalid KDL", "here", None);
        };
        first.0.more = shown.map(|d| *d.0).collect();
        if let Some(next) = err.diagnostics.get(MAX_SHOWN) {
            let rest = err.diagnostics.len() - MAX_SHOWN;
            let omitted = self.error(
                next.span,
                format!(
                    "and {rest} more syntax error{} from here on, not shown",
                    if rest == 1 { "" } else { "s" }
                ),
                "the next one",
                Some("fix the first ones: one mistake often causes many errors after it".into()),
            );
            first.0.more.push(*omitted.0);
        }
        first
    }
}

/// A problem in a KDL file, at a place in it (boxed: results that may
/// carry it stay small).
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error(transparent)]
#[diagnostic(transparent)]
pub struct Diag(Box<Problem>);

impl Diag {
    /// The file the diagnostic is about.
    pub fn file(&self) -> &Path {
        &self.0.path
    }

    /// 1-based line of the problem.
    pub fn line(&self) -> usize {
        self.0.line
    }

    /// 1-based column (in characters) of the problem.
    pub fn column(&self) -> usize {
        self.0.column
    }

    /// What is wrong, without the location.
    pub fn message(&self) -> &str {
        &self.0.message
    }
}

/// What a [`Diag`] holds.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("{}:{line}:{column}: {message}", path.display())]
pub struct Problem {
    /// What is wrong.
    pub message: String,
    /// The file.
    pub path: PathBuf,
    /// 1-based line of the span's start.
    pub line: usize,
    /// 1-based column (in characters) of the span's start.
    pub column: usize,
    #[source_code]
    src: NamedSource<Arc<str>>,
    #[label("{label}")]
    span: SourceSpan,
    label: String,
    #[help]
    help: Option<String>,
    /// Further problems in the same file (several syntax errors).
    #[related]
    pub more: Vec<Problem>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_lines_and_characters() {
        let file = SourceFile::new("x.kdl", "ab\n\nçd\ne");
        let at = |offset| file.line_col(offset);
        assert_eq!(at(0), (1, 1));
        assert_eq!(at(2), (1, 3)); // the newline ends line 1
        assert_eq!(at(3), (2, 1)); // an empty line
        assert_eq!(at(4), (3, 1));
        assert_eq!(at(6), (3, 2)); // after the two bytes of ç
        assert_eq!(at(5), (3, 1)); // inside ç: clamped to its start
        assert_eq!(at(9), (4, 2)); // the end
        assert_eq!(at(99), (4, 2)); // past the end: clamped
        assert_eq!(SourceFile::new("x.kdl", "").line_col(0), (1, 1));
    }

    /// The syntax errors of `text`, as `syntax_error` reports them.
    fn syntax_error(text: &str) -> Diag {
        let file = SourceFile::new("x.kdl", text);
        let err = text.parse::<kdl::KdlDocument>().expect_err("valid KDL");
        file.syntax_error(&err)
    }

    #[test]
    fn syntax_errors_are_shown_up_to_twenty_then_counted() {
        // `=` alone on a line is one syntax error.
        let d = syntax_error(&"=\n".repeat(MAX_SHOWN));
        assert_eq!(d.0.more.len(), MAX_SHOWN - 1);
        assert!(d.to_string().starts_with("x.kdl:1:1: "), "{d}");
        assert_eq!(d.0.more.last().map(|p| p.line), Some(MAX_SHOWN));

        let d = syntax_error(&"=\n".repeat(MAX_SHOWN + 1));
        let last = d.0.more.last().expect("related");
        assert_eq!(d.0.more.len(), MAX_SHOWN);
        assert_eq!(
            last.message,
            "and 1 more syntax error from here on, not shown"
        );
        assert_eq!(last.line, MAX_SHOWN + 1);

        let d = syntax_error(&"=\n".repeat(16_000));
        let last = d.0.more.last().expect("related");
        assert_eq!(d.0.more.len(), MAX_SHOWN);
        assert_eq!(
            last.to_string(),
            "x.kdl:21:1: and 15980 more syntax errors from here on, not shown"
        );
    }

    /// The index gives what scanning the text up to the offset gave.
    #[test]
    fn line_col_agrees_with_a_scan() {
        let scan = |text: &str, offset: usize| {
            let before = &text[..offset];
            let line = before.matches('\n').count() + 1;
            let start = before.rfind('\n').map_or(0, |i| i + 1);
            (line, before[start..].chars().count() + 1)
        };
        for text in ["\n", "\n\n", "a\n", "\na", "é\n\nxyz\r\nü\n€ 1\n", "plain"] {
            let file = SourceFile::new("x.kdl", text);
            for offset in (0..=text.len()).filter(|&o| text.is_char_boundary(o)) {
                assert_eq!(
                    file.line_col(offset),
                    scan(text, offset),
                    "{text:?} at {offset}"
                );
            }
        }
    }
}
