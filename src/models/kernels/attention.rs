//! Multi-head attention `softmax(scale · q kᵀ) v` (Vaswani et al. 2017, eq. 1; diffusers' `AttnProcessor2_0`) on
//! the projections' own layout: q (b, n, heads · d), k and v (b, m, heads · d), heads interleaved as the linear
//! projections write them. `attention` picks the path: the fused CPU kernel for f32 inference, candle's batched
//! matmuls and a softmax (differentiable) otherwise.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::activation::exp;
use super::attention_grad;
use super::cpu::{
    apply3_differentiable, contiguous_f32, fused_f32_cpu, has_avx2_fma, has_avx512f, output_buffer,
    OutPtr,
};
#[cfg(target_arch = "x86_64")]
use super::portable::Fused;
use super::portable::{max, transpose, MulAdd, Plain, LANES};

/// Upper bound of one attention score block of the composed path on the CPU (see `attention_composed`).
const SCORE_CHUNK_BYTES: usize = 8 << 20;
/// The same bound on a GPU: there the cost is one matmul / softmax launch per block, and a ModelScope-size spatial
/// attention (2560 tokens, 13 MB of BF16 scores per head and frame) would otherwise launch one per sequence.
const DEVICE_SCORE_CHUNK_BYTES: usize = 1 << 30;

/// `softmax(scale · q kᵀ) v` over `heads` interleaved heads: q (b, n, heads · d), k and v (b, m, heads · d); returns
/// (b, n, heads · d), ready for the output projection. The fused kernel (`fused_attention`, with its backward while
/// training) where q is f32 on the CPU; split heads, batched matmuls and a softmax otherwise (F16/BF16, CUDA).
pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
) -> candle_core::Result<Tensor> {
    if fused_f32_cpu(q) {
        // One fused pass on the interleaved heads, the scale applied inside, no score matrix and no head
        // split/merge copies; while training with its own backward (`attention_grad`).
        return fused_attention(q, k, v, heads, scale as f32);
    }
    // F16/BF16 and CUDA: candle's matmuls and softmax, which have CUDA kernels in all three dtypes.
    attention_composed(q, k, v, heads, scale)
}

/// `attention` of candle's ops: split heads, `softmax(q kᵀ) v` as batched matmuls in chunks, merge heads.
pub(super) fn attention_composed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
) -> candle_core::Result<Tensor> {
    let (b, n, width) = q.dims3()?;
    let head_dim = width / heads;
    // (B, N, heads*d) -> (B*heads, N, d)
    let split_heads = |x: &Tensor| -> candle_core::Result<Tensor> {
        let (b, n, _) = x.dims3()?;
        x.reshape((b, n, heads, head_dim))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b * heads, n, head_dim))
    };
    // The scale is folded into q (one pass over N*d instead of N*M).
    let q = split_heads(&(q * scale)?)?;
    let k = split_heads(k)?;
    let v = split_heads(v)?;
    let m = k.dim(1)?;
    let seqs = b * heads;
    // Chunk over the (batch * heads) sequences so one score block stays under SCORE_CHUNK_BYTES: the full
    // (B*heads, N, M) matrix is hundreds of MB at 24x40 and every fresh allocation of that size costs page faults.
    let per_seq = n * m * std::mem::size_of::<f32>();
    let budget = match q.device() {
        candle_core::Device::Cpu => SCORE_CHUNK_BYTES,
        _ => DEVICE_SCORE_CHUNK_BYTES,
    };
    let chunk = (budget / per_seq.max(1)).clamp(1, seqs);
    let mut parts = Vec::with_capacity(seqs.div_ceil(chunk));
    for start in (0..seqs).step_by(chunk) {
        let len = chunk.min(seqs - start);
        let scores = q
            .narrow(0, start, len)?
            .matmul(&k.narrow(0, start, len)?.t()?)?;
        let probs = softmax_last_dim(&scores)?;
        parts.push(probs.matmul(&v.narrow(0, start, len)?)?);
    }
    // (B*heads, N, d)
    let out = match parts.len() {
        1 => parts.swap_remove(0),
        _ => Tensor::cat(&parts, 0)?,
    };
    // (B*heads, N, d) -> (B, N, heads*d)
    out.reshape((b, heads, n, head_dim))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b, n, heads * head_dim))
}

