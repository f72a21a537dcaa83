//! The report's figures and its one-file HTML page.
use crate::eval::plots::{class_color, e, render, series_color, Draw, Figure};
use super::{Report, RunReport, StageReport};
use anyhow::Result;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

const FONT: &str = "sans-serif";

/// One line of a comparison figure: a run's stage.
struct Series<'a> {
    label: String,
    run: &'a RunReport,
    stage: &'a StageReport,
}

fn series(report: &Report) -> Vec<Series<'_>> {
    report.runs.iter().flat_map(|run| run.stages.iter().map(move |stage| Series { label: format!("{} stage {}", run.name, stage.stage), run, stage })).collect()
}

/// Classes from the most to the fewest training images.
fn head_to_tail(counts: &[usize]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..counts.len()).collect();
    order.sort_by(|&a, &b| counts[b].cmp(&counts[a]).then(a.cmp(&b)));
    order
}

/// Labelled ticks of a log axis over the data's range [lo, hi]: 1-2-5 steps; 1, 1.5, 2, 3,
/// 5, 7 steps where those leave fewer than five; every distinct value of `data` where even
/// that leaves fewer than three. (plotters' own log ticks label only powers of ten and a few
/// others.)
pub fn log_ticks(lo: f64, hi: f64, data: &[f64]) -> Vec<f64> {
    let within = |steps: &[f64]| -> Vec<f64> {
        let mut out = Vec::new();
        let mut decade = 10f64.powi(lo.max(1e-9).log10().floor() as i32);
        while decade <= hi {
            out.extend(steps.iter().map(|m| m * decade).filter(|v| *v >= lo * (1.0 - 1e-9) && *v <= hi * (1.0 + 1e-9)));
            decade *= 10.0;
        }
        out
    };
    for (steps, enough) in [(&[1.0, 2.0, 5.0][..], 5), (&[1.0, 1.5, 2.0, 3.0, 5.0, 7.0], 3)] {
        let t = within(steps);
        if t.len() >= enough {
            return t;
        }
    }
    let mut t: Vec<f64> = data.to_vec();
    t.sort_by(f64::total_cmp);
    t.dedup();
    t
}

/// A tick's label: whole numbers without decimals.
fn tick_label(v: &f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

fn bounds(v: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = v.filter(|x| x.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), x| (l.min(x), h.max(x)));
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.08).max(1e-6);
    (lo - pad, hi + pad)
}

struct Tsne<'a> {
    run: &'a RunReport,
    stage: &'a StageReport,
}

impl Draw for Tsne<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let t = &self.stage.tsne;
        let (x0, x1) = bounds(t.xy.iter().map(|p| p[0] as f64));
        let (y0, y1) = bounds(t.xy.iter().map(|p| p[1] as f64));
        let caption = format!("{}, stage {}: t-SNE of {} of {} test images", self.run.name, self.stage.stage, t.points, t.of);
        let mut chart = ChartBuilder::on(root).caption(caption, (FONT, 18)).margin(10).build_cartesian_2d(x0..x1 + (x1 - x0) * 0.45, y0..y1).map_err(e)?;
        chart.configure_mesh().disable_mesh().disable_axes().draw().map_err(e)?;
        let n = self.run.train_counts.len();
        for &c in &head_to_tail(&self.run.train_counts) {
            let color = class_color(c, n);
            let pts: Vec<(f64, f64)> = t.xy.iter().zip(&t.labels).filter(|(_, &l)| l as usize == c).map(|(p, _)| (p[0] as f64, p[1] as f64)).collect();
            let tail = self.run.tail_classes.contains(&c);
            let name = format!("{} ({}){}", self.run.class_names.get(c).cloned().unwrap_or(c.to_string()), self.run.train_counts[c], if tail { " tail" } else { "" });
            if tail {
                chart
                    .draw_series(pts.iter().map(|&p| TriangleMarker::new(p, 5, color.filled())))
                    .map_err(e)?
                    .label(name)
                    .legend(move |(x, y)| TriangleMarker::new((x + 8, y), 5, color.filled()));
            } else {
                chart
                    .draw_series(pts.iter().map(|&p| Circle::new(p, 2, color.mix(0.7).filled())))
                    .map_err(e)?
                    .label(name)
                    .legend(move |(x, y)| Circle::new((x + 8, y), 4, color.filled()));
            }
        }
        chart.configure_series_labels().position(SeriesLabelPosition::UpperRight).background_style(WHITE.mix(0.9)).border_style(BLACK).label_font((FONT, 13)).draw().map_err(e)?;
        Ok(())
    }
}

