//! AVX2 + FMA intrinsics for the kernels whose auto-vectorised loops left most of the machine idle (see
//! docs/performance.md, session 7): the attention of 8-wide heads (every attention of the demo UNets: the
//! temporal transformers' thousands of 16 x 16 problems, the 240-token spatial self-attention and the text
//! cross-attention) and the vector `exp` / `erf` under GEGLU and SiLU.
//!
//! Each function computes what its portable counterpart computes (the row kernels in `attention.rs`, `geglu_rows`
//! in `linear.rs`, the GroupNorm pass in `norm.rs`, the scalar functions of `activation.rs`), with the same
//! polynomials; only the summation order (and FMA contraction) differs, so results agree to a few ulp. The unit
//! tests below compare them with the portable versions; `tests/it/unet3d.rs` checks the whole UNet against diffusers.
//!
//! A leaf under the op files: they call in here, and nothing here calls an op (only `activation`'s scalar
//! functions, for the tails shorter than a register).
//!
//! Everything here is `unsafe` + `#[target_feature(enable = "avx2,fma")]`: callers check
//! `cpu::has_avx2_fma()` first.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

/// Head width of the attention kernel here: one head row is one AVX register.
pub(crate) const HEAD: usize = 8;

/// e^r for r = x − n·ln2 (|r| ≤ ln2/2): the Cephes degree-6 polynomial of `activation::exp`.
#[inline(always)]
unsafe fn exp_reduced(x: __m256, n: __m256) -> __m256 {
    unsafe {
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            5e-1,
        ] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        _mm256_add_ps(
            _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r),
            _mm256_set1_ps(1.0),
        )
    }
}

/// 8 lanes of `activation::exp` (same range reduction and Cephes polynomial, Horner steps fused).
#[inline(always)]
unsafe fn exp8(x: __m256) -> __m256 {
    unsafe {
        let x = _mm256_min_ps(
            _mm256_max_ps(x, _mm256_set1_ps(-87.3)),
            _mm256_set1_ps(88.7),
        );
        let shifter = _mm256_set1_ps(12_582_912.0);
        let n = _mm256_sub_ps(
            _mm256_fmadd_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E), shifter),
            shifter,
        );
        let e = exp_reduced(x, n);
        // 2ⁿ through the exponent bits, n ∈ [-126, 128]: n = 128 (x ≥ 88.4) takes 2¹²⁷ · 2.
        let ni = _mm256_cvtps_epi32(n);
        let biased = _mm256_min_epi32(
            _mm256_max_epi32(
                _mm256_add_epi32(ni, _mm256_set1_epi32(127)),
                _mm256_set1_epi32(1),
            ),
            _mm256_set1_epi32(254),
        );
        let pow2 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(biased));
        let over = _mm256_cmp_ps::<_CMP_GT_OQ>(n, _mm256_set1_ps(127.0));
        let twice = _mm256_blendv_ps(_mm256_set1_ps(1.0), _mm256_set1_ps(2.0), over);
        _mm256_mul_ps(_mm256_mul_ps(e, pow2), twice)
    }
}

/// `exp8` for x ≤ 0 (softmax after subtracting the row max, erf's e^(−a²)): n ≤ 0, so 2ⁿ needs neither the
/// upper clamp nor the n = 128 case. Same values as `exp8` there.
#[inline(always)]
unsafe fn exp8_nonpositive(x: __m256) -> __m256 {
    unsafe {
        let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3)), _mm256_setzero_ps());
        let shifter = _mm256_set1_ps(12_582_912.0);
        let n = _mm256_sub_ps(
            _mm256_fmadd_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E), shifter),
            shifter,
        );
        let e = exp_reduced(x, n);
        let biased = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
        _mm256_mul_ps(e, _mm256_castsi256_ps(_mm256_slli_epi32::<23>(biased)))
    }
}

