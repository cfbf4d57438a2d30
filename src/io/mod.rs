//! Episode sources and sinks: LeRobot (v2.1 and v3.0 read, v3.0 write), RLDS TFRecord, video, sample data.

pub mod lerobot;
pub mod rlds;
pub mod sample;
pub mod video;

use crate::episode::{EpisodeIndex, Episode, Features};
use crate::error::Result;

/// A dataset read one episode at a time (memory bounded by one episode, whatever the dataset size).
pub trait EpisodeSource {
    /// Short format name ("lerobot-v3.0", "lerobot-v2.1", "rlds").
    fn format(&self) -> &str;
    /// Frames per second.
    fn fps(&self) -> f64;
    /// Every feature (columns and camera keys) with dtype and shape.
    fn features(&self) -> &Features;
    /// Episode indices in dataset order.
    fn episode_indices(&self) -> Vec<EpisodeIndex>;
    /// Read one episode (frames stay lazily decoded).
    fn read_episode(&self, index: EpisodeIndex) -> Result<Episode>;
}
