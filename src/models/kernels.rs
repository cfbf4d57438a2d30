//! Fused CPU inference kernels for the ops that dominate a UNet3D forward at our sizes, where candle's composed
//! versions are memory-bound or call scalar libm:
//!
//! * **attention** `softmax(q kᵀ) v` one query row at a time: the (N, M) score matrix never exists (at 24x40 it is
//!   960 x 960 per head and frame; written, re-read by softmax and read again by the second matmul), and the
//!   temporal attention's thousands of 16 x 16 problems run in one pass instead of tiny batched matmuls;
//! * **GEGLU** `h · gelu(gate)` (exact-erf GELU) straight from the projection's output, no narrow copies;
//! * **SiLU** after GroupNorm, in the same pass (see `fused::group_norm_silu`).
//!
//! `exp` and `erf` are polynomial approximations that vectorise (libm's `expf` is scalar and was 18% of a composed
//! sampling profile). Their errors (relative 2e-7 for exp, absolute 1e-6 for erf) are far inside the 1e-4 parity
//! tolerance against diffusers, which `tests/it/unet3d.rs` checks end to end.
//!
//! Inference only: no backward. Training records a graph and takes the differentiable composed ops instead
//! (`attention::Attention::forward`, `attention::FeedForward::forward`). The loops are written for LLVM's
//! auto-vectoriser and compiled twice, plain and with AVX2 + FMA (picked at run time), since the crate builds for
//! the baseline x86-64 target.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

/// Lanes of the manual accumulators: 8 f32 = one AVX2 register, two SSE registers.
const LANES: usize = 8;

/// An output buffer of `n` floats that the caller overwrites completely before anything reads it. Not zeroed:
/// zeroing these kernels' outputs (a single-threaded memset per op, overwritten right after) was 7% of a UNet
/// forward. candle's own CPU kernels allocate their outputs the same way.
#[allow(clippy::uninit_vec)]
pub(crate) fn output_buffer(n: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(n);
    // SAFETY: f32 has no invalid bit patterns, and every caller writes all n elements before reading any.
    unsafe { v.set_len(n) };
    v
}

/// The f32 data of a contiguous CPU storage under its layout.
pub(crate) fn contiguous_f32<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(v) => v.as_slice(),
        _ => candle_core::bail!("{what}: f32 only"),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{what}: input must be contiguous"),
    }
}

/// eˣ for x in [-87.3, 88.7] (clamped outside): x = n·ln2 + r, |r| ≤ ln2/2, eʳ by a degree-6 polynomial (Cephes
/// `expf` coefficients), 2ⁿ through the exponent bits. Relative error < 2e-7. Branch-free, so loops over it vectorise.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Round to nearest by adding and removing 1.5·2²³ (no SSE4.1 `roundps` on the baseline target).
    const SHIFTER: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.7);
    let n = (x * LOG2E + SHIFTER) - SHIFTER;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5e-1;
    let e = p * r * r + r + 1.0;
    // 2ⁿ: n + 127 in the exponent field (n ∈ [-126, 128] after the clamp; 128 only for x ≥ 88.4, where the
    // product below is still finite because e < 1 there).
    let bits = ((n as i32 + 127).clamp(1, 254) as u32) << 23;
    e * f32::from_bits(bits) * if n > 127.0 { 2.0 } else { 1.0 }
}

/// erf(x), Abramowitz & Stegun 7.1.26 with our `exp`: absolute error < 1e-6 in f32 (1.5e-7 in exact arithmetic).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let y = 1.0 - poly * exp(-a * a);
    y.copysign(x)
}

/// GELU with the exact erf, as torch's default: `x/2 · (1 + erf(x/√2))`.
#[inline(always)]
pub fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// SiLU `x · σ(x)`.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

