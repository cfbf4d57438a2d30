//! Convolutions: the 2-D convolution of every UNet layer (im2col + one GEMM per image for CPU f32 inference, with
//! the time embedding and the residual added in its output pass; an im2col of tensor ops while training; candle's
//! elsewhere) and ModelScope's temporal (3, 1, 1) convolution.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Module, Shape, Tensor};
use candle_nn::Conv2dConfig;
use rayon::prelude::*;

use super::conv_grad;
use super::cpu::{
    apply3, apply3_differentiable, contiguous_f32, cpu_f32_inference, fused_f32_cpu, output_buffer,
    with_f32, with_thread_buffer,
};
use super::gemm::gemm_accumulate;

/// A candle-nn 2-D convolution of `x`: our im2col + GEMM kernel for CPU f32 (`fused_conv2d`; while training, the
/// same kernel with its GEMM backward, `conv_grad`), candle's elsewhere. Training off the CPU f32 path takes an
/// im2col + matmul of plain tensor ops (`conv2d_im2col`): candle's CPU backward of `conv2d` goes through a direct
/// `conv_transpose2d` loop that is ~4x slower than the forward.
pub(crate) fn conv2d(x: &Tensor, conv: &candle_nn::Conv2d) -> candle_core::Result<Tensor> {
    let cfg = conv.config();
    let fused = fused_f32_cpu(x) && conv.weight().dtype() == DType::F32;
    match (fused, conv.bias(), cfg.groups, cfg.dilation) {
        (true, Some(bias), 1, 1) => fused_conv2d(x, conv.weight(), bias, cfg.stride, cfg.padding),
        _ if x.track_op() || conv.weight().track_op() => {
            conv2d_im2col(x, conv.weight(), conv.bias(), cfg)
        }
        // F16/BF16 and CUDA: candle's convolution (im2col + cuBLAS on CUDA, all three dtypes).
        _ => conv.forward(x),
    }
}

/// `conv2d(x, conv)` plus a per-item bias (batch, out channels) and a residual of the output's shape, added in the
/// convolution's output pass on the CPU f32 inference path (`fused_conv2d_epilogue`), by broadcast adds otherwise.
pub(crate) fn conv2d_epilogue(
    x: &Tensor,
    conv: &candle_nn::Conv2d,
    item_bias: Option<&Tensor>,
    residual: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let cfg = conv.config();
    let operands = [x, conv.weight()]
        .into_iter()
        .chain(item_bias)
        .chain(residual);
    if let (true, true, Some(bias), 1, 1) = (
        cpu_f32_inference(operands),
        // The kernel takes one bias row per batch item; anything else broadcasts below.
        item_bias.is_none_or(|t| t.dims().first() == x.dims().first()),
        conv.bias(),
        cfg.groups,
        cfg.dilation,
    ) {
        let epilogue = Epilogue {
            item_bias: item_bias.cloned(),
            residual: residual.cloned(),
        };
        return fused_conv2d_epilogue(x, conv.weight(), bias, (cfg.stride, cfg.padding), epilogue);
    }
    let mut y = conv2d(x, conv)?;
    if let Some(t) = item_bias {
        y = y.broadcast_add(&t.unsqueeze(2)?.unsqueeze(3)?)?;
    }
    match residual {
        Some(r) => y + r,
        None => Ok(y),
    }
}

