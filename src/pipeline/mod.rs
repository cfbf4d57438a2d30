//! The streaming augment pipeline behind `vadapt augment`: a TOML config ([`config`]), the [`plan`] of a run (the
//! dataset, the episodes, every target's models loaded once and checked: [`target`]), the workers that read,
//! prepare, sample (through `sampling::TargetSampler`) and write on their own threads ([`workers`]), the source's
//! pixels kept under a mask camera ([`keep`]), the resumable work directory ([`units`]) and the output's state and publishing ([`output`]),
//! all run by [`run`]; shard merging ([`merge`]) and contact-sheet previews ([`preview`]).

pub mod config;
mod keep;
pub mod memory;
pub mod merge;
mod options;
pub mod output;
pub mod plan;
pub mod preview;
pub mod prompt;
pub mod regenerate;
pub mod run;
pub mod skips;
mod target;
pub mod units;
pub mod variants;
mod workers;

pub use config::PipelineConfig;
pub use plan::{plan, Plan, TargetPlan};
pub use run::{run, Progress, RunOptions, RunSummary, Shard, INTERRUPTED};
