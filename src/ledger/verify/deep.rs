//! The deep checks: every recorded file streamed into memory (never to disk) and hashed as it
//! arrives, its safetensors header parsed from the same pass, and spectra recomputed.
//!
//! Throughput: hashing is the one step that must touch every byte on one core, so it runs on
//! its own blocking thread per file, fed through a bounded channel while the async side keeps
//! receiving; the download of the next file starts while the current one is still hashing
//! (one file ahead of the `concurrency` files being hashed, each at most [`CHUNKS_AHEAD`] chunks
//! ahead of its hasher). Before this the whole file was received, then hashed: the two costs
//! added up instead of overlapping.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt as _;
use sha2::{Digest, Sha256};
use tokio::sync::{Semaphore, mpsc};

use super::report::{CheckKind, Failure, VerifyReport};
use super::{VerifyOptions, header, node_label, short, spectra};
use crate::hub::{HubClient, HubError, Repo};
use crate::ledger::{FileRecord, Manifest, Record};

/// Chunks a download may run ahead of its hasher. The HTTP stack hands over at most one read
/// buffer (~400 KiB) per chunk, so this bounds the read-ahead at ~25 MiB per file in flight.
const CHUNKS_AHEAD: usize = 64;

/// Files downloaded ahead of the ones being hashed.
const FILES_AHEAD: usize = 1;

/// Largest buffer reserved up front for a file whose bytes are kept (its recorded size is
/// input: a bigger file grows the buffer as it arrives instead).
const MAX_RESERVE: u64 = 1 << 30;

/// Outcome of checking one group of files.
#[derive(Default)]
pub(super) struct DeepOutcome {
    pub(super) checked: Vec<(CheckKind, u64)>,
    pub(super) failures: Vec<Failure>,
    bytes: u64,
}

impl DeepOutcome {
    pub(super) fn fail(&mut self, check: CheckKind, record: &Record, file: &str, message: String) {
        self.failures.push(Failure {
            check,
            node: Some(node_label(record)),
            file: Some(file.to_owned()),
            message,
        });
    }
}

/// What every file check shares.
#[derive(Clone)]
pub(super) struct Fetcher {
    client: HubClient,
    repo: Repo,
    head: String,
    /// One permit per file being hashed (`concurrency`).
    hash_slots: Arc<Semaphore>,
}

/// A unit of deep work: a spectrum with its input artifacts, or a lone file.
enum Group {
    Spectrum(Record, Vec<Record>),
    /// An `update_geometry` node and its `base_svd` input.
    Update(Record, Option<Record>),
    Lone(Record),
}

