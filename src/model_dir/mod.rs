//! A vadapt model directory: a diffusers UNet3D plus what sampling with it needs, loaded as one bundle (UNet, text
//! encoder, scheduler config, VAE, conditioning): diffusers' pipeline-loader role, above `models` and `schedulers`,
//! whose parts it loads. The conditioning channels themselves are built by `sampling::conditioning`.
//!
//! ```text
//! DIR/unet/                       diffusers UNet3DConditionModel (config.json + safetensors); or DIR itself
//! DIR/text_encoder/               optional: byte-level encoder, CLIP or T5 (see models::text)
//! DIR/scheduler/scheduler_config.json   optional diffusers scheduler config (default: DDIM, squaredcos_cap_v2)
//! DIR/vae/                        optional: an AutoencoderKL; the model then works in that VAE's latent space
//! DIR/vadapt.json                 optional: {"conditioning": ["edges", "first_frame"], "frames": 8,
//!                                            "height": 24, "width": 40, "fps": 10,
//!                                            "reference_tiles": 4}   (restyle models: vision::tiles)
//! ```
//! `conditioning` lists the channels concatenated after the noisy video, in this order (docs/design.md: [noisy RGB,
//! edges, first frame]; a super-resolution stage adds `low_res`); when `vadapt.json` is absent it is inferred from
//! the UNet's `in_channels` (3: none, 4: edges, 6: first frame, 7: both).
//!
//! **Latent models.** A directory with `vae/` denoises that VAE's scaled latents (b, latent_channels, f, h/s, w/s),
//! s the VAE's downscale; its conditioning channels are at latent size too (edges average-pooled by s), and
//! `height`/`width` in `vadapt.json` stay in pixels. A diffusers text-to-video directory (ModelScope, Zeroscope:
//! `model_index.json` with unet/, vae/, text_encoder/, tokenizer/, scheduler/) loads as a latent model with no
//! conditioning that samples any frame count. Models composed in one target must share their sample space
//! ([`SampleSpace`]); [`text_to_video`] checks such a directory's `model_index.json`.

pub mod text_to_video;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoResultExt, Location, Result};
use crate::models::text::{load_text_encoder, TextEncoder};
use crate::models::unet_3d::UNet3DConditionModel;
use crate::models::vae::AutoencoderKL;
use crate::models::Denoiser;
use crate::schedulers::SchedulerConfig;
use text_to_video::{check_pipeline_index, is_pipeline_dir};

/// A conditioning signal concatenated on channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Conditioning {
    /// Sobel dx / 4 of each frame, 1 channel.
    Edges,
    /// The first frame in [-1, 1], repeated over time, 3 channels.
    FirstFrame,
    /// A super-resolution stage's input: the previous stage's video upsampled to this model's resolution, in
    /// [-1, 1], 3 channels per frame.
    LowRes,
    /// A still of the look to render (a target's `reference`) in [-1, 1], its tiles shuffled when `vadapt.json` has
    /// `reference_tiles` (vision::tiles), repeated over time, 3 channels: a restyle model takes the look from it
    /// and the scene from the edges and the first frame.
    Reference,
    /// The source camera's own frames in [-1, 1], 3 channels per frame: a restyle model that sees them keeps what
    /// the edges lose (the fill of the arm and the blocks) and changes only the look, the way Cosmos-Transfer's
    /// "vis" control keeps a blurred copy of the input video.
    Source,
}

impl Conditioning {
    pub fn channels(self) -> usize {
        match self {
            Conditioning::Edges => 1,
            Conditioning::FirstFrame
            | Conditioning::LowRes
            | Conditioning::Reference
            | Conditioning::Source => 3,
        }
    }
}

/// What a model denoises: RGB pixels, or the scaled latents of a VAE. Two models compose only in the same space.
#[derive(Debug, Clone, PartialEq)]
pub enum SampleSpace {
    Pixels,
    Latents {
        channels: usize,
        downscale: usize,
        scaling_factor: f64,
        shift_factor: Option<f64>,
    },
}

impl std::fmt::Display for SampleSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SampleSpace::Pixels => write!(f, "RGB pixels"),
            SampleSpace::Latents {
                channels,
                downscale,
                scaling_factor,
                ..
            } => write!(
                f,
                "{channels}-channel VAE latents at 1/{downscale} size (scaling factor {scaling_factor})"
            ),
        }
    }
}

fn d_frames() -> usize {
    8
}
fn d_h() -> usize {
    24
}
fn d_w() -> usize {
    40
}
fn d_fps() -> f64 {
    10.0
}

/// `vadapt.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelMeta {
    #[serde(default)]
    pub conditioning: Option<Vec<Conditioning>>,
    #[serde(default = "d_frames")]
    pub frames: usize,
    #[serde(default = "d_h")]
    pub height: usize,
    #[serde(default = "d_w")]
    pub width: usize,
    #[serde(default = "d_fps")]
    pub fps: f64,
    /// A restyle model (`reference` conditioning) trained on tile-shuffled stills (`data.reference_tiles`): the
    /// grid, so that sampling shuffles a target's `reference` the same way (vision::tiles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_tiles: Option<usize>,
}

