//! Fused CPU kernels with their backward passes, for the ops that dominate a UNet step when composed of
//! elementwise tensor ops: GroupNorm (one pass instead of ~10 broadcast ops, each of which needs a strided
//! reduction in the backward) and the softmax over the last axis (candle-nn's fused kernel has no backward).
//!
//! Both run on CPU tensors of f32; other devices and dtypes keep the composed versions (see `resnet::GroupNorm` and
//! `attention::softmax_last_dim`).

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use super::kernels::contiguous_f32;

/// `torch.nn.GroupNorm` over (batch, channels, ...): per (batch, group) block of `channels / groups` channels times
/// every position, `y = (x − μ) / sqrt(σ² + eps) · γ_c + β_c`, with σ² the biased variance (two passes, as torch).
struct GroupNormOp {
    groups: usize,
    eps: f64,
    /// Apply SiLU to the output in the same pass (inference only: the backward does not cover it).
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

/// Mean and 1/std of one block.
fn block_stats(x: &[f32], eps: f64) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = x.iter().sum::<f32>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps as f32).sqrt())
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
        let (x, w, b) = super::kernels::norm_operands((s1, l1), (s2, l2), (s3, l3), "group_norm")?;
        let (_, c, s) = geometry(l1.shape(), self.groups)?;
        let cg = c / self.groups;
        let block = cg * s;
        // Every block is written by `group_norm_block`.
        let mut y = super::kernels::output_buffer(x.len());
        y.par_chunks_mut(block)
            .zip(x.par_chunks(block))
            .enumerate()
            .for_each(|(i, (yb, xb))| {
                let c0 = (i % self.groups) * cg;
                super::kernels::group_norm_block(
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
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        if self.silu {
            candle_core::bail!("group_norm_silu has no backward (inference only)");
        }
        let c = weight.dim(0)?;
        let n = x.elem_count();
        let packed = super::kernels::apply3(
            x,
            weight,
            grad,
            &GroupNormGrad {
                groups: self.groups,
                eps: self.eps,
            },
        )?;
        let dx = packed.narrow(0, 0, n)?.reshape(x.shape())?;
        let dw = packed.narrow(0, n, c)?;
        let db = packed.narrow(0, n + c, c)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// The GroupNorm backward, packed as [dx (all of x), dγ (c), dβ (c)]:
/// `dx = rstd · (dx̂ − mean(dx̂) − x̂ · mean(dx̂ · x̂))` with `dx̂ = dy · γ`, per block; `dγ_c = Σ dy · x̂`, `dβ_c = Σ dy`.
struct GroupNormGrad {
    groups: usize,
    eps: f64,
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
        let mut dx = vec![0f32; x.len()];
        // Per block: the per-channel partial sums of dy·x̂ and dy, reduced over the batch afterwards.
        let partials: Vec<Vec<(f32, f32)>> = dx
            .par_chunks_mut(block)
            .zip(x.par_chunks(block))
            .zip(dy.par_chunks(block))
            .enumerate()
            .map(|(i, ((dxb, xb), dyb))| {
                let (mean, rstd) = block_stats(xb, self.eps);
                let c0 = (i % self.groups) * cg;
                let mut sums = Vec::with_capacity(cg);
                let (mut sum_dxh, mut sum_dxh_xh) = (0f32, 0f32);
                for k in 0..cg {
                    let gamma = w[c0 + k];
                    let (mut dgamma, mut dbeta) = (0f32, 0f32);
                    for j in k * s..(k + 1) * s {
                        let xh = (xb[j] - mean) * rstd;
                        dgamma += dyb[j] * xh;
                        dbeta += dyb[j];
                        let dxh = dyb[j] * gamma;
                        sum_dxh += dxh;
                        sum_dxh_xh += dxh * xh;
                    }
                    sums.push((dgamma, dbeta));
                }
                let nb = block as f32;
                let (m1, m2) = (sum_dxh / nb, sum_dxh_xh / nb);
                for k in 0..cg {
                    let gamma = w[c0 + k];
                    for j in k * s..(k + 1) * s {
                        let xh = (xb[j] - mean) * rstd;
                        dxb[j] = rstd * (dyb[j] * gamma - m1 - xh * m2);
                    }
                }
                sums
            })
            .collect();
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

/// GroupNorm of a contiguous f32 CPU tensor (batch, channels, ...), differentiable.
pub fn group_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    groups: usize,
    eps: f64,
) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        GroupNormOp {
            groups,
            eps,
            silu: false,
        },
    )
}

/// `silu(GroupNorm(x))` in one pass, for inference (no backward).
pub fn group_norm_silu(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    groups: usize,
    eps: f64,
) -> candle_core::Result<Tensor> {
    super::kernels::apply3(
        x,
        weight,
        bias,
        &GroupNormOp {
            groups,
            eps,
            silu: true,
        },
    )
}

/// Softmax over the last axis (max-subtracted), differentiable: `dx = y · (dy − Σ dy · y)`.
struct SoftmaxLastDim;

impl CustomOp1 for SoftmaxLastDim {
    fn name(&self) -> &'static str {
        "vadapt-softmax-last-dim"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, "softmax")?;
        let d = *l.shape().dims().last().unwrap_or(&1);
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(d.max(1))
            .zip(x.par_chunks(d.max(1)))
            .for_each(|(yr, xr)| {
                let max = xr.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f32;
                for (yv, xv) in yr.iter_mut().zip(xr) {
                    *yv = (xv - max).exp();
                    sum += *yv;
                }
                let inv = 1.0 / sum;
                yr.iter_mut().for_each(|v| *v *= inv);
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let dot = (grad * res)?.sum_keepdim(D::Minus1)?;
        Ok(Some((res * grad.broadcast_sub(&dot)?)?))
    }
}

/// Softmax over the last axis of a contiguous f32 CPU tensor, differentiable.
pub fn softmax_last_dim(x: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(SoftmaxLastDim)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    use crate::models::max_abs_diff as max_diff;

    /// The fused GroupNorm equals the composed one, forward and all three gradients.
    #[test]
    fn group_norm_matches_composed_ops() {
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
        let fused = group_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), 2, 1e-5).unwrap();
        assert!(
            max_diff(&composed, &fused) < 1e-5,
            "forward {}",
            max_diff(&composed, &fused)
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
            let d = max_diff(
                ga.get(v.as_tensor()).unwrap(),
                gb.get(v.as_tensor()).unwrap(),
            );
            assert!(d < 1e-4, "d{name}: {d}");
        }
    }

    #[test]
    fn softmax_matches_candle_forward_and_backward() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 3.0, (4, 6, 9), &dev).unwrap()).unwrap();
        let probe = Tensor::randn(0f32, 1.0, (4, 6, 9), &dev).unwrap();
        let reference = candle_nn::ops::softmax(x.as_tensor(), D::Minus1).unwrap();
        let ours = softmax_last_dim(x.as_tensor()).unwrap();
        assert!(max_diff(&reference, &ours) < 1e-6);
        let ga = (reference * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gb = (ours * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(
            max_diff(
                ga.get(x.as_tensor()).unwrap(),
                gb.get(x.as_tensor()).unwrap()
            ) < 1e-5
        );
    }
}
