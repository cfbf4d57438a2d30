//! Normalisations: `torch.nn.GroupNorm` (with a backward of our own, and fused with the SiLU that follows it in
//! every ResnetBlock2D and TemporalConvLayer stage) and LayerNorm over the last axis. Each public op picks its path:
//! our CPU kernels for f32 on the CPU (GroupNorm also while training, through its backward), candle's ops
//! otherwise.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Module, Shape, Tensor, D};
use candle_nn::LayerNorm;
use rayon::prelude::*;

use super::activation::{exp, silu};
use super::cpu::{
    apply3, apply3_differentiable, contiguous_f32, fused_f32_cpu, has_avx2_fma, norm_operands,
    output_buffer, unpack_grads, with_f32, with_thread_buffer, Grads3,
};
#[cfg(target_arch = "x86_64")]
use super::portable::Fused;
use super::portable::{squared_deviations, sum, MulAdd, Plain, LANES};

/// `torch.nn.GroupNorm` (`groups`, `eps`, per-channel `weight` / `bias`): statistics over each group of channels and
/// every position after the channel axis (for a 5-D (b, c, f, h, w) input that includes the frames, as
/// ModelScope's temporal layers need). The fused op (differentiable, so training takes it too) for f32 CPU inputs,
/// candle's composed ops otherwise.
pub(crate) fn group_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    groups: usize,
    eps: f64,
) -> candle_core::Result<Tensor> {
    if fused_f32_cpu(x) && weight.dtype() == DType::F32 {
        return fused_group_norm(x, weight, bias, groups, eps);
    }
    // F16/BF16 and CUDA: candle's ops (CUDA kernels in all three dtypes), statistics in F32.
    group_norm_composed(x, weight, bias, groups, eps)
}

/// `group_norm` of candle's differentiable ops, in F32 whatever the weights' dtype.
fn group_norm_composed(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    groups: usize,
    eps: f64,
) -> candle_core::Result<Tensor> {
    let dims = x.dims().to_vec();
    let (b, c) = (dims[0], dims[1]);
    // Statistics in F32 whatever the weights' dtype (diffusers upcasts GroupNorm the same way under autocast).
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let grouped = x.reshape((b, groups, ()))?;
    let mean = grouped.mean_keepdim(D::Minus1)?;
    let centered = grouped.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centered
        .broadcast_div(&(var + eps)?.sqrt()?)?
        .reshape(dims.as_slice())?;
    let mut shape = vec![1, c];
    shape.extend(std::iter::repeat(1).take(dims.len() - 2));
    let f32 = |t: &Tensor| -> candle_core::Result<Tensor> {
        t.to_dtype(DType::F32)?.reshape(shape.as_slice())
    };
    normed
        .broadcast_mul(&f32(weight)?)?
        .broadcast_add(&f32(bias)?)?
        .to_dtype(dtype)
}

/// `silu(group_norm(x))`: one fused pass for CPU f32 inference (no graph recorded), the two ops otherwise.
pub(crate) fn group_norm_silu(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    groups: usize,
    eps: f64,
) -> candle_core::Result<Tensor> {
    if fused_f32_cpu(x) && weight.dtype() == DType::F32 {
        // One pass, and while training one backward for both (the SiLU's own backward was seven full-size ops).
        return fused_group_norm_silu(x, weight, bias, groups, eps);
    }
    group_norm(x, weight, bias, groups, eps)?.silu()
}

/// LayerNorm over the last axis: our kernel (with its own backward) for f32 on the CPU, composed of differentiable
/// ops while training elsewhere (candle-nn's fused kernel has no backward), candle-nn's `LayerNorm` otherwise.
pub(crate) fn layer_norm(x: &Tensor, ln: &LayerNorm) -> candle_core::Result<Tensor> {
    match ln.bias() {
        Some(b) if fused_f32_cpu(x) && [ln.weight().dtype(), b.dtype()] == [DType::F32; 2] => {
            fused_layer_norm(x, ln.weight(), b, ln.eps() as f32)
        }
        Some(b) if x.track_op() || ln.weight().track_op() => {
            candle_nn::ops::layer_norm_slow(x, ln.weight(), b, ln.eps() as f32)
        }
        // F16/BF16 and CUDA: candle-nn's LayerNorm (a CUDA kernel in all three dtypes).
        _ => ln.forward(x),
    }
}

