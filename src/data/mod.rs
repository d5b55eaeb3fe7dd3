//! Prompt data: sources (inline texts or ids, a local `.txt`/`.jsonl`, a dataset file on a Hub
//! pinned to a revision), tokenization into fixed-length windows, and token shards with
//! content hashes for node pins.
//!
//! Order is deterministic: documents in source order, tokens concatenated (with an optional
//! separator id between documents), cut into windows of `seq_len` (each starting with a BOS
//! id when `prepend_bos` is set); a trailing partial window is dropped; `max_tokens` caps the
//! total. The same source, tokenizer and settings give the same bytes and the same hash.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::model::HubSource;

/// Errors from reading, fetching or tokenizing prompt data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file could not be read.
    #[error("cannot read `{path}`")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O cause.
        #[source]
        source: std::io::Error,
    },
    /// A `.jsonl` line is not a JSON object with a string `field`.
    #[error("`{path}` line {line}: {reason}")]
    Jsonl {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The file extension is not one hubsweep reads.
    #[error("`{path}`: unsupported prompt file type (expected `.txt` or `.jsonl`)")]
    FileType {
        /// The file.
        path: PathBuf,
    },
    /// The tokenizer could not be loaded or failed on a text.
    #[error("tokenizer `{path}`: {reason}")]
    Tokenizer {
        /// The tokenizer.json.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// Downloading a dataset file from a Hub failed (the error names the file, repo, revision
    /// and endpoint).
    #[error(transparent)]
    Download(Box<crate::hub::download::DownloadError>),
    /// The settings cannot produce any window.
    #[error("invalid data settings: {reason}")]
    Settings {
        /// What is wrong.
        reason: String,
    },
}

/// Where prompts come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromptSource {
    /// Inline texts, one document each.
    Texts(Vec<String>),
    /// Inline token ids, one document each (no tokenizer needed).
    TokenIds(Vec<Vec<u32>>),
    /// A local `.txt` (one document per non-empty line) or `.jsonl` (`field` of each object,
    /// default `text`).
    File {
        /// The file.
        path: PathBuf,
        /// The JSON field for `.jsonl`.
        field: Option<String>,
    },
}

/// A dataset file on a Hub, pinned to a revision, fetched into the HF cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubDatasetFile {
    /// Dataset repo id, `ns/name`.
    pub repo: String,
    /// Branch, tag or commit sha.
    pub revision: String,
    /// Path of the file in the repo.
    pub path: String,
    /// The JSON field for `.jsonl`.
    pub field: Option<String>,
}

/// A fetched dataset file: a local [`PromptSource::File`] plus the commit it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedDataset {
    /// The file as a local source.
    pub source: PromptSource,
    /// The commit sha the revision resolved to, when the cache layout shows it.
    pub commit: Option<String>,
}

impl HubDatasetFile {
    /// Downloads the file (or reuses it from `hub.cache_dir`).
    pub async fn fetch(&self, hub: &HubSource) -> Result<FetchedDataset, DataError> {
        use crate::hub::download::{Downloader, parse_repo};
        let download_err = |e| DataError::Download(Box::new(e));
        let downloader = Downloader::new(hub.clone()).map_err(download_err)?;
        let repo = parse_repo(crate::hub::RepoType::Dataset, &self.repo).map_err(download_err)?;
        let local = downloader
            .get(&repo, &self.revision, &self.path)
            .await
            .map_err(download_err)?;
        // …/snapshots/{sha}/{path}: the snapshot folder names the commit.
        let depth = Path::new(&self.path).components().count();
        let commit = local
            .ancestors()
            .nth(depth)
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
            .filter(|n| n.len() == 40 && n.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(str::to_string);
        Ok(FetchedDataset {
            source: PromptSource::File {
                path: local,
                field: self.field.clone(),
            },
            commit,
        })
    }
}

/// A `tokenizer.json` loaded with the pure-Rust `tokenizers` crate.
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    sha256: String,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("path", &self.path)
            .field("sha256", &self.sha256)
            .finish()
    }
}

