//! The `hf-hub` 1.x crate as a peer of hubsweep's embedded hub (docs/hub.md, "hf-hub 1.x
//! against the embedded hub"). Run by scripts/bench/hf-hub-peer.sh; a benchmark, not a test.
//!
//! Usage: `hf-hub-peer REPO_ID [SMALL_TEXT_BYTES,MEDIUM_BYTES,LARGE_BYTES]` with `HF_ENDPOINT`
//! and `HF_TOKEN` set (and `HF_HOME` pointing at a scratch folder: the download cache and
//! hf-xet's shard cache go there). Through hf-hub's own API only, it
//!
//! 1. creates the model repo `REPO_ID`;
//! 2. uploads a small text file, a 25 MB and a 120 MB deterministic pseudo-random file, one
//!    commit each, from memory (`AddSource::Bytes`): hf-hub sends files the Hub's preupload
//!    marks `lfs` through Xet when the LFS batch answer picks `xet`, and inlines them as base64
//!    otherwise, so the listing check below also proves the Xet path was taken;
//! 3. uploads the large file again under another name, and once more with 1% of its bytes
//!    changed, and reports the bytes hf-xet sent over the wire each time (chunk dedup);
//! 4. lists the repo and checks every file's size and its git blob oid (regular files) or its
//!    LFS size and, on its `resolve/` answer, `X-Linked-Etag` = sha256 (hf-hub 1.0 does not
//!    parse the listing's `lfs.oid`, see `check_listing`);
//! 5. reads each large file's `resolve/` answer without following the redirect, as hf-hub's
//!    `download_file` does, to see whether it names an `X-Xet-Hash` (hf-hub then downloads
//!    through the CAS), and reports what hf-hub's `get_file_metadata` makes of an LFS file;
//! 6. downloads every file back twice, through `download_file` (to the cache; Xet
//!    reconstruction when the hash is named) and `download_file_to_bytes` (a byte stream),
//!    and checks sha256 equality; then `snapshot_download` of the small and medium files.
//!
//! Prints one JSON line with sizes, seconds and MiB/s per step; exits 1 on any mismatch.

use std::error::Error;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt as _;
use hf_hub::progress::{ProgressEvent, ProgressHandler, UploadEvent};
use hf_hub::repository::{AddSource, RepoTreeEntry};
use hf_hub::{HFClient, HFRepository, RepoTypeModel};
use serde_json::{Value, json};
use sha1::Digest as _;

type Failure = Box<dyn Error + Send + Sync>;

/// One file the peer uploads.
struct Upload {
    path: String,
    content: bytes::Bytes,
    sha256: String,
}

