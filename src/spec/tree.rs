//! The YAML document as a generic tree with source locations.
//!
//! Parsing happens once, with serde-saphyr (maintained, panic-free, location-aware; see
//! docs/yaml.md for why not serde_yaml). The tree keeps every key's and value's position so that
//! any check, structural or semantic, can point back into the file by document path
//! (`/models/0/repo`). Duplicate keys are kept, not merged, so they can be reported.

use std::fmt;

use super::diag::Diagnostic;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{Budget, DuplicateKeyPolicy, Options, Spanned};

/// Largest spec file accepted; a sweep spec is a page of YAML, not a data file.
pub const MAX_SPEC_BYTES: usize = 1024 * 1024;

/// A position in the source text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Location {
    /// 1-based line.
    pub line: u64,
    /// 1-based column.
    pub column: u64,
    /// Byte offset of the start.
    pub offset: usize,
    /// Length in bytes (at least 1 where the source has a character there).
    pub len: usize,
}

/// A node of the document with its location.
#[derive(Debug, Clone)]
pub struct Node {
    /// The value.
    pub value: Value,
    /// Where it was written.
    pub location: Location,
}

/// A YAML value.
#[derive(Debug, Clone)]
pub enum Value {
    /// `null`, `~` or nothing.
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A floating-point number.
    Float(f64),
    /// A string.
    Str(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in file order, duplicates kept.
    Map(Vec<(Node, Node)>),
}

impl Value {
    /// What a reader calls this kind of value, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

impl Node {
    /// The string key of a mapping key node (non-string keys are rendered as written).
    pub fn key_text(&self) -> String {
        match &self.value {
            Value::Str(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Null => "null".to_owned(),
            Value::Seq(_) | Value::Map(_) => "<complex key>".to_owned(),
        }
    }

    /// The node at a document path such as `/models/0/repo` (`""` is the root).
    /// For a map entry, `key_of` selects the key node instead of the value.
    pub fn find(&self, path: &str) -> Option<&Node> {
        let mut node = self;
        for part in path.split('/').skip(1) {
            let part = unescape_pointer(part);
            node = match &node.value {
                Value::Map(entries) => &entries.iter().rev().find(|(k, _)| k.key_text() == part)?.1,
                Value::Seq(items) => items.get(part.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(node)
    }

    /// The key node of the entry at `path` (a map entry), for errors about the key itself.
    pub fn find_key(&self, path: &str) -> Option<&Node> {
        let (parent, last) = path.rsplit_once('/')?;
        let last = unescape_pointer(last);
        match &self.find(parent)?.value {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.key_text() == last)
                .map(|(k, _)| k),
            _ => None,
        }
    }

    /// The tree as JSON (later duplicate keys win, as serde would see them).
    pub fn to_json(&self) -> serde_json::Value {
        match &self.value {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Int(i) => serde_json::Value::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map_or(serde_json::Value::Null, serde_json::Value::Number),
            Value::Str(s) => serde_json::Value::String(s.clone()),
            Value::Seq(items) => {
                serde_json::Value::Array(items.iter().map(Node::to_json).collect())
            }
            Value::Map(entries) => serde_json::Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.key_text(), v.to_json()))
                    .collect(),
            ),
        }
    }
}

/// Escapes one segment of a document path (JSON Pointer rules).
pub fn escape_pointer(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

fn unescape_pointer(segment: &str) -> String {
    segment.replace("~1", "/").replace("~0", "~")
}

/// Why a document could not be read into a tree at all.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// The file is larger than a spec can reasonably be.
    #[error("spec is {size} bytes; the limit is {limit} bytes (is this the right file?)")]
    TooLarge {
        /// Size of the input.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The bytes are not UTF-8.
    #[error("spec is not valid UTF-8 (invalid byte at offset {offset})")]
    NotUtf8 {
        /// Where decoding failed.
        offset: usize,
        /// Location of the bad byte.
        location: Location,
    },
    /// The YAML parser refused the text (syntax, budget, aliases).
    #[error("{message}")]
    Syntax {
        /// The parser's message.
        message: String,
        /// Where, if known.
        location: Option<Location>,
    },
    /// The document is empty.
    #[error("spec is empty")]
    Empty,
}

/// What a kind of file should look like, for the hints of [`ParseError::diagnostic`].
pub struct FileHints<'a> {
    /// The file, as a hint names it ("a spec", "an emit file").
    pub what: &'a str,
    /// Said when the file is too large.
    pub too_large: &'a str,
    /// Said when the file is empty.
    pub empty: &'a str,
}

impl ParseError {
    /// The diagnostic of a file that does not parse: where, when known, and a hint.
    pub fn diagnostic(&self, hints: &FileHints<'_>) -> Diagnostic {
        let location = match self {
            ParseError::NotUtf8 { location, .. } => Some(*location),
            ParseError::Syntax { location, .. } => *location,
            ParseError::TooLarge { .. } | ParseError::Empty => None,
        };
        let help = match self {
            ParseError::NotUtf8 { .. } => "save the file as UTF-8".to_owned(),
            ParseError::TooLarge { .. } => hints.too_large.to_owned(),
            ParseError::Empty => hints.empty.to_owned(),
            ParseError::Syntax { message, .. } if message.starts_with("budget breached") => {
                format!(
                    "{} holds at most 200,000 values and 1,000 aliases; aliases of aliases multiply (an alias bomb)",
                    hints.what
                )
            }
            ParseError::Syntax { .. } => "fix the YAML syntax at this position".to_owned(),
        };
        let mut d = Diagnostic::error("", self.to_string()).with_help(help);
        d.location = location;
        d
    }
}

/// Parses YAML bytes into a tree, refusing oversized, non-UTF-8 and alias-bomb input early.
pub fn parse(bytes: &[u8]) -> Result<Node, ParseError> {
    if bytes.len() > MAX_SPEC_BYTES {
        return Err(ParseError::TooLarge {
            size: bytes.len(),
            limit: MAX_SPEC_BYTES,
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|err| {
        let offset = err.valid_up_to();
        let before = &bytes[..offset];
        let line = before.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |p| p + 1);
        let column = String::from_utf8_lossy(&before[line_start..])
            .chars()
            .count() as u64
            + 1;
        ParseError::NotUtf8 {
            offset,
            location: Location {
                line,
                column,
                offset,
                len: 1,
            },
        }
    })?;
    if text.trim().is_empty() {
        return Err(ParseError::Empty);
    }
    // A spec has hundreds of nodes; these bounds stop alias bombs and deep nesting in
    // milliseconds instead of letting them expand.
    let mut budget = Budget::default();
    budget.max_aliases = 1_000;
    budget.max_anchors = 1_000;
    budget.max_nodes = 200_000;
    budget.max_depth = 64;
    budget.max_documents = 1;
    let mut options = Options::default();
    // Keep duplicates: the tree reports them with both locations instead of failing early.
    options.duplicate_keys = DuplicateKeyPolicy::PassThrough;
    options.budget = Some(budget);
    options.with_snippet = false;
    let root: Spanned<TreeValue> =
        serde_saphyr::from_str_with_options(text, options).map_err(|err| ParseError::Syntax {
            message: first_line(&err.without_snippet().to_string()),
            location: err.location().map(|l| to_location(&l, text)),
        })?;
    let node = into_node(root, text);
    if matches!(node.value, Value::Null) {
        return Err(ParseError::Empty);
    }
    Ok(node)
}

fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or(message).trim().to_owned()
}

fn to_location(location: &serde_saphyr::Location, text: &str) -> Location {
    let line = location.line().max(1);
    let column = location.column().max(1);
    let span = location.span();
    let offset = span
        .byte_offset()
        .map_or_else(|| offset_of(text, line, column), |o| o as usize);
    let offset = offset.min(text.len());
    let len = span
        .byte_len()
        .map_or(1, |l| l as usize)
        .max(1)
        .min(text.len().saturating_sub(offset).max(1));
    Location {
        line,
        column,
        offset,
        len,
    }
}

fn offset_of(text: &str, line: u64, column: u64) -> usize {
    let line_start: usize = text
        .split_inclusive('\n')
        .take(line as usize - 1)
        .map(str::len)
        .sum();
    let rest = &text[line_start.min(text.len())..];
    line_start
        + rest
            .char_indices()
            .nth(column as usize - 1)
            .map_or(rest.len(), |(i, _)| i)
}

/// Deserialization target mirroring YAML's data model, children spanned.
enum TreeValue {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<TreeValue>>),
    Map(Vec<(Spanned<TreeValue>, Spanned<TreeValue>)>),
}

fn into_node(spanned: Spanned<TreeValue>, text: &str) -> Node {
    let location = to_location(&spanned.referenced, text);
    let value = match spanned.value {
        TreeValue::Null => Value::Null,
        TreeValue::Bool(b) => Value::Bool(b),
        TreeValue::Int(i) => Value::Int(i),
        TreeValue::Float(f) => Value::Float(f),
        TreeValue::Str(s) => Value::Str(s),
        TreeValue::Seq(items) => {
            Value::Seq(items.into_iter().map(|i| into_node(i, text)).collect())
        }
        TreeValue::Map(entries) => Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| (into_node(k, text), into_node(v, text)))
                .collect(),
        ),
    };
    Node { value, location }
}

