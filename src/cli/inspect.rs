//! `vadapt inspect DS [--json]`: format, episodes, keys, shapes, fps and tasks of a dataset.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use serde::Serialize;
use vadapt::io::open_dataset;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Dataset: a LeRobot root (v2.1 / v3.0) or an RLDS builder directory.
    pub dataset: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Run every check over every episode (metadata cross-checks, and every camera decoded against its declared
    /// size and the episode's rows), report each failure and exit non-zero if any failed.
    #[arg(long)]
    pub check: bool,
}

#[derive(Debug, Serialize)]
struct FeatureSummary {
    dtype: String,
    shape: Vec<usize>,
}

#[derive(Debug, Serialize)]
struct Summary {
    path: String,
    format: String,
    fps: f64,
    episodes: usize,
    frames: usize,
    min_episode_frames: usize,
    max_episode_frames: usize,
    features: BTreeMap<String, FeatureSummary>,
    camera_keys: Vec<String>,
    /// Distinct tasks with their episode counts.
    tasks: BTreeMap<String, usize>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let ds = open_dataset(&args.dataset)?;
    let indices = ds.episode_indices();
    let bar = super::progress_bar(indices.len() as u64, "reading episodes");
    let (mut frames, mut min_len, mut max_len) = (0usize, usize::MAX, 0usize);
    let mut tasks: BTreeMap<String, usize> = BTreeMap::new();
    let mut camera_keys = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    for index in &indices {
        let ep = if args.check {
            match check_episode(ds.as_ref(), *index) {
                Ok(ep) => ep,
                Err(e) => {
                    failures.push(e.to_string());
                    bar.inc(1);
                    continue;
                }
            }
        } else {
            ds.read_episode(*index)?
        };
        frames += ep.len();
        min_len = min_len.min(ep.len());
        max_len = max_len.max(ep.len());
        *tasks.entry(ep.task.clone()).or_default() += 1;
        if camera_keys.is_empty() {
            camera_keys = ep.cameras.keys().cloned().collect();
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let summary = Summary {
        path: args.dataset.display().to_string(),
        format: ds.format().to_string(),
        fps: ds.fps(),
        episodes: indices.len(),
        frames,
        min_episode_frames: if min_len == usize::MAX { 0 } else { min_len },
        max_episode_frames: max_len,
        features: ds
            .features()
            .iter()
            .map(|(k, f)| {
                (
                    k.clone(),
                    FeatureSummary {
                        dtype: f.dtype.clone(),
                        shape: f.shape.clone(),
                    },
                )
            })
            .collect(),
        camera_keys,
        tasks,
    };
    print_summary(&summary, args.json)?;
    if !args.check {
        return Ok(());
    }
    for f in &failures {
        eprintln!("check failed: {f}");
    }
    if failures.is_empty() {
        eprintln!("checked {} episodes: every check passed", indices.len());
        return Ok(());
    }
    anyhow::bail!(
        "{} of {} episodes failed the checks; the first: {}",
        failures.len(),
        indices.len(),
        failures[0]
    )
}

/// Read one episode and decode every camera: the metadata cross-checks run in `read_episode`, the declared sizes
/// are checked by each frame source's decode, and the frame count against the rows here.
fn check_episode(
    ds: &dyn vadapt::io::EpisodeSource,
    index: vadapt::episode::EpisodeIndex,
) -> vadapt::Result<vadapt::episode::Episode> {
    use vadapt::{Error, Location};
    let ep = ds.read_episode(index)?;
    for (key, cam) in &ep.cameras {
        let frames = cam.decode().map_err(|e| e.in_episode(index.0))?;
        if frames.len() != ep.len() {
            return Err(Error::invalid(
                Location::none().episode(index.0).field(key.clone()),
                format!("{} frames decoded for {} rows", frames.len(), ep.len()),
            ));
        }
    }
    Ok(ep)
}

fn print_summary(summary: &Summary, json: bool) -> anyhow::Result<()> {
    // Errors writing stdout (a closed pipe) are returned, not panicked on: main treats BrokenPipe as success.
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&summary)?)?;
        return Ok(());
    }
    writeln!(out, "{}", summary.path)?;
    writeln!(out, "  format    {}", summary.format)?;
    writeln!(out, "  fps       {}", summary.fps)?;
    writeln!(
        out,
        "  episodes  {} ({} frames, {}..{} per episode)",
        summary.episodes, summary.frames, summary.min_episode_frames, summary.max_episode_frames
    )?;
    writeln!(out, "  features")?;
    for (k, f) in &summary.features {
        writeln!(out, "    {k:<44} {:<8} {:?}", f.dtype, f.shape)?;
    }
    writeln!(out, "  tasks ({})", summary.tasks.len())?;
    for (t, n) in summary.tasks.iter().take(20) {
        writeln!(out, "    {n:>5} x {t}")?;
    }
    if summary.tasks.len() > 20 {
        writeln!(out, "    ... and {} more", summary.tasks.len() - 20)?;
    }
    Ok(())
}
