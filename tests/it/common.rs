//! Shared test harness: a temp dir per test, an isolated environment, and the binary.

use std::path::{Path, PathBuf};

use assert_cmd::Command;

/// One test's world: its own temp dir and an isolated environment for the binary.
pub struct TestContext {
    dir: tempfile::TempDir,
}

#[allow(dead_code)]
impl TestContext {
    /// A fresh context with an empty temp dir.
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("create temp dir"),
        }
    }

    /// The temp dir of this test.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A path inside the temp dir.
    pub fn child(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The `hubsweep` binary with a clean, isolated environment: no colour, no token, HOME,
    /// HF_HOME and HUBSWEEP_HOME inside the temp dir, offline.
    pub fn command(&self) -> Command {
        let mut cmd = Command::cargo_bin("hubsweep").expect("hubsweep binary");
        cmd.current_dir(self.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.child("home"))
            .env("HF_HOME", self.child("hf-home"))
            .env("HUBSWEEP_HOME", self.child("hubsweep-home"))
            .env("HF_HUB_OFFLINE", "1")
            .env("NO_COLOR", "1");
        cmd
    }
}

/// The repository root (for committed sweeps, fixtures and schemas).
#[allow(dead_code)]
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Whether external peers (Python clients, model assets) are required: `scripts/test.sh` sets
/// `HUBSWEEP_REQUIRE_PEERS=1`, so a missing peer fails there; a bare `cargo test` skips loudly.
#[allow(dead_code)]
pub fn peers_required() -> bool {
    std::env::var_os("HUBSWEEP_REQUIRE_PEERS").is_some_and(|v| v == "1")
}

/// The binary as a plain [`std::process::Command`], its environment cleared down to `PATH` and
/// this context's homes (no HF_TOKEN or HF_ENDPOINT from the machine can leak in).
#[allow(dead_code)]
pub fn isolated_hubsweep(ctx: &TestContext) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_hubsweep"));
    cmd.current_dir(ctx.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", ctx.child("home"))
        .env("HF_HOME", ctx.child("hf-home"))
        .env("HUBSWEEP_HOME", ctx.child("hubsweep-home"))
        .env("NO_COLOR", "1");
    cmd
}

/// A finished command's stdout and stderr, for assertion messages.
#[allow(dead_code)]
pub fn output_text(output: &std::process::Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `line`, a shell command line, run under a pseudo-terminal that `script` gives it, in `dir`,
/// with exactly the environment set on `like`. What the test writes to the returned command's
/// stdin is typed at that terminal (`\x03` is Ctrl-C); what the program draws comes out of its
/// stdout. stdin and stdout are the caller's to set.
pub fn under_a_terminal(
    like: &std::process::Command,
    line: &str,
    dir: &Path,
) -> std::process::Command {
    let env: Vec<(std::ffi::OsString, std::ffi::OsString)> = like
        .get_envs()
        .filter_map(|(key, value)| Some((key.to_owned(), value?.to_owned())))
        .collect();
    let mut command = std::process::Command::new("script");
    command
        .args(["-qfec", line, "/dev/null"])
        .current_dir(dir)
        .env_clear()
        .envs(env)
        .stderr(std::process::Stdio::null());
    command
}

/// A sweep over three tiny GPT-NeoX models whose second cannot load (its weights are cut to
/// 1,000 bytes; pinning reads only their bytes), with spectra and overlaps against the first.
#[allow(dead_code)]
pub struct OneBrokenModel {
    /// The spec file.
    pub spec: PathBuf,
    /// The broken model's folder.
    pub broken: PathBuf,
    /// Its weights as they were: written back, they repair it.
    pub weights: Vec<u8>,
}

#[allow(dead_code)]
impl OneBrokenModel {
    /// Writes the broken model and the spec (output `output`) into `ctx`.
    pub fn new(ctx: &TestContext, output: &str) -> Self {
        let fixtures = repo_root().join("tests/fixtures");
        let broken = ctx.child("broken");
        std::fs::create_dir_all(&broken).unwrap();
        for name in ["config.json", "tokenizer.json", "model.safetensors"] {
            std::fs::copy(fixtures.join("gpt_neox_tiny").join(name), broken.join(name)).unwrap();
        }
        let weights = std::fs::read(broken.join("model.safetensors")).unwrap();
        std::fs::write(broken.join("model.safetensors"), &weights[..1000]).unwrap();
        let base = fixtures.join("gpt_neox_tiny");
        let spec = ctx.child("three.yaml");
        std::fs::write(
            &spec,
            format!(
                "name: three\noutput: {output}\nmodels:\n  - family: gpt_neox\n    repo: {base}\n  - family: gpt_neox\n    repo: {broken}\n  - family: gpt_neox\n    repo: {seq}\ndata:\n  texts:\n    - \"The quick brown fox jumps over the lazy dog.\"\n    - \"Interpretability asks what a network computes, and how.\"\n  seq_len: 16\ncapture:\n  hooks: [hook_resid_post]\n  layers: all\n  dtype: f32\nanalyses:\n  - spectrum: {{top_k: 8}}\n  - overlap: {{between: model, base: {base}, k: [2]}}\nlimits:\n  memory: 64MiB\n  artifact_bytes: 1MiB\ncompute:\n  device: cpu\n  batch_size: 4\n",
                base = base.display(),
                broken = broken.display(),
                seq = fixtures.join("gpt_neox_tiny_seq").display(),
            ),
        )
        .unwrap();
        Self {
            spec,
            broken,
            weights,
        }
    }

    /// Puts the model's weights back.
    pub fn repair(&self) {
        std::fs::write(self.broken.join("model.safetensors"), &self.weights).unwrap();
    }
}

/// Every file under `dir`, at any depth (none if it does not exist).
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}
