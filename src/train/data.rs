//! Training clips: every episode of the configured datasets, resized to the model resolution once and kept in
//! memory (24x40 RGB is 2.9 kB a frame, so 100k frames fit in 300 MB), cut into random clips of F frames.
//!
//! The target video is `data.target_key`; the conditioning (Sobel-x edges, first frame) comes from
//! `data.condition_key`, so paired renderings of the same motion (sample data's `sim` and `real`) train a
//! translation model: edges of the real video in, the sim video out. A list of condition cameras (the randomized
//! appearances of a LanguageTable episode) makes one training episode per camera, all with the same target: the
//! model learns to reach the target look from whatever surface the edges come from. A list of target cameras (a
//! prior over every appearance) makes one training episode per camera, each its own condition, and `{appearance}`
//! in the prompt template becomes the camera's appearance name from the episodes table. Edges are computed after
//! resizing to the model resolution, exactly as sampling and `vadapt augment` compute them.
//!
//! A super-resolution recipe (`model.low_res`) also gets each target frame resized down to the previous stage's
//! resolution and back up with the same `resize_rgb` a cascade uses between stages (`pipeline::run`): training sees
//! what inference feeds the stage, a lower-resolution video upsampled. With `data.low_res_key` that video is the
//! previous stage's own output on the condition camera (a camera of the dataset), so the stage also sees that
//! stage's errors. A latent recipe (`model.vae`) gets every
//! signal average-pooled by the VAE's downscale. Every signal is built by `sampling::conditioning`, the builder
//! sampling uses, so training and sampling build identical channels; the target video stays in pixels here and the
//! trainer encodes it.

use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use image::RgbImage;

use std::borrow::Cow;

use super::config::{FirstFrameSource, ReferenceSource, TrainConfig};
use crate::error::{Error, Location, Result};
use crate::io::open_dataset;
use crate::model_dir::Conditioning;
use crate::rng::{derive_seed, NoiseRng};
use crate::sampling::conditioning::{SignalBuilder, Signals};
use crate::vision::edges::edge_channel;
use crate::vision::resize::resize_rgb;
use crate::vision::tensor::frames_to_tensor;
use crate::vision::tiles::shuffle_tiles;

/// The global seed of a clip's reference draws (`data.reference_tiles` permutations, `same_look` stills; the first
/// argument of [`derive_seed`], the clip's pool, episode and start the rest).
const REFERENCE_TILES_STREAM: u64 = 0x7469_6c65;

/// One episode at the model resolution.
pub struct EpisodeClips {
    /// Where it came from, for messages: "dataset#episode".
    pub name: String,
    pub prompt: String,
    /// Shared by the entries of one source episode (one per condition camera).
    pub target: Arc<Vec<RgbImage>>,
    pub condition: Vec<RgbImage>,
    /// `sobel_dx / 4` of each condition frame, (H * W) each.
    pub edges: Vec<Vec<f32>>,
    /// Each target frame through `model.low_res` and back to the model resolution; empty unless the recipe
    /// conditions on low_res.
    pub low_res: Arc<Vec<RgbImage>>,
    /// The source episode (its position in the datasets, counted across them).
    pub source: usize,
    /// The target camera's look in this episode (`data.reference = "same_look"`): its
    /// `appearance/<camera>/look`, else its `appearance/<camera>/name`, else the camera key.
    pub look: String,
}

/// A batch of clips, ready for the model.
pub struct Batch {
    /// (B, 3, F, H, W) in [-1, 1], pixels even for a latent recipe.
    pub video: Tensor,
    /// (B, k, F, h, w) at the sample resolution (H / s, W / s for a latent recipe) or `None` for an unconditional
    /// model.
    pub channels: Option<Tensor>,
    pub prompts: Vec<String>,
}

/// Where a clip starts: episode and first frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClipRef {
    pub episode: usize,
    pub start: usize,
}

