//! torchvision state dicts in and out: `--pretrained FILE` (a `.pth` written by
//! `torch.save`, or `.safetensors`) into a model's variables, by torchvision's names.
//!
//! The other way needs no code of ours: a run's checkpoint is safetensors, and its backbone
//! variables are torchvision's names behind `model.backbone.` (README, "Pretrained weights").
use super::{pth, Classifier, ModelConfig};
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use tch::{nn::VarStore, Tensor};

/// A state dict's tensors by name, from `.safetensors` or a `torch.save` file, with the
/// wrappers that training scripts add taken off: a `state_dict.` / `model.` / `state_dict_model.`
/// level around the weights and DataParallel's `module.` prefix. A gcl checkpoint gives its
/// backbone.
pub fn read_state_dict(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    if !path.exists() {
        bail!("pretrained weights {}: no such file", path.display());
    }
    let named = if path.extension().is_some_and(|e| e == "safetensors") {
        Tensor::read_safetensors(path).with_context(|| format!("{}: not a readable safetensors file", path.display()))?
    } else {
        pth::load(path)?
    };
    if named.is_empty() {
        bail!("{}: holds no tensors", path.display());
    }
    // A gcl checkpoint (another run's stage1/stage2.safetensors): its backbone, by torchvision's names.
    if named.iter().any(|(n, _)| n.starts_with("model.backbone.")) {
        return Ok(named.into_iter().filter_map(|(n, t)| n.strip_prefix("model.backbone.").map(|b| (b.to_string(), t))).collect());
    }
    let mut names: Vec<String> = named.iter().map(|(n, _)| n.clone()).collect();
    loop {
        let first = names[0].split('.').next().unwrap_or("").to_string();
        let wrapper = ["state_dict", "state_dict_model", "model", "module", "net"].contains(&first.as_str());
        if !wrapper || names.iter().any(|n| !n.starts_with(&format!("{first}."))) {
            break;
        }
        names = names.iter().map(|n| n[first.len() + 1..].to_string()).collect();
    }
    Ok(names.into_iter().zip(named.into_iter().map(|(_, t)| t)).collect())
}

/// SHA-256 (hex) of a file, computed once per process for each (path, size, modification
/// time): a checkpoint that refers to its backbone file checks it at every save and load.
pub fn file_sha256(path: &Path) -> Result<String> {
    use sha2::Digest;
    use std::io::Read;
    static CACHE: std::sync::Mutex<Option<HashMap<(std::path::PathBuf, u64, std::time::SystemTime), String>>> = std::sync::Mutex::new(None);
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    let key = (path.to_path_buf(), meta.len(), meta.modified().unwrap_or(std::time::UNIX_EPOCH));
    if let Some(h) = CACHE.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(HashMap::new).get(&key) {
        return Ok(h.clone());
    }
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    CACHE.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(HashMap::new).insert(key, hex.clone());
    Ok(hex)
}

/// What a state dict gave a model.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Variables set from the file.
    pub set: usize,
    /// Variables left as initialised because `model.reinit` names them.
    pub fresh: usize,
}

/// Copies a torchvision state dict into `vs`'s variables: `X` into `backbone.X`, and, when
/// `fc` is true, `fc.weight` / `fc.bias` into a linear head. Missing, unexpected and
/// mis-shaped tensors are one error listing them all; `num_batches_tracked` (which we do not
/// keep) is ignored, and so is `fc` when not asked for. Variables under `reinit` (module
/// names such as `layer4.2`) keep their fresh weights.
pub fn load_torchvision(vs: &VarStore, path: &Path, reinit: &[String], fc: bool) -> Result<Loaded> {
    copy_state_dict(vs, &read_state_dict(path)?, path, reinit, fc)
}

