//! `hubsweep capture`: one forward pass from the shell, like TransformerLens's
//! `run_with_cache`, writing the named activations to a safetensors file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use hubsweep::data::{TextTokenizer, TokenWindows};
use hubsweep::model::hooks::{self, HookPoint};
use hubsweep::model::{ComputeDtype, DeviceSpec, HubSource, Model, ModelConfig, ModelFiles};

use super::Env;

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
    /// Layers for block suffixes: `all`, or a comma list of indices (negative from the end)
    /// and ranges `a..b[:step]`.
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

/// Resolves `--model`: an existing folder, else `REPO[@REV]` from the cache, else the Hub.
pub fn resolve_model(spec: &str, env: &Env) -> Result<ModelFiles, String> {
    let path = Path::new(spec);
    if path.is_dir() {
        return ModelFiles::from_dir(path).map_err(chain);
    }
    let (repo, revision) = spec.split_once('@').unwrap_or((spec, "main"));
    if repo.split('/').count() != 2 || repo.starts_with('/') || repo.starts_with('.') {
        return Err(format!(
            "`{spec}` is neither a folder nor a repo id `namespace/name[@revision]`"
        ));
    }
    let cache = env.hf_hub_cache_dir();
    match ModelFiles::from_cache(&cache, repo, revision) {
        Ok(files) => Ok(files),
        Err(cache_err) if env.hf_hub_offline => {
            Err(format!("{} (HF_HUB_OFFLINE is set)", chain(cache_err)))
        }
        Err(_) => {
            let source = HubSource {
                endpoint: env.hf_endpoint.clone(),
                token: env.hf_token.clone().map(hubsweep::hub::Token::new),
                cache_dir: cache,
                offline: false,
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the download runtime: {e}"))?;
            runtime
                .block_on(ModelFiles::download(&source, repo, revision))
                .map_err(chain)
        }
    }
}

/// An error and its causes on one line.
pub fn chain(err: impl std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// Parses `--layers` against a model with `n_layers` blocks.
pub fn parse_layers(spec: &str, n_layers: usize) -> Result<Vec<usize>, String> {
    if spec == "all" {
        return Ok((0..n_layers).collect());
    }
    let index = |s: &str| -> Result<usize, String> {
        let v: i64 = s
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not a layer index"))?;
        let resolved = if v < 0 { n_layers as i64 + v } else { v };
        if resolved < 0 || resolved >= n_layers as i64 {
            return Err(format!(
                "layer `{v}` is out of range (the model has {n_layers} layers)"
            ));
        }
        Ok(resolved as usize)
    };
    let mut layers = Vec::new();
    for item in spec.split(',') {
        if let Some((start, rest)) = item.split_once("..") {
            let (end, step) = rest.split_once(':').unwrap_or((rest, "1"));
            let step: usize = step
                .parse()
                .ok()
                .filter(|s| *s > 0)
                .ok_or(format!("bad step in `{item}`"))?;
            let start = index(start)?;
            let end: usize = end
                .trim()
                .parse()
                .map_err(|_| format!("`{item}` is not a range `a..b[:step]`"))?;
            layers.extend((start..end.min(n_layers)).step_by(step));
        } else {
            layers.push(index(item)?);
        }
    }
    layers.sort_unstable();
    layers.dedup();
    Ok(layers)
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
) -> Result<Vec<Vec<u32>>, String> {
    if let Some(path) = &args.ids {
        let text = fs_err::read_to_string(path).map_err(chain)?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| format!("`{}` is not JSON: {e}", path.display()))?;
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
                    format!(
                        "`{}` must hold a list of ids or a list of rows of ids",
                        path.display()
                    )
                })?,
        };
        return Ok(rows);
    }
    let tokenizer_path = files.tokenizer.as_ref().ok_or_else(|| {
        format!(
            "`{}` has no tokenizer.json; pass --ids instead of --text",
            files.dir.display()
        )
    })?;
    let tokenizer = TextTokenizer::from_file(tokenizer_path).map_err(chain)?;
    let bos = if args.prepend_bos {
        Some(
            config
                .bos_token_id
                .ok_or("--prepend-bos: config.json has no single `bos_token_id`")?,
        )
    } else {
        None
    };
    args.text
        .iter()
        .map(|t| {
            let ids = tokenizer.encode(t).map_err(chain)?;
            Ok(bos.into_iter().chain(ids).collect())
        })
        .collect()
}

/// Runs the command; `Err` is a message for stderr (exit code 2).
pub fn run(args: &CaptureArgs, env: &Env) -> Result<(), String> {
    let device_spec: DeviceSpec = args.device.parse().map_err(chain)?;
    let device = device_spec.open().map_err(chain)?;
    let files = resolve_model(&args.model, env)?;
    let config = ModelConfig::from_file(&files.config).map_err(chain)?;
    let layers = parse_layers(&args.layers, config.n_layers)?;
    let names = hook_names(&args.hooks, &layers);
    // Validate hooks before the (slow) weight load.
    let request = hubsweep::model::HookRequest::new(&names, &config).map_err(chain)?;
    let rows = input_rows(args, &files, &config)?;
    let windows = TokenWindows::from_rows(&rows).map_err(|_| {
        let lengths: Vec<usize> = rows.iter().map(Vec::len).collect();
        format!("prompts must be non-empty and tokenize to equal lengths, got {lengths:?}; pass one --text or use --ids")
    })?;
    let model = Model::load(&files, &device, args.dtype.dtype()).map_err(chain)?;
    let ids = Tensor::from_slice(
        windows.tokens(),
        (windows.n_windows(), windows.seq_len()),
        &candle_core::Device::Cpu,
    )
    .map_err(chain)?;
    let acts = model.forward(&ids, &request).map_err(chain)?;

    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (name, t) in acts.iter() {
        tensors.insert(
            name.to_string(),
            t.contiguous()
                .and_then(|t| t.to_device(&candle_core::Device::Cpu))
                .map_err(chain)?,
        );
    }
    tensors.insert("input_ids".into(), ids.to_dtype(DType::I64).map_err(chain)?);
    candle_core::safetensors::save(&tensors, &args.out)
        .map_err(|e| format!("cannot write `{}`: {}", args.out.display(), chain(e)))?;
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
        assert_eq!(parse_layers("0..12:4,11", 30).unwrap(), [0, 4, 8, 11]);
        assert!(parse_layers("30", 30).unwrap_err().contains("out of range"));
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
