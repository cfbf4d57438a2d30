//! The backward of the convolutions for CPU f32 training, as GEMMs on the forward kernels' layouts. The 2-D one, with
//! `cols_b` the (C·kh·kw, Ho·Wo) im2col of image b and `y_b = W cols_b + bias` (`conv::Conv2d`):
//!
//! * `dW = Σ_b dy_b · cols_bᵀ` (cols recomputed, not kept from the forward: a copy per image, where keeping them
//!   would hold kh·kw times every conv input for the whole step);
//! * `dx_b = col2im(Wᵀ · dy_b)`: every column entry adds back to the input pixel it was copied from;
//! * `dbias = Σ_{b, pixels} dy`.
//!
//! The temporal (3, 1, 1) convolution's backward is the same per tap, on frame-shifted column ranges
//! (`TemporalConvGrad`).
//!
//! Replaces the training im2col of tensor ops (`conv::conv2d_im2col`), whose backward pads, narrows and stacks nine
//! full-size gradients per convolution: copies and zero fills were a sixth of a training step.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::conv::{im2col, per_item, temporal_taps, COLS};
use super::cpu::{apply3, contiguous_f32, output_buffer, unpack_grads, with_thread_buffer, Grads3};
use super::gemm::gemm_into;
use super::portable::sum;

/// Images per partial weight gradient: partials are summed in a fixed order afterwards, so `dW` has the same bits
/// under any thread count.
const ITEMS_PER_PARTIAL: usize = 4;
/// Columns (frames x pixels) of one item in one unit of the temporal convolution's weight gradient.
const TEMPORAL_COLS_PER_UNIT: usize = 512;

/// The gradients of `conv::Conv2d` (no epilogue) from (x, W, dy), packed as [dx (all of x, when `need_dx`), dW,
/// dbias].
pub(super) struct Conv2dGrad {
    pub(super) stride: usize,
    pub(super) padding: usize,
    /// Whether the input needs a gradient (not for the first convolution, whose input is data).
    pub(super) need_dx: bool,
}

/// The geometry of one convolution: input (c, h, w), kernel (kh, kw), output (o, ho, wo), stride, padding.
#[derive(Clone, Copy)]
struct Geometry {
    c: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    o: usize,
    ho: usize,
    wo: usize,
    s: usize,
    p: usize,
}

impl Geometry {
    /// Rows of the im2col matrix (C·kh·kw), the weight's row length.
    fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// Output pixels per channel, the im2col matrix's columns.
    fn hw(&self) -> usize {
        self.ho * self.wo
    }

    /// A 1x1 convolution with stride 1 and no padding: the image is its own im2col matrix.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.s == 1 && self.p == 0
    }

    /// `im2col` of one image into `cols` (C·kh·kw, Ho·Wo).
    fn im2col(&self, x: &[f32], cols: &mut [f32]) {
        let g = *self;
        im2col(
            x,
            cols,
            (g.c, g.h, g.w),
            (g.kh, g.kw),
            (g.ho, g.wo),
            g.s,
            g.p,
        );
    }
}

impl CustomOp3 for Conv2dGrad {
    fn name(&self) -> &'static str {
        "vadapt-conv2d-grad"
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
        let x = contiguous_f32(s1, l1, "conv2d backward input")?;
        let wt = contiguous_f32(s2, l2, "conv2d backward weight")?;
        let dy = contiguous_f32(s3, l3, "conv2d backward output gradient")?;
        let (b, c, h, w) = l1.shape().dims4()?;
        let (o, _, kh, kw) = l2.shape().dims4()?;
        let (s, p) = (self.stride.max(1), self.padding);
        let (ho, wo) = ((h + 2 * p - kh) / s + 1, (w + 2 * p - kw) / s + 1);
        if l3.shape().dims() != [b, o, ho, wo] {
            candle_core::bail!(
                "conv2d backward: output gradient {:?} for input {:?} and weight {:?}",
                l3.shape(),
                l1.shape(),
                l2.shape()
            );
        }
        let g = Geometry {
            c,
            h,
            w,
            kh,
            kw,
            o,
            ho,
            wo,
            s,
            p,
        };
        let nx = if self.need_dx { x.len() } else { 0 };
        let n = nx + o * g.k() + o;
        let mut out = output_buffer(n);
        let (dx, rest) = out.split_at_mut(nx);
        let (dw, db) = rest.split_at_mut(o * g.k());
        bias_grad(dy, db, g.hw());
        weight_grad(x, dy, dw, g);
        if self.need_dx {
            input_grad(wt, dy, dx, g);
        }
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }
}

