//! Fault switches and counters, per server instance.
//!
//! Tests flip faults through [`super::ServerHandle::set_faults`] (in process) or the admin
//! endpoint `PUT /_admin/faults` (JSON body, the same shape), and read the counters from
//! [`super::ServerHandle::stats`] or `GET /_admin/stats`. "Once" faults disarm themselves when
//! they fire.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Faults the server injects. All off by default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Answer 500 to the next PUT of multipart part number N (once).
    pub fail_part_once: Option<u32>,
    /// Read half of the next PUT of part N, then drop the connection without answering (once).
    pub drop_connection_part_once: Option<u32>,
    /// Answer the next commit with 429 and `Retry-After: 1` without applying it (once).
    pub rate_limit_next_commit: bool,
    /// Apply the next commit but answer 500, as if the response were lost (once).
    pub commit_applied_then_500: bool,
    /// The next N LFS batch answers carry presigned URLs that have already expired (PUTs get
    /// 403, like S3).
    pub expire_next_batches: u32,
    /// Delay every response by this many milliseconds.
    pub slow_ms: u64,
    /// The next N CAS calls are refused with 401 "Xet access token has expired", as when a
    /// token runs out mid-upload (the client fetches a fresh one and repeats the call).
    pub expire_next_xet_tokens: u32,
    /// The next N xorb uploads get 503 (the client retries them).
    pub fail_next_xorbs: u32,
    /// The next upload batch answer picks `xet` even if the client did not offer it (a
    /// misbehaving server; the client must refuse the answer) (once).
    pub pick_xet_unoffered: bool,
}

/// Counters of what the server did; tests use them to bound retries and spot duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// LFS batch calls answered.
    pub batch_calls: u64,
    /// Whole-object PUTs that stored an object.
    pub object_puts: u64,
    /// Part PUTs received (including failed ones).
    pub part_puts: u64,
    /// Multipart completions that stored an object.
    pub completions: u64,
    /// Commit POSTs received.
    pub commit_posts: u64,
    /// Commits applied (refs moved).
    pub commits_applied: u64,
    /// Answers with status 429.
    pub rate_limited: u64,
    /// Faults that fired.
    pub faults_fired: u64,
    /// Faults that fired, by kind (so a test can see that each one it armed did).
    pub fired: FiredFaults,
    /// Requests to storage URLs (`/_lfs/…`) that carried an `Authorization` header: a client
    /// leaking its token to storage. Should stay 0.
    pub storage_requests_with_auth: u64,
    /// Xet xorb uploads received with a valid token (stored, refused or already there).
    pub xorb_posts: u64,
    /// Xet xorb uploads that stored a new xorb.
    pub xorbs_stored: u64,
    /// Xet xorb uploads of a xorb the CAS already had (sent twice).
    pub xorbs_already_stored: u64,
    /// Of those, xorbs the global dedup query already answered for (a shard had flagged their
    /// first chunk): a client that asked first would not have sent them.
    pub indexed_xorbs_sent_again: u64,
    /// Xet shard uploads received with a valid token.
    pub shard_posts: u64,
    /// Bytes of the xorb and shard bodies the CAS read (what Xet clients sent).
    pub cas_bytes_received: u64,
    /// Xet tokens handed out (token routes and batch answers).
    pub xet_tokens_issued: u64,
    /// CAS requests that carried the Hub token instead of a Xet token: a client leaking its
    /// token to the CAS. Should stay 0.
    pub cas_requests_with_hub_token: u64,
}

/// How many times each kind of fault fired.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FiredFaults {
    /// `fail_part_once`.
    pub fail_part: u64,
    /// `drop_connection_part_once`.
    pub drop_connection_part: u64,
    /// `rate_limit_next_commit`.
    pub rate_limit_commit: u64,
    /// `commit_applied_then_500`.
    pub commit_applied_then_500: u64,
    /// `expire_next_batches` (one per batch answer with expired URLs).
    pub expired_batch: u64,
    /// `expire_next_xet_tokens`.
    pub expired_xet_token: u64,
    /// `fail_next_xorbs`.
    pub failed_xorb: u64,
    /// `pick_xet_unoffered`.
    pub unoffered_xet: u64,
}

