//! DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
//! Models", Alg. 2, data prediction, multistep second order, midpoint), port of diffusers 0.42.1
//! `schedulers/scheduling_dpmsolver_multistep.py` with `algorithm_type = "dpmsolver++"`, `solver_type = "midpoint"`.
//!
//! With `sigma = sqrt((1 - abar) / abar)`, `alpha_t = 1 / sqrt(sigma^2 + 1)`, `sigma_t = sigma alpha_t`,
//! `lambda = ln alpha_t - ln sigma_t` and `h = lambda_t - lambda_s0`:
//! * first order: `x_t = (sigma_t / sigma_s0) x - alpha_t (e^{-h} - 1) D0`
//! * second order: `r0 = h_0 / h`, `D1 = (m0 - m1) / r0`,
//!   `x_t = (sigma_t / sigma_s0) x - alpha_t (e^{-h} - 1) D0 - 0.5 alpha_t (e^{-h} - 1) D1`
//!
//! where `m` are x0 predictions. The first step has no history (first order); the last step is first order when
//! `final_sigmas_type = "zero"` or `lower_order_final` with fewer than 15 steps.

use candle_core::Tensor;

use super::{
    round_half_even, to_sample, NoiseSchedule, PredictionType, Scheduler, SchedulerConfig,
    StepOutput, TimestepSpacing,
};
use crate::error::{Error, Location, Result};

pub struct DpmSolverMultistepScheduler {
    config: SchedulerConfig,
    schedule: NoiseSchedule,
    timesteps: Vec<usize>,
    /// sigma per inference step plus the final sigma (f32 like diffusers).
    sigmas: Vec<f32>,
    model_outputs: Vec<Tensor>,
    lower_order_nums: usize,
    step_index: usize,
}

impl DpmSolverMultistepScheduler {
    pub fn new(config: SchedulerConfig) -> Self {
        let schedule = NoiseSchedule::from_config(&config);
        Self {
            config,
            schedule,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            model_outputs: Vec::new(),
            lower_order_nums: 0,
            step_index: 0,
        }
    }

    /// The sigmas of the current inference schedule (n + 1 values).
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    fn alpha_sigma(sigma: f32) -> (f32, f32) {
        let alpha_t = 1.0 / (sigma * sigma + 1.0).sqrt();
        (alpha_t, sigma * alpha_t)
    }
}

impl Scheduler for DpmSolverMultistepScheduler {
    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        let c = &self.config;
        let t_max = c.num_train_timesteps; // lambda_min_clipped = -inf: nothing clipped
        if n == 0 || n > t_max {
            return Err(Error::config(
                Location::none().field("steps"),
                format!("{n} inference steps for {t_max} train timesteps"),
            ));
        }
        self.timesteps = match c.timestep_spacing {
            // linspace(0, T - 1, n + 1).round()[::-1][:-1]
            TimestepSpacing::Linspace => (1..=n)
                .rev()
                .map(|i| round_half_even((t_max - 1) as f64 * i as f64 / n as f64) as usize)
                .collect(),
            // (arange(0, n + 1) * (T // (n + 1))).round()[::-1][:-1] + steps_offset
            TimestepSpacing::Leading => {
                let ratio = t_max / (n + 1);
                (1..=n).rev().map(|i| i * ratio + c.steps_offset).collect()
            }
            // arange(T, 0, -T / n).round() - 1
            TimestepSpacing::Trailing => {
                let ratio = t_max as f64 / n as f64;
                (0..n)
                    .map(|i| round_half_even(t_max as f64 - i as f64 * ratio) as usize - 1)
                    .collect()
            }
        };
        // sigmas = ((1 - abar) / abar) ** 0.5 at the chosen timesteps, then the final sigma.
        let sigma_of = |a: f32| ((1.0 - a) / a).sqrt();
        let mut sigmas: Vec<f32> = self
            .timesteps
            .iter()
            .map(|&t| sigma_of(self.schedule.alpha_bar(t)))
            .collect();
        let last = match c.final_sigmas_type.as_deref() {
            Some("sigma_min") => sigma_of(self.schedule.alphas_cumprod[0]),
            _ => 0.0,
        };
        sigmas.push(last);
        self.sigmas = sigmas;
        self.model_outputs.clear();
        self.lower_order_nums = 0;
        self.step_index = 0;
        Ok(())
    }

    fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    fn needs_noise(&self, _t: usize) -> bool {
        false
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        t: usize,
        sample: &Tensor,
        _noise: Option<&Tensor>,
    ) -> Result<StepOutput> {
        let i = self.step_index;
        if self.timesteps.get(i) != Some(&t) {
            return Err(Error::invalid(
                Location::none().field("timestep"),
                format!(
                    "DPM-Solver++ step {i} expected timestep {:?}, got {t}",
                    self.timesteps.get(i)
                ),
            ));
        }
        let n = self.timesteps.len();
        let c = &self.config;
        let lower_order_final = i == n - 1
            && (c.euler_at_final
                || (c.lower_order_final && n < 15)
                || c.final_sigmas_type.as_deref().unwrap_or("zero") == "zero");
        let lower_order_second = i == n - 2 && c.lower_order_final && n < 15;

        // convert_model_output: x0 prediction at sigma_s0.
        let (alpha_s0, sigma_s0) = Self::alpha_sigma(self.sigmas[i]);
        let x0 = match c.prediction_type {
            PredictionType::Epsilon => {
                ((sample - (model_output * sigma_s0 as f64)?)? / alpha_s0 as f64)?
            }
            PredictionType::VPrediction => {
                ((sample * alpha_s0 as f64)? - (model_output * sigma_s0 as f64)?)?
            }
            PredictionType::Sample => model_output.clone(),
        };
        let _ = to_sample; // same conversion, expressed with (alpha, sigma) as diffusers does here
        if self.model_outputs.len() == c.solver_order {
            self.model_outputs.remove(0);
        }
        self.model_outputs.push(x0.clone());

        let (alpha_t, sigma_t) = Self::alpha_sigma(self.sigmas[i + 1]);
        let lambda = |a: f32, s: f32| a.ln() - s.ln();
        let lambda_t = lambda(alpha_t, sigma_t);
        let lambda_s0 = lambda(alpha_s0, sigma_s0);
        let h = lambda_t - lambda_s0;
        let em1 = (-h).exp() - 1.0;

        let first_order = c.solver_order == 1 || self.lower_order_nums < 1 || lower_order_final;
        let prev = if first_order {
            ((sample * (sigma_t / sigma_s0) as f64)? - (&x0 * (alpha_t * em1) as f64)?)?
        } else {
            let _ = lower_order_second; // order 2 is the maximum we support: same update either way
            let (alpha_s1, sigma_s1) = Self::alpha_sigma(self.sigmas[i - 1]);
            let lambda_s1 = lambda(alpha_s1, sigma_s1);
            let h_0 = lambda_s0 - lambda_s1;
            let r0 = h_0 / h;
            let m0 = &self.model_outputs[self.model_outputs.len() - 1];
            let m1 = &self.model_outputs[self.model_outputs.len() - 2];
            let d1 = ((m0 - m1)? * (1.0 / r0) as f64)?;
            (((sample * (sigma_t / sigma_s0) as f64)? - (m0 * (alpha_t * em1) as f64)?)?
                - (d1 * (0.5 * alpha_t * em1) as f64)?)?
        };
        if self.lower_order_nums < c.solver_order {
            self.lower_order_nums += 1;
        }
        self.step_index += 1;
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