/// A per-class quantity against the training count (log axis), one series per run's stage.
struct PerClass<'a> {
    title: &'a str,
    y_desc: &'a str,
    series: &'a [Series<'a>],
    value: fn(&StageReport, usize) -> Option<f64>,
}

impl PerClass<'_> {
    fn draw_on<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let counts = |s: &Series| s.run.train_counts.clone();
        let (cmin, cmax) = self.series.iter().flat_map(|s| counts(s)).fold((usize::MAX, 0), |(l, h), c| (l.min(c.max(1)), h.max(c)));
        let values = self.series.iter().flat_map(|s| (0..s.run.train_counts.len()).filter_map(|k| (self.value)(s.stage, k)));
        let (y0, y1) = bounds(values);
        let all: Vec<f64> = self.series.iter().flat_map(|s| s.run.train_counts.iter().map(|&c| c.max(1) as f64)).collect();
        let ticks = log_ticks(cmin as f64, cmax as f64, &all);
        let mut chart = ChartBuilder::on(root)
            .caption(self.title, (FONT, 16))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d((cmin as f64 * 0.8..cmax as f64 * 1.25).log_scale().with_key_points(ticks), y0..y1)
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("training images of the class (log)")
            .x_label_formatter(&tick_label)
            .y_desc(self.y_desc)
            .label_style((FONT, 12))
            .draw()
            .map_err(e)?;
        for (i, s) in self.series.iter().enumerate() {
            let color = series_color(i);
            let mut pts: Vec<(f64, f64)> = (0..s.run.train_counts.len()).filter_map(|k| (self.value)(s.stage, k).filter(|v| v.is_finite()).map(|v| (s.run.train_counts[k] as f64, v))).collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2))).map_err(e)?.label(s.label.clone()).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(e)?;
        }
        chart.configure_series_labels().position(SeriesLabelPosition::UpperLeft).background_style(WHITE.mix(0.9)).border_style(BLACK).label_font((FONT, 12)).draw().map_err(e)?;
        Ok(())
    }
}

impl Draw for PerClass<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        self.draw_on(root)
    }
}

/// The four geometry panels.
struct Geometry<'a> {
    series: &'a [Series<'a>],
}

impl Draw for Geometry<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let panels = root.split_evenly((2, 2));
        let specs: [(&str, &str, fn(&StageReport, usize) -> Option<f64>); 4] = [
            ("Spread: mean angle of a class's features to its mean direction", "degrees", |s, k| Some(s.geometry[k].spread_deg)),
            ("Angle from the class mean to the nearest other class mean", "degrees", |s, k| Some(s.geometry[k].nearest_mean_deg)),
            ("Classifier weight norm", "||w||", |s, k| s.geometry[k].weight_norm),
            ("Angle between classifier weight and class mean", "degrees", |s, k| s.geometry[k].weight_angle_deg),
        ];
        for (area, (title, y, value)) in panels.iter().zip(specs) {
            PerClass { title, y_desc: y, series: self.series, value }.draw_on(area)?;
        }
        Ok(())
    }
}

struct Confusion<'a> {
    run: &'a RunReport,
    stage: &'a StageReport,
}

impl Draw for Confusion<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let order = head_to_tail(&self.run.train_counts);
        let n = order.len() as f64;
        let caption = format!("{}, stage {}: confusion (rows: true class, head to tail; row-normalised)", self.run.name, self.stage.stage);
        let mut chart =
            ChartBuilder::on(root).caption(caption, (FONT, 14)).margin(10).x_label_area_size(30).y_label_area_size(40).build_cartesian_2d(0f64..n, n..0f64).map_err(e)?;
        chart.configure_mesh().disable_mesh().x_desc("predicted").y_desc("true").x_labels(0).y_labels(0).draw().map_err(e)?;
        for (i, &t) in order.iter().enumerate() {
            for (j, &p) in order.iter().enumerate() {
                let v = self.stage.confusion[t][p];
                let shade = (255.0 * (1.0 - v.sqrt())) as u8;
                let color = RGBColor(shade, shade, 255);
                chart.draw_series(std::iter::once(Rectangle::new([(j as f64, i as f64), (j as f64 + 1.0, i as f64 + 1.0)], color.filled()))).map_err(e)?;
            }
        }
        Ok(())
    }
}

