//! The CIFAR ResNet of He et al. (2016): 3 stages of BasicBlocks with 16/32/64 channels,
//! option-A (parameter-free) shortcuts, depth 6n + 2 (20, 32, 44, 56, 110).
//!
//! With experts (RIDE's `ResNet_s`): the stem and the first stages are shared, each expert
//! has the last `stages` of its own (`layer2s.E.B`, `layer3s.E.B`) at the experts' width.
use super::flops::{out_size, Op};
use super::{Backbone, Experts, FrozenBackbone};
use crate::kernels::bn_act::{bn_act, BN_EPS, BN_MOMENTUM};
use crate::kernels::{winograd, Kernels};
use anyhow::{bail, Result};
use tch::nn::{self, ConvConfig, Init};
use tch::Tensor;

fn conv3x3(vs: nn::Path, cin: i64, cout: i64, stride: i64) -> nn::Conv2D {
    let cfg = ConvConfig { stride, padding: 1, bias: false, ws_init: nn::init::DEFAULT_KAIMING_NORMAL, ..Default::default() };
    nn::conv2d(vs, cin, cout, 3, cfg)
}

fn bn(vs: nn::Path, c: i64) -> nn::BatchNorm {
    // PyTorch's defaults: weight 1, bias 0 (tch would draw the weight uniformly).
    nn::batch_norm2d(vs, c, nn::BatchNormConfig { ws_init: Init::Const(1.0), momentum: BN_MOMENTUM, eps: BN_EPS, ..Default::default() })
}

struct BasicBlock {
    c1: nn::Conv2D,
    b1: nn::BatchNorm,
    c2: nn::Conv2D,
    b2: nn::BatchNorm,
    stride: i64,
    /// Zero channels added on each side of the shortcut (option A).
    pad: i64,
}

impl BasicBlock {
    fn new(vs: &nn::Path, cin: i64, cout: i64, stride: i64) -> Self {
        let pad = if stride != 1 || cin != cout { (cout - cin) / 2 } else { 0 };
        Self {
            c1: conv3x3(vs / "c1", cin, cout, stride),
            b1: bn(vs / "b1", cout),
            c2: conv3x3(vs / "c2", cout, cout, 1),
            b2: bn(vs / "b2", cout),
            stride,
            pad,
        }
    }

    fn forward(&self, x: &Tensor, train: bool, k: Kernels) -> Result<Tensor> {
        let c1 = conv(x, &self.c1, self.stride, k.winograd)?;
        if train && k.fused {
            let out = bn_act(&c1, None, &self.b1, true)?;
            return bn_act(&conv(&out, &self.c2, 1, k.winograd)?, Some(&self.shortcut(x)), &self.b2, true);
        }
        // In place where autograd allows it (BatchNorm's backward does not read its output):
        // less memory traffic, as torchvision's ResNets do.
        let out = c1.apply_t(&self.b1, train).relu_();
        let mut out = conv(&out, &self.c2, 1, k.winograd)?.apply_t(&self.b2, train);
        let _ = out.g_add_(&self.shortcut(x));
        Ok(out.relu_())
    }

    fn shortcut(&self, x: &Tensor) -> Tensor {
        option_a_shortcut(x, self.stride, self.pad)
    }

    /// Its two convolutions' products on an `h` x `w` input (updated to the output's size).
    fn ops(&self, h: &mut i64, w: &mut i64) -> Vec<Op> {
        vec![conv_op(&self.c1, self.stride, h, w), conv_op(&self.c2, 1, h, w)]
    }
}

/// A 3x3 padding-1 convolution's products on an `h` x `w` input (updated to the output's size).
fn conv_op(layer: &nn::Conv2D, stride: i64, h: &mut i64, w: &mut i64) -> Op {
    let s = layer.ws.size();
    (*h, *w) = (out_size(*h, s[2], stride, s[2] / 2), out_size(*w, s[3], stride, s[3] / 2));
    Op::conv(s[1], s[0], s[2], 1, *h, *w, layer.ws.requires_grad())
}

