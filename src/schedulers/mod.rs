//! Noise schedulers, ported from diffusers 0.42.1 (`src/diffusers/schedulers/`), one algorithm per file:
//! [`ddpm`] (ancestral), [`ddim`] (eta), [`dpmpp_2m`] (DPM-Solver++ 2M). They read a diffusers
//! `scheduler_config.json` and reproduce diffusers' trajectories (fixtures/schedulers).
//!
//! Notation (DDPM, Ho et al. 2020): `x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`, `abar_t = prod_{s<=t} (1 - beta_s)`,
//! `v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0` (Salimans & Ho 2022). Scalars are computed in f32 like PyTorch's 0-d
//! tensors; the beta tables follow diffusers exactly (squaredcos_cap_v2 in f64, then f32 — not candle's
//! integer-division `betas_for_alpha_bar`).

pub mod ddim;
pub mod ddpm;
pub mod dpmpp_2m;

use std::path::Path;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoResultExt, Location, Result};

/// What a model's output means (diffusers `prediction_type`): what a scheduler steps, and what a denoiser
/// (`models::Denoiser`) predicts. It lives here, below `models`, so both import it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Parameterization {
    /// The added noise, epsilon.
    Epsilon,
    /// v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022).
    VPrediction,
    /// The clean sample x0.
    Sample,
}

/// diffusers' name for [`Parameterization`], as the scheduler configs spell it.
pub use Parameterization as PredictionType;

/// `beta_schedule` of a diffusers scheduler config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    Linear,
    ScaledLinear,
    SquaredcosCapV2,
}

/// `timestep_spacing` (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", table 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    Leading,
    Linspace,
    Trailing,
}

/// Which algorithm a config selects (`_class_name`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchedulerKind {
    Ddpm,
    Ddim,
    DpmSolverMultistep,
}

fn d_num_train() -> usize {
    1000
}
fn d_beta_start() -> f64 {
    0.0001
}
fn d_beta_end() -> f64 {
    0.02
}
fn d_beta_schedule() -> BetaSchedule {
    BetaSchedule::Linear
}
fn d_prediction() -> PredictionType {
    PredictionType::Epsilon
}
fn d_true() -> bool {
    true
}
fn d_one() -> f64 {
    1.0
}
fn d_spacing() -> TimestepSpacing {
    TimestepSpacing::Leading
}
fn d_order() -> usize {
    2
}

/// A diffusers scheduler config (`scheduler_config.json`). Defaults are diffusers' defaults; fields diffusers writes
/// that do not change these algorithms are ignored, while values we do not implement are rejected by
/// [`SchedulerConfig::validate`].
#[derive(Debug, Clone, Deserialize)]
pub struct SchedulerConfig {
    #[serde(rename = "_class_name", default)]
    pub class_name: Option<String>,
    #[serde(default = "d_num_train")]
    pub num_train_timesteps: usize,
    #[serde(default = "d_beta_start")]
    pub beta_start: f64,
    #[serde(default = "d_beta_end")]
    pub beta_end: f64,
    #[serde(default = "d_beta_schedule")]
    pub beta_schedule: BetaSchedule,
    #[serde(default)]
    pub trained_betas: Option<Vec<f64>>,
    #[serde(default = "d_prediction")]
    pub prediction_type: PredictionType,
    /// DDPM/DDIM: clamp the x0 prediction to `[-clip_sample_range, clip_sample_range]`.
    #[serde(default)]
    pub clip_sample: Option<bool>,
    #[serde(default = "d_one")]
    pub clip_sample_range: f64,
    /// DDIM: at the last step use abar_prev = 1 (else abar_0).
    #[serde(default = "d_true")]
    pub set_alpha_to_one: bool,
    #[serde(default)]
    pub steps_offset: usize,
    #[serde(default = "d_spacing")]
    pub timestep_spacing: TimestepSpacing,
    #[serde(default)]
    pub variance_type: Option<String>,
    #[serde(default)]
    pub thresholding: bool,
    #[serde(default)]
    pub rescale_betas_zero_snr: bool,
    // DPM-Solver++ fields.
    #[serde(default = "d_order")]
    pub solver_order: usize,
    #[serde(default)]
    pub algorithm_type: Option<String>,
    #[serde(default)]
    pub solver_type: Option<String>,
    #[serde(default = "d_true")]
    pub lower_order_final: bool,
    #[serde(default)]
    pub euler_at_final: bool,
    #[serde(default)]
    pub final_sigmas_type: Option<String>,
    #[serde(default)]
    pub use_karras_sigmas: bool,
    #[serde(default)]
    pub use_exponential_sigmas: bool,
    #[serde(default)]
    pub use_beta_sigmas: bool,
    #[serde(default)]
    pub use_lu_lambdas: bool,
    #[serde(default)]
    pub use_flow_sigmas: bool,
    #[serde(default)]
    pub use_dynamic_shifting: bool,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        serde_json::from_str("{}").unwrap_or_else(|_| unreachable!("all fields have defaults"))
    }
}

