//! Times the convolution weight gradient's GEMM (`dW (o, C·9) += dy (o, hw) · colsᵀ`, one thread, as
//! `conv_grad::weight_grad` runs it) at the 19.6 M training recipe's three levels (24x40, 12x20, 6x10; 8 frames x
//! batch 2 = 16 images, partials of 4): one GEMM per image (K = hw, what the kernel does) against one GEMM per
//! partial with the four images' columns side by side (K = 4·hw); and the input gradient's GEMM (Wᵀ · dy per image,
//! before col2im). `benches/peer/weight_grad_shapes.py` times
//! torch.mm the same way.
//!
//! `cargo run --release --example weight_grad_shapes [reps]`
use std::time::Instant;

use vadapt::models::kernels::bench::{gemm_abt_one_thread, gemm_atb_one_thread};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let reps: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(9);
    // (o, C·9, hw) of each level's 3x3 convolution, C = o.
    let levels = [(64, 576, 960), (128, 1152, 240), (256, 2304, 60)];
    const PER_PARTIAL: usize = 4;
    for (o, k9, hw) in levels {
        let fill = |len: usize, s: usize| -> Vec<f32> {
            (0..len)
                .map(|i| ((i * s) % 1000) as f32 / 500.0 - 1.0)
                .collect()
        };
        let dy = fill(o * hw * PER_PARTIAL, 7919);
        let cols = fill(k9 * hw * PER_PARTIAL, 104729);
        let mut dw = vec![0f32; o * k9];
        let mut per_image = || {
            for i in 0..PER_PARTIAL {
                gemm_abt_one_thread(
                    (o, k9, hw),
                    &dy[i * o * hw..],
                    &cols[i * k9 * hw..],
                    &mut dw,
                    i > 0,
                );
            }
        };
        let time = |f: &mut dyn FnMut()| {
            f();
            median(
                (0..reps)
                    .map(|_| {
                        let t = Instant::now();
                        f();
                        t.elapsed().as_secs_f64()
                    })
                    .collect(),
            )
        };
        let t_images = time(&mut per_image);
        let mut dw2 = vec![0f32; o * k9];
        let t_joined = time(&mut || {
            gemm_abt_one_thread((o, k9, hw * PER_PARTIAL), &dy, &cols, &mut dw2, false)
        });
        // The input gradient's GEMM, before its col2im: Wᵀ (C·9, o) · dy_i (o, hw) per image.
        let wt = fill(o * k9, 31);
        let mut dcols = vec![0f32; k9 * hw];
        let t_input = time(&mut || {
            for i in 0..PER_PARTIAL {
                gemm_atb_one_thread((k9, hw, o), &wt, &dy[i * o * hw..], &mut dcols);
            }
        });
        let flop = 2.0 * (o * k9 * hw * PER_PARTIAL) as f64;
        println!(
            "o {o:3} C·9 {k9:4} hw {hw:3}: input grad GEMM, per image {:7.3} ms ({:5.0} GFLOP/s)",
            t_input * 1e3,
            flop / t_input / 1e9
        );
        println!(
            "o {o:3} C·9 {k9:4} hw {hw:3}: per image {:7.3} ms ({:5.0} GFLOP/s), joined K = {:4} {:7.3} ms ({:5.0} GFLOP/s)",
            t_images * 1e3,
            flop / t_images / 1e9,
            hw * PER_PARTIAL,
            t_joined * 1e3,
            flop / t_joined / 1e9
        );
    }
}
