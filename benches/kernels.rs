//! Our CPU inference kernels (`models::kernels`) against the candle ops they replace, side by side in one run, at
//! the demo models' shapes (16 frames at 24x40, batch 2): spatial attention at full and half resolution, the
//! temporal attention's thousands of 16-frame problems, a 3x3 convolution and a linear layer over many rows.
//! `cargo bench --bench kernels`; compare each pair's times (a ratio), not absolute numbers across machines.

use std::hint::black_box;

use candle_core::{Device, Module, Tensor, D};
use criterion::{criterion_group, criterion_main, Criterion};
use vadapt::models::kernels;

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

criterion_group!(benches, bench_attention, bench_conv_and_linear);
criterion_main!(benches);