struct Groups<'a> {
    series: &'a [Series<'a>],
}

impl Draw for Groups<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let value: [(&str, fn(&StageReport) -> Option<f64>); 4] =
            [("overall", |s| Some(s.top1)), ("many", |s| s.many), ("medium", |s| s.medium), ("few", |s| s.few)];
        // Only the groups some class falls in; each in its own slot, its label at the slot's
        // centre, under the centre of its bars.
        let groups: Vec<(&str, fn(&StageReport) -> Option<f64>)> = value.into_iter().filter(|(_, v)| self.series.iter().any(|s| v(s.stage).is_some())).collect();
        let names: Vec<&str> = groups.iter().map(|g| g.0).collect();
        let k = self.series.len().max(1) as f64;
        let mut chart = ChartBuilder::on(root)
            .caption("Top-1 by shot group", (FONT, 16))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(45)
            .build_cartesian_2d(0f64..groups.len() as f64, 0f64..100.0)
            .map_err(e)?;
        chart.configure_mesh().disable_x_mesh().x_labels(0).y_desc("top-1 (%)").draw().map_err(e)?;
        // Each group's name centred under its slot (plotters places f64 ticks where it likes).
        let style = TextStyle::from((FONT, 14).into_font()).color(&BLACK).pos(plotters::style::text_anchor::Pos::new(
            plotters::style::text_anchor::HPos::Center,
            plotters::style::text_anchor::VPos::Top,
        ));
        for (g, name) in names.iter().enumerate() {
            let (x, y) = chart.backend_coord(&(g as f64 + 0.5, 0.0));
            root.draw(&Text::new(name.to_string(), (x, y + 8), style.clone())).map_err(e)?;
        }
        for (i, s) in self.series.iter().enumerate() {
            let color = series_color(i);
            let bars: Vec<Rectangle<(f64, f64)>> = groups
                .iter()
                .enumerate()
                .filter_map(|(g, (_, v))| v(s.stage).map(|v| (g, v)))
                .map(|(g, v)| {
                    let x = g as f64 + 0.1 + 0.8 * i as f64 / k;
                    Rectangle::new([(x, 0.0), (x + 0.8 / k, 100.0 * v)], color.filled())
                })
                .collect();
            chart.draw_series(bars).map_err(e)?.label(s.label.clone()).legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        }
        chart.configure_series_labels().position(SeriesLabelPosition::UpperRight).background_style(WHITE.mix(0.9)).border_style(BLACK).label_font((FONT, 12)).draw().map_err(e)?;
        Ok(())
    }
}

struct Reliability<'a> {
    run: &'a RunReport,
    stage: &'a StageReport,
}

/// Bins of the reliability diagram with fewer test images than this are left out of its
/// lines and points (their accuracy is noise) and drawn pale; the histogram under the diagram
/// shows how many images every bin holds.
pub const MIN_BIN_IMAGES: usize = 20;

/// The (bin centre, accuracy) points of a reliability line: the bins with at least
/// [`MIN_BIN_IMAGES`] images.
pub fn reliability_points(bins: &[crate::eval::calibration::Bin]) -> Vec<(f64, f64)> {
    bins.iter().filter(|b| b.count >= MIN_BIN_IMAGES).map(|b| (0.5 * (b.lo + b.hi), b.accuracy)).collect()
}

