//! `gcl bench --arch resnet50`: an ImageNet backbone's training step and evaluation on
//! generated images, against PyTorch + the library of the architecture (torchvision, OpenCLIP,
//! timm; scripts/bench_arch.py) with the same settings in the same invocation: the same
//! network and tuning mode (`--tunes full,adaptformer` side by side), batch, image size, threads,
//! channels-last, bf16 autocast or not, a cosine classifier with GCL-E's loss and SGD with
//! momentum and weight decay. Images are random tensors, so the numbers are the model's
//! (the input pipeline has `gcl bench --input`). Each measurement is a fresh process; rounds
//! alternate gcl and PyTorch so both see the same machine.
use super::{median, peak_rss_mib, run_json, Measurement};
use crate::eval::Table;
use crate::kernels::autocast::{AutocastGuard, Precision};
use crate::kernels::layout::{channels_last, params_channels_last};
use crate::loss::{GclParams, LossConfig};
use crate::model::{Classifier, HeadKind, ModelConfig};
use crate::runtime::{RunConfig, Runtime};
use crate::train::optim::Sgd;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;
use tch::{Kind, Tensor};

/// One measurement's settings (also what the PyTorch script is given).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArchCase {
    pub arch: String,
    pub size: i64,
    pub batch: i64,
    pub classes: i64,
    pub precision: Precision,
    pub device: String,
    pub threads: usize,
    pub warmup_steps: usize,
    pub windows: usize,
    pub steps_per_window: usize,
    /// Timed evaluation batches (after one untimed).
    pub eval_batches: usize,
    /// Which weights train (ViTs): `model.tune`.
    #[serde(default)]
    pub tune: crate::model::vit::Tune,
    /// `run.winograd`: our Winograd kernel for the 3x3 stride-1 convolutions.
    #[serde(default = "yes")]
    pub winograd: bool,
}

fn yes() -> bool {
    true
}

pub struct ArchOptions {
    pub case: ArchCase,
    /// Tuning modes to time side by side (the case's alone when empty).
    pub tunes: Vec<crate::model::vit::Tune>,
    /// Precisions to time (default: fp32, and bf16 where the CPU has native bf16 or on CUDA).
    pub precisions: Vec<Precision>,
    pub rounds: usize,
    /// PyTorch with torchvision (e.g. .venv/bin/python).
    pub vs_pytorch: Option<PathBuf>,
    pub json: Option<PathBuf>,
}

/// Long-tailed class counts (ratio 100, exponential) for GCL's cloud sizes.
fn counts(classes: i64) -> Vec<usize> {
    (0..classes).map(|i| (1280.0 * 0.01f64.powf(i as f64 / (classes - 1).max(1) as f64)).floor().max(1.0) as usize).collect()
}

/// `gcl bench-arch-worker`: times this process, prints a JSON line.
pub fn worker(c: &ArchCase) -> Result<()> {
    let m = measure(c)?;
    crate::util::out(&format!("{}\n", serde_json::to_string(&m)?))
}

