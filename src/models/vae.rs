//! `AutoencoderKL`, compatible with diffusers 0.35.2 `models/autoencoders/autoencoder_kl.py` (with the `Encoder`,
//! `Decoder` and `DiagonalGaussianDistribution` of `models/autoencoders/vae.py`): the latent space of the latent
//! text-to-video priors (ModelScope / Zeroscope, `vae/config.json` + `vae/diffusion_pytorch_model.safetensors`).
//! Any size its config gives (block_out_channels, layers_per_block, latent_channels, norm_num_groups, ...), the
//! same weight names, parity against tests/fixtures/parity within 1e-4.
//!
//! Why not `candle_transformers::models::stable_diffusion::vae::AutoEncoderKL` as it is: its weight names and
//! blocks are diffusers' (and are reused here: `DownEncoderBlock2D`, `UpDecoderBlock2D`, `ResnetBlock2D`), but
//! * its mid-block `AttentionBlock` does not match diffusers when several frames are batched (max abs diff 0.53 on
//!   tests/fixtures/parity): candle-core 0.11.1's CPU matmul of a transposed left operand by a batch-broadcast right
//!   operand, which `candle_nn::Linear` uses for non-contiguous 3-D inputs, is wrong for batch > 1; [`VaeAttention`]
//!   makes its input contiguous first;
//! * its encoder output is a distribution whose mean is private (only a random `sample()` drawn from candle's global
//!   RNG is reachable, so encoding cannot be deterministic) and whose log variance is not clamped to [-30, 20] as in
//!   diffusers;
//! * it cannot drop the mid-block attention (`mid_block_add_attention: false`).
//!
//! So the attention and the encoder/decoder wiring are ported here.
//!
//! Videos are (batch, 3, frames, height, width) in [-1, 1] at the API; frames are folded into the batch and every
//! frame goes through the 2-D autoencoder on its own, as diffusers' text-to-video pipelines do
//! (`TextToVideoSDPipeline.decode_latents`, `VideoToVideoSDPipeline.prepare_latents`). Latents are scaled by
//! `scaling_factor` (after subtracting `shift_factor` when a config has one) so they are what the UNet sees.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, GroupNorm, Linear, VarBuilder};
use candle_transformers::models::stable_diffusion::resnet::{ResnetBlock2D, ResnetBlock2DConfig};
use candle_transformers::models::stable_diffusion::unet_2d_blocks::{
    DownEncoderBlock2D, DownEncoderBlock2DConfig, UpDecoderBlock2D, UpDecoderBlock2DConfig,
};
use serde::Deserialize;

use super::unet_3d::weight_files;
use crate::error::{Error, IoResultExt, Location, Result};
use crate::rng::NoiseRng;

/// diffusers hard-codes the eps of every GroupNorm in the VAE's encoder and decoder.
const VAE_NORM_EPS: f64 = 1e-6;

fn d_3() -> usize {
    3
}
fn d_down() -> Vec<String> {
    vec!["DownEncoderBlock2D".into()]
}
fn d_up() -> Vec<String> {
    vec!["UpDecoderBlock2D".into()]
}
fn d_boc() -> Vec<usize> {
    vec![64]
}
fn d_1() -> usize {
    1
}
fn d_silu() -> String {
    "silu".into()
}
fn d_latent() -> usize {
    4
}
fn d_groups() -> usize {
    32
}
fn d_sample() -> usize {
    32
}
fn d_scaling() -> f64 {
    0.18215
}
fn d_true() -> bool {
    true
}

