//! `vadapt merge OUT PART...`: join the outputs of `vadapt augment --shard i/n` runs into one dataset, identical to
//! what a single `vadapt augment` run writes.

use std::path::PathBuf;

use vadapt::pipeline::Progress;

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  vadapt merge out/aug out/part-0 out/part-1   # parts made with --shard 0/2 and --shard 1/2"
)]
pub struct Args {
    /// Merged output directory (must not exist or be empty).
    pub out: PathBuf,
    /// The shard outputs, every shard of one run exactly once, in any order.
    #[arg(required = true)]
    pub parts: Vec<PathBuf>,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let progress = (!args.quiet).then(|| {
        std::sync::Arc::new(super::progress::AugmentBars::new()) as std::sync::Arc<dyn Progress>
    });
    let s = vadapt::pipeline::merge::merge(&args.out, &args.parts, progress)?;
    println!(
        "merged {} parts into {}: {} episodes, {} frames, {} skipped",
        args.parts.len(),
        args.out.display(),
        s.episodes_written,
        s.frames_written,
        s.skipped.len()
    );
    Ok(())
}
