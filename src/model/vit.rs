//! Vision transformers (Dosovitskiy et al. 2021) in the layouts of the libraries whose
//! weights they take, so that those state dicts load by name (the names, per layout, are all
//! in [`Names`]):
//! - torchvision's `vit_*` (`models/vision_transformer.py`): `conv_proj`, `class_token`,
//!   `encoder.pos_embedding`, `encoder.layers.encoder_layer_N.{ln_1, self_attention, ln_2,
//!   mlp.0, mlp.3}`, `encoder.ln`; `heads.head` is its classifier;
//! - CLIP's image tower as OpenAI's CLIP and OpenCLIP name it: `visual.{conv1,
//!   class_embedding, positional_embedding, ln_pre, transformer.resblocks.N.{ln_1, attn, ln_2,
//!   mlp.c_fc, mlp.c_proj}, ln_post, proj}` (a whole CLIP state dict loads: the text tower is
//!   left out), QuickGELU for OpenAI's weights;
//! - DINOv2 as timm names it: `patch_embed.proj`, `cls_token`, `pos_embed`,
//!   `blocks.N.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}`,
//!   `norm`.
//!
//! x -> patches (a P x P convolution of stride P) -> [class token; patches] + position
//! embedding (-> LN for CLIP) -> L pre-norm blocks (x += ls1 * MHSA(LN(x)); x += ls2 *
//! MLP(LN(x)); layer scales for DINOv2 only) -> LN -> the class token's row (x W_proj for
//! CLIP): the features. Images of another size than the weights' use the position embedding
//! of the patch grid resized bicubically, as each library resizes it.
use super::flops::Op;
use super::{Backbone, FrozenBackbone};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

/// Whose layout (parameter names and details) a ViT has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    Torchvision,
    Clip,
    Dinov2,
}

/// `model.tune`: which of a ViT's weights training changes (LIFT's menu, Shi et al., ICML
/// 2024; the classifier is always trained). `full`: all; `linear`: none (the classifier
/// alone); `bitfit`: the blocks' biases (Zaken et al. 2022); `lora`: low-rank updates
/// q += s x A_q B_q, v += s x A_v B_v of rank r in every block, s = 1/r, B starting at 0 (Hu et al.
/// 2022, as LIFT places them); `adaptformer`: beside every block's MLP a bottleneck
/// x -> scale * W_up relu(W_down LN(x)), W_up and the biases starting at 0, scale at 1 (Chen et
/// al. 2022; LIFT's default); `ssf`: a scale and shift (y * gamma + beta, gamma ~ N(1, 0.02),
/// beta ~ N(0, 0.02)) after each LayerNorm, the q/k/v projection, the attention's output and
/// both MLP layers (Lian et al. 2022); `vpt`: `length` prompt tokens appended after the
/// patches before the first block (shallow) or replaced before every block (`deep`), uniform in
/// +-sqrt(6 / (3 P^2 + D)) (Jia et al. 2022). `rank`/`width` 0: LIFT's rule,
/// 2^max(0, floor(log2(C / 2L))) for C classes and L blocks. The added weights are
/// `backbone.tune.N.*`; the rest stays bit-identical.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "name", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Tune {
    #[default]
    Full,
    Linear,
    Bitfit,
    Lora {
        #[serde(default)]
        rank: i64,
    },
    Adaptformer {
        #[serde(default)]
        width: i64,
    },
    Ssf,
    Vpt {
        #[serde(default = "default_prompts")]
        length: i64,
        #[serde(default)]
        deep: bool,
    },
}

/// LIFT's prompt length.
fn default_prompts() -> i64 {
    10
}

impl Tune {
    /// LIFT's bottleneck width for `classes` classes and `depth` blocks.
    pub fn lift_width(classes: i64, depth: usize) -> i64 {
        let r = classes as f64 / (2 * depth) as f64;
        1 << (r.log2().floor().max(0.0) as i64)
    }
}

/// A ViT's shape: patch side, width (embedding dimension), depth (blocks), attention heads,
/// MLP width, the image side its position embedding is made for; its layout; for CLIP the
/// projection's output width (`embed`, 0: none) and whether the MLP uses QuickGELU
/// (x sigmoid(1.702 x), OpenAI's weights) instead of GELU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VitSpec {
    pub patch: i64,
    pub width: i64,
    pub depth: usize,
    pub heads: i64,
    pub mlp: i64,
    pub image_size: i64,
    pub layout: Layout,
    pub embed: i64,
    pub quick_gelu: bool,
}

