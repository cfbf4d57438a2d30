//! `UNet3DConditionModel`, compatible with diffusers 0.42.1 `models/unets/unet_3d_condition.py` (ModelScope
//! text-to-video layout): the same `config.json`, the same safetensors weight names, the same numerics (parity
//! against fixtures/unet3d within 1e-4).
//!
//! Video tensors are (batch, channels, frames, height, width) at the API; inside, frames are folded into the batch
//! as (batch * frames, channels, height, width) exactly like diffusers, so spatial layers are 2-D and the temporal
//! layers unfold the frames again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::Deserialize;

use super::attention::TransformerTemporalModel;
use super::resnet::{conv2d, Conv2d, GroupNorm};
use super::unet_3d_blocks::{BlockSettings, DownBlock3D, MidBlock3D, UpBlock3D};
use super::{Denoiser, Parameterization};
use crate::error::{Error, IoResultExt, Location, Result};

/// An int or a per-block list (diffusers accepts both for `attention_head_dim`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum PerBlock {
    One(usize),
    Each(Vec<usize>),
}

impl PerBlock {
    fn get(&self, i: usize) -> usize {
        match self {
            PerBlock::One(v) => *v,
            PerBlock::Each(v) => v[i],
        }
    }
}

fn d_in() -> usize {
    4
}
fn d_down() -> Vec<String> {
    [
        "CrossAttnDownBlock3D",
        "CrossAttnDownBlock3D",
        "CrossAttnDownBlock3D",
        "DownBlock3D",
    ]
    .map(String::from)
    .to_vec()
}
fn d_up() -> Vec<String> {
    [
        "UpBlock3D",
        "CrossAttnUpBlock3D",
        "CrossAttnUpBlock3D",
        "CrossAttnUpBlock3D",
    ]
    .map(String::from)
    .to_vec()
}
fn d_boc() -> Vec<usize> {
    vec![320, 640, 1280, 1280]
}
fn d_layers() -> usize {
    2
}
fn d_one_usize() -> usize {
    1
}
fn d_one_f64() -> f64 {
    1.0
}
fn d_silu() -> String {
    "silu".into()
}
fn d_groups() -> Option<usize> {
    Some(32)
}
fn d_eps() -> f64 {
    1e-5
}
fn d_cross() -> usize {
    1024
}
fn d_head() -> PerBlock {
    PerBlock::One(64)
}

/// diffusers `UNet3DConditionModel` config (`config.json`); defaults are diffusers' defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct UNet3DConfig {
    #[serde(default = "d_in")]
    pub in_channels: usize,
    #[serde(default = "d_in")]
    pub out_channels: usize,
    #[serde(default = "d_down")]
    pub down_block_types: Vec<String>,
    #[serde(default = "d_up")]
    pub up_block_types: Vec<String>,
    #[serde(default = "d_boc")]
    pub block_out_channels: Vec<usize>,
    #[serde(default = "d_layers")]
    pub layers_per_block: usize,
    #[serde(default = "d_one_usize")]
    pub downsample_padding: usize,
    #[serde(default = "d_one_f64")]
    pub mid_block_scale_factor: f64,
    #[serde(default = "d_silu")]
    pub act_fn: String,
    #[serde(default = "d_groups")]
    pub norm_num_groups: Option<usize>,
    #[serde(default = "d_eps")]
    pub norm_eps: f64,
    #[serde(default = "d_cross")]
    pub cross_attention_dim: usize,
    /// diffusers quirk: the per-head WIDTH inside the down/mid/up transformers (heads = channels / width), while
    /// `transformer_in` gets 8 heads of this width.
    #[serde(default = "d_head")]
    pub attention_head_dim: PerBlock,
    /// Must be absent/null: diffusers raises NotImplementedError when it is set (naming issue #2011).
    #[serde(default)]
    pub num_attention_heads: Option<serde_json::Value>,
    #[serde(default)]
    pub time_cond_proj_dim: Option<usize>,
    /// vadapt extension (diffusers UNet configs do not carry it): what the model predicts. Default epsilon.
    #[serde(default)]
    pub prediction_type: Option<Parameterization>,
}