/// `y[b, o, i, j] = bias[o] + Σ_{c, ky, kx} w[o, c, ky, kx] · x_pad[b, c, s·i + ky, s·j + kx]` as one batched matmul of
/// the (out, in·kh·kw) weight with the stacked shifted views (b, in·kh·kw, ho·wo). Differentiable.
pub(super) fn conv2d_im2col(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    cfg: &Conv2dConfig,
) -> candle_core::Result<Tensor> {
    let (b, cin, h, wd) = x.dims4()?;
    let (cout, _, kh, kw) = w.dims4()?;
    let (p, s) = (cfg.padding, cfg.stride);
    let ho = (h + 2 * p - kh) / s + 1;
    let wo = (wd + 2 * p - kw) / s + 1;
    let cols = if kh == 1 && kw == 1 && p == 0 && s == 1 {
        x.reshape((b, cin, h * wd))?
    } else {
        // One extra zero row/column at the end so every strided window of s·ho rows fits.
        let extra = usize::from(s > 1);
        let xp = x
            .pad_with_zeros(2, p, p + extra)?
            .pad_with_zeros(3, p, p + extra)?;
        let mut taps = Vec::with_capacity(kh * kw);
        for ky in 0..kh {
            for kx in 0..kw {
                let v = xp.narrow(2, ky, s * ho)?.narrow(3, kx, s * wo)?;
                let v = if s > 1 {
                    v.reshape((b, cin, ho, s, wo, s))?
                        .narrow(3, 0, 1)?
                        .narrow(5, 0, 1)?
                        .reshape((b, cin, ho, wo))?
                } else {
                    v
                };
                taps.push(v);
            }
        }
        Tensor::stack(&taps, 2)?.reshape((b, cin * kh * kw, ho * wo))?
    };
    let y = w
        .reshape((cout, cin * kh * kw))?
        .broadcast_matmul(&cols)?
        .reshape((b, cout, ho, wo))?;
    match bias {
        Some(bias) => y.broadcast_add(&bias.reshape((1, cout, 1, 1))?),
        None => Ok(y),
    }
}

/// ModelScope's temporal convolution (a Conv3d with kernel (3, 1, 1) and padding (1, 0, 0)) of `x` (b, c, f, h·w)
/// with an (o, c, 3, 1, 1) weight and (o,) bias -> (b, o, f, h·w): three shifted GEMMs for CPU f32
/// (`fused_temporal_conv`; while training with its GEMM backward, `conv_grad`), composed tensor ops otherwise
/// (`temporal_conv_composed`).
pub(crate) fn temporal_conv(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
) -> candle_core::Result<Tensor> {
    if fused_f32_cpu(x) && weight.dtype() == DType::F32 {
        fused_temporal_conv(x, weight, bias)
    } else {
        // F16/BF16 and CUDA: one matmul and shifted adds of candle's ops.
        temporal_conv_composed(x, weight, bias)
    }
}

/// `temporal_conv` as ONE matmul of the stacked taps `[W_0; W_1; W_2]` (3*out, in) with the video (b, in, f*h*w),
/// then `y[t] = W_0 x[t-1] + W_1 x[t] + W_2 x[t+1] + bias` by adding frame-shifted slices (zero padding at both
/// ends). Differentiable.
pub(super) fn temporal_conv_composed(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
) -> candle_core::Result<Tensor> {
    let (cout, cin, _, _, _) = weight.dims5()?;
    let (b, c, f, hw) = x.dims4()?;
    // (out, in, 3, 1, 1) -> (3, out, in) -> (3*out, in). Rebuilt on every call (a copy of 3*out*in floats,
    // negligible next to the matmul) so that it follows the weight while training.
    let taps = weight
        .reshape((cout, cin, 3))?
        .permute((2, 0, 1))?
        .contiguous()?
        .reshape((3 * cout, cin))?;
    let y = taps
        .broadcast_matmul(&x.reshape((b, c, f * hw))?)?
        .reshape((b, 3, cout, f, hw))?;
    let mut out = y.narrow(1, 1, 1)?.squeeze(1)?;
    if f > 1 {
        let zeros = Tensor::zeros((b, cout, 1, hw), out.dtype(), out.device())?;
        let prev = y.narrow(1, 0, 1)?.squeeze(1)?.narrow(2, 0, f - 1)?;
        let next = y.narrow(1, 2, 1)?.squeeze(1)?.narrow(2, 1, f - 1)?;
        out = (out + Tensor::cat(&[&zeros, &prev], 2)?)?;
        out = (out + Tensor::cat(&[&next, &zeros], 2)?)?;
    }
    out.broadcast_add(&bias.reshape((1, cout, 1, 1))?)
}

/// 2-D convolution of a f32 CPU (b, c, h, w) input with an (o, c, kh, kw) weight and an (o,) bias; square stride
/// and zero padding, groups 1, dilation 1. Differentiable: the backward is `conv_grad`'s.
pub fn fused_conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    padding: usize,
) -> candle_core::Result<Tensor> {
    apply3_differentiable(
        x,
        weight,
        bias,
        Conv2d {
            stride,
            padding,
            epilogue: Epilogue::default(),
        },
    )
}

