//! Checkpoints in safetensors: the model's variables (BatchNorm statistics included),
//! the optimiser's momentum buffers and the facts about the run that a later run checks
//! before it uses them ([`Meta`]), written atomically.
use super::optim::Sgd;
use super::Stage;
use crate::data::augment::Normalize;
use crate::model::HeadKind;
use crate::util::with_atomic;
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::Path;
use tch::{nn::VarStore, Device, Kind, Tensor};

/// What a checkpoint records about the run that wrote it.
#[derive(Debug, Clone, PartialEq)]
pub struct Meta {
    pub stage: Stage,
    pub epochs_done: usize,
    /// The stage's planned epochs (absent in checkpoints of older builds).
    pub epochs_total: Option<usize>,
    pub train_counts: Vec<usize>,
    /// The backbone's architecture (`Backbone::arch`).
    pub arch: String,
    pub head: HeadKind,
    pub norm: Normalize,
    /// The fingerprint of the data it trained on (`Prepared::fingerprint`; absent in
    /// checkpoints of older builds): `--resume` refuses data that changed under the run.
    pub data: Option<String>,
    /// The pretrained file (absolute path, SHA-256) whose untrained weights the checkpoint
    /// leaves out (`model.tune` other than `full`): they are read from it on load.
    pub backbone_file: Option<(std::path::PathBuf, String)>,
}

impl Meta {
    pub fn finished(&self) -> bool {
        self.epochs_total.is_none_or(|t| self.epochs_done >= t)
    }
}

