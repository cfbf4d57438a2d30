//! AVX-512 builds of the 8-wide-head attention over many keys (`x86_64::attention_rows_head8`'s job): the spatial
//! self-attention at 24x40 and up, 29% of the 5.1 M + 28.3 M composed run (docs/performance.md, session 13); and
//! its backward for training (`attention_grad_head8`, `attention_grad`'s portable kernel's job for 8-wide heads).
//!
//! The AVX2 kernel is bound by loads and by `exp`, not by FMAs: per block of 8 keys it loads 8 key and 8 value
//! channel-vectors and runs one 8-lane `exp`. Here a block is 16 keys in one 512-bit register (half the loads,
//! FMAs and `exp` calls per key), and two query rows share every key and value load (AVX-512's 32 registers hold
//! both rows' 8 broadcast query channels and 16 value accumulators). The exponential is computed in base 2 with
//! a shorter polynomial (`exp2_16_nonpositive`); with the summation order (16 lanes) that is the only difference
//! from the AVX2 kernel, and results agree with it to a few ulp.
//!
//! Everything here is `unsafe` + `#[target_feature(enable = "avx512f")]`: callers check `cpu::has_avx512f()`.

#![cfg(target_arch = "x86_64")]
// The register-blocked loops index several arrays (queries, scores, accumulators) by the same row and channel.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::x86_64::{transpose_head, HEAD};

/// Keys per block: one 512-bit register of scores.
pub(crate) const KEYS: usize = 16;

/// 16 lanes of `2^t` for t ≤ 0: the softmax's `exp(scale · (s − max))` with log2(e) folded into the scale and
/// the shift by the caller (`LOG2_E`), so that the range reduction is `t = n + f`, n = round(t), |f| ≤ 1/2, on
/// the add ports (the shifter trick: adding 1.5·2²³ rounds to an integer), and `2^f` a degree-5 polynomial
/// (relative minimax fit on [−1/2, 1/2]: 1.9e-7 in f32, ~1.5 ulp, against the 1 ulp of the natural-log form),
/// with 2ⁿ applied by `vscalefps`. Against `exp(x)` as Cephes computes it (two FMAs of Cody-Waite reduction and
/// a degree-6 polynomial) it takes 6 FMA-port instructions instead of 11; the FMA ports bound these kernels
/// (per 16 keys and query row: 8 score FMAs, the exponential, 8 value FMAs). t is clamped at −125: below, 2ⁿ
/// would be subnormal, and subnormal FMA operands take microcode assists (the value product ran 10x slower
/// without the clamp).
#[inline(always)]
unsafe fn exp2_16_nonpositive(t: __m512) -> __m512 {
    unsafe {
        let t = _mm512_max_ps(t, _mm512_set1_ps(-125.0));
        let shifter = _mm512_set1_ps(12_582_912.0);
        let n = _mm512_sub_ps(_mm512_add_ps(t, shifter), shifter);
        let f = _mm512_sub_ps(t, n);
        let mut p = _mm512_set1_ps(1.326_472_6e-3);
        for c in [9.671_507e-3, 5.550_734e-2, 2.402_224_2e-1, 6.931_47e-1, 1.0] {
            p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c));
        }
        _mm512_scalef_ps(p, n)
    }
}

/// log2(e): the factor that turns the softmax's natural exponent into `exp2_16_nonpositive`'s argument.
const LOG2_E: f32 = std::f32::consts::LOG2_E;

