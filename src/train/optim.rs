//! AdamW, the learning-rate schedule, gradient clipping and the EMA of the weights.
//!
//! candle-nn has an `AdamW`, but its moment buffers are private: a resumed run must restore them exactly (a
//! resumed run ends bit-identical to an uninterrupted one), so the optimizer here keeps its state in named tensors
//! that the checkpoint saves. The update is PyTorch's `torch.optim.AdamW` (Loshchilov & Hutter 2019, Alg. 2):
//! ```text
//! θ ← θ − lr · wd · θ
//! m ← β1 m + (1 − β1) g            v ← β2 v + (1 − β2) g²
//! θ ← θ − lr · (m / (1 − β1^t)) / (sqrt(v / (1 − β2^t)) + ε)
//! ```

use std::collections::BTreeMap;

use candle_core::{backprop::GradStore, DType, Tensor, Var};

use crate::error::Result;
use crate::models::kernels::with_f32;

/// Named trainable variables, in name order (so every loop over them is deterministic).
pub type Params = BTreeMap<String, Var>;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWSettings {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// AdamW state: first and second moments per parameter, and the step count.
pub struct AdamW {
    pub settings: AdamWSettings,
    pub m: BTreeMap<String, Tensor>,
    pub v: BTreeMap<String, Tensor>,
    /// Updates done so far (t in the bias corrections).
    pub t: u64,
}

impl AdamW {
    pub fn new(params: &Params, settings: AdamWSettings) -> Result<Self> {
        let zeros = |p: &Var| p.as_tensor().zeros_like();
        Ok(Self {
            settings,
            m: params
                .iter()
                .map(|(k, p)| Ok((k.clone(), zeros(p)?)))
                .collect::<Result<_>>()?,
            v: params
                .iter()
                .map(|(k, p)| Ok((k.clone(), zeros(p)?)))
                .collect::<Result<_>>()?,
            t: 0,
        })
    }

    /// One update with learning rate `lr` and gradients already scaled by `grad_scale` (clipping).
    pub fn step(
        &mut self,
        params: &Params,
        grads: &GradStore,
        lr: f64,
        grad_scale: f64,
    ) -> Result<()> {
        let s = self.settings;
        self.t += 1;
        let bc1 = 1.0 - s.beta1.powi(self.t as i32);
        let bc2 = 1.0 - s.beta2.powi(self.t as i32);
        let coef = Coefficients {
            beta1: s.beta1 as f32,
            beta2: s.beta2 as f32,
            eps: s.eps as f32,
            decay: (1.0 - lr * s.weight_decay) as f32,
            inv_bc1: (1.0 / bc1) as f32,
            inv_bc2: (1.0 / bc2) as f32,
            lr: lr as f32,
            grad_scale: grad_scale as f32,
        };
        for (name, p) in params {
            let Some(g) = grads.get(p.as_tensor()) else {
                continue; // not in the graph this step (e.g. a frozen branch)
            };
            // Gradients computed from variables carry their own graph; detaching keeps the optimizer state from
            // holding on to every step's activations.
            let g = g.detach();
            let theta = p.as_tensor().detach();
            if let Some((theta, m, v)) = fused_step(&theta, &g, &self.m[name], &self.v[name], coef)?
            {
                p.set(&theta)?;
                self.m.insert(name.clone(), m);
                self.v.insert(name.clone(), v);
                continue;
            }
            let g = if grad_scale != 1.0 {
                (g * grad_scale)?
            } else {
                g
            };
            let m = ((&self.m[name] * s.beta1)? + (&g * (1.0 - s.beta1))?)?.detach();
            let v = ((&self.v[name] * s.beta2)? + (g.sqr()? * (1.0 - s.beta2))?)?.detach();
            let decayed = (&theta * (1.0 - lr * s.weight_decay))?;
            let update = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + s.eps)?)?;
            p.set(&(decayed - (update * lr)?)?)?;
            self.m.insert(name.clone(), m);
            self.v.insert(name.clone(), v);
        }
        Ok(())
    }
}

/// The constants of one AdamW update, in f32 as the tensor ops apply them.
#[derive(Clone, Copy)]
struct Coefficients {
    beta1: f32,
    beta2: f32,
    eps: f32,
    /// 1 − lr · wd.
    decay: f32,
    inv_bc1: f32,
    inv_bc2: f32,
    lr: f32,
    grad_scale: f32,
}