/// `conv2d` plus a per-item bias and a residual (`Epilogue`), added while the output is initialised: one pass
/// instead of two broadcast adds over the whole activation.
fn fused_conv2d_epilogue(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    (stride, padding): (usize, usize),
    epilogue: Epilogue,
) -> candle_core::Result<Tensor> {
    let epilogue = Epilogue {
        item_bias: epilogue.item_bias.map(|t| t.contiguous()).transpose()?,
        residual: epilogue.residual.map(|t| t.contiguous()).transpose()?,
    };
    apply3(
        x,
        weight,
        bias,
        &Conv2d {
            stride,
            padding,
            epilogue,
        },
    )
}

/// `conv2d` (groups 1, dilation 1) as one GEMM per image: `out (O, HW) = W (O, C·kh·kw) · cols (C·kh·kw, HW) + b`,
/// where `cols` row (c, ky, kx) is input channel c shifted by (ky − p, kx − p): built from row-segment copies (the
/// channel-major layout makes the GEMM's output NCHW directly, no transposes). candle's CPU im2col writes one
/// element at a time with index arithmetic and was a quarter of a UNet forward.
struct Conv2d {
    stride: usize,
    padding: usize,
    /// Added to the output in the same pass (see `fused_conv2d_epilogue`).
    epilogue: Epilogue,
}

/// What a convolution adds to its output while initialising it, instead of in separate passes afterwards.
#[derive(Default)]
pub(crate) struct Epilogue {
    /// (batch, out channels): a bias per batch item, added to the conv's own (ResnetBlock2D's time embedding).
    pub(crate) item_bias: Option<Tensor>,
    /// Of the output's shape (a residual connection).
    pub(crate) residual: Option<Tensor>,
}

thread_local! {
    /// Each thread's im2col buffer (the forward's, and the backward's `cols` and `dcols`).
    pub(super) static COLS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[allow(clippy::too_many_arguments)]
/// `dst.copy_from_slice(src)` for the short row segments of im2col (a few dozen floats): fixed-size 8-float moves
/// inline, where `copy_from_slice` calls memcpy once per segment (thousands of calls per frame).
#[inline(always)]
fn copy_short(dst: &mut [f32], src: &[f32]) {
    let mut d = dst.chunks_exact_mut(8);
    let mut s = src.chunks_exact(8);
    for (dc, sc) in (&mut d).zip(&mut s) {
        let sc: &[f32; 8] = sc.try_into().expect("8 floats");
        let dc: &mut [f32; 8] = dc.try_into().expect("8 floats");
        *dc = *sc;
    }
    for (dv, &sv) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *dv = sv;
    }
}

pub(super) fn im2col(
    x: &[f32],
    cols: &mut [f32],
    (c, h, w): (usize, usize, usize),
    (kh, kw): (usize, usize),
    (ho, wo): (usize, usize),
    s: usize,
    p: usize,
) {
    let hw = ho * wo;
    for ci in 0..c {
        let plane = &x[ci * h * w..(ci + 1) * h * w];
        for ky in 0..kh {
            for kx in 0..kw {
                let row = &mut cols[((ci * kh + ky) * kw + kx) * hw..][..hw];
                for oy in 0..ho {
                    let out = &mut row[oy * wo..(oy + 1) * wo];
                    let iy = (oy * s + ky) as isize - p as isize;
                    if iy < 0 || iy >= h as isize {
                        out.fill(0.0);
                        continue;
                    }
                    let src = &plane[iy as usize * w..(iy as usize + 1) * w];
                    if s == 1 {
                        // ix = ox + kx − p is valid for ox in [lo, hi)
                        let lo = p.saturating_sub(kx).min(wo);
                        let hi = (w + p).saturating_sub(kx).min(wo).max(lo);
                        out[..lo].fill(0.0);
                        out[hi..].fill(0.0);
                        copy_short(&mut out[lo..hi], &src[lo + kx - p..hi + kx - p]);
                    } else {
                        for (ox, o) in out.iter_mut().enumerate() {
                            let ix = (ox * s + kx) as isize - p as isize;
                            *o = if ix < 0 || ix >= w as isize {
                                0.0
                            } else {
                                src[ix as usize]
                            };
                        }
                    }
                }
            }
        }
    }
}

