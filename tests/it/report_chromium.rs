//! `hubsweep report` pages rendered by a real browser: headless Chromium (Debian's `chromium`,
//! installed by `scripts/test.d/30-chromium.sh`, path in `HUBSWEEP_CHROMIUM`) takes a screenshot
//! and dumps the DOM it laid out; the tests decode the PNG and count the drawn elements.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{TestContext, peers_required};

/// Screenshot size: wide enough for the 1100-pixel plots, tall enough for several of them.
pub(crate) const WIDTH: u32 = 1200;
/// See [`WIDTH`].
pub(crate) const HEIGHT: u32 = 2000;

/// The Chromium binary, or `None` (with a note) when it is not installed and peers are optional.
pub(crate) fn chromium() -> Option<PathBuf> {
    match std::env::var_os("HUBSWEEP_CHROMIUM") {
        Some(path) if Path::new(&path).exists() => Some(PathBuf::from(path)),
        _ => {
            assert!(
                !peers_required(),
                "HUBSWEEP_CHROMIUM is not set or missing: source scripts/test.d/30-chromium.sh"
            );
            eprintln!("skip: HUBSWEEP_CHROMIUM not set; the report is not rendered in a browser");
            None
        }
    }
}

/// Runs headless Chromium on `page` with `mode` (`--screenshot=…` or `--dump-dom`), offline
/// and with a fresh profile; returns stdout. A browser that hangs is killed after a minute.
fn chromium_run(chromium: &Path, ctx: &TestContext, page: &Path, mode: &str) -> Vec<u8> {
    let profile = ctx.child(&format!("chromium-profile-{}", mode.len()));
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--window-size={WIDTH},{HEIGHT}"))
        .arg(mode)
        .arg(format!("file://{}", page.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut stdout = stdout;
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut bytes).unwrap();
        bytes
    });
    let stderr = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut stderr = stderr;
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("chromium {mode} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = err_reader.join().unwrap();
    assert!(status.success(), "chromium {mode}: {status}\n{stderr}");
    reader.join().unwrap()
}

/// A decoded screenshot: RGB pixels, row-major.
pub(crate) struct Screenshot {
    pub(crate) width: u32,
    pub(crate) height: u32,
    pixels: Vec<[u8; 3]>,
}

impl Screenshot {
    /// Pixels within `tolerance` per channel of `colour` (`0xRRGGBB`).
    pub(crate) fn count_near(&self, colour: u32, tolerance: u8) -> usize {
        let target = [(colour >> 16) as u8, (colour >> 8) as u8, colour as u8];
        self.pixels
            .iter()
            .filter(|p| {
                p.iter()
                    .zip(target)
                    .all(|(a, b)| a.abs_diff(b) <= tolerance)
            })
            .count()
    }

    /// Pixels that are not white.
    pub(crate) fn inked(&self) -> usize {
        self.pixels
            .iter()
            .filter(|p| **p != [255, 255, 255])
            .count()
    }

    /// Variance of the grey level over all pixels (0 for a blank page).
    pub(crate) fn grey_variance(&self) -> f64 {
        let grey: Vec<f64> = self
            .pixels
            .iter()
            .map(|p| (f64::from(p[0]) + f64::from(p[1]) + f64::from(p[2])) / 3.0)
            .collect();
        let mean = grey.iter().sum::<f64>() / grey.len() as f64;
        grey.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / grey.len() as f64
    }
}

fn decode_png(bytes: &[u8]) -> Screenshot {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    // Palette and 16-bit images come out as 8-bit RGB(A).
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().expect("PNG header");
    let mut buffer = vec![0; reader.output_buffer_size().expect("PNG size")];
    let frame = reader.next_frame(&mut buffer).expect("PNG data");
    let channels = frame.color_type.samples();
    assert!(
        channels >= 3,
        "a colour screenshot, got {:?}",
        frame.color_type
    );
    let pixels = buffer[..frame.buffer_size()]
        .chunks_exact(channels)
        .map(|p| [p[0], p[1], p[2]])
        .collect();
    Screenshot {
        width: frame.width,
        height: frame.height,
        pixels,
    }
}

/// What a browser made of a report page.
pub(crate) struct Rendered {
    /// The screenshot.
    pub(crate) screenshot: Screenshot,
    /// The DOM after parsing and layout, serialized.
    pub(crate) dom: String,
}

