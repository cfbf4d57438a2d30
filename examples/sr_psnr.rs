//! Does a super-resolution stage help? On the first clip (one window of the model's frames) of each held-out
//! episode of its training recipe, the stage's output against the ground truth, next to its input (the truth through `model.low_res` and back up, what a cascade feeds it) against
//! the same truth: PSNR and SSIM of both. A stage that only copies its input scores the same as the input; one that
//! sharpens scores higher.
//!
//!   cargo run --release --example sr_psnr -- pipelines/train_sr_48x80.toml models/demo/sr_48x80 [STEPS]
use candle_core::Device;
use std::path::Path;
use vadapt::eval::{psnr, ssim};
use vadapt::model_dir::ModelDir;
use vadapt::sampling::TargetSampler;
use vadapt::train::config::TrainConfig;
use vadapt::train::data::ClipSet;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        (3..=4).contains(&args.len()),
        "usage: sr_psnr RECIPE.toml MODEL_DIR [STEPS]"
    );
    let dev = Device::Cpu;
    let cfg = TrainConfig::from_file(Path::new(&args[1]))?;
    anyhow::ensure!(
        cfg.model.low_res.is_some(),
        "{}: not a super-resolution recipe (no model.low_res)",
        args[1]
    );
    let model = ModelDir::load(Path::new(&args[2]), &dev)?;
    let steps: usize = args.get(3).map_or(Ok(20), |s| s.parse())?;
    let data = ClipSet::load(&cfg)?;
    anyhow::ensure!(!data.holdout.is_empty(), "the recipe holds out no episode");
    let sampler = TargetSampler::alone("sr", &model, steps, 0);
    let (mut sum_in, mut sum_out, mut ssim_in, mut ssim_out) = (0.0, 0.0, 0.0, 0.0);
    for (i, ep) in data.holdout.iter().enumerate() {
        // One window per episode: enough clips to compare, cheap enough to run on 2 CPU cores beside training.
        let f = cfg.model.frames.min(ep.target.len());
        let (target, low_res) = (&ep.target[..f], &ep.low_res[..f]);
        let out = sampler.sample_episode_checked(
            &ep.condition[..f],
            Some(low_res),
            cfg.seed,
            i as u64,
            &dev,
            &|_| Ok(()),
        )?;
        let (p_in, p_out) = (psnr(low_res, target), psnr(&out, target));
        let (s_in, s_out) = (ssim(low_res, target), ssim(&out, target));
        println!(
            "{}: {} frames  PSNR input {p_in:.2} dB -> output {p_out:.2} dB   SSIM {s_in:.4} -> {s_out:.4}",
            ep.name,
            out.len()
        );
        sum_in += p_in;
        sum_out += p_out;
        ssim_in += s_in;
        ssim_out += s_out;
    }
    let n = data.holdout.len() as f64;
    println!(
        "mean over {n} held-out clips: PSNR input (upsampled low_res) {:.2} dB, SR output {:.2} dB; SSIM {:.4} -> {:.4}",
        sum_in / n,
        sum_out / n,
        ssim_in / n,
        ssim_out / n
    );
    Ok(())
}
