//! `vadapt sample-data`: procedural LanguageTable-like episodes (see `synth`) written as
//! LeRobot v3.0 (`DIR/lerobot`, cameras `observation.images.sim` and `observation.images.real`) and as
//! RLDS (`DIR/rlds`, LanguageTable layout: `steps/observation/rgb` = the real rendering, plus
//! `steps/observation/sim`).

use std::path::PathBuf;

use anyhow::Context;
use image::{imageops, RgbImage};
use indicatif::{ProgressBar, ProgressStyle};
use vadapt::io::lerobot::{LeRobotWriter, WriterOptions};
use vadapt::io::rlds::{RldsMapping, RldsWriteOptions, RldsWriter};
use vadapt::synth::{self, SampleGenerator, SampleOptions, REAL_KEY, SIM_KEY, STYLED_KEY};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Output directory (gets `lerobot/` and `rlds/`).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 4)]
    pub episodes: usize,
    /// Frames (steps) per episode, at 10 fps.
    #[arg(long, default_value_t = 30)]
    pub frames: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Rendering size HxW (LanguageTable's native size is 360x640).
    #[arg(long, default_value = "360x640")]
    pub size: String,
    /// Also write a contact sheet PNG of episode 0 (sim row above real row).
    #[arg(long)]
    pub preview: Option<PathBuf>,
    /// Add a styled camera (`observation.images.styled`): each episode in one named style (cartoon, claymation,
    /// wooden table, night, ...), its task saying which ("..., claymation style"). The demo prior's corpus.
    #[arg(long)]
    pub styles: bool,
    /// The styled camera in appearances no demo model saw instead (green felt, magenta light, spotlight; episode i
    /// in the (i mod 3)-th): held-out evaluation data (scripts/policy_benchmark.sh).
    #[arg(long, conflicts_with = "styles")]
    pub held_out_styles: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let size = synth::parse_size(&args.size)?;
    let options = SampleOptions {
        episodes: args.episodes,
        frames: args.frames,
        seed: args.seed,
        size,
        styled: args.styles,
        held_out: args.held_out_styles,
    };
    let styled = args.styles || args.held_out_styles;
    std::fs::create_dir_all(&args.out).with_context(|| format!("create {}", args.out.display()))?;
    let lerobot_root = args.out.join("lerobot");
    if lerobot_root.exists() {
        anyhow::bail!(
            "{} already exists; pick a new --out",
            lerobot_root.display()
        );
    }
    let mut lerobot = LeRobotWriter::create(
        &lerobot_root,
        synth::FPS,
        &synth::features_with(size, styled),
        WriterOptions::default(),
    )?;
    let mut mapping = RldsMapping::language_table();
    mapping
        .cameras
        .insert("steps/observation/rgb".into(), REAL_KEY.into());
    mapping
        .cameras
        .insert("steps/observation/sim".into(), SIM_KEY.into());
    if styled {
        mapping
            .cameras
            .insert("steps/observation/styled".into(), STYLED_KEY.into());
    }
    let mut rlds = RldsWriter::create(
        args.out.join("rlds"),
        RldsWriteOptions {
            mapping,
            ..Default::default()
        },
    )?;

    let bar = ProgressBar::new(args.episodes as u64);
    bar.set_style(ProgressStyle::with_template(
        "{msg} {bar:30} {pos}/{len} episodes {elapsed}<{eta}",
    )?);
    bar.set_message("sample-data");
    for ep in SampleGenerator::new(options) {
        let ep = ep?;
        if ep.index.0 == 0 {
            if let Some(path) = &args.preview {
                contact_sheet(
                    &ep.cameras[SIM_KEY].decode()?,
                    &ep.cameras[REAL_KEY].decode()?,
                )
                .save(path)
                .with_context(|| format!("write {}", path.display()))?;
            }
        }
        lerobot.save_episode(&ep)?;
        rlds.write_episode(&ep)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let summary = lerobot.finalize()?;
    let rlds_dir = rlds.finish()?;
    eprintln!(
        "wrote {} episodes ({} frames) to {} and {}",
        summary.episodes,
        summary.frames,
        summary.root.display(),
        rlds_dir.display()
    );
    Ok(())
}

/// Four frames spread over the episode: sim on top, real below.
fn contact_sheet(sim: &[RgbImage], real: &[RgbImage]) -> RgbImage {
    let n = sim.len().min(real.len());
    let Some(first) = sim.first() else {
        return RgbImage::new(1, 1);
    };
    let (w, h) = (first.width(), first.height());
    let picks: Vec<usize> = (0..4).map(|i| i * (n - 1) / 3).collect();
    let mut sheet = RgbImage::new(w * picks.len() as u32, h * 2);
    for (col, &t) in picks.iter().enumerate() {
        imageops::replace(&mut sheet, &sim[t], (col as u32 * w) as i64, 0);
        imageops::replace(&mut sheet, &real[t], (col as u32 * w) as i64, h as i64);
    }
    sheet
}
