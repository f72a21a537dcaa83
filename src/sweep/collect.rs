//! `gcl sweep collect DIR`: what the sweep's tasks wrote, gathered. `sweep.csv` has a row per
//! cell (its values, ratio, seed, the data set's descriptors, each stage's top-1 overall and
//! per shot group, seconds, the error of a failed task); `summary.md` the mean +- std over
//! the seeds of each setting, the best per ratio marked, and the failed tasks; the figures
//! draw each metric against each grid key with error bars; `index.html` shows it all.
use super::{run_dir, status_path, Cell, Plan, Status, Study};
use crate::eval::plots::{e, render, series_color, Draw, Figure};
use crate::eval::report::Results;
use crate::eval::table::Table;
use crate::eval::Accuracy;
use anyhow::Result;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

/// A cell and what its task left.
pub struct Outcome {
    pub cell: Cell,
    pub results: Option<Results>,
    /// The error of a failed task (None: done, or not run yet).
    pub error: Option<String>,
}

/// The shape of a training set's class counts, recorded beside the results.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Descriptors {
    pub classes: usize,
    /// n_max / n_min.
    pub ratio: f64,
    /// The share of the training images in the most frequent third of the classes, and in
    /// the least frequent third.
    pub head_mass: f64,
    pub tail_mass: f64,
    /// Gini coefficient of the counts: 0 balanced, towards 1 all in one class.
    pub gini: f64,
}

impl Descriptors {
    pub fn of(counts: &[usize]) -> Descriptors {
        let n = counts.len();
        let mut c: Vec<f64> = counts.iter().map(|&v| v as f64).collect();
        c.sort_by(|a, b| b.total_cmp(a));
        let total: f64 = c.iter().sum();
        let third = n.div_ceil(3).max(1);
        let mean = total / n.max(1) as f64;
        let pairs: f64 = c.iter().map(|a| c.iter().map(|b| (a - b).abs()).sum::<f64>()).sum();
        Descriptors {
            classes: n,
            ratio: c.first().copied().unwrap_or(1.0) / c.last().copied().unwrap_or(1.0).max(1.0),
            head_mass: c[..third.min(n)].iter().sum::<f64>() / total,
            tail_mass: c[n - third.min(n)..].iter().sum::<f64>() / total,
            gini: pairs / (2.0 * (n * n) as f64 * mean),
        }
    }
}

/// Mean and sample standard deviation (None for fewer than two values).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stat {
    pub mean: f64,
    pub std: Option<f64>,
    pub n: usize,
}

impl Stat {
    pub fn of(v: &[f64]) -> Option<Stat> {
        if v.is_empty() {
            return None;
        }
        let n = v.len();
        let mean = v.iter().sum::<f64>() / n as f64;
        let std = (n > 1).then(|| (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt());
        Some(Stat { mean, std, n })
    }

    /// As a percentage: `84.10 ± 0.21`.
    fn pct(s: Option<Stat>) -> String {
        match s {
            None => "-".into(),
            Some(Stat { mean, std: Some(sd), .. }) => format!("{:.2} ± {:.2}", 100.0 * mean, 100.0 * sd),
            Some(Stat { mean, .. }) => format!("{:.2}", 100.0 * mean),
        }
    }
}

/// The cells of one setting (all but the seed), summarised.
pub struct Group {
    pub method: Option<String>,
    pub values: Vec<(String, String)>,
    pub ratio: f64,
    /// Runs done of this setting.
    pub n: usize,
    /// Each final model's (stage 2's where it ran) overall, many, medium, few top-1.
    pub metrics: [Option<Stat>; 4],
    pub stage1: Option<Stat>,
    /// The final overall top-1 per seed (for paired differences).
    pub by_seed: Vec<(u64, f64)>,
    pub best: bool,
}

pub const METRICS: [&str; 4] = ["overall", "many", "medium", "few"];

fn metric(a: &Accuracy, i: usize) -> Option<f64> {
    [Some(a.top1), a.many, a.medium, a.few][i]
}

/// What `collect` gathered and wrote.
pub struct Summary {
    pub outcomes: Vec<Outcome>,
    pub groups: Vec<Group>,
    /// summary.md's text (also printed by `gcl sweep`).
    pub text: String,
}

/// The results of `cell` when its run finished with the cell's settings.
fn finished(plan: &Plan, dir: &Path, cell: &Cell) -> Option<Results> {
    let cfg = plan.config(cell).ok()?;
    let out = run_dir(dir, cell);
    let r: Results = serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).ok()?).ok()?;
    let done = r.stage1.is_some() && (r.stage2.is_some() || !crate::train::has_stage2(&cfg));
    (done && crate::train::trained_with(&r, &cfg, &out).ok()?).then_some(r)
}

