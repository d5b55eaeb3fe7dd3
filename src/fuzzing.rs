//! Fuzz target bodies: the parsers that read hostile input, as plain functions.
//!
//! `fuzz/` (a cargo-fuzz crate, nightly only) calls these from libFuzzer; the unit tests below
//! run them on seeds and deterministic mutations on a stable toolchain, so every test run
//! fuzzes briefly. Each body must return, never panic, whatever the bytes; the parsers cap
//! what they allocate by refusing sizes over their limits (see docs/verify.md).

use crate::ledger::{self, verify::header};

/// Largest input the targets pass on (libFuzzer's default `-max_len` is far smaller; this
/// keeps a hand-run with a large `-max_len` from timing out on quadratic YAML).
pub const MAX_INPUT: usize = 1 << 20;

/// The safetensors header parser of `verify --deep`.
pub fn safetensors_header(data: &[u8]) {
    let data = &data[..data.len().min(MAX_INPUT)];
    if let Ok(needed) = header::needed(data) {
        assert!(needed <= 8 + header::MAX_HEADER_BYTES);
    }
    if let Ok(parsed) = header::parse(data, data.len() as u64) {
        // What the parser accepts tiles the data region inside the file.
        let end = parsed.tensors.last().map_or(0, |t| t.offsets.1);
        assert!(parsed.data_start + end <= data.len() as u64);
    }
}

/// The ledger reader: records (segments, the index) and the manifest.
pub fn ledger(data: &[u8]) {
    let data = &data[..data.len().min(MAX_INPUT)];
    if let Ok(records) = ledger::parse_records("fuzz.jsonl", data) {
        // What parses serializes and parses back to the same records.
        let text = ledger::to_jsonl(records.iter());
        let back = ledger::parse_records("fuzz.jsonl", text.as_bytes());
        assert!(back.is_ok_and(|b| b.len() == records.len()));
        for record in &records {
            let _ = record.recomputed_id();
        }
    }
    let _ = ledger::parse_manifest(data);
}

/// The spec parser and validator.
pub fn spec(data: &[u8]) {
    let data = &data[..data.len().min(MAX_INPUT)];
    let _ = crate::spec::load("fuzz.yaml", data);
}

/// A deterministic mutator (xorshift64*) for running the targets without libFuzzer.
#[derive(Debug, Clone)]
pub struct Mutator {
    state: u64,
}

impl Mutator {
    /// A mutator from a seed (0 is replaced by a fixed non-zero value).
    pub fn new(seed: u64) -> Self {
        Self {
            state: if seed == 0 {
                0x9E37_79B9_7F4A_7C15
            } else {
                seed
            },
        }
    }

