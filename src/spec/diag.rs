//! Spec diagnostics: what is wrong, where (a document path resolved to a file location), and
//! what to do about it. Rendering (miette) happens at the CLI edge; these are plain data.

use std::sync::Arc;

use miette::{LabeledSpan, NamedSource, SourceSpan};

use super::tree::{Location, Node};

/// How serious a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The spec cannot be used.
    Error,
    /// The spec is usable but probably not what was meant.
    Warning,
}

/// One finding about a spec file.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// What is wrong, lowercase, values in backticks.
    pub message: String,
    /// Document path of the offending node (`/models/0/repo`); `""` is the whole document.
    pub path: String,
    /// Point at the key of the entry at `path` rather than its value.
    #[serde(skip)]
    pub on_key: bool,
    /// What to do about it ("did you mean `layers`?").
    pub help: Option<String>,
    /// Resolved location in the file, when the path exists there.
    pub location: Option<Location>,
}

impl Diagnostic {
    /// An error at `path`.
    pub fn error(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            message: message.into(),
            path: path.into(),
            on_key: false,
            help: None,
            location: None,
        }
    }

    /// A warning at `path`.
    pub fn warning(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(path, message)
        }
    }

    /// Adds a hint.
    #[must_use]
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Points at the key instead of the value.
    #[must_use]
    pub fn on_key(mut self) -> Self {
        self.on_key = true;
        self
    }

    /// Resolves `path` to a location in `root`, walking up to the nearest existing ancestor.
    pub fn locate(&mut self, root: &Node) {
        if self.location.is_some() {
            return;
        }
        if self.on_key
            && let Some(key) = root.find_key(&self.path)
        {
            self.location = Some(key.location);
            return;
        }
        let mut path = self.path.as_str();
        loop {
            if let Some(node) = root.find(path) {
                self.location = Some(node.location);
                return;
            }
            match path.rsplit_once('/') {
                Some((parent, _)) => path = parent,
                None => return,
            }
        }
    }
}

/// "did you mean `x`?" for the closest candidate, when one is close enough.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| format!("did you mean `{c}`?"))
}

/// A diagnostic bound to its source text, ready for miette to render.
#[derive(Debug)]
pub struct Rendered {
    diagnostic: Diagnostic,
    source: NamedSource<Arc<String>>,
}

impl Rendered {
    /// Binds `diagnostic` to the file it is about.
    pub fn new(diagnostic: Diagnostic, file_name: &str, text: Arc<String>) -> Self {
        Self {
            diagnostic,
            source: NamedSource::new(file_name, text),
        }
    }
}

impl std::fmt::Display for Rendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.diagnostic.message)
    }
}

impl std::error::Error for Rendered {}

impl miette::Diagnostic for Rendered {
    fn severity(&self) -> Option<miette::Severity> {
        Some(match self.diagnostic.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        })
    }
    fn help<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        self.diagnostic
            .help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn std::fmt::Display>)
    }
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.diagnostic
            .location
            .map(|_| &self.source as &dyn miette::SourceCode)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let location = self.diagnostic.location?;
        let label = if self.diagnostic.path.is_empty() {
            "here".to_owned()
        } else {
            self.diagnostic.path.clone()
        };
        let span = SourceSpan::new(location.offset.into(), location.len);
        Some(Box::new(std::iter::once(LabeledSpan::new_with_span(
            Some(label),
            span,
        ))))
    }
}
