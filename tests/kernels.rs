//! Our C++ kernels against libtorch: the fused training BatchNorm, the Winograd convolutions,
//! BatchNorm folding, and a whole training step with them. The Winograd kernel has an AVX-512
//! and an AVX2 path: each is tested where the CPU has it (the AVX2 one on AVX-512 CPUs too,
//! by capping the ISA) and skipped, with the reason, where it lacks it.
mod common;
use common::*;
use gcl::kernels::bn_act::bn_act;
use gcl::kernels::winograd::{conv3x3, conv3x3_train, transform_weights};
use gcl::kernels::{cap_isa, isa, Isa, Kernels};
use gcl::model::HeadKind;
use rand::SeedableRng;
use tch::{nn, Device, Kind, Tensor};

const ALL: Kernels = Kernels { fused: true, winograd: true };

#[test]
fn folded_batchnorm_gives_the_same_features_as_the_frozen_network() {
    let vs = nn::VarStore::new(Device::Cpu);
    let m = classifier(&vs, 20, 3, 10, HeadKind::Cosine, Kernels::NONE).unwrap();
    // Non-trivial BatchNorm statistics and affine parameters.
    for _ in 0..3 {
        let _ = m.forward(&(Tensor::randn([16, 3, 32, 32], (Kind::Float, Device::Cpu)) * 2.0 + 0.5), true).unwrap();
    }
    tch::no_grad(|| {
        for (name, mut t) in vs.variables() {
            if name.ends_with("b1.weight") || name.ends_with("b2.bias") {
                let _ = t.copy_(&(t.rand_like() + 0.5));
            }
        }
    });
    let x = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu));
    let plain = tch::no_grad(|| m.backbone.features(&x, false)).unwrap();
    // Folded with libtorch's convolutions, then with the Winograd ones where this CPU has
    // them (and channels-last input, as training feeds it).
    for kernels in [Kernels::NONE, ALL] {
        let mut vs2 = nn::VarStore::new(Device::Cpu);
        let m2 = classifier(&vs2, 20, 3, 10, HeadKind::Cosine, kernels).unwrap();
        vs2.copy(&vs).unwrap();
        for x in [x.shallow_clone(), cl(&x)] {
            let folded = m2.backbone.freeze().unwrap().features(&x).unwrap();
            assert!(folded.allclose(&plain, 1e-4, 1e-4, false), "{kernels:?}: max diff {}", (folded - &plain).abs().max().double_value(&[]));
        }
    }
}

/// Runs `check` with our kernels capped at `isa` (tests that cap it run one at a time; the
/// others see either path, which give the same results).
fn at_isa(isa: Isa, check: impl FnOnce()) {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    assert_eq!(cap_isa(isa), isa, "this CPU lacks {isa:?}");
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(check));
    cap_isa(Isa::Avx512);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

#[test]
#[cfg_attr(not(gcl_avx512), ignore = "this CPU lacks AVX-512, the path under test")]
fn winograd_convolution_avx512_equals_libtorch_conv2d_with_bias_residual_relu_and_gradients() {
    at_isa(Isa::Avx512, winograd_equals_libtorch);
}

#[test]
#[cfg_attr(not(gcl_avx2), ignore = "this CPU lacks AVX2 with FMA, the path under test")]
fn winograd_convolution_avx2_equals_libtorch_conv2d_with_bias_residual_relu_and_gradients() {
    at_isa(Isa::Avx2, winograd_equals_libtorch);
}

