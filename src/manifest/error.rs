//! The one error type of the manifest stage: every rejection names the file, line, column and
//! field path, and carries the source so miette can show the offending line.

use miette::{Diagnostic, NamedSource, SourceSpan};

use super::path::FieldPath;
use super::source::{Pos, Source};

#[derive(Clone, Debug, thiserror::Error, Diagnostic)]
#[error("{file}:{line}:{column}: {path}: {message}")]
pub struct ManifestError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// The field path, as written in messages (`services[1].capabilities[1]`).
    pub path: String,
    pub message: String,
    #[source_code]
    src: NamedSource<String>,
    #[label("{label}")]
    span: SourceSpan,
    /// The message's first clause, shown under the offending text.
    label: String,
    #[help]
    pub help: Option<String>,
}

impl ManifestError {
    pub fn at(source: &Source, pos: Pos, path: &FieldPath, message: impl Into<String>) -> Self {
        ManifestError {
            file: source.name.clone(),
            line: pos.line,
            column: pos.column,
            path: path.to_string(),
            label: String::new(),
            message: message.into(),
            src: NamedSource::new(source.name.clone(), source.text.clone()),
            span: SourceSpan::new(
                pos.offset.into(),
                pos.len
                    .max(1)
                    .min(source.text.len().saturating_sub(pos.offset)),
            ),
            help: None,
        }
        .with_label()
    }

    fn with_label(mut self) -> Self {
        self.label = self
            .message
            .split(", expected")
            .next()
            .unwrap_or(&self.message)
            .to_string();
        self
    }

    /// An error about the value at `path`.
    pub fn value(source: &Source, path: &FieldPath, message: impl Into<String>) -> Self {
        Self::at(source, source.value_pos(path), path, message)
    }

    /// An error about the key at the end of `path` (unknown keys).
    pub fn key(source: &Source, path: &FieldPath, message: impl Into<String>) -> Self {
        Self::at(source, source.key_pos(path), path, message)
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}
