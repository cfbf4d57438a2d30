//! `vadapt regenerate OUT --episode K --output DEST`: sample one episode of an expanded augment output again, alone,
//! from its record in `OUT/meta/augmentation.json` (see `vadapt::pipeline::regenerate`).

use std::path::PathBuf;

use vadapt::compute::{Compute, DeviceSpec, Precision};
use vadapt::pipeline::regenerate::regenerate;

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  vadapt regenerate out/dr --episode 5 --output out/dr_episode5   # the same frames as out/dr's episode 5"
)]
pub struct Args {
    /// An expanded output of `vadapt augment` (its meta/augmentation.json records every episode's draws).
    pub dataset: PathBuf,
    /// Output episode index (its entry in meta/augmentation.json `episodes`).
    #[arg(long)]
    pub episode: usize,
    /// Where the one-episode dataset goes (must not exist).
    #[arg(long)]
    pub output: PathBuf,
    /// Where the models run: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    /// Precision of the UNets and VAEs (the run's, for the same frames).
    #[arg(long, default_value = "f32")]
    pub dtype: Precision,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let compute = Compute {
        device: args.device,
        precision: args.dtype,
    };
    let r = regenerate(&args.dataset, args.episode, &args.output, compute)?;
    let d = &r.draw;
    let mut drawn = vec![format!("variant {}", d.variant)];
    if let Some(p) = &d.prompt {
        drawn.push(format!("prompt {p:?}"));
    }
    if let Some(p) = &d.prior_prompt {
        drawn.push(format!("prior prompt {p:?}"));
    }
    if let Some(lam) = d.prior_strength {
        drawn.push(format!("prior strength {lam}"));
    }
    drawn.push(format!("guidance {}", d.guidance));
    println!(
        "wrote {}: episode {} of {} (source episode {}, target {}, {})",
        args.output.display(),
        args.episode,
        args.dataset.display(),
        r.source_episode,
        r.target,
        drawn.join(", ")
    );
    Ok(())
}
