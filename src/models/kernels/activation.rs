//! Scalar `exp`, `erf`, GELU and SiLU: polynomial approximations that LLVM vectorises inside the kernels' loops
//! (libm's `expf` is scalar), and the reference the AVX2 versions in `x86_64` follow (same polynomials).

/// eˣ for x in [-87.3, 88.7] (clamped outside): x = n·ln2 + r, |r| ≤ ln2/2, eʳ by a degree-6 polynomial (Cephes
/// `expf` coefficients), 2ⁿ through the exponent bits. Relative error < 2e-7. Branch-free, so loops over it vectorise.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Round to nearest by adding and removing 1.5·2²³ (no SSE4.1 `roundps` on the baseline target).
    const SHIFTER: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.7);
    let shifted = x * LOG2E + SHIFTER;
    let n = shifted - SHIFTER;
    // n as an integer, read off the shifted value's mantissa (its ulp is 1): an integer subtraction, where
    // `n as i32` (saturating, NaN-checked) would keep LLVM from vectorising the loops that call this.
    let ni = (shifted.to_bits() as i32).wrapping_sub(SHIFTER.to_bits() as i32);
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
    let bits = ((ni + 127).clamp(1, 254) as u32) << 23;
    e * f32::from_bits(bits) * if n > 127.0 { 2.0 } else { 1.0 }
}

/// erf(x), Abramowitz & Stegun 7.1.26 with our `exp`: absolute error < 1e-6 in f32 (1.5e-7 in exact arithmetic).
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
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
pub(crate) fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// SiLU `x · σ(x)`.
#[inline(always)]
pub(crate) fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

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
}
