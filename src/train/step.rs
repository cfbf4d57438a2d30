//! One optimizer step on a prepared batch: the part of the training loop that `vadapt bench --train` times.
//!
//! The trainer (`trainer.rs`) cuts clips from its data and embeds their prompts; the bench synthesizes seeded clips
//! and text embeddings. Both then go through the same code here: [`Draws`] draws the step's noise, timesteps and
//! dropout in the trainer's order and [`Draws::into_batch`] noises the clips into a [`Batch`]; [`step_on_batch`] is
//! forward, MSE loss, backward, global-norm clipping, AdamW at the scheduled learning rate and the EMA update.

use std::time::Instant;

use candle_core::Tensor;

use super::config::{TimestepDraw, TrainConfig};
use super::optim::{clip_factor, learning_rate, AdamW, AdamWSettings, Ema, Params};
use crate::error::{Error, Location, Result};
use crate::models::unet_3d::UNet3DConditionModel;
use crate::models::Parameterization;
use crate::rng::NoiseRng;
use crate::schedulers::NoiseSchedule;

/// What one optimizer step reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    /// Wall time of the forward pass (in the trainer: data included), the backward pass and the update.
    pub seconds: [f64; 3],
}

/// What the UNet sees at one step and what it must predict.
#[derive(Debug, Clone)]
pub struct Batch {
    /// (B, C_in, F, h, w): the noisy sample, then the conditioning channels (zeroed where dropped).
    pub input: Tensor,
    /// (B,) f32 training timesteps.
    pub timesteps: Tensor,
    /// (B, L, D) text embeddings (the unconditional one where the text was dropped).
    pub text: Tensor,
    /// The regression target of the parameterization: ε, v or x0.
    pub target: Tensor,
}

/// The random draws of one step after its clips, in the trainer's order: noise (with the offset), timesteps, text
/// dropout, conditioning dropout.
pub struct Draws {
    pub noise: Tensor,
    pub timesteps: Vec<usize>,
    /// `false`: the clip's text is replaced by the unconditional embedding.
    pub keep_text: Vec<bool>,
    /// 0.0: the clip's conditioning channels are zeroed.
    pub keep_cond: Vec<f32>,
}

impl Draws {
    /// The draws for the clean clips `x0` (B, C, F, h, w) under recipe `c`.
    pub fn draw(
        x0: &Tensor,
        c: &TrainConfig,
        timesteps: &TimestepDraw,
        rng: &mut NoiseRng,
    ) -> Result<Self> {
        let b = x0.dim(0)?;
        let mut noise = rng.randn(x0.shape().clone(), x0.device())?;
        if c.optim.noise_offset > 0.0 {
            // noise += offset * randn(b, c, 1, 1, 1) (diffusers' train_text_to_image.py, one value per clip and
            // channel); the ε target is this offset noise too.
            let offset =
                (rng.randn((b, x0.dim(1)?, 1, 1, 1), x0.device())? * c.optim.noise_offset)?;
            noise = noise.broadcast_add(&offset)?;
        }
        let timesteps: Vec<usize> = (0..b).map(|_| timesteps.draw(rng)).collect();
        let keep_text: Vec<bool> = (0..b)
            .map(|_| rng.uniform() as f64 >= c.guidance.drop_text)
            .collect();
        let keep_cond: Vec<f32> = (0..b)
            .map(|_| {
                if rng.uniform() as f64 >= c.guidance.drop_conditions {
                    1.0
                } else {
                    0.0
                }
            })
            .collect();
        Ok(Self {
            noise,
            timesteps,
            keep_text,
            keep_cond,
        })
    }