impl Draw for Reliability<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let c = &self.stage.calibration;
        let (top, bottom) = root.split_vertically(root.dim_in_pixel().1 * 3 / 4);
        let caption = format!("{}, stage {}: reliability (ECE {:.2}%)", self.run.name, self.stage.stage, 100.0 * c.ece);
        let mut chart = ChartBuilder::on(&top).caption(caption, (FONT, 15)).margin(10).x_label_area_size(30).y_label_area_size(45).build_cartesian_2d(0f64..1.0, 0f64..1.0).map_err(e)?;
        chart.configure_mesh().y_desc("accuracy").draw().map_err(e)?;
        let blue = RGBColor(31, 119, 180);
        let enough = |b: &&crate::eval::calibration::Bin| b.count >= MIN_BIN_IMAGES;
        chart
            .draw_series(c.bins.iter().filter(enough).map(|b| Rectangle::new([(b.lo, 0.0), (b.hi, b.accuracy)], blue.mix(0.8).filled())))
            .map_err(e)?
            .label(format!("accuracy in the bin ({} images)", c.samples))
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], blue.filled()));
        chart
            .draw_series(c.bins.iter().filter(|b| b.count > 0 && b.count < MIN_BIN_IMAGES).map(|b| Rectangle::new([(b.lo, 0.0), (b.hi, b.accuracy)], blue.mix(0.2).filled())))
            .map_err(e)?
            .label(format!("bins of < {MIN_BIN_IMAGES} images (pale, no points)"))
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], blue.mix(0.2).filled()));
        chart
            .draw_series(c.bins.iter().filter(enough).map(|b| Circle::new((0.5 * (b.lo + b.hi), b.confidence), 3, RED.filled())))
            .map_err(e)?
            .label("mean confidence in the bin")
            .legend(|(x, y)| Circle::new((x + 6, y), 3, RED.filled()));
        chart.draw_series(LineSeries::new(vec![(0.0, 0.0), (1.0, 1.0)], BLACK.stroke_width(1))).map_err(e)?;
        // Each shot group's own diagram, as a line through its bins that hold enough images.
        for (i, (group, g)) in self.stage.calibration_by_group.iter().enumerate() {
            let color = series_color(i + 2);
            chart
                .draw_series(LineSeries::new(reliability_points(&g.bins), color.stroke_width(2)))
                .map_err(e)?
                .label(format!("{group} ({} images): ECE {:.2}%", g.samples, 100.0 * g.ece))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
        }
        chart.configure_series_labels().position(SeriesLabelPosition::UpperLeft).background_style(WHITE.mix(0.9)).border_style(BLACK).label_font((FONT, 11)).draw().map_err(e)?;
        // Under it, as Guo et al. (2017) draw it: the share of the test images in each bin.
        let share = |b: &crate::eval::calibration::Bin| 100.0 * b.count as f64 / c.samples.max(1) as f64;
        let top_share = c.bins.iter().map(share).fold(1.0, f64::max);
        let mut hist = ChartBuilder::on(&bottom).margin(10).margin_top(0).x_label_area_size(30).y_label_area_size(45).build_cartesian_2d(0f64..1.0, 0f64..top_share * 1.1).map_err(e)?;
        hist.configure_mesh().x_desc("confidence").y_desc("% of images").y_labels(3).label_style((FONT, 11)).draw().map_err(e)?;
        hist.draw_series(c.bins.iter().filter(|b| b.count > 0).map(|b| Rectangle::new([(b.lo, 0.0), (b.hi, share(b))], RGBColor(90, 90, 90).filled()))).map_err(e)?;
        Ok(())
    }
}

struct Curves<'a> {
    runs: &'a [RunReport],
}

impl Draw for Curves<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        // Validation accuracy beside loss and learning rate when a run measured it.
        let mut keys = vec![("loss", "Training loss"), ("lr", "Learning rate")];
        if self.runs.iter().any(|r| r.curves.iter().any(|c| c["val_top1"].is_number())) {
            keys.push(("val_top1", "Validation top-1"));
        }
        let panels = root.split_evenly((1, keys.len()));
        for (p, (key, title)) in panels.iter().zip(keys) {
            // x: epochs of stage 1, then of stage 2.
            let lines: Vec<(String, Vec<(f64, f64)>)> = self
                .runs
                .iter()
                .flat_map(|r| {
                    let s1 = r.curves.iter().filter(|c| c["stage"] == 1).filter_map(|c| c["epochs"].as_f64()).fold(0.0, f64::max);
                    [1, 2].map(|stage| {
                        let pts = r.curves.iter().filter(|c| c["stage"] == stage).filter_map(|c| Some((c["epoch"].as_f64()? + if stage == 2 { s1 } else { 0.0 }, c[key].as_f64()?))).collect();
                        (format!("{} stage {stage}", r.name), pts)
                    })
                })
                .filter(|(_, pts): &(String, Vec<(f64, f64)>)| !pts.is_empty())
                .collect();
            let (x0, x1) = bounds(lines.iter().flat_map(|l| l.1.iter().map(|p| p.0)));
            let (y0, y1) = bounds(lines.iter().flat_map(|l| l.1.iter().map(|p| p.1)));
            let mut chart = ChartBuilder::on(p).caption(title, (FONT, 16)).margin(10).x_label_area_size(35).y_label_area_size(55).build_cartesian_2d(x0..x1, y0..y1).map_err(e)?;
            chart.configure_mesh().x_desc("epoch (stage 1, then stage 2)").label_style((FONT, 12)).draw().map_err(e)?;
            for (i, (label, pts)) in lines.into_iter().enumerate() {
                let color = series_color(i);
                chart.draw_series(LineSeries::new(pts, color.stroke_width(2))).map_err(e)?.label(label).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
            }
            chart.configure_series_labels().position(SeriesLabelPosition::UpperRight).background_style(WHITE.mix(0.9)).border_style(BLACK).label_font((FONT, 12)).draw().map_err(e)?;
        }
        Ok(())
    }
}

