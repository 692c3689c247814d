//! PNG plots from the CSVs in `bench/results/` (plotters, bitmap backend;
//! text through ab_glyph with a TTF font read at run time).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use plotters::style::FontStyle;

type Res<T> = Result<T, String>;

/// Fonts tried in order (Debian: fonts-dejavu-core).
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Registers a TTF font as "sans-serif"; `font` overrides the search.
pub fn init_font(font: Option<&Path>) -> Res<PathBuf> {
    let path = match font {
        Some(p) => p.to_path_buf(),
        None => FONTS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .ok_or("no TTF font found: install fonts-dejavu-core or pass --font FILE")?,
    };
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| format!("{}: not a usable TTF font", path.display()))?;
    Ok(path)
}

/// A CSV file as rows of named columns (our own files: no quoting).
pub struct Csv {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Csv {
    pub fn read(path: &Path) -> Res<Csv> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut lines = text.lines();
        let header = lines
            .next()
            .ok_or(format!("{}: empty", path.display()))?
            .split(',')
            .map(str::to_string)
            .collect();
        let rows = lines
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.split(',').map(str::to_string).collect())
            .collect();
        Ok(Csv { header, rows })
    }

    fn col(&self, name: &str) -> Res<usize> {
        self.header
            .iter()
            .position(|h| h == name)
            .ok_or(format!("no column {name}"))
    }

    /// Rows where `filters` match, as (x, y) numbers (rows with an empty
    /// or non-numeric field skipped).
    pub fn xy(&self, x: &str, y: &str, filters: &[(&str, &str)]) -> Res<Vec<(f64, f64)>> {
        let (xi, yi) = (self.col(x)?, self.col(y)?);
        let fi: Vec<(usize, &str)> = filters
            .iter()
            .map(|(c, v)| self.col(c).map(|i| (i, *v)))
            .collect::<Res<_>>()?;
        let mut out: Vec<(f64, f64)> = self
            .rows
            .iter()
            .filter(|r| {
                fi.iter()
                    .all(|(i, v)| r.get(*i).map(String::as_str) == Some(*v))
            })
            .filter_map(|r| Some((r.get(xi)?.parse().ok()?, r.get(yi)?.parse().ok()?)))
            .collect();
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        Ok(out)
    }

    pub fn column(&self, name: &str, filters: &[(&str, &str)]) -> Res<Vec<f64>> {
        Ok(self
            .xy(name, name, filters)?
            .into_iter()
            .map(|p| p.0)
            .collect())
    }
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

struct Series {
    label: String,
    points: Vec<(f64, f64)>,
    dashed: bool,
}

