//! The embedded default text encoder: a small transformer over the UTF-8 bytes of the prompt.
//!
//! No tokenizer file to ship: token ids are the bytes 0..=255 plus [`BOS`], [`EOS`] and [`PAD`], and optionally
//! whole-word tokens after them (`words` in the config, ids 259..). A word of the prompt (a maximal run of ASCII
//! letters and digits) that is in `words` becomes one token; every other byte stays a byte token, so any prompt
//! still encodes. Whole words are what lets a small encoder trained from scratch learn a style name in a few
//! hundred steps: from bytes alone it must first learn to spell (docs/results.md, "Teaching the prior its style
//! words"). It is a one-level merge table in the spirit of BPE, without the merges. Layout (CLIP's text tower, pre-LayerNorm, but bidirectional instead of causal):
//! ```text
//! x   = token_embedding[ids] + position_embedding[0..L]
//! x   = x + self_attn(layer_norm1(x), key_padding_mask)      (per layer)
//! x   = x + fc2(gelu(fc1(layer_norm2(x))))
//! out = final_layer_norm(x) * mask                           (padded rows zero, unless padded_rows = "prompt")
//! ```
//! Padded keys get a -1e9 attention bias, so their softmax weight is exactly 0 and padding never leaks into
//! real tokens. Padded output rows are zeroed by default; with `padded_rows = "prompt"` they keep the transformer's
//! output: a padded position attends only to the prompt's tokens, so, like CLIP's padding positions (which the
//! causal mask lets see the whole prompt), it carries a summary of the prompt. That matters to a UNet whose
//! cross-attention has no key mask: zero rows take their share of every softmax (score 0) and give nothing, so a
//! 10-token prompt in 64 rows reaches it at about 1/6 of its strength, and a style word at about 1/64.
//!
//! Weight names follow Hugging Face `CLIPTextModel` without the `text_model.` prefix
//! (`embeddings.token_embedding.weight`, `layers.0.self_attn.q_proj.weight`, `final_layer_norm.bias`, …).
//! Stored as `config.json` + `model.safetensors` (+ an optional `uncond` tensor) in a `text_encoder/` folder.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use super::{check_uncond, uncond_or_zeros, weights_error, TextEncoder, UNCOND_TENSOR};
use crate::error::{Error, IoResultExt, Location, Result};
use crate::rng::NoiseRng;

/// `model_type` in the byte encoder's `config.json`.
pub const MODEL_TYPE: &str = "vadapt_byte_text";
/// Begin-of-text token id.
pub const BOS: u32 = 256;
/// End-of-text token id.
pub const EOS: u32 = 257;
/// Padding token id.
pub const PAD: u32 = 258;
/// 256 byte values + BOS, EOS, PAD.
pub const BYTE_VOCAB_SIZE: usize = 259;

fn d_model_type() -> String {
    MODEL_TYPE.into()
}
fn d_max_pos() -> usize {
    77
}
fn d_eps() -> f64 {
    1e-5
}

/// `text_encoder/config.json` of the byte encoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ByteEncoderConfig {
    #[serde(default = "d_model_type")]
    pub model_type: String,
    /// Embedding width; equals the UNet's `cross_attention_dim`.
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Width of the MLP's hidden layer.
    pub intermediate_size: usize,
    /// Tokens per prompt, BOS and EOS included (77, like CLIP).
    #[serde(default = "d_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    /// Whole-word tokens: `words[i]` has id [`BYTE_VOCAB_SIZE`] + i. Empty: bytes only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub words: Vec<String>,
    /// What the output rows after the prompt hold (see the module docs).
    #[serde(default, skip_serializing_if = "PaddedRows::is_zeros")]
    pub padded_rows: PaddedRows,
}

/// The output rows at padded positions: zeros, or the transformer's output there (a summary of the prompt).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PaddedRows {
    #[default]
    Zeros,
    Prompt,
}

impl PaddedRows {
    fn is_zeros(&self) -> bool {
        *self == PaddedRows::Zeros
    }
}

