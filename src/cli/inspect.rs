//! `hubsweep inspect model PATH|REPO[@REV]`: dimensions, dtype and available hook names.

use hubsweep::model::hooks::{self, BLOCK_HOOKS, HookPoint, MODEL_HOOKS};
use hubsweep::model::{ModelConfig, weights::Weights};

use super::Env;
use super::shared::{Failure, resolve_model};

/// Arguments of `hubsweep inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    #[command(subcommand)]
    what: InspectWhat,
}

#[derive(Debug, clap::Subcommand)]
enum InspectWhat {
    /// Print a model's dimensions, dtype and hook names.
    Model {
        /// A local HF-layout folder, or `REPO[@REVISION]`.
        model: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Shape of a hook's activation for `batch` × `pos`, as TransformerLens lays it out.
fn hook_shape(point: HookPoint, cfg: &ModelConfig) -> String {
    use hooks::{BlockHook as B, NormHook as N};
    let d = cfg.d_model;
    match point {
        HookPoint::Embed | HookPoint::PosEmbed => format!("[batch, pos, {d}]"),
        HookPoint::Logits => format!("[batch, pos, {}]", cfg.vocab_size),
        HookPoint::LnFinal(N::Scale) => "[batch, pos, 1]".into(),
        HookPoint::LnFinal(_) => format!("[batch, pos, {d}]"),
        HookPoint::Block { hook, .. } => match hook {
            B::Ln1(N::Scale) | B::Ln2(N::Scale) => "[batch, pos, 1]".into(),
            B::QNorm(N::Scale) => format!("[batch, pos, {}, 1]", cfg.n_heads),
            B::KNorm(N::Scale) => format!("[batch, pos, {}, 1]", cfg.n_kv_heads),
            B::QNorm(_) => format!("[batch, pos, {}, {}]", cfg.n_heads, cfg.head_dim),
            B::KNorm(_) => format!("[batch, pos, {}, {}]", cfg.n_kv_heads, cfg.head_dim),
            B::Q | B::RotQ | B::Z => format!("[batch, pos, {}, {}]", cfg.n_heads, cfg.head_dim),
            B::K | B::RotK | B::V => format!("[batch, pos, {}, {}]", cfg.n_kv_heads, cfg.head_dim),
            B::AttnScores | B::Pattern => format!("[batch, {}, pos, pos]", cfg.n_heads),
            B::MlpPre | B::MlpPreLinear | B::MlpPost => format!("[batch, pos, {}]", cfg.d_mlp),
            _ => format!("[batch, pos, {d}]"),
        },
    }
}

/// Runs the command; `Err` is a message for stderr (exit code 2).
pub fn run(args: &InspectArgs, env: &Env) -> Result<(), Failure> {
    let InspectWhat::Model { model, json } = &args.what;
    let files = resolve_model(model, env)?;
    let cfg = ModelConfig::from_file(&files.config).map_err(Failure::of)?;
    // Only headers are parsed here; no tensor is converted.
    let weights = Weights::read(
        &files.weights,
        &candle_core::Device::Cpu,
        candle_core::DType::F32,
    )
    .map_err(Failure::of)?;
    let stored = weights.stored_dtype().unwrap_or("unknown").to_string();
    let mut hooks: Vec<(String, String)> = Vec::new();
    // hook_embed, and hook_pos_embed where the model has one (GPT-2), come before the blocks.
    for (name, point) in &MODEL_HOOKS[..2] {
        if hooks::check_point(*point, &cfg).is_ok() {
            hooks.push((name.to_string(), hook_shape(*point, &cfg)));
        }
    }
    for (suffix, hook) in BLOCK_HOOKS {
        let point = HookPoint::Block {
            layer: 0,
            hook: *hook,
        };
        if hooks::check_point(point, &cfg).is_ok() {
            hooks.push((
                format!("blocks.{{0..{}}}.{suffix}", cfg.n_layers - 1),
                hook_shape(point, &cfg),
            ));
        }
    }
    for (name, point) in &MODEL_HOOKS[2..] {
        hooks.push((name.to_string(), hook_shape(*point, &cfg)));
    }
    if *json {
        let value = serde_json::json!({
            "dir": files.dir,
            "commit": files.commit,
            "config": cfg,
            "stored_dtype": stored,
            "tensors": weights.keys().len(),
            "hooks": hooks.iter().map(|(n, s)| serde_json::json!({"name": n, "shape": s})).collect::<Vec<_>>(),
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
        return Ok(());
    }
    println!("model        {}", files.dir.display());
    if let Some(commit) = &files.commit {
        println!("commit       {commit}");
    }
    println!("family       {}", cfg.family.model_type());
    println!("d_model      {}", cfg.d_model);
    println!("n_layers     {}", cfg.n_layers);
    println!(
        "n_heads      {} (kv {}), head_dim {}",
        cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    );
    println!("d_mlp        {}", cfg.d_mlp);
    println!("vocab_size   {}", cfg.vocab_size);
    match (&cfg.rope, cfg.max_positions) {
        (Some(rope), _) => println!(
            "rotary       {} of {} dims, theta {}",
            rope.rotary_dim, cfg.head_dim, rope.theta
        ),
        (None, positions) => println!(
            "positions    learned, {} rows",
            positions.unwrap_or_default()
        ),
    }
    println!(
        "residual     {}",
        if cfg.parallel_residual {
            "parallel"
        } else {
            "sequential"
        }
    );
    println!("stored dtype {stored} ({} tensors)", weights.keys().len());
    println!("hooks:");
    for (name, shape) in hooks {
        println!("  {name:<40} {shape}");
    }
    Ok(())
}