    /// Noise `x0` at the drawn timesteps into the UNet's input (with `channels` appended, dropped per clip) and the
    /// target of `prediction`; `text` is the batch's embeddings, already dropped per `keep_text`.
    pub fn into_batch(
        self,
        x0: Tensor,
        channels: Option<&Tensor>,
        text: Tensor,
        schedule: &NoiseSchedule,
        prediction: Parameterization,
    ) -> Result<Batch> {
        let b = x0.dim(0)?;
        let dev = x0.device().clone();
        let ts = &self.timesteps;
        let x_t = schedule.add_noise(&x0, &self.noise, ts)?;
        let input = match channels {
            Some(ch) => {
                let mask = Tensor::from_vec(self.keep_cond, (b, 1, 1, 1, 1), &dev)?;
                Tensor::cat(&[&x_t, &ch.broadcast_mul(&mask)?], 1)?
            }
            None => x_t,
        };
        let t = Tensor::from_vec(ts.iter().map(|&t| t as f32).collect::<Vec<_>>(), b, &dev)?;
        // The regression target of the parameterization: ε, v = sqrt(ᾱ)ε − sqrt(1−ᾱ)x0, or x0 itself.
        let target = match prediction {
            Parameterization::Epsilon => self.noise,
            Parameterization::VPrediction => schedule.get_velocity(&x0, &self.noise, ts)?,
            Parameterization::Sample => x0,
        };
        Ok(Batch {
            input,
            timesteps: t,
            text,
            target,
        })
    }
}

/// The mean squared error of the UNet's prediction on `batch`, with the graph for backprop.
pub fn batch_loss(unet: &UNet3DConditionModel, batch: &Batch) -> Result<Tensor> {
    let out = unet.forward(&batch.input, &batch.timesteps, &batch.text)?;
    Ok((out - &batch.target)?.sqr()?.mean_all()?)
}

/// The optimizer of a run: AdamW over `params` with the recipe's settings, and the EMA when `ema_decay > 0`.
pub fn new_optimizer(params: &Params, c: &TrainConfig) -> Result<(AdamW, Option<Ema>)> {
    let o = &c.optim;
    let opt = AdamW::new(
        params,
        AdamWSettings {
            beta1: o.beta1,
            beta2: o.beta2,
            eps: o.eps,
            weight_decay: o.weight_decay,
        },
    )?;
    let ema = if o.ema_decay > 0.0 {
        Some(Ema::new(params, o.ema_decay)?)
    } else {
        None
    };
    Ok((opt, ema))
}

/// Optimizer step `s` (0-based) of recipe `c` on `batch`: forward and loss, backward, clipping to
/// `optim.grad_clip`, AdamW at `learning_rate(s, c.steps, …)`, then the EMA.
///
/// The step runs on a thread of rayon's pool (`rayon::scope`), not on the caller's: each kernel's parallel loop
/// (a few hundred a step) then starts from a pool thread, which pushes its halves onto its own deque for the
/// other worker to steal, instead of injecting the loop from outside and sleeping until a worker has run it.
pub fn step_on_batch(
    unet: &UNet3DConditionModel,
    batch: &Batch,
    s: usize,
    c: &TrainConfig,
    params: &Params,
    opt: &mut AdamW,
    ema: Option<&mut Ema>,
) -> Result<StepStats> {
    rayon::scope(|_| step_in_pool(unet, batch, s, c, params, opt, ema))
}

/// `step_on_batch`'s work, on whichever thread runs it.
fn step_in_pool(
    unet: &UNet3DConditionModel,
    batch: &Batch,
    s: usize,
    c: &TrainConfig,
    params: &Params,
    opt: &mut AdamW,
    ema: Option<&mut Ema>,
) -> Result<StepStats> {
    let t0 = Instant::now();
    let loss = batch_loss(unet, batch)?;
    let t1 = Instant::now();
    let grads = loss.backward()?;
    let t2 = Instant::now();
    let loss = loss.to_scalar::<f32>()? as f64;
    if !loss.is_finite() {
        return Err(Error::invalid(
            Location::none().field("loss"),
            format!("the loss is {loss} at step {s}: lower optim.lr or check the data"),
        ));
    }
    let o = &c.optim;
    let (grad_norm, factor) = clip_factor(params, &grads, o.grad_clip)?;
    let lr = learning_rate(s, c.steps, o.lr, o.warmup_steps, o.min_lr_ratio);
    opt.step(params, &grads, lr, factor)?;
    if let Some(ema) = ema {
        ema.update(params, opt.t)?;
    }
    Ok(StepStats {
        loss,
        lr,
        grad_norm,
        seconds: [
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64(),
            t2.elapsed().as_secs_f64(),
        ],
    })
}