impl ByteEncoderConfig {
    /// A small default: 2 layers, 4 heads, MLP 4x wide, 77 tokens.
    pub fn small(hidden_size: usize) -> Self {
        Self {
            model_type: MODEL_TYPE.into(),
            hidden_size,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            intermediate_size: 4 * hidden_size,
            max_position_embeddings: 77,
            layer_norm_eps: 1e-5,
            words: Vec::new(),
            padded_rows: PaddedRows::Zeros,
        }
    }

    /// Rows of the token embedding: bytes, BOS, EOS, PAD, then the words.
    pub fn vocab_size(&self) -> usize {
        BYTE_VOCAB_SIZE + self.words.len()
    }

    /// Check the numbers fit together; `loc` names the config file where there is one.
    pub fn validate(&self, loc: &Location) -> Result<()> {
        let bad = |field: &str, msg: String| Err(Error::config(loc.clone().field(field), msg));
        if self.model_type != MODEL_TYPE {
            return bad(
                "model_type",
                format!("{:?}, expected {MODEL_TYPE:?}", self.model_type),
            );
        }
        if self.hidden_size == 0
            || self.num_attention_heads == 0
            || self.hidden_size % self.num_attention_heads != 0
        {
            return bad(
                "num_attention_heads",
                format!(
                    "hidden_size {} must be a positive multiple of num_attention_heads {}",
                    self.hidden_size, self.num_attention_heads
                ),
            );
        }
        if self.intermediate_size == 0 {
            return bad("intermediate_size", "must be positive".into());
        }
        let mut seen = std::collections::HashSet::new();
        for w in &self.words {
            if !is_word(w) {
                return bad(
                    "words",
                    format!("{w:?}: a word token is a non-empty run of ASCII letters and digits"),
                );
            }
            if !seen.insert(w) {
                return bad("words", format!("{w:?} is listed twice"));
            }
        }
        if self.max_position_embeddings < 2 {
            return bad(
                "max_position_embeddings",
                format!(
                    "{} leaves no room for BOS and EOS",
                    self.max_position_embeddings
                ),
            );
        }
        if self.max_position_embeddings > crate::limits::MAX_TOKENS {
            return bad(
                "max_position_embeddings",
                format!(
                    "{} tokens is past the limit of {}",
                    self.max_position_embeddings,
                    crate::limits::MAX_TOKENS
                ),
            );
        }
        Ok(())
    }
}

/// LayerNorm through plain tensor ops. candle-nn's fused `LayerNorm::forward` and `softmax_last_dim` have no
/// backward pass, so a model trained jointly with a UNet must use the composed versions; inference uses them
/// too, so a trained-then-saved model and its reloaded copy compute exactly the same thing.
fn layer_norm(ln: &LayerNorm, x: &Tensor) -> candle_core::Result<Tensor> {
    let eps = ln.eps();
    match ln.bias() {
        Some(b) => candle_nn::ops::layer_norm_slow(x, ln.weight(), b, eps as f32),
        None => Err(candle_core::Error::Msg(
            "byte text encoder LayerNorm without bias".into(),
        )),
    }
}

/// Multi-head self-attention with a key-padding bias.
#[derive(Debug, Clone)]
struct SelfAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
    head_dim: usize,
}

impl SelfAttention {
    fn new(vb: VarBuilder, c: &ByteEncoderConfig) -> candle_core::Result<Self> {
        let d = c.hidden_size;
        Ok(Self {
            q_proj: candle_nn::linear(d, d, vb.pp("q_proj"))?,
            k_proj: candle_nn::linear(d, d, vb.pp("k_proj"))?,
            v_proj: candle_nn::linear(d, d, vb.pp("v_proj"))?,
            out_proj: candle_nn::linear(d, d, vb.pp("out_proj"))?,
            heads: c.num_attention_heads,
            head_dim: d / c.num_attention_heads,
        })
    }