/// The embedding over the epochs (`run.probe_every`): spread, NC1 per shot group, the tail's
/// and head's mean pairwise angle, NC4; a line per run and group.
struct Embedding<'a> {
    runs: &'a [RunReport],
}

impl Embedding<'_> {
    fn has_probe(runs: &[RunReport]) -> bool {
        runs.iter().any(|r| r.curves.iter().any(|c| c["probe"].is_object()))
    }
}

impl Draw for Embedding<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        type Pick = fn(&serde_json::Value, &str) -> Option<f64>;
        let groups: &[&str] = &["many", "medium", "few"];
        let panels: [(&str, &[&str], Pick); 4] = [
            ("Spread per shot group (deg)", groups, |p, g| p["spread_by_group"][g].as_f64()),
            ("NC1 per shot group", groups, |p, g| p["nc1_by_group"][g].as_f64()),
            ("Mean pairwise angle of the centred means (deg)", &["tail", "head"], |p, g| p[format!("{g}_angle_deg")].as_f64()),
            ("NC4: prediction = nearest class mean", &["all"], |p, _| p["nc4"].as_f64()),
        ];
        let areas = root.split_evenly((2, 2));
        for (area, (title, parts, pick)) in areas.iter().zip(panels) {
            let mut lines: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
            for r in self.runs {
                let s1 = r.curves.iter().filter(|c| c["stage"] == 1).filter_map(|c| c["epochs"].as_f64()).fold(0.0, f64::max);
                for part in parts {
                    let pts: Vec<(f64, f64)> = r
                        .curves
                        .iter()
                        .filter(|c| c["probe"].is_object())
                        .filter_map(|c| Some((c["epoch"].as_f64()? + if c["stage"] == 2 { s1 } else { 0.0 }, pick(&c["probe"], part)?)))
                        .collect();
                    if !pts.is_empty() {
                        lines.push((format!("{} {part}", r.name), pts));
                    }
                }
            }
            let (x0, x1) = bounds(lines.iter().flat_map(|l| l.1.iter().map(|p| p.0)));
            let (y0, y1) = bounds(lines.iter().flat_map(|l| l.1.iter().map(|p| p.1)));
            let mut chart = ChartBuilder::on(area).caption(title, (FONT, 16)).margin(10).x_label_area_size(35).y_label_area_size(55).build_cartesian_2d(x0..x1, y0..y1).map_err(e)?;
            chart.configure_mesh().x_desc("epoch (stage 1, then stage 2)").label_style((FONT, 12)).draw().map_err(e)?;
            for (i, (label, pts)) in lines.into_iter().enumerate() {
                let color = series_color(i);
                chart.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2))).map_err(e)?.label(label).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
                chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled()))).map_err(e)?;
            }
            chart.configure_series_labels().position(SeriesLabelPosition::UpperRight).background_style(WHITE.mix(0.9)).border_style(BLACK).label_font((FONT, 12)).draw().map_err(e)?;
        }
        Ok(())
    }
}

/// A run's probe features at its snapshot epochs (`run.snapshots`), as t-SNE pictures side by side.
struct Snapshots<'a> {
    run: &'a RunReport,
}

