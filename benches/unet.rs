//! One UNet3DConditionModel forward at the demo shape (1, 4, 16, 24, 40) for the two fixture configs and a
//! ~20M-parameter config, with achieved GFLOP/s next to a measured f32 matmul GFLOP/s on the same machine.
//! `cargo bench --bench unet` prints a summary table after criterion's own lines.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use criterion::{criterion_group, criterion_main, Criterion};
use vadapt::models::unet_3d::{forward_flops, UNet3DConditionModel, UNet3DConfig};

const SHAPE: (usize, usize, usize, usize, usize) = (1, 4, 16, 24, 40);
const TOKENS: usize = 16;

fn fixture(rel: &str) -> PathBuf {
    let root = std::env::var_os("VADAPT_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"));
    let p = root.join(rel);
    assert!(
        p.exists(),
        "fixture {} is missing (tests/fixtures/ in the checkout, or VADAPT_FIXTURES)",
        p.display()
    );
    p
}

/// ~20M parameters: ModelScope's block layout at (40, 80, 160, 160).
const MEDIUM: &str = r#"{"in_channels": 4, "out_channels": 4, "block_out_channels": [40, 80, 160, 160],
  "layers_per_block": 2, "norm_num_groups": 8, "cross_attention_dim": 256, "attention_head_dim": 40}"#;

fn models() -> Vec<(&'static str, UNet3DConditionModel)> {
    let dev = Device::Cpu;
    let tiny = UNet3DConditionModel::load(&fixture("unet3d/tiny"), &dev).expect("tiny");
    let mini = UNet3DConditionModel::load(&fixture("unet3d/modelscope_mini"), &dev)
        .expect("modelscope_mini");
    let cfg: UNet3DConfig = serde_json::from_str(MEDIUM).expect("config");
    let varmap = VarMap::new();
    let medium = UNet3DConditionModel::new(VarBuilder::from_varmap(&varmap, DType::F32, &dev), cfg)
        .expect("medium");
    let params: usize = varmap.all_vars().iter().map(|v| v.elem_count()).sum();
    eprintln!("medium config: {:.1}M parameters", params as f64 / 1e6);
    vec![
        ("tiny", tiny),
        ("modelscope_mini", mini),
        ("medium_20m", medium),
    ]
}

fn inputs(m: &UNet3DConditionModel) -> (Tensor, Tensor, Tensor) {
    let (b, c, f, h, w) = SHAPE;
    let dev = Device::Cpu;
    let c = c.max(m.config().in_channels);
    (
        Tensor::randn(0f32, 1.0, (b, c, f, h, w), &dev).expect("sample"),
        Tensor::new(&[500f32], &dev).expect("t"),
        Tensor::randn(0f32, 1.0, (b, TOKENS, m.config().cross_attention_dim), &dev).expect("ctx"),
    )
}

fn matmul_gflops() -> f64 {
    let dev = Device::Cpu;
    let n = 1024;
    let a = Tensor::randn(0f32, 1.0, (n, n), &dev).expect("a");
    let b = Tensor::randn(0f32, 1.0, (n, n), &dev).expect("b");
    black_box(a.matmul(&b).expect("warm"));
    let reps = 10;
    let t0 = Instant::now();
    for _ in 0..reps {
        black_box(a.matmul(&b).expect("matmul"));
    }
    2.0 * (n * n * n) as f64 * reps as f64 / t0.elapsed().as_secs_f64() / 1e9
}

fn bench_unet(c: &mut Criterion) {
    let mut group = c.benchmark_group("unet3d_forward_1x4x16x24x40");
    group.sample_size(10);
    let mut summary = Vec::new();
    for (name, model) in models() {
        let (x, t, ctx) = inputs(&model);
        group.bench_function(name, |bench| {
            bench.iter(|| black_box(model.forward(&x, &t, &ctx).expect("forward")))
        });
        // A direct measurement for the GFLOP/s table (criterion's estimate is not exposed to the bench body);
        // skipped when `cargo test` runs the bench once as a smoke test.
        if !std::env::args().any(|a| a == "--bench") {
            continue;
        }
        let reps = 3;
        let t0 = Instant::now();
        for _ in 0..reps {
            black_box(model.forward(&x, &t, &ctx).expect("forward"));
        }
        let secs = t0.elapsed().as_secs_f64() / reps as f64;
        let (b, _, f, h, w) = SHAPE;
        let flops = forward_flops(model.config(), b, f, h, w, TOKENS);
        summary.push((name, secs, flops / secs / 1e9, flops / 1e9));
    }
    group.finish();
    if summary.is_empty() {
        return;
    }
    let peak = matmul_gflops();
    eprintln!(
        "\n{:<18} {:>10} {:>10} {:>10} {:>12}",
        "model", "ms/fwd", "GFLOP", "GFLOP/s", "% of matmul"
    );
    for (name, secs, gflops, total) in summary {
        eprintln!(
            "{name:<18} {:>10.1} {:>10.2} {:>10.1} {:>11.0}%",
            secs * 1e3,
            total,
            gflops,
            100.0 * gflops / peak
        );
    }
    eprintln!(
        "{:<18} {:>10} {:>10} {:>10.1}",
        "matmul 1024^3", "", "", peak
    );
}

criterion_group!(benches, bench_unet);
criterion_main!(benches);
