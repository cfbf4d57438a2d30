//! Attention blocks of the UNet3D, ported from diffusers 0.42.1: `models/attention_processor.py::Attention`
//! (AttnProcessor2_0: softmax(q k^T / sqrt(d)) v), `models/attention.py` (`BasicTransformerBlock`, `FeedForward`
//! with GEGLU), `models/transformers/transformer_2d.py` (continuous input, linear projection) and
//! `models/transformers/transformer_temporal.py`.

use candle_core::{DType, Module, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};

use super::kernels::{self, TokenLayout};
use super::resnet::GroupNorm;
use crate::error::Result;

/// Upper bound of one attention score block (see [`Attention::forward`]).
const SCORE_CHUNK_BYTES: usize = 8 << 20;

/// Softmax over the last axis. candle-nn's fused `softmax_last_dim` has no backward pass, so while a graph is
/// being recorded for training (`track_op`) our fused op with a backward is used on CPU (the composed version
/// elsewhere); inference keeps candle's kernel.
fn softmax_last_dim(x: &Tensor) -> candle_core::Result<Tensor> {
    match (
        x.track_op(),
        x.device().is_cpu() && x.dtype() == candle_core::DType::F32,
    ) {
        (true, true) => super::fused::softmax_last_dim(x),
        (true, false) => candle_nn::ops::softmax(x, candle_core::D::Minus1),
        (false, _) => candle_nn::ops::softmax_last_dim(x),
    }
}

/// LayerNorm, fused for inference and composed of differentiable ops while training (as [`softmax_last_dim`]).
fn layer_norm(ln: &LayerNorm, x: &Tensor) -> candle_core::Result<Tensor> {
    match ln.bias() {
        Some(b) if x.track_op() || ln.weight().track_op() => {
            candle_nn::ops::layer_norm_slow(x, ln.weight(), b, ln.eps() as f32)
        }
        Some(b)
            if x.device().is_cpu()
                && [x.dtype(), ln.weight().dtype(), b.dtype()] == [DType::F32; 3] =>
        {
            kernels::layer_norm(x, ln.weight(), b, ln.eps() as f32)
        }
        _ => ln.forward(x),
    }
}

/// `x Wᵀ + b (+ residual)`: one fused GEMM for CPU f32 inference (`kernels::linear`), candle-nn's Linear and an
/// add otherwise (training records the graph through those).
fn project(l: &Linear, x: &Tensor, residual: Option<&Tensor>) -> candle_core::Result<Tensor> {
    if kernels::cpu_f32_inference([x, l.weight()].into_iter().chain(residual)) {
        return kernels::linear(x, l.weight(), l.bias(), residual);
    }
    let y = l.forward(x)?;
    match residual {
        Some(r) => y + r,
        None => Ok(y),
    }
}

/// Multi-head attention. Queries from `x`; keys/values from `context` (cross-attention) or `x` (self-attention).
#[derive(Debug, Clone)]
pub struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    head_dim: usize,
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
            head_dim,
            scale: 1.0 / (head_dim as f64).sqrt(),
        })
    }

    /// (B, N, heads*d) -> (B*heads, N, d)
    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, _) = x.dims3()?;
        Ok(x.reshape((b, n, self.heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b * self.heads, n, self.head_dim))?)
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
        let (b, n, _) = x.dims3()?;
        let ctx = context.unwrap_or(x);
        let q = project(&self.to_q, x, None)?;
        let k = project(&self.to_k, ctx, None)?;
        let v = project(&self.to_v, ctx, None)?;
        if !q.track_op()
            && !k.track_op()
            && !v.track_op()
            && q.device().is_cpu()
            && q.dtype() == DType::F32
        {
            // Inference on CPU: one fused pass on the interleaved heads, the scale applied inside, no score
            // matrix and no head split/merge copies (models/kernels.rs).
            let out = kernels::attention(&q, &k, &v, self.heads, self.scale as f32)?;
            return Ok(project(&self.to_out, &out, residual)?);
        }
        // The scale is folded into q (one pass over N*d instead of N*M).
        let q = self.split_heads(&(q * self.scale)?)?;
        let k = self.split_heads(&k)?;
        let v = self.split_heads(&v)?;
        let m = k.dim(1)?;
        let seqs = b * self.heads;
        // Chunk over the (batch * heads) sequences so one score block stays under SCORE_CHUNK_BYTES: the full
        // (B*heads, N, M) matrix is hundreds of MB at 24x40 and every fresh allocation of that size costs page faults.
        let per_seq = n * m * std::mem::size_of::<f32>();
        let chunk = (SCORE_CHUNK_BYTES / per_seq.max(1)).clamp(1, seqs);
        let mut parts = Vec::with_capacity(seqs.div_ceil(chunk));
        for start in (0..seqs).step_by(chunk) {
            let len = chunk.min(seqs - start);
            let scores = q
                .narrow(0, start, len)?
                .matmul(&k.narrow(0, start, len)?.t()?)?;
            let probs = softmax_last_dim(&scores)?;
            parts.push(probs.matmul(&v.narrow(0, start, len)?)?);
        }
        // (B*heads, N, d)
        let out = match parts.len() {
            1 => parts.swap_remove(0),
            _ => Tensor::cat(&parts, 0)?,
        };
        self.merge_heads(out, b, n, residual)
    }

    /// (B*heads, N, d) -> (B, N, heads*d), then the output projection (plus `residual`).
    fn merge_heads(
        &self,
        out: Tensor,
        b: usize,
        n: usize,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let out = out
            .reshape((b, self.heads, n, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, n, self.heads * self.head_dim))?;
        Ok(project(&self.to_out, &out, residual)?)
    }
}

