//! The sampling loop. Long episodes go through a model of fixed frame count as overlapping windows denoised
//! *together*: at every step each window's composed ε ([`composed_eps`](super::compose::composed_eps)) is computed
//! on its slice of the episode's one noisy video, the predictions of frames that several windows cover are averaged
//! (weighted towards each window's centre), and the scheduler steps the whole episode at once. The episode is
//! therefore one sample with no seams, rather than independent clips glued together. [`sample`] is the same loop
//! with one window spanning the whole video (its tent weights are all exactly 1, so it steps the composed ε as it is):
//! the loop the parity fixtures check is the loop `vadapt augment` runs.
//!
//! Determinism: the initial noise of the frames a window is first to cover comes from that window's seed
//! (`rng::derive_seed(seed, episode, target, window)`); ancestral noise (DDPM) from the seed of window `u64::MAX`.
//! Nothing depends on threads or on which other episodes run alongside.

use candle_core::{DType, Device, Tensor};

use super::compose::{
    check_inputs, composed_eps, from_epsilon, ComposeSettings, Conditioned, Prior,
};
use crate::error::{Error, Location, Result};
use crate::rng::{derive_seed, NoiseRng};
use crate::schedulers::{Parameterization, Scheduler};

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
    x: Tensor,
    starts: &[usize],
    frames: usize,
    noise: &mut NoiseRng,
    eps_of: &mut dyn FnMut(usize, &Tensor, usize) -> Result<Tensor>,
) -> Result<Tensor> {
    denoise(scheduler, x, starts, frames, noise, eps_of, None)
}

/// [`denoise_windows`], pushing every intermediate x onto `record` when given (x_T first, then one per step).
fn denoise(
    scheduler: &mut dyn Scheduler,
    mut x: Tensor,
    starts: &[usize],
    frames: usize,
    noise: &mut NoiseRng,
    eps_of: &mut dyn FnMut(usize, &Tensor, usize) -> Result<Tensor>,
    mut record: Option<&mut Vec<Tensor>>,
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
    // A frame's weight in a window is its tent over the sum of its tents in every window covering it: exactly 1
    // (t / t) where one window covers it, so one window passes its ε through unchanged.
    let weights: Vec<Tensor> = starts
        .iter()
        .map(|&s| {
            let v: Vec<f32> = (0..f).map(|k| tents[k] / total[s + k]).collect();
            Ok(Tensor::from_vec(v, (1, 1, f, 1, 1), &device)?)
        })
        .collect::<Result<_>>()?;
    let schedule = scheduler.schedule().clone();
    let timesteps = scheduler.timesteps().to_vec();
    if let Some(xs) = record.as_deref_mut() {
        xs.push(x.clone());
    }
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
        // The scheduler expects the small model's parameterization; ε is converted back when it is not ε.
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
        tracing::trace!(t, "Denoising step done.");
        if let Some(xs) = record.as_deref_mut() {
            xs.push(x.clone());
        }
    }
    Ok(x)
}

/// What [`sample`] returns.
#[derive(Debug, Clone)]
pub struct Trajectory {
    /// The final sample x_0.
    pub x0: Tensor,
    /// Every intermediate x, `xs[0] = x_T` (only when recorded).
    pub xs: Vec<Tensor>,
    /// Prior forward calls made (for checking the composition window).
    pub prior_calls: usize,
}

/// The composed sampling loop over one window spanning the whole video `x_t` (usually N(0, I) · init_noise_sigma),
/// with the scheduler's timesteps: [`denoise_windows`] with a single window whose ε is [`composed_eps`].
/// `noise` supplies ancestral noise for schedulers that need it (DDPM, DDIM with η > 0); `record` keeps every
/// intermediate x.
pub fn sample(
    small: &Conditioned,
    priors: &[Prior],
    scheduler: &mut dyn Scheduler,
    x_t: Tensor,
    settings: &ComposeSettings,
    noise: &mut NoiseRng,
    record: bool,
) -> Result<Trajectory> {
    check_inputs(small, priors, &x_t)?;
    let _span = tracing::span!(tracing::Level::DEBUG, "compose_sample").entered();
    let x = x_t.to_dtype(DType::F32)?;
    if scheduler.timesteps().is_empty() {
        return Err(Error::invalid(
            Location::none().field("steps"),
            "the scheduler has no timesteps (call set_timesteps)",
        ));
    }
    let schedule = scheduler.schedule().clone();
    let frames = x.dim(2)?;
    let mut prior_calls = 0;
    let mut xs = Vec::new();
    let x0 = denoise(
        scheduler,
        x,
        &[0],
        frames,
        noise,
        &mut |_, x, t| composed_eps(small, priors, x, t, settings, &schedule, &mut prior_calls),
        record.then_some(&mut xs),
    )?;
    Ok(Trajectory {
        x0,
        xs,
        prior_calls,
    })
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