/// Reads every cell's outcome in `dir`, writes sweep.csv, summary.md, the figures and
/// index.html.
pub fn collect(dir: &Path) -> Result<Summary> {
    let plan = Plan::load(dir)?;
    let outcomes: Vec<Outcome> = plan
        .cells()
        .into_iter()
        .map(|cell| {
            let results = finished(&plan, dir, &cell);
            let status: Option<Status> = std::fs::read_to_string(status_path(dir, &cell)).ok().and_then(|t| serde_json::from_str(&t).ok());
            let error = if results.is_some() { None } else { status.and_then(|s| s.error) };
            Outcome { cell, results, error }
        })
        .collect();
    let groups = groups(&outcomes);
    crate::util::write_atomic(&dir.join("sweep.csv"), csv(&plan, &outcomes).csv().as_bytes())?;
    let text = summary_text(dir, &plan, &outcomes, &groups);
    crate::util::write_atomic(&dir.join("summary.md"), text.as_bytes())?;
    crate::eval::plots::register_font()?;
    let figures = figures(&plan, &groups, dir)?;
    crate::util::write_atomic(&dir.join("index.html"), page(&text, &plan, &outcomes, &groups, &figures).as_bytes())?;
    Ok(Summary { outcomes, groups, text })
}

fn csv(plan: &Plan, outcomes: &[Outcome]) -> Table {
    let mut head: Vec<String> = vec!["cell".into(), "method".into()];
    head.extend(plan.grids.iter().map(|g| g.key.clone()));
    for h in ["ratio", "seed", "state", "classes", "count_ratio", "head_mass", "tail_mass", "gini"] {
        head.push(h.into());
    }
    for stage in ["stage1", "stage2"] {
        head.extend(METRICS.iter().map(|m| format!("{stage}_{}", if *m == "overall" { "top1" } else { m })));
    }
    head.extend(["seconds_stage1".into(), "seconds_stage2".into(), "error".into()]);
    let mut t = Table::new(&head.iter().map(String::as_str).collect::<Vec<_>>());
    let num = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.6}"));
    for o in outcomes {
        let c = &o.cell;
        let mut row = vec![c.label(), c.method.clone().unwrap_or_default()];
        row.extend(c.values.iter().map(|(_, v)| v.clone()));
        row.push(c.ratio.to_string());
        row.push(c.seed.to_string());
        row.push(if o.results.is_some() { "done" } else if o.error.is_some() { "failed" } else { "not run" }.into());
        match &o.results {
            Some(r) => {
                let d = Descriptors::of(&r.train_counts);
                row.extend([d.classes.to_string(), format!("{:.3}", d.ratio), format!("{:.4}", d.head_mass), format!("{:.4}", d.tail_mass), format!("{:.4}", d.gini)]);
                for acc in [&r.stage1, &r.stage2] {
                    row.extend((0..4).map(|i| num(acc.as_ref().and_then(|a| metric(a, i)))));
                }
                row.extend([num(r.seconds.stage1), num(r.seconds.stage2)]);
            }
            None => row.extend(std::iter::repeat_n(String::new(), 5 + 8 + 2)),
        }
        row.push(o.error.clone().unwrap_or_default().replace('\n', " "));
        t.row(&row);
    }
    t
}

