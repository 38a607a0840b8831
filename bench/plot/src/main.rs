//! `poolgate-bench-plot RESULTS_DIR OUT.png FONT.ttf`: throughput and p99 latency versus
//! connection count for the rpc and echo runs (`{mode}-{connections}-{pipeline}.json`), one
//! line per mode and pipeline depth, throughput on the left, p99 on the right.
//!
//! `poolgate-bench-plot soak SOAK.csv OUT.png FONT.ttf`: the soak's figures over time
//! (`bench/soak.sh`).

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

type Series = BTreeMap<(String, u64), Vec<(u64, f64, f64)>>;

fn load(dir: &Path) -> anyhow::Result<Series> {
    let mut series = Series::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if !(name.starts_with("rpc-") || name.starts_with("echo-")) || !name.ends_with(".json") {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
        let (Some(mode), Some(c), Some(p), Some(rps), Some(p99)) = (
            v["mode"].as_str(),
            v["connections"].as_u64(),
            v["pipeline"].as_u64(),
            v["per_second"].as_f64(),
            v["latency_us"]["p99"].as_f64(),
        ) else {
            continue;
        };
        series
            .entry((mode.to_owned(), p))
            .or_default()
            .push((c, rps, p99 / 1000.0));
    }
    for points in series.values_mut() {
        points.sort_by_key(|p| p.0);
    }
    Ok(series)
}

/// `soak CSV OUT.png FONT.ttf`: the soak's RSS, open file descriptors, store size and p99
/// over time (the CSV of examples/soak.rs), one panel each.
fn soak(csv: &str, out: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(csv)?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let rows: Vec<Vec<f64>> = lines
        .map(|l| l.split(',').map(|v| v.parse().unwrap_or(0.0)).collect())
        .collect();
    anyhow::ensure!(!rows.is_empty(), "no samples in {csv}");
    let minute = col("minute").ok_or_else(|| anyhow::anyhow!("no minute column"))?;
    let max_minute = rows.iter().map(|r| r[minute]).fold(1.0, f64::max);
    let root = BitMapBackend::new(out, (1400, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let areas = root.split_evenly((2, 2));
    for (area, (name, title, scale, unit)) in areas.iter().zip([
        ("rss_kib", "Server RSS", 1.0 / 1024.0, "MiB"),
        ("fds", "Open file descriptors", 1.0, "fds"),
        (
            "store_kib",
            "Data directory (the store)",
            1.0 / 1024.0,
            "MiB",
        ),
        (
            "p99_us",
            "p99 of the round trips (per sample)",
            1.0 / 1000.0,
            "ms",
        ),
    ]) {
        let c = col(name).ok_or_else(|| anyhow::anyhow!("no {name} column"))?;
        let points: Vec<(f64, f64)> = rows.iter().map(|r| (r[minute], r[c] * scale)).collect();
        let y_max = points.iter().map(|p| p.1).fold(0.0, f64::max) * 1.15 + f64::EPSILON;
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 22))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..max_minute, 0.0..y_max)?;
        chart
            .configure_mesh()
            .x_desc("minutes")
            .y_desc(unit)
            .label_style(("sans-serif", 15))
            .draw()?;
        chart.draw_series(LineSeries::new(points, RED.stroke_width(2)))?;
    }
    root.present()?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().collect();
    let soak_plot = args.get(1).is_some_and(|a| a == "soak");
    if soak_plot {
        args.remove(1);
    }
    anyhow::ensure!(
        args.len() == 4,
        "usage: {0} RESULTS_DIR OUT.png FONT.ttf | {0} soak SOAK.csv OUT.png FONT.ttf",
        args[0]
    );
    let font: &'static [u8] = Box::leak(std::fs::read(&args[3])?.into_boxed_slice());
    register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| anyhow::anyhow!("cannot load the font {}", args[3]))?;
    if soak_plot {
        return soak(&args[1], &args[2]);
    }
    let series = load(Path::new(&args[1]))?;
    anyhow::ensure!(!series.is_empty(), "no rpc-/echo- results in {}", args[1]);
    let max_c = series.values().flatten().map(|p| p.0).max().unwrap_or(1) as f64;
    let max_rps = series.values().flatten().map(|p| p.1).fold(1.0, f64::max);
    let max_p99 = series.values().flatten().map(|p| p.2).fold(1.0, f64::max);

    let root = BitMapBackend::new(&args[2], (1400, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(700);
    let colour = |mode: &str, pipe: u64| match (mode, pipe) {
        ("rpc", 1) => RED,
        ("rpc", _) => MAGENTA,
        (_, 1) => BLUE,
        _ => CYAN,
    };
    for (area, title, y_max, pick, y_desc) in [
        (
            &left,
            "Round trips per second",
            max_rps * 1.1,
            1usize,
            "requests/s",
        ),
        (&right, "p99 latency", max_p99 * 1.1, 2usize, "ms"),
    ] {
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 24))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d((1f64..max_c * 1.5).log_scale(), 0f64..y_max)?;
        chart
            .configure_mesh()
            .x_desc("connections")
            .y_desc(y_desc)
            .label_style(("sans-serif", 14))
            .draw()?;
        for ((mode, pipe), points) in &series {
            let style = colour(mode, *pipe);
            let data: Vec<(f64, f64)> = points
                .iter()
                .map(|p| (p.0 as f64, if pick == 1 { p.1 } else { p.2 }))
                .collect();
            chart
                .draw_series(LineSeries::new(data.clone(), style.stroke_width(2)))?
                .label(format!("{mode}, {pipe} in flight"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            chart.draw_series(
                data.iter()
                    .map(|&(x, y)| Circle::new((x, y), 4, style.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font(("sans-serif", 14))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    eprintln!("wrote {}", args[2]);
    Ok(())
}