/// One parameter's update in a single pass over its elements, for contiguous f32 CPU tensors (`None` otherwise: the
/// tensor ops of [`AdamW::step`] then run). The same formula, without the dozen temporaries the tensor ops allocate:
/// the optimizer was ~6% of a 19.6 M-parameter training step before (docs/performance.md, session 21).
fn fused_step(
    theta: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    c: Coefficients,
) -> Result<Option<(Tensor, Tensor, Tensor)>> {
    let all = [theta, g, m, v];
    if !all
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous())
    {
        return Ok(None);
    }
    let n = theta.elem_count();
    if all.iter().any(|t| t.elem_count() != n) {
        return Ok(None);
    }
    let (new_theta, new_m, new_v) =
        with_f32([Some(theta), Some(g), Some(m), Some(v)], "AdamW", |d| {
            let [Some(th), Some(gr), Some(m0), Some(v0)] = d else {
                unreachable!("four operands given")
            };
            let mut th1 = vec![0f32; n];
            let mut m1 = vec![0f32; n];
            let mut v1 = vec![0f32; n];
            for i in 0..n {
                let g = if c.grad_scale != 1.0 {
                    gr[i] * c.grad_scale
                } else {
                    gr[i]
                };
                let m = m0[i] * c.beta1 + g * (1.0 - c.beta1);
                let v = v0[i] * c.beta2 + g * g * (1.0 - c.beta2);
                let update = (m * c.inv_bc1) / ((v * c.inv_bc2).sqrt() + c.eps);
                th1[i] = th[i] * c.decay - update * c.lr;
                m1[i] = m;
                v1[i] = v;
            }
            Ok((th1, m1, v1))
        })?;
    let make = |data: Vec<f32>| Tensor::from_vec(data, theta.shape().clone(), theta.device());
    Ok(Some((make(new_theta)?, make(new_m)?, make(new_v)?)))
}

/// Linear warmup from 0, then cosine decay from `lr` to `lr · min_ratio` at `total` steps.
/// `step` counts from 0 (the learning rate of the first update is `lr / warmup` when warming up).
pub fn learning_rate(step: usize, total: usize, lr: f64, warmup: usize, min_ratio: f64) -> f64 {
    if step < warmup {
        return lr * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1);
    let progress = ((step - warmup) as f64 / span as f64).min(1.0);
    let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
    lr * (min_ratio + (1.0 - min_ratio) * cosine)
}

