//! Linear layers `y = x Wᵀ + b` for CPU f32 training: the inference kernel's row-blocked GEMM forward
//! (`linear::linear_rows`) with its own backward over every row at once,
//!
//! ```text
//! dx = dy W      dW = dyᵀ x      db = Σ_rows dy
//! ```
//!
//! candle-nn's `Linear` on a (batch, n, i) input runs one GEMM per batch item forward and two per item backward, and
//! its weight gradient is a (batch, o, i) tensor summed afterwards: the temporal transformers have batch = pixels of
//! 8-row problems.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};

use super::conv_grad::summed_over_items;
use super::cpu::{apply3, apply3_differentiable, contiguous_f32, output_buffer, unpack_grads};
use super::gemm::gemm_into;
use super::linear::{linear_rows, transposed};

/// Rows per partial weight gradient (the partials are added in a fixed order: the same bits under any thread count).
const ROWS_PER_PARTIAL: usize = 512;

/// `x Wᵀ + b` with a graph recorded through it (x (..., i), W (o, i), b (o,) or none).
pub(super) fn linear_trained(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let o = weight.dim(0)?;
    let op = LinearTrained {
        has_bias: bias.is_some(),
    };
    // A bias-free layer passes zeros that the op neither reads nor differentiates.
    let bias = match bias {
        Some(b) => b.contiguous()?,
        None => Tensor::zeros(o, DType::F32, weight.device())?,
    };
    apply3_differentiable(x, weight, &bias, op)
}

/// `linear_trained`'s op: (x, W, b) -> x Wᵀ (+ b).
struct LinearTrained {
    /// Whether b is the layer's bias (else zeros standing in for none).
    has_bias: bool,
}

impl CustomOp3 for LinearTrained {
    fn name(&self) -> &'static str {
        "vadapt-linear-trained"
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
        let x = contiguous_f32(s1, l1, "linear input")?;
        let w = contiguous_f32(s2, l2, "linear weight")?;
        let b = contiguous_f32(s3, l3, "linear bias")?;
        let (o, i) = l2.shape().dims2()?;
        let dims = l1.shape().dims();
        if dims.last() != Some(&i) || b.len() != o {
            candle_core::bail!(
                "linear: input {:?}, weight {:?}, bias {:?}",
                l1.shape(),
                l2.shape(),
                l3.shape()
            );
        }
        let rows = x.len() / i.max(1);
        let mut out = output_buffer(rows * o);
        let bias = self.has_bias.then_some(b);
        linear_rows(&mut out, x, &transposed(w, o), (rows, o, i), None, bias);
        let mut shape = dims.to_vec();
        if let Some(l) = shape.last_mut() {
            *l = o;
        }
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let need_dx = x.track_op();
        let op = LinearGrad {
            need_dx,
            has_bias: self.has_bias,
        };
        let packed = apply3(x, weight, grad, &op)?;
        let bias = Shape::from(weight.dim(0)?);
        let shapes = [
            need_dx.then(|| x.shape()),
            Some(weight.shape()),
            self.has_bias.then_some(&bias),
        ];
        unpack_grads(&packed, shapes)
    }
}

/// (x, W, dy) -> [dx (when `need_dx`), dW, db (when `has_bias`)] packed.
struct LinearGrad {
    need_dx: bool,
    has_bias: bool,
}

impl CustomOp3 for LinearGrad {
    fn name(&self) -> &'static str {
        "vadapt-linear-grad"
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
        let x = contiguous_f32(s1, l1, "linear backward input")?;
        let w = contiguous_f32(s2, l2, "linear backward weight")?;
        let dy = contiguous_f32(s3, l3, "linear backward output gradient")?;
        let (o, i) = l2.shape().dims2()?;
        let rows = x.len() / i.max(1);
        if x.len() != rows * i || dy.len() != rows * o {
            candle_core::bail!(
                "linear backward: input {:?}, weight {:?}, output gradient {:?}",
                l1.shape(),
                l2.shape(),
                l3.shape()
            );
        }
        let nx = if self.need_dx { x.len() } else { 0 };
        let nb = if self.has_bias { o } else { 0 };
        let n = nx + o * i + nb;
        let mut out = output_buffer(n);
        let (dx, dwb) = out.split_at_mut(nx);
        weight_and_bias_grad(x, dy, dwb, (rows, o, i));
        if self.need_dx {
            // dx = dy W: the forward's kernel for the weight Wᵀ (i, o), which it takes transposed: W as stored.
            linear_rows(dx, dy, w, (rows, i, o), None, None);
        }
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }
}

/// `dW = dyᵀ x` (o, i) and, when `out` has room for it, `db = Σ_rows dy` (o), in partials of ROWS_PER_PARTIAL rows.
fn weight_and_bias_grad(
    x: &[f32],
    dy: &[f32],
    out: &mut [f32],
    (rows, o, i): (usize, usize, usize),
) {
    let with_bias = out.len() > o * i;
    let chunks = rows.div_ceil(ROWS_PER_PARTIAL);
    summed_over_items(chunks, out, |chunk, acc, first, par| {
        let r0 = chunk * ROWS_PER_PARTIAL;
        let n = ROWS_PER_PARTIAL.min(rows - r0);
        let (x, dy) = (&x[r0 * i..(r0 + n) * i], &dy[r0 * o..(r0 + n) * o]);
        let (dw, db) = acc.split_at_mut(o * i);
        // SAFETY: dst the (o, i) partial; lhs dyᵀ (o, n) read from dy (n, o) with column stride o; rhs x (n, i)
        // row-major; all inside this chunk.
        unsafe {
            gemm_into(
                (o, i, n),
                dw.as_mut_ptr(),
                i,
                !first,
                dy.as_ptr(),
                (o, 1),
                x.as_ptr(),
                (1, i),
                par,
            )
        }
        if with_bias {
            if first {
                db.fill(0.0);
            }
            for row in dy.chunks_exact(o) {
                db.iter_mut().zip(row).for_each(|(d, v)| *d += v);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Module, Tensor, Var};
    use candle_nn::Linear;

    use super::super::grad_check::assert_same_function;

    /// The linear layer's backward equals candle-nn's `Linear` under autograd, with and without a bias, for 2-D and
    /// batched inputs, and for more rows than one partial weight gradient holds.
    #[test]
    fn linear_backward_matches_candle_autograd() {
        let dev = Device::Cpu;
        for (shape, o, with_bias) in [
            (vec![7, 12], 10, true),
            (vec![3, 5, 12], 9, false),
            (vec![2, 2300, 6], 5, true),
        ] {
            let i = *shape.last().unwrap();
            let what = format!("{shape:?} -> {o}, bias {with_bias}");
            let var = |s: &[usize]| {
                Var::from_tensor(&Tensor::randn(0f32, 1.0, s, &dev).unwrap()).unwrap()
            };
            let (x, w, b) = (var(&shape), var(&[o, i]), var(&[o]));
            let layer = Linear::new(
                w.as_tensor().clone(),
                with_bias.then(|| b.as_tensor().clone()),
            );
            let reference = layer.forward(&x).unwrap();
            let ours = super::super::linear(&x, &layer, None).unwrap();
            let mut vars = vec![("x", &x), ("weight", &w)];
            if with_bias {
                vars.push(("bias", &b));
            }
            assert_same_function(&reference, &ours, &vars, (1e-4, 2e-5), &what);
            if !with_bias {
                let grads = ours.sum_all().unwrap().backward().unwrap();
                assert!(
                    grads.get(&b).is_none(),
                    "no bias gradient without a bias: {what}"
                );
            }
        }
    }
}
