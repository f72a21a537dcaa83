//! The `gcl` command line: parses the arguments and hands each command to its module.
use crate::bench::{BenchOptions, Budget};
use crate::compare::CompareOptions;
use crate::config::{self, Config, Stage2Method};
use crate::data::split::{Profile, SplitRule};
use crate::data::DatasetKind;
use crate::inspect::SplitOptions;
use crate::train::{Stage, TrainOptions};
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
    /// Image datasets: check a list or folder dataset, or make one from data on this machine.
    #[command(subcommand)]
    Data(DataCommand),
    /// Apply a trained model (a run folder, or a torchvision state dict with --arch) to
    /// images; top-k classes and probabilities as CSV or JSON lines.
    Predict(PredictArgs),
    /// What training did to the embedding, the classifier and the calibration, for one or
    /// more runs side by side: report.html (figures inline), the figures as SVG and PNG, and
    /// report.json.
    Report(ReportArgs),
    /// Many trainings as one command: the product of methods, setting grids, imbalance ratios
    /// and seeds, N at a time here or as a Slurm job array; then sweep.csv, summary.md (mean
    /// +- std over seeds), figures and index.html. `gcl sweep collect DIR` gathers them again.
    Sweep(SweepArgs),
    /// A run's ViT backbone as the library's state dict (safetensors), LoRA merged into the
    /// weights, for torchvision, OpenCLIP or timm to load.
    Export(ExportArgs),
    /// One measurement in this process (used by `gcl bench`).
    #[command(hide = true)]
    BenchWorker(BenchWorkerArgs),
    /// One architecture measurement in this process (used by `gcl bench --arch`).
    #[command(hide = true)]
    BenchArchWorker(BenchArchWorkerArgs),
}

#[derive(Args)]
pub struct ExportArgs {
    /// The run folder (what `gcl train --out DIR` wrote).
    #[arg(long, value_name = "DIR")]
    pub run: PathBuf,
    /// The run's stage whose backbone to export (default: stage 2 when the run has it).
    #[arg(long)]
    pub stage: Option<u64>,
    /// The state dict to write (.safetensors).
    #[arg(long, short, value_name = "FILE")]
    pub out: PathBuf,
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct SweepArgs {
    #[command(subcommand)]
    pub action: Option<SweepAction>,
    #[command(flatten)]
    pub settings: SettingArgs,
    /// A setting and its values, as --set takes them: KEY=V1,V2,... (commas inside {...},
    /// [...] or quotes belong to the value); repeatable, the grids multiply.
    #[arg(long = "grid", value_name = "KEY=V1,V2,...")]
    pub grids: Vec<String>,
    /// Imbalance ratios (data.ratio), e.g. 10,100 (default: the settings' ratio).
    #[arg(long, value_delimiter = ',')]
    pub ratios: Vec<f64>,
    /// Seeds (run.seed), e.g. 0,1,2 (default: the settings' seed).
    #[arg(long, value_delimiter = ',')]
    pub seeds: Vec<u64>,
    /// Methods: a TOML file of [[method]] tables, a built-in list (baselines, experts, clip),
    /// or names from the baselines (ce,gcl-e).
    #[arg(long)]
    pub methods: Option<String>,
    /// A built-in study (cloud-forms: GCL's cloud forms over ratios 10, 50, 100, 200 and
    /// seeds 0, 1, 2, and which wins where).
    #[arg(long, value_enum)]
    pub study: Option<crate::sweep::Study>,
    /// The sweep's folder (one sweep per folder; the same command again continues it).
    #[arg(long, required = true)]
    pub out: Option<PathBuf>,
    /// Trainings at once on this machine, the cores split between them.
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    /// Write a Slurm job-array script (OUT/sweep.slurm, a task per cell) instead of running.
    #[arg(long, value_enum)]
    pub emit: Option<crate::sweep::Emit>,
    /// With --emit slurm: an #SBATCH option, e.g. --sbatch=--partition=gpu; repeatable.
    #[arg(long, allow_hyphen_values = true, value_name = "OPTION")]
    pub sbatch: Vec<String>,
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Subcommand)]
pub enum SweepAction {
    /// Gather what the sweep's tasks wrote: sweep.csv, summary.md, figures, index.html.
    Collect {
        dir: PathBuf,
    },
    /// Train one cell of the sweep in DIR (what each local job and Slurm array task runs).
    Task {
        dir: PathBuf,
        /// The cell (default: SLURM_ARRAY_TASK_ID).
        #[arg(long)]
        index: Option<usize>,
        #[arg(long, short)]
        quiet: bool,
    },
}

