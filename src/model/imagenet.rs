//! The ImageNet ResNets of He et al. (2016) and ResNeXt (Xie et al., 2017), laid out and
//! named as torchvision's `models/resnet.py`: `conv1`, `bn1`, `layer1.0.conv1`,
//! `layer1.0.downsample.0`, ..., so that torchvision state dicts load as they are and ours
//! load into torchvision. ResNet-10 is not in torchvision: it is its BasicBlock network with
//! layers [1, 1, 1, 1] (as in the long-tail codebases, e.g. classifier-balancing).
//!
//! Partial fine-tuning: the modules up to `model.freeze_through` (in forward order) have no
//! gradients and run BatchNorm on their stored statistics, in training too.
//!
//! With experts (RIDE's `RIDEResNet`): each expert has the last stages of its own
//! (`layer3s.E.B`, `layer4s.E.B`) at the experts' width; the stem and first stages are shared.
use super::flops::{out_size, Op};
use super::{Backbone, Experts, FrozenBackbone};
use crate::kernels::bn_act::{bn_act, BN_EPS, BN_MOMENTUM};
use crate::kernels::{winograd, Kernels};
use anyhow::{bail, Result};
use tch::nn::{self, ConvConfig, Init};
use tch::Tensor;

/// The architectures (`name()`: torchvision's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    ResNet10,
    ResNet18,
    ResNet34,
    ResNet50,
    ResNet101,
    ResNet152,
    ResNeXt50,
}

impl Arch {
    pub const ALL: [Arch; 7] = [Arch::ResNet10, Arch::ResNet18, Arch::ResNet34, Arch::ResNet50, Arch::ResNet101, Arch::ResNet152, Arch::ResNeXt50];

    pub fn name(self) -> &'static str {
        match self {
            Arch::ResNet10 => "resnet10",
            Arch::ResNet18 => "resnet18",
            Arch::ResNet34 => "resnet34",
            Arch::ResNet50 => "resnet50",
            Arch::ResNet101 => "resnet101",
            Arch::ResNet152 => "resnet152",
            Arch::ResNeXt50 => "resnext50_32x4d",
        }
    }
    pub fn from_name(name: &str) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.name() == name)
    }
    /// (bottleneck blocks?, blocks per stage, groups, width per group)
    fn spec(self) -> (bool, [usize; 4], i64, i64) {
        match self {
            Arch::ResNet10 => (false, [1, 1, 1, 1], 1, 64),
            Arch::ResNet18 => (false, [2, 2, 2, 2], 1, 64),
            Arch::ResNet34 => (false, [3, 4, 6, 3], 1, 64),
            Arch::ResNet50 => (true, [3, 4, 6, 3], 1, 64),
            Arch::ResNet101 => (true, [3, 4, 23, 3], 1, 64),
            Arch::ResNet152 => (true, [3, 8, 36, 3], 1, 64),
            Arch::ResNeXt50 => (true, [3, 4, 6, 3], 32, 4),
        }
    }
    /// Feature width after the last stage: 512 x expansion.
    pub fn feature_dim(self) -> i64 {
        if self.spec().0 {
            2048
        } else {
            512
        }
    }
    /// The module names in forward order: `stem` (conv1, bn1), then `layerS.B`.
    pub fn modules(self) -> Vec<String> {
        let mut v = vec!["stem".to_string()];
        for (s, &n) in self.spec().1.iter().enumerate() {
            v.extend((0..n).map(|b| format!("layer{}.{b}", s + 1)));
        }
        v
    }
    /// The last module a `freeze_through` / `reinit` name stands for: `stem`, `layerS`
    /// (the whole stage) or `layerS.B`; None when the network has no such module.
    pub fn resolve(self, name: &str) -> Option<usize> {
        let mods = self.modules();
        if let Some(i) = mods.iter().position(|m| m == name) {
            return Some(i);
        }
        let prefix = format!("{name}.");
        mods.iter().rposition(|m| m.starts_with(&prefix))
    }
}

/// A convolution without bias and its BatchNorm, as torchvision pairs them.
struct ConvBn {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
    stride: i64,
    padding: i64,
    groups: i64,
}

