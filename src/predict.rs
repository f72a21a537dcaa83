//! `gcl predict`: a trained model applied to images. The model is a finished run's (its
//! folder: settings, checkpoint, class names, normalisation) or a torchvision state dict
//! with `--arch` (torchvision's ImageNet transform and normalisation). Images come as a list
//! file, a folder (searched recursively) or paths, go through the run's test transform, and
//! leave as one CSV row or JSON line each: the top-k classes with names and probabilities,
//! and with `--logits` the raw outputs.
use crate::data::augment::Normalize;
use crate::data::files::{read_list, Entry, FileSet, IMAGE_EXTENSIONS};
use crate::data::image::Color;
use crate::data::loader::{eval_batches, Layout};
use crate::data::transform::{TestTransform, Tte};
use crate::data::Source;
use crate::kernels::layout::params_channels_last;
use crate::model::{weights, Classifier, HeadKind, ModelConfig};
use crate::runtime::{RunConfig, Runtime};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{nn::VarStore, Device, Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Csv,
    Jsonl,
}

pub struct PredictOptions {
    /// A run folder (gcl train --out).
    pub run: Option<PathBuf>,
    /// Which stage's model of the run: 1 or 2 (default: the last one it has).
    pub stage: Option<u64>,
    /// A torchvision architecture and state dict instead of a run.
    pub arch: Option<String>,
    pub pretrained: Option<PathBuf>,
    /// One class name per line, for `--pretrained` (default: the class numbers).
    pub class_names: Option<PathBuf>,
    /// Images: paths (files or folders) ...
    pub inputs: Vec<PathBuf>,
    /// ... or a list file (`relative/path [label]` per line) under `root`.
    pub list: Option<PathBuf>,
    pub root: Option<PathBuf>,
    pub top_k: usize,
    pub format: Format,
    pub logits: bool,
    /// Also each image's embedding (the backbone's features).
    pub features: bool,
    pub out: Option<PathBuf>,
    /// The pixel limit of `data.max_pixels` (default: the run's, or Pillow's).
    pub max_pixels: Option<u64>,
    pub run_cfg: RunConfig,
    pub verbose: bool,
}

/// The model and how images are made ready for it.
struct Predictor {
    vs: VarStore,
    model: Classifier,
    class_names: Vec<String>,
    norm: Normalize,
    transform: TestTransform,
    /// The run's test-time ensembling (none for a library's state dict).
    tte: Tte,
    color: Color,
    max_pixels: u64,
    /// Turns a cosine head's output into the logits it was trained with (s).
    scale: f64,
    /// False for `--pretrained` weights without a classifier (embeddings only).
    has_classifier: bool,
}

/// The model of a run folder: stage 2's when it has one (or `stage`), else stage 1's.
fn from_run(dir: &Path, stage: Option<u64>, rt: &Runtime) -> Result<Predictor> {
    let r = crate::train::run_model::load(dir, stage, rt)?;
    let color = if r.channels == 1 { Color::Grey } else { Color::Rgb };
    Ok(Predictor { vs: r.vs, model: r.model, class_names: r.class_names, norm: r.norm, transform: r.transform, tte: r.cfg.data.tte, color, max_pixels: r.cfg.data.max_pixels, scale: r.scale, has_classifier: true })
}

