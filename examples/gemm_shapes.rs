//! Times the kernels' GEMM (`models::kernels::bench::gemm`) at the UNet's GEMM shapes, at a matmul precision
//! (`highest`: gemm's f32 kernels; `high` / `medium`: bf16x3 / bf16 on AMX where the CPU has it).
//!
//! `cargo run --release --example gemm_shapes [reps] [highest|high|medium] [shape index]`
use std::time::Instant;

fn main() {
    let reps: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    // (m, n, k): conv forward per frame (out channels, pixels, 9 x in channels) of the 28.3 M prior at 24x40 and
    // its lower levels, a feed-forward-like linear (tokens, out, in), and the square reference.
    let shapes = [
        (64, 960, 576),
        (128, 240, 1152),
        (256, 60, 2304),
        (15360, 512, 64),
        (15360, 64, 256),
        (1024, 1024, 1024),
    ];
    let precision: vadapt::models::kernels::MatmulPrecision = std::env::args()
        .nth(2)
        .map(|s| s.parse().expect("precision"))
        .unwrap_or_default();
    vadapt::models::kernels::set_matmul_precision(precision);
    println!(
        "{precision} (computing in {})",
        vadapt::models::kernels::effective_matmul_precision()
    );
    let only: Option<usize> = std::env::args().nth(3).and_then(|s| s.parse().ok());
    for (i, &(m, n, k)) in shapes.iter().enumerate() {
        if only.is_some_and(|o| o != i) {
            continue;
        }
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 104729) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let mut c = vec![0f32; m * n];
        vadapt::models::kernels::bench::gemm(m, n, k, &a, &b, &mut c);
        let mut times: Vec<f64> = (0..reps)
            .map(|_| {
                let t = Instant::now();
                vadapt::models::kernels::bench::gemm(m, n, k, &a, &b, &mut c);
                t.elapsed().as_secs_f64()
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let med = times[reps / 2];
        println!(
            "({m:5}, {n:4}, {k:4}): {:8.3} ms, {:6.0} GFLOP/s",
            med * 1e3,
            2.0 * (m * n * k) as f64 / med / 1e9
        );
    }
}
