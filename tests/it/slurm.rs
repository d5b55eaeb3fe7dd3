//! `hubsweep run --executor slurm` on a real Slurm (started by scripts/test.d/40-slurm.sh, which
//! exports `HUBSWEEP_SLURM=1`) against an in-process hub with a commit rate limit: the result
//! equals a local run's, a killed worker's unit is resubmitted, a finished sweep submits
//! nothing, bad input is refused before anything is submitted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Output, Stdio};
use std::time::{Duration, Instant};

use hubsweep::hub::server::{Faults, Server, ServerConfig, ServerHandle};
use hubsweep::hub::{HubClient, Repo, RepoId};
use hubsweep::ledger::{LedgerState, Record};

use crate::common::{OneBrokenModel, TestContext, peers_required, repo_root};

/// Commits per hour the test hub allows per repo: low enough that a sweep which ignored the
/// limit would be refused, high enough for the tests' few commits.
const COMMITS_PER_HOUR: u32 = 60;

pub(crate) fn slurm_available() -> bool {
    if std::env::var_os("HUBSWEEP_SLURM").is_some_and(|v| v == "1") {
        return true;
    }
    assert!(
        !peers_required(),
        "HUBSWEEP_SLURM is not set: scripts/test.d/40-slurm.sh starts a local Slurm (as root)"
    );
    eprintln!("skip: no local Slurm (HUBSWEEP_SLURM unset; see scripts/slurm-local.sh)");
    false
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

pub(crate) async fn rate_limited_server(ctx: &TestContext) -> ServerHandle {
    let mut config = ServerConfig::new(ctx.child("remote-store"));
    config.addr = "127.0.0.1:0".parse().unwrap();
    config.limits.commits_per_hour = Some(COMMITS_PER_HOUR);
    Server::start(config).await.unwrap()
}

/// The binary with an isolated environment pointing at `server`. Slurm jobs inherit this
/// environment (sbatch's default `--export=ALL`), so workers reach the same hub.
pub(crate) fn hubsweep(ctx: &TestContext, server: &ServerHandle) -> StdCommand {
    let mut cmd = StdCommand::new(env!("CARGO_BIN_EXE_hubsweep"));
    cmd.current_dir(ctx.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", ctx.child("home"))
        .env("HF_HOME", ctx.child("hf-home"))
        .env("HUBSWEEP_HOME", ctx.child("hubsweep-home"))
        .env("HF_ENDPOINT", server.base_url())
        .env("NO_COLOR", "1");
    cmd
}

/// A spec with four work units: the four tiny fixture models (folders: they pin to the same
/// content hash on every node).
pub(crate) fn four_units(ctx: &TestContext, output: &str) -> PathBuf {
    let fixtures = repo_root().join("tests/fixtures");
    let model = |family: &str, dir: &str| {
        format!(
            "  - family: {family}\n    repo: {}\n",
            fixtures.join(dir).display()
        )
    };
    let text = format!(
        "name: four\noutput: {output}\nmodels:\n{}{}{}{}data:\n  texts:\n    - \"The quick brown fox jumps over the lazy dog.\"\n    - \"Interpretability asks what a network computes, and how.\"\n  seq_len: 16\n  prepend_bos: true\ncapture:\n  hooks: [hook_resid_pre, hook_resid_post]\n  layers: all\n  dtype: f32\nanalyses:\n  - spectrum: {{top_k: 8}}\nlimits:\n  memory: 64MiB\n  artifact_bytes: 1MiB\ncompute:\n  device: cpu\n  batch_size: 4\n",
        model("gpt_neox", "gpt_neox_tiny"),
        model("gpt_neox", "gpt_neox_tiny_seq"),
        model("llama", "llama_tiny"),
        model("llama", "llama_tiny_llama3"),
    );
    let name = output.rsplit('/').next().unwrap();
    let path = ctx.child(&format!("{name}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

pub(crate) fn json_of(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null)
}

pub(crate) fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub(crate) fn dataset(id: &str) -> Repo {
    let (ns, name) = id.split_once('/').unwrap();
    Repo::dataset(RepoId::new(ns, name).unwrap())
}

/// Every record of the repo's segments (duplicates kept, to detect them) and the state.
pub(crate) async fn ledger_of(server: &ServerHandle, id: &str) -> (LedgerState, Vec<Record>) {
    let client = HubClient::builder(server.base_url())
        .unwrap()
        .build()
        .unwrap();
    let repo = dataset(id);
    let state = LedgerState::read(&client, &repo, "main").await.unwrap();
    let mut records = Vec::new();
    for path in &state.segments {
        let bytes = client.download_bytes(&repo, "main", path).await.unwrap();
        records.extend(hubsweep::ledger::parse_records(path, &bytes).unwrap());
    }
    (state, records)
}

/// Node id → (kind, [(file name, sha256)]) of the successful records; panics on a duplicate.
pub(crate) fn results(records: &[Record]) -> BTreeMap<String, (String, Vec<(String, String)>)> {
    let mut out = BTreeMap::new();
    for record in records.iter().filter(|r| r.error.is_none()) {
        let files = record
            .files
            .iter()
            .map(|f| {
                let name = f.path.rsplit('/').next().unwrap_or_default().to_owned();
                (name, f.sha256.clone())
            })
            .collect();
        assert!(
            out.insert(record.id.clone(), (record.kind.clone(), files))
                .is_none(),
            "node {} ({}) recorded twice",
            record.id,
            record.kind
        );
    }
    out
}

/// Files of the repo under `ledger/slurm/`, sorted.
pub(crate) fn slurm_files(state: &LedgerState) -> Vec<String> {
    let mut files: Vec<String> = state
        .files
        .keys()
        .filter(|p| p.starts_with("ledger/slurm/"))
        .cloned()
        .collect();
    files.sort();
    files
}

/// Debug log lines of a session pinning the sweep (`RUST_LOG=hubsweep=debug`).
fn pinnings(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("DEBUG") && l.contains("pinning the sweep"))
        .count()
}

/// Names of the jobs Slurm has not finished.
fn squeue_names() -> String {
    let out = StdCommand::new("squeue")
        .args(["-h", "-o", "%j"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn slurm_sweep_equals_a_local_run_then_resubmission_submits_nothing() {
    if !slurm_available() {
        return;
    }
    let ctx = TestContext::new();
    let rt = runtime();
    let server = rt.block_on(rate_limited_server(&ctx));
    let spec = four_units(&ctx, "hf://datasets/alice/four-slurm");
    let logs = ctx.child("job-logs");
    std::fs::create_dir_all(&logs).unwrap();
    // The jobs inherit `RUST_LOG`: each logs every pinning of the sweep.
    let out = hubsweep(&ctx, &server)
        .env("RUST_LOG", "hubsweep=debug")
        .args([
            "run",
            "--executor",
            "slurm",
            "--array-max",
            "4",
            "--format",
            "json",
            "--log-dir",
        ])
        .arg(&logs)
        .arg(&spec)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = json_of(&out);
    assert_eq!(report["complete"], true, "{report}");
    assert_eq!(report["pending_units"], 4, "{report}");
    assert!(report["array_job"].is_string(), "{report}");
    assert_eq!(pinnings(&stderr(&out)), 1, "the submitter pins once");
    // Every job (four units and the final step) pinned the sweep exactly once: the plan it
    // checks against the submitter's is the plan it runs, and the data is tokenized once.
    let mut job_logs: Vec<PathBuf> = std::fs::read_dir(&logs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    job_logs.sort();
    assert_eq!(job_logs.len(), 5, "{job_logs:?}");
    for log in &job_logs {
        let text = std::fs::read_to_string(log).unwrap();
        assert_eq!(pinnings(&text), 1, "{}:\n{text}", log.display());
    }

    // `status` knows the submission: every unit done.
    let out = hubsweep(&ctx, &server)
        .args(["status", "--format", "json"])
        .arg(&spec)
        .output()
        .unwrap();
    let status = json_of(&out);
    assert_eq!(status["complete"], true, "{status}");
    assert_eq!(status["slurm"]["plan"], report["plan"], "{status}");
    assert_eq!(
        status["slurm"]["units"],
        serde_json::json!({"done": 4}),
        "{status}"
    );

    // The same spec run locally into another repo.
    let local_spec = four_units(&ctx, "hf://datasets/alice/four-local");
    let out = hubsweep(&ctx, &server)
        .args(["run", "--format", "json"])
        .arg(&local_spec)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    rt.block_on(async {
        let (slurm_state, slurm_records) = ledger_of(&server, "alice/four-slurm").await;
        let (_, local_records) = ledger_of(&server, "alice/four-local").await;
        let slurm = results(&slurm_records);
        let local = results(&local_records);
        assert_eq!(slurm.len(), local.len());
        assert_eq!(
            slurm, local,
            "the slurm sweep recorded other nodes or bytes"
        );
        // Every recorded file is in the repo with its recorded hash.
        for record in slurm_records.iter().filter(|r| r.error.is_none()) {
            for file in &record.files {
                let have = &slurm_state.files[&file.path];
                assert_eq!(have.sha256.as_deref(), Some(file.sha256.as_str()));
            }
        }
        assert!(
            slurm_state.files.contains_key("ledger/index.jsonl"),
            "the final job wrote no index"
        );
    });
    // Both sweeps together stayed under the hub's limit (a 429 would have been retried).
    let stats = server.stats();
    assert!(
        stats.commits_applied <= u64::from(COMMITS_PER_HOUR),
        "{stats:?}"
    );

    // A second submission of the finished sweep submits nothing.
    let out = hubsweep(&ctx, &server)
        .args(["run", "--executor", "slurm", "--format", "json"])
        .arg(&spec)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let again = json_of(&out);
    assert_eq!(again["submitted"], false, "{again}");
    assert_eq!(again["plan"], report["plan"]);
    assert!(
        stderr(&out).contains("nothing to submit"),
        "{}",
        stderr(&out)
    );
    rt.block_on(server.shutdown());
}

#[test]
fn a_worker_killed_mid_unit_is_resubmitted_and_nothing_is_recorded_twice() {
    if !slurm_available() {
        return;
    }
    let ctx = TestContext::new();
    let rt = runtime();
    let server = rt.block_on(rate_limited_server(&ctx));
    // Slow answers keep each unit busy for seconds, so the kill lands mid-unit.
    server.set_faults(Faults {
        slow_ms: 250,
        ..Faults::default()
    });
    let spec = four_units(&ctx, "hf://datasets/alice/four-killed");
    let child = hubsweep(&ctx, &server)
        .args([
            "run",
            "--executor",
            "slurm",
            "--array-max",
            "4",
            "--format",
            "json",
        ])
        .arg(&spec)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Find this sweep's array task 1 running, give it a moment, and cancel it. Its job name
    // comes from the plan the submitter commits before submitting.
    let client = HubClient::builder(server.base_url())
        .unwrap()
        .build()
        .unwrap();
    let repo = dataset("alice/four-killed");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut name = None;
    let killed = loop {
        assert!(Instant::now() < deadline, "no array task ever ran");
        if name.is_none() {
            let state = rt
                .block_on(LedgerState::read(&client, &repo, "main"))
                .unwrap();
            name = slurm_files(&state)
                .iter()
                .find_map(|p| p.strip_suffix("/plan.json"))
                .and_then(|p| p.rsplit('/').next())
                .map(|hash| format!("hubsweep-{hash}"));
        }
        let Some(name) = &name else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let out = StdCommand::new("squeue")
            .args(["-h", "-t", "running", "-o", "%j|%F|%K"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let running = text.lines().find_map(|line| {
            let parts: Vec<&str> = line.split('|').collect();
            (parts.len() == 3 && parts[0] == name && parts[2] == "1")
                .then(|| format!("{}_{}", parts[1], parts[2]))
        });
        if let Some(task) = running {
            std::thread::sleep(Duration::from_millis(1500));
            let status = StdCommand::new("scancel").arg(&task).status().unwrap();
            assert!(status.success());
            break task;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    server.set_faults(Faults::default());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(json_of(&out)["complete"], true, "{}", stderr(&out));
    rt.block_on(async {
        let (state, records) = ledger_of(&server, "alice/four-killed").await;
        // No node twice (this panics on a duplicate), and the final step ran.
        let results = results(&records);
        assert!(results.values().any(|(kind, _)| kind == "ledger_commit"));
        assert!(state.files.contains_key("ledger/index.jsonl"));
        let attempts: Vec<String> = slurm_files(&state)
            .into_iter()
            .filter(|p| p.contains("/attempt-"))
            .collect();
        assert_eq!(
            attempts.len(),
            2,
            "the killed task {killed} was not resubmitted once: {attempts:?}"
        );
        let second = client
            .download_bytes(&repo, "main", &attempts[1])
            .await
            .unwrap();
        let second: serde_json::Value = serde_json::from_slice(&second).unwrap();
        assert_eq!(second["units"], serde_json::json!([1]), "{second}");
        let reason = second["reasons"][0][1].as_str().unwrap_or_default();
        assert!(reason.contains("CANCELLED"), "{reason}");
    });
    rt.block_on(server.shutdown());
}

fn submit_refused(
    ctx: &TestContext,
    server: &ServerHandle,
    spec: &Path,
    args: &[&str],
    path: Option<&str>,
) -> String {
    let mut cmd = hubsweep(ctx, server);
    cmd.args(["run", "--executor", "slurm"])
        .args(args)
        .arg(spec);
    if let Some(path) = path {
        cmd.env("PATH", path);
    }
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    stderr(&out)
}

#[test]
fn no_slurm_on_the_machine_is_refused_before_anything_happens() {
    let ctx = TestContext::new();
    let rt = runtime();
    let server = rt.block_on(rate_limited_server(&ctx));
    let spec = four_units(&ctx, "hf://datasets/alice/four-noslurm");
    let empty = ctx.child("empty-bin");
    std::fs::create_dir_all(&empty).unwrap();
    let message = submit_refused(
        &ctx,
        &server,
        &spec,
        &[],
        Some(&empty.display().to_string()),
    );
    assert!(message.contains("`sbatch` not found"), "{message}");
    // Nothing was written to the repo.
    let stats = server.stats();
    assert_eq!(stats.commit_posts, 0, "{stats:?}");
    rt.block_on(server.shutdown());
}

#[test]
fn an_unknown_partition_or_an_sbatch_refusal_submits_nothing() {
    if !slurm_available() {
        return;
    }
    let ctx = TestContext::new();
    let rt = runtime();
    let server = rt.block_on(rate_limited_server(&ctx));
    let spec = four_units(&ctx, "hf://datasets/alice/four-refused");
    let message = submit_refused(
        &ctx,
        &server,
        &spec,
        &["--partition", "no-such-partition"],
        None,
    );
    assert!(message.contains("`sbatch"), "{message}");
    assert!(message.to_lowercase().contains("partition"), "{message}");
    // A malformed option: sbatch refuses the array.
    let message = submit_refused(&ctx, &server, &spec, &["--sbatch-arg=--time=soon"], None);
    assert!(message.contains("`sbatch"), "{message}");
    assert!(message.contains("time"), "{message}");
    let (state, records) = rt.block_on(ledger_of(&server, "alice/four-refused"));
    assert!(records.is_empty(), "records were written: {records:?}");
    let plans = slurm_files(&state);
    assert!(
        plans.iter().all(|p| !p.contains("/attempt-")),
        "a submission was recorded: {plans:?}"
    );
    let names = squeue_names();
    for plan in plans {
        let hash = plan.split('/').nth(2).unwrap_or_default();
        assert!(
            !names.contains(&format!("hubsweep-{hash}")),
            "jobs of the refused sweep exist: {names}"
        );
    }
    let local = four_units(&ctx, "local://alice/four-local-output");
    let message = submit_refused(&ctx, &server, &local, &[], None);
    assert!(message.contains("needs an `hf://` output"), "{message}");
    rt.block_on(server.shutdown());
}

/// `--keep-going` and `--upload-slots` reach the workers through the plan. A unit whose model
/// cannot load (truncated weights) fails its one attempt; the final step then records what
/// does not need it — the other units' overlaps and the index — leaves out the final ledger
/// commit, and the submitter exits 1 saying so.
#[test]
fn keep_going_reaches_the_workers_and_the_final_step_records_what_it_can() {
    if !slurm_available() {
        return;
    }
    let ctx = TestContext::new();
    let rt = runtime();
    let server = rt.block_on(rate_limited_server(&ctx));
    let spec = OneBrokenModel::new(&ctx, "hf://datasets/alice/three-slurm").spec;
    let out = hubsweep(&ctx, &server)
        .args([
            "run",
            "--executor",
            "slurm",
            "--array-max",
            "3",
            "--max-attempts",
            "1",
            "--keep-going",
            "--upload-slots",
            "2",
            "--format",
            "json",
        ])
        .arg(&spec)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(json_of(&out)["complete"], false, "{err}");
    assert!(
        err.contains("the final step recorded what does not need them"),
        "{err}"
    );
    rt.block_on(async {
        let (state, records) = ledger_of(&server, "alice/three-slurm").await;
        let client = HubClient::builder(server.base_url())
            .unwrap()
            .build()
            .unwrap();
        let plan = slurm_files(&state)
            .into_iter()
            .find(|p| p.ends_with("/plan.json"))
            .unwrap();
        let plan = client
            .download_bytes(&dataset("alice/three-slurm"), "main", &plan)
            .await
            .unwrap();
        let plan: serde_json::Value = serde_json::from_slice(&plan).unwrap();
        assert_eq!(
            plan["worker"],
            serde_json::json!({"keep_going": true, "upload_slots": 2}),
            "{plan}"
        );
        // The broken unit's failure is recorded; the other two units and their overlaps are
        // (no node twice); the final ledger commit, which needs the broken unit, is not.
        let results = results(&records);
        let failed: Vec<&Record> = records.iter().filter(|r| r.error.is_some()).collect();
        assert!(!failed.is_empty(), "no failure record");
        let overlaps = results.values().filter(|(k, _)| k == "overlap").count();
        assert_eq!(overlaps, 3, "overlaps of the third model with the base");
        let commits = results
            .values()
            .filter(|(k, _)| k == "ledger_commit")
            .count();
        assert_eq!(
            commits, 2,
            "the two good units' commits, and not the final one"
        );
        assert!(state.files.contains_key("ledger/index.jsonl"), "no index");
        for record in records.iter().filter(|r| r.error.is_none()) {
            for file in &record.files {
                let have = &state.files[&file.path];
                assert_eq!(have.sha256.as_deref(), Some(file.sha256.as_str()));
            }
        }
    });
    rt.block_on(server.shutdown());
}
