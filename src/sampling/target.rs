//! One target's sampler of whole episodes (`vadapt augment`): the conditioning of every window
//! ([`super::conditioning`]), the target's prompts embedded once, the initial noise, then the windowed loop
//! ([`super::window`]) with the composed ε of each window, and the VAE's decode for a latent model.

use candle_core::{Device, Tensor};
use image::RgbImage;

use super::compose::{composed_eps, ComposeSettings, Conditioned, Prior, Strength};
use super::conditioning::{SignalBuilder, Signals};
use super::window::{denoise_windows, initial_noise, window_starts};
use crate::error::{Error, Location, Result};
use crate::model_dir::{Conditioning, ModelDir};
use crate::rng::{derive_seed, NoiseRng};
use crate::schedulers::{NoiseSchedule, SchedulerConfig};
use crate::vision::resize::resize_rgb;
use crate::vision::tensor::tensor_to_frames;
use crate::vision::tiles::{shuffle_tiles, REFERENCE_PERMUTATION_SEED};

/// One model with its prompt template resolved for an episode.
pub struct ModelUse<'a> {
    pub model: &'a ModelDir,
    pub prompt: String,
}

/// Everything one target (or one stage of its super-resolution cascade) needs to sample an episode.
pub struct TargetSampler<'a> {
    /// Seed salt and error context: the target's name (`name/stage1`, ... for cascade stages).
    pub name: String,
    pub small: ModelUse<'a>,
    /// (model, λ, prompt).
    pub priors: Vec<(ModelUse<'a>, f32)>,
    pub settings: ComposeSettings,
    pub scheduler: SchedulerConfig,
    pub steps: usize,
    pub frames: usize,
    pub overlap: usize,
    /// A reference image of the look to render (resized to the source frames): the reference channel of a model
    /// that has one, else the first-frame signal of every window instead of the window's first source frame.
    pub reference: Option<&'a RgbImage>,
}

impl<'a> TargetSampler<'a> {
    /// One model alone: no priors, no prompt, guidance 1 (so no unconditional passes), the model's own scheduler
    /// and window length, `overlap` frames shared by neighbouring windows.
    pub fn alone(
        name: impl Into<String>,
        model: &'a ModelDir,
        steps: usize,
        overlap: usize,
    ) -> Self {
        Self {
            name: name.into(),
            small: ModelUse {
                model,
                prompt: String::new(),
            },
            priors: Vec::new(),
            settings: ComposeSettings::default(),
            scheduler: model.scheduler.clone(),
            steps,
            frames: model.meta.frames,
            overlap,
            reference: None,
        }
    }

    /// Denoise one episode whose source frames are already at the model resolution. Returns as many frames as
    /// given. `seed` is the target's global seed, `episode` the source episode index.
    pub fn sample_episode(
        &self,
        source: &[RgbImage],
        seed: u64,
        episode: u64,
        device: &Device,
    ) -> Result<Vec<RgbImage>> {
        self.sample_episode_checked(source, None, seed, episode, device, &|_| Ok(()))
    }