    /// `x` (b, L, d); `bias` (b, 1, 1, L): 0 for real keys, -1e9 for padding.
    fn forward(&self, x: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
        let (b, l, d) = x.dims3()?;
        let split = |t: Tensor| {
            t.reshape((b, l, self.heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(self.q_proj.forward(x)?)?;
        let k = split(self.k_proj.forward(x)?)?;
        let v = split(self.v_proj.forward(x)?)?;
        // softmax(q kᵀ / sqrt(head_dim) + bias) v  (Vaswani et al. 2017, eq. 1)
        let scale = (self.head_dim as f64).powf(-0.5);
        let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(bias)?;
        let attn = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let out = attn.matmul(&v)?.transpose(1, 2)?.reshape((b, l, d))?;
        self.out_proj.forward(&out)
    }
}

#[derive(Debug, Clone)]
struct EncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: SelfAttention,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl EncoderLayer {
    fn new(vb: VarBuilder, c: &ByteEncoderConfig) -> candle_core::Result<Self> {
        let d = c.hidden_size;
        Ok(Self {
            layer_norm1: candle_nn::layer_norm(d, c.layer_norm_eps, vb.pp("layer_norm1"))?,
            self_attn: SelfAttention::new(vb.pp("self_attn"), c)?,
            layer_norm2: candle_nn::layer_norm(d, c.layer_norm_eps, vb.pp("layer_norm2"))?,
            fc1: candle_nn::linear(d, c.intermediate_size, vb.pp("mlp").pp("fc1"))?,
            fc2: candle_nn::linear(c.intermediate_size, d, vb.pp("mlp").pp("fc2"))?,
        })
    }

    fn forward(&self, x: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
        let x = (x + self
            .self_attn
            .forward(&layer_norm(&self.layer_norm1, x)?, bias)?)?;
        // Exact (erf) GELU, PyTorch's nn.GELU() default.
        let h = self
            .fc1
            .forward(&layer_norm(&self.layer_norm2, &x)?)?
            .gelu_erf()?;
        x + self.fc2.forward(&h)?
    }
}

/// The byte-level text encoder. Cheap to clone (tensors are shared).
#[derive(Debug, Clone)]
pub struct ByteTextEncoder {
    config: ByteEncoderConfig,
    token_embedding: Embedding,
    position_embedding: Embedding,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    /// The model's own unconditional embedding, (1, tokens, dim).
    uncond: Option<Tensor>,
    device: Device,
    span: tracing::Span,
}

impl ByteTextEncoder {
    /// Build from a `VarBuilder` (a `VarMap` for training, loaded tensors for inference). Missing tensors
    /// are reported by name.
    pub fn new(vb: VarBuilder, config: &ByteEncoderConfig) -> Result<Self> {
        config.validate(&Location::none())?;
        let c = config;
        let d = c.hidden_size;
        // CLIP's initializer: N(0, 0.02) for both embeddings (only used when `vb` creates the variables).
        let init = candle_nn::Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let emb = vb.pp("embeddings");
        let tok = emb
            .pp("token_embedding")
            .get_with_hints((c.vocab_size(), d), "weight", init)?;
        let pos = emb.pp("position_embedding").get_with_hints(
            (c.max_position_embeddings, d),
            "weight",
            init,
        )?;
        let layers = (0..c.num_hidden_layers)
            .map(|i| EncoderLayer::new(vb.pp("layers").pp(i.to_string()), c))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let final_layer_norm =
            candle_nn::layer_norm(d, c.layer_norm_eps, vb.pp("final_layer_norm"))?;
        Ok(Self {
            config: config.clone(),
            token_embedding: Embedding::new(tok, d),
            position_embedding: Embedding::new(pos, d),
            layers,
            final_layer_norm,
            uncond: None,
            device: vb.device().clone(),
            span: tracing::span!(tracing::Level::TRACE, "byte_text_encoder"),
        })
    }

    /// A freshly initialised, trainable encoder whose weights depend only on `seed`: N(0, 0.02) matrices
    /// and embeddings, zero biases, unit LayerNorm gains (GPT-2/CLIP style). The `VarMap` holds the
    /// variables for an optimizer.
    pub fn random(
        config: &ByteEncoderConfig,
        seed: u64,
        device: &Device,
    ) -> Result<(Self, VarMap)> {
        let varmap = VarMap::new();
        let model = Self::new(VarBuilder::from_varmap(&varmap, DType::F32, device), config)?;
        // candle's own initializers draw from an unseeded RNG; overwrite every variable in name order.
        let mut rng = NoiseRng::new(seed);
        let data = varmap
            .data()
            .lock()
            .map_err(|_| Error::Cancelled("VarMap lock poisoned".into()))?;
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        for name in names {
            let var = &data[name];
            let shape = var.shape().clone();
            let value = if name.ends_with(".bias") {
                Tensor::zeros(shape, DType::F32, device)?
            } else if name.contains("layer_norm") {
                Tensor::ones(shape, DType::F32, device)?
            } else {
                (rng.randn(shape, device)? * 0.02)?
            };
            var.set(&value)?;
        }
        drop(data);
        Ok((model, varmap))
    }

    /// Load `dir/config.json` + `dir/model.safetensors` (F32).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        Self::load_with_dtype(dir, device, DType::F32)
    }

    /// Load with weights converted to `dtype` (outputs stay F32).
    pub fn load_with_dtype(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).at(&config_path)?;
        let config: ByteEncoderConfig = serde_json::from_str(&text).map_err(|e| {
            Error::config(
                Location::file(&config_path),
                format!("byte text encoder config: {e}"),
            )
        })?;
        config.validate(&Location::file(&config_path))?;

        let weights = dir.join("model.safetensors");
        if !weights.is_file() {
            return Err(Error::model(
                Location::file(&weights),
                "missing model.safetensors (the byte text encoder's weights)",
            ));
        }
        let mut tensors: HashMap<String, Tensor> =
            candle_core::safetensors::load(&weights, device).map_err(weights_error(&weights))?;
        let uncond = tensors.remove(UNCOND_TENSOR);
        let vb = VarBuilder::from_tensors(tensors, dtype, device);
        let mut model = match Self::new(vb, &config) {
            Ok(m) => m,
            Err(Error::Tensor(e)) => return Err(weights_error(&weights)(e)),
            Err(e) => return Err(e),
        };
        if let Some(u) = uncond {
            model.uncond = Some(check_uncond(
                u,
                config.max_position_embeddings,
                config.hidden_size,
                &weights,
            )?);
        }
        Ok(model)
    }

    /// Write `dir/config.json` and `dir/model.safetensors` (F32, with `uncond` if set). Loading them back gives
    /// bit-identical outputs.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).at(dir)?;
        let config_path = dir.join("config.json");
        let json = serde_json::to_string_pretty(&self.config)
            .map_err(|e| Error::invalid(Location::file(&config_path), e.to_string()))?;
        crate::io::fs::write_atomic(&config_path, (json + "\n").as_bytes())?;
        let weights = dir.join("model.safetensors");
        let tensors: HashMap<String, Tensor> = self
            .named_tensors()
            .into_iter()
            .map(|(k, t)| Ok((k, t.to_dtype(DType::F32)?)))
            .collect::<Result<_>>()?;
        let tmp = crate::io::fs::temp_path_for(&weights);
        candle_core::safetensors::save(&tensors, &tmp).map_err(weights_error(&weights))?;
        std::fs::rename(&tmp, &weights).at(&weights)?;
        Ok(())
    }

