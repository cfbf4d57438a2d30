//! `vadapt eval OUT --key K --reference-dataset DIR` without `--condition-key`: how closely one camera of OUT
//! agrees with a camera of DIR (the same key unless `--reference-key`), frame by frame: PSNR, SSIM, largest pixel
//! difference. Made to compare two runs of the same pipeline and seeds (GPU and CPU, `scripts/gpu_check.sh`), so
//! both datasets must hold the same episodes with the same frame counts and frame sizes; anything else is an error
//! naming the episode, not a partial comparison.

use anyhow::{bail, Context};
use image::RgbImage;
use serde::Serialize;
use vadapt::episode::EpisodeIndex;
use vadapt::eval::{agreement, psnr_of_mse, Agreement};
use vadapt::io::{open_dataset, EpisodeSource};
use vadapt::vision::resize::resize_rgb;

use super::eval::Args;

#[derive(Debug, Serialize)]
struct Report {
    dataset: String,
    key: String,
    reference_dataset: String,
    reference_key: String,
    episodes: Vec<(u64, Agreement)>,
    total: Total,
}

#[derive(Debug, Serialize)]
struct Total {
    episodes: usize,
    frames: usize,
    /// Over every pixel channel of every episode; `null` when all are equal.
    psnr: Option<f64>,
    /// Frame-weighted mean SSIM.
    ssim: f64,
    max_abs_diff: u8,
    differing_values: u64,
    identical: bool,
}

fn camera(
    ds: &dyn EpisodeSource,
    root: &std::path::Path,
    index: EpisodeIndex,
    key: &str,
) -> anyhow::Result<Vec<RgbImage>> {
    let ep = ds.read_episode(index)?;
    let frames = ep
        .cameras
        .get(key)
        .with_context(|| {
            format!(
                "{}: episode {} has no camera {key}",
                root.display(),
                index.0
            )
        })?
        .decode()?;
    Ok(frames)
}

/// Short list of episode indices for an error message.
fn listed(v: &[EpisodeIndex]) -> String {
    let head: Vec<String> = v.iter().take(8).map(|i| i.0.to_string()).collect();
    let more = if v.len() > 8 { ", ..." } else { "" };
    format!("{} episodes [{}{more}]", v.len(), head.join(", "))
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let Some(ref_root) = &args.reference_dataset else {
        bail!("--condition-key is required, unless --reference-dataset names a dataset to compare with");
    };
    let ref_key = args
        .reference_key
        .clone()
        .unwrap_or_else(|| args.key.clone());
    let ds = open_dataset(&args.dataset)?;
    let refs = open_dataset(ref_root)?;
    let limit = args.limit.unwrap_or(usize::MAX);
    let ours: Vec<EpisodeIndex> = ds.episode_indices().into_iter().take(limit).collect();
    let theirs: Vec<EpisodeIndex> = refs.episode_indices().into_iter().take(limit).collect();
    if ours != theirs {
        bail!(
            "{} holds {} and {} holds {}: a comparison needs the same episodes",
            args.dataset.display(),
            listed(&ours),
            ref_root.display(),
            listed(&theirs)
        );
    }
    if ours.is_empty() {
        bail!("{}: no episodes to compare", args.dataset.display());
    }
    let size = args
        .size
        .as_deref()
        .map(vadapt::synth::parse_size)
        .transpose()?;
    let fit = |v: Vec<RgbImage>| -> Vec<RgbImage> {
        match size {
            Some((h, w)) => v
                .into_iter()
                .map(|f| {
                    if f.dimensions() == (w, h) {
                        f
                    } else {
                        resize_rgb(&f, h, w)
                    }
                })
                .collect(),
            None => v,
        }
    };
    let mut episodes = Vec::new();
    for &index in &ours {
        let a = fit(camera(ds.as_ref(), &args.dataset, index, &args.key)?);
        let b = fit(camera(refs.as_ref(), ref_root, index, &ref_key)?);
        let where_ = || {
            format!(
                "episode {}: {} {} vs {} {}",
                index.0,
                args.dataset.display(),
                args.key,
                ref_root.display(),
                ref_key
            )
        };
        if a.len() != b.len() {
            bail!("{}: {} frames vs {}", where_(), a.len(), b.len());
        }
        let (sa, sb) = (
            a.first().map(RgbImage::dimensions),
            b.first().map(RgbImage::dimensions),
        );
        if sa != sb {
            bail!(
                "{}: frames of {:?} vs {:?} (width, height); pass --size to compare at one size",
                where_(),
                sa,
                sb
            );
        }
        episodes.push((index.0, agreement(&a, &b)));
    }
    let all = || episodes.iter().map(|(_, m)| m);
    let frames: usize = all().map(|m| m.frames).sum();
    let values: u64 = all().map(|m| m.values).sum();
    let mse = all().map(|m| m.mse * m.values as f64).sum::<f64>() / values.max(1) as f64;
    let total = Total {
        episodes: episodes.len(),
        frames,
        psnr: psnr_of_mse(mse),
        ssim: all().map(|m| m.ssim * m.frames as f64).sum::<f64>() / frames.max(1) as f64,
        max_abs_diff: all().map(|m| m.max_abs_diff).max().unwrap_or(0),
        differing_values: all().map(|m| m.differing_values).sum(),
        identical: all().all(|m| m.differing_values == 0),
    };
    let psnr = |p: Option<f64>| p.map_or("inf".to_string(), |x| format!("{x:.2}"));
    println!("| episodes | frames | PSNR dB | SSIM | max abs diff | differing values |");
    println!("| --- | --- | --- | --- | --- | --- |");
    println!(
        "| {} | {} | {} | {:.4} | {} | {} of {values} |",
        total.episodes,
        total.frames,
        psnr(total.psnr),
        total.ssim,
        total.max_abs_diff,
        total.differing_values
    );
    if let Some(path) = &args.json {
        let report = Report {
            dataset: args.dataset.display().to_string(),
            key: args.key.clone(),
            reference_dataset: ref_root.display().to_string(),
            reference_key: ref_key,
            episodes,
            total,
        };
        let text = serde_json::to_string_pretty(&report)? + "\n";
        vadapt::io::fs::write_atomic(path, text.as_bytes())?;
    }
    Ok(())
}
