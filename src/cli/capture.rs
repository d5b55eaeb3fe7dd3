//! `hubsweep capture`: one forward pass from the shell, like TransformerLens's
//! `run_with_cache`, writing the named activations to a safetensors file.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Tensor};
use hubsweep::data::{TextTokenizer, TokenWindows};
use hubsweep::model::hooks::{self, HookPoint};
use hubsweep::model::{ComputeDtype, DeviceSpec, Model, ModelConfig, ModelFiles};
use hubsweep::spec::LayerSelection;

use super::Env;
use super::shared::{Failure, resolve_model};

/// Arguments of `hubsweep capture`.
#[derive(Debug, clap::Args)]
pub struct CaptureArgs {
    /// A local HF-layout folder, or `REPO[@REVISION]` (HF cache first, then the Hub endpoint).
    #[arg(long)]
    model: String,
    /// Prompt text (repeatable; all must tokenize to the same length).
    #[arg(long, conflicts_with = "ids", required_unless_present = "ids")]
    text: Vec<String>,
    /// JSON file with token ids: `[1, 2, 3]` or `[[1, 2], [3, 4]]` (rows of equal length).
    #[arg(long)]
    ids: Option<PathBuf>,
    /// Hook names, comma-separated: block suffixes (`hook_resid_post`, `attn.hook_z`) combined
    /// with --layers, or full names (`blocks.3.hook_mlp_out`, `hook_embed`, `logits`).
    #[arg(long, value_delimiter = ',', required = true)]
    hooks: Vec<String>,
    /// Layers for block suffixes, as a spec's `capture.layers` says them: `all`, a range
    /// `a..b[:step]` (end exclusive; `a..` to the last layer), or indices `0,3,-1` (negative
    /// from the end).
    #[arg(long, default_value = "all")]
    layers: String,
    /// Output safetensors file.
    #[arg(long)]
    out: PathBuf,
    /// Compute dtype.
    #[arg(long, default_value = "f32")]
    dtype: ComputeDtype,
    /// Device: `cpu`, `cuda:N` or `auto`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Start each text with the model's BOS token (`bos_token_id` in config.json).
    #[arg(long)]
    prepend_bos: bool,
}

/// Parses `--layers` against a model with `n_layers` blocks, in the grammar of a spec's
/// `capture.layers`: `all`, a range `start..end[:step]` (end exclusive; `start..` runs to the
/// last layer), or indices `0,3,-1` (negative from the end; a spec writes them as a list).
pub fn parse_layers(text: &str, n_layers: usize) -> Result<Vec<usize>, Failure> {
    let selection = if text.trim() == "all" || text.contains("..") {
        hubsweep::spec::validate::parse_layers(text).map_err(Failure::new)?
    } else {
        let indices = text
            .split(',')
            .map(|s| {
                s.trim()
                    .parse::<i64>()
                    .map_err(|_| Failure::new(format!("`{s}` is not a layer index")))
            })
            .collect::<Result<Vec<i64>, _>>()?;
        LayerSelection::Indices(indices)
    };
    let depth = u32::try_from(n_layers).unwrap_or(u32::MAX);
    let layers = selection.resolve(depth).map_err(|layer| {
        Failure::new(format!(
            "layer `{layer}` is out of range (the model has {n_layers} layers)"
        ))
    })?;
    Ok(layers.into_iter().map(|l| l as usize).collect())
}

/// Expands `--hooks` × `--layers` into full hook names.
pub fn hook_names(hooks_arg: &[String], layers: &[usize]) -> Vec<String> {
    let mut names = Vec::new();
    for hook in hooks_arg.iter().map(|h| h.trim()).filter(|h| !h.is_empty()) {
        if hooks::block_hook(hook).is_some() {
            names.extend(layers.iter().map(|l| format!("blocks.{l}.{hook}")));
        } else {
            names.push(hook.to_string());
        }
    }
    names
}

