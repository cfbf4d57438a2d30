//! `vadapt sample`: one-off generation from a single model, or a Video Adapter composition of a small model and
//! a prior, conditioned on the edges of a video. Argument parsing and video I/O around `sampling::ClipSampler`.
//!
//! ```text
//! vadapt sample --model DIR --prompt "push the red star" --edges clip.mp4 --steps 20 --guidance 3 --seed 0 --out out.mp4
//! vadapt sample --adapter DIR --prior DIR --lam 0.4 --prompt "..., claymation style" --edges clip.mp4 --out out.mp4
//! ```

use std::path::PathBuf;

use anyhow::{bail, Context};
use candle_core::Device;
use image::RgbImage;
use vadapt::error::Location;
use vadapt::io::video::{decode_all, encode_frames, EncoderOptions, VideoCodec};
use vadapt::model_dir::ModelDir;
use vadapt::sampling::{ClipSampler, ComposeSettings, ModelUse, Rule};
use vadapt::vision::resize::resize_rgb;

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  vadapt sample --model models/demo/edge_to_sim --prompt \"push the red star\" --edges clip.mp4 --out sim.mp4\n  vadapt sample --adapter models/demo/edge_to_real --prior models/demo/prior --lam 0.4 --prompt \"claymation\" --edges clip.mp4 --out clay.mp4"
)]
pub struct Args {
    /// A single model directory (diffusers UNet3D, optional text_encoder/, scheduler/, vadapt.json).
    #[arg(long, conflicts_with_all = ["adapter", "prior"], required_unless_present = "adapter")]
    pub model: Option<PathBuf>,
    /// The small task model of a composition.
    #[arg(long, requires = "prior")]
    pub adapter: Option<PathBuf>,
    /// The prior of a composition.
    #[arg(long, requires = "adapter")]
    pub prior: Option<PathBuf>,
    /// Prior strength λ.
    #[arg(long, default_value_t = 0.4)]
    pub lam: f32,
    /// Composition rule.
    #[arg(long, value_enum, default_value = "composed")]
    pub rule: RuleArg,
    /// The prior is used for t >= this.
    #[arg(long, default_value_t = 100)]
    pub compose_min_t: usize,
    /// Text prompt (empty for models without a text encoder).
    #[arg(long, default_value = "")]
    pub prompt: String,
    /// Prompt of the prior (default: --prompt).
    #[arg(long)]
    pub prior_prompt: Option<String>,
    /// Video whose Sobel edges (and first frame) condition the sample; its first `frames` frames are used.
    #[arg(long)]
    pub edges: Option<PathBuf>,
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Classifier-free guidance weight.
    #[arg(long, default_value_t = 3.0)]
    pub guidance: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output mp4.
    #[arg(long)]
    pub out: PathBuf,
    /// Also write a PNG strip of the frames next to the video.
    #[arg(long)]
    pub png: bool,
}

/// `--rule`: the library's [`Rule`] as the command line spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RuleArg {
    /// Video Adapter: small model + λ · prior inside the small model's guidance (the paper's rule).
    Composed,
    /// Inverse adaptation: the prior leads (guidance around the prior), the small model steers.
    Inverse,
    /// The paper's weaker baseline, for ablations: (1 − λ) · cfg(small) + λ · cfg(prior).
    #[value(name = "cfg_mix", alias = "cfg-mix")]
    CfgMix,
}

impl From<RuleArg> for Rule {
    fn from(r: RuleArg) -> Self {
        match r {
            RuleArg::Composed => Rule::Composed,
            RuleArg::Inverse => Rule::Inverse,
            RuleArg::CfgMix => Rule::CfgMix,
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let device = Device::Cpu;
    let small_dir = args
        .model
        .as_ref()
        .or(args.adapter.as_ref())
        .context("--model or --adapter is required")?;
    let small = ModelDir::load(small_dir, &device)?;
    let prior = args
        .prior
        .as_ref()
        .map(|p| ModelDir::load(p, &device))
        .transpose()?;
    let (frames, h, w) = (small.meta.frames, small.meta.height, small.meta.width);

    // The conditioning video's first `frames` frames, at the model resolution.
    let condition = match &args.edges {
        Some(path) => {
            let video = decode_all(path)?;
            if video.len() < frames {
                bail!(
                    "{}: has {} frames, the model needs {frames}",
                    path.display(),
                    video.len()
                );
            }
            let clip: Vec<RgbImage> = video
                .iter()
                .take(frames)
                .map(|f| resize_rgb(&f.image, h as u32, w as u32))
                .collect();
            Some(clip)
        }
        None => None,
    };
    let sampler = ClipSampler {
        small: ModelUse {
            model: &small,
            prompt: args.prompt.clone(),
        },
        priors: prior
            .iter()
            .map(|p| {
                let prompt = args.prior_prompt.as_deref().unwrap_or(&args.prompt);
                let model = ModelUse {
                    model: p,
                    prompt: prompt.to_string(),
                };
                (model, args.lam)
            })
            .collect(),
        settings: ComposeSettings {
            rule: args.rule.into(),
            guidance: args.guidance,
            compose_min_t: args.compose_min_t,
        },
        steps: args.steps,
        priors_at: Location::none().field("--prior"),
    };
    let clip = sampler.sample(condition.as_deref(), args.seed, &device)?;
    let out_frames = clip.frames;
    // Small model resolutions (24x40) are below SVT-AV1's minimum; H.264 takes any even size.
    let opts = EncoderOptions {
        codec: Some(VideoCodec::H264),
        crf: 18,
        ..EncoderOptions::default()
    };
    encode_frames(&args.out, &out_frames, small.meta.fps, &opts)?;
    if args.png {
        let strip = RgbImage::from_fn((w * frames) as u32, h as u32, |x, y| {
            *out_frames[x as usize / w].get_pixel(x % w as u32, y)
        });
        let png = args.out.with_extension("png");
        strip
            .save(&png)
            .with_context(|| format!("writing {}", png.display()))?;
    }
    println!(
        "wrote {} ({frames} frames at {h}x{w}, {} prior calls)",
        args.out.display(),
        clip.prior_calls
    );
    Ok(())
}
