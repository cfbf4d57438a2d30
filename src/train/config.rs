//! `vadapt train --config pipelines/train_*.toml`: the training recipe, validated before any work starts.
//!
//! ```toml
//! output = "runs/edge_to_sim"        # run directory: checkpoints/, model/, loss.csv, loss.png, samples/
//! steps = 2000
//! seed = 0
//!
//! [data]
//! dataset = "datasets/sample/lerobot"           # anything `vadapt inspect` reads (LeRobot v2.1/v3.0, RLDS)
//! target_key = "observation.images.sim"         # the video the model learns to generate (or a list: one episode
//!                                                # per camera, each its own condition or all one condition_key)
//! condition_key = "observation.images.real"     # edges and first frame come from here (default: target_key);
//!                                               # a list pairs the target with each camera in turn
//! first_frame = "condition"                     # or "target_far": the target's frame farthest from the clip
//!                                                # (a reference still of the look)
//! # reference = "same_look"                     # with `reference` conditioning: the reference still, from
//!                                                # another episode of the same look (default "far_still")
//! # reference_tiles = 4                          # ... cut into 4 x 4 tiles, shuffled (vision::tiles)
//! prompt = "{task}"                             # text template; {task} is the episode's task, {appearance} the
//!                                                # target camera's name (episodes table: appearance/<camera>/name)
//! holdout_episodes = 1                          # the last N episodes only feed the sample sheets
//!
//! [model]                                       # a fresh diffusers UNet3DConditionModel ...
//! frames = 8
//! height = 24
//! width = 40
//! conditioning = ["edges"]                      # [noisy RGB, edges, first frame] on channels
//! block_out_channels = [32, 64]
//! # init_from = "models/demo/edge_to_sim"       # ... or fine-tune an existing model directory
//! # low_res = [12, 20]                          # a super-resolution stage (conditioning lists "low_res"): the
//! #                                             # previous stage's resolution
//! # vae = "models/t2v/vae"                      # denoise this frozen AutoencoderKL's latents (or a diffusers
//! #                                             # text-to-video dir: its vae/); height/width stay in pixels
//!
//! [text_encoder]                                # optional: the byte-level text encoder (models::text)
//! num_hidden_layers = 1
//!
//! [optim]
//! lr = 1e-3
//! warmup_steps = 100                            # then cosine decay to min_lr
//! ```
//! Relative paths are relative to the working directory (like `vadapt augment`'s pipelines).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoResultExt, Location, Result};
use crate::model_dir::Conditioning;
use crate::models::text::PaddedRows;
use crate::models::vae::AutoencoderKLConfig;
use crate::models::Parameterization;
use crate::rng::NoiseRng;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Run directory.
    pub output: PathBuf,
    /// Optimizer steps in total (a resumed run continues up to this).
    pub steps: usize,
    #[serde(default)]
    pub seed: u64,
    pub data: DataConfig,
    #[serde(default)]
    pub model: ModelConfig,
    #[serde(default)]
    pub text_encoder: Option<TextEncoderConfig>,
    #[serde(default)]
    pub scheduler: NoiseConfig,
    #[serde(default)]
    pub optim: OptimConfig,
    #[serde(default)]
    pub guidance: DropoutConfig,
    #[serde(default)]
    pub log: LogConfig,
    /// Debug: train on the first batch (clips, noise and timesteps) over and over. A model that cannot overfit one
    /// batch has a bug; the loss must fall by orders of magnitude.
    #[serde(default)]
    pub fixed_batch: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// One dataset or several (their episodes are pooled).
    #[serde(deserialize_with = "one_or_many")]
    pub dataset: Vec<PathBuf>,
    /// The camera(s) the model learns to generate. Several keys (every appearance camera, for a prior that learns
    /// the appearances' names through `{appearance}` in the prompt) make one training episode per key, each its own
    /// condition camera, or all conditioned on one `condition_key` camera (edges of the default look -> every
    /// appearance); they take no `condition_key` list.
    pub target_key: CameraKeys,
    /// The camera(s) whose edges and first frame condition the model. Several keys (e.g. every randomized
    /// appearance of a LanguageTable episode) pair the target with each of them: one training episode per key.
    #[serde(default)]
    pub condition_key: Option<CameraKeys>,
    #[serde(default = "d_prompt")]
    pub prompt: String,
    #[serde(default)]
    pub holdout_episodes: usize,
    /// Take every n-th source frame (source fps / model fps).
    #[serde(default = "d_one")]
    pub frame_stride: usize,
    /// Each comma-separated clause of a training prompt is dropped with this probability (at least one is kept),
    /// per clip and step. A prompt that names its clip uniquely (a LanguageTable appearance name) is then no
    /// identifier to memorise: the model must tie each clause ("wooden pink board") to what it shows. 0: off.
    #[serde(default)]
    pub prompt_clause_dropout: f64,
    /// Where the first-frame conditioning channel comes from (for recipes with `first_frame` conditioning).
    #[serde(default)]
    pub first_frame: FirstFrameSource,
    /// With `reference` conditioning: the reference still (`data.reference`) is cut into this many tiles a side
    /// and shuffled per clip (default 1: the whole still); the exported `vadapt.json` records it so that sampling
    /// shuffles a target's reference the same way.
    #[serde(default)]
    pub reference_tiles: Option<usize>,
    /// With `reference` conditioning: where the reference still comes from (default `far_still`).
    #[serde(default)]
    pub reference: Option<ReferenceSource>,
    /// A super-resolution recipe's low_res source: the previous stage's own outputs, one camera per condition camera
    /// (in `condition_key`'s order, or `target_key`'s without one), e.g. `scripts/language_table/base_outputs.sh`'s
    /// `observation.images.base_rgb`. Each is resized to `model.low_res` and back up, as a cascade feeds the stage,
    /// so the stage trains on the errors of the model it follows (a blurred arm, blobs for blocks) and learns to
    /// take what that model got wrong from the edges. Default: the target camera itself through `model.low_res`.
    #[serde(default)]
    pub low_res_key: Option<CameraKeys>,
}