fn input_rows(
    args: &CaptureArgs,
    files: &ModelFiles,
    config: &ModelConfig,
) -> Result<Vec<Vec<u32>>, Failure> {
    if let Some(path) = &args.ids {
        let text = fs_err::read_to_string(path).map_err(Failure::of)?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Failure::because(format!("`{}` is not JSON", path.display()), e))?;
        let as_row = |v: &serde_json::Value| -> Option<Vec<u32>> {
            v.as_array()?
                .iter()
                .map(|x| x.as_u64().and_then(|x| u32::try_from(x).ok()))
                .collect()
        };
        let rows = match as_row(&value) {
            Some(row) => vec![row],
            None => value
                .as_array()
                .and_then(|rows| rows.iter().map(as_row).collect::<Option<Vec<_>>>())
                .ok_or_else(|| {
                    Failure::new(format!(
                        "`{}` must hold a list of ids or a list of rows of ids",
                        path.display()
                    ))
                })?,
        };
        return Ok(rows);
    }
    let tokenizer_path = files.tokenizer.as_ref().ok_or_else(|| {
        Failure::new(format!(
            "`{}` has no tokenizer.json; pass --ids instead of --text",
            files.dir.display()
        ))
    })?;
    let tokenizer = TextTokenizer::from_file(tokenizer_path).map_err(Failure::of)?;
    let bos = if args.prepend_bos {
        Some(config.bos_token_id.ok_or_else(|| {
            Failure::new("--prepend-bos: config.json has no single `bos_token_id`")
        })?)
    } else {
        None
    };
    args.text
        .iter()
        .map(|t| {
            let ids = tokenizer.encode(t).map_err(Failure::of)?;
            Ok(bos.into_iter().chain(ids).collect())
        })
        .collect()
}

/// Runs the command; `Err` is a message for stderr (exit code 2).
pub fn run(args: &CaptureArgs, env: &Env) -> Result<(), Failure> {
    let device_spec: DeviceSpec = args.device.parse().map_err(Failure::of)?;
    let device = device_spec.open().map_err(Failure::of)?;
    let files = resolve_model(&args.model, env)?;
    let config = ModelConfig::from_file(&files.config).map_err(Failure::of)?;
    let layers = parse_layers(&args.layers, config.n_layers)?;
    let names = hook_names(&args.hooks, &layers);
    // Validate hooks before the (slow) weight load.
    let request = hubsweep::model::HookRequest::new(&names, &config).map_err(Failure::of)?;
    let rows = input_rows(args, &files, &config)?;
    let windows = TokenWindows::from_rows(&rows).map_err(|_| {
        let lengths: Vec<usize> = rows.iter().map(Vec::len).collect();
        Failure::new(format!("prompts must be non-empty and tokenize to equal lengths, got {lengths:?}; pass one --text or use --ids"))
    })?;
    let model = Model::load(&files, &device, args.dtype.dtype()).map_err(Failure::of)?;
    let ids = Tensor::from_slice(
        windows.tokens(),
        (windows.n_windows(), windows.seq_len()),
        &candle_core::Device::Cpu,
    )
    .map_err(Failure::of)?;
    let acts = model.forward(&ids, &request).map_err(Failure::of)?;

    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (name, t) in acts.iter() {
        tensors.insert(
            name.to_string(),
            t.contiguous()
                .and_then(|t| t.to_device(&candle_core::Device::Cpu))
                .map_err(Failure::of)?,
        );
    }
    tensors.insert(
        "input_ids".into(),
        ids.to_dtype(DType::I64).map_err(Failure::of)?,
    );
    candle_core::safetensors::save(&tensors, &args.out)
        .map_err(|e| Failure::because(format!("cannot write `{}`", args.out.display()), e))?;
    let mut listed: Vec<(&String, &Tensor)> = tensors.iter().collect();
    listed.sort_by_key(|(n, _)| HookPoint::parse(n).ok());
    for (name, t) in listed {
        println!("{name}\t{:?}\t{:?}", t.dims(), t.dtype());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_parse_lists_negatives_and_ranges() {
        assert_eq!(parse_layers("all", 3).unwrap(), [0, 1, 2]);
        assert_eq!(parse_layers("0,-1", 30).unwrap(), [0, 29]);
        assert_eq!(parse_layers("0..12:4", 30).unwrap(), [0, 4, 8]);
        assert_eq!(parse_layers("28..", 30).unwrap(), [28, 29]);
        assert!(
            parse_layers("30", 30)
                .unwrap_err()
                .to_string()
                .contains("out of range")
        );
        assert!(parse_layers("0..31", 30).is_err());
        assert!(parse_layers("0..4:0", 30).is_err());
    }

    #[test]
    fn hooks_expand_over_layers() {
        let hooks = ["hook_resid_post".to_string(), "logits".to_string()];
        assert_eq!(
            hook_names(&hooks, &[1, 3]),
            [
                "blocks.1.hook_resid_post",
                "blocks.3.hook_resid_post",
                "logits"
            ]
        );
    }
}
