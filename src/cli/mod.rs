//! Subcommands, one file each. Each has an `Args` (clap derive) and a `run(args) -> anyhow::Result<()>`.

mod augment;
mod bench;
mod bench_train;
mod convert;
mod debug;
mod eval;
mod eval_compare;
mod inspect;
mod merge;
mod preview;
mod progress;
mod regenerate;
mod sample;
mod sample_data;
mod train;

use clap::{Parser, Subcommand};

pub use progress::progress_bar;

/// Augment robot trajectory datasets with composed video diffusion (Video Adapter).
#[derive(Debug, Parser)]
#[command(name = "vadapt", version, about, propagate_version = true)]
pub struct Cli {
    /// More log output on stderr (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Precision the CPU's f32 matmuls and convolutions may compute in, as PyTorch's
    /// `torch.set_float32_matmul_precision`: highest (f32), high (three bf16 products each, relative error ~2⁻¹⁶)
    /// or medium (bf16 products, f32 sums; outside the F16 tolerance). high and medium use AMX where the CPU has it (Sapphire Rapids and later)
    /// and change nothing elsewhere.
    #[arg(long, global = true, default_value = "highest")]
    pub matmul_precision: vadapt::models::kernels::MatmulPrecision,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate procedural LanguageTable-like episodes (sim and real renderings) as LeRobot v3.0 and RLDS.
    SampleData(sample_data::Args),
    /// Show what is in a dataset (format, episodes, keys, shapes, fps, tasks).
    Inspect(inspect::Args),
    /// Convert between dataset formats (RLDS -> LeRobot v3.0, LeRobot v2.1 -> v3.0, LeRobot -> RLDS).
    Convert(convert::Args),
    /// Generate one video from a single model (one-off sampling).
    Sample(sample::Args),
    /// Render a dataset through the targets of a TOML pipeline into an augmented LeRobot dataset.
    Augment(augment::Args),
    /// Join the outputs of `augment --shard i/n` runs into one dataset.
    Merge(merge::Args),
    /// PNG contact sheet (and side-by-side mp4) of an augmented dataset.
    Preview(preview::Args),
    /// Sample one episode of an expanded augment output again, alone, from its recorded draws.
    Regenerate(regenerate::Args),
    /// Metrics of an augmented camera: edge consistency, PSNR/SSIM against a paired ground truth, flicker, colour
    /// statistics, Fréchet distance on fixed features.
    Eval(eval::Args),
    /// Train a small task model (or the demo prior) from a TOML recipe.
    Train(train::Args),
    /// Benchmarks as JSON: matmul roofline, UNet forwards, composed sampling (optionally next to diffusers on the
    /// same weights), video decode / encode / edge rates, peak RSS.
    Bench(bench::Args),
    /// Fixed-interface commands used by parity tests and outside checks.
    #[command(subcommand)]
    Debug(debug::Command),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::SampleData(a) => sample_data::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Convert(a) => convert::run(a),
        Command::Sample(a) => sample::run(a),
        Command::Augment(a) => augment::run(a),
        Command::Merge(a) => merge::run(a),
        Command::Preview(a) => preview::run(a),
        Command::Regenerate(a) => regenerate::run(a),
        Command::Train(a) => train::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Debug(c) => debug::run(c),
    }
}

pub fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colour only on a terminal: warnings (skipped episodes) read cleanly in logs and pipes.
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .init();
}
