//! DDPM ancestral sampling (Ho et al. 2020), port of diffusers 0.42.1
//! `schedulers/scheduling_ddpm.py::DDPMScheduler.step` with `variance_type = "fixed_small"`.
//!
//! Eq. (7): `mu_t = sqrt(abar_prev) beta_t / (1 - abar_t) x0 + sqrt(alpha_t) (1 - abar_prev) / (1 - abar_t) x_t`,
//! `var_t = (1 - abar_prev) / (1 - abar_t) beta_t` (clamped at 1e-20), `x_{t-1} = mu_t + sqrt(var_t) z` for t > 0,
//! where `alpha_t = abar_t / abar_prev` is the per-step alpha between the two inference timesteps.

use candle_core::Tensor;

use super::{
    spaced_timesteps, to_sample, NoiseSchedule, PredictionType, Scheduler, SchedulerConfig,
    StepOutput,
};
use crate::error::{Error, Location, Result};

pub struct DdpmScheduler {
    config: SchedulerConfig,
    schedule: NoiseSchedule,
    timesteps: Vec<usize>,
    num_inference_steps: usize,
}

impl DdpmScheduler {
    pub fn new(config: SchedulerConfig) -> Self {
        let schedule = NoiseSchedule::from_config(&config);
        Self {
            config,
            schedule,
            timesteps: Vec::new(),
            num_inference_steps: 0,
        }
    }

    fn prev_timestep(&self, t: usize) -> isize {
        t as isize - (self.config.num_train_timesteps / self.num_inference_steps.max(1)) as isize
    }

    fn alphas(&self, t: usize) -> (f32, f32) {
        let prev = self.prev_timestep(t);
        let a_prev = if prev >= 0 {
            self.schedule.alpha_bar(prev as usize)
        } else {
            1.0
        };
        (self.schedule.alpha_bar(t), a_prev)
    }

    /// diffusers `_get_variance(t)` for `fixed_small`: `(1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)`.
    pub fn variance(&self, t: usize) -> f32 {
        let (a_t, a_prev) = self.alphas(t);
        let current_beta_t = 1.0 - a_t / a_prev;
        ((1.0 - a_prev) / (1.0 - a_t) * current_beta_t).max(1e-20)
    }
}

impl Scheduler for DdpmScheduler {
    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        let c = &self.config;
        self.timesteps =
            spaced_timesteps(c.timestep_spacing, c.num_train_timesteps, n, c.steps_offset)?;
        self.num_inference_steps = n;
        Ok(())
    }

    fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    fn needs_noise(&self, t: usize) -> bool {
        t > 0
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        t: usize,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<StepOutput> {
        if self.num_inference_steps == 0 {
            return Err(Error::invalid(
                Location::none(),
                "DDPM step before set_timesteps",
            ));
        }
        // 1. alphas, betas
        let (a_t, a_prev) = self.alphas(t);
        let (b_t, b_prev) = (1.0 - a_t, 1.0 - a_prev);
        let current_alpha_t = a_t / a_prev;
        let current_beta_t = 1.0 - current_alpha_t;
        // 2. x0 prediction, formula (15)
        let mut x0 = match self.config.prediction_type {
            PredictionType::Epsilon => {
                to_sample(model_output, PredictionType::Epsilon, sample, a_t)?
            }
            PredictionType::Sample => model_output.clone(),
            PredictionType::VPrediction => {
                ((sample * a_t.sqrt() as f64)? - (model_output * b_t.sqrt() as f64)?)?
            }
        };
        // 3. clip
        if let Some(r) = self.config.clip() {
            x0 = x0.clamp(-r, r)?;
        }
        // 4-5. posterior mean, formula (7)
        let c_x0 = (a_prev.sqrt() * current_beta_t) / b_t;
        let c_xt = current_alpha_t.sqrt() * b_prev / b_t;
        let mut prev = ((&x0 * c_x0 as f64)? + (sample * c_xt as f64)?)?;
        // 6. noise (only for t > 0)
        if t > 0 {
            let z = noise.ok_or_else(|| {
                Error::invalid(
                    Location::none().field("noise"),
                    "DDPM step at t > 0 needs noise",
                )
            })?;
            prev = (prev + (z * self.variance(t).sqrt() as f64)?)?;
        }
        Ok(StepOutput {
            prev_sample: prev,
            pred_original_sample: x0,
        })
    }

    fn schedule(&self) -> &NoiseSchedule {
        &self.schedule
    }

    fn prediction_type(&self) -> PredictionType {
        self.config.prediction_type
    }
}