/// Softmax over the last axis: candle-nn's fused `softmax_last_dim` where no graph is recorded (it has no
/// backward), its composed `softmax` otherwise (F16/BF16 or CUDA training; CPU f32 training takes the fused
/// attention and its own backward, `attention_grad`).
fn softmax_last_dim(x: &Tensor) -> candle_core::Result<Tensor> {
    if x.track_op() {
        candle_nn::ops::softmax(x, candle_core::D::Minus1)
    } else {
        candle_nn::ops::softmax_last_dim(x)
    }
}

/// Head width of the AVX2 intrinsics attention (`x86_64::attention_rows_head8`); 0 where there is none.
#[cfg(target_arch = "x86_64")]
const HEAD8: usize = super::x86_64::HEAD;
#[cfg(not(target_arch = "x86_64"))]
const HEAD8: usize = 0;
#[cfg(target_arch = "x86_64")]
use super::x86_64::FEW_KEYS;
#[cfg(not(target_arch = "x86_64"))]
const FEW_KEYS: usize = 0;

/// The most keys for which 8-wide heads take the queries-in-lanes kernel (the temporal and the text attention);
/// beyond, one query row at a time needs fewer loads per score (the 240-token spatial attention: 2.7 against 3.0 ms
/// per call).
const LANES_MAX_KEYS: usize = 64;

/// Which row kernel serves one head: the AVX2 intrinsics one for 8-wide heads (all of the demo UNets' attention),
/// the auto-vectorised one otherwise.
#[derive(Clone, Copy)]
enum HeadKernel {
    /// `x86_64::attention_lanes_head8` straight on the interleaved rows (scratch for the scores of many keys).
    Head8Lanes,
    /// `x86_64::attention_rows_head8` on keys and values transposed to (8, m8), `m8` = m rounded up to 8; or,
    /// `wide`, `avx512::attention_rows_head8` with `m8` rounded up to 16.
    Head8 { m8: usize, wide: bool },
    /// `attention_rows` (AVX2 + FMA build where `avx`), optionally with transposed values.
    Portable { avx: bool, transposed_v: bool },
}

impl HeadKernel {
    /// Floats of (transposed keys and values, score row) scratch per head.
    fn scratch(self, d: usize, m: usize) -> (usize, usize) {
        match self {
            HeadKernel::Head8Lanes => (0, if m <= FEW_KEYS { 0 } else { 8 * m + 8 }),
            // the AVX-512 kernel keeps the scores of two rows
            HeadKernel::Head8 { m8, wide } => (2 * d * m8, if wide { 2 * m8 } else { m8 }),
            HeadKernel::Portable { transposed_v, .. } => {
                (if transposed_v { 2 * d * m } else { d * m }, m)
            }
        }
    }

