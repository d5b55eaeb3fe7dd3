//! The Hub client and the embedded server, against each other and against peers nobody here
//! wrote (the official Python client, the `hf-hub` crate).

mod cli;
mod client;
mod delete;
mod download;
mod faults;
mod hostile;
mod limits;
mod listing;
mod python;
mod xet;
mod xet_client;

use std::io::BufRead as _;

use hubsweep::hub::server::{Server, ServerConfig, ServerHandle};

/// Starts an embedded server on loopback over a store in `dir`.
pub async fn start_server(
    dir: &std::path::Path,
    configure: impl FnOnce(&mut ServerConfig),
) -> ServerHandle {
    let mut config = ServerConfig::new(dir.join("store"));
    configure(&mut config);
    Server::start(config).await.expect("start the embedded hub")
}

/// Starts `hubsweep hub serve --dir DIR` and returns the child and the URL it printed.
pub fn spawn_serve(
    context: &crate::common::TestContext,
    dir: &std::path::Path,
) -> (std::process::Child, String) {
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("hubsweep"))
        .args(["hub", "serve", "--dir"])
        .arg(dir)
        .env("HUBSWEEP_HOME", context.child("hubsweep-home"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn hubsweep hub serve");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line.trim().to_owned();
    assert!(
        url.starts_with("http://127.0.0.1:"),
        "serve printed {url:?}"
    );
    (child, url)
}

/// The venv Python with `huggingface_hub==2.4.0` (scripts/test.d/10-python-hub.sh), or `None`
/// after a skip note when peers are optional.
#[allow(clippy::print_stderr)] // the skip note the conventions ask for
pub fn hub_python() -> Option<std::path::PathBuf> {
    match std::env::var_os("HUBSWEEP_HUB_PYTHON") {
        Some(path) => Some(path.into()),
        None if crate::common::peers_required() => {
            panic!(
                "HUBSWEEP_HUB_PYTHON is not set: source scripts/test.d/10-python-hub.sh (scripts/test.sh does)"
            )
        }
        None => {
            eprintln!(
                "skip: HUBSWEEP_HUB_PYTHON not set (run scripts/test.sh to install the Python peer)"
            );
            None
        }
    }
}

/// A client for `server` with a fast retry policy (tests must not sit out real backoffs).
pub fn client(server: &ServerHandle, token: Option<&str>) -> hubsweep::hub::HubClient {
    client_with_events(server, token, None)
}

/// Like [`client`], with an event sink.
pub fn client_with_events(
    server: &ServerHandle,
    token: Option<&str>,
    events: Option<hubsweep::hub::EventSink>,
) -> hubsweep::hub::HubClient {
    let retry = hubsweep::hub::RetryPolicy {
        max_attempts: 5,
        base_delay: std::time::Duration::from_millis(10),
        max_delay: std::time::Duration::from_millis(100),
        max_server_wait: std::time::Duration::from_secs(5),
    };
    // LFS: these tests are about the LFS transfers (tests/it/hub/xet_client.rs has Xet's).
    let mut builder = hubsweep::hub::HubClient::builder(server.base_url())
        .unwrap()
        .retry(retry)
        .parts_in_flight(4)
        .xet(false);
    builder = builder.token(token.map(hubsweep::hub::Token::new));
    if let Some(events) = events {
        builder = builder.events(events);
    }
    builder.build().unwrap()
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn pseudo_random(len: usize, seed: u64) -> bytes::Bytes {
    // Odd and distinct for every seed (xorshift needs a non-zero state).
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

/// sha256 in hex.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(data))
}

/// A repo handle from `ns/name`.
pub fn model(id: &str) -> hubsweep::hub::Repo {
    hubsweep::hub::Repo::model(id.parse().unwrap())
}

/// A child process killed when dropped, so a failing test leaves no server behind.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Peak resident memory of a process so far (`VmHWM`), in bytes (Linux).
pub fn peak_rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM line");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmHWM value");
    kib * 1024
}

/// A client for a server at `url` with a fast retry policy.
pub fn client_for(url: &str) -> hubsweep::hub::HubClient {
    let retry = hubsweep::hub::RetryPolicy {
        max_attempts: 2,
        base_delay: std::time::Duration::from_millis(10),
        ..Default::default()
    };
    hubsweep::hub::HubClient::builder(url)
        .unwrap()
        .retry(retry)
        .xet(false)
        .build()
        .unwrap()
}
