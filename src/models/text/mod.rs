//! Text conditioning: prompts -> `encoder_hidden_states` (batch, tokens, dim) for the UNet's cross-attention.
//!
//! Three encoders behind one trait:
//! * [`ByteTextEncoder`], the embedded default: a small pre-LayerNorm transformer over UTF-8 bytes, built from a
//!   candle `VarBuilder` so `vadapt train` can learn it jointly with a small UNet; stored in our model directories
//!   as `text_encoder/config.json` + `text_encoder/model.safetensors`.
//! * [`ClipText`] and [`T5Text`], frozen pretrained encoders read from a local Hugging Face directory
//!   (`config.json`, `model.safetensors`, `tokenizer.json`) and run through `candle-transformers`.
//!
//! [`load_text_encoder`] picks one from the directory's `config.json` (`model_type` / `architectures`), and
//! [`CachedTextEncoder`] memoizes embeddings per prompt, so thousands of episodes sharing a prompt encode it once.
//!
//! Classifier-free guidance needs an unconditional embedding: docs/design.md ("Conditioning") fixes it to all zeros
//! unless the model directory stores its own `uncond` tensor. (diffusers pipelines use `encode("")` instead; a
//! caller that wants that behaviour can call `encode(&[""])` itself.)

mod byte_encoder;
mod cache;
pub mod clip_text;
mod pretrained;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

pub use byte_encoder::{
    corpus_words, word_pieces, ByteEncoderConfig, ByteTextEncoder, PaddedRows, BOS,
    BYTE_VOCAB_SIZE, EOS, MODEL_TYPE as BYTE_MODEL_TYPE, PAD,
};
pub use cache::CachedTextEncoder;
pub use pretrained::{ClipText, T5Text};

use crate::error::{Error, IoResultExt, Location, Result};

/// The name of the optional tensor that holds a model's own unconditional embedding, shape (tokens, dim) or
/// (1, tokens, dim).
pub const UNCOND_TENSOR: &str = "uncond";

/// Prompts in, cross-attention context out.
pub trait TextEncoder: Send + Sync {
    /// `encoder_hidden_states` for `prompts`: (prompts.len(), max_tokens(), dim()), f32. Every prompt is padded
    /// (or truncated) to `max_tokens()`, so conditional and unconditional embeddings stack on the batch axis.
    fn encode(&self, prompts: &[&str]) -> Result<Tensor>;
    /// Width of the embedding (the UNet's `cross_attention_dim`).
    fn dim(&self) -> usize;
    /// Tokens per prompt in the output.
    fn max_tokens(&self) -> usize;
    /// The unconditional embedding for classifier-free guidance, (batch, max_tokens(), dim()): the model's own
    /// `uncond` tensor repeated over the batch if it stores one, zeros otherwise.
    fn unconditional(&self, batch: usize) -> Result<Tensor>;
    /// Where the output tensors live.
    fn device(&self) -> &Device;
    /// Words of `prompt` the encoder has no token of its own for, where that matters: an embedded encoder with a
    /// word vocabulary reads those only as bytes, i.e. it was never trained on them. Empty for the others.
    fn unknown_words(&self, _prompt: &str) -> Vec<String> {
        Vec::new()
    }
}

impl<T: TextEncoder + ?Sized> TextEncoder for Box<T> {
    fn encode(&self, prompts: &[&str]) -> Result<Tensor> {
        (**self).encode(prompts)
    }
    fn dim(&self) -> usize {
        (**self).dim()
    }
    fn max_tokens(&self) -> usize {
        (**self).max_tokens()
    }
    fn unconditional(&self, batch: usize) -> Result<Tensor> {
        (**self).unconditional(batch)
    }
    fn device(&self) -> &Device {
        (**self).device()
    }
    fn unknown_words(&self, prompt: &str) -> Vec<String> {
        (**self).unknown_words(prompt)
    }
}

impl<T: TextEncoder + ?Sized> TextEncoder for std::sync::Arc<T> {
    fn encode(&self, prompts: &[&str]) -> Result<Tensor> {
        (**self).encode(prompts)
    }
    fn dim(&self) -> usize {
        (**self).dim()
    }
    fn max_tokens(&self) -> usize {
        (**self).max_tokens()
    }
    fn unconditional(&self, batch: usize) -> Result<Tensor> {
        (**self).unconditional(batch)
    }
    fn device(&self) -> &Device {
        (**self).device()
    }
    fn unknown_words(&self, prompt: &str) -> Vec<String> {
        (**self).unknown_words(prompt)
    }
}

/// Options for [`load_text_encoder_with`].
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Tokens per prompt for encoders without a fixed context (T5). CLIP and the byte encoder always use
    /// their `max_position_embeddings`. Default 77, CLIP's length, so UNets trained on CLIP contexts see the
    /// same token count.
    pub max_tokens: Option<usize>,
    /// Weights are converted to this dtype on load (F32 on CPU; F16/BF16 may make sense on GPU). Outputs are
    /// always returned as F32.
    pub dtype: DType,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            max_tokens: None,
            dtype: DType::F32,
        }
    }
}

