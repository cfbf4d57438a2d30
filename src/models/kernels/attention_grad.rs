//! The backward of multi-head attention `O = softmax(scale · Q Kᵀ) V` for CPU f32 training, without the score
//! matrix. Per query row i of one head, the probabilities are recomputed from q_i and K (as the forward computes
//! them), then (FlashAttention's backward, Dao et al. 2022, eq. in their appendix B.2, without tiling):
//!
//! ```text
//! dp_j = dO_i · v_j          D_i = Σ_j p_j dp_j  (= dO_i · O_i)      ds_j = p_j (dp_j − D_i)
//! dq_i = scale Σ_j ds_j k_j  dk_j += scale ds_j q_i                  dv_j += p_j dO_i
//! ```
//!
//! One task per (batch item, head) owns that head's columns of dQ, dK and dV, so rows are added in a fixed order
//! (the same bits under any thread count). Keys, values and their gradients are held transposed, (d, m), so every
//! inner loop runs along the m keys, contiguous, and vectorises. This replaces candle's split heads, batched matmuls
//! and softmax in training, whose backward wrote (rows, keys) score gradients three times per head.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::activation::exp;
use super::cpu::{
    contiguous_f32, has_avx2_fma, output_buffer, unpack_grads, with_f32, with_thread_buffer,
    Grads3, OutPtr,
};
#[cfg(target_arch = "x86_64")]
use super::portable::Fused;
use super::portable::{max, sum, MulAdd, Plain, LANES};

/// The gradients (dQ, dK, dV) of `attention::Attention` at (q, k, v) for the output gradient `grad`.
pub(super) fn attention_grads(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    grad: &Tensor,
    (heads, scale): (usize, f32),
) -> candle_core::Result<Grads3> {
    let op = AttentionGrad {
        heads,
        scale,
        v: v.contiguous()?,
        dout: grad.contiguous()?,
    };
    let packed = q.contiguous()?.apply_op2_no_bwd(&k.contiguous()?, &op)?;
    unpack_grads(&packed, [Some(q.shape()), Some(k.shape()), Some(v.shape())])
}

/// (q, k) -> [dQ, dK, dV] packed; V and dO ride along (a custom op has at most three operands).
struct AttentionGrad {
    heads: usize,
    scale: f32,
    v: Tensor,
    dout: Tensor,
}

impl CustomOp2 for AttentionGrad {
    fn name(&self) -> &'static str {
        "vadapt-attention-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let q = contiguous_f32(s1, l1, "attention backward q")?;
        let k = contiguous_f32(s2, l2, "attention backward k")?;
        let (b, n, width) = l1.shape().dims3()?;
        let (_, m, _) = l2.shape().dims3()?;
        let heads = self.heads;
        if l2.shape().dims3()? != (b, m, width)
            || self.v.dims() != [b, m, width]
            || self.dout.dims() != [b, n, width]
            || heads == 0
            || width % heads != 0
        {
            candle_core::bail!(
                "attention backward: q {:?}, k {:?}, v {:?}, output gradient {:?}, {heads} heads",
                l1.shape(),
                l2.shape(),
                self.v.shape(),
                self.dout.shape()
            );
        }
        let problem = Problem {
            n,
            m,
            d: width / heads,
            width,
            scale: self.scale,
        };
        let total = q.len() + 2 * k.len();
        let mut out = output_buffer(total);
        let operands = [Some(&self.v), Some(&self.dout)];
        with_f32(operands, "attention backward", |[v, dout]| {
            let (v, dout) = (v.expect("present"), dout.expect("present"));
            let (dq, dkv) = out.split_at_mut(q.len());
            let (dq, dk, dv) = (
                OutPtr(dq.as_mut_ptr()),
                OutPtr(dkv.as_mut_ptr()),
                OutPtr(dkv[k.len()..].as_mut_ptr()),
            );
            let avx = has_avx2_fma();
            let wide = wide_kernel(problem);
            // Short sequences (temporal attention: 16 tokens) go to the pool in runs, as in the forward.
            let min_len = (8192 / (n * m).max(1)).max(1);
            (0..b * heads)
                .into_par_iter()
                .with_min_len(min_len)
                .for_each(|s| {
                    let (bi, h) = (s / heads, s % heads);
                    let d = problem.d;
                    let at_q = bi * n * width + h * problem.d;
                    let at_k = bi * m * width + h * d;
                    let inputs = HeadInputs {
                        q: &q[at_q..],
                        k: &k[at_k..],
                        v: &v[at_k..],
                        dout: &dout[at_q..],
                    };
                    // SAFETY: head h of batch item bi: its columns of dQ (n rows) and of dK, dV (m rows) belong to
                    // this task alone, and the offsets stay inside item bi's blocks.
                    let outputs = unsafe {
                        HeadOutputs {
                            dq: OutPtr(dq.get().add(at_q)),
                            dk: OutPtr(dk.get().add(at_k)),
                            dv: OutPtr(dv.get().add(at_k)),
                        }
                    };
                    head_grad_dispatch((avx, wide), &inputs, outputs, problem);
                });
            Ok(())
        })?;
        Ok((CpuStorage::F32(out), Shape::from(total)))
    }
}

