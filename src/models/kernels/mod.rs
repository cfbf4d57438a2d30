//! The UNet's heavy ops, shaped like candle's `candle_nn::ops`: each op takes candle tensors and decides its own
//! path, so that the model files (`resnet.rs`, `attention.rs`) read as plain math.
//!
//! * f32 CPU tensors: our fused kernels below. Where a graph is being recorded (training) the convolutions,
//!   attention, linear layers, GEGLU and norms record themselves with a backward of their own (`conv_grad`,
//!   `attention_grad`, `linear_grad`, and in `linear` / `norm`); the epilogue and feed-forward fusions are for
//!   inference only (`cpu::cpu_f32_inference`), training takes their parts one by one;
//! * anything else (F16/BF16, CUDA): candle's own ops, which have CUDA kernels in F32, F16 and BF16. The choice is
//!   `cpu::fused_f32_cpu`; the tests of `paths` force the CUDA side on the CPU and hold it to the fused kernels.
//!   A CUDA kernel of our own would go in the op, next to the CPU one.
//!
//! The fused kernels replace the ops that dominate a UNet3D forward at our sizes, where candle's composed versions
//! are memory-bound or call scalar libm:
//!
//! * **attention** `softmax(q kᵀ) v` one query row at a time: the (N, M) score matrix never exists (at 24x40 it is
//!   960 x 960 per head and frame; written, re-read by softmax and read again by the second matmul), and the
//!   temporal attention's thousands of 16 x 16 problems run in one pass instead of tiny batched matmuls;
//! * **GEGLU** `h · gelu(gate)` (exact-erf GELU) straight from the projection's output, no narrow copies;
//! * **SiLU** after GroupNorm, in the same pass (see `norm::group_norm_silu`).
//!
//! `exp` and `erf` are polynomial approximations that vectorise (libm's `expf` is scalar and was 18% of a composed
//! sampling profile). Their errors (relative 2e-7 for exp, absolute 1e-6 for erf) are far inside the 1e-4 parity
//! tolerance against diffusers, which `tests/it/unet3d.rs` checks end to end.
//!
//! The loops are written for LLVM's auto-vectoriser and compiled
//! twice, plain and with AVX2 + FMA (picked at run time), since the crate builds for the baseline x86-64 target.
//!
//! Files: one per op family (`attention`, `norm`, `tokens`, `linear` with the GEGLU feed-forward, `conv`,
//! `activation`), the shared plumbing (`cpu`: storage access and the dispatch checks; `gemm`; `portable`: the
//! building blocks of the auto-vectorised loops) and one per instruction set (`x86_64`: the AVX2 + FMA intrinsics;
//! `avx512`: the attention over many keys, where the CPU has AVX-512F; `amx`: the GEMM on AMX tiles that `gemm`
//! calls under `--matmul-precision high | medium`), and `peak`: the CPU's measured clock and FMA peak, which
//! `vadapt bench` holds the forwards against. Calls go one way: op files → `x86_64` / `avx512` / `gemm` →
//! `activation` (its scalar tails) / `amx`; nothing below an op file calls an op.

mod activation;
#[cfg(target_arch = "x86_64")]
mod amx;
mod attention;
mod attention_grad;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod conv;
mod conv_grad;
mod cpu;
mod gemm;
#[cfg(test)]
mod grad_check;
mod linear;
mod linear_grad;
mod norm;
#[cfg(test)]
mod paths;
mod peak;
mod portable;
mod tokens;
#[cfg(target_arch = "x86_64")]
mod x86_64;

pub(crate) use attention::attention;
pub(crate) use conv::{conv2d, conv2d_epilogue, temporal_conv};
pub(crate) use cpu::with_f32;
pub use gemm::{
    effective_matmul_precision, matmul_precision, set_matmul_precision, MatmulPrecision,
};
pub(crate) use linear::{feed_forward_geglu, linear};
pub(crate) use norm::{group_norm, group_norm_silu, layer_norm};
pub(crate) use tokens::{add_tokens, group_norm_tokens, TokenLayout};