pub struct ClipSet {
    pub train: Vec<EpisodeClips>,
    pub holdout: Vec<EpisodeClips>,
    frames: usize,
    stride: usize,
    height: usize,
    width: usize,
    conditioning: Vec<Conditioning>,
    first_frame: FirstFrameSource,
    /// The reference channel's tile grid (`data.reference_tiles`); `None` without `reference` conditioning.
    reference_tiles: Option<usize>,
    /// Per entry of `train` / `holdout`, the entries of other source episodes in the same pool with the same look
    /// (`data.reference = "same_look"`; empty otherwise).
    train_partners: Vec<Vec<usize>>,
    holdout_partners: Vec<Vec<usize>>,
    /// Pixels per sample along height and width: 1, or the VAE's downscale for a latent recipe.
    downscale: usize,
}

impl ClipSet {
    /// Read and resize every episode. Episodes shorter than one clip are skipped with a warning; having no
    /// usable episode is an error.
    pub fn load(config: &TrainConfig) -> Result<Self> {
        let d = &config.data;
        let m = &config.model;
        let span = (m.frames - 1) * d.frame_stride + 1;
        let targets = d.target_key.keys();
        let condition_keys = config.condition_cameras();
        // data.low_res_key: the low_res camera of each condition camera, in the same order.
        let low_res_keys = d.low_res_key.as_ref().map_or(&[][..], |k| k.keys());
        let low_res_camera =
            |condition: &str| low_res_keys.get(condition_keys.iter().position(|k| k == condition)?);
        let downscale = config
            .vae_config(Path::new("the recipe"))?
            .map_or(1, |(_, v)| v.downscale());
        let low_res = m
            .low_res
            .filter(|_| m.conditioning.contains(&Conditioning::LowRes));
        // One entry per (source episode, condition camera); held-out episodes go whole, with all their cameras.
        let mut all: Vec<Vec<EpisodeClips>> = Vec::new();
        for root in &d.dataset {
            let source = open_dataset(root)?;
            for key in targets.iter().chain(condition_keys).chain(low_res_keys) {
                if !source.features().get(key).is_some_and(|f| f.is_visual()) {
                    let cams: Vec<&String> = source
                        .features()
                        .iter()
                        .filter(|(_, f)| f.is_visual())
                        .map(|(k, _)| k)
                        .collect();
                    return Err(Error::config(
                        Location::file(root).field(key),
                        format!("no such camera in this dataset (it has {cams:?})"),
                    ));
                }
            }
            for index in source.episode_indices() {
                let ep = source.read_episode(index)?;
                let loc = || Location::file(root).episode(index.0);
                let decode_at = |key: &str, (h, w): (usize, usize)| -> Result<Vec<RgbImage>> {
                    let frames = ep.cameras.get(key).ok_or_else(|| {
                        Error::invalid(loc().field(key), "episode has no such camera")
                    })?;
                    Ok(frames
                        .decode()?
                        .iter()
                        .map(|f| resize_rgb(f, h as u32, w as u32))
                        .collect())
                };
                let decode = |key: &str| decode_at(key, (m.height, m.width));
                // Frames at model.low_res back up to the model resolution (empty without low_res).
                let up = |small: Vec<RgbImage>| -> Arc<Vec<RgbImage>> {
                    Arc::new(
                        small
                            .iter()
                            .map(|f| resize_rgb(f, m.height as u32, m.width as u32))
                            .collect(),
                    )
                };
                // One entry per (target camera, condition camera).
                let mut per_camera = Vec::new();
                let mut short = None;
                for tkey in targets {
                    let target = decode(tkey)?;
                    if target.len() < span {
                        short = Some(target.len());
                        break;
                    }
                    // Without data.low_res_key, the target itself through model.low_res.
                    let target_low_res = match low_res {
                        Some([lh, lw]) if low_res_keys.is_empty() => up(target
                            .iter()
                            .map(|f| resize_rgb(f, lh as u32, lw as u32))
                            .collect()),
                        _ => Arc::new(Vec::new()),
                    };
                    let prompt = episode_prompt(&d.prompt, &ep, tkey, &loc)?;
                    let look = ["look", "name"]
                        .iter()
                        .find_map(|f| ep.episode_columns.string(&format!("appearance/{tkey}/{f}")))
                        .unwrap_or_else(|| tkey.clone());
                    let target = Arc::new(target);
                    let conditions = match &d.condition_key {
                        Some(keys) => keys.keys(),
                        None => std::slice::from_ref(tkey),
                    };
                    // Every camera paired with the target has its frame count.
                    let as_long_as_target = |key: &str, frames: usize| -> Result<()> {
                        if frames == target.len() {
                            return Ok(());
                        }
                        Err(Error::invalid(
                            loc().field(key),
                            format!("{frames} frames, but {tkey} has {}", target.len()),
                        ))
                    };
                    for key in conditions {
                        let low_res = match (low_res, low_res_camera(key)) {
                            (Some([lh, lw]), Some(lkey)) => {
                                let frames = up(decode_at(lkey, (lh, lw))?);
                                as_long_as_target(lkey, frames.len())?;
                                frames
                            }
                            _ => target_low_res.clone(),
                        };
                        let condition = if key == tkey {
                            target.to_vec()
                        } else {
                            decode(key)?
                        };
                        as_long_as_target(key, condition.len())?;
                        let edges = condition
                            .iter()
                            .map(|f| edge_channel(std::slice::from_ref(f)))
                            .collect();
                        let name = if targets.len() * conditions.len() == 1 {
                            format!("{}#{}", root.display(), index.0)
                        } else {
                            format!("{}#{} ({key})", root.display(), index.0)
                        };
                        per_camera.push(EpisodeClips {
                            name,
                            prompt: prompt.clone(),
                            target: target.clone(),
                            condition,
                            edges,
                            low_res,
                            source: all.len(),
                            look: look.clone(),
                        });
                    }
                }
                if let Some(frames) = short {
                    tracing::warn!(
                        "{}: episode {} has {frames} frames, a clip needs {span}; skipped",
                        root.display(),
                        index.0,
                    );
                    continue;
                }
                all.push(per_camera);
            }
        }
        let holdout = d.holdout_episodes.min(all.len().saturating_sub(1));
        let train_n = all.len() - holdout;
        if train_n == 0 {
            return Err(Error::config(
                Location::none().field("data.dataset"),
                format!(
                    "no episode with at least {span} frames ({} frames, stride {})",
                    m.frames, d.frame_stride
                ),
            ));
        }
        let holdout_eps = all.split_off(train_n);
        let train: Vec<EpisodeClips> = all.into_iter().flatten().collect();
        let holdout: Vec<EpisodeClips> = holdout_eps.into_iter().flatten().collect();
        // Only `same_look` draws from other episodes; otherwise no entry has partners.
        let partners = |entries: &[EpisodeClips]| match d.reference {
            Some(ReferenceSource::SameLook) => look_partners(entries),
            _ => Vec::new(),
        };
        Ok(Self {
            train_partners: partners(&train),
            holdout_partners: partners(&holdout),
            train,
            holdout,
            frames: m.frames,
            stride: d.frame_stride,
            height: m.height,
            width: m.width,
            conditioning: m.conditioning.clone(),
            first_frame: d.first_frame,
            reference_tiles: config.reference_tiles(),
            downscale,
        })
    }