    /// Transpose one head's keys (and values where the kernel reads them transposed) into `kvt`.
    fn prepare<'a>(
        self,
        ks: &'a [f32],
        vs: &'a [f32],
        (d, stride): (usize, usize),
        m: usize,
        kvt: &'a mut [f32],
    ) -> PreparedHead<'a> {
        match self {
            HeadKernel::Head8Lanes => PreparedHead {
                kt: &[],
                v: vs,
                vt: None,
                k: ks,
            },
            #[cfg(target_arch = "x86_64")]
            HeadKernel::Head8 { m8, .. } => {
                let (kt, vt) = kvt.split_at_mut(d * m8);
                assert!(ks.len() >= (m - 1) * stride + d && vs.len() >= (m - 1) * stride + d);
                // SAFETY: the CPU has AVX2 (Head8 is only chosen then); m rows of d = HEAD floats, `stride` apart,
                // are inside ks / vs (asserted).
                unsafe {
                    super::x86_64::transpose_head(ks.as_ptr(), stride, m, kt);
                    super::x86_64::transpose_head(vs.as_ptr(), stride, m, vt);
                }
                PreparedHead {
                    kt,
                    v: vs,
                    vt: Some(vt),
                    k: ks,
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            HeadKernel::Head8 { .. } => unreachable!("no 8-wide intrinsics off x86-64"),
            HeadKernel::Portable { transposed_v, .. } => {
                let (kt, vt) = kvt.split_at_mut(d * m);
                transpose(ks, (d, stride), m, kt);
                if transposed_v {
                    transpose(vs, (d, stride), m, vt);
                }
                PreparedHead {
                    kt,
                    v: vs,
                    vt: transposed_v.then_some(&*vt),
                    k: ks,
                }
            }
        }
    }

    /// `rows` query rows from `qs` into `out`, `p` scratch of the length `scratch` gave.
    ///
    /// # Safety
    /// `out` valid for exclusive writes of the rows (`d` floats each, `stride` apart); `qs` holds them.
    #[allow(clippy::too_many_arguments)]
    unsafe fn rows(
        self,
        qs: &[f32],
        head: &PreparedHead,
        (out, rows): (*mut f32, usize),
        dims: (usize, usize),
        m: usize,
        scale: f32,
        p: &mut [f32],
    ) {
        match self {
            #[cfg(target_arch = "x86_64")]
            HeadKernel::Head8Lanes => {
                let stride = dims.1;
                assert!(qs.len() >= (rows - 1) * stride + dims.0);
                assert!(
                    head.k.len() >= (m - 1) * stride + dims.0
                        && head.v.len() >= (m - 1) * stride + dims.0
                );
                // SAFETY: AVX2 + FMA (chosen only then); the rows of qs, k and v are in bounds (asserted), out as
                // the caller promised.
                unsafe {
                    super::x86_64::attention_lanes_head8(
                        (qs.as_ptr(), head.k.as_ptr(), head.v.as_ptr()),
                        out,
                        rows,
                        stride,
                        m,
                        scale,
                        p,
                    )
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            HeadKernel::Head8Lanes => unreachable!("no 8-wide intrinsics off x86-64"),
            #[cfg(target_arch = "x86_64")]
            HeadKernel::Head8 { wide, .. } => {
                assert!(qs.len() >= (rows - 1) * dims.1 + dims.0);
                let vt = head.vt.unwrap_or_default();
                // SAFETY: AVX2 + FMA (Head8 is only chosen then), AVX-512F where `wide`; the rows of qs are in
                // bounds (asserted), out as the caller promised.
                unsafe {
                    let kernel = if wide {
                        super::avx512::attention_rows_head8
                    } else {
                        super::x86_64::attention_rows_head8
                    };
                    kernel(qs.as_ptr(), out, rows, dims.1, (head.kt, vt, m), scale, p)
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            HeadKernel::Head8 { .. } => unreachable!("no 8-wide intrinsics off x86-64"),
            HeadKernel::Portable { avx, .. } => {
                // SAFETY: forwarded contract.
                unsafe {
                    attention_dispatch(
                        avx,
                        (qs, head.kt, head.v, head.vt),
                        out,
                        rows,
                        dims,
                        scale,
                        p,
                    )
                }
            }
        }
    }
}

/// One head's key rows and transposed keys, its value rows and (optionally) transposed values.
struct PreparedHead<'a> {
    k: &'a [f32],
    kt: &'a [f32],
    v: &'a [f32],
    vt: Option<&'a [f32]>,
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

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        attention_grad::attention_grads(q, k, v, grad, (self.heads, self.scale))
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
        let kernel = if avx && d == HEAD8 && m <= LANES_MAX_KEYS {
            HeadKernel::Head8Lanes
        } else if avx && d == HEAD8 {
            let wide = has_avx512f();
            HeadKernel::Head8 {
                m8: m.next_multiple_of(if wide { 16 } else { 8 }),
                wide,
            }
        } else {
            HeadKernel::Portable {
                avx,
                transposed_v: use_transposed_values(d, m),
            }
        };
        let (scale, dims) = (self.scale, (d, width));
        // Thousands of tiny problems (temporal attention: 16 x 16) go to the pool in runs of a few dozen, so that
        // task overhead does not rival their few microseconds of work.
        let min_len = (8192 / (n * m).max(1)).max(1);
        (0..b * heads)
            .into_par_iter()
            .with_min_len(min_len)
            .for_each(|s| {
                let (bi, h) = (s / heads, s % heads);
                let qs = &q[bi * n * width + h * d..];
                let (ks, vs) = (&k[bi * m * width + h * d..], &v[bi * m * width + h * d..]);
                let out_at = |row: usize| {
                    // SAFETY: in bounds: row < n, so the offset is inside batch item bi's (n, width) block.
                    unsafe { out_ptr.get().add(bi * n * width + row * width + h * d) }
                };
                let (kv_len, p_len) = kernel.scratch(d, m);
                if rows >= n {
                    with_scratch(kv_len, p_len, |kvt, p| {
                        let kvt = kernel.prepare(ks, vs, dims, m, kvt);
                        // SAFETY: rows 0..n of head h in batch item bi belong to this task alone.
                        unsafe { kernel.rows(qs, &kvt, (out_at(0), n), dims, m, scale, p) }
                    });
                    return;
                }
                let mut kvt = vec![0f32; kv_len];
                let kvt = kernel.prepare(ks, vs, dims, m, &mut kvt);
                (0..n.div_ceil(rows)).into_par_iter().for_each(|blk| {
                    let (r0, len) = (blk * rows, rows.min(n - blk * rows));
                    with_scratch(0, p_len, |_, p| {
                        // SAFETY: rows r0..r0+len of head h in batch item bi belong to this task alone.
                        unsafe {
                            kernel.rows(
                                &qs[r0 * width..],
                                &kvt,
                                (out_at(r0), len),
                                dims,
                                m,
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

/// Multi-head `softmax(scale · q kᵀ) v` for f32 CPU tensors q (b, n, heads · d), k and v (b, m, heads · d), heads
/// interleaved as a linear projection writes them; returns (b, n, heads · d). Differentiable: the backward is
/// `attention_grad`'s.
pub fn fused_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f32,
) -> candle_core::Result<Tensor> {
    apply3_differentiable(q, k, v, Attention { heads, scale })
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    use crate::models::max_abs_diff;

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
            let ours = fused_attention(&q, &k, &v, 1, 0.5).unwrap();
            let diff = max_abs_diff(&reference, &ours);
            // Unseeded inputs: the worst of thousands of O(1) outputs reached 2.1e-6 in one run out of several
            // (summation order against candle's matmuls), so the bound is a few more ulps than that.
            assert!(diff < 5e-6, "({seqs}, {n}, {m}, {d}): {diff}");
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
            let per_head =
                fused_attention(&split(&q, n), &split(&k, m), &split(&v, m), 1, 0.3).unwrap();
            let merged = per_head
                .reshape((b, heads, n, d))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
                .reshape((b, n, heads * d))
                .unwrap();
            let ours = fused_attention(&q, &k, &v, heads, 0.3).unwrap();
            let diff = max_abs_diff(&merged, &ours);
            assert!(diff < 1e-6, "({b}, {n}, {m}, {heads}, {d}): {diff}");
        }
    }

    /// The composed path (the one training takes: here q, k and v are variables) gives the fused kernel's results
    /// on interleaved heads, with few keys and with many.
    #[test]
    fn composed_attention_matches_the_fused_kernel() {
        let dev = Device::Cpu;
        for (b, n, m, heads, d) in [(2, 30, 20, 3, 8), (1, 7, 100, 2, 8), (3, 16, 16, 4, 5)] {
            let var = |len: usize| {
                Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, len, heads * d), &dev).unwrap())
                    .unwrap()
            };
            let (q, k, v) = (var(n), var(m), var(m));
            let (q, k, v) = (q.as_tensor(), k.as_tensor(), v.as_tensor());
            let scale = 1.0 / (d as f64).sqrt();
            let composed = attention_composed(q, k, v, heads, scale).unwrap();
            let fused = fused_attention(q, k, v, heads, scale as f32).unwrap();
            assert_eq!(composed.dims(), fused.dims());
            let diff = max_abs_diff(&composed, &fused);
            assert!(diff < 5e-6, "({b}, {n}, {m}, {heads}, {d}): {diff}");
        }
    }
}
