//! `gcl sweep`: one training per cell of the product methods x setting grids x imbalance
//! ratios x seeds, run N at a time on this machine or as a Slurm job array, then one table
//! of mean +- std over the seeds, figures and a page (`collect`).
//!
//! A sweep folder DIR holds one sweep:
//! - `sweep.json`: the plan (base settings, grids, ratios, seeds, methods); a sweep run
//!   again with the same plan continues, another plan is refused;
//! - `runs/<cell>/`: each cell's run folder, as `gcl train --out` writes it;
//! - `status/<cell>.json`: how its task ended (done, reused, or failed with the error);
//! - `logs/task-<i>.log`: task i's output;
//! - `sweep.csv`, `summary.md`, `index.html`, the figures (`gcl sweep collect DIR`).
//!
//! Each cell is one task, `gcl sweep task DIR --index i`, in a process of its own: locally
//! with its share of the cores, on a cluster as array task `SLURM_ARRAY_TASK_ID`. A task
//! whose run finished with the same settings and data is not trained again; one that was
//! killed continues from its stage-1 checkpoint.
pub mod collect;

use crate::compare::{builtin_list, parse_methods, DEFAULT_METHODS};
use crate::config::Config;
use crate::train::{self, Stage, TrainOptions};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One grid: a setting and the values it takes (TOML syntax, as `--set` takes them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Grid {
    pub key: String,
    pub values: Vec<String>,
}

/// A method: a name and the settings layered over the base (as `gcl compare`'s).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodSpec {
    pub name: String,
    pub settings: toml::Table,
}

/// A built-in study: a sweep whose methods, ratios and seeds are set for one question.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Study {
    /// GCL's three cloud-size forms (log, n^-1/3, n^-1/4) over ratios 10, 50, 100, 200 and
    /// seeds 0, 1, 2, with descriptors of each data set and which form wins where.
    CloudForms,
}

/// What `gcl sweep` is asked to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The settings every cell starts from (TOML, as `gcl config` prints them).
    pub base: String,
    pub methods: Vec<MethodSpec>,
    pub grids: Vec<Grid>,
    pub ratios: Vec<f64>,
    pub seeds: Vec<u64>,
    #[serde(default)]
    pub study: Option<Study>,
}

/// One cell: a method (when the sweep has methods), a value of each grid, a ratio, a seed.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    pub index: usize,
    pub method: Option<String>,
    pub values: Vec<(String, String)>,
    pub ratio: f64,
    pub seed: u64,
}

impl Cell {
    /// The cell's name and folder: its method and values, e.g.
    /// `gcl-e,stage1.loss.noise_mul=0.5,ratio=100,seed=0`.
    pub fn label(&self) -> String {
        let mut parts: Vec<String> = self.method.iter().cloned().collect();
        parts.extend(self.values.iter().map(|(k, v)| format!("{k}={}", plain(v))));
        parts.push(format!("ratio={}", self.ratio));
        parts.push(format!("seed={}", self.seed));
        parts.join(",")
    }

    /// Its settings but the seed: the cells that `summary.md` averages.
    pub fn group(&self) -> (Option<String>, Vec<(String, String)>, u64) {
        (self.method.clone(), self.values.clone(), self.ratio.to_bits())
    }
}