impl Draw for Snapshots<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let areas = root.split_evenly((1, self.run.snapshots.len()));
        let n = self.run.train_counts.len();
        for (area, snap) in areas.iter().zip(&self.run.snapshots) {
            let t = &snap.tsne;
            let (x0, x1) = bounds(t.xy.iter().map(|p| p[0] as f64));
            let (y0, y1) = bounds(t.xy.iter().map(|p| p[1] as f64));
            let caption = format!("{}, stage-1 epoch {}: {} probe images", self.run.name, snap.epoch, t.points);
            let mut chart = ChartBuilder::on(area).caption(caption, (FONT, 15)).margin(8).build_cartesian_2d(x0..x1, y0..y1).map_err(e)?;
            chart.configure_mesh().disable_mesh().disable_axes().draw().map_err(e)?;
            for &c in &head_to_tail(&self.run.train_counts) {
                let color = class_color(c, n);
                let pts = t.xy.iter().zip(&t.labels).filter(|(_, &l)| l as usize == c).map(|(p, _)| (p[0] as f64, p[1] as f64));
                if self.run.tail_classes.contains(&c) {
                    chart.draw_series(pts.map(|p| TriangleMarker::new(p, 4, color.filled()))).map_err(e)?;
                } else {
                    chart.draw_series(pts.map(|p| Circle::new(p, 2, color.mix(0.7).filled()))).map_err(e)?;
                }
            }
        }
        Ok(())
    }
}

/// Every figure of the report, drawn into `dir`, in page order.
pub fn figures(report: &Report, dir: &Path) -> Result<Vec<Figure>> {
    let series = series(report);
    let mut out = Vec::new();
    for s in &series {
        let tag = format!("{}-stage{}", s.run.name, s.stage.stage);
        out.push(render(dir, &format!("tsne-{tag}"), (900, 650), &Tsne { run: s.run, stage: s.stage })?);
    }
    out.push(render(dir, "geometry", (1300, 950), &Geometry { series: &series })?);
    out.push(render(dir, "per-class-accuracy", (900, 500), &PerClass { title: "Per-class top-1", y_desc: "top-1", series: &series, value: |s, k| Some(s.per_class[k]) })?);
    out.push(render(dir, "shot-groups", (900, 450), &Groups { series: &series })?);
    for s in &series {
        let tag = format!("{}-stage{}", s.run.name, s.stage.stage);
        out.push(render(dir, &format!("reliability-{tag}"), (520, 600), &Reliability { run: s.run, stage: s.stage })?);
        out.push(render(dir, &format!("confusion-{tag}"), (520, 520), &Confusion { run: s.run, stage: s.stage })?);
    }
    if report.runs.iter().any(|r| !r.curves.is_empty()) {
        let wide = report.runs.iter().any(|r| r.curves.iter().any(|c| c["val_top1"].is_number()));
        out.push(render(dir, "curves", (if wide { 1650 } else { 1200 }, 450), &Curves { runs: &report.runs })?);
    }
    if Embedding::has_probe(&report.runs) {
        out.push(render(dir, "embedding-over-epochs", (1300, 850), &Embedding { runs: &report.runs })?);
    }
    for r in report.runs.iter().filter(|r| !r.snapshots.is_empty()) {
        out.push(render(dir, &format!("snapshots-{}", r.name), (480 * r.snapshots.len() as u32, 480), &Snapshots { run: r })?);
    }
    Ok(out)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.2}", 100.0 * v))
}