impl UNet3DConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).at(path)?;
        let cfg: Self = serde_json::from_str(&text).map_err(|e| {
            Error::config(
                Location::file(path),
                format!("not a UNet3DConditionModel config: {e}"),
            )
        })?;
        cfg.validate().map_err(|e| match e {
            Error::Unsupported { loc, message } => Error::Unsupported {
                loc: Location {
                    path: Some(path.to_path_buf()),
                    ..loc
                },
                message,
            },
            Error::Config { loc, message } => Error::Config {
                loc: Location {
                    path: Some(path.to_path_buf()),
                    ..loc
                },
                message,
            },
            other => other,
        })?;
        Ok(cfg)
    }

    /// Reject configs that diffusers rejects, and graph-changing values this port does not implement.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, msg: String| Err(Error::config(Location::none().field(field), msg));
        let unsupported =
            |field: &str, msg: String| Err(Error::unsupported(Location::none().field(field), msg));
        if self
            .num_attention_heads
            .as_ref()
            .is_some_and(|v| !v.is_null())
        {
            return unsupported(
                "num_attention_heads",
                "diffusers' UNet3DConditionModel raises NotImplementedError when num_attention_heads is set; use attention_head_dim".into(),
            );
        }
        let n = self.down_block_types.len();
        if n == 0 {
            return bad("down_block_types", "empty".into());
        }
        // Sizes past crate::limits are damage, refused before a layer is built from them.
        use crate::limits::{check_count, MAX_CHANNELS};
        let channels = [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("cross_attention_dim", self.cross_attention_dim),
            ("layers_per_block", self.layers_per_block),
        ];
        let blocks = self
            .block_out_channels
            .iter()
            .map(|&c| ("block_out_channels", c));
        for (field, c) in channels.into_iter().chain(blocks) {
            check_count(c, MAX_CHANNELS, field, Location::none().field(field))?;
        }
        if self.up_block_types.len() != n {
            return bad(
                "up_block_types",
                format!(
                    "must have as many entries as down_block_types: down {:?}, up {:?}",
                    self.down_block_types, self.up_block_types
                ),
            );
        }
        if self.block_out_channels.len() != n {
            return bad(
                "block_out_channels",
                format!(
                    "must have as many entries as down_block_types: {:?} vs {:?}",
                    self.block_out_channels, self.down_block_types
                ),
            );
        }
        if let PerBlock::Each(v) = &self.attention_head_dim {
            if v.len() != n {
                return bad(
                    "attention_head_dim",
                    format!("a list must have one entry per block ({n}), got {v:?}"),
                );
            }
        }
        for t in &self.down_block_types {
            if t != "CrossAttnDownBlock3D" && t != "DownBlock3D" {
                return unsupported(
                    "down_block_types",
                    format!("{t:?} (supported: CrossAttnDownBlock3D, DownBlock3D)"),
                );
            }
        }
        for t in &self.up_block_types {
            if t != "CrossAttnUpBlock3D" && t != "UpBlock3D" {
                return unsupported(
                    "up_block_types",
                    format!("{t:?} (supported: CrossAttnUpBlock3D, UpBlock3D)"),
                );
            }
        }
        if self.act_fn != "silu" && self.act_fn != "swish" {
            return unsupported("act_fn", format!("{:?} (supported: silu)", self.act_fn));
        }
        if self.norm_num_groups.is_none() {
            return unsupported(
                "norm_num_groups",
                "null (no GroupNorm before conv_out)".into(),
            );
        }
        if self.mid_block_scale_factor != 1.0 {
            return unsupported(
                "mid_block_scale_factor",
                format!("{}", self.mid_block_scale_factor),
            );
        }
        if self.time_cond_proj_dim.is_some() {
            return unsupported(
                "time_cond_proj_dim",
                "timestep conditioning projection".into(),
            );
        }
        let groups = self.groups();
        for (i, &c) in self.block_out_channels.iter().enumerate() {
            let hd = self.attention_head_dim.get(i);
            if hd == 0 || c % hd != 0 {
                return bad(
                    "attention_head_dim",
                    format!("block {i}: {c} channels are not a multiple of head width {hd}"),
                );
            }
            if c % groups != 0 {
                return bad(
                    "norm_num_groups",
                    format!("block {i}: {c} channels are not divisible into {groups} groups"),
                );
            }
        }
        Ok(())
    }

    fn groups(&self) -> usize {
        self.norm_num_groups.unwrap_or(32)
    }
}