fn winograd_equals_libtorch() {
    assert!(transform_weights(&Tensor::zeros([16, 16, 3, 3], (Kind::Float, Device::Cpu))).unwrap().is_some(), "{:?} is here, but the kernel declined", isa());
    let opts = (Kind::Float, Device::Cpu);
    // Widths of the CIFAR ResNets' three stages and the ImageNet ones' four; even, odd, tiny and
    // non-square images; one image and many.
    for (c, n, h, w) in [(16, 3, 28, 28), (32, 2, 14, 14), (64, 5, 7, 7), (16, 1, 5, 9), (32, 4, 1, 1), (64, 1, 2, 3), (16, 70, 8, 8), (128, 2, 14, 14), (256, 3, 7, 7), (512, 2, 7, 7), (512, 1, 3, 2)] {
        let x = Tensor::randn([n, c, h, w], opts) * 3.0;
        let wt = Tensor::randn([c, c, 3, 3], opts) * 0.2;
        let b = Tensor::randn([c], opts);
        let r = Tensor::randn([n, c, h, w], opts);
        let u = transform_weights(&wt).unwrap();
        for (x, r) in [(x.shallow_clone(), r.shallow_clone()), (cl(&x), cl(&r))] {
            for (residual, relu) in [(false, false), (true, false), (false, true), (true, true)] {
                let mut want = x.conv2d(&wt, Some(&b), [1, 1], [1, 1], [1, 1], 1);
                if residual {
                    want += &r;
                }
                if relu {
                    want = want.relu();
                }
                let got = tch::no_grad(|| conv3x3(&x, &wt, u.as_ref(), &b, residual.then_some(&r), relu)).unwrap();
                assert_eq!(got.size(), want.size());
                let d = rel_diff(&got, &want);
                assert!(d < 1e-5, "C {c}, {n}x{h}x{w}, residual {residual}, relu {relu}: relative max difference {d}");
            }
        }
    }
    // The training form: the same forward and gradients.
    // Odd and even sizes, many tiles (several blocks and threads), every width the kernel takes
    // in training.
    for (c, n, hw) in [(16, 2, 9), (16, 40, 28), (32, 3, 14), (64, 3, 7), (128, 2, 10), (256, 2, 6)] {
        let x = cl(&Tensor::randn([n, c, hw, hw], opts)).set_requires_grad(true);
        let wt = (Tensor::randn([c, c, 3, 3], opts) * 0.2).set_requires_grad(true);
        let dy = Tensor::randn([n, c, hw, hw], opts);
        let got = conv3x3_train(&x, &wt).unwrap();
        let want = x.conv2d::<Tensor>(&wt, None, [1, 1], [1, 1], [1, 1], 1);
        assert!(rel_diff(&got, &want) < 1e-5, "training forward off by {}", rel_diff(&got, &want));
        let g = Tensor::run_backward(&[(&got * &dy).sum(Kind::Float)], &[&x, &wt], false, false);
        let w = Tensor::run_backward(&[(&want * &dy).sum(Kind::Float)], &[&x, &wt], false, false);
        // Both gradients by Winograd too, equal to rounding.
        assert!(rel_diff(&g[0], &w[0]) < 1e-5, "C {c}: input gradient off by {}", rel_diff(&g[0], &w[0]));
        assert!(rel_diff(&g[1], &w[1]) < 1e-5, "C {c}: weight gradient off by {}", rel_diff(&g[1], &w[1]));
    }
    // Shapes the kernel does not cover (unequal or other widths) go to libtorch, same result.
    for (cin, cout) in [(16, 32), (8, 8), (96, 96)] {
        let x = Tensor::randn([2, cin, 6, 6], opts);
        let wt = Tensor::randn([cout, cin, 3, 3], opts);
        let b = Tensor::randn([cout], opts);
        assert!(transform_weights(&wt).unwrap().is_none(), "{cin} -> {cout} channels: the kernel should decline");
        let got = tch::no_grad(|| conv3x3(&x, &wt, None, &b, None, true)).unwrap();
        let want = x.conv2d(&wt, Some(&b), [1, 1], [1, 1], [1, 1], 1).relu();
        assert!(rel_diff(&got, &want) < 1e-6);
    }
}

#[test]
#[cfg_attr(not(gcl_avx512), ignore = "this CPU lacks AVX-512, the path under test")]
fn a_nan_input_stays_nan_through_the_avx512_winograd_convolution() {
    at_isa(Isa::Avx512, nan_stays_nan);
}

#[test]
#[cfg_attr(not(gcl_avx2), ignore = "this CPU lacks AVX2 with FMA, the path under test")]
fn a_nan_input_stays_nan_through_the_avx2_winograd_convolution() {
    at_isa(Isa::Avx2, nan_stays_nan);
}