/// `rows` query rows of one 8-wide head: `out_i = softmax(scale · q_i kᵀ) v`, with `kt` and `vt` the head's keys
/// and values transposed by `x86_64::transpose_head` to (HEAD, m16), `m16` = `m` rounded up to 16, `m` real keys.
/// Query and output rows are `stride` apart; `p` is scratch of 2 · m16 floats (one score row per row in flight).
///
/// # Safety
/// The CPU has AVX-512F; `q` is valid for reads and `out` for exclusive writes of `rows` rows of HEAD floats.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn attention_rows_head8(
    q: *const f32,
    out: *mut f32,
    rows: usize,
    stride: usize,
    (kt, vt, m): (&[f32], &[f32], usize),
    scale: f32,
    p: &mut [f32],
) {
    let m16 = kt.len() / HEAD;
    assert!(vt.len() == kt.len() && m16.is_multiple_of(KEYS) && m16 >= m && m > 0);
    assert!(p.len() >= 2 * m16);
    let head = HeadRows {
        kt: kt.as_ptr(),
        vt: vt.as_ptr(),
        m16,
        blocks: m16 / KEYS,
        // Lanes of the last block that hold real keys.
        tail: (u32::MAX >> (32 - (m - (m16 / KEYS - 1) * KEYS))) as __mmask16,
        scale,
    };
    let pp = p.as_mut_ptr();
    let mut i = 0;
    // SAFETY (both calls): rows i, i + 1 < rows are the caller's; p holds 2 · m16 floats (asserted).
    unsafe {
        while i + 2 <= rows {
            head.rows::<2>(
                [q.add(i * stride), q.add((i + 1) * stride)],
                [out.add(i * stride), out.add((i + 1) * stride)],
                pp,
            );
            i += 2;
        }
        if i < rows {
            head.rows::<1>([q.add(i * stride)], [out.add(i * stride)], pp);
        }
    }
}

/// One head's transposed keys and values and what every row block needs of them.
struct HeadRows {
    kt: *const f32,
    vt: *const f32,
    m16: usize,
    blocks: usize,
    tail: __mmask16,
    scale: f32,
}

impl HeadRows {
    /// R query rows through the two passes (scores and their max; exp, sum and the value product), every key
    /// and value register loaded once for all R rows.
    ///
    /// # Safety
    /// AVX-512F; each q row holds HEAD floats, each out row is writable for HEAD floats, `p` holds R · m16 floats.
    #[inline(always)]
    unsafe fn rows<const R: usize>(&self, q: [*const f32; R], out: [*mut f32; R], p: *mut f32) {
        let (kp, vp, m16) = (self.kt, self.vt, self.m16);
        // SAFETY (whole body): block b of a kt / vt row is inside its m16 columns; row r's scores at p + r · m16.
        unsafe {
            let neg_inf = _mm512_set1_ps(f32::NEG_INFINITY);
            // (loops, not `array::from_fn`: a closure does not inherit the target feature, so the intrinsics in
            // it would be calls, not instructions: 10x slower)
            let mut qb = [[_mm512_setzero_ps(); HEAD]; R];
            for r in 0..R {
                for c in 0..HEAD {
                    qb[r][c] = _mm512_set1_ps(*q[r].add(c));
                }
            }
            let mut mx = [neg_inf; R];
            for b in 0..self.blocks {
                let o = b * KEYS;
                let k0 = _mm512_loadu_ps(kp.add(o));
                let mut s = [_mm512_setzero_ps(); R];
                for r in 0..R {
                    s[r] = _mm512_mul_ps(qb[r][0], k0);
                }
                for c in 1..HEAD {
                    let kc = _mm512_loadu_ps(kp.add(c * m16 + o));
                    for r in 0..R {
                        s[r] = _mm512_fmadd_ps(qb[r][c], kc, s[r]);
                    }
                }
                for r in 0..R {
                    if b + 1 == self.blocks {
                        s[r] = _mm512_mask_blend_ps(self.tail, neg_inf, s[r]);
                    }
                    _mm512_storeu_ps(p.add(r * m16 + o), s[r]);
                    mx[r] = _mm512_max_ps(mx[r], s[r]);
                }
            }
            // p = exp(scale · s − scale · max), summed and multiplied into the values in the same pass:
            // out_c = Σ_j p_j vᵀ_cj / Σ_j p_j, one accumulator per row and channel. The padded keys' lanes are
            // masked to exactly 0.
            // In base 2: e = 2^(scale·log2(e) · (s − max)).
            let scale2 = self.scale * LOG2_E;
            let scale16 = _mm512_set1_ps(scale2);
            let mut shift = [_mm512_setzero_ps(); R];
            for r in 0..R {
                shift[r] = _mm512_set1_ps(_mm512_reduce_max_ps(mx[r]) * scale2);
            }
            let mut sum = [_mm512_setzero_ps(); R];
            let mut acc = [[_mm512_setzero_ps(); HEAD]; R];
            for b in 0..self.blocks {
                let o = b * KEYS;
                let mut e = [_mm512_setzero_ps(); R];
                for (r, er) in e.iter_mut().enumerate() {
                    let s = _mm512_loadu_ps(p.add(r * m16 + o));
                    *er = exp2_16_nonpositive(_mm512_fmsub_ps(s, scale16, shift[r]));
                    if b + 1 == self.blocks {
                        *er = _mm512_maskz_mov_ps(self.tail, *er);
                    }
                }
                for r in 0..R {
                    sum[r] = _mm512_add_ps(sum[r], e[r]);
                }
                for c in 0..HEAD {
                    let v = _mm512_loadu_ps(vp.add(c * m16 + o));
                    for r in 0..R {
                        acc[r][c] = _mm512_fmadd_ps(e[r], v, acc[r][c]);
                    }
                }
            }
            for r in 0..R {
                let inv = 1.0 / _mm512_reduce_add_ps(sum[r]);
                for (c, a) in acc[r].iter().enumerate() {
                    *out[r].add(c) = _mm512_reduce_add_ps(*a) * inv;
                }
            }
        }
    }
}