/// `data.reference`: the still behind the reference channel while training.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReferenceSource {
    /// The target camera's frame farthest from the clip in its own episode: the same look, the same scene with
    /// the pushed block and the arm elsewhere.
    #[default]
    FarStill,
    /// A frame of another episode whose target camera shows the same look (the episodes table's
    /// `appearance/<camera>/look`, as `generate.py --appearance-pool` writes it; else its `appearance/<camera>/name`;
    /// a camera with neither shows one look in every episode): the same board, background and light around
    /// another scene, as a pipeline target's `reference` is. A clip whose look no other episode shows falls back
    /// to `far_still`.
    SameLook,
}

/// `data.first_frame`: the image behind the first-frame conditioning channel while training.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FirstFrameSource {
    /// The condition camera's frame at the clip's start, as sampling gives the source camera's first frame.
    #[default]
    Condition,
    /// The target camera's frame farthest from the clip in its episode (its first or its last): a still of the look
    /// to render whose blocks and arm stand elsewhere, so the model must take the look from it and the geometry from
    /// the edges. A model trained so restyles a video after any reference image of a look (`reference` in a
    /// pipeline target).
    TargetFar,
    /// `target_far` mirrored left-right: the look survives (board, background, light), but no block or arm stands
    /// where the clip's do, so copying the still's scene is never right. A model trained on `target_far` alone
    /// learned to paste the still's blocks over the motion (docs/results.md, "Restyle").
    TargetFarMirrored,
}

/// The grid of `data.reference_tiles` when it is not given.
pub const DEFAULT_REFERENCE_TILES: usize = 1;

/// One camera key or a list of them; written back the way it was given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CameraKeys {
    One(String),
    Many(Vec<String>),
}

