//! The vendored candle-core patch (vendor/candle-core/PATCHES.md): sums over any set of dimensions, and gradients
//! accumulated without zero tensors, checked against plain loops. Everything the trainer computes goes through these.

use candle_core::{Device, Tensor, Var, D};
use proptest::prelude::*;

/// `sum_keepdim` over `reduce` of a contiguous f32 tensor, computed in f64 by index arithmetic.
fn naive_sum(data: &[f32], dims: &[usize], reduce: &[usize]) -> Vec<f64> {
    let out_dims: Vec<usize> = dims
        .iter()
        .enumerate()
        .map(|(d, &s)| if reduce.contains(&d) { 1 } else { s })
        .collect();
    let mut out = vec![0f64; out_dims.iter().product()];
    for (i, &v) in data.iter().enumerate() {
        // Unravel i over dims, ravel over out_dims with the reduced coordinates at 0.
        let (mut rest, mut o, mut stride) = (i, 0, 1);
        for d in (0..dims.len()).rev() {
            let coord = rest % dims[d];
            rest /= dims[d];
            if !reduce.contains(&d) {
                o += coord * stride;
            }
            stride *= out_dims[d];
        }
        out[o] += v as f64;
    }
    out
}

fn check_sum(dims: &[usize], reduce: &[usize], seed: u64) {
    let n: usize = dims.iter().product();
    // Deterministic values in [-1, 1) without a RNG dependency.
    let data: Vec<f32> = (0..n)
        .map(|i| (((i as u64 * 2654435761 + seed * 97) % 2001) as f32 / 1000.0) - 1.0)
        .collect();
    let t = Tensor::from_vec(data.clone(), dims, &Device::Cpu).unwrap();
    let got: Vec<f32> = t
        .sum_keepdim(reduce)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let want = naive_sum(&data, dims, reduce);
    assert_eq!(got.len(), want.len(), "{dims:?} over {reduce:?}");
    let count = n / want.len().max(1);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let tol = 1e-5 * (count as f64).max(1.0);
        assert!(
            (*g as f64 - w).abs() <= tol,
            "{dims:?} over {reduce:?}, element {i}: {g} against {w} (tolerance {tol})"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    /// Small shapes of rank 1-5, any subset of dimensions (the single-threaded walk over runs).
    #[test]
    fn sums_over_any_dimensions_match_a_loop(
        dims in proptest::collection::vec(1usize..6, 1..6),
        mask in 0u32..32,
        seed in 0u64..1000,
    ) {
        let reduce: Vec<usize> = (0..dims.len()).filter(|d| mask & (1 << d) != 0).collect();
        prop_assume!(!reduce.is_empty());
        check_sum(&dims, &reduce, seed);
    }
}

/// The shapes a training step reduces (the broadcast biases of convolutions, linears and the time embedding), large
/// enough to take the parallel paths: outermost run kept (slabs) and reduced (partial sums).
#[test]
fn training_step_sums_match_a_loop() {
    let cases: &[(&[usize], &[usize])] = &[
        (&[480, 8, 48], &[0, 1]),
        (&[2, 48, 8, 240], &[0, 2, 3]),
        (&[16, 24, 24, 40], &[0, 2, 3]),
        (&[16, 48, 432], &[0]),
        (&[2, 64, 48, 96], &[1]),
        (&[2, 64, 48, 96], &[1, 3]),
        (&[3, 5, 4096], &[2]),
        (&[70000], &[0]),
    ];
    for (i, (dims, reduce)) in cases.iter().enumerate() {
        check_sum(dims, reduce, i as u64);
    }
}

/// Gradients through shared inputs (several contributions), `sub` with the variable on the right (its first
/// contribution is negated), broadcasts (a reduction), a transpose (a strided first contribution) and a narrow,
/// against the derivative written out by hand.
#[test]
fn gradients_accumulate_like_the_chain_rule() {
    let dev = Device::Cpu;
    let a_data: Vec<f32> = (0..12).map(|i| 0.1 * i as f32 - 0.5).collect();
    let b_data: Vec<f32> = (0..4).map(|i| 0.3 - 0.2 * i as f32).collect();
    let a = Var::from_vec(a_data.clone(), (3, 4), &dev).unwrap();
    let b = Var::from_vec(b_data.clone(), 4, &dev).unwrap();
    // loss = sum((a + b)·a) − sum(b − aᵀ[.., 0..2]ᵀ ...) written as ops that exercise each path:
    let ab = a.broadcast_add(&b).unwrap(); // broadcast: db gets a sum over rows
    let prod = (&ab * a.as_tensor()).unwrap(); // a contributes twice
    let bt = b.broadcast_as((3, 4)).unwrap();
    let diff = (a.t().unwrap().t().unwrap() - &bt).unwrap(); // transpose twice; b on the right of a sub
    let narrowed = a.narrow(D::Minus1, 1, 2).unwrap().sqr().unwrap(); // a's columns 1..3 again
    let loss =
        (prod.sum_all().unwrap() + diff.sum_all().unwrap() + narrowed.sum_all().unwrap()).unwrap();
    let grads = loss.backward().unwrap();
    let ga: Vec<f32> = grads
        .get(a.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let gb: Vec<f32> = grads.get(b.as_tensor()).unwrap().to_vec1().unwrap();
    for r in 0..3 {
        for c in 0..4 {
            let x = a_data[r * 4 + c];
            // d/da [ (a+b)a ] = 2a + b; d/da [a − b] = 1; d/da [a²] on columns 1, 2 = 2a.
            let want = 2.0 * x + b_data[c] + 1.0 + if (1..3).contains(&c) { 2.0 * x } else { 0.0 };
            let got = ga[r * 4 + c];
            assert!(
                (got - want).abs() < 1e-5,
                "da[{r},{c}] = {got}, want {want}"
            );
        }
    }
    for c in 0..4 {
        // d/db [ (a+b)a ] = a summed over rows; d/db [a − b] = −1 per row.
        let want: f32 = (0..3).map(|r| a_data[r * 4 + c]).sum::<f32>() - 3.0;
        assert!(
            (gb[c] - want).abs() < 1e-5,
            "db[{c}] = {}, want {want}",
            gb[c]
        );
    }
}