/// The fused CPU kernels themselves, without the choice of path: for `benches/kernels.rs`,
/// `examples/attn_shapes.rs` and `vadapt bench`. f32 CPU tensors only.
pub mod bench {
    pub use super::attention::fused_attention as attention;
    pub use super::conv::fused_conv2d as conv2d;
    pub use super::cpu::{has_avx2_fma, has_avx512f};
    pub use super::peak::{measure as measure_fma_peak, FmaPeak};

    /// Whether this CPU runs the AMX bf16 GEMM (`--matmul-precision high | medium` take it). False off x86-64.
    pub fn has_amx() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            super::amx::available()
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }
    pub use super::linear::{
        fused_feed_forward_geglu as feed_forward_geglu, fused_linear as linear,
    };
    pub use super::norm::fused_layer_norm as layer_norm;

    /// `c (+)= a · b` through the kernels' GEMM for dense (m, k) `a`, (k, n) `b` and row-major (m, n) `c`, the
    /// operands laid out by their (column, row) strides; `accumulate` adds to `c`.
    #[allow(clippy::too_many_arguments)]
    fn dense_gemm(
        (m, n, k): (usize, usize, usize),
        a: &[f32],
        a_strides: (usize, usize),
        b: &[f32],
        b_strides: (usize, usize),
        c: &mut [f32],
        accumulate: bool,
        parallelism: gemm::Parallelism,
    ) {
        // Dense operands: each stride pair addresses exactly its matrix's m·k or k·n elements.
        assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
        // SAFETY: the three slices hold the matrices, checked above; c is a distinct &mut.
        unsafe {
            super::gemm::gemm_into(
                (m, n, k),
                c.as_mut_ptr(),
                n,
                accumulate,
                a.as_ptr(),
                a_strides,
                b.as_ptr(),
                b_strides,
                parallelism,
            )
        }
    }

    /// `c = a · b` for row-major (m, k) `a`, (k, n) `b` and (m, n) `c` through the kernels' GEMM (AMX where the
    /// CPU has it, unless `VADAPT_NO_AMX`; gemm's otherwise), on rayon's pool.
    pub fn gemm(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
        let threads = rayon::current_num_threads();
        dense_gemm(
            (m, n, k),
            a,
            (1, k),
            b,
            (1, n),
            c,
            false,
            gemm::Parallelism::Rayon(threads),
        );
    }

    /// `c (+)= a · bᵀ` on one thread, the layout of the convolution weight gradient (`conv_grad::weight_grad`):
    /// row-major (m, k) `a` (dy), (n, k) `bt` (the im2col rows) and (m, n) `c`; `accumulate` adds to `c`.
    pub fn gemm_abt_one_thread(
        dims: (usize, usize, usize),
        a: &[f32],
        bt: &[f32],
        c: &mut [f32],
        accumulate: bool,
    ) {
        let k = dims.2;
        dense_gemm(
            dims,
            a,
            (1, k),
            bt,
            (k, 1),
            c,
            accumulate,
            gemm::Parallelism::None,
        );
    }

    /// `c = aᵀ · b` on one thread, the layout of the convolution input gradient before its col2im
    /// (`conv_grad::input_grad`): row-major (k, m) `a` (the weight), (k, n) `b` (dy) and (m, n) `c`.
    pub fn gemm_atb_one_thread(dims: (usize, usize, usize), a: &[f32], b: &[f32], c: &mut [f32]) {
        let (m, n, _) = dims;
        dense_gemm(
            dims,
            a,
            (m, 1),
            b,
            (1, n),
            c,
            false,
            gemm::Parallelism::None,
        );
    }
    pub use super::tokens::{fused_group_norm_tokens as group_norm_tokens, TokenLayout};
}