impl CameraKeys {
    pub fn keys(&self) -> &[String] {
        match self {
            CameraKeys::One(k) => std::slice::from_ref(k),
            CameraKeys::Many(v) => v,
        }
    }
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<PathBuf>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(PathBuf),
        Many(Vec<PathBuf>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(p) => vec![p],
        OneOrMany::Many(v) => v,
    })
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    #[serde(default)]
    pub init_from: Option<PathBuf>,
    #[serde(default = "d_frames")]
    pub frames: usize,
    #[serde(default = "d_height")]
    pub height: usize,
    #[serde(default = "d_width")]
    pub width: usize,
    #[serde(default = "d_fps")]
    pub fps: f64,
    #[serde(default = "d_conditioning")]
    pub conditioning: Vec<Conditioning>,
    #[serde(default = "d_boc")]
    pub block_out_channels: Vec<usize>,
    /// Which levels have attention (CrossAttn blocks); default: all but the last, like diffusers' default.
    #[serde(default)]
    pub attention_levels: Option<Vec<bool>>,
    #[serde(default = "d_one")]
    pub layers_per_block: usize,
    #[serde(default = "d_head")]
    pub attention_head_dim: usize,
    #[serde(default = "d_groups")]
    pub norm_num_groups: usize,
    /// Text embedding width; the text encoder's hidden size.
    #[serde(default = "d_cross")]
    pub cross_attention_dim: usize,
    #[serde(default = "d_param")]
    pub prediction_type: Parameterization,
    /// A super-resolution stage's input resolution `[height, width]` (the previous stage's): the low_res signal is
    /// the target video resized down to it and back up. Required exactly when `conditioning` lists `low_res`.
    /// (Absent fields are not serialized, so checkpoints of recipes without them still resume.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_res: Option<[usize; 2]>,
    /// A frozen diffusers AutoencoderKL (a `vae/` dir, or a text-to-video pipeline dir holding one): the UNet then
    /// denoises its scaled latents and the saved model gets a `vae/` copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vae: Option<PathBuf>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        toml::from_str("").unwrap_or_else(|_| unreachable!("all fields have defaults"))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextEncoderConfig {
    #[serde(default = "d_one")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_heads")]
    pub num_attention_heads: usize,
    /// Default: 4 x the width.
    #[serde(default)]
    pub intermediate_size: Option<usize>,
    /// Tokens per prompt, BOS and EOS included.
    #[serde(default = "d_tokens")]
    pub max_tokens: usize,
    /// Train the encoder jointly with the UNet; otherwise it stays at its seeded random initialisation (a fixed
    /// random transformer still gives every prompt its own embedding, and those are computed once).
    #[serde(default)]
    pub train: bool,
    /// "bytes": byte tokens only. "words": also one token per word seen at least `min_word_count` times in the
    /// training prompts (the vocabulary is stored in the saved config), so a style name is one learnable token.
    #[serde(default)]
    pub tokens: TokenKind,
    #[serde(default = "d_min_word_count")]
    pub min_word_count: usize,
    /// "zeros" or "prompt": what the rows after the prompt hold (`ByteEncoderConfig::padded_rows`).
    #[serde(default)]
    pub padded_rows: PaddedRows,
}

/// What the embedded text encoder's tokens are (`[text_encoder] tokens`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    #[default]
    Bytes,
    Words,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoiseConfig {
    /// "linear", "scaled_linear" or "squaredcos_cap_v2" (diffusers names).
    #[serde(default = "d_beta_schedule")]
    pub beta_schedule: String,
    #[serde(default = "d_train_steps")]
    pub num_train_timesteps: usize,
}