impl SchedulerConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).at(path)?;
        Self::from_json(&text, path)
    }

    /// Parse diffusers JSON (which may contain `-Infinity`, not valid JSON: replaced first).
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let text = text
            .replace("-Infinity", "null")
            .replace("Infinity", "null")
            .replace("NaN", "null");
        let cfg: Self = serde_json::from_str(&text).map_err(|e| {
            Error::config(Location::file(path), format!("not a scheduler config: {e}"))
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Which algorithm `_class_name` names (DDIM when absent).
    pub fn kind(&self) -> Result<SchedulerKind> {
        match self.class_name.as_deref() {
            Some("DDPMScheduler") => Ok(SchedulerKind::Ddpm),
            Some("DDIMScheduler") | None => Ok(SchedulerKind::Ddim),
            Some("DPMSolverMultistepScheduler") => Ok(SchedulerKind::DpmSolverMultistep),
            Some(other) => Err(Error::unsupported(
                Location::none().field("_class_name"),
                format!("scheduler {other:?} (supported: DDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler)"),
            )),
        }
    }

    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |field: &str, msg: String| {
            Err(Error::unsupported(Location::file(path).field(field), msg))
        };
        self.kind().map_err(|e| match e {
            Error::Unsupported { message, .. } => {
                Error::unsupported(Location::file(path).field("_class_name"), message)
            }
            other => other,
        })?;
        if self.trained_betas.is_some() {
            return bad("trained_betas", "explicit beta tables".into());
        }
        if self.thresholding {
            return bad("thresholding", "dynamic thresholding".into());
        }
        if self.rescale_betas_zero_snr {
            return bad(
                "rescale_betas_zero_snr",
                "zero-terminal-SNR rescaling".into(),
            );
        }
        if self.num_train_timesteps < 2 {
            return bad(
                "num_train_timesteps",
                format!("{} (need >= 2)", self.num_train_timesteps),
            );
        }
        if let Some(v) = &self.variance_type {
            if self.kind()? == SchedulerKind::Ddpm && v != "fixed_small" {
                return bad("variance_type", format!("{v:?} (supported: fixed_small)"));
            }
        }
        if self.kind()? == SchedulerKind::DpmSolverMultistep {
            if let Some(a) = &self.algorithm_type {
                if a != "dpmsolver++" {
                    return bad("algorithm_type", format!("{a:?} (supported: dpmsolver++)"));
                }
            }
            if let Some(s) = &self.solver_type {
                if s != "midpoint" {
                    return bad("solver_type", format!("{s:?} (supported: midpoint)"));
                }
            }
            if !(1..=2).contains(&self.solver_order) {
                return bad(
                    "solver_order",
                    format!("{} (supported: 1, 2)", self.solver_order),
                );
            }
            if let Some(f) = &self.final_sigmas_type {
                if f != "zero" && f != "sigma_min" {
                    return bad("final_sigmas_type", format!("{f:?}"));
                }
            }
            for (field, on) in [
                ("use_karras_sigmas", self.use_karras_sigmas),
                ("use_exponential_sigmas", self.use_exponential_sigmas),
                ("use_beta_sigmas", self.use_beta_sigmas),
                ("use_lu_lambdas", self.use_lu_lambdas),
                ("use_flow_sigmas", self.use_flow_sigmas),
                ("use_dynamic_shifting", self.use_dynamic_shifting),
            ] {
                if on {
                    return bad(field, "true".into());
                }
            }
        }
        Ok(())
    }

    /// Build the scheduler this config names.
    pub fn build(&self) -> Result<Box<dyn Scheduler>> {
        Ok(match self.kind()? {
            SchedulerKind::Ddpm => Box::new(ddpm::DdpmScheduler::new(self.clone())),
            SchedulerKind::Ddim => Box::new(ddim::DdimScheduler::new(self.clone(), 0.0)),
            SchedulerKind::DpmSolverMultistep => {
                Box::new(dpmpp_2m::DpmSolverMultistepScheduler::new(self.clone()))
            }
        })
    }

    fn clip(&self) -> Option<f32> {
        self.clip_sample
            .unwrap_or(self.kind().ok() != Some(SchedulerKind::DpmSolverMultistep))
            .then_some(self.clip_sample_range as f32)
    }
}

