//! All integration tests in one binary (one link instead of one per file).

mod common;
mod edges;
mod schedulers;
mod unet3d;
mod compose;
mod video;
mod text;
mod lerobot;
mod rlds;
mod sample_data;
mod interop;
mod sample_cli;