#[inline(always)]
fn max(a: &[f32]) -> f32 {
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
trait MulAdd {
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
}
struct Plain;
impl MulAdd for Plain {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}
#[cfg(target_arch = "x86_64")]
struct Fused;
#[cfg(target_arch = "x86_64")]
impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

/// Keys per score block: 4 independent LANES-wide accumulator chains hide the add latency.
const KEY_BLOCK: usize = 4 * LANES;

/// One head's rows of one attention problem. Rows of `q`, `v` and the output are `d` wide and `stride` apart (the
/// heads stay interleaved as the projections wrote them: (tokens, heads · d)); `kt` (d, m) are the transposed keys,
/// `vt` (d, m) optionally the transposed values (see `use_transposed_values`); `p` (m) is scratch.
/// Register-blocked for the auto-vectoriser: a block of KEY_BLOCK scores accumulates over the d channels in registers.
///
/// # Safety
/// `out` must be valid for writes of `rows` rows (`d` floats each, `stride` apart) that no one else accesses.
#[inline(always)]
unsafe fn attention_rows<F: MulAdd>(
    (q, kt, v, vt): Operands,
    out: *mut f32,
    rows: usize,
    (d, stride): (usize, usize),
    scale: f32,
    p: &mut [f32],
) {
    let m = p.len();
    if d == LANES && vt.is_none() && m.is_multiple_of(LANES) && m <= NARROW_MAX_KEYS {
        // SAFETY: forwarded contract.
        unsafe { attention_rows_narrow::<F>((q, kt, v), out, rows, m, stride, scale) };
        return;
    }
    let full = m - m % KEY_BLOCK;
    for i in 0..rows {
        let qi = &q[i * stride..][..d];
        // SAFETY: row i of this block, exclusively ours (the caller's contract).
        let oi = unsafe { std::slice::from_raw_parts_mut(out.add(i * stride), d) };
        // scores_j = q_i · k_j
        for j0 in (0..full).step_by(KEY_BLOCK) {
            let mut acc = [0f32; KEY_BLOCK];
            for (c, &qc) in qi.iter().enumerate() {
                let kc = &kt[c * m + j0..c * m + j0 + KEY_BLOCK];
                for l in 0..KEY_BLOCK {
                    acc[l] = F::mul_add(qc, kc[l], acc[l]);
                }
            }
            p[j0..j0 + KEY_BLOCK].copy_from_slice(&acc);
        }
        // Then LANES keys at a time (the temporal attention has m = frames, usually 8-16 keys), then the rest.
        let lanes_end = m - m % LANES;
        for j0 in (full..lanes_end).step_by(LANES) {
            let mut acc = [0f32; LANES];
            for (c, &qc) in qi.iter().enumerate() {
                let kc = &kt[c * m + j0..c * m + j0 + LANES];
                for l in 0..LANES {
                    acc[l] = F::mul_add(qc, kc[l], acc[l]);
                }
            }
            p[j0..j0 + LANES].copy_from_slice(&acc);
        }
        for j in lanes_end..m {
            p[j] = qi
                .iter()
                .enumerate()
                .fold(0.0, |a, (c, &qc)| F::mul_add(qc, kt[c * m + j], a));
        }
        // p = exp(scale · (scores − max)), sum (the max of the scaled scores is scale · max, scale > 0)
        let mx = max(p);
        let mut acc = [0f32; LANES];
        let mut sum = 0f32;
        let vec_end = m - m % LANES;
        for ch in p[..vec_end].chunks_exact_mut(LANES) {
            for l in 0..LANES {
                ch[l] = exp((ch[l] - mx) * scale);
                acc[l] += ch[l];
            }
        }
        for s in &mut p[vec_end..] {
            *s = exp((*s - mx) * scale);
            sum += *s;
        }
        let inv = 1.0 / (sum + acc.iter().sum::<f32>());
        match vt {
            Some(vt) => pv_transposed::<F>(p, vt, oi, inv),
            None => pv_rows::<F>(p, v, stride, oi, inv),
        }
    }
}

/// The most keys `attention_rows_narrow` takes (its score rows live on the stack).
const NARROW_MAX_KEYS: usize = 64;

/// Query rows, 4 at a time, for LANES-wide heads and a few keys (the temporal attention: heads of 8, 8-32 frames):
/// each key vector loaded for the scores and each value row loaded for the output serves four rows, and the four
/// rows' accumulator chains interleave. Same arithmetic per row as `attention_rows`.
///
/// # Safety
/// As `attention_rows`: `out` valid for `rows` exclusive rows of LANES floats, `stride` apart.
#[inline(always)]
unsafe fn attention_rows_narrow<F: MulAdd>(
    (q, kt, v): (&[f32], &[f32], &[f32]),
    out: *mut f32,
    rows: usize,
    m: usize,
    stride: usize,
    scale: f32,
) {
    const R: usize = 4;
    let mut p = [0f32; R * NARROW_MAX_KEYS];
    let mut i = 0;
    while i < rows {
        let live = (rows - i).min(R);
        // Rows past the end repeat the last live row (computed, never written).
        let row = |r: usize| (i + r.min(live - 1)) * stride;
        for j0 in (0..m).step_by(LANES) {
            let mut acc = [[0f32; LANES]; R];
            for c in 0..LANES {
                let kc = &kt[c * m + j0..][..LANES];
                for (r, ar) in acc.iter_mut().enumerate() {
                    let qc = q[row(r) + c];
                    for l in 0..LANES {
                        ar[l] = F::mul_add(qc, kc[l], ar[l]);
                    }
                }
            }
            for (r, ar) in acc.iter().enumerate() {
                p[r * m + j0..][..LANES].copy_from_slice(ar);
            }
        }
        let mut inv = [0f32; R];
        for (r, iv) in inv.iter_mut().enumerate() {
            let pr = &mut p[r * m..(r + 1) * m];
            let mx = max(pr);
            let mut acc = [0f32; LANES];
            for ch in pr.chunks_exact_mut(LANES) {
                for l in 0..LANES {
                    ch[l] = exp((ch[l] - mx) * scale);
                    acc[l] += ch[l];
                }
            }
            *iv = 1.0 / acc.iter().sum::<f32>();
        }
        let mut acc = [[0f32; LANES]; R];
        for j in 0..m {
            let vr = &v[j * stride..][..LANES];
            for (r, ar) in acc.iter_mut().enumerate() {
                let pj = p[r * m + j];
                for l in 0..LANES {
                    ar[l] = F::mul_add(pj, vr[l], ar[l]);
                }
            }
        }
        for (r, ar) in acc.iter().enumerate().take(live) {
            // SAFETY: row i + r < rows of this block, exclusively ours (the caller's contract).
            let o = unsafe { std::slice::from_raw_parts_mut(out.add((i + r) * stride), LANES) };
            for l in 0..LANES {
                o[l] = ar[l] * inv[r];
            }
        }
        i += R;
    }
}

/// `out = inv · Σ_j p_j v_j` with value rows `stride` apart: LANES channels at a time are one vector multiply-add per
/// key, with four register accumulators over consecutive keys to hide the add latency. Best when d is a multiple
/// of LANES and the keys are few (temporal attention) or the heads wide.
#[inline(always)]
fn pv_rows<F: MulAdd>(p: &[f32], v: &[f32], stride: usize, oi: &mut [f32], inv: f32) {
    let (m, d) = (p.len(), oi.len());
    let mut c0 = 0;
    while c0 + LANES <= d {
        let mut a = [[0f32; LANES]; 4];
        let mut j = 0;
        while j + 4 <= m {
            for (r, ar) in a.iter_mut().enumerate() {
                let pj = p[j + r];
                let vr = &v[(j + r) * stride + c0..][..LANES];
                for l in 0..LANES {
                    ar[l] = F::mul_add(pj, vr[l], ar[l]);
                }
            }
            j += 4;
        }
        for jj in j..m {
            let pj = p[jj];
            let vr = &v[jj * stride + c0..][..LANES];
            for l in 0..LANES {
                a[0][l] = F::mul_add(pj, vr[l], a[0][l]);
            }
        }
        for l in 0..LANES {
            oi[c0 + l] = (a[0][l] + a[1][l] + (a[2][l] + a[3][l])) * inv;
        }
        c0 += LANES;
    }
    for c in c0..d {
        oi[c] = (0..m).fold(0.0, |acc, j| F::mul_add(p[j], v[j * stride + c], acc)) * inv;
    }
}

/// `out_c = inv · p · vᵀ_c` with `vt` (d, m): four channels per pass over the keys, LANES keys per vector. Best for
/// many keys and narrow heads (spatial attention at full resolution with 8-wide heads), where `pv_rows` would load
/// a broadcast weight and a value vector for every multiply-add.
#[inline(always)]
fn pv_transposed<F: MulAdd>(p: &[f32], vt: &[f32], oi: &mut [f32], inv: f32) {
    let (m, d) = (p.len(), oi.len());
    let vec_end = m - m % LANES;
    let mut c = 0;
    while c + 4 <= d {
        let mut a = [[0f32; LANES]; 4];
        for j0 in (0..vec_end).step_by(LANES) {
            let pc = &p[j0..j0 + LANES];
            for (r, ar) in a.iter_mut().enumerate() {
                let vc = &vt[(c + r) * m + j0..][..LANES];
                for l in 0..LANES {
                    ar[l] = F::mul_add(pc[l], vc[l], ar[l]);
                }
            }
        }
        for (r, ar) in a.iter().enumerate() {
            let tail = (vec_end..m).fold(0.0, |acc, j| F::mul_add(p[j], vt[(c + r) * m + j], acc));
            oi[c + r] = (ar.iter().sum::<f32>() + tail) * inv;
        }
        c += 4;
    }
    for c in c..d {
        oi[c] = (0..m).fold(0.0, |acc, j| F::mul_add(p[j], vt[c * m + j], acc)) * inv;
    }
}

/// Whether the value product reads transposed values (`pv_transposed`) rather than value rows (`pv_rows`).
fn use_transposed_values(d: usize, m: usize) -> bool {
    m >= 64 && (d < LANES || d <= 16)
}

/// xᵀ (d, m) of one head's m key or value rows (`d` wide, `stride` apart), so that the loops over keys read them
/// contiguously.
fn transpose(x: &[f32], (d, stride): (usize, usize), m: usize, xt: &mut [f32]) {
    for j in 0..m {
        for c in 0..d {
            xt[c * m + j] = x[j * stride + c];
        }
    }
}

thread_local! {
    /// Per-thread scratch: transposed keys and one score row (thousands of tiny temporal-attention problems per
    /// call would otherwise allocate two buffers each).
    static ATTN_SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// `f(kt (kt_len), p (m))` on this thread's scratch.
fn with_scratch<R>(kt_len: usize, m: usize, f: impl FnOnce(&mut [f32], &mut [f32]) -> R) -> R {
    ATTN_SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        let (kt, p) = &mut *s;
        for (buf, n) in [(&mut *kt, kt_len), (&mut *p, m)] {
            if buf.len() < n {
                buf.resize(n, 0.0);
            }
        }
        f(&mut kt[..kt_len], &mut p[..m])
    })
}

