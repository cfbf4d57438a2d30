//! `vadapt train --config pipelines/train_*.toml`: train a small task model (or the demo prior).

use std::path::PathBuf;

use anyhow::bail;
use vadapt::train::trainer::latest_checkpoint;

use super::progress::{styled, Bar};
use vadapt::train::{TrainConfig, Trainer};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The recipe (TOML; see `vadapt::train::config`).
    #[arg(long)]
    pub config: PathBuf,
    /// Run directory (overrides the recipe's `output`).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Total steps (overrides the recipe's `steps`).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Continue from the newest checkpoint in the run directory.
    #[arg(long)]
    pub resume: bool,
    /// Stop (with a checkpoint) after this many steps of this invocation, e.g. to split a run across jobs.
    #[arg(long)]
    pub stop_after: Option<usize>,
    /// Where training runs: cpu, cuda or cuda:N (CUDA needs a build with `--features cuda`). F32 throughout.
    #[arg(long, default_value = "cpu")]
    pub device: vadapt::compute::DeviceSpec,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut config = TrainConfig::from_file(&args.config)?;
    if let Some(o) = args.output {
        config.output = o;
    }
    if let Some(s) = args.steps {
        config.steps = s;
    }
    let device = args.device.open()?;
    let existing = latest_checkpoint(&config.output)?;
    let mut trainer = match (&existing, args.resume) {
        (Some(_), true) => Trainer::resume_or_new(config, &device)?,
        (Some(ckpt), false) => bail!(
            "{} already holds a run (checkpoint {}); pass --resume to continue it or choose another --output",
            config.output.display(),
            ckpt.display()
        ),
        (None, _) => Trainer::new(config, &device)?,
    };
    let start = trainer.step;
    eprintln!(
        "training {} clips' worth of episodes ({} train, {} held out) from step {start} to {}",
        trainer.data.train.len() + trainer.data.holdout.len(),
        trainer.data.train.len(),
        trainer.data.holdout.len(),
        trainer.config.steps
    );
    let bar = styled(
        trainer.config.steps as u64,
        "{prefix} [{bar:30}] {pos}/{len} {per_sec} ({eta}) {msg}",
    );
    bar.set_message("train");
    bar.set_prefix("train");
    let stop_after = args.stop_after;
    let mut last = None;
    trainer.run(&Bar(bar), |step, stats| {
        last = Some(*stats);
        stop_after.is_none_or(|n| step - start < n)
    })?;
    let out = &trainer.config.output;
    match last {
        Some(s) => println!(
            "step {}: loss {:.5}; model in {}, loss curve {}",
            trainer.step,
            s.loss,
            out.join("model").display(),
            out.join("loss.png").display()
        ),
        None => println!("nothing to do: the run is already at step {}", trainer.step),
    }
    Ok(())
}