impl Default for VitSpec {
    /// `model.arch = "vit"`'s default: a small ViT for 28-64 px images on a CPU (ViT-Tiny's
    /// width and heads, 6 blocks, 4 px patches of 32 px images).
    fn default() -> Self {
        VitSpec { patch: 4, width: 192, depth: 6, heads: 3, mlp: 768, image_size: 32, layout: Layout::Torchvision, embed: 0, quick_gelu: false }
    }
}

/// `model.arch` of the configurable ViT (`model.vit` gives its shape).
pub const SMALL: &str = "vit";

impl VitSpec {
    /// The named ViTs (torchvision's, OpenCLIP's image towers, timm's DINOv2); the
    /// configurable one is [`SMALL`].
    pub fn of(name: &str) -> Option<VitSpec> {
        use Layout::*;
        // (layout, patch, width, depth, heads, mlp, image size, CLIP embedding)
        let (layout, patch, width, depth, heads, mlp, image_size, embed) = match name.strip_suffix("_quickgelu").unwrap_or(name) {
            "vit_b_16" => (Torchvision, 16, 768, 12, 12, 3072, 224, 0),
            "vit_b_32" => (Torchvision, 32, 768, 12, 12, 3072, 224, 0),
            "vit_l_16" => (Torchvision, 16, 1024, 24, 16, 4096, 224, 0),
            "vit_l_32" => (Torchvision, 32, 1024, 24, 16, 4096, 224, 0),
            "clip_vit_b_16" => (Clip, 16, 768, 12, 12, 3072, 224, 512),
            "clip_vit_b_32" => (Clip, 32, 768, 12, 12, 3072, 224, 512),
            "clip_vit_l_14" => (Clip, 14, 1024, 24, 16, 4096, 224, 768),
            "dinov2_vit_s_14" => (Dinov2, 14, 384, 12, 6, 1536, 518, 0),
            "dinov2_vit_b_14" => (Dinov2, 14, 768, 12, 12, 3072, 518, 0),
            "dinov2_vit_l_14" => (Dinov2, 14, 1024, 24, 16, 4096, 518, 0),
            _ => return None,
        };
        let quick_gelu = name.ends_with("_quickgelu");
        if quick_gelu && layout != Clip {
            return None;
        }
        Some(VitSpec { patch, width, depth, heads, mlp, image_size, layout, embed, quick_gelu })
    }

    /// `_quickgelu`: OpenCLIP's name for the same tower with OpenAI's activation.
    pub const NAMES: &[&str] = &[
        "vit_b_16",
        "vit_b_32",
        "vit_l_16",
        "vit_l_32",
        "clip_vit_b_16",
        "clip_vit_b_16_quickgelu",
        "clip_vit_b_32",
        "clip_vit_b_32_quickgelu",
        "clip_vit_l_14",
        "clip_vit_l_14_quickgelu",
        "dinov2_vit_s_14",
        "dinov2_vit_b_14",
        "dinov2_vit_l_14",
    ];

    /// The shape's consistency.
    pub fn check(&self) -> Result<()> {
        if (self.embed != 0 || self.quick_gelu) && self.layout != Layout::Clip {
            bail!("model.vit: embed and quick_gelu belong to the CLIP layout (layout = \"clip\")");
        }
        let ok = self.patch > 0 && self.width > 0 && self.depth > 0 && self.heads > 0 && self.mlp > 0 && self.image_size >= self.patch && self.embed >= 0;
        if !ok || self.width % self.heads != 0 || self.image_size % self.patch != 0 {
            bail!(
                "model.vit = {self:?}: needs positive sizes, a width divisible by the heads ({} / {}) and an image_size divisible by the patch ({} / {})",
                self.width,
                self.heads,
                self.image_size,
                self.patch
            );
        }
        Ok(())
    }
}