/// A value as a file-name part: letters, digits and `.+-` kept, runs of anything else as `_`.
fn plain(v: &str) -> String {
    let mut out = String::new();
    for c in v.trim_matches('"').chars() {
        if c.is_ascii_alphanumeric() || ".+-".contains(c) {
            out.push(c);
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    out.trim_matches('_').to_string()
}

/// `KEY=V1,V2,...` split at the commas outside brackets, braces and quotes (a value may be
/// a TOML table: `stage1.loss.noise_mul_schedule={shape="linear",from=0,to=1}`).
pub fn parse_grid(arg: &str) -> Result<Grid> {
    let (key, list) = arg.split_once('=').with_context(|| format!("--grid expects KEY=V1,V2,..., got `{arg}`"))?;
    let key = key.trim();
    if key.is_empty() {
        bail!("--grid {arg}: no setting named before `=`");
    }
    let (mut values, mut cur, mut depth, mut quote) = (Vec::new(), String::new(), 0i32, None::<char>);
    for c in list.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '{' | '[') => depth += 1,
            (None, '}' | ']') => depth -= 1,
            (None, ',') if depth == 0 => {
                values.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    values.push(cur);
    let values: Vec<String> = values.into_iter().map(|v| v.trim().to_string()).collect();
    if values.iter().all(|v| v.is_empty()) {
        bail!("--grid {arg}: the grid of `{key}` is empty (give its values: {key}=V1,V2,...)");
    }
    if let Some(i) = values.iter().position(|v| v.is_empty()) {
        bail!("--grid {arg}: value {} of `{key}` is empty", i + 1);
    }
    for (i, v) in values.iter().enumerate() {
        if values[..i].contains(v) {
            bail!("--grid {arg}: `{v}` is listed twice");
        }
    }
    Ok(Grid { key: key.to_string(), values })
}

/// The methods of `--methods`: a file of [[method]] tables, a built-in list (baselines,
/// experts, clip), or names from the baselines list (`ce,gcl-e`).
pub fn methods(arg: &str) -> Result<Vec<MethodSpec>> {
    let path = Path::new(arg);
    let list = if let Some(text) = builtin_list(path) {
        parse_methods(text, &format!("the built-in method list `{arg}`"))?
    } else if path.exists() {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read methods file {arg}"))?;
        parse_methods(&text, arg)?
    } else {
        let all = parse_methods(DEFAULT_METHODS, "the baselines list")?;
        let names: Vec<&str> = arg.split(',').map(str::trim).collect();
        names
            .iter()
            .map(|n| all.iter().find(|m| m.name == *n).cloned().with_context(|| {
                let known: Vec<&str> = all.iter().map(|m| m.name.as_str()).collect();
                format!("--methods {arg}: `{n}` is neither a file, a built-in list (baselines, experts, clip) nor a method of the baselines ({})", known.join(", "))
            }))
            .collect::<Result<_>>()?
    };
    Ok(list.into_iter().map(|m| MethodSpec { name: m.name, settings: m.settings }).collect())
}

/// The cloud-form study's methods: GCL with each form, in stage 1 and (where it re-trains
/// with GCL) in stage 2.
fn cloud_form_methods(base: &Config) -> Result<Vec<MethodSpec>> {
    use crate::loss::LossConfig;
    if !matches!(base.stage1.loss, LossConfig::GclE(_) | LossConfig::GclA(_)) {
        bail!("--study cloud-forms compares GCL's cloud forms: stage 1 must train GCL-E or GCL-A (it trains {})", base.stage1.loss.name());
    }
    let stage2_gcl = matches!(base.stage2.method, crate::config::Stage2Method::Retrain { loss: LossConfig::GclE(_) | LossConfig::GclA(_) });
    ["log", "pow3", "pow4"]
        .iter()
        .map(|form| {
            let mut text = format!("stage1.loss.cloud = \"{form}\"\n");
            if stage2_gcl {
                text += &format!("stage2.method.loss.cloud = \"{form}\"\n");
            }
            Ok(MethodSpec { name: format!("cloud-{form}"), settings: text.parse()? })
        })
        .collect()
}

impl Plan {
    /// The plan of a `gcl sweep` command line; every cell's settings checked.
    pub fn new(base: &Config, grids: &[String], ratios: &[f64], seeds: &[u64], methods_arg: Option<&str>, study: Option<Study>) -> Result<Plan> {
        let grids: Vec<Grid> = grids.iter().map(|g| parse_grid(g)).collect::<Result<_>>()?;
        for (i, g) in grids.iter().enumerate() {
            if grids[..i].iter().any(|o| o.key == g.key) {
                bail!("--grid: `{}` has two grids; give its values in one --grid {}=V1,V2,...", g.key, g.key);
            }
            if matches!(g.key.as_str(), "data.ratio" | "run.seed") {
                bail!("--grid {}: use --{} for it", g.key, if g.key == "data.ratio" { "ratios" } else { "seeds" });
            }
        }
        let mut methods = match methods_arg {
            Some(m) => methods(m)?,
            None => Vec::new(),
        };
        let (mut ratios, mut seeds) = (ratios.to_vec(), seeds.to_vec());
        if study == Some(Study::CloudForms) {
            if !methods.is_empty() {
                bail!("--study cloud-forms chooses the methods (GCL with each cloud form): leave out --methods");
            }
            methods = cloud_form_methods(base)?;
            if ratios.is_empty() {
                ratios = vec![10.0, 50.0, 100.0, 200.0];
            }
            if seeds.is_empty() {
                seeds = vec![0, 1, 2];
            }
        }
        if ratios.is_empty() {
            ratios.push(base.data.ratio);
        }
        if seeds.is_empty() {
            seeds.push(base.run.seed);
        }
        if let Some(r) = ratios.iter().find(|r| !(r.is_finite() && **r >= 1.0)) {
            bail!("--ratios: {r} is not an imbalance ratio (n_max / n_min, at least 1)");
        }
        for (what, dup) in [("--ratios", ratios.iter().enumerate().any(|(i, r)| ratios[..i].contains(r))), ("--seeds", seeds.iter().enumerate().any(|(i, s)| seeds[..i].contains(s)))] {
            if dup {
                bail!("{what}: a value is listed twice");
            }
        }
        let plan = Plan { base: absolute_paths(base.clone())?.to_toml(), methods, grids, ratios, seeds, study };
        let mut labels = std::collections::HashSet::new();
        for cell in plan.cells() {
            plan.config(&cell)?;
            if !labels.insert(cell.label()) {
                bail!("two cells of this sweep have the same folder name `{}`: give grid values that differ in letters or digits", cell.label());
            }
        }
        Ok(plan)
    }

    /// methods x grid product x ratios x seeds, in that order (the seed changes fastest).
    pub fn cells(&self) -> Vec<Cell> {
        let methods: Vec<Option<String>> = if self.methods.is_empty() { vec![None] } else { self.methods.iter().map(|m| Some(m.name.clone())).collect() };
        let mut combos: Vec<Vec<(String, String)>> = vec![Vec::new()];
        for g in &self.grids {
            combos = combos.into_iter().flat_map(|c| g.values.iter().map(move |v| [c.clone(), vec![(g.key.clone(), v.clone())]].concat())).collect();
        }
        let mut cells = Vec::new();
        for m in &methods {
            for values in &combos {
                for &ratio in &self.ratios {
                    for &seed in &self.seeds {
                        cells.push(Cell { index: cells.len(), method: m.clone(), values: values.clone(), ratio, seed });
                    }
                }
            }
        }
        cells
    }

    pub fn base(&self) -> Result<Config> {
        let table: toml::Table = self.base.parse().context("sweep.json: the base settings are not valid TOML")?;
        Config::default().merge_table(table).context("sweep.json: the base settings")
    }

    /// A cell's settings: the base, its method's, its grid values (as `--set`), ratio, seed.
    pub fn config(&self, cell: &Cell) -> Result<Config> {
        let mut c = self.base()?;
        if let Some(name) = &cell.method {
            let m = self.methods.iter().find(|m| &m.name == name).with_context(|| format!("no method `{name}` in the sweep"))?;
            c = c.merge_table(m.settings.clone()).with_context(|| format!("method `{name}`"))?;
        }
        let sets: Vec<String> = cell.values.iter().map(|(k, v)| format!("{k}={v}")).collect();
        c = c.set_all(&sets).with_context(|| format!("--grid, in cell {}", cell.label()))?;
        c.data.ratio = cell.ratio;
        c.run.seed = cell.seed;
        c.validate().with_context(|| format!("cell {}", cell.label()))?;
        Ok(c)
    }

    pub fn load(dir: &Path) -> Result<Plan> {
        let path = dir.join("sweep.json");
        let text = std::fs::read_to_string(&path).with_context(|| format!("{} holds no sweep (no sweep.json; start one with gcl sweep --out {})", dir.display(), dir.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{}: not a sweep plan gcl can read", path.display()))
    }

    /// What differs between this plan and `other`, as lines.
    fn differences(&self, other: &Plan) -> Vec<String> {
        let mut out = Vec::new();
        if self.base != other.base {
            let (a, b) = (self.base().ok(), other.base().ok());
            match (a, b) {
                (Some(a), Some(b)) => out.extend(train::run_dir::differences(&a.resolved(), &b.resolved()).into_iter().map(|d| format!("setting {d}"))),
                _ => out.push("the base settings".into()),
            }
        }
        let names = |p: &Plan| format!("{:?}", p.methods.iter().map(|m| &m.name).collect::<Vec<_>>());
        let grids = |p: &Plan| format!("{:?}", p.grids.iter().map(|g| format!("{}={}", g.key, g.values.join(","))).collect::<Vec<_>>());
        for (what, a, b) in [
            ("methods", names(self), names(other)),
            ("grids", grids(self), grids(other)),
            ("ratios", format!("{:?}", self.ratios), format!("{:?}", other.ratios)),
            ("seeds", format!("{:?}", self.seeds), format!("{:?}", other.seeds)),
            ("study", format!("{:?}", self.study), format!("{:?}", other.study)),
        ] {
            if a != b {
                out.push(format!("{what}: {a} -> {b}"));
            }
        }
        if out.is_empty() && self != other {
            out.push("the methods' settings".into());
        }
        out
    }
}

/// The base settings with the data folder and weight files made absolute (a Slurm task may
/// start elsewhere).
fn absolute_paths(mut c: Config) -> Result<Config> {
    for p in [&mut c.data.dir, &mut c.model.pretrained, &mut c.model.class_embeddings].into_iter().flatten() {
        *p = std::path::absolute(&*p).with_context(|| format!("cannot make {} absolute", p.display()))?;
    }
    Ok(c)
}

/// How a task ended (`status/<cell>.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// done or failed.
    pub state: String,
    #[serde(default)]
    pub reused: bool,
    #[serde(default)]
    pub error: Option<String>,
    pub seconds: f64,
}

pub fn status_path(dir: &Path, cell: &Cell) -> PathBuf {
    dir.join("status").join(format!("{}.json", cell.label()))
}

pub fn run_dir(dir: &Path, cell: &Cell) -> PathBuf {
    dir.join("runs").join(cell.label())
}

/// `gcl sweep task DIR [--index I]`: trains cell I (default: `SLURM_ARRAY_TASK_ID`) of the
/// sweep in DIR, or reuses its finished run, and records how it ended.
pub fn run_task(dir: &Path, index: Option<usize>, verbose: bool) -> Result<()> {
    let plan = Plan::load(dir)?;
    let cells = plan.cells();
    let index = match index {
        Some(i) => i,
        None => {
            let v = std::env::var("SLURM_ARRAY_TASK_ID").context("gcl sweep task: give --index I, or run it as a Slurm array task (SLURM_ARRAY_TASK_ID is not set)")?;
            v.trim().parse().with_context(|| format!("SLURM_ARRAY_TASK_ID = `{v}` is not a task number"))?
        }
    };
    let cell = cells.get(index).with_context(|| format!("the sweep in {} has {} cells (0 to {}); there is no task {index}", dir.display(), cells.len(), cells.len().saturating_sub(1)))?;
    let t = Instant::now();
    let result = train_cell(&plan, dir, cell, verbose);
    let status = match &result {
        Ok(reused) => Status { state: "done".into(), reused: *reused, error: None, seconds: t.elapsed().as_secs_f64() },
        Err(e) => Status { state: "failed".into(), reused: false, error: Some(format!("{e:#}")), seconds: t.elapsed().as_secs_f64() },
    };
    let path = status_path(dir, cell);
    std::fs::create_dir_all(path.parent().unwrap()).with_context(|| format!("cannot create {}", path.parent().unwrap().display()))?;
    crate::util::write_atomic(&path, serde_json::to_string_pretty(&status)?.as_bytes())?;
    let reused = result.with_context(|| format!("sweep task {index} ({})", cell.label()))?;
    if verbose {
        eprintln!("gcl sweep: task {index} ({}) {}", cell.label(), if reused { "reused its finished run" } else { "done" });
    }
    Ok(())
}

/// Trains `cell` into its run folder; true when a finished run was there already.
fn train_cell(plan: &Plan, dir: &Path, cell: &Cell, verbose: bool) -> Result<bool> {
    let cfg = plan.config(cell)?;
    let data = cfg.data.prepare()?;
    let out = run_dir(dir, cell);
    if train::finished_run(&cfg, &out, &data)?.is_some() {
        return Ok(true);
    }
    // A task killed mid-run continues from its checkpoint; anything else there is replaced.
    let resume = continues(&cfg, &out);
    let opts = TrainOptions { out, resume, overwrite: !resume, stages: vec![Stage::One, Stage::Two], stage1_checkpoint: None, verbose, dist: crate::dist::Dist::single() };
    train::train(&cfg, &data, &opts)?;
    Ok(false)
}

/// Whether `out` holds an unfinished run of exactly these settings with a stage-1 checkpoint.
fn continues(cfg: &Config, out: &Path) -> bool {
    let (config, ck) = (out.join("config.toml"), out.join("stage1.safetensors"));
    if !config.exists() || !ck.exists() {
        return false;
    }
    match (Config::default().merge_file(&config), train::run_dir::saved_config(cfg, out)) {
        (Ok(before), Ok(now)) => train::run_dir::differences(&before.resolved(), &now).is_empty(),
        _ => false,
    }
}

/// Where a sweep's tasks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Emit {
    /// A Slurm job-array script, DIR/sweep.slurm: one array task per cell.
    Slurm,
}

pub struct SweepOptions {
    pub plan: Plan,
    pub out: PathBuf,
    /// Tasks at once on this machine, the cores split between them.
    pub jobs: usize,
    pub emit: Option<Emit>,
    /// Extra `#SBATCH` lines (`--partition=gpu`, `--time=2:00:00`).
    pub sbatch: Vec<String>,
    pub verbose: bool,
}

/// Opens DIR for `plan`: a new or empty folder gets the plan; a folder of the same sweep is
/// continued; another sweep's folder, or a folder of other files, is refused.
fn open(dir: &Path, plan: &Plan) -> Result<()> {
    let path = dir.join("sweep.json");
    if path.exists() {
        let before = Plan::load(dir)?;
        let diff = before.differences(plan);
        if !diff.is_empty() {
            bail!(
                "{} holds another sweep (its sweep.json differs: before -> now):\n  {}\ncontinue that sweep with its own command, or give another --out",
                dir.display(),
                diff.join("\n  ")
            );
        }
        return Ok(());
    }
    if let Ok(mut entries) = std::fs::read_dir(dir) {
        if let Some(e) = entries.next() {
            let name = e?.file_name();
            bail!("{} is not empty and holds no sweep (it has {}): give a new or empty folder as --out", dir.display(), name.to_string_lossy());
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    crate::util::write_atomic(&path, serde_json::to_string_pretty(plan)?.as_bytes())
}

/// `gcl sweep`: writes the plan, runs every cell (or writes the Slurm script), collects.
pub fn run_command(o: &SweepOptions) -> Result<()> {
    open(&o.out, &o.plan)?;
    let cells = o.plan.cells();
    if o.emit == Some(Emit::Slurm) {
        let script = o.out.join("sweep.slurm");
        crate::util::write_atomic(&script, slurm_script(&o.out, cells.len(), &o.sbatch)?.as_bytes())?;
        std::fs::create_dir_all(o.out.join("logs"))?;
        return crate::util::out(&format!(
            "{} cells; the Slurm job array is in {}\n  submit:  sbatch {}\n  then:    gcl sweep collect {}\n",
            cells.len(),
            script.display(),
            script.display(),
            o.out.display()
        ));
    }
    let failed = run_local(&o.out, &cells, o.jobs.max(1), &o.plan, o.verbose)?;
    let interrupted = crate::util::interrupted();
    let summary = collect::collect(&o.out)?;
    crate::util::out(&summary.text)?;
    if interrupted {
        bail!("interrupted; the finished cells are kept: run the same command again to continue");
    }
    if failed > 0 {
        bail!("{failed} of {} tasks failed (their errors are in {}); run the same command again to retry them", cells.len(), o.out.join("summary.md").display());
    }
    Ok(())
}

/// The Slurm array script: task `SLURM_ARRAY_TASK_ID` runs that cell with this binary.
pub fn slurm_script(dir: &Path, cells: usize, sbatch: &[String]) -> Result<String> {
    let exe = std::env::current_exe().context("cannot find this program's path for the Slurm script")?;
    let dir = std::path::absolute(dir)?;
    let q = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', r"'\''"));
    let mut s = String::from("#!/bin/bash\n");
    s += &format!("# gcl sweep: {cells} cells, one array task each. Submit with `sbatch {}`,\n", dir.join("sweep.slurm").display());
    s += &format!("# then gather the results with `gcl sweep collect {}`.\n", dir.display());
    s += "#SBATCH --job-name=gcl-sweep\n";
    s += &format!("#SBATCH --array=0-{}\n", cells.saturating_sub(1));
    s += &format!("#SBATCH --output={}/logs/task-%a.log\n", dir.display());
    if !sbatch.iter().any(|a| a.starts_with("--cpus-per-task") || a.starts_with("-c")) {
        s += "#SBATCH --cpus-per-task=4\n";
    }
    for a in sbatch {
        s += &format!("#SBATCH {a}\n");
    }
    s += "set -euo pipefail\n";
    s += "export OMP_NUM_THREADS=\"${SLURM_CPUS_PER_TASK:-1}\"\n";
    s += &format!("exec {} sweep task {}\n", q(&exe), q(&dir));
    Ok(s)
}

/// Runs the cells `jobs` at a time as `gcl sweep task` processes; returns how many failed.
fn run_local(dir: &Path, cells: &[Cell], jobs: usize, plan: &Plan, verbose: bool) -> Result<usize> {
    let exe = std::env::current_exe().context("cannot find this program's path to start the sweep's tasks")?;
    std::fs::create_dir_all(dir.join("logs"))?;
    let base = plan.base()?;
    // The cores split between the tasks (unless the settings fix run.threads).
    let threads = (crate::runtime::cores() / jobs).max(1);
    if verbose {
        let how = if base.run.threads == 0 { format!("{threads} thread(s) each") } else { format!("run.threads = {} each", base.run.threads) };
        eprintln!("gcl sweep: {} cells, {jobs} at a time ({how}); logs in {}", cells.len(), dir.join("logs").display());
    }
    let mut queue = cells.iter();
    let mut running: Vec<(&Cell, std::process::Child, Instant)> = Vec::new();
    let (mut finished, mut failed) = (0usize, 0usize);
    loop {
        while running.len() < jobs && !crate::util::interrupted() {
            let Some(cell) = queue.next() else { break };
            let log = dir.join("logs").join(format!("task-{}.log", cell.index));
            let file = std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
            let mut cmd = std::process::Command::new(&exe);
            cmd.args(["sweep", "task"]).arg(dir).args(["--index", &cell.index.to_string()]);
            cmd.stdout(file.try_clone()?).stderr(file);
            if base.run.threads == 0 {
                cmd.env("OMP_NUM_THREADS", threads.to_string());
            }
            let child = cmd.spawn().with_context(|| format!("cannot start {}", exe.display()))?;
            running.push((cell, child, Instant::now()));
        }
        if running.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        let mut i = 0;
        while i < running.len() {
            let Some(code) = running[i].1.try_wait()? else {
                i += 1;
                continue;
            };
            let (cell, _, t) = running.remove(i);
            finished += 1;
            let status: Option<Status> = std::fs::read_to_string(status_path(dir, cell)).ok().and_then(|s| serde_json::from_str(&s).ok());
            let what = match (&status, code.success()) {
                (Some(s), true) if s.reused => "reused".to_string(),
                (Some(_), true) => format!("done in {:.0} s", t.elapsed().as_secs_f64()),
                (Some(Status { error: Some(e), .. }), false) => {
                    failed += 1;
                    format!("FAILED: {}", e.lines().next().unwrap_or(""))
                }
                _ => {
                    failed += 1;
                    format!("FAILED ({code}); see {}", dir.join("logs").join(format!("task-{}.log", cell.index)).display())
                }
            };
            if verbose {
                eprintln!("gcl sweep: [{finished}/{}] {}: {what}", cells.len(), cell.label());
            }
        }
    }
    Ok(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_split_at_the_commas_between_values() {
        let g = parse_grid("stage1.loss.noise_mul_schedule={shape=\"linear\",from=0,to=1}, {shape=\"step\",from=0,to=1,at=0.5}").unwrap();
        assert_eq!(g.values, ["{shape=\"linear\",from=0,to=1}", "{shape=\"step\",from=0,to=1,at=0.5}"]);
        assert_eq!(parse_grid("a.b=1,\"x,y\",[1,2]").unwrap().values, ["1", "\"x,y\"", "[1,2]"]);
        assert!(format!("{:#}", parse_grid("stage1.lr=").unwrap_err()).contains("empty"));
        assert!(format!("{:#}", parse_grid("stage1.lr=0.1,,0.2").unwrap_err()).contains("value 2"));
        assert!(format!("{:#}", parse_grid("stage1.lr").unwrap_err()).contains("KEY=V1,V2"));
        assert_eq!(plain("{shape=\"linear\",from=0,to=1}"), "shape_linear_from_0_to_1");
    }
}
