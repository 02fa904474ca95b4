//! Draws the benchmark's plots from bench/out/results.json (written by bench/run.py):
//! throughput and p99 latency against concurrency, one line per contender, one panel per body
//! size. `cargo run --release --example bench_plot -- RESULTS_JSON OUT_DIR`

use std::collections::BTreeMap;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const COLORS: [RGBColor; 4] = [
    RGBColor(90, 90, 90),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
];

type Series = BTreeMap<String, Vec<(usize, f64)>>;

fn draw(
    path: &str,
    title: &str,
    unit: &str,
    panels: &BTreeMap<u64, Series>,
    levels: &[u64],
    log_y: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let root = BitMapBackend::new(path, (1500, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, rest) = root.split_vertically(40);
    top.titled(title, ("sans-serif", 24))?;
    let areas = rest.split_evenly((1, panels.len().max(1)));
    for (area, (size, series)) in areas.iter().zip(panels) {
        let max = series
            .values()
            .flatten()
            .map(|p| p.1)
            .fold(0.0, f64::max)
            .max(1e-3)
            * 1.15;
        let min = series
            .values()
            .flatten()
            .map(|p| p.1)
            .fold(f64::MAX, f64::min)
            .max(1e-3)
            / 1.5;
        let caption = format!("body {} KiB", size / 1024);
        let mut chart = ChartBuilder::on(area);
        chart
            .caption(caption, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(70);
        let x_labels: Vec<String> = levels.iter().map(|l| l.to_string()).collect();
        let x_fmt = |x: &usize| x_labels.get(*x).cloned().unwrap_or_default();
        macro_rules! body {
            ($chart:expr) => {{
                let mut chart = $chart;
                chart
                    .configure_mesh()
                    .x_labels(levels.len())
                    .x_label_formatter(&x_fmt)
                    .x_desc("connections")
                    .y_desc(unit)
                    .draw()?;
                for (i, (name, points)) in series.iter().enumerate() {
                    let color = COLORS[i % COLORS.len()];
                    chart
                        .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                        .label(name.as_str())
                        .legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(3))
                        });
                    chart.draw_series(points.iter().map(|p| Circle::new(*p, 4, color.filled())))?;
                }
                chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK)
                    .position(SeriesLabelPosition::UpperLeft)
                    .draw()?;
            }};
        }
        let xs = 0usize..levels.len().saturating_sub(1).max(1);
        if log_y {
            body!(chart.build_cartesian_2d(xs, (min..max).log_scale())?);
        } else {
            body!(chart.build_cartesian_2d(xs, 0.0..max)?);
        }
    }
    root.present()?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let results = args
        .next()
        .unwrap_or_else(|| "bench/out/results.json".into());
    let out = args.next().unwrap_or_else(|| "bench".into());
    let font = std::fs::read(FONT)
        .map_err(|e| format!("{FONT}: {e} (apt-get install fonts-dejavu-core)"))?;
    register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(font.into_boxed_slice()),
    )
    .map_err(|_| "cannot load the font")?;
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&results)?)?;
    let points = doc["points"].as_array().ok_or("no points")?;
    let mut levels: Vec<u64> = points
        .iter()
        .filter_map(|p| p["concurrency"].as_u64())
        .collect();
    levels.sort_unstable();
    levels.dedup();
    let mut rps: BTreeMap<u64, Series> = BTreeMap::new();
    let mut p99: BTreeMap<u64, Series> = BTreeMap::new();
    for p in points {
        let size = p["size"].as_u64().unwrap_or(0);
        let x = levels
            .iter()
            .position(|l| Some(*l) == p["concurrency"].as_u64())
            .unwrap_or(0);
        let name = p["contender"].as_str().unwrap_or("?").to_string();
        rps.entry(size)
            .or_default()
            .entry(name.clone())
            .or_default()
            .push((x, p["rps"].as_f64().unwrap_or(0.0)));
        p99.entry(size)
            .or_default()
            .entry(name)
            .or_default()
            .push((x, p["p99_ms"].as_f64().unwrap_or(0.0)));
    }
    for series in rps.values_mut().chain(p99.values_mut()) {
        for v in series.values_mut() {
            v.sort_by_key(|p| p.0);
        }
    }
    draw(
        &format!("{out}/throughput.png"),
        "Throughput (2xx answers per second)",
        "requests/s",
        &rps,
        &levels,
        false,
    )?;
    draw(
        &format!("{out}/p99.png"),
        "p99 answer latency (log scale)",
        "ms",
        &p99,
        &levels,
        true,
    )?;
    println!("wrote {out}/throughput.png and {out}/p99.png");
    Ok(())
}