    fn span(&self) -> usize {
        (self.frames - 1) * self.stride + 1
    }

    /// `n` random clips of the training episodes (episode uniformly, then start uniformly).
    pub fn random_clips(&self, n: usize, rng: &mut NoiseRng) -> Vec<ClipRef> {
        (0..n)
            .map(|_| {
                let episode = rng.below(self.train.len());
                let start = rng.below(self.train[episode].target.len() - self.span() + 1);
                ClipRef { episode, start }
            })
            .collect()
    }

    /// The first clip of each of the first `n` held-out episodes (or of training episodes when none is held out).
    pub fn sample_clips(&self, n: usize) -> (Vec<ClipRef>, bool) {
        let from_holdout = !self.holdout.is_empty();
        let pool = if from_holdout {
            &self.holdout
        } else {
            &self.train
        };
        let refs = (0..n.min(pool.len()))
            .map(|episode| ClipRef { episode, start: 0 })
            .collect();
        (refs, from_holdout)
    }

    /// Assemble a batch; `holdout` picks the pool the refs point into.
    pub fn batch(&self, clips: &[ClipRef], holdout: bool, device: &Device) -> Result<Batch> {
        let pool = self.pool(holdout);
        let (h, w, f) = (self.height, self.width, self.frames);
        let mut videos = Vec::with_capacity(clips.len());
        let mut channels = Vec::with_capacity(clips.len());
        let mut prompts = Vec::with_capacity(clips.len());
        for c in clips {
            let ep = &pool[c.episode];
            let idx: Vec<usize> = (0..f).map(|i| c.start + i * self.stride).collect();
            let target: Vec<RgbImage> = idx.iter().map(|&i| ep.target[i].clone()).collect();
            videos.push(frames_to_tensor(&target, device)?.unsqueeze(0)?);
            let mut e = Vec::with_capacity(f * h * w);
            for &i in &idx {
                e.extend_from_slice(&ep.edges[i]);
            }
            // Every signal at the sample resolution, by the builder sampling uses.
            let build = SignalBuilder::new(self.downscale, device);
            let edges = build.edges_from_planes(e, (f, h, w))?;
            let first_frame = build.first_frame(&self.first_frame_image(*c, holdout))?;
            let low_res = if ep.low_res.is_empty() {
                None
            } else {
                let frames: Vec<RgbImage> = idx.iter().map(|&i| ep.low_res[i].clone()).collect();
                Some(build.low_res(&frames)?)
            };
            let reference = self
                .reference_image(*c, holdout)
                .map(|r| build.first_frame(&r))
                .transpose()?;
            let source = if self.conditioning.contains(&Conditioning::Source) {
                Some(build.source(&self.condition_frames(*c, holdout))?)
            } else {
                None
            };
            let signals = Signals {
                edges: Some(edges),
                first_frame: Some(first_frame),
                low_res,
                reference,
                source,
            };
            if let Some(ch) = signals.channels(&self.conditioning, f, Path::new(&ep.name))? {
                channels.push(ch);
            }
            prompts.push(ep.prompt.clone());
        }
        Ok(Batch {
            video: Tensor::cat(&videos, 0)?,
            channels: if channels.is_empty() {
                None
            } else {
                Some(Tensor::cat(&channels, 0)?)
            },
            prompts,
        })
    }

