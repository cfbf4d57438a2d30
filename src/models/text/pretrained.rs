//! Frozen pretrained text encoders from a local Hugging Face directory, run through `candle-transformers`:
//! CLIP's text tower (`CLIPTextModel`, embedding = `last_hidden_state`) and T5's encoder (`T5EncoderModel`).
//! CLIP configs with `hidden_act: "quick_gelu"` and `layer_norm_eps: 1e-5` run through candle-transformers'
//! `clip::text_model`; every other CLIP config (the `"gelu"` encoders of SD 2.x / ModelScope, other epsilons) through
//! our port of transformers' text tower in `clip_text.rs` (candle's gelu presets use tanh GELU, transformers erf).
//!
//! A directory holds `config.json` (transformers' format), `model.safetensors` and `tokenizer.json` (a
//! "fast" tokenizer; diffusers pipelines keep it in a sibling `tokenizer/` folder, which is looked at too).
//! Prompts are tokenized the way diffusers' pipelines do (`padding="max_length", truncation=True`) and run
//! without an attention mask: CLIP over 77 tokens with its causal mask only (pipeline_stable_diffusion.py
//! `encode_prompt`), T5 over `max_tokens` tokens (pipeline_cogvideox.py `_get_t5_prompt_embeds`).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::{clip, t5};
use serde::Deserialize;
use serde_json::Value;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use super::clip_text::{ClipActivation, ClipTextDims, ClipTextTransformer};
use super::{
    check_uncond, read_json, uncond_or_zeros, weights_error, LoadOptions, TextEncoder,
    UNCOND_TENSOR,
};
use crate::error::{Error, Location, Result};

/// A tokenizer set up to pad and truncate every prompt to exactly `len` ids.
struct FixedTokenizer {
    tokenizer: Tokenizer,
    path: PathBuf,
    len: usize,
}

impl FixedTokenizer {
    /// `fallback_pad` names the pad token to use when no tokenizer file says.
    fn load(
        model_dir: &Path,
        len: usize,
        fallback_pad: &[&str],
        fallback_pad_id: Option<u32>,
    ) -> Result<Self> {
        let candidates = [
            model_dir.join("tokenizer.json"),
            model_dir.join("../tokenizer/tokenizer.json"),
        ];
        let Some(path) = candidates.iter().find(|p| p.is_file()).cloned() else {
            let slow = model_dir.join("vocab.json").is_file()
                || model_dir.join("../tokenizer/vocab.json").is_file();
            let hint = if slow {
                " (found only a slow tokenizer's vocab.json/merges.txt: re-save it with transformers' AutoTokenizer.from_pretrained(..., use_fast=True).save_pretrained(...) to get tokenizer.json)"
            } else {
                ""
            };
            return Err(Error::model(
                Location::file(&candidates[0]),
                format!("missing tokenizer.json{hint}"),
            ));
        };
        let mut tokenizer = Tokenizer::from_file(&path).map_err(|e| {
            Error::invalid(Location::file(&path), format!("cannot read tokenizer: {e}"))
        })?;

        // The pad token: transformers keeps it in tokenizer_config.json / special_tokens_map.json beside
        // tokenizer.json (CLIP pads with "<|endoftext|>" or "!", T5 with "<pad>").
        let dir = path.parent().unwrap_or(model_dir);
        let named = ["tokenizer_config.json", "special_tokens_map.json"]
            .iter()
            .filter_map(|f| std::fs::read_to_string(dir.join(f)).ok())
            .filter_map(|t| serde_json::from_str::<Value>(&t).ok())
            .find_map(|v| match v.get("pad_token") {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Object(o)) => {
                    o.get("content").and_then(Value::as_str).map(String::from)
                }
                _ => None,
            });
        let pad = named
            .and_then(|t| tokenizer.token_to_id(&t).map(|id| (t, id)))
            .or_else(|| {
                tokenizer
                    .get_padding()
                    .map(|p| (p.pad_token.clone(), p.pad_id))
            })
            .or_else(|| {
                fallback_pad
                    .iter()
                    .find_map(|t| tokenizer.token_to_id(t).map(|id| (t.to_string(), id)))
            })
            .or_else(|| {
                fallback_pad_id.map(|id| (tokenizer.id_to_token(id).unwrap_or_default(), id))
            });
        let Some((pad_token, pad_id)) = pad else {
            return Err(Error::model(
                Location::file(&path).field("pad_token"),
                "no pad token: none in tokenizer_config.json/special_tokens_map.json, tokenizer.json or the vocabulary",
            ));
        };
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: len,
                ..Default::default()
            }))
            .map_err(|e| {
                Error::invalid(
                    Location::file(&path),
                    format!("truncation to {len} tokens: {e}"),
                )
            })?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(len),
            pad_id,
            pad_token,
            ..Default::default()
        }));
        Ok(Self {
            tokenizer,
            path,
            len,
        })
    }

    /// Token ids (b, len) u32.
    fn ids(&self, prompts: &[&str], device: &Device) -> Result<Tensor> {
        let encs = self
            .tokenizer
            .encode_batch(prompts.to_vec(), true)
            .map_err(|e| Error::invalid(Location::file(&self.path), format!("tokenizing: {e}")))?;
        let mut ids = Vec::with_capacity(prompts.len() * self.len);
        for (e, p) in encs.iter().zip(prompts) {
            if e.get_ids().len() != self.len {
                return Err(Error::invalid(
                    Location::file(&self.path),
                    format!(
                        "prompt {p:?} gave {} tokens, expected {}",
                        e.get_ids().len(),
                        self.len
                    ),
                ));
            }
            ids.extend_from_slice(e.get_ids());
        }
        Ok(Tensor::from_vec(ids, (prompts.len(), self.len), device)?)
    }
}