/// `torch.nn.GroupNorm` over (batch, channels, ...): per (batch, group) block of `channels / groups` channels times
/// every position, `y = (x − μ) / sqrt(σ² + eps) · γ_c + β_c`, with σ² the biased variance (two passes, as torch).
struct GroupNormOp {
    groups: usize,
    eps: f64,
    /// Apply SiLU to the output in the same pass (the backward covers it too).
    silu: bool,
}

/// Block geometry: (batch, channels, positions per channel).
fn geometry(shape: &Shape, groups: usize) -> candle_core::Result<(usize, usize, usize)> {
    let dims = shape.dims();
    if dims.len() < 2 || dims[1] % groups != 0 {
        candle_core::bail!("group_norm: shape {dims:?} with {groups} groups");
    }
    let s = dims[2..].iter().product::<usize>();
    Ok((dims[0], dims[1], s))
}

impl CustomOp3 for GroupNormOp {
    fn name(&self) -> &'static str {
        "vadapt-group-norm"
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
        let (x, w, b) = norm_operands((s1, l1), (s2, l2), (s3, l3), "group_norm")?;
        let (_, c, s) = geometry(l1.shape(), self.groups)?;
        let cg = c / self.groups;
        let block = cg * s;
        // Every block is written by `group_norm_block`.
        let mut y = output_buffer(x.len());
        y.par_chunks_mut(block)
            .zip(x.par_chunks(block))
            .enumerate()
            .for_each(|(i, (yb, xb))| {
                let c0 = (i % self.groups) * cg;
                group_norm_block(
                    xb,
                    yb,
                    &w[c0..c0 + cg],
                    &b[c0..c0 + cg],
                    s,
                    self.eps as f32,
                    self.silu,
                );
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = weight.dim(0)?;
        let packed = apply3(
            x,
            weight,
            grad,
            &GroupNormGrad {
                groups: self.groups,
                eps: self.eps,
                silu_bias: self.silu.then(|| bias.contiguous()).transpose()?,
            },
        )?;
        unpack_norm_grads(&packed, x, c)
    }
}

/// The GroupNorm backward, packed as [dx (all of x), dγ (c), dβ (c)]:
/// `dx = rstd · (dx̂ − mean(dx̂) − x̂ · mean(dx̂ · x̂))` with `dx̂ = dy · γ`, per block; `dγ_c = Σ dy · x̂`, `dβ_c = Σ dy`.
/// After a fused SiLU, `dy` is first taken through it: `dy · σ(z)(1 + z(1 − σ(z)))` at `z = x̂ · γ + β`.
struct GroupNormGrad {
    groups: usize,
    eps: f64,
    /// β, when the forward applied SiLU (its input z is recomputed from x̂).
    silu_bias: Option<Tensor>,
}

impl CustomOp3 for GroupNormGrad {
    fn name(&self) -> &'static str {
        "vadapt-group-norm-grad"
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
        let x = contiguous_f32(s1, l1, "group_norm_grad x")?;
        let w = contiguous_f32(s2, l2, "group_norm_grad weight")?;
        let dy = contiguous_f32(s3, l3, "group_norm_grad grad")?;
        let (_, c, s) = geometry(l1.shape(), self.groups)?;
        let cg = c / self.groups;
        let block = cg * s;
        let mut dx = output_buffer(x.len());
        let eps = self.eps as f32;
        // Per block: the per-channel partial sums of dy·x̂ and dy, reduced over the batch afterwards.
        let partials: Vec<Vec<(f32, f32)>> = with_f32(
            [self.silu_bias.as_ref()],
            "group_norm_grad bias",
            |[beta]| {
                Ok(dx
                    .par_chunks_mut(block)
                    .zip(x.par_chunks(block))
                    .zip(dy.par_chunks(block))
                    .enumerate()
                    .map(|(i, ((dxb, xb), dyb))| {
                        let c0 = (i % self.groups) * cg;
                        let channels = c0..c0 + cg;
                        let silu_beta = beta.map(|beta| &beta[channels.clone()]);
                        let scratch_len = if silu_beta.is_some() { block } else { 0 };
                        with_thread_buffer(&GRAD_SCRATCH, scratch_len, |dz| {
                            group_norm_grad_block(
                                BlockGrad {
                                    x: xb,
                                    dy: dyb,
                                    gamma: &w[channels],
                                    silu_beta,
                                    eps,
                                },
                                dxb,
                                dz,
                            )
                        })
                    })
                    .collect())
            },
        )?;
        let mut out = dx;
        let mut dw = vec![0f32; c];
        let mut db = vec![0f32; c];
        for (i, sums) in partials.iter().enumerate() {
            let c0 = (i % self.groups) * cg;
            for (k, (g, b)) in sums.iter().enumerate() {
                dw[c0 + k] += g;
                db[c0 + k] += b;
            }
        }
        out.extend_from_slice(&dw);
        out.extend_from_slice(&db);
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

thread_local! {
    /// Each thread's `dy · silu'(z)` block in the backward of a fused GroupNorm + SiLU.
    static GRAD_SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One GroupNorm block's backward operands: x and dy of the block (`gamma.len()` channels of equal length), the
/// block's channels of γ, and of β where the forward applied SiLU.
struct BlockGrad<'a> {
    x: &'a [f32],
    dy: &'a [f32],
    gamma: &'a [f32],
    silu_beta: Option<&'a [f32]>,
    eps: f32,
}

/// One GroupNorm block's `dx` (into `dx`) and its per-channel `(Σ dy · x̂, Σ dy)`, with the AVX2 + FMA build where
/// the CPU has it; `dz`: scratch of the block's length when SiLU is fused.
fn group_norm_grad_block(b: BlockGrad, dx: &mut [f32], dz: &mut [f32]) -> Vec<(f32, f32)> {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(b: BlockGrad, dx: &mut [f32], dz: &mut [f32]) -> Vec<(f32, f32)> {
            group_norm_grad_block_impl::<Fused>(b, dx, dz)
        }
        // SAFETY: the CPU has AVX2 and FMA (checked).
        return unsafe { avx2(b, dx, dz) };
    }
    group_norm_grad_block_impl::<Plain>(b, dx, dz)
}

/// `group_norm_grad_block`: the statistics recomputed as the forward computes them; after a fused SiLU, dy first
/// through it (`dy · silu'(z)`, `silu'(z) = σ(z) · (1 + z · (1 − σ(z)))` at `z = x̂ · γ + β`); then per channel
/// `dγ_c = Σ dy · x̂` and `dβ_c = Σ dy` in LANES accumulators, from which the block's `mean(dx̂)` = Σ_c γ_c dβ_c / N
/// and `mean(dx̂ · x̂)` = Σ_c γ_c dγ_c / N follow; last `dx = rstd · (dy γ − mean(dx̂) − x̂ mean(dx̂ · x̂))`.
#[inline(always)]
fn group_norm_grad_block_impl<F: MulAdd>(
    BlockGrad {
        x,
        dy,
        gamma,
        silu_beta,
        eps,
    }: BlockGrad,
    dx: &mut [f32],
    dz: &mut [f32],
) -> Vec<(f32, f32)> {
    let n = x.len() as f32;
    let s = x.len() / gamma.len();
    let (mean, rstd) = block_statistics::<F>(x, eps);
    let dy: &[f32] = match silu_beta {
        Some(beta) => {
            for (k, (&g, &b)) in gamma.iter().zip(beta).enumerate() {
                // z = x·a + c per channel.
                let a = rstd * g;
                let c = b - mean * a;
                let range = k * s..(k + 1) * s;
                for ((d, &xv), &dyv) in dz[range.clone()]
                    .iter_mut()
                    .zip(&x[range.clone()])
                    .zip(&dy[range])
                {
                    let z = F::mul_add(xv, a, c);
                    let sig = 1.0 / (1.0 + exp(-z));
                    *d = dyv * sig * F::mul_add(z, 1.0 - sig, 1.0);
                }
            }
            dz
        }
        None => dy,
    };
    let mut sums = Vec::with_capacity(gamma.len());
    let (mut mean_dxh, mut mean_dxh_xh) = (0f32, 0f32);
    for (k, &g) in gamma.iter().enumerate() {
        let range = k * s..(k + 1) * s;
        let (xs, ds) = (&x[range.clone()], &dy[range]);
        let (mut acc_g, mut acc_b) = ([0f32; LANES], [0f32; LANES]);
        let (xc, dc) = (xs.chunks_exact(LANES), ds.chunks_exact(LANES));
        let (mut dgamma, mut dbeta) = (0f32, 0f32);
        for (&xv, &dv) in xc.remainder().iter().zip(dc.remainder()) {
            dgamma += dv * (xv - mean) * rstd;
            dbeta += dv;
        }
        for (xl, dl) in xc.zip(dc) {
            for l in 0..LANES {
                acc_g[l] = F::mul_add(dl[l], (xl[l] - mean) * rstd, acc_g[l]);
                acc_b[l] += dl[l];
            }
        }
        dgamma += acc_g.iter().sum::<f32>();
        dbeta += acc_b.iter().sum::<f32>();
        mean_dxh += g * dbeta;
        mean_dxh_xh += g * dgamma;
        sums.push((dgamma, dbeta));
    }
    let (m1, m2) = (mean_dxh / n, mean_dxh_xh / n);
    for (k, &g) in gamma.iter().enumerate() {
        let range = k * s..(k + 1) * s;
        for ((d, &xv), &dv) in dx[range.clone()]
            .iter_mut()
            .zip(&x[range.clone()])
            .zip(&dy[range])
        {
            let xh = (xv - mean) * rstd;
            *d = rstd * (dv * g - m1 - xh * m2);
        }
    }
    sums
}

/// `(dx, dγ, dβ)` of a norm backward packed as [dx (all of x), dγ (c), dβ (c)].
fn unpack_norm_grads(packed: &Tensor, x: &Tensor, c: usize) -> candle_core::Result<Grads3> {
    let per_channel = candle_core::Shape::from(c);
    unpack_grads(
        packed,
        [Some(x.shape()), Some(&per_channel), Some(&per_channel)],
    )
}

/// GroupNorm of a contiguous f32 CPU tensor (batch, channels, ...), differentiable.
pub(crate) fn fused_group_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    groups: usize,
    eps: f64,
) -> candle_core::Result<Tensor> {
    apply3_differentiable(
        x,
        weight,
        bias,
        GroupNormOp {
            groups,
            eps,
            silu: false,
        },
    )
}

