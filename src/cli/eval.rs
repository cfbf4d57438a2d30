//! `vadapt eval`: metrics of an augmented camera against the condition it was made from and, where one exists, a
//! paired ground truth. Markdown on stdout; `--json` writes every number. Without `--condition-key`, but with
//! `--reference-dataset`, it compares the camera with another dataset's frame by frame instead (`eval_compare`).

use std::path::PathBuf;

use anyhow::{bail, Context};
use image::RgbImage;
use serde::Serialize;
use vadapt::eval::{frame_feature, frechet_distance, video_metrics, VideoMetrics};
use vadapt::io::open_dataset;
use vadapt::vision::resize::resize_rgb;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The dataset holding the output camera.
    pub dataset: PathBuf,
    /// The camera to evaluate (e.g. `observation.images.sim_aug`).
    #[arg(long)]
    pub key: String,
    /// The camera the output was conditioned on (edge consistency is measured against its edges). Leave it out,
    /// with `--reference-dataset`, to compare `--key` with the reference dataset's camera frame by frame (PSNR,
    /// SSIM, max abs pixel difference; the same episodes, frame counts and sizes are required).
    #[arg(long)]
    pub condition_key: Option<String>,
    /// A paired ground-truth camera (same motion, target rendering): enables PSNR, SSIM, histogram and Fréchet.
    /// When comparing two datasets: the reference dataset's camera (default: `--key`).
    #[arg(long)]
    pub reference_key: Option<String>,
    /// Read the condition and reference cameras from this dataset instead (same episode indices); without
    /// `--condition-key`, the dataset to compare `--key` with.
    #[arg(long)]
    pub reference_dataset: Option<PathBuf>,
    /// Evaluate at this size HxW (default: the output camera's size).
    #[arg(long)]
    pub size: Option<String>,
    /// Only the first N episodes.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Write every number as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Report {
    dataset: String,
    key: String,
    condition_key: String,
    reference_key: Option<String>,
    episodes: Vec<(u64, VideoMetrics)>,
    mean: Summary,
}

#[derive(Debug, Default, Serialize)]
struct Summary {
    edge_correlation: f64,
    psnr: Option<f64>,
    ssim: Option<f64>,
    flicker: f64,
    reference_flicker: Option<f64>,
    histogram_distance: Option<f64>,
    frechet_distance: Option<f64>,
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 {
        f64::NAN
    } else {
        s / n as f64
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let Some(condition_key) = args.condition_key.clone() else {
        return super::eval_compare::run(&args);
    };
    let ds = open_dataset(&args.dataset)?;
    let refs = match &args.reference_dataset {
        Some(p) => Some(open_dataset(p)?),
        None => None,
    };
    let size = args
        .size
        .as_deref()
        .map(vadapt::synth::parse_size)
        .transpose()?;
    let mut episodes = Vec::new();
    let (mut out_feats, mut ref_feats) = (Vec::new(), Vec::new());
    for index in ds
        .episode_indices()
        .into_iter()
        .take(args.limit.unwrap_or(usize::MAX))
    {
        let ep = ds.read_episode(index)?;
        let other = match &refs {
            Some(r) => Some(r.read_episode(index)?),
            None => None,
        };
        let side = other.as_ref().unwrap_or(&ep);
        let frames = |e: &vadapt::episode::Episode, key: &str| -> anyhow::Result<Vec<RgbImage>> {
            e.cameras
                .get(key)
                .with_context(|| {
                    format!(
                        "{}: episode {} has no camera {key}",
                        args.dataset.display(),
                        index.0
                    )
                })?
                .decode()
                .map_err(Into::into)
        };
        let output = frames(&ep, &args.key)?;
        let Some(first) = output.first() else {
            bail!(
                "{}: episode {} has no frames in {}",
                args.dataset.display(),
                index.0,
                args.key
            );
        };
        let (h, w) = size.unwrap_or((first.height(), first.width()));
        let fit = |v: Vec<RgbImage>| -> Vec<RgbImage> {
            v.into_iter()
                .map(|f| {
                    if f.dimensions() == (w, h) {
                        f
                    } else {
                        resize_rgb(&f, h, w)
                    }
                })
                .collect()
        };
        let output = fit(output);
        let condition = fit(frames(side, &condition_key)?);
        let reference = match &args.reference_key {
            Some(k) => Some(fit(frames(side, k)?)),
            None => None,
        };
        let n = output
            .len()
            .min(condition.len())
            .min(reference.as_ref().map_or(usize::MAX, |r| r.len()));
        let m = video_metrics(
            &output[..n],
            &condition[..n],
            reference.as_deref().map(|r| &r[..n]),
        );
        out_feats.extend(output[..n].iter().map(frame_feature));
        if let Some(r) = &reference {
            ref_feats.extend(r[..n].iter().map(frame_feature));
        }
        episodes.push((index.0, m));
    }
    if episodes.is_empty() {
        bail!("{}: no episodes to evaluate", args.dataset.display());
    }
    let ms = || episodes.iter().map(|(_, m)| m);
    let opt = |f: fn(&VideoMetrics) -> Option<f64>| {
        let v: Vec<f64> = ms().filter_map(f).filter(|x| x.is_finite()).collect();
        (!v.is_empty()).then(|| mean(v.into_iter()))
    };
    let summary = Summary {
        edge_correlation: mean(ms().map(|m| m.edge_correlation)),
        psnr: opt(|m| m.psnr),
        ssim: opt(|m| m.ssim),
        flicker: mean(ms().map(|m| m.flicker)),
        reference_flicker: opt(|m| m.reference_flicker),
        histogram_distance: opt(|m| m.histogram_distance),
        frechet_distance: (!ref_feats.is_empty()).then(|| frechet_distance(&out_feats, &ref_feats)),
    };
    let f = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |x| format!("{x:.p$}"));
    println!("| episodes | edge corr. | PSNR dB | SSIM | flicker (ref) | hist. dist. | Fréchet |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    println!(
        "| {} | {:.3} | {} | {} | {:.2} ({}) | {} | {} |",
        episodes.len(),
        summary.edge_correlation,
        f(summary.psnr, 2),
        f(summary.ssim, 3),
        summary.flicker,
        f(summary.reference_flicker, 2),
        f(summary.histogram_distance, 3),
        f(summary.frechet_distance, 3)
    );
    if let Some(path) = &args.json {
        let report = Report {
            dataset: args.dataset.display().to_string(),
            key: args.key.clone(),
            condition_key,
            reference_key: args.reference_key.clone(),
            episodes,
            mean: summary,
        };
        let text = serde_json::to_string_pretty(&report)? + "\n";
        vadapt::io::fs::write_atomic(path, text.as_bytes())?;
    }
    Ok(())
}