fn head_name(h: HeadKind) -> &'static str {
    match h {
        HeadKind::Cosine => "cosine",
        HeadKind::Linear => "linear",
    }
}

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
    /// The model's weights, without the `untuned` ones when they come from `backbone_file`
    /// (path, SHA-256), which is recorded instead.
    pub fn put_trained(&mut self, vs: &VarStore, untuned: &[Tensor], backbone_file: Option<&(std::path::PathBuf, String)>) {
        let skip: std::collections::HashSet<usize> =
            if backbone_file.is_some() { untuned.iter().map(|t| t.data_ptr() as usize).collect() } else { Default::default() };
        for (name, t) in vs.variables() {
            if !skip.contains(&(t.data_ptr() as usize)) {
                self.put(&format!("model.{name}"), &t);
            }
        }
        if let Some((file, sha)) = backbone_file {
            self.put_str("meta.backbone_file", &file.to_string_lossy());
            self.put_str("meta.backbone_sha256", sha);
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
    pub fn put_str(&mut self, name: &str, v: &str) {
        self.put(name, &Tensor::from_slice(v.as_bytes()));
    }

    /// A run's state: model, optimiser momentum and the facts `meta`. With
    /// `meta.backbone_file`, the weights `untuned` (those `model.tune` never trains) are left
    /// out (a ViT-L tuned with adapters writes megabytes per epoch, not a gigabyte): they are
    /// the file's, bit for bit.
    pub fn of_run(vs: &VarStore, opt: &Sgd, meta: &Meta, untuned: &[Tensor]) -> Self {
        let mut ck = Checkpoint::new();
        ck.put_trained(vs, untuned, meta.backbone_file.as_ref());
        for (name, buf) in opt.named_buffers() {
            ck.put(&format!("opt.{name}"), &buf);
        }
        ck.put_i64("meta.stage", &[meta.stage.number() as i64]);
        ck.put_i64("meta.epochs_done", &[meta.epochs_done as i64]);
        if let Some(t) = meta.epochs_total {
            ck.put_i64("meta.epochs_total", &[t as i64]);
        }
        ck.put_i64("meta.train_counts", &meta.train_counts.iter().map(|&n| n as i64).collect::<Vec<_>>());
        ck.put_str("meta.arch", &meta.arch);
        ck.put_str("meta.head", head_name(meta.head));
        ck.put_f64("meta.norm", &meta.norm.to_vec());
        if let Some(d) = &meta.data {
            ck.put_str("meta.data", d);
        }
        ck
    }

    /// The facts the checkpoint at `path` records.
    pub fn meta(&self, path: &Path) -> Result<Meta> {
        let stage_no = self.get_i64("meta.stage", path)?[0];
        let stage = Stage::from_number(stage_no).with_context(|| format!("checkpoint {}: unknown stage {stage_no}", path.display()))?;
        // Older builds recorded the CIFAR ResNet's depth only, and trained cosine heads unless
        // the model has a bias.
        let arch = match self.get_str("meta.arch", path) {
            Ok(a) => a,
            Err(_) => format!("cifar-resnet{}", self.get_i64("meta.depth", path)?[0]),
        };
        let head = match self.get_str("meta.head", path).as_deref() {
            Ok("linear") => HeadKind::Linear,
            Ok("cosine") => HeadKind::Cosine,
            Ok(other) => bail!("checkpoint {}: unknown head `{other}`", path.display()),
            Err(_) if self.tensors.contains_key("model.head.bias") => HeadKind::Linear,
            Err(_) => HeadKind::Cosine,
        };
        let norm = self.get_f64("meta.norm", path)?;
        Ok(Meta {
            stage,
            epochs_done: self.get_i64("meta.epochs_done", path)?[0] as usize,
            epochs_total: self.get_i64("meta.epochs_total", path).ok().map(|v| v[0] as usize),
            train_counts: self.get_i64("meta.train_counts", path)?.into_iter().map(|n| n as usize).collect(),
            arch,
            head,
            norm: Normalize::from_slice(&norm).with_context(|| format!("checkpoint {}: meta.norm holds {} numbers, not 6", path.display(), norm.len()))?,
            data: self.get_str("meta.data", path).ok(),
            backbone_file: match (self.get_str("meta.backbone_file", path), self.get_str("meta.backbone_sha256", path)) {
                (Ok(f), Ok(s)) => Some((f.into(), s)),
                _ => None,
            },
        })
    }

    /// Loads the model (and, given `opt`, the momentum) into a run after checking that the
    /// checkpoint belongs to it: same split, architecture and head as `want`.
    pub fn restore_run(&self, path: &Path, want: &Meta, vs: &mut VarStore, opt: Option<&mut Sgd>) -> Result<Meta> {
        let got = self.meta(path)?;
        let p = path.display();
        if got.arch != want.arch {
            bail!("checkpoint {p} holds a {} backbone, these settings build a {} (model.arch, model.depth, model.experts)", got.arch, want.arch);
        }
        if got.head != want.head {
            bail!("checkpoint {p} has a {} classifier, these settings train a {} one (stage1.loss)", head_name(got.head), head_name(want.head));
        }
        if got.train_counts != want.train_counts {
            bail!("checkpoint {p} was trained on a split with class counts {:?}, this run's split has {:?}", got.train_counts, want.train_counts);
        }
        self.restore_model(vs, path)?;
        if let Some(opt) = opt {
            for (name, t) in self.tensors.iter().filter_map(|(n, t)| n.strip_prefix("opt.").map(|n| (n, t))) {
                if !opt.set_buffer(name, t) {
                    bail!("checkpoint {p}: optimiser state for unknown parameter `{name}`");
                }
            }
        }
        Ok(got)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let mut named: Vec<(&String, &Tensor)> = self.tensors.iter().collect();
        named.sort_by(|a, b| a.0.cmp(b.0));
        with_atomic(path, |tmp| {
            Tensor::write_safetensors(&named.iter().map(|(n, t)| (n.as_str(), *t)).collect::<Vec<_>>(), tmp).map_err(|e| anyhow::anyhow!("{e}"))
        })
    }

    /// The checkpoint at `path`, whole: the weights it leaves to its backbone file are read
    /// from that file.
    pub fn load(path: &Path) -> Result<Self> {
        let mut ck = Self::read(path)?;
        ck.fill_from_backbone_file(path)?;
        Ok(ck)
    }

    /// The file's tensors as they are.
    fn read(path: &Path) -> Result<Self> {
        if !path.exists() {
            bail!("checkpoint {} does not exist", path.display());
        }
        let named = Tensor::read_safetensors(path)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("{}: not a readable safetensors checkpoint (corrupt or truncated?)", path.display()))?;
        Ok(Self { tensors: named.into_iter().collect() })
    }

    /// The facts a checkpoint records, without reading the weights its backbone file adds.
    pub fn load_meta(path: &Path) -> Result<Meta> {
        Self::read(path)?.meta(path)
    }

    /// A checkpoint that leaves its untrained backbone weights to their file gets them from
    /// it, once the file is checked to be the one it trained from.
    fn fill_from_backbone_file(&mut self, path: &Path) -> Result<()> {
        let (Ok(file), Ok(sha)) = (self.get_str("meta.backbone_file", path), self.get_str("meta.backbone_sha256", path)) else { return Ok(()) };
        let file = std::path::PathBuf::from(file);
        let hint = "it holds only the weights training changed, and takes the others from that file";
        if !file.exists() {
            bail!("checkpoint {}: its backbone file {} is missing ({hint}; put the file back there)", path.display(), file.display());
        }
        let now = crate::model::weights::file_sha256(&file)?;
        if now != sha {
            bail!("checkpoint {}: its backbone file {} has changed (SHA-256 {now}, {sha} when trained; {hint})", path.display(), file.display());
        }
        for (name, t) in crate::model::weights::read_state_dict(&file)? {
            self.tensors.entry(format!("model.backbone.{name}")).or_insert(t);
        }
        Ok(())
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
    pub fn get_str(&self, name: &str, path: &Path) -> Result<String> {
        let bytes = Vec::<u8>::try_from(&self.get(name, path)?.to_kind(Kind::Uint8).flatten(0, -1))?;
        String::from_utf8(bytes).with_context(|| format!("checkpoint {}: `{name}` is not text", path.display()))
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