/// 8 lanes of `activation::gelu_erf`: `x/2 · (1 + erf(x/√2))` with the Abramowitz & Stegun 7.1.26 erf.
#[inline(always)]
unsafe fn gelu_erf8(x: __m256) -> __m256 {
    unsafe {
        let z = _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
        let sign = _mm256_and_ps(z, _mm256_set1_ps(-0.0));
        let a = _mm256_andnot_ps(_mm256_set1_ps(-0.0), z);
        // t = 1 / (1 + p·a): the 12-bit reciprocal estimate and one Newton step (≈ 23 bits), where a division
        // would take most of this function's time.
        let den = _mm256_fmadd_ps(_mm256_set1_ps(0.327_591_1), a, _mm256_set1_ps(1.0));
        let t0 = _mm256_rcp_ps(den);
        let t = _mm256_mul_ps(t0, _mm256_fnmadd_ps(den, t0, _mm256_set1_ps(2.0)));
        let mut poly = _mm256_set1_ps(1.061_405_4);
        for c in [-1.453_152_1, 1.421_413_7, -0.284_496_74, 0.254_829_6] {
            poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(c));
        }
        let poly = _mm256_mul_ps(poly, t);
        let e = exp8_nonpositive(_mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(a, a)));
        let erf_abs = _mm256_fnmadd_ps(poly, e, _mm256_set1_ps(1.0));
        let erf = _mm256_or_ps(erf_abs, sign);
        _mm256_mul_ps(
            _mm256_mul_ps(_mm256_set1_ps(0.5), x),
            _mm256_add_ps(_mm256_set1_ps(1.0), erf),
        )
    }
}

/// `out = h · gelu_erf(gate)` for rows laid out `[h (inner), gate (inner)]`.
///
/// # Safety
/// The CPU has AVX2 and FMA; `out` holds `x.len() / 2` floats.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn geglu_rows(x: &[f32], out: &mut [f32], inner: usize) {
    let vec_end = inner - inner % 8;
    for (xr, or) in x.chunks_exact(2 * inner).zip(out.chunks_exact_mut(inner)) {
        let (h, g) = xr.split_at(inner);
        for c in (0..vec_end).step_by(8) {
            // SAFETY: c + 8 ≤ inner for all three rows.
            unsafe {
                let y = _mm256_mul_ps(
                    _mm256_loadu_ps(h.as_ptr().add(c)),
                    gelu_erf8(_mm256_loadu_ps(g.as_ptr().add(c))),
                );
                _mm256_storeu_ps(or.as_mut_ptr().add(c), y);
            }
        }
        for c in vec_end..inner {
            or[c] = h[c] * super::activation::gelu_erf(g[c]);
        }
    }
}

/// `y = x·a + c`, then SiLU `y · σ(y)` where `silu` (one GroupNorm channel after its statistics).
///
/// # Safety
/// The CPU has AVX2 and FMA; `y` is as long as `x`.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn scale_shift_silu(x: &[f32], y: &mut [f32], a: f32, c: f32, silu: bool) {
    assert_eq!(x.len(), y.len());
    let vec_end = x.len() - x.len() % 8;
    // SAFETY: every vector access is below vec_end ≤ len of both slices.
    unsafe {
        let (a8, c8, one) = (_mm256_set1_ps(a), _mm256_set1_ps(c), _mm256_set1_ps(1.0));
        for o in (0..vec_end).step_by(8) {
            let mut v = _mm256_fmadd_ps(_mm256_loadu_ps(x.as_ptr().add(o)), a8, c8);
            if silu {
                // y / (1 + e^(−y)): reciprocal estimate and one Newton step for the division
                let den = _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), v)));
                let r0 = _mm256_rcp_ps(den);
                let r = _mm256_mul_ps(r0, _mm256_fnmadd_ps(den, r0, _mm256_set1_ps(2.0)));
                v = _mm256_mul_ps(v, r);
            }
            _mm256_storeu_ps(y.as_mut_ptr().add(o), v);
        }
    }
    for (yv, &xv) in y[vec_end..].iter_mut().zip(&x[vec_end..]) {
        let v = xv.mul_add(a, c);
        *yv = if silu { super::activation::silu(v) } else { v };
    }
}

/// Horizontal max and sum of 8 lanes, broadcast back to all lanes.
#[inline(always)]
unsafe fn hmax(x: __m256) -> __m256 {
    unsafe {
        let x = _mm256_max_ps(x, _mm256_permute2f128_ps::<1>(x, x));
        let x = _mm256_max_ps(x, _mm256_permute_ps::<0b01_00_11_10>(x));
        _mm256_max_ps(x, _mm256_permute_ps::<0b10_11_00_01>(x))
    }
}

#[inline(always)]
unsafe fn hsum(x: __m256) -> __m256 {
    unsafe {
        let x = _mm256_add_ps(x, _mm256_permute2f128_ps::<1>(x, x));
        let x = _mm256_add_ps(x, _mm256_permute_ps::<0b01_00_11_10>(x));
        _mm256_add_ps(x, _mm256_permute_ps::<0b10_11_00_01>(x))
    }
}

