//! Frozen-backbone forward (stage 2's and evaluation's cost): libtorch's convolutions against
//! the Winograd ones, at several batch sizes, interleaved window by window so that the
//! machine's drift hits all alike; prints medians.
//! `cargo run --release --example frozen_timing`
use gcl::model::{Classifier, HeadKind};
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

fn main() {
    tch::set_num_threads(2);
    let vs = nn::VarStore::new(Device::Cpu);
    let mut m = Classifier::new(&vs.root(), 32, 1, 10, HeadKind::Cosine).unwrap();
    let mut w: Vec<Tensor> = vs.variables().into_values().collect();
    gcl::precision::params_channels_last(&mut w);
    let x = gcl::precision::channels_last(&Tensor::randn([128, 1, 28, 28], (Kind::Float, Device::Cpu)));
    let mut variants = vec![];
    for winograd in [false, true] {
        for b in [32, 64, 128] {
            variants.push((format!("{} batch {b}", if winograd { "winograd" } else { "libtorch" }), winograd, b));
        }
    }
    let mut res: Vec<Vec<f64>> = vec![vec![]; variants.len()];
    for round in 0..12 {
        for (i, (_, winograd, b)) in variants.iter().enumerate() {
            m.backbone.winograd = *winograd;
            let f = m.backbone.fold();
            let t = Instant::now();
            for _ in 0..4 {
                for s in (0..128).step_by(*b as usize) {
                    let _ = f.features(&x.narrow(0, s, *b));
                }
            }
            if round > 0 {
                res[i].push(4.0 * 128.0 / t.elapsed().as_secs_f64());
            }
        }
    }
    for ((name, _, _), mut r) in variants.into_iter().zip(res) {
        r.sort_by(f64::total_cmp);
        println!("{name:>20}: {:.0} img/s (median of {})", r[r.len() / 2], r.len());
    }
}