#[test]
fn without_avx2_the_winograd_kernel_declines_and_libtorch_convolves() {
    at_isa(Isa::Scalar, || {
        let opts = (Kind::Float, Device::Cpu);
        let wt = Tensor::randn([16, 16, 3, 3], opts);
        assert!(transform_weights(&wt).unwrap().is_none(), "the kernel took the weights without AVX2");
        let x = Tensor::randn([2, 16, 6, 6], opts);
        let got = tch::no_grad(|| conv3x3(&x, &wt, None, &Tensor::zeros([16], opts), None, true)).unwrap();
        assert!(rel_diff(&got, &x.conv2d::<Tensor>(&wt, None, [1, 1], [1, 1], [1, 1], 1).relu()) < 1e-6);
        assert!(!gcl::kernels::winograd_supported());
    });
}

fn nan_stays_nan() {
    let opts = (Kind::Float, Device::Cpu);
    let wt = Tensor::randn([16, 16, 3, 3], opts);
    let x = Tensor::randn([1, 16, 6, 6], opts);
    let _ = x.get(0).get(3).get(2).get(2).fill_(f64::NAN);
    let y = tch::no_grad(|| conv3x3(&x, &wt, transform_weights(&wt).unwrap().as_ref(), &Tensor::zeros([16], opts), None, true)).unwrap();
    // Every output that sees the NaN pixel is NaN (not zeroed by the ReLU).
    let seen = y.narrow(2, 1, 3).narrow(3, 1, 3);
    assert!(bool::try_from(seen.isnan().all()).unwrap(), "{seen}");
}

/// One case of the fused op against libtorch's batch_norm + add + relu: outputs, running
/// statistics and the gradients of input, residual, weight and bias.
fn fused_case(c: i64, hw: i64, residual: bool, relu: bool, kind: Kind, channels_last: bool, tol: f64) {
    let opts = (Kind::Float, Device::Cpu);
    let vs = nn::VarStore::new(Device::Cpu);
    let bn = nn::batch_norm2d(vs.root() / "bn", c, Default::default());
    tch::no_grad(|| {
        let _ = bn.ws.as_ref().unwrap().shallow_clone().copy_(&(Tensor::rand([c], opts) + 0.5));
        let _ = bn.bs.as_ref().unwrap().shallow_clone().copy_(&(Tensor::randn([c], opts) * 0.3));
    });
    let layout = |t: Tensor| if channels_last { cl(&t) } else { t };
    // A mean far from 0 and a spread far from 1, as convolution outputs have.
    let x0 = layout((Tensor::randn([7, c, hw, hw], opts) * 3.0 + 1.5).to_kind(kind));
    let r0 = layout(Tensor::randn([7, c, hw, hw], opts).to_kind(kind));
    let g = layout(Tensor::randn([7, c, hw, hw], opts).to_kind(kind));
    let (rm0, rv0) = (bn.running_mean.copy(), bn.running_var.copy());
    // bf16 is checked against libtorch in fp32 on the same (bf16-valued) inputs.
    let run = |fused: bool| {
        let (x0, r0, g) = if fused { (x0.shallow_clone(), r0.shallow_clone(), g.shallow_clone()) } else { (x0.to_kind(Kind::Float), r0.to_kind(Kind::Float), g.to_kind(Kind::Float)) };
        let x = x0.detach().set_requires_grad(true);
        let r = r0.detach().set_requires_grad(true);
        for t in vs.trainable_variables() {
            let mut gr = t.grad();
            if gr.defined() {
                let _ = gr.zero_();
            }
        }
        tch::no_grad(|| {
            let _ = bn.running_mean.shallow_clone().copy_(&rm0);
            let _ = bn.running_var.shallow_clone().copy_(&rv0);
        });
        let y = if fused {
            bn_act(&x, residual.then_some(&r), &bn, relu).unwrap()
        } else {
            let mut y = x.apply_t(&bn, true);
            if residual {
                y = y + &r;
            }
            if relu {
                y.relu()
            } else {
                y
            }
        };
        (&y * &g).sum(Kind::Float).backward();
        let grads: Vec<Tensor> = [x.grad(), bn.ws.as_ref().unwrap().grad(), bn.bs.as_ref().unwrap().grad()].into_iter().collect();
        let rg = if residual { Some(r.grad()) } else { None };
        (y.detach(), grads, rg, bn.running_mean.copy(), bn.running_var.copy())
    };
    let (y1, g1, r1, m1, v1) = run(false);
    let (y2, g2, r2, m2, v2) = run(true);
    assert_eq!(y2.kind(), kind);
    let diff = if kind == Kind::Float { rel_diff } else { rel_l2 };
    let what = format!("C={c} hw={hw} residual={residual} relu={relu} {kind:?} channels_last={channels_last}");
    assert!(diff(&y2, &y1) < tol, "{what}: output off by {}", diff(&y2, &y1));
    assert!(rel_diff(&m2, &m1) < 1e-5 && rel_diff(&v2, &v1) < 1e-5, "{what}: running statistics differ");
    for (name, (a, b)) in ["input", "weight", "bias"].iter().zip(g2.iter().zip(&g1)) {
        assert!(diff(a, b) < tol, "{what}: {name} gradient off by {}", diff(a, b));
    }
    if let (Some(a), Some(b)) = (r2, r1) {
        assert!(diff(&a, &b) < tol, "{what}: residual gradient off by {}", diff(&a, &b));
    }
}

