//! The one GEMM call behind the convolution, temporal convolution, linear and feed-forward kernels (the `gemm`
//! crate that candle's CPU matmul uses, called directly so that the kernels choose its threading and its
//! initial value).

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
