//! The training loop: noise prediction (or v) on random clips, AdamW with warmup and cosine decay, global-norm
//! clipping, EMA, checkpoints that resume bit-exactly.
//!
//! Objective (Ho et al. 2020, eq. 14; Salimans & Ho 2022 for v):
//! ```text
//! t ~ U{0, T−1},  ε ~ N(0, I),  x_t = sqrt(ᾱ_t) x_0 + sqrt(1 − ᾱ_t) ε
//! L = ‖ f_θ([x_t, edges, first frame], t, text) − target ‖²,  target = ε  or  v = sqrt(ᾱ_t) ε − sqrt(1 − ᾱ_t) x_0
//! ```
//! with classifier-free guidance dropout: the text is replaced by the unconditional embedding with probability
//! `guidance.drop_text` (and the conditioning channels zeroed with `guidance.drop_conditions`).
//!
//! A latent recipe (`model.vae`) runs the same objective on x_0 = the frozen VAE's scaled latents of the clip (the
//! mode of its distribution, no gradient), with the conditioning channels at latent size (`data`); the saved model
//! carries a copy of the VAE in `vae/`, which is how `ModelDir::load` knows it is a latent model.
//!
//! Every random draw of step `s` comes from its own stream, `derive_seed(seed, s, "train-step", 0)`, so the run
//! needs no RNG state in its checkpoints: the parameters, the AdamW moments, the EMA and `s` are the whole state,
//! and a resumed run continues exactly as if it had never stopped.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};

use super::config::{TimestepDraw, TokenKind, TrainConfig};
use super::data::ClipSet;
use super::init::seeded_var_builder;
use super::optim::{AdamW, Ema, Params};
use super::report::{self, LossRow};
pub use super::step::StepStats;
use super::step::{new_optimizer, step_on_batch, Batch, Draws};
use crate::error::{Error, IoResultExt, Location, Result};
use crate::model_dir::{ModelDir, ModelMeta};
use crate::models::text::corpus_words;
use crate::models::text::TextEncoder;
use crate::models::text::{ByteEncoderConfig, ByteTextEncoder, BYTE_MODEL_TYPE as MODEL_TYPE};
use crate::models::unet_3d::{weight_files, UNet3DConditionModel, UNet3DConfig};
use crate::models::vae::AutoencoderKL;
use crate::progress::Observer;
use crate::rng::{derive_seed, NoiseRng};
use crate::sampling::{sample, ComposeSettings, Conditioned};
use crate::schedulers::{NoiseSchedule, SchedulerConfig};
use crate::vision::tensor::tensor_to_frames;

const UNET: &str = "unet.";
const TEXT: &str = "text_encoder.";
const STATE_JSON: &str = "trainer_state.json";
const STATE_TENSORS: &str = "trainer_state.safetensors";

/// `trainer_state.json`: the run's position and the recipe it belongs to.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct TrainerState {
    step: usize,
    adam_t: u64,
    vadapt_version: String,
    /// The recipe without `steps`/`output`/`log`, which a resumed run may change.
    recipe: serde_json::Value,
}

pub struct Trainer {
    pub config: TrainConfig,
    device: Device,
    pub data: ClipSet,
    unet_config: serde_json::Value,
    unet: UNet3DConditionModel,
    text: Option<ByteTextEncoder>,
    /// The frozen VAE of a latent recipe and the directory it was loaded from (copied into saved models).
    vae: Option<(PathBuf, AutoencoderKL)>,
    /// Every variable (trained or frozen) by its prefixed name.
    vars: BTreeMap<String, Var>,
    params: Params,
    opt: AdamW,
    ema: Option<Ema>,
    schedule: NoiseSchedule,
    /// Embeddings of prompts under a frozen text encoder, computed once.
    text_cache: HashMap<String, Tensor>,
    /// Training timesteps, uniform or under `optim.timestep_bias_strategy`.
    timesteps: TimestepDraw,
    /// Optimizer steps done.
    pub step: usize,
}

