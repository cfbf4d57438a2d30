//! The transformers' way in and out of the video: GroupNorm written straight into token rows, and the residual
//! add that reads the tokens back into the video layout (diffusers' `Transformer2DModel` and
//! `TransformerTemporalModel` norm, permute and reshape there). Fused for CPU f32 inference, candle's norm and
//! permutes otherwise.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::cpu::{apply3, contiguous_f32, cpu_f32_inference, norm_operands, output_buffer, OutPtr};
use super::norm::group_norm;
use super::portable::sum;

/// GroupNorm (`groups`, `eps`, per-channel `weight` / `bias`) of a (b·f, c, h, w) video, returned as the tokens of
/// `layout`: one fused pass for CPU f32 inference (`fused_group_norm_tokens`), otherwise `norm::group_norm` (over
/// (b, c, f, h, w) for temporal tokens) and candle's permutes.
pub(crate) fn group_norm_tokens(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    groups: usize,
    eps: f64,
    layout: TokenLayout,
) -> candle_core::Result<Tensor> {
    if cpu_f32_inference([x, weight, bias]) {
        return fused_group_norm_tokens(x, weight, bias, groups, eps as f32, layout);
    }
    let (bf, c, h, w) = x.dims4()?;
    match layout {
        TokenLayout::Spatial => group_norm(x, weight, bias, groups, eps)?
            .permute((0, 2, 3, 1))?
            .reshape((bf, h * w, c)),
        TokenLayout::Temporal { frames } => {
            let b = bf / frames;
            // (b, f, c, h, w) -> (b, c, f, h, w) for the norm, then (b, h, w, f, c) -> (b*h*w, f, c)
            let hs = x.reshape((b, frames, c, h, w))?.permute((0, 2, 1, 3, 4))?;
            let hs = group_norm(&hs.contiguous()?, weight, bias, groups, eps)?;
            hs.permute((0, 3, 4, 2, 1))?.reshape((b * h * w, frames, c))
        }
    }
}

/// `x + tokens` with the tokens (`layout`, c channels) moved back to x's (b·f, c, h, w) layout: one fused pass for
/// CPU f32 inference (`fused_add_tokens`), candle's permutes and add otherwise.
pub(crate) fn add_tokens(
    x: &Tensor,
    tokens: &Tensor,
    layout: TokenLayout,
) -> candle_core::Result<Tensor> {
    if cpu_f32_inference([x, tokens]) {
        return fused_add_tokens(x, tokens, layout);
    }
    let (bf, c, h, w) = x.dims4()?;
    let back = match layout {
        TokenLayout::Spatial => tokens.reshape((bf, h, w, c))?.permute((0, 3, 1, 2))?,
        // (b, h, w, f, c) -> (b, f, c, h, w) -> (b*f, c, h, w)
        TokenLayout::Temporal { frames } => tokens
            .reshape((bf / frames, h, w, frames, c))?
            .permute((0, 3, 4, 1, 2))?
            .reshape((bf, c, h, w))?,
    };
    back + x
}

/// Where the transformers' tokens come from in a (b·f, c, h, w) video: `Spatial` tokens are the h·w positions of
/// each frame, (b·f, h·w, c); `Temporal` tokens are the f frames of each position, (b·h·w, f, c), and their
/// GroupNorm statistics span the frames (diffusers norms (b, c, f, h, w) there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenLayout {
    Spatial,
    Temporal { frames: usize },
}

impl TokenLayout {
    fn frames(self) -> usize {
        match self {
            TokenLayout::Spatial => 1,
            TokenLayout::Temporal { frames } => frames,
        }
    }

    /// (first token row of frame `bf`, row step from one position to the next).
    fn rows(self, bf: usize, hw: usize) -> (usize, usize) {
        match self {
            TokenLayout::Spatial => (bf * hw, 1),
            TokenLayout::Temporal { frames } => ((bf / frames) * hw * frames + bf % frames, frames),
        }
    }
}

/// GroupNorm of a (b·f, c, h, w) video written straight into the transformers' token layout (`TokenLayout`):
/// the statistics, then one transposing pass, instead of the norm plus candle's permute copies around it.
struct GroupNormTokens {
    groups: usize,
    eps: f32,
    layout: TokenLayout,
}