/// `model.safetensors` of a pretrained directory, with a hint when only a pickle exists.
fn weights_file(dir: &Path) -> Result<PathBuf> {
    let f = dir.join("model.safetensors");
    if f.is_file() {
        return Ok(f);
    }
    let hint = if dir.join("pytorch_model.bin").is_file() {
        " (found pytorch_model.bin: vadapt loads safetensors only; re-save with save_pretrained(safe_serialization=True))"
    } else {
        ""
    };
    Err(Error::model(
        Location::file(&f),
        format!("missing model.safetensors{hint}"),
    ))
}

fn mmap_weights(file: &Path, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
    // SAFETY: the file is memory-mapped read-only; like every safetensors loader we assume nobody truncates
    // it while the model is alive.
    unsafe { VarBuilder::from_mmaped_safetensors(&[file], dtype, device) }
        .map_err(weights_error(file))
}

/// The optional `uncond.safetensors` (tensor `uncond`) beside a pretrained model.
fn load_uncond(dir: &Path, tokens: usize, dim: usize, device: &Device) -> Result<Option<Tensor>> {
    let f = dir.join("uncond.safetensors");
    if !f.is_file() {
        return Ok(None);
    }
    let mut t = candle_core::safetensors::load(&f, device).map_err(weights_error(&f))?;
    match t.remove(UNCOND_TENSOR) {
        Some(u) => Ok(Some(check_uncond(u, tokens, dim, &f)?)),
        None => Err(Error::model(
            Location::file(&f).field(UNCOND_TENSOR),
            "cannot find tensor uncond",
        )),
    }
}

fn d_vocab() -> usize {
    49408
}
fn d_hidden() -> usize {
    512
}
fn d_inter() -> usize {
    2048
}
fn d_layers() -> usize {
    12
}
fn d_heads() -> usize {
    8
}
fn d_max_pos() -> usize {
    77
}
fn d_act() -> String {
    "quick_gelu".into()
}
fn d_ln_eps() -> f64 {
    1e-5
}

/// transformers' `CLIPTextConfig` (the fields the text tower uses; defaults as in configuration_clip.py).
#[derive(Debug, Clone, Deserialize)]
pub struct HfClipTextConfig {
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    #[serde(default = "d_hidden")]
    pub hidden_size: usize,
    #[serde(default = "d_inter")]
    pub intermediate_size: usize,
    #[serde(default = "d_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "d_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "d_act")]
    pub hidden_act: String,
    #[serde(default = "d_ln_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "d_hidden")]
    pub projection_dim: usize,
    pub eos_token_id: Option<u32>,
}

enum ClipModel {
    /// candle-transformers' `clip::text_model`: any size, but quick_gelu and layer_norm_eps 1e-5 only.
    Candle(clip::text_model::ClipTextTransformer),
    /// Our port of transformers' text tower (`clip_text.rs`): the other activations and epsilons.
    Port(ClipTextTransformer),
}

