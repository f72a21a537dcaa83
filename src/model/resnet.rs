//! The CIFAR ResNet of He et al. (2016): 3 stages of BasicBlocks with 16/32/64 channels,
//! option-A (parameter-free) shortcuts, depth 6n + 2 (20, 32, 44, 56, 110).
use anyhow::{bail, Result};
use tch::nn::{self, ConvConfig, Init};
use tch::Tensor;

fn conv3x3(vs: nn::Path, cin: i64, cout: i64, stride: i64) -> nn::Conv2D {
    let cfg = ConvConfig { stride, padding: 1, bias: false, ws_init: nn::init::DEFAULT_KAIMING_NORMAL, ..Default::default() };
    nn::conv2d(vs, cin, cout, 3, cfg)
}

fn bn(vs: nn::Path, c: i64) -> nn::BatchNorm {
    // PyTorch's defaults: weight 1, bias 0 (tch would draw the weight uniformly).
    nn::batch_norm2d(vs, c, nn::BatchNormConfig { ws_init: Init::Const(1.0), ..Default::default() })
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

    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let out = x.apply(&self.c1).apply_t(&self.b1, train).relu();
        let out = out.apply(&self.c2).apply_t(&self.b2, train);
        let shortcut = if self.stride != 1 || self.pad != 0 {
            x.slice(2, 0, None, self.stride)
                .slice(3, 0, None, self.stride)
                .constant_pad_nd([0, 0, 0, 0, self.pad, self.pad])
        } else {
            x.shallow_clone()
        };
        (out + shortcut).relu()
    }
}

pub struct ResNet {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
    blocks: Vec<BasicBlock>,
    depth: usize,
}

impl ResNet {
    pub fn new(vs: &nn::Path, depth: usize, in_channels: i64) -> Result<Self> {
        if depth < 8 || (depth - 2) % 6 != 0 {
            bail!("ResNet depth must be 6n + 2 (20, 32, 44, 56, 110, ...), got {depth}");
        }
        if in_channels != 1 && in_channels != 3 {
            bail!("images must have 1 or 3 channels, got {in_channels}");
        }
        let n = (depth - 2) / 6;
        let mut blocks = Vec::new();
        let mut cin = 16;
        for (stage, (cout, stride)) in [(16, 1), (32, 2), (64, 2)].into_iter().enumerate() {
            for i in 0..n {
                let vs = vs / format!("layer{}", stage + 1) / i;
                blocks.push(BasicBlock::new(&vs, cin, cout, if i == 0 { stride } else { 1 }));
                cin = cout;
            }
        }
        Ok(Self { conv: conv3x3(vs / "conv", in_channels, 16, 1), bn: bn(vs / "bn", 16), blocks, depth })
    }

    pub fn feature_dim(&self) -> i64 {
        64
    }

    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Pooled 64-d features. `train` selects BatchNorm's batch statistics (and updates the
    /// running ones); with `train = false` the stored statistics are used and left alone.
    pub fn features(&self, x: &Tensor, train: bool) -> Tensor {
        let mut h = x.apply(&self.conv).apply_t(&self.bn, train).relu();
        for b in &self.blocks {
            h = b.forward(&h, train);
        }
        h.adaptive_avg_pool2d([1, 1]).flatten(1, -1)
    }
}