/// `silu(GroupNorm(x))` in one pass, differentiable.
fn fused_group_norm_silu(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    groups: usize,
    eps: f64,
) -> candle_core::Result<Tensor> {
    apply3_differentiable(
        x,
        weight,
        bias,
        GroupNormOp {
            groups,
            eps,
            silu: true,
        },
    )
}

/// LayerNorm over the last axis of an f32 CPU tensor, differentiable: parallel over rows, the output not zeroed
/// first. candle-nn's kernel zeroed it single-threaded and computed the row statistics with scalar loops: 4% of a
/// composed step; its composed training form (`layer_norm_slow`) is a dozen ops each way.
pub fn fused_layer_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f32,
) -> candle_core::Result<Tensor> {
    apply3_differentiable(x, weight, bias, LayerNormOp { eps })
}

/// The LayerNorm backward, packed as [dx (all of x), dγ (d), dβ (d)], per row as GroupNorm's per block:
/// `dx = rstd · (dx̂ − mean(dx̂) − x̂ · mean(dx̂ · x̂))` with `dx̂ = dy · γ`; `dγ = Σ_rows dy · x̂`, `dβ = Σ_rows dy`.
struct LayerNormGrad {
    eps: f32,
}

/// Rows per task of the LayerNorm backward: a fixed count, so that the partial dγ / dβ sums (and the result) do
/// not depend on the number of threads.
const LAYER_NORM_GRAD_ROWS: usize = 64;