/// The cells grouped by all but the seed, in the plan's order; the best setting per ratio
/// (highest mean final top-1) marked.
fn groups(outcomes: &[Outcome]) -> Vec<Group> {
    let mut out: Vec<Group> = Vec::new();
    let mut members: Vec<Vec<&Outcome>> = Vec::new();
    for o in outcomes {
        match out.iter().position(|g| (g.method.clone(), g.values.clone(), g.ratio.to_bits()) == o.cell.group()) {
            Some(i) => members[i].push(o),
            None => {
                out.push(Group { method: o.cell.method.clone(), values: o.cell.values.clone(), ratio: o.cell.ratio, n: 0, metrics: [None; 4], stage1: None, by_seed: Vec::new(), best: false });
                members.push(vec![o]);
            }
        }
    }
    for (g, ms) in out.iter_mut().zip(&members) {
        let done: Vec<(&Cell, &Results)> = ms.iter().filter_map(|o| Some((&o.cell, o.results.as_ref()?))).collect();
        g.n = done.len();
        for (i, m) in g.metrics.iter_mut().enumerate() {
            *m = Stat::of(&done.iter().filter_map(|(_, r)| metric(r.final_accuracy()?, i)).collect::<Vec<_>>());
        }
        g.stage1 = Stat::of(&done.iter().filter_map(|(_, r)| Some(r.stage1.as_ref()?.top1)).collect::<Vec<_>>());
        g.by_seed = done.iter().filter_map(|(c, r)| Some((c.seed, r.final_accuracy()?.top1))).collect();
    }
    let ratios: Vec<u64> = out.iter().map(|g| g.ratio.to_bits()).collect();
    for r in ratios {
        let best = out.iter().enumerate().filter(|(_, g)| g.ratio.to_bits() == r).filter_map(|(i, g)| Some((i, g.metrics[0]?.mean))).max_by(|a, b| a.1.total_cmp(&b.1));
        if let Some((i, _)) = best {
            out[i].best = true;
        }
    }
    out
}

fn summary_table(plan: &Plan, groups: &[Group]) -> Table {
    let mut head: Vec<String> = Vec::new();
    if !plan.methods.is_empty() {
        head.push("method".into());
    }
    head.extend(plan.grids.iter().map(|g| g.key.clone()));
    head.extend(["ratio", "n", "overall", "many", "medium", "few", "stage 1 overall", "best"].map(String::from));
    let mut t = Table::new(&head.iter().map(String::as_str).collect::<Vec<_>>());
    for g in groups {
        let mut row: Vec<String> = g.method.iter().cloned().collect();
        row.extend(g.values.iter().map(|(_, v)| v.clone()));
        row.push(g.ratio.to_string());
        row.push(g.n.to_string());
        row.extend(g.metrics.iter().map(|m| Stat::pct(*m)));
        row.push(Stat::pct(g.stage1));
        row.push(if g.best { "best".into() } else { String::new() });
        t.row(&row);
    }
    t
}

fn summary_text(dir: &Path, plan: &Plan, outcomes: &[Outcome], groups: &[Group]) -> String {
    let done = outcomes.iter().filter(|o| o.results.is_some()).count();
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.error.is_some()).collect();
    let not_run = outcomes.len() - done - failed.len();
    let mut s = format!("# gcl sweep: {}\n\n", dir.display());
    s += &format!(
        "{} cells ({} settings x {} seeds): {done} done, {} failed, {not_run} not run. Top-1 (%) of each run's final model (stage 2's where \
         it has one) on the balanced test set, overall and per shot group, mean ± standard deviation over the seeds (n runs); \
         `best`: the highest mean overall top-1 at its ratio.\n\n",
        outcomes.len(),
        groups.len(),
        plan.seeds.len(),
        failed.len()
    );
    s += &summary_table(plan, groups).markdown();
    if plan.study == Some(Study::CloudForms) {
        s += &cloud_form_verdict(outcomes, groups);
    }
    if !failed.is_empty() {
        s += "\n## Failed tasks\n\n";
        for o in &failed {
            s += &format!("- `{}` (task {}): {}\n", o.cell.label(), o.cell.index, o.error.as_deref().unwrap_or("").replace('\n', " "));
        }
    }
    if not_run > 0 {
        s += &format!("\n{not_run} cells have no finished run yet (`gcl sweep` again continues them).\n");
    }
    s
}

/// Each value once, in the order first seen.
fn distinct<T: PartialEq>(values: impl Iterator<Item = T>) -> Vec<T> {
    values.fold(Vec::new(), |mut v, x| {
        if !v.contains(&x) {
            v.push(x);
        }
        v
    })
}

