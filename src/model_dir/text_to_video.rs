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

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, IoResultExt, Location, Result};

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

/// Check `DIR/model_index.json` of a diffusers text-to-video directory: every component vadapt loads is named, with
/// a class it can load. [`ModelDir::load`](super::ModelDir::load) calls this for any directory that has
/// one, and then loads the parts (the UNet from `unet/`, the VAE from `vae/`, CLIP from `text_encoder/` with
/// `tokenizer/`, the scheduler from `scheduler/`) and checks that they fit together.
pub fn check_pipeline_index(dir: &Path) -> Result<()> {
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
    Ok(())
}

/// Whether `dir` is a diffusers pipeline directory (it has `model_index.json`).
pub fn is_pipeline_dir(dir: &Path) -> bool {
    dir.join("model_index.json").is_file()
}
