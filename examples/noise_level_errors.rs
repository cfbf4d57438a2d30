//! Per-noise-level errors of a trained model on held-out clips of its training recipe: for t in 10..990, the
//! model's raw-output loss against its parameterization's target and the MSE of its x0 estimate, next to the
//! error of predicting zeros. A low average training loss can hide a model that is useless at mid noise levels,
//! where sampling needs it (docs/results.md).
//!
//!   cargo run --release --example noise_level_errors -- pipelines/train_edge_to_sim.toml models/demo/edge_to_sim
use candle_core::{Device, Tensor};
use std::path::Path;
use vadapt::model_dir::ModelDir;
use vadapt::models::Parameterization;
use vadapt::rng::NoiseRng;
use vadapt::schedulers::NoiseSchedule;
use vadapt::train::config::TrainConfig;
use vadapt::train::data::ClipSet;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() == 3 || args.len() == 4,
        "usage: noise_level_errors RECIPE.toml MODEL_DIR [TRAINING_CLIP_INDEX]"
    );
    let dev = Device::Cpu;
    let cfg = TrainConfig::from_file(Path::new(&args[1]))?;
    let model = ModelDir::load(Path::new(&args[2]), &dev)?;
    let param = model.scheduler.prediction_type;
    let data = ClipSet::load(&cfg)?;
    // A held-out clip, or (third argument) the first clip of that training entry: a model that does well there but
    // not on held-out clips has memorised rather than learned.
    let (clips, holdout) = match args.get(3) {
        Some(i) => (
            vec![vadapt::train::data::ClipRef {
                episode: i.parse()?,
                start: 0,
            }],
            false,
        ),
        None => data.sample_clips(1),
    };
    let batch = data.batch(&clips, holdout, &dev)?;
    let sched = NoiseSchedule::from_config(&model.scheduler);
    let prompt = if model.text_encoder.is_some() {
        batch.prompts[0].as_str()
    } else {
        ""
    };
    let (text, _) = model.embed(prompt, 1, &dev)?;
    // A latent model (vae/) denoises the VAE's scaled latents of the clip, as the trainer encodes them.
    let x0 = &match &model.vae {
        Some(vae) => vae.encode(&batch.video)?,
        None => batch.video.clone(),
    };
    let mse = |a: &Tensor, b: &Tensor| -> anyhow::Result<f32> {
        Ok((a - b)?.sqr()?.mean_all()?.to_scalar::<f32>()?)
    };
    let zeros = x0.zeros_like()?;
    println!(
        "model {} ({param:?}), {} clip: {}",
        args[2],
        if holdout { "held-out" } else { "training" },
        batch.prompts[0]
    );
    println!("| t | abar | output loss | x0 MSE | x0 MSE of zeros |");
    println!("| --- | --- | --- | --- | --- |");
    let mut rng = NoiseRng::new(5);
    for &t in &[10usize, 100, 300, 500, 700, 900, 990] {
        let noise = rng.randn(x0.shape().clone(), &dev)?;
        let xt = sched.add_noise(x0, &noise, &[t])?;
        let input = match &batch.channels {
            Some(c) => Tensor::cat(&[&xt, c], 1)?,
            None => xt.clone(),
        };
        let out = model
            .unet
            .forward(&input, &Tensor::from_vec(vec![t as f32], 1, &dev)?, &text)?;
        let a = sched.alpha_bar(t) as f64;
        let (target, x0_hat) = match param {
            Parameterization::Epsilon => (
                noise.clone(),
                ((&xt - (&out * (1.0 - a).sqrt())?)? / a.sqrt())?,
            ),
            Parameterization::VPrediction => (
                sched.get_velocity(x0, &noise, &[t])?,
                ((&xt * a.sqrt())? - (&out * (1.0 - a).sqrt())?)?,
            ),
            Parameterization::Sample => (x0.clone(), out.clone()),
        };
        println!(
            "| {t} | {a:.4} | {:.4} | {:.4} | {:.4} |",
            mse(&out, &target)?,
            mse(&x0_hat, x0)?,
            mse(&zeros, x0)?
        );
    }
    Ok(())
}