fn measure(c: &ArchCase) -> Result<Measurement> {
    let rt = Runtime::resolve(&RunConfig { device: c.device.clone(), threads: c.threads, precision: c.precision, winograd: c.winograd, ..Default::default() })?;
    let vs = tch::nn::VarStore::new(rt.device);
    tch::manual_seed(0);
    let model = Classifier::new(&vs.root(), &ModelConfig { tune: c.tune, ..ModelConfig::of_arch(&c.arch) }, 3, c.classes, HeadKind::Cosine, rt.kernels)?;
    if rt.channels_last {
        let mut w: Vec<Tensor> = vs.variables().into_values().collect();
        params_channels_last(&mut w)?;
    }
    let flops = model.phases((c.size, c.size), (c.size, c.size));
    let mut params: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    let trainable = params.iter().map(|(_, t)| t.numel() as u64).sum();
    let mut opt = Sgd::new(params, 0.9, 5e-4);
    let crit = LossConfig::GclE(GclParams::default()).build(&counts(c.classes), rt.device, 0, 1, None);
    let x = Tensor::randn([c.batch, 3, c.size, c.size], (Kind::Float, rt.device));
    let x = if rt.channels_last { channels_last(&x)? } else { x };
    let y = Tensor::randint(c.classes, [c.batch], (Kind::Int64, rt.device));
    let step = |opt: &mut Sgd, i: usize| -> Result<f64> {
        crit.seed_step(i as u64);
        let loss = {
            let _ac = AutocastGuard::new(c.precision, rt.device)?;
            crit.loss(&model.forward(&x, true)?, &y)
        };
        let _ = opt.backward_step(&loss, 0.01)?;
        Ok(loss.double_value(&[]))
    };
    for i in 0..c.warmup_steps {
        step(&mut opt, i)?;
    }
    let mut stage1 = Vec::new();
    for w in 0..c.windows {
        let t = Instant::now();
        for i in 0..c.steps_per_window {
            let v = step(&mut opt, c.warmup_steps + w * c.steps_per_window + i)?;
            if !v.is_finite() {
                bail!("bench: the loss became {v}");
            }
        }
        stage1.push((c.batch as usize * c.steps_per_window) as f64 / t.elapsed().as_secs_f64());
    }
    let frozen = model.backbone.freeze()?;
    let eval = |_: usize| -> Result<f64> {
        let _g = tch::no_grad_guard();
        let _ac = AutocastGuard::new(c.precision, rt.device)?;
        Ok(model.output(&frozen.features(&x)?).sum(Kind::Float).double_value(&[]))
    };
    eval(0)?;
    let mut ev = Vec::new();
    for i in 0..c.eval_batches {
        let t = Instant::now();
        eval(i)?;
        ev.push(c.batch as f64 / t.elapsed().as_secs_f64());
    }
    let peak_gpu_mib = None; // libtorch's CUDA allocator statistics are not exposed by tch
    Ok(Measurement { stage1, stage2: Vec::new(), eval: ev, peak_rss_mib: peak_rss_mib(), peak_gpu_mib, trainable: Some(trainable), flops: Some(flops) })
}

fn run_gcl(c: &ArchCase) -> Result<Measurement> {
    let exe = std::env::current_exe()?;
    run_json(Command::new(exe).arg("bench-arch-worker").arg("--case").arg(serde_json::to_string(c)?), "gcl bench-arch-worker")
}

