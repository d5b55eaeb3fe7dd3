//! Emit: a paper's values, tables and figures computed from output repos pinned to commits, so
//! that no number in a manuscript is typed by hand and a CI step can say when one drifted.
//!
//! ```text
//! EMIT.yaml ─► tree ─► schema check ─► raw ─► validate ─► EmitFile
//!                                 sources @SHA (hub client) ─► compute ─► render ─► files
//!                                                                      └─► check (compare)
//! ```
//!
//! Like sweep specs, an emit file's problems are collected all at once as
//! [`crate::spec::Diagnostic`]s at document paths and located in the file; problems only the
//! data shows (a selection that matches no row) come back from [`compute::compute`] the same
//! way. The library reads no files and opens no hub: the CLI gives it a client per source.
//! Format: `docs/emit.md`; schema: `schemas/emit.schema.json`.

pub mod check;
pub mod columns;
pub mod compute;
pub mod format;
pub mod pdf;
pub mod raw;
pub mod render;
pub mod source;
pub mod types;
pub mod validate;

use std::sync::{Arc, OnceLock};

pub use render::{Header, Item, OutputFile};
pub use types::{EmitFile, Source};

use crate::spec::{Diagnostic, Severity, tree};

/// An emit file, loaded: the file when it is valid, and every diagnostic (located).
#[derive(Debug)]
pub struct Loaded {
    /// Display name of the file.
    pub file_name: String,
    /// The text (for rendering snippets).
    pub text: Arc<String>,
    /// The parsed tree, when the YAML could be read (to locate later diagnostics).
    pub tree: Option<tree::Node>,
    /// The validated file, when there is no error.
    pub file: Option<EmitFile>,
    /// Errors and warnings, in file order.
    pub diagnostics: Vec<Diagnostic>,
}

impl Loaded {
    /// Whether any diagnostic is an error.
    pub fn has_errors(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error)
    }

    /// Binds diagnostics found later (on the data) to this file's locations, in file order.
    pub fn locate(&self, mut diagnostics: Vec<Diagnostic>) -> Vec<Diagnostic> {
        if let Some(tree) = &self.tree {
            for d in &mut diagnostics {
                d.locate(tree);
            }
        }
        diagnostics.sort_by_key(|d| (d.location.map_or(0, |l| l.offset), d.severity));
        diagnostics
    }
}

/// The JSON Schema of emit files, generated from [`raw::RawEmit`].
pub fn schema() -> &'static serde_json::Value {
    static SCHEMA: OnceLock<serde_json::Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        serde_json::to_value(schemars::schema_for!(raw::RawEmit)).unwrap_or_default()
    })
}

/// The schema as committed in `schemas/emit.schema.json` (pretty JSON, trailing newline).
pub fn schema_text() -> String {
    crate::spec::committed_schema_text(schema())
}

/// Loads an emit file from bytes. Never panics; all problems are in `diagnostics`.
pub fn load(file_name: &str, bytes: &[u8]) -> Loaded {
    let mut loaded = Loaded {
        file_name: file_name.to_owned(),
        text: Arc::new(String::from_utf8_lossy(bytes).into_owned()),
        tree: None,
        file: None,
        diagnostics: Vec::new(),
    };
    let tree = match tree::parse(bytes) {
        Ok(tree) => tree,
        Err(err) => {
            let d = err.diagnostic(&tree::FileHints {
                what: "an emit file",
                too_large: "an emit file is a page of YAML",
                empty: "start from examples/paper/paper.yaml",
            });
            if matches!(err, tree::ParseError::TooLarge { .. }) {
                loaded.text = Arc::new(String::new());
            }
            loaded.diagnostics.push(d);
            return loaded;
        }
    };
    let mut diagnostics = crate::spec::schema_check::check(&tree, schema());
    if diagnostics.is_empty() {
        match serde_json::from_value::<raw::RawEmit>(tree.to_json()) {
            Ok(raw) => {
                let (file, found) = validate::validate(&raw);
                loaded.file = file;
                diagnostics.extend(found);
            }
            Err(err) => diagnostics.push(Diagnostic::error(
                "",
                format!("emit file does not match its schema: {err}"),
            )),
        }
    }
    loaded.tree = Some(tree);
    loaded.diagnostics = loaded.locate(diagnostics);
    loaded
}

/// Computes and renders every file of `file` from the sources' `data` (in source order), or
/// the diagnostics the data gives (not yet located: see [`Loaded::locate`]).
pub fn emit(
    file: &EmitFile,
    data: &[source::SourceData],
    header: &Header,
) -> Result<Vec<OutputFile>, Vec<Diagnostic>> {
    let computed = compute::compute(file, data)?;
    Ok(render::render(file, &computed, header))
}