/// A torchvision classifier: its state dict's `fc` (`heads.head` for ViTs) gives the classes;
/// without one (a CLIP or DINOv2 tower), with `features`, embeddings only.
fn from_torchvision(arch: &str, file: &Path, names: Option<&Path>, features: bool, rt: &Runtime) -> Result<Predictor> {
    let sd = weights::read_state_dict(file)?;
    // The classifier: a ResNet's fc, a ViT's heads.head.
    let fc = sd.get("fc.weight").or_else(|| sd.get("heads.head.weight"));
    let has_classifier = fc.is_some();
    let classes = match fc {
        Some(fc) => fc.size()[0],
        None if features => 1,
        None => bail!("{}: no fc.weight (ResNets) or heads.head.weight (ViTs), so no classifier to predict with (--features writes the embeddings alone)", file.display()),
    };
    let vs = VarStore::new(rt.device);
    let cfg = ModelConfig::of_arch(arch);
    cfg.check()?;
    let model = Classifier::new(&vs.root(), &cfg, 3, classes, HeadKind::Linear, rt.kernels)?;
    weights::copy_state_dict(&vs, &sd, file, &[], has_classifier)?;
    let class_names = match names {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("cannot read class names {}", p.display()))?;
            let n: Vec<String> = text.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect();
            if n.len() as i64 != classes {
                bail!("{} names {} classes, the model has {classes}", p.display(), n.len());
            }
            n
        }
        None => (0..classes).map(|i| i.to_string()).collect(),
    };
    // Each library's own preprocessing: CLIP's bicubic resize and statistics for its towers,
    // torchvision's ImageNet transform for the rest (timm's DINOv2 uses the same).
    let (norm, transform) = match cfg.vit() {
        Some(spec) if spec.layout == crate::model::vit::Layout::Clip => (Normalize::CLIP, TestTransform::Clip { size: spec.image_size as usize }),
        _ => (Normalize::IMAGENET, TestTransform::ResizeCrop { resize: 256, size: 224 }),
    };
    Ok(Predictor {
        vs,
        model,
        class_names,
        norm,
        transform,
        tte: Tte::None,
        color: Color::Rgb,
        max_pixels: crate::data::image::MAX_PIXELS,
        scale: 1.0,
        has_classifier,
    })
}

/// The images to predict, as entries under a root.
fn inputs(o: &PredictOptions) -> Result<(PathBuf, Option<PathBuf>, Vec<Entry>)> {
    if let Some(list) = &o.list {
        let root = o.root.clone().unwrap_or_else(|| list.parent().map(Path::to_path_buf).unwrap_or_default());
        let entries = read_list_or_paths(list)?;
        return Ok((root, Some(list.clone()), entries));
    }
    let mut entries = Vec::new();
    for p in &o.inputs {
        if p.is_dir() {
            let found = crate::data::files::image_files(p)?;
            if found.is_empty() {
                bail!("{}: no image files (by extension: {}) in it", p.display(), IMAGE_EXTENSIONS.join(", "));
            }
            entries.extend(found.into_iter().map(|path| Entry { path, label: 0, line: 0 }));
        } else {
            entries.push(Entry { path: p.clone(), label: 0, line: 0 });
        }
    }
    if entries.is_empty() {
        bail!("no images given: name files or folders, or --list FILE");
    }
    Ok((PathBuf::new(), None, entries))
}

/// A list file with or without labels (`path label` or `path` per line).
fn read_list_or_paths(list: &Path) -> Result<Vec<Entry>> {
    if let Ok(e) = read_list(list) {
        return Ok(e.into_iter().map(|e| Entry { label: 0, ..e }).collect());
    }
    let text = std::fs::read_to_string(list).with_context(|| format!("cannot read list file {}", list.display()))?;
    let e: Vec<Entry> =
        text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).map(|(no, l)| Entry { path: PathBuf::from(l.trim()), label: 0, line: no + 1 }).collect();
    if e.is_empty() {
        bail!("list file {} names no images", list.display());
    }
    Ok(e)
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// `gcl predict`.
pub fn run(o: &PredictOptions) -> Result<()> {
    let rt = Runtime::resolve(&o.run_cfg)?;
    let p = match (&o.run, &o.arch, &o.pretrained) {
        (Some(dir), None, None) => from_run(dir, o.stage, &rt)?,
        (None, Some(arch), Some(file)) => from_torchvision(arch, file, o.class_names.as_deref(), o.features, &rt)?,
        (None, Some(_), None) | (None, None, Some(_)) => bail!("--arch and --pretrained go together (a torchvision architecture and its state dict)"),
        (Some(_), _, _) => bail!("give a run folder or --arch with --pretrained, not both"),
        (None, None, None) => bail!("give a run folder (gcl train --out DIR) or --arch A --pretrained FILE"),
    };
    if rt.channels_last {
        let mut w: Vec<Tensor> = p.vs.variables().into_values().collect();
        params_channels_last(&mut w)?;
    }
    let (root, list, entries) = inputs(o)?;
    let classes = p.class_names.len();
    let names = vec![String::new(); classes.max(1)];
    let reading = crate::data::files::FileOptions { color: p.color, max_pixels: o.max_pixels.unwrap_or(p.max_pixels), ..Default::default() };
    let source: Arc<dyn Source> = Arc::new(FileSet::new(&root, list.as_deref(), entries, names, &reading)?);
    let k = if p.has_classifier { o.top_k.clamp(1, classes) } else { 0 };
    match &o.out {
        // Written whole or not at all.
        Some(path) => crate::util::with_atomic(path, |tmp| {
            let mut w = std::io::BufWriter::new(std::fs::File::create(tmp)?);
            write_predictions(&p, source, k, o, &rt, &mut w)?;
            Ok(w.flush()?)
        }),
        None => {
            let mut w = std::io::BufWriter::new(std::io::stdout().lock());
            write_predictions(&p, source, k, o, &rt, &mut w)?;
            Ok(w.flush()?)
        }
    }
}

