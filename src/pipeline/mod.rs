//! The streaming augment pipeline behind `vadapt augment`: a TOML config ([`config`]), whose episodes are sampled
//! by `sampling::TargetSampler`, the resumable work directory ([`units`]), the staged run ([`run`]), shard merging
//! ([`merge`]) and contact-sheet previews ([`preview`]).

pub mod config;
pub mod merge;
pub mod preview;
pub mod run;
pub mod units;

pub use config::PipelineConfig;
pub use run::{run, RunOptions, RunSummary, Shard, INTERRUPTED};