/// diffusers' `AutoencoderKL` config.json (defaults as in autoencoder_kl.py `__init__`).
#[derive(Debug, Clone, Deserialize)]
pub struct AutoencoderKLConfig {
    #[serde(default = "d_3")]
    pub in_channels: usize,
    #[serde(default = "d_3")]
    pub out_channels: usize,
    #[serde(default = "d_down")]
    pub down_block_types: Vec<String>,
    #[serde(default = "d_up")]
    pub up_block_types: Vec<String>,
    #[serde(default = "d_boc")]
    pub block_out_channels: Vec<usize>,
    #[serde(default = "d_1")]
    pub layers_per_block: usize,
    #[serde(default = "d_silu")]
    pub act_fn: String,
    #[serde(default = "d_latent")]
    pub latent_channels: usize,
    #[serde(default = "d_groups")]
    pub norm_num_groups: usize,
    /// The training resolution (pixels); informational, any multiple of [`AutoencoderKL::downscale`] runs.
    #[serde(default = "d_sample")]
    pub sample_size: usize,
    #[serde(default = "d_scaling")]
    pub scaling_factor: f64,
    #[serde(default)]
    pub shift_factor: Option<f64>,
    #[serde(default = "d_true")]
    pub use_quant_conv: bool,
    #[serde(default = "d_true")]
    pub use_post_quant_conv: bool,
    #[serde(default = "d_true")]
    pub mid_block_add_attention: bool,
}

impl AutoencoderKLConfig {
    /// Pixels per latent along height and width: 2^(len(block_out_channels) - 1).
    pub fn downscale(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).at(path)?;
        let cfg: Self = serde_json::from_str(&text).map_err(|e| {
            Error::config(
                Location::file(path),
                format!("not an AutoencoderKL config: {e}"),
            )
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Reject what diffusers rejects and what this port does not implement, naming the field.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let loc = |f: &str| Location::file(path).field(f);
        let n = self.block_out_channels.len();
        if n == 0 {
            return Err(Error::config(loc("block_out_channels"), "empty"));
        }
        for (field, types, want) in [
            (
                "down_block_types",
                &self.down_block_types,
                "DownEncoderBlock2D",
            ),
            ("up_block_types", &self.up_block_types, "UpDecoderBlock2D"),
        ] {
            if types.len() != n {
                return Err(Error::config(
                    loc(field),
                    format!(
                        "{} entries for {n} block_out_channels {:?}",
                        types.len(),
                        self.block_out_channels
                    ),
                ));
            }
            if let Some(t) = types.iter().find(|t| t.as_str() != want) {
                return Err(Error::unsupported(
                    loc(field),
                    format!("block type {t:?} (AutoencoderKL here supports {want} only)"),
                ));
            }
        }
        if self.act_fn != "silu" {
            return Err(Error::unsupported(
                loc("act_fn"),
                format!("{:?} (supported: \"silu\")", self.act_fn),
            ));
        }
        if self.norm_num_groups == 0 {
            return Err(Error::config(loc("norm_num_groups"), "must be positive"));
        }
        if let Some(c) = self
            .block_out_channels
            .iter()
            .find(|c| **c % self.norm_num_groups != 0)
        {
            return Err(Error::config(
                loc("norm_num_groups"),
                format!(
                    "{} does not divide block_out_channels entry {c}",
                    self.norm_num_groups
                ),
            ));
        }
        for (field, v) in [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("latent_channels", self.latent_channels),
            ("layers_per_block", self.layers_per_block),
        ] {
            if v == 0 {
                return Err(Error::config(loc(field), "must be positive"));
            }
        }
        if !(self.scaling_factor.is_finite() && self.scaling_factor > 0.0) {
            return Err(Error::config(
                loc("scaling_factor"),
                format!("{} (must be finite and positive)", self.scaling_factor),
            ));
        }
        Ok(())
    }
}

/// The mid block's single-head self-attention over all pixels: diffusers `Attention` as `UNetMidBlock2D` builds it
/// for the VAE (`_from_deprecated_attn_block`, `AttnProcessor2_0`): GroupNorm, q/k/v/out linears named `to_q`,
/// `to_k`, `to_v`, `to_out.0`, residual connection. The linears get contiguous (b, h*w, c) inputs: candle 0.11.1's
/// `Linear` on a transposed 3-D input with batch > 1 is wrong on CPU (see the module docs).
struct VaeAttention {
    group_norm: GroupNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    channels: usize,
}

impl VaeAttention {
    fn new(vb: VarBuilder, channels: usize, groups: usize) -> candle_core::Result<Self> {
        Ok(Self {
            group_norm: candle_nn::group_norm(groups, channels, VAE_NORM_EPS, vb.pp("group_norm"))?,
            to_q: candle_nn::linear(channels, channels, vb.pp("to_q"))?,
            to_k: candle_nn::linear(channels, channels, vb.pp("to_k"))?,
            to_v: candle_nn::linear(channels, channels, vb.pp("to_v"))?,
            to_out: candle_nn::linear(channels, channels, vb.pp("to_out").pp("0"))?,
            channels,
        })
    }

    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = xs.dims4()?;
        // (b, c, h, w) -> (b, h*w, c)
        let hs = self
            .group_norm
            .forward(xs)?
            .reshape((b, c, h * w))?
            .transpose(1, 2)?
            .contiguous()?;
        let q = self.to_q.forward(&hs)?;
        let k = self.to_k.forward(&hs)?;
        let v = self.to_v.forward(&hs)?;
        let scale = (self.channels as f64).powf(-0.5);
        let scores = (q.matmul(&k.t()?.contiguous()?)? * scale)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = self.to_out.forward(&probs.matmul(&v)?)?;
        // (b, h*w, c) -> (b, c, h, w), plus the residual.
        out.transpose(1, 2)?.contiguous()?.reshape((b, c, h, w))? + xs
    }
}

