//! Every op's non-fused side, the one a CUDA device takes (candle's ops), held to the fused CPU kernels on the CPU:
//! in F32 at the fused kernels' own tolerances, and in F16 / BF16 (inputs and weights cast, the result compared in
//! F32) at the tolerances of those formats. Without a GPU this is the check that the CUDA path computes the same
//! function; `scripts/gpu_check.sh` runs the same ops on a GPU end to end (the UNet3D and composition fixtures).
//!
//! BF16 covers the ops without a matmul only: candle has no BF16 matmul on the CPU (its CUDA backend has one, through
//! cuBLAS), so attention, linear, GEGLU and the convolutions are checked in F32 and F16 here and in BF16 by
//! `scripts/gpu_check.sh`.

use candle_core::{DType, Device, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, LayerNorm, Linear};

use super::cpu::{fused_f32_cpu, on_candle_path};
use super::*;
use crate::rng::NoiseRng;

/// Largest error of the candle path relative to the largest magnitude of the fused result (outputs are O(1)).
fn tolerance(dtype: DType) -> f32 {
    match dtype {
        // Summation order only (candle's matmuls against our blocked loops, libm against our exp/erf).
        DType::F32 => 2e-5,
        // 11 significant bits (2^-11 = 4.9e-4 per rounding), a few roundings deep.
        DType::F16 => 1e-2,
        // 8 significant bits (2^-8 = 3.9e-3 per rounding).
        DType::BF16 => 4e-2,
        _ => unreachable!(),
    }
}

const ALL: [DType; 3] = [DType::F32, DType::F16, DType::BF16];
/// Ops with a matmul: no BF16 on the CPU (see the module comment).
const WITH_MATMUL: [DType; 2] = [DType::F32, DType::F16];

/// `op` over `inputs` (f32, cast to each dtype) on the fused path in F32, then on the candle path in each of
/// `dtypes`, the results compared.
fn check(
    name: &str,
    inputs: &[Tensor],
    dtypes: &[DType],
    op: impl Fn(&[Tensor]) -> candle_core::Result<Tensor>,
) {
    let fused = op(inputs).unwrap();
    let scale = fused.abs().unwrap().max_all().unwrap();
    let scale = scale.to_scalar::<f32>().unwrap().max(1e-3);
    for &dtype in dtypes {
        let cast: Vec<Tensor> = inputs.iter().map(|t| t.to_dtype(dtype).unwrap()).collect();
        let candle = on_candle_path(|| op(&cast))
            .unwrap_or_else(|e| panic!("{name} {dtype:?} on the candle path: {e}"));
        assert_eq!(candle.dtype(), dtype, "{name}: the result keeps the dtype");
        assert_eq!(candle.dims(), fused.dims(), "{name} {dtype:?}");
        let candle = candle.to_dtype(DType::F32).unwrap();
        let rel = crate::models::max_abs_diff(&fused, &candle) / scale;
        assert!(
            rel < tolerance(dtype),
            "{name} {dtype:?}: candle path differs from the fused kernel by {rel:.2e} of max |y| = {scale}"
        );
    }
}

fn randn(rng: &mut NoiseRng, shape: &[usize], std: f64) -> Tensor {
    (rng.randn(shape, &Device::Cpu).unwrap() * std).unwrap()
}

#[test]
fn forcing_takes_the_candle_side_and_resets() {
    let x = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
    assert!(fused_f32_cpu(&x));
    assert!(!on_candle_path(|| fused_f32_cpu(&x)));
    assert!(fused_f32_cpu(&x), "the flag is reset after the closure");
    assert!(!fused_f32_cpu(&x.to_dtype(DType::F16).unwrap()));
}

#[test]
fn attention_on_the_candle_path() {
    let mut rng = NoiseRng::new(1);
    // Many keys (the spatial attention) and few (temporal, text), 8-wide heads and others.
    for (b, n, m, heads, d) in [(2, 40, 40, 3, 8), (4, 16, 7, 2, 8), (1, 9, 33, 2, 5)] {
        let q = randn(&mut rng, &[b, n, heads * d], 1.0);
        let k = randn(&mut rng, &[b, m, heads * d], 1.0);
        let v = randn(&mut rng, &[b, m, heads * d], 1.0);
        let scale = 1.0 / (d as f64).sqrt();
        check("attention", &[q, k, v], &WITH_MATMUL, |t| {
            attention(&t[0], &t[1], &t[2], heads, scale)
        });
    }
}

#[test]
fn norms_on_the_candle_path() {
    let mut rng = NoiseRng::new(2);
    let c = 8;
    let weight = (randn(&mut rng, &[c], 0.3) + 1.0).unwrap();
    let bias = randn(&mut rng, &[c], 0.3);
    for shape in [vec![2, c, 3, 4, 5], vec![3, c, 6, 7]] {
        let x = (randn(&mut rng, &shape, 1.5) + 0.3).unwrap();
        let inputs = [x, weight.clone(), bias.clone()];
        check("group_norm", &inputs, &ALL, |t| {
            group_norm(&t[0], &t[1], &t[2], 4, 1e-6)
        });
        check("group_norm_silu", &inputs, &ALL, |t| {
            group_norm_silu(&t[0], &t[1], &t[2], 4, 1e-6)
        });
    }
    let width = 12;
    let x = randn(&mut rng, &[2, 7, width], 1.0);
    let w = (randn(&mut rng, &[width], 0.3) + 1.0).unwrap();
    let b = randn(&mut rng, &[width], 0.3);
    check("layer_norm", &[x, w, b], &ALL, |t| {
        layer_norm(&t[0], &LayerNorm::new(t[1].clone(), t[2].clone(), 1e-5))
    });
}