fn write_predictions(p: &Predictor, source: Arc<dyn Source>, k: usize, o: &PredictOptions, rt: &Runtime, sink: &mut dyn Write) -> Result<()> {
    let classes = p.class_names.len();
    if o.format == Format::Csv {
        let mut head = vec!["path".to_string()];
        for r in 1..=k {
            head.extend([format!("class_{r}"), format!("name_{r}"), format!("prob_{r}")]);
        }
        if o.logits && p.has_classifier {
            head.extend((0..classes).map(|c| format!("logit_{c}")));
        }
        if o.features {
            head.extend((0..p.model.backbone.feature_dim()).map(|c| format!("feature_{c}")));
        }
        writeln!(sink, "{}", head.join(","))?;
    }
    let bar = if o.verbose { ProgressBar::new(source.len() as u64) } else { ProgressBar::hidden() };
    bar.set_style(ProgressStyle::with_template("predict [{bar:30}] {pos}/{len} ({elapsed} < {eta})").expect("template").progress_chars("=> "));
    let layout = Layout { device: rt.device, channels_last: rt.channels_last };
    let _guard = tch::no_grad_guard();
    let frozen = p.model.backbone.freeze()?;
    for b in eval_batches(source.clone(), p.norm, p.transform, p.tte, rt.eval_batch, layout, rt.loader(true)) {
        let b = b?;
        let views = frozen.features(&b.x)?;
        // With test-time ensembling: the views' mean logits, and mean features.
        let out = b.per_sample(p.model.output(&views)).to_kind(Kind::Float).to_device(Device::Cpu);
        let feats = b.per_sample(views);
        // Copied to the host only when they are written.
        let feats = o.features.then(|| feats.to_kind(Kind::Float).to_device(Device::Cpu));
        let probs = (&out * p.scale).softmax(1, Kind::Float);
        let (top_p, top_i) = probs.topk(k as i64, 1, true, true);
        for (row, &i) in b.samples.iter().enumerate() {
            let path = source.path(i).map(|p| p.display().to_string()).unwrap_or_default();
            let ps = Vec::<f32>::try_from(top_p.get(row as i64))?;
            let is = Vec::<i64>::try_from(top_i.get(row as i64))?;
            let logits = if o.logits && p.has_classifier { Vec::<f32>::try_from(out.get(row as i64))? } else { Vec::new() };
            let embedding = match &feats {
                Some(f) => Vec::<f32>::try_from(f.get(row as i64))?,
                None => Vec::new(),
            };
            match o.format {
                Format::Csv => {
                    let mut f = vec![csv_field(&path)];
                    for (c, pr) in is.iter().zip(&ps) {
                        f.extend([c.to_string(), csv_field(&p.class_names[*c as usize]), format!("{pr:.6}")]);
                    }
                    // Shortest text that reads back as the same f32.
                    f.extend(logits.iter().chain(&embedding).map(|v| v.to_string()));
                    writeln!(sink, "{}", f.join(","))?;
                }
                Format::Jsonl => {
                    let top: Vec<serde_json::Value> =
                        is.iter().zip(&ps).map(|(c, pr)| serde_json::json!({"class": c, "name": p.class_names[*c as usize], "prob": pr})).collect();
                    let mut v = serde_json::json!({"path": path, "top": top});
                    if o.logits && p.has_classifier {
                        v["logits"] = serde_json::json!(logits);
                    }
                    if o.features {
                        v["features"] = serde_json::json!(embedding);
                    }
                    writeln!(sink, "{v}")?;
                }
            }
        }
        bar.inc(b.samples.len() as u64);
    }
    bar.finish_and_clear();
    Ok(())
}
