//! One target of a pipeline with its models loaded: the checks a config cannot make alone (prompts against text
//! encoders, priors against the adapter, cascade stages against their conditioning and resolutions), and how the
//! target samples one episode (base model with its priors, then each super-resolution stage).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};
use image::RgbImage;

use super::config::{StageConfig, TargetConfig};
use super::prompt::PromptContext;
use super::variants::{Draw, Record};
use crate::error::{Error, Location, Result};
use crate::model_dir::{Conditioning, ModelDir};
use crate::sampling::ComposeSettings;
use crate::sampling::{ModelUse, TargetSampler};
use crate::vision::resize::resize_rgb;

/// Model directories loaded so far, by path: a model several targets use (the demo's edge model and prior) is
/// loaded once and shared.
pub(super) struct ModelCache {
    device: Device,
    dtype: DType,
    loaded: BTreeMap<PathBuf, Arc<ModelDir>>,
}

impl ModelCache {
    pub fn new(device: Device, dtype: DType) -> Self {
        Self {
            device,
            dtype,
            loaded: BTreeMap::new(),
        }
    }

    pub fn get(&mut self, dir: &Path) -> Result<Arc<ModelDir>> {
        if let Some(m) = self.loaded.get(dir) {
            return Ok(Arc::clone(m));
        }
        let m = Arc::new(ModelDir::load_in(dir, &self.device, self.dtype)?);
        self.loaded.insert(dir.to_path_buf(), Arc::clone(&m));
        Ok(m)
    }
}

/// Models of one target, loaded once (by [`plan`](super::plan::plan)) and shared by every sampler thread.
#[derive(Clone)]
pub(super) struct LoadedTarget {
    pub cfg: TargetConfig,
    pub small: Arc<ModelDir>,
    pub priors: Vec<(Arc<ModelDir>, f32, Option<String>)>,
    pub resolution: (usize, usize),
    pub overlap: usize,
    pub stages: Vec<LoadedStage>,
    /// The target's `reference` / `references` images, by the path the config gives.
    pub references: BTreeMap<PathBuf, Arc<RgbImage>>,
}

/// One super-resolution stage of a target.
#[derive(Clone)]
pub(super) struct LoadedStage {
    pub cfg: StageConfig,
    pub model: Arc<ModelDir>,
    pub resolution: (usize, usize),
    pub overlap: usize,
}

/// The sampling resolution (explicit, or the model's) and window overlap of a model, checked: the overlap is below
/// the model's window and a latent model's resolution divides by its VAE's downscale.
fn resolution_and_overlap(
    model: &ModelDir,
    resolution: Option<[usize; 2]>,
    overlap: Option<usize>,
    loc: &dyn Fn(&str) -> Location,
) -> Result<((usize, usize), usize)> {
    let (h, w) = resolution
        .map(|[h, w]| (h, w))
        .unwrap_or((model.meta.height, model.meta.width));
    let frames = model.meta.frames;
    let overlap = overlap.unwrap_or(frames / 2);
    if overlap >= frames {
        return Err(Error::config(
            loc("window_overlap"),
            format!("{overlap} must be below the model's {frames} frames"),
        ));
    }
    model.sample_size(h, w, loc("resolution"))?;
    Ok(((h, w), overlap))
}

/// A prompt for a model without a text encoder cannot be honoured: refuse before any work. Words of the
/// template the model's vocabulary lacks (a style it was never trained on) get a warning: the model reads them
/// only as bytes.
fn check_prompt(model: &ModelDir, prompt: Option<&str>, loc: Location) -> Result<()> {
    let Some(prompt) = prompt.filter(|p| !p.is_empty()) else {
        return Ok(());
    };
    let Some(enc) = &model.text_encoder else {
        return Err(Error::config(
            loc,
            format!(
                "{} has no text_encoder/, so it takes no prompt",
                model.path.display()
            ),
        ));
    };
    let unknown = enc.unknown_words(&super::prompt::fixed_words(prompt));
    if !unknown.is_empty() {
        tracing::warn!(
            "{loc}: {} has no token for {:?}; it was not trained on those words and reads them only as bytes",
            model.path.display(),
            unknown
        );
    }
    Ok(())
}

