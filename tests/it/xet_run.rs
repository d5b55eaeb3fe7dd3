//! Runs whose artifacts go through Xet (the default wherever the hub speaks it): the ledger
//! and every file are those of the same run through LFS, Xet faults change nothing in the
//! result, and a run killed during its Xet uploads resumes sending again at most what was in
//! flight.

use std::collections::BTreeMap;
use std::process::Stdio;

use hubsweep::hub::HubClient;
use hubsweep::hub::server::{Faults, Server, ServerConfig, ServerHandle};
use hubsweep::ledger::LedgerState;

use crate::common::TestContext;
use crate::run::{
    check_ledger, dataset, hubsweep, is_milestone, long_spec, long_spec_of, run_json, runtime,
    segment_records, stderr, stderr_lines,
};

async fn server(ctx: &TestContext, name: &str, xet: bool, faults: Faults) -> ServerHandle {
    let mut config = ServerConfig::new(ctx.child(name));
    config.addr = "127.0.0.1:0".parse().unwrap();
    config.xet = xet;
    config.faults = faults;
    Server::start(config).await.unwrap()
}

/// Every file of the repo's head: path → (LFS sha256 or git blob id, size).
async fn files(server: &ServerHandle, repo: &str) -> BTreeMap<String, (String, u64)> {
    let client = HubClient::builder(server.base_url())
        .unwrap()
        .build()
        .unwrap();
    client
        .list_tree(&dataset(repo), "main", "", true)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "file")
        .map(|e| {
            let oid = e.lfs.map_or(e.oid, |l| l.oid);
            (e.path, (oid, e.size))
        })
        .collect()
}

/// The records of `repo`'s ledger, checked (every node once, files where records say).
async fn checked_records(server: &ServerHandle, repo: &str) -> Vec<hubsweep::ledger::Record> {
    let client = HubClient::builder(server.base_url())
        .unwrap()
        .build()
        .unwrap();
    let repo = dataset(repo);
    let state = LedgerState::read(&client, &repo, "main").await.unwrap();
    let records = segment_records(&client, &repo, &state).await;
    check_ledger(&state, &records);
    records
}

/// The checked ledger's records of `repo`, each as its JSON line without its timing, sorted.
async fn records(server: &ServerHandle, repo: &str) -> Vec<String> {
    // Without `timing`: when a node ran and how long it took are the run's own.
    let mut lines: Vec<String> = checked_records(server, repo)
        .await
        .iter()
        .map(|r| {
            let mut value = serde_json::to_value(r).unwrap();
            value.as_object_mut().unwrap().remove("timing");
            value.to_string()
        })
        .collect();
    lines.sort();
    lines
}

#[test]
fn a_run_through_xet_records_what_the_same_run_through_lfs_records() {
    let ctx = TestContext::new();
    let spec = long_spec(&ctx, "hf://datasets/alice/same", 512, "4MiB", "64KiB");
    let rt = runtime();
    let xet = rt.block_on(server(&ctx, "xet-store", true, Faults::default()));
    let lfs = rt.block_on(server(&ctx, "lfs-store", false, Faults::default()));
    for hub in [&xet, &lfs] {
        let (output, _) = run_json(&ctx, &spec, &[("HF_ENDPOINT", hub.base_url())]);
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    }
    let (through_xet, through_lfs) = (xet.stats(), lfs.stats());
    assert!(
        through_xet.shard_posts > 0 && through_xet.xorbs_stored > 0,
        "{through_xet:?}"
    );
    assert_eq!(
        through_xet.object_puts + through_xet.part_puts,
        0,
        "{through_xet:?}"
    );
    assert_eq!(
        through_lfs.xorb_posts + through_lfs.shard_posts,
        0,
        "{through_lfs:?}"
    );
    assert!(
        through_lfs.object_puts + through_lfs.completions > 0,
        "{through_lfs:?}"
    );
    let (a, b) = rt.block_on(async {
        (
            files(&xet, "alice/same").await,
            files(&lfs, "alice/same").await,
        )
    });
    // Every file but the ledger's segment and index, whose records come in the order uploads
    // finished (concurrent, so not the same twice, whatever the transfer): the records
    // themselves are compared as a set.
    let outside_ledger =
        |files: &BTreeMap<String, (String, u64)>| -> BTreeMap<String, (String, u64)> {
            files
                .iter()
                .filter(|(path, _)| {
                    !path.starts_with("ledger/segments/") && *path != "ledger/index.jsonl"
                })
                .map(|(p, f)| (p.clone(), f.clone()))
                .collect()
        };
    assert!(a.len() > 20, "{a:?}");
    assert_eq!(
        outside_ledger(&a),
        outside_ledger(&b),
        "the two runs' files differ"
    );
    rt.block_on(async {
        let (xet_records, lfs_records) = (
            records(&xet, "alice/same").await,
            records(&lfs, "alice/same").await,
        );
        assert!(xet_records.len() > 20);
        let only = |a: &[String], b: &[String]| -> Vec<String> {
            a.iter().filter(|l| !b.contains(l)).cloned().collect()
        };
        assert_eq!(
            xet_records,
            lfs_records,
            "the two runs' ledgers differ: only through Xet {:?}, only through LFS {:?}",
            only(&xet_records, &lfs_records),
            only(&lfs_records, &xet_records)
        );
        xet.shutdown().await;
        lfs.shutdown().await;
    });
}

