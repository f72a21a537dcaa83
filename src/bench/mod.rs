//! `gcl bench`: training and evaluation throughput and peak memory, optionally side by
//! side with the PyTorch reference (shared/reference/train_reference.py).
//!
//! Each measurement runs in a fresh process (`gcl bench-worker`, or the reference's
//! harness scripts/bench_reference.py), so peak memory is the process's own; rounds
//! alternate ours and the reference's, so both see the same machine load.
pub mod arch;
pub mod input;
pub mod peak;

use crate::config::Config;
use crate::data::{split, Prepared};
use crate::eval::Table;
use crate::kernels::autocast::Precision;
use crate::runtime::Runtime;
use crate::train::{Session, Stage, StageRun};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// What `gcl bench` is asked to measure.
pub struct BenchOptions {
    pub cfg: Config,
    pub budget: Budget,
    /// Rounds; each runs ours, then the reference, in fresh processes.
    pub rounds: usize,
    /// Also measure the reference with this Python.
    pub vs_reference: Option<PathBuf>,
    /// Folder of train_reference.py and gcl_reference.py.
    pub reference_dir: PathBuf,
    /// Also write the numbers as JSON here.
    pub json: Option<PathBuf>,
}

/// How much to measure.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Budget {
    /// Untimed training steps first (allocator, oneDNN kernels, caches).
    pub warmup_steps: usize,
    /// Timed windows per phase; the median is reported.
    pub windows: usize,
    pub steps_per_window: usize,
    /// Timed passes over the test set.
    pub eval_passes: usize,
}

/// One process's measurements (images/s per window; peak resident memory).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Measurement {
    pub stage1: Vec<f64>,
    pub stage2: Vec<f64>,
    pub eval: Vec<f64>,
    pub peak_rss_mib: f64,
    /// Peak GPU memory allocated by the framework, on CUDA runs.
    #[serde(default)]
    pub peak_gpu_mib: Option<f64>,
    /// Weights the training step changes (`gcl bench --arch` with a tuning mode).
    #[serde(default)]
    pub trainable: Option<u64>,
    /// The network's FLOPs per image in each phase (counted from its layers).
    #[serde(default)]
    pub flops: Option<crate::model::flops::Phases>,
}

pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    }
}

/// Peak resident memory of this process (VmHWM), in MiB.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Images/s of `windows` windows of `steps` training steps each, after `warmup` steps, through
/// the training loop itself (`StageRun::run_epoch`, epochs following one another).
fn time_training(session: &mut Session, stage: Stage, budget: &Budget) -> Result<Vec<f64>> {
    let mut run = StageRun::new(session, stage)?;
    let (mut out, mut step, mut seen) = (Vec::new(), 0usize, 0i64);
    let total = budget.warmup_steps + budget.windows * budget.steps_per_window;
    let mut window_start = Instant::now();
    let mut epoch = 0;
    while step < total {
        run.run_epoch(epoch, |s| {
            let (images, loss) = (s.images, s.loss);
            step += 1;
            if step <= budget.warmup_steps {
                if step == budget.warmup_steps {
                    let _ = loss.double_value(&[]); // the device is done with the warm-up
                    window_start = Instant::now();
                }
                return Ok(step < total);
            }
            seen += images;
            if (step - budget.warmup_steps) % budget.steps_per_window == 0 {
                // Reading the loss waits for the device before the clock stops.
                let v = loss.double_value(&[]);
                if !v.is_finite() {
                    bail!("bench: the loss became {v}");
                }
                out.push(seen as f64 / window_start.elapsed().as_secs_f64());
                (seen, window_start) = (0, Instant::now());
            }
            Ok(step < total)
        })?;
        epoch += 1;
    }
    Ok(out)
}

