//! `adapter_config.json` of a PEFT LoRA adapter: the keys that change the update's math, read
//! with peft's own semantics (`peft/tuners/lora/model.py`, `peft/utils/other.py`).

use std::path::{Path, PathBuf};

use regex::Regex;
use serde::Deserialize;

use super::AdapterError;

/// The config as peft writes it; keys hubsweep does not need are ignored.
#[derive(Debug, Deserialize)]
struct RawConfig {
    peft_type: Option<String>,
    r: Option<serde_json::Value>,
    lora_alpha: Option<serde_json::Value>,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    fan_in_fan_out: bool,
    #[serde(default)]
    rank_pattern: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    alpha_pattern: Option<serde_json::Map<String, serde_json::Value>>,
    target_modules: Option<serde_json::Value>,
    base_model_name_or_path: Option<String>,
    revision: Option<String>,
}

/// Which modules a LoRA config targets (`target_modules`).
#[derive(Debug, Clone)]
pub enum TargetModules {
    /// A list of names: a module is targeted when its full name equals one or ends with
    /// `.{name}`.
    Names(Vec<String>),
    /// A regular expression the whole module name must match.
    Regex(Regex),
    /// `all-linear`: every linear layer but the output head.
    AllLinear,
}

impl TargetModules {
    /// Whether peft would target the module `path` (the module's full name in the base model).
    pub fn targets(&self, path: &str) -> bool {
        match self {
            TargetModules::Names(names) => names.iter().any(|name| {
                path == name
                    || path
                        .strip_suffix(name.as_str())
                        .is_some_and(|head| head.ends_with('.'))
            }),
            TargetModules::Regex(regex) => regex.is_match(path),
            TargetModules::AllLinear => true,
        }
    }
}

/// A per-module override (`rank_pattern` / `alpha_pattern` entry): a regular expression `key`
/// that matches a module when its full name is `key` or ends with `.{key}`, as peft's
/// `get_pattern_key` has it (`re.match(rf"(.*\.)?({key})$", name)`).
#[derive(Debug, Clone)]
struct Pattern<T> {
    regex: Regex,
    value: T,
}

/// The LoRA settings of an adapter that determine `ΔW = scale · B · A` per module.
#[derive(Debug, Clone)]
pub struct LoraConfig {
    /// The default rank `r`.
    pub r: usize,
    /// The default `lora_alpha`.
    pub lora_alpha: f64,
    /// rsLoRA: `scale = α / √r` instead of `α / r`.
    pub use_rslora: bool,
    /// `fan_in_fan_out` as written. peft sets the effective value from the layer type (true for
    /// GPT-2's `Conv1D`, false for `nn.Linear`, with a warning when the config disagrees), so
    /// the update in `d_out × d_in` orientation is `scale · B · A` either way.
    pub fan_in_fan_out: bool,
    /// Which modules are targeted (`None` when the config names none).
    pub target_modules: Option<TargetModules>,
    /// The base model the adapter was trained on, as recorded.
    pub base_model_name_or_path: Option<String>,
    /// The base model's revision, when recorded.
    pub revision: Option<String>,
    rank_pattern: Vec<Pattern<usize>>,
    alpha_pattern: Vec<Pattern<f64>>,
}

