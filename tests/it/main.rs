//! All integration tests in one binary (one link instead of one per file).

mod bad_inputs;
mod bench_cli;
mod common;
mod compose;
mod damage_props;
mod edges;
mod episode_columns;
mod eval;
mod fuzz_props;
mod interop;
mod language_table_sample;
mod lerobot;
mod parity_latent;
mod pipeline;
mod pipeline_reliability;
mod rlds;
mod sample_cli;
mod sample_data;
mod schedulers;
mod shared_fixtures;
mod stages;
mod text;
mod train;
mod unet3d;
mod variants;
mod video;