impl Default for NoiseConfig {
    fn default() -> Self {
        toml::from_str("").unwrap_or_else(|_| unreachable!("all fields have defaults"))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    #[serde(default = "d_batch")]
    pub batch_size: usize,
    #[serde(default = "d_lr")]
    pub lr: f64,
    /// The cosine decay ends here (fraction of `lr`).
    #[serde(default)]
    pub min_lr_ratio: f64,
    #[serde(default)]
    pub warmup_steps: usize,
    #[serde(default = "d_wd")]
    pub weight_decay: f64,
    #[serde(default = "d_beta1")]
    pub beta1: f64,
    #[serde(default = "d_beta2")]
    pub beta2: f64,
    #[serde(default = "d_adam_eps")]
    pub eps: f64,
    /// Clip the global gradient norm to this (0 = off).
    #[serde(default = "d_one_f64")]
    pub grad_clip: f64,
    /// EMA decay (0 = no EMA; the saved model is then the raw weights).
    #[serde(default = "d_ema")]
    pub ema_decay: f64,
    /// Which training timesteps to sample more often, as diffusers' SDXL training script does
    /// (`--timestep_bias_strategy`): "none" (uniform), "later" (the noisiest `timestep_bias_portion`),
    /// "earlier" (the least noisy portion) or "range" (`timestep_bias_begin..timestep_bias_end`).
    #[serde(default)]
    pub timestep_bias_strategy: TimestepBias,
    /// Weight of the biased timesteps relative to the others (> 0; 1 = uniform).
    #[serde(default = "d_one_f64")]
    pub timestep_bias_multiplier: f64,
    #[serde(default = "d_bias_portion")]
    pub timestep_bias_portion: f64,
    #[serde(default)]
    pub timestep_bias_begin: usize,
    #[serde(default = "d_train_steps")]
    pub timestep_bias_end: usize,
    /// Offset noise (diffusers' `--noise_offset`, after Guttenberg 2023): each clip's noise gets one extra
    /// N(0, noise_offset²) value per channel, added at every pixel and frame. A clip's mean colour then cannot be
    /// read off its noisy input until far down the schedule, so the model must learn it from the prompt — the
    /// "signal leak" of mean colour is why a prior trained without it ignores its style words (docs/results.md).
    /// The schedule is unchanged, so the model still composes with others trained without it. 0 = off.
    #[serde(default)]
    pub noise_offset: f64,
}

/// How training draws its timesteps: uniformly, or from [`OptimConfig::timestep_weights`] by inverting their CDF
/// (`torch.multinomial(weights, n, replacement=True)` in diffusers).
#[derive(Debug, Clone)]
pub struct TimestepDraw {
    num_timesteps: usize,
    cdf: Option<Vec<f64>>,
}

impl TimestepDraw {
    pub fn new(optim: &OptimConfig, num_timesteps: usize) -> Self {
        let cdf = optim.timestep_weights(num_timesteps).map(|w| {
            w.iter()
                .scan(0.0, |acc, x| {
                    *acc += x;
                    Some(*acc)
                })
                .collect()
        });
        Self { num_timesteps, cdf }
    }

    /// One timestep in 0..num_timesteps. The uniform case draws exactly as before the option existed, so older
    /// recipes train bit-identically.
    pub fn draw(&self, rng: &mut NoiseRng) -> usize {
        match &self.cdf {
            None => rng.below(self.num_timesteps),
            Some(cdf) => {
                let u = rng.uniform() as f64;
                cdf.partition_point(|&c| c <= u).min(self.num_timesteps - 1)
            }
        }
    }
}

/// `[optim] timestep_bias_strategy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimestepBias {
    #[default]
    None,
    Later,
    Earlier,
    Range,
}

impl OptimConfig {
    /// The sampling weight of each training timestep, normalised to sum 1 — diffusers'
    /// `generate_timestep_weights` (examples/text_to_image/train_text_to_image_sdxl.py), or `None` for uniform.
    pub fn timestep_weights(&self, num_timesteps: usize) -> Option<Vec<f64>> {
        let n = num_timesteps;
        let k = ((self.timestep_bias_portion * n as f64) as usize).min(n);
        let biased = match self.timestep_bias_strategy {
            TimestepBias::None => return None,
            TimestepBias::Later => n - k..n,
            TimestepBias::Earlier => 0..k,
            TimestepBias::Range => self.timestep_bias_begin..self.timestep_bias_end.min(n),
        };
        let mut w = vec![1.0; n];
        for x in &mut w[biased] {
            *x *= self.timestep_bias_multiplier;
        }
        let sum: f64 = w.iter().sum();
        Some(w.into_iter().map(|x| x / sum).collect())
    }
}

impl Default for OptimConfig {
    fn default() -> Self {
        toml::from_str("").unwrap_or_else(|_| unreachable!("all fields have defaults"))
    }
}

/// Classifier-free guidance dropout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropoutConfig {
    /// Probability of replacing a clip's text by the unconditional embedding.
    #[serde(default = "d_drop_text")]
    pub drop_text: f64,
    /// Probability of zeroing a clip's conditioning channels (edges, first frame).
    #[serde(default)]
    pub drop_conditions: f64,
}

