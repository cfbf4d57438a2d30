//! Our CPU inference kernels (`models::kernels::bench`) against the candle ops they replace, side by side in one run, at
//! the demo models' shapes (16 frames at 24x40, batch 2): spatial attention at full and half resolution, the
//! temporal attention's thousands of 16-frame problems, a 3x3 convolution, a linear layer over many rows, the fused
//! feed-forward, LayerNorm, and GroupNorm into the transformers' token layout.
//! `cargo bench --bench kernels`; compare each pair's times (a ratio), not absolute numbers across machines.

use std::hint::black_box;

use candle_core::{Device, Module, Tensor, D};
use criterion::{criterion_group, criterion_main, Criterion};
use vadapt::models::kernels::bench as kernels;

fn randn(shape: &[usize], std: f32) -> Tensor {
    Tensor::randn(0f32, std, shape, &Device::Cpu).expect("randn")
}

fn bench_attention(c: &mut Criterion) {
    let mut group = c.benchmark_group("attention");
    group.sample_size(10);
    // (name, batch, tokens, keys, heads, head width)
    for (name, b, n, m, heads, d) in [
        ("spatial_960_tokens", 32, 960, 960, 1, 8),
        ("spatial_240_tokens", 32, 240, 240, 6, 8),
        ("temporal_16_frames", 1920, 16, 16, 8, 8),
    ] {
        let q = randn(&[b, n, heads * d], 1.0);
        let k = randn(&[b, m, heads * d], 1.0);
        let v = randn(&[b, m, heads * d], 1.0);
        let scale = 1.0 / (d as f32).sqrt();
        group.bench_function(format!("{name}/fused"), |bench| {
            bench.iter(|| black_box(kernels::attention(&q, &k, &v, heads, scale).expect("fused")))
        });
        let split = |x: &Tensor, len: usize| {
            x.reshape((b, len, heads, d))
                .and_then(|t| t.transpose(1, 2))
                .and_then(|t| t.contiguous())
                .and_then(|t| t.reshape((b * heads, len, d)))
                .expect("split heads")
        };
        group.bench_function(format!("{name}/candle"), |bench| {
            bench.iter(|| {
                let (qs, ks, vs) = (split(&q, n), split(&k, m), split(&v, m));
                let scores =
                    (qs.matmul(&ks.t().expect("t")).expect("qk") * scale as f64).expect("scale");
                let p = candle_nn::ops::softmax(&scores, D::Minus1).expect("softmax");
                black_box(p.matmul(&vs).expect("pv"))
            })
        });
    }
    group.finish();
}

fn bench_conv_and_linear(c: &mut Criterion) {
    let mut group = c.benchmark_group("conv_linear");
    group.sample_size(10);
    let x = randn(&[32, 24, 24, 40], 1.0);
    let w = randn(&[24, 24, 3, 3], 0.1);
    let bias = randn(&[24], 0.1);
    group.bench_function("conv3x3/fused", |bench| {
        bench.iter(|| black_box(kernels::conv2d(&x, &w, &bias, 1, 1).expect("conv")))
    });
    group.bench_function("conv3x3/candle", |bench| {
        bench.iter(|| {
            let y = x.conv2d(&w, 1, 1, 1, 1).expect("conv");
            black_box(
                y.broadcast_add(&bias.reshape((1, 24, 1, 1)).expect("b"))
                    .expect("bias"),
            )
        })
    });
    // The temporal transformer's projections: (pixels · batch, frames, 64) rows.
    let rows = randn(&[1920, 16, 64], 1.0);
    let lw = randn(&[64, 64], 0.1);
    let lb = randn(&[64], 0.1);
    let linear = candle_nn::Linear::new(lw.clone(), Some(lb.clone()));
    group.bench_function("linear_plus_residual/fused", |bench| {
        bench.iter(|| {
            black_box(kernels::linear(&rows, &lw, Some(&lb), Some(&rows)).expect("linear"))
        })
    });
    group.bench_function("linear_plus_residual/candle", |bench| {
        bench
            .iter(|| black_box((linear.forward(&rows).expect("linear") + &rows).expect("residual")))
    });
    group.finish();
}

fn bench_norms_and_feed_forward(c: &mut Criterion) {
    let mut group = c.benchmark_group("norms_feed_forward");
    group.sample_size(10);
    // transformer_in of the demo small model: 2 x 960 pixels x 16 frames, 64 wide.
    let x = randn(&[1920, 16, 64], 1.0);
    let (w1, b1) = (randn(&[512, 64], 0.1), randn(&[512], 0.1));
    let (w2, b2) = (randn(&[64, 256], 0.1), randn(&[64], 0.1));
    group.bench_function("feed_forward_geglu/fused", |bench| {
        bench.iter(|| {
            black_box(
                kernels::feed_forward_geglu(&x, (&w1, Some(&b1)), (&w2, Some(&b2)), Some(&x))
                    .expect("ff"),
            )
        })
    });
    let (l1, l2) = (
        candle_nn::Linear::new(w1.clone(), Some(b1.clone())),
        candle_nn::Linear::new(w2.clone(), Some(b2.clone())),
    );
    group.bench_function("feed_forward_geglu/candle", |bench| {
        bench.iter(|| {
            let hg = l1.forward(&x).expect("proj");
            let (h, g) = (
                hg.narrow(2, 0, 256).expect("h"),
                hg.narrow(2, 256, 256).expect("g"),
            );
            let y = (h * g.gelu_erf().expect("gelu")).expect("geglu");
            black_box((l2.forward(&y).expect("out") + &x).expect("residual"))
        })
    });
    let (gamma, beta) = (randn(&[64], 0.1), randn(&[64], 0.1));
    let ln = candle_nn::LayerNorm::new(gamma.clone(), beta.clone(), 1e-5);
    group.bench_function("layer_norm/fused", |bench| {
        bench.iter(|| black_box(kernels::layer_norm(&x, &gamma, &beta, 1e-5).expect("ln")))
    });
    group.bench_function("layer_norm/candle", |bench| {
        bench.iter(|| black_box(ln.forward(&x).expect("ln")))
    });
    // The temporal transformer's entry: GroupNorm over (b, c, f, h, w), then (b·h·w, f, c) tokens.
    let video = randn(&[32, 16, 24, 40], 1.0);
    let (g16, b16) = (randn(&[16], 0.1), randn(&[16], 0.1));
    let layout = kernels::TokenLayout::Temporal { frames: 16 };
    group.bench_function("group_norm_to_temporal_tokens/fused", |bench| {
        bench.iter(|| {
            black_box(kernels::group_norm_tokens(&video, &g16, &b16, 8, 1e-6, layout).expect("gn"))
        })
    });
    let gn = candle_nn::GroupNorm::new(g16.clone(), b16.clone(), 16, 8, 1e-6).expect("gn");
    group.bench_function("group_norm_to_temporal_tokens/candle", |bench| {
        bench.iter(|| {
            let v = video
                .reshape((2, 16, 16, 24, 40))
                .and_then(|t| t.permute((0, 2, 1, 3, 4)))
                .and_then(|t| t.contiguous())
                .expect("to b c f h w");
            let y = gn.forward(&v).expect("gn");
            black_box(
                y.permute((0, 3, 4, 2, 1))
                    .and_then(|t| t.reshape((2 * 960, 16, 16)))
                    .expect("tokens"),
            )
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    bench_attention,
    bench_conv_and_linear,
    bench_norms_and_feed_forward
);
criterion_main!(benches);