impl Default for ModelMeta {
    fn default() -> Self {
        Self {
            conditioning: None,
            frames: d_frames(),
            height: d_h(),
            width: d_w(),
            fps: d_fps(),
            reference_tiles: None,
        }
    }
}

impl ModelMeta {
    /// `DIR/vadapt.json`, parsed and checked; `None` where the directory has none.
    pub fn read(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join("vadapt.json");
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).at(&path)?;
        let meta: ModelMeta = serde_json::from_str(&text)
            .map_err(|e| Error::config(Location::file(&path), e.to_string()))?;
        meta.check(&path)?;
        Ok(Some(meta))
    }

    /// Refuse sizes past [`crate::limits`] before anything is allocated from them (a `frames` of 10^9 grew past
    /// 7 GB before it aborted); `path` is the `vadapt.json` named in the error.
    pub fn check(&self, path: &Path) -> Result<()> {
        use crate::limits::{check_count, check_fps, MAX_MODEL_FRAMES, MAX_MODEL_SIDE};
        let at = |k: &str| Location::file(path).field(k);
        check_count(self.frames, MAX_MODEL_FRAMES, "frames", at("frames"))?;
        check_count(self.height, MAX_MODEL_SIDE, "height", at("height"))?;
        check_count(self.width, MAX_MODEL_SIDE, "width", at("width"))?;
        if let Some(g) = self.reference_tiles {
            check_count(g, 16, "reference_tiles", at("reference_tiles"))?;
        }
        check_fps(self.fps, at("fps"))
    }
}

pub struct ModelDir {
    pub path: PathBuf,
    pub unet: UNet3DConditionModel,
    pub text_encoder: Option<Box<dyn TextEncoder>>,
    pub scheduler: SchedulerConfig,
    pub conditioning: Vec<Conditioning>,
    pub meta: ModelMeta,
    /// The VAE of a latent model (`DIR/vae/`).
    pub vae: Option<AutoencoderKL>,
    /// Samples any number of frames (a text-to-video pipeline directory without `vadapt.json`); otherwise windows
    /// of `meta.frames`.
    pub any_frames: bool,
}

