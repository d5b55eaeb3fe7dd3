//! `ModelFiles::download` and `HubDatasetFile::fetch` against a minimal Hub-like HTTP peer
//! (only the `resolve` route, answering `HEAD` and ranged `GET`s), including the fallback from
//! `model.safetensors` to a sharded index, the bearer token, and cache reuse afterwards.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hubsweep::data::HubDatasetFile;
use hubsweep::model::{HubSource, Model, ModelFiles};

use super::fixture;
use crate::common::TestContext;

const COMMIT: &str = "1111111111111111111111111111111111111111";

#[derive(Clone, Default)]
struct Peer {
    /// "repo/path" → bytes.
    files: Arc<HashMap<String, Vec<u8>>>,
    /// Every "repo/path" requested, in order.
    log: Arc<Mutex<Vec<String>>>,
    /// Every "repo/path" requested with a `Range` header, and the header.
    ranges: Arc<Mutex<Vec<(String, String)>>>,
}

async fn resolve(
    State(peer): State<Peer>,
    UrlPath(path): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    if headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some("Bearer secret")
    {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    // {datasets/}ns/name/resolve/rev/file…
    let Some((repo, rest)) = path.split_once("/resolve/") else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let file = rest.split_once('/').map(|(_, f)| f).unwrap_or_default();
    let key = format!("{repo}/{file}");
    peer.log.lock().unwrap().push(key.clone());
    if let Some(range) = headers.get(header::RANGE).and_then(|r| r.to_str().ok()) {
        peer.ranges
            .lock()
            .unwrap()
            .push((key.clone(), range.to_owned()));
    }
    let Some(bytes) = peer.files.get(&key) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let total = bytes.len();
    let (start, end) = headers
        .get(header::RANGE)
        .and_then(|r| r.to_str().ok())
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .and_then(|(a, b)| {
            let end = if b.is_empty() {
                total - 1
            } else {
                b.parse::<usize>().ok()?
            };
            Some((a.parse::<usize>().ok()?, end))
        })
        .unwrap_or((0, total - 1));
    let end = end.min(total - 1);
    (
        StatusCode::PARTIAL_CONTENT,
        [
            ("x-repo-commit", COMMIT.to_string()),
            // Like the Hub's LFS oid: the blob name in the cache, so it must be unique per content.
            (
                "etag",
                format!(
                    "\"{}\"",
                    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes))
                ),
            ),
            ("content-range", format!("bytes {start}-{end}/{total}")),
        ],
        bytes[start..=end].to_vec(),
    )
        .into_response()
}

fn add_dir(files: &mut HashMap<String, Vec<u8>>, repo: &str, dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().to_string();
        if name != "reference.safetensors" {
            files.insert(
                format!("{repo}/{name}"),
                std::fs::read(entry.path()).unwrap(),
            );
        }
    }
}

/// Serves `files` like a Hub's `resolve` route on loopback, on a runtime of its own; the
/// source reaches it with the token it wants and a cache in `ctx`.
fn serve(
    ctx: &TestContext,
    files: HashMap<String, Vec<u8>>,
) -> (tokio::runtime::Runtime, Peer, HubSource) {
    let peer = Peer {
        files: Arc::new(files),
        log: Arc::default(),
        ranges: Arc::default(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let addr = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/{*path}", axum::routing::get(resolve))
            .with_state(peer.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    });
    let source = HubSource {
        endpoint: format!("http://{addr}"),
        token: Some(hubsweep::hub::Token::new("secret")),
        cache_dir: ctx.child("hub-cache"),
        offline: false,
        xet: false,
    };
    (runtime, peer, source)
}

#[test]
fn sharded_model_and_dataset_download_into_the_hf_cache() {
    let ctx = TestContext::new();
    let mut files = HashMap::new();
    add_dir(&mut files, "tiny/llama3", &fixture("llama_tiny_llama3"));
    files.insert(
        "datasets/ns/prompts/data/p.jsonl".into(),
        b"{\"text\": \"The quick brown fox.\"}\n".to_vec(),
    );
    let (runtime, peer, source) = serve(&ctx, files);

    // Resolving (what pinning does) fetches config, tokenizer and the index, no shard.
    let resolved = runtime
        .block_on(ModelFiles::resolve(&source, "tiny/llama3", "main"))
        .unwrap();
    assert_eq!(resolved.commit.as_deref(), Some(COMMIT));
    assert_eq!(resolved.weights.len(), 4, "shards from the index");
    let requested = peer.log.lock().unwrap().clone();
    assert!(requested.contains(&"tiny/llama3/model.safetensors.index.json".to_string()));
    assert!(
        !requested.iter().any(|r| r.contains("model-0000")),
        "{requested:?}"
    );
    assert!(resolved.weights.iter().all(|w| !w.exists()));
    let downloaded = runtime
        .block_on(ModelFiles::download(&source, "tiny/llama3", "main"))
        .unwrap();
    assert_eq!(downloaded, resolved);
    assert!(downloaded.weights.iter().all(|w| w.is_file()));
    let requested = peer.log.lock().unwrap().clone();
    assert!(
        requested.contains(&"tiny/llama3/model-00004-of-00004.safetensors".to_string()),
        "{requested:?}"
    );
    // The index answered: no request for a single file that does not exist.
    assert!(
        !requested.contains(&"tiny/llama3/model.safetensors".to_string()),
        "{requested:?}"
    );
    // The download filled the standard cache layout: it now resolves offline.
    let cached = ModelFiles::from_cache(&source.cache_dir, "tiny/llama3", "main").unwrap();
    assert_eq!(cached.commit.as_deref(), Some(COMMIT));
    let model = Model::load(&cached, &candle_core::Device::Cpu, candle_core::DType::F32).unwrap();
    let refs = super::reference("llama_tiny_llama3");
    let request = model.request(&["blocks.2.hook_resid_post"]).unwrap();
    let acts = model.forward(&refs["input_ids"], &request).unwrap();
    let got = acts.get("blocks.2.hook_resid_post").unwrap();
    assert!(super::excess(got, &refs["blocks.2.hook_resid_post"], 1e-4, 1e-4) <= 0.0);

    let dataset = HubDatasetFile {
        repo: "ns/prompts".into(),
        revision: "main".into(),
        path: "data/p.jsonl".into(),
        field: None,
    };
    let fetched = runtime.block_on(dataset.fetch(&source)).unwrap();
    assert_eq!(fetched.commit.as_deref(), Some(COMMIT));

    let anonymous = HubSource {
        token: None,
        cache_dir: ctx.child("other-cache"),
        ..source
    };
    let err = runtime
        .block_on(ModelFiles::download(&anonymous, "tiny/llama3", "main"))
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("`tiny/llama3`") && text.contains("config.json"),
        "{text}"
    );
    assert!(!text.contains("secret"));
}

