//! Vision transformers (Dosovitskiy et al. 2021) in torchvision's layout
//! (`torchvision/models/vision_transformer.py`), so that its state dicts load by name:
//! `conv_proj`, `class_token`, `encoder.pos_embedding`,
//! `encoder.layers.encoder_layer_N.{ln_1, self_attention.{in_proj_weight, in_proj_bias,
//! out_proj}, ln_2, mlp.0, mlp.3}`, `encoder.ln`; the classifier `heads.head` is ours.
//!
//! x -> patches (a P x P convolution of stride P) -> [class token; patches] + position
//! embedding -> L pre-norm blocks (x += MHSA(LN(x)); x += MLP(LN(x)), GELU) -> LN -> the class
//! token's row: the features. Images of another size than the weights' take the position
//! embedding of the patch grid resized bicubically, as torchvision's `interpolate_embeddings`.
use super::{Backbone, FrozenBackbone};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

/// A ViT's shape: patch side, width (embedding dimension), depth (blocks), attention heads,
/// MLP width, and the image side its position embedding is made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VitSpec {
    pub patch: i64,
    pub width: i64,
    pub depth: usize,
    pub heads: i64,
    pub mlp: i64,
    pub image_size: i64,
}

impl Default for VitSpec {
    /// `model.arch = "vit"`'s default: a small ViT for 28-64 px images on a CPU (ViT-Tiny's
    /// width and heads, 6 blocks, 4 px patches of 32 px images).
    fn default() -> Self {
        VitSpec { patch: 4, width: 192, depth: 6, heads: 3, mlp: 768, image_size: 32 }
    }
}

/// `model.arch` of the configurable ViT (`model.vit` gives its shape).
pub const SMALL: &str = "vit";

impl VitSpec {
    /// torchvision's ViTs by name; the configurable one is [`SMALL`].
    pub fn of(name: &str) -> Option<VitSpec> {
        let (patch, width, depth, heads, mlp) = match name {
            "vit_b_16" => (16, 768, 12, 12, 3072),
            "vit_b_32" => (32, 768, 12, 12, 3072),
            "vit_l_16" => (16, 1024, 24, 16, 4096),
            "vit_l_32" => (32, 1024, 24, 16, 4096),
            _ => return None,
        };
        Some(VitSpec { patch, width, depth, heads, mlp, image_size: 224 })
    }

    pub const NAMES: &[&str] = &["vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32"];

    /// The shape's consistency.
    pub fn check(&self) -> Result<()> {
        let ok = self.patch > 0 && self.width > 0 && self.depth > 0 && self.heads > 0 && self.mlp > 0 && self.image_size >= self.patch;
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

/// Weight and bias of a linear map or a LayerNorm, as tensors (so that a frozen copy is the
/// same struct with the tensors detached).
struct Affine {
    w: Tensor,
    b: Tensor,
}

impl Affine {
    fn linear(p: &nn::Path, i: i64, o: i64, w: nn::Init, b: nn::Init) -> Self {
        Affine { w: p.var("weight", &[o, i], w), b: p.var("bias", &[o], b) }
    }
    fn layer_norm(p: &nn::Path, d: i64) -> Self {
        Affine { w: p.var("weight", &[d], nn::Init::Const(1.0)), b: p.var("bias", &[d], nn::Init::Const(0.0)) }
    }
    fn apply(&self, x: &Tensor) -> Tensor {
        x.linear(&self.w, Some(&self.b))
    }
    /// LayerNorm over the last dimension (torchvision's eps for ViTs).
    fn norm(&self, x: &Tensor) -> Tensor {
        x.layer_norm([self.w.size()[0]].as_slice(), Some(&self.w), Some(&self.b), EPS, false)
    }
    fn detach(&self) -> Self {
        Affine { w: self.w.detach(), b: self.b.detach() }
    }
}

/// torchvision's LayerNorm eps in ViTs.
const EPS: f64 = 1e-6;

struct Block {
    ln_1: Affine,
    in_proj: Affine,
    out_proj: Affine,
    ln_2: Affine,
    mlp_0: Affine,
    mlp_3: Affine,
    heads: i64,
}

/// Xavier-uniform, as torchvision initialises the attention's and MLP's linear maps.
fn xavier(fan_in: i64, fan_out: i64) -> nn::Init {
    let a = (6.0 / (fan_in + fan_out) as f64).sqrt();
    nn::Init::Uniform { lo: -a, up: a }
}

impl Block {
    fn new(p: &nn::Path, s: &VitSpec) -> Self {
        let d = s.width;
        let attn = p / "self_attention";
        let zero = nn::Init::Const(0.0);
        let tiny = nn::Init::Randn { mean: 0.0, stdev: 1e-6 };
        let in_proj = Affine { w: attn.var("in_proj_weight", &[3 * d, d], xavier(d, 3 * d)), b: attn.var("in_proj_bias", &[3 * d], zero) };
        let bound = 1.0 / (d as f64).sqrt();
        Block {
            ln_1: Affine::layer_norm(&(p / "ln_1"), d),
            in_proj,
            out_proj: Affine::linear(&(&attn / "out_proj"), d, d, nn::Init::Uniform { lo: -bound, up: bound }, zero),
            ln_2: Affine::layer_norm(&(p / "ln_2"), d),
            mlp_0: Affine::linear(&(p / "mlp" / "0"), d, s.mlp, xavier(d, s.mlp), tiny),
            mlp_3: Affine::linear(&(p / "mlp" / "3"), s.mlp, d, xavier(s.mlp, d), tiny),
            heads: s.heads,
        }
    }

    /// Multi-head self-attention as `nn.MultiheadAttention(batch_first=True)` computes it.
    fn attention(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, d) = x.size3()?;
        let qkv = self.in_proj.apply(x).view([b, n, 3, self.heads, d / self.heads]).permute([2, 0, 3, 1, 4]);
        let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
        let o = Tensor::scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, false, None, false);
        Ok(self.out_proj.apply(&o.transpose(1, 2).reshape([b, n, d])))
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x + self.attention(&self.ln_1.norm(x))?;
        let h = self.mlp_0.apply(&self.ln_2.norm(&x)).gelu("none");
        Ok(&x + self.mlp_3.apply(&h))
    }

