//! Convolutional building blocks of the UNet3D, ported from diffusers 0.42.1 `models/resnet.py`
//! (`ResnetBlock2D`, `TemporalConvLayer`, `Downsample2D`, `Upsample2D`) and `torch.nn.GroupNorm`.
//! Spatial layers work on the frames-in-batch layout (batch * frames, channels, height, width).

use candle_core::{DType, Module, Tensor, D};
use candle_nn::{Conv2dConfig, Linear, VarBuilder};

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
        if x.device().is_cpu() && x.dtype() == DType::F32 && self.weight.dtype() == DType::F32 {
            return Ok(super::fused::group_norm(
                x,
                &self.weight,
                &self.bias,
                self.num_groups,
                self.eps,
            )?);
        }
        self.forward_composed(x)
    }

    /// Whether `x` takes the fused CPU inference kernels (f32 on the CPU, no graph being recorded).
    pub(crate) fn fused_inference(&self, x: &Tensor) -> bool {
        super::kernels::cpu_f32_inference([x, &self.weight, &self.bias])
    }

    /// GroupNorm of a (b·f, c, h, w) video straight into the transformers' token layout (only where
    /// `fused_inference(x)`).
    pub(crate) fn forward_tokens(
        &self,
        x: &Tensor,
        layout: super::kernels::TokenLayout,
    ) -> Result<Tensor> {
        Ok(super::kernels::group_norm_tokens(
            x,
            &self.weight,
            &self.bias,
            self.num_groups,
            self.eps as f32,
            layout,
        )?)
    }

    /// `silu(GroupNorm(x))`: one fused pass for CPU f32 inference, the two ops otherwise.
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        let inference = !x.track_op() && !self.weight.track_op();
        if inference
            && x.device().is_cpu()
            && x.dtype() == DType::F32
            && self.weight.dtype() == DType::F32
        {
            return Ok(super::fused::group_norm_silu(
                x,
                &self.weight,
                &self.bias,
                self.num_groups,
                self.eps,
            )?);
        }
        Ok(self.forward(x)?.silu()?)
    }

    fn forward_composed(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let (b, c) = (dims[0], dims[1]);
        // Statistics in F32 whatever the weights' dtype (diffusers upcasts GroupNorm the same way under autocast).
        let dtype = x.dtype();
        let x = x.to_dtype(DType::F32)?;
        let grouped = x.reshape((b, self.num_groups, ()))?;
        let mean = grouped.mean_keepdim(D::Minus1)?;
        let centered = grouped.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centered
            .broadcast_div(&(var + self.eps)?.sqrt()?)?
            .reshape(dims.as_slice())?;
        let mut shape = vec![1, c];
        shape.extend(std::iter::repeat(1).take(dims.len() - 2));
        let f32 = |t: &Tensor| -> Result<Tensor> {
            Ok(t.to_dtype(DType::F32)?.reshape(shape.as_slice())?)
        };
        Ok(normed
            .broadcast_mul(&f32(&self.weight)?)?
            .broadcast_add(&f32(&self.bias)?)?
            .to_dtype(dtype)?)
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

/// A 2-D convolution: our im2col + GEMM kernel for CPU f32 inference (`kernels::conv2d`), candle's elsewhere; while training (a graph is being recorded) an im2col + matmul
/// of plain tensor ops instead. candle's CPU backward of `conv2d` goes through a direct `conv_transpose2d` loop that
/// is ~4x slower than the forward; the im2col form's backward is matmuls and copies.
#[derive(Debug, Clone)]
pub struct Conv2d(candle_nn::Conv2d);

impl Conv2d {
    pub fn weight(&self) -> &Tensor {
        self.0.weight()
    }

    /// `forward(x)` plus a per-item bias (batch, out channels) and a residual of the output's shape, added in the
    /// convolution's output pass on the CPU f32 inference path (`kernels::conv2d_epilogue`), by broadcast adds
    /// otherwise.
    pub fn forward_with(
        &self,
        x: &Tensor,
        item_bias: Option<&Tensor>,
        residual: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let cfg = self.0.config();
        let operands = [x, self.0.weight()]
            .into_iter()
            .chain(item_bias)
            .chain(residual);
        if let (true, true, Some(bias), 1, 1) = (
            super::kernels::cpu_f32_inference(operands),
            // The kernel takes one bias row per batch item; anything else broadcasts below.
            item_bias.is_none_or(|t| t.dims().first() == x.dims().first()),
            self.0.bias(),
            cfg.groups,
            cfg.dilation,
        ) {
            let epilogue = super::kernels::Epilogue {
                item_bias: item_bias.cloned(),
                residual: residual.cloned(),
            };
            return super::kernels::conv2d_epilogue(
                x,
                self.0.weight(),
                bias,
                (cfg.stride, cfg.padding),
                epilogue,
            );
        }
        let mut y = self.forward(x)?;
        if let Some(t) = item_bias {
            y = y.broadcast_add(&t.unsqueeze(2)?.unsqueeze(3)?)?;
        }
        match residual {
            Some(r) => y + r,
            None => Ok(y),
        }
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let cfg = self.0.config();
        if x.track_op() || self.0.weight().track_op() {
            conv2d_im2col(x, self.0.weight(), self.0.bias(), cfg)
        } else if let (true, DType::F32, DType::F32, Some(bias), 1, 1) = (
            x.device().is_cpu(),
            x.dtype(),
            self.0.weight().dtype(),
            self.0.bias(),
            cfg.groups,
            cfg.dilation,
        ) {
            super::kernels::conv2d(x, self.0.weight(), bias, cfg.stride, cfg.padding)
        } else {
            self.0.forward(x)
        }
    }
}

/// `y[b, o, i, j] = bias[o] + Σ_{c, ky, kx} w[o, c, ky, kx] · x_pad[b, c, s·i + ky, s·j + kx]` as one batched matmul of
/// the (out, in·kh·kw) weight with the stacked shifted views (b, in·kh·kw, ho·wo). Differentiable.
fn conv2d_im2col(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    cfg: &Conv2dConfig,
) -> candle_core::Result<Tensor> {
    let (b, cin, h, wd) = x.dims4()?;
    let (cout, _, kh, kw) = w.dims4()?;
    let (p, s) = (cfg.padding, cfg.stride);
    let ho = (h + 2 * p - kh) / s + 1;
    let wo = (wd + 2 * p - kw) / s + 1;
    let cols = if kh == 1 && kw == 1 && p == 0 && s == 1 {
        x.reshape((b, cin, h * wd))?
    } else {
        // One extra zero row/column at the end so every strided window of s·ho rows fits.
        let extra = usize::from(s > 1);
        let xp = x
            .pad_with_zeros(2, p, p + extra)?
            .pad_with_zeros(3, p, p + extra)?;
        let mut taps = Vec::with_capacity(kh * kw);
        for ky in 0..kh {
            for kx in 0..kw {
                let v = xp.narrow(2, ky, s * ho)?.narrow(3, kx, s * wo)?;
                let v = if s > 1 {
                    v.reshape((b, cin, ho, s, wo, s))?
                        .narrow(3, 0, 1)?
                        .narrow(5, 0, 1)?
                        .reshape((b, cin, ho, wo))?
                } else {
                    v
                };
                taps.push(v);
            }
        }
        Tensor::stack(&taps, 2)?.reshape((b, cin * kh * kw, ho * wo))?
    };
    let y = w
        .reshape((cout, cin * kh * kw))?
        .broadcast_matmul(&cols)?
        .reshape((b, cout, ho, wo))?;
    match bias {
        Some(bias) => y.broadcast_add(&bias.reshape((1, cout, 1, 1))?),
        None => Ok(y),
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

/// A Conv3d with kernel (3, 1, 1) and padding (1, 0, 0): a 3-tap convolution over frames, pointwise in space.
/// Computed as ONE matmul of the stacked taps `[W_0; W_1; W_2]` (3*out, in) with the video (b, in, f*h*w), then
/// `y[t] = W_0 x[t-1] + W_1 x[t] + W_2 x[t+1] + bias` by adding frame-shifted slices (zero padding at both ends).
#[derive(Debug, Clone)]
struct TemporalConv {
    weight: Tensor,
    bias: Tensor,
    cin: usize,
    cout: usize,
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
            cin,
            cout,
        })
    }

    /// `x` (b, c, f, hw) -> (b, out, f, hw)
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let inference = !x.track_op() && !self.weight.track_op();
        if inference
            && x.device().is_cpu()
            && x.dtype() == DType::F32
            && self.weight.dtype() == DType::F32
        {
            return Ok(super::kernels::temporal_conv(x, &self.weight, &self.bias)?);
        }
        let (b, c, f, hw) = x.dims4()?;
        // (out, in, 3, 1, 1) -> (3, out, in) -> (3*out, in). Rebuilt on every call (a copy of 3*out*in floats,
        // negligible next to the matmul) so that it follows the weight while training.
        let taps = self
            .weight
            .reshape((self.cout, self.cin, 3))?
            .permute((2, 0, 1))?
            .contiguous()?
            .reshape((3 * self.cout, self.cin))?;
        let y = taps
            .broadcast_matmul(&x.reshape((b, c, f * hw))?)?
            .reshape((b, 3, self.cout, f, hw))?;
        let mut out = y.narrow(1, 1, 1)?.squeeze(1)?;
        if f > 1 {
            let zeros = Tensor::zeros((b, self.cout, 1, hw), out.dtype(), out.device())?;
            let prev = y.narrow(1, 0, 1)?.squeeze(1)?.narrow(2, 0, f - 1)?;
            let next = y.narrow(1, 2, 1)?.squeeze(1)?.narrow(2, 1, f - 1)?;
            out = (out + Tensor::cat(&[&zeros, &prev], 2)?)?;
            out = (out + Tensor::cat(&[&next, &zeros], 2)?)?;
        }
        Ok(out.broadcast_add(&self.bias.reshape((1, self.cout, 1, 1))?)?)
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The training im2col path equals candle's convolution, forward and backward.
    #[test]
    fn im2col_conv_matches_candle() {
        let dev = Device::Cpu;
        for (k, stride, padding, h, w) in [
            (3, 1, 1, 6, 7),
            (3, 2, 1, 6, 10),
            (3, 2, 0, 7, 9),
            (1, 1, 0, 5, 4),
        ] {
            let x = Tensor::randn(0f32, 1.0, (2, 3, h, w), &dev).unwrap();
            let wt =
                Var::from_tensor(&Tensor::randn(0f32, 1.0, (4, 3, k, k), &dev).unwrap()).unwrap();
            let bias = Tensor::randn(0f32, 1.0, 4, &dev).unwrap();
            let cfg = Conv2dConfig {
                padding,
                stride,
                dilation: 1,
                groups: 1,
                cudnn_fwd_algo: None,
            };
            let reference = x
                .conv2d(wt.as_tensor(), padding, stride, 1, 1)
                .unwrap()
                .broadcast_add(&bias.reshape((1, 4, 1, 1)).unwrap())
                .unwrap();
            let ours = conv2d_im2col(&x, wt.as_tensor(), Some(&bias), &cfg).unwrap();
            assert_eq!(ours.dims(), reference.dims(), "k{k} s{stride} p{padding}");
            let diff = crate::models::max_abs_diff(&ours, &reference);
            assert!(diff < 1e-4, "forward k{k} s{stride} p{padding}: {diff}");
            let g_ref = reference
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let g_ours = ours.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            let (a, b) = (
                g_ref.get(wt.as_tensor()).unwrap(),
                g_ours.get(wt.as_tensor()).unwrap(),
            );
            let scale = a
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let diff = crate::models::max_abs_diff(a, b);
            assert!(
                diff < 1e-4 * scale.max(1.0),
                "weight grad k{k} s{stride} p{padding}: {diff}"
            );
        }
    }

    /// The inference kernel (`kernels::temporal_conv`, three shifted GEMMs) equals the composed path that training
    /// uses (stacked taps, shifted slices, zero frames), for several frame counts including 1 and 2.
    #[test]
    fn temporal_conv_kernel_matches_composed_ops() {
        let dev = Device::Cpu;
        let varmap = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let conv = TemporalConv::new(5, 6, false, vb).unwrap();
        for (b, f, hw) in [(1, 1, 7), (2, 2, 5), (3, 9, 11)] {
            let x = Tensor::randn(0f32, 1.0, (b, 5, f, hw), &dev).unwrap();
            // Variables make the graph tracked, so `forward` takes the composed ops.
            let tracked = conv.forward(&x).unwrap();
            assert!(
                conv.weight.track_op(),
                "the VarMap weight must select the composed path"
            );
            let fused = super::super::kernels::temporal_conv(&x, &conv.weight, &conv.bias).unwrap();
            assert_eq!(fused.dims(), &[b, 6, f, hw]);
            let diff = crate::models::max_abs_diff(&tracked, &fused);
            assert!(diff < 1e-5, "b{b} f{f} hw{hw}: {diff}");
        }
    }
}