/// `[Σ a₀, Σ a₁, …, Σ a₇]`: the lane sums of eight registers in one register.
#[inline(always)]
unsafe fn sum_lanes8(a: &[__m256; 8]) -> __m256 {
    unsafe {
        let t0 = _mm256_hadd_ps(a[0], a[1]);
        let t1 = _mm256_hadd_ps(a[2], a[3]);
        let t2 = _mm256_hadd_ps(a[4], a[5]);
        let t3 = _mm256_hadd_ps(a[6], a[7]);
        // u0 = [a0, a1, a2, a3 (low-half sums) | a0, a1, a2, a3 (high-half sums)], u1 likewise for a4..a7
        let u0 = _mm256_hadd_ps(t0, t1);
        let u1 = _mm256_hadd_ps(t2, t3);
        _mm256_add_ps(
            _mm256_permute2f128_ps::<0x20>(u0, u1),
            _mm256_permute2f128_ps::<0x31>(u0, u1),
        )
    }
}

/// Transpose `m` rows of one head (HEAD floats each, `stride` apart, starting at `x`) into `xt` (HEAD, `m8`), the
/// columns past `m` zero. `m8` is `m` rounded up to a multiple of 8.
///
/// # Safety
/// The CPU has AVX2; `x` is valid for reads of the `m` rows, `xt` holds HEAD · m8 floats.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn transpose_head(x: *const f32, stride: usize, m: usize, xt: &mut [f32]) {
    let m8 = xt.len() / HEAD;
    debug_assert!(m8 >= m && m8.is_multiple_of(8));
    let full = m - m % 8;
    for j0 in (0..full).step_by(8) {
        // SAFETY: rows j0..j0+8 < m exist; columns j0..j0+8 of each xt row are inside m8.
        unsafe {
            let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(x.add((j0 + i) * stride)));
            let cols = transpose8(r);
            for (c, col) in cols.iter().enumerate() {
                _mm256_storeu_ps(xt.as_mut_ptr().add(c * m8 + j0), *col);
            }
        }
    }
    for c in 0..HEAD {
        for j in full..m8 {
            // SAFETY: row j < m exists.
            xt[c * m8 + j] = if j < m {
                unsafe { *x.add(j * stride + c) }
            } else {
                0.0
            };
        }
    }
}

/// `rows` query rows of one 8-wide head: `out_i = softmax(scale · q_i kᵀ) v`, with `kt` and `vt` the head's keys
/// and values transposed by [`transpose_head`] (HEAD, m8), `m` real keys. Query and output rows are `stride` apart;
/// `p` is scratch of m8 floats.
///
/// Per row: the query's 8 channels sit broadcast in 8 registers and each block of 8 scores is 8 FMAs over the key
/// columns; the value product keeps one accumulator per channel over the key blocks and sums their lanes once.
///
/// # Safety
/// The CPU has AVX2 and FMA; `q` is valid for reads and `out` for exclusive writes of `rows` rows of HEAD floats.
#[target_feature(enable = "avx2,fma")]
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
    let m8 = kt.len() / HEAD;
    debug_assert!(vt.len() == kt.len() && p.len() >= m8 && m8 >= m && m > 0);
    let blocks = m8 / 8;
    // SAFETY (whole body): block b of a kt / vt row is inside its m8 columns; p holds m8 floats; q / out as the
    // caller promised.
    unsafe {
        // Lanes of the last block that hold real keys.
        let tail_mask = _mm256_cmp_ps::<_CMP_LT_OQ>(
            _mm256_setr_ps(0., 1., 2., 3., 4., 5., 6., 7.),
            _mm256_set1_ps((m - (blocks - 1) * 8) as f32),
        );
        let neg_inf = _mm256_set1_ps(f32::NEG_INFINITY);
        let (kp, vp, pp) = (kt.as_ptr(), vt.as_ptr(), p.as_mut_ptr());
        for i in 0..rows {
            let qi = q.add(i * stride);
            let qb: [__m256; 8] = std::array::from_fn(|c| _mm256_broadcast_ss(&*qi.add(c)));
            // scores, and their running max
            let mut mx = neg_inf;
            for b in 0..blocks {
                let o = b * 8;
                let mut s = _mm256_mul_ps(qb[0], _mm256_loadu_ps(kp.add(o)));
                for (c, qc) in qb.iter().enumerate().skip(1) {
                    s = _mm256_fmadd_ps(*qc, _mm256_loadu_ps(kp.add(c * m8 + o)), s);
                }
                if b + 1 == blocks {
                    s = _mm256_blendv_ps(neg_inf, s, tail_mask);
                }
                _mm256_storeu_ps(pp.add(o), s);
                mx = _mm256_max_ps(mx, s);
            }
            // p = exp(scale · s − scale · max); padded keys give exp(−inf) → 0 after the clamp is masked away
            let scale8 = _mm256_set1_ps(scale);
            let shift = _mm256_mul_ps(hmax(mx), scale8);
            let mut sum = _mm256_setzero_ps();
            for b in 0..blocks {
                let o = b * 8;
                let mut e =
                    exp8_nonpositive(_mm256_fmsub_ps(_mm256_loadu_ps(pp.add(o)), scale8, shift));
                if b + 1 == blocks {
                    e = _mm256_and_ps(e, tail_mask);
                }
                _mm256_storeu_ps(pp.add(o), e);
                sum = _mm256_add_ps(sum, e);
            }
            let inv = _mm256_div_ps(_mm256_set1_ps(1.0), hsum(sum));
            // out_c = Σ_j p_j vᵀ_cj, one accumulator per channel
            let mut acc = [_mm256_setzero_ps(); 8];
            for b in 0..blocks {
                let o = b * 8;
                let pv = _mm256_loadu_ps(pp.add(o));
                for (c, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(pv, _mm256_loadu_ps(vp.add(c * m8 + o)), *a);
                }
            }
            _mm256_storeu_ps(out.add(i * stride), _mm256_mul_ps(sum_lanes8(&acc), inv));
        }
    }
}

