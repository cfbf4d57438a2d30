//! Long episodes through a model of fixed frame count: overlapping windows denoised *together*. At every step each
//! window's composed ε ([`compose::composed_eps`]) is computed on its slice of the episode's one noisy video, the
//! predictions of frames that several windows cover are averaged (weighted towards each window's centre), and the
//! scheduler steps the whole episode at once. The episode is therefore one sample with no seams, rather than
//! independent clips glued together.
//!
//! Determinism: the initial noise of the frames a window is first to cover comes from that window's seed
//! (`rng::derive_seed(seed, episode, target, window)`); ancestral noise (DDPM) from the seed of window `u64::MAX`.
//! Nothing depends on threads or on which other episodes run alongside.

use candle_core::{DType, Device, Tensor};
use image::RgbImage;

use crate::compose::{composed_eps, from_epsilon, ComposeSettings, Conditioned, Prior, Strength};
use crate::error::{Error, Location, Result};
use crate::models::model_dir::{at_sample_resolution, ModelDir, Signals};
use crate::models::Parameterization;
use crate::rng::{derive_seed, NoiseRng};
use crate::schedulers::{NoiseSchedule, Scheduler, SchedulerConfig};
use crate::vision::edges::edge_channel;
use crate::vision::tensor::{frame_to_tensor, frames_to_tensor, tensor_to_frames};

/// Window start frames covering `len` frames with windows of `frames` and `overlap` shared frames. The last
/// window ends at the last frame; an episode shorter than a window gets one (padded) window.
pub fn window_starts(len: usize, frames: usize, overlap: usize) -> Vec<usize> {
    if len <= frames {
        return vec![0];
    }
    let stride = frames.saturating_sub(overlap).max(1);
    let mut starts: Vec<usize> = (0..)
        .map(|i| i * stride)
        .take_while(|&s| s + frames < len)
        .collect();
    starts.push(len - frames);
    starts.dedup();
    starts
}