/// diffusers `UNetMidBlock2D` as the VAE builds it: resnet, optional single-head self-attention, resnet; no
/// time embedding.
struct MidBlock {
    first: ResnetBlock2D,
    attn: Option<VaeAttention>,
    second: ResnetBlock2D,
}

impl MidBlock {
    fn new(
        vb: VarBuilder,
        channels: usize,
        groups: usize,
        add_attention: bool,
    ) -> candle_core::Result<Self> {
        let resnet_cfg = ResnetBlock2DConfig {
            out_channels: Some(channels),
            temb_channels: None,
            groups,
            eps: VAE_NORM_EPS,
            ..Default::default()
        };
        let first = ResnetBlock2D::new(vb.pp("resnets").pp("0"), channels, resnet_cfg)?;
        let attn = if add_attention {
            // attention_head_dim = block_out_channels[-1]: one head over all channels.
            Some(VaeAttention::new(
                vb.pp("attentions").pp("0"),
                channels,
                groups,
            )?)
        } else {
            None
        };
        let second = ResnetBlock2D::new(vb.pp("resnets").pp("1"), channels, resnet_cfg)?;
        Ok(Self {
            first,
            attn,
            second,
        })
    }

    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let mut xs = self.first.forward(xs, None)?;
        if let Some(a) = &self.attn {
            xs = a.forward(&xs)?;
        }
        self.second.forward(&xs, None)
    }
}

fn conv3x3(cin: usize, cout: usize, vb: VarBuilder) -> candle_core::Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding: 1,
        ..Default::default()
    };
    candle_nn::conv2d(cin, cout, 3, cfg, vb)
}