/// The reference images of a target (`reference`, or the `references` list), decoded once; refused where the
/// adapter has no first-frame channel to take them, or where both keys or an empty list are given.
fn load_references(
    cfg: &TargetConfig,
    small: &ModelDir,
    loc: &dyn Fn(&str) -> Location,
) -> Result<BTreeMap<PathBuf, Arc<RgbImage>>> {
    let (paths, key): (Vec<&PathBuf>, &str) = match (&cfg.reference, &cfg.references) {
        (Some(_), Some(_)) => {
            return Err(Error::config(
                loc("references"),
                "give `reference` or `references`, not both",
            ))
        }
        (Some(p), None) => (vec![p], "reference"),
        (None, Some(l)) if l.is_empty() => {
            return Err(Error::config(loc("references"), "an empty list"))
        }
        (None, Some(l)) => (l.iter().collect(), "references"),
        (None, None) => return Ok(BTreeMap::new()),
    };
    if !small.conditioning.contains(&Conditioning::FirstFrame)
        && !small.conditioning.contains(&Conditioning::Reference)
    {
        return Err(Error::config(
            loc(key),
            format!(
                "{} has no first-frame channel to take a reference image (its conditioning: {:?})",
                small.path.display(),
                small.conditioning
            ),
        ));
    }
    let mut out = BTreeMap::new();
    for p in paths {
        let img = image::open(p)
            .map_err(|e| Error::config(loc(key), format!("cannot read {}: {e}", p.display())))?;
        out.insert(p.clone(), Arc::new(img.to_rgb8()));
    }
    Ok(out)
}

impl LoadedTarget {
    /// Load (through `models`, so a model several targets share is loaded once) and check the target's models.
    pub fn load(cfg: &TargetConfig, file: &Path, models: &mut ModelCache) -> Result<Self> {
        let small = models.get(&cfg.adapter)?;
        let priors = cfg
            .all_priors()
            .into_iter()
            .map(|p| Ok((models.get(&p.dir)?, p.strength, p.prompt)))
            .collect::<Result<Vec<_>>>()?;
        let loc = |k: &str| Location::file(file).field(format!("target.{}.{k}", cfg.name));
        let (resolution, overlap) =
            resolution_and_overlap(&small, cfg.resolution, cfg.window_overlap, &loc)?;
        let frames = small.meta.frames;
        check_prompt(&small, cfg.prompt.as_deref(), loc("prompt"))?;
        for p in cfg.prompts.iter().flatten() {
            check_prompt(&small, Some(p), loc("prompts"))?;
        }
        if small.conditioning.contains(&Conditioning::LowRes) {
            return Err(Error::config(
                loc("adapter"),
                format!(
                    "{} is a super-resolution stage (it takes low_res): list it under [[target.stages]], after a base model",
                    small.path.display()
                ),
            ));
        }
        for (j, (p, _, prompt)) in priors.iter().enumerate() {
            small.check_composes_with(p, loc("prior"))?;
            if !p.any_frames && p.meta.frames != frames {
                return Err(Error::config(
                    loc("prior"),
                    format!(
                        "{} samples {} frames, the adapter {frames}",
                        p.path.display(),
                        p.meta.frames
                    ),
                ));
            }
            check_prompt(
                p,
                prompt.as_deref().or(cfg.prompt.as_deref()),
                loc("prior_prompt"),
            )?;
            // The templates a variant may give this prior: its own list, else the target's (when it has no prompt).
            let shorthand = cfg.prior.is_some() && j == 0;
            let drawn = match (&cfg.prior_prompts, prompt) {
                (Some(list), _) if shorthand => Some((list, "prior_prompts")),
                (_, None) => cfg.prompts.as_ref().map(|l| (l, "prompts")),
                _ => None,
            };
            for (tpl, key) in drawn
                .into_iter()
                .flat_map(|(l, k)| l.iter().map(move |t| (t, k)))
            {
                check_prompt(p, Some(tpl), loc(key))?;
            }
        }
        let references = load_references(cfg, &small, &loc)?;
        let mut stages = Vec::new();
        let mut previous = resolution;
        for (i, st) in cfg.stages.iter().enumerate() {
            let model = models.get(&st.adapter)?;
            let key = |k: &str| {
                Location::file(file).field(format!("target.{}.stages[{i}].{k}", cfg.name))
            };
            if !model.conditioning.contains(&Conditioning::LowRes) {
                return Err(Error::config(
                    key("adapter"),
                    format!(
                        "{} is not a super-resolution model: its conditioning {:?} has no low_res",
                        model.path.display(),
                        model.conditioning
                    ),
                ));
            }
            let (res, overlap) =
                resolution_and_overlap(&model, st.resolution, st.window_overlap, &key)?;
            check_prompt(&model, st.prompt.as_deref(), key("prompt"))?;
            if res.0 < previous.0 || res.1 < previous.1 {
                return Err(Error::config(
                    key("resolution"),
                    format!(
                        "{}x{} is below the previous stage's {}x{}",
                        res.0, res.1, previous.0, previous.1
                    ),
                ));
            }
            previous = res;
            stages.push(LoadedStage {
                cfg: st.clone(),
                model,
                resolution: res,
                overlap,
            });
        }
        Ok(Self {
            cfg: cfg.clone(),
            small,
            priors,
            resolution,
            overlap,
            stages,
            references,
        })
    }

    /// Every resolution the target samples at: the base model's, then each stage's.
    pub fn resolutions(&self) -> Vec<(usize, usize)> {
        std::iter::once(self.resolution)
            .chain(self.stages.iter().map(|s| s.resolution))
            .collect()
    }

