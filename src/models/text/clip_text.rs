//! CLIP's text tower, ported from transformers 4.57.6 `models/clip/modeling_clip.py` (`CLIPTextTransformer`:
//! embeddings, pre-LayerNorm encoder layers under a causal mask, final LayerNorm), for the configs that
//! `candle_transformers::models::clip::text_model` cannot run: that module knows only `quick_gelu` and fixes
//! `layer_norm_eps` to 1e-5, and `stable_diffusion::clip` runs `gelu` only in three fixed sizes, with the tanh
//! approximation where transformers' `"gelu"` is the exact erf GELU. The text encoders of SD 2.x and the
//! ModelScope / Zeroscope text-to-video priors (OpenCLIP ViT-H) are `"gelu"` configs, so they go through here.
//!
//! Same weight names as transformers (`text_model.embeddings.token_embedding`, `text_model.encoder.layers.N.…`,
//! `text_model.final_layer_norm`); parity with transformers on tests/fixtures/parity within 1e-4.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};

/// transformers' `ACT2FN` entries a CLIP config can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipActivation {
    /// `quick_gelu`: x * sigmoid(1.702 x) (OpenAI CLIP).
    QuickGelu,
    /// `gelu`: exact GELU, x * Phi(x) (erf).
    Gelu,
    /// `gelu_new` / `gelu_pytorch_tanh`: the tanh approximation.
    GeluTanh,
}

impl ClipActivation {
    /// The activation `hidden_act` names, or None when transformers' name is not one of the above.
    pub fn from_hf(name: &str) -> Option<Self> {
        match name {
            "quick_gelu" => Some(Self::QuickGelu),
            "gelu" => Some(Self::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" => Some(Self::GeluTanh),
            _ => None,
        }
    }

    fn forward(self, xs: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::QuickGelu => xs * candle_nn::ops::sigmoid(&(xs * 1.702f64)?)?,
            Self::Gelu => xs.gelu_erf(),
            Self::GeluTanh => xs.gelu(),
        }
    }
}

/// The sizes the text tower needs (transformers' `CLIPTextConfig` names in comments).
#[derive(Debug, Clone)]
pub struct ClipTextDims {
    pub vocab_size: usize,
    /// hidden_size
    pub hidden: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub activation: ClipActivation,
    pub layer_norm_eps: f64,
}

/// `CLIPAttention`: multi-head self-attention, queries scaled by head_dim^-0.5.
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(vb: VarBuilder, d: &ClipTextDims) -> candle_core::Result<Self> {
        let h = d.hidden;
        Ok(Self {
            q_proj: candle_nn::linear(h, h, vb.pp("q_proj"))?,
            k_proj: candle_nn::linear(h, h, vb.pp("k_proj"))?,
            v_proj: candle_nn::linear(h, h, vb.pp("v_proj"))?,
            out_proj: candle_nn::linear(h, h, vb.pp("out_proj"))?,
            heads: d.num_attention_heads,
            head_dim: h / d.num_attention_heads,
        })
    }

    /// (b, t, hidden) -> (b, heads, t, head_dim).
    fn split(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t, _) = xs.dims3()?;
        xs.reshape((b, t, self.heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()
    }

    fn forward(&self, xs: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t, hidden) = xs.dims3()?;
        let scale = (self.head_dim as f64).powf(-0.5);
        let q = self.split(&(self.q_proj.forward(xs)? * scale)?)?;
        let k = self.split(&self.k_proj.forward(xs)?)?;
        let v = self.split(&self.v_proj.forward(xs)?)?;
        let scores = q.matmul(&k.t()?)?.broadcast_add(mask)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, t, hidden))?;
        self.out_proj.forward(&out)
    }
}

/// `CLIPEncoderLayer`: x + attn(ln1(x)), then x + fc2(act(fc1(ln2(x)))).
struct EncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: Attention,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: ClipActivation,
}

impl EncoderLayer {
    fn new(vb: VarBuilder, d: &ClipTextDims) -> candle_core::Result<Self> {
        let h = d.hidden;
        Ok(Self {
            layer_norm1: candle_nn::layer_norm(h, d.layer_norm_eps, vb.pp("layer_norm1"))?,
            self_attn: Attention::new(vb.pp("self_attn"), d)?,
            layer_norm2: candle_nn::layer_norm(h, d.layer_norm_eps, vb.pp("layer_norm2"))?,
            fc1: candle_nn::linear(h, d.intermediate_size, vb.pp("mlp").pp("fc1"))?,
            fc2: candle_nn::linear(d.intermediate_size, h, vb.pp("mlp").pp("fc2"))?,
            act: d.activation,
        })
    }

    fn forward(&self, xs: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let xs = (xs
            + self
                .self_attn
                .forward(&self.layer_norm1.forward(xs)?, mask)?)?;
        let mlp = self.fc2.forward(
            &self
                .act
                .forward(&self.fc1.forward(&self.layer_norm2.forward(&xs)?)?)?,
        )?;
        xs + mlp
    }
}

/// `CLIPTextTransformer`; [`forward`](Self::forward) gives `last_hidden_state`.
pub struct ClipTextTransformer {
    token_embedding: Embedding,
    position_embedding: Embedding,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    max_positions: usize,
    span: tracing::Span,
}

