//! Does a text-conditioned prior know its style words? For each style, the prior's x0 estimate from pure noise at
//! a high timestep (what the first sampling step sees), as a mean colour, next to the mean colour of that style's
//! rendering of a sample scene; and the spread of those estimates across styles.
//!
//!   cargo run --release --example prior_style_probe -- MODEL_DIR [T]
use candle_core::{Device, Tensor};
use std::path::Path;
use vadapt::model_dir::ModelDir;
use vadapt::rng::NoiseRng;
use vadapt::synth::Style;

/// The mean of each channel of a (1, 3, f, h, w) video.
fn mean_rgb(video: &Tensor) -> anyhow::Result<Vec<f32>> {
    Ok(video
        .mean_keepdim(4)?
        .mean_keepdim(3)?
        .mean_keepdim(2)?
        .flatten_all()?
        .to_vec1()?)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(args.len() >= 2, "usage: prior_style_probe MODEL_DIR [T]");
    let dev = Device::Cpu;
    let model = ModelDir::load(Path::new(&args[1]), &dev)?;
    let t: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(901);
    let (f, h, w) = (8, 24, 40);
    let mut rng = NoiseRng::new(7);
    let noise = rng.randn((1, 3, f, h, w), &dev)?;
    let tt = Tensor::from_vec(vec![t as f32], 1, &dev)?;
    let mut means = Vec::new();
    let mut err = 0f32;
    let mut boards = Vec::new();
    for style in Style::ALL {
        let prompt = style.prompt("push the red cube to the blue star");
        let (text, _) = model.embed(&prompt, 1, &dev)?;
        let out = model.unet.forward(&noise, &tt, &text)?;
        let m = mean_rgb(&out)?;
        // The style's empty board (most of every frame), in the model's [-1, 1] range.
        let board = style.apply(&image::RgbImage::from_pixel(
            w as u32,
            h as u32,
            image::Rgb([205, 200, 185]),
        ));
        let mut b = [0f32; 3];
        for p in board.pixels() {
            for c in 0..3 {
                b[c] += p.0[c] as f32 / 127.5 - 1.0;
            }
        }
        let b = b.map(|v| v / (w * h) as f32);
        println!(
            "{:>16}: x0 mean rgb {:+.2} {:+.2} {:+.2}   (its empty board: {:+.2} {:+.2} {:+.2})",
            style.name(),
            m[0],
            m[1],
            m[2],
            b[0],
            b[1],
            b[2]
        );
        err += (0..3).map(|c| (m[c] - b[c]).powi(2)).sum::<f32>() / 3.0;
        boards.push(b);
        means.push(m);
    }
    let (_, uncond) = model.embed("", 1, &dev)?;
    let out = model.unet.forward(&noise, &tt, &uncond)?;
    let m = mean_rgb(&out)?;
    println!(
        "{:>16}: x0 mean rgb {:+.2} {:+.2} {:+.2}",
        "(unconditional)", m[0], m[1], m[2]
    );
    let n = means.len() as f32;
    let spread: f32 = (0..3)
        .map(|c| {
            let mu = means.iter().map(|m| m[c]).sum::<f32>() / n;
            means.iter().map(|m| (m[c] - mu).powi(2)).sum::<f32>() / n
        })
        .sum::<f32>()
        .sqrt();
    println!("spread of the per-style means (rms over rgb): {spread:.3}");
    // The baseline: one colour for every prompt, the average board (what a model that ignores the words should
    // learn at pure noise).
    let avg: Vec<f32> = (0..3)
        .map(|c| boards.iter().map(|b| b[c]).sum::<f32>() / n)
        .collect();
    let base: f32 = boards
        .iter()
        .map(|b| (0..3).map(|c| (b[c] - avg[c]).powi(2)).sum::<f32>() / 3.0)
        .sum::<f32>()
        / n;
    println!(
        "rms distance of each style's mean to its board colour: {:.3} (one average colour for all: {:.3})",
        (err / n).sqrt(),
        base.sqrt()
    );
    Ok(())
}