/// Runs the deep checks over the successful records and adds their outcome to `report`.
pub(super) async fn check(
    client: &HubClient,
    repo: &Repo,
    head: &str,
    records: &HashMap<String, Record>,
    manifest: Option<&Manifest>,
    options: &VerifyOptions,
    report: &mut VerifyReport,
) {
    // Capture pushes activations into the Gram matrix one batch at a time; pushing the same
    // chunks in the same order reproduces the same sums.
    let batch_windows = manifest
        .and_then(|m| crate::spec::load(&m.spec.file_name, m.spec.text.as_bytes()).spec)
        .map(|s| (s.compute.batch_size as usize).max(1) * s.data.seq_len as usize);
    let mut grouped = HashSet::new();
    let mut groups = Vec::new();
    let mut ids: Vec<&String> = records.keys().collect();
    ids.sort();
    for id in &ids {
        let record = &records[*id];
        if record.kind != "spectrum" || record.files.is_empty() {
            continue;
        }
        let inputs: Vec<Record> = record
            .inputs
            .iter()
            .filter_map(|i| records.get(i).cloned())
            .collect();
        grouped.extend(inputs.iter().map(|r| r.id.clone()));
        grouped.insert(record.id.clone());
        groups.push(Group::Spectrum(record.clone(), inputs));
    }
    for id in &ids {
        let record = &records[*id];
        if record.kind != "update_geometry" || record.files.is_empty() {
            continue;
        }
        let base = record.inputs.first().and_then(|i| records.get(i)).cloned();
        grouped.insert(record.id.clone());
        groups.push(Group::Update(record.clone(), base));
    }
    for id in ids {
        let record = &records[id];
        if !record.files.is_empty() && !grouped.contains(id) {
            groups.push(Group::Lone(record.clone()));
        }
    }
    let concurrency = options.concurrency.max(1);
    let fetcher = Fetcher {
        client: client.clone(),
        repo: repo.clone(),
        head: head.to_owned(),
        hash_slots: Arc::new(Semaphore::new(concurrency)),
    };
    let manifest = manifest.cloned().map(Arc::new);
    let outcomes: Vec<DeepOutcome> = futures::stream::iter(groups)
        .map(|group| {
            let (fetcher, manifest) = (fetcher.clone(), manifest.clone());
            async move {
                let mut out = DeepOutcome::default();
                match group {
                    Group::Lone(record) => {
                        for file in &record.files {
                            let _ = fetcher.fetch_checked(&record, file, false, &mut out).await;
                        }
                    }
                    Group::Update(update, base) => {
                        super::updates::check_update(&fetcher, &update, base.as_ref(), &mut out)
                            .await;
                    }
                    Group::Spectrum(spectrum, inputs) => {
                        spectra::check_spectrum(
                            &fetcher,
                            &spectrum,
                            &inputs,
                            manifest.as_deref(),
                            batch_windows,
                            &mut out,
                        )
                        .await;
                    }
                }
                out
            }
        })
        // Groups in flight beyond the hash slots download ahead and wait for a slot.
        .buffer_unordered(concurrency + FILES_AHEAD)
        .collect()
        .await;
    for outcome in outcomes {
        for (check, n) in outcome.checked {
            report.count(check, n);
        }
        report.failures.extend(outcome.failures);
        report.bytes_hashed += outcome.bytes;
    }
}

/// What the hashing thread saw of one file.
struct Hashed {
    digest: String,
    len: u64,
    /// The header bytes (`8 + header length`, capped), or the whole file when kept.
    bytes: Vec<u8>,
    /// More bytes arrived than the record allows: reading stopped there.
    overlong: bool,
}

/// Hashes chunks as they arrive; collects the header prefix (or every byte, with `keep`).
/// Stops reading once the file is longer than `limit`, so a hostile server cannot make a kept
/// buffer grow without bound.
fn hash_chunks(mut chunks: mpsc::Receiver<Bytes>, keep: bool, limit: u64) -> Hashed {
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    let mut bytes: Vec<u8> = if keep {
        Vec::with_capacity(limit.min(MAX_RESERVE) as usize)
    } else {
        Vec::new()
    };
    // The header prefix wanted so far: 8 bytes for its length, then `needed` (capped there).
    let mut wanted = 8u64;
    while let Some(chunk) = chunks.blocking_recv() {
        hasher.update(&chunk);
        len += chunk.len() as u64;
        if len > limit {
            return Hashed {
                digest: hex::encode(hasher.finalize()),
                len,
                bytes,
                overlong: true,
            };
        }
        if keep {
            bytes.extend_from_slice(&chunk);
            continue;
        }
        let mut rest: &[u8] = &chunk;
        while (bytes.len() as u64) < wanted && !rest.is_empty() {
            let take = ((wanted - bytes.len() as u64) as usize).min(rest.len());
            bytes.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if bytes.len() == 8 {
                // An over-long length leaves 8 bytes, for which the parser reports it.
                wanted = header::needed(&bytes).unwrap_or(8);
            }
        }
    }
    Hashed {
        digest: hex::encode(hasher.finalize()),
        len,
        bytes,
        overlong: false,
    }
}

