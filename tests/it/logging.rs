//! `RUST_LOG`: log lines through `tracing` on stderr when it is set, nothing when it is not,
//! and stdout (data) the same either way.

use crate::common::{TestContext, repo_root};

/// `status` of the quickstart (embedded hub, bundled models, one pinning), as JSON on stdout.
fn status(ctx: &TestContext, rust_log: Option<&str>) -> std::process::Output {
    let mut command = ctx.command();
    command
        .args(["status", "--format", "json"])
        .arg(repo_root().join("sweeps/quickstart.yaml"));
    if let Some(filter) = rust_log {
        command.env("RUST_LOG", filter);
    }
    command.output().expect("run hubsweep status")
}

#[test]
fn rust_log_debug_writes_log_lines_to_stderr_and_leaves_stdout_alone() {
    let ctx = TestContext::new();
    let quiet = status(&ctx, None);
    assert_eq!(quiet.status.code(), Some(0), "{quiet:?}");
    let logged = status(&ctx, Some("debug"));
    assert_eq!(logged.status.code(), Some(0), "{logged:?}");

    let quiet_err = String::from_utf8_lossy(&quiet.stderr);
    let logged_err = String::from_utf8_lossy(&logged.stderr);
    assert!(
        !quiet_err.contains("DEBUG"),
        "logging must be off without RUST_LOG:\n{quiet_err}"
    );
    let debug_lines: Vec<&str> = logged_err.lines().filter(|l| l.contains("DEBUG")).collect();
    assert!(
        debug_lines.iter().any(|l| l.contains("pinning the sweep")),
        "no debug line from the session on stderr:\n{logged_err}"
    );
    // One pinning per command: the session pins once.
    assert_eq!(
        debug_lines
            .iter()
            .filter(|l| l.contains("pinning the sweep"))
            .count(),
        1,
        "{logged_err}"
    );
    assert_eq!(
        String::from_utf8_lossy(&quiet.stdout),
        String::from_utf8_lossy(&logged.stdout),
        "stdout changed with RUST_LOG"
    );
    let json: serde_json::Value = serde_json::from_slice(&logged.stdout).expect("stdout is JSON");
    assert_eq!(json["output"], "local://datasets/hubsweep/quickstart");
}
