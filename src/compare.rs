//! `gcl compare`: several methods on one split with one budget, in one table.
//!
//! Methods come from a TOML file (`[[method]]` tables: a `name` and any settings to layer
//! over the base configuration) or the default list. Each method runs into OUT/<name>/;
//! a method whose results.json already holds the same settings is not trained again, and
//! methods that share their whole stage 1 (CE and cRT, say) train it once.
use crate::config::Config;
use crate::data::Prepared;
use crate::eval::report::Results;
use crate::eval::table::{frac, pct, Table};
use crate::eval::Accuracy;
use crate::train::{self, Stage, TrainOptions};
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// What `gcl compare` is asked to do.
pub struct CompareOptions {
    /// The settings every method starts from.
    pub base: Config,
    /// A TOML file of [[method]] tables; the default list when absent.
    pub methods: Option<PathBuf>,
    /// Run only these methods of the list.
    pub only: Vec<String>,
    pub out: PathBuf,
    pub verbose: bool,
}

/// `gcl compare`: trains (or reuses) every method, prints the table and writes it.
pub fn run_command(o: &CompareOptions) -> Result<()> {
    let (text, origin) = match &o.methods {
        Some(p) => match builtin_list(p) {
            Some(list) => (list.to_string(), format!("the built-in method list `{}`", p.display())),
            None => (std::fs::read_to_string(p).with_context(|| format!("cannot read methods file {} (the built-in lists are: baselines, experts, clip)", p.display()))?, p.display().to_string()),
        },
        None => (DEFAULT_METHODS.to_string(), "the default method list".to_string()),
    };
    let mut methods = parse_methods(&text, &origin)?;
    // A classifier started from CLIP's text gives a zero-shot row for free: first in the table.
    if o.base.model.head_init == crate::model::HeadInit::Text && !methods.iter().any(|m| m.name == "zero-shot") {
        methods.insert(0, parse_methods(ZERO_SHOT, "the zero-shot row")?.remove(0));
    }
    if !o.only.is_empty() {
        if let Some(bad) = o.only.iter().find(|n| !methods.iter().any(|m| &m.name == *n)) {
            bail!("--only: no method `{bad}` in {origin}");
        }
        methods.retain(|m| o.only.contains(&m.name));
    }
    if let (Some(f), true) = (&o.base.fitted, o.verbose) {
        eprintln!("gcl: {f}");
    }
    let data = o.base.data.prepare()?;
    let rows = run(&o.base, &methods, &data, &o.out, o.verbose)?;
    crate::util::out(&format!(
        "\nTop-1 accuracy (%) of each method's final model; {} train images, counts {:?}\n\n{}\ntables: {}, {}\n",
        data.train.len(),
        data.counts,
        table(&rows, pct).markdown(),
        o.out.join("compare.md").display(),
        o.out.join("compare.csv").display()
    ))
}

/// One method: a name and the settings that make it.
#[derive(Debug, Clone)]
pub struct Method {
    pub name: String,
    pub settings: toml::Table,
}

/// The default comparison: the baselines of the GCL paper and GCL itself.
pub const DEFAULT_METHODS: &str = r#"
[[method]]
name = "ce"
stage1.loss = { name = "ce" }
stage2.method = { name = "none" }

[[method]]
name = "focal"
stage1.loss = { name = "focal", gamma = 1.0 }
stage2.method = { name = "none" }

[[method]]
name = "ldam-drw"
stage1.loss = { name = "ldam", max_m = 0.5, s = 30.0, drw_at = 0.8 }
stage2.method = { name = "none" }

[[method]]
name = "balanced-softmax"
stage1.loss = { name = "balanced-softmax" }
stage2.method = { name = "none" }

[[method]]
name = "logit-adjusted"
stage1.loss = { name = "logit-adjusted", tau = 1.0 }
stage2.method = { name = "none" }

[[method]]
name = "crt"
stage1.loss = { name = "ce" }
stage2.method = { name = "crt" }

[[method]]
name = "lws"
stage1.loss = { name = "ce" }
stage2.method = { name = "lws" }

[[method]]
name = "ncm"
stage1.loss = { name = "ce" }
stage2.method = { name = "ncm" }

[[method]]
name = "gcl-e"
stage1.loss = { name = "gcl-e", s = 30.0, m = 0.0, noise_mul = 0.5 }
stage2.method = { name = "retrain", loss = { name = "gcl-e", s = 20.0, m = 0.1, noise_mul = 0.5, focal_gamma = 1.0 } }