impl Trainer {
    /// A fresh run (seeded initialisation, or `model.init_from`).
    pub fn new(config: TrainConfig, device: &Device) -> Result<Self> {
        let data = ClipSet::load(&config)?;
        let vae_config = config.vae_config(Path::new("the recipe"))?;
        let sample_channels = vae_config.as_ref().map_or(3, |(_, c)| c.latent_channels);
        let want_in = sample_channels
            + config
                .model
                .conditioning
                .iter()
                .map(|c| c.channels())
                .sum::<usize>();
        let unet_config = match &config.model.init_from {
            Some(dir) => {
                let p = unet_dir(dir).join("config.json");
                let text = std::fs::read_to_string(&p).at(&p)?;
                let mut c: serde_json::Value = serde_json::from_str(&text)
                    .map_err(|e| Error::config(Location::file(&p), e.to_string()))?;
                // Conditioning listed after the init model's (a `reference` channel added to an edge_to_sim, a
                // `first_frame` to a super-resolution stage): the UNet takes the extra channels, their conv_in
                // weights start at zero (load_model_weights), so step 0 is the stored model.
                let conditioning = &config.model.conditioning;
                let stored = ModelMeta::read(dir)?.and_then(|m| m.conditioning);
                if stored
                    .is_some_and(|s| s.len() < conditioning.len() && conditioning.starts_with(&s))
                {
                    c["in_channels"] = want_in.into();
                }
                c
            }
            None => config.unet_config_json(vae_config.as_ref().map(|(_, c)| c)),
        };
        let parsed: UNet3DConfig = serde_json::from_value(unet_config.clone())
            .map_err(|e| Error::config(Location::none().field("model"), e.to_string()))?;
        if parsed.out_channels != sample_channels {
            return Err(Error::config(
                Location::none().field("model.init_from"),
                format!(
                    "the UNet predicts {} channels; this recipe denoises {sample_channels} ({})",
                    parsed.out_channels,
                    if vae_config.is_some() {
                        "the latents of model.vae"
                    } else {
                        "RGB"
                    }
                ),
            ));
        }
        if parsed.in_channels != want_in {
            return Err(Error::config(
                Location::none().field("model.conditioning"),
                format!(
                    "{:?} needs {want_in} input channels; the UNet has {}",
                    config.model.conditioning, parsed.in_channels
                ),
            ));
        }
        // Loaded outside the VarMap: the VAE is no parameter and no checkpoint state.
        let vae = match vae_config {
            Some((dir, _)) => Some((dir.clone(), AutoencoderKL::load(&dir, device)?)),
            None => None,
        };
        let (vb, varmap) = seeded_var_builder(config.seed, device);
        let unet = UNet3DConditionModel::new(vb.pp("unet"), parsed)?;
        let text = match &config.text_encoder {
            Some(t) => Some(ByteTextEncoder::new(
                vb.pp("text_encoder"),
                &byte_config(&config, t, &data),
            )?),
            None => None,
        };
        let vars: BTreeMap<String, Var> = varmap
            .data()
            .lock()
            .map_err(|_| Error::Cancelled("VarMap lock poisoned".into()))?
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(dir) = &config.model.init_from {
            load_model_weights(&vars, dir)?;
        }
        let train_text = config.text_encoder.as_ref().is_some_and(|t| t.train);
        let params: Params = vars
            .iter()
            .filter(|(k, _)| k.starts_with(UNET) || (train_text && k.starts_with(TEXT)))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let (opt, ema) = new_optimizer(&params, &config)?;
        let timesteps = TimestepDraw::new(&config.optim, config.scheduler.num_train_timesteps);
        let sched_cfg: SchedulerConfig = serde_json::from_value(config.scheduler_config_json())
            .map_err(|e| Error::config(Location::none().field("scheduler"), e.to_string()))?;
        Ok(Self {
            schedule: NoiseSchedule::from_config(&sched_cfg),
            config,
            device: device.clone(),
            data,
            unet_config,
            unet,
            text,
            vae,
            vars,
            params,
            opt,
            ema,
            text_cache: HashMap::new(),
            timesteps,
            step: 0,
        })
    }

    /// Continue from the newest checkpoint under `config.output`, or start fresh when there is none.
    pub fn resume_or_new(config: TrainConfig, device: &Device) -> Result<Self> {
        let latest = latest_checkpoint(&config.output)?;
        let mut trainer = Self::new(config, device)?;
        if let Some(dir) = latest {
            trainer.load_checkpoint(&dir)?;
        }
        Ok(trainer)
    }