/// vae.py `Encoder` (double_z): pixels -> the latent distribution's parameters (mean, logvar) on channels.
struct Encoder {
    conv_in: Conv2d,
    down: Vec<DownEncoderBlock2D>,
    mid: MidBlock,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    fn new(vb: VarBuilder, c: &AutoencoderKLConfig) -> candle_core::Result<Self> {
        let boc = &c.block_out_channels;
        let conv_in = conv3x3(c.in_channels, boc[0], vb.pp("conv_in"))?;
        let mut down = Vec::with_capacity(boc.len());
        for (i, &out) in boc.iter().enumerate() {
            let cin = if i == 0 { boc[0] } else { boc[i - 1] };
            let cfg = DownEncoderBlock2DConfig {
                num_layers: c.layers_per_block,
                resnet_eps: VAE_NORM_EPS,
                resnet_groups: c.norm_num_groups,
                output_scale_factor: 1.0,
                add_downsample: i + 1 < boc.len(),
                // padding 0: diffusers pads (0, 1, 0, 1) then convolves with stride 2.
                downsample_padding: 0,
            };
            down.push(DownEncoderBlock2D::new(
                vb.pp("down_blocks").pp(i.to_string()),
                cin,
                out,
                cfg,
            )?);
        }
        let last = *boc.last().expect("validated non-empty");
        let mid = MidBlock::new(
            vb.pp("mid_block"),
            last,
            c.norm_num_groups,
            c.mid_block_add_attention,
        )?;
        let norm_out = candle_nn::group_norm(
            c.norm_num_groups,
            last,
            VAE_NORM_EPS,
            vb.pp("conv_norm_out"),
        )?;
        let conv_out = conv3x3(last, 2 * c.latent_channels, vb.pp("conv_out"))?;
        Ok(Self {
            conv_in,
            down,
            mid,
            norm_out,
            conv_out,
        })
    }

    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let mut xs = self.conv_in.forward(xs)?;
        for b in &self.down {
            xs = b.forward(&xs)?;
        }
        let xs = self.mid.forward(&xs)?;
        let xs = candle_nn::ops::silu(&self.norm_out.forward(&xs)?)?;
        self.conv_out.forward(&xs)
    }
}

/// vae.py `Decoder`: latents -> pixels.
struct Decoder {
    conv_in: Conv2d,
    mid: MidBlock,
    up: Vec<UpDecoderBlock2D>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    fn new(vb: VarBuilder, c: &AutoencoderKLConfig) -> candle_core::Result<Self> {
        let rev: Vec<usize> = c.block_out_channels.iter().rev().copied().collect();
        let conv_in = conv3x3(c.latent_channels, rev[0], vb.pp("conv_in"))?;
        let mid = MidBlock::new(
            vb.pp("mid_block"),
            rev[0],
            c.norm_num_groups,
            c.mid_block_add_attention,
        )?;
        let mut up = Vec::with_capacity(rev.len());
        for (i, &out) in rev.iter().enumerate() {
            let cin = if i == 0 { rev[0] } else { rev[i - 1] };
            let cfg = UpDecoderBlock2DConfig {
                num_layers: c.layers_per_block + 1,
                resnet_eps: VAE_NORM_EPS,
                resnet_groups: c.norm_num_groups,
                output_scale_factor: 1.0,
                add_upsample: i + 1 < rev.len(),
            };
            up.push(UpDecoderBlock2D::new(
                vb.pp("up_blocks").pp(i.to_string()),
                cin,
                out,
                cfg,
            )?);
        }
        let first = c.block_out_channels[0];
        let norm_out = candle_nn::group_norm(
            c.norm_num_groups,
            first,
            VAE_NORM_EPS,
            vb.pp("conv_norm_out"),
        )?;
        let conv_out = conv3x3(first, c.out_channels, vb.pp("conv_out"))?;
        Ok(Self {
            conv_in,
            mid,
            up,
            norm_out,
            conv_out,
        })
    }

    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let mut xs = self.mid.forward(&self.conv_in.forward(xs)?)?;
        for b in &self.up {
            xs = b.forward(&xs)?;
        }
        let xs = candle_nn::ops::silu(&self.norm_out.forward(&xs)?)?;
        self.conv_out.forward(&xs)
    }
}

/// The latent distribution of a batch of images (vae.py `DiagonalGaussianDistribution`), unscaled:
/// `mean` and `logvar` (n, latent_channels, h / s, w / s), `logvar` clamped to [-30, 20] as diffusers does.
pub struct LatentDistribution {
    pub mean: Tensor,
    pub logvar: Tensor,
}