fn conv_bn(conv_vs: nn::Path, bn_vs: nn::Path, cin: i64, cout: i64, k: i64, stride: i64, groups: i64) -> ConvBn {
    // torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu"); BatchNorm weight 1, bias 0.
    let ws_init = Init::Kaiming { dist: nn::init::NormalOrUniform::Normal, fan: nn::init::FanInOut::FanOut, non_linearity: nn::init::NonLinearity::ReLU };
    let padding = k / 2;
    let conv = nn::conv2d(conv_vs, cin, cout, k, ConvConfig { stride, padding, groups, bias: false, ws_init, ..Default::default() });
    let bn = nn::batch_norm2d(bn_vs, cout, nn::BatchNormConfig { ws_init: Init::Const(1.0), momentum: BN_MOMENTUM, eps: BN_EPS, ..Default::default() });
    ConvBn { conv, bn, stride, padding, groups }
}

impl ConvBn {
    /// Whether Winograd's F(2x2, 3x3) can compute it (3x3, stride 1, not grouped; the kernel
    /// itself declines other widths and devices).
    fn winograd_shape(&self) -> bool {
        self.conv.ws.size()[2..] == [3, 3] && self.stride == 1 && self.groups == 1
    }

    /// `relu(bn(conv(x)) + residual)`, the ReLU when asked; `k`: our kernels to use.
    fn forward(&self, x: &Tensor, residual: Option<&Tensor>, relu: bool, train: bool, k: Kernels) -> Result<Tensor> {
        let y = if k.winograd && self.winograd_shape() { winograd::conv3x3_train(x, &self.conv.ws)? } else { x.apply(&self.conv) };
        if train && k.fused {
            return bn_act(&y, residual, &self.bn, relu);
        }
        let mut y = y.apply_t(&self.bn, train);
        if let Some(r) = residual {
            let _ = y.g_add_(r);
        }
        Ok(if relu { y.relu_() } else { y })
    }

    /// Its products on an `h` x `w` input (updated to the output's size).
    fn op(&self, h: &mut i64, w: &mut i64) -> Op {
        let s = self.conv.ws.size();
        (*h, *w) = (out_size(*h, s[2], self.stride, self.padding), out_size(*w, s[3], self.stride, self.padding));
        Op::conv(s[1] * self.groups, s[0], s[2], self.groups, *h, *w, self.conv.ws.requires_grad())
    }

    fn fold(&self, winograd: bool) -> Result<Folded> {
        let (w, b) = super::resnet::fold_batchnorm(&self.conv, &self.bn);
        let u = if winograd && self.winograd_shape() { tch::no_grad(|| winograd::transform_weights(&w))? } else { None };
        Ok(Folded { w, b, stride: self.stride, padding: self.padding, groups: self.groups, u })
    }

    fn set_trainable(&self, on: bool) {
        for t in [Some(&self.conv.ws), self.bn.ws.as_ref(), self.bn.bs.as_ref()].into_iter().flatten() {
            let _ = t.set_requires_grad(on);
        }
    }
}

/// A convolution with its BatchNorm folded in (exact on stored statistics).
struct Folded {
    w: Tensor,
    b: Tensor,
    stride: i64,
    padding: i64,
    groups: i64,
    /// Winograd-transformed weights, for the 3x3 stride-1 layers when `run.winograd` is on.
    u: Option<Tensor>,
}

impl Folded {
    fn forward(&self, x: &Tensor, residual: Option<&Tensor>, relu: bool) -> Result<Tensor> {
        if self.u.is_some() {
            return winograd::conv3x3(x, &self.w, self.u.as_ref(), &self.b, residual, relu);
        }
        let s = [self.stride, self.stride];
        let mut y = x.conv2d(&self.w, Some(&self.b), s, [self.padding, self.padding], [1, 1], self.groups);
        if let Some(r) = residual {
            let _ = y.g_add_(r);
        }
        Ok(if relu { y.relu_() } else { y })
    }
}

/// BasicBlock (two 3x3) or Bottleneck (1x1, grouped 3x3 carrying the stride, 1x1 x4).
struct Block {
    convs: Vec<ConvBn>,
    downsample: Option<ConvBn>,
}