    /// The sampler of cascade stage `i` (0-based): the stage model alone, seeded as `name/stage<i+1>`.
    fn stage_sampler(
        &self,
        i: usize,
        prompt: &PromptContext,
        label: &str,
    ) -> Result<TargetSampler<'_>> {
        let st = &self.stages[i];
        let tpl = Self::template(&st.model, st.cfg.prompt.as_deref());
        let mut s = TargetSampler::alone(
            format!("{label}/stage{}", i + 1),
            &st.model,
            st.cfg.steps,
            st.overlap,
        );
        s.small.prompt = prompt.render(&tpl)?;
        s.scheduler.class_name = Some(st.cfg.sampler.class_name().to_string());
        s.settings.guidance = st.cfg.guidance;
        Ok(s)
    }

    /// One episode through the base model and every stage, with the prompts, strengths and guidance of `draw` and
    /// its label as the noise seeds' salt. `frames[i]` are the source frames at `self.resolutions()[i]`.
    #[allow(clippy::too_many_arguments)]
    pub fn sample_episode(
        &self,
        frames: &[Arc<Vec<RgbImage>>],
        prompt: &PromptContext,
        seed: u64,
        episode: u64,
        device: &Device,
        check: &dyn Fn(&'static str) -> Result<()>,
        draw: &Draw,
    ) -> Result<Vec<RgbImage>> {
        let mut out = self
            .sampler(prompt, draw)?
            .sample_episode_checked(&frames[0], None, seed, episode, device, check)?;
        for (i, st) in self.stages.iter().enumerate() {
            let (h, w) = st.resolution;
            let low_res = frames_resized(&out, h, w);
            out = self
                .stage_sampler(i, prompt, &draw.label)?
                .sample_episode_checked(
                    &frames[i + 1],
                    Some(&low_res),
                    seed,
                    episode,
                    device,
                    check,
                )?;
        }
        Ok(out)
    }

    fn template(model: &ModelDir, explicit: Option<&str>) -> String {
        match explicit {
            Some(p) => p.to_string(),
            None if model.text_encoder.is_some() => "{task}".into(),
            None => String::new(),
        }
    }

    /// The base sampler of one variant: `draw` gives the target's prompt, the shorthand prior's (the first prior)
    /// prompt and λ, the guidance and the seed salt.
    fn sampler(&self, prompt: &PromptContext, draw: &Draw) -> Result<TargetSampler<'_>> {
        let small_tpl = Self::template(&self.small, draw.prompt.as_deref());
        let mut scheduler = self.small.scheduler.clone();
        scheduler.class_name = Some(self.cfg.sampler.class_name().to_string());
        let shorthand = self.cfg.prior.is_some();
        let priors = self
            .priors
            .iter()
            .enumerate()
            .map(|(j, (m, lam, p))| {
                let (p, lam) = match (shorthand && j == 0, draw.prior_strength) {
                    (true, Some(drawn)) => (&draw.prior_prompt, drawn),
                    _ => (p, *lam),
                };
                let tpl = Self::template(m, p.as_deref().or(draw.prompt.as_deref()));
                Ok((
                    ModelUse {
                        model: m,
                        prompt: prompt.render(&tpl)?,
                    },
                    lam,
                ))
            })
            .collect::<Result<_>>()?;
        Ok(TargetSampler {
            name: draw.label.clone(),
            small: ModelUse {
                model: &self.small,
                prompt: prompt.render(&small_tpl)?,
            },
            priors,
            settings: ComposeSettings {
                rule: self.cfg.rule,
                guidance: draw.guidance,
                compose_min_t: self.cfg.compose_min_t,
            },
            scheduler,
            steps: self.cfg.steps,
            frames: self.small.meta.frames,
            overlap: self.overlap,
            reference: draw.reference.as_ref().map(|p| &*self.references[p]),
        })
    }

    /// What the `augmentation.*` columns record of `draw` for an episode with `prompt`'s task and columns: the
    /// prompts as the models got them, the first prior's λ (0 without one) and the guidance.
    pub fn record(&self, prompt: &PromptContext, draw: &Draw) -> Result<Record> {
        let s = self.sampler(prompt, draw)?;
        let prior = s.priors.first();
        Ok(Record {
            target: self.cfg.name.clone(),
            variant: draw.variant,
            prompt: s.small.prompt.clone(),
            prior_prompt: prior.map(|(m, _)| m.prompt.clone()).unwrap_or_default(),
            prior_strength: prior.map_or(0.0, |(_, lam)| *lam),
            guidance: s.settings.guidance,
        })
    }

    pub fn seed(&self, global: u64) -> u64 {
        self.cfg.seed.unwrap_or(global)
    }
}

/// Every frame resized to `h` x `w`.
pub(super) fn frames_resized(f: &[RgbImage], h: usize, w: usize) -> Vec<RgbImage> {
    f.iter()
        .map(|x| resize_rgb(x, h as u32, w as u32))
        .collect()
}