    /// The next pseudo-random number.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// A mutation of `input`, spliced with `other` at times: bit flips, byte sets, truncation,
    /// insertion, deletion, splices, and inflated little-endian length fields and digits.
    pub fn mutate(&mut self, input: &[u8], other: &[u8]) -> Vec<u8> {
        let mut out = input.to_vec();
        for _ in 0..1 + self.below(4) {
            let len = out.len();
            match self.below(8) {
                0 if len > 0 => {
                    let i = self.below(len);
                    out[i] ^= 1 << self.below(8);
                }
                1 if len > 0 => {
                    let i = self.below(len);
                    out[i] = [0, 0xff, b'"', b'{', b'[', b':', b'\n', b'9'][self.below(8)];
                }
                2 => out.truncate(self.below(len + 1)),
                3 => {
                    let i = self.below(len + 1);
                    let n = 1 + self.below(16);
                    let bytes: Vec<u8> = (0..n).map(|_| self.next_u64() as u8).collect();
                    out.splice(i..i, bytes);
                }
                4 if len > 0 => {
                    let i = self.below(len);
                    let j = (i + 1 + self.below(32)).min(len);
                    out.drain(i..j);
                }
                5 if !other.is_empty() => {
                    let i = self.below(len + 1);
                    let a = self.below(other.len());
                    let b = (a + 1 + self.below(64)).min(other.len());
                    out.truncate(i);
                    out.extend_from_slice(&other[a..b]);
                }
                6 if len >= 8 => {
                    // A length field made huge (the safetensors header length, or any u64).
                    let i = if self.below(2) == 0 {
                        0
                    } else {
                        self.below(len - 7)
                    };
                    let value = [u64::MAX, 1 << 40, 1 << 24, len as u64 * 2][self.below(4)];
                    out[i..i + 8].copy_from_slice(&value.to_le_bytes());
                }
                7 if len > 0 => {
                    // A number made huge (shapes, offsets, sizes in JSON and YAML).
                    let i = self.below(len);
                    if out[i].is_ascii_digit() {
                        out.splice(i..i, b"99999999999999999999".iter().copied());
                    }
                }
                _ => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn safetensors_seed() -> Vec<u8> {
        let header = r#"{"__metadata__":{"format":"hubsweep-activations-v1","node_id":"ab"},"activations":{"dtype":"F32","shape":[2,2],"data_offsets":[8,24]},"token_ids":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}}"#;
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend((0..24u8).collect::<Vec<_>>());
        out
    }

    fn ledger_seeds() -> Vec<Vec<u8>> {
        let mut record = ledger::Record {
            id: String::new(),
            kind: "artifact".into(),
            version: 1,
            params: serde_json::json!({"dtype": "f32", "hook": "hook_resid_post", "layer": 0, "shard": 0}),
            inputs: vec!["ab".repeat(32)],
            pins: serde_json::json!({"commit": "c".repeat(40)}),
            files: vec![ledger::FileRecord {
                path: "acts/m/main/hook_resid_post/layer000/shard00000-0123456789ab.safetensors"
                    .into(),
                size: 1234,
                sha256: "00".repeat(32),
            }],
            metrics: Some(
                serde_json::json!({"rows": 64, "raw": {"k90": 3, "top_eigenvalues": [1.5, 0.25]}}),
            ),
            timing: Some(ledger::Timing {
                started: "2026-11-27T13:00:00Z".into(),
                seconds: 0.5,
            }),
            device: Some("cpu".into()),
            error: None,
        };
        record.id = record.recomputed_id();
        let manifest = ledger::Manifest {
            schema_version: ledger::SCHEMA_VERSION,
            tool: ledger::Tool {
                name: "hubsweep".into(),
                version: "0.1.0".into(),
            },
            sweep: "quickstart".into(),
            output: "local://datasets/hubsweep/quickstart".into(),
            spec: ledger::SpecText {
                file_name: "quickstart.yaml".into(),
                text: "name: x\n".into(),
                sha256: "11".repeat(32),
                canonical_sha256: "22".repeat(32),
            },
            tolerances: Vec::new(),
        };
        vec![
            ledger::to_jsonl([&record, &record]).into_bytes(),
            serde_json::to_vec_pretty(&manifest).unwrap(),
        ]
    }

    fn spec_seeds() -> Vec<Vec<u8>> {
        vec![
            include_bytes!("../sweeps/quickstart.yaml").to_vec(),
            b"name: a\noutput: local://a/b\nmodels: [{family: llama, repo: local://a/m, revisions: [main, step1]}]\n&x a: *x\n".to_vec(),
        ]
    }

    /// Runs `target` on every seed, then on mutations until `budget` or `rounds`. (Allocation
    /// is bounded by construction — inputs are capped at `MAX_INPUT`, parsers refuse sizes over
    /// their limits before allocating, see `inflated_header_length_is_refused_before_reading`;
    /// the crate forbids the `unsafe` a counting allocator would need.)
    fn fuzz(name: &str, seeds: &[Vec<u8>], target: fn(&[u8]), budget: Duration, rounds: usize) {
        let mut mutator = Mutator::new(0x5EED ^ name.len() as u64);
        let started = Instant::now();
        let mut inputs: Vec<Vec<u8>> = seeds.to_vec();
        let mut ran = 0;
        while ran < rounds && started.elapsed() < budget {
            let input = if ran < seeds.len() {
                seeds[ran].clone()
            } else {
                let a = &inputs[mutator.below(inputs.len())];
                let b = &seeds[mutator.below(seeds.len())];
                mutator.mutate(a, b)
            };
            let outcome = std::panic::catch_unwind(|| target(&input));
            assert!(
                outcome.is_ok(),
                "{name} panicked on a {}-byte input: {:?}",
                input.len(),
                String::from_utf8_lossy(&input[..input.len().min(200)])
            );
            if inputs.len() < 256 {
                inputs.push(input);
            } else {
                let i = mutator.below(inputs.len());
                inputs[i] = input;
            }
            ran += 1;
        }
        eprintln!("{name}: {ran} inputs in {:?}", started.elapsed());
        assert!(ran >= seeds.len().min(rounds), "{name}: ran {ran} inputs");
    }

    #[test]
    fn safetensors_header_target_survives_mutations() {
        fuzz(
            "safetensors_header",
            &[safetensors_seed()],
            safetensors_header,
            Duration::from_secs(3),
            200_000,
        );
    }

    #[test]
    fn ledger_target_survives_mutations() {
        fuzz(
            "ledger",
            &ledger_seeds(),
            ledger,
            Duration::from_secs(3),
            100_000,
        );
    }

    #[test]
    fn spec_target_survives_mutations() {
        fuzz("spec", &spec_seeds(), spec, Duration::from_secs(4), 30_000);
    }

    #[test]
    fn inflated_header_length_is_refused_before_reading() {
        let mut input = u64::MAX.to_le_bytes().to_vec();
        input.extend_from_slice(b"{}");
        assert!(matches!(
            header::needed(&input),
            Err(header::HeaderError::HeaderTooLarge { .. })
        ));
        assert!(matches!(
            header::parse(&input, input.len() as u64),
            Err(header::HeaderError::HeaderTooLarge { .. })
        ));
    }
}
