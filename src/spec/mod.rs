//! Sweep specs: YAML text → spanned tree → structural check against the schema → raw serde
//! types → validated [`SweepSpec`]. Every problem found on the way is collected, so one run
//! shows them all, each with its location and a hint.
//!
//! ```no_run
//! let text = std::fs::read("sweeps/quickstart.yaml").unwrap();
//! let loaded = hubsweep::spec::load("quickstart.yaml", &text);
//! for diagnostic in &loaded.diagnostics {
//!     eprintln!("{}: {}", diagnostic.path, diagnostic.message);
//! }
//! let spec = loaded.spec.expect("valid spec");
//! # let _ = spec;
//! ```

pub mod diag;
pub mod expand;
pub mod raw;
pub mod reference;
pub mod schema_check;
pub mod tree;
pub mod types;
pub mod units;
pub mod validate;

use std::sync::{Arc, OnceLock};

pub use diag::{Diagnostic, Severity};
pub use expand::{ModelInstance, expand_group};
pub use types::*;

/// The outcome of loading a spec: the spec when it is valid, and every diagnostic.
#[derive(Debug)]
pub struct Loaded {
    /// Display name of the file.
    pub file_name: String,
    /// The text, when it was UTF-8 (for rendering snippets).
    pub text: Arc<String>,
    /// The parsed tree, when the YAML could be read.
    pub tree: Option<tree::Node>,
    /// The validated spec, when there is no error.
    pub spec: Option<SweepSpec>,
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

    /// Binds a diagnostic found later (by the planner) to this file's locations.
    pub fn locate(&self, mut diagnostic: Diagnostic) -> Diagnostic {
        if let Some(tree) = &self.tree {
            diagnostic.locate(tree);
        }
        diagnostic
    }
}

/// The JSON Schema of spec files, generated from [`raw::RawSpec`].
pub fn schema() -> &'static serde_json::Value {
    static SCHEMA: OnceLock<serde_json::Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        serde_json::to_value(schemars::schema_for!(raw::RawSpec)).unwrap_or_default()
    })
}

/// The schema as committed in `schemas/sweep.schema.json`.
pub fn schema_text() -> String {
    committed_schema_text(schema())
}

/// A schema as the files under `schemas/` hold it: pretty JSON and a trailing newline.
pub fn committed_schema_text(schema: &serde_json::Value) -> String {
    let mut text = serde_json::to_string_pretty(schema).unwrap_or_default();
    text.push('\n');
    text
}

/// Loads a spec from bytes. Never panics; all problems are in `diagnostics`.
pub fn load(file_name: &str, bytes: &[u8]) -> Loaded {
    let text = Arc::new(String::from_utf8_lossy(bytes).into_owned());
    let mut loaded = Loaded {
        file_name: file_name.to_owned(),
        text,
        tree: None,
        spec: None,
        diagnostics: Vec::new(),
    };
    let tree = match tree::parse(bytes) {
        Ok(tree) => tree,
        Err(err) => {
            let d = err.diagnostic(&tree::FileHints {
                what: "a spec",
                too_large: "a sweep spec is a page of YAML; put data in a `data.source` file",
                empty: "start from sweeps/quickstart.yaml",
            });
            if matches!(err, tree::ParseError::TooLarge { .. }) {
                // Do not ask miette to render a megabyte of source.
                loaded.text = Arc::new(String::new());
            }
            loaded.diagnostics.push(d);
            return loaded;
        }
    };
    let mut diagnostics = schema_check::check(&tree, schema());
    if !diagnostics.is_empty() {
        // Sections that passed the structural check still get their semantic checks, so one
        // run shows every problem in the file.
        let broken: Vec<String> = diagnostics.iter().map(|d| d.path.clone()).collect();
        diagnostics.extend(validate::validate_sections(&tree.to_json(), &broken));
    } else {
        match serde_json::from_value::<raw::RawSpec>(tree.to_json()) {
            Ok(raw) => {
                let (spec, found) = validate::validate(&raw);
                loaded.spec = spec;
                diagnostics.extend(found);
            }
            // The schema check should have caught this; report rather than lose it.
            Err(err) => diagnostics.push(Diagnostic::error(
                "",
                format!("spec does not match its schema: {err}"),
            )),
        }
    }
    for d in &mut diagnostics {
        d.locate(&tree);
    }
    diagnostics.sort_by_key(|d| (d.location.map_or(0, |l| l.offset), d.severity));
    loaded.diagnostics = diagnostics;
    loaded.tree = Some(tree);
    loaded
}