impl Default for DropoutConfig {
    fn default() -> Self {
        toml::from_str("").unwrap_or_else(|_| unreachable!("all fields have defaults"))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Loss CSV row every N steps.
    #[serde(default = "d_one")]
    pub every: usize,
    /// Checkpoint every N steps (and always at the end).
    #[serde(default = "d_ckpt")]
    pub checkpoint_every: usize,
    /// Older checkpoints beyond this many are deleted (0 = keep all).
    #[serde(default = "d_keep")]
    pub keep_checkpoints: usize,
    /// Sample sheet every N steps (0 = only at the end).
    #[serde(default)]
    pub sample_every: usize,
    #[serde(default = "d_sample_steps")]
    pub sample_steps: usize,
    /// Held-out clips per sample sheet.
    #[serde(default = "d_sample_clips")]
    pub sample_clips: usize,
    #[serde(default = "d_one_f64")]
    pub sample_guidance: f64,
}

impl Default for LogConfig {
    fn default() -> Self {
        toml::from_str("").unwrap_or_else(|_| unreachable!("all fields have defaults"))
    }
}

fn d_prompt() -> String {
    "{task}".into()
}
fn d_one() -> usize {
    1
}
fn d_one_f64() -> f64 {
    1.0
}
fn d_frames() -> usize {
    8
}
fn d_height() -> usize {
    24
}
fn d_width() -> usize {
    40
}
fn d_fps() -> f64 {
    10.0
}
fn d_conditioning() -> Vec<Conditioning> {
    vec![Conditioning::Edges]
}
fn d_boc() -> Vec<usize> {
    vec![32, 64]
}
fn d_head() -> usize {
    8
}
fn d_groups() -> usize {
    8
}
fn d_cross() -> usize {
    32
}
fn d_param() -> Parameterization {
    Parameterization::Epsilon
}
fn d_heads() -> usize {
    2
}
fn d_min_word_count() -> usize {
    2
}
fn d_bias_portion() -> f64 {
    0.25
}
fn d_tokens() -> usize {
    32
}
fn d_beta_schedule() -> String {
    "squaredcos_cap_v2".into()
}
fn d_train_steps() -> usize {
    1000
}
fn d_batch() -> usize {
    4
}
fn d_lr() -> f64 {
    1e-3
}
fn d_wd() -> f64 {
    1e-2
}
fn d_beta1() -> f64 {
    0.9
}
fn d_beta2() -> f64 {
    0.999
}
fn d_adam_eps() -> f64 {
    1e-8
}
fn d_ema() -> f64 {
    0.999
}
fn d_drop_text() -> f64 {
    0.1
}
fn d_ckpt() -> usize {
    500
}
fn d_keep() -> usize {
    2
}
fn d_sample_steps() -> usize {
    20
}
fn d_sample_clips() -> usize {
    2
}

impl TrainConfig {
    /// Parse and validate `path`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).at(path)?;
        Self::from_toml(&text, path)
    }

    /// The cameras whose edges and first frame condition the model: `data.condition_key`, else each target camera
    /// conditions on itself.
    pub fn condition_cameras(&self) -> &[String] {
        self.data
            .condition_key
            .as_ref()
            .unwrap_or(&self.data.target_key)
            .keys()
    }

    /// The tile grid of the reference stills this recipe trains on; `None` without `reference` conditioning.
    pub fn reference_tiles(&self) -> Option<usize> {
        self.model
            .conditioning
            .contains(&Conditioning::Reference)
            .then(|| self.data.reference_tiles.unwrap_or(DEFAULT_REFERENCE_TILES))
    }