    /// [`Self::sample_episode`] for any model: `low_res` is a super-resolution stage's input (the previous stage's
    /// output, already resized to this resolution, as many frames as `source`). It calls `check(point)` after the
    /// edge channel is computed (`"edges"`) and before every model call of every denoising step (`"sample"`), and
    /// stops with its error: how a run stops mid-episode on Ctrl-C or when another stage failed, instead of
    /// finishing a unit nobody will take.
    pub fn sample_episode_checked(
        &self,
        source: &[RgbImage],
        low_res: Option<&[RgbImage]>,
        seed: u64,
        episode: u64,
        device: &Device,
        check: &dyn Fn(&'static str) -> Result<()>,
    ) -> Result<Vec<RgbImage>> {
        let n_real = source.len();
        if n_real == 0 {
            return Err(Error::invalid(
                Location::none().episode(episode),
                "episode has no frames",
            ));
        }
        if let Some(l) = low_res {
            if l.len() != n_real || l.iter().any(|f| f.dimensions() != source[0].dimensions()) {
                return Err(Error::invalid(
                    Location::none().episode(episode).field("low_res"),
                    format!(
                        "{} low-resolution frames for {n_real} source frames of {}x{}",
                        l.len(),
                        source[0].width(),
                        source[0].height()
                    ),
                ));
            }
        }
        let f = self.frames;
        // Shorter than a window: repeat the last frame (those outputs are dropped).
        let pad = |frames: &[RgbImage]| {
            let mut clip = frames.to_vec();
            while clip.len() < f {
                clip.push(frames[n_real - 1].clone());
            }
            clip
        };
        let clip = pad(source);
        let n = clip.len();
        let (h, w) = (clip[0].height() as usize, clip[0].width() as usize);
        let model = self.small.model;
        let (hs, ws) = model.sample_size(h, w, Location::file(&model.path).field("vae"))?;
        let build = SignalBuilder::for_model(model, device);
        let edges = build.edges(&clip)?;
        let low_res = low_res.map(|l| build.low_res(&pad(l))).transpose()?; // (3, n, h, w)
        let wants_source = std::iter::once(model)
            .chain(self.priors.iter().map(|(p, _)| p.model))
            .any(|m| m.conditioning.contains(&Conditioning::Source));
        let source = wants_source.then(|| build.source(&clip)).transpose()?; // (3, n, h, w)
        check("edges")?;

        let (text, uncond) = model.embed(&self.small.prompt, 1, device)?;
        let prior_text: Vec<(Tensor, Tensor)> = self
            .priors
            .iter()
            .map(|(p, _)| p.model.embed(&p.prompt, 1, device))
            .collect::<Result<_>>()?;
        // A model trained on tile-shuffled stills gets its reference shuffled too (vision::tiles). A restyle model
        // reads it on its own channel; a model with only a first-frame channel gets it there instead of the window's
        // first frame.
        let reference = self.reference.as_ref().map(|r| {
            let r = resize_rgb(r, h as u32, w as u32);
            match model.meta.reference_tiles {
                Some(g) => shuffle_tiles(&r, g, &mut NoiseRng::new(REFERENCE_PERMUTATION_SEED)),
                None => r,
            }
        });
        let own_channel = model.conditioning.contains(&Conditioning::Reference);
        let reference_signal = match (&reference, own_channel) {
            (Some(r), true) => Some(build.first_frame(r)?),
            _ => None,
        };
        let starts = window_starts(n, f, self.overlap.min(f - 1));
        let mut windows = Vec::with_capacity(starts.len());
        for &st in &starts {
            // The window's own signals: its frames' edges and low_res, its first frame.
            let window = Signals {
                edges: Some(edges.narrow(1, st, f)?),
                first_frame: Some(build.first_frame(match &reference {
                    Some(r) if !own_channel => r,
                    _ => &clip[st],
                })?),
                low_res: low_res.as_ref().map(|l| l.narrow(1, st, f)).transpose()?,
                reference: reference_signal.clone(),
                source: source.as_ref().map(|s| s.narrow(1, st, f)).transpose()?,
            };
            let small = Conditioned {
                model: &model.unet,
                channels: window.channels_for(model, f)?,
                text: text.clone(),
                uncond: uncond.clone(),
                schedule: None,
            };
            let priors = self
                .priors
                .iter()
                .zip(&prior_text)
                .map(|((p, lam), (t, u))| {
                    Ok(Prior {
                        input: Conditioned {
                            model: &p.model.unet,
                            channels: window.channels_for(p.model, f)?,
                            text: t.clone(),
                            uncond: u.clone(),
                            schedule: Some(NoiseSchedule::from_config(&p.model.scheduler)),
                        },
                        strength: Strength::Constant(*lam),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            windows.push((st, small, priors));
        }

        let mut scheduler = self.scheduler.build()?;
        scheduler.set_timesteps(self.steps)?;
        let channels = model.sample_channels();
        let x = (initial_noise(
            seed,
            episode,
            &self.name,
            &starts,
            f,
            channels,
            (hs, ws),
            device,
        )? * scheduler.init_noise_sigma())?;
        let mut step_rng = NoiseRng::new(derive_seed(seed, episode, &self.name, u64::MAX));
        let schedule = scheduler.schedule().clone();
        let mut prior_calls = 0;
        let x = denoise_windows(
            scheduler.as_mut(),
            x,
            &starts,
            f,
            &mut step_rng,
            &mut |wi, xi, t| {
                check("sample")?;
                let (_, small, priors) = &windows[wi];
                composed_eps(
                    small,
                    priors,
                    xi,
                    t,
                    &self.settings,
                    &schedule,
                    &mut prior_calls,
                )
            },
        )?;
        let video = model.decode_video(&x, &|| check("sample"))?;
        let mut out = tensor_to_frames(&video.get(0)?)?;
        out.truncate(n_real);
        Ok(out)
    }
}