[[method]]
name = "gcl-a"
stage1.loss = { name = "gcl-a", s = 30.0, m = 0.0, epsilon = 0.1 }
stage2.method = { name = "retrain", loss = { name = "gcl-a", s = 20.0, m = 0.1, epsilon = 0.1, focal_gamma = 1.0 } }
"#;

/// Single-expert GCL against 3-expert GCL (RIDE-style, `model.experts`), same losses.
pub const EXPERT_METHODS: &str = r#"
[[method]]
name = "gcl-e"
model.experts = 1
stage1.loss = { name = "gcl-e", s = 30.0, m = 0.0, noise_mul = 0.5 }
stage2.method = { name = "retrain", loss = { name = "gcl-e", s = 20.0, m = 0.1, noise_mul = 0.5, focal_gamma = 1.0 } }

[[method]]
name = "gcl-e-3experts"
model.experts = 3
stage1.loss = { name = "gcl-e", s = 30.0, m = 0.0, noise_mul = 0.5 }
stage2.method = { name = "retrain", loss = { name = "gcl-e", s = 20.0, m = 0.1, noise_mul = 0.5, focal_gamma = 1.0 } }
"#;

/// The zero-shot row: CLIP's classifier from text, evaluated without training.
macro_rules! zero_shot {
    () => {
        r#"
[[method]]
name = "zero-shot"
model.head_init = "text"
model.tune = { name = "linear" }
stage1.epochs = 0
stage2.method = { name = "none" }
"#
    };
}
pub const ZERO_SHOT: &str = zero_shot!();

/// On a CLIP backbone (`--arch clip_vit_b_16 --pretrained FILE`): zero-shot, LIFT (its
/// logit-adjusted loss) and GCL-E, both with AdaptFormer and the text start.
pub const CLIP_METHODS: &str = concat!(
    zero_shot!(),
    r#"
[[method]]
name = "lift"
model.head_init = "text"
model.tune = { name = "adaptformer" }
stage1.loss = { name = "logit-adjusted", tau = 1.0 }
stage2.method = { name = "none" }

[[method]]
name = "gcl-e"
model.head_init = "text"
model.tune = { name = "adaptformer" }
stage1.loss = { name = "gcl-e", s = 30.0, m = 0.0, noise_mul = 0.5 }
stage2.method = { name = "none" }
"#
);

/// A built-in list by name (`--methods baselines|experts|clip`), unless a file of that name exists.
pub fn builtin_list(name: &Path) -> Option<&'static str> {
    if name.exists() {
        return None;
    }
    match name.to_str()? {
        "baselines" => Some(DEFAULT_METHODS),
        "experts" => Some(EXPERT_METHODS),
        "clip" => Some(CLIP_METHODS),
        _ => None,
    }
}

pub fn parse_methods(text: &str, origin: &str) -> Result<Vec<Method>> {
    let mut doc: toml::Table = text.parse().with_context(|| format!("{origin}: not valid TOML"))?;
    let list = match doc.remove("method") {
        Some(toml::Value::Array(a)) => a,
        _ => bail!("{origin}: expected [[method]] tables"),
    };
    if let Some(k) = doc.keys().next() {
        bail!("{origin}: unexpected top-level key `{k}` (only [[method]] tables)");
    }
    let mut out: Vec<Method> = Vec::new();
    for (i, m) in list.into_iter().enumerate() {
        let toml::Value::Table(mut t) = m else { bail!("{origin}: method {} is not a table", i + 1) };
        let name = match t.remove("name") {
            Some(toml::Value::String(s)) if is_plain(&s) => s,
            Some(other) => bail!("{origin}: method {}: name {other} must be letters, digits, '-', '_' or '.'", i + 1),
            None => bail!("{origin}: method {} has no name", i + 1),
        };
        if out.iter().any(|o| o.name == name) {
            bail!("{origin}: method `{name}` is listed twice");
        }
        out.push(Method { name, settings: t });
    }
    if out.is_empty() {
        bail!("{origin}: no method listed");
    }
    Ok(out)
}

