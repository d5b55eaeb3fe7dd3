//! One model revision's forward passes: shard by shard, batch by batch, every requested hook
//! feeding its artifact (bytes appended as they are produced) and its spectrum (Gram matrix
//! accumulated as they stream past). Runs on a blocking thread; hands closed artifacts to the
//! async sink, each holding its share of the memory budget until it is sent, so a slow upload
//! holds capture back (backpressure): the next shard's artifacts reserve theirs first.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

mod layout;
mod rows;
mod stages;

pub use layout::{artifact_layout, hook_width, model_metadata};

use rows::{Stored, as_rows, candle_dtype, narrowed, narrows_early, nudge_first, rows_and_width};

use stages::{Stopped, two_stages};

use super::{RunError, budget_permits};
use crate::analysis::GramAccumulator;
use crate::model::{Activations, HookRequest, Model, ModelError};
use crate::sink::{ArtifactWriter, UploadJob};
use crate::spec::{Dtype, Hook};

/// One hook at one layer of a shard, to write and/or accumulate.
pub struct Target {
    /// The hook.
    pub hook: Hook,
    /// Its layer (`None` for `ln_final`).
    pub layer: Option<u32>,
    /// Upload this artifact (it is not in the ledger yet): its path and record.
    pub upload: Option<(String, crate::ledger::Record)>,
}

/// One shard to run.
pub struct ShardWork {
    /// Shard number.
    pub shard: u32,
    /// Windows `[start, end)` of the model's token windows.
    pub windows: (usize, usize),
    /// Hooks and layers.
    pub targets: Vec<Target>,
    /// The capture node's record, sent once the shard's artifacts are closed.
    pub capture_record: Option<crate::ledger::Record>,
}

/// Everything one model's capture needs.
pub struct CaptureWork {
    /// `repo@revision`, for messages.
    pub label: String,
    /// Loaded model.
    pub model: Arc<Model>,
    /// The model's token windows (row-major, `seq_len` each).
    pub tokens: Arc<Vec<u32>>,
    /// Tokens per window.
    pub seq_len: usize,
    /// Windows per forward pass.
    pub batch_size: usize,
    /// Stored dtype.
    pub dtype: Dtype,
    /// Rows stored per window.
    pub pool: crate::spec::Pool,
    /// Shards to run, in order.
    pub shards: Vec<ShardWork>,
    /// Accumulate spectra for these (hook, layer), over every shard run.
    pub spectra: Vec<(Hook, Option<u32>)>,
    /// Metadata common to all artifacts (model, commit).
    pub metadata: BTreeMap<String, String>,
    /// TEST ONLY (see `RunSettings::perturb_capture_for_tests`): nudge the first value of
    /// every hook's first batch of each shard one step up in the stored dtype.
    pub perturb_for_tests: bool,
    /// The run's `limits.memory` in bytes: forward passes overlap each other or the host work
    /// only when two batches fit in a small part of it (see [`overlap`]).
    pub memory: u64,
}

/// How a capture overlaps its work (see the two stages in [`run_capture`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Overlap {
    /// Forward passes run at once, one per thread.
    forwards: usize,
    /// The forward passes run one batch ahead of the host work.
    run_ahead: bool,
    /// Bytes of the batches alive at once (see [`overlap`]'s working sets).
    batches_bytes: u64,
}

