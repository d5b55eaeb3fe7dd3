//! `hubsweep run` through the binary: the quickstart end to end, resume, crashes, faults,
//! concurrent writers, no local artifact bytes, bounded memory, and bad input at run time.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Output, Stdio};
use std::time::{Duration, Instant};

use hubsweep::hub::server::{Faults, Server, ServerConfig, ServerHandle};
use hubsweep::hub::{HubClient, Repo, RepoId};
use hubsweep::ledger::{LedgerState, Record};

use crate::common::{
    OneBrokenModel, TestContext, peers_required, repo_root, under_a_terminal, walk,
};

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hubsweep"))
}

/// The binary with an isolated environment (as `TestContext::command`, but std's `Command`,
/// which can be spawned and killed).
pub(crate) fn hubsweep(ctx: &TestContext) -> StdCommand {
    let mut cmd = StdCommand::new(bin());
    cmd.current_dir(ctx.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", ctx.child("home"))
        .env("HF_HOME", ctx.child("hf-home"))
        .env("HUBSWEEP_HOME", ctx.child("hubsweep-home"))
        .env("NO_COLOR", "1");
    cmd
}

pub(crate) fn run_json(
    ctx: &TestContext,
    spec: &Path,
    extra: &[(&str, &str)],
) -> (Output, serde_json::Value) {
    let mut cmd = hubsweep(ctx);
    cmd.args(["run", "--format", "json"]).arg(spec);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let output = cmd.output().expect("run hubsweep");
    let json = serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null);
    (output, json)
}

/// `hubsweep ARGS SPEC` in `ctx`, which must exit 0; its stdout, and its stderr.
pub(crate) fn succeed(ctx: &TestContext, args: &[&str], spec: &Path) -> (Vec<u8>, String) {
    let output = hubsweep(ctx).args(args).arg(spec).output().unwrap();
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(0), "hubsweep {args:?}: {err}");
    (output.stdout, err)
}

pub(crate) fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Opens the store a run wrote (its process has exited) with an in-process server.
pub(crate) async fn open_store(home: &Path) -> (ServerHandle, HubClient) {
    let mut config = ServerConfig::new(home.join("hub"));
    config.addr = "127.0.0.1:0".parse().unwrap();
    let server = Server::start(config).await.expect("open the store");
    let client = HubClient::builder(server.base_url())
        .unwrap()
        .build()
        .unwrap();
    (server, client)
}

pub(crate) fn dataset(id: &str) -> Repo {
    let (ns, name) = id.split_once('/').unwrap();
    Repo::dataset(RepoId::new(ns, name).unwrap())
}

/// Checks what every ledger must satisfy: each successful record's files are in the repo with
/// the recorded sha256 and size, node ids recompute, no id is recorded twice, the DAG is closed.
pub(crate) fn check_ledger(state: &LedgerState, records: &[Record]) {
    let mut seen = HashSet::new();
    for record in records.iter().filter(|r| r.error.is_none()) {
        assert!(
            seen.insert(record.id.clone()),
            "node {} recorded twice",
            record.id
        );
        assert_eq!(
            record.recomputed_id(),
            record.id,
            "record of {} does not hash to its id",
            record.kind
        );
        for file in &record.files {
            let have = state
                .files
                .get(&file.path)
                .unwrap_or_else(|| panic!("{} is recorded but not in the repo", file.path));
            assert_eq!(
                have.sha256.as_deref(),
                Some(file.sha256.as_str()),
                "{}",
                file.path
            );
            assert_eq!(have.size, file.size, "{}", file.path);
        }
        for input in &record.inputs {
            assert!(
                state.records.contains_key(input),
                "{} has an input {input} that is not recorded",
                record.kind
            );
        }
    }
}

/// Every record of the repo's segments, in order (duplicates kept, to detect them).
pub(crate) async fn segment_records(
    client: &HubClient,
    repo: &Repo,
    state: &LedgerState,
) -> Vec<Record> {
    let mut all = Vec::new();
    for path in &state.segments {
        let bytes = client.download_bytes(repo, "main", path).await.unwrap();
        all.extend(hubsweep::ledger::parse_records(path, &bytes).unwrap());
    }
    all
}

fn quickstart(ctx: &TestContext) -> PathBuf {
    let path = ctx.child("quickstart.yaml");
    std::fs::copy(repo_root().join("sweeps/quickstart.yaml"), &path).unwrap();
    path
}