fn is_plain(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

impl Method {
    pub fn config(&self, base: &Config) -> Result<Config> {
        base.clone().merge_table(self.settings.clone()).with_context(|| format!("method `{}`", self.name))
    }
}

/// One row of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub method: String,
    pub acc: Accuracy,
    pub seconds: f64,
    /// Stage 1's seconds per epoch.
    pub epoch_seconds: Option<f64>,
    pub params: Option<crate::model::ParamCounts>,
    pub reused: bool,
}

/// Stage-1 identity: runs with equal keys train the same stage 1.
fn stage1_key(cfg: &Config) -> String {
    let v = serde_json::json!({"data": cfg.data, "model": cfg.model, "stage1": cfg.stage1, "seed": cfg.run.seed});
    v.to_string()
}

pub fn run(base: &Config, methods: &[Method], data: &Prepared, out: &Path, verbose: bool) -> Result<Vec<Row>> {
    // Check every method's settings before training anything.
    let configs: Vec<Config> = methods.iter().map(|m| m.config(base)).collect::<Result<_>>()?;
    let mut rows = Vec::new();
    let mut stage1_done: HashMap<String, (PathBuf, Results)> = HashMap::new();
    for (m, cfg) in methods.iter().zip(&configs) {
        let dir = out.join(&m.name);
        let results_path = dir.join("results.json");
        let key = stage1_key(cfg);
        let (res, reused) = match train::finished_run(cfg, &dir, data)? {
            Some(r) => {
                if verbose {
                    eprintln!("compare: {}: reusing {}", m.name, results_path.display());
                }
                (r, true)
            }
            _ => {
                if verbose {
                    eprintln!("compare: {}: training", m.name);
                }
                let shared = stage1_done.get(&key).filter(|_| stage2_runs(cfg));
                let opts = TrainOptions {
                    out: dir.clone(),
                    resume: false,
                    // The folder is compare's own: an earlier, different run there is replaced.
                    overwrite: true,
                    stages: if shared.is_some() { vec![Stage::Two] } else { vec![Stage::One, Stage::Two] },
                    stage1_checkpoint: shared.map(|(ck, _)| ck.clone()),
                    verbose,
                    dist: crate::dist::Dist::single(),
                };
                let mut r = train::train(cfg, data, &opts)?;
                if let Some((_, s1)) = shared {
                    // Stage 1 came from an earlier method with identical stage-1 settings.
                    r.stage1 = s1.stage1.clone();
                    r.seconds.stage1 = s1.seconds.stage1;
                    crate::util::write_atomic(&results_path, serde_json::to_string_pretty(&r)?.as_bytes())?;
                }
                (r, false)
            }
        };
        let ck = dir.join("stage1.safetensors");
        if ck.exists() {
            stage1_done.entry(key).or_insert((ck, res.clone()));
        }
        let acc = res.final_accuracy().with_context(|| format!("method `{}` produced no accuracy", m.name))?.clone();
        let seconds = res.seconds.stage1.unwrap_or(0.0) + res.seconds.stage2.unwrap_or(0.0);
        let epoch_seconds = res.seconds.stage1.filter(|_| cfg.stage1.epochs > 0).map(|s| s / cfg.stage1.epochs as f64);
        rows.push(Row { method: m.name.clone(), acc, seconds, epoch_seconds, params: res.params, reused });
    }
    crate::util::write_atomic(&out.join("compare.md"), table(&rows, pct).markdown().as_bytes())?;
    crate::util::write_atomic(&out.join("compare.csv"), table(&rows, frac).csv().as_bytes())?;
    Ok(rows)
}

fn stage2_runs(cfg: &Config) -> bool {
    cfg.stage2.method != crate::config::Stage2Method::None
}

/// Method, overall, Many, Medium, Few (each accuracy through `fmt`), training time, stage
/// 1's time per epoch, weights.
pub fn table(rows: &[Row], fmt: fn(Option<f64>) -> String) -> Table {
    let mut t = Table::new(&["method", "overall", "many", "medium", "few", "time (s)", "s / epoch (stage 1)", "weights"]);
    for r in rows {
        let a = &r.acc;
        let epoch = r.epoch_seconds.map_or("-".into(), |s| format!("{s:.1}"));
        let weights = r.params.map_or("-".into(), |p| p.total.to_string());
        t.row(&[r.method.clone(), fmt(Some(a.top1)), fmt(a.many), fmt(a.medium), fmt(a.few), format!("{:.0}", r.seconds), epoch, weights]);
    }
    t
}