#[derive(Args)]
pub struct PredictArgs {
    /// Images (files, or folders searched recursively); or --list.
    pub inputs: Vec<PathBuf>,
    /// The run folder whose model to apply (what `gcl train --out DIR` wrote).
    #[arg(long, value_name = "DIR")]
    pub run: Option<PathBuf>,
    /// The run's stage whose model to apply (default: stage 2 when the run has it).
    #[arg(long)]
    pub stage: Option<u64>,
    /// Instead of a run: a torchvision architecture (resnet50, ...) ...
    #[arg(long)]
    pub arch: Option<String>,
    /// ... and its state dict (.pth or .safetensors, with its fc layer).
    #[arg(long, value_name = "FILE")]
    pub pretrained: Option<PathBuf>,
    /// With --pretrained: a file of class names, one per line.
    #[arg(long, value_name = "FILE")]
    pub class_names: Option<PathBuf>,
    /// A list file of images (`path` or `path label` per line), relative to --root.
    #[arg(long, value_name = "FILE")]
    pub list: Option<PathBuf>,
    /// The folder the list's paths are relative to (default: the list's folder).
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Classes per image, most probable first.
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    #[arg(long, value_enum, default_value = "csv")]
    pub format: crate::predict::Format,
    /// Also write the raw outputs (cosines for a cosine classifier, logits for a linear one).
    #[arg(long)]
    pub logits: bool,
    /// Also write each image's embedding: the backbone's features (for CLIP, the projected
    /// image embedding). With --pretrained weights that have no classifier, only these.
    #[arg(long)]
    pub features: bool,
    /// Write here (whole or not at all) instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Refuse images of more pixels than this, before decoding (default: the run's
    /// data.max_pixels; Pillow's 89478485 with --pretrained).
    #[arg(long, value_name = "N")]
    pub max_pixels: Option<u64>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Intra-op threads (0: libtorch's choice).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Images per batch.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub settings: SettingArgs,
    /// Also measure the PyTorch peer with this Python (e.g. .venv/bin/python): the reference
    /// (../shared/reference/train_reference.py), or with --arch, torchvision's network.
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
    /// Time the input pipeline alone (image files: read, decode, training transform,
    /// batches), against torchvision with --vs-reference PYTHON.
    #[arg(long)]
    pub input: bool,
    /// --input: images per pass, spread over the training set.
    #[arg(long, default_value_t = 512)]
    pub images: usize,
    /// --input: passes per measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub passes: usize,
    /// --input: the worker counts to time (default: 1 and all cores).
    #[arg(long, value_delimiter = ',')]
    pub worker_counts: Vec<usize>,
    /// --arch: image side in pixels (generated images).
    #[arg(long, default_value_t = 224)]
    pub size: i64,
    /// --arch: classes of the cosine classifier.
    #[arg(long, default_value_t = 1000)]
    pub classes: i64,
    /// --arch: timed evaluation batches.
    #[arg(long, default_value_t = 4)]
    pub eval_batches: usize,
    /// --arch with a ViT: tuning modes to time side by side (full, linear, bitfit, lora,
    /// adaptformer, ssf, vpt; each with LIFT's defaults), e.g. full,adaptformer.
    #[arg(long, value_delimiter = ',')]
    pub tunes: Vec<String>,
    /// Run everything (gcl's kernels, libtorch's, oneDNN's, the reference's) as on a CPU with
    /// at most this instruction set: avx2 times an AVX2 machine's code paths on an AVX-512 one.
    #[arg(long, value_parser = ["avx2"])]
    pub isa: Option<String>,
}

#[derive(Subcommand)]
pub enum DataCommand {
    /// Read every image of a list or folder dataset (the same flags as `gcl train`): counts
    /// per class and shot group, sizes, duplicated lines, bad labels, and every missing or
    /// unreadable file by path; exits non-zero when any file is bad.
    Check(CheckArgs),
    /// Write an image dataset (class folders and list files) from Fashion-MNIST, MNIST or
    /// photos, for tests and benchmarks.
    Make(MakeArgs),
}

#[derive(Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub settings: SettingArgs,
    /// List every bad file (default: the first 20).
    #[arg(long)]
    pub all: bool,
}