impl ModelDir {
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        Self::load_in(dir, device, DType::F32)
    }

    /// Load with the UNet's and VAE's weights and compute in `dtype` (the text encoder stays F32).
    pub fn load_in(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let pipeline = is_pipeline_dir(dir);
        if pipeline {
            check_pipeline_index(dir)?;
        }
        let unet_dir = if dir.join("unet").join("config.json").exists() {
            dir.join("unet")
        } else {
            dir.to_path_buf()
        };
        let unet = UNet3DConditionModel::load_with_dtype(&unet_dir, device, dtype)?;
        let text_encoder = if dir.join("text_encoder").exists() {
            Some(load_text_encoder(&dir.join("text_encoder"), device)?)
        } else {
            None
        };
        let sched_path = [
            dir.join("scheduler").join("scheduler_config.json"),
            dir.join("scheduler_config.json"),
        ]
        .into_iter()
        .find(|p| p.exists());
        let scheduler = match sched_path {
            Some(p) => SchedulerConfig::from_file(&p)?,
            None => SchedulerConfig::from_json(
                r#"{"_class_name": "DDIMScheduler", "beta_schedule": "squaredcos_cap_v2", "clip_sample": false}"#,
                dir,
            )?,
        };
        let vae = if dir.join("vae").join("config.json").exists() {
            Some(AutoencoderKL::load_with_dtype(
                &dir.join("vae"),
                device,
                dtype,
            )?)
        } else {
            None
        };
        let meta_path = dir.join("vadapt.json");
        let stored_meta = ModelMeta::read(dir)?;
        let any_frames = pipeline && stored_meta.is_none();
        let meta = stored_meta.unwrap_or_default();
        let sample_channels = vae.as_ref().map_or(3, AutoencoderKL::latent_channels);
        let unet_config = unet_dir.join("config.json");
        if unet.out_channels() != sample_channels {
            return Err(Error::model(
                Location::file(&unet_config).field("out_channels"),
                match &vae {
                    Some(_) => format!(
                        "the UNet predicts {} channels, the VAE's latents have {sample_channels}",
                        unet.out_channels()
                    ),
                    None => format!(
                        "the UNet predicts {} channels; a model without vae/ denoises RGB (3)",
                        unet.out_channels()
                    ),
                },
            ));
        }
        if let Some(enc) = &text_encoder {
            if unet.cross_attention_dim() != enc.dim() {
                return Err(Error::model(
                    Location::file(&unet_config).field("cross_attention_dim"),
                    format!(
                        "{}, but the text encoder's embeddings are {} wide",
                        unet.cross_attention_dim(),
                        enc.dim()
                    ),
                ));
            }
        }
        let conditioning = match &meta.conditioning {
            Some(c) => c.clone(),
            None => match unet.in_channels() - sample_channels.min(unet.in_channels()) {
                0 => vec![],
                1 => vec![Conditioning::Edges],
                3 => vec![Conditioning::FirstFrame],
                4 => vec![Conditioning::Edges, Conditioning::FirstFrame],
                _ => {
                    let n = unet.in_channels();
                    return Err(Error::model(
                        Location::file(dir).field("conditioning"),
                        format!("cannot infer the conditioning of a {n}-channel UNet; list it in vadapt.json"),
                    ));
                }
            },
        };
        let expected = sample_channels + conditioning.iter().map(|c| c.channels()).sum::<usize>();
        if expected != unet.in_channels() {
            return Err(Error::model(
                Location::file(&meta_path).field("conditioning"),
                format!(
                    "{conditioning:?} needs {expected} input channels, the UNet has {}",
                    unet.in_channels()
                ),
            ));
        }
        Ok(Self {
            path: dir.to_path_buf(),
            unet,
            text_encoder,
            scheduler,
            conditioning,
            meta,
            vae,
            any_frames,
        })
    }

    /// What this model denoises.
    pub fn space(&self) -> SampleSpace {
        match &self.vae {
            None => SampleSpace::Pixels,
            Some(v) => SampleSpace::Latents {
                channels: v.latent_channels(),
                downscale: v.downscale(),
                scaling_factor: v.config().scaling_factor,
                shift_factor: v.config().shift_factor,
            },
        }
    }

    /// Refuse composing `prior` with this (small) model unless both denoise the same thing: composition adds their
    /// noise predictions. `loc` is where the pairing was asked for.
    pub fn check_composes_with(&self, prior: &ModelDir, loc: Location) -> Result<()> {
        if prior.space() == self.space() {
            return Ok(());
        }
        Err(Error::config(
            loc,
            format!(
                "{} denoises {}, the adapter {} denoises {}: compose models of one space (train the adapter on \
                 the prior's VAE latents, `model.vae` in the training recipe)",
                prior.path.display(),
                prior.space(),
                self.path.display(),
                self.space()
            ),
        ))
    }

    /// Channels of the video the model denoises: 3 (RGB) or the VAE's latent channels.
    pub fn sample_channels(&self) -> usize {
        self.unet.out_channels()
    }

    /// Pixels per sample along height and width: 1, or the VAE's downscale.
    pub fn downscale(&self) -> usize {
        self.vae.as_ref().map_or(1, AutoencoderKL::downscale)
    }

    /// The sample's (height, width) for a video of `h` x `w` pixels: latent size for a latent model, which needs
    /// pixel sizes that divide by its downscale (refused at `loc` otherwise).
    pub fn sample_size(&self, h: usize, w: usize, loc: Location) -> Result<(usize, usize)> {
        let s = self.downscale();
        if h % s != 0 || w % s != 0 {
            return Err(Error::config(
                loc,
                format!(
                    "{h}x{w}: {} works in latents at 1/{s} size, so height and width must be multiples of {s}",
                    self.path.display()
                ),
            ));
        }
        Ok((h / s, w / s))
    }

    /// RGB video (b, 3, f, H, W) from a final sample: the VAE's decode, one frame at a time (diffusers' VAE slicing:
    /// a long episode needs the memory of one frame's decoder activations), calling `check` before each frame; a
    /// pixel model's sample as it is.
    pub fn decode_video(&self, x: &Tensor, check: &dyn Fn() -> Result<()>) -> Result<Tensor> {
        let Some(vae) = &self.vae else {
            return Ok(x.clone());
        };
        let n = x.dim(2)?;
        let mut frames = Vec::with_capacity(n);
        for i in 0..n {
            check()?;
            frames.push(vae.decode(&x.narrow(2, i, 1)?)?);
        }
        Ok(Tensor::cat(&frames, 2)?)
    }

    /// (text, uncond) embeddings of `prompt` for a batch of `batch`: from the model's text encoder, or zeros of
    /// the UNet's cross-attention width when the model has none (then the prompt cannot matter, and is refused).
    pub fn embed(&self, prompt: &str, batch: usize, device: &Device) -> Result<(Tensor, Tensor)> {
        match &self.text_encoder {
            Some(enc) => {
                let text = enc.encode(&[prompt])?.repeat((batch, 1, 1))?;
                let uncond = enc.unconditional(batch)?;
                Ok((text, uncond))
            }
            None if prompt.is_empty() => {
                let z = Tensor::zeros((batch, 1, self.unet.cross_attention_dim()), candle_core::DType::F32, device)?;
                Ok((z.clone(), z))
            }
            None => Err(Error::config(
                Location::file(&self.path).field("text_encoder"),
                "this model has no text_encoder/, so it cannot take a prompt (pass an empty prompt)",
            )),
        }
    }
}
