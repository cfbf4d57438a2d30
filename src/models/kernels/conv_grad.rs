//! The backward of the 2-D convolution for CPU f32 training, as GEMMs on the forward's im2col layout. With
//! `cols_b` the (C·kh·kw, Ho·Wo) im2col of image b and `y_b = W cols_b + bias` (`conv::Conv2d`):
//!
//! * `dW = Σ_b dy_b · cols_bᵀ` (cols recomputed, not kept from the forward: a copy per image, where keeping them
//!   would hold kh·kw times every conv input for the whole step);
//! * `dx_b = col2im(Wᵀ · dy_b)`: every column entry adds back to the input pixel it was copied from;
//! * `dbias = Σ_{b, pixels} dy`.
//!
//! Replaces the training im2col of tensor ops (`conv::conv2d_im2col`), whose backward pads, narrows and stacks nine
//! full-size gradients per convolution: copies and zero fills were a sixth of a training step.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::conv::{im2col, per_item, COLS};
use super::cpu::{apply3, contiguous_f32, output_buffer};
use super::gemm::gemm_into;

/// Images per partial weight gradient: partials are summed in a fixed order afterwards, so `dW` has the same bits
/// under any thread count.
const ITEMS_PER_PARTIAL: usize = 4;

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

/// `db[o] = Σ_{b, pixels} dy[b, o, pixels]`, item by item in order.
fn bias_grad(dy: &[f32], db: &mut [f32], hw: usize) {
    let o = db.len();
    db.fill(0.0);
    for item in dy.chunks_exact(o * hw) {
        for (d, row) in db.iter_mut().zip(item.chunks_exact(hw)) {
            *d += row.iter().sum::<f32>();
        }
    }
}

/// `dW (O, C·kh·kw) = Σ_b dy_b (O, Ho·Wo) · cols_bᵀ`: one accumulating GEMM per image into a partial per
/// `ITEMS_PER_PARTIAL` images (in parallel), the partials then added in order.
fn weight_grad(x: &[f32], dy: &[f32], dw: &mut [f32], g: Geometry) {
    let (k, hw, o) = (g.k(), g.hw(), g.o);
    let in_item = g.c * g.h * g.w;
    let items: Vec<usize> = (0..dy.len() / (o * hw)).collect();
    let chunks = items.len().div_ceil(ITEMS_PER_PARTIAL);
    let threads = rayon::current_num_threads();
    let par = if chunks >= threads {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(threads)
    };
    let partial = |chunk: &[usize], acc: &mut [f32]| {
        COLS.with(|buf| {
            let mut buf = buf.borrow_mut();
            for (n, &i) in chunk.iter().enumerate() {
                let xb = &x[i * in_item..(i + 1) * in_item];
                let cols: &[f32] = if g.pointwise() {
                    xb
                } else {
                    if buf.len() < k * hw {
                        buf.resize(k * hw, 0.0);
                    }
                    g.im2col(xb, &mut buf[..k * hw]);
                    &buf[..k * hw]
                };
                // SAFETY: dst the (o, k) partial; lhs dy_i (o, hw) row-major; rhs colsᵀ (hw, k), column stride hw.
                unsafe {
                    gemm_into(
                        (o, k, hw),
                        acc.as_mut_ptr(),
                        k,
                        n > 0,
                        dy[i * o * hw..].as_ptr(),
                        (1, hw),
                        cols.as_ptr(),
                        (hw, 1),
                        par,
                    )
                }
            }
        })
    };
    let partials: Vec<Vec<f32>> = items
        .par_chunks(ITEMS_PER_PARTIAL)
        .map(|chunk| {
            // Written by the chunk's first GEMM (which does not read it).
            let mut acc = output_buffer(o * k);
            partial(chunk, &mut acc);
            acc
        })
        .collect();
    dw.fill(0.0);
    for p in &partials {
        dw.iter_mut().zip(p).for_each(|(d, v)| *d += v);
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
        COLS.with(|buf| {
            let mut buf = buf.borrow_mut();
            if buf.len() < k * hw {
                buf.resize(k * hw, 0.0);
            }
            product(&mut buf[..k * hw]);
            col2im(&buf[..k * hw], dxb, g);
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
) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let need_dx = x.track_op();
    let op = Conv2dGrad {
        stride,
        padding,
        need_dx,
    };
    let packed = apply3(x, weight, grad, &op)?;
    let nx = if need_dx { x.elem_count() } else { 0 };
    let (o, nw) = (weight.dim(0)?, weight.elem_count());
    let dx = if need_dx {
        Some(packed.narrow(0, 0, nx)?.reshape(x.shape())?)
    } else {
        None
    };
    let dw = packed.narrow(0, nx, nw)?.reshape(weight.shape())?;
    let db = packed.narrow(0, nx + nw, o)?;
    Ok((dx, Some(dw), Some(db)))
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};
    use candle_nn::{Conv2d, Conv2dConfig};

    use crate::models::max_abs_diff;

    /// The fused convolution's backward equals candle's autograd through its own `conv2d`, for the input, weight
    /// and bias, at every stride, padding and kernel size the UNets use, with one image (a parallel GEMM) and with
    /// several partials of images (images in parallel).
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
            assert!(max_abs_diff(&ours, &reference) < 1e-4, "forward {what}");
            // A loss whose output gradient differs per element.
            let probe = Tensor::randn(0f32, 1.0, reference.dims(), &dev).unwrap();
            let loss = |y: &Tensor| (y * &probe).unwrap().sum_all().unwrap();
            let g_ref = loss(&reference).backward().unwrap();
            let g_ours = loss(&ours).backward().unwrap();
            for (name, v) in [("input", &x), ("weight", &wt), ("bias", &bias)] {
                let (a, b) = (g_ref.get(v).unwrap(), g_ours.get(v).expect(name));
                assert_eq!(a.dims(), b.dims(), "{name} grad shape {what}");
                let scale = a
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                let diff = max_abs_diff(a, b);
                assert!(
                    diff < 1e-5 * scale.max(1.0) * 10.0,
                    "{name} grad {what}: {diff} (scale {scale})"
                );
            }
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