/// Where each layout keeps each parameter: the one place that maps the libraries' names.
pub(super) struct Names {
    /// The tower's own prefix (`visual` for CLIP).
    root: &'static str,
    conv: &'static str,
    conv_bias: bool,
    class_token: &'static str,
    positions: &'static str,
    /// LayerNorm before the blocks (CLIP).
    ln_pre: Option<&'static str>,
    /// Block `i`'s path, `{}` standing for `i`.
    block: &'static str,
    ln_1: &'static str,
    /// The attention's joint q, k, v projection: weight and bias names.
    qkv: (&'static str, &'static str),
    out_proj: &'static str,
    ln_2: &'static str,
    fc1: &'static str,
    fc2: &'static str,
    /// Layer scales (DINOv2): `ls1.gamma`, `ls2.gamma`.
    layer_scale: Option<(&'static str, &'static str)>,
    norm: &'static str,
    eps: f64,
}

impl Layout {
    pub(super) fn names(self) -> Names {
        match self {
            Layout::Torchvision => Names {
                root: "",
                conv: "conv_proj",
                conv_bias: true,
                class_token: "class_token",
                positions: "encoder.pos_embedding",
                ln_pre: None,
                block: "encoder.layers.encoder_layer_{}",
                ln_1: "ln_1",
                qkv: ("self_attention.in_proj_weight", "self_attention.in_proj_bias"),
                out_proj: "self_attention.out_proj",
                ln_2: "ln_2",
                fc1: "mlp.0",
                fc2: "mlp.3",
                layer_scale: None,
                norm: "encoder.ln",
                eps: 1e-6,
            },
            Layout::Clip => Names {
                root: "visual",
                conv: "conv1",
                conv_bias: false,
                class_token: "class_embedding",
                positions: "positional_embedding",
                ln_pre: Some("ln_pre"),
                block: "transformer.resblocks.{}",
                ln_1: "ln_1",
                qkv: ("attn.in_proj_weight", "attn.in_proj_bias"),
                out_proj: "attn.out_proj",
                ln_2: "ln_2",
                fc1: "mlp.c_fc",
                fc2: "mlp.c_proj",
                layer_scale: None,
                norm: "ln_post",
                eps: 1e-5,
            },
            Layout::Dinov2 => Names {
                root: "",
                conv: "patch_embed.proj",
                conv_bias: true,
                class_token: "cls_token",
                positions: "pos_embed",
                ln_pre: None,
                block: "blocks.{}",
                ln_1: "norm1",
                qkv: ("attn.qkv.weight", "attn.qkv.bias"),
                out_proj: "attn.proj",
                ln_2: "norm2",
                fc1: "mlp.fc1",
                fc2: "mlp.fc2",
                layer_scale: Some(("ls1.gamma", "ls2.gamma")),
                norm: "norm",
                eps: 1e-6,
            },
        }
    }
}

/// The name of block `i`'s joint q/k/v weight in `layout` (as the library names it).
pub fn qkv_weight_name(layout: Layout, i: usize) -> String {
    let n = layout.names();
    let block = n.block.replace("{}", &i.to_string());
    [n.root, &block, n.qkv.0].iter().filter(|s| !s.is_empty()).copied().collect::<Vec<_>>().join(".")
}

/// `p` / each component of the dotted `name`.
pub(super) fn at<'a>(p: &nn::Path<'a>, name: &str) -> nn::Path<'a> {
    name.split('.').filter(|c| !c.is_empty()).fold(p.clone(), |p, c| &p / c)
}

/// A variable at the dotted path `name` under `p`.
fn var(p: &nn::Path, name: &str, dims: &[i64], init: nn::Init) -> Tensor {
    let (dir, leaf) = name.rsplit_once('.').unwrap_or(("", name));
    at(p, dir).var(leaf, dims, init)
}

/// Weight and bias of a linear map or a LayerNorm, as tensors (so that a frozen copy is the
/// same struct with the tensors detached).
pub(super) struct Affine {
    pub(super) w: Tensor,
    pub(super) b: Option<Tensor>,
}

impl Affine {
    fn linear(p: &nn::Path, i: i64, o: i64, w: nn::Init, b: nn::Init) -> Self {
        Affine { w: p.var("weight", &[o, i], w), b: Some(p.var("bias", &[o], b)) }
    }
    pub(super) fn layer_norm(p: &nn::Path, d: i64) -> Self {
        Affine { w: p.var("weight", &[d], nn::Init::Const(1.0)), b: Some(p.var("bias", &[d], nn::Init::Const(0.0))) }
    }
    fn apply(&self, x: &Tensor) -> Tensor {
        x.linear(&self.w, self.b.as_ref())
    }
    /// LayerNorm over the last dimension.
    pub(super) fn norm(&self, x: &Tensor, eps: f64) -> Tensor {
        x.layer_norm([self.w.size()[0]].as_slice(), Some(&self.w), self.b.as_ref(), eps, false)
    }
    fn detach(&self) -> Self {
        Affine { w: self.w.detach(), b: self.b.as_ref().map(Tensor::detach) }
    }
}