/// Measures this process: stage 1, stage 2 and evaluation.
pub fn measure(cfg: &Config, data: &Prepared, budget: &Budget) -> Result<Measurement> {
    let rt = Runtime::resolve(&cfg.run)?;
    let mut session = Session::new(cfg, data, rt, false)?;
    // The images' sizes as the transforms make them (training crops, evaluation images).
    let first = data.train.sample(0)?.geometry;
    let side = data.train_transform.size().map_or((first.h as i64, first.w as i64), |s| (s as i64, s as i64));
    let e = data.test_transform.apply(data.test.sample(0)?)?.geometry;
    let flops = session.model.phases(side, (e.h as i64, e.w as i64));
    let stage1 = time_training(&mut session, Stage::One, budget)?;
    // Stage 2 as configured; a method that does not train (none, tau-norm) is timed as cRT.
    let stage2 = time_training(&mut session, Stage::Two, budget)?;
    let mut eval = Vec::new();
    session.evaluate()?; // warm-up
    for _ in 0..budget.eval_passes {
        let t = Instant::now();
        session.evaluate()?;
        eval.push(data.test.len() as f64 / t.elapsed().as_secs_f64());
    }
    Ok(Measurement { stage1, stage2, eval, peak_rss_mib: peak_rss_mib(), peak_gpu_mib: None, trainable: None, flops: Some(flops) })
}

/// `gcl bench-worker`: one measurement in this process, printed as a JSON line.
pub fn worker(cfg: &Config, budget: &Budget) -> Result<()> {
    let m = measure(cfg, &cfg.data.prepare()?, budget)?;
    crate::util::out(&format!("{}\n", serde_json::to_string(&m)?))
}