/// `db[o] = Σ_{b, pixels} dy[b, o, pixels]`: channels in parallel, each summed item by item in order (vectorised
/// row sums), so the bits do not depend on the thread count.
fn bias_grad(dy: &[f32], db: &mut [f32], hw: usize) {
    let o = db.len();
    db.par_iter_mut().enumerate().for_each(|(ch, d)| {
        *d = dy
            .chunks_exact(o * hw)
            .map(|item| sum(&item[ch * hw..(ch + 1) * hw]))
            .fold(0.0, |a, v| a + v);
    });
}

/// `dW (O, C·kh·kw) = Σ_b dy_b (O, Ho·Wo) · cols_bᵀ`, one accumulating GEMM per image (`summed_over_items`).
fn weight_grad(x: &[f32], dy: &[f32], dw: &mut [f32], g: Geometry) {
    let (k, hw, o) = (g.k(), g.hw(), g.o);
    let in_item = g.c * g.h * g.w;
    summed_over_items(dy.len() / (o * hw), dw, |i, acc, first, par| {
        let xb = &x[i * in_item..(i + 1) * in_item];
        // The image is its own im2col matrix for a 1x1 convolution (no scratch needed).
        let len = if g.pointwise() { 0 } else { k * hw };
        with_thread_buffer(&COLS, len, |buf| {
            let cols: &[f32] = if g.pointwise() {
                xb
            } else {
                g.im2col(xb, buf);
                buf
            };
            // SAFETY: dst the (o, k) partial; lhs dy_i (o, hw) row-major; rhs colsᵀ (hw, k), column stride hw.
            unsafe {
                gemm_into(
                    (o, k, hw),
                    acc.as_mut_ptr(),
                    k,
                    !first,
                    dy[i * o * hw..].as_ptr(),
                    (1, hw),
                    cols.as_ptr(),
                    (hw, 1),
                    par,
                )
            }
        })
    });
}

/// `out = Σ_items` of what `add(item, acc, first, parallelism)` accumulates into `acc` (overwriting it where
/// `first`): items in chunks of `ITEMS_PER_PARTIAL`, one partial per chunk (chunks in parallel, one-thread GEMMs; a
/// parallel GEMM when there are fewer chunks than threads), the partials then added in order.
pub(super) fn summed_over_items(
    items: usize,
    out: &mut [f32],
    add: impl Fn(usize, &mut [f32], bool, gemm::Parallelism) + Sync,
) {
    let items: Vec<usize> = (0..items).collect();
    let threads = rayon::current_num_threads();
    let par = if items.len().div_ceil(ITEMS_PER_PARTIAL) >= threads {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(threads)
    };
    let partials: Vec<Vec<f32>> = items
        .par_chunks(ITEMS_PER_PARTIAL)
        .map(|chunk| {
            // Written by the chunk's first item (`first`), read by the others.
            let mut acc = output_buffer(out.len());
            for (n, &i) in chunk.iter().enumerate() {
                add(i, &mut acc, n == 0, par);
            }
            acc
        })
        .collect();
    out.fill(0.0);
    for p in &partials {
        out.iter_mut().zip(p).for_each(|(d, v)| *d += v);
    }
}

/// `dx_b = col2im(Wᵀ dy_b)`, image by image (in parallel when there are enough; a 1x1 convolution writes
/// `Wᵀ dy_b` straight into dx).
fn input_grad(wt: &[f32], dy: &[f32], dx: &mut [f32], g: Geometry) {
    let (k, hw, o) = (g.k(), g.hw(), g.o);
    let init = |_: usize, dxb: &mut [f32]| {
        if !g.pointwise() {
            dxb.fill(0.0)
        }
    };
    per_item(dx, dy, o * hw, (g.c, g.h * g.w), init, |dxb, dyb, par| {
        // SAFETY: lhs Wᵀ (k, o) inside the (o, k) weight (column stride k, row stride 1); rhs dy_b (o, hw) row-major;
        // dst (k, hw) row-major, written without being read.
        let product = |dst: &mut [f32]| unsafe {
            gemm_into(
                (k, hw, o),
                dst.as_mut_ptr(),
                hw,
                false,
                wt.as_ptr(),
                (k, 1),
                dyb.as_ptr(),
                (1, hw),
                par,
            )
        };
        if g.pointwise() {
            return product(dxb);
        }
        with_thread_buffer(&COLS, k * hw, |dcols| {
            product(dcols);
            col2im(dcols, dxb, g);
        })
    });
}