/// As [`load_torchvision`], for a state dict already read from `path` (named in errors).
pub fn copy_state_dict(vs: &VarStore, file: &BTreeMap<String, Tensor>, path: &Path, reinit: &[String], fc: bool) -> Result<Loaded> {
    let ours: HashMap<String, Tensor> = vs.variables();
    // A backbone that is one tower of a larger model (all its weights under one name, as
    // CLIP's `visual`) takes that tower from a whole state dict of the model: the file's other
    // tensors (the text tower) are left out.
    let tower = ours.keys().filter_map(|n| n.strip_prefix("backbone.")).map(|n| n.split('.').next().unwrap_or("")).filter(|&t| t != "tune").collect::<std::collections::HashSet<_>>();
    let owned: BTreeMap<String, Tensor>;
    let file = match tower.iter().next() {
        Some(&t) if tower.len() == 1 && file.keys().any(|k| k.starts_with(&format!("{t}."))) => {
            owned = file.iter().filter(|(k, _)| k.starts_with(&format!("{t}."))).map(|(k, v)| (k.clone(), v.shallow_clone())).collect();
            &owned
        }
        _ => file,
    };
    // The classifier: a ResNet's `fc`, a torchvision ViT's `heads.head`.
    let classifier = if file.keys().any(|k| k.starts_with("heads.head.")) { "heads.head." } else { "fc." };
    let to_ours = |name: &str| -> Option<String> {
        match name.strip_prefix(classifier) {
            Some(rest) => fc.then(|| format!("head.{rest}")),
            None => Some(format!("backbone.{name}")),
        }
    };
    let fresh = |ours: &str| reinit.iter().any(|m| ours.strip_prefix("backbone.").is_some_and(|n| n.starts_with(&format!("{m}."))));
    let (mut missing, mut unexpected, mut misshaped) = (Vec::new(), Vec::new(), Vec::new());
    // model.tune's added weights (backbone.tune.*) are ours alone: no library's file has them.
    let mut wanted: Vec<&String> = ours.keys().filter(|n| (n.starts_with("backbone.") && !n.starts_with("backbone.tune.")) || (fc && n.starts_with("head."))).collect();
    wanted.sort();
    let mut loaded = Loaded::default();
    let mut pairs = Vec::new();
    for (name, t) in file {
        if name.ends_with("num_batches_tracked") {
            continue;
        }
        let Some(our) = to_ours(name) else { continue };
        match ours.get(&our) {
            None => unexpected.push(format!("{name} {:?}", t.size())),
            Some(v) if v.size() != t.size() => misshaped.push(format!("{name}: {:?} in the file, {:?} in the model", t.size(), v.size())),
            Some(_) if fresh(&our) => loaded.fresh += 1,
            Some(v) => pairs.push((v.shallow_clone(), t)),
        }
    }
    for our in wanted {
        let theirs = our.strip_prefix("backbone.").map(str::to_string).unwrap_or_else(|| format!("{classifier}{}", &our["head.".len()..]));
        if !file.contains_key(&theirs) && !fresh(our) {
            missing.push(format!("{theirs} {:?}", ours[our].size()));
        }
    }
    if !(missing.is_empty() && unexpected.is_empty() && misshaped.is_empty()) {
        let list = |what: &str, v: &[String]| {
            if v.is_empty() {
                return String::new();
            }
            let shown: Vec<&str> = v.iter().take(12).map(String::as_str).collect();
            let more = if v.len() > 12 { format!("\n    ... and {} more", v.len() - 12) } else { String::new() };
            format!("\n  {what} ({}):\n    {}{more}", v.len(), shown.join("\n    "))
        };
        bail!(
            "{} does not fit this model{}{}{}\n  (is it the state dict of the architecture in model.arch, for images with as many channels?)",
            path.display(),
            list("missing from the file", &missing),
            list("in the file but not in the model", &unexpected),
            list("of another shape", &misshaped)
        );
    }
    tch::no_grad(|| {
        for (v, t) in pairs {
            let mut v = v;
            v.f_copy_(&t.to_kind(v.kind()))?;
            loaded.set += 1;
        }
        Ok::<_, tch::TchError>(())
    })?;
    Ok(loaded)
}

/// Applies `model.freeze_through` to a freshly built classifier (the weights it freezes come
/// from `model.pretrained`: [`load_pretrained`], where training starts).
pub fn freeze(model: &mut Classifier, cfg: &ModelConfig) -> Result<()> {
    if cfg.pretrained.is_none() && (cfg.freeze_through.is_some() || !cfg.reinit.is_empty()) {
        bail!("model.freeze_through and model.reinit start from pretrained weights: give model.pretrained (--pretrained FILE), or they would freeze random ones");
    }
    if let Some(through) = &cfg.freeze_through {
        model.backbone.freeze_through(through)?;
    }
    Ok(())
}