#[test]
fn linear_and_feed_forward_on_the_candle_path() {
    let mut rng = NoiseRng::new(3);
    let (dim, out, inner) = (12, 10, 8);
    let x = randn(&mut rng, &[2, 7, dim], 1.0);
    let w = randn(&mut rng, &[out, dim], 0.3);
    let b = randn(&mut rng, &[out], 0.3);
    let residual = randn(&mut rng, &[2, 7, out], 1.0);
    let lin = |t: &[Tensor]| Linear::new(t[1].clone(), Some(t[2].clone()));
    check(
        "linear",
        &[x.clone(), w.clone(), b.clone()],
        &WITH_MATMUL,
        |t| linear(&t[0], &lin(t), None),
    );
    check(
        "linear + residual",
        &[x.clone(), w, b, residual],
        &WITH_MATMUL,
        |t| linear(&t[0], &lin(t), Some(&t[3])),
    );
    let proj_w = randn(&mut rng, &[2 * inner, dim], 0.3);
    let proj_b = randn(&mut rng, &[2 * inner], 0.3);
    let out_w = randn(&mut rng, &[dim, inner], 0.3);
    let out_b = randn(&mut rng, &[dim], 0.3);
    let residual = randn(&mut rng, &[2, 7, dim], 1.0);
    check(
        "feed_forward_geglu",
        &[x, proj_w, proj_b, out_w, out_b, residual],
        &WITH_MATMUL,
        |t| {
            let proj = Linear::new(t[1].clone(), Some(t[2].clone()));
            let out = Linear::new(t[3].clone(), Some(t[4].clone()));
            feed_forward_geglu(&t[0], &proj, &out, Some(&t[5]))
        },
    );
}

#[test]
fn convolutions_on_the_candle_path() {
    let mut rng = NoiseRng::new(4);
    let (b, cin, cout, h, w) = (2, 6, 5, 9, 10);
    let x = randn(&mut rng, &[b, cin, h, w], 1.0);
    let weight = randn(&mut rng, &[cout, cin, 3, 3], 0.2);
    let bias = randn(&mut rng, &[cout], 0.2);
    for (stride, padding) in [(1, 1), (2, 1)] {
        let cfg = Conv2dConfig {
            stride,
            padding,
            ..Default::default()
        };
        let conv = |t: &[Tensor]| Conv2d::new(t[1].clone(), Some(t[2].clone()), cfg);
        let inputs = [x.clone(), weight.clone(), bias.clone()];
        check("conv2d", &inputs, &WITH_MATMUL, |t| conv2d(&t[0], &conv(t)));
    }
    let conv = |t: &[Tensor]| Conv2d::new(t[1].clone(), Some(t[2].clone()), Default::default());
    let item_bias = randn(&mut rng, &[b, cout], 1.0);
    let residual = randn(&mut rng, &[b, cout, h - 2, w - 2], 1.0);
    check(
        "conv2d_epilogue",
        &[x, weight, bias, item_bias, residual],
        &WITH_MATMUL,
        |t| conv2d_epilogue(&t[0], &conv(t), Some(&t[3]), Some(&t[4])),
    );
    let (frames, hw) = (5, 12);
    let video = randn(&mut rng, &[b, cin, frames, hw], 1.0);
    let taps = randn(&mut rng, &[cout, cin, 3, 1, 1], 0.3);
    let tbias = randn(&mut rng, &[cout], 0.3);
    check("temporal_conv", &[video, taps, tbias], &WITH_MATMUL, |t| {
        temporal_conv(&t[0], &t[1], &t[2])
    });
}

#[test]
fn tokens_on_the_candle_path() {
    let mut rng = NoiseRng::new(5);
    let (b, f, c, h, w) = (2, 3, 8, 4, 5);
    let x = (randn(&mut rng, &[b * f, c, h, w], 1.5) + 0.3).unwrap();
    let weight = (randn(&mut rng, &[c], 0.3) + 1.0).unwrap();
    let bias = randn(&mut rng, &[c], 0.3);
    for (layout, tokens_shape) in [
        (TokenLayout::Spatial, [b * f, h * w, c]),
        (TokenLayout::Temporal { frames: f }, [b * h * w, f, c]),
    ] {
        let name = format!("group_norm_tokens {layout:?}");
        let inputs = [x.clone(), weight.clone(), bias.clone()];
        check(&name, &inputs, &ALL, |t| {
            group_norm_tokens(&t[0], &t[1], &t[2], 4, 1e-6, layout)
        });
        let tokens = randn(&mut rng, &tokens_shape, 1.0);
        let name = format!("add_tokens {layout:?}");
        check(&name, &[x.clone(), tokens], &ALL, |t| {
            add_tokens(&t[0], &t[1], layout)
        });
    }
}
