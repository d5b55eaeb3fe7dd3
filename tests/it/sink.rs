//! The committer against the embedded hub, through the library API: at most `max_files` files a
//! commit (its ledger segment included), no record in a commit before its inputs, and a
//! rate-limit answer the client does not sit out (too long, or past its attempts) waited out
//! instead of failing the run.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hubsweep::hub::server::Faults;
use hubsweep::hub::{HubClient, RetryPolicy};
use hubsweep::ledger::{LedgerState, Record};
use hubsweep::sink::{CommitPolicy, Committable, Committer, SinkEvent, SinkEvents};
use tokio::sync::mpsc;

use crate::common::TestContext;
use crate::hub::{model, start_server};

/// Record `i` of a chain: each one's input is the one before.
fn chained_record(i: usize) -> Record {
    let id = |i: usize| format!("{i:064x}");
    Record {
        id: id(i + 1),
        kind: "capture".into(),
        version: 1,
        params: serde_json::json!({ "n": i }),
        inputs: if i == 0 { Vec::new() } else { vec![id(i)] },
        pins: serde_json::json!({}),
        files: Vec::new(),
        metrics: None,
        timing: None,
        device: None,
        error: None,
    }
}

/// The 429 reaches the committer as the Hub's hour-long one would: a wait longer than the
/// client sits out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_hold_at_most_max_files_and_a_long_rate_limit_is_waited_out() {
    commit_through_a_429(RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        max_server_wait: Duration::ZERO,
    })
    .await;
}

/// The 429 reaches the committer after the client's last attempt (here its only one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_that_outlasts_the_clients_attempts_is_waited_out() {
    commit_through_a_429(RetryPolicy {
        max_attempts: 1,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        max_server_wait: Duration::from_secs(5),
    })
    .await;
}

/// 25 chained records, one file each, through a committer of at most 10 files a commit, while
/// the server answers the first commit with 429 and `Retry-After: 1`; `retry` is the client's.
async fn commit_through_a_429(retry: RetryPolicy) {
    let ctx = TestContext::new();
    let server = start_server(ctx.path(), |_| {}).await;
    let client = HubClient::builder(server.base_url())
        .unwrap()
        .xet(false)
        .retry(retry)
        .build()
        .unwrap();
    let repo = model("alice/batched");
    client.create_repo(&repo, false, true).await.unwrap();
    let state = LedgerState::read(&client, &repo, "main").await.unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink_events: SinkEvents = {
        let events = events.clone();
        Arc::new(move |e: &SinkEvent| events.lock().unwrap().push(e.clone()))
    };
    let policy = CommitPolicy {
        max_files: 10,
        flush_after: Duration::from_millis(50),
        ..CommitPolicy::default()
    };
    let committer = Committer::new(
        client.clone(),
        repo.clone(),
        "main".into(),
        &state,
        policy,
        sink_events,
    );
    server.set_faults(Faults {
        rate_limit_next_commit: true,
        ..Faults::default()
    });
    let (sender, receiver) = mpsc::channel(64);
    let running = tokio::spawn(committer.run(receiver));
    // Sent last to first: every record waits for its input, then all go in input order.
    const RECORDS: usize = 25;
    for i in (0..RECORDS).rev() {
        let regular = vec![(format!("files/{i:02}.txt"), Bytes::from(format!("{i}\n")))];
        sender
            .send(Committable {
                record: chained_record(i),
                regular,
            })
            .await
            .unwrap();
    }
    drop(sender);
    let (_, totals) = running.await.unwrap().unwrap();
    assert_eq!(totals.records, RECORDS as u64);
    assert!(totals.stranded.is_empty(), "{:?}", totals.stranded);
    let throttled = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, SinkEvent::Throttled { wait } if *wait == Duration::from_secs(1)))
        .count();
    assert_eq!(throttled, 1, "the 429's Retry-After was not waited out");
    assert!(server.stats().commit_posts > server.stats().commits_applied);

    // Commit by commit (oldest first): the files each added, and its records' inputs.
    let mut commits = client.list_commits(&repo, "main").await.unwrap();
    commits.reverse();
    let mut before: HashSet<String> = HashSet::new();
    let mut recorded: HashSet<String> = HashSet::new();
    let mut batches = 0;
    for commit in &commits {
        let now: HashSet<String> = client
            .list_tree(&repo, &commit.id, "", true)
            .await
            .unwrap()
            .into_iter()
            .filter(|p| p.kind == "file")
            .map(|p| p.path)
            .collect();
        let added: Vec<&String> = now.difference(&before).collect();
        assert!(
            added.len() <= 10,
            "{} files in commit {}",
            added.len(),
            commit.title
        );
        for segment in added.iter().filter(|p| p.starts_with("ledger/segments/")) {
            batches += 1;
            let bytes = client
                .download_bytes(&repo, &commit.id, segment)
                .await
                .unwrap();
            let records = hubsweep::ledger::parse_records(segment, &bytes).unwrap();
            for record in &records {
                recorded.insert(record.id.clone());
            }
            for record in &records {
                assert!(
                    record.inputs.iter().all(|i| recorded.contains(i)),
                    "{} is ahead of its input",
                    record.id
                );
            }
        }
        before = now;
    }
    assert_eq!(recorded.len(), RECORDS);
    // 25 files and their segments, 9 files and a segment a commit.
    assert_eq!(batches, 3, "{commits:?}");
    server.shutdown().await;
}