impl Block {
    fn forward(&self, x: &Tensor, train: bool, k: Kernels) -> Result<Tensor> {
        let identity = match &self.downsample {
            Some(d) => d.forward(x, None, false, train, k)?,
            None => x.shallow_clone(),
        };
        let last = self.convs.len() - 1;
        let mut h = x.shallow_clone();
        for (i, c) in self.convs.iter().enumerate() {
            h = c.forward(&h, (i == last).then_some(&identity), true, train, k)?;
        }
        Ok(h)
    }
    fn ops(&self, h: &mut i64, w: &mut i64) -> Vec<Op> {
        let mut ops: Vec<Op> = self.downsample.iter().map(|d| d.op(&mut h.clone(), &mut w.clone())).collect();
        ops.extend(self.convs.iter().map(|c| c.op(h, w)));
        ops
    }
    fn fold(&self, winograd: bool) -> Result<FoldedBlock> {
        Ok(FoldedBlock { convs: self.convs.iter().map(|c| c.fold(winograd)).collect::<Result<_>>()?, downsample: self.downsample.as_ref().map(|d| d.fold(winograd)).transpose()? })
    }
    fn set_trainable(&self, on: bool) {
        self.convs.iter().chain(&self.downsample).for_each(|c| c.set_trainable(on));
    }
}

struct FoldedBlock {
    convs: Vec<Folded>,
    downsample: Option<Folded>,
}

impl FoldedBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let identity = match &self.downsample {
            Some(d) => d.forward(x, None, false)?,
            None => x.shallow_clone(),
        };
        let last = self.convs.len() - 1;
        let mut h = x.shallow_clone();
        for (i, c) in self.convs.iter().enumerate() {
            h = c.forward(&h, (i == last).then_some(&identity), true)?;
        }
        Ok(h)
    }
}

pub struct ResNet {
    arch: Arch,
    stem: ConvBn,
    /// The blocks every expert shares.
    blocks: Vec<Block>,
    /// Each expert's own blocks (one empty list for the single model).
    experts: Vec<Vec<Block>>,
    /// Channels after the last stage (per expert).
    width: i64,
    expert_spec: Experts,
    /// Modules (stem = 0, then the shared blocks) below this index are frozen.
    frozen: usize,
    kernels: Kernels,
}

impl ResNet {
    /// The network with torchvision's initialisation, its variables under `vs` with
    /// torchvision's names.
    pub fn new(vs: &nn::Path, arch: Arch, in_channels: i64, kernels: Kernels, experts: Experts) -> Result<Self> {
        if in_channels != 1 && in_channels != 3 {
            bail!("images must have 1 or 3 channels, got {in_channels}");
        }
        let (bottleneck, layers, groups, width_per_group) = arch.spec();
        let expansion = if bottleneck { 4 } else { 1 };
        let stem = conv_bn(vs / "conv1", vs / "bn1", in_channels, 64, 7, 2, 1);
        // One stage's blocks under `p`, from `cin` channels; returns them and their output width.
        let stage = |p: nn::Path, s: usize, planes: i64, mut cin: i64| {
            let mut blocks = Vec::new();
            let cout = planes * expansion;
            for b in 0..layers[s] {
                let stride = if s > 0 && b == 0 { 2 } else { 1 };
                let p = &p / b;
                let downsample = (stride != 1 || cin != cout).then(|| conv_bn(&p / "downsample" / 0, &p / "downsample" / 1, cin, cout, 1, stride, 1));
                let convs = if bottleneck {
                    let width = planes * width_per_group / 64 * groups;
                    vec![
                        conv_bn(&p / "conv1", &p / "bn1", cin, width, 1, 1, 1),
                        conv_bn(&p / "conv2", &p / "bn2", width, width, 3, stride, groups),
                        conv_bn(&p / "conv3", &p / "bn3", width, cout, 1, 1, 1),
                    ]
                } else {
                    vec![conv_bn(&p / "conv1", &p / "bn1", cin, planes, 3, stride, 1), conv_bn(&p / "conv2", &p / "bn2", planes, planes, 3, 1, 1)]
                };
                blocks.push(Block { convs, downsample });
                cin = cout;
            }
            (blocks, cout)
        };
        let (mut blocks, mut own, mut cin) = (Vec::new(), (0..experts.count).map(|_| Vec::new()).collect::<Vec<Vec<Block>>>(), 64);
        for s in 0..4 {
            if experts.owns(s, 4) {
                let planes = experts.channels(64 << s);
                if groups > 1 && (planes * width_per_group / 64 * groups) % groups != 0 {
                    bail!("model.expert_width = {}: layer{} would have {planes} planes, which {} cannot split into {groups} groups", experts.width, s + 1, arch.name());
                }
                let mut out = cin;
                for (e, blocks) in own.iter_mut().enumerate() {
                    let (b, w) = stage(vs / format!("layer{}s", s + 1) / e, s, planes, cin);
                    blocks.extend(b);
                    out = w;
                }
                cin = out;
            } else {
                let (b, w) = stage(vs / format!("layer{}", s + 1), s, 64 << s, cin);
                blocks.extend(b);
                cin = w;
            }
        }
        Ok(Self { arch, stem, blocks, experts: own, width: cin, expert_spec: experts, frozen: 0, kernels })
    }
}

