//! DDIM (Song et al. 2021, "Denoising Diffusion Implicit Models"), port of diffusers 0.42.1
//! `schedulers/scheduling_ddim.py::DDIMScheduler.step`.
//!
//! Eq. (12): `x_{t-1} = sqrt(abar_prev) x0_pred + sqrt(1 - abar_prev - sigma_t^2) eps_pred + sigma_t z`,
//! eq. (16): `sigma_t = eta * sqrt((1 - abar_prev) / (1 - abar_t)) * sqrt(1 - abar_t / abar_prev)`.
//! Notation: pred_original_sample -> x0_pred, std_dev_t -> sigma_t, eta -> η.

use candle_core::Tensor;

use super::{
    spaced_timesteps, to_sample, NoiseSchedule, PredictionType, Scheduler, SchedulerConfig,
    StepOutput,
};
use crate::error::{Error, Location, Result};

pub struct DdimScheduler {
    config: SchedulerConfig,
    schedule: NoiseSchedule,
    timesteps: Vec<usize>,
    num_inference_steps: usize,
    /// η: 0 is deterministic DDIM, 1 is DDPM-like ancestral sampling.
    pub eta: f32,
}

impl DdimScheduler {
    pub fn new(config: SchedulerConfig, eta: f32) -> Self {
        let schedule = NoiseSchedule::from_config(&config);
        Self {
            config,
            schedule,
            timesteps: Vec::new(),
            num_inference_steps: 0,
            eta,
        }
    }

    fn alpha_bar_prev(&self, prev_t: isize) -> f32 {
        if prev_t >= 0 {
            self.schedule.alpha_bar(prev_t as usize)
        } else if self.config.set_alpha_to_one {
            1.0
        } else {
            self.schedule.alphas_cumprod[0]
        }
    }
}

impl Scheduler for DdimScheduler {
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

    fn needs_noise(&self, _t: usize) -> bool {
        self.eta > 0.0
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
                "DDIM step before set_timesteps",
            ));
        }
        // 1. previous step value (=t-1)
        let prev_t =
            t as isize - (self.config.num_train_timesteps / self.num_inference_steps) as isize;
        // 2. alphas, betas
        let a_t = self.schedule.alpha_bar(t);
        let a_prev = self.alpha_bar_prev(prev_t);
        let b_t = 1.0 - a_t;
        // 3. predicted x0 and eps (formula (12))
        let (sa, sb) = (a_t.sqrt() as f64, b_t.sqrt() as f64);
        let (mut x0, eps) = match self.config.prediction_type {
            PredictionType::Epsilon => (
                to_sample(model_output, PredictionType::Epsilon, sample, a_t)?,
                model_output.clone(),
            ),
            PredictionType::Sample => (
                model_output.clone(),
                ((sample - (model_output * sa)?)? / sb)?,
            ),
            PredictionType::VPrediction => (
                ((sample * sa)? - (model_output * sb)?)?,
                ((model_output * sa)? + (sample * sb)?)?,
            ),
        };
        // 4. clip x0 (eps keeps the unclipped value: use_clipped_model_output = false)
        if let Some(r) = self.config.clip() {
            x0 = x0.clamp(-r, r)?;
        }
        // 5. sigma_t, formula (16)
        let variance = ((1.0 - a_prev) / b_t) * (1.0 - a_t / a_prev);
        let std_dev_t = self.eta * variance.sqrt();
        // 6-7. direction pointing to x_t and x_{t-1}, formula (12)
        let dir_coef = (1.0 - a_prev - std_dev_t * std_dev_t).sqrt() as f64;
        let mut prev = ((&x0 * a_prev.sqrt() as f64)? + (eps * dir_coef)?)?;
        if self.eta > 0.0 {
            let z = noise.ok_or_else(|| {
                Error::invalid(
                    Location::none().field("noise"),
                    "DDIM with eta > 0 needs noise",
                )
            })?;
            prev = (prev + (z * std_dev_t as f64)?)?;
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
