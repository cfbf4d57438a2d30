//! Attention blocks of the UNet3D, ported from diffusers 0.42.1: `models/attention_processor.py::Attention`
//! (AttnProcessor2_0: softmax(q k^T / sqrt(d)) v), `models/attention.py` (`BasicTransformerBlock`, `FeedForward`
//! with GEGLU), `models/transformers/transformer_2d.py` (continuous input, linear projection) and
//! `models/transformers/transformer_temporal.py`.

use candle_core::Tensor;
use candle_nn::{LayerNorm, Linear, VarBuilder};

use super::kernels::{self, TokenLayout};
use super::resnet::GroupNorm;
use crate::error::Result;

/// Multi-head attention. Queries from `x`; keys/values from `context` (cross-attention) or `x` (self-attention).
#[derive(Debug, Clone)]
pub struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    scale: f64,
}

impl Attention {
    pub fn new(
        query_dim: usize,
        context_dim: Option<usize>,
        heads: usize,
        head_dim: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let inner = heads * head_dim;
        let ctx = context_dim.unwrap_or(query_dim);
        Ok(Self {
            to_q: candle_nn::linear_no_bias(query_dim, inner, vb.pp("to_q"))?,
            to_k: candle_nn::linear_no_bias(ctx, inner, vb.pp("to_k"))?,
            to_v: candle_nn::linear_no_bias(ctx, inner, vb.pp("to_v"))?,
            to_out: candle_nn::linear(inner, query_dim, vb.pp("to_out").pp("0"))?,
            heads,
            scale: 1.0 / (head_dim as f64).sqrt(),
        })
    }

    /// `x` (B, N, query_dim), `context` (B, M, context_dim) or None.
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        self.forward_residual(x, context, None)
    }

    /// `forward(x, context) + residual`, the addition fused into the output projection where it can be.
    pub fn forward_residual(
        &self,
        x: &Tensor,
        context: Option<&Tensor>,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let ctx = context.unwrap_or(x);
        let q = kernels::linear(x, &self.to_q, None)?;
        let k = kernels::linear(ctx, &self.to_k, None)?;
        let v = kernels::linear(ctx, &self.to_v, None)?;
        let out = kernels::attention(&q, &k, &v, self.heads, self.scale)?;
        Ok(kernels::linear(&out, &self.to_out, residual)?)
    }
}

/// `FeedForward(dim, activation_fn="geglu")`: `net.0.proj` Linear(dim, 2*4*dim) split into (h, gate),
/// `h * gelu(gate)` (exact erf GELU), then `net.2` Linear(4*dim, dim).
#[derive(Debug, Clone)]
pub struct FeedForward {
    proj: Linear,
    out: Linear,
}

impl FeedForward {
    pub fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        let inner = 4 * dim;
        Ok(Self {
            proj: candle_nn::linear(dim, 2 * inner, vb.pp("net").pp("0").pp("proj"))?,
            out: candle_nn::linear(inner, dim, vb.pp("net").pp("2"))?,
        })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_residual(x, None)
    }

    /// `forward(x) + residual`, the addition fused into the output projection where it can be.
    pub fn forward_residual(&self, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        Ok(kernels::feed_forward_geglu(
            x, &self.proj, &self.out, residual,
        )?)
    }
}

/// `BasicTransformerBlock` (norm_type "layer_norm", eps 1e-5):
/// `x = attn1(norm1(x)) + x; x = attn2(norm2(x), context) + x; x = ff(norm3(x)) + x`.
/// With `double_self_attention` attn2 is a second self-attention (the temporal transformers).
#[derive(Debug, Clone)]
pub struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    attn2_is_cross: bool,
    norm3: LayerNorm,
    ff: FeedForward,
}

impl BasicTransformerBlock {
    pub fn new(
        dim: usize,
        heads: usize,
        head_dim: usize,
        cross_attention_dim: Option<usize>,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            norm1: candle_nn::layer_norm(dim, 1e-5, vb.pp("norm1"))?,
            attn1: Attention::new(dim, None, heads, head_dim, vb.pp("attn1"))?,
            norm2: candle_nn::layer_norm(dim, 1e-5, vb.pp("norm2"))?,
            attn2: Attention::new(dim, cross_attention_dim, heads, head_dim, vb.pp("attn2"))?,
            attn2_is_cross: cross_attention_dim.is_some(),
            norm3: candle_nn::layer_norm(dim, 1e-5, vb.pp("norm3"))?,
            ff: FeedForward::new(dim, vb.pp("ff"))?,
        })
    }

    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let x =
            self.attn1
                .forward_residual(&kernels::layer_norm(x, &self.norm1)?, None, Some(x))?;
        let ctx = if self.attn2_is_cross { context } else { None };
        let x =
            self.attn2
                .forward_residual(&kernels::layer_norm(&x, &self.norm2)?, ctx, Some(&x))?;
        self.ff
            .forward_residual(&kernels::layer_norm(&x, &self.norm3)?, Some(&x))
    }
}