#[test]
fn quickstart_end_to_end_then_rerun_does_nothing() {
    let ctx = TestContext::new();
    let spec = quickstart(&ctx);
    let (output, first) = run_json(&ctx, &spec, &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(first["executed"], 43, "{first}");
    assert!(first["bytes_uploaded"].as_u64().unwrap() > 100_000);
    // Where the capture's time went: each stage ran, and none took longer than the capture
    // (the stages overlap, so their sum may).
    let stages = &first["capture_stages"];
    let capture = first["capture_seconds"].as_f64().unwrap();
    for stage in ["forward_seconds", "to_host_seconds", "host_seconds"] {
        let seconds = stages[stage].as_f64().unwrap();
        assert!(seconds > 0.0 && seconds <= capture, "{stage}: {first}");
    }
    assert!(stages["budget_wait_seconds"].as_f64().unwrap() <= capture);
    assert!(
        stderr(&output).contains("results: local://datasets/hubsweep/quickstart"),
        "{}",
        stderr(&output)
    );

    let (output, second) = run_json(&ctx, &spec, &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(second["executed"], 0, "rerun executed nodes: {second}");
    assert_eq!(second["bytes_uploaded"], 0);
    assert_eq!(second["commits"], 0);
    assert_eq!(second["head"], first["head"]);
    assert_eq!(second["capture_stages"]["forward_seconds"], 0.0, "{second}");

    let status = hubsweep(&ctx)
        .args(["status", "--format", "json"])
        .arg(&spec)
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["complete"], true, "{status}");

    runtime().block_on(async {
        let (server, client) = open_store(&ctx.child("hubsweep-home")).await;
        let repo = dataset("hubsweep/quickstart");
        let state = LedgerState::read(&client, &repo, "main").await.unwrap();
        let records = segment_records(&client, &repo, &state).await;
        check_ledger(&state, &records);
        assert_eq!(records.len(), 43);
        let index = client
            .download_bytes(&repo, "main", "ledger/index.jsonl")
            .await
            .unwrap();
        assert_eq!(
            hubsweep::ledger::parse_records("index", &index)
                .unwrap()
                .len(),
            43
        );
        let manifest = state.manifest.as_ref().expect("manifest");
        assert_eq!(manifest.spec.text, std::fs::read_to_string(&spec).unwrap());
        spectra_match_an_svd_of_the_activations(&client, &repo, &records).await;
        server.shutdown().await;
    });
}

/// Spectra equal the singular values of the concatenated activations, within 1e-6 relative.
async fn spectra_match_an_svd_of_the_activations(
    client: &HubClient,
    repo: &Repo,
    records: &[Record],
) {
    let by_id: HashMap<&str, &Record> = records.iter().map(|r| (r.id.as_str(), r)).collect();
    let mut checked = 0;
    for spectrum in records.iter().filter(|r| r.kind == "spectrum") {
        let mut rows: Vec<f64> = Vec::new();
        let mut width = 0;
        for input in &spectrum.inputs {
            let artifact = by_id[input.as_str()];
            let bytes = client
                .download_bytes(repo, "main", &artifact.files[0].path)
                .await
                .unwrap();
            let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            let acts = file.tensor("activations").unwrap();
            width = acts.shape()[1];
            rows.extend(
                acts.data()
                    .chunks_exact(4)
                    .map(|b| f64::from(f32::from_le_bytes(b.try_into().unwrap()))),
            );
        }
        let n = rows.len() / width;
        let matrix = faer::Mat::from_fn(n, width, |i, j| rows[i * width + j]);
        let mut expected: Vec<f64> = matrix.singular_values().unwrap();
        expected.sort_by(|a, b| b.total_cmp(a));
        let bytes = client
            .download_bytes(repo, "main", &spectrum.files[0].path)
            .await
            .unwrap();
        let stored = hubsweep::analysis::Spectrum::from_safetensors(&bytes).unwrap();
        let got = &stored.raw.singular_values;
        let scale = expected[0];
        for (g, e) in got.iter().zip(&expected) {
            assert!(
                (g - e).abs() <= 1e-6 * scale,
                "singular value {g} vs {e} (largest {scale})"
            );
        }
        let metrics = spectrum.metrics.as_ref().unwrap();
        let srank = metrics["raw"]["stable_rank"].as_f64().unwrap();
        let frob: f64 = expected.iter().map(|s| s * s).sum();
        assert!(
            (srank - frob / (scale * scale)).abs() <= 1e-6 * srank,
            "stable rank {srank}"
        );
        checked += 1;
    }
    assert_eq!(checked, 18, "2 models × 3 layers × 3 hooks");
}

/// Artifacts hold each window's activations in window order, whatever the batching and stored
/// dtype: capture runs several forward passes at once on a multi-core CPU and must append them
/// in order, and narrows f16/bf16 before the host when no spectrum needs the f32 values.
#[test]
fn artifact_rows_are_the_windows_in_order_whatever_the_batching() {
    use candle_core::{DType, Device, Tensor};
    use hubsweep::model::{Model, ModelFiles};

    let (windows, seq_len) = (11usize, 8usize);
    let ids: Vec<u32> = (0..windows * seq_len)
        .map(|i| (i as u32 * 37 + 5) % 200)
        .collect();
    let files = ModelFiles::from_dir(&repo_root().join("tests/fixtures/llama_tiny")).unwrap();
    let model = Model::load(&files, &Device::Cpu, DType::F32).unwrap();
    let request = model.request(&["blocks.1.hook_resid_post"]).unwrap();
    // Each window on its own: the reference rows.
    let window_rows = |ids: &[u32]| -> Vec<f32> {
        let mut rows = Vec::new();
        for window in ids.chunks(seq_len) {
            let input = Tensor::from_slice(window, (1, seq_len), &Device::Cpu).unwrap();
            let acts = model.forward(&input, &request).unwrap();
            let tensor = acts.get("blocks.1.hook_resid_post").unwrap();
            rows.extend(tensor.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        }
        rows
    };
    let cases = [(1, "f32"), (2, "f32"), (3, "f32"), (2, "f16"), (3, "bf16")];
    for (batch_size, dtype) in cases {
        let ctx = TestContext::new();
        let spec = ctx.child("order.yaml");
        let list = ids
            .chunks(seq_len)
            .map(|w| format!("{w:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        std::fs::write(
            &spec,
            format!(
                "name: order\noutput: local://hubsweep/order\nmodels:\n  - family: llama\n    repo: local://hubsweep/tiny-llama\ndata:\n  token_ids: [{list}]\n  seq_len: {seq_len}\ncapture:\n  hooks: [hook_resid_post]\n  layers: [1]\n  dtype: {dtype}\nlimits:\n  memory: 64MiB\n  artifact_bytes: 1MiB\ncompute:\n  device: cpu\n  batch_size: {batch_size}\n"
            ),
        )
        .unwrap();
        let (output, _) = run_json(&ctx, &spec, &[("RAYON_NUM_THREADS", "2")]);
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        runtime().block_on(async {
            let (server, client) = open_store(&ctx.child("hubsweep-home")).await;
            let repo = dataset("hubsweep/order");
            let state = LedgerState::read(&client, &repo, "main").await.unwrap();
            let records = segment_records(&client, &repo, &state).await;
            let artifact = records
                .iter()
                .find(|r| r.kind == "artifact")
                .expect("an artifact record");
            let bytes = client
                .download_bytes(&repo, "main", &artifact.files[0].path)
                .await
                .unwrap();
            let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            let stored_ids: Vec<u32> = file
                .tensor("token_ids")
                .unwrap()
                .data()
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes(b.try_into().unwrap()) as u32)
                .collect();
            // The windows are cut from the ids as the data settings say (BOS first); what matters
            // here is that every stored row belongs to the stored window at its position.
            assert_eq!(stored_ids.len() % seq_len, 0);
            assert!(
                stored_ids.len() / seq_len >= 6,
                "{} windows",
                stored_ids.len() / seq_len
            );
            let expected = window_rows(&stored_ids);
            let data = file.tensor("activations").unwrap().data().to_vec();
            // f16/bf16 are narrowed before they reach the host when no spectrum needs f32.
            let (got, tolerance): (Vec<f32>, f32) = match dtype {
                "f32" => (
                    data.chunks_exact(4)
                        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                        .collect(),
                    1e-5,
                ),
                "f16" => (
                    data.chunks_exact(2)
                        .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                        .collect(),
                    1e-3,
                ),
                _ => (
                    data.chunks_exact(2)
                        .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                        .collect(),
                    8e-3,
                ),
            };
            assert_eq!(got.len(), expected.len(), "batch size {batch_size}");
            for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
                assert!(
                    (g - e).abs() <= tolerance * (1.0 + e.abs()),
                    "batch size {batch_size}, {dtype}: value {i} (window {}) is {g}, expected {e}",
                    i / (seq_len * got.len() / stored_ids.len())
                );
            }
            server.shutdown().await;
        });
    }
}

#[test]
fn the_official_client_downloads_what_the_ledger_states() {
    let Some(python) = crate::hub::hub_python() else {
        return;
    };
    let ctx = TestContext::new();
    let spec = quickstart(&ctx);
    let (output, _) = run_json(&ctx, &spec, &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    runtime().block_on(async {
        let (server, client) = open_store(&ctx.child("hubsweep-home")).await;
        let repo = dataset("hubsweep/quickstart");
        let state = LedgerState::read(&client, &repo, "main").await.unwrap();
        let expected: BTreeMap<String, String> = state
            .records
            .values()
            .flat_map(|r| r.files.iter().map(|f| (f.path.clone(), f.sha256.clone())))
            .collect();
        let script = r#"
import hashlib, json, sys
from huggingface_hub import hf_hub_download
expected = json.load(sys.stdin)
for path, sha in expected.items():
    local = hf_hub_download("hubsweep/quickstart", path, repo_type="dataset")
    got = hashlib.sha256(open(local, "rb").read()).hexdigest()
    assert got == sha, (path, got, sha)
print(len(expected))
"#;
        let mut child = StdCommand::new(&python)
            .args(["-c", script])
            .env("HF_ENDPOINT", server.base_url())
            .env("HF_HUB_DISABLE_XET", "1")
            .env("HF_HOME", ctx.child("py-hf-home"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(serde_json::to_string(&expected).unwrap().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            expected.len().to_string()
        );
        server.shutdown().await;
    });
}

/// A longer sweep (many shards and commits) over the bundled models.
pub(crate) fn long_spec(
    ctx: &TestContext,
    output: &str,
    tokens: usize,
    memory: &str,
    artifact: &str,
) -> PathBuf {
    long_spec_of(ctx, output, tokens, memory, artifact, 0)
}

/// [`long_spec`] over other token ids for each `variant` (0: `long_spec`'s own). Runs over the
/// same ids store byte-identical artifacts, which the Hub then already has: a run that must
/// really upload needs ids no earlier run of the store used.
pub(crate) fn long_spec_of(
    ctx: &TestContext,
    output: &str,
    tokens: usize,
    memory: &str,
    artifact: &str,
    variant: u64,
) -> PathBuf {
    let id = |i: usize| -> u64 {
        if variant == 0 {
            (i as u64 * 7919 + 13) % 300 + 1
        } else {
            let mut x = (variant << 32 | i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            x ^= x >> 29;
            x % 300 + 1
        }
    };
    let ids: Vec<String> = (0..tokens).map(|i| id(i).to_string()).collect();
    let text = format!(
        "name: long\noutput: {output}\nmodels:\n  - family: gpt_neox\n    repo: local://hubsweep/tiny-gpt-neox\n  - family: llama\n    repo: local://hubsweep/tiny-llama\ndata:\n  token_ids: [[{}]]\n  max_tokens: {tokens}\n  seq_len: 16\ncapture:\n  hooks: [hook_resid_pre, hook_resid_post, hook_mlp_out]\n  layers: all\nanalyses:\n  - spectrum: {{top_k: 8}}\nlimits:\n  memory: {memory}\n  artifact_bytes: {artifact}\ncompute:\n  device: cpu\n  batch_size: 4\n",
        ids.join(", ")
    );
    let path = ctx.child("long.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `child`'s stderr, line by line as it comes, on a channel; the thread hands back the whole
/// text when it is joined (after the child exited and closed the pipe).
pub(crate) fn stderr_lines(
    child: &mut std::process::Child,
) -> (
    std::sync::mpsc::Receiver<String>,
    std::thread::JoinHandle<String>,
) {
    use std::io::BufRead as _;
    let pipe = child.stderr.take().expect("stderr piped");
    let (send, receive) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
            let _ = send.send(line);
        }
        text
    });
    (receive, reader)
}

/// Whether a run's log line marks progress a kill can land after: a model's capture starting,
/// or a commit.
pub(crate) fn is_milestone(line: &str) -> bool {
    line.starts_with("capture  ") || line.starts_with("commit   ")
}

/// `limits.artifact_bytes` of the crash trials' sweep.
const CRASH_ARTIFACT: &str = "16KiB";

/// `hubsweep run` killed with SIGKILL at random moments — right after a randomly chosen
/// milestone of its log (a capture starting, the N-th commit), events rather than sleeps, so
/// a loaded machine moves the kill with the run — then rerun: the rerun completes, a third run
/// executes nothing, and the ledger holds every node once. `scripts/soak/crash.sh` runs it with
/// `HUBSWEEP_CRASH_TRIALS` trials and reads its summary line.
#[test]
#[allow(clippy::print_stderr)] // the soak's summary line
fn killed_at_random_moments_then_rerun_completes_without_duplicates() {
    let ctx = TestContext::new();
    // The milestones of an uninterrupted run, so kills can be spread over all of them.
    // Artifacts of 16 KiB: ~1,200 files, so at least 12 commits of ≤ 100 files whatever the
    // machine's speed (commits after 2 s of quiet only add to that).
    let probe = long_spec(
        &ctx,
        "local://alice/crash-probe",
        4096,
        "2MiB",
        CRASH_ARTIFACT,
    );
    let (output, _) = run_json(&ctx, &probe, &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let probe_log = stderr(&output);
    let milestones = probe_log.lines().filter(|l| is_milestone(l)).count();
    let commits = probe_log
        .lines()
        .filter(|l| l.starts_with("commit "))
        .count();
    assert!(
        commits >= 10,
        "the sweep commits {commits} times:\n{probe_log}"
    );
    // 20 in the test command; `scripts/soak/crash.sh` runs this test with many more.
    let trials: u32 = std::env::var("HUBSWEEP_CRASH_TRIALS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20)
        .max(20);
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut killed_mid_run = 0;
    let mut failures = Vec::new();
    let mut slowest_resume = Duration::ZERO;
    for trial in 0..trials {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // Other ids each trial, so that its artifacts are really uploaded when it is killed.
        let spec = long_spec_of(
            &ctx,
            &format!("local://alice/crash-{trial}"),
            4096,
            "2MiB",
            CRASH_ARTIFACT,
            u64::from(trial) + 1,
        );
        let mut child = hubsweep(&ctx)
            .arg("run")
            .arg(&spec)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Kill right after milestone `at` (1-based), one of all but the last.
        let at = 1 + (seed % (milestones as u64 - 1)) as usize;
        let (lines, reader) = stderr_lines(&mut child);
        let reached = lines.iter().filter(|l| is_milestone(l)).take(at).count() == at;
        if reached && child.try_wait().unwrap().is_none() {
            killed_mid_run += 1;
        }
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        drop(lines);
        reader.join().unwrap();
        let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let started = Instant::now();
            let (output, report) = run_json(&ctx, &spec, &[]);
            let resume = started.elapsed();
            assert_eq!(
                output.status.code(),
                Some(0),
                "trial {trial}: {}",
                stderr(&output)
            );
            let (_, again) = run_json(&ctx, &spec, &[]);
            assert_eq!(
                again["executed"], 0,
                "trial {trial}: after {report}, a rerun still executed: {again}"
            );
            runtime().block_on(async {
                let (server, client) = open_store(&ctx.child("hubsweep-home")).await;
                let repo = dataset(&format!("alice/crash-{trial}"));
                let state = LedgerState::read(&client, &repo, "main").await.unwrap();
                let records = segment_records(&client, &repo, &state).await;
                check_ledger(&state, &records);
                let nodes = report["nodes"].as_u64().unwrap() as usize;
                assert_eq!(
                    records.iter().filter(|r| r.error.is_none()).count(),
                    nodes,
                    "trial {trial}"
                );
                server.shutdown().await;
            });
            resume
        }));
        // One line per trial, so a soak cut short still says how far it got.
        match &checked {
            Ok(resume) => eprintln!(
                "crash trial {trial}: ok, killed after milestone {at}, resumed in {:.1} s",
                resume.as_secs_f64()
            ),
            Err(_) => eprintln!("crash trial {trial}: FAILED, killed after milestone {at}"),
        }
        match checked {
            Ok(resume) => slowest_resume = slowest_resume.max(resume),
            Err(panic) => failures.push(format!(
                "trial {trial} (killed after milestone {at}): {}",
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            )),
        }
    }
    eprintln!(
        "crash soak: {trials} trials, {} failures, {killed_mid_run} kills mid-run, slowest resume {:.1} s, {commits} commits per clean run",
        failures.len(),
        slowest_resume.as_secs_f64()
    );
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(
        killed_mid_run >= trials / 2,
        "only {killed_mid_run} of {trials} kills landed mid-run"
    );
}

/// A server on loopback for `hf://` outputs, with faults switched on. LFS only: the faults
/// here are the LFS transfers' (tests/it/xet_run.rs has the Xet ones).
async fn faulty_server(ctx: &TestContext, faults: Faults) -> ServerHandle {
    let mut config = ServerConfig::new(ctx.child("remote-store"));
    config.addr = "127.0.0.1:0".parse().unwrap();
    config.xet = false;
    // Small thresholds so artifacts go multipart and part faults apply.
    config.limits.multipart_threshold = 16 << 10;
    config.limits.part_size = 8 << 10;
    config.faults = faults;
    Server::start(config).await.unwrap()
}

#[test]
fn injected_faults_during_a_run_change_nothing_in_the_result() {
    let ctx = TestContext::new();
    let spec = long_spec(&ctx, "hf://datasets/alice/faults", 1024, "4MiB", "64KiB");
    let rt = runtime();
    let server = rt.block_on(faulty_server(
        &ctx,
        Faults {
            fail_part_once: Some(2),
            drop_connection_part_once: Some(3),
            rate_limit_next_commit: true,
            commit_applied_then_500: true,
            expire_next_batches: 1,
            ..Faults::default()
        },
    ));
    let (output, report) = run_json(&ctx, &spec, &[("HF_ENDPOINT", server.base_url())]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    // Every fault armed fired, once, during the run.
    let stats = server.stats();
    let fired = &stats.fired;
    assert_eq!(
        (
            fired.fail_part,
            fired.drop_connection_part,
            fired.rate_limit_commit,
            fired.commit_applied_then_500,
            fired.expired_batch
        ),
        (1, 1, 1, 1, 1),
        "{stats:?}"
    );
    // The refused commit and the one whose answer was lost were not applied twice.
    assert_eq!(stats.commit_posts, stats.commits_applied + 1, "{stats:?}");
    rt.block_on(async {
        let client = HubClient::builder(server.base_url())
            .unwrap()
            .build()
            .unwrap();
        let repo = dataset("alice/faults");
        let state = LedgerState::read(&client, &repo, "main").await.unwrap();
        let records = segment_records(&client, &repo, &state).await;
        // No node recorded twice, every file where its record says.
        check_ledger(&state, &records);
        assert_eq!(records.len(), report["nodes"].as_u64().unwrap() as usize);
    });
    let (output, again) = run_json(&ctx, &spec, &[("HF_ENDPOINT", server.base_url())]);
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(again["executed"], 0);
    rt.block_on(server.shutdown());
}

#[test]
fn two_concurrent_runs_record_every_node_once() {
    let ctx = TestContext::new();
    // Both writers must pin the same models: committed folders hash the same everywhere.
    let fixtures = repo_root().join("tests/fixtures");
    let text = std::fs::read_to_string(long_spec(
        &ctx,
        "hf://datasets/alice/race",
        1024,
        "4MiB",
        "64KiB",
    ))
    .unwrap()
    .replace(
        "local://hubsweep/tiny-gpt-neox",
        &fixtures.join("gpt_neox_tiny").display().to_string(),
    )
    .replace(
        "local://hubsweep/tiny-llama",
        &fixtures.join("llama_tiny").display().to_string(),
    );
    let spec = ctx.child("race.yaml");
    std::fs::write(&spec, text).unwrap();
    let rt = runtime();
    let server = rt.block_on(faulty_server(&ctx, Faults::default()));
    let spawn = |home: &str| {
        hubsweep(&ctx)
            .env("HF_ENDPOINT", server.base_url())
            .env("HUBSWEEP_HOME", ctx.child(home))
            .arg("run")
            .arg(&spec)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn("home-a"), spawn("home-b"));
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    rt.block_on(async {
        let client = HubClient::builder(server.base_url())
            .unwrap()
            .build()
            .unwrap();
        let repo = dataset("alice/race");
        let state = LedgerState::read(&client, &repo, "main").await.unwrap();
        let records = segment_records(&client, &repo, &state).await;
        check_ledger(&state, &records);
    });
    rt.block_on(server.shutdown());
}

/// The run in a mount namespace of its own where every filesystem is read-only (enforced even
/// for root) except the two places it may write: the embedded hub's store and the model cache.
/// `/tmp`, `TMPDIR`, `HOME` and the working directory included, so an artifact spilled to any
/// file would fail the run.
#[test]
#[allow(clippy::print_stderr)] // the skip note the conventions ask for
fn no_artifact_byte_touches_the_local_disk() {
    if StdCommand::new("unshare")
        .args(["-m", "true"])
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        assert!(
            !peers_required(),
            "mount namespaces are needed for this test (unshare -m)"
        );
        eprintln!("skip: no mount namespaces here");
        return;
    }
    let ctx = TestContext::new();
    let spec = quickstart(&ctx);
    let store = ctx.child("store");
    let writable = [store.join("hub"), store.join("cache")];
    for dir in &writable {
        std::fs::create_dir_all(dir).unwrap();
    }
    let script = format!(
        r#"set -e
for d in {hub} {cache}; do mount --bind "$d" "$d"; done
for m in $(awk '{{print $2}}' /proc/self/mounts); do
  case "$m" in {hub}|{cache}|/proc|/proc/*|/sys|/sys/*|/dev|/dev/pts) continue;; esac
  mount -o remount,bind,ro "$m" 2>/dev/null || true
done
for probe in /tmp/hubsweep-probe-$$ {ctx}/probe {store}/probe; do
  if touch "$probe" 2>/dev/null; then echo "still writable: $probe" >&2; exit 97; fi
done
touch {hub}/probe && rm {hub}/probe
cd {ctx}
HOME={ctx}/home TMPDIR=/tmp exec {bin} run --format json {spec}"#,
        hub = writable[0].display(),
        cache = writable[1].display(),
        ctx = ctx.path().display(),
        store = store.display(),
        bin = bin().display(),
        spec = spec.display()
    );
    let output = StdCommand::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HUBSWEEP_HOME", &store)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["executed"], 43);
    // What was written is hub state (objects named by sha256) and the model cache.
    for entry in walk(&store) {
        let name = entry.to_string_lossy();
        assert!(
            !name.contains("acts/") && !name.contains("spectra/"),
            "artifact written as a plain file: {name}"
        );
    }
}

/// A child's output (read as it comes, so its pipes never fill) and its peak RSS in KiB.
pub(crate) fn output_and_peak_rss_kib(mut child: std::process::Child) -> (Output, u64) {
    fn drain(
        pipe: Option<impl std::io::Read + Send + 'static>,
    ) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    }
    let (stdout, stderr) = (drain(child.stdout.take()), drain(child.stderr.take()));
    let (status, peak) = peak_rss_kib(child);
    let output = Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    };
    (output, peak)
}

/// Peak RSS of a child, sampled from /proc until it exits.
fn peak_rss_kib(mut child: std::process::Child) -> (std::process::ExitStatus, u64) {
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    loop {
        if let Ok(text) = std::fs::read_to_string(&status_path)
            && let Some(kib) = text
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        {
            peak = peak.max(kib);
        }
        if let Some(status) = child.try_wait().unwrap() {
            return (status, peak);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `limits.memory` bounds what a run holds of its artifacts: a run whose artifacts total 40×
/// the budget peaks at no more than the same sweep stored in f16 (half the bytes) — the
/// fixed overhead of the process, the models, the Grams and the allocator, measured here —
/// plus the budget and a small allowance. Holding the artifacts would add 21 MiB over that
/// measure, more than twice the budget and allowance (a build that keeps them peaked 27 MiB
/// over the fixed overhead).
#[test]
#[allow(clippy::print_stderr)] // the measured figures, for whoever tunes the allowance
fn memory_stays_within_the_budget_when_artifacts_are_twenty_times_larger() {
    const MIB: u64 = 1 << 20;
    let ctx = TestContext::new();
    let memory = MIB;
    // The same tokens twice: stored as f16 (the baseline) and as f32 (twice the bytes), so the
    // two runs differ in the artifacts' bytes and little else.
    let peak = |output: &str, variant: u64, dtype: &str| {
        // 64 values × 4 (f32) or 2 (f16) bytes per token, 9 (hook, layer) pairs per model, two
        // models.
        let spec = long_spec_of(&ctx, output, 9216, "1MiB", "64KiB", variant);
        let text = std::fs::read_to_string(&spec).unwrap();
        std::fs::write(
            &spec,
            text.replace("capture:\n", &format!("capture:\n  dtype: {dtype}\n")),
        )
        .unwrap();
        let child = hubsweep(&ctx)
            .args(["run", "--format", "json"])
            .arg(&spec)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (output, peak_kib) = output_and_peak_rss_kib(child);
        assert!(output.status.success(), "{}", stderr(&output));
        peak_kib * 1024
    };
    // The fixed overhead: the same sweep in f16, half the artifact bytes (21 MiB). Each figure
    // is the lower of two runs (other ids the second time, so it uploads again): the
    // allocator's slack moves a peak by a MiB or two from one run to the next.
    let fixed = peak("local://alice/memory-base", 1, "f16").min(peak(
        "local://alice/memory-base2",
        2,
        "f16",
    ));
    let started = Instant::now();
    let measured =
        peak("local://alice/memory2", 3, "f32").min(peak("local://alice/memory", 4, "f32"));
    runtime().block_on(async {
        let (server, client) = open_store(&ctx.child("hubsweep-home")).await;
        let state = LedgerState::read(&client, &dataset("alice/memory"), "main")
            .await
            .unwrap();
        let total: u64 = state
            .records
            .values()
            .filter(|r| r.kind == "artifact")
            .flat_map(|r| &r.files)
            .map(|f| f.size)
            .sum();
        assert!(
            total >= 40 * memory,
            "artifacts total {total} bytes, not ≥ 40× the budget"
        );
        server.shutdown().await;
    });
    // What grows besides the artifacts' bytes (twice the artifact files and their records, the
    // allocator's slack): measured at 4–6 MiB, well below the 21 MiB more artifacts.
    let allowance = 8 * MIB;
    let ceiling = fixed + memory + allowance;
    eprintln!(
        "peak RSS {:.1} MiB in {:?}; fixed overhead {:.1} MiB; ceiling {:.1} MiB",
        measured as f64 / MIB as f64,
        started.elapsed(),
        fixed as f64 / MIB as f64,
        ceiling as f64 / MIB as f64
    );
    assert!(
        measured <= ceiling,
        "peak RSS {measured} bytes over {ceiling} (fixed overhead {fixed} + budget {memory} + {allowance})"
    );
}

/// Waits for `child` up to `limit`; `None` (and the child killed) if it is still running.
fn wait_within(
    child: &mut std::process::Child,
    limit: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends SIGINT (what Ctrl-C sends) to `child`.
fn interrupt(child: &std::process::Child) {
    let sent = StdCommand::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// Ctrl-C once: no new work starts, what is done is committed with its records, the run exits
/// 130; the same command then finishes the rest, and a third run has nothing left to do.
/// Twice: the run exits 130 at once, and the ledger is still whole.
#[test]
fn ctrl_c_commits_what_is_done_and_a_second_one_aborts_at_once() {
    let ctx = TestContext::new();
    let probe = long_spec(
        &ctx,
        "local://alice/interrupt-probe",
        16384,
        "2MiB",
        "64KiB",
    );
    let (output, probe_report) = run_json(&ctx, &probe, &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let nodes = probe_report["nodes"].as_u64().unwrap() as usize;
    for (trial, signals) in [(0u64, 1), (1, 2)] {
        let name = format!("alice/interrupt-{trial}");
        // Other ids than the probe's, so that uploads are in flight when it is interrupted.
        let spec = long_spec_of(
            &ctx,
            &format!("local://{name}"),
            16384,
            "2MiB",
            "64KiB",
            trial + 1,
        );
        let mut child = hubsweep(&ctx)
            .args(["run", "--format", "json"])
            .arg(&spec)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Mid-run: once the first commit has landed (the sweep commits many times).
        let (lines, reader) = stderr_lines(&mut child);
        assert!(
            lines.iter().any(|line| line.starts_with("commit   ")),
            "the run ended without a commit"
        );
        interrupt(&child);
        if signals == 2 {
            std::thread::sleep(Duration::from_millis(50));
            interrupt(&child);
        }
        // Once: in-flight uploads finish and the ledger is committed. Twice: at once.
        let limit = if signals == 2 { 5 } else { 60 };
        let status = wait_within(&mut child, Duration::from_secs(limit))
            .unwrap_or_else(|| panic!("{signals} interrupt(s): still running after {limit} s"));
        drop(lines);
        let text = reader.join().unwrap();
        assert_eq!(status.code(), Some(130), "{signals} interrupt(s): {text}");
        assert!(text.contains("interrupted"), "{text}");
        let committed = runtime().block_on(async {
            let (server, client) = open_store(&ctx.child("hubsweep-home")).await;
            let repo = dataset(&name);
            let state = LedgerState::read(&client, &repo, "main").await.ok();
            let count = match &state {
                Some(state) => {
                    let records = segment_records(&client, &repo, state).await;
                    check_ledger(state, &records);
                    records.len()
                }
                None => 0,
            };
            server.shutdown().await;
            count
        });
        assert!(
            committed < nodes,
            "{signals} interrupt(s): nothing was left to do"
        );
        // The same command finishes the rest, and then there is nothing left.
        let (output, resumed) = run_json(&ctx, &spec, &[]);
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        if signals == 1 {
            assert!(committed > 0, "one interrupt: nothing was committed");
            assert_eq!(
                resumed["executed"].as_u64(),
                Some((nodes - committed) as u64),
                "{resumed}"
            );
        }
        let (_, again) = run_json(&ctx, &spec, &[]);
        assert_eq!(again["executed"], 0, "{again}");
        runtime().block_on(async {
            let (server, client) = open_store(&ctx.child("hubsweep-home")).await;
            let repo = dataset(&name);
            let state = LedgerState::read(&client, &repo, "main").await.unwrap();
            let records = segment_records(&client, &repo, &state).await;
            check_ledger(&state, &records);
            assert_eq!(records.iter().filter(|r| r.error.is_none()).count(), nodes);
            server.shutdown().await;
        });
    }
}

/// On a terminal a run draws its progress (bytes uploaded of the total, throughput, ETA, tokens
/// captured); without one it draws nothing, and its log lines stay plain text.
#[test]
fn progress_is_drawn_on_a_terminal_and_not_otherwise() {
    let ctx = TestContext::new();
    let spec = long_spec_of(&ctx, "local://alice/progress", 4096, "2MiB", "64KiB", 7);
    // `script` gives the run a pseudo-terminal and copies what it drew to its own stdout.
    let line = format!("exec '{}' run '{}'", bin().display(), spec.display());
    let mut child = under_a_terminal(&hubsweep(&ctx), &line, ctx.path())
        // A terminal names its kind; with none, indicatif treats it as one that cannot redraw.
        .env("TERM", "xterm")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut drawn = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut drawn).unwrap();
    let status = wait_within(&mut child, Duration::from_secs(120)).expect("the run finished");
    assert!(status.success(), "{drawn}");
    for part in [
        "of activations uploaded (",
        "/s, ETA ",
        "nodes · ",
        "tokens captured",
    ] {
        assert!(
            drawn.contains(part),
            "no `{part}` on the terminal:\n{drawn}"
        );
    }
    // The bar's last state: every planned byte and node done, and no more than planned (its
    // total counts each artifact whole, header and token ids included).
    let last = drawn
        .rsplit(['\r', '\n'])
        .find(|line| line.contains("of activations uploaded"))
        .unwrap();
    // "⠦ 665.91 KiB/665.91 KiB of activations uploaded (…) · 43/43 nodes · …"
    let head: Vec<&str> = last
        .split(" of activations uploaded")
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let bytes = head[head.len().saturating_sub(3)..].join(" ");
    let (done, total) = bytes.split_once('/').unwrap();
    assert_eq!(done.trim(), total.trim(), "{last}");
    let nodes = last
        .split(" nodes")
        .next()
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap();
    let (done, total) = nodes.split_once('/').unwrap();
    assert_eq!(done, total, "{last}");
    // The same kind of run without a terminal: the log lines, no bar, no escape sequences.
    let spec = long_spec_of(
        &ctx,
        "local://alice/progress-piped",
        4096,
        "2MiB",
        "64KiB",
        8,
    );
    let (output, _) = run_json(&ctx, &spec, &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let text = stderr(&output);
    assert!(text.contains("pinned"), "{text}");
    assert!(!text.contains("ETA") && !text.contains('\u{1b}'), "{text}");
}

/// A batch far larger than the budget (64 windows of 16 tokens, ~5 MiB of activations against
/// `memory: 1MiB`) reserves only its capped share, so a shard's artifacts — planned at half the
/// budget, a little more with their headers and token ids — still fit beside it. With the
/// share capped at half instead, this run waited on itself forever.
#[test]
fn a_batch_larger_than_the_budget_does_not_stall_capture() {
    let ctx = TestContext::new();
    let spec = long_spec(&ctx, "local://alice/big-batch", 4608, "1MiB", "64KiB");
    let text = std::fs::read_to_string(&spec).unwrap();
    std::fs::write(&spec, text.replace("batch_size: 4", "batch_size: 64")).unwrap();
    let mut child = hubsweep(&ctx)
        .args(["run", "--format", "json"])
        .arg(&spec)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let status = wait_within(&mut child, Duration::from_secs(120))
        .expect("the run did not finish in 120 s: capture is waiting on its own budget");
    assert!(status.success(), "{status}");
    let (_, report) = run_json(&ctx, &spec, &[]);
    assert_eq!(report["executed"], 0, "{report}");
}

#[test]
fn bad_input_at_run_time_is_a_clear_error_and_leaves_the_ledger_intact() {
    let ctx = TestContext::new();
    let spec = quickstart(&ctx);
    let (output, first) = run_json(&ctx, &spec, &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let write = |name: &str, text: String| {
        let path = ctx.child(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let base = std::fs::read_to_string(&spec).unwrap();
    let cases = [
        ("unknown-repo.yaml", base.replace("local://hubsweep/tiny-llama", "local://hubsweep/no-such-model"), "no-such-model"),
        ("unknown-revision.yaml", base.replace("    repo: local://hubsweep/tiny-llama", "    repo: local://hubsweep/tiny-llama\n    revision: no-such-branch"), "no-such-branch"),
        (
            "missing-data.yaml",
            base.replace(
                "  texts:\n    - \"The quick brown fox jumps over the lazy dog.\"",
                "  source: local://datasets/hubsweep/nothing/prompts.txt@main\n  max_tokens: 64\n  texts_unused:\n    - \"x\"",
            )
            .replace("  texts_unused:\n    - \"x\"\n", "")
            .replace(
                "    - \"Interpretability asks what a network computes, and how.\"\n    - \"Checkpoints along training show representations forming.\"\n    - \"A ledger on the Hub lets anyone check the results.\"\n",
                "",
            ),
            "prompts.txt",
        ),
    ];
    for (name, text, mention) in cases {
        let path = write(name, text);
        let (output, _) = run_json(&ctx, &path, &[]);
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{name}: {err}");
        assert!(
            err.contains(mention),
            "{name}: the error does not name `{mention}`:\n{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    // A rejected token: an `hf://` output on a hub that wants another token.
    let rt = runtime();
    let server = rt.block_on(async {
        let mut config = ServerConfig::new(ctx.child("guarded"));
        config.addr = "127.0.0.1:0".parse().unwrap();
        config.token = Some(hubsweep::hub::Token::new("right-token"));
        Server::start(config).await.unwrap()
    });
    let guarded = write(
        "guarded.yaml",
        base.replace(
            "output: local://hubsweep/quickstart",
            "output: hf://datasets/alice/guarded",
        ),
    );
    let (output, _) = run_json(
        &ctx,
        &guarded,
        &[
            ("HF_ENDPOINT", server.base_url()),
            ("HF_TOKEN", "wrong-token"),
        ],
    );
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{err}");
    assert!(err.contains("not authorized"), "{err}");
    assert!(
        !err.contains("wrong-token"),
        "the token leaked into the message: {err}"
    );
    rt.block_on(server.shutdown());
    // The quickstart's ledger is as it was.
    let (_, again) = run_json(&ctx, &spec, &[]);
    assert_eq!(again["executed"], 0);
    assert_eq!(again["head"], first["head"]);
}

#[test]
fn a_gguf_imported_into_the_embedded_hub_runs_as_a_local_model() {
    let Some(gguf) = std::env::var_os("HUBSWEEP_SMOLLM2_GGUF") else {
        assert!(
            !peers_required(),
            "HUBSWEEP_SMOLLM2_GGUF is not set: source scripts/test.d/20-models.sh"
        );
        eprintln!("skip: HUBSWEEP_SMOLLM2_GGUF not set");
        return;
    };
    let ctx = TestContext::new();
    let import = hubsweep(&ctx)
        .args([
            "hub",
            "import",
            "--local",
            "--repo",
            "hubsweep/smollm2-135m",
            "--gguf",
        ])
        .arg(&gguf)
        .output()
        .unwrap();
    assert!(import.status.success(), "{}", stderr(&import));
    let spec = ctx.child("smollm2.yaml");
    std::fs::write(
        &spec,
        "name: smol\noutput: local://alice/smol\nmodels:\n  - family: llama\n    repo: local://hubsweep/smollm2-135m\ndata:\n  texts: [\"The capital of France is Paris, and the capital of Italy is Rome.\"]\n  seq_len: 8\ncapture:\n  hooks: [hook_resid_post]\n  layers: [0, -1]\nanalyses:\n  - spectrum: {top_k: 4}\n",
    )
    .unwrap();
    let (output, report) = run_json(&ctx, &spec, &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(report["executed"].as_u64().unwrap() >= 6, "{report}");
    assert!(report["pinned"][0]["commit"].as_str().unwrap().len() == 40);
}

#[test]
fn the_python_snippet_in_the_docs_reads_a_run() {
    let Some(python) = crate::hub::hub_python() else {
        return;
    };
    let ctx = TestContext::new();
    let spec = quickstart(&ctx);
    let (output, _) = run_json(&ctx, &spec, &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let docs = std::fs::read_to_string(repo_root().join("docs/ledger.md")).unwrap();
    let snippet = docs
        .split("```python")
        .filter_map(|block| block.split("```").next())
        .find(|block| block.contains("hf_hub_download"))
        .expect("a Python snippet that reads results");
    let rt = runtime();
    let (server, _) = rt.block_on(open_store(&ctx.child("hubsweep-home")));
    let out = StdCommand::new(&python)
        .args(["-c", snippet])
        .env("HF_ENDPOINT", server.base_url())
        .env("HF_HUB_DISABLE_XET", "1")
        .env("HF_HOME", ctx.child("py-hf-home"))
        .output()
        .unwrap();
    rt.block_on(server.shutdown());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("hook_resid_post"), "{text}");
    assert!(
        text.contains("(16, 64)") || text.contains(", 64)"),
        "no activations shape in:\n{text}"
    );
}

/// The weight blobs the snapshots under `home` link `model.safetensors` to.
pub(crate) fn weight_blobs(home: &Path) -> BTreeSet<String> {
    walk(home)
        .into_iter()
        .filter(|path| {
            path.ends_with("model.safetensors") && path.to_string_lossy().contains("/snapshots/")
        })
        .filter_map(|path| path.canonicalize().ok())
        .filter_map(|blob| Some(blob.file_name()?.to_str()?.to_owned()))
        .collect()
}

/// The names of every file and link under `dir`.
fn file_names(dir: &Path) -> Vec<String> {
    walk(dir)
        .iter()
        .filter_map(|p| Some(p.file_name()?.to_str()?.to_owned()))
        .collect()
}

/// Weights are downloaded when a model's turn comes, not when it is pinned; `--evict-models`
/// deletes the ones the run downloaded once the run is past them, and only those.
#[test]
fn weights_are_fetched_at_their_turn_and_evicted_only_when_the_run_downloaded_them() {
    // A plain run keeps its weights in the cache: the blobs they live in.
    let keeper = TestContext::new();
    let (output, report) = run_json(&keeper, &quickstart(&keeper), &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(report["executed"], 43, "{report}");
    // The embedded hub keeps its objects (named by sha256, like blobs) beside the cache.
    let kept = weight_blobs(&keeper.child("hubsweep-home/cache"));
    assert_eq!(kept.len(), 2, "one weights file per tiny model: {kept:?}");

    // Planning and a dry run download no weights.
    let ctx = TestContext::new();
    let spec = quickstart(&ctx);
    let home = ctx.child("hubsweep-home/cache");
    let output = hubsweep(&ctx)
        .args(["run", "--dry-run"])
        .arg(&spec)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let files = file_names(&home);
    assert!(files.iter().any(|f| f == "config.json"), "{files:?}");
    assert!(
        !files
            .iter()
            .any(|f| f == "model.safetensors" || kept.contains(f)),
        "{files:?}"
    );

    // Evicting: the results are complete, the weights are gone, config and tokenizer stay.
    let mut cmd = hubsweep(&ctx);
    let output = cmd
        .args(["run", "--evict-models", "--format", "json"])
        .arg(&spec)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["executed"], 43, "{report}");
    assert_eq!(
        stderr(&output).matches("evicted  local://").count(),
        2,
        "{}",
        stderr(&output)
    );
    // The wait for a download is said (the first model's: the second downloads ahead).
    assert!(
        stderr(&output).contains("download local://hubsweep/tiny-gpt-neox@main: 1 weight file(s)"),
        "{}",
        stderr(&output)
    );
    let files = file_names(&home);
    assert!(
        !files
            .iter()
            .any(|f| f == "model.safetensors" || kept.contains(f)),
        "{files:?}"
    );
    assert!(files.iter().any(|f| f == "config.json"), "{files:?}");
    // A rerun resumes from the ledger without fetching a weight.
    let (output, again) = run_json(&ctx, &spec, &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(again["executed"], 0, "{again}");
    assert!(weight_blobs(&home).is_empty());

    // Weights cached before the run stay, whatever the flag.
    let other = keeper.child("other.yaml");
    let text = std::fs::read_to_string(quickstart(&keeper)).unwrap();
    std::fs::write(
        &other,
        text.replace("hubsweep/quickstart", "hubsweep/quickstart-again"),
    )
    .unwrap();
    let (_, err) = succeed(&keeper, &["run", "--evict-models"], &other);
    assert!(
        !err.contains("evicted") && !err.contains("download"),
        "{err}"
    );
    assert_eq!(weight_blobs(&keeper.child("hubsweep-home/cache")), kept);

    // The Slurm executor refuses the flag rather than ignoring it.
    let output = hubsweep(&ctx)
        .args(["run", "--executor", "slurm", "--evict-models"])
        .arg(&spec)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("--evict-models"),
        "{}",
        stderr(&output)
    );
}

/// A model that fails at run time (its weights are truncated; pinning reads only their
/// bytes): fail-fast stops at it; `--keep-going` runs every other model and the overlaps that
/// do not need it, and names the final-step nodes it leaves out, without a stranded record;
/// once the model is repaired, a plain rerun completes the sweep.
#[test]
fn a_failing_model_stops_the_run_or_with_keep_going_only_what_needs_it() {
    let ctx = TestContext::new();
    let sweep = OneBrokenModel::new(&ctx, "local://alice/three");
    let spec = &sweep.spec;
    let run = |flags: &[&str]| {
        let output = hubsweep(&ctx)
            .args(["run", "--format", "json"])
            .args(flags)
            .arg(spec)
            .output()
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
        (output, json)
    };
    let status = || {
        let output = hubsweep(&ctx)
            .args(["status", "--format", "json"])
            .arg(spec)
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap()
    };
    let done = |status: &serde_json::Value, m: usize| status["models"][m]["done"].as_u64();

    // Fail-fast: the first model is recorded, the broken one fails, the third never starts.
    let (output, report) = run(&[]);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    let failed = report["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{report}");
    assert!(
        failed[0]["error"]
            .as_str()
            .unwrap()
            .contains("not a valid safetensors file"),
        "{report}"
    );
    let after = status();
    assert_eq!(done(&after, 0), Some(9), "{after}");
    assert_eq!(after["models"][1]["failed"], 1, "{after}");
    assert_eq!(done(&after, 2), Some(0), "{after}");

    // Keep going: the third model and its overlaps with the base run; what needs the broken
    // model is left out and named (three overlaps and the final ledger commit).
    let (output, report) = run(&["--keep-going"]);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert_eq!(report["failed"].as_array().unwrap().len(), 1, "{report}");
    let blocked: Vec<&str> = report["blocked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_str().unwrap())
        .collect();
    assert_eq!(blocked.len(), 4, "{blocked:?}");
    assert!(
        blocked[..3]
            .iter()
            .all(|b| b.starts_with("overlap") && b.contains("broken"))
    );
    assert_eq!(blocked[3], "ledger final");
    assert!(
        err.contains("not run: 4 node(s) of the final step"),
        "{err}"
    );
    let after = status();
    assert_eq!(done(&after, 2), Some(9), "{after}");
    assert_eq!(after["cross_model"]["done"], 3, "{after}");
    assert_eq!(after["complete"], false, "{after}");
    let rt = runtime();
    rt.block_on(async {
        let (server, client) = open_store(&ctx.child("hubsweep-home")).await;
        let repo = dataset("alice/three");
        let state = LedgerState::read(&client, &repo, "main").await.unwrap();
        let records = segment_records(&client, &repo, &state).await;
        check_ledger(&state, &records);
        server.shutdown().await;
    });

    // Repaired, a plain rerun records the rest.
    sweep.repair();
    let (output, report) = run(&[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(report["blocked"], serde_json::json!([]), "{report}");
    assert_eq!(status()["complete"], true);
}

/// The library-API example (`examples/run_sweep.rs`, which `cargo test` builds) runs the
/// quickstart, and a second run finds everything done.
#[test]
fn the_library_example_runs_the_quickstart_then_resumes() {
    let example = bin()
        .parent()
        .unwrap()
        .join("examples")
        .join(format!("run_sweep{}", std::env::consts::EXE_SUFFIX));
    assert!(
        example.is_file(),
        "{} is not built: plain `cargo test` builds the examples, `--test it` alone does not",
        example.display()
    );
    let ctx = TestContext::new();
    let spec = quickstart(&ctx);
    let run = || {
        let output = StdCommand::new(&example)
            .arg(&spec)
            .current_dir(repo_root())
            .env_clear()
            .env("HOME", ctx.child("home"))
            .env("HUBSWEEP_HOME", ctx.child("hubsweep-home"))
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let first = run();
    assert!(
        first.contains("43 nodes: 43 executed, 0 already done"),
        "{first}"
    );
    assert!(
        first.contains("pinned local://hubsweep/tiny-llama@main at "),
        "{first}"
    );
    let again = run();
    assert!(
        again.contains("43 nodes: 0 executed, 43 already done, 0 bytes uploaded in 0 commits"),
        "{again}"
    );
}

/// A Hub that does not answer (nothing listens at `HF_ENDPOINT`): the run cannot start — exit 2
/// — and says which endpoint it tried and what to check, after its retries.
#[test]
fn an_unreachable_hub_is_exit_2_with_the_endpoint_named() {
    let ctx = TestContext::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let spec = ctx.child("unreachable.yaml");
    std::fs::write(
        &spec,
        "name: unreachable\noutput: local://alice/unreachable\nmodels:\n  - family: gpt_neox\n    repo: org/some-model\ndata:\n  token_ids: [[1, 2, 3, 4, 5, 6, 7, 8]]\n  seq_len: 4\ncapture:\n  hooks: [hook_resid_post]\n  layers: all\n  dtype: f32\nlimits:\n  memory: 64MiB\n  artifact_bytes: 1MiB\ncompute:\n  device: cpu\n  batch_size: 1\n",
    )
    .unwrap();
    let output = hubsweep(&ctx)
        .args(["run"])
        .arg(&spec)
        .env("HF_ENDPOINT", &endpoint)
        .env("HF_TOKEN", "hf_unreachable_secret")
        .output()
        .unwrap();
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{err}");
    assert!(err.contains("org/some-model"), "{err}");
    assert!(
        err.contains(&format!("the Hub at `{endpoint}` did not answer"))
            && err.contains("check `HF_ENDPOINT`"),
        "{err}"
    );
    assert!(!err.contains("hf_unreachable_secret"), "{err}");
}