#[test]
fn fused_batchnorm_add_relu_matches_libtorch_in_value_statistics_and_gradient() {
    tch::manual_seed(3);
    // The CIFAR network's widths (16, 32, 64: compile-time kernels) and others (generic
    // kernel), up to the ImageNet ResNets' 2048 (once beyond a fixed stack buffer: a crash);
    // row counts that are not multiples of the kernels' blocks.
    for &(c, hw) in &[(16, 9), (32, 5), (64, 3), (24, 6), (256, 4), (2048, 3)] {
        for &(residual, relu) in &[(false, true), (true, true), (true, false), (false, false)] {
            fused_case(c, hw, residual, relu, Kind::Float, true, 1e-4);
        }
    }
    // bf16 activations (as under autocast), against fp32 on the same values: within bf16's
    // rounding (2^-8 relative) in L2.
    fused_case(32, 7, true, true, Kind::BFloat16, true, 1e-2);
    fused_case(16, 9, false, true, Kind::BFloat16, true, 1e-2);
    fused_case(2048, 3, true, true, Kind::BFloat16, true, 1e-2);
    // Not channels-last: libtorch's own ops, so exactly libtorch's result.
    fused_case(16, 5, true, true, Kind::Float, false, 1e-6);
}

/// A tensor of `shape` with N(mean, sd^2) entries from a seeded generator (libtorch's global
/// one is shared with the tests that run alongside).
fn seeded_normal(shape: &[i64], mean: f64, sd: f64, rng: &mut rand::rngs::StdRng) -> Tensor {
    use rand_distr::{Distribution, Normal};
    let d = Normal::new(mean, sd).unwrap();
    let v: Vec<f32> = (0..shape.iter().product::<i64>()).map(|_| d.sample(rng) as f32).collect();
    Tensor::from_slice(&v).view(shape)
}