/// Sinusoidal timestep embedding, diffusers `Timesteps(C, flip_sin_to_cos=True, downscale_freq_shift=0)`:
/// `freq_i = exp(-ln(10000) * i / (C/2))`, `emb = [cos(t freq) | sin(t freq)]`, all in f32.
pub fn timestep_embedding(timesteps: &Tensor, dim: usize) -> Result<Tensor> {
    let half = dim / 2;
    let neg_log = -(10000f64.ln()) as f32;
    let freqs: Vec<f32> = (0..half)
        .map(|i| ((neg_log * i as f32) / half as f32).exp())
        .collect();
    let freqs = Tensor::from_vec(freqs, (1, half), timesteps.device())?;
    let args = timesteps
        .to_dtype(DType::F32)?
        .unsqueeze(1)?
        .broadcast_mul(&freqs)?;
    let mut emb = Tensor::cat(&[args.cos()?, args.sin()?], 1)?;
    if dim % 2 == 1 {
        emb = emb.pad_with_zeros(1, 0, 1)?;
    }
    Ok(emb)
}

/// Repeat each batch element `n` times along dim 0 (`repeat_interleave(n, dim=0)`).
fn repeat_interleave(x: &Tensor, n: usize) -> Result<Tensor> {
    if n == 1 {
        return Ok(x.clone());
    }
    let mut dims = x.dims().to_vec();
    let b = dims[0];
    let mut expanded = vec![b, n];
    expanded.extend_from_slice(&dims[1..]);
    let y = x
        .unsqueeze(1)?
        .broadcast_as(expanded.as_slice())?
        .contiguous()?;
    dims[0] = b * n;
    Ok(y.reshape(dims.as_slice())?)
}

/// Intermediate outputs by diffusers module name (as in fixtures/unet3d/modelscope_mini/intermediates.safetensors),
/// for bisecting a mismatch.
pub type Intermediates = BTreeMap<String, Tensor>;

#[derive(Debug, Clone)]
pub struct UNet3DConditionModel {
    config: UNet3DConfig,
    conv_in: Conv2d,
    time_linear_1: Linear,
    time_linear_2: Linear,
    transformer_in: TransformerTemporalModel,
    down_blocks: Vec<DownBlock3D>,
    mid_block: MidBlock3D,
    up_blocks: Vec<UpBlock3D>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    span: tracing::Span,
}