#[test]
fn xet_faults_during_a_run_change_nothing_in_the_result() {
    let ctx = TestContext::new();
    let spec = long_spec(&ctx, "hf://datasets/alice/xet-faults", 512, "4MiB", "64KiB");
    let rt = runtime();
    let faults = Faults {
        expire_next_xet_tokens: 2,
        fail_next_xorbs: 2,
        commit_applied_then_500: true,
        ..Faults::default()
    };
    let hub = rt.block_on(server(&ctx, "store", true, faults));
    let (output, report) = run_json(&ctx, &spec, &[("HF_ENDPOINT", hub.base_url())]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let stats = hub.stats();
    let fired = &stats.fired;
    assert_eq!(
        (
            fired.expired_xet_token,
            fired.failed_xorb,
            fired.commit_applied_then_500
        ),
        (2, 2, 1),
        "{stats:?}"
    );
    assert_eq!(stats.cas_requests_with_hub_token, 0);
    rt.block_on(async {
        let nodes = checked_records(&hub, "alice/xet-faults").await.len();
        assert_eq!(nodes, report["nodes"].as_u64().unwrap() as usize);
    });
    let (output, again) = run_json(&ctx, &spec, &[("HF_ENDPOINT", hub.base_url())]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(again["executed"], 0);
    rt.block_on(hub.shutdown());
}

/// `hubsweep run` killed with SIGKILL right after a milestone of its log (events, not sleeps)
/// while it uploads through Xet, then rerun: the rerun completes, a third run executes nothing,
/// the ledger holds every node once, and no more than the uploads in flight at the kill is sent
/// a second time.
#[test]
fn killed_during_xet_uploads_then_rerun_sends_no_registered_xorb_again() {
    let ctx = TestContext::new();
    let rt = runtime();
    let hub = rt.block_on(server(&ctx, "store", true, Faults::default()));
    let endpoint = hub.base_url().to_owned();
    let mut seed = 0x2545f4914f6cdd1du64;
    let mut killed_mid_run = 0;
    let trials = 6u64;
    for trial in 0..trials {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let repo = format!("alice/xet-crash-{trial}");
        let spec = long_spec_of(
            &ctx,
            &format!("hf://datasets/{repo}"),
            2048,
            "2MiB",
            "16KiB",
            trial + 1,
        );
        let mut child = hubsweep(&ctx)
            .env("HF_ENDPOINT", &endpoint)
            .arg("run")
            .arg(&spec)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // After milestone 1 to 6: a capture starting or a commit, uploads in flight around it.
        let at = 1 + (seed % 6) as usize;
        let (lines, reader) = stderr_lines(&mut child);
        let reached = lines.iter().filter(|l| is_milestone(l)).take(at).count() == at;
        if reached && child.try_wait().unwrap().is_none() {
            killed_mid_run += 1;
        }
        let _ = child.kill();
        let _ = child.wait();
        drop(lines);
        reader.join().unwrap();
        // Xorbs the killed run had sent whole may still be validating: the rerun starts once
        // the CAS is done with them.
        rt.block_on(hub.xet_idle());
        let (output, report) = run_json(&ctx, &spec, &[("HF_ENDPOINT", &endpoint)]);
        assert_eq!(
            output.status.code(),
            Some(0),
            "trial {trial}: {}",
            stderr(&output)
        );
        let (_, again) = run_json(&ctx, &spec, &[("HF_ENDPOINT", &endpoint)]);
        assert_eq!(again["executed"], 0, "trial {trial}: {again}");
        let recorded = rt.block_on(checked_records(&hub, &repo)).len();
        assert_eq!(
            recorded,
            report["nodes"].as_u64().unwrap() as usize,
            "trial {trial}"
        );
    }
    // A file whose upload finished before the kill is not sent again (the rerun's batch finds
    // it), nor is a xorb stored before its file's shard: the client registers each xorb with
    // a shard of its own once it is stored, and the rerun's dedup query names it. Only a xorb
    // the CAS stored as the kill landed, before the client heard back, can go again: at most
    // the uploads in flight (4 files of one 16 KiB xorb each).
    let stats = hub.stats();
    assert!(stats.xorbs_stored > 0, "{stats:?}");
    assert_eq!(stats.indexed_xorbs_sent_again, 0, "{stats:?}");
    assert!(
        stats.xorbs_already_stored <= 4 * killed_mid_run,
        "more xorbs sent again than were in flight: {stats:?}"
    );
    assert!(
        killed_mid_run >= trials / 2,
        "only {killed_mid_run} of {trials} kills landed mid-run"
    );
    rt.block_on(hub.shutdown());
}