/// (q, kᵀ, v, vᵀ) of one head: q and v from the head's first row (rows `stride` apart), kᵀ (d, m), optional vᵀ (d, m).
type Operands<'a> = (&'a [f32], &'a [f32], &'a [f32], Option<&'a [f32]>);

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attention_rows_avx2(
    ops: Operands,
    out: *mut f32,
    rows: usize,
    dims: (usize, usize),
    scale: f32,
    p: &mut [f32],
) {
    // SAFETY: forwarded contract of `attention_rows`.
    unsafe { attention_rows::<Fused>(ops, out, rows, dims, scale, p) }
}

/// `attention_rows` with the AVX2 + FMA build where `avx` says the CPU has it.
///
/// # Safety
/// As `attention_rows`: `out` valid for `rows` exclusive rows.
unsafe fn attention_dispatch(
    avx: bool,
    ops: Operands,
    out: *mut f32,
    rows: usize,
    dims: (usize, usize),
    scale: f32,
    p: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if avx {
        // SAFETY: the caller checked that the CPU has AVX2 and FMA; `out` as the caller promised.
        unsafe { attention_rows_avx2(ops, out, rows, dims, scale, p) };
        return;
    }
    let _ = avx;
    // SAFETY: as the caller promised.
    unsafe { attention_rows::<Plain>(ops, out, rows, dims, scale, p) }
}

