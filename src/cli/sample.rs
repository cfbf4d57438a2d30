//! `vadapt sample`: one-off generation from a single model, or a Video Adapter composition of a small model and
//! a prior, conditioned on the edges of a video.
//!
//! ```text
//! vadapt sample --model DIR --prompt "push the red star" --edges clip.mp4 --steps 20 --guidance 3 --seed 0 --out out.mp4
//! vadapt sample --adapter DIR --prior DIR --lam 0.4 --prompt "..., claymation style" --edges clip.mp4 --out out.mp4
//! ```

use std::path::PathBuf;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use image::RgbImage;
use vadapt::compose::{sample, ComposeSettings, Conditioned, Prior, Rule, Strength};
use vadapt::error::Location;
use vadapt::io::video::{decode_all, encode_frames, EncoderOptions, VideoCodec};
use vadapt::models::model_dir::{at_sample_resolution, ModelDir, Signals};
use vadapt::rng::NoiseRng;
use vadapt::vision::tensor::{frame_to_tensor, tensor_to_frames};
use vadapt::vision::{edges::edge_channel, resize::resize_rgb};

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
    pub rule: Rule,
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

    // Conditioning from the edge video, at the model resolution.
    let (edges, first) = match &args.edges {
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
            let s = small.downscale();
            let e = Tensor::from_vec(edge_channel(&clip), (1, frames, h, w), &device)?;
            let first = frame_to_tensor(&clip[0], &device)?;
            (
                Some(at_sample_resolution(e, s)?),
                Some(at_sample_resolution(first, s)?),
            )
        }
        None => (None, None),
    };
    let signals = Signals {
        edges: edges.as_ref(),
        first_frame: first.as_ref(),
        low_res: None,
    };
    let (text, uncond) = small.embed(&args.prompt, 1, &device)?;
    let small_in = Conditioned {
        model: &small.unet,
        channels: small.channels(signals, frames)?,
        text,
        uncond,
        schedule: None,
    };
    let priors = match &prior {
        Some(p) => {
            let (text, uncond) = p.embed(
                args.prior_prompt.as_deref().unwrap_or(&args.prompt),
                1,
                &device,
            )?;
            vec![Prior {
                input: Conditioned {
                    model: &p.unet,
                    channels: p.channels(signals, frames)?,
                    text,
                    uncond,
                    schedule: Some(vadapt::schedulers::NoiseSchedule::from_config(&p.scheduler)),
                },
                strength: Strength::Constant(args.lam),
            }]
        }
        None => vec![],
    };
    let mut scheduler = small.scheduler.build()?;
    scheduler.set_timesteps(args.steps)?;
    let mut rng = NoiseRng::new(args.seed);
    let (hs, ws) = small.sample_size(h, w, Location::none().field("model"))?;
    if let Some(p) = &prior {
        small.check_composes_with(p, Location::none().field("--prior"))?;
    }
    let x_t = (rng.randn((1, small.sample_channels(), frames, hs, ws), &device)?
        * scheduler.init_noise_sigma())?;
    let settings = ComposeSettings {
        rule: args.rule,
        guidance: args.guidance,
        compose_min_t: args.compose_min_t,
    };
    let traj = sample(
        &small_in,
        &priors,
        scheduler.as_mut(),
        x_t.to_dtype(DType::F32)?,
        &settings,
        &mut rng,
        false,
    )?;
    let video = small.decode_video(&traj.x0, &|| Ok(()))?;
    let out_frames = tensor_to_frames(&video.squeeze(0)?)?;
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
        traj.prior_calls
    );
    Ok(())
}
