//! Linear layers `y = x Wᵀ + b (+ residual)` and diffusers' GEGLU feed-forward (`FeedForward(activation_fn =
//! "geglu")`): one GEMM over every row with the bias and residual in its initial value, and the feed-forward's
//! projection, GEGLU and output projection one block of rows at a time, for CPU f32 inference; candle-nn's
//! `Linear` and composed ops otherwise.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Module, Shape, Tensor};
use candle_nn::Linear;
use rayon::prelude::*;

use super::activation::{erf, exp, gelu_erf};
use super::cpu::{
    contiguous_f32, cpu_f32_inference, fused_f32_cpu, has_avx2_fma, output_buffer, with_f32,
};
use super::gemm::gemm_into;
use super::linear_grad;
use super::portable::transpose;

/// `x Wᵀ + b (+ residual)` of a candle-nn `Linear`: one fused GEMM for CPU f32 inference (`fused_linear`); while
/// training on the CPU the same GEMM with its own backward (`linear_grad`) and an add; candle-nn's `Linear` and an
/// add otherwise.
pub(crate) fn linear(
    x: &Tensor,
    l: &Linear,
    residual: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    if cpu_f32_inference([x, l.weight()].into_iter().chain(residual)) {
        return fused_linear(x, l.weight(), l.bias(), residual);
    }
    let y = if fused_f32_cpu(x) && l.weight().dtype() == DType::F32 {
        // Training on the CPU: the same GEMM with its own backward.
        linear_grad::linear_trained(x, l.weight(), l.bias())?
    } else {
        // F16/BF16 and CUDA: candle-nn's `Linear` (cuBLAS on CUDA).
        l.forward(x)?
    };
    match residual {
        Some(r) => y + r,
        None => Ok(y),
    }
}

/// diffusers' `FeedForward(activation_fn = "geglu")` plus `residual`: `proj` (dim → 2·inner) split into
/// `[h, gate]`, `h · gelu(gate)` with the exact erf GELU, then `out` (inner → dim). One pass over blocks of rows
/// for CPU f32 inference (`fused_feed_forward_geglu`), the three ops of `linear` and candle otherwise.
pub(crate) fn feed_forward_geglu(
    x: &Tensor,
    proj: &Linear,
    out: &Linear,
    residual: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let operands = [x, proj.weight(), out.weight()];
    if cpu_f32_inference(operands.into_iter().chain(residual)) {
        return fused_feed_forward_geglu(
            x,
            (proj.weight(), proj.bias()),
            (out.weight(), out.bias()),
            residual,
        );
    }
    let hg = linear(x, proj, None)?;
    if fused_f32_cpu(&hg) {
        // Training on the CPU: the GEGLU op with its own backward, instead of two strided narrows (whose backward
        // pads each gradient to the projection's full width) and candle's erf GELU (a dozen full-size tensors in
        // its backward).
        return linear(&geglu(&hg)?, out, residual);
    }
    let last = hg.rank() - 1;
    let inner = hg.dim(last)? / 2;
    let h = hg.narrow(last, 0, inner)?;
    let gate = hg.narrow(last, inner, inner)?;
    linear(&(h * gate.gelu_erf()?)?, out, residual)
}

/// `x Wᵀ + b + residual` for f32 CPU tensors: x (..., i), W (o, i), b (o,), residual of the output's shape.
/// Inference only (no backward).
pub fn fused_linear(
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

/// `y = x Wᵀ + b (+ residual)` over every row of x at once. candle-nn's `Linear` on a (batch, n, i) input runs one
/// GEMM per batch item (the temporal transformers have batch = pixels · heads of 16-row problems) and adds the bias
/// and the residual in two more passes; here the output starts as `residual + b` and one GEMM accumulates into it.
struct LinearOp {
    bias: Option<Tensor>,
    residual: Option<Tensor>,
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
        let checked = |t: &Tensor, n: usize, what: &str| -> candle_core::Result<()> {
            if t.elem_count() != n {
                candle_core::bail!("linear: {what} has {} values, expected {n}", t.elem_count());
            }
            Ok(())
        };
        if let Some(r) = &self.residual {
            checked(r, rows * o, "residual")?;
        }
        if let Some(b) = &self.bias {
            checked(b, o, "bias")?;
        }
        let mut out = output_buffer(rows * o);
        let operands = [self.residual.as_ref(), self.bias.as_ref()];
        with_f32(operands, "linear residual / bias", |[residual, bias]| {
            linear_rows(&mut out, x, &transposed(w, o), (rows, o, i), residual, bias);
            Ok(())
        })?;
        let mut shape = dims.to_vec();
        if let Some(l) = shape.last_mut() {
            *l = o;
        }
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }
}