/// Both transformers on a (b·f, c, h, w) video: the GroupNorm writes the `layout` tokens, then proj_in, the blocks
/// and proj_out, and the residual add reads the tokens back into the video layout.
fn through_tokens(
    (norm, proj_in, blocks, proj_out): (&GroupNorm, &Linear, &[BasicTransformerBlock], &Linear),
    x: &Tensor,
    layout: TokenLayout,
    context: Option<&Tensor>,
) -> Result<Tensor> {
    let mut hs = kernels::linear(&norm.forward_tokens(x, layout)?, proj_in, None)?;
    for block in blocks {
        hs = block.forward(&hs, context)?;
    }
    let hs = kernels::linear(&hs, proj_out, None)?;
    Ok(kernels::add_tokens(x, &hs, layout)?)
}

/// `Transformer2DModel` for continuous inputs with `use_linear_projection = True` (what `get_down_block` /
/// `get_up_block` and the mid block build in UNet3D): spatial attention over the h*w tokens of each frame, and
/// cross-attention to the text.
#[derive(Debug, Clone)]
pub struct Transformer2DModel {
    norm: GroupNorm,
    proj_in: Linear,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Linear,
    span: tracing::Span,
}

impl Transformer2DModel {
    pub fn new(
        heads: usize,
        head_dim: usize,
        channels: usize,
        groups: usize,
        cross_attention_dim: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let inner = heads * head_dim;
        Ok(Self {
            norm: GroupNorm::new(groups, channels, 1e-6, vb.pp("norm"))?,
            proj_in: candle_nn::linear(channels, inner, vb.pp("proj_in"))?,
            blocks: vec![BasicTransformerBlock::new(
                inner,
                heads,
                head_dim,
                Some(cross_attention_dim),
                vb.pp("transformer_blocks").pp("0"),
            )?],
            proj_out: candle_nn::linear(inner, channels, vb.pp("proj_out"))?,
            span: tracing::span!(tracing::Level::TRACE, "transformer_2d"),
        })
    }

    /// `x` (b*f, c, h, w), `context` (b*f, tokens, dim).
    pub fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        let layers = (&self.norm, &self.proj_in, &self.blocks[..], &self.proj_out);
        through_tokens(layers, x, TokenLayout::Spatial, Some(context))
    }
}

/// `TransformerTemporalModel`: self-attention along the frames of every pixel (double self-attention, no text).
/// GroupNorm statistics span the frames (the input is normed as (b, c, f, h, w)).
#[derive(Debug, Clone)]
pub struct TransformerTemporalModel {
    norm: GroupNorm,
    proj_in: Linear,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Linear,
    span: tracing::Span,
}

impl TransformerTemporalModel {
    pub fn new(
        heads: usize,
        head_dim: usize,
        channels: usize,
        groups: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let inner = heads * head_dim;
        Ok(Self {
            norm: GroupNorm::new(groups, channels, 1e-6, vb.pp("norm"))?,
            proj_in: candle_nn::linear(channels, inner, vb.pp("proj_in"))?,
            blocks: vec![BasicTransformerBlock::new(
                inner,
                heads,
                head_dim,
                None,
                vb.pp("transformer_blocks").pp("0"),
            )?],
            proj_out: candle_nn::linear(inner, channels, vb.pp("proj_out"))?,
            span: tracing::span!(tracing::Level::TRACE, "transformer_temporal"),
        })
    }

    /// `x` (b*f, c, h, w) -> same.
    pub fn forward(&self, x: &Tensor, num_frames: usize) -> Result<Tensor> {
        let _enter = self.span.enter();
        let layers = (&self.norm, &self.proj_in, &self.blocks[..], &self.proj_out);
        let layout = TokenLayout::Temporal { frames: num_frames };
        through_tokens(layers, x, layout, None)
    }
}