impl CustomOp3 for Conv2d {
    fn name(&self) -> &'static str {
        "vadapt-conv2d"
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        if self.epilogue.item_bias.is_some() || self.epilogue.residual.is_some() {
            // Training adds them as separate ops (`conv2d_epilogue`); nothing records this op with them.
            candle_core::bail!("conv2d: no backward through an epilogue");
        }
        conv_grad::conv2d_grads(x, weight, grad, (self.stride, self.padding))
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
        let x = contiguous_f32(s1, l1, "conv2d input")?;
        let wt = contiguous_f32(s2, l2, "conv2d weight")?;
        let bias = contiguous_f32(s3, l3, "conv2d bias")?;
        let (b, c, h, w) = l1.shape().dims4()?;
        let (o, wc, kh, kw) = l2.shape().dims4()?;
        let (s, p) = (self.stride.max(1), self.padding);
        if wc != c || bias.len() != o || h + 2 * p < kh || w + 2 * p < kw {
            candle_core::bail!(
                "conv2d: input {:?}, weight {:?}, bias {}",
                l1.shape(),
                l2.shape(),
                bias.len()
            );
        }
        let (ho, wo) = ((h + 2 * p - kh) / s + 1, (w + 2 * p - kw) / s + 1);
        let (k, hw) = (c * kh * kw, ho * wo);
        let pointwise = kh == 1 && kw == 1 && s == 1 && p == 0;
        let mut out = output_buffer(b * o * hw);
        let ep = &self.epilogue;
        if ep
            .item_bias
            .as_ref()
            .is_some_and(|t| t.elem_count() != b * o)
            || ep
                .residual
                .as_ref()
                .is_some_and(|t| t.elem_count() != b * o * hw)
        {
            candle_core::bail!(
                "conv2d: epilogue does not match the output (b {b}, o {o}, {ho}x{wo})"
            );
        }
        let operands = [ep.item_bias.as_ref(), ep.residual.as_ref()];
        with_f32(operands, "conv2d epilogue", |[item_bias, residual]| {
            let init = |i: usize, ob: &mut [f32]| {
                if residual.is_none() && item_bias.is_none() {
                    return fill_bias(ob, bias, hw);
                }
                match residual {
                    Some(r) => ob.copy_from_slice(&r[i * o * hw..(i + 1) * o * hw]),
                    None => ob.fill(0.0),
                }
                for (ch, oc) in ob.chunks_exact_mut(hw).enumerate() {
                    let add = bias[ch] + item_bias.map_or(0.0, |t| t[i * o + ch]);
                    oc.iter_mut().for_each(|v| *v += add);
                }
            };
            per_item(&mut out, x, c * h * w, (o, hw), init, |ob, xb, par| {
                // SAFETY: dst (o, hw), lhs the (o, k) weight, rhs cols (k, hw), all row-major and in bounds.
                let mut run = |cols: &[f32]| unsafe {
                    gemm_accumulate(
                        (o, hw, k),
                        ob.as_mut_ptr(),
                        hw,
                        wt.as_ptr(),
                        (1, k),
                        cols.as_ptr(),
                        (1, hw),
                        par,
                    )
                };
                if pointwise {
                    run(xb);
                } else {
                    with_thread_buffer(&COLS, k * hw, |cols| {
                        im2col(xb, cols, (c, h, w), (kh, kw), (ho, wo), s, p);
                        run(cols);
                    });
                }
            });
            Ok(())
        })?;
        Ok((CpuStorage::F32(out), Shape::from((b, o, ho, wo))))
    }
}

/// The ModelScope temporal convolution, a Conv3d with kernel (3, 1, 1) and padding (1, 0, 0) on (b, c, f, h·w):
/// `y[t] = W₀ x[t−1] + W₁ x[t] + W₂ x[t+1] + b` (zero frames outside). With frames·pixels as the GEMM's columns a
/// frame shift is a column offset of h·w, so the three taps are three GEMMs accumulating into the bias-filled
/// output over column ranges: no stacked taps, shifted copies or zero frames.
struct TemporalConv;

