//! One 3x3 layer of each ResNet stage (batch 64, channels-last fp32): libtorch's conv2d
//! (+ bias + ReLU) against the Winograd kernel, interleaved; medians in microseconds.
//! `cargo run --release --example winograd_timing`
use gcl::kernels::winograd::{conv3x3, transform_weights};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn main() {
    tch::set_num_threads(2);
    let _g = tch::no_grad_guard();
    let opts = (Kind::Float, Device::Cpu);
    for (c, hw) in [(16, 28), (32, 14), (64, 7)] {
        let x = gcl::kernels::layout::channels_last(&Tensor::randn([64, c, hw, hw], opts)).unwrap();
        let w = gcl::kernels::layout::channels_last(&(Tensor::randn([c, c, 3, 3], opts) * 0.1)).unwrap();
        let b = Tensor::randn([c], opts);
        let u = transform_weights(&w).unwrap();
        let mut t = [vec![], vec![]];
        for round in 0..30 {
            for (i, t) in t.iter_mut().enumerate() {
                let s = Instant::now();
                for _ in 0..10 {
                    let _ = if i == 0 { conv3x3(&x, &w, None, &b, None, true) } else { conv3x3(&x, &w, u.as_ref(), &b, None, true) };
                }
                if round > 2 {
                    t.push(s.elapsed().as_secs_f64() * 1e5);
                }
            }
        }
        let med = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (a, b) = (med(&mut t[0]), med(&mut t[1]));
        let gflop = 64.0 * (hw * hw * c * c * 9 * 2) as f64 / 1e9;
        println!("C {c:>2} {hw:>2}x{hw:<2}: libtorch {a:>6.0} us ({:.0} GFLOP/s), winograd {b:>6.0} us ({:.2}x)", gflop / a * 1e6, a / b);
    }
}
