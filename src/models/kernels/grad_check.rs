//! The check every kernel with its own backward passes: the same function as the candle ops it replaces, forward
//! and backward, through a loss whose output gradient differs per element.

use candle_core::{Tensor, Var};

use crate::models::max_abs_diff;

/// `ours` and `reference` are the same function of `vars`: the outputs agree within `forward_tol`, and the
/// gradient of `Σ y · probe` (probe random) with respect to each var agrees within `grad_rel` of the reference
/// gradient's largest magnitude (at least 1). `what` names the case in failures.
pub(super) fn assert_same_function(
    reference: &Tensor,
    ours: &Tensor,
    vars: &[(&str, &Var)],
    (forward_tol, grad_rel): (f32, f32),
    what: &str,
) {
    assert_eq!(ours.dims(), reference.dims(), "output shape {what}");
    let forward = max_abs_diff(ours, reference);
    assert!(forward < forward_tol, "forward {what}: {forward}");
    let probe = Tensor::randn(0f32, 1.0, reference.dims(), reference.device()).unwrap();
    let loss = |y: &Tensor| (y * &probe).unwrap().sum_all().unwrap();
    let (g_ref, g_ours) = (
        loss(reference).backward().unwrap(),
        loss(ours).backward().unwrap(),
    );
    for &(name, v) in vars {
        let a = g_ref
            .get(v)
            .unwrap_or_else(|| panic!("no reference {name} grad {what}"));
        let b = g_ours
            .get(v)
            .unwrap_or_else(|| panic!("no {name} grad {what}"));
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
            diff < grad_rel * scale.max(1.0),
            "{name} grad {what}: {diff} (largest reference value {scale})"
        );
    }
}
