//! The `gcl` command line.
use crate::config::{self, Config, Stage2Method};
use crate::data::split::{self, Profile, SplitRule};
use crate::data::{self, DatasetKind};
use crate::eval::report;
use crate::train::{self, Stages, TrainOptions};
use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "gcl", version, about = "Long-tailed image classification with Gaussian Clouded Logit adjustment (GCL)")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Train (GCL in two stages by default) and print the results table.
    Train(TrainArgs),
    /// Print the per-class counts of a long-tailed split.
    Split(SplitArgs),
    /// Print the settings of a preset (or of a config file) as TOML.
    Config(ConfigArgs),
    /// Train several methods on one split with one budget and print one table.
    Compare(CompareArgs),
    /// Measure training and evaluation throughput and peak memory (optionally against
    /// the PyTorch reference, side by side).
    Bench(BenchArgs),
    /// One measurement in this process (used by `gcl bench`).
    #[command(hide = true)]
    BenchWorker(BenchWorkerArgs),
}

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub settings: SettingArgs,
    /// Also measure ../shared/reference/train_reference.py with this Python (e.g. .venv/bin/python).
    #[arg(long, value_name = "PYTHON")]
    pub vs_reference: Option<PathBuf>,
    /// Folder of train_reference.py and gcl_reference.py.
    #[arg(long, default_value = "../shared/reference")]
    pub reference_dir: PathBuf,
    /// Rounds; each runs ours, then the reference, in fresh processes.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    #[arg(long, default_value_t = 10)]
    pub warmup_steps: usize,
    #[arg(long, default_value_t = 4)]
    pub windows: usize,
    #[arg(long, default_value_t = 20)]
    pub steps_per_window: usize,
    #[arg(long, default_value_t = 2)]
    pub eval_passes: usize,
    /// Also write the numbers as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Args)]
pub struct BenchWorkerArgs {
    #[arg(long)]
    pub config_file: PathBuf,
    #[arg(long)]
    pub budget: String,
}

#[derive(Args)]
pub struct CompareArgs {
    #[command(flatten)]
    pub settings: SettingArgs,
    /// TOML file of [[method]] tables (name + settings); the default list when absent
    /// (ce, focal, ldam-drw, balanced-softmax, logit-adjusted, crt, gcl-e, gcl-a).
    #[arg(long)]
    pub methods: Option<PathBuf>,
    /// Run only these methods of the list (comma-separated names).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Output folder: one sub-folder per method, compare.md and compare.csv.
    #[arg(long, default_value = "runs/compare")]
    pub out: PathBuf,
    /// Print the default method list and exit.
    #[arg(long)]
    pub list_default: bool,
    #[arg(long, short)]
    pub quiet: bool,
}

/// Where settings come from: a preset, then a TOML file, then flags, then --set.
#[derive(Args, Clone)]
pub struct SettingArgs {
    /// Built-in recipe: fmnist-lt-quick (default), fmnist-lt, cifar10-lt, cifar100-lt.
    #[arg(long, default_value = "fmnist-lt-quick")]
    pub preset: String,
    /// TOML file with settings layered over the preset.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Any setting, as section.key=value (e.g. stage1.lr=0.05); repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    #[arg(long)]
    pub dataset: Option<DatasetKind>,
    /// Folder with the dataset's files.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Imbalance ratio n_max / n_min.
    #[arg(long)]
    pub ratio: Option<f64>,
    /// Stage-1 epochs.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Stage-2 (classifier re-training) epochs; 0 skips stage 2.
    #[arg(long)]
    pub cls_epochs: Option<usize>,
    /// Stage-1 loss by name, with its default parameters: gcl-e, gcl-a, ce, focal, ldam,
    /// balanced-softmax, logit-adjusted. With a linear-classifier loss, stage 2 (GCL's
    /// cosine re-training) is switched off unless the settings name another stage 2.
    #[arg(long)]
    pub loss: Option<String>,
    /// cpu, cuda or cuda:N.
    #[arg(long)]
    pub device: Option<String>,
    /// fp32 (default) or bf16 (autocast).
    #[arg(long)]
    pub precision: Option<crate::precision::Precision>,
    /// Intra-op threads (0: libtorch's choice).
    #[arg(long)]
    pub threads: Option<usize>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Split file (one training index per line) instead of the ratio rule.
    #[arg(long)]
    pub split: Option<PathBuf>,
}

