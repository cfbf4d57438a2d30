//! `vadapt augment`: render every episode of a dataset through the targets of a TOML pipeline and write a LeRobot
//! v3.0 dataset (see `vadapt::pipeline`). Progress bars on stderr, the summary on stdout.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use vadapt::compute::{Compute, DeviceSpec, Precision};
use vadapt::error::Error;
use vadapt::pipeline::{self, PipelineConfig, Progress, RunOptions, Shard};

use super::progress::AugmentBars;

/// Exit status after Ctrl-C (128 + SIGINT, what shells report for a command killed by it).
const EXIT_INTERRUPTED: i32 = 130;

/// Ctrl-C: the first sets `stop` (the run stops its stages, keeps its finished units and returns); a second one
/// exits at once with 130 (safe too: every file is written under a temporary name and renamed, the manifest's torn
/// last line is ignored, and `--resume` rebuilds the unfinished dataset). signal-hook is the usual crate for this
/// (rust-lang-nursery origin, actively maintained, no dependency but libc, which vadapt already links);
/// `register_conditional_shutdown` before `register` is its documented double-Ctrl-C pattern.
/// SIGTERM (what Slurm sends before preempting or timing out a job, and Kubernetes before killing a pod) is
/// handled the same way, so a scheduled shard stops cleanly and its requeued run resumes.
fn stop_on_ctrl_c() -> anyhow::Result<Arc<AtomicBool>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(
            signal,
            EXIT_INTERRUPTED,
            Arc::clone(&stop),
        )
        .context("installing the Ctrl-C / SIGTERM handler")?;
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("installing the Ctrl-C / SIGTERM handler")?;
    }
    Ok(stop)
}

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  vadapt augment --pipeline pipelines/example.toml --input datasets/sample/lerobot --output out/aug\n  vadapt augment --pipeline P.toml --input DS --output part0 --shard 0/2   # then: vadapt merge OUT part0 part1\n  vadapt augment --pipeline P.toml --input DS --output OUT --resume        # after a crash or kill"
)]
pub struct Args {
    /// Pipeline config (TOML).
    #[arg(long)]
    pub pipeline: PathBuf,
    /// Input dataset: a LeRobot root (v2.1/v3.0) or an RLDS builder directory.
    #[arg(long)]
    pub input: PathBuf,
    /// Output dataset directory (must not exist, unless --resume).
    #[arg(long)]
    pub output: PathBuf,
    /// Take every n-th episode starting at i (0-based), e.g. 0/4.
    #[arg(long, default_value = "0/1")]
    pub shard: Shard,
    /// Finish an interrupted run: finished units are reused, the result is byte-identical to an uninterrupted run.
    #[arg(long)]
    pub resume: bool,
    /// Only the first N episodes of the input (before sharding).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Validate everything, print the plan, write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Fail on the first bad episode instead of skipping and recording it.
    #[arg(long)]
    pub strict: bool,
    /// Sampler threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
    /// Where the models run: cpu, cuda or cuda:N (CUDA needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    /// Precision of the UNets and VAEs: f32 (the CPU default and fast path), f16, or bf16 (CUDA only).
    #[arg(long, default_value = "f32")]
    pub dtype: Precision,
    /// Memory the run may use (8G, 512M, bytes); default: MemAvailable from /proc/meminfo. A run whose estimate
    /// (printed by --dry-run) is larger is refused before anything is written.
    #[arg(long, value_parser = pipeline::memory::parse_size)]
    pub max_memory: Option<u64>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let cfg = PipelineConfig::load(&args.pipeline)?;
    let opts = RunOptions {
        input: args.input.clone(),
        output: args.output.clone(),
        shard: args.shard,
        resume: args.resume,
        limit: args.limit,
        strict: args.strict,
        threads: args.threads,
        progress: (!args.quiet).then(|| Arc::new(AugmentBars::new()) as Arc<dyn Progress>),
        compute: Compute {
            device: args.device,
            precision: args.dtype,
        },
        max_memory: args.max_memory,
        stop: None,
        fail: None,
    };
    if args.dry_run {
        let (plan, source) = pipeline::plan(&cfg, &args.pipeline, &opts)?;
        print!("{}", plan.describe(source.as_ref()));
        println!("dry run: nothing written");
        return Ok(());
    }
    let stop = stop_on_ctrl_c()?;
    let opts = RunOptions {
        stop: Some(Arc::clone(&stop)),
        ..opts
    };
    let s = match pipeline::run(&cfg, &args.pipeline, &opts) {
        Ok(s) => s,
        Err(Error::Cancelled(_)) if stop.load(Ordering::SeqCst) => {
            eprintln!(
                "interrupted: the dataset is not finished and nothing was moved into {}; the sampled units are \
                 kept in {}.\nTo finish, run the same command with --resume:\n  vadapt {}{}",
                args.output.display(),
                args.output.join(".vadapt").display(),
                std::env::args().skip(1).collect::<Vec<_>>().join(" "),
                if args.resume { "" } else { " --resume" }
            );
            std::process::exit(EXIT_INTERRUPTED);
        }
        // The error's own text already ends with its I/O cause: keep the cause out of the chain, or `{:#}` prints
        // "File too large (os error 27)" twice.
        Err(e) => {
            return Err(anyhow::anyhow!("{e}"))
                .with_context(|| format!("augmenting {}", args.input.display()))
        }
    };
    if s.already_complete {
        println!(
            "{} is already complete; nothing to do",
            args.output.display()
        );
        return Ok(());
    }
    println!(
        "wrote {}: {} episodes, {} frames ({} units sampled, {} reused), {} skipped, {:.1}s",
        args.output.display(),
        s.episodes_written,
        s.frames_written,
        s.units_sampled,
        s.units_reused,
        s.skipped.len(),
        s.wall_seconds
    );
    // The reasons go to stderr with the other warnings, at the end where they are seen.
    if let Some(summary) = pipeline::skips::summary(&s.skipped) {
        eprintln!("{summary}");
    }
    let workers: Vec<String> = s
        .worker_seconds
        .iter()
        .map(|(k, v)| format!("{k} {v:.2}s"))
        .collect();
    println!(
        "time per stage (summed over threads): {}",
        workers.join(", ")
    );
    Ok(())
}