impl Fetcher {
    /// Downloads a recorded file, hashing it as it arrives, and checks its header against the
    /// record; the header, and with `keep` the bytes, when all holds.
    pub(super) async fn fetch_checked(
        &self,
        record: &Record,
        file: &FileRecord,
        keep: bool,
        out: &mut DeepOutcome,
    ) -> Option<(Bytes, header::Header)> {
        out.checked.push((CheckKind::Hashes, 1));
        // Only a kept file needs the length cap; any other is hashed to its end, so the
        // failure reports the full length and digest.
        let limit = if keep { file.size } else { u64::MAX };
        let hashed = match self.stream_hashed(&file.path, keep, limit).await {
            Ok(hashed) => hashed,
            Err(e) => {
                out.fail(
                    CheckKind::Hashes,
                    record,
                    &file.path,
                    format!("cannot download: {}", crate::hub::client::error_chain(&e)),
                );
                return None;
            }
        };
        out.bytes += hashed.len;
        if hashed.overlong {
            out.fail(
                CheckKind::Hashes,
                record,
                &file.path,
                format!(
                    "the content is longer than the recorded {} bytes",
                    file.size
                ),
            );
            return None;
        }
        if hashed.digest != file.sha256 || hashed.len != file.size {
            out.fail(
                CheckKind::Hashes,
                record,
                &file.path,
                format!(
                    "the content ({} bytes) hashes to `{}`, the record says `{}` ({} bytes)",
                    hashed.len, hashed.digest, file.sha256, file.size
                ),
            );
            return None;
        }
        out.checked.push((CheckKind::Headers, 1));
        let parsed = match header::parse(&hashed.bytes, hashed.len) {
            Ok(h) => h,
            Err(e) => {
                out.fail(CheckKind::Headers, record, &file.path, e.to_string());
                return None;
            }
        };
        if let Err(message) = header_matches(record, &parsed) {
            out.fail(CheckKind::Headers, record, &file.path, message);
            return None;
        }
        Some((Bytes::from(hashed.bytes), parsed))
    }

    /// One pass over the file: received on this task, hashed on a blocking thread once a hash
    /// slot is free.
    async fn stream_hashed(&self, path: &str, keep: bool, limit: u64) -> Result<Hashed, HubError> {
        let mut stream = self
            .client
            .download_stream(&self.repo, &self.head, path)
            .await?;
        let (sender, receiver) = mpsc::channel::<Bytes>(CHUNKS_AHEAD);
        let slots = self.hash_slots.clone();
        let hashing = async move {
            let _slot = slots.acquire_owned().await;
            tokio::task::spawn_blocking(move || hash_chunks(receiver, keep, limit)).await
        };
        let receiving = async move {
            while let Some(chunk) = stream.chunk().await? {
                if sender.send(chunk).await.is_err() {
                    // The hasher stopped (the file is too long); its verdict stands.
                    break;
                }
            }
            Ok::<(), HubError>(())
        };
        let (received, hashed) = tokio::join!(receiving, hashing);
        received?;
        Ok(hashed.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())))
    }
}