impl LatentDistribution {
    /// mean + exp(logvar / 2) * N(0, 1), the noise drawn from `rng`.
    pub fn sample(&self, rng: &mut NoiseRng) -> Result<Tensor> {
        let std = (&self.logvar * 0.5)?.exp()?;
        let noise = rng.randn(self.mean.shape().clone(), self.mean.device())?;
        Ok((&self.mean + (std * noise)?)?)
    }
}

/// diffusers `AutoencoderKL` (see the module docs).
pub struct AutoencoderKL {
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    config: AutoencoderKLConfig,
    dtype: DType,
    span: tracing::Span,
}

impl AutoencoderKL {
    /// Load a diffusers `vae/` directory (config.json + diffusion_pytorch_model.safetensors) in f32.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        Self::load_with_dtype(dir, device, DType::F32)
    }

    pub fn load_with_dtype(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let config = AutoencoderKLConfig::from_file(&dir.join("config.json"))?;
        let files = weight_files(dir)?;
        let shown: PathBuf = if files.len() == 1 {
            files[0].clone()
        } else {
            dir.join("diffusion_pytorch_model.safetensors.index.json")
        };
        // SAFETY: the files are memory-mapped read-only; vadapt never writes a model file while it is loaded.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, dtype, device) }
            .map_err(|e| Error::model(Location::file(&shown), e.to_string()))?;
        Self::new(vb, config).map_err(|e| match e {
            Error::Tensor(inner) => Error::model(Location::file(&shown), inner.to_string()),
            other => other,
        })
    }

    /// Build from weights under diffusers' names (`encoder.…`, `decoder.…`, `quant_conv`, `post_quant_conv`).
    pub fn new(vb: VarBuilder, config: AutoencoderKLConfig) -> Result<Self> {
        let l = config.latent_channels;
        let encoder = Encoder::new(vb.pp("encoder"), &config)?;
        let decoder = Decoder::new(vb.pp("decoder"), &config)?;
        let quant_conv = if config.use_quant_conv {
            Some(candle_nn::conv2d(
                2 * l,
                2 * l,
                1,
                Default::default(),
                vb.pp("quant_conv"),
            )?)
        } else {
            None
        };
        let post_quant_conv = if config.use_post_quant_conv {
            Some(candle_nn::conv2d(
                l,
                l,
                1,
                Default::default(),
                vb.pp("post_quant_conv"),
            )?)
        } else {
            None
        };
        Ok(Self {
            encoder,
            decoder,
            quant_conv,
            post_quant_conv,
            dtype: vb.dtype(),
            config,
            span: tracing::span!(tracing::Level::TRACE, "vae"),
        })
    }

    pub fn config(&self) -> &AutoencoderKLConfig {
        &self.config
    }

    /// Pixels per latent along height and width: 2^(len(block_out_channels) - 1) (8 for SD/ModelScope VAEs).
    pub fn downscale(&self) -> usize {
        self.config.downscale()
    }

    pub fn latent_channels(&self) -> usize {
        self.config.latent_channels
    }

    /// The latent distribution of images (n, in_channels, h, w) in [-1, 1] (`AutoencoderKL.encode(x).latent_dist`,
    /// unscaled).
    pub fn encode_images(&self, images: &Tensor) -> Result<LatentDistribution> {
        let _enter = self.span.enter();
        let (_, c, h, w) = images.dims4()?;
        self.check_input("images", c, self.config.in_channels, h, w, self.downscale())?;
        let h = self.encoder.forward(&images.to_dtype(self.dtype)?)?;
        let moments = match &self.quant_conv {
            Some(q) => q.forward(&h)?,
            None => h,
        };
        let moments = moments.to_dtype(DType::F32)?;
        let l = self.config.latent_channels;
        let mean = moments.narrow(1, 0, l)?;
        let logvar = moments.narrow(1, l, l)?.clamp(-30f32, 20f32)?;
        Ok(LatentDistribution { mean, logvar })
    }

    /// Images (n, out_channels, h * s, w * s) from unscaled latents (n, latent_channels, h, w)
    /// (`AutoencoderKL.decode(z).sample`; not clamped).
    pub fn decode_images(&self, latents: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        let (_, c, h, w) = latents.dims4()?;
        self.check_input("latents", c, self.config.latent_channels, h, w, 1)?;
        let z = latents.to_dtype(self.dtype)?;
        let z = match &self.post_quant_conv {
            Some(p) => p.forward(&z)?,
            None => z,
        };
        Ok(self.decoder.forward(&z)?.to_dtype(DType::F32)?)
    }

    /// Scaled latents (b, latent_channels, f, h / s, w / s) of a video (b, 3, f, h, w) in [-1, 1]: the latent
    /// distribution's mean (its mode), (mean - shift_factor) * scaling_factor.
    pub fn encode(&self, video: &Tensor) -> Result<Tensor> {
        let (b, f) = video_dims(video, "video")?;
        let mean = self.encode_images(&fold(video)?)?.mean;
        unfold(&self.scale(&mean)?, b, f)
    }

    /// Like [`encode`](Self::encode) but drawing each latent from the distribution with `rng` (diffusers'
    /// `latent_dist.sample(generator)`, as `VideoToVideoSDPipeline` does).
    pub fn encode_sample(&self, video: &Tensor, rng: &mut NoiseRng) -> Result<Tensor> {
        let (b, f) = video_dims(video, "video")?;
        let z = self.encode_images(&fold(video)?)?.sample(rng)?;
        unfold(&self.scale(&z)?, b, f)
    }

    /// A video (b, out_channels, f, h * s, w * s) from scaled latents (b, latent_channels, f, h, w):
    /// latents / scaling_factor + shift_factor, decoded frame by frame (`TextToVideoSDPipeline.decode_latents`).
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let (b, f) = video_dims(latents, "latents")?;
        let z = fold(latents)?;
        let mut z = (z / self.config.scaling_factor)?;
        if let Some(s) = self.config.shift_factor {
            z = (z + s)?;
        }
        unfold(&self.decode_images(&z)?, b, f)
    }

    fn scale(&self, z: &Tensor) -> Result<Tensor> {
        let z = match self.config.shift_factor {
            Some(s) => (z - s)?,
            None => z.clone(),
        };
        Ok((z * self.config.scaling_factor)?)
    }

    fn check_input(
        &self,
        what: &str,
        c: usize,
        want: usize,
        h: usize,
        w: usize,
        multiple: usize,
    ) -> Result<()> {
        if c != want {
            return Err(Error::invalid(
                Location::none().field(what),
                format!("{c} channels, this VAE takes {want}"),
            ));
        }
        if h == 0 || w == 0 || h % multiple != 0 || w % multiple != 0 {
            return Err(Error::invalid(
                Location::none().field(what),
                format!(
                    "{h}x{w} pixels: height and width must be positive multiples of {multiple}"
                ),
            ));
        }
        Ok(())
    }
}

fn video_dims(t: &Tensor, what: &str) -> Result<(usize, usize)> {
    match t.dims() {
        &[b, _, f, _, _] => Ok((b, f)),
        d => Err(Error::invalid(
            Location::none().field(what),
            format!("shape {d:?}, expected (batch, channels, frames, height, width)"),
        )),
    }
}

/// (b, c, f, h, w) -> (b * f, c, h, w).
fn fold(video: &Tensor) -> Result<Tensor> {
    let (b, c, f, h, w) = video.dims5()?;
    Ok(video
        .permute((0, 2, 1, 3, 4))?
        .contiguous()?
        .reshape((b * f, c, h, w))?)
}

/// (b * f, c, h, w) -> (b, c, f, h, w).
fn unfold(frames: &Tensor, b: usize, f: usize) -> Result<Tensor> {
    let (_, c, h, w) = frames.dims4()?;
    Ok(frames
        .reshape((b, f, c, h, w))?
        .permute((0, 2, 1, 3, 4))?
        .contiguous()?)
}
