//! Sampling: the only place where models and a scheduler meet.
//!
//! - [`compose`]: the composed step, one ε from a small model and its priors (Video Adapter, with the paper's
//!   equations);
//! - [`window`]: the sampling loop, overlapping windows over a whole episode denoised together, and its initial
//!   noise; [`sample`] is its one-window case, which the parity tests drive;
//! - [`conditioning`]: the conditioning channels (edges, first frame, low_res) for sampling and training alike;
//! - [`target`]: one target's sampler of whole episodes, what `vadapt augment` runs;
//! - [`clip`]: one clip of a model's window from one seed, what `vadapt sample` runs.

pub mod clip;
pub mod compose;
pub mod conditioning;
pub mod target;
pub mod window;

pub use clip::{ClipSampler, SampledClip};
pub use compose::{composed_eps, ComposeSettings, Conditioned, Prior, Rule, Strength};
pub use conditioning::{SignalBuilder, Signals};
pub use target::{ModelUse, TargetSampler};
pub use window::{denoise_windows, initial_noise, sample, window_starts, Trajectory};