impl UNet3DConditionModel {
    /// Build from a `VarBuilder` whose names follow diffusers' state dict (a checkpoint, or a `VarMap` for training).
    pub fn new(vb: VarBuilder, config: UNet3DConfig) -> Result<Self> {
        config.validate()?;
        let c = &config;
        let boc = &c.block_out_channels;
        let groups = c.groups();
        let c0 = boc[0];
        let temb = c0 * 4;
        let settings = |i: usize| BlockSettings {
            temb_channels: temb,
            groups,
            eps: c.norm_eps,
            cross_attention_dim: c.cross_attention_dim,
            head_dim: c.attention_head_dim.get(i),
        };
        let conv_in = conv2d(c.in_channels, c0, 3, 1, 1, vb.pp("conv_in"))?;
        let time_linear_1 = candle_nn::linear(c0, temb, vb.pp("time_embedding").pp("linear_1"))?;
        let time_linear_2 = candle_nn::linear(temb, temb, vb.pp("time_embedding").pp("linear_2"))?;
        // transformer_in: 8 heads of attention_head_dim (of the first block), whatever the channel count.
        let transformer_in = TransformerTemporalModel::new(
            8,
            c.attention_head_dim.get(0),
            c0,
            groups,
            vb.pp("transformer_in"),
        )?;

        let n = boc.len();
        let mut down_blocks = Vec::with_capacity(n);
        let mut output_channel = c0;
        for (i, kind) in c.down_block_types.iter().enumerate() {
            let input_channel = output_channel;
            output_channel = boc[i];
            let is_final = i == n - 1;
            down_blocks.push(DownBlock3D::new(
                input_channel,
                output_channel,
                c.layers_per_block,
                kind == "CrossAttnDownBlock3D",
                !is_final,
                c.downsample_padding,
                &settings(i),
                vb.pp("down_blocks").pp(i),
            )?);
        }
        let mid_block = MidBlock3D::new(boc[n - 1], &settings(n - 1), vb.pp("mid_block"))?;

        let rev: Vec<usize> = boc.iter().rev().copied().collect();
        let mut up_blocks = Vec::with_capacity(n);
        let mut output_channel = rev[0];
        for (i, kind) in c.up_block_types.iter().enumerate() {
            let is_final = i == n - 1;
            let prev_output_channel = output_channel;
            output_channel = rev[i];
            let input_channel = rev[(i + 1).min(n - 1)];
            up_blocks.push(UpBlock3D::new(
                input_channel,
                prev_output_channel,
                output_channel,
                c.layers_per_block + 1,
                kind == "CrossAttnUpBlock3D",
                !is_final,
                &settings(n - 1 - i),
                vb.pp("up_blocks").pp(i),
            )?);
        }
        let conv_norm_out = GroupNorm::new(groups, c0, c.norm_eps, vb.pp("conv_norm_out"))?;
        let conv_out = conv2d(c0, c.out_channels, 3, 1, 1, vb.pp("conv_out"))?;
        Ok(Self {
            config,
            conv_in,
            time_linear_1,
            time_linear_2,
            transformer_in,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out,
            conv_out,
            span: tracing::span!(tracing::Level::TRACE, "unet3d"),
        })
    }

