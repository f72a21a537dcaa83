//! Times training-mode BatchNorm + add + ReLU, forward and backward, at the activation
//! shapes of ResNet-32 on 28x28 images (batch 64): the fused op (csrc/bn_act.cpp) against
//! libtorch's ops. `cargo run --release --example bn_act_timing [bf16]`
use gcl::kernels::bn_act::bn_act;
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

fn main() {
    let kind = if std::env::args().any(|a| a == "bf16") { Kind::BFloat16 } else { Kind::Float };
    tch::set_num_threads(2);
    for &(c, hw) in &[(16i64, 28i64), (32, 14), (64, 7)] {
        let vs = nn::VarStore::new(Device::Cpu);
        let bn = nn::batch_norm2d(vs.root(), c, Default::default());
        let cl = |t: Tensor| gcl::kernels::layout::channels_last(&t.to_kind(kind)).unwrap();
        let x = cl(Tensor::randn([64, c, hw, hw], (Kind::Float, Device::Cpu))).set_requires_grad(true);
        let r = cl(Tensor::randn([64, c, hw, hw], (Kind::Float, Device::Cpu)));
        let g = cl(Tensor::randn([64, c, hw, hw], (Kind::Float, Device::Cpu)));
        for fused in [false, true] {
            let forward = |res: bool| {
                if fused {
                    bn_act(&x, res.then_some(&r), &bn, true).unwrap()
                } else {
                    let mut y = x.apply_t(&bn, true);
                    if res {
                        y = y + &r;
                    }
                    y.relu_()
                }
            };
            let step = |res: bool| {
                let y = forward(res);
                // The same upstream product and sum in both arms.
                let _ = Tensor::run_backward(&[(&y * &g).sum(Kind::Float)], &[&x], false, false);
            };
            for res in [false, true] {
                let n = 100;
                let t = Instant::now();
                tch::no_grad(|| {
                    for _ in 0..n {
                        let _ = forward(res);
                    }
                });
                let fwd = t.elapsed().as_secs_f64() * 1e6 / n as f64;
                for _ in 0..5 {
                    step(res);
                }
                let n = 100;
                let t = Instant::now();
                for _ in 0..n {
                    step(res);
                }
                let us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
                println!("{kind:?} C={c:>2} {hw:>2}x{hw:<2} residual={res:<5} {}: forward {fwd:7.1} us, forward + backward {us:7.1} us", if fused { "fused " } else { "libtorch" });
            }
        }
    }
}