/// How much a capture overlaps. Either kind of overlap costs the memory of a second batch, so
/// both are only done when two batches' working sets — the hooks kept plus the largest
/// intermediates, in f32 — fit in a quarter of `limits.memory`.
///
/// - A CPU runs two forward passes at once on two threads: one pass leaves a core idle for
///   part of its time (element-wise ops run on the calling thread, small products do not
///   split well), and the second fills it (~6% less wall time for a SmolLM2-135M capture on
///   two cores, docs/run.md). It does not run ahead: the host work wants the same cores.
/// - A GPU runs one pass (its passes queue on one stream anyway), one batch ahead of the
///   host work, so that the device computes while the host copies, hashes and appends.
fn overlap(model: &Model, tokens_per_batch: usize, hook_widths: usize, memory: u64) -> Overlap {
    let c = model.config();
    let per_token = hook_widths + 2 * c.d_mlp + 4 * c.d_model;
    let batch_bytes = (tokens_per_batch * per_token * std::mem::size_of::<f32>()) as u64;
    let two_fit = 2 * batch_bytes <= memory / 4;
    let (forwards, run_ahead) = if model.device().is_cpu() {
        let threads = rayon::current_num_threads();
        (if two_fit && threads > 1 { 2 } else { 1 }, false)
    } else {
        (1, two_fit)
    };
    Overlap {
        forwards,
        run_ahead,
        batches_bytes: (forwards + usize::from(run_ahead)) as u64 * batch_bytes,
    }
}

/// Runs the forward passes of `batches` (token ids, `seq_len` per window) side by side, one per
/// thread, and returns their activations in order.
fn forward_together(
    model: &Model,
    request: &HookRequest,
    batches: &[&[u32]],
    seq_len: usize,
) -> Vec<Result<Activations, ModelError>> {
    let forward = |batch: &[u32]| -> Result<Activations, ModelError> {
        let ids = Tensor::from_slice(batch, (batch.len() / seq_len, seq_len), model.device())
            .map_err(|source| ModelError::Tensor {
                context: "building the input".into(),
                source,
            })?;
        model.forward(&ids, request)
    };
    match batches {
        [] => Vec::new(),
        [only] => vec![forward(only)],
        [first, rest @ ..] => std::thread::scope(|scope| {
            let others: Vec<_> = rest
                .iter()
                .map(|batch| scope.spawn(move || forward(batch)))
                .collect();
            let mut all = vec![forward(first)];
            for other in others {
                all.push(
                    other
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                );
            }
            all
        }),
    }
}

/// The Gram accumulators of the spectra a capture was asked for.
pub type Grams = BTreeMap<(Hook, Option<u32>), GramAccumulator>;

/// Where a capture's time went, stage by stage (busy time of each; the stages overlap, so the
/// sum can exceed the capture's wall time). On a GPU the forward passes only queue kernels:
/// the device's compute shows up in `to_host`, whose first copy waits for it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CaptureTimes {
    /// Running the forward passes (on a CPU, the compute; on a GPU, queueing it).
    pub forward: Duration,
    /// Bringing the hooks to the host (device → host copies, waiting for the device).
    pub to_host: Duration,
    /// Host work: narrowing, hashing, appending, Gram updates.
    pub host: Duration,
    /// Waiting for `limits.memory` to have room (uploads in flight hold it).
    pub budget_wait: Duration,
}

impl std::ops::AddAssign for CaptureTimes {
    fn add_assign(&mut self, other: Self) {
        self.forward += other.forward;
        self.to_host += other.to_host;
        self.host += other.host;
        self.budget_wait += other.budget_wait;
    }
}

/// What a capture hands back.
pub struct Captured {
    /// The Gram accumulators of the spectra it was asked for.
    pub grams: Grams,
    /// Where its time went.
    pub times: CaptureTimes,
}

/// A duration added to from several threads.
#[derive(Default)]
struct Clock(AtomicU64);

impl Clock {
    /// Runs `work`, adding the time it took.
    fn time<T>(&self, work: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let out = work();
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.0.fetch_add(nanos, Ordering::Relaxed);
        out
    }

    fn total(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Relaxed))
    }
}

/// Reports of progress from the capture thread.
pub enum CaptureEvent {
    /// A shard's forward passes are done and its artifacts closed.
    ShardDone {
        /// Shard number.
        shard: u32,
        /// Tokens in it.
        tokens: usize,
    },
}

/// One hook's activations from one forward pass, on the host, with where they go.
struct HookJob<'a> {
    name: String,
    tensor: Tensor,
    hook: Hook,
    layer: Option<u32>,
    writer: Option<&'a mut ArtifactWriter>,
    gram: Option<&'a mut GramAccumulator>,
    pool: crate::spec::Pool,
}