/// A checkpoint takes minutes to download. A weights download waits for as long as the blob's
/// lock is held (another worker on the same cache, this run's own download ahead, or the
/// Python client: the lock is where `huggingface_hub` takes it), then finds the file or
/// fetches it itself.
#[test]
fn a_weights_download_waits_for_another_holding_the_lock() {
    let ctx = TestContext::new();
    let mut files = HashMap::new();
    add_dir(&mut files, "tiny/llama3", &fixture("llama_tiny_llama3"));
    let shard = files["tiny/llama3/model-00001-of-00004.safetensors"].clone();
    let (runtime, _peer, source) = serve(&ctx, files);
    let resolved = runtime
        .block_on(ModelFiles::resolve(&source, "tiny/llama3", "main"))
        .unwrap();
    // The lock Python takes for the first shard's blob (named by its etag, the sha256).
    let locks = source.cache_dir.join(".locks").join("models--tiny--llama3");
    std::fs::create_dir_all(&locks).unwrap();
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&shard));
    let lock = std::fs::File::create(locks.join(format!("{sha}.lock"))).unwrap();
    lock.lock().unwrap();
    let held = std::time::Duration::from_secs(2);
    let holder = std::thread::spawn(move || {
        std::thread::sleep(held);
        drop(lock);
    });
    let started = std::time::Instant::now();
    let fetched = runtime
        .block_on(resolved.fetch_weights(&source, "tiny/llama3"))
        .unwrap();
    let waited = started.elapsed();
    holder.join().unwrap();
    assert!(
        waited >= held,
        "returned after {waited:?}, with the lock still held"
    );
    assert_eq!(fetched.len(), 4);
    assert!(resolved.weights.iter().all(|w| w.is_file()));
    let first = resolved.dir.join("model-00001-of-00004.safetensors");
    assert_eq!(std::fs::read(first).unwrap(), shard);
}

/// A download cut short leaves `blobs/{etag}.incomplete` (as the Python client names it); the
/// next download asks only for the rest (`Range: bytes=N-`). A partial file whose bytes are
/// wrong does not poison the cache: the whole no longer matches the sha256, and the file is
/// fetched again from its first byte.
#[test]
fn a_download_cut_short_resumes_and_a_damaged_partial_is_fetched_again() {
    let ctx = TestContext::new();
    let mut files = HashMap::new();
    add_dir(&mut files, "tiny/llama3", &fixture("llama_tiny_llama3"));
    let first = "tiny/llama3/model-00001-of-00004.safetensors";
    let second = "tiny/llama3/model-00002-of-00004.safetensors";
    let shards = [files[first].clone(), files[second].clone()];
    let (runtime, peer, source) = serve(&ctx, files);
    let resolved = runtime
        .block_on(ModelFiles::resolve(&source, "tiny/llama3", "main"))
        .unwrap();
    let blobs = source.cache_dir.join("models--tiny--llama3").join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let sha = |bytes: &[u8]| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes));
    // The first shard's first half, as a cut-short download left it; the second shard's first
    // half with its bytes damaged.
    let half = shards[0].len() / 2;
    std::fs::write(
        blobs.join(format!("{}.incomplete", sha(&shards[0]))),
        &shards[0][..half],
    )
    .unwrap();
    let mut damaged = shards[1][..shards[1].len() / 2].to_vec();
    damaged[10] ^= 0xff;
    std::fs::write(
        blobs.join(format!("{}.incomplete", sha(&shards[1]))),
        &damaged,
    )
    .unwrap();
    runtime
        .block_on(resolved.fetch_weights(&source, "tiny/llama3"))
        .unwrap();
    for (i, shard) in shards.iter().enumerate() {
        let entry = resolved
            .dir
            .join(format!("model-0000{}-of-00004.safetensors", i + 1));
        assert_eq!(&std::fs::read(entry).unwrap(), shard, "shard {}", i + 1);
    }
    assert!(std::fs::read_dir(&blobs).unwrap().all(|e| {
        !e.unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".incomplete")
    }));
    let ranges = peer.ranges.lock().unwrap().clone();
    assert!(
        ranges.contains(&(first.to_owned(), format!("bytes={half}-"))),
        "{ranges:?}"
    );
    // The damaged one was resumed, found wrong, and fetched whole: its last request had no range.
    let log = peer.log.lock().unwrap().clone();
    let last_ranged = ranges.iter().filter(|(k, _)| k == second).count();
    let requests = log.iter().filter(|k| *k == second).count();
    assert_eq!(last_ranged, 1, "{ranges:?}");
    assert!(requests >= last_ranged + 2, "{log:?}");
}