/// The global L2 norm of the gradients and the factor that clips it to `max_norm` (torch `clip_grad_norm_`:
/// `min(1, max_norm / (norm + 1e-6))`; `max_norm` 0 disables clipping).
pub fn clip_factor(params: &Params, grads: &GradStore, max_norm: f64) -> Result<(f64, f64)> {
    let mut sq = 0f64;
    for p in params.values() {
        if let Some(g) = grads.get(p.as_tensor()) {
            sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
    }
    let norm = sq.sqrt();
    let factor = if max_norm > 0.0 && norm > max_norm {
        max_norm / (norm + 1e-6)
    } else {
        1.0
    };
    Ok((norm, factor))
}

/// Exponential moving average of the weights, with diffusers' `EMAModel` warmup:
/// `decay_t = min(decay, (1 + t) / (10 + t))`, `ema ← decay_t · ema + (1 − decay_t) · θ`.
pub struct Ema {
    pub decay: f64,
    pub weights: BTreeMap<String, Tensor>,
}

impl Ema {
    pub fn new(params: &Params, decay: f64) -> Result<Self> {
        Ok(Self {
            decay,
            weights: params
                .iter()
                .map(|(k, p)| Ok((k.clone(), p.as_tensor().copy()?)))
                .collect::<Result<_>>()?,
        })
    }

    /// Fold in the weights after optimizer step `t` (1-based).
    pub fn update(&mut self, params: &Params, t: u64) -> Result<()> {
        let d = self.decay.min((1.0 + t as f64) / (10.0 + t as f64));
        for (name, p) in params {
            let e = &self.weights[name];
            let next = ((e * d)? + (p.as_tensor().detach() * (1.0 - d))?)?.detach();
            self.weights.insert(name.clone(), next);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn warmup_then_cosine() {
        let lr = |s| learning_rate(s, 110, 1.0, 10, 0.1);
        assert!((lr(0) - 0.1).abs() < 1e-12);
        assert!((lr(9) - 1.0).abs() < 1e-12);
        assert!((lr(10) - 1.0).abs() < 1e-12);
        assert!((lr(60) - 0.55).abs() < 1e-12, "halfway: {}", lr(60));
        assert!((lr(110) - 0.1).abs() < 1e-12);
        assert!(lr(30) > lr(40));
    }

    /// torch.optim.AdamW's betas and eps with the given weight decay.
    fn torch_defaults(weight_decay: f64) -> AdamWSettings {
        AdamWSettings {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        }
    }

    #[test]
    fn adamw_matches_the_closed_form_first_step() {
        // First step: m̂ = g, v̂ = g², so θ₁ = θ₀(1 − lr·wd) − lr · g / (|g| + ε).
        let dev = Device::Cpu;
        let p = Var::from_tensor(&Tensor::new(&[1.0f32, -2.0, 3.0], &dev).unwrap()).unwrap();
        let loss = (p.as_tensor() * Tensor::new(&[0.5f32, -4.0, 0.0], &dev).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        let params: Params = [("w".to_string(), p.clone())].into();
        let mut opt = AdamW::new(&params, torch_defaults(0.1)).unwrap();
        opt.step(&params, &grads, 0.01, 1.0).unwrap();
        let got = p.as_tensor().to_vec1::<f32>().unwrap();
        let expect = [1.0 * 0.999 - 0.01, -2.0 * 0.999 + 0.01, 3.0 * 0.999];
        for (g, e) in got.iter().zip(expect) {
            assert!((g - e).abs() < 1e-6, "{got:?} vs {expect:?}");
        }
    }

    /// The fused CPU update against the formula in f64 over three steps with a gradient scale: within f32 rounding.
    #[test]
    fn fused_adamw_follows_the_formula_over_steps() {
        let dev = Device::Cpu;
        let theta0: Vec<f32> = (0..37)
            .map(|i| ((i * 7919) % 97) as f32 / 50.0 - 1.0)
            .collect();
        let coef: Vec<f32> = (0..37)
            .map(|i| ((i * 104729) % 89) as f32 / 30.0 - 1.5)
            .collect();
        let p = Var::from_tensor(&Tensor::new(theta0.as_slice(), &dev).unwrap()).unwrap();
        let params: Params = [("w".to_string(), p.clone())].into();
        let mut opt = AdamW::new(&params, torch_defaults(0.01)).unwrap();
        let (lr, scale) = (0.05, 0.5);
        let (mut th, mut m, mut v): (Vec<f64>, Vec<f64>, Vec<f64>) = (
            theta0.iter().map(|&x| x as f64).collect(),
            vec![0.0; 37],
            vec![0.0; 37],
        );
        for t in 1..=3 {
            // loss = Σ c·θ²: the gradient 2cθ changes with θ, so each step sees new gradients.
            let c = Tensor::new(coef.as_slice(), &dev).unwrap();
            let loss = (p.as_tensor().sqr().unwrap() * &c)
                .unwrap()
                .sum_all()
                .unwrap();
            let grads = loss.backward().unwrap();
            opt.step(&params, &grads, lr, scale).unwrap();
            let (bc1, bc2) = (1.0 - 0.9f64.powi(t), 1.0 - 0.999f64.powi(t));
            for i in 0..37 {
                let g = 2.0 * coef[i] as f64 * th[i] * scale;
                m[i] = 0.9 * m[i] + 0.1 * g;
                v[i] = 0.999 * v[i] + 0.001 * g * g;
                th[i] =
                    th[i] * (1.0 - lr * 0.01) - lr * (m[i] / bc1) / ((v[i] / bc2).sqrt() + 1e-8);
            }
        }
        let got = p.as_tensor().to_vec1::<f32>().unwrap();
        for (g, e) in got.iter().zip(&th) {
            assert!((*g as f64 - e).abs() < 1e-5, "{got:?} vs {th:?}");
        }
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let dev = Device::Cpu;
        let p = Var::from_tensor(&Tensor::new(&[0f32, 0.0], &dev).unwrap()).unwrap();
        let loss = (p.as_tensor() * Tensor::new(&[3f32, 4.0], &dev).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        let params: Params = [("w".to_string(), p)].into();
        let (norm, f) = clip_factor(&params, &grads, 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-6);
        assert!((f - 1.0 / (5.0 + 1e-6)).abs() < 1e-9);
        assert_eq!(clip_factor(&params, &grads, 10.0).unwrap().1, 1.0);
    }
}