/// Rows per block of the row-blocked kernels (`linear_rows`, `feed_forward_geglu`) whose widest intermediate is
/// `width` floats a row: about 128 KiB of it per block, and at least 4 blocks per thread for the pool to balance.
fn row_block(rows: usize, width: usize) -> usize {
    let threads = rayon::current_num_threads();
    (32768 / width.max(1)).clamp(8, rows.div_ceil(4 * threads).max(8))
}

/// `w` (rows, cols) row-major, transposed: (cols, rows) row-major. The linear kernels take their weight as Wᵀ
/// (i, o), transposed once per call: with W (o, i) as it is stored, gemm packs it again for every block of rows
/// (the packing was 12% of a 28 M-parameter composed run, almost all of it the linear layers' weights); Wᵀ is
/// already in the column-major layout gemm's kernels read, so it is not packed at all.
pub(super) fn transposed(w: &[f32], rows: usize) -> Vec<f32> {
    let cols = w.len() / rows.max(1);
    let mut t = output_buffer(w.len());
    transpose(w, (cols, cols), rows, &mut t);
    t
}

/// `out = x Wᵀ (+ bias) (+ residual)` for one block of rows: x (n, i), `wt` = Wᵀ (i, o), out and residual (n, o).
fn linear_block(
    out: &mut [f32],
    x: &[f32],
    wt: &[f32],
    (o, i): (usize, usize),
    residual: Option<&[f32]>,
    bias: Option<&[f32]>,
    par: gemm::Parallelism,
) {
    let n = out.len() / o.max(1);
    assert!(x.len() == n * i && wt.len() == o * i && residual.is_none_or(|r| r.len() == out.len()));
    match (residual, bias) {
        (Some(r), b) => {
            out.copy_from_slice(r);
            if let Some(b) = b {
                for row in out.chunks_exact_mut(o) {
                    row.iter_mut().zip(b).for_each(|(y, b)| *y += b);
                }
            }
        }
        (None, Some(b)) => out
            .chunks_exact_mut(o)
            .for_each(|row| row.copy_from_slice(b)),
        (None, None) => {}
    }
    // SAFETY: dst (n, o) row-major; lhs x (n, i) row-major; rhs Wᵀ (i, o) row-major; all in bounds (asserted).
    // Without an initial value (read_dst false) gemm writes dst without reading it, so an uninitialised buffer is
    // never read.
    unsafe {
        gemm_into(
            (n, o, i),
            out.as_mut_ptr(),
            o,
            residual.is_some() || bias.is_some(),
            x.as_ptr(),
            (1, i),
            wt.as_ptr(),
            (1, o),
            par,
        )
    }
}

/// `out = x Wᵀ (+ bias) (+ residual)` for x (rows, i), `wt` = Wᵀ (i, o) (`transposed`), out (rows, o), in blocks
/// of rows: each block's output is initialised (residual and bias, or nothing) and multiplied into while it is in
/// cache, the blocks in parallel. Initialising the whole output first and then running one large GEMM over it
/// wrote and re-read every element from memory (the GEGLU projection at 24x40 is 30 MB); that pass was 5% of a
/// composed step.
pub(super) fn linear_rows(
    out: &mut [f32],
    x: &[f32],
    wt: &[f32],
    (rows, o, i): (usize, usize, usize),
    residual: Option<&[f32]>,
    bias: Option<&[f32]>,
) {
    let threads = rayon::current_num_threads();
    let block_rows = row_block(rows, o);
    let one = |(bi, ob): (usize, &mut [f32]), par: gemm::Parallelism| {
        let (r0, n) = (bi * block_rows, ob.len() / o);
        let residual = residual.map(|r| &r[r0 * o..(r0 + n) * o]);
        linear_block(
            ob,
            &x[r0 * i..(r0 + n) * i],
            wt,
            (o, i),
            residual,
            bias,
            par,
        )
    };
    if rows >= 2 * block_rows && threads > 1 {
        out.par_chunks_mut(block_rows * o)
            .enumerate()
            .for_each(|item| one(item, gemm::Parallelism::None));
    } else {
        let par = if rows * o * i >= 1 << 16 && threads > 1 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        out.chunks_mut(block_rows * o)
            .enumerate()
            .for_each(|item| one(item, par));
    }
}

