//! The arguments of `run`, read by both executors: the local run (`cli/run.rs`) and the Slurm
//! submitter (`cli/slurm.rs`).

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use hubsweep::exec;

use super::SummaryFormat;

/// Where `run` executes.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Executor {
    /// On this machine.
    Local,
    /// On a Slurm cluster: one array task per work unit (docs/slurm.md).
    Slurm,
}

/// Arguments of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The spec file.
    #[arg(value_name = "SPEC")]
    pub spec: PathBuf,
    /// Where to execute.
    #[arg(long, value_enum, default_value_t = Executor::Local)]
    pub executor: Executor,
    /// Pin, plan and compare with the ledger; run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// After a failure, go on with everything that does not depend on it.
    #[arg(long)]
    pub keep_going: bool,
    /// Uploads in flight at once.
    #[arg(long, default_value_t = exec::DEFAULT_UPLOAD_SLOTS, value_name = "N")]
    pub upload_slots: usize,
    /// Delete the model weights this run downloads from the HF cache as soon as no model
    /// still to run needs them (for a nearly full disk; weights cached before the run stay).
    #[arg(long)]
    pub evict_models: bool,
    /// Summary format.
    #[arg(long, value_enum, default_value_t = SummaryFormat::Text)]
    pub format: SummaryFormat,
    /// Options of `--executor slurm`.
    #[command(flatten)]
    pub slurm: SlurmArgs,
}

/// The repository's commit rate limit when none is given (the Hub's: 128 per repo and hour,
/// with a margin).
const DEFAULT_REPO_COMMITS_PER_HOUR: usize = 120;

/// Slurm options of `run --executor slurm`.
#[derive(Debug, Args)]
pub struct SlurmArgs {
    /// Slurm partition (`sbatch --partition`).
    #[arg(long, value_name = "P")]
    pub partition: Option<String>,
    /// Generic resources per task (`sbatch --gres`, e.g. `gpu:1`).
    #[arg(long, value_name = "GRES")]
    pub gres: Option<String>,
    /// Array tasks running at once (`--array=…%N`).
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub array_max: usize,
    /// Time limit per job (`sbatch --time`).
    #[arg(long, value_name = "HH:MM:SS")]
    pub time: Option<String>,
    /// Extra `sbatch` argument, verbatim (repeatable).
    #[arg(long = "sbatch-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub sbatch_arg: Vec<String>,
    /// Submit and return at once, printing the job ids.
    #[arg(long)]
    pub detach: bool,
    /// On Ctrl-C, cancel the sweep's jobs without asking (default: ask on a terminal, else
    /// leave them running).
    #[arg(long)]
    pub cancel_on_interrupt: bool,
    /// Folder for job logs; must exist on the compute nodes (default: HUBSWEEP_HOME/slurm-logs).
    #[arg(long, value_name = "DIR")]
    pub log_dir: Option<PathBuf>,
    /// The output repo's commit rate limit, shared by the parallel tasks.
    #[arg(long, default_value_t = DEFAULT_REPO_COMMITS_PER_HOUR, value_name = "N")]
    pub commits_per_hour: usize,
    /// Submissions of a unit at most (the first included) before the sweep gives up on it.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub max_attempts: u32,
}
