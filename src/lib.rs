//! vadapt: augment robot trajectory datasets with composed video diffusion.
//!
//! The method is "Video Adapter" (Yang et al. 2023, *Probabilistic Adaptation of Text-to-Video Models*,
//! arXiv 2306.01872): a small task model and a large prior are composed by adding their noise predictions.
//!
//! Data flows `io` (episodes) -> `vision` (resize, Sobel edges) -> `models` + `schedulers`, loaded as model
//! directories by `model_dir` and driven by `sampling` (the composed step, the sampling loop, the conditioning)
//! -> `io` (LeRobot v3.0 output).

pub mod compute;
pub mod episode;
pub mod error;
pub mod eval;
pub mod io;
pub mod limits;
pub mod model_dir;
pub mod models;
pub mod pipeline;
pub mod progress;
pub mod rng;
pub mod sampling;
pub mod schedulers;
pub mod synth;
pub mod train;
pub mod vision;

pub use error::{Error, Location, Result};