/// Copies `model.pretrained` into `vs`, except the `model.reinit` modules; None without one.
pub fn load_pretrained(vs: &VarStore, cfg: &ModelConfig) -> Result<Option<Loaded>> {
    let Some(path) = cfg.pretrained.as_deref() else { return Ok(None) };
    let (file, reinit, dropped) = for_experts(read_state_dict(path)?, cfg);
    let mut loaded = copy_state_dict(vs, &file, path, &reinit, false)?;
    loaded.fresh += dropped;
    Ok(Some(loaded))
}

/// A torchvision state dict for a model with experts: each stage the experts have of their
/// own (`layerSs.E`) takes the file's one `layerS`, copied into every expert, when the experts
/// have the full width (`model.expert_width = 1`); at another width it cannot, and those
/// stages start fresh (the file's tensors of them are dropped: their number is returned).
/// `model.reinit` names in those stages are renamed to each expert's.
fn for_experts(file: BTreeMap<String, Tensor>, cfg: &ModelConfig) -> (BTreeMap<String, Tensor>, Vec<String>, usize) {
    let x = cfg.experts();
    if x.count == 1 {
        return (file, cfg.reinit.clone(), 0);
    }
    let own: Vec<String> = (0..4).filter(|&s| x.owns(s, 4)).map(|s| format!("layer{}", s + 1)).collect();
    let stage_of = |name: &str| own.iter().find(|l| name == l.as_str() || name.starts_with(&format!("{l}."))).cloned();
    let full = x.width == 1.0;
    let (mut out, mut dropped) = (BTreeMap::new(), 0);
    for (name, t) in file {
        match stage_of(&name) {
            None => {
                out.insert(name, t);
            }
            Some(l) if full => {
                for e in 0..x.count {
                    out.insert(format!("{l}s.{e}{}", &name[l.len()..]), t.shallow_clone());
                }
            }
            Some(_) => dropped += !name.ends_with("num_batches_tracked") as usize,
        }
    }
    let mut reinit = Vec::new();
    for m in &cfg.reinit {
        match stage_of(m) {
            Some(l) => reinit.extend((0..x.count).map(|e| format!("{l}s.{e}{}", &m[l.len()..]))),
            None => reinit.push(m.clone()),
        }
    }
    if !full {
        reinit.extend(own.iter().map(|l| format!("{l}s")));
    }
    (out, reinit, dropped)
}

/// A matrix from a file (`--class-embeddings`): `.npy`, `.safetensors` or `.pth`/`.pt` holding
/// exactly one tensor of two dimensions, or text with one row of numbers per line (separated
/// by spaces, tabs or commas).
pub fn read_matrix(path: &Path) -> Result<Tensor> {
    if !path.exists() {
        bail!("{}: no such file", path.display());
    }
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let t = match ext.as_str() {
        "npy" => Tensor::read_npy(path).with_context(|| format!("{}: not a readable .npy file", path.display()))?,
        "safetensors" | "pth" | "pt" => {
            let mut named = if ext == "safetensors" {
                Tensor::read_safetensors(path).with_context(|| format!("{}: not a readable safetensors file", path.display()))?
            } else {
                pth::load(path)?
            };
            if named.len() != 1 {
                let names: Vec<&str> = named.iter().map(|(n, _)| n.as_str()).take(5).collect();
                bail!("{}: holds {} tensors ({}...); one classes x dimension matrix was expected", path.display(), named.len(), names.join(", "));
            }
            named.remove(0).1
        }
        _ => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            let mut rows: Vec<Vec<f32>> = Vec::new();
            for (no, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                let row = line
                    .split(|c: char| c == ',' || c.is_whitespace())
                    .filter(|s| !s.is_empty())
                    .map(|s| s.parse::<f32>().with_context(|| format!("{}:{}: `{s}` is not a number", path.display(), no + 1)))
                    .collect::<Result<Vec<f32>>>()?;
                if let Some(first) = rows.first().filter(|f| f.len() != row.len()) {
                    bail!("{}:{}: {} numbers, but the first row has {}", path.display(), no + 1, row.len(), first.len());
                }
                rows.push(row);
            }
            if rows.is_empty() {
                bail!("{}: no rows of numbers", path.display());
            }
            let (n, d) = (rows.len() as i64, rows[0].len() as i64);
            Tensor::from_slice(&rows.concat()).view([n, d])
        }
    };
    if t.dim() != 2 {
        bail!("{}: a tensor of shape {:?}; one classes x dimension matrix was expected", path.display(), t.size());
    }
    Ok(t.to_kind(tch::Kind::Float))
}