/// The train-time noise schedule: betas and abar (`alphas_cumprod`) per integer timestep, in f32 like diffusers.
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseSchedule {
    pub betas: Vec<f32>,
    pub alphas_cumprod: Vec<f32>,
}

impl NoiseSchedule {
    pub fn new(
        schedule: BetaSchedule,
        num_train_timesteps: usize,
        beta_start: f64,
        beta_end: f64,
    ) -> Self {
        let n = num_train_timesteps;
        let linspace = |a: f64, b: f64| -> Vec<f64> {
            (0..n)
                .map(|i| {
                    if n == 1 {
                        a
                    } else {
                        a + (b - a) * i as f64 / (n - 1) as f64
                    }
                })
                .collect()
        };
        let betas: Vec<f32> = match schedule {
            // torch.linspace(beta_start, beta_end, n, dtype=float32)
            BetaSchedule::Linear => linspace(beta_start, beta_end)
                .into_iter()
                .map(|b| b as f32)
                .collect(),
            // torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=float32) ** 2
            BetaSchedule::ScaledLinear => linspace(beta_start.sqrt(), beta_end.sqrt())
                .into_iter()
                .map(|b| {
                    let b = b as f32;
                    b * b
                })
                .collect(),
            // betas_for_alpha_bar (Nichol & Dhariwal 2021, eq. 17), f64 then f32, capped at 0.999.
            BetaSchedule::SquaredcosCapV2 => {
                let abar = |s: f64| {
                    ((s + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
                        .cos()
                        .powi(2)
                };
                (0..n)
                    .map(|i| {
                        let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
                        (1.0 - abar(t2) / abar(t1)).min(0.999) as f32
                    })
                    .collect()
            }
        };
        // torch.cumprod(1 - betas) on CPU: the alphas are f32, the running product is accumulated in f64
        // (PyTorch's CPU accumulate type for float) and each prefix rounded to f32.
        let mut alphas_cumprod = Vec::with_capacity(n);
        let mut acc = 1.0f64;
        for b in &betas {
            acc *= (1.0f32 - b) as f64;
            alphas_cumprod.push(acc as f32);
        }
        Self {
            betas,
            alphas_cumprod,
        }
    }

    pub fn from_config(cfg: &SchedulerConfig) -> Self {
        Self::new(
            cfg.beta_schedule,
            cfg.num_train_timesteps,
            cfg.beta_start,
            cfg.beta_end,
        )
    }

    pub fn num_train_timesteps(&self) -> usize {
        self.alphas_cumprod.len()
    }

    /// abar at an integer timestep.
    pub fn alpha_bar(&self, t: usize) -> f32 {
        self.alphas_cumprod[t.min(self.alphas_cumprod.len() - 1)]
    }

    /// log-SNR `ln(abar / (1 - abar))` at an integer timestep.
    pub fn log_snr(&self, t: usize) -> f64 {
        let a = self.alpha_bar(t) as f64;
        (a / (1.0 - a)).ln()
    }

    /// The (fractional) timestep of this schedule whose log-SNR equals `log_snr`, by linear interpolation of the
    /// monotone log-SNR table; clamped to [0, T-1]. Used to evaluate a model trained with another schedule at the
    /// same noise level (same x_t).
    pub fn timestep_for_log_snr(&self, log_snr: f64) -> f64 {
        let n = self.alphas_cumprod.len();
        if log_snr >= self.log_snr(0) {
            return 0.0;
        }
        if log_snr <= self.log_snr(n - 1) {
            return (n - 1) as f64;
        }
        // log-SNR decreases with t: find t with lsnr(t) >= target > lsnr(t+1).
        let (mut lo, mut hi) = (0usize, n - 1);
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            if self.log_snr(mid) >= log_snr {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let (a, b) = (self.log_snr(lo), self.log_snr(hi));
        lo as f64 + (a - log_snr) / (a - b)
    }

    /// `sqrt(abar_t) x0 + sqrt(1 - abar_t) noise`, one timestep per batch element (diffusers `add_noise`).
    pub fn add_noise(&self, x0: &Tensor, noise: &Tensor, timesteps: &[usize]) -> Result<Tensor> {
        self.per_batch(x0, noise, timesteps, |a| (a.sqrt(), (1.0 - a).sqrt()))
    }

    /// `sqrt(abar_t) noise - sqrt(1 - abar_t) x0` (diffusers `get_velocity`).
    pub fn get_velocity(&self, x0: &Tensor, noise: &Tensor, timesteps: &[usize]) -> Result<Tensor> {
        self.per_batch(noise, x0, timesteps, |a| (a.sqrt(), -(1.0 - a).sqrt()))
    }

    /// `c1(abar_t) * a + c2(abar_t) * b` with per-batch-element coefficients.
    fn per_batch(
        &self,
        a: &Tensor,
        b: &Tensor,
        timesteps: &[usize],
        coef: impl Fn(f32) -> (f32, f32),
    ) -> Result<Tensor> {
        let batch = a.dim(0)?;
        if timesteps.len() != batch {
            return Err(Error::invalid(
                Location::none().field("timesteps"),
                format!("{} timesteps for a batch of {batch}", timesteps.len()),
            ));
        }
        let (c1, c2): (Vec<f32>, Vec<f32>) =
            timesteps.iter().map(|&t| coef(self.alpha_bar(t))).unzip();
        let mut shape = vec![batch];
        shape.extend(std::iter::repeat_n(1, a.rank() - 1));
        let c1 = Tensor::from_vec(c1, shape.clone(), a.device())?;
        let c2 = Tensor::from_vec(c2, shape, a.device())?;
        Ok((a.broadcast_mul(&c1)? + b.broadcast_mul(&c2)?)?)
    }
}

/// Convert a model output of parameterization `from` at noisy sample `x_t` (noise level abar) to epsilon.
/// epsilon: identity; v: `eps = sqrt(a) v + sqrt(1-a) x_t`; sample (x0): `eps = (x_t - sqrt(a) x0) / sqrt(1-a)`.
pub fn to_epsilon(
    output: &Tensor,
    from: PredictionType,
    x_t: &Tensor,
    alpha_bar: f32,
) -> Result<Tensor> {
    let (sa, sb) = (alpha_bar.sqrt() as f64, (1.0 - alpha_bar).sqrt() as f64);
    Ok(match from {
        PredictionType::Epsilon => output.clone(),
        PredictionType::VPrediction => ((output * sa)? + (x_t * sb)?)?,
        PredictionType::Sample => ((x_t - (output * sa)?)? / sb)?,
    })
}

/// Convert a model output to the x0 prediction: epsilon: `(x_t - sqrt(1-a) eps) / sqrt(a)`;
/// v: `sqrt(a) x_t - sqrt(1-a) v`; sample: identity.
pub fn to_sample(
    output: &Tensor,
    from: PredictionType,
    x_t: &Tensor,
    alpha_bar: f32,
) -> Result<Tensor> {
    let (sa, sb) = (alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt());
    Ok(match from {
        PredictionType::Epsilon => ((x_t - (output * sb as f64)?)? / sa as f64)?,
        PredictionType::VPrediction => ((x_t * sa as f64)? - (output * sb as f64)?)?,
        PredictionType::Sample => output.clone(),
    })
}

/// Convert a model output to v: `v = sqrt(a) eps - sqrt(1-a) x0`.
pub fn to_velocity(
    output: &Tensor,
    from: PredictionType,
    x_t: &Tensor,
    alpha_bar: f32,
) -> Result<Tensor> {
    let eps = to_epsilon(output, from, x_t, alpha_bar)?;
    let x0 = to_sample(output, from, x_t, alpha_bar)?;
    Ok(((eps * alpha_bar.sqrt() as f64)? - (x0 * (1.0 - alpha_bar).sqrt() as f64)?)?)
}

/// The result of one scheduler step.
#[derive(Debug, Clone)]
pub struct StepOutput {
    /// x_{t-1}
    pub prev_sample: Tensor,
    /// The x0 prediction used by the step (after clipping).
    pub pred_original_sample: Tensor,
}

/// One sampling algorithm. `step` takes `&mut self` because multistep solvers carry history.
pub trait Scheduler: Send {
    /// Choose `n` inference timesteps (resets any history).
    fn set_timesteps(&mut self, n: usize) -> Result<()>;
    /// The inference timesteps, in the order they are visited (descending).
    fn timesteps(&self) -> &[usize];
    /// One denoising step from `sample` at `t` given the model output. `noise` is the ancestral noise where the
    /// algorithm draws any (DDPM at t > 0, DDIM with eta > 0); see [`Scheduler::needs_noise`].
    fn step(
        &mut self,
        model_output: &Tensor,
        t: usize,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<StepOutput>;
    /// Whether `step` at `t` uses noise.
    fn needs_noise(&self, t: usize) -> bool;
    /// The train-time schedule.
    fn schedule(&self) -> &NoiseSchedule;
    /// What the model predicts.
    fn prediction_type(&self) -> PredictionType;
    /// Scale of the initial noise (1 for these variance-preserving schedulers).
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }
    /// Model input scaling (identity for these schedulers).
    fn scale_model_input(&self, sample: &Tensor, _t: usize) -> Result<Tensor> {
        Ok(sample.clone())
    }
}

/// Inference timesteps for `leading` / `linspace` / `trailing` spacing (diffusers `set_timesteps`), descending.
pub fn spaced_timesteps(
    spacing: TimestepSpacing,
    num_train: usize,
    n: usize,
    steps_offset: usize,
) -> Result<Vec<usize>> {
    if n == 0 || n > num_train {
        return Err(Error::config(
            Location::none().field("steps"),
            format!("{n} inference steps for {num_train} train timesteps (need 1..={num_train})"),
        ));
    }
    Ok(match spacing {
        // (arange(0, n) * (T // n)).round()[::-1] + steps_offset
        TimestepSpacing::Leading => {
            let ratio = num_train / n;
            (0..n).rev().map(|i| i * ratio + steps_offset).collect()
        }
        // linspace(0, T - 1, n).round()[::-1]
        TimestepSpacing::Linspace => (0..n)
            .rev()
            .map(|i| {
                round_half_even(if n == 1 {
                    0.0
                } else {
                    (num_train - 1) as f64 * i as f64 / (n - 1) as f64
                }) as usize
            })
            .collect(),
        // round(arange(T, 0, -T / n)) - 1
        TimestepSpacing::Trailing => {
            let ratio = num_train as f64 / n as f64;
            (0..n)
                .map(|i| round_half_even(num_train as f64 - i as f64 * ratio) as usize - 1)
                .collect()
        }
    })
}

/// numpy's `round` (half to even).
pub(crate) fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - x.signum()
    } else {
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spacings_match_diffusers() {
        assert_eq!(
            spaced_timesteps(TimestepSpacing::Leading, 1000, 10, 0).unwrap(),
            vec![900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
        );
        assert_eq!(
            spaced_timesteps(TimestepSpacing::Leading, 1000, 10, 1).unwrap()[0],
            901
        );
        assert_eq!(
            spaced_timesteps(TimestepSpacing::Trailing, 1000, 4, 0).unwrap(),
            vec![999, 749, 499, 249]
        );
        assert_eq!(
            spaced_timesteps(TimestepSpacing::Linspace, 1000, 3, 0).unwrap(),
            vec![999, 500, 0]
        );
        assert!(spaced_timesteps(TimestepSpacing::Leading, 1000, 0, 0).is_err());
        assert_eq!(round_half_even(2.5), 2.0);
        assert_eq!(round_half_even(3.5), 4.0);
    }

    #[test]
    fn log_snr_inverse_round_trips() {
        let s = NoiseSchedule::new(BetaSchedule::SquaredcosCapV2, 1000, 0.0, 0.0);
        let lin = NoiseSchedule::new(BetaSchedule::Linear, 1000, 0.00085, 0.012);
        for t in [0usize, 1, 10, 250, 500, 998] {
            let back = s.timestep_for_log_snr(s.log_snr(t));
            assert!((back - t as f64).abs() < 1e-6, "{t} -> {back}");
            // The matched timestep of another schedule has the same noise level; noise levels outside that
            // schedule's range clamp to its ends (the cosine schedule reaches lower SNR at t = 998 than the
            // linear one ever does, and higher at t = 0).
            let target = s.log_snr(t);
            let u = lin.timestep_for_log_snr(target);
            if target > lin.log_snr(0) {
                assert_eq!(u, 0.0, "t = {t}");
            } else if target < lin.log_snr(999) {
                assert_eq!(u, 999.0, "t = {t}");
            } else {
                let (lo, hi) = (u.floor() as usize, u.ceil() as usize);
                assert!(
                    lin.log_snr(lo) >= target - 1e-9 && lin.log_snr(hi) <= target + 1e-9,
                    "t = {t} -> {u}"
                );
            }
        }
    }
}