/// Weight of frame `k` of a window of `frames` in the overlap average: a tent, so a window's edge frames (which
/// see the least temporal context) count least.
fn tent(k: usize, frames: usize) -> f32 {
    (k + 1).min(frames - k) as f32
}

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
        let s = model.downscale();
        let edges = at_sample_resolution(
            Tensor::from_vec(edge_channel(&clip), (1, n, h, w), device)?,
            s,
        )?;
        let low_res = low_res
            .map(|l| at_sample_resolution(frames_to_tensor(&pad(l), device)?, s)) // (3, n, h, w)
            .transpose()?;
        check("edges")?;

        let (text, uncond) = model.embed(&self.small.prompt, 1, device)?;
        let prior_text: Vec<(Tensor, Tensor)> = self
            .priors
            .iter()
            .map(|(p, _)| p.model.embed(&p.prompt, 1, device))
            .collect::<Result<_>>()?;
        let starts = window_starts(n, f, self.overlap.min(f - 1));
        let mut windows = Vec::with_capacity(starts.len());
        for &st in &starts {
            let e = edges.narrow(1, st, f)?;
            let first = at_sample_resolution(frame_to_tensor(&clip[st], device)?, s)?;
            let lr = low_res.as_ref().map(|l| l.narrow(1, st, f)).transpose()?;
            let signals = Signals {
                edges: Some(&e),
                first_frame: Some(&first),
                low_res: lr.as_ref(),
            };
            let small = Conditioned {
                model: &model.unet,
                channels: model.channels(signals, f)?,
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
                            channels: p.model.channels(signals, f)?,
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

/// The initial noise of an episode of `starts.last() + frames` frames, (1, channels, N, h, w): each frame from the
/// seed of the first window that covers it, so a window's noise never depends on the episode's length beyond it.
#[allow(clippy::too_many_arguments)]
pub fn initial_noise(
    seed: u64,
    episode: u64,
    target: &str,
    starts: &[usize],
    frames: usize,
    channels: usize,
    (h, w): (usize, usize),
    device: &Device,
) -> Result<Tensor> {
    let mut parts = Vec::new();
    let mut covered = 0;
    for (wi, &s) in starts.iter().enumerate() {
        let mut rng = NoiseRng::new(derive_seed(seed, episode, target, wi as u64));
        let z = rng.randn((1, channels, frames, h, w), device)?;
        if s + frames > covered {
            let from = covered - s;
            parts.push(z.narrow(2, from, frames - from)?);
            covered = s + frames;
        }
    }
    Ok(Tensor::cat(&parts, 2)?.to_dtype(DType::F32)?)
}

/// The sampling loop over a whole episode `x` (1, C, N, h, w): at every step `eps_of(window, x_window, t)` is asked
/// for each window's ε on its slice of the (scaled) episode, overlapping predictions are averaged with tent weights,
/// and the scheduler steps the whole episode. `noise` supplies ancestral noise where the scheduler needs it.
pub fn denoise_windows(
    scheduler: &mut dyn Scheduler,
    mut x: Tensor,
    starts: &[usize],
    frames: usize,
    noise: &mut NoiseRng,
    eps_of: &mut dyn FnMut(usize, &Tensor, usize) -> Result<Tensor>,
) -> Result<Tensor> {
    let (f, n) = (frames, x.dim(2)?);
    let device = x.device().clone();
    if starts.is_empty() || starts.iter().any(|&s| s + f > n) {
        return Err(Error::invalid(
            Location::none().field("windows"),
            format!("windows {starts:?} of {f} frames do not fit an episode of {n}"),
        ));
    }
    let tents: Vec<f32> = (0..f).map(|k| tent(k, f)).collect();
    let mut total = vec![0f32; n];
    for &s in starts {
        for k in 0..f {
            total[s + k] += tents[k];
        }
    }
    if let Some(i) = total.iter().position(|&t| t == 0.0) {
        return Err(Error::invalid(
            Location::none().frame(i as u64).field("windows"),
            "frame covered by no window",
        ));
    }
    let weights: Vec<Tensor> = starts
        .iter()
        .map(|&s| {
            let v: Vec<f32> = (0..f).map(|k| tents[k] / total[s + k]).collect();
            Ok(Tensor::from_vec(v, (1, 1, f, 1, 1), &device)?)
        })
        .collect::<Result<_>>()?;
    let schedule = scheduler.schedule().clone();
    let timesteps = scheduler.timesteps().to_vec();
    for t in timesteps {
        let model_in = scheduler.scale_model_input(&x, t)?;
        let mut eps: Option<Tensor> = None;
        for (wi, (&s, wt)) in starts.iter().zip(&weights).enumerate() {
            let xi = model_in.narrow(2, s, f)?;
            let e = eps_of(wi, &xi, t)?
                .broadcast_mul(wt)?
                .pad_with_zeros(2, s, n - s - f)?;
            eps = Some(match eps {
                Some(acc) => (acc + e)?,
                None => e,
            });
        }
        let eps = eps.expect("at least one window");
        let output = match scheduler.prediction_type() {
            Parameterization::Epsilon => eps,
            other => from_epsilon(&eps, other, &x, schedule.alpha_bar(t))?,
        };
        let z = if scheduler.needs_noise(t) {
            Some(noise.randn(x.shape(), &device)?)
        } else {
            None
        };
        x = scheduler.step(&output, t, &x, z.as_ref())?.prev_sample;
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_every_frame_and_end_at_the_last() {
        assert_eq!(window_starts(5, 8, 4), vec![0]);
        assert_eq!(window_starts(8, 8, 4), vec![0]);
        assert_eq!(window_starts(12, 8, 4), vec![0, 4]);
        assert_eq!(window_starts(13, 8, 4), vec![0, 4, 5]);
        assert_eq!(window_starts(24, 8, 4), vec![0, 4, 8, 12, 16]);
        for len in 1..60 {
            let s = window_starts(len, 8, 3);
            let covered: std::collections::BTreeSet<usize> =
                s.iter().flat_map(|&s| s..s + 8).collect();
            assert!((0..len).all(|i| covered.contains(&i)), "len {len}");
            assert!(s.windows(2).all(|p| p[1] > p[0] && p[1] - p[0] <= 5));
        }
    }
}