impl CustomOp3 for TemporalConv {
    fn name(&self) -> &'static str {
        "vadapt-temporal-conv"
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        conv_grad::temporal_conv_grads(x, weight, grad)
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
        let x = contiguous_f32(s1, l1, "temporal conv input")?;
        let wt = contiguous_f32(s2, l2, "temporal conv weight")?;
        let bias = contiguous_f32(s3, l3, "temporal conv bias")?;
        let (b, c, f, hw) = l1.shape().dims4()?;
        let wd = l2.shape().dims();
        if wd.len() != 5
            || wd[1] != c
            || wd[2] != 3
            || wd[3] != 1
            || wd[4] != 1
            || bias.len() != wd[0]
        {
            candle_core::bail!(
                "temporal conv: input {:?}, weight {:?}, bias {}",
                l1.shape(),
                l2.shape(),
                bias.len()
            );
        }
        let o = wd[0];
        let cols = f * hw;
        let mut out = output_buffer(b * o * cols);
        per_item_with_bias(&mut out, x, c * cols, bias, cols, |ob, xb, par| {
            for (tap, dst_off, src_off, n) in temporal_taps(cols, hw) {
                if n == 0 {
                    continue;
                }
                // SAFETY: dst rows of `cols` floats from `dst_off`, n ≤ cols − dst_off columns; lhs W[:, :, tap] with
                // column stride 3 and row stride 3c inside the (o, c, 3) weight; rhs rows of `cols` from `src_off`.
                unsafe {
                    gemm_accumulate(
                        (o, n, c),
                        ob.as_mut_ptr().add(dst_off),
                        cols,
                        wt.as_ptr().add(tap),
                        (3, 3 * c),
                        xb.as_ptr().add(src_off),
                        (1, cols),
                        par,
                    )
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, o, f, hw))))
    }
}

/// The temporal convolution's taps over frame·pixel columns (`cols` = frames · `hw`): (tap, output column offset,
/// input column offset, columns), so that `y[:, out..out + n] += W_tap · x[:, in..in + n]`.
pub(super) fn temporal_taps(cols: usize, hw: usize) -> [(usize, usize, usize, usize); 3] {
    let shifted = cols.saturating_sub(hw);
    [(0, hw, 0, shifted), (1, 0, 0, cols), (2, 0, hw, shifted)]
}

/// Temporal (3, 1, 1) convolution of a f32 CPU (b, c, f, h·w) input with an (o, c, 3, 1, 1) weight and (o,) bias.
/// Differentiable: the backward is `conv_grad`'s.
fn fused_temporal_conv(x: &Tensor, weight: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    apply3_differentiable(x, weight, bias, TemporalConv)
}

/// For each batch item: fill its `o` output rows of `cols` with the bias, then let `accumulate(out_item, in_item,
/// parallelism)` add its GEMMs. Items run in parallel with one-thread GEMMs when there are at least as many as
/// threads (frames are in the batch); otherwise one at a time with a parallel GEMM.
fn per_item_with_bias(
    out: &mut [f32],
    x: &[f32],
    in_item: usize,
    bias: &[f32],
    cols: usize,
    accumulate: impl Fn(&mut [f32], &[f32], gemm::Parallelism) + Sync,
) {
    per_item(
        out,
        x,
        in_item,
        (bias.len(), cols),
        |_, ob| fill_bias(ob, bias, cols),
        accumulate,
    )
}

/// Each output channel's `cols` values set to its bias.
fn fill_bias(out: &mut [f32], bias: &[f32], cols: usize) {
    for (oc, &bv) in out.chunks_exact_mut(cols).zip(bias) {
        oc.fill(bv);
    }
}