/// Scratch floats `attention_grad_head8` needs for m keys: the transposed keys, values and their gradients, and
/// two rows in flight of scores (then exponentials) and of `dp`.
pub(crate) fn grad_scratch_len(m: usize) -> usize {
    let m16 = m.next_multiple_of(KEYS);
    4 * HEAD * m16 + 4 * m16
}

/// The backward of one 8-wide head (`attention_grad`'s module comment has the math): dQ, dK and dV for n query
/// rows over m keys, every pointer at the head's first column and rows `stride` apart. Two query rows per pass
/// share every key, value and key/value-gradient load, 16 keys to a register, in three passes over the keys:
/// (A) scores and `dp = dO vᵀ`, (B) the exponentials with their sum and `Σ e·dp` (so `D = p·dp` needs no pass of
/// its own), (C) `ds = p (dp − D)` into dQ (register accumulators, one horizontal sum per row and channel) and
/// into dKᵀ and dVᵀ (loaded and stored once per row pair). Agrees with `attention_grad`'s portable kernel to
/// float rounding (`attention_grad::tests::avx512_backward_matches_the_portable_kernel`).
///
/// # Safety
/// The CPU has AVX-512F; q and dout are readable for n rows, k and v for m rows, of HEAD floats `stride` apart;
/// dq (n rows) and dk, dv (m rows) are writable there and nothing else touches them; `scratch` holds
/// `grad_scratch_len(m)` floats; m > 0.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn attention_grad_head8(
    (q, k, v, dout): (*const f32, *const f32, *const f32, *const f32),
    (dq, dk, dv): (*mut f32, *mut f32, *mut f32),
    (n, m, stride): (usize, usize, usize),
    scale: f32,
    scratch: &mut [f32],
) {
    let m16 = m.next_multiple_of(KEYS);
    assert!(m > 0 && scratch.len() >= grad_scratch_len(m));
    let (kt, rest) = scratch.split_at_mut(HEAD * m16);
    let (vt, rest) = rest.split_at_mut(HEAD * m16);
    let (dkt, rest) = rest.split_at_mut(HEAD * m16);
    let (dvt, rest) = rest.split_at_mut(HEAD * m16);
    let (p, dp) = rest.split_at_mut(2 * m16);
    // The padded keys are zero (`transpose_head`), so their dp is 0 and, with p masked to 0, so are their ds and
    // gradients.
    dkt.fill(0.0);
    dvt.fill(0.0);
    // SAFETY (whole body): rows j < m of k, v, dk, dv and i < n of q, dout, dq are the caller's (contract);
    // AVX-512F implies the AVX2 that `transpose_head` needs.
    unsafe {
        transpose_head(k, stride, m, kt);
        transpose_head(v, stride, m, vt);
        let head = GradRows {
            kt: kt.as_ptr(),
            vt: vt.as_ptr(),
            dkt: dkt.as_mut_ptr(),
            dvt: dvt.as_mut_ptr(),
            m16,
            blocks: m16 / KEYS,
            tail: (u32::MAX >> (32 - (m - (m16 / KEYS - 1) * KEYS))) as __mmask16,
            scale,
        };
        let (pp, dpp) = (p.as_mut_ptr(), dp.as_mut_ptr());
        let mut i = 0;
        while i + 2 <= n {
            let at = |x: *const f32| [x.add(i * stride), x.add((i + 1) * stride)];
            head.rows::<2>(
                at(q),
                at(dout),
                [dq.add(i * stride), dq.add((i + 1) * stride)],
                pp,
                dpp,
            );
            i += 2;
        }
        if i < n {
            head.rows::<1>(
                [q.add(i * stride)],
                [dout.add(i * stride)],
                [dq.add(i * stride)],
                pp,
                dpp,
            );
        }
        untranspose_head(dkt, dk, stride, m);
        untranspose_head(dvt, dv, stride, m);
    }
}

