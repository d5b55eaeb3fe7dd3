//! The progress of a run on stderr: one line per notable event, and on a terminal a bar.

use std::sync::{Arc, Mutex};

use hubsweep::exec::{RunEvent, RunEvents};
use hubsweep::sink::SinkEvent;
use hubsweep::spec::units::format_bytes;

/// Prints progress: one line per notable event, and on a terminal a bar (without colour) of
/// the activation artifacts' bytes uploaded against their exact total (the small analysis
/// files are left out), with throughput and ETA, the nodes recorded in the ledger and the
/// tokens captured.
pub fn progress_printer() -> RunEvents {
    use std::io::IsTerminal as _;
    /// Counts behind the bar's message.
    #[derive(Default)]
    struct Counts {
        tokens: usize,
        nodes: usize,
        pending: usize,
    }
    let counts = Arc::new(Mutex::new(Counts::default()));
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::hidden();
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {bytes}/{total_bytes} of activations uploaded ({bytes_per_sec}, ETA {eta}) {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    // Lines go above the bar (through it) on a terminal, straight to stderr otherwise.
    let say = {
        let bar = bar.clone();
        move |line: String| match &bar {
            Some(bar) if !bar.is_hidden() => bar.println(line),
            _ => eprintln!("{line}"),
        }
    };
    let tally = {
        let bar = bar.clone();
        move |update: &dyn Fn(&mut Counts)| {
            let (Some(bar), Ok(mut counts)) = (&bar, counts.lock()) else {
                return;
            };
            update(&mut counts);
            bar.set_message(format!(
                "· {}/{} nodes · {} tokens captured",
                counts.nodes.min(counts.pending),
                counts.pending,
                counts.tokens
            ));
        }
    };
    Arc::new(move |event: &RunEvent| {
        match event {
            RunEvent::Planned {
                nodes,
                done,
                pending_bytes,
            } => {
                if let Some(bar) = &bar {
                    bar.set_length(*pending_bytes);
                    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                }
                tally(&|counts| counts.pending = nodes.saturating_sub(*done));
            }
            RunEvent::Sink(SinkEvent::Uploaded { path, bytes, .. }) => {
                if let Some(bar) = bar
                    .as_ref()
                    .filter(|_| path.starts_with(hubsweep::plan::ACTIVATIONS_DIR))
                {
                    bar.inc(*bytes);
                }
            }
            RunEvent::Sink(SinkEvent::Committed { records, .. }) => {
                tally(&|counts| counts.nodes += records);
            }
            RunEvent::ShardDone { tokens, .. } => tally(&|counts| counts.tokens += tokens),
            _ => {}
        }
        if let Some(line) = describe(event) {
            say(line);
        }
    })
}

/// The log line of an event, if it gets one.
fn describe(event: &RunEvent) -> Option<String> {
    let short = |text: &str, n: usize| text[..text.len().min(n)].to_owned();
    Some(match event {
        RunEvent::Pinned {
            label,
            commit,
            windows,
        } if *windows == 0 => format!("pinned   {label} → {}", short(commit, 19)),
        RunEvent::Pinned {
            label,
            commit,
            windows,
        } => {
            format!(
                "pinned   {label} → {} ({windows} windows)",
                short(commit, 19)
            )
        }
        RunEvent::Planned {
            nodes,
            done,
            pending_bytes,
        } => format!(
            "plan     {nodes} nodes, {done} already in the ledger, {} of artifacts to make",
            format_bytes(*pending_bytes)
        ),
        RunEvent::Downloading { label, files } => {
            format!("download {label}: {files} weight file(s) into the HF cache")
        }
        RunEvent::ModelStarted { label, shards } => format!("capture  {label}: {shards} shard(s)"),
        RunEvent::ModelSkipped { label } => format!("skip     {label}: already in the ledger"),
        RunEvent::ModelFailed { label, error } => format!("FAILED   {label}: {error}"),
        RunEvent::Sink(SinkEvent::Committed {
            commit,
            files,
            records,
        }) => {
            format!(
                "commit   {} ({files} files, {records} records)",
                short(commit, 12)
            )
        }
        RunEvent::Sink(SinkEvent::Throttled { wait }) => {
            format!("waiting  {}s for the commit rate limit", wait.as_secs())
        }
        RunEvent::Sink(SinkEvent::UploadFailed { path, error }) => {
            format!("FAILED   upload of {path}: {error}")
        }
        RunEvent::Evicted {
            label,
            freed,
            error,
        } => match error {
            None => format!(
                "evicted  {label}: {} of weights deleted from the HF cache",
                format_bytes(*freed)
            ),
            Some(error) => format!("warning  {label}: cannot delete its weights: {error}"),
        },
        RunEvent::CardLeftAlone => "card     README.md was not written by hubsweep: left as it is \
                                    (add the tables' `configs` yourself, docs/ledger.md)"
            .to_owned(),
        RunEvent::ShardDone { .. } | RunEvent::Sink(SinkEvent::Uploaded { .. }) => return None,
    })
}
