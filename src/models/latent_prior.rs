//! A latent text-to-video prior from a diffusers pipeline directory (ModelScope / Zeroscope,
//! `TextToVideoSDPipeline`): the pieces composition needs, each loaded by its own port.
//!
//! ```text
//! DIR/model_index.json        names the components and their classes (diffusers `DiffusionPipeline`)
//! DIR/unet/                   UNet3DConditionModel (models::unet_3d), works on latents
//! DIR/vae/                    AutoencoderKL (models::vae): pixels <-> latents
//! DIR/text_encoder/           CLIPTextModel (models::text), tokenizer.json in DIR/tokenizer/
//! DIR/scheduler/scheduler_config.json
//! ```
//! `model_index.json` is read so that a directory of another pipeline (another UNet or text encoder class) is refused
//! with the component named, rather than failing deep inside a loader; the classes checked are the ones diffusers'
//! text-to-video pipelines use. Nothing is fine-tuned: composition only calls these models.

use std::path::{Path, PathBuf};

use candle_core::Device;
use serde_json::Value;

use super::text::{load_text_encoder, TextEncoder};
use super::unet_3d::UNet3DConditionModel;
use super::vae::AutoencoderKL;
use super::Denoiser;
use crate::error::{Error, IoResultExt, Location, Result};
use crate::schedulers::SchedulerConfig;

/// The component classes a text-to-video directory may name, per component.
const EXPECTED: [(&str, &[&str]); 5] = [
    ("unet", &["UNet3DConditionModel"]),
    ("vae", &["AutoencoderKL"]),
    ("text_encoder", &["CLIPTextModel"]),
    ("tokenizer", &["CLIPTokenizer", "CLIPTokenizerFast"]),
    (
        "scheduler",
        &[
            "DDIMScheduler",
            "DDPMScheduler",
            "DPMSolverMultistepScheduler",
        ],
    ),
];

/// A loaded latent text-to-video prior.
pub struct LatentPrior {
    pub path: PathBuf,
    pub unet: UNet3DConditionModel,
    pub vae: AutoencoderKL,
    pub text_encoder: Box<dyn TextEncoder>,
    pub scheduler: SchedulerConfig,
}

impl LatentPrior {
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let index_path = dir.join("model_index.json");
        let text = std::fs::read_to_string(&index_path).at(&index_path)?;
        let index: Value = serde_json::from_str(&text)
            .map_err(|e| Error::config(Location::file(&index_path), e.to_string()))?;
        for (component, classes) in EXPECTED {
            let class = index
                .get(component)
                .and_then(Value::as_array)
                .and_then(|a| a.get(1))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    Error::config(
                        Location::file(&index_path).field(component),
                        "missing: a text-to-video directory names [library, class] for unet, vae, text_encoder, tokenizer and scheduler",
                    )
                })?;
            if !classes.contains(&class) {
                return Err(Error::unsupported(
                    Location::file(&index_path).field(component),
                    format!("{class} (supported: {})", classes.join(", ")),
                ));
            }
        }

        let unet = UNet3DConditionModel::load(&dir.join("unet"), device)?;
        let vae = AutoencoderKL::load(&dir.join("vae"), device)?;
        let text_encoder = load_text_encoder(&dir.join("text_encoder"), device)?;
        let scheduler =
            SchedulerConfig::from_file(&dir.join("scheduler").join("scheduler_config.json"))?;

        // The pieces must fit together: the UNet denoises the VAE's latents under the text encoder's embeddings.
        let unet_config = dir.join("unet").join("config.json");
        let l = vae.latent_channels();
        if unet.in_channels() != l || unet.out_channels() != l {
            return Err(Error::model(
                Location::file(&unet_config).field("in_channels"),
                format!(
                    "the UNet takes {} and predicts {} channels, the VAE's latents have {l}",
                    unet.in_channels(),
                    unet.out_channels()
                ),
            ));
        }
        if unet.cross_attention_dim() != text_encoder.dim() {
            return Err(Error::model(
                Location::file(&unet_config).field("cross_attention_dim"),
                format!(
                    "{}, but the text encoder's embeddings are {} wide",
                    unet.cross_attention_dim(),
                    text_encoder.dim()
                ),
            ));
        }
        Ok(Self {
            path: dir.to_path_buf(),
            unet,
            vae,
            text_encoder,
            scheduler,
        })
    }
}