    /// Load a diffusers model directory: `config.json` plus `diffusion_pytorch_model.safetensors` or the sharded
    /// `diffusion_pytorch_model.safetensors.index.json`. F16/BF16 weights are converted to `dtype` (F32 on CPU).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        Self::load_with_dtype(dir, device, DType::F32)
    }

    pub fn load_with_dtype(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        if device.is_cpu() && dtype == DType::BF16 {
            return Err(Error::unsupported(
                Location::file(dir).field("dtype"),
                "BF16 compute on CPU (candle has no CPU BF16 matmul): use F32 or F16 there, BF16 on CUDA",
            ));
        }
        let config = UNet3DConfig::from_file(&dir.join("config.json"))?;
        let files = weight_files(dir)?;
        for f in &files {
            check_safetensors(f)?;
        }
        // SAFETY: the files are memory-mapped read-only; vadapt never writes a model file while it is loaded.
        let vb =
            unsafe { VarBuilder::from_mmaped_safetensors(&files, dtype, device) }.map_err(|e| {
                Error::model(
                    Location::file(&files[0]),
                    format!("not a valid safetensors file: {}", candle_message(&e)),
                )
            })?;
        let shown = if files.len() == 1 {
            files[0].clone()
        } else {
            dir.join("diffusion_pytorch_model.safetensors.index.json")
        };
        Self::new(vb, config).map_err(|e| match e {
            Error::Tensor(inner) => Error::model(Location::file(&shown), candle_message(&inner)),
            Error::Model { loc, message } if loc.path.is_none() => Error::Model {
                loc: Location {
                    path: Some(shown.clone()),
                    ..loc
                },
                message,
            },
            other => other,
        })
    }

    pub fn config(&self) -> &UNet3DConfig {
        &self.config
    }

    /// `sample` (b, c, f, h, w), `timestep` (b,) or scalar, `encoder_hidden_states` (b, tokens, dim) -> (b, out, f, h, w).
    pub fn forward(
        &self,
        sample: &Tensor,
        timestep: &Tensor,
        encoder_hidden_states: &Tensor,
    ) -> Result<Tensor> {
        self.forward_impl(sample, timestep, encoder_hidden_states, None)
    }

    /// Forward that also records diffusers-named intermediates (`time_proj`, `conv_in`, `down_blocks.0`, ...).
    pub fn forward_with_intermediates(
        &self,
        sample: &Tensor,
        timestep: &Tensor,
        encoder_hidden_states: &Tensor,
    ) -> Result<(Tensor, Intermediates)> {
        let mut inter = Intermediates::new();
        let out = self.forward_impl(sample, timestep, encoder_hidden_states, Some(&mut inter))?;
        Ok((out, inter))
    }

    fn forward_impl(
        &self,
        sample: &Tensor,
        timestep: &Tensor,
        encoder_hidden_states: &Tensor,
        mut inter: Option<&mut Intermediates>,
    ) -> Result<Tensor> {
        let _enter = self.span.enter();
        let mut record = |name: &str, t: &Tensor| {
            if let Some(m) = inter.as_deref_mut() {
                m.insert(name.to_string(), t.clone());
            }
        };
        let (b, c, f, h, w) = sample.dims5()?;
        if c != self.config.in_channels {
            return Err(Error::invalid(
                Location::none().field("sample"),
                format!(
                    "sample has {c} channels, the model takes in_channels = {}",
                    self.config.in_channels
                ),
            ));
        }
        let (eb, _, ed) = encoder_hidden_states.dims3()?;
        if eb != b || ed != self.config.cross_attention_dim {
            return Err(Error::invalid(
                Location::none().field("encoder_hidden_states"),
                format!(
                    "encoder_hidden_states is {:?}; expected batch {b} and width cross_attention_dim = {}",
                    encoder_hidden_states.dims(),
                    self.config.cross_attention_dim
                ),
            ));
        }
        // 1. time
        let timesteps = match timestep.rank() {
            0 => timestep.unsqueeze(0)?.broadcast_as(b)?.contiguous()?,
            _ if timestep.elem_count() == 1 => {
                timestep.reshape(1)?.broadcast_as(b)?.contiguous()?
            }
            _ => timestep.clone(),
        };
        // Everything runs in the weights' dtype (F32 on CPU; F16/BF16 where loaded so); the sinusoidal embedding is
        // computed in F32 first, as diffusers does.
        let dtype = self.dtype();
        let t_emb =
            timestep_embedding(&timesteps, self.config.block_out_channels[0])?.to_dtype(dtype)?;
        record("time_proj", &t_emb);
        let emb = self
            .time_linear_2
            .forward(&self.time_linear_1.forward(&t_emb)?.silu()?)?;
        record("time_embedding", &emb);
        let emb = repeat_interleave(&emb, f)?;
        let context = repeat_interleave(&encoder_hidden_states.to_dtype(dtype)?, f)?;

        // 2. pre-process: (b, c, f, h, w) -> (b*f, c, h, w)
        let x = sample
            .to_dtype(dtype)?
            .permute((0, 2, 1, 3, 4))?
            .contiguous()?
            .reshape((b * f, c, h, w))?;
        let x = self.conv_in.forward(&x)?;
        record("conv_in", &x);
        let mut x = self.transformer_in.forward(&x, f)?;
        record("transformer_in", &x);

        // 3. down
        let mut skips = vec![x.clone()];
        for (i, block) in self.down_blocks.iter().enumerate() {
            let (y, states) = block.forward(&x, &emb, &context, f)?;
            x = y;
            skips.extend(states);
            record(&format!("down_blocks.{i}"), &x);
        }

        // 4. mid
        x = self.mid_block.forward(&x, &emb, &context, f)?;
        record("mid_block", &x);

        // 5. up: each block consumes its resnets' count of skip states; the upsample target is the next skip's
        // size (= 2x when the input size is divisible, diffusers' forward_upsample_size otherwise).
        for (i, block) in self.up_blocks.iter().enumerate() {
            let k = block.num_layers();
            let res = skips.split_off(skips.len() - k);
            let size = skips
                .last()
                .map(|s| s.dims4())
                .transpose()?
                .map(|(_, _, sh, sw)| (sh, sw));
            x = block.forward(&x, &res, &emb, &context, f, size)?;
            record(&format!("up_blocks.{i}"), &x);
        }

        // 6. post-process
        let x = self.conv_norm_out.forward(&x)?.silu()?;
        record("conv_norm_out_act", &x);
        let x = self.conv_out.forward(&x)?;
        record("conv_out", &x);
        let co = self.config.out_channels;
        // Samplers and composition work in F32 whatever the weights' dtype.
        Ok(x.reshape((b, f, co, h, w))?
            .permute((0, 2, 1, 3, 4))?
            .to_dtype(DType::F32)?
            .contiguous()?)
    }

    /// The dtype the weights were loaded in, which the forward runs in.
    pub fn dtype(&self) -> DType {
        self.conv_in.weight().dtype()
    }
}