impl ClipTextTransformer {
    /// `vb` at the text tower (`text_model` in a `CLIPTextModel` checkpoint).
    pub fn new(vb: VarBuilder, d: &ClipTextDims) -> candle_core::Result<Self> {
        let emb = vb.pp("embeddings");
        let token_embedding =
            candle_nn::embedding(d.vocab_size, d.hidden, emb.pp("token_embedding"))?;
        let position_embedding = candle_nn::embedding(
            d.max_position_embeddings,
            d.hidden,
            emb.pp("position_embedding"),
        )?;
        let layers = (0..d.num_hidden_layers)
            .map(|i| EncoderLayer::new(vb.pp("encoder").pp("layers").pp(i.to_string()), d))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let final_layer_norm =
            candle_nn::layer_norm(d.hidden, d.layer_norm_eps, vb.pp("final_layer_norm"))?;
        Ok(Self {
            token_embedding,
            position_embedding,
            layers,
            final_layer_norm,
            max_positions: d.max_position_embeddings,
            span: tracing::span!(tracing::Level::TRACE, "clip_text_port"),
        })
    }

    /// `last_hidden_state` (b, t, hidden) of token ids (b, t), t <= max_position_embeddings, under the causal mask
    /// only (no padding mask, as diffusers' pipelines run CLIP).
    pub fn forward(&self, input_ids: &Tensor) -> candle_core::Result<Tensor> {
        let _enter = self.span.enter();
        let (_, t) = input_ids.dims2()?;
        if t > self.max_positions {
            candle_core::bail!(
                "{t} tokens, but this CLIP has {} positions",
                self.max_positions
            );
        }
        let device = input_ids.device();
        let positions = Tensor::arange(0u32, t as u32, device)?;
        let mut xs = self
            .token_embedding
            .forward(input_ids)?
            .broadcast_add(&self.position_embedding.forward(&positions)?)?;
        let mask = causal_mask(t, xs.dtype(), device)?;
        for layer in &self.layers {
            xs = layer.forward(&xs, &mask)?;
        }
        self.final_layer_norm.forward(&xs)
    }
}

/// (t, t): 0 on and below the diagonal, the dtype's lowest value above it (transformers'
/// `_create_4d_causal_attention_mask`).
fn causal_mask(t: usize, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
    let m: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j > i { f32::MIN } else { 0.0 }))
        .collect();
    Tensor::from_vec(m, (t, t), device)?.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;

    /// With quick_gelu and eps 1e-5 the port computes what candle-transformers' `clip::text_model` computes.
    #[test]
    fn port_matches_candle_for_quick_gelu() {
        let dev = Device::Cpu;
        let vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&vars, DType::F32, &dev);
        let c = candle_transformers::models::clip::text_model::ClipTextConfig {
            vocab_size: 50,
            embed_dim: 16,
            activation: candle_transformers::models::clip::text_model::Activation::QuickGelu,
            intermediate_size: 24,
            max_position_embeddings: 10,
            pad_with: None,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            projection_dim: 16,
        };
        let theirs = candle_transformers::models::clip::text_model::ClipTextTransformer::new(
            vb.pp("text_model"),
            &c,
        )
        .unwrap();
        let d = ClipTextDims {
            vocab_size: 50,
            hidden: 16,
            intermediate_size: 24,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            max_position_embeddings: 10,
            activation: ClipActivation::QuickGelu,
            layer_norm_eps: 1e-5,
        };
        let ours = ClipTextTransformer::new(vb.pp("text_model"), &d).unwrap();
        let ids = Tensor::new(
            &[[3u32, 7, 1, 49, 0, 0, 0, 5], [1, 2, 3, 4, 5, 6, 7, 8]],
            &dev,
        )
        .unwrap();
        let a = ours.forward(&ids).unwrap();
        let b = theirs.forward_with_mask(&ids, usize::MAX).unwrap();
        assert_eq!(a.dims(), &[2, 8, 16]);
        let diff = crate::models::max_abs_diff(&a, &b);
        assert!(diff < 1e-5, "port vs candle-transformers: {diff}");
        // Later tokens cannot change earlier outputs (causal mask).
        let ids2 = Tensor::new(&[[3u32, 7, 1, 49, 9, 9, 9, 9]], &dev).unwrap();
        let c2 = ours.forward(&ids2).unwrap();
        let diff_prefix = crate::models::max_abs_diff(
            &c2.narrow(1, 0, 4).unwrap(),
            &a.narrow(0, 0, 1).unwrap().narrow(1, 0, 4).unwrap(),
        );
        assert!(diff_prefix < 1e-6, "{diff_prefix}");
        let diff_suffix = crate::models::max_abs_diff(
            &c2.narrow(1, 4, 4).unwrap(),
            &a.narrow(0, 0, 1).unwrap().narrow(1, 4, 4).unwrap(),
        );
        assert!(diff_suffix > 1e-3, "{diff_suffix}");
        // Too many tokens is an error, not a panic.
        let long = Tensor::zeros((1, 11), DType::U32, &dev).unwrap();
        assert!(ours.forward(&long).is_err());
    }
}