/// Frozen CLIP text encoder (`CLIPTextModel`); the embedding is `last_hidden_state`, (b, 77, hidden_size).
pub struct ClipText {
    model: ClipModel,
    tokenizer: FixedTokenizer,
    config: HfClipTextConfig,
    uncond: Option<Tensor>,
    device: Device,
    span: tracing::Span,
}

impl ClipText {
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        Self::load_with(dir, device, &LoadOptions::default())
    }

    /// Load `dir` (see the module docs). `opts.max_tokens` is ignored: CLIP's positions fix 77 (or whatever
    /// `max_position_embeddings` says).
    pub fn load_with(dir: &Path, device: &Device, opts: &LoadOptions) -> Result<Self> {
        let config_path = dir.join("config.json");
        let json = read_json(&config_path)?;
        // A full CLIPModel config nests the text tower's settings under `text_config`.
        let text_json = json.get("text_config").cloned().unwrap_or(json);
        let config: HfClipTextConfig = serde_json::from_value(text_json).map_err(|e| {
            Error::config(
                Location::file(&config_path),
                format!("CLIP text config: {e}"),
            )
        })?;
        let loc = Location::file(&config_path);
        if config.num_attention_heads == 0 || config.hidden_size % config.num_attention_heads != 0 {
            return Err(Error::config(
                loc.field("num_attention_heads"),
                format!(
                    "hidden_size {} is not a multiple of {}",
                    config.hidden_size, config.num_attention_heads
                ),
            ));
        }
        let Some(activation) = ClipActivation::from_hf(&config.hidden_act) else {
            return Err(Error::unsupported(
                loc.field("hidden_act"),
                format!(
                    "CLIP hidden_act {:?} (supported: \"quick_gelu\", \"gelu\", \"gelu_new\", \"gelu_pytorch_tanh\")",
                    config.hidden_act
                ),
            ));
        };
        if !(config.layer_norm_eps.is_finite() && config.layer_norm_eps > 0.0) {
            return Err(Error::config(
                loc.field("layer_norm_eps"),
                format!("{} (must be finite and positive)", config.layer_norm_eps),
            ));
        }
        let weights = weights_file(dir)?;
        let vb = mmap_weights(&weights, opts.dtype, device)?;
        let model = if activation == ClipActivation::QuickGelu && config.layer_norm_eps == 1e-5 {
            let c = clip::text_model::ClipTextConfig {
                vocab_size: config.vocab_size,
                embed_dim: config.hidden_size,
                activation: clip::text_model::Activation::QuickGelu,
                intermediate_size: config.intermediate_size,
                max_position_embeddings: config.max_position_embeddings,
                pad_with: None,
                num_hidden_layers: config.num_hidden_layers,
                num_attention_heads: config.num_attention_heads,
                projection_dim: config.projection_dim,
            };
            let m = clip::text_model::ClipTextTransformer::new(vb.pp("text_model"), &c)
                .map_err(weights_error(&weights))?;
            ClipModel::Candle(m)
        } else {
            let d = ClipTextDims {
                vocab_size: config.vocab_size,
                hidden: config.hidden_size,
                intermediate_size: config.intermediate_size,
                num_hidden_layers: config.num_hidden_layers,
                num_attention_heads: config.num_attention_heads,
                max_position_embeddings: config.max_position_embeddings,
                activation,
                layer_norm_eps: config.layer_norm_eps,
            };
            let m = ClipTextTransformer::new(vb.pp("text_model"), &d)
                .map_err(weights_error(&weights))?;
            ClipModel::Port(m)
        };
        let len = config.max_position_embeddings;
        let tokenizer = FixedTokenizer::load(dir, len, &["<|endoftext|>"], config.eos_token_id)?;
        let uncond = load_uncond(dir, len, config.hidden_size, device)?;
        Ok(Self {
            model,
            tokenizer,
            config,
            uncond,
            device: device.clone(),
            span: tracing::span!(tracing::Level::TRACE, "clip_text"),
        })
    }

    /// The token ids `encode` feeds the model, (b, max_tokens) u32.
    pub fn token_ids(&self, prompts: &[&str]) -> Result<Tensor> {
        self.tokenizer.ids(prompts, &self.device)
    }

    pub fn config(&self) -> &HfClipTextConfig {
        &self.config
    }

    /// `last_hidden_state` (b, t, hidden_size) f32 of token ids (b, t) (u32 or i64), t <= max_position_embeddings,
    /// under CLIP's causal mask only: what `encode` computes after tokenizing.
    pub fn encode_ids(&self, ids: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        let (_, t) = ids.dims2()?;
        if t > self.config.max_position_embeddings {
            return Err(Error::invalid(
                Location::none().field("input_ids"),
                format!(
                    "{t} tokens, this CLIP has max_position_embeddings {}",
                    self.config.max_position_embeddings
                ),
            ));
        }
        let ids = ids.to_dtype(DType::U32)?;
        let out = match &self.model {
            ClipModel::Candle(m) => m.forward_with_mask(&ids, usize::MAX)?,
            ClipModel::Port(m) => m.forward(&ids)?,
        };
        Ok(out.to_dtype(DType::F32)?)
    }
}