impl Denoiser for UNet3DConditionModel {
    fn forward(
        &self,
        sample: &Tensor,
        timestep: &Tensor,
        encoder_hidden_states: &Tensor,
    ) -> Result<Tensor> {
        UNet3DConditionModel::forward(self, sample, timestep, encoder_hidden_states)
    }
    fn in_channels(&self) -> usize {
        self.config.in_channels
    }
    fn out_channels(&self) -> usize {
        self.config.out_channels
    }
    fn cross_attention_dim(&self) -> usize {
        self.config.cross_attention_dim
    }
    fn parameterization(&self) -> Parameterization {
        self.config
            .prediction_type
            .unwrap_or(Parameterization::Epsilon)
    }
}

/// A candle error as one line for a user: without the backtrace candle attaches when `RUST_BACKTRACE` is set and
/// without the path it adds (the [`Location`] names the file already).
fn candle_message(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. }
        | candle_core::Error::WithPath { inner, .. } => candle_message(inner),
        candle_core::Error::Context { inner, context } => {
            format!("{context}: {}", candle_message(inner))
        }
        other => other.to_string(),
    }
}

/// The safetensors files of a diffusers model directory.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("diffusion_pytorch_model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let index = dir.join("diffusion_pytorch_model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).at(&index)?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::model(Location::file(&index), format!("bad index JSON: {e}")))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| {
                Error::model(
                    Location::file(&index).field("weight_map"),
                    "missing or not an object",
                )
            })?;
        let mut files: Vec<PathBuf> = map
            .values()
            .filter_map(|f| f.as_str())
            .map(|f| dir.join(f))
            .collect();
        files.sort();
        files.dedup();
        for f in &files {
            if !f.exists() {
                return Err(Error::model(
                    Location::file(f),
                    format!("shard named in {} is missing", index.display()),
                ));
            }
        }
        return Ok(files);
    }
    // Pickle-based checkpoints (torch .bin / .pt / .pth / .ckpt / .pkl) can run code when loaded, so they are never
    // opened; say so by name rather than only "not found".
    let mut pickles: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| {
                    [".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"]
                        .iter()
                        .any(|ext| n.ends_with(ext))
                })
                .collect()
        })
        .unwrap_or_default();
    pickles.sort();
    let why = if pickles.is_empty() {
        String::new()
    } else {
        format!(
            " (found {}: vadapt loads safetensors only, never pickle; convert with diffusers' save_pretrained(safe_serialization=True))",
            pickles.join(", ")
        )
    };
    Err(Error::model(
        Location::file(dir),
        format!("no diffusion_pytorch_model.safetensors or .safetensors.index.json{why}"),
    ))
}

/// Fail early, naming the file, when it is not a readable safetensors file.
fn check_safetensors(path: &Path) -> Result<()> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).at(path)?;
    let mut head = [0u8; 8];
    f.read_exact(&mut head).map_err(|_| {
        Error::model(
            Location::file(path),
            "not a safetensors file (shorter than 8 bytes)",
        )
    })?;
    let header_len = u64::from_le_bytes(head);
    let file_len = f.metadata().at(path)?.len();
    if header_len == 0 || header_len > file_len.saturating_sub(8) {
        return Err(Error::model(
            Location::file(path),
            "not a safetensors file (bad header length)",
        ));
    }
    Ok(())
}