    fn recipe(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.config).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            for k in ["steps", "output", "log"] {
                o.remove(k);
            }
        }
        v
    }

    /// The embedding (1, L, D) of one prompt, or the unconditional one for `None`.
    fn embed_one(&mut self, prompt: Option<&str>) -> Result<Tensor> {
        let key = prompt
            .map(|p| format!("+{p}"))
            .unwrap_or_else(|| "-".into());
        if let Some(t) = self.text_cache.get(&key) {
            return Ok(t.clone());
        }
        let t = match (&self.text, prompt) {
            (Some(enc), Some(p)) => enc.encode(&[p])?.detach(),
            (Some(enc), None) => enc.unconditional(1)?,
            (None, _) => Tensor::zeros(
                (1, 1, self.unet.config().cross_attention_dim),
                DType::F32,
                &self.device,
            )?,
        };
        self.text_cache.insert(key, t.clone());
        Ok(t)
    }

    /// Text embeddings for a batch; `keep[i] = false` drops clip i's text to the unconditional embedding.
    fn embed_batch(&mut self, prompts: &[String], keep: &[bool]) -> Result<Tensor> {
        let trained = self.config.text_encoder.as_ref().is_some_and(|t| t.train);
        match (&self.text, trained) {
            (Some(enc), true) => {
                // In the graph: the encoder learns. Dropped rows become the unconditional embedding (zeros unless
                // the encoder stores one).
                let refs: Vec<&str> = prompts.iter().map(|s| s.as_str()).collect();
                let emb = enc.encode(&refs)?;
                let mask: Vec<f32> = keep.iter().map(|&k| if k { 1.0 } else { 0.0 }).collect();
                let mask = Tensor::from_vec(mask, (keep.len(), 1, 1), &self.device)?;
                let uncond = enc.unconditional(keep.len())?;
                Ok((emb.broadcast_mul(&mask)? + uncond.broadcast_mul(&(1.0 - &mask)?)?)?)
            }
            _ => {
                let rows = prompts
                    .iter()
                    .zip(keep)
                    .map(|(p, &k)| self.embed_one(k.then_some(p.as_str())))
                    .collect::<Result<Vec<_>>>()?;
                Ok(Tensor::cat(&rows, 0)?)
            }
        }
    }

    /// The batch of step `s`: its clips (the text embedded in the graph when the encoder trains), noised.
    fn batch_at(&mut self, s: usize) -> Result<Batch> {
        let c = &self.config;
        let stream = if c.fixed_batch { 0 } else { s as u64 };
        let mut rng = NoiseRng::new(derive_seed(c.seed, stream, "train-step", 0));
        let clips = self.data.random_clips(c.optim.batch_size, &mut rng);
        let mut batch = self.data.batch(&clips, false, &self.device)?;
        if c.data.prompt_clause_dropout > 0.0 {
            for p in &mut batch.prompts {
                *p = drop_clauses(p, c.data.prompt_clause_dropout, &mut rng);
            }
        }
        let x0 = match &self.vae {
            Some((_, vae)) => vae.encode(&batch.video)?.detach(),
            None => batch.video,
        };
        let draws = Draws::draw(&x0, c, &self.timesteps, &mut rng)?;
        let text = self.embed_batch(&batch.prompts, &draws.keep_text)?;
        draws.into_batch(
            x0,
            batch.channels.as_ref(),
            text,
            &self.schedule,
            self.config.model.prediction_type,
        )
    }

    /// One optimizer step.
    pub fn train_step(&mut self) -> Result<StepStats> {
        let s = self.step;
        let t0 = Instant::now();
        let batch = self.batch_at(s)?;
        let data_s = t0.elapsed().as_secs_f64();
        let mut stats = step_on_batch(
            &self.unet,
            &batch,
            s,
            &self.config,
            &self.params,
            &mut self.opt,
            self.ema.as_mut(),
        )?;
        stats.seconds[0] += data_s;
        self.step += 1;
        let seconds = stats.seconds;
        tracing::debug!(
            step = s,
            forward = seconds[0],
            backward = seconds[1],
            update = seconds[2],
            "train step"
        );
        Ok(stats)
    }

    /// The weights a saved model gets: the EMA where there is one, the raw weights otherwise; frozen variables as
    /// they are. Prefixed names.
    fn model_weights(&self) -> BTreeMap<String, Tensor> {
        self.vars
            .iter()
            .map(|(k, v)| {
                let t = self
                    .ema
                    .as_ref()
                    .and_then(|e| e.weights.get(k).cloned())
                    .unwrap_or_else(|| v.as_tensor().detach());
                (k.clone(), t)
            })
            .collect()
    }

    /// Write a vadapt model directory (diffusers layout) with the EMA weights to `dir`, atomically: it is built
    /// under a temporary name and renamed into place.
    pub fn save_model(&self, dir: &Path) -> Result<()> {
        let tmp = tmp_sibling(dir);
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).at(&tmp)?;
        }
        self.write_model_into(&tmp)?;
        crate::io::fs::replace_dir(&tmp, dir)
    }

    fn write_model_into(&self, dir: &Path) -> Result<()> {
        let weights = self.model_weights();
        let strip = |prefix: &str| -> HashMap<String, Tensor> {
            weights
                .iter()
                .filter_map(|(k, t)| k.strip_prefix(prefix).map(|n| (n.to_string(), t.clone())))
                .collect()
        };
        let unet_dir = dir.join("unet");
        std::fs::create_dir_all(&unet_dir).at(&unet_dir)?;
        write_json(&unet_dir.join("config.json"), &self.unet_config)?;
        save_tensors(
            &strip(UNET),
            &unet_dir.join("diffusion_pytorch_model.safetensors"),
        )?;
        // The encoder's own config: with `tokens = "words"` it holds the vocabulary built from the data at start.
        if let Some(enc) = &self.text {
            let tdir = dir.join("text_encoder");
            std::fs::create_dir_all(&tdir).at(&tdir)?;
            write_json(
                &tdir.join("config.json"),
                &serde_json::to_value(enc.config()).unwrap_or_default(),
            )?;
            save_tensors(&strip(TEXT), &tdir.join("model.safetensors"))?;
        }
        if let Some((src, _)) = &self.vae {
            copy_vae(src, &dir.join("vae"))?;
        }
        let sdir = dir.join("scheduler");
        std::fs::create_dir_all(&sdir).at(&sdir)?;
        write_json(
            &sdir.join("scheduler_config.json"),
            &self.config.scheduler_config_json(),
        )?;
        let m = &self.config.model;
        let mut meta = serde_json::json!({
            "conditioning": m.conditioning,
            "frames": m.frames,
            "height": m.height,
            "width": m.width,
            "fps": m.fps,
        });
        if let Some(g) = self.config.reference_tiles().filter(|&g| g > 1) {
            meta["reference_tiles"] = g.into();
        }
        write_json(&dir.join("vadapt.json"), &meta)?;
        Ok(())
    }

    /// `output/checkpoints/step-NNNNNNNN/`: the model directory plus the trainer state, written atomically; older
    /// checkpoints beyond `log.keep_checkpoints` are removed.
    pub fn save_checkpoint(&self) -> Result<PathBuf> {
        let root = self.config.output.join("checkpoints");
        let dir = root.join(format!("step-{:08}", self.step));
        let tmp = tmp_sibling(&dir);
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).at(&tmp)?;
        }
        self.write_model_into(&tmp)?;
        let mut state: HashMap<String, Tensor> = HashMap::new();
        for (k, v) in &self.vars {
            state.insert(format!("param/{k}"), v.as_tensor().detach());
        }
        for (k, t) in &self.opt.m {
            state.insert(format!("adam_m/{k}"), t.clone());
        }
        for (k, t) in &self.opt.v {
            state.insert(format!("adam_v/{k}"), t.clone());
        }
        if let Some(ema) = &self.ema {
            for (k, t) in &ema.weights {
                state.insert(format!("ema/{k}"), t.clone());
            }
        }
        save_tensors(&state, &tmp.join(STATE_TENSORS))?;
        let meta = TrainerState {
            step: self.step,
            adam_t: self.opt.t,
            vadapt_version: env!("CARGO_PKG_VERSION").into(),
            recipe: self.recipe(),
        };
        write_json(
            &tmp.join(STATE_JSON),
            &serde_json::to_value(&meta).unwrap_or_default(),
        )?;
        crate::io::fs::replace_dir(&tmp, &dir)?;
        let keep = self.config.log.keep_checkpoints;
        if keep > 0 {
            let all = list_checkpoints(&self.config.output)?;
            for (_, old) in all.iter().take(all.len().saturating_sub(keep)) {
                std::fs::remove_dir_all(old).at(old)?;
            }
        }
        Ok(dir)
    }

    /// Restore parameters, optimizer moments, EMA and step from a checkpoint directory.
    pub fn load_checkpoint(&mut self, dir: &Path) -> Result<()> {
        let json_path = dir.join(STATE_JSON);
        let text = std::fs::read_to_string(&json_path).at(&json_path)?;
        let meta: TrainerState = serde_json::from_str(&text)
            .map_err(|e| Error::config(Location::file(&json_path), e.to_string()))?;
        let recipe = self.recipe();
        if meta.recipe != recipe {
            let key = recipe
                .as_object()
                .and_then(|o| {
                    o.iter()
                        .find(|(k, v)| meta.recipe.get(k.as_str()) != Some(v))
                        .map(|(k, _)| k.clone())
                })
                .unwrap_or_else(|| "recipe".into());
            return Err(Error::config(
                Location::file(&json_path).field(key),
                "the checkpoint was trained with a different recipe; only steps, output and [log] may change on resume",
            ));
        }
        let path = dir.join(STATE_TENSORS);
        let tensors = candle_core::safetensors::load(&path, &self.device)
            .map_err(|e| Error::model(Location::file(&path), e.to_string()))?;
        let get = |name: String| {
            tensors.get(&name).cloned().ok_or_else(|| {
                Error::model(
                    Location::file(&path).field(name.clone()),
                    "missing from the checkpoint",
                )
            })
        };
        for (k, v) in &self.vars {
            v.set(&get(format!("param/{k}"))?)?;
        }
        for k in self.params.keys() {
            self.opt.m.insert(k.clone(), get(format!("adam_m/{k}"))?);
            self.opt.v.insert(k.clone(), get(format!("adam_v/{k}"))?);
            if let Some(ema) = &mut self.ema {
                ema.weights.insert(k.clone(), get(format!("ema/{k}"))?);
            }
        }
        self.opt.t = meta.adam_t;
        self.step = meta.step;
        self.text_cache.clear();
        Ok(())
    }

    /// Every variable's current value (prefixed names), e.g. to compare runs.
    pub fn weights(&self) -> BTreeMap<String, Tensor> {
        self.vars
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
            .collect()
    }

    /// A contact sheet of the saved model (`model_dir`) on held-out clips: rows per clip are the condition video,
    /// its edges, the low_res input (super-resolution recipes only), the ground truth and the sample (decoded by
    /// the model's VAE for a latent recipe).
    pub fn sample_sheet(&self, model_dir: &Path) -> Result<image::RgbImage> {
        let model = ModelDir::load(model_dir, &self.device)?;
        let (clips, holdout) = self.data.sample_clips(self.config.log.sample_clips);
        let m = &self.config.model;
        let mut rows = Vec::new();
        for (i, clip) in clips.iter().enumerate() {
            let batch = self
                .data
                .batch(std::slice::from_ref(clip), holdout, &self.device)?;
            let (text, uncond) = model.embed(
                if model.text_encoder.is_some() {
                    &batch.prompts[0]
                } else {
                    ""
                },
                1,
                &self.device,
            )?;
            let input = Conditioned {
                model: &model.unet,
                channels: batch.channels.clone(),
                text,
                uncond,
                schedule: None,
            };
            let mut scheduler = model.scheduler.build()?;
            scheduler.set_timesteps(self.config.log.sample_steps)?;
            let mut rng = NoiseRng::new(derive_seed(self.config.seed, i as u64, "sample-sheet", 0));
            let s = model.downscale();
            let x_t = rng.randn(
                (
                    1,
                    model.sample_channels(),
                    m.frames,
                    m.height / s,
                    m.width / s,
                ),
                &self.device,
            )?;
            let settings = ComposeSettings {
                guidance: self.config.log.sample_guidance as f32,
                ..ComposeSettings::default()
            };
            let traj = sample(
                &input,
                &[],
                scheduler.as_mut(),
                x_t,
                &settings,
                &mut rng,
                false,
            )?;
            let cond = self.data.condition_frames(*clip, holdout);
            let (h, w) = (m.height as u32, m.width as u32);
            let edges = self
                .data
                .condition_edges(*clip, holdout)
                .into_iter()
                .map(|e| report::edge_image(e, h, w))
                .collect();
            let video = model.decode_video(&traj.x0, &|| Ok(()))?;
            rows.push(cond);
            rows.push(edges);
            if let Some(low_res) = self.data.low_res_frames(*clip, holdout) {
                rows.push(low_res);
            }
            rows.push(self.data.target_frames(*clip, holdout));
            rows.push(tensor_to_frames(&video.squeeze(0)?)?);
        }
        Ok(report::contact_sheet(&rows, 3))
    }

    /// Train to `config.steps`, with progress (steps done, loss and learning rate) told to `progress`, the loss
    /// log, checkpoints and sample sheets. `on_step` sees every step's stats (for tests and callers that stop early:
    /// return `false` to stop after that step, checkpointing).
    pub fn run(
        &mut self,
        progress: &dyn Observer,
        mut on_step: impl FnMut(usize, &StepStats) -> bool,
    ) -> Result<()> {
        let out = self.config.output.clone();
        std::fs::create_dir_all(&out).at(&out)?;
        let csv = out.join("loss.csv");
        let mut rows = report::read_loss_csv(&csv, self.step)?;
        report::write_loss_csv(&csv, &rows)?;
        let total = self.config.steps;
        progress.start(total as u64);
        // A resumed run starts at its checkpoint's step.
        progress.advance(self.step as u64);
        let started = Instant::now();
        let offset = rows.last().map(|r| r.seconds).unwrap_or(0.0);
        let mut stop = false;
        while self.step < total && !stop {
            let stats = self.train_step()?;
            let step = self.step;
            let row = LossRow {
                step,
                loss: stats.loss,
                lr: stats.lr,
                grad_norm: stats.grad_norm,
                seconds: offset + started.elapsed().as_secs_f64(),
            };
            if step % self.config.log.every == 0 || step == total {
                report::append_loss_row(&csv, &row)?;
                rows.push(row);
            }
            progress.message(&format!("loss {:.4} lr {:.1e}", stats.loss, stats.lr));
            // `train_step` advanced `self.step` by one.
            progress.advance(1);
            stop = !on_step(step, &stats);
            let log = &self.config.log;
            let checkpoint = step % log.checkpoint_every == 0 || step == total || stop;
            let sheet = (log.sample_every > 0 && step % log.sample_every == 0) || step == total;
            if checkpoint {
                self.save_checkpoint()?;
                report::save_png(&report::loss_curve(&rows, 640, 320), &out.join("loss.png"))?;
            }
            if sheet || checkpoint {
                self.save_model(&out.join("model"))?;
            }
            if sheet {
                let img = self.sample_sheet(&out.join("model"))?;
                report::save_png(
                    &img,
                    &out.join("samples").join(format!("step-{step:08}.png")),
                )?;
            }
        }
        progress.finish();
        Ok(())
    }
}