/// `gcl bench`: rounds of fresh measuring processes (ours, then the reference's), the medians
/// and their ratios as a table (and JSON).
pub fn run_command(o: &BenchOptions) -> Result<()> {
    let (cfg, budget) = (&o.cfg, &o.budget);
    if budget.windows == 0 || budget.steps_per_window == 0 || o.rounds == 0 {
        bail!("--rounds, --windows and --steps-per-window must be at least 1");
    }
    let prepared = cfg.data.prepare()?;
    // The reference reads the same folder.
    let data_dir = cfg.data.dataset.resolve_dir(cfg.data.dir.as_deref())?;
    let work = std::env::temp_dir().join(format!("gcl-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let config_path = work.join("config.toml");
    crate::util::write_atomic(&config_path, cfg.to_toml().as_bytes())?;
    let split_path = work.join("split.txt");
    split::write_index_file(&split_path, &prepared.indices)?;
    let reference = match &o.vs_reference {
        Some(py) => {
            // The harness beside the sources: from the working folder, or where gcl was built.
            let script = [PathBuf::from("scripts/bench_reference.py"), PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/bench_reference.py")]
                .into_iter()
                .find(|p| p.exists())
                .context("scripts/bench_reference.py not found (run gcl bench from the repository root)")?;
            if !o.reference_dir.join("train_reference.py").exists() {
                bail!("--reference-dir {}: no train_reference.py there", o.reference_dir.display());
            }
            Some(Reference { python: py.clone(), script, reference_dir: o.reference_dir.clone() })
        }
        None => None,
    };
    eprintln!(
        "bench: {} train images, batch {}, device {}, precision {:?}; {} rounds of {} windows x {} steps (+{} warm-up), {} eval passes",
        prepared.train.len(),
        cfg.stage1.batch_size,
        cfg.run.device,
        cfg.run.precision,
        o.rounds,
        budget.windows,
        budget.steps_per_window,
        budget.warmup_steps,
        budget.eval_passes
    );
    let rt = Runtime::resolve(&cfg.run)?;
    eprintln!("bench: {}{}; measuring its peak ...", crate::util::cpu_name(), isa_cap_note());
    let machine = peak::measure(rt.device, rt.threads);
    eprintln!("bench: {}", machine.describe());
    let (mut ours, mut theirs) = (Vec::<Measurement>::new(), Vec::<Measurement>::new());
    for round in 0..o.rounds {
        eprintln!("bench: round {}/{}: gcl", round + 1, o.rounds);
        ours.push(run_ours(&config_path, budget)?);
        if let Some(r) = &reference {
            eprintln!("bench: round {}/{}: reference", round + 1, o.rounds);
            theirs.push(run_reference(r, cfg, &data_dir, &split_path, budget)?);
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    let all = |ms: &[Measurement], f: fn(&Measurement) -> &Vec<f64>| ms.iter().flat_map(|m| f(m).clone()).collect::<Vec<f64>>();
    let peak = |ms: &[Measurement]| ms.iter().map(|m| m.peak_rss_mib).fold(f64::NAN, f64::max);
    let rows: [(&str, fn(&Measurement) -> &Vec<f64>); 3] =
        [("stage-1 training", |m| &m.stage1), ("stage-2 training", |m| &m.stage2), ("evaluation", |m| &m.eval)];
    let mut table =
        if reference.is_some() { Table::new(&["images/s (median)", "gcl", "reference", "ratio"]) } else { Table::new(&["images/s (median)", "gcl"]) };
    let mut json = serde_json::Map::new();
    for (name, f) in rows {
        let o = median(&all(&ours, f));
        let mut entry = serde_json::json!({"gcl": o, "gcl_windows": all(&ours, f)});
        if reference.is_some() {
            let t = median(&all(&theirs, f));
            table.row(&[name.to_string(), format!("{o:.1}"), format!("{t:.1}"), format!("{:.2}x", o / t)]);
            entry["reference"] = serde_json::json!(t);
            entry["reference_windows"] = serde_json::json!(all(&theirs, f));
            entry["ratio"] = serde_json::json!(o / t);
        } else {
            table.row(&[name.to_string(), format!("{o:.1}")]);
        }
        json.insert(name.replace(' ', "_"), entry);
    }
    if reference.is_some() {
        table.row(&[
            "peak memory (MiB)".to_string(),
            format!("{:.0}", peak(&ours)),
            format!("{:.0}", peak(&theirs)),
            format!("{:.2}x", peak(&ours) / peak(&theirs)),
        ]);
        json.insert("peak_rss_mib".into(), serde_json::json!({"gcl": peak(&ours), "reference": peak(&theirs)}));
    } else {
        table.row(&["peak memory (MiB)".to_string(), format!("{:.0}", peak(&ours))]);
        json.insert("peak_rss_mib".into(), serde_json::json!({"gcl": peak(&ours)}));
    }
    let flops = ours.first().and_then(|m| m.flops).context("the bench worker reported no FLOP count")?;
    // The reference runs in fp32; ours in bf16 is compared with its fp32 (each with its own peak).
    let arith: Vec<ArithRow> = rows
        .iter()
        .zip([flops.stage1, flops.stage2, flops.eval])
        .map(|((name, f), cost)| ArithRow {
            name: name.to_string(),
            cost,
            ours: median(&all(&ours, *f)),
            theirs: reference.is_some().then(|| (median(&all(&theirs, *f)), Precision::Fp32)),
            precision: cfg.run.precision,
        })
        .collect();
    let arith = arithmetic_table(&arith, &machine, reference.is_some().then_some("reference"));
    json.insert("flops_per_image".into(), serde_json::to_value(flops)?);
    json.insert("peak_gflops".into(), serde_json::to_value(&machine)?);
    json.insert("cpu".into(), serde_json::json!(format!("{}{}", crate::util::cpu_name(), isa_cap_note())));
    crate::util::out(&format!("\n{}\n{}\n{}", table.text(), machine.describe(), arith.text()))?;
    if let Some(p) = &o.json {
        crate::util::write_atomic(p, serde_json::to_string_pretty(&serde_json::Value::Object(json))?.as_bytes())?;
    }
    Ok(())
}

/// One phase's arithmetic and speeds, for `arithmetic_table`.
pub struct ArithRow {
    pub name: String,
    pub cost: crate::model::flops::Cost,
    /// Images/s of gcl, and of the program it is compared with (if any) with the precision
    /// that one ran in.
    pub ours: f64,
    pub theirs: Option<(f64, Precision)>,
    /// The precision gcl ran in (the peak its speed is a share of).
    pub precision: Precision,
}

/// The arithmetic of each phase and how much of the machine it used: GFLOP per image (forward +
/// backward), GFLOP/s at the measured images/s, and that as a share of the measured peak (and of
/// the computed bound, where there is one) in the precision each program ran in (`other` names
/// the program compared with).
pub fn arithmetic_table(rows: &[ArithRow], machine: &peak::Peak, other: Option<&str>) -> Table {
    let share = |gflops: f64, p: Precision| {
        let bound = if p == Precision::Bf16 { machine.bf16_computed } else { machine.fp32_computed };
        let m = 100.0 * gflops / machine.measured(p);
        bound.map_or(format!("{m:.0}%"), |b| format!("{m:.0}% / {:.0}%", 100.0 * gflops / b))
    };
    let mut head = vec!["arithmetic".to_string(), "GFLOP/image (fwd + bwd)".into(), "gcl GFLOP/s".into(), "of peak (measured / computed)".into()];
    if let Some(o) = other {
        head.extend([format!("{o} GFLOP/s"), "of peak".into()]);
    }
    let mut table = Table::new(&head.iter().map(String::as_str).collect::<Vec<_>>());
    for r in rows {
        let (c, gf) = (r.cost, |ips: f64| ips * r.cost.total() / 1e9);
        let mut row = vec![r.name.clone(), format!("{:.3} ({:.3} + {:.3})", c.total() / 1e9, c.forward / 1e9, c.backward / 1e9), format!("{:.1}", gf(r.ours)), share(gf(r.ours), r.precision)];
        if other.is_some() {
            row.extend(r.theirs.map_or(["-".into(), "-".into()], |(t, p)| [format!("{:.1}", gf(t)), share(gf(t), p)]));
        }
        table.row(&row);
    }
    table
}

/// What to add to the CPU's name when `gcl bench --isa X` capped the instruction set.
pub fn isa_cap_note() -> String {
    std::env::var("GCL_CPU_ISA").map_or(String::new(), |i| format!(", every library capped at {i} (--isa)"))
}

/// `gcl bench --isa avx2`: runs this same command again with every library capped at AVX2
/// (ours: GCL_CPU_ISA; libtorch's own kernels: ATEN_CPU_CAPABILITY; oneDNN's:
/// ONEDNN_MAX_CPU_ISA; MKL's: MKL_ENABLE_INSTRUCTIONS), so that the peak, our workers and the
/// reference all see an AVX2 CPU. The variables must be set before libtorch starts, hence a
/// fresh process.
pub fn reexec_with_isa(isa: &str) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let (aten, onednn, mkl) = match isa {
        "avx2" => ("avx2", "AVX2", "AVX2"),
        other => bail!("--isa {other}: only avx2 can be imposed"),
    };
    let err = Command::new(std::env::current_exe()?)
        .args(std::env::args_os().skip(1))
        .env("GCL_CPU_ISA", isa)
        .env("ATEN_CPU_CAPABILITY", aten)
        .env("ONEDNN_MAX_CPU_ISA", onednn)
        .env("MKL_ENABLE_INSTRUCTIONS", mkl)
        .exec();
    Err(err).context("cannot restart gcl bench with the instruction set capped")
}

/// The reference's harness, run with `python`.
pub struct Reference {
    pub python: PathBuf,
    pub script: PathBuf,
    pub reference_dir: PathBuf,
}

fn run_json(cmd: &mut Command, what: &str) -> Result<Measurement> {
    let out = cmd.output().with_context(|| format!("cannot start {what}"))?;
    if !out.status.success() {
        bail!("{what} failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().rev().find(|l| l.starts_with('{')).with_context(|| format!("{what} printed no result"))?;
    serde_json::from_str(line).with_context(|| format!("{what}: unreadable result `{line}`"))
}

/// Our measurement in a fresh process.
pub fn run_ours(config_path: &Path, budget: &Budget) -> Result<Measurement> {
    let exe = std::env::current_exe()?;
    run_json(
        Command::new(exe).arg("bench-worker").arg("--config-file").arg(config_path).arg("--budget").arg(serde_json::to_string(budget)?),
        "gcl bench-worker",
    )
}

/// The reference's measurement in a fresh process, same data, split, batch and steps.
pub fn run_reference(r: &Reference, cfg: &Config, data_dir: &Path, split_file: &Path, budget: &Budget) -> Result<Measurement> {
    let format = cfg.data.dataset.info().reference_format.with_context(|| {
        format!("the reference reads IDX and CIFAR files only, not `{}` (for image files use `gcl bench --input`)", cfg.data.dataset.name())
    })?;
    // The reference trains GCL-E (its defaults) or plain cross-entropy; another loss would be
    // compared with something else.
    use crate::loss::LossConfig;
    let loss = match cfg.stage1.loss {
        LossConfig::GclE(p) if p == crate::loss::GclParams::default() => "gcl",
        LossConfig::Ce(p) if p == Default::default() => "ce",
        other => bail!("the reference trains GCL-E with its defaults (--loss gcl-e) or cross-entropy (--loss ce), not {other:?}; bench other losses without --vs-reference"),
    };
    let threads = if cfg.run.threads > 0 { cfg.run.threads.min(crate::runtime::cores()) } else { crate::runtime::cores() };
    let mut cmd = Command::new(&r.python);
    cmd.arg(&r.script)
        .arg("--reference-dir")
        .arg(&r.reference_dir)
        .args(["--data"])
        .arg(data_dir)
        .args(["--format", format, "--split"])
        .arg(split_file)
        .args(["--batch", &cfg.stage1.batch_size.to_string(), "--threads", &threads.to_string()])
        .args(["--warmup-steps", &budget.warmup_steps.to_string(), "--windows", &budget.windows.to_string()])
        .args(["--steps-per-window", &budget.steps_per_window.to_string(), "--eval-passes", &budget.eval_passes.to_string()])
        .args(["--device", if cfg.run.device.starts_with("cuda") { "cuda" } else { "cpu" }])
        .args(["--loss", loss])
        .env_remove("PYTHONPATH");
    if !cfg.stage1.flip {
        cmd.arg("--no-flip");
    }
    if !cfg.stage1.mixup {
        cmd.arg("--no-mixup");
    }
    run_json(&mut cmd, "the reference harness")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::flops::Cost;

    #[test]
    fn a_phase_is_its_images_per_second_times_its_flops_as_a_share_of_the_peak_in_its_precision() {
        let machine = peak::Peak { fp32_measured: 100.0, bf16_measured: Some(400.0), fp32_computed: Some(200.0), bf16_computed: None, basis: String::new(), size: 8 };
        let gflop = Cost { forward: 0.5e9, backward: 0.5e9 };
        let rows = [
            // 100 images/s of 1 GFLOP: 100 GFLOP/s, all of the measured fp32 peak, half the bound.
            ArithRow { name: "fp32".into(), cost: gflop, ours: 100.0, theirs: Some((25.0, Precision::Fp32)), precision: Precision::Fp32 },
            // bf16 against bf16's peak; the other program's fp32 against fp32's.
            ArithRow { name: "bf16".into(), cost: gflop, ours: 200.0, theirs: Some((50.0, Precision::Fp32)), precision: Precision::Bf16 },
        ];
        let text = arithmetic_table(&rows, &machine, Some("reference")).text();
        let line = |name: &str| text.lines().find(|l| l.starts_with(name)).unwrap().split_whitespace().collect::<Vec<_>>().join(" ");
        assert_eq!(line("fp32"), "fp32 1.000 (0.500 + 0.500) 100.0 100% / 50% 25.0 25% / 12%");
        assert_eq!(line("bf16"), "bf16 1.000 (0.500 + 0.500) 200.0 50% 50.0 50% / 25%");
    }
}
