//! `vadapt preview OUT`: a PNG contact sheet of an augmented dataset (rows: source, edges, each target; columns:
//! frames over time) and optionally a side-by-side mp4.

use std::path::PathBuf;

use anyhow::Context;
use vadapt::pipeline::preview::{contact_sheet, preview_rows, side_by_side};

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  vadapt preview out/aug --episode 0 --columns 8 --mp4 out/aug_preview.mp4"
)]
pub struct Args {
    /// An output of `vadapt augment`.
    pub dataset: PathBuf,
    /// Source episode index.
    #[arg(long, default_value_t = 0)]
    pub episode: u64,
    /// Frames per row.
    #[arg(long, default_value_t = 8)]
    pub columns: usize,
    /// PNG path (default: DATASET/preview.png).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also write the rows side by side as an mp4.
    #[arg(long)]
    pub mp4: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let rows = preview_rows(&args.dataset, args.episode)?;
    let sheet = contact_sheet(&rows, args.columns);
    let png = args.out.unwrap_or_else(|| args.dataset.join("preview.png"));
    sheet
        .save(&png)
        .with_context(|| format!("writing {}", png.display()))?;
    let labels: Vec<&str> = rows.iter().map(|(l, _)| l.as_str()).collect();
    println!("wrote {} (rows: {})", png.display(), labels.join(", "));
    if let Some(mp4) = args.mp4 {
        let fps = vadapt::io::open_dataset(&args.dataset)?.fps();
        side_by_side(&rows, &mp4, fps)?;
        println!("wrote {}", mp4.display());
    }
    Ok(())
}