/// `prompt` with each comma-separated clause dropped with probability `p`, at least one kept, in the prompt's order.
fn drop_clauses(prompt: &str, p: f64, rng: &mut NoiseRng) -> String {
    let clauses: Vec<&str> = prompt.split(", ").collect();
    let keep: Vec<bool> = clauses.iter().map(|_| rng.uniform() as f64 >= p).collect();
    let forced = (!keep.iter().any(|&k| k)).then(|| rng.below(clauses.len()));
    clauses
        .iter()
        .enumerate()
        .filter(|&(i, _)| keep[i] || forced == Some(i))
        .map(|(_, c)| *c)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The text encoder a recipe describes; with `tokens = "words"` its vocabulary comes from the training prompts.
fn byte_config(
    config: &TrainConfig,
    t: &super::config::TextEncoderConfig,
    data: &ClipSet,
) -> ByteEncoderConfig {
    let d = config.model.cross_attention_dim;
    let words = match t.tokens {
        TokenKind::Bytes => Vec::new(),
        TokenKind::Words => corpus_words(
            data.train.iter().map(|e| e.prompt.as_str()),
            t.min_word_count.max(1),
        ),
    };
    ByteEncoderConfig {
        model_type: MODEL_TYPE.into(),
        hidden_size: d,
        num_hidden_layers: t.num_hidden_layers,
        num_attention_heads: t.num_attention_heads,
        intermediate_size: t.intermediate_size.unwrap_or(4 * d),
        max_position_embeddings: t.max_tokens,
        layer_norm_eps: 1e-5,
        words,
        padded_rows: t.padded_rows,
    }
}

fn unet_dir(dir: &Path) -> PathBuf {
    if dir.join("unet").join("config.json").exists() {
        dir.join("unet")
    } else {
        dir.to_path_buf()
    }
}

/// Copy a model directory's weights into the fresh variables (fine-tuning).
fn load_model_weights(vars: &BTreeMap<String, Var>, dir: &Path) -> Result<()> {
    let mut sources: Vec<(String, PathBuf)> = weight_files(&unet_dir(dir))?
        .into_iter()
        .map(|f| (UNET.to_string(), f))
        .collect();
    let text = dir.join("text_encoder").join("model.safetensors");
    if text.exists() {
        sources.push((TEXT.to_string(), text));
    }
    for (prefix, file) in sources {
        let tensors = candle_core::safetensors::load(&file, &Device::Cpu)
            .map_err(|e| Error::model(Location::file(&file), e.to_string()))?;
        for (name, t) in tensors {
            if let Some(var) = vars.get(&format!("{prefix}{name}")) {
                let t = extend_vocabulary(&prefix, &name, var, t)?;
                let t = widen_conv_in(&prefix, &name, var, t)?;
                if var.shape() != t.shape() {
                    return Err(Error::model(
                        Location::file(&file).field(name),
                        format!(
                            "shape {:?}, the recipe's model has {:?}",
                            t.dims(),
                            var.dims()
                        ),
                    ));
                }
                var.set(&t.to_dtype(DType::F32)?.to_device(var.device())?)?;
            }
        }
    }
    Ok(())
}

/// The input convolution of a model fine-tuned with conditioning channels added after its own (a `reference`
/// channel): the stored weights fill the first input channels and the new ones start at zero, so the model begins
/// exactly where the stored one was (ControlNet's zero-initialised inputs). Any other tensor comes back unchanged.
fn widen_conv_in(prefix: &str, name: &str, var: &Var, t: Tensor) -> Result<Tensor> {
    if prefix != UNET || name != "conv_in.weight" || t.rank() != 4 || var.rank() != 4 {
        return Ok(t);
    }
    let (have, want) = (t.dim(1)?, var.dim(1)?);
    if have >= want || t.dim(0)? != var.dim(0)? {
        return Ok(t);
    }
    let (o, _, kh, kw) = t.dims4()?;
    let zeros = Tensor::zeros((o, want - have, kh, kw), t.dtype(), t.device())?;
    Ok(Tensor::cat(&[&t, &zeros], 1)?)
}

/// A byte-token embedding loaded into an encoder that adds word tokens (`tokens = "words"` fine-tuning a bytes
/// model): the stored rows keep their ids, so they fill the first rows and the new words keep their fresh
/// initialisation — transformers' `resize_token_embeddings`. Any other tensor comes back unchanged.
fn extend_vocabulary(prefix: &str, name: &str, var: &Var, t: Tensor) -> Result<Tensor> {
    let (Ok((rows, d)), Ok((have, td))) = (var.dims2(), t.dims2()) else {
        return Ok(t);
    };
    if prefix != TEXT || name != "embeddings.token_embedding.weight" || d != td || have >= rows {
        return Ok(t);
    }
    let fresh = var
        .as_tensor()
        .narrow(0, have, rows - have)?
        .to_device(t.device())?;
    Ok(Tensor::cat(&[&t.to_dtype(DType::F32)?, &fresh], 0)?)
}

/// Copy a VAE directory's config and weights (what `AutoencoderKL::load` reads) to `dst`.
fn copy_vae(src: &Path, dst: &Path) -> Result<()> {
    std::fs::create_dir_all(dst).at(dst)?;
    let mut files = weight_files(src)?;
    files.push(src.join("config.json"));
    let index = src.join("diffusion_pytorch_model.safetensors.index.json");
    if index.exists() {
        files.push(index);
    }
    for f in files {
        let name = f.file_name().unwrap_or_default();
        std::fs::copy(&f, dst.join(name)).at(&f)?;
    }
    Ok(())
}

/// Checkpoints under `output/checkpoints`, oldest first.
pub fn list_checkpoints(output: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let root = output.join("checkpoints");
    if !root.exists() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&root).at(&root)? {
        let path = entry.at(&root)?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(step) = name
            .strip_prefix("step-")
            .and_then(|s| s.parse::<usize>().ok())
        {
            if path.join(STATE_JSON).exists() {
                out.push((step, path));
            }
        }
    }
    out.sort();
    Ok(out)
}