impl CustomOp3 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "vadapt-layer-norm-grad"
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
        let x = contiguous_f32(s1, l1, "layer_norm_grad x")?;
        let g = contiguous_f32(s2, l2, "layer_norm_grad weight")?;
        let dy = contiguous_f32(s3, l3, "layer_norm_grad grad")?;
        let d = g.len();
        if d == 0 || x.len() % d != 0 || dy.len() != x.len() {
            candle_core::bail!(
                "layer_norm_grad: x {:?}, weight {d}, grad {:?}",
                l1.shape(),
                l3.shape()
            );
        }
        let block = LAYER_NORM_GRAD_ROWS * d;
        let mut dx = output_buffer(x.len());
        let partials: Vec<Vec<f32>> = dx
            .par_chunks_mut(block)
            .zip(x.par_chunks(block))
            .zip(dy.par_chunks(block))
            .map(|((dxb, xb), dyb)| layer_norm_grad_rows(xb, dyb, dxb, g, self.eps))
            .collect();
        // [dγ, dβ] summed over the tasks in order.
        let mut sums = vec![0f32; 2 * d];
        for p in &partials {
            sums.iter_mut().zip(p).for_each(|(s, v)| *s += v);
        }
        let mut out = dx;
        out.extend_from_slice(&sums);
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