impl SettingArgs {
    pub fn resolve(&self) -> Result<Config> {
        let mut c = config::preset(&self.preset)?;
        if let Some(path) = &self.config {
            c = c.merge_file(path)?;
        }
        if let Some(v) = self.dataset {
            c.data.dataset = v;
        }
        if let Some(v) = &self.data {
            c.data.dir = Some(v.clone());
        }
        if let Some(v) = self.ratio {
            c.data.ratio = v;
        }
        if let Some(v) = self.epochs {
            c.stage1.epochs = v;
        }
        if let Some(v) = self.cls_epochs {
            c.stage2.epochs = v;
        }
        if let Some(v) = &self.loss {
            c.stage1.loss = config::loss_by_name(v)?;
            if let Stage2Method::Retrain { loss } = c.stage2.method {
                if loss.head() != c.stage1.loss.head() {
                    c.stage2.method = Stage2Method::None;
                }
            }
        }
        if let Some(v) = &self.device {
            c.run.device = v.clone();
        }
        if let Some(v) = self.precision {
            c.run.precision = v;
        }
        if let Some(v) = self.threads {
            c.run.threads = v;
        }
        if let Some(v) = self.seed {
            c.run.seed = v;
        }
        if let Some(v) = &self.split {
            c.data.split = SplitRule::IndexFile { path: v.clone() };
        }
        for s in &self.set {
            c = c.set(s)?;
        }
        c.validate()?;
        Ok(c)
    }
}

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub settings: SettingArgs,
    /// Output folder: config.toml, split.txt, checkpoints, results.json.
    #[arg(long, default_value = "runs/latest")]
    pub out: PathBuf,
    /// Continue stage 1 from OUT/stage1.safetensors.
    #[arg(long)]
    pub resume: bool,
    /// Which stages to run.
    #[arg(long, value_enum, default_value = "both")]
    pub stages: Stages,
    /// Stage 2 starts from this stage-1 checkpoint (default OUT/stage1.safetensors).
    #[arg(long)]
    pub stage1_checkpoint: Option<PathBuf>,
    /// No per-epoch log lines or progress bars.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct SplitArgs {
    #[arg(long, default_value = "fashion-mnist")]
    pub dataset: DatasetKind,
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[arg(long, default_value_t = 100.0)]
    pub ratio: f64,
    #[arg(long, value_enum, default_value = "exp")]
    pub profile: Profile,
    /// Pick each class's images at random with this seed instead of the first ones in file order.
    #[arg(long)]
    pub random_seed: Option<u64>,
    /// Write the split's training indices here, one per line.
    #[arg(long)]
    pub export: Option<PathBuf>,
}