impl TextEncoder for ClipText {
    fn encode(&self, prompts: &[&str]) -> Result<Tensor> {
        let _enter = self.span.enter();
        let ids = self.tokenizer.ids(prompts, &self.device)?;
        self.encode_ids(&ids)
    }
    fn dim(&self) -> usize {
        self.config.hidden_size
    }
    fn max_tokens(&self) -> usize {
        self.config.max_position_embeddings
    }
    fn unconditional(&self, batch: usize) -> Result<Tensor> {
        uncond_or_zeros(
            self.uncond.as_ref(),
            batch,
            self.max_tokens(),
            self.dim(),
            &self.device,
        )
    }
    fn device(&self) -> &Device {
        &self.device
    }
}

/// Frozen T5 encoder (`T5EncoderModel`); the embedding is the encoder's last hidden state, (b, max_tokens,
/// d_model).
pub struct T5Text {
    // candle's T5 forward takes `&mut self` (its attention keeps a cache, unused by the encoder).
    model: Mutex<t5::T5EncoderModel>,
    tokenizer: FixedTokenizer,
    config: t5::Config,
    uncond: Option<Tensor>,
    device: Device,
    span: tracing::Span,
}

impl T5Text {
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        Self::load_with(dir, device, &LoadOptions::default())
    }

    /// Load `dir`; prompts are padded/truncated to `opts.max_tokens` (default 77).
    pub fn load_with(dir: &Path, device: &Device, opts: &LoadOptions) -> Result<Self> {
        let config_path = dir.join("config.json");
        let json = read_json(&config_path)?;
        // candle's t5::Config reads transformers' config.json as it is.
        let config: t5::Config = serde_json::from_value(json)
            .map_err(|e| Error::config(Location::file(&config_path), format!("T5 config: {e}")))?;
        let weights = weights_file(dir)?;
        let vb = mmap_weights(&weights, opts.dtype, device)?;
        let model = t5::T5EncoderModel::load(vb, &config).map_err(weights_error(&weights))?;
        let len = opts.max_tokens.unwrap_or(77);
        if len == 0 {
            return Err(Error::config(
                Location::none().field("max_tokens"),
                "must be positive",
            ));
        }
        let tokenizer =
            FixedTokenizer::load(dir, len, &["<pad>"], Some(config.pad_token_id as u32))?;
        let uncond = load_uncond(dir, len, config.d_model, device)?;
        Ok(Self {
            model: Mutex::new(model),
            tokenizer,
            config,
            uncond,
            device: device.clone(),
            span: tracing::span!(tracing::Level::TRACE, "t5_text"),
        })
    }

    /// The token ids `encode` feeds the model, (b, max_tokens) u32.
    pub fn token_ids(&self, prompts: &[&str]) -> Result<Tensor> {
        self.tokenizer.ids(prompts, &self.device)
    }

    pub fn config(&self) -> &t5::Config {
        &self.config
    }
}

impl TextEncoder for T5Text {
    fn encode(&self, prompts: &[&str]) -> Result<Tensor> {
        let _enter = self.span.enter();
        let ids = self.tokenizer.ids(prompts, &self.device)?;
        let mut model = self
            .model
            .lock()
            .map_err(|_| Error::Cancelled("T5 encoder: a thread panicked while encoding".into()))?;
        Ok(model.forward(&ids)?.to_dtype(DType::F32)?)
    }
    fn dim(&self) -> usize {
        self.config.d_model
    }
    fn max_tokens(&self) -> usize {
        self.tokenizer.len
    }
    fn unconditional(&self, batch: usize) -> Result<Tensor> {
        uncond_or_zeros(
            self.uncond.as_ref(),
            batch,
            self.max_tokens(),
            self.dim(),
            &self.device,
        )
    }
    fn device(&self) -> &Device {
        &self.device
    }
}
