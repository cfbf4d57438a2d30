//! One clip from one model or a composition, all noise from one seed: `vadapt sample`'s one-off generation. The
//! clip is the model's window (`vadapt.json` frames, height, width), sampled by [`sample`](super::sample), the
//! one-window case of the loop `vadapt augment` runs, with its channels from the shared conditioning builder.

use candle_core::{DType, Device};
use image::RgbImage;

use super::compose::{ComposeSettings, Conditioned, Prior, Strength};
use super::conditioning::{SignalBuilder, Signals};
use super::target::ModelUse;
use super::window::sample;
use crate::error::{Error, Location, Result};
use crate::rng::NoiseRng;
use crate::schedulers::NoiseSchedule;
use crate::vision::tensor::tensor_to_frames;

/// A small model, its priors with their λ, and how to sample them.
pub struct ClipSampler<'a> {
    pub small: ModelUse<'a>,
    /// (model, λ, prompt).
    pub priors: Vec<(ModelUse<'a>, f32)>,
    pub settings: ComposeSettings,
    pub steps: usize,
    /// Where the priors were asked for, named in the error when one denoises another space than the small model.
    pub priors_at: Location,
}

/// What [`ClipSampler::sample`] returns.
pub struct SampledClip {
    /// The model's frame count of RGB frames at its resolution.
    pub frames: Vec<RgbImage>,
    /// Prior forward calls made.
    pub prior_calls: usize,
}

impl ClipSampler<'_> {
    /// Sample one clip conditioned on `condition` (at least the model's frame count of frames at its resolution: its
    /// edges and its first frame), or on nothing. The initial noise, then any ancestral noise, come from `seed`.
    pub fn sample(
        &self,
        condition: Option<&[RgbImage]>,
        seed: u64,
        device: &Device,
    ) -> Result<SampledClip> {
        let small = self.small.model;
        let (frames, h, w) = (small.meta.frames, small.meta.height, small.meta.width);
        let signals = match condition {
            Some(clip) if clip.len() < frames => {
                return Err(Error::invalid(
                    Location::none().field("condition"),
                    format!("{} frames, the model needs {frames}", clip.len()),
                ))
            }
            Some(clip) => SignalBuilder::for_model(small, device).clip(&clip[..frames], None)?,
            None => Signals::default(),
        };
        let (text, uncond) = small.embed(&self.small.prompt, 1, device)?;
        let small_in = Conditioned {
            model: &small.unet,
            channels: signals.channels_for(small, frames)?,
            text,
            uncond,
            schedule: None,
        };
        let priors = self
            .priors
            .iter()
            .map(|(p, lam)| {
                let (text, uncond) = p.model.embed(&p.prompt, 1, device)?;
                Ok(Prior {
                    input: Conditioned {
                        model: &p.model.unet,
                        channels: signals.channels_for(p.model, frames)?,
                        text,
                        uncond,
                        schedule: Some(NoiseSchedule::from_config(&p.model.scheduler)),
                    },
                    strength: Strength::Constant(*lam),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut scheduler = small.scheduler.build()?;
        scheduler.set_timesteps(self.steps)?;
        let mut rng = NoiseRng::new(seed);
        let (hs, ws) = small.sample_size(h, w, Location::none().field("model"))?;
        for (p, _) in &self.priors {
            small.check_composes_with(p.model, self.priors_at.clone())?;
        }
        let x_t = (rng.randn((1, small.sample_channels(), frames, hs, ws), device)?
            * scheduler.init_noise_sigma())?;
        let traj = sample(
            &small_in,
            &priors,
            scheduler.as_mut(),
            x_t.to_dtype(DType::F32)?,
            &self.settings,
            &mut rng,
            false,
        )?;
        let video = small.decode_video(&traj.x0, &|| Ok(()))?;
        Ok(SampledClip {
            frames: tensor_to_frames(&video.squeeze(0)?)?,
            prior_calls: traj.prior_calls,
        })
    }
}