/// The page: numbers first, then every figure inline (SVG), nothing fetched from elsewhere.
pub fn page(report: &Report, figures: &[Figure]) -> String {
    let mut h = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>gcl report</title>\n<style>body{font-family:sans-serif;margin:2em;max-width:1400px}\
         table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}th{background:#eee}\
         figure{display:inline-block;margin:0.5em;vertical-align:top}figcaption{font-size:0.85em;color:#444}</style></head><body>\n<h1>gcl report</h1>\n",
    );
    h += &format!(
        "<p>{} run(s); t-SNE perplexity {}, seed {}, at most {} points per picture (sampled evenly per class). Made in {:.1} s. Every number is in report.json.</p>\n",
        report.runs.len(),
        report.perplexity,
        report.seed,
        report.max_points,
        report.seconds
    );
    h += "<h2>Summary</h2>\n<table><tr><th>run</th><th>stage</th><th>top-1 %</th><th>many</th><th>medium</th><th>few</th><th>ECE %</th><th>tail spread (deg)</th><th>head spread (deg)</th><th>t-SNE points</th><th>t-SNE 10-NN acc %</th></tr>\n";
    for r in &report.runs {
        for s in &r.stages {
            h += &format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{} of {}{}</td><td>{:.1}</td></tr>\n",
                esc(&r.name),
                s.stage,
                pct(Some(s.top1)),
                pct(s.many),
                pct(s.medium),
                pct(s.few),
                100.0 * s.calibration.ece,
                s.tail_spread_deg,
                s.head_spread_deg,
                s.tsne.points,
                s.tsne.of,
                if s.tsne.points < s.tsne.of { " (subsampled)" } else { "" },
                100.0 * s.tsne.knn10
            );
        }
    }
    h += "</table>\n";
    for r in &report.runs {
        let tail: Vec<String> = r.tail_classes.iter().map(|&k| esc(r.class_names.get(k).map_or("?", |s| s.as_str()))).collect();
        h += &format!("<p><b>{}</b> ({}): tail classes = {}: {}.</p>\n", esc(&r.name), esc(&r.path.display().to_string()), esc(&r.tail_rule), tail.join(", "));
        h += "<table><tr><th>stage</th><th>group</th><th>ECE %</th><th>test images</th></tr>\n";
        for s in &r.stages {
            for (g, c) in &s.calibration_by_group {
                h += &format!("<tr><td>{}</td><td>{g}</td><td>{:.2}</td><td>{}</td></tr>\n", s.stage, 100.0 * c.ece, c.samples);
            }
        }
        h += "</table>\n";
    }
    h += "<h2>Neural collapse</h2>\n<p>On the test features, globally centred (Papyan, Han, Donoho 2020; minority collapse: Fang et al. 2021), \
          as the classifier applies them (a cosine classifier's normalised features and rows). NC1: within-class against between-class \
          variability, (1/C) tr(S<sub>W</sub> S<sub>B</sub><sup>+</sup>), overall and per shot group; NC2: the centred class means' norms \
          (std / mean) and angles (std of the cosines; mean |cos + 1/(C-1)|), 0 for a simplex; NC3: |W/|W| - M/|M||; NC4: how often the \
          prediction is the nearest class mean; tail / head angle: mean pairwise angle of the centred means of the tail classes / of the others.</p>\n";
    h += "<table><tr><th>run</th><th>stage</th><th>NC1</th><th>NC1 many</th><th>NC1 medium</th><th>NC1 few</th><th>NC2 norms</th><th>NC2 angles</th>\
          <th>NC2 max-angle</th><th>NC3</th><th>NC4 %</th><th>tail angle (deg)</th><th>head angle (deg)</th></tr>\n";
    let num = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
    for r in &report.runs {
        for s in &r.stages {
            let n = &s.neural_collapse;
            let g = |k: &str| num(n.nc1_by_group.get(k).copied());
            h += &format!(
                "<tr><td>{}</td><td>{}</td><td>{:.3}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{}</td><td>{:.1}</td><td>{}</td><td>{}</td></tr>\n",
                esc(&r.name),
                s.stage,
                n.nc1,
                g("many"),
                g("medium"),
                g("few"),
                n.nc2_equinorm,
                n.nc2_equiangular,
                n.nc2_max_angle,
                num(n.nc3),
                100.0 * n.nc4,
                n.tail_angle_deg.map_or("-".into(), |v| format!("{v:.1}")),
                n.head_angle_deg.map_or("-".into(), |v| format!("{v:.1}")),
            );
        }
    }
    h += "</table>\n";
    h += "<h2>Figures</h2>\n<p>Geometry: features L2-normalised, as the cosine classifier sees them, and centred on their global mean \
           (with ReLU features every class mean shares one large direction, which would make every angle between classes small); \
           spread = mean angle of a class's centred features to the class's centred mean direction. A cosine classifier normalises its weights when it classifies, so its weight norm \
           is that of the stored weight (what training made of it), not a factor in its logits. Stage 2 keeps stage 1's backbone: \
           its features, t-SNE and spread are stage 1's; its classifier, accuracy and calibration are its own.</p>\n";
    for f in figures {
        let svg = f.svg.trim_start_matches(|c| c != '<');
        h += &format!("<figure id=\"{0}\">{svg}<figcaption>{0} (also {0}.png, {0}.svg)</figcaption></figure>\n", esc(&f.name));
    }
    h += "</body></html>\n";
    h
}