/// The inverse of `x86_64::transpose_head`: the first m columns of `xt` (HEAD, cols) back into m rows of HEAD
/// floats, `stride` apart, at `x`.
///
/// # Safety
/// `x` is valid for exclusive writes of those m rows; `xt` holds HEAD rows of at least m columns.
#[inline(always)]
unsafe fn untranspose_head(xt: &[f32], x: *mut f32, stride: usize, m: usize) {
    let cols = xt.len() / HEAD;
    for j in 0..m {
        for c in 0..HEAD {
            // SAFETY: row j < m of x (the caller's contract).
            unsafe { *x.add(j * stride + c) = xt[c * cols + j] };
        }
    }
}

/// Scratch floats `attention_grad_head8_few` needs: keys and values transposed into one register each per
/// channel, and one row of `ds` per query row.
pub(crate) fn few_grad_scratch_len(n: usize) -> usize {
    2 * HEAD * KEYS + n * KEYS
}

/// `attention_grad_head8` for at most 16 keys (the temporal attention: one key per frame), keys in the lanes of
/// one register: per query row, its scores and `dp` are 8 FMAs each against the head's transposed keys and values,
/// the softmax is three horizontal reductions, and dKᵀ and dVᵀ stay in 16 register accumulators for the whole
/// head. dQ = scale · dS K runs after all rows, on the key rows as they are (8 channels to a register).
///
/// # Safety
/// As `attention_grad_head8`, with 0 < m ≤ 16 and `scratch` of `few_grad_scratch_len(n)` floats.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn attention_grad_head8_few(
    (q, k, v, dout): (*const f32, *const f32, *const f32, *const f32),
    (dq, dk, dv): (*mut f32, *mut f32, *mut f32),
    (n, m, stride): (usize, usize, usize),
    scale: f32,
    scratch: &mut [f32],
) {
    assert!(m > 0 && m <= KEYS && scratch.len() >= few_grad_scratch_len(n));
    let (kt, rest) = scratch.split_at_mut(HEAD * KEYS);
    let (vt, ds_rows) = rest.split_at_mut(HEAD * KEYS);
    let lanes = (u32::MAX >> (32 - m)) as __mmask16;
    // SAFETY (whole body): rows j < m of k, v, dk, dv and i < n of q, dout, dq are the caller's (contract);
    // scratch rows as split above; AVX-512F implies the AVX2 that `transpose_head` needs.
    unsafe {
        transpose_head(k, stride, m, kt);
        transpose_head(v, stride, m, vt);
        let neg_inf = _mm512_set1_ps(f32::NEG_INFINITY);
        // Base 2, as in the forward: the −80 floor of `attention_grad_head8`'s pass B times log2(e).
        let floor = _mm512_set1_ps(-80.0 * LOG2_E);
        let scale2 = scale * LOG2_E;
        let scale16 = _mm512_set1_ps(scale2);
        let mut dkt = [_mm512_setzero_ps(); HEAD];
        let mut dvt = [_mm512_setzero_ps(); HEAD];
        for i in 0..n {
            let (qi, di) = (q.add(i * stride), dout.add(i * stride));
            // Two chains each for the scores and dp (channels 0-3 and 4-7), so the FMAs' latency overlaps.
            let mut s = [_mm512_setzero_ps(); 2];
            let mut d = [_mm512_setzero_ps(); 2];
            for c in 0..HEAD {
                let kc = _mm512_loadu_ps(kt.as_ptr().add(c * KEYS));
                let vc = _mm512_loadu_ps(vt.as_ptr().add(c * KEYS));
                s[c / 4] = _mm512_fmadd_ps(_mm512_set1_ps(*qi.add(c)), kc, s[c / 4]);
                d[c / 4] = _mm512_fmadd_ps(_mm512_set1_ps(*di.add(c)), vc, d[c / 4]);
            }
            let s = _mm512_mask_blend_ps(lanes, neg_inf, _mm512_add_ps(s[0], s[1]));
            let dp = _mm512_add_ps(d[0], d[1]);
            let shift = _mm512_set1_ps(_mm512_reduce_max_ps(s) * scale2);
            // The −80 floor: `attention_grad_head8`'s pass B says why.
            let x = _mm512_max_ps(_mm512_fmsub_ps(s, scale16, shift), floor);
            let e = _mm512_maskz_mov_ps(lanes, exp2_16_nonpositive(x));
            let p = _mm512_mul_ps(e, _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(e)));
            let big_d = _mm512_set1_ps(_mm512_reduce_add_ps(_mm512_mul_ps(p, dp)));
            let ds = _mm512_mul_ps(p, _mm512_sub_ps(dp, big_d));
            _mm512_storeu_ps(ds_rows.as_mut_ptr().add(i * KEYS), ds);
            for c in 0..HEAD {
                dkt[c] = _mm512_fmadd_ps(_mm512_set1_ps(scale * *qi.add(c)), ds, dkt[c]);
                dvt[c] = _mm512_fmadd_ps(_mm512_set1_ps(*di.add(c)), p, dvt[c]);
            }
        }
        // dq_i = scale Σ_j ds_ij k_j, on the key rows (8 channels in the low half of a register).
        for i in 0..n {
            let mut acc = [_mm256_setzero_ps(); 2];
            for j in 0..m {
                let w = _mm256_set1_ps(ds_rows[i * KEYS + j]);
                acc[j % 2] = _mm256_fmadd_ps(w, _mm256_loadu_ps(k.add(j * stride)), acc[j % 2]);
            }
            let sum = _mm256_mul_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_set1_ps(scale));
            _mm256_storeu_ps(dq.add(i * stride), sum);
        }
        let (dkt_rows, dvt_rows) = (kt, vt);
        for c in 0..HEAD {
            _mm512_storeu_ps(dkt_rows.as_mut_ptr().add(c * KEYS), dkt[c]);
            _mm512_storeu_ps(dvt_rows.as_mut_ptr().add(c * KEYS), dvt[c]);
        }
        untranspose_head(dkt_rows, dk, stride, m);
        untranspose_head(dvt_rows, dv, stride, m);
    }
}