/// `per_item_with_bias` with any initial value: `init(item, out)` writes batch item `item`'s (o, cols) output before
/// `accumulate` adds the product into it.
pub(super) fn per_item(
    out: &mut [f32],
    x: &[f32],
    in_item: usize,
    (o, cols): (usize, usize),
    init: impl Fn(usize, &mut [f32]) + Sync,
    accumulate: impl Fn(&mut [f32], &[f32], gemm::Parallelism) + Sync,
) {
    let b = x.len() / in_item.max(1);
    let threads = rayon::current_num_threads();
    let one = |(i, (ob, xb)): (usize, (&mut [f32], &[f32])), par| {
        init(i, ob);
        accumulate(ob, xb, par)
    };
    if b >= threads {
        out.par_chunks_mut(o * cols)
            .zip(x.par_chunks(in_item))
            .enumerate()
            .for_each(|item| one(item, gemm::Parallelism::None));
    } else {
        out.chunks_mut(o * cols)
            .zip(x.chunks(in_item))
            .enumerate()
            .for_each(|item| one(item, gemm::Parallelism::Rayon(threads)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::VarBuilder;

    use crate::models::max_abs_diff;

    #[test]
    fn conv2d_matches_candle() {
        let dev = Device::Cpu;
        for (b, c, h, w, o, k, stride, pad) in [
            (3, 5, 9, 11, 7, 3, 1, 1),
            (1, 4, 8, 10, 6, 3, 2, 1),
            (2, 6, 7, 5, 3, 1, 1, 0),
            (4, 2, 5, 6, 3, 3, 1, 0),
        ] {
            let x = Tensor::randn(0f32, 1.0, (b, c, h, w), &dev).unwrap();
            let wt = Tensor::randn(0f32, 0.3, (o, c, k, k), &dev).unwrap();
            let bias = Tensor::randn(0f32, 1.0, o, &dev).unwrap();
            let reference = x
                .conv2d(&wt, pad, stride, 1, 1)
                .unwrap()
                .broadcast_add(&bias.reshape((1, o, 1, 1)).unwrap())
                .unwrap();
            let ours = fused_conv2d(&x, &wt, &bias, stride, pad).unwrap();
            assert_eq!(ours.dims(), reference.dims());
            let diff = max_abs_diff(&reference, &ours);
            assert!(diff < 1e-5, "{b}x{c}x{h}x{w} k{k} s{stride} p{pad}: {diff}");
            // The epilogue: a bias per batch item and a residual, as the broadcast adds they replace.
            let item_bias = Tensor::randn(0f32, 1.0, (b, o), &dev).unwrap();
            let residual = Tensor::randn(0f32, 1.0, reference.dims(), &dev).unwrap();
            let want = ((reference
                .broadcast_add(&item_bias.reshape((b, o, 1, 1)).unwrap())
                .unwrap())
                + &residual)
                .unwrap();
            let epilogue = Epilogue {
                item_bias: Some(item_bias),
                residual: Some(residual),
            };
            let ours = fused_conv2d_epilogue(&x, &wt, &bias, (stride, pad), epilogue).unwrap();
            let diff = max_abs_diff(&want, &ours);
            assert!(
                diff < 1e-5,
                "epilogue {b}x{c}x{h}x{w} k{k} s{stride} p{pad}: {diff}"
            );
        }
        let x = Tensor::randn(0f32, 1.0, (2, 3, 5, 5), &dev).unwrap();
        let wt = Tensor::randn(0f32, 0.3, (4, 3, 3, 3), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1.0, 4, &dev).unwrap();
        let wrong = Epilogue {
            item_bias: Some(Tensor::zeros((1, 4), DType::F32, &dev).unwrap()),
            residual: None,
        };
        assert!(
            fused_conv2d_epilogue(&x, &wt, &bias, (1, 1), wrong).is_err(),
            "an item bias with the wrong number of rows is refused"
        );
    }

    /// The CPU kernel (`fused_temporal_conv`, three shifted GEMMs) equals the composed path that F16/BF16 and CUDA
    /// take (stacked taps, shifted slices, zero frames), for several frame counts including 1 and 2. The weights are
    /// initialised as `resnet::TemporalConv` does.
    #[test]
    fn temporal_conv_kernel_matches_composed_ops() {
        let dev = Device::Cpu;
        let varmap = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let weight = vb
            .get_with_hints(
                (6, 5, 3, 1, 1),
                "weight",
                candle_nn::init::DEFAULT_KAIMING_NORMAL,
            )
            .unwrap();
        let bound = 1.0 / ((3 * 5) as f64).sqrt();
        let uniform = candle_nn::Init::Uniform {
            lo: -bound,
            up: bound,
        };
        let bias = vb.get_with_hints(6, "bias", uniform).unwrap();
        for (b, f, hw) in [(1, 1, 7), (2, 2, 5), (3, 9, 11)] {
            let x = Tensor::randn(0f32, 1.0, (b, 5, f, hw), &dev).unwrap();
            let composed = temporal_conv_composed(&x, &weight, &bias).unwrap();
            let fused = fused_temporal_conv(&x, &weight, &bias).unwrap();
            assert_eq!(fused.dims(), &[b, 6, f, hw]);
            let diff = max_abs_diff(&composed, &fused);
            assert!(diff < 1e-5, "b{b} f{f} hw{hw}: {diff}");
        }
    }
}
