//! The composed step: one noise prediction from a small model and its priors (Video Adapter).
//!
//! Yang et al. 2023, *Probabilistic Adaptation of Text-to-Video Models* (arXiv 2306.01872), Alg. 1 with
//! classifier-free guidance around the small model, as in the authors' code and fixtures/compose:
//! ```text
//! composed:  ε_text = ε_s(x_t, t | c, e) + Σ_i λ_i · ε_p_i(x_t, t | c_i, e)
//!            ε      = ε_s(x_t, t | ∅, e) + w · (ε_text − ε_s(x_t, t | ∅, e))        (no division by 1 + λ)
//! inverse:   the prior leads and the small model steers:
//!            ε      = ε_p(x_t, t | ∅) + w · ((ε_p(x_t, t | c) + λ · ε_s(x_t, t | c, e)) − ε_p(x_t, t | ∅))
//! cfg_mix:   ε      = (1 − Σλ_i) · cfg(ε_s) + Σ_i λ_i · cfg(ε_p_i),  cfg(ε_m) = ε_m(∅) + w · (ε_m(c) − ε_m(∅))
//! ```
//! and `ε = cfg(ε_s)` alone when `t < compose_min_t` (the paper composes for all but the last 100 of 1000 steps).
//!
//! Each model sees its own conditioning channels (edges, first frame) concatenated after the noisy video, its own
//! text and unconditional embeddings. The small model's cond and uncond passes go through one batched forward; a
//! prior is called only inside the composition window. Models trained with other noise schedules or
//! parameterizations are evaluated at the timestep of their own schedule with the same log-SNR (so x_t is the same
//! sample) and their outputs converted to ε before they are summed; the small model's scheduler drives sampling
//! ([`super::window`]).

use candle_core::Tensor;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Location, Result};
use crate::models::Denoiser;
use crate::schedulers::{to_epsilon, NoiseSchedule, Parameterization};

/// Which composition rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// Video Adapter: small model + λ · prior inside the small model's guidance (the paper's rule).
    #[default]
    Composed,
    /// Inverse adaptation: the prior leads (guidance around the prior), the small model steers.
    Inverse,
    /// The paper's weaker baseline, for ablations: (1 − λ) · cfg(small) + λ · cfg(prior).
    CfgMix,
}

/// One model with its conditioning for a sampling run.
pub struct Conditioned<'a> {
    pub model: &'a dyn Denoiser,
    /// Extra channels concatenated after the noisy video, (batch, k, frames, h, w); `None` when the model takes none.
    pub channels: Option<Tensor>,
    /// Text embedding (batch, tokens, dim).
    pub text: Tensor,
    /// Unconditional embedding for guidance (batch, tokens, dim).
    pub uncond: Tensor,
    /// The model's own train schedule, when it differs from the sampler's; evaluated at the matching log-SNR.
    /// Noise levels outside that schedule's range (e.g. a cosine sampler's ᾱ_999 ≈ 0 for a linear-schedule prior)
    /// clamp to its nearest end, t = 0 or T − 1: the model has never seen anything beyond.
    pub schedule: Option<NoiseSchedule>,
}

/// A prior with its strength λ.
pub struct Prior<'a> {
    pub input: Conditioned<'a>,
    /// λ, or a schedule over the train timestep via [`Prior::strength_at`].
    pub strength: Strength,
}

/// Prior strength: constant, or linear in t between two values (λ(t) = start + (end − start) · t / (T − 1)).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Strength {
    Constant(f32),
    Linear {
        at_t0: f32,
        at_t_max: f32,
        num_train_timesteps: usize,
    },
}

impl Strength {
    pub fn at(&self, t: usize) -> f32 {
        match *self {
            Strength::Constant(l) => l,
            Strength::Linear {
                at_t0,
                at_t_max,
                num_train_timesteps,
            } => {
                let u = t as f32 / (num_train_timesteps.max(2) - 1) as f32;
                at_t0 + (at_t_max - at_t0) * u
            }
        }
    }
}

/// Settings of one composed sampling run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ComposeSettings {
    pub rule: Rule,
    /// Classifier-free guidance weight w.
    pub guidance: f32,
    /// The prior is used only for t >= this (strict `t < compose_min_t` is small-model-only).
    pub compose_min_t: usize,
}

impl Default for ComposeSettings {
    fn default() -> Self {
        Self {
            rule: Rule::Composed,
            guidance: 1.0,
            compose_min_t: 100,
        }
    }
}

/// Evaluate one model, cond and (optionally) uncond in ONE batched forward, returning ε predictions
/// `(uncond, cond)` at the sampler's noise level `alpha_bar`.
fn eval_eps(
    m: &Conditioned,
    x: &Tensor,
    t: usize,
    sampler_schedule: &NoiseSchedule,
    with_uncond: bool,
) -> Result<(Option<Tensor>, Tensor)> {
    let b = x.dim(0)?;
    let inp = match &m.channels {
        Some(c) => Tensor::cat(&[x, c], 1)?,
        None => x.clone(),
    };
    // The model's own timestep at this noise level (fractional when its schedule differs).
    let model_t = match &m.schedule {
        Some(s) if s != sampler_schedule => {
            s.timestep_for_log_snr(sampler_schedule.log_snr(t)) as f32
        }
        _ => t as f32,
    };
    let (inp, ctx) = if with_uncond {
        (
            Tensor::cat(&[&inp, &inp], 0)?,
            Tensor::cat(&[&m.uncond, &m.text], 0)?,
        )
    } else {
        (inp, m.text.clone())
    };
    let n = inp.dim(0)?;
    let ts = Tensor::full(model_t, n, x.device())?;
    let out = m.model.forward(&inp, &ts, &ctx)?;
    let alpha_bar = sampler_schedule.alpha_bar(t);
    let xx = if with_uncond {
        Tensor::cat(&[x, x], 0)?
    } else {
        x.clone()
    };
    let eps = match m.model.parameterization() {
        Parameterization::Epsilon => out,
        p => to_epsilon(&out, p, &xx, alpha_bar)?,
    };
    if with_uncond {
        Ok((Some(eps.narrow(0, 0, b)?), eps.narrow(0, b, b)?))
    } else {
        Ok((None, eps))
    }
}