fn run_pytorch(python: &PathBuf, c: &ArchCase) -> Result<Measurement> {
    let script = [PathBuf::from("scripts/bench_arch.py"), PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/bench_arch.py")]
        .into_iter()
        .find(|p| p.exists())
        .context("scripts/bench_arch.py not found (run gcl bench from the repository root)")?;
    run_json(Command::new(python).arg(script).arg(serde_json::to_string(c)?).env_remove("PYTHONPATH"), "scripts/bench_arch.py")
}

/// `gcl bench --arch A`.
pub fn run_command(o: &ArchOptions) -> Result<()> {
    if o.case.windows == 0 || o.case.steps_per_window == 0 || o.rounds == 0 {
        bail!("--rounds, --windows and --steps-per-window must be at least 1");
    }
    let m = ModelConfig::of_arch(&o.case.arch);
    if m.imagenet_arch()?.is_none() && m.vit().is_none() {
        bail!("gcl bench --arch takes an ImageNet architecture (resnet50, vit_b_16, ...), not {}", o.case.arch);
    }
    let threads = if o.case.threads == 0 { crate::runtime::cores() } else { o.case.threads };
    eprintln!(
        "bench: {} at {}x{}, batch {}, device {}, {} threads, {}; {} rounds of {} windows x {} steps (+{} warm-up), {} eval batches",
        o.case.arch,
        o.case.size,
        o.case.size,
        o.case.batch,
        o.case.device,
        threads,
        format!("{}{}", crate::util::cpu_name(), super::isa_cap_note()),
        o.rounds,
        o.case.windows,
        o.case.steps_per_window,
        o.case.warmup_steps,
        o.case.eval_batches
    );
    let rt = Runtime::resolve(&RunConfig { device: o.case.device.clone(), threads, ..Default::default() })?;
    let machine = super::peak::measure(rt.device, rt.threads);
    eprintln!("bench: {}", machine.describe());
    let mut arith = Vec::new();
    let head: Vec<String> = if o.vs_pytorch.is_some() { vec!["images/s (median)".into(), "gcl".into(), "PyTorch".into(), "ratio".into()] } else { vec!["images/s (median)".into(), "gcl".into()] };
    let mut table = Table::new(&head);
    let mut json = serde_json::Map::new();
    let tunes = if o.tunes.is_empty() { vec![o.case.tune] } else { o.tunes.clone() };
    for (&precision, &tune) in o.precisions.iter().flat_map(|p| tunes.iter().map(move |t| (p, t))) {
        let case = ArchCase { precision, tune, ..o.case.clone() };
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for round in 0..o.rounds {
            eprintln!("bench: {precision:?} round {}/{}: gcl", round + 1, o.rounds);
            ours.push(run_gcl(&case)?);
            if let Some(py) = &o.vs_pytorch {
                eprintln!("bench: {precision:?} round {}/{}: PyTorch", round + 1, o.rounds);
                theirs.push(run_pytorch(py, &case)?);
            }
        }
        let all = |ms: &[Measurement], f: fn(&Measurement) -> &Vec<f64>| ms.iter().flat_map(|m| f(m).clone()).collect::<Vec<f64>>();
        let peak = |ms: &[Measurement]| ms.iter().map(|m| m.peak_rss_mib).fold(f64::NAN, f64::max);
        let p = match tune {
            crate::model::vit::Tune::Full if tunes.len() == 1 => format!("{precision:?}").to_lowercase(),
            t => format!("{}, {}", format!("{precision:?}").to_lowercase(), serde_json::to_value(t)?["name"].as_str().unwrap_or("?")),
        };
        let rows: [(&str, fn(&Measurement) -> &Vec<f64>); 2] = [("training step", |m| &m.stage1), ("evaluation", |m| &m.eval)];
        let flops = ours.first().and_then(|m| m.flops).context("the bench worker reported no FLOP count")?;
        for ((name, f), cost) in rows.into_iter().zip([flops.stage1, flops.eval]) {
            let g = median(&all(&ours, f));
            let t = o.vs_pytorch.is_some().then(|| (median(&all(&theirs, f)), precision));
            arith.push(super::ArithRow { name: format!("{name}, {p}"), cost, ours: g, theirs: t, precision });
            let mut entry = serde_json::json!({"gcl": g, "gcl_windows": all(&ours, f)});
            let mut row = vec![format!("{name}, {p}"), format!("{g:.2}")];
            if o.vs_pytorch.is_some() {
                let t = median(&all(&theirs, f));
                row.extend([format!("{t:.2}"), format!("{:.2}x", g / t)]);
                entry["pytorch"] = serde_json::json!(t);
                entry["pytorch_windows"] = serde_json::json!(all(&theirs, f));
                entry["ratio"] = serde_json::json!(g / t);
            }
            table.row(&row);
            json.insert(format!("{}_{p}", name.replace(' ', "_")), entry);
        }
        let mut row = vec![format!("peak memory (MiB), {p}"), format!("{:.0}", peak(&ours))];
        let mut entry = serde_json::json!({"gcl": peak(&ours)});
        if o.vs_pytorch.is_some() {
            row.extend([format!("{:.0}", peak(&theirs)), format!("{:.2}x", peak(&ours) / peak(&theirs))]);
            entry["pytorch"] = serde_json::json!(peak(&theirs));
        }
        table.row(&row);
        json.insert(format!("peak_rss_mib_{p}"), entry);
        let trained = |ms: &[Measurement]| ms.first().and_then(|m| m.trainable);
        if let Some(n) = trained(&ours) {
            let mut row = vec![format!("trained weights, {p}"), n.to_string()];
            if let Some(t) = trained(&theirs) {
                row.extend([t.to_string(), format!("{:.2}x", n as f64 / t as f64)]);
            } else if o.vs_pytorch.is_some() {
                row.extend(["-".into(), "-".into()]);
            }
            table.row(&row);
            json.insert(format!("trained_weights_{p}"), serde_json::json!({"gcl": n, "pytorch": trained(&theirs)}));
        }
    }
    json.insert("case".into(), serde_json::to_value(&o.case)?);
    json.insert("cpu".into(), serde_json::json!(format!("{}{}", crate::util::cpu_name(), super::isa_cap_note())));
    json.insert("peak_gflops".into(), serde_json::to_value(&machine)?);
    let arith = super::arithmetic_table(&arith, &machine, o.vs_pytorch.is_some().then_some("PyTorch"));
    crate::util::out(&format!("\n{}\n{}\n{}", table.text(), machine.describe(), arith.text()))?;
    if let Some(p) = &o.json {
        crate::util::write_atomic(p, serde_json::to_string_pretty(&serde_json::Value::Object(json))?.as_bytes())?;
    }
    Ok(())
}

/// The precisions worth timing here: fp32, and bf16 where it runs natively.
pub fn default_precisions(device: &str) -> Vec<Precision> {
    let bf16 = device.starts_with("cuda") || crate::kernels::cpu_has_bf16();
    if bf16 {
        vec![Precision::Fp32, Precision::Bf16]
    } else {
        vec![Precision::Fp32]
    }
}