#[derive(Args)]
pub struct MakeArgs {
    /// fashion-mnist, mnist, or photos (a folder of photos, each a class).
    #[arg(long, value_enum)]
    pub from: crate::datacmd::make::From,
    /// The source's folder (default: the dataset's own; photos: /usr/share/backgrounds/mate).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// The folder to write (refused if it exists, unless --overwrite).
    #[arg(long)]
    pub out: PathBuf,
    /// png or jpeg. MNIST sets: png (the default) is lossless 28x28, jpeg is upscaled to
    /// varied sizes; photos: jpeg by default.
    #[arg(long, value_enum)]
    pub format: Option<crate::datacmd::make::FileFormat>,
    /// Imbalance ratio of the training set (1: all images).
    #[arg(long, default_value_t = 100.0)]
    pub ratio: f64,
    #[arg(long, value_enum, default_value = "exp")]
    pub profile: Profile,
    /// Photos: training images of the largest class.
    #[arg(long, default_value_t = 100)]
    pub max_per_class: usize,
    /// Balanced validation images per class: each class's last training images, set aside
    /// before the split (0: the training set is exactly `gcl train`'s split).
    #[arg(long, default_value_t = 20)]
    pub val_per_class: usize,
    /// Test images per class (default: MNIST sets all of their test set, photos 20).
    #[arg(long)]
    pub test_per_class: Option<usize>,
    /// JPEG from MNIST sets: smallest side drawn, in pixels.
    #[arg(long, default_value_t = 48)]
    pub min_size: usize,
    /// JPEG from MNIST sets: largest side drawn, in pixels.
    #[arg(long, default_value_t = 160)]
    pub max_size: usize,
    /// Photos: image width (height 3/4 of it).
    #[arg(long, default_value_t = 500)]
    pub photo_width: usize,
    #[arg(long, default_value_t = 90)]
    pub quality: u8,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Replace OUT if it exists.
    #[arg(long)]
    pub overwrite: bool,
}

#[derive(Args)]
pub struct BenchArchWorkerArgs {
    #[arg(long)]
    pub case: String,
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
    /// TOML file of [[method]] tables (name + settings), or a built-in list: `baselines`
    /// (the default: ce, focal, ldam-drw, balanced-softmax, logit-adjusted, crt, lws, ncm, gcl-e,
    /// gcl-a), `experts` (GCL with 1 and with 3 experts) or `clip` (zero-shot, LIFT and GCL-E
    /// with AdaptFormer, for --arch clip_vit_* --pretrained FILE). With model.head_init =
    /// "text" a zero-shot row comes first.
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
    /// Built-in recipe: fmnist-lt-quick (default), fmnist-lt, cifar10-lt, cifar100-lt,
    /// imagenet-lt, inat2018, places-lt, lift-imagenet-lt, lift-places-lt, lift-inat2018
    /// (`gcl config --list`).
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
    /// Folder with the dataset's files (list: the root the lists' paths are relative to).
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[command(flatten)]
    pub lists: ListArgs,
    /// Imbalance ratio n_max / n_min.
    #[arg(long)]
    pub ratio: Option<f64>,
    /// Backbone: cifar-resnet (model.depth), resnet10, resnet18, resnet34, resnet50,
    /// resnet101, resnet152, resnext50_32x4d; vit_b_16, vit_b_32, vit_l_16, vit_l_32
    /// (torchvision), clip_vit_b_16, clip_vit_b_32, clip_vit_l_14 (+ _quickgelu: OpenAI's
    /// weights), dinov2_vit_s_14, dinov2_vit_b_14, dinov2_vit_l_14; vit (model.vit's shape).
    #[arg(long)]
    pub arch: Option<String>,
    /// State dict (.pth or .safetensors) the backbone starts from, in the names of the
    /// library of --arch (torchvision, OpenAI's CLIP / OpenCLIP, timm).
    #[arg(long, value_name = "FILE")]
    pub pretrained: Option<PathBuf>,
    /// The classifier starts from these class embeddings (classes x feature dimension:
    /// .npy, .safetensors, .pth, or text rows); sets model.head_init = "embeddings".
    #[arg(long, value_name = "FILE")]
    pub class_embeddings: Option<PathBuf>,
    /// Stage-1 batch size (the learning rate follows it when stage1.lr_batch is set).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// How the training set is made long-tailed: exp, step, as-is (default: exp; as-is for image files).
    #[arg(long, value_enum)]
    pub profile: Option<Profile>,
    /// Threads that read and decode images (0: the training thread).
    #[arg(long)]
    pub workers: Option<usize>,
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
    pub precision: Option<crate::kernels::autocast::Precision>,
    /// Intra-op threads (0: libtorch's choice).
    #[arg(long)]
    pub threads: Option<usize>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Split file (one training index per line) instead of the ratio rule.
    #[arg(long)]
    pub split: Option<PathBuf>,
}