/// Tensor names, dtypes and shapes a record's parameters call for.
fn header_matches(record: &Record, header: &header::Header) -> Result<(), String> {
    let tensor = |name: &str| {
        header
            .tensor(name)
            .ok_or_else(|| format!("no tensor `{name}`"))
    };
    match record.kind.as_str() {
        "artifact" => {
            if let Some(id) = header.metadata.get("node_id")
                && *id != record.id
            {
                return Err(format!("the file says it is node `{}`", short(id)));
            }
            let ids = tensor("token_ids")?;
            let acts = tensor("activations")?;
            if ids.dtype != "I32" || ids.shape.len() != 1 {
                return Err(format!(
                    "`token_ids` is {} {:?}, expected I32 [tokens]",
                    ids.dtype, ids.shape
                ));
            }
            let dtype = record.params["dtype"]
                .as_str()
                .unwrap_or("f32")
                .to_uppercase();
            // Pooled: one row per window, each window `tokens / rows` tokens.
            let pooled = record.params["pool"].as_str().is_some();
            let rows_ok = acts.shape.len() == 2
                && if pooled {
                    acts.shape[0] > 0 && ids.shape[0] % acts.shape[0] == 0
                } else {
                    acts.shape[0] == ids.shape[0]
                };
            if acts.dtype != dtype || !rows_ok {
                let rows = if pooled { "windows" } else { "tokens" };
                return Err(format!(
                    "`activations` is {} {:?}, expected {dtype} [{rows}, width]",
                    acts.dtype, acts.shape
                ));
            }
            if header.metadata.get("pool").map(String::as_str) != record.params["pool"].as_str() {
                return Err("the file's `pool` is not the record's".into());
            }
            if header.tensors.len() != 2 {
                return Err(format!(
                    "{} tensors, expected `token_ids` and `activations`",
                    header.tensors.len()
                ));
            }
        }
        "spectrum" => {
            let mean = tensor("mean")?;
            let [width] = mean.shape[..] else {
                return Err(format!("`mean` has shape {:?}", mean.shape));
            };
            for name in ["raw.singular_values", "centred.singular_values", "mean"] {
                let t = tensor(name)?;
                if t.dtype != "F64" || t.shape != [width] {
                    return Err(format!(
                        "`{name}` is {} {:?}, expected F64 [{width}]",
                        t.dtype, t.shape
                    ));
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// Rows of an artifact's activations as f32 (the dtypes capture writes).
pub(super) fn activation_rows(
    bytes: &[u8],
    header: &header::Header,
) -> Option<(Vec<f32>, usize, usize)> {
    let acts = header.tensor("activations")?;
    let (rows, width) = (acts.shape[0] as usize, acts.shape[1] as usize);
    let start = usize::try_from(header.data_start + acts.offsets.0).ok()?;
    let end = usize::try_from(header.data_start + acts.offsets.1).ok()?;
    let data = bytes.get(start..end)?;
    let values = match acts.dtype.as_str() {
        "F32" => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        "F16" => data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        "BF16" => data
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => return None,
    };
    Some((values, rows, width))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header length field, a header of `header_len` bytes, then `data_len` bytes.
    fn file(header_len: usize, data_len: usize) -> Vec<u8> {
        let mut out = (header_len as u64).to_le_bytes().to_vec();
        out.extend((0..header_len + data_len).map(|i| (i * 7 % 251) as u8));
        out
    }

    fn hash_in_chunks(bytes: &[u8], chunk: usize, keep: bool, limit: u64) -> Hashed {
        let (sender, receiver) = mpsc::channel(bytes.len().div_ceil(chunk).max(1));
        for piece in bytes.chunks(chunk) {
            sender.try_send(Bytes::copy_from_slice(piece)).unwrap();
        }
        drop(sender);
        hash_chunks(receiver, keep, limit)
    }

    #[test]
    fn one_pass_gives_the_digest_and_exactly_the_header_prefix_whatever_the_chunking() {
        let bytes = file(300, 5000);
        let digest = hex::encode(Sha256::digest(&bytes));
        for chunk in [1, 3, 7, 8, 9, 64, 307, 308, 309, 4096, 1 << 20] {
            let hashed = hash_in_chunks(&bytes, chunk, false, u64::MAX);
            assert_eq!(hashed.digest, digest, "{chunk}");
            assert_eq!(hashed.len, bytes.len() as u64);
            assert_eq!(hashed.bytes, bytes[..308], "{chunk}");
            assert!(!hashed.overlong);
            let kept = hash_in_chunks(&bytes, chunk, true, bytes.len() as u64);
            assert_eq!(kept.bytes, bytes, "{chunk}");
        }
    }

    #[test]
    fn hostile_lengths_stop_collection_and_reading() {
        // A length field over the cap: only the 8 bytes are kept, for the parser to refuse.
        let mut bytes = file(10, 100);
        bytes[..8].copy_from_slice(&(header::MAX_HEADER_BYTES + 1).to_le_bytes());
        let hashed = hash_in_chunks(&bytes, 5, false, u64::MAX);
        assert_eq!(hashed.bytes, bytes[..8]);
        assert!(header::parse(&hashed.bytes, hashed.len).is_err());
        // A kept file longer than recorded stops there instead of growing the buffer.
        let hashed = hash_in_chunks(&file(10, 1000), 100, true, 500);
        assert!(hashed.overlong);
        assert!(hashed.bytes.len() <= 500);
    }
}