#[derive(Args)]
pub struct ConfigArgs {
    #[command(flatten)]
    pub settings: SettingArgs,
    /// List the presets.
    #[arg(long)]
    pub list: bool,
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(a) => {
            let cfg = a.settings.resolve()?;
            let dataset = data::load(cfg.data.dataset, cfg.data.dir.as_deref())?;
            let prepared = train::prepare(&cfg, dataset)?;
            let opts = TrainOptions {
                out: a.out.clone(),
                resume: a.resume,
                stages: a.stages,
                stage1_checkpoint: a.stage1_checkpoint,
                verbose: !a.quiet,
            };
            let res = train::train(&cfg, &prepared, &opts)?;
            print!("{}", report::table(&res, cfg.run.many_above, cfg.run.few_below));
            println!("\nresults: {}", a.out.join("results.json").display());
            Ok(())
        }
        Command::Split(a) => {
            let ds = data::load(a.dataset, a.data.as_deref())?;
            let rule = match a.random_seed {
                Some(seed) => SplitRule::Random { seed },
                None => SplitRule::FirstN,
            };
            let idx = split::longtail_indices(&ds.train.labels, ds.train.num_classes, a.ratio, a.profile, &rule)?;
            let labels: Vec<i64> = idx.iter().map(|&i| ds.train.labels[i as usize]).collect();
            let counts = data::class_counts(&labels, ds.train.num_classes);
            println!("{} long-tailed split, ratio {}, profile {:?}", a.dataset.name(), a.ratio, a.profile);
            println!("{:>5} {:>7}", "class", "images");
            for (c, n) in counts.iter().enumerate() {
                println!("{c:>5} {n:>7}");
            }
            println!("total {:>7}", idx.len());
            if let Some(path) = a.export {
                split::write_index_file(&path, &idx).with_context(|| "exporting the split")?;
                println!("wrote {} indices to {}", idx.len(), path.display());
            }
            Ok(())
        }
        Command::Compare(a) => {
            if a.list_default {
                print!("{}", crate::compare::DEFAULT_METHODS.trim_start());
                return Ok(());
            }
            let base = a.settings.resolve()?;
            let (text, origin) = match &a.methods {
                Some(p) => (
                    std::fs::read_to_string(p).with_context(|| format!("cannot read methods file {}", p.display()))?,
                    p.display().to_string(),
                ),
                None => (crate::compare::DEFAULT_METHODS.to_string(), "the default method list".to_string()),
            };
            let mut methods = crate::compare::parse_methods(&text, &origin)?;
            if !a.only.is_empty() {
                if let Some(bad) = a.only.iter().find(|n| !methods.iter().any(|m| &m.name == *n)) {
                    anyhow::bail!("--only: no method `{bad}` in {origin}");
                }
                methods.retain(|m| a.only.contains(&m.name));
            }
            let dataset = data::load(base.data.dataset, base.data.dir.as_deref())?;
            let prepared = train::prepare(&base, dataset)?;
            let rows = crate::compare::run(&base, &methods, &prepared, &a.out, !a.quiet)?;
            println!("\nTop-1 accuracy (%) of each method's final model; {} train images, counts {:?}\n", prepared.train.len(), prepared.counts);
            print!("{}", crate::compare::markdown(&rows));
            println!("\ntables: {}, {}", a.out.join("compare.md").display(), a.out.join("compare.csv").display());
            Ok(())
        }
        Command::Bench(a) => bench(a),
        Command::BenchWorker(a) => {
            let cfg = Config::default().merge_file(&a.config_file)?;
            let budget: crate::bench::Budget = serde_json::from_str(&a.budget).context("--budget")?;
            let dataset = data::load(cfg.data.dataset, cfg.data.dir.as_deref())?;
            let prepared = train::prepare(&cfg, dataset)?;
            let m = crate::bench::measure(&cfg, &prepared, &budget)?;
            println!("{}", serde_json::to_string(&m)?);
            Ok(())
        }
        Command::Config(a) => {
            if a.list {
                for (name, what) in config::PRESETS {
                    println!("{name:<16} {what}");
                }
                return Ok(());
            }
            print!("{}", a.settings.resolve()?.to_toml());
            Ok(())
        }
    }
}