impl TextTokenizer {
    /// Loads `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self, DataError> {
        let bytes = fs_err::read(path).map_err(|source| DataError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let inner =
            tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| DataError::Tokenizer {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            inner,
            path: path.to_path_buf(),
            sha256: hex::encode(Sha256::digest(&bytes)),
        })
    }

    /// Token ids of `text`, without special tokens (BOS is the window builder's decision).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, DataError> {
        self.inner
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| DataError::Tokenizer {
                path: self.path.clone(),
                reason: e.to_string(),
            })
    }

    /// The id of a token string (e.g. `<|endoftext|>`), if in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// sha256 of the tokenizer.json bytes (a pin for node ids).
    pub fn sha256(&self) -> &str {
        &self.sha256
    }
}

/// How documents become windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSettings {
    /// Tokens per window (including the BOS when `prepend_bos` is set).
    pub seq_len: usize,
    /// BOS id to start every window with (TransformerLens `prepend_bos`); `None` for none.
    pub prepend_bos: Option<u32>,
    /// Id inserted between consecutive documents (e.g. `<|endoftext|>`); `None` for none.
    pub separator: Option<u32>,
    /// Upper bound on the total tokens of all windows; `None` for no bound.
    pub max_tokens: Option<usize>,
}

/// Fixed-length token windows, in order, with a content hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenWindows {
    seq_len: usize,
    tokens: Vec<u32>,
}

impl TokenWindows {
    /// Reads `source`, tokenizes (when it is text) and cuts windows.
    pub fn build(
        source: &PromptSource,
        tokenizer: Option<&TextTokenizer>,
        settings: &WindowSettings,
    ) -> Result<Self, DataError> {
        let need_tokenizer = || DataError::Settings {
            reason: "text prompts need a tokenizer".into(),
        };
        let documents: Box<dyn Iterator<Item = Result<Vec<u32>, DataError>>> = match source {
            PromptSource::TokenIds(rows) => Box::new(rows.iter().cloned().map(Ok)),
            PromptSource::Texts(texts) => {
                let tok = tokenizer.ok_or_else(need_tokenizer)?;
                Box::new(texts.iter().map(move |t| tok.encode(t)))
            }
            PromptSource::File { path, field } => {
                let tok = tokenizer.ok_or_else(need_tokenizer)?;
                let texts = read_documents(path, field.as_deref())?;
                Box::new(texts.into_iter().map(move |t| tok.encode(&t)))
            }
        };
        Self::from_documents(documents, settings)
    }

    /// Cuts windows from tokenized documents.
    pub fn from_documents(
        documents: impl Iterator<Item = Result<Vec<u32>, DataError>>,
        settings: &WindowSettings,
    ) -> Result<Self, DataError> {
        let seq_len = settings.seq_len;
        let body = seq_len.saturating_sub(usize::from(settings.prepend_bos.is_some()));
        if body == 0 {
            return Err(DataError::Settings {
                reason: format!("seq_len `{seq_len}` leaves no room for tokens"),
            });
        }
        let max_windows = settings
            .max_tokens
            .map(|m| m / seq_len)
            .unwrap_or(usize::MAX);
        let mut tokens = Vec::new();
        let mut pending: Vec<u32> = Vec::new();
        let mut windows = 0;
        for (index, document) in documents.enumerate() {
            if windows >= max_windows {
                break;
            }
            if index > 0
                && let Some(sep) = settings.separator
            {
                pending.push(sep);
            }
            pending.extend(document?);
            let mut start = 0;
            while pending.len() - start >= body && windows < max_windows {
                tokens.extend(settings.prepend_bos);
                tokens.extend_from_slice(&pending[start..start + body]);
                start += body;
                windows += 1;
            }
            pending.drain(..start);
        }
        if tokens.is_empty() {
            return Err(DataError::Settings {
                reason: format!("the prompts hold fewer tokens than one window of `{seq_len}`"),
            });
        }
        Ok(Self { seq_len, tokens })
    }

