//! `vadapt convert IN OUT [--to lerobot|rlds] [--storage video|images]`: RLDS -> LeRobot v3.0, LeRobot v2.1 -> v3.0, LeRobot -> RLDS.
//! Frames are re-encoded; every non-image column is carried over bit-exact (RLDS sources get fresh LeRobot
//! indices, since lerobot needs `episode_index` from 0 and `index` equal to the row number).

use std::path::PathBuf;

use anyhow::{bail, Context};
use vadapt::io::lerobot::writer::Numbering;
use vadapt::io::lerobot::{CameraStorage, LeRobotWriter, WriterOptions};
use vadapt::io::open_dataset;
use vadapt::io::rlds::{RldsWriteOptions, RldsWriter};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// LeRobot v3.0
    Lerobot,
    /// RLDS TFRecord in the LanguageTable layout
    Rlds,
}

/// How a LeRobot output stores its cameras.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Storage {
    /// One mp4 per camera (lerobot `dtype: "video"`; needs video I/O)
    Video,
    /// PNG frames in the data parquet (lerobot `dtype: "image"`; lossless, no FFmpeg)
    Images,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Input dataset (LeRobot root or RLDS builder directory).
    pub input: PathBuf,
    /// Output directory (must not exist yet).
    pub output: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "lerobot")]
    pub to: Target,
    /// LeRobot output only: the cameras as mp4 videos (default) or as PNG images in the data parquet.
    #[arg(long, value_enum)]
    pub storage: Option<Storage>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.to == Target::Rlds && args.storage.is_some() {
        bail!("--storage applies to --to lerobot (RLDS stores JPEG frames)");
    }
    if args.output.exists() {
        bail!(
            "{}: output already exists; choose a new directory",
            args.output.display()
        );
    }
    // A failed conversion removes what it wrote: no half dataset is left to be mistaken for a whole one.
    let result = convert(&args);
    if result.is_err() && args.output.exists() {
        let _ = std::fs::remove_dir_all(&args.output);
    }
    result
}

fn convert(args: &Args) -> anyhow::Result<()> {
    let ds = open_dataset(&args.input)?;
    let indices = ds.episode_indices();
    let bar = super::progress_bar(indices.len() as u64, "converting");
    match args.to {
        Target::Lerobot => {
            let options = WriterOptions {
                numbering: if ds.format() == "rlds" {
                    Numbering::Reindex
                } else {
                    Numbering::Source
                },
                storage: match args.storage {
                    Some(Storage::Images) => CameraStorage::Images,
                    Some(Storage::Video) | None => CameraStorage::Video,
                },
                ..WriterOptions::default()
            };
            let mut writer = LeRobotWriter::create(&args.output, ds.fps(), ds.features(), options)?;
            for index in indices {
                writer
                    .save_episode(&ds.read_episode(index)?)
                    .with_context(|| {
                        format!("{}: writing episode {index}", args.input.display())
                    })?;
                bar.inc(1);
            }
            let summary = writer.finalize()?;
            bar.finish_and_clear();
            println!(
                "wrote {}: {} episodes, {} frames, {} tasks, {} data and {} video files",
                args.output.display(),
                summary.episodes,
                summary.frames,
                summary.tasks,
                summary.data_files.len(),
                summary.video_files.len()
            );
        }
        Target::Rlds => {
            let mut writer = RldsWriter::create(&args.output, RldsWriteOptions::default())?;
            for index in indices {
                writer
                    .write_episode(&ds.read_episode(index)?)
                    .with_context(|| {
                        format!("{}: writing episode {index}", args.input.display())
                    })?;
                bar.inc(1);
            }
            let dir = writer.finish()?;
            bar.finish_and_clear();
            println!("wrote {}", dir.display());
        }
    }
    Ok(())
}
