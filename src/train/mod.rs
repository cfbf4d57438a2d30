//! Training of the small task models (and the demo prior): `vadapt train --config pipelines/train_*.toml`.
//!
//! `config` is the recipe and `validate` its checks before any work starts, `data` cuts clips from any dataset
//! vadapt reads, `init` seeds fresh weights, `optim` is AdamW + schedule + clipping + EMA, `step` one optimizer step
//! on a prepared batch (shared with `vadapt bench --train`), `trainer` is the loop and its checkpoints, `report` the
//! loss log, loss curve and sample sheets. A run directory holds:
//! ```text
//! OUT/model/                     the latest EMA model: a vadapt/diffusers model directory (unet/, text_encoder/, vae/,
//!                                scheduler/, vadapt.json) that `vadapt sample` and pipelines load
//! OUT/checkpoints/step-N/        the model at step N + trainer_state.{json,safetensors} (weights, AdamW moments, EMA)
//! OUT/loss.csv, OUT/loss.png     step, loss, lr, grad_norm, seconds; the curve (log scale)
//! OUT/samples/step-N.png         rows per held-out clip: condition video, its edges, (low_res input,) ground
//!                                truth, sample
//! ```

pub mod config;
pub mod data;
pub mod init;
pub mod optim;
pub mod report;
pub mod step;
pub mod trainer;
mod validate;

pub use config::TrainConfig;
pub use trainer::{StepStats, Trainer};
