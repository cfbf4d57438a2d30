//! The portable building blocks of the auto-vectorised kernels: LANES-wide accumulators and reductions, and
//! `MulAdd`, which each kernel is generic over so that it compiles twice, plain (any x86-64 or other CPU) and as
//! the AVX2 + FMA build (`Fused`, picked at run time where `cpu::has_avx2_fma`).

/// Lanes of the manual accumulators: 8 f32 = one AVX2 register, two SSE registers.
pub(super) const LANES: usize = 8;

/// The largest of `a` (−∞ for none), in LANES accumulators.
#[inline(always)]
pub(super) fn max(a: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let c = a.chunks_exact(LANES);
    let r = c.remainder();
    for x in c {
        for l in 0..LANES {
            acc[l] = acc[l].max(x[l]);
        }
    }
    r.iter()
        .chain(acc.iter())
        .copied()
        .fold(f32::NEG_INFINITY, f32::max)
}

/// `a·b + c`: a fused multiply-add where the build has FMA (`mul_add` is a libm call without it, so the plain
/// build multiplies and adds). Rust never contracts `a * b + c` on its own.
pub(super) trait MulAdd {
    /// Whether this is the AVX2 + FMA build (which may call the intrinsics in `x86_64`).
    const AVX2: bool = false;
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
}
pub(super) struct Plain;
impl MulAdd for Plain {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}
#[cfg(target_arch = "x86_64")]
pub(super) struct Fused;
#[cfg(target_arch = "x86_64")]
impl MulAdd for Fused {
    const AVX2: bool = true;
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

/// `Σ (x − mean)²`, the second pass of a norm's biased variance (as torch), in LANES accumulators.
#[inline(always)]
pub(super) fn squared_deviations<F: MulAdd>(x: &[f32], mean: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let ch = x.chunks_exact(LANES);
    let tail: f32 = ch.remainder().iter().map(|v| (v - mean) * (v - mean)).sum();
    for c in ch {
        for l in 0..LANES {
            let d = c[l] - mean;
            acc[l] = F::mul_add(d, d, acc[l]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `Σ a`, in LANES accumulators.
#[inline(always)]
pub(super) fn sum(a: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let c = a.chunks_exact(LANES);
    let r: f32 = c.remainder().iter().sum();
    for x in c {
        for l in 0..LANES {
            acc[l] += x[l];
        }
    }
    acc.iter().sum::<f32>() + r
}

/// xᵀ (d, m) of m rows of `d` floats, `stride` apart: one head's key or value rows, so that the attention's loops
/// over keys read them contiguously, or a linear layer's (o, i) weight as the (i, o) its GEMM reads.
pub(super) fn transpose(x: &[f32], (d, stride): (usize, usize), m: usize, xt: &mut [f32]) {
    for j in 0..m {
        for c in 0..d {
            xt[c * m + j] = x[j * stride + c];
        }
    }
}