/// Which cloud form wins at each ratio: the data set's descriptors, each form's mean, and
/// the winner's margin over the runner-up with its standard error (paired over the seeds
/// both have: same split, same initialisation).
fn cloud_form_verdict(outcomes: &[Outcome], groups: &[Group]) -> String {
    // Each ratio once, in the plan's order (the groups repeat them per method).
    let ratios = distinct(groups.iter().map(|g| g.ratio));
    let forms = distinct(groups.iter().filter_map(|g| g.method.clone()));
    let mut head = vec!["ratio".to_string(), "classes".into(), "head mass".into(), "tail mass".into(), "Gini".into()];
    head.extend(forms.iter().cloned());
    head.extend(["wins".into(), "margin (points)".into(), "SE".into(), "margin / SE".into()]);
    let mut t = Table::new(&head.iter().map(String::as_str).collect::<Vec<_>>());
    for &ratio in &ratios {
        let counts = outcomes.iter().filter(|o| o.cell.ratio == ratio).find_map(|o| Some(o.results.as_ref()?.train_counts.clone()));
        let Some(counts) = counts else { continue };
        let d = Descriptors::of(&counts);
        let mut row = vec![ratio.to_string(), d.classes.to_string(), format!("{:.3}", d.head_mass), format!("{:.3}", d.tail_mass), format!("{:.3}", d.gini)];
        let at: Vec<&Group> = forms.iter().filter_map(|f| groups.iter().find(|g| g.ratio == ratio && g.method.as_ref() == Some(f))).collect();
        row.extend(at.iter().map(|g| Stat::pct(g.metrics[0])));
        let mut ranked: Vec<&&Group> = at.iter().filter(|g| g.metrics[0].is_some()).collect();
        ranked.sort_by(|a, b| b.metrics[0].unwrap().mean.total_cmp(&a.metrics[0].unwrap().mean));
        match ranked.as_slice() {
            [a, b, ..] => {
                let diffs: Vec<f64> = a.by_seed.iter().filter_map(|(s, x)| Some(x - b.by_seed.iter().find(|(t, _)| t == s)?.1)).collect();
                let d = Stat::of(&diffs);
                let se = d.and_then(|d| Some(d.std? / (d.n as f64).sqrt()));
                let margin = d.map_or(a.metrics[0].unwrap().mean - b.metrics[0].unwrap().mean, |d| d.mean);
                row.push(a.method.clone().unwrap_or_default());
                row.push(format!("{:.2} over {}", 100.0 * margin, b.method.clone().unwrap_or_default()));
                row.push(se.map_or("-".into(), |se| format!("{:.2}", 100.0 * se)));
                row.push(se.filter(|se| *se > 0.0).map_or("-".into(), |se| format!("{:.1}", margin / se)));
            }
            _ => row.extend(std::iter::repeat_n("-".to_string(), 4)),
        }
        t.row(&row);
    }
    format!(
        "\n## Cloud-form study\n\nWhich cloud size wins at each imbalance: mean final top-1 (%) of each form, the winner's margin over the \
         runner-up in points, its standard error (paired over seeds), and their ratio (above 2: the difference is unlikely to be \
         noise). Head / tail mass: the share of training images in the most / least frequent third of the classes; Gini of the class \
         counts.\n\n{}",
        t.markdown()
    )
}

/// One panel: a metric over the axis' categories, a line per series, error bars of one std.
struct Panel {
    title: String,
    axis: String,
    categories: Vec<String>,
    series: Vec<(String, Vec<Option<Stat>>)>,
}

struct Panels(Vec<Panel>);

