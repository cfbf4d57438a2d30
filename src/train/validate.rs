//! Validation of a training recipe: values that parse but cannot work, each reported with its key before any work
//! starts (`TrainConfig::from_file` runs it).

use std::path::Path;

use super::config::{CameraKeys, TimestepBias, TrainConfig};
use crate::error::{Error, Location, Result};
use crate::model_dir::Conditioning;

impl TrainConfig {
    /// Values that parse but cannot work, each reported with its key (the first one found, in this order: steps,
    /// data and noise, the model, the text encoder, scheduler and optimiser).
    pub fn validate(&self, path: &Path) -> Result<()> {
        self.validate_with(path, true)
    }

    /// [`Self::validate`], checking that the datasets exist only when `datasets` is set.
    pub(super) fn validate_with(&self, path: &Path, datasets: bool) -> Result<()> {
        self.validate_data_and_noise(path, datasets)?;
        self.validate_model(path)?;
        self.validate_text_scheduler_and_optim(path)
    }

    /// `steps`, the datasets, the noise offset and timestep bias, `data.frame_stride`.
    fn validate_data_and_noise(&self, path: &Path, datasets: bool) -> Result<()> {
        let bad = |key: &str, msg: String| Err(Error::config(Location::file(path).field(key), msg));
        if self.steps == 0 {
            return bad("steps", "must be at least 1".into());
        }
        if self.data.dataset.is_empty() {
            return bad("data.dataset", "name at least one dataset".into());
        }
        for d in self.data.dataset.iter().filter(|_| datasets) {
            if !d.exists() {
                return bad("data.dataset", format!("{} does not exist", d.display()));
            }
        }
        let o = &self.optim;
        if !(o.noise_offset >= 0.0 && o.noise_offset.is_finite()) {
            return bad(
                "optim.noise_offset",
                format!("{} must be a number >= 0", o.noise_offset),
            );
        }
        if o.timestep_bias_strategy != TimestepBias::None {
            if !(o.timestep_bias_multiplier > 0.0 && o.timestep_bias_multiplier.is_finite()) {
                return bad(
                    "optim.timestep_bias_multiplier",
                    format!("{} must be a positive number", o.timestep_bias_multiplier),
                );
            }
            if !(0.0..=1.0).contains(&o.timestep_bias_portion) {
                return bad(
                    "optim.timestep_bias_portion",
                    format!("{} must be within 0..=1", o.timestep_bias_portion),
                );
            }
            let n = self.scheduler.num_train_timesteps;
            if o.timestep_bias_strategy == TimestepBias::Range
                && (o.timestep_bias_begin >= o.timestep_bias_end || o.timestep_bias_end > n)
            {
                return bad(
                    "optim.timestep_bias_end",
                    format!(
                        "the range {}..{} must be non-empty and within 0..{n}",
                        o.timestep_bias_begin, o.timestep_bias_end
                    ),
                );
            }
        }
        if self.data.frame_stride == 0 {
            return bad("data.frame_stride", "must be at least 1".into());
        }
        let p = self.data.prompt_clause_dropout;
        if !(0.0..1.0).contains(&p) {
            return bad(
                "data.prompt_clause_dropout",
                format!("{p} must lie in [0, 1)"),
            );
        }
        match (self.data.reference_tiles, self.reference_tiles()) {
            (Some(_), None) => {
                return bad(
                    "data.reference_tiles",
                    "only for a model with a `reference` channel in model.conditioning".into(),
                )
            }
            (Some(g), _) if !(1..=16).contains(&g) => {
                return bad("data.reference_tiles", format!("{g} must lie in 1..=16"))
            }
            _ => {}
        }
        if self.data.reference.is_some() && self.reference_tiles().is_none() {
            return bad(
                "data.reference",
                "only for a model with a `reference` channel in model.conditioning".into(),
            );
        }
        let lists = [
            ("data.target_key", Some(&self.data.target_key)),
            ("data.condition_key", self.data.condition_key.as_ref()),
            ("data.low_res_key", self.data.low_res_key.as_ref()),
        ];
        for (field, keys) in lists {
            let Some(keys) = keys.map(CameraKeys::keys) else {
                continue;
            };
            if keys.is_empty() || keys.iter().any(|k| k.is_empty()) {
                return bad(
                    field,
                    "name one camera key or a non-empty list of them".into(),
                );
            }
            if let Some(k) = keys
                .iter()
                .enumerate()
                .find_map(|(i, k)| keys[..i].contains(k).then_some(k))
            {
                return bad(field, format!("{k:?} is listed twice"));
            }
        }
        let conditions = self
            .data
            .condition_key
            .as_ref()
            .map_or(0, |k| k.keys().len());
        if let Some(low_res) = &self.data.low_res_key {
            if !self.model.conditioning.contains(&Conditioning::LowRes) {
                return bad(
                    "data.low_res_key",
                    "is set, but model.conditioning does not list \"low_res\"".into(),
                );
            }
            let cameras = self.condition_cameras();
            if low_res.keys().len() != cameras.len() {
                return bad(
                    "data.low_res_key",
                    format!(
                        "{} key(s), but the recipe has {} condition camera(s) {cameras:?}: give one low_res camera \
                         for each, in that order",
                        low_res.keys().len(),
                        cameras.len()
                    ),
                );
            }
        }
        if self.data.target_key.keys().len() > 1 && conditions > 1 {
            return bad(
                "data.condition_key",
                "a list of target cameras conditions each on itself (no condition_key) or all on one camera (one \
                 condition_key), not on a list"
                    .into(),
            );
        }
        Ok(())
    }