pub(super) struct Block {
    ln_1: Affine,
    qkv: Affine,
    out_proj: Affine,
    ln_2: Affine,
    fc1: Affine,
    fc2: Affine,
    layer_scale: Option<(Tensor, Tensor)>,
    tune: Option<BlockTune>,
}

/// A block's added weights (`model.tune`).
pub(super) enum BlockTune {
    /// (A, B) for q and for v, and the scaling 1/r.
    Lora { q: (Tensor, Tensor), v: (Tensor, Tensor), scaling: f64 },
    Adaptformer { ln: Affine, down: Affine, up: Affine, scale: Tensor },
    /// (scale, shift) after ln_1, qkv, out_proj, ln_2, fc1, fc2.
    Ssf([(Tensor, Tensor); 6]),
}

/// SSF's places in a block.
const LN_1: usize = 0;
const QKV: usize = 1;
const OUT: usize = 2;
const LN_2: usize = 3;
const FC1: usize = 4;
const FC2: usize = 5;

impl BlockTune {
    fn new(p: &nn::Path, tune: Tune, d: i64, mlp: i64, bottleneck: i64) -> Option<Self> {
        let zero = nn::Init::Const(0.0);
        match tune {
            Tune::Lora { .. } => {
                // kaiming_uniform(a = sqrt 5) of a [D, r] matrix: bound 1 / sqrt(r).
                let bound = 1.0 / (bottleneck as f64).sqrt();
                let pair = |n: &str| (p.var(&format!("lora_{n}_a"), &[d, bottleneck], nn::Init::Uniform { lo: -bound, up: bound }), p.var(&format!("lora_{n}_b"), &[bottleneck, d], zero));
                Some(BlockTune::Lora { q: pair("q"), v: pair("v"), scaling: 1.0 / bottleneck as f64 })
            }
            Tune::Adaptformer { .. } => {
                let a = p / "adaptformer";
                // kaiming_normal(a = sqrt 5) of W_down: std = sqrt(1/3) / sqrt(D).
                let std = (1.0f64 / 3.0).sqrt() / (d as f64).sqrt();
                Some(BlockTune::Adaptformer {
                    ln: Affine::layer_norm(&(&a / "ln"), d),
                    down: Affine::linear(&(&a / "down_proj"), d, bottleneck, nn::Init::Randn { mean: 0.0, stdev: std }, zero),
                    up: Affine::linear(&(&a / "up_proj"), bottleneck, d, zero, zero),
                    scale: a.var("scale", &[1], nn::Init::Const(1.0)),
                })
            }
            Tune::Ssf => {
                let pair = |name: &str, n: i64| {
                    (
                        p.var(&format!("ssf_{name}_scale"), &[n], nn::Init::Randn { mean: 1.0, stdev: 0.02 }),
                        p.var(&format!("ssf_{name}_shift"), &[n], nn::Init::Randn { mean: 0.0, stdev: 0.02 }),
                    )
                };
                Some(BlockTune::Ssf([pair("ln_1", d), pair("qkv", 3 * d), pair("out", d), pair("ln_2", d), pair("fc1", mlp), pair("fc2", d)]))
            }
            _ => None,
        }
    }

    fn detach(&self) -> Self {
        match self {
            BlockTune::Ssf(pairs) => BlockTune::Ssf(pairs.each_ref().map(|(a, b)| (a.detach(), b.detach()))),
            BlockTune::Lora { q, v, scaling } => BlockTune::Lora { q: (q.0.detach(), q.1.detach()), v: (v.0.detach(), v.1.detach()), scaling: *scaling },
            BlockTune::Adaptformer { ln, down, up, scale } => BlockTune::Adaptformer { ln: ln.detach(), down: down.detach(), up: up.detach(), scale: scale.detach() },
        }
    }
}

/// Xavier-uniform, as torchvision initialises the attention's and MLP's linear maps.
fn xavier(fan_in: i64, fan_out: i64) -> nn::Init {
    let a = (6.0 / (fan_in + fan_out) as f64).sqrt();
    nn::Init::Uniform { lo: -a, up: a }
}