    /// Windows given row by row (each must be `seq_len` long), e.g. from `capture --ids`.
    pub fn from_rows(rows: &[Vec<u32>]) -> Result<Self, DataError> {
        let seq_len = rows.first().map(Vec::len).unwrap_or(0);
        if seq_len == 0 || rows.iter().any(|r| r.len() != seq_len) {
            return Err(DataError::Settings {
                reason: "rows must be non-empty and of equal length".into(),
            });
        }
        Ok(Self {
            seq_len,
            tokens: rows.concat(),
        })
    }

    /// Tokens per window.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Number of windows.
    pub fn n_windows(&self) -> usize {
        self.tokens.len() / self.seq_len
    }

    /// All tokens, window after window.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Window `i`.
    pub fn window(&self, i: usize) -> Option<&[u32]> {
        self.tokens.get(i * self.seq_len..(i + 1) * self.seq_len)
    }

    /// sha256 (hex) of the token stream: `hubsweep-tokens-v1`, seq_len (u64 LE), ids (u32 LE).
    pub fn content_hash(&self) -> String {
        token_hash(self.seq_len, &self.tokens)
    }

    /// Cuts the windows into shards of at most `tokens_per_shard` tokens (whole windows, at
    /// least one window per shard), in order.
    pub fn shard(&self, tokens_per_shard: usize) -> Vec<TokenShard> {
        let per = (tokens_per_shard / self.seq_len).max(1) * self.seq_len;
        self.tokens
            .chunks(per)
            .enumerate()
            .map(|(index, chunk)| TokenShard {
                index,
                first_window: index * per / self.seq_len,
                seq_len: self.seq_len,
                tokens: chunk.to_vec(),
            })
            .collect()
    }
}

/// One shard of windows: the unit a capture node runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenShard {
    /// Shard index, 0-based.
    pub index: usize,
    /// Index of its first window in the whole stream.
    pub first_window: usize,
    /// Tokens per window.
    pub seq_len: usize,
    /// `n_windows · seq_len` ids.
    pub tokens: Vec<u32>,
}

impl TokenShard {
    /// Number of windows.
    pub fn n_windows(&self) -> usize {
        self.tokens.len() / self.seq_len
    }

    /// The ids as rows, ready for a `[batch, pos]` tensor.
    pub fn rows(&self) -> Vec<Vec<u32>> {
        self.tokens
            .chunks(self.seq_len)
            .map(<[u32]>::to_vec)
            .collect()
    }

    /// Content hash of this shard's tokens (same scheme as [`TokenWindows::content_hash`]).
    pub fn content_hash(&self) -> String {
        token_hash(self.seq_len, &self.tokens)
    }
}

fn token_hash(seq_len: usize, tokens: &[u32]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"hubsweep-tokens-v1");
    hasher.update((seq_len as u64).to_le_bytes());
    for t in tokens {
        hasher.update(t.to_le_bytes());
    }
    hex::encode(hasher.finalize())
}

/// The documents of a `.txt` or `.jsonl` file, in file order.
pub fn read_documents(path: &Path, field: Option<&str>) -> Result<Vec<String>, DataError> {
    let text = fs_err::read_to_string(path).map_err(|source| DataError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    match path.extension().and_then(|e| e.to_str()) {
        Some("txt") => Ok(text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect()),
        Some("jsonl") => {
            let field = field.unwrap_or("text");
            let mut docs = Vec::new();
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let bad = |reason: String| DataError::Jsonl {
                    path: path.to_path_buf(),
                    line: i + 1,
                    reason,
                };
                let value: serde_json::Value =
                    serde_json::from_str(line).map_err(|e| bad(format!("invalid JSON ({e})")))?;
                let text = value
                    .get(field)
                    .and_then(|v| v.as_str())
                    .ok_or_else(|| bad(format!("no string field `{field}`")))?;
                docs.push(text.to_string());
            }
            Ok(docs)
        }
        _ => Err(DataError::FileType {
            path: path.to_path_buf(),
        }),
    }
}
