//! Structural check of a spec tree against the JSON Schema generated from the raw types.
//!
//! serde stops at the first error; a researcher fixing a spec wants all of them. So before
//! deserializing, the tree is walked against `schemas/sweep.schema.json` (the same schema their
//! editor uses) and every unknown key, wrong type, missing key, bad enum value and empty list is
//! reported with its location and a "did you mean" where one fits. Only the schema features that
//! schemars emits for our types are supported; an unsupported keyword is ignored, not guessed.

use serde_json::{Map, Value as Json};

use super::diag::{Diagnostic, did_you_mean};
use super::tree::{Node, Value, escape_pointer};

/// Checks `root` against `schema` and returns every structural error.
pub fn check(root: &Node, schema: &Json) -> Vec<Diagnostic> {
    let checker = Checker {
        root_schema: schema,
    };
    let mut out = Vec::new();
    checker.node(root, schema, "", &mut out);
    out
}

struct Checker<'s> {
    root_schema: &'s Json,
}

impl<'s> Checker<'s> {
    fn resolve(&self, schema: &'s Json) -> &'s Json {
        let mut schema = schema;
        // `$ref: "#/$defs/Name"` chains are short; bound the walk anyway.
        for _ in 0..16 {
            match schema.get("$ref").and_then(Json::as_str) {
                Some(reference) => {
                    let pointer = reference.trim_start_matches('#');
                    match self.root_schema.pointer(pointer) {
                        Some(target) => schema = target,
                        None => return schema,
                    }
                }
                None => return schema,
            }
        }
        schema
    }

    fn node(&self, node: &Node, schema: &'s Json, path: &str, out: &mut Vec<Diagnostic>) {
        let schema = self.resolve(schema);
        if let Some(branches) = schema
            .get("anyOf")
            .or_else(|| schema.get("oneOf"))
            .and_then(Json::as_array)
        {
            self.alternatives(node, branches, path, out);
            // Sibling keywords of anyOf (schemars puts `description` there) carry no constraints.
            return;
        }
        if !type_matches(schema, &node.value) {
            out.push(Diagnostic::error(
                path,
                format!(
                    "expected {}, found {}",
                    describe(self.resolve(schema)),
                    node.value.kind()
                ),
            ));
            return;
        }
        if let Some(values) = schema.get("enum").and_then(Json::as_array) {
            self.enumeration(node, values, path, out);
        }
        if let Some(constant) = schema.get("const")
            && node.to_json() != *constant
        {
            out.push(Diagnostic::error(
                path,
                format!("expected `{}`", json_text(constant)),
            ));
        }
        match &node.value {
            Value::Map(entries) => self.map(node, entries, schema, path, out),
            Value::Seq(items) => self.seq(items, schema, path, out),
            Value::Int(i) => self.range(*i as f64, schema, path, out),
            Value::Float(f) => self.range(*f, schema, path, out),
            _ => {}
        }
    }

    fn alternatives(
        &self,
        node: &Node,
        branches: &'s [Json],
        path: &str,
        out: &mut Vec<Diagnostic>,
    ) {
        let branches: Vec<&Json> = branches.iter().map(|b| self.resolve(b)).collect();
        // An enum whose variants carry docs comes out as one `const` (or `enum`) per branch:
        // report it as one enum, with a suggestion.
        let constants: Vec<Json> = branches
            .iter()
            .flat_map(
                |b| match (b.get("const"), b.get("enum").and_then(Json::as_array)) {
                    (Some(c), _) => vec![c.clone()],
                    (None, Some(values)) => values.clone(),
                    (None, None) => Vec::new(),
                },
            )
            .collect();
        if branches
            .iter()
            .all(|b| b.get("const").is_some() || b.get("enum").is_some())
        {
            self.enumeration(node, &constants, path, out);
            return;
        }
        // Externally tagged enum (`- spectrum: {...}`): pick the branch by its one key.
        if let Value::Map(entries) = &node.value {
            let tags: Vec<&str> = branches.iter().filter_map(|b| single_required(b)).collect();
            if tags.len() == branches.len() && !tags.is_empty() {
                if entries.len() != 1 {
                    out.push(
                        Diagnostic::error(path, format!("expected exactly one of {}", list(&tags)))
                            .with_help("write each one as its own list item"),
                    );
                    return;
                }
                let key = entries[0].0.key_text();
                match branches
                    .iter()
                    .position(|b| single_required(b) == Some(key.as_str()))
                {
                    Some(i) => self.node(node, branches[i], path, out),
                    None => {
                        let at = format!("{path}/{}", escape_pointer(&key));
                        let mut d = Diagnostic::error(
                            &at,
                            format!("unknown `{key}`; expected one of {}", list(&tags)),
                        )
                        .on_key();
                        if let Some(help) = did_you_mean(&key, tags.iter().copied()) {
                            d = d.with_help(help);
                        }
                        out.push(d);
                    }
                }
                return;
            }
        }
        let mut best: Option<Vec<Diagnostic>> = None;
        for branch in branches.iter().filter(|b| type_matches(b, &node.value)) {
            let mut errors = Vec::new();
            self.node(node, branch, path, &mut errors);
            if errors.is_empty() {
                return;
            }
            if best.as_ref().is_none_or(|b| errors.len() < b.len()) {
                best = Some(errors);
            }
        }
        match best {
            Some(errors) => out.extend(errors),
            None => {
                let expected: Vec<String> = branches.iter().map(|b| describe(b)).collect();
                out.push(Diagnostic::error(
                    path,
                    format!(
                        "expected {}, found {}",
                        expected.join(" or "),
                        node.value.kind()
                    ),
                ));
            }
        }
    }

    fn enumeration(&self, node: &Node, values: &[Json], path: &str, out: &mut Vec<Diagnostic>) {
        let actual = node.to_json();
        if values.contains(&actual) {
            return;
        }
        let names: Vec<&str> = values.iter().filter_map(Json::as_str).collect();
        let mut d = Diagnostic::error(
            path,
            format!(
                "unknown value `{}`; expected one of {}",
                json_text(&actual),
                list(&names)
            ),
        );
        if let Some(word) = actual.as_str()
            && let Some(help) = did_you_mean(word, names.iter().copied())
        {
            d = d.with_help(help);
        }
        out.push(d);
    }

    fn map(
        &self,
        node: &Node,
        entries: &[(Node, Node)],
        schema: &'s Json,
        path: &str,
        out: &mut Vec<Diagnostic>,
    ) {
        let empty = Map::new();
        let properties = schema
            .get("properties")
            .and_then(Json::as_object)
            .unwrap_or(&empty);
        let additional = schema.get("additionalProperties");
        let mut seen: Vec<(String, u64)> = Vec::new();
        for (key, value) in entries {
            let name = key.key_text();
            let at = format!("{path}/{}", escape_pointer(&name));
            if let Some((_, line)) = seen.iter().find(|(k, _)| *k == name) {
                out.push(
                    Diagnostic::error(
                        &at,
                        format!("duplicate key `{name}` (first written on line {line})"),
                    )
                    .with_help("remove one of them; YAML keys must be unique")
                    .located_at(key),
                );
                continue;
            }
            seen.push((name.clone(), key.location.line));
            if !matches!(key.value, Value::Str(_)) {
                out.push(
                    Diagnostic::error(&at, format!("key `{name}` must be a string"))
                        .located_at(key),
                );
                continue;
            }
            if let Some(property) = properties.get(&name) {
                self.node(value, property, &at, out);
            } else {
                match additional {
                    Some(Json::Bool(false)) => {
                        let mut d =
                            Diagnostic::error(&at, format!("unknown key `{name}`")).located_at(key);
                        let help = did_you_mean(&name, properties.keys().map(String::as_str))
                            .unwrap_or_else(|| {
                                format!(
                                    "expected one of {}",
                                    list(
                                        &properties.keys().map(String::as_str).collect::<Vec<_>>()
                                    )
                                )
                            });
                        d = d.with_help(help);
                        out.push(d);
                    }
                    Some(extra @ Json::Object(_)) => self.node(value, extra, &at, out),
                    _ => {}
                }
            }
        }
        for required in schema
            .get("required")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
        {
            let Some(required) = required.as_str() else {
                continue;
            };
            if !seen.iter().any(|(k, _)| k == required) {
                let mut d = Diagnostic::error(path, format!("missing key `{required}`"));
                if let Some(description) = properties
                    .get(required)
                    .and_then(|p| self.resolve(p).get("description").or(p.get("description")))
                    .and_then(Json::as_str)
                {
                    d = d.with_help(format!(
                        "`{required}`: {}",
                        description.trim_end_matches('.')
                    ));
                }
                out.push(d.located_at(node));
            }
        }
    }

    fn seq(&self, items: &[Node], schema: &'s Json, path: &str, out: &mut Vec<Diagnostic>) {
        if let Some(min) = schema.get("minItems").and_then(Json::as_u64)
            && (items.len() as u64) < min
        {
            let message = if items.is_empty() {
                "list is empty".to_owned()
            } else {
                format!("list needs at least {min} items")
            };
            out.push(
                Diagnostic::error(path, message)
                    .with_help("give at least one value, or remove the key to use the default"),
            );
        }
        if let Some(item_schema) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                self.node(item, item_schema, &format!("{path}/{i}"), out);
            }
        }
    }

    fn range(&self, number: f64, schema: &Json, path: &str, out: &mut Vec<Diagnostic>) {
        if let Some(min) = schema.get("minimum").and_then(Json::as_f64)
            && number < min
        {
            out.push(Diagnostic::error(
                path,
                format!("`{number}` is below the minimum `{min}`"),
            ));
        }
        if let Some(max) = schema.get("maximum").and_then(Json::as_f64)
            && number > max
        {
            out.push(Diagnostic::error(
                path,
                format!("`{number}` is above the maximum `{max}`"),
            ));
        }
    }
}

