//! `gcl export`: a run's backbone as a state dict in the layout of the library its weights
//! come from (torchvision, OpenCLIP, timm), LoRA merged in, so that the library loads it:
//! W_qkv' = W_qkv + s [ (A_q B_q)^T ; 0 ; (A_v B_v)^T ] (q = x W_q^T + s x A_q B_q, and v
//! likewise). Adapters that change the network's shape (AdaptFormer, SSF, VPT) have no place
//! in the library's layout and are refused by name.
use crate::model::vit::{qkv_weight_name, Tune};
use crate::runtime::{RunConfig, Runtime};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use tch::Tensor;

pub struct ExportOptions {
    pub run: PathBuf,
    pub stage: Option<u64>,
    pub out: PathBuf,
}

/// The run's backbone, merged, by the library's names.
pub fn merged_backbone(run: &Path, stage: Option<u64>) -> Result<Vec<(String, Tensor)>> {
    let rt = Runtime::resolve(&RunConfig::default())?;
    let r = crate::train::run_model::load(run, stage, &rt)?;
    let m = &r.cfg.model;
    let spec = m.vit();
    match m.tune {
        Tune::Full | Tune::Linear | Tune::Bitfit | Tune::Lora { .. } => {}
        t => bail!("{}: model.tune = {t:?} adds modules that the library's layout has no place for; only LoRA merges into the weights", run.display()),
    }
    let vars = r.vs.variables();
    let mut out: Vec<(String, Tensor)> = Vec::new();
    for (name, t) in &vars {
        if let Some(n) = name.strip_prefix("backbone.") {
            if !n.starts_with("tune.") {
                out.push((n.to_string(), t.detach().copy()));
            }
        }
    }
    if let (Tune::Lora { .. }, Some(spec)) = (m.tune, spec) {
        let d = spec.width;
        for i in 0..spec.depth {
            let get = |k: &str| vars.get(&format!("backbone.tune.{i}.{k}")).with_context(|| format!("{}: the LoRA weight tune.{i}.{k} is missing", run.display()));
            let (qa, qb, va, vb) = (get("lora_q_a")?, get("lora_q_b")?, get("lora_v_a")?, get("lora_v_b")?);
            let rank = qa.size()[1] as f64;
            let delta = |a: &Tensor, b: &Tensor| a.matmul(b).transpose(0, 1) / rank;
            let zeros = Tensor::zeros([d, d], (qa.kind(), qa.device()));
            let update = Tensor::cat(&[delta(qa, qb), zeros, delta(va, vb)], 0);
            let name = qkv_weight_name(spec.layout, i);
            let w = out.iter_mut().find(|(n, _)| *n == name).with_context(|| format!("no {name} in the model"))?;
            w.1 = tch::no_grad(|| &w.1 + update);
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// `gcl export`.
pub fn run_command(o: &ExportOptions) -> Result<()> {
    let named = merged_backbone(&o.run, o.stage)?;
    crate::util::with_atomic(&o.out, |tmp| Tensor::write_safetensors(&named, tmp).map_err(|e| anyhow::anyhow!("{e}")))?;
    crate::util::out(&format!("{} tensors of {}'s backbone written to {}\n", named.len(), o.run.display(), o.out.display()))
}
