//! `hubsweep emit` of a `spectrum` figure through the binary, after a quickstart run: the
//! selected spectra rows' files are read from the source at its commit and drawn as the report
//! draws a layer's singular values, one line per selected row; emitting twice gives the same
//! bytes and `--check` passes; a spectrum figure whose selection names no single layer is a
//! located error with nothing written.

use crate::common::{TestContext, output_text};
use crate::emit::{emit, files_of, run_quickstart, spectra_rows, write};

/// The `metrics/spectra.jsonl` rows at `sha` of `hook_resid_post` at layer 1.
fn layer_one_rows(ctx: &TestContext, sha: &str) -> Vec<serde_json::Value> {
    spectra_rows(ctx, sha, |r| {
        r["hook"] == "hook_resid_post" && r["layer"] == 1
    })
}

#[test]
fn a_spectrum_figure_draws_one_line_per_selected_row() {
    let ctx = TestContext::new();
    let sha = run_quickstart(&ctx, &|t| t);
    let rows = layer_one_rows(&ctx, &sha);
    assert!(rows.len() >= 2, "{rows:?}");
    assert!(rows.iter().all(|r| r["file"].is_string()), "{rows:?}");
    let text = format!(
        "sources:\n  qs: local://hubsweep/quickstart@{sha}\nfigures:\n  - name: sv\n    plot: spectrum\n    where: {{hook: hook_resid_post, layer: 1}}\n"
    );
    let file = write(&ctx, "spectrum.yaml", &text);
    let out = ctx.child("out");
    let first = emit(&ctx, &file, "--out", &out);
    assert_eq!(first.status.code(), Some(0), "{}", output_text(&first));

    let svg = std::fs::read_to_string(out.join("figures/sv.svg")).unwrap();
    assert_eq!(
        svg.matches("<g class=\"series\">").count(),
        rows.len(),
        "one line per selected row:\n{svg}"
    );
    assert!(
        svg.contains("singular values at layer 1") && svg.contains(&sha),
        "{svg}"
    );
    for row in &rows {
        let label = format!(
            "{}@{} {}",
            row["model"].as_str().unwrap(),
            row["revision"].as_str().unwrap(),
            row["hook"].as_str().unwrap()
        );
        let label = if row["centring"] == "raw" {
            format!("{label} (raw)")
        } else {
            label
        };
        assert!(
            svg.contains(&format!("<title>{label}</title>")),
            "`{label}` not in:\n{svg}"
        );
    }
    let pdf = std::fs::read(out.join("figures/sv.pdf")).unwrap();
    assert!(pdf.starts_with(b"%PDF-1.4\n") && pdf.ends_with(b"%%EOF\n"));

    let again = ctx.child("again");
    let second = emit(&ctx, &file, "--out", &again);
    assert_eq!(second.status.code(), Some(0), "{}", output_text(&second));
    assert_eq!(files_of(&out), files_of(&again));
    let check = emit(&ctx, &file, "--check", &out);
    assert_eq!(check.status.code(), Some(0), "{}", output_text(&check));
}

#[test]
fn a_spectrum_figure_without_one_layer_is_a_located_error() {
    let ctx = TestContext::new();
    let sha = "0123456789abcdef0123456789abcdef01234567";
    let text = format!(
        "sources:\n  qs: local://hubsweep/quickstart@{sha}\nfigures:\n  - name: all\n    plot: spectrum\n    where: {{hook: hook_resid_post}}\n  - name: two\n    plot: spectrum\n    where: {{layer: [0, 1]}}\n"
    );
    let file = write(&ctx, "layers.yaml", &text);
    let out = ctx.child("out");
    let output = crate::emit::emit(&ctx, &file, "--out", &out);
    assert_eq!(output.status.code(), Some(2), "{}", output_text(&output));
    let err = String::from_utf8_lossy(&output.stderr);
    for expected in [
        "layers.yaml:5:11",
        "needs a selection that names one `layer`",
        "add `layer: N` to `where`",
        "layers.yaml:9:20",
        "draws one layer, not 2",
    ] {
        assert!(err.contains(expected), "`{expected}` not in:\n{err}");
    }
    assert!(!out.exists());
}