/// cfg(ε) = ε(∅) + w · (ε(c) − ε(∅))
fn cfg(uncond: &Tensor, cond: &Tensor, w: f32) -> Result<Tensor> {
    Ok((uncond + ((cond - uncond)? * w as f64)?)?)
}

/// Refuse models whose input or output channels do not fit the video `x` and their conditioning channels.
pub(crate) fn check_inputs(small: &Conditioned, priors: &[Prior], x: &Tensor) -> Result<()> {
    let video_channels = x.dim(1)?;
    let all = std::iter::once(("small", small)).chain(priors.iter().map(|p| ("prior", &p.input)));
    for (role, m) in all {
        let extra = m
            .channels
            .as_ref()
            .map(|c| c.dim(1))
            .transpose()?
            .unwrap_or(0);
        if video_channels + extra != m.model.in_channels() {
            return Err(Error::invalid(
                Location::none().field(format!("{role}.channels")),
                format!(
                    "the {role} model takes {} input channels but gets {video_channels} video + {extra} conditioning channels",
                    m.model.in_channels()
                ),
            ));
        }
        if m.model.out_channels() != video_channels {
            return Err(Error::invalid(
                Location::none().field(format!("{role}.out_channels")),
                format!(
                    "the {role} model predicts {} channels for a {video_channels}-channel video",
                    m.model.out_channels()
                ),
            ));
        }
    }
    Ok(())
}

/// The composed noise prediction at one step (see the module docs for the equations).
pub fn composed_eps(
    small: &Conditioned,
    priors: &[Prior],
    x: &Tensor,
    t: usize,
    settings: &ComposeSettings,
    schedule: &NoiseSchedule,
    prior_calls: &mut usize,
) -> Result<Tensor> {
    let w = settings.guidance;
    // cfg(ε) = ε(∅) + w · (ε(c) − ε(∅)) is ε(c) when w = 1: the unconditional passes are skipped then (half the
    // small model's work at the demo's w = 1). `cfg` below receives ε(c) for ε(∅) and returns ε(c).
    let uncond = w != 1.0;
    let in_window = t >= settings.compose_min_t && !priors.is_empty();
    if !in_window {
        let (eu, ec) = eval_eps(small, x, t, schedule, uncond)?;
        return cfg(&eu.unwrap_or_else(|| ec.clone()), &ec, w);
    }
    match settings.rule {
        Rule::Composed => {
            // The small model and the priors are independent forwards: run them side by side on the thread pool.
            // Each forward alone leaves cores idle at every op's end (short ops, a join per op); two interleave
            // and fill those gaps. The result is the same: every forward is deterministic on any thread.
            let (small_eps, prior_eps) = rayon::join(
                || eval_eps(small, x, t, schedule, uncond),
                || {
                    priors
                        .par_iter()
                        .map(|p| eval_eps(&p.input, x, t, schedule, false).map(|(_, e)| e))
                        .collect::<Result<Vec<_>>>()
                },
            );
            let (eu, ec) = small_eps?;
            let eu = eu.unwrap_or_else(|| ec.clone());
            let mut text = ec;
            for (p, ep) in priors.iter().zip(prior_eps?) {
                *prior_calls += 1;
                text = (text + (ep * p.strength.at(t) as f64)?)?;
            }
            cfg(&eu, &text, w)
        }
        Rule::CfgMix => {
            let (eu, ec) = eval_eps(small, x, t, schedule, uncond)?;
            let total: f32 = priors.iter().map(|p| p.strength.at(t)).sum();
            let mut eps = (cfg(&eu.unwrap_or_else(|| ec.clone()), &ec, w)? * (1.0 - total) as f64)?;
            for p in priors {
                let (pu, pc) = eval_eps(&p.input, x, t, schedule, uncond)?;
                *prior_calls += 1;
                eps = (eps
                    + (cfg(&pu.unwrap_or_else(|| pc.clone()), &pc, w)?
                        * p.strength.at(t) as f64)?)?;
            }
            Ok(eps)
        }
        Rule::Inverse => {
            let [lead] = priors else {
                return Err(Error::config(
                    Location::none().field("rule"),
                    format!(
                        "the inverse rule composes exactly one prior, got {}",
                        priors.len()
                    ),
                ));
            };
            let (pu, pc) = eval_eps(&lead.input, x, t, schedule, uncond)?;
            *prior_calls += 1;
            let (_, es) = eval_eps(small, x, t, schedule, false)?;
            let text = (pc + (es * lead.strength.at(t) as f64)?)?;
            cfg(&pu.unwrap_or_else(|| text.clone()), &text, w)
        }
    }
}

/// Convert an ε prediction to another parameterization at x_t: what the scheduler steps when the small model is not
/// an ε model.
pub(crate) fn from_epsilon(
    eps: &Tensor,
    to: Parameterization,
    x_t: &Tensor,
    alpha_bar: f32,
) -> Result<Tensor> {
    let (sa, sb) = (alpha_bar.sqrt() as f64, (1.0 - alpha_bar).sqrt() as f64);
    let x0 = ((x_t - (eps * sb)?)? / sa)?;
    Ok(match to {
        Parameterization::Epsilon => eps.clone(),
        Parameterization::Sample => x0,
        Parameterization::VPrediction => ((eps * sa)? - (x0 * sb)?)?,
    })
}