impl Draw for Panels {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let areas = root.split_evenly((self.0.len().div_ceil(2), 2.min(self.0.len())));
        for (p, area) in self.0.iter().zip(&areas) {
            let vals: Vec<f64> = p.series.iter().flat_map(|(_, v)| v.iter().flatten().flat_map(|s| [100.0 * (s.mean - s.std.unwrap_or(0.0)), 100.0 * (s.mean + s.std.unwrap_or(0.0))])).collect();
            let (lo, hi) = vals.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| (l.min(*v), h.max(*v)));
            let (lo, hi) = if lo.is_finite() { (lo - (hi - lo).max(1.0) * 0.1, hi + (hi - lo).max(1.0) * 0.1) } else { (0.0, 100.0) };
            let n = p.categories.len();
            let mut chart = ChartBuilder::on(area)
                .caption(&p.title, ("sans-serif", 16))
                .margin(8)
                .x_label_area_size(40)
                .y_label_area_size(48)
                .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), lo..hi)
                .map_err(e)?;
            let cats = p.categories.clone();
            chart
                .configure_mesh()
                .x_labels(n.max(1))
                .x_label_formatter(&|x| {
                    let i = x.round();
                    if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < cats.len() {
                        cats[i as usize].clone()
                    } else {
                        String::new()
                    }
                })
                .x_desc(&p.axis)
                .y_desc("top-1 %")
                .draw()
                .map_err(e)?;
            for (k, (label, stats)) in p.series.iter().enumerate() {
                let color = series_color(k);
                let pts: Vec<(f64, f64)> = stats.iter().enumerate().filter_map(|(i, s)| Some((i as f64, 100.0 * s.as_ref()?.mean))).collect();
                chart.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2))).map_err(e)?.label(label.clone()).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
                chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(e)?;
                chart
                    .draw_series(stats.iter().enumerate().filter_map(|(i, s)| {
                        let s = s.as_ref()?;
                        let sd = 100.0 * s.std.unwrap_or(0.0);
                        Some(ErrorBar::new_vertical(i as f64, 100.0 * s.mean - sd, 100.0 * s.mean, 100.0 * s.mean + sd, color.stroke_width(1), 8))
                    }))
                    .map_err(e)?;
            }
            chart.configure_series_labels().position(SeriesLabelPosition::LowerRight).background_style(WHITE.mix(0.85)).border_style(BLACK).label_font(("sans-serif", 12)).draw().map_err(e)?;
        }
        Ok(())
    }
}

/// The axes the figures are drawn against: each grid key; without grids the methods, or
/// else the ratios.
fn axes(plan: &Plan) -> Vec<String> {
    if !plan.grids.is_empty() {
        plan.grids.iter().map(|g| g.key.clone()).collect()
    } else if plan.methods.len() > 1 {
        vec!["method".into()]
    } else if plan.ratios.len() > 1 {
        vec!["ratio".into()]
    } else {
        Vec::new()
    }
}

/// A group's coordinate on `axis` and the label of the line it belongs to (everything else).
fn place(g: &Group, axis: &str) -> (String, String) {
    let mut at = String::new();
    let mut rest: Vec<String> = Vec::new();
    if let Some(m) = &g.method {
        if axis == "method" {
            at = m.clone();
        } else {
            rest.push(m.clone());
        }
    }
    for (k, v) in &g.values {
        if k == axis {
            at = v.clone();
        } else {
            rest.push(format!("{}={v}", k.rsplit('.').next().unwrap_or(k)));
        }
    }
    if axis == "ratio" {
        at = g.ratio.to_string();
    } else {
        rest.push(format!("ratio {}", g.ratio));
    }
    (at, rest.join(", "))
}

