//! Diagnostics that point into a KDL file: the file's name, the line and
//! column in the message (so a plain `Display` still says where), and the
//! source span for miette to underline.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use miette::{NamedSource, SourceSpan};

/// A KDL file read into memory, kept so that diagnostics can quote it.
#[derive(Clone, Debug)]
pub struct SourceFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// Its text.
    pub text: Arc<str>,
}

impl SourceFile {
    /// A file from its path and text (tests build them from strings).
    pub fn new(path: impl Into<PathBuf>, text: impl Into<Arc<str>>) -> Self {
        SourceFile {
            path: path.into(),
            text: text.into(),
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
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let start = before.rfind('\n').map_or(0, |i| i + 1);
        (line, before[start..].chars().count() + 1)
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
    /// diagnostic (the first) with the others related to it.
    pub fn syntax_error(&self, err: &kdl::KdlError) -> Diag {
        let mut diags = err.diagnostics.iter().map(|d| {
            self.error(
                d.span,
                d.message.clone().unwrap_or_else(|| "invalid KDL".into()),
                d.label.clone().unwrap_or_else(|| "here".into()),
                d.help.clone(),
            )
        });
        match diags.next() {
            Some(mut first) => {
                first.0.more = diags.map(|d| *d.0).collect();
                first
            }
            None => self.error(SourceSpan::from(0..0), "invalid KDL", "here", None),
        }
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