    /// Parse and validate TOML text; `path` names it in errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self> {
        let config = Self::parse(text, path)?;
        config.validate(path)?;
        Ok(config)
    }

    /// A recipe as `vadapt bench --train` uses it: its model, noise and optimiser, validated as for training, but
    /// without its data (the datasets need not exist: the bench synthesizes its batches) and without
    /// `model.init_from` (the bench starts from the seeded initialisation), which is cleared.
    pub fn from_file_without_data(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).at(path)?;
        let mut config = Self::parse(&text, path)?;
        config.model.init_from = None;
        config.validate_with(path, false)?;
        Ok(config)
    }

    fn parse(text: &str, path: &Path) -> Result<Self> {
        toml::from_str(text).map_err(|e| {
            // toml's message names the key and shows the line.
            Error::config(Location::file(path), e.to_string())
        })
    }

    /// The VAE directory `model.vae` names (the path itself, or its `vae/` for a pipeline directory) and its
    /// config; `None` for a pixel-space recipe. `path` is the recipe, for errors.
    pub fn vae_config(&self, path: &Path) -> Result<Option<(PathBuf, AutoencoderKLConfig)>> {
        let Some(given) = &self.model.vae else {
            return Ok(None);
        };
        let dir = if given.join("config.json").exists() {
            given.clone()
        } else if given.join("vae").join("config.json").exists() {
            given.join("vae")
        } else {
            let why = if given.exists() {
                "has neither config.json nor vae/config.json (expected a diffusers AutoencoderKL directory or a \
                 text-to-video pipeline directory)"
            } else {
                "does not exist"
            };
            return Err(Error::config(
                Location::file(path).field("model.vae"),
                format!("{} {why}", given.display()),
            ));
        };
        let config = AutoencoderKLConfig::from_file(&dir.join("config.json"))?;
        Ok(Some((dir, config)))
    }

    /// The diffusers `config.json` of the UNet this recipe trains: RGB in and out, or the latents of `vae` (then
    /// `sample_size` is the latent size, as diffusers' text-to-video UNets record it).
    pub fn unet_config_json(&self, vae: Option<&AutoencoderKLConfig>) -> serde_json::Value {
        let m = &self.model;
        let (sample_channels, s) = vae.map_or((3, 1), |v| (v.latent_channels, v.downscale()));
        let levels = m.block_out_channels.len();
        let attention = m
            .attention_levels
            .clone()
            .unwrap_or_else(|| (0..levels).map(|i| levels == 1 || i + 1 < levels).collect());
        let down: Vec<&str> = attention
            .iter()
            .map(|&a| {
                if a {
                    "CrossAttnDownBlock3D"
                } else {
                    "DownBlock3D"
                }
            })
            .collect();
        let up: Vec<&str> = attention
            .iter()
            .rev()
            .map(|&a| if a { "CrossAttnUpBlock3D" } else { "UpBlock3D" })
            .collect();
        let in_channels =
            sample_channels + m.conditioning.iter().map(|c| c.channels()).sum::<usize>();
        let mut v = serde_json::json!({
            "_class_name": "UNet3DConditionModel",
            "_diffusers_version": "0.42.1",
            "act_fn": "silu",
            "attention_head_dim": m.attention_head_dim,
            "block_out_channels": m.block_out_channels,
            "cross_attention_dim": m.cross_attention_dim,
            "down_block_types": down,
            "downsample_padding": 1,
            "in_channels": in_channels,
            "layers_per_block": m.layers_per_block,
            "mid_block_scale_factor": 1,
            "norm_eps": 1e-5,
            "norm_num_groups": m.norm_num_groups,
            "num_attention_heads": null,
            "out_channels": sample_channels,
            "sample_size": m.height.max(m.width) / s,
            "time_cond_proj_dim": null,
            "up_block_types": up,
        });
        if m.prediction_type != Parameterization::Epsilon {
            v["prediction_type"] = serde_json::to_value(m.prediction_type).unwrap_or_default();
        }
        v
    }

    /// The diffusers `scheduler_config.json` saved with the model (DDIM with this recipe's noise schedule).
    pub fn scheduler_config_json(&self) -> serde_json::Value {
        serde_json::json!({
            "_class_name": "DDIMScheduler",
            "_diffusers_version": "0.42.1",
            "num_train_timesteps": self.scheduler.num_train_timesteps,
            "beta_start": 0.0001,
            "beta_end": 0.02,
            "beta_schedule": self.scheduler.beta_schedule,
            "prediction_type": match self.model.prediction_type {
                Parameterization::VPrediction => "v_prediction",
                Parameterization::Sample => "sample",
                Parameterization::Epsilon => "epsilon",
            },
            // Pixel-space models: clamp the x0 estimate to the data range, as diffusers' DDIM/DDPM default does.
            // Scaled latents have no such range (diffusers' text-to-video schedulers set it false).
            "clip_sample": self.model.vae.is_none(),
            "set_alpha_to_one": false,
            "steps_offset": 1,
            "timestep_spacing": "leading",
        })
    }
}
