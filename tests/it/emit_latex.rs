//! The example paper (`examples/paper/`) built with a real LaTeX from the quickstart's results:
//! `make` emits the values, table and figure and runs pdflatex; the PDF's text (pdftotext)
//! holds the emitted numbers, and the emitted figure PDF renders with ink (pdftoppm); values of
//! an `hf://` source emitted with `links: true` become hyperref links. Tools come
//! from scripts/test.d/50-latex.sh; without them the test skips, or fails under
//! `HUBSWEEP_REQUIRE_PEERS=1`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{TestContext, output_text, peers_required, repo_root};

/// A tool from its `HUBSWEEP_*` variable, else from PATH; `None` (skip) when missing and
/// peers are not required.
#[allow(clippy::print_stderr)] // the skip note the conventions ask for
fn tool(variable: &str, name: &str) -> Option<PathBuf> {
    let found = std::env::var_os(variable)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        });
    match found {
        Some(path) => Some(path),
        None if peers_required() => {
            panic!(
                "`{name}` is missing: scripts/test.d/50-latex.sh installs it and sets {variable}"
            )
        }
        None => {
            eprintln!("skip: `{name}` not found (source scripts/test.d/50-latex.sh)");
            None
        }
    }
}

fn run(command: &mut Command) -> std::process::Output {
    let output = command.output().expect("start the tool");
    assert!(
        output.status.success(),
        "{command:?}: {}",
        output_text(&output)
    );
    output
}

/// Pixels darker than mid-grey in a binary PGM (`P5`, 8-bit) image.
fn ink(pgm: &[u8]) -> usize {
    // Header: `P5`, width, height, maximum, each followed by whitespace.
    let mut fields = 0;
    let mut at = 0;
    while fields < 4 && at < pgm.len() {
        while at < pgm.len() && pgm[at].is_ascii_whitespace() {
            at += 1;
        }
        while at < pgm.len() && !pgm[at].is_ascii_whitespace() {
            at += 1;
        }
        fields += 1;
    }
    pgm[at + 1..].iter().filter(|&&p| p < 128).count()
}

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for name in ["Makefile", "main.tex", "paper.yaml"] {
        std::fs::copy(from.join(name), to.join(name)).unwrap();
    }
}