pub fn latest_checkpoint(output: &Path) -> Result<Option<PathBuf>> {
    Ok(list_checkpoints(output)?.pop().map(|(_, p)| p))
}

fn tmp_sibling(dir: &Path) -> PathBuf {
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    dir.with_file_name(format!(".{name}.tmp"))
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).unwrap_or_default() + "\n";
    std::fs::write(path, text).at(path)
}

fn save_tensors(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    candle_core::safetensors::save(tensors, path)
        .map_err(|e| Error::model(Location::file(path), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Clause dropout keeps clauses in order, drops about `p` of them, never all, and is a function of the draws.
    #[test]
    fn drop_clauses_keeps_order_and_at_least_one() {
        let name =
            "wooden pink board, silver gradient background, bright light from left, no shadows";
        let mut rng = NoiseRng::new(3);
        let (mut kept, mut total) = (0, 0);
        for _ in 0..400 {
            let out = drop_clauses(name, 0.5, &mut rng);
            assert!(!out.is_empty());
            let parts: Vec<&str> = out.split(", ").collect();
            let positions: Vec<usize> = parts
                .iter()
                .map(|c| {
                    name.split(", ")
                        .position(|n| n == *c)
                        .expect("a clause of the name")
                })
                .collect();
            assert!(positions.windows(2).all(|w| w[0] < w[1]), "{out}");
            kept += parts.len();
            total += 4;
        }
        let share = kept as f64 / total as f64;
        assert!((0.45..0.62).contains(&share), "kept {share}");
        assert_eq!(drop_clauses("single", 0.99, &mut rng), "single");
        let (mut a, mut b) = (NoiseRng::new(9), NoiseRng::new(9));
        assert_eq!(
            drop_clauses(name, 0.5, &mut a),
            drop_clauses(name, 0.5, &mut b)
        );
    }

    /// The saved model computes what the trained one computes: the training path (variables: im2col convolution,
    /// composed LayerNorm, fused softmax with backward) and the inference path (loaded safetensors: candle's kernels)
    /// must agree, or samples of a well-trained model are noise.
    #[test]
    fn saved_model_predicts_what_the_trainer_predicts() {
        let dir = tempfile::tempdir().unwrap();
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/sample/lerobot");
        let text = format!(
            r#"
output = "{}"
steps = 3
[data]
dataset = "{}"
target_key = "observation.images.sim"
condition_key = "observation.images.real"
[model]
frames = 4
height = 8
width = 16
block_out_channels = [8, 16]
attention_levels = [true, true]
cross_attention_dim = 16
[text_encoder]
max_tokens = 16
[optim]
batch_size = 2
ema_decay = 0.0
"#,
            dir.path().display(),
            data.display()
        );
        let config = TrainConfig::from_toml(&text, Path::new("test.toml")).unwrap();
        let mut t = Trainer::new(config, &Device::Cpu).unwrap();
        for _ in 0..3 {
            t.train_step().unwrap();
        }
        let out = dir.path().join("model");
        t.save_model(&out).unwrap();
        let loaded = ModelDir::load(&out, &Device::Cpu).unwrap();
        let mut rng = NoiseRng::new(5);
        let clips = t.data.random_clips(2, &mut rng);
        let batch = t.data.batch(&clips, false, &Device::Cpu).unwrap();
        let x = Tensor::cat(&[&batch.video, batch.channels.as_ref().unwrap()], 1).unwrap();
        let ts = Tensor::new(&[500f32, 20.0], &Device::Cpu).unwrap();
        let ehs = t.embed_batch(&batch.prompts, &[true, true]).unwrap();
        let trained = t.unet.forward(&x, &ts, &ehs).unwrap();
        let (text, _) = loaded.embed(&batch.prompts[0], 1, &Device::Cpu).unwrap();
        let (text1, _) = loaded.embed(&batch.prompts[1], 1, &Device::Cpu).unwrap();
        let ehs2 = Tensor::cat(&[&text, &text1], 0).unwrap();
        let d_text = crate::models::max_abs_diff(&ehs, &ehs2);
        assert!(d_text < 1e-5, "text embeddings differ: {d_text}");
        let inferred = loaded.unet.forward(&x, &ts, &ehs2).unwrap();
        let d = crate::models::max_abs_diff(&trained, &inferred);
        assert!(d < 1e-4, "trainer and saved model disagree by {d}");
    }
}
