//! The one GEMM call behind the convolution, temporal convolution, linear and feed-forward kernels, forward and
//! backward: the `gemm` crate that candle's CPU matmul uses, called directly so that the kernels choose its
//! threading and its initial value; or, where the run allows lower precision (`MatmulPrecision`) and the CPU has
//! AMX, the bf16 tiles of `amx`.

use std::sync::atomic::{AtomicU8, Ordering};

/// How precisely the f32 GEMMs of the CPU kernels multiply, named and meant as PyTorch's
/// `torch.set_float32_matmul_precision`: a permission, not a demand. A CPU without AMX computes in f32 whatever
/// is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MatmulPrecision {
    /// f32 products (gemm's AVX-512 / AVX2 kernels). The default.
    #[default]
    Highest,
    /// Three bf16 products per f32 product on AMX (`amx::Precision::Bf16x3`): relative error ~2⁻¹⁶ per
    /// product; the UNet fixtures' outputs land within 9e-5 of diffusers' (f32: 5e-6).
    High,
    /// One bf16 product on AMX: bf16's 8-bit significand on every operand (relative error ~2⁻⁹ per product,
    /// f32 accumulation), the precision of a bf16 model's matmuls. The UNet fixtures' outputs land within 1.5% of
    /// their scale (F16 weights and compute: 0.4%), outside the F16 tolerance.
    Medium,
}

impl std::str::FromStr for MatmulPrecision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "highest" => Ok(Self::Highest),
            "high" => Ok(Self::High),
            "medium" => Ok(Self::Medium),
            _ => Err(format!("{s:?}: expected highest, high or medium")),
        }
    }
}

impl std::fmt::Display for MatmulPrecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Highest => "highest",
            Self::High => "high",
            Self::Medium => "medium",
        })
    }
}

static PRECISION: AtomicU8 = AtomicU8::new(0);

/// Set the precision of every later GEMM in this process (all threads).
pub fn set_matmul_precision(p: MatmulPrecision) {
    PRECISION.store(p as u8, Ordering::Relaxed);
}

/// The precision set by `set_matmul_precision` (`Highest` until then).
pub fn matmul_precision() -> MatmulPrecision {
    match PRECISION.load(Ordering::Relaxed) {
        1 => MatmulPrecision::High,
        2 => MatmulPrecision::Medium,
        _ => MatmulPrecision::Highest,
    }
}

/// What the GEMMs actually compute in on this machine: the set precision where the CPU has AMX, `Highest`
/// elsewhere.
pub fn effective_matmul_precision() -> MatmulPrecision {
    #[cfg(target_arch = "x86_64")]
    if super::amx::available() {
        return matmul_precision();
    }
    MatmulPrecision::Highest
}

/// `dst += lhs · rhs` for an (m, k) lhs and a (k, n) rhs into an (m, n) dst whose rows are `dst_rs` apart and
/// contiguous; lhs and rhs strides are (column, row). The one GEMM call of the conv, temporal conv and linear kernels.
///
/// # Safety
/// Every addressed element of the three matrices must be in bounds, and dst must not alias lhs or rhs.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_accumulate(
    dims: (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    lhs: *const f32,
    lhs_strides: (usize, usize),
    rhs: *const f32,
    rhs_strides: (usize, usize),
    parallelism: gemm::Parallelism,
) {
    // SAFETY: forwarded contract.
    unsafe {
        gemm_into(
            dims,
            dst,
            dst_rs,
            true,
            lhs,
            lhs_strides,
            rhs,
            rhs_strides,
            parallelism,
        )
    }
}

/// `dst = lhs · rhs`, or `dst += lhs · rhs` where `read_dst` (see `gemm_accumulate`). Without `read_dst` gemm
/// treats dst's old value as zero and never reads it (gemm-common sets alpha to 0, whose kernels only store).
///
/// # Safety
/// As `gemm_accumulate`.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_into(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    read_dst: bool,
    lhs: *const f32,
    (lhs_cs, lhs_rs): (usize, usize),
    rhs: *const f32,
    (rhs_cs, rhs_rs): (usize, usize),
    parallelism: gemm::Parallelism,
) {
    #[cfg(target_arch = "x86_64")]
    {
        let bf16 = match matmul_precision() {
            MatmulPrecision::Highest => None,
            MatmulPrecision::High => Some(super::amx::Precision::Bf16x3),
            MatmulPrecision::Medium => Some(super::amx::Precision::Bf16),
        };
        if let Some(prec) = bf16.filter(|_| super::amx::available()) {
            let parallel = matches!(parallelism, gemm::Parallelism::Rayon(t) if t > 1);
            // SAFETY: forwarded contract; `available()` checked.
            unsafe {
                super::amx::gemm(
                    (m, n, k),
                    dst,
                    dst_rs,
                    read_dst,
                    lhs,
                    (lhs_cs, lhs_rs),
                    rhs,
                    (rhs_cs, rhs_rs),
                    parallel,
                    prec,
                )
            };
            return;
        }
    }
    // SAFETY: forwarded contract; alpha = beta = 1: dst = dst + lhs·rhs when read_dst, lhs·rhs otherwise.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            read_dst,
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