/// `--dataset list`'s list files.
#[derive(Args, Clone, Default)]
pub struct ListArgs {
    /// Training list: one `relative/path label` per line (--dataset list).
    #[arg(long, value_name = "FILE")]
    pub train_list: Option<PathBuf>,
    /// Test list (--dataset list).
    #[arg(long, value_name = "FILE")]
    pub test_list: Option<PathBuf>,
    /// Validation list (--dataset list; optional).
    #[arg(long, value_name = "FILE")]
    pub val_list: Option<PathBuf>,
}

impl ListArgs {
    pub fn apply(&self, d: &mut crate::config::DataConfig) {
        if let Some(v) = &self.train_list {
            d.train_list = Some(v.clone());
        }
        if let Some(v) = &self.test_list {
            d.test_list = Some(v.clone());
        }
        if let Some(v) = &self.val_list {
            d.val_list = Some(v.clone());
        }
    }
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
        self.lists.apply(&mut c.data);
        if let Some(v) = self.ratio {
            c.data.ratio = v;
        }
        if let Some(v) = self.profile {
            c.data.profile = Some(v);
        }
        if let Some(v) = &self.arch {
            c.model.arch = Some(v.clone());
        }
        if let Some(v) = &self.pretrained {
            c.model.pretrained = Some(v.clone());
        }
        if let Some(v) = &self.class_embeddings {
            c.model.class_embeddings = Some(v.clone());
            c.model.head_init = crate::model::HeadInit::Embeddings;
        }
        if let Some(v) = self.batch_size {
            c.stage1.batch_size = v;
        }
        if let Some(v) = self.workers {
            c.run.workers = Some(v);
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
        // What is still unset of the image recipe comes from the data, before --set (so a
        // partial --set fills from the chosen recipe) and after it (for data --set chose).
        c = c.fit_to_data();
        c = c.set_all(&self.set)?;
        c = c.fit_to_data();
        c.validate()?;
        Ok(c)
    }
}

#[derive(Args)]
pub struct ReportArgs {
    /// Run folders (what gcl train --out writes), e.g. the CE and GCL runs of gcl compare.
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Folder for report.html, report.json and the figures.
    #[arg(long, default_value = "report")]
    pub out: PathBuf,
    /// t-SNE perplexity.
    #[arg(long, default_value_t = 30.0)]
    pub perplexity: f64,
    /// t-SNE seed (its starting points and which test images are drawn).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// At most this many test images per t-SNE picture, sampled evenly per class.
    #[arg(long, default_value_t = 3000)]
    pub max_points: usize,
    /// t-SNE iterations.
    #[arg(long, default_value_t = 1000)]
    pub tsne_epochs: usize,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Intra-op threads (0: libtorch's choice).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// No progress lines.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub settings: SettingArgs,
    /// Output folder: config.toml, split.txt, checkpoints, results.json.
    #[arg(long, default_value = "runs/latest")]
    pub out: PathBuf,
    /// Continue the run in OUT (stage 1 from OUT/stage1.safetensors), with the same settings.
    #[arg(long)]
    pub resume: bool,
    /// Replace the run in OUT: its files are removed first (other files stay).
    #[arg(long)]
    pub overwrite: bool,
    /// Which stages to run.
    #[arg(long, value_enum, default_value = "both")]
    pub stages: StagesArg,
    /// Stage 2 starts from this stage-1 checkpoint (default OUT/stage1.safetensors).
    #[arg(long)]
    pub stage1_checkpoint: Option<PathBuf>,
    /// No per-epoch log lines or progress bars.
    #[arg(long, short)]
    pub quiet: bool,
    /// Data-parallel training on N local workers (c10d: Gloo on the CPU, the cores split
    /// between them; NCCL on CUDA, one GPU each). Under torchrun or Slurm leave it out: the
    /// launcher's RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT are read.
    /// stage1.batch_size is per worker.
    #[arg(long, value_name = "N")]
    pub nproc: Option<usize>,
    /// Start --nproc CPU workers even when they are more than the cores.
    #[arg(long, requires = "nproc")]
    pub oversubscribe: bool,
    /// Seconds a worker waits for the others (rendezvous, each exchange) before it stops
    /// with an error.
    #[arg(long, value_name = "SECS", default_value_t = crate::dist::DEFAULT_TIMEOUT.as_secs())]
    pub dist_timeout: u64,
}

/// `--stages`: both, one or two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StagesArg {
    Both,
    /// Stage 1 only.
    One,
    /// Stage 2 only, from a stage-1 checkpoint.
    Two,
}

