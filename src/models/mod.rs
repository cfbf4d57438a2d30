//! Denoising models. `unet_3d` is compatible with diffusers' `UNet3DConditionModel` (same config.json and
//! weight names); `vae` is diffusers' `AutoencoderKL`, for latent models and priors. A model directory (UNet + text
//! encoder + scheduler + VAE) is loaded by the top-level `model_dir` module, above this one.

pub mod attention;
pub mod kernels;
pub mod resnet;
pub mod text;
pub mod unet_3d;
pub mod unet_3d_blocks;
pub mod vae;

use candle_core::Tensor;

use crate::error::Result;
/// What a denoiser's output means; the schedulers own it (diffusers' `prediction_type`).
pub use crate::schedulers::Parameterization;

/// A video denoiser: one batched forward of (noisy video, timestep, text conditioning).
///
/// Tensors follow diffusers: `sample` (batch, channels, frames, height, width) f32, `timestep` (batch,)
/// f32 holding integer train timesteps, `encoder_hidden_states` (batch, tokens, dim). Extra conditioning
/// channels (edges, first frame) are concatenated onto `sample` by the caller. Conditional and
/// unconditional passes go through one call by stacking them on the batch axis.
pub trait Denoiser: Send + Sync {
    fn forward(
        &self,
        sample: &Tensor,
        timestep: &Tensor,
        encoder_hidden_states: &Tensor,
    ) -> Result<Tensor>;
    /// Channels `sample` must have (noisy video + conditioning channels).
    fn in_channels(&self) -> usize;
    /// Channels of the output (the video's channels).
    fn out_channels(&self) -> usize;
    /// Width of `encoder_hidden_states`.
    fn cross_attention_dim(&self) -> usize;
    fn parameterization(&self) -> Parameterization;
}

/// Max |a − b| over every element: the unit tests' parity measure (integration tests have `common::max_abs_diff`).
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.max_all())
        .and_then(|d| d.to_scalar::<f32>())
        .expect("max |a - b| of two tensors of one shape")
}