/// `dx` of some rows into `dx`; returns their `[Σ dy · x̂, Σ dy]` per column.
fn layer_norm_grad_rows(
    x: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    gamma: &[f32],
    eps: f32,
) -> Vec<f32> {
    let d = gamma.len();
    let mut sums = vec![0f32; 2 * d];
    let (dgamma, dbeta) = sums.split_at_mut(d);
    let mut xhat = vec![0f32; d];
    for ((xr, dyr), dxr) in x
        .chunks_exact(d)
        .zip(dy.chunks_exact(d))
        .zip(dx.chunks_exact_mut(d))
    {
        let mean = sum(xr) / d as f32;
        let rstd = 1.0 / (squared_deviations::<Plain>(xr, mean) / d as f32 + eps).sqrt();
        let (mut m1, mut m2) = (0f32, 0f32);
        for j in 0..d {
            let xh = (xr[j] - mean) * rstd;
            xhat[j] = xh;
            let dxh = dyr[j] * gamma[j];
            m1 += dxh;
            m2 += dxh * xh;
            dgamma[j] += dyr[j] * xh;
            dbeta[j] += dyr[j];
        }
        let (m1, m2) = (m1 / d as f32, m2 / d as f32);
        for j in 0..d {
            dxr[j] = rstd * (dyr[j] * gamma[j] - m1 - xhat[j] * m2);
        }
    }
    sums
}