impl Diagnostic {
    fn located_at(mut self, node: &Node) -> Self {
        self.location = Some(node.location);
        self
    }
}

fn single_required(schema: &Json) -> Option<&str> {
    let required = schema.get("required")?.as_array()?;
    match required.as_slice() {
        [only] if schema.get("properties")?.as_object()?.len() == 1 => only.as_str(),
        _ => None,
    }
}

fn types_of(schema: &Json) -> Vec<&str> {
    match schema.get("type") {
        Some(Json::String(t)) => vec![t.as_str()],
        Some(Json::Array(ts)) => ts.iter().filter_map(Json::as_str).collect(),
        _ => Vec::new(),
    }
}

fn type_matches(schema: &Json, value: &Value) -> bool {
    let types = types_of(schema);
    if types.is_empty() {
        return true;
    }
    types.iter().any(|t| match (*t, value) {
        ("null", Value::Null)
        | ("boolean", Value::Bool(_))
        | ("integer", Value::Int(_))
        | ("number", Value::Int(_) | Value::Float(_))
        | ("string", Value::Str(_))
        | ("array", Value::Seq(_))
        | ("object", Value::Map(_)) => true,
        ("integer", Value::Float(f)) => f.fract() == 0.0,
        _ => false,
    })
}

fn describe(schema: &Json) -> String {
    if let Some(values) = schema.get("enum").and_then(Json::as_array) {
        let names: Vec<&str> = values.iter().filter_map(Json::as_str).collect();
        return format!("one of {}", list(&names));
    }
    let types = types_of(schema);
    if types.is_empty() {
        return "a value".to_owned();
    }
    let words: Vec<&str> = types
        .iter()
        .filter(|t| **t != "null")
        .map(|t| match *t {
            "boolean" => "a boolean",
            "integer" => "an integer",
            "number" => "a number",
            "string" => "a string",
            "array" => "a list",
            "object" => "a mapping",
            _ => "a value",
        })
        .collect();
    if words.is_empty() {
        "null".to_owned()
    } else {
        words.join(" or ")
    }
}

fn list(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn json_text(value: &Json) -> String {
    match value {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}
