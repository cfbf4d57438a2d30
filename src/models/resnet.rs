//! Convolutional building blocks of the UNet3D, ported from diffusers 0.42.1 `models/resnet.py`
//! (`ResnetBlock2D`, `TemporalConvLayer`, `Downsample2D`, `Upsample2D`) and `torch.nn.GroupNorm`.
//! Spatial layers work on the frames-in-batch layout (batch * frames, channels, height, width).

use candle_core::{Module, Tensor};
use candle_nn::{Conv2dConfig, Linear, VarBuilder};

use super::kernels::{self, TokenLayout};
use crate::error::Result;

/// `torch.nn.GroupNorm`: statistics over each group of channels and every position after the channel axis
/// (for a 5-D (b, c, f, h, w) input that includes the frames, as ModelScope's temporal layers need).
#[derive(Debug, Clone)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    num_groups: usize,
    eps: f64,
}

impl GroupNorm {
    pub fn new(num_groups: usize, channels: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        if num_groups == 0 || channels % num_groups != 0 {
            return Err(crate::Error::model(
                crate::Location::none().field(vb.prefix()),
                format!("GroupNorm: {channels} channels are not divisible into {num_groups} groups (norm_num_groups)"),
            ));
        }
        Ok(Self {
            // Init hints only matter for a fresh `VarMap` (training): torch's GroupNorm starts at gain 1, bias 0.
            weight: vb.get_with_hints(channels, "weight", candle_nn::Init::Const(1.0))?,
            bias: vb.get_with_hints(channels, "bias", candle_nn::Init::Const(0.0))?,
            num_groups,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(kernels::group_norm(
            x,
            &self.weight,
            &self.bias,
            self.num_groups,
            self.eps,
        )?)
    }

    /// `silu(GroupNorm(x))`.
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        Ok(kernels::group_norm_silu(
            x,
            &self.weight,
            &self.bias,
            self.num_groups,
            self.eps,
        )?)
    }

    /// GroupNorm of a (b·f, c, h, w) video, returned in the transformers' token layout (`TokenLayout`).
    pub(crate) fn forward_tokens(&self, x: &Tensor, layout: TokenLayout) -> Result<Tensor> {
        Ok(kernels::group_norm_tokens(
            x,
            &self.weight,
            &self.bias,
            self.num_groups,
            self.eps,
            layout,
        )?)
    }
}

pub(crate) fn conv2d(
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    padding: usize,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding,
        stride,
        dilation: 1,
        groups: 1,
        cudnn_fwd_algo: None,
    };
    Ok(Conv2d(candle_nn::conv2d(cin, cout, k, cfg, vb)?))
}

/// A 2-D convolution (`kernels::conv2d` picks the path: fused CPU inference, training, candle's).
#[derive(Debug, Clone)]
pub struct Conv2d(candle_nn::Conv2d);

impl Conv2d {
    pub fn weight(&self) -> &Tensor {
        self.0.weight()
    }

    /// `forward(x)` plus a per-item bias (batch, out channels) and a residual of the output's shape, added in the
    /// convolution's output pass where the kernel can (`kernels::conv2d_epilogue`).
    pub fn forward_with(
        &self,
        x: &Tensor,
        item_bias: Option<&Tensor>,
        residual: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        kernels::conv2d_epilogue(x, &self.0, item_bias, residual)
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        kernels::conv2d(x, &self.0)
    }
}

/// diffusers `ResnetBlock2D` (pre-norm, `time_embedding_norm = "default"`, SiLU, output_scale_factor 1):
/// `h = conv2(silu(norm2(conv1(silu(norm1(x))) + time_emb_proj(silu(temb))))); out = shortcut(x) + h`.
#[derive(Debug, Clone)]
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Linear,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    span: tracing::Span,
}

impl ResnetBlock2D {
    pub fn new(
        cin: usize,
        cout: usize,
        temb: usize,
        groups: usize,
        eps: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            norm1: GroupNorm::new(groups, cin, eps, vb.pp("norm1"))?,
            conv1: conv2d(cin, cout, 3, 1, 1, vb.pp("conv1"))?,
            time_emb_proj: candle_nn::linear(temb, cout, vb.pp("time_emb_proj"))?,
            norm2: GroupNorm::new(groups, cout, eps, vb.pp("norm2"))?,
            conv2: conv2d(cout, cout, 3, 1, 1, vb.pp("conv2"))?,
            conv_shortcut: if cin != cout {
                Some(conv2d(cin, cout, 1, 1, 0, vb.pp("conv_shortcut"))?)
            } else {
                None
            },
            span: tracing::span!(tracing::Level::TRACE, "resnet"),
        })
    }

    /// `x` (b*f, c, h, w), `temb` (b*f, temb_channels).
    pub fn forward(&self, x: &Tensor, temb: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        // conv1 + time embedding, conv2 + shortcut: each addition made in its conv's output pass.
        let t = self.time_emb_proj.forward(&temb.silu()?)?;
        let h = self
            .conv1
            .forward_with(&self.norm1.forward_silu(x)?, Some(&t), None)?;
        let shortcut = match &self.conv_shortcut {
            Some(c) => c.forward(x)?,
            None => x.clone(),
        };
        Ok(self
            .conv2
            .forward_with(&self.norm2.forward_silu(&h)?, None, Some(&shortcut))?)
    }
}