impl Block {
    pub(super) fn new(p: &nn::Path, s: &VitSpec, n: &Names, tune: Option<BlockTune>) -> Self {
        let d = s.width;
        let zero = nn::Init::Const(0.0);
        let tiny = nn::Init::Randn { mean: 0.0, stdev: 1e-6 };
        let bound = 1.0 / (d as f64).sqrt();
        Block {
            ln_1: Affine::layer_norm(&at(p, n.ln_1), d),
            qkv: Affine { w: var(p, n.qkv.0, &[3 * d, d], xavier(d, 3 * d)), b: Some(var(p, n.qkv.1, &[3 * d], zero)) },
            out_proj: Affine::linear(&at(p, n.out_proj), d, d, nn::Init::Uniform { lo: -bound, up: bound }, zero),
            ln_2: Affine::layer_norm(&at(p, n.ln_2), d),
            fc1: Affine::linear(&at(p, n.fc1), d, s.mlp, xavier(d, s.mlp), tiny),
            fc2: Affine::linear(&at(p, n.fc2), s.mlp, d, xavier(s.mlp, d), tiny),
            // timm's DINOv2: layer scales start at 1e-5.
            layer_scale: n.layer_scale.map(|(a, b)| (var(p, a, &[d], nn::Init::Const(1e-5)), var(p, b, &[d], nn::Init::Const(1e-5)))),
            tune,
        }
    }

    /// `y * scale + shift` at SSF's place `at`, when the block has SSF.
    fn ssf(&self, y: Tensor, at: usize) -> Tensor {
        match &self.tune {
            Some(BlockTune::Ssf(pairs)) => y * &pairs[at].0 + &pairs[at].1,
            _ => y,
        }
    }

    /// Multi-head self-attention as `nn.MultiheadAttention(batch_first=True)` and timm's
    /// `Attention` compute it.
    fn attention(&self, x: &Tensor, heads: i64, causal: bool) -> Result<Tensor> {
        let (b, n, d) = x.size3()?;
        let mut qkv = self.ssf(self.qkv.apply(x), QKV);
        if let Some(BlockTune::Lora { q, v, scaling }) = &self.tune {
            // q and v take their low-rank updates; k stays as projected.
            let low_rank = |(a, b): &(Tensor, Tensor)| x.matmul(a).matmul(b) * *scaling;
            let parts = qkv.chunk(3, 2);
            qkv = Tensor::cat(&[&parts[0] + low_rank(q), parts[1].shallow_clone(), &parts[2] + low_rank(v)], 2);
        }
        let qkv = qkv.view([b, n, 3, heads, d / heads]).permute([2, 0, 3, 1, 4]);
        let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
        let o = Tensor::scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, causal, None, false);
        Ok(self.ssf(self.out_proj.apply(&o.transpose(1, 2).reshape([b, n, d])), OUT))
    }

    /// `causal`: each token attends to itself and the ones before it (CLIP's text tower).
    pub(super) fn forward(&self, x: &Tensor, s: &VitSpec, eps: f64, causal: bool) -> Result<Tensor> {
        let scaled = |t: Tensor, i: usize| match &self.layer_scale {
            Some(g) => t * if i == 0 { &g.0 } else { &g.1 },
            None => t,
        };
        let x = x + scaled(self.attention(&self.ssf(self.ln_1.norm(x, eps), LN_1), s.heads, causal)?, 0);
        let h = self.ssf(self.fc1.apply(&self.ssf(self.ln_2.norm(&x, eps), LN_2)), FC1);
        let h = if s.quick_gelu { &h * (&h * 1.702).sigmoid() } else { h.gelu("none") };
        let out = &x + scaled(self.ssf(self.fc2.apply(&h), FC2), 1);
        Ok(match &self.tune {
            // LIFT's placement: beside the MLP, from the same input x.
            Some(BlockTune::Adaptformer { ln, down, up, scale }) => out + up.apply(&down.apply(&ln.norm(&x, 1e-5)).relu()) * scale,
            _ => out,
        })
    }

    /// Its products for `t` tokens of width `d` (`flops`): the parameters it adds for tuning
    /// first (they send the gradient back through everything after them).
    pub(super) fn ops(&self, t: i64, s: &VitSpec) -> Vec<Op> {
        let (d, m) = (s.width, s.mlp);
        let trains = |a: &Affine| a.w.requires_grad() || a.b.as_ref().is_some_and(Tensor::requires_grad);
        let norms = [&self.ln_1, &self.ln_2].into_iter().any(trains) || self.layer_scale.as_ref().is_some_and(|(a, _)| a.requires_grad());
        let added = self.tune.is_some();
        let linear = |a: &Affine, din: i64, dout: i64| Op { trains: trains(a), ..Op::linear(t, din, dout, a.w.requires_grad()) };
        let mut ops = vec![Op::trains_here(norms || added), linear(&self.qkv, d, 3 * d)];
        if let Some(BlockTune::Lora { q, .. }) = &self.tune {
            let r = q.0.size()[1];
            // x A B for q and for v.
            ops.extend([Op::linear(t, d, r, true), Op::linear(t, r, d, true), Op::linear(t, d, r, true), Op::linear(t, r, d, true)]);
        }
        ops.extend([Op::activations(t * t * d), Op::activations(t * t * d), linear(&self.out_proj, d, d), linear(&self.fc1, d, m), linear(&self.fc2, m, d)]);
        if let Some(BlockTune::Adaptformer { down, .. }) = &self.tune {
            let r = down.w.size()[0];
            ops.extend([Op::linear(t, d, r, true), Op::linear(t, r, d, true)]);
        }
        ops
    }

    fn detach(&self) -> Self {
        Block {
            ln_1: self.ln_1.detach(),
            qkv: self.qkv.detach(),
            out_proj: self.out_proj.detach(),
            ln_2: self.ln_2.detach(),
            fc1: self.fc1.detach(),
            fc2: self.fc2.detach(),
            layer_scale: self.layer_scale.as_ref().map(|(a, b)| (a.detach(), b.detach())),
            tune: self.tune.as_ref().map(BlockTune::detach),
        }
    }
}