impl LoraConfig {
    /// Reads and checks an `adapter_config.json`.
    pub fn from_file(path: &Path) -> Result<Self, AdapterError> {
        let text = fs_err::read_to_string(path).map_err(|source| AdapterError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json_str(&text, path)
    }

    /// Parses the text of an `adapter_config.json`; `path` is only used in errors.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self, AdapterError> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|source| AdapterError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |key: &str, reason: String| AdapterError::InvalidConfig {
            path: path.to_path_buf(),
            key: key.to_owned(),
            reason,
        };
        match raw.peft_type.as_deref() {
            Some("LORA") => {}
            Some(other) => {
                return Err(AdapterError::NotLora {
                    path: path.to_path_buf(),
                    peft_type: other.to_owned(),
                });
            }
            None => {
                return Err(invalid(
                    "peft_type",
                    "is missing (a LoRA adapter has `\"peft_type\": \"LORA\"`)".into(),
                ));
            }
        }
        if raw.use_dora {
            return Err(AdapterError::Unsupported {
                path: path.to_path_buf(),
                key: "use_dora".into(),
                hint: "DoRA rescales the merged weight per column, so its update is not `scale · B · A`; merge it with peft (`merge_and_unload()`) and compare the merged model with `delta_from`".into(),
            });
        }
        let r = positive_integer(raw.r.as_ref()).ok_or_else(|| {
            invalid(
                "r",
                format!(
                    "must be a positive integer, found {}",
                    shown(raw.r.as_ref())
                ),
            )
        })?;
        let lora_alpha = finite_number(raw.lora_alpha.as_ref()).ok_or_else(|| {
            invalid(
                "lora_alpha",
                format!(
                    "must be a finite number, found {}",
                    shown(raw.lora_alpha.as_ref())
                ),
            )
        })?;
        let rank_pattern = patterns(path, "rank_pattern", raw.rank_pattern, |v| {
            positive_integer(Some(v))
        })?;
        let alpha_pattern = patterns(path, "alpha_pattern", raw.alpha_pattern, |v| {
            finite_number(Some(v))
        })?;
        let target_modules = match raw.target_modules {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(text)) if text == "all-linear" => {
                Some(TargetModules::AllLinear)
            }
            Some(serde_json::Value::String(text)) => Some(TargetModules::Regex(
                Regex::new(&format!("^(?:{text})$")).map_err(|e| {
                    invalid(
                        "target_modules",
                        format!("is not a regular expression ({e})"),
                    )
                })?,
            )),
            Some(serde_json::Value::Array(items)) => Some(TargetModules::Names(
                items
                    .iter()
                    .map(|item| item.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| invalid("target_modules", "must list module names".into()))?,
            )),
            Some(other) => {
                return Err(invalid(
                    "target_modules",
                    format!("must be a list of names or a regular expression, found `{other}`"),
                ));
            }
        };
        Ok(Self {
            r,
            lora_alpha,
            use_rslora: raw.use_rslora,
            fan_in_fan_out: raw.fan_in_fan_out,
            target_modules,
            base_model_name_or_path: raw.base_model_name_or_path,
            revision: raw.revision,
            rank_pattern,
            alpha_pattern,
        })
    }

    /// The rank of the module named `path`: the first `rank_pattern` entry that matches it,
    /// else `r`.
    pub fn rank_for(&self, path: &str) -> usize {
        first_match(&self.rank_pattern, path).unwrap_or(self.r)
    }

    /// The `lora_alpha` of the module named `path`: the first `alpha_pattern` entry that
    /// matches it, else `lora_alpha`.
    pub fn alpha_for(&self, path: &str) -> f64 {
        first_match(&self.alpha_pattern, path).unwrap_or(self.lora_alpha)
    }

    /// The scale of the module named `path`: `α / r`, or `α / √r` with rsLoRA, from its own
    /// rank and alpha.
    pub fn scale_for(&self, path: &str) -> f64 {
        let (rank, alpha) = (self.rank_for(path) as f64, self.alpha_for(path));
        if self.use_rslora {
            alpha / rank.sqrt()
        } else {
            alpha / rank
        }
    }
}

/// The value of the first pattern (in the file's order, as Python's dict keeps it) matching
/// `path`.
fn first_match<T: Copy>(patterns: &[Pattern<T>], path: &str) -> Option<T> {
    patterns
        .iter()
        .find(|pattern| pattern.regex.is_match(path))
        .map(|pattern| pattern.value)
}

fn patterns<T>(
    path: &Path,
    name: &str,
    map: Option<serde_json::Map<String, serde_json::Value>>,
    value: impl Fn(&serde_json::Value) -> Option<T>,
) -> Result<Vec<Pattern<T>>, AdapterError> {
    let invalid = |key: &str, reason: String| AdapterError::InvalidConfig {
        path: PathBuf::from(path),
        key: format!("{name}.{key}"),
        reason,
    };
    map.unwrap_or_default()
        .into_iter()
        .map(|(key, raw)| {
            let regex = Regex::new(&format!(r"^(?:.*\.)?(?:{key})$"))
                .map_err(|e| invalid(&key, format!("is not a regular expression ({e})")))?;
            let value = value(&raw)
                .ok_or_else(|| invalid(&key, format!("has an unusable value `{raw}`")))?;
            Ok(Pattern { regex, value })
        })
        .collect()
}

fn positive_integer(value: Option<&serde_json::Value>) -> Option<usize> {
    value
        .and_then(serde_json::Value::as_u64)
        .and_then(|v| usize::try_from(v).ok())
        .filter(|&v| v > 0)
}

fn finite_number(value: Option<&serde_json::Value>) -> Option<f64> {
    value
        .and_then(serde_json::Value::as_f64)
        .filter(|v| v.is_finite())
}

fn shown(value: Option<&serde_json::Value>) -> String {
    value.map_or_else(|| "nothing".to_owned(), |v| format!("`{v}`"))
}
