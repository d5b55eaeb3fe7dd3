//! Following and stopping a Slurm sweep through the binary, on the real Slurm of
//! scripts/test.d/40-slurm.sh: `--detach` returns after submitting and `status` follows the
//! units to the end; Ctrl-C of a foreground submitter on a terminal (a pty from util-linux
//! `script`) asks whether to cancel, and without a terminal leaves the jobs running unless
//! `--cancel-on-interrupt`.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command as StdCommand, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hubsweep::hub::server::{Faults, ServerHandle};

use crate::common::{TestContext, under_a_terminal};
use crate::slurm::{
    four_units, hubsweep, json_of, ledger_of, rate_limited_server, results, runtime,
    slurm_available, slurm_files, stderr,
};

/// A repo id of this test process: a sweep's job name comes from its spec (output included),
/// and Slurm remembers the jobs of an earlier test run for minutes.
fn unique(name: &str) -> String {
    format!("alice/{name}-{}", std::process::id())
}

/// The jobs of a sweep: its array job, its final job and its job name, as the submitter's
/// `submitted …` line gives them.
#[derive(Debug, Clone)]
struct Jobs {
    array: String,
    last: String,
    name: String,
}

impl Jobs {
    fn parse(text: &str) -> Option<Self> {
        let line = text.lines().find(|l| l.contains("submitted "))?;
        let number_after = |marker: &str| -> Option<String> {
            let rest = &line[line.find(marker)? + marker.len()..];
            let id: String = rest.chars().take_while(char::is_ascii_digit).collect();
            (!id.is_empty()).then_some(id)
        };
        let name_start = line.find("[job name ")? + "[job name ".len();
        let name_len = line[name_start..].find(']')?;
        Some(Self {
            array: number_after("array job ")?,
            last: number_after("final job ")?,
            name: line[name_start..name_start + name_len].to_owned(),
        })
    }
}

/// Cancels every job of a sweep when dropped, so a failing test leaves nothing queued.
struct CancelOnDrop(Arc<Mutex<Option<String>>>);

impl CancelOnDrop {
    fn new() -> Self {
        Self(Arc::new(Mutex::new(None)))
    }

    fn watch(&self, job_name: &str) {
        *self.0.lock().unwrap() = Some(job_name.to_owned());
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(name) = self.0.lock().unwrap().take() {
            let _ = StdCommand::new("scancel").args(["--name", &name]).status();
        }
    }
}

/// `(job id, task, state)` of every job Slurm still knows by `-n NAME` or `-j IDS`.
fn squeue(selector: &[&str]) -> Vec<(String, String, String)> {
    let out = StdCommand::new("squeue")
        .args(["-h", "-t", "all", "-o", "%F|%K|%T"])
        .args(selector)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let mut parts = line.trim().split('|').map(str::to_owned);
            Some((parts.next()?, parts.next()?, parts.next()?))
        })
        .collect()
}

fn is_active(state: &str) -> bool {
    matches!(
        state,
        "PENDING" | "RUNNING" | "CONFIGURING" | "COMPLETING" | "SUSPENDED" | "REQUEUED"
    )
}