/// A line chart with a log-scaled x axis (N) and a linear y axis.
fn log_n_chart(
    out: &Path,
    title: &str,
    y_label: &str,
    series: &[Series],
    hline: Option<(f64, &str)>,
) -> Res<()> {
    let xs: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .collect();
    if xs.is_empty() {
        return Err(format!("{}: no data", out.display()));
    }
    let xmin = xs.iter().copied().fold(f64::INFINITY, f64::min) * 0.8;
    let xmax = xs.iter().copied().fold(0.0, f64::max) * 1.25;
    let mut ymax = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0, f64::max);
    if let Some((y, _)) = hline {
        ymax = ymax.max(y);
    }
    let ymax = ymax * 1.15 + 1e-9;
    let root = BitMapBackend::new(out, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((xmin..xmax).log_scale(), 0f64..ymax)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("members (N, log scale)")
        .y_desc(y_label)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .light_line_style(RGBColor(238, 238, 238))
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(|e| e.to_string())?;
    for (k, s) in series.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        let style = color.stroke_width(2);
        if s.dashed {
            chart
                .draw_series(DashedLineSeries::new(s.points.clone(), 8, 5, style))
                .map_err(|e| e.to_string())?
                .label(s.label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        } else {
            chart
                .draw_series(LineSeries::new(s.points.clone(), style))
                .map_err(|e| e.to_string())?
                .label(s.label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        }
        chart
            .draw_series(s.points.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(|e| e.to_string())?;
    }
    if let Some((y, label)) = hline {
        let style = BLACK.mix(0.6).stroke_width(1);
        chart
            .draw_series(DashedLineSeries::new(
                vec![(xmin, y), (xmax, y)],
                4,
                4,
                style,
            ))
            .map_err(|e| e.to_string())?
            .label(label.to_string())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", 15))
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

/// convergence_vs_n.png from sim_summary.csv.
pub fn convergence(dir: &Path) -> Res<PathBuf> {
    let csv = Csv::read(&dir.join("sim_summary.csv"))?;
    let mut series = Vec::new();
    for phase in ["join", "fail", "leave"] {
        for (col, what, dashed) in [
            ("member_p50_ms", "p50", true),
            ("member_p999_ms", "p99.9", false),
        ] {
            let pts = csv
                .xy("n", col, &[("phase", phase)])?
                .into_iter()
                .map(|(x, y)| (x, y / 1000.0))
                .collect();
            series.push(Series {
                label: format!("{phase} {what}"),
                points: pts,
                dashed,
            });
        }
    }
    let gossip = csv
        .column("gossip_ms", &[])?
        .first()
        .copied()
        .unwrap_or(0.0);
    let out = dir.join("convergence_vs_n.png");
    log_n_chart(
        &out,
        &format!("Simulated: time until members know (from the action), gossip {gossip:.0} ms"),
        "seconds",
        &series,
        Some((3.0, "3 s target")),
    )?;
    Ok(out)
}

/// dissemination_vs_n.png from sim_summary.csv: p99.9 delay after the
/// first member knew (the spread itself, without detection time).
pub fn dissemination(dir: &Path) -> Res<PathBuf> {
    let csv = Csv::read(&dir.join("sim_summary.csv"))?;
    let mut series = Vec::new();
    for phase in ["join", "fail", "leave"] {
        let pts = csv
            .xy("n", "after_first_p999_ms", &[("phase", phase)])?
            .into_iter()
            .map(|(x, y)| (x, y / 1000.0))
            .collect();
        series.push(Series {
            label: format!("{phase}: p99.9 after the first member knew"),
            points: pts,
            dashed: false,
        });
    }
    let out = dir.join("dissemination_vs_n.png");
    log_n_chart(
        &out,
        "Simulated: spread once the first member knows (p99.9 over members)",
        "seconds",
        &series,
        Some((3.0, "3 s target")),
    )?;
    Ok(out)
}

/// bytes_vs_n.png from sim_steady.csv (0% loss rows).
pub fn bytes(dir: &Path) -> Res<PathBuf> {
    let csv = Csv::read(&dir.join("sim_steady.csv"))?;
    let kb = |v: Vec<(f64, f64)>| v.into_iter().map(|(x, y)| (x, y / 1000.0)).collect();
    let series = vec![
        Series {
            label: "UDP (gossip, probes)".into(),
            points: kb(csv.xy("n", "udp_bytes_per_member_s", &[("loss_pct", "0")])?),
            dashed: true,
        },
        Series {
            label: "UDP + TCP push-pull".into(),
            points: kb(csv.xy("n", "total_bytes_per_member_s", &[("loss_pct", "0")])?),
            dashed: false,
        },
    ];
    let out = dir.join("bytes_vs_n.png");
    log_n_chart(
        &out,
        "Simulated: bytes sent per member per second (payload, 0% loss)",
        "KB/s per member",
        &series,
        Some((10.0, "10 KB/s target")),
    )?;
    Ok(out)
}

/// detection_shoal_vs_serf.png from real_observations.csv: per-observer
/// delays (kill -9 → member-failed handler, SIGTERM → member-leave) as CDFs.
pub fn detection(dir: &Path) -> Res<PathBuf> {
    let csv = Csv::read(&dir.join("real_observations.csv"))?;
    let si = csv.col("system")?;
    let sc = csv.col("scenario")?;
    let ni = csv.col("n")?;
    let vi = csv.col("seconds")?;
    let mut groups: BTreeMap<(String, String, String), Vec<f64>> = BTreeMap::new();
    // Observations per (system, n), and how many never saw the event.
    let mut missing: BTreeMap<(String, String), (usize, usize)> = BTreeMap::new();
    for r in &csv.rows {
        let (Some(s), Some(c), Some(n), Some(v)) = (r.get(si), r.get(sc), r.get(ni), r.get(vi))
        else {
            continue;
        };
        if c == "join" {
            continue;
        }
        let m = missing.entry((s.clone(), n.clone())).or_default();
        m.0 += 1;
        m.1 += usize::from(v.is_empty());
        if let Ok(v) = v.parse::<f64>() {
            groups
                .entry((c.clone(), s.clone(), n.clone()))
                .or_default()
                .push(v);
        }
    }
    // The largest N where both systems delivered (almost) every event: one
    // size keeps the chart readable, and an overloaded run says nothing.
    let sizes: Vec<usize> = groups.keys().filter_map(|k| k.2.parse().ok()).collect();
    let both = |n: usize| {
        ["shoal", "serf"].iter().all(|s| {
            missing
                .get(&(s.to_string(), n.to_string()))
                .is_some_and(|&(total, miss)| total > 0 && miss * 20 < total)
        })
    };
    let Some(n_max) = sizes.iter().copied().filter(|&n| both(n)).max() else {
        return Err("real_observations.csv: no fail/leave delays for both systems".into());
    };
    groups.retain(|k, _| k.2 == n_max.to_string());
    let xmax = groups
        .values()
        .flat_map(|v| v.iter().copied())
        .fold(0.0, f64::max)
        * 1.05
        + 0.1;
    let out = dir.join("detection_shoal_vs_serf.png");
    let root = BitMapBackend::new(&out, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Real processes: delay until each member's handler saw the event (CDF)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..xmax, 0f64..1.02)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("seconds after kill -9 (failed: solid) / graceful stop (leave: dashed)")
        .y_desc("fraction of members")
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(|e| e.to_string())?;
    for (k, ((scenario, system, n), mut v)) in groups.into_iter().enumerate() {
        v.sort_by(f64::total_cmp);
        let len = v.len() as f64;
        let mut pts = vec![(0.0, 0.0)];
        for (i, x) in v.iter().enumerate() {
            pts.push((*x, i as f64 / len));
            pts.push((*x, (i + 1) as f64 / len));
        }
        let color = if system == "shoal" {
            COLORS[0]
        } else {
            COLORS[1]
        };
        let style = color.stroke_width(2);
        let label = format!("{system} {scenario} (N={n}, {} obs.)", v.len());
        if scenario == "leave" {
            chart
                .draw_series(DashedLineSeries::new(pts, 8, 5, style))
                .map_err(|e| e.to_string())?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        } else {
            chart
                .draw_series(LineSeries::new(pts, style))
                .map_err(|e| e.to_string())?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        }
        let _ = k;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", 15))
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())?;
    drop(chart);
    drop(root);
    Ok(out)
}

/// Every plot whose CSV exists; returns what was written and what was skipped.
pub fn all(dir: &Path) -> (Vec<PathBuf>, Vec<String>) {
    let mut done = Vec::new();
    let mut skipped = Vec::new();
    type PlotFn = fn(&Path) -> Res<PathBuf>;
    let plots: [(&str, PlotFn); 4] = [
        ("convergence", convergence),
        ("dissemination", dissemination),
        ("bytes", bytes),
        ("detection", detection),
    ];
    for (name, f) in plots {
        match f(dir) {
            Ok(p) => done.push(p),
            Err(e) => skipped.push(format!("{name}: {e}")),
        }
    }
    (done, skipped)
}
