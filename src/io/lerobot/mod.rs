//! LeRobot datasets: read v3.0 and v2.1, write v3.0 (the layout of lerobot's `datasets/` package).

pub mod checks;
pub mod episode_columns;
pub mod images;
pub mod layout;
pub mod meta;
pub mod reader;
pub mod stats;
mod table;
pub mod writer;

pub use images::CameraStorage;
pub use meta::{EpisodeMeta, Info, Version, VideoRef};
pub use reader::{EncodedImageFrames, LeRobotDataset};
pub use writer::{LeRobotWriter, WriteSummary, WriterOptions};