/// Waits (bounded) until `condition` holds, polling every 200 ms.
fn wait_until(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What a child wrote to one stream so far, collected by a thread.
#[derive(Clone)]
struct Transcript(Arc<Mutex<String>>);

impl Transcript {
    fn collect(mut stream: impl Read + Send + 'static) -> Self {
        let text = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&text);
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n) = stream.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        });
        Self(text)
    }

    fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }

    fn wait_for(&self, pattern: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let text = self.text();
            if text.contains(pattern) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "no `{pattern}` within {limit:?} in:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn wait_exit(child: &mut Child, limit: Duration, transcript: &Transcript) -> Option<i32> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("the submitter did not exit:\n{}", transcript.text());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits for the submission, then for one of its array tasks to run (so that the interrupt
/// comes while units are running and pending).
fn submitted_and_running(transcript: &Transcript, guard: &CancelOnDrop) -> Jobs {
    let text = transcript.wait_for("[job name ", Duration::from_secs(90));
    let jobs = Jobs::parse(&text).unwrap_or_else(|| panic!("no job ids in:\n{text}"));
    guard.watch(&jobs.name);
    wait_until("a running array task", Duration::from_secs(60), || {
        squeue(&["-j", &jobs.array])
            .iter()
            .any(|(_, _, state)| state == "RUNNING")
    });
    jobs
}

/// A server slow enough (every answer delayed) that units stay busy for seconds.
fn slow(server: &ServerHandle) {
    server.set_faults(Faults {
        slow_ms: 200,
        ..Faults::default()
    });
}

/// The submitter under a pseudo-terminal: `script` gives it one, and what the test writes to
/// `script`'s stdin is typed at that terminal (`\x03` is Ctrl-C).
fn on_a_terminal(
    ctx: &TestContext,
    server: &ServerHandle,
    spec: &Path,
) -> (Child, ChildStdin, Transcript) {
    let line = format!(
        "exec '{}' run --executor slurm --array-max 1 '{}'",
        env!("CARGO_BIN_EXE_hubsweep"),
        spec.display()
    );
    let mut child = under_a_terminal(&hubsweep(ctx, server), &line, ctx.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let transcript = Transcript::collect(child.stdout.take().unwrap());
    (child, stdin, transcript)
}

/// After an interrupt: the ledger reads, records nothing twice, and `status` works on it.
fn ledger_intact(
    rt: &tokio::runtime::Runtime,
    server: &ServerHandle,
    ctx: &TestContext,
    spec: &Path,
    id: &str,
) {
    // Every segment reads, and no node is recorded twice (`results` panics on a duplicate).
    let (_, records) = rt.block_on(ledger_of(server, id));
    results(&records);
    let out = hubsweep(ctx, server)
        .args(["status", "--format", "json"])
        .arg(spec)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(json_of(&out)["complete"], false);
}

#[test]
fn detach_returns_after_submitting_and_status_follows_the_units_to_the_end() {
    if !slurm_available() {
        return;
    }
    let ctx = TestContext::new();
    let rt = runtime();
    let server = rt.block_on(rate_limited_server(&ctx));
    slow(&server);
    let guard = CancelOnDrop::new();
    let spec = four_units(&ctx, &format!("hf://datasets/{}", unique("four-detach")));
    let out = hubsweep(&ctx, &server)
        .args(["run", "--executor", "slurm", "--array-max", "2", "--detach"])
        .arg(&spec)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    let ids: Vec<&str> = printed.split_whitespace().collect();
    assert_eq!(ids.len(), 2, "stdout is `ARRAY_JOB FINAL_JOB`: {printed:?}");
    assert!(ids.iter().all(|id| id.bytes().all(|b| b.is_ascii_digit())));
    let message = stderr(&out);
    let jobs = Jobs::parse(&message).unwrap_or_else(|| panic!("{message}"));
    guard.watch(&jobs.name);
    assert_eq!((ids[0], ids[1]), (jobs.array.as_str(), jobs.last.as_str()));
    assert!(
        message.contains(&format!("hubsweep status {}", spec.display())),
        "{message}"
    );
    assert!(
        message.contains(&format!("scancel --name {}", jobs.name)),
        "{message}"
    );

    // It returned without waiting: the final job has not run yet (it waits on the array).
    let rows = squeue(&["-j", &jobs.last]);
    assert!(
        rows.iter().any(|(_, _, state)| is_active(state)),
        "the final job already ended: {rows:?}"
    );

    // `status` follows the units, Slurm states first, then done, never going back.
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut done_before = 0;
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let out = hubsweep(&ctx, &server)
            .args(["status", "--format", "json"])
            .arg(&spec)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let status = json_of(&out);
        let units = status["slurm"]["units"]
            .as_object()
            .unwrap_or_else(|| panic!("no slurm units in {status}"));
        assert_eq!(
            units.values().filter_map(|n| n.as_u64()).sum::<u64>(),
            4,
            "{status}"
        );
        let done = units.get("done").and_then(|n| n.as_u64()).unwrap_or(0);
        assert!(done >= done_before, "done went back: {status}");
        done_before = done;
        seen.extend(units.keys().cloned());
        // Slow answers only until `status` has seen the units at work.
        server.set_faults(Faults::default());
        let active = squeue(&["-n", &jobs.name])
            .iter()
            .any(|(_, _, state)| is_active(state));
        if status["complete"] == true && !active {
            break;
        }
        assert!(Instant::now() < deadline, "the sweep did not end: {status}");
        std::thread::sleep(Duration::from_secs(2));
    }
    assert!(
        seen.iter().any(|s| s != "done"),
        "status never showed a unit before it was done: {seen:?}"
    );

    // A rerun after completion submits nothing: no new attempt, no new job.
    let attempts_before = slurm_files(&rt.block_on(ledger_of(&server, &unique("four-detach"))).0);
    let jobs_before = squeue(&["-n", &jobs.name]).len();
    let out = hubsweep(&ctx, &server)
        .args(["run", "--executor", "slurm", "--detach", "--format", "json"])
        .arg(&spec)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(json_of(&out)["submitted"], false);
    assert!(
        stderr(&out).contains("nothing to submit"),
        "{}",
        stderr(&out)
    );
    let attempts_after = slurm_files(&rt.block_on(ledger_of(&server, &unique("four-detach"))).0);
    assert_eq!(attempts_before, attempts_after);
    assert_eq!(squeue(&["-n", &jobs.name]).len(), jobs_before);
    rt.block_on(server.shutdown());
}

#[test]
fn ctrl_c_on_a_terminal_answered_y_cancels_exactly_the_submitted_jobs() {
    if !slurm_available() {
        return;
    }
    let ctx = TestContext::new();
    let rt = runtime();
    let server = rt.block_on(rate_limited_server(&ctx));
    slow(&server);
    // Someone else's job, which the answer must not touch.
    let bystander_name = format!("bystander-{}", std::process::id());
    let bystander_guard = CancelOnDrop::new();
    bystander_guard.watch(&bystander_name);
    let bystander = StdCommand::new("sbatch")
        .args(["--parsable", "--output=/dev/null"])
        .arg(format!("--job-name={bystander_name}"))
        .args(["--wrap", "sleep 300"])
        .output()
        .unwrap();
    let bystander = String::from_utf8_lossy(&bystander.stdout).trim().to_owned();
    assert!(!bystander.is_empty());
    let spec = four_units(
        &ctx,
        &format!("hf://datasets/{}", unique("four-interrupted")),
    );
    let guard = CancelOnDrop::new();
    let (mut child, mut terminal, transcript) = on_a_terminal(&ctx, &server, &spec);
    let jobs = submitted_and_running(&transcript, &guard);

    terminal.write_all(b"\x03").unwrap();
    transcript.wait_for("[y/N]", Duration::from_secs(30));
    terminal.write_all(b"y\n").unwrap();
    let code = wait_exit(&mut child, Duration::from_secs(60), &transcript);
    let text = transcript.text();
    assert_eq!(code, Some(130), "{text}");
    assert!(text.contains("cancelled the sweep's jobs"), "{text}");

    // Exactly the submitted jobs ended, cancelled; the bystander runs on.
    let rows = squeue(&["-n", &jobs.name]);
    let ids: BTreeSet<&str> = rows.iter().map(|(id, _, _)| id.as_str()).collect();
    assert_eq!(
        ids,
        BTreeSet::from([jobs.array.as_str(), jobs.last.as_str()]),
        "{rows:?}"
    );
    assert!(
        rows.iter().all(|(_, _, state)| !is_active(state)),
        "{rows:?}"
    );
    assert!(
        rows.iter()
            .any(|(id, _, state)| id == &jobs.last && state == "CANCELLED"),
        "{rows:?}"
    );
    assert!(
        rows.iter()
            .any(|(id, _, state)| id == &jobs.array && state == "CANCELLED"),
        "{rows:?}"
    );
    let other = squeue(&["-j", &bystander]);
    drop(bystander_guard);
    assert!(
        other.iter().all(|(_, _, state)| is_active(state)) && !other.is_empty(),
        "the bystander was touched: {other:?}"
    );
    server.set_faults(Faults::default());
    ledger_intact(&rt, &server, &ctx, &spec, &unique("four-interrupted"));
    rt.block_on(server.shutdown());
}

#[test]
fn ctrl_c_on_a_terminal_answered_n_leaves_the_jobs_and_says_how_to_cancel() {
    if !slurm_available() {
        return;
    }
    let ctx = TestContext::new();
    let rt = runtime();
    let server = rt.block_on(rate_limited_server(&ctx));
    slow(&server);
    let spec = four_units(&ctx, &format!("hf://datasets/{}", unique("four-left")));
    let guard = CancelOnDrop::new();
    let (mut child, mut terminal, transcript) = on_a_terminal(&ctx, &server, &spec);
    let jobs = submitted_and_running(&transcript, &guard);

    terminal.write_all(b"\x03").unwrap();
    transcript.wait_for("[y/N]", Duration::from_secs(30));
    terminal.write_all(b"n\n").unwrap();
    let code = wait_exit(&mut child, Duration::from_secs(60), &transcript);
    let text = transcript.text();
    assert_eq!(code, Some(130), "{text}");
    assert!(text.contains("the jobs go on"), "{text}");
    assert!(
        text.contains(&format!("hubsweep status {}", spec.display())),
        "{text}"
    );
    let cancel = format!("scancel --name {}", jobs.name);
    assert!(text.contains(&cancel), "{text}");
    let rows = squeue(&["-n", &jobs.name]);
    assert!(
        rows.iter()
            .any(|(id, _, state)| id == &jobs.last && is_active(state)),
        "the final job is not waiting any more: {rows:?}"
    );

    // Submitting the sweep again while its jobs run is refused: they would run twice.
    let out = hubsweep(&ctx, &server)
        .args(["run", "--executor", "slurm", "--detach"])
        .arg(&spec)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("still queued or running") && stderr(&out).contains(&cancel),
        "{}",
        stderr(&out)
    );
    assert_eq!(squeue(&["-n", &jobs.name]).len(), rows.len());

    // The printed command is the one that cancels them.
    let words: Vec<&str> = cancel.split_whitespace().collect();
    let status = StdCommand::new(words[0])
        .args(&words[1..])
        .status()
        .unwrap();
    assert!(status.success());
    wait_until("the sweep's jobs to end", Duration::from_secs(30), || {
        squeue(&["-n", &jobs.name])
            .iter()
            .all(|(_, _, state)| !is_active(state))
    });
    server.set_faults(Faults::default());
    ledger_intact(&rt, &server, &ctx, &spec, &unique("four-left"));
    rt.block_on(server.shutdown());
}