/// `FeedForward(dim, activation_fn="geglu")`: `net.0.proj` Linear(dim, 2*4*dim) split into (h, gate),
/// `h * gelu(gate)` (exact erf GELU), then `net.2` Linear(4*dim, dim).
#[derive(Debug, Clone)]
pub struct FeedForward {
    proj: Linear,
    out: Linear,
    inner: usize,
}

impl FeedForward {
    pub fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        let inner = 4 * dim;
        Ok(Self {
            proj: candle_nn::linear(dim, 2 * inner, vb.pp("net").pp("0").pp("proj"))?,
            out: candle_nn::linear(inner, dim, vb.pp("net").pp("2"))?,
            inner,
        })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_residual(x, None)
    }

    /// `forward(x) + residual`, the addition fused into the output projection where it can be.
    pub fn forward_residual(&self, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        let operands = [x, self.proj.weight(), self.out.weight()];
        if kernels::cpu_f32_inference(operands.into_iter().chain(residual)) {
            // One pass over blocks of rows: projection, GEGLU and output projection in cache (models/kernels.rs).
            return Ok(kernels::feed_forward_geglu(
                x,
                (self.proj.weight(), self.proj.bias()),
                (self.out.weight(), self.out.bias()),
                residual,
            )?);
        }
        let hg = project(&self.proj, x, None)?;
        let last = hg.rank() - 1;
        let h = hg.narrow(last, 0, self.inner)?;
        let gate = hg.narrow(last, self.inner, self.inner)?;
        Ok(project(&self.out, &(h * gate.gelu_erf()?)?, residual)?)
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
        let x = self
            .attn1
            .forward_residual(&layer_norm(&self.norm1, x)?, None, Some(x))?;
        let ctx = if self.attn2_is_cross { context } else { None };
        let x = self
            .attn2
            .forward_residual(&layer_norm(&self.norm2, &x)?, ctx, Some(&x))?;
        self.ff
            .forward_residual(&layer_norm(&self.norm3, &x)?, Some(&x))
    }
}

/// Both transformers' CPU inference path on a (b·f, c, h, w) video: the GroupNorm writes the `layout` tokens, then
/// proj_in, the blocks and proj_out, and the residual add reads the tokens back: no permute copies.
fn through_tokens(
    (norm, proj_in, blocks, proj_out): (&GroupNorm, &Linear, &[BasicTransformerBlock], &Linear),
    x: &Tensor,
    layout: TokenLayout,
    context: Option<&Tensor>,
) -> Result<Tensor> {
    let mut hs = project(proj_in, &norm.forward_tokens(x, layout)?, None)?;
    for block in blocks {
        hs = block.forward(&hs, context)?;
    }
    let hs = project(proj_out, &hs, None)?;
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
        let (bf, c, h, w) = x.dims4()?;
        if self.norm.fused_inference(x) {
            let layers = (&self.norm, &self.proj_in, &self.blocks[..], &self.proj_out);
            return through_tokens(layers, x, TokenLayout::Spatial, Some(context));
        }
        let hs = self
            .norm
            .forward(x)?
            .permute((0, 2, 3, 1))?
            .reshape((bf, h * w, c))?;
        let mut hs = project(&self.proj_in, &hs, None)?;
        for block in &self.blocks {
            hs = block.forward(&hs, Some(context))?;
        }
        let hs = self
            .proj_out
            .forward(&hs)?
            .reshape((bf, h, w, c))?
            .permute((0, 3, 1, 2))?;
        Ok((hs + x)?)
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
        let (bf, c, h, w) = x.dims4()?;
        if self.norm.fused_inference(x) {
            let layers = (&self.norm, &self.proj_in, &self.blocks[..], &self.proj_out);
            return through_tokens(
                layers,
                x,
                TokenLayout::Temporal { frames: num_frames },
                None,
            );
        }
        let b = bf / num_frames;
        // (b, f, c, h, w) -> (b, c, f, h, w) for the norm, then (b, h, w, f, c) -> (b*h*w, f, c)
        let hs = x
            .reshape((b, num_frames, c, h, w))?
            .permute((0, 2, 1, 3, 4))?;
        let hs = self.norm.forward(&hs.contiguous()?)?;
        let hs = hs
            .permute((0, 3, 4, 2, 1))?
            .reshape((b * h * w, num_frames, c))?;
        let mut hs = project(&self.proj_in, &hs, None)?;
        for block in &self.blocks {
            hs = block.forward(&hs, None)?;
        }
        let hs = project(&self.proj_out, &hs, None)?;
        // (b, h, w, f, c) -> (b, f, c, h, w) -> (b*f, c, h, w)
        let hs = hs
            .reshape((b, h, w, num_frames, c))?
            .permute((0, 3, 4, 1, 2))?
            .reshape((bf, c, h, w))?;
        Ok((hs + x)?)
    }
}