/// One of `conv3x3`'s layers: its stride-1 ones by Winograd when asked (the kernel itself hands
/// shapes it does not cover to libtorch).
fn conv(x: &Tensor, layer: &nn::Conv2D, stride: i64, winograd: bool) -> Result<Tensor> {
    if winograd && stride == 1 {
        winograd::conv3x3_train(x, &layer.ws)
    } else {
        Ok(x.apply(layer))
    }
}

/// Option A: subsampled by `stride`, `pad` zero channels added on each side.
fn option_a_shortcut(x: &Tensor, stride: i64, pad: i64) -> Tensor {
    if stride != 1 || pad != 0 {
        x.slice(2, 0, None, stride).slice(3, 0, None, stride).constant_pad_nd([0, 0, 0, 0, pad, pad])
    } else {
        x.shallow_clone()
    }
}

pub struct CifarResNet {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
    /// The blocks every expert shares.
    shared: Vec<BasicBlock>,
    /// Each expert's own blocks (one empty list for the single model).
    experts: Vec<Vec<BasicBlock>>,
    /// Channels after the last stage (per expert).
    width: i64,
    depth: usize,
    expert_spec: Experts,
    /// Our kernels, fixed when the network is built: the fused training BatchNorm, and the
    /// Winograd 3x3 stride-1 convolutions (in training and in the folded network).
    kernels: Kernels,
}

impl CifarResNet {
    pub fn new(vs: &nn::Path, depth: usize, in_channels: i64, kernels: Kernels, experts: Experts) -> Result<Self> {
        if depth < 8 || (depth - 2) % 6 != 0 {
            bail!("ResNet depth must be 6n + 2 (20, 32, 44, 56, 110, ...), got {depth}");
        }
        if in_channels != 1 && in_channels != 3 {
            bail!("images must have 1 or 3 channels, got {in_channels}");
        }
        let n = (depth - 2) / 6;
        let stages = [(16, 1), (32, 2), (64, 2)];
        let (mut shared, mut cin) = (Vec::new(), 16);
        let mut own: Vec<Vec<BasicBlock>> = (0..experts.count).map(|_| Vec::new()).collect();
        let mut width = 16;
        for (s, (full, stride)) in stages.into_iter().enumerate() {
            if !experts.owns(s, stages.len()) {
                for i in 0..n {
                    shared.push(BasicBlock::new(&(vs / format!("layer{}", s + 1) / i), cin, full, if i == 0 { stride } else { 1 }));
                    cin = full;
                }
                width = full;
                continue;
            }
            let cout = experts.channels(full);
            if cout < width {
                bail!("model.expert_width = {}: layer{} would have {cout} channels, fewer than the {width} before it (the CIFAR ResNets' parameter-free shortcuts only widen)", experts.width, s + 1);
            }
            for (e, blocks) in own.iter_mut().enumerate() {
                for i in 0..n {
                    blocks.push(BasicBlock::new(&(vs / format!("layer{}s", s + 1) / e / i), if i == 0 { width } else { cout }, cout, if i == 0 { stride } else { 1 }));
                }
            }
            width = cout;
        }
        Ok(Self { conv: conv3x3(vs / "conv", in_channels, 16, 1), bn: bn(vs / "bn", 16), shared, experts: own, width, depth, expert_spec: experts, kernels })
    }
}

impl Backbone for CifarResNet {
    /// 64 channels after the last stage (per expert: the experts' width).
    fn feature_dim(&self) -> i64 {
        self.width * self.experts.len() as i64
    }

    fn experts(&self) -> usize {
        self.experts.len()
    }

    fn arch(&self) -> String {
        format!("cifar-resnet{}{}", self.depth, self.expert_spec.suffix())
    }

    fn features(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let k = Kernels { fused: train && self.kernels.fused, winograd: self.kernels.winograd };
        let mut h = if k.fused { bn_act(&x.apply(&self.conv), None, &self.bn, true)? } else { x.apply(&self.conv).apply_t(&self.bn, train).relu_() };
        for b in &self.shared {
            h = b.forward(&h, train, k)?;
        }
        super::run_experts(&h, &self.experts, |b, h| b.forward(h, train, k))
    }

    fn ops(&self, mut h: i64, mut w: i64) -> Vec<Op> {
        let mut ops = vec![conv_op(&self.conv, 1, &mut h, &mut w)];
        ops.extend(self.shared.iter().flat_map(|b| b.ops(&mut h, &mut w)));
        ops.extend(super::expert_ops(h, w, &self.experts, |b, h, w| b.ops(h, w)));
        ops
    }