/// The output pointer shared by the parallel tasks, each of which writes its own rows of one head.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint elements (distinct (batch, row, head) triples) and nothing reads them meanwhile.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer (a method, so that closures capture the whole `Sync` wrapper, not its raw field).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Whether this CPU runs the AVX2 + FMA builds of the kernels.
pub fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Multi-head `softmax(scale · q kᵀ) v` on the projections' own layout: q (b, n, heads · d), k and v
/// (b, m, heads · d), output (b, n, heads · d). Working on interleaved heads saves the four copies that splitting
/// and merging heads would cost.
struct Attention {
    heads: usize,
    scale: f32,
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "vadapt-fused-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let q = contiguous_f32(s1, l1, "attention q")?;
        let k = contiguous_f32(s2, l2, "attention k")?;
        let v = contiguous_f32(s3, l3, "attention v")?;
        let (b, n, width) = l1.shape().dims3()?;
        let (kb, m, kw) = l2.shape().dims3()?;
        let heads = self.heads;
        if l3.shape().dims3()? != (kb, m, kw)
            || kb != b
            || kw != width
            || m == 0
            || heads == 0
            || width % heads != 0
        {
            candle_core::bail!(
                "attention: q {:?}, k {:?}, v {:?}, {heads} heads",
                l1.shape(),
                l2.shape(),
                l3.shape()
            );
        }
        let d = width / heads;
        if d == 0 {
            candle_core::bail!("attention: {width} channels for {heads} heads");
        }
        let mut out = output_buffer(b * n * width);
        let out_ptr = OutPtr(out.as_mut_ptr());
        // Row blocks keep every thread busy when there are few long sequences (spatial attention: b·f·heads of 960
        // rows); many short ones (temporal: b·h·w·heads of 16 rows) make whole-sequence tasks.
        let rows = (65536 / m).clamp(1, n.max(1));
        let avx = has_avx2_fma();
        let scale = self.scale;
        let transposed_v = use_transposed_values(d, m);
        let dims = (d, width);
        (0..b * heads).into_par_iter().for_each(|s| {
            let (bi, h) = (s / heads, s % heads);
            let qs = &q[bi * n * width + h * d..];
            let (ks, vs) = (&k[bi * m * width + h * d..], &v[bi * m * width + h * d..]);
            let out_at = |row: usize| {
                // SAFETY: in bounds: row < n, so the offset is inside batch item bi's (n, width) block.
                unsafe { out_ptr.get().add(bi * n * width + row * width + h * d) }
            };
            let kv_len = if transposed_v { 2 * d * m } else { d * m };
            if rows >= n {
                with_scratch(kv_len, m, |kvt, p| {
                    let (kt, vt) = kvt.split_at_mut(d * m);
                    transpose(ks, dims, m, kt);
                    if transposed_v {
                        transpose(vs, dims, m, vt);
                    }
                    let vt = transposed_v.then_some(&*vt);
                    // SAFETY: rows 0..n of head h in batch item bi belong to this task alone.
                    unsafe {
                        attention_dispatch(avx, (qs, kt, vs, vt), out_at(0), n, dims, scale, p)
                    }
                });
                return;
            }
            let mut kvt = vec![0f32; kv_len];
            let (kt, vt) = kvt.split_at_mut(d * m);
            transpose(ks, dims, m, kt);
            if transposed_v {
                transpose(vs, dims, m, vt);
            }
            let (kt, vt) = (&*kt, transposed_v.then_some(&*vt));
            (0..n.div_ceil(rows)).into_par_iter().for_each(|blk| {
                let (r0, len) = (blk * rows, rows.min(n - blk * rows));
                with_scratch(0, m, |_, p| {
                    // SAFETY: rows r0..r0+len of head h in batch item bi belong to this task alone.
                    unsafe {
                        attention_dispatch(
                            avx,
                            (&qs[r0 * width..], kt, vs, vt),
                            out_at(r0),
                            len,
                            dims,
                            scale,
                            p,
                        )
                    }
                })
            });
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Apply an inference-only three-input op to contiguous copies (views when already contiguous) of its inputs.
pub(crate) fn apply3(
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    op: &impl CustomOp3,
) -> candle_core::Result<Tensor> {
    a.contiguous()?
        .apply_op3_no_bwd(&b.contiguous()?, &c.contiguous()?, op)
}

/// Multi-head `softmax(scale · q kᵀ) v` for f32 CPU tensors q (b, n, heads · d), k and v (b, m, heads · d), heads
/// interleaved as a linear projection writes them; returns (b, n, heads · d).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f32,
) -> candle_core::Result<Tensor> {
    apply3(q, k, v, &Attention { heads, scale })
}

/// `h · gelu_erf(gate)` where the last axis of the input is `[h, gate]` (2·inner wide).
struct Geglu;

#[inline(always)]
fn geglu_rows(x: &[f32], out: &mut [f32], inner: usize) {
    for (xr, or) in x.chunks_exact(2 * inner).zip(out.chunks_exact_mut(inner)) {
        let (h, g) = xr.split_at(inner);
        for ((o, &hv), &gv) in or.iter_mut().zip(h).zip(g) {
            *o = hv * gelu_erf(gv);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn geglu_rows_avx2(x: &[f32], out: &mut [f32], inner: usize) {
    geglu_rows(x, out, inner)
}

impl CustomOp1 for Geglu {
    fn name(&self) -> &'static str {
        "vadapt-geglu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, "geglu")?;
        let dims = l.shape().dims();
        let last = *dims.last().unwrap_or(&0);
        if last == 0 || !last.is_multiple_of(2) {
            candle_core::bail!("geglu: last axis {last} is not [h, gate]");
        }
        let inner = last / 2;
        let mut out = output_buffer(x.len() / 2);
        let rows = (16384 / last).max(1);
        let avx = has_avx2_fma();
        out.par_chunks_mut(rows * inner)
            .zip(x.par_chunks(rows * last))
            .for_each(|(o, xb)| {
                #[cfg(target_arch = "x86_64")]
                if avx {
                    // SAFETY: the CPU has AVX2 and FMA (checked above).
                    unsafe { geglu_rows_avx2(xb, o, inner) };
                    return;
                }
                let _ = avx;
                geglu_rows(xb, o, inner)
            });
        let mut shape = dims.to_vec();
        if let Some(l) = shape.last_mut() {
            *l = inner;
        }
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }
}

/// GEGLU of a f32 CPU tensor whose last axis is `[h, gate]`: `h · gelu_erf(gate)`, half as wide.
pub fn geglu(x: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&Geglu)
}

/// One GroupNorm block (one batch item, one group: `cg` channels of `s` positions), optionally followed by SiLU:
/// `y = (x − μ) / sqrt(σ² + eps) · γ_c + β_c` with the biased variance from a second pass, as torch. `gamma`/`beta`
/// are the group's `cg` channel parameters.
#[inline(always)]
fn group_norm_block_impl<F: MulAdd>(
    x: &[f32],
    y: &mut [f32],
    gamma: &[f32],
    beta: &[f32],
    s: usize,
    eps: f32,
    with_silu: bool,
) {
    let n = x.len() as f32;
    let mean = sum(x) / n;
    let mut acc = [0f32; LANES];
    let ch = x.chunks_exact(LANES);
    let mut tail = 0f32;
    for v in ch.remainder() {
        tail += (v - mean) * (v - mean);
    }
    for c in ch {
        for l in 0..LANES {
            let d = c[l] - mean;
            acc[l] = F::mul_add(d, d, acc[l]);
        }
    }
    let var = (acc.iter().sum::<f32>() + tail) / n;
    let rstd = 1.0 / (var + eps).sqrt();
    for (k, (&g, &b)) in gamma.iter().zip(beta).enumerate() {
        // y = x · a + c with a = rstd·γ, c = β − μ·a
        let a = rstd * g;
        let c = b - mean * a;
        let (xs, ys) = (&x[k * s..(k + 1) * s], &mut y[k * s..(k + 1) * s]);
        if with_silu {
            for (yv, &xv) in ys.iter_mut().zip(xs) {
                *yv = silu(F::mul_add(xv, a, c));
            }
        } else {
            for (yv, &xv) in ys.iter_mut().zip(xs) {
                *yv = F::mul_add(xv, a, c);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn group_norm_block_avx2(
    x: &[f32],
    y: &mut [f32],
    gamma: &[f32],
    beta: &[f32],
    s: usize,
    eps: f32,
    with_silu: bool,
) {
    group_norm_block_impl::<Fused>(x, y, gamma, beta, s, eps, with_silu)
}

/// One GroupNorm block (see `group_norm_block_impl`), with the AVX2 + FMA build where the CPU has it.
pub(crate) fn group_norm_block(
    x: &[f32],
    y: &mut [f32],
    gamma: &[f32],
    beta: &[f32],
    s: usize,
    eps: f32,
    with_silu: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked).
        unsafe { group_norm_block_avx2(x, y, gamma, beta, s, eps, with_silu) };
        return;
    }
    group_norm_block_impl::<Plain>(x, y, gamma, beta, s, eps, with_silu)
}

#[inline(always)]
fn sum(a: &[f32]) -> f32 {
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

/// `dst += lhs · rhs` for an (m, k) lhs and a (k, n) rhs into an (m, n) dst whose rows are `dst_rs` apart and
/// contiguous; lhs and rhs strides are (column, row). The one GEMM call of the conv, temporal conv and linear kernels.
///
/// # Safety
/// Every addressed element of the three matrices must be in bounds, and dst must not alias lhs or rhs.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_accumulate(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    lhs: *const f32,
    (lhs_cs, lhs_rs): (usize, usize),
    rhs: *const f32,
    (rhs_cs, rhs_rs): (usize, usize),
    parallelism: gemm::Parallelism,
) {
    // SAFETY: forwarded contract; read_dst = true with alpha = beta = 1 is dst = dst + lhs·rhs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            true,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// For each batch item: fill its `o` output rows of `cols` with the bias, then let `accumulate(out_item, in_item,
/// parallelism)` add its GEMMs. Items run in parallel with one-thread GEMMs when there are at least as many as
/// threads (frames are in the batch); otherwise one at a time with a parallel GEMM.
fn per_item_with_bias(
    out: &mut [f32],
    x: &[f32],
    in_item: usize,
    bias: &[f32],
    cols: usize,
    accumulate: impl Fn(&mut [f32], &[f32], gemm::Parallelism) + Sync,
) {
    let (o, b) = (bias.len(), x.len() / in_item.max(1));
    let threads = rayon::current_num_threads();
    let one = |(ob, xb): (&mut [f32], &[f32]), par| {
        for (oc, &bv) in ob.chunks_exact_mut(cols).zip(bias) {
            oc.fill(bv);
        }
        accumulate(ob, xb, par)
    };
    if b >= threads {
        out.par_chunks_mut(o * cols)
            .zip(x.par_chunks(in_item))
            .for_each(|item| one(item, gemm::Parallelism::None));
    } else {
        out.chunks_mut(o * cols)
            .zip(x.chunks(in_item))
            .for_each(|item| one(item, gemm::Parallelism::Rayon(threads)));
    }
}

/// `conv2d` (groups 1, dilation 1) as one GEMM per image: `out (O, HW) = W (O, C·kh·kw) · cols (C·kh·kw, HW) + b`,
/// where `cols` row (c, ky, kx) is input channel c shifted by (ky − p, kx − p): built from row-segment copies (the
/// channel-major layout makes the GEMM's output NCHW directly, no transposes). candle's CPU im2col writes one
/// element at a time with index arithmetic and was a quarter of a UNet forward.
struct Conv2d {
    stride: usize,
    padding: usize,
}

thread_local! {
    static COLS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[allow(clippy::too_many_arguments)]
fn im2col(
    x: &[f32],
    cols: &mut [f32],
    (c, h, w): (usize, usize, usize),
    (kh, kw): (usize, usize),
    (ho, wo): (usize, usize),
    s: usize,
    p: usize,
) {
    let hw = ho * wo;
    for ci in 0..c {
        let plane = &x[ci * h * w..(ci + 1) * h * w];
        for ky in 0..kh {
            for kx in 0..kw {
                let row = &mut cols[((ci * kh + ky) * kw + kx) * hw..][..hw];
                for oy in 0..ho {
                    let out = &mut row[oy * wo..(oy + 1) * wo];
                    let iy = (oy * s + ky) as isize - p as isize;
                    if iy < 0 || iy >= h as isize {
                        out.fill(0.0);
                        continue;
                    }
                    let src = &plane[iy as usize * w..(iy as usize + 1) * w];
                    if s == 1 {
                        // ix = ox + kx − p is valid for ox in [lo, hi)
                        let lo = p.saturating_sub(kx).min(wo);
                        let hi = (w + p).saturating_sub(kx).min(wo).max(lo);
                        out[..lo].fill(0.0);
                        out[hi..].fill(0.0);
                        out[lo..hi].copy_from_slice(&src[lo + kx - p..hi + kx - p]);
                    } else {
                        for (ox, o) in out.iter_mut().enumerate() {
                            let ix = (ox * s + kx) as isize - p as isize;
                            *o = if ix < 0 || ix >= w as isize {
                                0.0
                            } else {
                                src[ix as usize]
                            };
                        }
                    }
                }
            }
        }
    }
}

impl CustomOp3 for Conv2d {
    fn name(&self) -> &'static str {
        "vadapt-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "conv2d input")?;
        let wt = contiguous_f32(s2, l2, "conv2d weight")?;
        let bias = contiguous_f32(s3, l3, "conv2d bias")?;
        let (b, c, h, w) = l1.shape().dims4()?;
        let (o, wc, kh, kw) = l2.shape().dims4()?;
        let (s, p) = (self.stride.max(1), self.padding);
        if wc != c || bias.len() != o || h + 2 * p < kh || w + 2 * p < kw {
            candle_core::bail!(
                "conv2d: input {:?}, weight {:?}, bias {}",
                l1.shape(),
                l2.shape(),
                bias.len()
            );
        }
        let (ho, wo) = ((h + 2 * p - kh) / s + 1, (w + 2 * p - kw) / s + 1);
        let (k, hw) = (c * kh * kw, ho * wo);
        let pointwise = kh == 1 && kw == 1 && s == 1 && p == 0;
        let mut out = output_buffer(b * o * hw);
        per_item_with_bias(&mut out, x, c * h * w, bias, hw, |ob, xb, par| {
            // SAFETY: dst (o, hw), lhs the (o, k) weight, rhs cols (k, hw), all row-major and in bounds.
            let mut run = |cols: &[f32]| unsafe {
                gemm_accumulate(
                    (o, hw, k),
                    ob.as_mut_ptr(),
                    hw,
                    wt.as_ptr(),
                    (1, k),
                    cols.as_ptr(),
                    (1, hw),
                    par,
                )
            };
            if pointwise {
                run(xb);
            } else {
                COLS.with(|buf| {
                    let mut buf = buf.borrow_mut();
                    if buf.len() < k * hw {
                        buf.resize(k * hw, 0.0);
                    }
                    im2col(xb, &mut buf[..k * hw], (c, h, w), (kh, kw), (ho, wo), s, p);
                    run(&buf[..k * hw]);
                });
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, o, ho, wo))))
    }
}

/// 2-D convolution of a f32 CPU (b, c, h, w) input with an (o, c, kh, kw) weight and an (o,) bias; square stride
/// and zero padding, groups 1, dilation 1. Inference only (no backward).
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    padding: usize,
) -> candle_core::Result<Tensor> {
    apply3(x, weight, bias, &Conv2d { stride, padding })
}

/// The ModelScope temporal convolution, a Conv3d with kernel (3, 1, 1) and padding (1, 0, 0) on (b, c, f, h·w):
/// `y[t] = W₀ x[t−1] + W₁ x[t] + W₂ x[t+1] + b` (zero frames outside). With frames·pixels as the GEMM's columns a
/// frame shift is a column offset of h·w, so the three taps are three GEMMs accumulating into the bias-filled
/// output over column ranges: no stacked taps, shifted copies or zero frames.
struct TemporalConv;

impl CustomOp3 for TemporalConv {
    fn name(&self) -> &'static str {
        "vadapt-temporal-conv"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "temporal conv input")?;
        let wt = contiguous_f32(s2, l2, "temporal conv weight")?;
        let bias = contiguous_f32(s3, l3, "temporal conv bias")?;
        let (b, c, f, hw) = l1.shape().dims4()?;
        let wd = l2.shape().dims();
        if wd.len() != 5
            || wd[1] != c
            || wd[2] != 3
            || wd[3] != 1
            || wd[4] != 1
            || bias.len() != wd[0]
        {
            candle_core::bail!(
                "temporal conv: input {:?}, weight {:?}, bias {}",
                l1.shape(),
                l2.shape(),
                bias.len()
            );
        }
        let o = wd[0];
        let cols = f * hw;
        let mut out = output_buffer(b * o * cols);
        per_item_with_bias(&mut out, x, c * cols, bias, cols, |ob, xb, par| {
            // (tap, output column offset, input column offset, columns)
            let shifted = cols.saturating_sub(hw);
            for (tap, dst_off, src_off, n) in
                [(0, hw, 0, shifted), (1, 0, 0, cols), (2, 0, hw, shifted)]
            {
                if n == 0 {
                    continue;
                }
                // SAFETY: dst rows of `cols` floats from `dst_off`, n ≤ cols − dst_off columns; lhs W[:, :, tap] with
                // column stride 3 and row stride 3c inside the (o, c, 3) weight; rhs rows of `cols` from `src_off`.
                unsafe {
                    gemm_accumulate(
                        (o, n, c),
                        ob.as_mut_ptr().add(dst_off),
                        cols,
                        wt.as_ptr().add(tap),
                        (3, 3 * c),
                        xb.as_ptr().add(src_off),
                        (1, cols),
                        par,
                    )
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, o, f, hw))))
    }
}

/// Temporal (3, 1, 1) convolution of a f32 CPU (b, c, f, h·w) input with an (o, c, 3, 1, 1) weight and (o,) bias.
/// Inference only (no backward).
pub fn temporal_conv(x: &Tensor, weight: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    apply3(x, weight, bias, &TemporalConv)
}

/// `y = x Wᵀ + b (+ residual)` over every row of x at once. candle-nn's `Linear` on a (batch, n, i) input runs one
/// GEMM per batch item (the temporal transformers have batch = pixels · heads of 16-row problems) and adds the bias
/// and the residual in two more passes; here the output starts as `residual + b` and one GEMM accumulates into it.
struct LinearOp {
    bias: Option<Tensor>,
    residual: Option<Tensor>,
}

/// The contiguous f32 CPU data of `t`, for `f`.
fn with_f32<R>(
    t: &Tensor,
    what: &str,
    f: impl FnOnce(&[f32]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(cpu) => f(contiguous_f32(cpu, layout, what)?),
        _ => candle_core::bail!("{what}: CPU tensors only"),
    }
}

impl candle_core::CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "vadapt-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "linear input")?;
        let w = contiguous_f32(s2, l2, "linear weight")?;
        let (o, i) = l2.shape().dims2()?;
        let dims = l1.shape().dims();
        if dims.last() != Some(&i) {
            candle_core::bail!("linear: input {:?} for weight {:?}", l1.shape(), l2.shape());
        }
        let rows = x.len() / i.max(1);
        let read_dst = self.residual.is_some() || self.bias.is_some();
        // With an initial value every element is written before the GEMM reads it; without, gemm's alpha = 0 path
        // still multiplies what is there (0 · NaN is NaN), so that buffer starts zeroed.
        let mut out = if read_dst {
            output_buffer(rows * o)
        } else {
            vec![0f32; rows * o]
        };
        let block = (16384 / o.max(1)).max(1) * o;
        let init = |out: &mut [f32], residual: Option<&[f32]>, bias: Option<&[f32]>| {
            out.par_chunks_mut(block)
                .enumerate()
                .for_each(|(bi, ob)| match (residual, bias) {
                    (Some(r), b) => {
                        ob.copy_from_slice(&r[bi * block..bi * block + ob.len()]);
                        if let Some(b) = b {
                            for row in ob.chunks_exact_mut(o) {
                                row.iter_mut().zip(b).for_each(|(y, b)| *y += b);
                            }
                        }
                    }
                    (None, Some(b)) => ob
                        .chunks_exact_mut(o)
                        .for_each(|row| row.copy_from_slice(b)),
                    (None, None) => {}
                })
        };
        let checked = |t: &Tensor, n: usize, what: &str| -> candle_core::Result<()> {
            if t.elem_count() != n {
                candle_core::bail!("linear: {what} has {} values, expected {n}", t.elem_count());
            }
            Ok(())
        };
        match (&self.residual, &self.bias) {
            (Some(r), Some(b)) => {
                checked(r, rows * o, "residual")?;
                checked(b, o, "bias")?;
                with_f32(r, "linear residual", |r| {
                    with_f32(b, "linear bias", |b| {
                        init(&mut out, Some(r), Some(b));
                        Ok(())
                    })
                })?
            }
            (Some(r), None) => {
                checked(r, rows * o, "residual")?;
                with_f32(r, "linear residual", |r| {
                    init(&mut out, Some(r), None);
                    Ok(())
                })?
            }
            (None, Some(b)) => {
                checked(b, o, "bias")?;
                with_f32(b, "linear bias", |b| {
                    init(&mut out, None, Some(b));
                    Ok(())
                })?
            }
            (None, None) => {}
        }
        let threads = rayon::current_num_threads();
        let par = if rows * o * i >= 1 << 16 && threads > 1 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        // SAFETY: dst (rows, o) row-major; lhs x (rows, i) row-major; rhs Wᵀ (i, o) read from the (o, i) weight with
        // column stride i and row stride 1; every index is in bounds.
        unsafe {
            gemm_accumulate(
                (rows, o, i),
                out.as_mut_ptr(),
                o,
                x.as_ptr(),
                (1, i),
                w.as_ptr(),
                (i, 1),
                par,
            )
        }
        let mut shape = dims.to_vec();
        if let Some(l) = shape.last_mut() {
            *l = o;
        }
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }
}