/// The most keys whose scores `attention_lanes_head8` keeps on the stack.
pub(crate) const FEW_KEYS: usize = 32;

/// 8x8 transpose of eight registers.
#[inline(always)]
unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    unsafe {
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        [
            _mm256_permute2f128_ps::<0x20>(s0, s4),
            _mm256_permute2f128_ps::<0x20>(s1, s5),
            _mm256_permute2f128_ps::<0x20>(s2, s6),
            _mm256_permute2f128_ps::<0x20>(s3, s7),
            _mm256_permute2f128_ps::<0x31>(s0, s4),
            _mm256_permute2f128_ps::<0x31>(s1, s5),
            _mm256_permute2f128_ps::<0x31>(s2, s6),
            _mm256_permute2f128_ps::<0x31>(s3, s7),
        ]
    }
}

/// One 8-wide head, eight queries per register: the eight query rows are transposed so that each register holds
/// one channel of all eight, every score is then 8 FMAs against broadcast key channels, and the softmax runs across
/// registers (no horizontal reductions, eight independent rows in flight, no key or value transposes). q, k, v and
/// the output have rows `stride` apart; `m` keys. The scores live in registers' worth of stack for up to
/// FEW_KEYS keys (the temporal attention over 8-32 frames) and in `scratch` (8·m + 8 floats) beyond.
///
/// # Safety
/// The CPU has AVX2 and FMA; `q` holds `rows` rows and `k`, `v` hold `m` rows (HEAD floats each); `out` is valid
/// for exclusive writes of `rows` rows.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn attention_lanes_head8(
    (q, k, v): (*const f32, *const f32, *const f32),
    out: *mut f32,
    rows: usize,
    stride: usize,
    m: usize,
    scale: f32,
    scratch: &mut [f32],
) {
    debug_assert!(m > 0);
    let mut stack = [_mm256_setzero_ps(); FEW_KEYS];
    let s: &mut [__m256] = if m <= FEW_KEYS {
        &mut stack[..m]
    } else {
        assert!(
            scratch.len() >= 8 * m + 8,
            "attention scratch of {} floats for {m} keys",
            scratch.len()
        );
        // The scratch as m aligned registers' worth of floats.
        let off = scratch.as_ptr().align_offset(32);
        // SAFETY: f32s reinterpreted as __m256 at 32-byte alignment, 8·m floats inside the scratch (asserted).
        unsafe { std::slice::from_raw_parts_mut(scratch.as_mut_ptr().add(off).cast::<__m256>(), m) }
    };
    // SAFETY (whole body): rows i0..i0+8 (or the live ones of the last group) and keys 0..m exist, as promised.
    unsafe {
        let scale8 = _mm256_set1_ps(scale);
        let mut i0 = 0;
        while i0 < rows {
            let live = (rows - i0).min(8);
            // Rows past the end repeat the last live row (computed, never stored).
            let qr: [__m256; 8] =
                std::array::from_fn(|r| _mm256_loadu_ps(q.add((i0 + r.min(live - 1)) * stride)));
            let qc = transpose8(qr);
            let mut mx = _mm256_set1_ps(f32::NEG_INFINITY);
            for (j, sj) in s.iter_mut().enumerate().take(m) {
                let kj = k.add(j * stride);
                let mut a = _mm256_mul_ps(qc[0], _mm256_broadcast_ss(&*kj));
                for (c, qcc) in qc.iter().enumerate().skip(1) {
                    a = _mm256_fmadd_ps(*qcc, _mm256_broadcast_ss(&*kj.add(c)), a);
                }
                *sj = a;
                mx = _mm256_max_ps(mx, a);
            }
            let shift = _mm256_mul_ps(mx, scale8);
            let mut sum = _mm256_setzero_ps();
            for sj in s.iter_mut().take(m) {
                *sj = exp8_nonpositive(_mm256_fmsub_ps(*sj, scale8, shift));
                sum = _mm256_add_ps(sum, *sj);
            }
            let mut acc = [_mm256_setzero_ps(); 8];
            for (j, sj) in s.iter().enumerate().take(m) {
                let vj = v.add(j * stride);
                for (c, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(*sj, _mm256_broadcast_ss(&*vj.add(c)), *a);
                }
            }
            let inv = _mm256_div_ps(_mm256_set1_ps(1.0), sum);
            let rows_out = transpose8(acc.map(|a| _mm256_mul_ps(a, inv)));
            for (r, row) in rows_out.iter().enumerate().take(live) {
                _mm256_storeu_ps(out.add((i0 + r) * stride), *row);
            }
            i0 += 8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{activation, cpu};
    use super::*;

    fn avx() -> bool {
        let ok = cpu::has_avx2_fma();
        if !ok {
            eprintln!("this CPU has no AVX2 + FMA: the intrinsics kernels are not used here");
        }
        ok
    }

    #[test]
    fn vector_exp_and_gelu_match_the_scalar_versions() {
        if !avx() {
            return;
        }
        let xs: Vec<f32> = (0..4096).map(|i| -100.0 + i as f32 * 0.05).collect();
        for ch in xs.chunks_exact(8) {
            let mut e = [0f32; 8];
            let mut g = [0f32; 8];
            let mut en = [0f32; 8];
            // SAFETY: AVX2 + FMA checked above; 8-float buffers.
            unsafe {
                _mm256_storeu_ps(e.as_mut_ptr(), exp8(_mm256_loadu_ps(ch.as_ptr())));
                _mm256_storeu_ps(
                    en.as_mut_ptr(),
                    exp8_nonpositive(_mm256_loadu_ps(ch.as_ptr())),
                );
                _mm256_storeu_ps(g.as_mut_ptr(), gelu_erf8(_mm256_loadu_ps(ch.as_ptr())));
            }
            for l in 0..8 {
                let (x, want) = (ch[l], activation::exp(ch[l]));
                assert!(
                    (e[l] - want).abs() <= 4e-7 * want,
                    "exp({x}) = {} vs {want}",
                    e[l]
                );
                if x <= 0.0 {
                    assert!(
                        (en[l] - want).abs() <= 4e-7 * want,
                        "exp({x}) = {} vs {want}",
                        en[l]
                    );
                }
                let want = activation::gelu_erf(x);
                assert!(
                    (g[l] - want).abs() <= 2e-6 * (1.0 + x.abs()),
                    "gelu({x}) = {} vs {want}",
                    g[l]
                );
            }
        }
        // GroupNorm's scale, shift and SiLU, over a length with a scalar tail
        let mut y = vec![0f32; xs.len() - 3];
        // SAFETY: AVX2 + FMA checked above; y as long as the input slice.
        unsafe { scale_shift_silu(&xs[3..], &mut y, 0.7, -0.2, true) };
        for (&x, &yv) in xs[3..].iter().zip(&y) {
            let want = activation::silu(x.mul_add(0.7, -0.2));
            assert!(
                (yv - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "silu at {x}: {yv} vs {want}"
            );
        }
    }
}
