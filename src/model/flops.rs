//! A network's arithmetic, counted from its layers: the multiply-adds of each convolution and
//! matrix product per image, forward and backward, so that a speed can be said as GFLOP/s and
//! as a fraction of what the machine can do.
//!
//! Counted: convolutions, linear maps and the attention's two activation products (QK^T and
//! AV). Not counted: BatchNorm, LayerNorm, activations, pooling, the optimiser (linear in the
//! activations or weights, a few percent of the products). One multiply-add is 2 FLOPs. The
//! count is the direct algorithm's, whatever algorithm runs: a Winograd layer does 2.25x fewer
//! products for the same count (the usual "effective" FLOP rate).
//!
//! Backward, per layer in forward order: the weights' gradient costs one forward's products
//! where the weights train; the input's gradient costs one forward's products (two for a
//! product of two activations) where anything before the layer trains, since only then does
//! the gradient have to go further back.

/// One layer's products per image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Op {
    /// Multiply-adds per image.
    pub macs: f64,
    /// Inputs the backward differentiates: 1 for a layer with weights, 2 for a product of two
    /// activations (attention).
    pub operands: u8,
    /// Its weights train: their gradient is computed.
    pub weight_trains: bool,
    /// Some parameter of it trains (its weights, or a bias, scale or prompt alone): the
    /// layers after it pass the gradient back.
    pub trains: bool,
}

impl Op {
    /// A convolution (or a linear map, `k` = 1, 1 x 1 output) with weights [cout, cin / groups,
    /// k, k] producing an `h` x `w` output.
    pub fn conv(cin: i64, cout: i64, k: i64, groups: i64, h: i64, w: i64, weight_trains: bool) -> Op {
        Op { macs: (cin / groups * cout * k * k * h * w) as f64, operands: 1, weight_trains, trains: weight_trains }
    }
    /// `tokens` rows through a `din` x `dout` linear map.
    pub fn linear(tokens: i64, din: i64, dout: i64, weight_trains: bool) -> Op {
        Op { macs: (tokens * din * dout) as f64, operands: 1, weight_trains, trains: weight_trains }
    }
    /// A product of two activations with this many multiply-adds (attention's QK^T, AV).
    pub fn activations(macs: i64) -> Op {
        Op { macs: macs as f64, operands: 2, weight_trains: false, trains: false }
    }
    /// No products, but parameters that train here (a bias, a scale, prompt tokens).
    pub fn trains_here(on: bool) -> Op {
        Op { macs: 0.0, operands: 0, weight_trains: false, trains: on }
    }
}

/// FLOPs per image of one pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Cost {
    pub forward: f64,
    pub backward: f64,
}

impl Cost {
    pub fn total(&self) -> f64 {
        self.forward + self.backward
    }
}

/// FLOPs per image of gcl's three phases: stage 1 (the network trains as set), stage 2 (the
/// frozen backbone's forward, the heads train), evaluation (the forward alone).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Phases {
    pub stage1: Cost,
    pub stage2: Cost,
    pub eval: Cost,
}

impl Phases {
    /// From the backbone's and the heads' products on training images, and the whole
    /// network's on evaluation images.
    pub fn new(backbone: &[Op], heads: &[Op], eval: &[Op]) -> Phases {
        let stage2: Vec<Op> = frozen(backbone).into_iter().chain(heads.iter().copied()).collect();
        Phases { stage1: cost(&[backbone, heads].concat()), stage2: cost(&stage2), eval: Cost { forward: cost(eval).forward, backward: 0.0 } }
    }
}

/// The forward and backward FLOPs per image of `ops`, in forward order (see the module's rule).
pub fn cost(ops: &[Op]) -> Cost {
    let (mut c, mut upstream) = (Cost::default(), false);
    for op in ops {
        c.forward += 2.0 * op.macs;
        if upstream {
            c.backward += 2.0 * op.macs * op.operands as f64;
        }
        if op.weight_trains {
            c.backward += 2.0 * op.macs;
        }
        upstream |= op.trains;
    }
    c
}

/// The same layers with nothing trained (a frozen backbone, evaluation).
pub fn frozen(ops: &[Op]) -> Vec<Op> {
    ops.iter().map(|o| Op { weight_trains: false, trains: false, ..*o }).collect()
}

/// Output side of a convolution: input `n`, kernel `k`, `stride`, `padding`.
pub fn out_size(n: i64, k: i64, stride: i64, padding: i64) -> i64 {
    (n + 2 * padding - k) / stride + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trained_chain_costs_twice_its_forward_backward_but_its_first_input_gradient() {
        // Two layers, both trained: backward = weight grads of both + input grad of the second.
        let ops = [Op::linear(1, 10, 20, true), Op::linear(1, 20, 5, true)];
        let c = cost(&ops);
        assert_eq!(c.forward, 2.0 * (200.0 + 100.0));
        assert_eq!(c.backward, 2.0 * (200.0 + 100.0 + 100.0));
    }

    #[test]
    fn a_frozen_backbone_under_a_trained_head_costs_only_the_heads_weight_gradient() {
        let mut ops = frozen(&[Op::conv(3, 16, 3, 1, 32, 32, true), Op::conv(16, 16, 3, 1, 32, 32, true)]);
        ops.push(Op::linear(1, 16, 10, true));
        let c = cost(&ops);
        assert_eq!(c.backward, 2.0 * 160.0);
    }

    #[test]
    fn a_trained_bias_sends_the_gradient_through_every_later_layer_and_attention_counts_both_operands() {
        let ops = [Op::trains_here(true), Op::linear(4, 8, 8, false), Op::activations(4 * 4 * 8)];
        let c = cost(&ops);
        assert_eq!(c.forward, 2.0 * (256.0 + 128.0));
        assert_eq!(c.backward, 2.0 * (256.0 + 2.0 * 128.0));
    }

    #[test]
    fn output_sizes_follow_the_convolution_arithmetic() {
        assert_eq!(out_size(224, 7, 2, 3), 112);
        assert_eq!(out_size(112, 3, 2, 1), 56);
        assert_eq!(out_size(32, 3, 1, 1), 32);
        assert_eq!(out_size(28, 3, 2, 1), 14);
    }
}
