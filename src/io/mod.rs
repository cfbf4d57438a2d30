//! Episode sources and sinks: LeRobot (v2.1 and v3.0 read, v3.0 write), RLDS TFRecord, video.

pub mod fs;
pub mod lerobot;
pub mod rlds;
pub mod video;

use crate::episode::{Episode, EpisodeIndex, Features};
use crate::error::Result;

/// Whether a relative path taken from a dataset's own metadata (a path template, a shard name) stays inside the
/// dataset root: no absolute path and no `..` that climbs above the root. Judged on the text alone, so that a
/// dataset cannot make vadapt read files outside it; symlinks inside the dataset are followed as usual (the
/// Hugging Face cache links every file of a snapshot to a blob outside it).
pub(crate) fn stays_inside_root(relative: &std::path::Path) -> bool {
    use std::path::Component;
    let mut depth = 0usize;
    for part in relative.components() {
        match part {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => match depth.checked_sub(1) {
                Some(up) => depth = up,
                None => return false,
            },
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

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
    /// An episode's frame count where the metadata says it without reading the episode (LeRobot's episodes
    /// table); `None` where only reading tells (RLDS).
    fn episode_len(&self, _index: EpisodeIndex) -> Option<usize> {
        None
    }
}

/// Open a dataset, detecting its format: a LeRobot root (`meta/info.json`, v2.1 or v3.0) or an RLDS builder
/// directory (`dataset_info.json` in it or in a version directory below it).
pub fn open_dataset(path: &std::path::Path) -> Result<Box<dyn EpisodeSource>> {
    use crate::error::{Error, Location};
    // A symlink loop (or an unreadable directory on the way) is an error of its own, not "does not exist".
    if !fs::exists(path)? {
        return Err(Error::invalid(
            Location::file(path),
            "dataset path does not exist",
        ));
    }
    // A `meta/` directory means LeRobot even when `info.json` is missing, so that the error names that file.
    if path.join("meta").join("info.json").exists() || path.join("meta").is_dir() {
        return Ok(Box::new(lerobot::LeRobotDataset::open(path)?));
    }
    let rlds_here = path.join("dataset_info.json").exists();
    let rlds_below = std::fs::read_dir(path)
        .map(|rd| {
            rd.flatten()
                .any(|e| e.path().join("dataset_info.json").exists())
        })
        .unwrap_or(false);
    if rlds_here || rlds_below {
        return Ok(Box::new(rlds::RldsDataset::open(path)?));
    }
    Err(Error::invalid(
        Location::file(path),
        "not a dataset vadapt knows: expected meta/info.json (LeRobot) or dataset_info.json (RLDS builder directory)",
    ))
}