#[test]
fn a_training_step_with_our_kernels_is_as_accurate_as_one_with_libtorchs() {
    // Seeded weights and batch: on a rare draw a pre-activation lies within rounding of zero,
    // and any two fp32 kernels may then disagree on its ReLU; behind BatchNorm's backward, which
    // subtracts means and cancels most of a convolution's weight gradient, that one unit can move
    // the gradient by 1%. The kernels' own precision is tested on their own above.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let vs = nn::VarStore::new(Device::Cpu);
    let _model = classifier(&vs, 8, 1, 10, HeadKind::Cosine, Kernels::NONE).unwrap();
    tch::no_grad(|| {
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, mut t) in vars {
            let size = t.size();
            let fan_in: i64 = size.iter().skip(1).product();
            let v = match (name.ends_with("weight"), size.len()) {
                (true, 4) => seeded_normal(&size, 0.0, (2.0 / fan_in as f64).sqrt(), &mut rng),
                (true, 1) => seeded_normal(&size, 1.0, 0.2, &mut rng),
                (true, _) => seeded_normal(&size, 0.0, 1.0, &mut rng),
                _ if name.ends_with("bias") => seeded_normal(&size, 0.0, 0.2, &mut rng),
                _ => continue, // running statistics: unused in training mode
            };
            let _ = t.copy_(&v);
        }
    });
    let x = cl(&seeded_normal(&[12, 1, 28, 28], 0.0, 1.0, &mut rng));
    // The truth: the same network and batch in fp64, through libtorch's ops.
    let mut vs64 = nn::VarStore::new(Device::Cpu);
    let m64 = classifier(&vs64, 8, 1, 10, HeadKind::Cosine, Kernels::NONE).unwrap();
    vs64.copy(&vs).unwrap();
    vs64.double();
    // Our kernels run on channels-last weights, as a CPU run lays them out.
    let with = |kernels: Kernels| {
        let mut vs_k = nn::VarStore::new(Device::Cpu);
        let m_k = classifier(&vs_k, 8, 1, 10, HeadKind::Cosine, kernels).unwrap();
        vs_k.copy(&vs).unwrap();
        let mut weights: Vec<Tensor> = vs_k.variables().into_values().collect();
        gcl::kernels::layout::params_channels_last(&mut weights).unwrap();
        (vs_k, m_k)
    };
    let run = |m: &gcl::model::Classifier, vs: &nn::VarStore, x: &Tensor| {
        let z = m.forward(x, true).unwrap();
        let grads = Tensor::run_backward(&[z.square().sum(z.kind())], &vs.trainable_variables(), false, false);
        (z.detach().to_kind(Kind::Double), grads.iter().map(|g| g.to_kind(Kind::Double)).collect::<Vec<_>>())
    };
    let (z64, g64) = run(&m64, &vs64, &x.to_kind(Kind::Double));
    let (vs_t, m_t) = with(Kernels::NONE);
    let (zt, gt) = run(&m_t, &vs_t, &x);
    assert_eq!(gt.len(), g64.len());
    // Each of our kernels alone (fused BatchNorm; Winograd convolution forward), then both: as
    // close to fp64 as libtorch's fp32 is (within 2x, or 1e-5).
    for (fused, winograd) in [(true, false), (false, true), (true, true)] {
        let (vs_k, m_k) = with(Kernels { fused, winograd });
        let (z, g) = run(&m_k, &vs_k, &x);
        let (ez, et) = (rel_diff(&z, &z64), rel_diff(&zt, &z64));
        assert!(ez <= 2.0 * et + 1e-5, "fused {fused}, winograd {winograd}: logits off by {ez} (libtorch fp32: {et})");
        for (i, ((ours, torch), truth)) in g.iter().zip(&gt).zip(&g64).enumerate() {
            let (e, et) = (rel_l2(ours, truth), rel_l2(torch, truth));
            assert!(e <= 2.0 * et + 1e-5, "fused {fused}, winograd {winograd}: gradient {i} off by {e} (libtorch fp32: {et})");
        }
    }
}

#[test]
fn a_nan_activation_stays_nan_through_the_fused_op_so_divergence_is_caught() {
    let vs = nn::VarStore::new(Device::Cpu);
    let bn = nn::batch_norm2d(vs.root(), 16, Default::default());
    for kind in [Kind::Float, Kind::BFloat16] {
        let x = cl(&Tensor::randn([2, 16, 4, 4], (Kind::Float, Device::Cpu)).to_kind(kind));
        let _ = x.get(0).get(3).get(1).get(2).fill_(f64::NAN);
        // A ReLU that mapped NaN to 0 would hide a diverged network from the loss check.
        let y = bn_act(&x, None, &bn, true).unwrap();
        assert!(y.isnan().any().int64_value(&[]) == 1, "{kind:?}: NaN lost");
        let y = bn_act(&x, Some(&x.zeros_like()), &bn, true).unwrap();
        assert!(y.isnan().any().int64_value(&[]) == 1, "{kind:?}: NaN lost with a residual");
    }
}
