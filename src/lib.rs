//! vadapt: augment robot trajectory datasets with composed video diffusion.
//!
//! The method is "Video Adapter" (Yang et al. 2023, *Probabilistic Adaptation of Text-to-Video Models*,
//! arXiv 2306.01872): a small task model and a large prior are composed by adding their noise predictions.
//!
//! Data flows `io` (episodes) -> `vision` (resize, Sobel edges) -> `models` + `schedulers` driven by
//! `compose` (the sampling loop) -> `io` (LeRobot v3.0 output).

pub mod compose;
pub mod compute;
pub mod episode;
pub mod error;
pub mod eval;
pub mod io;
pub mod models;
pub mod pipeline;
pub mod progress;
pub mod rng;
pub mod schedulers;
pub mod train;
pub mod vision;

pub use error::{Error, Location, Result};
