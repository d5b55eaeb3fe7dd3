//! Prompt data: sources, windows, shards, hashes; HF-cache and Hub-cache lookups.

use hubsweep::data::{
    DataError, HubDatasetFile, PromptSource, TextTokenizer, TokenWindows, WindowSettings,
};
use hubsweep::model::{HubSource, ModelFiles};

use super::fixture;
use crate::common::TestContext;

fn tiny_tokenizer() -> TextTokenizer {
    TextTokenizer::from_file(&fixture("tokenizer").join("tokenizer.json")).unwrap()
}

fn settings(seq_len: usize) -> WindowSettings {
    WindowSettings {
        seq_len,
        prepend_bos: None,
        separator: None,
        max_tokens: None,
    }
}

#[test]
fn ids_are_windowed_in_order_with_bos_and_separator() {
    let source = PromptSource::TokenIds(vec![vec![10, 11, 12], vec![20, 21, 22, 23, 24], vec![30]]);
    let s = WindowSettings {
        seq_len: 4,
        prepend_bos: Some(1),
        separator: Some(0),
        max_tokens: None,
    };
    let w = TokenWindows::build(&source, None, &s).unwrap();
    // Stream: 10 11 12 0 20 21 22 23 24 0 30 → bodies of 3; the partial tail [0 30] is dropped.
    assert_eq!(w.tokens(), [1, 10, 11, 12, 1, 0, 20, 21, 1, 22, 23, 24]);
    let capped = TokenWindows::build(
        &source,
        None,
        &WindowSettings {
            max_tokens: Some(9),
            ..s
        },
    )
    .unwrap();
    assert_eq!(capped.n_windows(), 2);
    assert_eq!(capped.window(1).unwrap(), [1, 0, 20, 21]);
}

#[test]
fn texts_tokenize_deterministically_and_hash_the_stream() {
    let tok = tiny_tokenizer();
    let texts = PromptSource::Texts(vec![
        "The quick brown fox jumps over the lazy dog.".into();
        3
    ]);
    let a = TokenWindows::build(&texts, Some(&tok), &settings(8)).unwrap();
    let b = TokenWindows::build(&texts, Some(&tok), &settings(8)).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.content_hash(), b.content_hash());
    assert_eq!(a.content_hash().len(), 64);
    let c = TokenWindows::build(&texts, Some(&tok), &settings(6)).unwrap();
    assert_ne!(
        a.content_hash(),
        c.content_hash(),
        "seq_len is part of the hash"
    );
    let expected = tok
        .encode("The quick brown fox jumps over the lazy dog.")
        .unwrap();
    assert_eq!(&a.tokens()[..8], &expected[..8]);
}

#[test]
fn shards_cover_the_stream_in_order() {
    let rows: Vec<Vec<u32>> = (0..5).map(|i| vec![i; 4]).collect();
    let w = TokenWindows::from_rows(&rows).unwrap();
    let shards = w.shard(9); // two whole windows of 4 per shard
    assert_eq!(
        shards.iter().map(|s| s.n_windows()).collect::<Vec<_>>(),
        [2, 2, 1]
    );
    assert_eq!(shards[2].first_window, 4);
    assert_eq!(shards[1].rows(), [vec![2; 4], vec![3; 4]]);
    let joined: Vec<u32> = shards.iter().flat_map(|s| s.tokens.clone()).collect();
    assert_eq!(joined, w.tokens());
    assert_ne!(shards[0].content_hash(), shards[1].content_hash());
    assert!(TokenWindows::from_rows(&[vec![1, 2], vec![3]]).is_err());
}

#[test]
fn local_files_txt_and_jsonl() {
    let ctx = TestContext::new();
    let tok = tiny_tokenizer();
    let txt = ctx.child("p.txt");
    std::fs::write(&txt, "The quick brown fox.\n\nThe lazy dog.\n").unwrap();
    let jsonl = ctx.child("p.jsonl");
    std::fs::write(
        &jsonl,
        "{\"body\": \"The quick brown fox.\"}\n{\"body\": \"The lazy dog.\"}\n",
    )
    .unwrap();
    let s = settings(4);
    let a = TokenWindows::build(
        &PromptSource::File {
            path: txt,
            field: None,
        },
        Some(&tok),
        &s,
    )
    .unwrap();
    let b = TokenWindows::build(
        &PromptSource::File {
            path: jsonl.clone(),
            field: Some("body".into()),
        },
        Some(&tok),
        &s,
    )
    .unwrap();
    assert_eq!(a, b);
    let err = TokenWindows::build(
        &PromptSource::File {
            path: jsonl,
            field: None,
        },
        Some(&tok),
        &s,
    )
    .unwrap_err();
    assert!(matches!(err, DataError::Jsonl { line: 1, .. }), "{err}");
    assert!(err.to_string().contains("`text`"), "{err}");
    let err = TokenWindows::build(
        &PromptSource::Texts(vec!["ab".into()]),
        Some(&tok),
        &settings(64),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("fewer tokens than one window"),
        "{err}"
    );
}

/// Lays out `files` as `huggingface_hub` caches them: refs/{rev} → sha, snapshots/{sha}/….
fn fake_cache(cache: &std::path::Path, folder: &str, files: &[(&str, &std::path::Path)]) -> String {
    let sha = "0123456789abcdef0123456789abcdef01234567".to_string();
    let repo = cache.join(folder);
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), &sha).unwrap();
    for (name, src) in files {
        let dst = repo.join("snapshots").join(&sha).join(name);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(src, dst).unwrap();
    }
    sha
}

#[test]
fn models_and_datasets_resolve_from_the_hf_cache_without_network() {
    let ctx = TestContext::new();
    let cache = ctx.child("hub");
    let dir = fixture("llama_tiny");
    let sha = fake_cache(
        &cache,
        "models--tiny--llama",
        &[
            ("config.json", &dir.join("config.json")),
            ("model.safetensors", &dir.join("model.safetensors")),
            ("tokenizer.json", &dir.join("tokenizer.json")),
        ],
    );
    let files = ModelFiles::from_cache(&cache, "tiny/llama", "main").unwrap();
    assert_eq!(files.commit.as_deref(), Some(sha.as_str()));
    assert!(ModelFiles::from_cache(&cache, "tiny/llama", &sha).is_ok());
    let err = ModelFiles::from_cache(&cache, "tiny/llama", "step1000").unwrap_err();
    assert!(err.to_string().contains("`step1000`"), "{err}");

    // Cached files are served without contacting the (unreachable) endpoint.
    let hub = HubSource {
        endpoint: "http://127.0.0.1:9".into(),
        token: None,
        cache_dir: cache.clone(),
        offline: false,
        xet: false,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let downloaded = runtime
        .block_on(ModelFiles::download(&hub, "tiny/llama", "main"))
        .unwrap();
    assert_eq!(downloaded.weights, files.weights);

    let prompts = ctx.child("prompts.jsonl");
    std::fs::write(&prompts, "{\"text\": \"The quick brown fox.\"}\n").unwrap();
    fake_cache(
        &cache,
        "datasets--ns--pile",
        &[("data/train.jsonl", &prompts)],
    );
    let file = HubDatasetFile {
        repo: "ns/pile".into(),
        revision: "main".into(),
        path: "data/train.jsonl".into(),
        field: None,
    };
    let fetched = runtime.block_on(file.fetch(&hub)).unwrap();
    assert_eq!(fetched.commit.as_deref(), Some(sha.as_str()));
    let w = TokenWindows::build(&fetched.source, Some(&tiny_tokenizer()), &settings(4)).unwrap();
    assert!(w.n_windows() >= 1);
}