thread_local! {
    /// Per-thread scratch of `feed_forward_geglu`: one block's projection and its GEGLU.
    static FF_SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// diffusers' `FeedForward(activation_fn = "geglu")` plus a residual, for f32 CPU inference:
/// `out = residual + b₂ + (h · gelu(gate)) W₂ᵀ` with `[h, gate] = x W₁ᵀ + b₁`, one block of rows at a time so that
/// the 8·dim-wide projection and the 4·dim-wide GEGLU stay in cache (at 24x40 they are 30 and 15 MB per clip when
/// written out whole). x (..., dim), W₁ (8·dim, dim), W₂ (dim_out, 4·dim), residual of the output's shape.
pub fn fused_feed_forward_geglu(
    x: &Tensor,
    (w1, b1): (&Tensor, Option<&Tensor>),
    (w2, b2): (&Tensor, Option<&Tensor>),
    residual: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let (two_inner, dim) = w1.dims2()?;
    let (dim_out, inner) = w2.dims2()?;
    let x_dims = x.dims().to_vec();
    if two_inner != 2 * inner || x_dims.last() != Some(&dim) {
        candle_core::bail!(
            "feed_forward: x {x_dims:?}, proj {:?}, out {:?}",
            w1.shape(),
            w2.shape()
        );
    }
    let rows = x.elem_count() / dim.max(1);
    let mut out_dims = x_dims;
    if let Some(l) = out_dims.last_mut() {
        *l = dim_out;
    }
    let checks = [
        (b1, two_inner, "proj bias"),
        (b2, dim_out, "out bias"),
        (residual, rows * dim_out, "residual"),
    ];
    for (t, n, what) in checks {
        if let Some(t) = t.filter(|t| t.elem_count() != n) {
            candle_core::bail!(
                "feed_forward: {what} has {} values, expected {n}",
                t.elem_count()
            );
        }
    }
    let contiguous = |t: Option<&Tensor>| t.map(|t| t.contiguous()).transpose();
    let (x, w1, w2) = (x.contiguous()?, w1.contiguous()?, w2.contiguous()?);
    let (b1, b2, residual) = (contiguous(b1)?, contiguous(b2)?, contiguous(residual)?);
    let operands = [
        Some(&x),
        Some(&w1),
        Some(&w2),
        b1.as_ref(),
        b2.as_ref(),
        residual.as_ref(),
    ];
    let y = with_f32(operands, "feed_forward", |[x, w1, w2, b1, b2, residual]| {
        let (Some(x), Some(w1), Some(w2)) = (x, w1, w2) else {
            candle_core::bail!("feed_forward: missing operand");
        };
        Ok(feed_forward_rows(
            x,
            (w1, b1),
            (w2, b2),
            residual,
            (rows, dim, inner, dim_out),
        ))
    })?;
    Tensor::from_vec(y, out_dims, &candle_core::Device::Cpu)
}

/// `feed_forward_geglu` on the operands' data: rows of `dim` in, `dim_out` out, GEGLU `inner` wide.
fn feed_forward_rows(
    x: &[f32],
    (w1, b1): (&[f32], Option<&[f32]>),
    (w2, b2): (&[f32], Option<&[f32]>),
    residual: Option<&[f32]>,
    (rows, dim, inner, dim_out): (usize, usize, usize, usize),
) -> Vec<f32> {
    let two_inner = 2 * inner;
    let mut y = output_buffer(rows * dim_out);
    let block_rows = row_block(rows, two_inner);
    let avx = has_avx2_fma();
    let (w1t, w2t) = (transposed(w1, two_inner), transposed(w2, dim_out));
    y.par_chunks_mut(block_rows * dim_out)
        .enumerate()
        .for_each(|(bi, yb)| {
            let (r0, n) = (bi * block_rows, yb.len() / dim_out);
            FF_SCRATCH.with(|s| {
                let mut s = s.borrow_mut();
                let (hg, g) = &mut *s;
                hg.resize(n * two_inner, 0.0);
                g.resize(n * inner, 0.0);
                let none = gemm::Parallelism::None;
                linear_block(
                    hg,
                    &x[r0 * dim..(r0 + n) * dim],
                    &w1t,
                    (two_inner, dim),
                    None,
                    b1,
                    none,
                );
                geglu_dispatch(avx, hg, g, inner);
                let res = residual.map(|r| &r[r0 * dim_out..(r0 + n) * dim_out]);
                linear_block(yb, g, &w2t, (dim_out, inner), res, b2, none);
            })
        });
    y
}

/// `h · gelu_erf(gate)` where the last axis of the input is `[h, gate]` (2·inner wide), differentiable: the
/// training step's GEGLU (inference runs the same rows inside `fused_feed_forward_geglu`).
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

/// `geglu_rows`, with the AVX2 intrinsics (`x86_64::geglu_rows`) where `avx` (the CPU has AVX2 and FMA).
fn geglu_dispatch(avx: bool, x: &[f32], out: &mut [f32], inner: usize) {
    #[cfg(target_arch = "x86_64")]
    if avx {
        // SAFETY: the caller checked that the CPU has AVX2 and FMA; geglu_rows asserts nothing more than the
        // slices' lengths, which it reads through chunks.
        unsafe { super::x86_64::geglu_rows(x, out, inner) };
        return;
    }
    let _ = avx;
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
            .for_each(|(o, xb)| geglu_dispatch(avx, xb, o, inner));
        let mut shape = dims.to_vec();
        if let Some(l) = shape.last_mut() {
            *l = inner;
        }
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(&grad.contiguous()?, &GegluGrad)?))
    }
}