/// Which kind of encoder a directory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextEncoderKind {
    /// Our embedded byte-level encoder (`model_type: "vadapt_byte_text"`).
    Byte,
    /// Hugging Face `CLIPTextModel` (`model_type: "clip_text_model"`, or a full `"clip"` config with `text_config`).
    Clip,
    /// Hugging Face `T5EncoderModel` (`model_type: "t5"`).
    T5,
}

/// The text encoder stored in `dir` (a text-encoder directory, or a model directory with a `text_encoder/`
/// subfolder), on `device`, F32.
pub fn load_text_encoder(dir: &Path, device: &Device) -> Result<Box<dyn TextEncoder>> {
    load_text_encoder_with(dir, device, &LoadOptions::default())
}

/// [`load_text_encoder`] with options.
pub fn load_text_encoder_with(
    dir: &Path,
    device: &Device,
    opts: &LoadOptions,
) -> Result<Box<dyn TextEncoder>> {
    let dir = resolve_dir(dir)?;
    let config_path = dir.join("config.json");
    let config = read_json(&config_path)?;
    Ok(match detect_kind(&config, &config_path)? {
        TextEncoderKind::Byte => {
            Box::new(ByteTextEncoder::load_with_dtype(&dir, device, opts.dtype)?)
        }
        TextEncoderKind::Clip => Box::new(ClipText::load_with(&dir, device, opts)?),
        TextEncoderKind::T5 => Box::new(T5Text::load_with(&dir, device, opts)?),
    })
}

/// `dir` itself when it has a `config.json`, else `dir/text_encoder` when that has one.
fn resolve_dir(dir: &Path) -> Result<PathBuf> {
    if dir.join("config.json").is_file() {
        return Ok(dir.to_path_buf());
    }
    let sub = dir.join("text_encoder");
    if sub.join("config.json").is_file() {
        return Ok(sub);
    }
    Err(Error::model(
        Location::file(dir),
        "no text encoder here: expected config.json (or text_encoder/config.json)",
    ))
}

/// Decide the encoder kind from a `config.json`: `model_type` first, `architectures` as a fallback.
pub fn detect_kind(config: &Value, path: &Path) -> Result<TextEncoderKind> {
    let model_type = config
        .get("model_type")
        .and_then(Value::as_str)
        .unwrap_or("");
    let archs: Vec<&str> = config
        .get("architectures")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    match model_type {
        byte_encoder::MODEL_TYPE => return Ok(TextEncoderKind::Byte),
        "clip_text_model" | "clip" => return Ok(TextEncoderKind::Clip),
        "t5" => return Ok(TextEncoderKind::T5),
        _ => {}
    }
    for a in &archs {
        match *a {
            "CLIPTextModel" | "CLIPTextModelWithProjection" | "CLIPModel" => {
                return Ok(TextEncoderKind::Clip)
            }
            "T5EncoderModel" | "T5ForConditionalGeneration" | "T5Model" => {
                return Ok(TextEncoderKind::T5)
            }
            _ => {}
        }
    }
    Err(Error::unsupported(
        Location::file(path).field("model_type"),
        format!(
            "text encoder model_type {model_type:?} (architectures {archs:?}): vadapt reads {:?}, \"clip_text_model\"/\"clip\" and \"t5\"",
            byte_encoder::MODEL_TYPE
        ),
    ))
}

/// Read and parse a JSON file, errors naming it.
pub(crate) fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).at(path)?;
    serde_json::from_str(&text)
        .map_err(|e| Error::invalid(Location::file(path), format!("not valid JSON: {e}")))
}

/// Turn a candle error raised while building a model from `file` into a model error naming the file; candle's
/// message already names the missing or mis-shaped tensor ("cannot find tensor text_model.…").
pub(crate) fn weights_error(file: &Path) -> impl Fn(candle_core::Error) -> Error + '_ {
    move |e| Error::model(Location::file(file), e.to_string())
}

/// `uncond` (tokens, dim) or (1, tokens, dim) checked against the encoder's output shape and returned as
/// (1, tokens, dim) F32.
pub(crate) fn check_uncond(t: Tensor, tokens: usize, dim: usize, file: &Path) -> Result<Tensor> {
    let t = match t.rank() {
        2 => t.unsqueeze(0)?,
        _ => t,
    };
    if t.dims() != [1, tokens, dim] {
        return Err(Error::model(
            Location::file(file).field(UNCOND_TENSOR),
            format!(
                "shape {:?}, expected ({tokens}, {dim}) or (1, {tokens}, {dim})",
                t.dims()
            ),
        ));
    }
    Ok(t.to_dtype(DType::F32)?)
}

/// The unconditional embedding: `own` repeated over the batch, else zeros.
pub(crate) fn uncond_or_zeros(
    own: Option<&Tensor>,
    batch: usize,
    tokens: usize,
    dim: usize,
    device: &Device,
) -> Result<Tensor> {
    Ok(match own {
        Some(u) => u.repeat((batch, 1, 1))?,
        None => Tensor::zeros((batch, tokens, dim), DType::F32, device)?,
    })
}
