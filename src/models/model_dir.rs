//! A vadapt model directory: a diffusers UNet3D plus what sampling with it needs.
//!
//! ```text
//! DIR/unet/                       diffusers UNet3DConditionModel (config.json + safetensors); or DIR itself
//! DIR/text_encoder/               optional: byte-level encoder, CLIP or T5 (see models::text)
//! DIR/scheduler/scheduler_config.json   optional diffusers scheduler config (default: DDIM, squaredcos_cap_v2)
//! DIR/vadapt.json                 optional: {"conditioning": ["edges", "first_frame"], "frames": 8,
//!                                            "height": 24, "width": 40, "fps": 10}
//! ```
//! `conditioning` lists the channels concatenated after the noisy video, in this order (DESIGN.md: [noisy RGB,
//! edges, first frame]); when `vadapt.json` is absent it is inferred from the UNet's `in_channels`
//! (3: none, 4: edges, 6: first frame, 7: both).

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::text::{load_text_encoder, TextEncoder};
use super::unet_3d::UNet3DConditionModel;
use super::Denoiser;
use crate::error::{Error, IoResultExt, Location, Result};
use crate::schedulers::SchedulerConfig;

/// A conditioning signal concatenated on channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Conditioning {
    /// Sobel dx / 4 of each frame, 1 channel.
    Edges,
    /// The first frame in [-1, 1], repeated over time, 3 channels.
    FirstFrame,
}

impl Conditioning {
    pub fn channels(self) -> usize {
        match self {
            Conditioning::Edges => 1,
            Conditioning::FirstFrame => 3,
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
}

impl Default for ModelMeta {
    fn default() -> Self {
        Self {
            conditioning: None,
            frames: d_frames(),
            height: d_h(),
            width: d_w(),
            fps: d_fps(),
        }
    }
}

pub struct ModelDir {
    pub path: PathBuf,
    pub unet: UNet3DConditionModel,
    pub text_encoder: Option<Box<dyn TextEncoder>>,
    pub scheduler: SchedulerConfig,
    pub conditioning: Vec<Conditioning>,
    pub meta: ModelMeta,
}

impl ModelDir {
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let unet_dir = if dir.join("unet").join("config.json").exists() {
            dir.join("unet")
        } else {
            dir.to_path_buf()
        };
        let unet = UNet3DConditionModel::load(&unet_dir, device)?;
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
        let meta_path = dir.join("vadapt.json");
        let meta: ModelMeta = if meta_path.exists() {
            let text = std::fs::read_to_string(&meta_path).at(&meta_path)?;
            serde_json::from_str(&text)
                .map_err(|e| Error::config(Location::file(&meta_path), e.to_string()))?
        } else {
            ModelMeta::default()
        };
        let conditioning = match &meta.conditioning {
            Some(c) => c.clone(),
            None => match unet.in_channels() {
                3 => vec![],
                4 => vec![Conditioning::Edges],
                6 => vec![Conditioning::FirstFrame],
                7 => vec![Conditioning::Edges, Conditioning::FirstFrame],
                n => {
                    return Err(Error::model(
                        Location::file(dir).field("conditioning"),
                        format!("cannot infer the conditioning of a {n}-channel UNet; list it in vadapt.json"),
                    ))
                }
            },
        };
        let expected = 3 + conditioning.iter().map(|c| c.channels()).sum::<usize>();
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
        })
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

    /// The conditioning channels, (1, k, frames, h, w), from the edge channel (1, F, H, W) and the first frame
    /// (3, H, W) in [-1, 1].
    pub fn channels(
        &self,
        edges: Option<&Tensor>,
        first_frame: Option<&Tensor>,
        frames: usize,
    ) -> Result<Option<Tensor>> {
        conditioning_channels(&self.conditioning, edges, first_frame, frames, &self.path)
    }
}

/// The channels a model conditioned on `conditioning` takes after the noisy video, (1, k, frames, h, w), in
/// DESIGN.md's order: edges (1, F, H, W) then the first frame (3, H, W) repeated over time. `model` names the model
/// in the error when a signal it needs is missing. Sampling and training build them the same way.
pub fn conditioning_channels(
    conditioning: &[Conditioning],
    edges: Option<&Tensor>,
    first_frame: Option<&Tensor>,
    frames: usize,
    model: &Path,
) -> Result<Option<Tensor>> {
    let mut parts = Vec::new();
    for c in conditioning {
        match c {
            Conditioning::Edges => parts.push(
                edges
                    .ok_or_else(|| {
                        Error::config(
                            Location::file(model).field("edges"),
                            "this model is conditioned on edges; give an edge video",
                        )
                    })?
                    .unsqueeze(0)?,
            ),
            Conditioning::FirstFrame => {
                let f = first_frame.ok_or_else(|| {
                    Error::config(
                        Location::file(model).field("first_frame"),
                        "this model is conditioned on the first frame; give a video",
                    )
                })?;
                let (c, h, w) = f.dims3()?;
                parts.push(
                    f.unsqueeze(1)?
                        .broadcast_as((c, frames, h, w))?
                        .contiguous()?
                        .unsqueeze(0)?,
                );
            }
        }
    }
    if parts.is_empty() {
        return Ok(None);
    }
    Ok(Some(Tensor::cat(&parts, 1)?))
}
