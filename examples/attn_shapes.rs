//! Times the fused attention kernel at each attention shape of the demo models and sums one composed sampling step
//! (small model batch 2 + prior): `cargo run --release --example attn_shapes [NAME-FILTER]`. Used to profile
//! issue 8 (docs/performance.md, session 7)
//! and the AVX-512 attention (session 14: `VADAPT_NO_AVX512=1` times the AVX2 kernel).
use candle_core::{Device, Tensor};
use std::time::Instant;
use vadapt::models::kernels::bench as kernels;

fn main() {
    let shapes: &[(&str, usize, usize, usize, usize, usize, usize)] = &[
        // name, b, n, m, width, heads, calls per step (small batch 2 + prior batch 1)
        ("temporal_in w64 h8", 960, 16, 16, 64, 8, 2 * 2 + 2),
        ("temporal blk w32 h4", 240, 16, 16, 32, 4, 4 * 2 * 2),
        ("temporal blk w48 h6", 240, 16, 16, 48, 6, 4 * 2),
        ("spatial w32 h4", 16, 240, 240, 32, 4, 4 * 2),
        ("spatial w48 h6", 16, 240, 240, 48, 6, 4),
        ("cross w32 h4 m64", 16, 240, 64, 32, 4, 4 * 2),
        ("cross w48 h6 m64", 16, 240, 64, 48, 6, 4),
        // the first level of issue 20's 5.1 M + 28.3 M pair at 24x40, 16 frames (session 14): 960 tokens
        ("spatial180 w64 h8", 16, 180, 180, 64, 8, 1), // LanguageTable UNets at 10x18
        ("spatial960 w32 h4", 32, 960, 960, 32, 4, 1),
        ("spatial960 w64 h8", 16, 960, 960, 64, 8, 4),
    ];
    let mut total = 0.0;
    let only = std::env::args().nth(1).unwrap_or_default();
    for &(name, b, n, m, w, h, calls) in shapes.iter().filter(|s| s.0.contains(only.as_str())) {
        let q = Tensor::randn(0f32, 1.0, (b, n, w), &Device::Cpu).unwrap();
        let k = Tensor::randn(0f32, 1.0, (b, m, w), &Device::Cpu).unwrap();
        let v = Tensor::randn(0f32, 1.0, (b, m, w), &Device::Cpu).unwrap();
        let _ = kernels::attention(&q, &k, &v, h, 0.35).unwrap();
        let reps = 20;
        let t = Instant::now();
        for _ in 0..reps {
            std::hint::black_box(kernels::attention(&q, &k, &v, h, 0.35).unwrap());
        }
        let ms = t.elapsed().as_secs_f64() * 1e3 / reps as f64;
        total += ms * calls as f64;
        println!(
            "{name:24} {ms:7.3} ms x {calls:2} = {:7.1} ms/step",
            ms * calls as f64
        );
    }
    println!("total attention per composed step: {total:.1} ms");
}
