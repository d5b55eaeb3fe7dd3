//! The spec language through the binary: every invalid spec under `tests/specs/invalid/` is
//! refused with exit 2, a location, no panic, and the diagnostic people read is snapshotted.

use std::time::{Duration, Instant};

use crate::common::{TestContext, repo_root};

/// Files whose problem has no position in the text (the whole file is the problem).
const WITHOUT_LOCATION: &[&str] = &["empty-file.yaml", "missing-required-key.yaml"];

#[test]
fn every_invalid_spec_is_refused_with_location_and_snapshot() {
    let dir = repo_root().join("tests/specs/invalid");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/specs/invalid")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name.ends_with(".yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 25, "only {} invalid specs", files.len());
    let context = TestContext::new();
    for file in files {
        let started = Instant::now();
        let output = context
            .command()
            .current_dir(&dir)
            .args(["plan", &file])
            .output()
            .expect("run hubsweep");
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(
            output.status.code(),
            Some(2),
            "{file}: expected exit 2, stderr:\n{stderr}"
        );
        assert!(
            output.stdout.is_empty(),
            "{file}: stdout must stay empty on error"
        );
        assert!(!stderr.contains("panicked"), "{file} panicked:\n{stderr}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{file} took {:?}",
            started.elapsed()
        );
        if !WITHOUT_LOCATION.contains(&file.as_str()) && file != "non-utf8.yaml" {
            let location = format!("[{file}:");
            assert!(
                stderr.contains(&location),
                "{file}: no `file:line:col` in:\n{stderr}"
            );
        }
        insta::assert_snapshot!(
            format!("invalid__{}", file.trim_end_matches(".yaml")),
            stderr
        );
    }
}

#[test]
fn many_errors_are_reported_in_one_run() {
    let dir = repo_root().join("tests/specs/invalid");
    let output = TestContext::new()
        .command()
        .current_dir(&dir)
        .args(["validate", "many-errors-at-once.yaml"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in [
        "invalid sweep name",
        "unknown key `layer`",
        "unknown unit",
        "unknown value `pythia`",
    ] {
        assert!(
            stderr.contains(expected),
            "missing `{expected}` in:\n{stderr}"
        );
    }
}

#[test]
fn non_utf8_input_names_the_byte() {
    let dir = repo_root().join("tests/specs/invalid");
    let output = TestContext::new()
        .command()
        .current_dir(&dir)
        .args(["validate", "non-utf8.yaml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("not valid UTF-8 (invalid byte at offset 9)"),
        "{stderr}"
    );
}

#[test]
fn huge_input_is_refused_before_parsing() {
    let context = TestContext::new();
    let path = context.child("huge.yaml");
    // 8 MiB of valid YAML: refused by size, quickly, without reading it all.
    let line = "- aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n";
    std::fs::write(&path, line.repeat(8 * 1024 * 1024 / line.len())).unwrap();
    let started = Instant::now();
    let output = context
        .command()
        .args(["validate", "huge.yaml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(started.elapsed() < Duration::from_secs(5));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("the limit is 1048576 bytes"), "{stderr}");
}

#[test]
fn deep_nesting_is_refused_not_overflowed() {
    let context = TestContext::new();
    std::fs::write(
        context.child("deep.yaml"),
        format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)),
    )
    .unwrap();
    let output = context
        .command()
        .args(["validate", "deep.yaml"])
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn warnings_do_not_fail_validation() {
    let context = TestContext::new();
    let spec = "name: warn\noutput: local://alice/warn\nmodels:\n  - family: llama\n    repo: org/model-{size}\n    size: [a, b]\n    exclude:\n      - {size: c}\ndata:\n  texts: [hi]\ncapture:\n  hooks: [hook_resid_post]\n  layers: [0]\n";
    std::fs::write(context.child("warn.yaml"), spec).unwrap();
    let output = context
        .command()
        .args(["validate", "warn.yaml"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("this `exclude` rule matches no combination"),
        "{stderr}"
    );
    assert!(
        stderr.contains("`c` is not a value of axis `size`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("warn.yaml: valid (0 errors, 2 warnings)"),
        "{stderr}"
    );
}

#[test]
fn every_committed_sweep_validates() {
    let sweeps = repo_root().join("sweeps");
    let mut files: Vec<_> = std::fs::read_dir(&sweeps)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 3);
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.starts_with("# yaml-language-server: $schema=../schemas/sweep.schema.json"),
            "{} must start with the schema line",
            file.display()
        );
        let output = TestContext::new()
            .command()
            .arg("validate")
            .arg(&file)
            .output()
            .unwrap();
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}: {}",
            file.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// An error far along a very long line (inline token ids, one line) is reported with its
/// location, without the snippet: miette panics past column 65,535.
#[test]
fn an_error_on_a_very_long_line_is_reported_not_panicked() {
    let context = TestContext::new();
    let ids: Vec<String> = (0..20_000).map(|i| (i % 1000).to_string()).collect();
    let spec = format!(
        "name: long\noutput: local://t/long\nmodels:\n  - family: llama\n    repo: local://hubsweep/tiny-llama\n\
         data:\n  token_ids: [[{}, not-a-number]]\n  seq_len: 16\ncapture:\n  hooks: [hook_resid_post]\n  layers: all\n",
        ids.join(", ")
    );
    std::fs::write(context.child("long.yaml"), &spec).unwrap();
    let output = context
        .command()
        .args(["validate", "long.yaml"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    let column = spec.lines().nth(6).unwrap().find("not-a-number").unwrap() + 1;
    assert!(column > 65_535);
    assert!(
        stderr.contains(&format!(
            "long.yaml:7:{column} (`/data/token_ids/0/20000`; the line is too long to show)"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("expected an integer"), "{stderr}");
}
