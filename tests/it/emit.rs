//! `hubsweep emit` through the binary, against the embedded hub after a quickstart run: every
//! value equals the same quantity computed here from the metrics table, for each aggregation and
//! format; emitting twice gives the same bytes; `--check` passes on fresh output and names what
//! drifted (a newer commit, a hand edit, a deleted table row, a replaced figure); a source whose
//! ledger does not verify is refused; bad emit files are located errors with nothing written.

use std::path::{Path, PathBuf};
use std::process::Output;

use hubsweep::hub::{CommitOperation, CommitOptions, HubClient};

use crate::common::{TestContext, output_text, repo_root};
use crate::run::{dataset, hubsweep, open_store, runtime};

const NEOX: &str = "local://hubsweep/tiny-gpt-neox";

/// Runs `spec` (the quickstart, with `edit` applied to its text) and returns the repo's head.
pub(crate) fn run_quickstart(ctx: &TestContext, edit: &dyn Fn(String) -> String) -> String {
    let text = std::fs::read_to_string(repo_root().join("sweeps/quickstart.yaml")).unwrap();
    let spec = ctx.child("quickstart.yaml");
    std::fs::write(&spec, edit(text)).unwrap();
    let output = hubsweep(ctx).arg("run").arg(&spec).output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", output_text(&output));
    head(ctx, "main")
}

pub(crate) fn with_client<T>(ctx: &TestContext, f: impl AsyncFnOnce(&HubClient) -> T) -> T {
    runtime().block_on(async {
        let (server, client) = open_store(&ctx.child("hubsweep-home")).await;
        let out = f(&client).await;
        server.shutdown().await;
        out
    })
}

fn head(ctx: &TestContext, revision: &str) -> String {
    with_client(ctx, async |client| {
        client
            .head(&dataset("hubsweep/quickstart"), revision)
            .await
            .unwrap()
    })
}

/// The rows of `metrics/spectra.jsonl` at `sha` that `keep` keeps.
pub(crate) fn spectra_rows(
    ctx: &TestContext,
    sha: &str,
    keep: impl Fn(&serde_json::Value) -> bool,
) -> Vec<serde_json::Value> {
    let bytes = with_client(ctx, async |client| {
        client
            .download_bytes(
                &dataset("hubsweep/quickstart"),
                sha,
                "metrics/spectra.jsonl",
            )
            .await
            .unwrap()
    });
    String::from_utf8(bytes.to_vec())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| keep(r))
        .collect()
}

/// The centred `hook_resid_post` rows of the GPT-NeoX model in `metrics/spectra.jsonl` at `sha`.
fn neox_rows(ctx: &TestContext, sha: &str) -> Vec<serde_json::Value> {
    spectra_rows(ctx, sha, |r| {
        r["model"] == NEOX && r["hook"] == "hook_resid_post" && r["centring"] == "centred"
    })
}

fn paper(sha: &str, extra: &str) -> String {
    format!(
        "# yaml-language-server: $schema=../schemas/emit.schema.json
sources:
  qs: local://hubsweep/quickstart@{sha}
values:
  - macro: srankRatio
    ratio: [srankMax, srankMin]
  - macro: srankMean
    where: {{model: {NEOX}, hook: hook_resid_post, centring: centred}}
    field: stable_rank
    aggregate: mean
  - macro: srankMin
    where: {{model: {NEOX}, hook: hook_resid_post, centring: centred}}
    field: stable_rank
    aggregate: min
    format: significant
    digits: 3
  - macro: srankMax
    where: {{model: {NEOX}, hook: hook_resid_post, centring: centred}}
    field: stable_rank
    aggregate: max
    format: scientific
    digits: 2
  - macro: erankMedian
    where: {{model: {NEOX}, hook: hook_resid_post, centring: centred}}
    field: effective_rank
    aggregate: median
    format: percent
    digits: 1
  - macro: layerCount
    where: {{model: {NEOX}, hook: hook_resid_post, centring: centred}}
    aggregate: count
  - macro: srankRange
    where: {{model: {NEOX}, hook: hook_resid_post, centring: centred}}
    field: stable_rank
    aggregate: range
    format: fixed
    digits: 2
  - macro: normLayerZero
    where: {{model: {NEOX}, hook: hook_resid_post, centring: centred, layer: 0}}
    field: frobenius_norm_sq
    format: integer
  - macro: srankSpread
    difference: [srankMax, srankMin]
    format: fixed
    digits: 4
tables:
  - name: ranks
    where: {{model: {NEOX}, hook: hook_resid_post, centring: centred}}
    columns: [layer, stable_rank, effective_rank, k90]
    headers: [layer, stable rank, effective rank, k_90]
figures:
  - name: ranks
    plot: layers
    where: {{hook: hook_resid_post}}
{extra}"
    )
}