/// GEGLU of a f32 CPU tensor whose last axis is `[h, gate]`: `h · gelu_erf(gate)`, half as wide, differentiable.
fn geglu(x: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(Geglu)
}

/// The GEGLU backward, `[dh, dgate]` from the input `[h, gate]` and the output gradient `dy` (a CustomOp2 on
/// (input, dy)): `dh = dy · gelu(g)`, `dg = dy · h · gelu'(g)` with `gelu'(g) = Φ(g) + g · φ(g)`.
struct GegluGrad;

impl candle_core::CustomOp2 for GegluGrad {
    fn name(&self) -> &'static str {
        "vadapt-geglu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "geglu_grad input")?;
        let dy = contiguous_f32(s2, l2, "geglu_grad output gradient")?;
        let last = *l1.shape().dims().last().unwrap_or(&0);
        if last == 0 || !last.is_multiple_of(2) || dy.len() * 2 != x.len() {
            candle_core::bail!(
                "geglu_grad: input {:?}, gradient {:?}",
                l1.shape(),
                l2.shape()
            );
        }
        let inner = last / 2;
        let mut dx = output_buffer(x.len());
        let rows = (16384 / last).max(1);
        let avx = has_avx2_fma();
        dx.par_chunks_mut(rows * last)
            .zip(x.par_chunks(rows * last))
            .zip(dy.par_chunks(rows * inner))
            .for_each(|((dxb, xb), dyb)| geglu_grad_dispatch(avx, xb, dyb, dxb, inner));
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// `geglu_grad_rows`, compiled for AVX2 + FMA where `avx` (auto-vectorised: the polynomial `exp`/`erf` are
/// branch-free).
fn geglu_grad_dispatch(avx: bool, x: &[f32], dy: &[f32], dx: &mut [f32], inner: usize) {
    #[cfg(target_arch = "x86_64")]
    if avx {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn rows_avx2(x: &[f32], dy: &[f32], dx: &mut [f32], inner: usize) {
            geglu_grad_rows(x, dy, dx, inner)
        }
        // SAFETY: the caller checked that the CPU has AVX2 and FMA.
        unsafe { rows_avx2(x, dy, dx, inner) };
        return;
    }
    let _ = avx;
    geglu_grad_rows(x, dy, dx, inner)
}

#[inline(always)]
fn geglu_grad_rows(x: &[f32], dy: &[f32], dx: &mut [f32], inner: usize) {
    const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;
    let rows = x
        .chunks_exact(2 * inner)
        .zip(dy.chunks_exact(inner))
        .zip(dx.chunks_exact_mut(2 * inner));
    for ((xr, dyr), dxr) in rows {
        let (h, g) = xr.split_at(inner);
        let (dh, dg) = dxr.split_at_mut(inner);
        for c in 0..inner {
            let (gv, d) = (g[c], dyr[c]);
            let cdf = 0.5 * (1.0 + erf(gv * std::f32::consts::FRAC_1_SQRT_2));
            let pdf = FRAC_1_SQRT_2PI * exp(-0.5 * gv * gv);
            dh[c] = d * gv * cdf;
            dg[c] = d * h[c] * (cdf + gv * pdf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    use crate::models::max_abs_diff;

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
            (
                fused_linear(&x, &w, Some(&b), None).unwrap(),
                with_bias.clone(),
            ),
            (fused_linear(&x, &w, None, None).unwrap(), no_bias.clone()),
            (
                fused_linear(&x, &w, Some(&b), Some(&r)).unwrap(),
                (&with_bias + &r).unwrap(),
            ),
            (
                fused_linear(&x, &w, None, Some(&r)).unwrap(),
                (&no_bias + &r).unwrap(),
            ),
        ] {
            assert_eq!(ours.dims(), &[5, 7, 9]);
            let diff = max_abs_diff(&reference, &ours);
            assert!(diff < 1e-5, "{diff}");
        }
        assert!(
            fused_linear(&x, &w, Some(&r), None).is_err(),
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

    /// The GEGLU op's backward (the training path) against candle's autograd through the composed ops, over an
    /// inner width with a partial vector and gates far out in both tails.
    #[test]
    fn geglu_backward_matches_composed_ops() {
        let dev = Device::Cpu;
        let inner = 13;
        let x = candle_core::Var::from_tensor(
            &(Tensor::randn(0f32, 1.0, (3, 5, 2 * inner), &dev).unwrap() * 3.0).unwrap(),
        )
        .unwrap();
        let w = Tensor::randn(0f32, 1.0, (3, 5, inner), &dev).unwrap();
        let ours = (geglu(x.as_tensor()).unwrap() * &w)
            .unwrap()
            .sum_all()
            .unwrap();
        let (h, g) = (
            x.narrow(2, 0, inner).unwrap(),
            x.narrow(2, inner, inner).unwrap(),
        );
        let composed = ((h * g.gelu_erf().unwrap()).unwrap() * &w)
            .unwrap()
            .sum_all()
            .unwrap();
        let grad = |loss: &Tensor| loss.backward().unwrap().get(x.as_tensor()).unwrap().clone();
        let (ours_grad, reference) = (grad(&ours), grad(&composed));
        assert_eq!(ours_grad.dims(), &[3, 5, 2 * inner]);
        let diff = max_abs_diff(&reference, &ours_grad);
        assert!(diff < 2e-5, "{diff}");
    }

    /// The fused feed-forward equals projection, GEGLU and output projection run one after the other, over row
    /// counts that leave a partial last block, with and without biases and residual.
    #[test]
    fn feed_forward_geglu_matches_the_three_ops() {
        let dev = Device::Cpu;
        for (rows, dim) in [(1000, 16), (37, 24)] {
            let x = Tensor::randn(0f32, 1.0, (rows, dim), &dev).unwrap();
            let w1 = Tensor::randn(0f32, 0.3, (8 * dim, dim), &dev).unwrap();
            let b1 = Tensor::randn(0f32, 0.3, 8 * dim, &dev).unwrap();
            let w2 = Tensor::randn(0f32, 0.2, (dim, 4 * dim), &dev).unwrap();
            let b2 = Tensor::randn(0f32, 0.3, dim, &dev).unwrap();
            let r = Tensor::randn(0f32, 1.0, (rows, dim), &dev).unwrap();
            for (with_bias, with_residual) in [(true, true), (false, false), (true, false)] {
                let (b1, b2) = (with_bias.then_some(&b1), with_bias.then_some(&b2));
                let res = with_residual.then_some(&r);
                let reference = fused_linear(
                    &geglu(&fused_linear(&x, &w1, b1, None).unwrap()).unwrap(),
                    &w2,
                    b2,
                    res,
                )
                .unwrap();
                let ours = fused_feed_forward_geglu(&x, (&w1, b1), (&w2, b2), res).unwrap();
                assert_eq!(ours.dims(), &[rows, dim]);
                let diff = max_abs_diff(&reference, &ours);
                assert!(
                    diff < 1e-5,
                    "{rows} x {dim}, bias {with_bias}, residual {with_residual}: {diff}"
                );
            }
        }
        let x = Tensor::randn(0f32, 1.0, (5, 8), &dev).unwrap();
        let w1 = Tensor::randn(0f32, 0.3, (64, 8), &dev).unwrap();
        let w2 = Tensor::randn(0f32, 0.3, (8, 16), &dev).unwrap();
        assert!(
            fused_feed_forward_geglu(&x, (&w1, None), (&w2, None), None).is_err(),
            "an output projection that does not take half the projection's width is refused"
        );
    }
}