    /// The image behind a clip's first-frame channel (`data.first_frame`): the condition camera's frame at the
    /// clip's start, or the target camera's frame farthest from the clip, mirrored or not.
    pub fn first_frame_image(&self, clip: ClipRef, holdout: bool) -> Cow<'_, RgbImage> {
        let ep = &self.pool(holdout)[clip.episode];
        match self.first_frame {
            FirstFrameSource::Condition => Cow::Borrowed(&ep.condition[clip.start]),
            FirstFrameSource::TargetFar => Cow::Borrowed(self.far_still(clip, holdout)),
            FirstFrameSource::TargetFarMirrored => Cow::Owned(image::imageops::flip_horizontal(
                self.far_still(clip, holdout),
            )),
        }
    }

    /// The image behind a clip's reference channel (`reference` conditioning): a frame of another episode with
    /// the same look (`data.reference = "same_look"`, where one exists) or the target camera's frame farthest from
    /// the clip, its `data.reference_tiles` tiles shuffled. The draws come from the clip alone (pool, episode and
    /// start), so a resumed run and the sample sheets see the same stills. `None` without a reference channel.
    pub fn reference_image(&self, clip: ClipRef, holdout: bool) -> Option<RgbImage> {
        let grid = self.reference_tiles?;
        let pool_name = if holdout { "holdout" } else { "train" };
        let seed = derive_seed(
            REFERENCE_TILES_STREAM,
            clip.episode as u64,
            pool_name,
            clip.start as u64,
        );
        let mut rng = NoiseRng::new(seed);
        let partners = if holdout {
            &self.holdout_partners
        } else {
            &self.train_partners
        };
        let still = match partners.get(clip.episode).filter(|p| !p.is_empty()) {
            Some(p) => {
                let other = &self.pool(holdout)[p[rng.below(p.len())]];
                &other.target[rng.below(other.target.len())]
            }
            None => self.far_still(clip, holdout),
        };
        Some(shuffle_tiles(still, grid, &mut rng))
    }

    /// The target camera's frame farthest from the clip in its episode (its first or its last): a still of the
    /// clip's look whose blocks and arm stand elsewhere.
    fn far_still(&self, clip: ClipRef, holdout: bool) -> &RgbImage {
        let ep = &self.pool(holdout)[clip.episode];
        let last = ep.target.len() - 1;
        let after = last - (clip.start + self.span() - 1);
        &ep.target[if clip.start >= after { 0 } else { last }]
    }

    fn pool(&self, holdout: bool) -> &[EpisodeClips] {
        if holdout {
            &self.holdout
        } else {
            &self.train
        }
    }

    /// The condition frames of a clip (for sample sheets).
    pub fn condition_frames(&self, clip: ClipRef, holdout: bool) -> Vec<RgbImage> {
        let pool = self.pool(holdout);
        (0..self.frames)
            .map(|i| pool[clip.episode].condition[clip.start + i * self.stride].clone())
            .collect()
    }

    /// The stored edge planes (`sobel_dx / 4`, H * W each) of a clip's condition frames (for sample sheets).
    pub fn condition_edges(&self, clip: ClipRef, holdout: bool) -> Vec<&[f32]> {
        let pool = self.pool(holdout);
        (0..self.frames)
            .map(|i| pool[clip.episode].edges[clip.start + i * self.stride].as_slice())
            .collect()
    }

    /// The low_res input of a clip at the model resolution (for sample sheets); `None` unless the recipe
    /// conditions on low_res.
    pub fn low_res_frames(&self, clip: ClipRef, holdout: bool) -> Option<Vec<RgbImage>> {
        let pool = self.pool(holdout);
        let ep = &pool[clip.episode];
        (!ep.low_res.is_empty()).then(|| {
            (0..self.frames)
                .map(|i| ep.low_res[clip.start + i * self.stride].clone())
                .collect()
        })
    }

    /// The target frames of a clip (ground truth in sample sheets).
    pub fn target_frames(&self, clip: ClipRef, holdout: bool) -> Vec<RgbImage> {
        let pool = self.pool(holdout);
        (0..self.frames)
            .map(|i| pool[clip.episode].target[clip.start + i * self.stride].clone())
            .collect()
    }
}