/// A ViT of one of the layouts.
pub struct Vit {
    name: String,
    spec: VitSpec,
    eps: f64,
    conv: Affine,
    class_token: Tensor,
    pos_embedding: Tensor,
    ln_pre: Option<Affine>,
    blocks: Vec<Block>,
    norm: Affine,
    /// CLIP's projection, width x embed.
    proj: Option<Tensor>,
    /// VPT's prompt tokens before each block (length x D), where it has them.
    prompts: Vec<Option<Tensor>>,
    tune: Tune,
}

impl Vit {
    /// `tune` (`model.tune`) adds its weights under `tune.N` and leaves the others untrained;
    /// `classes` sets LIFT's default bottleneck width.
    pub fn new(vs: &nn::Path, name: &str, spec: VitSpec, in_channels: i64, tune: Tune, classes: i64) -> Result<Self> {
        spec.check()?;
        let bottleneck = match tune {
            Tune::Lora { rank: 0 } | Tune::Adaptformer { width: 0 } => Tune::lift_width(classes, spec.depth),
            Tune::Lora { rank: w } | Tune::Adaptformer { width: w } if w < 0 => bail!("model.tune: {tune:?} needs a width (rank) > 0, or 0 for LIFT's rule"),
            Tune::Lora { rank: w } | Tune::Adaptformer { width: w } => w,
            _ => 0,
        };
        let n = spec.layout.names();
        let root = at(vs, n.root);
        let (d, p) = (spec.width, spec.patch);
        let fan_in = (in_channels * p * p) as f64;
        let conv_path = at(&root, n.conv);
        let conv = Affine {
            w: conv_path.var("weight", &[d, in_channels, p, p], nn::Init::Randn { mean: 0.0, stdev: (1.0 / fan_in).sqrt() }),
            b: n.conv_bias.then(|| conv_path.var("bias", &[d], nn::Init::Const(0.0))),
        };
        let tokens = (spec.image_size / p).pow(2) + 1;
        // CLIP keeps the class token as [D] and the positions as [N, D]; the others add a
        // batch dimension.
        let (cls_dims, pos_dims) = match spec.layout {
            Layout::Clip => (vec![d], vec![tokens, d]),
            _ => (vec![1, 1, d], vec![1, tokens, d]),
        };
        let scale = 1.0 / (d as f64).sqrt();
        let block_tune = |i: usize| BlockTune::new(&(vs / "tune" / i), tune, d, spec.mlp, bottleneck);
        let prompts = (0..spec.depth)
            .map(|i| match tune {
                Tune::Vpt { length, deep } if deep || i == 0 => {
                    let bound = (6.0 / (3 * p * p + d) as f64).sqrt();
                    Some((vs / "tune" / i).var("vpt", &[length, d], nn::Init::Uniform { lo: -bound, up: bound }))
                }
                _ => None,
            })
            .collect();
        if let Tune::Vpt { length, .. } = tune {
            if length < 1 {
                bail!("model.tune: vpt needs length >= 1 prompt tokens");
            }
        }
        let vit = Vit {
            name: name.to_string(),
            spec,
            eps: n.eps,
            conv,
            class_token: var(&root, n.class_token, &cls_dims, nn::Init::Randn { mean: 0.0, stdev: if spec.layout == Layout::Torchvision { 0.0 } else { scale } }),
            pos_embedding: var(&root, n.positions, &pos_dims, nn::Init::Randn { mean: 0.0, stdev: 0.02 }),
            ln_pre: n.ln_pre.map(|l| Affine::layer_norm(&at(&root, l), d)),
            blocks: (0..spec.depth).map(|i| Block::new(&at(&root, &n.block.replace("{}", &i.to_string())), &spec, &n, block_tune(i))).collect(),
            norm: Affine::layer_norm(&at(&root, n.norm), d),
            proj: (spec.embed > 0).then(|| root.var("proj", &[d, spec.embed], nn::Init::Randn { mean: 0.0, stdev: scale })),
            prompts,
            tune,
        };
        for t in vit.fixed() {
            let _ = t.set_requires_grad(false);
        }
        Ok(vit)
    }