impl Backbone for ResNet {
    /// Freezes the modules up to and including `through` (`stem`, `layerS`, `layerS.B`):
    /// no gradients, BatchNorm on stored statistics.
    fn freeze_through(&mut self, through: &str) -> Result<()> {
        let Some(last) = self.arch.resolve(through) else {
            bail!("model.freeze_through = \"{through}\": {} has no such module (it has stem, layer1 .. layer4 and their blocks, e.g. layer4.1)", self.arch.name());
        };
        if last > self.blocks.len() {
            bail!("model.freeze_through = \"{through}\": that module is one of the experts' own; with model.experts > 1 only the shared modules (stem .. layer{}) can be frozen", 4 - self.expert_spec.stages);
        }
        self.frozen = last + 1;
        self.stem.set_trainable(self.frozen == 0);
        for (i, b) in self.blocks.iter().enumerate() {
            b.set_trainable(i + 1 >= self.frozen);
        }
        Ok(())
    }

    fn feature_dim(&self) -> i64 {
        self.width * self.experts.len() as i64
    }

    fn experts(&self) -> usize {
        self.experts.len()
    }

    fn arch(&self) -> String {
        format!("{}{}", self.arch.name(), self.expert_spec.suffix())
    }

    fn features(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let k = Kernels { fused: train && self.kernels.fused, winograd: self.kernels.winograd };
        // The frozen modules: stored statistics, no gradient.
        let still = Kernels { fused: false, ..k };
        let frozen_part = |i: usize| i < self.frozen;
        let stem = |x: &Tensor, train: bool, k: Kernels| -> Result<Tensor> { Ok(self.stem.forward(x, None, true, train, k)?.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false)) };
        let mut h = if frozen_part(0) { tch::no_grad(|| stem(x, false, still))? } else { stem(x, train, k)? };
        for (i, b) in self.blocks.iter().enumerate() {
            h = if frozen_part(i + 1) { tch::no_grad(|| b.forward(&h, false, still))? } else { b.forward(&h, train, k)? };
        }
        super::run_experts(&h, &self.experts, |b, h| b.forward(h, train, k))
    }

    fn ops(&self, mut h: i64, mut w: i64) -> Vec<Op> {
        let mut ops = vec![self.stem.op(&mut h, &mut w)];
        (h, w) = (out_size(h, 3, 2, 1), out_size(w, 3, 2, 1)); // the max-pool
        ops.extend(self.blocks.iter().flat_map(|b| b.ops(&mut h, &mut w)));
        ops.extend(super::expert_ops(h, w, &self.experts, |b, h, w| b.ops(h, w)));
        ops
    }

    fn freeze(&self) -> Result<Box<dyn FrozenBackbone>> {
        let w = self.kernels.winograd;
        Ok(Box::new(FrozenResNet {
            stem: self.stem.fold(w)?,
            blocks: self.blocks.iter().map(|b| b.fold(w)).collect::<Result<_>>()?,
            experts: self.experts.iter().map(|e| e.iter().map(|b| b.fold(w)).collect::<Result<_>>()).collect::<Result<_>>()?,
        }))
    }
}

/// Inference form: every BatchNorm folded into its convolution.
struct FrozenResNet {
    stem: Folded,
    blocks: Vec<FoldedBlock>,
    experts: Vec<Vec<FoldedBlock>>,
}

impl FrozenBackbone for FrozenResNet {
    fn features(&self, x: &Tensor) -> Result<Tensor> {
        tch::no_grad(|| {
            let mut h = self.stem.forward(x, None, true)?.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
            for b in &self.blocks {
                h = b.forward(&h)?;
            }
            super::run_experts(&h, &self.experts, |b, h| b.forward(h))
        })
    }
}