impl Upload {
    fn new(path: &str, content: bytes::Bytes) -> Self {
        let sha256 = hex::encode(sha2::Sha256::digest(&content));
        Self {
            path: path.to_owned(),
            content,
            sha256,
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift64, as tests/it/hub/mod.rs makes them).
fn pseudo_random(len: usize, seed: u64) -> bytes::Bytes {
    let mut state = seed.wrapping_mul(2).wrapping_add(1);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    bytes::Bytes::from(out)
}

/// Git's blob id of a regular file: sha1 of `blob <len>\0<content>`.
fn git_blob_oid(content: &[u8]) -> String {
    let mut hasher = sha1::Sha1::new();
    hasher.update(format!("blob {}\0", content.len()).as_bytes());
    hasher.update(content);
    hex::encode(hasher.finalize())
}

fn mib_per_s(bytes: u64, seconds: f64) -> f64 {
    let rate = bytes as f64 / (1u64 << 20) as f64 / seconds.max(1e-9);
    (rate * 10.0).round() / 10.0
}

/// Seconds since `start`, to the millisecond (rates are computed from the unrounded time).
fn seconds(start: Instant) -> (f64, f64) {
    let exact = start.elapsed().as_secs_f64();
    ((exact * 1000.0).round() / 1000.0, exact)
}

/// Keeps the last Xet transfer counters an upload reported (the final report comes from the
/// finished upload commit, so it is exact).
#[derive(Default)]
struct TransferCounter(Mutex<Option<(u64, u64)>>);

impl ProgressHandler for TransferCounter {
    fn on_progress(&self, event: &ProgressEvent) {
        if let ProgressEvent::Upload(UploadEvent::Progress {
            bytes_completed,
            transfer_bytes_completed,
            ..
        }) = event
            && let Ok(mut last) = self.0.lock()
        {
            *last = Some((*bytes_completed, *transfer_bytes_completed));
        }
    }
}

/// Uploads one file in its own commit; returns its JSON row (seconds, MiB/s, bytes on the
/// wire as hf-xet counted them: `None` when no Xet upload happened).
async fn upload(repo: &HFRepository<RepoTypeModel>, file: &Upload) -> Result<Value, Failure> {
    let counter = Arc::new(TransferCounter::default());
    let start = Instant::now();
    let commit = repo
        .upload_file()
        .source(AddSource::bytes(file.content.clone()))
        .path_in_repo(file.path.clone())
        .commit_message(format!("hf-hub peer: {}", file.path))
        .progress(counter.clone())
        .send()
        .await
        .map_err(|e| format!("upload of `{}` failed: {e}", file.path))?;
    let (elapsed, exact) = seconds(start);
    let transfer = counter
        .0
        .lock()
        .map_err(|_| "poisoned")?
        .map(|(_, sent)| sent);
    let size = file.content.len() as u64;
    Ok(json!({
        "path": file.path,
        "bytes": size,
        "sha256": file.sha256,
        "commit": commit.commit_oid,
        "upload_s": elapsed,
        "upload_mib_s": mib_per_s(size, exact),
        "xet_transfer_bytes": transfer,
    }))
}

/// Checks the listing against what was uploaded: size, and the git oid of regular files or
/// the LFS sha256 of the others (which must be LFS when `lfs` is expected).
async fn check_listing(
    repo: &HFRepository<RepoTypeModel>,
    (endpoint, repo_id): (&str, &str),
    files: &[(&Upload, bool)],
) -> Result<Value, Failure> {
    let stream = repo.list_tree().recursive(true).send()?;
    futures::pin_mut!(stream);
    let mut listed = std::collections::BTreeMap::new();
    while let Some(entry) = stream.next().await {
        if let RepoTreeEntry::File {
            path,
            oid,
            size,
            lfs,
            xet_hash,
            ..
        } = entry?
        {
            listed.insert(path, (oid, size, lfs, xet_hash));
        }
    }
    let mut problems = Vec::new();
    let mut xet_hashes_listed = 0;
    let mut lfs_sha256_parsed = 0;
    for (file, expect_lfs) in files {
        let Some((oid, size, lfs, xet_hash)) = listed.get(&file.path) else {
            problems.push(format!("`{}` is not listed", file.path));
            continue;
        };
        xet_hashes_listed += usize::from(xet_hash.is_some());
        if *size != file.content.len() as u64 {
            problems.push(format!("`{}` is listed with size {size}", file.path));
        }
        match (lfs, expect_lfs) {
            (Some(lfs), true) => {
                // hf-hub 1.0's `BlobLfsInfo` reads `lfs.sha256` and `lfs.pointer_size`; the Hub
                // (and this server) send `lfs.oid` and `lfs.pointerSize`, so those two are
                // always `None`; the sha256 is checked on the `resolve/` answer instead.
                lfs_sha256_parsed += usize::from(lfs.sha256.is_some());
                if lfs.size != Some(file.content.len() as u64) {
                    problems.push(format!("`{}` has LFS size {:?}", file.path, lfs.size));
                }
                let head = resolve_head(endpoint, repo_id, &file.path).await?;
                if head.linked_etag.as_deref() != Some(file.sha256.as_str())
                    || head.linked_size != Some(file.content.len() as u64)
                {
                    problems.push(format!(
                        "`{}` resolves with X-Linked-Etag {:?}, X-Linked-Size {:?}",
                        file.path, head.linked_etag, head.linked_size
                    ));
                }
            }
            (None, false) => {
                let expected = git_blob_oid(&file.content);
                if *oid != expected {
                    problems.push(format!("`{}` has oid {oid}, not {expected}", file.path));
                }
            }
            (Some(_), false) => problems.push(format!("`{}` is LFS, expected regular", file.path)),
            (None, true) => problems.push(format!(
                "`{}` is not LFS: hf-hub inlined it (the batch answer did not pick xet)",
                file.path
            )),
        }
    }
    if !problems.is_empty() {
        return Err(format!("listing check failed: {}", problems.join("; ")).into());
    }
    Ok(json!({
        "files_checked": files.len(),
        "xet_hashes_listed": xet_hashes_listed,
        "lfs_sha256_parsed_by_hf_hub": lfs_sha256_parsed,
    }))
}

/// What a `resolve/` answer says about an LFS file, read without following the redirect, as
/// hf-hub's `download_file` reads it (`X-Xet-Hash` makes it download through the CAS).
struct ResolveHead {
    linked_etag: Option<String>,
    linked_size: Option<u64>,
    xet_hash: Option<String>,
}

async fn resolve_head(endpoint: &str, repo_id: &str, path: &str) -> Result<ResolveHead, Failure> {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let answer = client
        .head(format!("{endpoint}/{repo_id}/resolve/main/{path}"))
        .send()
        .await?;
    let header = |name: &str| {
        answer
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim_matches('"').to_owned())
    };
    Ok(ResolveHead {
        linked_etag: header("x-linked-etag"),
        linked_size: header("x-linked-size").and_then(|v| v.parse().ok()),
        xet_hash: header("x-xet-hash"),
    })
}

/// hf-hub's own metadata call on an LFS file: it follows the redirect to the storage origin
/// and then wants `X-Repo-Commit` there, which only the Hub's answer carries. Reported, not
/// checked: the Python client follows only relative redirects for this reason.
async fn get_file_metadata_outcome(repo: &HFRepository<RepoTypeModel>, path: &str) -> Value {
    match repo
        .get_file_metadata()
        .filepath(path.to_owned())
        .send()
        .await
    {
        Ok(metadata) => json!({ "ok": true, "etag": metadata.etag, "xet_hash": metadata.xet_hash }),
        Err(error) => json!({ "ok": false, "error": error.to_string() }),
    }
}

/// Downloads a file both ways and checks its sha256; returns its JSON row.
async fn download(repo: &HFRepository<RepoTypeModel>, file: &Upload) -> Result<Value, Failure> {
    let size = file.content.len() as u64;
    let start = Instant::now();
    let cached = repo
        .download_file()
        .filename(file.path.clone())
        .force_download(true)
        .send()
        .await
        .map_err(|e| format!("download_file of `{}` failed: {e}", file.path))?;
    let (to_cache_s, to_cache_exact) = seconds(start);
    let on_disk = tokio::fs::read(&cached).await?;
    let cache_sha = hex::encode(sha2::Sha256::digest(&on_disk));
    drop(on_disk);
    let start = Instant::now();
    let streamed = repo
        .download_file_to_bytes()
        .filename(file.path.clone())
        .send()
        .await
        .map_err(|e| format!("download_file_to_bytes of `{}` failed: {e}", file.path))?;
    let (to_bytes_s, to_bytes_exact) = seconds(start);
    let bytes_sha = hex::encode(sha2::Sha256::digest(&streamed));
    for (how, sha) in [
        ("download_file", &cache_sha),
        ("download_file_to_bytes", &bytes_sha),
    ] {
        if *sha != file.sha256 {
            return Err(format!(
                "{how} of `{}` has sha256 {sha}, not {}",
                file.path, file.sha256
            )
            .into());
        }
    }
    Ok(json!({
        "path": file.path,
        "bytes": size,
        "sha256_equal": true,
        "download_file_s": to_cache_s,
        "download_file_mib_s": mib_per_s(size, to_cache_exact),
        "download_file_to_bytes_s": to_bytes_s,
        "download_file_to_bytes_mib_s": mib_per_s(size, to_bytes_exact),
    }))
}

/// `snapshot_download` of the small and the medium file into a folder (repo info, listing,
/// one `HEAD` per file, then the downloads, Xet where named), each checked by sha256.
async fn snapshot(repo: &HFRepository<RepoTypeModel>, files: &[&Upload]) -> Result<Value, Failure> {
    let start = Instant::now();
    let folder = repo
        .snapshot_download()
        .allow_patterns(files.iter().map(|f| f.path.clone()).collect())
        .force_download(true)
        .send()
        .await
        .map_err(|e| format!("snapshot_download failed: {e}"))?;
    let (elapsed, _) = seconds(start);
    for file in files {
        let content = tokio::fs::read(folder.join(&file.path)).await?;
        let sha = hex::encode(sha2::Sha256::digest(&content));
        if sha != file.sha256 {
            return Err(format!("snapshot_download of `{}` has sha256 {sha}", file.path).into());
        }
    }
    Ok(json!({ "files": files.len(), "sha256_equal": true, "seconds": elapsed }))
}

fn sizes(argument: Option<String>) -> Result<[usize; 3], Failure> {
    let Some(text) = argument else {
        return Ok([64, 25_000_000, 120_000_000]);
    };
    let parsed: Vec<usize> = text
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("sizes `{text}`: {e}"))?;
    parsed
        .try_into()
        .map_err(|_| format!("sizes `{text}`: give three, comma-separated").into())
}

fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

async fn run() -> Result<Value, Failure> {
    let mut args = std::env::args().skip(1);
    let repo_id = args
        .next()
        .ok_or("usage: hf-hub-peer REPO_ID [SMALL,MEDIUM,LARGE bytes]")?;
    let [small, medium, large] = sizes(args.next())?;
    let endpoint = std::env::var("HF_ENDPOINT").map_err(|_| "HF_ENDPOINT must be set")?;
    let token = std::env::var("HF_TOKEN").map_err(|_| "HF_TOKEN must be set")?;
    let (namespace, name) = repo_id
        .split_once('/')
        .ok_or("REPO_ID is `namespace/name`")?;

    let client = HFClient::builder()
        .endpoint(endpoint.clone())
        .token(token)
        .build()?;
    let start = Instant::now();
    client
        .create_repository()
        .repo_id(&repo_id)
        .repo_type(RepoTypeModel)
        .exist_ok(true)
        .send()
        .await
        .map_err(|e| format!("create_repository failed: {e}"))?;
    let (create_s, _) = seconds(start);
    let repo = client.model(namespace, name);

    let text: String = "hf-hub 1.x peer of the embedded hub\n".repeat(small / 36 + 1);
    let small_file = Upload::new(
        "README-peer.txt",
        bytes::Bytes::from(text[..small].to_owned()),
    );
    let medium_file = Upload::new("big25.bin", pseudo_random(medium, 25));
    let large_file = Upload::new("big120.bin", pseudo_random(large, 120));
    let copy = Upload::new("big120-copy.bin", large_file.content.clone());
    let mut changed = large_file.content.to_vec();
    let window = large / 100;
    for byte in &mut changed[large / 2..large / 2 + window] {
        *byte = !*byte;
    }
    let changed = Upload::new("big120-changed.bin", bytes::Bytes::from(changed));

    let mut uploads = Vec::new();
    for file in [&small_file, &medium_file, &large_file] {
        uploads.push(upload(&repo, file).await?);
    }
    let mut dedup = Vec::new();
    for file in [&copy, &changed] {
        dedup.push(upload(&repo, file).await?);
    }
    let all = [
        (&small_file, false),
        (&medium_file, true),
        (&large_file, true),
        (&copy, true),
        (&changed, true),
    ];
    let listing = check_listing(&repo, (&endpoint, &repo_id), &all).await?;
    let mut xet_hashes = serde_json::Map::new();
    for file in [&medium_file, &large_file] {
        let head = resolve_head(&endpoint, &repo_id, &file.path).await?;
        xet_hashes.insert(file.path.clone(), json!(head.xet_hash));
    }
    let metadata = get_file_metadata_outcome(&repo, &medium_file.path).await;
    let mut downloads = Vec::new();
    for file in [&small_file, &medium_file, &large_file, &changed] {
        downloads.push(download(&repo, file).await?);
    }
    let snapshot = snapshot(&repo, &[&small_file, &medium_file]).await?;
    Ok(json!({
        "client": "hf-hub 1.0.0 (hf-xet 1.8.0)",
        "endpoint": endpoint,
        "repo": repo_id,
        "create_repository_s": create_s,
        "uploads": uploads,
        "dedup_uploads": dedup,
        "listing": listing,
        "resolve_xet_hash": xet_hashes,
        "get_file_metadata_lfs": metadata,
        "downloads": downloads,
        "snapshot_download": snapshot,
        "peak_rss_bytes": peak_rss_bytes(),
    }))
}

#[tokio::main]
async fn main() {
    // hf-hub's and hf-xet's own logs, to stderr, when `HF_HUB_PEER_LOG` names a filter.
    if let Ok(filter) = std::env::var("HF_HUB_PEER_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    match run().await {
        Ok(summary) => println!("{summary}"),
        Err(error) => {
            eprintln!("hf-hub peer: {error}");
            std::process::exit(1);
        }
    }
}