    /// The weights `tune` does not train: every pretrained one but the blocks' biases for
    /// BitFit, none for full fine-tuning; added weights train.
    fn fixed(&self) -> Vec<&Tensor> {
        let tune = self.tune;
        if tune == Tune::Full {
            return Vec::new();
        }
        let mut fixed: Vec<&Tensor> = vec![&self.conv.w, &self.class_token, &self.pos_embedding, &self.norm.w];
        fixed.extend(self.conv.b.iter().chain(self.norm.b.iter()).chain(self.proj.iter()));
        if let Some(ln) = &self.ln_pre {
            fixed.extend([&ln.w].into_iter().chain(ln.b.iter()));
        }
        for b in &self.blocks {
            for a in [&b.ln_1, &b.qkv, &b.out_proj, &b.ln_2, &b.fc1, &b.fc2] {
                fixed.push(&a.w);
                if tune != Tune::Bitfit {
                    fixed.extend(a.b.iter());
                }
            }
            if let Some((g1, g2)) = &b.layer_scale {
                fixed.extend([g1, g2]);
            }
        }
        fixed
    }

    /// The position embedding (1 x tokens x D) for a `gh` x `gw` patch grid: as stored, or its
    /// patch part resized bicubically as the layout's library does (torchvision: corners
    /// aligned; timm: antialiased; OpenCLIP: neither).
    fn positions(&self, gh: i64, gw: i64) -> Tensor {
        let d = self.spec.width;
        let pos = self.pos_embedding.view([1, -1, d]);
        let g = self.spec.image_size / self.spec.patch;
        if gh == g && gw == g {
            return pos;
        }
        crate::util::say_once(&format!(
            "{}: position embedding of a {g} x {g} patch grid resized to {gh} x {gw} for {} x {} images",
            self.arch(),
            gh * self.spec.patch,
            gw * self.spec.patch
        ));
        let cls = pos.narrow(1, 0, 1);
        let grid = pos.narrow(1, 1, g * g).reshape([1, g, g, d]).permute([0, 3, 1, 2]);
        let resized = match self.spec.layout {
            Layout::Torchvision => grid.upsample_bicubic2d([gh, gw], true, None, None),
            Layout::Dinov2 => grid.internal_upsample_bicubic2d_aa([gh, gw], false, None, None),
            Layout::Clip => grid.upsample_bicubic2d([gh, gw], false, None, None),
        };
        Tensor::cat(&[cls, resized.permute([0, 2, 3, 1]).reshape([1, gh * gw, d])], 1)
    }