/// SIGINT to a submitter whose stdin is no terminal; returns its exit code and stderr.
fn interrupt_without_terminal(
    ctx: &TestContext,
    server: &ServerHandle,
    spec: &Path,
    extra: &[&str],
    guard: &CancelOnDrop,
) -> (Option<i32>, String, Jobs) {
    let mut child = hubsweep(ctx, server)
        .args(["run", "--executor", "slurm", "--array-max", "1"])
        .args(extra)
        .arg(spec)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let transcript = Transcript::collect(child.stderr.take().unwrap());
    let jobs = submitted_and_running(&transcript, guard);
    let status = StdCommand::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let code = wait_exit(&mut child, Duration::from_secs(60), &transcript);
    // The reader thread may still be draining the pipe.
    std::thread::sleep(Duration::from_millis(200));
    (code, transcript.text(), jobs)
}

#[test]
fn ctrl_c_without_a_terminal_asks_nothing_and_cancels_only_when_told() {
    if !slurm_available() {
        return;
    }
    let ctx = TestContext::new();
    let rt = runtime();
    let server = rt.block_on(rate_limited_server(&ctx));
    slow(&server);

    // Default: no question, the jobs go on, the cancel command is printed.
    let spec = four_units(&ctx, &format!("hf://datasets/{}", unique("four-no-tty")));
    let left = CancelOnDrop::new();
    let (code, text, jobs) = interrupt_without_terminal(&ctx, &server, &spec, &[], &left);
    assert_eq!(code, Some(130), "{text}");
    assert!(!text.contains("[y/N]"), "{text}");
    assert!(text.contains("no terminal to ask on"), "{text}");
    assert!(
        text.contains(&format!("scancel --name {}", jobs.name)),
        "{text}"
    );
    let rows = squeue(&["-n", &jobs.name]);
    assert!(
        rows.iter()
            .any(|(id, _, state)| id == &jobs.last && is_active(state)),
        "{rows:?}"
    );

    // `--cancel-on-interrupt`: cancelled without a question.
    let spec = four_units(
        &ctx,
        &format!("hf://datasets/{}", unique("four-no-tty-cancel")),
    );
    let cancelled = CancelOnDrop::new();
    let (code, text, jobs) =
        interrupt_without_terminal(&ctx, &server, &spec, &["--cancel-on-interrupt"], &cancelled);
    assert_eq!(code, Some(130), "{text}");
    assert!(!text.contains("[y/N]"), "{text}");
    assert!(text.contains("cancelled the sweep's jobs"), "{text}");
    let rows = squeue(&["-n", &jobs.name]);
    assert!(
        rows.iter().all(|(_, _, state)| !is_active(state)),
        "{rows:?}"
    );
    server.set_faults(Faults::default());
    ledger_intact(&rt, &server, &ctx, &spec, &unique("four-no-tty-cancel"));
    rt.block_on(server.shutdown());
}