/// The adjoint of `im2col`: each column entry (c, ky, kx; oy, ox) is added to the input pixel
/// (c, oy·s + ky − p, ox·s + kx − p) it was copied from (padding entries are dropped).
fn col2im(cols: &[f32], x: &mut [f32], g: Geometry) {
    let hw = g.hw();
    for (ci, plane) in x.chunks_exact_mut(g.h * g.w).enumerate() {
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let row = &cols[((ci * g.kh + ky) * g.kw + kx) * hw..][..hw];
                for oy in 0..g.ho {
                    let iy = (oy * g.s + ky) as isize - g.p as isize;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    let dst = &mut plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                    let src = &row[oy * g.wo..(oy + 1) * g.wo];
                    if g.s == 1 {
                        // ix = ox + kx − p is valid for ox in [lo, hi) (as in `im2col`)
                        let lo = g.p.saturating_sub(kx).min(g.wo);
                        let hi = (g.w + g.p).saturating_sub(kx).min(g.wo).max(lo);
                        let dst = &mut dst[lo + kx - g.p..hi + kx - g.p];
                        dst.iter_mut().zip(&src[lo..hi]).for_each(|(d, v)| *d += v);
                    } else {
                        for (ox, v) in src.iter().enumerate() {
                            let ix = (ox * g.s + kx) as isize - g.p as isize;
                            if ix >= 0 && ix < g.w as isize {
                                dst[ix as usize] += v;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `(dx, dW, dbias)` of `conv::Conv2d` at (x, weight) for the output gradient `grad`.
pub(super) fn conv2d_grads(
    x: &Tensor,
    weight: &Tensor,
    grad: &Tensor,
    (stride, padding): (usize, usize),
) -> candle_core::Result<Grads3> {
    let need_dx = x.track_op();
    let op = Conv2dGrad {
        stride,
        padding,
        need_dx,
    };
    unpack(&apply3(x, weight, grad, &op)?, x, weight, need_dx)
}

/// `(dx, dW, dbias)` of `conv::TemporalConv` at (x, weight) for the output gradient `grad`.
pub(super) fn temporal_conv_grads(
    x: &Tensor,
    weight: &Tensor,
    grad: &Tensor,
) -> candle_core::Result<Grads3> {
    let need_dx = x.track_op();
    let packed = apply3(x, weight, grad, &TemporalConvGrad { need_dx })?;
    unpack(&packed, x, weight, need_dx)
}

/// [dx (when `need_dx`), dW, dbias] of a packed convolution backward as the operands' gradients.
fn unpack(
    packed: &Tensor,
    x: &Tensor,
    weight: &Tensor,
    need_dx: bool,
) -> candle_core::Result<Grads3> {
    let bias = Shape::from(weight.dim(0)?);
    unpack_grads(
        packed,
        [
            need_dx.then(|| x.shape()),
            Some(weight.shape()),
            Some(&bias),
        ],
    )
}

/// The gradients of `conv::TemporalConv` from (x (b, c, f, hw), W (o, c, 3, 1, 1), dy (b, o, f, hw)), packed as
/// [dx (when `need_dx`), dW, dbias]. The forward adds `W_t · x[:, in..in + n]` into `y[:, out..out + n]` for each tap
/// (`conv::temporal_taps`, over frame·pixel columns), so `dW_t = Σ_b dy_b[:, out..] · x_b[:, in..]ᵀ`,
/// `dx_b[:, in..] += W_tᵀ · dy_b[:, out..]` and `dbias = Σ dy`.
struct TemporalConvGrad {
    need_dx: bool,
}

impl CustomOp3 for TemporalConvGrad {
    fn name(&self) -> &'static str {
        "vadapt-temporal-conv-grad"
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
        let x = contiguous_f32(s1, l1, "temporal conv backward input")?;
        let wt = contiguous_f32(s2, l2, "temporal conv backward weight")?;
        let dy = contiguous_f32(s3, l3, "temporal conv backward output gradient")?;
        let (b, c, f, hw) = l1.shape().dims4()?;
        let o = l2.shape().dims()[0];
        if l2.shape().dims() != [o, c, 3, 1, 1] || l3.shape().dims() != [b, o, f, hw] {
            candle_core::bail!(
                "temporal conv backward: input {:?}, weight {:?}, output gradient {:?}",
                l1.shape(),
                l2.shape(),
                l3.shape()
            );
        }
        let cols = f * hw;
        let nx = if self.need_dx { x.len() } else { 0 };
        let n = nx + o * c * 3 + o;
        let mut out = output_buffer(n);
        let (dx, rest) = out.split_at_mut(nx);
        let (dw, db) = rest.split_at_mut(o * c * 3);
        bias_grad(dy, db, cols);
        // dW per tap as (3, o, c), reordered to the weight's (o, c, 3) below. The sum runs over units of one item
        // and `TEMPORAL_COLS_PER_UNIT` columns (all three taps), so that a batch of 2 still makes enough partials
        // for every thread: per item, the GEMMs are (o, c) outputs of 24-48 channels over thousands of columns,
        // which gemm cannot split over threads well (28-38 GFLOP/s on 2 threads at the demo prior's shapes).
        let mut taps = vec![0f32; 3 * o * c];
        let chunks = cols.div_ceil(TEMPORAL_COLS_PER_UNIT);
        summed_over_items(b * chunks, &mut taps, |unit, acc, first, par| {
            if first {
                // A chunk past a shifted tap's columns adds nothing to it: every tap's block starts from zero.
                acc.fill(0.0);
            }
            let (i, chunk) = (unit / chunks, unit % chunks);
            let start = chunk * TEMPORAL_COLS_PER_UNIT;
            for (tap, dst_off, src_off, n) in temporal_taps(cols, hw) {
                let len = n.min(start + TEMPORAL_COLS_PER_UNIT).saturating_sub(start);
                if len == 0 {
                    continue;
                }
                // SAFETY: dst tap's (o, c) block; lhs dy_i (o, len) rows `cols` apart; rhs x_iᵀ (len, c), column
                // stride `cols`; columns start..start + len of the tap's n, all inside item i.
                unsafe {
                    gemm_into(
                        (o, c, len),
                        acc[tap * o * c..].as_mut_ptr(),
                        c,
                        true,
                        dy[i * o * cols + dst_off + start..].as_ptr(),
                        (1, cols),
                        x[i * c * cols + src_off + start..].as_ptr(),
                        (cols, 1),
                        par,
                    )
                }
            }
        });
        for (j, d) in dw.iter_mut().enumerate() {
            let (oc, ci, tap) = (j / (3 * c), (j / 3) % c, j % 3);
            *d = taps[(tap * o + oc) * c + ci];
        }
        if self.need_dx {
            let init = |_: usize, dxb: &mut [f32]| dxb.fill(0.0);
            per_item(dx, dy, o * cols, (c, cols), init, |dxb, dyb, par| {
                for (tap, dst_off, src_off, n) in temporal_taps(cols, hw) {
                    if n == 0 {
                        continue;
                    }
                    // SAFETY: dst dx_b's columns from `src_off`, rows `cols` apart; lhs W_tapᵀ (c, o) inside the
                    // (o, c, 3) weight (column stride 3c, row stride 3); rhs dy_b (o, n) from `dst_off`.
                    unsafe {
                        gemm_into(
                            (c, n, o),
                            dxb[src_off..].as_mut_ptr(),
                            cols,
                            true,
                            wt.as_ptr().add(tap),
                            (3 * c, 3),
                            dyb[dst_off..].as_ptr(),
                            (1, cols),
                            par,
                        )
                    }
                }
            });
        }
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};
    use candle_nn::{Conv2d, Conv2dConfig};

    use super::super::grad_check::assert_same_function;
    use crate::models::max_abs_diff;

    /// The fused convolution's backward, and the im2col of tensor ops, equal candle's autograd through its own
    /// `conv2d`, for the input, weight and bias, at every stride, padding and kernel size the UNets use, with one
    /// image (a parallel GEMM) and with several partials of images (images in parallel).
    #[test]
    fn conv2d_backward_matches_candle_autograd() {
        let dev = Device::Cpu;
        for (b, c, o, k, stride, padding, h, w) in [
            (2, 3, 4, 3, 1, 1, 6, 7),
            (1, 5, 6, 3, 1, 1, 9, 8),
            (9, 3, 4, 3, 2, 1, 6, 10),
            (3, 2, 3, 3, 2, 0, 7, 9),
            (5, 4, 6, 1, 1, 0, 5, 4),
            (2, 3, 2, 3, 1, 0, 5, 6),
            (16, 3, 16, 3, 1, 1, 40, 72),
            (16, 4, 16, 3, 1, 1, 40, 72),
            (16, 7, 16, 3, 1, 1, 40, 72),
        ] {
            let what = format!("b{b} c{c} o{o} k{k} s{stride} p{padding} {h}x{w}");
            let x =
                Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, c, h, w), &dev).unwrap()).unwrap();
            let wt =
                Var::from_tensor(&Tensor::randn(0f32, 0.5, (o, c, k, k), &dev).unwrap()).unwrap();
            let bias = Var::from_tensor(&Tensor::randn(0f32, 1.0, o, &dev).unwrap()).unwrap();
            let reference = x
                .conv2d(&wt, padding, stride, 1, 1)
                .unwrap()
                .broadcast_add(&bias.reshape((1, o, 1, 1)).unwrap())
                .unwrap();
            let cfg = Conv2dConfig {
                padding,
                stride,
                ..Default::default()
            };
            let conv = Conv2d::new(wt.as_tensor().clone(), Some(bias.as_tensor().clone()), cfg);
            let ours = super::super::conv2d(&x, &conv).unwrap();
            let vars = [("input", &x), ("weight", &wt), ("bias", &bias)];
            assert_same_function(&reference, &ours, &vars, (1e-4, 1e-4), &what);
            // The im2col of tensor ops that training takes off the CPU f32 path (F16/BF16, CUDA).
            let composed =
                super::super::conv::conv2d_im2col(&x, &wt, Some(&bias), conv.config()).unwrap();
            let what = format!("{what}, im2col of tensor ops");
            assert_same_function(&reference, &composed, &vars, (1e-4, 1e-4), &what);
        }
    }

    /// The temporal convolution's backward equals candle's autograd through the composed tensor ops (one matmul,
    /// shifted slices and zero frames), for one, two and several frames.
    #[test]
    fn temporal_conv_backward_matches_composed_autograd() {
        let dev = Device::Cpu;
        for (b, c, o, f, hw) in [(2, 3, 4, 1, 5), (1, 4, 3, 2, 6), (6, 5, 6, 7, 9)] {
            let what = format!("b{b} c{c} o{o} f{f} hw{hw}");
            let var = |shape: &[usize], std: f32| {
                Var::from_tensor(&Tensor::randn(0f32, std, shape, &dev).unwrap()).unwrap()
            };
            let (x, wt, bias) = (
                var(&[b, c, f, hw], 1.0),
                var(&[o, c, 3, 1, 1], 0.5),
                var(&[o], 1.0),
            );
            let reference = super::super::conv::temporal_conv_composed(&x, &wt, &bias).unwrap();
            let ours = super::super::temporal_conv(&x, &wt, &bias).unwrap();
            let vars = [("input", &x), ("weight", &wt), ("bias", &bias)];
            assert_same_function(&reference, &ours, &vars, (1e-4, 1e-4), &what);
        }
    }

    /// An input that records no graph (the first convolution's, data) gets no gradient, and the weight's still
    /// equals the one computed with the input's.
    #[test]
    fn conv2d_backward_skips_a_data_input() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (3, 2, 5, 6), &dev).unwrap();
        let wt = Var::from_tensor(&Tensor::randn(0f32, 0.5, (4, 2, 3, 3), &dev).unwrap()).unwrap();
        let bias =
            Var::from_tensor(&Tensor::zeros(4, candle_core::DType::F32, &dev).unwrap()).unwrap();
        let cfg = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let conv = Conv2d::new(wt.as_tensor().clone(), Some(bias.as_tensor().clone()), cfg);
        let grads = super::super::conv2d(&x, &conv)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(grads.get(&x).is_none(), "no gradient for a data input");
        let xv = Var::from_tensor(&x).unwrap();
        let with_dx = super::super::conv2d(&xv, &conv)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(with_dx.get(&xv).is_some());
        let diff = max_abs_diff(grads.get(&wt).unwrap(), with_dx.get(&wt).unwrap());
        assert_eq!(
            diff, 0.0,
            "the weight gradient does not depend on whether dx is computed"
        );
    }
}