#[test]
fn the_example_paper_builds_with_latex_and_shows_the_emitted_numbers() {
    let (Some(pdflatex), Some(pdftotext), Some(pdftoppm), Some(make)) = (
        tool("HUBSWEEP_PDFLATEX", "pdflatex"),
        tool("HUBSWEEP_PDFTOTEXT", "pdftotext"),
        tool("HUBSWEEP_PDFTOPPM", "pdftoppm"),
        tool("HUBSWEEP_MAKE", "make"),
    ) else {
        return;
    };
    let ctx = TestContext::new();
    let sha = crate::emit::run_quickstart(&ctx, &|t| t);
    let paper = ctx.child("paper");
    copy(&repo_root().join("examples/paper"), &paper);
    let mut build = Command::new(&make);
    build
        .current_dir(&paper)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", ctx.child("home"))
        .env("HF_HOME", ctx.child("hf-home"))
        .env("HUBSWEEP_HOME", ctx.child("hubsweep-home"))
        .env("NO_COLOR", "1")
        .arg(format!("SHA={sha}"))
        .arg(format!("HUBSWEEP={}", env!("CARGO_BIN_EXE_hubsweep")))
        .arg(format!("PDFLATEX={}", pdflatex.display()));
    run(&mut build);
    // The CI step of a paper repo passes on what it just built.
    run(Command::new(&make)
        .current_dir(&paper)
        .env("HUBSWEEP_HOME", ctx.child("hubsweep-home"))
        .arg("check")
        .arg(format!("SHA={sha}"))
        .arg(format!("HUBSWEEP={}", env!("CARGO_BIN_EXE_hubsweep"))));

    let values: serde_json::Value =
        serde_json::from_slice(&std::fs::read(paper.join("generated/values.json")).unwrap())
            .unwrap();
    let text = run(Command::new(&pdftotext)
        .arg(paper.join("main.pdf"))
        .arg("-"))
    .stdout;
    let text = String::from_utf8_lossy(&text).replace('\n', " ");
    for name in [
        "layerCount",
        "srankMean",
        "srankRange",
        "erankLlama",
        "srankRatio",
    ] {
        let written = values["values"][name]["text"].as_str().unwrap();
        assert!(
            text.contains(written),
            "`{name}` = `{written}` not in the PDF's text:\n{text}"
        );
    }
    // A table cell: the first row's stable rank, as the table wrote it.
    let table: serde_json::Value =
        serde_json::from_slice(&std::fs::read(paper.join("generated/tables/ranks.json")).unwrap())
            .unwrap();
    let cell = table["text"][0][1].as_str().unwrap();
    assert!(text.contains(cell), "table cell `{cell}` not in:\n{text}");

    // The figure PDF is valid: poppler renders it, with ink (lines, markers, text) on it, and
    // its text is the plot's.
    let figure = paper.join("generated/figures/ranks.pdf");
    let prefix = ctx.child("figure");
    run(Command::new(&pdftoppm)
        .args(["-r", "50", "-gray", "-singlefile"])
        .arg(&figure)
        .arg(&prefix));
    let pixels = std::fs::read(prefix.with_extension("pgm")).unwrap();
    let dark = ink(&pixels);
    assert!(dark > 500, "only {dark} dark pixels in the rendered figure");
    let figure_text = run(Command::new(&pdftotext).arg(&figure).arg("-")).stdout;
    let figure_text = String::from_utf8_lossy(&figure_text);
    assert!(
        figure_text.contains("stable rank") && figure_text.contains("layer"),
        "{figure_text}"
    );

    // With `links: true`, a value of an `hf://` source links to its metrics table when the
    // document loads hyperref: the PDF has the link, and the number as text.
    let yaml = std::fs::read_to_string(paper.join("paper.yaml"))
        .unwrap()
        .replace(
            "local://hubsweep/quickstart@SHA",
            &format!("hf://datasets/hubsweep/quickstart@{sha}"),
        )
        + "links: true\n";
    std::fs::write(paper.join("linked.yaml"), yaml).unwrap();
    let rt = crate::run::runtime();
    let (server, _client) = rt.block_on(crate::run::open_store(&ctx.child("hubsweep-home")));
    let endpoint = server.base_url().trim_end_matches('/').to_owned();
    let emitted = crate::run::hubsweep(&ctx)
        .current_dir(&paper)
        .args(["emit", "linked.yaml", "--out", "linked"])
        .env("HF_ENDPOINT", &endpoint)
        .output()
        .unwrap();
    rt.block_on(server.shutdown());
    assert!(emitted.status.success(), "{}", output_text(&emitted));
    std::fs::write(
        paper.join("linked.tex"),
        "\\pdfcompresslevel=0 \\pdfobjcompresslevel=0\n\\documentclass{article}\n\\usepackage{hyperref}\n\\input{linked/values}\n\\begin{document}\nMean \\srankMean{}.\n\\end{document}\n",
    )
    .unwrap();
    run(Command::new(&pdflatex).current_dir(&paper).args([
        "-interaction=nonstopmode",
        "-halt-on-error",
        "linked.tex",
    ]));
    let pdf = std::fs::read(paper.join("linked.pdf")).unwrap();
    let url = format!(
        "/URI({endpoint}/datasets/hubsweep/quickstart/resolve/{sha}/metrics/spectra.jsonl)"
    );
    assert!(
        String::from_utf8_lossy(&pdf).contains(&url),
        "no `{url}` in the PDF"
    );
    let text = run(Command::new(&pdftotext)
        .arg(paper.join("linked.pdf"))
        .arg("-"))
    .stdout;
    let mean = values["values"]["srankMean"]["text"].as_str().unwrap();
    assert!(String::from_utf8_lossy(&text).contains(&format!("Mean {mean}.")));
}