    fn detach(&self) -> Self {
        Block {
            ln_1: self.ln_1.detach(),
            in_proj: self.in_proj.detach(),
            out_proj: self.out_proj.detach(),
            ln_2: self.ln_2.detach(),
            mlp_0: self.mlp_0.detach(),
            mlp_3: self.mlp_3.detach(),
            heads: self.heads,
        }
    }
}

/// A torchvision ViT (or the small configurable one).
pub struct Vit {
    name: String,
    spec: VitSpec,
    conv_proj: Affine,
    class_token: Tensor,
    pos_embedding: Tensor,
    blocks: Vec<Block>,
    ln: Affine,
}

impl Vit {
    pub fn new(vs: &nn::Path, name: &str, spec: VitSpec, in_channels: i64) -> Result<Self> {
        spec.check()?;
        let (d, p) = (spec.width, spec.patch);
        let fan_in = (in_channels * p * p) as f64;
        let conv = vs / "conv_proj";
        let conv_proj = Affine {
            w: conv.var("weight", &[d, in_channels, p, p], nn::Init::Randn { mean: 0.0, stdev: (1.0 / fan_in).sqrt() }),
            b: conv.var("bias", &[d], nn::Init::Const(0.0)),
        };
        let tokens = (spec.image_size / p).pow(2) + 1;
        let enc = vs / "encoder";
        Ok(Vit {
            name: name.to_string(),
            spec,
            conv_proj,
            class_token: vs.var("class_token", &[1, 1, d], nn::Init::Const(0.0)),
            pos_embedding: enc.var("pos_embedding", &[1, tokens, d], nn::Init::Randn { mean: 0.0, stdev: 0.02 }),
            blocks: (0..spec.depth).map(|i| Block::new(&(&enc / "layers" / format!("encoder_layer_{i}")), &spec)).collect(),
            ln: Affine::layer_norm(&(&enc / "ln"), d),
        })
    }

    /// The position embedding for a `gh` x `gw` patch grid: as stored, or its patch part
    /// resized bicubically (align_corners, as torchvision) for another grid.
    fn positions(&self, gh: i64, gw: i64) -> Tensor {
        let g = self.spec.image_size / self.spec.patch;
        if gh == g && gw == g {
            return self.pos_embedding.shallow_clone();
        }
        let d = self.spec.width;
        let cls = self.pos_embedding.narrow(1, 0, 1);
        let grid = self.pos_embedding.narrow(1, 1, g * g).reshape([1, g, g, d]).permute([0, 3, 1, 2]);
        let resized = grid.upsample_bicubic2d([gh, gw], true, None, None).permute([0, 2, 3, 1]).reshape([1, gh * gw, d]);
        Tensor::cat(&[cls, resized], 1)
    }

    fn encode(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.size4()?;
        let p = self.spec.patch;
        if h % p != 0 || w % p != 0 {
            bail!("{}: {h} x {w} images do not divide into {p} x {p} patches (resize or crop them to a multiple of {p})", self.arch());
        }
        let x = x.conv2d(&self.conv_proj.w, Some(&self.conv_proj.b), [p, p], [0, 0], [1, 1], 1);
        let (b, d, gh, gw) = x.size4()?;
        let x = x.reshape([b, d, gh * gw]).transpose(1, 2);
        let x = Tensor::cat(&[self.class_token.expand([b, 1, d], false), x], 1) + self.positions(gh, gw);
        let x = self.blocks.iter().try_fold(x, |x, blk| blk.forward(&x))?;
        Ok(self.ln.norm(&x).select(1, 0))
    }
}

impl Backbone for Vit {
    /// No BatchNorm and no dropout (torchvision's default 0): `train` changes nothing.
    fn features(&self, x: &Tensor, _train: bool) -> Result<Tensor> {
        self.encode(x)
    }
    fn feature_dim(&self) -> i64 {
        self.spec.width
    }
    fn freeze(&self) -> Result<Box<dyn FrozenBackbone>> {
        Ok(Box::new(Vit {
            name: self.name.clone(),
            spec: self.spec,
            conv_proj: self.conv_proj.detach(),
            class_token: self.class_token.detach(),
            pos_embedding: self.pos_embedding.detach(),
            blocks: self.blocks.iter().map(Block::detach).collect(),
            ln: self.ln.detach(),
        }))
    }
    fn arch(&self) -> String {
        match self.name.as_str() {
            SMALL => format!("vit-p{}-w{}-d{}-h{}-m{}", self.spec.patch, self.spec.width, self.spec.depth, self.spec.heads, self.spec.mlp),
            n => n.to_string(),
        }
    }
}

impl FrozenBackbone for Vit {
    fn features(&self, x: &Tensor) -> Result<Tensor> {
        tch::no_grad(|| self.encode(x))
    }
}