fn bench(a: BenchArgs) -> Result<()> {
    use crate::bench::{median, run_ours, run_reference, Budget, Measurement, Reference};
    let cfg = a.settings.resolve()?;
    let budget = Budget { warmup_steps: a.warmup_steps, windows: a.windows, steps_per_window: a.steps_per_window, eval_passes: a.eval_passes };
    if budget.windows == 0 || budget.steps_per_window == 0 || a.rounds == 0 {
        anyhow::bail!("--rounds, --windows and --steps-per-window must be at least 1");
    }
    let data_dir = cfg.data.dir.clone().or_else(|| cfg.data.dataset.default_dir()).context("give the data folder with --data")?;
    let dataset = data::load(cfg.data.dataset, Some(&data_dir))?;
    let prepared = train::prepare(&cfg, dataset)?;
    let work = std::env::temp_dir().join(format!("gcl-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let config_path = work.join("config.toml");
    crate::util::write_atomic(&config_path, cfg.to_toml().as_bytes())?;
    let split_path = work.join("split.txt");
    split::write_index_file(&split_path, &prepared.indices)?;
    let reference = match &a.vs_reference {
        Some(py) => {
            // The harness beside the sources: from the working folder, or where gcl was built.
            let script = [PathBuf::from("scripts/bench_reference.py"), PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/bench_reference.py")]
                .into_iter()
                .find(|p| p.exists())
                .context("scripts/bench_reference.py not found (run gcl bench from the repository root)")?;
            let rdir = a.reference_dir.clone();
            if !rdir.join("train_reference.py").exists() {
                anyhow::bail!("--reference-dir {}: no train_reference.py there", rdir.display());
            }
            Some(Reference { python: py.clone(), script, reference_dir: rdir })
        }
        None => None,
    };
    eprintln!(
        "bench: {} train images, batch {}, device {}, precision {:?}; {} rounds of {} windows x {} steps (+{} warm-up), {} eval passes",
        prepared.train.len(),
        cfg.stage1.batch_size,
        cfg.run.device,
        cfg.run.precision,
        a.rounds,
        a.windows,
        a.steps_per_window,
        a.warmup_steps,
        a.eval_passes
    );
    let (mut ours, mut theirs) = (Vec::<Measurement>::new(), Vec::<Measurement>::new());
    for round in 0..a.rounds {
        eprintln!("bench: round {}/{}: gcl", round + 1, a.rounds);
        ours.push(run_ours(&config_path, &budget)?);
        if let Some(r) = &reference {
            eprintln!("bench: round {}/{}: reference", round + 1, a.rounds);
            theirs.push(run_reference(r, &cfg, &data_dir, &split_path, &budget)?);
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    let all = |ms: &[Measurement], f: fn(&Measurement) -> &Vec<f64>| ms.iter().flat_map(|m| f(m).clone()).collect::<Vec<f64>>();
    let peak = |ms: &[Measurement]| ms.iter().map(|m| m.peak_rss_mib).fold(f64::NAN, f64::max);
    let rows: [(&str, fn(&Measurement) -> &Vec<f64>); 3] =
        [("stage-1 training", |m| &m.stage1), ("stage-2 training", |m| &m.stage2), ("evaluation", |m| &m.eval)];
    println!("\n{:<18} {:>14} {:>18} {:>8}", "images/s (median)", "gcl", "reference", "ratio");
    let mut json = serde_json::Map::new();
    for (name, f) in rows {
        let o = median(&all(&ours, f));
        let mut line = format!("{name:<18} {o:>14.1}");
        let mut entry = serde_json::json!({"gcl": o, "gcl_windows": all(&ours, f)});
        if reference.is_some() {
            let t = median(&all(&theirs, f));
            line += &format!(" {t:>18.1} {:>7.2}x", o / t);
            entry["reference"] = serde_json::json!(t);
            entry["reference_windows"] = serde_json::json!(all(&theirs, f));
            entry["ratio"] = serde_json::json!(o / t);
        }
        println!("{line}");
        json.insert(name.replace(' ', "_"), entry);
    }
    let mut line = format!("{:<18} {:>14.0}", "peak memory (MiB)", peak(&ours));
    if reference.is_some() {
        line += &format!(" {:>18.0} {:>7.2}x", peak(&theirs), peak(&ours) / peak(&theirs));
        json.insert("peak_rss_mib".into(), serde_json::json!({"gcl": peak(&ours), "reference": peak(&theirs)}));
    } else {
        json.insert("peak_rss_mib".into(), serde_json::json!({"gcl": peak(&ours)}));
    }
    println!("{line}");
    if let Some(p) = a.json {
        crate::util::write_atomic(&p, serde_json::to_string_pretty(&serde_json::Value::Object(json))?.as_bytes())?;
    }
    Ok(())
}