/// Multiply-add FLOPs (2 per MAC) of one forward at (batch, frames, height, width): convolutions, linear layers and
/// attention matmuls, which are all but a few percent of the work. Used to report achieved GFLOP/s.
pub fn forward_flops(
    c: &UNet3DConfig,
    batch: usize,
    frames: usize,
    height: usize,
    width: usize,
    text_tokens: usize,
) -> f64 {
    let bf = (batch * frames) as f64;
    let tokens = text_tokens as f64;
    let conv =
        |cin: usize, cout: usize, k: usize, hw: f64| 2.0 * (cin * cout * k * k) as f64 * hw * bf;
    let lin = |i: usize, o: usize, rows: f64| 2.0 * (i * o) as f64 * rows;
    // Self-attention over `n` tokens of width `inner` in `seqs` sequences (+ projections).
    let self_attn = |inner: usize, n: f64, seqs: f64| {
        lin(inner, inner, n * seqs) * 4.0 + 2.0 * 2.0 * n * n * inner as f64 * seqs
    };
    let cross_attn = |inner: usize, n: f64, seqs: f64, ctx: usize| {
        lin(inner, inner, n * seqs) * 2.0
            + lin(ctx, inner, tokens * seqs) * 2.0
            + 2.0 * 2.0 * n * tokens * inner as f64 * seqs
    };
    let ff = |inner: usize, rows: f64| lin(inner, 8 * inner, rows) + lin(4 * inner, inner, rows);
    let resnet = |cin: usize, cout: usize, hw: f64| {
        conv(cin, cout, 3, hw)
            + conv(cout, cout, 3, hw)
            + if cin != cout {
                conv(cin, cout, 1, hw)
            } else {
                0.0
            }
    };
    let temporal_conv = |ch: usize, hw: f64| 4.0 * 2.0 * (ch * ch * 3) as f64 * hw * bf;
    let spatial = |ch: usize, hw: f64| {
        let rows = hw * bf;
        lin(ch, ch, rows) * 2.0
            + self_attn(ch, hw, bf)
            + cross_attn(ch, hw, bf, c.cross_attention_dim)
            + ff(ch, rows)
    };
    let temporal = |ch: usize, inner: usize, hw: f64| {
        let seqs = hw * batch as f64;
        let rows = frames as f64 * seqs;
        lin(ch, inner, rows) * 2.0 + 2.0 * self_attn(inner, frames as f64, seqs) + ff(inner, rows)
    };
    let boc = &c.block_out_channels;
    let n = boc.len();
    let mut hw = (height * width) as f64;
    let mut total =
        conv(c.in_channels, boc[0], 3, hw) + temporal(boc[0], 8 * c.attention_head_dim.get(0), hw);
    let mut sizes = Vec::new();
    let mut ch_in = boc[0];
    for (i, kind) in c.down_block_types.iter().enumerate() {
        for l in 0..c.layers_per_block {
            let cin = if l == 0 { ch_in } else { boc[i] };
            total += resnet(cin, boc[i], hw) + temporal_conv(boc[i], hw);
            if kind == "CrossAttnDownBlock3D" {
                total += spatial(boc[i], hw) + temporal(boc[i], boc[i], hw);
            }
        }
        sizes.push(hw);
        if i + 1 < n {
            hw /= 4.0;
            total += conv(boc[i], boc[i], 3, hw);
        }
        ch_in = boc[i];
    }
    let top = boc[n - 1];
    total += 2.0 * (resnet(top, top, hw) + temporal_conv(top, hw))
        + spatial(top, hw)
        + temporal(top, top, hw);
    let rev: Vec<usize> = boc.iter().rev().copied().collect();
    let mut prev = rev[0];
    for (i, kind) in c.up_block_types.iter().enumerate() {
        let out = rev[i];
        let input = rev[(i + 1).min(n - 1)];
        for l in 0..=c.layers_per_block {
            let skip = if l == c.layers_per_block { input } else { out };
            let cin = if l == 0 { prev } else { out };
            total += resnet(cin + skip, out, hw) + temporal_conv(out, hw);
            if kind == "CrossAttnUpBlock3D" {
                total += spatial(out, hw) + temporal(out, out, hw);
            }
        }
        if i + 1 < n {
            hw *= 4.0;
            total += conv(out, out, 3, hw);
        }
        prev = out;
    }
    total + conv(boc[0], c.out_channels, 3, hw)
}