/// One head's transposed keys, values and gradient accumulators for `attention_grad_head8`'s row passes.
struct GradRows {
    kt: *const f32,
    vt: *const f32,
    dkt: *mut f32,
    dvt: *mut f32,
    m16: usize,
    blocks: usize,
    tail: __mmask16,
    scale: f32,
}

impl GradRows {
    /// R query rows' share of the backward (`attention_grad_head8`'s passes A, B, C).
    ///
    /// # Safety
    /// AVX-512F; q and dout rows readable and dq rows writable for HEAD floats; p and dp hold R · m16 floats.
    #[inline(always)]
    unsafe fn rows<const R: usize>(
        &self,
        q: [*const f32; R],
        dout: [*const f32; R],
        dq: [*mut f32; R],
        p: *mut f32,
        dp: *mut f32,
    ) {
        let (kp, vp, m16) = (self.kt, self.vt, self.m16);
        // SAFETY (whole body): block b of a transposed row is inside its m16 columns; row r's p and dp at r · m16.
        unsafe {
            let neg_inf = _mm512_set1_ps(f32::NEG_INFINITY);
            // (loops, not `array::from_fn`: a closure does not inherit the target feature)
            let mut qc = [[0f32; HEAD]; R];
            let mut doc = [[0f32; HEAD]; R];
            for r in 0..R {
                for c in 0..HEAD {
                    qc[r][c] = *q[r].add(c);
                    doc[r][c] = *dout[r].add(c);
                }
            }
            // A: s = q Kᵀ (unscaled), dp = dO Vᵀ, and the rows' max.
            let mut mx = [neg_inf; R];
            for b in 0..self.blocks {
                let o = b * KEYS;
                let mut s = [_mm512_setzero_ps(); R];
                let mut d = [_mm512_setzero_ps(); R];
                for c in 0..HEAD {
                    let kc = _mm512_loadu_ps(kp.add(c * m16 + o));
                    let vc = _mm512_loadu_ps(vp.add(c * m16 + o));
                    for r in 0..R {
                        s[r] = _mm512_fmadd_ps(_mm512_set1_ps(qc[r][c]), kc, s[r]);
                        d[r] = _mm512_fmadd_ps(_mm512_set1_ps(doc[r][c]), vc, d[r]);
                    }
                }
                for r in 0..R {
                    if b + 1 == self.blocks {
                        s[r] = _mm512_mask_blend_ps(self.tail, neg_inf, s[r]);
                    }
                    _mm512_storeu_ps(p.add(r * m16 + o), s[r]);
                    _mm512_storeu_ps(dp.add(r * m16 + o), d[r]);
                    mx[r] = _mm512_max_ps(mx[r], s[r]);
                }
            }
            // B: e = exp(scale · (s − max)) in place of s, Σ e and Σ e·dp. The exponent is kept above −80, not
            // −87.3 as in the forward: p = e / Σ e then stays a normal float for up to ~2000 keys (subnormal FMA
            // operands take microcode assists); e^−80 is 2e-35 of the row's largest weight.
            // (In base 2, as in the forward: scale, shift and floor times log2(e).)
            let scale2 = self.scale * LOG2_E;
            let scale16 = _mm512_set1_ps(scale2);
            let floor = _mm512_set1_ps(-80.0 * LOG2_E);
            let mut shift = [_mm512_setzero_ps(); R];
            for r in 0..R {
                shift[r] = _mm512_set1_ps(_mm512_reduce_max_ps(mx[r]) * scale2);
            }
            let mut sum = [_mm512_setzero_ps(); R];
            let mut edp = [_mm512_setzero_ps(); R];
            for b in 0..self.blocks {
                let o = b * KEYS;
                for r in 0..R {
                    let s = _mm512_loadu_ps(p.add(r * m16 + o));
                    let x = _mm512_max_ps(_mm512_fmsub_ps(s, scale16, shift[r]), floor);
                    let mut e = exp2_16_nonpositive(x);
                    if b + 1 == self.blocks {
                        e = _mm512_maskz_mov_ps(self.tail, e);
                    }
                    _mm512_storeu_ps(p.add(r * m16 + o), e);
                    sum[r] = _mm512_add_ps(sum[r], e);
                    edp[r] = _mm512_fmadd_ps(e, _mm512_loadu_ps(dp.add(r * m16 + o)), edp[r]);
                }
            }
            let mut inv = [_mm512_setzero_ps(); R];
            let mut big_d = [_mm512_setzero_ps(); R];
            for r in 0..R {
                let i = 1.0 / _mm512_reduce_add_ps(sum[r]);
                inv[r] = _mm512_set1_ps(i);
                big_d[r] = _mm512_set1_ps(_mm512_reduce_add_ps(edp[r]) * i);
            }
            // C: p = e / Σ e, ds = p (dp − D); dq_c += ds · kᵀ_c, dKᵀ_c += scale q_c ds, dVᵀ_c += dO_c p.
            let mut acc = [[_mm512_setzero_ps(); HEAD]; R];
            for b in 0..self.blocks {
                let o = b * KEYS;
                let mut pr = [_mm512_setzero_ps(); R];
                let mut ds = [_mm512_setzero_ps(); R];
                for r in 0..R {
                    pr[r] = _mm512_mul_ps(_mm512_loadu_ps(p.add(r * m16 + o)), inv[r]);
                    let d = _mm512_sub_ps(_mm512_loadu_ps(dp.add(r * m16 + o)), big_d[r]);
                    ds[r] = _mm512_mul_ps(pr[r], d);
                }
                for c in 0..HEAD {
                    let at = c * m16 + o;
                    let kc = _mm512_loadu_ps(kp.add(at));
                    let mut dk = _mm512_loadu_ps(self.dkt.add(at));
                    let mut dv = _mm512_loadu_ps(self.dvt.add(at));
                    for r in 0..R {
                        acc[r][c] = _mm512_fmadd_ps(ds[r], kc, acc[r][c]);
                        dk = _mm512_fmadd_ps(_mm512_set1_ps(self.scale * qc[r][c]), ds[r], dk);
                        dv = _mm512_fmadd_ps(_mm512_set1_ps(doc[r][c]), pr[r], dv);
                    }
                    _mm512_storeu_ps(self.dkt.add(at), dk);
                    _mm512_storeu_ps(self.dvt.add(at), dv);
                }
            }
            for r in 0..R {
                for c in 0..HEAD {
                    *dq[r].add(c) = self.scale * _mm512_reduce_add_ps(acc[r][c]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::NoiseRng;

    /// The AVX-512 kernel against the AVX2 one it replaces, across key counts around the block edges and odd
    /// row counts (the one-row tail).
    #[test]
    fn avx512_attention_matches_the_avx2_kernel() {
        if !(super::super::cpu::has_avx512f() && super::super::cpu::has_avx2_fma()) {
            eprintln!("no AVX-512F on this CPU: the AVX-512 attention is not exercised");
            return;
        }
        let mut rng = NoiseRng::new(3);
        let stride = 24;
        for (m, rows) in [
            (1, 1),
            (15, 3),
            (16, 2),
            (17, 5),
            (33, 4),
            (240, 7),
            (961, 3),
        ] {
            let data = |rng: &mut NoiseRng, n: usize| -> Vec<f32> {
                (0..n * stride)
                    .map(|_| (rng.uniform() - 0.5) * 4.0)
                    .collect()
            };
            let (q, k, v) = (data(&mut rng, rows), data(&mut rng, m), data(&mut rng, m));
            let transposed = |x: &[f32], m_pad: usize| -> Vec<f32> {
                let mut xt = vec![0f32; HEAD * m_pad];
                // SAFETY: this CPU has AVX2 (checked); m rows of HEAD floats, `stride` apart, are in x.
                unsafe { super::super::x86_64::transpose_head(x.as_ptr(), stride, m, &mut xt) };
                xt
            };
            let (m8, m16) = (m.next_multiple_of(8), m.next_multiple_of(KEYS));
            let mut want = vec![0f32; rows * stride];
            let mut got = vec![0f32; rows * stride];
            // SAFETY: CPU features checked; rows · stride floats in q and both outputs; scratch as documented.
            unsafe {
                super::super::x86_64::attention_rows_head8(
                    q.as_ptr(),
                    want.as_mut_ptr(),
                    rows,
                    stride,
                    (&transposed(&k, m8), &transposed(&v, m8), m),
                    0.35,
                    &mut vec![0f32; m8],
                );
                attention_rows_head8(
                    q.as_ptr(),
                    got.as_mut_ptr(),
                    rows,
                    stride,
                    (&transposed(&k, m16), &transposed(&v, m16), m),
                    0.35,
                    &mut vec![0f32; 2 * m16],
                );
            }
            for i in 0..rows {
                for c in 0..HEAD {
                    let (w, g) = (want[i * stride + c], got[i * stride + c]);
                    assert!(
                        (w - g).abs() <= 1e-5 * (1.0 + w.abs()),
                        "m {m}, row {i}, channel {c}: AVX2 {w}, AVX-512 {g}"
                    );
                }
                // the columns past the head are not the kernel's to write
                assert!(got[i * stride + HEAD..(i + 1) * stride]
                    .iter()
                    .all(|&x| x == 0.0));
            }
        }
    }
}
