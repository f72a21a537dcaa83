//! Times bare training steps on one fixed batch (no loader thread), to separate the
//! model's own cost from the input pipeline's. `cargo run --release --example step_timing`
use gcl::config::Config;
use gcl::data::augment::Augment;
use gcl::train::{prepare, Session};
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let mut cfg = Config::default();
    for a in &args[1..] {
        cfg = cfg.set(a)?;
    }
    let data = prepare(&cfg, gcl::data::load(cfg.data.dataset, None)?)?;
    let s = Session::new(&cfg, &data, tch::Device::Cpu, false)?;
    let mut opt = s.stage1_optimizer();
    let c = &cfg.stage1;
    let plan = s.plan(Augment { crop_pad: 4, flip: true, mixup_alpha: Some(1.0) }, c.sampler, c.batch_size, &c.loss);
    let batch = plan.epoch(gcl::data::loader::epoch_rng(0, 1, 0), 0).next().unwrap();
    let crit = c.loss.build(&data.counts, tch::Device::Cpu, 0, 1);
    for _ in 0..5 {
        let _ = s.train_step(&batch, crit.as_ref(), &mut opt, 0.01, true);
    }
    let n: usize = std::env::var("GCL_STEPS").ok().and_then(|v| v.parse().ok()).unwrap_or(40);
    let t = Instant::now();
    for _ in 0..n {
        let _ = s.train_step(&batch, crit.as_ref(), &mut opt, 0.01, true);
    }
    let secs = t.elapsed().as_secs_f64();
    println!("{:.1} img/s, {:.1} ms/step (threads {})", n as f64 * 64.0 / secs, 1000.0 * secs / n as f64, tch::get_num_threads());
    if std::env::var_os("GCL_STEPS_ONLY").is_some() {
        return Ok(());
    }
    forward_only(&s, &batch.x, 5);
    println!("folded forward only, batch 64: {:.1} img/s", forward_only(&s, &batch.x, 100));
    // Stage 2's whole step (frozen forward, head, loss, classifier update) on the same batch.
    let mut s = s;
    let mut opt2 = s.freeze_backbone();
    let loss2 = cfg.stage2.method.training_loss().expect("a training stage-2 method");
    let crit2 = loss2.build(&data.counts, tch::Device::Cpu, 0, 1);
    for _ in 0..5 {
        let _ = s.train_step(&batch, crit2.as_ref(), &mut opt2, 0.01, false);
    }
    let t = Instant::now();
    for _ in 0..100 {
        let _ = s.train_step(&batch, crit2.as_ref(), &mut opt2, 0.01, false);
    }
    println!("stage-2 step, batch 64: {:.1} img/s", 6400.0 / t.elapsed().as_secs_f64());
    Ok(())
}

/// Forward-only timing of the folded backbone on one batch (stage 2's and evaluation's cost).
fn forward_only(s: &Session, x: &tch::Tensor, n: usize) -> f64 {
    let f = s.model.backbone.fold();
    let t = Instant::now();
    for _ in 0..n {
        let _ = f.features(x);
    }
    n as f64 * x.size()[0] as f64 / t.elapsed().as_secs_f64()
}