    /// The model's shape: frames and size, `low_res`, the VAE's downscale, levels, attention, channels, `init_from`.
    fn validate_model(&self, path: &Path) -> Result<()> {
        let bad = |key: &str, msg: String| Err(Error::config(Location::file(path).field(key), msg));
        let m = &self.model;
        if m.frames == 0 || m.height == 0 || m.width == 0 {
            return bad("model", "frames, height and width must be positive".into());
        }
        let has_low_res = m.conditioning.contains(&Conditioning::LowRes);
        match (has_low_res, m.low_res) {
            (true, None) => {
                return bad(
                    "model.low_res",
                    "conditioning lists low_res: give the previous stage's resolution, e.g. low_res = [24, 40]"
                        .into(),
                )
            }
            (false, Some(_)) => {
                return bad(
                    "model.low_res",
                    "is set, but model.conditioning does not list \"low_res\"".into(),
                )
            }
            (true, Some([lh, lw])) if lh == 0 || lw == 0 || lh > m.height || lw > m.width => {
                return bad(
                    "model.low_res",
                    format!(
                        "[{lh}, {lw}] must be positive and at most the model's {}x{}",
                        m.height, m.width
                    ),
                )
            }
            _ => {}
        }
        // A latent model's UNet runs at 1/s of the pixel size.
        let s = match self.vae_config(path)? {
            Some((dir, vae)) => {
                let s = vae.downscale();
                if m.height % s != 0 || m.width % s != 0 {
                    return bad(
                        "model.height",
                        format!(
                            "{}x{} pixels: the VAE {} works at 1/{s} size, so height and width must be multiples of {s}",
                            m.height,
                            m.width,
                            dir.display()
                        ),
                    );
                }
                s
            }
            None => 1,
        };
        let levels = m.block_out_channels.len();
        if levels == 0 {
            return bad(
                "model.block_out_channels",
                "needs at least one level".into(),
            );
        }
        let factor = 1usize << (levels - 1);
        let (sh, sw) = (m.height / s, m.width / s);
        if sh % factor != 0 || sw % factor != 0 {
            let latent = if s > 1 {
                format!(" (latents of {}x{} pixels)", m.height, m.width)
            } else {
                String::new()
            };
            return bad(
                "model.height",
                format!(
                    "{sh}x{sw}{latent} must be divisible by {factor} ({levels} levels halve it {} times)",
                    levels - 1
                ),
            );
        }
        if let Some(a) = &m.attention_levels {
            if a.len() != levels {
                return bad(
                    "model.attention_levels",
                    format!("has {} entries for {levels} levels", a.len()),
                );
            }
        }
        for &c in &m.block_out_channels {
            if c % m.norm_num_groups != 0 || c % m.attention_head_dim != 0 {
                return bad(
                    "model.block_out_channels",
                    format!(
                        "{c} is not divisible by norm_num_groups {} and attention_head_dim {}",
                        m.norm_num_groups, m.attention_head_dim
                    ),
                );
            }
        }
        if let Some(init) = &m.init_from {
            if !init.exists() {
                return bad(
                    "model.init_from",
                    format!("{} does not exist", init.display()),
                );
            }
        }
        Ok(())
    }

    /// The text encoder, the scheduler's beta schedule, the optimiser and logging.
    fn validate_text_scheduler_and_optim(&self, path: &Path) -> Result<()> {
        let bad = |key: &str, msg: String| Err(Error::config(Location::file(path).field(key), msg));
        let m = &self.model;
        if let Some(t) = &self.text_encoder {
            if t.num_attention_heads == 0 || m.cross_attention_dim % t.num_attention_heads != 0 {
                return bad(
                    "text_encoder.num_attention_heads",
                    format!(
                        "must divide model.cross_attention_dim {}",
                        m.cross_attention_dim
                    ),
                );
            }
            if t.max_tokens < 3 {
                return bad(
                    "text_encoder.max_tokens",
                    "must be at least 3 (BOS, a byte, EOS)".into(),
                );
            }
        }
        if !["linear", "scaled_linear", "squaredcos_cap_v2"]
            .contains(&self.scheduler.beta_schedule.as_str())
        {
            return bad(
                "scheduler.beta_schedule",
                format!(
                    "{:?}: expected linear, scaled_linear or squaredcos_cap_v2",
                    self.scheduler.beta_schedule
                ),
            );
        }
        let o = &self.optim;
        if o.batch_size == 0 {
            return bad("optim.batch_size", "must be at least 1".into());
        }
        if !(o.lr > 0.0 && o.lr.is_finite()) {
            return bad("optim.lr", format!("{} must be positive", o.lr));
        }
        for (key, v) in [
            ("optim.beta1", o.beta1),
            ("optim.beta2", o.beta2),
            ("optim.ema_decay", o.ema_decay),
            ("optim.min_lr_ratio", o.min_lr_ratio),
            ("guidance.drop_text", self.guidance.drop_text),
            ("guidance.drop_conditions", self.guidance.drop_conditions),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return bad(key, format!("{v} is outside [0, 1]"));
            }
        }
        if o.weight_decay < 0.0 || o.grad_clip < 0.0 || o.eps <= 0.0 {
            return bad(
                "optim",
                "weight_decay and grad_clip must be >= 0, eps > 0".into(),
            );
        }
        if self.log.every == 0 || self.log.checkpoint_every == 0 {
            return bad(
                "log",
                "every and checkpoint_every must be at least 1".into(),
            );
        }
        Ok(())
    }
}