/// Per entry, the entries of other source episodes with the same look, in order.
fn look_partners(entries: &[EpisodeClips]) -> Vec<Vec<usize>> {
    let mut by_look: std::collections::HashMap<&str, Vec<usize>> = Default::default();
    for (i, e) in entries.iter().enumerate() {
        by_look.entry(&e.look).or_default().push(i);
    }
    entries
        .iter()
        .map(|e| {
            by_look[e.look.as_str()]
                .iter()
                .copied()
                .filter(|&j| entries[j].source != e.source)
                .collect()
        })
        .collect()
}

/// The episode's prompt: `template` with `{task}` replaced by its task and `{appearance}` by the target camera's
/// appearance name (the episodes table's `appearance/<camera>/name`, as the LanguageTable generator writes it).
fn episode_prompt(
    template: &str,
    ep: &crate::episode::Episode,
    target_key: &str,
    loc: &dyn Fn() -> Location,
) -> Result<String> {
    let prompt = template.replace("{task}", &ep.task);
    if !prompt.contains("{appearance}") {
        return Ok(prompt);
    }
    let column = format!("appearance/{target_key}/name");
    let name = ep.episode_columns.string(&column);
    match name {
        Some(name) => Ok(prompt.replace("{appearance}", &name)),
        None => Err(Error::invalid(
            loc().field(&column),
            format!(
                "the prompt template {template:?} uses {{appearance}}, but the episodes table has no string \
                 value for {target_key}'s appearance name"
            ),
        )),
    }
}