    fn encode(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.size4()?;
        let p = self.spec.patch;
        if h % p != 0 || w % p != 0 {
            bail!("{}: {h} x {w} images do not divide into {p} x {p} patches (resize or crop them to a multiple of {p})", self.arch());
        }
        let x = x.conv2d(&self.conv.w, self.conv.b.as_ref(), [p, p], [0, 0], [1, 1], 1);
        let (b, d, gh, gw) = x.size4()?;
        let x = x.reshape([b, d, gh * gw]).transpose(1, 2);
        let x = Tensor::cat(&[self.class_token.view([1, 1, d]).expand([b, 1, d], false), x], 1) + self.positions(gh, gw);
        let x = match &self.ln_pre {
            Some(ln) => ln.norm(&x, self.eps),
            None => x,
        };
        // VPT: the prompts follow the image's tokens (LIFT's order); a deep prompt replaces the
        // previous block's.
        let tokens = 1 + gh * gw;
        let x = self.blocks.iter().zip(&self.prompts).try_fold(x, |x, (blk, prompt)| {
            let x = match prompt {
                Some(pr) => Tensor::cat(&[x.narrow(1, 0, tokens), pr.unsqueeze(0).expand([b, -1, -1], false)], 1),
                None => x,
            };
            blk.forward(&x, &self.spec, self.eps, false)
        })?;
        let token = self.norm.norm(&x.select(1, 0), self.eps);
        Ok(match &self.proj {
            Some(w) => token.matmul(w),
            None => token,
        })
    }
}

impl Backbone for Vit {
    /// No BatchNorm and no dropout (the libraries' defaults): `train` changes nothing.
    fn features(&self, x: &Tensor, _train: bool) -> Result<Tensor> {
        self.encode(x)
    }
    fn feature_dim(&self) -> i64 {
        if self.spec.embed > 0 {
            self.spec.embed
        } else {
            self.spec.width
        }
    }
    fn ops(&self, h: i64, w: i64) -> Vec<Op> {
        let (p, d) = (self.spec.patch, self.spec.width);
        let patches = (h / p) * (w / p);
        let prompts = self.prompts.iter().flatten().map(|t| t.size()[0]).max().unwrap_or(0);
        let cin = self.conv.w.size()[1];
        let embedding = [&self.class_token, &self.pos_embedding].into_iter().chain(self.prompts.iter().flatten()).any(Tensor::requires_grad);
        let mut ops = vec![Op::conv(cin, d, p, 1, h / p, w / p, self.conv.w.requires_grad()), Op::trains_here(embedding)];
        ops.extend(self.blocks.iter().flat_map(|b| b.ops(1 + patches + prompts, &self.spec)));
        if let Some(proj) = &self.proj {
            ops.push(Op::linear(1, d, self.spec.embed, proj.requires_grad()));
        }
        ops
    }
    fn freeze(&self) -> Result<Box<dyn FrozenBackbone>> {
        Ok(Box::new(Vit {
            name: self.name.clone(),
            spec: self.spec,
            eps: self.eps,
            conv: self.conv.detach(),
            class_token: self.class_token.detach(),
            pos_embedding: self.pos_embedding.detach(),
            ln_pre: self.ln_pre.as_ref().map(Affine::detach),
            blocks: self.blocks.iter().map(Block::detach).collect(),
            norm: self.norm.detach(),
            proj: self.proj.as_ref().map(Tensor::detach),
            prompts: self.prompts.iter().map(|p| p.as_ref().map(Tensor::detach)).collect(),
            tune: self.tune,
        }))
    }
    fn untuned(&self) -> Vec<Tensor> {
        self.fixed().into_iter().map(Tensor::shallow_clone).collect()
    }
    fn arch(&self) -> String {
        let s = &self.spec;
        match self.name.as_str() {
            SMALL => {
                let layout = match s.layout {
                    Layout::Torchvision => "vit".to_string(),
                    Layout::Clip => format!("clip-vit-e{}{}", s.embed, if s.quick_gelu { "-quickgelu" } else { "" }),
                    Layout::Dinov2 => "dinov2-vit".to_string(),
                };
                format!("{layout}-p{}-w{}-d{}-h{}-m{}", s.patch, s.width, s.depth, s.heads, s.mlp)
            }
            n => n.to_string(),
        }
    }
}

impl FrozenBackbone for Vit {
    fn features(&self, x: &Tensor) -> Result<Tensor> {
        tch::no_grad(|| self.encode(x))
    }
}