impl CustomOp3 for GroupNormTokens {
    fn name(&self) -> &'static str {
        "vadapt-group-norm-tokens"
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
        let (x, gamma, beta) = norm_operands((s1, l1), (s2, l2), (s3, l3), "group_norm_tokens")?;
        let (bf, c, h, w) = l1.shape().dims4()?;
        let (f, g, hw) = (self.layout.frames(), self.groups, h * w);
        if g == 0 || c % g != 0 || bf % f != 0 || gamma.len() != c || beta.len() != c {
            candle_core::bail!(
                "group_norm_tokens: x {:?}, {g} groups, {f} frames",
                l1.shape()
            );
        }
        let cg = c / g;
        // Per (clip, group): the mean and 1/std over its channels, positions and (temporal) frames, two passes
        // as torch; then a_c = rstd·γ_c and s_c = β_c − μ·a_c for every channel of every clip.
        let clips = bf / f;
        let block = |ci: usize, gi: usize| {
            (0..f).map(move |fi| &x[((ci * f + fi) * c + gi * cg) * hw..][..cg * hw])
        };
        let mut coef = vec![(0f32, 0f32); clips * c];
        coef.par_chunks_mut(cg).enumerate().for_each(|(i, co)| {
            let (ci, gi) = (i / g, i % g);
            let n = (f * cg * hw) as f32;
            let mean = block(ci, gi).map(sum).sum::<f32>() / n;
            let var = block(ci, gi)
                .map(|b| b.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>())
                .sum::<f32>()
                / n;
            let rstd = 1.0 / (var + self.eps).sqrt();
            for (k, cv) in co.iter_mut().enumerate() {
                let a = rstd * gamma[gi * cg + k];
                *cv = (a, beta[gi * cg + k] - mean * a);
            }
        });
        let mut y = output_buffer(x.len());
        let out = OutPtr(y.as_mut_ptr());
        let layout = self.layout;
        (0..bf).into_par_iter().for_each(|fr| {
            let (row0, step) = layout.rows(fr, hw);
            let co = &coef[(fr / f) * c..][..c];
            let xf = &x[fr * c * hw..][..c * hw];
            for p in 0..hw {
                // SAFETY: token row row0 + p·step < b·f·h·w rows of c floats, written only by this frame's task
                // (each (frame, position) pair has its own row).
                let yr = unsafe {
                    std::slice::from_raw_parts_mut(out.get().add((row0 + p * step) * c), c)
                };
                for (ch, (yv, &(a, sh))) in yr.iter_mut().zip(co).enumerate() {
                    *yv = xf[ch * hw + p] * a + sh;
                }
            }
        });
        let shape = match layout {
            TokenLayout::Spatial => Shape::from((bf, hw, c)),
            TokenLayout::Temporal { frames } => Shape::from((clips * hw, frames, c)),
        };
        Ok((CpuStorage::F32(y), shape))
    }
}

/// GroupNorm (`groups`, `eps`, per-channel `weight` / `bias`) of a (b·f, c, h, w) f32 CPU video, returned in the
/// transformers' token layout (see `TokenLayout`). Inference only.
pub fn fused_group_norm_tokens(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    groups: usize,
    eps: f32,
    layout: TokenLayout,
) -> candle_core::Result<Tensor> {
    apply3(
        x,
        weight,
        bias,
        &GroupNormTokens {
            groups,
            eps,
            layout,
        },
    )
}

/// `x + tokens` back in the video layout: x (b·f, c, h, w), tokens in `layout` with c channels.
struct AddTokens {
    layout: TokenLayout,
}