impl HookJob<'_> {
    /// The width of the rows [`as_rows`] will give.
    fn row_width(&self) -> usize {
        let mut dims = self.tensor.dims().to_vec();
        if self.hook == Hook::AttnPattern && dims.len() == 4 {
            dims.swap(1, 2);
        }
        rows_and_width(self.hook, &dims).1
    }

    /// Rows of f32 into the Gram matrix, bytes of the stored dtype into the artifact. `nudge`:
    /// test-only, see [`CaptureWork::perturb_for_tests`].
    fn run(&mut self, dtype: Dtype, nudge: bool) -> Result<(), String> {
        let name = &self.name;
        if self.pool.pooled().is_none() && narrows_early(dtype, self.gram.is_some(), nudge) {
            if let Some(writer) = self.writer.as_deref_mut() {
                let stored =
                    narrowed(self.hook, &self.tensor, dtype).map_err(|e| format!("{name}: {e}"))?;
                writer
                    .append("activations", &stored.le_bytes())
                    .map_err(|e| e.to_string())?;
            }
            return Ok(());
        }
        let (values, n, width) =
            as_rows(self.hook, &self.tensor).map_err(|e| format!("{name}: {e}"))?;
        // The batch's windows are the tensor's first dimension; rows are window-major.
        let windows = self.tensor.dims().first().copied().unwrap_or(1);
        let (mut values, n) = self.pool.apply(values, n, width, windows);
        if nudge {
            nudge_first(&mut values, dtype);
        }
        if let Some(gram) = self.gram.as_deref_mut() {
            gram.push_rows(&values, n, width)
                .map_err(|e| format!("{name}: {e}"))?;
        }
        if let Some(writer) = self.writer.as_deref_mut() {
            writer
                .append("activations", &Stored::from_f32(values, dtype).le_bytes())
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// Runs the capture. Blocking: call from `spawn_blocking`.
///
/// Long, on purpose: the forward stage, the host stage and the writers share the shard's
/// state (the artifacts' writers with their memory permits, the Gram accumulators, the stage
/// clocks) through closures that borrow it; split into functions, that state would have to
/// travel through a struct whose every field is borrowed mutably by one stage at a time.
pub fn run_capture(
    work: CaptureWork,
    budget: Arc<Semaphore>,
    uploads: mpsc::Sender<UploadJob>,
    records: mpsc::Sender<crate::sink::Committable>,
    progress: impl Fn(CaptureEvent),
    cancel: CancellationToken,
) -> Result<Captured, RunError> {
    let runtime = tokio::runtime::Handle::current();
    let (forward, to_host, host, budget_wait) = (
        Clock::default(),
        Clock::default(),
        Clock::default(),
        Clock::default(),
    );
    let model = &work.model;
    let tensor_err = |what: &str, source: candle_core::Error| RunError::Tensor {
        label: work.label.clone(),
        what: what.to_owned(),
        source: Box::new(source),
    };
    let mut grams: Grams = BTreeMap::new();
    let names: Vec<String> = {
        let mut names: Vec<String> = work
            .spectra
            .iter()
            .map(|(h, l)| h.full_name(l.map(|l| l as usize)))
            .collect();
        for shard in &work.shards {
            names.extend(
                shard
                    .targets
                    .iter()
                    .map(|t| t.hook.full_name(t.layer.map(|l| l as usize))),
            );
        }
        names.sort();
        names.dedup();
        names
    };
    let request = model.request(&names).map_err(|source| RunError::Model {
        label: work.label.clone(),
        source: Box::new(source),
    })?;
    let kept: std::collections::BTreeSet<(Hook, Option<u32>)> = work
        .spectra
        .iter()
        .copied()
        .chain(work.shards.iter().flat_map(|shard| {
            shard
                .targets
                .iter()
                .map(|target| (target.hook, target.layer))
        }))
        .collect();
    let hook_widths: usize = kept
        .iter()
        .map(|(hook, _)| hook_width(*hook, model, work.seq_len))
        .sum();
    let Overlap {
        forwards: at_once,
        run_ahead,
        batches_bytes,
    } = overlap(
        model,
        work.batch_size.max(1) * work.seq_len,
        hook_widths,
        work.memory,
    );
    // The batches in flight count against `limits.memory` like the artifacts do: reserved once,
    // for the whole capture, up to a quarter of the budget — all of it whenever batches overlap
    // (see `overlap`). A shard's artifacts are planned to take half, a little more with their
    // headers and token ids, so both always fit and neither can wait on the other forever.
    let _batches = budget_wait
        .time(|| {
            runtime.block_on(
                budget
                    .clone()
                    .acquire_many_owned(budget_permits(batches_bytes.min(work.memory / 4))),
            )
        })
        .map_err(|_| RunError::Interrupted)?;
    for shard in work.shards {
        if cancel.is_cancelled() {
            return Err(RunError::Interrupted);
        }
        let (first, last) = shard.windows;
        let tokens = (last - first) * work.seq_len;
        let shard_ids = &work.tokens[first * work.seq_len..last * work.seq_len];
        // Open writers, reserving their memory first: capture waits here when the budget is used.
        let mut writers = Vec::new();
        for (index, target) in shard.targets.iter().enumerate() {
            let Some((path, record)) = &target.upload else {
                continue;
            };
            let (specs, metadata) = artifact_layout(
                &work.metadata,
                &record.id,
                &target.hook.full_name(target.layer.map(|l| l as usize)),
                (first, last),
                tokens,
                hook_width(target.hook, model, work.seq_len),
                work.dtype,
                work.pool,
            );
            let size =
                crate::sink::safetensors::file_size(&specs, &metadata).map_err(|source| {
                    RunError::Artifact {
                        label: work.label.clone(),
                        source,
                    }
                })?;
            let permit = budget_wait
                .time(|| {
                    runtime.block_on(
                        budget
                            .clone()
                            .acquire_many_owned(budget_permits(size as u64)),
                    )
                })
                .map_err(|_| RunError::Interrupted)?;
            let mut writer =
                ArtifactWriter::new(specs, &metadata).map_err(|source| RunError::Artifact {
                    label: work.label.clone(),
                    source,
                })?;
            let ids: Vec<u8> = shard_ids
                .iter()
                .flat_map(|&id| (id as i32).to_le_bytes())
                .collect();
            writer
                .append("token_ids", &ids)
                .map_err(|source| RunError::Artifact {
                    label: work.label.clone(),
                    source,
                })?;
            writers.push((index, path.clone(), record.clone(), writer, permit));
        }
        let batches: Vec<&[u32]> = shard_ids
            .chunks(work.batch_size.max(1) * work.seq_len)
            .collect();
        // Two stages ([`two_stages`]): a helper thread runs the forward passes and brings each
        // batch's hooks to the host; this thread does the host work. On a GPU the helper runs
        // one batch ahead, so the device computes while the host works (the host work, not the
        // forward pass, bounds a GPU capture). On a CPU both stages want the same cores
        // (running ahead measured ~5% slower), so they take turns (see [`overlap`]).
        let copy_to_host =
            |acts: Activations, batch_index: usize| -> Result<Vec<Tensor>, RunError> {
                let nudge = work.perturb_for_tests && batch_index == 0;
                let mut host = Vec::with_capacity(shard.targets.len());
                for target in &shard.targets {
                    let name = target.hook.full_name(target.layer.map(|l| l as usize));
                    let Some(tensor) = acts.get(&name) else {
                        return Err(RunError::Capture {
                            label: work.label.clone(),
                            reason: format!("the model produced no `{name}`"),
                        });
                    };
                    // Device → host one hook after another (one stream). On a GPU, hooks that
                    // leave narrowed are narrowed before the copy; on a CPU the narrowing runs in
                    // the parallel host work instead.
                    let spectrum = work.spectra.contains(&(target.hook, target.layer));
                    let early =
                        narrows_early(work.dtype, spectrum, nudge) && work.pool.pooled().is_none();
                    let tensor = if early && !tensor.device().is_cpu() {
                        tensor.to_dtype(candle_dtype(work.dtype))
                    } else {
                        Ok(tensor.clone())
                    };
                    host.push(
                        tensor
                            .and_then(|tensor| tensor.to_device(&Device::Cpu))
                            .map_err(|e| tensor_err(&name, e))?,
                    );
                }
                Ok(host)
            };
        let produce = |range: std::ops::Range<usize>| -> Vec<Result<Vec<Tensor>, RunError>> {
            let group = &batches[range.clone()];
            forward
                .time(|| forward_together(model, &request, group, work.seq_len))
                .into_iter()
                .zip(range)
                .map(|(acts, batch_index)| {
                    acts.map_err(|source| RunError::Model {
                        label: work.label.clone(),
                        source: Box::new(source),
                    })
                    .and_then(|acts| to_host.time(|| copy_to_host(acts, batch_index)))
                })
                .collect()
        };
        let mut host_work = |batch_index: usize, tensors: Vec<Tensor>| -> Result<(), RunError> {
            // The host work of each hook — widening, narrowing, hashing, appending, Gram
            // updates — on every core, a few hooks at a time (each holds a copy of its
            // activations while it works).
            let nudge = work.perturb_for_tests && batch_index == 0;
            let mut jobs: Vec<HookJob<'_>> = tensors
                .into_iter()
                .zip(&shard.targets)
                .map(|(tensor, target)| HookJob {
                    name: target.hook.full_name(target.layer.map(|l| l as usize)),
                    tensor,
                    hook: target.hook,
                    layer: target.layer,
                    writer: None,
                    gram: None,
                    pool: work.pool,
                })
                .collect();
            for (index, _, _, writer, _) in &mut writers {
                jobs[*index].writer = Some(writer);
            }
            for job in &jobs {
                let key = (job.hook, job.layer);
                if work.spectra.contains(&key) && !grams.contains_key(&key) {
                    grams.insert(key, GramAccumulator::new(job.row_width()));
                }
            }
            for (key, gram) in &mut grams {
                if let Some(job) = jobs.iter_mut().find(|j| (j.hook, j.layer) == *key) {
                    job.gram = Some(gram);
                }
            }
            let at_once = rayon::current_num_threads().clamp(1, 8);
            for group in jobs.chunks_mut(at_once) {
                use rayon::prelude::*;
                group
                    .par_iter_mut()
                    .map(|job| job.run(work.dtype, nudge))
                    .collect::<Result<Vec<()>, String>>()
                    .map_err(|reason| RunError::Capture {
                        label: work.label.clone(),
                        reason,
                    })?;
            }
            Ok(())
        };
        let consume = |batch_index: usize, tensors: Vec<Tensor>| {
            host.time(|| host_work(batch_index, tensors))
        };
        two_stages(batches.len(), at_once, run_ahead, &cancel, produce, consume).map_err(
            |stopped| match stopped {
                Stopped::Failed(error) => error,
                Stopped::Cancelled => RunError::Interrupted,
            },
        )?;
        for (_, path, record, writer, permit) in writers {
            let artifact = writer.finish().map_err(|source| RunError::Artifact {
                label: work.label.clone(),
                source,
            })?;
            let job = UploadJob {
                path,
                artifact,
                record,
                permit: Some(permit),
            };
            uploads
                .blocking_send(job)
                .map_err(|_| RunError::Interrupted)?;
        }
        if let Some(record) = shard.capture_record {
            records
                .blocking_send(crate::sink::Committable {
                    record,
                    regular: Vec::new(),
                })
                .map_err(|_| RunError::Interrupted)?;
        }
        progress(CaptureEvent::ShardDone {
            shard: shard.shard,
            tokens,
        });
    }
    Ok(Captured {
        grams,
        times: CaptureTimes {
            forward: forward.total(),
            to_host: to_host.total(),
            host: host.total(),
            budget_wait: budget_wait.total(),
        },
    })
}