impl StagesArg {
    pub fn stages(self) -> Vec<Stage> {
        match self {
            StagesArg::Both => vec![Stage::One, Stage::Two],
            StagesArg::One => vec![Stage::One],
            StagesArg::Two => vec![Stage::Two],
        }
    }
}

#[derive(Args)]
pub struct SplitArgs {
    #[arg(long, default_value = "fashion-mnist")]
    pub dataset: DatasetKind,
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[command(flatten)]
    pub lists: ListArgs,
    #[arg(long, default_value_t = 100.0)]
    pub ratio: f64,
    /// exp or step (default: exp; as-is for image files)
    #[arg(long, value_enum)]
    pub profile: Option<Profile>,
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
            let timeout = std::time::Duration::from_secs(a.dist_timeout.max(1));
            // With --nproc this process launches the workers and is done when they are.
            let Some(dist) = crate::train::workers(&cfg, a.nproc, a.oversubscribe, timeout)? else { return Ok(()) };
            let opts = TrainOptions {
                out: a.out,
                resume: a.resume,
                overwrite: a.overwrite,
                stages: a.stages.stages(),
                stage1_checkpoint: a.stage1_checkpoint,
                verbose: !a.quiet,
                dist,
            };
            crate::train::run_command(&cfg, &opts)
        }
        Command::Split(a) => {
            let mut data = crate::config::DataConfig { dataset: a.dataset, dir: a.data, ratio: a.ratio, profile: a.profile, ..Default::default() };
            data.split = a.random_seed.map_or(SplitRule::FirstN, |seed| SplitRule::Random { seed });
            a.lists.apply(&mut data);
            crate::inspect::split(&SplitOptions { data, export: a.export })
        }
        Command::Report(a) => {
            let opts = crate::report::ReportOptions {
                runs: a.runs,
                out: a.out,
                tsne: crate::report::TsneSettings { perplexity: a.perplexity, seed: a.seed, max_points: a.max_points, epochs: a.tsne_epochs, ..Default::default() },
                run_cfg: crate::runtime::RunConfig { device: a.device, threads: a.threads, ..Default::default() },
                verbose: !a.quiet,
            };
            crate::report::run_command(&opts)
        }
        Command::Sweep(a) => match a.action {
            Some(SweepAction::Collect { dir }) => crate::util::out(&crate::sweep::collect::collect(&dir)?.text),
            Some(SweepAction::Task { dir, index, quiet }) => crate::sweep::run_task(&dir, index, !quiet),
            None => {
                let base = a.settings.resolve()?;
                let plan = crate::sweep::Plan::new(&base, &a.grids, &a.ratios, &a.seeds, a.methods.as_deref(), a.study)?;
                if a.emit.is_none() && !a.sbatch.is_empty() {
                    anyhow::bail!("--sbatch goes with --emit slurm");
                }
                crate::sweep::run_command(&crate::sweep::SweepOptions {
                    plan,
                    out: a.out.context("--out DIR is required")?,
                    jobs: a.jobs,
                    emit: a.emit,
                    sbatch: a.sbatch,
                    verbose: !a.quiet,
                })
            }
        },
        Command::Export(a) => crate::export::run_command(&crate::export::ExportOptions { run: a.run, stage: a.stage, out: a.out }),
        Command::Predict(a) => {
            let run_cfg = crate::runtime::RunConfig { device: a.device, threads: a.threads, eval_batch_size: a.batch_size, ..Default::default() };
            crate::predict::run(&crate::predict::PredictOptions {
                run: a.run,
                stage: a.stage,
                arch: a.arch,
                pretrained: a.pretrained,
                class_names: a.class_names,
                inputs: a.inputs,
                list: a.list,
                root: a.root,
                top_k: a.top_k,
                format: a.format,
                logits: a.logits,
                features: a.features,
                out: a.out,
                max_pixels: a.max_pixels,
                run_cfg,
                verbose: !a.quiet,
            })
        }
        Command::Config(a) => {
            if a.list {
                crate::inspect::presets()
            } else {
                crate::inspect::config(&a.settings.resolve()?, &a.settings.preset)
            }
        }
        Command::Compare(a) => {
            if a.list_default {
                return crate::util::out(crate::compare::DEFAULT_METHODS.trim_start());
            }
            crate::compare::run_command(&CompareOptions { base: a.settings.resolve()?, methods: a.methods, only: a.only, out: a.out, verbose: !a.quiet })
        }
        Command::Bench(a) if a.isa.as_deref().is_some_and(|i| std::env::var("GCL_CPU_ISA").as_deref() != Ok(i)) => crate::bench::reexec_with_isa(a.isa.as_deref().unwrap_or_default()),
        Command::Bench(a) if a.input => {
            let mut workers = a.worker_counts.clone();
            if workers.is_empty() {
                workers = vec![1, crate::runtime::cores()];
                workers.dedup();
            }
            crate::bench::input::run_command(&crate::bench::input::InputOptions {
                cfg: a.settings.resolve()?,
                images: a.images,
                passes: a.passes.max(1),
                workers,
                vs_reference: a.vs_reference,
                json: a.json,
            })
        }
        Command::Bench(a) if a.settings.arch.as_deref().is_some_and(|x| x != crate::model::CIFAR) => {
            // An ImageNet backbone on generated images, against PyTorch + torchvision.
            let cfg = a.settings.resolve()?;
            let case = crate::bench::arch::ArchCase {
                arch: cfg.model.arch().to_string(),
                size: a.size,
                batch: cfg.stage1.batch_size as i64,
                classes: a.classes,
                precision: cfg.run.precision,
                device: cfg.run.device.clone(),
                threads: cfg.run.threads,
                warmup_steps: a.warmup_steps,
                windows: a.windows,
                steps_per_window: a.steps_per_window,
                eval_batches: a.eval_batches,
                tune: cfg.model.tune,
                winograd: cfg.run.winograd,
            };
            let tunes = a
                .tunes
                .iter()
                .map(|t| serde_json::from_value(serde_json::json!({ "name": t })).map_err(|e| anyhow::anyhow!("--tunes {t}: {e} (full, linear, bitfit, lora, adaptformer, ssf, vpt)")))
                .collect::<Result<Vec<crate::model::vit::Tune>>>()?;
            let precisions = if a.settings.precision.is_some() { vec![cfg.run.precision] } else { crate::bench::arch::default_precisions(&cfg.run.device) };
            crate::bench::arch::run_command(&crate::bench::arch::ArchOptions { case, tunes, precisions, rounds: a.rounds, vs_pytorch: a.vs_reference, json: a.json })
        }
        Command::BenchArchWorker(a) => crate::bench::arch::worker(&serde_json::from_str(&a.case).context("bench-arch-worker: bad --case")?),
        Command::Bench(a) => crate::bench::run_command(&BenchOptions {
            cfg: a.settings.resolve()?,
            budget: Budget { warmup_steps: a.warmup_steps, windows: a.windows, steps_per_window: a.steps_per_window, eval_passes: a.eval_passes },
            rounds: a.rounds,
            vs_reference: a.vs_reference,
            reference_dir: a.reference_dir,
            json: a.json,
        }),
        Command::Data(DataCommand::Check(a)) => crate::datacmd::check::run_command(&crate::datacmd::check::CheckOptions {
            cfg: a.settings.resolve()?,
            // --threads (run.threads) sets the readers too; 0, the default, is all cores.
            threads: if a.settings.threads.unwrap_or(0) > 0 { a.settings.threads.unwrap_or(0) } else { crate::runtime::cores() },
            all: a.all,
        }),
        Command::Data(DataCommand::Make(a)) => crate::datacmd::make::run_command(&crate::datacmd::make::MakeOptions {
            from: a.from,
            data: a.data,
            out: a.out,
            format: a.format,
            ratio: a.ratio,
            profile: a.profile,
            max_per_class: a.max_per_class,
            val_per_class: a.val_per_class,
            test_per_class: a.test_per_class,
            min_size: a.min_size,
            max_size: a.max_size,
            photo_width: a.photo_width,
            quality: a.quality,
            seed: a.seed,
            overwrite: a.overwrite,
        }),
        Command::BenchWorker(a) => {
            let budget: Budget = serde_json::from_str(&a.budget).context("--budget")?;
            crate::bench::worker(&Config::default().merge_file(&a.config_file)?, &budget)
        }
    }
}