    /// Every weight by its safetensors name (plus `uncond` when set).
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![
            (
                "embeddings.token_embedding.weight".to_string(),
                self.token_embedding.embeddings().clone(),
            ),
            (
                "embeddings.position_embedding.weight".to_string(),
                self.position_embedding.embeddings().clone(),
            ),
        ];
        let mut ln = |name: String, l: &LayerNorm| {
            out.push((format!("{name}.weight"), l.weight().clone()));
            if let Some(b) = l.bias() {
                out.push((format!("{name}.bias"), b.clone()));
            }
        };
        let mut lns = Vec::new();
        let mut lins = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            let p = format!("layers.{i}");
            lns.push((format!("{p}.layer_norm1"), &layer.layer_norm1));
            lns.push((format!("{p}.layer_norm2"), &layer.layer_norm2));
            let a = &layer.self_attn;
            for (n, l) in [
                ("q_proj", &a.q_proj),
                ("k_proj", &a.k_proj),
                ("v_proj", &a.v_proj),
                ("out_proj", &a.out_proj),
            ] {
                lins.push((format!("{p}.self_attn.{n}"), l));
            }
            lins.push((format!("{p}.mlp.fc1"), &layer.fc1));
            lins.push((format!("{p}.mlp.fc2"), &layer.fc2));
        }
        lns.push(("final_layer_norm".to_string(), &self.final_layer_norm));
        for (name, l) in lns {
            ln(name, l);
        }
        for (name, l) in lins {
            out.push((format!("{name}.weight"), l.weight().clone()));
            if let Some(b) = l.bias() {
                out.push((format!("{name}.bias"), b.clone()));
            }
        }
        if let Some(u) = &self.uncond {
            out.push((UNCOND_TENSOR.to_string(), u.clone()));
        }
        out
    }

    pub fn config(&self) -> &ByteEncoderConfig {
        &self.config
    }

    /// Set (or clear) the model's own unconditional embedding, (tokens, dim) or (1, tokens, dim).
    pub fn set_uncond(&mut self, uncond: Option<Tensor>) -> Result<()> {
        let c = &self.config;
        self.uncond = match uncond {
            Some(u) => Some(check_uncond(
                u,
                c.max_position_embeddings,
                c.hidden_size,
                Path::new("<set_uncond>"),
            )?),
            None => None,
        };
        Ok(())
    }

    /// Tokens of `prompt`: `[BOS, tokens…, EOS]`, truncated so the whole fits `max_position_embeddings`. A word in
    /// the config's `words` is one token, anything else its bytes. (Truncation may cut a multi-byte character; the
    /// model sees bytes, so that is harmless.)
    pub fn token_ids(&self, prompt: &str) -> Vec<u32> {
        let room = self.config.max_position_embeddings - 2;
        let mut ids = Vec::with_capacity(prompt.len().min(room) + 2);
        ids.push(BOS);
        for piece in word_pieces(prompt) {
            match self.word_id(piece) {
                Some(id) => ids.push(id),
                None => ids.extend(piece.bytes().map(u32::from)),
            }
        }
        ids.truncate(room + 1);
        ids.push(EOS);
        ids
    }

    fn word_id(&self, piece: &str) -> Option<u32> {
        self.config
            .words
            .iter()
            .position(|w| w == piece)
            .map(|i| (BYTE_VOCAB_SIZE + i) as u32)
    }

    /// Tokens padded to `len` (>= the longest prompt's tokens, <= max_position_embeddings): ids (b, len) u32
    /// and the attention mask (b, len) f32, 1 for real tokens and 0 for padding.
    pub fn tokenize_to(&self, prompts: &[&str], len: usize) -> Result<(Tensor, Tensor)> {
        let max = self.config.max_position_embeddings;
        if len > max {
            return Err(Error::invalid(
                Location::none(),
                format!("{len} tokens exceed max_position_embeddings {max}"),
            ));
        }
        let mut ids = Vec::with_capacity(prompts.len() * len);
        let mut mask = Vec::with_capacity(prompts.len() * len);
        for p in prompts {
            let t = self.token_ids(p);
            if t.len() > len {
                return Err(Error::invalid(
                    Location::none(),
                    format!("prompt needs {} tokens, padding to {len}", t.len()),
                ));
            }
            mask.extend(
                std::iter::repeat_n(1f32, t.len()).chain(std::iter::repeat_n(0f32, len - t.len())),
            );
            ids.extend(
                t.iter()
                    .copied()
                    .chain(std::iter::repeat_n(PAD, len - t.len())),
            );
        }
        let b = prompts.len();
        Ok((
            Tensor::from_vec(ids, (b, len), &self.device)?,
            Tensor::from_vec(mask, (b, len), &self.device)?,
        ))
    }

    /// The transformer on given tokens: `ids` (b, L) u32, `mask` (b, L) f32 (1 real, 0 padding), L <=
    /// max_position_embeddings. Returns (b, L, hidden_size) F32 with padded rows zero (or, with `padded_rows =
    /// "prompt"`, the prompt's summary there). Differentiable with
    /// respect to the weights (for joint training).
    pub fn forward_tokens(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        let (b, l) = ids.dims2()?;
        let pos = Tensor::arange(0u32, l as u32, &self.device)?;
        let mut x = self
            .token_embedding
            .forward(ids)?
            .broadcast_add(&self.position_embedding.forward(&pos)?.unsqueeze(0)?)?;
        let mask = mask.to_dtype(DType::F32)?;
        // Additive key-padding bias: (mask - 1) * 1e9 is 0 for real keys, -1e9 for padding (exp underflows to 0).
        let bias = mask
            .affine(1e9, -1e9)?
            .reshape((b, 1, 1, l))?
            .to_dtype(x.dtype())?;
        for layer in &self.layers {
            x = layer.forward(&x, &bias)?;
        }
        let x = layer_norm(&self.final_layer_norm, &x)?.to_dtype(DType::F32)?;
        match self.config.padded_rows {
            PaddedRows::Zeros => Ok(x.broadcast_mul(&mask.unsqueeze(D::Minus1)?)?),
            PaddedRows::Prompt => Ok(x),
        }
    }
}