pub(crate) fn emit(ctx: &TestContext, file: &Path, mode: &str, dir: &Path) -> Output {
    hubsweep(ctx)
        .arg("emit")
        .arg(file)
        .arg(mode)
        .arg(dir)
        .output()
        .unwrap()
}

pub(crate) fn write(ctx: &TestContext, name: &str, text: &str) -> PathBuf {
    let path = ctx.child(name);
    std::fs::write(&path, text).unwrap();
    path
}

pub(crate) fn files_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for sub in ["", "tables", "figures"] {
        let Ok(entries) = std::fs::read_dir(dir.join(sub)) else {
            continue;
        };
        for entry in entries.flatten().filter(|e| e.path().is_file()) {
            let name = format!("{sub}/{}", entry.file_name().to_string_lossy());
            out.push((name, std::fs::read(entry.path()).unwrap()));
        }
    }
    out.sort();
    out
}

fn copy_dir(from: &Path, to: &Path) {
    for (name, bytes) in files_of(from) {
        let path = to.join(name.trim_start_matches('/'));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

/// `x` with `digits` significant digits, computed from the decimal exponent.
fn significant(x: f64, digits: i32) -> String {
    let exponent = x.abs().log10().floor() as i32;
    format!("{x:.*}", (digits - 1 - exponent).max(0) as usize)
}

fn thousands(n: u64) -> String {
    let text = n.to_string();
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i > 0 && (text.len() - i).is_multiple_of(3) {
            out.push_str("{,}");
        }
        out.push(c);
    }
    out
}

/// The macros the values should have, computed here from the rows.
fn expected_macros(rows: &[serde_json::Value]) -> Vec<(&'static str, String)> {
    let field = |name: &str| -> Vec<f64> {
        let mut v: Vec<f64> = rows.iter().map(|r| r[name].as_f64().unwrap()).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let srank = field("stable_rank");
    let erank = field("effective_rank");
    let n = srank.len();
    assert!(n >= 2, "the quickstart's GPT-NeoX has several layers");
    let mean = srank.iter().sum::<f64>() / n as f64;
    let median = if n % 2 == 1 {
        erank[n / 2]
    } else {
        (erank[n / 2 - 1] + erank[n / 2]) / 2.0
    };
    let (min, max) = (srank[0], srank[n - 1]);
    let scientific = format!("{max:.2e}");
    let (mantissa, exponent) = scientific.split_once('e').unwrap();
    let layer0 = rows.iter().find(|r| r["layer"] == 0).unwrap();
    let norm = layer0["frobenius_norm_sq"].as_f64().unwrap().round() as u64;
    vec![
        ("srankMean", format!("{mean:.3}")),
        ("srankMin", significant(min, 3)),
        (
            "srankMax",
            format!("\\ensuremath{{{mantissa}\\times10^{{{exponent}}}}}"),
        ),
        ("erankMedian", format!("{:.1}\\%", median * 100.0)),
        ("layerCount", n.to_string()),
        ("srankRange", format!("{min:.2}--{max:.2}")),
        ("normLayerZero", thousands(norm)),
        ("srankRatio", format!("{:.3}", max / min)),
        ("srankSpread", format!("{:.4}", max - min)),
    ]
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn emitted_values_match_the_metrics_and_check_names_what_drifted() {
    let ctx = TestContext::new();
    let sha = run_quickstart(&ctx, &|t| t);
    let file = write(&ctx, "paper.yaml", &paper(&sha, ""));
    let out = ctx.child("out");
    let first = emit(&ctx, &file, "--out", &out);
    assert_eq!(first.status.code(), Some(0), "{}", output_text(&first));

    // Every value against the same quantity computed here from the metrics table.
    let rows = neox_rows(&ctx, &sha);
    let tex = std::fs::read_to_string(out.join("values.tex")).unwrap();
    for (name, body) in expected_macros(&rows) {
        let line = format!("\\newcommand{{\\{name}}}{{{body}}}");
        assert!(tex.lines().any(|l| l == line), "`{line}` not in:\n{tex}");
    }
    assert!(
        tex.contains(&format!(
            "% source qs: local://datasets/hubsweep/quickstart@{sha}"
        )) && tex.contains(concat!("hubsweep ", env!("CARGO_PKG_VERSION"))),
        "{tex}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("values.json")).unwrap()).unwrap();
    let nodes: Vec<&str> = rows.iter().map(|r| r["node"].as_str().unwrap()).collect();
    let mean = &json["values"]["srankMean"];
    assert_eq!(mean["rows"], rows.len());
    for node in &nodes {
        assert!(
            mean["nodes"].as_array().unwrap().iter().any(|n| n == node),
            "{mean}"
        );
    }
    assert_eq!(
        json["generated_by"]["sources"]["qs"],
        format!("local://datasets/hubsweep/quickstart@{sha}")
    );
    let table = std::fs::read_to_string(out.join("tables/ranks.tex")).unwrap();
    assert!(
        table.contains("\\toprule") && table.contains("\\bottomrule"),
        "{table}"
    );
    assert_eq!(
        table.lines().filter(|l| l.ends_with("\\\\")).count(),
        rows.len() + 1,
        "{table}"
    );
    let csv = std::fs::read_to_string(out.join("tables/ranks.csv")).unwrap();
    assert!(
        csv.contains(&format!(
            "\n0,{:.3},",
            rows[0]["stable_rank"].as_f64().unwrap()
        )),
        "{csv}"
    );
    let svg = std::fs::read_to_string(out.join("figures/ranks.svg")).unwrap();
    assert!(svg.contains("<polyline") && svg.contains(&sha), "{svg}");
    let pdf = std::fs::read(out.join("figures/ranks.pdf")).unwrap();
    assert!(pdf.starts_with(b"%PDF-1.4\n") && pdf.ends_with(b"%%EOF\n"));
    assert!(
        String::from_utf8_lossy(&pdf).contains(&sha),
        "the PDF names its source"
    );

    // Deterministic: a second emit gives the same bytes; --check passes on fresh output.
    let again = ctx.child("again");
    let second = emit(&ctx, &file, "--out", &again);
    assert_eq!(second.status.code(), Some(0), "{}", output_text(&second));
    assert_eq!(files_of(&out), files_of(&again));
    let check = emit(&ctx, &file, "--check", &out);
    assert_eq!(check.status.code(), Some(0), "{}", output_text(&check));

    // A value's file edited by hand.
    let edited = ctx.child("edited");
    copy_dir(&out, &edited);
    let mean_line = tex.lines().find(|l| l.contains("{\\srankMean}")).unwrap();
    std::fs::write(
        edited.join("values.tex"),
        tex.replace(mean_line, "\\newcommand{\\srankMean}{9.999}"),
    )
    .unwrap();
    let check = emit(&ctx, &file, "--check", &edited);
    assert_eq!(check.status.code(), Some(1), "{}", output_text(&check));
    let table_out = stdout(&check);
    assert!(
        table_out.contains("value \\srankMean") && table_out.contains("9.999 → "),
        "{table_out}"
    );
    assert_eq!(
        table_out.lines().count(),
        2,
        "only the edited value differs:\n{table_out}"
    );

    // A table row deleted.
    let cut = ctx.child("cut");
    copy_dir(&out, &cut);
    let without: String = table
        .lines()
        .filter(|l| !l.starts_with("0 & "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(without, table);
    std::fs::write(cut.join("tables/ranks.tex"), without).unwrap();
    let check = emit(&ctx, &file, "--check", &cut);
    assert_eq!(check.status.code(), Some(1), "{}", output_text(&check));
    assert!(
        stdout(&check).contains("table ranks") && stdout(&check).contains("tables/ranks.tex"),
        "{}",
        stdout(&check)
    );

    // A figure replaced.
    let replaced = ctx.child("replaced");
    copy_dir(&out, &replaced);
    std::fs::write(
        replaced.join("figures/ranks.svg"),
        svg.replace("<polyline", "<polygon"),
    )
    .unwrap();
    let check = emit(&ctx, &file, "--check", &replaced);
    assert_eq!(check.status.code(), Some(1), "{}", output_text(&check));
    assert!(
        stdout(&check).contains("figure ranks"),
        "{}",
        stdout(&check)
    );

    // A selection that matches nothing: located, exit 2, nothing written.
    let empty = write(
        &ctx,
        "empty.yaml",
        &format!(
            "sources:\n  qs: local://hubsweep/quickstart@{sha}\nvalues:\n  - macro: nothing\n    where: {{hook: hook_resid_mid}}\n    field: stable_rank\n    aggregate: mean\n"
        ),
    );
    let nowhere = ctx.child("nowhere");
    let refused = emit(&ctx, &empty, "--out", &nowhere);
    assert_eq!(refused.status.code(), Some(2), "{}", output_text(&refused));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("empty.yaml:5:")
            && err.contains("hook_resid_mid")
            && err.contains("hook_resid_post"),
        "{err}"
    );
    assert!(!nowhere.exists());

    // The source moved to a newer commit whose metrics differ (other prompts): the old
    // output no longer checks, and the table names each value with old → new.
    let newer = run_quickstart(&ctx, &|t| {
        t.replace("The quick brown fox", "A slow grey cat")
    });
    assert_ne!(newer, sha);
    let moved = write(&ctx, "moved.yaml", &paper(&newer, ""));
    let check = emit(&ctx, &moved, "--check", &out);
    assert_eq!(check.status.code(), Some(1), "{}", output_text(&check));
    let new_rows = neox_rows(&ctx, &newer);
    let table_out = stdout(&check);
    for (name, body) in expected_macros(&new_rows) {
        if tex.contains(&format!("{{\\{name}}}{{{body}}}")) {
            continue;
        }
        assert!(
            table_out.contains(&format!("value \\{name}"))
                && table_out.contains(&format!("→ {body}")),
            "`{name}` → `{body}` not in:\n{table_out}"
        );
    }
    assert!(table_out.contains("value \\srankMean"), "{table_out}");

    // A source whose ledger does not verify (a recorded file deleted) is refused.
    let tampered = with_client(&ctx, async |client| {
        let repo = dataset("hubsweep/quickstart");
        client
            .create_branch(&repo, "tampered", "main")
            .await
            .unwrap();
        let index = client
            .download_bytes(&repo, "main", "ledger/index.jsonl")
            .await
            .unwrap();
        let records = hubsweep::ledger::parse_records("index", &index).unwrap();
        let file = records
            .iter()
            .find_map(|r| r.files.first())
            .unwrap()
            .path
            .clone();
        client
            .commit(
                &repo,
                "tampered",
                &[CommitOperation::Delete { path: file }],
                &CommitOptions {
                    summary: "tamper".into(),
                    ..CommitOptions::default()
                },
            )
            .await
            .unwrap();
        client.head(&repo, "tampered").await.unwrap()
    });
    let bad = write(&ctx, "tampered.yaml", &paper(&tampered, ""));
    let dir = ctx.child("from-tampered");
    let refused = emit(&ctx, &bad, "--out", &dir);
    assert_eq!(refused.status.code(), Some(2), "{}", output_text(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("does not verify"),
        "{}",
        output_text(&refused)
    );
    assert!(!dir.exists());
    let refused = emit(&ctx, &bad, "--check", &out);
    assert_eq!(refused.status.code(), Some(2), "{}", output_text(&refused));
}

#[test]
fn bad_emit_files_are_located_errors_and_nothing_is_written() {
    let ctx = TestContext::new();
    let sha = "0123456789abcdef0123456789abcdef01234567";
    let text = format!(
        "sources:
  qs: local://hubsweep/quickstart@{sha}
values:
  - macro: srank70m
    field: stable_rank
    aggregate: mean
  - macro: srank
    field: stabel_rank
    aggregate: mean
  - macro: srank
    field: effective_rank
    aggregate: max
    where: {{layr: 2}}
"
    );
    let file = write(&ctx, "bad.yaml", &text);
    let out = ctx.child("out");
    let output = emit(&ctx, &file, "--out", &out);
    assert_eq!(output.status.code(), Some(2), "{}", output_text(&output));
    let err = String::from_utf8_lossy(&output.stderr);
    for expected in [
        "bad.yaml:4:12",
        "macro name `srank70m` is not letters only",
        "srankSevenZerom",
        "bad.yaml:8:12",
        "unknown metric `stabel_rank`",
        "did you mean `stable_rank`?",
        "bad.yaml:10:12",
        "macro `srank` is defined twice",
        "bad.yaml:13:13",
        "unknown column `layr` in table `spectra`",
        "did you mean `layer`?",
    ] {
        assert!(err.contains(expected), "`{expected}` not in:\n{err}");
    }
    assert!(!out.exists());

    // A source that does not exist: located at the source, exit 2, nothing written.
    let missing = write(
        &ctx,
        "missing.yaml",
        &format!(
            "sources:\n  qs: local://nobody/nothing@{sha}\nvalues:\n  - macro: x\n    field: stable_rank\n    aggregate: mean\n"
        ),
    );
    let output = emit(&ctx, &missing, "--out", &out);
    assert_eq!(output.status.code(), Some(2), "{}", output_text(&output));
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains("missing.yaml:2:7") && err.contains("does not exist"),
        "{err}"
    );
    assert!(!out.exists());

    // Not pinned to a commit.
    let unpinned = write(
        &ctx,
        "unpinned.yaml",
        "sources:\n  qs: local://hubsweep/quickstart@main\nvalues:\n  - macro: x\n    field: stable_rank\n    aggregate: mean\n",
    );
    let output = emit(&ctx, &unpinned, "--check", &out);
    assert_eq!(output.status.code(), Some(2), "{}", output_text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("not pinned to a commit"),
        "{}",
        output_text(&output)
    );
}

#[test]
fn committed_emit_schema_matches_the_types() {
    let path = repo_root().join("schemas/emit.schema.json");
    let generated = hubsweep::emit::schema_text();
    if std::env::var_os("HUBSWEEP_UPDATE_SCHEMAS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "schemas/emit.schema.json is out of date; regenerate it with `HUBSWEEP_UPDATE_SCHEMAS=1 cargo test --release --test it committed_emit_schema`"
    );
}

/// An `hf://` source is read from the Hub at `HF_ENDPOINT` (here the store the run wrote, served
/// by the test as a Hub-compatible server): the same values as the commit read as `local://`,
/// each linked, with `links: true`, to the metrics table it came from.
#[test]
fn an_hf_source_is_read_from_hf_endpoint_with_links_to_its_tables() {
    let ctx = TestContext::new();
    let sha = run_quickstart(&ctx, &|t| t);
    let local = write(&ctx, "local.yaml", &paper(&sha, ""));
    let from_local = ctx.child("from-local");
    let output = emit(&ctx, &local, "--out", &from_local);
    assert_eq!(output.status.code(), Some(0), "{}", output_text(&output));
    let text = paper(&sha, "links: true\n").replace(
        "local://hubsweep/quickstart@",
        "hf://datasets/hubsweep/quickstart@",
    );
    let hf = write(&ctx, "hf.yaml", &text);
    let rt = runtime();
    let (server, _client) = rt.block_on(open_store(&ctx.child("hubsweep-home")));
    let endpoint = server.base_url().trim_end_matches('/').to_owned();
    let from_hf = ctx.child("from-hf");
    let output = hubsweep(&ctx)
        .arg("emit")
        .arg(&hf)
        .arg("--out")
        .arg(&from_hf)
        .env("HF_ENDPOINT", &endpoint)
        .env("HF_TOKEN", "hf_anything")
        .output()
        .unwrap();
    rt.block_on(server.shutdown());
    assert_eq!(output.status.code(), Some(0), "{}", output_text(&output));
    let tex = std::fs::read_to_string(from_hf.join("values.tex")).unwrap();
    assert!(
        tex.contains(&format!(
            "% source qs: hf://datasets/hubsweep/quickstart@{sha}"
        )),
        "{tex}"
    );
    let url =
        format!("{endpoint}/datasets/hubsweep/quickstart/resolve/{sha}/metrics/spectra.jsonl");
    let local_tex = std::fs::read_to_string(from_local.join("values.tex")).unwrap();
    for line in local_tex.lines().filter(|l| l.starts_with("\\newcommand")) {
        let (name, body) = line.split_once("}{").unwrap();
        let body = body.strip_suffix('}').unwrap();
        let linked = format!("{name}}}{{\\hubsweepsource{{{url}}}{{{body}}}}}");
        // Derived values name no one table: they stay plain.
        let derived = name.contains("Ratio") || name.contains("Spread");
        let expected = if derived { line.to_owned() } else { linked };
        assert!(
            tex.lines().any(|l| l == expected),
            "`{expected}` not in:\n{tex}"
        );
    }
}