/// One attention problem's sizes: n query rows, m keys, head width d, rows `width` apart, the softmax scale.
#[derive(Clone, Copy)]
struct Problem {
    n: usize,
    m: usize,
    d: usize,
    width: usize,
    scale: f32,
}

/// One head's operands, each starting at the head's first column of its batch item (rows `width` apart).
struct HeadInputs<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    dout: &'a [f32],
}

/// Where one head's gradients go (first column of the head in its batch item; rows `width` apart).
struct HeadOutputs {
    dq: OutPtr,
    dk: OutPtr,
    dv: OutPtr,
}

thread_local! {
    /// Each thread's transposed keys, values and their gradients (4 · d · m), a row group's p and ds (2 · ROW_GROUP · m)
    /// and d coefficients.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Which AVX-512 kernel takes this problem, if any: 8-wide heads on a CPU with AVX-512F, up to 16 keys in one
/// register (`attention_grad_head8_few`: the temporal attention), more in blocks of 16 (`attention_grad_head8`).
#[derive(Clone, Copy, PartialEq)]
enum Wide {
    No,
    FewKeys,
    Blocks,
}

fn wide_kernel(problem: Problem) -> Wide {
    #[cfg(target_arch = "x86_64")]
    if problem.d == super::x86_64::HEAD && super::cpu::has_avx512f() {
        return if problem.m <= super::avx512::KEYS {
            Wide::FewKeys
        } else {
            Wide::Blocks
        };
    }
    let _ = problem;
    Wide::No
}

/// `head_grad`, compiled for AVX2 + FMA where `avx`; the AVX-512 kernel where `wide` (`wide_kernel`).
fn head_grad_dispatch(
    (avx, wide): (bool, Wide),
    inputs: &HeadInputs,
    outputs: HeadOutputs,
    problem: Problem,
) {
    #[cfg(target_arch = "x86_64")]
    if wide != Wide::No {
        let (kernel, len): (unsafe fn(_, _, _, _, &mut [f32]), _) = match wide {
            Wide::FewKeys => (
                super::avx512::attention_grad_head8_few,
                super::avx512::few_grad_scratch_len(problem.n),
            ),
            _ => (
                super::avx512::attention_grad_head8,
                super::avx512::grad_scratch_len(problem.m),
            ),
        };
        with_thread_buffer(&SCRATCH, len, |scratch| {
            // SAFETY: `wide` holds only where the CPU has AVX-512F and d = HEAD (and m ≤ 16 for the few-keys kernel); the
            // inputs hold this head's n (q, dout) and m (k, v) rows `width` apart, and the outputs are this task's
            // alone (call site).
            unsafe {
                kernel(
                    (
                        inputs.q.as_ptr(),
                        inputs.k.as_ptr(),
                        inputs.v.as_ptr(),
                        inputs.dout.as_ptr(),
                    ),
                    (outputs.dq.get(), outputs.dk.get(), outputs.dv.get()),
                    (problem.n, problem.m, problem.width),
                    problem.scale,
                    scratch,
                )
            }
        });
        return;
    }
    let _ = wide;
    let len = 4 * problem.d * problem.m + 2 * ROW_GROUP * problem.m + problem.d;
    with_thread_buffer(&SCRATCH, len, |scratch| {
        #[cfg(target_arch = "x86_64")]
        if avx {
            #[target_feature(enable = "avx2,fma")]
            unsafe fn head_grad_avx2(i: &HeadInputs, o: HeadOutputs, p: Problem, s: &mut [f32]) {
                // SAFETY: forwarded contract.
                unsafe { head_grad::<Fused>(i, o, p, s) }
            }
            // SAFETY: the caller checked AVX2 and FMA; the output contract is the caller's (see the call site).
            unsafe { head_grad_avx2(inputs, outputs, problem, scratch) };
            return;
        }
        let _ = avx;
        // SAFETY: as above.
        unsafe { head_grad::<Plain>(inputs, outputs, problem, scratch) }
    })
}

/// Query rows per group: their `ds` and `p` rows update dK and dV together (`add_rows`), so each dKᵀ/dVᵀ element
/// is loaded and stored once per group instead of once per row.
const ROW_GROUP: usize = 4;
/// Keys per register block of `weighted_rows` (4 accumulator chains of LANES).
const KEY_BLOCK: usize = 4 * LANES;

/// The backward of one head (module comment), rows in order (groups of ROW_GROUP).
///
/// # Safety
/// `outputs` must address n rows (dQ) and m rows (dK, dV) of d floats, `width` apart, that nothing else touches.
#[inline(always)]
unsafe fn head_grad<F: MulAdd>(
    inputs: &HeadInputs,
    outputs: HeadOutputs,
    Problem {
        n,
        m,
        d,
        width,
        scale,
    }: Problem,
    scratch: &mut [f32],
) {
    let (kt, rest) = scratch.split_at_mut(d * m);
    let (vt, rest) = rest.split_at_mut(d * m);
    let (dkt, rest) = rest.split_at_mut(d * m);
    let (dvt, rest) = rest.split_at_mut(d * m);
    let (p, rest) = rest.split_at_mut(ROW_GROUP * m);
    let (ds, coef) = rest.split_at_mut(ROW_GROUP * m);
    for j in 0..m {
        for e in 0..d {
            kt[e * m + j] = inputs.k[j * width + e];
            vt[e * m + j] = inputs.v[j * width + e];
        }
    }
    dkt.fill(0.0);
    dvt.fill(0.0);
    for i0 in (0..n).step_by(ROW_GROUP) {
        let rows = ROW_GROUP.min(n - i0);
        // A short last group: its missing rows enter `add_rows` with coefficient 0, so they must hold finite values.
        p[rows * m..].fill(0.0);
        ds[rows * m..].fill(0.0);
        for r in 0..rows {
            let i = i0 + r;
            let qi = &inputs.q[i * width..i * width + d];
            let doi = &inputs.dout[i * width..i * width + d];
            let (pr, dsr) = (&mut p[r * m..(r + 1) * m], &mut ds[r * m..(r + 1) * m]);
            // p = softmax(scale · q_i Kᵀ)
            let coef = &mut coef[..d];
            coef.iter_mut().zip(qi).for_each(|(c, &q)| *c = scale * q);
            weighted_rows::<F>(pr, coef, kt, m);
            let mx = max(pr);
            // The exponentials in their own loop: a running sum beside them would keep it scalar.
            pr.iter_mut().for_each(|pj| *pj = exp(*pj - mx));
            let inv = 1.0 / sum(pr);
            pr.iter_mut().for_each(|pj| *pj *= inv);
            // dp = dO_i Vᵀ, then ds = p ∘ (dp − p·dp)
            weighted_rows::<F>(dsr, doi, vt, m);
            let di = dot::<F>(pr, dsr);
            for (s, &pj) in dsr.iter_mut().zip(pr.iter()) {
                *s = pj * (*s - di);
            }
            let mut dq = [0f32; 16];
            match d {
                // dq = Σ_j ds_j k_j along the keys' own rows: one d-wide FMA per key, no horizontal sums.
                8 => dq[..8].copy_from_slice(&weighted_key_rows::<F, 8>(dsr, inputs.k, width)),
                16 => dq = weighted_key_rows::<F, 16>(dsr, inputs.k, width),
                _ => {}
            }
            for (e, kte) in kt.chunks_exact(m).enumerate() {
                let v = if d == 8 || d == 16 {
                    dq[e]
                } else {
                    dot::<F>(dsr, kte)
                };
                // SAFETY: row i < n, column e < d of this head's dQ (the caller's contract).
                unsafe { *outputs.dq.get().add(i * width + e) = scale * v };
            }
        }
        let at = |t: &[f32], r: usize, e: usize| t[(i0 + r) * width + e];
        for e in 0..d {
            let mut ck = [0f32; ROW_GROUP];
            let mut cv = [0f32; ROW_GROUP];
            for r in 0..rows {
                ck[r] = scale * at(inputs.q, r, e);
                cv[r] = at(inputs.dout, r, e);
            }
            add_rows::<F>(&mut dkt[e * m..(e + 1) * m], &ck, ds, m);
            add_rows::<F>(&mut dvt[e * m..(e + 1) * m], &cv, p, m);
        }
    }
    for j in 0..m {
        for e in 0..d {
            // SAFETY: row j < m, column e < d of this head's dK and dV (the caller's contract).
            unsafe {
                *outputs.dk.get().add(j * width + e) = dkt[e * m + j];
                *outputs.dv.get().add(j * width + e) = dvt[e * m + j];
            }
        }
    }
}

/// `out[j] = Σ_e coef[e] · rows[e·m + j]` for the m entries of out: a KEY_BLOCK of sums stays in registers over
/// the d rows, so out is written once.
#[inline(always)]
fn weighted_rows<F: MulAdd>(out: &mut [f32], coef: &[f32], rows: &[f32], m: usize) {
    let full = m - m % KEY_BLOCK;
    for j0 in (0..full).step_by(KEY_BLOCK) {
        let mut acc = [0f32; KEY_BLOCK];
        for (e, &c) in coef.iter().enumerate() {
            let row: &[f32; KEY_BLOCK] = rows[e * m + j0..e * m + j0 + KEY_BLOCK]
                .try_into()
                .expect("a block");
            for l in 0..KEY_BLOCK {
                acc[l] = F::mul_add(c, row[l], acc[l]);
            }
        }
        out[j0..j0 + KEY_BLOCK].copy_from_slice(&acc);
    }
    // The last m mod KEY_BLOCK keys (all of them in the temporal attention's 8-key problems), row by row.
    let tail = &mut out[full..m];
    tail.fill(0.0);
    for (e, &c) in coef.iter().enumerate() {
        let row = &rows[e * m + full..(e + 1) * m];
        for (o, &r) in tail.iter_mut().zip(row) {
            *o = F::mul_add(c, r, *o);
        }
    }
}

/// `y[j] += Σ_r c[r] · x[r·m + j]` over the ROW_GROUP rows of x (rows past the group's end have c = 0).
#[inline(always)]
fn add_rows<F: MulAdd>(y: &mut [f32], c: &[f32; ROW_GROUP], x: &[f32], m: usize) {
    let (x0, x1, x2, x3) = (&x[..m], &x[m..2 * m], &x[2 * m..3 * m], &x[3 * m..4 * m]);
    for j in 0..m {
        let v = F::mul_add(c[0], x0[j], y[j]);
        let v = F::mul_add(c[1], x1[j], v);
        let v = F::mul_add(c[2], x2[j], v);
        y[j] = F::mul_add(c[3], x3[j], v);
    }
}

/// `Σ_j w[j] · rows[j·stride..j·stride + D]`: the m key rows of one head weighted and summed, in four
/// independent accumulator chains.
#[inline(always)]
fn weighted_key_rows<F: MulAdd, const D: usize>(
    w: &[f32],
    rows: &[f32],
    stride: usize,
) -> [f32; D] {
    let row = |j: usize| -> &[f32; D] {
        rows[j * stride..j * stride + D]
            .try_into()
            .expect("a key row")
    };
    let (mut a0, mut a1, mut a2, mut a3) = ([0f32; D], [0f32; D], [0f32; D], [0f32; D]);
    let full = w.len() - w.len() % 4;
    for j in (0..full).step_by(4) {
        let (r0, r1, r2, r3) = (row(j), row(j + 1), row(j + 2), row(j + 3));
        for e in 0..D {
            a0[e] = F::mul_add(w[j], r0[e], a0[e]);
            a1[e] = F::mul_add(w[j + 1], r1[e], a1[e]);
            a2[e] = F::mul_add(w[j + 2], r2[e], a2[e]);
            a3[e] = F::mul_add(w[j + 3], r3[e], a3[e]);
        }
    }
    for (j, &wj) in w.iter().enumerate().skip(full) {
        let r = row(j);
        for e in 0..D {
            a0[e] = F::mul_add(wj, r[e], a0[e]);
        }
    }
    std::array::from_fn(|e| (a0[e] + a1[e]) + (a2[e] + a3[e]))
}

/// `Σ a·b`, in LANES accumulators.
#[inline(always)]
fn dot<F: MulAdd>(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] = F::mul_add(x[l], y[l], acc[l]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::super::grad_check::assert_same_function;
    use crate::rng::NoiseRng;

    /// The fused attention's backward equals candle's autograd through split heads, batched matmuls and softmax,
    /// for the UNets' shapes: many keys (spatial), few (temporal, text), 8-wide heads and others, one key.
    #[test]
    fn attention_backward_matches_candle_autograd() {
        let dev = Device::Cpu;
        for (b, n, m, heads, d) in [
            (2, 40, 40, 3, 8),
            (5, 16, 7, 2, 8),
            (1, 9, 33, 2, 5),
            (3, 4, 1, 1, 8),
            (2, 70, 70, 1, 16),
        ] {
            let what = format!("b{b} n{n} m{m} heads{heads} d{d}");
            let var = |rows: usize| {
                let t = Tensor::randn(0f32, 1.0, (b, rows, heads * d), &dev).unwrap();
                Var::from_tensor(&t).unwrap()
            };
            let (q, k, v) = (var(n), var(m), var(m));
            let scale = 1.0 / (d as f64).sqrt();
            let reference =
                super::super::attention::attention_composed(&q, &k, &v, heads, scale).unwrap();
            let ours = super::super::attention(&q, &k, &v, heads, scale).unwrap();
            let vars = [("q", &q), ("k", &k), ("v", &v)];
            assert_same_function(&reference, &ours, &vars, (1e-5, 4e-5), &what);
        }
    }

    /// The AVX-512 kernels against the AVX2 one for 8-wide heads, at key counts around their 16-key blocks (one key
    /// to 16 for the few-keys kernel), odd row counts (the one-row tail), and peaked softmaxes (scores spread over
    /// hundreds: most weights at the floor).
    #[test]
    fn avx512_backward_matches_the_portable_kernel() {
        use super::{head_grad_dispatch, HeadInputs, HeadOutputs, OutPtr, Problem};
        if !(super::super::cpu::has_avx512f() && super::super::cpu::has_avx2_fma()) {
            eprintln!("no AVX-512F on this CPU: the AVX-512 attention backward is not exercised");
            return;
        }
        let mut rng = NoiseRng::new(5);
        let (heads, d) = (3, 8);
        let width = heads * d;
        for (n, m, spread) in [
            (1, 16, 4.0),
            (8, 8, 4.0),
            (16, 16, 4.0),
            (5, 1, 4.0),
            (16, 16, 16.0),
            (7, 17, 4.0),
            (33, 40, 4.0),
            (240, 240, 4.0),
            (5, 961, 4.0),
            (9, 100, 16.0),
        ] {
            let data = |rng: &mut NoiseRng, rows: usize| -> Vec<f32> {
                (0..rows * width)
                    .map(|_| (rng.uniform() - 0.5) * spread)
                    .collect()
            };
            let (q, k, v, dout) = (
                data(&mut rng, n),
                data(&mut rng, m),
                data(&mut rng, m),
                data(&mut rng, n),
            );
            let run = |wide: bool| {
                let (mut dq, mut dk, mut dv) = (
                    vec![0f32; n * width],
                    vec![0f32; m * width],
                    vec![0f32; m * width],
                );
                for h in 0..heads {
                    let at = h * d;
                    let inputs = HeadInputs {
                        q: &q[at..],
                        k: &k[at..],
                        v: &v[at..],
                        dout: &dout[at..],
                    };
                    let outputs = HeadOutputs {
                        dq: OutPtr(dq[at..].as_mut_ptr()),
                        dk: OutPtr(dk[at..].as_mut_ptr()),
                        dv: OutPtr(dv[at..].as_mut_ptr()),
                    };
                    let problem = Problem {
                        n,
                        m,
                        d,
                        width,
                        scale: 0.35,
                    };
                    head_grad_dispatch(
                        (
                            true,
                            if wide {
                                super::wide_kernel(problem)
                            } else {
                                super::Wide::No
                            },
                        ),
                        &inputs,
                        outputs,
                        problem,
                    );
                }
                [dq, dk, dv]
            };
            let (want, got) = (run(false), run(true));
            for (name, (w, g)) in ["dq", "dk", "dv"].iter().zip(want.iter().zip(&got)) {
                let big = w.iter().fold(0f32, |a, x| a.max(x.abs()));
                for (i, (a, b)) in w.iter().zip(g).enumerate() {
                    assert!(
                        (a - b).abs() <= 2e-5 * big.max(1.0),
                        "n {n}, m {m}, spread {spread}: {name}[{i}] AVX2 {a}, AVX-512 {b} (largest {big})"
                    );
                }
            }
        }
    }
}