/// `text` split into maximal runs of ASCII letters and digits and the single bytes' characters between them, in
/// order; concatenated they give `text` back.
pub fn word_pieces(text: &str) -> impl Iterator<Item = &str> {
    let bytes = text.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        if i >= bytes.len() {
            return None;
        }
        let start = i;
        if bytes[i].is_ascii_alphanumeric() {
            while i < bytes.len() && bytes[i].is_ascii_alphanumeric() {
                i += 1;
            }
        } else {
            // One character (all its bytes), so the piece is valid UTF-8.
            i += 1;
            while i < bytes.len() && !text.is_char_boundary(i) {
                i += 1;
            }
        }
        Some(&text[start..i])
    })
}

/// Whether a piece of [`word_pieces`] (or a configured word token) is a word: a non-empty run of ASCII letters and
/// digits.
fn is_word(piece: &str) -> bool {
    !piece.is_empty() && piece.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The whole-word vocabulary of a corpus of prompts: every word (see [`word_pieces`]) seen at least `min_count`
/// times, most frequent first, ties in byte order.
pub fn corpus_words<'a>(
    prompts: impl IntoIterator<Item = &'a str>,
    min_count: usize,
) -> Vec<String> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for p in prompts {
        for w in word_pieces(p).filter(|w| is_word(w)) {
            *counts.entry(w).or_default() += 1;
        }
    }
    let mut words: Vec<(&str, usize)> = counts
        .into_iter()
        .filter(|&(_, n)| n >= min_count)
        .collect();
    words.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    words.into_iter().map(|(w, _)| w.to_string()).collect()
}

impl TextEncoder for ByteTextEncoder {
    /// The words of `prompt` that are not whole-word tokens, for an encoder that has `words` (else none): a
    /// prompt naming a style the model was never trained on reaches it only as bytes.
    fn unknown_words(&self, prompt: &str) -> Vec<String> {
        if self.config.words.is_empty() {
            return Vec::new();
        }
        word_pieces(prompt)
            .filter(|p| is_word(p) && self.word_id(p).is_none())
            .map(str::to_string)
            .collect()
    }

    fn encode(&self, prompts: &[&str]) -> Result<Tensor> {
        let (ids, mask) = self.tokenize_to(prompts, self.config.max_position_embeddings)?;
        self.forward_tokens(&ids, &mask)
    }
    fn dim(&self) -> usize {
        self.config.hidden_size
    }
    fn max_tokens(&self) -> usize {
        self.config.max_position_embeddings
    }
    fn unconditional(&self, batch: usize) -> Result<Tensor> {
        let c = &self.config;
        uncond_or_zeros(
            self.uncond.as_ref(),
            batch,
            c.max_position_embeddings,
            c.hidden_size,
            &self.device,
        )
    }
    fn device(&self) -> &Device {
        &self.device
    }
}
