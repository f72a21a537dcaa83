//! Checkpoints in safetensors: the model's variables (BatchNorm statistics included),
//! the optimiser's momentum buffers and a few facts about the run, written atomically.
use crate::util::with_atomic;
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::Path;
use tch::{nn::VarStore, Device, Kind, Tensor};

pub struct Checkpoint {
    pub tensors: HashMap<String, Tensor>,
}

impl Checkpoint {
    pub fn new() -> Self {
        Self { tensors: HashMap::new() }
    }

    pub fn put_model(&mut self, vs: &VarStore) {
        for (name, t) in vs.variables() {
            self.put(&format!("model.{name}"), &t);
        }
    }
    pub fn put(&mut self, name: &str, t: &Tensor) {
        self.tensors.insert(name.to_string(), t.detach().to_device(Device::Cpu).contiguous());
    }
    pub fn put_i64(&mut self, name: &str, v: &[i64]) {
        self.put(name, &Tensor::from_slice(v));
    }
    pub fn put_f64(&mut self, name: &str, v: &[f64]) {
        self.put(name, &Tensor::from_slice(v));
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let mut named: Vec<(&String, &Tensor)> = self.tensors.iter().collect();
        named.sort_by(|a, b| a.0.cmp(b.0));
        with_atomic(path, |tmp| {
            Tensor::write_safetensors(&named.iter().map(|(n, t)| (n.as_str(), *t)).collect::<Vec<_>>(), tmp)
                .map_err(|e| anyhow::anyhow!("{e}"))
        })
    }

    pub fn load(path: &Path) -> Result<Self> {
        if !path.exists() {
            bail!("checkpoint {} does not exist", path.display());
        }
        let named = Tensor::read_safetensors(path)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("{}: not a readable safetensors checkpoint (corrupt or truncated?)", path.display()))?;
        Ok(Self { tensors: named.into_iter().collect() })
    }

    pub fn get(&self, name: &str, path: &Path) -> Result<&Tensor> {
        self.tensors.get(name).with_context(|| format!("checkpoint {} has no tensor `{name}`", path.display()))
    }
    pub fn get_i64(&self, name: &str, path: &Path) -> Result<Vec<i64>> {
        Ok(Vec::<i64>::try_from(&self.get(name, path)?.to_kind(Kind::Int64).flatten(0, -1))?)
    }
    pub fn get_f64(&self, name: &str, path: &Path) -> Result<Vec<f64>> {
        Ok(Vec::<f64>::try_from(&self.get(name, path)?.to_kind(Kind::Double).flatten(0, -1))?)
    }

    /// Copies the stored model variables into `vs`; every variable must be present with its shape.
    pub fn restore_model(&self, vs: &mut VarStore, path: &Path) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            for (name, mut var) in vs.variables() {
                let src = self.get(&format!("model.{name}"), path)?;
                if src.size() != var.size() {
                    bail!("checkpoint {}: `{name}` has shape {:?}, the model wants {:?}", path.display(), src.size(), var.size());
                }
                var.copy_(&src.to_kind(var.kind()).to_device(var.device()));
            }
            Ok(())
        })
    }
}

impl Default for Checkpoint {
    fn default() -> Self {
        Self::new()
    }
}