impl candle_core::CustomOp2 for AddTokens {
    fn name(&self) -> &'static str {
        "vadapt-add-tokens"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "add_tokens x")?;
        let t = contiguous_f32(s2, l2, "add_tokens tokens")?;
        let (bf, c, h, w) = l1.shape().dims4()?;
        let hw = h * w;
        if t.len() != x.len() || bf % self.layout.frames() != 0 {
            candle_core::bail!("add_tokens: x {:?}, tokens {:?}", l1.shape(), l2.shape());
        }
        let mut y = output_buffer(x.len());
        let layout = self.layout;
        y.par_chunks_mut(c * hw).enumerate().for_each(|(fr, yf)| {
            let (row0, step) = layout.rows(fr, hw);
            let xf = &x[fr * c * hw..][..c * hw];
            for (ch, (yc, xc)) in yf.chunks_exact_mut(hw).zip(xf.chunks_exact(hw)).enumerate() {
                for (p, (yv, &xv)) in yc.iter_mut().zip(xc).enumerate() {
                    *yv = xv + t[(row0 + p * step) * c + ch];
                }
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }
}

/// `x + tokens` with the tokens (`layout`, c channels) moved back to x's (b·f, c, h, w) layout, in one pass.
/// Inference only.
fn fused_add_tokens(
    x: &Tensor,
    tokens: &Tensor,
    layout: TokenLayout,
) -> candle_core::Result<Tensor> {
    x.contiguous()?
        .apply_op2_no_bwd(&tokens.contiguous()?, &AddTokens { layout })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    use super::super::norm::fused_group_norm;
    use crate::models::max_abs_diff;

    /// GroupNorm into tokens and the residual add back equal the norm, permutes and add that diffusers'
    /// Transformer2DModel and TransformerTemporalModel run, in both layouts.
    #[test]
    fn group_norm_tokens_and_add_tokens_match_the_permutes() {
        let dev = Device::Cpu;
        let (b, f, c, h, w, groups) = (2, 3, 8, 5, 7, 4);
        let x = Tensor::randn(0.3f32, 1.5, (b * f, c, h, w), &dev).unwrap();
        let gamma = Tensor::randn(1f32, 0.3, c, &dev).unwrap();
        let beta = Tensor::randn(0f32, 0.3, c, &dev).unwrap();
        let norm = |x: &Tensor| fused_group_norm(x, &gamma, &beta, groups, 1e-6).unwrap();
        // Spatial: norm per frame, (bf, c, h, w) -> (bf, h·w, c)
        let spatial = norm(&x)
            .permute((0, 2, 3, 1))
            .unwrap()
            .reshape((b * f, h * w, c))
            .unwrap();
        // Temporal: norm over (b, c, f, h, w), then (b, h, w, f, c) -> (b·h·w, f, c)
        let temporal = norm(
            &x.reshape((b, f, c, h, w))
                .unwrap()
                .permute((0, 2, 1, 3, 4))
                .unwrap()
                .contiguous()
                .unwrap(),
        )
        .permute((0, 3, 4, 2, 1))
        .unwrap()
        .reshape((b * h * w, f, c))
        .unwrap();
        for (layout, reference) in [
            (TokenLayout::Spatial, spatial),
            (TokenLayout::Temporal { frames: f }, temporal),
        ] {
            let tokens = fused_group_norm_tokens(&x, &gamma, &beta, groups, 1e-6, layout).unwrap();
            assert_eq!(tokens.dims(), reference.dims(), "{layout:?}");
            let diff = max_abs_diff(&reference, &tokens);
            assert!(diff < 2e-6, "{layout:?}: {diff}");
            // The add alone: the same tokens moved back with candle's permutes, then added (the norm's own
            // difference from the reference is checked above, not absorbed here).
            let back = match layout {
                TokenLayout::Spatial => tokens
                    .reshape((b * f, h, w, c))
                    .unwrap()
                    .permute((0, 3, 1, 2))
                    .unwrap(),
                TokenLayout::Temporal { .. } => tokens
                    .reshape((b, h, w, f, c))
                    .unwrap()
                    .permute((0, 3, 4, 1, 2))
                    .unwrap()
                    .reshape((b * f, c, h, w))
                    .unwrap(),
            };
            let want = (&x + back).unwrap();
            let diff = max_abs_diff(&want, &fused_add_tokens(&x, &tokens, layout).unwrap());
            assert!(diff < 1e-6, "{layout:?} add: {diff}");
        }
    }
}