impl<'de> Deserialize<'de> for TreeValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TreeVisitor)
    }
}

struct TreeVisitor;

impl<'de> Visitor<'de> for TreeVisitor {
    type Value = TreeValue;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E>(self) -> Result<TreeValue, E> {
        Ok(TreeValue::Null)
    }
    fn visit_none<E>(self) -> Result<TreeValue, E> {
        Ok(TreeValue::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<TreeValue, D::Error> {
        TreeValue::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<TreeValue, E> {
        Ok(TreeValue::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<TreeValue, E> {
        Ok(TreeValue::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<TreeValue, E> {
        i64::try_from(v)
            .map(TreeValue::Int)
            .map_err(|_| E::custom(format!("integer `{v}` is too large")))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<TreeValue, E> {
        i64::try_from(v)
            .map(TreeValue::Int)
            .map_err(|_| E::custom(format!("integer `{v}` is too large")))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<TreeValue, E> {
        i64::try_from(v)
            .map(TreeValue::Int)
            .map_err(|_| E::custom(format!("integer `{v}` is too large")))
    }
    fn visit_f64<E>(self, v: f64) -> Result<TreeValue, E> {
        Ok(TreeValue::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<TreeValue, E> {
        Ok(TreeValue::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<TreeValue, E> {
        Ok(TreeValue::Str(v))
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<TreeValue, E> {
        Err(E::custom("binary values are not allowed in a spec"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TreeValue, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<TreeValue>>()? {
            items.push(item);
        }
        Ok(TreeValue::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TreeValue, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<TreeValue>>()? {
            let value = map.next_value::<Spanned<TreeValue>>()?;
            entries.push((key, value));
        }
        Ok(TreeValue::Map(entries))
    }
}