/// `x Wᵀ + b + residual` for f32 CPU tensors: x (..., i), W (o, i), b (o,), residual of the output's shape.
/// Inference only (no backward).
pub fn linear(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let op = LinearOp {
        bias: bias.map(|b| b.contiguous()).transpose()?,
        residual: residual.map(|r| r.contiguous()).transpose()?,
    };
    x.contiguous()?.apply_op2_no_bwd(&weight.contiguous()?, &op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Module, D};

    use crate::models::max_abs_diff;

    #[test]
    fn exp_and_erf_are_accurate() {
        let mut worst_exp = 0f64;
        let mut worst_erf = 0f64;
        for i in 0..=200_000 {
            // Compare at the f32 input (its rounding alone moves e^x by up to 4e-6 relative at |x| ≈ 87).
            let x = ((-87.0 + 175.0 * i as f64 / 200_000.0) as f32) as f64;
            let rel = ((exp(x as f32) as f64) - x.exp()).abs() / x.exp();
            worst_exp = worst_exp.max(rel);
            let y = ((-6.0 + 12.0 * i as f64 / 200_000.0) as f32) as f64;
            worst_erf = worst_erf.max((erf(y as f32) as f64 - libm_erf(y)).abs());
        }
        assert!(worst_exp < 4e-7, "exp relative error {worst_exp}");
        assert!(worst_erf < 1e-6, "erf absolute error {worst_erf}");
        assert_eq!(exp(-1000.0), exp(-87.3));
        assert!(exp(-1000.0) < 1e-37);
        assert!(exp(1000.0).is_finite());
    }

    fn libm_erf(x: f64) -> f64 {
        // erf through the complementary error function of the standard library's f64 (via candle's erf op).
        let t = Tensor::new(&[x], &Device::Cpu).unwrap().erf().unwrap();
        t.to_vec1::<f64>().unwrap()[0]
    }

    #[test]
    fn attention_matches_softmax_matmul() {
        let dev = Device::Cpu;
        for (seqs, n, m, d) in [
            (3, 37, 29, 8),
            (2, 5, 1, 3),
            (40, 16, 16, 8),
            (5, 7, 24, 8),
            (2, 3, 64, 8),
            (1, 300, 77, 16),
            (2, 70, 130, 8),
            (2, 9, 70, 24),
        ] {
            let q = Tensor::randn(0f32, 1.0, (seqs, n, d), &dev).unwrap();
            let k = Tensor::randn(0f32, 1.0, (seqs, m, d), &dev).unwrap();
            let v = Tensor::randn(0f32, 1.0, (seqs, m, d), &dev).unwrap();
            let scores = (q.matmul(&k.t().unwrap()).unwrap() * 0.5).unwrap();
            let reference = candle_nn::ops::softmax(&scores, D::Minus1)
                .unwrap()
                .matmul(&v)
                .unwrap();
            let ours = attention(&q, &k, &v, 1, 0.5).unwrap();
            let diff = max_abs_diff(&reference, &ours);
            assert!(diff < 2e-6, "({seqs}, {n}, {m}, {d}): {diff}");
        }
    }

    /// Interleaved heads (b, n, heads · d) give the per-head results of split heads.
    #[test]
    fn attention_on_interleaved_heads_matches_split_heads() {
        let dev = Device::Cpu;
        for (b, n, m, heads, d) in [
            (2, 30, 20, 3, 8),
            (1, 7, 100, 2, 8),
            (3, 16, 16, 4, 5),
            (2, 13, 16, 3, 8),
        ] {
            let q = Tensor::randn(0f32, 1.0, (b, n, heads * d), &dev).unwrap();
            let k = Tensor::randn(0f32, 1.0, (b, m, heads * d), &dev).unwrap();
            let v = Tensor::randn(0f32, 1.0, (b, m, heads * d), &dev).unwrap();
            let split = |x: &Tensor, len: usize| {
                x.reshape((b, len, heads, d))
                    .unwrap()
                    .transpose(1, 2)
                    .unwrap()
                    .contiguous()
                    .unwrap()
                    .reshape((b * heads, len, d))
                    .unwrap()
            };
            let per_head = attention(&split(&q, n), &split(&k, m), &split(&v, m), 1, 0.3).unwrap();
            let merged = per_head
                .reshape((b, heads, n, d))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
                .reshape((b, n, heads * d))
                .unwrap();
            let ours = attention(&q, &k, &v, heads, 0.3).unwrap();
            let diff = max_abs_diff(&merged, &ours);
            assert!(diff < 1e-6, "({b}, {n}, {m}, {heads}, {d}): {diff}");
        }
    }

    #[test]
    fn conv2d_matches_candle() {
        let dev = Device::Cpu;
        for (b, c, h, w, o, k, stride, pad) in [
            (3, 5, 9, 11, 7, 3, 1, 1),
            (1, 4, 8, 10, 6, 3, 2, 1),
            (2, 6, 7, 5, 3, 1, 1, 0),
            (4, 2, 5, 6, 3, 3, 1, 0),
        ] {
            let x = Tensor::randn(0f32, 1.0, (b, c, h, w), &dev).unwrap();
            let wt = Tensor::randn(0f32, 0.3, (o, c, k, k), &dev).unwrap();
            let bias = Tensor::randn(0f32, 1.0, o, &dev).unwrap();
            let reference = x
                .conv2d(&wt, pad, stride, 1, 1)
                .unwrap()
                .broadcast_add(&bias.reshape((1, o, 1, 1)).unwrap())
                .unwrap();
            let ours = conv2d(&x, &wt, &bias, stride, pad).unwrap();
            assert_eq!(ours.dims(), reference.dims());
            let diff = max_abs_diff(&reference, &ours);
            assert!(diff < 1e-5, "{b}x{c}x{h}x{w} k{k} s{stride} p{pad}: {diff}");
        }
    }

    #[test]
    fn linear_matches_candle_nn() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (5, 7, 12), &dev).unwrap();
        let w = Tensor::randn(0f32, 0.3, (9, 12), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, 9, &dev).unwrap();
        let r = Tensor::randn(0f32, 1.0, (5, 7, 9), &dev).unwrap();
        let with_bias = candle_nn::Linear::new(w.clone(), Some(b.clone()))
            .forward(&x)
            .unwrap();
        let no_bias = candle_nn::Linear::new(w.clone(), None).forward(&x).unwrap();
        for (ours, reference) in [
            (linear(&x, &w, Some(&b), None).unwrap(), with_bias.clone()),
            (linear(&x, &w, None, None).unwrap(), no_bias.clone()),
            (
                linear(&x, &w, Some(&b), Some(&r)).unwrap(),
                (&with_bias + &r).unwrap(),
            ),
            (
                linear(&x, &w, None, Some(&r)).unwrap(),
                (&no_bias + &r).unwrap(),
            ),
        ] {
            assert_eq!(ours.dims(), &[5, 7, 9]);
            let diff = max_abs_diff(&reference, &ours);
            assert!(diff < 1e-5, "{diff}");
        }
        assert!(
            linear(&x, &w, Some(&r), None).is_err(),
            "a bias of the wrong size is refused"
        );
    }

    #[test]
    fn geglu_matches_composed_ops() {
        let dev = Device::Cpu;
        let x = (Tensor::randn(0f32, 1.0, (2, 7, 2 * 24), &dev).unwrap() * 3.0).unwrap();
        let h = x.narrow(2, 0, 24).unwrap();
        let g = x.narrow(2, 24, 24).unwrap();
        let reference = (h * g.gelu_erf().unwrap()).unwrap();
        let diff = max_abs_diff(&reference, &geglu(&x).unwrap());
        assert!(diff < 5e-6, "{diff}");
    }
}
