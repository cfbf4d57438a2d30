//! AVX-512 build of the 8-wide-head attention over many keys (`x86_64::attention_rows_head8`'s job): the spatial
//! self-attention at 24x40 and up, 29% of the 5.1 M + 28.3 M composed run (docs/performance.md, session 13).
//!
//! The AVX2 kernel is bound by loads and by `exp`, not by FMAs: per block of 8 keys it loads 8 key and 8 value
//! channel-vectors and runs one 8-lane `exp`. Here a block is 16 keys in one 512-bit register (half the loads,
//! FMAs and `exp` calls per key), and two query rows share every key and value load (AVX-512's 32 registers hold
//! both rows' 8 broadcast query channels and 16 value accumulators). Same polynomial `exp` as `x86_64::exp8`,
//! same math; only the summation order differs (16 lanes), so results agree with the AVX2 kernel to a few ulp.
//!
//! Everything here is `unsafe` + `#[target_feature(enable = "avx512f")]`: callers check `cpu::has_avx512f()`.

#![cfg(target_arch = "x86_64")]
// The register-blocked loops index several arrays (queries, scores, accumulators) by the same row and channel.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::x86_64::HEAD;

/// Keys per block: one 512-bit register of scores.
pub(crate) const KEYS: usize = 16;

/// 16 lanes of `activation::exp` for x ≤ 0 (softmax after subtracting the row max): `x86_64::exp8_nonpositive`'s
/// range reduction and Cephes degree-6 polynomial, with 2ⁿ applied by `vscalefps`. x is clamped at −87.3 as
/// there: below, 2ⁿ would be subnormal, and subnormal FMA operands take microcode assists (the value product ran
/// 10x slower without the clamp).
#[inline(always)]
unsafe fn exp16_nonpositive(x: __m512) -> __m512 {
    unsafe {
        let x = _mm512_max_ps(x, _mm512_set1_ps(-87.3));
        let shifter = _mm512_set1_ps(12_582_912.0);
        let n = _mm512_sub_ps(
            _mm512_fmadd_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E), shifter),
            shifter,
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm512_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            5e-1,
        ] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let e = _mm512_add_ps(
            _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r),
            _mm512_set1_ps(1.0),
        );
        _mm512_scalef_ps(e, n)
    }
}

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
            let scale16 = _mm512_set1_ps(self.scale);
            let mut shift = [_mm512_setzero_ps(); R];
            for r in 0..R {
                shift[r] = _mm512_set1_ps(_mm512_reduce_max_ps(mx[r]) * self.scale);
            }
            let mut sum = [_mm512_setzero_ps(); R];
            let mut acc = [[_mm512_setzero_ps(); HEAD]; R];
            for b in 0..self.blocks {
                let o = b * KEYS;
                let mut e = [_mm512_setzero_ps(); R];
                for (r, er) in e.iter_mut().enumerate() {
                    let s = _mm512_loadu_ps(p.add(r * m16 + o));
                    *er = exp16_nonpositive(_mm512_fmsub_ps(s, scale16, shift[r]));
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