    /// Folds the current BatchNorm statistics into the convolutions.
    fn freeze(&self) -> Result<Box<dyn FrozenBackbone>> {
        let w = self.kernels.winograd;
        let fold = |blocks: &[BasicBlock]| -> Result<Vec<_>> {
            blocks.iter().map(|b| Ok((FoldedConv::new(&b.c1, &b.b1, b.stride, w)?, FoldedConv::new(&b.c2, &b.b2, 1, w)?, b.pad))).collect()
        };
        Ok(Box::new(FrozenResNet {
            stem: FoldedConv::new(&self.conv, &self.bn, 1, w)?,
            shared: fold(&self.shared)?,
            experts: self.experts.iter().map(|b| fold(b)).collect::<Result<_>>()?,
        }))
    }
}

/// A convolution's weights with its BatchNorm folded in: w' = w * g / sqrt(v + eps),
/// b' = beta - mean * g / sqrt(v + eps). Exact for BatchNorm on stored statistics.
pub(super) fn fold_batchnorm(conv: &nn::Conv2D, bn: &nn::BatchNorm) -> (Tensor, Tensor) {
    tch::no_grad(|| {
        let gamma = bn.ws.as_ref().map_or_else(|| bn.running_var.ones_like(), |w| w.detach());
        let beta = bn.bs.as_ref().map_or_else(|| bn.running_mean.zeros_like(), |b| b.detach());
        let scale = gamma / (&bn.running_var + BN_EPS).sqrt();
        (conv.ws.detach() * scale.view([-1, 1, 1, 1]), beta - &bn.running_mean * &scale)
    })
}

/// A convolution with its BatchNorm folded in (`fold_batchnorm`).
struct FoldedConv {
    w: Tensor,
    b: Tensor,
    stride: i64,
    /// Winograd-transformed weights, for the 3x3 stride-1 layers when `run.winograd` is on.
    u: Option<Tensor>,
}

impl FoldedConv {
    fn new(conv: &nn::Conv2D, bn: &nn::BatchNorm, stride: i64, winograd: bool) -> Result<Self> {
        let (w, b) = fold_batchnorm(conv, bn);
        // Only for layers the kernel takes (stride 1; it declines other shapes and devices).
        let u = if winograd && stride == 1 { tch::no_grad(|| winograd::transform_weights(&w))? } else { None };
        Ok(FoldedConv { w, b, stride, u })
    }

    /// `relu(conv(x) + residual)`, each part where asked for.
    fn forward(&self, x: &Tensor, residual: Option<&Tensor>, relu: bool) -> Result<Tensor> {
        if self.u.is_some() {
            return winograd::conv3x3(x, &self.w, self.u.as_ref(), &self.b, residual, relu);
        }
        let mut out = x.conv2d(&self.w, Some(&self.b), [self.stride, self.stride], [1, 1], [1, 1], 1);
        if let Some(r) = residual {
            let _ = out.g_add_(r);
        }
        Ok(if relu { out.relu_() } else { out })
    }
}

type FoldedBlock = (FoldedConv, FoldedConv, i64);

/// The backbone for inference on a frozen model (stage 2, evaluation): BatchNorm on its
/// stored statistics folded into the convolutions, half the ops of `features(x, false)`.
struct FrozenResNet {
    stem: FoldedConv,
    shared: Vec<FoldedBlock>,
    experts: Vec<Vec<FoldedBlock>>,
}

fn folded_block((c1, c2, pad): &FoldedBlock, h: &Tensor) -> Result<Tensor> {
    let out = c1.forward(h, None, true)?;
    c2.forward(&out, Some(&option_a_shortcut(h, c1.stride, *pad)), true)
}

impl FrozenBackbone for FrozenResNet {
    fn features(&self, x: &Tensor) -> Result<Tensor> {
        tch::no_grad(|| {
            let h = self.shared.iter().try_fold(self.stem.forward(x, None, true)?, |h, b| folded_block(b, &h))?;
            super::run_experts(&h, &self.experts, folded_block)
        })
    }
}