/// LayerNorm over the last axis (`LayerNormOp`).
struct LayerNormOp {
    eps: f32,
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "vadapt-layer-norm"
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
        let (x, g, b) = norm_operands((s1, l1), (s2, l2), (s3, l3), "layer_norm")?;
        let d = *l1.shape().dims().last().unwrap_or(&0);
        if d == 0 || g.len() != d || b.len() != d {
            candle_core::bail!(
                "layer_norm: x {:?}, weight {}, bias {}",
                l1.shape(),
                g.len(),
                b.len()
            );
        }
        let mut y = output_buffer(x.len());
        let block = (8192 / d).max(1) * d;
        let avx = has_avx2_fma();
        y.par_chunks_mut(block)
            .zip(x.par_chunks(block))
            .for_each(|(yb, xb)| {
                #[cfg(target_arch = "x86_64")]
                if avx {
                    // SAFETY: the CPU has AVX2 and FMA (checked above).
                    unsafe { layer_norm_rows_avx2(xb, yb, g, b, self.eps) };
                    return;
                }
                let _ = avx;
                layer_norm_rows_impl::<Plain>(xb, yb, g, b, self.eps)
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let packed = apply3(x, weight, grad, &LayerNormGrad { eps: self.eps })?;
        let d = weight.dim(0)?;
        unpack_norm_grads(&packed, x, d)
    }
}

/// LayerNorm of `d`-wide rows: `y = (x − μ) / sqrt(σ² + eps) · γ + β`, biased variance from a second pass over the
/// row (as torch).
#[inline(always)]
fn layer_norm_rows_impl<F: MulAdd>(
    x: &[f32],
    y: &mut [f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) {
    let d = gamma.len();
    for (xr, yr) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
        let mean = sum(xr) / d as f32;
        let rstd = 1.0 / (squared_deviations::<F>(xr, mean) / d as f32 + eps).sqrt();
        for (((yv, &xv), &g), &b) in yr.iter_mut().zip(xr).zip(gamma).zip(beta) {
            *yv = F::mul_add((xv - mean) * rstd, g, b);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn layer_norm_rows_avx2(x: &[f32], y: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    layer_norm_rows_impl::<Fused>(x, y, gamma, beta, eps)
}

/// Mean and 1/sqrt(σ² + eps) of one GroupNorm block, σ² the biased variance from a second pass (as torch): one
/// function for the forward and the backward, which recomputes them and must get the same bits.
#[inline(always)]
fn block_statistics<F: MulAdd>(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = sum(x) / n;
    (
        mean,
        1.0 / (squared_deviations::<F>(x, mean) / n + eps).sqrt(),
    )
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
    let (mean, rstd) = block_statistics::<F>(x, eps);
    for (k, (&g, &b)) in gamma.iter().zip(beta).enumerate() {
        // y = x · a + c with a = rstd·γ, c = β − μ·a
        let a = rstd * g;
        let c = b - mean * a;
        let (xs, ys) = (&x[k * s..(k + 1) * s], &mut y[k * s..(k + 1) * s]);
        #[cfg(target_arch = "x86_64")]
        if F::AVX2 {
            // SAFETY: F::AVX2 is only set by the build that runs where the CPU has AVX2 and FMA.
            unsafe { super::x86_64::scale_shift_silu(xs, ys, a, c, with_silu) };
            continue;
        }
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
fn group_norm_block(
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    use crate::models::max_abs_diff;

    /// The fused GroupNorm equals the composed one, forward and all three gradients.
    #[test]
    fn group_norm_matches_composed_ops() {
        for silu in [false, true] {
            group_norm_matches_composed_ops_with(silu);
        }
    }

    /// GroupNorm (then SiLU where `silu`, as `group_norm_silu` fuses them) against candle's composed ops.
    fn group_norm_matches_composed_ops_with(silu: bool) {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0.5f32, 2.0, (3, 8, 4, 5), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(1f32, 0.5, 8, &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f32, 0.5, 8, &dev).unwrap()).unwrap();
        let probe = Tensor::randn(0f32, 1.0, (3, 8, 4, 5), &dev).unwrap();
        let composed = {
            let g = x.as_tensor().reshape((3, 2, ())).unwrap();
            let mean = g.mean_keepdim(D::Minus1).unwrap();
            let c = g.broadcast_sub(&mean).unwrap();
            let var = c.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
            c.broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap())
                .unwrap()
                .reshape((3, 8, 4, 5))
                .unwrap()
                .broadcast_mul(&w.as_tensor().reshape((1, 8, 1, 1)).unwrap())
                .unwrap()
                .broadcast_add(&b.as_tensor().reshape((1, 8, 1, 1)).unwrap())
                .unwrap()
        };
        let (x_, w_, b_) = (x.as_tensor(), w.as_tensor(), b.as_tensor());
        let (composed, fused) = if silu {
            let fused = fused_group_norm_silu(x_, w_, b_, 2, 1e-5).unwrap();
            (composed.silu().unwrap(), fused)
        } else {
            (composed, fused_group_norm(x_, w_, b_, 2, 1e-5).unwrap())
        };
        assert!(
            max_abs_diff(&composed, &fused) < 1e-5,
            "forward {}",
            max_abs_diff(&composed, &fused)
        );
        let ga = (composed * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gb = (fused * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (name, v) in [("x", &x), ("weight", &w), ("bias", &b)] {
            let d = max_abs_diff(
                ga.get(v.as_tensor()).unwrap(),
                gb.get(v.as_tensor()).unwrap(),
            );
            assert!(d < 1e-4, "d{name}: {d}");
        }
    }

    #[test]
    fn layer_norm_matches_candle_nn() {
        let dev = Device::Cpu;
        for d in [64, 13] {
            let x = Tensor::randn(0.5f32, 2.0, (3, 37, d), &dev).unwrap();
            let w = Tensor::randn(1f32, 0.3, d, &dev).unwrap();
            let b = Tensor::randn(0f32, 0.3, d, &dev).unwrap();
            let reference = candle_nn::LayerNorm::new(w.clone(), b.clone(), 1e-5)
                .forward(&x)
                .unwrap();
            let diff = max_abs_diff(&reference, &fused_layer_norm(&x, &w, &b, 1e-5).unwrap());
            assert!(diff < 2e-6, "d {d}: {diff}");
        }
    }

    /// The LayerNorm backward (the training path) against candle's autograd through `layer_norm_slow`, over more
    /// rows than one task takes.
    #[test]
    fn layer_norm_backward_matches_composed_ops() {
        let dev = Device::Cpu;
        for d in [48, 13] {
            let x =
                Var::from_tensor(&Tensor::randn(0.5f32, 2.0, (3, 37, d), &dev).unwrap()).unwrap();
            let w = Var::from_tensor(&Tensor::randn(1f32, 0.3, d, &dev).unwrap()).unwrap();
            let b = Var::from_tensor(&Tensor::randn(0f32, 0.3, d, &dev).unwrap()).unwrap();
            let probe = Tensor::randn(0f32, 1.0, (3, 37, d), &dev).unwrap();
            let (x_, w_, b_) = (x.as_tensor(), w.as_tensor(), b.as_tensor());
            let composed = candle_nn::ops::layer_norm_slow(x_, w_, b_, 1e-5).unwrap();
            let fused = fused_layer_norm(x_, w_, b_, 1e-5).unwrap();
            let grads = |y: Tensor| (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let (ga, gb) = (grads(composed), grads(fused));
            for (name, v) in [("x", &x), ("weight", &w), ("bias", &b)] {
                let diff = max_abs_diff(
                    ga.get(v.as_tensor()).unwrap(),
                    gb.get(v.as_tensor()).unwrap(),
                );
                assert!(diff < 1e-4, "d {d}, d{name}: {diff}");
            }
        }
    }
}