/// Renders `page` (an HTML file) in headless Chromium: a screenshot of [`WIDTH`] × [`HEIGHT`],
/// and the DOM. Also keeps the PNG next to the page (`….png`) for a person to look at.
pub(crate) fn render(chromium: &Path, ctx: &TestContext, page: &Path) -> Rendered {
    let png_path = page.with_extension("png");
    chromium_run(
        chromium,
        ctx,
        page,
        &format!("--screenshot={}", png_path.display()),
    );
    let png = std::fs::read(&png_path).expect("chromium wrote the screenshot");
    let screenshot = decode_png(&png);
    let dom = String::from_utf8(chromium_run(chromium, ctx, page, "--dump-dom")).unwrap();
    if let Some(keep) = std::env::var_os("HUBSWEEP_KEEP_SCREENSHOTS") {
        let name = page.file_name().unwrap();
        let keep = Path::new(&keep);
        std::fs::create_dir_all(keep).unwrap();
        std::fs::copy(&png_path, keep.join(name).with_extension("png")).unwrap();
        std::fs::copy(page, keep.join(name)).unwrap();
    }
    Rendered { screenshot, dom }
}

/// The part of the DOM from `<TAG id="ID"` to the matching close tag (figures and tables are
/// not nested in themselves).
pub(crate) fn element<'a>(dom: &'a str, tag: &str, id: &str) -> &'a str {
    let start = dom
        .find(&format!("<{tag} id=\"{id}\""))
        .unwrap_or_else(|| panic!("no <{tag} id=\"{id}\"> in the rendered page"));
    let end = start + dom[start..].find(&format!("</{tag}>")).unwrap();
    &dom[start..end]
}

/// One plot the page must draw.
pub(crate) struct ExpectedPlot<'a> {
    /// Figure id.
    pub(crate) id: &'a str,
    /// Lines (polylines), one per series.
    pub(crate) lines: usize,
    /// Points marked with a circle (0 for plots without markers).
    pub(crate) markers: usize,
    /// Axis labels and legend texts that must appear as SVG text.
    pub(crate) texts: &'a [&'a str],
}

/// Checks a rendered report: the screenshot has the requested size, is not blank and shows
/// the first two series colours; the DOM has every expected plot with its lines, markers and
/// labels, and each table has one row per record.
pub(crate) fn check_report(
    rendered: &Rendered,
    plots: &[ExpectedPlot<'_>],
    tables: &[(&str, usize)],
) {
    let shot = &rendered.screenshot;
    assert_eq!(
        (shot.width, shot.height),
        (WIDTH, HEIGHT),
        "screenshot size"
    );
    let total = shot.pixels.len();
    // A blank (all white) page has no ink and no variance; plots with text and lines have
    // some percent of inked pixels.
    assert!(
        shot.inked() > total / 100,
        "the screenshot is (nearly) blank: {} of {total} pixels inked",
        shot.inked()
    );
    assert!(
        shot.grey_variance() > 50.0,
        "variance {}",
        shot.grey_variance()
    );
    // The first two series colours of the plots (svg.rs `COLOURS`), drawn 2-3 pixels wide.
    for colour in [0x1f77b4, 0xd62728] {
        let count = shot.count_near(colour, 12);
        assert!(count > 200, "colour #{colour:06x} drawn on {count} pixels");
    }
    let dom = &rendered.dom;
    assert!(!dom.contains("<script"), "the page has no script");
    for plot in plots {
        let figure = element(dom, "figure", plot.id);
        assert_eq!(
            figure.matches("<polyline").count(),
            plot.lines,
            "lines of {}",
            plot.id
        );
        assert_eq!(
            figure.matches("<circle").count(),
            plot.markers,
            "markers of {}",
            plot.id
        );
        for text in plot.texts {
            assert!(
                figure.contains(&format!(">{text}</text>")),
                "{}: no text `{text}`",
                plot.id
            );
        }
    }
    for (id, rows) in tables {
        let table = element(dom, "table", id);
        // The header row plus one per record.
        assert_eq!(
            table.matches("<tr>").count(),
            rows + 1,
            "rows of table {id}"
        );
    }
}