/// A Conv3d with kernel (3, 1, 1) and padding (1, 0, 0): a 3-tap convolution over frames, pointwise in space
/// (`kernels::temporal_conv`).
#[derive(Debug, Clone)]
struct TemporalConv {
    weight: Tensor,
    bias: Tensor,
}

impl TemporalConv {
    /// `zero_init`: diffusers zero-initialises the last conv of a `TemporalConvLayer` so that a fresh layer is the
    /// identity (only used when the builder creates variables, i.e. training from scratch).
    fn new(cin: usize, cout: usize, zero_init: bool, vb: VarBuilder) -> Result<Self> {
        let init = if zero_init {
            candle_nn::Init::Const(0.0)
        } else {
            candle_nn::init::DEFAULT_KAIMING_NORMAL
        };
        let bound = 1.0 / ((3 * cin) as f64).sqrt();
        Ok(Self {
            weight: vb.get_with_hints((cout, cin, 3, 1, 1), "weight", init)?,
            bias: vb.get_with_hints(
                cout,
                "bias",
                if zero_init {
                    candle_nn::Init::Const(0.0)
                } else {
                    candle_nn::Init::Uniform {
                        lo: -bound,
                        up: bound,
                    }
                },
            )?,
        })
    }

    /// `x` (b, c, f, hw) -> (b, out, f, hw)
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(kernels::temporal_conv(x, &self.weight, &self.bias)?)
    }
}

/// diffusers `TemporalConvLayer` (ModelScope): four (GroupNorm, SiLU, temporal conv) stages and a residual.
/// Weight names follow the `nn.Sequential` indices: `conv1.0` norm, `conv1.2` conv; `convN.0` norm, `convN.3` conv.
#[derive(Debug, Clone)]
pub struct TemporalConvLayer {
    stages: Vec<(GroupNorm, TemporalConv)>,
    span: tracing::Span,
}

impl TemporalConvLayer {
    pub fn new(channels: usize, groups: usize, vb: VarBuilder) -> Result<Self> {
        let mut stages = Vec::with_capacity(4);
        for (name, conv_index) in [
            ("conv1", "2"),
            ("conv2", "3"),
            ("conv3", "3"),
            ("conv4", "3"),
        ] {
            // torch.nn.GroupNorm default eps 1e-5.
            let norm = GroupNorm::new(groups, channels, 1e-5, vb.pp(name).pp("0"))?;
            stages.push((
                norm,
                TemporalConv::new(
                    channels,
                    channels,
                    name == "conv4",
                    vb.pp(name).pp(conv_index),
                )?,
            ));
        }
        Ok(Self {
            stages,
            span: tracing::span!(tracing::Level::TRACE, "temporal_conv"),
        })
    }

    /// `x` (b*f, c, h, w) -> same.
    pub fn forward(&self, x: &Tensor, num_frames: usize) -> Result<Tensor> {
        let _enter = self.span.enter();
        let (bf, c, h, w) = x.dims4()?;
        let b = bf / num_frames;
        // (b*f, c, h, w) -> (b, c, f, h*w)
        let identity = x
            .reshape((b, num_frames, c, h * w))?
            .permute((0, 2, 1, 3))?
            .contiguous()?;
        let mut hs = identity.clone();
        for (norm, conv) in &self.stages {
            hs = conv.forward(&norm.forward_silu(&hs)?)?;
        }
        let out = (identity + hs)?;
        Ok(out
            .permute((0, 2, 1, 3))?
            .contiguous()?
            .reshape((bf, c, h, w))?)
    }
}

/// diffusers `Downsample2D(use_conv=True, padding=1)`: a 3x3 conv with stride 2.
#[derive(Debug, Clone)]
pub struct Downsample2D {
    conv: Conv2d,
}

impl Downsample2D {
    pub fn new(channels: usize, padding: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv: conv2d(channels, channels, 3, 2, padding, vb.pp("conv"))?,
        })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.conv.forward(x)?)
    }
}

/// diffusers `Upsample2D(use_conv=True)`: nearest-neighbour upsampling (x2, or to the skip connection's size when
/// the input size is not divisible) followed by a 3x3 conv.
#[derive(Debug, Clone)]
pub struct Upsample2D {
    conv: Conv2d,
}

impl Upsample2D {
    pub fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv: conv2d(channels, channels, 3, 1, 1, vb.pp("conv"))?,
        })
    }
    pub fn forward(&self, x: &Tensor, size: Option<(usize, usize)>) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let (th, tw) = size.unwrap_or((2 * h, 2 * w));
        Ok(self.conv.forward(&x.upsample_nearest2d(th, tw)?)?)
    }
}