/// The live switches and counters of one server.
#[derive(Debug, Default)]
pub struct FaultState {
    faults: Mutex<Faults>,
    pub(super) batch_calls: AtomicU64,
    pub(super) object_puts: AtomicU64,
    pub(super) part_puts: AtomicU64,
    pub(super) completions: AtomicU64,
    pub(super) commit_posts: AtomicU64,
    pub(super) commits_applied: AtomicU64,
    pub(super) rate_limited: AtomicU64,
    faults_fired: AtomicU64,
    fired: Mutex<FiredFaults>,
    pub(super) storage_requests_with_auth: AtomicU64,
    pub(super) xorb_posts: AtomicU64,
    pub(super) xorbs_stored: AtomicU64,
    pub(super) xorbs_already_stored: AtomicU64,
    pub(super) indexed_xorbs_sent_again: AtomicU64,
    pub(super) shard_posts: AtomicU64,
    pub(super) cas_bytes_received: AtomicU64,
    pub(super) xet_tokens_issued: AtomicU64,
    pub(super) cas_requests_with_hub_token: AtomicU64,
}

impl FaultState {
    /// Starts with the given faults armed.
    pub fn new(faults: Faults) -> Self {
        Self {
            faults: Mutex::new(faults),
            ..Self::default()
        }
    }

    /// Replaces all switches.
    pub fn set(&self, faults: Faults) {
        *self.faults.lock().expect("fault lock") = faults;
    }

    /// The current switches.
    pub fn get(&self) -> Faults {
        self.faults.lock().expect("fault lock").clone()
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Stats {
            batch_calls: load(&self.batch_calls),
            object_puts: load(&self.object_puts),
            part_puts: load(&self.part_puts),
            completions: load(&self.completions),
            commit_posts: load(&self.commit_posts),
            commits_applied: load(&self.commits_applied),
            rate_limited: load(&self.rate_limited),
            faults_fired: load(&self.faults_fired),
            fired: self.fired.lock().expect("fault lock").clone(),
            storage_requests_with_auth: load(&self.storage_requests_with_auth),
            xorb_posts: load(&self.xorb_posts),
            xorbs_stored: load(&self.xorbs_stored),
            xorbs_already_stored: load(&self.xorbs_already_stored),
            indexed_xorbs_sent_again: load(&self.indexed_xorbs_sent_again),
            shard_posts: load(&self.shard_posts),
            cas_bytes_received: load(&self.cas_bytes_received),
            xet_tokens_issued: load(&self.xet_tokens_issued),
            cas_requests_with_hub_token: load(&self.cas_requests_with_hub_token),
        }
    }

    /// Takes a one-shot fault if `pick` says it is armed, counting it as fired.
    /// The kind is counted from what `pick` disarmed.
    pub fn take(&self, pick: impl FnOnce(&mut Faults) -> bool) -> bool {
        let mut faults = self.faults.lock().expect("fault lock");
        let before = faults.clone();
        let fired = pick(&mut faults);
        if fired {
            self.faults_fired.fetch_add(1, Ordering::Relaxed);
            let mut counts = self.fired.lock().expect("fault lock");
            counts.fail_part += u64::from(before.fail_part_once != faults.fail_part_once);
            counts.drop_connection_part +=
                u64::from(before.drop_connection_part_once != faults.drop_connection_part_once);
            counts.rate_limit_commit +=
                u64::from(before.rate_limit_next_commit != faults.rate_limit_next_commit);
            counts.commit_applied_then_500 +=
                u64::from(before.commit_applied_then_500 != faults.commit_applied_then_500);
            counts.expired_batch +=
                u64::from(before.expire_next_batches != faults.expire_next_batches);
            counts.expired_xet_token +=
                u64::from(before.expire_next_xet_tokens != faults.expire_next_xet_tokens);
            counts.failed_xorb += u64::from(before.fail_next_xorbs != faults.fail_next_xorbs);
            counts.unoffered_xet +=
                u64::from(before.pick_xet_unoffered != faults.pick_xet_unoffered);
        }
        fired
    }

    /// The response delay currently configured.
    pub fn slow_ms(&self) -> u64 {
        self.faults.lock().expect("fault lock").slow_ms
    }

    /// Counts one event.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Fires a "next N" fault: true (and one fewer left) while `count` is above zero.
pub fn take_counted(count: &mut u32) -> bool {
    let armed = *count > 0;
    *count = count.saturating_sub(1);
    armed
}

/// Fires `fail_part_once` for part `n`.
pub fn take_fail_part(faults: &mut Faults, n: u32) -> bool {
    if faults.fail_part_once == Some(n) {
        faults.fail_part_once = None;
        return true;
    }
    false
}

/// Fires `drop_connection_part_once` for part `n`.
pub fn take_drop_part(faults: &mut Faults, n: u32) -> bool {
    if faults.drop_connection_part_once == Some(n) {
        faults.drop_connection_part_once = None;
        return true;
    }
    false
}