fn figures(plan: &Plan, groups: &[Group], dir: &Path) -> Result<Vec<Figure>> {
    let mut out = Vec::new();
    for axis in axes(plan) {
        let mut categories: Vec<String> = Vec::new();
        let mut lines: Vec<String> = Vec::new();
        for g in groups {
            let (at, line) = place(g, &axis);
            if !categories.contains(&at) {
                categories.push(at);
            }
            if !lines.contains(&line) {
                lines.push(line);
            }
        }
        let panels: Vec<Panel> = METRICS
            .iter()
            .enumerate()
            .filter(|(i, _)| groups.iter().any(|g| g.metrics[*i].is_some()))
            .map(|(i, m)| Panel {
                title: format!("{m} top-1 against {axis}"),
                axis: axis.clone(),
                categories: categories.clone(),
                series: lines
                    .iter()
                    .map(|line| {
                        let stats = categories.iter().map(|c| groups.iter().find(|g| place(g, &axis) == (c.clone(), line.clone())).and_then(|g| g.metrics[i])).collect();
                        (if line.is_empty() { "all".to_string() } else { line.clone() }, stats)
                    })
                    .collect(),
            })
            .collect();
        if panels.is_empty() {
            continue;
        }
        let name = format!("sweep-{}", axis.replace('.', "-"));
        let rows = panels.len().div_ceil(2) as u32;
        out.push(render(dir, &name, (1100, 380 * rows), &Panels(panels))?);
    }
    Ok(out)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// index.html: the summary as tables, then every figure inline.
fn page(text: &str, plan: &Plan, outcomes: &[Outcome], groups: &[Group], figures: &[Figure]) -> String {
    let mut h = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>gcl sweep</title>\n<style>body{font-family:sans-serif;margin:2em;max-width:1400px}\
         table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}th{background:#eee}\
         tr.best td{font-weight:bold}figure{margin:0.5em}figcaption{font-size:0.85em;color:#444}pre{white-space:pre-wrap}</style></head><body>\n",
    );
    let first = text.lines().find(|l| !l.is_empty() && !l.starts_with('#')).unwrap_or("");
    h += &format!("<h1>gcl sweep</h1>\n<p>{}</p>\n", esc(first));
    let t = summary_table(plan, groups);
    h += "<table>\n<tr>";
    for c in t.header() {
        h += &format!("<th>{}</th>", esc(c));
    }
    h += "</tr>\n";
    for (g, row) in groups.iter().zip(t.rows()) {
        h += if g.best { "<tr class=\"best\">" } else { "<tr>" };
        for c in row {
            h += &format!("<td>{}</td>", esc(c));
        }
        h += "</tr>\n";
    }
    h += "</table>\n";
    if let Some(i) = text.find("## Cloud-form study") {
        let end = text[i..].find("\n## Failed").map_or(text.len(), |j| i + j);
        h += &format!("<h2>Cloud-form study</h2>\n<pre>{}</pre>\n", esc(text[i..end].trim_start_matches("## Cloud-form study").trim()));
    }
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.error.is_some()).collect();
    if !failed.is_empty() {
        h += "<h2>Failed tasks</h2>\n<ul>\n";
        for o in failed {
            h += &format!("<li><code>{}</code>: {}</li>\n", esc(&o.cell.label()), esc(o.error.as_deref().unwrap_or("")));
        }
        h += "</ul>\n";
    }
    h += "<h2>Figures</h2>\n<p>Each metric against each grid key, a line per remaining setting; error bars: one standard deviation over the seeds. Every number is in sweep.csv.</p>\n";
    for f in figures {
        let svg = f.svg.trim_start_matches(|c| c != '<');
        h += &format!("<figure id=\"{0}\">{svg}<figcaption>{0} (also {0}.png, {0}.svg)</figcaption></figure>\n", esc(&f.name));
    }
    h += "</body></html>\n";
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_of_balanced_and_skewed_counts() {
        let d = Descriptors::of(&[10, 10, 10]);
        assert_eq!((d.classes, d.ratio, d.gini), (3, 1.0, 0.0));
        assert!((d.head_mass - 1.0 / 3.0).abs() < 1e-12 && (d.tail_mass - 1.0 / 3.0).abs() < 1e-12);
        // One class holds everything that is not one image each: Gini (n-1)/n in the limit.
        let d = Descriptors::of(&[1000, 1, 1, 1]);
        assert_eq!(d.ratio, 1000.0);
        let want = (3.0 * 999.0 * 2.0) / (2.0 * 16.0 * (1003.0 / 4.0));
        assert!((d.gini - want).abs() < 1e-12, "{}", d.gini);
        assert!((d.head_mass - 1001.0 / 1003.0).abs() < 1e-12, "{}", d.head_mass);
    }

    #[test]
    fn stats_are_mean_and_sample_std() {
        let s = Stat::of(&[0.8, 0.9, 1.0]).unwrap();
        assert!((s.mean - 0.9).abs() < 1e-12 && (s.std.unwrap() - 0.1).abs() < 1e-12 && s.n == 3);
        assert_eq!(Stat::of(&[0.5]).unwrap().std, None);
        assert_eq!(Stat::pct(Stat::of(&[0.8, 0.9, 1.0])), "90.00 ± 10.00");
    }
}
